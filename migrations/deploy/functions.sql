-- Deploy pushjobs:functions to pg
-- requires: schema

BEGIN;

\ir ../../sql/functions.sql

COMMIT;
