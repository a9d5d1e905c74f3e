-- Verify pushjobs:emit_events on pg

BEGIN;

SELECT 'pushjobs.emit_events(text, text, bigint[], text[], json[], boolean)'::regprocedure,
       'pushjobs.emit(text, text, text, json, boolean)'::regprocedure,
       'pushjobs.node_step(pushjobs.job_status, pushjobs.node_status, boolean, text, text)'::regprocedure,
       'pushjobs.node_transition(pushjobs.jobs, text, text, integer)'::regprocedure,
       'pushjobs.node_inputs_write(text, text, text[], pushjobs.node_status[], integer[], bigint[], text[], json[])'::regprocedure,
       'pushjobs.node_inputs(jsonb)'::regprocedure,
       'pushjobs.create_job(text, text, jsonb, integer, integer, integer)'::regprocedure;

-- the old node_step() and node_inputs_write() are gone
SELECT 1 / (count(*) = 1)::integer
  FROM pg_proc p
 WHERE p.pronamespace = 'pushjobs'::regnamespace
   AND p.proname = 'node_step';
SELECT 1 / (count(*) = 1)::integer
  FROM pg_proc p
 WHERE p.pronamespace = 'pushjobs'::regnamespace
   AND p.proname = 'node_inputs_write';

-- no function but emit_events() writes a job's feed
SELECT 1 / (count(*) = 0)::integer
  FROM pg_proc p
 WHERE p.pronamespace = 'pushjobs'::regnamespace
   AND p.proname <> 'emit_events'
   AND p.prosrc ~ 'INSERT\s+INTO\s+pushjobs\.(job|org)_events\M';

ROLLBACK;
