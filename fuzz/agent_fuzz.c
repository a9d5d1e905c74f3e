/*
 * pushjobs-agent fuzz harnesses: the agent's process state, which main.c
 * (left out: it has main()) would set up.
 */

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/rsa.h>

#include "agent_fuzz.h"


pja_agent_t  pja_agent;


void
agent_fuzz_init(void)
{
    char                 shm[] = "/dev/shm/pushjobs-fuzz.XXXXXX";
    char                 tmp[] = "/tmp/pushjobs-fuzz.XXXXXX", path[256];
    char                *dir;
    pja_conf_t          *cf;
    EVP_PKEY_CTX        *kctx;
    static int           done;

    if (done) {
        return;
    }

    done = 1;

    pja_log_level = PJA_LOG_DEBUG;

    /* in memory if possible: the spool fsyncs each report */

    dir = mkdtemp(shm);
    if (dir == NULL) {
        dir = mkdtemp(tmp);
    }

    if (dir == NULL) {
        abort();
    }

    snprintf(path, sizeof(path), "%s/spool", dir);

    if (pja_store_init(path) != 0) {
        abort();
    }

    cf = &pja_agent.conf;
    pja_conf_init(cf);

    snprintf(path, sizeof(path), "%s/files", dir);

    if (pja_conf_set(cf, "node_name", "fuzz") != 0
        || pja_conf_set(cf, "chef_server_url",
                        "https://127.0.0.1:1/organizations/fuzz") != 0
        || pja_conf_set(cf, "file_dir", path) != 0
        || pja_wl_add(cf, "true", 0, 0, "true", NULL, 0) != 0
        || pja_conf_finish(cf) != 0)
    {
        abort();
    }

    pja_agent.ping_interval = PJA_DEFAULT_PING;
    pja_agent.poll_timeout = PJA_DEFAULT_POLL;
    pja_agent.max_message_size = PJA_DEFAULT_MAX_MESSAGE;
    pja_agent.job.out_fd = -1;
    pja_agent.job.err_fd = -1;
    pja_agent.job.lock_fd = -1;

    kctx = EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, NULL);

    if (kctx == NULL
        || EVP_PKEY_keygen_init(kctx) != 1
        || EVP_PKEY_CTX_set_rsa_keygen_bits(kctx, 1024) != 1
        || EVP_PKEY_keygen(kctx, &pja_agent.key) != 1)
    {
        abort();
    }

    EVP_PKEY_CTX_free(kctx);
}


/*
 * The harnesses that let the server's messages reach job.c are linked with
 * -Wl,--wrap=pja_job_run: a "run" is refused as if the process could not
 * be started, and nothing is ever executed.
 */

const char *__wrap_pja_job_run(pja_job_t *job, const pja_conf_t *cf);

const char *
__wrap_pja_job_run(pja_job_t *job, const pja_conf_t *cf)
{
    (void) job;
    (void) cf;

    return "not run by the fuzz harness";
}


void
agent_fuzz_channel(pja_conn_t *ws, int state, int poll)
{
    memset(ws, 0, sizeof(pja_conn_t));

    ws->fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (ws->fd == -1) {
        abort();
    }

    ws->state = state;
    ws->transport = poll ? &pja_transport_poll : &pja_transport_ws;

    if (poll) {
        /* the hello's poll is out */
        ws->poll.inflight = 1;
    }

    /* the answer to the key the fuzz seeds use, RFC 6455's example */
    snprintf(ws->accept, sizeof(ws->accept), "%s",
             "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}


void
agent_fuzz_done(pja_conn_t *ws)
{
    size_t      i, n;
    char      **ids;
    pja_job_t  *job;

    pja_conn_reset(ws);

    /* each run starts with an empty spool */

    ids = pja_store_list(&n);

    for (i = 0; i < n; i++) {
        (void) pja_store_remove(ids[i]);
        free(ids[i]);
    }

    free(ids);

    /* a committed job is given up; none can be running */

    job = &pja_agent.job;

    if (job->state == PJA_JOB_COMMITTED) {
        pja_job_uncommit(job);
    }

    if (job->state != PJA_JOB_IDLE) {
        abort();
    }

    pja_job_clear(job);

    pja_agent.welcomed = 0;
    pja_agent.ping_interval = PJA_DEFAULT_PING;
    pja_agent.poll_timeout = PJA_DEFAULT_POLL;
    pja_agent.max_message_size = PJA_DEFAULT_MAX_MESSAGE;
}


size_t
agent_fuzz_chunk(uint32_t *seed, size_t left)
{
    size_t  n;

    *seed = *seed * 1103515245 + 12345;
    n = 1 + (*seed >> 16) % 64;

    /* one chunk in four takes everything that is left */

    if (((*seed >> 8) & 3) == 0 || n > left) {
        n = left;
    }

    return n;
}


int
agent_fuzz_feed(pja_conn_t *ws, const uint8_t *data, size_t size,
    uint32_t seed, int (*reader)(pja_conn_t *ws, pja_agent_t *a))
{
    int     rc;
    size_t  n;

    rc = 0;

    while (size && rc == 0) {
        n = agent_fuzz_chunk(&seed, size);

        if (pja_buf_reserve(&ws->in, n + 1) != 0) {
            abort();
        }

        memcpy(ws->in.data + ws->in.len, data, n);
        ws->in.len += n;
        ws->in.data[ws->in.len] = '\0';

        data += n;
        size -= n;

        rc = reader(ws, &pja_agent);

        if (rc != 0 && rc != -1) {
            abort();
        }
    }

    return rc;
}
