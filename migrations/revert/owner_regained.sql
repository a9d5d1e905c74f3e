-- Revert pushjobs:owner_regained from pg

BEGIN;

DROP FUNCTION pushjobs.owner_regained(text);

COMMIT;
