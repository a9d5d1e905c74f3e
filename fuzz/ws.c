/*
 * Copyright (C) pushjobs developers
 */


/*
 * The module's websocket frame reader (ngx_pushjobs_ws_read): the bytes an
 * agent sends after the upgrade, arriving in chunks of any size.
 *
 * Input: one byte of options (message size cap, chunking seed), then the
 * client's bytes.  Every chunk is an exact-size heap copy, so a read past
 * what arrived is an ASan report.  Checked: what a frame hands out is
 * within the cap and the buffer, a text message is UTF-8, an error carries
 * a close code the contract allows, and the reader stops after an error.
 */


#include "ngx_pushjobs_module.h"
#include "ngx_fuzz.h"


static ngx_uint_t
ngx_fuzz_ws_utf8(u_char *p, size_t len)
{
    size_t    i, n;
    uint32_t  u;

    /* an independent check, after RFC 3629's table */

    for (i = 0; i < len; i += n) {
        u = p[i];

        if (u < 0x80) {
            n = 1;
            continue;
        }

        if (u >= 0xc2 && u <= 0xdf) {
            n = 2;
        } else if (u >= 0xe0 && u <= 0xef) {
            n = 3;
        } else if (u >= 0xf0 && u <= 0xf4) {
            n = 4;
        } else {
            return 0;
        }

        if (len - i < n) {
            return 0;
        }

        if ((p[i + 1] & 0xc0) != 0x80
            || (n > 2 && (p[i + 2] & 0xc0) != 0x80)
            || (n > 3 && (p[i + 3] & 0xc0) != 0x80))
        {
            return 0;
        }

        if ((u == 0xe0 && p[i + 1] < 0xa0)
            || (u == 0xed && p[i + 1] > 0x9f)
            || (u == 0xf0 && p[i + 1] < 0x90)
            || (u == 0xf4 && p[i + 1] > 0x8f))
        {
            return 0;
        }
    }

    return 1;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                    *chunk, *pos, sum;
    size_t                     n, max, i;
    ngx_int_t                  rc;
    ngx_log_t                 *log;
    ngx_fuzz_rand_t            rnd;
    ngx_pushjobs_ws_frame_t    frame;
    ngx_pushjobs_ws_reader_t   rd;

    static size_t  caps[] = { 0, 1, 125, 126, 4096, 65536, 1 << 20, 300 };

    log = ngx_fuzz_init();

    if (size < 1) {
        return 0;
    }

    max = caps[data[0] & 7];
    rnd.state = data[0] >> 3;
    data++;
    size--;

    ngx_pushjobs_ws_reader_init(&rd, max, log);

    sum = 0;
    rc = NGX_AGAIN;

    while (size && rc != NGX_ERROR) {
        n = ngx_fuzz_chunk(&rnd, size);

        chunk = malloc(n);
        if (chunk == NULL) {
            break;
        }

        memcpy(chunk, data, n);
        data += n;
        size -= n;

        pos = chunk;

        for ( ;; ) {
            rc = ngx_pushjobs_ws_read(&rd, &pos, chunk + n, &frame);

            if (pos < chunk || pos > chunk + n) {
                abort();
            }

            if (rc == NGX_AGAIN) {
                if (pos != chunk + n) {
                    abort();
                }

                break;
            }

            if (rc == NGX_ERROR) {
                switch (frame.close_code) {
                case NGX_PUSHJOBS_WS_PROTOCOL:
                case NGX_PUSHJOBS_WS_INVALID:
                case NGX_PUSHJOBS_WS_TOO_BIG:
                case NGX_PUSHJOBS_WS_SERVER_ERROR:
                    break;
                default:
                    abort();
                }

                /* an error is final */

                rc = ngx_pushjobs_ws_read(&rd, &pos, chunk + n, &frame);
                if (rc != NGX_ERROR) {
                    abort();
                }

                break;
            }

            if (rc != NGX_OK) {
                abort();
            }

            if (frame.payload.len && frame.payload.data == NULL) {
                abort();
            }

            for (i = 0; i < frame.payload.len; i++) {
                sum ^= frame.payload.data[i];
            }

            switch (frame.opcode) {

            case NGX_PUSHJOBS_WS_TEXT:
                if (!ngx_fuzz_ws_utf8(frame.payload.data, frame.payload.len))
                {
                    abort();
                }

                /* fall through */

            case NGX_PUSHJOBS_WS_BINARY:
                if (frame.payload.len > max) {
                    abort();
                }

                break;

            case NGX_PUSHJOBS_WS_CLOSE:
            case NGX_PUSHJOBS_WS_PING:
            case NGX_PUSHJOBS_WS_PONG:
                if (frame.payload.len > 125) {
                    abort();
                }

                break;

            default:
                abort();
            }
        }

        free(chunk);
    }

    ngx_pushjobs_ws_reader_free(&rd);

    /* keeps the reads of the payload from being optimized away */
    return sum & 0;
}
