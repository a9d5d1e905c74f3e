-- Verify pushjobs:create_job_fast on pg

BEGIN;

SELECT 1/count(*)
  FROM pg_proc
 WHERE oid = 'pushjobs.available_nodes(text, integer)'::regprocedure
   AND prosrc NOT LIKE '%UNION%';

SELECT 1/count(*)
  FROM pg_proc
 WHERE oid = 'pushjobs.create_job(text, text, jsonb, integer, integer,
              integer)'::regprocedure
   AND prosrc LIKE '%OFFSET 0%';

ROLLBACK;
