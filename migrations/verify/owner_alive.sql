-- Verify pushjobs:owner_alive on pg

BEGIN;

SELECT pushjobs.owner_alive(false, now(), 1000);

-- 1/0 unless all three call it
SELECT 1/(count(*) / 3)
  FROM pg_proc
 WHERE oid IN ('pushjobs.online_nodes(text, integer)'::regprocedure,
               'pushjobs.available_nodes(text, integer)'::regprocedure,
               'pushjobs.status_json(integer)'::regprocedure)
   AND prosrc LIKE '%owner_alive%';

ROLLBACK;
