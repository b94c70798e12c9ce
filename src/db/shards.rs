//! The SQL of shards: the recorded shard count (`settings.shards`), the
//! `instance` table of live instances, who holds which shard's lock, and
//! the due count and retry time of a set of shards. The leader runs these on
//! its lock connection; `status` and `migrate` on their own. What to do with
//! the answers is `shard::balance` and `shard::set`.

use chrono::{DateTime, Utc};
use postgres::GenericClient;

use super::DbError;

pub use super::due::{shard_filter, shard_filter_of};

/// The shard count recorded in the schema.
pub fn recorded(client: &mut impl GenericClient) -> Result<u32, DbError> {
    let row = client
        .query_one("SELECT shards FROM settings", &[])
        .map_err(DbError::query("reading the recorded shard count"))?;
    Ok(row.get::<_, i32>(0).max(1) as u32)
}

/// Fails unless `configured` is the recorded shard count.
pub fn ensure_recorded(client: &mut impl GenericClient, configured: u32) -> Result<(), DbError> {
    let recorded = recorded(client)?;
    if recorded == configured {
        Ok(())
    } else {
        Err(DbError::ShardsMismatch {
            configured,
            recorded,
        })
    }
}

/// `migrate`: records `shards`; returns whether it changed. Refuses to
/// change it while any instance is alive (they would lead with the old
/// count while new ones use the new one).
pub fn record(client: &mut impl GenericClient, shards: u32) -> Result<bool, DbError> {
    let recorded = recorded(client)?;
    if recorded == shards {
        return Ok(false);
    }
    let live = live_instances(client)?;
    if !live.is_empty() {
        return Err(DbError::ShardsInUse {
            recorded,
            configured: shards,
            live,
        });
    }
    let k = shards as i32;
    client
        .execute("UPDATE settings SET shards = $1", &[&k])
        .map_err(DbError::query("recording the shard count"))?;
    Ok(true)
}

/// Records this connection as the running instance `name` configured with
/// `shards`, and removes the rows of instances whose connection is gone.
pub fn register(client: &mut impl GenericClient, name: &str, shards: u32) -> Result<(), DbError> {
    let k = shards as i32;
    client
        .execute(
            "INSERT INTO instance (name, backend_pid, backend_start, shards)
             SELECT $1, pid, backend_start, $2 FROM pg_stat_activity WHERE pid = pg_backend_pid()
             ON CONFLICT (name) DO UPDATE SET backend_pid = excluded.backend_pid,
                 backend_start = excluded.backend_start, shards = excluded.shards",
            &[&name, &k],
        )
        .map_err(DbError::query("recording the instance"))?;
    client
        .execute(
            "DELETE FROM instance i WHERE NOT EXISTS (
                 SELECT 1 FROM pg_stat_activity a
                 WHERE a.pid = i.backend_pid AND a.backend_start = i.backend_start)",
            &[],
        )
        .map_err(DbError::query("removing dead instances"))?;
    Ok(())
}

/// The names of the live instances (their lock connection is open).
pub fn live_instances(client: &mut impl GenericClient) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "SELECT i.name FROM instance i JOIN pg_stat_activity a
                 ON a.pid = i.backend_pid AND a.backend_start = i.backend_start
             ORDER BY i.name",
            &[],
        )
        .map_err(DbError::query("reading the live instances"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Who holds each of `keys` (advisory locks in this database): the
/// instance name, `backend pid N` for a connection that is not a
/// registered instance, or None when free.
pub fn holders(
    client: &mut impl GenericClient,
    keys: &[i64],
) -> Result<Vec<Option<String>>, DbError> {
    let rows = client
        .query(
            "SELECT l.classid, l.objid, coalesce(i.name, 'backend pid ' || l.pid)
             FROM pg_locks l
             LEFT JOIN instance i ON i.backend_pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .map_err(DbError::query("reading the shard holders"))?;
    let mut out = vec![None; keys.len()];
    for r in &rows {
        let (hi, lo): (u32, u32) = (r.get(0), r.get(1));
        let key = ((u64::from(hi) << 32) | u64::from(lo)) as i64;
        if let Some(i) = keys.iter().position(|k| *k == key) {
            out[i] = Some(r.get(2));
        }
    }
    Ok(out)
}

/// Unfinished deliveries of `shards` (of `k`) due by `cutoff`.
pub fn count_due_in(
    client: &mut impl GenericClient,
    cutoff: DateTime<Utc>,
    k: u32,
    shards: &[i32],
) -> Result<i64, DbError> {
    let sql = format!(
        "SELECT count(*) FROM delivery_status
         WHERE {} AND next_attempt_at <= $1
           AND {}",
        super::due::NEXT_INDEX_FILTER,
        shard_filter(2, 3)
    );
    let k = k as i32;
    let row = client
        .query_one(&sql, &[&cutoff, &k, &shards])
        .map_err(DbError::query("counting due deliveries"))?;
    Ok(row.get(0))
}

/// When the earliest unfinished delivery of `shards` not due by `cutoff`
/// falls due.
pub fn next_due_after_in(
    client: &mut impl GenericClient,
    cutoff: DateTime<Utc>,
    k: u32,
    shards: &[i32],
) -> Result<Option<DateTime<Utc>>, DbError> {
    let sql = format!(
        "SELECT min(next_attempt_at) FROM delivery_status
         WHERE {} AND next_attempt_at > $1
           AND {}",
        super::due::NEXT_INDEX_FILTER,
        shard_filter(2, 3)
    );
    let k = k as i32;
    let row = client
        .query_one(&sql, &[&cutoff, &k, &shards])
        .map_err(DbError::query("finding the next due delivery"))?;
    Ok(row.get(0))
}

/// `status`: deliveries due now per shard (index = shard number).
pub fn due_by_shard(client: &mut impl GenericClient, k: u32) -> Result<Vec<i64>, DbError> {
    let kk = k as i32;
    let rows = client
        .query(
            "SELECT channel_shard(channel_id, $1), count(*) FROM delivery_status
             WHERE state IN ('PENDING', 'SENDING', 'RESENDING') AND next_attempt_at <= now()
             GROUP BY 1",
            &[&kk],
        )
        .map_err(DbError::query("counting due deliveries per shard"))?;
    let mut out = vec![0; k.max(1) as usize];
    for r in &rows {
        let s: i32 = r.get(0);
        if let Some(n) = out.get_mut(s as usize) {
            *n = r.get(1);
        }
    }
    Ok(out)
}

/// `status`: the shard of each of `channels` as the schema computes it
/// (tests compare it with `shard::shard_of`).
pub fn shard_in_sql(
    client: &mut impl GenericClient,
    channel: uuid::Uuid,
    k: u32,
) -> Result<u32, DbError> {
    let kk = k as i32;
    let row = client
        .query_one("SELECT channel_shard($1, $2)", &[&channel, &kk])
        .map_err(DbError::query("computing a channel's shard"))?;
    Ok(row.get::<_, i32>(0) as u32)
}
