/*
 * pushjobs-job-body [N [ROUNDS]]: what a job's POST costs nginx's CPU
 * before PostgreSQL is asked, by the body's size (bench/README, "A job's
 * POST, by its own nodes").
 *
 * Builds the body `bench/run` POSTs for N nodes (default 100000; names as
 * its load agents have them, sim0 ... simN-1), then times, best of ROUNDS
 * (default 5) runs each:
 *
 *   check     common/job_body.c's pj_job_body_check(), as the module calls
 *             it: the bounded pre-check, yajl's tree, every field, every
 *             node name's syntax, duplicates;
 *   sha1      the body's hash a Chef signature (protocol 1.0/1.1) covers,
 *             X-Ops-Content-Hash;
 *   sha256    the same for protocol 1.3.
 *
 * Prints one line per operation: the time for the whole body and per node.
 * The module's other costs of a POST (receiving the body over TLS, the RSA
 * check of the signature, sending the node list to PostgreSQL) are not
 * here.
 */

#define _POSIX_C_SOURCE  200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "json_bound.h"
#include "job_body.h"


static double
now_s(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}


static int
digest(const EVP_MD *md, const unsigned char *p, size_t len)
{
    unsigned char  out[EVP_MAX_MD_SIZE];
    unsigned int   n;

    return EVP_Digest(p, len, out, &n, md, NULL) == 1 ? 0 : -1;
}


static int
check(const unsigned char *p, size_t len)
{
    pj_body_check_t  res;

    if (pj_job_body_check(p, len, &res) != 0) {
        fprintf(stderr, "the body was refused: %s\n",
                res.error ? res.error : "(no message)");
        return -1;
    }

    return 0;
}


static int
sha1(const unsigned char *p, size_t len)
{
    return digest(EVP_sha1(), p, len);
}


static int
sha256(const unsigned char *p, size_t len)
{
    return digest(EVP_sha256(), p, len);
}


/* what is timed, each on the whole body, best of the rounds */

static const struct {
    const char  *name;
    int        (*run)(const unsigned char *p, size_t len);
} ops[] = {
    { "check", check },
    { "sha1", sha1 },
    { "sha256", sha256 },
};

#define NOPS  (sizeof(ops) / sizeof(ops[0]))


int
main(int argc, char **argv)
{
    int               k, rounds;
    long              i, nodes;
    char             *body, *p;
    size_t            cap, len;
    size_t            o;
    double            t, best[NOPS];

    nodes = argc > 1 ? strtol(argv[1], NULL, 10) : 100000;
    rounds = argc > 2 ? atoi(argv[2]) : 5;

    if (nodes < 1 || nodes > 10000000 || rounds < 1 || rounds > 1000) {
        fprintf(stderr, "usage: pushjobs-job-body [N [ROUNDS]]: N from 1 to "
                "10000000, ROUNDS from 1 to 1000\n");
        return 2;
    }

    cap = (size_t) nodes * 16 + 256;
    body = malloc(cap);
    if (body == NULL) {
        perror("malloc");
        return 1;
    }

    p = body;
    p += sprintf(p, "{\"command\":\"true\",\"run_timeout\":300,"
                 "\"quorum\":%ld,\"nodes\":[", nodes);
    for (i = 0; i < nodes; i++) {
        p += sprintf(p, "%s\"sim%ld\"", i ? "," : "", i);
    }
    p += sprintf(p, "]}");
    len = (size_t) (p - body);

    for (o = 0; o < NOPS; o++) {
        best[o] = 1e9;
    }

    for (k = 0; k < rounds; k++) {
        for (o = 0; o < NOPS; o++) {
            t = now_s();
            if (ops[o].run((unsigned char *) body, len) != 0) {
                return 1;
            }
            t = now_s() - t;
            best[o] = t < best[o] ? t : best[o];
        }
    }

    printf("a job of %ld nodes: a body of %zu bytes, best of %d\n",
           nodes, len, rounds);

    for (o = 0; o < NOPS; o++) {
        printf("%-7s %9.2f ms  %7.3f us/node\n", ops[o].name,
               best[o] * 1e3, best[o] * 1e6 / nodes);
    }

    free(body);
    return 0;
}
