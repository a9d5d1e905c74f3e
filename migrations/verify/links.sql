-- Verify pushjobs:links on pg

BEGIN;

SELECT 'pushjobs.link_key(bytea)'::regprocedure;

SELECT id, secret, created_at FROM pushjobs.link_keys WHERE false;

ROLLBACK;
