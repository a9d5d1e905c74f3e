-- Verify pushjobs:schema on pg

BEGIN;

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
SELECT org, node_name, owner, session, online, changed_at
  FROM pushjobs.presence WHERE false;

ROLLBACK;
