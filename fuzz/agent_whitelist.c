/*
 * The agent's whitelist: an entry (an exact command or a Ruby regexp
 * translated to POSIX, and its command line with \0..\9), the lookup of
 * requested commands against it (pja_wl_resolve, Ruby's gsub) and the
 * splitting of the command line into argv (pja_argv_split).
 *
 * Input: one byte of options (bit 0: regexp key, bit 1: ignore case), then
 * NUL-separated fields: the key, the command line, the commands asked for.
 *
 * Every regexp goes in as it comes: pja_wl_add() bounds it (pja_wl_check)
 * before regcomp(), whose memory glibc doubles per stacked quantifier.
 */

#include <stdlib.h>
#include <string.h>

#include "agent_fuzz.h"


static void
agent_fuzz_split(const char *cmdline)
{
    size_t   i;
    char   **argv;

    argv = pja_argv_split(cmdline);

    if (argv == NULL) {
        return;
    }

    for (i = 0; argv[i]; i++) {
        if (strlen(argv[i]) > strlen(cmdline)) {
            abort();
        }
    }

    pja_argv_free(argv);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                    opts;
    char                  *text, *field[8], *p, *cmdline;
    size_t                 n, i;
    pja_conf_t             cf;
    const pja_wl_entry_t  *e;

    agent_fuzz_init();

    if (size < 1) {
        return 0;
    }

    opts = data[0];
    data++;
    size--;

    text = malloc(size + 1);
    if (text == NULL) {
        abort();
    }

    memcpy(text, data, size);
    text[size] = '\0';

    n = 0;
    p = text;

    while (n < 8) {
        field[n++] = p;
        p += strlen(p);

        if (p == text + size) {
            break;
        }

        p++;
    }

    if (n < 2) {
        free(text);
        return 0;
    }

    pja_conf_init(&cf);

    agent_fuzz_split(field[1]);

    if (pja_wl_add(&cf, field[0], opts & 1, opts & 2, field[1], NULL, 0)
        == 0)
    {
        for (i = 2; i < n; i++) {
            cmdline = pja_wl_resolve(&cf, field[i], &e);

            if (cmdline == NULL) {
                continue;
            }

            if (e != &cf.wl[0]) {
                abort();
            }

            agent_fuzz_split(cmdline);
            free(cmdline);
        }
    }

    pja_conf_free(&cf);
    free(text);

    return 0;
}
