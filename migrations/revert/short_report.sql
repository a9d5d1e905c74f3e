-- Revert pushjobs:short_report from pg

BEGIN;

-- a short report's output made whole again: the chunks before it
UPDATE pushjobs.job_output o
   SET stdout = CASE WHEN o.stdout_at > 0 THEN s.stdout || o.stdout
                     ELSE o.stdout END,
       stderr = CASE WHEN o.stderr_at > 0 THEN s.stderr || o.stderr
                     ELSE o.stderr END
  FROM pushjobs.job_output x
  CROSS JOIN LATERAL pushjobs.node_streamed(x.job_id, x.node_name) s
 WHERE (x.stdout_at > 0 OR x.stderr_at > 0)
   AND o.job_id = x.job_id AND o.node_name = x.node_name;

-- node_inputs() as emit_events had it: every final report whole.
-- A batch of agent messages from one worker: a JSON array of
-- {"org", "node", "job_id", "type", "exit_status", "stdout", "stderr",
--  "truncated"}.  Returns, for each element (0-based), whether the agent
-- should be sent an abort for that job.  Final reports are applied once
-- however often they arrive.
--
-- Each message is node_step() as in node_transition(), but the batch is
-- set-based: the jobs are locked (and timed out) first, then one query
-- reads every message with its node's row, walked per job and node in
-- arrival order; each job's node updates and events are written at once
-- (node_inputs_write()), its events in arrival order, and the job is then
-- settled.  Per message that leaves no statement but the captured output.
CREATE OR REPLACE FUNCTION pushjobs.node_inputs(p_inputs jsonb)
RETURNS TABLE (i integer, rehab boolean)
LANGUAGE plpgsql AS $$
DECLARE
    r         record;
    v_step    record;
    v_job     pushjobs.jobs;
    v_id      text;
    v_node    text;
    v_status  pushjobs.node_status;
    v_exit    integer;
    v_moved   boolean := false;
    u_nodes   text[] := '{}';
    u_status  pushjobs.node_status[] := '{}';
    u_exit    integer[] := '{}';
    e_keys    bigint[] := '{}';
    e_names   text[] := '{}';
    e_fields  json[] := '{}';
BEGIN
    -- every job of the batch locked, in id order, before the snapshot of
    -- the query below; the run timer first (see time_out())
    FOR v_job IN
        SELECT j.* FROM pushjobs.jobs j
         WHERE (j.id, j.org) IN (SELECT e ->> 'job_id', e ->> 'org'
                                   FROM jsonb_array_elements(p_inputs) e)
         ORDER BY j.id
           FOR UPDATE
    LOOP
        IF v_job.status = 'running' AND v_job.run_deadline <= now() THEN
            PERFORM pushjobs.time_out(v_job.id);
        END IF;
    END LOOP;

    v_job := NULL;

    FOR r IN
        SELECT (e.ord - 1)::integer AS idx, e.ord,
               e.v ->> 'org' AS org,
               e.v ->> 'node' AS node,
               e.v ->> 'job_id' AS job_id,
               e.v ->> 'type' AS input,
               (e.v ->> 'exit_status')::integer AS exit_status,
               e.v ->> 'stdout' AS stdout,
               e.v ->> 'stderr' AS stderr,
               COALESCE((e.v ->> 'truncated')::boolean, false) AS truncated,
               n.status, n.abort_requested
          FROM jsonb_array_elements(p_inputs) WITH ORDINALITY AS e(v, ord)
          LEFT JOIN pushjobs.jobs j
                 ON j.id = e.v ->> 'job_id' AND j.org = e.v ->> 'org'
          LEFT JOIN pushjobs.job_nodes n
                 ON n.job_id = j.id AND n.node_name = e.v ->> 'node'
         ORDER BY e.v ->> 'job_id', e.v ->> 'node', e.ord
    LOOP
        IF v_node IS DISTINCT FROM r.node OR v_id IS DISTINCT FROM r.job_id
        THEN
            IF v_moved THEN
                u_nodes := array_append(u_nodes, v_node);
                u_status := array_append(u_status, v_status);
                u_exit := array_append(u_exit, v_exit);
            END IF;

            v_node := r.node;
            v_status := r.status;
            v_exit := NULL;
            v_moved := false;
        END IF;

        IF v_id IS DISTINCT FROM r.job_id THEN
            IF v_job.id IS NOT NULL THEN
                PERFORM pushjobs.node_inputs_write(v_job.id, v_job.org,
                            u_nodes, u_status, u_exit,
                            e_keys, e_names, e_fields);
                PERFORM pushjobs.settle(v_job.id);
                u_nodes := '{}'; u_status := '{}'; u_exit := '{}';
                e_keys := '{}'; e_names := '{}'; e_fields := '{}';
            END IF;

            -- locked above
            SELECT * INTO v_job FROM pushjobs.jobs
             WHERE id = r.job_id AND org = r.org;

            v_id := r.job_id;
        END IF;

        i := r.idx;

        IF v_job.id IS NULL THEN
            rehab := r.input NOT IN ('succeeded', 'failed', 'aborted');
            RETURN NEXT;
            CONTINUE;
        END IF;

        IF r.input IN ('succeeded', 'failed')
           AND (r.stdout IS NOT NULL OR r.stderr IS NOT NULL)
           AND r.status IS NOT NULL
        THEN
            BEGIN
                INSERT INTO pushjobs.job_output (job_id, node_name, stdout,
                                                 stderr, truncated)
                VALUES (v_job.id, r.node,
                        decode(COALESCE(r.stdout, ''), 'base64'),
                        decode(COALESCE(r.stderr, ''), 'base64'),
                        r.truncated)
                ON CONFLICT DO NOTHING;
            EXCEPTION WHEN invalid_parameter_value THEN
                RAISE WARNING 'pushjobs: undecodable output from node % '
                              'for job %', r.node, v_job.id;
            END;
        END IF;

        v_step := pushjobs.node_step(v_job.status, v_status,
                                     r.abort_requested, r.input, r.node);

        IF v_step.new_status <> v_status THEN
            v_status := v_step.new_status;
            v_exit := COALESCE(r.exit_status, v_exit);
            v_moved := true;
        END IF;

        -- the events of one message in their order, after those of the
        -- messages before it (node_step() makes at most four)
        FOR k IN 1 .. cardinality(v_step.event_names) LOOP
            e_keys := array_append(e_keys, r.ord * 4 + k);
            e_names := array_append(e_names, v_step.event_names[k]);
            e_fields := array_append(e_fields, v_step.event_fields[k]);
        END LOOP;

        rehab := v_step.rehab;
        RETURN NEXT;
    END LOOP;

    IF v_job.id IS NOT NULL THEN
        IF v_moved THEN
            u_nodes := array_append(u_nodes, v_node);
            u_status := array_append(u_status, v_status);
            u_exit := array_append(u_exit, v_exit);
        END IF;

        PERFORM pushjobs.node_inputs_write(v_job.id, v_job.org,
                    u_nodes, u_status, u_exit, e_keys, e_names, e_fields);
        PERFORM pushjobs.settle(v_job.id);
    END IF;
END
$$;


-- job_output_final() and job_output_b64() as output_stream had them.
-- A node's final report replaces what it streamed: its job_output row is
-- stored and its job_output_live row goes, so the output is served from
-- the report; the job_output_chunk rows stay, as the bytes of the feed's
-- output events (job_feed()).  When the node streamed, what the report
-- has beyond the streamed bytes (the last chunks, sent just before the
-- report, may be applied after it and are then ignored) is emitted as
-- output events that carry their own bytes, so that the feed carries the
-- whole output; before the node's own end events (node_inputs() stores
-- the output first).  The streamed bytes are assembled once, here, to
-- check that the report starts with them.
CREATE OR REPLACE FUNCTION pushjobs.job_output_final()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_live    pushjobs.job_output_live;
    v_stdout  bytea;
    v_stderr  bytea;
    v_org     text;
    v_names   text[] := '{}';
    v_fields  json[] := '{}';
BEGIN
    DELETE FROM pushjobs.job_output_live l
     WHERE l.job_id = NEW.job_id AND l.node_name = NEW.node_name
    RETURNING l.* INTO v_live;

    IF v_live.job_id IS NULL THEN
        RETURN NULL;
    END IF;

    SELECT COALESCE(string_agg(c.data, '' ORDER BY c.off)
                        FILTER (WHERE c.stream = 'stdout'), ''),
           COALESCE(string_agg(c.data, '' ORDER BY c.off)
                        FILTER (WHERE c.stream = 'stderr'), '')
      INTO v_stdout, v_stderr
      FROM pushjobs.job_output_chunk c
     WHERE c.job_id = NEW.job_id AND c.node_name = NEW.node_name;

    IF length(NEW.stdout) > length(v_stdout)
       AND substr(NEW.stdout, 1, length(v_stdout)) = v_stdout
    THEN
        v_names := array_append(v_names, 'output');
        v_fields := array_append(v_fields,
            json_build_object('node', NEW.node_name, 'stream', 'stdout',
                              'offset', length(v_stdout),
                              'data', translate(encode(
                                  substr(NEW.stdout, length(v_stdout) + 1),
                                  'base64'), E'\n', '')));
    END IF;

    IF length(NEW.stderr) > length(v_stderr)
       AND substr(NEW.stderr, 1, length(v_stderr)) = v_stderr
    THEN
        v_names := array_append(v_names, 'output');
        v_fields := array_append(v_fields,
            json_build_object('node', NEW.node_name, 'stream', 'stderr',
                              'offset', length(v_stderr),
                              'data', translate(encode(
                                  substr(NEW.stderr, length(v_stderr) + 1),
                                  'base64'), E'\n', '')));
    END IF;

    SELECT j.org INTO v_org FROM pushjobs.jobs j WHERE j.id = NEW.job_id;

    PERFORM pushjobs.emit_events(NEW.job_id, v_org, NULL, v_names, v_fields);
    RETURN NULL;
END
$$;


-- Captured output of one node, base64 without line breaks: the final
-- report's, or while the node runs what it has streamed so far (its
-- chunks, assembled); no row when the job, the node or any output does
-- not exist.
CREATE OR REPLACE FUNCTION pushjobs.job_output_b64(p_org text, p_job text,
    p_node text, p_channel text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT translate(encode(CASE WHEN p_channel = 'stderr' THEN o.stderr
                                 ELSE o.stdout END, 'base64'), E'\n', '')
      FROM (SELECT o.stdout, o.stderr, 1 AS rank
              FROM pushjobs.job_output o
             WHERE o.job_id = p_job AND o.node_name = p_node
            UNION ALL
            SELECT COALESCE(string_agg(c.data, '' ORDER BY c.off)
                                FILTER (WHERE c.stream = 'stdout'), ''),
                   COALESCE(string_agg(c.data, '' ORDER BY c.off)
                                FILTER (WHERE c.stream = 'stderr'), ''), 2
              FROM pushjobs.job_output_live l
              LEFT JOIN pushjobs.job_output_chunk c
                     ON c.job_id = l.job_id AND c.node_name = l.node_name
             WHERE l.job_id = p_job AND l.node_name = p_node
             GROUP BY l.job_id, l.node_name) o
      JOIN pushjobs.jobs j ON j.id = p_job
     WHERE j.org = p_org
     ORDER BY o.rank
     LIMIT 1
$$;


DROP FUNCTION pushjobs.node_streamed(text, text);

ALTER TABLE pushjobs.job_output DROP COLUMN stdout_at,
                                DROP COLUMN stderr_at;

COMMIT;
