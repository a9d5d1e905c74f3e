/*
 * The agent's server-message parser and protocol (pja_session_message): the
 * messages of one channel, in order, with the whitelist {"true" =>
 * "true"}.  A "run" is refused without starting anything (linked with
 * --wrap=pja_job_run, fuzz/agent_fuzz.c).
 *
 * Input: messages separated by NUL bytes.
 */

#include <stdlib.h>
#include <string.h>

#include "agent_fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char           *text;
    size_t          n;
    const uint8_t  *end, *nul;

    agent_fuzz_init();

    agent_fuzz_channel(&pja_agent.ws, PJA_WS_OPEN, 0);

    end = data + size;

    while (data < end) {
        nul = memchr(data, '\0', (size_t) (end - data));
        n = (size_t) ((nul ? nul : end) - data);

        /* an exact copy: a read past the message is an ASan report */

        text = malloc(n + 1);
        if (text == NULL) {
            abort();
        }

        memcpy(text, data, n);
        text[n] = '\0';

        pja_session_message(&pja_agent, text, n);

        free(text);

        data += n + 1;
    }

    agent_fuzz_done(&pja_agent.ws);

    return 0;
}
