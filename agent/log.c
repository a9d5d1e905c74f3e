/*
 * pushjobs-agent: logging to stderr, one line per event, UTC timestamps;
 * or to syslog (--syslog), facility daemon.
 */

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "pja.h"


int  pja_log_level = PJA_LOG_INFO;

static const char  *pja_log_names[] = { "error", "warn", "info", "debug" };
static const int    pja_log_prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO,
                                       LOG_DEBUG };
static int          pja_log_to_syslog;


void
pja_log_syslog(void)
{
    openlog("pushjobs-agent", LOG_PID | LOG_NDELAY, LOG_DAEMON);
    pja_log_to_syslog = 1;
}


void
pja_log(int level, const char *fmt, ...)
{
    int              n, m;
    char             line[2048], ts[32];
    va_list          ap;
    struct tm        tm;
    struct timespec  now;

    if (level > pja_log_level) {
        return;
    }

    if (pja_log_to_syslog) {
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        syslog(pja_log_prio[level], "%s", line);
        return;
    }

    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);

    n = snprintf(line, sizeof(line), "%s.%03ldZ pushjobs-agent[%ld] %s: ",
                 ts, now.tv_nsec / 1000000, (long) getpid(),
                 pja_log_names[level]);

    va_start(ap, fmt);
    m = vsnprintf(line + n, sizeof(line) - (size_t) n - 1, fmt, ap);
    va_end(ap);

    if (m < 0) {
        m = 0;
    }

    n += m;
    if (n > (int) sizeof(line) - 2) {
        n = (int) sizeof(line) - 2;
    }

    line[n++] = '\n';

    /* One write per line, so lines of concurrent writers do not mix. */
    if (write(STDERR_FILENO, line, (size_t) n) < 0) {
        return;
    }
}
