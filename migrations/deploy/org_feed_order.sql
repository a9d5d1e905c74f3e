-- Deploy pushjobs:org_feed_order to pg
-- requires: stop_catch_up

-- Released in @v2.0.0: this script is frozen (migrations/README.md).

BEGIN;

-- Org feed ids in commit order.  A reader resumes after the last id it has
-- seen, so no id may become visible after a greater one; but the serial
-- hands out ids as rows are inserted, and two transactions (a POST's
-- create_job(), a batch that ends a job) may commit in the other order: a
-- reader between the two commits would skip the smaller id for good.  At
-- commit (a deferred trigger) each new row takes its final id from the
-- serial (until then it has a negative one: migrations/deploy/
-- org_feed_order.sql) under one lock that the commit releases, so that ids
-- follow commit order, without gaps but for rolled back rows.  One lock
-- for all orgs: a transaction may end jobs of several orgs, and org locks
-- taken in different orders could deadlock; org events are two per job.
CREATE OR REPLACE FUNCTION pushjobs.org_event_commit_order()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pushjobs.org_events'));
    UPDATE pushjobs.org_events
       SET id = nextval(pg_get_serial_sequence('pushjobs.org_events', 'id'))
     WHERE id = NEW.id;
    RETURN NULL;
END
$$;

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
