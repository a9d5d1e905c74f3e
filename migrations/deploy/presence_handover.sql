-- Deploy pushjobs:presence_handover to pg
-- requires: vote_once

-- Released in @v2.0.0: this script is frozen (migrations/README.md).
-- A worker leaving on a reload marks the channels it closes offline with a
-- short handover (presence.handover_until); create_job() counts on those
-- nodes (available_nodes()) while their agents reconnect to the new
-- workers.  In the release, change schema creates the column and change
-- functions the functions that read it; this keeps the column for a
-- database deployed before the release.

BEGIN;

ALTER TABLE pushjobs.presence
    ADD COLUMN IF NOT EXISTS handover_until timestamptz;

COMMIT;
