/*
 * pushjobs-agent: the channel's messages (docs/protocol.md §2).
 */

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <yajl/yajl_gen.h>

#include "pja.h"


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


/* Spools a final report, then sends it; takes ownership of report. */

void
pja_session_final(pja_agent_t *a, char *report)
{
    yajl_val     v;
    const char  *id;

    if (report == NULL) {
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

    pja_session_final(a, pja_json_end(g));
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
    char        *report, id[33];
    pja_job_t   *job = &a->job;

    if (WIFEXITED(status)) {
        pja_log(PJA_LOG_INFO, "job %s: exited with %d%s", job->id,
                WEXITSTATUS(status), job->ending ? " (ended by the agent)" : "");
    } else if (WIFSIGNALED(status)) {
        pja_log(PJA_LOG_INFO, "job %s: killed by signal %d%s", job->id,
                WTERMSIG(status), job->ending ? " (ended by the agent)" : "");
    }

    report = pja_job_report(job, status, a->max_message_size);
    memcpy(id, job->id, sizeof(id));
    pja_job_clear(job);
    pja_session_final(a, report);

    /* reaped and reported: nothing of it for a restarted agent to end */
    pja_store_run_remove(id);
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
        && strcmp(type, "abort") != 0 && strcmp(type, "ack") != 0)
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

    } else {
        if (pja_store_remove(id) == 0) {
            pja_log(PJA_LOG_INFO, "job %s: report acknowledged", id);
        }
    }

done:

    return;
}
