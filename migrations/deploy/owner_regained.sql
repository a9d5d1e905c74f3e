-- Deploy pushjobs:owner_regained to pg
-- requires: functions

-- owner_regained() is in sql/functions.sql with the other functions; a
-- database deployed before this change gets it (and every function as the
-- file now has it: all are CREATE OR REPLACE) from here.

BEGIN;

\ir ../../sql/functions.sql

COMMIT;
