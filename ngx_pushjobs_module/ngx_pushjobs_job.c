
/*
 * Copyright (C) pushjobs developers
 */


/*
 * The job engine's worker side.  Job state lives in PostgreSQL and changes
 * only through the SQL functions; this file reacts to their NOTIFYs (send
 * commits, runs and aborts to the agents this worker holds), catches up
 * after the LISTEN connection comes back, and runs the deadline sweeper.
 */


#include "ngx_pushjobs_module.h"


#define NGX_PUSHJOBS_JOB_COMMIT   1
#define NGX_PUSHJOBS_JOB_RUN      2
#define NGX_PUSHJOBS_JOB_STOP     3


typedef struct {
    ngx_uint_t                  kind;
    ngx_str_t                   org;
    ngx_str_t                   job;
    ngx_str_t                   batch;
} ngx_pushjobs_dispatch_t;


static void ngx_pushjobs_job_dispatch(ngx_uint_t kind, ngx_str_t *org,
    ngx_str_t *job, ngx_str_t *batch);
static void ngx_pushjobs_job_dispatch_done(void *data, PGresult *res);
static void ngx_pushjobs_job_recent_done(void *data, PGresult *res);
static void ngx_pushjobs_job_sweep_done(void *data, PGresult *res);


static const char  *ngx_pushjobs_job_kinds[] = {
    NULL, "commit", "run", "stop"
};


/*
 * "commit ORG JOB", "run ORG JOB", "run ORG JOB BATCH" (the nodes a rollout
 * released in that batch), "stop ORG JOB", "stop ORG JOB STATUS
 * NODE_STATUS=COUNT..." (a job's end), "event ORG JOB",
 * "kick OWNER SESSION ORG NODE"
 */

void
ngx_pushjobs_job_notify(ngx_str_t *payload)
{
    u_char     *p;
    ngx_str_t   s, kind, org, job, owner, session, batch, status;
    ngx_uint_t  k;

    s = *payload;

    if (!ngx_pushjobs_token(&s, &kind)) {
        return;
    }

    if (kind.len == 4 && ngx_strncmp(kind.data, "kick", 4) == 0) {
        if (!ngx_pushjobs_token(&s, &owner)
            || !ngx_pushjobs_token(&s, &session)
            || !ngx_pushjobs_token(&s, &org)
            || s.len == 0)
        {
            return;
        }

        if (owner.len == ngx_pushjobs_worker->owner.len
            && ngx_strncmp(owner.data, ngx_pushjobs_worker->owner.data,
                           owner.len) == 0)
        {
            ngx_pushjobs_agent_kick(&session, &org, &s);
        }

        return;
    }

    if (!ngx_pushjobs_token(&s, &org) || !ngx_pushjobs_token(&s, &job))
    {
        return;
    }

    for (k = NGX_PUSHJOBS_JOB_COMMIT; k <= NGX_PUSHJOBS_JOB_STOP; k++) {
        if (kind.len == ngx_strlen(ngx_pushjobs_job_kinds[k])
            && ngx_strncmp(kind.data, ngx_pushjobs_job_kinds[k], kind.len)
               == 0)
        {
            break;
        }
    }

    if (k > NGX_PUSHJOBS_JOB_STOP) {
        if (kind.len == 5 && ngx_strncmp(kind.data, "event", 5) == 0) {
            ngx_pushjobs_feed_notify(&org, &job);
        }

        return;
    }

    if (k == NGX_PUSHJOBS_JOB_STOP) {
        /* a job's end carries its status and its nodes' (job_status_set()) */
        status = s;

        if (ngx_pushjobs_token(&status, &batch)) {
            ngx_pushjobs_metrics_job_ended(&batch, &status);
        }
    }

    if (ngx_pushjobs_agent_org_count(&org) == 0) {
        return;
    }

    ngx_str_null(&batch);

    if (k == NGX_PUSHJOBS_JOB_RUN && ngx_pushjobs_token(&s, &batch)) {
        if (batch.len > 9) {
            return;
        }

        for (p = batch.data; p < batch.data + batch.len; p++) {
            if (*p < '0' || *p > '9') {
                return;
            }
        }
    }

    ngx_pushjobs_job_dispatch(k, &org, &job, &batch);
}


/*
 * The LISTEN connection is (again) up.  Whatever was notified while it was
 * down is lost, so look at the jobs that may still need our agents.
 */

void
ngx_pushjobs_job_connected(void)
{
    ngx_pushjobs_feed_catch_up();

    if (ngx_pushjobs_worker && ngx_pushjobs_worker->link_key_id == 0) {
        ngx_pushjobs_link_key_load();
    }

    if (ngx_pushjobs_pg_query("SELECT org, job_id, kind"
                              " FROM pushjobs.recent_jobs()",
                              0, NULL, ngx_pushjobs_job_recent_done, NULL)
        == NULL)
    {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "pushjobs: cannot catch up on jobs");
    }
}


void
ngx_pushjobs_job_sweep(ngx_event_t *ev)
{
    u_char                    *p, buf[4][NGX_INT_T_LEN];
    ngx_str_t                  params[4];
    ngx_pushjobs_worker_t     *w;
    ngx_pushjobs_main_conf_t  *pmcf;

    w = ev->data;
    pmcf = w->pmcf;

    if (ngx_exiting || ngx_terminate) {
        return;
    }

    ngx_add_timer(ev, pmcf->sweep_interval);

    if (w->sweeping || !ngx_pushjobs_pg_ok()) {
        return;
    }

    p = ngx_sprintf(buf[0], "%M", pmcf->node_lost_timeout);
    params[0].data = buf[0];
    params[0].len = p - buf[0];

    ngx_pushjobs_owner_timeout_param(&params[1]);

    p = ngx_sprintf(buf[2], "%T", pmcf->job_retention);
    params[2].data = buf[2];
    params[2].len = p - buf[2];

    p = ngx_sprintf(buf[3], "%T", pmcf->org_feed_retention);
    params[3].data = buf[3];
    params[3].len = p - buf[3];

    if (ngx_pushjobs_pg_query("SELECT pushjobs.sweep($1, $2, $4), "
                              "pushjobs.purge($3)", 4, params,
                              ngx_pushjobs_job_sweep_done, w)
        != NULL)
    {
        w->sweeping = 1;
    }
}


static void
ngx_pushjobs_job_sweep_done(void *data, PGresult *res)
{
    ngx_pushjobs_worker_t *w = data;

    w->sweeping = 0;

    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK
        || PQntuples(res) != 1 || PQnfields(res) != 2)
    {
        return;
    }

    if (ngx_strcmp(PQgetvalue(res, 0, 0), "0") != 0) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "pushjobs: sweeper changed %s jobs",
                      PQgetvalue(res, 0, 0));
    }

    if (ngx_strcmp(PQgetvalue(res, 0, 1), "0") != 0) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "pushjobs: purged %s jobs past pushjobs_job_retention",
                      PQgetvalue(res, 0, 1));
    }
}


/*
 * Asks which nodes to message for a NOTIFY (or a catch-up): every node of
 * the job the kind concerns (dispatch()), or for a batch of a rollout only
 * the nodes released in it (dispatch_released()).
 */

static void
ngx_pushjobs_job_dispatch(ngx_uint_t kind, ngx_str_t *org, ngx_str_t *job,
    ngx_str_t *batch)
{
    u_char                   *p;
    ngx_str_t                 params[2];
    ngx_pushjobs_dispatch_t  *d;

    if (job->len != NGX_PUSHJOBS_JOB_ID_LEN) {
        return;
    }

    if (batch != NULL && batch->len == 0) {
        batch = NULL;
    }

    d = ngx_alloc(sizeof(ngx_pushjobs_dispatch_t) + org->len + job->len
                  + (batch ? batch->len : 0),
                  ngx_cycle->log);
    if (d == NULL) {
        return;
    }

    p = (u_char *) d + sizeof(ngx_pushjobs_dispatch_t);

    d->kind = kind;
    d->org.data = p;
    d->org.len = org->len;
    p = ngx_cpymem(p, org->data, org->len);
    d->job.data = p;
    d->job.len = job->len;
    p = ngx_cpymem(p, job->data, job->len);

    params[0] = d->job;

    if (batch) {
        d->batch.data = p;
        d->batch.len = batch->len;
        ngx_memcpy(p, batch->data, batch->len);

        params[1] = d->batch;

    } else {
        ngx_str_null(&d->batch);

        params[1].data = (u_char *) ngx_pushjobs_job_kinds[kind];
        params[1].len = ngx_strlen(ngx_pushjobs_job_kinds[kind]);
    }

    if (ngx_pushjobs_pg_query(batch ? "SELECT node_name, message"
                                      " FROM pushjobs.dispatch_released($1,"
                                      " $2)"
                                    : "SELECT node_name, message"
                                      " FROM pushjobs.dispatch($1, $2)",
                              2, params, ngx_pushjobs_job_dispatch_done, d)
        == NULL)
    {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "pushjobs: cannot dispatch job %V", job);
        ngx_free(d);
    }
}


/* rows: (node_name, message); for commit the first row has the message */

static void
ngx_pushjobs_job_dispatch_done(void *data, PGresult *res)
{
    ngx_pushjobs_dispatch_t *d = data;

    int                    row, nrows;
    char                  *message;
    ngx_str_t              node;
    ngx_pushjobs_msg_t    *msg;
    ngx_pushjobs_agent_t  *a;

    msg = NULL;

    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        goto done;
    }

    nrows = PQntuples(res);

    for (row = 0; row < nrows; row++) {

        if (PQgetisnull(res, row, 0)) {
            if (d->kind == NGX_PUSHJOBS_JOB_COMMIT && msg == NULL) {
                msg = ngx_pushjobs_msg_create(NGX_PUSHJOBS_WS_TEXT,
                                              (u_char *) PQgetvalue(res, row,
                                                                    1),
                                              PQgetlength(res, row, 1));
            }

            continue;
        }

        node.data = (u_char *) PQgetvalue(res, row, 0);
        node.len = PQgetlength(res, row, 0);

        a = ngx_pushjobs_agent_find(&d->org, &node);
        if (a == NULL) {
            continue;
        }

        switch (d->kind) {

        case NGX_PUSHJOBS_JOB_COMMIT:
            if (msg) {
                ngx_pushjobs_agent_commit(a, &d->job, msg);
            }
            break;

        case NGX_PUSHJOBS_JOB_RUN:
            ngx_pushjobs_agent_run(a, &d->job);
            break;

        default: /* NGX_PUSHJOBS_JOB_STOP */
            message = PQgetvalue(res, row, 1);
            ngx_pushjobs_agent_abort(a, &d->job,
                                     ngx_strcmp(message, "force") == 0);
            break;
        }
    }

done:

    if (msg) {
        ngx_pushjobs_msg_release(msg);
    }

    ngx_free(d);
}


/* rows: (org, job_id, kind) */

static void
ngx_pushjobs_job_recent_done(void *data, PGresult *res)
{
    int         row, nrows;
    ngx_str_t   org, job, kind;
    ngx_uint_t  k;

    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        return;
    }

    nrows = PQntuples(res);

    for (row = 0; row < nrows; row++) {
        org.data = (u_char *) PQgetvalue(res, row, 0);
        org.len = PQgetlength(res, row, 0);
        job.data = (u_char *) PQgetvalue(res, row, 1);
        job.len = PQgetlength(res, row, 1);
        kind.data = (u_char *) PQgetvalue(res, row, 2);
        kind.len = PQgetlength(res, row, 2);

        if (ngx_pushjobs_agent_org_count(&org) == 0) {
            continue;
        }

        for (k = NGX_PUSHJOBS_JOB_COMMIT; k <= NGX_PUSHJOBS_JOB_STOP; k++) {
            if (kind.len == ngx_strlen(ngx_pushjobs_job_kinds[k])
                && ngx_strncmp(kind.data, ngx_pushjobs_job_kinds[k],
                               kind.len) == 0)
            {
                ngx_pushjobs_job_dispatch(k, &org, &job, NULL);
                break;
            }
        }
    }
}


/* Takes the next space-separated token off the front of s: 0 when none. */

ngx_uint_t
ngx_pushjobs_token(ngx_str_t *s, ngx_str_t *token)
{
    u_char  *p, *last;

    p = s->data;
    last = s->data + s->len;

    while (p < last && *p == ' ') {
        p++;
    }

    token->data = p;

    while (p < last && *p != ' ') {
        p++;
    }

    token->len = p - token->data;

    if (p < last) {
        p++;
    }

    s->len = last - p;
    s->data = p;

    return token->len != 0;
}
