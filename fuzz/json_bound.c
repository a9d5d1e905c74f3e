/*
 * libFuzzer harness: the bounded JSON pre-check (common/json_bound.c).
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon
 *        fuzz/json_bound.c common/json_bound.c
 *
 * Beyond "never reads out of bounds": the offset it reports is inside the
 * input, a success under tight limits is a success under looser ones, and
 * a document it accepts has balanced brackets (counted here the simple
 * way, outside strings) within the depth limit.
 */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "json_bound.h"


static void
check_depth(const uint8_t *data, size_t size, size_t max)
{
    int     in_string;
    size_t  i, depth;

    depth = 0;
    in_string = 0;

    for (i = 0; i < size; i++) {
        if (in_string) {
            if (data[i] == '\\') {
                i++;
            } else if (data[i] == '"') {
                in_string = 0;
            }
            continue;
        }

        switch (data[i]) {
        case '"':
            in_string = 1;
            break;
        case '[': case '{':
            if (++depth > max) {
                abort();
            }
            break;
        case ']': case '}':
            if (depth-- == 0) {
                abort();
            }
            break;
        }
    }

    if (depth != 0 || in_string) {
        abort();
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                     rc, loose;
    size_t                  at;
    static pj_json_limits_t  tight = { 3, 16 };

    at = (size_t) -1;
    rc = pj_json_bound(data, size, &tight, &at);

    if (at > size) {
        abort();
    }

    if (rc == PJ_JSON_OK) {
        check_depth(data, size, tight.depth);
    }

    loose = pj_json_bound(data, size, &pj_json_job_body, NULL);

    if (rc == PJ_JSON_OK && loose != PJ_JSON_OK) {
        abort();
    }

    (void) pj_json_bound(data, size, &pj_json_agent_message, NULL);
    (void) pj_json_bound_strerror(rc);

    return 0;
}
