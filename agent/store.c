/*
 * pushjobs-agent: the spool of final reports, and the records of running
 * jobs.
 *
 * Every final report is stored as SPOOL/JOBID.json (written to a temporary
 * file, fsync'd, renamed, directory fsync'd) before it is sent, and removed
 * only on the server's `ack` for that job.
 *
 * A job's process group is recorded, the same way, as SPOOL/JOBID.run
 * before the job's command is executed, and the record is removed once the
 * job's report is spooled: a record without a report is a job whose agent
 * process died while it ran (job.c, pja_job_recover()).
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "pja.h"


static char  *pja_store_dir;


int
pja_store_init(const char *dir)
{
    struct stat  st;

    if (pja_mkdir_p(dir, 0700) != 0) {
        pja_log(PJA_LOG_ERR, "cannot create spool %s: %s", dir,
                strerror(errno));
        return -1;
    }

    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        pja_log(PJA_LOG_ERR, "spool %s is not a directory", dir);
        return -1;
    }

    if (st.st_mode & 077) {
        pja_log(PJA_LOG_WARN, "spool %s is accessible to others", dir);
    }

    pja_store_dir = pja_strdup(dir);
    return pja_store_dir ? 0 : -1;
}


/*
 * Privilege separation: the spool and what it holds become the network
 * process's (a spool written by an agent that ran as root before).  The
 * entries are changed without following links.
 */

int
pja_store_own(uid_t uid, gid_t gid)
{
    int             dfd;
    DIR            *d;
    struct dirent  *de;

    dfd = open(pja_store_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW
                              | O_CLOEXEC);
    if (dfd == -1 || fchown(dfd, uid, gid) != 0) {
        pja_log(PJA_LOG_ERR, "cannot give spool %s to the agent's user: %s",
                pja_store_dir, strerror(errno));
        if (dfd != -1) {
            close(dfd);
        }
        return -1;
    }

    d = fdopendir(dfd);
    if (d == NULL) {
        close(dfd);
        return -1;
    }

    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') {
            continue;
        }

        if (fchownat(dfd, de->d_name, uid, gid, AT_SYMLINK_NOFOLLOW) != 0) {
            pja_log(PJA_LOG_WARN, "cannot chown %s/%s: %s", pja_store_dir,
                    de->d_name, strerror(errno));
        }
    }

    closedir(d);
    return 0;
}


/*
 * The network process works in the spool: it need not reach it through
 * directories it may not traverse once it is not root.
 */

int
pja_store_enter(void)
{
    if (chdir(pja_store_dir) != 0) {
        pja_log(PJA_LOG_ERR, "cannot enter spool %s: %s", pja_store_dir,
                strerror(errno));
        return -1;
    }

    free(pja_store_dir);
    pja_store_dir = pja_strdup(".");
    return pja_store_dir ? 0 : -1;
}


static void
spool_path(pja_buf_t *b, const char *job_id, const char *suffix)
{
    b->len = 0;
    pja_buf_printf(b, "%s/%s%s", pja_store_dir, job_id, suffix);
}


static int
spool_write_file(const char *job_id, const char *suffix, const char *text)
{
    int        fd, dfd, rc;
    size_t     n, off;
    ssize_t    w;
    pja_buf_t  tmp = { NULL, 0, 0 }, path = { NULL, 0, 0 };

    rc = -1;
    pja_buf_printf(&tmp, "%s/%s%s.tmp", pja_store_dir, job_id, suffix);
    spool_path(&path, job_id, suffix);

    if (tmp.data == NULL || path.data == NULL) {
        goto done;
    }

    fd = open(tmp.data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd == -1) {
        pja_log(PJA_LOG_ERR, "cannot create %s: %s", tmp.data,
                strerror(errno));
        goto done;
    }

    n = strlen(text);

    for (off = 0; off < n; off += (size_t) w) {
        w = write(fd, text + off, n - off);
        if (w < 0) {
            if (errno == EINTR) {
                w = 0;
                continue;
            }
            pja_log(PJA_LOG_ERR, "cannot write %s: %s", tmp.data,
                    strerror(errno));
            close(fd);
            unlink(tmp.data);
            goto done;
        }
    }

    if (fsync(fd) != 0 || close(fd) != 0) {
        pja_log(PJA_LOG_ERR, "cannot sync %s: %s", tmp.data, strerror(errno));
        unlink(tmp.data);
        goto done;
    }

    if (rename(tmp.data, path.data) != 0) {
        pja_log(PJA_LOG_ERR, "cannot rename %s: %s", tmp.data,
                strerror(errno));
        unlink(tmp.data);
        goto done;
    }

    dfd = open(pja_store_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd != -1) {
        if (fsync(dfd) != 0) {
            pja_log(PJA_LOG_WARN, "cannot sync %s: %s", pja_store_dir,
                    strerror(errno));
        }
        close(dfd);
    }

    rc = 0;

done:

    pja_buf_free(&tmp);
    pja_buf_free(&path);
    return rc;
}


int
pja_store_write(const char *job_id, const char *text)
{
    if (spool_write_file(job_id, ".json", text) != 0) {
        return -1;
    }

    pja_log(PJA_LOG_DEBUG, "spooled the report of job %s", job_id);
    return 0;
}


int
pja_store_run_write(const char *job_id, const char *text)
{
    return spool_write_file(job_id, ".run", text);
}


static int
spool_remove_file(const char *job_id, const char *suffix)
{
    int        rc;
    pja_buf_t  path = { NULL, 0, 0 };

    spool_path(&path, job_id, suffix);
    if (path.data == NULL) {
        return -1;
    }

    rc = unlink(path.data);
    if (rc != 0 && errno != ENOENT) {
        pja_log(PJA_LOG_ERR, "cannot remove %s: %s", path.data,
                strerror(errno));
    }

    pja_buf_free(&path);
    return rc;
}


int
pja_store_remove(const char *job_id)
{
    return spool_remove_file(job_id, ".json");
}


int
pja_store_run_remove(const char *job_id)
{
    return spool_remove_file(job_id, ".run");
}


int
pja_store_has(const char *job_id)
{
    int        rc;
    pja_buf_t  path = { NULL, 0, 0 };

    spool_path(&path, job_id, ".json");
    if (path.data == NULL) {
        return 0;
    }

    rc = access(path.data, F_OK) == 0;
    pja_buf_free(&path);
    return rc;
}


static char *
spool_read_file(const char *job_id, const char *suffix)
{
    int        fd;
    char       chunk[8192];
    ssize_t    n;
    pja_buf_t  path = { NULL, 0, 0 }, data = { NULL, 0, 0 };

    spool_path(&path, job_id, suffix);
    if (path.data == NULL) {
        return NULL;
    }

    fd = open(path.data, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        pja_log(PJA_LOG_ERR, "cannot open %s: %s", path.data,
                strerror(errno));
        pja_buf_free(&path);
        return NULL;
    }

    while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            pja_log(PJA_LOG_ERR, "cannot read %s: %s", path.data,
                    strerror(errno));
            pja_buf_free(&data);
            break;
        }

        if (pja_buf_add(&data, chunk, (size_t) n) != 0) {
            pja_buf_free(&data);
            break;
        }
    }

    close(fd);
    pja_buf_free(&path);
    return data.data;
}


char *
pja_store_read(const char *job_id)
{
    return spool_read_file(job_id, ".json");
}


char *
pja_store_run_read(const char *job_id)
{
    return spool_read_file(job_id, ".run");
}


/* The job ids of the files JOBID + suffix (malloc'd array of malloc'd ids). */

static char **
spool_list(const char *suffix, size_t *n)
{
    DIR            *d;
    size_t          len, slen;
    char          **ids, **nids, id[33];
    struct dirent  *de;

    *n = 0;
    ids = NULL;
    slen = strlen(suffix);

    d = opendir(pja_store_dir);
    if (d == NULL) {
        pja_log(PJA_LOG_ERR, "cannot open spool %s: %s", pja_store_dir,
                strerror(errno));
        return NULL;
    }

    while ((de = readdir(d)) != NULL) {
        len = strlen(de->d_name);
        if (len != 32 + slen || strcmp(de->d_name + 32, suffix) != 0) {
            continue;
        }

        memcpy(id, de->d_name, 32);
        id[32] = '\0';

        if (!pja_valid_job_id(id)) {
            continue;
        }

        nids = realloc(ids, (*n + 1) * sizeof(char *));
        if (nids == NULL) {
            break;
        }
        ids = nids;

        ids[*n] = pja_strdup(id);
        if (ids[*n] == NULL) {
            break;
        }
        (*n)++;
    }

    closedir(d);
    return ids;
}


char **
pja_store_list(size_t *n)
{
    return spool_list(".json", n);
}


char **
pja_store_run_list(size_t *n)
{
    return spool_list(".run", n);
}
