-- Verify pushjobs:use_active on pg

BEGIN;

SELECT 'pushjobs.node_step(pushjobs.job_status, pushjobs.node_status, boolean, text)'::regprocedure,
       'pushjobs.abort_job(text, text, text, jsonb, boolean, integer)'::regprocedure,
       'pushjobs.agent_hello(text, text, jsonb)'::regprocedure,
       'pushjobs.dispatch(text, text)'::regprocedure,
       'pushjobs.purge(integer)'::regprocedure,
       'pushjobs.sweep(integer, integer, integer)'::regprocedure,
       'pushjobs.status_json(integer)'::regprocedure,
       'pushjobs.feed_open(text, text, text, integer)'::regprocedure;

-- no function but the two helpers spells an active status set out
SELECT 1 / (count(*) = 0)::integer
  FROM pg_proc p
 WHERE p.pronamespace = 'pushjobs'::regnamespace
   AND p.proname NOT IN ('job_active', 'node_active')
   AND (p.prosrc ~ '''new'', ''voting'',\s+''running''\)'
        OR p.prosrc ~ '''new'', ''ready'',\s+''running''\)');

ROLLBACK;
