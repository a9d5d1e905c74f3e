-- Deploy pushjobs:vote_once to pg
-- requires: owner_regained

-- Released in @v2.0.0: this script is frozen (migrations/README.md).
-- node_step() does not record a ready node's second ack_commit as a
-- quorum_vote "unexpected_commit": an agent re-sends its answer after a
-- reconnect, and that is the same vote.  Before the release this change
-- re-installed every function; in the release, change functions installs
-- node_step() as it is, so there is nothing left to do here.

BEGIN;
COMMIT;
