
/*
 * Copyright (C) pushjobs developers
 */


/*
 * Authentication and authorization of a REST request, in the order of the
 * Push Jobs 2.x server: the auth headers (400, 401), the client's key from
 * the shared cache or from the Chef server's principals endpoint (401, 403,
 * 404, 502, 504), its signature, then the route's rule (403, 502, 504):
 * any client as itself, only the client named by the path, or the
 * membership of a group read from the Chef server.  ngx_pushjobs_auth.c is
 * the signing protocol itself; this file is the flow around it.
 *
 * The Chef server is asked through in-memory subrequests.  The state of the
 * flow is an ngx_pushjobs_authz_t that the caller embeds in its own request
 * context and fills with what the route requires: authz neither allocates
 * a context of its own nor takes the module's context slot, which the
 * handlers that run after it (feeds, agent channels) set to theirs.  The
 * subrequest's callback, the deadline's timer and the pool cleanup reach
 * the struct through their data pointers; only the parent's write event,
 * which gets the request alone, goes through the caller: it is the resume
 * handler the caller gives, which finds its context and calls
 * ngx_pushjobs_authz_resume().  An access-phase handler could take this
 * over by keeping the struct in its own module's context and resuming the
 * phases from its resume handler.
 *
 * ngx_pushjobs_authz_start() and ngx_pushjobs_authz_resume() return
 * NGX_OK with nothing sent (r->header_sent clear) when the client may have
 * the resource; NGX_DONE while a subrequest is outstanding, the resume
 * handler being called when it is done; anything else has answered the
 * request, or is a status for nginx to answer: the caller finalizes the
 * request with it.
 */


#include "ngx_pushjobs_module.h"

#include <yajl/yajl_tree.h>


/* what the request waits for, when a subrequest or a query is out */
#define NGX_PUSHJOBS_AUTHZ_STEP_PRINCIPAL  1
#define NGX_PUSHJOBS_AUTHZ_STEP_GROUP      2
#define NGX_PUSHJOBS_AUTHZ_STEP_STORED     3


static ngx_uint_t ngx_pushjobs_authz_chef_credit(ngx_http_request_t *r,
    ngx_uint_t force);
static ngx_int_t ngx_pushjobs_authz_fetch_stored(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx);
static void ngx_pushjobs_authz_stored_done(void *data, PGresult *res);
static void ngx_pushjobs_authz_stored_cleanup(void *data);
static void ngx_pushjobs_authz_store(ngx_pushjobs_authz_t *ctx);
static void ngx_pushjobs_authz_stored_put_done(void *data, PGresult *res);
static ngx_int_t ngx_pushjobs_authz_fetch_principal(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx);
static ngx_int_t ngx_pushjobs_authz_chef_get(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx, ngx_str_t *path, ngx_uint_t sign);
static ngx_int_t ngx_pushjobs_authz_chef_done(ngx_http_request_t *sr,
    void *data, ngx_int_t rc);
static void ngx_pushjobs_authz_chef_timeout(ngx_event_t *ev);
static void ngx_pushjobs_authz_chef_cleanup(void *data);
static ngx_int_t ngx_pushjobs_authz_chef_failed(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx, ngx_str_t *what, const char *reason);
static ngx_int_t ngx_pushjobs_authz_principal_result(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx);
static ngx_int_t ngx_pushjobs_authz_principal_failed(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx, const char *reason);
static ngx_int_t ngx_pushjobs_authz_verify(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx);
static ngx_int_t ngx_pushjobs_authz_authorize(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx);
static ngx_int_t ngx_pushjobs_authz_group_fetch(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx, ngx_str_t *group, ngx_uint_t top);
static ngx_int_t ngx_pushjobs_authz_group_failed(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx, const char *reason);
static ngx_int_t ngx_pushjobs_authz_group_result(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx);
static ngx_int_t ngx_pushjobs_authz_group_next(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx);
static ngx_int_t ngx_pushjobs_authz_forbidden(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx);
static ngx_int_t ngx_pushjobs_authz_add_header(ngx_http_request_t *r,
    ngx_list_t *headers, const char *name, ngx_str_t *value);


/*
 * The auth headers, then the client's key: from the shared cache, else
 * from the Chef server.
 */

ngx_int_t
ngx_pushjobs_authz_start(ngx_http_request_t *r, ngx_pushjobs_authz_t *ctx)
{
    ngx_int_t                  rc;
    ngx_str_t                  err;
    ngx_pushjobs_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    ctx->request = r;

    rc = ngx_pushjobs_auth_parse(r, &ctx->auth, pmcf->clock_skew, &err);

    if (rc != NGX_OK) {
        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_pushjobs_json_error(r, rc, 1, "%V", &err);
    }

    ctx->user = ctx->auth.user_id;

    if (!ngx_pushjobs_authz_valid_name(&ctx->auth.user_id)) {
        return ngx_pushjobs_json_error(r, NGX_HTTP_UNAUTHORIZED, 1,
                                       "Failed to authenticate as '%V'. "
                                       "Ensure that your node_name and "
                                       "client key are correct.",
                                       &ctx->auth.user_id);
    }

    rc = ngx_pushjobs_keys_lookup(r, pmcf->keys_zone, pmcf->keys_ttl, 0,
                                  &ctx->org, &ctx->auth.user_id,
                                  &ctx->principals);

    if (rc == NGX_OK) {
        ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_KEY_HITS, 1);
        ctx->cached = 1;
        return ngx_pushjobs_authz_verify(r, ctx);
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_KEY_MISSES, 1);

    return ngx_pushjobs_authz_fetch_stored(r, ctx);
}


/* the parent's write event, through the caller's resume handler */

ngx_int_t
ngx_pushjobs_authz_resume(ngx_http_request_t *r, ngx_pushjobs_authz_t *ctx)
{
    if (!ctx->sr_done) {
        return NGX_DONE;
    }

    ctx->sr_done = 0;
    r->write_event_handler = ngx_http_request_empty_handler;

    if (ctx->step == NGX_PUSHJOBS_AUTHZ_STEP_GROUP) {
        return ngx_pushjobs_authz_group_result(r, ctx);
    }

    if (ctx->step == NGX_PUSHJOBS_AUTHZ_STEP_STORED && !ctx->from_store) {

        if (!ngx_pushjobs_authz_chef_credit(r, ctx->stored_stale.len == 0)) {
            /* a storm: the stale key stands in, the Chef server is spared */
            ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_KEY_SPARED, 1);

            ctx->sr_status = NGX_HTTP_OK;
            ctx->sr_body = ctx->stored_stale;
            ctx->stored_age = ctx->stored_stale_age;
            ctx->from_store = 1;

            return ngx_pushjobs_authz_principal_result(r, ctx);
        }

        /* PostgreSQL has none (or could not say): the Chef server */
        return ngx_pushjobs_authz_fetch_principal(r, ctx);
    }

    return ngx_pushjobs_authz_principal_result(r, ctx);
}


/*
 * Whether the worker may ask the Chef server for a key now: a token bucket
 * of keys_rate, a second's worth deep, empty when the worker starts (a
 * restart is when the storm comes).  Without a stale key to stand in
 * (force) the Chef server is asked anyway, and the request still counts.
 */

static ngx_uint_t
ngx_pushjobs_authz_chef_credit(ngx_http_request_t *r, ngx_uint_t force)
{
    uint64_t                   depth, earned;
    ngx_msec_t                 elapsed;
    ngx_pushjobs_main_conf_t  *pmcf;

    static uint64_t            credit;      /* in millionths of a request */
    static ngx_msec_t          last;
    static ngx_uint_t          started;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    if (!started) {
        started = 1;
        last = ngx_current_msec;
    }

    elapsed = ngx_current_msec - last;
    last = ngx_current_msec;

    /* keys_rate is in thousandths of a request per second */
    depth = ngx_max((uint64_t) pmcf->keys_rate * 1000, 1000000);
    earned = (uint64_t) ngx_min(elapsed, 1000) * pmcf->keys_rate;

    credit = ngx_min(credit + earned, depth);

    if (credit >= 1000000) {
        credit -= 1000000;
        return 1;
    }

    if (force) {
        credit = 0;
        return 1;
    }

    return 0;
}


/*
 * A key the front end's cache does not have: first what PostgreSQL keeps
 * of the Chef server's answers (any front end stored it, within the
 * cache's time to live), so that an empty cache (a restart) does not send
 * every agent's request to the Chef server.  Resumed through the caller's
 * resume handler, like a subrequest.
 *
 * A key past its ttl, within keys_stale, comes back too: it stands in when
 * the Chef server cannot be asked (stale-if-error) and when this worker
 * has already asked it for keys at pushjobs_key_zone's rate (a restart
 * storm of agents connected for longer than the ttl).  As with a cached
 * key, a signature that does not verify with it asks the Chef server.
 */

static ngx_int_t
ngx_pushjobs_authz_fetch_stored(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx)
{
    u_char                     buf[NGX_TIME_T_LEN], stale[NGX_TIME_T_LEN];
    ngx_str_t                  params[4];
    ngx_http_cleanup_t        *cln;
    ngx_pushjobs_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    if (!ctx->stored_cleanup) {
        cln = ngx_http_cleanup_add(r, 0);
        if (cln == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln->handler = ngx_pushjobs_authz_stored_cleanup;
        cln->data = ctx;
        ctx->stored_cleanup = 1;
    }

    params[0] = ctx->org;
    params[1] = ctx->auth.user_id;
    params[2].data = buf;
    params[2].len = ngx_sprintf(buf, "%T", pmcf->keys_ttl) - buf;
    params[3].data = stale;
    params[3].len = ngx_sprintf(stale, "%T", pmcf->keys_stale) - stale;

    ctx->stored_query = ngx_pushjobs_pg_query("SELECT status, body, age FROM"
                                              " pushjobs.principal_get("
                                              "$1, $2, $3, $4)",
                                              4, params,
                                              ngx_pushjobs_authz_stored_done,
                                              ctx);

    if (ctx->stored_query == NULL) {
        /* PostgreSQL is down: the Chef server still answers */
        return ngx_pushjobs_authz_fetch_principal(r, ctx);
    }

    ctx->step = NGX_PUSHJOBS_AUTHZ_STEP_STORED;

    return NGX_DONE;
}


static void
ngx_pushjobs_authz_stored_done(void *data, PGresult *res)
{
    ngx_pushjobs_authz_t *ctx = data;

    time_t                     age;
    ngx_int_t                  status;
    ngx_str_t                  body;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    ngx_pushjobs_main_conf_t  *pmcf;

    r = ctx->request;
    c = r->connection;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    ctx->stored_query = NULL;
    ctx->from_store = 0;

    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1
        && PQnfields(res) == 3)
    {
        status = ngx_atoi((u_char *) PQgetvalue(res, 0, 0),
                          PQgetlength(res, 0, 0));
        age = ngx_atotm((u_char *) PQgetvalue(res, 0, 2),
                        PQgetlength(res, 0, 2));

        body.len = PQgetlength(res, 0, 1);
        body.data = ngx_pnalloc(r->pool, body.len + 1);

        if (body.data && age != NGX_ERROR
            && (status == NGX_HTTP_OK || status == NGX_HTTP_NOT_FOUND))
        {
            ngx_memcpy(body.data, PQgetvalue(res, 0, 1), body.len);

            if (age < pmcf->keys_ttl) {
                ctx->sr_body = body;
                ctx->sr_status = status;
                ctx->stored_age = age;
                ctx->from_store = 1;

            } else if (status == NGX_HTTP_OK) {
                ctx->stored_stale = body;
                ctx->stored_stale_age = age;
            }
        }
    }

    ctx->sr_done = 1;

    ctx->resume(r);

    ngx_http_run_posted_requests(c);
}


static void
ngx_pushjobs_authz_stored_cleanup(void *data)
{
    ngx_pushjobs_authz_t *ctx = data;

    if (ctx->stored_query) {
        ngx_pushjobs_pg_cancel(ctx->stored_query);
        ctx->stored_query = NULL;
    }
}


/* The Chef server's answer, kept for the other workers and front ends. */

static void
ngx_pushjobs_authz_store(ngx_pushjobs_authz_t *ctx)
{
    u_char      buf[NGX_INT_T_LEN];
    ngx_str_t   params[4];

    params[0] = ctx->org;
    params[1] = ctx->auth.user_id;
    params[2].data = buf;
    params[2].len = ngx_sprintf(buf, "%ui", ctx->sr_status) - buf;
    params[3] = ctx->sr_body;

    if (ngx_pushjobs_pg_query("SELECT pushjobs.principal_put($1, $2, $3, $4)",
                              4, params, ngx_pushjobs_authz_stored_put_done,
                              NULL)
        == NULL)
    {
        ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                      "pushjobs: could not keep the principal \"%V\" of "
                      "\"%V\" in PostgreSQL", &ctx->auth.user_id,
                      &ctx->org);
    }
}


static void
ngx_pushjobs_authz_stored_put_done(void *data, PGresult *res)
{
    /* a failure is logged by the pool; the next miss asks Chef again */
}


static ngx_int_t
ngx_pushjobs_authz_fetch_principal(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx)
{
    u_char     *p;
    ngx_int_t   rc;
    ngx_str_t   path;

    path.len = sizeof("/organizations//principals/") - 1 + ctx->org.len
               + ctx->auth.user_id.len;

    path.data = ngx_pnalloc(r->pool, path.len);
    if (path.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(path.data, "/organizations/%V/principals/%V", &ctx->org,
                    &ctx->auth.user_id);
    path.len = p - path.data;

    ctx->step = NGX_PUSHJOBS_AUTHZ_STEP_PRINCIPAL;
    r->write_event_handler = ctx->resume;

    rc = ngx_pushjobs_authz_chef_get(r, ctx, &path, 0);

    if (rc == NGX_DECLINED) {
        r->write_event_handler = ngx_http_request_empty_handler;
        return ngx_pushjobs_authz_principal_failed(r, ctx, NULL);
    }

    return rc;
}


/*
 * GET a Chef server API path through the internal location that proxies
 * to the Chef server (pushjobs_chef_location), in memory.  The subrequest
 * carries only the headers set here, never the client's.  The parent
 * resumes in its write_event_handler.  All the Chef requests of one
 * request share one deadline, pushjobs_chef_timeout after the first:
 * NGX_DECLINED, and no subrequest, once it has passed.
 */

static ngx_int_t
ngx_pushjobs_authz_chef_get(ngx_http_request_t *r, ngx_pushjobs_authz_t *ctx,
    ngx_str_t *path, ngx_uint_t sign)
{
    u_char                       *p;
    ngx_str_t                     uri, value, method, empty;
    ngx_uint_t                    i;
    ngx_array_t                   signed_headers;
    ngx_keyval_t                 *kv;
    ngx_msec_int_t                left;
    ngx_pool_cleanup_t           *cln;
    ngx_http_request_t           *sr;
    ngx_pushjobs_main_conf_t     *pmcf;
    ngx_http_post_subrequest_t   *ps;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    if (!ctx->chef_armed) {
        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln->handler = ngx_pushjobs_authz_chef_cleanup;
        cln->data = ctx;

        ctx->chef_timer.handler = ngx_pushjobs_authz_chef_timeout;
        ctx->chef_timer.data = ctx;
        ctx->chef_timer.log = r->connection->log;

        /*
         * Not cancelable, as the proxy's own timers of the subrequest are
         * not: a worker told to exit waits for it (pushjobs_chef_timeout at
         * most) and answers the request, rather than exit with the request
         * and its upstream connection open.
         */
        ctx->chef_timer.cancelable = 0;

        ctx->chef_deadline = ngx_current_msec + pmcf->chef_timeout;
        ctx->chef_armed = 1;
    }

    left = (ngx_msec_int_t) (ctx->chef_deadline - ngx_current_msec);

    if (ctx->chef_timedout || left <= 0) {
        ctx->chef_timedout = 1;
        ctx->sr_status = NGX_HTTP_GATEWAY_TIME_OUT;
        return NGX_DECLINED;
    }

    uri.len = pmcf->chef_location.len + path->len;
    uri.data = ngx_pnalloc(r->pool, uri.len);
    if (uri.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(uri.data, pmcf->chef_location.data,
                   pmcf->chef_location.len);
    ngx_memcpy(p, path->data, path->len);

    ps = ngx_palloc(r->pool, sizeof(ngx_http_post_subrequest_t));
    if (ps == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ps->handler = ngx_pushjobs_authz_chef_done;
    ps->data = ctx;

    ctx->sr_done = 0;
    ctx->sr_status = 0;
    ngx_str_null(&ctx->sr_body);

    if (ngx_http_subrequest(r, &uri, NULL, &sr, ps,
                            NGX_HTTP_SUBREQUEST_IN_MEMORY
                            |NGX_HTTP_SUBREQUEST_WAITED)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    sr->method = NGX_HTTP_GET;
    sr->method_name = ngx_http_core_get_method;

    ctx->sr = sr;
    ctx->sr_start = ngx_current_msec;
    ngx_add_timer(&ctx->chef_timer, (ngx_msec_t) left);

    /* no client body and no client headers go to the Chef server */

    sr->request_body = ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t));
    if (sr->request_body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memzero(&sr->headers_in, sizeof(ngx_http_headers_in_t));
    sr->headers_in.content_length_n = -1;
    sr->headers_in.keep_alive_n = -1;

    if (ngx_list_init(&sr->headers_in.headers, r->pool, 8,
                      sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&value, "application/json");
    if (ngx_pushjobs_authz_add_header(r, &sr->headers_in.headers, "Accept",
                                    &value)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!sign) {
        ngx_str_set(&value, "1");

        if (ngx_pushjobs_authz_add_header(r, &sr->headers_in.headers,
                                        "X-Ops-Server-API-Version", &value)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_DONE;
    }

    /* as the Chef superuser, as 2.x did to read groups */

    if (ngx_array_init(&signed_headers, r->pool, 8, sizeof(ngx_keyval_t))
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&method, "GET");
    ngx_str_null(&empty);

    if (ngx_pushjobs_auth_sign(r->pool, pmcf->chef_key, &pmcf->chef_user,
                               &method, path, &empty, &signed_headers)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    kv = signed_headers.elts;

    for (i = 0; i < signed_headers.nelts; i++) {
        kv[i].key.data[kv[i].key.len] = '\0';

        if (ngx_pushjobs_authz_add_header(r, &sr->headers_in.headers,
                                        (char *) kv[i].key.data,
                                        &kv[i].value)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_pushjobs_authz_chef_done(ngx_http_request_t *sr, void *data, ngx_int_t rc)
{
    ngx_pushjobs_authz_t *ctx = data;

    ngx_buf_t   *b;
    ngx_uint_t   first;

    /* called again if nginx makes an error page of rc */

    first = (ctx->sr != NULL);

    ctx->sr_done = 1;
    ctx->sr = NULL;
    ctx->sr_status = sr->headers_out.status;

    if (ctx->chef_timer.timer_set) {
        ngx_del_timer(&ctx->chef_timer);
    }

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        ctx->sr_status = rc;

    } else if (rc == NGX_ERROR || ctx->sr_status == 0) {
        if (ctx->sr_status == 0 || ctx->sr_status == NGX_HTTP_OK) {
            ctx->sr_status = NGX_HTTP_BAD_GATEWAY;
        }
    }

    if (ctx->chef_timedout) {
        ctx->sr_status = NGX_HTTP_GATEWAY_TIME_OUT;
    }

    if (first) {
        ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_CHEF
                                 + (ctx->chef_timedout ? 2
                                    : ctx->sr_status >= 500 ? 1 : 0), 1);
        ngx_pushjobs_metrics_observe(NGX_PUSHJOBS_H_CHEF,
                                     (ngx_msec_int_t) (ngx_current_msec
                                                       - ctx->sr_start));
    }

    if (sr->out && sr->out->buf) {
        b = sr->out->buf;
        ctx->sr_body.data = b->pos;
        ctx->sr_body.len = b->last - b->pos;
    }

    return rc;
}


/*
 * The deadline passed while a subrequest waits for the Chef server: the
 * subrequest's upstream connection is timed out as its own timers would
 * do it (the proxy's timeouts are per read and per connect, not per
 * request), so that the subrequest ends with 504 through the usual path
 * and the parent answers from chef_done's result.  The timer is armed
 * again first in case that did not end it (another upstream server tried,
 * or no connection yet): the request, and the timer with it, may be gone
 * once the upstream's handler returns.
 */

static void
ngx_pushjobs_authz_chef_timeout(ngx_event_t *ev)
{
    ngx_connection_t        *c;
    ngx_http_request_t      *r, *sr;
    ngx_http_upstream_t     *u;
    ngx_pushjobs_authz_t    *ctx;

    ctx = ev->data;
    r = ctx->request;

    if (ctx->sr_done || ctx->sr == NULL) {
        return;
    }

    if (!ctx->chef_timedout) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "pushjobs: the Chef server did not answer within "
                      "pushjobs_chef_timeout");
        ctx->chef_timedout = 1;
    }

    sr = ctx->sr;
    u = sr->upstream;

    ngx_add_timer(ev, 100);

    if (u == NULL || u->peer.connection == NULL) {
        return;
    }

    c = u->peer.connection;

    c->read->timedout = 1;
    c->write->timedout = 1;

    c->read->handler(c->read);
}


static void
ngx_pushjobs_authz_chef_cleanup(void *data)
{
    ngx_pushjobs_authz_t *ctx = data;

    if (ctx->chef_timer.timer_set) {
        ngx_del_timer(&ctx->chef_timer);
    }
}


/*
 * The Chef server could not be asked for what (a key, a group): 504 when
 * the deadline passed, else 502; never 401 or 403, which would say that
 * the Chef server answered.  The message keeps 2.x's prefix.
 */

static ngx_int_t
ngx_pushjobs_authz_chef_failed(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx, ngx_str_t *what, const char *reason)
{
    ngx_uint_t  status;

    status = (ctx->sr_status == NGX_HTTP_GATEWAY_TIME_OUT)
             ? NGX_HTTP_GATEWAY_TIME_OUT : NGX_HTTP_BAD_GATEWAY;

    if (reason == NULL && status == NGX_HTTP_GATEWAY_TIME_OUT) {
        reason = "timed out";
    }

    if (reason) {
        return ngx_pushjobs_json_error(r, status, 1,
                                       "Failed to connect to erchef to get "
                                       "%V: %s", what, reason);
    }

    return ngx_pushjobs_json_error(r, status, 1,
                                   "Failed to connect to erchef to get %V: "
                                   "status %ui", what, ctx->sr_status);
}


/*
 * Stale-if-error: a key past its ttl (within keys_stale) still verifies
 * when the Chef server cannot be asked; else 502 or 504.
 */

static ngx_int_t
ngx_pushjobs_authz_principal_failed(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx, const char *reason)
{
    ngx_int_t                  rc;
    ngx_str_t                  what;
    ngx_pushjobs_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    if (!ctx->refetched) {
        rc = ngx_pushjobs_keys_lookup(r, pmcf->keys_zone, pmcf->keys_ttl, 1,
                                      &ctx->org, &ctx->auth.user_id,
                                      &ctx->principals);

        if (rc == NGX_DECLINED && ctx->stored_stale.len) {
            /* not in this front end's cache, but PostgreSQL has it */
            rc = ngx_pushjobs_keys_store(r, pmcf->keys_zone, &ctx->org,
                                         &ctx->auth.user_id,
                                         &ctx->stored_stale, NGX_HTTP_OK,
                                         ctx->stored_stale_age,
                                         &ctx->principals);
            if (rc != NGX_OK) {
                rc = NGX_DECLINED;
            }
        }

        if (rc == NGX_OK) {
            ctx->cached = 1;
            ctx->refetched = 1;
            ctx->stale = 1;
            return ngx_pushjobs_authz_verify(r, ctx);
        }

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    ngx_str_set(&what, "key");

    return ngx_pushjobs_authz_chef_failed(r, ctx, &what, reason);
}


static ngx_int_t
ngx_pushjobs_authz_principal_result(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx)
{
    ngx_int_t                  rc;
    ngx_pushjobs_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    if (ctx->sr_status != NGX_HTTP_OK && ctx->sr_status != NGX_HTTP_NOT_FOUND)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "pushjobs: Chef server answered %ui for principal "
                      "\"%V\" of \"%V\"", ctx->sr_status, &ctx->auth.user_id,
                      &ctx->org);

        return ngx_pushjobs_authz_principal_failed(r, ctx, NULL);
    }

    rc = ngx_pushjobs_keys_store(r, pmcf->keys_zone, &ctx->org,
                                 &ctx->auth.user_id, &ctx->sr_body,
                                 ctx->sr_status,
                                 ctx->from_store ? ctx->stored_age : 0,
                                 &ctx->principals);

    if (rc != NGX_OK && ctx->from_store) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "pushjobs: unusable principal \"%V\" of \"%V\" in "
                      "PostgreSQL, asking the Chef server",
                      &ctx->auth.user_id, &ctx->org);

        ctx->from_store = 0;

        return ngx_pushjobs_authz_fetch_principal(r, ctx);
    }

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "pushjobs: unusable principal \"%V\" of \"%V\" from "
                      "the Chef server", &ctx->auth.user_id, &ctx->org);

        return ngx_pushjobs_authz_principal_failed(r, ctx,
                                                   "unusable answer");
    }

    if (ctx->from_store) {
        /* as good as the cache's: a key that does not verify is refetched */
        ctx->from_store = 0;
        ctx->cached = 1;
        ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_KEY_STORED, 1);

    } else {
        ctx->cached = 0;
        ngx_pushjobs_authz_store(ctx);
    }

    return ngx_pushjobs_authz_verify(r, ctx);
}


static ngx_int_t
ngx_pushjobs_authz_verify(ngx_http_request_t *r, ngx_pushjobs_authz_t *ctx)
{
    ngx_int_t                  rc;
    ngx_str_t                  what;
    ngx_uint_t                 i, member;
    ngx_table_elt_t           *h;
    ngx_pushjobs_principal_t  *p;
    ngx_pushjobs_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    switch (ctx->principals.status) {

    case NGX_PUSHJOBS_PRINCIPAL_NO_ORG:
        return ngx_pushjobs_json_error(r, NGX_HTTP_NOT_FOUND, 1,
                                       "organization '%V' does not exist.",
                                       &ctx->org);

    case NGX_PUSHJOBS_PRINCIPAL_NOT_FOUND:
        return ngx_pushjobs_json_error(r, NGX_HTTP_UNAUTHORIZED, 1,
                                       "Failed to authenticate as '%V'. "
                                       "Ensure that your node_name and "
                                       "client key are correct.",
                                       &ctx->auth.user_id);
    }

    member = 0;

    for (i = 0; i < ctx->principals.n; i++) {
        if (ctx->principals.principal[i].org_member) {
            member = 1;
        }
    }

    if (!member) {
        return ngx_pushjobs_json_error(r, NGX_HTTP_FORBIDDEN, 1,
                                       "'%V' is not associated with "
                                       "organization '%V'",
                                       &ctx->auth.user_id, &ctx->org);
    }

    for (i = 0; i < ctx->principals.n; i++) {
        p = &ctx->principals.principal[i];

        rc = ngx_pushjobs_auth_verify(r, &ctx->auth, &ctx->body, p->key);

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_OK) {
            ctx->requestor = p;
            break;
        }
    }

    if (ctx->requestor == NULL) {

        if (ctx->stale) {
            /* the key may have been rotated: only Chef could tell */
            ngx_str_set(&what, "key");
            return ngx_pushjobs_authz_chef_failed(r, ctx, &what, NULL);
        }

        if (ctx->cached && !ctx->refetched) {
            /* the key may have been rotated since we cached it */
            ngx_pushjobs_keys_forget(pmcf->keys_zone, &ctx->org,
                                     &ctx->auth.user_id);
            ctx->refetched = 1;

            return ngx_pushjobs_authz_fetch_principal(r, ctx);
        }

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "WWW-Authenticate");
        ngx_str_set(&h->value, "X-Ops-Sign version=\"1.0\" version=\"1.1\"");

        return ngx_pushjobs_json_error(r, NGX_HTTP_UNAUTHORIZED, 1,
                                       "Invalid signature for user or "
                                       "client '%V'", &ctx->auth.user_id);
    }

    if (!ctx->requestor->org_member) {
        return ngx_pushjobs_json_error(r, NGX_HTTP_FORBIDDEN, 1,
                                       "'%V' is not associated with "
                                       "organization '%V'",
                                       &ctx->auth.user_id, &ctx->org);
    }

    return ngx_pushjobs_authz_authorize(r, ctx);
}


/*
 * Authorization as in 2.x: reads need membership of
 * pushy_job_readers if that group exists, writes of pushy_job_writers, or
 * of admins when there is no writers group; membership is looked up in the
 * group's users or clients and then, depth first, in its nested groups.
 * Groups are read from the Chef server as the superuser, one subrequest per
 * group, and never cached, so a change of membership counts at once.
 * A group the Chef server cannot give (no answer in time, an error, an
 * answer that is not a group) fails the request with 502 or 504: it is
 * not read as "not a member" as 2.x did, which answered 403 to members
 * during an outage.
 */

static ngx_int_t
ngx_pushjobs_authz_authorize(ngx_http_request_t *r, ngx_pushjobs_authz_t *ctx)
{
    ngx_str_t  group;

    switch (ctx->rule) {

    case NGX_PUSHJOBS_AUTHZ_AGENT:

        /* an agent acts only as itself: the node is the signing client */

        if (ctx->requestor->type != NGX_PUSHJOBS_CLIENT) {
            return ngx_pushjobs_json_error(r, NGX_HTTP_FORBIDDEN, 1,
                                           "only a client can open an agent "
                                           "channel, '%V' is a user",
                                           &ctx->auth.user_id);
        }

        return NGX_OK;

    case NGX_PUSHJOBS_AUTHZ_NODE:

        if (ctx->requestor->type != NGX_PUSHJOBS_CLIENT
            || ctx->node.len != ctx->auth.user_id.len
            || ngx_strncmp(ctx->node.data, ctx->auth.user_id.data,
                           ctx->node.len) != 0)
        {
            return ngx_pushjobs_json_error(r, NGX_HTTP_FORBIDDEN, 1,
                                           "Client and node name must "
                                           "match");
        }

        return NGX_OK;
    }

    /* NGX_PUSHJOBS_AUTHZ_GROUPS */

    if (r->method == NGX_HTTP_POST) {
        ngx_str_set(&group, "pushy_job_writers");
        return ngx_pushjobs_authz_group_fetch(r, ctx, &group, 1);
    }

    ngx_str_set(&group, "pushy_job_readers");

    return ngx_pushjobs_authz_group_fetch(r, ctx, &group, 1);
}


static ngx_int_t
ngx_pushjobs_authz_group_fetch(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx, ngx_str_t *group, ngx_uint_t top)
{
    u_char     *p;
    ngx_int_t   rc;
    ngx_str_t   path, *seen;

    if (ctx->seen == NULL) {
        ctx->seen = ngx_array_create(r->pool, 4, sizeof(ngx_str_t));
        ctx->pending = ngx_array_create(r->pool, 4, sizeof(ngx_str_t));

        if (ctx->seen == NULL || ctx->pending == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    seen = ngx_array_push(ctx->seen);
    if (seen == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *seen = *group;

    ctx->group = *group;
    ctx->top = top;

    path.len = sizeof("/organizations//groups/") - 1 + ctx->org.len
               + group->len;

    path.data = ngx_pnalloc(r->pool, path.len);
    if (path.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(path.data, "/organizations/%V/groups/%V", &ctx->org,
                    group);
    path.len = p - path.data;

    ctx->step = NGX_PUSHJOBS_AUTHZ_STEP_GROUP;
    r->write_event_handler = ctx->resume;

    rc = ngx_pushjobs_authz_chef_get(r, ctx, &path, 1);

    if (rc == NGX_DECLINED) {
        r->write_event_handler = ngx_http_request_empty_handler;
        return ngx_pushjobs_authz_group_failed(r, ctx, NULL);
    }

    return rc;
}


static ngx_int_t
ngx_pushjobs_authz_group_failed(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx, const char *reason)
{
    u_char     *p;
    ngx_str_t   what;

    what.len = sizeof("group ''") - 1 + ctx->group.len;
    what.data = ngx_pnalloc(r->pool, what.len);
    if (what.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(what.data, "group '%V'", &ctx->group);
    what.len = p - what.data;

    return ngx_pushjobs_authz_chef_failed(r, ctx, &what, reason);
}


static ngx_int_t
ngx_pushjobs_authz_group_result(ngx_http_request_t *r,
    ngx_pushjobs_authz_t *ctx)
{
    size_t       i, j;
    yajl_val     group, list, nested;
    ngx_str_t    name, *pending, *seen;
    const char  *key;

    if (ctx->sr_status == NGX_HTTP_NOT_FOUND) {

        /*
         * erchef says "no such group" in JSON; a page that is not (a
         * proxy's, a wrong location) must not count as an absent group,
         * which may let every member of the org read.
         */

        group = ngx_pushjobs_json_parse(ctx->sr_body.data, ctx->sr_body.len,
                                        r->connection->log);

        if (group == NULL || !YAJL_IS_OBJECT(group)) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "pushjobs: a 404 that is not erchef's for group "
                          "\"%V\" of \"%V\"", &ctx->group, &ctx->org);
            ngx_pushjobs_json_free(group);
            return ngx_pushjobs_authz_group_failed(r, ctx, "unusable answer");
        }

        ngx_pushjobs_json_free(group);

        if (!ctx->top) {
            return ngx_pushjobs_authz_group_next(r, ctx);
        }

        /* an absent top-level group */

        if (ctx->group.len == sizeof("pushy_job_readers") - 1
            && ngx_strncmp(ctx->group.data, "pushy_job_readers",
                           ctx->group.len) == 0)
        {
            return NGX_OK;
        }

        if (ctx->group.len == sizeof("pushy_job_writers") - 1
            && ngx_strncmp(ctx->group.data, "pushy_job_writers",
                           ctx->group.len) == 0)
        {
            ngx_str_set(&name, "admins");
            return ngx_pushjobs_authz_group_fetch(r, ctx, &name, 1);
        }

        return ngx_pushjobs_authz_forbidden(r, ctx);
    }

    if (ctx->sr_status != NGX_HTTP_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "pushjobs: Chef server answered %ui for group \"%V\" "
                      "of \"%V\"", ctx->sr_status, &ctx->group, &ctx->org);

        return ngx_pushjobs_authz_group_failed(r, ctx, NULL);
    }

    group = ngx_pushjobs_json_parse(ctx->sr_body.data, ctx->sr_body.len,
                                    r->connection->log);

    key = (ctx->requestor->type == NGX_PUSHJOBS_CLIENT) ? "clients" : "users";

    list = NULL;
    nested = NULL;

    if (group && YAJL_IS_OBJECT(group)) {
        list = ngx_pushjobs_json_get(group, key);
        nested = ngx_pushjobs_json_get(group, "groups");
    }

    /* erchef's groups always list users, clients and groups */

    if (list == NULL || !YAJL_IS_ARRAY(list)
        || nested == NULL || !YAJL_IS_ARRAY(nested))
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "pushjobs: unusable group \"%V\" of \"%V\" from the "
                      "Chef server", &ctx->group, &ctx->org);
        ngx_pushjobs_json_free(group);
        return ngx_pushjobs_authz_group_failed(r, ctx, "unusable answer");
    }

    for (i = 0; i < list->u.array.len; i++) {
        if (ngx_pushjobs_json_string(list->u.array.values[i], &name) == NGX_OK
            && name.len == ctx->auth.user_id.len
            && ngx_strncmp(name.data, ctx->auth.user_id.data, name.len) == 0)
        {
            ngx_pushjobs_json_free(group);
            return NGX_OK;
        }
    }

    /* nested groups, depth first: pushed in reverse, popped in order */

    for (i = nested->u.array.len; i > 0; i--) {
        if (ngx_pushjobs_json_string(nested->u.array.values[i - 1], &name)
            != NGX_OK
            || !ngx_pushjobs_authz_valid_name(&name))
        {
            continue;
        }

        seen = ctx->seen->elts;

        for (j = 0; j < ctx->seen->nelts; j++) {
            if (seen[j].len == name.len
                && ngx_strncmp(seen[j].data, name.data, name.len) == 0)
            {
                break;
            }
        }

        if (j < ctx->seen->nelts || ctx->seen->nelts > 64) {
            continue;
        }

        pending = ngx_array_push(ctx->pending);
        if (pending == NULL) {
            ngx_pushjobs_json_free(group);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        pending->len = name.len;
        pending->data = ngx_pstrdup(r->pool, &name);
        if (pending->data == NULL) {
            ngx_pushjobs_json_free(group);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    ngx_pushjobs_json_free(group);

    return ngx_pushjobs_authz_group_next(r, ctx);
}


static ngx_int_t
ngx_pushjobs_authz_group_next(ngx_http_request_t *r, ngx_pushjobs_authz_t *ctx)
{
    ngx_str_t  group, *pending;

    if (ctx->pending == NULL || ctx->pending->nelts == 0) {
        return ngx_pushjobs_authz_forbidden(r, ctx);
    }

    pending = ctx->pending->elts;
    group = pending[--ctx->pending->nelts];

    return ngx_pushjobs_authz_group_fetch(r, ctx, &group, 0);
}


static ngx_int_t
ngx_pushjobs_authz_forbidden(ngx_http_request_t *r, ngx_pushjobs_authz_t *ctx)
{
    return ngx_pushjobs_json_error(r, NGX_HTTP_FORBIDDEN, 1,
                                   "User or client '%V' does not have access "
                                   "to that action on this server.",
                                   &ctx->auth.user_id);
}


static ngx_int_t
ngx_pushjobs_authz_add_header(ngx_http_request_t *r, ngx_list_t *headers,
    const char *name, ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value = *value;

    h->lowcase_key = ngx_pnalloc(r->pool, h->key.len);
    if (h->lowcase_key == NULL) {
        return NGX_ERROR;
    }

    h->hash = ngx_hash_strlow(h->lowcase_key, h->key.data, h->key.len);

    return NGX_OK;
}


/* Chef names: organizations, users, clients and nodes */

ngx_uint_t
ngx_pushjobs_authz_valid_name(ngx_str_t *name)
{
    u_char      c;
    ngx_uint_t  i;

    if (name->len == 0 || name->len > NGX_PUSHJOBS_NAME_MAX) {
        return 0;
    }

    for (i = 0; i < name->len; i++) {
        c = name->data[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'
              || c == '@'))
        {
            return 0;
        }
    }

    return 1;
}
