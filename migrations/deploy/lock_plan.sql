-- Deploy pushjobs:lock_plan to pg
-- requires: owner_alive

-- The batches of agent messages of one job, from several workers (a
-- job's nodes are spread over them), ran one at a time: each held the
-- job's row FOR UPDATE.  Now (bench/README, "The lock plan"):
--   * node_inputs() ends a job whose run timer has fired first (FOR
--     UPDATE), then holds each job of its batch FOR SHARE, in id order,
--     and no longer settles them: the caller runs settle_jobs() in a
--     transaction of its own right after, and sweep() settles every
--     voting or running job it finds unlocked, should that not follow;
--   * node_inputs_write() takes the status each node was stepped from
--     (p_old) and writes a node only from it: a node another batch
--     changed meanwhile raises serialization_failure, and node_inputs()
--     steps its batch again (at most 5 attempts, deadlocks too);
--   * emit_events() numbers a job's events under a transaction-level
--     advisory lock of the job's feed, so that ids follow commit order
--     when two batches of a job commit at once.
-- Functions only: no table changes, no table lock.

BEGIN;

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


DROP FUNCTION pushjobs.node_inputs_write(text, text, text[],
    pushjobs.node_status[], integer[], bigint[], text[], json[]);

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
CREATE FUNCTION pushjobs.settle_jobs(p_jobs text[])
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

COMMIT;
