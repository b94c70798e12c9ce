//! The leader's proof that it still holds the lock, and what workers check
//! right before each attempt.
//!
//! The lock is a session lock on the main thread's dedicated connection.
//! When that connection dies, the server releases the lock at once and
//! another instance may take it; the main thread only learns so at its next
//! check. So:
//!
//! - the main thread checks the connection ([`LockWatch`]) at least every
//!   [`LOCK_CHECK_EVERY`] while anything is in flight, and right before it
//!   hands anything out; each good check renews the [`Lease`], stamped with
//!   the moment the check was *sent* (the reply proves the lock was held
//!   then, not later);
//! - a worker sends an attempt only while the lease is fresh (stamped within
//!   [`LEASE`]), checked right before the request goes out; otherwise it
//!   waits for a renewal, or drops the delivery at a halt;
//! - an instance that takes over from a leader that did not stop cleanly
//!   waits [`TAKEOVER_GRACE`] (twice [`LEASE`]) before it hands anything out.
//!
//! - a leader that can no longer be heard (a silent partition) renews
//!   nothing: its workers stop within [`LEASE`] of its last good check, and
//!   its `leader` row's heartbeat ([`HEARTBEAT_EVERY`]) goes stale; a
//!   standby fences it after `reconciler.takeover_after` (`fence`),
//!   which ends its session and so the lock, and then waits
//!   [`TAKEOVER_GRACE`] like after any unclean stop.
//!
//! If the lock connection dies at T, every good check was sent before T, so
//! the old leader's workers pass the lease check only before T + LEASE; the
//! new leader hands out at T + TAKEOVER_GRACE at the earliest. A worker
//! descheduled for longer than the difference between its check and its
//! send can still send later: what the old leader sends twice is at most
//! what it had sent and not recorded: one delivery per worker plus the
//! outcomes queued for the group commit (`recorder::Recorder::crash_window`).
//!
//! Each check also reads the database's clock, so that a sweep's cut-off is
//! on the same clock as the `next_attempt_at` values it is compared with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::db::DbError;
use crate::lock::LeaderLock;

/// How often the lock connection is checked while deliveries are in flight.
pub const LOCK_CHECK_EVERY: Duration = Duration::from_millis(50);

/// How often it is checked while nothing is in flight.
pub const IDLE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A worker starts an attempt only if the lock was seen alive this recently.
pub const LEASE: Duration = Duration::from_millis(150);

/// How long a new leader waits before handing out when the previous one
/// did not release the lock cleanly (defined beside the lock, which the
/// shards' takeover uses too).
pub use crate::lock::TAKEOVER_GRACE;

/// How often the leader renews its `leader` row's heartbeat, idle or not:
/// the lease a standby reads. One older than `reconciler.takeover_after`
/// (at least [`crate::config::MIN_TAKEOVER_AFTER`], three of these) gets
/// the leader fenced (`fence`).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// The numbers fit together: a healthy leader renews its row several times
/// within the shortest takeover bound, and its workers' lease (renewed by
/// the lock checks, far more often) is much shorter than that bound, so a
/// fenced leader stopped sending long before the standby fences it.
const _: () = assert!(
    crate::config::MIN_TAKEOVER_AFTER.as_millis() >= 3 * HEARTBEAT_EVERY.as_millis()
        && HEARTBEAT_EVERY.as_millis() > LEASE.as_millis()
        && IDLE_CHECK_EVERY.as_millis() <= HEARTBEAT_EVERY.as_millis()
);

/// A lease renewed when the check was sent at `T` must have run out before
/// a successor that took the lock at `T` or later hands out, with margin.
const _: () = assert!(TAKEOVER_GRACE.as_millis() >= 2 * LEASE.as_millis());

/// When the lock was last seen alive, shared with the workers.
#[derive(Debug)]
pub struct Lease {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last good check, plus one; 0 = never.
    verified: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

impl Lease {
    /// A lease never renewed.
    pub fn new() -> Lease {
        Lease {
            epoch: Instant::now(),
            verified: AtomicU64::new(0),
        }
    }

    /// The lock was seen alive by a check sent at `sent`.
    pub fn renew_at(&self, sent: Instant) {
        let ms = sent.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        self.verified.fetch_max(ms, Ordering::AcqRel);
    }

    /// The lock was just seen alive.
    pub fn renew(&self) {
        self.renew_at(Instant::now());
    }

    /// Whether the lock was seen alive within [`LEASE`].
    pub fn is_fresh(&self) -> bool {
        match self.verified.load(Ordering::Acquire) {
            0 => false,
            v => {
                let now = self.epoch.elapsed().as_millis() as u64 + 1;
                now.saturating_sub(v) < LEASE.as_millis() as u64
            }
        }
    }

    /// Waits until the lease is fresh (true) or `stopped` says to give up
    /// (false).
    pub fn wait_fresh(&self, stopped: &dyn Fn() -> bool) -> bool {
        loop {
            if stopped() {
                return false;
            }
            if self.is_fresh() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Checks the lock connection when a check is due, renewing the lease and
/// reading the database's clock.
#[derive(Debug)]
pub struct LockWatch {
    last: Option<Instant>,
    /// The database's clock at the last good check, and when it was read.
    db_clock: Option<(DateTime<Utc>, Instant)>,
    /// A check renews the lease only while this connection's oldest
    /// `leader` row is younger than this (see [`renewal_limit`]).
    renew_below: Duration,
    /// The last check found the heartbeat too old to renew (logged once).
    held_back: bool,
}

/// How stale this leader's own heartbeat may be for a lock check to renew
/// its workers' lease: [`TAKEOVER_GRACE`] less than `takeover_after`.
///
/// A standby fences a leader whose heartbeat is `takeover_after` old (by
/// the database's clock, `fence`). Every renewal of that leader was stamped
/// when a check was sent that the database answered while the heartbeat
/// was younger than this limit, so at least `TAKEOVER_GRACE` before the
/// fence; its workers' lease ([`LEASE`], shorter than that) has run out
/// when the session is ended. That is what lets the fencing standby hand
/// out at once instead of waiting the grace (`lock::LeaderLock::fenced`).
pub fn renewal_limit(takeover_after: Duration) -> Duration {
    takeover_after.saturating_sub(TAKEOVER_GRACE)
}

impl LockWatch {
    /// A watch that has not checked yet, for a leader fenced when its
    /// heartbeat is `takeover_after` old.
    pub fn new(takeover_after: Duration) -> LockWatch {
        LockWatch {
            last: None,
            db_clock: None,
            renew_below: renewal_limit(takeover_after),
            held_back: false,
        }
    }

    /// Checks the connection if the last check is older than `every`.
    pub fn check_if_due(
        &mut self,
        lock: &mut LeaderLock,
        lease: &Lease,
        every: Duration,
    ) -> Result<(), DbError> {
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        self.check(lock, lease)
    }

    /// Checks the connection now (one round trip that reads the database's
    /// clock); an error means it is gone or unusable.
    pub fn check(&mut self, lock: &mut LeaderLock, lease: &Lease) -> Result<(), DbError> {
        let sent = Instant::now();
        self.last = Some(sent);
        // The age of this connection's oldest leader row (NULL: none yet,
        // so nobody can fence it on a heartbeat).
        let row = lock
            .client_mut()?
            .query_one(
                "SELECT clock_timestamp(),
                        extract(epoch FROM clock_timestamp() - min(updated_at))::float8
                 FROM leader WHERE backend_pid = pg_backend_pid()",
                &[],
            )
            .map_err(DbError::query("checking the lock connection"))?;
        let now: DateTime<Utc> = row.get(0);
        let age = row
            .get::<_, Option<f64>>(1)
            .map(|s| Duration::from_secs_f64(s.max(0.0)));
        if may_renew(age, self.renew_below) {
            lease.renew_at(sent);
            self.held_back = false;
        } else if !self.held_back {
            self.held_back = true;
            log::warn!(
                "this leader's heartbeat is {:.1} s old, near reconciler.takeover_after: no new attempt starts until it is renewed",
                age.unwrap_or_default().as_secs_f64()
            );
        }
        self.db_clock = Some((now, Instant::now()));
        Ok(())
    }

    /// The database's clock now, estimated from the last good check (the
    /// local clock before the first).
    pub fn db_now(&self) -> DateTime<Utc> {
        match self.db_clock {
            Some((at, read)) => {
                at + chrono::Duration::from_std(read.elapsed()).unwrap_or(chrono::Duration::zero())
            }
            None => Utc::now(),
        }
    }

    /// When the next check is due, for a check interval of `every`.
    pub fn due_at(&self, every: Duration) -> Instant {
        self.last.map_or_else(Instant::now, |t| t + every)
    }
}

/// Whether a lock check that found this leader's oldest heartbeat `age`
/// old (`None`: no row yet) renews the lease, under `limit` (pure).
pub fn may_renew(age: Option<Duration>, limit: Duration) -> bool {
    age.is_none_or(|a| a < limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_renews_only_while_the_heartbeat_is_clear_of_the_fencing_bound() {
        let limit = renewal_limit(Duration::from_secs(10));
        assert_eq!(limit, Duration::from_secs(10) - TAKEOVER_GRACE);
        assert!(may_renew(None, limit), "no row yet: nobody can fence it");
        assert!(may_renew(Some(Duration::ZERO), limit));
        assert!(may_renew(Some(limit - Duration::from_millis(1)), limit));
        assert!(!may_renew(Some(limit), limit));
        assert!(!may_renew(Some(Duration::from_secs(60)), limit));
        // The margin left before a fence outlasts the workers' lease.
        assert!(Duration::from_secs(10) - limit > LEASE);
    }

    #[test]
    fn a_new_lease_is_stale_and_a_renewed_one_fresh() {
        let lease = Lease::new();
        assert!(!lease.is_fresh());
        lease.renew();
        assert!(lease.is_fresh());
    }

    #[test]
    fn a_lease_not_renewed_for_longer_than_the_lease_is_stale() {
        let lease = Lease::new();
        lease.renew();
        std::thread::sleep(LEASE + Duration::from_millis(5));
        assert!(!lease.is_fresh());
    }

    #[test]
    fn waiting_on_a_stale_lease_gives_up_when_stopped() {
        let lease = Lease::new();
        assert!(!lease.wait_fresh(&|| true));
        lease.renew();
        assert!(lease.wait_fresh(&|| false));
    }

    #[test]
    fn a_lease_is_stamped_when_its_check_was_sent_and_never_goes_back() {
        let lease = Lease::new();
        let sent = Instant::now();
        std::thread::sleep(LEASE + Duration::from_millis(5));
        // A reply arriving now to a check sent more than LEASE ago proves
        // nothing about the last LEASE.
        lease.renew_at(sent);
        assert!(!lease.is_fresh());
        lease.renew();
        assert!(lease.is_fresh());
        // An older stamp arriving late does not shorten a newer one.
        lease.renew_at(sent);
        assert!(lease.is_fresh());
    }
}
