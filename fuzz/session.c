/*
 * Copyright (C) pushjobs developers
 */


/*
 * The module's agent session (ngx_pushjobs_session.c) alone, over a stub
 * transport and a stub store: what an agent sends on its channel,
 * interleaved with what the job engine and the store's answers ask of the
 * session.  The stubs stand where the websocket or long-poll transport and
 * the batched SQL are (the transport interface of ngx_pushjobs_module.h;
 * the store's calls are wrapped at link time, fuzz.mk).
 *
 * Input: lines.  A line "!X<job id>[ rest]" is a server side event:
 *   !c commit   !r run   !a abort   !f forced abort   !k kick the session
 *   !s the next send finds the agent's queue full
 *   !d the store answers every write queued so far (rest: "rehab" for an
 *      input; commit, run or abort for a hello)
 * Any other line is one message of the agent (a text frame's payload).
 *
 * Checked: what the session sends is one unmasked websocket text frame
 * holding a JSON object with a "type"; nothing is sent once the channel is
 * closed, and it is closed once; every JSON the session writes for the
 * store parses; at the end the session has left the registry and the org
 * counts, its timer is gone, and the channel is freed with its session.
 */


#include "ngx_pushjobs_module.h"
#include "ngx_fuzz.h"

#include <yajl/yajl_tree.h>


#define NGX_FUZZ_ITEMS  64


typedef struct {
    ngx_pushjobs_chan_t         chan;
    ngx_uint_t                  closed;
    ngx_uint_t                  freed;
    ngx_uint_t                  full;
} ngx_fuzz_chan_t;


typedef struct {
    ngx_pushjobs_store_item_t   item;
    ngx_uint_t                  hello;
} ngx_fuzz_write_t;


static ngx_int_t ngx_fuzz_chan_send(ngx_pushjobs_chan_t *ch,
    ngx_pushjobs_msg_t *msg);
static void ngx_fuzz_chan_close(ngx_pushjobs_chan_t *ch, ngx_uint_t code);
static ngx_int_t ngx_fuzz_chan_tick(ngx_pushjobs_chan_t *ch);
static void ngx_fuzz_chan_free(ngx_pushjobs_chan_t *ch);


static const ngx_pushjobs_transport_t  ngx_fuzz_transport = {
    ngx_fuzz_chan_send,
    ngx_fuzz_chan_close,
    ngx_fuzz_chan_tick,
    ngx_fuzz_chan_free,
    NULL,                               /* resume: the stub never stalls */
    " by fuzzing",
    0
};


static ngx_fuzz_write_t  ngx_fuzz_writes[NGX_FUZZ_ITEMS];
static ngx_uint_t        ngx_fuzz_nwrites;


static void
ngx_fuzz_json_object(u_char *data, size_t len, const char *need)
{
    char      *text;
    yajl_val   v, t;

    text = malloc(len + 1);
    if (text == NULL) {
        return;
    }

    ngx_memcpy(text, data, len);
    text[len] = '\0';

    v = yajl_tree_parse(text, NULL, 0);

    if (v == NULL || !YAJL_IS_OBJECT(v)) {
        abort();
    }

    if (need) {
        t = ngx_pushjobs_json_get(v, need);
        if (t == NULL) {
            abort();
        }
    }

    yajl_tree_free(v);
    free(text);
}


static ngx_int_t
ngx_fuzz_chan_send(ngx_pushjobs_chan_t *ch, ngx_pushjobs_msg_t *msg)
{
    size_t            header, len;
    ngx_fuzz_chan_t  *fc;

    fc = (ngx_fuzz_chan_t *) ch;

    if (fc->closed || fc->freed) {
        abort();
    }

    if (msg->data[0] != (0x80 | NGX_PUSHJOBS_WS_TEXT)) {
        abort();
    }

    header = msg->payload.data - msg->data;
    len = msg->payload.len;

    if (header + len != msg->len
        || header != (len < 126 ? 2 : (len < 65536 ? 4 : 10))
        || (msg->data[1] & 0x80))
    {
        abort();
    }

    ngx_fuzz_json_object(msg->payload.data, msg->payload.len, "type");

    if (fc->full) {
        fc->full = 0;
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static void
ngx_fuzz_chan_close(ngx_pushjobs_chan_t *ch, ngx_uint_t code)
{
    ngx_fuzz_chan_t  *fc;

    fc = (ngx_fuzz_chan_t *) ch;

    if (fc->closed || fc->freed || !ch->agent->closed) {
        abort();
    }

    fc->closed = 1;
}


static ngx_int_t
ngx_fuzz_chan_tick(ngx_pushjobs_chan_t *ch)
{
    return NGX_OK;
}


static void
ngx_fuzz_chan_free(ngx_pushjobs_chan_t *ch)
{
    ngx_fuzz_chan_t  *fc;

    fc = (ngx_fuzz_chan_t *) ch;

    if (fc->freed || !fc->closed) {
        abort();
    }

    fc->freed = 1;
}


/* The store, wrapped (fuzz.mk): JSON checked, writes kept until "!d". */

void
__wrap_ngx_pushjobs_store_presence(ngx_str_t *org, ngx_str_t *node,
    uint64_t session, ngx_uint_t state)
{
}


static ngx_int_t
ngx_fuzz_store(ngx_pushjobs_store_item_t *item, ngx_str_t *json,
    ngx_uint_t hello)
{
    ngx_fuzz_json_object(json->data, json->len, hello ? "jobs" : "type");

    if (ngx_fuzz_nwrites == NGX_FUZZ_ITEMS) {
        return NGX_ERROR;
    }

    ngx_fuzz_writes[ngx_fuzz_nwrites].item = *item;
    ngx_fuzz_writes[ngx_fuzz_nwrites].hello = hello;
    ngx_fuzz_nwrites++;

    ngx_pushjobs_agent_ref(item->agent);

    return NGX_OK;
}


ngx_int_t
__wrap_ngx_pushjobs_store_input(ngx_pushjobs_store_item_t *item,
    ngx_str_t *json, ngx_uint_t final)
{
    (void) final;

    return ngx_fuzz_store(item, json, 0);
}


ngx_int_t
__wrap_ngx_pushjobs_store_hello(ngx_pushjobs_store_item_t *item,
    ngx_str_t *json)
{
    return ngx_fuzz_store(item, json, 1);
}


static void
ngx_fuzz_store_done(ngx_str_t *job_id, ngx_str_t *rest)
{
    ngx_str_t          action, message;
    ngx_uint_t         i;
    ngx_fuzz_write_t  *wr;

    action = *rest;
    ngx_str_set(&message, "{\"type\":\"commit\",\"v\":1}");

    if (action.len == 5 && ngx_strncmp(action.data, "abort", 5) == 0) {
        ngx_str_set(&message, "force");
    }

    for (i = 0; i < ngx_fuzz_nwrites; i++) {
        wr = &ngx_fuzz_writes[i];

        if (wr->hello) {
            ngx_pushjobs_agent_hello_done(&wr->item, job_id, &action,
                                          &message);

        } else {
            ngx_pushjobs_agent_input_done(&wr->item,
                                          rest->len == 5
                                          && ngx_strncmp(rest->data,
                                                         "rehab", 5) == 0);
        }

        ngx_pushjobs_agent_unref(wr->item.agent);
    }

    ngx_fuzz_nwrites = 0;
}


static void
ngx_fuzz_event(ngx_pushjobs_agent_t *a, ngx_fuzz_chan_t *fc, u_char *p,
    size_t len)
{
    u_char               buf[128], *b;
    size_t               n;
    ngx_str_t            id, rest, session;
    ngx_pushjobs_msg_t  *msg;

    /* "!X", the job id, " rest" */

    n = ngx_min(len - 2, NGX_PUSHJOBS_JOB_ID_LEN);

    id.data = p + 2;
    id.len = n;

    rest.data = p + 2 + n;
    rest.len = len - 2 - n;

    if (rest.len && rest.data[0] == ' ') {
        rest.data++;
        rest.len--;
    }

    /* the job engine's ids come from the database: well formed */

    if (p[1] != 'k' && p[1] != 's' && !pj_job_id_valid(id.data, id.len)
        && !(p[1] == 'd' && id.len == 0))
    {
        return;
    }

    switch (p[1]) {

    case 'c':
        b = ngx_sprintf(buf, "{\"type\":\"commit\",\"v\":1,\"job_id\":\"%V\"}",
                        &id);

        msg = ngx_pushjobs_msg_create(NGX_PUSHJOBS_WS_TEXT, buf, b - buf);
        if (msg == NULL) {
            break;
        }

        ngx_pushjobs_agent_commit(a, &id, msg);
        ngx_pushjobs_msg_release(msg);
        break;

    case 'r':
        ngx_pushjobs_agent_run(a, &id);
        break;

    case 'a':
    case 'f':
        ngx_pushjobs_agent_abort(a, &id, p[1] == 'f');
        break;

    case 'k':
        b = ngx_sprintf(buf, "%uL", a->session);
        session.data = buf;
        session.len = b - buf;
        ngx_pushjobs_agent_kick(&session, &a->org, &a->name);
        break;

    case 's':
        fc->full = 1;
        break;

    case 'd':
        ngx_fuzz_store_done(&id, &rest);
        break;
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                    *line, *nl;
    size_t                     len;
    ngx_str_t                  org, node, payload;
    ngx_log_t                 *log;
    ngx_fuzz_chan_t            fc;
    ngx_pushjobs_agent_t      *a;
    ngx_pushjobs_main_conf_t  *pmcf;

    static ngx_pushjobs_worker_t      worker;
    static ngx_pushjobs_main_conf_t   conf;

    log = ngx_fuzz_init();

    if (ngx_pushjobs_worker == NULL) {
        ngx_event_timer_init(log);

        pmcf = &conf;
        pmcf->ping_interval = 10000;
        pmcf->max_message_size = 1 << 20;
        pmcf->max_output_size = 4096;
        pmcf->max_queued_output = 1 << 20;
        ngx_str_set(&pmcf->server_name, "fuzz");

        worker.cycle = (ngx_cycle_t *) ngx_cycle;
        worker.log = log;
        worker.pmcf = pmcf;

        if (ngx_pushjobs_session_init(&worker) != NGX_OK) {
            abort();
        }

        ngx_pushjobs_worker = &worker;
    }

    ngx_str_set(&org, "fuzzorg");
    ngx_str_set(&node, "node1");

    ngx_memzero(&fc, sizeof(ngx_fuzz_chan_t));
    fc.chan.transport = &ngx_fuzz_transport;

    a = ngx_pushjobs_agent_create(&org, &node, log);
    if (a == NULL) {
        return 0;
    }

    fc.chan.agent = a;

    /* ours, as a transport holds one across what it hands the session */
    ngx_pushjobs_agent_ref(a);

    ngx_pushjobs_agent_open(a, &fc.chan);

    if (ngx_pushjobs_agent_find(&org, &node) != (a->closed ? NULL : a)) {
        abort();
    }

    while (size && !a->closed) {
        nl = memchr(data, '\n', size);
        len = nl ? (size_t) (nl - data) : size;

        /* an exact-size copy: a read past the message is an ASan report */

        line = malloc(len ? len : 1);
        if (line == NULL) {
            break;
        }

        ngx_memcpy(line, data, len);

        data += len + (nl ? 1 : 0);
        size -= len + (nl ? 1 : 0);

        if (len >= 2 && line[0] == '!') {
            ngx_fuzz_event(a, &fc, line, len);

        } else {
            payload.data = line;
            payload.len = len;
            ngx_pushjobs_agent_receive(a, &payload);
        }

        free(line);
    }

    if (!a->closed) {
        ngx_pushjobs_agent_close(a, NGX_PUSHJOBS_WS_NORMAL);
    }

    ngx_str_null(&payload);
    ngx_fuzz_store_done(&payload, &payload);

    if (!fc.closed || fc.freed
        || ngx_pushjobs_agent_find(&org, &node) != NULL
        || ngx_pushjobs_agent_org_count(&org) != 0
        || worker.nagents != 0
        || ngx_event_timer_rbtree.root != ngx_event_timer_rbtree.sentinel)
    {
        abort();
    }

    ngx_pushjobs_agent_unref(a);

    if (!fc.freed) {
        abort();
    }

    return 0;
}
