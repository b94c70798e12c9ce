//! The leader: while this instance holds the lock, one worker scope stays
//! open and the main thread hands out due deliveries as soon as they are due
//! (docs/architecture.md "The leader loop"). `once` is the same machinery making one
//! sweep of what is due at its start.
//!
//! ```text
//! try lock ── held elsewhere ─> LockHeld
//! record the leader row (a stale one: wait TAKEOVER_GRACE)
//! scope {
//!   spawn N workers (each takes a pooled connection only to record an outcome)
//!   loop until stop / lock lost / (once) sweep done and nothing in flight:
//!     outcomes from workers -> free their registry slots, count them
//!     wait for the first of: notification | a worker finished (when full) |
//!                            earliest known retry due | interval tick | stop
//!     sweep: find the channels with due work (cut-off fixed per sweep),
//!            read each one's oldest due deliveries (keyset per channel),
//!            skip what is in flight, scheduler picks round-robin within
//!            each channel's cap and breaker, hand out over bounded()
//!   stop handing out; workers finish in-flight deliveries and record them
//!   (`run`: the pruner thread, `pruner`, stops after its step in progress)
//! } join
//! remove the leader row, unlock
//! ```
//!
//! A wake-up starts a fresh sweep at once (one in progress is dropped, and
//! what it read but did not hand out is read again), so nothing due is
//! missed, sweeps never overlap, and new work is found however long a
//! backlog the last sweep was working through. Outcomes feed each channel's
//! breaker and run of failures (`health`); the channel rows they change are
//! written on the lock connection at the next turn.
//!
//! With `reconciler.shards` > 1 the lock is one lock per shard and the loop
//! hands out only the deliveries of the shards it leads (the channels query
//! asks only for their channels); taking and giving up shards while it
//! leads is `shard::set`'s (the hooks below call it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender, TrySendError};

use crate::config::Config;
use crate::db::due::{self, Cursor, Delivery, Horizon, Pager};
use crate::db::{self, channels, controls, leaders, DbError, Pool};
use crate::delivery::http::Sender as HttpSender;
use crate::delivery::worker::{Context, StatusOutcome};
use crate::lock::{self, LeaderLock};
use crate::reconcile::controls::ControlState;
use crate::reconcile::health::{Channels, Write};
use crate::reconcile::hooks::{Hooks, WakeCause};
use crate::reconcile::job::{Back, Done, Finished, Job};
use crate::reconcile::lease::{
    Lease, LockWatch, HEARTBEAT_EVERY, IDLE_CHECK_EVERY, LOCK_CHECK_EVERY, TAKEOVER_GRACE,
};
use crate::reconcile::listener::Wake;
use crate::reconcile::recorder::Recorder;
use crate::reconcile::report::{Report, Tally};
use crate::reconcile::scheduler::{self, InFlight, Lane};
use crate::reconcile::worker::{self, Shared};
use crate::shard::set::ShardSet;
use crate::state::{self, Check, Policy};
use uuid::Uuid;

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
        let mut lock = LeaderLock::new(
            &config.database,
            &config.reconciler.lock_key,
            config.reconciler.shards,
        );
        lock.set_takeover_after(config.reconciler.takeover_after);
        Ok(Reconciler {
            config: config.clone(),
            pool,
            sender: HttpSender::new(&config.delivery, config.reconciler.workers),
            policy: policy_from(config),
            lock,
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

/// How soon an ordered channel whose head is not cleared yet (a transaction
/// that may still commit an earlier event is running: `due::read_heads_sql`)
/// is read again. Nothing notifies when other transactions end, so the
/// leader looks again after this delay, for that channel alone: short
/// enough that a producer's commit delays the order little, long enough
/// that a long-running writer costs one small query per channel this often.
const ORDER_RECHECK: Duration = Duration::from_millis(25);

fn lead(
    r: &mut Reconciler,
    mode: Mode<'_>,
    stop: &AtomicBool,
    hooks: &dyn Hooks,
) -> Result<PassOutcome, DbError> {
    r.lock.set_register(matches!(mode, Mode::Continuous(_)));
    let mut shards = match r.config.reconciler.shards {
        1 => None,
        k => Some(ShardSet::new(&r.config.reconciler.lock_key, k)),
    };
    if let Some(set) = shards.as_mut() {
        if !set.start(&mut r.lock, matches!(mode, Mode::Once), stop)? {
            log::debug!("other instances lead every shard this one may take");
            return Ok(PassOutcome::LockHeld);
        }
        hooks.shards_led(set.held());
    } else if !r.lock.try_acquire()? {
        log::debug!("another instance holds the lock");
        return Ok(PassOutcome::LockHeld);
    }
    let started = Instant::now();
    let started_at = Utc::now();
    let key = r.lock.key();
    let unclean = shards.is_none()
        && match r
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
    if let (Mode::Continuous(_), None) = (mode, &shards) {
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

    let lease = Lease::new();
    let halt = AtomicBool::new(false);
    let stopped = || stop.load(Relaxed) || halt.load(Relaxed);
    // The last look at the lease, right before a request goes out.
    let may_send = || lease.wait_fresh(&stopped);
    let ctx = Context {
        sender: &r.sender,
        policy: &r.policy,
        may_send: &may_send,
    };
    let recorder = Recorder::new(
        &r.pool,
        hooks,
        Recorder::capacity_for(r.config.reconciler.workers),
    );
    let shared = Shared {
        ctx: &ctx,
        hooks,
        recorder: &recorder,
    };
    let mut failure: Option<String> = None;
    let mut main = Main::new(&r.config, mode, hooks);
    main.shards = shards;
    std::thread::scope(|scope| {
        // Sized for everything the leader may have in flight, so that a
        // hand-out never finds it full.
        let (job_tx, job_rx) = bounded::<Job>(main.capacity(r.config.reconciler.workers));
        let (done_tx, done_rx) = unbounded::<Back>();
        let mut spawned = 0;
        for i in 0..r.config.reconciler.workers {
            let (jobs, done, shared, stopped) =
                (job_rx.clone(), done_tx.clone(), &shared, &stopped);
            match std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .stack_size(worker::STACK_SIZE)
                .spawn_scoped(scope, move || worker::work(&jobs, &done, shared, stopped))
            {
                Ok(_) => spawned += 1,
                Err(e) => log::error!("cannot start worker thread {i}: {e}"),
            }
        }
        drop(job_rx);
        drop(done_tx);
        // `run` prunes while it leads, on a thread of this scope with a
        // pooled connection of its own; dropping `prune_stop` (every path
        // out of this closure) stops it, and the scope joins it before the
        // unlock.
        let (prune_stop, prune_stopped) = bounded::<()>(0);
        if matches!(mode, Mode::Continuous(_)) && !r.config.retention.keep_finished.is_zero() {
            let (config, pool) = (&r.config, &r.pool);
            if let Err(e) = std::thread::Builder::new()
                .name("pruner".into())
                .spawn_scoped(scope, move || {
                    crate::reconcile::pruner::run(config, pool, &prune_stopped, hooks)
                })
            {
                log::error!("cannot start the pruner thread: {e}");
            }
        }
        // Dropped on every path out of this closure, a panic of the main
        // thread included: the hand-off closes, workers are halted, and the
        // scope can join them.
        let _halt_on_unwind = HaltOnDrop(&halt);
        main.set_workers(spawned);
        failure = main.run(&mut r.lock, &lease, &job_tx, &done_rx, stop);
        if failure.is_some() {
            // Another instance may lead now: workers drop what is queued.
            halt.store(true, Relaxed);
        }
        drop(job_tx);
        drop(prune_stop);
        // Workers finish the deliveries they are attempting, record them
        // and exit; their reports complete the tally. The scope joins every
        // worker here; the lock is released only after that. Recording may
        // wait for the database (`worker::RECORD_WAIT`): the loop beats
        // meanwhile, so the watchdog sees it alive.
        loop {
            use crossbeam_channel::RecvTimeoutError::{Disconnected, Timeout};
            match done_rx.recv_timeout(STOP_POLL) {
                Ok(back) => main.back(back),
                Err(Timeout) => hooks.beat(),
                Err(Disconnected) => break,
            }
            if failure.is_none() {
                // Still the leader while the last deliveries finish: a
                // standby must not fence it meanwhile.
                failure = main.beat_row(&mut r.lock).err();
            }
        }
    });
    if failure.is_none() {
        // What the last outcomes asked for (runs of failures, auto-disable),
        // and the rate windows with every outcome in, so that the next
        // leader does not count this one's last requests as in flight.
        failure = main
            .write_channels(&mut r.lock)
            .and_then(|()| store_windows(&main.controls, &mut r.lock, &main.controls.limited()))
            .err();
    }
    if failure.is_none() {
        let released = match main.shards.as_mut() {
            Some(set) => set.release_rows(&mut r.lock),
            None => r.lock.client_mut().and_then(|c| leaders::release(c, key)),
        };
        if let Err(e) = released {
            failure = Some(lock_failure("removing the leader record", &e));
        }
    }
    if main.shards.is_some() {
        hooks.shards_led(0);
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
    report.due_at_start = main.due_at_start.unwrap_or(0);
    report.failure = failure;
    report.stopped_early = matches!(mode, Mode::Once) && stop.load(Relaxed) && !main.swept_all;
    Ok(PassOutcome::Ran(report))
}

/// Stores the rate windows of `channels` on the lock connection.
fn store_windows(
    state: &ControlState,
    lock: &mut LeaderLock,
    channels: &[Uuid],
) -> Result<(), String> {
    for id in channels {
        let Some(window) = state.stored(id) else {
            continue;
        };
        lock.client_mut()
            .and_then(|c| controls::store_window(c, *id, &window))
            .map_err(|e| lock_failure("storing a rate window", &e))?;
    }
    Ok(())
}

/// Halts the workers when dropped during a panic of the main thread, so that
/// none waits for a lease that will never be renewed.
struct HaltOnDrop<'a>(&'a AtomicBool);

impl Drop for HaltOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Relaxed);
        }
    }
}

/// The report's wording for a failed step on the lock connection.
fn lock_failure(step: &str, e: &DbError) -> String {
    if e.is_connection_lost() {
        format!("lost the lock connection while {step}: {e}")
    } else {
        format!("{step} failed: {e}")
    }
}

/// A sweep in progress: its cut-off (fixed for the sweep) and, once the
/// channels with due work are known, each one's lane.
struct Sweep {
    cutoff: DateTime<Utc>,
    /// `None` until the channels with due work have been looked up.
    lanes: Option<BTreeMap<Uuid, LaneState>>,
}

/// One channel's part of a sweep.
struct LaneState {
    /// Where its next read starts.
    cursor: Cursor,
    /// Read, not in flight when read (those are left out at once), not
    /// handed out yet (its allowance or the free slots ran out). Only this
    /// leader hands out, so they cannot have become in flight meanwhile,
    /// nor been recorded by one of its workers.
    queue: VecDeque<Delivery>,
    /// Its last read was short: there is nothing after `queue`.
    exhausted: bool,
    /// An ordered channel whose head was not cleared: not read again
    /// before this.
    recheck_at: Option<Instant>,
}

impl LaneState {
    /// A lane not read yet.
    fn fresh() -> LaneState {
        LaneState {
            cursor: due::start_cursor(),
            queue: VecDeque::new(),
            exhausted: false,
            recheck_at: None,
        }
    }

    fn done(&self) -> bool {
        self.exhausted && self.queue.is_empty()
    }
}

/// The main thread's state while it leads.
struct Main<'a> {
    mode: Mode<'a>,
    hooks: &'a dyn Hooks,
    interval: Duration,
    delay: chrono::Duration,
    /// Deliveries read per channel at a time, and lanes read at most per
    /// query. Only lanes that ran empty and may send are read, at most as
    /// many as there are free slots, so what is held stays bounded.
    /// (Reading only twice the cap made a busy channel cost six times the
    /// queries: scenario 2 fell from 0.19 to 0.13 of the raw UPDATE rate.)
    page_size: u32,
    queue_capacity: usize,
    /// Deliveries that may be in flight at once: one per running worker
    /// plus `queue_capacity`.
    capacity: usize,
    /// In flight beyond which no channel borrows beyond its share: the
    /// running workers less the reserve kept free for other channels' new
    /// work (`config::auto_reserve`).
    borrow_ceiling: usize,
    in_flight: InFlight,
    /// Every channel's breaker and run of failures.
    channels: Channels,
    /// The delivery controls of the channels that have any (order, rate
    /// windows).
    controls: ControlState,
    /// The channel served last (round-robin resumes after it).
    last_served: Option<Uuid>,
    /// Channel rows to update (runs of failures, auto-disable), written on
    /// the lock connection at the next turn.
    writes: Vec<Write>,
    policy: Policy,
    sweep: Option<Sweep>,
    /// When the earliest known retry is due by a sweep's cut-off (its
    /// `next_attempt_at` plus `next_attempt_delay`).
    next_retry: Option<DateTime<Utc>>,
    next_tick: Instant,
    watch: LockWatch,
    tally: Tally,
    window: Tally,
    window_started: (Instant, DateTime<Utc>),
    /// The leader row's last heartbeat: when, and the count it wrote.
    heartbeat: (Instant, usize),
    first_cutoff: Option<DateTime<Utc>>,
    /// `once`: deliveries due at the start (`run` counts at each tick).
    due_at_start: Option<u64>,
    /// `once`: the sweep reached the end of what was due.
    swept_all: bool,
    /// `reconciler.shards` > 1: the shards led (None: the one lock).
    shards: Option<ShardSet>,
    /// The order horizon the ordered channels' heads are read under.
    horizon: Option<Horizon>,
    /// A head was created after the horizon was taken: the next read of
    /// heads takes a new one.
    horizon_stale: bool,
}

impl<'a> Main<'a> {
    fn new(config: &Config, mode: Mode<'a>, hooks: &'a dyn Hooks) -> Main<'a> {
        let r = &config.reconciler;
        let mut main = Main {
            mode,
            hooks,
            interval: r.interval,
            delay: chrono::Duration::from_std(r.next_attempt_delay)
                .unwrap_or(chrono::Duration::zero()),
            page_size: r.page_size,
            queue_capacity: r.queue_capacity,
            capacity: 0,
            borrow_ceiling: 0,
            in_flight: InFlight::default(),
            channels: Channels::new(config),
            controls: ControlState::default(),
            last_served: None,
            writes: Vec::new(),
            policy: policy_from(config),
            sweep: None,
            next_retry: None,
            next_tick: Instant::now() + r.interval,
            watch: LockWatch::new(),
            tally: Tally::default(),
            window: Tally::default(),
            window_started: (Instant::now(), Utc::now()),
            heartbeat: (Instant::now(), 0),
            first_cutoff: None,
            due_at_start: None,
            swept_all: false,
            shards: None,
            horizon: None,
            horizon_stale: false,
        };
        main.set_workers(r.workers);
        main
    }

    /// How many deliveries may be in flight with `workers` workers.
    fn capacity(&self, workers: usize) -> usize {
        workers + self.queue_capacity
    }

    /// The number of workers actually running.
    fn set_workers(&mut self, workers: usize) {
        self.capacity = self.capacity(workers);
        self.borrow_ceiling = workers.saturating_sub(crate::config::auto_reserve(workers));
    }

    /// Leads until stop (None), lock loss or a failure on the lock
    /// connection (Some(why)), or, for `once`, until the sweep is done and
    /// every outcome is in.
    fn run(
        &mut self,
        lock: &mut LeaderLock,
        lease: &Lease,
        jobs: &Sender<Job>,
        done: &Receiver<Back>,
        stop: &AtomicBool,
    ) -> Option<String> {
        if self.capacity == self.queue_capacity {
            return Some("no worker thread is running".into());
        }
        if let Err(e) = self.watch.check(lock, lease) {
            return Some(lock_failure("checking the lock connection", &e));
        }
        let sharded = self.shards.is_some();
        let pager = match lock
            .client_mut()
            .and_then(|c| Pager::prepare(c, self.page_size, sharded))
        {
            Ok(p) => p,
            Err(e) => return Some(lock_failure("preparing the due query", &e)),
        };
        let cutoff = self.cutoff_now();
        self.first_cutoff = Some(cutoff);
        let never = crossbeam_channel::never();
        let mut wakes = match self.mode {
            Mode::Once => {
                // The progress total; `run` counts at its ticks instead, so
                // that a large backlog does not delay a takeover.
                match lock.client_mut().and_then(|c| self.count_due(c, cutoff)) {
                    Ok(n) => self.due_at_start = Some(n.max(0) as u64),
                    Err(e) => return Some(lock_failure("counting due deliveries", &e)),
                }
                &never
            }
            Mode::Continuous(w) => w,
        };
        self.hooks.started(self.due_at_start);
        self.start_sweep(cutoff);
        self.hooks.woke(WakeCause::Start);
        loop {
            self.hooks.beat();
            while let Ok(d) = done.try_recv() {
                self.back(d);
            }
            if let Err(f) = self.write_channels(lock) {
                return Some(f);
            }
            if stop.load(Relaxed) {
                return None;
            }
            let timers = match self.mode {
                Mode::Continuous(_) => self.timers(lock),
                // `once` renews its lease row too, so no standby fences it.
                Mode::Once => self.beat_row(lock),
            };
            if let Err(f) = timers {
                return Some(f);
            }
            let every = if self.in_flight.is_empty() {
                IDLE_CHECK_EVERY
            } else {
                LOCK_CHECK_EVERY
            };
            if let Err(e) = self.watch.check_if_due(lock, lease, every) {
                return Some(lock_failure("checking the lock connection", &e));
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
                        self.back(d);
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
                    Err(_) => wakes = &never,
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
        if !self.in_flight.is_empty() {
            until = until.min(self.watch.due_at(every));
        }
        if let Mode::Continuous(_) = self.mode {
            until = until.min(self.next_tick);
            if let Some(set) = &self.shards {
                until = until.min(set.next_due());
            }
            if let Some(t) = self.next_retry {
                let left = (t - self.watch.db_now()).to_std().unwrap_or(Duration::ZERO);
                until = until.min(now + left);
            }
        }
        if let Some(t) = self.next_probe() {
            let left = (t - self.watch.db_now()).to_std().unwrap_or(Duration::ZERO);
            until = until.min(now + left);
        }
        if let Some(t) = self.next_rate_free() {
            let left = (t - self.watch.db_now()).to_std().unwrap_or(Duration::ZERO);
            until = until.min(now + left);
        }
        if let Some(t) = self.next_recheck() {
            until = until.min(t);
        }
        until.saturating_duration_since(now)
    }

    /// `run`'s timers: the interval tick (a sweep, the due count and retry
    /// timer from the database, the interval's report, parked deliveries
    /// released), the earliest known retry, and the leader row's heartbeat.
    fn timers(&mut self, lock: &mut LeaderLock) -> Result<(), String> {
        if Instant::now() >= self.next_tick {
            self.next_tick = Instant::now() + self.interval;
            let cutoff = self.cutoff_now();
            let client = lock
                .client_mut()
                .map_err(|e| lock_failure("the interval sweep", &e))?;
            let due = self
                .count_due(client, cutoff)
                .map_err(|e| lock_failure("counting due deliveries", &e))?;
            self.arm_retry_timer(lock, cutoff)?;
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
            self.in_flight.unpark_all();
            self.channels.prune(self.watch.db_now(), &self.in_flight);
            self.controls.prune(self.watch.db_now());
            self.wake(WakeCause::Tick);
        }
        if self.next_retry.is_some_and(|t| t <= self.watch.db_now()) {
            self.next_retry = None;
            self.wake(WakeCause::RetryDue);
        }
        self.shard_timers(lock)?;
        self.beat_row(lock)
    }

    /// The leader row's heartbeat, every [`HEARTBEAT_EVERY`] whether or not
    /// anything changed: it is the lease a standby reads (`fence`).
    fn beat_row(&mut self, lock: &mut LeaderLock) -> Result<(), String> {
        if self.heartbeat.0.elapsed() < HEARTBEAT_EVERY {
            return Ok(());
        }
        let key = lock.key();
        let snapshot = self.channels.snapshot(&self.in_flight);
        let n = self.in_flight.len();
        match &self.shards {
            Some(set) => set.heartbeat(lock, &snapshot),
            None => lock
                .client_mut()
                .and_then(|c| leaders::heartbeat(c, key, n, &snapshot)),
        }
        .map_err(|e| lock_failure("updating the leader record", &e))?;
        self.heartbeat = (Instant::now(), n);
        Ok(())
    }

    /// Writes what the channels' health asked for: the start and end of a
    /// run of failures, and auto-disable.
    fn write_channels(&mut self, lock: &mut LeaderLock) -> Result<(), String> {
        for w in std::mem::take(&mut self.writes) {
            let client = lock
                .client_mut()
                .map_err(|e| lock_failure("updating a channel", &e))?;
            let failed = |e: DbError| lock_failure("updating a channel", &e);
            match w {
                Write::StartFailing { channel_id, since } => {
                    channels::start_failing(client, channel_id, since).map_err(failed)?
                }
                Write::StopFailing { channel_id } => {
                    channels::stop_failing(client, channel_id).map_err(failed)?
                }
                Write::Disable {
                    channel_id,
                    since,
                    reason,
                } => {
                    if channels::auto_disable(client, channel_id, since, &reason).map_err(failed)? {
                        log::warn!(
                            "channel {channel_id} disabled: {reason}; after fixing the endpoint, `channel enable {channel_id}`, then `resend --channel {channel_id} --since TIME`"
                        );
                        self.hooks.auto_disabled();
                    }
                }
            }
        }
        Ok(())
    }

    /// Sharded: the balance round when due, graces that ended, drained
    /// shards unlocked; a shard taken restarts the sweep, one given up
    /// leaves the sweep's unread deliveries.
    fn shard_timers(&mut self, lock: &mut LeaderLock) -> Result<(), String> {
        let Some(set) = self.shards.as_mut() else {
            return Ok(());
        };
        let before = set.held();
        let changes = if set.round_due() {
            set.round(lock)
        } else {
            set.settle(lock)
        }
        .map_err(|e| lock_failure("balancing the shards", &e))?;
        let held = set.held();
        if changes.deactivated {
            // The lanes of channels of a shard given up leave the sweep.
            if let Some(lanes) = self.sweep.as_mut().and_then(|s| s.lanes.as_mut()) {
                lanes.retain(|channel_id, _| set.hands_out(channel_id));
            }
            self.controls.retain(|channel_id| set.hands_out(channel_id));
        }
        if held != before {
            self.hooks.shards_led(held);
        }
        if changes.activated {
            // A fresh sweep at once, not after the one in progress: the new
            // shard's deliveries may lie behind its cursor. What the old one
            // read and did not hand out is read again (nothing of it is in
            // flight).
            self.hooks.woke(WakeCause::Start);
            self.start_sweep(self.cutoff_now());
        }
        Ok(())
    }

    /// Unfinished deliveries due by `cutoff` (of the shards led).
    fn count_due(
        &self,
        client: &mut postgres::Client,
        cutoff: DateTime<Utc>,
    ) -> Result<i64, DbError> {
        match &self.shards {
            Some(set) => set.count_due(client, cutoff),
            None => due::count_due(client, cutoff),
        }
    }

    /// Sets the retry timer to the earliest unfinished delivery not due by
    /// `cutoff`, if that is sooner than what it holds.
    fn arm_retry_timer(
        &mut self,
        lock: &mut LeaderLock,
        cutoff: DateTime<Utc>,
    ) -> Result<(), String> {
        let next = lock
            .client_mut()
            .and_then(|c| match &self.shards {
                Some(set) => set.next_due_after(c, cutoff),
                None => due::next_due_after(c, cutoff),
            })
            .map_err(|e| lock_failure("finding the next due delivery", &e))?;
        self.note_retry(next);
        Ok(())
    }

    /// Keeps the earlier of the timer and `next_attempt_at` (plus the delay).
    fn note_retry(&mut self, next_attempt_at: Option<DateTime<Utc>>) {
        if let Some(t) = next_attempt_at.map(|t| t + self.delay) {
            self.next_retry = Some(self.next_retry.map_or(t, |n| n.min(t)));
        }
    }

    /// The cut-off of a sweep starting now, on the database's clock.
    fn cutoff_now(&self) -> DateTime<Utc> {
        self.watch.db_now() - self.delay
    }

    fn start_sweep(&mut self, cutoff: DateTime<Utc>) {
        self.sweep = Some(Sweep {
            cutoff,
            lanes: None,
        });
    }

    /// A reason to sweep: a fresh sweep starts now (one in progress is
    /// dropped: what it read but did not hand out is read again), so work
    /// that fell due is found at once, however long a backlog the sweep in
    /// progress was working through.
    fn wake(&mut self, cause: WakeCause) {
        self.hooks.woke(cause);
        self.start_sweep(self.cutoff_now());
    }

    /// One step of the sweep: look up the channels with due work, read
    /// the next deliveries of lanes that ran empty, let the scheduler pick
    /// round-robin within each channel's allowance, hand out. Returns
    /// whether it moved.
    fn step(
        &mut self,
        lock: &mut LeaderLock,
        lease: &Lease,
        pager: &Pager,
        jobs: &Sender<Job>,
    ) -> Result<bool, String> {
        // A fresh look at the lock right before handing out (renews the
        // lease the workers check).
        self.watch
            .check_if_due(lock, lease, LOCK_CHECK_EVERY)
            .map_err(|e| lock_failure("handing out", &e))?;
        let Some(sweep) = self.sweep.as_mut() else {
            return Ok(false);
        };
        let cutoff = sweep.cutoff;
        let mut moved = false;
        if sweep.lanes.is_none() {
            let active = self.shards.as_ref().map(|set| (set.count(), set.active()));
            let ids = lock
                .client_mut()
                .and_then(|c| {
                    let shards = active.as_ref().map(|(k, list)| (*k, list.as_slice()));
                    pager.channels(c, cutoff, shards)
                })
                .map_err(|e| lock_failure("paging", &e))?;
            // The delivery controls of these channels (only those that
            // have any come back), with the rate windows stored last.
            let state = &self.controls;
            let (rows, stored) = lock
                .client_mut()
                .and_then(|c| {
                    let rows = controls::of_channels(c, &ids)?;
                    let stored = controls::stored_windows(c, &state.windows_missing(&rows))?;
                    Ok((rows, stored))
                })
                .map_err(|e| lock_failure("reading delivery controls", &e))?;
            let made = self
                .controls
                .refresh(&ids, rows, &stored, self.watch.db_now());
            for id in made {
                let out = self.in_flight.ids_of(&id);
                self.controls.charge_in_flight(&id, out.into_iter());
            }
            let lanes = ids.into_iter().map(|id| (id, LaneState::fresh()));
            sweep.lanes = Some(lanes.collect());
            moved = true;
        }
        let free = self.capacity.saturating_sub(self.in_flight.len());
        let lanes = sweep.lanes.get_or_insert_with(BTreeMap::new);
        let now = self.watch.db_now();
        // Borrowing beyond a share leaves the reserve free, and each active
        // channel's unused share (what its controls let it use of it).
        let (controls, in_flight) = (&self.controls, &self.in_flight);
        let most = |id: &Uuid| {
            let c = controls.of(id, now);
            let rate = c.rate_left.map(|left| in_flight.of_channel(id) + left);
            if c.ordered {
                Some(rate.map_or(1, |m| m.min(1)))
            } else {
                rate
            }
        };
        let kept = self.channels.kept_free(now, in_flight, &most);
        let borrowable = self.borrow_ceiling.saturating_sub(in_flight.len() + kept);
        // Read for the lanes that ran empty and may send now, in round-robin
        // order, at most as many as could be served now, in one query. A
        // lane at its cap or behind an open breaker is read when it may
        // send again (a slot frees, the cool-down ends), so that a blocked
        // channel costs nothing per sweep; what timed out in it is failed
        // then.
        let after = self.last_served;
        let (channels, in_flight, controls) = (&self.channels, &self.in_flight, &self.controls);
        let limits = |id: &Uuid| lane_limits(channels, controls, in_flight, id, now);
        let wall_now = Instant::now();
        let empty: Vec<(Uuid, Cursor)> = in_rotation(lanes, after)
            .filter(|(id, l)| {
                let (allowance, borrow) = limits(id);
                l.queue.is_empty()
                    && !l.exhausted
                    && l.recheck_at.is_none_or(|t| t <= wall_now)
                    && (allowance > 0 || (borrowable > 0 && borrow > 0))
            })
            .take(free.clamp(1, self.page_size as usize))
            .map(|(id, l)| (*id, l.cursor))
            .collect();
        if !empty.is_empty() {
            // An ordered channel's lane is its head alone, in enqueue
            // order, read afresh each time; the others are read in due
            // order after their cursor.
            let (heads, ranges): (Vec<_>, Vec<_>) = empty
                .iter()
                .partition(|(id, _)| self.controls.is_ordered(id));
            let heads: Vec<Uuid> = heads.into_iter().map(|(id, _)| id).collect();
            let refreshed = !heads.is_empty() && (self.horizon_stale || self.horizon.is_none());
            if refreshed {
                let taken = lock
                    .client_mut()
                    .and_then(due::take_horizon)
                    .map_err(|e| lock_failure("taking the order horizon", &e))?;
                self.horizon = Some(taken);
                self.horizon_stale = false;
            }
            let horizon = self.horizon.as_ref().filter(|_| !heads.is_empty());
            let (read, blocked) = lock
                .client_mut()
                .and_then(|c| {
                    let mut read = if ranges.is_empty() {
                        Vec::new()
                    } else {
                        pager.read(c, cutoff, &ranges)?
                    };
                    let mut blocked = Vec::new();
                    if let Some(h) = horizon {
                        for (d, cleared) in pager.read_heads(c, cutoff, &heads, h)? {
                            if cleared {
                                read.push(d);
                            } else {
                                blocked.push((d.channel_id(), d.event.created_at));
                            }
                        }
                    }
                    Ok((read, blocked))
                })
                .map_err(|e| lock_failure("paging", &e))?;
            let mut counts: HashMap<Uuid, u32> = HashMap::new();
            for d in read {
                let channel_id = d.channel_id();
                *counts.entry(channel_id).or_default() += 1;
                self.channels.seen(&d.status.target);
                let Some(lane) = lanes.get_mut(&channel_id) else {
                    continue;
                };
                lane.cursor = d.cursor();
                // What is in flight now is left out here, not at hand-out
                // time: its outcome may arrive before the rest of the lane
                // is handed out, and this row would then be stale.
                if !self.in_flight.holds(&d.status.id) {
                    lane.queue.push_back(d);
                }
            }
            for (id, _) in &empty {
                if let Some(lane) = lanes.get_mut(id) {
                    lane.exhausted =
                        heads.contains(id) || counts.get(id).copied().unwrap_or(0) < self.page_size;
                    lane.recheck_at = None;
                }
            }
            // A head not cleared keeps its lane in the sweep, read again
            // later: at once under a new horizon when it was created after
            // this one was taken (once per read: a horizon just taken is
            // not taken again at once), else after `ORDER_RECHECK`, for the
            // transactions that may still commit earlier events to end.
            for (id, created_at) in blocked {
                let newer = !refreshed
                    && self
                        .horizon
                        .as_ref()
                        .is_some_and(|h| created_at >= h.taken_at);
                self.horizon_stale |= newer;
                if let Some(lane) = lanes.get_mut(&id) {
                    lane.exhausted = false;
                    lane.recheck_at = Some(if newer {
                        wall_now
                    } else {
                        wall_now + ORDER_RECHECK
                    });
                }
            }
            moved = true;
        }
        if matches!(self.mode, Mode::Once) {
            // `once` makes one sweep: it does not wait out a cool-down. A
            // channel whose breaker is open is left due.
            for (id, lane) in lanes.iter_mut() {
                if self.channels.is_open(id) && self.in_flight.of_channel(id) == 0 {
                    if !lane.queue.is_empty() || !lane.exhausted {
                        log::info!("channel {id}: breaker open; its due deliveries are left for the next pass");
                    }
                    lane.queue.clear();
                    lane.exhausted = true;
                }
            }
        }
        // An ordered channel's lane stays while its delivery is in flight:
        // its outcome lets the next one go in this sweep (`finished`).
        let (in_flight, controls) = (&self.in_flight, &self.controls);
        lanes.retain(|id, l| !l.done() || (controls.is_ordered(id) && in_flight.held_of(id) > 0));
        if lanes.is_empty() {
            self.end_sweep(lock, cutoff)?;
            return Ok(true);
        }
        // The scheduler's view: each lane's queue (whether each delivery
        // makes a request, on this host's clock, which the worker's check
        // uses too) and allowance.
        let wall = Utc::now();
        let ids: Vec<Uuid> = lanes
            .iter()
            .filter(|(_, l)| !l.queue.is_empty())
            .map(|(id, _)| *id)
            .collect();
        let view: Vec<Lane> = ids
            .iter()
            .map(|id| {
                let (allowance, borrow) =
                    lane_limits(&self.channels, &self.controls, &self.in_flight, id, now);
                Lane {
                    channel_id: *id,
                    queue: lanes[id]
                        .queue
                        .iter()
                        .map(|d| makes_request(d, wall, cutoff, &self.policy))
                        .collect(),
                    allowance,
                    borrow,
                    ordered: self.controls.is_ordered(id),
                }
            })
            .collect();
        let plan = scheduler::plan(&view, self.last_served, free, borrowable);
        if plan.hand_out.is_empty() {
            return Ok(moved);
        }
        self.last_served = plan.last_served;
        // Take the chosen out of their queues (highest position first, so
        // the others keep theirs), then hand out in the plan's order.
        let mut chosen: Vec<Option<(Delivery, bool)>> = Vec::new();
        let mut order: Vec<(usize, usize, usize)> = plan
            .hand_out
            .iter()
            .enumerate()
            .map(|(k, &(i, j))| (i, j, k))
            .collect();
        order.sort_by_key(|&(i, j, _)| std::cmp::Reverse((i, j)));
        chosen.resize_with(plan.hand_out.len(), || None);
        for (i, j, k) in order {
            let sends = view[i].queue[j];
            if let Some(d) = lanes.get_mut(&ids[i]).and_then(|l| l.queue.remove(j)) {
                chosen[k] = Some((d, sends));
            }
        }
        // Requests of rate-limited channels are charged to their windows,
        // and the windows stored, before any of them is handed out: a new
        // leader must know of every request this one may have started.
        let mut charged: Vec<Uuid> = Vec::new();
        for (d, sends) in chosen.iter().flatten() {
            let channel_id = d.channel_id();
            if *sends
                && self.controls.charge(&channel_id, d.status.id)
                && !charged.contains(&channel_id)
            {
                charged.push(channel_id);
            }
        }
        store_windows(&self.controls, lock, &charged)?;
        let before = self.in_flight.len();
        let mut back = Vec::new();
        for (delivery, sends) in chosen.into_iter().flatten() {
            if !back.is_empty() {
                self.controls
                    .uncharge(&delivery.channel_id(), &delivery.status.id);
                back.push(delivery);
                continue;
            }
            let (status_id, channel_id) = (delivery.status.id, delivery.channel_id());
            match jobs.try_send(Job { delivery, cutoff }) {
                Ok(()) => {
                    self.in_flight.insert(status_id, channel_id);
                    if let Some(set) = self.shards.as_mut() {
                        set.handed(status_id, &channel_id);
                    }
                    if sends {
                        self.channels.handed_out(channel_id, now);
                    }
                }
                Err(TrySendError::Full(job)) => {
                    self.controls.uncharge(&channel_id, &status_id);
                    back.push(job.delivery);
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err("no worker thread is running".into())
                }
            }
        }
        // Not handed out (cannot happen while the channel holds `capacity`):
        // they go back first in their lanes.
        for d in back.into_iter().rev() {
            if let Some(lane) = lanes.get_mut(&d.channel_id()) {
                lane.queue.push_front(d);
            }
        }
        let handed = self.in_flight.len() - before;
        if handed > 0 {
            self.hooks.in_flight(self.in_flight.len());
        }
        Ok(true)
    }

    /// When the first rate-limited channel with work left in the sweep
    /// (read and waiting, or not read yet because its window was full) may
    /// send again.
    fn next_rate_free(&self) -> Option<DateTime<Utc>> {
        let lanes = self.sweep.as_ref()?.lanes.as_ref()?;
        self.controls.next_free(lanes.keys(), self.watch.db_now())
    }

    /// When the first ordered channel whose head was not cleared is read
    /// again. One whose time has come is read at the next step, unless its
    /// other limits (rate window, breaker) hold it, whose own timers wake
    /// the leader: it is not counted, so that it cannot make a busy loop.
    fn next_recheck(&self) -> Option<Instant> {
        let lanes = self.sweep.as_ref()?.lanes.as_ref()?;
        let now = Instant::now();
        lanes
            .values()
            .filter(|l| !l.exhausted)
            .filter_map(|l| l.recheck_at)
            .filter(|t| *t > now)
            .min()
    }

    /// An ordered channel's delivery came back: its next one may go now,
    /// in the sweep in progress (its lane is read again), or, when none is
    /// in progress, in a fresh one (`run`; `once` made its one sweep).
    fn next_in_order(&mut self, channel_id: Uuid) {
        match self.sweep.as_mut() {
            Some(sweep) => {
                if let Some(lanes) = sweep.lanes.as_mut() {
                    let lane = lanes.entry(channel_id).or_insert_with(LaneState::fresh);
                    lane.exhausted = false;
                }
            }
            None => {
                if matches!(self.mode, Mode::Continuous(_)) {
                    self.start_sweep(self.cutoff_now());
                }
            }
        }
    }

    /// When the earliest cool-down of a channel with work waiting in the
    /// sweep ends.
    fn next_probe(&self) -> Option<DateTime<Utc>> {
        let lanes = self.sweep.as_ref()?.lanes.as_ref()?;
        self.channels.next_probe(lanes.keys())
    }

    /// The sweep reached the end of what was due by `cutoff`.
    fn end_sweep(&mut self, lock: &mut LeaderLock, cutoff: DateTime<Utc>) -> Result<(), String> {
        self.sweep = None;
        match self.mode {
            Mode::Once => self.swept_all = true,
            Mode::Continuous(_) => {
                // What falls due next (a retry, an event enqueued with a
                // next_attempt_delay, a row written behind our back).
                self.arm_retry_timer(lock, cutoff)?;
            }
        }
        Ok(())
    }

    /// A worker's report: free its slot, count it, note its retry time. A
    /// delivery whose reconcile failed (database error, panic) stays out of
    /// the sweeps until the next tick, so that a poisoned one is not retried
    /// on every wake-up; one changed concurrently (an operator's resend while
    /// it was in flight) is swept again at once.
    fn back(&mut self, back: Back) {
        match back {
            // Its worker is free: the channel's slot too (it stays held, so
            // not read again, until its outcome is recorded). Its verdict
            // counts for the breaker at once, before the slot is reused.
            Back::Answered { status_id, verdict } => {
                let channel_id = self.in_flight.answered(&status_id);
                if let (Some(channel_id), Some(verdict)) = (channel_id, verdict) {
                    let open = self.channels.open_count();
                    let write = self
                        .channels
                        .record(channel_id, verdict, self.watch.db_now());
                    self.writes.extend(write);
                    if open != self.channels.open_count() {
                        self.hooks.breakers_open(self.channels.open_count());
                    }
                }
            }
            Back::Done(done) => self.finished(done),
        }
    }

    fn finished(&mut self, done: Done) {
        let channel_id = self.in_flight.remove(&done.status_id);
        if let Some(id) = channel_id {
            self.hooks.in_flight(self.in_flight.len());
            self.controls
                .finished(&id, &done.status_id, self.watch.db_now());
            if self.controls.is_ordered(&id) {
                self.next_in_order(id);
            }
        }
        if let Some(set) = self.shards.as_mut() {
            set.finished(&done.status_id);
        }
        self.tally.count(&done);
        self.window.count(&done);
        match &done.finished {
            Finished::Reconciled(r) => {
                // Its verdict fed the breaker when it was answered.
                self.note_retry(r.next_attempt_at);
                if r.outcome == StatusOutcome::ChangedConcurrently
                    && matches!(self.mode, Mode::Continuous(_))
                {
                    self.wake(WakeCause::Changed);
                }
            }
            Finished::Error | Finished::Panicked => {
                if matches!(self.mode, Mode::Continuous(_)) {
                    self.in_flight.park(done.status_id);
                }
            }
            Finished::Dropped => {}
        }
        self.hooks.finished(&done, &self.tally);
    }
}

/// Whether a worker will send a request for `d` (rather than only record a
/// FAILED: timed out, or its channel is disabled, deleted or no longer
/// assigned). `now` is this host's clock, as the worker's check uses: it
/// checks later, so what is expired now is expired then.
fn makes_request(d: &Delivery, now: DateTime<Utc>, cutoff: DateTime<Utc>, policy: &Policy) -> bool {
    let t = &d.status.target;
    if t.disabled || t.deleted || !t.assigned {
        return false;
    }
    !matches!(
        state::check(&d.status.view, now, cutoff, policy),
        Check::Expired(_)
    )
}

/// A channel's `(allowance, borrow)` at `now`: its cap and breaker
/// (`health`), under its delivery controls (`scheduler::limits`).
fn lane_limits(
    channels: &Channels,
    controls: &ControlState,
    in_flight: &InFlight,
    id: &Uuid,
    now: DateTime<Utc>,
) -> (usize, usize) {
    // An ordered channel has one in flight until its outcome is recorded
    // (the next one waits for it); the others count the workers they hold.
    let n = if controls.is_ordered(id) {
        in_flight.held_of(id)
    } else {
        in_flight.of_channel(id)
    };
    scheduler::limits(
        channels.allowance(id, now, n),
        channels.borrow(id, n),
        n,
        controls.of(id, now),
    )
}

/// The lanes in round-robin order: those after the channel `after`, then
/// the others.
fn in_rotation(
    lanes: &mut BTreeMap<Uuid, LaneState>,
    after: Option<Uuid>,
) -> impl Iterator<Item = (&Uuid, &mut LaneState)> {
    let split = after.unwrap_or(Uuid::nil());
    let mut head: Vec<(&Uuid, &mut LaneState)> = Vec::new();
    let mut tail = Vec::new();
    for (id, lane) in lanes.iter_mut() {
        if after.is_some() && *id <= split {
            tail.push((id, lane));
        } else {
            head.push((id, lane));
        }
    }
    head.into_iter().chain(tail)
}
