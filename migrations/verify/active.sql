-- Verify pushjobs:active on pg

-- The whole catalog the plan leaves, as of this change: every function
-- (by its signature: a changed argument list fails), table, column,
-- index, sequence and trigger the module and the functions need.  A later
-- change that adds or changes one checks it in its own verify script.

BEGIN;

-- functions
SELECT 'pushjobs.abort_job(text, text, text, jsonb, boolean, integer)'::regprocedure;
SELECT 'pushjobs.agent_hello(text, text, jsonb)'::regprocedure;
SELECT 'pushjobs.agent_hellos(jsonb)'::regprocedure;
SELECT 'pushjobs.available_nodes(text, integer)'::regprocedure;
SELECT 'pushjobs.commit_message(pushjobs.jobs)'::regprocedure;
SELECT 'pushjobs.create_job(text, text, jsonb, integer, integer, integer)'::regprocedure;
SELECT 'pushjobs.dispatch(text, text)'::regprocedure;
SELECT 'pushjobs.emit(text, text, text, json, boolean)'::regprocedure;
SELECT 'pushjobs.event_data(text, json)'::regprocedure;
SELECT 'pushjobs.event_time(timestamptz)'::regprocedure;
SELECT 'pushjobs.feed_events(text, integer, integer)'::regprocedure;
SELECT 'pushjobs.feed_open(text, text, text, integer)'::regprocedure;
SELECT 'pushjobs.http_date(timestamptz)'::regprocedure;
SELECT 'pushjobs.job_active(pushjobs.job_status)'::regprocedure;
SELECT 'pushjobs.job_json(text, text, boolean)'::regprocedure;
SELECT 'pushjobs.job_output_b64(text, text, text, text)'::regprocedure;
SELECT 'pushjobs.job_summary(pushjobs.jobs)'::regprocedure;
SELECT 'pushjobs.jobs_json(text)'::regprocedure;
SELECT 'pushjobs.jobs_json(text, text, integer)'::regprocedure;
SELECT 'pushjobs.node_active(pushjobs.node_status)'::regprocedure;
SELECT 'pushjobs.node_inputs(jsonb)'::regprocedure;
SELECT 'pushjobs.node_inputs_write(text, text, text[], pushjobs.node_status[], integer[], bigint[], text[], text[])'::regprocedure;
SELECT 'pushjobs.node_state_json(text, text, integer)'::regprocedure;
SELECT 'pushjobs.node_states_json(text, integer)'::regprocedure;
SELECT 'pushjobs.node_step(pushjobs.job_status, pushjobs.node_status, boolean, text)'::regprocedure;
SELECT 'pushjobs.node_transition(pushjobs.jobs, text, text, integer)'::regprocedure;
SELECT 'pushjobs.notify(text, text, text)'::regprocedure;
SELECT 'pushjobs.online_nodes(text, integer)'::regprocedure;
SELECT 'pushjobs.org_event_commit_order()'::regprocedure;
SELECT 'pushjobs.org_feed_events(text, bigint, integer, integer)'::regprocedure;
SELECT 'pushjobs.org_feed_open(text, text, integer)'::regprocedure;
SELECT 'pushjobs.owner_beat(text)'::regprocedure;
SELECT 'pushjobs.owner_regained(text)'::regprocedure;
SELECT 'pushjobs.presence_update(text, jsonb)'::regprocedure;
SELECT 'pushjobs.purge(integer)'::regprocedure;
SELECT 'pushjobs.recent_jobs()'::regprocedure;
SELECT 'pushjobs.settle(text)'::regprocedure;
SELECT 'pushjobs.status_json(integer)'::regprocedure;
SELECT 'pushjobs.sweep(integer, integer, integer)'::regprocedure;
SELECT 'pushjobs.time_out(text)'::regprocedure;

-- nothing else in the schema: a function left behind by a change fails too
SELECT 1 / (count(*) = 40)::integer
  FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'pushjobs';

-- types
SELECT 'pushjobs.job_status'::regtype, 'pushjobs.node_status'::regtype;

-- tables and their columns
SELECT id, org, command, quorum, run_timeout, requestor, job_user, dir, env,
       file, capture, status, voting_deadline, run_deadline, abort_requested,
       created_at, updated_at
  FROM pushjobs.jobs WHERE false;
SELECT job_id, org, node_name, status, exit_status, abort_requested,
       abort_force, updated_at
  FROM pushjobs.job_nodes WHERE false;
SELECT job_id, node_name, stdout, stderr, truncated
  FROM pushjobs.job_output WHERE false;
SELECT job_id, seq, name, data, created_at FROM pushjobs.job_events WHERE false;
SELECT id, org, job_id, name, data, created_at
  FROM pushjobs.org_events WHERE false;
SELECT id, started_at, seen_at, dead FROM pushjobs.owners WHERE false;
SELECT org, node_name, owner, session, online, changed_at, handover_until
  FROM pushjobs.presence WHERE false;

-- indexes (primary keys included) and sequences; job_nodes_active, which
-- this change made, was dropped by ingest_hot
SELECT 'pushjobs.jobs_pkey'::regclass, 'pushjobs.jobs_active'::regclass,
       'pushjobs.jobs_finished'::regclass,
       'pushjobs.jobs_org_created'::regclass,
       'pushjobs.job_nodes_pkey'::regclass,
       'pushjobs.job_output_pkey'::regclass,
       'pushjobs.job_events_pkey'::regclass,
       'pushjobs.org_events_pkey'::regclass,
       'pushjobs.org_events_org'::regclass,
       'pushjobs.owners_pkey'::regclass,
       'pushjobs.presence_pkey'::regclass,
       'pushjobs.presence_owner'::regclass,
       'pushjobs.presence_offline'::regclass,
       'pushjobs.org_events_id_seq'::regclass,
       'pushjobs.org_events_pending_id'::regclass;

-- the org feed's commit order trigger
SELECT 1 / count(*)
  FROM pg_trigger
 WHERE tgname = 'org_events_commit_order'
   AND tgrelid = 'pushjobs.org_events'::regclass
   AND tgdeferrable AND tginitdeferred;

ROLLBACK;
