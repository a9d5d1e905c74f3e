-- Verify pushjobs:ingest_hot on pg

BEGIN;

SELECT 1/count(*)
  FROM pg_class
 WHERE oid = 'pushjobs.job_nodes'::regclass
   AND reloptions = '{fillfactor=60}';

SELECT 1/(1 - count(*))
  FROM pg_class
 WHERE relname = 'job_nodes_active'
   AND relnamespace = 'pushjobs'::regnamespace;

SELECT 1/(1 - count(*))
  FROM pg_constraint
 WHERE conrelid = 'pushjobs.job_events'::regclass AND contype = 'f';

ROLLBACK;
