-- 0002: the leader loop (DESIGN.md "The leader loop").
-- Runs with search_path set to the service's schema, so names are unqualified.

-- The notification channel that wakes the leader, derived from the schema so
-- that two deployments in one database wake only their own leader. A channel
-- name is at most 63 bytes; a schema name too long for the readable form gets
-- a hashed one. The daemon LISTENs on what this function returns.
CREATE FUNCTION wake_channel() RETURNS text
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT CASE WHEN octet_length(current_schema()) <= 58
                THEN current_schema() || '.wake'
                ELSE 'nr.wake.' || md5(current_schema()) END
$$;

-- enqueue_event as in 0001, plus a wake-up for the leader. PostgreSQL folds
-- identical notifications of one transaction into one and delivers it on
-- commit, so a caller enqueuing many events in one transaction sends one, and
-- a rolled-back caller sends none. Correctness never depends on it: a lost
-- notification costs at most one reconciler.interval.
CREATE OR REPLACE FUNCTION enqueue_event(
    p_namespace   text,
    p_type        text,
    p_payload     jsonb,
    p_annotations jsonb DEFAULT '{}'
) RETURNS SETOF uuid
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    r       record;
    ev      uuid;
    ts      timestamptz := clock_timestamp();
    created integer := 0;
    n       integer;
BEGIN
    IF p_namespace IS NULL OR p_namespace = '' THEN
        RAISE EXCEPTION 'enqueue_event: namespace must not be empty';
    END IF;
    IF p_type IS NULL OR p_type = '' THEN
        RAISE EXCEPTION 'enqueue_event: type must not be empty';
    END IF;
    IF p_payload IS NULL THEN
        RAISE EXCEPTION 'enqueue_event: payload must not be null';
    END IF;
    FOR r IN
        SELECT id FROM rule
        WHERE namespace = p_namespace AND event_type = p_type
          AND NOT disabled AND deleted_at IS NULL
        ORDER BY created_at, id
    LOOP
        INSERT INTO event (namespace, type, rule_id, payload, annotations, created_at)
        VALUES (p_namespace, p_type, r.id, p_payload, coalesce(p_annotations, '{}'), ts)
        RETURNING id INTO ev;
        INSERT INTO delivery_status
            (namespace, event_id, channel_id, event_created_at, state,
             next_attempt_at, clock_started_at, created_at, updated_at)
        SELECT p_namespace, ev, c.id, ts, 'PENDING', ts, ts, ts, ts
        FROM rule_channel rc JOIN channel c ON c.id = rc.channel_id
        WHERE rc.rule_id = r.id AND NOT c.disabled AND c.deleted_at IS NULL;
        GET DIAGNOSTICS n = ROW_COUNT;
        created := created + n;
        RETURN NEXT ev;
    END LOOP;
    IF created > 0 THEN
        PERFORM pg_notify(wake_channel(), '');
    END IF;
END
$$;

-- The unit the leader hands out is one delivery (event x channel), so the due
-- query's keyset is (event_created_at, event_id, channel_id): unique, and
-- stable while rows change state. Same name, same partial predicate.
DROP INDEX delivery_status_due;
CREATE INDEX delivery_status_due ON delivery_status (event_created_at, event_id, channel_id)
    WHERE state IN ('PENDING', 'SENDING', 'RESENDING');

-- Who leads under which lock key, for `status` (is a leader active, how
-- many deliveries it has in flight) and for the next leader: a row left
-- behind means the last leader did not release cleanly (its connection
-- died), so the next one waits out a short grace before handing out.
CREATE TABLE leader (
    lock_key    bigint PRIMARY KEY,
    backend_pid integer NOT NULL,
    instance    text NOT NULL,
    since       timestamptz NOT NULL,
    in_flight   integer NOT NULL CHECK (in_flight >= 0),
    updated_at  timestamptz NOT NULL
);

-- When the next unfinished delivery falls due: the leader's retry timer reads
-- it after every sweep, so it must be an index lookup, not a scan of every
-- unfinished row.
CREATE INDEX delivery_status_next ON delivery_status (next_attempt_at)
    WHERE state IN ('PENDING', 'SENDING', 'RESENDING');
