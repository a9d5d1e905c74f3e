/*
 * Copyright (C) pushjobs developers
 */


/*
 * The websocket transport of the agent channel: the upgrade of an
 * authenticated request, the read and write loops of the connection, the
 * frames in and out, and the pings.  The frame reader and the handshake
 * themselves are in ngx_pushjobs_ws.c.
 *
 * The channel does its own I/O with c->recv()/c->send() (TLS included).
 * Once the 101 is on the wire the HTTP request is released, as nginx does
 * between keepalive requests: the access log gets its line, the request's
 * pool and the header buffers are freed, and the connection's handlers
 * become the channel's.  An idle channel then costs its TLS state, the
 * connection's small pool and the session.  Every frame sent is a
 * refcounted message, framed once and shared by all agents it goes to.
 *
 * Writing with c->send() once the request is released is what nginx's own
 * upgraded proxy does (ngx_http_upstream_upgrade()): the connection is no
 * longer an HTTP one, and no output filter applies to it.  Until then the
 * 101 and what follows go through the request's output chain.  An upgrade
 * is HTTP/1.1 only: the channel's routes refuse HTTP/2 requests, whose
 * stream shares its connection with others.
 */


#include "ngx_pushjobs_module.h"


#define NGX_PUSHJOBS_WS_READ_BUF       16384
#define NGX_PUSHJOBS_WS_READS          32


typedef struct {
    ngx_pushjobs_chan_t         chan;

    /* until the channel has released its HTTP request */
    ngx_http_request_t         *request;
    ngx_connection_t           *connection;
    ngx_msec_t                  send_timeout;

    ngx_pushjobs_ws_reader_t    reader;

    ngx_pushjobs_out_t          out;

    /* the HTTP/1.x connection write handler, given back if a release fails */
    ngx_event_handler_pt        http_write;

    /* when the agent was last given a TLS session ticket */
    time_t                      ticket_at;

    unsigned                    alive:1;
    unsigned                    accepting:1;
} ngx_pushjobs_ws_chan_t;


static ngx_int_t ngx_pushjobs_ws_chan_send(ngx_pushjobs_chan_t *ch,
    ngx_pushjobs_msg_t *msg);
static void ngx_pushjobs_ws_chan_close(ngx_pushjobs_chan_t *ch,
    ngx_uint_t code);
static ngx_int_t ngx_pushjobs_ws_chan_tick(ngx_pushjobs_chan_t *ch);
static void ngx_pushjobs_ws_chan_ticket(ngx_pushjobs_ws_chan_t *ws);
static void ngx_pushjobs_ws_chan_free(ngx_pushjobs_chan_t *ch);
static void ngx_pushjobs_ws_chan_resume(ngx_pushjobs_chan_t *ch);
static void ngx_pushjobs_ws_chan_cleanup(void *data);
static void ngx_pushjobs_ws_chan_release(ngx_event_t *wev);
static void ngx_pushjobs_ws_chan_gone(void *data);
static void ngx_pushjobs_ws_chan_read_request(ngx_http_request_t *r);
static void ngx_pushjobs_ws_chan_read_event(ngx_event_t *rev);
static void ngx_pushjobs_ws_chan_read(ngx_pushjobs_ws_chan_t *ws);
static ngx_int_t ngx_pushjobs_ws_chan_feed(ngx_pushjobs_ws_chan_t *ws,
    u_char *pos, u_char *last);
static void ngx_pushjobs_ws_chan_write_request(ngx_http_request_t *r);
static void ngx_pushjobs_ws_chan_write_event(ngx_event_t *wev);
static void ngx_pushjobs_ws_chan_write(ngx_pushjobs_ws_chan_t *ws);
static ngx_int_t ngx_pushjobs_ws_chan_flush(ngx_pushjobs_ws_chan_t *ws);


static const ngx_pushjobs_transport_t  ngx_pushjobs_ws_transport = {
    ngx_pushjobs_ws_chan_send,
    ngx_pushjobs_ws_chan_close,
    ngx_pushjobs_ws_chan_tick,
    ngx_pushjobs_ws_chan_free,
    ngx_pushjobs_ws_chan_resume,
    "",
    0
};


/*
 * What the worker's websocket channels share, created with the worker: the
 * buffer each read goes into (the frame reader keeps what it needs of it)
 * and the ping message.
 */

ngx_int_t
ngx_pushjobs_ws_chan_init(ngx_pushjobs_worker_t *w)
{
    w->ws_read_buf = ngx_alloc(NGX_PUSHJOBS_WS_READ_BUF, w->log);
    if (w->ws_read_buf == NULL) {
        return NGX_ERROR;
    }

    w->ws_ping = ngx_pushjobs_msg_create(NGX_PUSHJOBS_WS_PING, NULL, 0);
    if (w->ws_ping == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* The worker exits, its channels closed. */

void
ngx_pushjobs_ws_chan_done(ngx_pushjobs_worker_t *w)
{
    if (w->ws_read_buf) {
        ngx_free(w->ws_read_buf);
        w->ws_read_buf = NULL;
    }

    if (w->ws_ping) {
        ngx_pushjobs_msg_release(w->ws_ping);
        w->ws_ping = NULL;
    }
}


ngx_int_t
ngx_pushjobs_agent_accept(ngx_http_request_t *r, ngx_str_t *org,
    ngx_str_t *node)
{
    ngx_int_t                  rc;
    ngx_connection_t          *c;
    ngx_http_cleanup_t        *cln;
    ngx_pushjobs_agent_t      *a;
    ngx_pushjobs_worker_t     *w;
    ngx_pushjobs_ws_chan_t    *ws;
    ngx_http_core_loc_conf_t  *clcf;

    w = ngx_pushjobs_worker;
    c = r->connection;

    if (w == NULL || org->len > NGX_PUSHJOBS_NAME_MAX
        || node->len > NGX_PUSHJOBS_NAME_MAX)
    {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    ws = ngx_alloc(sizeof(ngx_pushjobs_ws_chan_t), w->log);
    if (ws == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memzero(ws, sizeof(ngx_pushjobs_ws_chan_t));

    /* the handshake's ticket, if any */
    ws->ticket_at = ngx_time();

    a = ngx_pushjobs_agent_create(org, node, c->log);
    if (a == NULL) {
        ngx_free(ws);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        ngx_pushjobs_agent_unref(a);
        ngx_free(ws);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_pushjobs_ws_handshake(r);

    if (rc != NGX_OK) {
        ngx_pushjobs_agent_unref(a);
        ngx_free(ws);
        return rc;
    }

    cln->handler = ngx_pushjobs_ws_chan_cleanup;
    cln->data = ws;

    /* from now on the request's context is the channel */
    ngx_http_set_ctx(r, ws, ngx_pushjobs_module);

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    ws->chan.transport = &ngx_pushjobs_ws_transport;
    ws->chan.agent = a;
    ws->request = r;
    ws->connection = c;
    ws->send_timeout = clcf->send_timeout;
    ws->alive = 1;

    ngx_pushjobs_out_init(&ws->out);
    ngx_pushjobs_ws_reader_init(&ws->reader, w->pmcf->max_message_size,
                                c->log);

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    (void) ngx_tcp_nodelay(c);

    r->read_event_handler = ngx_pushjobs_ws_chan_read_request;
    r->write_event_handler = ngx_pushjobs_ws_chan_write_request;

    /*
     * The request is released from the write event, posted: not here,
     * where the callers up the stack still use it.
     */

    ws->http_write = c->write->handler;
    c->write->handler = ngx_pushjobs_ws_chan_release;
    ngx_post_event(c->write, &ngx_posted_events);

    /* a reload or shutdown closes idle connections: let it close ours */
    c->idle = 1;

    /*
     * The welcome, and any frame the agent sent behind its request, may
     * close the channel: keep it until we are done, and let a close leave
     * the request to nginx, whose handler is still running (see
     * ngx_pushjobs_ws_chan_close()).
     */

    ngx_pushjobs_agent_ref(a);
    ws->accepting = 1;

    ngx_pushjobs_agent_open(a, &ws->chan);

    /* bytes the agent sent right after its upgrade request */

    if (!a->closed && r->header_in->pos < r->header_in->last) {
        if (ngx_pushjobs_ws_chan_feed(ws, r->header_in->pos,
                                      r->header_in->last)
            == NGX_OK)
        {
            r->header_in->pos = r->header_in->last;
        }
    }

    /* bytes that arrived while the request was being authenticated */

    if (!a->closed && c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);
    }

    ws->accepting = 0;
    ngx_pushjobs_agent_unref(a);

    return NGX_DONE;
}


static ngx_int_t
ngx_pushjobs_ws_chan_send(ngx_pushjobs_chan_t *ch, ngx_pushjobs_msg_t *msg)
{
    ngx_pushjobs_ws_chan_t *ws = (ngx_pushjobs_ws_chan_t *) ch;

    ngx_int_t   rc;
    ngx_uint_t  waiting;

    /* a non-empty queue means the write handler is already waiting */
    waiting = (ws->out.head != NULL);

    rc = ngx_pushjobs_out_push(&ws->out, msg,
                               ngx_pushjobs_worker->pmcf->max_queued_output,
                               ch->agent->log);

    if (rc != NGX_OK || waiting) {
        return rc;
    }

    if (ngx_pushjobs_ws_chan_flush(ws) == NGX_ERROR) {
        ws->connection->error = 1;
        return NGX_ABORT;
    }

    return NGX_OK;
}


/*
 * The session is closed: a close frame if one can be written, and the
 * connection goes, with its request if the channel still holds it.
 */

static void
ngx_pushjobs_ws_chan_close(ngx_pushjobs_chan_t *ch, ngx_uint_t code)
{
    ngx_pushjobs_ws_chan_t *ws = (ngx_pushjobs_ws_chan_t *) ch;

    u_char                 frame[4];
    ngx_connection_t      *c;
    ngx_pool_cleanup_t    *cln;
    ngx_http_request_t    *r;
    ngx_pushjobs_agent_t  *a;

    a = ch->agent;
    r = ws->request;
    c = ws->connection;

    ngx_log_error(NGX_LOG_INFO, c->log, 0,
                  "pushjobs: closing agent \"%V\" of \"%V\", session %uL, "
                  "code %ui", &a->name, &a->org, a->session, code);

    /*
     * A best-effort close frame, unless frames wait (OpenSSL may hold a
     * record of the first one, which must be written again as it was) or
     * the connection is broken.  Abandoned frames: no TLS close_notify
     * either, it would fail the same way ("bad write retry").
     */

    if (ws->out.head) {
        c->error = 1;
    }

    if (code && !c->error && !c->buffered && (r == NULL || r->out == NULL)) {
        frame[0] = 0x80 | NGX_PUSHJOBS_WS_CLOSE;
        frame[1] = 2;
        frame[2] = (u_char) (code >> 8);
        frame[3] = (u_char) (code & 0xff);

        (void) c->send(c, frame, 4);
    }

    ngx_pushjobs_ws_reader_free(&ws->reader);
    ngx_pushjobs_out_free(&ws->out);

    ws->request = NULL;
    ws->connection = NULL;

    if (r) {
        /*
         * The request is terminated by a posted request.  Run it now,
         * unless the channel is being accepted: the request's handler is
         * then still on the stack and would use the freed request; nginx
         * runs it when that handler has returned.
         */

        ngx_http_finalize_request(r, NGX_ERROR);

        if (!ws->accepting) {
            ngx_http_run_posted_requests(c);
        }

        return;
    }

    /* the pool cleanup must not see the channel once it is freed */

    for (cln = c->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_pushjobs_ws_chan_gone && cln->data == ws) {
            cln->handler = NULL;
        }
    }

    ngx_http_close_connection(c);
}


/*
 * Every ping interval: the agent must have sent something (a pong at
 * least) since the last ping.
 */

static ngx_int_t
ngx_pushjobs_ws_chan_tick(ngx_pushjobs_chan_t *ch)
{
    ngx_pushjobs_ws_chan_t *ws = (ngx_pushjobs_ws_chan_t *) ch;

    ngx_pushjobs_agent_t  *a;

    a = ch->agent;

    /* a stalled channel reads nothing, its pong included */

    if (!ws->alive && !a->stalled) {
        ngx_log_error(NGX_LOG_INFO, a->log, 0,
                      "pushjobs: agent \"%V\" of \"%V\" did not answer the "
                      "last ping", &a->name, &a->org);
        return NGX_DECLINED;
    }

    ws->alive = 0;

    ngx_pushjobs_ws_chan_ticket(ws);

    ngx_pushjobs_agent_send(a, ngx_pushjobs_worker->ws_ping);

    return NGX_OK;
}


/*
 * A TLS 1.3 session ticket is good for its session's timeout from when it
 * was issued, and a channel lives for days: the ticket of its handshake
 * would be long expired when a restart or a move to another front end
 * makes the agent reconnect, and every agent would make a full handshake
 * at once.  So once half of that time has passed the channel is issued a
 * new ticket, which goes out before the ping that follows (both agents
 * keep the last ticket they got).  About 200 bytes and one ticket
 * encryption per agent per half lifetime.
 *
 * The lifetime is pushjobs_ticket_lifetime (1 hour), not nginx's
 * ssl_session_timeout (5 minutes by default, and Chef's server block
 * owns it): after a restart each agent reconnects with a ticket up to half
 * a lifetime old, and a storm of 100,000 reconnects lasts minutes; with 5
 * minutes those late in the storm made a full handshake after all.  The
 * handshake's session has nginx's timeout: the first tick gives the
 * channel a ticket of the agent lifetime.  A resumed session keeps the
 * lifetime it was issued with (OpenSSL checks a ticket's session against
 * its own timeout).
 */

static void
ngx_pushjobs_ws_chan_ticket(ngx_pushjobs_ws_chan_t *ws)
{
#if (NGX_HTTP_SSL && defined TLS1_3_VERSION)
    SSL         *ssl;
    time_t       now, lifetime;
    long         timeout;
    SSL_SESSION *sess;

    if (ws->connection == NULL || ws->connection->ssl == NULL) {
        return;
    }

    ssl = ws->connection->ssl->connection;

    if (SSL_version(ssl) != TLS1_3_VERSION
        || (SSL_get_options(ssl) & SSL_OP_NO_TICKET))
    {
        return;
    }

    sess = SSL_get0_session(ssl);
    if (sess == NULL) {
        return;
    }

    timeout = SSL_SESSION_get_timeout(sess);
    lifetime = ngx_pushjobs_worker->pmcf->ticket_lifetime;
    now = ngx_time();

    if (lifetime > 0 && timeout != lifetime) {
        /* the tickets from now on are good for the agent lifetime */
        if (SSL_SESSION_set_timeout(sess, lifetime) == 1) {
            timeout = lifetime;
            ws->ticket_at = 0;
        }
    }

    if (timeout <= 0 || now - ws->ticket_at < timeout / 2) {
        return;
    }

    /* the ticket is written now (a full socket keeps it for the next
     * write); a failure costs only the fresh ticket */
    if (SSL_new_session_ticket(ssl) == 1 && SSL_do_handshake(ssl) <= 0) {
        ERR_clear_error();
    }

    ws->ticket_at = now;
#endif
}


static void
ngx_pushjobs_ws_chan_free(ngx_pushjobs_chan_t *ch)
{
    ngx_free(ch);
}


/* Read what the agent sent while the channel was stalled. */

static void
ngx_pushjobs_ws_chan_resume(ngx_pushjobs_chan_t *ch)
{
    ngx_pushjobs_ws_chan_t *ws = (ngx_pushjobs_ws_chan_t *) ch;

    if (ws->connection && !ws->connection->read->posted) {
        ngx_post_event(ws->connection->read, &ngx_posted_events);
    }
}


/*
 * The request is being freed while the channel still holds it: by nginx
 * (shutdown, reload), or by a close.  Not when the channel releases it.
 */

static void
ngx_pushjobs_ws_chan_cleanup(void *data)
{
    ngx_pushjobs_ws_chan_t *ws = data;

    if (ws->request) {
        ngx_pushjobs_ws_chan_gone(ws);
    }
}


/*
 * The posted write event after the 101: once the response header is on
 * the wire, the request is freed and the connection belongs to the
 * channel, as between keepalive requests (ngx_http_set_keepalive()).
 */

static void
ngx_pushjobs_ws_chan_release(ngx_event_t *wev)
{
    ngx_uint_t               closed;
    ngx_chain_t             *cl;
    ngx_connection_t        *c;
    ngx_pool_cleanup_t      *cln;
    ngx_http_log_ctx_t      *ctx;
    ngx_http_request_t      *r;
    ngx_pushjobs_agent_t    *a;
    ngx_http_connection_t   *hc;
    ngx_pushjobs_ws_chan_t  *ws;

    c = wev->data;
    r = c->data;
    ws = ngx_http_get_module_ctx(r, ngx_pushjobs_module);

    if (ws == NULL || ws->request != r || ws->chan.agent->closed) {
        return;
    }

    a = ws->chan.agent;

    /* the 101, then what is queued, as the write handler does */

    ngx_pushjobs_agent_ref(a);
    ngx_pushjobs_ws_chan_write(ws);
    closed = a->closed;
    ngx_pushjobs_agent_unref(a);

    if (closed) {
        return;
    }

    if (r->out || c->buffered) {
        /* the 101 is not out yet: called again when the socket takes it */
        return;
    }

    if (r != r->main || r->main->count != 1 || r->blocked || r->postponed
        || r->main->posted_requests)
    {
        /* something else still uses the request: the channel keeps it */
        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "pushjobs: agent \"%V\" of \"%V\" keeps its request "
                      "(count %d)", &a->name, &a->org, r->main->count);
        wev->handler = ws->http_write;
        return;
    }

    cln = ngx_pool_cleanup_add(c->pool, 0);
    if (cln == NULL) {
        wev->handler = ws->http_write;
        return;
    }

    cln->handler = ngx_pushjobs_ws_chan_gone;
    cln->data = ws;

    hc = r->http_connection;

    /* logs the 101 and destroys the request's pool */

    ws->request = NULL;
    ngx_http_free_request(r, 0);

    c->destroyed = 0;
    c->data = ws;

    ctx = c->log->data;
    ctx->current_request = NULL;
    c->log->action = "serving websocket channel";

    /* the header buffers: large allocations from the connection's pool */

    for (cl = hc->busy; cl; cl = cl->next) {
        ngx_pfree(c->pool, cl->buf->start);
    }

    for (cl = hc->free; cl; cl = cl->next) {
        ngx_pfree(c->pool, cl->buf->start);
    }

    hc->busy = NULL;
    hc->free = NULL;
    hc->nbusy = 0;

    if (c->buffer) {
        ngx_pfree(c->pool, c->buffer->start);
        c->buffer = NULL;
    }

    c->read->handler = ngx_pushjobs_ws_chan_read_event;
    wev->handler = ngx_pushjobs_ws_chan_write_event;

    if (c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "pushjobs: channel released its request");
}


/*
 * The channel's connection is going away without a close: its request
 * being freed by nginx (shutdown, reload) while the channel holds it, or,
 * once released, its pool being destroyed (the connection is already
 * freed then; ngx_pushjobs_ws_chan_close() disarms this cleanup).
 */

static void
ngx_pushjobs_ws_chan_gone(void *data)
{
    ngx_pushjobs_ws_chan_t *ws = data;

    if (ws->chan.agent->closed) {
        return;
    }

    ngx_pushjobs_ws_reader_free(&ws->reader);
    ngx_pushjobs_out_free(&ws->out);

    ws->request = NULL;
    ws->connection = NULL;

    /* may free the channel */
    ngx_pushjobs_agent_gone(ws->chan.agent);
}


static void
ngx_pushjobs_ws_chan_read_request(ngx_http_request_t *r)
{
    ngx_pushjobs_ws_chan_t  *ws;

    ws = ngx_http_get_module_ctx(r, ngx_pushjobs_module);

    if (ws != NULL && !ws->chan.agent->closed) {
        ngx_pushjobs_ws_chan_read(ws);
    }
}


static void
ngx_pushjobs_ws_chan_read_event(ngx_event_t *rev)
{
    ngx_connection_t        *c;
    ngx_pushjobs_ws_chan_t  *ws;

    c = rev->data;
    ws = c->data;

    if (ws == NULL || ws->chan.agent->closed) {
        return;
    }

    if (c->close) {
        /* a reload or shutdown closing idle connections */
        ngx_pushjobs_agent_close(ws->chan.agent, NGX_PUSHJOBS_WS_GOING_AWAY);
        return;
    }

    ngx_pushjobs_ws_chan_read(ws);
}


static void
ngx_pushjobs_ws_chan_read(ngx_pushjobs_ws_chan_t *ws)
{
    ssize_t                n;
    u_char                *buf;
    ngx_uint_t             i;
    ngx_connection_t      *c;
    ngx_pushjobs_agent_t  *a;

    a = ws->chan.agent;
    c = ws->connection;
    buf = ngx_pushjobs_worker->ws_read_buf;

    ngx_pushjobs_agent_ref(a);

    for (i = 0; i < NGX_PUSHJOBS_WS_READS; i++) {

        if (ngx_pushjobs_agent_stalled(a)) {
            /* the store resumes the channel (its read event posted) */
            if (ngx_pushjobs_agent_read_off(c) != NGX_OK) {
                ngx_pushjobs_agent_close(a, 0);
            }

            goto done;
        }

        n = c->recv(c, buf, NGX_PUSHJOBS_WS_READ_BUF);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "pushjobs: agent \"%V\" of \"%V\" closed the "
                          "connection", &a->name, &a->org);
            c->error = 1;
            ngx_pushjobs_agent_close(a, 0);
            goto done;
        }

        if (ngx_pushjobs_ws_chan_feed(ws, buf, buf + n) != NGX_OK) {
            goto done;
        }
    }

    if (i == NGX_PUSHJOBS_WS_READS) {
        /* let other connections have their turn */
        ngx_post_event(c->read, &ngx_posted_events);
        goto done;
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_pushjobs_agent_close(a, 0);
    }

done:

    ngx_pushjobs_agent_unref(a);
}


/*
 * Feeds received bytes to the frame reader; NGX_ERROR if the channel was
 * closed.  The caller holds a reference to the session.
 */

static ngx_int_t
ngx_pushjobs_ws_chan_feed(ngx_pushjobs_ws_chan_t *ws, u_char *pos,
    u_char *last)
{
    ngx_int_t                 rc;
    ngx_pushjobs_msg_t       *pong;
    ngx_pushjobs_agent_t     *a;
    ngx_pushjobs_ws_frame_t   frame;

    a = ws->chan.agent;

    for ( ;; ) {
        rc = ngx_pushjobs_ws_read(&ws->reader, &pos, last, &frame);

        if (rc == NGX_AGAIN) {
            return NGX_OK;
        }

        if (rc == NGX_ERROR) {
            ngx_log_error(NGX_LOG_INFO, a->log, 0,
                          "pushjobs: bad frame from agent \"%V\" of \"%V\", "
                          "closing with %ui", &a->name, &a->org,
                          frame.close_code);
            ngx_pushjobs_agent_close(a, frame.close_code);
            return NGX_ERROR;
        }

        ws->alive = 1;

        switch (frame.opcode) {

        case NGX_PUSHJOBS_WS_TEXT:
            ngx_pushjobs_agent_receive(a, &frame.payload);
            break;

        case NGX_PUSHJOBS_WS_BINARY:
            ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_UNSUPPORTED);
            break;

        case NGX_PUSHJOBS_WS_PING:
            pong = ngx_pushjobs_msg_create(NGX_PUSHJOBS_WS_PONG,
                                           frame.payload.data,
                                           frame.payload.len);
            if (pong) {
                ngx_pushjobs_agent_send(a, pong);
                ngx_pushjobs_msg_release(pong);
            }

            break;

        case NGX_PUSHJOBS_WS_PONG:
            break;

        case NGX_PUSHJOBS_WS_CLOSE:
            ngx_pushjobs_agent_close(a, frame.close_code == 1005
                                        ? NGX_PUSHJOBS_WS_NORMAL
                                        : frame.close_code);
            break;
        }

        if (a->closed) {
            return NGX_ERROR;
        }
    }
}


static void
ngx_pushjobs_ws_chan_write_request(ngx_http_request_t *r)
{
    ngx_pushjobs_ws_chan_t  *ws;

    ws = ngx_http_get_module_ctx(r, ngx_pushjobs_module);

    if (ws != NULL && !ws->chan.agent->closed) {
        ngx_pushjobs_ws_chan_write(ws);
    }
}


static void
ngx_pushjobs_ws_chan_write_event(ngx_event_t *wev)
{
    ngx_connection_t        *c;
    ngx_pushjobs_ws_chan_t  *ws;

    c = wev->data;
    ws = c->data;

    if (ws != NULL && !ws->chan.agent->closed) {
        ngx_pushjobs_ws_chan_write(ws);
    }
}


static void
ngx_pushjobs_ws_chan_write(ngx_pushjobs_ws_chan_t *ws)
{
    ngx_connection_t      *c;
    ngx_pushjobs_agent_t  *a;

    a = ws->chan.agent;
    c = ws->connection;

    if (c->write->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "pushjobs: agent \"%V\" of \"%V\" does not read",
                      &a->name, &a->org);
        c->timedout = 1;
        ngx_pushjobs_agent_close(a, 0);
        return;
    }

    if (ngx_pushjobs_ws_chan_flush(ws) == NGX_ERROR) {
        c->error = 1;
        ngx_pushjobs_agent_close(a, 0);
    }
}


/* Through the request's output chain until it is released, then c->send(). */

static ngx_int_t
ngx_pushjobs_ws_chan_flush(ngx_pushjobs_ws_chan_t *ws)
{
    if (ws->request) {
        return ngx_pushjobs_out_flush(&ws->out, ws->request);
    }

    return ngx_pushjobs_out_send(&ws->out, ws->connection, ws->send_timeout);
}
