-- Verify pushjobs:short_report on pg

BEGIN;

SELECT 'pushjobs.node_streamed(text, text)'::regprocedure,
       'pushjobs.node_inputs(jsonb)'::regprocedure;

SELECT stdout_at, stderr_at FROM pushjobs.job_output WHERE false;

ROLLBACK;
