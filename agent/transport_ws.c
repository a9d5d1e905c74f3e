/*
 * pushjobs-agent: the channel's websocket transport (RFC 6455): the signed
 * HTTP upgrade, then frames, on the connection conn.c opens and reads.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/sha.h>

#include "pja.h"


#define WS_GUID  "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#define WS_OP_CONT   0x0
#define WS_OP_TEXT   0x1
#define WS_OP_BINARY 0x2
#define WS_OP_CLOSE  0x8
#define WS_OP_PING   0x9
#define WS_OP_PONG   0xa


static int ws_send_frame(pja_conn_t *ws, int op, const void *p, size_t n);


static int
ws_send_frame(pja_conn_t *ws, int op, const void *p, size_t n)
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

    return pja_conn_flush(ws);
}


static int
ws_send_text(pja_conn_t *ws, const char *p, size_t n)
{
    return ws_send_frame(ws, WS_OP_TEXT, p, n);
}


static void
ws_close(pja_conn_t *ws, int code)
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
ws_fail(pja_conn_t *ws, int code, const char *why)
{
    pja_log(PJA_LOG_ERR, "channel: %s, closing with %d", why, code);
    pja_conn_close(ws, code);
    (void) pja_conn_flush(ws);
    return -1;
}


static int
ws_start_http(pja_conn_t *ws, const pja_conf_t *cf)
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

    pkey = pja_sign_key(&pja_agent);
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
        pja_buf_free(&b);
        return -1;
    }

    pja_buf_addstr(&b, "\r\n");

    if (b.data == NULL || pja_buf_add(&ws->out, b.data, b.len) != 0) {
        pja_buf_free(&b);
        return -1;
    }

    pja_buf_free(&b);
    ws->state = PJA_WS_HTTP;

    return pja_conn_flush(ws);
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


static int
ws_http_response(pja_conn_t *ws, pja_agent_t *a)
{
    int       rc, status, chunked;
    char     *end, val[256];
    size_t    head_len, body_len, i;
    long      clen;

    rc = pja_conn_response_head(ws, &head_len, &status);

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
        if (pja_conn_header(ws->in.data, "Content-Length", val, sizeof(val))) {
            clen = strtol(val, NULL, 10);
        }

        chunked = pja_conn_header(ws->in.data, "Transfer-Encoding", val,
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

    if (!pja_conn_header(ws->in.data, "Upgrade", val, sizeof(val))
        || strcasecmp(val, "websocket") != 0
        || !pja_conn_header(ws->in.data, "Connection", val, sizeof(val))
        || !ws_contains_token(val, "upgrade"))
    {
        pja_log(PJA_LOG_ERR, "channel: 101 without a websocket upgrade");
        return -1;
    }

    if (!pja_conn_header(ws->in.data, "Sec-WebSocket-Accept", val, sizeof(val))
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
    pja_session_open(a);

    return 1;
}


static int
ws_control(pja_conn_t *ws, int op, unsigned char *p, size_t n)
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
ws_frames(pja_conn_t *ws, pja_agent_t *a)
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
                    pja_session_message(a, ws->msg.data, ws->msg.len);
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


static int
ws_input(pja_conn_t *ws, pja_agent_t *a)
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


/* the websocket keeps nothing of its own outside the connection */

static void
ws_reset(pja_conn_t *ws)
{
    (void) ws;
}


/* The server pings every ping_interval: three missed are a dead channel. */

static int64_t
ws_silence(const pja_conn_t *ws, const pja_agent_t *a)
{
    (void) ws;

    return (int64_t) 3 * 1000 * (a->ping_interval ? a->ping_interval
                                                  : PJA_DEFAULT_PING);
}


const pja_transport_t  pja_transport_ws = {
    ws_start_http,
    ws_send_text,
    ws_close,
    ws_input,
    ws_reset,
    ws_silence,
    "ws",
    "wss",
    ""
};
