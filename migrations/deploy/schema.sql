-- Deploy pushjobs:schema to pg

BEGIN;

\ir ../../sql/schema.sql

COMMIT;
