/*
 * pushjobs-loadagent: thousands of simulated push jobs agents in one
 * process (one epoll loop), for the benchmarks in bench/.
 *
 * Every simulated agent is a Chef client PREFIX<N> holding the real agent
 * channel (docs/protocol.md): TLS (OpenSSL, non-blocking), a websocket
 * upgrade signed with Chef signed headers v1.3, hello, and the job protocol
 * answered without forking: commit -> ack_commit, run -> ack_run +
 * succeeded, abort -> aborted, ping -> pong.  All simulated clients share
 * one RSA key (the bench's Chef API fixture maps each name to it).
 * Connections come from many loopback source addresses (127.0.x.y) so that
 * ephemeral ports never run out, also not with TIME_WAIT after a storm.
 * With several front ends (--port P1,P2,...) client N starts on front end
 * N mod K, and a channel that closes or fails comes back through another
 * front end, as behind a load balancer.
 *
 * The arrival time (CLOCK_MONOTONIC) of every commit frame is recorded per
 * job.  Commands on stdin, answers on stdout (one line each):
 *
 *   stats            stats t=<us> conns=.. open=.. welcomed=.. ...
 *   times JOBID      times JOBID <n> <us> <us> ...   (commit arrivals)
 *   report           one "job ..." line per job seen, then "end"
 *   quit             exit
 *
 * Times are CLOCK_MONOTONIC microseconds, comparable with the harness's.
 */

#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>


#define LA_MAX_JOBS      64
#define LA_READ_BUF      (64 * 1024)
#define LA_MAX_FRAME     (4 * 1024 * 1024)

enum {
    ST_IDLE = 0,        /* waiting for its (re)connect time */
    ST_CONNECTING,      /* TCP connect in progress */
    ST_TLS,             /* TLS handshake */
    ST_UPGRADE,         /* upgrade request sent, reading the response */
    ST_OPEN             /* websocket open */
};

typedef struct {
    int              fd;
    int              state;
    uint32_t         index;        /* client name number */
    uint32_t         backoff;      /* seconds of the next backoff window */
    uint32_t         port;         /* index in opt.ports: its front end */
    uint32_t         refused;      /* front ends that refused in a row */
    int64_t          due;          /* us: when to connect (ST_IDLE) */
    int64_t          started;      /* us: connect start */
    SSL             *ssl;
    SSL_SESSION     *session;      /* the last ticket, to resume with */
    unsigned char   *out;          /* pending bytes to write */
    size_t           olen, ocap;
    unsigned char   *in;           /* incomplete input (frame or header) */
    size_t           ilen, icap;
    unsigned         welcomed:1;
    unsigned         want_write:1;
    unsigned         closing:1;
    unsigned         evmask;
} conn_t;

typedef struct {
    char             id[33];
    uint32_t         commits, runs, succeeded, aborts, acks;
    int              capture;      /* the commit asked for output */
    int64_t         *times;        /* commit arrivals, us */
    size_t           ntimes, cap;
} job_t;

#define LA_MAX_PORTS     64

static struct {
    const char      *host;
    int              ports[LA_MAX_PORTS];  /* front ends, one port each */
    uint32_t         nports;
    const char      *org;
    const char      *prefix;
    const char      *key_file;
    const char      *ca_file;
    uint32_t         first, count;
    uint32_t         src_first, src_count;
    uint32_t         inflight_max;
    double           backoff_first;
    int              verbose;
    int              no_resume;
} opt = {
    "127.0.0.1", { 0 }, 0, "demo", "sim", NULL, NULL, 1, 100, 0, 1, 256, 1.0, 0, 0
};

static EVP_PKEY     *key;
static SSL_CTX      *sslctx;
static int           ep;
static conn_t       *conns;
static job_t         jobs[LA_MAX_JOBS];
static size_t        njobs;
static char          ws_path[512];
static char          content_hash[64];
static unsigned char rbuf[LA_READ_BUF];
static uint32_t      inflight;
static uint64_t      rng = 0x9e3779b97f4a7c15ULL;

static struct {
    uint64_t         connects, connect_fail, tls_fail, upgrade_fail;
    uint64_t         resumed;
    uint64_t         welcomes, closes, pings, frames_in, frames_out;
    uint64_t         close_codes[8];   /* 1000,1001,1002,1008,1011,4000,other, eof */
    int64_t          last_welcome;
} st;


static int64_t
now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


static uint32_t
rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t) (rng >> 16);
}


static void
die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "loadagent: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    ERR_print_errors_fp(stderr);
    exit(1);
}


static void *
xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (p == NULL) {
        die("out of memory");
    }
    return p;
}


static void
buf_add(unsigned char **b, size_t *len, size_t *cap, const void *p, size_t n)
{
    if (*len + n > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n) {
            c *= 2;
        }
        *b = xrealloc(*b, c);
        *cap = c;
    }
    memcpy(*b + *len, p, n);
    *len += n;
}


static void
buf_release(unsigned char **b, size_t *len, size_t *cap)
{
    free(*b);
    *b = NULL;
    *len = 0;
    *cap = 0;
}


/* --- Chef signing (v1.3) ---------------------------------------------- */

static char *
b64(const unsigned char *p, size_t n, char *out)
{
    EVP_EncodeBlock((unsigned char *) out, p, (int) n);
    return out;
}


/* Appends the signed headers of GET ws_path as NAME to the out buffer. */

static int
sign_headers(conn_t *c, const char *name)
{
    char            ts[32], canon[1024], sig64[1024], hdr[2048];
    unsigned char   sig[1024];
    size_t          siglen, i, n, hl;
    time_t          now;
    struct tm       tm;
    EVP_MD_CTX     *md;

    now = time(NULL);
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);

    n = (size_t) snprintf(canon, sizeof(canon),
                          "Method:GET\nPath:%s\nX-Ops-Content-Hash:%s\n"
                          "X-Ops-Sign:version=1.3\nX-Ops-Timestamp:%s\n"
                          "X-Ops-UserId:%s\nX-Ops-Server-API-Version:1",
                          ws_path, content_hash, ts, name);

    md = EVP_MD_CTX_new();
    siglen = sizeof(sig);
    if (md == NULL
        || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1
        || EVP_DigestSign(md, sig, &siglen, (unsigned char *) canon, n) != 1)
    {
        EVP_MD_CTX_free(md);
        ERR_clear_error();
        return -1;
    }
    EVP_MD_CTX_free(md);
    b64(sig, siglen, sig64);

    hl = (size_t) snprintf(hdr, sizeof(hdr),
                           "X-Ops-Sign: algorithm=sha256;version=1.3\r\n"
                           "X-Ops-UserId: %s\r\n"
                           "X-Ops-Timestamp: %s\r\n"
                           "X-Ops-Content-Hash: %s\r\n"
                           "X-Ops-Server-API-Version: 1\r\n",
                           name, ts, content_hash);
    buf_add(&c->out, &c->olen, &c->ocap, hdr, hl);

    n = strlen(sig64);
    for (i = 0; i * 60 < n; i++) {
        hl = (size_t) snprintf(hdr, sizeof(hdr),
                               "X-Ops-Authorization-%zu: %.60s\r\n", i + 1,
                               sig64 + i * 60);
        buf_add(&c->out, &c->olen, &c->ocap, hdr, hl);
    }
    return 0;
}


/* --- connections ------------------------------------------------------- */

static void
set_events(conn_t *c, unsigned ev)
{
    struct epoll_event e;

    if (c->evmask == ev) {
        return;
    }
    e.events = ev;
    e.data.ptr = c;
    if (epoll_ctl(ep, c->evmask ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &e)
        < 0)
    {
        die("epoll_ctl: %s", strerror(errno));
    }
    c->evmask = ev;
}


static void
schedule(conn_t *c, int failed)
{
    double window;

    /* exponential backoff with full jitter, as pushjobs-agent does;
     * the first window after a working channel is backoff_first seconds */
    if (!failed) {
        c->backoff = 0;
    }
    window = opt.backoff_first * (double) (1u << c->backoff);
    if (window > 60) {
        window = 60;
    } else {
        c->backoff++;
    }
    c->due = now_us() + (int64_t) (window * 1e6 * (rnd() % 10000) / 10000.0);
    c->state = ST_IDLE;
}


/* The server's session ticket: kept (as the real agent does). */

static int
new_session(SSL *ssl, SSL_SESSION *session)
{
    conn_t       *c = SSL_get_app_data(ssl);
    SSL_SESSION  *copy;

    if (c == NULL || (copy = SSL_SESSION_dup(session)) == NULL) {
        return 0;
    }
    if (c->session) {
        SSL_SESSION_free(c->session);
    }
    c->session = copy;
    return 0;
}


static void
conn_close(conn_t *c, int failed)
{
    int  refused = failed && c->state == ST_CONNECTING;

    if (c->state == ST_CONNECTING || c->state == ST_TLS
        || c->state == ST_UPGRADE)
    {
        inflight--;
    }
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);       /* epoll forgets it */
        c->fd = -1;
    }
    c->evmask = 0;
    c->welcomed = 0;
    c->closing = 0;
    c->want_write = 0;
    buf_release(&c->out, &c->olen, &c->ocap);
    buf_release(&c->in, &c->ilen, &c->icap);
    st.closes++;
    /* with several front ends a closed or failed channel comes back
     * through another one, as behind a load balancer that drops a
     * front end it cannot reach */
    if (opt.nports > 1) {
        c->port = (c->port + 1 + rnd() % (opt.nports - 1)) % opt.nports;

        /* a front end that refuses the connection is one the balancer
         * would not have chosen: the next one is tried at once (until
         * each was tried), not after a backoff */
        if (refused && c->refused < opt.nports - 1) {
            c->refused++;
            c->due = now_us() + (int64_t) (rnd() % 50000);
            c->state = ST_IDLE;
            return;
        }
    }
    c->refused = 0;
    schedule(c, failed);
}


static void
src_addr(uint32_t i, struct sockaddr_in *sa)
{
    uint32_t j = opt.src_first + (i % opt.src_count);

    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    /* 127.0.A.B with B in 2..251 */
    sa->sin_addr.s_addr = htonl((127u << 24) | ((j / 250) << 8)
                                | (2 + j % 250));
}


static void
conn_start(conn_t *c)
{
    int                 fd, one = 1;
    struct sockaddr_in  sa;

    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "loadagent: socket: %s\n", strerror(errno));
        schedule(c, 1);
        return;
    }
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    src_addr(c->index, &sa);
    if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
        fprintf(stderr, "loadagent: bind: %s\n", strerror(errno));
        close(fd);
        schedule(c, 1);
        return;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) opt.ports[c->port]);
    inet_pton(AF_INET, opt.host, &sa.sin_addr);

    c->fd = fd;
    c->evmask = 0;
    c->started = now_us();
    c->state = ST_CONNECTING;      /* in flight, also when refused at once */
    inflight++;
    st.connects++;

    if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0
        && errno != EINPROGRESS)
    {
        st.connect_fail++;
        conn_close(c, 1);
        return;
    }
    set_events(c, EPOLLOUT);
}


/* Queues a masked text frame. */

static void
ws_send(conn_t *c, int opcode, const char *p, size_t n)
{
    unsigned char  h[14], *q;
    size_t         hl, i, start;
    uint32_t       m = rnd();

    h[0] = (unsigned char) (0x80 | opcode);
    if (n < 126) {
        h[1] = (unsigned char) (0x80 | n);
        hl = 2;
    } else if (n < 65536) {
        h[1] = 0x80 | 126;
        h[2] = (unsigned char) (n >> 8);
        h[3] = (unsigned char) n;
        hl = 4;
    } else {
        h[1] = 0x80 | 127;
        for (i = 0; i < 8; i++) {
            h[2 + i] = (unsigned char) ((uint64_t) n >> (56 - 8 * i));
        }
        hl = 10;
    }
    memcpy(h + hl, &m, 4);
    hl += 4;
    buf_add(&c->out, &c->olen, &c->ocap, h, hl);
    start = c->olen;
    buf_add(&c->out, &c->olen, &c->ocap, p, n);
    q = c->out + start;
    for (i = 0; i < n; i++) {
        q[i] ^= h[hl - 4 + (i & 3)];
    }
    st.frames_out++;
}


static void
ws_send_json(conn_t *c, const char *fmt, ...)
{
    char     msg[512];
    int      n;
    va_list  ap;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ws_send(c, 1, msg, (size_t) n);
}


/* The string value of "key" in a flat JSON object (no escapes needed for
 * the fields read here: type, job_id); 0 if absent. */

static int
json_str(const char *js, size_t n, const char *k, char *out, size_t outsz)
{
    const char *p = js, *end = js + n, *q;
    size_t      kl = strlen(k), l;

    while ((p = memmem(p, (size_t) (end - p), k, kl)) != NULL) {
        if (p > js && p[-1] == '"' && p + kl < end && p[kl] == '"') {
            q = p + kl + 1;
            while (q < end && (*q == ' ' || *q == ':' || *q == '\t')) {
                q++;
            }
            if (q < end && *q == '"') {
                q++;
                for (l = 0; q + l < end && q[l] != '"'; l++) {
                    /* scan */
                }
                if (l >= outsz) {
                    l = outsz - 1;
                }
                memcpy(out, q, l);
                out[l] = '\0';
                return 1;
            }
        }
        p += kl;
    }
    return 0;
}


static job_t *
job_get(const char *id)
{
    size_t i;

    for (i = 0; i < njobs; i++) {
        if (strcmp(jobs[i].id, id) == 0) {
            return &jobs[i];
        }
    }
    if (njobs == LA_MAX_JOBS) {
        /* forget the oldest */
        free(jobs[0].times);
        memmove(&jobs[0], &jobs[1], sizeof(job_t) * (LA_MAX_JOBS - 1));
        njobs--;
    }
    memset(&jobs[njobs], 0, sizeof(job_t));
    memcpy(jobs[njobs].id, id, 32);
    jobs[njobs].id[32] = '\0';
    return &jobs[njobs++];
}


static void
on_text(conn_t *c, const char *js, size_t n, int64_t t)
{
    char    type[32], id[33];
    job_t  *j;

    if (!json_str(js, n, "type", type, sizeof(type))) {
        return;
    }
    if (strcmp(type, "welcome") == 0) {
        c->welcomed = 1;
        c->backoff = 0;
        st.welcomes++;
        st.last_welcome = t;
        return;
    }
    if (!json_str(js, n, "job_id", id, sizeof(id))) {
        return;
    }
    j = job_get(id);

    if (strcmp(type, "commit") == 0) {
        j->commits++;
        if (j->ntimes == j->cap) {
            j->cap = j->cap ? j->cap * 2 : 1024;
            j->times = xrealloc(j->times, j->cap * sizeof(int64_t));
        }
        j->times[j->ntimes++] = t;
        j->capture = memmem(js, n, "\"capture\":true", 15) != NULL
                     || memmem(js, n, "\"capture\": true", 16) != NULL;
        ws_send_json(c, "{\"type\":\"ack_commit\",\"v\":1,\"job_id\":\"%s\"}",
                     id);

    } else if (strcmp(type, "run") == 0) {
        j->runs++;
        ws_send_json(c, "{\"type\":\"ack_run\",\"v\":1,\"job_id\":\"%s\"}", id);
        /* like pushjobs-agent: output only when the job captures it */
        if (j->capture) {
            ws_send_json(c, "{\"type\":\"succeeded\",\"v\":1,"
                         "\"job_id\":\"%s\",\"exit_status\":0,"
                         "\"stdout\":\"\",\"stderr\":\"\","
                         "\"truncated\":false}", id);
        } else {
            ws_send_json(c, "{\"type\":\"succeeded\",\"v\":1,"
                         "\"job_id\":\"%s\",\"exit_status\":0}", id);
        }
        j->succeeded++;

    } else if (strcmp(type, "abort") == 0) {
        j->aborts++;
        ws_send_json(c, "{\"type\":\"aborted\",\"v\":1,\"job_id\":\"%s\"}", id);

    } else if (strcmp(type, "ack") == 0) {
        j->acks++;
    }
}


/* Parses complete frames from p[0..n); returns bytes consumed, -1 to
 * close. */

static long
ws_parse(conn_t *c, unsigned char *p, size_t n, int64_t t)
{
    size_t    off = 0, hl, plen, i;
    int       op;
    unsigned  code;

    while (n - off >= 2) {
        unsigned char *f = p + off;
        op = f[0] & 0x0f;
        plen = f[1] & 0x7f;
        hl = 2;
        if (f[1] & 0x80) {
            return -1;                 /* masked server frame */
        }
        if (plen == 126) {
            if (n - off < 4) {
                break;
            }
            plen = ((size_t) f[2] << 8) | f[3];
            hl = 4;
        } else if (plen == 127) {
            if (n - off < 10) {
                break;
            }
            plen = 0;
            for (i = 0; i < 8; i++) {
                plen = (plen << 8) | f[2 + i];
            }
            hl = 10;
        }
        if (plen > LA_MAX_FRAME) {
            return -1;
        }
        if (n - off < hl + plen) {
            break;
        }
        st.frames_in++;

        switch (op) {
        case 1:
        case 0:                        /* server frames are never fragmented
                                          in practice; a fragment's JSON is
                                          then just not recognized */
            on_text(c, (char *) f + hl, plen, t);
            break;
        case 9:
            st.pings++;
            ws_send(c, 10, (char *) f + hl, plen);
            break;
        case 8:
            code = plen >= 2 ? ((unsigned) f[hl] << 8 | f[hl + 1]) : 0;
            switch (code) {
            case 1000: st.close_codes[0]++; break;
            case 1001: st.close_codes[1]++; break;
            case 1002: st.close_codes[2]++; break;
            case 1008: st.close_codes[3]++; break;
            case 1011: st.close_codes[4]++; break;
            case 4000: st.close_codes[5]++; break;
            default: st.close_codes[6]++; break;
            }
            if (opt.verbose) {
                fprintf(stderr, "loadagent: %s%u closed %u\n", opt.prefix,
                        c->index, code);
            }
            /* answer the close; the server closes TCP first */
            ws_send(c, 8, (char *) f + hl, plen >= 2 ? 2 : 0);
            c->closing = 1;
            break;
        default:
            break;
        }
        off += hl + plen;
    }
    return (long) off;
}


static int
flush_out(conn_t *c)
{
    int n;

    while (c->olen) {
        n = SSL_write(c->ssl, c->out, (int) c->olen);
        if (n <= 0) {
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                c->want_write = 1;
                return 0;
            }
            ERR_clear_error();
            return -1;
        }
        memmove(c->out, c->out + n, c->olen - (size_t) n);
        c->olen -= (size_t) n;
    }
    c->want_write = 0;
    if (c->ocap > 4096) {
        buf_release(&c->out, &c->olen, &c->ocap);
    }
    return 0;
}


static void
send_upgrade(conn_t *c)
{
    char           name[128], req[1024], k64[32];
    unsigned char  k[16];
    int            n;

    snprintf(name, sizeof(name), "%s%u", opt.prefix, c->index);
    RAND_bytes(k, sizeof(k));
    b64(k, sizeof(k), k64);
    n = snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                 "Sec-WebSocket-Version: 13\r\n"
                 "X-Pushjobs-Agent: pushjobs-loadagent/0.1\r\n",
                 ws_path, opt.host, opt.ports[c->port], k64);
    buf_add(&c->out, &c->olen, &c->ocap, req, (size_t) n);
    if (sign_headers(c, name) != 0) {
        die("cannot sign");
    }
    buf_add(&c->out, &c->olen, &c->ocap, "\r\n", 2);
}


/* Reads what there is; returns -1 to close. */

/* Parses the frames buffered in c->in and keeps the rest; -1 on error. */
static int
conn_parse_in(conn_t *c, int64_t t)
{
    long  used;

    if (c->ilen) {
        used = ws_parse(c, c->in, c->ilen, t);
        if (used < 0) {
            return -1;
        }
        memmove(c->in, c->in + used, c->ilen - (size_t) used);
        c->ilen -= (size_t) used;
    }
    if (c->ilen == 0) {
        buf_release(&c->in, &c->ilen, &c->icap);
    }
    return 0;
}

static int
do_read(conn_t *c)
{
    int       n, e;
    long      used;
    int64_t   t;
    char     *eoh;

    for (;;) {
        n = SSL_read(c->ssl, rbuf, sizeof(rbuf));
        if (n <= 0) {
            e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_READ) {
                return 0;
            }
            if (e == SSL_ERROR_WANT_WRITE) {
                c->want_write = 1;
                return 0;
            }
            ERR_clear_error();
            if (c->state == ST_OPEN && !c->closing) {
                st.close_codes[7]++;
            }
            return -1;
        }
        t = now_us();

        if (c->state == ST_UPGRADE) {
            buf_add(&c->in, &c->ilen, &c->icap, rbuf, (size_t) n);
            buf_add(&c->in, &c->ilen, &c->icap, "", 1);
            c->ilen--;
            eoh = strstr((char *) c->in, "\r\n\r\n");
            if (eoh == NULL) {
                if (c->ilen > 16384) {
                    return -1;
                }
                continue;
            }
            if (strncmp((char *) c->in, "HTTP/1.1 101", 12) != 0) {
                st.upgrade_fail++;
                if (opt.verbose || st.upgrade_fail <= 3) {
                    fprintf(stderr, "loadagent: %s%u: %.*s\n", opt.prefix,
                            c->index, (int) (strchr((char *) c->in, '\r')
                                             - (char *) c->in),
                            (char *) c->in);
                }
                return -1;
            }
            c->state = ST_OPEN;
            inflight--;
            ws_send_json(c, "{\"type\":\"hello\",\"v\":1,"
                         "\"agent\":\"pushjobs-loadagent/0.1\",\"jobs\":[]}");
            /* frames right behind the header */
            {
                size_t rest = c->ilen - (size_t) ((eoh + 4) - (char *) c->in);
                memmove(c->in, eoh + 4, rest);
                c->ilen = rest;
            }
            if (conn_parse_in(c, t) != 0) {
                return -1;
            }
            continue;
        }

        if (c->ilen == 0) {
            used = ws_parse(c, rbuf, (size_t) n, t);
            if (used < 0) {
                return -1;
            }
            if (used < n) {
                buf_add(&c->in, &c->ilen, &c->icap, rbuf + used,
                        (size_t) (n - used));
            }
        } else {
            buf_add(&c->in, &c->ilen, &c->icap, rbuf, (size_t) n);
            if (conn_parse_in(c, t) != 0) {
                return -1;
            }
        }
    }
}


static void
conn_event(conn_t *c, unsigned ev)
{
    int        e, n, err;
    socklen_t  len;

    if (c->state == ST_CONNECTING) {
        len = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            st.connect_fail++;
            if (opt.verbose) {
                fprintf(stderr, "loadagent: connect: %s\n", strerror(err));
            }
            conn_close(c, 1);
            return;
        }
        c->ssl = SSL_new(sslctx);
        if (c->ssl == NULL) {
            die("SSL_new");
        }
        SSL_set_app_data(c->ssl, c);
        if (c->session) {
            /* a copy: an unclean end marks a session not resumable */
            SSL_SESSION *s = SSL_SESSION_dup(c->session);
            if (s) {
                SSL_set_session(c->ssl, s);
                SSL_SESSION_free(s);
            }
            ERR_clear_error();
        }
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_connect_state(c->ssl);
        c->state = ST_TLS;
    }

    if (c->state == ST_TLS) {
        n = SSL_do_handshake(c->ssl);
        if (n != 1) {
            e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_READ) {
                set_events(c, EPOLLIN);
                return;
            }
            if (e == SSL_ERROR_WANT_WRITE) {
                set_events(c, EPOLLOUT);
                return;
            }
            st.tls_fail++;
            if (opt.verbose || st.tls_fail <= 3) {
                fprintf(stderr, "loadagent: TLS handshake failed (%d)\n", e);
                ERR_print_errors_fp(stderr);
            }
            ERR_clear_error();
            conn_close(c, 1);
            return;
        }
        if (SSL_session_reused(c->ssl)) {
            st.resumed++;
        }
        c->state = ST_UPGRADE;
        send_upgrade(c);
        ev |= EPOLLIN;
    }

    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (do_read(c) < 0) {
            conn_close(c, c->state != ST_OPEN);
            return;
        }
    }

    if (flush_out(c) < 0) {
        conn_close(c, c->state != ST_OPEN);
        return;
    }
    set_events(c, EPOLLIN | (c->want_write ? EPOLLOUT : 0));
}


/* --- commands ---------------------------------------------------------- */

static int
cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
    return x < y ? -1 : x > y;
}


static void
print_stats(void)
{
    uint32_t  i, open = 0, welcomed = 0, idle = 0;

    for (i = 0; i < opt.count; i++) {
        open += conns[i].state == ST_OPEN;
        welcomed += conns[i].welcomed;
        idle += conns[i].state == ST_IDLE;
    }
    printf("stats t=%lld conns=%u open=%u welcomed=%u idle=%u inflight=%u "
           "connects=%llu connect_fail=%llu tls_fail=%llu upgrade_fail=%llu "
           "welcomes=%llu closes=%llu pings=%llu frames_in=%llu "
           "frames_out=%llu close_1000=%llu close_1001=%llu close_1002=%llu "
           "close_1008=%llu close_1011=%llu close_4000=%llu close_other=%llu "
           "eof=%llu last_welcome=%lld resumed=%llu\n",
           (long long) now_us(), opt.count, open, welcomed, idle, inflight,
           (unsigned long long) st.connects,
           (unsigned long long) st.connect_fail,
           (unsigned long long) st.tls_fail,
           (unsigned long long) st.upgrade_fail,
           (unsigned long long) st.welcomes, (unsigned long long) st.closes,
           (unsigned long long) st.pings, (unsigned long long) st.frames_in,
           (unsigned long long) st.frames_out,
           (unsigned long long) st.close_codes[0],
           (unsigned long long) st.close_codes[1],
           (unsigned long long) st.close_codes[2],
           (unsigned long long) st.close_codes[3],
           (unsigned long long) st.close_codes[4],
           (unsigned long long) st.close_codes[5],
           (unsigned long long) st.close_codes[6],
           (unsigned long long) st.close_codes[7],
           (long long) st.last_welcome, (unsigned long long) st.resumed);
}


static void
print_job(job_t *j)
{
    int64_t  p50 = 0, p99 = 0, first = 0, last = 0;

    if (j->ntimes) {
        qsort(j->times, j->ntimes, sizeof(int64_t), cmp64);
        first = j->times[0];
        last = j->times[j->ntimes - 1];
        p50 = j->times[(j->ntimes - 1) / 2];
        p99 = j->times[(j->ntimes - 1) * 99 / 100];
    }
    printf("job %s commits=%u runs=%u succeeded=%u aborts=%u acks=%u "
           "first_commit=%lld p50_commit=%lld p99_commit=%lld "
           "last_commit=%lld\n", j->id, j->commits, j->runs, j->succeeded,
           j->aborts, j->acks, (long long) first, (long long) p50,
           (long long) p99, (long long) last);
}


static int
command(char *line)
{
    size_t  i;
    char   *arg;

    line[strcspn(line, "\r\n")] = '\0';
    arg = strchr(line, ' ');
    if (arg) {
        *arg++ = '\0';
    }

    if (strcmp(line, "stats") == 0) {
        print_stats();
    } else if (strcmp(line, "times") == 0 && arg) {
        job_t *j = NULL;
        for (i = 0; i < njobs; i++) {
            if (strcmp(jobs[i].id, arg) == 0) {
                j = &jobs[i];
            }
        }
        printf("times %s %zu", arg, j ? j->ntimes : 0);
        for (i = 0; j && i < j->ntimes; i++) {
            printf(" %lld", (long long) j->times[i]);
        }
        printf("\n");
    } else if (strcmp(line, "report") == 0) {
        for (i = 0; i < njobs; i++) {
            print_job(&jobs[i]);
        }
        printf("end\n");
    } else if (strcmp(line, "quit") == 0) {
        return 1;
    } else {
        printf("error unknown command\n");
    }
    fflush(stdout);
    return 0;
}


/*
 * --port P1,P2,...: one port per front end; client N starts on front end
 * N mod K and moves to another after each close.
 */

static void
ports_parse(const char *arg)
{
    char  *end;
    long   v;

    for ( ;; ) {
        v = strtol(arg, &end, 10);
        if (end == arg || v <= 0 || v > 65535 || opt.nports == LA_MAX_PORTS
            || (*end != ',' && *end != '\0'))
        {
            die("bad --port %s", arg);
        }
        opt.ports[opt.nports++] = (int) v;
        if (*end == '\0') {
            return;
        }
        arg = end + 1;
    }
}


static void
usage(void)
{
    fprintf(stderr,
        "usage: pushjobs-loadagent --port PORT[,PORT...] --key PEM\n"
        "         [--host 127.0.0.1]\n"
        "         [--org demo] [--prefix sim] [--first 1] [--count 100]\n"
        "         [--src-first 0] [--src-count 1] [--inflight 256]\n"
        "         [--backoff 1.0] [--ca CRT] [--no-resume] [-v]\n");
    exit(2);
}


int
main(int argc, char **argv)
{
    static const struct option lo[] = {
        { "host", 1, NULL, 'h' }, { "port", 1, NULL, 'p' },
        { "org", 1, NULL, 'o' }, { "prefix", 1, NULL, 'P' },
        { "key", 1, NULL, 'k' }, { "ca", 1, NULL, 'c' },
        { "first", 1, NULL, 'f' }, { "count", 1, NULL, 'n' },
        { "src-first", 1, NULL, 's' }, { "src-count", 1, NULL, 'S' },
        { "inflight", 1, NULL, 'i' }, { "backoff", 1, NULL, 'b' },
        { "verbose", 0, NULL, 'v' }, { "no-resume", 0, NULL, 'R' },
        { NULL, 0, NULL, 0 }
    };
    int                  ch, i, n, quit = 0;
    uint32_t             k, started = 0;
    int64_t              t, next_scan = 0;
    FILE                *f;
    unsigned char        digest[SHA256_DIGEST_LENGTH];
    struct epoll_event   evs[512];
    struct epoll_event   e;
    char                 line[256];
    size_t               llen = 0;

    while ((ch = getopt_long(argc, argv, "v", lo, NULL)) != -1) {
        switch (ch) {
        case 'h': opt.host = optarg; break;
        case 'p': ports_parse(optarg); break;
        case 'o': opt.org = optarg; break;
        case 'P': opt.prefix = optarg; break;
        case 'k': opt.key_file = optarg; break;
        case 'c': opt.ca_file = optarg; break;
        case 'f': opt.first = (uint32_t) strtoul(optarg, NULL, 10); break;
        case 'n': opt.count = (uint32_t) strtoul(optarg, NULL, 10); break;
        case 's': opt.src_first = (uint32_t) strtoul(optarg, NULL, 10); break;
        case 'S': opt.src_count = (uint32_t) strtoul(optarg, NULL, 10); break;
        case 'i': opt.inflight_max = (uint32_t) strtoul(optarg, NULL, 10);
                  break;
        case 'b': opt.backoff_first = atof(optarg); break;
        case 'v': opt.verbose = 1; break;
        case 'R': opt.no_resume = 1; break;
        default: usage();
        }
    }
    if (opt.nports == 0 || opt.key_file == NULL || opt.count == 0
        || opt.src_count == 0 || opt.inflight_max == 0)
    {
        usage();
    }

    signal(SIGPIPE, SIG_IGN);
    rng ^= (uint64_t) getpid() << 32 ^ (uint64_t) now_us();

    f = fopen(opt.key_file, "r");
    if (f == NULL || (key = PEM_read_PrivateKey(f, NULL, NULL, NULL)) == NULL)
    {
        die("cannot read key %s", opt.key_file);
    }
    fclose(f);

    sslctx = SSL_CTX_new(TLS_client_method());
    if (sslctx == NULL) {
        die("SSL_CTX_new");
    }
    SSL_CTX_set_mode(sslctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                             | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                             | SSL_MODE_RELEASE_BUFFERS);
    if (!opt.no_resume) {
        SSL_CTX_set_session_cache_mode(sslctx, SSL_SESS_CACHE_CLIENT
                                       | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(sslctx, new_session);
    }
    if (opt.ca_file) {
        if (SSL_CTX_load_verify_locations(sslctx, opt.ca_file, NULL) != 1) {
            die("cannot load %s", opt.ca_file);
        }
        SSL_CTX_set_verify(sslctx, SSL_VERIFY_PEER, NULL);
    }

    snprintf(ws_path, sizeof(ws_path), "/organizations/%s/pushy/agent",
             opt.org);
    SHA256((const unsigned char *) "", 0, digest);
    b64(digest, sizeof(digest), content_hash);

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        die("epoll_create1: %s", strerror(errno));
    }
    e.events = EPOLLIN;
    e.data.ptr = NULL;
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &e) < 0) {
        die("epoll_ctl stdin: %s", strerror(errno));
    }

    conns = calloc(opt.count, sizeof(conn_t));
    if (conns == NULL) {
        die("out of memory");
    }
    t = now_us();
    for (k = 0; k < opt.count; k++) {
        conns[k].fd = -1;
        conns[k].index = opt.first + k;
        conns[k].port = conns[k].index % opt.nports;
        conns[k].state = ST_IDLE;
        conns[k].due = t;
    }

    printf("ready pid=%d count=%u\n", (int) getpid(), opt.count);
    fflush(stdout);

    while (!quit) {
        n = epoll_wait(ep, evs, 512, 5);
        if (n < 0 && errno != EINTR) {
            die("epoll_wait: %s", strerror(errno));
        }
        for (i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                ssize_t r = read(0, line + llen, sizeof(line) - 1 - llen);
                if (r == 0) {
                    quit = 1;       /* harness gone */
                    break;
                }
                if (r > 0) {
                    char *nl;
                    llen += (size_t) r;
                    line[llen] = '\0';
                    while ((nl = strchr(line, '\n')) != NULL) {
                        *nl = '\0';
                        if (command(line)) {
                            quit = 1;
                        }
                        llen -= (size_t) (nl + 1 - line);
                        memmove(line, nl + 1, llen + 1);
                    }
                    if (llen == sizeof(line) - 1) {
                        llen = 0;
                    }
                }
                continue;
            }
            conn_event(evs[i].data.ptr, evs[i].events);
        }

        /* (re)connects that are due, at most inflight_max handshakes */
        t = now_us();
        if (t >= next_scan && inflight < opt.inflight_max) {
            int64_t soonest = t + 100000;
            for (k = 0; k < opt.count && inflight < opt.inflight_max; k++) {
                conn_t *c = &conns[(started + k) % opt.count];
                if (c->state == ST_IDLE) {
                    if (c->due <= t) {
                        conn_start(c);
                    } else if (c->due < soonest) {
                        soonest = c->due;
                    }
                }
            }
            started = (started + k) % opt.count;
            next_scan = inflight < opt.inflight_max ? soonest : 0;
        }
    }

    for (k = 0; k < opt.count; k++) {
        if (conns[k].fd >= 0) {
            close(conns[k].fd);
        }
    }
    return 0;
}
