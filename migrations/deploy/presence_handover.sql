-- Deploy pushjobs:presence_handover to pg
-- requires: vote_once

-- A worker leaving on a reload marks the channels it closes offline with a
-- short handover (presence.handover_until); create_job() counts on those
-- nodes (available_nodes()) while their agents reconnect to the new
-- workers, instead of failing the job's quorum.  sql/schema.sql has the
-- column for a new database; one deployed before this change gets it here,
-- and every function as sql/functions.sql now has it.

BEGIN;

ALTER TABLE pushjobs.presence
    ADD COLUMN IF NOT EXISTS handover_until timestamptz;

\ir ../../sql/functions.sql

COMMIT;
