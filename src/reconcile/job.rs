//! The messages between the main thread and the workers: the [`Job`] the
//! leader hands a worker (one delivery, with the cut-off of the sweep that
//! found it) and the [`Done`] report that comes back for it, from the
//! worker itself or, for an outcome written in a group, from the worker
//! that wrote the group (`recorder`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::due::Delivery;
use crate::delivery::worker::Reconciled;

/// What the leader hands a worker: one delivery and the cut-off of the
/// sweep that found it.
#[derive(Debug)]
pub struct Job {
    /// The delivery.
    pub delivery: Delivery,
    /// The sweep's cut-off.
    pub cutoff: DateTime<Utc>,
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
