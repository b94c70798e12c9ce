-- 0009: per-channel delivery controls, rate limits and ordered channels
-- (docs/delivery-controls.md). Runs with search_path set to the service's
-- schema. Upgrading a database that holds channels and deliveries adds
-- columns that are NULL or false (no limit, unordered: as before), one
-- small table, and one partial index over unfinished deliveries; no table
-- is rewritten.

-- At most rate_limit request starts in any window of rate_period_secs
-- seconds (1 or 60); both NULL: no limit.
ALTER TABLE channel
    ADD COLUMN rate_limit integer,
    ADD COLUMN rate_period_secs integer,
    ADD COLUMN ordered boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT channel_rate_limit_valid CHECK (
        (rate_limit IS NULL AND rate_period_secs IS NULL)
        OR (rate_limit BETWEEN 1 AND 10000 AND rate_period_secs IN (1, 60)));

-- The leader's window of recent request starts of a rate-limited channel,
-- so that a new leader (failover, restart, a shard moving) knows what the
-- old one started: for each request that still counts, until when it
-- counts, or NULL for one that was in flight (its start is unknown; a new
-- leader counts it for a whole window from its takeover). Written by the
-- leader on its lock connection before it hands out requests of the
-- channel, never for a channel without a limit.
CREATE TABLE channel_rate_window (
    channel_id   uuid PRIMARY KEY REFERENCES channel (id) ON DELETE CASCADE,
    counts_until timestamptz[] NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- An ordered channel's head: its oldest unfinished delivery in enqueue
-- order (the event's creation time, then its id), one index descent.
CREATE INDEX delivery_status_channel_order
    ON delivery_status (channel_id, event_created_at, event_id)
    WHERE state IN ('PENDING', 'SENDING', 'RESENDING');
