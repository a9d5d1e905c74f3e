-- Verify pushjobs:presence_handover on pg

BEGIN;

SELECT handover_until FROM pushjobs.presence WHERE false;
SELECT 'pushjobs.available_nodes(text, integer)'::regprocedure;

ROLLBACK;
