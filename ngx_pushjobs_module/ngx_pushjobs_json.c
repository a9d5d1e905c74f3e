
/*
 * Copyright (C) pushjobs developers
 */


/*
 * JSON helpers and response writing: string escaping, the contract's error
 * bodies, yajl tree parsing of bodies and agent messages, and the headers
 * every response carries.
 */


#include "ngx_pushjobs_module.h"

#include <yajl/yajl_tree.h>


static ngx_str_t  ngx_pushjobs_json_type = ngx_string("application/json");


size_t
ngx_pushjobs_json_escape_len(u_char *src, size_t len)
{
    size_t  n;

    n = 0;

    while (len--) {
        switch (*src) {
        case '"': case '\\': case '\b': case '\f': case '\n': case '\r':
        case '\t':
            n += 2;
            break;

        default:
            n += (*src < 0x20) ? 6 : 1;
        }

        src++;
    }

    return n;
}


u_char *
ngx_pushjobs_json_escape_copy(u_char *dst, u_char *src, size_t len)
{
    static u_char  hex[] = "0123456789abcdef";

    while (len--) {
        switch (*src) {
        case '"':  *dst++ = '\\'; *dst++ = '"'; break;
        case '\\': *dst++ = '\\'; *dst++ = '\\'; break;
        case '\b': *dst++ = '\\'; *dst++ = 'b'; break;
        case '\f': *dst++ = '\\'; *dst++ = 'f'; break;
        case '\n': *dst++ = '\\'; *dst++ = 'n'; break;
        case '\r': *dst++ = '\\'; *dst++ = 'r'; break;
        case '\t': *dst++ = '\\'; *dst++ = 't'; break;

        default:
            if (*src < 0x20) {
                *dst++ = '\\'; *dst++ = 'u'; *dst++ = '0'; *dst++ = '0';
                *dst++ = hex[*src >> 4];
                *dst++ = hex[*src & 0xf];

            } else {
                *dst++ = *src;
            }
        }

        src++;
    }

    return dst;
}


ngx_int_t
ngx_pushjobs_json_escape(ngx_pool_t *pool, ngx_str_t *src, ngx_str_t *dst)
{
    size_t  len;

    len = ngx_pushjobs_json_escape_len(src->data, src->len);

    if (len == src->len) {
        *dst = *src;
        return NGX_OK;
    }

    dst->data = ngx_pnalloc(pool, len);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    dst->len = ngx_pushjobs_json_escape_copy(dst->data, src->data, src->len)
               - dst->data;

    return NGX_OK;
}


/*
 * Sends {"error":["message"]} (list) or {"error":"message"}, the two shapes
 * of the Push Jobs 2.x API, and finishes the response.
 */

ngx_int_t
ngx_pushjobs_json_error(ngx_http_request_t *r, ngx_uint_t status,
    ngx_uint_t list, const char *fmt, ...)
{
    u_char     *p, msg[1024];
    size_t      len;
    va_list     args;
    ngx_str_t   body;

    va_start(args, fmt);
    p = ngx_vslprintf(msg, msg + sizeof(msg), fmt, args);
    va_end(args);

    len = p - msg;

    body.len = sizeof("{\"error\":[\"\"]}") - 1
               + ngx_pushjobs_json_escape_len(msg, len);

    body.data = ngx_pnalloc(r->pool, body.len);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(body.data, "{\"error\":", sizeof("{\"error\":") - 1);

    if (list) {
        *p++ = '[';
    }

    *p++ = '"';
    p = ngx_pushjobs_json_escape_copy(p, msg, len);
    *p++ = '"';

    if (list) {
        *p++ = ']';
    }

    *p++ = '}';

    body.len = p - body.data;

    return ngx_pushjobs_json_send(r, status, &body);
}


ngx_int_t
ngx_pushjobs_json_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    return ngx_pushjobs_send_body(r, status, &ngx_pushjobs_json_type, body);
}


ngx_int_t
ngx_pushjobs_send_body(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, ngx_str_t *body)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = body->len;

    if (type) {
        r->headers_out.content_type = *type;
        r->headers_out.content_type_len = type->len;
        r->headers_out.content_type_lowcase = NULL;
    }

    if (ngx_pushjobs_api_version_header(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (body->len == 0 || r->method == NGX_HTTP_HEAD) {
        r->header_only = 1;
        return ngx_http_send_header(r);
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * knife treats a server that does not answer with X-Ops-Server-API-Version
 * as unversioned and downgrades its later requests.
 */

ngx_int_t
ngx_pushjobs_api_version_header(ngx_http_request_t *r)
{
    u_char           *p;
    ngx_uint_t        version;
    ngx_table_elt_t  *h;

    version = 0;

    h = ngx_pushjobs_header(r, "X-Ops-Server-API-Version");

    if (h && h->value.len == 1
        && h->value.data[0] >= '0' && h->value.data[0] <= '2')
    {
        version = h->value.data[0] - '0';
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, 128);
    if (p == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-Ops-Server-API-Version");
    h->value.data = p;
    h->value.len = ngx_sprintf(p, "{\"min_version\":\"0\",\"max_version\":\"2\","
                                  "\"request_version\":\"%ui\","
                                  "\"response_version\":\"%ui\"}",
                               version, version)
                   - p;

    return NGX_OK;
}


/*
 * A document of the Chef server (principals, groups): bounded as such.
 */

void *
ngx_pushjobs_json_parse(u_char *data, size_t len, ngx_log_t *log)
{
    return ngx_pushjobs_json_parse_bounded(data, len, &pj_json_chef_response,
                                           log);
}


/*
 * Checks depth, count and strings first (json_bound.h), so that no tree is
 * built for a hostile document.  yajl_tree_parse() wants a NUL-terminated
 * string (the check refused any NUL inside) and allocates with malloc();
 * the caller frees the tree with ngx_pushjobs_json_free().  NULL for
 * anything that is not JSON within the limits, with the reason in the log.
 */

void *
ngx_pushjobs_json_parse_bounded(u_char *data, size_t len,
    const pj_json_limits_t *lim, ngx_log_t *log)
{
    int        rc;
    char      *copy, err[128];
    size_t     at;
    yajl_val   v;

    rc = pj_json_bound(data, len, lim, &at);

    if (rc != PJ_JSON_OK) {
        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "pushjobs: JSON refused at byte %uz of %uz: %s",
                      at, len, pj_json_bound_strerror(rc));
        return NULL;
    }

    copy = ngx_alloc(len + 1, log);
    if (copy == NULL) {
        return NULL;
    }

    ngx_memcpy(copy, data, len);
    copy[len] = '\0';

    err[0] = '\0';
    v = yajl_tree_parse(copy, err, sizeof(err));

    ngx_free(copy);

    if (v == NULL) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                       "pushjobs: invalid JSON: %s", err);
    }

    return v;
}


void *
ngx_pushjobs_json_get(void *object, const char *key)
{
    size_t     i;
    yajl_val   v;

    v = object;

    if (v == NULL || !YAJL_IS_OBJECT(v)) {
        return NULL;
    }

    for (i = 0; i < v->u.object.len; i++) {
        if (ngx_strcmp(v->u.object.keys[i], key) == 0) {
            return v->u.object.values[i];
        }
    }

    return NULL;
}


ngx_int_t
ngx_pushjobs_json_string(void *value, ngx_str_t *out)
{
    yajl_val  v;

    v = value;

    if (v == NULL || !YAJL_IS_STRING(v)) {
        return NGX_DECLINED;
    }

    out->data = (u_char *) v->u.string;
    out->len = ngx_strlen(v->u.string);

    return NGX_OK;
}


void
ngx_pushjobs_json_free(void *value)
{
    if (value) {
        yajl_tree_free(value);
    }
}
