//! The shared harness of the throughput benchmark: the scenario sizes
//! ([`Sizes`]), the result table ([`Row`], [`push`], [`print_table`]), the
//! reconciliation passes run in-process ([`config`], [`timed_pass`],
//! [`pass`]), seeding ([`seed`], [`seed_client`]), timed enqueues and
//! waits ([`timed_enqueues`], [`WallClock`], [`wait_all_recorded`],
//! [`percentile`]), EXPLAIN ANALYZE and the machine and process CPU
//! counters.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use notification_reconciler::config::Config;
use notification_reconciler::reconcile::hooks::NoHooks;
use notification_reconciler::reconcile::leader::{PassOutcome, Reconciler};
use notification_reconciler::reconcile::report::Report;

use super::support;
use super::support::TestDb;

/// The argument that makes this binary the memory scenario's child.
pub(crate) const CHILD_FLAG: &str = "--memory-child";

/// How big each scenario is.
pub(crate) struct Sizes {
    pub(crate) latency_events: u64,
    pub(crate) latency: Duration,
    pub(crate) latency_workers: Vec<usize>,
    pub(crate) db_events: u64,
    pub(crate) db_workers: Vec<usize>,
    pub(crate) raw_duration: Duration,
    pub(crate) backlogs: [u64; 2],
    pub(crate) memory_deliveries: u64,
    pub(crate) memory_workers: usize,
    pub(crate) idle_events: u64,
    pub(crate) idle_passes: usize,
    pub(crate) prompt_seconds: u64,
    pub(crate) prompt_rate: u64,
    pub(crate) prompt_slow: u64,
    pub(crate) prompt_slow_latency: Duration,
    pub(crate) failover_trials: usize,
    pub(crate) fair_hanging: u64,
    pub(crate) fair_timeout: &'static str,
    /// How long the slow endpoint may borrow before the measurement.
    pub(crate) fair_slow_ramp: Duration,
    /// Scenario 10: the fast endpoint's backlog (it must outlast the
    /// measurement: it drains at several thousand a second).
    pub(crate) fair_fast_backlog: u64,
    /// The slow endpoint's latency (below `fair_timeout`).
    pub(crate) fair_slow_latency: Duration,
    pub(crate) fair_seconds: u64,
    pub(crate) fair_rate: u64,
    pub(crate) fair_backlog: u64,
    /// Scale-out: deliveries per run, receiver latency, workers/instance.
    pub(crate) scaleout: (u64, Duration, usize),
    /// Flaky endpoint: seconds of enqueueing at `flaky_rate` a second.
    pub(crate) flaky_seconds: u64,
    pub(crate) flaky_rate: u64,
}

impl Sizes {
    pub(crate) fn full() -> Sizes {
        Sizes {
            latency_events: 2_000,
            latency: Duration::from_millis(100),
            latency_workers: vec![1, 8, 64],
            db_events: 20_000,
            db_workers: vec![4, 16],
            raw_duration: Duration::from_secs(5),
            backlogs: [1_000_000, 10_000],
            memory_deliveries: 50_000,
            memory_workers: 16,
            idle_events: 1_000_000,
            idle_passes: 20,
            prompt_seconds: 10,
            prompt_rate: 100,
            prompt_slow: 16,
            prompt_slow_latency: Duration::from_secs(5),
            failover_trials: 5,
            fair_hanging: 10_000,
            fair_timeout: "3s",
            fair_slow_ramp: Duration::from_secs(5),
            fair_fast_backlog: 300_000,
            fair_slow_latency: Duration::from_secs(2),
            fair_seconds: 10,
            fair_rate: 100,
            fair_backlog: 1_000_000,
            scaleout: (12_000, Duration::from_millis(100), 64),
            flaky_seconds: 300,
            flaky_rate: 20,
        }
    }

    pub(crate) fn tiny() -> Sizes {
        Sizes {
            latency_events: 64,
            latency: Duration::from_millis(20),
            latency_workers: vec![1, 8, 64],
            db_events: 500,
            db_workers: vec![4, 16],
            raw_duration: Duration::from_millis(300),
            backlogs: [5_000, 1_000],
            memory_deliveries: 500,
            memory_workers: 16,
            idle_events: 5_000,
            idle_passes: 3,
            prompt_seconds: 1,
            prompt_rate: 50,
            prompt_slow: 4,
            prompt_slow_latency: Duration::from_millis(500),
            failover_trials: 1,
            fair_hanging: 200,
            fair_timeout: "1s",
            fair_slow_ramp: Duration::from_millis(300),
            fair_fast_backlog: 2_000,
            fair_slow_latency: Duration::from_millis(200),
            fair_seconds: 1,
            fair_rate: 50,
            fair_backlog: 5_000,
            scaleout: (600, Duration::from_millis(20), 8),
            flaky_seconds: 5,
            flaky_rate: 20,
        }
    }
}

/// One row of the result table.
pub(crate) struct Row {
    pub(crate) scenario: &'static str,
    pub(crate) setting: String,
    pub(crate) result: String,
    pub(crate) target: String,
    pub(crate) met: Option<bool>,
}

/// The lines of `EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) sql`.
pub(crate) fn explain_analyze(client: &mut postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(&format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}"), &[])
        .expect("bench: EXPLAIN")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// Enqueues `total` events of `event_type` at `rate` a second through
/// `enqueue_event`, each carrying its enqueue time (the database's clock),
/// waits until `receiver` got them all, and returns each one's enqueue →
/// receipt time in ms, sorted. `log` is shown when they do not arrive.
pub(crate) fn timed_enqueues(
    client: &mut postgres::Client,
    receiver: &support::Receiver,
    event_type: &str,
    total: u64,
    rate: u64,
    log: impl Fn() -> String,
) -> Vec<f64> {
    timed_enqueues_while(client, receiver, event_type, rate, |i| i < total, log)
}

/// [`timed_enqueues`] for as long as `more(events enqueued so far)` holds.
pub(crate) fn timed_enqueues_while(
    client: &mut postgres::Client,
    receiver: &support::Receiver,
    event_type: &str,
    rate: u64,
    more: impl Fn(u64) -> bool,
    log: impl Fn() -> String,
) -> Vec<f64> {
    let total = enqueue_at_rate_while(client, event_type, rate, more);
    assert!(
        receiver.wait_for(total as usize, Duration::from_secs(120)),
        "bench: {} of {total} {event_type} events arrived:\n{}",
        receiver.count(),
        log()
    );
    let clock = WallClock::now();
    let mut latencies: Vec<f64> = receiver
        .requests()
        .iter()
        .map(|rq| clock.enqueue_to_receipt_ms(rq))
        .collect();
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// The wall clock of the receiver's `Instant`s, to compare them with the
/// database's `clock_timestamp()` (same machine).
#[derive(Clone, Copy)]
pub(crate) struct WallClock {
    pub(crate) instant: Instant,
    pub(crate) wall: std::time::SystemTime,
}

impl WallClock {
    pub(crate) fn now() -> WallClock {
        WallClock {
            instant: Instant::now(),
            wall: std::time::SystemTime::now(),
        }
    }

    /// Enqueue → receipt of `rq`, in ms: the enqueue time is the payload's
    /// `t` (see [`timed_enqueues`]).
    pub(crate) fn enqueue_to_receipt_ms(&self, rq: &support::Request) -> f64 {
        let enqueued = rq.json()["data"]["t"]
            .as_f64()
            .expect("bench: t in the payload");
        (self.wall_of(rq.at) - enqueued) * 1000.0
    }

    /// `at` on the wall clock, as UNIX seconds.
    pub(crate) fn wall_of(&self, at: Instant) -> f64 {
        let wall = if at >= self.instant {
            self.wall + (at - self.instant)
        } else {
            self.wall - (self.instant - at)
        };
        wall.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// Enqueues `total` events of `event_type` at `rate` a second through
/// `enqueue_event`, each carrying its enqueue time (the database's clock)
/// as `t`.
pub(crate) fn enqueue_at_rate(
    client: &mut postgres::Client,
    event_type: &str,
    total: u64,
    rate: u64,
) {
    enqueue_at_rate_while(client, event_type, rate, |i| i < total);
}

/// [`enqueue_at_rate`] for as long as `more(events enqueued so far)` holds;
/// returns how many it enqueued.
pub(crate) fn enqueue_at_rate_while(
    client: &mut postgres::Client,
    event_type: &str,
    rate: u64,
    more: impl Fn(u64) -> bool,
) -> u64 {
    let every = Duration::from_secs(1) / rate as u32;
    let start = Instant::now();
    let mut i = 0;
    while more(i) {
        let due = start + every * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        client
            .execute(
                "SELECT notification.enqueue_event('acme', $1,
                     jsonb_build_object('t', extract(epoch FROM clock_timestamp())::float8))",
                &[&event_type],
            )
            .expect("bench: enqueue");
        i += 1;
    }
    i
}

/// Waits until no delivery is unfinished, looking every `every`; panics
/// with `why(left)` at `deadline`.
pub(crate) fn wait_all_recorded(
    client: &mut postgres::Client,
    deadline: Instant,
    every: Duration,
    why: &dyn Fn(i64) -> String,
) {
    loop {
        let left: i64 = client
            .query_one(
                "SELECT count(*) FROM notification.delivery_status
                 WHERE state IN ('PENDING', 'SENDING', 'RESENDING')",
                &[],
            )
            .expect("bench: count unfinished")
            .get(0);
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{}", why(left));
        std::thread::sleep(every);
    }
}

/// The `p` quantile (0..=1) of sorted `values`.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    values[((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1]
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`
/// (clock ticks of 1/100 s, Linux's fixed `USER_HZ`); 0 when unreadable.
pub(crate) fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): state is the
    // 3rd field, utime the 14th, stime the 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
    match (ticks(14), ticks(15)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => 0.0,
    }
}

/// The machine's CPU time so far from /proc/stat, in ticks: (busy, steal,
/// total) over every CPU. Busy is everything but idle, iowait and steal.
pub(crate) fn machine_cpu_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    let (idle, iowait, steal) = (at(3), at(4), at(7));
    (total - idle - iowait - steal, steal, total)
}

/// The share of the machine busy and stolen between two
/// [`machine_cpu_ticks`] readings.
pub(crate) fn machine_cpu_share(before: (u64, u64, u64), after: (u64, u64, u64)) -> (f64, f64) {
    let total = (after.2 - before.2).max(1) as f64;
    (
        (after.0 - before.0) as f64 / total,
        (after.1 - before.1) as f64 / total,
    )
}

/// A pass's per-channel cap.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cap {
    /// `max_in_flight_per_channel = 0`: a quarter of the workers, and a
    /// lone channel borrows idle workers beyond it (the default).
    Automatic,
    /// `max_in_flight_per_channel = workers`.
    Workers,
}

/// The config of every pass here: `workers`, default page size, queue of
/// 2 × workers, pool of workers + 2.
pub(crate) fn config(url: &str, workers: usize) -> Config {
    let mut config = Config::for_url(url);
    config.reconciler.workers = workers;
    config.reconciler.page_size = 50;
    config.reconciler.queue_capacity = 2 * workers;
    config.database.pool_size = workers as u32 + 2;
    config.delivery.timeout = Duration::from_secs(30);
    config.delivery.allow_networks = support::fixtures::loopback_networks();
    // These scenarios deliver to one channel: let it use every worker, so
    // that they measure the pass, not the per-channel cap.
    config.delivery.max_in_flight_per_channel = workers;
    config
}

/// Builds a reconciler for `db` and times one pass (building excluded).
pub(crate) fn timed_pass(db: &TestDb, workers: usize) -> (Report, f64) {
    timed_pass_with(db, workers, Cap::Workers)
}

/// [`timed_pass`] with the per-channel cap `cap`.
pub(crate) fn timed_pass_with(db: &TestDb, workers: usize, cap: Cap) -> (Report, f64) {
    let mut config = config(&db.url, workers);
    if let Cap::Automatic = cap {
        config.delivery.max_in_flight_per_channel =
            notification_reconciler::config::auto_channel_cap(workers);
        config.delivery.work_conserving = true;
    }
    let mut reconciler = Reconciler::new(&config).expect("bench: reconciler");
    let t = Instant::now();
    let report = pass(&mut reconciler);
    (report, t.elapsed().as_secs_f64())
}

/// One pass that must run.
pub(crate) fn pass(reconciler: &mut Reconciler) -> Report {
    match reconciler
        .run_pass(&AtomicBool::new(false), &NoHooks)
        .expect("bench: the pass could not start")
    {
        PassOutcome::Ran(report) => report,
        PassOutcome::LockHeld => panic!("bench: the lock is held by someone else"),
    }
}

/// Panics unless the pass delivered all `n` events without errors.
pub(crate) fn check_delivered(report: &Report, n: u64, what: &str) {
    assert!(
        report.ok() && report.delivered == n && report.errors == 0 && report.panics == 0,
        "{what}: expected {n} deliveries, got {report:?}"
    );
}

/// Seeds `n` events with one status each in `state` (PENDING: due now;
/// SUCCESS: finished) for one channel at `url`, server-side, then
/// VACUUM ANALYZE.
pub(crate) fn seed(db: &TestDb, n: u64, state: &str, url: &str) {
    seed_client(&mut db.client(), n, state, url);
}

/// [`seed`] through `client`, on a database of any cluster.
pub(crate) fn seed_client(client: &mut postgres::Client, n: u64, state: &str, url: &str) {
    let t = Instant::now();
    let next = if state == "SUCCESS" {
        "NULL"
    } else {
        "ev.created_at"
    };
    client
        .batch_execute(&format!(
            "SET search_path = notification;
             INSERT INTO channel (namespace, name, url, signing_secret)
                 VALUES ('bench', 'bench', '{url}',
                         'whsec_' || encode(sha256('bench'::bytea), 'base64'));
             INSERT INTO rule (namespace, name, event_type)
                 VALUES ('bench', 'bench', 'invoice.paid');
             INSERT INTO rule_channel SELECT r.id, c.id FROM rule r, channel c;
             WITH ev AS (
                 INSERT INTO event (namespace, type, rule_id, payload, created_at)
                 SELECT 'bench', 'invoice.paid', (SELECT id FROM rule),
                        jsonb_build_object('invoice', 'in_' || g, 'amount', g % 10000,
                                           'currency', 'EUR', 'customer', 'cus_' || (g % 977)),
                        now() - interval '1 hour' + g * interval '1 microsecond'
                 FROM generate_series(1, {n}) g
                 RETURNING id, created_at
             )
             INSERT INTO delivery_status (namespace, event_id, channel_id, event_created_at,
                                          state, next_attempt_at, clock_started_at)
             SELECT 'bench', ev.id, (SELECT id FROM channel), ev.created_at,
                    '{state}', {next}, now()
             FROM ev;"
        ))
        .expect("bench: seeding");
    client
        .batch_execute("VACUUM ANALYZE")
        .expect("bench: vacuum");
    eprintln!(
        "seeded {n} {state} events in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// Adds a row to the table, echoing it to stderr at once (so a later
/// failure does not lose it).
pub(crate) fn push(rows: &mut Vec<Row>, row: Row) {
    eprintln!("{}: {}: {}", row.scenario, row.setting, row.result);
    rows.push(row);
}

pub(crate) fn print_table(rows: &[Row], tiny: bool) {
    let header = ["scenario", "setting", "result", "target", "met"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let met = match (r.met, tiny) {
                (None, _) => String::new(),
                (Some(_), true) => "(tiny)".into(),
                (Some(true), false) => "yes".into(),
                (Some(false), false) => "NO".into(),
            };
            [
                r.scenario.to_string(),
                r.setting.clone(),
                r.result.clone(),
                r.target.clone(),
                met,
            ]
        })
        .collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|c| c[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..5).map(width).collect();
    let line = |c: &[&str]| {
        let padded: Vec<String> = c
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    println!();
    line(&header);
    let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&dashes.iter().map(String::as_str).collect::<Vec<_>>());
    for c in &cells {
        line(&c.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
