-- Deploy pushjobs:owner_regained to pg
-- requires: functions

-- Released in @v2.0.0: this script is frozen (migrations/README.md).

BEGIN;

-- A worker that reaches PostgreSQL again after it could not.  While the
-- database was unreachable nobody's beat could be written, not only this
-- worker's: judged by seen_at now, every worker would be overdue and every
-- agent offline, although they stayed connected.  So the clock of every
-- worker not declared dead starts again now (each has one owner timeout to
-- beat, as after its start), and this worker beats.  Returns what
-- owner_beat() returns.  Idempotent; the module runs it before any other
-- query of the worker after an outage.
CREATE OR REPLACE FUNCTION pushjobs.owner_regained(p_owner text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pushjobs.owners SET seen_at = now()
     WHERE NOT dead AND seen_at < now();

    RETURN pushjobs.owner_beat(p_owner);
END
$$;

COMMIT;
