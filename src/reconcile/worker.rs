//! The loop each worker thread runs: take jobs from the hand-off channel
//! until it is closed, reconcile each job's deliveries (one, or for a
//! channel that answers fast up to 7 more *riders*, sent one after another
//! and recorded together in one statement: docs/architecture.md "Riders"),
//! and report each delivery's outcome back to the main thread (which frees
//! its entry in the in-flight registry and counts it).
//!
//! A worker holds a database connection only while it records outcomes.
//! It decides and sends without one (`delivery::worker::decide`: the page
//! brought everything), then takes a connection from the pool, writes the
//! job's updates on it in one statement (prepared once per pooled
//! connection) and gives it back at once. So requests in flight are bounded
//! by `reconciler.workers`, and connections by `database.pool_size`, each
//! on its own; a pooled connection still serves one worker at a time, and
//! no transaction is held across an HTTP call.
//!
//! An outcome is recorded after its attempt: a worker that has made one
//! waits for a connection up to [`RECORD_WAIT`] (a database outage or
//! restart, a saturated pool), and when the connection it got turns out to
//! be dead (the server restarted under an idle pooled connection), it
//! discards it and writes on a fresh one. Only when no connection came in
//! time is the outcome dropped: the delivery stays due and is attempted
//! again (at-least-once; the version check keeps a late write from
//! overwriting a newer one).
//!
//! A request goes out only while the leader's lease is fresh (the context's
//! `may_send`, see `lease`); after a stop or a halt, deliveries still queued
//! are dropped unattempted (they stay due). A panic while reconciling one
//! delivery is caught, logged with the event id, reported, and a connection
//! it held is discarded; the worker goes on and the delivery stays due.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender};
use uuid::Uuid;

use crate::db::due::Delivery;
use crate::db::statuses::StatusWriter;
use crate::db::{DbError, Pool, PooledClient, WorkerConn};
use crate::delivery::worker::{self, Context, Decision, Pending, Reconciled, StatusOutcome};
use crate::reconcile::leader::Hooks;
use crate::state::{RandomJitter, Verdict};

/// How long a worker that has an outcome to record waits for a database
/// connection (all checkouts and retries together) before it gives the
/// outcome up and leaves the delivery due. Long enough to ride out a
/// database restart or failover, short enough that a stop during an outage
/// (at most `delivery.timeout` more for the attempt) ends within systemd's
/// `TimeoutStopSec` of the shipped unit (2 min) with the default 30 s
/// delivery timeout.
pub const RECORD_WAIT: Duration = Duration::from_secs(60);

/// The stack size of a worker thread: 256 KiB in release builds (what
/// ships), where a worker's deepest paths (a TLS handshake through rustls,
/// reading a large response, name resolution through the C library, a
/// symbolised backtrace) run in a quarter of it; the daemon's workers touch
/// about 36 KiB (docs/benchmarks.md "Concurrency"). Debug builds (the test
/// suite) have far bigger frames: a TLS handshake overflows 128 KiB there,
/// so they get 512 KiB. Only touched pages are resident; below 2 MiB no
/// stack can be backed by a transparent huge page either.
pub const STACK_SIZE: usize = if cfg!(debug_assertions) {
    512 * 1024
} else {
    256 * 1024
};

/// How long a worker keeps sending a job's riders: past this since the
/// job started, the riders not sent yet are handed back to the leader
/// unsent ([`Finished::Returned`]), so that the outcomes already in hand
/// are recorded.
/// The leader gives riders only to a channel whose recent requests took a
/// small fraction of this (`health::RIDE_BUDGET`).
pub const RIDE_FOR: Duration = Duration::from_millis(100);

/// What the leader hands a worker: one delivery, with the cut-off of the
/// sweep that found it, and maybe riders.
#[derive(Debug)]
pub struct Job {
    /// The delivery.
    pub delivery: Delivery,
    /// More due deliveries of the same channel, sent one after another
    /// after `delivery` by the same worker and recorded with it in one
    /// statement (one commit instead of one each); empty unless the
    /// channel answers fast (the leader's riding rule,
    /// docs/architecture.md "Riders").
    pub riders: Vec<Delivery>,
    /// The sweep's cut-off.
    pub cutoff: DateTime<Utc>,
}

impl Job {
    /// The job's deliveries: the one handed out, then its riders.
    fn deliveries(&self) -> impl Iterator<Item = &Delivery> {
        std::iter::once(&self.delivery).chain(self.riders.iter())
    }
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
    /// A rider its worker did not send (the job ran out of time, or the
    /// channel stopped answering with a success): handed back untouched, to
    /// be handed out again in the same sweep.
    Returned(Box<Returned>),
}

/// A rider handed back unsent: nothing was sent or written for it, so the
/// row the leader read is still current.
#[derive(Debug, Clone)]
pub struct Returned {
    /// The delivery.
    pub delivery: Delivery,
    /// The cut-off of the sweep that found it.
    pub cutoff: DateTime<Utc>,
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

/// Reconciles every job until the channel closes, reporting each of its
/// deliveries into `done`. `stopped` says to drop what is still queued.
pub fn work(
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
    shared: &Shared<'_>,
    stopped: &dyn Fn() -> bool,
) {
    let mut jitter = RandomJitter;
    for job in jobs.iter() {
        let finished = if stopped() {
            job.deliveries().map(|_| Finished::Dropped).collect()
        } else {
            reconcile_job(&job, shared, stopped, &mut jitter)
        };
        for (d, finished) in job.deliveries().zip(finished) {
            let report = Done {
                status_id: d.status.id,
                finished,
            };
            if done.send(report).is_err() {
                return;
            }
        }
    }
}

/// Decides and sends each of a job's deliveries in turn without a
/// connection, then records their outcomes together on one taken for just
/// that; what came of each, in the job's order.
fn reconcile_job(
    job: &Job,
    shared: &Shared<'_>,
    stopped: &dyn Fn() -> bool,
    jitter: &mut RandomJitter,
) -> Vec<Finished> {
    let started = Instant::now();
    let mut finished: Vec<Option<Finished>> = Vec::new();
    let mut to_write: Vec<(usize, &Delivery, Pending)> = Vec::new();
    let mut riding = true;
    for (i, d) in job.deliveries().enumerate() {
        if i > 0 && stopped() {
            finished.push(Some(Finished::Dropped));
            continue;
        }
        if i > 0 && (!riding || started.elapsed() > RIDE_FOR) {
            finished.push(Some(Finished::Returned(Box::new(Returned {
                delivery: d.clone(),
                cutoff: job.cutoff,
            }))));
            continue;
        }
        let decided = catch_unwind(AssertUnwindSafe(|| {
            shared.hooks.before_delivery(d);
            worker::decide(shared.ctx, d, job.cutoff, jitter)
        }));
        finished.push(match decided {
            Ok(Decision::Nothing(StatusOutcome::Withheld)) => {
                riding = false;
                Some(Finished::Dropped)
            }
            Ok(Decision::Nothing(outcome)) => Some(Finished::Reconciled(Reconciled {
                outcome,
                next_attempt_at: None,
                first_attempt_latency: None,
                verdict: None,
                took: None,
            })),
            Ok(Decision::Write(pending)) => {
                // Riders follow only successes: an endpoint that fails or
                // stops answering gets none of the rest (they go back).
                riding &= pending.verdict.is_none_or(|v| v == Verdict::Success);
                to_write.push((i, d, pending));
                None
            }
            Err(panic) => {
                log::error!(
                    "worker panicked on event {} ({}) to channel {}; it stays due: {}",
                    d.event.id,
                    d.event.namespace,
                    d.status.target.id,
                    panic_text(&*panic)
                );
                riding = false;
                Some(Finished::Panicked)
            }
        });
    }
    let decided: Vec<(&Delivery, &Pending)> = to_write.iter().map(|(_, d, p)| (*d, p)).collect();
    for ((i, d, pending), recorded) in to_write.iter().zip(record_all(shared, &decided)) {
        finished[*i] = Some(match recorded {
            Ok(reconciled) => Finished::Reconciled(reconciled),
            Err(Failure::Db(e)) => {
                log::error!(
                    "delivery of event {} ({}) to channel {} left due: its outcome ({}: {}) {e}",
                    d.event.id,
                    d.event.namespace,
                    d.status.target.id,
                    pending.update.state,
                    pending.update.reason
                );
                Finished::Error
            }
            Err(Failure::Panicked(what)) => {
                log::error!(
                    "worker panicked recording event {} ({}) to channel {}; it stays due: {what}",
                    d.event.id,
                    d.event.namespace,
                    d.status.target.id,
                );
                Finished::Panicked
            }
        });
    }
    finished
        .into_iter()
        .map(|f| f.unwrap_or(Finished::Error))
        .collect()
}

/// A caught panic's message.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Why one outcome was not recorded.
enum Failure {
    /// A database error, as the log line says it.
    Db(String),
    /// Recording panicked (the message).
    Panicked(String),
}

/// Records the decided updates in one statement ([`record`]); each one's
/// result, in order. When a statement of several fails on a value
/// PostgreSQL cannot take (a data exception: one row's problem), each is
/// written alone, so that one bad outcome does not hold back the others.
fn record_all(
    shared: &Shared<'_>,
    decided: &[(&Delivery, &Pending)],
) -> Vec<Result<Reconciled, Failure>> {
    if decided.is_empty() {
        return Vec::new();
    }
    match catch_unwind(AssertUnwindSafe(|| record(shared, decided))) {
        Ok(Ok(all)) => all.into_iter().map(Ok).collect(),
        Ok(Err(RecordError::Db(e))) if decided.len() > 1 && e.data_exception().is_some() => decided
            .iter()
            .flat_map(|one| record_all(shared, std::slice::from_ref(one)))
            .collect(),
        Ok(Err(e)) => {
            let text = e.to_string();
            decided
                .iter()
                .map(|_| Err(Failure::Db(text.clone())))
                .collect()
        }
        Err(panic) => {
            let text = panic_text(&*panic);
            decided
                .iter()
                .map(|_| Err(Failure::Panicked(text.clone())))
                .collect()
        }
    }
}

/// Why recording outcomes failed, for the log line.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    /// No working connection within [`RECORD_WAIT`] (the pool timed out,
    /// or every connection tried broke).
    #[error("was not recorded (waited up to {} s for a working database connection): {source}", RECORD_WAIT.as_secs())]
    NoConnection {
        /// The last error.
        source: DbError,
    },
    /// The write itself failed.
    #[error("was not recorded: {0}")]
    Db(#[from] DbError),
}

/// How often a write that lost a deadlock (an operator's bulk resend
/// locking the same rows in another order) is tried again.
const CONFLICT_TRIES: usize = 3;

/// Writes the decided updates in one statement on a pooled connection taken
/// for it, waiting for one up to [`RECORD_WAIT`] in all; a connection found
/// dead is discarded and the write retried on another (at most once per
/// pooled connection, plus one), and a write that lost a deadlock is tried
/// again at once (up to [`CONFLICT_TRIES`] times). A retry is safe: when
/// the lost write had in fact committed, the version check refuses the
/// second (each row is then reported as changed concurrently), so nothing
/// is written twice.
fn record(
    shared: &Shared<'_>,
    decided: &[(&Delivery, &Pending)],
) -> Result<Vec<Reconciled>, RecordError> {
    let deadline = Instant::now() + RECORD_WAIT;
    let tries = shared.pool.max_size() as usize + 1;
    let gave_up = |source| RecordError::NoConnection { source };
    let (mut try_no, mut conflicts) = (0, 0);
    loop {
        try_no += 1;
        let mut conn = Checkout::take(shared, deadline).map_err(gave_up)?;
        match conn.write(decided) {
            Ok(r) => return Ok(r),
            Err(e) if e.is_conflict() && conflicts + 1 < CONFLICT_TRIES => {
                conflicts += 1;
                try_no -= 1;
            }
            Err(e)
                if (e.is_connection_lost() || conn.closed())
                    && try_no < tries
                    && Instant::now() < deadline =>
            {
                let (d, _) = decided[0];
                log::warn!(
                    "recording the delivery of event {} to channel {}{}: the connection broke ({e}); writing on another",
                    d.event.id,
                    d.status.target.id,
                    match decided.len() {
                        1 => String::new(),
                        n => format!(" and {} more", n - 1),
                    }
                );
                conn.discard();
            }
            Err(e) => {
                if e.is_connection_lost() || conn.closed() {
                    conn.discard();
                    return Err(gave_up(e));
                }
                return Err(e.into());
            }
        }
    }
}

/// A pooled connection taken to record one outcome. Dropping it gives it
/// back to the pool, or makes the pool discard it when it was marked, or
/// when a panic unwinds through it (its state is then unknown).
struct Checkout<'a> {
    conn: Option<PooledClient>,
    pool: &'a Pool,
    hooks: &'a dyn Hooks,
}

impl<'a> Checkout<'a> {
    /// Takes a connection, waiting until `deadline` at most; tells the hooks
    /// how long it waited and how many are now in use.
    fn take(shared: &Shared<'a>, deadline: Instant) -> Result<Checkout<'a>, DbError> {
        let asked = Instant::now();
        let got = shared
            .pool
            .get_timeout(deadline.saturating_duration_since(asked));
        shared.hooks.pool_wait(asked.elapsed());
        let conn = got?;
        shared.hooks.pool_in_use(in_use(shared.pool));
        Ok(Checkout {
            conn: Some(conn),
            pool: shared.pool,
            hooks: shared.hooks,
        })
    }

    /// The pooled connection (present until dropped).
    fn conn(&mut self) -> Result<&mut WorkerConn, DbError> {
        self.conn
            .as_deref_mut()
            .ok_or(DbError::NotConnected("worker"))
    }

    /// Records the decided updates, preparing the status write on this
    /// connection the first time it is used.
    fn write(&mut self, decided: &[(&Delivery, &Pending)]) -> Result<Vec<Reconciled>, DbError> {
        let WorkerConn { client, writer, .. } = self.conn()?;
        let writer = match writer {
            Some(w) => w,
            None => writer.insert(StatusWriter::prepare(client)?),
        };
        worker::record(client, writer, decided)
    }

    /// Whether the connection is closed (the server ended the session).
    fn closed(&self) -> bool {
        self.conn.as_ref().is_none_or(|c| c.client.is_closed())
    }

    /// Makes the pool drop this connection when it comes back.
    fn discard(&mut self) {
        if let Some(c) = self.conn.as_mut() {
            c.discard = true;
        }
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if std::thread::panicking() {
                conn.discard = true;
                return; // dropped here; no hook while unwinding
            }
            drop(conn);
            self.hooks.pool_in_use(in_use(self.pool));
        }
    }
}

/// Connections of `pool` taken by workers right now.
fn in_use(pool: &Pool) -> usize {
    let state = pool.state();
    state.connections.saturating_sub(state.idle_connections) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread with `stack` bytes of stack, as workers run.
    fn on_stack<T: Send + 'static>(stack: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn(f)
            .expect("spawn a thread")
            .join()
            .expect("the thread panicked")
    }

    /// The deepest things a worker's thread may do besides delivering (TLS
    /// and HTTP are covered by the integration tests, which run on real
    /// workers): a symbolised backtrace, as a panic hook prints it with
    /// `RUST_BACKTRACE`, and a name lookup through the C library. Both fit
    /// in a quarter of [`STACK_SIZE`], the margin docs/benchmarks.md gives;
    /// a stack overflow aborts this test binary.
    #[test]
    fn a_quarter_of_the_worker_stack_holds_a_symbolised_backtrace_and_a_name_lookup() {
        let (backtrace, _found) = on_stack(STACK_SIZE / 4, || {
            let backtrace = std::backtrace::Backtrace::force_capture().to_string();
            let found = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80))
                .map(Iterator::count)
                .unwrap_or(0);
            (backtrace, found)
        });
        assert!(!backtrace.is_empty());
    }
}
