/*
 * pushjobs-agent: the channel's long-poll fallback (docs/protocol.md §6):
 * the channel's messages in signed HTTP/1.1 POSTs on one keep-alive
 * connection, which conn.c opens (TCP, TLS) and reads into ws->in.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pja.h"


static int poll_kick(pja_conn_t *ws);


/*
 * Long-poll (docs/protocol.md §6): the same messages in signed POSTs to
 * .../agent/poll on one keep-alive connection.  One poll is always out,
 * held by the server until it has something to say; when the agent has
 * something to say, it pipelines a second request behind the held one,
 * which makes the server answer the held one at once.  The first poll
 * carries the hello alone and is answered with the welcome and the
 * session id, which every later poll sends back.
 */

static int
poll_queue(pja_conn_t *ws, const char *p, size_t n)
{
    uint32_t  len;

    if (ws->poll.pending.len + n > PJA_OUT_QUEUE_CAP) {
        pja_log(PJA_LOG_ERR, "the channel's output queue is full");
        return -1;
    }

    len = (uint32_t) n;

    if (pja_buf_add(&ws->poll.pending, &len, sizeof(len)) != 0
        || pja_buf_add(&ws->poll.pending, p, n) != 0)
    {
        return -1;
    }

    return 0;
}


static int
poll_request(pja_conn_t *ws)
{
    int                count;
    size_t             off, max;
    uint32_t           len;
    pja_buf_t          body = { NULL, 0, 0 }, b = { NULL, 0, 0 };
    const pja_conf_t  *cf = &pja_agent.conf;

    max = pja_agent.max_message_size;
    count = 0;

    if (pja_buf_addstr(&body, "[") != 0) {
        return -1;
    }

    for (off = 0; off + sizeof(len) <= ws->poll.pending.len; /* void */ ) {
        memcpy(&len, ws->poll.pending.data + off, sizeof(len));

        if ((size_t) len + 2 > max) {
            pja_log(PJA_LOG_ERR, "channel: a message of %u bytes is over "
                    "the server's limit of %zu, dropped", len, max);
            off += sizeof(len) + len;
            continue;
        }

        if (body.len + (count ? 1 : 0) + len + 1 > max) {
            break;
        }

        if ((count && pja_buf_add(&body, ",", 1) != 0)
            || pja_buf_add(&body, ws->poll.pending.data + off + sizeof(len), len)
               != 0)
        {
            goto failed;
        }

        off += sizeof(len) + len;
        count++;

        if (ws->poll.session[0] == '\0') {
            /* the first poll opens the session with the hello alone */
            break;
        }
    }

    if (pja_buf_addstr(&body, "]") != 0) {
        goto failed;
    }

    pja_buf_consume(&ws->poll.pending, off);

    if (pja_buf_printf(&b,
                       "POST %s/poll HTTP/1.1\r\n"
                       "Host: %s\r\n"
                       "Accept: application/json\r\n"
                       "Content-Type: application/json\r\n"
                       "Content-Length: %zu\r\n"
                       "X-Pushjobs-Agent: " PJA_AGENT "\r\n",
                       cf->ws_path, cf->host_header, body.len) != 0
        || (ws->poll.session[0]
            && pja_buf_printf(&b, "X-Pushjobs-Session: %s\r\n", ws->poll.session)
               != 0))
    {
        goto failed;
    }

    /* the path signed is the request's */
    {
        char  path[4096];

        snprintf(path, sizeof(path), "%s/poll", cf->ws_path);

        if (pja_sign_headers(cf->node_name, pja_agent.key, "POST", path,
                             body.data, body.len, "\r\n", &b) != 0)
        {
            goto failed;
        }
    }

    if (pja_buf_addstr(&b, "\r\n") != 0
        || pja_buf_add(&b, body.data, body.len) != 0
        || pja_buf_add(&ws->out, b.data, b.len) != 0)
    {
        goto failed;
    }

    pja_log(PJA_LOG_DEBUG, "-> poll: %.300s", body.data);

    pja_buf_free(&body);
    pja_buf_free(&b);

    ws->poll.inflight++;

    return pja_conn_flush(ws);

failed:

    pja_buf_free(&body);
    pja_buf_free(&b);
    return -1;
}


/* A poll out at all times, and one more when there is something to say. */

static int
poll_kick(pja_conn_t *ws)
{
    if (ws->poll.batching) {
        return 0;
    }

    if (ws->state != PJA_WS_OPEN
        && !(ws->state == PJA_WS_CLOSING && ws->poll.pending.len))
    {
        return 0;
    }

    if (ws->poll.inflight == 0) {
        return poll_request(ws);
    }

    if (ws->poll.inflight == 1 && ws->poll.pending.len && ws->poll.session[0]) {
        return poll_request(ws);
    }

    return 0;
}


static int
poll_open(pja_conn_t *ws, const pja_conf_t *cf)
{
    (void) cf;

    if (pja_sign_key(&pja_agent) == NULL) {
        return -1;
    }

    ws->state = PJA_WS_OPEN;
    ws->opened_at = pja_now_ms();
    ws->last_rx = ws->opened_at;

    pja_log(PJA_LOG_INFO, "channel open (long-poll)");

    ws->poll.batching = 1;
    pja_session_open(&pja_agent);
    ws->poll.batching = 0;

    return poll_kick(ws);
}


/* Handles the complete answers in ws->in; -1 ends the channel. */

int
pja_poll_response(pja_conn_t *ws, pja_agent_t *a)
{
    int          status, rc;
    char        *end, *body, saved, val[256];
    size_t       head_len, i;
    long         clen;
    yajl_val     msgs, m;
    const char  *type;

    for ( ;; ) {
        if (ws->in.len == 0) {
            return 0;
        }

        rc = pja_conn_response_head(ws, &head_len, &status);

        if (rc != 1) {
            return rc;
        }

        end = ws->in.data + head_len - 4;

        *end = '\0';

        clen = -1;
        if (pja_conn_header(ws->in.data, "Content-Length", val, sizeof(val))) {
            clen = strtol(val, NULL, 10);
        }

        if (clen < 0 || clen > PJA_IN_MESSAGE_CAP) {
            pja_log(PJA_LOG_ERR, "channel: the server answered %d without a "
                    "usable Content-Length", status);
            return -1;
        }

        if (ws->in.len - head_len < (size_t) clen) {
            *end = '\r';
            return 0;
        }

        if (status == 200
            && pja_conn_header(ws->in.data, "X-Pushjobs-Session", val, sizeof(val)))
        {
            snprintf(ws->poll.session, sizeof(ws->poll.session), "%s", val);
        }

        body = end + 4;
        ws->poll.inflight--;

        if (status != 200) {
            ws->http_status = status;

            if (clen > 1024) {
                clen = 1024;
            }

            for (i = 0; i < (size_t) clen; i++) {
                if ((unsigned char) body[i] < 0x20) {
                    body[i] = ' ';
                }
            }

            pja_log(PJA_LOG_ERR, "channel: the server answered %d: %.*s",
                    status, (int) clen, body);
            return -1;
        }

        saved = body[clen];
        body[clen] = '\0';

        pja_log(PJA_LOG_DEBUG, "<- %.300s", body);

        msgs = pja_json_parse(body, (size_t) clen, &pj_json_server_message);
        body[clen] = saved;

        pja_buf_consume(&ws->in, head_len + (size_t) clen);

        if (msgs == NULL || !YAJL_IS_ARRAY(msgs)) {
            pja_log(PJA_LOG_ERR, "channel: the server's answer is not a JSON "
                    "array");
            yajl_tree_free(msgs);
            return -1;
        }

        rc = 0;
        ws->poll.batching = 1;

        for (i = 0; i < msgs->u.array.len; i++) {
            m = msgs->u.array.values[i];
            type = pja_json_get_str(m, "type");

            if (type && strcmp(type, "close") == 0) {
                ws->close_code = (int) pja_json_get_int(m, "code", 1000);

                pja_log(ws->close_code == 1000 || ws->close_code == 1001
                        ? PJA_LOG_INFO : PJA_LOG_WARN,
                        "channel: the server closed the session (%d)",
                        ws->close_code);
                rc = -1;
                break;
            }

            if (ws->state == PJA_WS_OPEN) {
                pja_session_handle(a, m);
            }
        }

        ws->poll.batching = 0;
        yajl_tree_free(msgs);

        if (rc != 0 || poll_kick(ws) != 0) {
            return -1;
        }
    }
}


static int
poll_input(pja_conn_t *ws, pja_agent_t *a)
{
    return pja_poll_response(ws, a) != 0 ? -1 : 0;
}


static int
poll_send(pja_conn_t *ws, const char *p, size_t n)
{
    if (poll_queue(ws, p, n) != 0) {
        return -1;
    }

    return poll_kick(ws);
}


static void
poll_close(pja_conn_t *ws, int code)
{
    char  text[64];

    /* the last poll says goodbye; its answer ends the channel */

    snprintf(text, sizeof(text), "{\"type\":\"close\",\"v\":1,"
             "\"code\":%d}", code);

    ws->close_sent = 1;
    ws->close_deadline = pja_now_ms() + 3000;

    if (poll_queue(ws, text, strlen(text)) != 0) {
        ws->close_deadline = 0;
    }

    ws->state = PJA_WS_CLOSING;

    if (poll_kick(ws) != 0) {
        ws->close_deadline = 0;
    }
}


static void
poll_reset(pja_conn_t *ws)
{
    pja_buf_free(&ws->poll.pending);
}


/* A poll is answered within the server's hold time. */

static int64_t
poll_silence(const pja_conn_t *ws, const pja_agent_t *a)
{
    (void) ws;

    return (int64_t) 1000 * ((a->poll_timeout ? a->poll_timeout
                                              : PJA_DEFAULT_POLL)
                             + PJA_POLL_MARGIN);
}


const pja_transport_t  pja_transport_poll = {
    poll_open,
    poll_send,
    poll_close,
    poll_input,
    poll_reset,
    poll_silence,
    "http",
    "https",
    "/poll (long-poll)"
};
