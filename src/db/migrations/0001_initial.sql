-- 0001: the data model of DESIGN.md.
-- Runs with search_path set to the service's schema, so names are unqualified.

CREATE TABLE channel (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    namespace      text NOT NULL CHECK (namespace <> ''),
    name           text NOT NULL CHECK (name <> ''),
    type           text NOT NULL DEFAULT 'webhook' CHECK (type IN ('webhook')),
    url            text NOT NULL,
    headers        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    signing_secret text NOT NULL,
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz
);
CREATE INDEX channel_namespace ON channel (namespace, created_at);

CREATE TABLE rule (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    namespace   text NOT NULL CHECK (namespace <> ''),
    name        text NOT NULL CHECK (name <> ''),
    event_type  text NOT NULL CHECK (event_type <> ''),
    disabled    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX rule_match ON rule (namespace, event_type) WHERE NOT disabled AND deleted_at IS NULL;

CREATE TABLE rule_channel (
    rule_id    uuid NOT NULL REFERENCES rule (id) ON DELETE CASCADE,
    channel_id uuid NOT NULL REFERENCES channel (id),
    PRIMARY KEY (rule_id, channel_id)
);
CREATE INDEX rule_channel_channel ON rule_channel (channel_id);

CREATE TABLE event (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    namespace   text NOT NULL CHECK (namespace <> ''),
    type        text NOT NULL CHECK (type <> ''),
    rule_id     uuid REFERENCES rule (id),
    payload     jsonb NOT NULL,
    annotations jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX event_created ON event (created_at, id);

CREATE TABLE delivery_status (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    namespace        text NOT NULL,
    event_id         uuid NOT NULL REFERENCES event (id) ON DELETE CASCADE,
    channel_id       uuid NOT NULL REFERENCES channel (id),
    -- Copy of event.created_at: the keyset of the due query, served by the
    -- partial index below without touching the event table.
    event_created_at timestamptz NOT NULL,
    state            text NOT NULL
                     CHECK (state IN ('PENDING', 'SENDING', 'RESENDING', 'SUCCESS', 'FAILED')),
    reason           text NOT NULL DEFAULT '',
    next_attempt_at  timestamptz,
    attempts         jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(attempts) = 'array'),
    attempt_count    integer NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    -- Attempts since the clock (re)started: drives the retry schedule.
    round_attempts   integer NOT NULL DEFAULT 0 CHECK (round_attempts >= 0),
    -- Creation, or the last operator resend: timeouts count from here.
    clock_started_at timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Optimistic concurrency: every write checks and bumps it.
    version          bigint NOT NULL DEFAULT 1,
    UNIQUE (event_id, channel_id)
);
-- The due query: unfinished statuses in keyset order. Finished rows are not
-- in the index at all, so an idle pass over millions of delivered events
-- reads an empty index.
CREATE INDEX delivery_status_due ON delivery_status (event_created_at, event_id)
    WHERE state IN ('PENDING', 'SENDING', 'RESENDING');
CREATE INDEX delivery_status_channel ON delivery_status (channel_id);

-- The producer contract: called inside the application's own transaction, it
-- creates one event per active rule of that type in that namespace and one
-- PENDING delivery status per active channel of the rule, and returns the new
-- event ids. Nothing is created when the caller rolls back.
CREATE FUNCTION enqueue_event(
    p_namespace   text,
    p_type        text,
    p_payload     jsonb,
    p_annotations jsonb DEFAULT '{}'
) RETURNS SETOF uuid
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    r  record;
    ev uuid;
    ts timestamptz := clock_timestamp();
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
        RETURN NEXT ev;
    END LOOP;
END
$$;
