-- Deploy pushjobs:stop_catch_up to pg
-- requires: presence_handover

-- Released in @v2.0.0: this script is frozen (migrations/README.md).
-- recent_jobs(), what a worker catches up on once its LISTEN connection is
-- back, gives a "stop" for every running or recently ended job with a node
-- whose agent may still hold it.  Before the release this change
-- re-installed every function; in the release, change functions installs
-- recent_jobs() as it is, so there is nothing left to do here.

BEGIN;
COMMIT;
