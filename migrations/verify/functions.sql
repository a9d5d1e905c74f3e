-- Verify pushjobs:functions on pg

BEGIN;

SELECT 'pushjobs.create_job(text, text, jsonb, integer, integer, integer)'::regprocedure;
SELECT 'pushjobs.node_inputs(jsonb)'::regprocedure;
SELECT 'pushjobs.agent_hello(text, text, jsonb)'::regprocedure;
SELECT 'pushjobs.agent_hellos(jsonb)'::regprocedure;
SELECT 'pushjobs.dispatch(text, text)'::regprocedure;
SELECT 'pushjobs.presence_update(text, jsonb)'::regprocedure;
SELECT 'pushjobs.owner_beat(text)'::regprocedure;
SELECT 'pushjobs.sweep(integer, integer)'::regprocedure;
SELECT 'pushjobs.purge(integer)'::regprocedure;
SELECT 'pushjobs.time_out(text)'::regprocedure;
SELECT 'pushjobs.job_json(text, text, boolean)'::regprocedure;
SELECT 'pushjobs.jobs_json(text)'::regprocedure;
SELECT 'pushjobs.jobs_json(text, text, integer)'::regprocedure;
SELECT 'pushjobs.feed_open(text, text, text, integer)'::regprocedure;
SELECT 'pushjobs.org_feed_open(text, text, integer)'::regprocedure;

ROLLBACK;
