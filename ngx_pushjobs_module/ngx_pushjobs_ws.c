
/*
 * Copyright (C) pushjobs developers
 */


/*
 * The websocket side of the agent channel (RFC 6455): the opening
 * handshake, a resumable reader for the frames an agent sends, and the
 * framing of the messages the server sends.  After the handshake the
 * caller owns the connection and moves the bytes itself.
 */


#include "ngx_pushjobs_module.h"


#define NGX_PUSHJOBS_WS_GUID          "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define NGX_PUSHJOBS_WS_KEY_LEN       24
#define NGX_PUSHJOBS_WS_ACCEPT_LEN    28


/* The smallest message buffer worth allocating. */
#define NGX_PUSHJOBS_WS_BUF_MIN       4096

/* Reader states. */
#define NGX_PUSHJOBS_WS_ST_HEADER     0
#define NGX_PUSHJOBS_WS_ST_PAYLOAD    1
#define NGX_PUSHJOBS_WS_ST_ERROR      2

#define ngx_pushjobs_ws_is_control(op)  ((op) & 0x8)


static ngx_uint_t ngx_pushjobs_ws_header_token(ngx_http_request_t *r,
    ngx_str_t *name, ngx_str_t *token);
static ngx_int_t ngx_pushjobs_ws_header_out(ngx_http_request_t *r,
    ngx_str_t *key, ngx_str_t *value);
static ngx_int_t ngx_pushjobs_ws_upgrade_required(ngx_http_request_t *r,
    ngx_uint_t version);
static ngx_int_t ngx_pushjobs_ws_parse_header(ngx_pushjobs_ws_reader_t *rd,
    ngx_pushjobs_ws_frame_t *frame);
static ngx_int_t ngx_pushjobs_ws_check_start(ngx_pushjobs_ws_reader_t *rd,
    ngx_pushjobs_ws_frame_t *frame);
static ngx_int_t ngx_pushjobs_ws_grow(ngx_pushjobs_ws_reader_t *rd,
    size_t need);
static ngx_int_t ngx_pushjobs_ws_frame_done(ngx_pushjobs_ws_reader_t *rd,
    u_char *data, size_t len, ngx_pushjobs_ws_frame_t *frame);
static ngx_int_t ngx_pushjobs_ws_control(ngx_pushjobs_ws_reader_t *rd,
    u_char *data, size_t len, ngx_pushjobs_ws_frame_t *frame);
static ngx_int_t ngx_pushjobs_ws_error(ngx_pushjobs_ws_reader_t *rd,
    ngx_pushjobs_ws_frame_t *frame, ngx_uint_t code, const char *reason);
static void ngx_pushjobs_ws_unmask(u_char *p, size_t len, u_char *mask,
    ngx_uint_t *pos);
static ngx_uint_t ngx_pushjobs_ws_utf8(u_char *p, size_t len);


static ngx_str_t  ngx_pushjobs_ws_upgrade = ngx_string("Upgrade");
static ngx_str_t  ngx_pushjobs_ws_connection = ngx_string("Connection");
static ngx_str_t  ngx_pushjobs_ws_websocket = ngx_string("websocket");
static ngx_str_t  ngx_pushjobs_ws_upgrade_token = ngx_string("upgrade");
static ngx_str_t  ngx_pushjobs_ws_key = ngx_string("Sec-WebSocket-Key");
static ngx_str_t  ngx_pushjobs_ws_version = ngx_string("Sec-WebSocket-Version");
static ngx_str_t  ngx_pushjobs_ws_accept = ngx_string("Sec-WebSocket-Accept");
static ngx_str_t  ngx_pushjobs_ws_v13 = ngx_string("13");


/* The opening handshake. */

ngx_int_t
ngx_pushjobs_ws_is_upgrade(ngx_http_request_t *r)
{
    if (r != r->main
        || r->method != NGX_HTTP_GET
        || r->http_version < NGX_HTTP_VERSION_11
        || r->http_version >= NGX_HTTP_VERSION_20)
    {
        return 0;
    }

    return ngx_pushjobs_ws_header_token(r, &ngx_pushjobs_ws_upgrade,
                                        &ngx_pushjobs_ws_websocket)
           && ngx_pushjobs_ws_header_token(r, &ngx_pushjobs_ws_connection,
                                           &ngx_pushjobs_ws_upgrade_token);
}


/*
 * Answers the upgrade request with 101 and puts the response header on the
 * wire.  NGX_OK when done, NGX_ERROR when the header could not be sent, or
 * an HTTP status (400, 426) for the caller to finalize the request with.
 */

ngx_int_t
ngx_pushjobs_ws_handshake(ngx_http_request_t *r)
{
    u_char             *p;
    ngx_int_t           rc;
    ngx_str_t           src, decoded, accept, empty;
    ngx_uint_t          i;
    unsigned int        n;
    ngx_table_elt_t    *key, *version;
    ngx_connection_t   *c;
    u_char              raw[ngx_base64_decoded_length(
                                NGX_PUSHJOBS_WS_KEY_LEN)];
    u_char              digest[EVP_MAX_MD_SIZE];
    u_char              text[NGX_PUSHJOBS_WS_KEY_LEN
                             + sizeof(NGX_PUSHJOBS_WS_GUID) - 1];

    c = r->connection;
    ngx_str_null(&empty);

    if (!ngx_pushjobs_ws_header_token(r, &ngx_pushjobs_ws_upgrade,
                                      &ngx_pushjobs_ws_websocket)
        || !ngx_pushjobs_ws_header_token(r, &ngx_pushjobs_ws_connection,
                                         &ngx_pushjobs_ws_upgrade_token))
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "pushjobs: websocket request without upgrade headers");
        return ngx_pushjobs_ws_upgrade_required(r, 0);
    }

    if (r != r->main
        || r->method != NGX_HTTP_GET
        || r->http_version < NGX_HTTP_VERSION_11
        || r->http_version >= NGX_HTTP_VERSION_20)
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "pushjobs: websocket upgrade needs GET and HTTP/1.1");
        return NGX_HTTP_BAD_REQUEST;
    }

    /* bytes after the header are frames, not a request body */

    if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "pushjobs: websocket upgrade request with a body");
        return NGX_HTTP_BAD_REQUEST;
    }

    version = ngx_pushjobs_header_in(r, ngx_pushjobs_ws_version.data,
                                     ngx_pushjobs_ws_version.len);

    if (version == NULL
        || version->value.len != ngx_pushjobs_ws_v13.len
        || ngx_strncmp(version->value.data, ngx_pushjobs_ws_v13.data,
                       ngx_pushjobs_ws_v13.len)
           != 0)
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "pushjobs: websocket version \"%V\" is not 13",
                      version ? &version->value : &empty);
        return ngx_pushjobs_ws_upgrade_required(r, 1);
    }

    key = ngx_pushjobs_header_in(r, ngx_pushjobs_ws_key.data,
                                 ngx_pushjobs_ws_key.len);

    if (key == NULL) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "pushjobs: no Sec-WebSocket-Key");
        return NGX_HTTP_BAD_REQUEST;
    }

    /*
     * 16 bytes in base64 are 22 characters and "==";
     * ngx_decode_base64() would stop quietly at a bad character.
     */

    p = key->value.data;

    for (i = 0; i < key->value.len; i++) {
        if (i >= NGX_PUSHJOBS_WS_KEY_LEN - 2) {
            if (p[i] != '=') {
                break;
            }

            continue;
        }

        if (!((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '+' || p[i] == '/'))
        {
            break;
        }
    }

    decoded.data = raw;

    if (i != NGX_PUSHJOBS_WS_KEY_LEN
        || key->value.len != NGX_PUSHJOBS_WS_KEY_LEN
        || ngx_decode_base64(&decoded, &key->value) != NGX_OK
        || decoded.len != 16)
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "pushjobs: bad Sec-WebSocket-Key \"%V\"", &key->value);
        return NGX_HTTP_BAD_REQUEST;
    }

    p = ngx_cpymem(text, key->value.data, NGX_PUSHJOBS_WS_KEY_LEN);
    ngx_memcpy(p, NGX_PUSHJOBS_WS_GUID, sizeof(NGX_PUSHJOBS_WS_GUID) - 1);

    if (EVP_Digest(text, sizeof(text), digest, &n, EVP_sha1(), NULL) != 1) {
        ngx_log_error(NGX_LOG_ALERT, c->log, 0,
                      "pushjobs: EVP_Digest(sha1) failed");
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, NGX_PUSHJOBS_WS_ACCEPT_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    src.data = digest;
    src.len = n;
    accept.data = p;

    ngx_encode_base64(&accept, &src);

    if (ngx_pushjobs_ws_header_out(r, &ngx_pushjobs_ws_upgrade,
                                   &ngx_pushjobs_ws_websocket)
        != NGX_OK
        || ngx_pushjobs_ws_header_out(r, &ngx_pushjobs_ws_accept, &accept)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    /*
     * The header filter writes "Connection: upgrade" for a 101 by itself.
     * Nothing follows the header through the filters: the connection is
     * neither kept alive nor closed lingering, as for proxied upgrades.
     */

    r->headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS;
    ngx_str_set(&r->headers_out.status_line, "101 Switching Protocols");
    ngx_str_null(&r->headers_out.content_type);
    r->headers_out.content_type_len = 0;
    r->headers_out.content_length_n = -1;
    r->headers_out.content_length = NULL;
    r->headers_out.last_modified_time = -1;
    r->headers_out.last_modified = NULL;

    r->header_only = 1;
    r->chunked = 0;
    r->allow_ranges = 0;
    r->keepalive = 0;
    r->lingering_close = 0;

    c->log->action = "serving websocket channel";

#if (NGX_HTTP_SSL)
    /*
     * Frames are written unbuffered (ngx_pushjobs_out_flush); without this
     * the 101 would make nginx allocate an ssl_buffer_size (16k) buffer
     * from the connection's pool, held as long as the channel lives.
     */
    if (c->ssl) {
        c->ssl->buffer = 0;
    }
#endif

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "pushjobs: cannot send the websocket handshake");
        return NGX_ERROR;
    }

    /* a response header that the socket did not take stays in r->out */

    if (ngx_http_send_special(r, NGX_HTTP_FLUSH) == NGX_ERROR) {
        return NGX_ERROR;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "pushjobs: websocket accepted, key \"%V\"", &key->value);

    return NGX_OK;
}


/*
 * 1 if a header "name" holds "token" in its comma separated list of
 * tokens, case-insensitively; all headers of that name are looked at.
 */

static ngx_uint_t
ngx_pushjobs_ws_header_token(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *token)
{
    u_char           *p, *last, *start, *end;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return 0;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len != name->len
            || ngx_strncasecmp(h[i].key.data, name->data, name->len) != 0)
        {
            continue;
        }

        p = h[i].value.data;
        last = p + h[i].value.len;

        while (p < last) {

            while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
                p++;
            }

            start = p;

            while (p < last && *p != ',') {
                p++;
            }

            end = p;

            while (end > start && (end[-1] == ' ' || end[-1] == '\t')) {
                end--;
            }

            if ((size_t) (end - start) == token->len
                && ngx_strncasecmp(start, token->data, token->len) == 0)
            {
                return 1;
            }
        }
    }
}


static ngx_int_t
ngx_pushjobs_ws_header_out(ngx_http_request_t *r, ngx_str_t *key,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key = *key;
    h->value = *value;
    h->lowcase_key = NULL;

    return NGX_OK;
}


/* 426, naming what the client should speak instead. */

static ngx_int_t
ngx_pushjobs_ws_upgrade_required(ngx_http_request_t *r, ngx_uint_t version)
{
    if (ngx_pushjobs_ws_header_out(r, &ngx_pushjobs_ws_upgrade,
                                   &ngx_pushjobs_ws_websocket)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (version
        && ngx_pushjobs_ws_header_out(r, &ngx_pushjobs_ws_version,
                                      &ngx_pushjobs_ws_v13)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_HTTP_PUSHJOBS_UPGRADE_REQUIRED;
}


/* The frame reader. */

void
ngx_pushjobs_ws_reader_init(ngx_pushjobs_ws_reader_t *rd, size_t max_size,
    ngx_log_t *log)
{
    ngx_memzero(rd, sizeof(ngx_pushjobs_ws_reader_t));

    rd->state = NGX_PUSHJOBS_WS_ST_HEADER;
    rd->header_need = 2;
    rd->max_size = max_size;
    rd->log = log;
}


void
ngx_pushjobs_ws_reader_free(ngx_pushjobs_ws_reader_t *rd)
{
    if (rd->buf) {
        ngx_free(rd->buf);
        rd->buf = NULL;
    }

    rd->len = 0;
    rd->size = 0;
}


/*
 * Consumes bytes from [*pos, last).  NGX_OK with one complete message or
 * control frame in "frame" (its payload valid until the next call),
 * NGX_AGAIN when all bytes are consumed and no frame is complete, NGX_ERROR
 * with the close code to send in frame->close_code.  A frame that arrived
 * whole is unmasked in place in the caller's buffer and not copied.
 */

ngx_int_t
ngx_pushjobs_ws_read(ngx_pushjobs_ws_reader_t *rd, u_char **pos, u_char *last,
    ngx_pushjobs_ws_frame_t *frame)
{
    u_char     *p, *dst;
    size_t      n;
    ngx_int_t   rc;

    frame->opcode = 0;
    frame->payload.len = 0;
    frame->payload.data = NULL;
    frame->close_code = 0;

    if (rd->state == NGX_PUSHJOBS_WS_ST_ERROR) {
        /* the close code of the error is kept in rd->opcode */
        frame->close_code = rd->opcode;
        return NGX_ERROR;
    }

    /* the message handed out last time is done with: keep no buffer idle */

    if (rd->buf && rd->msg_opcode == 0) {
        ngx_pushjobs_ws_reader_free(rd);
    }

    p = *pos;

    for ( ;; ) {

        if (rd->state == NGX_PUSHJOBS_WS_ST_HEADER) {

            while (rd->header_len < rd->header_need && p < last) {
                rd->header[rd->header_len++] = *p++;

                if (rd->header_len == 2) {
                    *pos = p;

                    if (ngx_pushjobs_ws_check_start(rd, frame) != NGX_OK) {
                        return NGX_ERROR;
                    }
                }
            }

            *pos = p;

            if (rd->header_len < rd->header_need) {
                return NGX_AGAIN;
            }

            if (ngx_pushjobs_ws_parse_header(rd, frame) != NGX_OK) {
                return NGX_ERROR;
            }

            rd->header_len = 0;
            rd->header_need = 2;
            rd->mask_pos = 0;

            /* a frame that arrived whole needs no copy */

            if (rd->frame_left <= (uint64_t) (last - p)
                && (ngx_pushjobs_ws_is_control(rd->opcode)
                    || (rd->opcode != NGX_PUSHJOBS_WS_CONT && rd->fin)))
            {
                n = (size_t) rd->frame_left;

                ngx_pushjobs_ws_unmask(p, n, rd->mask, &rd->mask_pos);

                *pos = p + n;
                rd->frame_left = 0;

                return ngx_pushjobs_ws_frame_done(rd, p, n, frame);
            }

            rd->state = NGX_PUSHJOBS_WS_ST_PAYLOAD;
        }

        /* NGX_PUSHJOBS_WS_ST_PAYLOAD */

        if (rd->frame_left) {

            if (p == last) {
                *pos = p;
                return NGX_AGAIN;
            }

            n = (size_t) ngx_min((uint64_t) (last - p), rd->frame_left);

            if (ngx_pushjobs_ws_is_control(rd->opcode)) {
                dst = rd->control + rd->control_len;
                rd->control_len += n;

            } else {
                if (ngx_pushjobs_ws_grow(rd, rd->len + n) != NGX_OK) {
                    *pos = p;
                    return ngx_pushjobs_ws_error(rd, frame,
                                                 NGX_PUSHJOBS_WS_SERVER_ERROR,
                                                 "out of memory");
                }

                dst = rd->buf + rd->len;
                rd->len += n;
            }

            ngx_memcpy(dst, p, n);
            ngx_pushjobs_ws_unmask(dst, n, rd->mask, &rd->mask_pos);

            p += n;
            rd->frame_left -= n;

            if (rd->frame_left) {
                *pos = p;
                return NGX_AGAIN;
            }
        }

        *pos = p;
        rd->state = NGX_PUSHJOBS_WS_ST_HEADER;

        if (ngx_pushjobs_ws_is_control(rd->opcode)) {
            n = rd->control_len;
            rd->control_len = 0;

            return ngx_pushjobs_ws_frame_done(rd, rd->control, n, frame);
        }

        rc = ngx_pushjobs_ws_frame_done(rd, rd->buf, rd->len, frame);

        if (rc != NGX_AGAIN) {
            return rc;
        }

        /* a fragment of a message: read on */
    }
}


/* Checks the first two bytes of a frame header. */

static ngx_int_t
ngx_pushjobs_ws_check_start(ngx_pushjobs_ws_reader_t *rd,
    ngx_pushjobs_ws_frame_t *frame)
{
    size_t      ext;
    ngx_uint_t  opcode, len;

    if (rd->header[0] & 0x70) {
        return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_PROTOCOL,
                                     "reserved bits set");
    }

    if (!(rd->header[1] & 0x80)) {
        return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_PROTOCOL,
                                     "unmasked frame");
    }

    opcode = rd->header[0] & 0x0f;
    len = rd->header[1] & 0x7f;

    rd->fin = (rd->header[0] & 0x80) ? 1 : 0;
    rd->opcode = opcode;

    switch (opcode) {

    case NGX_PUSHJOBS_WS_CONT:
        if (rd->msg_opcode == 0) {
            return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_PROTOCOL,
                                         "continuation without a message");
        }

        break;

    case NGX_PUSHJOBS_WS_TEXT:
    case NGX_PUSHJOBS_WS_BINARY:
        if (rd->msg_opcode) {
            return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_PROTOCOL,
                                         "new message inside a fragmented "
                                         "one");
        }

        break;

    case NGX_PUSHJOBS_WS_CLOSE:
    case NGX_PUSHJOBS_WS_PING:
    case NGX_PUSHJOBS_WS_PONG:
        if (!rd->fin) {
            return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_PROTOCOL,
                                         "fragmented control frame");
        }

        if (len > 125) {
            return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_PROTOCOL,
                                         "control frame too long");
        }

        break;

    default:
        return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_PROTOCOL,
                                     "unknown opcode");
    }

    ext = (len == 126) ? 2 : (len == 127) ? 8 : 0;

    rd->header_need = 2 + ext + 4;

    return NGX_OK;
}


/* The whole header is in: length, mask, size limit. */

static ngx_int_t
ngx_pushjobs_ws_parse_header(ngx_pushjobs_ws_reader_t *rd,
    ngx_pushjobs_ws_frame_t *frame)
{
    u_char      *h;
    uint64_t     len;
    ngx_uint_t   i;

    h = rd->header;
    len = h[1] & 0x7f;
    h += 2;

    if (len == 126) {
        len = ((uint64_t) h[0] << 8) | h[1];
        h += 2;

    } else if (len == 127) {
        if (h[0] & 0x80) {
            return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_PROTOCOL,
                                         "64-bit length with the top bit "
                                         "set");
        }

        len = 0;

        for (i = 0; i < 8; i++) {
            len = (len << 8) | h[i];
        }

        h += 8;
    }

    ngx_memcpy(rd->mask, h, 4);

    if (!ngx_pushjobs_ws_is_control(rd->opcode)) {

        /* the declared length, before any memory is taken for it */

        if (len > (uint64_t) (rd->max_size - rd->len)) {
            return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_TOO_BIG,
                                         "message too big");
        }

        if (rd->opcode != NGX_PUSHJOBS_WS_CONT) {
            rd->msg_opcode = rd->opcode;
            rd->len = 0;
        }

        if (!rd->fin) {
            rd->fragmented = 1;
        }
    }

    rd->frame_left = len;
    rd->control_len = 0;

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "pushjobs: ws frame opcode:%ui fin:%ui len:%uL msg:%uz",
                   rd->opcode, rd->fin, len, rd->len);

    return NGX_OK;
}


/*
 * Makes room for need bytes of the message in progress.  The buffer grows
 * by doubling, never beyond the bytes of the current frame that are
 * declared, so it stays within max_size and within twice what arrived.
 */

static ngx_int_t
ngx_pushjobs_ws_grow(ngx_pushjobs_ws_reader_t *rd, size_t need)
{
    u_char  *buf;
    size_t   size, limit;

    if (need <= rd->size) {
        return NGX_OK;
    }

    limit = rd->len + (size_t) rd->frame_left;

    size = ngx_max(rd->size * 2, NGX_PUSHJOBS_WS_BUF_MIN);
    size = ngx_min(size, limit);
    size = ngx_max(size, need);

    buf = ngx_alloc(size, rd->log);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    if (rd->buf) {
        ngx_memcpy(buf, rd->buf, rd->len);
        ngx_free(rd->buf);
    }

    rd->buf = buf;
    rd->size = size;

    return NGX_OK;
}


/*
 * A frame is complete.  NGX_OK with a control frame or the last fragment
 * of a message, NGX_AGAIN after a fragment that is not the last.
 */

static ngx_int_t
ngx_pushjobs_ws_frame_done(ngx_pushjobs_ws_reader_t *rd, u_char *data,
    size_t len, ngx_pushjobs_ws_frame_t *frame)
{
    if (ngx_pushjobs_ws_is_control(rd->opcode)) {
        return ngx_pushjobs_ws_control(rd, data, len, frame);
    }

    if (!rd->fin) {
        return NGX_AGAIN;
    }

    frame->opcode = rd->msg_opcode;

    /* an empty message made of empty fragments has no buffer */
    frame->payload.data = data ? data : rd->control;
    frame->payload.len = len;

    /* the buffer is released on the next call, when the caller is done */

    rd->msg_opcode = 0;
    rd->fragmented = 0;
    rd->len = 0;

    /* the payload handed out, never data: NULL for an empty message */

    if (frame->opcode == NGX_PUSHJOBS_WS_TEXT
        && !ngx_pushjobs_ws_utf8(frame->payload.data, len))
    {
        return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_INVALID,
                                     "text message is not UTF-8");
    }

    return NGX_OK;
}


static ngx_int_t
ngx_pushjobs_ws_control(ngx_pushjobs_ws_reader_t *rd, u_char *data,
    size_t len, ngx_pushjobs_ws_frame_t *frame)
{
    ngx_uint_t  code;

    frame->opcode = rd->opcode;
    frame->payload.data = data;
    frame->payload.len = len;

    if (rd->opcode != NGX_PUSHJOBS_WS_CLOSE) {
        return NGX_OK;
    }

    /* a close frame: the payload handed out is the reason */

    if (len == 0) {
        frame->close_code = 1005;
        return NGX_OK;
    }

    if (len == 1) {
        return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_PROTOCOL,
                                     "close frame of one byte");
    }

    code = ((ngx_uint_t) data[0] << 8) | data[1];

    /*
     * Codes a peer may send: those of RFC 6455 and the IANA registry
     * except 1004, 1005, 1006 and 1015, and the private range.
     */

    if (code < 1000
        || (code >= 1004 && code <= 1006)
        || (code >= 1015 && code < 3000)
        || code > 4999)
    {
        return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_PROTOCOL,
                                     "invalid close code");
    }

    if (!ngx_pushjobs_ws_utf8(data + 2, len - 2)) {
        return ngx_pushjobs_ws_error(rd, frame, NGX_PUSHJOBS_WS_INVALID,
                                     "close reason is not UTF-8");
    }

    frame->close_code = code;
    frame->payload.data = data + 2;
    frame->payload.len = len - 2;

    return NGX_OK;
}


static ngx_int_t
ngx_pushjobs_ws_error(ngx_pushjobs_ws_reader_t *rd,
    ngx_pushjobs_ws_frame_t *frame, ngx_uint_t code, const char *reason)
{
    ngx_log_error(NGX_LOG_INFO, rd->log, 0,
                  "pushjobs: websocket error %ui: %s", code, reason);

    rd->state = NGX_PUSHJOBS_WS_ST_ERROR;
    rd->opcode = code;

    frame->opcode = 0;
    frame->payload.len = 0;
    frame->payload.data = NULL;
    frame->close_code = code;

    return NGX_ERROR;
}


static void
ngx_pushjobs_ws_unmask(u_char *p, size_t len, u_char *mask, ngx_uint_t *pos)
{
    size_t      i;
    ngx_uint_t  m;

    m = *pos;

    for (i = 0; i < len; i++) {
        p[i] ^= mask[m];
        m = (m + 1) & 3;
    }

    *pos = m;
}


/* 1 if the bytes are well-formed UTF-8 (no overlongs, no surrogates). */

static ngx_uint_t
ngx_pushjobs_ws_utf8(u_char *p, size_t len)
{
    u_char      *last;
    uint32_t     u, min;
    ngx_uint_t   i, n;

    last = p + len;

    while (p < last) {

        if (*p < 0x80) {
            p++;
            continue;
        }

        if ((*p & 0xe0) == 0xc0) {
            n = 1;
            u = *p & 0x1f;
            min = 0x80;

        } else if ((*p & 0xf0) == 0xe0) {
            n = 2;
            u = *p & 0x0f;
            min = 0x800;

        } else if ((*p & 0xf8) == 0xf0) {
            n = 3;
            u = *p & 0x07;
            min = 0x10000;

        } else {
            return 0;
        }

        p++;

        if ((size_t) (last - p) < n) {
            return 0;
        }

        for (i = 0; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                return 0;
            }

            u = (u << 6) | (p[i] & 0x3f);
        }

        p += n;

        if (u < min || u > 0x10ffff || (u >= 0xd800 && u <= 0xdfff)) {
            return 0;
        }
    }

    return 1;
}


/* Server frames. */

size_t
ngx_pushjobs_ws_header(u_char *p, ngx_uint_t opcode, size_t len)
{
    ngx_uint_t  i;

    p[0] = (u_char) (0x80 | (opcode & 0x0f));

    if (len < 126) {
        p[1] = (u_char) len;
        return 2;
    }

    if (len <= 0xffff) {
        p[1] = 126;
        p[2] = (u_char) (len >> 8);
        p[3] = (u_char) (len & 0xff);
        return 4;
    }

    p[1] = 127;

    for (i = 0; i < 8; i++) {
        p[2 + i] = (u_char) ((uint64_t) len >> (8 * (7 - i)));
    }

    return 10;
}


ngx_pushjobs_msg_t *
ngx_pushjobs_msg_create(ngx_uint_t opcode, u_char *data, size_t len)
{
    size_t               hlen;
    ngx_pushjobs_msg_t  *msg;

    hlen = (len < 126) ? 2 : (len <= 0xffff) ? 4 : 10;

    msg = ngx_alloc(sizeof(ngx_pushjobs_msg_t) + hlen + len, ngx_cycle->log);
    if (msg == NULL) {
        return NULL;
    }

    msg->refs = 1;
    msg->data = (u_char *) msg + sizeof(ngx_pushjobs_msg_t);

    hlen = ngx_pushjobs_ws_header(msg->data, opcode, len);

    msg->len = hlen + len;
    msg->payload.data = msg->data + hlen;
    msg->payload.len = len;

    if (len) {
        ngx_memcpy(msg->payload.data, data, len);
    }

    return msg;
}


void
ngx_pushjobs_msg_release(ngx_pushjobs_msg_t *msg)
{
    if (msg == NULL) {
        return;
    }

    if (--msg->refs == 0) {
        ngx_free(msg);
    }
}
