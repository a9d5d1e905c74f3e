
/*
 * Copyright (C) pushjobs developers
 */


/*
 * The cache of principals' public keys, shared by the workers in a shared
 * memory zone (pushjobs_key_zone): what the Chef server's principals
 * endpoint said about ORG/NAME, for keys_ttl seconds: each key as its RSA
 * exponent and modulus, which OpenSSL 3 turns back into a key ~25 times
 * faster than it decodes DER (6 us against 140 us per key, per request).
 * Negative answers (no such org, no such principal) are kept too, but
 * briefly, so that a new client can authenticate soon after its creation.
 * A key past its ttl stays in the zone for keys_stale seconds more: it is
 * used only when the Chef server cannot be asked (stale-if-error), so that
 * known principals, agents above all, keep working through an outage.
 * Entries live in an rbtree keyed by crc32("org\0name") and in an LRU queue
 * that makes room when the zone is full.
 */


#include "ngx_pushjobs_module.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/decoder.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <openssl/asn1.h>

#include <yajl/yajl_tree.h>


/* The longest a negative answer is cached, in seconds. */
#define NGX_PUSHJOBS_KEYS_NEGATIVE_TTL   5


/* A stored key: the exponent's length (2 bytes), the exponent, the modulus,
 * both in the host's byte order, as OSSL_PARAM_construct_BN() takes them. */

typedef struct {
    u_char                      type;
    u_char                      org_member;
    uint32_t                    stored_len; /* of the stored key */
} ngx_pushjobs_keys_principal_t;


/* Overlays an ngx_rbtree_node_t from its color field on, as limit_req. */

typedef struct {
    u_char                      color;
    u_char                      status;
    u_char                      n;
    u_char                      dummy;
    u_short                     key_len;
    ngx_queue_t                 queue;
    time_t                      created;
    time_t                      expire;     /* fresh until */
    time_t                      keep;       /* kept, stale, until */
    ngx_pushjobs_keys_principal_t  principal[NGX_PUSHJOBS_MAX_PRINCIPALS];
    u_char                      data[1];    /* key, then each stored key */
} ngx_pushjobs_keys_node_t;


typedef struct {
    ngx_rbtree_t                rbtree;
    ngx_rbtree_node_t           sentinel;
    ngx_queue_t                 queue;
    ngx_slab_pool_t            *shpool;
} ngx_pushjobs_keys_shctx_t;


/* The keys a request parsed, freed with its pool. */

typedef struct {
    ngx_uint_t                  n;
    EVP_PKEY                   *key[NGX_PUSHJOBS_MAX_PRINCIPALS];
} ngx_pushjobs_keys_cleanup_t;


static void ngx_pushjobs_keys_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_pushjobs_keys_make_key(ngx_pool_t *pool, ngx_str_t *org,
    ngx_str_t *name, ngx_str_t *key);
static ngx_pushjobs_keys_node_t *ngx_pushjobs_keys_find(
    ngx_pushjobs_keys_shctx_t *ctx, ngx_str_t *key, uint32_t hash);
static void ngx_pushjobs_keys_delete(ngx_pushjobs_keys_shctx_t *ctx,
    ngx_pushjobs_keys_node_t *kn);
static void ngx_pushjobs_keys_expire(ngx_pushjobs_keys_shctx_t *ctx,
    ngx_uint_t force);
static ngx_pushjobs_keys_cleanup_t *ngx_pushjobs_keys_cleanup_add(
    ngx_pool_t *pool);
static void ngx_pushjobs_keys_cleanup(void *data);
static ngx_int_t ngx_pushjobs_keys_parse(ngx_http_request_t *r,
    ngx_str_t *response, ngx_uint_t status, ngx_pushjobs_principals_t *out,
    ngx_pushjobs_keys_cleanup_t *cln);
static ngx_int_t ngx_pushjobs_keys_principal(ngx_http_request_t *r,
    yajl_val v, ngx_pushjobs_principal_t *p);
static EVP_PKEY *ngx_pushjobs_keys_pem_rsa(ngx_str_t *pem);
static ngx_int_t ngx_pushjobs_keys_der(const u_char **p, const u_char *end,
    int tag, const u_char **content, size_t *len);
static int ngx_pushjobs_keys_encode(EVP_PKEY *key, u_char **out);
static EVP_PKEY *ngx_pushjobs_keys_rsa(OSSL_PARAM *params);
static EVP_PKEY *ngx_pushjobs_keys_decode(const u_char *p, size_t len);
static void ngx_pushjobs_keys_save(ngx_http_request_t *r, time_t age,
    ngx_shm_zone_t *zone, ngx_str_t *key, ngx_pushjobs_principals_t *out);


ngx_int_t
ngx_pushjobs_keys_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    size_t                      len;
    ngx_slab_pool_t            *shpool;
    ngx_pushjobs_keys_shctx_t  *ctx;

    if (data) {
        /* the same shared memory, kept across a reload */
        shm_zone->data = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    ctx = ngx_slab_alloc(shpool, sizeof(ngx_pushjobs_keys_shctx_t));
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ctx->shpool = shpool;

    ngx_rbtree_init(&ctx->rbtree, &ctx->sentinel,
                    ngx_pushjobs_keys_rbtree_insert);

    ngx_queue_init(&ctx->queue);

    shpool->data = ctx;
    shm_zone->data = ctx;

    len = sizeof(" in pushjobs key zone \"\"") + shm_zone->shm.name.len;

    shpool->log_ctx = ngx_slab_alloc(shpool, len);
    if (shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(shpool->log_ctx, " in pushjobs key zone \"%V\"%Z",
                &shm_zone->shm.name);

    shpool->log_nomem = 0;

    return NGX_OK;
}


static void
ngx_pushjobs_keys_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t         **p;
    ngx_pushjobs_keys_node_t   *kn, *knt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else { /* node->key == temp->key */

            kn = (ngx_pushjobs_keys_node_t *) &node->color;
            knt = (ngx_pushjobs_keys_node_t *) &temp->color;

            p = (ngx_memn2cmp(kn->data, knt->data, kn->key_len,
                              knt->key_len)
                 < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


/*
 * A fresh entry; with stale set, also a key past its ttl but within
 * keys_stale (never a negative answer): NGX_DECLINED when there is none.
 */

ngx_int_t
ngx_pushjobs_keys_lookup(ngx_http_request_t *r, ngx_shm_zone_t *zone,
    time_t ttl, ngx_uint_t stale, ngx_str_t *org, ngx_str_t *name,
    ngx_pushjobs_principals_t *out)
{
    u_char                       *stored, *p;
    size_t                        len;
    time_t                        now, age;
    uint32_t                      hash;
    ngx_str_t                     key;
    ngx_uint_t                    i, n, status;
    const u_char                 *q;
    ngx_pushjobs_keys_node_t     *kn;
    ngx_pushjobs_keys_shctx_t    *ctx;
    ngx_pushjobs_keys_cleanup_t  *cln;
    ngx_pushjobs_main_conf_t     *pmcf;
    ngx_pushjobs_keys_principal_t principal[NGX_PUSHJOBS_MAX_PRINCIPALS];

    if (zone == NULL || zone->data == NULL || zone->data == (void *) 1) {
        return NGX_DECLINED;
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    ctx = zone->data;

    if (ngx_pushjobs_keys_make_key(r->pool, org, name, &key) != NGX_OK) {
        return NGX_ERROR;
    }

    hash = ngx_crc32_short(key.data, key.len);
    now = ngx_time();

    stored = NULL;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    kn = ngx_pushjobs_keys_find(ctx, &key, hash);

    if (kn == NULL) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return NGX_DECLINED;
    }

    /* a reload may have shortened the times since the entry was stored */

    age = now - kn->created;

    if (now >= kn->keep || age >= ttl + pmcf->keys_stale) {
        ngx_pushjobs_keys_delete(ctx, kn);
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return NGX_DECLINED;
    }

    if (now >= kn->expire || age >= ttl) {

        if (!stale || kn->status != NGX_PUSHJOBS_PRINCIPAL_FOUND) {
            /* kept for a lookup the Chef server cannot answer */
            ngx_shmtx_unlock(&ctx->shpool->mutex);
            return NGX_DECLINED;
        }

    } else {
        stale = 0;
    }

    ngx_queue_remove(&kn->queue);
    ngx_queue_insert_head(&ctx->queue, &kn->queue);

    status = kn->status;
    n = kn->n;

    len = 0;

    for (i = 0; i < n; i++) {
        principal[i] = kn->principal[i];
        len += principal[i].stored_len;
    }

    if (len) {
        stored = ngx_pnalloc(r->pool, len);

        if (stored) {
            ngx_memcpy(stored, kn->data + kn->key_len, len);
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (len && stored == NULL) {
        return NGX_ERROR;
    }

    out->status = status;
    out->n = 0;

    if (n == 0) {
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "pushjobs keys: \"%V\" of \"%V\" cached, status %ui",
                       name, org, status);
        return NGX_OK;
    }

    cln = ngx_pushjobs_keys_cleanup_add(r->pool);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    p = stored;

    for (i = 0; i < n; i++) {
        q = p;

        out->principal[i].key = ngx_pushjobs_keys_decode(q,
                                                    principal[i].stored_len);

        if (out->principal[i].key == NULL) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "pushjobs: cached key of \"%V\" of \"%V\" "
                          "does not parse", name, org);

            ERR_clear_error();
            ngx_pushjobs_keys_forget(zone, org, name);

            return NGX_DECLINED;
        }

        cln->key[cln->n++] = out->principal[i].key;

        out->principal[i].type = principal[i].type;
        out->principal[i].org_member = principal[i].org_member;

        p += principal[i].stored_len;
    }

    out->n = n;

    if (stale) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "pushjobs: the Chef server cannot be asked, the key "
                      "of \"%V\" of \"%V\" cached %T s ago is used",
                      name, org, age);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "pushjobs keys: \"%V\" of \"%V\" cached, %ui key(s)",
                   name, org, n);

    return NGX_OK;
}


ngx_int_t
ngx_pushjobs_keys_store(ngx_http_request_t *r, ngx_shm_zone_t *zone,
    ngx_str_t *org, ngx_str_t *name, ngx_str_t *response, ngx_uint_t status,
    time_t age, ngx_pushjobs_principals_t *out)
{
    ngx_int_t                     rc;
    ngx_str_t                     key;
    ngx_pushjobs_keys_cleanup_t  *cln;

    cln = ngx_pushjobs_keys_cleanup_add(r->pool);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_pushjobs_keys_parse(r, response, status, out, cln);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "pushjobs keys: \"%V\" of \"%V\": status %ui, %ui key(s)",
                   name, org, out->status, out->n);

    if (zone == NULL || zone->data == NULL || zone->data == (void *) 1) {
        return NGX_OK;
    }

    if (ngx_pushjobs_keys_make_key(r->pool, org, name, &key) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_pushjobs_keys_save(r, age, zone, &key, out);

    return NGX_OK;
}


void
ngx_pushjobs_keys_forget(ngx_shm_zone_t *zone, ngx_str_t *org,
    ngx_str_t *name)
{
    u_char                      buf[2 * NGX_PUSHJOBS_NAME_MAX + 1];
    u_char                     *p;
    uint32_t                    hash;
    ngx_str_t                   key;
    ngx_pushjobs_keys_node_t   *kn;
    ngx_pushjobs_keys_shctx_t  *ctx;

    if (zone == NULL || zone->data == NULL || zone->data == (void *) 1) {
        return;
    }

    if (org->len > NGX_PUSHJOBS_NAME_MAX || name->len > NGX_PUSHJOBS_NAME_MAX)
    {
        return;
    }

    ctx = zone->data;

    p = ngx_cpymem(buf, org->data, org->len);
    *p++ = '\0';
    p = ngx_cpymem(p, name->data, name->len);

    key.data = buf;
    key.len = p - buf;

    hash = ngx_crc32_short(key.data, key.len);

    ngx_shmtx_lock(&ctx->shpool->mutex);

    kn = ngx_pushjobs_keys_find(ctx, &key, hash);

    if (kn) {
        ngx_pushjobs_keys_delete(ctx, kn);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


static ngx_int_t
ngx_pushjobs_keys_make_key(ngx_pool_t *pool, ngx_str_t *org, ngx_str_t *name,
    ngx_str_t *key)
{
    u_char  *p;

    key->len = org->len + 1 + name->len;

    key->data = ngx_pnalloc(pool, key->len);
    if (key->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(key->data, org->data, org->len);
    *p++ = '\0';
    ngx_memcpy(p, name->data, name->len);

    return NGX_OK;
}


/* Called with the zone's mutex held. */

static ngx_pushjobs_keys_node_t *
ngx_pushjobs_keys_find(ngx_pushjobs_keys_shctx_t *ctx, ngx_str_t *key,
    uint32_t hash)
{
    ngx_int_t                  rc;
    ngx_rbtree_node_t         *node, *sentinel;
    ngx_pushjobs_keys_node_t  *kn;

    node = ctx->rbtree.root;
    sentinel = ctx->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        /* hash == node->key */

        kn = (ngx_pushjobs_keys_node_t *) &node->color;

        rc = ngx_memn2cmp(key->data, kn->data, key->len, kn->key_len);

        if (rc == 0) {
            return kn;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


/* Called with the zone's mutex held. */

static void
ngx_pushjobs_keys_delete(ngx_pushjobs_keys_shctx_t *ctx,
    ngx_pushjobs_keys_node_t *kn)
{
    ngx_rbtree_node_t  *node;

    node = (ngx_rbtree_node_t *)
               ((u_char *) kn - offsetof(ngx_rbtree_node_t, color));

    ngx_queue_remove(&kn->queue);
    ngx_rbtree_delete(&ctx->rbtree, node);
    ngx_slab_free_locked(ctx->shpool, node);
}


/*
 * Called with the zone's mutex held: drops up to two expired entries from
 * the LRU end, or, forced, up to three entries whatever their age.
 */

static void
ngx_pushjobs_keys_expire(ngx_pushjobs_keys_shctx_t *ctx, ngx_uint_t force)
{
    time_t                     now;
    ngx_uint_t                 n;
    ngx_queue_t               *q;
    ngx_pushjobs_keys_node_t  *kn;

    now = ngx_time();

    for (n = 0; n < 3; n++) {

        if (ngx_queue_empty(&ctx->queue)) {
            return;
        }

        q = ngx_queue_last(&ctx->queue);
        kn = ngx_queue_data(q, ngx_pushjobs_keys_node_t, queue);

        if (!force || n == 2) {
            if (now < kn->keep) {
                return;
            }
        }

        if (now < kn->keep) {
            /* dropped before its time, for room */
            ngx_pushjobs_metrics_add(NGX_PUSHJOBS_C_KEY_EVICTIONS, 1);
        }

        ngx_pushjobs_keys_delete(ctx, kn);
    }
}


static ngx_pushjobs_keys_cleanup_t *
ngx_pushjobs_keys_cleanup_add(ngx_pool_t *pool)
{
    ngx_pool_cleanup_t           *cln;
    ngx_pushjobs_keys_cleanup_t  *kc;

    cln = ngx_pool_cleanup_add(pool, sizeof(ngx_pushjobs_keys_cleanup_t));
    if (cln == NULL) {
        return NULL;
    }

    kc = cln->data;
    kc->n = 0;

    cln->handler = ngx_pushjobs_keys_cleanup;

    return kc;
}


static void
ngx_pushjobs_keys_cleanup(void *data)
{
    ngx_pushjobs_keys_cleanup_t *kc = data;

    ngx_uint_t  i;

    for (i = 0; i < kc->n; i++) {
        EVP_PKEY_free(kc->key[i]);
    }

    kc->n = 0;
}


/*
 * The principals endpoint's answer: 404 with {"not_found":"org"|"principal"},
 * or 200 with {"principals":[...]} (API v1) or a single principal (v0).
 * A 404 without that body is not erchef's (a proxy's page, a wrong
 * location): unusable, not "no such principal".
 */

static ngx_int_t
ngx_pushjobs_keys_parse(ngx_http_request_t *r, ngx_str_t *response,
    ngx_uint_t status, ngx_pushjobs_principals_t *out,
    ngx_pushjobs_keys_cleanup_t *cln)
{
    size_t     i, len;
    yajl_val   root, list, item, *items;
    ngx_str_t  s;

    out->n = 0;

    root = NULL;

    if (response && response->len) {
        root = ngx_pushjobs_json_parse(response->data, response->len,
                                       r->connection->log);
    }

    if (status == NGX_HTTP_NOT_FOUND) {

        if (ngx_pushjobs_json_string(ngx_pushjobs_json_get(root, "not_found"),
                                     &s)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "pushjobs: a 404 that is not erchef's from the "
                          "Chef server's principals endpoint");

            ngx_pushjobs_json_free(root);
            return NGX_DECLINED;
        }

        if (s.len == sizeof("org") - 1
            && ngx_strncmp(s.data, "org", s.len) == 0)
        {
            out->status = NGX_PUSHJOBS_PRINCIPAL_NO_ORG;

        } else {
            out->status = NGX_PUSHJOBS_PRINCIPAL_NOT_FOUND;
        }

        ngx_pushjobs_json_free(root);

        return NGX_OK;
    }

    if (status != NGX_HTTP_OK || root == NULL || !YAJL_IS_OBJECT(root)) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "pushjobs: unexpected answer from the Chef server's "
                      "principals endpoint (status %ui)", status);

        ngx_pushjobs_json_free(root);
        return NGX_DECLINED;
    }

    out->status = NGX_PUSHJOBS_PRINCIPAL_FOUND;

    list = ngx_pushjobs_json_get(root, "principals");

    if (list && YAJL_IS_ARRAY(list)) {
        items = list->u.array.values;
        len = list->u.array.len;

    } else {
        items = &root;
        len = 1;
    }

    for (i = 0; i < len && out->n < NGX_PUSHJOBS_MAX_PRINCIPALS; i++) {
        item = items[i];

        if (ngx_pushjobs_keys_principal(r, item, &out->principal[out->n])
            != NGX_OK)
        {
            continue;
        }

        cln->key[cln->n++] = out->principal[out->n].key;
        out->n++;
    }

    if (i < len) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "pushjobs: more than %d principals of one name, "
                      "the rest ignored", NGX_PUSHJOBS_MAX_PRINCIPALS);
    }

    ngx_pushjobs_json_free(root);

    if (out->n == 0) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_pushjobs_keys_principal(ngx_http_request_t *r, yajl_val v,
    ngx_pushjobs_principal_t *p)
{
    yajl_val   member;
    ngx_str_t  type, pem, name;

    if (v == NULL || !YAJL_IS_OBJECT(v)) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "pushjobs: a principal is not an object");
        return NGX_DECLINED;
    }

    if (ngx_pushjobs_json_string(ngx_pushjobs_json_get(v, "name"), &name)
        != NGX_OK)
    {
        ngx_str_set(&name, "?");
    }

    if (ngx_pushjobs_json_string(ngx_pushjobs_json_get(v, "type"), &type)
        != NGX_OK)
    {
        goto invalid;
    }

    if (type.len == sizeof("user") - 1
        && ngx_strncmp(type.data, "user", type.len) == 0)
    {
        p->type = NGX_PUSHJOBS_USER;

    } else if (type.len == sizeof("client") - 1
               && ngx_strncmp(type.data, "client", type.len) == 0)
    {
        p->type = NGX_PUSHJOBS_CLIENT;

    } else {
        goto invalid;
    }

    member = ngx_pushjobs_json_get(v, "org_member");
    p->org_member = (member && YAJL_IS_TRUE(member)) ? 1 : 0;

    if (ngx_pushjobs_json_string(ngx_pushjobs_json_get(v, "public_key"), &pem)
        != NGX_OK)
    {
        goto invalid;
    }

    p->key = ngx_pushjobs_keys_pem(r->connection->log, &pem);

    if (p->key == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "pushjobs: unusable public key of principal \"%V\"",
                      &name);
        return NGX_DECLINED;
    }

    return NGX_OK;

invalid:

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "pushjobs: invalid principal \"%V\" from the Chef server",
                  &name);

    return NGX_DECLINED;
}


/*
 * An RSA public key from PEM: SPKI ("PUBLIC KEY"), PKCS#1 ("RSA PUBLIC
 * KEY") or the key of an X.509 certificate, as chef_authn accepts; NULL
 * for anything else.  A function of the text alone (fuzz/keys.c).
 */

EVP_PKEY *
ngx_pushjobs_keys_pem(ngx_log_t *log, ngx_str_t *pem)
{
    BIO               *bio;
    X509              *x509;
    EVP_PKEY          *pkey;
    const u_char      *data;
    size_t             len;
    OSSL_DECODER_CTX  *dctx;

    if (pem->len == 0 || pem->len > INT_MAX) {
        return NULL;
    }

    /* the common forms without the OpenSSL 3 decoders (140 us a key) */

    pkey = ngx_pushjobs_keys_pem_rsa(pem);

    if (pkey) {
        return pkey;
    }

    if (ngx_strlcasestrn(pem->data, pem->data + pem->len,
                         (u_char *) "-----BEGIN CERTIFICATE",
                         sizeof("-----BEGIN CERTIFICATE") - 2)
        != NULL)
    {
        bio = BIO_new_mem_buf(pem->data, (int) pem->len);
        if (bio == NULL) {
            goto done;
        }

        x509 = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        BIO_free(bio);

        if (x509 == NULL) {
            goto done;
        }

        pkey = X509_get_pubkey(x509);
        X509_free(x509);

        goto done;
    }

    /* SPKI and PKCS#1 alike, through the OpenSSL 3 decoders */

    dctx = OSSL_DECODER_CTX_new_for_pkey(&pkey, "PEM", NULL, "RSA",
                                         EVP_PKEY_PUBLIC_KEY, NULL, NULL);
    if (dctx == NULL) {
        goto done;
    }

    data = pem->data;
    len = pem->len;

    if (OSSL_DECODER_from_data(dctx, &data, &len) != 1) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }

    OSSL_DECODER_CTX_free(dctx);

done:

    if (pkey && !EVP_PKEY_is_a(pkey, "RSA")) {
        ngx_log_error(NGX_LOG_ERR, log, 0, "pushjobs: not an RSA key");
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }

    ERR_clear_error();

    return pkey;
}


/*
 * Replaces the entry of key with what out holds, an answer the Chef server
 * gave age seconds ago; failures only logged.
 */

static void
ngx_pushjobs_keys_save(ngx_http_request_t *r, time_t age,
    ngx_shm_zone_t *zone, ngx_str_t *key, ngx_pushjobs_principals_t *out)
{
    int                           n;
    u_char                       *stored[NGX_PUSHJOBS_MAX_PRINCIPALS], *p;
    size_t                        size, len;
    time_t                        ttl, keep, now;
    uint32_t                      hash;
    ngx_uint_t                    i;
    ngx_rbtree_node_t            *node;
    ngx_pushjobs_keys_node_t     *kn;
    ngx_pushjobs_keys_shctx_t    *ctx;
    ngx_pushjobs_main_conf_t     *pmcf;
    ngx_pushjobs_keys_principal_t principal[NGX_PUSHJOBS_MAX_PRINCIPALS];

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    ttl = pmcf->keys_ttl;
    keep = ttl + pmcf->keys_stale;

    if (out->status != NGX_PUSHJOBS_PRINCIPAL_FOUND) {
        ttl = ngx_min(ttl, NGX_PUSHJOBS_KEYS_NEGATIVE_TTL);
        keep = ttl;
    }

    if (ttl <= 0 || age >= keep || key->len > 0xffff) {
        return;
    }

    ngx_memzero(stored, sizeof(stored));

    len = 0;

    for (i = 0; i < out->n; i++) {
        n = ngx_pushjobs_keys_encode(out->principal[i].key, &stored[i]);

        if (n <= 0) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "pushjobs: cannot store a key, key not cached");
            ERR_clear_error();
            goto free;
        }

        principal[i].type = (u_char) out->principal[i].type;
        principal[i].org_member = (u_char) out->principal[i].org_member;
        principal[i].stored_len = n;

        len += n;
    }

    size = offsetof(ngx_rbtree_node_t, color)
           + offsetof(ngx_pushjobs_keys_node_t, data)
           + key->len + len;

    ctx = zone->data;
    hash = ngx_crc32_short(key->data, key->len);

    /* the answer's times count from when the Chef server gave it */
    now = ngx_time() - age;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    kn = ngx_pushjobs_keys_find(ctx, key, hash);

    if (kn) {
        ngx_pushjobs_keys_delete(ctx, kn);
    }

    ngx_pushjobs_keys_expire(ctx, 0);

    node = ngx_slab_alloc_locked(ctx->shpool, size);

    if (node == NULL) {
        ngx_pushjobs_keys_expire(ctx, 1);

        node = ngx_slab_alloc_locked(ctx->shpool, size);

        if (node == NULL) {
            ngx_shmtx_unlock(&ctx->shpool->mutex);

            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "pushjobs: could not allocate a node%s, "
                          "key not cached", ctx->shpool->log_ctx);
            goto free;
        }
    }

    node->key = hash;

    kn = (ngx_pushjobs_keys_node_t *) &node->color;

    kn->status = (u_char) out->status;
    kn->n = (u_char) out->n;
    kn->key_len = (u_short) key->len;
    kn->created = now;
    kn->expire = now + ttl;
    kn->keep = now + keep;

    p = ngx_cpymem(kn->data, key->data, key->len);

    for (i = 0; i < out->n; i++) {
        kn->principal[i] = principal[i];
        p = ngx_cpymem(p, stored[i], principal[i].stored_len);
    }

    ngx_rbtree_insert(&ctx->rbtree, node);
    ngx_queue_insert_head(&ctx->queue, &kn->queue);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

free:

    for (i = 0; i < out->n; i++) {
        if (stored[i]) {
            OPENSSL_free(stored[i]);
        }
    }
}


/*
 * The stored form of an RSA public key (see ngx_pushjobs_keys_principal_t),
 * allocated with OPENSSL_malloc(); its length, or -1.
 */

static int
ngx_pushjobs_keys_encode(EVP_PKEY *key, u_char **out)
{
    int      rc, nlen, elen;
    u_char  *p;
    BIGNUM  *n, *e;

    rc = -1;
    n = NULL;
    e = NULL;

    if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n) != 1
        || EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &e) != 1)
    {
        goto done;
    }

    nlen = BN_num_bytes(n);
    elen = BN_num_bytes(e);

    if (nlen == 0 || elen == 0 || elen > 0xffff || nlen > 0xffff) {
        goto done;
    }

    p = OPENSSL_malloc(2 + elen + nlen);
    if (p == NULL) {
        goto done;
    }

    p[0] = (u_char) (elen >> 8);
    p[1] = (u_char) (elen & 0xff);

    if (BN_bn2nativepad(e, p + 2, elen) != elen
        || BN_bn2nativepad(n, p + 2 + elen, nlen) != nlen)
    {
        OPENSSL_free(p);
        goto done;
    }

    *out = p;
    rc = 2 + elen + nlen;

done:

    BN_free(n);
    BN_free(e);
    ERR_clear_error();

    return rc;
}


static EVP_PKEY *
ngx_pushjobs_keys_decode(const u_char *p, size_t len)
{
    size_t      elen;
    OSSL_PARAM  params[3];

    if (len < 2) {
        return NULL;
    }

    elen = ((size_t) p[0] << 8) | p[1];

    if (elen == 0 || len <= 2 + elen) {
        return NULL;
    }

    /* the parameters only point to the stored bytes: nothing is written */

    params[0] = OSSL_PARAM_construct_BN(OSSL_PKEY_PARAM_RSA_N,
                                        (u_char *) p + 2 + elen,
                                        len - 2 - elen);
    params[1] = OSSL_PARAM_construct_BN(OSSL_PKEY_PARAM_RSA_E,
                                        (u_char *) p + 2, elen);
    params[2] = OSSL_PARAM_construct_end();

    return ngx_pushjobs_keys_rsa(params);
}


/* An RSA public key from its modulus and exponent; NULL on failure. */

static EVP_PKEY *
ngx_pushjobs_keys_rsa(OSSL_PARAM *params)
{
    EVP_PKEY      *key;
    EVP_PKEY_CTX  *pctx;

    key = NULL;

    pctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);

    if (pctx == NULL
        || EVP_PKEY_fromdata_init(pctx) != 1
        || EVP_PKEY_fromdata(pctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1)
    {
        key = NULL;
    }

    EVP_PKEY_CTX_free(pctx);
    ERR_clear_error();

    return key;
}


/*
 * An RSA public key from a PEM "PUBLIC KEY" (SPKI with rsaEncryption) or
 * "RSA PUBLIC KEY" (PKCS#1), read as DER by hand and built from its modulus
 * and exponent; NULL for anything else, which the caller then gives to the
 * OpenSSL decoders.
 */

static EVP_PKEY *
ngx_pushjobs_keys_pem_rsa(ngx_str_t *pem)
{
    u_char          *p, *last, *body, *der;
    size_t           len, nlen, elen;
    BIGNUM          *n, *e;
    EVP_PKEY        *key;
    ngx_str_t        src, dst;
    ngx_uint_t       spki;
    const u_char    *d, *end, *c, *a, *aend, *n_data, *e_data;
    OSSL_PARAM      *params;
    OSSL_PARAM_BLD  *bld;

    static u_char  rsa_oid[] = { 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d,
                                 0x01, 0x01, 0x01 };

    p = pem->data;
    last = pem->data + pem->len;

#define NGX_PUSHJOBS_PEM_SPKI   "-----BEGIN PUBLIC KEY-----"
#define NGX_PUSHJOBS_PEM_PKCS1  "-----BEGIN RSA PUBLIC KEY-----"

    body = ngx_strlcasestrn(p, last, (u_char *) NGX_PUSHJOBS_PEM_SPKI,
                            sizeof(NGX_PUSHJOBS_PEM_SPKI) - 2);
    if (body) {
        spki = 1;
        body += sizeof(NGX_PUSHJOBS_PEM_SPKI) - 1;

    } else {
        body = ngx_strlcasestrn(p, last, (u_char *) NGX_PUSHJOBS_PEM_PKCS1,
                                sizeof(NGX_PUSHJOBS_PEM_PKCS1) - 2);
        if (body == NULL) {
            return NULL;
        }

        spki = 0;
        body += sizeof(NGX_PUSHJOBS_PEM_PKCS1) - 1;
    }

    p = ngx_strlcasestrn(body, last, (u_char *) "-----END",
                         sizeof("-----END") - 2);
    if (p == NULL || p - body > 8192) {
        return NULL;
    }

    /* the base64 body without its line breaks */

    src.data = ngx_alloc(p - body, ngx_cycle->log);
    if (src.data == NULL) {
        return NULL;
    }

    src.len = 0;

    for ( /* void */ ; body < p; body++) {
        if (*body != '\r' && *body != '\n' && *body != ' ' && *body != '\t') {
            src.data[src.len++] = *body;
        }
    }

    der = ngx_alloc(ngx_base64_decoded_length(src.len) + 1, ngx_cycle->log);
    if (der == NULL) {
        ngx_free(src.data);
        return NULL;
    }

    dst.data = der;

    if (ngx_decode_base64(&dst, &src) != NGX_OK) {
        ngx_free(src.data);
        ngx_free(der);
        return NULL;
    }

    ngx_free(src.data);

    key = NULL;
    n = NULL;
    e = NULL;
    bld = NULL;
    params = NULL;

    d = der;
    end = der + dst.len;

    if (spki) {
        /* SEQUENCE { SEQUENCE { rsaEncryption [, NULL] }, BIT STRING } */

        if (ngx_pushjobs_keys_der(&d, end, V_ASN1_SEQUENCE, &c, &len)
            != NGX_OK || d != end)
        {
            goto done;
        }

        d = c;
        end = c + len;

        if (ngx_pushjobs_keys_der(&d, end, V_ASN1_SEQUENCE, &a, &len)
            != NGX_OK)
        {
            goto done;
        }

        aend = a + len;

        if (ngx_pushjobs_keys_der(&a, aend, V_ASN1_OBJECT, &c, &len) != NGX_OK
            || len != sizeof(rsa_oid) || ngx_memcmp(c, rsa_oid, len) != 0)
        {
            goto done;
        }

        if (a != aend
            && (ngx_pushjobs_keys_der(&a, aend, V_ASN1_NULL, &c, &len)
                != NGX_OK || len != 0 || a != aend))
        {
            goto done;
        }

        if (ngx_pushjobs_keys_der(&d, end, V_ASN1_BIT_STRING, &c, &len)
            != NGX_OK || d != end || len < 2 || c[0] != 0)
        {
            goto done;
        }

        d = c + 1;
        end = c + len;
    }

    /* RSAPublicKey: SEQUENCE { INTEGER modulus, INTEGER publicExponent } */

    if (ngx_pushjobs_keys_der(&d, end, V_ASN1_SEQUENCE, &c, &len) != NGX_OK
        || d != end)
    {
        goto done;
    }

    d = c;
    end = c + len;

    if (ngx_pushjobs_keys_der(&d, end, V_ASN1_INTEGER, &n_data, &nlen)
        != NGX_OK
        || ngx_pushjobs_keys_der(&d, end, V_ASN1_INTEGER, &e_data, &elen)
           != NGX_OK
        || d != end
        || nlen == 0 || elen == 0
        || (n_data[0] & 0x80) || (e_data[0] & 0x80))
    {
        /* missing, trailing bytes, or negative */
        goto done;
    }

    n = BN_bin2bn(n_data, (int) nlen, NULL);
    e = BN_bin2bn(e_data, (int) elen, NULL);

    /* chef_authn's keys: 1024 bits and more; an odd exponent above 1 */

    if (n == NULL || e == NULL || BN_num_bits(n) < 1024
        || BN_num_bits(n) > 16384 || !BN_is_odd(e) || BN_is_one(e)
        || BN_num_bits(e) > 64)
    {
        goto done;
    }

    bld = OSSL_PARAM_BLD_new();

    if (bld == NULL
        || OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) != 1
        || OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) != 1)
    {
        goto done;
    }

    params = OSSL_PARAM_BLD_to_param(bld);

    if (params) {
        key = ngx_pushjobs_keys_rsa(params);
    }

done:

    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    ngx_free(der);
    ERR_clear_error();

    return key;
}


/*
 * One DER element of the given universal tag at *p, not past end: its
 * contents; *p moves past it.  Indefinite lengths are not DER.
 */

static ngx_int_t
ngx_pushjobs_keys_der(const u_char **p, const u_char *end, int tag,
    const u_char **content, size_t *len)
{
    int            rc, t, cls;
    long           l;
    const u_char  *q;

    q = *p;

    if (q >= end) {
        return NGX_ERROR;
    }

    rc = ASN1_get_object(&q, &l, &t, &cls, end - q);

    if ((rc & 0x80) || (rc & 0x01) || cls != V_ASN1_UNIVERSAL || t != tag
        || ((rc & V_ASN1_CONSTRUCTED) != 0)
           != (tag == V_ASN1_SEQUENCE)
        || l < 0 || l > end - q)
    {
        return NGX_ERROR;
    }

    *content = q;
    *len = (size_t) l;
    *p = q + l;

    return NGX_OK;
}
