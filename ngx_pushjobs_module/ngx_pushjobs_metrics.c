
/*
 * Copyright (C) pushjobs developers
 */


/*
 * Metrics in the Prometheus text exposition format (version 0.0.4), served
 * by a location with "pushjobs_metrics".
 *
 * A scrape reads one shared memory zone that every worker of the front end
 * writes with atomic adds: no database round trip, no lock.
 *
 *   - Counters and histograms are the front end's: they survive a worker's
 *     death and a reload (the zone is kept when its size is), and start
 *     again from zero only when nginx restarts, which Prometheus's rate()
 *     takes as a counter reset.
 *   - Gauges (agents connected, feeds open, the PostgreSQL pool) are kept
 *     per worker process, in a slot the worker claims at its start and
 *     gives back at its exit.  A scrape adds up the slots of processes
 *     alive, so what a killed worker held is not counted forever.
 *
 * Histograms count into fixed buckets (NGX_PUSHJOBS_BUCKETS, in ms); a
 * scrape makes them cumulative, as the format has them.
 */


#include "ngx_pushjobs_module.h"


#define NGX_PUSHJOBS_METRICS_MAGIC   0x706a6d6574726963ULL   /* "pjmetric" */
#define NGX_PUSHJOBS_METRICS_SLOTS   256
#define NGX_PUSHJOBS_METRICS_OUT     (256 * 1024)


typedef struct {
    ngx_atomic_t                bucket[NGX_PUSHJOBS_BUCKETS + 1];
    ngx_atomic_t                sum_ms;
} ngx_pushjobs_hist_t;


typedef struct {
    ngx_atomic_t                pid;
    /* the worker is leaving (a reload): it no longer counts job ends */
    ngx_atomic_t                exiting;
    ngx_atomic_t                gauge[NGX_PUSHJOBS_G_N];
} ngx_pushjobs_metrics_slot_t;


typedef struct {
    uint64_t                    magic;
    uint64_t                    size;
    ngx_atomic_t                counter[NGX_PUSHJOBS_C_N];
    ngx_pushjobs_hist_t         hist[NGX_PUSHJOBS_H_N];
    ngx_pushjobs_metrics_slot_t slot[NGX_PUSHJOBS_METRICS_SLOTS];
} ngx_pushjobs_metrics_t;


static ngx_int_t ngx_pushjobs_metrics_init_zone(ngx_shm_zone_t *zone,
    void *data);
static void ngx_pushjobs_metrics_request(void *data);
typedef struct ngx_pushjobs_metric_s  ngx_pushjobs_metric_t;

static u_char *ngx_pushjobs_metrics_samples(u_char *p, u_char *end,
    ngx_pushjobs_metrics_t *m, u_char *live, ngx_pushjobs_metric_t *mt);
static u_char *ngx_pushjobs_metrics_hist(u_char *p, u_char *end,
    const char *name, const char *labels, ngx_pushjobs_hist_t *h);
static ngx_atomic_int_t ngx_pushjobs_metrics_gauge_sum(
    ngx_pushjobs_metrics_t *m, u_char *live, ngx_uint_t g, ngx_uint_t *procs);
static ngx_uint_t ngx_pushjobs_metrics_name_index(char **names, ngx_uint_t n,
    u_char *name, size_t len);
static void ngx_pushjobs_metrics_live(ngx_pushjobs_metrics_t *m,
    u_char *live);
static ngx_uint_t ngx_pushjobs_metrics_alive(ngx_atomic_uint_t pid);


static ngx_str_t  ngx_pushjobs_metrics_zone_name =
    ngx_string("pushjobs_metrics");

/* upper bounds of the buckets, in ms and as the "le" label */
static ngx_msec_t  ngx_pushjobs_bucket_ms[NGX_PUSHJOBS_BUCKETS] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000
};

static char  *ngx_pushjobs_bucket_le[NGX_PUSHJOBS_BUCKETS] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
    "5", "10"
};

/* a job's end statuses; then "other" */
static char  *ngx_pushjobs_job_end_name[NGX_PUSHJOBS_JOB_ENDS + 1] = {
    "complete", "quorum_failed", "timed_out", "crashed", "aborted", "other",
    NULL
};

/* the node statuses (schema.sql's node_status, in its order); then "other" */
static char  *ngx_pushjobs_node_end_name[NGX_PUSHJOBS_NODE_ENDS + 1] = {
    "new", "ready", "running", "succeeded", "failed", "aborted",
    "unavailable", "nacked", "faulty", "was_ready", "crashed", "timed_out",
    "other", NULL
};

/* the REST routes by number (ngx_pushjobs_api.c), 0: none matched */
static char  *ngx_pushjobs_route_name[NGX_PUSHJOBS_ROUTES] = {
    "none", "jobs", "job", "output", "abort", "node_states", "node_state",
    "config", "job_status_feed", "job_feed", "agent", "status",
    "agent_poll", "metrics", "job_link", "org_link", "ui"
};

static char  *ngx_pushjobs_class_name[NGX_PUSHJOBS_CLASSES] = {
    "none", "1xx", "2xx", "3xx", "4xx", "5xx"
};

/* the close codes a server sends an agent; "none": the connection broke */
static ngx_uint_t  ngx_pushjobs_close_code[NGX_PUSHJOBS_CLOSE_CODES - 1] = {
    0, NGX_PUSHJOBS_WS_NORMAL, NGX_PUSHJOBS_WS_GOING_AWAY,
    NGX_PUSHJOBS_WS_PROTOCOL, NGX_PUSHJOBS_WS_UNSUPPORTED,
    NGX_PUSHJOBS_WS_INVALID, NGX_PUSHJOBS_WS_POLICY, NGX_PUSHJOBS_WS_TOO_BIG,
    NGX_PUSHJOBS_WS_SERVER_ERROR, NGX_PUSHJOBS_WS_REPLACED,
    NGX_PUSHJOBS_POLL_UNKNOWN
};


ngx_int_t
ngx_pushjobs_metrics_conf(ngx_conf_t *cf, ngx_pushjobs_main_conf_t *pmcf)
{
    size_t  size;

    size = ngx_align(sizeof(ngx_pushjobs_metrics_t), ngx_pagesize)
           + 8 * ngx_pagesize;

    pmcf->metrics_zone = ngx_shared_memory_add(cf,
                                             &ngx_pushjobs_metrics_zone_name,
                                             size, &ngx_pushjobs_module);
    if (pmcf->metrics_zone == NULL) {
        return NGX_ERROR;
    }

    pmcf->metrics_zone->init = ngx_pushjobs_metrics_init_zone;

    return NGX_OK;
}


/*
 * A reload hands over the zone of the configuration before (data): its
 * figures go on, unless it was made by a module of another layout.
 */

static ngx_int_t
ngx_pushjobs_metrics_init_zone(ngx_shm_zone_t *zone, void *data)
{
    ngx_slab_pool_t         *shpool;
    ngx_pushjobs_metrics_t  *m, *old;

    shpool = (ngx_slab_pool_t *) zone->shm.addr;

    old = data;

    if (old == NULL && zone->shm.exists) {
        old = shpool->data;
    }

    if (old && old->magic == NGX_PUSHJOBS_METRICS_MAGIC
        && old->size == sizeof(ngx_pushjobs_metrics_t))
    {
        zone->data = old;
        return NGX_OK;
    }

    /*
     * New, or left by a module of another layout (its allocation may be
     * smaller than ours: it stays, the zone has room for both).  Metrics
     * are not worth failing a start or a reload for.
     */

    m = ngx_slab_alloc(shpool, sizeof(ngx_pushjobs_metrics_t));

    if (m == NULL) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "pushjobs: no room for the metrics in \"%V\", "
                      "metrics are off", &zone->shm.name);
        zone->data = NULL;
        return NGX_OK;
    }

    ngx_memzero(m, sizeof(ngx_pushjobs_metrics_t));
    m->magic = NGX_PUSHJOBS_METRICS_MAGIC;
    m->size = sizeof(ngx_pushjobs_metrics_t);

    shpool->data = m;
    zone->data = m;

    return NGX_OK;
}


/*
 * The worker's slot: a free one, or one of a process that is gone (a
 * worker killed, whose exit never gave it back).
 */

void
ngx_pushjobs_metrics_init_process(ngx_pushjobs_worker_t *w)
{
    ngx_uint_t               i, g;
    ngx_atomic_uint_t        pid;
    ngx_pushjobs_metrics_t  *m;

    if (w->pmcf->metrics_zone == NULL || w->pmcf->metrics_zone->data == NULL)
    {
        return;
    }

    m = w->pmcf->metrics_zone->data;
    w->metrics = m;

    for (i = 0; i < NGX_PUSHJOBS_METRICS_SLOTS; i++) {
        pid = m->slot[i].pid;

        if (ngx_pushjobs_metrics_alive(pid)) {
            continue;
        }

        if (!ngx_atomic_cmp_set(&m->slot[i].pid, pid,
                                (ngx_atomic_uint_t) ngx_pid))
        {
            continue;
        }

        for (g = 0; g < NGX_PUSHJOBS_G_N; g++) {
            m->slot[i].gauge[g] = 0;
        }

        m->slot[i].exiting = 0;
        w->metrics_slot = &m->slot[i].gauge[0];
        return;
    }

    ngx_log_error(NGX_LOG_WARN, w->log, 0,
                  "pushjobs: no metrics slot free for this worker, "
                  "its gauges are not counted");
}


static ngx_pushjobs_metrics_slot_t *
ngx_pushjobs_metrics_own_slot(ngx_pushjobs_worker_t *w)
{
    if (w == NULL || w->metrics_slot == NULL) {
        return NULL;
    }

    return (ngx_pushjobs_metrics_slot_t *)
               ((u_char *) w->metrics_slot
                - offsetof(ngx_pushjobs_metrics_slot_t, gauge));
}


void
ngx_pushjobs_metrics_exit_process(ngx_pushjobs_worker_t *w)
{
    ngx_uint_t                    g;
    ngx_pushjobs_metrics_slot_t  *s;

    s = ngx_pushjobs_metrics_own_slot(w);

    if (s == NULL) {
        return;
    }

    for (g = 0; g < NGX_PUSHJOBS_G_N; g++) {
        s->gauge[g] = 0;
    }

    w->metrics_slot = NULL;

    (void) ngx_atomic_cmp_set(&s->pid, (ngx_atomic_uint_t) ngx_pid, 0);
}


void
ngx_pushjobs_metrics_exiting(ngx_pushjobs_worker_t *w)
{
    ngx_pushjobs_metrics_slot_t  *s;

    s = ngx_pushjobs_metrics_own_slot(w);

    if (s) {
        s->exiting = 1;
    }
}


/*
 * A job ended, anywhere (every worker of every front end hears its
 * NOTIFY): counted once per front end, by its first worker alive that is
 * not leaving and listens (a worker just started, or whose LISTEN
 * connection is away, hears nothing: it must not be the one that counts).
 * Counts what this front end saw, from the notifications: ends while every
 * LISTEN connection of it was away are not counted.  nodes: the
 * rest of the notification, "NODE_STATUS=COUNT" tokens, how many of the
 * job's nodes ended in each status.
 */

void
ngx_pushjobs_metrics_job_ended(ngx_str_t *status, ngx_str_t *nodes)
{
    u_char                       *eq;
    ngx_int_t                     n;
    ngx_str_t                     rest, tok;
    ngx_uint_t                    i, k;
    ngx_pushjobs_metrics_t       *m;
    ngx_pushjobs_metrics_slot_t  *own;
    u_char                        live[NGX_PUSHJOBS_METRICS_SLOTS];

    own = ngx_pushjobs_metrics_own_slot(ngx_pushjobs_worker);

    if (own == NULL || own->exiting) {
        return;
    }

    m = ngx_pushjobs_worker->metrics;

    ngx_pushjobs_metrics_live(m, live);

    for (i = 0; i < NGX_PUSHJOBS_METRICS_SLOTS; i++) {
        if (!live[i] || m->slot[i].exiting
            || !m->slot[i].gauge[NGX_PUSHJOBS_G_PG_LISTENING])
        {
            continue;
        }

        if (&m->slot[i] != own) {
            /* another worker counts it */
            return;
        }

        break;
    }

    k = ngx_pushjobs_metrics_name_index(ngx_pushjobs_job_end_name,
                                        NGX_PUSHJOBS_JOB_ENDS, status->data,
                                        status->len);

    ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_JOBS_ENDED + k, 1);

    rest = *nodes;

    while (ngx_pushjobs_token(&rest, &tok)) {
        eq = ngx_strlchr(tok.data, tok.data + tok.len, '=');

        /* a count has at most 9 digits: a job has fewer nodes */
        if (eq == NULL || tok.data + tok.len - eq - 1 < 1
            || tok.data + tok.len - eq - 1 > 9)
        {
            continue;
        }

        n = ngx_atoi(eq + 1, tok.data + tok.len - eq - 1);
        if (n == NGX_ERROR) {
            continue;
        }

        k = ngx_pushjobs_metrics_name_index(ngx_pushjobs_node_end_name,
                                            NGX_PUSHJOBS_NODE_ENDS, tok.data,
                                            eq - tok.data);

        ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_NODES_ENDED + k, n);
    }
}


/* The index of a name among n (the last: "other"). */

static ngx_uint_t
ngx_pushjobs_metrics_name_index(char **names, ngx_uint_t n, u_char *name,
    size_t len)
{
    ngx_uint_t  k;

    for (k = 0; k < n - 1; k++) {
        if (ngx_strlen(names[k]) == len
            && ngx_strncmp(names[k], name, len) == 0)
        {
            break;
        }
    }

    return k;
}


/* Which slots belong to a process alive (live[i] 1), by one kill(0) each. */

static void
ngx_pushjobs_metrics_live(ngx_pushjobs_metrics_t *m, u_char *live)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_PUSHJOBS_METRICS_SLOTS; i++) {
        live[i] = ngx_pushjobs_metrics_alive(m->slot[i].pid);
    }
}


/* A slot's process is alive: it has one, and kill(0) does not say gone. */

static ngx_uint_t
ngx_pushjobs_metrics_alive(ngx_atomic_uint_t pid)
{
    return pid != 0
           && (kill((pid_t) pid, 0) == 0 || ngx_errno != NGX_ESRCH);
}


void
ngx_pushjobs_metrics_add(ngx_uint_t c, ngx_atomic_int_t n)
{
    ngx_pushjobs_metrics_t  *m;

    if (ngx_pushjobs_worker == NULL || ngx_pushjobs_worker->metrics == NULL
        || c >= NGX_PUSHJOBS_C_N)
    {
        return;
    }

    m = ngx_pushjobs_worker->metrics;

    (void) ngx_atomic_fetch_add(&m->counter[c], n);
}


void
ngx_pushjobs_metrics_observe(ngx_uint_t h, ngx_msec_int_t ms)
{
    ngx_uint_t               b;
    ngx_pushjobs_metrics_t  *m;

    if (ngx_pushjobs_worker == NULL || ngx_pushjobs_worker->metrics == NULL
        || h >= NGX_PUSHJOBS_H_N)
    {
        return;
    }

    m = ngx_pushjobs_worker->metrics;

    if (ms < 0) {
        ms = 0;
    }

    for (b = 0; b < NGX_PUSHJOBS_BUCKETS; b++) {
        if ((ngx_msec_t) ms <= ngx_pushjobs_bucket_ms[b]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&m->hist[h].bucket[b], 1);
    (void) ngx_atomic_fetch_add(&m->hist[h].sum_ms, ms);
}


void
ngx_pushjobs_metrics_gauge(ngx_uint_t g, ngx_atomic_int_t n, ngx_uint_t set)
{
    ngx_atomic_t  *slot;

    if (ngx_pushjobs_worker == NULL || g >= NGX_PUSHJOBS_G_N) {
        return;
    }

    slot = ngx_pushjobs_worker->metrics_slot;

    if (slot == NULL) {
        return;
    }

    /* only this worker writes its slot */

    if (set) {
        slot[g] = n;

    } else {
        slot[g] += n;
    }
}


ngx_uint_t
ngx_pushjobs_metrics_close_code(ngx_uint_t code)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_PUSHJOBS_CLOSE_CODES - 1; i++) {
        if (ngx_pushjobs_close_code[i] == code) {
            return i;
        }
    }

    return NGX_PUSHJOBS_CLOSE_CODES - 1;
}


/*
 * A request of the module's locations: counted by route and status class
 * when nginx frees it, after its log phase (a pool cleanup, since the
 * request's module context is replaced by the feed's or the channel's).
 */

ngx_pushjobs_metrics_req_t *
ngx_pushjobs_metrics_track(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t          *cln;
    ngx_pushjobs_metrics_req_t  *t;

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_pushjobs_metrics_req_t));
    if (cln == NULL) {
        return NULL;
    }

    t = cln->data;
    t->request = r;
    t->route = 0;
    t->timed = 1;

    cln->handler = ngx_pushjobs_metrics_request;

    return t;
}


static void
ngx_pushjobs_metrics_request(void *data)
{
    ngx_pushjobs_metrics_req_t *t = data;

    ngx_uint_t           route, class, status;
    ngx_time_t          *tp;
    ngx_msec_int_t       ms;
    ngx_http_request_t  *r;

    r = t->request;
    route = t->route < NGX_PUSHJOBS_ROUTES ? t->route : 0;

    status = r->headers_out.status;
    class = (status >= 100 && status < 600) ? status / 100 : 0;

    ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_HTTP
                             + route * NGX_PUSHJOBS_CLASSES + class, 1);

    if (t->timed) {
        tp = ngx_timeofday();
        ms = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                               + (tp->msec - r->start_msec));
        ngx_pushjobs_metrics_observe(NGX_PUSHJOBS_H_HTTP + route, ms);
    }
}


/*
 * The exposition, as a table: each metric its name, type and help, and
 * where its samples come from.
 */

#define NGX_PUSHJOBS_M_COUNTER       1   /* counter[source + i] */
#define NGX_PUSHJOBS_M_GAUGE         2   /* the slots' gauge[source + i] */
#define NGX_PUSHJOBS_M_HIST          3   /* hist[source] */
#define NGX_PUSHJOBS_M_PROCS         4   /* the slots of processes alive */
#define NGX_PUSHJOBS_M_CLOSES        5   /* counter[source + close code] */
#define NGX_PUSHJOBS_M_REQUESTS      6   /* by route and class, not zero */
#define NGX_PUSHJOBS_M_ROUTES        7   /* hist[source + route], timed */

struct ngx_pushjobs_metric_s {
    char                       *name;
    char                       *type;
    char                       *help;
    ngx_uint_t                  kind;
    ngx_uint_t                  source;
    /* a label and its values, one sample each; NULL: one sample */
    char                       *label;
    char                      **values;
};


static char  *ngx_pushjobs_transport_name[] = {
    "websocket", "long_poll", NULL
};

static char  *ngx_pushjobs_overflow_name[] = { "feed", "agent", NULL };

static char  *ngx_pushjobs_stall_name[] = { "output", "input", NULL };

static char  *ngx_pushjobs_pg_result_name[] = {
    "ok", "error", "failed", NULL
};

/* the agent's message types, in the order of ngx_pushjobs_session.c's */
static char  *ngx_pushjobs_agent_msg_name[] = {
    "unknown", "hello", "ack_commit", "nack_commit", "ack_run", "nack_run",
    "succeeded", "failed", "aborted", "output", NULL
};

static char  *ngx_pushjobs_chef_result_name[] = {
    "ok", "error", "timeout", NULL
};


static ngx_pushjobs_metric_t  ngx_pushjobs_metrics_table[] = {

    { "pushjobs_worker_processes", "gauge",
      "Worker processes of this front end that serve push jobs.",
      NGX_PUSHJOBS_M_PROCS, 0, NULL, NULL },

    { "pushjobs_agents_connected", "gauge",
      "Agent channels open, by transport.",
      NGX_PUSHJOBS_M_GAUGE, NGX_PUSHJOBS_G_AGENTS_WS,
      "transport", ngx_pushjobs_transport_name },

    { "pushjobs_agent_channels_opened_total", "counter",
      "Agent channels opened, by transport.",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_CHAN_OPENED,
      "transport", ngx_pushjobs_transport_name },

    { "pushjobs_agent_channels_closed_total", "counter",
      "Agent channels closed, by the close code the server sent (none: the "
      "connection broke or the agent left).",
      NGX_PUSHJOBS_M_CLOSES, NGX_PUSHJOBS_C_CHAN_CLOSED, "code", NULL },

    { "pushjobs_jobs_started_total", "counter",
      "Jobs started by POST on this front end.",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_JOBS_STARTED, NULL, NULL },

    { "pushjobs_agent_messages_total", "counter",
      "Messages received from agents, by type: the node transitions they "
      "report (votes, runs, results) and their output.",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_AGENT_MSG,
      "type", ngx_pushjobs_agent_msg_name },

    { "pushjobs_jobs_ended_total", "counter",
      "Jobs ended, by final status: every job of the job system (all front "
      "ends), counted once per front end from PostgreSQL's notifications.",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_JOBS_ENDED,
      "status", ngx_pushjobs_job_end_name },

    { "pushjobs_job_nodes_ended_total", "counter",
      "Nodes of the jobs ended, by their final status, whoever made it: "
      "their agents, or the server (unavailable, timed_out, aborted, "
      "crashed, was_ready); counted with pushjobs_jobs_ended_total.",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_NODES_ENDED,
      "status", ngx_pushjobs_node_end_name },

    { "pushjobs_feeds_open", "gauge",
      "Server-Sent Events feeds open.",
      NGX_PUSHJOBS_M_GAUGE, NGX_PUSHJOBS_G_FEEDS, NULL, NULL },

    { "pushjobs_output_bytes_total", "counter",
      "Bytes of captured job output received from agents, streamed and in "
      "final reports.",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_OUTPUT_BYTES, NULL, NULL },

    { "pushjobs_queue_overflows_total", "counter",
      "Readers closed because their output queue reached its cap, by kind "
      "(their queued messages are dropped).",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_OVERFLOW_FEED,
      "queue", ngx_pushjobs_overflow_name },

    { "pushjobs_agent_stalls_total", "counter",
      "Agent channels that stopped reading because what they send waits "
      "for PostgreSQL (back-pressure, nothing dropped): by batch, output "
      "(live output at pushjobs_output_batch_size) or input (other "
      "messages at eight times it).",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_STALLS,
      "batch", ngx_pushjobs_stall_name },

    { "pushjobs_http_requests_total", "counter",
      "Requests of the module's locations, by route and status class.",
      NGX_PUSHJOBS_M_REQUESTS, NGX_PUSHJOBS_C_HTTP, NULL, NULL },

    { "pushjobs_http_request_duration_seconds", "histogram",
      "Time from a request's start to its end, by route; routes that hold "
      "their connection (feeds, agent channels) are not timed.",
      NGX_PUSHJOBS_M_ROUTES, NGX_PUSHJOBS_H_HTTP, NULL, NULL },

    { "pushjobs_postgres_connections_busy", "gauge",
      "Pool connections running a query.",
      NGX_PUSHJOBS_M_GAUGE, NGX_PUSHJOBS_G_PG_BUSY, NULL, NULL },

    { "pushjobs_postgres_queries_queued", "gauge",
      "Queries waiting for a pool connection.",
      NGX_PUSHJOBS_M_GAUGE, NGX_PUSHJOBS_G_PG_QUEUED, NULL, NULL },

    { "pushjobs_postgres_listening", "gauge",
      "Worker processes whose LISTEN connection is up: a worker without it "
      "hears of no job until it is back.",
      NGX_PUSHJOBS_M_GAUGE, NGX_PUSHJOBS_G_PG_LISTENING, NULL, NULL },

    { "pushjobs_postgres_queries_total", "counter",
      "Queries ended, by result (error: PostgreSQL refused it; failed: no "
      "answer, the connection lost or timed out).",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_PG,
      "result", ngx_pushjobs_pg_result_name },

    { "pushjobs_postgres_query_duration_seconds", "histogram",
      "Time from a query's sending to its result.",
      NGX_PUSHJOBS_M_HIST, NGX_PUSHJOBS_H_PG, NULL, NULL },

    { "pushjobs_key_cache_hits_total", "counter",
      "Principal lookups answered by the shared key cache.",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_KEY_HITS, NULL, NULL },

    { "pushjobs_key_cache_misses_total", "counter",
      "Principal lookups the key cache could not answer.",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_KEY_MISSES, NULL, NULL },

    { "pushjobs_key_cache_evictions_total", "counter",
      "Key cache entries dropped before their time to make room.",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_KEY_EVICTIONS, NULL, NULL },

    { "pushjobs_key_store_hits_total", "counter",
      "Key cache misses answered by what PostgreSQL keeps of the Chef "
      "server's answers, without asking the Chef server.",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_KEY_STORED, NULL, NULL },

    { "pushjobs_key_store_stale_total", "counter",
      "Keys past their time to live, within the stale time, taken from "
      "PostgreSQL because the worker had asked the Chef server for keys "
      "at its rate (pushjobs_key_zone rate=) already: a restart storm.",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_KEY_SPARED, NULL, NULL },

    { "pushjobs_chef_requests_total", "counter",
      "Requests to the Chef server API (principals, groups), by result.",
      NGX_PUSHJOBS_M_COUNTER, NGX_PUSHJOBS_C_CHEF,
      "result", ngx_pushjobs_chef_result_name },

    { "pushjobs_chef_request_duration_seconds", "histogram",
      "Time of a request to the Chef server API.",
      NGX_PUSHJOBS_M_HIST, NGX_PUSHJOBS_H_CHEF, NULL, NULL },

    { NULL, NULL, NULL, 0, 0, NULL, NULL }
};


ngx_int_t
ngx_pushjobs_metrics_handler(ngx_http_request_t *r)
{
    u_char                  *p, *end;
    ngx_int_t                rc;
    ngx_buf_t               *b;
    ngx_chain_t              out;
    ngx_pushjobs_metric_t   *mt;
    ngx_pushjobs_metrics_t  *m;
    u_char                   live[NGX_PUSHJOBS_METRICS_SLOTS];

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_pushjobs_worker == NULL || ngx_pushjobs_worker->metrics == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    m = ngx_pushjobs_worker->metrics;

    /* which processes are alive, once for the whole scrape */
    ngx_pushjobs_metrics_live(m, live);

    b = ngx_create_temp_buf(r->pool, NGX_PUSHJOBS_METRICS_OUT);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->pos;
    end = b->end;

    for (mt = ngx_pushjobs_metrics_table; mt->name; mt++) {
        p = ngx_slprintf(p, end, "# HELP %s %s\n# TYPE %s %s\n",
                         mt->name, mt->help, mt->name, mt->type);
        p = ngx_pushjobs_metrics_samples(p, end, m, live, mt);
    }

    if (p == end) {
        /* ngx_slprintf() stops at end: the buffer is too small */
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "pushjobs: metrics do not fit in %uz bytes",
                      (size_t) NGX_PUSHJOBS_METRICS_OUT);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* The samples of one metric of the table. */

static u_char *
ngx_pushjobs_metrics_samples(u_char *p, u_char *end, ngx_pushjobs_metrics_t *m,
    u_char *live, ngx_pushjobs_metric_t *mt)
{
    ngx_uint_t         i, k, procs;
    ngx_atomic_int_t   v;

    switch (mt->kind) {

    case NGX_PUSHJOBS_M_PROCS:
        (void) ngx_pushjobs_metrics_gauge_sum(m, live, 0, &procs);
        return ngx_slprintf(p, end, "%s %ui\n", mt->name, procs);

    case NGX_PUSHJOBS_M_HIST:
        return ngx_pushjobs_metrics_hist(p, end, mt->name, NULL,
                                         &m->hist[mt->source]);

    case NGX_PUSHJOBS_M_ROUTES:
        for (i = 0; i < NGX_PUSHJOBS_ROUTES; i++) {
            p = ngx_pushjobs_metrics_hist(p, end, mt->name,
                                          ngx_pushjobs_route_name[i],
                                          &m->hist[mt->source + i]);
        }

        return p;

    case NGX_PUSHJOBS_M_CLOSES:
        for (i = 0; i < NGX_PUSHJOBS_CLOSE_CODES; i++) {
            v = m->counter[mt->source + i];

            if (i == 0) {
                p = ngx_slprintf(p, end, "%s{code=\"none\"} %A\n",
                                 mt->name, v);

            } else if (i == NGX_PUSHJOBS_CLOSE_CODES - 1) {
                p = ngx_slprintf(p, end, "%s{code=\"other\"} %A\n",
                                 mt->name, v);

            } else {
                p = ngx_slprintf(p, end, "%s{code=\"%ui\"} %A\n", mt->name,
                                 ngx_pushjobs_close_code[i], v);
            }
        }

        return p;

    case NGX_PUSHJOBS_M_REQUESTS:
        for (i = 0; i < NGX_PUSHJOBS_ROUTES; i++) {
            for (k = 0; k < NGX_PUSHJOBS_CLASSES; k++) {
                v = m->counter[mt->source + i * NGX_PUSHJOBS_CLASSES + k];

                if (v) {
                    p = ngx_slprintf(p, end,
                                     "%s{route=\"%s\",code=\"%s\"} %A\n",
                                     mt->name, ngx_pushjobs_route_name[i],
                                     ngx_pushjobs_class_name[k], v);
                }
            }
        }

        return p;
    }

    /* counters and gauges, one sample or one per label value */

    for (i = 0; mt->label == NULL ? i == 0 : mt->values[i] != NULL; i++) {
        v = (mt->kind == NGX_PUSHJOBS_M_GAUGE)
            ? ngx_pushjobs_metrics_gauge_sum(m, live, mt->source + i, NULL)
            : (ngx_atomic_int_t) m->counter[mt->source + i];

        if (mt->label) {
            p = ngx_slprintf(p, end, "%s{%s=\"%s\"} %A\n", mt->name,
                             mt->label, mt->values[i], v);

        } else {
            p = ngx_slprintf(p, end, "%s %A\n", mt->name, v);
        }
    }

    return p;
}


/* One histogram's lines; labels: the route, or NULL. */

static u_char *
ngx_pushjobs_metrics_hist(u_char *p, u_char *end, const char *name,
    const char *route, ngx_pushjobs_hist_t *h)
{
    ngx_uint_t        b;
    ngx_atomic_int_t  n, sum;

    n = 0;

    for (b = 0; b <= NGX_PUSHJOBS_BUCKETS; b++) {
        n += h->bucket[b];
    }

    if (route && n == 0) {
        /* a route never timed: no series */
        return p;
    }

    n = 0;

    for (b = 0; b <= NGX_PUSHJOBS_BUCKETS; b++) {
        n += h->bucket[b];

        if (route) {
            p = ngx_slprintf(p, end, "%s_bucket{route=\"%s\",le=\"%s\"} %A\n",
                             name, route,
                             b < NGX_PUSHJOBS_BUCKETS
                                 ? ngx_pushjobs_bucket_le[b] : "+Inf", n);

        } else {
            p = ngx_slprintf(p, end, "%s_bucket{le=\"%s\"} %A\n", name,
                             b < NGX_PUSHJOBS_BUCKETS
                                 ? ngx_pushjobs_bucket_le[b] : "+Inf", n);
        }
    }

    sum = h->sum_ms;

    if (route) {
        p = ngx_slprintf(p, end, "%s_sum{route=\"%s\"} %A.%03A\n"
                         "%s_count{route=\"%s\"} %A\n",
                         name, route, sum / 1000, sum % 1000, name, route, n);

    } else {
        p = ngx_slprintf(p, end, "%s_sum %A.%03A\n%s_count %A\n",
                         name, sum / 1000, sum % 1000, name, n);
    }

    return p;
}


/* A gauge summed over the slots of processes alive; procs: their count. */

static ngx_atomic_int_t
ngx_pushjobs_metrics_gauge_sum(ngx_pushjobs_metrics_t *m, u_char *live,
    ngx_uint_t g, ngx_uint_t *procs)
{
    ngx_uint_t        i, n;
    ngx_atomic_int_t  sum;

    sum = 0;
    n = 0;

    for (i = 0; i < NGX_PUSHJOBS_METRICS_SLOTS; i++) {
        if (live[i]) {
            n++;
            sum += m->slot[i].gauge[g];
        }
    }

    if (procs) {
        *procs = n;
    }

    return sum;
}
