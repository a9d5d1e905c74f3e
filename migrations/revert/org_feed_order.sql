-- Revert pushjobs:org_feed_order from pg

BEGIN;

DROP TRIGGER IF EXISTS org_events_commit_order ON pushjobs.org_events;
DROP FUNCTION IF EXISTS pushjobs.org_event_commit_order();
ALTER TABLE pushjobs.org_events
    ALTER COLUMN id SET DEFAULT
        nextval(pg_get_serial_sequence('pushjobs.org_events', 'id'));
DROP SEQUENCE IF EXISTS pushjobs.org_events_pending_id;

COMMIT;
