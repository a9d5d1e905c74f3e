
/*
 * Copyright (C) pushjobs developers
 */


/*
 * ngx_pushjobs_module: Chef Push Jobs inside the Chef server's nginx.
 *
 * This file holds the module definition, its directives and the per-worker
 * life cycle: a worker opens its PostgreSQL connections (a small query pool
 * and one LISTEN connection), registers itself as an "owner" of agent
 * channels, and runs the deadline sweeper.  Everything a worker holds in
 * memory (agent channels, feed subscribers) is rebuilt from PostgreSQL and
 * from reconnecting agents, so losing a worker loses nothing else.
 */


#include "ngx_pushjobs_module.h"

#include <openssl/pem.h>
#include <openssl/rand.h>


/*
 * How long an exiting worker waits for the PostgreSQL queries it has
 * queued or sent, before it closes their connections.
 */
#define NGX_PUSHJOBS_EXIT_TIME  5000


static void *ngx_pushjobs_create_main_conf(ngx_conf_t *cf);
static char *ngx_pushjobs_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_pushjobs_create_loc_conf(ngx_conf_t *cf);
static char *ngx_pushjobs_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_pushjobs_serve(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_pushjobs_key_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_pushjobs_postgres(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_pushjobs_conf_set_retention(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_pushjobs_load_key(ngx_conf_t *cf,
    ngx_pushjobs_main_conf_t *pmcf);
static ngx_int_t ngx_pushjobs_incarnation(ngx_conf_t *cf,
    ngx_pushjobs_main_conf_t *pmcf);
static void ngx_pushjobs_free_key(void *data);
static ngx_int_t ngx_pushjobs_init_process(ngx_cycle_t *cycle);
static void ngx_pushjobs_exiting(ngx_uint_t now);
static void ngx_pushjobs_exit_timeout(ngx_event_t *ev);
static void ngx_pushjobs_exit_process(ngx_cycle_t *cycle);


static ngx_conf_num_bounds_t  ngx_pushjobs_pool_bounds = {
    ngx_conf_check_num_bounds, 1, 64
};


static ngx_command_t  ngx_pushjobs_commands[] = {

    { ngx_string("pushjobs"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_pushjobs_serve,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("pushjobs_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_pushjobs_serve,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("pushjobs_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_pushjobs_serve,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("pushjobs_postgres"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_pushjobs_postgres,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, conninfo),
      NULL },

    { ngx_string("pushjobs_postgres_pool"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, pool_size),
      &ngx_pushjobs_pool_bounds },

    { ngx_string("pushjobs_key_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_pushjobs_key_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("pushjobs_chef_location"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, chef_location),
      NULL },

    { ngx_string("pushjobs_chef_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, chef_timeout),
      NULL },

    { ngx_string("pushjobs_chef_user"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, chef_user),
      NULL },

    { ngx_string("pushjobs_chef_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, chef_key_file),
      NULL },

    { ngx_string("pushjobs_server_name"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, server_name),
      NULL },

    { ngx_string("pushjobs_voting_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, voting_timeout),
      NULL },

    { ngx_string("pushjobs_default_run_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, default_run_timeout),
      NULL },

    { ngx_string("pushjobs_ping_interval"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, ping_interval),
      NULL },

    { ngx_string("pushjobs_ticket_lifetime"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, ticket_lifetime),
      NULL },

    { ngx_string("pushjobs_node_lost_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, node_lost_timeout),
      NULL },

    { ngx_string("pushjobs_sweep_interval"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, sweep_interval),
      NULL },

    { ngx_string("pushjobs_job_retention"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_pushjobs_conf_set_retention,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, job_retention),
      NULL },

    { ngx_string("pushjobs_feed_linger"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, feed_linger),
      NULL },

    { ngx_string("pushjobs_org_feed_retention"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, org_feed_retention),
      NULL },

    { ngx_string("pushjobs_clock_skew"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, clock_skew),
      NULL },

    { ngx_string("pushjobs_max_message_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, max_message_size),
      NULL },

    { ngx_string("pushjobs_max_body_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, max_body_size),
      NULL },

    { ngx_string("pushjobs_max_output_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, max_output_size),
      NULL },

    { ngx_string("pushjobs_live_output"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, live_output),
      NULL },

    { ngx_string("pushjobs_output_batch_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, output_batch_size),
      NULL },

    { ngx_string("pushjobs_ui"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, ui_dir),
      NULL },

    { ngx_string("pushjobs_link_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, link_ttl),
      NULL },

    { ngx_string("pushjobs_max_queued_output"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_pushjobs_main_conf_t, max_queued_output),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_pushjobs_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_pushjobs_create_main_conf,         /* create main configuration */
    ngx_pushjobs_init_main_conf,           /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_pushjobs_create_loc_conf,          /* create location configuration */
    ngx_pushjobs_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_pushjobs_module = {
    NGX_MODULE_V1,
    &ngx_pushjobs_module_ctx,              /* module context */
    ngx_pushjobs_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_pushjobs_init_process,             /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_pushjobs_exit_process,             /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* Set in init_process of a worker; the master never sets it. */
ngx_pushjobs_worker_t  *ngx_pushjobs_worker;


static void *
ngx_pushjobs_create_main_conf(ngx_conf_t *cf)
{
    ngx_pushjobs_main_conf_t  *pmcf;

    pmcf = ngx_pcalloc(cf->pool, sizeof(ngx_pushjobs_main_conf_t));
    if (pmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     pmcf->conninfo = { 0, NULL };
     *     pmcf->keys_zone = NULL;
     *     pmcf->chef_location = { 0, NULL };
     *     pmcf->server_name = { 0, NULL };
     *     pmcf->used = 0;
     */

    pmcf->pool_size = NGX_CONF_UNSET_UINT;
    pmcf->keys_ttl = NGX_CONF_UNSET;
    pmcf->keys_stale = NGX_CONF_UNSET;
    pmcf->keys_rate = NGX_CONF_UNSET_UINT;
    pmcf->chef_timeout = NGX_CONF_UNSET_MSEC;
    pmcf->voting_timeout = NGX_CONF_UNSET_MSEC;
    pmcf->default_run_timeout = NGX_CONF_UNSET;
    pmcf->ping_interval = NGX_CONF_UNSET_MSEC;
    pmcf->ticket_lifetime = NGX_CONF_UNSET;
    pmcf->node_lost_timeout = NGX_CONF_UNSET_MSEC;
    pmcf->sweep_interval = NGX_CONF_UNSET_MSEC;
    pmcf->job_retention = NGX_CONF_UNSET;
    pmcf->feed_linger = NGX_CONF_UNSET_MSEC;
    pmcf->org_feed_retention = NGX_CONF_UNSET;
    pmcf->clock_skew = NGX_CONF_UNSET;
    pmcf->max_message_size = NGX_CONF_UNSET_SIZE;
    pmcf->max_body_size = NGX_CONF_UNSET_SIZE;
    pmcf->max_output_size = NGX_CONF_UNSET_SIZE;
    pmcf->live_output = NGX_CONF_UNSET;
    pmcf->output_batch_size = NGX_CONF_UNSET_SIZE;
    pmcf->max_queued_output = NGX_CONF_UNSET_SIZE;
    pmcf->link_ttl = NGX_CONF_UNSET;

    return pmcf;
}


static char *
ngx_pushjobs_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_pushjobs_main_conf_t *pmcf = conf;

    ngx_conf_init_uint_value(pmcf->pool_size, 4);
    ngx_conf_init_value(pmcf->keys_ttl, 300);
    ngx_conf_init_value(pmcf->keys_stale, 3600);
    ngx_conf_init_uint_value(pmcf->keys_rate, 10000);
    ngx_conf_init_msec_value(pmcf->chef_timeout, 5000);
    ngx_conf_init_msec_value(pmcf->voting_timeout, 60000);
    ngx_conf_init_value(pmcf->default_run_timeout, 3600);
    ngx_conf_init_msec_value(pmcf->ping_interval, 10000);
    ngx_conf_init_value(pmcf->ticket_lifetime, 3600);
    ngx_conf_init_msec_value(pmcf->node_lost_timeout, 30000);
    ngx_conf_init_msec_value(pmcf->sweep_interval, 1000);
    ngx_conf_init_value(pmcf->job_retention, 0);
    ngx_conf_init_msec_value(pmcf->feed_linger, 5000);
    ngx_conf_init_value(pmcf->org_feed_retention, 60);
    ngx_conf_init_value(pmcf->clock_skew, 900);
    ngx_conf_init_size_value(pmcf->max_message_size, 1024 * 1024);
    ngx_conf_init_size_value(pmcf->max_body_size, 1000000);
    ngx_conf_init_size_value(pmcf->max_output_size, 256 * 1024);
    ngx_conf_init_value(pmcf->live_output, 1);
    ngx_conf_init_size_value(pmcf->output_batch_size, 1024 * 1024);
    ngx_conf_init_size_value(pmcf->max_queued_output, 4 * 1024 * 1024);
    ngx_conf_init_value(pmcf->link_ttl, 3600);

    if (pmcf->link_ttl < 60 || pmcf->link_ttl > 604800) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"pushjobs_link_ttl\" must be 60s to 7d");
        return NGX_CONF_ERROR;
    }

    if (ngx_pushjobs_ui_conf(cf, pmcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (pmcf->chef_location.len == 0) {
        ngx_str_set(&pmcf->chef_location, "/_pushjobs_chef");
    }

    if (pmcf->chef_user.len == 0) {
        ngx_str_set(&pmcf->chef_user, "pivotal");
    }

    if (pmcf->server_name.len == 0) {
        pmcf->server_name = cf->cycle->hostname;
    }

    if (ngx_pushjobs_incarnation(cf, pmcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* RFC 8446 §4.6.1: a ticket lives at most seven days */
    if (pmcf->ticket_lifetime > 7 * 24 * 3600) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"pushjobs_ticket_lifetime\" must be at most 7d");
        return NGX_CONF_ERROR;
    }

    if (pmcf->ping_interval < 1000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"pushjobs_ping_interval\" must be at least 1s");
        return NGX_CONF_ERROR;
    }

    if (pmcf->org_feed_retention < 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"pushjobs_org_feed_retention\" must be at "
                           "least 1s");
        return NGX_CONF_ERROR;
    }

    if (pmcf->sweep_interval < 100) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"pushjobs_sweep_interval\" must be at least "
                           "100ms");
        return NGX_CONF_ERROR;
    }

    if (pmcf->max_message_size < 4096) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"pushjobs_max_message_size\" must be at least "
                           "4k");
        return NGX_CONF_ERROR;
    }

    if (pmcf->used) {
        if (pmcf->conninfo.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"pushjobs\" requires \"pushjobs_postgres\"");
            return NGX_CONF_ERROR;
        }

        if (pmcf->keys_zone == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"pushjobs\" requires \"pushjobs_key_zone\"");
            return NGX_CONF_ERROR;
        }

        if (pmcf->chef_key_file.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"pushjobs\" requires \"pushjobs_chef_key\", "
                               "the Chef superuser's key, to read groups");
            return NGX_CONF_ERROR;
        }

        if (ngx_pushjobs_metrics_conf(cf, pmcf) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    if (pmcf->chef_key_file.len && ngx_pushjobs_load_key(cf, pmcf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * The 2.x server's incarnation_id: a random UUID v4, here one per
 * configuration load, so that every worker of a front end shows the same.
 */

static ngx_int_t
ngx_pushjobs_incarnation(ngx_conf_t *cf, ngx_pushjobs_main_conf_t *pmcf)
{
    u_char  r[16];

    if (RAND_bytes(r, sizeof(r)) != 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "pushjobs: RAND_bytes() failed");
        return NGX_ERROR;
    }

    r[6] = (r[6] & 0x0f) | 0x40;
    r[8] = (r[8] & 0x3f) | 0x80;

    pmcf->incarnation.data = ngx_pnalloc(cf->pool, 36);
    if (pmcf->incarnation.data == NULL) {
        return NGX_ERROR;
    }

    pmcf->incarnation.len = ngx_sprintf(pmcf->incarnation.data,
                                "%*xs-%*xs-%*xs-%*xs-%*xs",
                                (size_t) 4, r, (size_t) 2, r + 4,
                                (size_t) 2, r + 6, (size_t) 2, r + 8,
                                (size_t) 6, r + 10)
                            - pmcf->incarnation.data;

    return NGX_OK;
}


static ngx_int_t
ngx_pushjobs_load_key(ngx_conf_t *cf, ngx_pushjobs_main_conf_t *pmcf)
{
    BIO                 *bio;
    ngx_pool_cleanup_t  *cln;

    if (ngx_conf_full_name(cf->cycle, &pmcf->chef_key_file, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    bio = BIO_new_file((char *) pmcf->chef_key_file.data, "r");
    if (bio == NULL) {
        ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                      "pushjobs: cannot open \"%V\"", &pmcf->chef_key_file);
        return NGX_ERROR;
    }

    pmcf->chef_key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);

    BIO_free(bio);

    if (pmcf->chef_key == NULL) {
        ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                      "pushjobs: no private key in \"%V\"",
                      &pmcf->chef_key_file);
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        EVP_PKEY_free(pmcf->chef_key);
        return NGX_ERROR;
    }

    cln->handler = ngx_pushjobs_free_key;
    cln->data = pmcf->chef_key;

    return NGX_OK;
}


static void
ngx_pushjobs_free_key(void *data)
{
    EVP_PKEY_free(data);
}


static void *
ngx_pushjobs_create_loc_conf(ngx_conf_t *cf)
{
    ngx_pushjobs_loc_conf_t  *plcf;

    plcf = ngx_pcalloc(cf->pool, sizeof(ngx_pushjobs_loc_conf_t));
    if (plcf == NULL) {
        return NULL;
    }

    return plcf;
}


static char *
ngx_pushjobs_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    return NGX_CONF_OK;
}


static char *
ngx_pushjobs_serve(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_pushjobs_loc_conf_t *plcf = conf;

    ngx_http_core_loc_conf_t  *clcf;
    ngx_pushjobs_main_conf_t  *pmcf;

    if (plcf->serve) {
        return "is duplicate";
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_pushjobs_module);

    if (cmd->name.len == sizeof("pushjobs") - 1) {
        plcf->serve = NGX_PUSHJOBS_LOC_API;
        clcf->handler = ngx_pushjobs_api_handler;

    } else if (cmd->name.len == sizeof("pushjobs_metrics") - 1) {
        plcf->serve = NGX_PUSHJOBS_LOC_METRICS;
        clcf->handler = ngx_pushjobs_api_handler;

    } else {
        plcf->serve = NGX_PUSHJOBS_LOC_STATUS;
        clcf->handler = ngx_pushjobs_status_handler;
    }

    pmcf->used = 1;

    return NGX_CONF_OK;
}


static char *
ngx_pushjobs_postgres(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_pushjobs_main_conf_t *pmcf = conf;

    char                *err;
    ngx_str_t           *value;
    ngx_uint_t           numeric;
    PQconninfoOption    *opts, *o;
    const char          *host, *hostaddr;

    if (pmcf->conninfo.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    pmcf->conninfo = value[1];

    value[1].data[value[1].len] = '\0';

    err = NULL;
    opts = PQconninfoParse((char *) value[1].data, &err);

    if (opts == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid \"pushjobs_postgres\" conninfo: %s",
                           err ? err : "out of memory");
        if (err) {
            PQfreemem(err);
        }

        return NGX_CONF_ERROR;
    }

    host = NULL;
    hostaddr = NULL;

    for (o = opts; o->keyword; o++) {
        if (ngx_strcmp(o->keyword, "host") == 0) {
            host = o->val;

        } else if (ngx_strcmp(o->keyword, "hostaddr") == 0) {
            hostaddr = o->val;
        }
    }

    /*
     * libpq resolves host names with a blocking getaddrinfo(); a worker must
     * never block, so ask for an address or a socket directory.
     */

    numeric = 1;

    if (hostaddr == NULL && host != NULL && host[0] != '/') {
        for ( /* void */ ; *host; host++) {
            if ((*host < '0' || *host > '9') && *host != '.' && *host != ':'
                && *host != ',' && !(*host >= 'a' && *host <= 'f')
                && !(*host >= 'A' && *host <= 'F'))
            {
                numeric = 0;
                break;
            }
        }
    }

    PQconninfoFree(opts);

    if (!numeric) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"pushjobs_postgres\" names a host: resolving it "
                           "blocks the worker while connecting; use an "
                           "address, \"hostaddr\" or a socket directory");
    }

    return NGX_CONF_OK;
}


/*
 * pushjobs_job_retention off | time;  finished jobs older than that are
 * purged by the sweeper, with their nodes, output and events.  "off" (the
 * default) keeps them forever, as 2.x did.
 */

static char *
ngx_pushjobs_conf_set_retention(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_pushjobs_main_conf_t *pmcf = conf;

    ngx_str_t  *value;

    if (pmcf->job_retention != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
        pmcf->job_retention = 0;
        return NGX_CONF_OK;
    }

    pmcf->job_retention = ngx_parse_time(&value[1], 1);

    if (pmcf->job_retention == (time_t) NGX_ERROR
        || pmcf->job_retention < 60)
    {
        return "must be \"off\" or a time of at least 1m";
    }

    return NGX_CONF_OK;
}


/* pushjobs_key_zone name:size [ttl=time] [stale=time] [rate=Nr/s|Nr/m]; */

static char *
ngx_pushjobs_key_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_pushjobs_main_conf_t *pmcf = conf;

    u_char      *p;
    time_t       ttl;
    ssize_t      size;
    ngx_int_t    rate, scale;
    ngx_str_t   *value, name, s;
    ngx_uint_t   i;

    if (pmcf->keys_zone) {
        return "is duplicate";
    }

    value = cf->args->elts;

    p = (u_char *) ngx_strchr(value[1].data, ':');
    if (p == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone \"%V\", expected name:size",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data;
    name.len = p - value[1].data;

    s.data = p + 1;
    s.len = value[1].data + value[1].len - s.data;

    size = ngx_parse_size(&s);

    if (name.len == 0 || size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is too small", &value[1]);
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "ttl=", 4) == 0) {
            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            ttl = ngx_parse_time(&s, 1);
            if (ttl == (time_t) NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid ttl \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            pmcf->keys_ttl = ttl;
            continue;
        }

        /* how long past its ttl a key is used when Chef cannot be asked */

        if (ngx_strncmp(value[i].data, "stale=", 6) == 0) {
            s.data = value[i].data + 6;
            s.len = value[i].len - 6;

            ttl = ngx_parse_time(&s, 1);
            if (ttl == (time_t) NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid stale \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            pmcf->keys_stale = ttl;
            continue;
        }

        /*
         * how many keys a second (or minute) a worker asks of the Chef
         * server when PostgreSQL has a stale one that can stand in
         */

        if (ngx_strncmp(value[i].data, "rate=", 5) == 0) {
            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            if (s.len > 3
                && ngx_strncmp(s.data + s.len - 3, "r/s", 3) == 0)
            {
                scale = 1;

            } else if (s.len > 3
                       && ngx_strncmp(s.data + s.len - 3, "r/m", 3) == 0)
            {
                scale = 60;

            } else {
                scale = 0;
            }

            rate = scale ? ngx_atoi(s.data, s.len - 3) : NGX_ERROR;

            if (rate == NGX_ERROR || rate > 1000000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid rate \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            pmcf->keys_rate = rate * 1000 / scale;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    pmcf->keys_zone = ngx_shared_memory_add(cf, &name, size,
                                            &ngx_pushjobs_module);
    if (pmcf->keys_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (pmcf->keys_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate zone \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    pmcf->keys_zone->init = ngx_pushjobs_keys_init_zone;
    pmcf->keys_zone->data = (void *) 1;

    return NGX_CONF_OK;
}


/* The first request header of that name (case-insensitive), or NULL. */

ngx_table_elt_t *
ngx_pushjobs_header_in(ngx_http_request_t *r, u_char *name, size_t len)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, name, len) == 0)
        {
            return &h[i];
        }
    }
}


/*
 * /pushy/_status while this worker has no PostgreSQL connection: 503 at
 * once, for a load balancer to act on, with the 2.x body's keys (what
 * needs the database unknown) and what is down.  NGX_DECLINED when the
 * database is up: the 2.x answer, from the database.
 */

ngx_int_t
ngx_pushjobs_status_down(ngx_http_request_t *r)
{
    u_char                    *p;
    ngx_str_t                  body;
    ngx_pushjobs_main_conf_t  *pmcf;

    if (ngx_pushjobs_pg_ok()) {
        return NGX_DECLINED;
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_pushjobs_module);

    p = ngx_pnalloc(r->pool, sizeof("{\"status\":\"fail\",\"incarnation_id\":"
                                    "\"\",\"node_fsm_count\":null,"
                                    "\"job_processes\":null,"
                                    "\"down\":[\"postgresql\"]}")
                             + pmcf->incarnation.len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    body.data = p;
    body.len = ngx_sprintf(p, "{\"status\":\"fail\",\"incarnation_id\":"
                              "\"%V\",\"node_fsm_count\":null,"
                              "\"job_processes\":null,"
                              "\"down\":[\"postgresql\"]}",
                           &pmcf->incarnation)
               - p;

    return ngx_pushjobs_json_send(r, NGX_HTTP_SERVICE_UNAVAILABLE, &body);
}


void
ngx_pushjobs_init_timer(ngx_event_t *ev, ngx_event_handler_pt handler,
    void *data, ngx_log_t *log)
{
    ngx_memzero(ev, sizeof(ngx_event_t));

    ev->handler = handler;
    ev->data = data;
    ev->log = log;

    /* a worker that is shutting down must not wait for our timers */
    ev->cancelable = 1;
}


/* n bytes from 2n hex digits (PostgreSQL's hex text of a bytea) */

ngx_int_t
ngx_pushjobs_unhex(u_char *dst, u_char *hex, size_t n)
{
    size_t     i;
    ngx_int_t  hi, lo;

    for (i = 0; i < n; i++) {
        hi = ngx_hextoi(hex + 2 * i, 1);
        lo = ngx_hextoi(hex + 2 * i + 1, 1);

        if (hi == NGX_ERROR || lo == NGX_ERROR) {
            return NGX_ERROR;
        }

        dst[i] = (u_char) (hi << 4 | lo);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_pushjobs_init_process(ngx_cycle_t *cycle)
{
    u_char                    *p;
    ngx_time_t                *tp;
    ngx_pushjobs_worker_t     *w;
    ngx_pushjobs_main_conf_t  *pmcf;

    ngx_pushjobs_worker = NULL;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    pmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_pushjobs_module);

    if (pmcf == NULL || !pmcf->used) {
        return NGX_OK;
    }

    w = ngx_pcalloc(cycle->pool, sizeof(ngx_pushjobs_worker_t));
    if (w == NULL) {
        return NGX_ERROR;
    }

    w->cycle = cycle;
    w->log = cycle->log;
    w->pmcf = pmcf;

    /* a name no other worker of any front end has, now or later */

    p = ngx_pnalloc(cycle->pool, cycle->hostname.len + 2 * NGX_INT64_LEN + 3);
    if (p == NULL) {
        return NGX_ERROR;
    }

    /*
     * Not "ngx_timeofday()->msec": the macro is a cast, "->" binds first,
     * and that was pointer arithmetic (UBSan: an offset to a null pointer
     * whenever msec was 0).
     */
    tp = ngx_timeofday();

    w->owner.data = p;
    w->owner.len = ngx_sprintf(p, "%V:%P:%M", &cycle->hostname, ngx_pid,
                               (ngx_msec_t) tp->sec * 1000 + tp->msec)
                   - p;

    ngx_pushjobs_worker = w;

    ngx_pushjobs_metrics_init_process(w);

    /*
     * The parts, each on what comes before it: the store's batches, the
     * PostgreSQL pool they are written through, the websocket channels'
     * shared buffers, the event feeds (they read through the pool), the
     * registry of agent sessions.  exit_process releases them in the
     * reverse order: the sessions' close writes their nodes' presence
     * through the store and the pool.
     */

    if (ngx_pushjobs_store_init(w) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_pushjobs_pg_init(w, ngx_pushjobs_job_notify,
                             ngx_pushjobs_job_connected,
                             ngx_pushjobs_store_owner_regained,
                             ngx_pushjobs_exiting)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_pushjobs_ws_chan_init(w) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_pushjobs_feed_init(w);

    if (ngx_pushjobs_session_init(w) != NGX_OK) {
        return NGX_ERROR;
    }

    /*
     * The one timer that is not cancelable (STYLE.md: "every timer
     * cancelable"), and only while it is set: from the worker's exit until
     * its last PostgreSQL query has completed, at most
     * NGX_PUSHJOBS_EXIT_TIME.  nginx ends a worker that has only cancelable
     * timers left at once, whatever connections it still holds; without
     * this one, a request waiting on a query would be dropped with its
     * socket ("open socket left"), and the last writes (channels going
     * offline) would be lost.
     */

    ngx_pushjobs_init_timer(&w->exit_ev, ngx_pushjobs_exit_timeout, w,
                            w->log);
    w->exit_ev.cancelable = 0;

    ngx_pushjobs_init_timer(&w->sweep_ev, ngx_pushjobs_job_sweep, w, w->log);
    ngx_add_timer(&w->sweep_ev, pmcf->sweep_interval
                                + ngx_random() % pmcf->sweep_interval);

    ngx_pushjobs_init_timer(&w->owner_ev, ngx_pushjobs_store_owner_beat, w,
                            w->log);
    ngx_add_timer(&w->owner_ev, 1);

    ngx_log_error(NGX_LOG_INFO, cycle->log, 0,
                  "pushjobs: worker \"%V\" started", &w->owner);

    return NGX_OK;
}


/*
 * The worker exits (reload, graceful stop).  The first call, when nginx
 * closes the idle connections, stops notifications, closes the event feeds
 * and writes what agents did; the queries of requests in progress and those writes run on.  The
 * exit is held while any query is outstanding, and released as soon as
 * none is.
 */

static void
ngx_pushjobs_exiting(ngx_uint_t now)
{
    ngx_msec_int_t          left;
    ngx_pushjobs_worker_t  *w;

    w = ngx_pushjobs_worker;

    if (w == NULL || w->exit_done || !ngx_exiting) {
        return;
    }

    if (now) {
        ngx_pushjobs_exit_timeout(&w->exit_ev);
        return;
    }

    if (!w->exiting) {
        w->exiting = 1;
        w->exit_deadline = ngx_current_msec + NGX_PUSHJOBS_EXIT_TIME;

        ngx_pushjobs_pg_unlisten();
        ngx_pushjobs_store_flush();
        ngx_pushjobs_metrics_exiting(w);

        /*
         * nginx closes the idle connections, an HTTP/1.x feed's among them,
         * but an HTTP/2 feed is a stream of a connection that only gets a
         * GOAWAY: closing the feeds here ends their streams, and with them
         * the connection, before the worker goes.
         */
        ngx_pushjobs_feed_done(w);
    }

    if (!ngx_pushjobs_pg_busy()) {
        if (w->exit_ev.timer_set) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, w->log, 0,
                           "pushjobs: no query outstanding, exit released");
            ngx_del_timer(&w->exit_ev);
        }

        return;
    }

    if (!w->exit_ev.timer_set) {
        left = (ngx_msec_int_t) (w->exit_deadline - ngx_current_msec);
        ngx_add_timer(&w->exit_ev, left > 0 ? (ngx_msec_t) left : 1);
    }
}


/*
 * The exit's bound has passed (or worker_shutdown_timeout wants everything
 * closed now): the connections are closed cleanly, and what still waited
 * for PostgreSQL fails (a request gets 503).
 */

static void
ngx_pushjobs_exit_timeout(ngx_event_t *ev)
{
    ngx_pushjobs_worker_t  *w;

    w = ev->data;

    if (w->exit_done) {
        return;
    }

    w->exit_done = 1;

    if (w->exit_ev.timer_set) {
        ngx_del_timer(&w->exit_ev);
    }

    if (ngx_pushjobs_pg_busy()) {
        ngx_log_error(NGX_LOG_WARN, w->log, 0,
                      "pushjobs: %ui postgres queries still outstanding "
                      "as the worker exits, closing their connections",
                      ngx_pushjobs_pg_busy());
    }

    ngx_pushjobs_pg_stop();
}


static void
ngx_pushjobs_exit_process(ngx_cycle_t *cycle)
{
    ngx_pushjobs_worker_t  *w;

    w = ngx_pushjobs_worker;
    if (w == NULL) {
        return;
    }

    w->exit_done = 1;

    if (w->exit_ev.timer_set) {
        ngx_del_timer(&w->exit_ev);
    }

    if (w->sweep_ev.timer_set) {
        ngx_del_timer(&w->sweep_ev);
    }

    if (w->owner_ev.timer_set) {
        ngx_del_timer(&w->owner_ev);
    }

    /* the reverse of init_process */

    ngx_pushjobs_session_done(w);
    ngx_pushjobs_feed_done(w);
    ngx_pushjobs_ws_chan_done(w);
    ngx_pushjobs_pg_done(w);
    ngx_pushjobs_store_done(w);
    ngx_pushjobs_metrics_exit_process(w);

    ngx_pushjobs_worker = NULL;
}
