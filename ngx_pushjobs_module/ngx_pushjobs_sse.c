
/*
 * Copyright (C) pushjobs developers
 */


/*
 * Server-Sent Events feeds: a job's feed and an org's feed.
 *
 * Events are rows of pushjobs.job_events / pushjobs.org_events, written by
 * the SQL transitions; their NOTIFY ("event ORG JOB") reaches every worker
 * of every front end, and a worker holding feeds of that job or org reads
 * the rows after the last one each feed sent.  So a feed is served by any
 * worker, and Last-Event-ID resumes from the table.  Each event goes
 * through nginx's output filter chain, flushed at once: one HTTP/1.1 chunk,
 * or DATA frames of an HTTP/2 stream (ngx_pushjobs_out_output()).
 *
 * A feed's lifetime.  The feed is freed when its last reference goes:
 *
 *   - the request's, taken at creation; dropped by ngx_pushjobs_feed_close(),
 *     or by the request's cleanup when nginx frees the request itself
 *     (client gone, reload, shutdown);
 *   - a fetch's, taken when its query is queued; dropped by its result
 *     handler once the rows are delivered, or when the query fails;
 *   - a caller's, around code that writes and then still uses the feed.
 *
 * Any write (ngx_pushjobs_feed_event(), _send(), _write_handler()) may close
 * the feed: it is detached at once (closed set, out of the list, keepalive
 * timer deleted, queue freed, request finalized), but its memory stays
 * while a reference is held.  So whoever writes in a loop, or uses the
 * feed after a write, holds a reference and checks closed after each write.
 * Timers and the write handler cannot see a closed feed: the timer is
 * deleted and the request, which holds the context, is gone.
 */


#include "ngx_pushjobs_module.h"


#define NGX_PUSHJOBS_FEED_BATCH       1000
#define NGX_PUSHJOBS_FEED_KEEPALIVE   15000


typedef struct {
    ngx_queue_t                 queue;

    ngx_http_request_t         *request;
    ngx_connection_t           *connection;

    ngx_str_t                   org;
    ngx_str_t                   job;
    ngx_uint_t                  org_feed;
    int64_t                     last;

    ngx_pushjobs_out_t          out;
    ngx_event_t                 keepalive;

    ngx_uint_t                  refs;

    unsigned                    closed:1;
    unsigned                    fetching:1;
    unsigned                    dirty:1;
    unsigned                    finished:1;
    unsigned                    last_sent:1;
} ngx_pushjobs_feed_t;


static ngx_pushjobs_feed_t *ngx_pushjobs_feed_create(ngx_http_request_t *r,
    ngx_str_t *org, ngx_str_t *job, int64_t last);
static ngx_int_t ngx_pushjobs_feed_headers(ngx_http_request_t *r);
static void ngx_pushjobs_feed_fetch(ngx_pushjobs_feed_t *f);
static void ngx_pushjobs_feed_fetched(void *data, PGresult *res);
static size_t ngx_pushjobs_feed_bytes(void);
static void ngx_pushjobs_feed_event(ngx_pushjobs_feed_t *f, ngx_str_t *name,
    ngx_str_t *id, ngx_str_t *data, ngx_str_t *chunk);
static ngx_int_t ngx_pushjobs_feed_unhex(ngx_str_t *hex, ngx_str_t *bytes,
    ngx_log_t *log);
static void ngx_pushjobs_feed_send(ngx_pushjobs_feed_t *f, u_char *data,
    size_t len);
static void ngx_pushjobs_feed_push(ngx_pushjobs_feed_t *f,
    ngx_pushjobs_msg_t *msg);
static void ngx_pushjobs_feed_write_handler(ngx_http_request_t *r);
static void ngx_pushjobs_feed_keepalive_handler(ngx_event_t *ev);
static void ngx_pushjobs_feed_cleanup(void *data);
static void ngx_pushjobs_feed_detach(ngx_pushjobs_feed_t *f);
static void ngx_pushjobs_feed_close(ngx_pushjobs_feed_t *f);
static void ngx_pushjobs_feed_unref(ngx_pushjobs_feed_t *f);


/* The worker's list of open feeds, w->feeds: from init_process on. */

void
ngx_pushjobs_feed_init(ngx_pushjobs_worker_t *w)
{
    ngx_queue_init(&w->feeds);
}


/*
 * Every feed is closed: when the worker starts to exit (an HTTP/2 feed is
 * a stream that nginx does not close with the idle connections), and in
 * exit_process, for those opened since and those of a fast stop.
 */

void
ngx_pushjobs_feed_done(ngx_pushjobs_worker_t *w)
{
    ngx_queue_t          *q;
    ngx_pushjobs_feed_t  *f;

    while (!ngx_queue_empty(&w->feeds)) {
        q = ngx_queue_head(&w->feeds);
        f = ngx_queue_data(q, ngx_pushjobs_feed_t, queue);
        ngx_pushjobs_feed_close(f);
    }
}


/*
 * The answer to pushjobs.feed_open() or pushjobs.org_feed_open(): a summary,
 * or the start of a stream.  Returns NGX_DONE when the request now belongs
 * to a feed.
 */

ngx_int_t
ngx_pushjobs_feed_open(ngx_http_request_t *r, ngx_str_t *org, ngx_str_t *job,
    PGresult *res)
{
    u_char               *p;
    size_t                len;
    int64_t               last;
    ngx_int_t             rc;
    ngx_uint_t            summary;
    ngx_str_t             name, id, data;
    ngx_pushjobs_feed_t  *f;

    if (PQntuples(res) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (job) {
        p = (u_char *) PQgetvalue(res, 0, 0);

        if (ngx_strcmp(p, "missing") == 0) {
            return ngx_pushjobs_json_error(r, NGX_HTTP_NOT_FOUND, 1,
                                           "not found");
        }

        /*
         * "summary": the job ended a while ago, one summary event;
         * "ended": the job ended and the client has seen its last event.
         */

        summary = (ngx_strcmp(p, "summary") == 0);

        if (summary || ngx_strcmp(p, "ended") == 0) {
            rc = ngx_pushjobs_feed_headers(r);
            if (rc != NGX_OK) {
                return rc;
            }

            f = ngx_pushjobs_feed_create(r, org, job, 0);
            if (f == NULL) {
                return NGX_ERROR;
            }

            f->finished = 1;

            if (summary) {
                ngx_str_set(&name, "summary");
                ngx_str_set(&id, "job-1");
                data.data = (u_char *) PQgetvalue(res, 0, 2);
                data.len = PQgetlength(res, 0, 2);

                ngx_pushjobs_feed_event(f, &name, &id, &data, NULL);

            } else {
                ngx_pushjobs_feed_send(f, NULL, 0);
            }

            return NGX_DONE;
        }

        last = ngx_atoof((u_char *) PQgetvalue(res, 0, 1),
                         PQgetlength(res, 0, 1));

    } else {
        last = ngx_atoof((u_char *) PQgetvalue(res, 0, 0),
                         PQgetlength(res, 0, 0));
    }

    if (last < 0) {
        last = 0;
    }

    rc = ngx_pushjobs_feed_headers(r);
    if (rc != NGX_OK) {
        return rc;
    }

    f = ngx_pushjobs_feed_create(r, org, job, last);
    if (f == NULL) {
        return NGX_ERROR;
    }

    /* the event below may close the feed: keep it until we are done */
    f->refs++;

    if (job == NULL && !PQgetisnull(res, 0, 1)) {
        /* the org feed lost track of the client's last event */

        ngx_str_set(&name, "start_of_history");
        ngx_str_set(&id, "start_id");

        len = sizeof("{\"timestamp\":\"\"}") - 1 + PQgetlength(res, 0, 1);
        data.data = ngx_alloc(len, r->connection->log);
        if (data.data == NULL) {
            ngx_pushjobs_feed_close(f);
            ngx_pushjobs_feed_unref(f);
            return NGX_DONE;
        }

        data.len = ngx_sprintf(data.data, "{\"timestamp\":\"%s\"}",
                               PQgetvalue(res, 0, 1))
                   - data.data;

        ngx_pushjobs_feed_event(f, &name, &id, &data, NULL);
        ngx_free(data.data);
    }

    if (!f->closed) {
        ngx_pushjobs_feed_fetch(f);
    }

    ngx_pushjobs_feed_unref(f);

    return NGX_DONE;
}


/* "event ORG JOB": feeds of that job or org read what is new */

void
ngx_pushjobs_feed_notify(ngx_str_t *org, ngx_str_t *job)
{
    ngx_queue_t          *feeds, *q, *next;
    ngx_pushjobs_feed_t  *f;

    feeds = &ngx_pushjobs_worker->feeds;

    for (q = ngx_queue_head(feeds);
         q != ngx_queue_sentinel(feeds);
         q = next)
    {
        next = ngx_queue_next(q);
        f = ngx_queue_data(q, ngx_pushjobs_feed_t, queue);

        if (f->closed || f->finished
            || f->org.len != org->len
            || ngx_strncmp(f->org.data, org->data, org->len) != 0)
        {
            continue;
        }

        if (!f->org_feed
            && (f->job.len != job->len
                || ngx_strncmp(f->job.data, job->data, job->len) != 0))
        {
            continue;
        }

        ngx_pushjobs_feed_fetch(f);
    }
}


/* after the LISTEN connection came back: events may have been missed */

void
ngx_pushjobs_feed_catch_up(void)
{
    ngx_queue_t          *feeds, *q, *next;
    ngx_pushjobs_feed_t  *f;

    feeds = &ngx_pushjobs_worker->feeds;

    for (q = ngx_queue_head(feeds);
         q != ngx_queue_sentinel(feeds);
         q = next)
    {
        next = ngx_queue_next(q);
        f = ngx_queue_data(q, ngx_pushjobs_feed_t, queue);

        if (!f->closed && !f->finished) {
            ngx_pushjobs_feed_fetch(f);
        }
    }
}


static ngx_int_t
ngx_pushjobs_feed_headers(ngx_http_request_t *r)
{
    ngx_int_t         rc;
    ngx_table_elt_t  *h;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    /* tell proxies in front of us not to buffer the stream */

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-Accel-Buffering");
    ngx_str_set(&h->value, "no");

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-cache");

    if (ngx_pushjobs_api_version_header(r) != NGX_OK) {
        return NGX_ERROR;
    }

    r->keepalive = 0;

#if (NGX_HTTP_SSL)
    /*
     * A long-lived stream: no 16k TLS buffer kept per feed (see ws.c).  Not
     * for an HTTP/2 stream, whose TLS connection is its streams' to share.
     */
    if (r->connection->ssl
#if (NGX_HTTP_V2)
        && r->stream == NULL
#endif
       )
    {
        r->connection->ssl->buffer = 0;
    }
#endif

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc == NGX_OK ? NGX_ERROR : rc;
    }

    /*
     * The header waits in the write filter for a body; a feed may have
     * nothing to say for a while, so the client gets the header now.
     */

    rc = ngx_http_send_special(r, NGX_HTTP_FLUSH);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_pushjobs_feed_t *
ngx_pushjobs_feed_create(ngx_http_request_t *r, ngx_str_t *org,
    ngx_str_t *job, int64_t last)
{
    u_char               *p;
    ngx_connection_t     *c;
    ngx_http_cleanup_t   *cln;
    ngx_pushjobs_feed_t  *f;

    c = r->connection;

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NULL;
    }

    f = ngx_alloc(sizeof(ngx_pushjobs_feed_t) + org->len
                  + (job ? job->len : 0), c->log);
    if (f == NULL) {
        return NULL;
    }

    ngx_memzero(f, sizeof(ngx_pushjobs_feed_t));

    p = (u_char *) f + sizeof(ngx_pushjobs_feed_t);
    f->org.data = p;
    f->org.len = org->len;
    p = ngx_cpymem(p, org->data, org->len);

    if (job) {
        f->job.data = p;
        f->job.len = job->len;
        ngx_memcpy(p, job->data, job->len);

    } else {
        f->org_feed = 1;
    }

    f->request = r;
    f->connection = c;
    f->last = last;
    f->refs = 1;

    ngx_pushjobs_out_init(&f->out);

    cln->handler = ngx_pushjobs_feed_cleanup;
    cln->data = f;

    ngx_queue_insert_tail(&ngx_pushjobs_worker->feeds, &f->queue);
    ngx_pushjobs_metrics_gauge(NGX_PUSHJOBS_G_FEEDS, 1, 0);

    ngx_pushjobs_init_timer(&f->keepalive,
                            ngx_pushjobs_feed_keepalive_handler, f, c->log);
    ngx_add_timer(&f->keepalive, NGX_PUSHJOBS_FEED_KEEPALIVE);

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    /* the request now lives as long as the feed, which is its context */

    ngx_http_set_ctx(r, f, ngx_pushjobs_module);

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_pushjobs_feed_write_handler;

    /* a reload or shutdown closes idle connections: let it close ours */
    c->idle = 1;

    return f;
}


static void
ngx_pushjobs_feed_fetch(ngx_pushjobs_feed_t *f)
{
    u_char     *p, after[NGX_INT64_LEN], limit[NGX_INT_T_LEN],
               keep[NGX_INT_T_LEN];
    ngx_str_t   params[4];

    /*
     * One batch at a time, and the next only once the reader has taken the
     * last one: the write handler fetches when the queue is empty.  So a
     * reader that reads is never closed as too slow for the size of a
     * replay, only for the size of a batch.
     */

    if (f->fetching || f->out.head != NULL) {
        f->dirty = 1;
        return;
    }

    f->dirty = 0;

    /* the query's reference, dropped by ngx_pushjobs_feed_fetched() */
    f->fetching = 1;
    f->refs++;

    p = ngx_sprintf(after, "%L", f->last);
    params[1].data = after;
    params[1].len = p - after;

    p = ngx_sprintf(limit, "%d", NGX_PUSHJOBS_FEED_BATCH);

    if (f->org_feed) {
        params[0] = f->org;

        params[2].data = keep;
        params[2].len = ngx_sprintf(keep, "%T",
                                    ngx_pushjobs_worker->pmcf
                                        ->org_feed_retention * 1000)
                        - keep;

        params[3].data = limit;
        params[3].len = p - limit;

        if (ngx_pushjobs_pg_query("SELECT id, name, data"
                                  " FROM pushjobs.org_feed_events($1, $2,"
                                  " $3, $4)",
                                  4, params, ngx_pushjobs_feed_fetched, f)
            == NULL)
        {
            goto failed;
        }

    } else {
        params[0] = f->job;

        params[2].data = limit;
        params[2].len = p - limit;

        params[3].data = keep;
        params[3].len = ngx_sprintf(keep, "%uz", ngx_pushjobs_feed_bytes())
                        - keep;

        /* hex whatever the server's bytea_output */
        if (ngx_pushjobs_pg_query("SELECT seq, name, data,"
                                  " encode(chunk, 'hex')"
                                  " FROM pushjobs.feed_events($1, $2, $3,"
                                  " $4)",
                                  4, params, ngx_pushjobs_feed_fetched, f)
            == NULL)
        {
            goto failed;
        }
    }

    return;

failed:

    /* the next notification or the keepalive tries again */

    f->fetching = 0;
    f->dirty = 1;

    ngx_pushjobs_feed_unref(f);
}


/*
 * The data a job feed's fetch asks for (feed_events()'s p_bytes): a
 * quarter of a reader's queue cap, so that a reader that reads is not
 * closed for the size of a batch of live output events.
 */

static size_t
ngx_pushjobs_feed_bytes(void)
{
    size_t  bytes;

    bytes = ngx_pushjobs_worker->pmcf->max_queued_output / 4;

    return bytes < 65536 ? 65536 : bytes;
}


/* rows: (id, name, data) of an org feed, (seq, name, data, chunk) of a job's */

static void
ngx_pushjobs_feed_fetched(void *data, PGresult *res)
{
    ngx_pushjobs_feed_t *f = data;

    int         row, nrows;
    size_t      bytes;
    u_char     *p, buf[NGX_INT64_LEN + 8];
    int64_t     n;
    ngx_str_t   name, id, body, chunk;

    f->fetching = 0;
    bytes = 0;

    /*
     * The fetch's reference is held until the rows are sent: a write may
     * close the feed, which then lives on, closed, until the unref below.
     */

    if (f->closed) {
        goto done;
    }

    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        /* the next notification or the keepalive tries again */
        f->dirty = 1;
        goto done;
    }

    nrows = PQntuples(res);

    /* the writes below do not fetch: these rows go first */
    f->fetching = 1;

    for (row = 0; row < nrows && !f->closed && !f->finished; row++) {
        n = ngx_atoof((u_char *) PQgetvalue(res, row, 0),
                      PQgetlength(res, row, 0));

        if (n <= f->last) {
            continue;
        }

        f->last = n;

        p = ngx_sprintf(buf, "%s-%L", f->org_feed ? "org" : "job", n);
        id.data = buf;
        id.len = p - buf;

        name.data = (u_char *) PQgetvalue(res, row, 1);
        name.len = PQgetlength(res, row, 1);
        body.data = (u_char *) PQgetvalue(res, row, 2);
        body.len = PQgetlength(res, row, 2);
        ngx_str_null(&chunk);
        bytes += body.len;

        if (!f->org_feed && !PQgetisnull(res, row, 3)) {
            chunk.data = (u_char *) PQgetvalue(res, row, 3);
            chunk.len = PQgetlength(res, row, 3);

            /* as feed_events() counts it: hex is two characters a byte */
            bytes += chunk.len / 2 / 3 * 4 + 16;
        }

        /* a job's feed ends with the job */

        if (!f->org_feed && name.len == sizeof("job_complete") - 1
            && ngx_strncmp(name.data, "job_complete", name.len) == 0)
        {
            f->finished = 1;
        }

        ngx_pushjobs_feed_event(f, &name, &id, &body, &chunk);
    }

    f->fetching = 0;

    /* a full batch (by count or by bytes): there may be more */

    if (!f->closed && !f->finished
        && (nrows == NGX_PUSHJOBS_FEED_BATCH
            || (!f->org_feed && bytes >= ngx_pushjobs_feed_bytes())
            || f->dirty))
    {
        ngx_pushjobs_feed_fetch(f);
    }

done:

    ngx_pushjobs_feed_unref(f);
}


/*
 * "event: NAME\nid: ID\ndata: DATA\n\n", built in the message queued.  An
 * output event's bytes (chunk: their hex text; they are stored once, in
 * job_output_chunk) become DATA's last field, "data",
 * base64: DATA is a JSON object, whose closing "}" moves after it.
 */

static void
ngx_pushjobs_feed_event(ngx_pushjobs_feed_t *f, ngx_str_t *name,
    ngx_str_t *id, ngx_str_t *data, ngx_str_t *chunk)
{
    u_char              *p;
    size_t               len;
    ngx_str_t            bytes, b64;
    ngx_pushjobs_msg_t  *msg;

    if (f->closed) {
        return;
    }

    ngx_str_null(&bytes);

    len = sizeof("event: \nid: \ndata: \n\n") - 1 + name->len + id->len
          + data->len;

    if (chunk && chunk->len) {
        if (data->len == 0 || data->data[data->len - 1] != '}'
            || ngx_pushjobs_feed_unhex(chunk, &bytes, f->connection->log)
               != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ERR, f->connection->log, 0,
                          "pushjobs: event \"%V\" has bytes that cannot be "
                          "read, sent without them", id);
            ngx_str_null(&bytes);

        } else {
            len += sizeof(", \"data\": \"\"") - 1
                   + ngx_base64_encoded_length(bytes.len);
        }
    }

    msg = ngx_pushjobs_msg_raw(len, f->connection->log);
    if (msg == NULL) {
        if (bytes.data) {
            ngx_free(bytes.data);
        }

        ngx_pushjobs_feed_close(f);
        return;
    }

    p = ngx_sprintf(msg->data, "event: %V\nid: %V\ndata: ", name, id);

    if (bytes.data) {
        p = ngx_cpymem(p, data->data, data->len - 1);
        p = ngx_cpymem(p, ", \"data\": \"", sizeof(", \"data\": \"") - 1);

        b64.data = p;
        ngx_encode_base64(&b64, &bytes);
        p += b64.len;

        *p++ = '"';
        *p++ = '}';

        ngx_free(bytes.data);

    } else {
        p = ngx_cpymem(p, data->data, data->len);
    }

    *p++ = '\n';
    *p++ = '\n';

    ngx_pushjobs_feed_push(f, msg);
}


/* encode(bytea, 'hex') (two hex digits a byte) to the bytes, allocated */

static ngx_int_t
ngx_pushjobs_feed_unhex(ngx_str_t *hex, ngx_str_t *bytes, ngx_log_t *log)
{
    if (hex->len & 1) {
        return NGX_ERROR;
    }

    bytes->len = hex->len / 2;

    bytes->data = ngx_alloc(bytes->len ? bytes->len : 1, log);
    if (bytes->data == NULL) {
        return NGX_ERROR;
    }

    if (ngx_pushjobs_unhex(bytes->data, hex->data, bytes->len) != NGX_OK) {
        ngx_free(bytes->data);
        bytes->data = NULL;
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Bytes of the stream, flushed at once through the output filters (which
 * frame them: an HTTP/1.1 chunk, HTTP/2 DATA frames); with no bytes, only
 * a look at whether a finished feed can end.
 */

static void
ngx_pushjobs_feed_send(ngx_pushjobs_feed_t *f, u_char *data, size_t len)
{
    ngx_pushjobs_msg_t  *msg;

    if (f->closed) {
        return;
    }

    if (len == 0) {
        if (f->out.head == NULL) {
            ngx_pushjobs_feed_write_handler(f->request);
        }

        return;
    }

    msg = ngx_pushjobs_msg_raw(len, f->connection->log);
    if (msg == NULL) {
        ngx_pushjobs_feed_close(f);
        return;
    }

    ngx_memcpy(msg->data, data, len);

    ngx_pushjobs_feed_push(f, msg);
}


/* A message queued on the stream (the reference passed) and flushed. */

static void
ngx_pushjobs_feed_push(ngx_pushjobs_feed_t *f, ngx_pushjobs_msg_t *msg)
{
    ngx_int_t   rc;
    ngx_uint_t  waiting;

    if (f->closed) {
        ngx_pushjobs_msg_release(msg);
        return;
    }

    waiting = (f->out.head != NULL);

    rc = ngx_pushjobs_out_push(&f->out, msg,
                               ngx_pushjobs_worker->pmcf->max_queued_output,
                               f->connection->log);

    ngx_pushjobs_msg_release(msg);

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_WARN, f->connection->log, 0,
                      "pushjobs: event feed reader too slow, closing");
        ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_OVERFLOW_FEED, 1);
        ngx_pushjobs_feed_close(f);
        return;
    }

    if (waiting) {
        return;
    }

    ngx_pushjobs_feed_write_handler(f->request);
}


static void
ngx_pushjobs_feed_write_handler(ngx_http_request_t *r)
{
    ngx_int_t             rc;
    ngx_connection_t     *c;
    ngx_pushjobs_feed_t  *f;

    c = r->connection;
    f = ngx_http_get_module_ctx(r, ngx_pushjobs_module);

    if (f == NULL || f->closed) {
        return;
    }

    if (c->write->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "pushjobs: event feed reader timed out, closing");
        c->timedout = 1;
        ngx_pushjobs_feed_close(f);
        return;
    }

    for ( ;; ) {
        rc = ngx_pushjobs_out_output(&f->out, r);

        if (rc == NGX_ERROR) {
            c->error = 1;
            ngx_pushjobs_feed_close(f);
            return;
        }

        if (rc != NGX_OK) {
            return;
        }

        if (!f->finished) {
            break;
        }

        if (f->last_sent) {
            ngx_pushjobs_feed_close(f);
            return;
        }

        /* the end of the response: the last chunk, or END_STREAM */

        f->last_sent = 1;

        if (ngx_http_send_special(r, NGX_HTTP_LAST) == NGX_ERROR) {
            c->error = 1;
            ngx_pushjobs_feed_close(f);
            return;
        }
    }

    /* the reader took what was queued: the rows held back, if any */

    if (f->dirty) {
        ngx_pushjobs_feed_fetch(f);
    }
}


static void
ngx_pushjobs_feed_keepalive_handler(ngx_event_t *ev)
{
    ngx_pushjobs_feed_t  *f;

    f = ev->data;

    if (f->closed) {
        return;
    }

    ngx_add_timer(ev, NGX_PUSHJOBS_FEED_KEEPALIVE);

    if (f->dirty) {
        ngx_pushjobs_feed_fetch(f);
    }

    if (f->out.head == NULL) {
        ngx_pushjobs_feed_send(f, (u_char *) ":keepalive\n",
                               sizeof(":keepalive\n") - 1);
    }
}


/* the request is being freed: by nginx (client gone, shutdown), or by us */

static void
ngx_pushjobs_feed_cleanup(void *data)
{
    ngx_pushjobs_feed_t *f = data;

    if (f->closed) {
        return;
    }

    ngx_pushjobs_feed_detach(f);
    ngx_pushjobs_feed_unref(f);
}


static void
ngx_pushjobs_feed_detach(ngx_pushjobs_feed_t *f)
{
    f->closed = 1;

    ngx_queue_remove(&f->queue);
    ngx_pushjobs_metrics_gauge(NGX_PUSHJOBS_G_FEEDS, -1, 0);

    if (f->keepalive.timer_set) {
        ngx_del_timer(&f->keepalive);
    }

    ngx_pushjobs_out_free(&f->out);

    f->request = NULL;
    f->connection = NULL;
}


static void
ngx_pushjobs_feed_close(ngx_pushjobs_feed_t *f)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    if (f->closed) {
        return;
    }

    r = f->request;
    c = f->connection;

    if (f->out.head || r->out || c->buffered) {
        /*
         * Output is abandoned, maybe in the middle of a TLS record that
         * OpenSSL wants to write again: no close_notify after it (that
         * fails with "bad write retry").
         */
        c->error = 1;
    }

    ngx_pushjobs_feed_detach(f);

    ngx_http_finalize_request(r, NGX_ERROR);
    ngx_http_run_posted_requests(c);

    ngx_pushjobs_feed_unref(f);
}


static void
ngx_pushjobs_feed_unref(ngx_pushjobs_feed_t *f)
{
    if (--f->refs == 0) {
        ngx_free(f);
    }
}
