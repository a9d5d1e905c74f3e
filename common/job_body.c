/*
 * Copyright (C) pushjobs developers
 */


/*
 * Job and abort bodies (job_body.h).  The job body is checked as the 2.x
 * server does and in its order: the type of each known field (command,
 * nodes, run_timeout, quorum, user, dir, env, file, capture_output), then
 * unknown keys, then an empty node list, then env and file contents.
 * Added (API.md §2, README's field table): unparsable or unbounded JSON,
 * node names Chef would not allow, duplicate names, a quorum outside
 * 0..number of nodes and a run_timeout outside 1..a year are 400s, not
 * 500s or jobs that cannot run.  Also ours: the rate control fields
 * max_concurrency (a count from 1, or "1%".."100%") and max_errors (a
 * count from 0, or "0%".."100%").
 */


#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_tree.h>

#include "json_bound.h"
#include "job_body.h"


static int pj_body_parse(const unsigned char *p, size_t len,
    const pj_json_limits_t *lim, pj_body_check_t *res, yajl_val *out);
static yajl_val pj_body_get(yajl_val obj, const char *key);
static int pj_body_integer(yajl_val v, long long min, long long max);
static int pj_body_rate(yajl_val v, long long min);
static int pj_body_names(yajl_val list, pj_body_check_t *res);
static int pj_body_duplicates(const char **names, size_t n);
static int pj_body_cmp(const void *one, const void *two);
static int pj_body_base64(const char *s, size_t len, size_t *decoded);


#define pj_body_invalid(res, msg)                                             \
    do { (res)->error = (msg); rc = 1; goto done; } while (0)


int
pj_job_body_check(const unsigned char *p, size_t len, pj_body_check_t *res)
{
    int          rc;
    size_t       i, j, n, slen;
    yajl_val     job, v, e;
    const char  *s, **keys;

    static const char  *known[] = {
        "command", "nodes", "run_timeout", "quorum", "user", "dir", "env",
        "file", "capture_output", "max_concurrency", "max_errors", NULL
    };

    memset(res, 0, sizeof(pj_body_check_t));

    rc = pj_body_parse(p, len, &pj_json_job_body, res, &job);
    if (rc != 0) {
        return rc;
    }

    v = pj_body_get(job, "command");
    if (!YAJL_IS_STRING(v)) {
        pj_body_invalid(res, "invalid command supplied");
    }

    v = pj_body_get(job, "nodes");
    if (!YAJL_IS_ARRAY(v)) {
        pj_body_invalid(res, "at least one node must be supplied");
    }

    for (i = 0; i < v->u.array.len; i++) {
        if (!YAJL_IS_STRING(v->u.array.values[i])) {
            pj_body_invalid(res, "at least one node must be supplied");
        }
    }

    v = pj_body_get(job, "run_timeout");
    if (v && !YAJL_IS_NUMBER(v)) {
        pj_body_invalid(res, "invalid type supplied for run_timeout "
                             "(expected a number)");
    }

    v = pj_body_get(job, "quorum");
    if (v && !YAJL_IS_NUMBER(v)) {
        pj_body_invalid(res, "invalid type supplied for quorum "
                             "(expected a number)");
    }

    v = pj_body_get(job, "user");
    if (v && !YAJL_IS_STRING(v)) {
        pj_body_invalid(res, "an unknown validation error has occurred");
    }

    v = pj_body_get(job, "dir");
    if (v && !YAJL_IS_STRING(v)) {
        pj_body_invalid(res, "an unknown validation error has occurred");
    }

    v = pj_body_get(job, "env");
    if (v) {
        if (!YAJL_IS_OBJECT(v)) {
            pj_body_invalid(res, "an unknown validation error has occurred");
        }

        for (i = 0; i < v->u.object.len; i++) {
            if (!YAJL_IS_STRING(v->u.object.values[i])) {
                pj_body_invalid(res,
                                "an unknown validation error has occurred");
            }
        }
    }

    v = pj_body_get(job, "file");
    if (v && !YAJL_IS_STRING(v)) {
        pj_body_invalid(res, "an unknown validation error has occurred");
    }

    v = pj_body_get(job, "capture_output");
    if (v && !YAJL_IS_TRUE(v) && !YAJL_IS_FALSE(v)) {
        pj_body_invalid(res, "invalid type supplied for capture_output "
                             "(expected a boolean)");
    }

    /* at most one of each of the 11 keys: this loop ends within 12 */

    for (i = 0; i < job->u.object.len; i++) {
        for (j = 0; known[j]; j++) {
            if (strcmp(job->u.object.keys[i], known[j]) == 0) {
                break;
            }
        }

        if (known[j] == NULL) {
            pj_body_invalid(res, "invalid key supplied");
        }

        for (j = 0; j < i; j++) {
            if (strcmp(job->u.object.keys[i], job->u.object.keys[j]) == 0) {
                pj_body_invalid(res, "duplicate key supplied");
            }
        }
    }

    v = pj_body_get(job, "nodes");
    n = v->u.array.len;

    if (n == 0) {
        pj_body_invalid(res, "at least one node must be supplied");
    }

    rc = pj_body_names(v, res);
    if (rc != 0) {
        goto done;
    }

    v = pj_body_get(job, "run_timeout");
    if (v && !pj_body_integer(v, 1, PJ_RUN_TIMEOUT_MAX)) {
        pj_body_invalid(res, "invalid run_timeout supplied (expected an "
                             "integer from 1 to 31536000)");
    }

    v = pj_body_get(job, "quorum");
    if (v && !pj_body_integer(v, 0, (long long) n)) {
        pj_body_invalid(res, "invalid quorum supplied (expected an integer "
                             "from 0 to the number of nodes)");
    }

    v = pj_body_get(job, "max_concurrency");
    if (v && !pj_body_rate(v, 1)) {
        pj_body_invalid(res, "invalid max_concurrency supplied (expected an "
                             "integer from 1 or a percentage string from "
                             "\"1%\" to \"100%\")");
    }

    v = pj_body_get(job, "max_errors");
    if (v && !pj_body_rate(v, 0)) {
        pj_body_invalid(res, "invalid max_errors supplied (expected an "
                             "integer from 0 or a percentage string from "
                             "\"0%\" to \"100%\")");
    }

    e = pj_body_get(job, "env");
    if (e && e->u.object.len > 1) {
        keys = malloc(e->u.object.len * sizeof(const char *));
        if (keys == NULL) {
            rc = -1;
            goto done;
        }

        memcpy(keys, e->u.object.keys, e->u.object.len * sizeof(const char *));
        rc = pj_body_duplicates(keys, e->u.object.len);
        free(keys);

        if (rc) {
            pj_body_invalid(res, "invalid environment value (duplicate key)");
        }
    }

    v = pj_body_get(job, "file");
    if (v) {
        s = v->u.string;
        slen = strlen(s);

        if (slen >= 4 && strncmp(s, "raw:", 4) == 0) {
            if (slen - 4 > PJ_FILE_SIZE_MAX) {
                pj_body_invalid(res, "invalid file size "
                                     "(must be <= 100000 bytes)");
            }

        } else if (slen >= 7 && strncmp(s, "base64:", 7) == 0) {
            if (pj_body_base64(s + 7, slen - 7, &slen) != 0) {
                pj_body_invalid(res, "invalid file contents "
                                     "(couldn't decode base64 string)");
            }

            if (slen > PJ_FILE_SIZE_MAX) {
                pj_body_invalid(res, "invalid file size "
                                     "(must be <= 100000 bytes)");
            }

        } else {
            pj_body_invalid(res, "invalid file contents "
                                 "(expected 'base64:...' or 'raw:...')");
        }
    }

    res->nodes = n;
    rc = 0;

done:

    yajl_tree_free(job);

    return rc;
}


/*
 * The optional abort body: {"nodes": ["name", ...], "force": bool}, both
 * keys optional (an empty body is the caller's business).
 */

int
pj_abort_body_check(const unsigned char *p, size_t len, pj_body_check_t *res)
{
    int          rc;
    size_t       i, j;
    yajl_val     body, v;
    const char  *key;

    memset(res, 0, sizeof(pj_body_check_t));

    rc = pj_body_parse(p, len, &pj_json_job_body, res, &body);
    if (rc != 0) {
        return rc;
    }

    for (i = 0; i < body->u.object.len; i++) {
        key = body->u.object.keys[i];

        if (strcmp(key, "nodes") != 0 && strcmp(key, "force") != 0) {
            pj_body_invalid(res, "invalid key supplied");
        }

        for (j = 0; j < i; j++) {
            if (strcmp(key, body->u.object.keys[j]) == 0) {
                pj_body_invalid(res, "duplicate key supplied");
            }
        }
    }

    v = pj_body_get(body, "force");
    if (v && !YAJL_IS_TRUE(v) && !YAJL_IS_FALSE(v)) {
        pj_body_invalid(res, "invalid type supplied for force "
                             "(expected a boolean)");
    }

    v = pj_body_get(body, "nodes");

    if (v) {
        if (!YAJL_IS_ARRAY(v) || v->u.array.len == 0) {
            pj_body_invalid(res, "nodes must be a non-empty list of node "
                                 "names");
        }

        for (i = 0; i < v->u.array.len; i++) {
            if (!YAJL_IS_STRING(v->u.array.values[i])) {
                pj_body_invalid(res, "nodes must be a non-empty list of "
                                     "node names");
            }
        }

        rc = pj_body_names(v, res);
        if (rc != 0) {
            goto done;
        }

        res->nodes = v->u.array.len;
    }

    rc = 0;

done:

    yajl_tree_free(body);

    return rc;
}


int
pj_node_name_valid(const unsigned char *p, size_t len)
{
    size_t         i;
    unsigned char  c;

    if (len == 0 || len > PJ_NODE_NAME_MAX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        c = p[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':'
              || c == '-'))
        {
            return 0;
        }
    }

    return 1;
}


int
pj_job_id_valid(const unsigned char *p, size_t len)
{
    size_t  i;

    if (len != PJ_JOB_ID_LEN) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) {
            return 0;
        }
    }

    return 1;
}


/*
 * Bounds, then parses; an object or "invalid JSON".  yajl_tree_parse()
 * wants a NUL-terminated string: the bound refused any NUL inside.
 */

static int
pj_body_parse(const unsigned char *p, size_t len, const pj_json_limits_t *lim,
    pj_body_check_t *res, yajl_val *out)
{
    int       rc;
    char     *copy;
    yajl_val  v;

    *out = NULL;

    rc = pj_json_bound(p, len, lim, &res->at);

    if (rc != PJ_JSON_OK) {
        res->error = "invalid JSON";
        res->detail = pj_json_bound_strerror(rc);
        return 1;
    }

    copy = malloc(len + 1);
    if (copy == NULL) {
        return -1;
    }

    memcpy(copy, p, len);
    copy[len] = '\0';

    v = yajl_tree_parse(copy, NULL, 0);

    free(copy);

    if (v == NULL || !YAJL_IS_OBJECT(v)) {
        yajl_tree_free(v);
        res->error = "invalid JSON";
        res->detail = (v == NULL) ? "not a JSON document"
                                  : "not a JSON object";
        return 1;
    }

    *out = v;

    return 0;
}


static yajl_val
pj_body_get(yajl_val obj, const char *key)
{
    size_t  i;

    for (i = 0; i < obj->u.object.len; i++) {
        if (strcmp(obj->u.object.keys[i], key) == 0) {
            return obj->u.object.values[i];
        }
    }

    return NULL;
}


/*
 * A JSON integer (no fraction, no exponent: what PostgreSQL then stores
 * is what was checked) within min..max.
 */

static int
pj_body_integer(yajl_val v, long long min, long long max)
{
    long long  n;

    if (!YAJL_IS_INTEGER(v)) {
        return 0;
    }

    n = YAJL_GET_INTEGER(v);

    return n >= min && n <= max;
}


/*
 * A rate control value: a JSON integer from min to 2^31 - 1 (what
 * PostgreSQL stores), or a string of 1 to 3 digits and "%" whose
 * percentage is from min to 100.
 */

static int
pj_body_rate(yajl_val v, long long min)
{
    size_t       i, len;
    long long    n;
    const char  *s;

    if (YAJL_IS_NUMBER(v)) {
        return pj_body_integer(v, min, 2147483647LL);
    }

    if (!YAJL_IS_STRING(v)) {
        return 0;
    }

    s = v->u.string;
    len = strlen(s);

    if (len < 2 || len > 4 || s[len - 1] != '%') {
        return 0;
    }

    n = 0;

    for (i = 0; i < len - 1; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }

        n = n * 10 + (s[i] - '0');
    }

    return n >= min && n <= 100;
}


/* Each name one Chef allows, and no name twice. */

static int
pj_body_names(yajl_val list, pj_body_check_t *res)
{
    int           rc;
    size_t        i, n;
    const char   *name, **names;

    n = list->u.array.len;

    for (i = 0; i < n; i++) {
        name = list->u.array.values[i]->u.string;

        if (!pj_node_name_valid((const unsigned char *) name, strlen(name)))
        {
            res->error = "invalid node name supplied";
            return 1;
        }
    }

    if (n < 2) {
        return 0;
    }

    names = malloc(n * sizeof(const char *));
    if (names == NULL) {
        return -1;
    }

    for (i = 0; i < n; i++) {
        names[i] = list->u.array.values[i]->u.string;
    }

    rc = pj_body_duplicates(names, n);

    free(names);

    if (rc) {
        res->error = "duplicate node name supplied";
        return 1;
    }

    return 0;
}


/* Sorts names (n log n, whatever their number) and looks for neighbours. */

static int
pj_body_duplicates(const char **names, size_t n)
{
    size_t  i;

    qsort(names, n, sizeof(const char *), pj_body_cmp);

    for (i = 1; i < n; i++) {
        if (strcmp(names[i - 1], names[i]) == 0) {
            return 1;
        }
    }

    return 0;
}


static int
pj_body_cmp(const void *one, const void *two)
{
    return strcmp(*(const char * const *) one, *(const char * const *) two);
}


/*
 * What nginx's ngx_decode_base64() accepts, which the module accepted
 * before this check moved here: the standard alphabet up to the first
 * '=', not one character over a multiple of 4.  0 and the decoded length,
 * or -1.
 */

static int
pj_body_base64(const char *s, size_t len, size_t *decoded)
{
    size_t         i;
    unsigned char  c;

    for (i = 0; i < len; i++) {
        c = (unsigned char) s[i];

        if (c == '=') {
            break;
        }

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
              || (c >= '0' && c <= '9') || c == '+' || c == '/'))
        {
            return -1;
        }
    }

    if (i % 4 == 1) {
        return -1;
    }

    *decoded = i / 4 * 3 + (i % 4 == 0 ? 0 : i % 4 - 1);

    return 0;
}
