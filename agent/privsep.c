/*
 * pushjobs-agent: privilege separation, the pieces both processes share.
 *
 * The records the network process and the root parent exchange over a
 * SOCK_SEQPACKET socketpair (fixed size, never JSON), their validation,
 * descriptor passing with SCM_RIGHTS, and the network process's drop to
 * an unprivileged user.  See agent/README.md, "Privilege separation".
 */

#define _GNU_SOURCE             /* setresuid(), setresgid() */

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "pja.h"


static int ps_string_ok(const char *s, size_t size);


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
 * whitelist and allowed_users are checked afterwards, against the
 * parent's own configuration.
 */

const char *
pja_ps_req_check(const pja_ps_req_t *r)
{
    size_t       i, n, len;
    const char  *p;

    if (r->magic != PJA_PS_MAGIC) {
        return "bad magic";
    }

    if (!pja_valid_job_id(r->job_id)) {
        return "bad job id";
    }

    switch (r->type) {

    case PJA_PS_RUN:
        if (!ps_string_ok(r->command, sizeof(r->command))
            || r->command[0] == '\0')
        {
            return "bad command";
        }

        if (!ps_string_ok(r->user, sizeof(r->user))) {
            return "bad user";
        }

        if (!ps_string_ok(r->dir, sizeof(r->dir))
            || (r->dir[0] != '\0' && r->dir[0] != '/'))
        {
            return "bad dir";
        }

        if (r->capture > 1) {
            return "bad capture";
        }

        if (r->nenv > PJA_PS_ENV_COUNT || r->env_len > sizeof(r->env)) {
            return "env over its bounds";
        }

        /* nenv "K=V" strings, each NUL-terminated, filling env_len. */
        p = r->env;
        len = r->env_len;

        for (i = 0; i < r->nenv; i++) {
            n = strnlen(p, len);

            if (n == len || !ps_string_ok(p, n + 1) || p[0] == '='
                || memchr(p, '=', n) == NULL)
            {
                return "bad env";
            }

            p += n + 1;
            len -= n + 1;
        }

        if (len != 0) {
            return "bad env length";
        }

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

    if (len == 0) {
        return 0;
    }

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
pja_ps_drop(const char *user)
{
    uid_t           uid;
    gid_t           gid;
    struct passwd  *pw;

    errno = 0;
    pw = getpwnam(user);
    if (pw == NULL) {
        pja_log(PJA_LOG_ERR, "privsep: unknown user %s", user);
        return -1;
    }

    uid = pw->pw_uid;
    gid = pw->pw_gid;

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


/*
 * The root parent's own decision on a run request, after
 * pja_ps_req_check(): the command is resolved against the parent's copy
 * of the whitelist (whatever the network process resolved does not
 * count), and a user must exist and be in allowed_users.  Returns the
 * command line to run (malloc()ed), or NULL and the reason in *why.
 */

char *
pja_ps_req_resolve(const pja_conf_t *cf, const pja_ps_req_t *r,
    const char **why)
{
    char                  *cmdline, **argv;
    const pja_wl_entry_t  *e;

    *why = pja_ps_req_check(r);
    if (*why) {
        return NULL;
    }

    if (r->type != PJA_PS_RUN) {
        *why = "not a run request";
        return NULL;
    }

    if (r->user[0] != '\0') {
        if (getpwnam(r->user) == NULL) {
            *why = "unknown user";
            return NULL;
        }

        if (!pja_conf_user_allowed(cf, r->user)) {
            *why = "user not allowed (allowed_users)";
            return NULL;
        }
    }

    cmdline = pja_wl_resolve(cf, r->command, &e);
    if (cmdline == NULL) {
        *why = "command not in the whitelist";
        return NULL;
    }

    argv = pja_argv_split(cmdline);
    if (argv == NULL) {
        free(cmdline);
        *why = "bad command line in the whitelist";
        return NULL;
    }

    pja_argv_free(argv);
    return cmdline;
}
