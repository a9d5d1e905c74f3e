-- Verify pushjobs:rollout on pg

BEGIN;

SELECT 'pushjobs.rollout(pushjobs.jobs)'::regprocedure,
       'pushjobs.concurrency_limit(text)'::regprocedure,
       'pushjobs.rate_count(jsonb, integer, boolean)'::regprocedure,
       'pushjobs.dispatch_released(text, integer)'::regprocedure,
       'pushjobs.rollout_count()'::regprocedure;

SELECT job_id, max_concurrency, max_errors, concurrency_limit, error_limit,
       halted, active, in_flight, failed, scanned_through, released_batch
  FROM pushjobs.job_rollout WHERE false;

SELECT job_id, node_name, batch
  FROM pushjobs.job_rollout_released WHERE false;

-- the counts follow the nodes' status changes
SELECT 1 / count(*)::integer
  FROM pg_trigger
 WHERE tgname = 'job_nodes_rollout_count'
   AND tgrelid = 'pushjobs.job_nodes'::regclass;

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
