/*
 * Copyright (C) pushjobs developers
 */


/*
 * The validation of the REST API's request bodies (POST jobs, POST
 * jobs/ID/abort) as pure functions over a buffer: bounded by json_bound.h,
 * parsed by yajl, every field checked, so that what reaches PostgreSQL is
 * a document it stores without an error.  No nginx: the module calls them,
 * the fuzzers drive them.
 */


#ifndef PJ_JOB_BODY_H
#define PJ_JOB_BODY_H


#include <stddef.h>


/* Chef's node names: erchef's node_name regex, ^[.[:alnum:]_:-]+$ */
#define PJ_NODE_NAME_MAX       255

/* run_timeout: at least a second, at most a year */
#define PJ_RUN_TIMEOUT_MAX     31536000

/* the decoded size of "file" */
#define PJ_FILE_SIZE_MAX       100000


typedef struct {
    const char  *error;     /* the contract's message, {"error": error} */
    const char  *detail;    /* for the log: why the JSON was refused */
    size_t       at;        /* for the log: where */
    size_t       nodes;     /* a valid body: how many nodes it names */
} pj_body_check_t;


/*
 * 0: the body is valid; 1: it is not, res->error says why in the
 * contract's words; -1: out of memory.
 */

int pj_job_body_check(const unsigned char *p, size_t len,
    pj_body_check_t *res);
int pj_abort_body_check(const unsigned char *p, size_t len,
    pj_body_check_t *res);

/* 1 if the len bytes at p are a node name Chef allows. */

int pj_node_name_valid(const unsigned char *p, size_t len);

/* 1 if the len bytes at p are a job id: 32 lowercase hex digits. */

#define PJ_JOB_ID_LEN  32

int pj_job_id_valid(const unsigned char *p, size_t len);


#endif /* PJ_JOB_BODY_H */
