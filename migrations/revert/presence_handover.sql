-- Revert pushjobs:presence_handover from pg

-- Released in @v2.0.0: this script is frozen (migrations/README.md).
-- Nothing is undone: change schema created presence.handover_until in the
-- release, and the functions of change functions read it.

BEGIN;
COMMIT;
