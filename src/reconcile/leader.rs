//! The leader: while this instance holds the lock, one worker scope stays
//! open and the main thread hands out due deliveries as soon as they are due
//! (DESIGN.md "The leader loop"). `once` is the same machinery making one
//! sweep of what is due at its start.
//!
//! ```text
//! try lock ── held elsewhere ─> LockHeld
//! record the leader row (a stale one: wait TAKEOVER_GRACE)
//! scope {
//!   spawn N workers (own pooled connection each)
//!   loop until stop / lock lost / (once) sweep done and nothing in flight:
//!     outcomes from workers -> free their registry slots, count them
//!     wait for the first of: notification | a worker finished (when full) |
//!                            earliest known retry due | interval tick | stop
//!     sweep: page due deliveries (keyset, cut-off fixed per sweep), skip
//!            what is in flight, scheduler picks, hand out over bounded()
//!   stop handing out; workers finish in-flight deliveries and record them
//! } join
//! remove the leader row, unlock
//! ```
//!
//! A wake-up that arrives while a sweep runs makes another sweep follow it,
//! so nothing due is missed and sweeps never overlap.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender, TrySendError};

use crate::config::Config;
use crate::db::due::{self, Cursor, Delivery, Pager};
use crate::db::{self, leaders, DbError, Pool};
use crate::delivery::http::Sender as HttpSender;
use crate::delivery::worker::Context;
use crate::lock::{self, LeaderLock};
use crate::reconcile::lease::{
    Lease, LockWatch, IDLE_CHECK_EVERY, LOCK_CHECK_EVERY, TAKEOVER_GRACE,
};
use crate::reconcile::listener::Wake;
use crate::reconcile::report::{Report, Tally};
use crate::reconcile::scheduler::{self, Candidate, InFlight};
use crate::reconcile::worker::{self, Done, Finished, Job, Shared};
use crate::state::Policy;

/// Observes the leader (progress display, metrics, tests injecting faults).
/// Every method has a no-op default. All but `before_delivery` run on the
/// main thread.
pub trait Hooks: Sync {
    /// Leading began; `due` deliveries are due now (`once`: the total).
    fn started(&self, _due: u64) {}
    /// A worker is about to reconcile `delivery` (runs inside the panic
    /// guard, on the worker's thread).
    fn before_delivery(&self, _delivery: &Delivery) {}
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
    /// The earliest known scheduled retry fell due.
    RetryDue,
    /// The `interval` tick (the safety net).
    Tick,
}

impl WakeCause {
    /// Every cause, for metrics labels.
    pub const ALL: [WakeCause; 6] = [
        WakeCause::Start,
        WakeCause::Notified,
        WakeCause::Listening,
        WakeCause::WorkerDone,
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
            WakeCause::RetryDue => "retry_due",
            WakeCause::Tick => "interval",
        }
    }
}

/// What an attempt to lead came to.
#[derive(Debug)]
pub enum PassOutcome {
    /// Another instance holds the lock; nothing was done.
    LockHeld,
    /// This instance led (its report says whether it ended normally).
    Ran(Report),
}

/// Everything leading needs, built once from the config.
pub struct Reconciler {
    config: Config,
    pool: Pool,
    sender: HttpSender,
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
            sender: HttpSender::new(&config.delivery),
            policy: policy_from(config),
            lock: LeaderLock::new(&config.database, &config.reconciler.lock_key),
        })
    }

    /// The leader lock (the daemon reports whether it is held).
    pub fn lock(&self) -> &LeaderLock {
        &self.lock
    }

    /// `once`: takes the lock, makes one sweep of what is due now (cut-off
    /// computed once), waits for every outcome, joins, unlocks. `stop` ends
    /// the hand-out early. `Err`: it could not start (database unreachable).
    pub fn run_pass(
        &mut self,
        stop: &AtomicBool,
        hooks: &dyn Hooks,
    ) -> Result<PassOutcome, DbError> {
        lead(self, Mode::Once, stop, hooks)
    }

    /// `run`: takes the lock and leads until `stop` or until the lock is
    /// lost, handing out deliveries as they fall due; `wakes` are the
    /// listener's wake-ups. Joins and unlocks before it returns.
    pub fn lead(
        &mut self,
        stop: &AtomicBool,
        hooks: &dyn Hooks,
        wakes: &Receiver<Wake>,
    ) -> Result<PassOutcome, DbError> {
        lead(self, Mode::Continuous(wakes), stop, hooks)
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

/// One sweep (`once`) or continuous leading (`run`).
#[derive(Clone, Copy)]
enum Mode<'a> {
    Once,
    Continuous(&'a Receiver<Wake>),
}

/// How long the main thread waits at most before it looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The leader row's heartbeat: at most this often, when in flight changed.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

fn lead(
    r: &mut Reconciler,
    mode: Mode<'_>,
    stop: &AtomicBool,
    hooks: &dyn Hooks,
) -> Result<PassOutcome, DbError> {
    if !r.lock.try_acquire()? {
        log::debug!("another instance holds the lock");
        return Ok(PassOutcome::LockHeld);
    }
    let started = Instant::now();
    let started_at = Utc::now();
    let key = r.lock.key();
    let unclean = match r
        .lock
        .client_mut()
        .and_then(|c| leaders::claim(c, key, &lock::app_name("lock")))
    {
        Ok(unclean) => unclean,
        Err(e) => {
            r.lock.forget_connection();
            return Err(e);
        }
    };
    if let Mode::Continuous(_) = mode {
        log::info!("leading: took the lock {:?}", r.config.reconciler.lock_key);
    }
    if unclean {
        // The last leader's connection died without a clean stop: it may
        // still be running until its lease runs out. Let it.
        log::info!(
            "the previous leader did not stop cleanly; waiting {} ms before handing out",
            TAKEOVER_GRACE.as_millis()
        );
        let until = Instant::now() + TAKEOVER_GRACE;
        while Instant::now() < until && !stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    let workers = r.config.reconciler.workers;
    let lease = Lease::new();
    let halt = AtomicBool::new(false);
    let (job_tx, job_rx) = bounded::<Job>(r.config.reconciler.queue_capacity);
    let (done_tx, done_rx) = unbounded::<Done>();
    let ctx = Context {
        sender: &r.sender,
        policy: &r.policy,
    };
    let shared = Shared {
        pool: &r.pool,
        ctx: &ctx,
        lease: &lease,
        hooks,
    };
    let mut main = Main::new(&r.config, mode, hooks);
    let mut failure: Option<String> = None;
    {
        let (shared, halt) = (&shared, &halt);
        let stopped = move || stop.load(Relaxed) || halt.load(Relaxed);
        std::thread::scope(|scope| {
            for i in 0..workers {
                let (jobs, done) = (job_rx.clone(), done_tx.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn_scoped(scope, move || worker::work(&jobs, &done, shared, &stopped));
                if let Err(e) = spawned {
                    log::error!("cannot start worker thread {i}: {e}");
                }
            }
            drop(job_rx);
            drop(done_tx);
            failure = main.run(&mut r.lock, &lease, &job_tx, &done_rx, stop);
            if failure.is_some() {
                // Another instance may lead now: workers drop what is queued.
                halt.store(true, Relaxed);
            }
            drop(job_tx);
            // Workers finish the deliveries they are attempting, record them
            // and exit; their reports complete the tally. The scope joins
            // every worker here; the lock is released only after that.
            for done in done_rx.iter() {
                main.finished(done);
            }
        });
    }
    if failure.is_none() {
        if let Err(e) = r.lock.client_mut().and_then(|c| leaders::release(c, key)) {
            failure = Some(lock_failure("removing the leader record", &e));
        }
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
    let mut report = Report::new(&main.tally, started_at, started.elapsed());
    report.cutoff = main.first_cutoff;
    report.due_at_start = main.due_at_start;
    report.failure = failure;
    report.stopped_early = stop.load(Relaxed) && !main.swept_all;
    Ok(PassOutcome::Ran(report))
}

/// The report's wording for a failed step on the lock connection.
fn lock_failure(step: &str, e: &DbError) -> String {
    if e.is_connection_lost() {
        format!("lost the lock connection while {step}: {e}")
    } else {
        format!("{step} failed: {e}")
    }
}

/// A sweep in progress: its cut-off (fixed for the sweep) and where it is.
#[derive(Debug, Clone, Copy)]
struct Sweep {
    cutoff: DateTime<Utc>,
    cursor: Cursor,
}

/// The main thread's state while it leads.
struct Main<'a> {
    mode: Mode<'a>,
    hooks: &'a dyn Hooks,
    interval: Duration,
    delay: chrono::Duration,
    page_size: u32,
    /// Deliveries that may be in flight at once: one per worker plus the
    /// hand-off channel's capacity.
    capacity: usize,
    in_flight: InFlight,
    sweep: Option<Sweep>,
    /// A wake-up came during the sweep: sweep again after it.
    again: bool,
    next_retry: Option<DateTime<Utc>>,
    next_tick: Instant,
    /// The hand-off channel was full: look again soon.
    channel_full: bool,
    watch: LockWatch,
    tally: Tally,
    window: Tally,
    window_started: (Instant, DateTime<Utc>),
    heartbeat: (Instant, usize),
    first_cutoff: Option<DateTime<Utc>>,
    due_at_start: u64,
    /// `once`: the sweep reached the end of what was due.
    swept_all: bool,
}

impl<'a> Main<'a> {
    fn new(config: &Config, mode: Mode<'a>, hooks: &'a dyn Hooks) -> Main<'a> {
        let r = &config.reconciler;
        Main {
            mode,
            hooks,
            interval: r.interval,
            delay: chrono::Duration::from_std(r.next_attempt_delay)
                .unwrap_or(chrono::Duration::zero()),
            page_size: r.page_size,
            capacity: r.workers + r.queue_capacity,
            in_flight: InFlight::default(),
            sweep: None,
            again: false,
            next_retry: None,
            next_tick: Instant::now() + r.interval,
            channel_full: false,
            watch: LockWatch::new(),
            tally: Tally::default(),
            window: Tally::default(),
            window_started: (Instant::now(), Utc::now()),
            heartbeat: (Instant::now(), 0),
            first_cutoff: None,
            due_at_start: 0,
            swept_all: false,
        }
    }

    /// Leads until stop (None), lock loss or a failure on the lock
    /// connection (Some(why)), or, for `once`, until the sweep is done and
    /// every outcome is in.
    fn run(
        &mut self,
        lock: &mut LeaderLock,
        lease: &Lease,
        jobs: &Sender<Job>,
        done: &Receiver<Done>,
        stop: &AtomicBool,
    ) -> Option<String> {
        let pager = match lock
            .client_mut()
            .and_then(|c| Pager::prepare(c, self.page_size))
        {
            Ok(p) => p,
            Err(e) => return Some(lock_failure("preparing the due query", &e)),
        };
        let cutoff = self.cutoff_now();
        self.first_cutoff = Some(cutoff);
        match lock.client_mut().and_then(|c| due::count_due(c, cutoff)) {
            Ok(n) => self.due_at_start = n.max(0) as u64,
            Err(e) => return Some(lock_failure("counting due deliveries", &e)),
        }
        self.hooks.started(self.due_at_start);
        let never = crossbeam_channel::never();
        let wakes = match self.mode {
            Mode::Once => &never,
            Mode::Continuous(w) => {
                match lock
                    .client_mut()
                    .and_then(|c| due::next_due_after(c, cutoff))
                {
                    Ok(t) => self.next_retry = t,
                    Err(e) => return Some(lock_failure("finding the next due delivery", &e)),
                }
                w
            }
        };
        self.start_sweep(cutoff);
        self.hooks.woke(WakeCause::Start);
        loop {
            self.hooks.beat();
            while let Ok(d) = done.try_recv() {
                self.on_done(d);
            }
            if stop.load(Relaxed) {
                return None;
            }
            if let Mode::Continuous(_) = self.mode {
                if let Err(f) = self.timers(lock) {
                    return Some(f);
                }
            }
            let every = if self.in_flight.is_empty() {
                IDLE_CHECK_EVERY
            } else {
                LOCK_CHECK_EVERY
            };
            if !self.watch.check_if_due(lock, lease, every) {
                return Some("lost the lock connection".into());
            }
            let mut progressed = false;
            if self.sweep.is_some() && self.in_flight.len() < self.capacity {
                match self.step(lock, lease, &pager, jobs) {
                    Ok(p) => progressed = p,
                    Err(f) => return Some(f),
                }
            }
            if matches!(self.mode, Mode::Once) && self.sweep.is_none() {
                if self.in_flight.is_empty() {
                    return None;
                }
            } else if progressed && self.sweep.is_some() && self.in_flight.len() < self.capacity {
                continue;
            }
            let timeout = self.wait_for(every);
            select! {
                recv(done) -> d => match d {
                    Ok(d) => {
                        let was_full = self.in_flight.len() >= self.capacity;
                        self.on_done(d);
                        if was_full && self.sweep.is_some() {
                            self.hooks.woke(WakeCause::WorkerDone);
                        }
                    }
                    Err(_) => return Some("no worker thread is running".into()),
                },
                recv(wakes) -> w => match w {
                    Ok(Wake::Notified) => self.wake(WakeCause::Notified),
                    Ok(Wake::Listening) => self.wake(WakeCause::Listening),
                    // The listener is gone; the interval tick still sweeps.
                    Err(_) => {}
                },
                default(timeout) => {}
            }
        }
    }

    /// How long to wait: until the next timer, the next lock check (while
    /// anything is in flight), or the stop poll.
    fn wait_for(&self, every: Duration) -> Duration {
        let now = Instant::now();
        let mut until = now + STOP_POLL;
        if self.channel_full {
            until = until.min(now + Duration::from_millis(2));
        }
        if !self.in_flight.is_empty() {
            until = until.min(self.watch.due_at(every));
        }
        if let Mode::Continuous(_) = self.mode {
            until = until.min(self.next_tick);
            if let Some(t) = self.next_retry {
                let left = (t - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                until = until.min(now + left);
            }
        }
        until.saturating_duration_since(now)
    }

    /// `run`'s timers: the interval tick (a sweep, the retry timer from the
    /// database, the interval's report) and the earliest known retry; the
    /// leader row's heartbeat.
    fn timers(&mut self, lock: &mut LeaderLock) -> Result<(), String> {
        let key = lock.key();
        if Instant::now() >= self.next_tick {
            self.next_tick = Instant::now() + self.interval;
            let cutoff = self.cutoff_now();
            let client = lock
                .client_mut()
                .map_err(|e| lock_failure("the interval sweep", &e))?;
            let next = due::next_due_after(client, cutoff)
                .map_err(|e| lock_failure("finding the next due delivery", &e))?;
            let due = due::count_due(client, cutoff)
                .map_err(|e| lock_failure("counting due deliveries", &e))?;
            self.next_retry = match (self.next_retry, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let (since, since_at) = self.window_started;
            let report = Report::new(&self.window, since_at, since.elapsed());
            if report.deliveries_seen > 0 {
                log::info!("{}", report.summary("leading"));
            } else {
                log::debug!("{}", report.summary("leading"));
            }
            self.hooks.interval(&report, due.max(0) as u64);
            self.window = Tally::default();
            self.window_started = (Instant::now(), Utc::now());
            self.wake(WakeCause::Tick);
        }
        if self.next_retry.is_some_and(|t| t <= Utc::now()) {
            self.next_retry = None;
            self.wake(WakeCause::RetryDue);
        }
        let (last, n) = self.heartbeat;
        if self.in_flight.len() != n && last.elapsed() >= HEARTBEAT_EVERY {
            let n = self.in_flight.len();
            lock.client_mut()
                .and_then(|c| leaders::heartbeat(c, key, n))
                .map_err(|e| lock_failure("updating the leader record", &e))?;
            self.heartbeat = (Instant::now(), n);
        }
        Ok(())
    }

    fn cutoff_now(&self) -> DateTime<Utc> {
        Utc::now() - self.delay
    }

    fn start_sweep(&mut self, cutoff: DateTime<Utc>) {
        self.sweep = Some(Sweep {
            cutoff,
            cursor: due::start_cursor(),
        });
    }

    /// A reason to sweep: now, or after the sweep in progress.
    fn wake(&mut self, cause: WakeCause) {
        self.hooks.woke(cause);
        if self.sweep.is_some() {
            self.again = true;
        } else {
            self.start_sweep(self.cutoff_now());
        }
    }

    /// One page of the sweep: read it, let the scheduler pick, hand out.
    /// Returns whether it moved (its cursor advanced, or it reached the end).
    fn step(
        &mut self,
        lock: &mut LeaderLock,
        lease: &Lease,
        pager: &Pager,
        jobs: &Sender<Job>,
    ) -> Result<bool, String> {
        let Some(mut sweep) = self.sweep else {
            return Ok(false);
        };
        // A fresh look at the lock right before handing out (renews the
        // lease the workers check).
        if !self.watch.check_if_due(lock, lease, LOCK_CHECK_EVERY) {
            return Err("lost the lock connection while handing out".into());
        }
        let page = lock
            .client_mut()
            .and_then(|c| pager.page(c, sweep.cutoff, sweep.cursor))
            .map_err(|e| lock_failure("paging", &e))?;
        let candidates: Vec<Candidate> = page
            .iter()
            .map(|d| Candidate {
                status_id: d.status.id,
                channel_id: d.status.target.id,
            })
            .collect();
        let cursors: Vec<Cursor> = page.iter().map(Delivery::cursor).collect();
        let plan = scheduler::plan(
            &candidates,
            &self.in_flight,
            self.capacity - self.in_flight.len(),
        );
        let mut consumed = plan.consumed;
        let mut page: Vec<Option<Delivery>> = page.into_iter().map(Some).collect();
        let before = self.in_flight.len();
        self.channel_full = false;
        for &i in &plan.hand_out {
            let Some(delivery) = page[i].take() else {
                continue;
            };
            match jobs.try_send(Job {
                delivery,
                cutoff: sweep.cutoff,
            }) {
                Ok(()) => self.in_flight.insert(candidates[i]),
                Err(TrySendError::Full(_)) => {
                    // Resume at this one; it was not handed out.
                    consumed = i;
                    self.channel_full = true;
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err("no worker thread is running".into())
                }
            }
        }
        let handed = self.in_flight.len() - before;
        if handed > 0 {
            self.hooks.in_flight(self.in_flight.len());
        }
        if consumed > 0 {
            sweep.cursor = cursors[consumed - 1];
        }
        let at_end = cursors.len() < self.page_size as usize && consumed == cursors.len();
        if at_end {
            self.sweep = None;
            if matches!(self.mode, Mode::Once) {
                self.swept_all = true;
            } else if std::mem::take(&mut self.again) {
                self.start_sweep(self.cutoff_now());
            }
        } else {
            self.sweep = Some(sweep);
        }
        Ok(consumed > 0 || at_end)
    }

    /// A worker's report: free its slot, count it, note its retry time.
    fn on_done(&mut self, done: Done) {
        if self.in_flight.remove(&done.status_id) {
            self.hooks.in_flight(self.in_flight.len());
        }
        self.finished(done);
    }

    /// Counts a report (also after the hand-out ended).
    fn finished(&mut self, done: Done) {
        self.in_flight.remove(&done.status_id);
        self.tally.count(&done);
        self.window.count(&done);
        if let Finished::Reconciled(r) = &done.finished {
            if let Some(t) = r.next_attempt_at {
                self.next_retry = Some(self.next_retry.map_or(t, |n| n.min(t)));
            }
        }
        self.hooks.finished(&done, &self.tally);
    }
}
