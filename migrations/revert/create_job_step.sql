-- Revert pushjobs:create_job_step from pg

-- create_job() as node_step_only left it.

BEGIN;

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
