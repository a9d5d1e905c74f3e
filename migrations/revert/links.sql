-- Revert pushjobs:links from pg

BEGIN;

DROP FUNCTION pushjobs.link_key(bytea);
DROP TABLE pushjobs.link_keys;

COMMIT;
