//! `run`: the daemon loop. A pass every `reconciler.interval` (a pass longer
//! than the interval is followed at once by the next, never overlapped);
//! SIGTERM/SIGINT stop paging, let in-flight deliveries finish, release the
//! lock and exit 0. A database that is down is logged once per interval and
//! retried; the loop neither exits nor spins. A schema that is not at this
//! binary's version stops the start with exit 1, naming `migrate`.
//!
//! The loop also tells the outside world how it is doing: systemd through
//! [`Notifier`] (READY, WATCHDOG, STATUS, STOPPING) and monitoring through
//! [`Telemetry`] (metrics and health, served when `metrics.listen` is set).
//! The pass itself is `reconcile`'s business.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::db::due::DueEvent;
use crate::db::{self, DbError};
use crate::lock;
use crate::reconcile::pass::{Hooks, PassOutcome, Reconciler};
use crate::reconcile::report::Tally;
use crate::service::metrics::{self, Health, ListenError, Metrics, PassResult, Telemetry};
use crate::service::notify::Notifier;
use crate::service::signals::Shutdown;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The schema is not at this binary's version, or the configuration
    /// cannot be turned into a connection.
    #[error(transparent)]
    Db(#[from] DbError),
    /// `metrics.listen` cannot be bound.
    #[error(transparent)]
    Metrics(#[from] ListenError),
}

/// Runs the daemon until a shutdown signal.
pub fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::install()?;
    run_until(config, &shutdown)?;
    Ok(ExitCode::SUCCESS)
}

/// How long `/healthz` tolerates no sign of progress: three intervals, but
/// at least twice the delivery timeout (a pass whose every worker waits on a
/// slow endpoint is not stalled).
pub fn stall_after(config: &Config) -> Duration {
    (config.reconciler.interval * 3).max(config.delivery.timeout * 2)
}

/// The loop, with the shutdown given (tests drive it directly).
pub fn run_until(config: &Config, shutdown: &Shutdown) -> Result<(), DaemonError> {
    let interval = config.reconciler.interval;
    let notifier = Notifier::from_env();
    let telemetry = Arc::new(Telemetry {
        metrics: Metrics::new(),
        health: Health::new(stall_after(config)),
    });
    let _server = match config.metrics.listen {
        Some(addr) => Some(metrics::serve(addr, Arc::clone(&telemetry))?),
        None => None,
    };

    // Start-up checks: refuse a wrong schema; a database that is down is
    // waited for, one line per interval.
    loop {
        match db::connect_checked(&config.database, &lock::app_name("startup")) {
            Ok(_) => break,
            Err(e @ (DbError::NotMigrated { .. } | DbError::TooNew { .. })) => {
                notifier.stopping(&format!("refusing to start: {e}"));
                return Err(e.into());
            }
            Err(e) => {
                log::error!(
                    "database unavailable at start-up, retrying in {}: {e}",
                    humantime::format_duration(interval)
                );
                telemetry
                    .health
                    .db_problem(format!("database unavailable at start-up: {e}"));
                notifier.status(&format!("waiting for the database: {e}"));
            }
        }
        if wait(shutdown, Instant::now() + interval, &notifier, &telemetry) {
            return stop(&notifier, "stopped before the database was reachable");
        }
    }
    telemetry.health.db_ok();
    let mut reconciler = Reconciler::new(config)?;
    log::info!(
        "started: {} workers, pass every {}, lock key {:?}",
        config.reconciler.workers,
        humantime::format_duration(interval),
        config.reconciler.lock_key
    );
    notifier.ready("ready: first pass starting");

    let hooks = DaemonHooks {
        notifier: &notifier,
        telemetry: &telemetry,
    };
    while !shutdown.requested() {
        let started = Instant::now();
        telemetry.health.beat();
        notifier.watchdog();
        let status = match reconciler.run_pass(shutdown.flag(), &hooks) {
            Ok(PassOutcome::LockHeld) => {
                telemetry.metrics.pass_skipped(PassResult::LockHeld);
                telemetry.health.db_ok();
                "standby: another instance holds the lock".to_string()
            }
            Ok(PassOutcome::Ran(report)) => {
                // run_pass has logged the summary.
                telemetry.metrics.pass_ran(&report);
                match &report.failure {
                    None => telemetry.health.db_ok(),
                    Some(f) => telemetry
                        .health
                        .db_problem(format!("the last pass failed: {f}")),
                }
                report.summary()
            }
            Err(e) => {
                log::error!(
                    "pass skipped, retrying in {}: {e}",
                    humantime::format_duration(interval)
                );
                telemetry.metrics.pass_skipped(PassResult::Error);
                telemetry
                    .health
                    .db_problem(format!("database unavailable at the last pass: {e}"));
                format!("database unavailable: {e}")
            }
        };
        notifier.status(&status);
        if wait(shutdown, started + interval, &notifier, &telemetry) {
            break;
        }
    }
    drop(reconciler); // releases the lock if a pass still held it
    stop(
        &notifier,
        "shutting down: in-flight deliveries recorded, lock released",
    )
}

/// Logs and notifies the end.
fn stop(notifier: &Notifier, status: &str) -> Result<(), DaemonError> {
    notifier.stopping(status);
    log::info!("{status}; exiting");
    Ok(())
}

/// The daemon's only wait between passes: until `until` or a shutdown
/// request (returns true then), waking to ping the watchdog and to show the
/// loop is alive. Prompt delivery (LISTEN/NOTIFY) will wake it here too.
fn wait(shutdown: &Shutdown, until: Instant, notifier: &Notifier, telemetry: &Telemetry) -> bool {
    let tick = notifier
        .ping_every()
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_secs(1));
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return shutdown.requested();
        }
        if shutdown.wait(left.min(tick)) {
            return true;
        }
        notifier.watchdog_if_due();
        telemetry.health.beat();
    }
}

/// The pass's hooks in the daemon: progress keeps the watchdog fed and
/// `/healthz` green during a long pass.
struct DaemonHooks<'a> {
    notifier: &'a Notifier,
    telemetry: &'a Telemetry,
}

impl Hooks for DaemonHooks<'_> {
    fn started(&self, due: u64) {
        self.telemetry.metrics.pass_started(due);
        self.telemetry.health.beat();
        self.notifier.watchdog_if_due();
    }

    fn before_event(&self, _event: &DueEvent) {
        self.telemetry.health.beat();
        self.notifier.watchdog_if_due();
    }

    fn event_done(&self, _tally: &Tally) {
        self.telemetry.health.beat();
        self.notifier.watchdog_if_due();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_limit_is_three_intervals_or_two_delivery_timeouts() {
        let mut c = Config::for_url("postgres://localhost/x");
        c.reconciler.interval = Duration::from_secs(15);
        c.delivery.timeout = Duration::from_secs(30);
        assert_eq!(stall_after(&c), Duration::from_secs(60));
        c.reconciler.interval = Duration::from_secs(60);
        assert_eq!(stall_after(&c), Duration::from_secs(180));
    }
}
