-- Revert pushjobs:functions from pg

BEGIN;

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
          FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'pushjobs'
    LOOP
        EXECUTE 'DROP FUNCTION ' || f;
    END LOOP;
END
$$;

COMMIT;
