-- 0008: payload filters on rules (docs/delivery-controls.md). Runs with
-- search_path set to the service's schema. Upgrading a database that holds
-- rules adds a column that is NULL (no filter: every payload matches) and
-- replaces enqueue_event; no table is rewritten.

-- A PostgreSQL jsonpath predicate over the payload, e.g. `$.amount > 1000`.
-- A rule whose filter does not hold for an event's payload (false, or not
-- a boolean: a path that is no predicate, or a comparison with a missing
-- key) creates no event for it. The type checks the syntax: a filter that
-- does not parse is refused when the rule is created or updated, never at
-- enqueue time.
ALTER TABLE rule ADD COLUMN filter jsonpath;

-- enqueue_event as in 0003, plus the rule's filter, evaluated here, in the
-- producer's own transaction. `@@` never raises on the payload's shape (lax
-- mode): a missing key or a type mismatch is "does not match".
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
    ts      timestamptz := clock_timestamp();
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
