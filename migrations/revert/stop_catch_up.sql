-- Revert pushjobs:stop_catch_up from pg

-- Nothing is undone: recent_jobs() is CREATE OR REPLACE'd by
-- sql/functions.sql, and the functions of the reverted-to state are those
-- of the checkout that deploys it.  No table or type changed.

BEGIN;
COMMIT;
