/*
 * pushjobs-agent: shared types and prototypes.
 *
 * The agent is one process with one poll() loop: the channel to the server
 * (conn.c, session.c, transport_ws.c, transport_poll.c), the job it holds
 * (job.c), the spool of final reports (store.c).
 */

#ifndef PJA_H
#define PJA_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <regex.h>

#include <openssl/ssl.h>
#include <openssl/evp.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#include "json_bound.h"


#define PJA_VERSION             "0.1.0"
#define PJA_AGENT               "pushjobs-agent/" PJA_VERSION

#define PJA_OUTPUT_CAP          (256 * 1024)
#define PJA_KILL_GRACE_S        10
#define PJA_RUN_TIMEOUT_MARGIN  10
#define PJA_IN_MESSAGE_CAP      (16 * 1024 * 1024)
#define PJA_OUT_QUEUE_CAP       (32 * 1024 * 1024)
/* unsent bytes the kernel may hold for the channel (TCP_NOTSENT_LOWAT) */
#define PJA_NOTSENT_LOWAT       (32 * 1024)
#define PJA_DEFAULT_MAX_MESSAGE (1024 * 1024)
#define PJA_DEFAULT_PING        60
#define PJA_CONNECT_TIMEOUT     30000
#define PJA_COMMIT_TIMEOUT      600000
#define PJA_BACKOFF_MAX         60
#define PJA_STABLE_CHANNEL      30000
#define PJA_DEFAULT_POLL        25
#define PJA_POLL_MARGIN         15

#define PJA_DEFAULT_SPOOL       "/var/lib/pushjobs-agent/spool"
#define PJA_DEFAULT_FILE_DIR    "/tmp/pushjobs"
#define PJA_DEFAULT_CLIENT_KEY  "/etc/chef/client.pem"
#define PJA_DEFAULT_CACHE_PATH  "/var/chef/cache"
#define PJA_DEFAULT_TRUSTED     "/etc/chef/trusted_certs"


/* util.c */

typedef struct {
    char                  *data;
    size_t                 len;
    size_t                 cap;
} pja_buf_t;

int pja_buf_reserve(pja_buf_t *b, size_t n);
int pja_buf_add(pja_buf_t *b, const void *p, size_t n);
int pja_buf_addstr(pja_buf_t *b, const char *s);
int pja_buf_printf(pja_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int pja_buf_cstr(pja_buf_t *b);
void pja_buf_consume(pja_buf_t *b, size_t n);
void pja_buf_free(pja_buf_t *b);

char *pja_base64_encode(const void *p, size_t n);
int pja_base64_decode(const char *s, size_t n, pja_buf_t *out);
int64_t pja_now_ms(void);
uint32_t pja_random_u32(void);
int pja_random_bytes(void *p, size_t n);
int pja_valid_job_id(const char *id);
int pja_set_nonblock(int fd);
int pja_set_cloexec(int fd);
int pja_pipe(int fds[2], int nonblock);
int pja_mkdir_p(const char *path, mode_t mode);
char *pja_strdup(const char *s);
void *pja_xalloc(size_t n);


/* log.c */

enum {
    PJA_LOG_ERR = 0,
    PJA_LOG_WARN,
    PJA_LOG_INFO,
    PJA_LOG_DEBUG
};

extern int pja_log_level;

void pja_log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void pja_log_syslog(void);


/* config.c, whitelist.c */

typedef struct {
    char                  *key;          /* exact command, or regexp text */
    int                    is_regex;
    regex_t                re;
    char                  *command_line;
    char                  *lock;         /* lock file, or NULL */
    int                    lock_default; /* lock: true (Chef's lockfile) */
} pja_wl_entry_t;

typedef struct {
    char                  *node_name;
    char                  *chef_server_url;
    char                  *client_key;
    char                  *ssl_ca_file;
    char                  *trusted_certs_dir;
    int                    ssl_verify;    /* 1: verify_peer */
    char                  *file_dir;
    char                  *file_cache_path;
    char                  *lockfile;
    int                    kill_grace;    /* seconds, -1: default */
    long long              output_cap;    /* bytes per stream, -1: dflt */

    char                 **allowed_env;
    size_t                 nallowed_env;
    char                 **allowed_users;
    size_t                 nallowed_users;

    pja_wl_entry_t        *wl;
    size_t                 nwl;
    int                    wl_set;
    int                    wl_refused;    /* a regexp over the bounds */

    int                    transport;     /* PJA_TRANSPORT_* */

    /* derived from chef_server_url */
    int                    tls;
    char                  *host;
    char                  *port;
    char                  *org;
    char                  *ws_path;      /* .../organizations/ORG/pushy/agent */
    char                  *host_header;
} pja_conf_t;

enum {
    PJA_TRANSPORT_AUTO = 0,   /* websocket, long-poll if the upgrade fails */
    PJA_TRANSPORT_WEBSOCKET,
    PJA_TRANSPORT_LONG_POLL
};

void pja_conf_init(pja_conf_t *cf);
int pja_conf_load(pja_conf_t *cf, const char *file);
int pja_conf_parse(pja_conf_t *cf, const char *file, const char *data,
    size_t len);
int pja_conf_set(pja_conf_t *cf, const char *name, const char *value);
int pja_conf_finish(pja_conf_t *cf);
void pja_conf_print(const pja_conf_t *cf, FILE *f);
void pja_conf_free(pja_conf_t *cf);
char *pja_conf_lock_path(const pja_conf_t *cf, const pja_wl_entry_t *e);
int pja_conf_user_allowed(const pja_conf_t *cf, const char *user);

/* pja_wl_add(): a regexp over pja_wl_check()'s bounds */
#define PJA_WL_REFUSED  (-2)

int pja_wl_add(pja_conf_t *cf, const char *key, int is_regex, int icase,
    const char *command_line, const char *lock, int lock_default);
const char *pja_wl_check(const char *re);
char *pja_wl_resolve(const pja_conf_t *cf, const char *command,
    const pja_wl_entry_t **entry);
void pja_wl_free(pja_conf_t *cf);
char **pja_argv_split(const char *cmdline);
void pja_argv_free(char **argv);


/* sign.c */

struct pja_agent_s;

EVP_PKEY *pja_sign_load_key(const char *file);
EVP_PKEY *pja_sign_key(struct pja_agent_s *a);
int pja_sign_headers(const char *userid, EVP_PKEY *key, const char *method,
    const char *path, const void *body, size_t blen, const char *eol,
    pja_buf_t *out);


/*
 * the channel: conn.c (connection), transport_ws.c and transport_poll.c
 * (transports)
 */

enum {
    PJA_WS_IDLE = 0,
    PJA_WS_CONNECTING,
    PJA_WS_TLS,
    PJA_WS_HTTP,
    PJA_WS_OPEN,
    PJA_WS_CLOSING
};

/* the long-poll transport's state (transport_poll.c) */

typedef struct {
    int                    inflight;      /* requests sent, not answered */
    int                    batching;      /* handling an answer */
    pja_buf_t              pending;       /* messages: u32 length, text */
    char                   session[256];
} pja_poll_t;

typedef struct {
    int                    state;
    int                    fd;
    SSL_CTX               *ctx;
    SSL                   *ssl;
    /* the server's last TLS session (ticket), to resume on reconnect */
    SSL_SESSION           *tls_session;
    struct addrinfo       *ai_list;
    struct addrinfo       *ai_next;

    pja_buf_t              out;
    size_t                 ssl_retry_len;
    int                    want_write;

    pja_buf_t              in;
    pja_buf_t              msg;
    int                    msg_op;
    int                    in_msg;
    int                    peer_eof;

    char                   accept[64];
    int64_t                started_at;
    int64_t                opened_at;
    int64_t                last_rx;
    int64_t                close_deadline;
    int                    close_code;    /* received from the peer */
    int                    close_sent;
    int                    http_status;

    const struct pja_transport_s  *transport;
    pja_poll_t             poll;          /* the long-poll transport's */
} pja_conn_t;

struct pja_agent_s;

/*
 * What the channel does differently over a websocket (transport_ws.c) and
 * over long-poll (transport_poll.c), once TCP and TLS are up.
 */

typedef struct pja_transport_s {
    /* the connection is up: send the upgrade, or the first poll */
    int   (*open)(pja_conn_t *ws, const pja_conf_t *cf);
    /* one message out; called when the channel is open */
    int   (*send)(pja_conn_t *ws, const char *p, size_t n);
    /* say goodbye with this code; called when the channel is open */
    void  (*close)(pja_conn_t *ws, int code);
    /* parse what ws->in holds: 0 for more bytes, -1 when it is over */
    int   (*input)(pja_conn_t *ws, struct pja_agent_s *a);
    /* free the transport's state */
    void  (*reset)(pja_conn_t *ws);
    /* ms the open channel may stay silent before it counts as dead */
    int64_t  (*silence)(const pja_conn_t *ws, const struct pja_agent_s *a);

    /* for the log: the URL's scheme without and with TLS, a path suffix */
    const char  *scheme;
    const char  *tls_scheme;
    const char  *path;
} pja_transport_t;

int pja_conn_init_ctx(pja_conn_t *ws, const pja_conf_t *cf);
int pja_conn_connect(pja_conn_t *ws, const pja_conf_t *cf);
short pja_conn_events(pja_conn_t *ws);
int pja_conn_handle(pja_conn_t *ws, const pja_conf_t *cf, short revents);
int pja_conn_send_text(pja_conn_t *ws, const char *p, size_t n);
void pja_conn_close(pja_conn_t *ws, int code);
void pja_conn_reset(pja_conn_t *ws);
int pja_conn_input(pja_conn_t *ws, struct pja_agent_s *a);
int pja_conn_flush(pja_conn_t *ws);
int pja_conn_header(const char *head, const char *name, char *val, size_t size);
int pja_conn_response_head(pja_conn_t *ws, size_t *head_len, int *status);


/* transport_poll.c: the channel's long-poll fallback */

int pja_poll_response(pja_conn_t *ws, struct pja_agent_s *a);

extern const pja_transport_t  pja_transport_ws;
extern const pja_transport_t  pja_transport_poll;


/* job.c */

enum {
    PJA_JOB_IDLE = 0,
    PJA_JOB_COMMITTED,
    PJA_JOB_RUNNING
};

typedef struct {
    int                    state;
    char                   id[33];
    char                  *command;
    char                  *cmdline;
    char                  *user;
    char                  *dir;
    char                  *file;
    char                 **env;          /* "K=V" of the job, renamed */
    size_t                 nenv;
    int                    capture;
    int64_t                committed_at;
    int                    run_timeout;   /* seconds, 0: none */
    int64_t                run_deadline;
    char                  *lock_path;
    int                    lock_fd;       /* held from commit to the end */

    pid_t                  pid;
    int                    out_fd;
    int                    err_fd;
    pja_buf_t              out;
    pja_buf_t              err;
    size_t                 output_cap;
    int                    truncated;
    /* live output (session.c): bytes sent on this channel, next flush */
    size_t                 out_sent;
    size_t                 err_sent;
    int64_t                out_due;
    int64_t                err_due;
    char                  *file_dir;     /* the job's private directory */
    char                  *file_path;

    int                    ending;        /* PJA_END_* */
    int64_t                kill_at;
    int                    kill_grace;    /* seconds, as at the commit */
} pja_job_t;

enum {
    PJA_END_NONE = 0,
    PJA_END_ABORT,        /* the server's abort: report "aborted" */
    PJA_END_TIMEOUT,      /* run_timeout passed: report "failed" */
    PJA_END_STOP          /* the agent is stopping: report "failed" */
};

/*
 * Who starts, signals and reaps a job's process: the agent itself
 * (pja_exec_local, job.c), or, once the agent is split, the root parent
 * on request over the socketpair (pja_exec_privsep, privsep.c).  Both
 * take a commit as the fixed-format record below, never as JSON.
 */

struct pja_ps_req_s;

typedef struct {
    /* checks and holds a commit; NULL, or the reason to refuse it */
    const char  *(*commit)(pja_job_t *job, const pja_conf_t *cf,
                           const struct pja_ps_req_s *r, const char *file);
    /* starts the committed job; NULL, or the reason */
    const char  *(*run)(pja_job_t *job, const pja_conf_t *cf);
    /* SIGTERM or SIGKILL to the job's process group */
    void         (*signal)(pja_job_t *job, int signo);
    /* the job is let go (uncommitted, refused, reported) */
    void         (*release)(pja_job_t *job);
} pja_exec_t;

extern const pja_exec_t  pja_exec_local;
extern const pja_exec_t *pja_exec;

const char *pja_job_commit(pja_job_t *job, const pja_conf_t *cf,
    yajl_val msg);
const char *pja_job_prepare(pja_job_t *job, const pja_conf_t *cf,
    const struct pja_ps_req_s *r, const char *file);
const char *pja_job_run(pja_job_t *job, const pja_conf_t *cf);
void pja_job_signal(pja_job_t *job, int signo);
void pja_job_end(pja_job_t *job, int why, int force, int grace);
void pja_job_uncommit(pja_job_t *job);
int pja_job_read(pja_job_t *job, int fd);
int pja_job_reap(pja_job_t *job, int *status);
void pja_job_exited(pja_job_t *job);
void pja_job_started(pja_job_t *job, pid_t pid, int out_fd, int err_fd);
char *pja_job_report(pja_job_t *job, int status, size_t max_size,
    int short_form);
void pja_job_clear(pja_job_t *job);
void pja_job_timers(pja_job_t *job, int64_t now);
void pja_job_recover(const pja_conf_t *cf);


/* privsep.c: the records over the socketpair of the two processes */

#define PJA_PS_MAGIC            0x706a7073  /* "pjps" */
#define PJA_PS_USER             "pushjobs-agent"
#define PJA_PS_COMMAND_MAX      1024
#define PJA_PS_USER_MAX         256
#define PJA_PS_DIR_MAX          4096
#define PJA_PS_ENV_MAX          (64 * 1024)
#define PJA_PS_ENV_COUNT        256
#define PJA_PS_MAX_FDS          2          /* a job's stdout and stderr */

enum {
    PJA_PS_COMMIT = 1,    /* network process: check and hold this job */
    PJA_PS_RUN,           /* network process: run the held job */
    PJA_PS_SIGNAL,        /* network process: signal the job's group */
    PJA_PS_RELEASE,       /* network process: let the held job go */
    PJA_PS_COMMITTED,     /* parent: held; the settings it runs with */
    PJA_PS_STARTED,       /* parent: pid (= pgid), output fds attached */
    PJA_PS_REFUSED,       /* parent: reason */
    PJA_PS_EXITED,        /* parent: the job's wait status */
    PJA_PS_STOP           /* parent: stop (status 1), at once (2) */
};

#define PJA_PS_FILE_MAX         (16 * 1024 * 1024)

/*
 * Network process to parent.  Strings are NUL-terminated in place.  A
 * COMMIT's file (the job's "file" field as the server sent it) comes as
 * an attached descriptor of a memory file, not in the record.
 */

typedef struct pja_ps_req_s {
    uint32_t               magic;
    uint32_t               type;
    char                   job_id[33];
    char                   command[PJA_PS_COMMAND_MAX]; /* whitelist key */
    char                   user[PJA_PS_USER_MAX];       /* "": none */
    char                   dir[PJA_PS_DIR_MAX];         /* "": none */
    uint32_t               capture;
    uint32_t               has_file;
    int32_t                signo;         /* PJA_PS_SIGNAL: TERM or KILL */
    uint32_t               nenv;
    uint32_t               env_len;
    char                   env[PJA_PS_ENV_MAX];   /* "K=V\0"..., as sent */
} pja_ps_req_t;

/* Parent to network process. */

typedef struct {
    uint32_t               magic;
    uint32_t               type;
    char                   job_id[33];
    int32_t                pid;
    int32_t                status;
    int32_t                kill_grace;    /* COMMITTED: the parent's */
    int64_t                output_cap;    /* COMMITTED: the parent's */
    char                   text[PJA_PS_COMMAND_MAX]; /* reason, cmdline */
} pja_ps_rep_t;

extern const pja_exec_t  pja_exec_privsep;

int pja_ps_socketpair(int sv[2]);
const char *pja_ps_req_check(const pja_ps_req_t *r);
int pja_ps_send(int fd, const void *rec, size_t size, const int *fds,
    int nfds);
int pja_ps_recv(int fd, void *rec, size_t size, int *fds, int maxfds,
    int *nfds);
const char *pja_ps_default_user(void);
int pja_ps_drop(const char *user, uid_t uid, gid_t gid);
pid_t pja_ps_split(const char *user, int *fd);

/* the network process's side */
extern int  pja_ps_fd;
extern int  pja_ps_broken;
int pja_ps_input(pja_ps_rep_t *rep, int block);

/* the root parent's side */
int pja_ps_serve(int fd, pja_job_t *job, const pja_conf_t *cf);
int pja_ps_exited(int fd, pja_job_t *job, int status);
int pja_ps_stop(int fd, int count);


/* store.c */

int pja_store_init(const char *dir);
int pja_store_own(uid_t uid, gid_t gid);
int pja_store_enter(void);
int pja_store_write(const char *job_id, const char *text);
int pja_store_remove(const char *job_id);
int pja_store_has(const char *job_id);
char *pja_store_read(const char *job_id);
char **pja_store_list(size_t *n);
int pja_store_run_write(const char *job_id, const char *text);
int pja_store_run_remove(const char *job_id);
char *pja_store_run_read(const char *job_id);
char **pja_store_run_list(size_t *n);


/* json.c */

yajl_gen pja_json_begin(const char *type);
int pja_json_str(yajl_gen g, const char *key, const char *val);
int pja_json_int(yajl_gen g, const char *key, long long val);
int pja_json_bool(yajl_gen g, const char *key, int val);
char *pja_json_end(yajl_gen g);

const char *pja_json_get_str(yajl_val obj, const char *key);
int pja_json_get_bool(yajl_val obj, const char *key, int dflt);
long long pja_json_get_int(yajl_val obj, const char *key, long long dflt);
yajl_val pja_json_get(yajl_val obj, const char *key);
yajl_val pja_json_parse(const char *text, size_t len,
    const pj_json_limits_t *lim);


/* session.c */

typedef struct pja_agent_s {
    pja_conf_t             conf;
    pja_conn_t               ws;
    pja_job_t              job;
    int                    welcomed;
    int                    ping_interval;
    int                    poll_timeout;  /* seconds a poll may be held */
    int                    fallback;      /* next channel: long-poll */
    size_t                 max_message_size;
    int                    live_output;   /* the welcome allowed output */
    int                    stopping;
    EVP_PKEY              *key;           /* the client key, see sign.c */

    /* what a SIGHUP re-reads */
    const char           **conf_files;
    int                    nconf_files;
    char                 **conf_args;    /* NAME, VALUE pairs of the flags */
    int                    nconf_args;
} pja_agent_t;

extern pja_agent_t  pja_agent;

void pja_session_open(pja_agent_t *a);
void pja_session_message(pja_agent_t *a, char *text, size_t len);
void pja_session_handle(pja_agent_t *a, yajl_val msg);
void pja_session_send(pja_agent_t *a, char *text);
void pja_session_final(pja_agent_t *a, char *report, char *sent);
void pja_session_job_exited(pja_agent_t *a, int status);
int64_t pja_session_stream(pja_agent_t *a, int64_t now, int flush);
int pja_session_backlog(pja_agent_t *a);

#endif /* PJA_H */
