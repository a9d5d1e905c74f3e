-- Revert pushjobs:output_stream from pg

BEGIN;

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
