/*
 * Copyright (C) pushjobs developers
 */


/*
 * The read-only link tokens as the module checks them,
 * ngx_pushjobs_link_check() (ngx_pushjobs_link.c): the six fields, the key
 * id, the MAC (HMAC-SHA256, base64url), the org, the expiry.  The worker
 * holds a key of the harness's own, so a token the fuzzer writes can pass
 * only if it was made with it: the first byte picks whether the input is
 * checked as it is, or first completed into a token the harness signs
 * (version, key id, org and job from the input, a MAC appended), which
 * must then pass, unless expired, and must fail once any byte of it
 * changes.
 *
 * Input: an option byte, then the token (or the fields to sign, "ORG.JOB"
 * and an expiry offset byte).
 */


#include "ngx_pushjobs_module.h"
#include "ngx_fuzz.h"


static ngx_pushjobs_worker_t  ngx_fuzz_link_worker;


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char       *copy, *dot;
    size_t        len;
    time_t        expires;
    ngx_int_t     rc;
    ngx_str_t     token, org, job, made, granted;
    ngx_log_t    *log;
    ngx_pool_t   *pool;
    const char   *err;

    log = ngx_fuzz_init();

    if (size < 1) {
        return 0;
    }

    ngx_pushjobs_worker = &ngx_fuzz_link_worker;
    ngx_memset(ngx_fuzz_link_worker.link_key, 0x5a,
               sizeof(ngx_fuzz_link_worker.link_key));
    ngx_fuzz_link_worker.link_key_id = 1 + (data[0] >> 4);

    pool = ngx_create_pool(1024, log);
    if (pool == NULL) {
        abort();
    }

    /* an exact copy: a read past the input is an ASan report */

    len = size - 1;
    copy = ngx_alloc(len ? len : 1, log);
    if (copy == NULL) {
        abort();
    }

    ngx_memcpy(copy, data + 1, len);

    /* the org a request is for: "demo", or the input's own */

    ngx_str_set(&org, "demo");

    if (!(data[0] & 1)) {
        token.data = copy;
        token.len = len;

        err = NULL;
        rc = ngx_pushjobs_link_check(&token, &org, &granted, &err);

        if (rc == NGX_OK) {
            /* only a token made with the key passes: none can be here */
            abort();
        }

        if (rc != NGX_DECLINED || err == NULL) {
            abort();
        }

        goto done;
    }

    /* "ORG.JOB": a token made for them, checked for ORG */

    if (len < 2) {
        goto done;
    }

    /* the fields before the last byte */

    dot = ngx_strlchr(copy, copy + len - 1, '.');
    if (dot == NULL) {
        goto done;
    }

    org.data = copy;
    org.len = dot - copy;
    job.data = dot + 1;
    job.len = copy + len - job.data - 1;

    if (org.len == 0 || ngx_strlchr(job.data, job.data + job.len, '.')) {
        goto done;
    }

    /* the last byte: the expiry, in the past or the future */

    expires = ngx_time() + (time_t) copy[len - 1] - 128;

    rc = ngx_pushjobs_link_make(pool, &org, &job, expires, &made);

    if (rc == NGX_ERROR) {
        /* too long for a token */
        goto done;
    }

    if (rc != NGX_OK) {
        abort();
    }

    err = NULL;
    rc = ngx_pushjobs_link_check(&made, &org, &granted, &err);

    if (expires > ngx_time()) {
        if (rc != NGX_OK
            || granted.len != (job.len ? job.len : 1)
            || (job.len && ngx_memcmp(granted.data, job.data, job.len) != 0))
        {
            abort();
        }

    } else if (rc != NGX_DECLINED || err == NULL) {
        abort();
    }

    /* any byte changed: refused */

    if (made.len) {
        made.data[(data[0] >> 1) % made.len] ^= 0x01;

        if (ngx_pushjobs_link_check(&made, &org, &granted, &err) == NGX_OK) {
            abort();
        }
    }

done:

    ngx_destroy_pool(pool);
    ngx_free(copy);
    ngx_pushjobs_worker = NULL;

    return 0;
}
