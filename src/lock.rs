//! The leader's advisory lock, held on a dedicated connection.
//!
//! Only one instance reconciles at a time: the one holding a session-level
//! `pg_try_advisory_lock` on a 64-bit key derived from `reconciler.lock_key`.
//! The lock lives on its own `postgres::Client` that no worker ever touches;
//! the leader also pages deliveries on it, so a broken lock connection stops the
//! paging at once (another instance may lead by then). The connection is
//! reopened at the next attempt when it broke.
//!
//! With shards (`reconciler.shards` > 1) the same connection holds one
//! lock per shard the instance leads ([`LeaderLock::try_lock_key`],
//! [`LeaderLock::unlock_key`]); which ones is `shard::set`'s business. Every
//! fresh lock connection records its instance in the `instance` table
//! (`db::shards::register`), so that other instances count it as alive.
//!
//! A standby (`run`) that finds the lock held by a leader whose heartbeat
//! is older than `reconciler.takeover_after` ends that leader's session
//! ([`LeaderLock::fence`], `fence`) and takes the lock.
//!
//! Key derivation (`db::lock_keys`): the first 8 bytes of SHA-256 of the
//! key text, read as a big-endian signed 64-bit integer. In `pg_locks` the holder shows as
//! `locktype = 'advisory'`, `classid` = the high 32 bits, `objid` = the low
//! 32 bits, `objsubid = 1` (see [`HOLDER_SQL`]).

use std::collections::BTreeSet;

use crate::config::DatabaseConfig;
use crate::db::{self, DbError};
use crate::fence::Fencer;

pub use crate::db::lock_keys::derive_key;

/// How long a new leader waits before handing out when the previous one did
/// not release the lock cleanly (it may still be running, unaware, until
/// its workers' lease, `reconcile::lease::LEASE`, runs out).
pub const TAKEOVER_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

/// Finds the backend holding the advisory lock `$1` (an `int8` key).
pub const HOLDER_SQL: &str = "
    SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local'),
           a.backend_start
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.classid = (($1::bigint >> 32) & x'ffffffff'::bigint)::bit(32)::int::oid
      AND l.objid = ($1::bigint & x'ffffffff'::bigint)::bit(32)::int::oid
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// Who holds the lock, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Holder {
    /// Backend process id (`pg_stat_activity.pid`).
    pub pid: i32,
    /// The holder's application_name (ours: `notification-reconciler <host>`).
    pub application_name: String,
    /// Client address, or `local`.
    pub client_addr: String,
    /// When the holder's connection started (`None` when PostgreSQL hides
    /// it: another role's session seen without `pg_read_all_stats`).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Looks up the holder of `key` on any connection.
pub fn holder(client: &mut postgres::Client, key: i64) -> Result<Option<Holder>, DbError> {
    let row = client
        .query_opt(HOLDER_SQL, &[&key])
        .map_err(DbError::query("looking up the lock holder"))?;
    Ok(row.map(|r| Holder {
        pid: r.get(0),
        application_name: r.get(1),
        client_addr: r.get(2),
        since: r.get(3),
    }))
}

/// The leader lock and its dedicated connection.
pub struct LeaderLock {
    cfg: DatabaseConfig,
    key: i64,
    client: Option<postgres::Client>,
    held: bool,
    /// The configured shard count (recorded with the instance row).
    shards: u32,
    /// Shard keys held besides `key` (shards > 1).
    shard_keys: BTreeSet<i64>,
    /// Record the instance when connecting (not for `once`).
    register: bool,
    /// Ends a silent leader's session (`run` only: with `register`).
    fencer: Option<Fencer>,
}

impl LeaderLock {
    /// A lock for `key_text` on the database of `cfg`, for an instance
    /// configured with `shards`; connects lazily.
    pub fn new(cfg: &DatabaseConfig, key_text: &str, shards: u32) -> LeaderLock {
        LeaderLock {
            cfg: cfg.clone(),
            key: derive_key(key_text),
            client: None,
            held: false,
            shards,
            shard_keys: BTreeSet::new(),
            register: true,
            fencer: None,
        }
    }

    /// Makes a standby (`run`, see [`LeaderLock::set_register`]) fence a
    /// leader whose heartbeat is older than `takeover_after` (`fence`).
    pub fn set_takeover_after(&mut self, takeover_after: std::time::Duration) {
        self.fencer = Some(Fencer::new(takeover_after));
    }

    /// `run`: ends the session of every silent leader of `keys` (stale
    /// heartbeat, holding the key's lock; see `fence`); returns how many
    /// it ended. Nothing for `once` or without a takeover bound.
    pub fn fence(&mut self, keys: &[i64]) -> Result<usize, DbError> {
        if !self.register {
            return Ok(0);
        }
        let (Some(fencer), Some(client)) = (self.fencer.as_mut(), self.client.as_mut()) else {
            return Ok(0);
        };
        fencer.fence(client, keys)
    }

    /// When the leader this standby saw last turns stale, if it does not
    /// renew its heartbeat (`fence`): the moment to look again.
    pub fn next_stale(&self) -> Option<std::time::Instant> {
        self.fencer.as_ref().and_then(Fencer::next_stale)
    }

    /// Whether this instance ended backend `pid`'s session as the silent
    /// leader of `key` (`fence`): then its successor hands out at once,
    /// without [`TAKEOVER_GRACE`] (`reconcile::lease::renewal_limit`).
    pub fn fenced(&mut self, key: i64, pid: i32) -> bool {
        self.fencer.as_mut().is_some_and(|f| f.ended(key, pid))
    }

    /// Whether a fresh connection records the instance as alive (`run`:
    /// yes, so that others share the shards with it; `once`: no).
    pub fn set_register(&mut self, on: bool) {
        self.register = on;
    }

    /// Opens the connection when it is not open (recording the instance).
    pub fn connect(&mut self) -> Result<&mut postgres::Client, DbError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.forget_connection();
            let mut client = db::connect(&self.cfg, &app_name("lock"))?;
            if self.register {
                db::shards::register(&mut client, &app_name("lock"), self.shards)?;
            }
            self.client = Some(client);
        }
        self.client_mut()
    }

    /// Whether the connection was open at the last look (a reused one may
    /// still turn out dead at its next statement).
    pub fn has_connection(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Tries to take the shard lock `key` on the open connection.
    pub fn try_lock_key(&mut self, key: i64) -> Result<bool, DbError> {
        if self.shard_keys.contains(&key) {
            return Ok(true);
        }
        let got: bool = self
            .client_mut()?
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .map_err(DbError::query("taking a shard lock"))?
            .get(0);
        if got {
            self.shard_keys.insert(key);
        }
        Ok(got)
    }

    /// Releases the shard lock `key`.
    pub fn unlock_key(&mut self, key: i64) -> Result<(), DbError> {
        if !self.shard_keys.remove(&key) {
            return Ok(());
        }
        self.client_mut()?
            .execute("SELECT pg_advisory_unlock($1)", &[&key])
            .map_err(DbError::query("releasing a shard lock"))?;
        Ok(())
    }

    /// The shard keys held.
    pub fn held_keys(&self) -> &BTreeSet<i64> {
        &self.shard_keys
    }

    /// The derived key.
    pub fn key(&self) -> i64 {
        self.key
    }

    /// Whether this instance believes it holds the lock.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Tries to take the lock, (re)connecting first when needed. `Ok(false)`
    /// means another instance holds it.
    pub fn try_acquire(&mut self) -> Result<bool, DbError> {
        if self.held {
            return Ok(true);
        }
        // A connection idle since the last leadership may have died with a server
        // restart without noticing: one failure on a reused connection earns
        // one immediate retry on a fresh one.
        let reused = self.client.as_ref().is_some_and(|c| !c.is_closed());
        match self.try_lock_once() {
            Err(e) if reused && e.is_connection_lost() => {
                log::debug!("lock connection was stale ({e}); reconnecting");
                self.try_lock_once()
            }
            other => other,
        }
    }

    fn try_lock_once(&mut self) -> Result<bool, DbError> {
        if let Err(e) = self.connect() {
            self.forget_connection();
            return Err(e);
        }
        let key = self.key;
        let result = self.client_mut().and_then(|c| {
            c.query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .map_err(DbError::query("taking the leader lock"))
        });
        match result {
            Ok(row) => {
                self.held = row.get(0);
                if !self.held {
                    // A silent leader's session ended takes its lock along.
                    let retaken = self.fence(&[key]).and_then(|ended| match ended {
                        0 => Ok(false),
                        _ => self
                            .client_mut()?
                            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                            .map_err(DbError::query("taking the leader lock"))
                            .map(|r| r.get(0)),
                    });
                    match retaken {
                        Ok(held) => self.held = held,
                        Err(e) => {
                            self.forget_connection();
                            return Err(e);
                        }
                    }
                }
                Ok(self.held)
            }
            Err(e) => {
                self.forget_connection();
                Err(e)
            }
        }
    }

    /// The dedicated connection (the leader pages deliveries on it).
    pub fn client_mut(&mut self) -> Result<&mut postgres::Client, DbError> {
        self.client.as_mut().ok_or(DbError::NotConnected("lock"))
    }

    /// Drops the connection after a failure: the server releases a session
    /// lock when its connection ends, so we no longer hold it.
    pub fn forget_connection(&mut self) {
        self.client = None;
        self.held = false;
        self.shard_keys.clear();
    }

    /// Releases the lock (keeps the connection for the next attempt to lead).
    pub fn release(&mut self) -> Result<(), DbError> {
        for key in std::mem::take(&mut self.shard_keys) {
            self.shard_keys.insert(key);
            if let Err(e) = self.unlock_key(key) {
                self.forget_connection();
                return Err(e);
            }
        }
        if !self.held {
            return Ok(());
        }
        self.held = false;
        let key = self.key;
        let result = self.client_mut().and_then(|c| {
            c.execute("SELECT pg_advisory_unlock($1)", &[&key])
                .map_err(DbError::query("releasing the leader lock"))
        });
        if result.is_err() {
            self.forget_connection();
        }
        result.map(|_| ())
    }
}

impl Drop for LeaderLock {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// The application_name of our connections: role and host, so that
/// `pg_stat_activity` tells which instance holds the lock.
pub fn app_name(role: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "notification-reconciler {role} {host} pid {}",
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_derivation_is_stable() {
        use sha2::{Digest, Sha256};
        // Pinned: changing it would let an old and a new version lead at once.
        assert_eq!(
            derive_key("notification.event_handler.reconcile_lock"),
            derive_key("notification.event_handler.reconcile_lock")
        );
        assert_ne!(derive_key("a"), derive_key("b"));
        let digest = Sha256::digest(b"abc");
        assert_eq!(derive_key("abc") as u64 >> 56, digest[0] as u64);
    }
}
