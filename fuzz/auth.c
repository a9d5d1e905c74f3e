/*
 * Copyright (C) pushjobs developers
 */


/*
 * Chef's signed headers as the module reads them (ngx_pushjobs_auth.c):
 * the required X-Ops-* headers, X-Ops-Timestamp, the version and algorithm
 * in X-Ops-Sign, X-Ops-Authorization-N reassembly, X-Ops-Server-API-Version,
 * then the verification: canonical path, content hash, canonical request,
 * base64 signature, RSA verification against a key of the harness's own
 * (so no input may ever verify).
 *
 * Input: the request path on the first line, then "Name: value" header
 * lines up to an empty line, then the body.  The first byte picks the
 * method.
 */


#include "ngx_pushjobs_module.h"
#include "ngx_fuzz.h"

#include <openssl/rsa.h>


static EVP_PKEY  *ngx_fuzz_auth_key;


static ngx_int_t
ngx_fuzz_auth_headers(ngx_http_request_t *r, u_char *p, u_char *last,
    u_char **body)
{
    u_char           *nl, *colon, *v;
    ngx_table_elt_t  *h;

    /* the path */

    nl = ngx_strlchr(p, last, '\n');
    if (nl == NULL) {
        nl = last;
    }

    r->unparsed_uri.data = p;
    r->unparsed_uri.len = nl - p;

    p = (nl < last) ? nl + 1 : last;

    while (p < last) {
        nl = ngx_strlchr(p, last, '\n');
        if (nl == NULL) {
            nl = last;
        }

        if (nl == p) {
            p++;
            break;
        }

        colon = ngx_strlchr(p, nl, ':');

        if (colon) {
            h = ngx_list_push(&r->headers_in.headers);
            if (h == NULL) {
                return NGX_ERROR;
            }

            for (v = colon + 1; v < nl && *v == ' '; v++) {
                /* void */
            }

            h->hash = 1;
            h->key.data = p;
            h->key.len = colon - p;
            h->value.data = v;
            h->value.len = nl - v;
            h->lowcase_key = p;
        }

        p = (nl < last) ? nl + 1 : last;
    }

    *body = p;

    return NGX_OK;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char               *copy, *body;
    time_t                skew;
    ngx_int_t             rc;
    ngx_str_t             err, b;
    ngx_log_t            *log;
    ngx_pool_t           *pool;
    ngx_connection_t     *c;
    ngx_http_request_t   *r;
    ngx_pushjobs_auth_t   auth;

    static ngx_str_t  methods[] = {
        ngx_string("GET"), ngx_string("POST"), ngx_string("put"),
        ngx_string("DELETE")
    };

    log = ngx_fuzz_init();

    if (ngx_fuzz_auth_key == NULL) {
        ngx_fuzz_auth_key = EVP_RSA_gen(1024);
        if (ngx_fuzz_auth_key == NULL) {
            abort();
        }
    }

    if (size < 1) {
        return 0;
    }

    pool = ngx_create_pool(1024, log);
    if (pool == NULL) {
        abort();
    }

    /* an exact copy: a read past the input is an ASan report */

    copy = ngx_alloc(size, log);
    r = ngx_pcalloc(pool, sizeof(ngx_http_request_t));
    c = ngx_pcalloc(pool, sizeof(ngx_connection_t));

    if (copy == NULL || r == NULL || c == NULL
        || ngx_list_init(&r->headers_in.headers, pool, 4,
                         sizeof(ngx_table_elt_t))
           != NGX_OK)
    {
        abort();
    }

    ngx_memcpy(copy, data, size);

    c->log = log;
    c->pool = pool;
    r->connection = c;
    r->pool = pool;
    r->method_name = methods[copy[0] & 3];

    /* the clock check is the caller's: any time is within the skew */
    skew = (copy[0] & 4) ? 900 : (time_t) 1 << 62;

    if (ngx_fuzz_auth_headers(r, copy + 1, copy + size, &body) != NGX_OK) {
        abort();
    }

    rc = ngx_pushjobs_auth_parse(r, &auth, skew, &err);

    if (rc == NGX_OK) {
        if (auth.version < NGX_PUSHJOBS_SIGN_1_0
            || auth.version > NGX_PUSHJOBS_SIGN_1_3)
        {
            abort();
        }

        b.data = body;
        b.len = copy + size - body;

        rc = ngx_pushjobs_auth_verify(r, &auth, &b, ngx_fuzz_auth_key);

        /* nobody has the harness's private key */

        if (rc == NGX_OK) {
            abort();
        }

    } else if (rc == NGX_HTTP_BAD_REQUEST || rc == NGX_HTTP_UNAUTHORIZED) {

        /* the error is written into the response: it must be there */

        if (err.len == 0 || err.data == NULL) {
            abort();
        }

        (void) ngx_pushjobs_json_escape_len(err.data, err.len);
    }

    ngx_destroy_pool(pool);
    ngx_free(copy);

    return 0;
}
