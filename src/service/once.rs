//! `once`: one sweep of what is due now, its report on stdout (`--json`: one
//! JSON document, also when the lock is held), and the exit code: 0 when the
//! sweep ran, 1 when it failed, 75 when another instance holds the lock.
//! The report is printed once, on stdout; nothing repeats it on stderr.

use std::process::ExitCode;

use crate::config::Config;
use crate::db;
use crate::exit::EXIT_LOCK_HELD;
use crate::lock;
use crate::reconcile::hooks::NoHooks;
use crate::reconcile::leader::{PassOutcome, Reconciler};
use crate::service::progress::Progress;
use crate::service::signals::Shutdown;

/// The pass failed (lock lost, paging error): exit 1 after the report.
#[derive(Debug, thiserror::Error)]
#[error("the pass did not complete: {0}")]
pub struct PassFailed(pub String);

/// Runs `once`.
pub fn run(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = db::connect_checked(&config.database, &lock::app_name("once"))?;
    db::shards::ensure_recorded(&mut client, config.reconciler.shards)?;
    drop(client);
    let shutdown = Shutdown::install()?;
    let mut reconciler = Reconciler::new(config)?;
    let progress = Progress::on_terminal(!json);
    let outcome = match &progress {
        Some(p) => reconciler.run_pass(shutdown.flag(), p),
        None => reconciler.run_pass(shutdown.flag(), &NoHooks),
    };
    if let Some(p) = &progress {
        p.finish();
    }
    match outcome? {
        PassOutcome::LockHeld => {
            if json {
                #[derive(serde::Serialize)]
                struct LockHeld<'a> {
                    lock_held: bool,
                    lock_key: &'a str,
                    message: &'static str,
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&LockHeld {
                        lock_held: true,
                        lock_key: &config.reconciler.lock_key,
                        message: "another instance holds the lock; nothing done",
                    })?
                );
            }
            eprintln!(
                "another instance holds the lock {:?}; nothing done",
                config.reconciler.lock_key
            );
            Ok(ExitCode::from(EXIT_LOCK_HELD))
        }
        PassOutcome::Ran(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.summary("pass"));
            }
            match report.failure {
                Some(f) => Err(PassFailed(f).into()),
                None => Ok(ExitCode::SUCCESS),
            }
        }
    }
}
