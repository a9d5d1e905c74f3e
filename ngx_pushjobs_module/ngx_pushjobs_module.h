
/*
 * Copyright (C) pushjobs developers
 */


#ifndef _NGX_PUSHJOBS_MODULE_H_INCLUDED_
#define _NGX_PUSHJOBS_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <libpq-fe.h>
#include <openssl/evp.h>

#include "json_bound.h"
#include "job_body.h"


#define NGX_PUSHJOBS_VERSION           "0.1.0"
#define NGX_PUSHJOBS_PROTOCOL          1

#define NGX_PUSHJOBS_JOB_ID_LEN        32
#define NGX_PUSHJOBS_NAME_MAX          255

/* an HTTP status nginx has no name for */
#define NGX_HTTP_PUSHJOBS_UPGRADE_REQUIRED  426

/*
 * A worker refreshes its row in pushjobs.owners every OWNER_BEAT; a worker
 * not heard of for OWNER_TIMEOUT is gone, and so are its agent channels.
 */
#define NGX_PUSHJOBS_OWNER_BEAT        5000
#define NGX_PUSHJOBS_OWNER_TIMEOUT     20000

/* NGX_PUSHJOBS_OWNER_TIMEOUT as the text of a query parameter */
#define ngx_pushjobs_owner_timeout_param(str)                                \
    ngx_str_set(str, ngx_pushjobs_stringify(NGX_PUSHJOBS_OWNER_TIMEOUT))
#define ngx_pushjobs_stringify(n)      ngx_pushjobs_stringify_text(n)
#define ngx_pushjobs_stringify_text(n) #n

/*
 * A channel's presence (ngx_pushjobs_store_presence()).  A worker leaving
 * on a reload hands its channels over: new jobs count on their nodes for
 * HANDOVER_TIME while their agents reconnect to the new workers.
 */
#define NGX_PUSHJOBS_PRESENCE_OFFLINE  0
#define NGX_PUSHJOBS_PRESENCE_ONLINE   1
#define NGX_PUSHJOBS_PRESENCE_HANDOVER 2
#define NGX_PUSHJOBS_HANDOVER_TIME     10000

/* What a location serves (the "pushjobs" and "pushjobs_status" directives). */
#define NGX_PUSHJOBS_LOC_API           1
#define NGX_PUSHJOBS_LOC_STATUS        2
#define NGX_PUSHJOBS_LOC_METRICS       3

/* Chef signing protocol versions (X-Ops-Sign). */
#define NGX_PUSHJOBS_SIGN_1_0          1
#define NGX_PUSHJOBS_SIGN_1_1          2
#define NGX_PUSHJOBS_SIGN_1_2          3
#define NGX_PUSHJOBS_SIGN_1_3          4

/* Principal types returned by the Chef server's principals endpoint. */
#define NGX_PUSHJOBS_USER              1
#define NGX_PUSHJOBS_CLIENT            2

#define NGX_PUSHJOBS_MAX_PRINCIPALS    4

/* Websocket opcodes and close codes (RFC 6455). */
#define NGX_PUSHJOBS_WS_CONT           0x0
#define NGX_PUSHJOBS_WS_TEXT           0x1
#define NGX_PUSHJOBS_WS_BINARY         0x2
#define NGX_PUSHJOBS_WS_CLOSE          0x8
#define NGX_PUSHJOBS_WS_PING           0x9
#define NGX_PUSHJOBS_WS_PONG           0xa

#define NGX_PUSHJOBS_WS_NORMAL         1000
#define NGX_PUSHJOBS_WS_GOING_AWAY     1001
#define NGX_PUSHJOBS_WS_PROTOCOL       1002
#define NGX_PUSHJOBS_WS_UNSUPPORTED    1003
#define NGX_PUSHJOBS_WS_INVALID        1007
#define NGX_PUSHJOBS_WS_POLICY         1008
#define NGX_PUSHJOBS_WS_TOO_BIG        1009
#define NGX_PUSHJOBS_WS_SERVER_ERROR   1011
#define NGX_PUSHJOBS_WS_REPLACED       4000

/* Agent channel close codes of long-poll sessions only (docs/protocol.md). */
#define NGX_PUSHJOBS_POLL_UNKNOWN      4001

/* How long a long-poll request is held when nothing is queued, in ms. */
#define NGX_PUSHJOBS_POLL_HOLD         25000

/* The longest websocket frame header a server writes: 2 + 8 bytes. */
#define NGX_PUSHJOBS_WS_HEADER_MAX     10


typedef struct ngx_pushjobs_worker_s    ngx_pushjobs_worker_t;
typedef struct ngx_pushjobs_out_link_s  ngx_pushjobs_out_link_t;
typedef struct ngx_pushjobs_agent_s     ngx_pushjobs_agent_t;

/* a session in the worker's table by hash (ngx_pushjobs_session.c) */
typedef struct {
    uint32_t                    hash;
    ngx_pushjobs_agent_t       *agent;
} ngx_pushjobs_agent_slot_t;
typedef struct ngx_pushjobs_chan_s      ngx_pushjobs_chan_t;
typedef struct ngx_pushjobs_pg_query_s  ngx_pushjobs_pg_query_t;
typedef struct ngx_pushjobs_pg_s        ngx_pushjobs_pg_t;
typedef struct ngx_pushjobs_store_s     ngx_pushjobs_store_t;


/* Configuration. */

typedef struct {
    ngx_str_t                   conninfo;
    ngx_uint_t                  pool_size;

    ngx_shm_zone_t             *keys_zone;
    ngx_shm_zone_t             *metrics_zone;
    time_t                      keys_ttl;
    time_t                      keys_stale;
    ngx_uint_t                  keys_rate;      /* per 1000 s, per worker */

    ngx_str_t                   chef_location;
    ngx_msec_t                  chef_timeout;
    ngx_str_t                   chef_user;
    ngx_str_t                   chef_key_file;
    EVP_PKEY                   *chef_key;
    ngx_str_t                   server_name;

    ngx_msec_t                  voting_timeout;
    time_t                      default_run_timeout;
    ngx_msec_t                  ping_interval;
    /* of an agent channel's TLS 1.3 session tickets; 0: ssl_session_timeout */
    time_t                      ticket_lifetime;
    ngx_msec_t                  node_lost_timeout;
    ngx_msec_t                  sweep_interval;
    time_t                      job_retention;
    ngx_msec_t                  feed_linger;
    time_t                      org_feed_retention;
    time_t                      clock_skew;

    size_t                      max_message_size;
    size_t                      max_body_size;
    size_t                      max_output_size;
    ngx_flag_t                  live_output;     /* agents may stream */
    /* live output gathered for one node_outputs() call (back-pressure) */
    size_t                      output_batch_size;
    size_t                      max_queued_output;

    /* the pages and the read-only links (ngx_pushjobs_link.c) */
    ngx_str_t                   ui_dir;
    ngx_array_t                *ui_files;    /* ngx_pushjobs_ui_file_t */
    time_t                      link_ttl;

    /* a UUID v4 per configuration load, shown by /pushy/_status */
    ngx_str_t                   incarnation;

    ngx_flag_t                  used;
} ngx_pushjobs_main_conf_t;


typedef struct {
    ngx_uint_t                  serve;
} ngx_pushjobs_loc_conf_t;


typedef struct {
    ngx_str_t                   name;
    ngx_str_t                   type;
    ngx_str_t                   body;
} ngx_pushjobs_ui_file_t;


/* Chef request authentication (ngx_pushjobs_auth.c). */

typedef struct {
    ngx_str_t                   user_id;
    ngx_str_t                   timestamp;
    ngx_str_t                   content_hash;
    ngx_str_t                   sign;
    ngx_str_t                   api_version;
    ngx_str_t                   signature;
    ngx_uint_t                  version;
    time_t                      time;
} ngx_pushjobs_auth_t;


typedef struct {
    ngx_uint_t                  type;
    ngx_uint_t                  org_member;
    EVP_PKEY                   *key;
} ngx_pushjobs_principal_t;


/* Result of a principal lookup (ngx_pushjobs_keys.c). */

#define NGX_PUSHJOBS_PRINCIPAL_FOUND       0
#define NGX_PUSHJOBS_PRINCIPAL_NO_ORG      1
#define NGX_PUSHJOBS_PRINCIPAL_NOT_FOUND   2

typedef struct {
    ngx_uint_t                  status;
    ngx_uint_t                  n;
    ngx_pushjobs_principal_t    principal[NGX_PUSHJOBS_MAX_PRINCIPALS];
} ngx_pushjobs_principals_t;


/*
 * Authentication and authorization of a REST request
 * (ngx_pushjobs_authz.c).  The caller embeds the struct in its request
 * context, zeroed, and sets what the route requires before
 * ngx_pushjobs_authz_start(); the rest is authz's own.  The results are
 * described at the top of ngx_pushjobs_authz.c.
 */

/* who may use a route, checked once the client is authenticated */
#define NGX_PUSHJOBS_AUTHZ_NONE        0   /* anyone, unauthenticated */
#define NGX_PUSHJOBS_AUTHZ_AGENT       1   /* any client, as itself */
#define NGX_PUSHJOBS_AUTHZ_NODE        2   /* the client named by node */
#define NGX_PUSHJOBS_AUTHZ_GROUPS      3   /* pushy_job_readers to read,
                                              pushy_job_writers to POST */

typedef struct {
    ngx_str_t                   org;
    ngx_uint_t                  rule;
    /* the node of NGX_PUSHJOBS_AUTHZ_NODE */
    ngx_str_t                   node;
    /* the request body, whose hash the client signed */
    ngx_str_t                   body;
    /* the request's write event handler while a subrequest is out */
    ngx_http_event_handler_pt   resume;

    /* the client or user named by the auth headers, once parsed */
    ngx_str_t                   user;

    /* the flow's own state, from here on */
    ngx_http_request_t         *request;
    ngx_uint_t                  step;

    ngx_pushjobs_auth_t         auth;
    ngx_pushjobs_principals_t   principals;
    ngx_pushjobs_principal_t   *requestor;
    ngx_uint_t                  cached;
    ngx_uint_t                  refetched;
    ngx_uint_t                  stale;

    /* the principal as PostgreSQL keeps it (pushjobs.principals) */
    ngx_pushjobs_pg_query_t    *stored_query;
    time_t                      stored_age;
    ngx_str_t                   stored_stale;   /* a key past its ttl */
    time_t                      stored_stale_age;
    unsigned                    stored_cleanup:1;
    unsigned                    from_store:1;

    ngx_uint_t                  sr_done;
    ngx_uint_t                  sr_status;
    ngx_msec_t                  sr_start;
    ngx_str_t                   sr_body;
    ngx_http_request_t         *sr;

    /* the one bound of every wait for the Chef server in this request */
    ngx_event_t                 chef_timer;
    ngx_msec_t                  chef_deadline;
    unsigned                    chef_armed:1;
    unsigned                    chef_timedout:1;

    ngx_str_t                   group;
    ngx_uint_t                  top;
    ngx_array_t                *pending;
    ngx_array_t                *seen;
} ngx_pushjobs_authz_t;


/*
 * Websocket frame reader (ngx_pushjobs_ws.c): a resumable parser fed with
 * whatever bytes arrived.  It assembles fragmented messages up to max_size
 * and hands out one complete message or control frame at a time.
 */

typedef struct {
    ngx_uint_t                  state;

    u_char                      header[14];
    size_t                      header_len;
    size_t                      header_need;

    ngx_uint_t                  opcode;        /* of the current frame */
    ngx_uint_t                  fin;
    u_char                      mask[4];
    ngx_uint_t                  mask_pos;
    uint64_t                    frame_left;

    ngx_uint_t                  msg_opcode;    /* of the message in progress */
    ngx_uint_t                  fragmented;
    u_char                     *buf;           /* ngx_alloc()ed, capped */
    size_t                      len;
    size_t                      size;

    u_char                      control[125];
    size_t                      control_len;

    size_t                      max_size;
    ngx_log_t                  *log;
} ngx_pushjobs_ws_reader_t;


typedef struct {
    ngx_uint_t                  opcode;        /* TEXT, BINARY, PING, ... */
    ngx_str_t                   payload;
    ngx_uint_t                  close_code;    /* on NGX_ERROR or CLOSE */
} ngx_pushjobs_ws_frame_t;


/*
 * A message for agents, framed once and shared by every agent it is sent to
 * (refcounted, ngx_alloc()ed).  data holds the websocket frame header
 * followed by the JSON payload; payload.data points into it.
 */

typedef struct {
    ngx_uint_t                  refs;
    size_t                      len;
    ngx_str_t                   payload;
    u_char                     *data;
} ngx_pushjobs_msg_t;


/* The output queue of a long-lived connection (ngx_pushjobs_out.c). */

typedef struct {
    ngx_pushjobs_out_link_t    *head;
    ngx_pushjobs_out_link_t   **tail;
    size_t                      sent;
    size_t                      bytes;
    /* the buffers of ngx_pushjobs_out_output() */
    ngx_chain_t                *free;
    ngx_chain_t                *busy;
} ngx_pushjobs_out_t;


/* PostgreSQL (ngx_pushjobs_pg.c). */

/*
 * Called once per query: with the result on success (freed by the caller
 * after the handler returns), or with NULL if the query could not be run
 * (no connection, connection lost, timeout).
 */
typedef void (*ngx_pushjobs_pg_handler_pt)(void *data, PGresult *res);
typedef void (*ngx_pushjobs_pg_notify_pt)(ngx_str_t *payload);
typedef void (*ngx_pushjobs_pg_connected_pt)(void);
/*
 * While the worker exits: called when nginx asks it to close its idle
 * connections ("now": worker_shutdown_timeout, everything at once) and
 * whenever a query is queued or completes.
 */
typedef void (*ngx_pushjobs_pg_exiting_pt)(ngx_uint_t now);


/* Whom to tell about the outcome of a batched write (ngx_pushjobs_store.c). */

typedef struct {
    ngx_pushjobs_agent_t       *agent;
    ngx_uint_t                  type;
    u_char                      job_id[NGX_PUSHJOBS_JOB_ID_LEN];
} ngx_pushjobs_store_item_t;


/*
 * The agent channel in layers: a session (ngx_pushjobs_session.c) speaks
 * the protocol with one agent through a transport, the websocket
 * (ngx_pushjobs_transport_ws.c) or long-poll requests
 * (ngx_pushjobs_transport_poll.c); what agents cause is written to
 * PostgreSQL by the store (ngx_pushjobs_store.c).
 *
 * A transport's state of one channel begins with an ngx_pushjobs_chan_t,
 * by which the session holds it.  The operations:
 *
 *   send   queues a message: NGX_OK; NGX_DECLINED if the agent reads too
 *          slowly (its queue is full), NGX_ERROR if it could not be queued,
 *          NGX_ABORT if the connection broke;
 *   close  ends the channel, the session detached already; code is the
 *          close code to tell the agent, 0 for none;
 *   tick   every ping interval: NGX_DECLINED (logged) if the agent is gone;
 *   free   the session's last reference is gone;
 *   resume the store has room for live output again: read what the
 *          agent sent since its channel was stalled (the session
 *          stalls a channel while the store's batch for what it sends is
 *          full, ngx_pushjobs_agent_stalled()).
 *
 * A transport tells its session what happens with ngx_pushjobs_agent_open(),
 * _receive(), _handle(), _close() and _gone().
 */

typedef struct {
    ngx_int_t                 (*send)(ngx_pushjobs_chan_t *ch,
                                      ngx_pushjobs_msg_t *msg);
    void                      (*close)(ngx_pushjobs_chan_t *ch,
                                       ngx_uint_t code);
    ngx_int_t                 (*tick)(ngx_pushjobs_chan_t *ch);
    void                      (*free)(ngx_pushjobs_chan_t *ch);
    void                      (*resume)(ngx_pushjobs_chan_t *ch);

    /* for the log, after "connected": "" or " by long-poll" */
    const char                 *via;
    /* how long a poll is held, told to the agent in the welcome; or 0 */
    ngx_msec_t                  poll_timeout;
} ngx_pushjobs_transport_t;


struct ngx_pushjobs_chan_s {
    const ngx_pushjobs_transport_t  *transport;
    ngx_pushjobs_agent_t            *agent;
};


#define NGX_PUSHJOBS_AGENT_JOBS        2

typedef struct {
    u_char                      id[NGX_PUSHJOBS_JOB_ID_LEN];
    ngx_uint_t                  state;
} ngx_pushjobs_agent_job_t;


/*
 * A commit, run or abort for an agent whose hello is not answered yet,
 * sent once it is (ngx_pushjobs_agent_hold()); at most
 * NGX_PUSHJOBS_AGENT_HELD per session.
 */

#define NGX_PUSHJOBS_AGENT_HELD        4

typedef struct {
    u_char                      id[NGX_PUSHJOBS_JOB_ID_LEN];
    ngx_uint_t                  kind;
    /* the commit message (a reference) */
    ngx_pushjobs_msg_t         *msg;
} ngx_pushjobs_agent_held_t;


/*
 * An agent's session, registered in its worker by org and node.  It
 * outlives its channel while batched writes still refer to it, so it is
 * reference counted.  Transports read its names and closed flag; the rest
 * is the session's.
 */

struct ngx_pushjobs_agent_s {
    ngx_rbtree_node_t           node;
    ngx_str_t                   org;
    ngx_str_t                   name;
    uint64_t                    session;
    ngx_log_t                  *log;

    ngx_pushjobs_chan_t        *chan;

    /* ticks the transport every ping interval */
    ngx_event_t                 ping;

    ngx_pushjobs_agent_job_t    jobs[NGX_PUSHJOBS_AGENT_JOBS];

    ngx_uint_t                  refs;

    /* in the store's queue of channels waiting for room for output */
    ngx_queue_t                 stall;

    /* the outputs call that stores its last chunk (its final report waits) */
    ngx_uint_t                  output_need;

    /* what the server would have sent before its hello was answered */
    ngx_pushjobs_agent_held_t  *held;
    ngx_uint_t                  nheld;

    unsigned                    closed:1;
    unsigned                    registered:1;
    /* it sent live output: its channel waits while the outputs batch is
     * full (and every channel while the inputs batch is) */
    unsigned                    streaming:1;
    unsigned                    stalled:1;
    /* PostgreSQL has answered its hello: commit, run and abort go out */
    unsigned                    hello_answered:1;
};


/*
 * Per-worker runtime state, its one owner: created in init_process, each
 * part in a fixed order, and released in exit_process in the reverse order
 * (ngx_pushjobs_module.c).  A part whose struct is private to its file is
 * a pointer to a type declared above.
 */

struct ngx_pushjobs_worker_s {
    ngx_cycle_t                *cycle;
    ngx_log_t                  *log;
    ngx_pushjobs_main_conf_t   *pmcf;

    ngx_str_t                   owner;

    /* the batched writes (ngx_pushjobs_store.c) */
    ngx_pushjobs_store_t       *store;

    /* the key of read-only links, once PostgreSQL gave it; id 0: none */
    u_char                      link_key[32];
    ngx_uint_t                  link_key_id;

    /* the front end's metrics and this worker's gauges in them */
    void                       *metrics;
    ngx_atomic_t               *metrics_slot;

    /* the PostgreSQL connections (ngx_pushjobs_pg.c) */
    ngx_pushjobs_pg_t          *pg;

    /* shared by the websocket channels (ngx_pushjobs_transport_ws.c) */
    u_char                     *ws_read_buf;
    ngx_pushjobs_msg_t         *ws_ping;

    /* the open event feeds (ngx_pushjobs_sse.c) */
    ngx_queue_t                 feeds;

    /* the agent sessions (ngx_pushjobs_session.c) */
    ngx_rbtree_t                agents;
    ngx_rbtree_node_t           agents_sentinel;
    ngx_uint_t                  nagents;
    /* and by hash, for lookups: NULL when there is no memory for it */
    ngx_pushjobs_agent_slot_t  *agent_slots;
    ngx_uint_t                  agent_nslots;    /* a power of 2 */
    ngx_uint_t                  agent_slots_used; /* sessions and gone */
    unsigned                    agent_slots_off:1;
    uint64_t                    next_session;
    /* the count of channels of each org, ngx_pushjobs_agent_org_t */
    ngx_array_t                 agent_orgs;

    ngx_event_t                 sweep_ev;
    ngx_event_t                 owner_ev;

    /* the exit: held while queries are outstanding, up to exit_deadline */
    ngx_event_t                 exit_ev;
    ngx_msec_t                  exit_deadline;
    unsigned                    exiting:1;
    unsigned                    exit_done:1;

    /* a sweep query is outstanding: the next sweep waits for it */
    unsigned                    sweeping:1;
};


/*
 * Metrics (ngx_pushjobs_metrics.c): counters, histograms and per-worker
 * gauges in shared memory, by number.
 */

#define NGX_PUSHJOBS_ROUTES            17  /* ngx_pushjobs_api.c's, and 0 */
#define NGX_PUSHJOBS_ROUTE_METRICS     13
#define NGX_PUSHJOBS_CLASSES           6   /* none, 1xx ... 5xx */
#define NGX_PUSHJOBS_CLOSE_CODES       12  /* none, 10 codes, other */
#define NGX_PUSHJOBS_BUCKETS           11  /* and +Inf */

#define NGX_PUSHJOBS_C_CHAN_OPENED     0   /* + 0 websocket, 1 long-poll */
#define NGX_PUSHJOBS_C_CHAN_CLOSED     2   /* + close code index */
#define NGX_PUSHJOBS_C_JOBS_STARTED    (NGX_PUSHJOBS_C_CHAN_CLOSED         \
                                        + NGX_PUSHJOBS_CLOSE_CODES)
#define NGX_PUSHJOBS_C_JOBS_ENDED      (NGX_PUSHJOBS_C_JOBS_STARTED + 1)
                                           /* + end status index */
#define NGX_PUSHJOBS_JOB_ENDS          6   /* 5 end statuses, other */
#define NGX_PUSHJOBS_C_NODES_ENDED     (NGX_PUSHJOBS_C_JOBS_ENDED          \
                                        + NGX_PUSHJOBS_JOB_ENDS)
                                           /* + node status index */
#define NGX_PUSHJOBS_NODE_ENDS         13  /* 12 node statuses, other */
#define NGX_PUSHJOBS_C_OUTPUT_BYTES    (NGX_PUSHJOBS_C_NODES_ENDED         \
                                        + NGX_PUSHJOBS_NODE_ENDS)
#define NGX_PUSHJOBS_C_OVERFLOW_FEED   (NGX_PUSHJOBS_C_OUTPUT_BYTES + 1)
#define NGX_PUSHJOBS_C_OVERFLOW_AGENT  (NGX_PUSHJOBS_C_OVERFLOW_FEED + 1)
#define NGX_PUSHJOBS_C_STALLS          (NGX_PUSHJOBS_C_OVERFLOW_AGENT + 1)
                                           /* + 0 output, 1 input */
#define NGX_PUSHJOBS_C_PG              (NGX_PUSHJOBS_C_STALLS + 2)
                                           /* + 0 ok, 1 error, 2 failed */
#define NGX_PUSHJOBS_C_KEY_HITS        (NGX_PUSHJOBS_C_PG + 3)
#define NGX_PUSHJOBS_C_KEY_MISSES      (NGX_PUSHJOBS_C_KEY_HITS + 1)
#define NGX_PUSHJOBS_C_KEY_EVICTIONS   (NGX_PUSHJOBS_C_KEY_MISSES + 1)
#define NGX_PUSHJOBS_C_KEY_STORED      (NGX_PUSHJOBS_C_KEY_EVICTIONS + 1)
#define NGX_PUSHJOBS_C_KEY_SPARED      (NGX_PUSHJOBS_C_KEY_STORED + 1)
#define NGX_PUSHJOBS_C_CHEF            (NGX_PUSHJOBS_C_KEY_SPARED + 1)
                                           /* + 0 ok, 1 error, 2 timeout */

#define NGX_PUSHJOBS_C_AGENT_MSG       (NGX_PUSHJOBS_C_CHEF + 3)
                                           /* + the session's message type */
#define NGX_PUSHJOBS_AGENT_MSG_TYPES   10
#define NGX_PUSHJOBS_C_HTTP            (NGX_PUSHJOBS_C_AGENT_MSG           \
                                        + NGX_PUSHJOBS_AGENT_MSG_TYPES)
                                           /* + route * CLASSES + class */
#define NGX_PUSHJOBS_C_N               (NGX_PUSHJOBS_C_HTTP                \
                                        + NGX_PUSHJOBS_ROUTES              \
                                          * NGX_PUSHJOBS_CLASSES)

#define NGX_PUSHJOBS_H_HTTP            0   /* + route */
#define NGX_PUSHJOBS_H_PG              NGX_PUSHJOBS_ROUTES
#define NGX_PUSHJOBS_H_CHEF            (NGX_PUSHJOBS_H_PG + 1)
#define NGX_PUSHJOBS_H_N               (NGX_PUSHJOBS_H_CHEF + 1)

#define NGX_PUSHJOBS_G_AGENTS_WS       0
#define NGX_PUSHJOBS_G_AGENTS_POLL     1
#define NGX_PUSHJOBS_G_FEEDS           2
#define NGX_PUSHJOBS_G_PG_BUSY         3
#define NGX_PUSHJOBS_G_PG_QUEUED       4
/* 1 while the worker's LISTEN connection is up */
#define NGX_PUSHJOBS_G_PG_LISTENING    5
#define NGX_PUSHJOBS_G_N               6


extern ngx_module_t            ngx_pushjobs_module;
extern ngx_pushjobs_worker_t  *ngx_pushjobs_worker;


/* ngx_pushjobs_module.c */
void ngx_pushjobs_init_timer(ngx_event_t *ev, ngx_event_handler_pt handler,
    void *data, ngx_log_t *log);
ngx_int_t ngx_pushjobs_unhex(u_char *dst, u_char *hex, size_t n);
ngx_int_t ngx_pushjobs_status_down(ngx_http_request_t *r);
ngx_table_elt_t *ngx_pushjobs_header_in(ngx_http_request_t *r, u_char *name,
    size_t len);
#define ngx_pushjobs_header(r, name)                                         \
    ngx_pushjobs_header_in(r, (u_char *) name, sizeof(name) - 1)

/* ngx_pushjobs_link.c */
void ngx_pushjobs_link_key_load(void);
ngx_int_t ngx_pushjobs_link_make(ngx_pool_t *pool, ngx_str_t *org,
    ngx_str_t *job, time_t expires, ngx_str_t *token);
ngx_int_t ngx_pushjobs_link_check(ngx_str_t *token, ngx_str_t *org,
    ngx_str_t *job, const char **err);
char *ngx_pushjobs_ui_conf(ngx_conf_t *cf, ngx_pushjobs_main_conf_t *pmcf);
ngx_int_t ngx_pushjobs_ui_send(ngx_http_request_t *r, ngx_str_t *name);

/* ngx_pushjobs_metrics.c */
typedef struct {
    ngx_http_request_t         *request;
    ngx_uint_t                  route;
    ngx_uint_t                  timed;
} ngx_pushjobs_metrics_req_t;

ngx_pushjobs_metrics_req_t *ngx_pushjobs_metrics_track(
    ngx_http_request_t *r);
ngx_int_t ngx_pushjobs_metrics_conf(ngx_conf_t *cf,
    ngx_pushjobs_main_conf_t *pmcf);
void ngx_pushjobs_metrics_init_process(ngx_pushjobs_worker_t *w);
void ngx_pushjobs_metrics_exit_process(ngx_pushjobs_worker_t *w);
void ngx_pushjobs_metrics_exiting(ngx_pushjobs_worker_t *w);
void ngx_pushjobs_metrics_job_ended(ngx_str_t *status, ngx_str_t *nodes);
void ngx_pushjobs_metrics_add(ngx_uint_t c, ngx_atomic_int_t n);
void ngx_pushjobs_metrics_observe(ngx_uint_t h, ngx_msec_int_t ms);
void ngx_pushjobs_metrics_gauge(ngx_uint_t g, ngx_atomic_int_t n,
    ngx_uint_t set);
ngx_uint_t ngx_pushjobs_metrics_close_code(ngx_uint_t code);
ngx_int_t ngx_pushjobs_metrics_handler(ngx_http_request_t *r);

/* ngx_pushjobs_json.c */
u_char *ngx_pushjobs_json_escape_copy(u_char *dst, u_char *src, size_t len);
size_t ngx_pushjobs_json_escape_len(u_char *src, size_t len);
ngx_int_t ngx_pushjobs_json_error(ngx_http_request_t *r, ngx_uint_t status,
    ngx_uint_t list, const char *fmt, ...);
ngx_int_t ngx_pushjobs_json_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body);
ngx_int_t ngx_pushjobs_send_body(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, ngx_str_t *body);
ngx_int_t ngx_pushjobs_api_version_header(ngx_http_request_t *r);
void *ngx_pushjobs_json_parse(u_char *data, size_t len, ngx_log_t *log);
void *ngx_pushjobs_json_parse_bounded(u_char *data, size_t len,
    const pj_json_limits_t *lim, ngx_log_t *log);
void *ngx_pushjobs_json_get(void *object, const char *key);
ngx_int_t ngx_pushjobs_json_string(void *value, ngx_str_t *out);
void ngx_pushjobs_json_free(void *value);

/* ngx_pushjobs_auth.c */
ngx_int_t ngx_pushjobs_auth_parse(ngx_http_request_t *r,
    ngx_pushjobs_auth_t *auth, time_t skew, ngx_str_t *err);
ngx_int_t ngx_pushjobs_auth_verify(ngx_http_request_t *r,
    ngx_pushjobs_auth_t *auth, ngx_str_t *body, EVP_PKEY *key);
ngx_int_t ngx_pushjobs_auth_sign(ngx_pool_t *pool, EVP_PKEY *key,
    ngx_str_t *user, ngx_str_t *method, ngx_str_t *path, ngx_str_t *body,
    ngx_array_t *headers);

/* ngx_pushjobs_keys.c */
ngx_int_t ngx_pushjobs_keys_init_zone(ngx_shm_zone_t *shm_zone, void *data);
ngx_int_t ngx_pushjobs_keys_lookup(ngx_http_request_t *r,
    ngx_shm_zone_t *zone, time_t ttl, ngx_uint_t stale, ngx_str_t *org,
    ngx_str_t *name, ngx_pushjobs_principals_t *out);
ngx_int_t ngx_pushjobs_keys_store(ngx_http_request_t *r, ngx_shm_zone_t *zone,
    ngx_str_t *org, ngx_str_t *name, ngx_str_t *response, ngx_uint_t status,
    time_t age, ngx_pushjobs_principals_t *out);
void ngx_pushjobs_keys_forget(ngx_shm_zone_t *zone, ngx_str_t *org,
    ngx_str_t *name);
EVP_PKEY *ngx_pushjobs_keys_pem(ngx_log_t *log, ngx_str_t *pem);

/* ngx_pushjobs_pg.c */
ngx_int_t ngx_pushjobs_pg_init(ngx_pushjobs_worker_t *w,
    ngx_pushjobs_pg_notify_pt notify, ngx_pushjobs_pg_connected_pt connected,
    ngx_pushjobs_pg_connected_pt regained, ngx_pushjobs_pg_exiting_pt exiting);
void ngx_pushjobs_pg_done(ngx_pushjobs_worker_t *w);
void ngx_pushjobs_pg_stop(void);
void ngx_pushjobs_pg_unlisten(void);
ngx_uint_t ngx_pushjobs_pg_busy(void);
ngx_pushjobs_pg_query_t *ngx_pushjobs_pg_query(const char *sql,
    ngx_uint_t nparams, ngx_str_t *params, ngx_pushjobs_pg_handler_pt handler,
    void *data);
ngx_pushjobs_pg_query_t *ngx_pushjobs_pg_barrier(const char *sql,
    ngx_uint_t nparams, ngx_str_t *params, ngx_pushjobs_pg_handler_pt handler,
    void *data);
void ngx_pushjobs_pg_cancel(ngx_pushjobs_pg_query_t *q);
ngx_uint_t ngx_pushjobs_pg_ok(void);

/* ngx_pushjobs_ws.c */
ngx_int_t ngx_pushjobs_ws_is_upgrade(ngx_http_request_t *r);
ngx_int_t ngx_pushjobs_ws_handshake(ngx_http_request_t *r);
void ngx_pushjobs_ws_reader_init(ngx_pushjobs_ws_reader_t *rd,
    size_t max_size, ngx_log_t *log);
ngx_int_t ngx_pushjobs_ws_read(ngx_pushjobs_ws_reader_t *rd, u_char **pos,
    u_char *last, ngx_pushjobs_ws_frame_t *frame);
void ngx_pushjobs_ws_reader_free(ngx_pushjobs_ws_reader_t *rd);
size_t ngx_pushjobs_ws_header(u_char *p, ngx_uint_t opcode, size_t len);
ngx_pushjobs_msg_t *ngx_pushjobs_msg_create(ngx_uint_t opcode, u_char *data,
    size_t len);
void ngx_pushjobs_msg_release(ngx_pushjobs_msg_t *msg);

/* ngx_pushjobs_out.c */
ngx_pushjobs_msg_t *ngx_pushjobs_msg_raw(size_t size, ngx_log_t *log);
void ngx_pushjobs_out_init(ngx_pushjobs_out_t *out);
ngx_int_t ngx_pushjobs_out_push(ngx_pushjobs_out_t *out,
    ngx_pushjobs_msg_t *msg, size_t max, ngx_log_t *log);
ngx_int_t ngx_pushjobs_out_flush(ngx_pushjobs_out_t *out,
    ngx_http_request_t *r);
ngx_int_t ngx_pushjobs_out_send(ngx_pushjobs_out_t *out, ngx_connection_t *c,
    ngx_msec_t send_timeout);
ngx_int_t ngx_pushjobs_out_output(ngx_pushjobs_out_t *out,
    ngx_http_request_t *r);
ngx_pushjobs_msg_t *ngx_pushjobs_out_pop(ngx_pushjobs_out_t *out);
void ngx_pushjobs_out_free(ngx_pushjobs_out_t *out);

/* ngx_pushjobs_api.c */
ngx_int_t ngx_pushjobs_api_handler(ngx_http_request_t *r);
ngx_int_t ngx_pushjobs_status_handler(ngx_http_request_t *r);

/* ngx_pushjobs_authz.c */
ngx_int_t ngx_pushjobs_authz_start(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx);
ngx_int_t ngx_pushjobs_authz_resume(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx);
ngx_uint_t ngx_pushjobs_authz_valid_name(ngx_str_t *name);

/* ngx_pushjobs_session.c */
ngx_int_t ngx_pushjobs_session_init(ngx_pushjobs_worker_t *w);
void ngx_pushjobs_session_done(ngx_pushjobs_worker_t *w);
ngx_pushjobs_agent_t *ngx_pushjobs_agent_create(ngx_str_t *org,
    ngx_str_t *node, ngx_log_t *log);
void ngx_pushjobs_agent_open(ngx_pushjobs_agent_t *a, ngx_pushjobs_chan_t *ch);
void ngx_pushjobs_agent_receive(ngx_pushjobs_agent_t *a, ngx_str_t *payload);
void ngx_pushjobs_agent_handle(ngx_pushjobs_agent_t *a, void *msg);
void ngx_pushjobs_agent_send(ngx_pushjobs_agent_t *a, ngx_pushjobs_msg_t *msg);
void ngx_pushjobs_agent_gone(ngx_pushjobs_agent_t *a);
ngx_pushjobs_agent_t *ngx_pushjobs_agent_find(ngx_str_t *org,
    ngx_str_t *node);
ngx_uint_t ngx_pushjobs_agent_org_count(ngx_str_t *org);
void ngx_pushjobs_agent_commit(ngx_pushjobs_agent_t *a, ngx_str_t *job_id,
    ngx_pushjobs_msg_t *msg);
void ngx_pushjobs_agent_run(ngx_pushjobs_agent_t *a, ngx_str_t *job_id);
void ngx_pushjobs_agent_abort(ngx_pushjobs_agent_t *a, ngx_str_t *job_id,
    ngx_uint_t force);
void ngx_pushjobs_agent_kick(ngx_str_t *session, ngx_str_t *org,
    ngx_str_t *node);
void ngx_pushjobs_agent_ref(ngx_pushjobs_agent_t *a);
void ngx_pushjobs_agent_unref(ngx_pushjobs_agent_t *a);
ngx_uint_t ngx_pushjobs_agent_stalled(ngx_pushjobs_agent_t *a);
ngx_int_t ngx_pushjobs_agent_read_off(ngx_connection_t *c);
ngx_uint_t ngx_pushjobs_token(ngx_str_t *s, ngx_str_t *token);
void ngx_pushjobs_agent_resume(ngx_pushjobs_agent_t *a);
void ngx_pushjobs_agent_input_done(ngx_pushjobs_store_item_t *item,
    ngx_uint_t rehab);
void ngx_pushjobs_agent_hello_answered(ngx_pushjobs_store_item_t *item);
void ngx_pushjobs_agent_hello_release(ngx_pushjobs_store_item_t *item);
void ngx_pushjobs_agent_hello_done(ngx_pushjobs_store_item_t *item,
    ngx_str_t *job_id, ngx_str_t *action, ngx_str_t *message);
void ngx_pushjobs_agent_republish(void);
void ngx_pushjobs_agent_close(ngx_pushjobs_agent_t *a, ngx_uint_t code);

/* ngx_pushjobs_transport_ws.c */
ngx_int_t ngx_pushjobs_agent_accept(ngx_http_request_t *r, ngx_str_t *org,
    ngx_str_t *node);
ngx_int_t ngx_pushjobs_ws_chan_init(ngx_pushjobs_worker_t *w);
void ngx_pushjobs_ws_chan_done(ngx_pushjobs_worker_t *w);

/* ngx_pushjobs_transport_poll.c */
ngx_int_t ngx_pushjobs_poll_handler(ngx_http_request_t *r, ngx_str_t *org,
    ngx_str_t *node, ngx_str_t *body);

/* ngx_pushjobs_sse.c */
void ngx_pushjobs_feed_init(ngx_pushjobs_worker_t *w);
void ngx_pushjobs_feed_done(ngx_pushjobs_worker_t *w);
ngx_int_t ngx_pushjobs_feed_open(ngx_http_request_t *r, ngx_str_t *org,
    ngx_str_t *job, PGresult *res);
void ngx_pushjobs_feed_notify(ngx_str_t *org, ngx_str_t *job);
void ngx_pushjobs_feed_catch_up(void);

/* ngx_pushjobs_job.c */
void ngx_pushjobs_job_notify(ngx_str_t *payload);
void ngx_pushjobs_job_connected(void);
void ngx_pushjobs_job_sweep(ngx_event_t *ev);

/* ngx_pushjobs_store.c */
ngx_int_t ngx_pushjobs_store_init(ngx_pushjobs_worker_t *w);
void ngx_pushjobs_store_done(ngx_pushjobs_worker_t *w);
void ngx_pushjobs_store_flush(void);
void ngx_pushjobs_store_presence(ngx_str_t *org, ngx_str_t *node,
    uint64_t session, ngx_uint_t state);
ngx_int_t ngx_pushjobs_store_input(ngx_pushjobs_store_item_t *item,
    ngx_str_t *json, ngx_uint_t final);
ngx_int_t ngx_pushjobs_store_output(ngx_pushjobs_agent_t *a, ngx_str_t *json);
ngx_uint_t ngx_pushjobs_store_stall(ngx_pushjobs_agent_t *a);
ngx_int_t ngx_pushjobs_store_hello(ngx_pushjobs_store_item_t *item,
    ngx_str_t *json);
u_char *ngx_pushjobs_store_json_name(u_char *p, ngx_str_t *s);
void ngx_pushjobs_store_owner_beat(ngx_event_t *ev);
void ngx_pushjobs_store_owner_regained(void);


#endif /* _NGX_PUSHJOBS_MODULE_H_INCLUDED_ */
