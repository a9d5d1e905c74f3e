-- Revert pushjobs:principal_stale from pg

BEGIN;

DROP FUNCTION pushjobs.principal_get(text, text, integer, integer);

COMMIT;
