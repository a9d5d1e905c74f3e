/*
 * pushjobs-agent: Chef request signing, version 1.3
 * (algorithm=sha256, RSA PKCS#1 v1.5 over the canonical string).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "pja.h"


static int
sign_no_password(char *buf, int size, int rwflag, void *u)
{
    (void) buf;
    (void) size;
    (void) rwflag;
    (void) u;

    return 0;
}


EVP_PKEY *
pja_sign_load_key(const char *file)
{
    BIO       *bio;
    EVP_PKEY  *key;

    bio = BIO_new_file(file, "r");
    if (bio == NULL) {
        pja_log(PJA_LOG_ERR, "cannot open client key %s", file);
        ERR_clear_error();
        return NULL;
    }

    key = PEM_read_bio_PrivateKey(bio, NULL, sign_no_password, NULL);
    BIO_free(bio);

    if (key == NULL || EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA) {
        pja_log(PJA_LOG_ERR, "client key %s is not an RSA private key", file);
        EVP_PKEY_free(key);
        ERR_clear_error();
        return NULL;
    }

    return key;
}


/*
 * The client key both transports sign with.  main() loads it at start,
 * before privileges could be dropped, and the agent keeps it until it
 * exits; a SIGHUP does not re-read it.  A key that does not load is
 * tried again, and reported, on each connect, as when the channel read
 * the file itself: chef-client's first run may write it later.
 */

EVP_PKEY *
pja_sign_key(pja_agent_t *a)
{
    if (a->key == NULL) {
        a->key = pja_sign_load_key(a->conf.client_key);
    }

    return a->key;
}


/* Drops the query, collapses runs of '/', drops a trailing '/'. */

static void
sign_canonical_path(const char *path, pja_buf_t *b)
{
    const char  *p;

    for (p = path; *p && *p != '?'; p++) {
        if (*p == '/' && b->len && b->data[b->len - 1] == '/') {
            continue;
        }
        pja_buf_add(b, p, 1);
    }

    if (b->len > 1 && b->data[b->len - 1] == '/') {
        b->len--;
    }

    if (b->len == 0) {
        pja_buf_add(b, "/", 1);
    }

    pja_buf_cstr(b);
}


int
pja_sign_headers(const char *userid, EVP_PKEY *key, const char *method,
    const char *path, const void *body, size_t blen, const char *eol,
    pja_buf_t *out)
{
    int            rc;
    char           ts[32], *hash, *sig64;
    size_t         siglen, i, n;
    time_t         now;
    struct tm      tm;
    EVP_MD_CTX    *md;
    pja_buf_t      canon = { NULL, 0, 0 }, cpath = { NULL, 0, 0 };
    unsigned char  digest[SHA256_DIGEST_LENGTH], *sig;

    now = time(NULL);
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);

    SHA256(body ? body : (const void *) "", blen, digest);
    hash = pja_base64_encode(digest, sizeof(digest));
    if (hash == NULL) {
        return -1;
    }

    sign_canonical_path(path, &cpath);

    pja_buf_printf(&canon,
                   "Method:%s\n"
                   "Path:%s\n"
                   "X-Ops-Content-Hash:%s\n"
                   "X-Ops-Sign:version=1.3\n"
                   "X-Ops-Timestamp:%s\n"
                   "X-Ops-UserId:%s\n"
                   "X-Ops-Server-API-Version:1",
                   method, cpath.data, hash, ts, userid);

    rc = -1;
    sig = NULL;
    sig64 = NULL;

    md = EVP_MD_CTX_new();
    if (md == NULL || canon.data == NULL) {
        goto done;
    }

    if (EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1
        || EVP_DigestSign(md, NULL, &siglen, (unsigned char *) canon.data,
                          canon.len) != 1)
    {
        pja_log(PJA_LOG_ERR, "cannot sign the request");
        goto done;
    }

    sig = malloc(siglen);
    if (sig == NULL
        || EVP_DigestSign(md, sig, &siglen, (unsigned char *) canon.data,
                          canon.len) != 1)
    {
        pja_log(PJA_LOG_ERR, "cannot sign the request");
        goto done;
    }

    sig64 = pja_base64_encode(sig, siglen);
    if (sig64 == NULL) {
        goto done;
    }

    pja_buf_printf(out,
                   "X-Ops-Sign: algorithm=sha256;version=1.3%s"
                   "X-Ops-UserId: %s%s"
                   "X-Ops-Timestamp: %s%s"
                   "X-Ops-Content-Hash: %s%s"
                   "X-Ops-Server-API-Version: 1%s",
                   eol, userid, eol, ts, eol, hash, eol, eol);

    n = strlen(sig64);
    for (i = 0; i * 60 < n; i++) {
        pja_buf_printf(out, "X-Ops-Authorization-%zu: %.60s%s", i + 1,
                       sig64 + i * 60, eol);
    }

    rc = 0;

done:

    ERR_clear_error();
    EVP_MD_CTX_free(md);
    free(sig);
    free(sig64);
    free(hash);
    pja_buf_free(&canon);
    pja_buf_free(&cpath);
    return rc;
}
