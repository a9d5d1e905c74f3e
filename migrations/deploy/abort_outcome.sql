-- Deploy pushjobs:abort_outcome to pg
-- requires: abort_step

-- abort_job() returns its outcome (no_job, not_in_job with the node,
-- stopping, stopped) instead of an HTTP status and an error message: the
-- module decides the answer.  A changed result type needs the function
-- dropped and created again.

BEGIN;

DROP FUNCTION pushjobs.abort_job(text, text, text, jsonb, boolean, integer);

CREATE FUNCTION pushjobs.abort_job(p_org text, p_job text,
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

COMMIT;
