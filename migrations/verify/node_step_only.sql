-- Verify pushjobs:node_step_only on pg

BEGIN;

SELECT 'pushjobs.nodes_step(pushjobs.jobs, text[], text)'::regprocedure,
       'pushjobs.node_step(pushjobs.job_status, pushjobs.node_status, boolean, text, text)'::regprocedure,
       'pushjobs.settle(text)'::regprocedure,
       'pushjobs.time_out(text)'::regprocedure,
       'pushjobs.create_job(text, text, jsonb, integer, integer, integer)'::regprocedure;

-- the new inputs
SELECT 1 / ((pushjobs.node_step('voting', 'ready', false, 'quorum_failed',
                                'n')).new_status::text = 'was_ready')::integer,
       1 / ((pushjobs.node_step('running', 'running', false, 'run_timeout',
                                'n')).new_status::text = 'timed_out')::integer;

-- a node's status is written only by node_step()'s callers: one node
-- (node_transition()), a batch (node_inputs_write()), a set of nodes
-- (nodes_step()); abort_job() is the one left
SELECT 1 / (count(*) = 0)::integer
  FROM pg_proc p
 WHERE p.pronamespace = 'pushjobs'::regnamespace
   AND p.proname NOT IN ('node_transition', 'node_inputs_write',
                         'nodes_step', 'abort_job')
   AND p.prosrc ~ 'UPDATE\s+pushjobs\.job_nodes\s[^;]*\mSET\s+([^;]*,\s*)?status\s*=';

ROLLBACK;
