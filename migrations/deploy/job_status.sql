-- Deploy pushjobs:job_status to pg
-- requires: use_active

-- A job's status changes in one function, job_status_set(): settle(),
-- time_out() and abort_job() call it instead of each updating the jobs
-- row and emitting its event themselves.  The same events and
-- notifications, in the same order.

BEGIN;

-- Every change of a job's status after create_job(): the row updated and
-- the event it makes.  "running" starts the run timer and emits
-- quorum_succeeded; an end status emits job_complete (to the org feed too)
-- and tells the agents still holding the job to stop.  Returns the updated
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
            UPDATE pushjobs.job_nodes
               SET status = 'was_ready', updated_at = now()
             WHERE job_id = p_job AND status = 'ready';

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
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pushjobs.jobs
                    WHERE id = p_job AND status = 'running'
                      AND run_deadline <= now())
    THEN
        RETURN false;
    END IF;

    UPDATE pushjobs.job_nodes
       SET status = 'timed_out', updated_at = now()
     WHERE job_id = p_job AND status IN ('ready', 'running');

    PERFORM pushjobs.job_status_set(p_job, 'timed_out');

    RETURN true;
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
