/*
 * Copyright (C) pushjobs developers
 */


/*
 * Agent sessions: the per-worker registry of connected agents, what each
 * channel knows of its agent's jobs, and the server side of the protocol
 * (docs/protocol.md): the welcome, the agent's messages (hello, answers to
 * commit and run, final reports) handed to the store, commit, run and abort
 * sent to the agent, and the outcomes of the store's writes.
 *
 * A session reaches its agent through its channel's transport
 * (ngx_pushjobs_transport_ws.c, ngx_pushjobs_transport_poll.c), which
 * hands it the agent's messages and tells it when the channel is gone; a
 * session knows nothing of how.  It is reference counted: batched writes
 * still refer to it after its channel closed.
 */


#include "ngx_pushjobs_module.h"

#include <yajl/yajl_tree.h>


#define NGX_PUSHJOBS_HELLO_JOBS_MAX    16

#define NGX_PUSHJOBS_JOB_FREE          0
#define NGX_PUSHJOBS_JOB_COMMIT_SENT   1
#define NGX_PUSHJOBS_JOB_COMMITTED     2
#define NGX_PUSHJOBS_JOB_RUN_SENT      3
#define NGX_PUSHJOBS_JOB_RUNNING       4
#define NGX_PUSHJOBS_JOB_ABORT_SENT    5
/* refused by the agent (nack_commit) on this channel: never offered again */
#define NGX_PUSHJOBS_JOB_REFUSED       6

/* what a session holds until its hello is answered */
#define NGX_PUSHJOBS_HELD_COMMIT       0
#define NGX_PUSHJOBS_HELD_RUN          1
#define NGX_PUSHJOBS_HELD_ABORT        2
#define NGX_PUSHJOBS_HELD_FORCE        3

/* message types, as the agent names them */
#define NGX_PUSHJOBS_MSG_UNKNOWN       0
#define NGX_PUSHJOBS_MSG_HELLO         1
#define NGX_PUSHJOBS_MSG_ACK_COMMIT    2
#define NGX_PUSHJOBS_MSG_NACK_COMMIT   3
#define NGX_PUSHJOBS_MSG_ACK_RUN       4
#define NGX_PUSHJOBS_MSG_NACK_RUN      5
#define NGX_PUSHJOBS_MSG_SUCCEEDED     6
#define NGX_PUSHJOBS_MSG_FAILED        7
#define NGX_PUSHJOBS_MSG_ABORTED       8
#define NGX_PUSHJOBS_MSG_OUTPUT        9
/* (NGX_PUSHJOBS_AGENT_MSG_TYPES, and their names in ngx_pushjobs_metrics.c) */


typedef struct {
    ngx_str_t                   org;
    ngx_uint_t                  count;
} ngx_pushjobs_agent_org_t;


typedef struct {
    const char                 *name;
    ngx_uint_t                  type;
} ngx_pushjobs_agent_type_t;


/* the smallest table of sessions by hash (slots, a power of 2) */
#define NGX_PUSHJOBS_AGENT_SLOTS_MIN  16

/* a slot whose session is gone: a lookup goes on past it */
static u_char  ngx_pushjobs_agent_slot_gone;
#define NGX_PUSHJOBS_AGENT_GONE                                               \
    ((ngx_pushjobs_agent_t *) (void *) &ngx_pushjobs_agent_slot_gone)


static void ngx_pushjobs_agent_register(ngx_pushjobs_agent_t *a);
static void ngx_pushjobs_agent_unregister(ngx_pushjobs_agent_t *a);
static void ngx_pushjobs_agent_org_add(ngx_str_t *org, ngx_int_t n);
static void ngx_pushjobs_agent_detach(ngx_pushjobs_agent_t *a);
static void ngx_pushjobs_agent_tick(ngx_event_t *ev);
static void ngx_pushjobs_agent_send_text(ngx_pushjobs_agent_t *a,
    u_char *data, size_t len);
static void ngx_pushjobs_agent_send_job(ngx_pushjobs_agent_t *a,
    const char *type, u_char *job_id, const char *extra);
static void ngx_pushjobs_agent_welcome(ngx_pushjobs_agent_t *a);
static void ngx_pushjobs_agent_dispatch(ngx_pushjobs_agent_t *a,
    yajl_val msg);
static void ngx_pushjobs_agent_hello(ngx_pushjobs_agent_t *a, void *msg);
static ngx_uint_t ngx_pushjobs_agent_hold(ngx_pushjobs_agent_t *a,
    ngx_uint_t kind, ngx_str_t *job_id, ngx_pushjobs_msg_t *msg);
static void ngx_pushjobs_agent_held_free(ngx_pushjobs_agent_t *a);
static void ngx_pushjobs_agent_input(ngx_pushjobs_agent_t *a,
    ngx_uint_t type, ngx_str_t *job_id, void *msg);
static size_t ngx_pushjobs_agent_output_bytes(void *value, size_t len);
static void ngx_pushjobs_agent_chunk(ngx_pushjobs_agent_t *a,
    ngx_str_t *job_id, void *msg);
static size_t ngx_pushjobs_agent_output(void *value, size_t cap,
    ngx_uint_t *truncated);
static int64_t ngx_pushjobs_agent_offset(void *msg, char *name);
static ngx_pushjobs_agent_job_t *ngx_pushjobs_agent_job(
    ngx_pushjobs_agent_t *a, u_char *job_id, ngx_uint_t create);
static ngx_uint_t ngx_pushjobs_agent_hash(ngx_str_t *org, ngx_str_t *name);
static void ngx_pushjobs_agent_slot_add(ngx_pushjobs_worker_t *w,
    ngx_pushjobs_agent_t *a);
static void ngx_pushjobs_agent_slot_del(ngx_pushjobs_worker_t *w,
    ngx_pushjobs_agent_t *a);
static ngx_int_t ngx_pushjobs_agent_slots_resize(ngx_pushjobs_worker_t *w,
    ngx_uint_t live);
static void ngx_pushjobs_agent_slots_off(ngx_pushjobs_worker_t *w);


static ngx_pushjobs_agent_type_t  ngx_pushjobs_agent_types[] = {
    { "hello",        NGX_PUSHJOBS_MSG_HELLO },
    { "ack_commit",   NGX_PUSHJOBS_MSG_ACK_COMMIT },
    { "nack_commit",  NGX_PUSHJOBS_MSG_NACK_COMMIT },
    { "ack_run",      NGX_PUSHJOBS_MSG_ACK_RUN },
    { "nack_run",     NGX_PUSHJOBS_MSG_NACK_RUN },
    { "succeeded",    NGX_PUSHJOBS_MSG_SUCCEEDED },
    { "failed",       NGX_PUSHJOBS_MSG_FAILED },
    { "aborted",      NGX_PUSHJOBS_MSG_ABORTED },
    { "output",       NGX_PUSHJOBS_MSG_OUTPUT },
    { NULL, 0 }
};


/* The worker's registry of sessions, empty. */

ngx_int_t
ngx_pushjobs_session_init(ngx_pushjobs_worker_t *w)
{
    ngx_rbtree_init(&w->agents, &w->agents_sentinel, ngx_rbtree_insert_value);

    return ngx_array_init(&w->agent_orgs, w->cycle->pool, 4,
                          sizeof(ngx_pushjobs_agent_org_t));
}


/*
 * A session with its names and one reference, the channel's, dropped by
 * its close; not registered until ngx_pushjobs_agent_open().
 */

ngx_pushjobs_agent_t *
ngx_pushjobs_agent_create(ngx_str_t *org, ngx_str_t *node, ngx_log_t *log)
{
    u_char                *p;
    ngx_pushjobs_agent_t  *a;

    if (ngx_pushjobs_worker == NULL || org->len > NGX_PUSHJOBS_NAME_MAX
        || node->len > NGX_PUSHJOBS_NAME_MAX)
    {
        return NULL;
    }

    a = ngx_alloc(sizeof(ngx_pushjobs_agent_t) + org->len + node->len, log);
    if (a == NULL) {
        return NULL;
    }

    ngx_memzero(a, sizeof(ngx_pushjobs_agent_t));

    p = (u_char *) a + sizeof(ngx_pushjobs_agent_t);
    a->org.data = p;
    a->org.len = org->len;
    p = ngx_cpymem(p, org->data, org->len);
    a->name.data = p;
    a->name.len = node->len;
    ngx_memcpy(p, node->data, node->len);

    a->log = log;
    a->refs = 1;

    return a;
}


/*
 * The channel is open: the session is registered (an older channel of the
 * node is closed), the node goes online and the agent is welcomed.  The
 * welcome may close the channel: the caller holds a reference.
 */

void
ngx_pushjobs_agent_open(ngx_pushjobs_agent_t *a, ngx_pushjobs_chan_t *ch)
{
    ngx_pushjobs_worker_t  *w;

    w = ngx_pushjobs_worker;

    a->chan = ch;
    a->session = ++w->next_session;

    ngx_pushjobs_init_timer(&a->ping, ngx_pushjobs_agent_tick, a, a->log);

    ngx_pushjobs_agent_register(a);

    ngx_pushjobs_store_presence(&a->org, &a->name, a->session,
                                NGX_PUSHJOBS_PRESENCE_ONLINE);

    ngx_log_error(NGX_LOG_INFO, a->log, 0,
                  "pushjobs: agent \"%V\" of \"%V\" connected%s, session %uL",
                  &a->name, &a->org, ch->transport->via, a->session);

    ngx_pushjobs_agent_welcome(a);

    if (!a->closed) {
        ngx_add_timer(&a->ping, w->pmcf->ping_interval);
    }
}


/* A message of the agent as a websocket frame carries it: JSON text. */

void
ngx_pushjobs_agent_receive(ngx_pushjobs_agent_t *a, ngx_str_t *payload)
{
    yajl_val  msg;

    if (a->closed) {
        return;
    }

    msg = ngx_pushjobs_json_parse_bounded(payload->data, payload->len,
                                          &pj_json_agent_message, a->log);

    if (msg == NULL || !YAJL_IS_OBJECT(msg)) {
        ngx_log_error(NGX_LOG_INFO, a->log, 0,
                      "pushjobs: agent \"%V\" of \"%V\" sent a frame that "
                      "is not a JSON object", &a->name, &a->org);
        ngx_pushjobs_json_free(msg);
        ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_INVALID);
        return;
    }

    ngx_pushjobs_agent_dispatch(a, msg);

    ngx_pushjobs_json_free(msg);
}


/* A message of the agent already parsed, a JSON object (yajl_val). */

void
ngx_pushjobs_agent_handle(ngx_pushjobs_agent_t *a, void *msg)
{
    if (a->closed) {
        return;
    }

    ngx_pushjobs_agent_dispatch(a, msg);
}


/* The session of this org's node? (The hashes are compared first.) */

static ngx_inline ngx_uint_t
ngx_pushjobs_agent_is(ngx_pushjobs_agent_t *a, ngx_str_t *org,
    ngx_str_t *node)
{
    return a->org.len == org->len && a->name.len == node->len
           && ngx_memcmp(a->org.data, org->data, org->len) == 0
           && ngx_memcmp(a->name.data, node->data, node->len) == 0;
}


ngx_pushjobs_agent_t *
ngx_pushjobs_agent_find(ngx_str_t *org, ngx_str_t *node)
{
    ngx_uint_t                  hash, i, mask;
    ngx_rbtree_node_t          *n, *sentinel;
    ngx_pushjobs_agent_t       *a;
    ngx_pushjobs_worker_t      *w;
    ngx_pushjobs_agent_slot_t  *slot;

    w = ngx_pushjobs_worker;
    if (w == NULL) {
        return NULL;
    }

    hash = ngx_pushjobs_agent_hash(org, node);

    if (w->agent_slots) {
        mask = w->agent_nslots - 1;

        for (i = hash & mask; /* void */ ; i = (i + 1) & mask) {
            slot = &w->agent_slots[i];
            a = slot->agent;

            if (a == NULL) {
                return NULL;
            }

            if (slot->hash == hash && a != NGX_PUSHJOBS_AGENT_GONE
                && ngx_pushjobs_agent_is(a, org, node))
            {
                return a;
            }
        }
    }

    /* no table (no memory for it): the rbtree */

    n = w->agents.root;
    sentinel = w->agents.sentinel;

    while (n != sentinel) {

        if (hash < n->key) {
            n = n->left;
            continue;
        }

        if (hash > n->key) {
            n = n->right;
            continue;
        }

        /* equal keys go right (ngx_rbtree_insert_value) */

        a = (ngx_pushjobs_agent_t *) n;

        if (ngx_pushjobs_agent_is(a, org, node)) {
            return a;
        }

        n = n->right;
    }

    return NULL;
}


/*
 * The sessions by hash: open addressing with linear probing over (hash,
 * session) pairs, at most 3/4 used (sessions and the marks of gone ones).
 * A lookup reads a slot or two where the rbtree's walk read a session per
 * level, a cache miss each: a job's commit and run go out by looking up
 * each of its nodes in every worker, 8 x 100,000 lookups a message at
 * 100k, and the walk was 13 % of nginx's time during such a job
 * (bench/README).  The rbtree stays, to walk the sessions; without memory
 * for a larger table, lookups go back to it for the worker's life.
 */

static void
ngx_pushjobs_agent_slot_add(ngx_pushjobs_worker_t *w, ngx_pushjobs_agent_t *a)
{
    ngx_uint_t                  i, mask;
    ngx_pushjobs_agent_slot_t  *slot;

    if (w->agent_slots_off) {
        return;
    }

    if ((w->agent_slots_used + 1) * 4 > w->agent_nslots * 3
        && ngx_pushjobs_agent_slots_resize(w, w->nagents + 1) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_WARN, a->log, 0,
                      "pushjobs: no memory for the table of %ui agents, "
                      "looking them up in the tree", w->nagents + 1);

        ngx_pushjobs_agent_slots_off(w);
        return;
    }

    mask = w->agent_nslots - 1;

    for (i = a->node.key & mask; /* void */ ; i = (i + 1) & mask) {
        slot = &w->agent_slots[i];

        if (slot->agent == NULL) {
            w->agent_slots_used++;
            break;
        }

        if (slot->agent == NGX_PUSHJOBS_AGENT_GONE) {
            break;
        }
    }

    slot->hash = (uint32_t) a->node.key;
    slot->agent = a;
}


static void
ngx_pushjobs_agent_slot_del(ngx_pushjobs_worker_t *w, ngx_pushjobs_agent_t *a)
{
    ngx_uint_t                  i, mask;
    ngx_pushjobs_agent_slot_t  *slot;

    if (w->agent_slots == NULL) {
        return;
    }

    mask = w->agent_nslots - 1;

    for (i = a->node.key & mask; /* void */ ; i = (i + 1) & mask) {
        slot = &w->agent_slots[i];

        if (slot->agent == NULL) {
            return;
        }

        if (slot->agent == a) {
            /* marked, not emptied: later ones of its run stay found */
            slot->agent = NGX_PUSHJOBS_AGENT_GONE;
            return;
        }
    }
}


/* No table any more: lookups walk the rbtree for the worker's life. */

static void
ngx_pushjobs_agent_slots_off(ngx_pushjobs_worker_t *w)
{
    if (w->agent_slots) {
        ngx_free(w->agent_slots);
    }

    w->agent_slots = NULL;
    w->agent_nslots = 0;
    w->agent_slots_used = 0;
    w->agent_slots_off = 1;
}


/* A new table for the live sessions, at most half full; the gone dropped. */

static ngx_int_t
ngx_pushjobs_agent_slots_resize(ngx_pushjobs_worker_t *w, ngx_uint_t live)
{
    ngx_uint_t                  i, j, n, mask, used;
    ngx_pushjobs_agent_t       *a;
    ngx_pushjobs_agent_slot_t  *old, *slots;

    n = NGX_PUSHJOBS_AGENT_SLOTS_MIN;

    while (n < live * 2) {
        n *= 2;
    }

    slots = ngx_calloc(n * sizeof(ngx_pushjobs_agent_slot_t),
                       ngx_cycle->log);
    if (slots == NULL) {
        return NGX_ERROR;
    }

    old = w->agent_slots;
    mask = n - 1;
    used = 0;

    for (i = 0; i < w->agent_nslots; i++) {
        a = old[i].agent;

        if (a == NULL || a == NGX_PUSHJOBS_AGENT_GONE) {
            continue;
        }

        for (j = old[i].hash & mask; slots[j].agent; j = (j + 1) & mask) {
            /* void */
        }

        slots[j] = old[i];
        used++;
    }

    if (old) {
        ngx_free(old);
    }

    w->agent_slots = slots;
    w->agent_nslots = n;
    w->agent_slots_used = used;

    return NGX_OK;
}


ngx_uint_t
ngx_pushjobs_agent_org_count(ngx_str_t *org)
{
    ngx_uint_t                 i;
    ngx_pushjobs_worker_t     *w;
    ngx_pushjobs_agent_org_t  *o;

    w = ngx_pushjobs_worker;
    if (w == NULL) {
        return 0;
    }

    o = w->agent_orgs.elts;

    for (i = 0; i < w->agent_orgs.nelts; i++) {
        if (o[i].org.len == org->len
            && ngx_memcmp(o[i].org.data, org->data, org->len) == 0)
        {
            return o[i].count;
        }
    }

    return 0;
}


void
ngx_pushjobs_agent_commit(ngx_pushjobs_agent_t *a, ngx_str_t *job_id,
    ngx_pushjobs_msg_t *msg)
{
    ngx_pushjobs_agent_job_t  *j;

    if (a->closed || job_id->len != NGX_PUSHJOBS_JOB_ID_LEN
        || ngx_pushjobs_agent_hold(a, NGX_PUSHJOBS_HELD_COMMIT, job_id, msg))
    {
        return;
    }

    j = ngx_pushjobs_agent_job(a, job_id->data, 1);

    if (j == NULL || j->state != NGX_PUSHJOBS_JOB_FREE) {
        /* already offered on this channel */
        return;
    }

    ngx_memcpy(j->id, job_id->data, NGX_PUSHJOBS_JOB_ID_LEN);
    j->state = NGX_PUSHJOBS_JOB_COMMIT_SENT;

    ngx_pushjobs_agent_send(a, msg);
}


void
ngx_pushjobs_agent_run(ngx_pushjobs_agent_t *a, ngx_str_t *job_id)
{
    ngx_pushjobs_agent_job_t  *j;

    if (a->closed || job_id->len != NGX_PUSHJOBS_JOB_ID_LEN
        || ngx_pushjobs_agent_hold(a, NGX_PUSHJOBS_HELD_RUN, job_id, NULL))
    {
        return;
    }

    j = ngx_pushjobs_agent_job(a, job_id->data, 0);

    if (j == NULL
        || (j->state != NGX_PUSHJOBS_JOB_COMMIT_SENT
            && j->state != NGX_PUSHJOBS_JOB_COMMITTED))
    {
        return;
    }

    j->state = NGX_PUSHJOBS_JOB_RUN_SENT;

    ngx_pushjobs_agent_send_job(a, "run", job_id->data, NULL);
}


void
ngx_pushjobs_agent_abort(ngx_pushjobs_agent_t *a, ngx_str_t *job_id,
    ngx_uint_t force)
{
    ngx_pushjobs_agent_job_t  *j;

    if (a->closed || job_id->len != NGX_PUSHJOBS_JOB_ID_LEN
        || ngx_pushjobs_agent_hold(a, force ? NGX_PUSHJOBS_HELD_FORCE
                                            : NGX_PUSHJOBS_HELD_ABORT,
                                   job_id, NULL))
    {
        return;
    }

    j = ngx_pushjobs_agent_job(a, job_id->data, 0);

    if (j == NULL || j->state == NGX_PUSHJOBS_JOB_REFUSED
        || (j->state == NGX_PUSHJOBS_JOB_ABORT_SENT && !force))
    {
        return;
    }

    j->state = NGX_PUSHJOBS_JOB_ABORT_SENT;

    ngx_pushjobs_agent_send_job(a, "abort", job_id->data,
                                force ? ",\"force\":true" : ",\"force\":false");
}


void
ngx_pushjobs_agent_kick(ngx_str_t *session, ngx_str_t *org, ngx_str_t *node)
{
    uint64_t               s;
    ngx_uint_t             i;
    ngx_pushjobs_agent_t  *a;

    a = ngx_pushjobs_agent_find(org, node);
    if (a == NULL) {
        return;
    }

    s = 0;

    for (i = 0; i < session->len; i++) {
        if (session->data[i] < '0' || session->data[i] > '9') {
            return;
        }

        s = s * 10 + (session->data[i] - '0');
    }

    if (a->session != s) {
        return;
    }

    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "pushjobs: agent \"%V\" of \"%V\" reconnected elsewhere, "
                  "closing session %uL", &a->name, &a->org, a->session);

    ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_REPLACED);
}


void
ngx_pushjobs_agent_ref(ngx_pushjobs_agent_t *a)
{
    a->refs++;
}


void
ngx_pushjobs_agent_unref(ngx_pushjobs_agent_t *a)
{
    if (--a->refs == 0) {
        ngx_pushjobs_agent_held_free(a);

        if (a->chan) {
            a->chan->transport->free(a->chan);
        }

        ngx_free(a);
    }
}


/*
 * Whether the agent's channel must stop reading for now: the store's batch
 * for what it sends is full (ngx_pushjobs_store_stall()), live output for
 * an agent that streams, anything else for every agent.  The store resumes
 * the channel (ngx_pushjobs_agent_resume()) once the batch has room; until
 * then what the agent sends waits in its socket, the agent's own queue
 * fills, and the agent stops reading its job's pipes (docs/protocol.md
 * §2.1): back-pressure down to the command, where dropping a chunk would
 * lose the rest of the node's stream.
 */

ngx_uint_t
ngx_pushjobs_agent_stalled(ngx_pushjobs_agent_t *a)
{
    if (a->closed) {
        return 0;
    }

    return ngx_pushjobs_store_stall(a);
}


/*
 * A stalled channel's read event off until it is resumed: a
 * level-triggered event method would report the waiting bytes again and
 * again meanwhile (an edge-triggered one reports them once: nothing to do).
 */

ngx_int_t
ngx_pushjobs_agent_read_off(ngx_connection_t *c)
{
    if ((ngx_event_flags & NGX_USE_LEVEL_EVENT) && c->read->active) {
        return ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    return NGX_OK;
}


/* The store has room again (or its worker leaves): the channel reads on. */

void
ngx_pushjobs_agent_resume(ngx_pushjobs_agent_t *a)
{
    a->stalled = 0;

    if (!a->closed && a->chan && a->chan->transport->resume) {
        a->chan->transport->resume(a->chan);
    }
}


/*
 * The outcome of one batched input: a final report is acked, or, on rehab
 * (a short report whose streamed bytes are not all stored), asked for
 * whole; another input's rehab aborts the job on the agent.
 */

void
ngx_pushjobs_agent_input_done(ngx_pushjobs_store_item_t *item,
    ngx_uint_t rehab)
{
    ngx_str_t                  id;
    ngx_pushjobs_agent_t      *a;
    ngx_pushjobs_agent_job_t  *j;

    a = item->agent;

    if (a == NULL || a->closed) {
        return;
    }

    if (item->type == NGX_PUSHJOBS_MSG_SUCCEEDED
        || item->type == NGX_PUSHJOBS_MSG_FAILED
        || item->type == NGX_PUSHJOBS_MSG_ABORTED)
    {
        if (rehab) {
            ngx_log_error(NGX_LOG_INFO, a->log, 0,
                          "pushjobs: agent \"%V\" of \"%V\" asked for its "
                          "whole report of job %*s: a chunk it streamed is "
                          "not stored", &a->name, &a->org,
                          (size_t) NGX_PUSHJOBS_JOB_ID_LEN, item->job_id);
        }

        ngx_pushjobs_agent_send_job(a, rehab ? "resend" : "ack",
                                    item->job_id, NULL);
        return;
    }

    if (rehab) {
        id.data = item->job_id;
        id.len = NGX_PUSHJOBS_JOB_ID_LEN;

        /*
         * The agent may hold the job even if this channel never offered
         * it, or has already let go of it (a nack, a final report).
         */

        j = ngx_pushjobs_agent_job(a, item->job_id, 1);
        if (j && (j->state == NGX_PUSHJOBS_JOB_FREE
                  || j->state == NGX_PUSHJOBS_JOB_REFUSED))
        {
            j->state = NGX_PUSHJOBS_JOB_COMMITTED;
        }

        ngx_pushjobs_agent_abort(a, &id, 0);
    }
}


/*
 * A session sends no commit, run or abort before PostgreSQL has answered
 * its hello (the channel's first message): the agent answers what it is
 * sent (ack_commit, ack_run), its answers go through the inputs batch and
 * its hello through the hellos batch, and an answer stored first made the
 * hello, which listed no such job, look like a node that lost its job
 * ("down": crashed).  What comes meanwhile is held, and sent after the
 * hello's own answers (the per-job state below drops what they made
 * redundant).  A session holds a few; one that would hold more (an agent
 * that sends no hello) is closed: its next channel starts over with a
 * hello.
 */

static ngx_uint_t
ngx_pushjobs_agent_hold(ngx_pushjobs_agent_t *a, ngx_uint_t kind,
    ngx_str_t *job_id, ngx_pushjobs_msg_t *msg)
{
    ngx_uint_t                  i;
    ngx_pushjobs_agent_held_t  *h;

    if (a->hello_answered) {
        return 0;
    }

    h = a->held;

    for (i = 0; i < a->nheld; i++) {
        if (ngx_memcmp(h[i].id, job_id->data, NGX_PUSHJOBS_JOB_ID_LEN) == 0
            && (h[i].kind == kind
                || (h[i].kind >= NGX_PUSHJOBS_HELD_ABORT
                    && kind >= NGX_PUSHJOBS_HELD_ABORT)))
        {
            /* a forced abort stays forced */
            h[i].kind = ngx_max(h[i].kind, kind);
            return 1;
        }
    }

    if (h == NULL) {
        h = ngx_alloc(NGX_PUSHJOBS_AGENT_HELD
                      * sizeof(ngx_pushjobs_agent_held_t), a->log);
        if (h == NULL) {
            ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_SERVER_ERROR);
            return 1;
        }

        a->held = h;
    }

    if (a->nheld == NGX_PUSHJOBS_AGENT_HELD) {
        ngx_log_error(NGX_LOG_INFO, a->log, 0,
                      "pushjobs: agent \"%V\" of \"%V\" has not said hello "
                      "and has %d messages waiting, closing",
                      &a->name, &a->org, NGX_PUSHJOBS_AGENT_HELD);
        ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_GOING_AWAY);
        return 1;
    }

    h = &h[a->nheld++];
    ngx_memcpy(h->id, job_id->data, NGX_PUSHJOBS_JOB_ID_LEN);
    h->kind = kind;
    h->msg = msg;

    if (msg) {
        msg->refs++;
    }

    return 1;
}


/* The hello is answered: its own answers follow (hello_done()). */

void
ngx_pushjobs_agent_hello_answered(ngx_pushjobs_store_item_t *item)
{
    if (item->agent) {
        item->agent->hello_answered = 1;
    }
}


/*
 * After the hello's own answers: what was held goes, in the order it came.
 * Nothing is held any more once the hello is answered, and the reference
 * keeps the array (held_free() runs at the last unref) while what is sent
 * closes the session.
 */

void
ngx_pushjobs_agent_hello_release(ngx_pushjobs_store_item_t *item)
{
    ngx_str_t                   id;
    ngx_uint_t                  i;
    ngx_pushjobs_agent_t       *a;
    ngx_pushjobs_agent_held_t  *h;

    a = item->agent;

    if (a == NULL || a->held == NULL) {
        return;
    }

    ngx_pushjobs_agent_ref(a);

    h = a->held;

    for (i = 0; i < a->nheld; i++) {
        id.data = h[i].id;
        id.len = NGX_PUSHJOBS_JOB_ID_LEN;

        switch (h[i].kind) {

        case NGX_PUSHJOBS_HELD_COMMIT:
            ngx_pushjobs_agent_commit(a, &id, h[i].msg);
            break;

        case NGX_PUSHJOBS_HELD_RUN:
            ngx_pushjobs_agent_run(a, &id);
            break;

        default:
            ngx_pushjobs_agent_abort(a, &id,
                                     h[i].kind == NGX_PUSHJOBS_HELD_FORCE);
            break;
        }
    }

    ngx_pushjobs_agent_held_free(a);

    ngx_pushjobs_agent_unref(a);
}


static void
ngx_pushjobs_agent_held_free(ngx_pushjobs_agent_t *a)
{
    ngx_uint_t  i;

    for (i = 0; i < a->nheld; i++) {
        ngx_pushjobs_msg_release(a->held[i].msg);
    }

    if (a->held) {
        ngx_free(a->held);
    }

    a->held = NULL;
    a->nheld = 0;
}


void
ngx_pushjobs_agent_hello_done(ngx_pushjobs_store_item_t *item,
    ngx_str_t *job_id, ngx_str_t *action, ngx_str_t *message)
{
    ngx_pushjobs_msg_t        *msg;
    ngx_pushjobs_agent_t      *a;
    ngx_pushjobs_agent_job_t  *j;

    a = item->agent;

    if (a == NULL || a->closed || job_id->len != NGX_PUSHJOBS_JOB_ID_LEN) {
        return;
    }

    if (action->len == 6 && ngx_strncmp(action->data, "commit", 6) == 0) {
        msg = ngx_pushjobs_msg_create(NGX_PUSHJOBS_WS_TEXT, message->data,
                                      message->len);
        if (msg == NULL) {
            return;
        }

        ngx_pushjobs_agent_commit(a, job_id, msg);
        ngx_pushjobs_msg_release(msg);

    } else if (action->len == 3 && ngx_strncmp(action->data, "run", 3) == 0) {
        ngx_pushjobs_agent_run(a, job_id);

    } else if (action->len == 5
               && ngx_strncmp(action->data, "abort", 5) == 0)
    {
        j = ngx_pushjobs_agent_job(a, job_id->data, 1);
        if (j && (j->state == NGX_PUSHJOBS_JOB_FREE
                  || j->state == NGX_PUSHJOBS_JOB_REFUSED))
        {
            ngx_memcpy(j->id, job_id->data, NGX_PUSHJOBS_JOB_ID_LEN);
            j->state = NGX_PUSHJOBS_JOB_COMMITTED;
        }

        ngx_pushjobs_agent_abort(a, job_id,
                                 message->len == 5
                                 && ngx_strncmp(message->data, "force", 5)
                                    == 0);
    }
}


void
ngx_pushjobs_agent_republish(void)
{
    ngx_rbtree_node_t      *n;
    ngx_pushjobs_agent_t   *a;
    ngx_pushjobs_worker_t  *w;

    w = ngx_pushjobs_worker;

    if (w == NULL || w->agents.root == w->agents.sentinel) {
        return;
    }

    for (n = ngx_rbtree_min(w->agents.root, w->agents.sentinel);
         n;
         n = ngx_rbtree_next(&w->agents, n))
    {
        a = (ngx_pushjobs_agent_t *) n;
        ngx_pushjobs_store_presence(&a->org, &a->name, a->session,
                                    NGX_PUSHJOBS_PRESENCE_ONLINE);
    }
}


/* The worker exits: every channel is closed, its session gone with it. */

void
ngx_pushjobs_session_done(ngx_pushjobs_worker_t *w)
{
    ngx_rbtree_node_t  *n, *next;

    if (w->agents.root != w->agents.sentinel) {
        for (n = ngx_rbtree_min(w->agents.root, w->agents.sentinel);
             n;
             n = next)
        {
            next = ngx_rbtree_next(&w->agents, n);
            ngx_pushjobs_agent_close((ngx_pushjobs_agent_t *) n,
                                     NGX_PUSHJOBS_WS_GOING_AWAY);
        }
    }

    ngx_pushjobs_agent_slots_off(w);
}


/*
 * Closes the channel, telling the agent code (0: nothing to tell, the
 * connection is broken), and drops the channel's reference.
 */

void
ngx_pushjobs_agent_close(ngx_pushjobs_agent_t *a, ngx_uint_t code)
{
    if (a->closed) {
        return;
    }

    ngx_pushjobs_agent_detach(a);

    ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_CHAN_CLOSED
                             + ngx_pushjobs_metrics_close_code(code), 1);

    a->chan->transport->close(a->chan, code);

    /* the reference the channel held */
    ngx_pushjobs_agent_unref(a);
}


/*
 * The channel is gone without a close (its connection freed by nginx):
 * the transport has let go of it already.
 */

void
ngx_pushjobs_agent_gone(ngx_pushjobs_agent_t *a)
{
    if (a->closed) {
        return;
    }

    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "pushjobs: agent \"%V\" of \"%V\" gone, session %uL",
                  &a->name, &a->org, a->session);

    ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_CHAN_CLOSED, 1);

    ngx_pushjobs_agent_detach(a);
    ngx_pushjobs_agent_unref(a);
}


/* Sends a message; the channel is closed if it cannot take it. */

void
ngx_pushjobs_agent_send(ngx_pushjobs_agent_t *a, ngx_pushjobs_msg_t *msg)
{
    ngx_int_t  rc;

    if (a->closed) {
        return;
    }

    rc = a->chan->transport->send(a->chan, msg);

    switch (rc) {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        ngx_log_error(NGX_LOG_WARN, a->log, 0,
                      "pushjobs: agent \"%V\" of \"%V\" reads too slowly",
                      &a->name, &a->org);
        ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_OVERFLOW_AGENT, 1);
        ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_POLICY);
        break;

    case NGX_ABORT:
        ngx_pushjobs_agent_close(a, 0);
        break;

    default:
        ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_SERVER_ERROR);
        break;
    }
}


static void
ngx_pushjobs_agent_register(ngx_pushjobs_agent_t *a)
{
    ngx_uint_t              poll;
    ngx_pushjobs_agent_t   *old;
    ngx_pushjobs_worker_t  *w;

    w = ngx_pushjobs_worker;

    old = ngx_pushjobs_agent_find(&a->org, &a->name);

    if (old) {
        ngx_log_error(NGX_LOG_INFO, a->log, 0,
                      "pushjobs: agent \"%V\" of \"%V\" replaces its "
                      "session %uL", &a->name, &a->org, old->session);

        ngx_pushjobs_agent_close(old, NGX_PUSHJOBS_WS_REPLACED);
    }

    a->node.key = ngx_pushjobs_agent_hash(&a->org, &a->name);
    ngx_rbtree_insert(&w->agents, &a->node);
    ngx_pushjobs_agent_slot_add(w, a);
    w->nagents++;
    a->registered = 1;

    poll = a->chan->transport->poll_timeout != 0;
    ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_CHAN_OPENED + poll, 1);
    ngx_pushjobs_metrics_gauge(poll ? NGX_PUSHJOBS_G_AGENTS_POLL
                                    : NGX_PUSHJOBS_G_AGENTS_WS, 1, 0);

    ngx_pushjobs_agent_org_add(&a->org, 1);
}


static void
ngx_pushjobs_agent_unregister(ngx_pushjobs_agent_t *a)
{
    ngx_pushjobs_worker_t  *w;

    w = ngx_pushjobs_worker;

    if (!a->registered || w == NULL) {
        return;
    }

    /* first: ngx_rbtree_delete() clears the key, where the slot's run is */
    ngx_pushjobs_agent_slot_del(w, a);
    ngx_rbtree_delete(&w->agents, &a->node);
    w->nagents--;
    a->registered = 0;

    ngx_pushjobs_metrics_gauge(a->chan->transport->poll_timeout
                               ? NGX_PUSHJOBS_G_AGENTS_POLL
                               : NGX_PUSHJOBS_G_AGENTS_WS, -1, 0);

    ngx_pushjobs_agent_org_add(&a->org, -1);
}


static void
ngx_pushjobs_agent_org_add(ngx_str_t *org, ngx_int_t n)
{
    ngx_uint_t                 i;
    ngx_pushjobs_worker_t     *w;
    ngx_pushjobs_agent_org_t  *o;

    w = ngx_pushjobs_worker;

    o = w->agent_orgs.elts;

    for (i = 0; i < w->agent_orgs.nelts; i++) {
        if (o[i].org.len == org->len
            && ngx_memcmp(o[i].org.data, org->data, org->len) == 0)
        {
            o[i].count += n;
            return;
        }
    }

    if (n < 0) {
        return;
    }

    o = ngx_array_push(&w->agent_orgs);
    if (o == NULL) {
        return;
    }

    /* org names are few; they are kept for the life of the worker */

    o->org.data = ngx_pstrdup(w->cycle->pool, org);
    if (o->org.data == NULL) {
        w->agent_orgs.nelts--;
        return;
    }

    o->org.len = org->len;
    o->count = n;
}


/* The session leaves the registry; its node goes offline. */

static void
ngx_pushjobs_agent_detach(ngx_pushjobs_agent_t *a)
{
    a->closed = 1;

    ngx_pushjobs_agent_unregister(a);

    /*
     * A worker leaving on a reload hands its channels over: their agents
     * reconnect to the new workers within about a second, and a job posted
     * meanwhile counts on them (its commit goes with their hello) rather
     * than failing its quorum.  The node shows offline all the same.
     */
    ngx_pushjobs_store_presence(&a->org, &a->name, a->session,
                                ngx_exiting ? NGX_PUSHJOBS_PRESENCE_HANDOVER
                                            : NGX_PUSHJOBS_PRESENCE_OFFLINE);

    if (a->ping.timer_set) {
        ngx_del_timer(&a->ping);
    }
}


/* Every ping interval: the transport checks that the agent is there. */

static void
ngx_pushjobs_agent_tick(ngx_event_t *ev)
{
    ngx_int_t              rc;
    ngx_pushjobs_agent_t  *a;

    a = ev->data;

    if (a->closed) {
        return;
    }

    ngx_pushjobs_agent_ref(a);

    rc = a->chan->transport->tick(a->chan);

    if (rc != NGX_OK) {
        ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_GOING_AWAY);

    } else if (!a->closed) {
        ngx_add_timer(&a->ping, ngx_pushjobs_worker->pmcf->ping_interval);
    }

    ngx_pushjobs_agent_unref(a);
}


static void
ngx_pushjobs_agent_send_text(ngx_pushjobs_agent_t *a, u_char *data,
    size_t len)
{
    ngx_pushjobs_msg_t  *msg;

    msg = ngx_pushjobs_msg_create(NGX_PUSHJOBS_WS_TEXT, data, len);
    if (msg == NULL) {
        ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_SERVER_ERROR);
        return;
    }

    ngx_pushjobs_agent_send(a, msg);
    ngx_pushjobs_msg_release(msg);
}


static void
ngx_pushjobs_agent_welcome(ngx_pushjobs_agent_t *a)
{
    u_char                    *p;
    ngx_pushjobs_worker_t     *w;
    ngx_pushjobs_main_conf_t  *pmcf;
    u_char                     buf[6 * 3 * NGX_PUSHJOBS_NAME_MAX + 256];

    w = ngx_pushjobs_worker;
    pmcf = w->pmcf;

    p = ngx_cpymem(buf, "{\"type\":\"welcome\",\"v\":1,\"node\":",
                   sizeof("{\"type\":\"welcome\",\"v\":1,\"node\":") - 1);
    p = ngx_pushjobs_store_json_name(p, &a->name);
    p = ngx_cpymem(p, ",\"org\":", sizeof(",\"org\":") - 1);
    p = ngx_pushjobs_store_json_name(p, &a->org);
    p = ngx_cpymem(p, ",\"server\":", sizeof(",\"server\":") - 1);
    p = ngx_pushjobs_store_json_name(p, pmcf->server_name.len
                                        <= NGX_PUSHJOBS_NAME_MAX
                                        ? &pmcf->server_name
                                        : &w->cycle->hostname);
    p = ngx_sprintf(p, ",\"ping_interval\":%M,\"max_message_size\":%uz",
                    pmcf->ping_interval / 1000, pmcf->max_message_size);

    /* the agent may send output messages (docs/protocol.md §2) */
    if (pmcf->live_output) {
        p = ngx_cpymem(p, ",\"live_output\":true",
                       sizeof(",\"live_output\":true") - 1);
    }

    if (a->chan->transport->poll_timeout) {
        p = ngx_sprintf(p, ",\"poll_timeout\":%M",
                        a->chan->transport->poll_timeout / 1000);
    }

    *p++ = '}';

    ngx_pushjobs_agent_send_text(a, buf, p - buf);
}


static void
ngx_pushjobs_agent_send_job(ngx_pushjobs_agent_t *a, const char *type,
    u_char *job_id, const char *extra)
{
    u_char  *p, buf[160];

    p = ngx_sprintf(buf, "{\"type\":\"%s\",\"v\":1,\"job_id\":\"%*s\"%s}",
                    type, (size_t) NGX_PUSHJOBS_JOB_ID_LEN, job_id,
                    extra ? extra : "");

    ngx_pushjobs_agent_send_text(a, buf, p - buf);
}


/* One message of the agent, a JSON object, whatever its transport. */

static void
ngx_pushjobs_agent_dispatch(ngx_pushjobs_agent_t *a, yajl_val msg)
{
    ngx_str_t                   s, job_id;
    ngx_uint_t                  i, type;
    ngx_pushjobs_agent_type_t  *t;

    type = NGX_PUSHJOBS_MSG_UNKNOWN;

    if (ngx_pushjobs_json_string(ngx_pushjobs_json_get(msg, "type"), &s)
        == NGX_OK)
    {
        for (t = ngx_pushjobs_agent_types; t->name; t++) {
            if (ngx_strlen(t->name) == s.len
                && ngx_strncmp(t->name, s.data, s.len) == 0)
            {
                type = t->type;
                break;
            }
        }
    }

    ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_AGENT_MSG + type, 1);

    if (type == NGX_PUSHJOBS_MSG_UNKNOWN) {
        ngx_log_error(NGX_LOG_INFO, a->log, 0,
                      "pushjobs: agent \"%V\" of \"%V\" sent a message of "
                      "unknown type, ignored", &a->name, &a->org);
        goto done;
    }

    if (type == NGX_PUSHJOBS_MSG_HELLO) {
        ngx_pushjobs_agent_hello(a, msg);
        goto done;
    }

    if (ngx_pushjobs_json_string(ngx_pushjobs_json_get(msg, "job_id"),
                                 &job_id)
        != NGX_OK
        || !pj_job_id_valid(job_id.data, job_id.len))
    {
        ngx_log_error(NGX_LOG_INFO, a->log, 0,
                      "pushjobs: agent \"%V\" of \"%V\" sent a message "
                      "without a valid job_id, ignored", &a->name, &a->org);
        goto done;
    }

    if (type == NGX_PUSHJOBS_MSG_OUTPUT) {
        ngx_pushjobs_agent_chunk(a, &job_id, msg);
        goto done;
    }

    ngx_pushjobs_agent_input(a, type, &job_id, msg);

    /* what this channel knows of the agent's job */

    for (i = 0; i < NGX_PUSHJOBS_AGENT_JOBS; i++) {
        if (ngx_memcmp(a->jobs[i].id, job_id.data, NGX_PUSHJOBS_JOB_ID_LEN)
            != 0
            || a->jobs[i].state == NGX_PUSHJOBS_JOB_FREE)
        {
            continue;
        }

        switch (type) {

        case NGX_PUSHJOBS_MSG_ACK_COMMIT:
            if (a->jobs[i].state == NGX_PUSHJOBS_JOB_COMMIT_SENT) {
                a->jobs[i].state = NGX_PUSHJOBS_JOB_COMMITTED;
            }
            break;

        case NGX_PUSHJOBS_MSG_ACK_RUN:
            if (a->jobs[i].state != NGX_PUSHJOBS_JOB_ABORT_SENT) {
                a->jobs[i].state = NGX_PUSHJOBS_JOB_RUNNING;
            }
            break;

        case NGX_PUSHJOBS_MSG_NACK_COMMIT:
            /*
             * A dispatch from a snapshot taken before this answer was
             * applied (a worker catching up after a reload or an outage)
             * must not offer the job again: an agent free by then would
             * accept it, and the node would vote twice.
             */
            a->jobs[i].state = NGX_PUSHJOBS_JOB_REFUSED;
            break;

        default:
            /* the agent let go of the job */
            a->jobs[i].state = NGX_PUSHJOBS_JOB_FREE;
            break;
        }
    }

done:

    return;
}


/* {"type":"hello","jobs":[{"job_id":"…","state":"committed"}]} */

static void
ngx_pushjobs_agent_hello(ngx_pushjobs_agent_t *a, void *msg)
{
    u_char                     *p;
    size_t                      i, n;
    yajl_val                    jobs, job;
    ngx_str_t                   id, state, json;
    ngx_pushjobs_agent_job_t   *j;
    ngx_pushjobs_store_item_t   item;
    u_char                      buf[2 * 6 * NGX_PUSHJOBS_NAME_MAX + 128
                                    + NGX_PUSHJOBS_HELLO_JOBS_MAX * 80];

    p = ngx_cpymem(buf, "{\"org\":", sizeof("{\"org\":") - 1);
    p = ngx_pushjobs_store_json_name(p, &a->org);
    p = ngx_cpymem(p, ",\"node\":", sizeof(",\"node\":") - 1);
    p = ngx_pushjobs_store_json_name(p, &a->name);
    p = ngx_cpymem(p, ",\"jobs\":[", sizeof(",\"jobs\":[") - 1);

    jobs = ngx_pushjobs_json_get(msg, "jobs");
    n = 0;

    if (jobs && YAJL_IS_ARRAY(jobs)) {
        for (i = 0; i < jobs->u.array.len && n < NGX_PUSHJOBS_HELLO_JOBS_MAX;
             i++)
        {
            job = jobs->u.array.values[i];

            if (ngx_pushjobs_json_string(ngx_pushjobs_json_get(job, "job_id"),
                                         &id)
                != NGX_OK
                || !pj_job_id_valid(id.data, id.len)
                || ngx_pushjobs_json_string(ngx_pushjobs_json_get(job,
                                                                  "state"),
                                            &state)
                   != NGX_OK)
            {
                continue;
            }

            if ((state.len != 9 || ngx_strncmp(state.data, "committed", 9))
                && (state.len != 7 || ngx_strncmp(state.data, "running", 7))
                && (state.len != 8 || ngx_strncmp(state.data, "finished", 8)))
            {
                continue;
            }

            p = ngx_sprintf(p, "%s{\"job_id\":\"%V\",\"state\":\"%V\"}",
                            n ? "," : "", &id, &state);
            n++;

            if (state.data[0] == 'f') {
                continue;
            }

            j = ngx_pushjobs_agent_job(a, id.data, 1);
            if (j) {
                ngx_memcpy(j->id, id.data, NGX_PUSHJOBS_JOB_ID_LEN);
                j->state = (state.data[0] == 'c') ? NGX_PUSHJOBS_JOB_COMMITTED
                                                  : NGX_PUSHJOBS_JOB_RUNNING;
            }
        }
    }

    p = ngx_cpymem(p, "]}", 2);

    json.data = buf;
    json.len = p - buf;

    ngx_memzero(&item, sizeof(ngx_pushjobs_store_item_t));
    item.agent = a;
    item.type = NGX_PUSHJOBS_MSG_HELLO;

    if (ngx_pushjobs_store_hello(&item, &json) != NGX_OK) {
        ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_SERVER_ERROR);
    }
}


/*
 * {"org","node","job_id","type"[,"exit_status"][,"stdout","stderr",
 *  "truncated"[,"stdout_offset","stderr_offset","cap"]]} for node_inputs().
 * A short final report (docs/protocol.md §2.1) names where its bytes start
 * in each stream: what lies before was streamed, and node_inputs() takes
 * it from the stored chunks; the report's own bytes are kept up to the cap
 * counted from there.
 */

static void
ngx_pushjobs_agent_input(ngx_pushjobs_agent_t *a, ngx_uint_t type,
    ngx_str_t *job_id, void *msg)
{
    u_char                     *p, *buf;
    size_t                      len, out_len, err_len, cap;
    int64_t                     out_off, err_off;
    yajl_val                    v, out, err;
    ngx_str_t                   json;
    ngx_uint_t                  truncated, final;
    ngx_pushjobs_agent_type_t  *t;
    ngx_pushjobs_store_item_t   item;

    for (t = ngx_pushjobs_agent_types; t->type != type; t++) { /* void */ }

    final = (type == NGX_PUSHJOBS_MSG_SUCCEEDED
             || type == NGX_PUSHJOBS_MSG_FAILED
             || type == NGX_PUSHJOBS_MSG_ABORTED);

    if (final) {
        /* its command has ended: no more output until the next one's */
        a->streaming = 0;
    }

    out = NULL;
    err = NULL;
    out_len = 0;
    err_len = 0;
    out_off = 0;
    err_off = 0;
    truncated = 0;
    cap = ngx_pushjobs_worker->pmcf->max_output_size;

    if (type == NGX_PUSHJOBS_MSG_SUCCEEDED || type == NGX_PUSHJOBS_MSG_FAILED)
    {
        out = ngx_pushjobs_json_get(msg, "stdout");
        err = ngx_pushjobs_json_get(msg, "stderr");

        out_off = ngx_pushjobs_agent_offset(msg, "stdout_offset");
        err_off = ngx_pushjobs_agent_offset(msg, "stderr_offset");

        if (out_off < 0 || err_off < 0) {
            /* the bytes before it cannot be told: the whole report, please */
            ngx_log_error(NGX_LOG_INFO, a->log, 0,
                          "pushjobs: agent \"%V\" of \"%V\" sent a report "
                          "with a bad offset, asked for it whole",
                          &a->name, &a->org);
            ngx_pushjobs_agent_send_job(a, "resend", job_id->data, NULL);
            return;
        }

        /* a short report's bytes are kept up to the cap from their offset */
        out_len = ngx_pushjobs_agent_output(out, (size_t) out_off < cap
                                                 ? cap - out_off : 0,
                                            &truncated);
        err_len = ngx_pushjobs_agent_output(err, (size_t) err_off < cap
                                                 ? cap - err_off : 0,
                                            &truncated);

        if (out_len == (size_t) -1 || err_len == (size_t) -1) {
            ngx_log_error(NGX_LOG_WARN, a->log, 0,
                          "pushjobs: agent \"%V\" of \"%V\" sent output that "
                          "is not base64, dropped", &a->name, &a->org);
            out = NULL;
            err = NULL;
            out_len = 0;
            err_len = 0;
        }

        v = ngx_pushjobs_json_get(msg, "truncated");
        if (v && YAJL_IS_TRUE(v)) {
            truncated = 1;
        }

        ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_OUTPUT_BYTES,
                                 ngx_pushjobs_agent_output_bytes(out, out_len)
                                 + ngx_pushjobs_agent_output_bytes(err,
                                                                   err_len));
    }

    len = 2 * 6 * NGX_PUSHJOBS_NAME_MAX + 256 + 3 * NGX_INT64_LEN
          + out_len + err_len;

    buf = ngx_alloc(len, a->log);
    if (buf == NULL) {
        ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_SERVER_ERROR);
        return;
    }

    p = ngx_cpymem(buf, "{\"org\":", sizeof("{\"org\":") - 1);
    p = ngx_pushjobs_store_json_name(p, &a->org);
    p = ngx_cpymem(p, ",\"node\":", sizeof(",\"node\":") - 1);
    p = ngx_pushjobs_store_json_name(p, &a->name);
    p = ngx_sprintf(p, ",\"job_id\":\"%V\",\"type\":\"%s\"", job_id, t->name);

    v = ngx_pushjobs_json_get(msg, "exit_status");
    if (v && YAJL_IS_INTEGER(v)
        && YAJL_GET_INTEGER(v) >= -2147483647
        && YAJL_GET_INTEGER(v) <= 2147483647)
    {
        p = ngx_sprintf(p, ",\"exit_status\":%L", YAJL_GET_INTEGER(v));
    }

    if (out || err) {
        p = ngx_cpymem(p, ",\"stdout\":\"", sizeof(",\"stdout\":\"") - 1);
        if (out_len) {
            p = ngx_cpymem(p, out->u.string, out_len);
        }

        p = ngx_cpymem(p, "\",\"stderr\":\"", sizeof("\",\"stderr\":\"") - 1);
        if (err_len) {
            p = ngx_cpymem(p, err->u.string, err_len);
        }

        p = ngx_sprintf(p, "\",\"truncated\":%s",
                        truncated ? "true" : "false");

        if (out_off || err_off) {
            p = ngx_sprintf(p, ",\"stdout_offset\":%L,\"stderr_offset\":%L"
                            ",\"cap\":%uz", out_off, err_off, cap);
        }
    }

    *p++ = '}';

    json.data = buf;
    json.len = p - buf;

    item.agent = a;
    item.type = type;
    ngx_memcpy(item.job_id, job_id->data, NGX_PUSHJOBS_JOB_ID_LEN);

    if (ngx_pushjobs_store_input(&item, &json, final) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, a->log, 0,
                      "pushjobs: could not queue a \"%s\" of agent \"%V\" "
                      "of \"%V\"", t->name, &a->name, &a->org);
    }

    ngx_free(buf);
}


/*
 * {"type":"output","job_id","stream","offset","data"}: a chunk of a running
 * job's output, as {"org","node","job_id","stream","offset","cap",
 * "truncated","data"} for node_outputs(), without what lies beyond the
 * cap.  A chunk that is not base64, of an unknown stream, or without a sane
 * offset is dropped (the final report has it all).
 */

static void
ngx_pushjobs_agent_chunk(ngx_pushjobs_agent_t *a, ngx_str_t *job_id,
    void *msg)
{
    u_char      *p, *buf;
    size_t       len, data_len, cap;
    int64_t      off;
    yajl_val     v, data;
    ngx_str_t    stream, json;
    ngx_uint_t   truncated;

    if (!ngx_pushjobs_worker->pmcf->live_output) {
        /* not announced: the final report has it all */
        return;
    }

    cap = ngx_pushjobs_worker->pmcf->max_output_size;

    v = ngx_pushjobs_json_get(msg, "offset");
    data = ngx_pushjobs_json_get(msg, "data");
    truncated = 0;

    if (ngx_pushjobs_json_string(ngx_pushjobs_json_get(msg, "stream"),
                                 &stream)
        != NGX_OK
        || !((stream.len == 6 && ngx_strncmp(stream.data, "stdout", 6) == 0)
             || (stream.len == 6
                 && ngx_strncmp(stream.data, "stderr", 6) == 0))
        || v == NULL || !YAJL_IS_INTEGER(v)
        || YAJL_GET_INTEGER(v) < 0
        || YAJL_GET_INTEGER(v) > NGX_MAX_INT32_VALUE
        || data == NULL)
    {
        ngx_log_error(NGX_LOG_INFO, a->log, 0,
                      "pushjobs: agent \"%V\" of \"%V\" sent a bad output "
                      "message, ignored", &a->name, &a->org);
        return;
    }

    /* what lies beyond the cap is not kept, only marked */

    off = YAJL_GET_INTEGER(v);

    len = (size_t) off < cap ? cap - off + 2 : 0;

    data_len = ngx_pushjobs_agent_output(data, len, &truncated);

    if (data_len == (size_t) -1) {
        ngx_log_error(NGX_LOG_WARN, a->log, 0,
                      "pushjobs: agent \"%V\" of \"%V\" sent output that "
                      "is not base64, dropped", &a->name, &a->org);
        return;
    }

    ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_OUTPUT_BYTES,
                             ngx_pushjobs_agent_output_bytes(data, data_len));

    if (data_len == 0 && !truncated) {
        return;
    }

    len = 2 * 6 * NGX_PUSHJOBS_NAME_MAX + 256 + 2 * NGX_INT64_LEN + data_len;

    buf = ngx_alloc(len, a->log);
    if (buf == NULL) {
        return;
    }

    p = ngx_cpymem(buf, "{\"org\":", sizeof("{\"org\":") - 1);
    p = ngx_pushjobs_store_json_name(p, &a->org);
    p = ngx_cpymem(p, ",\"node\":", sizeof(",\"node\":") - 1);
    p = ngx_pushjobs_store_json_name(p, &a->name);
    p = ngx_sprintf(p, ",\"job_id\":\"%V\",\"stream\":\"%V\",\"offset\":%L"
                    ",\"cap\":%uz,\"truncated\":%s,\"data\":\"",
                    job_id, &stream, off, cap, truncated ? "true" : "false");
    p = ngx_cpymem(p, data->u.string, data_len);
    p = ngx_cpymem(p, "\"}", 2);

    json.data = buf;
    json.len = p - buf;

    a->streaming = 1;

    if (ngx_pushjobs_store_output(a, &json) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, a->log, 0,
                      "pushjobs: could not queue an output chunk of agent "
                      "\"%V\" of \"%V\"", &a->name, &a->org);
    }

    ngx_free(buf);
}


/*
 * An output field's offset in its stream: 0 when absent, -1 when it is not
 * an integer within 0 .. 2^31 - 1.
 */

static int64_t
ngx_pushjobs_agent_offset(void *msg, char *name)
{
    yajl_val  v;

    v = ngx_pushjobs_json_get(msg, name);

    if (v == NULL) {
        return 0;
    }

    if (!YAJL_IS_INTEGER(v) || YAJL_GET_INTEGER(v) < 0
        || YAJL_GET_INTEGER(v) > NGX_MAX_INT32_VALUE)
    {
        return -1;
    }

    return YAJL_GET_INTEGER(v);
}


/* The bytes of the first len base64 characters of an output field. */

static size_t
ngx_pushjobs_agent_output_bytes(void *value, size_t len)
{
    size_t    n;
    yajl_val  v;

    v = value;

    if (v == NULL || len == 0) {
        return 0;
    }

    n = len / 4 * 3;

    if (v->u.string[len - 1] == '=') {
        n -= (v->u.string[len - 2] == '=') ? 2 : 1;
    }

    return n;
}


/*
 * Checks that an output field is base64 and returns how much of it to keep:
 * at most cap decoded bytes, cut on a 4-character boundary.  (size_t) -1
 * if it is not base64; 0 if absent.
 */

static size_t
ngx_pushjobs_agent_output(void *value, size_t cap, ngx_uint_t *truncated)
{
    u_char    c;
    size_t    i, len, keep;
    yajl_val  v;

    v = value;

    if (v == NULL) {
        return 0;
    }

    if (!YAJL_IS_STRING(v)) {
        return (size_t) -1;
    }

    len = ngx_strlen(v->u.string);

    if (len % 4) {
        return (size_t) -1;
    }

    for (i = 0; i < len; i++) {
        c = v->u.string[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
              || (c >= '0' && c <= '9') || c == '+' || c == '/'
              || (c == '=' && i >= len - 2)))
        {
            return (size_t) -1;
        }
    }

    keep = cap / 3 * 4;

    if (len > keep) {
        *truncated = 1;
        return keep;
    }

    return len;
}


static ngx_pushjobs_agent_job_t *
ngx_pushjobs_agent_job(ngx_pushjobs_agent_t *a, u_char *job_id,
    ngx_uint_t create)
{
    ngx_uint_t                 i;
    ngx_pushjobs_agent_job_t  *free, *refused, *aborted;

    free = NULL;
    refused = NULL;
    aborted = NULL;

    for (i = 0; i < NGX_PUSHJOBS_AGENT_JOBS; i++) {
        if (a->jobs[i].state == NGX_PUSHJOBS_JOB_FREE) {
            if (free == NULL) {
                free = &a->jobs[i];
            }

            continue;
        }

        if (ngx_memcmp(a->jobs[i].id, job_id, NGX_PUSHJOBS_JOB_ID_LEN) == 0)
        {
            return &a->jobs[i];
        }

        if (a->jobs[i].state == NGX_PUSHJOBS_JOB_REFUSED && refused == NULL) {
            refused = &a->jobs[i];
        }

        if (a->jobs[i].state == NGX_PUSHJOBS_JOB_ABORT_SENT && aborted == NULL)
        {
            aborted = &a->jobs[i];
        }
    }

    if (!create) {
        return NULL;
    }

    /*
     * A refused job is forgotten first, then one already told to abort
     * (only a forced abort would be sent again), before an offer.
     */

    if (free == NULL) {
        free = refused ? refused : aborted;
    }

    if (free == NULL) {
        /*
         * Forget the newest offer not answered yet: the agent holds the
         * first job it was offered while free and refuses the others as
         * busy, and the first one's run and abort need its slot.
         */

        for (i = NGX_PUSHJOBS_AGENT_JOBS; i-- > 0; /* void */) {
            if (a->jobs[i].state == NGX_PUSHJOBS_JOB_COMMIT_SENT) {
                free = &a->jobs[i];
                break;
            }
        }

        if (free == NULL) {
            free = &a->jobs[NGX_PUSHJOBS_AGENT_JOBS - 1];
        }
    }

    /* the slots stay in the order of the offers: the new one goes last */

    for (i = free - a->jobs; i + 1 < NGX_PUSHJOBS_AGENT_JOBS; i++) {
        a->jobs[i] = a->jobs[i + 1];
    }

    free = &a->jobs[NGX_PUSHJOBS_AGENT_JOBS - 1];
    free->state = NGX_PUSHJOBS_JOB_FREE;

    ngx_memcpy(free->id, job_id, NGX_PUSHJOBS_JOB_ID_LEN);

    return free;
}


static ngx_uint_t
ngx_pushjobs_agent_hash(ngx_str_t *org, ngx_str_t *name)
{
    uint32_t  crc;

    ngx_crc32_init(crc);
    ngx_crc32_update(&crc, org->data, org->len);
    ngx_crc32_update(&crc, (u_char *) "/", 1);
    ngx_crc32_update(&crc, name->data, name->len);
    ngx_crc32_final(crc);

    return crc;
}
