//! `run`: the daemon loop. A pass every `reconciler.interval` (a pass longer
//! than the interval is followed at once by the next, never overlapped);
//! SIGTERM/SIGINT stop paging, let in-flight deliveries finish, release the
//! lock and exit 0. A database that is down is logged once per interval and
//! retried; the loop neither exits nor spins.

use std::process::ExitCode;
use std::time::Instant;

use crate::config::Config;
use crate::db::{self, DbError};
use crate::lock;
use crate::reconcile::pass::{NoHooks, PassOutcome, Reconciler};
use crate::service::signals::Shutdown;

/// Runs the daemon until a shutdown signal.
pub fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::install()?;
    run_until(config, &shutdown)?;
    Ok(ExitCode::SUCCESS)
}

/// The loop, with the shutdown given (tests drive it directly).
pub fn run_until(config: &Config, shutdown: &Shutdown) -> Result<(), DbError> {
    let interval = config.reconciler.interval;
    // Start-up checks: refuse a wrong schema; a database that is down is
    // waited for.
    loop {
        match db::connect_checked(&config.database, &lock::app_name("startup")) {
            Ok(_) => break,
            Err(e @ (DbError::NotMigrated { .. } | DbError::TooNew { .. })) => return Err(e),
            Err(e) => log::error!(
                "database unavailable, retrying in {}: {e}",
                humantime::format_duration(interval)
            ),
        }
        if shutdown.wait(interval) {
            return Ok(());
        }
    }
    log::info!(
        "started: {} workers, pass every {}",
        config.reconciler.workers,
        humantime::format_duration(interval)
    );
    let mut reconciler = Reconciler::new(config)?;
    while !shutdown.requested() {
        let started = Instant::now();
        match reconciler.run_pass(shutdown.flag(), &NoHooks) {
            Ok(PassOutcome::LockHeld) => {}
            Ok(PassOutcome::Ran(_)) => {}
            Err(e) => log::error!("pass skipped: {e}"),
        }
        let remaining = interval.saturating_sub(started.elapsed());
        if shutdown.wait(remaining) {
            break;
        }
    }
    log::info!("shutting down: lock released, exiting");
    Ok(())
}
