/*
 * pushjobs-agent: the executor.  One job at a time: commit checks, then
 * fork/exec of the resolved command line without a shell, in its own
 * process group, as the requested user, with output captured through
 * pipes read by the poll loop.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <yajl/yajl_gen.h>

#include "pja.h"


extern char  **environ;


void
pja_job_clear(pja_job_t *job)
{
    size_t  i;

    if (job->state != PJA_JOB_IDLE) {
        pja_exec->release(job);
    }

    if (job->out_fd != -1) {
        close(job->out_fd);
    }

    if (job->err_fd != -1) {
        close(job->err_fd);
    }

    if (job->file_path) {
        if (unlink(job->file_path) != 0 && errno != ENOENT) {
            pja_log(PJA_LOG_WARN, "cannot remove %s: %s", job->file_path,
                    strerror(errno));
        }
        free(job->file_path);
    }

    if (job->file_dir) {
        if (rmdir(job->file_dir) != 0 && errno != ENOENT) {
            pja_log(PJA_LOG_WARN, "cannot remove %s: %s", job->file_dir,
                    strerror(errno));
        }
        free(job->file_dir);
    }

    if (job->lock_fd != -1) {
        close(job->lock_fd);     /* releases the flock */
    }

    for (i = 0; i < job->nenv; i++) {
        free(job->env[i]);
    }

    free(job->env);
    free(job->command);
    free(job->cmdline);
    free(job->user);
    free(job->dir);
    free(job->file);
    free(job->lock_path);
    pja_buf_free(&job->out);
    pja_buf_free(&job->err);

    memset(job, 0, sizeof(pja_job_t));
    job->out_fd = -1;
    job->err_fd = -1;
    job->lock_fd = -1;
}


void
pja_job_uncommit(pja_job_t *job)
{
    if (job->state == PJA_JOB_COMMITTED) {
        pja_log(PJA_LOG_INFO, "job %s: uncommitted", job->id);
        pja_job_clear(job);
    }
}


static int
job_env_allowed(const pja_conf_t *cf, const char *key, size_t len)
{
    size_t  i;

    for (i = 0; i < cf->nallowed_env; i++) {
        if (cf->allowed_env[i] && strlen(cf->allowed_env[i]) == len
            && strncmp(cf->allowed_env[i], key, len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * The job's env from the record's "K=V" strings: a name in
 * allowed_overwritable_env_vars is passed as it is, every other one as
 * CHEF_PUSH_ENV_K.
 */

static const char *
job_set_env(pja_job_t *job, const pja_conf_t *cf, const pja_ps_req_t *r)
{
    size_t       i, n;
    const char  *p, *eq;
    pja_buf_t    b = { NULL, 0, 0 };

    if (r->nenv == 0) {
        return NULL;
    }

    job->env = calloc(r->nenv + 1, sizeof(char *));
    if (job->env == NULL) {
        return "out of memory";
    }

    p = r->env;

    for (i = 0; i < r->nenv; i++, p += n + 1) {
        n = strlen(p);
        eq = strchr(p, '=');

        b.len = 0;

        if (job_env_allowed(cf, p, (size_t) (eq - p))) {
            pja_buf_addstr(&b, p);
        } else {
            pja_buf_printf(&b, "CHEF_PUSH_ENV_%s", p);
        }

        if (b.data == NULL || pja_buf_cstr(&b) != 0) {
            pja_buf_free(&b);
            return "out of memory";
        }

        job->env[job->nenv] = pja_strdup(b.data);
        if (job->env[job->nenv] == NULL) {
            pja_buf_free(&b);
            return "out of memory";
        }
        job->nenv++;
    }

    pja_buf_free(&b);
    return NULL;
}


/*
 * A lock held by someone else (a running chef-client) refuses the commit;
 * a free one is taken and held until the job ends.  The file is created
 * if missing, as chef-client does.
 */

static const char *
job_take_lock(pja_job_t *job, const char *path)
{
    int  fd;

    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd == -1) {
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    }

    if (fd == -1) {
        pja_log(PJA_LOG_ERR, "job %s: cannot open lock %s: %s", job->id,
                path, strerror(errno));
        return "cannot open the lock file";
    }

    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        if (errno == EWOULDBLOCK) {
            return "lock held";
        }
        pja_log(PJA_LOG_ERR, "job %s: flock(%s): %s", job->id, path,
                strerror(errno));
        return "cannot lock the lock file";
    }

    job->lock_fd = fd;
    pja_log(PJA_LOG_INFO, "job %s: holding lock %s", job->id, path);
    return NULL;
}


/* Copies a string field into the record's array; -1 when it does not fit. */

static int
job_record_str(char *dst, size_t size, const char *src)
{
    size_t  n;

    n = src ? strlen(src) : 0;

    if (n >= size) {
        return -1;
    }

    memcpy(dst, src ? src : "", n);
    dst[n] = '\0';
    return 0;
}


/*
 * A commit message as the fixed-format record both executors take: the
 * strings bounded, the env as "K=V" with the values made strings and the
 * names as the server sent them (the executor renames them).  NULL, or
 * the reason to refuse.
 */

static const char *
job_commit_record(pja_ps_req_t *r, yajl_val msg)
{
    size_t        i, n, klen, vlen;
    const char   *key, *val;
    yajl_val      env, v;

    memset(r, 0, sizeof(pja_ps_req_t));
    r->magic = PJA_PS_MAGIC;
    r->type = PJA_PS_COMMIT;

    if (job_record_str(r->job_id, sizeof(r->job_id),
                       pja_json_get_str(msg, "job_id")) != 0)
    {
        return "bad job id";
    }

    if (pja_json_get_str(msg, "command") == NULL) {
        return "no command";
    }

    if (job_record_str(r->command, sizeof(r->command),
                       pja_json_get_str(msg, "command")) != 0)
    {
        return "command too long";
    }

    if (job_record_str(r->user, sizeof(r->user),
                       pja_json_get_str(msg, "user")) != 0)
    {
        return "user too long";
    }

    if (job_record_str(r->dir, sizeof(r->dir),
                       pja_json_get_str(msg, "dir")) != 0)
    {
        return "dir too long";
    }

    r->capture = pja_json_get_bool(msg, "capture", 0) ? 1 : 0;
    r->has_file = pja_json_get_str(msg, "file") ? 1 : 0;

    env = pja_json_get(msg, "env");

    if (env == NULL || YAJL_IS_NULL(env)) {
        return NULL;
    }

    if (!YAJL_IS_OBJECT(env)) {
        return "env is not an object";
    }

    n = env->u.object.len;

    for (i = 0; i < n; i++) {
        key = env->u.object.keys[i];
        v = env->u.object.values[i];

        if (key[0] == '\0' || strchr(key, '=')) {
            pja_log(PJA_LOG_WARN, "job %s: env key \"%s\" ignored", r->job_id,
                    key);
            continue;
        }

        if (YAJL_IS_STRING(v)) {
            val = v->u.string;
        } else if (YAJL_IS_NUMBER(v)) {
            val = YAJL_GET_NUMBER(v);
        } else if (YAJL_IS_TRUE(v)) {
            val = "true";
        } else if (YAJL_IS_FALSE(v)) {
            val = "false";
        } else {
            pja_log(PJA_LOG_WARN, "job %s: env \"%s\" is not a string, "
                    "ignored", r->job_id, key);
            continue;
        }

        klen = strlen(key);
        vlen = strlen(val);

        if (r->nenv == PJA_PS_ENV_COUNT
            || klen + vlen + 2 > sizeof(r->env) - r->env_len)
        {
            return "env too large";
        }

        memcpy(r->env + r->env_len, key, klen);
        r->env[r->env_len + klen] = '=';
        memcpy(r->env + r->env_len + klen + 1, val, vlen + 1);
        r->env_len += (uint32_t) (klen + vlen + 2);
        r->nenv++;
    }

    return NULL;
}


/* Returns NULL when committed, else the reason to refuse. */

const char *
pja_job_commit(pja_job_t *job, const pja_conf_t *cf, yajl_val msg)
{
    long long            rt;
    const char          *reason;
    static pja_ps_req_t  r;

    reason = job_commit_record(&r, msg);

    if (reason == NULL) {
        reason = pja_ps_req_check(&r);
    }

    if (reason == NULL) {
        reason = pja_exec->commit(job, cf, &r, pja_json_get_str(msg, "file"));
    }

    if (reason) {
        return reason;
    }

    rt = pja_json_get_int(msg, "run_timeout", 0);
    job->run_timeout = rt > 0 ? (rt < 100000000 ? (int) rt : 100000000) : 0;
    job->committed_at = pja_now_ms();

    return NULL;
}


/*
 * The executor's own decision on a commit (the root parent's, when the
 * agent is split): the command is resolved against this process's
 * whitelist, the user must exist and be allowed, the dir exist, the file
 * decode; then the lock is taken.  NULL when the job is held.
 */

const char *
pja_job_prepare(pja_job_t *job, const pja_conf_t *cf, const pja_ps_req_t *r,
    const char *file)
{
    const char           *reason;
    char                 *cmdline, **argv;
    struct stat           st;
    struct passwd        *pw;
    pja_buf_t             tmp = { NULL, 0, 0 };
    const pja_wl_entry_t *e;

    cmdline = pja_wl_resolve(cf, r->command, &e);
    if (cmdline == NULL) {
        return "command not in the whitelist";
    }

    argv = pja_argv_split(cmdline);
    if (argv == NULL) {
        free(cmdline);
        return "bad command line in the whitelist";
    }
    pja_argv_free(argv);

    reason = NULL;

    if (r->user[0]) {
        errno = 0;
        pw = getpwnam(r->user);
        if (pw == NULL) {
            reason = "unknown user";
        } else if (geteuid() != 0) {
            reason = "user given but the agent does not run as root";
        } else if (!pja_conf_user_allowed(cf, r->user)) {
            reason = "user not allowed (allowed_users)";
        }
    }

    if (reason == NULL && r->dir[0]) {
        if (stat(r->dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
            reason = "missing dir";
        }
    }

    if (reason == NULL && file) {
        if (strncmp(file, "raw:", 4) == 0) {
            /* ok */
        } else if (strncmp(file, "base64:", 7) == 0) {
            if (pja_base64_decode(file + 7, strlen(file + 7), &tmp) != 0) {
                reason = "bad file";
            }
            pja_buf_free(&tmp);
        } else {
            reason = "bad file";
        }
    }

    if (reason) {
        free(cmdline);
        return reason;
    }

    pja_job_clear(job);

    memcpy(job->id, r->job_id, 33);

    job->lock_path = pja_conf_lock_path(cf, e);
    if (job->lock_path) {
        reason = job_take_lock(job, job->lock_path);
        if (reason) {
            free(cmdline);
            pja_job_clear(job);
            return reason;
        }
    }

    job->cmdline = cmdline;
    job->command = pja_strdup(r->command);
    job->user = r->user[0] ? pja_strdup(r->user) : NULL;
    job->dir = r->dir[0] ? pja_strdup(r->dir) : NULL;
    job->file = file ? pja_strdup(file) : NULL;
    job->capture = (int) r->capture;
    job->output_cap = (size_t) cf->output_cap;
    job->kill_grace = cf->kill_grace;

    reason = job_set_env(job, cf, r);

    if (reason == NULL && (job->command == NULL
                           || (r->user[0] && job->user == NULL)
                           || (r->dir[0] && job->dir == NULL)
                           || (file && job->file == NULL)))
    {
        reason = "out of memory";
    }

    if (reason) {
        pja_job_clear(job);
        return reason;
    }

    job->state = PJA_JOB_COMMITTED;

    pja_log(PJA_LOG_INFO, "job %s: committed to \"%s\" (%s)", job->id,
            job->command, job->cmdline);
    return NULL;
}


/*
 * file_dir is shared by all jobs: owned by the agent's user, not writable
 * by others, and only traversable by them (0711), so that a job's user can
 * reach its own private directory but no one can list or replace entries.
 */

static int
job_file_dir_ok(const char *dir)
{
    struct stat  st;

    if (pja_mkdir_p(dir, 0711) != 0) {
        pja_log(PJA_LOG_ERR, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }

    if (lstat(dir, &st) != 0) {
        pja_log(PJA_LOG_ERR, "cannot stat %s: %s", dir, strerror(errno));
        return -1;
    }

    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid()
        || (st.st_mode & 022))
    {
        pja_log(PJA_LOG_ERR, "file_dir %s must be a directory owned by the "
                "agent's user and writable by no one else", dir);
        return -1;
    }

    /* The agent's umask made it 0700: jobs of other users must traverse it. */
    if ((st.st_mode & 0111) != 0111
        && chmod(dir, (st.st_mode & 0755) | 0111) != 0)
    {
        pja_log(PJA_LOG_ERR, "cannot chmod %s: %s", dir, strerror(errno));
        return -1;
    }

    return 0;
}


/*
 * The job's file: FILE_DIR/pushy-JOBID-XXXXXX/file, the directory 0700 and
 * the file 0600, both owned by the job's user; both removed when the job
 * ends (pja_job_clear).
 */

static int
job_write_file(pja_job_t *job, const pja_conf_t *cf, struct passwd *pw)
{
    int        fd;
    size_t     off;
    ssize_t    w;
    pja_buf_t  path = { NULL, 0, 0 }, data = { NULL, 0, 0 };

    if (job_file_dir_ok(cf->file_dir) != 0) {
        return -1;
    }

    if (strncmp(job->file, "base64:", 7) == 0) {
        if (pja_base64_decode(job->file + 7, strlen(job->file + 7), &data)
            != 0)
        {
            return -1;
        }
    } else if (pja_buf_addstr(&data, job->file + 4) != 0) {
        return -1;
    }

    if (pja_buf_printf(&path, "%s/pushy-%s-XXXXXX", cf->file_dir, job->id)
        != 0 || pja_buf_cstr(&data) != 0)
    {
        goto failed;
    }

    if (mkdtemp(path.data) == NULL) {
        pja_log(PJA_LOG_ERR, "cannot create a directory in %s: %s",
                cf->file_dir, strerror(errno));
        goto failed;
    }

    job->file_dir = pja_strdup(path.data);
    if (job->file_dir == NULL) {
        rmdir(path.data);
        goto failed;
    }

    if (pw && geteuid() == 0 && chown(job->file_dir, pw->pw_uid, pw->pw_gid)
        != 0)
    {
        pja_log(PJA_LOG_ERR, "cannot chown %s: %s", job->file_dir,
                strerror(errno));
        goto failed;
    }

    if (pja_buf_addstr(&path, "/file") != 0) {
        goto failed;
    }

    fd = open(path.data, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
              0600);
    if (fd == -1) {
        pja_log(PJA_LOG_ERR, "cannot create %s: %s", path.data,
                strerror(errno));
        goto failed;
    }

    job->file_path = path.data;
    path.data = NULL;

    for (off = 0; off < data.len; off += (size_t) w) {
        w = write(fd, data.data + off, data.len - off);
        if (w < 0) {
            if (errno == EINTR) {
                w = 0;
                continue;
            }
            pja_log(PJA_LOG_ERR, "cannot write %s: %s", job->file_path,
                    strerror(errno));
            close(fd);
            goto failed;
        }
    }

    if (fchmod(fd, 0600) != 0
        || (pw && geteuid() == 0 && fchown(fd, pw->pw_uid, pw->pw_gid) != 0))
    {
        pja_log(PJA_LOG_ERR, "cannot chmod/chown %s: %s", job->file_path,
                strerror(errno));
        close(fd);
        goto failed;
    }

    if (close(fd) != 0) {
        pja_log(PJA_LOG_ERR, "cannot write %s: %s", job->file_path,
                strerror(errno));
        goto failed;
    }

    pja_buf_free(&data);
    return 0;

failed:

    pja_buf_free(&path);
    pja_buf_free(&data);
    return -1;
}


/*
 * The child's environment: pointers into environ and job->env, plus up to
 * JOB_ENV_OWN strings of our own; the parent frees it after fork().
 */

#define JOB_ENV_OWN  8

typedef struct {
    char                 **env;
    size_t                 n;
    char                  *own[JOB_ENV_OWN];
    size_t                 nown;
} job_env_t;


/* Adds NAME=VALUE, replacing an entry of the same name. */

static void
job_env_put(job_env_t *e, char *kv)
{
    size_t  i, len;

    len = strcspn(kv, "=") + 1;

    for (i = 0; i < e->n; i++) {
        if (strncmp(e->env[i], kv, len) == 0) {
            e->env[i] = kv;
            return;
        }
    }

    e->env[e->n++] = kv;
}


static int
job_env_set(job_env_t *e, const char *name, const char *val)
{
    pja_buf_t  b = { NULL, 0, 0 };

    if (e->nown == JOB_ENV_OWN || pja_buf_printf(&b, "%s=%s", name, val) != 0)
    {
        pja_buf_free(&b);
        return -1;
    }

    e->own[e->nown++] = b.data;
    job_env_put(e, b.data);
    return 0;
}


static void
job_env_free(job_env_t *e)
{
    size_t  i;

    for (i = 0; i < e->nown; i++) {
        free(e->own[i]);
    }

    free(e->env);
    memset(e, 0, sizeof(job_env_t));
}


static int
job_env_build(job_env_t *e, pja_job_t *job, const pja_conf_t *cf,
    struct passwd *pw)
{
    size_t  n, i;

    memset(e, 0, sizeof(job_env_t));

    for (n = 0; environ[n]; n++) {
        /* void */
    }

    e->env = calloc(n + job->nenv + JOB_ENV_OWN + 1, sizeof(char *));
    if (e->env == NULL) {
        return -1;
    }

    for (i = 0; environ[i]; i++) {
        e->env[e->n++] = environ[i];
    }

    for (i = 0; i < job->nenv; i++) {
        job_env_put(e, job->env[i]);
    }

    if (job_env_set(e, "CHEF_PUSH_NODE_NAME", cf->node_name) != 0
        || job_env_set(e, "CHEF_PUSH_JOB_ID", job->id) != 0
        || (job->file_path
            && job_env_set(e, "CHEF_PUSH_JOB_FILE", job->file_path) != 0)
        || (pw && (job_env_set(e, "HOME", pw->pw_dir) != 0
                   || job_env_set(e, "USER", pw->pw_name) != 0
                   || job_env_set(e, "LOGNAME", pw->pw_name) != 0)))
    {
        job_env_free(e);
        return -1;
    }

    e->env[e->n] = NULL;
    return 0;
}


static void
job_child_fail(int errfd, const char *what)
{
    char     msg[256];
    int      n;
    ssize_t  w;

    n = snprintf(msg, sizeof(msg), "%s: %s", what, strerror(errno));
    w = write(errfd, msg, (size_t) (n > 0 ? n : 0));
    (void) w;
    _exit(127);
}


static int
job_takes_lock_itself(const char *prog)
{
    const char  *base;

    base = strrchr(prog, '/');
    base = base ? base + 1 : prog;

    return strcmp(base, "chef-client") == 0
           || strcmp(base, "cinc-client") == 0;
}


/*
 * What the kernel says about one process: /proc/PID/stat's state, process
 * group, session and start time (clock ticks after boot).
 */

typedef struct {
    char                   state;
    pid_t                  pgrp;
    pid_t                  sid;
    unsigned long long     start;
} job_proc_t;


static int
job_proc_stat(pid_t pid, job_proc_t *p)
{
    int       fd, pgrp, sid;
    char      path[64], buf[1024], *s;
    ssize_t   n;

    snprintf(path, sizeof(path), "/proc/%ld/stat", (long) pid);

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }

    do {
        n = read(fd, buf, sizeof(buf) - 1);
    } while (n < 0 && errno == EINTR);

    close(fd);

    if (n <= 0) {
        return -1;
    }

    buf[n] = '\0';

    /* the command name, in parentheses, may hold anything */
    s = strrchr(buf, ')');
    if (s == NULL
        || sscanf(s + 1, " %c %*d %d %d %*d %*d %*u %*u %*u %*u %*u %*u %*u"
                  " %*d %*d %*d %*d %*d %*d %llu", &p->state, &pgrp, &sid,
                  &p->start) != 4)
    {
        return -1;
    }

    p->pgrp = (pid_t) pgrp;
    p->sid = (pid_t) sid;
    return 0;
}


/* This boot's id: process start times count from the boot. */

static int
job_boot_id(char *id, size_t size)
{
    int      fd;
    ssize_t  n;

    fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }

    do {
        n = read(fd, id, size - 1);
    } while (n < 0 && errno == EINTR);

    close(fd);

    if (n <= 0) {
        return -1;
    }

    id[n] = '\0';
    id[strcspn(id, "\n")] = '\0';

    return id[0] ? 0 : -1;
}


/*
 * Records the job's process group (SPOOL/JOBID.run, store.c) before its
 * command runs: the group's number (the leader's pid, as the child calls
 * setsid()), the leader's start time and the boot it started in, which
 * together tell the leader apart from a later process given the same pid,
 * and the job's file directory.  The record goes when the job's report
 * is spooled (session.c); pja_job_recover() reads the ones left by an agent
 * process that died.
 */

static int
job_record(pja_job_t *job, pid_t pid)
{
    int         rc;
    char        boot[64];
    pja_buf_t   b = { NULL, 0, 0 };
    job_proc_t  p;

    if (job_proc_stat(pid, &p) != 0) {
        pja_log(PJA_LOG_ERR, "job %s: cannot read /proc/%ld/stat: %s",
                job->id, (long) pid, strerror(errno));
        return -1;
    }

    if (job_boot_id(boot, sizeof(boot)) != 0) {
        pja_log(PJA_LOG_ERR, "job %s: cannot read the boot id: %s", job->id,
                strerror(errno));
        return -1;
    }

    if (pja_buf_printf(&b, "job_id %s\npgid %ld\nstart %llu\nboot %s\n",
                       job->id, (long) pid, p.start, boot) != 0
        || (job->file_dir && strchr(job->file_dir, '\n') == NULL
            && pja_buf_printf(&b, "file_dir %s\n", job->file_dir) != 0))
    {
        pja_buf_free(&b);
        return -1;
    }

    rc = pja_store_run_write(job->id, b.data);
    pja_buf_free(&b);

    return rc;
}


/* Starts the committed job; NULL on success, else the reason. */

const char *
pja_job_run(pja_job_t *job, const pja_conf_t *cf)
{
    return pja_exec->run(job, cf);
}


/* The agent starts the job itself: fork, setsid, the user, execvp. */

static const char *
job_local_run(pja_job_t *job, const pja_conf_t *cf)
{
    int              errp[2], outp[2], errpipe[2], gate[2], devnull, i;
    char           **argv, why[256], go;
    job_env_t        env;
    pid_t            pid;
    ssize_t          n;
    struct passwd   *pw, pwcopy;
    static char      reason[300];

    pw = NULL;

    if (job->user) {
        pw = getpwnam(job->user);
        if (pw == NULL) {
            return "unknown user";
        }
        pwcopy = *pw;
        pw = &pwcopy;
    }

    if (job->file && job_write_file(job, cf, pw) != 0) {
        return "cannot write the job's file";
    }

    argv = pja_argv_split(job->cmdline);
    if (argv == NULL) {
        return "bad command line";
    }

    if (job_env_build(&env, job, cf, pw) != 0) {
        pja_argv_free(argv);
        return "out of memory";
    }

    /*
     * chef-client takes its run lock itself and would wait for ours: hand
     * the lock over by releasing it as the command starts.
     */
    if (job->lock_fd != -1 && job_takes_lock_itself(argv[0])) {
        pja_log(PJA_LOG_INFO, "job %s: releasing lock %s for %s", job->id,
                job->lock_path, argv[0]);
        close(job->lock_fd);
        job->lock_fd = -1;
    }


    outp[0] = outp[1] = errp[0] = errp[1] = -1;

    if (pja_pipe(errpipe, 0) != 0) {
        pja_argv_free(argv);
        job_env_free(&env);
        return "pipe() failed";
    }

    if (pja_pipe(gate, 0) != 0) {
        close(errpipe[0]);
        close(errpipe[1]);
        pja_argv_free(argv);
        job_env_free(&env);
        return "pipe() failed";
    }

    if (job->capture
        && (pja_pipe(outp, 0) != 0 || pja_pipe(errp, 0) != 0))
    {
        for (i = 0; i < 2; i++) {
            if (outp[i] != -1) {
                close(outp[i]);
            }
        }
        close(errpipe[0]);
        close(errpipe[1]);
        close(gate[0]);
        close(gate[1]);
        pja_argv_free(argv);
        job_env_free(&env);
        return "pipe() failed";
    }

    pid = fork();

    if (pid == 0) {
        close(errpipe[0]);
        close(gate[1]);

        if (setsid() == -1) {
            job_child_fail(errpipe[1], "setsid()");
        }

        devnull = open("/dev/null", O_RDWR);
        if (devnull == -1) {
            job_child_fail(errpipe[1], "open(/dev/null)");
        }

        if (dup2(devnull, 0) == -1
            || dup2(job->capture ? outp[1] : devnull, 1) == -1
            || dup2(job->capture ? errp[1] : devnull, 2) == -1)
        {
            job_child_fail(errpipe[1], "dup2()");
        }

        if (devnull > 2) {
            close(devnull);
        }

        signal(SIGPIPE, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        signal(SIGHUP, SIG_DFL);

        {
            sigset_t  none;

            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
        }

        /*
         * Nothing runs before the agent has recorded the process group
         * (job_record()): an agent that dies before that, or cannot record
         * it, closes the gate without a byte.
         */
        do {
            n = read(gate[0], &go, 1);
        } while (n < 0 && errno == EINTR);

        if (n != 1) {
            _exit(127);
        }
        close(gate[0]);

        if (pw && geteuid() == 0) {
            if (initgroups(pw->pw_name, pw->pw_gid) != 0) {
                job_child_fail(errpipe[1], "initgroups()");
            }
            if (setgid(pw->pw_gid) != 0) {
                job_child_fail(errpipe[1], "setgid()");
            }
            if (setuid(pw->pw_uid) != 0) {
                job_child_fail(errpipe[1], "setuid()");
            }
        }

        if (job->dir && chdir(job->dir) != 0) {
            job_child_fail(errpipe[1], "chdir()");
        } else if (job->dir == NULL && pw && chdir(pw->pw_dir) != 0
                   && chdir("/") != 0)
        {
            job_child_fail(errpipe[1], "chdir(/)");
        }

        environ = env.env;
        execvp(argv[0], argv);
        job_child_fail(errpipe[1], argv[0]);
    }

    close(errpipe[1]);
    close(gate[0]);
    if (job->capture) {
        close(outp[1]);
        close(errp[1]);
    }

    pja_argv_free(argv);
    job_env_free(&env);

    if (pid == -1) {
        close(errpipe[0]);
        close(gate[1]);
        if (job->capture) {
            close(outp[0]);
            close(errp[0]);
        }
        return "fork() failed";
    }

    if (job_record(job, pid) != 0) {
        close(gate[1]);
        close(errpipe[0]);
        waitpid(pid, NULL, 0);
        if (job->capture) {
            close(outp[0]);
            close(errp[0]);
        }
        return "cannot record the job's process group in the spool";
    }

    go = 1;
    if (write(gate[1], &go, 1) != 1) {
        pja_log(PJA_LOG_ERR, "job %s: write(gate): %s", job->id,
                strerror(errno));
    }
    close(gate[1]);

    /* The error pipe closes on a successful exec (O_CLOEXEC). */
    do {
        n = read(errpipe[0], why, sizeof(why) - 1);
    } while (n < 0 && errno == EINTR);

    close(errpipe[0]);

    if (n > 0) {
        why[n] = '\0';
        waitpid(pid, NULL, 0);
        pja_store_run_remove(job->id);
        if (job->capture) {
            close(outp[0]);
            close(errp[0]);
        }
        snprintf(reason, sizeof(reason), "cannot start: %s", why);
        pja_log(PJA_LOG_ERR, "job %s: %s", job->id, reason);
        return reason;
    }

    pja_job_started(job, pid, outp[0], errp[0]);

    pja_log(PJA_LOG_INFO, "job %s: running \"%s\" as pid %ld", job->id,
            job->cmdline, (long) pid);
    return NULL;
}


/* The job runs as pid, its output (when captured) on out_fd and err_fd. */

void
pja_job_started(pja_job_t *job, pid_t pid, int out_fd, int err_fd)
{
    job->pid = pid;
    job->state = PJA_JOB_RUNNING;

    /*
     * The server times the job out (and sends an abort) at run_timeout;
     * our own limit, a margin later, is for when it cannot tell us.
     */
    job->run_deadline = job->run_timeout
                        ? pja_now_ms() + ((int64_t) job->run_timeout
                                          + PJA_RUN_TIMEOUT_MARGIN) * 1000
                        : 0;

    if (job->capture) {
        job->out_fd = out_fd;
        job->err_fd = err_fd;
        pja_set_nonblock(job->out_fd);
        pja_set_nonblock(job->err_fd);
    }
}


/* Reads what a pipe holds; returns -1 (and closes it) on EOF. */

int
pja_job_read(pja_job_t *job, int fd)
{
    int         *pfd;
    char         chunk[16384];
    size_t       room;
    ssize_t      n;
    pja_buf_t   *b;

    if (fd == job->out_fd) {
        pfd = &job->out_fd;
        b = &job->out;
    } else if (fd == job->err_fd) {
        pfd = &job->err_fd;
        b = &job->err;
    } else {
        return -1;
    }

    for ( ;; ) {
        n = read(fd, chunk, sizeof(chunk));

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return 0;
            }
            n = 0;
        }

        if (n == 0) {
            close(fd);
            *pfd = -1;
            return -1;
        }

        room = b->len < job->output_cap ? job->output_cap - b->len : 0;

        if ((size_t) n > room) {
            if (!job->truncated) {
                pja_log(PJA_LOG_WARN, "job %s: output over %zu bytes, "
                        "truncated", job->id, job->output_cap);
            }
            job->truncated = 1;
            n = (ssize_t) room;
        }

        if (n && pja_buf_add(b, chunk, (size_t) n) != 0) {
            job->truncated = 1;
        }
    }
}


/* 1 when the job's process has been reaped, with its wait status. */

int
pja_job_reap(pja_job_t *job, int *status)
{
    pid_t  pid;

    if (job->state != PJA_JOB_RUNNING || job->pid <= 0) {
        return 0;
    }

    do {
        pid = waitpid(job->pid, status, WNOHANG);
    } while (pid == -1 && errno == EINTR);

    if (pid != job->pid) {
        return 0;
    }

    /*
     * A job being ended loses what is left of its process group at once:
     * children that ignored SIGTERM or outlived their parent.
     */
    if (job->ending && kill(-job->pid, SIGKILL) == 0) {
        pja_log(PJA_LOG_INFO, "job %s: killed what was left of process "
                "group %ld", job->id, (long) job->pid);
    }

    pja_job_exited(job);
    return 1;
}


/* The job's process is gone: what it wrote before is still in the pipes. */

void
pja_job_exited(pja_job_t *job)
{
    if (job->out_fd != -1) {
        (void) pja_job_read(job, job->out_fd);
    }
    if (job->err_fd != -1) {
        (void) pja_job_read(job, job->err_fd);
    }

    job->pid = 0;
}


/* SIGTERM or SIGKILL to the job's process group. */

void
pja_job_signal(pja_job_t *job, int signo)
{
    if (job->state != PJA_JOB_RUNNING || job->pid <= 0) {
        return;
    }

    pja_exec->signal(job, signo);
}


static void
job_local_signal(pja_job_t *job, int signo)
{
    if (kill(-job->pid, signo) != 0 && errno != ESRCH) {
        pja_log(PJA_LOG_ERR, "kill(%ld): %s", (long) -job->pid,
                strerror(errno));
    }
}


static void
job_local_release(pja_job_t *job)
{
    (void) job;
}


const pja_exec_t  pja_exec_local = {
    pja_job_prepare,
    job_local_run,
    job_local_signal,
    job_local_release
};

const pja_exec_t  *pja_exec = &pja_exec_local;


static const char  *job_end_names[] = {
    "", "aborting", "run_timeout passed,", "agent stopping,"
};


/*
 * Ends a running job: SIGTERM to its process group, SIGKILL after grace
 * seconds (or at once with force).  The first reason given is kept.
 */

void
pja_job_end(pja_job_t *job, int why, int force, int grace)
{
    if (job->state != PJA_JOB_RUNNING || job->pid <= 0) {
        return;
    }

    if (!job->ending || force) {
        if (!job->ending) {
            job->ending = why;
        }

        pja_log(PJA_LOG_INFO, "job %s: %s %s process group %ld", job->id,
                job_end_names[why], force ? "killing" : "terminating",
                (long) job->pid);

        pja_job_signal(job, force ? SIGKILL : SIGTERM);

        job->kill_at = force ? 0 : pja_now_ms() + (int64_t) grace * 1000;
    }
}


void
pja_job_timers(pja_job_t *job, int64_t now)
{
    if (job->state == PJA_JOB_RUNNING && !job->ending && job->run_deadline
        && now >= job->run_deadline)
    {
        pja_log(PJA_LOG_WARN, "job %s: still running after its run_timeout "
                "of %d s", job->id, job->run_timeout);
        pja_job_end(job, PJA_END_TIMEOUT, 0, job->kill_grace);
    }

    if (job->state == PJA_JOB_RUNNING && job->ending && job->kill_at
        && now >= job->kill_at)
    {
        pja_log(PJA_LOG_WARN, "job %s: still running %d s after SIGTERM, "
                "killing its process group", job->id, job->kill_grace);
        job->kill_at = 0;
        pja_job_signal(job, SIGKILL);
    }

    if (job->state == PJA_JOB_COMMITTED
        && now - job->committed_at >= PJA_COMMIT_TIMEOUT)
    {
        pja_log(PJA_LOG_WARN, "job %s: committed but not run for %d s, "
                "dropped", job->id, PJA_COMMIT_TIMEOUT / 1000);
        pja_job_clear(job);
    }
}


static int
job_add_output(yajl_gen g, const char *key, pja_buf_t *b, size_t from,
    size_t cap)
{
    int     rc;
    char   *s, name[32];
    size_t  n;

    n = b->len - from;

    if (from) {
        snprintf(name, sizeof(name), "%s_offset", key);
        if (pja_json_int(g, name, (long long) from) != 0) {
            return -1;
        }
    }

    s = pja_base64_encode(b->data ? b->data + from : "", n < cap ? n : cap);
    if (s == NULL) {
        return -1;
    }

    rc = pja_json_str(g, key, s);
    free(s);
    return rc;
}


/*
 * Builds the final report of a reaped job.  Captured output is cut so that
 * the message fits in the server's max_message_size.  A short report
 * (docs/protocol.md §2.1) leaves out what was streamed on this channel
 * (out_sent, err_sent bytes of each stream) and names where its own bytes
 * start: stdout_offset, stderr_offset.
 */

char *
pja_job_report(pja_job_t *job, int status, size_t max_size, int short_form)
{
    int       truncated;
    size_t    cap, out_from, err_from;
    yajl_gen  g;

    if (job->ending == PJA_END_ABORT) {
        g = pja_json_begin("aborted");
        if (g == NULL || pja_json_str(g, "job_id", job->id) != 0) {
            goto failed;
        }
        return pja_json_end(g);
    }

    cap = job->output_cap;
    truncated = job->truncated;
    out_from = short_form ? job->out_sent : 0;
    err_from = short_form ? job->err_sent : 0;

    if (max_size > 1024
        && (job->out.len - out_from + job->err.len - err_from) / 3 * 4 + 1024
           > max_size)
    {
        cap = (max_size - 1024) / 2 / 4 * 3;
        if (job->out.len - out_from > cap || job->err.len - err_from > cap) {
            truncated = 1;
        }
    }

    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        g = pja_json_begin("succeeded");
        if (g == NULL || pja_json_str(g, "job_id", job->id) != 0
            || pja_json_int(g, "exit_status", 0) != 0)
        {
            goto failed;
        }

    } else {
        g = pja_json_begin("failed");
        if (g == NULL || pja_json_str(g, "job_id", job->id) != 0) {
            goto failed;
        }

        if (WIFSIGNALED(status)) {
            if (pja_json_int(g, "signal", WTERMSIG(status)) != 0) {
                goto failed;
            }
        } else if (pja_json_int(g, "exit_status", WEXITSTATUS(status)) != 0) {
            goto failed;
        }
    }

    if (job->capture) {
        if (job_add_output(g, "stdout", &job->out, out_from, cap) != 0
            || job_add_output(g, "stderr", &job->err, err_from, cap) != 0
            || pja_json_bool(g, "truncated", truncated) != 0)
        {
            goto failed;
        }
    }

    return pja_json_end(g);

failed:

    if (g) {
        yajl_gen_free(g);
    }

    pja_log(PJA_LOG_ERR, "job %s: cannot build the report", job->id);
    return NULL;
}


/*
 * Recovery of the jobs of an agent process that died while they ran
 * (kill -9, a crash, the OOM killer): their process groups ran on, with no
 * one to end them at run_timeout or on an abort, and no one to report them.
 *
 * At start, before the channel opens, every SPOOL/JOBID.run without a
 * spooled report (job_record()) is such a job.  Its process group, if it is
 * still the job's, is ended as an abort ends it: SIGTERM, SIGKILL after
 * kill_grace_period.  The job is then not held: the hello does not list
 * it, and the server records its node "crashed" (agent_hello(): a running
 * node whose agent does not hold its job went down), at once, or, after
 * pushjobs_node_lost_timeout, already did; a node that is already final
 * stays as it is.  The agent sends no report of its own: it cannot know how
 * the command ended, and one final result per node is the server's.
 *
 * Whether the group is still the job's.  A process group's number is its
 * first leader's pid, and Linux hands out no pid that is still in use as a
 * process group id (nor one in use as a pid or session id).  So:
 *
 *   - the leader alive (or a zombie) with the recorded start time, in this
 *     boot: it is the job's leader, and its group is the job's;
 *   - a process with the group's number but another start time: the number
 *     was free at some point, hence the job's group had ended; what is
 *     there now is someone else's, and left alone;
 *   - no process with that number but live members in the group: the
 *     leader exited and its group lives on, or the job's group ended and a
 *     newer leader with the reused number did too.  A member is shown to be
 *     the job's by what no unrelated process has: it is in the session the
 *     leader created (same number), started no earlier than the leader, and
 *     its environment (/proc/PID/environ) carries the job's
 *     CHEF_PUSH_JOB_ID, 128 random bits.  Members that show none of this
 *     (a job that cleared its environment) are left alone, with a warning:
 *     better a process left running than an unrelated one killed.
 *
 * Between the check and the signal, and between two checks while waiting,
 * the group would have to end and its number be handed out again to a new
 * group leader.  Linux allocates pids cyclically, so a freed number comes
 * back only after pid_max others: not within the 100 ms between checks.
 *
 * Why not PR_SET_PDEATHSIG or a subreaper instead: the parent-death signal
 * reaches the leader only (not the rest of the group), is cleared by the
 * setuid() of jobs run as a user, and would end the job with no grace
 * period; a subreaper dies with the agent it would be.  (Under systemd,
 * KillMode=mixed normally kills what is left of the unit's cgroup.)  The
 * recovery here covers every case, so it is the one mechanism.
 */

#define JOB_RECOVER_KILL_WAIT  5000
#define JOB_ENVIRON_MAX        (1024 * 1024)


typedef struct {
    char                   id[33];
    pid_t                  pgid;
    unsigned long long     start;
    char                   boot[64];
    char                  *file_dir;
} job_record_t;


typedef struct {
    int                    live;     /* members that are not zombies */
    int                    leader;   /* -1: no process with the number,
                                        1: the job's leader, 0: another */
    int                    env;      /* a live member shows the job's id */
} job_group_t;


static int
job_record_parse(char *text, const char *id, job_record_t *r)
{
    char       *line, *val, *end, *save;
    long long   n;

    memset(r, 0, sizeof(job_record_t));

    for (line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save))
    {
        val = strchr(line, ' ');
        if (val == NULL) {
            continue;
        }
        *val++ = '\0';

        if (strcmp(line, "job_id") == 0 && strlen(val) == 32) {
            memcpy(r->id, val, 33);

        } else if (strcmp(line, "pgid") == 0) {
            errno = 0;
            n = strtoll(val, &end, 10);
            if (errno == 0 && *end == '\0' && n > 1 && n <= 0x7fffffff) {
                r->pgid = (pid_t) n;
            }

        } else if (strcmp(line, "start") == 0) {
            errno = 0;
            r->start = strtoull(val, &end, 10);
            if (errno || *end != '\0' || val[0] == '-') {
                r->start = 0;
            }

        } else if (strcmp(line, "boot") == 0 && strlen(val) < sizeof(r->boot))
        {
            memcpy(r->boot, val, strlen(val) + 1);

        } else if (strcmp(line, "file_dir") == 0 && val[0] == '/') {
            free(r->file_dir);
            r->file_dir = pja_strdup(val);
        }
    }

    /*
     * pgid 0 or 1 would make kill() signal our own group or every
     * process: never.
     */
    if (strcmp(r->id, id) != 0 || r->pgid <= 1 || r->pgid == getpgrp()
        || r->start == 0 || r->boot[0] == '\0')
    {
        free(r->file_dir);
        r->file_dir = NULL;
        return -1;
    }

    return 0;
}


/* Whether the process's environment holds CHEF_PUSH_JOB_ID=id. */

static int
job_proc_has_id(pid_t pid, const char *id)
{
    int        fd, found;
    char       path[64], want[64], chunk[8192], *p, *last;
    ssize_t    n;
    pja_buf_t  b = { NULL, 0, 0 };

    snprintf(path, sizeof(path), "/proc/%ld/environ", (long) pid);
    snprintf(want, sizeof(want), "CHEF_PUSH_JOB_ID=%s", id);

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return 0;
    }

    while (b.len < JOB_ENVIRON_MAX) {
        n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0 || pja_buf_add(&b, chunk, (size_t) n) != 0) {
            break;
        }
    }

    close(fd);

    found = 0;

    if (b.data) {
        last = b.data + b.len;
        for (p = b.data; p < last && !found; p += strlen(p) + 1) {
            found = strcmp(p, want) == 0;
        }
    }

    pja_buf_free(&b);
    return found;
}


static int
job_group_scan(const job_record_t *r, job_group_t *g)
{
    DIR            *d;
    char           *end;
    long            n;
    pid_t           pid;
    job_proc_t      p;
    struct dirent  *de;

    g->live = 0;
    g->leader = -1;
    g->env = 0;

    d = opendir("/proc");
    if (d == NULL) {
        pja_log(PJA_LOG_ERR, "cannot open /proc: %s", strerror(errno));
        return -1;
    }

    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9') {
            continue;
        }

        n = strtol(de->d_name, &end, 10);
        if (*end != '\0' || n <= 0 || n > 0x7fffffff) {
            continue;
        }

        pid = (pid_t) n;

        if (job_proc_stat(pid, &p) != 0) {
            continue;    /* gone meanwhile */
        }

        if (pid == r->pgid) {
            g->leader = p.start == r->start;
        }

        if (p.pgrp != r->pgid || p.state == 'Z' || p.state == 'X') {
            continue;
        }

        g->live++;

        if (!g->env && p.sid == r->pgid && p.start >= r->start
            && job_proc_has_id(pid, r->id))
        {
            g->env = 1;
        }
    }

    closedir(d);
    return 0;
}


/*
 * Whether the group is the job's (the comment above); once shown, it stays
 * the job's while it keeps live members and its number no other leader.
 */

static int
job_group_ours(const job_group_t *g, int shown)
{
    if (g->leader != -1) {
        return g->leader;
    }

    return g->env || shown;
}


static void
job_group_end(const pja_conf_t *cf, const job_record_t *r)
{
    int          sig, ours;
    int64_t      until;
    job_group_t  g;

    if (job_group_scan(r, &g) != 0) {
        return;
    }

    if (g.live == 0) {
        pja_log(PJA_LOG_INFO, "job %s: its process group %ld had ended",
                r->id, (long) r->pgid);
        return;
    }

    ours = job_group_ours(&g, 0);

    if (!ours) {
        pja_log(PJA_LOG_WARN, "job %s: process group %ld has %d processes "
                "that cannot be shown to be the job's; left alone", r->id,
                (long) r->pgid, g.live);
        return;
    }

    pja_log(PJA_LOG_WARN, "job %s: its process group %ld (%d processes) "
            "outlived the agent process that ran it; terminating it", r->id,
            (long) r->pgid, g.live);

    sig = SIGTERM;

    for ( ;; ) {
        if (kill(-r->pgid, sig) != 0 && errno != ESRCH) {
            pja_log(PJA_LOG_ERR, "job %s: kill(%ld, %d): %s", r->id,
                    (long) -r->pgid, sig, strerror(errno));
            return;
        }

        until = pja_now_ms() + (sig == SIGTERM
                                ? (int64_t) cf->kill_grace * 1000
                                : JOB_RECOVER_KILL_WAIT);

        do {
            (void) poll(NULL, 0, 100);

            if (job_group_scan(r, &g) != 0) {
                return;
            }

            ours = job_group_ours(&g, ours);

        } while (g.live && ours && pja_now_ms() < until);

        if (g.live == 0) {
            pja_log(PJA_LOG_WARN, "job %s: process group %ld ended (%s)",
                    r->id, (long) r->pgid,
                    sig == SIGTERM ? "SIGTERM" : "SIGKILL");
            return;
        }

        if (!ours) {
            pja_log(PJA_LOG_WARN, "job %s: process group %ld is no longer "
                    "the job's; left alone", r->id, (long) r->pgid);
            return;
        }

        if (sig == SIGKILL) {
            pja_log(PJA_LOG_ERR, "job %s: process group %ld still has %d "
                    "processes %d s after SIGKILL", r->id, (long) r->pgid,
                    g.live, JOB_RECOVER_KILL_WAIT / 1000);
            return;
        }

        pja_log(PJA_LOG_WARN, "job %s: still running %d s after SIGTERM, "
                "killing process group %ld", r->id, cf->kill_grace,
                (long) r->pgid);
        sig = SIGKILL;
    }
}


/* The job's file and its private directory (job_write_file()). */

static void
job_recover_file_dir(const char *id, const char *dir)
{
    pja_buf_t  path = { NULL, 0, 0 };

    if (pja_buf_printf(&path, "%s/file", dir) != 0) {
        return;
    }

    if (unlink(path.data) != 0 && errno != ENOENT) {
        pja_log(PJA_LOG_WARN, "job %s: cannot remove %s: %s", id, path.data,
                strerror(errno));
    }

    if (rmdir(dir) != 0 && errno != ENOENT) {
        pja_log(PJA_LOG_WARN, "job %s: cannot remove %s: %s", id, dir,
                strerror(errno));
    }

    pja_buf_free(&path);
}


static void
job_recover_one(const pja_conf_t *cf, const char *id)
{
    char          *text, boot[64];
    job_record_t   r;

    if (pja_store_has(id)) {
        /* it ended, and its report is spooled: it goes out as usual */
        pja_store_run_remove(id);
        return;
    }

    text = pja_store_run_read(id);

    if (text == NULL || job_record_parse(text, id, &r) != 0) {
        pja_log(PJA_LOG_WARN, "job %s: the record of its process group is "
                "not valid; removed", id);
        free(text);
        pja_store_run_remove(id);
        return;
    }

    free(text);

    pja_log(PJA_LOG_WARN, "job %s: the previous agent process died while "
            "the job ran (process group %ld)", id, (long) r.pgid);

    if (job_boot_id(boot, sizeof(boot)) != 0) {
        pja_log(PJA_LOG_ERR, "job %s: cannot read the boot id: %s; its "
                "process group is left alone", id, strerror(errno));

    } else if (strcmp(boot, r.boot) != 0) {
        pja_log(PJA_LOG_INFO, "job %s: the node has restarted since; "
                "nothing of the job runs", id);

    } else {
        job_group_end(cf, &r);
    }

    if (r.file_dir) {
        job_recover_file_dir(id, r.file_dir);
        free(r.file_dir);
    }

    pja_log(PJA_LOG_WARN, "job %s: not held any more; the server records "
            "the node crashed", id);

    pja_store_run_remove(id);
}


void
pja_job_recover(const pja_conf_t *cf)
{
    size_t   i, n;
    char   **ids;

    ids = pja_store_run_list(&n);

    for (i = 0; i < n; i++) {
        job_recover_one(cf, ids[i]);
        free(ids[i]);
    }

    free(ids);
}
