/*
 * pushjobs-agent: growable buffers, base64, clocks and small helpers.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include <openssl/rand.h>

#include "pja.h"


static const char  b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";


int
pja_buf_reserve(pja_buf_t *b, size_t n)
{
    size_t   cap;
    char    *p;

    if (b->len + n + 1 <= b->cap) {
        return 0;
    }

    cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) {
        cap *= 2;
    }

    p = realloc(b->data, cap);
    if (p == NULL) {
        pja_log(PJA_LOG_ERR, "out of memory (%zu bytes)", cap);
        return -1;
    }

    b->data = p;
    b->cap = cap;
    return 0;
}


int
pja_buf_add(pja_buf_t *b, const void *p, size_t n)
{
    if (pja_buf_reserve(b, n) != 0) {
        return -1;
    }

    if (n) {
        memcpy(b->data + b->len, p, n);
    }
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}


int
pja_buf_addstr(pja_buf_t *b, const char *s)
{
    return pja_buf_add(b, s, strlen(s));
}


int
pja_buf_printf(pja_buf_t *b, const char *fmt, ...)
{
    int      n;
    va_list  ap;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);

    if (n < 0 || pja_buf_reserve(b, (size_t) n) != 0) {
        return -1;
    }

    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap);
    va_end(ap);

    b->len += (size_t) n;
    return 0;
}


/* Makes sure b->data is a valid (possibly empty) C string. */

int
pja_buf_cstr(pja_buf_t *b)
{
    return pja_buf_reserve(b, 0) == 0 ? (b->data[b->len] = '\0', 0) : -1;
}


void
pja_buf_consume(pja_buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;

    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }

    if (b->data) {
        b->data[b->len] = '\0';
    }
}


void
pja_buf_free(pja_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}


char *
pja_base64_encode(const void *src, size_t n)
{
    size_t                i, o;
    uint32_t              v;
    char                 *dst;
    const unsigned char  *p = src;

    dst = malloc((n + 2) / 3 * 4 + 1);
    if (dst == NULL) {
        return NULL;
    }

    for (i = 0, o = 0; i + 2 < n; i += 3) {
        v = (uint32_t) p[i] << 16 | (uint32_t) p[i + 1] << 8 | p[i + 2];
        dst[o++] = b64_alphabet[v >> 18];
        dst[o++] = b64_alphabet[(v >> 12) & 63];
        dst[o++] = b64_alphabet[(v >> 6) & 63];
        dst[o++] = b64_alphabet[v & 63];
    }

    if (i < n) {
        v = (uint32_t) p[i] << 16;
        if (i + 1 < n) {
            v |= (uint32_t) p[i + 1] << 8;
        }

        dst[o++] = b64_alphabet[v >> 18];
        dst[o++] = b64_alphabet[(v >> 12) & 63];
        dst[o++] = (i + 1 < n) ? b64_alphabet[(v >> 6) & 63] : '=';
        dst[o++] = '=';
    }

    dst[o] = '\0';
    return dst;
}


/* Decodes standard base64; whitespace is skipped, padding is optional. */

int
pja_base64_decode(const char *s, size_t n, pja_buf_t *out)
{
    int            d, bits;
    size_t         i;
    uint32_t       acc;
    unsigned char  c;

    acc = 0;
    bits = 0;

    for (i = 0; i < n; i++) {
        c = (unsigned char) s[i];

        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            continue;
        }

        if (c == '=') {
            for (i++; i < n; i++) {
                c = (unsigned char) s[i];
                if (c != '=' && c != ' ' && c != '\n' && c != '\r'
                    && c != '\t')
                {
                    return -1;
                }
            }
            break;
        }

        if (c >= 'A' && c <= 'Z') {
            d = c - 'A';
        } else if (c >= 'a' && c <= 'z') {
            d = c - 'a' + 26;
        } else if (c >= '0' && c <= '9') {
            d = c - '0' + 52;
        } else if (c == '+' || c == '-') {
            d = 62;
        } else if (c == '/' || c == '_') {
            d = 63;
        } else {
            return -1;
        }

        acc = (acc << 6) | (uint32_t) d;
        bits += 6;

        if (bits >= 8) {
            bits -= 8;
            c = (unsigned char) ((acc >> bits) & 0xff);
            if (pja_buf_add(out, &c, 1) != 0) {
                return -1;
            }
        }
    }

    /* A single dangling sextet cannot be valid base64. */
    return bits >= 6 ? -1 : 0;
}


int64_t
pja_now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


int
pja_random_bytes(void *p, size_t n)
{
    if (RAND_bytes(p, (int) n) != 1) {
        pja_log(PJA_LOG_ERR, "RAND_bytes() failed");
        return -1;
    }

    return 0;
}


uint32_t
pja_random_u32(void)
{
    uint32_t  v;

    if (pja_random_bytes(&v, sizeof(v)) != 0) {
        v = (uint32_t) pja_now_ms() * 2654435761u;
    }

    return v;
}


int
pja_valid_job_id(const char *id)
{
    size_t  i;

    if (id == NULL) {
        return 0;
    }

    for (i = 0; i < 32; i++) {
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
        {
            return 0;
        }
    }

    return id[32] == '\0';
}


int
pja_set_nonblock(int fd)
{
    int  fl;

    fl = fcntl(fd, F_GETFL);
    if (fl == -1 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1) {
        return -1;
    }

    return 0;
}


int
pja_set_cloexec(int fd)
{
    int  fl;

    fl = fcntl(fd, F_GETFD);
    if (fl == -1 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) == -1) {
        return -1;
    }

    return 0;
}


/* A close-on-exec pipe (pipe2() is not POSIX). */

int
pja_pipe(int fds[2], int nonblock)
{
    int  i;

    if (pipe(fds) != 0) {
        return -1;
    }

    for (i = 0; i < 2; i++) {
        if (pja_set_cloexec(fds[i]) != 0
            || (nonblock && pja_set_nonblock(fds[i]) != 0))
        {
            close(fds[0]);
            close(fds[1]);
            fds[0] = fds[1] = -1;
            return -1;
        }
    }

    return 0;
}


int
pja_mkdir_p(const char *path, mode_t mode)
{
    char   *p, *s;
    int     rc;

    s = pja_strdup(path);
    if (s == NULL) {
        return -1;
    }

    rc = 0;

    for (p = s + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char  c = *p;

            *p = '\0';
            if (mkdir(s, mode) != 0 && errno != EEXIST) {
                rc = -1;
                break;
            }
            *p = c;

            if (c == '\0') {
                break;
            }
        }
    }

    free(s);
    return rc;
}


char *
pja_strdup(const char *s)
{
    char  *d;

    if (s == NULL) {
        return NULL;
    }

    d = strdup(s);
    if (d == NULL) {
        pja_log(PJA_LOG_ERR, "out of memory");
    }

    return d;
}


void *
pja_xalloc(size_t n)
{
    void  *p;

    p = calloc(1, n ? n : 1);
    if (p == NULL) {
        pja_log(PJA_LOG_ERR, "out of memory (%zu bytes)", n);
    }

    return p;
}
