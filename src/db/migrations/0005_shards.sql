-- 0005: shards (DESIGN.md "Shards"). Runs with search_path set to the
-- service's schema, so names are unqualified. (Issue 12 takes 0004.)

-- The shard count every instance must be configured with. `migrate` writes
-- it from reconciler.shards, and refuses to change it while an instance is
-- alive; `run` and `once` refuse to start with another value.
ALTER TABLE settings
    ADD COLUMN shards integer NOT NULL DEFAULT 1 CHECK (shards BETWEEN 1 AND 1024);

-- The shard of a channel among `shards`: the channel id's first 4 bytes as
-- an unsigned big-endian integer, modulo `shards` (the uuid's text form
-- starts with those bytes in hex). The binary computes the same
-- (shard::shard_of). A plain SQL expression, IMMUTABLE and without SET
-- clauses, so the planner inlines it into the due query.
CREATE FUNCTION channel_shard(channel uuid, shards integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
AS $$ SELECT (('x' || left(channel::text, 8))::bit(32)::bigint % shards)::integer $$;

-- The instances running, one row each, written on the instance's lock
-- connection when it connects. An instance is alive while that connection
-- is: a row whose backend (pid and start time) is no longer in
-- pg_stat_activity is a dead instance's, ignored and removed by the next
-- instance that looks. The balance of shards counts the live rows.
CREATE TABLE instance (
    name          text PRIMARY KEY,
    backend_pid   integer NOT NULL,
    backend_start timestamptz NOT NULL,
    shards        integer NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now()
);
