-- Verify pushjobs:feed_bytes on pg

BEGIN;

SELECT 'pushjobs.feed_events(text, integer, integer, integer)'::regprocedure;

ROLLBACK;
