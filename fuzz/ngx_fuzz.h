/*
 * Copyright (C) pushjobs developers
 */


/*
 * What the module's fuzz harnesses share: a log that formats every message
 * (debug included) and throws it away, a cycle for the code that logs to
 * ngx_cycle->log, nginx's clock, and the globals of nginx.c, which the
 * harnesses are linked without (it has main()).
 */


#ifndef _NGX_FUZZ_H_INCLUDED_
#define _NGX_FUZZ_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


ngx_log_t *ngx_fuzz_init(void);


/* A deterministic split of an input into chunks, driven by its first byte. */

typedef struct {
    uint32_t                    state;
} ngx_fuzz_rand_t;


static ngx_inline size_t
ngx_fuzz_chunk(ngx_fuzz_rand_t *rnd, size_t left)
{
    size_t  n;

    rnd->state = rnd->state * 1103515245 + 12345;
    n = 1 + (rnd->state >> 16) % 64;

    /* one chunk in four takes everything that is left */

    if (((rnd->state >> 8) & 3) == 0 || n > left) {
        n = left;
    }

    return n;
}


#endif /* _NGX_FUZZ_H_INCLUDED_ */
