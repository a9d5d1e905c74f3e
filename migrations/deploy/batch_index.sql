-- Deploy pushjobs:batch_index to pg
-- requires: principal_stale

-- A batch of agent messages updated its nodes by joining them with all of
-- its job's nodes: at 100,000 nodes a hash join over the job (76 ms of a
-- 280 ms batch of 2,000), at 1,000,000 ten times that, per batch.  The
-- nodes are now found through the primary key (= ANY, no sequential
-- scan), whatever the job's size.

BEGIN;

CREATE OR REPLACE FUNCTION pushjobs.node_inputs_write(p_job text, p_org text,
    p_nodes text[], p_status pushjobs.node_status[], p_exit integer[],
    p_keys bigint[], p_names text[], p_fields json[])
RETURNS void
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
BEGIN
    IF cardinality(p_nodes) > 0 THEN
        UPDATE pushjobs.job_nodes n
           SET status = u.status,
               exit_status = COALESCE(u.exit_status, n.exit_status),
               updated_at = now()
          FROM unnest(p_nodes, p_status, p_exit) AS u(node, status,
                                                      exit_status)
         WHERE n.job_id = p_job AND n.node_name = ANY (p_nodes)
           AND n.node_name = u.node;
    END IF;

    PERFORM pushjobs.emit_events(p_job, p_org, p_keys, p_names, p_fields);
END
$$;

COMMIT;
