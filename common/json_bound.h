/*
 * Copyright (C) pushjobs developers
 */


/*
 * A bounded pre-check of JSON text, shared by the nginx module and the
 * agent: one pass over a buffer, before any parser builds a tree, that
 * refuses nesting deeper than a limit, more values than a limit, and
 * strings that PostgreSQL text (or a C string) cannot hold.  It is not a
 * grammar check: yajl does that next, on text that can no longer make it
 * recurse without bound or allocate without bound.
 *
 * Plain C99: no nginx, no yajl, no allocation.
 */


#ifndef PJ_JSON_BOUND_H
#define PJ_JSON_BOUND_H


#include <stddef.h>


typedef struct {
    size_t  depth;      /* arrays and objects open at once */
    size_t  values;     /* arrays, objects, strings (keys too), literals */
} pj_json_limits_t;


#define PJ_JSON_OK             0
#define PJ_JSON_TOO_DEEP       1   /* nesting over the depth limit */
#define PJ_JSON_TOO_MANY       2   /* more values than the limit */
#define PJ_JSON_BAD_UTF8       3   /* a string is not valid UTF-8 */
#define PJ_JSON_BAD_ESCAPE     4   /* a lone surrogate, \u0000, a bad \ */
#define PJ_JSON_CONTROL        5   /* a control character in a string */
#define PJ_JSON_NUL            6   /* a NUL byte anywhere */
#define PJ_JSON_UNBALANCED     7   /* a ] or } without its [ or {, or an
                                      unterminated string or container */


/* The limits of each kind of document; json_bound.c says why. */

extern const pj_json_limits_t  pj_json_job_body;
extern const pj_json_limits_t  pj_json_agent_message;
extern const pj_json_limits_t  pj_json_server_message;
extern const pj_json_limits_t  pj_json_chef_response;


/*
 * Checks the len bytes at p (no NUL needed) against lim.  Returns
 * PJ_JSON_OK or one of the codes above; when at is not NULL, *at is the
 * offset of the byte where the check stopped.
 */

int pj_json_bound(const unsigned char *p, size_t len,
    const pj_json_limits_t *lim, size_t *at);

/* A short English text for a code, for logs. */

const char *pj_json_bound_strerror(int rc);


#endif /* PJ_JSON_BOUND_H */
