-- pushjobs functions: every state transition of jobs and nodes.
--
-- Each function is one statement for the caller, so each runs in its own
-- transaction.  Transitions lock the job row first (always in job id order
-- when several jobs are touched), then change it conditionally, append event
-- rows and queue NOTIFYs, which PostgreSQL delivers on commit to every nginx
-- worker of every front end.
--
-- NOTIFY channel "pushjobs", payloads (space separated, names last):
--   commit ORG JOB   nodes of a voting job wait for their commit
--   run ORG JOB      ready nodes of a running job wait for their run (with
--                    a concurrency limit: those rollout() released)
--   stop ORG JOB     nodes of this job were stopped: agents still holding it
--                    must be sent an abort
--   stop ORG JOB STATUS [NODE_STATUS=COUNT ...]
--                    the same, when the job ended (job_status_set()): its
--                    end status and how many of its nodes ended in each
--                    status, which the front ends count in their metrics
--   event ORG JOB    new rows in job_events (and maybe org_events)
--   kick OWNER SESSION ORG NODE
--                    a newer channel replaced this one: close it

CREATE OR REPLACE FUNCTION pushjobs.http_date(p_time timestamptz)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(p_time AT TIME ZONE 'UTC', 'Dy, DD Mon YYYY HH24:MI:SS')
           || ' GMT'
$$;


CREATE OR REPLACE FUNCTION pushjobs.event_time(p_time timestamptz)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(p_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || 'Z'
$$;


-- Queues the NOTIFY "P_KIND P_ORG P_JOB" on channel "pushjobs": every
-- notification goes through here ("kick" passes its owner as p_org and
-- "SESSION ORG NODE" as p_job).
CREATE OR REPLACE FUNCTION pushjobs.notify(p_kind text, p_org text,
    p_job text)
RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('pushjobs', p_kind || ' ' || p_org || ' ' || p_job)
$$;


-- An event's data: the JSON object {p_head, the members of p_fields}.
CREATE OR REPLACE FUNCTION pushjobs.event_data(p_head text, p_fields json)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT '{' || p_head
           || COALESCE(', ' || NULLIF(btrim(substr(btrim(p_fields::text), 2,
                                             length(btrim(p_fields::text))
                                             - 2)), ''), '')
           || '}'
$$;


-- The statuses of a job not ended yet (it may still change), and of a node
-- still taking part in its job: the sets transitions and queries test.
CREATE OR REPLACE FUNCTION pushjobs.job_active(p_status pushjobs.job_status)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_status IN ('new', 'voting', 'running')
$$;

CREATE OR REPLACE FUNCTION pushjobs.node_active(p_status pushjobs.node_status)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_status IN ('new', 'ready', 'running')
$$;


-- Org feed ids in commit order.  A reader resumes after the last id it has
-- seen, so no id may become visible after a greater one; but the serial
-- hands out ids as rows are inserted, and two transactions (a POST's
-- create_job(), a batch that ends a job) may commit in the other order: a
-- reader between the two commits would skip the smaller id for good.  At
-- commit (a deferred trigger) each new row takes its final id from the
-- serial (until then it has a negative one: migrations/deploy/
-- org_feed_order.sql) under one lock that the commit releases, so that ids
-- follow commit order, without gaps but for rolled back rows.  One lock
-- for all orgs: a transaction may end jobs of several orgs, and org locks
-- taken in different orders could deadlock; org events are two per job.
CREATE OR REPLACE FUNCTION pushjobs.org_event_commit_order()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pushjobs.org_events'));
    UPDATE pushjobs.org_events
       SET id = nextval(pg_get_serial_sequence('pushjobs.org_events', 'id'))
     WHERE id = NEW.id;
    RETURN NULL;
END
$$;


-- Appends events to a job's feed, and to its org's feed when asked, in
-- p_keys order (array order when p_keys is NULL): one INSERT per feed and
-- one notification.  The event data is a JSON object whose first key is
-- "timestamp" (and "job" next in the org feed), followed by the event's
-- fields (NULL: none).  The caller holds the job's lock.
CREATE OR REPLACE FUNCTION pushjobs.emit_events(p_job text, p_org text,
    p_keys bigint[], p_names text[], p_fields json[],
    p_org_feed boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_seq   integer;
    v_ts    text := pushjobs.event_time(now());
BEGIN
    IF COALESCE(cardinality(p_names), 0) = 0 THEN
        RETURN;
    END IF;

    -- The next id of the job's feed, under a lock of the job's feed held
    -- to commit, so that ids follow commit order: the batches of one job
    -- hold its row FOR SHARE only and run at once, and a feed reader must
    -- never see a smaller id commit after a larger one.  The lock
    -- serializes writers (the primary key would refuse a duplicate);
    -- reading the last seq through the primary key keeps a batch of
    -- thousands of transitions linear, where bumping a counter in the
    -- jobs row made each update slower than the last (one row version
    -- per event, all in one transaction).
    PERFORM pg_advisory_xact_lock(hashtext('pushjobs.job_events'),
                                  hashtext(p_job));

    SELECT COALESCE(max(seq), 0) INTO v_seq
      FROM pushjobs.job_events
     WHERE job_id = p_job;

    INSERT INTO pushjobs.job_events (job_id, seq, name, data)
    SELECT p_job, v_seq + row_number() OVER (ORDER BY e.k, e.ord), e.name,
           pushjobs.event_data('"timestamp": "' || v_ts || '"', e.fields)
      FROM unnest(p_keys, p_names, p_fields)
           WITH ORDINALITY AS e(k, name, fields, ord);

    IF p_org_feed THEN
        INSERT INTO pushjobs.org_events (org, job_id, name, data)
        SELECT p_org, p_job, e.name,
               pushjobs.event_data('"timestamp": "' || v_ts || '", "job": "'
                                   || p_job || '"', e.fields)
          FROM unnest(p_keys, p_names, p_fields)
               WITH ORDINALITY AS e(k, name, fields, ord)
         ORDER BY e.k, e.ord;
    END IF;

    -- identical notifications of one transaction are delivered once
    PERFORM pushjobs.notify('event', p_org, p_job);
END
$$;


-- One event: emit_events() of one.
CREATE OR REPLACE FUNCTION pushjobs.emit(p_job text, p_org text, p_name text,
    p_fields json, p_org_feed boolean DEFAULT false)
RETURNS void
LANGUAGE sql AS $$
    SELECT pushjobs.emit_events(p_job, p_org, NULL, ARRAY[p_name],
                                ARRAY[p_fields], p_org_feed)
$$;


-- A worker is alive while it is not marked dead and has beaten within the
-- owner timeout (sweep() marks the others dead).  A SQL expression the
-- planner inlines into its callers (sqitch change owner_alive).
CREATE OR REPLACE FUNCTION pushjobs.owner_alive(p_dead boolean,
    p_seen_at timestamptz, p_owner_timeout_ms integer)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT p_dead
           AND p_seen_at > now() - p_owner_timeout_ms
                                   * interval '1 millisecond'
$$;


-- A node counts as online when its channel's worker is alive.
CREATE OR REPLACE FUNCTION pushjobs.online_nodes(p_org text,
    p_owner_timeout_ms integer)
RETURNS TABLE (node_name text)
LANGUAGE sql STABLE AS $$
    SELECT p.node_name
      FROM pushjobs.presence p
      JOIN pushjobs.owners o ON o.id = p.owner
     WHERE p.org = p_org
       AND p.online
       AND pushjobs.owner_alive(o.dead, o.seen_at, p_owner_timeout_ms)
$$;


-- The nodes a new job can count on: those online, and those whose channel
-- a worker leaving on a reload closed moments ago (presence_update()'s
-- handover), whose agents are reconnecting to the new workers: they get
-- the job's commit with their hello.  One that does not come back is lost
-- as any node whose channel went away (sweep(), node_lost_timeout).
--
-- One SELECT of presence, no UNION: inlined into a caller that joins it
-- with a job's nodes, the join goes by presence's primary key, so a job of
-- ten nodes reads ten rows, not the org's (a UNION is deduplicated whole
-- first: ~90 ms for each job in an org of 100,000 nodes; sqitch change
-- create_job_fast).
CREATE OR REPLACE FUNCTION pushjobs.available_nodes(p_org text,
    p_owner_timeout_ms integer)
RETURNS TABLE (node_name text)
LANGUAGE sql STABLE AS $$
    SELECT p.node_name
      FROM pushjobs.presence p
      LEFT JOIN pushjobs.owners o ON o.id = p.owner
     WHERE p.org = p_org
       AND CASE WHEN p.online
                THEN pushjobs.owner_alive(o.dead, o.seen_at,
                                          p_owner_timeout_ms)
                ELSE p.handover_until > now()
           END
$$;


CREATE OR REPLACE FUNCTION pushjobs.commit_message(p_job pushjobs.jobs)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT json_strip_nulls(json_build_object(
               'type', 'commit',
               'v', 1,
               'job_id', p_job.id,
               'command', p_job.command,
               'capture', p_job.capture,
               'run_timeout', p_job.run_timeout,
               'user', p_job.job_user,
               'dir', p_job.dir,
               'env', p_job.env,
               'file', p_job.file))::text
$$;


-- Every change of a job's status after create_job(): the row updated and
-- the event it makes.  "running" starts the run timer and emits
-- quorum_succeeded; an end status emits job_complete (to the org feed too)
-- and tells the agents still holding the job to stop (the NOTIFY carries
-- the end status).  Returns the updated
-- row.  The caller holds the job's lock.
CREATE OR REPLACE FUNCTION pushjobs.job_status_set(p_job text,
    p_status pushjobs.job_status)
RETURNS pushjobs.jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_job  pushjobs.jobs;
BEGIN
    UPDATE pushjobs.jobs
       SET status = p_status, updated_at = now(),
           run_deadline = CASE WHEN p_status = 'running'
                               THEN now() + run_timeout * interval '1 second'
                               ELSE run_deadline END
     WHERE id = p_job
    RETURNING * INTO v_job;

    IF p_status = 'running' THEN
        PERFORM pushjobs.emit(p_job, v_job.org, 'quorum_succeeded', NULL);
    ELSE
        PERFORM pushjobs.emit(p_job, v_job.org, 'job_complete',
                              json_build_object('status', p_status), true);
        -- "stop ORG JOB STATUS NODE_STATUS=COUNT...": the job's end
        -- status and its nodes' final ones (whoever made them: agents,
        -- timeouts, channels lost, aborts), for the front ends' metrics
        PERFORM pushjobs.notify('stop', v_job.org,
            p_job || ' ' || p_status::text
            || COALESCE((SELECT string_agg(' ' || c.status::text || '='
                                           || c.n, '' ORDER BY c.status)
                           FROM (SELECT n.status, count(*) AS n
                                   FROM pushjobs.job_nodes n
                                  WHERE n.job_id = p_job
                                  GROUP BY n.status) c), ''));
    END IF;

    RETURN v_job;
END
$$;


-- The count a POST's max_concurrency or max_errors gives for a job of
-- p_nodes nodes: a count as given, a percentage "N%" of the job's nodes
-- rounded up, at least 1 (p_ceil: max_concurrency) or rounded down
-- (max_errors); NULL (no limit) when not given.  The module has checked
-- the value (common/job_body.c).
CREATE OR REPLACE FUNCTION pushjobs.rate_count(p_spec jsonb,
    p_nodes integer, p_ceil boolean)
RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_spec IS NULL OR jsonb_typeof(p_spec) = 'null' THEN NULL
        WHEN jsonb_typeof(p_spec) = 'number'
            THEN LEAST((p_spec #>> '{}')::numeric, 2147483647)::integer
        WHEN p_ceil
            THEN GREATEST(ceil(p_nodes * rtrim(p_spec #>> '{}', '%')::numeric
                               / 100), 1)::integer
        ELSE floor(p_nodes * rtrim(p_spec #>> '{}', '%')::numeric
                   / 100)::integer
    END
$$;


-- A job's concurrency limit (job_rollout), NULL when it has none.
CREATE OR REPLACE FUNCTION pushjobs.concurrency_limit(p_job text)
RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT r.concurrency_limit FROM pushjobs.job_rollout r
     WHERE r.job_id = p_job
$$;


-- Rate control of a running job (POST max_concurrency, max_errors), all
-- of it here under the job's lock, so that it holds across workers and
-- front ends and outlives any of them.  Once more nodes than error_limit
-- have failed (failed, crashed, timed_out; a nack_run is failed) the job
-- is halted: a rollout_halted event, every ready node whose run was not
-- released is was_ready (node_step()'s halt) and is told to abort (it
-- holds the commit), the nodes running finish.  Otherwise, with a
-- concurrency limit, ready nodes are released (job_rollout_released) in
-- node name order until that many are in flight (running, or released and
-- not yet running), and the workers are told to send their runs.  Nothing
-- is released once the job is aborted or halted.  A job without a
-- job_rollout row is left alone.  settle() calls it; the caller holds the
-- job's lock.
CREATE OR REPLACE FUNCTION pushjobs.rollout(p_job pushjobs.jobs)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_r       pushjobs.job_rollout;
    v_held    text[];
    v_n       record;
    v_batch   integer;
    v_names   text[];
    v_want    integer;
    v_seen    integer;
    v_count   integer;
    v_last    text;
BEGIN
    IF p_job.status <> 'running' OR p_job.abort_requested THEN
        RETURN;
    END IF;

    SELECT * INTO v_r FROM pushjobs.job_rollout WHERE job_id = p_job.id;

    IF NOT FOUND OR v_r.halted THEN
        RETURN;
    END IF;

    IF v_r.error_limit IS NOT NULL THEN
        IF v_r.failed > v_r.error_limit THEN
            v_held := ARRAY(SELECT n.node_name FROM pushjobs.job_nodes n
                             WHERE n.job_id = p_job.id AND n.status = 'ready'
                               AND v_r.concurrency_limit IS NOT NULL
                               AND NOT EXISTS (
                                   SELECT 1
                                     FROM pushjobs.job_rollout_released l
                                    WHERE l.job_id = p_job.id
                                      AND l.node_name = n.node_name)
                             ORDER BY n.node_name);

            UPDATE pushjobs.job_rollout SET halted = true
             WHERE job_id = p_job.id;

            PERFORM pushjobs.emit(p_job.id, p_job.org, 'rollout_halted',
                        json_build_object('failed', v_r.failed,
                                          'max_errors', v_r.max_errors,
                                          'not_started',
                                          cardinality(v_held)));

            IF cardinality(v_held) > 0 THEN
                PERFORM pushjobs.nodes_step(p_job, v_held, 'halt');
                PERFORM pushjobs.notify('stop', p_job.org, p_job.id);
            END IF;

            RETURN;
        END IF;
    END IF;

    IF v_r.concurrency_limit IS NULL THEN
        RETURN;
    END IF;

    IF v_r.in_flight >= v_r.concurrency_limit THEN
        RETURN;
    END IF;

    /*
     * The next ready nodes in name order after the last one looked at: a
     * node passed over was not ready or was asked to abort, and stays so
     * (no node becomes ready while the job runs, abort_requested is never
     * reset), so each node is looked at once.  Read in pieces of the
     * primary key with a LIMIT: a plan for the rest of the job (a bitmap
     * scan and a sort, or job_nodes_active) would read all of it at every
     * call.
     */
    v_want := v_r.concurrency_limit - v_r.in_flight;
    v_batch := v_r.released_batch + 1;
    v_names := '{}';
    v_last := v_r.scanned_through;

    LOOP
        v_seen := 0;

        FOR v_n IN
            SELECT n.node_name, n.status, n.abort_requested
              FROM pushjobs.job_nodes n
             WHERE n.job_id = p_job.id
               -- a range of the primary key (a node name is never '')
               AND n.node_name > COALESCE(v_last, '')
             ORDER BY n.job_id, n.node_name
             LIMIT v_want + 16
        LOOP
            v_seen := v_seen + 1;
            v_last := v_n.node_name;

            CONTINUE WHEN v_n.status <> 'ready' OR v_n.abort_requested;

            v_names := v_names || v_n.node_name;
            EXIT WHEN cardinality(v_names) >= v_want;
        END LOOP;

        EXIT WHEN cardinality(v_names) >= v_want OR v_seen < v_want + 16;
    END LOOP;

    v_count := cardinality(v_names);

    IF v_count > 0 THEN
        -- none of them released yet: those come before scanned_through
        INSERT INTO pushjobs.job_rollout_released (job_id, node_name,
                                                   batch)
        SELECT p_job.id, u.node, v_batch FROM unnest(v_names) AS u(node);
    END IF;

    IF v_last IS DISTINCT FROM v_r.scanned_through THEN
        UPDATE pushjobs.job_rollout
           SET in_flight = in_flight + v_count,
               scanned_through = v_last,
               released_batch = released_batch
                                + CASE WHEN v_count > 0 THEN 1 ELSE 0 END
         WHERE job_id = p_job.id;
    END IF;

    IF v_count > 0 THEN
        -- "run ORG JOB BATCH": the workers send the runs of this batch
        PERFORM pushjobs.notify('run', p_job.org,
                                p_job.id || ' ' || v_batch);
    END IF;
END
$$;


-- Ends voting or the run phase of a job once nothing is left to wait for;
-- in between, starts further nodes of a rate-controlled job (rollout()).
-- Every transaction that changes a node of a job calls it, so the next
-- node's run is released in the transaction that ends a running one, but
-- for node_inputs(): its batches of one job run at once, and settle_jobs()
-- settles their jobs in the transaction right after each.  The caller
-- holds the job's lock (FOR UPDATE).
CREATE OR REPLACE FUNCTION pushjobs.settle(p_job text)
RETURNS pushjobs.job_status
LANGUAGE plpgsql AS $$
DECLARE
    v_job     pushjobs.jobs;
    v_ready   integer;
    v_active  integer;
BEGIN
    SELECT * INTO v_job FROM pushjobs.jobs WHERE id = p_job;

    IF v_job.status = 'voting'
       AND NOT EXISTS (SELECT 1 FROM pushjobs.job_nodes
                        WHERE job_id = p_job AND status = 'new')
    THEN
        SELECT count(*) INTO v_ready
          FROM pushjobs.job_nodes
         WHERE job_id = p_job AND status = 'ready';

        IF v_ready >= v_job.quorum THEN
            v_job := pushjobs.job_status_set(p_job, 'running');

            -- with a concurrency limit rollout() below sends the runs
            IF v_ready > 0
               AND pushjobs.concurrency_limit(p_job) IS NULL
            THEN
                PERFORM pushjobs.notify('run', v_job.org, p_job);
            END IF;

        ELSE
            PERFORM pushjobs.nodes_step(v_job,
                        ARRAY(SELECT node_name FROM pushjobs.job_nodes
                               WHERE job_id = p_job AND status = 'ready'
                               ORDER BY node_name),
                        'quorum_failed');

            v_job := pushjobs.job_status_set(p_job, 'quorum_failed');
        END IF;
    END IF;

    IF v_job.status = 'running' THEN
        PERFORM pushjobs.rollout(v_job);

        -- a job with rate control counts its ready and running nodes
        SELECT r.active INTO v_active FROM pushjobs.job_rollout r
         WHERE r.job_id = p_job;

        IF v_active IS NULL THEN
            v_active := CASE WHEN EXISTS (
                                 SELECT 1 FROM pushjobs.job_nodes
                                  WHERE job_id = p_job
                                    AND status IN ('ready', 'running'))
                             THEN 1 ELSE 0 END;
        END IF;
    END IF;

    IF v_job.status = 'running' AND v_active = 0 THEN
        v_job := pushjobs.job_status_set(p_job,
                     CASE WHEN v_job.abort_requested THEN 'aborted'
                          ELSE 'complete' END::pushjobs.job_status);
    END IF;

    RETURN v_job.status;
END
$$;


-- Ends a running job whose run_timeout has passed: its ready and running
-- nodes become timed_out (no per-node events, as in 2.x), the job
-- timed_out, and the agents still holding it are told to abort.  Returns
-- false if the job is not running or its deadline is still ahead.  The
-- caller holds the job's lock.  The sweeper calls it, and so does every
-- agent message for the job first: an agent that ends the process itself
-- at run_timeout reports "failed" a moment before the sweeper would run,
-- and the job must still end timed_out, not complete.
CREATE OR REPLACE FUNCTION pushjobs.time_out(p_job text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_job  pushjobs.jobs;
BEGIN
    SELECT * INTO v_job FROM pushjobs.jobs
     WHERE id = p_job AND status = 'running' AND run_deadline <= now();

    IF NOT FOUND THEN
        RETURN false;
    END IF;

    PERFORM pushjobs.nodes_step(v_job,
                ARRAY(SELECT node_name FROM pushjobs.job_nodes
                       WHERE job_id = p_job AND status IN ('ready', 'running')
                       ORDER BY node_name),
                'run_timeout');

    PERFORM pushjobs.job_status_set(p_job, 'timed_out');

    RETURN true;
END
$$;


-- One input for one node of a job: an agent message (ack_commit,
-- nack_commit, ack_run, nack_run, succeeded, failed, aborted) or a server
-- input: down (also every node without a channel when the job is
-- created), voting_timeout, quorum_failed (voting ended short of the
-- quorum: a ready node is was_ready), run_timeout (the job timed out: a
-- ready or running node is timed_out, no event, as in 2.x), abort
-- (abort_job() ends a node still voting, or one without a channel: it is
-- aborted, with its vote or run_complete "aborted") and halt (rollout():
-- the job's error budget is spent, a ready node whose run was never sent
-- is was_ready, no event, as when a quorum fails).  Implements
-- the node-in-job transition tables of Push Jobs 2.x, with these
-- deliberate changes (tested in t/engine-vote.t and t/engine-run.t):
--   * a final report from a node still "ready" in a running job counts as
--     run and finished (the run was sent; only its ack_run was lost with a
--     connection), so a result is never turned into "crashed";
--   * a final report (succeeded, failed, aborted) for a node that is
--     already terminal, or for a job that has ended or is unknown, changes
--     nothing, emits nothing and causes no abort: agents re-send spooled
--     reports after every reconnect until they are acked, so a duplicate
--     is normal, not a sign of a confused agent (2.x: rehab and
--     client_died_while_running);
--   * a second ack_commit from a node already "ready" is the same vote
--     sent again, a no-op without an event (2.x: quorum_vote
--     "unexpected_commit"), so each node votes at most once;
--   * "down" of a terminal node is a no-op (2.x: rehab); the sweeper and
--     agent_hello() only ever pass it for new/ready/running nodes;
--   * the node-lost timeout replaces 2.x's heartbeat decay: a node whose
--     channel is gone is "down" after pushjobs_node_lost_timeout, and a
--     reconnect within it continues the job (agent_hello());
--   * a message arriving after the job's run_deadline first times the job
--     out (time_out()), so the run timer wins over a report the agent sent
--     because it ended the process itself at run_timeout.
-- The rehab (abort) of 2.x is an abort sent once per channel and job
-- until the agent answers "aborted", not re-sent every second.
--
-- node_step() decides, without touching a table: the node's new status (its
-- old one when nothing changes), the events to emit in their order (names,
-- and the fields of each for emit_events()), and whether the agent should
-- be sent an abort ("rehab" in 2.x).  p_node names the node in the events.
CREATE OR REPLACE FUNCTION pushjobs.node_step(
    p_job_status pushjobs.job_status, p_status pushjobs.node_status,
    p_abort boolean, p_input text, p_node text,
    OUT new_status pushjobs.node_status, OUT rehab boolean,
    OUT event_names text[], OUT event_fields json[])
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_final        boolean := p_input IN ('succeeded', 'failed', 'aborted');
    v_server       boolean := p_input IN ('down', 'voting_timeout',
                                          'quorum_failed', 'run_timeout',
                                          'abort', 'halt');
    v_vote         text;
    v_rehab_event  boolean := false;
    v_run_start    boolean := false;
    v_run          text;
BEGIN
    new_status := p_status;
    rehab := false;
    event_names := '{}';
    event_fields := '{}';

    /*
     * An unknown node, a job that has ended, or a node aborted by
     * abort_job(): whatever its agent still says about the job (a late
     * vote, its "aborted") changes nothing and makes no event; anything but
     * a final report gets it another abort.
     */
    IF p_status IS NULL OR NOT pushjobs.job_active(p_job_status)
       OR p_status = 'aborted'
    THEN
        rehab := NOT v_final;
        RETURN;
    END IF;

    IF p_job_status IN ('new', 'voting') THEN

        IF p_status IN ('new', 'ready') THEN
            IF p_input = 'ack_commit' THEN
                /*
                 * A ready node's second ack_commit is its agent sending its
                 * answer again (it re-sends what it has not seen acted on
                 * after a reconnect): the same vote, not a new one.  2.x
                 * recorded it as a quorum_vote "unexpected_commit"; here it
                 * changes nothing and makes no event, so a node votes once.
                 */
                IF p_status = 'new' THEN
                    new_status := 'ready';
                    v_vote := 'success';
                END IF;

            ELSIF p_input = 'nack_commit' THEN
                IF p_status = 'new' THEN
                    new_status := 'nacked';
                    v_vote := 'failure';
                ELSE
                    new_status := 'unavailable';
                    v_vote := 'lost_availibility';
                    rehab := true;
                    v_rehab_event := true;
                END IF;

            ELSIF p_input = 'down' THEN
                new_status := 'unavailable';
                v_vote := 'down';
                rehab := true;
                v_rehab_event := true;

            ELSIF p_input = 'voting_timeout' THEN
                new_status := 'unavailable';
                v_vote := 'voting_timeout';
                rehab := true;

            ELSIF p_input = 'quorum_failed' THEN
                IF p_status = 'ready' THEN
                    new_status := 'was_ready';
                END IF;

            ELSIF p_input = 'abort' THEN
                new_status := 'aborted';
                v_vote := 'aborted';

            ELSIF p_input = 'aborted' AND p_abort THEN
                new_status := 'aborted';

            ELSE
                new_status := 'unavailable';
                rehab := true;
                v_rehab_event := true;
            END IF;

        ELSIF p_input IN ('ack_commit', 'nack_commit') THEN
            v_vote := 'client_died_while_voting';
            rehab := true;
            v_rehab_event := true;

        ELSIF NOT v_final AND NOT v_server THEN
            rehab := true;
            v_rehab_event := true;
        END IF;

    ELSE /* running */

        IF p_status IN ('ready', 'running') THEN
            IF p_input = 'ack_run' THEN
                IF p_status = 'ready' THEN
                    new_status := 'running';
                    v_run_start := true;
                END IF;

            ELSIF p_input = 'nack_run' THEN
                new_status := 'failed';
                v_run := CASE WHEN p_status = 'ready' THEN 'run_nacked'
                              ELSE 'run_nacked_while_running' END;
                rehab := true;
                v_rehab_event := true;

            ELSIF p_input IN ('succeeded', 'failed') THEN
                v_run_start := p_status = 'ready';
                new_status := p_input::pushjobs.node_status;
                v_run := CASE WHEN p_input = 'succeeded' THEN 'success'
                              ELSE 'failure' END;

            ELSIF p_input = 'run_timeout' THEN
                new_status := 'timed_out';

            ELSIF p_input = 'halt' THEN
                /* the error budget is spent before its run was sent */
                IF p_status = 'ready' THEN
                    new_status := 'was_ready';
                END IF;

            ELSIF p_input = 'abort' THEN
                new_status := 'aborted';
                v_run := 'aborted';

            ELSIF p_input IN ('aborted', 'down') AND p_abort THEN
                /* asked to stop, then stopped or gone: aborted either way */
                new_status := 'aborted';
                v_run := 'aborted';

            ELSE
                new_status := 'crashed';
                v_run := 'crashed';
                rehab := true;
                v_rehab_event := true;
            END IF;

        ELSIF NOT v_final AND NOT v_server THEN
            v_run := 'client_died_while_running';
            rehab := true;
            v_rehab_event := true;
        END IF;
    END IF;

    /* the events, in this order */
    IF v_vote IS NOT NULL THEN
        event_names := array_append(event_names, 'quorum_vote');
        event_fields := array_append(event_fields,
                            json_build_object('node', p_node,
                                              'status', v_vote));
    END IF;

    IF v_rehab_event THEN
        event_names := array_append(event_names, 'rehab');
        event_fields := array_append(event_fields,
                            json_build_object('node', p_node));
    END IF;

    IF v_run_start THEN
        event_names := array_append(event_names, 'run_start');
        event_fields := array_append(event_fields,
                            json_build_object('node', p_node));
    END IF;

    IF v_run IS NOT NULL THEN
        event_names := array_append(event_names, 'run_complete');
        event_fields := array_append(event_fields,
                            json_build_object('node', p_node,
                                              'status', v_run));
    END IF;
END
$$;


-- node_step() applied to one node: the row updated, the events emitted.
-- Returns true when the agent should be sent an abort ("rehab" in 2.x).
-- The caller holds the job's lock (no row lock is taken: every writer of a
-- job's nodes holds it) and calls settle() afterwards.
CREATE OR REPLACE FUNCTION pushjobs.node_transition(p_job pushjobs.jobs,
    p_node text, p_input text, p_exit integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_status  pushjobs.node_status;
    v_abort   boolean;
    v_step    record;
BEGIN
    SELECT status, abort_requested INTO v_status, v_abort
      FROM pushjobs.job_nodes
     WHERE job_id = p_job.id AND node_name = p_node;

    v_step := pushjobs.node_step(p_job.status, v_status, v_abort, p_input,
                                 p_node);

    IF v_step.new_status <> v_status THEN
        UPDATE pushjobs.job_nodes
           SET status = v_step.new_status,
               exit_status = COALESCE(p_exit, exit_status),
               updated_at = now()
         WHERE job_id = p_job.id AND node_name = p_node;
    END IF;

    PERFORM pushjobs.emit_events(p_job.id, p_job.org, NULL,
                                 v_step.event_names, v_step.event_fields);

    RETURN v_step.rehab;
END
$$;


-- node_step() applied to the named nodes of a job at once, all with the
-- same server input: one UPDATE of the nodes whose status changes, then
-- their events (emit_events()), node by node in p_nodes order.  The caller
-- holds the job's lock and calls settle() afterwards when it should.
CREATE OR REPLACE FUNCTION pushjobs.nodes_step(p_job pushjobs.jobs,
    p_nodes text[], p_input text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_keys    bigint[];
    v_names   text[];
    v_fields  json[];
BEGIN
    WITH s AS (
        SELECT u.ord, n.node_name, n.status, st.new_status,
               st.event_names, st.event_fields
          FROM unnest(p_nodes) WITH ORDINALITY AS u(node, ord)
          JOIN pushjobs.job_nodes n
            ON n.job_id = p_job.id AND n.node_name = u.node
         CROSS JOIN LATERAL pushjobs.node_step(p_job.status, n.status,
                                               n.abort_requested, p_input,
                                               n.node_name) AS st
    ), moved AS (
        UPDATE pushjobs.job_nodes n
           SET status = s.new_status, updated_at = now()
          FROM s
         WHERE n.job_id = p_job.id AND n.node_name = s.node_name
           AND s.new_status <> s.status
    )
    SELECT array_agg(s.ord * 4 + e.k ORDER BY s.ord, e.k),
           array_agg(e.name ORDER BY s.ord, e.k),
           array_agg(e.fields ORDER BY s.ord, e.k)
      INTO v_keys, v_names, v_fields
      FROM s
     CROSS JOIN LATERAL unnest(s.event_names, s.event_fields)
           WITH ORDINALITY AS e(name, fields, k);

    PERFORM pushjobs.emit_events(p_job.id, p_job.org, v_keys, v_names,
                                 v_fields);
END
$$;


-- Creates a job from a validated POST body (the module checks every field
-- first).  Nodes without a live channel are unavailable at once, as in 2.x,
-- but for those being handed over by a reload (available_nodes()).
CREATE OR REPLACE FUNCTION pushjobs.create_job(p_org text, p_requestor text,
    p_body jsonb, p_default_run_timeout integer, p_voting_timeout_ms integer,
    p_owner_timeout_ms integer)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_id       text := replace(gen_random_uuid()::text, '-', '');
    v_nodes    text[];
    v_job      pushjobs.jobs;
    v_names    text[];
    v_fields   json[];
BEGIN
    v_nodes := ARRAY(SELECT jsonb_array_elements_text(p_body -> 'nodes'));

    INSERT INTO pushjobs.jobs (id, org, command, quorum, run_timeout,
                               requestor, job_user, dir, env, file, capture,
                               status, voting_deadline)
    VALUES (v_id, p_org, p_body ->> 'command',
            CASE WHEN p_body ? 'quorum'
                 THEN LEAST(GREATEST(ceil((p_body ->> 'quorum')::numeric),
                                     -2147483648), 2147483647)::integer
                 ELSE cardinality(v_nodes) END,
            CASE WHEN p_body ? 'run_timeout'
                 THEN LEAST(GREATEST(ceil((p_body ->> 'run_timeout')::numeric),
                                     0), 2147483647)::integer
                 ELSE p_default_run_timeout END,
            p_requestor, p_body ->> 'user', p_body ->> 'dir', p_body -> 'env',
            p_body ->> 'file',
            COALESCE((p_body ->> 'capture_output')::boolean, false),
            'voting',
            now() + p_voting_timeout_ms * interval '1 millisecond')
    RETURNING * INTO v_job;

    IF p_body ? 'max_concurrency' OR p_body ? 'max_errors' THEN
        INSERT INTO pushjobs.job_rollout (job_id, max_concurrency,
                                          max_errors, concurrency_limit,
                                          error_limit)
        VALUES (v_id, p_body -> 'max_concurrency', p_body -> 'max_errors',
                pushjobs.rate_count(p_body -> 'max_concurrency',
                                    cardinality(v_nodes), true),
                pushjobs.rate_count(p_body -> 'max_errors',
                                    cardinality(v_nodes), false));
    END IF;

    -- Every node is inserted with the status node_step() gives it: a node
    -- without a channel is "down" at once (unavailable, with its vote
    -- "down" and its rehab), the others are new.  Its events are emitted
    -- after the job's start, in the order the nodes were named.  OFFSET 0
    -- keeps node_step() behind its condition: pulled up into the join, it
    -- ran for every node, available or not (0.4 s of a 100,000-node job).
    WITH s AS (
        SELECT u.node, u.ord, st.new_status, st.event_names,
               st.event_fields
          FROM unnest(v_nodes) WITH ORDINALITY AS u(node, ord)
          LEFT JOIN pushjobs.available_nodes(p_org, p_owner_timeout_ms) o
                 ON o.node_name = u.node
          LEFT JOIN LATERAL (SELECT *
                               FROM pushjobs.node_step(v_job.status, 'new',
                                                       false, 'down', u.node)
                              WHERE o.node_name IS NULL
                             OFFSET 0) AS st
                 ON true
    ), ins AS (
        INSERT INTO pushjobs.job_nodes (job_id, org, node_name, status)
        SELECT v_id, p_org, s.node, COALESCE(s.new_status, 'new')
          FROM s
    )
    SELECT array_agg(e.name ORDER BY s.ord, e.k),
           array_agg(e.fields ORDER BY s.ord, e.k)
      INTO v_names, v_fields
      FROM s
     CROSS JOIN LATERAL unnest(s.event_names, s.event_fields)
           WITH ORDINALITY AS e(name, fields, k);

    PERFORM pushjobs.emit(v_id, p_org, 'start',
        json_strip_nulls(json_build_object(
            'command', v_job.command,
            'run_timeout', v_job.run_timeout,
            'quorum', v_job.quorum,
            'node_count', cardinality(v_nodes),
            'user', p_requestor,
            'job_user', v_job.job_user,
            'dir', v_job.dir,
            'env', v_job.env,
            'file_specified', CASE WHEN v_job.file IS NOT NULL
                                   THEN true END,
            'capture', v_job.capture,
            'max_concurrency', p_body -> 'max_concurrency',
            'max_errors', p_body -> 'max_errors')),
        true);

    PERFORM pushjobs.emit_events(v_id, p_org, NULL, v_names, v_fields);

    IF EXISTS (SELECT 1 FROM pushjobs.job_nodes
                WHERE job_id = v_id AND status = 'new')
    THEN
        PERFORM pushjobs.notify('commit', p_org, v_id);
    END IF;

    PERFORM pushjobs.settle(v_id);

    RETURN v_id;
END
$$;


-- Aborts a job, or some of its nodes (POST jobs/ID/abort).  p_nodes is a
-- JSON array of node names (checked by the module), or NULL for the whole
-- job.  Nodes still voting, and nodes without a live agent channel, end
-- "aborted" at once; a node with a run to stop is marked abort_requested
-- (abort_force for a kill at once) and ends "aborted" when its agent
-- answers "aborted" or is gone.  Aborting the whole job, or every node it
-- still waits for, makes the job end "aborted" once nothing is left
-- running; a partial abort lets the job end as it otherwise would.  A job
-- that has ended is left as it is; repeating an abort changes nothing but
-- may add force.
--
-- Returns the outcome, which the module answers: no_job (no such job in
-- the org), not_in_job (doc: the first node named, in name order, that is
-- not in the job; nothing is changed), else stopping while a node of the
-- job is still being stopped and stopped when not, with the job document.
CREATE OR REPLACE FUNCTION pushjobs.abort_job(p_org text, p_job text,
    p_requestor text, p_nodes jsonb, p_force boolean,
    p_owner_timeout_ms integer)
RETURNS TABLE (outcome text, doc text)
LANGUAGE plpgsql AS $$
DECLARE
    v_job      pushjobs.jobs;
    v_nodes    text[];
    v_missing  text;
    v_whole    boolean;
    v_voting   boolean;
    v_changed  text[] := '{}';
    v_ended    text[] := '{}';
    r          record;
BEGIN
    SELECT * INTO v_job FROM pushjobs.jobs
     WHERE id = p_job AND org = p_org
       FOR UPDATE;

    IF NOT FOUND THEN
        outcome := 'no_job';
        RETURN NEXT;
        RETURN;
    END IF;

    IF p_nodes IS NOT NULL THEN
        v_nodes := ARRAY(SELECT DISTINCT jsonb_array_elements_text(p_nodes));

        SELECT u.node INTO v_missing
          FROM unnest(v_nodes) AS u(node)
         WHERE NOT EXISTS (SELECT 1 FROM pushjobs.job_nodes n
                            WHERE n.job_id = p_job AND n.node_name = u.node)
         ORDER BY u.node
         LIMIT 1;

        IF v_missing IS NOT NULL THEN
            outcome := 'not_in_job';
            doc := v_missing;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;

    IF pushjobs.job_active(v_job.status) THEN
        v_voting := v_job.status <> 'running';

        v_whole := p_nodes IS NULL
                   OR NOT EXISTS (SELECT 1 FROM pushjobs.job_nodes n
                                   WHERE n.job_id = p_job
                                     AND pushjobs.node_active(n.status)
                                     AND NOT n.abort_requested
                                     AND n.node_name <> ALL (v_nodes));

        FOR r IN
            SELECT n.node_name, n.abort_requested, n.abort_force,
                   o.node_name IS NOT NULL AS online
              FROM pushjobs.job_nodes n
              LEFT JOIN pushjobs.online_nodes(p_org, p_owner_timeout_ms) o
                     ON o.node_name = n.node_name
             WHERE n.job_id = p_job
               AND pushjobs.node_active(n.status)
               AND (p_nodes IS NULL OR n.node_name = ANY (v_nodes))
             ORDER BY n.node_name
        LOOP
            IF v_voting OR NOT r.online
               OR NOT r.abort_requested OR (p_force AND NOT r.abort_force)
            THEN
                UPDATE pushjobs.job_nodes
                   SET abort_requested = true,
                       abort_force = r.abort_force OR p_force,
                       updated_at = now()
                 WHERE job_id = p_job AND node_name = r.node_name;

                v_changed := v_changed || r.node_name;

                IF v_voting OR NOT r.online THEN
                    /* nothing runs there, or nothing we can reach: it ends
                     * aborted below (node_step()'s "abort") */
                    v_ended := v_ended || r.node_name;
                END IF;
            END IF;
        END LOOP;

        IF cardinality(v_changed) > 0
           OR (v_whole AND NOT v_job.abort_requested)
        THEN
            UPDATE pushjobs.jobs
               SET abort_requested = abort_requested OR v_whole,
                   updated_at = now()
             WHERE id = p_job
            RETURNING * INTO v_job;

            PERFORM pushjobs.emit(p_job, p_org, 'abort',
                                  json_build_object('user', p_requestor,
                                                    'nodes', v_changed,
                                                    'force', p_force));
        END IF;

        PERFORM pushjobs.nodes_step(v_job, v_ended, 'abort');

        IF v_voting AND v_whole THEN
            /* every node it waited for has ended: no quorum to decide */
            PERFORM pushjobs.job_status_set(p_job, 'aborted');
        ELSE
            PERFORM pushjobs.settle(p_job);
        END IF;

        /* (again) to the agents: abort, or abort with force */
        PERFORM pushjobs.notify('stop', p_org, p_job);
    END IF;

    outcome := CASE WHEN EXISTS (SELECT 1 FROM pushjobs.job_nodes n
                                  WHERE n.job_id = p_job
                                    AND n.abort_requested
                                    AND n.status IN ('ready', 'running'))
                    THEN 'stopping' ELSE 'stopped' END;
    doc := pushjobs.job_json(p_org, p_job, false);
    RETURN NEXT;
END
$$;


-- The node changes and events of one job from one node_inputs() batch,
-- written at once: one UPDATE, then the events in p_keys order
-- (emit_events(): one INSERT, one notification).  The caller holds the
-- job's lock.  The batch's nodes are found through the primary key
-- (= ANY, and no sequential scan): joined with the whole job, a batch of
-- 2,000 messages cost a scan of all its nodes, 76 ms of the 280 ms of a
-- batch in a 100,000-node job, and a 1,000,000-node job ten times that
-- per batch.
CREATE OR REPLACE FUNCTION pushjobs.node_inputs_write(p_job text, p_org text,
    p_nodes text[], p_old pushjobs.node_status[],
    p_status pushjobs.node_status[], p_exit integer[],
    p_keys bigint[], p_names text[], p_fields json[])
RETURNS void
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    v_count  integer;
BEGIN
    IF cardinality(p_nodes) > 0 THEN
        -- each node only from the status its messages were stepped from:
        -- another batch of the job (the node's channel moved to another
        -- worker) may have changed it since; PostgreSQL re-checks the
        -- condition on the row's new version after waiting for it
        UPDATE pushjobs.job_nodes n
           SET status = u.status,
               exit_status = COALESCE(u.exit_status, n.exit_status),
               updated_at = now()
          FROM unnest(p_nodes, p_old, p_status, p_exit)
                   AS u(node, old, status, exit_status)
         WHERE n.job_id = p_job AND n.node_name = ANY (p_nodes)
           AND n.node_name = u.node AND n.status = u.old;

        GET DIAGNOSTICS v_count = ROW_COUNT;

        IF v_count <> cardinality(p_nodes) THEN
            RAISE EXCEPTION 'pushjobs: a node of job % changed meanwhile',
                            p_job USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;

    PERFORM pushjobs.emit_events(p_job, p_org, p_keys, p_names, p_fields);
END
$$;


-- What a node of a job has streamed and is stored, per stream (job_output
-- _chunk rows, which node_outputs() appends without gaps from offset 0).
CREATE OR REPLACE FUNCTION pushjobs.node_streamed(p_job text, p_node text)
RETURNS TABLE (stdout bytea, stderr bytea)
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(string_agg(c.data, '' ORDER BY c.off)
                        FILTER (WHERE c.stream = 'stdout'), ''),
           COALESCE(string_agg(c.data, '' ORDER BY c.off)
                        FILTER (WHERE c.stream = 'stderr'), '')
      FROM pushjobs.job_output_chunk c
     WHERE c.job_id = p_job AND c.node_name = p_node
$$;


-- A batch of agent messages from one worker: a JSON array of
-- {"org", "node", "job_id", "type", "exit_status", "stdout", "stderr",
--  "truncated"}, and for a final report that leaves out what its agent
-- streamed: "stdout_offset", "stderr_offset" (where the report's bytes
-- start in each stream) and "cap" (pushjobs_max_output_size).  Such a
-- short report is stored as it came, with where its bytes start
-- (job_output's stdout_at, stderr_at): the bytes before are the node's
-- job_output_chunk rows, which must then be exactly that many (up to the
-- cap).  Returns, for each element (0-based), whether the agent is to be
-- set right (rehab): sent an abort for that job, or for a short report
-- whose streamed bytes are not all stored (a chunk was lost: the channel
-- or the database failed under it, or the node was not running), asked
-- for its whole report (docs/protocol.md, resend); that report is then
-- not applied.  Final reports are applied once however often they arrive.
--
-- Each message is node_step() as in node_transition(), but the batch is
-- set-based: the jobs are locked (and timed out) first, then one query
-- reads every message with its node's row, walked per job and node in
-- arrival order; each job's node updates and events are written at once
-- (node_inputs_write()), its events in arrival order.  Per message that
-- leaves no statement but the captured output.
--
-- The locks: a job whose run timer has fired is timed out first, its row
-- FOR UPDATE; then every job of the batch is held FOR SHARE, in id order,
-- so that the batches of one job from several workers (its nodes'
-- channels are spread over them) run at the same time, while the job's
-- status cannot change under them.  A node two batches both touch (its
-- channel moved to another worker with a message in flight) is written
-- only from the status it was stepped from: the later batch finds it
-- changed, undoes its attempt and steps its messages again from the rows
-- as they are (at most 5 attempts; a deadlock between two batches is
-- undone the same way).  The job is not settled here: the caller settles
-- the jobs of the batch with settle_jobs(), in a transaction of its own
-- right after this one commits (the module's settle batch), and the
-- sweeper settles every voting or running job it finds unlocked, should a
-- front end fail between the two.
CREATE OR REPLACE FUNCTION pushjobs.node_inputs(p_inputs jsonb)
RETURNS TABLE (i integer, rehab boolean)
LANGUAGE plpgsql AS $$
DECLARE
    r         record;
    v_step    record;
    v_job     pushjobs.jobs;
    v_id      text;
    v_node    text;
    v_old     pushjobs.node_status;
    v_status  pushjobs.node_status;
    v_exit    integer;
    v_moved   boolean;
    v_try     integer := 0;
    u_nodes   text[];
    u_old     pushjobs.node_status[];
    u_status  pushjobs.node_status[];
    u_exit    integer[];
    e_keys    bigint[];
    e_names   text[];
    e_fields  json[];
    o_i       integer[];
    o_rehab   boolean[];
    v_out_at  bigint;
    v_err_at  bigint;
    v_trunc   boolean;
BEGIN
    -- every job of the batch, in id order, is held to the batch's commit:
    -- FOR SHARE, so that its status does not change while the batch runs
    -- and its other batches run at the same time; or, when its run timer
    -- has fired, FOR UPDATE and ended first (see time_out()).  One pass in
    -- id order: a job timed out first and the others after would lock out
    -- of order, and deadlock with settle_jobs().
    FOR v_id IN
        SELECT j.id FROM pushjobs.jobs j
         WHERE (j.id, j.org) IN (SELECT e ->> 'job_id', e ->> 'org'
                                   FROM jsonb_array_elements(p_inputs) e)
         ORDER BY j.id
    LOOP
        IF EXISTS (SELECT 1 FROM pushjobs.jobs j
                    WHERE j.id = v_id AND j.status = 'running'
                      AND j.run_deadline <= now())
        THEN
            PERFORM 1 FROM pushjobs.jobs j WHERE j.id = v_id FOR UPDATE;
            PERFORM pushjobs.time_out(v_id);
        ELSE
            PERFORM 1 FROM pushjobs.jobs j WHERE j.id = v_id FOR SHARE;
        END IF;
    END LOOP;

    <<attempt>>
    LOOP
    BEGIN
    v_job := NULL; v_id := NULL; v_node := NULL; v_moved := false;
    u_nodes := '{}'; u_old := '{}'; u_status := '{}'; u_exit := '{}';
    e_keys := '{}'; e_names := '{}'; e_fields := '{}';
    o_i := '{}'; o_rehab := '{}';

    FOR r IN
        SELECT (e.ord - 1)::integer AS idx, e.ord,
               e.v ->> 'org' AS org,
               e.v ->> 'node' AS node,
               e.v ->> 'job_id' AS job_id,
               e.v ->> 'type' AS input,
               (e.v ->> 'exit_status')::integer AS exit_status,
               e.v ->> 'stdout' AS stdout,
               e.v ->> 'stderr' AS stderr,
               COALESCE((e.v ->> 'truncated')::boolean, false) AS truncated,
               COALESCE((e.v ->> 'stdout_offset')::bigint, 0) AS out_off,
               COALESCE((e.v ->> 'stderr_offset')::bigint, 0) AS err_off,
               (e.v ->> 'cap')::bigint AS cap,
               n.status, n.abort_requested
          FROM jsonb_array_elements(p_inputs) WITH ORDINALITY AS e(v, ord)
          LEFT JOIN pushjobs.jobs j
                 ON j.id = e.v ->> 'job_id' AND j.org = e.v ->> 'org'
          LEFT JOIN pushjobs.job_nodes n
                 ON n.job_id = j.id AND n.node_name = e.v ->> 'node'
         ORDER BY e.v ->> 'job_id', e.v ->> 'node', e.ord
    LOOP
        IF v_node IS DISTINCT FROM r.node OR v_id IS DISTINCT FROM r.job_id
        THEN
            IF v_moved THEN
                u_nodes := array_append(u_nodes, v_node);
                u_old := array_append(u_old, v_old);
                u_status := array_append(u_status, v_status);
                u_exit := array_append(u_exit, v_exit);
            END IF;

            v_node := r.node;
            v_old := r.status;
            v_status := r.status;
            v_exit := NULL;
            v_moved := false;
        END IF;

        IF v_id IS DISTINCT FROM r.job_id THEN
            IF v_job.id IS NOT NULL THEN
                PERFORM pushjobs.node_inputs_write(v_job.id, v_job.org,
                            u_nodes, u_old, u_status, u_exit,
                            e_keys, e_names, e_fields);
                u_nodes := '{}'; u_old := '{}'; u_status := '{}';
                u_exit := '{}';
                e_keys := '{}'; e_names := '{}'; e_fields := '{}';
            END IF;

            -- held above
            SELECT * INTO v_job FROM pushjobs.jobs
             WHERE id = r.job_id AND org = r.org;

            v_id := r.job_id;
        END IF;

        o_i := array_append(o_i, r.idx);

        IF v_job.id IS NULL THEN
            o_rehab := array_append(o_rehab,
                           r.input NOT IN ('succeeded', 'failed', 'aborted'));
            CONTINUE;
        END IF;

        IF r.input IN ('succeeded', 'failed')
           AND (r.stdout IS NOT NULL OR r.stderr IS NOT NULL)
           AND r.status IS NOT NULL
        THEN
            v_out_at := 0;
            v_err_at := 0;
            v_trunc := false;

            IF (r.out_off > 0 OR r.err_off > 0)
               AND NOT EXISTS (SELECT 1 FROM pushjobs.job_output o
                                WHERE o.job_id = v_job.id
                                  AND o.node_name = r.node)
            THEN
                -- a short report: what it leaves out must be stored as
                -- chunks
                SELECT l.stdout_len, l.stderr_len, l.truncated
                  INTO v_out_at, v_err_at, v_trunc
                  FROM pushjobs.job_output_live l
                 WHERE l.job_id = v_job.id AND l.node_name = r.node;

                IF NOT FOUND
                   OR v_out_at <> least(r.out_off, r.cap)
                   OR v_err_at <> least(r.err_off, r.cap)
                THEN
                    o_rehab := array_append(o_rehab, true);
                    CONTINUE;
                END IF;
            END IF;

            BEGIN
                INSERT INTO pushjobs.job_output (job_id, node_name, stdout,
                                                 stderr, truncated,
                                                 stdout_at, stderr_at)
                VALUES (v_job.id, r.node,
                        decode(COALESCE(r.stdout, ''), 'base64'),
                        decode(COALESCE(r.stderr, ''), 'base64'),
                        r.truncated OR v_trunc, v_out_at, v_err_at)
                ON CONFLICT DO NOTHING;
            EXCEPTION WHEN invalid_parameter_value THEN
                RAISE WARNING 'pushjobs: undecodable output from node % '
                              'for job %', r.node, v_job.id;
            END;
        END IF;

        v_step := pushjobs.node_step(v_job.status, v_status,
                                     r.abort_requested, r.input, r.node);

        IF v_step.new_status <> v_status THEN
            v_status := v_step.new_status;
            v_exit := COALESCE(r.exit_status, v_exit);
            v_moved := true;
        END IF;

        -- the events of one message in their order, after those of the
        -- messages before it (node_step() makes at most four)
        FOR k IN 1 .. cardinality(v_step.event_names) LOOP
            e_keys := array_append(e_keys, r.ord * 4 + k);
            e_names := array_append(e_names, v_step.event_names[k]);
            e_fields := array_append(e_fields, v_step.event_fields[k]);
        END LOOP;

        -- a final report's rehab is a resend: only for a short one, above
        o_rehab := array_append(o_rehab, v_step.rehab
                       AND r.input NOT IN ('succeeded', 'failed', 'aborted'));
    END LOOP;

    IF v_job.id IS NOT NULL THEN
        IF v_moved THEN
            u_nodes := array_append(u_nodes, v_node);
            u_old := array_append(u_old, v_old);
            u_status := array_append(u_status, v_status);
            u_exit := array_append(u_exit, v_exit);
        END IF;

        PERFORM pushjobs.node_inputs_write(v_job.id, v_job.org,
                    u_nodes, u_old, u_status, u_exit,
                    e_keys, e_names, e_fields);
    END IF;

    EXIT attempt;

    -- a node changed by another batch meanwhile: the batch again, from
    -- the rows as they are now (this attempt's writes are undone)
    EXCEPTION WHEN serialization_failure OR deadlock_detected THEN
        v_try := v_try + 1;
        IF v_try >= 5 THEN
            RAISE;
        END IF;
    END;
    END LOOP;

    RETURN QUERY SELECT * FROM unnest(o_i, o_rehab);
END
$$;


-- Quorum and completion of the jobs a batch of node_inputs() touched, in a
-- transaction of their own right after it: each job's row FOR UPDATE, so
-- that this waits for the job's batches in flight and sees all that they
-- wrote.  A job that has ended is not locked (a report sent again after
-- its end names it too).
CREATE OR REPLACE FUNCTION pushjobs.settle_jobs(p_jobs text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_id  text;
BEGIN
    FOR v_id IN
        SELECT j.id FROM pushjobs.jobs j
         WHERE j.id = ANY (p_jobs) AND j.status IN ('voting', 'running')
         ORDER BY j.id
           FOR UPDATE
    LOOP
        PERFORM pushjobs.settle(v_id);
    END LOOP;
END
$$;


-- A batch of output chunks from one worker: a JSON array of {"org",
-- "node", "job_id", "stream" ("stdout" or "stderr"), "offset" (of the
-- chunk's first byte in its stream), "data" (base64), "cap" (the
-- server's pushjobs_max_output_size), "truncated" (the agent's chunk went
-- beyond the cap)}.  Each chunk is stored as a job_output_chunk row of
-- its node, only the part beyond what is stored (a
-- chunk re-sent after a reconnect adds nothing; one after a gap is
-- dropped: the final report fills it), up to the cap (then the node's
-- job_output_live row is marked truncated); that row keeps the stream's
-- length, so a chunk costs its own bytes whatever the node has sent
-- before.  What was appended is an output event {"node",
-- "stream", "offset"} on the job's feed, without the bytes: a feed reads
-- them from the chunk row (job_feed()), so they are written once, not a
-- second time as base64 in job_events.  Only a node of a running job
-- that runs (or is ready: its ack_run goes through the module's other
-- batch, node_inputs(), and may be stored after its first chunks, whose
-- loss would drop the rest of its stream as a gap) and whose final
-- report has not been stored streams: the report wins, and no output
-- event follows the node's end.  One emit_events() per job;
-- the jobs are locked in id order like node_inputs() does.
CREATE OR REPLACE FUNCTION pushjobs.node_outputs(p_chunks jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r         record;
    v_job     pushjobs.jobs;
    v_id      text;
    v_cur     bigint;
    v_trunc   boolean;
    v_data    bytea;
    v_keys    bigint[] := '{}';
    v_names   text[] := '{}';
    v_fields  json[] := '{}';
BEGIN
    -- the job ids only: jsonb_array_elements() would copy every chunk's
    -- data (a batch holds megabytes) for the lock too; the loop below
    -- checks the org
    PERFORM 1 FROM pushjobs.jobs j
     WHERE j.id IN (SELECT jsonb_path_query(p_chunks, '$[*].job_id') #>> '{}')
     ORDER BY j.id
       FOR UPDATE;

    FOR r IN
        SELECT e.ord, e.v ->> 'org' AS org, e.v ->> 'node' AS node,
               e.v ->> 'job_id' AS job_id, e.v ->> 'stream' AS stream,
               (e.v ->> 'offset')::bigint AS off, e.v ->> 'data' AS data,
               (e.v ->> 'cap')::bigint AS cap,
               COALESCE((e.v ->> 'truncated')::boolean, false) AS truncated
          FROM jsonb_array_elements(p_chunks) WITH ORDINALITY AS e(v, ord)
          JOIN pushjobs.jobs j
            ON j.id = e.v ->> 'job_id' AND j.org = e.v ->> 'org'
          JOIN pushjobs.job_nodes n
            ON n.job_id = j.id AND n.node_name = e.v ->> 'node'
         WHERE j.status = 'running' AND n.status IN ('ready', 'running')
           AND e.v ->> 'stream' IN ('stdout', 'stderr')
           AND NOT EXISTS (SELECT 1 FROM pushjobs.job_output o
                            WHERE o.job_id = j.id
                              AND o.node_name = n.node_name)
         ORDER BY e.v ->> 'job_id', e.ord
    LOOP
        IF v_id IS DISTINCT FROM r.job_id THEN
            IF v_id IS NOT NULL THEN
                PERFORM pushjobs.emit_events(v_id, v_job.org, v_keys,
                                             v_names, v_fields);
                v_keys := '{}'; v_names := '{}'; v_fields := '{}';
            END IF;

            SELECT * INTO v_job FROM pushjobs.jobs WHERE id = r.job_id;
            v_id := r.job_id;
        END IF;

        BEGIN
            v_data := decode(r.data, 'base64');
        EXCEPTION WHEN invalid_parameter_value THEN
            RAISE WARNING 'pushjobs: undecodable output from node % '
                          'for job %', r.node, r.job_id;
            CONTINUE;
        END;

        INSERT INTO pushjobs.job_output_live (job_id, node_name)
        VALUES (r.job_id, r.node)
        ON CONFLICT DO NOTHING;

        SELECT CASE WHEN r.stream = 'stderr' THEN l.stderr_len
                    ELSE l.stdout_len END, l.truncated
          INTO v_cur, v_trunc
          FROM pushjobs.job_output_live l
         WHERE l.job_id = r.job_id AND l.node_name = r.node;

        IF r.truncated OR r.off + length(v_data) > r.cap THEN
            IF NOT v_trunc THEN
                UPDATE pushjobs.job_output_live l
                   SET truncated = true
                 WHERE l.job_id = r.job_id AND l.node_name = r.node;
                v_trunc := true;
            END IF;
        END IF;

        -- a gap, or nothing new
        IF r.off > v_cur OR r.off + length(v_data) <= v_cur THEN
            CONTINUE;
        END IF;

        v_data := substr(v_data, (v_cur - r.off + 1)::integer);

        IF v_cur + length(v_data) > r.cap THEN
            v_data := substr(v_data, 1, greatest(r.cap - v_cur, 0)::integer);
        END IF;

        IF length(v_data) = 0 THEN
            CONTINUE;
        END IF;

        INSERT INTO pushjobs.job_output_chunk (job_id, node_name, stream,
                                               off, data)
        VALUES (r.job_id, r.node, r.stream, v_cur, v_data);

        UPDATE pushjobs.job_output_live l
           SET stdout_len = CASE WHEN r.stream = 'stdout'
                                 THEN v_cur + length(v_data)
                                 ELSE l.stdout_len END,
               stderr_len = CASE WHEN r.stream = 'stderr'
                                 THEN v_cur + length(v_data)
                                 ELSE l.stderr_len END
         WHERE l.job_id = r.job_id AND l.node_name = r.node;

        v_keys := array_append(v_keys, r.ord);
        v_names := array_append(v_names, 'output');
        v_fields := array_append(v_fields,
            json_build_object('node', r.node, 'stream', r.stream,
                              'offset', v_cur));
    END LOOP;

    IF v_id IS NOT NULL THEN
        PERFORM pushjobs.emit_events(v_id, v_job.org, v_keys, v_names,
                                     v_fields);
    END IF;
END
$$;


-- A node's final report replaces what it streamed: its job_output row is
-- stored and its job_output_live row goes, so the output is served from
-- the report; the job_output_chunk rows stay, as the bytes of the feed's
-- output events (job_feed()), and as the start of a short report's
-- output.  When the node streamed, what the report has beyond the
-- streamed bytes is emitted as output events that carry their own bytes,
-- so that the feed carries the whole output; before the node's own end
-- events (node_inputs() stores the output first).  A short report's bytes
-- are all beyond (stdout_at, stderr_at); a whole report (an agent that
-- did not stream on this channel, or re-sent it) is compared with the
-- assembled chunks, and what it has beyond them, if it starts with them,
-- is emitted.
CREATE OR REPLACE FUNCTION pushjobs.job_output_final()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_live    pushjobs.job_output_live;
    v_out_at  bigint;
    v_err_at  bigint;
    v_org     text;
    v_names   text[] := '{}';
    v_fields  json[] := '{}';
BEGIN
    DELETE FROM pushjobs.job_output_live l
     WHERE l.job_id = NEW.job_id AND l.node_name = NEW.node_name
    RETURNING l.* INTO v_live;

    IF v_live.job_id IS NULL THEN
        RETURN NULL;
    END IF;

    IF NEW.stdout_at > 0 OR NEW.stderr_at > 0 THEN
        v_out_at := 0;
        v_err_at := 0;
    ELSE
        SELECT CASE WHEN substr(NEW.stdout, 1, length(s.stdout)) = s.stdout
                    THEN length(s.stdout) END,
               CASE WHEN substr(NEW.stderr, 1, length(s.stderr)) = s.stderr
                    THEN length(s.stderr) END
          INTO v_out_at, v_err_at
          FROM pushjobs.node_streamed(NEW.job_id, NEW.node_name) s;
    END IF;

    -- v_out_at: where the bytes to emit start in the row's stdout (NULL:
    -- the report does not start with the streamed bytes)
    IF length(NEW.stdout) > v_out_at THEN
        v_names := array_append(v_names, 'output');
        v_fields := array_append(v_fields,
            json_build_object('node', NEW.node_name, 'stream', 'stdout',
                              'offset', NEW.stdout_at + v_out_at,
                              'data', translate(encode(
                                  substr(NEW.stdout, v_out_at::integer + 1),
                                  'base64'), E'\n', '')));
    END IF;

    IF length(NEW.stderr) > v_err_at THEN
        v_names := array_append(v_names, 'output');
        v_fields := array_append(v_fields,
            json_build_object('node', NEW.node_name, 'stream', 'stderr',
                              'offset', NEW.stderr_at + v_err_at,
                              'data', translate(encode(
                                  substr(NEW.stderr, v_err_at::integer + 1),
                                  'base64'), E'\n', '')));
    END IF;

    SELECT j.org INTO v_org FROM pushjobs.jobs j WHERE j.id = NEW.job_id;

    PERFORM pushjobs.emit_events(NEW.job_id, v_org, NULL, v_names, v_fields);
    RETURN NULL;
END
$$;


-- Reconciles a (re)connected agent with the jobs it takes part in.  p_jobs is
-- the hello's list [{"job_id", "state": "committed"|"running"|"finished"}].
-- Returns what the channel must send: "commit" (with the message), "run" or
-- "abort" (with the message "force" when the abort kills at once).
CREATE OR REPLACE FUNCTION pushjobs.agent_hello(p_org text, p_node text,
    p_jobs jsonb)
RETURNS TABLE (job_id text, action text, message text)
LANGUAGE plpgsql AS $$
DECLARE
    v_id     text;
    v_job    pushjobs.jobs;
    v_node   pushjobs.node_status;
    v_has    text;
    v_input  text;
    v_abort  boolean;
    v_force  boolean;
    v_free   boolean;
BEGIN
    -- the org's jobs in voting or running (jobs_active, few) and the
    -- node's row in each (primary key)
    FOR v_id IN
        SELECT n.job_id
          FROM pushjobs.jobs j
          JOIN pushjobs.job_nodes n
            ON n.job_id = j.id AND n.node_name = p_node
         WHERE j.org = p_org AND j.status IN ('voting', 'running')
           AND pushjobs.node_active(n.status)
         ORDER BY n.job_id
    LOOP
        SELECT * INTO v_job FROM pushjobs.jobs
         WHERE id = v_id AND status IN ('voting', 'running')
           FOR UPDATE;

        CONTINUE WHEN NOT FOUND;

        -- the run timer fired (see time_out()); the loop below then tells
        -- the agent to abort the job if it still holds it
        IF v_job.status = 'running' AND v_job.run_deadline <= now()
           AND pushjobs.time_out(v_id)
        THEN
            CONTINUE;
        END IF;

        SELECT n.status, n.abort_requested, n.abort_force,
               pushjobs.concurrency_limit(v_id) IS NULL
               OR EXISTS (SELECT 1 FROM pushjobs.job_rollout_released l
                           WHERE l.job_id = v_id AND l.node_name = p_node)
          INTO v_node, v_abort, v_force, v_free
          FROM pushjobs.job_nodes n
         WHERE n.job_id = v_id AND n.node_name = p_node;

        SELECT e ->> 'state' INTO v_has
          FROM jsonb_array_elements(p_jobs) e
         WHERE e ->> 'job_id' = v_id
         LIMIT 1;

        v_input := NULL;
        job_id := v_id;
        action := NULL;
        message := NULL;

        IF v_abort AND v_has IN ('committed', 'running') THEN
            /* an abort (abort_job()) this agent has not answered yet */
            action := 'abort';
            message := CASE WHEN v_force THEN 'force' END;

        ELSIF v_job.status = 'voting' THEN
            IF v_node = 'new' AND v_has IS NULL THEN
                action := 'commit';
                message := pushjobs.commit_message(v_job);
            ELSIF v_node = 'new' AND v_has = 'committed' THEN
                v_input := 'ack_commit';
            ELSIF v_has IS NULL OR v_has <> 'committed' THEN
                v_input := 'down';
            END IF;

        ELSIF v_node = 'ready' THEN
            IF v_has = 'committed' THEN
                /* a node a rollout has not reached yet waits */
                IF v_free THEN
                    action := 'run';
                END IF;
            ELSIF v_has = 'running' THEN
                v_input := 'ack_run';
            ELSIF v_has IS NULL THEN
                v_input := 'down';
            END IF;

        ELSIF v_has IS NULL OR v_has = 'committed' THEN
            v_input := 'down';
        END IF;

        IF v_input IS NOT NULL THEN
            IF pushjobs.node_transition(v_job, p_node, v_input, NULL) THEN
                action := 'abort';
            END IF;
            PERFORM pushjobs.settle(v_id);
        END IF;

        IF action IS NOT NULL THEN
            RETURN NEXT;
        END IF;
    END LOOP;

    FOR v_id, v_has IN
        SELECT e ->> 'job_id', e ->> 'state'
          FROM jsonb_array_elements(p_jobs) e
    LOOP
        CONTINUE WHEN v_has = 'finished';
        CONTINUE WHEN EXISTS (
            SELECT 1
              FROM pushjobs.job_nodes n
              JOIN pushjobs.jobs j ON j.id = n.job_id
             WHERE n.job_id = v_id AND n.org = p_org
               AND n.node_name = p_node
               AND pushjobs.node_active(n.status)
               AND j.status IN ('voting', 'running'));

        job_id := v_id;
        action := 'abort';
        message := NULL;
        RETURN NEXT;
    END LOOP;
END
$$;


-- A batch of hellos from one worker: [{"org", "node", "jobs": [...]}].
-- Returns agent_hello()'s rows, each with the index of its hello.
CREATE OR REPLACE FUNCTION pushjobs.agent_hellos(p_hellos jsonb)
RETURNS TABLE (i integer, job_id text, action text, message text)
LANGUAGE sql AS $$
    SELECT (e.ord - 1)::integer, h.job_id, h.action, h.message
      FROM jsonb_array_elements(p_hellos) WITH ORDINALITY AS e(v, ord),
           LATERAL pushjobs.agent_hello(e.v ->> 'org', e.v ->> 'node',
                                        COALESCE(e.v -> 'jobs', '[]'::jsonb)) h
     ORDER BY e.ord
$$;


-- Which nodes of a job a worker must message after a NOTIFY.  For "commit"
-- the first row carries the commit message and no node.  For "stop" the
-- message column says "force" for nodes to be killed at once.
CREATE OR REPLACE FUNCTION pushjobs.dispatch(p_job text, p_kind text)
RETURNS TABLE (node_name text, message text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_job    pushjobs.jobs;
    v_limit  integer := pushjobs.concurrency_limit(p_job);
BEGIN
    SELECT * INTO v_job FROM pushjobs.jobs WHERE id = p_job;

    IF NOT FOUND THEN
        RETURN;
    END IF;

    IF p_kind = 'commit' THEN
        IF v_job.status <> 'voting' THEN
            RETURN;
        END IF;

        node_name := NULL;
        message := pushjobs.commit_message(v_job);
        RETURN NEXT;

        RETURN QUERY
            SELECT n.node_name, NULL::text
              FROM pushjobs.job_nodes n
             WHERE n.job_id = p_job AND n.status = 'new';

    ELSIF p_kind = 'run' THEN
        IF v_job.status <> 'running' THEN
            RETURN;
        END IF;

        RETURN QUERY
            SELECT n.node_name, NULL::text
              FROM pushjobs.job_nodes n
             WHERE n.job_id = p_job AND n.status = 'ready'
               AND NOT n.abort_requested
               AND (v_limit IS NULL
                    OR EXISTS (SELECT 1
                                 FROM pushjobs.job_rollout_released l
                                WHERE l.job_id = p_job
                                  AND l.node_name = n.node_name));

    ELSIF p_kind = 'stop' THEN
        RETURN QUERY
            SELECT n.node_name,
                   CASE WHEN n.abort_force THEN 'force' END
              FROM pushjobs.job_nodes n
             WHERE n.job_id = p_job
               AND (n.abort_requested
                    OR NOT pushjobs.node_active(n.status));
    END IF;
END
$$;


-- Jobs a worker must catch up on after (re)connecting its LISTEN channel:
-- the active ones, and a "stop" for every job, running or ended recently,
-- that has a node whose agent may still hold it: told to abort (nodes
-- aborted, lost, timed out in voting or running, was_ready) and the abort
-- perhaps never sent.  A node that reported its result (succeeded, failed)
-- or refused the job (nacked) holds nothing, so a job whose nodes all did
-- needs no stop; a job whose commit no agent answered yet (voting) gets its
-- commit again, which is all its nodes need.
CREATE OR REPLACE FUNCTION pushjobs.recent_jobs()
RETURNS TABLE (org text, job_id text, kind text)
LANGUAGE sql STABLE AS $$
    SELECT j.org, j.id,
           CASE j.status WHEN 'voting' THEN 'commit' ELSE 'run' END
      FROM pushjobs.jobs j
     WHERE j.status IN ('voting', 'running')
    UNION ALL
    SELECT j.org, j.id, 'stop'
      FROM pushjobs.jobs j
     WHERE (j.status = 'running'
            OR (j.status NOT IN ('new', 'voting')
                AND j.updated_at > now() - interval '10 minutes'))
       AND EXISTS (SELECT 1 FROM pushjobs.job_nodes n
                    WHERE n.job_id = j.id
                      AND (n.abort_requested
                           OR n.status NOT IN ('new', 'ready', 'running',
                                               'succeeded', 'failed',
                                               'nacked')))
$$;


-- Connect/disconnect changes of agent channels, batched by one worker
-- (p_owner): [{"org", "node", "session", "online"}] in the order they
-- happened.  A connect that replaces a channel held by another worker asks
-- that worker to close it.
CREATE OR REPLACE FUNCTION pushjobs.presence_update(p_owner text,
    p_changes jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r      record;
    v_old  pushjobs.presence;
BEGIN
    -- The owner row is owner_beat()'s alone: a worker declared dead must
    -- learn it from its next beat, and publish all its channels again,
    -- which it would not if a batch of its here brought the row back.
    FOR r IN
        SELECT e.v ->> 'org' AS org, e.v ->> 'node' AS node,
               (e.v ->> 'session')::bigint AS session,
               (e.v ->> 'online')::boolean AS online,
               (e.v ->> 'handover_ms')::integer AS handover_ms
          FROM jsonb_array_elements(p_changes) WITH ORDINALITY AS e(v, ord)
         ORDER BY e.v ->> 'org', e.v ->> 'node', e.ord
    LOOP
        IF r.online THEN
            SELECT * INTO v_old FROM pushjobs.presence
             WHERE org = r.org AND node_name = r.node
               FOR UPDATE;

            IF FOUND AND v_old.online AND v_old.owner <> p_owner THEN
                PERFORM pushjobs.notify('kick', v_old.owner,
                                        v_old.session || ' ' || r.org || ' '
                                        || r.node);
            END IF;

            INSERT INTO pushjobs.presence (org, node_name, owner, session,
                                           online)
            VALUES (r.org, r.node, p_owner, r.session, true)
            ON CONFLICT (org, node_name) DO UPDATE
               SET owner = excluded.owner, session = excluded.session,
                   online = true, changed_at = now(), handover_until = NULL;

        ELSE
            -- "handover_ms": closed by a worker leaving on a reload, its
            -- agent reconnecting elsewhere (see available_nodes())
            UPDATE pushjobs.presence
               SET online = false, changed_at = now(),
                   handover_until = CASE WHEN r.handover_ms > 0
                       THEN now() + LEAST(r.handover_ms, 60000)
                                    * interval '1 millisecond' END
             WHERE org = r.org AND node_name = r.node
               AND owner = p_owner AND session = r.session AND online;
        END IF;
    END LOOP;
END
$$;


-- A worker's periodic sign of life.  Returns false if the worker had been
-- declared dead meanwhile (its channels were marked offline): it then
-- publishes the presence of all its channels again.
CREATE OR REPLACE FUNCTION pushjobs.owner_beat(p_owner text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pushjobs.owners SET seen_at = now()
     WHERE id = p_owner AND NOT dead;

    IF FOUND THEN
        RETURN true;
    END IF;

    INSERT INTO pushjobs.owners (id) VALUES (p_owner)
    ON CONFLICT (id) DO UPDATE SET seen_at = now(), dead = false;

    RETURN false;
END
$$;


-- A worker that reaches PostgreSQL again after it could not.  While the
-- database was unreachable nobody's beat could be written, not only this
-- worker's: judged by seen_at now, every worker would be overdue and every
-- agent offline, although they stayed connected.  So the clock of every
-- worker not declared dead starts again now (each has one owner timeout to
-- beat, as after its start), and this worker beats.  Returns what
-- owner_beat() returns.  Idempotent; the module runs it before any other
-- query of the worker after an outage.
CREATE OR REPLACE FUNCTION pushjobs.owner_regained(p_owner text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pushjobs.owners SET seen_at = now()
     WHERE NOT dead AND seen_at < now();

    RETURN pushjobs.owner_beat(p_owner);
END
$$;


-- Deadlines, enforced by whichever worker runs first: workers of dead front
-- ends, voting timeouts, run timeouts, and nodes whose channel has been gone
-- for longer than p_lost_ms.  Jobs another worker is working on are skipped
-- and picked up by the next sweep.  Returns the number of jobs changed.
-- Deletes finished jobs not updated for p_retention_s seconds (0: never),
-- at most 1000 per call so that one sweep never holds locks for long; their
-- nodes, output and events go with them.  Returns how many were deleted.
CREATE OR REPLACE FUNCTION pushjobs.purge(p_retention_s integer)
RETURNS integer
LANGUAGE sql AS $$
    WITH old AS (
        SELECT id FROM pushjobs.jobs
         WHERE p_retention_s > 0
           AND NOT pushjobs.job_active(status)
           AND updated_at < now() - p_retention_s * interval '1 second'
         ORDER BY updated_at
         LIMIT 1000
           FOR UPDATE SKIP LOCKED
    ), nodes AS (
        -- their output goes with them (ON DELETE CASCADE)
        DELETE FROM pushjobs.job_nodes n USING old WHERE n.job_id = old.id
    ), events AS (
        DELETE FROM pushjobs.job_events e USING old WHERE e.job_id = old.id
    ), gone AS (
        -- their rollout rows go with them (ON DELETE CASCADE)
        DELETE FROM pushjobs.jobs j USING old WHERE j.id = old.id
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone
$$;


CREATE OR REPLACE FUNCTION pushjobs.sweep(p_lost_ms integer,
    p_owner_timeout_ms integer, p_org_feed_retention_s integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_count  integer := 0;
    v_job    pushjobs.jobs;
    v_node   text;
    v_lost_orgs   text[];
    v_lost_nodes  text[];
BEGIN
    /*
     * Workers that stopped beating: their channels count as offline at
     * once (online_nodes() checks the owner), and are marked so here 20,000
     * a sweep, so that a front end of 100k channels is not one UPDATE that
     * every presence batch would wait for.  The owner row goes when none is
     * left; a worker that beats again meanwhile is told by owner_beat().
     * The owner row is locked (FOR SHARE) against a concurrent revival.
     */
    UPDATE pushjobs.owners SET dead = true
     WHERE NOT dead
       AND seen_at < now() - p_owner_timeout_ms * interval '1 millisecond';

    UPDATE pushjobs.presence p
       SET online = false, changed_at = now()
     WHERE (p.org, p.node_name) IN (
               SELECT q.org, q.node_name
                 FROM pushjobs.presence q
                 JOIN pushjobs.owners o ON o.id = q.owner
                WHERE o.dead AND q.online
                LIMIT 20000
                  FOR UPDATE OF q SKIP LOCKED
                  FOR SHARE OF o);

    DELETE FROM pushjobs.owners o
     WHERE o.dead
       AND NOT EXISTS (SELECT 1 FROM pushjobs.presence p
                        WHERE p.owner = o.id AND p.online);

    -- the org feeds keep their events for pushjobs_org_feed_retention
    -- (2.x: org_feed_expiration, 60 s; the module's feeds replay as much)
    DELETE FROM pushjobs.org_events
     WHERE created_at < now() - p_org_feed_retention_s * interval '1 second';

    FOR v_job IN
        SELECT * FROM pushjobs.jobs
         WHERE status = 'voting' AND voting_deadline <= now()
         ORDER BY id
           FOR UPDATE SKIP LOCKED
    LOOP
        FOR v_node IN
            SELECT n.node_name FROM pushjobs.job_nodes n
             WHERE n.job_id = v_job.id AND n.status = 'new'
             ORDER BY n.node_name
        LOOP
            PERFORM pushjobs.node_transition(v_job, v_node, 'voting_timeout',
                                             NULL);
        END LOOP;

        -- the silent nodes are told to abort now (rehab), also when the
        -- job goes on running without them; settle() says so itself when
        -- the job ends
        IF pushjobs.settle(v_job.id) IN ('voting', 'running') THEN
            PERFORM pushjobs.notify('stop', v_job.org, v_job.id);
        END IF;
        v_count := v_count + 1;
    END LOOP;

    FOR v_job IN
        SELECT * FROM pushjobs.jobs
         WHERE status = 'running' AND run_deadline <= now()
         ORDER BY id
           FOR UPDATE SKIP LOCKED
    LOOP
        IF pushjobs.time_out(v_job.id) THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;

    /*
     * Nodes whose channel has been gone for too long, found from the
     * channels that went away since the oldest active job began (a range
     * of presence_offline, small), not by reading every node of every
     * active job at every sweep.  A node in a job always has a presence
     * row: create_job() makes only online nodes "new".  The margin covers
     * a presence change committed after a job that began before it.
     */
    SELECT array_agg(p.org), array_agg(p.node_name)
      INTO v_lost_orgs, v_lost_nodes
      FROM pushjobs.presence p
     WHERE NOT p.online
       AND p.changed_at > (SELECT min(created_at) - interval '5 minutes'
                             FROM pushjobs.jobs
                            WHERE pushjobs.job_active(status))
       AND p.changed_at <= now() - p_lost_ms * interval '1 millisecond';

    FOR v_job IN
        SELECT j.* FROM pushjobs.jobs j
         WHERE j.status IN ('voting', 'running')
           AND EXISTS (SELECT 1
                         FROM unnest(v_lost_orgs, v_lost_nodes) AS l(org,
                                                                    node)
                         JOIN pushjobs.job_nodes n
                           ON n.job_id = j.id AND n.node_name = l.node
                        WHERE l.org = j.org
                          AND pushjobs.node_active(n.status))
         ORDER BY j.id
           FOR UPDATE OF j SKIP LOCKED
    LOOP
        FOR v_node IN
            SELECT n.node_name
              FROM unnest(v_lost_orgs, v_lost_nodes) AS l(org, node)
              JOIN pushjobs.job_nodes n
                ON n.job_id = v_job.id AND n.node_name = l.node
             WHERE n.org = l.org
               AND pushjobs.node_active(n.status)
             ORDER BY n.node_name
        LOOP
            PERFORM pushjobs.node_transition(v_job, v_node, 'down', NULL);
        END LOOP;

        PERFORM pushjobs.settle(v_job.id);
        v_count := v_count + 1;
    END LOOP;

    /*
     * The backstop of settle_jobs(): a job whose node_inputs() batch
     * committed but whose settle did not follow (its front end failed
     * between the two, or runs a module older than the lock plan) is
     * settled here.  A job a batch or a settle holds is skipped: its own
     * settle_jobs() follows.  settle() reads a job until its first node
     * still to wait for, so this costs little but at a job's end.
     */
    FOR v_job IN
        SELECT * FROM pushjobs.jobs
         WHERE status IN ('voting', 'running')
         ORDER BY id
           FOR UPDATE SKIP LOCKED
    LOOP
        IF pushjobs.settle(v_job.id) <> v_job.status THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;

    RETURN v_count;
END
$$;


-- REST documents, built where the data is.

-- The nodes of one batch rollout() released (the "run" NOTIFY's batch)
-- that still wait for their run: what a worker sends runs to after that
-- NOTIFY, instead of looking at every node of the job (dispatch()).
CREATE OR REPLACE FUNCTION pushjobs.dispatch_released(p_job text,
    p_batch integer)
RETURNS TABLE (node_name text, message text)
LANGUAGE sql STABLE AS $$
    SELECT l.node_name, NULL::text
      FROM pushjobs.job_rollout_released l
      JOIN pushjobs.job_nodes n
        ON n.job_id = l.job_id AND n.node_name = l.node_name
     WHERE l.job_id = p_job AND l.batch = p_batch
       AND n.status = 'ready' AND NOT n.abort_requested
       AND EXISTS (SELECT 1 FROM pushjobs.jobs j
                    WHERE j.id = p_job AND j.status = 'running')
$$;


-- Keeps the counts of job_rollout (active, in_flight, failed) as the
-- nodes of a job with rate control change status, in the statement that
-- changes them, so that rollout() and settle() read them instead of
-- counting the job's nodes.  A node enters a job new or unavailable
-- (create_job(), after the job_rollout row), in none of the counts.
CREATE OR REPLACE FUNCTION pushjobs.rollout_count()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- most jobs have no rate control: one pass over the new rows
    IF NOT EXISTS (SELECT 1 FROM pushjobs.job_rollout x
                    WHERE x.job_id IN (SELECT n.job_id FROM new_nodes n))
    THEN
        RETURN NULL;
    END IF;

    UPDATE pushjobs.job_rollout r
       SET active = r.active + d.active,
           in_flight = r.in_flight + d.in_flight,
           failed = r.failed + d.failed
      FROM (SELECT c.job_id,
                   sum(c.active) AS active,
                   sum(CASE WHEN c.ready
                             AND EXISTS (
                                 SELECT 1
                                   FROM pushjobs.job_rollout_released l
                                  WHERE l.job_id = c.job_id
                                    AND l.node_name = c.node_name)
                            THEN c.active ELSE c.running END) AS in_flight,
                   sum(c.failed) AS failed
              FROM (SELECT n.job_id, n.node_name,
                           'ready' IN (o.status, n.status) AS ready,
                           (n.status IN ('ready', 'running'))::integer
                           - (o.status IN ('ready', 'running'))::integer
                               AS active,
                           (n.status = 'running')::integer
                           - (o.status = 'running')::integer AS running,
                           (n.status IN ('failed', 'crashed', 'timed_out'))
                               ::integer
                           - (o.status IN ('failed', 'crashed', 'timed_out'))
                               ::integer AS failed
                      FROM new_nodes n
                      JOIN old_nodes o
                        ON o.job_id = n.job_id AND o.node_name = n.node_name
                     WHERE o.status <> n.status) c
             GROUP BY c.job_id) d
     WHERE r.job_id = d.job_id;

    RETURN NULL;
END
$$;


CREATE OR REPLACE FUNCTION pushjobs.job_summary(p_job pushjobs.jobs)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
               'id', p_job.id,
               'command', p_job.command,
               'status', p_job.status,
               'run_timeout', p_job.run_timeout,
               'created_at', pushjobs.http_date(p_job.created_at),
               'updated_at', pushjobs.http_date(p_job.updated_at),
               'user', p_job.job_user,
               'dir', p_job.dir,
               'capture_output', CASE WHEN p_job.capture THEN true END,
               'file_specified', CASE WHEN p_job.file IS NOT NULL
                                      THEN true END))
           || CASE WHEN p_job.env IS NOT NULL
                   THEN jsonb_build_object('env', p_job.env)
                   ELSE '{}'::jsonb END
           -- rate control: the fields as given, when given
           || COALESCE((SELECT jsonb_strip_nulls(jsonb_build_object(
                                   'max_concurrency', r.max_concurrency,
                                   'max_errors', r.max_errors))
                          FROM pushjobs.job_rollout r
                         WHERE r.job_id = p_job.id), '{}'::jsonb)
$$;


CREATE OR REPLACE FUNCTION pushjobs.jobs_json(p_org text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(jsonb_agg(pushjobs.job_summary(j)
                              ORDER BY j.created_at, j.id), '[]'::jsonb)::text
      FROM pushjobs.jobs j
     WHERE j.org = p_org
$$;


-- GET jobs?status=S&limit=N (API.md §2): jobs in one status, the N most
-- recent; still listed oldest first, in the same array shape.  A NULL
-- status or limit does not filter.
CREATE OR REPLACE FUNCTION pushjobs.jobs_json(p_org text, p_status text,
    p_limit integer)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(jsonb_agg(pushjobs.job_summary(j)
                              ORDER BY j.created_at, j.id), '[]'::jsonb)::text
      FROM pushjobs.jobs j
     WHERE j.org = p_org
       AND j.id IN (SELECT l.id
                      FROM pushjobs.jobs l
                     WHERE l.org = p_org
                       AND (p_status IS NULL OR l.status::text = p_status)
                     ORDER BY l.created_at DESC, l.id DESC
                     LIMIT p_limit)
$$;


CREATE OR REPLACE FUNCTION pushjobs.job_json(p_org text, p_job text,
    p_include_file boolean)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT (pushjobs.job_summary(j)
            - CASE WHEN p_include_file AND j.file IS NOT NULL
                   THEN 'file_specified' ELSE '' END
            || CASE WHEN p_include_file AND j.file IS NOT NULL
                    THEN jsonb_build_object('file', j.file)
                    ELSE '{}'::jsonb END
            || jsonb_build_object('nodes', COALESCE(
                   (SELECT jsonb_object_agg(s.status, s.names)
                      FROM (SELECT n.status::text AS status,
                                   jsonb_agg(n.node_name
                                             ORDER BY n.node_name) AS names
                              FROM pushjobs.job_nodes n
                             WHERE n.job_id = j.id
                             GROUP BY n.status) s),
                   '{}'::jsonb)))::text
      FROM pushjobs.jobs j
     WHERE j.id = p_job AND j.org = p_org
$$;


CREATE OR REPLACE FUNCTION pushjobs.node_states_json(p_org text,
    p_owner_timeout_ms integer)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(jsonb_agg(jsonb_build_object('node_name', o.node_name,
                                                 'availability', 'available')
                              ORDER BY o.node_name), '[]'::jsonb)::text
      FROM pushjobs.online_nodes(p_org, p_owner_timeout_ms) o
$$;


CREATE OR REPLACE FUNCTION pushjobs.node_state_json(p_org text, p_node text,
    p_owner_timeout_ms integer)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
               'node_name', p_node,
               'status', CASE WHEN o.node_name IS NULL THEN 'offline'
                              ELSE 'online' END,
               'availability', CASE WHEN o.node_name IS NULL
                                    THEN 'unavailable'
                                    ELSE 'available' END)::text
      FROM (SELECT 1) one
      LEFT JOIN pushjobs.online_nodes(p_org, p_owner_timeout_ms) o
             ON o.node_name = p_node
$$;


-- Captured output of one node, base64 without line breaks: the final
-- report's (after the chunks it left out, for a short one), or while the
-- node runs what it has streamed so far (its chunks, assembled); no row
-- when the job, the node or any output does not exist.
CREATE OR REPLACE FUNCTION pushjobs.job_output_b64(p_org text, p_job text,
    p_node text, p_channel text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT translate(encode(CASE WHEN p_channel = 'stderr' THEN o.stderr
                                 ELSE o.stdout END, 'base64'), E'\n', '')
      FROM (SELECT CASE WHEN o.stdout_at > 0 THEN s.stdout || o.stdout
                        ELSE o.stdout END,
                   CASE WHEN o.stderr_at > 0 THEN s.stderr || o.stderr
                        ELSE o.stderr END, 1 AS rank
              FROM pushjobs.job_output o
              LEFT JOIN LATERAL pushjobs.node_streamed(o.job_id, o.node_name) s
                     ON o.stdout_at > 0 OR o.stderr_at > 0
             WHERE o.job_id = p_job AND o.node_name = p_node
            UNION ALL
            SELECT s.stdout, s.stderr, 2
              FROM pushjobs.job_output_live l,
                   LATERAL pushjobs.node_streamed(l.job_id, l.node_name) s
             WHERE l.job_id = p_job AND l.node_name = p_node) o
      JOIN pushjobs.jobs j ON j.id = p_job
     WHERE j.org = p_org
     ORDER BY o.rank
     LIMIT 1
$$;


CREATE OR REPLACE FUNCTION pushjobs.status_json(p_owner_timeout_ms integer)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'status', 'it''s alive',
        'node_fsm_count',
            (SELECT count(*)
               FROM pushjobs.presence p
               JOIN pushjobs.owners o ON o.id = p.owner
              WHERE p.online
                AND pushjobs.owner_alive(o.dead, o.seen_at,
                                         p_owner_timeout_ms)),
        'job_processes',
            (SELECT COALESCE(jsonb_agg(j.id ORDER BY j.id), '[]'::jsonb)
               FROM pushjobs.jobs j
              WHERE pushjobs.job_active(j.status)))::text
$$;


-- Event feeds (contract §5).

-- Opens a job's feed: "missing" (no such job in the org: 404), "summary"
-- with the job document when the job ended more than p_linger_ms ago, or
-- "stream" with the sequence number to start after, from Last-Event-ID
-- ("job-N"; an unknown or absent id starts from the beginning).
CREATE OR REPLACE FUNCTION pushjobs.feed_open(p_org text, p_job text,
    p_last_event_id text, p_linger_ms integer)
RETURNS TABLE (mode text, after integer, summary text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_job   pushjobs.jobs;
    v_seq   integer;
    v_last  integer;
BEGIN
    SELECT * INTO v_job FROM pushjobs.jobs WHERE id = p_job AND org = p_org;

    IF NOT FOUND THEN
        mode := 'missing';
        RETURN NEXT;
        RETURN;
    END IF;

    IF NOT pushjobs.job_active(v_job.status)
       AND v_job.updated_at < now() - p_linger_ms * interval '1 millisecond'
    THEN
        mode := 'summary';
        summary := '{"timestamp": "' || pushjobs.event_time(now()) || '", '
                   || substr(pushjobs.job_json(p_org, p_job, false), 2);
        RETURN NEXT;
        RETURN;
    END IF;

    mode := 'stream';
    after := 0;

    SELECT COALESCE(max(seq), 0) INTO v_last
      FROM pushjobs.job_events
     WHERE job_id = p_job;

    IF p_last_event_id ~ '^job-[0-9]{1,9}$' THEN
        v_seq := substr(p_last_event_id, 5)::integer;

        IF v_seq <= v_last THEN
            after := v_seq;
        END IF;
    END IF;

    -- a finished job whose last event the client has: nothing to stream
    IF NOT pushjobs.job_active(v_job.status)
       AND after >= v_last
    THEN
        mode := 'ended';
    END IF;

    RETURN NEXT;
END
$$;


-- A job feed's events after p_after, in order, each output event with the
-- chunk row it stands for (node_outputs() writes an output event's bytes
-- once, as that row, not again as base64 in job_events); NULL for every
-- other event and for an output event that carries its own bytes
-- (job_output_final()'s).  Inlined into its callers, so their ORDER BY
-- seq LIMIT stops the scan of job_events early; the other events' data is
-- not parsed.
CREATE OR REPLACE FUNCTION pushjobs.job_feed(p_job text, p_after integer)
RETURNS TABLE (seq integer, name text, data text, chunk bytea)
LANGUAGE sql STABLE AS $$
    SELECT e.seq, e.name, e.data, c.data
      FROM pushjobs.job_events e
      LEFT JOIN LATERAL (
          SELECT c.data
            FROM json_to_record(CASE WHEN e.name = 'output'
                                     THEN e.data::json END)
                 AS r(node text, stream text, "offset" bigint, data text)
            JOIN pushjobs.job_output_chunk c
              ON c.job_id = e.job_id AND c.node_name = r.node
             AND c.stream = r.stream AND c.off = r."offset"
           WHERE r.node IS NOT NULL AND r.data IS NULL) c ON true
     WHERE e.job_id = p_job AND e.seq > p_after
$$;


-- An event's data as a feed sends it: with the chunk's bytes (base64, no
-- line breaks) as its last field "data" when it stands for a chunk.
CREATE OR REPLACE FUNCTION pushjobs.feed_data(p_data text, p_chunk bytea)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_chunk IS NULL THEN p_data
                ELSE left(p_data, -1) || ', "data": "'
                     || translate(encode(p_chunk, 'base64'), E'\n', '')
                     || '"}' END
$$;


-- A job feed's next events after p_after, at most p_limit of them.
CREATE OR REPLACE FUNCTION pushjobs.feed_events(p_job text, p_after integer,
    p_limit integer)
RETURNS TABLE (seq integer, name text, data text)
LANGUAGE sql STABLE AS $$
    SELECT f.seq, f.name, pushjobs.feed_data(f.data, f.chunk)
      FROM pushjobs.job_feed(p_job, p_after) f
     ORDER BY f.seq
     LIMIT p_limit
$$;


-- A job feed's next events after p_after, at most p_limit of them and about
-- p_bytes of data: the rows up to the first one that reaches p_bytes (the
-- first row always), so a reader of a job with live output gets batches
-- its queue (pushjobs_max_queued_output) can hold, however large the
-- events; an output event counts its chunk's bytes as base64.  The loop
-- stops reading there: a running sum over the LIMIT's rows read (and
-- joined to their chunks) all p_limit events to return the few of one
-- batch, 88 ms a call at 10 MB/s, and the feed fell 18 s behind.
-- An output event's bytes come beside it (chunk; NULL for the other
-- events) and the front end adds them to the data, base64: PostgreSQL's
-- encode() and translate() cost 20 ms per MB, in the one backend that
-- serves the feed, where nginx's base64 costs a fraction of that.
-- feed_events(text, integer, integer), without the bound, stays for the
-- front ends of 2.0.0 during an upgrade.
CREATE OR REPLACE FUNCTION pushjobs.feed_events(p_job text, p_after integer,
    p_limit integer, p_bytes integer)
RETURNS TABLE (seq integer, name text, data text, chunk bytea)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_bytes  bigint := 0;
BEGIN
    FOR seq, name, data, chunk IN
        SELECT j.seq, j.name, j.data, j.chunk
          FROM pushjobs.job_feed(p_job, p_after) j
         ORDER BY j.seq
         LIMIT p_limit
    LOOP
        RETURN NEXT;

        v_bytes := v_bytes + octet_length(data)
                   + COALESCE(octet_length(chunk) / 3 * 4 + 16, 0);

        EXIT WHEN v_bytes >= p_bytes;
    END LOOP;
END
$$;


-- Opens an org feed.  No Last-Event-ID: only what comes next.  A retained
-- "org-N": what came after it.  Anything else: a start_of_history event
-- (its timestamp is returned), then every retained event.
CREATE OR REPLACE FUNCTION pushjobs.org_feed_open(p_org text,
    p_last_event_id text, p_retention_ms integer)
RETURNS TABLE (after bigint, history text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_id  bigint;
BEGIN
    IF p_last_event_id IS NULL OR p_last_event_id = '' THEN
        SELECT COALESCE(max(e.id), 0) INTO after FROM pushjobs.org_events e;
        RETURN NEXT;
        RETURN;
    END IF;

    IF p_last_event_id ~ '^org-[0-9]{1,18}$' THEN
        v_id := substr(p_last_event_id, 5)::bigint;

        IF EXISTS (SELECT 1 FROM pushjobs.org_events e
                    WHERE e.id = v_id AND e.org = p_org
                      AND e.created_at > now() - p_retention_ms
                                                 * interval '1 millisecond')
        THEN
            after := v_id;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;

    after := 0;
    history := pushjobs.event_time(now() - p_retention_ms
                                           * interval '1 millisecond');
    RETURN NEXT;
END
$$;


CREATE OR REPLACE FUNCTION pushjobs.org_feed_events(p_org text,
    p_after bigint, p_retention_ms integer, p_limit integer)
RETURNS TABLE (id bigint, name text, data text)
LANGUAGE sql STABLE AS $$
    SELECT e.id, e.name, e.data
      FROM pushjobs.org_events e
     WHERE e.org = p_org AND e.id > p_after
       AND e.created_at > now() - p_retention_ms * interval '1 millisecond'
     ORDER BY e.id
     LIMIT p_limit
$$;


-- The key of read-only job links: the first candidate stored wins, every
-- worker of every front end gets the current key (id, hex).
CREATE OR REPLACE FUNCTION pushjobs.link_key(p_candidate bytea)
RETURNS TABLE (id integer, secret text)
LANGUAGE sql AS $$
    INSERT INTO pushjobs.link_keys (id, secret)
    SELECT 1, p_candidate
     WHERE NOT EXISTS (SELECT 1 FROM pushjobs.link_keys)
    ON CONFLICT DO NOTHING;

    SELECT k.id, encode(k.secret, 'hex')
      FROM pushjobs.link_keys k
     ORDER BY k.id DESC
     LIMIT 1;
$$;


-- A principal's stored answer from the Chef server, if younger than the
-- key cache's time to live.
CREATE OR REPLACE FUNCTION pushjobs.principal_get(p_org text, p_name text,
    p_ttl_s integer)
RETURNS TABLE (status integer, body text)
LANGUAGE sql STABLE AS $$
    SELECT p.status, p.body
      FROM pushjobs.principals p
     WHERE p.org = p_org AND p.name = p_name
       AND p.fetched_at > now() - p_ttl_s * interval '1 second'
$$;


-- A principal's stored answer with its age in seconds: any answer younger
-- than the key cache's time to live, and a key (never a 404) up to
-- p_stale_s past it, which a front end uses only when the Chef server
-- cannot be asked or it has asked it for keys at its rate already.
CREATE OR REPLACE FUNCTION pushjobs.principal_get(p_org text, p_name text,
    p_ttl_s integer, p_stale_s integer)
RETURNS TABLE (status integer, body text, age bigint)
LANGUAGE sql STABLE AS $$
    SELECT p.status, p.body,
           floor(extract(epoch FROM now() - p.fetched_at))::bigint
      FROM pushjobs.principals p
     WHERE p.org = p_org AND p.name = p_name
       AND (p.fetched_at > now() - p_ttl_s * interval '1 second'
            OR (p.status = 200
                AND p.fetched_at > now() - (p_ttl_s + p_stale_s)
                                           * interval '1 second'))
$$;


-- The Chef server's answer for a principal, stored (replacing the last).
CREATE OR REPLACE FUNCTION pushjobs.principal_put(p_org text, p_name text,
    p_status integer, p_body text)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO pushjobs.principals AS p (org, name, status, body)
    VALUES (p_org, p_name, p_status, p_body)
    ON CONFLICT (org, name) DO UPDATE
       SET status = excluded.status, body = excluded.body,
           fetched_at = now();
$$;


-- org_event_commit_order() runs at the commit of each new org event
DROP TRIGGER IF EXISTS org_events_commit_order ON pushjobs.org_events;
CREATE CONSTRAINT TRIGGER org_events_commit_order
    AFTER INSERT ON pushjobs.org_events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION pushjobs.org_event_commit_order();

-- rollout_count() after every UPDATE of job_nodes
DROP TRIGGER IF EXISTS job_nodes_rollout_count ON pushjobs.job_nodes;
CREATE TRIGGER job_nodes_rollout_count
    AFTER UPDATE ON pushjobs.job_nodes
    REFERENCING OLD TABLE AS old_nodes NEW TABLE AS new_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION pushjobs.rollout_count();

-- job_output_final() runs for each stored final report
DROP TRIGGER IF EXISTS job_output_final ON pushjobs.job_output;
CREATE TRIGGER job_output_final
    AFTER INSERT ON pushjobs.job_output
    FOR EACH ROW EXECUTE FUNCTION pushjobs.job_output_final();
