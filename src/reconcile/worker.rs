//! The loop each worker thread runs: take deliveries from the hand-off
//! channel until it is closed, reconcile each on the worker's own pooled
//! connection, and report each outcome back to the main thread (which frees
//! its slot in the in-flight registry and counts it).
//!
//! A request goes out only while the leader's lease is fresh (the context's
//! `may_send`, see `lease`); after a stop or a halt, deliveries still queued
//! are dropped unattempted (they stay due). A panic while reconciling one delivery is caught,
//! logged with the event id, reported, and the connection is discarded; the
//! worker goes on and the delivery stays due.

use std::panic::{catch_unwind, AssertUnwindSafe};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender};
use uuid::Uuid;

use crate::db::due::Delivery;
use crate::db::statuses::StatusWriter;
use crate::db::{DbError, Pool, PooledClient};
use crate::delivery::worker::{reconcile_delivery, Context, Reconciled, StatusOutcome};
use crate::reconcile::leader::Hooks;
use crate::state::RandomJitter;

/// One delivery handed to a worker, with the cut-off of the sweep that
/// found it.
#[derive(Debug)]
pub struct Job {
    /// The delivery.
    pub delivery: Delivery,
    /// The sweep's cut-off.
    pub cutoff: DateTime<Utc>,
}

/// A worker's report of one delivery it was handed.
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

/// What a worker shares with the others (all read-only or atomic).
pub struct Shared<'a> {
    /// The workers' pool.
    pub pool: &'a Pool,
    /// Sender, policy and the lease check.
    pub ctx: &'a Context<'a>,
    /// Observers.
    pub hooks: &'a dyn Hooks,
}

/// Reconciles every job until the channel closes, reporting each into
/// `done`. `stopped` says to drop what is still queued.
pub fn work(
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
    shared: &Shared<'_>,
    stopped: &dyn Fn() -> bool,
) {
    let mut conn: Option<PooledClient> = None;
    let mut jitter = RandomJitter;
    for job in jobs.iter() {
        let finished = if stopped() {
            Finished::Dropped
        } else {
            reconcile_one(&job, &mut conn, shared, &mut jitter)
        };
        let report = Done {
            status_id: job.delivery.status.id,
            finished,
        };
        if done.send(report).is_err() {
            break;
        }
    }
}

/// Reconciles one delivery on the worker's connection (taking one from the
/// pool if it has none).
fn reconcile_one(
    job: &Job,
    conn: &mut Option<PooledClient>,
    shared: &Shared<'_>,
    jitter: &mut RandomJitter,
) -> Finished {
    let d = &job.delivery;
    let client = match conn {
        Some(c) => c,
        None => match shared.pool.get() {
            Ok(c) => conn.insert(c),
            Err(e) => {
                log::error!(
                    "delivery of event {} ({}) to channel {} left due: no database connection: {e}",
                    d.event.id,
                    d.event.namespace,
                    d.status.target.id
                );
                return Finished::Error;
            }
        },
    };
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<Reconciled, DbError> {
        shared.hooks.before_delivery(d);
        let writer = match client.writer.take() {
            Some(w) => w,
            None => StatusWriter::prepare(&mut client.client)?,
        };
        let result = reconcile_delivery(
            &mut client.client,
            &writer,
            shared.ctx,
            d,
            job.cutoff,
            jitter,
        );
        client.writer = Some(writer);
        result
    }));
    match result {
        Ok(Ok(r)) if r.outcome == StatusOutcome::Withheld => Finished::Dropped,
        Ok(Ok(reconciled)) => Finished::Reconciled(reconciled),
        Ok(Err(e)) => {
            log::error!(
                "delivery of event {} ({}) to channel {} left due: {e}",
                d.event.id,
                d.event.namespace,
                d.status.target.id
            );
            if e.is_connection_lost() {
                client.discard = true;
                *conn = None;
            }
            Finished::Error
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!(
                "worker panicked on event {} ({}) to channel {}; it stays due: {what}",
                d.event.id,
                d.event.namespace,
                d.status.target.id
            );
            client.discard = true;
            *conn = None;
            Finished::Panicked
        }
    }
}
