//! The `leader` table: who leads under which lock key, since when, and how
//! many deliveries it has in flight (what `status` shows). Written only by
//! the leader, on its lock connection: a row when it starts leading, a
//! heartbeat once a second (also while idle: the heartbeat is the lease a
//! standby reads, and one older than `reconciler.takeover_after` gets the
//! leader fenced, see `fence`), and the row's removal when it stops leading
//! cleanly. A row still there when the next leader starts tells it the last
//! one did not stop cleanly.

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

/// Records this connection as the leader under `key`. Returns the backend
/// pid of a previous leader whose row was still there (it did not stop
/// cleanly), `None` after a clean stop.
pub fn claim(
    client: &mut impl GenericClient,
    key: i64,
    instance: &str,
) -> Result<Option<i32>, DbError> {
    let previous: Option<i32> = client
        .query_opt(
            "SELECT backend_pid FROM leader WHERE lock_key = $1",
            &[&key],
        )
        .map_err(DbError::query("reading the leader record"))?
        .map(|r| r.get(0));
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
    Ok(previous)
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

/// [`heartbeat`] for several keys at once (one statement): each key with
/// its in-flight count and channels.
pub fn heartbeat_many(
    client: &mut impl GenericClient,
    rows: &[(i64, usize, serde_json::Value)],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let keys: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let counts: Vec<i32> = rows
        .iter()
        .map(|r| i32::try_from(r.1).unwrap_or(i32::MAX))
        .collect();
    let channels: Vec<serde_json::Value> = rows.iter().map(|r| r.2.clone()).collect();
    client
        .execute(
            "UPDATE leader SET in_flight = u.n, channels = u.c, updated_at = now()
             FROM unnest($1::int8[], $2::int4[], $3::jsonb[]) AS u(k, n, c)
             WHERE lock_key = u.k AND backend_pid = pg_backend_pid()",
            &[&keys, &counts, &channels],
        )
        .map_err(DbError::query("updating the leader records"))?;
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

/// A leader row as a standby sees it when deciding whether to fence it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// The lock key the row is for.
    pub key: i64,
    /// The recorded leader's backend pid.
    pub backend_pid: i32,
    /// The recorded leader's application name.
    pub instance: String,
    /// How old its heartbeat is, by the database's clock.
    pub age: std::time::Duration,
    /// Whether that backend holds the advisory lock of `key` right now.
    pub holds_lock: bool,
    /// Whether that backend is the one asking (this connection).
    pub own: bool,
}

/// How old the heartbeat of every other connection's leader row of `keys`
/// is, by the database's clock (a plain read, no lock: the cheap look a
/// standby takes before [`stale_for_update`]).
pub fn others_ages(
    client: &mut impl GenericClient,
    keys: &[i64],
) -> Result<Vec<std::time::Duration>, DbError> {
    let rows = client
        .query(
            "SELECT greatest(extract(epoch FROM clock_timestamp() - updated_at), 0)::float8
             FROM leader WHERE lock_key = ANY($1) AND backend_pid <> pg_backend_pid()",
            &[&keys],
        )
        .map_err(DbError::query("reading the leader records"))?;
    Ok(rows
        .iter()
        .map(|r| std::time::Duration::from_secs_f64(r.get::<_, f64>(0).max(0.0)))
        .collect())
}

/// The leader rows of `keys` whose heartbeat is older than `older_than`,
/// locked until the end of the caller's transaction (`FOR UPDATE`: a row
/// renewed meanwhile is read again and left out, and a heartbeat sent
/// later waits), each with whether its backend holds that key's advisory
/// lock right now.
pub fn stale_for_update(
    client: &mut impl GenericClient,
    keys: &[i64],
    older_than: std::time::Duration,
) -> Result<Vec<Seen>, DbError> {
    let secs = older_than.as_secs_f64();
    let rows = client
        .query(
            "SELECT l.lock_key, l.backend_pid, l.instance,
                    greatest(extract(epoch FROM clock_timestamp() - l.updated_at), 0)::float8,
                    EXISTS (SELECT 1 FROM pg_locks k
                            WHERE k.pid = l.backend_pid AND k.locktype = 'advisory'
                              AND k.granted AND k.objsubid = 1
                              AND k.classid = ((l.lock_key >> 32) & x'ffffffff'::bigint)::bit(32)::int::oid
                              AND k.objid = (l.lock_key & x'ffffffff'::bigint)::bit(32)::int::oid
                              AND k.database = (SELECT oid FROM pg_database
                                                WHERE datname = current_database())),
                    l.backend_pid = pg_backend_pid()
             FROM leader l
             WHERE l.lock_key = ANY($1) AND l.updated_at < clock_timestamp() - make_interval(secs => $2)
             ORDER BY l.lock_key
             FOR UPDATE OF l",
            &[&keys, &secs],
        )
        .map_err(DbError::query("reading the leader records to fence"))?;
    Ok(rows
        .iter()
        .map(|r| Seen {
            key: r.get(0),
            backend_pid: r.get(1),
            instance: r.get(2),
            age: std::time::Duration::from_secs_f64(r.get::<_, f64>(3).max(0.0)),
            holds_lock: r.get(4),
            own: r.get(5),
        })
        .collect())
}

/// Ends backend `pid` (`pg_terminate_backend`) and waits up to `wait` for
/// it to exit (and so release its locks), looking every 5 ms
/// (`pg_terminate_backend`'s own wait looks only every 100 ms; `pg_locks`,
/// unlike `pg_stat_activity`, is read afresh inside a transaction).
/// `Ok(true)`: it is gone (also when it had exited already);
/// `Ok(false)`: it had not exited in time. The error
/// keeps its SQLSTATE: `42501` when this role may not signal that backend.
pub fn terminate(
    client: &mut impl GenericClient,
    pid: i32,
    wait: std::time::Duration,
) -> Result<bool, postgres::Error> {
    let signalled: bool = client
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])?
        .get(0);
    if !signalled {
        // Not a backend any more: it exited meanwhile, locks released.
        return Ok(true);
    }
    let until = std::time::Instant::now() + wait;
    loop {
        let gone: bool = client
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1)",
                &[&pid],
            )?
            .get(0);
        if gone {
            return Ok(true);
        }
        if std::time::Instant::now() >= until {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
