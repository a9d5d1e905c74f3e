-- Deploy pushjobs:principal_stale to pg
-- requires: short_report

-- A restart of front ends whose agents connected longer ago than the key
-- cache's time to live found every stored key too old: one Chef API
-- request per agent.  The front end now also takes a key past its ttl,
-- within the stale time, when it has already asked the Chef server for
-- keys at its rate, and it counts a stored answer's ttl from when the
-- Chef server gave it (the age), not from when PostgreSQL handed it out.
-- The three-argument principal_get stays for front ends not yet upgraded.

BEGIN;

CREATE FUNCTION pushjobs.principal_get(p_org text, p_name text,
    p_ttl_s integer, p_stale_s integer)
RETURNS TABLE (status integer, body text, age bigint)
LANGUAGE sql STABLE AS $$
    SELECT p.status, p.body,
           floor(extract(epoch FROM now() - p.fetched_at))::bigint
      FROM pushjobs.principals p
     WHERE p.org = p_org AND p.name = p_name
       AND (p.fetched_at > now() - p_ttl_s * interval '1 second'
            OR (p.status = 200
                AND p.fetched_at > now() - (p_ttl_s + p_stale_s)
                                           * interval '1 second'))
$$;

COMMIT;
