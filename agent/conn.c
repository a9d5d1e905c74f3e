/*
 * pushjobs-agent: the channel's connection, whatever the transport: TCP
 * connect with the next address on failure, TLS with the trusted certs,
 * non-blocking reads and writes, the HTTP response head both transports
 * read; and the poll loop's entry points, which hand what arrives to the
 * transport (transport_ws.c, transport_poll.c).
 *
 * Everything is non-blocking: pja_conn_handle() is called from the poll loop
 * and moves the connection through TCP connect and TLS handshake, then
 * lets the transport open the channel.  It returns -1 when the channel is
 * over; the caller then calls pja_conn_reset() and schedules a reconnect.
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
#include <openssl/x509v3.h>

#include "pja.h"


static int ws_read(pja_conn_t *ws, size_t limit);
static int ws_new_session(SSL *ssl, SSL_SESSION *session);


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
pja_conn_init_ctx(pja_conn_t *ws, const pja_conf_t *cf)
{
    SSL_CTX  *ctx;

    memset(ws, 0, sizeof(pja_conn_t));
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

    /*
     * The server's session tickets are kept (the latest one) and offered
     * on the next connect: a resumed handshake costs the server no private
     * key operation, which is most of a reconnect's cost when many agents
     * come back at once (a restart, a front end lost).
     */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT
                                        | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, ws_new_session);

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


/*
 * A session ticket from the server: the one to resume with next time.  A
 * copy, as is the one each connection is given: OpenSSL marks a
 * connection's session not resumable when the connection ends without a
 * close_notify, as it does when the server restarts.
 */

static int
ws_new_session(SSL *ssl, SSL_SESSION *session)
{
    pja_conn_t   *ws;
    SSL_SESSION  *copy;

    ws = SSL_get_app_data(ssl);

    if (ws == NULL) {
        return 0;
    }

    copy = SSL_SESSION_dup(session);
    if (copy == NULL) {
        ERR_clear_error();
        return 0;
    }

    if (ws->tls_session) {
        SSL_SESSION_free(ws->tls_session);
    }

    ws->tls_session = copy;

    return 0;
}


void
pja_conn_reset(pja_conn_t *ws)
{
    SSL_CTX      *ctx;
    SSL_SESSION  *session;

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
    session = ws->tls_session;
    memset(ws, 0, sizeof(pja_conn_t));
    ws->ctx = ctx;
    ws->tls_session = session;
    ws->fd = -1;
}


/* Starts a non-blocking connect to the next address; -1 when none is left. */

static int
ws_connect_next(pja_conn_t *ws)
{
    int               fd, one, lowat;
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

#ifdef TCP_NOTSENT_LOWAT
        /*
         * What the kernel holds unsent stays small, so that the channel's
         * own queue, which the live output's back-pressure watches, is
         * where the backlog builds (docs/protocol.md §2.1): without it a
         * loopback or LAN socket takes megabytes before a write waits.
         */
        lowat = PJA_NOTSENT_LOWAT;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat,
                          sizeof(lowat));
#endif

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
pja_conn_connect(pja_conn_t *ws, const pja_conf_t *cf)
{
    int              rc;
    struct addrinfo  hints;

    pja_conn_reset(ws);

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
pja_conn_events(pja_conn_t *ws)
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
ws_io_result(pja_conn_t *ws, ssize_t r, const char *what, int reading)
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
ws_io_read(pja_conn_t *ws, void *buf, size_t n)
{
    if (ws->ssl == NULL) {
        return ws_io_result(ws, read(ws->fd, buf, n), "read()", 1);
    }

    return ws_io_result(ws, SSL_read(ws->ssl, buf, (int) n), "SSL_read()", 1);
}


static ssize_t
ws_io_write(pja_conn_t *ws, const void *buf, size_t n)
{
    if (ws->ssl == NULL) {
        return ws_io_result(ws, write(ws->fd, buf, n), "write()", 0);
    }

    return ws_io_result(ws, SSL_write(ws->ssl, buf, (int) n), "SSL_write()",
                        0);
}


int
pja_conn_flush(pja_conn_t *ws)
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


int
pja_conn_send_text(pja_conn_t *ws, const char *p, size_t n)
{
    if (ws->state != PJA_WS_OPEN) {
        return -1;
    }

    return ws->transport->send(ws, p, n);
}


void
pja_conn_close(pja_conn_t *ws, int code)
{
    if (ws->state != PJA_WS_OPEN) {
        return;
    }

    ws->transport->close(ws, code);
}


static int
ws_start_tls(pja_conn_t *ws, const pja_conf_t *cf)
{
    int           is_ip;
    SSL_SESSION  *session;
    unsigned char ip[16];

    ws->ssl = SSL_new(ws->ctx);
    if (ws->ssl == NULL || SSL_set_fd(ws->ssl, ws->fd) != 1) {
        ws_log_ssl_errors("SSL_new()");
        return -1;
    }

    SSL_set_app_data(ws->ssl, ws);

    if (ws->tls_session) {
        session = SSL_SESSION_dup(ws->tls_session);

        if (session == NULL || SSL_set_session(ws->ssl, session) != 1) {
            /* not resumable: a full handshake */
            ERR_clear_error();
        }

        if (session) {
            SSL_SESSION_free(session);
        }
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
ws_handshake_tls(pja_conn_t *ws, const pja_conf_t *cf)
{
    int   rc, err;
    long  vr;

    ws->want_write = 0;
    rc = SSL_connect(ws->ssl);

    if (rc == 1) {
        pja_log(PJA_LOG_DEBUG, "TLS: %s %s%s", SSL_get_version(ws->ssl),
                SSL_get_cipher_name(ws->ssl),
                SSL_session_reused(ws->ssl) ? ", resumed" : "");
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

    /* a session of a server that refuses us now is not offered again */
    if (ws->tls_session) {
        SSL_SESSION_free(ws->tls_session);
        ws->tls_session = NULL;
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
pja_conn_header(const char *head, const char *name, char *val, size_t size)
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


/*
 * The head of the HTTP response at the start of ws->in: 1 with its length
 * (blank line included) and status, 0 while incomplete, -1 (logged) if it
 * is too long or not HTTP.
 */

int
pja_conn_response_head(pja_conn_t *ws, size_t *head_len, int *status)
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


/*
 * Parses what ws->in holds: long-poll answers, or the answer to the
 * upgrade and then frames.  0 when it needs more bytes, -1 when the channel
 * is over.  Only the buffer is read, so that the reader can be driven
 * without a connection (fuzz/agent_ws.c).
 */

int
pja_conn_input(pja_conn_t *ws, pja_agent_t *a)
{
    return ws->transport->input(ws, a);
}


/*
 * Reads what the connection has, up to about `limit` bytes: 1 when it
 * stopped at the limit (TLS may hold more than poll() can see), 0 when
 * the connection would block or hit EOF, -1 on errors.
 */

static int
ws_read(pja_conn_t *ws, size_t limit)
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
pja_conn_handle(pja_conn_t *ws, const pja_conf_t *cf, short revents)
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

    if (pja_conn_flush(ws) != 0) {
        return -1;
    }

    do {
        more = ws_read(ws, 1024 * 1024);
        if (more < 0) {
            return -1;
        }

        if (pja_conn_input(ws, &pja_agent) != 0) {
            return -1;
        }

    } while (more && ws->fd != -1);

    if (pja_conn_flush(ws) != 0) {
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
