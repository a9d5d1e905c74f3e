-- Verify pushjobs:abort_step on pg

BEGIN;

SELECT 'pushjobs.node_step(pushjobs.job_status, pushjobs.node_status, boolean, text, text)'::regprocedure,
       'pushjobs.abort_job(text, text, text, jsonb, boolean, integer)'::regprocedure;

-- the new input
SELECT 1 / ((pushjobs.node_step('voting', 'new', true, 'abort',
                                'n')).new_status::text = 'aborted')::integer,
       1 / ((pushjobs.node_step('running', 'running', true, 'abort',
                                'n')).new_status::text = 'aborted')::integer;

-- a node's status is written only by node_step()'s callers: one node
-- (node_transition()), a batch (node_inputs_write()), a set of nodes
-- (nodes_step())
SELECT 1 / (count(*) = 0)::integer
  FROM pg_proc p
 WHERE p.pronamespace = 'pushjobs'::regnamespace
   AND p.proname NOT IN ('node_transition', 'node_inputs_write',
                         'nodes_step')
   AND p.prosrc ~ 'UPDATE\s+pushjobs\.job_nodes\s[^;]*\mSET\s+([^;]*,\s*)?status\s*=';

ROLLBACK;
