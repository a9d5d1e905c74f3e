-- Verify pushjobs:create_job_step on pg

BEGIN;

SELECT 'pushjobs.create_job(text, text, jsonb, integer, integer, integer)'::regprocedure;

-- the nodes are inserted with node_step()'s status, not updated after
SELECT 1 / (p.prosrc ~ 'pushjobs\.node_step\('
            AND p.prosrc !~ 'pushjobs\.nodes_step\('
            AND p.prosrc !~ 'UPDATE\s+pushjobs\.job_nodes\M')::integer
  FROM pg_proc p
 WHERE p.oid = 'pushjobs.create_job(text, text, jsonb, integer, integer, integer)'::regprocedure;

ROLLBACK;
