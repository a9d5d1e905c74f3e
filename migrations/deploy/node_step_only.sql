-- Deploy pushjobs:node_step_only to pg
-- requires: emit_events

-- A node's status changes through node_step() in three more places:
-- settle() (voting short of the quorum: the new input quorum_failed makes
-- a ready node was_ready), time_out() (the new input run_timeout makes a
-- ready or running node timed_out) and create_job() (a node without a
-- channel is inserted new, then given "down": unavailable, its vote and
-- rehab).  nodes_step() applies node_step() to a set of nodes with one
-- UPDATE and emits their events through emit_events().  The same statuses
-- and events, in the same order.

BEGIN;

-- One input for one node of a job: an agent message (ack_commit,
-- nack_commit, ack_run, nack_run, succeeded, failed, aborted) or a server
-- input: down (also every node without a channel when the job is
-- created), voting_timeout, quorum_failed (voting ended short of the
-- quorum: a ready node is was_ready) and run_timeout (the job timed out:
-- a ready or running node is timed_out, no event, as in 2.x).  Implements
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
                                          'quorum_failed', 'run_timeout');
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


-- Ends voting or the run phase of a job once nothing is left to wait for.
-- The caller holds the job's lock.
CREATE OR REPLACE FUNCTION pushjobs.settle(p_job text)
RETURNS pushjobs.job_status
LANGUAGE plpgsql AS $$
DECLARE
    v_job    pushjobs.jobs;
    v_ready  integer;
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

            IF v_ready > 0 THEN
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

    IF v_job.status = 'running'
       AND NOT EXISTS (SELECT 1 FROM pushjobs.job_nodes
                        WHERE job_id = p_job
                          AND status IN ('ready', 'running'))
    THEN
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
    v_down     text[];
BEGIN
    v_nodes := ARRAY(SELECT jsonb_array_elements_text(p_body -> 'nodes'));

    -- the nodes without a channel, in the order they were named
    v_down := ARRAY(SELECT u.node
                      FROM unnest(v_nodes) WITH ORDINALITY AS u(node, ord)
                      LEFT JOIN pushjobs.available_nodes(p_org,
                                                         p_owner_timeout_ms) o
                             ON o.node_name = u.node
                     WHERE o.node_name IS NULL
                     ORDER BY u.ord);

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
    SELECT v_id, p_org, u.node, 'new'
      FROM unnest(v_nodes) AS u(node);

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

    -- every node without a channel is "down" at once: unavailable, with
    -- its vote "down" and its rehab, in the order the nodes were named
    PERFORM pushjobs.nodes_step(v_job, v_down, 'down');

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
