-- Deploy pushjobs:ingest_hot to pg
-- requires: batch_index

-- Node transitions ingested faster (issue 15; bench/README, "HOT updates
-- and no foreign key from events").  A batch of agent messages updates
-- thousands of job_nodes rows and inserts as many job_events rows:
--
-- * No update of job_nodes was HOT: the partial index job_nodes_active had
--   status in its predicate, so each status change wrote new entries in
--   both indexes.  The index is dropped and the table's pages are filled
--   to 60 % (new pages: a job's rows are written when it is created), so
--   the row's next versions fit in its page.  The two queries that found a
--   node's active jobs through it (agent_hello(), sweep()) go from the
--   voting and running jobs (jobs_active) to the node's row by the primary
--   key.
-- * job_events had a foreign key to jobs: a check per event row, 40 % of
--   the INSERT.  The writer holds the job's row lock; purge() deletes a
--   job's events with it.
--
-- In SQL alone (bench/sql-ingest 100000) a transition cost 30.5-33.8 us
-- instead of 43.0-45.2.

BEGIN;

-- What this change locks first, all at once, each try under 100 ms (see
-- rollout and migrations/README, "Deploying under load").
DO $$
DECLARE
    v_timeout text := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout', '100ms', true);

    FOR i IN 1 .. 500 LOOP
        BEGIN
            LOCK TABLE pushjobs.jobs IN SHARE ROW EXCLUSIVE MODE;
            LOCK TABLE pushjobs.job_nodes, pushjobs.job_events
                IN ACCESS EXCLUSIVE MODE;
            PERFORM set_config('lock_timeout', v_timeout, true);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM pg_sleep(0.02 * random());
        END;
    END LOOP;

    RAISE EXCEPTION 'pushjobs: % stayed busy for a minute; try again',
                    'pushjobs.jobs, pushjobs.job_nodes, pushjobs.job_events';
END
$$;

DROP INDEX pushjobs.job_nodes_active;

ALTER TABLE pushjobs.job_nodes SET (fillfactor = 60);

ALTER TABLE pushjobs.job_events DROP CONSTRAINT job_events_job_id_fkey;

CREATE OR REPLACE FUNCTION pushjobs.purge(p_retention_s integer)
RETURNS integer
LANGUAGE sql AS $$
    WITH old AS (
        SELECT id FROM pushjobs.jobs
         WHERE p_retention_s > 0
           AND NOT pushjobs.job_active(status)
           AND updated_at < now() - p_retention_s * interval '1 second'
         ORDER BY updated_at
         LIMIT 1000
           FOR UPDATE SKIP LOCKED
    ), nodes AS (
        -- their output goes with them (ON DELETE CASCADE)
        DELETE FROM pushjobs.job_nodes n USING old WHERE n.job_id = old.id
    ), events AS (
        DELETE FROM pushjobs.job_events e USING old WHERE e.job_id = old.id
    ), gone AS (
        -- their rollout rows go with them (ON DELETE CASCADE)
        DELETE FROM pushjobs.jobs j USING old WHERE j.id = old.id
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone
$$;


CREATE OR REPLACE FUNCTION pushjobs.agent_hello(p_org text, p_node text,
    p_jobs jsonb)
RETURNS TABLE (job_id text, action text, message text)
LANGUAGE plpgsql AS $$
DECLARE
    v_id     text;
    v_job    pushjobs.jobs;
    v_node   pushjobs.node_status;
    v_has    text;
    v_input  text;
    v_abort  boolean;
    v_force  boolean;
    v_free   boolean;
BEGIN
    -- the org's jobs in voting or running (jobs_active, few) and the
    -- node's row in each (primary key)
    FOR v_id IN
        SELECT n.job_id
          FROM pushjobs.jobs j
          JOIN pushjobs.job_nodes n
            ON n.job_id = j.id AND n.node_name = p_node
         WHERE j.org = p_org AND j.status IN ('voting', 'running')
           AND pushjobs.node_active(n.status)
         ORDER BY n.job_id
    LOOP
        SELECT * INTO v_job FROM pushjobs.jobs
         WHERE id = v_id AND status IN ('voting', 'running')
           FOR UPDATE;

        CONTINUE WHEN NOT FOUND;

        -- the run timer fired (see time_out()); the loop below then tells
        -- the agent to abort the job if it still holds it
        IF v_job.status = 'running' AND v_job.run_deadline <= now()
           AND pushjobs.time_out(v_id)
        THEN
            CONTINUE;
        END IF;

        SELECT n.status, n.abort_requested, n.abort_force,
               pushjobs.concurrency_limit(v_id) IS NULL
               OR EXISTS (SELECT 1 FROM pushjobs.job_rollout_released l
                           WHERE l.job_id = v_id AND l.node_name = p_node)
          INTO v_node, v_abort, v_force, v_free
          FROM pushjobs.job_nodes n
         WHERE n.job_id = v_id AND n.node_name = p_node;

        SELECT e ->> 'state' INTO v_has
          FROM jsonb_array_elements(p_jobs) e
         WHERE e ->> 'job_id' = v_id
         LIMIT 1;

        v_input := NULL;
        job_id := v_id;
        action := NULL;
        message := NULL;

        IF v_abort AND v_has IN ('committed', 'running') THEN
            /* an abort (abort_job()) this agent has not answered yet */
            action := 'abort';
            message := CASE WHEN v_force THEN 'force' END;

        ELSIF v_job.status = 'voting' THEN
            IF v_node = 'new' AND v_has IS NULL THEN
                action := 'commit';
                message := pushjobs.commit_message(v_job);
            ELSIF v_node = 'new' AND v_has = 'committed' THEN
                v_input := 'ack_commit';
            ELSIF v_has IS NULL OR v_has <> 'committed' THEN
                v_input := 'down';
            END IF;

        ELSIF v_node = 'ready' THEN
            IF v_has = 'committed' THEN
                /* a node a rollout has not reached yet waits */
                IF v_free THEN
                    action := 'run';
                END IF;
            ELSIF v_has = 'running' THEN
                v_input := 'ack_run';
            ELSIF v_has IS NULL THEN
                v_input := 'down';
            END IF;

        ELSIF v_has IS NULL OR v_has = 'committed' THEN
            v_input := 'down';
        END IF;

        IF v_input IS NOT NULL THEN
            IF pushjobs.node_transition(v_job, p_node, v_input, NULL) THEN
                action := 'abort';
            END IF;
            PERFORM pushjobs.settle(v_id);
        END IF;

        IF action IS NOT NULL THEN
            RETURN NEXT;
        END IF;
    END LOOP;

    FOR v_id, v_has IN
        SELECT e ->> 'job_id', e ->> 'state'
          FROM jsonb_array_elements(p_jobs) e
    LOOP
        CONTINUE WHEN v_has = 'finished';
        CONTINUE WHEN EXISTS (
            SELECT 1
              FROM pushjobs.job_nodes n
              JOIN pushjobs.jobs j ON j.id = n.job_id
             WHERE n.job_id = v_id AND n.org = p_org
               AND n.node_name = p_node
               AND pushjobs.node_active(n.status)
               AND j.status IN ('voting', 'running'));

        job_id := v_id;
        action := 'abort';
        message := NULL;
        RETURN NEXT;
    END LOOP;
END
$$;


CREATE OR REPLACE FUNCTION pushjobs.sweep(p_lost_ms integer,
    p_owner_timeout_ms integer, p_org_feed_retention_s integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_count  integer := 0;
    v_job    pushjobs.jobs;
    v_node   text;
    v_lost_orgs   text[];
    v_lost_nodes  text[];
BEGIN
    /*
     * Workers that stopped beating: their channels count as offline at
     * once (online_nodes() checks the owner), and are marked so here 20,000
     * a sweep, so that a front end of 100k channels is not one UPDATE that
     * every presence batch would wait for.  The owner row goes when none is
     * left; a worker that beats again meanwhile is told by owner_beat().
     * The owner row is locked (FOR SHARE) against a concurrent revival.
     */
    UPDATE pushjobs.owners SET dead = true
     WHERE NOT dead
       AND seen_at < now() - p_owner_timeout_ms * interval '1 millisecond';

    UPDATE pushjobs.presence p
       SET online = false, changed_at = now()
     WHERE (p.org, p.node_name) IN (
               SELECT q.org, q.node_name
                 FROM pushjobs.presence q
                 JOIN pushjobs.owners o ON o.id = q.owner
                WHERE o.dead AND q.online
                LIMIT 20000
                  FOR UPDATE OF q SKIP LOCKED
                  FOR SHARE OF o);

    DELETE FROM pushjobs.owners o
     WHERE o.dead
       AND NOT EXISTS (SELECT 1 FROM pushjobs.presence p
                        WHERE p.owner = o.id AND p.online);

    -- the org feeds keep their events for pushjobs_org_feed_retention
    -- (2.x: org_feed_expiration, 60 s; the module's feeds replay as much)
    DELETE FROM pushjobs.org_events
     WHERE created_at < now() - p_org_feed_retention_s * interval '1 second';

    FOR v_job IN
        SELECT * FROM pushjobs.jobs
         WHERE status = 'voting' AND voting_deadline <= now()
         ORDER BY id
           FOR UPDATE SKIP LOCKED
    LOOP
        FOR v_node IN
            SELECT n.node_name FROM pushjobs.job_nodes n
             WHERE n.job_id = v_job.id AND n.status = 'new'
             ORDER BY n.node_name
        LOOP
            PERFORM pushjobs.node_transition(v_job, v_node, 'voting_timeout',
                                             NULL);
        END LOOP;

        -- the silent nodes are told to abort now (rehab), also when the
        -- job goes on running without them; settle() says so itself when
        -- the job ends
        IF pushjobs.settle(v_job.id) IN ('voting', 'running') THEN
            PERFORM pushjobs.notify('stop', v_job.org, v_job.id);
        END IF;
        v_count := v_count + 1;
    END LOOP;

    FOR v_job IN
        SELECT * FROM pushjobs.jobs
         WHERE status = 'running' AND run_deadline <= now()
         ORDER BY id
           FOR UPDATE SKIP LOCKED
    LOOP
        IF pushjobs.time_out(v_job.id) THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;

    /*
     * Nodes whose channel has been gone for too long, found from the
     * channels that went away since the oldest active job began (a range
     * of presence_offline, small), not by reading every node of every
     * active job at every sweep.  A node in a job always has a presence
     * row: create_job() makes only online nodes "new".  The margin covers
     * a presence change committed after a job that began before it.
     */
    SELECT array_agg(p.org), array_agg(p.node_name)
      INTO v_lost_orgs, v_lost_nodes
      FROM pushjobs.presence p
     WHERE NOT p.online
       AND p.changed_at > (SELECT min(created_at) - interval '5 minutes'
                             FROM pushjobs.jobs
                            WHERE pushjobs.job_active(status))
       AND p.changed_at <= now() - p_lost_ms * interval '1 millisecond';

    FOR v_job IN
        SELECT j.* FROM pushjobs.jobs j
         WHERE j.status IN ('voting', 'running')
           AND EXISTS (SELECT 1
                         FROM unnest(v_lost_orgs, v_lost_nodes) AS l(org,
                                                                    node)
                         JOIN pushjobs.job_nodes n
                           ON n.job_id = j.id AND n.node_name = l.node
                        WHERE l.org = j.org
                          AND pushjobs.node_active(n.status))
         ORDER BY j.id
           FOR UPDATE OF j SKIP LOCKED
    LOOP
        FOR v_node IN
            SELECT n.node_name
              FROM unnest(v_lost_orgs, v_lost_nodes) AS l(org, node)
              JOIN pushjobs.job_nodes n
                ON n.job_id = v_job.id AND n.node_name = l.node
             WHERE n.org = l.org
               AND pushjobs.node_active(n.status)
             ORDER BY n.node_name
        LOOP
            PERFORM pushjobs.node_transition(v_job, v_node, 'down', NULL);
        END LOOP;

        PERFORM pushjobs.settle(v_job.id);
        v_count := v_count + 1;
    END LOOP;

    RETURN v_count;
END
$$;


COMMIT;
