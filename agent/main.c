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
static volatile sig_atomic_t  pja_got_hup;


/* Command line flags that set a config file setting. */

typedef struct {
    const char            *flag;
    const char            *setting;
    const char            *arg;
    const char            *help;
} pja_flag_t;

static const pja_flag_t  pja_flags[] = {
    { "--node-name", "node_name", "NAME", "the node's Chef client name" },
    { "--server-url", "chef_server_url", "URL",
      "https://HOST[:PORT]/organizations/ORG" },
    { "--client-key", "client_key", "FILE", "the node's client key (PEM)" },
    { "--ssl-ca-file", "ssl_ca_file", "FILE",
      "CA bundle for the server's certificate" },
    { "--trusted-certs-dir", "trusted_certs_dir", "DIR",
      "extra trusted certificates (every file)" },
    { "--ssl-verify-mode", "ssl_verify_mode", "MODE",
      "verify_peer (default) or verify_none" },
    { "--file-dir", "file_dir", "DIR", "where job files are written" },
    { "--file-cache-path", "file_cache_path", "DIR",
      "Chef's cache (for lock: true)" },
    { "--lockfile", "lockfile", "FILE", "Chef's run lock (for lock: true)" },
    { "--allowed-user", "allowed_users", "USER",
      "a user jobs may run as (repeatable)" },
    { "--allowed-env", "allowed_overwritable_env_vars", "NAME",
      "a job env name passed as is (repeatable)" },
    { "--kill-grace", "kill_grace_period", "SECONDS",
      "SIGTERM to SIGKILL of a job's group (10)" },
    { "--max-output-size", "max_output_size", "BYTES",
      "captured bytes per stream (262144)" },
    { "--whitelist", "whitelist", "KEY=CMD",
      "add a whitelist entry (repeatable)" },
    { "--whitelist-regex", "whitelist_regex", "RE=CMD",
      "add a regexp whitelist entry (repeatable)" },
    { "--transport", "pushjobs_transport", "MODE",
      "auto (default), websocket or long_poll" },
    { NULL, NULL, NULL, NULL }
};


static void
usage(FILE *f)
{
    const pja_flag_t  *fl;

    fprintf(f,
        "usage: pushjobs-agent [-c FILE]... [OPTIONS]\n"
        "       pushjobs-agent [-c FILE]... --check-config\n"
        "       pushjobs-agent -c FILE --sign-request METHOD PATH "
        "[BODYFILE]\n"
        "\n"
        "  -c, --config FILE        Chef config file (repeatable; later "
        "files win)\n"
        "                           default: each of /etc/chef/client.rb,\n"
        "                           /etc/chef/chef-push-client.rb and\n"
        "                           /etc/chef/push-jobs-client.rb that "
        "exists\n"
        "  --spool DIR              final report spool (default %s)\n"
        "  --user NAME              started as root: the user of the network\n"
        "                           process (default pushjobs-agent, else\n"
        "                           nobody)\n"
        "  --long-poll              use the long-poll channel, not a "
        "websocket\n"
        "                           (--transport long_poll)\n"
        "  --syslog                 log to syslog (daemon facility), not "
        "stderr\n"
        "  -v, --verbose            debug logging\n"
        "  --check-config           print the effective configuration and "
        "exit\n"
        "  --sign-request           print Chef v1.3 signed headers and exit\n"
        "  -V, --version            print the version and exit\n"
        "  -h, --help               this text\n"
        "\n"
        "Settings (override the config files; also --flag=VALUE):\n",
        PJA_DEFAULT_SPOOL);

    for (fl = pja_flags; fl->flag; fl++) {
        fprintf(f, "  %s %-*s %s\n", fl->flag,
                (int) (23 - strlen(fl->flag)), fl->arg, fl->help);
    }

    fprintf(f,
        "\n"
        "Signals: TERM/INT stop (a running job's process group gets SIGTERM,\n"
        "SIGKILL after the grace period, its report is spooled); a second\n"
        "TERM/INT kills the job at once; HUP re-reads the config files.\n");
}


static void
on_signal(int sig)
{
    int  saved = errno;
    char c = (char) sig;

    if (sig == SIGCHLD) {
        pja_got_chld = 1;
    } else if (sig == SIGHUP) {
        pja_got_hup = 1;
    } else if (pja_got_term < 2) {
        pja_got_term++;
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
        || sigaction(SIGHUP, &sa, NULL) != 0
        || sigaction(SIGCHLD, &sa, NULL) != 0)
    {
        pja_log(PJA_LOG_ERR, "sigaction(): %s", strerror(errno));
        return -1;
    }

    sa.sa_handler = SIG_IGN;
    sa.sa_flags = 0;
    if (sigaction(SIGPIPE, &sa, NULL) != 0) {
        pja_log(PJA_LOG_ERR, "sigaction(): %s", strerror(errno));
        return -1;
    }

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
    int      stable, fallback;

    now = pja_now_ms();

    /*
     * A refused websocket upgrade that is not about who we are (a proxy
     * without websockets, an old front end): long-poll at once, and the
     * websocket again at the next reconnect.
     */
    fallback = a->ws.transport != &pja_transport_poll
               && a->conf.transport == PJA_TRANSPORT_AUTO
               && a->ws.http_status != 0 && a->ws.http_status != 101
               && a->ws.http_status != 401 && a->ws.http_status != 403;

    if (fallback) {
        pja_log(PJA_LOG_WARN, "channel: the websocket upgrade was refused "
                "(%d), falling back to long-poll", a->ws.http_status);
        a->fallback = 1;
    }
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

    pja_conn_reset(&a->ws);
    a->welcomed = 0;

    delay = fallback ? 0 : backoff_delay(attempt);
    *reconnect_at = now + delay;

    pja_log(PJA_LOG_INFO, "reconnecting in %.1f s", (double) delay / 1000);
}


/* Loads the config files, then the command line's settings. */

static int
load_conf(pja_agent_t *a, pja_conf_t *cf)
{
    int  i;

    pja_conf_init(cf);

    for (i = 0; i < a->nconf_files; i++) {
        if (pja_conf_load(cf, a->conf_files[i]) != 0) {
            return -1;
        }
    }

    for (i = 0; i < a->nconf_args; i += 2) {
        if (pja_conf_set(cf, a->conf_args[i], a->conf_args[i + 1]) != 0) {
            return -1;
        }
    }

    return pja_conf_finish(cf);
}


#define PJA_SWAP(type, field)                                                 \
    do {                                                                      \
        type  t_ = a->conf.field;                                             \
        a->conf.field = nc.field;                                             \
        nc.field = t_;                                                        \
    } while (0)


static int
conf_differs(const char *x, const char *y)
{
    return (x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0);
}


/*
 * SIGHUP: re-reads the config files and takes the whitelist and the job
 * settings from them.  The node's identity, the server and TLS settings
 * need a restart.  A job in flight keeps its resolved command line and
 * its lock.
 */

static void
reload(pja_agent_t *a)
{
    pja_conf_t  nc;

    pja_log(PJA_LOG_INFO, "SIGHUP: re-reading the configuration");

    if (load_conf(a, &nc) != 0) {
        pja_log(PJA_LOG_ERR, "the new configuration is not valid; keeping "
                "the old one");
        pja_conf_free(&nc);
        return;
    }

    if (conf_differs(nc.node_name, a->conf.node_name)
        || conf_differs(nc.chef_server_url, a->conf.chef_server_url)
        || conf_differs(nc.client_key, a->conf.client_key)
        || conf_differs(nc.ssl_ca_file, a->conf.ssl_ca_file)
        || conf_differs(nc.trusted_certs_dir, a->conf.trusted_certs_dir)
        || nc.ssl_verify != a->conf.ssl_verify)
    {
        pja_log(PJA_LOG_WARN, "node_name, chef_server_url, client_key and "
                "TLS settings change on a restart only");
    }

    PJA_SWAP(pja_wl_entry_t *, wl);
    PJA_SWAP(size_t, nwl);
    PJA_SWAP(int, wl_set);
    PJA_SWAP(char **, allowed_env);
    PJA_SWAP(size_t, nallowed_env);
    PJA_SWAP(char **, allowed_users);
    PJA_SWAP(size_t, nallowed_users);
    PJA_SWAP(char *, file_dir);
    PJA_SWAP(char *, file_cache_path);
    PJA_SWAP(char *, lockfile);
    PJA_SWAP(int, kill_grace);
    PJA_SWAP(long long, output_cap);

    pja_conf_free(&nc);

    pja_log(PJA_LOG_INFO, "configuration reloaded: %zu whitelist entries",
            a->conf.nwl);
}


static void
check_child(pja_agent_t *a)
{
    int  status;

    if (pja_job_reap(&a->job, &status)) {
        pja_session_job_exited(a, status);
    }
}


/*
 * Split: what the root parent tells the network process unasked.  Its
 * stop counts as the signal would (the parent has it, systemd sends it
 * to both: the network process ignores its own).
 */

static void
ps_record(pja_agent_t *a, const pja_ps_rep_t *rep)
{
    if (rep->type == PJA_PS_STOP) {
        if (rep->status > pja_got_term) {
            pja_got_term = rep->status > 2 ? 2 : rep->status;
        }
        return;
    }

    /* PJA_PS_EXITED */
    if (a->job.state != PJA_JOB_RUNNING
        || strcmp(a->job.id, rep->job_id) != 0)
    {
        pja_log(PJA_LOG_WARN, "privsep: the exit of job %s, not held",
                rep->job_id);
        return;
    }

    pja_job_exited(&a->job);
    pja_session_job_exited(a, rep->status);
}


/*
 * The root parent's loop: requests of the network process, the job's
 * exit, signals (passed on as records).  It ends with the network
 * process; a job still running is left to the next agent, as when an
 * agent dies (pja_job_recover()).
 */

static int
parent_run(pja_agent_t *a, int fd, pid_t child)
{
    int            status, stops, rc;
    char           drain[64];
    pid_t          pid;
    struct pollfd  pfd[2];

    stops = 0;
    rc = 1;

    for ( ;; ) {
        if (pja_got_hup) {
            pja_got_hup = 0;
            reload(a);
        }

        if (pja_got_term > stops) {
            stops = pja_got_term;
            (void) pja_ps_stop(fd, stops);
        }

        if (pja_got_chld) {
            pja_got_chld = 0;

            if (pja_job_reap(&a->job, &status)
                && pja_ps_exited(fd, &a->job, status) != 0)
            {
                pja_log(PJA_LOG_ERR, "privsep: cannot reach the network "
                        "process: %s", strerror(errno));
            }

            pid = waitpid(child, &status, WNOHANG);
            if (pid == child) {
                child = 0;
                rc = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
                break;
            }
        }

        pfd[0].fd = pja_sig_pipe[0];
        pfd[0].events = POLLIN;
        pfd[0].revents = 0;
        pfd[1].fd = fd;
        pfd[1].events = POLLIN;
        pfd[1].revents = 0;

        if (poll(pfd, 2, 1000) < 0 && errno != EINTR) {
            pja_log(PJA_LOG_ERR, "poll(): %s", strerror(errno));
            break;
        }

        if (pfd[0].revents & POLLIN) {
            while (read(pja_sig_pipe[0], drain, sizeof(drain)) > 0) {
                /* void */
            }
        }

        if (pfd[1].revents && pja_ps_serve(fd, &a->job, &a->conf) != 0) {
            break;
        }
    }

    close(fd);

    if (child > 0) {
        /* gone from the socketpair, or broke its rules: it ends now */
        (void) kill(child, SIGKILL);

        while (waitpid(child, &status, 0) == -1 && errno == EINTR) {
            /* void */
        }
    }

    if (a->job.state == PJA_JOB_RUNNING) {
        pja_log(PJA_LOG_WARN, "job %s: left running, process group %ld; "
                "the next agent ends it", a->job.id, (long) a->job.pid);
    }

    return rc;
}


static int
run(pja_agent_t *a)
{
    int            attempt, n, i, timeout, rc, ws_i, out_i, err_i, ps_i;
    int            closing, backlog;
    char           drain[64];
    int64_t        now, reconnect_at, deadline, stop_deadline, silence;
    int64_t        next_chunk;
    struct pollfd  pfd[5];
    pja_ps_rep_t   rep;

    attempt = 0;
    reconnect_at = 0;
    stop_deadline = 0;
    closing = 0;

    for ( ;; ) {
        now = pja_now_ms();

        if (pja_got_hup) {
            pja_got_hup = 0;
            reload(a);
        }

        /* split: the root parent's records that came while it answered */
        while (pja_ps_fd != -1 && pja_ps_input(&rep, 0) == 1) {
            ps_record(a, &rep);
        }

        if (pja_ps_broken) {
            return 1;
        }

        /*
         * Stopping: a running job's group gets SIGTERM (SIGKILL after the
         * grace period, at once on a second signal); once it is reaped and
         * its report spooled and sent, the channel is closed with 1000.
         */
        if (pja_got_term && !a->stopping) {
            pja_log(PJA_LOG_INFO, "stopping");
            a->stopping = 1;

            if (a->job.state == PJA_JOB_COMMITTED) {
                pja_job_uncommit(&a->job);
            }

            pja_job_end(&a->job, PJA_END_STOP, 0, a->job.kill_grace);
        }

        if (pja_got_term > 1 && a->job.state == PJA_JOB_RUNNING
            && a->job.kill_at)
        {
            pja_job_end(&a->job, PJA_END_STOP, 1, 0);
        }

        if (a->stopping && !closing && a->job.state != PJA_JOB_RUNNING) {
            closing = 1;
            stop_deadline = now + 3000;

            if (a->ws.state == PJA_WS_OPEN) {
                pja_conn_close(&a->ws, 1000);
            } else {
                pja_conn_reset(&a->ws);
            }
        }

        if (closing && (a->ws.fd == -1 || now >= stop_deadline)) {
            pja_conn_reset(&a->ws);
            return 0;
        }

        pja_job_timers(&a->job, now);

        /* Live output that is due; its next chunk's time. */
        next_chunk = pja_session_stream(a, now, 0);

        /* Channel timers. */
        if (a->ws.fd != -1) {
            silence = a->ws.transport->silence(&a->ws, a);

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

            } else if (a->ws.state == PJA_WS_CLOSING && !closing
                       && now >= a->ws.close_deadline)
            {
                channel_ended(a, &attempt, &reconnect_at);
            }
        }

        if (a->ws.fd == -1 && !a->stopping && now >= reconnect_at) {
            if (pja_conn_connect(&a->ws, &a->conf) != 0) {
                channel_ended(a, &attempt, &reconnect_at);
            }
        }

        /* Poll set. */
        n = 0;
        pfd[n].fd = pja_sig_pipe[0];
        pfd[n].events = POLLIN;
        n++;

        ws_i = out_i = err_i = ps_i = -1;

        if (pja_ps_fd != -1) {
            ps_i = n;
            pfd[n].fd = pja_ps_fd;
            pfd[n].events = POLLIN;
            n++;
        }

        if (a->ws.fd != -1) {
            ws_i = n;
            pfd[n].fd = a->ws.fd;
            pfd[n].events = pja_conn_events(&a->ws);
            n++;
        }

        /* back-pressure: the pipes wait while the channel is behind */
        backlog = pja_session_backlog(a);

        if (a->job.out_fd != -1 && !backlog) {
            out_i = n;
            pfd[n].fd = a->job.out_fd;
            pfd[n].events = POLLIN;
            n++;
        }

        if (a->job.err_fd != -1 && !backlog) {
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
        if (next_chunk != -1 && next_chunk < deadline) {
            deadline = next_chunk;
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

        if (ps_i != -1 && pfd[ps_i].revents) {
            if (pja_ps_input(&rep, 1) != 1) {
                pja_log(PJA_LOG_ERR, "privsep: the root process is gone");
                return 1;
            }
            ps_record(a, &rep);
        }

        if (ws_i != -1 && pfd[ws_i].revents && a->ws.fd == pfd[ws_i].fd) {
            if (pja_conn_handle(&a->ws, &a->conf, pfd[ws_i].revents) != 0) {
                if (closing) {
                    pja_conn_reset(&a->ws);
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


/* "--flag VALUE" or "--flag=VALUE"; NULL when it is not that flag. */

static const char *
flag_value(int argc, char **argv, int *i, const char *flag, int *missing)
{
    size_t  n;

    n = strlen(flag);

    if (strncmp(argv[*i], flag, n) != 0) {
        return NULL;
    }

    if (argv[*i][n] == '=') {
        return argv[*i] + n + 1;
    }

    if (argv[*i][n] != '\0') {
        return NULL;
    }

    if (*i + 1 == argc) {
        *missing = 1;
        return NULL;
    }

    return argv[++*i];
}


int
main(int argc, char **argv)
{
    int                i, nconf, fd, rc, check, use_syslog, missing;
    const char        *conf[PJA_MAX_CONFIGS], *spool, *sign[3], *v, *user;
    pid_t              child;
    const pja_flag_t  *fl;
    pja_agent_t       *a = &pja_agent;

    memset(a, 0, sizeof(pja_agent_t));

    nconf = 0;
    check = 0;
    use_syslog = 0;
    spool = PJA_DEFAULT_SPOOL;
    user = NULL;
    sign[0] = sign[1] = sign[2] = NULL;

    a->conf_args = calloc((size_t) argc * 2 + 1, sizeof(char *));
    if (a->conf_args == NULL) {
        fprintf(stderr, "pushjobs-agent: out of memory\n");
        return 1;
    }

    /* Make sure 0, 1 and 2 are open, so no pipe lands on them. */
    while ((fd = open("/dev/null", O_RDWR)) != -1 && fd <= 2) {
        /* void */
    }
    if (fd > 2) {
        close(fd);
    }

    for (i = 1; i < argc; i++) {
        missing = 0;

        if ((v = flag_value(argc, argv, &i, "-c", &missing)) != NULL
            || (v = flag_value(argc, argv, &i, "--config", &missing)) != NULL)
        {
            if (nconf == PJA_MAX_CONFIGS) {
                fprintf(stderr, "pushjobs-agent: too many -c\n");
                return 2;
            }
            conf[nconf++] = v;
            continue;
        }

        if ((v = flag_value(argc, argv, &i, "--spool", &missing)) != NULL) {
            spool = v;
            continue;
        }

        if ((v = flag_value(argc, argv, &i, "--user", &missing)) != NULL) {
            user = v;
            continue;
        }

        for (fl = pja_flags; !missing && fl->flag; fl++) {
            v = flag_value(argc, argv, &i, fl->flag, &missing);
            if (v) {
                a->conf_args[a->nconf_args++] = (char *) fl->setting;
                a->conf_args[a->nconf_args++] = (char *) v;
                break;
            }
        }

        if (missing) {
            fprintf(stderr, "pushjobs-agent: %s wants a value\n", argv[i]);
            return 2;
        }

        if (fl->flag) {
            continue;
        }

        if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--verbose") == 0)
        {
            pja_log_level = PJA_LOG_DEBUG;

        } else if (strcmp(argv[i], "--syslog") == 0) {
            use_syslog = 1;

        } else if (strcmp(argv[i], "--long-poll") == 0) {
            a->conf_args[a->nconf_args++] = (char *) "pushjobs_transport";
            a->conf_args[a->nconf_args++] = (char *) "long_poll";

        } else if (strcmp(argv[i], "--check-config") == 0) {
            check = 1;

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

    if (use_syslog && !check && !sign[0]) {
        pja_log_syslog();
    }

    if (nconf == 0) {
        nconf = default_configs(conf);
        if (nconf == 0) {
            return 1;
        }
    }

    a->conf_files = conf;
    a->nconf_files = nconf;
    a->job.out_fd = -1;
    a->job.err_fd = -1;
    a->job.lock_fd = -1;
    a->ws.fd = -1;
    a->ping_interval = PJA_DEFAULT_PING;
    a->poll_timeout = PJA_DEFAULT_POLL;
    a->max_message_size = PJA_DEFAULT_MAX_MESSAGE;

    if (load_conf(a, &a->conf) != 0) {
        return 1;
    }

    if (check) {
        pja_conf_print(&a->conf, stdout);
        pja_conf_free(&a->conf);
        return fflush(stdout) == 0 ? 0 : 1;
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

    if (pja_store_init(spool) != 0) {
        return 1;
    }

    if (setup_signals() != 0) {
        return 1;
    }

    /*
     * What a previous agent process left running when it died; a signal
     * meanwhile is handled once that is done.
     */
    pja_job_recover(&a->conf);

    if (pja_conn_init_ctx(&a->ws, &a->conf) != 0) {
        return 1;
    }

    /*
     * Once, while the agent may still read it; one that does not load is
     * tried again on each connect (pja_sign_key()).
     */
    (void) pja_sign_key(a);

    /*
     * Started as root: the network process becomes the user, this one
     * stays root and only starts, signals and reaps jobs on its requests
     * (agent/README.md, "Privilege separation").
     */
    if (geteuid() == 0) {
        child = pja_ps_split(user ? user : pja_ps_default_user(), &fd);

        if (child == -1) {
            return 1;
        }

        if (child > 0) {
            SSL_CTX_free(a->ws.ctx);
            a->ws.ctx = NULL;
            EVP_PKEY_free(a->key);
            a->key = NULL;

            rc = parent_run(a, fd, child);
            pja_log(PJA_LOG_INFO, "stopped");
            return rc;
        }

    } else {
        pja_log(PJA_LOG_INFO, "not started as root: one process, jobs run "
                "as %ld", (long) geteuid());
    }

    rc = run(a);

    if (a->ws.tls_session) {
        SSL_SESSION_free(a->ws.tls_session);
    }

    if (a->ws.ctx) {
        SSL_CTX_free(a->ws.ctx);
    }

    EVP_PKEY_free(a->key);

    pja_log(PJA_LOG_INFO, "stopped");
    return rc;
}
