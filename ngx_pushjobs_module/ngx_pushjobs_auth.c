
/*
 * Copyright (C) pushjobs developers
 */


/*
 * Chef request authentication: the X-Ops-* headers of a signed request
 * (protocol versions 1.0 to 1.3, as mixlib-authentication and chef_authn
 * define them), their verification against a principal's public key, and
 * the signing of the requests we make to the Chef server ourselves.
 */


#include "ngx_pushjobs_module.h"

#include <openssl/err.h>
#include <openssl/rsa.h>


/* The most X-Ops-Authorization-N lines we look at (a 16384-bit key: 46). */
#define NGX_PUSHJOBS_AUTH_MAX_LINES   128

/* Ruby's Base64.encode64 line length, used for X-Ops-Authorization-N. */
#define NGX_PUSHJOBS_AUTH_LINE_LEN    60

#define NGX_PUSHJOBS_AUTH_PREFIX      "x-ops-authorization-"


typedef struct {
    const char                 *name;
    size_t                      len;
    size_t                      offset;
} ngx_pushjobs_auth_header_t;


static ngx_int_t ngx_pushjobs_auth_missing(ngx_http_request_t *r,
    ngx_pushjobs_auth_t *auth, ngx_str_t *err);
static ngx_int_t ngx_pushjobs_auth_signature(ngx_http_request_t *r,
    ngx_pushjobs_auth_t *auth);
static time_t ngx_pushjobs_auth_parse_time(ngx_str_t *ts);
static ngx_uint_t ngx_pushjobs_auth_sign_version(ngx_str_t *sign);
static ngx_int_t ngx_pushjobs_auth_canonical_path(ngx_pool_t *pool,
    u_char *data, size_t len, ngx_str_t *path);
static ngx_int_t ngx_pushjobs_auth_api_version(ngx_str_t *value,
    ngx_str_t *out);
static ngx_int_t ngx_pushjobs_auth_hash(ngx_pool_t *pool, const EVP_MD *md,
    u_char *data, size_t len, ngx_str_t *out);
static ngx_int_t ngx_pushjobs_auth_canonical(ngx_pool_t *pool,
    ngx_uint_t version, ngx_str_t *method, ngx_str_t *path,
    ngx_str_t *content_hash, ngx_str_t *timestamp, ngx_str_t *user,
    ngx_str_t *api_version, ngx_str_t *out);
static ngx_int_t ngx_pushjobs_auth_push(ngx_array_t *headers,
    ngx_pool_t *pool, const char *name, size_t len, u_char *value,
    size_t value_len);


/* In chef_authn's order (?REQUIRED_HEADERS). */

static ngx_pushjobs_auth_header_t  ngx_pushjobs_auth_required[] = {

    { "X-Ops-UserId", sizeof("X-Ops-UserId") - 1,
      offsetof(ngx_pushjobs_auth_t, user_id) },

    { "X-Ops-Timestamp", sizeof("X-Ops-Timestamp") - 1,
      offsetof(ngx_pushjobs_auth_t, timestamp) },

    { "X-Ops-Sign", sizeof("X-Ops-Sign") - 1,
      offsetof(ngx_pushjobs_auth_t, sign) },

    { "X-Ops-Content-Hash", sizeof("X-Ops-Content-Hash") - 1,
      offsetof(ngx_pushjobs_auth_t, content_hash) },

    { NULL, 0, 0 }
};


ngx_int_t
ngx_pushjobs_auth_parse(ngx_http_request_t *r, ngx_pushjobs_auth_t *auth,
    time_t skew, ngx_str_t *err)
{
    u_char           *p;
    size_t            len;
    time_t            now, ts, diff;
    ngx_int_t         rc;
    ngx_table_elt_t  *h;

    ngx_memzero(auth, sizeof(ngx_pushjobs_auth_t));

    rc = ngx_pushjobs_auth_missing(r, auth, err);
    if (rc != NGX_OK) {
        return rc;
    }

    h = ngx_pushjobs_header_in(r, (u_char *) "X-Ops-Server-API-Version",
                                 sizeof("X-Ops-Server-API-Version") - 1);

    if (h && h->value.len) {
        auth->api_version = h->value;

    } else {
        ngx_str_set(&auth->api_version, "0");
    }

    if (ngx_pushjobs_auth_signature(r, auth) != NGX_OK) {
        return NGX_ERROR;
    }

    ts = ngx_pushjobs_auth_parse_time(&auth->timestamp);

    if (ts == (time_t) NGX_ERROR) {
        ngx_str_set(err, "bad header(s) 'X-Ops-Timestamp'");
        return NGX_HTTP_UNAUTHORIZED;
    }

    auth->time = ts;

    now = ngx_time();
    diff = (now > ts) ? now - ts : ts - now;

    if (diff >= skew) {
        len = sizeof("Failed to authenticate as . Synchronize the clock on "
                     "your host.") - 1 + auth->user_id.len;

        err->data = ngx_pnalloc(r->pool, len);
        if (err->data == NULL) {
            return NGX_ERROR;
        }

        p = ngx_sprintf(err->data, "Failed to authenticate as %V. "
                        "Synchronize the clock on your host.", &auth->user_id);
        err->len = p - err->data;

        return NGX_HTTP_UNAUTHORIZED;
    }

    auth->version = ngx_pushjobs_auth_sign_version(&auth->sign);

    if (auth->version == 0) {
        ngx_str_set(err, "Unsupported authentication protocol version");
        return NGX_HTTP_BAD_REQUEST;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "pushjobs auth: user \"%V\" sign \"%V\" ts \"%V\"",
                   &auth->user_id, &auth->sign, &auth->timestamp);

    return NGX_OK;
}


/*
 * The required headers, an empty one counting as missing; the error names
 * every missing one, in chef_authn's order.
 */

static ngx_int_t
ngx_pushjobs_auth_missing(ngx_http_request_t *r, ngx_pushjobs_auth_t *auth,
    ngx_str_t *err)
{
    u_char                      *p;
    size_t                       len;
    ngx_str_t                   *value;
    ngx_uint_t                   i, missing[5], n;
    ngx_table_elt_t             *h;
    ngx_pushjobs_auth_header_t  *rh;

    n = 0;
    len = sizeof("missing required authentication header(s) ") - 1;

    for (i = 0; ngx_pushjobs_auth_required[i].name; i++) {
        rh = &ngx_pushjobs_auth_required[i];

        h = ngx_pushjobs_header_in(r, (u_char *) rh->name, rh->len);

        if (h == NULL || h->value.len == 0) {
            missing[n++] = i;
            len += rh->len + sizeof("'', ") - 1;
            continue;
        }

        value = (ngx_str_t *) ((u_char *) auth + rh->offset);
        *value = h->value;
    }

    if (n == 0) {
        return NGX_OK;
    }

    err->data = ngx_pnalloc(r->pool, len);
    if (err->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(err->data, "missing required authentication header(s) ",
                   sizeof("missing required authentication header(s) ") - 1);

    for (i = 0; i < n; i++) {
        rh = &ngx_pushjobs_auth_required[missing[i]];

        if (i) {
            *p++ = ',';
            *p++ = ' ';
        }

        *p++ = '\'';
        p = ngx_cpymem(p, rh->name, rh->len);
        *p++ = '\'';
    }

    err->len = p - err->data;

    return NGX_HTTP_BAD_REQUEST;
}


/*
 * X-Ops-Authorization-1..N joined in index order up to the first missing
 * index.  One pass over the headers; the first of duplicates wins.
 */

static ngx_int_t
ngx_pushjobs_auth_signature(ngx_http_request_t *r, ngx_pushjobs_auth_t *auth)
{
    u_char           *p;
    size_t            len, plen;
    ngx_int_t         idx;
    ngx_uint_t        i, n;
    ngx_str_t        *line[NGX_PUSHJOBS_AUTH_MAX_LINES + 1];
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    ngx_memzero(line, sizeof(line));

    plen = sizeof(NGX_PUSHJOBS_AUTH_PREFIX) - 1;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len <= plen
            || ngx_strncasecmp(h[i].key.data,
                               (u_char *) NGX_PUSHJOBS_AUTH_PREFIX, plen)
               != 0)
        {
            continue;
        }

        if (h[i].key.data[plen] == '0') {
            continue;
        }

        idx = ngx_atoi(h[i].key.data + plen, h[i].key.len - plen);

        if (idx < 1 || idx > NGX_PUSHJOBS_AUTH_MAX_LINES) {
            continue;
        }

        if (line[idx] == NULL && h[i].value.len) {
            line[idx] = &h[i].value;
        }
    }

    len = 0;

    for (n = 1; n <= NGX_PUSHJOBS_AUTH_MAX_LINES && line[n]; n++) {
        len += line[n]->len;
    }

    if (len == 0) {
        ngx_str_null(&auth->signature);
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    auth->signature.data = p;
    auth->signature.len = len;

    for (i = 1; i < n; i++) {
        p = ngx_cpymem(p, line[i]->data, line[i]->len);
    }

    return NGX_OK;
}


static ngx_inline ngx_int_t
ngx_pushjobs_auth_digits(u_char *p, size_t n)
{
    ngx_int_t  v;

    v = 0;

    while (n--) {
        if (*p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        v = v * 10 + (*p++ - '0');
    }

    return v;
}


/* YYYY-MM-DDTHH:MM:SSZ, UTC. */

static time_t
ngx_pushjobs_auth_parse_time(ngx_str_t *ts)
{
    u_char     *p;
    time_t      days;
    ngx_int_t   year, month, day, hour, min, sec, mdays, y, era, yoe, doy;

    static ngx_int_t  mdays_normal[] = {
        31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
    };

    if (ts->len != sizeof("YYYY-MM-DDTHH:MM:SSZ") - 1) {
        return NGX_ERROR;
    }

    p = ts->data;

    if (p[4] != '-' || p[7] != '-' || p[10] != 'T' || p[13] != ':'
        || p[16] != ':' || p[19] != 'Z')
    {
        return NGX_ERROR;
    }

    year = ngx_pushjobs_auth_digits(p, 4);
    month = ngx_pushjobs_auth_digits(p + 5, 2);
    day = ngx_pushjobs_auth_digits(p + 8, 2);
    hour = ngx_pushjobs_auth_digits(p + 11, 2);
    min = ngx_pushjobs_auth_digits(p + 14, 2);
    sec = ngx_pushjobs_auth_digits(p + 17, 2);

    if (year < 1 || month < 1 || month > 12 || day < 1 || hour < 0
        || hour > 23 || min < 0 || min > 59 || sec < 0 || sec > 59)
    {
        return NGX_ERROR;
    }

    mdays = mdays_normal[month - 1];

    if (month == 2
        && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))
    {
        mdays = 29;
    }

    if (day > mdays) {
        return NGX_ERROR;
    }

    /* days since 1970-01-01 of a proleptic Gregorian date */

    y = (month <= 2) ? year - 1 : year;
    era = y / 400;
    yoe = y - era * 400;
    doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;

    days = (time_t) era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy
           - 719468;

    return days * 86400 + hour * 3600 + min * 60 + sec;
}


/*
 * X-Ops-Sign: "key=value" pairs separated by ';' (a pair that does not
 * split into exactly two parts is ignored, the first of duplicate keys
 * wins); the algorithm defaults to the version's.
 */

static ngx_uint_t
ngx_pushjobs_auth_sign_version(ngx_str_t *sign)
{
    u_char      *p, *last, *end, *eq, *eq2;
    ngx_str_t    key, value, version, algorithm;
    ngx_uint_t   v;

    ngx_str_null(&version);
    ngx_str_null(&algorithm);

    p = sign->data;
    last = sign->data + sign->len;

    while (p < last) {
        end = ngx_strlchr(p, last, ';');
        if (end == NULL) {
            end = last;
        }

        eq = ngx_strlchr(p, end, '=');

        if (eq) {
            eq2 = ngx_strlchr(eq + 1, end, '=');

            if (eq2 == NULL) {
                key.data = p;
                key.len = eq - p;
                value.data = eq + 1;
                value.len = end - eq - 1;

                if (key.len == sizeof("version") - 1
                    && ngx_strncmp(key.data, "version", key.len) == 0
                    && version.data == NULL)
                {
                    version = value;

                } else if (key.len == sizeof("algorithm") - 1
                           && ngx_strncmp(key.data, "algorithm", key.len) == 0
                           && algorithm.data == NULL)
                {
                    algorithm = value;
                }
            }
        }

        p = end + 1;
    }

    if (version.len != 3 || version.data[0] != '1' || version.data[1] != '.') {
        return 0;
    }

    switch (version.data[2]) {
    case '0':
        v = NGX_PUSHJOBS_SIGN_1_0;
        break;
    case '1':
        v = NGX_PUSHJOBS_SIGN_1_1;
        break;
    case '2':
        v = NGX_PUSHJOBS_SIGN_1_2;
        break;
    case '3':
        v = NGX_PUSHJOBS_SIGN_1_3;
        break;
    default:
        return 0;
    }

    if (algorithm.data == NULL) {
        return v;
    }

    if (v == NGX_PUSHJOBS_SIGN_1_3) {
        if (algorithm.len == sizeof("sha256") - 1
            && ngx_strncmp(algorithm.data, "sha256", algorithm.len) == 0)
        {
            return v;
        }

        return 0;
    }

    if (algorithm.len == sizeof("sha1") - 1
        && ngx_strncmp(algorithm.data, "sha1", algorithm.len) == 0)
    {
        return v;
    }

    return 0;
}


ngx_int_t
ngx_pushjobs_auth_verify(ngx_http_request_t *r, ngx_pushjobs_auth_t *auth,
    ngx_str_t *body, EVP_PKEY *key)
{
    int             ok;
    u_char         *q, *last;
    size_t          outlen;
    ngx_int_t       rc;
    ngx_str_t       path, method, hash, api, canonical, sig, out;
    ngx_uint_t      i;
    const EVP_MD   *md;
    EVP_MD_CTX     *mctx;
    EVP_PKEY_CTX   *pctx;

    if (auth->signature.len == 0 || key == NULL) {
        return NGX_DECLINED;
    }

    /* the raw path as received, without the query string */

    last = r->unparsed_uri.data + r->unparsed_uri.len;
    q = ngx_strlchr(r->unparsed_uri.data, last, '?');

    if (ngx_pushjobs_auth_canonical_path(r->pool, r->unparsed_uri.data,
                                         (q ? q : last)
                                         - r->unparsed_uri.data,
                                         &path)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    method.len = r->method_name.len;
    method.data = ngx_pnalloc(r->pool, method.len);
    if (method.data == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < method.len; i++) {
        method.data[i] = ngx_toupper(r->method_name.data[i]);
    }

    md = (auth->version == NGX_PUSHJOBS_SIGN_1_3) ? EVP_sha256() : EVP_sha1();

    if (ngx_pushjobs_auth_hash(r->pool, md, body ? body->data : NULL,
                               body ? body->len : 0, &hash)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (hash.len != auth->content_hash.len
        || ngx_strncmp(hash.data, auth->content_hash.data, hash.len) != 0)
    {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "pushjobs auth: content hash mismatch");
        return NGX_DECLINED;
    }

    rc = ngx_pushjobs_auth_api_version(&auth->api_version, &api);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_pushjobs_auth_canonical(r->pool, auth->version, &method, &path,
                                    &hash, &auth->timestamp, &auth->user_id,
                                    &api, &canonical)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "pushjobs auth: canonical \"%V\"", &canonical);

    sig.data = ngx_pnalloc(r->pool,
                           ngx_base64_decoded_length(auth->signature.len));
    if (sig.data == NULL) {
        return NGX_ERROR;
    }

    if (ngx_decode_base64(&sig, &auth->signature) != NGX_OK || sig.len == 0) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "pushjobs auth: signature is not base64");
        return NGX_DECLINED;
    }

    if (auth->version == NGX_PUSHJOBS_SIGN_1_0
        || auth->version == NGX_PUSHJOBS_SIGN_1_1)
    {
        /* a raw RSA private "encrypt" of the canonical string */

        pctx = EVP_PKEY_CTX_new(key, NULL);
        if (pctx == NULL) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "pushjobs: EVP_PKEY_CTX_new() failed");
            return NGX_ERROR;
        }

        rc = NGX_DECLINED;

        if (EVP_PKEY_verify_recover_init(pctx) <= 0
            || EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0
            || EVP_PKEY_verify_recover(pctx, NULL, &outlen, sig.data, sig.len)
               <= 0)
        {
            goto recovered;
        }

        out.data = ngx_pnalloc(r->pool, outlen);
        if (out.data == NULL) {
            rc = NGX_ERROR;
            goto recovered;
        }

        if (EVP_PKEY_verify_recover(pctx, out.data, &outlen, sig.data,
                                    sig.len)
            <= 0)
        {
            goto recovered;
        }

        out.len = outlen;

        if (out.len == canonical.len
            && ngx_memcmp(out.data, canonical.data, out.len) == 0)
        {
            rc = NGX_OK;
        }

    recovered:

        EVP_PKEY_CTX_free(pctx);
        ERR_clear_error();

        return rc;
    }

    mctx = EVP_MD_CTX_new();
    if (mctx == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "pushjobs: EVP_MD_CTX_new() failed");
        return NGX_ERROR;
    }

    rc = NGX_DECLINED;

    if (EVP_DigestVerifyInit(mctx, NULL, md, NULL, key) == 1) {
        ok = EVP_DigestVerify(mctx, sig.data, sig.len, canonical.data,
                              canonical.len);
        if (ok == 1) {
            rc = NGX_OK;
        }
    }

    EVP_MD_CTX_free(mctx);
    ERR_clear_error();

    return rc;
}


ngx_int_t
ngx_pushjobs_auth_sign(ngx_pool_t *pool, EVP_PKEY *key, ngx_str_t *user,
    ngx_str_t *method, ngx_str_t *path, ngx_str_t *body, ngx_array_t *headers)
{
    u_char      *p, name[sizeof("X-Ops-Authorization-") + NGX_INT_T_LEN];
    size_t       siglen, n;
    ngx_tm_t     tm;
    ngx_str_t    cpath, hash, ts, api, canonical, sig, b64;
    ngx_uint_t   i;
    EVP_MD_CTX  *mctx;

    if (ngx_pushjobs_auth_canonical_path(pool, path->data, path->len, &cpath)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_pushjobs_auth_hash(pool, EVP_sha256(), body ? body->data : NULL,
                               body ? body->len : 0, &hash)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ts.data = ngx_pnalloc(pool, sizeof("YYYY-MM-DDTHH:MM:SSZ") - 1);
    if (ts.data == NULL) {
        return NGX_ERROR;
    }

    ngx_gmtime(ngx_time(), &tm);

    p = ngx_sprintf(ts.data, "%04d-%02d-%02dT%02d:%02d:%02dZ",
                    tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                    tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec);
    ts.len = p - ts.data;

    ngx_str_set(&api, "1");

    if (ngx_pushjobs_auth_canonical(pool, NGX_PUSHJOBS_SIGN_1_3, method,
                                    &cpath, &hash, &ts, user, &api,
                                    &canonical)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    mctx = EVP_MD_CTX_new();
    if (mctx == NULL) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "pushjobs: EVP_MD_CTX_new() failed");
        return NGX_ERROR;
    }

    sig.data = NULL;

    if (EVP_DigestSignInit(mctx, NULL, EVP_sha256(), NULL, key) != 1
        || EVP_DigestSign(mctx, NULL, &siglen, canonical.data, canonical.len)
           != 1)
    {
        goto failed;
    }

    sig.data = ngx_pnalloc(pool, siglen);
    if (sig.data == NULL) {
        EVP_MD_CTX_free(mctx);
        return NGX_ERROR;
    }

    if (EVP_DigestSign(mctx, sig.data, &siglen, canonical.data, canonical.len)
        != 1)
    {
        goto failed;
    }

    EVP_MD_CTX_free(mctx);

    sig.len = siglen;

    b64.data = ngx_pnalloc(pool, ngx_base64_encoded_length(sig.len));
    if (b64.data == NULL) {
        return NGX_ERROR;
    }

    ngx_encode_base64(&b64, &sig);

    if (ngx_pushjobs_auth_push(headers, pool, "X-Ops-Sign",
                               sizeof("X-Ops-Sign") - 1,
                               (u_char *) "algorithm=sha256;version=1.3",
                               sizeof("algorithm=sha256;version=1.3") - 1)
        != NGX_OK
        || ngx_pushjobs_auth_push(headers, pool, "X-Ops-UserId",
                                  sizeof("X-Ops-UserId") - 1,
                                  user->data, user->len)
           != NGX_OK
        || ngx_pushjobs_auth_push(headers, pool, "X-Ops-Timestamp",
                                  sizeof("X-Ops-Timestamp") - 1,
                                  ts.data, ts.len)
           != NGX_OK
        || ngx_pushjobs_auth_push(headers, pool, "X-Ops-Content-Hash",
                                  sizeof("X-Ops-Content-Hash") - 1,
                                  hash.data, hash.len)
           != NGX_OK
        || ngx_pushjobs_auth_push(headers, pool, "X-Ops-Server-API-Version",
                                  sizeof("X-Ops-Server-API-Version") - 1,
                                  api.data, api.len)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (i = 0; i * NGX_PUSHJOBS_AUTH_LINE_LEN < b64.len; i++) {
        p = ngx_sprintf(name, "X-Ops-Authorization-%ui", i + 1);

        n = ngx_min(NGX_PUSHJOBS_AUTH_LINE_LEN,
                    b64.len - i * NGX_PUSHJOBS_AUTH_LINE_LEN);

        if (ngx_pushjobs_auth_push(headers, pool, (char *) name, p - name,
                                   b64.data + i * NGX_PUSHJOBS_AUTH_LINE_LEN,
                                   n)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;

failed:

    ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                  "pushjobs: signing the request to the Chef server failed");

    EVP_MD_CTX_free(mctx);
    ERR_clear_error();

    return NGX_ERROR;
}


/*
 * Runs of '/' collapsed into one, a trailing '/' dropped unless the path
 * is "/" (an empty path becomes "/").
 */

static ngx_int_t
ngx_pushjobs_auth_canonical_path(ngx_pool_t *pool, u_char *data, size_t len,
    ngx_str_t *path)
{
    u_char  *p, *s, *last;

    path->data = ngx_pnalloc(pool, len + 1);
    if (path->data == NULL) {
        return NGX_ERROR;
    }

    p = path->data;
    last = data + len;

    for (s = data; s < last; s++) {
        if (*s == '/' && p > path->data && p[-1] == '/') {
            continue;
        }

        *p++ = *s;
    }

    if (p - path->data > 1 && p[-1] == '/') {
        p--;
    }

    if (p == path->data) {
        *p++ = '/';
    }

    path->len = p - path->data;

    return NGX_OK;
}


/*
 * chef_authn reads X-Ops-Server-API-Version as an integer and prints it
 * back: "01" is signed as "1"; anything but digits cannot verify.
 */

static ngx_int_t
ngx_pushjobs_auth_api_version(ngx_str_t *value, ngx_str_t *out)
{
    size_t      i;
    ngx_uint_t  digits;

    digits = (value->len > 0);

    for (i = 0; i < value->len; i++) {
        if (value->data[i] < '0' || value->data[i] > '9') {
            digits = 0;
            break;
        }
    }

    if (!digits) {
        return NGX_DECLINED;
    }

    i = 0;

    while (i + 1 < value->len && value->data[i] == '0') {
        i++;
    }

    out->data = value->data + i;
    out->len = value->len - i;

    return NGX_OK;
}


/* base64(digest(data)) */

static ngx_int_t
ngx_pushjobs_auth_hash(ngx_pool_t *pool, const EVP_MD *md, u_char *data,
    size_t len, ngx_str_t *out)
{
    u_char        buf[EVP_MAX_MD_SIZE];
    unsigned int  n;
    ngx_str_t     digest;

    if (EVP_Digest(len ? data : (u_char *) "", len, buf, &n, md, NULL) != 1) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "pushjobs: EVP_Digest() failed");
        ERR_clear_error();
        return NGX_ERROR;
    }

    digest.data = buf;
    digest.len = n;

    out->data = ngx_pnalloc(pool, ngx_base64_encoded_length(n));
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    ngx_encode_base64(out, &digest);

    return NGX_OK;
}


static ngx_int_t
ngx_pushjobs_auth_canonical(ngx_pool_t *pool, ngx_uint_t version,
    ngx_str_t *method, ngx_str_t *path, ngx_str_t *content_hash,
    ngx_str_t *timestamp, ngx_str_t *user, ngx_str_t *api_version,
    ngx_str_t *out)
{
    u_char     *p;
    size_t      len;
    ngx_str_t   hpath, huser;

    if (version == NGX_PUSHJOBS_SIGN_1_3) {
        len = sizeof("Method:\nPath:\nX-Ops-Content-Hash:\n"
                     "X-Ops-Sign:version=1.3\nX-Ops-Timestamp:\n"
                     "X-Ops-UserId:\nX-Ops-Server-API-Version:") - 1
              + method->len + path->len + content_hash->len
              + timestamp->len + user->len + api_version->len;

        out->data = ngx_pnalloc(pool, len);
        if (out->data == NULL) {
            return NGX_ERROR;
        }

        p = ngx_sprintf(out->data, "Method:%V\nPath:%V\n"
                        "X-Ops-Content-Hash:%V\n"
                        "X-Ops-Sign:version=1.3\n"
                        "X-Ops-Timestamp:%V\n"
                        "X-Ops-UserId:%V\n"
                        "X-Ops-Server-API-Version:%V",
                        method, path, content_hash, timestamp, user,
                        api_version);

        out->len = p - out->data;

        return NGX_OK;
    }

    /* 1.0, 1.1 and 1.2 */

    if (ngx_pushjobs_auth_hash(pool, EVP_sha1(), path->data, path->len,
                               &hpath)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (version == NGX_PUSHJOBS_SIGN_1_0) {
        huser = *user;

    } else {
        if (ngx_pushjobs_auth_hash(pool, EVP_sha1(), user->data, user->len,
                                   &huser)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    len = sizeof("Method:\nHashed Path:\nX-Ops-Content-Hash:\n"
                 "X-Ops-Timestamp:\nX-Ops-UserId:") - 1
          + method->len + hpath.len + content_hash->len + timestamp->len
          + huser.len;

    out->data = ngx_pnalloc(pool, len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(out->data, "Method:%V\nHashed Path:%V\n"
                    "X-Ops-Content-Hash:%V\n"
                    "X-Ops-Timestamp:%V\n"
                    "X-Ops-UserId:%V",
                    method, &hpath, content_hash, timestamp, &huser);

    out->len = p - out->data;

    return NGX_OK;
}


/* The caller NUL-terminates each name: one byte more is allocated. */

static ngx_int_t
ngx_pushjobs_auth_push(ngx_array_t *headers, ngx_pool_t *pool,
    const char *name, size_t len, u_char *value, size_t value_len)
{
    ngx_keyval_t  *kv;

    kv = ngx_array_push(headers);
    if (kv == NULL) {
        return NGX_ERROR;
    }

    kv->key.data = ngx_pnalloc(pool, len + 1);
    if (kv->key.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(kv->key.data, name, len);
    kv->key.data[len] = '\0';
    kv->key.len = len;

    kv->value.data = ngx_pnalloc(pool, value_len ? value_len : 1);
    if (kv->value.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(kv->value.data, value, value_len);
    kv->value.len = value_len;

    return NGX_OK;
}
