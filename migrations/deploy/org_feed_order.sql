-- Deploy pushjobs:org_feed_order to pg
-- requires: stop_catch_up

-- Org feed ids in commit order: org_event_commit_order() (in
-- sql/functions.sql, with every function as the file now has it) gives each
-- new org_events row its final id at commit, under a lock the commit
-- releases.  Before, the serial's id was taken at insert, and a reader
-- resuming after id N could miss an id below N committed after it.

BEGIN;

\ir ../../sql/functions.sql

-- a row's id until its commit: negative, from a sequence of its own, so that
-- the final ids, from the serial, come without gaps
CREATE SEQUENCE IF NOT EXISTS pushjobs.org_events_pending_id;
ALTER TABLE pushjobs.org_events
    ALTER COLUMN id SET DEFAULT -nextval('pushjobs.org_events_pending_id');

DROP TRIGGER IF EXISTS org_events_commit_order ON pushjobs.org_events;
CREATE CONSTRAINT TRIGGER org_events_commit_order
    AFTER INSERT ON pushjobs.org_events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION pushjobs.org_event_commit_order();

COMMIT;
