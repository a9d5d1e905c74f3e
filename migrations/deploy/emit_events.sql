-- Deploy pushjobs:emit_events to pg
-- requires: job_status

-- One emitter: emit_events() appends a job's events (sequence numbers,
-- the timestamp, the org feed, the notification) in one INSERT per feed;
-- emit() is emit_events() of one event.  node_step() returns the events of
-- a transition (it now takes the node's name, so its result changes: it
-- is dropped and created again, and so is node_inputs_write(), which now
-- takes the events' fields instead of their data), and both
-- node_transition() and node_inputs() emit them through emit_events(), the
-- batch still one INSERT and one notification per job.  The same events,
-- in the same order, with the same data.

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

    -- The next id of the job's feed.  The caller's job row lock
    -- serializes writers (the primary key would refuse a duplicate);
    -- reading the last seq through the primary key keeps a batch of
    -- thousands of transitions linear, where bumping a counter in the
    -- jobs row made each update slower than the last (one row version
    -- per event, all in one transaction).
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


DROP FUNCTION pushjobs.node_step(pushjobs.job_status, pushjobs.node_status, boolean, text);

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

        ELSIF NOT v_final AND p_input NOT IN ('down', 'voting_timeout') THEN
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

        ELSIF NOT v_final AND p_input NOT IN ('down', 'voting_timeout') THEN
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


DROP FUNCTION pushjobs.node_inputs_write(text, text, text[], pushjobs.node_status[], integer[], bigint[], text[], text[]);

-- The node changes and events of one job from one node_inputs() batch,
-- written at once: one UPDATE, then the events in p_keys order
-- (emit_events(): one INSERT, one notification).  The caller holds the
-- job's lock.
CREATE OR REPLACE FUNCTION pushjobs.node_inputs_write(p_job text, p_org text,
    p_nodes text[], p_status pushjobs.node_status[], p_exit integer[],
    p_keys bigint[], p_names text[], p_fields json[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(p_nodes) > 0 THEN
        UPDATE pushjobs.job_nodes n
           SET status = u.status,
               exit_status = COALESCE(u.exit_status, n.exit_status),
               updated_at = now()
          FROM unnest(p_nodes, p_status, p_exit) AS u(node, status,
                                                      exit_status)
         WHERE n.job_id = p_job AND n.node_name = u.node;
    END IF;

    PERFORM pushjobs.emit_events(p_job, p_org, p_keys, p_names, p_fields);
END
$$;


-- A batch of agent messages from one worker: a JSON array of
-- {"org", "node", "job_id", "type", "exit_status", "stdout", "stderr",
--  "truncated"}.  Returns, for each element (0-based), whether the agent
-- should be sent an abort for that job.  Final reports are applied once
-- however often they arrive.
--
-- Each message is node_step() as in node_transition(), but the batch is
-- set-based: the jobs are locked (and timed out) first, then one query
-- reads every message with its node's row, walked per job and node in
-- arrival order; each job's node updates and events are written at once
-- (node_inputs_write()), its events in arrival order, and the job is then
-- settled.  Per message that leaves no statement but the captured output.
CREATE OR REPLACE FUNCTION pushjobs.node_inputs(p_inputs jsonb)
RETURNS TABLE (i integer, rehab boolean)
LANGUAGE plpgsql AS $$
DECLARE
    r         record;
    v_step    record;
    v_job     pushjobs.jobs;
    v_id      text;
    v_node    text;
    v_status  pushjobs.node_status;
    v_exit    integer;
    v_moved   boolean := false;
    u_nodes   text[] := '{}';
    u_status  pushjobs.node_status[] := '{}';
    u_exit    integer[] := '{}';
    e_keys    bigint[] := '{}';
    e_names   text[] := '{}';
    e_fields  json[] := '{}';
BEGIN
    -- every job of the batch locked, in id order, before the snapshot of
    -- the query below; the run timer first (see time_out())
    FOR v_job IN
        SELECT j.* FROM pushjobs.jobs j
         WHERE (j.id, j.org) IN (SELECT e ->> 'job_id', e ->> 'org'
                                   FROM jsonb_array_elements(p_inputs) e)
         ORDER BY j.id
           FOR UPDATE
    LOOP
        IF v_job.status = 'running' AND v_job.run_deadline <= now() THEN
            PERFORM pushjobs.time_out(v_job.id);
        END IF;
    END LOOP;

    v_job := NULL;

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
                u_status := array_append(u_status, v_status);
                u_exit := array_append(u_exit, v_exit);
            END IF;

            v_node := r.node;
            v_status := r.status;
            v_exit := NULL;
            v_moved := false;
        END IF;

        IF v_id IS DISTINCT FROM r.job_id THEN
            IF v_job.id IS NOT NULL THEN
                PERFORM pushjobs.node_inputs_write(v_job.id, v_job.org,
                            u_nodes, u_status, u_exit,
                            e_keys, e_names, e_fields);
                PERFORM pushjobs.settle(v_job.id);
                u_nodes := '{}'; u_status := '{}'; u_exit := '{}';
                e_keys := '{}'; e_names := '{}'; e_fields := '{}';
            END IF;

            -- locked above
            SELECT * INTO v_job FROM pushjobs.jobs
             WHERE id = r.job_id AND org = r.org;

            v_id := r.job_id;
        END IF;

        i := r.idx;

        IF v_job.id IS NULL THEN
            rehab := r.input NOT IN ('succeeded', 'failed', 'aborted');
            RETURN NEXT;
            CONTINUE;
        END IF;

        IF r.input IN ('succeeded', 'failed')
           AND (r.stdout IS NOT NULL OR r.stderr IS NOT NULL)
           AND r.status IS NOT NULL
        THEN
            BEGIN
                INSERT INTO pushjobs.job_output (job_id, node_name, stdout,
                                                 stderr, truncated)
                VALUES (v_job.id, r.node,
                        decode(COALESCE(r.stdout, ''), 'base64'),
                        decode(COALESCE(r.stderr, ''), 'base64'),
                        r.truncated)
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

        rehab := v_step.rehab;
        RETURN NEXT;
    END LOOP;

    IF v_job.id IS NOT NULL THEN
        IF v_moved THEN
            u_nodes := array_append(u_nodes, v_node);
            u_status := array_append(u_status, v_status);
            u_exit := array_append(u_exit, v_exit);
        END IF;

        PERFORM pushjobs.node_inputs_write(v_job.id, v_job.org,
                    u_nodes, u_status, u_exit, e_keys, e_names, e_fields);
        PERFORM pushjobs.settle(v_job.id);
    END IF;
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
    v_keys     bigint[];
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

    INSERT INTO pushjobs.job_nodes (job_id, org, node_name, status)
    SELECT v_id, p_org, u.node,
           CASE WHEN o.node_name IS NULL THEN 'unavailable'
                ELSE 'new' END::pushjobs.node_status
      FROM unnest(v_nodes) AS u(node)
      LEFT JOIN pushjobs.available_nodes(p_org, p_owner_timeout_ms) o
             ON o.node_name = u.node;

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
            'capture', v_job.capture)),
        true);

    -- a vote "down" and a rehab for every node without a channel, in the
    -- order the nodes were named
    SELECT COALESCE(array_agg(x.k ORDER BY x.k), '{}'),
           COALESCE(array_agg(x.name ORDER BY x.k), '{}'),
           COALESCE(array_agg(x.fields ORDER BY x.k), '{}')
      INTO v_keys, v_names, v_fields
      FROM (SELECT u.ord * 2 + k.k AS k, k.name,
                   CASE k.k
                   WHEN 0 THEN json_build_object('node', u.node,
                                                 'status', 'down')
                   ELSE json_build_object('node', u.node) END AS fields
              FROM unnest(v_nodes) WITH ORDINALITY AS u(node, ord)
              JOIN pushjobs.job_nodes n
                ON n.job_id = v_id AND n.node_name = u.node
               AND n.status = 'unavailable'
             CROSS JOIN (VALUES (0, 'quorum_vote'), (1, 'rehab')) AS k(k, name)
           ) x;

    PERFORM pushjobs.node_inputs_write(v_id, p_org, '{}', '{}', '{}',
                                       v_keys, v_names, v_fields);

    IF EXISTS (SELECT 1 FROM pushjobs.job_nodes
                WHERE job_id = v_id AND status = 'new')
    THEN
        PERFORM pushjobs.notify('commit', p_org, v_id);
    END IF;

    PERFORM pushjobs.settle(v_id);

    RETURN v_id;
END
$$;

COMMIT;
