/*
 * The agent's reader of client.rb and push-jobs-client.rb (one parser,
 * pja_conf_parse), then what it derives from them (pja_conf_finish: the
 * Chef server URL split into host, port, org) and prints (--show-config).
 *
 * Input: the file's text; its whitelist regexps are bounded before
 * regcomp() (pja_wl_check), as in agent_whitelist.c.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pja_conf_t   cf;
    static FILE *out;

    agent_fuzz_init();

    if (out == NULL) {
        out = fopen("/dev/null", "w");
        if (out == NULL) {
            abort();
        }
    }

    pja_conf_init(&cf);

    if (pja_conf_parse(&cf, "fuzz.rb", (const char *) data, size) == 0
        && pja_conf_finish(&cf) == 0)
    {
        pja_conf_print(&cf, out);
    }

    pja_conf_free(&cf);

    return 0;
}
