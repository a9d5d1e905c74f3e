-- Revert pushjobs:use_active from pg

-- The functions as @v2.0.0 has them.

BEGIN;

-- One input for one node of a job: an agent message (ack_commit,
-- nack_commit, ack_run, nack_run, succeeded, failed, aborted) or a server
-- input (down, voting_timeout).  Implements the node-in-job transition
-- tables of the Push Jobs 2.x contract (§3.4), with these deliberate
-- changes (tested in t/engine-vote.t and t/engine-run.t):
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
-- old one when nothing changes), the events to emit, and whether the agent
-- should be sent an abort ("rehab" in 2.x).
CREATE OR REPLACE FUNCTION pushjobs.node_step(
    p_job_status pushjobs.job_status, p_status pushjobs.node_status,
    p_abort boolean, p_input text,
    OUT new_status pushjobs.node_status, OUT vote text, OUT rehab boolean,
    OUT rehab_event boolean, OUT run_start boolean, OUT run text)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_final  boolean := p_input IN ('succeeded', 'failed', 'aborted');
BEGIN
    new_status := p_status;
    rehab := false;
    rehab_event := false;
    run_start := false;

    /*
     * An unknown node, a job that has ended, or a node aborted by
     * abort_job(): whatever its agent still says about the job (a late
     * vote, its "aborted") changes nothing and makes no event; anything but
     * a final report gets it another abort.
     */
    IF p_status IS NULL OR p_job_status NOT IN ('new', 'voting', 'running')
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
                    vote := 'success';
                END IF;

            ELSIF p_input = 'nack_commit' THEN
                IF p_status = 'new' THEN
                    new_status := 'nacked';
                    vote := 'failure';
                ELSE
                    new_status := 'unavailable';
                    vote := 'lost_availibility';
                    rehab := true;
                    rehab_event := true;
                END IF;

            ELSIF p_input = 'down' THEN
                new_status := 'unavailable';
                vote := 'down';
                rehab := true;
                rehab_event := true;

            ELSIF p_input = 'voting_timeout' THEN
                new_status := 'unavailable';
                vote := 'voting_timeout';
                rehab := true;

            ELSIF p_input = 'aborted' AND p_abort THEN
                new_status := 'aborted';

            ELSE
                new_status := 'unavailable';
                rehab := true;
                rehab_event := true;
            END IF;

        ELSIF p_input IN ('ack_commit', 'nack_commit') THEN
            vote := 'client_died_while_voting';
            rehab := true;
            rehab_event := true;

        ELSIF NOT v_final AND p_input NOT IN ('down', 'voting_timeout') THEN
            rehab := true;
            rehab_event := true;
        END IF;

    ELSE /* running */

        IF p_status IN ('ready', 'running') THEN
            IF p_input = 'ack_run' THEN
                IF p_status = 'ready' THEN
                    new_status := 'running';
                    run_start := true;
                END IF;

            ELSIF p_input = 'nack_run' THEN
                new_status := 'failed';
                run := CASE WHEN p_status = 'ready' THEN 'run_nacked'
                              ELSE 'run_nacked_while_running' END;
                rehab := true;
                rehab_event := true;

            ELSIF p_input IN ('succeeded', 'failed') THEN
                run_start := p_status = 'ready';
                new_status := p_input::pushjobs.node_status;
                run := CASE WHEN p_input = 'succeeded' THEN 'success'
                              ELSE 'failure' END;

            ELSIF p_input IN ('aborted', 'down') AND p_abort THEN
                /* asked to stop, then stopped or gone: aborted either way */
                new_status := 'aborted';
                run := 'aborted';

            ELSE
                new_status := 'crashed';
                run := 'crashed';
                rehab := true;
                rehab_event := true;
            END IF;

        ELSIF NOT v_final AND p_input NOT IN ('down', 'voting_timeout') THEN
            run := 'client_died_while_running';
            rehab := true;
            rehab_event := true;
        END IF;
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

    IF v_job.status IN ('new', 'voting', 'running') THEN
        v_voting := v_job.status <> 'running';

        v_whole := p_nodes IS NULL
                   OR NOT EXISTS (SELECT 1 FROM pushjobs.job_nodes n
                                   WHERE n.job_id = p_job
                                     AND n.status IN ('new', 'ready',
                                                      'running')
                                     AND NOT n.abort_requested
                                     AND n.node_name <> ALL (v_nodes));

        FOR r IN
            SELECT n.node_name, n.abort_requested, n.abort_force,
                   o.node_name IS NOT NULL AS online
              FROM pushjobs.job_nodes n
              LEFT JOIN pushjobs.online_nodes(p_org, p_owner_timeout_ms) o
                     ON o.node_name = n.node_name
             WHERE n.job_id = p_job
               AND n.status IN ('new', 'ready', 'running')
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
            UPDATE pushjobs.jobs
               SET status = 'aborted', updated_at = now()
             WHERE id = p_job;

            PERFORM pushjobs.emit(p_job, p_org, 'job_complete',
                                  json_build_object('status', 'aborted'),
                                  true);
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
BEGIN
    FOR v_id IN
        SELECT n.job_id
          FROM pushjobs.job_nodes n
         WHERE n.org = p_org AND n.node_name = p_node
           AND n.status IN ('new', 'ready', 'running')
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

        SELECT n.status, n.abort_requested, n.abort_force
          INTO v_node, v_abort, v_force
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
                action := 'run';
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
               AND n.status IN ('new', 'ready', 'running')
               AND j.status IN ('voting', 'running'));

        job_id := v_id;
        action := 'abort';
        message := NULL;
        RETURN NEXT;
    END LOOP;
END
$$;


-- Which nodes of a job a worker must message after a NOTIFY.  For "commit"
-- the first row carries the commit message and no node.  For "stop" the
-- message column says "force" for nodes to be killed at once.
CREATE OR REPLACE FUNCTION pushjobs.dispatch(p_job text, p_kind text)
RETURNS TABLE (node_name text, message text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_job  pushjobs.jobs;
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
               AND NOT n.abort_requested;

    ELSIF p_kind = 'stop' THEN
        RETURN QUERY
            SELECT n.node_name,
                   CASE WHEN n.abort_force THEN 'force' END
              FROM pushjobs.job_nodes n
             WHERE n.job_id = p_job
               AND (n.abort_requested
                    OR n.status NOT IN ('new', 'ready', 'running'));
    END IF;
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
           AND status NOT IN ('new', 'voting', 'running')
           AND updated_at < now() - p_retention_s * interval '1 second'
         ORDER BY updated_at
         LIMIT 1000
           FOR UPDATE SKIP LOCKED
    ), nodes AS (
        -- their output goes with them (ON DELETE CASCADE)
        DELETE FROM pushjobs.job_nodes n USING old WHERE n.job_id = old.id
    ), gone AS (
        -- their events go with them (ON DELETE CASCADE)
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
                            WHERE status IN ('new', 'voting', 'running'))
       AND p.changed_at <= now() - p_lost_ms * interval '1 millisecond';

    FOR v_job IN
        SELECT j.* FROM pushjobs.jobs j
         WHERE j.status IN ('voting', 'running')
           AND j.id IN (SELECT n.job_id
                          FROM unnest(v_lost_orgs, v_lost_nodes) AS l(org,
                                                                     node)
                          JOIN pushjobs.job_nodes n
                            ON n.org = l.org AND n.node_name = l.node
                           AND n.status IN ('new', 'ready', 'running'))
         ORDER BY j.id
           FOR UPDATE OF j SKIP LOCKED
    LOOP
        FOR v_node IN
            SELECT n.node_name
              FROM unnest(v_lost_orgs, v_lost_nodes) AS l(org, node)
              JOIN pushjobs.job_nodes n
                ON n.job_id = v_job.id AND n.node_name = l.node
             WHERE n.org = l.org
               AND n.status IN ('new', 'ready', 'running')
             ORDER BY n.node_name
        LOOP
            PERFORM pushjobs.node_transition(v_job, v_node, 'down', NULL);
        END LOOP;

        PERFORM pushjobs.settle(v_job.id);
        v_count := v_count + 1;
    END LOOP;

    RETURN v_count;
END
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
                AND NOT o.dead
                AND o.seen_at > now()
                                - p_owner_timeout_ms * interval '1 millisecond'),
        'job_processes',
            (SELECT COALESCE(jsonb_agg(j.id ORDER BY j.id), '[]'::jsonb)
               FROM pushjobs.jobs j
              WHERE j.status IN ('new', 'voting', 'running')))::text
$$;


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

    IF v_job.status NOT IN ('new', 'voting', 'running')
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
    IF v_job.status NOT IN ('new', 'voting', 'running')
       AND after >= v_last
    THEN
        mode := 'ended';
    END IF;

    RETURN NEXT;
END
$$;

COMMIT;
