-- Revert pushjobs:presence_handover from pg

-- Nothing is undone: the functions still installed (CREATE OR REPLACE'd
-- from sql/functions.sql) read presence.handover_until, and the column,
-- NULL unless a reload just closed a channel, changes nothing for the
-- functions of an earlier checkout.

BEGIN;
COMMIT;
