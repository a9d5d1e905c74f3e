-- Deploy pushjobs:rollout to pg
-- requires: create_job_step

-- Rate control for jobs (issue 13): the POST's optional max_concurrency
-- and max_errors, kept as given and as the counts they make (rate_count())
-- in job_rollout, a row only for jobs that have either.  rollout(), called
-- by settle() under the job's lock, releases ready nodes of a running job
-- in node name order up to the concurrency limit (job_rollout_released)
-- in the transaction that ends a running one, and halts the job once
-- more nodes than the error limit have failed: its unreleased nodes
-- become was_ready (node_step()'s new input halt) and a rollout_halted
-- event is emitted.  dispatch() and agent_hello() send a run only to
-- released nodes of a job with a concurrency limit.  The job document,
-- the list and the start event show both fields when given.  A job
-- without either field behaves as before.  New tables rather than new
-- columns: the jobs and job_nodes rows stay as they were.
--
-- At scale the work per settle follows what changed: a statement trigger
-- on job_nodes (rollout_count()) keeps the job's counts of active, in
-- flight and failed nodes in job_rollout; rollout() releases the next
-- nodes after the last one it looked at (scanned_through) and numbers
-- each batch, whose "run ORG JOB BATCH" NOTIFY has the workers send the
-- runs of that batch only (dispatch_released()).

BEGIN;

-- What this change locks (the foreign keys to jobs, the trigger on
-- job_nodes), first.
-- The running front ends lock these tables in either order (create_job():
-- jobs, then job_nodes; node_inputs(): job_nodes, then jobs): a deploy
-- that took one lock and then waited for the next could deadlock with
-- them, and PostgreSQL then failed the deploy or a front end's batch
-- (t/upgrade.t saw it).  So all are taken at once, each try waiting at
-- most 100 ms (less than deadlock_timeout, 1 s: no waiter ever needs the
-- deadlock check) and letting go of all when it cannot have them; tries
-- for up to a minute.
DO $$
DECLARE
    v_timeout text := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout', '100ms', true);

    FOR i IN 1 .. 500 LOOP
        BEGIN
            LOCK TABLE pushjobs.jobs, pushjobs.job_nodes IN SHARE ROW EXCLUSIVE MODE;
            PERFORM set_config('lock_timeout', v_timeout, true);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM pg_sleep(0.02 * random());
        END;
    END LOOP;

    RAISE EXCEPTION 'pushjobs: % stayed busy for a minute; try again',
                    'pushjobs.jobs, pushjobs.job_nodes';
END
$$;

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


CREATE OR REPLACE FUNCTION pushjobs.concurrency_limit(p_job text)
RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT r.concurrency_limit FROM pushjobs.job_rollout r
     WHERE r.job_id = p_job
$$;


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
    -- after the job's start, in the order the nodes were named.
    WITH s AS (
        SELECT u.node, u.ord, st.new_status, st.event_names,
               st.event_fields
          FROM unnest(v_nodes) WITH ORDINALITY AS u(node, ord)
          LEFT JOIN pushjobs.available_nodes(p_org, p_owner_timeout_ms) o
                 ON o.node_name = u.node
          LEFT JOIN LATERAL (SELECT *
                               FROM pushjobs.node_step(v_job.status, 'new',
                                                       false, 'down', u.node)
                              WHERE o.node_name IS NULL) AS st
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
    FOR v_id IN
        SELECT n.job_id
          FROM pushjobs.job_nodes n
         WHERE n.org = p_org AND n.node_name = p_node
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


-- rollout_count() after every UPDATE of job_nodes
CREATE TRIGGER job_nodes_rollout_count
    AFTER UPDATE ON pushjobs.job_nodes
    REFERENCING OLD TABLE AS old_nodes NEW TABLE AS new_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION pushjobs.rollout_count();


COMMIT;
