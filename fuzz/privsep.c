/*
 * The root parent of the split agent, pja_ps_serve() (agent/privsep.c):
 * the network process's records, hostile, over a SOCK_SEQPACKET
 * socketpair, one served after each as main.c's parent_run() does, until
 * the parent gives up on its peer.  The executor (pja_exec) is a stub that
 * never forks, executes or signals: its commit is the real
 * pja_job_prepare() with a fixed configuration (the whitelist below, two
 * allowed env names, no allowed_users, no lock), its run "starts" a fake
 * pid with two pipes for the output, its signal and release only record.
 *
 * Input: datagrams, each a head of 4 bytes and a body.
 *
 *   head[0]  bits 0-1  the datagram's size: 0 a record's, 1 short (the
 *                      body's, less than a record's), 2 long (a record's
 *                      and 1 + body length % 256), 3 empty
 *            bit 2     the body holds fields (below), else its bytes are
 *                      laid over a zeroed record
 *            bits 3-4  descriptors attached: 0 to 3
 *            bits 5-6  their kind: a memory file holding the job's file,
 *                      a pipe, a memory file over PJA_PS_FILE_MAX,
 *                      /dev/null
 *            bit 7     the stub's run refuses
 *   head[1]  bit 0     fields: nenv and env_len from the body, not counted
 *            bit 1     the magic is wrong
 *            bit 2     fields: the job id fills its 33 bytes (no NUL)
 *   head[2], head[3]   the body's length, little-endian (at most the rest)
 *
 * Fields: type, signal (0 SIGTERM, 1 SIGKILL, else the byte), capture,
 * has_file, job id (0..3: one of four ids, else the first string), then
 * with head[1] bit 0 nenv (2 bytes) and env_len (4 bytes), then
 * NUL-separated strings: [the job id], command, user, dir, the job's file,
 * "K=V" env strings.
 *
 * Checked (abort() otherwise): the executor is asked only for records
 * pja_ps_req_check() accepts and that came whole, with the descriptors
 * they announce; run only for the job the parent holds committed, signal
 * only for the running one and only SIGTERM or SIGKILL; the parent serves
 * exactly the well-formed records and ends on every other one; a commit
 * or run is answered once, a signal or release never; each answer is one
 * pja_ps_rep_t, its magic set, its strings NUL-terminated, for the job
 * asked about, with descriptors only when a job with captured output
 * started; the parent's job is the one the executor was told about; each
 * env string of a committed job is an allowed name or CHEF_PUSH_ENV_*; no
 * descriptor is left open after an input.
 */

#define _GNU_SOURCE             /* memfd_create() */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>

/* (linked with fuzz/agent_fuzz.c: pja_agent, which agent files name) */
#include "pja.h"


#define PS_FUZZ_PID      0x7ffffff0      /* never a process: never killed */
#define PS_FUZZ_PREFIX   "CHEF_PUSH_ENV_"
#define PS_FUZZ_MAX_FDS  3

static const char  *ps_fuzz_ids[] = {
    "0123456789abcdef0123456789abcdef",
    "fedcba9876543210fedcba9876543210",
    "00000000000000000000000000000000",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
};

static const char  *ps_fuzz_env[] = { "LANG", "TZ" };


/* The record sent, with room for a long datagram. */

static union {
    pja_ps_req_t    r;
    char            buf[sizeof(pja_ps_req_t) + 256];
} ps_dgram;

/* What the parent was sent last, when it came as a record; else NULL. */
static const pja_ps_req_t  *ps_cur;
static int                  ps_cur_fds;

/* What the executor was told: the job held (committed or running). */
static int                  ps_held;
static char                 ps_held_id[33];

static int                  ps_run_refuses;
static int                  ps_calls;

static pja_conf_t           ps_conf;
static pja_job_t            ps_job;

/* file_dir, which nothing the parent does here writes to */
static char                 ps_tmp[] = "/tmp/pushjobs-psfuzz.XXXXXX";


/* The request the executor is asked about: whole, well formed, as sent. */

static void
ps_fuzz_asked(int type)
{
    if (ps_cur == NULL || ps_cur->type != (uint32_t) type
        || pja_ps_req_check(ps_cur) != NULL
        || ps_cur_fds != (type == PJA_PS_COMMIT && ps_cur->has_file ? 1 : 0))
    {
        abort();
    }

    ps_calls++;
}


static const char *
ps_fuzz_commit(pja_job_t *job, const pja_conf_t *cf,
    const pja_ps_req_t *r, const char *file)
{
    size_t       i, j, n;
    const char  *why, *eq;

    ps_fuzz_asked(PJA_PS_COMMIT);

    if (pja_ps_req_check(r) != NULL || r->type != PJA_PS_COMMIT
        || memcmp(r, ps_cur, sizeof(pja_ps_req_t)) != 0
        || (file != NULL) != (r->has_file != 0)
        || job->state == PJA_JOB_RUNNING || cf != &ps_conf)
    {
        abort();
    }

    why = pja_job_prepare(job, cf, r, file);

    if (why) {
        return why;
    }

    if (job->state != PJA_JOB_COMMITTED || strcmp(job->id, r->job_id) != 0
        || job->cmdline == NULL || job->nenv != r->nenv
        || job->lock_path != NULL || job->lock_fd != -1)
    {
        abort();
    }

    /* each env string: an allowed name as it came, or renamed */

    for (i = 0; i < job->nenv; i++) {
        eq = strchr(job->env[i], '=');
        if (eq == NULL) {
            abort();
        }

        if (strncmp(job->env[i], PS_FUZZ_PREFIX, sizeof(PS_FUZZ_PREFIX) - 1)
            == 0)
        {
            continue;
        }

        n = (size_t) (eq - job->env[i]);

        for (j = 0; j < sizeof(ps_fuzz_env) / sizeof(ps_fuzz_env[0]); j++) {
            if (strlen(ps_fuzz_env[j]) == n
                && strncmp(job->env[i], ps_fuzz_env[j], n) == 0)
            {
                break;
            }
        }

        if (j == sizeof(ps_fuzz_env) / sizeof(ps_fuzz_env[0])) {
            abort();
        }
    }

    ps_held = PJA_JOB_COMMITTED;
    memcpy(ps_held_id, job->id, 33);

    return NULL;
}


static const char *
ps_fuzz_run(pja_job_t *job, const pja_conf_t *cf)
{
    int  out[2], err[2];

    ps_fuzz_asked(PJA_PS_RUN);

    if (ps_held != PJA_JOB_COMMITTED || job->state != PJA_JOB_COMMITTED
        || strcmp(job->id, ps_held_id) != 0
        || strcmp(ps_cur->job_id, ps_held_id) != 0 || cf != &ps_conf)
    {
        abort();
    }

    if (ps_run_refuses) {
        return "not run by the fuzz harness";
    }

    out[0] = -1;
    err[0] = -1;

    if (job->capture) {
        if (pipe2(out, O_CLOEXEC) != 0) {
            abort();
        }

        if (pipe2(err, O_CLOEXEC) != 0) {
            abort();
        }

        close(out[1]);
        close(err[1]);
    }

    pja_job_started(job, PS_FUZZ_PID, out[0], err[0]);

    ps_held = PJA_JOB_RUNNING;

    return NULL;
}


static void
ps_fuzz_signal(pja_job_t *job, int signo)
{
    ps_fuzz_asked(PJA_PS_SIGNAL);

    if ((signo != SIGTERM && signo != SIGKILL) || signo != ps_cur->signo
        || ps_held != PJA_JOB_RUNNING || job->state != PJA_JOB_RUNNING
        || job->pid != PS_FUZZ_PID || strcmp(job->id, ps_held_id) != 0
        || strcmp(ps_cur->job_id, ps_held_id) != 0)
    {
        abort();
    }
}


/* From pja_job_clear(): the parent's release, a new commit, the end. */

static void
ps_fuzz_release(pja_job_t *job)
{
    if (job->state == PJA_JOB_IDLE || job->state != ps_held
        || strcmp(job->id, ps_held_id) != 0)
    {
        abort();
    }

    ps_held = PJA_JOB_IDLE;
}


static const pja_exec_t  ps_fuzz_exec = {
    ps_fuzz_commit,
    ps_fuzz_run,
    ps_fuzz_signal,
    ps_fuzz_release
};


static void
ps_fuzz_cleanup(void)
{
    (void) rmdir(ps_tmp);
}


static void
ps_fuzz_init(void)
{
    char         path[256];
    static int   done;

    if (done) {
        return;
    }

    done = 1;

    pja_log_level = PJA_LOG_DEBUG;

    if (mkdtemp(ps_tmp) == NULL || atexit(ps_fuzz_cleanup) != 0) {
        abort();
    }

    snprintf(path, sizeof(path), "%s/files", ps_tmp);

    pja_conf_init(&ps_conf);

    if (pja_conf_set(&ps_conf, "node_name", "fuzz") != 0
        || pja_conf_set(&ps_conf, "chef_server_url",
                        "https://127.0.0.1:1/organizations/fuzz") != 0
        || pja_conf_set(&ps_conf, "file_dir", path) != 0
        || pja_conf_set(&ps_conf, "allowed_overwritable_env_vars",
                        ps_fuzz_env[0]) != 0
        || pja_conf_set(&ps_conf, "allowed_overwritable_env_vars",
                        ps_fuzz_env[1]) != 0
        || pja_wl_add(&ps_conf, "true", 0, 0, "true", NULL, 0) != 0
        || pja_wl_add(&ps_conf, "echo", 0, 0, "echo 'a b' \"c\"", NULL, 0)
           != 0
        || pja_wl_add(&ps_conf, "^ping ([a-z0-9.]+)$", 1, 0, "ping -c 1 \\1",
                      NULL, 0) != 0
        || pja_conf_finish(&ps_conf) != 0
        || ps_conf.nallowed_users != 0 || ps_conf.lockfile != NULL)
    {
        abort();
    }

    memset(&ps_job, 0, sizeof(pja_job_t));
    ps_job.out_fd = -1;
    ps_job.err_fd = -1;
    ps_job.lock_fd = -1;

    pja_exec = &ps_fuzz_exec;
}


static int
ps_fuzz_count_fds(void)
{
    int             n;
    DIR            *d;
    struct dirent  *de;

    d = opendir("/proc/self/fd");
    if (d == NULL) {
        abort();
    }

    n = 0;

    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] != '.') {
            n++;
        }
    }

    closedir(d);

    /* the directory's own descriptor */
    return n - 1;
}


/* One descriptor of the given kind; the job's file for a memory file. */

static int
ps_fuzz_fd(int kind, const char *file)
{
    int     fd, p[2];
    size_t  len;

    switch (kind) {

    case 0:
    case 2:
        fd = memfd_create("psfuzz", MFD_CLOEXEC);
        if (fd == -1) {
            abort();
        }

        if (kind == 2) {
            if (ftruncate(fd, (off_t) PJA_PS_FILE_MAX + 1) != 0) {
                abort();
            }
            return fd;
        }

        len = strlen(file);
        if (len && write(fd, file, len) != (ssize_t) len) {
            abort();
        }
        return fd;

    case 1:
        if (pipe2(p, O_CLOEXEC) != 0) {
            abort();
        }
        close(p[1]);
        return p[0];

    default:
        fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd == -1) {
            abort();
        }
        return fd;
    }
}


/* A string of the body (up to a NUL or its end); NULL at its end. */

static const char *
ps_fuzz_str(const uint8_t **p, const uint8_t *end, size_t *len)
{
    const char     *s;
    const uint8_t  *nul;

    if (*p >= end) {
        return NULL;
    }

    nul = memchr(*p, '\0', (size_t) (end - *p));
    s = (const char *) *p;
    *len = (size_t) ((nul ? nul : end) - *p);
    *p += *len + 1;

    return s;
}


/* At most size bytes, NUL-terminated when they leave room. */

static void
ps_fuzz_field(char *dst, size_t size, const char *s, size_t len)
{
    memcpy(dst, s, len < size ? len : size);
}


/*
 * The record of a body of fields; the job's file in file (a NUL-terminated
 * copy, empty when none).
 */

static void
ps_fuzz_fields(pja_ps_req_t *r, const uint8_t *p, const uint8_t *end,
    int flags, char *file, size_t file_size)
{
    int          id, raw_env;
    size_t       len, room;
    uint32_t     env_len;
    const char  *s;

    if (end - p < 5) {
        return;
    }

    r->type = p[0];
    r->signo = p[1] == 0 ? SIGTERM : p[1] == 1 ? SIGKILL : p[1];
    r->capture = p[2];
    r->has_file = p[3];
    id = p[4];
    p += 5;

    raw_env = flags & 1;

    if (raw_env) {
        if (end - p < 6) {
            return;
        }
        r->nenv = (uint32_t) p[0] | (uint32_t) p[1] << 8;
        memcpy(&env_len, p + 2, 4);
        r->env_len = env_len;
        p += 6;
    }

    if (id < 4) {
        memcpy(r->job_id, ps_fuzz_ids[id], 33);

    } else if ((s = ps_fuzz_str(&p, end, &len)) != NULL) {
        ps_fuzz_field(r->job_id, sizeof(r->job_id), s, len);
    }

    if (flags & 4) {
        r->job_id[32] = 'a';
    }

    if ((s = ps_fuzz_str(&p, end, &len)) != NULL) {
        ps_fuzz_field(r->command, sizeof(r->command), s, len);
    }

    if ((s = ps_fuzz_str(&p, end, &len)) != NULL) {
        ps_fuzz_field(r->user, sizeof(r->user), s, len);
    }

    if ((s = ps_fuzz_str(&p, end, &len)) != NULL) {
        ps_fuzz_field(r->dir, sizeof(r->dir), s, len);
    }

    if ((s = ps_fuzz_str(&p, end, &len)) != NULL) {
        len = len < file_size - 1 ? len : file_size - 1;
        memcpy(file, s, len);
        file[len] = '\0';
    }

    room = sizeof(r->env);

    while ((s = ps_fuzz_str(&p, end, &len)) != NULL && len + 1 <= room) {
        memcpy(r->env + sizeof(r->env) - room, s, len);
        room -= len + 1;

        if (!raw_env) {
            r->nenv++;
            r->env_len += (uint32_t) len + 1;
        }
    }
}


/* Sends one datagram and up to PS_FUZZ_MAX_FDS descriptors; 0 or -1. */

static int
ps_fuzz_send(int fd, const void *buf, size_t size, const int *fds, int nfds)
{
    struct iovec     iov;
    struct msghdr    msg;
    struct cmsghdr  *cm;
    union {
        struct cmsghdr  align;
        char            buf[CMSG_SPACE(sizeof(int) * PS_FUZZ_MAX_FDS)];
    } ctl;

    memset(&msg, 0, sizeof(msg));
    memset(&ctl, 0, sizeof(ctl));

    iov.iov_base = (void *) buf;
    iov.iov_len = size;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;

    if (nfds > 0) {
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t) nfds);

        cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t) nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t) nfds);
    }

    if (sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t) size) {
        return -1;
    }

    return 0;
}


/*
 * The parent's answers to the request just served: each one checked and
 * its descriptors closed.  Returns how many came.
 */

static int
ps_fuzz_answers(int fd, const pja_ps_req_t *r)
{
    int              i, n, nfds, fds[8];
    ssize_t          len;
    struct iovec     iov;
    struct msghdr    msg;
    struct cmsghdr  *cm;
    struct stat      st;
    union {
        pja_ps_rep_t    rep;
        char            buf[sizeof(pja_ps_rep_t) + 64];
    } u;
    union {
        struct cmsghdr  align;
        char            buf[CMSG_SPACE(sizeof(int) * 8)];
    } ctl;

    for (n = 0; ; n++) {
        memset(&msg, 0, sizeof(msg));
        iov.iov_base = u.buf;
        iov.iov_len = sizeof(u.buf);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.buf;
        msg.msg_controllen = sizeof(ctl.buf);

        len = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

        if (len < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return n;
        }

        if (len != (ssize_t) sizeof(pja_ps_rep_t)
            || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
        {
            abort();
        }

        nfds = 0;

        for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
                abort();
            }

            for (i = 0;
                 CMSG_LEN(sizeof(int) * (size_t) (i + 1)) <= cm->cmsg_len;
                 i++)
            {
                if (nfds == 8) {
                    abort();
                }
                memcpy(&fds[nfds++], CMSG_DATA(cm) + sizeof(int) * (size_t) i,
                       sizeof(int));
            }
        }

        if (u.rep.magic != PJA_PS_MAGIC
            || memchr(u.rep.job_id, '\0', sizeof(u.rep.job_id)) == NULL
            || memchr(u.rep.text, '\0', sizeof(u.rep.text)) == NULL
            || r == NULL || strcmp(u.rep.job_id, r->job_id) != 0)
        {
            abort();
        }

        switch (u.rep.type) {

        case PJA_PS_COMMITTED:
            if (r->type != PJA_PS_COMMIT || nfds != 0
                || ps_held != PJA_JOB_COMMITTED
                || strcmp(u.rep.job_id, ps_held_id) != 0
                || strncmp(u.rep.text, ps_job.cmdline,
                           sizeof(u.rep.text) - 1) != 0
                || u.rep.kill_grace != ps_job.kill_grace)
            {
                abort();
            }
            break;

        case PJA_PS_STARTED:
            if (r->type != PJA_PS_RUN || ps_held != PJA_JOB_RUNNING
                || u.rep.pid != PS_FUZZ_PID
                || nfds != (ps_job.capture ? 2 : 0)
                || ps_job.out_fd != -1 || ps_job.err_fd != -1)
            {
                abort();
            }

            for (i = 0; i < nfds; i++) {
                if (fstat(fds[i], &st) != 0 || !S_ISFIFO(st.st_mode)) {
                    abort();
                }
            }
            break;

        case PJA_PS_REFUSED:
            if ((r->type != PJA_PS_COMMIT && r->type != PJA_PS_RUN)
                || nfds != 0 || u.rep.text[0] == '\0')
            {
                abort();
            }
            break;

        default:
            abort();
        }

        for (i = 0; i < nfds; i++) {
            close(fds[i]);
        }
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int             i, sv[2], fds[PS_FUZZ_MAX_FDS], nfds, kind, rc, ok,
                    open_fds, served, answers, held, named;
    char            file[4096];
    size_t          len, dsize;
    const uint8_t  *end, *body;
    pja_ps_req_t   *r;

    ps_fuzz_init();

    open_fds = ps_fuzz_count_fds();

    if (pja_ps_socketpair(sv) != 0) {
        abort();
    }

    r = &ps_dgram.r;
    end = data + size;
    served = 1;

    while (end - data >= 4) {
        len = (size_t) data[2] | (size_t) data[3] << 8;
        body = data + 4;

        if (len > (size_t) (end - body)) {
            len = (size_t) (end - body);
        }

        /* the datagram */

        memset(ps_dgram.buf, 0, sizeof(ps_dgram.buf));
        file[0] = '\0';

        if (data[0] & 4) {
            r->magic = PJA_PS_MAGIC;
            ps_fuzz_fields(r, body, body + len, data[1], file, sizeof(file));

        } else {
            memcpy(ps_dgram.buf, body,
                   len < sizeof(pja_ps_req_t) ? len : sizeof(pja_ps_req_t));
        }

        if (data[1] & 2) {
            r->magic ^= 0x20;
        }

        switch (data[0] & 3) {
        case 0:
            dsize = sizeof(pja_ps_req_t);
            break;
        case 1:
            dsize = len < sizeof(pja_ps_req_t) ? len
                                               : sizeof(pja_ps_req_t) - 1;
            break;
        case 2:
            dsize = sizeof(pja_ps_req_t) + 1 + len % 256;
            break;
        default:
            dsize = 0;
        }

        nfds = (data[0] >> 3) & 3;
        kind = (data[0] >> 5) & 3;

        for (i = 0; i < nfds; i++) {
            fds[i] = ps_fuzz_fd(kind, file);
        }

        ps_run_refuses = data[0] >> 7;

        data = body + len;

        /* one datagram at a time: the socket always has room for it */

        if (ps_fuzz_send(sv[1], ps_dgram.buf, dsize, fds, nfds) != 0) {
            abort();
        }

        for (i = 0; i < nfds; i++) {
            close(fds[i]);
        }

        /* what the parent must make of it */

        ok = dsize == sizeof(pja_ps_req_t) && pja_ps_req_check(r) == NULL
             && nfds == (r->type == PJA_PS_COMMIT && r->has_file ? 1 : 0);

        ps_cur = dsize == sizeof(pja_ps_req_t) ? r : NULL;
        ps_cur_fds = nfds;
        ps_calls = 0;

        /* the held job the request names, if any */
        held = ps_held;
        named = ok && held && strcmp(r->job_id, ps_held_id) == 0;

        rc = pja_ps_serve(sv[0], &ps_job, &ps_conf);

        answers = ps_fuzz_answers(sv[1], ps_cur);

        if ((rc == 0) != ok
            || answers != (ok && (r->type == PJA_PS_COMMIT
                                  || r->type == PJA_PS_RUN))
            || ps_job.state != ps_held
            || (ps_held && strcmp(ps_job.id, ps_held_id) != 0))
        {
            abort();
        }

        /* what the executor was asked to do, and what became of the job */

        if (!ok) {
            if (ps_calls != 0 || ps_held != held) {
                abort();
            }

        } else if (r->type == PJA_PS_COMMIT) {
            if (held == PJA_JOB_RUNNING && (ps_calls != 0 || ps_held != held))
            {
                abort();
            }

        } else if (r->type == PJA_PS_RUN) {
            if (ps_calls != (named && held == PJA_JOB_COMMITTED)
                || (ps_calls == 0 && ps_held != held))
            {
                abort();
            }

        } else if (r->type == PJA_PS_SIGNAL) {
            if (ps_calls != (named && held == PJA_JOB_RUNNING)
                || ps_held != held)
            {
                abort();
            }

        } else if (ps_held != (named && held == PJA_JOB_COMMITTED
                               ? PJA_JOB_IDLE : held))
        {
            /* PJA_PS_RELEASE */
            abort();
        }

        if (rc != 0) {
            served = 0;
            break;
        }
    }

    /* the network process is gone: the parent ends without acting */

    ps_cur = NULL;
    close(sv[1]);

    if (served && pja_ps_serve(sv[0], &ps_job, &ps_conf) != -1) {
        abort();
    }

    close(sv[0]);

    pja_job_clear(&ps_job);

    if (ps_held != PJA_JOB_IDLE || ps_fuzz_count_fds() != open_fds) {
        abort();
    }

    return 0;
}
