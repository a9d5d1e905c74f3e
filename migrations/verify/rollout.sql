-- Verify pushjobs:rollout on pg

BEGIN;

SELECT 'pushjobs.rollout(pushjobs.jobs)'::regprocedure,
       'pushjobs.concurrency_limit(text)'::regprocedure,
       'pushjobs.rate_count(jsonb, integer, boolean)'::regprocedure;

SELECT job_id, max_concurrency, max_errors, concurrency_limit, error_limit,
       halted
  FROM pushjobs.job_rollout WHERE false;

SELECT job_id, node_name FROM pushjobs.job_rollout_released WHERE false;

-- the percentage rounding: up (at least 1) for concurrency, down for errors
SELECT 1 / (pushjobs.rate_count('"10%"', 25, true) = 3
            AND pushjobs.rate_count('"1%"', 5, true) = 1
            AND pushjobs.rate_count('"10%"', 25, false) = 2
            AND pushjobs.rate_count('7', 25, false) = 7
            AND pushjobs.rate_count(NULL, 25, true) IS NULL)::integer;

-- settle() starts further nodes through rollout()
SELECT 1 / (p.prosrc ~ 'pushjobs\.rollout\(')::integer
  FROM pg_proc p
 WHERE p.oid = 'pushjobs.settle(text)'::regprocedure;

ROLLBACK;
