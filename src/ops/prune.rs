//! `prune`: remove (or, with `dry_run`, count) the finished events older
//! than a retention period, with their delivery statuses, the same way the
//! leader does in the background (`reconcile::pruner`): in small steps of
//! `db::prune::BATCH` events that wait for no lock. A zero period means
//! "keep forever" (`retention.keep_finished = "0s"`): nothing is removed.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use postgres::GenericClient;

use crate::db::prune::{self, Removed};
use crate::db::DbError;

/// Why `prune` could not finish.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// A statement failed (what was removed before it stays removed: every
    /// step commits on its own).
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What `prune` did, or with `dry_run` would do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PruneReport {
    /// Counted only, nothing removed.
    pub dry_run: bool,
    /// The retention period applied, in seconds (0: retention off).
    pub older_than_seconds: u64,
    /// Finished events created before this were (would be) removed; None
    /// when retention is off.
    pub cutoff: Option<DateTime<Utc>>,
    /// The counts.
    #[serde(flatten)]
    pub removed: Removed,
    /// Time taken, in milliseconds.
    pub took_ms: u64,
}

/// Removes (or counts, with `dry_run`) every event created more than
/// `older_than` ago whose deliveries are all finished.
pub fn prune(
    client: &mut impl GenericClient,
    older_than: Duration,
    dry_run: bool,
) -> Result<PruneReport, PruneError> {
    let started = Instant::now();
    let (cutoff, removed) = if older_than.is_zero() {
        (None, Removed::default())
    } else {
        let cutoff = prune::cutoff(client, older_than)?;
        let removed = if dry_run {
            prune::count(client, cutoff)?
        } else {
            prune::sweep(client, cutoff, prune::BATCH, &mut |_| true)?
        };
        (Some(cutoff), removed)
    };
    Ok(PruneReport {
        dry_run,
        older_than_seconds: older_than.as_secs(),
        cutoff,
        removed,
        took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}
