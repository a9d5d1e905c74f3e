-- Verify pushjobs:functions on pg

BEGIN;

SELECT 'pushjobs.create_job(text, text, jsonb, integer, integer, integer)'::regprocedure;
SELECT 'pushjobs.node_inputs(jsonb)'::regprocedure;
SELECT 'pushjobs.node_step(pushjobs.job_status, pushjobs.node_status, boolean, text)'::regprocedure;
SELECT 'pushjobs.node_inputs_write(text, text, text[], pushjobs.node_status[], integer[], bigint[], text[], text[])'::regprocedure;
SELECT 'pushjobs.event_data(text, json)'::regprocedure;
SELECT 'pushjobs.agent_hello(text, text, jsonb)'::regprocedure;
SELECT 'pushjobs.agent_hellos(jsonb)'::regprocedure;
SELECT 'pushjobs.dispatch(text, text)'::regprocedure;
SELECT 'pushjobs.presence_update(text, jsonb)'::regprocedure;
SELECT 'pushjobs.owner_beat(text)'::regprocedure;
SELECT 'pushjobs.sweep(integer, integer, integer)'::regprocedure;
SELECT 'pushjobs.purge(integer)'::regprocedure;
SELECT 'pushjobs.time_out(text)'::regprocedure;
SELECT 'pushjobs.job_json(text, text, boolean)'::regprocedure;
SELECT 'pushjobs.jobs_json(text)'::regprocedure;
SELECT 'pushjobs.jobs_json(text, text, integer)'::regprocedure;
SELECT 'pushjobs.feed_open(text, text, text, integer)'::regprocedure;
SELECT 'pushjobs.org_feed_open(text, text, integer)'::regprocedure;

ROLLBACK;
