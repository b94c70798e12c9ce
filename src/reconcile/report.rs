//! The per-pass report: what the pass saw and did, counted by outcome.
//! Workers add to a [`Tally`] of atomics (the only state they share); the
//! pass turns it into a [`Report`] once every worker has been joined.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use chrono::{DateTime, Utc};

use crate::delivery::worker::StatusOutcome;

/// Counters shared by the workers of one pass.
#[derive(Debug, Default)]
pub struct Tally {
    /// Events taken from the channel.
    pub events: AtomicU64,
    /// Statuses now SUCCESS.
    pub delivered: AtomicU64,
    /// Statuses with a retry scheduled.
    pub retry_scheduled: AtomicU64,
    /// Statuses now FAILED.
    pub failed: AtomicU64,
    /// Writes refused because the row changed meanwhile.
    pub changed_concurrently: AtomicU64,
    /// Statuses skipped as not yet due.
    pub not_due: AtomicU64,
    /// Events whose reconcile returned an error (they stay due).
    pub errors: AtomicU64,
    /// Events whose reconcile panicked (they stay due).
    pub panics: AtomicU64,
}

impl Tally {
    /// Counts one status outcome.
    pub fn count(&self, outcome: StatusOutcome) {
        let counter = match outcome {
            StatusOutcome::Delivered => &self.delivered,
            StatusOutcome::RetryScheduled => &self.retry_scheduled,
            StatusOutcome::Failed => &self.failed,
            StatusOutcome::ChangedConcurrently => &self.changed_concurrently,
            StatusOutcome::NotDue => &self.not_due,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Events finished so far (for progress).
    pub fn events_done(&self) -> u64 {
        self.events.load(Relaxed)
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// When the pass started.
    pub started_at: Option<DateTime<Utc>>,
    /// The cut-off used for the whole pass.
    pub cutoff: Option<DateTime<Utc>>,
    /// Events with due deliveries at the start.
    pub due_at_start: u64,
    /// Events handed to workers.
    pub events_seen: u64,
    /// Status rows written.
    pub statuses_updated: u64,
    /// Now SUCCESS.
    pub delivered: u64,
    /// Retry scheduled (SENDING).
    pub retry_scheduled: u64,
    /// Now FAILED.
    pub failed: u64,
    /// Writes refused: the row changed concurrently.
    pub changed_concurrently: u64,
    /// Skipped: not due yet.
    pub not_due: u64,
    /// Events that hit a database error.
    pub errors: u64,
    /// Events whose reconcile panicked.
    pub panics: u64,
    /// Wall time of the pass in milliseconds.
    pub duration_ms: u64,
    /// Events per second.
    pub events_per_second: f64,
    /// Why the pass failed (lock lost, paging error), if it did.
    pub failure: Option<String>,
    /// A shutdown request ended the pass before every due event was handed
    /// out (the rest stay due).
    pub stopped_early: bool,
}

impl Report {
    /// Fills the counts from a finished tally.
    pub fn from_tally(t: &Tally) -> Report {
        let r = Report {
            events_seen: t.events.load(Relaxed),
            delivered: t.delivered.load(Relaxed),
            retry_scheduled: t.retry_scheduled.load(Relaxed),
            failed: t.failed.load(Relaxed),
            changed_concurrently: t.changed_concurrently.load(Relaxed),
            not_due: t.not_due.load(Relaxed),
            errors: t.errors.load(Relaxed),
            panics: t.panics.load(Relaxed),
            ..Report::default()
        };
        Report {
            statuses_updated: r.delivered + r.retry_scheduled + r.failed,
            ..r
        }
    }

    /// Whether the pass completed (it may still have per-event errors).
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// The one-line summary logged at info and shown as systemd STATUS.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "pass {}: {} events in {} ms ({:.1}/s): {} delivered, {} retry scheduled, {} failed, {} changed concurrently, {} not due, {} errors, {} panics",
            if self.ok() { "done" } else { "FAILED" },
            self.events_seen,
            self.duration_ms,
            self.events_per_second,
            self.delivered,
            self.retry_scheduled,
            self.failed,
            self.changed_concurrently,
            self.not_due,
            self.errors,
            self.panics
        );
        if self.stopped_early {
            s.push_str("; stopped early by a shutdown request");
        }
        if let Some(f) = &self.failure {
            s.push_str(&format!("; {f}"));
        }
        s
    }
}
