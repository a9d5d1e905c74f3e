-- Revert pushjobs:owner_alive from pg

BEGIN;

-- online_nodes() as functions left it
CREATE OR REPLACE FUNCTION pushjobs.online_nodes(p_org text,
    p_owner_timeout_ms integer)
RETURNS TABLE (node_name text)
LANGUAGE sql STABLE AS $$
    SELECT p.node_name
      FROM pushjobs.presence p
      JOIN pushjobs.owners o ON o.id = p.owner
     WHERE p.org = p_org
       AND p.online
       AND NOT o.dead
       AND o.seen_at > now() - p_owner_timeout_ms * interval '1 millisecond'
$$;


-- available_nodes() as create_job_fast left it
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


-- status_json() as use_active left it
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
              WHERE pushjobs.job_active(j.status)))::text
$$;

DROP FUNCTION pushjobs.owner_alive(boolean, timestamptz, integer);

COMMIT;
