-- Deploy pushjobs:links to pg
-- requires: output_stream

-- Read-only job links for browsers: the key the front ends sign them
-- with (HMAC-SHA256), shared through the database.  The first worker to
-- ask stores its random candidate; every other worker, of any front end,
-- gets that one.

BEGIN;

CREATE TABLE pushjobs.link_keys (
    id               integer PRIMARY KEY CHECK (id > 0),
    secret           bytea NOT NULL CHECK (length(secret) = 32),
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION pushjobs.link_key(p_candidate bytea)
RETURNS TABLE (id integer, secret text)
LANGUAGE sql AS $$
    INSERT INTO pushjobs.link_keys (id, secret)
    SELECT 1, p_candidate
     WHERE NOT EXISTS (SELECT 1 FROM pushjobs.link_keys)
    ON CONFLICT DO NOTHING;

    SELECT k.id, encode(k.secret, 'hex')
      FROM pushjobs.link_keys k
     ORDER BY k.id DESC
     LIMIT 1;
$$;

COMMIT;
