-- Verify pushjobs:principal_stale on pg

BEGIN;

SELECT 'pushjobs.principal_get(text, text, integer, integer)'::regprocedure;

SELECT status, body, age FROM pushjobs.principal_get('', '', 0, 0);

ROLLBACK;
