-- Revert pushjobs:principals from pg

BEGIN;

DROP FUNCTION pushjobs.principal_put(text, text, integer, text);
DROP FUNCTION pushjobs.principal_get(text, text, integer);
DROP TABLE pushjobs.principals;

COMMIT;
