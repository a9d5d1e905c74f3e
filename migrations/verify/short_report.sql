-- Verify pushjobs:short_report on pg

BEGIN;

SELECT 'pushjobs.node_streamed(text, text)'::regprocedure,
       'pushjobs.node_inputs(jsonb)'::regprocedure;

ROLLBACK;
