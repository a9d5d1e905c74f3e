-- Verify pushjobs:org_feed_order on pg

BEGIN;

SELECT 1 / count(*)
  FROM pg_trigger
 WHERE tgname = 'org_events_commit_order'
   AND tgrelid = 'pushjobs.org_events'::regclass
   AND tgdeferrable AND tginitdeferred;

ROLLBACK;
