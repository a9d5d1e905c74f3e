-- pushjobs schema: jobs, their nodes, output, events and node presence.
--
-- Everything lives in the schema "pushjobs" of the database the module is
-- configured with.  State changes go through the functions of functions.sql;
-- the constraints here are the last line of defence.

CREATE SCHEMA pushjobs;

CREATE TYPE pushjobs.job_status AS ENUM (
    'new', 'voting', 'running', 'complete', 'quorum_failed', 'timed_out',
    'crashed', 'aborted');

CREATE TYPE pushjobs.node_status AS ENUM (
    'new', 'ready', 'running', 'succeeded', 'failed', 'aborted',
    'unavailable', 'nacked', 'faulty', 'was_ready', 'crashed', 'timed_out');

CREATE TABLE pushjobs.jobs (
    id               text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    org              text NOT NULL CHECK (org <> ''),
    command          text NOT NULL,
    quorum           integer NOT NULL,
    run_timeout      integer NOT NULL CHECK (run_timeout >= 0),
    requestor        text NOT NULL,
    job_user         text,
    dir              text,
    env              jsonb CHECK (env IS NULL OR jsonb_typeof(env) = 'object'),
    file             text CHECK (file IS NULL OR file ~ '^(raw|base64):'),
    capture          boolean NOT NULL DEFAULT false,
    status           pushjobs.job_status NOT NULL,
    voting_deadline  timestamptz,
    run_deadline     timestamptz,
    abort_requested  boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX jobs_org_created ON pushjobs.jobs (org, created_at);
CREATE INDEX jobs_active ON pushjobs.jobs (status)
    WHERE status IN ('new', 'voting', 'running');

-- the retention purge (purge()): finished jobs, oldest first
CREATE INDEX jobs_finished ON pushjobs.jobs (updated_at)
    WHERE status NOT IN ('new', 'voting', 'running');

-- A job's nodes.  No foreign key to jobs: only create_job() adds rows, in
-- the transaction that adds the job, and a per-row check made a 10k-node
-- job's INSERT 40 % slower; purge() deletes them with their job.
--
-- A node's row changes about three times in its job (ack_commit, ack_run,
-- its result), in batches of thousands (node_inputs()).  Those updates are
-- HOT (the new version in the same page, no index entry): no index has a
-- column an update changes, status included, and a page is filled to 60 %
-- so that the versions fit (sqitch change ingest_hot; bench/README).  A
-- node's active jobs are found from the jobs (jobs_active) and this
-- primary key, not from an index of the node's name.
CREATE TABLE pushjobs.job_nodes (
    job_id           text NOT NULL,
    org              text NOT NULL,
    node_name        text NOT NULL CHECK (node_name <> ''),
    status           pushjobs.node_status NOT NULL DEFAULT 'new',
    exit_status      integer,
    abort_requested  boolean NOT NULL DEFAULT false,
    abort_force      boolean NOT NULL DEFAULT false,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, node_name)
) WITH (fillfactor = 60);

-- Rate control of a job POSTed with max_concurrency or max_errors (sqitch
-- change rollout; rollout() in functions.sql): the fields as given (a count
-- or "N%"), the counts they make for the job's nodes (NULL: no limit), and
-- whether the error budget is spent (no further node is started).  Jobs
-- without either field have no row.
CREATE TABLE pushjobs.job_rollout (
    job_id             text PRIMARY KEY
                       REFERENCES pushjobs.jobs (id) ON DELETE CASCADE,
    max_concurrency    jsonb,
    max_errors         jsonb,
    concurrency_limit  integer CHECK (concurrency_limit > 0),
    error_limit        integer CHECK (error_limit >= 0),
    halted             boolean NOT NULL DEFAULT false,
    -- counts of the job's nodes kept by rollout_count() as they change
    -- status: ready or running (active), running or ready with its run
    -- released (in_flight), failed, crashed or timed out (failed)
    active             integer NOT NULL DEFAULT 0,
    in_flight          integer NOT NULL DEFAULT 0,
    failed             integer NOT NULL DEFAULT 0,
    -- the last node rollout() looked at (it goes on after it, in name
    -- order) and the number of the last batch released (the "run" NOTIFY
    -- names it)
    scanned_through    text,
    released_batch     integer NOT NULL DEFAULT 0
);

-- The nodes of a job with a concurrency limit whose run rollout() has
-- released, with the batch that released them: only they are sent a run.
CREATE TABLE pushjobs.job_rollout_released (
    job_id             text NOT NULL
                       REFERENCES pushjobs.jobs (id) ON DELETE CASCADE,
    node_name          text NOT NULL,
    batch              integer NOT NULL,
    PRIMARY KEY (job_id, node_name)
);

-- dispatch_released(): the nodes of one batch
CREATE INDEX job_rollout_released_batch
    ON pushjobs.job_rollout_released (job_id, batch);

-- A node's final output.  A short final report (one that leaves out what
-- its agent streamed) is stored as it came: stdout holds the stream from
-- byte stdout_at on, and the bytes before are the node's job_output_chunk
-- rows (stderr likewise), so that streamed bytes are stored once.
CREATE TABLE pushjobs.job_output (
    job_id           text NOT NULL,
    node_name        text NOT NULL,
    stdout           bytea NOT NULL,
    stderr           bytea NOT NULL,
    truncated        boolean NOT NULL DEFAULT false,
    stdout_at        bigint NOT NULL DEFAULT 0 CHECK (stdout_at >= 0),
    stderr_at        bigint NOT NULL DEFAULT 0 CHECK (stderr_at >= 0),
    PRIMARY KEY (job_id, node_name),
    FOREIGN KEY (job_id, node_name)
        REFERENCES pushjobs.job_nodes (job_id, node_name) ON DELETE CASCADE
);

-- Output streamed while a job runs (the agent's output messages), one row
-- per node that has sent some: how many bytes of each stream
-- node_outputs() has stored as job_output_chunk rows (at most the cap),
-- and whether it cut at the cap.  Small and fixed in size, so updating it
-- per chunk costs the same at any length.  The final report's job_output
-- row wins: job_output_final() deletes this row (the chunks stay: they
-- are the bytes of the feed's output events).
CREATE TABLE pushjobs.job_output_live (
    job_id           text NOT NULL,
    node_name        text NOT NULL,
    stdout_len       bigint NOT NULL DEFAULT 0,
    stderr_len       bigint NOT NULL DEFAULT 0,
    truncated        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, node_name),
    FOREIGN KEY (job_id, node_name)
        REFERENCES pushjobs.job_nodes (job_id, node_name) ON DELETE CASCADE
);

-- The streamed bytes, one row per appended chunk: bytes [off, off +
-- length(data)) of the node's stream, contiguous from 0 up to the
-- stream's length in job_output_live.  A chunk is an insert of its own
-- bytes (appending to one bytea rewrote the whole output so far);
-- readers assemble string_agg(data, '' ORDER BY off).  Each row is also
-- the bytes of one output event of the job's feed (job_feed()), and is
-- kept with the job for that.
CREATE TABLE pushjobs.job_output_chunk (
    job_id           text NOT NULL,
    node_name        text NOT NULL,
    stream           text NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    off              bigint NOT NULL CHECK (off >= 0),
    data             bytea NOT NULL,
    PRIMARY KEY (job_id, node_name, stream, off),
    FOREIGN KEY (job_id, node_name)
        REFERENCES pushjobs.job_nodes (job_id, node_name) ON DELETE CASCADE
);

-- Per-job event feed: ids job-1, job-2, ... are (job_id, seq).  No
-- foreign key to jobs: the events are written by the transaction that
-- holds the job's row lock (emit_events()), a batch of thousands at once,
-- where a per-row check cost 40 % of the INSERT; purge() deletes them with
-- their job.
CREATE TABLE pushjobs.job_events (
    job_id           text NOT NULL,
    seq              integer NOT NULL CHECK (seq > 0),
    name             text NOT NULL,
    data             text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);

-- Org feed: start and job_complete of every job of the org, kept for a
-- limited time; ids org-N are the serial, taken at commit, in commit order
-- (org_event_commit_order(), sqitch change org_feed_order).
CREATE TABLE pushjobs.org_events (
    id               bigserial PRIMARY KEY,
    org              text NOT NULL,
    job_id           text NOT NULL,
    name             text NOT NULL,
    data             text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX org_events_org ON pushjobs.org_events (org, id);

-- a row's id until its commit: negative, from a sequence of its own, so that
-- the final ids, from the serial, come without gaps
CREATE SEQUENCE pushjobs.org_events_pending_id;
ALTER TABLE pushjobs.org_events
    ALTER COLUMN id SET DEFAULT -nextval('pushjobs.org_events_pending_id');

-- One row per nginx worker process of every front end that holds agent
-- channels.  A worker refreshes seen_at every few seconds; the channels of a
-- worker that stopped doing so count as gone.
CREATE TABLE pushjobs.owners (
    id               text PRIMARY KEY,
    started_at       timestamptz NOT NULL DEFAULT now(),
    seen_at          timestamptz NOT NULL DEFAULT now(),
    -- overdue: its channels are being marked offline (sweep()); its next
    -- beat finds it so and publishes them again (owner_beat())
    dead             boolean NOT NULL DEFAULT false
);

-- Where each node's agent channel is.  Written in batches on connect and
-- disconnect, never per heartbeat.
CREATE TABLE pushjobs.presence (
    org              text NOT NULL,
    node_name        text NOT NULL,
    owner            text NOT NULL,
    session          bigint NOT NULL,
    online           boolean NOT NULL,
    changed_at       timestamptz NOT NULL DEFAULT now(),
    -- offline, closed by a worker leaving on a reload: new jobs count on
    -- the node until then (presence_handover)
    handover_until   timestamptz,
    PRIMARY KEY (org, node_name)
);

CREATE INDEX presence_owner ON pushjobs.presence (owner) WHERE online;

-- the sweeper's lost channels: recent changes to offline
CREATE INDEX presence_offline ON pushjobs.presence (changed_at)
    WHERE NOT online;

-- The key of read-only job links (HMAC-SHA256), shared by the front ends:
-- link_key() stores the first worker's candidate.  Deleting the rows and
-- reloading every front end makes a new key (every link made with the old
-- one stops working).
CREATE TABLE pushjobs.link_keys (
    id               integer PRIMARY KEY CHECK (id > 0),
    secret           bytea NOT NULL CHECK (length(secret) = 32),
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- The Chef server's answers for principals (their public keys; 404 for
-- none), kept with the key cache's time to live (principal_get,
-- principal_put): a front end whose cache is empty asks here before the
-- Chef server.  Public keys only, no secret.
CREATE TABLE pushjobs.principals (
    org              text NOT NULL,
    name             text NOT NULL,
    status           integer NOT NULL CHECK (status IN (200, 404)),
    body             text NOT NULL,
    fetched_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org, name)
);
