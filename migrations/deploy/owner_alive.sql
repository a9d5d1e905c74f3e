-- Deploy pushjobs:owner_alive to pg
-- requires: create_job_fast

-- Whether a channel's worker is alive was written out three times: in
-- online_nodes(), in status_json()'s node_fsm_count, and (since
-- create_job_fast, which gave up calling online_nodes() to avoid a UNION)
-- in available_nodes().  It is one function now, owner_alive(): a SQL
-- expression the planner inlines, so every plan stays as it was (the
-- presence join of create_job() by presence's primary key included).

BEGIN;

-- A worker is alive while it is not marked dead and has beaten within the
-- owner timeout (sweep() marks the others dead).
CREATE FUNCTION pushjobs.owner_alive(p_dead boolean, p_seen_at timestamptz,
    p_owner_timeout_ms integer)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT p_dead
           AND p_seen_at > now() - p_owner_timeout_ms
                                   * interval '1 millisecond'
$$;


-- A node counts as online when its channel's worker is alive.
CREATE OR REPLACE FUNCTION pushjobs.online_nodes(p_org text,
    p_owner_timeout_ms integer)
RETURNS TABLE (node_name text)
LANGUAGE sql STABLE AS $$
    SELECT p.node_name
      FROM pushjobs.presence p
      JOIN pushjobs.owners o ON o.id = p.owner
     WHERE p.org = p_org
       AND p.online
       AND pushjobs.owner_alive(o.dead, o.seen_at, p_owner_timeout_ms)
$$;


CREATE OR REPLACE FUNCTION pushjobs.available_nodes(p_org text,
    p_owner_timeout_ms integer)
RETURNS TABLE (node_name text)
LANGUAGE sql STABLE AS $$
    SELECT p.node_name
      FROM pushjobs.presence p
      LEFT JOIN pushjobs.owners o ON o.id = p.owner
     WHERE p.org = p_org
       AND CASE WHEN p.online
                THEN pushjobs.owner_alive(o.dead, o.seen_at,
                                          p_owner_timeout_ms)
                ELSE p.handover_until > now()
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
                AND pushjobs.owner_alive(o.dead, o.seen_at,
                                         p_owner_timeout_ms)),
        'job_processes',
            (SELECT COALESCE(jsonb_agg(j.id ORDER BY j.id), '[]'::jsonb)
               FROM pushjobs.jobs j
              WHERE pushjobs.job_active(j.status)))::text
$$;

COMMIT;
