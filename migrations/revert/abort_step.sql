-- Revert pushjobs:abort_step from pg

-- The functions as node_step_only left them.

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
-- Returns the HTTP answer: 404 (no such job in the org); 400 and an error
-- message (a node that is not in the job); else 202 while a node of the
-- job is still being stopped, 200 when not, with the job document.
CREATE OR REPLACE FUNCTION pushjobs.abort_job(p_org text, p_job text,
    p_requestor text, p_nodes jsonb, p_force boolean,
    p_owner_timeout_ms integer)
RETURNS TABLE (code integer, doc text)
LANGUAGE plpgsql AS $$
DECLARE
    v_job      pushjobs.jobs;
    v_nodes    text[];
    v_missing  text;
    v_whole    boolean;
    v_voting   boolean;
    v_changed  text[] := '{}';
    v_ended    text[] := '{}';
    v_node     text;
    r          record;
BEGIN
    SELECT * INTO v_job FROM pushjobs.jobs
     WHERE id = p_job AND org = p_org
       FOR UPDATE;

    IF NOT FOUND THEN
        code := 404;
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
            code := 400;
            doc := 'node ' || v_missing || ' is not part of job ' || p_job;
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
            IF v_voting OR NOT r.online THEN
                /* nothing runs there, or nothing we can reach */
                UPDATE pushjobs.job_nodes
                   SET status = 'aborted', abort_requested = true,
                       abort_force = r.abort_force OR p_force,
                       updated_at = now()
                 WHERE job_id = p_job AND node_name = r.node_name;

                v_ended := v_ended || r.node_name;
                v_changed := v_changed || r.node_name;

            ELSIF NOT r.abort_requested OR (p_force AND NOT r.abort_force)
            THEN
                UPDATE pushjobs.job_nodes
                   SET abort_requested = true,
                       abort_force = r.abort_force OR p_force,
                       updated_at = now()
                 WHERE job_id = p_job AND node_name = r.node_name;

                v_changed := v_changed || r.node_name;
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

        FOREACH v_node IN ARRAY v_ended LOOP
            PERFORM pushjobs.emit(p_job, p_org,
                                  CASE WHEN v_voting THEN 'quorum_vote'
                                       ELSE 'run_complete' END,
                                  json_build_object('node', v_node,
                                                    'status', 'aborted'));
        END LOOP;

        IF v_voting AND v_whole THEN
            /* every node it waited for has ended: no quorum to decide */
            PERFORM pushjobs.job_status_set(p_job, 'aborted');
        ELSE
            PERFORM pushjobs.settle(p_job);
        END IF;

        /* (again) to the agents: abort, or abort with force */
        PERFORM pushjobs.notify('stop', p_org, p_job);
    END IF;

    code := CASE WHEN EXISTS (SELECT 1 FROM pushjobs.job_nodes n
                               WHERE n.job_id = p_job
                                 AND n.abort_requested
                                 AND n.status IN ('ready', 'running'))
                 THEN 202 ELSE 200 END;
    doc := pushjobs.job_json(p_org, p_job, false);
    RETURN NEXT;
END
$$;

COMMIT;
