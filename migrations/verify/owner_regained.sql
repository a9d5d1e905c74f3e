-- Verify pushjobs:owner_regained on pg

BEGIN;

SELECT 'pushjobs.owner_regained(text)'::regprocedure;

ROLLBACK;
