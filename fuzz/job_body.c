/*
 * libFuzzer harness: the validation of the REST API's job and abort
 * bodies (common/job_body.c), bounded pre-check and yajl included.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon
 *        fuzz/job_body.c common/job_body.c common/json_bound.c -lyajl
 *
 * Beyond "no crash, no leak": every refusal carries a message, and a body
 * found valid is one PostgreSQL can store: it passed the pre-check (UTF-8,
 * no NUL, no lone surrogate) and names at least one node.
 */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "json_bound.h"
#include "job_body.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int              rc;
    pj_body_check_t  res;

    rc = pj_job_body_check(data, size, &res);

    if (rc == 1 && res.error == NULL) {
        abort();
    }

    if (rc == 0
        && (res.nodes == 0
            || pj_json_bound(data, size, &pj_json_job_body, NULL)
               != PJ_JSON_OK))
    {
        abort();
    }

    rc = pj_abort_body_check(data, size, &res);

    if (rc == 1 && res.error == NULL) {
        abort();
    }

    (void) pj_node_name_valid(data, size);

    return 0;
}
