-- Deploy pushjobs:notify_only to pg
-- requires: active

-- Every NOTIFY goes through notify(): emit(), node_inputs_write() and
-- presence_update() called pg_notify() themselves.  The payloads are the
-- same strings as before.

BEGIN;

-- Appends an event to a job's feed, and to its org's feed when asked.  The
-- event data is a JSON object whose first key is "timestamp" (and "job" next
-- in the org feed), followed by p_fields.  The caller holds the job's lock.
CREATE OR REPLACE FUNCTION pushjobs.emit(p_job text, p_org text, p_name text,
    p_fields json, p_org_feed boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_seq   integer;
    v_ts    text := pushjobs.event_time(now());
BEGIN

    -- The next id of the job's feed.  The caller's job row lock
    -- serializes writers (the primary key would refuse a duplicate);
    -- reading the last seq through the primary key keeps a batch of
    -- thousands of transitions linear, where bumping a counter in the
    -- jobs row made each update slower than the last (one row version
    -- per event, all in one transaction).
    SELECT COALESCE(max(seq), 0) + 1 INTO v_seq
      FROM pushjobs.job_events
     WHERE job_id = p_job;

    INSERT INTO pushjobs.job_events (job_id, seq, name, data)
    VALUES (p_job, v_seq, p_name,
            pushjobs.event_data('"timestamp": "' || v_ts || '"', p_fields));

    IF p_org_feed THEN
        INSERT INTO pushjobs.org_events (org, job_id, name, data)
        VALUES (p_org, p_job, p_name,
                pushjobs.event_data('"timestamp": "' || v_ts || '", "job": "'
                                    || p_job || '"', p_fields));
    END IF;

    -- identical notifications of one transaction are delivered once
    PERFORM pushjobs.notify('event', p_org, p_job);
END
$$;


-- The node changes and events of one job from one node_inputs() batch,
-- written at once: one UPDATE, one INSERT, one notification.  Events are
-- appended in p_keys order.  The caller holds the job's lock.
CREATE OR REPLACE FUNCTION pushjobs.node_inputs_write(p_job text, p_org text,
    p_nodes text[], p_status pushjobs.node_status[], p_exit integer[],
    p_keys bigint[], p_names text[], p_data text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_seq  integer;
BEGIN
    IF cardinality(p_nodes) > 0 THEN
        UPDATE pushjobs.job_nodes n
           SET status = u.status,
               exit_status = COALESCE(u.exit_status, n.exit_status),
               updated_at = now()
          FROM unnest(p_nodes, p_status, p_exit) AS u(node, status,
                                                      exit_status)
         WHERE n.job_id = p_job AND n.node_name = u.node;
    END IF;

    IF cardinality(p_names) > 0 THEN
        SELECT COALESCE(max(seq), 0) INTO v_seq
          FROM pushjobs.job_events
         WHERE job_id = p_job;

        INSERT INTO pushjobs.job_events (job_id, seq, name, data)
        SELECT p_job, v_seq + row_number() OVER (ORDER BY e.k), e.name,
               e.data
          FROM unnest(p_keys, p_names, p_data) AS e(k, name, data);

        PERFORM pushjobs.notify('event', p_org, p_job);
    END IF;
END
$$;


-- Connect/disconnect changes of agent channels, batched by one worker
-- (p_owner): [{"org", "node", "session", "online"}] in the order they
-- happened.  A connect that replaces a channel held by another worker asks
-- that worker to close it.
CREATE OR REPLACE FUNCTION pushjobs.presence_update(p_owner text,
    p_changes jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r      record;
    v_old  pushjobs.presence;
BEGIN
    -- The owner row is owner_beat()'s alone: a worker declared dead must
    -- learn it from its next beat, and publish all its channels again,
    -- which it would not if a batch of its here brought the row back.
    FOR r IN
        SELECT e.v ->> 'org' AS org, e.v ->> 'node' AS node,
               (e.v ->> 'session')::bigint AS session,
               (e.v ->> 'online')::boolean AS online,
               (e.v ->> 'handover_ms')::integer AS handover_ms
          FROM jsonb_array_elements(p_changes) WITH ORDINALITY AS e(v, ord)
         ORDER BY e.v ->> 'org', e.v ->> 'node', e.ord
    LOOP
        IF r.online THEN
            SELECT * INTO v_old FROM pushjobs.presence
             WHERE org = r.org AND node_name = r.node
               FOR UPDATE;

            IF FOUND AND v_old.online AND v_old.owner <> p_owner THEN
                PERFORM pushjobs.notify('kick', v_old.owner,
                                        v_old.session || ' ' || r.org || ' '
                                        || r.node);
            END IF;

            INSERT INTO pushjobs.presence (org, node_name, owner, session,
                                           online)
            VALUES (r.org, r.node, p_owner, r.session, true)
            ON CONFLICT (org, node_name) DO UPDATE
               SET owner = excluded.owner, session = excluded.session,
                   online = true, changed_at = now(), handover_until = NULL;

        ELSE
            -- "handover_ms": closed by a worker leaving on a reload, its
            -- agent reconnecting elsewhere (see available_nodes())
            UPDATE pushjobs.presence
               SET online = false, changed_at = now(),
                   handover_until = CASE WHEN r.handover_ms > 0
                       THEN now() + LEAST(r.handover_ms, 60000)
                                    * interval '1 millisecond' END
             WHERE org = r.org AND node_name = r.node
               AND owner = p_owner AND session = r.session AND online;
        END IF;
    END LOOP;
END
$$;

COMMIT;
