/*
 * pushjobs-agent: the channel's messages (docs/protocol.md §2).
 */

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <yajl/yajl_gen.h>

#include "pja.h"


/*
 * Live output (docs/protocol.md §2, output): a chunk per stream when
 * PJA_STREAM_CHUNK bytes are waiting or PJA_STREAM_DELAY ms after the
 * first byte waiting, whichever comes first; the pipes are not read while
 * the channel's outgoing queue holds PJA_STREAM_QUEUE bytes or more.
 */

#define PJA_STREAM_CHUNK        16384
#define PJA_STREAM_DELAY        250
#define PJA_STREAM_QUEUE        (64 * 1024)


static int stream_on(pja_agent_t *a);


/* Sends a message if the channel is open; takes ownership of text. */

void
pja_session_send(pja_agent_t *a, char *text)
{
    if (text == NULL) {
        return;
    }

    if (a->ws.state == PJA_WS_OPEN) {
        pja_log(PJA_LOG_DEBUG, "-> %.300s", text);

        if (pja_conn_send_text(&a->ws, text, strlen(text)) != 0) {
            pja_log(PJA_LOG_WARN, "channel: cannot queue a message");
        }
    }

    free(text);
}


static void
proto_simple(pja_agent_t *a, const char *type, const char *job_id,
    const char *reason)
{
    yajl_gen  g;

    g = pja_json_begin(type);
    if (g == NULL) {
        return;
    }

    if (pja_json_str(g, "job_id", job_id) != 0
        || (reason && pja_json_str(g, "reason", reason) != 0))
    {
        yajl_gen_free(g);
        return;
    }

    pja_session_send(a, pja_json_end(g));
}


/*
 * Spools a final report, then sends it, or sends sent instead when given
 * (its short form, which leaves out what was streamed); takes ownership of
 * both.  The spool keeps the whole report: it is what a new channel, or
 * the server's resend, gets.
 */

void
pja_session_final(pja_agent_t *a, char *report, char *sent)
{
    yajl_val     v;
    const char  *id;

    if (report == NULL) {
        free(sent);
        return;
    }

    v = pja_json_parse(report, strlen(report), &pj_json_agent_message);
    id = pja_json_get_str(v, "job_id");

    if (id && pja_valid_job_id(id)) {
        if (pja_store_write(id, report) != 0) {
            pja_log(PJA_LOG_ERR, "job %s: the report could not be spooled; "
                    "sending it anyway", id);
        }
    }

    yajl_tree_free(v);

    if (sent) {
        free(report);
        report = sent;
    }

    pja_session_send(a, report);
}


static void
proto_send_aborted(pja_agent_t *a, const char *job_id)
{
    yajl_gen  g;

    g = pja_json_begin("aborted");
    if (g == NULL) {
        return;
    }

    if (pja_json_str(g, "job_id", job_id) != 0) {
        yajl_gen_free(g);
        return;
    }

    pja_session_final(a, pja_json_end(g), NULL);
}


/*
 * A spooled report goes out again only if it is still the report of its
 * job: the server closes the channel (1007) on a message that is not, so
 * a damaged file would make every new channel fail the same way.  Returns
 * the report's text, or NULL (none, or damaged and dropped).
 */

static char *
proto_spooled(const char *job_id)
{
    char        *text;
    yajl_val     v;
    const char  *id;

    text = pja_store_read(job_id);
    if (text == NULL) {
        return NULL;
    }

    v = pja_json_parse(text, strlen(text), &pj_json_agent_message);
    id = pja_json_get_str(v, "job_id");

    if (id == NULL || strcmp(id, job_id) != 0
        || pja_json_get_str(v, "type") == NULL)
    {
        pja_log(PJA_LOG_ERR, "job %s: the spooled report is damaged, "
                "dropped: %.200s", job_id, text);
        yajl_tree_free(v);
        free(text);
        pja_store_remove(job_id);
        return NULL;
    }

    yajl_tree_free(v);

    return text;
}


/* Sends a spooled report again: TEXT as proto_spooled() read it, or NULL. */

static void
proto_resend(pja_agent_t *a, const char *job_id, char *text)
{
    if (text == NULL) {
        text = proto_spooled(job_id);
        if (text == NULL) {
            return;
        }
    }

    pja_log(PJA_LOG_INFO, "job %s: re-sending the spooled report", job_id);
    pja_session_send(a, text);
}


void
pja_session_job_exited(pja_agent_t *a, int status)
{
    char        *report, *sent, id[33];
    pja_job_t   *job = &a->job;

    if (WIFEXITED(status)) {
        pja_log(PJA_LOG_INFO, "job %s: exited with %d%s", job->id,
                WEXITSTATUS(status), job->ending ? " (ended by the agent)" : "");
    } else if (WIFSIGNALED(status)) {
        pja_log(PJA_LOG_INFO, "job %s: killed by signal %d%s", job->id,
                WTERMSIG(status), job->ending ? " (ended by the agent)" : "");
    }

    /* the last chunks first: the feed gets them as output events */
    (void) pja_session_stream(a, pja_now_ms(), 1);

    report = pja_job_report(job, status, a->max_message_size, 0);

    /*
     * What this channel streamed is not sent again: the server builds the
     * output from its chunks, or asks for the whole report (resend) when
     * one of them did not reach it.
     */
    sent = NULL;

    if (report && stream_on(a) && (job->out_sent || job->err_sent)) {
        sent = pja_job_report(job, status, a->max_message_size, 1);
    }

    memcpy(id, job->id, sizeof(id));
    pja_job_clear(job);
    pja_session_final(a, report, sent);

    /* reaped and reported: nothing of it for a restarted agent to end */
    pja_store_run_remove(id);
}


static size_t
stream_queued(pja_agent_t *a)
{
    return a->ws.out.len + a->ws.poll.pending.len;
}


static int
stream_on(pja_agent_t *a)
{
    return a->live_output && a->ws.state == PJA_WS_OPEN
           && a->job.state == PJA_JOB_RUNNING && a->job.capture;
}


/*
 * 1 when the job's pipes are to be left unread for now: the channel has
 * not sent what is queued yet.  The child then blocks in write(); the
 * agent's memory does not grow.
 */

int
pja_session_backlog(pja_agent_t *a)
{
    return stream_on(a) && stream_queued(a) >= PJA_STREAM_QUEUE;
}


/* The chunks of one stream that are due; when the next one will be. */

static int64_t
stream_one(pja_agent_t *a, const char *name, pja_buf_t *b, size_t *sent,
    int64_t *due, int64_t now, int flush)
{
    char      *data;
    size_t     n;
    yajl_gen   g;

    while (*sent < b->len) {
        n = b->len - *sent;

        if (n < PJA_STREAM_CHUNK && !flush) {
            if (*due == 0) {
                *due = now + PJA_STREAM_DELAY;
            }

            if (now < *due) {
                return *due;
            }
        }

        if (stream_queued(a) >= PJA_STREAM_QUEUE) {
            return -1;
        }

        if (n > PJA_STREAM_CHUNK) {
            n = PJA_STREAM_CHUNK;
        }

        data = pja_base64_encode(b->data + *sent, n);
        g = pja_json_begin("output");

        if (data == NULL || g == NULL
            || pja_json_str(g, "job_id", a->job.id) != 0
            || pja_json_str(g, "stream", name) != 0
            || pja_json_int(g, "offset", (long long) *sent) != 0
            || pja_json_str(g, "data", data) != 0)
        {
            free(data);
            if (g) {
                yajl_gen_free(g);
            }
            return -1;
        }

        free(data);
        pja_session_send(a, pja_json_end(g));

        *sent += n;
        *due = 0;
    }

    return -1;
}


/*
 * Sends the live output that is due (with flush: all of it, the job has
 * ended); returns when the next chunk will be due (ms, pja_now_ms() time),
 * or -1.  The buffers are the job's capture, which stops at its cap: so
 * does the stream.
 */

int64_t
pja_session_stream(pja_agent_t *a, int64_t now, int flush)
{
    int64_t     t, next;
    pja_job_t  *job;

    if (!stream_on(a)) {
        return -1;
    }

    job = &a->job;

    next = stream_one(a, "stdout", &job->out, &job->out_sent, &job->out_due,
                      now, flush);
    t = stream_one(a, "stderr", &job->err, &job->err_sent, &job->err_due,
                   now, flush);

    if (t != -1 && (next == -1 || t < next)) {
        next = t;
    }

    return next;
}


/*
 * First frame on every channel: the jobs held, then every spooled report.
 * The hello lists a report as finished only once it has been read back
 * whole: a job listed as finished whose report then never came would wait
 * for it.
 */

void
pja_session_open(pja_agent_t *a)
{
    size_t     i, n;
    char     **ids, **texts;
    yajl_gen   g;

    a->welcomed = 0;

    /*
     * Output messages wait for this channel's welcome; they start again
     * from offset 0, as what the last channel had queued may be lost
     * (the server keeps only the bytes beyond what it has).
     */
    a->live_output = 0;
    a->job.out_sent = 0;
    a->job.err_sent = 0;
    a->job.out_due = 0;
    a->job.err_due = 0;

    g = pja_json_begin("hello");
    if (g == NULL) {
        return;
    }

    ids = pja_store_list(&n);
    texts = n ? calloc(n, sizeof(char *)) : NULL;

    if ((n && texts == NULL)
        || pja_json_str(g, "agent", PJA_AGENT) != 0
        || yajl_gen_string(g, (const unsigned char *) "jobs", 4)
           != yajl_gen_status_ok
        || yajl_gen_array_open(g) != yajl_gen_status_ok)
    {
        goto failed;
    }

    if (a->job.state != PJA_JOB_IDLE) {
        if (yajl_gen_map_open(g) != yajl_gen_status_ok
            || pja_json_str(g, "job_id", a->job.id) != 0
            || pja_json_str(g, "state", a->job.state == PJA_JOB_RUNNING
                                        ? "running" : "committed") != 0
            || yajl_gen_map_close(g) != yajl_gen_status_ok)
        {
            goto failed;
        }
    }

    for (i = 0; i < n; i++) {
        texts[i] = proto_spooled(ids[i]);

        if (texts[i] == NULL) {
            continue;
        }

        if (yajl_gen_map_open(g) != yajl_gen_status_ok
            || pja_json_str(g, "job_id", ids[i]) != 0
            || pja_json_str(g, "state", "finished") != 0
            || yajl_gen_map_close(g) != yajl_gen_status_ok)
        {
            goto failed;
        }
    }

    if (yajl_gen_array_close(g) != yajl_gen_status_ok) {
        goto failed;
    }

    pja_session_send(a, pja_json_end(g));
    g = NULL;

    for (i = 0; i < n; i++) {
        if (texts[i]) {
            proto_resend(a, ids[i], texts[i]);
            texts[i] = NULL;
        }
    }

failed:

    if (g) {
        yajl_gen_free(g);
    }

    for (i = 0; i < n; i++) {
        if (texts) {
            free(texts[i]);
        }
        free(ids[i]);
    }
    free(texts);
    free(ids);
}


static void
proto_welcome(pja_agent_t *a, yajl_val msg)
{
    long long  ping, max;

    ping = pja_json_get_int(msg, "ping_interval", PJA_DEFAULT_PING);
    max = pja_json_get_int(msg, "max_message_size", PJA_DEFAULT_MAX_MESSAGE);

    a->ping_interval = ping > 0 && ping < 86400 ? (int) ping
                                                 : PJA_DEFAULT_PING;
    a->max_message_size = max > 1024 ? (size_t) max : PJA_DEFAULT_MAX_MESSAGE;
    a->welcomed = 1;
    a->live_output = pja_json_get_bool(msg, "live_output", 0);

    ping = pja_json_get_int(msg, "poll_timeout", PJA_DEFAULT_POLL);
    a->poll_timeout = ping > 0 && ping < 3600 ? (int) ping : PJA_DEFAULT_POLL;

    pja_log(PJA_LOG_INFO, "welcome from %s: node %s, org %s, ping every %d s",
            pja_json_get_str(msg, "server") ? pja_json_get_str(msg, "server")
                                            : "?",
            pja_json_get_str(msg, "node") ? pja_json_get_str(msg, "node")
                                          : "?",
            pja_json_get_str(msg, "org") ? pja_json_get_str(msg, "org") : "?",
            a->ping_interval);
}


static void
proto_commit(pja_agent_t *a, const char *id, yajl_val msg)
{
    const char  *reason;
    pja_job_t   *job = &a->job;

    if (job->state != PJA_JOB_IDLE && strcmp(job->id, id) == 0) {
        proto_simple(a, "ack_commit", id, NULL);
        return;
    }

    if (pja_store_has(id)) {
        proto_resend(a, id, NULL);
        return;
    }

    if (a->stopping) {
        proto_simple(a, "nack_commit", id, "agent stopping");
        return;
    }

    if (job->state != PJA_JOB_IDLE) {
        pja_log(PJA_LOG_INFO, "job %s: refused, busy with job %s", id,
                job->id);
        proto_simple(a, "nack_commit", id, "busy");
        return;
    }

    reason = pja_job_commit(job, &a->conf, msg);

    if (reason) {
        pja_log(PJA_LOG_INFO, "job %s: refused: %s", id, reason);
        proto_simple(a, "nack_commit", id, reason);
        return;
    }

    proto_simple(a, "ack_commit", id, NULL);
}


static void
proto_run(pja_agent_t *a, const char *id)
{
    const char  *reason;
    pja_job_t   *job = &a->job;

    if (job->state == PJA_JOB_RUNNING && strcmp(job->id, id) == 0) {
        proto_simple(a, "ack_run", id, NULL);
        return;
    }

    if (job->state != PJA_JOB_COMMITTED || strcmp(job->id, id) != 0) {
        pja_log(PJA_LOG_WARN, "job %s: run refused, not committed", id);
        proto_simple(a, "nack_run", id, "not committed");
        return;
    }

    reason = pja_job_run(job, &a->conf);

    if (reason) {
        proto_simple(a, "nack_run", id, reason);
        pja_job_clear(job);
        return;
    }

    proto_simple(a, "ack_run", id, NULL);
}


static void
proto_abort(pja_agent_t *a, const char *id, int force)
{
    pja_job_t  *job = &a->job;

    if (job->state == PJA_JOB_RUNNING && strcmp(job->id, id) == 0) {
        /* "aborted" goes out when the process group leader is reaped. */
        pja_job_end(job, PJA_END_ABORT, force, job->kill_grace);
        return;
    }

    if (job->state == PJA_JOB_COMMITTED && strcmp(job->id, id) == 0) {
        pja_job_uncommit(job);
        proto_send_aborted(a, id);
        return;
    }

    if (pja_store_has(id)) {
        proto_resend(a, id, NULL);
        return;
    }

    pja_log(PJA_LOG_INFO, "job %s: abort of a job not held", id);
    proto_send_aborted(a, id);
}


void
pja_session_message(pja_agent_t *a, char *text, size_t len)
{
    yajl_val  msg;

    pja_log(PJA_LOG_DEBUG, "<- %.300s", text);

    msg = pja_json_parse(text, len, &pj_json_server_message);
    if (msg == NULL || !YAJL_IS_OBJECT(msg)) {
        pja_log(PJA_LOG_WARN, "channel: a message that is not a JSON object "
                "ignored");
        yajl_tree_free(msg);
        return;
    }

    pja_session_handle(a, msg);

    yajl_tree_free(msg);
}


/* One message of the server, a JSON object, whatever its transport. */

void
pja_session_handle(pja_agent_t *a, yajl_val msg)
{
    const char  *type, *id;

    if (msg == NULL || !YAJL_IS_OBJECT(msg)) {
        pja_log(PJA_LOG_WARN, "channel: a message that is not a JSON object "
                "ignored");
        return;
    }

    type = pja_json_get_str(msg, "type");
    id = pja_json_get_str(msg, "job_id");

    if (type == NULL) {
        pja_log(PJA_LOG_WARN, "channel: a message without type ignored");
        goto done;
    }

    if (strcmp(type, "welcome") == 0) {
        proto_welcome(a, msg);
        goto done;
    }

    if (strcmp(type, "commit") != 0 && strcmp(type, "run") != 0
        && strcmp(type, "abort") != 0 && strcmp(type, "ack") != 0
        && strcmp(type, "resend") != 0)
    {
        pja_log(PJA_LOG_INFO, "channel: message type \"%s\" ignored", type);
        goto done;
    }

    if (!pja_valid_job_id(id)) {
        pja_log(PJA_LOG_WARN, "channel: \"%s\" with a bad job_id ignored",
                type);
        goto done;
    }

    if (strcmp(type, "commit") == 0) {
        proto_commit(a, id, msg);

    } else if (strcmp(type, "run") == 0) {
        proto_run(a, id);

    } else if (strcmp(type, "abort") == 0) {
        proto_abort(a, id, pja_json_get_bool(msg, "force", 0));

    } else if (strcmp(type, "resend") == 0) {
        /* a short report the server could not complete: the whole one */
        proto_resend(a, id, NULL);

    } else {
        if (pja_store_remove(id) == 0) {
            pja_log(PJA_LOG_INFO, "job %s: report acknowledged", id);
        }
    }

done:

    return;
}
