-- Revert pushjobs:batch_index from pg

BEGIN;

-- node_inputs_write() as emit_events left it
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

COMMIT;
