-- Verify pushjobs:lock_plan on pg

BEGIN;

SELECT 'pushjobs.settle_jobs(text[])'::regprocedure;

-- 1/0 unless node_inputs_write() takes the old statuses and keeps its
-- plan setting, node_inputs() no longer settles, and sweep() does
SELECT 1/count(*)
  FROM pg_proc
 WHERE oid = 'pushjobs.node_inputs_write(text, text, text[],
              pushjobs.node_status[], pushjobs.node_status[], integer[],
              bigint[], text[], json[])'::regprocedure
   AND proconfig = '{enable_seqscan=off}';

SELECT 1/count(*)
  FROM pg_proc
 WHERE oid = 'pushjobs.node_inputs(jsonb)'::regprocedure
   AND prosrc NOT LIKE '%pushjobs.settle(%'
   AND prosrc LIKE '%FOR SHARE%';

SELECT 1/count(*)
  FROM pg_proc
 WHERE oid = 'pushjobs.sweep(integer, integer, integer)'::regprocedure
   AND prosrc LIKE '%backstop of settle_jobs()%';

ROLLBACK;
