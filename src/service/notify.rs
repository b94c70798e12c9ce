//! systemd notifications (`Type=notify`) through `$NOTIFY_SOCKET`, with the
//! sd-notify crate: READY=1 once the start-up checks pass, STATUS= with the
//! last pass summary, WATCHDOG=1 while the loop turns, STOPPING=1 on
//! shutdown. Without `$NOTIFY_SOCKET` (not under systemd) every call is a
//! no-op. When to notify is the daemon loop's business; this module only
//! knows how, and how often the watchdog wants a ping.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Talks to the service manager.
pub struct Notifier {
    /// The watchdog interval (`$WATCHDOG_USEC`), when the watchdog is on.
    watchdog: Option<Duration>,
    /// When this notifier was made; pings are timed from it.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last watchdog ping.
    last_ping_ms: AtomicU64,
}

impl Notifier {
    /// A notifier for this process, from `$WATCHDOG_USEC` and
    /// `$WATCHDOG_PID`. The environment is left as it is.
    pub fn from_env() -> Notifier {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Notifier {
            watchdog: watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id()),
            epoch: Instant::now(),
            last_ping_ms: AtomicU64::new(0),
        }
    }

    /// How often the loop must ping while it waits: a third of the watchdog
    /// interval (systemd recommends pinging at least every half), or `None`
    /// when the watchdog is off.
    pub fn ping_every(&self) -> Option<Duration> {
        self.watchdog
            .map(|w| (w / 3).max(Duration::from_millis(10)))
    }

    /// READY=1 with a status line: the start-up checks passed.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
        self.mark_ping();
    }

    /// STATUS= (shown by `systemctl status`).
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// WATCHDOG=1 now, when the watchdog is on.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
            self.mark_ping();
        }
    }

    /// WATCHDOG=1 unless one was sent less than [`Notifier::ping_every`]
    /// ago; cheap enough to call for every event a pass finishes.
    pub fn watchdog_if_due(&self) {
        let Some(every) = self.ping_every() else {
            return;
        };
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_ping_ms.load(Relaxed);
        if now.saturating_sub(last) >= every.as_millis() as u64 {
            self.watchdog();
        }
    }

    /// STOPPING=1 with a status line: shutdown has begun.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    fn mark_ping(&self) {
        self.last_ping_ms
            .store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(false, states) {
            log::warn!("cannot notify systemd through $NOTIFY_SOCKET: {e}");
        }
    }
}

/// The watchdog interval from the values of `$WATCHDOG_USEC` and
/// `$WATCHDOG_PID`, as `sd_watchdog_enabled(3)` reads them: on when the
/// microseconds parse and are positive, unless a PID is given that is not
/// ours (the variables were inherited from a parent).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_follows_sd_watchdog_enabled() {
        let two = Some(Duration::from_secs(2));
        assert_eq!(watchdog_interval(Some("2000000"), None, 7), two);
        assert_eq!(watchdog_interval(Some("2000000"), Some("7"), 7), two);
        assert_eq!(watchdog_interval(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("2000000"), Some("x"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    }

    #[test]
    fn pings_a_third_of_the_watchdog_interval() {
        let n = Notifier {
            watchdog: Some(Duration::from_secs(3)),
            epoch: Instant::now(),
            last_ping_ms: AtomicU64::new(0),
        };
        assert_eq!(n.ping_every(), Some(Duration::from_secs(1)));
        let off = Notifier {
            watchdog: None,
            ..n
        };
        assert_eq!(off.ping_every(), None);
    }
}
