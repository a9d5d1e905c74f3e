-- Deploy pushjobs:stop_catch_up to pg
-- requires: presence_handover

-- recent_jobs() (sql/functions.sql), what a worker catches up on once its
-- LISTEN connection is back, gives a "stop" for every running or recently
-- ended job with a node whose agent may still hold it, a complete or a
-- running job included (before: only jobs ended otherwise than complete,
-- and running ones with aborts requested).  A database deployed before
-- this change gets it (and every function as the file now has it) here.

BEGIN;

\ir ../../sql/functions.sql

COMMIT;
