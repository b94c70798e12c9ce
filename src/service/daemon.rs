//! `run`: the daemon. It tries to lead; while it holds the lock the
//! reconciler's leader loop hands out deliveries as they fall due (see
//! `reconcile::leader`); otherwise it stands by and tries again every
//! [`STANDBY_RETRY`], so a standby takes over within a second of the
//! leader's death. SIGTERM/SIGINT stop the hand-out, let in-flight
//! deliveries finish, release the lock and exit 0. A database that is down
//! is logged once per interval and retried; the loop neither exits nor
//! spins. A schema that is not at this binary's version stops the start
//! with exit 1, naming `migrate`.
//!
//! The daemon also runs the wake-up listener (`reconcile::listener`) and
//! tells the outside world how it is doing: systemd through [`Notifier`]
//! (READY, WATCHDOG, STATUS, STOPPING) and monitoring through [`Telemetry`]
//! (metrics and health, served when `metrics.listen` is set).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::db::due::Delivery;
use crate::db::{self, DbError};
use crate::lock;
use crate::reconcile::hooks::{Hooks, WakeCause};
use crate::reconcile::job::Done;
use crate::reconcile::leader::{PassOutcome, Reconciler};
use crate::reconcile::listener;
use crate::reconcile::report::{Report, Tally};
use crate::service::limits;
use crate::service::metrics::{self, Health, LeadResult, ListenError, Metrics, Telemetry};
use crate::service::notify::Notifier;
use crate::service::signals::Shutdown;

/// How often a standby tries to take the lock.
pub const STANDBY_RETRY: Duration = Duration::from_millis(250);

/// How often the daemon tries to lead while the database is unreachable
/// (at most `reconciler.interval`); it logs that once per interval.
pub const DB_RETRY: Duration = Duration::from_secs(1);

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
    /// What the front door asked to serve beside the daemon (the
    /// management API on `api.listen`) cannot start.
    #[error(transparent)]
    Api(anyhow::Error),
}

/// What a front door serves beside the daemon once the database is
/// reachable (the command line passes the management API: front doors sit
/// above the service, so the service does not start them itself); the
/// value returned is kept until the daemon stops.
pub type Beside<'a> =
    &'a dyn Fn(&Config, &Arc<Telemetry>) -> anyhow::Result<Option<Box<dyn std::any::Any>>>;

/// Runs the daemon until a shutdown signal.
pub fn run(config: &Config, beside: Beside<'_>) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::install()?;
    // A database error stays itself (not hidden behind `DaemonError`), so
    // that `cli::exit_code` can tell a configuration problem.
    run_until(config, &shutdown, beside).map_err(|e| match e {
        DaemonError::Db(db) => anyhow::Error::new(db),
        DaemonError::Api(api) => api,
        other => anyhow::Error::new(other),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// How long `/healthz` tolerates no sign of progress: three intervals, but
/// at least twice the delivery timeout.
pub fn stall_after(config: &Config) -> Duration {
    (config.reconciler.interval * 3).max(config.delivery.timeout * 2)
}

/// The loop, with the shutdown given (tests drive it directly).
pub fn run_until(
    config: &Config,
    shutdown: &Shutdown,
    beside: Beside<'_>,
) -> Result<(), DaemonError> {
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
        let checked = db::connect_checked(&config.database, &lock::app_name("startup"))
            .and_then(|mut c| db::shards::ensure_recorded(&mut c, config.reconciler.shards));
        match checked {
            Ok(()) => break,
            // A refused TLS handshake is `database.url`'s fault, not an
            // outage: waiting would not mend it.
            Err(e) if e.is_configuration() => {
                notifier.stopping(&format!("refusing to start: {e}"));
                return Err(e.into());
            }
            Err(
                e @ (DbError::NotMigrated { .. }
                | DbError::TooNew { .. }
                | DbError::ShardsMismatch { .. }),
            ) => {
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
    // The management API needs no lock: leader and standby serve it alike.
    let _beside = beside(config, &telemetry).map_err(DaemonError::Api)?;
    let mut reconciler = Reconciler::new(config)?;
    log::info!(
        "started: {} workers, {} pooled database connections, interval {}, lock key {:?}, {} shard(s)",
        config.reconciler.workers,
        config.database.pool_size,
        humantime::format_duration(interval),
        config.reconciler.lock_key,
        config.reconciler.shards
    );
    if let Some(svix) = &config.svix {
        // Deliveries are handed to Svix; say whether it answers now (a
        // Svix away is retried on the schedule, never a reason to stop).
        match crate::ops::status::svix_health(config) {
            Some(h) if h.reachable => log::info!("provider: svix at {}, which answers", svix.url),
            Some(h) => log::warn!(
                "provider: svix at {}, which does NOT answer now ({}); hand-overs are retried on the schedule",
                svix.url,
                h.error.unwrap_or_default()
            ),
            None => {}
        }
    }
    if let Some(warning) = limits::open_files_warning(config) {
        log::warn!("{warning}");
    }
    notifier.ready("ready: trying to lead");

    let hooks = DaemonHooks {
        notifier: &notifier,
        telemetry: &telemetry,
        config,
    };
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    // Whether this instance ever led: only then is there a lock to release.
    let mut held_lock = false;
    let listener_stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("listener".into())
            .spawn_scoped(scope, || {
                listener::run(&config.database, &listener_stop, &wake_tx)
            });
        if let Err(e) = spawned {
            log::error!(
                "cannot start the wake-up listener (deliveries wait for reconciler.interval): {e}"
            );
        }
        let mut last_status = String::new();
        let mut status = |text: String| {
            if text != last_status {
                notifier.status(&text);
                last_status = text;
            }
        };
        let mut db_error_logged: Option<Instant> = None;
        let mut standing_by = false;
        while !shutdown.requested() {
            telemetry.health.beat();
            notifier.watchdog();
            let retry_at = match reconciler.lead(shutdown.flag(), &hooks, &wake_rx) {
                Ok(PassOutcome::LockHeld) => {
                    db_error_logged = None;
                    telemetry.metrics.lead_ended(LeadResult::LockHeld);
                    telemetry.health.db_ok();
                    if !standing_by {
                        // Logged once per standby spell: the log, not only
                        // systemd, says why this instance does nothing.
                        log::info!("{}", standby_line(config));
                        standing_by = true;
                    }
                    status("standby: another instance holds the lock".into());
                    standby_retry_at(reconciler.lock().next_stale())
                }
                Ok(PassOutcome::Ran(report)) => {
                    db_error_logged = None;
                    standing_by = false;
                    held_lock = true;
                    let summary = report.summary("stopped leading");
                    match &report.failure {
                        None => {
                            log::info!("{summary}");
                            telemetry.metrics.lead_ended(LeadResult::Stopped);
                            telemetry.health.db_ok();
                        }
                        Some(f) => {
                            log::error!("{summary}");
                            telemetry.metrics.lead_ended(LeadResult::Lost);
                            telemetry.health.db_problem(format!("leading ended: {f}"));
                        }
                    }
                    status(summary);
                    Instant::now() + STANDBY_RETRY
                }
                Err(e) => {
                    // Retried every second, so that leading resumes soon
                    // after the database does; logged once per interval.
                    if db_error_logged.is_none_or(|t| t.elapsed() >= interval) {
                        log::error!(
                            "database unavailable, trying to lead again every {}: {e}",
                            humantime::format_duration(DB_RETRY.min(interval))
                        );
                        db_error_logged = Some(Instant::now());
                    }
                    telemetry.metrics.lead_ended(LeadResult::Error);
                    telemetry
                        .health
                        .db_problem(format!("database unavailable: {e}"));
                    status(format!("database unavailable: {e}"));
                    Instant::now() + DB_RETRY.min(interval)
                }
            };
            if wait(shutdown, retry_at, &notifier, &telemetry) {
                break;
            }
        }
        listener_stop.store(true, Ordering::Relaxed);
    });
    drop(reconciler); // releases the lock if it is still held
    stop(
        &notifier,
        if held_lock {
            "shutting down: in-flight deliveries recorded, lock released"
        } else {
            "shutting down: this instance stood by and never held the lock"
        },
    )
}

/// When a standby tries the lock again: within [`STANDBY_RETRY`], or just
/// after the leader it saw turns stale (`fence`), whichever comes first,
/// so that a silent leader is fenced when its heartbeat reaches
/// `reconciler.takeover_after`, not up to a retry later.
fn standby_retry_at(next_stale: Option<Instant>) -> Instant {
    let retry = Instant::now() + STANDBY_RETRY;
    next_stale.map_or(retry, |t| retry.min(t + Duration::from_millis(5)))
}

/// The line a standby logs when it starts standing by: who leads (the
/// lock holder's application name, address and backend pid, as `status`
/// shows them), and that it takes over when that instance stops.
fn standby_line(config: &Config) -> String {
    let key = lock::derive_key(&config.reconciler.lock_key);
    let holder = db::connect(&config.database, &lock::app_name("standby"))
        .ok()
        .and_then(|mut c| lock::holder(&mut c, key).ok().flatten());
    let who = match holder {
        Some(h) => format!(
            "{} at {} (backend pid {}, since {})",
            if h.application_name.is_empty() {
                "an unnamed client"
            } else {
                h.application_name.as_str()
            },
            h.client_addr,
            h.pid,
            h.since.map_or("an unknown time".to_string(), |t| t
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string())
        ),
        None => "another instance".to_string(),
    };
    format!(
        "standing by: the lock {:?} is held by {who}; this instance takes over within a second of it stopping",
        config.reconciler.lock_key
    )
}

/// Logs and notifies the end.
fn stop(notifier: &Notifier, status: &str) -> Result<(), DaemonError> {
    notifier.stopping(status);
    log::info!("{status}; exiting");
    Ok(())
}

/// The daemon's wait while it does not lead: until `until` or a shutdown
/// request (returns true then), waking to ping the watchdog and to show the
/// loop is alive.
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

/// The first wait before a Svix endpoint whose channel was auto-disabled
/// is tried again (while Svix does not take the change); it doubles up to
/// [`SVIX_DISABLE_RETRY_MAX`], and the tries end after [`SVIX_DISABLE_FOR`].
const SVIX_DISABLE_RETRY: Duration = Duration::from_secs(5);
const SVIX_DISABLE_RETRY_MAX: Duration = Duration::from_secs(300);
const SVIX_DISABLE_FOR: Duration = Duration::from_secs(3600);

/// Tells Svix that channel `id` was auto-disabled (its endpoint disabled,
/// as a channel operation does), on a thread of its own so that the
/// leader never waits for Svix: with Svix the auto-disable usually comes
/// while Svix does not answer, so the change is tried again, after
/// [`SVIX_DISABLE_RETRY`] and twice as long each time, for up to
/// [`SVIX_DISABLE_FOR`] (then `svix sync` repairs it). Each try brings the endpoint in step with the channel as
/// it is then (enabled again meanwhile: enabled). A detached thread: the
/// process's end ends it.
fn disable_in_svix(config: &Config, id: uuid::Uuid) {
    let config = config.clone();
    let spawned = std::thread::Builder::new()
        .name("svix-disable".into())
        .spawn(move || {
            let started = Instant::now();
            let mut wait = SVIX_DISABLE_RETRY;
            loop {
                let done = match db::connect(&config.database, &lock::app_name("svix-sync")) {
                    Ok(mut client) => {
                        crate::ops::svix::after_change(&config, &mut client, id).is_none()
                    }
                    Err(e) => {
                        log::warn!("channel {id}: cannot tell Svix it was disabled: {e}");
                        false
                    }
                };
                if done {
                    log::info!("channel {id}: its Svix endpoint is disabled too");
                    return;
                }
                if started.elapsed() >= SVIX_DISABLE_FOR {
                    log::warn!(
                        "channel {id}: gave up telling Svix it was disabled; run `svix sync`"
                    );
                    return;
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(SVIX_DISABLE_RETRY_MAX);
            }
        });
    if let Err(e) = spawned {
        log::warn!("channel {id}: cannot tell Svix it was disabled ({e}); run `svix sync`");
    }
}

/// The leader's hooks in the daemon: metrics, and the watchdog and
/// `/healthz` kept fed while it leads.
struct DaemonHooks<'a> {
    notifier: &'a Notifier,
    telemetry: &'a Telemetry,
    config: &'a Config,
}

impl DaemonHooks<'_> {
    fn alive(&self) {
        self.telemetry.health.beat();
        self.notifier.watchdog_if_due();
    }
}

impl Hooks for DaemonHooks<'_> {
    fn started(&self, due: Option<u64>) {
        self.telemetry.metrics.leading(due);
        self.telemetry.health.db_ok();
        self.notifier.status("leading");
        self.alive();
    }

    fn before_delivery(&self, _delivery: &Delivery) {
        self.alive();
    }

    fn pool_wait(&self, waited: Duration) {
        self.telemetry.metrics.pool_wait(waited);
    }

    fn pool_in_use(&self, n: usize) {
        self.telemetry.metrics.pool_in_use(n);
    }

    fn finished(&self, done: &Done, _tally: &Tally) {
        self.telemetry.metrics.finished(done);
    }

    fn woke(&self, cause: WakeCause) {
        self.telemetry.metrics.woke(cause);
    }

    fn in_flight(&self, n: usize) {
        self.telemetry.metrics.in_flight(n);
    }

    fn beat(&self) {
        self.alive();
    }

    fn breakers_open(&self, n: usize) {
        self.telemetry.metrics.breakers_open(n);
    }

    fn auto_disabled(&self, channel_id: uuid::Uuid) {
        self.telemetry.metrics.auto_disabled();
        if self.config.delivery.provider == crate::config::Provider::Svix {
            disable_in_svix(self.config, channel_id);
        }
    }

    fn shards_led(&self, n: usize) {
        self.telemetry.metrics.shards_led(n);
    }

    fn pruned(&self, removed: &crate::db::prune::Removed, took: Duration) {
        self.telemetry.metrics.pruned(removed, took);
    }

    fn interval(&self, report: &Report, due: u64) {
        self.telemetry.metrics.due(due);
        self.notifier.status(&report.summary("leading"));
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
