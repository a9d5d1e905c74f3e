-- Verify pushjobs:vote_once on pg

BEGIN;

-- a ready node's repeated ack_commit is no vote
SELECT 1 / (vote IS NULL)::int
  FROM pushjobs.node_step('voting', 'ready', false, 'ack_commit');

ROLLBACK;
