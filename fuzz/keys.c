/*
 * Copyright (C) pushjobs developers
 */


/*
 * The key cache's reader of the public keys the Chef server's principals
 * endpoint returns (ngx_pushjobs_keys_pem): PEM "PUBLIC KEY" and "RSA
 * PUBLIC KEY" read as DER by hand, certificates and the rest through the
 * OpenSSL decoders.
 *
 * Input: the PEM text.  Checked: what is read is an RSA key, and when the
 * text holds one PEM block that OpenSSL's own decoder reads too, both give
 * the same key.
 */


#include "ngx_pushjobs_module.h"
#include "ngx_fuzz.h"

#include <openssl/decoder.h>
#include <openssl/err.h>


static EVP_PKEY *
ngx_fuzz_keys_openssl(u_char *data, size_t len)
{
    EVP_PKEY          *pkey;
    const u_char      *p;
    OSSL_DECODER_CTX  *dctx;

    pkey = NULL;

    dctx = OSSL_DECODER_CTX_new_for_pkey(&pkey, "PEM", NULL, "RSA",
                                         EVP_PKEY_PUBLIC_KEY, NULL, NULL);
    if (dctx == NULL) {
        return NULL;
    }

    p = data;

    if (OSSL_DECODER_from_data(dctx, &p, &len) != 1) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }

    OSSL_DECODER_CTX_free(dctx);
    ERR_clear_error();

    return pkey;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char     *copy, *p, *last;
    ngx_str_t   pem;
    ngx_log_t  *log;
    ngx_uint_t  blocks;
    EVP_PKEY   *key, *other;

    log = ngx_fuzz_init();

    /* an exact copy: a read past the text is an ASan report */

    copy = ngx_alloc(size ? size : 1, log);
    if (copy == NULL) {
        abort();
    }

    ngx_memcpy(copy, data, size);

    pem.data = copy;
    pem.len = size;

    key = ngx_pushjobs_keys_pem(log, &pem);

    if (key) {
        if (!EVP_PKEY_is_a(key, "RSA")) {
            abort();
        }

        blocks = 0;
        p = copy;
        last = copy + size;

        while ((p = ngx_strlcasestrn(p, last, (u_char *) "-----BEGIN",
                                     sizeof("-----BEGIN") - 2))
               != NULL)
        {
            blocks++;
            p++;
        }

        if (blocks == 1
            && ngx_strlcasestrn(copy, last, (u_char *) "CERTIFICATE",
                                sizeof("CERTIFICATE") - 2)
               == NULL)
        {
            other = ngx_fuzz_keys_openssl(copy, size);

            if (other && EVP_PKEY_eq(key, other) != 1) {
                abort();
            }

            EVP_PKEY_free(other);
        }

        EVP_PKEY_free(key);
    }

    ERR_clear_error();
    ngx_free(copy);

    return 0;
}
