-- Revert pushjobs:feed_bytes from pg

BEGIN;

DROP FUNCTION pushjobs.feed_events(text, integer, integer, integer);

COMMIT;
