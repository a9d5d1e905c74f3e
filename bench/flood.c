/*
 * pushjobs-flood KBPS SECONDS: a job's command for `bench/run stream`.
 * Writes KBPS lines of 1 KB a second to stdout for SECONDS, each line
 * starting with the wall clock time it was written at (T=<epoch ms>), so
 * that a feed reader can tell how late each line reached it.  The lines
 * due are written together every 50 ms, in one write.
 *
 * In C, and batched, because the load generator must not be what the
 * benchmark measures: as a Perl script waking for every line, a hundred of
 * these took more of this 2-core machine than nginx and PostgreSQL
 * together, and a hundred Perl interpreters starting at once held the
 * machine for the job's first two seconds.
 */

#define _POSIX_C_SOURCE  200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


#define LINE   1024
#define TICK   50            /* ms */


static double
now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}


int
main(int argc, char **argv)
{
    long      kbps, secs, lines, sent, due, i;
    char     *buf, *p;
    size_t    len, off;
    ssize_t   n;
    double    start, t;
    struct timespec  tick = { 0, TICK * 1000000L };

    kbps = argc > 1 ? atol(argv[1]) : 100;
    secs = argc > 2 ? atol(argv[2]) : 30;

    if (kbps <= 0 || kbps > 100000 || secs <= 0 || secs > 86400) {
        fprintf(stderr, "usage: pushjobs-flood KBPS SECONDS\n");
        return 2;
    }

    lines = kbps * secs;

    /* at most a second of lines per write */
    buf = malloc((size_t) kbps * LINE);
    if (buf == NULL) {
        return 1;
    }

    start = now_ms();
    sent = 0;

    while (sent < lines) {
        t = now_ms();
        due = (long) ((t - start) * kbps / 1000) + 1;

        if (due > lines) {
            due = lines;
        }

        if (due - sent > kbps) {
            due = sent + kbps;
        }

        if (due > sent) {
            p = buf;

            for (i = sent; i < due; i++) {
                /* "T=" 13 digits " ", the pad, "\n": LINE bytes */
                p += snprintf(p, 17, "T=%013lld ", (long long) t);
                memset(p, 'x', LINE - 17);
                p += LINE - 17;
                *p++ = '\n';
            }

            len = (size_t) (p - buf);

            for (off = 0; off < len; off += (size_t) n) {
                n = write(STDOUT_FILENO, buf + off, len - off);

                if (n < 0) {
                    if (errno == EINTR) {
                        n = 0;
                        continue;
                    }
                    return 1;
                }
            }

            sent = due;
        }

        if (sent < lines) {
            nanosleep(&tick, NULL);
        }
    }

    free(buf);
    return 0;
}
