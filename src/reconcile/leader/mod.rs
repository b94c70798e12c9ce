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
//!
//! About 630 lines: the loop and its start and stop belong together; the
//! hand-out, what comes back and the timers are its submodules.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender, TrySendError};

use crate::config::Config;
use crate::db::due::{self, Cursor, Delivery, Horizon, Pager};
use crate::db::{self, channels, controls, leaders, DbError, Pool};
use crate::delivery::provider::Provider;
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
use crate::reconcile::recorder::{Recorder, WRITERS};
use crate::reconcile::report::{Report, Tally};
use crate::reconcile::scheduler::{self, InFlight, Lane};
use crate::reconcile::worker::{self, Shared};
use crate::shard::set::ShardSet;
use crate::state::{self, Check, Policy};
use uuid::Uuid;

mod handout;
mod outcomes;
mod timers;

use handout::{LaneState, Sweep};

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
    provider: Provider,
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
            provider: Provider::new(config, config.reconciler.workers),
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
    let previous = match shards {
        Some(_) => None,
        None => match r
            .lock
            .client_mut()
            .and_then(|c| leaders::claim(c, key, &lock::app_name("lock")))
        {
            Ok(previous) => previous,
            Err(e) => {
                r.lock.forget_connection();
                return Err(e);
            }
        },
    };
    if let (Mode::Continuous(_), None) = (mode, &shards) {
        log::info!("leading: took the lock {:?}", r.config.reconciler.lock_key);
    }
    if let Some(pid) = previous.filter(|pid| r.lock.fenced(key, *pid)) {
        // Its workers' lease ran out before its session was ended.
        log::info!("took the lock from the silent leader (backend pid {pid}) this instance fenced: handing out at once");
    } else if previous.is_some() {
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
        provider: &r.provider,
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
        // Recorder threads write the workers' outcomes in groups; they end
        // once every worker has (a worker that cannot start counts as
        // ended), so the scope's join waits for every queued outcome.
        recorder.expect_workers(r.config.reconciler.workers);
        for i in 0..WRITERS {
            let (recorder, done) = (&recorder, done_tx.clone());
            if let Err(e) = std::thread::Builder::new()
                .name(format!("recorder-{i}"))
                .spawn_scoped(scope, move || recorder.write_loop(&done))
            {
                // The workers write their groups themselves then.
                log::error!("cannot start recorder thread {i}: {e}");
            }
        }
        let mut spawned = 0;
        for i in 0..r.config.reconciler.workers {
            let (jobs, done, shared, stopped) =
                (job_rx.clone(), done_tx.clone(), &shared, &stopped);
            match std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .stack_size(worker::STACK_SIZE)
                .spawn_scoped(scope, move || {
                    let _gone = shared.recorder.worker_guard();
                    worker::work(&jobs, &done, shared, stopped)
                }) {
                Ok(_) => spawned += 1,
                Err(e) => {
                    recorder.worker_gone();
                    log::error!("cannot start worker thread {i}: {e}");
                }
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
    /// `delivery.provider = "svix"`: a visit to a handed-over delivery
    /// (`SENDING`) is a poll of Svix, not a request to the endpoint, and
    /// is not charged to the channel's rate limit (`handout::is_poll`).
    svix_polls: bool,
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
            watch: LockWatch::new(r.takeover_after),
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
            svix_polls: config.delivery.provider == crate::config::Provider::Svix,
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
}
