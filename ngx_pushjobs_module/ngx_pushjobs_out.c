
/*
 * Copyright (C) pushjobs developers
 */


/*
 * The output queue of a long-lived connection (agent channel, event feed):
 * a queue of shared, refcounted messages, with a byte cap so that a peer
 * that does not read cannot make us hold unbounded memory, and send_timeout
 * while the peer does not take what is written.
 *
 * An event feed keeps its HTTP request: its queue goes through nginx's
 * output filter chain (ngx_pushjobs_out_output), which does the chunked
 * encoding or the HTTP/2 framing on a connection that HTTP/2 streams
 * share, and runs any body filter.  An agent channel writes its bytes
 * itself with c->send() (ngx_pushjobs_out_send, TLS included): after the
 * 101 a websocket's HTTP request is released and the connection is a plain
 * byte stream, as nginx's own upgraded proxy connection writes directly.
 */


#include "ngx_pushjobs_module.h"


static ngx_int_t ngx_pushjobs_out_filters_done(ngx_http_request_t *r);
static ngx_int_t ngx_pushjobs_out_wait(ngx_connection_t *c,
    ngx_msec_t send_timeout);


struct ngx_pushjobs_out_link_s {
    ngx_pushjobs_out_link_t    *next;
    ngx_pushjobs_msg_t         *msg;
};


/*
 * A message of size bytes to fill, for connections that are not
 * websockets; laid out as ngx_pushjobs_msg_create() does, so that
 * ngx_pushjobs_msg_release() frees it.
 */

ngx_pushjobs_msg_t *
ngx_pushjobs_msg_raw(size_t size, ngx_log_t *log)
{
    ngx_pushjobs_msg_t  *msg;

    msg = ngx_alloc(sizeof(ngx_pushjobs_msg_t) + size, log);
    if (msg == NULL) {
        return NULL;
    }

    msg->refs = 1;
    msg->data = (u_char *) msg + sizeof(ngx_pushjobs_msg_t);
    msg->len = size;
    msg->payload.data = msg->data;
    msg->payload.len = size;

    return msg;
}


void
ngx_pushjobs_out_init(ngx_pushjobs_out_t *out)
{
    out->head = NULL;
    out->tail = &out->head;
    out->sent = 0;
    out->bytes = 0;
    out->free = NULL;
    out->busy = NULL;
}


/*
 * NGX_OK when queued, NGX_DECLINED when the queue would exceed max bytes,
 * NGX_ERROR when out of memory.
 */

ngx_int_t
ngx_pushjobs_out_push(ngx_pushjobs_out_t *out, ngx_pushjobs_msg_t *msg,
    size_t max, ngx_log_t *log)
{
    ngx_pushjobs_out_link_t  *l;

    if (out->bytes + msg->len > max) {
        return NGX_DECLINED;
    }

    l = ngx_alloc(sizeof(ngx_pushjobs_out_link_t), log);
    if (l == NULL) {
        return NGX_ERROR;
    }

    msg->refs++;

    l->msg = msg;
    l->next = NULL;
    *out->tail = l;
    out->tail = &l->next;
    out->bytes += msg->len;

    return NGX_OK;
}


/*
 * For a connection that still has its HTTP request: the response header
 * first, through the filters, then the queue.  Same results as
 * ngx_pushjobs_out_send().
 */

ngx_int_t
ngx_pushjobs_out_flush(ngx_pushjobs_out_t *out, ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_core_loc_conf_t  *clcf;

    rc = ngx_pushjobs_out_filters_done(r);
    if (rc != NGX_OK) {
        return rc;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    return ngx_pushjobs_out_send(out, r->connection, clcf->send_timeout);
}


/*
 * What the filters still hold of a request's output: NGX_OK when nothing,
 * else NGX_AGAIN (the rest waits for the write event, at most
 * send_timeout) or NGX_ERROR.
 */

static ngx_int_t
ngx_pushjobs_out_filters_done(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_connection_t          *c;
    ngx_http_core_loc_conf_t  *clcf;

    c = r->connection;

    if (r->out == NULL && !c->buffered) {
        return NGX_OK;
    }

    rc = ngx_http_output_filter(r, NULL);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (r->out || c->buffered) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
        return ngx_pushjobs_out_wait(c, clcf->send_timeout);
    }

    return NGX_OK;
}


/*
 * Writes what the socket takes.  NGX_OK when the queue is empty, NGX_AGAIN
 * when the rest waits for the write event (at most send_timeout), NGX_ERROR
 * when the connection broke.  A message half written stays at the head
 * with the same pointer, as OpenSSL wants for a retried write.
 */

ngx_int_t
ngx_pushjobs_out_send(ngx_pushjobs_out_t *out, ngx_connection_t *c,
    ngx_msec_t send_timeout)
{
    ssize_t                    n;
    ngx_pushjobs_msg_t        *msg;
    ngx_pushjobs_out_link_t   *l;

    while (out->head) {
        l = out->head;
        msg = l->msg;

        n = c->send(c, msg->data + out->sent, msg->len - out->sent);

        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (n == NGX_AGAIN) {
            return ngx_pushjobs_out_wait(c, send_timeout);
        }

        out->sent += n;

        if (out->sent < msg->len) {
            continue;
        }

        out->head = l->next;
        if (out->head == NULL) {
            out->tail = &out->head;
        }

        out->sent = 0;
        out->bytes -= msg->len;

        ngx_pushjobs_msg_release(msg);
        ngx_free(l);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    return NGX_OK;
}


/*
 * For a request that keeps its HTTP request (an event feed, HTTP/1.x or an
 * HTTP/2 stream): the queue through the output filter chain, one message
 * at a time, each flushed.  The message passed to the filters stays at the
 * head of the queue (out->sent is its length), and counts against the byte
 * cap, until the filters hold nothing more (r->out, c->buffered): they may
 * point into it until then.  NGX_OK when all is written, NGX_AGAIN when the
 * rest waits for the request's write event (at most send_timeout),
 * NGX_ERROR when the connection broke.
 */

ngx_int_t
ngx_pushjobs_out_output(ngx_pushjobs_out_t *out, ngx_http_request_t *r)
{
    ngx_buf_t                 *b;
    ngx_int_t                  rc;
    ngx_chain_t               *cl;
    ngx_connection_t          *c;
    ngx_pushjobs_msg_t        *msg;
    ngx_pushjobs_out_link_t   *l;
    ngx_http_core_loc_conf_t  *clcf;

    rc = ngx_pushjobs_out_filters_done(r);
    if (rc != NGX_OK) {
        return rc;
    }

    c = r->connection;
    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    for ( ;; ) {

        l = out->head;

        if (l != NULL && out->sent) {

            /* the filters are done with the message at the head */

            out->head = l->next;
            if (out->head == NULL) {
                out->tail = &out->head;
            }

            out->sent = 0;
            out->bytes -= l->msg->len;

            ngx_pushjobs_msg_release(l->msg);
            ngx_free(l);

            l = out->head;
        }

        if (l == NULL) {
            break;
        }

        msg = l->msg;

        cl = ngx_chain_get_free_buf(r->pool, &out->free);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        b = cl->buf;
        ngx_memzero(b, sizeof(ngx_buf_t));

        b->tag = (ngx_buf_tag_t) &ngx_pushjobs_module;
        b->pos = msg->data;
        b->last = msg->data + msg->len;
        b->start = b->pos;
        b->end = b->last;
        b->memory = 1;
        b->flush = 1;

        out->sent = msg->len;

        rc = ngx_http_output_filter(r, cl);

        ngx_chain_update_chains(r->pool, &out->free, &out->busy, &cl,
                                (ngx_buf_tag_t) &ngx_pushjobs_module);

        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (r->out || c->buffered) {
            return ngx_pushjobs_out_wait(c, clcf->send_timeout);
        }
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_pushjobs_out_wait(ngx_connection_t *c, ngx_msec_t send_timeout)
{
    if (!c->write->timer_set) {
        ngx_add_timer(c->write, send_timeout);
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_AGAIN;
}


/*
 * Takes the first message off a queue that is not written to a socket (a
 * long-poll session's); the caller releases it.  NULL when empty.
 */

ngx_pushjobs_msg_t *
ngx_pushjobs_out_pop(ngx_pushjobs_out_t *out)
{
    ngx_pushjobs_msg_t       *msg;
    ngx_pushjobs_out_link_t  *l;

    l = out->head;

    if (l == NULL) {
        return NULL;
    }

    out->head = l->next;
    if (out->head == NULL) {
        out->tail = &out->head;
    }

    msg = l->msg;
    out->bytes -= msg->len;

    ngx_free(l);

    return msg;
}


void
ngx_pushjobs_out_free(ngx_pushjobs_out_t *out)
{
    ngx_pushjobs_out_link_t  *l;

    while (out->head) {
        l = out->head;
        out->head = l->next;
        ngx_pushjobs_msg_release(l->msg);
        ngx_free(l);
    }

    ngx_pushjobs_out_init(out);
}
