/*
 * Copyright (C) pushjobs developers
 */


/*
 * The bounded JSON pre-check (json_bound.h).  One pass, no allocation, no
 * recursion; every read is guarded by the length, so any input is safe.
 *
 * Counting: every array and object opened, every string (keys count as
 * values: an object's keys cost tree memory too) and every literal token
 * (number, true, false, null, or any run of other bytes, which yajl then
 * refuses) is one value.
 *
 * Strings: strict UTF-8 (RFC 3629: no overlong forms, no UTF-8-encoded
 * surrogates, nothing above U+10FFFF, no truncated sequence), no raw
 * control character (RFC 8259), and escapes that PostgreSQL text can hold:
 * no \u0000 and no \u escape of a surrogate outside a high-low pair.
 * PostgreSQL's jsonb refuses both with an error, and a C string ends at
 * the NUL.
 */


#include "json_bound.h"


/*
 * A job body (POST jobs, and the abort body, which names nodes of one
 * job).  A valid body nests 2 deep (the object, then "nodes" or "env");
 * 8 leaves a body of wrong types a few levels their own contract message.
 * Its values are about one per node: the benchmarks post jobs naming
 * 100,000 nodes (with pushjobs_max_body_size raised), so 200,000 is twice
 * that, and caps yajl's tree near 10 MB (about 48 bytes a value).
 */

const pj_json_limits_t  pj_json_job_body = { 8, 200000 };


/*
 * A message of an agent: one websocket text message, or a long-poll body
 * (an array of messages).  The deepest is a long-poll body holding a
 * hello: array, message, "jobs", job entry (4).  A hello lists the job the
 * agent holds and every report in its spool, 3 values each (the module
 * reads 16 of them); 65,536 values leave room for 20,000 spooled reports
 * and cap the tree near 3 MB, whatever the message size limit is.
 */

const pj_json_limits_t  pj_json_agent_message = { 8, 65536 };


/*
 * A message of the server, read by the agent: one websocket text message,
 * or a long-poll answer (an array of them).  The deepest is a commit in a
 * long-poll answer: array, message, "env" (3).  A commit carries the job's
 * env, which the job body limit above bounds to 200,000 values: 262,144
 * holds that and the rest of a batch.
 */

const pj_json_limits_t  pj_json_server_message = { 8, 262144 };


/*
 * A document of the Chef server: principals (an object, "principals", a
 * principal: 3 deep) and groups (an object and its lists: 2 deep).  A
 * group of a large organization lists every client twice ("clients" and
 * "actors"): 100,000 clients (the benchmarks) make 200,000 values, so
 * 1,048,576 has room; the subrequest buffer bounds the bytes, this bounds
 * the tree.
 */

const pj_json_limits_t  pj_json_chef_response = { 8, 1048576 };


static int pj_json_string(const unsigned char *p, size_t len, size_t *pos);
static long pj_json_hex4(const unsigned char *p, size_t len, size_t pos);
static size_t pj_json_utf8(const unsigned char *p, size_t n);


int
pj_json_bound(const unsigned char *p, size_t len,
    const pj_json_limits_t *lim, size_t *at)
{
    int     rc, literal;
    size_t  i, depth, values;

    depth = 0;
    values = 0;
    literal = 0;
    rc = PJ_JSON_OK;

    i = 0;

    while (i < len) {

        switch (p[i]) {

        case '"':
            literal = 0;

            if (++values > lim->values) {
                rc = PJ_JSON_TOO_MANY;
                goto done;
            }

            rc = pj_json_string(p, len, &i);
            if (rc != PJ_JSON_OK) {
                goto done;
            }

            /* i is past the closing quote */
            continue;

        case '[':
        case '{':
            literal = 0;

            if (++depth > lim->depth) {
                rc = PJ_JSON_TOO_DEEP;
                goto done;
            }

            if (++values > lim->values) {
                rc = PJ_JSON_TOO_MANY;
                goto done;
            }

            break;

        case ']':
        case '}':
            literal = 0;

            if (depth == 0) {
                rc = PJ_JSON_UNBALANCED;
                goto done;
            }

            depth--;
            break;

        case ' ':
        case '\t':
        case '\n':
        case '\r':
        case ',':
        case ':':
            literal = 0;
            break;

        case '\0':
            rc = PJ_JSON_NUL;
            goto done;

        default:
            if (!literal) {
                literal = 1;

                if (++values > lim->values) {
                    rc = PJ_JSON_TOO_MANY;
                    goto done;
                }
            }
        }

        i++;
    }

    if (depth != 0) {
        rc = PJ_JSON_UNBALANCED;
    }

done:

    if (at) {
        *at = i;
    }

    return rc;
}


const char *
pj_json_bound_strerror(int rc)
{
    switch (rc) {
    case PJ_JSON_OK:
        return "valid";
    case PJ_JSON_TOO_DEEP:
        return "nested too deep";
    case PJ_JSON_TOO_MANY:
        return "too many values";
    case PJ_JSON_BAD_UTF8:
        return "a string is not valid UTF-8";
    case PJ_JSON_BAD_ESCAPE:
        return "a string escape is invalid, a lone surrogate or \\u0000";
    case PJ_JSON_CONTROL:
        return "a control character in a string";
    case PJ_JSON_NUL:
        return "a NUL byte";
    case PJ_JSON_UNBALANCED:
        return "unbalanced brackets or an unterminated string";
    default:
        return "invalid";
    }
}


/*
 * The string whose opening quote is at *pos; on success *pos is past its
 * closing quote, else at the offending byte.
 */

static int
pj_json_string(const unsigned char *p, size_t len, size_t *pos)
{
    long    cp, lo;
    size_t  j, n;

    j = *pos + 1;

    for ( ;; ) {

        if (j >= len) {
            *pos = j;
            return PJ_JSON_UNBALANCED;
        }

        if (p[j] == '"') {
            *pos = j + 1;
            return PJ_JSON_OK;
        }

        if (p[j] == '\\') {

            if (len - j < 2) {
                *pos = j;
                return PJ_JSON_UNBALANCED;
            }

            switch (p[j + 1]) {

            case '"': case '\\': case '/': case 'b': case 'f': case 'n':
            case 'r': case 't':
                j += 2;
                continue;

            case 'u':
                break;

            default:
                *pos = j;
                return PJ_JSON_BAD_ESCAPE;
            }

            cp = pj_json_hex4(p, len, j + 2);

            if (cp <= 0 || (cp >= 0xdc00 && cp <= 0xdfff)) {
                /* not 4 hex digits, U+0000, or a low surrogate alone */
                *pos = j;
                return PJ_JSON_BAD_ESCAPE;
            }

            if (cp >= 0xd800 && cp <= 0xdbff) {

                /* a high surrogate: a low one must follow at once */

                if (len - (j + 6) < 6 || p[j + 6] != '\\' || p[j + 7] != 'u')
                {
                    *pos = j;
                    return PJ_JSON_BAD_ESCAPE;
                }

                lo = pj_json_hex4(p, len, j + 8);

                if (lo < 0xdc00 || lo > 0xdfff) {
                    *pos = j;
                    return PJ_JSON_BAD_ESCAPE;
                }

                j += 6;
            }

            j += 6;
            continue;
        }

        if (p[j] < 0x20) {
            *pos = j;
            return p[j] == '\0' ? PJ_JSON_NUL : PJ_JSON_CONTROL;
        }

        if (p[j] < 0x80) {
            j++;
            continue;
        }

        n = pj_json_utf8(p + j, len - j);

        if (n == 0) {
            *pos = j;
            return PJ_JSON_BAD_UTF8;
        }

        j += n;
    }
}


/* The value of 4 hex digits at pos, or -1. */

static long
pj_json_hex4(const unsigned char *p, size_t len, size_t pos)
{
    long           v;
    size_t         k;
    unsigned char  c;

    if (pos > len || len - pos < 4) {
        return -1;
    }

    v = 0;

    for (k = pos; k < pos + 4; k++) {
        c = p[k];

        if (c >= '0' && c <= '9') {
            v = v * 16 + (c - '0');

        } else if (c >= 'a' && c <= 'f') {
            v = v * 16 + (c - 'a' + 10);

        } else if (c >= 'A' && c <= 'F') {
            v = v * 16 + (c - 'A' + 10);

        } else {
            return -1;
        }
    }

    return v;
}


/*
 * The length of the well-formed UTF-8 sequence of a non-ASCII lead byte at
 * p (n bytes available), or 0 (RFC 3629, table 3-7 of Unicode).
 */

static size_t
pj_json_utf8(const unsigned char *p, size_t n)
{
    size_t         need, k;
    unsigned char  c, lo, hi;

    c = p[0];
    lo = 0x80;
    hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf) {
        need = 2;

    } else if (c >= 0xe0 && c <= 0xef) {
        need = 3;

        if (c == 0xe0) {
            lo = 0xa0;              /* overlong below U+0800 */

        } else if (c == 0xed) {
            hi = 0x9f;              /* U+D800..U+DFFF, surrogates */
        }

    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;

        if (c == 0xf0) {
            lo = 0x90;              /* overlong below U+10000 */

        } else if (c == 0xf4) {
            hi = 0x8f;              /* above U+10FFFF */
        }

    } else {
        /* a continuation byte, C0/C1 (overlong ASCII), F5..FF */
        return 0;
    }

    if (n < need) {
        return 0;
    }

    if (p[1] < lo || p[1] > hi) {
        return 0;
    }

    for (k = 2; k < need; k++) {
        if (p[k] < 0x80 || p[k] > 0xbf) {
            return 0;
        }
    }

    return need;
}
