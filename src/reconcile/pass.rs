//! One reconciliation pass, orchestrated by the main thread.
//!
//! ```text
//! main thread (lock connection)               worker threads (own pooled connection)
//! try lock ── not acquired ─> Skipped
//! cutoff = now - next_attempt_delay (once)
//! loop: page (keyset) ── send ──> bounded ──> recv, reconcile, count
//!       stop / paging error: stop sending
//! drop sender; scope joins all workers
//! unlock
//! ```
//!
//! The hand-off to the workers happens in exactly one place
//! ([`hand_out`]); it is where per-channel limits will go.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use chrono::Utc;
use crossbeam_channel::{bounded, SendTimeoutError, Sender as ChannelSender};

use crate::config::Config;
use crate::db::due::{self, DueEvent, Pager};
use crate::db::{self, DbError, Pool};
use crate::delivery::http::Sender;
use crate::delivery::worker::Context;
use crate::lock::{self, LeaderLock};
use crate::reconcile::report::{Report, Tally};
use crate::reconcile::worker;
use crate::state::Policy;

/// Observes a pass (progress display, tests injecting faults). Every method
/// has a no-op default.
pub trait Hooks: Sync {
    /// The pass holds the lock; `due` events are due at its start.
    fn started(&self, _due: u64) {}
    /// A worker is about to reconcile `event` (runs inside the panic guard).
    fn before_event(&self, _event: &DueEvent) {}
    /// A worker finished an event; `tally` has the counts so far.
    fn event_done(&self, _tally: &Tally) {}
}

/// Hooks that do nothing.
pub struct NoHooks;
impl Hooks for NoHooks {}

/// What a pass came to.
#[derive(Debug)]
pub enum PassOutcome {
    /// Another instance holds the lock; nothing was done.
    LockHeld,
    /// The pass ran (its report says whether it completed).
    Ran(Report),
}

/// Everything passes need, built once from the config.
pub struct Reconciler {
    config: Config,
    pool: Pool,
    sender: Sender,
    policy: Policy,
    lock: LeaderLock,
}

impl Reconciler {
    /// Builds the pool (lazily connecting), the HTTP agent, the policy and
    /// the lock from `config`.
    pub fn new(config: &Config) -> Result<Reconciler, DbError> {
        let pool = db::pool(
            &config.database,
            config.database.pool_size,
            &lock::app_name("worker"),
        )?;
        Ok(Reconciler {
            config: config.clone(),
            pool,
            sender: Sender::new(&config.delivery),
            policy: policy_from(config),
            lock: LeaderLock::new(&config.database, &config.reconciler.lock_key),
        })
    }

    /// The leader lock (the daemon reports whether it is held).
    pub fn lock(&self) -> &LeaderLock {
        &self.lock
    }

    /// Runs one pass. `stop` ends paging early (shutdown). `Err` means the
    /// pass could not start (database unreachable).
    pub fn run_pass(
        &mut self,
        stop: &AtomicBool,
        hooks: &dyn Hooks,
    ) -> Result<PassOutcome, DbError> {
        run_pass(self, stop, hooks)
    }
}

/// The retry policy from `[reconciler]` and `[delivery]`.
pub fn policy_from(config: &Config) -> Policy {
    Policy {
        retry_schedule: config.delivery.retry_schedule.clone(),
        pending_timeout: config.reconciler.pending_timeout,
        sending_timeout: config.reconciler.sending_timeout,
        ..Policy::default()
    }
}

/// See [`Reconciler::run_pass`].
pub fn run_pass(
    r: &mut Reconciler,
    stop: &AtomicBool,
    hooks: &dyn Hooks,
) -> Result<PassOutcome, DbError> {
    if !r.lock.try_acquire()? {
        log::debug!("another instance holds the lock; skipping this pass");
        return Ok(PassOutcome::LockHeld);
    }
    let started = Instant::now();
    let started_at = Utc::now();
    let delay = chrono::Duration::from_std(r.config.reconciler.next_attempt_delay)
        .unwrap_or(chrono::Duration::zero());
    let cutoff = started_at - delay;

    let tally = Tally::default();
    let halt = AtomicBool::new(false);
    let mut failure: Option<String> = None;
    let mut due_at_start = 0;
    {
        let (tx, rx) = bounded::<DueEvent>(r.config.reconciler.queue_capacity);
        let ctx = Context {
            sender: &r.sender,
            policy: &r.policy,
            cutoff,
        };
        let (pool, tally_ref, halt_ref, ctx_ref) = (&r.pool, &tally, &halt, &ctx);
        let stopped = || stop.load(Relaxed) || halt_ref.load(Relaxed);
        std::thread::scope(|scope| {
            for i in 0..r.config.reconciler.workers {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn_scoped(scope, move || {
                        let events = rx.iter().take_while(|_| !stopped());
                        worker::work(events, pool, ctx_ref, tally_ref, hooks);
                    });
                if let Err(e) = spawned {
                    log::error!("cannot start worker thread {i}: {e}");
                }
            }
            drop(rx);
            let mut watch = LockWatch::new();
            match r.lock.client_mut().and_then(|c| due::count_due(c, cutoff)) {
                Ok(n) => {
                    due_at_start = n.max(0) as u64;
                    hooks.started(due_at_start);
                    failure = page_all(
                        &mut r.lock,
                        &mut watch,
                        cutoff,
                        r.config.reconciler.page_size,
                        &tx,
                        &stopped,
                    );
                }
                Err(e) => failure = Some(paging_failure("counting due events", &e)),
            }
            if failure.is_none() {
                // Everything is handed out; keep watching the lock while the
                // queue drains, so queued events are not delivered by a
                // leader that no longer is one.
                failure = watch_drain(&mut r.lock, &mut watch, &tx, &stopped);
            }
            if failure.is_some() {
                // Another instance may lead now: nothing more is handed out,
                // and workers stop taking queued events.
                halt_ref.store(true, Relaxed);
            }
            drop(tx);
            // The scope joins every worker here; the lock is released (or
            // its connection dropped) only after that.
        });
    }
    if failure.is_some() {
        // The lock connection failed or is suspect: drop it, which releases
        // the lock if the server still held it. Workers are joined.
        r.lock.forget_connection();
    } else if let Err(e) = r.lock.release() {
        failure = Some(format!(
            "the lock connection failed before the lock was released: {e}"
        ));
    }
    let mut report = Report::from_tally(&tally);
    report.started_at = Some(started_at);
    report.cutoff = Some(cutoff);
    report.due_at_start = due_at_start;
    report.failure = failure;
    report.stopped_early = stop.load(Relaxed);
    let elapsed = started.elapsed();
    report.duration_ms = elapsed.as_millis() as u64;
    report.events_per_second = if elapsed.as_secs_f64() > 0.0 {
        report.events_seen as f64 / elapsed.as_secs_f64()
    } else {
        0.0
    };
    if report.ok() {
        log::info!("{}", report.summary());
    } else {
        log::error!("{}", report.summary());
    }
    Ok(PassOutcome::Ran(report))
}

/// Pages every due event on the lock connection and hands each out. Returns
/// the failure that stopped it, if any.
fn page_all(
    lock: &mut LeaderLock,
    watch: &mut LockWatch,
    cutoff: chrono::DateTime<Utc>,
    page_size: u32,
    tx: &ChannelSender<DueEvent>,
    stopped: &dyn Fn() -> bool,
) -> Option<String> {
    let mut cursor = due::start_cursor();
    let pager = match lock.client_mut().and_then(|c| Pager::prepare(c, page_size)) {
        Ok(pager) => pager,
        Err(e) => return Some(paging_failure("preparing the due query", &e)),
    };
    while !stopped() {
        let page = match lock
            .client_mut()
            .and_then(|c| pager.page(c, cutoff, cursor))
        {
            Ok(page) => page,
            Err(e) => return Some(paging_failure("paging", &e)),
        };
        let Some(last) = page.last() else { break };
        cursor = last.cursor();
        for event in page {
            match hand_out(tx, event, stopped, &mut || watch.alive(lock)) {
                HandOut::Sent => {}
                HandOut::Stopped => return None,
                HandOut::NoWorkers => return Some("no worker thread is running".into()),
                HandOut::LockLost => {
                    return Some("lost the lock connection while handing out events".into())
                }
            }
        }
    }
    None
}

/// Waits until the workers have taken every queued event, checking the
/// lock connection meanwhile.
fn watch_drain(
    lock: &mut LeaderLock,
    watch: &mut LockWatch,
    tx: &ChannelSender<DueEvent>,
    stopped: &dyn Fn() -> bool,
) -> Option<String> {
    while !tx.is_empty() && !stopped() {
        if !watch.alive(lock) {
            return Some("lost the lock connection while the queue drained".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The report's wording for a failed step on the lock connection.
fn paging_failure(step: &str, e: &DbError) -> String {
    if e.is_connection_lost() {
        format!("lost the lock connection while {step}: {e}")
    } else {
        format!("{step} failed: {e}")
    }
}

/// How often the lock connection is checked while events are handed out.
const LOCK_CHECK_EVERY: Duration = Duration::from_millis(50);

/// How long one check may take before the connection counts as lost.
const LOCK_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks that the lock connection is alive, at most every
/// [`LOCK_CHECK_EVERY`]: a page can take long to hand out when workers are
/// slow, and another instance may lead as soon as the connection is gone.
struct LockWatch {
    last: Instant,
}

impl LockWatch {
    fn new() -> LockWatch {
        LockWatch {
            last: Instant::now(),
        }
    }

    fn alive(&mut self, lock: &mut LeaderLock) -> bool {
        if self.last.elapsed() < LOCK_CHECK_EVERY {
            return true;
        }
        self.last = Instant::now();
        lock.client_mut()
            .map(|c| c.is_valid(LOCK_CHECK_TIMEOUT).is_ok())
            .unwrap_or(false)
    }
}

/// What became of one event at the hand-off.
enum HandOut {
    /// A worker will take it.
    Sent,
    /// The pass was stopped (shutdown).
    Stopped,
    /// Every worker is gone: nobody will take it.
    NoWorkers,
    /// The lock connection is gone: another instance may lead.
    LockLost,
}

/// Hands one event to the workers, waiting while the channel is full
/// (backpressure), giving up when the pass is stopped or the lock connection
/// is gone. The one place where work is handed to workers.
fn hand_out(
    tx: &ChannelSender<DueEvent>,
    mut event: DueEvent,
    stopped: &dyn Fn() -> bool,
    alive: &mut dyn FnMut() -> bool,
) -> HandOut {
    loop {
        if stopped() {
            return HandOut::Stopped;
        }
        if !alive() {
            return HandOut::LockLost;
        }
        match tx.send_timeout(event, LOCK_CHECK_EVERY) {
            Ok(()) => return HandOut::Sent,
            Err(SendTimeoutError::Timeout(e)) => event = e,
            Err(SendTimeoutError::Disconnected(_)) if stopped() => return HandOut::Stopped,
            Err(SendTimeoutError::Disconnected(_)) => return HandOut::NoWorkers,
        }
    }
}
