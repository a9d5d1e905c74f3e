-- Verify pushjobs:abort_outcome on pg

BEGIN;

-- the same arguments, the outcome instead of the HTTP status
SELECT 1 / (pg_get_function_result(
                'pushjobs.abort_job(text, text, text, jsonb, boolean, integer)'::regprocedure)
            = 'TABLE(outcome text, doc text)')::integer;

ROLLBACK;
