//! The leader's proof that it still holds the lock, and what workers check
//! before each attempt.
//!
//! The lock is a session lock on the main thread's dedicated connection.
//! When that connection dies, the server releases the lock at once and
//! another instance may take it; the main thread only learns so at its next
//! check. So:
//!
//! - the main thread checks the connection ([`LockWatch`]) at least every
//!   [`LOCK_CHECK_EVERY`] while anything is in flight, and right before it
//!   hands anything out; each good check renews the [`Lease`];
//! - a worker starts an attempt only while the lease is fresh (renewed
//!   within [`LEASE`]); otherwise it waits for a renewal or the halt;
//! - an instance that takes over from a leader that did not release
//!   cleanly waits [`TAKEOVER_GRACE`] (longer than [`LEASE`]) before it
//!   hands anything out.
//!
//! Together: after a lock loss the old leader starts no attempt once the new
//! one hands out, so the deliveries made twice are at most those the old
//! leader had in flight (at most its `workers`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::lock::LeaderLock;

/// How often the lock connection is checked while deliveries are in flight.
pub const LOCK_CHECK_EVERY: Duration = Duration::from_millis(50);

/// How often it is checked while nothing is in flight.
pub const IDLE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long one check may take before the connection counts as lost.
pub const LOCK_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A worker starts an attempt only if the lock was seen alive this recently.
pub const LEASE: Duration = Duration::from_millis(150);

/// How long a new leader waits before handing out when the previous one did
/// not release the lock cleanly (it may still be running, unaware).
pub const TAKEOVER_GRACE: Duration = Duration::from_millis(300);

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

    /// The lock was just seen alive.
    pub fn renew(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.verified.store(ms, Ordering::Release);
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

/// Checks the lock connection when a check is due, renewing the lease.
#[derive(Debug, Default)]
pub struct LockWatch {
    last: Option<Instant>,
}

impl LockWatch {
    /// A watch that has not checked yet.
    pub fn new() -> LockWatch {
        LockWatch::default()
    }

    /// Checks the connection if the last check is older than `every`;
    /// false when it is gone.
    pub fn check_if_due(&mut self, lock: &mut LeaderLock, lease: &Lease, every: Duration) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return true;
        }
        self.check(lock, lease)
    }

    /// Checks the connection now; false when it is gone.
    pub fn check(&mut self, lock: &mut LeaderLock, lease: &Lease) -> bool {
        self.last = Some(Instant::now());
        let alive = lock
            .client_mut()
            .map(|c| c.is_valid(LOCK_CHECK_TIMEOUT).is_ok())
            .unwrap_or(false);
        if alive {
            lease.renew();
        }
        alive
    }

    /// When the next check is due, for a check interval of `every`.
    pub fn due_at(&self, every: Duration) -> Instant {
        self.last.map_or_else(Instant::now, |t| t + every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_grace_outlasts_the_lease() {
        assert!(TAKEOVER_GRACE > LEASE + LOCK_CHECK_EVERY);
    }
}
