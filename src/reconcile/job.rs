//! The messages between the main thread and the workers: the [`Job`] the
//! leader hands a worker (one delivery, with the cut-off of the sweep that
//! found it) and what comes back for it ([`Back`]): that its attempt is
//! over and its outcome queued ([`Back::Answered`], from the worker), then
//! the [`Done`] report, from the worker itself or, for an outcome written
//! in a group, from the worker that wrote the group (`recorder`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::due::Delivery;
use crate::delivery::worker::Reconciled;
use crate::state::Verdict;

/// What the leader hands a worker: one delivery and the cut-off of the
/// sweep that found it.
#[derive(Debug)]
pub struct Job {
    /// The delivery.
    pub delivery: Delivery,
    /// The sweep's cut-off.
    pub cutoff: DateTime<Utc>,
}

/// What a worker sends back to the main thread.
#[derive(Debug, Clone)]
pub enum Back {
    /// The delivery's attempt is over and its outcome is queued for the
    /// group commit: it holds no worker any more (its channel's cap slot is
    /// free), but it stays in flight until its [`Done`] arrives. The
    /// attempt's verdict (when one was made) feeds the channel's breaker
    /// now, before another delivery of the channel takes the freed slot.
    Answered {
        /// The delivery status.
        status_id: Uuid,
        /// How the attempt counts for the channel's health.
        verdict: Option<Verdict>,
    },
    /// The delivery is finished with (recorded, or left due).
    Done(Done),
}

/// The report of one delivery handed to a worker.
#[derive(Debug, Clone)]
pub struct Done {
    /// The delivery status.
    pub status_id: Uuid,
    /// What came of it.
    pub finished: Finished,
}

/// What came of a delivery handed to a worker.
#[derive(Debug, Clone)]
pub enum Finished {
    /// Reconciled and recorded (or refused as changed concurrently).
    Reconciled(Reconciled),
    /// A database error: nothing recorded, it stays due.
    Error,
    /// The reconcile panicked: nothing recorded, it stays due.
    Panicked,
    /// Not attempted (stop, halt, or the lease ran out): it stays due.
    Dropped,
}
