-- 0010: ordered channels wait for every transaction that may still commit
-- an earlier event (docs/delivery-controls.md "Ordered channels"). Runs with
-- search_path set to the service's schema. Replaces enqueue_event only: no
-- table is touched, so upgrading a database holding data rewrites nothing
-- and takes no lock on a table.
--
-- enqueue_event as in 0008, except that the producer's transaction takes
-- its id (pg_current_xact_id) before the event is stamped with
-- clock_timestamp(). An event's transaction therefore has an id that was
-- assigned before the event's creation time; the leader hands out an
-- ordered channel's head only once every transaction whose id was assigned
-- before the head's creation time has ended (src/db/due.rs, the heads
-- query). Before, the id was assigned at the first INSERT, after the stamp,
-- so no id taken later could bound it.
CREATE OR REPLACE FUNCTION enqueue_event(
    p_namespace   text,
    p_type        text,
    p_payload     jsonb,
    p_annotations jsonb DEFAULT '{}'
) RETURNS SETOF uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    r       record;
    ev      uuid;
    ts      timestamptz;
    created integer := 0;
    n       integer;
    cap     integer;
    size    bigint;
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
    IF jsonb_typeof(p_payload) <> 'object' THEN
        RAISE EXCEPTION 'enqueue_event: payload must be a JSON object, not %', jsonb_typeof(p_payload)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_annotations IS NOT NULL AND jsonb_typeof(p_annotations) <> 'object' THEN
        RAISE EXCEPTION 'enqueue_event: annotations must be a JSON object, not %', jsonb_typeof(p_annotations)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The transaction's id is taken before the event's time is: whoever
    -- later reads this event as committed can then tell, from the ids of
    -- the transactions still running, that no transaction that may yet
    -- commit an event stamped before it has ended (the leader's order
    -- horizon, docs/delivery-controls.md "Ordered channels").
    PERFORM pg_current_xact_id();
    ts := clock_timestamp();
    SELECT max_payload_bytes INTO cap FROM settings;
    -- Empty annotations (the default) cost nothing, so the cap is the
    -- payload's own unless annotations are given.
    size := octet_length(p_payload::text)
        + CASE WHEN p_annotations IS NULL OR p_annotations = '{}'::jsonb THEN 0
               ELSE octet_length(p_annotations::text) END;
    IF size > coalesce(cap, 262144) THEN
        RAISE EXCEPTION 'enqueue_event: payload and annotations are % bytes, over the limit of % bytes (delivery.max_payload_bytes)',
            size, coalesce(cap, 262144)
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    FOR r IN
        SELECT id FROM rule
        WHERE namespace = p_namespace AND event_type = p_type
          AND NOT disabled AND deleted_at IS NULL
          AND (filter IS NULL OR coalesce(p_payload @@ filter, false))
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

-- As 0003 says: a CREATE OR REPLACE must repeat SECURITY DEFINER (above),
-- the fixed search_path and the revoked PUBLIC grant (grants to producer
-- roles are kept by CREATE OR REPLACE).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION enqueue_event(text, text, jsonb, jsonb) SET search_path = %I, pg_temp',
                   current_schema());
END
$$;
REVOKE EXECUTE ON FUNCTION enqueue_event(text, text, jsonb, jsonb) FROM PUBLIC;
