/*
 * The agent's channel reader (pja_conn_input): what the server sends, as it
 * arrives in chunks: the answer to the upgrade then websocket frames, or
 * long-poll answers (HTTP responses with JSON arrays of messages).  The
 * messages go to the agent's real protocol code (session.c, job.c) with the
 * whitelist {"true" => "true"}; a "run" is refused without starting
 * anything (linked with --wrap=pja_job_run, fuzz/agent_fuzz.c).
 *
 * Input: one byte of options (bits 0-1: upgrade answer then frames, open
 * websocket, open long-poll; bits 2-7: chunking seed), then the bytes.
 */

#include <stdlib.h>
#include <string.h>

#include "agent_fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int        rc, mode;
    uint32_t   seed;
    pja_conn_t  *ws;

    agent_fuzz_init();

    if (size < 1) {
        return 0;
    }

    mode = data[0] & 3;
    seed = data[0] >> 2;
    data++;
    size--;

    /* the agent's own channel: replies of session.c go out on it */
    ws = &pja_agent.ws;

    switch (mode) {
    case 0:
        agent_fuzz_channel(ws, PJA_WS_HTTP, 0);
        break;
    case 1:
    case 3:
        agent_fuzz_channel(ws, PJA_WS_OPEN, 0);
        break;
    default:
        agent_fuzz_channel(ws, PJA_WS_OPEN, 1);
        break;
    }

    rc = agent_fuzz_feed(ws, data, size, seed, pja_conn_input);

    if (rc == 0) {
        /* the server closes the connection */
        ws->peer_eof = 1;
        (void) pja_conn_input(ws, &pja_agent);
    }

    agent_fuzz_done(ws);

    return 0;
}
