
/*
 * Copyright (C) pushjobs developers
 */


/*
 * libpq wired to nginx events.  Each worker holds a small pool of query
 * connections and one dedicated LISTEN connection.  Only the non-blocking
 * libpq API is used: PQconnectStartParams/PQconnectPoll, PQsendQueryParams,
 * PQflush, PQconsumeInput, PQisBusy, PQgetResult, PQnotifies.  The sockets
 * are registered level-triggered, because libpq may leave bytes in the
 * kernel after PQconsumeInput; the write event is registered only while a
 * flush is pending.  A connection that fails is closed and reconnected with
 * exponential backoff; its query, if any, fails.
 *
 * When a connection attempt fails while no query connection is up, the
 * pool is down: queued and new queries fail at once (the REST API answers
 * 503 at once instead of after a queue timeout), and one connection probes
 * until PostgreSQL answers again; then the others reconnect, the
 * "regained" callback queues a barrier query that runs before anything
 * else, and the LISTEN connection's catch-up runs once both are back.
 *
 * libpq closes a socket itself when it sees the connection fail
 * (PQconsumeInput, PQflush, PQconnectPoll): the events of a socket it
 * closed are gone from epoll with it and must not be deleted again, and
 * the number may already belong to a new socket.
 *
 * A query's handler is never called before ngx_pushjobs_pg_query() has
 * returned: queries are sent from a posted event, so a send that fails
 * cannot call the handler of a caller that is still setting up its state
 * (or that the handler would free).
 *
 * The connections are marked idle, so that a worker told to exit (reload,
 * graceful stop) calls their read handler with c->close set, as it does for
 * every idle connection: that is where this worker learns that it exits.
 * The LISTEN connection is closed then; queries queued or running go on,
 * and the "exiting" callback hears of every change, so that the worker's
 * exit waits for them, bounded (ngx_pushjobs_module.c).  libpq's sockets
 * are closed by PQfinish() only, never by nginx.
 */


#include "ngx_pushjobs_module.h"


#define NGX_PUSHJOBS_PG_CLOSED        0
#define NGX_PUSHJOBS_PG_CONNECTING    1
#define NGX_PUSHJOBS_PG_IDLE          2
#define NGX_PUSHJOBS_PG_BUSY          3

#define NGX_PUSHJOBS_PG_BACKOFF_MIN   100
#define NGX_PUSHJOBS_PG_BACKOFF_MAX   3000
#define NGX_PUSHJOBS_PG_CONNECT_TIME  5000
/* statement_timeout (30 s) and a margin: a server that stopped answering */
#define NGX_PUSHJOBS_PG_QUERY_TIME    35000
#define NGX_PUSHJOBS_PG_QUEUE_TIME    5000
#define NGX_PUSHJOBS_PG_QUEUE_MAX     10000

#define NGX_PUSHJOBS_PG_CHANNEL       "pushjobs"


typedef struct {
    ngx_pushjobs_pg_t          *pg;
    PGconn                     *conn;
    ngx_connection_t           *c;
    ngx_uint_t                  state;
    ngx_uint_t                  listen;
    ngx_uint_t                  want_write;
    ngx_uint_t                  failures;      /* connects failed in a row */
    ngx_pushjobs_pg_query_t    *query;
    ngx_msec_t                  backoff;
    ngx_event_t                 retry;
    ngx_event_t                 timeout;
} ngx_pushjobs_pg_conn_t;


struct ngx_pushjobs_pg_query_s {
    ngx_queue_t                 queue;
    const char                 *sql;
    int                         nparams;
    char                      **values;
    int                        *lengths;
    ngx_pushjobs_pg_handler_pt  handler;
    void                       *data;
    ngx_msec_t                  queued;
    /* when it was sent (if was_sent), for the metrics */
    ngx_msec_t                  sent;
    ngx_uint_t                  was_sent;
    PGresult                   *res;
    ngx_pushjobs_pg_conn_t     *pc;
    ngx_uint_t                  barrier;
};


struct ngx_pushjobs_pg_s {
    ngx_log_t                  *log;
    ngx_str_t                   conninfo;
    ngx_str_t                   application;

    ngx_uint_t                  nconns;
    ngx_pushjobs_pg_conn_t     *conns;
    ngx_pushjobs_pg_conn_t      listener;

    ngx_queue_t                 queue;
    ngx_uint_t                  nqueued;
    ngx_event_t                 queue_ev;
    ngx_event_t                 dispatch_ev;

    /* query connections idle or busy */
    ngx_uint_t                  nup;

    /* a connection attempt failed with none up; pc is the one probing */
    ngx_uint_t                  down;
    ngx_pushjobs_pg_conn_t     *probe;

    /* queued or running; nothing else is sent until it completes */
    ngx_pushjobs_pg_query_t    *barrier;

    /* the LISTEN connection is listening; its catch-up is still due */
    ngx_uint_t                  catch_up;

    ngx_pushjobs_pg_notify_pt   notify;
    ngx_pushjobs_pg_connected_pt  connected;
    ngx_pushjobs_pg_connected_pt  regained;
    ngx_pushjobs_pg_exiting_pt  exiting;

    ngx_uint_t                  stopping;

    /* a libpq error message made one line (ngx_pushjobs_pg_error()) */
    u_char                      error[512];
};


static void ngx_pushjobs_pg_connect(ngx_pushjobs_pg_conn_t *pc);
static void ngx_pushjobs_pg_connect_poll(ngx_pushjobs_pg_conn_t *pc);
static ngx_int_t ngx_pushjobs_pg_wrap(ngx_pushjobs_pg_conn_t *pc);
static ngx_int_t ngx_pushjobs_pg_arm(ngx_pushjobs_pg_conn_t *pc,
    ngx_uint_t write);
static void ngx_pushjobs_pg_unwrap(ngx_pushjobs_pg_conn_t *pc,
    ngx_uint_t closed);
static void ngx_pushjobs_pg_close(ngx_pushjobs_pg_conn_t *pc,
    ngx_uint_t retry);
static void ngx_pushjobs_pg_retry_handler(ngx_event_t *ev);
static void ngx_pushjobs_pg_timeout_handler(ngx_event_t *ev);
static void ngx_pushjobs_pg_read_handler(ngx_event_t *ev);
static void ngx_pushjobs_pg_write_handler(ngx_event_t *ev);
static void ngx_pushjobs_pg_connected(ngx_pushjobs_pg_conn_t *pc);
static ngx_int_t ngx_pushjobs_pg_send(ngx_pushjobs_pg_conn_t *pc,
    ngx_pushjobs_pg_query_t *q);
static ngx_int_t ngx_pushjobs_pg_flush(ngx_pushjobs_pg_conn_t *pc);
static void ngx_pushjobs_pg_receive(ngx_pushjobs_pg_conn_t *pc);
static void ngx_pushjobs_pg_notifies(ngx_pushjobs_pg_conn_t *pc);
static void ngx_pushjobs_pg_finish(ngx_pushjobs_pg_query_t *q,
    PGresult *res);
static void ngx_pushjobs_pg_dispatch(ngx_pushjobs_pg_t *pg);
static void ngx_pushjobs_pg_dispatch_handler(ngx_event_t *ev);
static void ngx_pushjobs_pg_queue_handler(ngx_event_t *ev);
static void ngx_pushjobs_pg_set_down(ngx_pushjobs_pg_t *pg,
    ngx_pushjobs_pg_conn_t *pc);
static void ngx_pushjobs_pg_set_up(ngx_pushjobs_pg_t *pg);
static void ngx_pushjobs_pg_catch_up(ngx_pushjobs_pg_t *pg);
static void ngx_pushjobs_pg_stop_all(ngx_pushjobs_pg_t *pg);
static ngx_pushjobs_pg_query_t *ngx_pushjobs_pg_enqueue(const char *sql,
    ngx_uint_t nparams, ngx_str_t *params, ngx_pushjobs_pg_handler_pt handler,
    void *data, ngx_uint_t barrier);
static const char *ngx_pushjobs_pg_error(ngx_pushjobs_pg_conn_t *pc);
static void ngx_pushjobs_pg_gauges(ngx_pushjobs_pg_t *pg);
static ngx_uint_t ngx_pushjobs_pg_busy_conns(ngx_pushjobs_pg_t *pg);
static ngx_pushjobs_pg_t *ngx_pushjobs_pg_current(void);


static char  ngx_pushjobs_pg_listen_sql[] = "LISTEN " NGX_PUSHJOBS_PG_CHANNEL;


ngx_int_t
ngx_pushjobs_pg_init(ngx_pushjobs_worker_t *w,
    ngx_pushjobs_pg_notify_pt notify, ngx_pushjobs_pg_connected_pt connected,
    ngx_pushjobs_pg_connected_pt regained, ngx_pushjobs_pg_exiting_pt exiting)
{
    ngx_uint_t                 i;
    ngx_pushjobs_pg_t         *pg;
    ngx_pushjobs_pg_conn_t    *pc;
    ngx_pushjobs_main_conf_t  *pmcf;

    pmcf = w->pmcf;

    pg = ngx_pcalloc(w->cycle->pool, sizeof(ngx_pushjobs_pg_t));
    if (pg == NULL) {
        return NGX_ERROR;
    }

    pg->log = w->log;
    pg->notify = notify;
    pg->connected = connected;
    pg->regained = regained;
    pg->exiting = exiting;
    pg->nconns = pmcf->pool_size;

    /* NUL-terminated copies for libpq */

    pg->conninfo.len = pmcf->conninfo.len;
    pg->conninfo.data = ngx_pnalloc(w->cycle->pool, pmcf->conninfo.len + 1);
    if (pg->conninfo.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(pg->conninfo.data, pmcf->conninfo.data, pmcf->conninfo.len);
    pg->conninfo.data[pg->conninfo.len] = '\0';

    pg->application.data = ngx_pnalloc(w->cycle->pool,
                                       sizeof("pushjobs/") + w->owner.len);
    if (pg->application.data == NULL) {
        return NGX_ERROR;
    }

    pg->application.len = ngx_sprintf(pg->application.data, "pushjobs/%V%Z",
                                      &w->owner)
                          - pg->application.data - 1;

    pg->conns = ngx_pcalloc(w->cycle->pool,
                            pg->nconns * sizeof(ngx_pushjobs_pg_conn_t));
    if (pg->conns == NULL) {
        return NGX_ERROR;
    }

    ngx_queue_init(&pg->queue);
    ngx_pushjobs_init_timer(&pg->queue_ev, ngx_pushjobs_pg_queue_handler, pg,
                            pg->log);
    ngx_pushjobs_init_timer(&pg->dispatch_ev, ngx_pushjobs_pg_dispatch_handler,
                            pg, pg->log);

    w->pg = pg;

    for (i = 0; i <= pg->nconns; i++) {
        pc = (i < pg->nconns) ? &pg->conns[i] : &pg->listener;

        pc->pg = pg;
        pc->listen = (i == pg->nconns);
        pc->backoff = NGX_PUSHJOBS_PG_BACKOFF_MIN;

        ngx_pushjobs_init_timer(&pc->retry, ngx_pushjobs_pg_retry_handler,
                                pc, pg->log);
        ngx_pushjobs_init_timer(&pc->timeout, ngx_pushjobs_pg_timeout_handler,
                                pc, pg->log);

        ngx_pushjobs_pg_connect(pc);
    }

    return NGX_OK;
}


void
ngx_pushjobs_pg_done(ngx_pushjobs_worker_t *w)
{
    ngx_pushjobs_pg_t  *pg;

    pg = w->pg;
    if (pg == NULL) {
        return;
    }

    pg->stopping = 1;

    /*
     * What a worker that stops at once (SIGTERM) queued in its last moments
     * (the channels going offline) is sent before the connections close;
     * a graceful exit has waited for its queries already.
     */

    if (pg->dispatch_ev.posted) {
        ngx_delete_posted_event(&pg->dispatch_ev);
        ngx_pushjobs_pg_dispatch(pg);
    }

    ngx_pushjobs_pg_stop_all(pg);

    w->pg = NULL;
}


/*
 * The worker's pool, for the calls that do not name it; NULL in a process
 * without one (the master, a worker of no pushjobs location) and after
 * ngx_pushjobs_pg_done().
 */

static ngx_pushjobs_pg_t *
ngx_pushjobs_pg_current(void)
{
    if (ngx_pushjobs_worker == NULL) {
        return NULL;
    }

    return ngx_pushjobs_worker->pg;
}


/*
 * Closes every connection now and fails what is queued or running (the
 * handlers get NULL); nothing is queued after it.  A worker whose exit
 * waited for PostgreSQL as long as it may.
 */

void
ngx_pushjobs_pg_stop(void)
{
    ngx_pushjobs_pg_t  *pg;

    pg = ngx_pushjobs_pg_current();
    if (pg == NULL) {
        return;
    }

    pg->stopping = 1;

    ngx_pushjobs_pg_stop_all(pg);
}


static void
ngx_pushjobs_pg_stop_all(ngx_pushjobs_pg_t *pg)
{
    ngx_uint_t                i;
    ngx_queue_t              *qu;
    ngx_pushjobs_pg_query_t  *q;

    for (i = 0; i < pg->nconns; i++) {
        ngx_pushjobs_pg_close(&pg->conns[i], 0);
    }

    ngx_pushjobs_pg_close(&pg->listener, 0);

    while (!ngx_queue_empty(&pg->queue)) {
        qu = ngx_queue_head(&pg->queue);
        q = ngx_queue_data(qu, ngx_pushjobs_pg_query_t, queue);
        ngx_queue_remove(qu);
        pg->nqueued--;
        ngx_pushjobs_pg_finish(q, NULL);
    }

    if (pg->queue_ev.timer_set) {
        ngx_del_timer(&pg->queue_ev);
    }

    if (pg->dispatch_ev.posted) {
        ngx_delete_posted_event(&pg->dispatch_ev);
    }
}


/*
 * The worker exits: no more notifications.  Closing the LISTEN connection
 * ends its LISTEN at once, without a query to wait for.
 */

void
ngx_pushjobs_pg_unlisten(void)
{
    ngx_pushjobs_pg_t  *pg;

    pg = ngx_pushjobs_pg_current();

    if (pg == NULL || pg->listener.state == NGX_PUSHJOBS_PG_CLOSED) {
        return;
    }

    ngx_log_error(NGX_LOG_INFO, pg->log, 0,
                  "pushjobs: postgres listen connection closed, the worker "
                  "exits");

    ngx_pushjobs_pg_close(&pg->listener, 0);
}


/* Queries queued or running: what an exiting worker waits for. */

ngx_uint_t
ngx_pushjobs_pg_busy(void)
{
    ngx_pushjobs_pg_t  *pg;

    pg = ngx_pushjobs_pg_current();
    if (pg == NULL) {
        return 0;
    }

    return pg->nqueued + ngx_pushjobs_pg_busy_conns(pg);
}


/* The pool's connections running a query. */

static ngx_uint_t
ngx_pushjobs_pg_busy_conns(ngx_pushjobs_pg_t *pg)
{
    ngx_uint_t  i, n;

    n = 0;

    for (i = 0; i < pg->nconns; i++) {
        if (pg->conns[i].state == NGX_PUSHJOBS_PG_BUSY) {
            n++;
        }
    }

    return n;
}


/*
 * Queues a query; NULL if it cannot run: the pool is down (PostgreSQL could
 * not be reached: fail at once rather than wait), the worker is exiting,
 * or the queue is full.
 */

ngx_pushjobs_pg_query_t *
ngx_pushjobs_pg_query(const char *sql, ngx_uint_t nparams, ngx_str_t *params,
    ngx_pushjobs_pg_handler_pt handler, void *data)
{
    return ngx_pushjobs_pg_enqueue(sql, nparams, params, handler, data, 0);
}


/*
 * A query that runs before every other query queued or sent after it: none
 * is sent until it has completed (or failed).  At most one at a time.
 */

ngx_pushjobs_pg_query_t *
ngx_pushjobs_pg_barrier(const char *sql, ngx_uint_t nparams,
    ngx_str_t *params, ngx_pushjobs_pg_handler_pt handler, void *data)
{
    ngx_pushjobs_pg_t  *pg;

    pg = ngx_pushjobs_pg_current();

    if (pg == NULL || pg->barrier) {
        return NULL;
    }

    return ngx_pushjobs_pg_enqueue(sql, nparams, params, handler, data, 1);
}


static ngx_pushjobs_pg_query_t *
ngx_pushjobs_pg_enqueue(const char *sql, ngx_uint_t nparams,
    ngx_str_t *params, ngx_pushjobs_pg_handler_pt handler, void *data,
    ngx_uint_t barrier)
{
    size_t                    size;
    u_char                   *p;
    ngx_uint_t                i;
    ngx_pushjobs_pg_t        *pg;
    ngx_pushjobs_pg_query_t  *q;

    pg = ngx_pushjobs_pg_current();

    if (pg == NULL || pg->stopping || pg->down) {
        return NULL;
    }

    if (pg->nqueued >= NGX_PUSHJOBS_PG_QUEUE_MAX) {
        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "pushjobs: postgres query queue is full");
        return NULL;
    }

    /* one block: the query, the parameter arrays and the parameter bytes */

    size = sizeof(ngx_pushjobs_pg_query_t)
           + nparams * (sizeof(char *) + sizeof(int));

    for (i = 0; i < nparams; i++) {
        if (params[i].data) {
            size += params[i].len + 1;
        }
    }

    q = ngx_alloc(size, pg->log);
    if (q == NULL) {
        return NULL;
    }

    ngx_memzero(q, sizeof(ngx_pushjobs_pg_query_t));

    q->sql = sql;
    q->nparams = (int) nparams;
    q->handler = handler;
    q->data = data;

    p = (u_char *) q + sizeof(ngx_pushjobs_pg_query_t);
    q->values = (char **) p;
    p += nparams * sizeof(char *);
    q->lengths = (int *) p;
    p += nparams * sizeof(int);

    for (i = 0; i < nparams; i++) {
        if (params[i].data == NULL) {
            q->values[i] = NULL;
            q->lengths[i] = 0;
            continue;
        }

        q->values[i] = (char *) p;
        q->lengths[i] = (int) params[i].len;
        p = ngx_cpymem(p, params[i].data, params[i].len);
        *p++ = '\0';
    }

    q->queued = ngx_current_msec;
    q->barrier = barrier;

    if (barrier) {
        ngx_queue_insert_head(&pg->queue, &q->queue);
        pg->barrier = q;

    } else {
        ngx_queue_insert_tail(&pg->queue, &q->queue);
    }

    pg->nqueued++;
    ngx_pushjobs_pg_gauges(pg);

    /*
     * Sent at the end of this turn of the event loop, see above.  What a
     * worker queues while it is told to exit (its channels going offline,
     * after the turn's posted events have run) goes at the start of the
     * next turn, which then does not wait for an event.
     */

    if (!pg->dispatch_ev.posted) {
        ngx_post_event(&pg->dispatch_ev, ngx_exiting ? &ngx_posted_next_events
                                                     : &ngx_posted_events);
    }

    if (!pg->queue_ev.timer_set) {
        ngx_add_timer(&pg->queue_ev, 1000);
    }

    if (ngx_exiting && pg->exiting) {
        pg->exiting(0);
    }

    return q;
}


void
ngx_pushjobs_pg_cancel(ngx_pushjobs_pg_query_t *q)
{
    /*
     * A query already sent cannot be recalled without blocking (PQcancel
     * opens a connection synchronously): it runs, and its result is dropped.
     */

    q->handler = NULL;
    q->data = NULL;
}


ngx_uint_t
ngx_pushjobs_pg_ok(void)
{
    ngx_uint_t          i;
    ngx_pushjobs_pg_t  *pg;

    pg = ngx_pushjobs_pg_current();
    if (pg == NULL) {
        return 0;
    }

    for (i = 0; i < pg->nconns; i++) {
        if (pg->conns[i].state >= NGX_PUSHJOBS_PG_IDLE) {
            return 1;
        }
    }

    return 0;
}


static void
ngx_pushjobs_pg_connect(ngx_pushjobs_pg_conn_t *pc)
{
    ngx_pushjobs_pg_t  *pg;
    const char         *keywords[4], *values[4];

    pg = pc->pg;

    /*
     * The configured conninfo comes last so that anything it sets wins over
     * our defaults.  No JIT: our statements are short, and JIT compiles a
     * plan anew at each execution once its estimated cost passes
     * jit_above_cost, which a large job's estimates reach (function
     * results, a node array): create_job() of 100,000 nodes spent 0.45 s
     * compiling at each POST before sqitch change create_job_fast.
     */

    keywords[0] = "application_name";
    values[0] = (const char *) pg->application.data;
    keywords[1] = "options";
    values[1] = "-c statement_timeout=30000 -c jit=off";
    keywords[2] = "dbname";
    values[2] = (const char *) pg->conninfo.data;
    keywords[3] = NULL;
    values[3] = NULL;

    pc->conn = PQconnectStartParams(keywords, values, 1);

    if (pc->conn == NULL || PQstatus(pc->conn) == CONNECTION_BAD) {
        ngx_pushjobs_pg_close(pc, 1);
        return;
    }

    pc->state = NGX_PUSHJOBS_PG_CONNECTING;

    ngx_add_timer(&pc->timeout, NGX_PUSHJOBS_PG_CONNECT_TIME);

    ngx_pushjobs_pg_connect_poll(pc);
}


static void
ngx_pushjobs_pg_connect_poll(ngx_pushjobs_pg_conn_t *pc)
{
    PostgresPollingStatusType  st;

    /*
     * PQconnectPoll() may close the socket and open another (the next
     * address, an SSL fallback), which may get the same number: take the
     * socket out of epoll while it is surely open, and add the one libpq
     * holds afterwards.
     */

    ngx_pushjobs_pg_unwrap(pc, 0);

    st = PQconnectPoll(pc->conn);

    if (st == PGRES_POLLING_FAILED) {
        ngx_pushjobs_pg_close(pc, 1);
        return;
    }

    if (ngx_pushjobs_pg_wrap(pc) != NGX_OK) {
        ngx_pushjobs_pg_close(pc, 1);
        return;
    }

    switch (st) {

    case PGRES_POLLING_READING:
        (void) ngx_pushjobs_pg_arm(pc, 0);
        return;

    case PGRES_POLLING_WRITING:
        (void) ngx_pushjobs_pg_arm(pc, 1);
        return;

    default: /* PGRES_POLLING_OK */
        ngx_pushjobs_pg_connected(pc);
        return;
    }
}


static void
ngx_pushjobs_pg_connected(ngx_pushjobs_pg_conn_t *pc)
{
    ngx_uint_t          regained;
    ngx_pushjobs_pg_t  *pg;

    pg = pc->pg;

    if (pc->timeout.timer_set) {
        ngx_del_timer(&pc->timeout);
    }

    if (PQsetnonblocking(pc->conn, 1) != 0) {
        ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                      "pushjobs: postgres PQsetnonblocking failed: %s",
                      ngx_pushjobs_pg_error(pc));
        ngx_pushjobs_pg_close(pc, 1);
        return;
    }

    if (ngx_pushjobs_pg_arm(pc, 0) != NGX_OK) {
        ngx_pushjobs_pg_close(pc, 1);
        return;
    }

    pc->backoff = NGX_PUSHJOBS_PG_BACKOFF_MIN;
    pc->failures = 0;
    pc->state = NGX_PUSHJOBS_PG_IDLE;

    ngx_log_error(NGX_LOG_INFO, pg->log, 0,
                  "pushjobs: postgres %s connection ready",
                  pc->listen ? "listen" : "query");

    if (pc->listen) {
        if (PQsendQuery(pc->conn, ngx_pushjobs_pg_listen_sql) != 1) {
            ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                          "pushjobs: postgres LISTEN failed: %s",
                          ngx_pushjobs_pg_error(pc));
            ngx_pushjobs_pg_close(pc, 1);
            return;
        }

        pc->state = NGX_PUSHJOBS_PG_BUSY;

        if (ngx_pushjobs_pg_flush(pc) != NGX_OK) {
            ngx_pushjobs_pg_close(pc, 1);
        }

        return;
    }

    pg->nup++;

    regained = pg->down;

    if (regained) {
        ngx_pushjobs_pg_set_up(pg);
    }

    if (regained && pg->regained) {
        /* queues its barrier query: it goes first */
        pg->regained();
    }

    ngx_pushjobs_pg_catch_up(pg);

    ngx_pushjobs_pg_dispatch(pg);
}


static ngx_int_t
ngx_pushjobs_pg_wrap(ngx_pushjobs_pg_conn_t *pc)
{
    int                fd;
    ngx_connection_t  *c;

    fd = PQsocket(pc->conn);

    if (fd == -1) {
        return NGX_OK;
    }

    c = ngx_get_connection(fd, pc->pg->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = pc;
    c->log = pc->pg->log;
    c->read->handler = ngx_pushjobs_pg_read_handler;
    c->write->handler = ngx_pushjobs_pg_write_handler;
    c->read->log = c->log;
    c->write->log = c->log;
    c->read->cancelable = 1;
    c->write->cancelable = 1;

    /* asked to close when the worker exits, see above */
    c->idle = 1;

    pc->c = c;
    pc->want_write = 0;

    if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_pushjobs_pg_arm(ngx_pushjobs_pg_conn_t *pc, ngx_uint_t write)
{
    ngx_connection_t  *c;

    c = pc->c;

    if (c == NULL || pc->want_write == write) {
        return NGX_OK;
    }

    if (write) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    pc->want_write = write;

    return NGX_OK;
}


/*
 * Forgets the socket.  libpq owns it and closes it: while it is open, take
 * it out of epoll; once libpq has closed it ("closed"), epoll has already
 * forgotten it, and its number may be another socket's by now.
 */

static void
ngx_pushjobs_pg_unwrap(ngx_pushjobs_pg_conn_t *pc, ngx_uint_t closed)
{
    ngx_uint_t         flags;
    ngx_connection_t  *c;

    c = pc->c;
    if (c == NULL) {
        return;
    }

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    flags = closed ? NGX_CLOSE_EVENT : 0;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, flags);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, flags);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;

    pc->c = NULL;
    pc->want_write = 0;
}


static void
ngx_pushjobs_pg_close(ngx_pushjobs_pg_conn_t *pc, ngx_uint_t retry)
{
    ngx_uint_t                state, closed, level;
    ngx_msec_t                delay;
    ngx_pushjobs_pg_t        *pg;
    ngx_pushjobs_pg_query_t  *q;

    pg = pc->pg;
    state = pc->state;

    if (pc->listen) {
        ngx_pushjobs_metrics_gauge(NGX_PUSHJOBS_G_PG_LISTENING, 0, 1);
    }

    /* a socket libpq dropped after a failure is no longer PQsocket() */

    closed = pc->c != NULL
             && (pc->conn == NULL || PQsocket(pc->conn) != pc->c->fd);

    ngx_pushjobs_pg_unwrap(pc, closed);

    if (retry && !pg->stopping
        && (state == NGX_PUSHJOBS_PG_CLOSED
            || state == NGX_PUSHJOBS_PG_CONNECTING))
    {
        /* the first failure in a row is an error, the repeats are noise */

        level = (pc->failures++ == 0) ? NGX_LOG_ERR : NGX_LOG_INFO;

        ngx_log_error(level, pg->log, 0,
                      "pushjobs: postgres connect failed: %s",
                      pc->conn ? ngx_pushjobs_pg_error(pc)
                               : "out of memory");
    }

    if (pc->conn) {
        PQfinish(pc->conn);
        pc->conn = NULL;
    }

    if (pc->timeout.timer_set) {
        ngx_del_timer(&pc->timeout);
    }

    if (pc->retry.timer_set) {
        ngx_del_timer(&pc->retry);
    }

    pc->state = NGX_PUSHJOBS_PG_CLOSED;

    if (pc->listen) {
        pg->catch_up = 0;

    } else if (state == NGX_PUSHJOBS_PG_IDLE || state == NGX_PUSHJOBS_PG_BUSY)
    {
        pg->nup--;
    }

    q = pc->query;
    pc->query = NULL;

    if (q) {
        if (q->res) {
            PQclear(q->res);
            q->res = NULL;
        }

        ngx_pushjobs_pg_finish(q, NULL);
    }

    /*
     * An exiting worker still reconnects its query connections, for the
     * queries it waits for (its retry timer is cancelable: it holds
     * nothing), never the LISTEN connection.
     */

    if (!retry || pg->stopping || ngx_terminate || (ngx_exiting && pc->listen))
    {
        return;
    }

    if (!pc->listen && pg->nup == 0
        && (state == NGX_PUSHJOBS_PG_CLOSED
            || state == NGX_PUSHJOBS_PG_CONNECTING))
    {
        if (!pg->down) {
            ngx_pushjobs_pg_set_down(pg, pc);

        } else if (pc != pg->probe) {
            /* one connection probes; the others wait for it */
            pc->backoff = NGX_PUSHJOBS_PG_BACKOFF_MIN;
            return;
        }
    }

    /* exponential backoff with jitter, so workers do not reconnect at once */

    delay = pc->backoff / 2 + (ngx_msec_t) ngx_random() % (pc->backoff / 2 + 1);

    pc->backoff *= 2;
    if (pc->backoff > NGX_PUSHJOBS_PG_BACKOFF_MAX) {
        pc->backoff = NGX_PUSHJOBS_PG_BACKOFF_MAX;
    }

    ngx_add_timer(&pc->retry, delay);
}


/*
 * No query connection is up and one could not be made: fail what waits,
 * and fail new queries at once until PostgreSQL answers again.
 */

static void
ngx_pushjobs_pg_set_down(ngx_pushjobs_pg_t *pg, ngx_pushjobs_pg_conn_t *pc)
{
    ngx_queue_t              *qu;
    ngx_pushjobs_pg_query_t  *q;

    pg->down = 1;
    pg->probe = pc;

    ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                  "pushjobs: postgres is unreachable, queries fail until "
                  "it answers again");

    /* the handlers may queue again: that fails now */

    while (!ngx_queue_empty(&pg->queue)) {
        qu = ngx_queue_head(&pg->queue);
        q = ngx_queue_data(qu, ngx_pushjobs_pg_query_t, queue);
        ngx_queue_remove(qu);
        pg->nqueued--;

        ngx_pushjobs_pg_finish(q, NULL);
    }
}


/* A query connection is up again: the others reconnect now. */

static void
ngx_pushjobs_pg_set_up(ngx_pushjobs_pg_t *pg)
{
    ngx_uint_t               i;
    ngx_pushjobs_pg_conn_t  *pc;

    pg->down = 0;
    pg->probe = NULL;

    ngx_log_error(NGX_LOG_NOTICE, pg->log, 0,
                  "pushjobs: postgres answers again");

    for (i = 0; i <= pg->nconns; i++) {
        pc = (i < pg->nconns) ? &pg->conns[i] : &pg->listener;

        if (pc->state != NGX_PUSHJOBS_PG_CLOSED) {
            continue;
        }

        if (pc->retry.timer_set) {
            ngx_del_timer(&pc->retry);
        }

        pc->backoff = NGX_PUSHJOBS_PG_BACKOFF_MIN;
        ngx_add_timer(&pc->retry, 1);
    }
}


/*
 * Notifications sent while the LISTEN connection was away are lost: once
 * it listens again and queries can run, the "connected" callback catches
 * up.
 */

static void
ngx_pushjobs_pg_catch_up(ngx_pushjobs_pg_t *pg)
{
    if (!pg->catch_up || pg->nup == 0 || pg->down) {
        return;
    }

    pg->catch_up = 0;

    if (pg->connected) {
        pg->connected();
    }
}


static void
ngx_pushjobs_pg_retry_handler(ngx_event_t *ev)
{
    ngx_pushjobs_pg_conn_t  *pc;

    pc = ev->data;

    if (pc->pg->stopping || ngx_terminate || (ngx_exiting && pc->listen)) {
        return;
    }

    ngx_pushjobs_pg_connect(pc);
}


static void
ngx_pushjobs_pg_timeout_handler(ngx_event_t *ev)
{
    ngx_pushjobs_pg_conn_t  *pc;

    pc = ev->data;

    ngx_log_error(NGX_LOG_ERR, pc->pg->log, 0,
                  "pushjobs: postgres %s timed out, reconnecting",
                  pc->state == NGX_PUSHJOBS_PG_CONNECTING ? "connect"
                                                          : "query");

    ngx_pushjobs_pg_close(pc, 1);
}


static void
ngx_pushjobs_pg_read_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c;
    ngx_pushjobs_pg_conn_t  *pc;

    c = ev->data;
    pc = c->data;

    if (c->close) {
        /*
         * The worker exits: ngx_close_idle_connections(), or (c->error)
         * worker_shutdown_timeout, which wants everything closed now.  The
         * connection stays ours; it is closed once nothing is outstanding.
         */

        c->close = 0;

        if (pc->pg->exiting) {
            pc->pg->exiting(c->error);
        }

        return;
    }

    if (pc->state == NGX_PUSHJOBS_PG_CONNECTING) {
        ngx_pushjobs_pg_connect_poll(pc);
        return;
    }

    if (PQconsumeInput(pc->conn) != 1) {
        ngx_log_error(NGX_LOG_ERR, pc->pg->log, 0,
                      "pushjobs: postgres connection lost: %s",
                      ngx_pushjobs_pg_error(pc));
        ngx_pushjobs_pg_close(pc, 1);
        return;
    }

    ngx_pushjobs_pg_receive(pc);
}


static void
ngx_pushjobs_pg_write_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c;
    ngx_pushjobs_pg_conn_t  *pc;

    c = ev->data;
    pc = c->data;

    if (pc->state == NGX_PUSHJOBS_PG_CONNECTING) {
        ngx_pushjobs_pg_connect_poll(pc);
        return;
    }

    if (ngx_pushjobs_pg_flush(pc) != NGX_OK) {
        ngx_pushjobs_pg_close(pc, 1);
    }
}


static ngx_int_t
ngx_pushjobs_pg_send(ngx_pushjobs_pg_conn_t *pc, ngx_pushjobs_pg_query_t *q)
{
    if (PQsendQueryParams(pc->conn, q->sql, q->nparams, NULL,
                          (const char * const *) q->values, q->lengths, NULL,
                          0)
        != 1)
    {
        ngx_log_error(NGX_LOG_ERR, pc->pg->log, 0,
                      "pushjobs: postgres send failed: %s",
                      ngx_pushjobs_pg_error(pc));
        return NGX_ERROR;
    }

    pc->query = q;
    q->pc = pc;
    q->sent = ngx_current_msec;
    q->was_sent = 1;
    pc->state = NGX_PUSHJOBS_PG_BUSY;
    ngx_pushjobs_pg_gauges(pc->pg);

    ngx_add_timer(&pc->timeout, NGX_PUSHJOBS_PG_QUERY_TIME);

    return ngx_pushjobs_pg_flush(pc);
}


static ngx_int_t
ngx_pushjobs_pg_flush(ngx_pushjobs_pg_conn_t *pc)
{
    int  rc;

    rc = PQflush(pc->conn);

    if (rc == -1) {
        ngx_log_error(NGX_LOG_ERR, pc->pg->log, 0,
                      "pushjobs: postgres flush failed: %s",
                      ngx_pushjobs_pg_error(pc));
        return NGX_ERROR;
    }

    return ngx_pushjobs_pg_arm(pc, rc == 1);
}


static void
ngx_pushjobs_pg_receive(ngx_pushjobs_pg_conn_t *pc)
{
    PGresult                 *res;
    ngx_pushjobs_pg_t        *pg;
    ngx_pushjobs_pg_query_t  *q;

    pg = pc->pg;

    while (pc->state == NGX_PUSHJOBS_PG_BUSY && !PQisBusy(pc->conn)) {

        res = PQgetResult(pc->conn);

        if (res != NULL) {
            q = pc->query;

            if (q == NULL) {
                /* the LISTEN command */

                if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                    ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                                  "pushjobs: postgres LISTEN failed: %s",
                                  PQresultErrorMessage(res));
                    PQclear(res);
                    ngx_pushjobs_pg_close(pc, 1);
                    return;
                }

                PQclear(res);
                continue;
            }

            /* keep the first error, else the last result */

            if (q->res == NULL
                || (PQresultStatus(q->res) != PGRES_FATAL_ERROR
                    && PQresultStatus(res) != PGRES_COMMAND_OK))
            {
                if (q->res) {
                    PQclear(q->res);
                }

                q->res = res;

            } else {
                PQclear(res);
            }

            continue;
        }

        /* the command is complete */

        if (pc->timeout.timer_set) {
            ngx_del_timer(&pc->timeout);
        }

        pc->state = NGX_PUSHJOBS_PG_IDLE;
        q = pc->query;
        pc->query = NULL;

        if (q == NULL) {
            ngx_log_error(NGX_LOG_INFO, pg->log, 0,
                          "pushjobs: postgres listening on \""
                          NGX_PUSHJOBS_PG_CHANNEL "\"");

            ngx_pushjobs_metrics_gauge(NGX_PUSHJOBS_G_PG_LISTENING, 1, 1);

            /* notifications sent while we were away are lost: catch up */

            pg->catch_up = 1;
            ngx_pushjobs_pg_catch_up(pg);

            break;
        }

        res = q->res;
        q->res = NULL;

        ngx_pushjobs_pg_finish(q, res);

        if (res) {
            PQclear(res);
        }

        /* the handler may have closed everything (worker exit) */

        if (pc->conn == NULL) {
            return;
        }
    }

    ngx_pushjobs_pg_notifies(pc);

    if (pc->state == NGX_PUSHJOBS_PG_IDLE && !pc->listen) {
        ngx_pushjobs_pg_dispatch(pg);
    }
}


static void
ngx_pushjobs_pg_notifies(ngx_pushjobs_pg_conn_t *pc)
{
    PGnotify   *n;
    ngx_str_t   payload;

    while (pc->conn && (n = PQnotifies(pc->conn)) != NULL) {

        payload.data = (u_char *) n->extra;
        payload.len = ngx_strlen(n->extra);

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pc->pg->log, 0,
                       "pushjobs: notify \"%V\"", &payload);

        if (pc->pg->notify) {
            pc->pg->notify(&payload);
        }

        PQfreemem(n);
    }
}


static void
ngx_pushjobs_pg_finish(ngx_pushjobs_pg_query_t *q, PGresult *res)
{
    ngx_pushjobs_pg_t          *pg;
    ngx_pushjobs_pg_handler_pt  handler;

    pg = ngx_pushjobs_pg_current();
    handler = q->handler;

    if (q->barrier && pg && pg->barrier == q) {
        /* whatever it held back may go now */
        pg->barrier = NULL;

        if (!ngx_queue_empty(&pg->queue) && !pg->dispatch_ev.posted) {
            ngx_post_event(&pg->dispatch_ev, &ngx_posted_events);
        }
    }

    if (res && PQresultStatus(res) == PGRES_FATAL_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "pushjobs: postgres query failed: %s",
                      PQresultErrorMessage(res));
    }

    /*
     * Counted: what was sent, and what could not be; not what was
     * cancelled before it was sent.
     */

    if (res) {
        ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_PG
                              + (PQresultStatus(res) == PGRES_FATAL_ERROR),
                                 1);
        ngx_pushjobs_metrics_observe(NGX_PUSHJOBS_H_PG,
                                     (ngx_msec_int_t) (ngx_current_msec
                                                       - q->sent));

    } else if (q->was_sent || handler) {
        ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_PG + 2, 1);
    }

    if (pg) {
        ngx_pushjobs_pg_gauges(pg);
    }

    if (handler) {
        handler(q->data, res);
    }

    ngx_free(q);

    /* an exiting worker may be waiting for this one */

    if (ngx_exiting && pg && pg->exiting) {
        pg->exiting(0);
    }
}


static void
ngx_pushjobs_pg_dispatch(ngx_pushjobs_pg_t *pg)
{
    ngx_uint_t                i;
    ngx_queue_t              *qu;
    ngx_pushjobs_pg_conn_t   *pc;
    ngx_pushjobs_pg_query_t  *q;

    for (i = 0; i < pg->nconns && !ngx_queue_empty(&pg->queue); i++) {
        pc = &pg->conns[i];

        if (pc->state != NGX_PUSHJOBS_PG_IDLE) {
            continue;
        }

        if (pg->barrier && pg->barrier->pc) {
            /* nothing is sent before the barrier has completed */
            return;
        }

        q = NULL;

        while (!ngx_queue_empty(&pg->queue)) {
            qu = ngx_queue_head(&pg->queue);
            q = ngx_queue_data(qu, ngx_pushjobs_pg_query_t, queue);
            ngx_queue_remove(qu);
            pg->nqueued--;

            if (q->handler) {
                break;
            }

            /* cancelled before it was sent */
            ngx_pushjobs_pg_finish(q, NULL);
            q = NULL;
        }

        if (q == NULL) {
            return;
        }

        if (ngx_pushjobs_pg_send(pc, q) != NGX_OK) {
            if (pc->query == NULL) {
                ngx_pushjobs_pg_finish(q, NULL);
            }

            ngx_pushjobs_pg_close(pc, 1);
        }
    }
}


static void
ngx_pushjobs_pg_dispatch_handler(ngx_event_t *ev)
{
    ngx_pushjobs_pg_dispatch(ev->data);
}


static void
ngx_pushjobs_pg_queue_handler(ngx_event_t *ev)
{
    ngx_queue_t              *qu, *next;
    ngx_pushjobs_pg_t        *pg;
    ngx_pushjobs_pg_query_t  *q;

    pg = ev->data;

    /* fail queries that waited too long for a connection */

    for (qu = ngx_queue_head(&pg->queue);
         qu != ngx_queue_sentinel(&pg->queue);
         qu = next)
    {
        next = ngx_queue_next(qu);
        q = ngx_queue_data(qu, ngx_pushjobs_pg_query_t, queue);

        if (q->handler != NULL
            && ngx_current_msec - q->queued < NGX_PUSHJOBS_PG_QUEUE_TIME)
        {
            continue;
        }

        if (q->handler) {
            ngx_log_error(NGX_LOG_ERR, pg->log, 0,
                          "pushjobs: no postgres connection for %M ms",
                          ngx_current_msec - q->queued);
        }

        ngx_queue_remove(qu);
        pg->nqueued--;

        ngx_pushjobs_pg_finish(q, NULL);
    }

    if (!ngx_queue_empty(&pg->queue)) {
        ngx_add_timer(&pg->queue_ev, 1000);
    }
}


static const char *
ngx_pushjobs_pg_error(ngx_pushjobs_pg_conn_t *pc)
{
    u_char      *p, *last, *buf;
    const char  *msg;

    buf = pc->pg->error;

    msg = PQerrorMessage(pc->conn);
    if (msg == NULL || *msg == '\0') {
        return "unknown error";
    }

    /* libpq's messages may span lines; a log entry should not */

    last = ngx_cpystrn(buf, (u_char *) msg, sizeof(pc->pg->error)) - 1;

    while (last >= buf && (*last == '\n' || *last == ' ')) {
        *last-- = '\0';
    }

    for (p = buf; *p; p++) {
        if (*p == '\n') {
            *p = ' ';
        }
    }

    return (const char *) buf;
}


/* The pool's gauges of this worker, for the metrics. */

static void
ngx_pushjobs_pg_gauges(ngx_pushjobs_pg_t *pg)
{
    ngx_pushjobs_metrics_gauge(NGX_PUSHJOBS_G_PG_BUSY,
                               ngx_pushjobs_pg_busy_conns(pg), 1);
    ngx_pushjobs_metrics_gauge(NGX_PUSHJOBS_G_PG_QUEUED, pg->nqueued, 1);
}
