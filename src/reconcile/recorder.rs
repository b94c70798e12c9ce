//! Group commit: the outcomes of deliveries, of any channels, written
//! together in one statement (docs/architecture.md "Recording outcomes").
//!
//! One durable commit costs PostgreSQL far more than one row's change, so
//! outcomes are committed in groups, the way PostgreSQL flushes its own
//! WAL. A worker that has an outcome queues it ([`Recorder::submit`]) and
//! goes back to sending. [`WRITERS`] recorder threads of the leader's scope
//! ([`Recorder::write_loop`]) each take everything queued at that moment,
//! write it in one statement on a pooled connection (each row guarded by
//! its version), report each delivery back to the main thread, and take
//! what has queued meanwhile. The queue is bounded ([`Recorder::new`]'s
//! `capacity`, counting the groups being written): a full queue makes
//! workers wait, it never drops an outcome. The recorder threads end once
//! every worker has ([`Recorder::worker_guard`]) and the queue is empty, so
//! the scope's join (before the unlock) waits for every queued outcome.
//! Should no recorder thread run (one could not be started), a worker that
//! finds fewer than [`WRITERS`] writes in progress writes the groups
//! itself.
//!
//! What is sent and not yet recorded is what a crash can repeat: at most
//! one outcome per worker not queued yet, plus the queue's capacity
//! ([`Recorder::crash_window`]).
//!
//! A connection found dead is discarded and the group written on another;
//! a group that lost a deadlock is written again (the version check makes
//! a repeat harmless); a group that fails on one row's value (a data
//! exception) is written one row at a time, so that one bad outcome does
//! not hold back the others. Only when no connection came within
//! [`RECORD_WAIT`] is a group given up: its deliveries stay due.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::db::due::Delivery;
use crate::db::statuses::StatusWriter;
use crate::db::{DbError, Pool, PooledClient, WorkerConn};
use crate::delivery::worker::{self, Pending, Reconciled};
use crate::reconcile::hooks::Hooks;
use crate::reconcile::job::{Back, Done, Finished};

/// How long a writer waits for a database connection (all checkouts and
/// retries together) before it gives the group up and leaves its
/// deliveries due. Long enough to ride out a database restart or failover,
/// short enough that a stop during an outage (at most `delivery.timeout`
/// more for the attempts in progress) ends within systemd's
/// `TimeoutStopSec` of the shipped unit (2 min) with the default 30 s
/// delivery timeout.
pub const RECORD_WAIT: Duration = Duration::from_secs(60);

/// How often a write that lost a deadlock (an operator's bulk resend
/// locking the same rows in another order) is tried again.
const CONFLICT_TRIES: usize = 3;

/// An outcome decided and waiting to be written.
struct Queued {
    delivery: Delivery,
    pending: Pending,
}

/// The queue and the workers writing from it.
#[derive(Default)]
struct Queue {
    /// Outcomes waiting for the next group.
    waiting: Vec<Queued>,
    /// Outcomes in the groups being written.
    writing: usize,
    /// Workers writing a group (each takes what is waiting when it is
    /// done), at most [`WRITERS`].
    writers: usize,
    /// Recorder threads running ([`Recorder::write_loop`]): while there
    /// are any, workers only queue.
    threads: usize,
    /// Workers that may still queue an outcome; recorder threads stop
    /// when none is left and the queue is empty.
    workers_left: usize,
}

/// How many groups may be written at once: the recorder threads. More
/// than one, so that the next group is written while one waits for its
/// commit to be flushed (PostgreSQL flushes concurrent commits together);
/// few, so that groups stay large (docs/benchmarks.md scenario 15).
pub const WRITERS: usize = 2;

/// The group-commit queue the workers of one leader scope share.
pub struct Recorder<'a> {
    pool: &'a Pool,
    hooks: &'a dyn Hooks,
    capacity: usize,
    queue: Mutex<Queue>,
    /// Signalled when a group was written (room in the queue).
    room: Condvar,
    /// Signalled when an outcome was queued, or the last worker left
    /// (work for the recorder threads).
    work: Condvar,
}

impl<'a> Recorder<'a> {
    /// A queue holding at most `capacity` outcomes (waiting and being
    /// written together), written on connections of `pool`.
    pub fn new(pool: &'a Pool, hooks: &'a dyn Hooks, capacity: usize) -> Recorder<'a> {
        Recorder {
            pool,
            hooks,
            capacity: capacity.max(1),
            queue: Mutex::new(Queue::default()),
            room: Condvar::new(),
            work: Condvar::new(),
        }
    }

    /// `n` workers will queue outcomes: call it before starting them and
    /// the recorder threads, and [`Recorder::worker_gone`] for each that
    /// could not be started.
    pub fn expect_workers(&self, n: usize) {
        self.lock().workers_left = n;
    }

    /// A worker will queue no more outcomes (it ended, or never started).
    pub fn worker_gone(&self) {
        let mut q = self.lock();
        q.workers_left = q.workers_left.saturating_sub(1);
        if q.workers_left == 0 {
            self.work.notify_all();
        }
    }

    /// Calls [`Recorder::worker_gone`] when dropped: a worker holds one
    /// for its whole life, so that a panic leaving it counts too.
    pub fn worker_guard(&self) -> WorkerGuard<'_, 'a> {
        WorkerGuard(self)
    }

    /// A recorder thread's life: writes whatever is queued, a group at a
    /// time, until every worker is gone and nothing is left. Reports every
    /// delivery it writes into `done`.
    pub fn write_loop(&self, done: &Sender<Back>) {
        let mut q = self.lock();
        q.threads += 1;
        loop {
            while q.waiting.is_empty() && q.workers_left > 0 {
                q = self.work.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            if q.waiting.is_empty() {
                break;
            }
            q = self.write_waiting(q, done);
        }
        q.threads -= 1;
    }

    /// Writes everything waiting in `q` as one group (the lock released
    /// meanwhile), then makes room; returns the lock taken again.
    fn write_waiting<'q>(
        &'q self,
        mut q: MutexGuard<'q, Queue>,
        done: &Sender<Back>,
    ) -> MutexGuard<'q, Queue> {
        let group = std::mem::take(&mut q.waiting);
        let n = group.len();
        q.writing += n;
        drop(q);
        self.write_group(group, done);
        let mut q = self.lock();
        q.writing -= n;
        self.room.notify_all();
        q
    }

    /// The queue's capacity for `workers` workers: twice the workers, so
    /// that while one group is written the workers can queue the next
    /// without waiting.
    pub fn capacity_for(workers: usize) -> usize {
        2 * workers.max(1)
    }

    /// The most deliveries sent and not yet recorded with `workers`
    /// workers (what a kill -9 may make the next leader send again): one
    /// per worker holding an outcome it has not queued yet, plus what the
    /// queue holds.
    pub fn crash_window(workers: usize) -> usize {
        workers + Recorder::capacity_for(workers)
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock (writes run outside it,
        // under `catch_unwind`); a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues the outcome of `delivery` for the recorder threads; without
    /// any, writes it and whatever else is queued when fewer than
    /// [`WRITERS`] workers are writing, reporting every delivery it writes
    /// into `done`. Waits while the queue is full.
    pub fn submit(&self, delivery: Delivery, pending: Pending, done: &Sender<Back>) {
        let mut q = self.lock();
        while q.waiting.len() + q.writing >= self.capacity {
            q = self.room.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        q.waiting.push(Queued { delivery, pending });
        if q.threads > 0 {
            self.work.notify_one();
            return;
        }
        if q.writers >= WRITERS {
            return;
        }
        q.writers += 1;
        while !q.waiting.is_empty() {
            q = self.write_waiting(q, done);
        }
        q.writers -= 1;
    }

    /// Writes one group and reports each of its deliveries.
    fn write_group(&self, group: Vec<Queued>, done: &Sender<Back>) {
        let decided: Vec<(&Delivery, &Pending)> =
            group.iter().map(|q| (&q.delivery, &q.pending)).collect();
        for ((d, pending), recorded) in decided.iter().zip(self.record_all(&decided)) {
            let finished = match recorded {
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
            };
            // The main thread reads until every worker is gone; a closed
            // channel means it is gone already, and nothing is left to tell.
            let _ = done.send(Back::Done(Done {
                status_id: d.status.id,
                finished,
            }));
        }
    }

    /// Records the decided updates in one statement ([`Recorder::record`]);
    /// each one's result, in order. When a statement of several fails on a
    /// value PostgreSQL cannot take (a data exception: one row's problem),
    /// each is written alone.
    fn record_all(&self, decided: &[(&Delivery, &Pending)]) -> Vec<Result<Reconciled, Failure>> {
        if decided.is_empty() {
            return Vec::new();
        }
        match catch_unwind(AssertUnwindSafe(|| self.record(decided))) {
            Ok(Ok(all)) => all.into_iter().map(Ok).collect(),
            Ok(Err(RecordError::Db(e))) if decided.len() > 1 && e.data_exception().is_some() => {
                decided
                    .iter()
                    .flat_map(|one| self.record_all(std::slice::from_ref(one)))
                    .collect()
            }
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

    /// Writes the decided updates in one statement on a pooled connection
    /// taken for it, waiting for one up to [`RECORD_WAIT`] in all; a
    /// connection found dead is discarded and the write retried on another
    /// (at most once per pooled connection, plus one), and a write that
    /// lost a deadlock is tried again at once (up to [`CONFLICT_TRIES`]
    /// times). A retry is safe: when the lost write had in fact committed,
    /// the version check refuses the second (each row is then reported as
    /// changed concurrently), so nothing is written twice.
    fn record(&self, decided: &[(&Delivery, &Pending)]) -> Result<Vec<Reconciled>, RecordError> {
        let deadline = Instant::now() + RECORD_WAIT;
        let tries = self.pool.max_size() as usize + 1;
        let gave_up = |source| RecordError::NoConnection { source };
        let (mut try_no, mut conflicts) = (0, 0);
        loop {
            try_no += 1;
            let mut conn = Checkout::take(self, deadline).map_err(gave_up)?;
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
}

/// A worker's presence for the recorder threads ([`Recorder::worker_guard`]).
pub struct WorkerGuard<'r, 'a>(&'r Recorder<'a>);

impl Drop for WorkerGuard<'_, '_> {
    fn drop(&mut self) {
        self.0.worker_gone();
    }
}

/// A caught panic's message.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
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

/// A pooled connection taken to record a group. Dropping it gives it back
/// to the pool, or makes the pool discard it when it was marked, or when a
/// panic unwinds through it (its state is then unknown).
struct Checkout<'a> {
    conn: Option<PooledClient>,
    pool: &'a Pool,
    hooks: &'a dyn Hooks,
}

impl<'a> Checkout<'a> {
    /// Takes a connection, waiting until `deadline` at most; tells the hooks
    /// how long it waited and how many are now in use.
    fn take(recorder: &Recorder<'a>, deadline: Instant) -> Result<Checkout<'a>, DbError> {
        let asked = Instant::now();
        let got = recorder
            .pool
            .get_timeout(deadline.saturating_duration_since(asked));
        recorder.hooks.pool_wait(asked.elapsed());
        let conn = got?;
        recorder.hooks.pool_in_use(in_use(recorder.pool));
        Ok(Checkout {
            conn: Some(conn),
            pool: recorder.pool,
            hooks: recorder.hooks,
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
