
/*
 * Copyright (C) pushjobs developers
 */


/*
 * The long-poll transport of the agent channel (docs/protocol.md §6): the
 * websocket's messages over signed POST requests, for networks whose
 * proxies do not pass websockets.
 *
 * A long-poll session is a session (ngx_pushjobs_session.c) without a
 * connection of its own: its channel is this transport's state, and its
 * ticks expire it when the agent stops polling.  Polls are answered through
 * nginx's output chain.  What the server sends waits in the session's
 * queue, capped like a websocket's, until a poll takes it.  A poll that
 * finds the queue empty is held until a message comes, the hold time
 * passes, or the bytes of a next request arrive behind it on its connection
 * (the agent pipelines a request when it has something to say).  A session
 * lives in one worker: a poll that reaches another worker is told that its
 * session is unknown, and the agent opens a new one, which replaces the old
 * one as a newer websocket would.
 */


#include "ngx_pushjobs_module.h"

#include <yajl/yajl_tree.h>


#define NGX_PUSHJOBS_POLL_TOKEN_LEN    (NGX_INT64_LEN + 1 + 16)

/* ticks (ping intervals) without a poll after which a session is gone */
#define NGX_PUSHJOBS_POLL_MISSED       2


typedef struct ngx_pushjobs_poll_s  ngx_pushjobs_poll_t;


typedef struct {
    ngx_http_request_t         *request;
    ngx_pushjobs_poll_t        *poll;       /* NULL once answered */
} ngx_pushjobs_poll_req_t;


struct ngx_pushjobs_poll_s {
    ngx_pushjobs_chan_t         chan;

    ngx_pushjobs_out_t          out;
    ngx_pushjobs_poll_req_t    *held;

    ngx_event_t                 hold;       /* the held poll's time is up */
    ngx_event_t                 flush;      /* posted: answer the held poll */

    ngx_uint_t                  missed;
    ngx_uint_t                  code;       /* the close code, once closed */

    size_t                      token_len;
    u_char                      token[NGX_PUSHJOBS_POLL_TOKEN_LEN];

    unsigned                    polled:1;
    unsigned                    processing:1;
    unsigned                    closed:1;
};


static ngx_int_t ngx_pushjobs_poll_send(ngx_pushjobs_chan_t *ch,
    ngx_pushjobs_msg_t *msg);
static void ngx_pushjobs_poll_close(ngx_pushjobs_chan_t *ch,
    ngx_uint_t code);
static ngx_int_t ngx_pushjobs_poll_tick(ngx_pushjobs_chan_t *ch);
static void ngx_pushjobs_poll_free(ngx_pushjobs_chan_t *ch);
static void ngx_pushjobs_poll_resume(ngx_pushjobs_chan_t *ch);
static ngx_pushjobs_poll_t *ngx_pushjobs_poll_create(ngx_log_t *log);
static ngx_int_t ngx_pushjobs_poll_respond(ngx_http_request_t *r,
    ngx_pushjobs_poll_t *p, ngx_uint_t code);
static void ngx_pushjobs_poll_answer(ngx_pushjobs_poll_t *p,
    ngx_uint_t code);
static void ngx_pushjobs_poll_unhold(ngx_pushjobs_poll_t *p);
static void ngx_pushjobs_poll_event(ngx_event_t *ev);
static void ngx_pushjobs_poll_read_handler(ngx_http_request_t *r);
static void ngx_pushjobs_poll_cleanup(void *data);
static ngx_uint_t ngx_pushjobs_poll_pipelined(ngx_http_request_t *r);
static ngx_uint_t ngx_pushjobs_poll_is_close(void *msg);


static const ngx_pushjobs_transport_t  ngx_pushjobs_poll_transport = {
    ngx_pushjobs_poll_send,
    ngx_pushjobs_poll_close,
    ngx_pushjobs_poll_tick,
    ngx_pushjobs_poll_free,
    ngx_pushjobs_poll_resume,
    " by long-poll",
    NGX_PUSHJOBS_POLL_HOLD
};


ngx_int_t
ngx_pushjobs_poll_handler(ngx_http_request_t *r, ngx_str_t *org,
    ngx_str_t *node, ngx_str_t *body)
{
    size_t                    i;
    yajl_val                  msgs;
    ngx_int_t                 rc;
    ngx_table_elt_t          *h;
    ngx_http_cleanup_t       *cln;
    ngx_pushjobs_poll_t      *p;
    ngx_pushjobs_agent_t     *a;
    ngx_pushjobs_poll_req_t  *pr;

    msgs = NULL;

    if (body->len) {
        msgs = ngx_pushjobs_json_parse_bounded(body->data, body->len,
                                               &pj_json_agent_message,
                                               r->connection->log);
    }

    if (msgs == NULL || !YAJL_IS_ARRAY(msgs)) {
        ngx_pushjobs_json_free(msgs);
        return ngx_pushjobs_json_error(r, NGX_HTTP_BAD_REQUEST, 1,
                                       "the body must be a JSON array of "
                                       "messages");
    }

    for (i = 0; i < msgs->u.array.len; i++) {
        if (!YAJL_IS_OBJECT(msgs->u.array.values[i])) {
            ngx_pushjobs_json_free(msgs);
            return ngx_pushjobs_json_error(r, NGX_HTTP_BAD_REQUEST, 1,
                                           "every message must be a JSON "
                                           "object");
        }
    }

    pr = ngx_pcalloc(r->pool, sizeof(ngx_pushjobs_poll_req_t));
    if (pr == NULL) {
        ngx_pushjobs_json_free(msgs);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        ngx_pushjobs_json_free(msgs);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    pr->request = r;
    cln->handler = ngx_pushjobs_poll_cleanup;
    cln->data = pr;

    h = ngx_pushjobs_header(r, "X-Pushjobs-Session");

    if (h == NULL) {

        /* a new session: welcome, and the older channel of the node goes */

        p = ngx_pushjobs_poll_create(ngx_pushjobs_worker->log);
        if (p == NULL) {
            ngx_pushjobs_json_free(msgs);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        a = ngx_pushjobs_agent_create(org, node, ngx_pushjobs_worker->log);
        if (a == NULL) {
            ngx_pushjobs_poll_free(&p->chan);
            ngx_pushjobs_json_free(msgs);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        /* ours, beside the channel's one that its close drops */
        ngx_pushjobs_agent_ref(a);

        p->chan.agent = a;
        p->processing = 1;

        ngx_pushjobs_agent_open(a, &p->chan);

    } else {
        a = ngx_pushjobs_agent_find(org, node);

        p = (a && !a->closed
             && a->chan->transport == &ngx_pushjobs_poll_transport)
            ? (ngx_pushjobs_poll_t *) a->chan : NULL;

        if (p == NULL || p->closed || h->value.len != p->token_len
            || ngx_memcmp(h->value.data, p->token, p->token_len) != 0)
        {
            ngx_pushjobs_json_free(msgs);

            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "pushjobs: agent \"%V\" of \"%V\" polled an "
                          "unknown session", node, org);

            return ngx_pushjobs_poll_respond(r, NULL,
                                             NGX_PUSHJOBS_POLL_UNKNOWN);
        }

        ngx_pushjobs_agent_ref(a);

        /* an older poll of the session still held: it ends now */
        ngx_pushjobs_poll_answer(p, 0);

        p->processing = 1;
    }

    p->polled = 1;
    p->missed = 0;

    for (i = 0; i < msgs->u.array.len && !p->closed; i++) {

        if (ngx_pushjobs_poll_is_close(msgs->u.array.values[i])) {
            ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_NORMAL);
            break;
        }

        ngx_pushjobs_agent_handle(a, msgs->u.array.values[i]);
    }

    p->processing = 0;

    ngx_pushjobs_json_free(msgs);

    if (p->closed) {
        rc = ngx_pushjobs_poll_respond(r, p, p->code);
        ngx_pushjobs_agent_unref(a);
        return rc;
    }

    if (p->out.head) {
        rc = ngx_pushjobs_poll_respond(r, p, 0);
        ngx_pushjobs_agent_unref(a);
        return rc;
    }

    /*
     * The agent's next request already read with this one, by nginx or by
     * TLS (pipelined right behind it, e.g. live output chunks in a row):
     * no read event will come for it, so this poll is answered now, empty.
     * Unless the store has no room for the agent's output: then the poll
     * is held (nginx reads no request behind it) until the store resumes
     * the session, a message comes for the agent, or the hold time passes.
     */

    if (!ngx_pushjobs_agent_stalled(a) && ngx_pushjobs_poll_pipelined(r)) {
        rc = ngx_pushjobs_poll_respond(r, p, 0);
        ngx_pushjobs_agent_unref(a);
        return rc;
    }

    /* nothing to say yet: hold the request */

    ngx_http_set_ctx(r, pr, ngx_pushjobs_module);

    pr->poll = p;
    p->held = pr;

    ngx_add_timer(&p->hold, NGX_PUSHJOBS_POLL_HOLD);

    r->read_event_handler = ngx_pushjobs_poll_read_handler;

    /* a reload or shutdown closes idle connections: let it end this poll */
    r->connection->idle = 1;

    /*
     * Bytes that came while this poll was being read and handled made
     * their (edge-triggered) read event then: look at them now.
     */
    if (r->connection->read->ready) {
        ngx_post_event(r->connection->read, &ngx_posted_events);
    }

    ngx_pushjobs_agent_unref(a);

    return NGX_DONE;
}


static ngx_int_t
ngx_pushjobs_poll_send(ngx_pushjobs_chan_t *ch, ngx_pushjobs_msg_t *msg)
{
    ngx_pushjobs_poll_t *p = (ngx_pushjobs_poll_t *) ch;

    ngx_int_t  rc;

    if (msg->data[0] != (0x80 | NGX_PUSHJOBS_WS_TEXT)) {
        /* pings and pongs are the websocket's own */
        return NGX_OK;
    }

    rc = ngx_pushjobs_out_push(&p->out, msg,
                               ngx_pushjobs_worker->pmcf->max_queued_output,
                               ngx_pushjobs_worker->log);

    if (rc != NGX_OK) {
        return rc;
    }

    /* what is queued in this turn of the event loop goes in one answer */

    if (p->held && !p->processing && !p->flush.posted) {
        ngx_post_event(&p->flush, &ngx_posted_events);
    }

    return NGX_OK;
}


/*
 * Every ping interval: NGX_DECLINED when the session has neither been
 * polled nor held a poll for NGX_PUSHJOBS_POLL_MISSED intervals.
 */

static ngx_int_t
ngx_pushjobs_poll_tick(ngx_pushjobs_chan_t *ch)
{
    ngx_pushjobs_poll_t *p = (ngx_pushjobs_poll_t *) ch;

    if (p->held || p->polled) {
        p->polled = 0;
        p->missed = 0;
        return NGX_OK;
    }

    if (++p->missed >= NGX_PUSHJOBS_POLL_MISSED) {
        ngx_log_error(NGX_LOG_INFO, ch->agent->log, 0,
                      "pushjobs: agent \"%V\" of \"%V\" stopped polling",
                      &ch->agent->name, &ch->agent->org);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* The session is closed: a held poll gets the close code. */

static void
ngx_pushjobs_poll_close(ngx_pushjobs_chan_t *ch, ngx_uint_t code)
{
    ngx_pushjobs_poll_t *p = (ngx_pushjobs_poll_t *) ch;

    ngx_pushjobs_agent_t  *a;

    if (p->closed) {
        return;
    }

    a = ch->agent;

    ngx_log_error(NGX_LOG_INFO, a->log, 0,
                  "pushjobs: closing long-poll agent \"%V\" of \"%V\", "
                  "session %uL, code %ui", &a->name, &a->org, a->session,
                  code);

    p->closed = 1;
    p->code = code ? code : NGX_PUSHJOBS_WS_NORMAL;

    ngx_pushjobs_out_free(&p->out);

    if (p->held) {
        ngx_pushjobs_poll_answer(p, p->code);
    }

    ngx_pushjobs_poll_unhold(p);
}


/* The session is freed, or could not be created. */

static void
ngx_pushjobs_poll_free(ngx_pushjobs_chan_t *ch)
{
    ngx_pushjobs_poll_t *p = (ngx_pushjobs_poll_t *) ch;

    if (p->held) {
        p->held->poll = NULL;
        p->held = NULL;
    }

    ngx_pushjobs_poll_unhold(p);

    ngx_pushjobs_out_free(&p->out);

    ngx_free(p);
}


/* The store has room again: a poll held for it is answered. */

static void
ngx_pushjobs_poll_resume(ngx_pushjobs_chan_t *ch)
{
    ngx_pushjobs_poll_t *p = (ngx_pushjobs_poll_t *) ch;

    if (p->held && !p->closed && !p->flush.posted) {
        ngx_post_event(&p->flush, &ngx_posted_events);
    }
}


static ngx_pushjobs_poll_t *
ngx_pushjobs_poll_create(ngx_log_t *log)
{
    ngx_pushjobs_poll_t  *p;

    p = ngx_alloc(sizeof(ngx_pushjobs_poll_t), log);
    if (p == NULL) {
        return NULL;
    }

    ngx_memzero(p, sizeof(ngx_pushjobs_poll_t));

    p->chan.transport = &ngx_pushjobs_poll_transport;

    ngx_pushjobs_out_init(&p->out);

    ngx_pushjobs_init_timer(&p->hold, ngx_pushjobs_poll_event, p, log);
    ngx_pushjobs_init_timer(&p->flush, ngx_pushjobs_poll_event, p, log);

    /* unguessable, and distinct from sessions of other workers */

    p->token_len = ngx_sprintf(p->token, "%P-%08xD%08xD", ngx_pid,
                               (uint32_t) ngx_random(),
                               (uint32_t) ngx_random())
                   - p->token;

    return p;
}


/*
 * 200 with a JSON array: the queued messages (taken off the queue), then a
 * close message if code is set.  p is NULL for an unknown session.
 */

static ngx_int_t
ngx_pushjobs_poll_respond(ngx_http_request_t *r, ngx_pushjobs_poll_t *p,
    ngx_uint_t code)
{
    u_char              *d;
    size_t               len;
    ngx_str_t            body;
    ngx_table_elt_t     *h;
    ngx_pushjobs_msg_t  *msg;

    /* a message's payload and a comma fit in its framed length */

    len = 2 + (p ? p->out.bytes : 0)
          + sizeof(",{\"type\":\"close\",\"v\":1,\"code\":}") - 1
          + NGX_INT_T_LEN;

    body.data = ngx_pnalloc(r->pool, len);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    d = body.data;
    *d++ = '[';

    if (p) {
        while ((msg = ngx_pushjobs_out_pop(&p->out)) != NULL) {
            if (d - body.data > 1) {
                *d++ = ',';
            }

            d = ngx_cpymem(d, msg->payload.data, msg->payload.len);
            ngx_pushjobs_msg_release(msg);
        }
    }

    if (code) {
        d = ngx_sprintf(d, "%s{\"type\":\"close\",\"v\":1,\"code\":%ui}",
                        d - body.data > 1 ? "," : "", code);
    }

    *d++ = ']';

    body.len = d - body.data;

    if (p && !p->closed) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "X-Pushjobs-Session");
        h->value.data = ngx_pnalloc(r->pool, p->token_len);
        if (h->value.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memcpy(h->value.data, p->token, p->token_len);
        h->value.len = p->token_len;
    }

    return ngx_pushjobs_json_send(r, NGX_HTTP_OK, &body);
}


/* Answers the held poll, if any, with what is queued. */

static void
ngx_pushjobs_poll_answer(ngx_pushjobs_poll_t *p, ngx_uint_t code)
{
    ngx_int_t                 rc;
    ngx_connection_t         *c;
    ngx_http_request_t       *r;
    ngx_pushjobs_poll_req_t  *pr;

    pr = p->held;

    if (pr == NULL) {
        return;
    }

    r = pr->request;
    c = r->connection;

    pr->poll = NULL;
    p->held = NULL;

    ngx_pushjobs_poll_unhold(p);

    /* the agent polls again at once */
    p->polled = 1;

    c->idle = 0;
    r->read_event_handler = ngx_http_block_reading;

    rc = ngx_pushjobs_poll_respond(r, p, code);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_pushjobs_poll_unhold(ngx_pushjobs_poll_t *p)
{
    if (p->hold.timer_set) {
        ngx_del_timer(&p->hold);
    }

    if (p->flush.posted) {
        ngx_delete_posted_event(&p->flush);
    }
}


/* The hold time is over, or messages were queued: answer. */

static void
ngx_pushjobs_poll_event(ngx_event_t *ev)
{
    ngx_pushjobs_poll_t  *p;

    p = ev->data;

    if (!p->closed) {
        ngx_pushjobs_poll_answer(p, 0);
    }
}


/*
 * Bytes on the connection of a held poll: the agent's next request,
 * pipelined because it has something to say; the held poll ends at once
 * so that nginx reads it.  Or the agent went away.
 */

static void
ngx_pushjobs_poll_read_handler(ngx_http_request_t *r)
{
    u_char                    buf[1];
    ssize_t                   n;
    ngx_err_t                 err;
    ngx_connection_t         *c;
    ngx_pushjobs_poll_req_t  *pr;

    c = r->connection;
    pr = ngx_http_get_module_ctx(r, ngx_pushjobs_module);

#if (NGX_HTTP_V2)
    if (r->stream) {
        ngx_http_test_reading(r);
        return;
    }
#endif

    n = ngx_pushjobs_poll_pipelined(r) ? 1 : recv(c->fd, buf, 1, MSG_PEEK);
    err = ngx_socket_errno;

    if (n > 0) {
        if (pr && pr->poll && !pr->poll->chan.agent->stalled) {
            ngx_pushjobs_poll_answer(pr->poll, 0);
            return;
        }

        /* held for back-pressure: the store resumes it (poll_resume()) */
        if (ngx_pushjobs_agent_read_off(c) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        }

        return;
    }

    if (n == -1 && err == NGX_EAGAIN) {
        c->read->ready = 0;

        if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        }

        return;
    }

    /* closed by the agent, or broken: the session stays until it expires */

    c->error = 1;

    ngx_log_error(NGX_LOG_INFO, c->log, n == 0 ? 0 : err,
                  "pushjobs: the agent closed a held poll");

    ngx_http_finalize_request(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
}


/*
 * Bytes of the agent's next request already taken off the socket: in
 * nginx's buffer behind this request, or in the TLS layer's (a record read
 * with the last one of this request).  The socket alone would not show
 * them, nor make another read event.
 */

static ngx_uint_t
ngx_pushjobs_poll_pipelined(ngx_http_request_t *r)
{
#if (NGX_HTTP_V2)
    if (r->stream) {
        return 0;
    }
#endif

    if (r->header_in && r->header_in->pos < r->header_in->last) {
        return 1;
    }

#if (NGX_HTTP_SSL)
    if (r->connection->ssl
        && SSL_has_pending(r->connection->ssl->connection))
    {
        return 1;
    }
#endif

    return 0;
}


/* The request is being freed (answered, closed by the agent, shutdown). */

static void
ngx_pushjobs_poll_cleanup(void *data)
{
    ngx_pushjobs_poll_req_t *pr = data;

    ngx_pushjobs_poll_t  *p;

    p = pr->poll;

    if (p == NULL) {
        return;
    }

    pr->poll = NULL;
    p->held = NULL;

    ngx_pushjobs_poll_unhold(p);
}


static ngx_uint_t
ngx_pushjobs_poll_is_close(void *msg)
{
    ngx_str_t  type;

    if (ngx_pushjobs_json_string(ngx_pushjobs_json_get(msg, "type"), &type)
        != NGX_OK)
    {
        return 0;
    }

    return type.len == 5 && ngx_strncmp(type.data, "close", 5) == 0;
}
