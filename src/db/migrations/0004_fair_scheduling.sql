-- 0004: fair scheduling across channels (docs/architecture.md "Fair
-- scheduling"). Runs with search_path set to the service's schema.

-- The leader now reads due work channel by channel: a skip-scan finds the
-- channels with unfinished deliveries (one index descent each, however large
-- a channel's backlog), then each channel's oldest due deliveries are a range
-- of this index. It replaces the global keyset index of 0002, which nothing
-- reads any more (an extra index would only slow every status write).
DROP INDEX delivery_status_due;
CREATE INDEX delivery_status_channel_due ON delivery_status (channel_id, next_attempt_at, id)
    WHERE state IN ('PENDING', 'SENDING', 'RESENDING');

-- Auto-disable: failing_since is when the channel's current run of failed
-- attempts began (NULL after a successful attempt), written by the leader
-- when a run starts and ends; disabled_reason says why the leader disabled
-- the channel (NULL for an operator's `channel disable` and when enabled).
ALTER TABLE channel
    ADD COLUMN failing_since   timestamptz,
    ADD COLUMN disabled_reason text;

-- Per-channel scheduling state the leader publishes with its heartbeat, for
-- `status` and `channel list`: {"<channel id>": {"breaker": "open",
-- "in_flight": 3, "open_until": "..."}}, only channels with something to
-- show.
ALTER TABLE leader
    ADD COLUMN channels jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(channels) = 'object');
