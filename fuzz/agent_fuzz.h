/*
 * What the agent's fuzz harnesses share (fuzz/agent_fuzz.c).
 */

#ifndef AGENT_FUZZ_H
#define AGENT_FUZZ_H

#include <stdint.h>

#include "pja.h"

/*
 * Sets up pja_agent once: a configuration (node "fuzz", org "fuzz", the
 * whitelist {"true" => "true"}), a spool and a file directory in a
 * private temporary directory, a key to sign long-polls with, debug
 * logging (libFuzzer's -close_fd_mask=2 keeps it off the terminal).
 */
void agent_fuzz_init(void);

/* A channel in the given state, writing to /dev/null. */
void agent_fuzz_channel(pja_conn_t *ws, int state, int poll);

/* Releases what the channel and the agent's job hold after a run. */
void agent_fuzz_done(pja_conn_t *ws);

/* A deterministic split of an input into chunks, from a seed. */
size_t agent_fuzz_chunk(uint32_t *seed, size_t left);

/*
 * Feeds the bytes to a channel reader in chunks, as the connection's reader
 * leaves them (the bytes, then a NUL), until the input ends or the reader
 * returns nonzero; returns the reader's last result (0 or -1).
 */
int agent_fuzz_feed(pja_conn_t *ws, const uint8_t *data, size_t size,
    uint32_t seed, int (*reader)(pja_conn_t *ws, pja_agent_t *a));

#endif
