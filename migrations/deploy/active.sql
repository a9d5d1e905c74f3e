-- Deploy pushjobs:active to pg
-- requires: org_feed_order

-- job_active() and node_active(): the active status sets in one place each,
-- for the functions to test instead of spelling the sets out.

BEGIN;

-- The statuses of a job not ended yet (it may still change), and of a node
-- still taking part in its job: the sets transitions and queries test.
CREATE OR REPLACE FUNCTION pushjobs.job_active(p_status pushjobs.job_status)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_status IN ('new', 'voting', 'running')
$$;

CREATE OR REPLACE FUNCTION pushjobs.node_active(p_status pushjobs.node_status)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_status IN ('new', 'ready', 'running')
$$;

COMMIT;
