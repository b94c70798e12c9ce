//! What the leader tells its observers (the progress display, metrics,
//! tests injecting faults) and why it woke up: [`Hooks`], with a no-op
//! default for each method, and [`WakeCause`]. Every part of `reconcile`
//! that reports progress takes a `&dyn Hooks`; nothing here depends on the
//! loop itself.

use std::time::Duration;

use crate::db::due::Delivery;
use crate::reconcile::job::Done;
use crate::reconcile::report::Report;
use crate::reconcile::report::Tally;

/// Observes the leader (progress display, metrics, tests injecting faults).
/// Every method has a no-op default. All but `before_delivery`,
/// `pool_wait`, `pool_in_use` and `pruned` run on the main thread.
pub trait Hooks: Sync {
    /// Leading began; `once`: `due` deliveries are due (its total).
    fn started(&self, _due: Option<u64>) {}
    /// A worker is about to reconcile `delivery` (runs inside the panic
    /// guard, on the worker's thread).
    fn before_delivery(&self, _delivery: &Delivery) {}
    /// A worker waited `waited` for a database connection to record an
    /// outcome, whether it got one or not (on the worker's thread).
    fn pool_wait(&self, _waited: Duration) {}
    /// `n` connections of the workers' pool are taken right now: a worker
    /// just took or gave back one (on the worker's thread).
    fn pool_in_use(&self, _n: usize) {}
    /// A delivery's outcome came back; `tally` has the counts so far.
    fn finished(&self, _done: &Done, _tally: &Tally) {}
    /// The main thread woke up to sweep, for `cause`.
    fn woke(&self, _cause: WakeCause) {}
    /// The number of deliveries in flight is now `n`.
    fn in_flight(&self, _n: usize) {}
    /// The main thread is turning (each loop turn).
    fn beat(&self) {}
    /// `run`: one `interval` of leading ended; `due` deliveries are due now.
    fn interval(&self, _report: &Report, _due: u64) {}
    /// The number of channels whose breaker is open or half-open is now `n`.
    fn breakers_open(&self, _n: usize) {}
    /// Channel `channel_id` was auto-disabled (every attempt failed for
    /// `delivery.disable_after`); the change is committed.
    fn auto_disabled(&self, _channel_id: uuid::Uuid) {}
    /// The number of shards whose lock this instance holds is now `n`.
    fn shards_led(&self, _n: usize) {}
    /// One pruning step removed `removed` in `took` (on the pruner's
    /// thread).
    fn pruned(&self, _removed: &crate::db::prune::Removed, _took: Duration) {}
}

/// Hooks that do nothing.
pub struct NoHooks;
impl Hooks for NoHooks {}

/// Why the main thread started (or queued) a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeCause {
    /// Leading began.
    Start,
    /// A notification (an enqueue or a resend committed).
    Notified,
    /// The listener (re)started listening; notifications may have been lost.
    Listening,
    /// A worker finished while every slot was taken.
    WorkerDone,
    /// A delivery's write was refused because the row changed while it was
    /// in flight (an operator's resend): it may be due again.
    Changed,
    /// The earliest known scheduled retry fell due.
    RetryDue,
    /// The `interval` tick (the safety net).
    Tick,
}

impl WakeCause {
    /// Every cause, for metrics labels.
    pub const ALL: [WakeCause; 7] = [
        WakeCause::Start,
        WakeCause::Notified,
        WakeCause::Listening,
        WakeCause::WorkerDone,
        WakeCause::Changed,
        WakeCause::RetryDue,
        WakeCause::Tick,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WakeCause::Start => "start",
            WakeCause::Notified => "notification",
            WakeCause::Listening => "listening",
            WakeCause::WorkerDone => "worker_done",
            WakeCause::Changed => "changed_concurrently",
            WakeCause::RetryDue => "retry_due",
            WakeCause::Tick => "interval",
        }
    }
}
