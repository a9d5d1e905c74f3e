
/*
 * Copyright (C) pushjobs developers
 */


/*
 * The REST API under /organizations/ORG/pushy/ and /pushy/_status.
 *
 * Every request goes through the steps of the Push Jobs 2.x server, in its
 * order: route and method (404, 405), malformed request (job body, auth
 * headers, body size: 400, 401, 413), authentication (key from the shared
 * cache or from the Chef server's principals endpoint through an in-memory
 * subrequest: 401, 403, 404, 502, 504), authorization (403, 502, 504),
 * content negotiation (406, 415), then the resource itself, read from or
 * written to PostgreSQL.  Each step either answers, or returns NGX_DONE when it
 * waits for a subrequest or a query and will go on from its callback.
 * Authentication and authorization are ngx_pushjobs_authz.c's, given the
 * org, the route's rule of who may use it and the node it names.
 *
 * The route table (ngx_pushjobs_api_routes) lives here, next to the
 * handlers it names: a route is its path, its methods, who may use it, its
 * flags, its body check and its handler, read together in one place.
 */


#include "ngx_pushjobs_module.h"


#define NGX_PUSHJOBS_ROUTE_JOBS          1
#define NGX_PUSHJOBS_ROUTE_JOB           2
#define NGX_PUSHJOBS_ROUTE_OUTPUT        3
#define NGX_PUSHJOBS_ROUTE_ABORT         4
#define NGX_PUSHJOBS_ROUTE_NODE_STATES   5
#define NGX_PUSHJOBS_ROUTE_NODE_STATE    6
#define NGX_PUSHJOBS_ROUTE_CONFIG        7
#define NGX_PUSHJOBS_ROUTE_FEED          8
#define NGX_PUSHJOBS_ROUTE_JOB_FEED      9
#define NGX_PUSHJOBS_ROUTE_AGENT         10

/* seconds after which an agent fetches its config again, as in 2.x */
#define NGX_PUSHJOBS_CONFIG_LIFETIME     3600

#define NGX_PUSHJOBS_ROUTE_STATUS        11
#define NGX_PUSHJOBS_ROUTE_AGENT_POLL    12
/* 13: /pushy/_metrics (ngx_pushjobs_module.h) */
#define NGX_PUSHJOBS_ROUTE_JOB_LINK      14
#define NGX_PUSHJOBS_ROUTE_ORG_LINK      15
#define NGX_PUSHJOBS_ROUTE_UI            16

#define NGX_HTTP_PUSHJOBS_NOT_ACCEPTABLE    406


typedef struct ngx_pushjobs_api_ctx_s  ngx_pushjobs_api_ctx_t;

typedef ngx_int_t (*ngx_pushjobs_api_handler_pt)(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
typedef ngx_int_t (*ngx_pushjobs_api_result_pt)(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, PGresult *res);


/* route flags */
#define NGX_PUSHJOBS_ROUTE_HTTP11      0x01  /* refused over HTTP/2 */
#define NGX_PUSHJOBS_ROUTE_WEBSOCKET   0x02  /* 426 unless an upgrade */
#define NGX_PUSHJOBS_ROUTE_MESSAGES    0x04  /* body capped like a frame */


typedef struct {
    ngx_uint_t                  route;

    /*
     * the path after /organizations/ORG/pushy/: ":id", ":node" and
     * ":channel" (stdout or stderr) are taken from it
     */
    char                       *seg[6];

    ngx_uint_t                  methods;
    ngx_uint_t                  authz;
    ngx_uint_t                  flags;

    /* the body's checks for a POST, before authentication */
    ngx_pushjobs_api_handler_pt  validate;

    /* the resource, once the client may have it */
    ngx_pushjobs_api_handler_pt  handler;
} ngx_pushjobs_api_route_t;


struct ngx_pushjobs_api_ctx_s {
    ngx_uint_t                  route;
    ngx_uint_t                  methods;
    ngx_uint_t                  flags;
    ngx_pushjobs_api_handler_pt  validate;
    ngx_pushjobs_api_handler_pt  handler;

    ngx_str_t                   org;
    ngx_str_t                   id;
    ngx_str_t                   node;
    ngx_str_t                   channel;
    ngx_str_t                   file;

    /* the life of a link asked for (GET …/link) */
    time_t                      link_ttl;

    ngx_str_t                   body;

    /* authentication and authorization, before the handler */
    ngx_pushjobs_authz_t        authz;

    ngx_pushjobs_pg_query_t    *query;
    ngx_pushjobs_api_result_pt  result;
};


static ngx_int_t ngx_pushjobs_api_route(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_uint_t ngx_pushjobs_api_route_match(ngx_pushjobs_api_route_t *rt,
    ngx_str_t *seg, ngx_uint_t n, ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_method_not_allowed(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static void ngx_pushjobs_api_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_pushjobs_api_read_body(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_validate_job(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_validate_abort(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_body_checked(ngx_http_request_t *r, int rc,
    pj_body_check_t *res);
static void ngx_pushjobs_api_authz_resume(ngx_http_request_t *r);
static ngx_int_t ngx_pushjobs_api_content(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_query(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, const char *sql, ngx_uint_t nparams,
    ngx_str_t *params, ngx_pushjobs_api_result_pt handler);
static void ngx_pushjobs_api_query_done(void *data, PGresult *res);
static void ngx_pushjobs_api_cleanup(void *data);
static ngx_int_t ngx_pushjobs_api_json_result(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_pushjobs_api_created(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_pushjobs_api_abort_result(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_pushjobs_api_output_result(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_pushjobs_api_feed_result(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_pushjobs_api_jobs(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_job(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_output(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_node_states(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_node_state(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_agent(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_agent_poll(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_feed(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_abort(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_metrics(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_link(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_link_result(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_pushjobs_api_link_send(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_link_url(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, ngx_str_t *job, time_t ttl, ngx_str_t *url,
    ngx_str_t *token_out, time_t *expires_out);
static ngx_int_t ngx_pushjobs_api_bearer(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, ngx_str_t *token);
static ngx_int_t ngx_pushjobs_api_ui(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_uint_t ngx_pushjobs_api_wants_page(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_base_url(ngx_http_request_t *r,
    ngx_str_t *base);
static ngx_int_t ngx_pushjobs_api_status(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_config(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_jobs_list(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx);
static ngx_int_t ngx_pushjobs_api_db_error(ngx_http_request_t *r,
    PGresult *res);
static ngx_int_t ngx_pushjobs_api_not_found(ngx_http_request_t *r);
static ngx_int_t ngx_pushjobs_api_number_arg(ngx_http_request_t *r,
    char *name, ngx_int_t min, ngx_int_t max, ngx_str_t *arg);
static ngx_uint_t ngx_pushjobs_api_valid_event_id(ngx_str_t *id);


static ngx_str_t  ngx_pushjobs_octet_stream =
    ngx_string("application/octet-stream");


/*
 * The routes under /organizations/ORG/pushy/, each with an optional
 * trailing slash; a path matching none is 404, a method not listed 405.
 */

static ngx_pushjobs_api_route_t  ngx_pushjobs_api_routes[] = {

    { NGX_PUSHJOBS_ROUTE_JOBS, { "jobs", NULL },
      NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_POST, NGX_PUSHJOBS_AUTHZ_GROUPS, 0,
      ngx_pushjobs_api_validate_job,
      ngx_pushjobs_api_jobs },

    { NGX_PUSHJOBS_ROUTE_JOB, { "jobs", ":id", NULL },
      NGX_HTTP_GET|NGX_HTTP_HEAD, NGX_PUSHJOBS_AUTHZ_GROUPS, 0, NULL,
      ngx_pushjobs_api_job },

    /* read-only links for browsers, and the pages' files */
    { NGX_PUSHJOBS_ROUTE_JOB_LINK, { "jobs", ":id", "link", NULL },
      NGX_HTTP_GET|NGX_HTTP_HEAD, NGX_PUSHJOBS_AUTHZ_GROUPS, 0, NULL,
      ngx_pushjobs_api_link },

    { NGX_PUSHJOBS_ROUTE_ORG_LINK, { "link", NULL },
      NGX_HTTP_GET|NGX_HTTP_HEAD, NGX_PUSHJOBS_AUTHZ_GROUPS, 0, NULL,
      ngx_pushjobs_api_link },

    { NGX_PUSHJOBS_ROUTE_UI, { "_ui", ":file", NULL },
      NGX_HTTP_GET|NGX_HTTP_HEAD, NGX_PUSHJOBS_AUTHZ_NONE, 0, NULL,
      ngx_pushjobs_api_ui },

    { NGX_PUSHJOBS_ROUTE_ABORT, { "jobs", ":id", "abort", NULL },
      NGX_HTTP_POST, NGX_PUSHJOBS_AUTHZ_GROUPS, 0,
      ngx_pushjobs_api_validate_abort,
      ngx_pushjobs_api_abort },

    { NGX_PUSHJOBS_ROUTE_OUTPUT,
      { "jobs", ":id", "output", ":node", ":channel", NULL },
      NGX_HTTP_GET|NGX_HTTP_HEAD, NGX_PUSHJOBS_AUTHZ_GROUPS, 0, NULL,
      ngx_pushjobs_api_output },

    { NGX_PUSHJOBS_ROUTE_NODE_STATES, { "node_states", NULL },
      NGX_HTTP_GET|NGX_HTTP_HEAD, NGX_PUSHJOBS_AUTHZ_GROUPS, 0, NULL,
      ngx_pushjobs_api_node_states },

    { NGX_PUSHJOBS_ROUTE_NODE_STATE, { "node_states", ":node", NULL },
      NGX_HTTP_GET|NGX_HTTP_HEAD, NGX_PUSHJOBS_AUTHZ_GROUPS, 0, NULL,
      ngx_pushjobs_api_node_state },

    /*
     * only the node itself, whatever the groups: 2.x let any reader have
     * a node's config, with its session key
     */
    { NGX_PUSHJOBS_ROUTE_CONFIG, { "config", ":node", NULL },
      NGX_HTTP_GET|NGX_HTTP_HEAD, NGX_PUSHJOBS_AUTHZ_NODE, 0, NULL,
      ngx_pushjobs_api_config },

    { NGX_PUSHJOBS_ROUTE_FEED, { "job_status_feed", NULL },
      NGX_HTTP_GET, NGX_PUSHJOBS_AUTHZ_GROUPS, 0, NULL,
      ngx_pushjobs_api_feed },

    { NGX_PUSHJOBS_ROUTE_JOB_FEED, { "job_status_feed", ":id", NULL },
      NGX_HTTP_GET, NGX_PUSHJOBS_AUTHZ_GROUPS, 0, NULL,
      ngx_pushjobs_api_feed },

    { NGX_PUSHJOBS_ROUTE_AGENT, { "agent", NULL },
      NGX_HTTP_GET, NGX_PUSHJOBS_AUTHZ_AGENT,
      NGX_PUSHJOBS_ROUTE_HTTP11|NGX_PUSHJOBS_ROUTE_WEBSOCKET, NULL,
      ngx_pushjobs_api_agent },

    { NGX_PUSHJOBS_ROUTE_AGENT_POLL, { "agent", "poll", NULL },
      NGX_HTTP_POST, NGX_PUSHJOBS_AUTHZ_AGENT,
      NGX_PUSHJOBS_ROUTE_HTTP11|NGX_PUSHJOBS_ROUTE_MESSAGES, NULL,
      ngx_pushjobs_api_agent_poll },

    { 0, { NULL }, 0, 0, 0, NULL, NULL }
};


ngx_int_t
ngx_pushjobs_api_handler(ngx_http_request_t *r)
{
    size_t                     max;
    ngx_int_t                    rc;
    ngx_pushjobs_api_ctx_t      *ctx;
    ngx_pushjobs_loc_conf_t     *plcf;
    ngx_pushjobs_main_conf_t    *pmcf;
    ngx_str_t                    page;
    ngx_pushjobs_metrics_req_t  *track;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);
    plcf = ngx_http_get_module_loc_conf(r, ngx_pushjobs_module);

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_pushjobs_api_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_pushjobs_module);

    track = ngx_pushjobs_metrics_track(r);
    if (track == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (plcf->serve == NGX_PUSHJOBS_LOC_STATUS) {
        ctx->route = NGX_PUSHJOBS_ROUTE_STATUS;
        ctx->methods = NGX_HTTP_GET|NGX_HTTP_HEAD;
        ctx->handler = ngx_pushjobs_api_status;

    } else if (plcf->serve == NGX_PUSHJOBS_LOC_METRICS) {
        ctx->route = NGX_PUSHJOBS_ROUTE_METRICS;
        ctx->methods = NGX_HTTP_GET|NGX_HTTP_HEAD;
        ctx->handler = ngx_pushjobs_api_metrics;

    } else if (ngx_pushjobs_api_route(r, ctx) != NGX_OK) {
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_pushjobs_api_not_found(r);
    }

    /* the routes that hold their connection are counted, not timed */

    track->route = ctx->route;
    track->timed = ctx->route != NGX_PUSHJOBS_ROUTE_FEED
                   && ctx->route != NGX_PUSHJOBS_ROUTE_JOB_FEED
                   && ctx->route != NGX_PUSHJOBS_ROUTE_AGENT
                   && ctx->route != NGX_PUSHJOBS_ROUTE_AGENT_POLL;

    if (!(r->method & ctx->methods)) {
        return ngx_pushjobs_api_method_not_allowed(r, ctx);
    }

    if (ngx_pushjobs_api_wants_page(r, ctx)) {
        /* a browser: the static page, which reads the data itself */

        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ctx->route == NGX_PUSHJOBS_ROUTE_JOB) {
            ngx_str_set(&page, "job.html");

        } else {
            ngx_str_set(&page, "jobs.html");
        }

        track->route = NGX_PUSHJOBS_ROUTE_UI;

        return ngx_pushjobs_ui_send(r, &page);
    }

#if (NGX_HTTP_V2)

    /*
     * The agent channel holds its connection (a websocket, or a long poll
     * answered when the worker has something to say): it is refused over
     * HTTP/2 before the body is read or the client authenticated.
     */

    if (r->stream && (ctx->flags & NGX_PUSHJOBS_ROUTE_HTTP11)) {
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_pushjobs_json_error(r, NGX_HTTP_VERSION_NOT_SUPPORTED, 1,
                                       "the agent channel needs HTTP/1.1");
    }

#endif

    if (ngx_pushjobs_worker == NULL) {
        ngx_http_discard_request_body(r);
        return ngx_pushjobs_json_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, 1,
                                       "push jobs is not running in this "
                                       "process");
    }

    if ((ctx->flags & NGX_PUSHJOBS_ROUTE_WEBSOCKET)
        && !ngx_pushjobs_ws_is_upgrade(r))
    {
        ngx_table_elt_t  *h;

        ngx_http_discard_request_body(r);

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Upgrade");
        ngx_str_set(&h->value, "websocket");

        return ngx_pushjobs_json_error(r, NGX_HTTP_PUSHJOBS_UPGRADE_REQUIRED,
                                       1, "this endpoint is a websocket");
    }

    if (r->method == NGX_HTTP_POST) {
        /* a long-poll body holds agent messages: capped like a frame */
        max = (ctx->flags & NGX_PUSHJOBS_ROUTE_MESSAGES)
              ? pmcf->max_message_size : pmcf->max_body_size;

        if (r->headers_in.content_length_n > (off_t) max) {
            ngx_http_discard_request_body(r);
            return ngx_pushjobs_json_error(r,
                                   NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, 0,
                                   "JSON must be no more than %uz bytes.",
                                   max);
        }

        if (r->headers_in.chunked) {
            ngx_http_discard_request_body(r);
            return ngx_pushjobs_json_error(r, NGX_HTTP_LENGTH_REQUIRED, 0,
                                           "Content-Length required");
        }
    }

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_pushjobs_api_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/* /organizations/ORG/pushy/..., matched against the route table */

static ngx_int_t
ngx_pushjobs_api_route(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    u_char                    *p, *last;
    ngx_str_t                  seg[7];
    ngx_uint_t                 n;
    ngx_pushjobs_api_route_t  *rt;

    p = r->uri.data;
    last = r->uri.data + r->uri.len;

    if (r->uri.len < sizeof("/organizations/") - 1
        || ngx_strncmp(p, "/organizations/", sizeof("/organizations/") - 1)
           != 0)
    {
        return NGX_DECLINED;
    }

    p += sizeof("/organizations/") - 1;

    if (p < last && last[-1] == '/') {
        last--;
    }

    for (n = 0; p < last; n++) {
        if (n == 7) {
            return NGX_DECLINED;
        }

        seg[n].data = p;

        while (p < last && *p != '/') {
            p++;
        }

        seg[n].len = p - seg[n].data;

        if (seg[n].len == 0 || seg[n].len > NGX_PUSHJOBS_NAME_MAX) {
            return NGX_DECLINED;
        }

        if (p < last) {
            p++;
        }
    }

    if (n < 3 || seg[1].len != 5 || ngx_strncmp(seg[1].data, "pushy", 5) != 0)
    {
        return NGX_DECLINED;
    }

    ctx->org = seg[0];

    if (!ngx_pushjobs_authz_valid_name(&ctx->org)) {
        return NGX_DECLINED;
    }

    for (rt = ngx_pushjobs_api_routes; rt->route; rt++) {
        if (ngx_pushjobs_api_route_match(rt, &seg[2], n - 2, ctx)) {
            ctx->route = rt->route;
            ctx->methods = rt->methods;
            ctx->authz.rule = rt->authz;
            ctx->flags = rt->flags;
            ctx->validate = rt->validate;
            ctx->handler = rt->handler;
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


static ngx_uint_t
ngx_pushjobs_api_route_match(ngx_pushjobs_api_route_t *rt, ngx_str_t *seg,
    ngx_uint_t n, ngx_pushjobs_api_ctx_t *ctx)
{
    char        *pat;
    size_t       len;
    ngx_uint_t   i;

    for (i = 0; rt->seg[i]; i++) {
        if (i == n) {
            return 0;
        }

        pat = rt->seg[i];

        if (ngx_strcmp(pat, ":channel") == 0) {
            if (!(seg[i].len == 6
                  && (ngx_strncmp(seg[i].data, "stdout", 6) == 0
                      || ngx_strncmp(seg[i].data, "stderr", 6) == 0)))
            {
                return 0;
            }

            continue;
        }

        if (pat[0] == ':') {
            continue;
        }

        len = ngx_strlen(pat);

        if (seg[i].len != len || ngx_strncmp(seg[i].data, pat, len) != 0) {
            return 0;
        }
    }

    if (i != n) {
        return 0;
    }

    for (i = 0; rt->seg[i]; i++) {
        pat = rt->seg[i];

        if (ngx_strcmp(pat, ":id") == 0) {
            ctx->id = seg[i];

        } else if (ngx_strcmp(pat, ":node") == 0) {
            ctx->node = seg[i];

        } else if (ngx_strcmp(pat, ":channel") == 0) {
            ctx->channel = seg[i];

        } else if (ngx_strcmp(pat, ":file") == 0) {
            ctx->file = seg[i];
        }
    }

    return 1;
}


static ngx_int_t
ngx_pushjobs_api_method_not_allowed(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx)
{
    ngx_str_t         allow, empty;
    ngx_table_elt_t  *h;

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->methods & NGX_HTTP_POST) {
        if (ctx->methods & NGX_HTTP_GET) {
            ngx_str_set(&allow, "GET, HEAD, POST");

        } else {
            ngx_str_set(&allow, "POST");
        }

    } else if (ctx->methods & NGX_HTTP_HEAD) {
        ngx_str_set(&allow, "GET, HEAD");

    } else {
        ngx_str_set(&allow, "GET");
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Allow");
    h->value = allow;

    ngx_str_null(&empty);

    return ngx_pushjobs_send_body(r, NGX_HTTP_NOT_ALLOWED, NULL, &empty);
}


static void
ngx_pushjobs_api_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_str_t                token;
    ngx_table_elt_t         *h;
    ngx_pushjobs_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_pushjobs_module);

    rc = ngx_pushjobs_api_read_body(r, ctx);

    /*
     * An answer already sent (413, 400) may have returned NGX_OK: it is
     * finalized with that code, nothing else runs.
     */

    if (rc != NGX_OK || r->header_sent) {
        goto done;
    }

    /* a browser's read-only link instead of a Chef signature */

    h = ngx_pushjobs_header(r, "Authorization");

    if (h && h->value.len >= sizeof("Bearer ") - 1
        && ngx_strncasecmp(h->value.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1) == 0
        && ctx->authz.rule != NGX_PUSHJOBS_AUTHZ_NONE)
    {
        token.data = h->value.data + sizeof("Bearer ") - 1;
        token.len = h->value.len - (sizeof("Bearer ") - 1);

        rc = ngx_pushjobs_api_bearer(r, ctx, &token);

        if (rc == NGX_OK && !r->header_sent) {
            rc = ngx_pushjobs_api_content(r, ctx);
        }

        goto done;
    }

    if (ctx->authz.rule == NGX_PUSHJOBS_AUTHZ_NONE) {
        /* unauthenticated, as in 2.x: the health check */
        rc = ngx_pushjobs_api_content(r, ctx);
        goto done;
    }

    /* malformed request: the job body first, then the auth headers */

    if (ctx->validate && r->method == NGX_HTTP_POST) {
        rc = ctx->validate(r, ctx);
        if (rc != NGX_OK || r->header_sent) {
            goto done;
        }
    }

    ctx->authz.org = ctx->org;
    ctx->authz.node = ctx->node;
    ctx->authz.body = ctx->body;
    ctx->authz.resume = ngx_pushjobs_api_authz_resume;

    rc = ngx_pushjobs_authz_start(r, &ctx->authz);

    if (rc == NGX_OK && !r->header_sent) {
        rc = ngx_pushjobs_api_content(r, ctx);
    }

done:

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
}


/* a Chef server subrequest of the authentication or authorization is done */

static void
ngx_pushjobs_api_authz_resume(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_pushjobs_api_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_pushjobs_module);

    if (ctx == NULL) {
        return;
    }

    rc = ngx_pushjobs_authz_resume(r, &ctx->authz);

    if (rc == NGX_OK && !r->header_sent) {
        rc = ngx_pushjobs_api_content(r, ctx);
    }

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
}


static ngx_int_t
ngx_pushjobs_api_read_body(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    u_char                    *p;
    size_t                     len, max;
    ssize_t                    n;
    ngx_buf_t                 *b;
    ngx_chain_t               *cl;
    ngx_pushjobs_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    max = (ctx->flags & NGX_PUSHJOBS_ROUTE_MESSAGES)
          ? pmcf->max_message_size : pmcf->max_body_size;

    ngx_str_null(&ctx->body);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        len += b->in_file ? (size_t) (b->file_last - b->file_pos)
                          : (size_t) (b->last - b->pos);
    }

    if (len > max) {
        return ngx_pushjobs_json_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, 0,
                                       "JSON must be no more than %uz bytes.",
                                       max);
    }

    cl = r->request_body->bufs;

    if (cl->next == NULL && !cl->buf->in_file) {
        ctx->body.data = cl->buf->pos;
        ctx->body.len = len;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, len + 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->body.data = p;
    ctx->body.len = len;

    for ( /* void */ ; cl; cl = cl->next) {
        b = cl->buf;

        if (!b->in_file) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                          b->file_pos);

        if (n != b->file_last - b->file_pos) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p += n;
    }

    return NGX_OK;
}


/*
 * The job body (common/job_body.c: the 2.x checks in the 2.x order, then
 * ours), before the signature as in 2.x.  No tree is built for a body
 * beyond the JSON bounds.
 */

static ngx_int_t
ngx_pushjobs_api_validate_job(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx)
{
    int              rc;
    pj_body_check_t  res;

    rc = pj_job_body_check(ctx->body.data, ctx->body.len, &res);

    return ngx_pushjobs_api_body_checked(r, rc, &res);
}


/*
 * The optional abort body: {"nodes": ["name", ...], "force": bool}, both
 * keys optional.  An empty body (or only white space) aborts the whole job
 * gracefully; it is then passed on as NULL.
 */

static ngx_int_t
ngx_pushjobs_api_validate_abort(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx)
{
    int              rc;
    size_t           i;
    pj_body_check_t  res;

    for (i = 0; i < ctx->body.len; i++) {
        if (ctx->body.data[i] != ' ' && ctx->body.data[i] != '\t'
            && ctx->body.data[i] != '\r' && ctx->body.data[i] != '\n')
        {
            break;
        }
    }

    if (i == ctx->body.len) {
        ngx_str_null(&ctx->body);
        return NGX_OK;
    }

    rc = pj_abort_body_check(ctx->body.data, ctx->body.len, &res);

    return ngx_pushjobs_api_body_checked(r, rc, &res);
}


static ngx_int_t
ngx_pushjobs_api_body_checked(ngx_http_request_t *r, int rc,
    pj_body_check_t *res)
{
    if (rc < 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == 0) {
        return NGX_OK;
    }

    if (res->detail) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "pushjobs: invalid body: %s at byte %uz",
                      res->detail, res->at);
    }

    return ngx_pushjobs_json_error(r, NGX_HTTP_BAD_REQUEST, 0, "%s",
                                   res->error);
}


static ngx_int_t
ngx_pushjobs_api_content(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    /*
     * Ids and names from the path reach PostgreSQL as text: only those
     * that can exist (a byte that is not UTF-8 would be a database error).
     */

    if (ctx->id.len && !pj_job_id_valid(ctx->id.data, ctx->id.len)) {
        return ngx_pushjobs_api_not_found(r);
    }

    if (ctx->node.len && ctx->route != NGX_PUSHJOBS_ROUTE_CONFIG
        && !pj_node_name_valid(ctx->node.data, ctx->node.len))
    {
        return ngx_pushjobs_json_error(r, NGX_HTTP_BAD_REQUEST, 0,
                                       "invalid node name supplied");
    }

    return ctx->handler(r, ctx);
}


static ngx_int_t
ngx_pushjobs_api_jobs(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    u_char                    *p;
    ngx_str_t                  params[6];
    ngx_table_elt_t           *h;
    ngx_pushjobs_main_conf_t  *pmcf;
    u_char                     buf[3][NGX_INT_T_LEN];

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    if (r->method != NGX_HTTP_POST) {
        return ngx_pushjobs_api_jobs_list(r, ctx);
    }

    h = r->headers_in.content_type;

    if (h == NULL
        || h->value.len < sizeof("application/json") - 1
        || ngx_strncasecmp(h->value.data, (u_char *) "application/json",
                           sizeof("application/json") - 1) != 0)
    {
        return ngx_pushjobs_json_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                       1, "Content-Type must be "
                                       "application/json");
    }

    params[0] = ctx->org;
    params[1] = ctx->authz.user;
    params[2] = ctx->body;

    p = ngx_sprintf(buf[0], "%T", pmcf->default_run_timeout);
    params[3].data = buf[0];
    params[3].len = p - buf[0];

    p = ngx_sprintf(buf[1], "%M", pmcf->voting_timeout);
    params[4].data = buf[1];
    params[4].len = p - buf[1];

    ngx_pushjobs_owner_timeout_param(&params[5]);

    return ngx_pushjobs_api_query(r, ctx,
                                  "SELECT pushjobs.create_job($1, $2, "
                                  "$3::jsonb, $4, $5, $6)",
                                  6, params, ngx_pushjobs_api_created);
}


static ngx_int_t
ngx_pushjobs_api_job(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    ngx_str_t   params[6], include;

    if (ngx_http_arg(r, (u_char *) "include_file",
                     sizeof("include_file") - 1, &include)
        != NGX_OK)
    {
        ngx_str_null(&include);
    }

    params[0] = ctx->org;
    params[1] = ctx->id;

    if (include.len == 4 && ngx_strncmp(include.data, "true", 4) == 0) {
        ngx_str_set(&params[2], "t");

    } else {
        ngx_str_set(&params[2], "f");
    }

    return ngx_pushjobs_api_query(r, ctx,
                                  "SELECT pushjobs.job_json($1, $2, $3)",
                                  3, params, ngx_pushjobs_api_json_result);
}


static ngx_int_t
ngx_pushjobs_api_output(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    ngx_str_t         params[6], *accept;
    ngx_table_elt_t  *h;

    accept = NULL;
    h = ngx_pushjobs_header(r, "Accept");
    if (h) {
        accept = &h->value;
    }

    if (accept == NULL
        || ngx_strlcasestrn(accept->data, accept->data + accept->len,
                            (u_char *) "application/octet-stream",
                            sizeof("application/octet-stream") - 2)
           == NULL)
    {
        return ngx_pushjobs_json_error(r,
                                       NGX_HTTP_PUSHJOBS_NOT_ACCEPTABLE,
                                       1, "output is served as "
                                       "application/octet-stream");
    }

    params[0] = ctx->org;
    params[1] = ctx->id;
    params[2] = ctx->node;
    params[3] = ctx->channel;

    return ngx_pushjobs_api_query(r, ctx,
                                  "SELECT pushjobs.job_output_b64($1, $2,"
                                  " $3, $4)",
                                  4, params,
                                  ngx_pushjobs_api_output_result);
}


static ngx_int_t
ngx_pushjobs_api_node_states(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    ngx_str_t  params[2];

    params[0] = ctx->org;

    ngx_pushjobs_owner_timeout_param(&params[1]);

    return ngx_pushjobs_api_query(r, ctx,
                                  "SELECT pushjobs.node_states_json($1,"
                                  " $2)",
                                  2, params, ngx_pushjobs_api_json_result);
}


static ngx_int_t
ngx_pushjobs_api_node_state(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    ngx_str_t  params[3];

    params[0] = ctx->org;
    params[1] = ctx->node;

    ngx_pushjobs_owner_timeout_param(&params[2]);

    return ngx_pushjobs_api_query(r, ctx,
                                  "SELECT pushjobs.node_state_json($1,"
                                  " $2, $3)",
                                  3, params, ngx_pushjobs_api_json_result);
}


static ngx_int_t
ngx_pushjobs_api_agent(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    ngx_int_t   rc;

    rc = ngx_pushjobs_agent_accept(r, &ctx->org, &ctx->authz.user);

    if (rc == NGX_DONE || rc == NGX_ERROR) {
        return rc;
    }

    return ngx_pushjobs_json_error(r, rc, 1,
                                   "cannot open the agent channel");
}


static ngx_int_t
ngx_pushjobs_api_agent_poll(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    return ngx_pushjobs_poll_handler(r, &ctx->org, &ctx->authz.user,
                                     &ctx->body);
}


static ngx_int_t
ngx_pushjobs_api_feed(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    u_char                    *p;
    ngx_str_t                  params[6];
    ngx_table_elt_t           *h;
    ngx_pushjobs_main_conf_t  *pmcf;
    u_char                     buf[3][NGX_INT_T_LEN];

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    h = ngx_pushjobs_header(r, "Accept");

    if (h == NULL
        || ngx_strlcasestrn(h->value.data, h->value.data + h->value.len,
                            (u_char *) "text/event-stream",
                            sizeof("text/event-stream") - 2)
           == NULL)
    {
        return ngx_pushjobs_json_error(r,
                                       NGX_HTTP_PUSHJOBS_NOT_ACCEPTABLE,
                                       1, "feeds are served as "
                                       "text/event-stream");
    }

    h = ngx_pushjobs_header(r, "Last-Event-ID");

    if (h && !ngx_pushjobs_api_valid_event_id(&h->value)) {
        /* an id that cannot be ours is an unknown one: from the start */
        h = NULL;
    }

    params[0] = ctx->org;

    if (ctx->route == NGX_PUSHJOBS_ROUTE_JOB_FEED) {
        params[1] = ctx->id;

        if (h) {
            params[2] = h->value;
        } else {
            ngx_str_null(&params[2]);
        }

        p = ngx_sprintf(buf[0], "%M", pmcf->feed_linger);
        params[3].data = buf[0];
        params[3].len = p - buf[0];

        return ngx_pushjobs_api_query(r, ctx,
                                      "SELECT mode, after, summary"
                                      " FROM pushjobs.feed_open($1, $2,"
                                      " $3, $4)",
                                      4, params,
                                      ngx_pushjobs_api_feed_result);
    }

    if (h) {
        params[1] = h->value;
    } else {
        ngx_str_null(&params[1]);
    }

    p = ngx_sprintf(buf[0], "%T", pmcf->org_feed_retention * 1000);
    params[2].data = buf[0];
    params[2].len = p - buf[0];

    return ngx_pushjobs_api_query(r, ctx,
                                  "SELECT after, history"
                                  " FROM pushjobs.org_feed_open($1, $2,"
                                  " $3)",
                                  3, params, ngx_pushjobs_api_feed_result);
}


static ngx_int_t
ngx_pushjobs_api_abort(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    ngx_str_t         params[5];
    ngx_table_elt_t  *h;

    h = r->headers_in.content_type;

    if (ctx->body.len
        && (h == NULL
            || h->value.len < sizeof("application/json") - 1
            || ngx_strncasecmp(h->value.data,
                               (u_char *) "application/json",
                               sizeof("application/json") - 1)
               != 0))
    {
        return ngx_pushjobs_json_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                       1, "Content-Type must be "
                                       "application/json");
    }

    params[0] = ctx->org;
    params[1] = ctx->id;
    params[2] = ctx->authz.user;
    params[3] = ctx->body;

    ngx_pushjobs_owner_timeout_param(&params[4]);

    return ngx_pushjobs_api_query(r, ctx,
                                  "SELECT outcome, doc"
                                  " FROM pushjobs.abort_job($1, $2, $3,"
                                  " $4::jsonb -> 'nodes',"
                                  " COALESCE(($4::jsonb ->> 'force')"
                                  "::boolean, false), $5)",
                                  5, params,
                                  ngx_pushjobs_api_abort_result);
}


static ngx_int_t
ngx_pushjobs_api_metrics(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    return ngx_pushjobs_metrics_handler(r);
}


static ngx_int_t
ngx_pushjobs_api_status(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    ngx_int_t                  rc;
    ngx_str_t                  params[2];
    ngx_pushjobs_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    rc = ngx_pushjobs_status_down(r);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    ngx_pushjobs_owner_timeout_param(&params[0]);

    params[1] = pmcf->incarnation;

    return ngx_pushjobs_api_query(r, ctx,
                                  "SELECT (pushjobs.status_json($1)::jsonb"
                                  " || jsonb_build_object("
                                  "'incarnation_id', $2::text))::text",
                                  2, params, ngx_pushjobs_api_json_result);
}


static ngx_int_t
ngx_pushjobs_api_query(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx,
    const char *sql, ngx_uint_t nparams, ngx_str_t *params,
    ngx_pushjobs_api_result_pt handler)
{
    ngx_http_cleanup_t  *cln;

    if (ctx->query == NULL && ctx->result == NULL) {
        cln = ngx_http_cleanup_add(r, 0);
        if (cln == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln->handler = ngx_pushjobs_api_cleanup;
        cln->data = ctx;
    }

    ctx->result = handler;

    ctx->query = ngx_pushjobs_pg_query(sql, nparams, params,
                                       ngx_pushjobs_api_query_done, r);

    if (ctx->query == NULL) {
        return ngx_pushjobs_api_db_error(r, NULL);
    }

    /* notice a client that goes away while we wait */
    r->read_event_handler = ngx_http_test_reading;

    return NGX_DONE;
}


static void
ngx_pushjobs_api_query_done(void *data, PGresult *res)
{
    ngx_http_request_t *r = data;

    ngx_int_t                rc;
    ngx_connection_t        *c;
    ngx_pushjobs_api_ctx_t  *ctx;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_pushjobs_module);

    ctx->query = NULL;

    r->read_event_handler = ngx_http_block_reading;

    if (res == NULL || (PQresultStatus(res) != PGRES_TUPLES_OK
                        && PQresultStatus(res) != PGRES_COMMAND_OK))
    {
        rc = ngx_pushjobs_api_db_error(r, res);

    } else {
        rc = ctx->result(r, ctx, res);
    }

    /* NGX_DONE: the request now belongs to an event feed */

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_pushjobs_api_cleanup(void *data)
{
    ngx_pushjobs_api_ctx_t *ctx = data;

    if (ctx->query) {
        ngx_pushjobs_pg_cancel(ctx->query);
        ctx->query = NULL;
    }
}


/* one row, one text column holding the JSON document, or NULL: 404 */

static ngx_int_t
ngx_pushjobs_api_json_result(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, PGresult *res)
{
    ngx_str_t  body;

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        return ngx_pushjobs_api_not_found(r);
    }

    body.len = PQgetlength(res, 0, 0);
    body.data = ngx_pnalloc(r->pool, body.len);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(body.data, PQgetvalue(res, 0, 0), body.len);

    return ngx_pushjobs_json_send(r, NGX_HTTP_OK, &body);
}


/* 201, Location and {"uri": …}, with the scheme and host the client used */

static ngx_int_t
ngx_pushjobs_api_created(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx,
    PGresult *res)
{
    u_char                    *p;
    ngx_int_t                  rc;
    ngx_str_t                  id, base, uri, body, link;
    ngx_table_elt_t           *h;
    ngx_pushjobs_main_conf_t  *pmcf;

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        return ngx_pushjobs_api_db_error(r, res);
    }

    id.data = (u_char *) PQgetvalue(res, 0, 0);
    id.len = PQgetlength(res, 0, 0);

    if (ngx_pushjobs_api_base_url(r, &base) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    uri.len = base.len + sizeof("/organizations//pushy/jobs/") - 1
              + ctx->org.len + id.len;

    uri.data = ngx_pnalloc(r->pool, uri.len);
    if (uri.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(uri.data, "%V/organizations/%V/pushy/jobs/%V",
                    &base, &ctx->org, &id);
    uri.len = p - uri.data;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Location");
    h->value = uri;

    /* the job's page, for a browser (none while there is no link key) */

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    rc = ngx_pushjobs_api_link_url(r, ctx, &id, pmcf->link_ttl, &link,
                                   NULL, NULL);

    if (rc == NGX_OK) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Link");
        h->value.len = link.len + sizeof("<>; rel=\"alternate\"; "
                                         "type=\"text/html\"") - 1;
        h->value.data = ngx_pnalloc(r->pool, h->value.len);
        if (h->value.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_sprintf(h->value.data, "<%V>; rel=\"alternate\"; "
                    "type=\"text/html\"", &link);

    } else if (rc != NGX_DECLINED) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    body.len = sizeof("{\"uri\":\"\"}") - 1
               + ngx_pushjobs_json_escape_len(uri.data, uri.len);
    body.data = ngx_pnalloc(r->pool, body.len);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(body.data, "{\"uri\":\"", sizeof("{\"uri\":\"") - 1);
    p = ngx_pushjobs_json_escape_copy(p, uri.data, uri.len);
    p = ngx_cpymem(p, "\"}", 2);
    body.len = p - body.data;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "pushjobs: job %V created by \"%V\" in \"%V\"", &id,
                  &ctx->authz.user, &ctx->org);

    ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_JOBS_STARTED, 1);

    return ngx_pushjobs_json_send(r, NGX_HTTP_CREATED, &body);
}


/*
 * one row (outcome, doc): no_job is a 404; not_in_job a 400 naming the node
 * (doc); stopping a 202 and stopped a 200 with the job document (doc)
 */

static ngx_int_t
ngx_pushjobs_api_abort_result(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, PGresult *res)
{
    char       *outcome;
    ngx_int_t   code;
    ngx_str_t   doc;

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        return ngx_pushjobs_api_db_error(r, res);
    }

    outcome = PQgetvalue(res, 0, 0);

    if (ngx_strcmp(outcome, "no_job") == 0) {
        return ngx_pushjobs_api_not_found(r);
    }

    if (PQgetisnull(res, 0, 1)) {
        return ngx_pushjobs_api_db_error(r, res);
    }

    if (ngx_strcmp(outcome, "not_in_job") == 0) {
        return ngx_pushjobs_json_error(r, NGX_HTTP_BAD_REQUEST, 0,
                                       "node %s is not part of job %V",
                                       PQgetvalue(res, 0, 1), &ctx->id);
    }

    if (ngx_strcmp(outcome, "stopping") == 0) {
        code = NGX_HTTP_ACCEPTED;

    } else if (ngx_strcmp(outcome, "stopped") == 0) {
        code = NGX_HTTP_OK;

    } else {
        return ngx_pushjobs_api_db_error(r, res);
    }

    doc.len = PQgetlength(res, 0, 1);
    doc.data = ngx_pnalloc(r->pool, doc.len);
    if (doc.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(doc.data, PQgetvalue(res, 0, 1), doc.len);

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "pushjobs: abort of job %V by \"%V\" in \"%V\": %i",
                  &ctx->id, &ctx->authz.user, &ctx->org, code);

    return ngx_pushjobs_json_send(r, code, &doc);
}


static ngx_int_t
ngx_pushjobs_api_output_result(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, PGresult *res)
{
    ngx_str_t  src, body;

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        return ngx_pushjobs_api_not_found(r);
    }

    src.data = (u_char *) PQgetvalue(res, 0, 0);
    src.len = PQgetlength(res, 0, 0);

    body.data = ngx_pnalloc(r->pool, ngx_base64_decoded_length(src.len) + 1);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_decode_base64(&body, &src) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_pushjobs_send_body(r, NGX_HTTP_OK, &ngx_pushjobs_octet_stream,
                                  &body);
}


static ngx_int_t
ngx_pushjobs_api_feed_result(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, PGresult *res)
{
    return ngx_pushjobs_feed_open(r, &ctx->org,
                                  ctx->route == NGX_PUSHJOBS_ROUTE_JOB_FEED
                                  ? &ctx->id : NULL,
                                  res);
}


/*
 * GET jobs, the 2.x array of every job, or with the optional filters of
 * GET jobs takes ?status=STATUS (one job status) and ?limit=N (the N most
 * recent).  A bad filter is a 400 in the job body's error shape.
 */

static ngx_int_t
ngx_pushjobs_api_jobs_list(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    ngx_int_t   rc;
    ngx_str_t   params[3], arg;
    ngx_uint_t  i;

    static ngx_str_t  statuses[] = {
        ngx_string("new"), ngx_string("voting"), ngx_string("running"),
        ngx_string("complete"), ngx_string("quorum_failed"),
        ngx_string("timed_out"), ngx_string("crashed"),
        ngx_string("aborted"), ngx_null_string
    };

    params[0] = ctx->org;
    ngx_str_null(&params[1]);
    ngx_str_null(&params[2]);

    if (ngx_http_arg(r, (u_char *) "status", sizeof("status") - 1, &arg)
        == NGX_OK)
    {
        for (i = 0; statuses[i].len; i++) {
            if (arg.len == statuses[i].len
                && ngx_strncmp(arg.data, statuses[i].data, arg.len) == 0)
            {
                params[1] = statuses[i];
                break;
            }
        }

        if (statuses[i].len == 0) {
            return ngx_pushjobs_json_error(r, NGX_HTTP_BAD_REQUEST, 0,
                                           "invalid status supplied");
        }
    }

    rc = ngx_pushjobs_api_number_arg(r, "limit", 1, 999999999, &arg);

    if (r->header_sent || (rc != NGX_OK && rc != NGX_DECLINED)) {
        return rc;
    }

    if (rc == NGX_OK) {
        params[2] = arg;
    }

    if (params[1].data == NULL && params[2].data == NULL) {
        return ngx_pushjobs_api_query(r, ctx,
                                      "SELECT pushjobs.jobs_json($1)",
                                      1, params,
                                      ngx_pushjobs_api_json_result);
    }

    return ngx_pushjobs_api_query(r, ctx,
                                  "SELECT pushjobs.jobs_json($1, $2,"
                                  " $3::integer)",
                                  3, params, ngx_pushjobs_api_json_result);
}


/*
 * GET config/NODE: the 2.x document without its ZeroMQ
 * addresses, keys and session key, plus where the agent channel is: the
 * scheme and host the node used for this request.  "interval" stays a
 * JSON float, as 2.x wrote it.
 */

static ngx_int_t
ngx_pushjobs_api_config(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    u_char                    *p, *last, interval[NGX_INT_T_LEN * 2 + 2];
    ngx_str_t                  ws, host, body;
    ngx_msec_t                 ms;
    ngx_table_elt_t           *h;
    ngx_pushjobs_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    ms = pmcf->ping_interval;
    last = ngx_sprintf(interval, "%M.%03M", ms / 1000, ms % 1000);

    while (last[-1] == '0' && last[-2] != '.') {
        last--;
    }

    h = ngx_pushjobs_header(r, "X-Forwarded-Proto");

    if (h && h->value.len == 4
        && ngx_strncasecmp(h->value.data, (u_char *) "http", 4) == 0)
    {
        ngx_str_set(&ws, "ws");

    } else if (h && h->value.len) {
        ngx_str_set(&ws, "wss");

    } else {
#if (NGX_HTTP_SSL)
        if (r->connection->ssl) {
            ngx_str_set(&ws, "wss");
        } else
#endif
        {
            ngx_str_set(&ws, "ws");
        }
    }

    host = r->headers_in.host ? r->headers_in.host->value
                              : r->headers_in.server;

    body.len = sizeof("{\"type\":\"config\",\"host\":\"\",\"node\":\"\","
                      "\"organization\":\"\",\"lifetime\":,"
                      "\"push_jobs\":{\"heartbeat\":{\"interval\":}},"
                      "\"channel\":{\"websocket\":\"://"
                      "/organizations//pushy/agent\"}}") - 1
               + ngx_pushjobs_json_escape_len(pmcf->server_name.data,
                                              pmcf->server_name.len)
               + ctx->node.len + 2 * ctx->org.len + NGX_INT_T_LEN
               + (last - interval) + ws.len
               + ngx_pushjobs_json_escape_len(host.data, host.len);

    body.data = ngx_pnalloc(r->pool, body.len);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /*
     * org and node are Chef names (checked by the router, and the node is
     * the authenticated client): no escaping.
     */

    p = ngx_cpymem(body.data, "{\"type\":\"config\",\"host\":\"",
                   sizeof("{\"type\":\"config\",\"host\":\"") - 1);
    p = ngx_pushjobs_json_escape_copy(p, pmcf->server_name.data,
                                      pmcf->server_name.len);
    p = ngx_sprintf(p, "\",\"node\":\"%V\",\"organization\":\"%V\","
                    "\"lifetime\":%d,"
                    "\"push_jobs\":{\"heartbeat\":{\"interval\":",
                    &ctx->node, &ctx->org, NGX_PUSHJOBS_CONFIG_LIFETIME);
    p = ngx_cpymem(p, interval, last - interval);
    p = ngx_sprintf(p, "}},\"channel\":{\"websocket\":\"%V://", &ws);
    p = ngx_pushjobs_json_escape_copy(p, host.data, host.len);
    p = ngx_sprintf(p, "/organizations/%V/pushy/agent\"}}", &ctx->org);

    body.len = p - body.data;

    return ngx_pushjobs_json_send(r, NGX_HTTP_OK, &body);
}


static ngx_int_t
ngx_pushjobs_api_db_error(ngx_http_request_t *r, PGresult *res)
{
    if (res == NULL) {
        return ngx_pushjobs_json_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, 1,
                                       "the push jobs database is not "
                                       "available");
    }

    return ngx_pushjobs_json_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR, 1,
                                   "internal error");
}


static ngx_int_t
ngx_pushjobs_api_not_found(ngx_http_request_t *r)
{
    return ngx_pushjobs_json_error(r, NGX_HTTP_NOT_FOUND, 1, "not found");
}


/*
 * A numeric query argument: NGX_DECLINED when absent; NGX_OK with its text
 * in *arg when it is decimal digits, no more of them than max has, with a
 * value in min..max; else a 400 "invalid NAME supplied" in the job body's
 * error shape is sent, and what sending it returned is returned.
 */

static ngx_int_t
ngx_pushjobs_api_number_arg(ngx_http_request_t *r, char *name,
    ngx_int_t min, ngx_int_t max, ngx_str_t *arg)
{
    size_t     digits;
    ngx_int_t  n, m;

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), arg) != NGX_OK) {
        return NGX_DECLINED;
    }

    for (digits = 1, m = max; m >= 10; m /= 10) {
        digits++;
    }

    n = (arg->len <= digits) ? ngx_atoi(arg->data, arg->len) : NGX_ERROR;

    if (n == NGX_ERROR || n < min || n > max) {
        return ngx_pushjobs_json_error(r, NGX_HTTP_BAD_REQUEST, 0,
                                       "invalid %s supplied", name);
    }

    return NGX_OK;
}


/* Last-Event-ID: ours are "job-N" and "org-N"; short printable ASCII. */

static ngx_uint_t
ngx_pushjobs_api_valid_event_id(ngx_str_t *id)
{
    ngx_uint_t  i;

    if (id->len > 64) {
        return 0;
    }

    for (i = 0; i < id->len; i++) {
        if (id->data[i] < 0x20 || id->data[i] > 0x7e) {
            return 0;
        }
    }

    return 1;
}


ngx_int_t
ngx_pushjobs_status_handler(ngx_http_request_t *r)
{
    return ngx_pushjobs_api_handler(r);
}


/*
 * The scheme and host the client used, "https://chef.example.com": for
 * the URLs the API answers with.
 */

static ngx_int_t
ngx_pushjobs_api_base_url(ngx_http_request_t *r, ngx_str_t *base)
{
    ngx_str_t         scheme, host;
    ngx_table_elt_t  *h;

    h = ngx_pushjobs_header(r, "X-Forwarded-Proto");

    if (h && h->value.len) {
        scheme = h->value;

    } else {
#if (NGX_HTTP_SSL)
        if (r->connection->ssl) {
            ngx_str_set(&scheme, "https");
        } else
#endif
        {
            ngx_str_set(&scheme, "http");
        }
    }

    if (r->headers_in.host) {
        host = r->headers_in.host->value;

    } else {
        host = r->headers_in.server;
    }

    base->len = scheme.len + sizeof("://") - 1 + host.len;
    base->data = ngx_pnalloc(r->pool, base->len);
    if (base->data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(base->data, "%V://%V", &scheme, &host);

    return NGX_OK;
}


/*
 * A browser asking for a job or the job list, not an API client: the
 * page.  API clients sign (X-Ops-*) or hold a link (Authorization) and ask
 * for JSON; a browser's navigation accepts text/html.
 */

static ngx_uint_t
ngx_pushjobs_api_wants_page(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx)
{
    ngx_table_elt_t  *h;

    if ((ctx->route != NGX_PUSHJOBS_ROUTE_JOB
         && ctx->route != NGX_PUSHJOBS_ROUTE_JOBS)
        || !(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))
        || ngx_pushjobs_header(r, "X-Ops-Sign")
        || ngx_pushjobs_header(r, "X-Ops-UserId")
        || ngx_pushjobs_header(r, "Authorization"))
    {
        return 0;
    }

    h = ngx_pushjobs_header(r, "Accept");

    return h && ngx_strlcasestrn(h->value.data, h->value.data + h->value.len,
                                 (u_char *) "text/html",
                                 sizeof("text/html") - 1 - 1)
                != NULL;
}


static ngx_int_t
ngx_pushjobs_api_ui(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    return ngx_pushjobs_ui_send(r, &ctx->file);
}


/*
 * A request holding a link (Authorization: Bearer TOKEN): it may read
 * the job the link is for, or any job of the org and the org's list and
 * feed for an org link; nothing else.  The token is never logged.
 */

static ngx_int_t
ngx_pushjobs_api_bearer(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx,
    ngx_str_t *token)
{
    ngx_int_t    rc;
    ngx_str_t    job;
    const char  *err;

    while (token->len && token->data[0] == ' ') {
        token->data++;
        token->len--;
    }

    if (r->method == NGX_HTTP_POST
        || (ctx->route != NGX_PUSHJOBS_ROUTE_JOB
            && ctx->route != NGX_PUSHJOBS_ROUTE_JOBS
            && ctx->route != NGX_PUSHJOBS_ROUTE_OUTPUT
            && ctx->route != NGX_PUSHJOBS_ROUTE_JOB_FEED
            && ctx->route != NGX_PUSHJOBS_ROUTE_FEED))
    {
        return ngx_pushjobs_json_error(r, NGX_HTTP_FORBIDDEN, 1,
                                       "a job link only reads jobs");
    }

    err = NULL;

    rc = ngx_pushjobs_link_check(token, &ctx->org, &job, &err);

    if (rc == NGX_AGAIN) {
        return ngx_pushjobs_json_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, 1,
                                       "job links are not available yet, "
                                       "try again");
    }

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "pushjobs: job link refused in \"%V\": %s",
                      &ctx->org, err);

        return ngx_pushjobs_json_error(r, NGX_HTTP_UNAUTHORIZED, 1, "%s",
                                       err);
    }

    if (!(job.len == 1 && job.data[0] == '*')) {

        if (ctx->route == NGX_PUSHJOBS_ROUTE_JOBS
            || ctx->route == NGX_PUSHJOBS_ROUTE_FEED)
        {
            return ngx_pushjobs_json_error(r, NGX_HTTP_FORBIDDEN, 1,
                                           "this link is for one job");
        }

        if (job.len != ctx->id.len
            || ngx_strncmp(job.data, ctx->id.data, job.len) != 0)
        {
            return ngx_pushjobs_json_error(r, NGX_HTTP_FORBIDDEN, 1,
                                           "this link is for another job");
        }
    }

    ngx_str_set(&ctx->authz.user, "(link)");

    return NGX_OK;
}


/*
 * GET jobs/ID/link and GET link: a reader's read-only link for a browser,
 * {"url","token","expires_at"}, valid ?ttl= seconds (1 to 7 days,
 * default pushjobs_link_ttl).
 */

static ngx_int_t
ngx_pushjobs_api_link(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx)
{
    ngx_int_t                  rc;
    ngx_str_t                  arg, params[2];
    ngx_pushjobs_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    ctx->link_ttl = pmcf->link_ttl;

    rc = ngx_pushjobs_api_number_arg(r, "ttl", 1, 604800, &arg);

    if (rc == NGX_OK) {
        ctx->link_ttl = ngx_atoi(arg.data, arg.len);

    } else if (rc != NGX_DECLINED) {
        return rc;
    }

    if (ctx->route == NGX_PUSHJOBS_ROUTE_ORG_LINK) {
        return ngx_pushjobs_api_link_send(r, ctx);
    }

    params[0] = ctx->org;
    params[1] = ctx->id;

    return ngx_pushjobs_api_query(r, ctx,
                                  "SELECT 1 FROM pushjobs.jobs"
                                  " WHERE org = $1 AND id = $2",
                                  2, params, ngx_pushjobs_api_link_result);
}


static ngx_int_t
ngx_pushjobs_api_link_result(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx, PGresult *res)
{
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        return ngx_pushjobs_api_db_error(r, res);
    }

    if (PQntuples(res) != 1) {
        return ngx_pushjobs_api_not_found(r);
    }

    return ngx_pushjobs_api_link_send(r, ctx);
}


static ngx_int_t
ngx_pushjobs_api_link_send(ngx_http_request_t *r,
    ngx_pushjobs_api_ctx_t *ctx)
{
    u_char     *p;
    time_t      expires;
    ngx_tm_t    tm;
    ngx_int_t   rc;
    ngx_str_t   url, token, body, job;

    if (ctx->route == NGX_PUSHJOBS_ROUTE_JOB_LINK) {
        job = ctx->id;

    } else {
        ngx_str_null(&job);
    }

    rc = ngx_pushjobs_api_link_url(r, ctx, &job, ctx->link_ttl, &url, &token,
                                   &expires);

    if (rc == NGX_DECLINED) {
        return ngx_pushjobs_json_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, 1,
                                       "job links are not available yet, "
                                       "try again");
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_gmtime(expires, &tm);

    body.len = sizeof("{\"url\":\"\",\"token\":\"\",\"expires_at\":\""
                      "YYYY-MM-DDTHH:MM:SSZ\"}") - 1
               + ngx_pushjobs_json_escape_len(url.data, url.len)
               + token.len;
    body.data = ngx_pnalloc(r->pool, body.len);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(body.data, "{\"url\":\"", sizeof("{\"url\":\"") - 1);
    p = ngx_pushjobs_json_escape_copy(p, url.data, url.len);
    p = ngx_sprintf(p, "\",\"token\":\"%V\",\"expires_at\":"
                    "\"%4d-%02d-%02dT%02d:%02d:%02dZ\"}", &token,
                    tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                    tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec);
    body.len = p - body.data;

    return ngx_pushjobs_json_send(r, NGX_HTTP_OK, &body);
}


/*
 * The page's URL with a new token in its fragment: the job's page, or the
 * org's list for an empty job.  NGX_DECLINED while there is no link key.
 */

static ngx_int_t
ngx_pushjobs_api_link_url(ngx_http_request_t *r, ngx_pushjobs_api_ctx_t *ctx,
    ngx_str_t *job, time_t ttl, ngx_str_t *url, ngx_str_t *token_out,
    time_t *expires_out)
{
    u_char     *p;
    time_t      expires;
    ngx_int_t   rc;
    ngx_str_t   base, token;

    expires = ngx_time() + ttl;

    rc = ngx_pushjobs_link_make(r->pool, &ctx->org, job, expires, &token);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_pushjobs_api_base_url(r, &base) != NGX_OK) {
        return NGX_ERROR;
    }

    url->len = base.len + sizeof("/organizations//pushy/jobs/#token=") - 1
               + ctx->org.len + job->len + token.len;
    url->data = ngx_pnalloc(r->pool, url->len);
    if (url->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(url->data, "%V/organizations/%V/pushy/jobs", &base,
                    &ctx->org);

    if (job->len) {
        p = ngx_sprintf(p, "/%V", job);
    }

    p = ngx_sprintf(p, "#token=%V", &token);
    url->len = p - url->data;

    if (token_out) {
        *token_out = token;
    }

    if (expires_out) {
        *expires_out = expires;
    }

    return NGX_OK;
}

