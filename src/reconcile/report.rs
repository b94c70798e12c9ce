//! What the leader did: a [`Tally`] of finished deliveries, counted by the
//! main thread from the workers' reports (workers share no counters), and
//! the [`Report`] made from it: for `once`, the one sweep; for `run`, each
//! `interval` of leading and the whole time it led.

use chrono::{DateTime, Utc};

use crate::delivery::worker::StatusOutcome;
use crate::reconcile::job::{Done, Finished};

/// Counts of finished deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Deliveries whose outcome came back (every kind below).
    pub deliveries: u64,
    /// Now SUCCESS.
    pub delivered: u64,
    /// Retry scheduled (SENDING).
    pub retry_scheduled: u64,
    /// Now FAILED.
    pub failed: u64,
    /// Writes refused: the row changed concurrently.
    pub changed_concurrently: u64,
    /// Skipped: not due, or already finished.
    pub not_due: u64,
    /// Database errors (the delivery stays due).
    pub errors: u64,
    /// Panics caught (the delivery stays due).
    pub panics: u64,
}

impl Tally {
    /// Counts one finished delivery. Deliveries dropped unattempted at a
    /// stop are not counted: they stay due and were never tried.
    pub fn count(&mut self, done: &Done) {
        let counter = match &done.finished {
            Finished::Reconciled(r) => match r.outcome {
                StatusOutcome::Delivered => &mut self.delivered,
                StatusOutcome::RetryScheduled => &mut self.retry_scheduled,
                StatusOutcome::Failed => &mut self.failed,
                StatusOutcome::ChangedConcurrently => &mut self.changed_concurrently,
                StatusOutcome::NotDue => &mut self.not_due,
                StatusOutcome::Withheld => return,
            },
            Finished::Error => &mut self.errors,
            Finished::Panicked => &mut self.panics,
            Finished::Dropped => return,
        };
        *counter += 1;
        self.deliveries += 1;
    }
}

/// What a sweep (`once`) or a stretch of leading (`run`) did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// `once`: the cut-off used for the whole sweep.
    pub cutoff: Option<DateTime<Utc>>,
    /// `once`: deliveries due at the start.
    pub due_at_start: u64,
    /// Deliveries whose outcome came back.
    pub deliveries_seen: u64,
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
    /// Deliveries that hit a database error (they stay due).
    pub errors: u64,
    /// Deliveries whose reconcile panicked (they stay due).
    pub panics: u64,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Deliveries per second.
    pub deliveries_per_second: f64,
    /// Why leading ended abnormally (lock lost, paging error), if it did.
    pub failure: Option<String>,
    /// A shutdown request ended it before everything due was handed out
    /// (the rest stay due).
    pub stopped_early: bool,
}

impl Report {
    /// A report of `tally` over `duration`.
    pub fn new(tally: &Tally, started_at: DateTime<Utc>, duration: std::time::Duration) -> Report {
        let t = tally;
        Report {
            started_at: Some(started_at),
            deliveries_seen: t.deliveries,
            statuses_updated: t.delivered + t.retry_scheduled + t.failed,
            delivered: t.delivered,
            retry_scheduled: t.retry_scheduled,
            failed: t.failed,
            changed_concurrently: t.changed_concurrently,
            not_due: t.not_due,
            errors: t.errors,
            panics: t.panics,
            duration_ms: duration.as_millis() as u64,
            deliveries_per_second: if duration.as_secs_f64() > 0.0 {
                t.deliveries as f64 / duration.as_secs_f64()
            } else {
                0.0
            },
            ..Report::default()
        }
    }

    /// Whether it ended normally (it may still have per-delivery errors).
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// The one-line summary logged at info (and shown as systemd STATUS),
    /// starting with `what` ("pass", "leading", "stopped leading").
    pub fn summary(&self, what: &str) -> String {
        let mut s = format!(
            "{what} {}: {} deliveries in {} ms ({:.1}/s): {} delivered, {} retry scheduled, {} failed, {} changed concurrently, {} not due, {} errors, {} panics",
            if self.ok() { "ok" } else { "FAILED" },
            self.deliveries_seen,
            self.duration_ms,
            self.deliveries_per_second,
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
