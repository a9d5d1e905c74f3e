-- Revert pushjobs:active from pg

BEGIN;

DROP FUNCTION pushjobs.job_active(pushjobs.job_status);
DROP FUNCTION pushjobs.node_active(pushjobs.node_status);

COMMIT;
