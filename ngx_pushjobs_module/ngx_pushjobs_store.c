
/*
 * Copyright (C) pushjobs developers
 */


/*
 * Batched writes to PostgreSQL.  What agents cause (connects and
 * disconnects, hellos, votes and results) is appended to a per-worker batch
 * and sent as one JSON array to one SQL function; while a batch is in
 * flight the next one fills.  So a reconnect storm of many agents costs a
 * few transactions, not one per agent.  A batch whose query fails is retried
 * ahead of newer entries, so the order of each agent's messages holds.
 */


#include "ngx_pushjobs_module.h"


#define NGX_PUSHJOBS_BATCH_LIMIT       (64 * 1024 * 1024)

#define NGX_PUSHJOBS_BATCH_RETRY       1000

#define NGX_PUSHJOBS_STORE_PRESENCE    0
#define NGX_PUSHJOBS_STORE_INPUTS      1
#define NGX_PUSHJOBS_STORE_HELLOS      2
#define NGX_PUSHJOBS_STORE_OUTPUTS     3
#define NGX_PUSHJOBS_STORE_SETTLE      4
#define NGX_PUSHJOBS_STORE_BATCHES     5

/* the distinct jobs of an inputs batch looked for before appending */
#define NGX_PUSHJOBS_SETTLE_DISTINCT   16


typedef struct ngx_pushjobs_batch_s  ngx_pushjobs_batch_t;

typedef void (*ngx_pushjobs_batch_done_pt)(ngx_pushjobs_batch_t *b,
    PGresult *res);


typedef struct {
    u_char                     *data;
    size_t                      len;
    size_t                      size;
    ngx_pushjobs_store_item_t  *items;
    ngx_uint_t                  nitems;
    ngx_uint_t                  nalloc;
} ngx_pushjobs_batch_buf_t;


struct ngx_pushjobs_batch_s {
    const char                 *name;
    const char                 *sql;
    ngx_uint_t                  with_owner;
    /* hands on the outcome of each entry; NULL when there is none */
    ngx_pushjobs_batch_done_pt  done;

    ngx_pushjobs_batch_buf_t    pending;
    ngx_pushjobs_batch_buf_t    flight;
    ngx_uint_t                  busy;

    ngx_event_t                 retry;
    ngx_log_t                  *log;
};


/* The worker's store: its batches and its owner row's beat. */

typedef struct {
    ngx_queue_t                 queue;
    /* released once outputs_done reaches it */
    ngx_uint_t                  need;
    ngx_pushjobs_store_item_t   item;
    size_t                      len;
    u_char                      json[1];
} ngx_pushjobs_store_deferred_t;


struct ngx_pushjobs_store_s {
    ngx_pushjobs_batch_t        batch[NGX_PUSHJOBS_STORE_BATCHES];

    /* the agents stalled while a batch is full (agent->stall) */
    ngx_queue_t                 stalled;

    /*
     * Final reports that wait for their agent's last chunks of output
     * (ngx_pushjobs_store_deferred_t), and their bytes; the outputs calls
     * completed so far, which they wait for.
     */
    ngx_queue_t                 deferred;
    size_t                      deferred_bytes;
    ngx_uint_t                  outputs_done;

    /* an owner_beat() or owner_regained() query is outstanding */
    unsigned                    owner_busy:1;

    /*
     * PostgreSQL has answered this worker's first beat: its owner row
     * exists.  Until then the worker beats every 200 ms.
     */
    unsigned                    owner_known:1;
};


static ngx_int_t ngx_pushjobs_batch_append(ngx_pushjobs_batch_t *b,
    u_char *json, size_t len, ngx_pushjobs_store_item_t *item);
static ngx_int_t ngx_pushjobs_batch_reserve(ngx_pushjobs_batch_buf_t *bb,
    size_t len, ngx_log_t *log);
static void ngx_pushjobs_batch_flush(ngx_pushjobs_batch_t *b);
static void ngx_pushjobs_batch_result(void *data, PGresult *res);
static void ngx_pushjobs_batch_requeue(ngx_pushjobs_batch_t *b);
static void ngx_pushjobs_batch_retry(ngx_event_t *ev);
static void ngx_pushjobs_batch_release(ngx_pushjobs_batch_buf_t *bb);
static void ngx_pushjobs_inputs_done(ngx_pushjobs_batch_t *b,
    PGresult *res);
static void ngx_pushjobs_hellos_done(ngx_pushjobs_batch_t *b,
    PGresult *res);
static void ngx_pushjobs_owner_beat_done(void *data, PGresult *res);
static u_char *ngx_pushjobs_store_name(u_char *p, ngx_str_t *s);
static ngx_pushjobs_store_t *ngx_pushjobs_store_current(void);
static ngx_uint_t ngx_pushjobs_store_full(ngx_pushjobs_store_t *st,
    ngx_uint_t batch);
static void ngx_pushjobs_store_wake(ngx_pushjobs_store_t *st,
    ngx_uint_t all);
static void ngx_pushjobs_store_release(ngx_pushjobs_store_t *st,
    ngx_uint_t all);


ngx_int_t
ngx_pushjobs_store_init(ngx_pushjobs_worker_t *w)
{
    ngx_uint_t             i;
    ngx_pushjobs_batch_t  *b;
    ngx_pushjobs_store_t  *st;

    st = ngx_pcalloc(w->cycle->pool, sizeof(ngx_pushjobs_store_t));
    if (st == NULL) {
        return NGX_ERROR;
    }

    /* presence_update() returns nothing: there is no outcome to hand on */

    b = &st->batch[NGX_PUSHJOBS_STORE_PRESENCE];
    b->name = "presence";
    b->sql = "SELECT pushjobs.presence_update($1, $2)";
    b->with_owner = 1;

    b = &st->batch[NGX_PUSHJOBS_STORE_INPUTS];
    b->name = "inputs";
    b->sql = "SELECT i, rehab FROM pushjobs.node_inputs($1)";
    b->done = ngx_pushjobs_inputs_done;

    b = &st->batch[NGX_PUSHJOBS_STORE_HELLOS];
    b->name = "hellos";
    b->sql = "SELECT i, job_id, action, message"
             " FROM pushjobs.agent_hellos($1)";
    b->done = ngx_pushjobs_hellos_done;

    /*
     * node_outputs() returns nothing either: a chunk it cannot store is
     * in the agent's final report
     */

    b = &st->batch[NGX_PUSHJOBS_STORE_OUTPUTS];
    b->name = "outputs";
    b->sql = "SELECT pushjobs.node_outputs($1)";

    /*
     * The jobs of each inputs batch that committed, settled in a
     * transaction of their own (quorum, completion, a rollout's next
     * nodes): node_inputs() holds its jobs FOR SHARE only, so that the
     * batches of one job from every worker run at once, and leaves this
     * to settle_jobs().  While one is in flight the next batches' jobs
     * gather; the sweeper settles what a worker failing between the two
     * leaves.
     */

    b = &st->batch[NGX_PUSHJOBS_STORE_SETTLE];
    b->name = "settle";
    b->sql = "SELECT pushjobs.settle_jobs("
             "ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))";

    for (i = 0; i < NGX_PUSHJOBS_STORE_BATCHES; i++) {
        b = &st->batch[i];
        b->log = w->log;
        ngx_pushjobs_init_timer(&b->retry, ngx_pushjobs_batch_retry, b,
                                w->log);
    }

    ngx_queue_init(&st->stalled);
    ngx_queue_init(&st->deferred);

    w->store = st;

    return NGX_OK;
}


/* The worker exits: its batches are given up, what they hold released. */

void
ngx_pushjobs_store_done(ngx_pushjobs_worker_t *w)
{
    ngx_uint_t                      i;
    ngx_queue_t                    *q;
    ngx_pushjobs_batch_t           *b;
    ngx_pushjobs_store_deferred_t  *d;

    if (w->store == NULL) {
        return;
    }

    ngx_pushjobs_store_wake(w->store, 1);

    while (!ngx_queue_empty(&w->store->deferred)) {
        q = ngx_queue_head(&w->store->deferred);
        ngx_queue_remove(q);

        d = ngx_queue_data(q, ngx_pushjobs_store_deferred_t, queue);

        ngx_pushjobs_agent_unref(d->item.agent);
        ngx_free(d);
    }

    for (i = 0; i < NGX_PUSHJOBS_STORE_BATCHES; i++) {
        b = &w->store->batch[i];

        if (b->retry.timer_set) {
            ngx_del_timer(&b->retry);
        }

        ngx_pushjobs_batch_release(&b->pending);
        ngx_pushjobs_batch_release(&b->flight);
    }

    w->store = NULL;
}


/*
 * The worker's store, for the calls that do not name it; NULL in a process
 * without one (the master, a worker of no pushjobs location) and after
 * ngx_pushjobs_store_done().
 */

static ngx_pushjobs_store_t *
ngx_pushjobs_store_current(void)
{
    if (ngx_pushjobs_worker == NULL) {
        return NULL;
    }

    return ngx_pushjobs_worker->store;
}


/*
 * The worker exits: what agents did (their channels going offline, their
 * last results) is written now, a batch waiting for its retry included.
 * A batch in flight is followed by what came since when it completes; the
 * worker's exit waits for both (ngx_pushjobs_module.c).
 */

void
ngx_pushjobs_store_flush(void)
{
    ngx_uint_t             i;
    ngx_pushjobs_batch_t  *b;
    ngx_pushjobs_store_t  *st;

    st = ngx_pushjobs_store_current();
    if (st == NULL) {
        return;
    }

    /* the reports waiting for chunks go now: the order matters less */
    ngx_pushjobs_store_release(st, 1);

    for (i = 0; i < NGX_PUSHJOBS_STORE_BATCHES; i++) {
        b = &st->batch[i];

        if (b->retry.timer_set) {
            ngx_del_timer(&b->retry);
        }

        ngx_pushjobs_batch_flush(b);
    }
}


/*
 * {"org":"…","node":"…","session":N,"online":true}, or offline, with
 * "handover_ms" when a worker leaving on a reload closed the channel.
 */

void
ngx_pushjobs_store_presence(ngx_str_t *org, ngx_str_t *node,
    uint64_t session, ngx_uint_t state)
{
    u_char                *p;
    u_char                 buf[2 * 6 * NGX_PUSHJOBS_NAME_MAX
                               + 2 * NGX_INT64_LEN + 128];
    ngx_pushjobs_store_t  *st;

    st = ngx_pushjobs_store_current();

    if (st == NULL
        || org->len > NGX_PUSHJOBS_NAME_MAX
        || node->len > NGX_PUSHJOBS_NAME_MAX)
    {
        return;
    }

    p = ngx_cpymem(buf, "{\"org\":", sizeof("{\"org\":") - 1);
    p = ngx_pushjobs_store_name(p, org);
    p = ngx_cpymem(p, ",\"node\":", sizeof(",\"node\":") - 1);
    p = ngx_pushjobs_store_name(p, node);
    p = ngx_sprintf(p, ",\"session\":%uL,\"online\":%s", session,
                    state == NGX_PUSHJOBS_PRESENCE_ONLINE ? "true" : "false");

    if (state == NGX_PUSHJOBS_PRESENCE_HANDOVER) {
        p = ngx_sprintf(p, ",\"handover_ms\":%M",
                        (ngx_msec_t) NGX_PUSHJOBS_HANDOVER_TIME);
    }

    *p++ = '}';

    (void) ngx_pushjobs_batch_append(&st->batch[NGX_PUSHJOBS_STORE_PRESENCE],
                                     buf, p - buf, NULL);
}


/*
 * An agent message for the job engine, already reduced by the caller to the
 * JSON object node_inputs() takes; item says whom to tell about the outcome.
 * A final report (final) of an agent whose last chunks of output are not
 * stored yet waits for them: the agent sends them first, but they go
 * through the other batch (node_outputs()), and a report stored before
 * them makes node_outputs() ignore them, so that the end of each node's
 * output reached the feed only with the report, after every report of the
 * batch (a second or more at the end of a job of 100 nodes).
 */

ngx_int_t
ngx_pushjobs_store_input(ngx_pushjobs_store_item_t *item, ngx_str_t *json,
    ngx_uint_t final)
{
    ngx_pushjobs_batch_t           *b;
    ngx_pushjobs_store_t           *st;
    ngx_pushjobs_store_deferred_t  *d;

    st = ngx_pushjobs_store_current();
    if (st == NULL) {
        return NGX_ERROR;
    }

    b = &st->batch[NGX_PUSHJOBS_STORE_OUTPUTS];

    /* a worker leaving writes everything now (ngx_pushjobs_store_flush()) */

    if (!final || item->agent == NULL || ngx_exiting || ngx_terminate
        || item->agent->output_need <= st->outputs_done
        || (!b->busy && b->pending.len == 0))
    {
        return ngx_pushjobs_batch_append(
                   &st->batch[NGX_PUSHJOBS_STORE_INPUTS], json->data,
                   json->len, item);
    }

    d = ngx_alloc(sizeof(ngx_pushjobs_store_deferred_t) + json->len,
                  item->agent->log);
    if (d == NULL) {
        return NGX_ERROR;
    }

    d->need = item->agent->output_need;
    d->item = *item;
    d->len = json->len;
    ngx_memcpy(d->json, json->data, json->len);

    ngx_pushjobs_agent_ref(item->agent);
    ngx_queue_insert_tail(&st->deferred, &d->queue);
    st->deferred_bytes += json->len;

    return NGX_OK;
}


/*
 * The reports whose chunks are stored go to the inputs batch, in the order
 * they came (all: every one, the worker leaves); so does every report once
 * no output is pending or in flight (a batch dropped never completes).
 */

static void
ngx_pushjobs_store_release(ngx_pushjobs_store_t *st, ngx_uint_t all)
{
    ngx_queue_t                    *q;
    ngx_pushjobs_batch_t           *b;
    ngx_pushjobs_store_deferred_t  *d;

    b = &st->batch[NGX_PUSHJOBS_STORE_OUTPUTS];

    if (!b->busy && b->pending.len == 0) {
        all = 1;
    }

    while (!ngx_queue_empty(&st->deferred)) {
        q = ngx_queue_head(&st->deferred);
        d = ngx_queue_data(q, ngx_pushjobs_store_deferred_t, queue);

        if (!all && d->need > st->outputs_done) {
            break;
        }

        ngx_queue_remove(q);
        st->deferred_bytes -= d->len;

        if (ngx_pushjobs_batch_append(&st->batch[NGX_PUSHJOBS_STORE_INPUTS],
                                      d->json, d->len, &d->item)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ERR, d->item.agent->log, 0,
                          "pushjobs: could not queue the final report of "
                          "agent \"%V\" of \"%V\"", &d->item.agent->name,
                          &d->item.agent->org);
        }

        ngx_pushjobs_agent_unref(d->item.agent);
        ngx_free(d);
    }
}


ngx_int_t
ngx_pushjobs_store_hello(ngx_pushjobs_store_item_t *item, ngx_str_t *json)
{
    ngx_pushjobs_store_t  *st;

    st = ngx_pushjobs_store_current();
    if (st == NULL) {
        return NGX_ERROR;
    }

    return ngx_pushjobs_batch_append(&st->batch[NGX_PUSHJOBS_STORE_HELLOS],
                                     json->data, json->len, item);
}


/*
 * A chunk of live output, reduced by the caller to the JSON object
 * node_outputs() takes.  While a batch is in flight the chunks of every
 * agent gather in the next one: a transaction per batch, not per chunk.
 */

ngx_int_t
ngx_pushjobs_store_output(ngx_pushjobs_agent_t *a, ngx_str_t *json)
{
    ngx_pushjobs_batch_t  *b;
    ngx_pushjobs_store_t  *st;

    st = ngx_pushjobs_store_current();
    if (st == NULL) {
        return NGX_ERROR;
    }

    b = &st->batch[NGX_PUSHJOBS_STORE_OUTPUTS];

    if (ngx_pushjobs_batch_append(b, json->data, json->len, NULL) != NGX_OK) {
        return NGX_ERROR;
    }

    /*
     * The outputs call that stores the chunk: the one just sent (the
     * append flushes an idle batch), or the next one while one is in
     * flight.  A failed call is merged into the next: it is then stored
     * sooner, never later.
     */

    a->output_need = st->outputs_done + (b->pending.len ? 2 : 1);

    return NGX_OK;
}


/*
 * Whether the agent's channel must stop reading for now (back-pressure),
 * and if so, queued to be resumed.  Live output gathered for the next
 * node_outputs() call beyond pushjobs_output_batch_size waits in the
 * streaming agents' sockets and queues until the call in flight has
 * returned: a call's cost, and so the feed's lag, stays that of about this
 * many bytes, and so does the worker's memory.  The agents' other messages
 * wait the same way once eight times as much is gathered for the next
 * node_inputs() call (final reports carry up to a message of output each),
 * and then every channel waits.
 */

ngx_uint_t
ngx_pushjobs_store_stall(ngx_pushjobs_agent_t *a)
{
    ngx_uint_t             input;
    ngx_pushjobs_store_t  *st;

    st = ngx_pushjobs_store_current();

    if (st == NULL) {
        return 0;
    }

    if (a->stalled) {
        return 1;
    }

    input = ngx_pushjobs_store_full(st, NGX_PUSHJOBS_STORE_INPUTS);

    if (!input
        && !(a->streaming
             && ngx_pushjobs_store_full(st, NGX_PUSHJOBS_STORE_OUTPUTS)))
    {
        return 0;
    }

    a->stalled = 1;
    ngx_pushjobs_agent_ref(a);
    ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_STALLS + (input ? 1 : 0), 1);
    ngx_queue_insert_tail(&st->stalled, &a->stall);

    return 1;
}


static ngx_uint_t
ngx_pushjobs_store_full(ngx_pushjobs_store_t *st, ngx_uint_t batch)
{
    size_t  bound;

    bound = ngx_pushjobs_worker->pmcf->output_batch_size;

    if (batch == NGX_PUSHJOBS_STORE_INPUTS) {
        /* the reports waiting for their chunks count with the batch */
        return st->batch[batch].pending.len + st->deferred_bytes >= 8 * bound;
    }

    return st->batch[batch].pending.len >= bound;
}


/*
 * A batch that holds channels back has room again (all: the worker
 * leaves): every stalled channel is resumed, in the order they stalled; one
 * still held by the other batch stalls again when it reads.  A resume only
 * posts the channel's event, so none of them runs here.
 */

static void
ngx_pushjobs_store_wake(ngx_pushjobs_store_t *st, ngx_uint_t all)
{
    ngx_queue_t           *q;
    ngx_pushjobs_agent_t  *a;

    while (!ngx_queue_empty(&st->stalled)) {
        q = ngx_queue_head(&st->stalled);
        ngx_queue_remove(q);

        a = ngx_queue_data(q, ngx_pushjobs_agent_t, stall);

        if (all) {
            a->stalled = 0;

        } else {
            ngx_pushjobs_agent_resume(a);
        }

        ngx_pushjobs_agent_unref(a);
    }
}


u_char *
ngx_pushjobs_store_json_name(u_char *p, ngx_str_t *s)
{
    return ngx_pushjobs_store_name(p, s);
}


static u_char *
ngx_pushjobs_store_name(u_char *p, ngx_str_t *s)
{
    *p++ = '"';
    p = ngx_pushjobs_json_escape_copy(p, s->data, s->len);
    *p++ = '"';

    return p;
}


static ngx_int_t
ngx_pushjobs_batch_append(ngx_pushjobs_batch_t *b, u_char *json, size_t len,
    ngx_pushjobs_store_item_t *item)
{
    ngx_pushjobs_batch_buf_t  *bb;

    bb = &b->pending;

    if (bb->len + len > NGX_PUSHJOBS_BATCH_LIMIT) {
        ngx_log_error(NGX_LOG_ERR, b->log, 0,
                      "pushjobs: %s batch over %uz bytes, dropping an entry",
                      b->name, (size_t) NGX_PUSHJOBS_BATCH_LIMIT);
        return NGX_ERROR;
    }

    if (ngx_pushjobs_batch_reserve(bb, len + 1, b->log) != NGX_OK) {
        return NGX_ERROR;
    }

    if (item) {
        if (bb->nitems == bb->nalloc) {
            ngx_pushjobs_store_item_t  *items;

            items = ngx_alloc((bb->nalloc ? 2 * bb->nalloc : 16)
                              * sizeof(ngx_pushjobs_store_item_t), b->log);
            if (items == NULL) {
                return NGX_ERROR;
            }

            if (bb->items) {
                ngx_memcpy(items, bb->items,
                           bb->nitems * sizeof(ngx_pushjobs_store_item_t));
                ngx_free(bb->items);
            }

            bb->items = items;
            bb->nalloc = bb->nalloc ? 2 * bb->nalloc : 16;
        }

        bb->items[bb->nitems++] = *item;

        if (item->agent) {
            ngx_pushjobs_agent_ref(item->agent);
        }
    }

    bb->data[bb->len] = bb->len ? ',' : '[';
    bb->len++;

    ngx_memcpy(bb->data + bb->len, json, len);
    bb->len += len;

    ngx_pushjobs_batch_flush(b);

    return NGX_OK;
}


static ngx_int_t
ngx_pushjobs_batch_reserve(ngx_pushjobs_batch_buf_t *bb, size_t len,
    ngx_log_t *log)
{
    u_char  *data;
    size_t   size;

    if (bb->len + len + 1 <= bb->size) {
        return NGX_OK;
    }

    size = bb->size ? bb->size : 1024;

    while (size < bb->len + len + 1) {
        size *= 2;
    }

    data = ngx_alloc(size, log);
    if (data == NULL) {
        return NGX_ERROR;
    }

    if (bb->data) {
        ngx_memcpy(data, bb->data, bb->len);
        ngx_free(bb->data);
    }

    bb->data = data;
    bb->size = size;

    return NGX_OK;
}


static void
ngx_pushjobs_batch_flush(ngx_pushjobs_batch_t *b)
{
    ngx_str_t                 params[2];
    ngx_pushjobs_batch_buf_t  tmp;

    if (b->busy || b->pending.len == 0 || b->retry.timer_set) {
        return;
    }

    /* the pending buffer becomes the one in flight */

    tmp = b->flight;
    b->flight = b->pending;
    b->pending = tmp;
    b->pending.len = 0;
    b->pending.nitems = 0;

    b->flight.data[b->flight.len++] = ']';

    if (b->with_owner) {
        params[0] = ngx_pushjobs_worker->owner;
        params[1].data = b->flight.data;
        params[1].len = b->flight.len;

    } else {
        params[0].data = b->flight.data;
        params[0].len = b->flight.len;
    }

    b->busy = 1;

    if (ngx_pushjobs_pg_query(b->sql, b->with_owner ? 2 : 1, params,
                              ngx_pushjobs_batch_result, b)
        == NULL)
    {
        b->busy = 0;
        ngx_pushjobs_batch_requeue(b);
    }
}


static void
ngx_pushjobs_batch_result(void *data, PGresult *res)
{
    ngx_pushjobs_batch_t *b = data;

    char                  *state;
    ngx_pushjobs_store_t  *st;

    b->busy = 0;
    st = ngx_pushjobs_store_current();

    if (res == NULL
        || (PQresultStatus(res) != PGRES_TUPLES_OK
            && PQresultStatus(res) != PGRES_COMMAND_OK))
    {
        state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

        if (st && b == &st->batch[NGX_PUSHJOBS_STORE_SETTLE]
            && state && ngx_strcmp(state, "42883") == 0)
        {
            /*
             * undefined_function: the database is not upgraded yet (a
             * rolling upgrade) and its node_inputs() settles the jobs
             * itself
             */
            ngx_log_error(NGX_LOG_NOTICE, b->log, 0,
                          "pushjobs: no settle_jobs() in the database, "
                          "its node_inputs() settles");
            ngx_pushjobs_batch_release(&b->flight);
            ngx_pushjobs_batch_flush(b);
            return;
        }

        ngx_log_error(NGX_LOG_WARN, b->log, 0,
                      "pushjobs: %s batch of %uz bytes failed, retrying",
                      b->name, b->flight.len);

        ngx_pushjobs_batch_requeue(b);

        if (st && b == &st->batch[NGX_PUSHJOBS_STORE_OUTPUTS]) {
            /* dropped (out of memory): nothing left to wait for */
            ngx_pushjobs_store_release(st, 0);
        }

        return;
    }

    if (b->done) {
        b->done(b, res);
    }

    ngx_pushjobs_batch_release(&b->flight);

    ngx_pushjobs_batch_flush(b);

    if (st && b == &st->batch[NGX_PUSHJOBS_STORE_OUTPUTS]) {
        st->outputs_done++;
        ngx_pushjobs_store_release(st, 0);
    }

    if (st
        && ((b == &st->batch[NGX_PUSHJOBS_STORE_OUTPUTS]
             && !ngx_pushjobs_store_full(st, NGX_PUSHJOBS_STORE_OUTPUTS))
            || (b == &st->batch[NGX_PUSHJOBS_STORE_INPUTS]
                && !ngx_pushjobs_store_full(st, NGX_PUSHJOBS_STORE_INPUTS))))
    {
        /* what was pending is in flight now: room for more */
        ngx_pushjobs_store_wake(st, 0);
    }
}


/*
 * Puts the failed batch back in front of what came since, and tries again
 * after a pause.
 */

static void
ngx_pushjobs_batch_requeue(ngx_pushjobs_batch_t *b)
{
    ngx_uint_t                 i;
    ngx_pushjobs_batch_buf_t  *fl, *pe;

    fl = &b->flight;
    pe = &b->pending;

    /* drop the closing ']' */
    fl->len--;

    if (pe->len) {
        if (ngx_pushjobs_batch_reserve(fl, pe->len, b->log) != NGX_OK) {
            goto drop;
        }

        /* pending starts with '[', which becomes ',' */
        fl->data[fl->len] = ',';
        ngx_memcpy(fl->data + fl->len + 1, pe->data + 1, pe->len - 1);
        fl->len += pe->len;
    }

    if (pe->nitems) {
        if (fl->nitems + pe->nitems > fl->nalloc) {
            ngx_pushjobs_store_item_t  *items;

            items = ngx_alloc((fl->nitems + pe->nitems)
                              * sizeof(ngx_pushjobs_store_item_t), b->log);
            if (items == NULL) {
                goto drop;
            }

            if (fl->items) {
                ngx_memcpy(items, fl->items,
                           fl->nitems * sizeof(ngx_pushjobs_store_item_t));
                ngx_free(fl->items);
            }

            fl->items = items;
            fl->nalloc = fl->nitems + pe->nitems;
        }

        ngx_memcpy(fl->items + fl->nitems, pe->items,
                   pe->nitems * sizeof(ngx_pushjobs_store_item_t));
        fl->nitems += pe->nitems;
    }

    /* swap: the merged batch is now pending, the old pending is free */

    pe->len = 0;
    pe->nitems = 0;

    {
        ngx_pushjobs_batch_buf_t  tmp;

        tmp = *pe;
        *pe = *fl;
        *fl = tmp;
    }

    if (!b->retry.timer_set && !ngx_exiting && !ngx_terminate) {
        ngx_add_timer(&b->retry, NGX_PUSHJOBS_BATCH_RETRY);
    }

    return;

drop:

    ngx_log_error(NGX_LOG_ERR, b->log, 0,
                  "pushjobs: %s batch dropped: out of memory", b->name);

    for (i = 0; i < fl->nitems; i++) {
        if (b->done == ngx_pushjobs_hellos_done) {
            /* unanswered: what is held for them goes all the same */
            ngx_pushjobs_agent_hello_answered(&fl->items[i]);
            ngx_pushjobs_agent_hello_release(&fl->items[i]);
        }

        if (fl->items[i].agent) {
            ngx_pushjobs_agent_unref(fl->items[i].agent);
        }
    }

    fl->len = 0;
    fl->nitems = 0;
}


static void
ngx_pushjobs_batch_retry(ngx_event_t *ev)
{
    ngx_pushjobs_batch_flush(ev->data);
}


static void
ngx_pushjobs_batch_release(ngx_pushjobs_batch_buf_t *bb)
{
    ngx_uint_t  i;

    for (i = 0; i < bb->nitems; i++) {
        if (bb->items[i].agent) {
            ngx_pushjobs_agent_unref(bb->items[i].agent);
        }
    }

    bb->nitems = 0;
    bb->len = 0;

    /* a storm's large buffers are not kept for idle times */

    if (bb->size > 64 * 1024) {
        ngx_free(bb->data);
        bb->data = NULL;
        bb->size = 0;
    }

    if (bb->nalloc > 1024) {
        ngx_free(bb->items);
        bb->items = NULL;
        bb->nalloc = 0;
    }
}


/*
 * rows: (i, rehab) for each input of the batch; its jobs are then settled,
 * each named once but in a batch of more jobs than are remembered here (a
 * job named again is settled once all the same)
 */

static void
ngx_pushjobs_inputs_done(ngx_pushjobs_batch_t *b, PGresult *res)
{
    int                         row, nrows;
    u_char                     *seen[NGX_PUSHJOBS_SETTLE_DISTINCT];
    u_char                      json[NGX_PUSHJOBS_JOB_ID_LEN + 2];
    ngx_int_t                   i;
    ngx_uint_t                  k, n, nseen, next;
    ngx_pushjobs_store_t       *st;
    ngx_pushjobs_store_item_t  *item;

    st = ngx_pushjobs_store_current();
    nseen = 0;
    next = 0;

    for (n = 0; st && n < b->flight.nitems; n++) {
        item = &b->flight.items[n];

        for (k = 0; k < nseen; k++) {
            if (ngx_memcmp(seen[k], item->job_id, NGX_PUSHJOBS_JOB_ID_LEN)
                == 0)
            {
                break;
            }
        }

        if (k < nseen) {
            continue;
        }

        if (nseen < NGX_PUSHJOBS_SETTLE_DISTINCT) {
            seen[nseen++] = item->job_id;

        } else {
            /* the oldest remembered gives way */
            seen[next++ % NGX_PUSHJOBS_SETTLE_DISTINCT] = item->job_id;
        }

        json[0] = '"';
        ngx_memcpy(json + 1, item->job_id, NGX_PUSHJOBS_JOB_ID_LEN);
        json[NGX_PUSHJOBS_JOB_ID_LEN + 1] = '"';

        (void) ngx_pushjobs_batch_append(&st->batch[NGX_PUSHJOBS_STORE_SETTLE],
                                         json, sizeof(json), NULL);
    }

    nrows = PQntuples(res);

    for (row = 0; row < nrows; row++) {
        i = ngx_atoi((u_char *) PQgetvalue(res, row, 0),
                     PQgetlength(res, row, 0));

        if (i < 0 || (ngx_uint_t) i >= b->flight.nitems) {
            continue;
        }

        item = &b->flight.items[i];

        ngx_pushjobs_agent_input_done(item,
                                      *PQgetvalue(res, row, 1) == 't');
    }
}


/* rows: (i, job_id, action, message) */

static void
ngx_pushjobs_hellos_done(ngx_pushjobs_batch_t *b, PGresult *res)
{
    int                         row, nrows;
    ngx_int_t                   i;
    ngx_str_t                   job_id, action, message;
    ngx_pushjobs_store_item_t  *item;

    /* commit, run and abort go to these agents from now on */

    for (i = 0; (ngx_uint_t) i < b->flight.nitems; i++) {
        ngx_pushjobs_agent_hello_answered(&b->flight.items[i]);
    }

    nrows = PQntuples(res);

    for (row = 0; row < nrows; row++) {
        i = ngx_atoi((u_char *) PQgetvalue(res, row, 0),
                     PQgetlength(res, row, 0));

        if (i < 0 || (ngx_uint_t) i >= b->flight.nitems) {
            continue;
        }

        item = &b->flight.items[i];

        job_id.data = (u_char *) PQgetvalue(res, row, 1);
        job_id.len = PQgetlength(res, row, 1);
        action.data = (u_char *) PQgetvalue(res, row, 2);
        action.len = PQgetlength(res, row, 2);
        message.data = (u_char *) PQgetvalue(res, row, 3);
        message.len = PQgetlength(res, row, 3);

        ngx_pushjobs_agent_hello_done(item, &job_id, &action, &message);
    }

    /* then what came for them while the hellos were in flight */

    for (i = 0; (ngx_uint_t) i < b->flight.nitems; i++) {
        ngx_pushjobs_agent_hello_release(&b->flight.items[i]);
    }
}


void
ngx_pushjobs_store_owner_beat(ngx_event_t *ev)
{
    ngx_pushjobs_store_t   *st;
    ngx_pushjobs_worker_t  *w;

    w = ev->data;
    st = w->store;

    if (ngx_exiting || ngx_terminate) {
        return;
    }

    /*
     * A worker's channels count as online only once its owner row exists
     * (presence_update() does not write it), so the first beat goes as
     * soon as PostgreSQL answers.
     */
    ngx_add_timer(ev, st->owner_known ? NGX_PUSHJOBS_OWNER_BEAT : 200);

    if (st->owner_busy) {
        return;
    }

    if (ngx_pushjobs_pg_query("SELECT pushjobs.owner_beat($1)", 1, &w->owner,
                              ngx_pushjobs_owner_beat_done, st)
        != NULL)
    {
        st->owner_busy = 1;
    }
}


/*
 * PostgreSQL answers again after this worker could not reach it.  While it
 * was unreachable nobody's beat could be written, not only this worker's:
 * judged by seen_at now, every worker would be gone, and every agent with
 * it.  owner_regained() starts every live worker's clock again and beats
 * for this one; it runs as the pool's barrier, so nothing this worker asks
 * (a job created, a sweep) sees the stale clocks first.
 */

void
ngx_pushjobs_store_owner_regained(void)
{
    ngx_uint_t              i;
    ngx_pushjobs_batch_t   *b;
    ngx_pushjobs_store_t   *st;
    ngx_pushjobs_worker_t  *w;

    w = ngx_pushjobs_worker;

    if (w == NULL || w->store == NULL || ngx_exiting || ngx_terminate) {
        return;
    }

    st = w->store;

    if (ngx_pushjobs_pg_barrier("SELECT pushjobs.owner_regained($1)", 1,
                                &w->owner, ngx_pushjobs_owner_beat_done, st)
        != NULL)
    {
        st->owner_busy = 1;
    }

    /*
     * What agents did during the outage (connects, leaves, results) waits
     * for its retry: send it now, right after the barrier.
     */

    for (i = 0; i < NGX_PUSHJOBS_STORE_BATCHES; i++) {
        b = &st->batch[i];

        if (b->retry.timer_set) {
            ngx_del_timer(&b->retry);
            ngx_pushjobs_batch_flush(b);
        }
    }
}


static void
ngx_pushjobs_owner_beat_done(void *data, PGresult *res)
{
    ngx_pushjobs_store_t *st = data;

    st->owner_busy = 0;

    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK
        || PQntuples(res) != 1)
    {
        return;
    }

    if (!st->owner_known) {
        /* the first beat of this worker: nothing was published before */
        st->owner_known = 1;
        return;
    }

    if (*PQgetvalue(res, 0, 0) == 'f') {
        /*
         * Other workers declared this one dead while it could not reach
         * PostgreSQL, and marked its channels offline: publish them again.
         */

        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "pushjobs: worker was declared gone, republishing "
                      "its agents");

        ngx_pushjobs_agent_republish();
    }
}
