-- Deploy pushjobs:principals to pg
-- requires: links

-- The Chef server's answers for principals (their public keys), kept so
-- that a front end whose key cache is empty (a restart, a new front end)
-- asks PostgreSQL rather than the Chef server: a restart storm of agents
-- is then not a storm of Chef API requests.  Same time to live as the
-- front end's cache (pushjobs_key_zone ttl=); a key that does not verify
-- is asked of the Chef server again, as with the cache.

BEGIN;

CREATE TABLE pushjobs.principals (
    org              text NOT NULL,
    name             text NOT NULL,
    status           integer NOT NULL CHECK (status IN (200, 404)),
    body             text NOT NULL,
    fetched_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org, name)
);

CREATE FUNCTION pushjobs.principal_get(p_org text, p_name text,
    p_ttl_s integer)
RETURNS TABLE (status integer, body text)
LANGUAGE sql STABLE AS $$
    SELECT p.status, p.body
      FROM pushjobs.principals p
     WHERE p.org = p_org AND p.name = p_name
       AND p.fetched_at > now() - p_ttl_s * interval '1 second'
$$;

CREATE FUNCTION pushjobs.principal_put(p_org text, p_name text,
    p_status integer, p_body text)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO pushjobs.principals AS p (org, name, status, body)
    VALUES (p_org, p_name, p_status, p_body)
    ON CONFLICT (org, name) DO UPDATE
       SET status = excluded.status, body = excluded.body,
           fetched_at = now();
$$;

COMMIT;
