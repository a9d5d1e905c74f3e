-- Deploy pushjobs:feed_bytes to pg
-- requires: principals

-- A job feed fetches its events in batches bounded by bytes as well as by
-- count: live output events carry up to 22 KB each, and a thousand of them
-- were more than a reader's queue may hold, so a reader of a streaming job
-- was closed as too slow.

BEGIN;

-- A job feed's next events after p_after, at most p_limit of them and about
-- p_bytes of data: the rows up to the first one that reaches p_bytes (the
-- first row always), so a reader of a job with live output gets batches
-- its queue (pushjobs_max_queued_output) can hold, however large the
-- events; an output event counts its chunk's bytes as base64.  The loop
-- stops reading there: a running sum over the LIMIT's rows read (and
-- joined to their chunks) all p_limit events to return the few of one
-- batch, 88 ms a call at 10 MB/s, and the feed fell 18 s behind.
-- An output event's bytes come beside it (chunk; NULL for the other
-- events) and the front end adds them to the data, base64: PostgreSQL's
-- encode() and translate() cost 20 ms per MB, in the one backend that
-- serves the feed, where nginx's base64 costs a fraction of that.
-- feed_events(text, integer, integer), without the bound, stays for the
-- front ends of 2.0.0 during an upgrade.
CREATE OR REPLACE FUNCTION pushjobs.feed_events(p_job text, p_after integer,
    p_limit integer, p_bytes integer)
RETURNS TABLE (seq integer, name text, data text, chunk bytea)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_bytes  bigint := 0;
BEGIN
    FOR seq, name, data, chunk IN
        SELECT j.seq, j.name, j.data, j.chunk
          FROM pushjobs.job_feed(p_job, p_after) j
         ORDER BY j.seq
         LIMIT p_limit
    LOOP
        RETURN NEXT;

        v_bytes := v_bytes + octet_length(data)
                   + COALESCE(octet_length(chunk) / 3 * 4 + 16, 0);

        EXIT WHEN v_bytes >= p_bytes;
    END LOOP;
END
$$;

COMMIT;
