-- 0012: event types for the customer portal (docs/api.md "Event types").
-- Runs with search_path set to the service's schema. Upgrading a database
-- that holds events adds one empty table and builds one index on event
-- (built while `event` takes no inserts: producers' enqueue_event calls
-- wait for it; about 3.5 s per million events on 2 cores, see
-- docs/operations.md).

-- A description per event type of a namespace, written by
-- `event-type describe` or `PATCH /v1/namespaces/{ns}/event-types/{type}`
-- and shown to customers. A type need not have been seen to be described.
CREATE TABLE event_type (
    namespace   text NOT NULL,
    type        text NOT NULL,
    description text NOT NULL CHECK (description <> ''),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, type)
);

-- The types seen in a namespace with their counts and last time seen
-- (`GET .../event-types`, `event types`), read from this index alone (an
-- index-only scan: no event row is fetched), and the event log filtered by
-- type, newest first, without reading the namespace's other types.
CREATE INDEX event_namespace_type_created ON event (namespace, type, created_at DESC, id DESC);
