/*
 * The agent's long-poll reader alone (pja_poll_response, transport_poll.c):
 * what the server answers to the agent's polls, as it arrives in chunks:
 * HTTP responses whose bodies are JSON arrays of messages.  The messages
 * go to the agent's real protocol code (session.c, job.c) with the whitelist
 * {"true" => "true"}; a "run" is refused without starting anything
 * (linked with --wrap=pja_job_run, fuzz/agent_fuzz.c).
 *
 * Input: one byte, the chunking seed, then the bytes.
 */

#include <stdlib.h>
#include <string.h>

#include "agent_fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t   seed;
    pja_conn_t  *ws;

    agent_fuzz_init();

    if (size < 1) {
        return 0;
    }

    seed = data[0];
    data++;
    size--;

    /* the agent's own channel, open in long-poll with the hello's poll out */
    ws = &pja_agent.ws;

    agent_fuzz_channel(ws, PJA_WS_OPEN, 1);

    (void) agent_fuzz_feed(ws, data, size, seed, pja_poll_response);

    agent_fuzz_done(ws);

    return 0;
}
