-- Revert pushjobs:output_stream from pg

BEGIN;

-- A job feed's next events after p_after, at most p_limit of them: as
-- the release had it, without the output events' chunks.
CREATE OR REPLACE FUNCTION pushjobs.feed_events(p_job text, p_after integer,
    p_limit integer)
RETURNS TABLE (seq integer, name text, data text)
LANGUAGE sql STABLE AS $$
    SELECT e.seq, e.name, e.data
      FROM pushjobs.job_events e
     WHERE e.job_id = p_job AND e.seq > p_after
     ORDER BY e.seq
     LIMIT p_limit
$$;

DROP FUNCTION pushjobs.feed_data(text, bytea);
DROP FUNCTION pushjobs.job_feed(text, integer);
DROP TRIGGER job_output_final ON pushjobs.job_output;
DROP FUNCTION pushjobs.job_output_final();
DROP FUNCTION pushjobs.node_outputs(jsonb);
DROP TABLE pushjobs.job_output_chunk;
DROP TABLE pushjobs.job_output_live;

-- Captured output of one node, base64 without line breaks; no row when the
-- job, the node or the output does not exist.
CREATE OR REPLACE FUNCTION pushjobs.job_output_b64(p_org text, p_job text,
    p_node text, p_channel text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT translate(encode(CASE WHEN p_channel = 'stderr' THEN o.stderr
                                 ELSE o.stdout END, 'base64'), E'\n', '')
      FROM pushjobs.job_output o
      JOIN pushjobs.jobs j ON j.id = o.job_id
     WHERE j.org = p_org AND o.job_id = p_job AND o.node_name = p_node
$$;

COMMIT;
