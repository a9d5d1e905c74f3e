-- Deploy pushjobs:create_job_fast to pg
-- requires: ingest_hot

-- A job's POST cost what its org has, not what it asks for, and more:
--
-- * available_nodes() was a UNION (online nodes, nodes being handed over),
--   deduplicated whole before create_job() could join it with the job's
--   nodes: every POST read all of the org's presence, ~90 ms for a job of
--   ten nodes in an org of 100,000.  It is one SELECT now; inlined, the
--   join goes by presence's primary key.
-- * create_job() called node_step() for every node, available or not: the
--   planner pulled the lateral subquery up and tested its condition after
--   the call (0.4 s of a 100,000-node job).  OFFSET 0 keeps it a subquery,
--   whose condition is tested first.
-- * The old plan's estimates (50 M rows) passed jit_above_cost, so each
--   such POST also compiled its plan (0.45 s); the module's connections
--   now run without JIT.
--
-- In SQL alone (bench/sql-ingest, bench/README "A job's POST, by its own
-- nodes"): create_job() of 100,000 nodes 1.95-2.32 s before, 0.59-0.89 s
-- after; of 10 nodes in an org of 100,000, 91-96 ms before, 1.9-5.8 ms
-- after.

BEGIN;

CREATE OR REPLACE FUNCTION pushjobs.available_nodes(p_org text,
    p_owner_timeout_ms integer)
RETURNS TABLE (node_name text)
LANGUAGE sql STABLE AS $$
    SELECT p.node_name
      FROM pushjobs.presence p
      LEFT JOIN pushjobs.owners o ON o.id = p.owner
     WHERE p.org = p_org
       AND CASE WHEN p.online
                THEN NOT o.dead
                     AND o.seen_at > now() - p_owner_timeout_ms
                                             * interval '1 millisecond'
                ELSE p.handover_until > now()
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

COMMIT;
