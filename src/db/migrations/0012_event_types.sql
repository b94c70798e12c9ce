-- 0012: event types for the customer portal (docs/api.md "Event types").
-- Runs with search_path set to the service's schema. Upgrading a database
-- that holds events adds one empty table and touches no existing row.

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
