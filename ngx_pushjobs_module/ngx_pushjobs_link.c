
/*
 * Copyright (C) pushjobs developers
 */


/*
 * Read-only links for browsers, and the pages they open.
 *
 * A browser cannot sign Chef requests.  A reader who can (knife, curl with
 * a signed request) asks for a link; the link carries a token that grants
 * reading one job of one org (or every job of the org, for the job list),
 * until it expires:
 *
 *     1.KID.ORG.JOB.EXPIRES.MAC
 *
 * JOB is the job's id or "*" (the org), EXPIRES unix seconds, KID the key's
 * id, MAC the base64url HMAC-SHA256 of everything before it with the key
 * the front ends share through PostgreSQL (pushjobs.link_key()).
 *
 * The link puts the token in the URL's fragment (…/jobs/ID#token=…):
 * browsers never send a fragment, so no access log, proxy or Referer sees
 * it.  The page's script sends it as "Authorization: Bearer", which nginx
 * does not log.  The pages themselves are static files (pushjobs_ui DIR,
 * loaded with the configuration) with no data in them; every datum comes
 * from the REST API and the event feed, as JSON, and the script writes it
 * as text, never as markup.
 */


#include "ngx_pushjobs_module.h"

#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>


#define NGX_PUSHJOBS_LINK_KEY_LEN     32
#define NGX_PUSHJOBS_LINK_MAC_LEN     43     /* base64url of 32 bytes */
#define NGX_PUSHJOBS_LINK_MAX         512

#define NGX_PUSHJOBS_UI_FILES_MAX     32
#define NGX_PUSHJOBS_UI_FILE_MAX      (256 * 1024)


static void ngx_pushjobs_link_key_done(void *data, PGresult *res);
static ngx_int_t ngx_pushjobs_link_mac(ngx_pushjobs_worker_t *w,
    u_char *text, size_t len, u_char *out);
static ngx_int_t ngx_pushjobs_ui_load_file(ngx_conf_t *cf,
    ngx_pushjobs_main_conf_t *pmcf, ngx_str_t *name);
static ngx_uint_t ngx_pushjobs_ui_valid_name(u_char *name, size_t len);
static ngx_int_t ngx_pushjobs_ui_headers(ngx_http_request_t *r);


/* A worker whose pool is connected asks for the shared key. */

void
ngx_pushjobs_link_key_load(void)
{
    u_char      cand[NGX_PUSHJOBS_LINK_KEY_LEN];
    u_char      hex[2 + 2 * NGX_PUSHJOBS_LINK_KEY_LEN];
    ngx_str_t   param;

    if (RAND_bytes(cand, sizeof(cand)) != 1) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "pushjobs: RAND_bytes() failed, no link key");
        return;
    }

    hex[0] = '\\';
    hex[1] = 'x';
    ngx_hex_dump(hex + 2, cand, sizeof(cand));
    ngx_explicit_memzero(cand, sizeof(cand));

    param.data = hex;
    param.len = sizeof(hex);

    if (ngx_pushjobs_pg_query("SELECT id, secret"
                              " FROM pushjobs.link_key($1::bytea)",
                              1, &param, ngx_pushjobs_link_key_done, NULL)
        == NULL)
    {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "pushjobs: cannot ask for the link key");
    }

    ngx_explicit_memzero(hex, sizeof(hex));
}


static void
ngx_pushjobs_link_key_done(void *data, PGresult *res)
{
    u_char                 *p;
    ngx_int_t               id;
    ngx_pushjobs_worker_t  *w;

    w = ngx_pushjobs_worker;

    if (w == NULL || res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK
        || PQntuples(res) != 1
        || PQgetlength(res, 0, 1) != 2 * NGX_PUSHJOBS_LINK_KEY_LEN)
    {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "pushjobs: no link key: job links are refused (503) "
                      "until the next PostgreSQL connection");
        return;
    }

    id = ngx_atoi((u_char *) PQgetvalue(res, 0, 0), PQgetlength(res, 0, 0));
    p = (u_char *) PQgetvalue(res, 0, 1);

    if (id <= 0) {
        return;
    }

    if (ngx_pushjobs_unhex(w->link_key, p, NGX_PUSHJOBS_LINK_KEY_LEN)
        != NGX_OK)
    {
        return;
    }

    w->link_key_id = (ngx_uint_t) id;
}


/*
 * A token for org and job (job->len 0: the org's list), valid until
 * expires.  NGX_DECLINED when this worker has no key yet.
 */

ngx_int_t
ngx_pushjobs_link_make(ngx_pool_t *pool, ngx_str_t *org, ngx_str_t *job,
    time_t expires, ngx_str_t *token)
{
    u_char                 *p;
    ngx_pushjobs_worker_t  *w;

    w = ngx_pushjobs_worker;

    if (w == NULL || w->link_key_id == 0) {
        return NGX_DECLINED;
    }

    token->data = ngx_pnalloc(pool, NGX_PUSHJOBS_LINK_MAX);
    if (token->data == NULL) {
        return NGX_ERROR;
    }

    if (org->len + job->len + 3 * NGX_INT64_LEN + NGX_PUSHJOBS_LINK_MAC_LEN
        + 8 > NGX_PUSHJOBS_LINK_MAX)
    {
        return NGX_ERROR;
    }

    p = ngx_sprintf(token->data, "1.%ui.%V.", w->link_key_id, org);

    if (job->len) {
        p = ngx_cpymem(p, job->data, job->len);

    } else {
        *p++ = '*';
    }

    p = ngx_sprintf(p, ".%T", expires);

    if (ngx_pushjobs_link_mac(w, token->data, p - token->data, p + 1)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    *p = '.';

    token->len = p + 1 + NGX_PUSHJOBS_LINK_MAC_LEN - token->data;

    return NGX_OK;
}


/*
 * Checks a token for org.  NGX_OK with *job the job it grants ("*": every
 * job of the org); NGX_DECLINED with *err the reason (invalid, expired);
 * NGX_AGAIN when this worker has no key yet.
 */

ngx_int_t
ngx_pushjobs_link_check(ngx_str_t *token, ngx_str_t *org, ngx_str_t *job,
    const char **err)
{
    u_char                 *p, *last, *f[6];
    size_t                  len[6];
    time_t                  expires;
    ngx_int_t               kid;
    ngx_uint_t              n;
    ngx_pushjobs_worker_t  *w;
    u_char                  want[NGX_PUSHJOBS_LINK_MAC_LEN + 4];

    w = ngx_pushjobs_worker;

    if (w == NULL || w->link_key_id == 0) {
        return NGX_AGAIN;
    }

    *err = "invalid link";

    if (token->len == 0 || token->len > NGX_PUSHJOBS_LINK_MAX) {
        return NGX_DECLINED;
    }

    /* six fields */

    p = token->data;
    last = token->data + token->len;

    for (n = 0; n < 6; n++) {
        f[n] = p;

        while (p < last && *p != '.') {
            p++;
        }

        len[n] = p - f[n];

        if (n < 5) {
            if (p == last) {
                return NGX_DECLINED;
            }

            p++;
        }
    }

    if (p != last || len[0] != 1 || f[0][0] != '1'
        || len[5] != NGX_PUSHJOBS_LINK_MAC_LEN)
    {
        return NGX_DECLINED;
    }

    kid = ngx_atoi(f[1], len[1]);

    if (kid == NGX_ERROR || (ngx_uint_t) kid != w->link_key_id) {
        *err = "invalid link (made with another key)";
        return NGX_DECLINED;
    }

    /* the MAC first: nothing else of the token is believed before it */

    if (ngx_pushjobs_link_mac(w, token->data, f[5] - 1 - token->data, want)
        != NGX_OK
        || CRYPTO_memcmp(want, f[5], NGX_PUSHJOBS_LINK_MAC_LEN) != 0)
    {
        return NGX_DECLINED;
    }

    if (len[2] != org->len || ngx_strncmp(f[2], org->data, org->len) != 0) {
        *err = "this link is for another organization";
        return NGX_DECLINED;
    }

    expires = ngx_atotm(f[4], len[4]);

    if (expires == NGX_ERROR) {
        return NGX_DECLINED;
    }

    if (expires <= ngx_time()) {
        *err = "link expired";
        return NGX_DECLINED;
    }

    job->data = f[3];
    job->len = len[3];

    return NGX_OK;
}


/* The MAC of text, base64url: NGX_PUSHJOBS_LINK_MAC_LEN bytes at out. */

static ngx_int_t
ngx_pushjobs_link_mac(ngx_pushjobs_worker_t *w, u_char *text, size_t len,
    u_char *out)
{
    unsigned int  n;
    ngx_str_t     mac, raw;
    u_char        digest[EVP_MAX_MD_SIZE];

    n = 0;

    if (HMAC(EVP_sha256(), w->link_key, NGX_PUSHJOBS_LINK_KEY_LEN, text, len,
             digest, &n)
        == NULL || n != 32)
    {
        return NGX_ERROR;
    }

    raw.data = digest;
    raw.len = n;
    mac.data = out;
    ngx_encode_base64url(&mac, &raw);

    return mac.len == NGX_PUSHJOBS_LINK_MAC_LEN ? NGX_OK : NGX_ERROR;
}


/*
 * pushjobs_ui DIR: the pages' files, read when the configuration is
 * loaded (a reload picks up new ones).  Only plain names of .html, .js and
 * .css files, each at most NGX_PUSHJOBS_UI_FILE_MAX.
 */

char *
ngx_pushjobs_ui_conf(ngx_conf_t *cf, ngx_pushjobs_main_conf_t *pmcf)
{
    ngx_dir_t   dir;
    ngx_str_t   name;
    ngx_err_t   err;

    if (pmcf->ui_dir.len == 0) {
        return NGX_CONF_OK;
    }

    if (ngx_conf_full_name(cf->cycle, &pmcf->ui_dir, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    pmcf->ui_files = ngx_array_create(cf->pool, 8,
                                      sizeof(ngx_pushjobs_ui_file_t));
    if (pmcf->ui_files == NULL) {
        return NGX_CONF_ERROR;
    }

    if (ngx_open_dir(&pmcf->ui_dir, &dir) == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_dir_n " \"%V\" failed", &pmcf->ui_dir);
        return NGX_CONF_ERROR;
    }

    for ( ;; ) {
        ngx_set_errno(0);

        if (ngx_read_dir(&dir) == NGX_ERROR) {
            err = ngx_errno;

            if (err != NGX_ENOMOREFILES) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, err,
                                   ngx_read_dir_n " \"%V\" failed",
                                   &pmcf->ui_dir);
                ngx_close_dir(&dir);
                return NGX_CONF_ERROR;
            }

            break;
        }

        name.data = ngx_de_name(&dir);
        name.len = ngx_de_namelen(&dir);

        if (!ngx_pushjobs_ui_valid_name(name.data, name.len)) {
            continue;
        }

        if (ngx_pushjobs_ui_load_file(cf, pmcf, &name) != NGX_OK) {
            ngx_close_dir(&dir);
            return NGX_CONF_ERROR;
        }
    }

    ngx_close_dir(&dir);

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_pushjobs_ui_load_file(ngx_conf_t *cf, ngx_pushjobs_main_conf_t *pmcf,
    ngx_str_t *name)
{
    u_char                  *p;
    ssize_t                  n;
    ngx_fd_t                 fd;
    ngx_str_t                path;
    ngx_file_info_t          fi;
    ngx_pushjobs_ui_file_t  *f;

    if (pmcf->ui_files->nelts == NGX_PUSHJOBS_UI_FILES_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "more than %d files in \"%V\"",
                           NGX_PUSHJOBS_UI_FILES_MAX, &pmcf->ui_dir);
        return NGX_ERROR;
    }

    path.len = pmcf->ui_dir.len + 1 + name->len;
    path.data = ngx_pnalloc(cf->temp_pool, path.len + 1);
    if (path.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(path.data, pmcf->ui_dir.data, pmcf->ui_dir.len);
    *p++ = '/';
    p = ngx_cpymem(p, name->data, name->len);
    *p = '\0';

    fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", &path);
        return NGX_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR || !ngx_is_file(&fi)
        || ngx_file_size(&fi) > NGX_PUSHJOBS_UI_FILE_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" is not a regular file of at most %d "
                           "bytes", &path, NGX_PUSHJOBS_UI_FILE_MAX);
        ngx_close_file(fd);
        return NGX_ERROR;
    }

    f = ngx_array_push(pmcf->ui_files);
    if (f == NULL) {
        ngx_close_file(fd);
        return NGX_ERROR;
    }

    f->name.len = name->len;
    f->name.data = ngx_pstrdup(cf->pool, name);

    f->body.len = (size_t) ngx_file_size(&fi);
    f->body.data = ngx_pnalloc(cf->pool, f->body.len + 1);

    if (f->name.data == NULL || f->body.data == NULL) {
        ngx_close_file(fd);
        return NGX_ERROR;
    }

    n = ngx_read_fd(fd, f->body.data, f->body.len);

    ngx_close_file(fd);

    if (n != (ssize_t) f->body.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "cannot read \"%V\"", &path);
        return NGX_ERROR;
    }

    if (name->len > 5
        && ngx_strncmp(name->data + name->len - 5, ".html", 5) == 0)
    {
        ngx_str_set(&f->type, "text/html; charset=utf-8");

    } else if (name->len > 3
               && ngx_strncmp(name->data + name->len - 3, ".js", 3) == 0)
    {
        ngx_str_set(&f->type, "text/javascript; charset=utf-8");

    } else {
        ngx_str_set(&f->type, "text/css; charset=utf-8");
    }

    return NGX_OK;
}


/* [a-z0-9_-]+ then .html, .js or .css */

static ngx_uint_t
ngx_pushjobs_ui_valid_name(u_char *name, size_t len)
{
    size_t  i, base;

    if (len > 5 && ngx_strncmp(name + len - 5, ".html", 5) == 0) {
        base = len - 5;

    } else if (len > 4 && ngx_strncmp(name + len - 4, ".css", 4) == 0) {
        base = len - 4;

    } else if (len > 3 && ngx_strncmp(name + len - 3, ".js", 3) == 0) {
        base = len - 3;

    } else {
        return 0;
    }

    if (base == 0 || base > 64) {
        return 0;
    }

    for (i = 0; i < base; i++) {
        if (!((name[i] >= 'a' && name[i] <= 'z')
              || (name[i] >= '0' && name[i] <= '9')
              || name[i] == '_' || name[i] == '-'))
        {
            return 0;
        }
    }

    return 1;
}


/*
 * Sends the page or asset NAME: 404 when there is none (no pushjobs_ui,
 * or no such file).
 */

ngx_int_t
ngx_pushjobs_ui_send(ngx_http_request_t *r, ngx_str_t *name)
{
    ngx_str_t                  body;
    ngx_uint_t                 i;
    ngx_pushjobs_ui_file_t    *f;
    ngx_pushjobs_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    if (pmcf->ui_files == NULL
        || !ngx_pushjobs_ui_valid_name(name->data, name->len))
    {
        return ngx_pushjobs_json_error(r, NGX_HTTP_NOT_FOUND, 1,
                                       "no such page");
    }

    f = pmcf->ui_files->elts;

    for (i = 0; i < pmcf->ui_files->nelts; i++) {
        if (f[i].name.len == name->len
            && ngx_strncmp(f[i].name.data, name->data, name->len) == 0)
        {
            if (ngx_pushjobs_ui_headers(r) != NGX_OK) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            body = f[i].body;

            return ngx_pushjobs_send_body(r, NGX_HTTP_OK, &f[i].type, &body);
        }
    }

    return ngx_pushjobs_json_error(r, NGX_HTTP_NOT_FOUND, 1, "no such page");
}


static ngx_int_t
ngx_pushjobs_ui_headers(ngx_http_request_t *r)
{
    ngx_uint_t        i;
    ngx_table_elt_t  *h;

    static ngx_str_t  headers[][2] = {
        { ngx_string("Content-Security-Policy"),
          ngx_string("default-src 'none'; script-src 'self'; "
                     "style-src 'self'; connect-src 'self'; "
                     "img-src 'self' data:; base-uri 'none'; "
                     "form-action 'none'; frame-ancestors 'none'") },
        { ngx_string("X-Content-Type-Options"), ngx_string("nosniff") },
        { ngx_string("Referrer-Policy"), ngx_string("no-referrer") },
        { ngx_string("Cache-Control"), ngx_string("no-store") },
        { ngx_string("X-Frame-Options"), ngx_string("DENY") }
    };

    for (i = 0; i < sizeof(headers) / sizeof(headers[0]); i++) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        h->key = headers[i][0];
        h->value = headers[i][1];
    }

    return NGX_OK;
}
