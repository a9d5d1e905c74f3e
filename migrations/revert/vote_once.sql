-- Revert pushjobs:vote_once from pg

-- Nothing is undone: node_step() is CREATE OR REPLACE'd by sql/functions.sql,
-- and the functions of the reverted-to state are those of the checkout
-- that deploys it.  A node_step() that treats a repeated ack_commit as a
-- no-op is correct under every earlier schema (no table or type changed).

BEGIN;
COMMIT;
