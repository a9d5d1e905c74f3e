-- Verify pushjobs:batch_index on pg

BEGIN;

SELECT 1/count(*)
  FROM pg_proc
 WHERE oid = 'pushjobs.node_inputs_write(text, text, text[],
              pushjobs.node_status[], integer[], bigint[], text[],
              json[])'::regprocedure
   AND proconfig = '{enable_seqscan=off}';

ROLLBACK;
