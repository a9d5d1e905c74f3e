-- Verify pushjobs:notify_only on pg

BEGIN;

SELECT 'pushjobs.emit(text, text, text, json, boolean)'::regprocedure,
       'pushjobs.node_inputs_write(text, text, text[], pushjobs.node_status[], integer[], bigint[], text[], text[])'::regprocedure,
       'pushjobs.presence_update(text, jsonb)'::regprocedure;

-- no function but notify() calls pg_notify()
SELECT 1 / (count(*) = 0)::integer
  FROM pg_proc p
 WHERE p.pronamespace = 'pushjobs'::regnamespace
   AND p.proname <> 'notify'
   AND p.prosrc LIKE '%pg_notify%';

ROLLBACK;
