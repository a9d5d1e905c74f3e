-- Revert pushjobs:schema from pg

BEGIN;

DROP SCHEMA pushjobs CASCADE;

COMMIT;
