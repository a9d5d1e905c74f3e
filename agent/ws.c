/*
 * pushjobs-agent: the channel, a websocket client over TLS (RFC 6455),
 * or its long-poll fallback (HTTP/1.1 POSTs on a keep-alive connection,
 * transport_poll.c), on the connection this file opens and reads.
 *
 * Everything is non-blocking: pja_ws_handle() is called from the poll loop
 * and moves the connection through TCP connect, TLS handshake, the signed
 * HTTP upgrade and then frames.  It returns -1 when the channel is over;
 * the caller then calls pja_ws_reset() and schedules a reconnect.
 */

#include <dirent.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "pja.h"


#define WS_GUID  "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#define WS_OP_CONT   0x0
#define WS_OP_TEXT   0x1
#define WS_OP_BINARY 0x2
#define WS_OP_CLOSE  0x8
#define WS_OP_PING   0x9
#define WS_OP_PONG   0xa


static int ws_send_frame(pja_ws_t *ws, int op, const void *p, size_t n);


static void
ws_log_ssl_errors(const char *what)
{
    unsigned long  e;
    char           buf[256];

    e = ERR_get_error();
    if (e == 0) {
        pja_log(PJA_LOG_ERR, "%s failed", what);
        return;
    }

    for ( ; e; e = ERR_get_error()) {
        ERR_error_string_n(e, buf, sizeof(buf));
        pja_log(PJA_LOG_ERR, "%s: %s", what, buf);
    }
}


/*
 * Chef's trusted_certs_dir (knife ssl fetch puts the server's certificate
 * there): every certificate in every file of it is trusted, whatever the
 * file names (no c_rehash needed).  A missing default directory is fine.
 */

static int
ws_trusted_certs(SSL_CTX *ctx, const pja_conf_t *cf)
{
    int             n;
    DIR            *d;
    FILE           *f;
    X509           *x;
    const char     *dir;
    X509_STORE     *store;
    struct dirent  *de;
    pja_buf_t       path = { NULL, 0, 0 };

    dir = cf->trusted_certs_dir ? cf->trusted_certs_dir : PJA_DEFAULT_TRUSTED;

    d = opendir(dir);
    if (d == NULL) {
        if (cf->trusted_certs_dir && errno != ENOENT) {
            pja_log(PJA_LOG_ERR, "cannot open trusted_certs_dir %s: %s", dir,
                    strerror(errno));
            return -1;
        }
        return 0;
    }

    store = SSL_CTX_get_cert_store(ctx);
    n = 0;

    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') {
            continue;
        }

        path.len = 0;
        if (pja_buf_printf(&path, "%s/%s", dir, de->d_name) != 0) {
            break;
        }

        f = fopen(path.data, "r");
        if (f == NULL) {
            continue;
        }

        while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
            if (X509_STORE_add_cert(store, x) == 1) {
                n++;
            }
            X509_free(x);
        }

        /* the end of the file, or a file that is not PEM */
        ERR_clear_error();
        fclose(f);
    }

    closedir(d);
    pja_buf_free(&path);

    pja_log(PJA_LOG_DEBUG, "trusted %d certificates from %s", n, dir);
    return 0;
}


int
pja_ws_init_ctx(pja_ws_t *ws, const pja_conf_t *cf)
{
    SSL_CTX  *ctx;

    memset(ws, 0, sizeof(pja_ws_t));
    ws->fd = -1;

    if (!cf->tls) {
        pja_log(PJA_LOG_WARN, "chef_server_url is plain http: the channel "
                "is not encrypted");
        return 0;
    }

    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        ws_log_ssl_errors("SSL_CTX_new()");
        return -1;
    }

    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);

#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    /* A peer that drops TCP without close_notify is just EOF for us. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                          | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

    if (cf->ssl_verify) {
        if (ws_trusted_certs(ctx, cf) != 0) {
            SSL_CTX_free(ctx);
            return -1;
        }

        if (cf->ssl_ca_file) {
            if (SSL_CTX_load_verify_locations(ctx, cf->ssl_ca_file, NULL)
                != 1)
            {
                ws_log_ssl_errors(cf->ssl_ca_file);
                SSL_CTX_free(ctx);
                return -1;
            }

        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            ws_log_ssl_errors("SSL_CTX_set_default_verify_paths()");
            SSL_CTX_free(ctx);
            return -1;
        }

        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);

    } else {
        pja_log(PJA_LOG_WARN, "ssl_verify_mode is :verify_none: the server's "
                "certificate is not checked");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }

    ws->ctx = ctx;
    return 0;
}


void
pja_ws_reset(pja_ws_t *ws)
{
    SSL_CTX  *ctx;

    if (ws->ssl) {
        SSL_free(ws->ssl);
    }

    if (ws->fd != -1) {
        close(ws->fd);
    }

    if (ws->ai_list) {
        freeaddrinfo(ws->ai_list);
    }

    pja_buf_free(&ws->out);
    pja_buf_free(&ws->in);
    pja_buf_free(&ws->msg);

    if (ws->transport) {
        ws->transport->reset(ws);
    }

    ctx = ws->ctx;
    memset(ws, 0, sizeof(pja_ws_t));
    ws->ctx = ctx;
    ws->fd = -1;
}


/* Starts a non-blocking connect to the next address; -1 when none is left. */

static int
ws_connect_next(pja_ws_t *ws)
{
    int               fd, one;
    char              addr[INET6_ADDRSTRLEN];
    struct addrinfo  *ai;

    while ((ai = ws->ai_next) != NULL) {
        ws->ai_next = ai->ai_next;

        if (ws->fd != -1) {
            close(ws->fd);
            ws->fd = -1;
        }

        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK
                    | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd == -1) {
            pja_log(PJA_LOG_WARN, "socket(): %s", strerror(errno));
            continue;
        }

        one = 1;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        (void) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));

        addr[0] = '\0';
        if (ai->ai_family == AF_INET) {
            inet_ntop(AF_INET, &((struct sockaddr_in *) ai->ai_addr)->sin_addr,
                      addr, sizeof(addr));
        } else if (ai->ai_family == AF_INET6) {
            inet_ntop(AF_INET6,
                      &((struct sockaddr_in6 *) ai->ai_addr)->sin6_addr,
                      addr, sizeof(addr));
        }

        pja_log(PJA_LOG_DEBUG, "connecting to %s", addr);

        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0
            || errno == EINPROGRESS)
        {
            ws->fd = fd;
            ws->state = PJA_WS_CONNECTING;
            return 0;
        }

        pja_log(PJA_LOG_WARN, "connect() to %s: %s", addr, strerror(errno));
        close(fd);
    }

    return -1;
}


int
pja_ws_connect(pja_ws_t *ws, const pja_conf_t *cf)
{
    int              rc;
    struct addrinfo  hints;

    pja_ws_reset(ws);

    /* long-poll when configured, or once after a refused upgrade */
    ws->transport = cf->transport == PJA_TRANSPORT_LONG_POLL
                    || pja_agent.fallback
                    ? &pja_transport_poll : &pja_transport_ws;
    pja_agent.fallback = 0;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;

    pja_log(PJA_LOG_INFO, "connecting to %s://%s%s%s",
            cf->tls ? ws->transport->tls_scheme : ws->transport->scheme,
            cf->host_header, cf->ws_path, ws->transport->path);

    /* getaddrinfo() blocks; a job's pipes just wait in the kernel. */
    rc = getaddrinfo(cf->host, cf->port, &hints, &ws->ai_list);
    if (rc != 0) {
        pja_log(PJA_LOG_ERR, "cannot resolve %s: %s", cf->host,
                gai_strerror(rc));
        ws->ai_list = NULL;
        return -1;
    }

    ws->ai_next = ws->ai_list;
    ws->started_at = pja_now_ms();
    ws->last_rx = ws->started_at;

    if (ws_connect_next(ws) != 0) {
        pja_log(PJA_LOG_ERR, "cannot connect to %s port %s", cf->host,
                cf->port);
        return -1;
    }

    return 0;
}


short
pja_ws_events(pja_ws_t *ws)
{
    if (ws->fd == -1) {
        return 0;
    }

    if (ws->state == PJA_WS_CONNECTING) {
        return POLLOUT;
    }

    if (ws->want_write || ws->out.len) {
        return POLLIN | POLLOUT;
    }

    return POLLIN;
}


/*
 * The result of a read or write on the channel, plain or TLS: bytes, 0 on
 * EOF (reads only), -1 on error (logged), -2 when it would block.  Called
 * right after the call, with its errno and OpenSSL error queue.
 */

static ssize_t
ws_io_result(pja_ws_t *ws, ssize_t r, const char *what, int reading)
{
    if (ws->ssl == NULL) {
        if (r >= 0) {
            return r;
        }

        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            return -2;
        }

        pja_log(PJA_LOG_ERR, "%s: %s", what, strerror(errno));
        return -1;
    }

    if (r > 0) {
        return r;
    }

    switch (SSL_get_error(ws->ssl, (int) r)) {
    case SSL_ERROR_WANT_READ:
        return -2;
    case SSL_ERROR_WANT_WRITE:
        ws->want_write = 1;
        return -2;
    case SSL_ERROR_ZERO_RETURN:
        return reading ? 0 : -1;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) {
            /* the peer went away without a TLS close_notify */
            if (errno && errno != EPIPE && errno != ECONNRESET) {
                pja_log(PJA_LOG_ERR, "%s: %s", what, strerror(errno));
            }
            return reading ? 0 : -1;
        }
        /* fall through */
    default:
        ws_log_ssl_errors(what);
        return -1;
    }
}


static ssize_t
ws_io_read(pja_ws_t *ws, void *buf, size_t n)
{
    if (ws->ssl == NULL) {
        return ws_io_result(ws, read(ws->fd, buf, n), "read()", 1);
    }

    return ws_io_result(ws, SSL_read(ws->ssl, buf, (int) n), "SSL_read()", 1);
}


static ssize_t
ws_io_write(pja_ws_t *ws, const void *buf, size_t n)
{
    if (ws->ssl == NULL) {
        return ws_io_result(ws, write(ws->fd, buf, n), "write()", 0);
    }

    return ws_io_result(ws, SSL_write(ws->ssl, buf, (int) n), "SSL_write()",
                        0);
}


int
pja_ws_flush(pja_ws_t *ws)
{
    size_t   n;
    ssize_t  w;

    ws->want_write = 0;

    while (ws->out.len) {
        /* A retried SSL_write() must ask for the same length. */
        n = ws->ssl_retry_len ? ws->ssl_retry_len
                              : (ws->out.len < 65536 ? ws->out.len : 65536);

        w = ws_io_write(ws, ws->out.data, n);

        if (w == -2) {
            ws->ssl_retry_len = n;
            ws->want_write = 1;
            return 0;
        }

        if (w < 0) {
            return -1;
        }

        ws->ssl_retry_len = 0;
        pja_buf_consume(&ws->out, (size_t) w);
    }

    return 0;
}


static int
ws_send_frame(pja_ws_t *ws, int op, const void *p, size_t n)
{
    size_t               i, h;
    unsigned char        hdr[14], *dst;
    const unsigned char *src = p;

    if (ws->out.len + n > PJA_OUT_QUEUE_CAP) {
        pja_log(PJA_LOG_ERR, "the channel's output queue is full");
        return -1;
    }

    hdr[0] = (unsigned char) (0x80 | op);

    if (n < 126) {
        hdr[1] = (unsigned char) (0x80 | n);
        h = 2;

    } else if (n <= 0xffff) {
        hdr[1] = 0x80 | 126;
        hdr[2] = (unsigned char) (n >> 8);
        hdr[3] = (unsigned char) n;
        h = 4;

    } else {
        hdr[1] = 0x80 | 127;
        for (i = 0; i < 8; i++) {
            hdr[2 + i] = (unsigned char) ((uint64_t) n >> (56 - 8 * i));
        }
        h = 10;
    }

    if (pja_random_bytes(hdr + h, 4) != 0) {
        return -1;
    }

    if (pja_buf_reserve(&ws->out, h + 4 + n) != 0) {
        return -1;
    }

    pja_buf_add(&ws->out, hdr, h + 4);

    dst = (unsigned char *) ws->out.data + ws->out.len;
    for (i = 0; i < n; i++) {
        dst[i] = src[i] ^ hdr[h + (i & 3)];
    }
    ws->out.len += n;

    return pja_ws_flush(ws);
}


int
pja_ws_send_text(pja_ws_t *ws, const char *p, size_t n)
{
    if (ws->state != PJA_WS_OPEN) {
        return -1;
    }

    return ws->transport->send(ws, p, n);
}


static int
ws_send_text(pja_ws_t *ws, const char *p, size_t n)
{
    return ws_send_frame(ws, WS_OP_TEXT, p, n);
}


void
pja_ws_close(pja_ws_t *ws, int code)
{
    if (ws->state != PJA_WS_OPEN) {
        return;
    }

    ws->transport->close(ws, code);
}


static void
ws_close(pja_ws_t *ws, int code)
{
    unsigned char  b[2];

    b[0] = (unsigned char) (code >> 8);
    b[1] = (unsigned char) code;

    ws->state = PJA_WS_CLOSING;
    ws->close_sent = 1;
    ws->close_deadline = pja_now_ms() + 3000;

    if (ws_send_frame(ws, WS_OP_CLOSE, b, 2) != 0) {
        ws->close_deadline = 0;
    }
}


static int
ws_fail(pja_ws_t *ws, int code, const char *why)
{
    pja_log(PJA_LOG_ERR, "channel: %s, closing with %d", why, code);
    pja_ws_close(ws, code);
    (void) pja_ws_flush(ws);
    return -1;
}


static int
ws_start_http(pja_ws_t *ws, const pja_conf_t *cf)
{
    char           *key64, *acc;
    EVP_PKEY       *pkey;
    pja_buf_t       b = { NULL, 0, 0 };
    unsigned char   key[16], sha[SHA_DIGEST_LENGTH];

    if (pja_random_bytes(key, sizeof(key)) != 0) {
        return -1;
    }

    key64 = pja_base64_encode(key, sizeof(key));
    if (key64 == NULL) {
        return -1;
    }

    pja_buf_printf(&b, "%s" WS_GUID, key64);
    SHA1((unsigned char *) b.data, b.len, sha);
    acc = pja_base64_encode(sha, sizeof(sha));
    if (acc == NULL) {
        free(key64);
        pja_buf_free(&b);
        return -1;
    }
    snprintf(ws->accept, sizeof(ws->accept), "%s", acc);
    free(acc);

    pkey = pja_sign_load_key(cf->client_key);
    if (pkey == NULL) {
        free(key64);
        pja_buf_free(&b);
        return -1;
    }

    b.len = 0;
    pja_buf_printf(&b,
                   "GET %s HTTP/1.1\r\n"
                   "Host: %s\r\n"
                   "Upgrade: websocket\r\n"
                   "Connection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\n"
                   "Accept: application/json\r\n"
                   "X-Pushjobs-Agent: " PJA_AGENT "\r\n",
                   cf->ws_path, cf->host_header, key64);
    free(key64);

    if (pja_sign_headers(cf->node_name, pkey, "GET", cf->ws_path, NULL, 0,
                         "\r\n", &b) != 0)
    {
        EVP_PKEY_free(pkey);
        pja_buf_free(&b);
        return -1;
    }

    EVP_PKEY_free(pkey);
    pja_buf_addstr(&b, "\r\n");

    if (b.data == NULL || pja_buf_add(&ws->out, b.data, b.len) != 0) {
        pja_buf_free(&b);
        return -1;
    }

    pja_buf_free(&b);
    ws->state = PJA_WS_HTTP;

    return pja_ws_flush(ws);
}


static int
ws_start_tls(pja_ws_t *ws, const pja_conf_t *cf)
{
    int           is_ip;
    unsigned char ip[16];

    ws->ssl = SSL_new(ws->ctx);
    if (ws->ssl == NULL || SSL_set_fd(ws->ssl, ws->fd) != 1) {
        ws_log_ssl_errors("SSL_new()");
        return -1;
    }

    is_ip = inet_pton(AF_INET, cf->host, ip) == 1
            || inet_pton(AF_INET6, cf->host, ip) == 1;

    if (!is_ip) {
        SSL_set_tlsext_host_name(ws->ssl, cf->host);
    }

    if (cf->ssl_verify) {
        if (is_ip) {
            if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ws->ssl),
                                              cf->host) != 1)
            {
                ws_log_ssl_errors("X509_VERIFY_PARAM_set1_ip_asc()");
                return -1;
            }

        } else if (SSL_set1_host(ws->ssl, cf->host) != 1) {
            ws_log_ssl_errors("SSL_set1_host()");
            return -1;
        }
    }

    SSL_set_connect_state(ws->ssl);
    ws->state = PJA_WS_TLS;
    return 0;
}


static int
ws_handshake_tls(pja_ws_t *ws, const pja_conf_t *cf)
{
    int   rc, err;
    long  vr;

    ws->want_write = 0;
    rc = SSL_connect(ws->ssl);

    if (rc == 1) {
        pja_log(PJA_LOG_DEBUG, "TLS: %s %s", SSL_get_version(ws->ssl),
                SSL_get_cipher_name(ws->ssl));
        return ws->transport->open(ws, cf);
    }

    err = SSL_get_error(ws->ssl, rc);

    if (err == SSL_ERROR_WANT_READ) {
        return 0;
    }

    if (err == SSL_ERROR_WANT_WRITE) {
        ws->want_write = 1;
        return 0;
    }

    vr = SSL_get_verify_result(ws->ssl);
    if (vr != X509_V_OK) {
        pja_log(PJA_LOG_ERR, "TLS: the server's certificate: %s",
                X509_verify_cert_error_string(vr));
    }

    ws_log_ssl_errors("TLS handshake");
    return -1;
}


/* Finds header NAME in the response head; copies its value to val. */

int
pja_ws_header(const char *head, const char *name, char *val, size_t size)
{
    size_t       n, len;
    const char  *p, *e, *v;

    n = strlen(name);

    for (p = strstr(head, "\r\n"); p; p = strstr(p, "\r\n")) {
        p += 2;

        if (strncasecmp(p, name, n) != 0 || p[n] != ':') {
            continue;
        }

        for (v = p + n + 1; *v == ' ' || *v == '\t'; v++) {
            /* void */
        }

        e = strstr(v, "\r\n");
        if (e == NULL) {
            e = v + strlen(v);
        }

        while (e > v && (e[-1] == ' ' || e[-1] == '\t')) {
            e--;
        }

        len = (size_t) (e - v);
        if (len >= size) {
            len = size - 1;
        }

        memcpy(val, v, len);
        val[len] = '\0';
        return 1;
    }

    return 0;
}


static int
ws_contains_token(const char *s, const char *token)
{
    size_t  n;

    n = strlen(token);

    for ( ; *s; s++) {
        if (strncasecmp(s, token, n) == 0) {
            return 1;
        }
    }

    return 0;
}


/*
 * The head of the HTTP response at the start of ws->in: 1 with its length
 * (blank line included) and status, 0 while incomplete, -1 (logged) if it
 * is too long or not HTTP.
 */

int
pja_ws_response_head(pja_ws_t *ws, size_t *head_len, int *status)
{
    char  *end;

    end = strstr(ws->in.data ? ws->in.data : "", "\r\n\r\n");

    if (end == NULL) {
        if (ws->in.len > 64 * 1024) {
            pja_log(PJA_LOG_ERR, "channel: the server's response head is too "
                    "long");
            return -1;
        }
        return 0;
    }

    *head_len = (size_t) (end - ws->in.data) + 4;

    if (sscanf(ws->in.data, "HTTP/1.%*d %d", status) != 1) {
        pja_log(PJA_LOG_ERR, "channel: bad HTTP response from the server");
        return -1;
    }

    return 1;
}


static int
ws_http_response(pja_ws_t *ws, pja_agent_t *a)
{
    int       rc, status, chunked;
    char     *end, val[256];
    size_t    head_len, body_len, i;
    long      clen;

    rc = pja_ws_response_head(ws, &head_len, &status);

    if (rc == 0 && ws->peer_eof) {
        pja_log(PJA_LOG_ERR, "channel: the server closed the connection "
                "during the upgrade");
        return -1;
    }

    if (rc != 1) {
        return rc;
    }

    end = ws->in.data + head_len - 4;

    ws->http_status = status;

    if (status != 101) {
        *end = '\0';
        clen = -1;
        if (pja_ws_header(ws->in.data, "Content-Length", val, sizeof(val))) {
            clen = strtol(val, NULL, 10);
        }

        chunked = pja_ws_header(ws->in.data, "Transfer-Encoding", val,
                            sizeof(val))
                  && ws_contains_token(val, "chunked");

        body_len = ws->in.len - head_len;

        /* Wait for the whole (short) body, to log it. */
        if (!ws->peer_eof && body_len < 4096
            && ((clen >= 0 && body_len < (size_t) clen)
                || (clen < 0 && !chunked)
                || (clen < 0 && chunked
                    && strncmp(end + 4, "0\r\n\r\n", 5) != 0
                    && strstr(end + 4, "\r\n0\r\n\r\n") == NULL)))
        {
            *end = '\r';
            return 0;
        }

        if (body_len > 1024) {
            body_len = 1024;
        }

        /* One log line: control characters become spaces. */
        for (i = 0; i < body_len; i++) {
            if ((unsigned char) end[4 + i] < 0x20) {
                end[4 + i] = ' ';
            }
        }

        pja_log(PJA_LOG_ERR, "channel: the server answered %d: %.*s", status,
                (int) body_len, end + 4);
        return -1;
    }

    *end = '\0';

    if (!pja_ws_header(ws->in.data, "Upgrade", val, sizeof(val))
        || strcasecmp(val, "websocket") != 0
        || !pja_ws_header(ws->in.data, "Connection", val, sizeof(val))
        || !ws_contains_token(val, "upgrade"))
    {
        pja_log(PJA_LOG_ERR, "channel: 101 without a websocket upgrade");
        return -1;
    }

    if (!pja_ws_header(ws->in.data, "Sec-WebSocket-Accept", val, sizeof(val))
        || strcmp(val, ws->accept) != 0)
    {
        pja_log(PJA_LOG_ERR, "channel: bad Sec-WebSocket-Accept");
        return -1;
    }

    pja_buf_consume(&ws->in, head_len);

    ws->state = PJA_WS_OPEN;
    ws->opened_at = pja_now_ms();
    ws->last_rx = ws->opened_at;

    pja_log(PJA_LOG_INFO, "channel open");
    pja_proto_open(a);

    return 1;
}


static int
ws_control(pja_ws_t *ws, int op, unsigned char *p, size_t n)
{
    int  code;

    switch (op) {

    case WS_OP_PING:
        pja_log(PJA_LOG_DEBUG, "channel: ping");
        if (ws->state == PJA_WS_OPEN) {
            return ws_send_frame(ws, WS_OP_PONG, p, n);
        }
        return 0;

    case WS_OP_PONG:
        return 0;

    case WS_OP_CLOSE:
        code = n >= 2 ? (p[0] << 8 | p[1]) : 1005;
        ws->close_code = code;

        pja_log(code == 1000 || code == 1001 ? PJA_LOG_INFO : PJA_LOG_WARN,
                "channel: the server closed the channel (%d%s%.*s)", code,
                n > 2 ? ": " : "", n > 2 ? (int) (n - 2) : 0,
                n > 2 ? (char *) p + 2 : "");

        if (!ws->close_sent) {
            unsigned char  b[2];

            b[0] = (unsigned char) (code == 1005 ? 1000 >> 8 : p[0]);
            b[1] = (unsigned char) (code == 1005 ? 1000 & 0xff : p[1]);
            ws->close_sent = 1;
            ws->state = PJA_WS_CLOSING;
            (void) ws_send_frame(ws, WS_OP_CLOSE, b, 2);
        }

        return -1;

    default:
        return -1;
    }
}


/* Parses the complete frames in ws->in; -1 ends the channel. */

static int
ws_frames(pja_ws_t *ws, pja_agent_t *a)
{
    int             fin, op, masked;
    size_t          h, i;
    uint64_t        len;
    unsigned char  *b, *payload, *mask;

    while (ws->in.len >= 2) {
        b = (unsigned char *) ws->in.data;
        fin = b[0] & 0x80;
        op = b[0] & 0x0f;
        masked = b[1] & 0x80;
        len = b[1] & 0x7f;
        h = 2;

        if (b[0] & 0x70) {
            return ws_fail(ws, 1002, "reserved bits set");
        }

        if (len == 126) {
            if (ws->in.len < 4) {
                return 0;
            }
            len = (uint64_t) b[2] << 8 | b[3];
            h = 4;

        } else if (len == 127) {
            if (ws->in.len < 10) {
                return 0;
            }
            len = 0;
            for (i = 0; i < 8; i++) {
                len = len << 8 | b[2 + i];
            }
            h = 10;
        }

        if (masked) {
            mask = b + h;
            h += 4;
        } else {
            mask = NULL;
        }

        if (len > PJA_IN_MESSAGE_CAP) {
            return ws_fail(ws, 1009, "incoming frame too big");
        }

        if (ws->in.len < h + len) {
            return 0;
        }

        payload = b + h;

        if (mask) {
            for (i = 0; i < len; i++) {
                payload[i] ^= mask[i & 3];
            }
        }

        if (op & 0x8) {
            if (!fin || len > 125) {
                return ws_fail(ws, 1002, "bad control frame");
            }

            if (ws_control(ws, op, payload, (size_t) len) != 0) {
                return -1;
            }

        } else {
            if (op == WS_OP_CONT) {
                if (!ws->in_msg) {
                    return ws_fail(ws, 1002, "unexpected continuation");
                }

            } else if (op == WS_OP_TEXT || op == WS_OP_BINARY) {
                if (ws->in_msg) {
                    return ws_fail(ws, 1002, "expected a continuation");
                }
                ws->in_msg = 1;
                ws->msg_op = op;
                ws->msg.len = 0;

            } else {
                return ws_fail(ws, 1002, "unknown opcode");
            }

            if (ws->msg.len + len > PJA_IN_MESSAGE_CAP) {
                return ws_fail(ws, 1009, "incoming message too big");
            }

            if (pja_buf_add(&ws->msg, payload, (size_t) len) != 0) {
                return ws_fail(ws, 1011, "out of memory");
            }

            if (fin) {
                ws->in_msg = 0;

                if (ws->msg_op == WS_OP_BINARY) {
                    pja_log(PJA_LOG_WARN, "channel: binary message ignored");

                } else if (ws->state == PJA_WS_OPEN) {
                    pja_buf_cstr(&ws->msg);
                    pja_proto_message(a, ws->msg.data, ws->msg.len);
                }

                if (ws->msg.cap > 1024 * 1024) {
                    pja_buf_free(&ws->msg);
                }
                ws->msg.len = 0;
            }
        }

        pja_buf_consume(&ws->in, h + (size_t) len);
    }

    return 0;
}



/*
 * Parses what ws->in holds: long-poll answers, or the answer to the
 * upgrade and then frames.  0 when it needs more bytes, -1 when the channel
 * is over.  Only the buffer is read, so that the reader can be driven
 * without a connection (fuzz/agent_ws.c).
 */

int
pja_ws_input(pja_ws_t *ws, pja_agent_t *a)
{
    return ws->transport->input(ws, a);
}


static int
ws_input(pja_ws_t *ws, pja_agent_t *a)
{
    int  rc;

    if (ws->state == PJA_WS_HTTP) {
        rc = ws_http_response(ws, a);
        if (rc <= 0) {
            return rc;
        }
    }

    return ws_frames(ws, a) != 0 ? -1 : 0;
}


/*
 * Reads what the connection has, up to about `limit` bytes: 1 when it
 * stopped at the limit (TLS may hold more than poll() can see), 0 when
 * the connection would block or hit EOF, -1 on errors.
 */

static int
ws_read(pja_ws_t *ws, size_t limit)
{
    size_t   got;
    ssize_t  r;

    for (got = 0; got < limit; got += (size_t) r) {
        if (pja_buf_reserve(&ws->in, 16384) != 0) {
            return -1;
        }

        r = ws_io_read(ws, ws->in.data + ws->in.len,
                       ws->in.cap - ws->in.len - 1);

        if (r == -2) {
            return 0;
        }

        if (r < 0) {
            return -1;
        }

        if (r == 0) {
            ws->peer_eof = 1;
            return 0;
        }

        ws->in.len += (size_t) r;
        ws->in.data[ws->in.len] = '\0';
        ws->last_rx = pja_now_ms();
    }

    return 1;
}


int
pja_ws_handle(pja_ws_t *ws, const pja_conf_t *cf, short revents)
{
    int        err, more;
    socklen_t  len;

    if (ws->state == PJA_WS_CONNECTING) {
        if (!(revents & (POLLOUT | POLLERR | POLLHUP))) {
            return 0;
        }

        err = 0;
        len = sizeof(err);
        if (getsockopt(ws->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
            err = errno;
        }

        if (err) {
            pja_log(PJA_LOG_WARN, "connect(): %s", strerror(err));
            return ws_connect_next(ws);
        }

        if (cf->tls) {
            if (ws_start_tls(ws, cf) != 0) {
                return -1;
            }
        } else {
            return ws->transport->open(ws, cf);
        }
    }

    if (ws->state == PJA_WS_TLS) {
        return ws_handshake_tls(ws, cf);
    }

    if (pja_ws_flush(ws) != 0) {
        return -1;
    }

    do {
        more = ws_read(ws, 1024 * 1024);
        if (more < 0) {
            return -1;
        }

        if (pja_ws_input(ws, &pja_agent) != 0) {
            return -1;
        }

    } while (more && ws->fd != -1);

    if (pja_ws_flush(ws) != 0) {
        return -1;
    }

    if (ws->peer_eof) {
        if (ws->state == PJA_WS_OPEN) {
            pja_log(PJA_LOG_WARN, "channel: the server closed the connection");
        }
        return -1;
    }

    if (ws->state == PJA_WS_CLOSING && ws->out.len == 0
        && ws->close_code)
    {
        return -1;
    }

    return 0;
}


/* the websocket keeps nothing of its own outside the connection */

static void
ws_reset(pja_ws_t *ws)
{
    (void) ws;
}


const pja_transport_t  pja_transport_ws = {
    ws_start_http,
    ws_send_text,
    ws_close,
    ws_input,
    ws_reset,
    "ws",
    "wss",
    ""
};
