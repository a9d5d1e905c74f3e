/*
 * pushjobs-agent: command line, signals and the poll loop.
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "pja.h"


#define PJA_MAX_CONFIGS  16


pja_agent_t  pja_agent;

static int                    pja_sig_pipe[2] = { -1, -1 };
static volatile sig_atomic_t  pja_got_term;
static volatile sig_atomic_t  pja_got_chld;


static void
usage(FILE *f)
{
    fprintf(f,
        "usage: pushjobs-agent [-c client.rb]... [--spool DIR] [-v]\n"
        "       pushjobs-agent -c client.rb --sign-request METHOD PATH "
        "[BODYFILE]\n"
        "\n"
        "  -c, --config FILE   Chef config file (repeatable; later files win)\n"
        "                      default: each of /etc/chef/client.rb,\n"
        "                      /etc/chef/chef-push-client.rb and\n"
        "                      /etc/chef/push-jobs-client.rb that exists\n"
        "  --spool DIR         final report spool (default %s)\n"
        "  -v, --verbose       debug logging\n"
        "  --sign-request      print Chef v1.3 signed headers and exit\n"
        "  -V, --version       print the version and exit\n",
        PJA_DEFAULT_SPOOL);
}


static void
on_signal(int sig)
{
    int  saved = errno;
    char c = (char) sig;

    if (sig == SIGCHLD) {
        pja_got_chld = 1;
    } else {
        pja_got_term = 1;
    }

    if (write(pja_sig_pipe[1], &c, 1) < 0) {
        /* the pipe is full: a wake-up is pending anyway */
    }

    errno = saved;
}


static int
setup_signals(void)
{
    struct sigaction  sa;

    if (pja_pipe(pja_sig_pipe, 1) != 0) {
        pja_log(PJA_LOG_ERR, "pipe(): %s", strerror(errno));
        return -1;
    }

    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;

    if (sigaction(SIGTERM, &sa, NULL) != 0
        || sigaction(SIGINT, &sa, NULL) != 0
        || sigaction(SIGCHLD, &sa, NULL) != 0)
    {
        pja_log(PJA_LOG_ERR, "sigaction(): %s", strerror(errno));
        return -1;
    }

    sa.sa_handler = SIG_IGN;
    sa.sa_flags = 0;
    sigaction(SIGPIPE, &sa, NULL);

    return 0;
}


static int
sign_request(pja_conf_t *cf, const char *method, const char *path,
    const char *bodyfile)
{
    int        rc;
    FILE      *f;
    char       chunk[8192];
    size_t     n;
    EVP_PKEY  *key;
    pja_buf_t  body = { NULL, 0, 0 }, out = { NULL, 0, 0 };

    if (bodyfile) {
        f = fopen(bodyfile, "r");
        if (f == NULL) {
            pja_log(PJA_LOG_ERR, "cannot open %s: %s", bodyfile,
                    strerror(errno));
            return 1;
        }

        while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
            if (pja_buf_add(&body, chunk, n) != 0) {
                fclose(f);
                return 1;
            }
        }

        fclose(f);
    }

    key = pja_sign_load_key(cf->client_key);
    if (key == NULL) {
        pja_buf_free(&body);
        return 1;
    }

    rc = pja_sign_headers(cf->node_name, key, method, path, body.data,
                          body.len, "\n", &out);
    EVP_PKEY_free(key);
    pja_buf_free(&body);

    if (rc != 0) {
        return 1;
    }

    fwrite(out.data, 1, out.len, stdout);
    pja_buf_free(&out);
    return fflush(stdout) == 0 ? 0 : 1;
}


static int64_t
backoff_delay(int *attempt)
{
    int64_t  cap;

    cap = (int64_t) 1000 << (*attempt < 6 ? *attempt : 6);
    if (cap > PJA_BACKOFF_MAX * 1000) {
        cap = PJA_BACKOFF_MAX * 1000;
    }

    if (*attempt < 16) {
        (*attempt)++;
    }

    /* Full jitter, with a floor so a flapping server is not hammered. */
    return 100 + (int64_t) (pja_random_u32() % (uint32_t) cap);
}


static void
channel_ended(pja_agent_t *a, int *attempt, int64_t *reconnect_at)
{
    int64_t  now, delay;
    int      stable;

    now = pja_now_ms();
    stable = a->ws.state >= PJA_WS_OPEN
             && (a->welcomed || now - a->ws.opened_at >= PJA_STABLE_CHANNEL);

    /* Two agents with one node name replace each other: slow down. */
    if (stable && a->ws.close_code != 4000) {
        *attempt = 0;
    }

    if (a->ws.close_code == 4000) {
        pja_log(PJA_LOG_WARN, "channel replaced by a newer channel of node "
                "%s (another agent with this node name?)", a->conf.node_name);
    }

    pja_ws_reset(&a->ws);
    a->welcomed = 0;

    delay = backoff_delay(attempt);
    *reconnect_at = now + delay;

    pja_log(PJA_LOG_INFO, "reconnecting in %.1f s", (double) delay / 1000);
}


static void
check_child(pja_agent_t *a)
{
    int  status;

    if (pja_job_reap(&a->job, &status)) {
        pja_proto_job_exited(a, status);
    }
}


static int
run(pja_agent_t *a)
{
    int            attempt, n, i, timeout, rc, ws_i, out_i, err_i;
    char           drain[64];
    int64_t        now, reconnect_at, deadline, stop_deadline, silence;
    struct pollfd  pfd[4];

    attempt = 0;
    reconnect_at = 0;
    stop_deadline = 0;

    for ( ;; ) {
        now = pja_now_ms();

        if (pja_got_term && !a->stopping) {
            pja_log(PJA_LOG_INFO, "stopping");
            a->stopping = 1;
            stop_deadline = now + 3000;

            if (a->job.state == PJA_JOB_RUNNING) {
                pja_job_abort(&a->job, 0);
            }

            if (a->ws.state == PJA_WS_OPEN) {
                pja_ws_close(&a->ws, 1000);
            } else {
                pja_ws_reset(&a->ws);
            }
        }

        if (a->stopping && (a->ws.fd == -1 || now >= stop_deadline)) {
            pja_ws_reset(&a->ws);
            return 0;
        }

        pja_job_timers(&a->job, now);

        /* Channel timers. */
        if (a->ws.fd != -1) {
            silence = (int64_t) 3 * 1000 * (a->ping_interval
                                            ? a->ping_interval
                                            : PJA_DEFAULT_PING);

            if (a->ws.state < PJA_WS_OPEN
                && now - a->ws.started_at >= PJA_CONNECT_TIMEOUT)
            {
                pja_log(PJA_LOG_ERR, "channel: no connection after %d s",
                        PJA_CONNECT_TIMEOUT / 1000);
                channel_ended(a, &attempt, &reconnect_at);

            } else if (a->ws.state == PJA_WS_OPEN
                       && now - a->ws.last_rx >= silence)
            {
                pja_log(PJA_LOG_ERR, "channel: silent for %lld s, dead",
                        (long long) (silence / 1000));
                channel_ended(a, &attempt, &reconnect_at);

            } else if (a->ws.state == PJA_WS_CLOSING && !a->stopping
                       && now >= a->ws.close_deadline)
            {
                channel_ended(a, &attempt, &reconnect_at);
            }
        }

        if (a->ws.fd == -1 && !a->stopping && now >= reconnect_at) {
            if (pja_ws_connect(&a->ws, &a->conf) != 0) {
                channel_ended(a, &attempt, &reconnect_at);
            }
        }

        /* Poll set. */
        n = 0;
        pfd[n].fd = pja_sig_pipe[0];
        pfd[n].events = POLLIN;
        n++;

        ws_i = out_i = err_i = -1;

        if (a->ws.fd != -1) {
            ws_i = n;
            pfd[n].fd = a->ws.fd;
            pfd[n].events = pja_ws_events(&a->ws);
            n++;
        }

        if (a->job.out_fd != -1) {
            out_i = n;
            pfd[n].fd = a->job.out_fd;
            pfd[n].events = POLLIN;
            n++;
        }

        if (a->job.err_fd != -1) {
            err_i = n;
            pfd[n].fd = a->job.err_fd;
            pfd[n].events = POLLIN;
            n++;
        }

        for (i = 0; i < n; i++) {
            pfd[i].revents = 0;
        }

        /* A one second tick covers every timer; none needs finer grain. */
        deadline = now + 1000;
        if (a->ws.fd == -1 && !a->stopping && reconnect_at < deadline) {
            deadline = reconnect_at;
        }
        timeout = deadline > now ? (int) (deadline - now) : 0;

        rc = poll(pfd, (nfds_t) n, timeout);
        if (rc < 0) {
            if (errno == EINTR) {
                continue;
            }
            pja_log(PJA_LOG_ERR, "poll(): %s", strerror(errno));
            return 1;
        }

        if (pfd[0].revents & POLLIN) {
            while (read(pja_sig_pipe[0], drain, sizeof(drain)) > 0) {
                /* void */
            }
        }

        if (out_i != -1 && pfd[out_i].revents) {
            (void) pja_job_read(&a->job, pfd[out_i].fd);
        }

        if (err_i != -1 && pfd[err_i].revents) {
            (void) pja_job_read(&a->job, pfd[err_i].fd);
        }

        if (pja_got_chld) {
            pja_got_chld = 0;
            check_child(a);
        }

        if (ws_i != -1 && pfd[ws_i].revents && a->ws.fd == pfd[ws_i].fd) {
            if (pja_ws_handle(&a->ws, &a->conf, pfd[ws_i].revents) != 0) {
                if (a->stopping) {
                    pja_ws_reset(&a->ws);
                } else {
                    channel_ended(a, &attempt, &reconnect_at);
                }
            }
        }
    }
}


/*
 * Without -c: every one of these that exists, in this order, so a
 * push-jobs file can add the whitelist to the node's client.rb.
 */

static int
default_configs(const char **conf)
{
    static const char  *files[] = {
        "/etc/chef/client.rb",
        "/etc/chef/chef-push-client.rb",
        "/etc/chef/push-jobs-client.rb",
        NULL
    };

    int  i, n;

    n = 0;

    for (i = 0; files[i]; i++) {
        if (access(files[i], R_OK) == 0) {
            conf[n++] = files[i];
        }
    }

    if (n == 0) {
        pja_log(PJA_LOG_ERR, "no config: none of /etc/chef/client.rb, "
                "chef-push-client.rb, push-jobs-client.rb is readable");
    }

    return n;
}


int
main(int argc, char **argv)
{
    int          i, nconf, fd, rc;
    const char  *conf[PJA_MAX_CONFIGS], *spool, *sign[3];
    pja_agent_t *a = &pja_agent;

    nconf = 0;
    spool = PJA_DEFAULT_SPOOL;
    sign[0] = sign[1] = sign[2] = NULL;

    /* Make sure 0, 1 and 2 are open, so no pipe lands on them. */
    while ((fd = open("/dev/null", O_RDWR)) != -1 && fd <= 2) {
        /* void */
    }
    if (fd > 2) {
        close(fd);
    }

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
            if (++i == argc) {
                usage(stderr);
                return 2;
            }
            if (nconf == PJA_MAX_CONFIGS) {
                fprintf(stderr, "pushjobs-agent: too many -c\n");
                return 2;
            }
            conf[nconf++] = argv[i];

        } else if (strcmp(argv[i], "--spool") == 0) {
            if (++i == argc) {
                usage(stderr);
                return 2;
            }
            spool = argv[i];

        } else if (strcmp(argv[i], "-v") == 0
                   || strcmp(argv[i], "--verbose") == 0)
        {
            pja_log_level = PJA_LOG_DEBUG;

        } else if (strcmp(argv[i], "--sign-request") == 0) {
            if (i + 2 >= argc) {
                usage(stderr);
                return 2;
            }
            sign[0] = argv[++i];
            sign[1] = argv[++i];
            if (i + 1 < argc && argv[i + 1][0] != '-') {
                sign[2] = argv[++i];
            }

        } else if (strcmp(argv[i], "-V") == 0
                   || strcmp(argv[i], "--version") == 0)
        {
            printf("%s\n", PJA_AGENT);
            return 0;

        } else if (strcmp(argv[i], "-h") == 0
                   || strcmp(argv[i], "--help") == 0)
        {
            usage(stdout);
            return 0;

        } else {
            fprintf(stderr, "pushjobs-agent: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }

    if (nconf == 0) {
        nconf = default_configs(conf);
        if (nconf == 0) {
            return 1;
        }
    }

    memset(a, 0, sizeof(pja_agent_t));
    a->conf.ssl_verify = 1;
    a->job.out_fd = -1;
    a->job.err_fd = -1;
    a->ws.fd = -1;
    a->ping_interval = PJA_DEFAULT_PING;
    a->max_message_size = PJA_DEFAULT_MAX_MESSAGE;

    for (i = 0; i < nconf; i++) {
        if (pja_conf_load(&a->conf, conf[i]) != 0) {
            return 1;
        }
    }

    if (pja_conf_finish(&a->conf) != 0) {
        return 1;
    }

    if (sign[0]) {
        rc = sign_request(&a->conf, sign[0], sign[1], sign[2]);
        pja_conf_free(&a->conf);
        return rc;
    }

    pja_log(PJA_LOG_INFO, "%s starting: node %s, org %s, %zu whitelist "
            "entries", PJA_AGENT, a->conf.node_name, a->conf.org,
            a->conf.nwl);

    umask(077);

    if (pja_spool_init(spool) != 0) {
        return 1;
    }

    if (setup_signals() != 0) {
        return 1;
    }

    if (pja_ws_init_ctx(&a->ws, &a->conf) != 0) {
        return 1;
    }

    rc = run(a);

    if (a->job.state == PJA_JOB_RUNNING) {
        pja_log(PJA_LOG_WARN, "job %s: left running in process group %ld "
                "(sent SIGTERM)", a->job.id, (long) a->job.pid);
    }

    if (a->ws.ctx) {
        SSL_CTX_free(a->ws.ctx);
    }

    pja_log(PJA_LOG_INFO, "stopped");
    return rc;
}
