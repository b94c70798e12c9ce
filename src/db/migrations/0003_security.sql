-- 0003: safe to expose to customers (docs/security.md).
-- Runs with search_path set to the service's schema, so names are unqualified.

-- Secret rotation: the secret before the last `channel rotate-secret` and
-- the end of its overlap. While now() < previous_secret_until, every request
-- is signed with both secrets. Both or neither are set.
ALTER TABLE channel
    ADD COLUMN previous_secret       text,
    ADD COLUMN previous_secret_until timestamptz,
    ADD CONSTRAINT channel_previous_secret_pair
        CHECK ((previous_secret IS NULL) = (previous_secret_until IS NULL));

-- Settings the schema itself enforces, one row. `migrate` writes them from
-- the config after the migrations (delivery.max_payload_bytes).
CREATE TABLE settings (
    id                boolean PRIMARY KEY DEFAULT true CHECK (id),
    max_payload_bytes integer NOT NULL DEFAULT 262144 CHECK (max_payload_bytes > 0)
);
INSERT INTO settings DEFAULT VALUES;

-- enqueue_event as in 0002, plus the producer checks: the payload must be a
-- JSON object (it is sent as the webhook's "data"), the annotations too when
-- given, and the two together at most settings.max_payload_bytes long as
-- text. Both raise, so the caller's
-- transaction rolls back with nothing half-written. SQLSTATE 22023
-- (invalid_parameter_value) for the kind, 54000 (program_limit_exceeded)
-- for the size.
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

-- Least privilege: a producer role needs only EXECUTE on this function (and
-- USAGE on the schema), no table privileges: it is SECURITY DEFINER, so it
-- runs with its owner's rights, with a search_path fixed to the schema and
-- pg_temp last (a caller's temporary objects cannot shadow ours). Nobody but
-- the owner may execute it by default; docs/operations.md lists the GRANTs.
-- A later CREATE OR REPLACE must repeat SECURITY DEFINER and these two.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION enqueue_event(text, text, jsonb, jsonb) SET search_path = %I, pg_temp',
                   current_schema());
END
$$;
REVOKE EXECUTE ON FUNCTION enqueue_event(text, text, jsonb, jsonb) FROM PUBLIC;

-- Upgrading must not lock out producers that called enqueue_event before
-- this migration: then it ran with the caller's rights, so every such caller
-- (but the owner, who keeps EXECUTE) held INSERT on event. Those roles keep
-- EXECUTE; new producer roles are granted it as docs/operations.md says.
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT DISTINCT grantee FROM information_schema.role_table_grants
        WHERE table_schema = current_schema() AND table_name = 'event'
          AND privilege_type = 'INSERT' AND grantee <> 'PUBLIC'
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION enqueue_event(text, text, jsonb, jsonb) TO %I',
                       g.grantee);
    END LOOP;
END
$$;
