/*
 * pushjobs-agent: privilege separation, the pieces both processes share.
 *
 * The records the network process and the root parent exchange over a
 * SOCK_SEQPACKET socketpair (fixed size, never JSON), their validation,
 * descriptor passing with SCM_RIGHTS, the network process's drop to an
 * unprivileged user, the network process's executor (pja_exec_privsep:
 * every job operation is a request to the parent) and the parent's side
 * of each request.  See agent/README.md, "Privilege separation".
 */

#define _GNU_SOURCE             /* setresuid(), setresgid() */

#include <dirent.h>
#include <stddef.h>
#include <stdio.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "pja.h"


/* How long the network process waits for the parent's answer. */
#define PJA_PS_ANSWER_TIMEOUT  30000


static int ps_string_ok(const char *s, size_t size);


/* The network process's end of the socketpair; -1 in one process. */

int  pja_ps_fd = -1;

/*
 * Records of the parent that came while the network process waited for
 * an answer: a stop (its count), an exit (one job at a time: one slot).
 */
static int           ps_stop;
static int           ps_exited;
static pja_ps_rep_t  ps_exit_rep;


/* Both ends: one datagram per record, closed on exec. */

int
pja_ps_socketpair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        pja_log(PJA_LOG_ERR, "socketpair(): %s", strerror(errno));
        return -1;
    }

    return 0;
}


/* A NUL within size bytes, and only printable bytes before it. */

static int
ps_string_ok(const char *s, size_t size)
{
    size_t  i;

    for (i = 0; i < size; i++) {
        if (s[i] == '\0') {
            return 1;
        }

        if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f) {
            return 0;
        }
    }

    return 0;
}


/*
 * What the root parent checks before it looks at a request at all; NULL
 * when the record is well formed, else what is wrong with it.  The
 * whitelist, allowed_users and the rest are checked afterwards, against
 * the parent's own configuration (pja_job_prepare()).  The agent checks a
 * commit's record in one process too, so both ways refuse the same jobs.
 */

const char *
pja_ps_req_check(const pja_ps_req_t *r)
{
    size_t       i, n, len;
    const char  *p;

    if (r->magic != PJA_PS_MAGIC) {
        return "bad magic";
    }

    if (memchr(r->job_id, '\0', sizeof(r->job_id)) == NULL
        || !pja_valid_job_id(r->job_id))
    {
        return "bad job id";
    }

    switch (r->type) {

    case PJA_PS_COMMIT:
        if (!ps_string_ok(r->command, sizeof(r->command))
            || r->command[0] == '\0')
        {
            return "bad command";
        }

        if (!ps_string_ok(r->user, sizeof(r->user))) {
            return "bad user";
        }

        if (!ps_string_ok(r->dir, sizeof(r->dir))) {
            return "bad dir";
        }

        if (r->capture > 1 || r->has_file > 1) {
            return "bad flags";
        }

        if (r->nenv > PJA_PS_ENV_COUNT || r->env_len > sizeof(r->env)) {
            return "env over its bounds";
        }

        /*
         * nenv "K=V" strings, each NUL-terminated, filling env_len: a
         * name of at least one byte, then anything but NUL.
         */
        p = r->env;
        len = r->env_len;

        for (i = 0; i < r->nenv; i++) {
            n = strnlen(p, len);

            if (n == len || p[0] == '=' || memchr(p, '=', n) == NULL) {
                return "bad env";
            }

            p += n + 1;
            len -= n + 1;
        }

        if (len != 0) {
            return "bad env length";
        }

        return NULL;

    case PJA_PS_RUN:
    case PJA_PS_RELEASE:
        return NULL;

    case PJA_PS_SIGNAL:
        if (r->signo != SIGTERM && r->signo != SIGKILL) {
            return "bad signal";
        }

        return NULL;

    default:
        return "bad type";
    }
}


/* Sends one record and up to PJA_PS_MAX_FDS descriptors; 0 or -1. */

int
pja_ps_send(int fd, const void *rec, size_t size, const int *fds, int nfds)
{
    ssize_t          n;
    struct iovec     iov;
    struct msghdr    msg;
    struct cmsghdr  *cm;
    union {
        struct cmsghdr  align;
        char            buf[CMSG_SPACE(sizeof(int) * PJA_PS_MAX_FDS)];
    } ctl;

    if (nfds < 0 || nfds > PJA_PS_MAX_FDS) {
        errno = EINVAL;
        return -1;
    }

    memset(&msg, 0, sizeof(msg));
    memset(&ctl, 0, sizeof(ctl));

    iov.iov_base = (void *) rec;
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

    do {
        n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);

    if (n != (ssize_t) size) {
        return -1;
    }

    return 0;
}


/*
 * Receives one record of exactly size bytes and at most maxfds
 * descriptors (closed on exec).  Returns 1 with a record, 0 when the peer
 * is gone, -1 on a malformed datagram: short, long, or with more
 * descriptors than asked for.  On -1 no descriptor is left open.
 */

int
pja_ps_recv(int fd, void *rec, size_t size, int *fds, int maxfds, int *nfds)
{
    int              i, n, got[PJA_PS_MAX_FDS + 1];
    ssize_t          len;
    struct iovec     iov;
    struct msghdr    msg;
    struct cmsghdr  *cm;
    union {
        struct cmsghdr  align;
        char            buf[CMSG_SPACE(sizeof(int) * (PJA_PS_MAX_FDS + 1))];
    } ctl;

    *nfds = 0;
    n = 0;

    memset(&msg, 0, sizeof(msg));

    iov.iov_base = rec;
    iov.iov_len = size;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.buf;
    msg.msg_controllen = sizeof(ctl.buf);

    do {
        len = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    } while (len < 0 && errno == EINTR);

    if (len < 0) {
        return -1;
    }

    for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
            continue;
        }

        for (i = 0;
             CMSG_LEN(sizeof(int) * (size_t) (i + 1)) <= cm->cmsg_len
             && n < PJA_PS_MAX_FDS + 1;
             i++)
        {
            memcpy(&got[n++], CMSG_DATA(cm) + sizeof(int) * (size_t) i,
                   sizeof(int));
        }
    }

    /* an empty datagram with descriptors is malformed, not the end */
    if (len == 0 && n == 0) {
        return 0;
    }

    if ((size_t) len != size || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
        || n > maxfds)
    {
        for (i = 0; i < n; i++) {
            close(got[i]);
        }

        errno = EPROTO;
        return -1;
    }

    for (i = 0; i < n; i++) {
        fds[i] = got[i];
    }

    *nfds = n;
    return 1;
}


/* --user's default: a pushjobs-agent system user if there is one. */

const char *
pja_ps_default_user(void)
{
    return getpwnam(PJA_PS_USER) ? PJA_PS_USER : "nobody";
}


/*
 * The network process becomes user (its primary group, no supplementary
 * groups) for good, and checks that root cannot be regained.
 */

int
pja_ps_drop(const char *user, uid_t uid, gid_t gid)
{
    if (uid == 0) {
        pja_log(PJA_LOG_ERR, "privsep: user %s is root", user);
        return -1;
    }

    if (setgroups(1, &gid) != 0
        || setresgid(gid, gid, gid) != 0
        || setresuid(uid, uid, uid) != 0)
    {
        pja_log(PJA_LOG_ERR, "privsep: cannot become %s: %s", user,
                strerror(errno));
        return -1;
    }

    if (setuid(0) != -1 || seteuid(0) != -1 || setgid(0) != -1
        || getuid() != uid || geteuid() != uid
        || getgid() != gid || getegid() != gid)
    {
        pja_log(PJA_LOG_ERR, "privsep: root could be regained after "
                "becoming %s", user);
        return -1;
    }

    pja_log(PJA_LOG_INFO, "privsep: network process runs as %s (%ld:%ld)",
            user, (long) uid, (long) gid);
    return 0;
}


/* Network process: the descriptor of a memory file holding text. */

static int
ps_memfd(const char *text)
{
    int      fd;
    size_t   off, len;
    ssize_t  n;

    fd = memfd_create("pushjobs-file", MFD_CLOEXEC);
    if (fd == -1) {
        pja_log(PJA_LOG_ERR, "memfd_create(): %s", strerror(errno));
        return -1;
    }

    len = strlen(text);

    for (off = 0; off < len; off += (size_t) n) {
        n = write(fd, text + off, len - off);
        if (n < 0) {
            if (errno == EINTR) {
                n = 0;
                continue;
            }
            pja_log(PJA_LOG_ERR, "write(memfd): %s", strerror(errno));
            close(fd);
            return -1;
        }
    }

    return fd;
}


/* Parent: the text of a memory file sent with a commit, bounded. */

static char *
ps_memfd_read(int fd)
{
    char         *text;
    size_t        off;
    ssize_t       n;
    struct stat   st;

    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0
        || st.st_size > PJA_PS_FILE_MAX)
    {
        return NULL;
    }

    text = malloc((size_t) st.st_size + 1);
    if (text == NULL) {
        return NULL;
    }

    for (off = 0; off < (size_t) st.st_size; off += (size_t) n) {
        n = pread(fd, text + off, (size_t) st.st_size - off, (off_t) off);
        if (n < 0 && errno == EINTR) {
            n = 0;
            continue;
        }
        if (n <= 0) {
            free(text);
            return NULL;
        }
    }

    text[off] = '\0';
    return text;
}


/*
 * Network process: receives one record of the parent.  1 with a record,
 * 0 when the parent is gone, -1 on a malformed one.
 */

static int
ps_recv_rep(pja_ps_rep_t *rep, int *fds, int *nfds)
{
    int  i, rc;

    rc = pja_ps_recv(pja_ps_fd, rep, sizeof(pja_ps_rep_t), fds,
                     PJA_PS_MAX_FDS, nfds);
    if (rc != 1) {
        return rc;
    }

    if (rep->magic != PJA_PS_MAGIC
        || memchr(rep->job_id, '\0', sizeof(rep->job_id)) == NULL
        || memchr(rep->text, '\0', sizeof(rep->text)) == NULL
        || rep->type < PJA_PS_COMMITTED || rep->type > PJA_PS_STOP
        || (*nfds && rep->type != PJA_PS_STARTED))
    {
        for (i = 0; i < *nfds; i++) {
            close(fds[i]);
        }
        *nfds = 0;
        return -1;
    }

    return 1;
}


/*
 * Network process: sends a request and waits, bounded, for its answer; a
 * stop or an exit that comes meanwhile is kept for the poll loop.  0, or
 * -1 when the parent is gone, broken or silent (the agent then exits).
 */

static int
ps_call(const pja_ps_req_t *r, size_t size, int fd, pja_ps_rep_t *rep,
    int *fds, int *nfds)
{
    int            rc;
    int64_t        deadline, now;
    struct pollfd  pfd;

    if (pja_ps_send(pja_ps_fd, r, size, fd == -1 ? NULL : &fd,
                    fd == -1 ? 0 : 1) != 0)
    {
        pja_log(PJA_LOG_ERR, "privsep: cannot reach the root process: %s",
                strerror(errno));
        return -1;
    }

    deadline = pja_now_ms() + PJA_PS_ANSWER_TIMEOUT;

    for ( ;; ) {
        now = pja_now_ms();
        if (now >= deadline) {
            pja_log(PJA_LOG_ERR, "privsep: the root process did not answer");
            return -1;
        }

        pfd.fd = pja_ps_fd;
        pfd.events = POLLIN;
        pfd.revents = 0;

        rc = poll(&pfd, 1, (int) (deadline - now));
        if (rc < 0 && errno != EINTR) {
            return -1;
        }
        if (rc <= 0) {
            continue;
        }

        rc = ps_recv_rep(rep, fds, nfds);
        if (rc != 1) {
            pja_log(PJA_LOG_ERR, "privsep: %s", rc == 0
                    ? "the root process is gone" : "bad record from the root "
                    "process");
            return -1;
        }

        if (rep->type == PJA_PS_STOP) {
            ps_stop = rep->status;
            continue;
        }

        if (rep->type == PJA_PS_EXITED) {
            ps_exit_rep = *rep;
            ps_exited = 1;
            continue;
        }

        if (strcmp(rep->job_id, r->job_id) != 0) {
            pja_log(PJA_LOG_ERR, "privsep: an answer for job %s, not %s",
                    rep->job_id, r->job_id);
            return -1;
        }

        return 0;
    }
}


/*
 * The network process's executor: each operation a request to the root
 * parent, which decides and acts on its own configuration.  A parent
 * that does not answer ends the agent (pja_ps_broken).
 */

int  pja_ps_broken;


/* The parent's reason for a refusal, kept until the next one. */

static const char *
ps_reason(const pja_ps_rep_t *rep)
{
    static char  reason[sizeof(rep->text)];

    memcpy(reason, rep->text, sizeof(reason));

    return reason;
}


static const char *
ps_commit(pja_job_t *job, const pja_conf_t *cf, const pja_ps_req_t *r,
    const char *file)
{
    int                   fd, nfds, fds[PJA_PS_MAX_FDS];
    static pja_ps_rep_t   rep;

    (void) cf;

    fd = -1;

    if (file) {
        if (strlen(file) > PJA_PS_FILE_MAX) {
            return "file too large";
        }

        fd = ps_memfd(file);
        if (fd == -1) {
            return "cannot pass the job's file";
        }
    }

    if (ps_call(r, sizeof(pja_ps_req_t), fd, &rep, fds, &nfds) != 0) {
        if (fd != -1) {
            close(fd);
        }
        pja_ps_broken = 1;
        return "the agent's root process did not answer";
    }

    if (fd != -1) {
        close(fd);
    }

    if (rep.type != PJA_PS_COMMITTED) {
        return ps_reason(&rep);
    }

    memcpy(job->id, r->job_id, 33);
    job->command = pja_strdup(r->command);
    job->cmdline = pja_strdup(rep.text);
    job->capture = (int) r->capture;
    job->output_cap = rep.output_cap > 0 ? (size_t) rep.output_cap : 0;
    job->kill_grace = rep.kill_grace;
    job->state = PJA_JOB_COMMITTED;

    if (job->command == NULL || job->cmdline == NULL) {
        pja_job_clear(job);
        return "out of memory";
    }

    return NULL;
}


/*
 * The request records but a commit: a head, the rest zero (a static
 * record, whose env part is never written: records are sent whole).
 */

static pja_ps_req_t *
ps_head(int type, const pja_job_t *job, int signo)
{
    static pja_ps_req_t  r;

    memset(&r, 0, offsetof(pja_ps_req_t, env));
    r.magic = PJA_PS_MAGIC;
    r.type = (uint32_t) type;
    r.signo = signo;
    memcpy(r.job_id, job->id, 33);

    return &r;
}


static const char *
ps_run(pja_job_t *job, const pja_conf_t *cf)
{
    int                   i, nfds, fds[PJA_PS_MAX_FDS];
    static pja_ps_rep_t   rep;

    (void) cf;

    if (ps_call(ps_head(PJA_PS_RUN, job, 0), sizeof(pja_ps_req_t), -1, &rep,
                fds, &nfds) != 0)
    {
        pja_ps_broken = 1;
        return "the agent's root process did not answer";
    }

    if (rep.type != PJA_PS_STARTED) {
        return ps_reason(&rep);
    }

    if (rep.pid <= 0 || nfds != (job->capture ? 2 : 0)) {
        for (i = 0; i < nfds; i++) {
            close(fds[i]);
        }
        pja_ps_broken = 1;
        return "bad answer from the agent's root process";
    }

    pja_job_started(job, (pid_t) rep.pid, job->capture ? fds[0] : -1,
                    job->capture ? fds[1] : -1);

    return NULL;
}


/* Signals and releases are not answered. */

static void
ps_tell(int type, pja_job_t *job, int signo)
{
    if (pja_ps_send(pja_ps_fd, ps_head(type, job, signo),
                    sizeof(pja_ps_req_t), NULL, 0) != 0)
    {
        pja_log(PJA_LOG_ERR, "privsep: cannot reach the root process: %s",
                strerror(errno));
        pja_ps_broken = 1;
    }
}


static void
ps_signal(pja_job_t *job, int signo)
{
    ps_tell(PJA_PS_SIGNAL, job, signo);
}


/* Only a held job that did not run is the parent's to let go. */

static void
ps_release(pja_job_t *job)
{
    if (job->state == PJA_JOB_COMMITTED) {
        ps_tell(PJA_PS_RELEASE, job, 0);
    }
}


const pja_exec_t  pja_exec_privsep = {
    ps_commit,
    ps_run,
    ps_signal,
    ps_release
};


/*
 * Network process: the parent's records that come unasked (a stop, a
 * job's exit), kept ones first.  1 with *rep filled, 0 for none now, -1
 * when the parent is gone or broken.
 */

int
pja_ps_input(pja_ps_rep_t *rep, int block)
{
    int  rc, nfds, fds[PJA_PS_MAX_FDS];

    if (ps_stop) {
        memset(rep, 0, sizeof(pja_ps_rep_t));
        rep->type = PJA_PS_STOP;
        rep->status = ps_stop;
        ps_stop = 0;
        return 1;
    }

    if (ps_exited) {
        *rep = ps_exit_rep;
        ps_exited = 0;
        return 1;
    }

    if (!block) {
        return 0;
    }

    rc = ps_recv_rep(rep, fds, &nfds);

    if (rc == 1 && rep->type != PJA_PS_STOP && rep->type != PJA_PS_EXITED) {
        pja_log(PJA_LOG_ERR, "privsep: an answer nothing asked for");
        return -1;
    }

    return rc == 1 ? 1 : -1;
}


/* Parent: one answer. */

static void
ps_rep_init(pja_ps_rep_t *rep, int type, const char *id, const char *text)
{
    memset(rep, 0, sizeof(pja_ps_rep_t));
    rep->magic = PJA_PS_MAGIC;
    rep->type = (uint32_t) type;
    memcpy(rep->job_id, id, 33);

    if (text) {
        snprintf(rep->text, sizeof(rep->text), "%s", text);
    }
}


static int
ps_answer(int fd, int type, const char *id, const char *text)
{
    pja_ps_rep_t  rep;

    ps_rep_init(&rep, type, id, text);

    return pja_ps_send(fd, &rep, sizeof(pja_ps_rep_t), NULL, 0);
}


/*
 * Parent: reads and answers one request of the network process.  0, or
 * -1 when the network process is gone or sent what it may not (the
 * parent then ends the agent).
 */

int
pja_ps_serve(int fd, pja_job_t *job, const pja_conf_t *cf)
{
    int                   rc, nfds, fds[PJA_PS_MAX_FDS], out[2];
    char                 *file;
    const char           *why;
    pja_ps_rep_t          rep;
    static pja_ps_req_t   r;

    rc = pja_ps_recv(fd, &r, sizeof(pja_ps_req_t), fds, 1, &nfds);
    if (rc == 0) {
        return -1;
    }

    if (rc < 0) {
        pja_log(PJA_LOG_ERR, "privsep: malformed record from the network "
                "process");
        return -1;
    }

    why = pja_ps_req_check(&r);

    if (why == NULL
        && (nfds != (r.type == PJA_PS_COMMIT && r.has_file ? 1 : 0)))
    {
        why = "descriptors not as announced";
    }

    if (why) {
        if (nfds) {
            close(fds[0]);
        }
        pja_log(PJA_LOG_ERR, "privsep: refused a record of the network "
                "process: %s", why);
        return -1;
    }

    switch (r.type) {

    case PJA_PS_COMMIT:
        file = NULL;

        if (r.has_file) {
            file = ps_memfd_read(fds[0]);
            close(fds[0]);

            if (file == NULL) {
                return ps_answer(fd, PJA_PS_REFUSED, r.job_id,
                                 "cannot read the job's file");
            }
        }

        if (job->state == PJA_JOB_RUNNING) {
            why = "busy";
        } else {
            why = pja_exec->commit(job, cf, &r, file);
        }

        free(file);

        if (why) {
            return ps_answer(fd, PJA_PS_REFUSED, r.job_id, why);
        }

        ps_rep_init(&rep, PJA_PS_COMMITTED, job->id, job->cmdline);
        rep.kill_grace = job->kill_grace;
        rep.output_cap = (int64_t) job->output_cap;

        return pja_ps_send(fd, &rep, sizeof(rep), NULL, 0);

    case PJA_PS_RUN:
        if (job->state != PJA_JOB_COMMITTED || strcmp(job->id, r.job_id) != 0)
        {
            return ps_answer(fd, PJA_PS_REFUSED, r.job_id, "not committed");
        }

        why = pja_exec->run(job, cf);

        if (why) {
            rc = ps_answer(fd, PJA_PS_REFUSED, r.job_id, why);
            pja_job_clear(job);
            return rc;
        }

        /* the network process reads the output; ours are closed */
        nfds = 0;
        if (job->capture) {
            out[0] = job->out_fd;
            out[1] = job->err_fd;
            nfds = 2;
        }

        ps_rep_init(&rep, PJA_PS_STARTED, job->id, NULL);
        rep.pid = (int32_t) job->pid;

        rc = pja_ps_send(fd, &rep, sizeof(rep), out, nfds);

        if (job->capture) {
            close(job->out_fd);
            close(job->err_fd);
            job->out_fd = -1;
            job->err_fd = -1;
        }

        return rc;

    case PJA_PS_SIGNAL:
        if (job->state == PJA_JOB_RUNNING && job->pid > 0
            && strcmp(job->id, r.job_id) == 0)
        {
            if (!job->ending) {
                job->ending = PJA_END_ABORT;
            }
            pja_exec->signal(job, r.signo);
        }

        return 0;

    default: /* PJA_PS_RELEASE */
        if (job->state == PJA_JOB_COMMITTED
            && strcmp(job->id, r.job_id) == 0)
        {
            pja_log(PJA_LOG_INFO, "job %s: released", job->id);
            pja_job_clear(job);
        }

        return 0;
    }
}


/* Parent: the job was reaped; the network process reports it. */

int
pja_ps_exited(int fd, pja_job_t *job, int status)
{
    pja_ps_rep_t  rep;

    ps_rep_init(&rep, PJA_PS_EXITED, job->id, NULL);
    rep.status = status;

    pja_job_clear(job);

    return pja_ps_send(fd, &rep, sizeof(rep), NULL, 0);
}


/* Parent: the network process is to stop (count: 1, or 2 at once). */

int
pja_ps_stop(int fd, int count)
{
    pja_ps_rep_t  rep;

    ps_rep_init(&rep, PJA_PS_STOP, "00000000000000000000000000000000", NULL);
    rep.status = count;

    return pja_ps_send(fd, &rep, sizeof(rep), NULL, 0);
}


/*
 * Started as root: the spool becomes the user's, then a socketpair and a
 * fork.  In the parent: the network process's pid, *fd the parent's end.
 * In the network process: 0, with root dropped for good, the spool the
 * working directory, pja_exec the parent.  -1 when nothing was split.
 */

pid_t
pja_ps_split(const char *user, int *fd)
{
    int             sv[2];
    uid_t           uid;
    gid_t           gid;
    pid_t           pid;
    struct passwd  *pw;

    errno = 0;
    pw = getpwnam(user);
    if (pw == NULL) {
        pja_log(PJA_LOG_ERR, "privsep: unknown user %s", user);
        return -1;
    }

    if (pw->pw_uid == 0) {
        pja_log(PJA_LOG_ERR, "privsep: the user (%s) must not be root", user);
        return -1;
    }

    uid = pw->pw_uid;
    gid = pw->pw_gid;

    if (pja_store_own(uid, gid) != 0
        || pja_ps_socketpair(sv) != 0)
    {
        return -1;
    }

    pid = fork();

    if (pid == -1) {
        pja_log(PJA_LOG_ERR, "fork(): %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -1;
    }

    if (pid > 0) {
        close(sv[1]);
        *fd = sv[0];
        pja_log(PJA_LOG_INFO, "privsep: network process %ld, root process "
                "%ld", (long) pid, (long) getpid());
        return pid;
    }

    close(sv[0]);

    /* the parent's signals are ours by record (PJA_PS_STOP) */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);

    if (pja_store_enter() != 0 || pja_ps_drop(user, uid, gid) != 0) {
        _exit(1);
    }

    pja_ps_fd = sv[1];
    pja_exec = &pja_exec_privsep;
    return 0;
}
