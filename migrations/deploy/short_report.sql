-- Deploy pushjobs:short_report to pg
-- requires: feed_bytes

-- A final report that leaves out what its agent streamed: the agent names
-- where its bytes start in each stream (stdout_offset, stderr_offset), and
-- node_inputs() stores it as it came, after the node's chunks (job_output
-- stdout_at, stderr_at), when they are all stored, and else asks the agent
-- for its whole report (rehab).  At the end of a job with live output, 100
-- reports of 600 KB each went through node_inputs() under the job's lock,
-- which node_outputs() waits for, and each was stored a second time beside
-- its chunks: the last lines of every node reached the feed seconds late.

BEGIN;

ALTER TABLE pushjobs.job_output
    ADD COLUMN stdout_at bigint NOT NULL DEFAULT 0 CHECK (stdout_at >= 0),
    ADD COLUMN stderr_at bigint NOT NULL DEFAULT 0 CHECK (stderr_at >= 0);

-- What a node of a job has streamed and is stored, per stream (job_output
-- _chunk rows, which node_outputs() appends without gaps from offset 0).
CREATE OR REPLACE FUNCTION pushjobs.node_streamed(p_job text, p_node text)
RETURNS TABLE (stdout bytea, stderr bytea)
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(string_agg(c.data, '' ORDER BY c.off)
                        FILTER (WHERE c.stream = 'stdout'), ''),
           COALESCE(string_agg(c.data, '' ORDER BY c.off)
                        FILTER (WHERE c.stream = 'stderr'), '')
      FROM pushjobs.job_output_chunk c
     WHERE c.job_id = p_job AND c.node_name = p_node
$$;


-- A batch of agent messages from one worker: a JSON array of
-- {"org", "node", "job_id", "type", "exit_status", "stdout", "stderr",
--  "truncated"}, and for a final report that leaves out what its agent
-- streamed: "stdout_offset", "stderr_offset" (where the report's bytes
-- start in each stream) and "cap" (pushjobs_max_output_size).  Such a
-- short report is stored as it came, with where its bytes start
-- (job_output's stdout_at, stderr_at): the bytes before are the node's
-- job_output_chunk rows, which must then be exactly that many (up to the
-- cap).  Returns, for each element (0-based), whether the agent is to be
-- set right (rehab): sent an abort for that job, or for a short report
-- whose streamed bytes are not all stored (a chunk was lost: the channel
-- or the database failed under it, or the node was not running), asked
-- for its whole report (docs/protocol.md, resend); that report is then
-- not applied.  Final reports are applied once however often they arrive.
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
    v_out_at  bigint;
    v_err_at  bigint;
    v_trunc   boolean;
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
               COALESCE((e.v ->> 'stdout_offset')::bigint, 0) AS out_off,
               COALESCE((e.v ->> 'stderr_offset')::bigint, 0) AS err_off,
               (e.v ->> 'cap')::bigint AS cap,
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
            v_out_at := 0;
            v_err_at := 0;
            v_trunc := false;

            IF (r.out_off > 0 OR r.err_off > 0)
               AND NOT EXISTS (SELECT 1 FROM pushjobs.job_output o
                                WHERE o.job_id = v_job.id
                                  AND o.node_name = r.node)
            THEN
                -- a short report: what it leaves out must be stored as
                -- chunks
                SELECT l.stdout_len, l.stderr_len, l.truncated
                  INTO v_out_at, v_err_at, v_trunc
                  FROM pushjobs.job_output_live l
                 WHERE l.job_id = v_job.id AND l.node_name = r.node;

                IF NOT FOUND
                   OR v_out_at <> least(r.out_off, r.cap)
                   OR v_err_at <> least(r.err_off, r.cap)
                THEN
                    rehab := true;
                    RETURN NEXT;
                    CONTINUE;
                END IF;
            END IF;

            BEGIN
                INSERT INTO pushjobs.job_output (job_id, node_name, stdout,
                                                 stderr, truncated,
                                                 stdout_at, stderr_at)
                VALUES (v_job.id, r.node,
                        decode(COALESCE(r.stdout, ''), 'base64'),
                        decode(COALESCE(r.stderr, ''), 'base64'),
                        r.truncated OR v_trunc, v_out_at, v_err_at)
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

        -- a final report's rehab is a resend: only for a short one, above
        rehab := v_step.rehab
                 AND r.input NOT IN ('succeeded', 'failed', 'aborted');
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


-- A node's final report replaces what it streamed: its job_output row is
-- stored and its job_output_live row goes, so the output is served from
-- the report; the job_output_chunk rows stay, as the bytes of the feed's
-- output events (job_feed()), and as the start of a short report's
-- output.  When the node streamed, what the report has beyond the
-- streamed bytes is emitted as output events that carry their own bytes,
-- so that the feed carries the whole output; before the node's own end
-- events (node_inputs() stores the output first).  A short report's bytes
-- are all beyond (stdout_at, stderr_at); a whole report (an agent that
-- did not stream on this channel, or re-sent it) is compared with the
-- assembled chunks, and what it has beyond them, if it starts with them,
-- is emitted.
CREATE OR REPLACE FUNCTION pushjobs.job_output_final()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_live    pushjobs.job_output_live;
    v_out_at  bigint;
    v_err_at  bigint;
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

    IF NEW.stdout_at > 0 OR NEW.stderr_at > 0 THEN
        v_out_at := 0;
        v_err_at := 0;
    ELSE
        SELECT CASE WHEN substr(NEW.stdout, 1, length(s.stdout)) = s.stdout
                    THEN length(s.stdout) END,
               CASE WHEN substr(NEW.stderr, 1, length(s.stderr)) = s.stderr
                    THEN length(s.stderr) END
          INTO v_out_at, v_err_at
          FROM pushjobs.node_streamed(NEW.job_id, NEW.node_name) s;
    END IF;

    -- v_out_at: where the bytes to emit start in the row's stdout (NULL:
    -- the report does not start with the streamed bytes)
    IF length(NEW.stdout) > v_out_at THEN
        v_names := array_append(v_names, 'output');
        v_fields := array_append(v_fields,
            json_build_object('node', NEW.node_name, 'stream', 'stdout',
                              'offset', NEW.stdout_at + v_out_at,
                              'data', translate(encode(
                                  substr(NEW.stdout, v_out_at::integer + 1),
                                  'base64'), E'\n', '')));
    END IF;

    IF length(NEW.stderr) > v_err_at THEN
        v_names := array_append(v_names, 'output');
        v_fields := array_append(v_fields,
            json_build_object('node', NEW.node_name, 'stream', 'stderr',
                              'offset', NEW.stderr_at + v_err_at,
                              'data', translate(encode(
                                  substr(NEW.stderr, v_err_at::integer + 1),
                                  'base64'), E'\n', '')));
    END IF;

    SELECT j.org INTO v_org FROM pushjobs.jobs j WHERE j.id = NEW.job_id;

    PERFORM pushjobs.emit_events(NEW.job_id, v_org, NULL, v_names, v_fields);
    RETURN NULL;
END
$$;


-- Captured output of one node, base64 without line breaks: the final
-- report's (after the chunks it left out, for a short one), or while the
-- node runs what it has streamed so far (its chunks, assembled); no row
-- when the job, the node or any output does not exist.
CREATE OR REPLACE FUNCTION pushjobs.job_output_b64(p_org text, p_job text,
    p_node text, p_channel text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT translate(encode(CASE WHEN p_channel = 'stderr' THEN o.stderr
                                 ELSE o.stdout END, 'base64'), E'\n', '')
      FROM (SELECT CASE WHEN o.stdout_at > 0 THEN s.stdout || o.stdout
                        ELSE o.stdout END,
                   CASE WHEN o.stderr_at > 0 THEN s.stderr || o.stderr
                        ELSE o.stderr END, 1 AS rank
              FROM pushjobs.job_output o
              LEFT JOIN LATERAL pushjobs.node_streamed(o.job_id, o.node_name) s
                     ON o.stdout_at > 0 OR o.stderr_at > 0
             WHERE o.job_id = p_job AND o.node_name = p_node
            UNION ALL
            SELECT s.stdout, s.stderr, 2
              FROM pushjobs.job_output_live l,
                   LATERAL pushjobs.node_streamed(l.job_id, l.node_name) s
             WHERE l.job_id = p_job AND l.node_name = p_node) o
      JOIN pushjobs.jobs j ON j.id = p_job
     WHERE j.org = p_org
     ORDER BY o.rank
     LIMIT 1
$$;

COMMIT;
