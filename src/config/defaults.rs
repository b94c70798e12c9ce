//! The defaults and bounds of the configuration: the automatic sizes
//! (`0` = automatic), the limits each key is checked against, the lock key
//! derived from the schema.

use super::*;

/// Upper bound for `reconciler.workers`: a worker is a thread that needs a
/// database connection only to record an outcome, so thousands are
/// affordable (docs/benchmarks.md "Concurrency"); beyond this a value is
/// almost certainly a typo.
pub const MAX_WORKERS: i64 = 4096;

/// Upper bound for `database.pool_size`: what earlier versions allowed
/// (1,024 workers + 2), so that no existing file breaks. Far more than is
/// useful: PostgreSQL's default `max_connections` is 100.
pub const MAX_POOL_SIZE: i64 = 1026;

/// The automatic `reconciler.workers` for `cpus` CPUs: 8 per CPU, at least
/// 16. Workers mostly wait on the network, so several per CPU keep the
/// machine busy; 16 leave room for a few slow endpoints on a small machine.
pub fn auto_workers(cpus: usize) -> usize {
    (8 * cpus).clamp(16, MAX_WORKERS as usize)
}

/// The automatic `delivery.max_in_flight_per_channel` for `workers`: a
/// quarter of them, at least 1, so that one hanging endpoint can hold at
/// most a quarter of the workers.
pub fn auto_channel_cap(workers: usize) -> usize {
    (workers / 4).max(1)
}

/// The workers the automatic cap keeps free for other channels' new work
/// when a channel borrows beyond its share (the work-conserving cap, see
/// `Channels::borrow`): one per 64 workers, at least 1, so that one
/// channel alone may use at least 98% of 64 workers and 15 of 16.
pub fn auto_reserve(workers: usize) -> usize {
    (workers / 64).max(1)
}

/// The longest a breaker's cool-down doubles to (unless
/// `delivery.breaker_cooldown` itself is longer).
pub const MAX_BREAKER_COOLDOWN: Duration = Duration::from_secs(600);

/// The longest `database.keepalives_idle` / `keepalives_interval`, in
/// seconds (Linux refuses more).
pub const MAX_TCP_SECONDS: u64 = 32767;

/// The shortest `reconciler.takeover_after`: three of the leader's
/// heartbeats (one a second, `reconcile::lease::HEARTBEAT_EVERY`), so that a
/// healthy leader is never taken for a silent one.
pub const MIN_TAKEOVER_AFTER: Duration = Duration::from_secs(3);

/// The longest `reconciler.takeover_after`: a stale leader left longer than
/// this would stop deliveries for longer than anyone wants.
pub const MAX_TAKEOVER_AFTER: Duration = Duration::from_secs(3600);

/// The automatic `database.pool_size` for `cpus` CPUs: 4 per CPU, at least
/// 8. Workers hold a connection only while they record an outcome, so a
/// few per CPU keep up with hundreds of workers.
pub fn auto_pool_size(cpus: usize) -> u32 {
    u32::try_from(cpus.saturating_mul(4))
        .unwrap_or(u32::MAX)
        .max(8)
}

/// Default of `delivery.max_payload_bytes`: 256 KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: i64 = 256 * 1024;
/// Smallest `delivery.max_payload_bytes` (`{}` is 2 bytes).
pub const MIN_PAYLOAD_BYTES: i64 = 2;
/// Largest `delivery.max_payload_bytes`: just under PostgreSQL's jsonb limit
/// of 256 MiB.
pub const MAX_PAYLOAD_BYTES: i64 = 256 * 1024 * 1024 - 1;

/// The lock key text when `reconciler.lock_key` is not written: derived from
/// the schema, so that deployments on different schemas of one database
/// never share a leader lock. For the default schema `notification` it is
/// `notification.event_handler.reconcile_lock`, the key of earlier versions,
/// so existing deployments keep their lock.
pub fn default_lock_key(schema: &str) -> String {
    format!("{schema}.event_handler.reconcile_lock")
}

/// The largest `reconciler.shards` accepted.
pub const MAX_SHARDS: u32 = 1024;

/// Checks a configured shard count: 1..=[`MAX_SHARDS`].
pub fn validate_shards(n: i64) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(k) if (1..=MAX_SHARDS).contains(&k) => Ok(k),
        _ => Err(format!("must be between 1 (one leader) and {MAX_SHARDS}")),
    }
}
