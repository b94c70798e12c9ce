//! The throughput benchmark of docs/benchmarks.md: it starts a throw-away
//! PostgreSQL (the test support's cluster) and a loopback webhook receiver
//! of its own, seeds events server-side with `generate_series`, runs the
//! real reconciliation pass (`Reconciler::run_pass`, what the daemon runs)
//! and prints one table:
//!
//! 1. latency-bound scaling: 100 ms receiver, workers 1/8/64 with the
//!    default (automatic, work-conserving) per-channel cap, and 8/64 with
//!    the cap set to the workers;
//! 2. database-bound: instant receiver, workers 4/16, against the raw
//!    single-row `UPDATE` autocommit rate with as many connections;
//! 3. memory under backlog: peak RSS of a child process (this binary,
//!    re-executed with [`CHILD_FLAG`]) during the first deliveries of a huge
//!    vs a small backlog;
//! 4. idle pass: all events finished; pass duration and the due query plan;
//! 5. promptness: the daemon (`run`, the real binary) with 32 workers, a
//!    healthy receiver getting 100 events/s through `enqueue_event` while a
//!    second endpoint answering after 5 s has 16 deliveries due: enqueue to
//!    receipt p50/p90/p99/max, measured at the receiver from the enqueue
//!    time the payload carries;
//! 6. failover: two daemons, kill -9 of the leader, time to the standby's
//!    first delivery; then a silent partition of the leader (a proxy that
//!    stops forwarding, sockets open), time from the freeze to the first
//!    delivery of the standby, which fences it after `takeover_after`.
//!
//! Scenarios 5 and 6 run the binary; `NR_BENCH_BIN=path` runs another build
//! of it instead (an older version, for before/after figures; it is then
//! given no `delivery.allow_networks`, a key older builds do not know).
//! 7. HTTPS drain ([`https_drain`]): the same backlog over plain HTTP and
//!    over HTTPS (a private CA from the test support, trusted through
//!    `delivery.ca_file`): deliveries/s, CPU per delivery, TLS handshakes.
//! 8. concurrency ([`concurrency`]): the daemon binary with 64, 256 and
//!    1,024 workers on a pool of 32 connections against a receiver answering
//!    after 1 s: deliveries/s against `workers / 1 s`, the most database
//!    connections of ours seen at once, the daemon's peak RSS and its
//!    worker threads' touched stack.
//! 9. scale-out ([`scaleout`]): 1, 2 and 3 daemons with 64 workers each and
//!    `reconciler.shards = 12` against one PostgreSQL and a 100 ms
//!    receiver: deliveries/s and the speed-up over one instance; then
//!    kill -9 of one of three, time to the first delivery of its shards by
//!    another.
//! 10. fairness ([`fairness`]): the daemon binary with 16 workers and the
//!    automatic per-channel cap, a hanging endpoint with 10,000 due
//!    deliveries (`delivery.timeout` 3 s), or a slow one that answers
//!    every request with 200 after 2 s with as many, and a healthy one
//!    receiving 100 events/s for 10 s: the healthy endpoint's enqueue →
//!    receipt p50/p99 with and without the other; and EXPLAIN ANALYZE of the due
//!    queries with 1,000,000 due deliveries on one channel.
//! 11. retention (`benches/throughput/retention.rs`; `--only retention`
//!    and `--only retention-steady`): pruning a backlog of finished events
//!    (in-process steps; the daemon catching up while new work arrives, its
//!    latency with and without pruning) against what partitions would cost
//!    to adopt, and the disk of a steady state with `keep_finished = "2m"`.
//! 12. flaky endpoint ([`flaky`]): the daemon binary with 16 workers, one
//!    endpoint failing 30% of requests at random with fast 500s, 20
//!    events/s for 5 minutes, a 1–16 s retry schedule, the default breaker
//!    (5, 30 s) and then the breaker off (`breaker_failures = 0`): the
//!    share of the time the breaker was open (the metrics gauge sampled
//!    every 100 ms) and enqueue → success p50/p90.
//! 13. delivery controls (`benches/throughput/controls.rs`; `--only
//!    controls`): the rate limiter's precision at 10/s and 1,000/s, an
//!    ordered channel's rate against 1 / endpoint latency, and
//!    `enqueue_event`'s cost with 0, 1 and 10 filtered rules on the type.
//! 14. durable drain (`benches/throughput/durable.rs`; `--only durable`):
//!    20,000 deliveries to an instant receiver on a cluster of its own at
//!    PostgreSQL's defaults (fsync, synchronous commit), the daemon binary
//!    with 16 and 64 workers: deliveries/s, machine, PostgreSQL and daemon
//!    CPU per delivery, WAL bytes per delivery, and pgbench's single-row
//!    UPDATE rate with as many connections in the same run.
//! 15. durable drain over TLS (`benches/throughput/db_tls.rs`; `--only
//!    db-tls`): 20,000 deliveries over 16 channels on a durable cluster
//!    with `ssl = on`, the daemon binary with 64 workers over
//!    `sslmode=disable` and `sslmode=verify-full` alternately, three times each:
//!    deliveries/s and CPU per delivery of each, and the ratio (target
//!    ≥ 0.9×).
//!
//! `cargo bench --bench throughput` runs the full sizes (several minutes);
//! `-- --tiny` runs every scenario with small counts in well under a minute
//! and checks only that every delivery happened (what CI runs). `--only
//! latency|db|memory|idle|prompt|failover|https|concurrency|scaleout|fairness|retention|retention-catchup|retention-steady|flaky|controls|durable|db-tls`
//! runs one scenario (`--backlog N`: the retention catch-up's backlog). Timing targets are reported,
//! never asserted. The receiver is this file's own (one thread per
//! keep-alive connection, no recording) so that it is never the bottleneck;
//! `--support-receiver` uses the test support's recording receiver instead,
//! to compare.

#[path = "throughput/controls.rs"]
mod controls;
#[path = "throughput/db_tls.rs"]
mod db_tls;
#[path = "throughput/durable.rs"]
mod durable;
#[path = "throughput/groups.rs"]
mod groups;
#[path = "throughput/retention.rs"]
mod retention;
#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notification_reconciler::config::Config;
use notification_reconciler::http_server;
use notification_reconciler::reconcile::hooks::{Hooks, NoHooks};
use notification_reconciler::reconcile::job::Done;
use notification_reconciler::reconcile::leader::{PassOutcome, Reconciler};
use notification_reconciler::reconcile::report::{Report, Tally};
use support::sessions::SessionSampler;
use support::{Script, TestDb};

/// The argument that makes this binary the memory scenario's child.
const CHILD_FLAG: &str = "--memory-child";

/// How big each scenario is.
struct Sizes {
    latency_events: u64,
    latency: Duration,
    latency_workers: Vec<usize>,
    db_events: u64,
    db_workers: Vec<usize>,
    raw_duration: Duration,
    backlogs: [u64; 2],
    memory_deliveries: u64,
    memory_workers: usize,
    idle_events: u64,
    idle_passes: usize,
    prompt_seconds: u64,
    prompt_rate: u64,
    prompt_slow: u64,
    prompt_slow_latency: Duration,
    failover_trials: usize,
    fair_hanging: u64,
    fair_timeout: &'static str,
    /// How long the slow endpoint may borrow before the measurement.
    fair_slow_ramp: Duration,
    /// Scenario 10: the fast endpoint's backlog (it must outlast the
    /// measurement: it drains at several thousand a second).
    fair_fast_backlog: u64,
    /// The slow endpoint's latency (below `fair_timeout`).
    fair_slow_latency: Duration,
    fair_seconds: u64,
    fair_rate: u64,
    fair_backlog: u64,
    /// Scale-out: deliveries per run, receiver latency, workers/instance.
    scaleout: (u64, Duration, usize),
    /// Flaky endpoint: seconds of enqueueing at `flaky_rate` a second.
    flaky_seconds: u64,
    flaky_rate: u64,
}

impl Sizes {
    fn full() -> Sizes {
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

    fn tiny() -> Sizes {
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
struct Row {
    scenario: &'static str,
    setting: String,
    result: String,
    target: String,
    met: Option<bool>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == CHILD_FLAG) {
        memory_child();
        return;
    }
    let tiny = args.iter().any(|a| a == "--tiny");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let support_receiver = args.iter().any(|a| a == "--support-receiver");
    let sizes = if tiny { Sizes::tiny() } else { Sizes::full() };
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);

    let started = Instant::now();
    let mut rows = Vec::new();
    let mut plans = Vec::new();
    if wanted("latency") {
        latency_bound(&sizes, support_receiver, &mut rows);
    }
    if wanted("db") {
        database_bound(&sizes, support_receiver, &mut rows);
    }
    if wanted("memory") {
        memory(&sizes, &mut rows);
    }
    if wanted("idle") {
        plans = idle(&sizes, &mut rows);
    }
    if wanted("prompt") {
        prompt(&sizes, &mut rows);
    }
    if wanted("failover") {
        failover(&sizes, &mut rows);
    }
    if wanted("https") {
        https_drain(tiny, &mut rows);
    }
    if wanted("concurrency") {
        concurrency(tiny, &mut rows);
    }
    if wanted("scaleout") {
        scaleout(&sizes, &mut rows);
    }
    if wanted("fairness") {
        fairness(&sizes, &mut rows);
        plans.extend(fair_explain(&sizes, &mut rows));
    }
    let mut retention_sizes = if tiny {
        retention::RetentionSizes::tiny()
    } else {
        retention::RetentionSizes::full()
    };
    if wanted("retention") {
        retention::steps(&retention_sizes, &mut rows);
    }
    if wanted("retention") || wanted("retention-catchup") {
        if let Some(n) = args
            .iter()
            .position(|a| a == "--backlog")
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
        {
            retention_sizes.backlog = n;
        }
        retention::catch_up(&retention_sizes, &mut rows);
    }
    if wanted("retention-steady") {
        retention::steady(&retention_sizes, &mut rows);
    }
    if wanted("flaky") {
        flaky(&sizes, &mut rows);
    }
    if wanted("controls") {
        let sizes = if tiny {
            controls::ControlSizes::tiny()
        } else {
            controls::ControlSizes::full()
        };
        controls::run(&sizes, &mut rows);
    }
    if wanted("durable") {
        let durable_sizes = if tiny {
            durable::DurableSizes::tiny()
        } else {
            durable::DurableSizes::full()
        };
        durable::durable(&durable_sizes, &mut rows);
    }
    if wanted("groups") {
        let group_sizes = if tiny {
            groups::GroupSizes::tiny()
        } else {
            groups::GroupSizes::full()
        };
        groups::groups(&group_sizes, &mut rows);
    }
    if wanted("db-tls") {
        let sizes = if tiny {
            db_tls::DbTlsSizes::tiny()
        } else {
            db_tls::DbTlsSizes::full()
        };
        db_tls::db_tls(&sizes, &mut rows);
    }
    print_table(&rows, tiny);
    for plan in plans {
        println!("\n{plan}");
    }
    println!(
        "\ntotal {:.1} s{}",
        started.elapsed().as_secs_f64(),
        if tiny {
            " (tiny sizes: targets not judged)"
        } else {
            ""
        }
    );
}

// ---------------------------------------------------------------- scenarios

/// Scenario 1: deliveries/s with a slow receiver, and efficiency against
/// `workers / latency`: with the default per-channel cap (automatic, so a
/// lone channel borrows idle workers), and with the cap set to the workers.
fn latency_bound(sizes: &Sizes, support_receiver: bool, rows: &mut Vec<Row>) {
    let receiver = AnyReceiver::start(sizes.latency, support_receiver);
    let mut single = None;
    let runs = sizes
        .latency_workers
        .iter()
        .map(|&w| (w, Cap::Automatic))
        .chain(
            sizes
                .latency_workers
                .iter()
                .filter(|&&w| w > 1)
                .map(|&w| (w, Cap::Workers)),
        );
    for (workers, cap) in runs {
        let db = support::migrated_db();
        seed(&db, sizes.latency_events, "PENDING", &receiver.url());
        let before = receiver.count();
        let (report, secs) = timed_pass_with(&db, workers, cap);
        check_delivered(&report, sizes.latency_events, "latency-bound");
        assert_eq!(
            receiver.count() - before,
            sizes.latency_events,
            "latency-bound: the receiver got every request once"
        );
        let rate = sizes.latency_events as f64 / secs;
        let ideal = workers as f64 / sizes.latency.as_secs_f64();
        let efficiency = rate / ideal;
        let single_rate = *single.get_or_insert(rate);
        let speedup = rate / single_rate;
        let mut target = String::new();
        let mut met = None;
        if workers == 64 {
            target = "efficiency ≥ 0.90, ≥ 50× 1 worker".into();
            met = Some(efficiency >= 0.90 && speedup >= 50.0);
        }
        push(
            rows,
            Row {
                scenario: "1 latency-bound",
                setting: format!(
                    "{workers} workers, {} events, {} ms, {}",
                    sizes.latency_events,
                    sizes.latency.as_millis(),
                    match cap {
                        Cap::Automatic => "default cap",
                        Cap::Workers => "cap = workers",
                    }
                ),
                result: format!(
                    "{rate:.1}/s in {secs:.2} s, eff {efficiency:.3}, {speedup:.1}× 1 worker"
                ),
                target,
                met,
            },
        );
    }
}

/// Scenario 2: deliveries/s with an instant receiver, against the raw
/// single-row UPDATE autocommit rate with as many connections.
fn database_bound(sizes: &Sizes, support_receiver: bool, rows: &mut Vec<Row>) {
    let receiver = AnyReceiver::start(Duration::ZERO, support_receiver);
    for &workers in &sizes.db_workers {
        let db = support::migrated_db();
        seed(&db, sizes.db_events, "PENDING", &receiver.url());
        let (report, secs) = timed_pass(&db, workers);
        check_delivered(&report, sizes.db_events, "database-bound");
        let rate = sizes.db_events as f64 / secs;
        let raw = raw_update_rate(&db, workers, sizes.raw_duration);
        let ratio = rate / raw;
        push(
            rows,
            Row {
                scenario: "2 database-bound",
                setting: format!("{workers} workers, {} events", sizes.db_events),
                result: format!(
                    "{rate:.0}/s in {secs:.2} s; raw UPDATE {raw:.0}/s; ratio {ratio:.2}"
                ),
                target: "≥ 0.50 of raw".into(),
                met: Some(ratio >= 0.50),
            },
        );
    }
}

/// Scenario 3: peak RSS of a child running the pass for the first
/// deliveries of a big and a small backlog.
fn memory(sizes: &Sizes, rows: &mut Vec<Row>) {
    let receiver = AnyReceiver::start(Duration::ZERO, false);
    let mut peaks = Vec::new();
    for &backlog in &sizes.backlogs {
        let db = support::migrated_db();
        seed(&db, backlog, "PENDING", &receiver.url());
        let t = Instant::now();
        let out = Command::new(std::env::current_exe().expect("bench: own executable path"))
            .arg(CHILD_FLAG)
            .env("NR_BENCH_URL", &db.url)
            .env("NR_BENCH_LIMIT", sizes.memory_deliveries.to_string())
            .env("NR_BENCH_WORKERS", sizes.memory_workers.to_string())
            .output()
            .expect("bench: cannot run the memory child");
        let secs = t.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "bench: memory child failed: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |name: &str| -> u64 {
            stdout
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .unwrap_or_else(|| panic!("bench: child printed no {name}: {stdout}"))
        };
        let (delivered, hwm_kib) = (field("delivered"), field("vmhwm_kib"));
        let expected = sizes.memory_deliveries.min(backlog);
        assert!(
            delivered >= expected,
            "memory: child delivered {delivered} of {expected}"
        );
        let mib = hwm_kib as f64 / 1024.0;
        peaks.push(mib);
        push(
            rows,
            Row {
                scenario: "3 memory",
                setting: format!(
                    "backlog {backlog}, first {} deliveries, {} workers",
                    sizes.memory_deliveries, sizes.memory_workers
                ),
                result: format!("peak RSS {mib:.1} MiB ({delivered} delivered, {secs:.1} s)"),
                target: if backlog == sizes.backlogs[0] {
                    "≤ 64 MiB".into()
                } else {
                    String::new()
                },
                met: (backlog == sizes.backlogs[0]).then_some(mib <= 64.0),
            },
        );
    }
    let ratio = peaks[0] / peaks[1];
    push(
        rows,
        Row {
            scenario: "3 memory",
            setting: format!("ratio {} / {}", sizes.backlogs[0], sizes.backlogs[1]),
            result: format!("{ratio:.2}"),
            target: "≤ 1.5".into(),
            met: Some(ratio <= 1.5),
        },
    );
}

/// The memory child: runs one pass until `NR_BENCH_LIMIT` events are done,
/// then prints what it delivered and its peak RSS.
fn memory_child() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("child: {name} unset"));
    let limit: u64 = var("NR_BENCH_LIMIT").parse().expect("child: limit");
    let workers: usize = var("NR_BENCH_WORKERS").parse().expect("child: workers");
    let stop = AtomicBool::new(false);
    let hooks = StopAfter { limit, stop: &stop };
    let mut reconciler =
        Reconciler::new(&config(&var("NR_BENCH_URL"), workers)).expect("child: reconciler");
    let report = match reconciler.run_pass(&stop, &hooks).expect("child: pass") {
        PassOutcome::Ran(report) => report,
        PassOutcome::LockHeld => panic!("child: lock held"),
    };
    drop(reconciler);
    let status = std::fs::read_to_string("/proc/self/status").expect("child: /proc/self/status");
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .expect("child: VmHWM line");
    println!("delivered={} vmhwm_kib={hwm}", report.delivered);
}

/// Stops the pass once `limit` events are done.
struct StopAfter<'a> {
    limit: u64,
    stop: &'a AtomicBool,
}

impl Hooks for StopAfter<'_> {
    fn finished(&self, _done: &Done, tally: &Tally) {
        if tally.deliveries >= self.limit {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Scenario 4: passes over many finished events; returns the due queries'
/// plans.
fn idle(sizes: &Sizes, rows: &mut Vec<Row>) -> Vec<String> {
    let db = support::migrated_db();
    seed(
        &db,
        sizes.idle_events,
        "SUCCESS",
        "http://127.0.0.1:9/unused",
    );
    let mut reconciler = Reconciler::new(&config(&db.url, 16)).expect("bench: reconciler");
    let mut durations = Vec::new();
    for _ in 0..=sizes.idle_passes {
        let t = Instant::now();
        let report = pass(&mut reconciler);
        durations.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(report.deliveries_seen, 0, "idle: nothing is due");
    }
    let first = durations.remove(0);
    durations.sort_by(f64::total_cmp);
    let median = durations[durations.len() / 2];
    let max = durations[durations.len() - 1];
    push(rows, Row {
        scenario: "4 idle pass",
        setting: format!("{} finished events, 0 due", sizes.idle_events),
        result: format!(
            "median {median:.1} ms, max {max:.1} ms over {} passes (first, connecting: {first:.1} ms)",
            durations.len()
        ),
        target: "≤ 50 ms".into(),
        met: Some(median <= 50.0),
    });

    let mut client = db.client();
    client
        .batch_execute("SET search_path = notification")
        .expect("bench: search_path");
    let mut plans = Vec::new();
    for (name, sql) in [
        ("due channels query", explainable_channels_sql()),
        ("due count query", count_sql()),
    ] {
        let plan = explain_analyze(&mut client, &sql).join("\n");
        // Any partial index of unfinished rows (the channels query walks
        // the channel-led one, the count may take the next_attempt_at one
        // or, on an idle database where all are empty, 0009's ordered one).
        assert!(
            plan.contains("delivery_status_channel_due")
                || plan.contains("delivery_status_next")
                || plan.contains("delivery_status_channel_order"),
            "idle: the {name} does not use a partial index of unfinished rows:\n{plan}"
        );
        plans.push(format!(
            "EXPLAIN ANALYZE of the {name} (idle database):\n{plan}"
        ));
    }
    plans
}

/// The lines of `EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) sql`.
fn explain_analyze(client: &mut postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(&format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}"), &[])
        .expect("bench: EXPLAIN")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// The count query of `db::due::count_due`, with the cut-off inlined.
fn count_sql() -> String {
    format!(
        "SELECT count(*) FROM delivery_status WHERE {} AND next_attempt_at <= now()",
        notification_reconciler::db::due::NEXT_INDEX_FILTER
    )
}

/// The channels query of `db::due` with its cut-off inlined (now).
fn explainable_channels_sql() -> String {
    notification_reconciler::db::due::channels_sql(false).replace("$1", "now()")
}

/// Scenario 5: enqueue to receipt through the real daemon while slow
/// deliveries are in flight.
fn prompt(sizes: &Sizes, rows: &mut Vec<Row>) {
    let db = daemon_db();
    let fast = support::Receiver::start(Script::status(200));
    let slow =
        support::Receiver::start(Script::status(200).with_latency(sizes.prompt_slow_latency));
    let mut client = db.client();
    support::fixtures::channel_for(
        &mut client,
        "fast",
        &fast.url(),
        support::fixtures::SECRET,
        "{}",
    );
    support::fixtures::channel_for(
        &mut client,
        "slow",
        &slow.url(),
        support::fixtures::SECRET,
        "{}",
    );
    support::fixtures::emit(&mut client, "slow", "'{}'::jsonb", sizes.prompt_slow as i32);
    let mut daemon = BinDaemon::start(&db.url, 32, "15s");
    let deadline = Instant::now() + Duration::from_secs(60);
    while slow.in_flight() < sizes.prompt_slow as usize {
        assert!(
            Instant::now() < deadline,
            "prompt: the slow deliveries never started:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let total = sizes.prompt_seconds * sizes.prompt_rate;
    let latencies = timed_enqueues(&mut client, &fast, "fast", total, sizes.prompt_rate, || {
        daemon.stderr()
    });
    let slow_still_in_flight = slow.in_flight();
    let recorded = answer_to_record_ms(&mut client, &fast);
    daemon.stop();
    let pct = |p| percentile(&latencies, p);
    let (p50, p90, p99, max) = (pct(0.50), pct(0.90), pct(0.99), pct(1.0));
    push(
        rows,
        Row {
            scenario: "5 promptness",
            setting: format!(
                "{} events at {}/s, {} deliveries of {} ms in flight, 32 workers, interval 15s",
                total,
                sizes.prompt_rate,
                sizes.prompt_slow,
                sizes.prompt_slow_latency.as_millis()
            ),
            result: format!(
                "enqueue→receipt p50 {p50:.1} ms, p90 {p90:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({slow_still_in_flight} slow still in flight at the end)"
            ),
            target: "p50 ≤ 25 ms, p99 ≤ 150 ms".into(),
            met: Some(p50 <= 25.0 && p99 <= 150.0),
        },
    );
    let rpct = |p| percentile(&recorded, p);
    let (r50, r99, rmax) = (rpct(0.50), rpct(0.99), rpct(1.0));
    push(
        rows,
        Row {
            scenario: "5 promptness",
            setting: format!("the same {} deliveries", recorded.len()),
            result: format!(
                "answer→record (receipt at the receiver to the start of the transaction \
                 that wrote the outcome) p50 {r50:.1} ms, p99 {r99:.1} ms, max {rmax:.1} ms"
            ),
            target: "p99 ≤ 10 ms".into(),
            met: Some(r99 <= 10.0),
        },
    );
}

/// For each request `receiver` got, the time from its receipt to the start
/// of the transaction that recorded its outcome (`updated_at`, the
/// database's `now()`), in ms, sorted; waits until every one is recorded.
fn answer_to_record_ms(client: &mut postgres::Client, receiver: &support::Receiver) -> Vec<f64> {
    let clock = WallClock::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let requests = receiver.requests();
    let ids: Vec<uuid::Uuid> = requests
        .iter()
        .filter_map(|r| r.webhook_id().and_then(|id| id.parse().ok()))
        .collect();
    let written = loop {
        let rows = client
            .query(
                "SELECT event_id, extract(epoch FROM updated_at)::float8
                 FROM notification.delivery_status
                 WHERE event_id = ANY($1) AND state = 'SUCCESS'",
                &[&ids],
            )
            .expect("bench: read outcomes");
        if rows.len() == ids.len() || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let at: std::collections::HashMap<uuid::Uuid, f64> =
        written.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut ms: Vec<f64> = requests
        .iter()
        .filter_map(|rq| {
            let id: uuid::Uuid = rq.webhook_id()?.parse().ok()?;
            let received = clock.wall_of(rq.at);
            Some((at.get(&id)? - received) * 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// Enqueues `total` events of `event_type` at `rate` a second through
/// `enqueue_event`, each carrying its enqueue time (the database's clock),
/// waits until `receiver` got them all, and returns each one's enqueue →
/// receipt time in ms, sorted. `log` is shown when they do not arrive.
fn timed_enqueues(
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
fn timed_enqueues_while(
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
struct WallClock {
    instant: Instant,
    wall: std::time::SystemTime,
}

impl WallClock {
    fn now() -> WallClock {
        WallClock {
            instant: Instant::now(),
            wall: std::time::SystemTime::now(),
        }
    }

    /// Enqueue → receipt of `rq`, in ms: the enqueue time is the payload's
    /// `t` (see [`timed_enqueues`]).
    fn enqueue_to_receipt_ms(&self, rq: &support::Request) -> f64 {
        let enqueued = rq.json()["data"]["t"]
            .as_f64()
            .expect("bench: t in the payload");
        (self.wall_of(rq.at) - enqueued) * 1000.0
    }

    /// `at` on the wall clock, as UNIX seconds.
    fn wall_of(&self, at: Instant) -> f64 {
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
fn enqueue_at_rate(client: &mut postgres::Client, event_type: &str, total: u64, rate: u64) {
    enqueue_at_rate_while(client, event_type, rate, |i| i < total);
}

/// [`enqueue_at_rate`] for as long as `more(events enqueued so far)` holds;
/// returns how many it enqueued.
fn enqueue_at_rate_while(
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
fn wait_all_recorded(
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
fn percentile(values: &[f64], p: f64) -> f64 {
    values[((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1]
}

/// Scenario 10's other endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Other {
    /// None: the healthy endpoint alone.
    Alone,
    /// One that never answers, with a large due backlog.
    Hanging,
    /// One that answers every request with 200 after 2 s, with as large a
    /// backlog (the work-conserving cap lets it borrow idle workers).
    Slow,
    /// One that answers every request with 200 at once, with a backlog
    /// larger still: it borrows idle workers.
    Fast,
}

/// Scenario 10: a healthy endpoint's enqueue → receipt latency at a steady
/// rate, without and with a hanging endpoint that has a large due backlog,
/// and with a slow one that answers.
fn fairness(sizes: &Sizes, rows: &mut Vec<Row>) {
    let mut p99s = Vec::new();
    for other in [Other::Alone, Other::Hanging, Other::Slow, Other::Fast] {
        let db = daemon_db();
        let healthy = support::Receiver::start(Script::status(200));
        let script = match other {
            Other::Slow => Script::status(200).with_latency(sizes.fair_slow_latency),
            Other::Fast => Script::status(200),
            Other::Alone | Other::Hanging => Script::hang(),
        };
        let dead = support::Receiver::start(script);
        let mut client = db.client();
        let secret = support::fixtures::SECRET;
        support::fixtures::channel_for(&mut client, "healthy", &healthy.url(), secret, "{}");
        if other != Other::Alone {
            support::fixtures::channel_for(&mut client, "dead", &dead.url(), secret, "{}");
            let backlog = match other {
                Other::Fast => sizes.fair_fast_backlog,
                _ => sizes.fair_hanging,
            };
            support::fixtures::emit(&mut client, "dead", "'{}'::jsonb", backlog as i32);
        }
        let mut daemon = BinDaemon::start_with(
            &db.url,
            16,
            18,
            "15s",
            &format!(
                "timeout = \"{}\"\nmax_in_flight_per_channel = 0\n",
                sizes.fair_timeout
            ),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while other != Other::Alone && dead.in_flight() == 0 && dead.count() == 0 {
            assert!(
                Instant::now() < deadline,
                "fairness: the other endpoint's deliveries never started:\n{}",
                daemon.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        if matches!(other, Other::Slow | Other::Fast) {
            // Measure once it borrows what it can: it has been answering
            // for a few round trips.
            std::thread::sleep(sizes.fair_slow_ramp);
        }
        let total = sizes.fair_seconds * sizes.fair_rate;
        let latencies = timed_enqueues(
            &mut client,
            &healthy,
            "healthy",
            total,
            sizes.fair_rate,
            || daemon.stderr(),
        );
        let log = daemon.stderr();
        daemon.stop();
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        p99s.push(p99);
        let breaker = if log.contains("breaker open") {
            "its breaker opened"
        } else {
            "its breaker stayed closed"
        };
        let setting = match other {
            Other::Alone => format!(
                "{total} events at {}/s, 16 workers, healthy endpoint alone",
                sizes.fair_rate
            ),
            Other::Hanging => format!(
                "{total} events at {}/s, 16 workers, with a hanging endpoint: {} due, timeout {}",
                sizes.fair_rate, sizes.fair_hanging, sizes.fair_timeout
            ),
            Other::Slow => format!(
                "{total} events at {}/s, 16 workers, with a slow endpoint (200 after {} ms): {} due",
                sizes.fair_rate,
                sizes.fair_slow_latency.as_millis(),
                sizes.fair_hanging
            ),
            Other::Fast => format!(
                "{total} events at {}/s, 16 workers, with a fast endpoint (200 at once): {} due",
                sizes.fair_rate, sizes.fair_fast_backlog
            ),
        };
        let result = match other {
            Other::Alone => format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
            Other::Hanging => format!(
                "p50 {p50:.1} ms, p99 {p99:.1} ms; the hanging endpoint held at most {} workers, {breaker}, {} requests",
                dead.peak_concurrency(),
                dead.count()
            ),
            Other::Slow => format!(
                "p50 {p50:.1} ms, p99 {p99:.1} ms; the slow endpoint held at most {} workers, {breaker}, {} requests",
                dead.peak_concurrency(),
                dead.count()
            ),
            Other::Fast => format!(
                "p50 {p50:.1} ms, p99 {p99:.1} ms; the fast endpoint had at most {} requests at once, {} requests (its backlog was still due at the end: {})",
                dead.peak_concurrency(),
                dead.count(),
                (dead.count() as u64) < sizes.fair_fast_backlog
            ),
        };
        push(
            rows,
            Row {
                scenario: "10 fairness",
                setting,
                result,
                target: String::new(),
                met: None,
            },
        );
    }
    for (k, what) in [(1, "hanging"), (2, "slow"), (3, "fast")] {
        let ratio = p99s[k] / p99s[0];
        push(
            rows,
            Row {
                scenario: "10 fairness",
                setting: format!("p99 with / p99 without the {what} endpoint"),
                result: format!("{ratio:.2}"),
                target: "≤ 1.5".into(),
                met: Some(ratio <= 1.5),
            },
        );
    }
}

/// Scenario 12's retry schedule: 1–16 s, 13 attempts, so that at 30%
/// random failures a delivery fails all of them once in 6 million (with 8
/// attempts, one of 6,000 deliveries did, and the wait for it never ended).
const FLAKY_SCHEDULE: &str =
    r#""1s", "2s", "4s", "8s", "16s", "16s", "16s", "16s", "16s", "16s", "16s", "16s""#;

/// Scenario 12: one endpoint failing 30% of requests at random with fast
/// 500s, `flaky_rate` events/s for `flaky_seconds`, with the default
/// breaker and with the breaker off: the share of the time the breaker
/// was open and enqueue → success (the request answered 200) p50/p90.
/// It waits until every delivery succeeded or nothing is unfinished (a
/// delivery that failed every attempt is counted as FAILED, not waited
/// for).
fn flaky(sizes: &Sizes, rows: &mut Vec<Row>) {
    let total = sizes.flaky_seconds * sizes.flaky_rate;
    let mut quantiles = Vec::new();
    let mut open_share = 0.0;
    for breaker_on in [true, false] {
        let db = daemon_db();
        let clock = WallClock::now();
        let successes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::clone(&successes);
        let sink = support::Receiver::start(Script::new(move |rq| {
            if rand::random::<f64>() < 0.3 {
                return support::Reply::status(500);
            }
            if let Ok(mut s) = recorded.lock() {
                s.push(clock.enqueue_to_receipt_ms(rq));
            }
            support::Reply::status(200)
        }));
        let mut client = db.client();
        let secret = support::fixtures::SECRET;
        support::fixtures::channel_for(&mut client, "flaky", &sink.url(), secret, "{}");
        let metrics = support::net::free_addr();
        let mut daemon = BinDaemon::start_with(
            &db.url,
            16,
            18,
            "15s",
            &format!(
                "retry_schedule = [{FLAKY_SCHEDULE}]\n\
                 max_in_flight_per_channel = 0\n{}[metrics]\nlisten = \"{metrics}\"\n",
                if breaker_on {
                    ""
                } else {
                    "breaker_failures = 0\n"
                }
            ),
        );
        // The breaker gauge, sampled every 100 ms until the last success.
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut samples, mut open) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    let gauge =
                        support::net::http_get(metrics, "/metrics").and_then(|(_, body)| {
                            body.lines().find_map(|l| {
                                l.strip_prefix("notification_reconciler_channel_breakers_open ")?
                                    .parse::<f64>()
                                    .ok()
                            })
                        });
                    if let Some(g) = gauge {
                        samples += 1;
                        open += u64::from(g > 0.0);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                (samples, open)
            })
        };
        enqueue_at_rate(&mut client, "flaky", total, sizes.flaky_rate);
        let deadline = Instant::now() + Duration::from_secs(300);
        while successes.lock().map_or(0, |s| s.len()) < total as usize
            && support::fixtures::unfinished(&mut client) > 0
        {
            assert!(
                Instant::now() < deadline,
                "flaky: {} of {total} delivered:\n{}",
                successes.lock().map_or(0, |s| s.len()),
                daemon.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::SeqCst);
        let failed = support::fixtures::count_state(&mut client, "FAILED");
        let (samples, open) = sampler.join().expect("bench: sampler");
        let log = daemon.stderr();
        daemon.stop();
        let mut latencies = successes.lock().map(|s| s.clone()).unwrap_or_default();
        latencies.sort_by(f64::total_cmp);
        let pct = |p| percentile(&latencies, p);
        let (p50, p90, p99, max) = (pct(0.5), pct(0.9), pct(0.99), pct(1.0));
        quantiles.push((p50, p90));
        let share = open as f64 / samples.max(1) as f64;
        if breaker_on {
            open_share = share;
        }
        push(
            rows,
            Row {
                scenario: "12 flaky endpoint",
                setting: format!(
                    "{total} events at {}/s, 30% random fast 500s, retries 1-16 s (13 attempts), 16 workers, {}",
                    sizes.flaky_rate,
                    if breaker_on {
                        "default breaker (5, 30s)"
                    } else {
                        "breaker_failures = 0"
                    }
                ),
                result: format!(
                    "breaker open {:.2}% of {samples} samples ({} times opened); enqueue→success p50 {p50:.0} ms, p90 {p90:.0} ms, p99 {p99:.0} ms, max {max:.0} ms; {} requests, {failed} FAILED",
                    share * 100.0,
                    log.matches("breaker open, no attempts").count(),
                    sink.count()
                ),
                target: if breaker_on {
                    "open ≤ 5%".into()
                } else {
                    String::new()
                },
                met: breaker_on.then_some(share <= 0.05),
            },
        );
    }
    let (r50, r90) = (
        quantiles[0].0 / quantiles[1].0,
        quantiles[0].1 / quantiles[1].1,
    );
    push(
        rows,
        Row {
            scenario: "12 flaky endpoint",
            setting: "default breaker / breaker off".into(),
            result: format!(
                "p50 {r50:.2}×, p90 {r90:.2}× (breaker open {:.2}%)",
                open_share * 100.0
            ),
            target: "p50, p90 ≤ 1.2×".into(),
            met: Some(r50 <= 1.2 && r90 <= 1.2),
        },
    );
}

/// Scenario 10, the due queries with a huge backlog on one channel: the
/// channels query and the read of another channel's deliveries, EXPLAIN
/// ANALYZE, with `fair_backlog` due deliveries on one channel and 10 on
/// another (the newest events, so in the old global keyset order they came
/// after the whole backlog).
fn fair_explain(sizes: &Sizes, rows: &mut Vec<Row>) -> Vec<String> {
    let db = support::migrated_db();
    seed(
        &db,
        sizes.fair_backlog,
        "PENDING",
        "http://127.0.0.1:9/hook",
    );
    let mut client = db.client();
    let other: String = client
        .query_one(
            "WITH c AS (INSERT INTO notification.channel (namespace, name, url, signing_secret)
                        VALUES ('bench', 'other', 'http://127.0.0.1:9/other',
                                'whsec_' || encode(sha256('other'::bytea), 'base64'))
                        RETURNING id),
                  s AS (INSERT INTO notification.delivery_status
                            (namespace, event_id, channel_id, event_created_at, state,
                             next_attempt_at, clock_started_at)
                        SELECT 'bench', e.id, c.id, e.created_at, 'PENDING', e.created_at, now()
                        FROM (SELECT id, created_at FROM notification.event
                              ORDER BY created_at DESC LIMIT 10) e, c)
             SELECT id::text FROM c",
            &[],
        )
        .expect("bench: the other channel")
        .get(0);
    client
        .batch_execute("VACUUM ANALYZE")
        .expect("bench: vacuum");
    client
        .batch_execute("SET search_path = notification")
        .expect("bench: search_path");
    let mut plans = Vec::new();
    let read_args = format!(
        "now(), ARRAY['{other}']::uuid[], ARRAY['-infinity']::timestamptz[], \
         ARRAY['00000000-0000-0000-0000-000000000000']::uuid[]"
    );
    // As the daemon runs them: prepared statements, which PostgreSQL plans
    // for the values of the first executions (custom) and then may plan once
    // for any values (generic). Both are measured.
    for (name, types, sql, args) in [
        (
            "due channels query",
            "timestamptz",
            notification_reconciler::db::due::channels_sql(false),
            "now()".to_string(),
        ),
        (
            "read of the other channel",
            "timestamptz, uuid[], timestamptz[], uuid[]",
            notification_reconciler::db::due::read_sql(50),
            read_args,
        ),
    ] {
        for mode in ["custom", "generic"] {
            client
                .batch_execute(&format!(
                    "SET plan_cache_mode = force_{mode}_plan; DEALLOCATE ALL;
                     PREPARE q({types}) AS {sql}"
                ))
                .expect("bench: PREPARE");
            // Twice: the first warms the cache; the second is reported.
            let execute = format!("EXECUTE q({args})");
            explain_analyze(&mut client, &execute);
            let lines = explain_analyze(&mut client, &execute);
            let plan = lines.join("\n");
            assert!(
                plan.contains("delivery_status_channel_due"),
                "fairness: the {name} ({mode} plan) does not use delivery_status_channel_due:\n{plan}"
            );
            let ms: f64 = lines
                .iter()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("Execution Time: ")?
                        .strip_suffix(" ms")?
                        .parse()
                        .ok()
                })
                .unwrap_or(f64::NAN);
            let buffers = lines
                .iter()
                .find_map(|l| l.trim().strip_prefix("Buffers: "))
                .unwrap_or("?")
                .to_string();
            push(
                rows,
                Row {
                    scenario: "10 fairness",
                    setting: format!(
                        "{name}, {mode} plan, {} due on one channel",
                        sizes.fair_backlog
                    ),
                    result: format!("{ms:.2} ms (buffers {buffers})"),
                    target: "≤ 5 ms".into(),
                    met: Some(ms <= 5.0),
                },
            );
            plans.push(format!(
                "EXPLAIN ANALYZE of the {name}, {mode} plan ({} due deliveries on one channel, 10 on another):\n{plan}",
                sizes.fair_backlog
            ));
        }
    }
    client
        .batch_execute("RESET plan_cache_mode; DEALLOCATE ALL")
        .expect("bench: RESET");
    plans
}

/// Scenario 6: kill -9 of the leader to the standby's first delivery.
fn failover(sizes: &Sizes, rows: &mut Vec<Row>) {
    let mut took = Vec::new();
    for _ in 0..sizes.failover_trials {
        let db = daemon_db();
        let receiver =
            support::Receiver::start(Script::status(200).with_latency(Duration::from_millis(10)));
        let mut client = db.client();
        support::fixtures::channel_for(
            &mut client,
            "flow",
            &receiver.url(),
            support::fixtures::SECRET,
            "{}",
        );
        support::fixtures::emit(&mut client, "flow", "'{}'::jsonb", 3000);
        let mut a = BinDaemon::start(&db.url, 4, "15s");
        assert!(
            receiver.wait_for(20, Duration::from_secs(60)),
            "failover: A never delivered:\n{}",
            a.stderr()
        );
        let mut b = BinDaemon::start(&db.url, 4, "15s");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !b.stderr().contains("started") {
            assert!(
                Instant::now() < deadline,
                "failover: B never started:\n{}",
                b.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        a.kill9();
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(60);
        let first = loop {
            if let Some(rq) = receiver.requests().into_iter().find(|rq| rq.at > killed) {
                break rq.at;
            }
            assert!(
                Instant::now() < deadline,
                "failover: B never delivered:\n{}",
                b.stderr()
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        took.push((first - killed).as_secs_f64() * 1000.0);
        b.stop();
    }
    took.sort_by(f64::total_cmp);
    let median = took[took.len() / 2];
    let max = took[took.len() - 1];
    push(
        rows,
        Row {
            scenario: "6 failover",
            setting: format!("kill -9 of the leader, {} trials", took.len()),
            result: format!(
                "to the standby's first delivery: median {median:.0} ms, max {max:.0} ms"
            ),
            target: "≤ 1000 ms".into(),
            met: Some(max <= 1000.0),
        },
    );
    silent_partition(sizes, rows);
}

/// Scenario 6, second part: the leader (A) reaches PostgreSQL through a
/// proxy that goes silent both ways with its sockets open (no RST, no FIN);
/// the standby (B) connects directly and must fence A after
/// `reconciler.takeover_after` (default 10 s). Time from the freeze to B's
/// first delivery, told apart from A's by the sending process.
fn silent_partition(sizes: &Sizes, rows: &mut Vec<Row>) {
    if std::env::var_os("NR_BENCH_BIN").is_some() {
        return; // older builds do not fence: they would wait for TCP (hours)
    }
    let mut took = Vec::new();
    for _ in 0..sizes.failover_trials {
        let db = daemon_db();
        let pids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (receiver, arrivals) = support::Receiver::start_tagged(
            Script::status(200).with_latency(Duration::from_millis(10)),
            std::sync::Arc::clone(&pids),
        );
        let mut client = db.client();
        support::fixtures::channel_for(
            &mut client,
            "flow",
            &receiver.url(),
            support::fixtures::SECRET,
            "{}",
        );
        support::fixtures::emit(&mut client, "flow", "'{}'::jsonb", 3000);
        let upstream = db
            .url
            .split('@')
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|h| h.parse().ok())
            .expect("bench: 127.0.0.1:PORT in the test URL");
        let proxy = support::proxy::Proxy::start(upstream);
        let mut a = BinDaemon::start(&proxy.url(&db.url), 4, "15s");
        pids.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(a.child.id());
        assert!(
            receiver.wait_for(20, Duration::from_secs(60)),
            "silent partition: A never delivered:\n{}",
            a.stderr()
        );
        let mut b = BinDaemon::start(&db.url, 4, "15s");
        let b_pid = b.child.id();
        pids.lock().unwrap_or_else(|e| e.into_inner()).push(b_pid);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !b.stderr().contains("started") {
            assert!(
                Instant::now() < deadline,
                "silent partition: B never started:\n{}",
                b.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        proxy.freeze();
        let frozen = Instant::now();
        let deadline = frozen + Duration::from_secs(120);
        let first = loop {
            let seen = arrivals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(at, pid)| *pid == b_pid && *at > frozen)
                .map(|(at, _)| *at);
            if let Some(at) = seen {
                break at;
            }
            assert!(
                Instant::now() < deadline,
                "silent partition: B never delivered:\n{}",
                b.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        took.push((first - frozen).as_secs_f64() * 1000.0);
        a.kill9();
        b.stop();
    }
    took.sort_by(f64::total_cmp);
    let median = took[took.len() / 2];
    let max = took[took.len() - 1];
    push(
        rows,
        Row {
            scenario: "6 failover",
            setting: format!(
                "silent partition of the leader (takeover_after 10s), {} trials",
                took.len()
            ),
            result: format!(
                "freeze to the new leader's first delivery: median {median:.0} ms, max {max:.0} ms"
            ),
            target: "≤ 10000 ms".into(),
            met: Some(max <= 10_000.0),
        },
    );
}

/// Shards of the scale-out scenario (three instances lead 4 each).
const SCALEOUT_SHARDS: u32 = 12;

/// Channels of the scale-out scenario (spread over the shards).
const SCALEOUT_CHANNELS: usize = 60;

/// Scenario 9: deliveries/s of 1, 2 and 3 instances sharing 12 shards of
/// one database, each with 64 workers, against a 100 ms receiver; then
/// kill -9 of one of three to the first delivery of its shards by another.
fn scaleout(sizes: &Sizes, rows: &mut Vec<Row>) {
    let (events, latency, workers) = sizes.scaleout;
    let receiver = AnyReceiver::start(latency, false);
    let mut single = None;
    for instances in 1..=3usize {
        let db = scaleout_db(&receiver.url(), None);
        let daemons: Vec<BinDaemon> = (0..instances)
            .map(|_| BinDaemon::start_sharded(&db.url, workers, SCALEOUT_SHARDS))
            .collect();
        wait_balanced(&db, &daemons);
        let per_channel = (events as usize).div_ceil(SCALEOUT_CHANNELS) as i32;
        let mut client = db.client();
        let before = receiver.count();
        // Timed from the commit of the backlog (the enqueue of 12,000 events
        // in one statement takes a second or more, none of it delivering).
        emit_interleaved(&mut client, per_channel as usize * SCALEOUT_CHANNELS);
        let cpu_before = machine_cpu_ticks();
        let started = Instant::now();
        let total = (per_channel as usize * SCALEOUT_CHANNELS) as u64;
        let deadline = started + Duration::from_secs(600);
        while support::fixtures::unfinished(&mut client) > 0 {
            assert!(
                Instant::now() < deadline,
                "scaleout: deliveries never finished"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let secs = started.elapsed().as_secs_f64();
        let (busy, steal) = machine_cpu_share(cpu_before, machine_cpu_ticks());
        assert!(
            receiver.count() - before >= total,
            "scaleout: the receiver missed deliveries"
        );
        let rate = total as f64 / secs;
        let single_rate = *single.get_or_insert(rate);
        let speedup = rate / single_rate;
        let ideal = (instances * workers) as f64 / latency.as_secs_f64();
        push(
            rows,
            Row {
                scenario: "9 scale-out",
                setting: format!(
                    "{instances} instance(s) × {workers} workers, {SCALEOUT_SHARDS} shards, {total} deliveries, {} ms",
                    latency.as_millis()
                ),
                result: format!(
                    "{rate:.0}/s in {secs:.2} s, eff {:.3}, {speedup:.2}× 1 instance; machine CPU {:.0}% busy, {:.0}% steal",
                    rate / ideal,
                    busy * 100.0,
                    steal * 100.0
                ),
                target: if instances == 3 { "≥ 2.7× 1 instance".into() } else { String::new() },
                met: (instances == 3).then_some(speedup >= 2.7),
            },
        );
        for mut d in daemons {
            d.stop();
        }
    }
    scaleout_takeover(sizes, rows);
}

/// Scale-out, part 2: kill -9 of one of three instances while it delivers;
/// the time until another instance delivers to a channel of its shards.
fn scaleout_takeover(sizes: &Sizes, rows: &mut Vec<Row>) {
    let (_, _, workers) = sizes.scaleout;
    let mut took = Vec::new();
    for _ in 0..sizes.failover_trials {
        let receiver =
            support::Receiver::start(Script::status(200).with_latency(Duration::from_millis(10)));
        let mut channels = Vec::new();
        let db = scaleout_db(&receiver.url(), Some(&mut channels));
        let mut daemons: Vec<BinDaemon> = (0..3)
            .map(|_| BinDaemon::start_sharded(&db.url, workers, SCALEOUT_SHARDS))
            .collect();
        wait_balanced(&db, &daemons);
        let mut client = db.client();
        emit_interleaved(&mut client, 200 * SCALEOUT_CHANNELS);
        assert!(
            receiver.wait_for(300, Duration::from_secs(60)),
            "scaleout: nothing delivered"
        );
        let victim = daemons.remove(1);
        let victim_pid = victim.child.id();
        let shards = holdings(&db).remove(&victim_pid).unwrap_or_default();
        let victim_paths: Vec<String> = channels
            .iter()
            .enumerate()
            .filter(|(_, id)| {
                shards.contains(&notification_reconciler::shard::shard_of(
                    id,
                    SCALEOUT_SHARDS,
                ))
            })
            .map(|(c, _)| format!("c={c}"))
            .collect();
        assert!(
            !victim_paths.is_empty(),
            "scaleout: the victim led no channel"
        );
        let mut victim = victim;
        victim.kill9();
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(60);
        let first = loop {
            let hit = receiver.requests().into_iter().find(|rq| {
                rq.at > killed && victim_paths.iter().any(|p| rq.path.ends_with(p.as_str()))
            });
            if let Some(rq) = hit {
                break rq.at;
            }
            assert!(
                Instant::now() < deadline,
                "scaleout: its shards were never taken"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        took.push((first - killed).as_secs_f64() * 1000.0);
        for mut d in daemons {
            d.stop();
        }
    }
    took.sort_by(f64::total_cmp);
    let (median, max) = (took[took.len() / 2], took[took.len() - 1]);
    push(
        rows,
        Row {
            scenario: "9 scale-out",
            setting: format!("kill -9 of one of 3 instances, {} trials", took.len()),
            result: format!(
                "to the first delivery of its shards by another: median {median:.0} ms, max {max:.0} ms"
            ),
            target: "≤ 2000 ms".into(),
            met: Some(max <= 2000.0),
        },
    );
}

/// A migrated database with 12 shards recorded, 60 channels to `url`
/// (`?c=N`, one event type `tN` each); their ids into `channels`. The ids
/// are random but drawn so that each shard has 5 channels: with 60 random
/// ids the busiest of 3 instances would get anywhere up to about 40% of the
/// work, and the scenario would measure the hash's luck, not the capacity.
fn scaleout_db(url: &str, channels: Option<&mut Vec<uuid::Uuid>>) -> TestDb {
    let db = support::migrated_db();
    let mut client = db.client();
    client
        .execute(
            "UPDATE notification.settings SET shards = $1",
            &[&(SCALEOUT_SHARDS as i32)],
        )
        .expect("scaleout: record the shard count");
    let per_shard = SCALEOUT_CHANNELS / SCALEOUT_SHARDS as usize;
    let mut in_shard = [0usize; SCALEOUT_SHARDS as usize];
    let mut ids = Vec::new();
    for c in 0..SCALEOUT_CHANNELS {
        let id = loop {
            let id = uuid::Uuid::new_v4();
            let s = notification_reconciler::shard::shard_of(&id, SCALEOUT_SHARDS) as usize;
            if in_shard[s] < per_shard {
                in_shard[s] += 1;
                break id;
            }
        };
        ids.push(support::fixtures::channel_with_id(
            &mut client,
            id,
            &format!("t{c}"),
            &format!("{url}?c={c}"),
            support::fixtures::SECRET,
            "{}",
        ));
    }
    if let Some(out) = channels {
        *out = ids;
    }
    db
}

/// Enqueues `n` events, one per channel in turn (as live traffic arrives,
/// not one channel's backlog after another's: the due order is by age, and
/// fair scheduling across channels is issue 12's).
fn emit_interleaved(client: &mut postgres::Client, n: usize) {
    let n = n as i32;
    let channels = SCALEOUT_CHANNELS as i32;
    client
        .execute(
            "SELECT notification.enqueue_event($1, 't' || (g % $2), '{}'::jsonb)
             FROM generate_series(0, $3 - 1) AS g",
            &[&support::fixtures::NAMESPACE, &channels, &n],
        )
        .expect("scaleout: enqueue");
}

/// Which shards each daemon (by pid) holds.
fn holdings(db: &TestDb) -> std::collections::BTreeMap<u32, Vec<u32>> {
    let mut client = db.client();
    client
        .batch_execute("SET search_path TO notification")
        .expect("scaleout: search_path");
    support::fixtures::shard_holdings(&mut client, SCALEOUT_SHARDS)
}

/// Waits until every shard is led and the daemons share them evenly.
fn wait_balanced(db: &TestDb, daemons: &[BinDaemon]) {
    let fair = (SCALEOUT_SHARDS as usize).div_ceil(daemons.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = holdings(db);
        if daemons
            .iter()
            .all(|d| h.get(&d.child.id()).map_or(0, Vec::len) == fair)
        {
            return;
        }
        assert!(Instant::now() < deadline, "scaleout: never balanced: {h:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A database for the daemon binary: migrated by that binary when
/// `NR_BENCH_BIN` names another build (it refuses a schema newer than it).
fn daemon_db() -> TestDb {
    let Ok(program) = std::env::var("NR_BENCH_BIN") else {
        return support::migrated_db();
    };
    let db = support::fresh_db();
    // Older builds need a config file (they did not fall back to defaults).
    let dir = tempfile::tempdir().expect("bench: temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", db.url)).expect("bench: config");
    let status = Command::new(program)
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .status()
        .expect("bench: run NR_BENCH_BIN migrate");
    assert!(status.success(), "bench: NR_BENCH_BIN migrate failed");
    db
}

/// The daemon binary (`NR_BENCH_BIN`, else this build's) as a child, with
/// its log in a temp dir.
struct BinDaemon {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl BinDaemon {
    fn start(url: &str, workers: usize, interval: &str) -> BinDaemon {
        BinDaemon::start_with(url, workers, workers as u32 + 2, interval, "")
    }

    /// With `reconciler.shards = shards` (this build only).
    fn start_sharded(url: &str, workers: usize, shards: u32) -> BinDaemon {
        BinDaemon::start_full(url, workers, 16, "15s", &format!("shards = {shards}\n"), "")
    }

    /// With `pool_size` connections, and `delivery_extra` appended to the
    /// `[delivery]` section.
    fn start_with(
        url: &str,
        workers: usize,
        pool_size: u32,
        interval: &str,
        delivery_extra: &str,
    ) -> BinDaemon {
        BinDaemon::start_full(url, workers, pool_size, interval, "", delivery_extra)
    }

    /// With whole sections `sections` appended (e.g. `[retention]`; this
    /// build only).
    fn start_sections(url: &str, workers: usize, interval: &str, sections: &str) -> BinDaemon {
        BinDaemon::start_full(url, workers, workers as u32 + 2, interval, "", sections)
    }

    /// With `reconciler_extra` appended to `[reconciler]` too.
    fn start_full(
        url: &str,
        workers: usize,
        pool_size: u32,
        interval: &str,
        reconciler_extra: &str,
        delivery_extra: &str,
    ) -> BinDaemon {
        let dir = tempfile::Builder::new()
            .prefix("nr-bench-")
            .tempdir()
            .expect("bench: temp dir");
        // This build: loopback allowed, and (unless `delivery_extra` says
        // otherwise) one channel may use every worker, as before fair
        // scheduling, so that the single-channel scenarios stay comparable.
        // An older build (NR_BENCH_BIN) knows neither key.
        let (program, allow) = match std::env::var("NR_BENCH_BIN") {
            Ok(p) => (p, String::new()),
            Err(_) if delivery_extra.contains("max_in_flight_per_channel") => (
                support::bin::BIN.to_string(),
                "allow_networks = [\"127.0.0.0/8\"]\n".to_string(),
            ),
            Err(_) => (
                support::bin::BIN.to_string(),
                format!(
                    "allow_networks = [\"127.0.0.0/8\"]\nmax_in_flight_per_channel = {workers}\n"
                ),
            ),
        };
        let timeout = if delivery_extra.starts_with("timeout") {
            ""
        } else {
            "timeout = \"30s\"\n"
        };
        let config = format!(
            "[database]\nurl = \"{url}\"\npool_size = {pool_size}\n[reconciler]\nworkers = {workers}\ninterval = \"{interval}\"\n{reconciler_extra}\
             [delivery]\n{timeout}{allow}{delivery_extra}[log]\nlevel = \"info\"\n"
        );
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).expect("bench: config");
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("bench: stderr");
        let child = Command::new(program)
            .arg("--config")
            .arg(&path)
            .arg("run")
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("bench: spawn the daemon");
        BinDaemon { child, dir }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for BinDaemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Scenario 5: one pass draining a backlog to a recording receiver on
/// 127.0.0.1, over plain HTTP and over HTTPS with a private CA given as
/// `delivery.ca_file` material. Reports deliveries/s, CPU per delivery
/// (this process: the reconciler and the in-process receiver, both TLS
/// ends; PostgreSQL not included) and the TLS handshakes (connections the
/// receiver accepted), which keep-alive should hold to one per worker.
fn https_drain(tiny: bool, rows: &mut Vec<Row>) {
    let (events, workers) = if tiny { (200, 8) } else { (5_000, 8) };
    let ca = support::tls::TestCa::new();
    let ca_certs = ca.ca_certs();
    for https in [false, true] {
        let receiver = if https {
            support::Receiver::start_https(Script::status(200), &ca)
        } else {
            support::Receiver::start(Script::status(200))
        };
        let db = support::migrated_db();
        seed(&db, events, "PENDING", &receiver.url());
        let mut config = config(&db.url, workers);
        config.delivery.ca_certs = ca_certs.clone();
        let mut reconciler = Reconciler::new(&config).expect("bench: reconciler");
        let (cpu0, t) = (process_cpu_seconds(), Instant::now());
        let report = pass(&mut reconciler);
        let (secs, cpu) = (t.elapsed().as_secs_f64(), process_cpu_seconds() - cpu0);
        check_delivered(&report, events, "https drain");
        let handshakes = receiver.connections();
        push(
            rows,
            Row {
                scenario: "7 HTTPS drain",
                setting: format!(
                    "{}, {workers} workers, {events} events",
                    if https { "https" } else { "http" }
                ),
                result: format!(
                    "{:.0}/s in {secs:.2} s, {:.0} µs CPU/delivery, {handshakes} {}",
                    events as f64 / secs,
                    cpu * 1e6 / events as f64,
                    if https {
                        "TLS handshakes"
                    } else {
                        "connections"
                    }
                ),
                target: if https {
                    format!("handshakes ≤ {workers} (one per worker)")
                } else {
                    String::new()
                },
                met: https.then_some(handshakes <= workers),
            },
        );
    }
}

/// Scenario 8: many deliveries in flight on few database connections. The
/// daemon binary (`run`) drains a backlog to this file's receiver answering
/// after `latency`, with `workers` workers and a pool of 32 connections,
/// while a thread samples `pg_stat_activity` for sessions of ours. Reports
/// deliveries/s (daemon start to the last outcome recorded) against
/// `workers / latency`, the most connections seen, the daemon's peak RSS
/// and its worker threads' touched stack, the RSS each worker adds, and
/// what TLS adds per worker (256 workers against the test support's HTTPS
/// receiver, answering after the same latency).
fn concurrency(tiny: bool, rows: &mut Vec<Row>) {
    const POOL: u32 = 32;
    let (latency, runs): (Duration, &[(usize, u64)]) = if tiny {
        (Duration::from_millis(200), &[(64, 128), (256, 512)])
    } else {
        (
            Duration::from_secs(1),
            &[(64, 640), (256, 2_560), (1024, 10_000)],
        )
    };
    let receiver = Loopback::start(latency);
    let mut rss = Vec::new();
    for &(workers, deliveries) in runs {
        let drain = Drain::run(&receiver.url(), workers, POOL, deliveries, "");
        rss.push((workers, drain.hwm_mib));
        let efficiency = drain.rate() / (workers as f64 / latency.as_secs_f64());
        let judged = workers == 1024;
        push(
            rows,
            Row {
                scenario: "8 concurrency",
                setting: format!(
                    "{workers} workers, pool {POOL}, {deliveries} deliveries, {} ms",
                    latency.as_millis()
                ),
                result: format!(
                    "{}, eff {efficiency:.3}; {}",
                    drain.rate_text(),
                    drain.memory_text()
                ),
                target: if judged {
                    format!("≥ 0.90 of ideal, ≤ {} connections, ≤ 128 MiB", POOL + 2)
                } else {
                    String::new()
                },
                met: judged.then_some(
                    efficiency >= 0.90
                        && drain.most <= i64::from(POOL) + 2
                        && drain.hwm_mib <= 128.0,
                ),
            },
        );
    }
    if let (Some(&(w0, r0)), Some(&(w1, r1))) = (rss.first(), rss.last()) {
        if w1 > w0 {
            push(
                rows,
                Row {
                    scenario: "8 concurrency",
                    setting: format!("RSS per worker, {w0} → {w1} workers"),
                    result: format!("{:.0} KiB", (r1 - r0) * 1024.0 / (w1 - w0) as f64),
                    target: String::new(),
                    met: None,
                },
            );
        }
    }
    // The same 256 workers over HTTPS: what each worker's TLS state adds.
    let Some(&(workers, plain_mib)) = rss.iter().find(|(w, _)| *w == 256) else {
        return;
    };
    let ca = support::tls::TestCa::new();
    let tls = support::Receiver::start_https(Script::status(200).with_latency(latency), &ca);
    let deliveries = 4 * workers as u64;
    let drain = Drain::run(
        &tls.url(),
        workers,
        POOL,
        deliveries,
        &format!("ca_file = \"{}\"\n", ca.ca_file().display()),
    );
    push(
        rows,
        Row {
            scenario: "8 concurrency",
            setting: format!("https, {workers} workers, pool {POOL}, {deliveries} deliveries"),
            result: format!(
                "{}; {}; TLS adds {:.0} KiB per worker",
                drain.rate_text(),
                drain.memory_text(),
                (drain.hwm_mib - plain_mib) * 1024.0 / workers as f64
            ),
            target: String::new(),
            met: None,
        },
    );
}

/// One drain of scenario 8: the daemon binary delivering a seeded backlog.
struct Drain {
    deliveries: u64,
    secs: f64,
    /// The most sessions of ours seen at once.
    most: i64,
    hwm_mib: f64,
    stacks: String,
}

impl Drain {
    /// Seeds `deliveries` to `url`, starts the daemon (`delivery_extra`
    /// appended to its `[delivery]`) and waits until every outcome is
    /// recorded.
    fn run(url: &str, workers: usize, pool: u32, deliveries: u64, delivery_extra: &str) -> Drain {
        let db = support::migrated_db();
        seed(&db, deliveries, "PENDING", url);
        let mut client = db.client();
        let sampler = SessionSampler::start(&db.url, &db.name, Duration::from_millis(5));
        let t = Instant::now();
        let mut daemon = BinDaemon::start_with(&db.url, workers, pool, "15s", delivery_extra);
        wait_all_recorded(
            &mut client,
            t + Duration::from_secs(600),
            Duration::from_millis(20),
            &|left| {
                format!(
                    "concurrency: {left} of {deliveries} left after 10 min:\n{}",
                    daemon.stderr()
                )
            },
        );
        let secs = t.elapsed().as_secs_f64();
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id()))
            .expect("concurrency: the daemon's /proc status");
        let stacks = touched_stacks(daemon.child.id());
        daemon.stop();
        let hwm_mib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .expect("concurrency: VmHWM")
            / 1024.0;
        Drain {
            deliveries,
            secs,
            most: sampler.finish().most,
            hwm_mib,
            stacks,
        }
    }

    fn rate(&self) -> f64 {
        self.deliveries as f64 / self.secs
    }

    fn rate_text(&self) -> String {
        format!("{:.0}/s in {:.2} s", self.rate(), self.secs)
    }

    fn memory_text(&self) -> String {
        format!(
            "at most {} connections; peak RSS {:.1} MiB; {}",
            self.most, self.hwm_mib, self.stacks
        )
    }
}

/// The resident part of the worker threads' stacks of process `pid`: the
/// anonymous read-write mappings of exactly the worker stack size in
/// `/proc/<pid>/smaps` (each thread's stack is one, between guard pages).
fn touched_stacks(pid: u32) -> String {
    let size_kib = notification_reconciler::reconcile::worker::STACK_SIZE / 1024;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let value = |rest: &str| {
        rest.split_whitespace()
            .next()
            .and_then(|v| v.parse::<usize>().ok())
    };
    let mut rss = Vec::new();
    let (mut anonymous_rw, mut size) = (false, None);
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let header = fields.first().is_some_and(|f| {
            f.contains('-') && f.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        });
        if header {
            anonymous_rw = fields.len() == 5 && fields[1] == "rw-p";
            size = None;
        } else if let Some(rest) = line.strip_prefix("Size:") {
            size = value(rest);
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            if anonymous_rw && size == Some(size_kib) {
                rss.extend(value(rest));
            }
        }
    }
    if rss.is_empty() {
        return format!("no {size_kib} KiB stacks found");
    }
    rss.sort_unstable();
    format!(
        "{} stacks of {size_kib} KiB: touched median {} KiB, max {} KiB",
        rss.len(),
        rss[rss.len() / 2],
        rss[rss.len() - 1]
    )
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`
/// (clock ticks of 1/100 s, Linux's fixed `USER_HZ`); 0 when unreadable.
fn process_cpu_seconds() -> f64 {
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
fn machine_cpu_ticks() -> (u64, u64, u64) {
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
fn machine_cpu_share(before: (u64, u64, u64), after: (u64, u64, u64)) -> (f64, f64) {
    let total = (after.2 - before.2).max(1) as f64;
    (
        (after.0 - before.0) as f64 / total,
        (after.1 - before.1) as f64 / total,
    )
}

// ------------------------------------------------------------------ helpers

/// A pass's per-channel cap.
#[derive(Debug, Clone, Copy)]
enum Cap {
    /// `max_in_flight_per_channel = 0`: a quarter of the workers, and a
    /// lone channel borrows idle workers beyond it (the default).
    Automatic,
    /// `max_in_flight_per_channel = workers`.
    Workers,
}

/// The config of every pass here: `workers`, default page size, queue of
/// 2 × workers, pool of workers + 2.
fn config(url: &str, workers: usize) -> Config {
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
fn timed_pass(db: &TestDb, workers: usize) -> (Report, f64) {
    timed_pass_with(db, workers, Cap::Workers)
}

/// [`timed_pass`] with the per-channel cap `cap`.
fn timed_pass_with(db: &TestDb, workers: usize, cap: Cap) -> (Report, f64) {
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
fn pass(reconciler: &mut Reconciler) -> Report {
    match reconciler
        .run_pass(&AtomicBool::new(false), &NoHooks)
        .expect("bench: the pass could not start")
    {
        PassOutcome::Ran(report) => report,
        PassOutcome::LockHeld => panic!("bench: the lock is held by someone else"),
    }
}

/// Panics unless the pass delivered all `n` events without errors.
fn check_delivered(report: &Report, n: u64, what: &str) {
    assert!(
        report.ok() && report.delivered == n && report.errors == 0 && report.panics == 0,
        "{what}: expected {n} deliveries, got {report:?}"
    );
}

/// Seeds `n` events with one status each in `state` (PENDING: due now;
/// SUCCESS: finished) for one channel at `url`, server-side, then
/// VACUUM ANALYZE.
fn seed(db: &TestDb, n: u64, state: &str, url: &str) {
    seed_client(&mut db.client(), n, state, url);
}

/// [`seed`] through `client`, on a database of any cluster.
fn seed_client(client: &mut postgres::Client, n: u64, state: &str, url: &str) {
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

/// Single-row autocommit `UPDATE`s per second with `connections` threads,
/// each on its own connection and its own row, with a prepared statement.
fn raw_update_rate(db: &TestDb, connections: usize, duration: Duration) -> f64 {
    let mut client = db.client();
    client
        .batch_execute(
            "CREATE TABLE public.bench_raw (id int PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO public.bench_raw SELECT g, 0 FROM generate_series(0, 1023) g;",
        )
        .expect("bench: raw table");
    let total = AtomicU64::new(0);
    let go = std::sync::Barrier::new(connections);
    let elapsed = std::thread::scope(|s| {
        let threads: Vec<_> = (0..connections)
            .map(|i| {
                let (total, go) = (&total, &go);
                s.spawn(move || {
                    let mut client = db.client();
                    let stmt = client
                        .prepare("UPDATE public.bench_raw SET n = n + 1 WHERE id = $1")
                        .expect("bench: prepare");
                    let id = i as i32;
                    go.wait();
                    let t = Instant::now();
                    let mut count = 0u64;
                    while t.elapsed() < duration {
                        client.execute(&stmt, &[&id]).expect("bench: raw UPDATE");
                        count += 1;
                    }
                    total.fetch_add(count, Ordering::Relaxed);
                    t.elapsed()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("bench: raw thread"))
            .max()
            .unwrap_or(duration)
    });
    total.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}

/// Adds a row to the table, echoing it to stderr at once (so a later
/// failure does not lose it).
fn push(rows: &mut Vec<Row>, row: Row) {
    eprintln!("{}: {}: {}", row.scenario, row.setting, row.result);
    rows.push(row);
}

fn print_table(rows: &[Row], tiny: bool) {
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

// ----------------------------------------------------------------- receiver

/// The receiver of a scenario: this file's loopback server, or the test
/// support's recording one.
enum AnyReceiver {
    Own(Loopback),
    Support(support::Receiver),
}

impl AnyReceiver {
    fn start(latency: Duration, support_receiver: bool) -> AnyReceiver {
        if support_receiver {
            AnyReceiver::Support(support::Receiver::start(
                Script::status(200).with_latency(latency),
            ))
        } else {
            AnyReceiver::Own(Loopback::start(latency))
        }
    }

    fn url(&self) -> String {
        match self {
            AnyReceiver::Own(r) => r.url(),
            AnyReceiver::Support(r) => r.url(),
        }
    }

    fn count(&self) -> u64 {
        match self {
            AnyReceiver::Own(r) => r.count.load(Ordering::SeqCst),
            AnyReceiver::Support(r) => r.count() as u64,
        }
    }
}

/// The bench's receiver: the crate's thread-per-connection `http_server`
/// answering every request `200` (empty) after `latency`, counting requests
/// and recording nothing else.
struct Loopback {
    server: http_server::Server,
    count: Arc<AtomicU64>,
}

impl Loopback {
    fn start(latency: Duration) -> Loopback {
        let count = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&count);
        let server = http_server::Server::bind(
            "127.0.0.1:0".parse().expect("address"),
            http_server::Limits::default(),
            move |_| {
                if !latency.is_zero() {
                    std::thread::sleep(latency);
                }
                c.fetch_add(1, Ordering::SeqCst);
                http_server::Response::status(200)
            },
        )
        .expect("receiver: bind");
        Loopback { server, count }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.server.addr())
    }
}
