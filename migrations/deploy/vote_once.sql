-- Deploy pushjobs:vote_once to pg
-- requires: owner_regained

-- node_step() (sql/functions.sql) no longer records a ready node's second
-- ack_commit as a quorum_vote "unexpected_commit": an agent re-sends its
-- answer after a reconnect, and that is the same vote, not a new one.  A
-- database deployed before this change gets node_step() (and every function
-- as the file now has it: all are CREATE OR REPLACE) from here.

BEGIN;

\ir ../../sql/functions.sql

COMMIT;
