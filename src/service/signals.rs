//! SIGTERM/SIGINT handling without an async runtime: signal-hook sets a flag
//! (read by the pass, which stops paging) and wakes the daemon's wait through
//! a channel, so a shutdown request is seen at once whatever the loop is
//! doing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// A shutdown request: the flag, and a channel that yields once per signal.
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    wake: Receiver<i32>,
}

impl Shutdown {
    /// Installs the handlers for SIGTERM and SIGINT.
    pub fn install() -> std::io::Result<Shutdown> {
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(SIGTERM, Arc::clone(&flag))?;
        signal_hook::flag::register(SIGINT, Arc::clone(&flag))?;
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        let (tx, rx) = crossbeam_channel::bounded(4);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let _ = tx.try_send(signal);
                }
            })?;
        Ok(Shutdown { flag, wake: rx })
    }

    /// A shutdown that only a test (or nothing) can request.
    pub fn manual() -> Shutdown {
        let (_tx, rx) = crossbeam_channel::bounded(1);
        Shutdown {
            flag: Arc::new(AtomicBool::new(false)),
            wake: rx,
        }
    }

    /// The flag the pass watches.
    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// Whether a shutdown was requested.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout`; returns true when a shutdown was requested.
    /// The daemon's only wait between passes.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        if self.requested() {
            return true;
        }
        let _ = self.wake.recv_timeout(timeout);
        self.requested()
    }
}
