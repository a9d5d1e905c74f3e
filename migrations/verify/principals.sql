-- Verify pushjobs:principals on pg

BEGIN;

SELECT 'pushjobs.principal_get(text, text, integer)'::regprocedure,
       'pushjobs.principal_put(text, text, integer, text)'::regprocedure;

SELECT org, name, status, body, fetched_at
  FROM pushjobs.principals WHERE false;

ROLLBACK;
