-- Verify pushjobs:stop_catch_up on pg

BEGIN;

SELECT 'pushjobs.recent_jobs()'::regprocedure;

ROLLBACK;
