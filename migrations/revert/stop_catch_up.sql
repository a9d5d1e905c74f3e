-- Revert pushjobs:stop_catch_up from pg

-- Released in @v2.0.0: this script is frozen (migrations/README.md).
-- Nothing to undo: the deploy script changes nothing in the release.

BEGIN;
COMMIT;
