-- Deploy pushjobs:output_stream to pg
-- requires: rollout

-- Live output (issue 13): agents that the welcome told so send output
-- messages while a captured job runs.  node_outputs() stores each chunk
-- as a job_output_chunk row of its node (once, by offset; up to the cap;
-- the node's job_output_live row keeps each stream's length) and emits an
-- output event; job_output_b64() serves the final report's output, or
-- else the streamed chunks assembled; a stored final report ends the
-- node's live output (job_output_final trigger).  Output events carry no
-- bytes in job_events: the job's feed reads them from the chunk rows
-- (job_feed(), feed_data()).  New tables, not new
-- job_output columns: the final report's row stays as it was.

BEGIN;

-- Output streamed while a job runs (the agent's output messages), one row
-- per node that has sent some: how many bytes of each stream
-- node_outputs() has stored as job_output_chunk rows (at most the cap),
-- and whether it cut at the cap.  Small and fixed in size, so updating it
-- per chunk costs the same at any length.  The final report's job_output
-- row wins: job_output_final() deletes this row (the chunks stay: they
-- are the bytes of the feed's output events).
CREATE TABLE pushjobs.job_output_live (
    job_id           text NOT NULL,
    node_name        text NOT NULL,
    stdout_len       bigint NOT NULL DEFAULT 0,
    stderr_len       bigint NOT NULL DEFAULT 0,
    truncated        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, node_name),
    FOREIGN KEY (job_id, node_name)
        REFERENCES pushjobs.job_nodes (job_id, node_name) ON DELETE CASCADE
);

-- The streamed bytes, one row per appended chunk: bytes [off, off +
-- length(data)) of the node's stream, contiguous from 0 up to the
-- stream's length in job_output_live.  A chunk is an insert of its own
-- bytes (appending to one bytea rewrote the whole output so far);
-- readers assemble string_agg(data, '' ORDER BY off).  Each row is also
-- the bytes of one output event of the job's feed (job_feed()), and is
-- kept with the job for that.
CREATE TABLE pushjobs.job_output_chunk (
    job_id           text NOT NULL,
    node_name        text NOT NULL,
    stream           text NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    off              bigint NOT NULL CHECK (off >= 0),
    data             bytea NOT NULL,
    PRIMARY KEY (job_id, node_name, stream, off),
    FOREIGN KEY (job_id, node_name)
        REFERENCES pushjobs.job_nodes (job_id, node_name) ON DELETE CASCADE
);


-- A batch of output chunks from one worker: a JSON array of {"org",
-- "node", "job_id", "stream" ("stdout" or "stderr"), "offset" (of the
-- chunk's first byte in its stream), "data" (base64), "cap" (the
-- server's pushjobs_max_output_size), "truncated" (the agent's chunk went
-- beyond the cap)}.  Each chunk is stored as a job_output_chunk row of
-- its node, only the part beyond what is stored (a
-- chunk re-sent after a reconnect adds nothing; one after a gap is
-- dropped: the final report fills it), up to the cap (then the node's
-- job_output_live row is marked truncated); that row keeps the stream's
-- length, so a chunk costs its own bytes whatever the node has sent
-- before.  What was appended is an output event {"node",
-- "stream", "offset"} on the job's feed, without the bytes: a feed reads
-- them from the chunk row (job_feed()), so they are written once, not a
-- second time as base64 in job_events.  Only a node of a running job
-- that runs (or is ready: its ack_run goes through the module's other
-- batch, node_inputs(), and may be stored after its first chunks, whose
-- loss would drop the rest of its stream as a gap) and whose final
-- report has not been stored streams: the report wins, and no output
-- event follows the node's end.  One emit_events() per job;
-- the jobs are locked in id order like node_inputs() does.
CREATE OR REPLACE FUNCTION pushjobs.node_outputs(p_chunks jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r         record;
    v_job     pushjobs.jobs;
    v_id      text;
    v_cur     bigint;
    v_trunc   boolean;
    v_data    bytea;
    v_keys    bigint[] := '{}';
    v_names   text[] := '{}';
    v_fields  json[] := '{}';
BEGIN
    -- the job ids only: jsonb_array_elements() would copy every chunk's
    -- data (a batch holds megabytes) for the lock too; the loop below
    -- checks the org
    PERFORM 1 FROM pushjobs.jobs j
     WHERE j.id IN (SELECT jsonb_path_query(p_chunks, '$[*].job_id') #>> '{}')
     ORDER BY j.id
       FOR UPDATE;

    FOR r IN
        SELECT e.ord, e.v ->> 'org' AS org, e.v ->> 'node' AS node,
               e.v ->> 'job_id' AS job_id, e.v ->> 'stream' AS stream,
               (e.v ->> 'offset')::bigint AS off, e.v ->> 'data' AS data,
               (e.v ->> 'cap')::bigint AS cap,
               COALESCE((e.v ->> 'truncated')::boolean, false) AS truncated
          FROM jsonb_array_elements(p_chunks) WITH ORDINALITY AS e(v, ord)
          JOIN pushjobs.jobs j
            ON j.id = e.v ->> 'job_id' AND j.org = e.v ->> 'org'
          JOIN pushjobs.job_nodes n
            ON n.job_id = j.id AND n.node_name = e.v ->> 'node'
         WHERE j.status = 'running' AND n.status IN ('ready', 'running')
           AND e.v ->> 'stream' IN ('stdout', 'stderr')
           AND NOT EXISTS (SELECT 1 FROM pushjobs.job_output o
                            WHERE o.job_id = j.id
                              AND o.node_name = n.node_name)
         ORDER BY e.v ->> 'job_id', e.ord
    LOOP
        IF v_id IS DISTINCT FROM r.job_id THEN
            IF v_id IS NOT NULL THEN
                PERFORM pushjobs.emit_events(v_id, v_job.org, v_keys,
                                             v_names, v_fields);
                v_keys := '{}'; v_names := '{}'; v_fields := '{}';
            END IF;

            SELECT * INTO v_job FROM pushjobs.jobs WHERE id = r.job_id;
            v_id := r.job_id;
        END IF;

        BEGIN
            v_data := decode(r.data, 'base64');
        EXCEPTION WHEN invalid_parameter_value THEN
            RAISE WARNING 'pushjobs: undecodable output from node % '
                          'for job %', r.node, r.job_id;
            CONTINUE;
        END;

        INSERT INTO pushjobs.job_output_live (job_id, node_name)
        VALUES (r.job_id, r.node)
        ON CONFLICT DO NOTHING;

        SELECT CASE WHEN r.stream = 'stderr' THEN l.stderr_len
                    ELSE l.stdout_len END, l.truncated
          INTO v_cur, v_trunc
          FROM pushjobs.job_output_live l
         WHERE l.job_id = r.job_id AND l.node_name = r.node;

        IF r.truncated OR r.off + length(v_data) > r.cap THEN
            IF NOT v_trunc THEN
                UPDATE pushjobs.job_output_live l
                   SET truncated = true
                 WHERE l.job_id = r.job_id AND l.node_name = r.node;
                v_trunc := true;
            END IF;
        END IF;

        -- a gap, or nothing new
        IF r.off > v_cur OR r.off + length(v_data) <= v_cur THEN
            CONTINUE;
        END IF;

        v_data := substr(v_data, (v_cur - r.off + 1)::integer);

        IF v_cur + length(v_data) > r.cap THEN
            v_data := substr(v_data, 1, greatest(r.cap - v_cur, 0)::integer);
        END IF;

        IF length(v_data) = 0 THEN
            CONTINUE;
        END IF;

        INSERT INTO pushjobs.job_output_chunk (job_id, node_name, stream,
                                               off, data)
        VALUES (r.job_id, r.node, r.stream, v_cur, v_data);

        UPDATE pushjobs.job_output_live l
           SET stdout_len = CASE WHEN r.stream = 'stdout'
                                 THEN v_cur + length(v_data)
                                 ELSE l.stdout_len END,
               stderr_len = CASE WHEN r.stream = 'stderr'
                                 THEN v_cur + length(v_data)
                                 ELSE l.stderr_len END
         WHERE l.job_id = r.job_id AND l.node_name = r.node;

        v_keys := array_append(v_keys, r.ord);
        v_names := array_append(v_names, 'output');
        v_fields := array_append(v_fields,
            json_build_object('node', r.node, 'stream', r.stream,
                              'offset', v_cur));
    END LOOP;

    IF v_id IS NOT NULL THEN
        PERFORM pushjobs.emit_events(v_id, v_job.org, v_keys, v_names,
                                     v_fields);
    END IF;
END
$$;


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

-- job_output_final() runs for each stored final report
DROP TRIGGER IF EXISTS job_output_final ON pushjobs.job_output;
CREATE TRIGGER job_output_final
    AFTER INSERT ON pushjobs.job_output
    FOR EACH ROW EXECUTE FUNCTION pushjobs.job_output_final();


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


-- A job feed's events after p_after, in order, each output event with the
-- chunk row it stands for (node_outputs() writes an output event's bytes
-- once, as that row, not again as base64 in job_events); NULL for every
-- other event and for an output event that carries its own bytes
-- (job_output_final()'s).  Inlined into its callers, so their ORDER BY
-- seq LIMIT stops the scan of job_events early; the other events' data is
-- not parsed.
CREATE OR REPLACE FUNCTION pushjobs.job_feed(p_job text, p_after integer)
RETURNS TABLE (seq integer, name text, data text, chunk bytea)
LANGUAGE sql STABLE AS $$
    SELECT e.seq, e.name, e.data, c.data
      FROM pushjobs.job_events e
      LEFT JOIN LATERAL (
          SELECT c.data
            FROM json_to_record(CASE WHEN e.name = 'output'
                                     THEN e.data::json END)
                 AS r(node text, stream text, "offset" bigint, data text)
            JOIN pushjobs.job_output_chunk c
              ON c.job_id = e.job_id AND c.node_name = r.node
             AND c.stream = r.stream AND c.off = r."offset"
           WHERE r.node IS NOT NULL AND r.data IS NULL) c ON true
     WHERE e.job_id = p_job AND e.seq > p_after
$$;


-- An event's data as a feed sends it: with the chunk's bytes (base64, no
-- line breaks) as its last field "data" when it stands for a chunk.
CREATE OR REPLACE FUNCTION pushjobs.feed_data(p_data text, p_chunk bytea)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_chunk IS NULL THEN p_data
                ELSE left(p_data, -1) || ', "data": "'
                     || translate(encode(p_chunk, 'base64'), E'\n', '')
                     || '"}' END
$$;


-- A job feed's next events after p_after, at most p_limit of them, output
-- events with their bytes.
CREATE OR REPLACE FUNCTION pushjobs.feed_events(p_job text, p_after integer,
    p_limit integer)
RETURNS TABLE (seq integer, name text, data text)
LANGUAGE sql STABLE AS $$
    SELECT f.seq, f.name, pushjobs.feed_data(f.data, f.chunk)
      FROM pushjobs.job_feed(p_job, p_after) f
     ORDER BY f.seq
     LIMIT p_limit
$$;

COMMIT;
