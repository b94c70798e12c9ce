//! The `leader` table: who leads under which lock key, since when, and how
//! many deliveries it has in flight (what `status` shows). Written only by
//! the leader, on its lock connection: a row when it starts leading, a
//! heartbeat at most once a second while the in-flight count changes, and
//! the row's removal when it stops leading cleanly. A row still there when
//! the next leader starts tells it the last one did not stop cleanly.

use chrono::{DateTime, Utc};
use postgres::GenericClient;

use super::DbError;

/// A leader as recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaderRow {
    /// Backend pid of its lock connection.
    pub backend_pid: i32,
    /// Its application name (role, host, process id).
    pub instance: String,
    /// When it started leading.
    pub since: DateTime<Utc>,
    /// Deliveries it had in flight at its last heartbeat.
    pub in_flight: i32,
    /// Its last heartbeat.
    pub updated_at: DateTime<Utc>,
    /// Per channel with something to show, as of the last heartbeat: its
    /// breaker and deliveries in flight.
    pub channels: serde_json::Value,
}

/// Records this connection as the leader under `key`. Returns true when a
/// previous leader's row was still there (it did not stop cleanly).
pub fn claim(client: &mut impl GenericClient, key: i64, instance: &str) -> Result<bool, DbError> {
    let previous = client
        .query_opt("SELECT 1 FROM leader WHERE lock_key = $1", &[&key])
        .map_err(DbError::query("reading the leader record"))?;
    client
        .execute(
            "INSERT INTO leader (lock_key, backend_pid, instance, since, in_flight, updated_at)
             VALUES ($1, pg_backend_pid(), $2, now(), 0, now())
             ON CONFLICT (lock_key) DO UPDATE SET backend_pid = excluded.backend_pid,
                 instance = excluded.instance, since = now(), in_flight = 0, channels = '{}',
                 updated_at = now()",
            &[&key, &instance],
        )
        .map_err(DbError::query("recording the leader"))?;
    Ok(previous.is_some())
}

/// Updates the in-flight count and the per-channel state (breakers,
/// in flight; see migration 0004) of this connection's leader row.
pub fn heartbeat(
    client: &mut impl GenericClient,
    key: i64,
    in_flight: usize,
    channels: &serde_json::Value,
) -> Result<(), DbError> {
    let n = i32::try_from(in_flight).unwrap_or(i32::MAX);
    client
        .execute(
            "UPDATE leader SET in_flight = $2, channels = $3, updated_at = now()
             WHERE lock_key = $1 AND backend_pid = pg_backend_pid()",
            &[&key, &n, channels],
        )
        .map_err(DbError::query("updating the leader record"))?;
    Ok(())
}

/// Removes this connection's leader row (a clean stop).
pub fn release(client: &mut impl GenericClient, key: i64) -> Result<(), DbError> {
    client
        .execute(
            "DELETE FROM leader WHERE lock_key = $1 AND backend_pid = pg_backend_pid()",
            &[&key],
        )
        .map_err(DbError::query("removing the leader record"))?;
    Ok(())
}

/// The leader row under `key`, if any (it may be a dead leader's: compare
/// `backend_pid` with the lock holder).
pub fn get(client: &mut impl GenericClient, key: i64) -> Result<Option<LeaderRow>, DbError> {
    let row = client
        .query_opt(
            "SELECT backend_pid, instance, since, in_flight, updated_at, channels
             FROM leader WHERE lock_key = $1",
            &[&key],
        )
        .map_err(DbError::query("reading the leader record"))?;
    Ok(row.map(|r| LeaderRow {
        backend_pid: r.get(0),
        instance: r.get(1),
        since: r.get(2),
        in_flight: r.get(3),
        updated_at: r.get(4),
        channels: r.get(5),
    }))
}

/// What every live leader (one per shard led; a row whose backend is gone
/// is a dead leader's and left out) published of its channels at its last
/// heartbeat, merged; `None` when no leader is live.
pub fn published(
    client: &mut impl GenericClient,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, DbError> {
    let rows = client
        .query(
            "SELECT channels FROM leader l
             WHERE EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.backend_pid)",
            &[],
        )
        .map_err(DbError::query("reading the leaders' channel state"))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut merged = serde_json::Map::new();
    for r in &rows {
        if let serde_json::Value::Object(m) = r.get::<_, serde_json::Value>(0) {
            merged.extend(m);
        }
    }
    Ok(Some(merged))
}
