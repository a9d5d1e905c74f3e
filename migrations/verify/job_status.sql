-- Verify pushjobs:job_status on pg

BEGIN;

SELECT 'pushjobs.job_status_set(text, pushjobs.job_status)'::regprocedure,
       'pushjobs.settle(text)'::regprocedure,
       'pushjobs.time_out(text)'::regprocedure,
       'pushjobs.abort_job(text, text, text, jsonb, boolean, integer)'::regprocedure;

-- no function but job_status_set() changes a job's status (create_job()
-- inserts the job "voting")
SELECT 1 / (count(*) = 0)::integer
  FROM pg_proc p
 WHERE p.pronamespace = 'pushjobs'::regnamespace
   AND p.proname <> 'job_status_set'
   AND p.prosrc ~ 'UPDATE\s+pushjobs\.jobs\s[^;]*\mSET\s+([^;]*,\s*)?status\s*=';

ROLLBACK;
