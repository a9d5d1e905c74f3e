/*
 * Copyright (C) pushjobs developers
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_fuzz.h"


/*
 * nginx.c defines these; its objects are left out of the harnesses (it has
 * main()), and nothing a harness runs uses them.
 */

ngx_module_t  ngx_core_module;


ngx_pid_t
ngx_exec_new_binary(ngx_cycle_t *cycle, char *const *argv)
{
    return NGX_INVALID_PID;
}


char **
ngx_set_environment(ngx_cycle_t *cycle, ngx_uint_t *last)
{
    return NULL;
}


ngx_cpuset_t *
ngx_get_cpu_affinity(ngx_uint_t n)
{
    return NULL;
}


static void
ngx_fuzz_discard(ngx_log_t *log, ngx_uint_t level, u_char *buf, size_t len)
{
    /* formatted, and dropped: a log line costs no write(2) */
}


ngx_log_t *
ngx_fuzz_init(void)
{
    static ngx_log_t         log;
    static ngx_open_file_t   file;
    static ngx_cycle_t       cycle;
    static ngx_uint_t        done;

    if (done) {
        return &log;
    }

    done = 1;

    ngx_pagesize = getpagesize();
    for (ngx_pagesize_shift = 0;
         (ngx_uint_t) (1 << ngx_pagesize_shift) < ngx_pagesize;
         ngx_pagesize_shift++)
    {
        /* void */
    }

    ngx_cacheline_size = NGX_CPU_CACHE_LINE;

    ngx_time_init();

    file.fd = ngx_stderr;

    log.file = &file;
    log.log_level = NGX_LOG_DEBUG | NGX_LOG_DEBUG_ALL;
    log.writer = ngx_fuzz_discard;

    cycle.log = &log;
    cycle.pool = ngx_create_pool(NGX_CYCLE_POOL_SIZE, &log);
    ngx_cycle = &cycle;

    return &log;
}
