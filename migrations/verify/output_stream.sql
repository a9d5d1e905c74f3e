-- Verify pushjobs:output_stream on pg

BEGIN;

SELECT 'pushjobs.node_outputs(jsonb)'::regprocedure,
       'pushjobs.job_output_final()'::regprocedure,
       'pushjobs.job_feed(text, integer)'::regprocedure,
       'pushjobs.feed_data(text, bytea)'::regprocedure;

-- the feed reads output events' bytes from the chunks
SELECT 1 / (p.prosrc ~ 'job_feed')::integer
  FROM pg_proc p
 WHERE p.oid = 'pushjobs.feed_events(text, integer, integer)'::regprocedure;

SELECT job_id, node_name, stdout_len, stderr_len, truncated
  FROM pushjobs.job_output_live WHERE false;

SELECT job_id, node_name, stream, off, data
  FROM pushjobs.job_output_chunk WHERE false;

SELECT 1 / count(*)::integer
  FROM pg_trigger
 WHERE tgname = 'job_output_final'
   AND tgrelid = 'pushjobs.job_output'::regclass;

-- job_output_b64() reads the streamed output too
SELECT 1 / (p.prosrc ~ 'job_output_chunk')::integer
  FROM pg_proc p
 WHERE p.oid = 'pushjobs.job_output_b64(text, text, text, text)'::regprocedure;

ROLLBACK;
