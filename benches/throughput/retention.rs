//! Scenario 11, retention (`--only retention`: steps and catch-up, `--only retention-catchup`,
//! `--only retention-steady`; `--backlog N` sets the catch-up backlog),
//! part of the throughput benchmark (see its header):
//!
//! - **steps** ([`steps`]): `db::prune` sweeping a seeded backlog of
//!   finished events in-process: events removed per second, and each step's
//!   statement time (the longest any row lock of the pruner is held), the
//!   batched design; beside it what the partitioned design would cost to
//!   adopt: copying the same rows into a range-partitioned table (what a
//!   migration to partitions must do) and dropping one partition.
//! - **catch-up** ([`catch_up`]): the daemon binary with a backlog of old
//!   finished events and new work at a steady rate: the new work's enqueue →
//!   receipt p50/p99 with retention off, then with the leader pruning the
//!   backlog, and the rate it pruned at (from its `/metrics`).
//! - **steady state** ([`steady`]): `keep_finished = "2m"`, a steady rate
//!   for some minutes: the schema's total relation size (tables, indexes,
//!   TOAST) each minute.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use notification_reconciler::db::prune;

use super::{percentile, push, seed, support, BinDaemon, Row, Script};

/// Sizes of scenario 11.
pub struct RetentionSizes {
    /// Finished events in the in-process sweep.
    pub step_events: u64,
    /// Finished events of the catch-up backlog.
    pub backlog: u64,
    /// New events a second (catch-up and steady state).
    pub rate: u64,
    /// Seconds of new work without pruning (catch-up baseline).
    pub baseline_seconds: u64,
    /// Samples of the steady state (its "minutes").
    pub steady_minutes: u64,
    /// How long one of those "minutes" is (a minute at full size).
    pub minute: Duration,
}

impl RetentionSizes {
    pub fn full() -> RetentionSizes {
        RetentionSizes {
            step_events: 1_000_000,
            backlog: 2_000_000,
            rate: 200,
            baseline_seconds: 30,
            steady_minutes: 10,
            minute: Duration::from_secs(60),
        }
    }

    pub fn tiny() -> RetentionSizes {
        RetentionSizes {
            step_events: 5_000,
            backlog: 5_000,
            rate: 50,
            baseline_seconds: 2,
            steady_minutes: 2,
            minute: Duration::from_secs(2),
        }
    }
}

/// Steps: the batched sweep in-process, and the partitioned alternative's
/// adoption cost, on the same number of rows.
pub fn steps(sizes: &RetentionSizes, rows: &mut Vec<Row>) {
    let db = support::migrated_db();
    seed(
        &db,
        sizes.step_events,
        "SUCCESS",
        "http://127.0.0.1:9/unused",
    );
    let mut client = db.client();
    client
        .batch_execute("SET search_path = notification")
        .expect("bench: search_path");

    // What adopting partitions costs: a migration must copy every row into
    // a partitioned table (PostgreSQL cannot attach a populated table as a
    // partition of another without rewriting or locking it). Timed here
    // for `event` alone, into monthly partitions.
    let t = Instant::now();
    client
        .batch_execute(
            "CREATE TABLE event_parted (LIKE event INCLUDING DEFAULTS)
                 PARTITION BY RANGE (created_at);
             CREATE TABLE event_parted_old PARTITION OF event_parted
                 FOR VALUES FROM (MINVALUE) TO (now() - interval '30 minutes');
             CREATE TABLE event_parted_new PARTITION OF event_parted
                 FOR VALUES FROM (now() - interval '30 minutes') TO (MAXVALUE);
             INSERT INTO event_parted SELECT * FROM event;
             ALTER TABLE event_parted ADD PRIMARY KEY (id, created_at);
             CREATE INDEX ON event_parted (created_at, id);",
        )
        .expect("bench: copy into partitions");
    let copy_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    client
        .batch_execute("DROP TABLE event_parted_old")
        .expect("bench: drop a partition");
    let drop_ms = t.elapsed().as_secs_f64() * 1000.0;
    client
        .batch_execute("DROP TABLE event_parted")
        .expect("bench: drop the copy");

    let cutoff = prune::cutoff(&mut client, Duration::from_secs(60)).expect("bench: cutoff");
    let mut took = Vec::new();
    let t = Instant::now();
    let removed = prune::sweep(&mut client, cutoff, prune::BATCH, &mut |step| {
        took.push(step.took.as_secs_f64() * 1000.0);
        true
    })
    .expect("bench: sweep");
    let elapsed = t.elapsed().as_secs_f64();
    assert_eq!(
        removed.events as u64, sizes.step_events,
        "bench: steps removed all"
    );
    took.sort_by(f64::total_cmp);
    let rate = removed.events as f64 / elapsed;
    push(
        rows,
        Row {
            scenario: "11 retention",
            setting: format!(
                "batched: db::prune::sweep of {} finished events (1 status each), {} per step, back to back",
                sizes.step_events,
                prune::BATCH
            ),
            result: format!(
                "{rate:.0} events/s; step p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} steps)",
                percentile(&took, 0.50),
                percentile(&took, 0.99),
                percentile(&took, 1.0),
                took.len()
            ),
            target: "≥ 20,000 events/s".into(),
            met: Some(rate >= 20_000.0),
        },
    );
    push(
        rows,
        Row {
            scenario: "11 retention",
            setting: format!(
                "partitioned, to adopt: copy {} events into a range-partitioned event table (+ its 2 indexes); drop one partition",
                sizes.step_events
            ),
            result: format!(
                "copy {copy_s:.1} s ({:.0} events/s; 10,000,000 events: ~{:.0} s for event alone); drop {drop_ms:.1} ms",
                sizes.step_events as f64 / copy_s,
                10_000_000.0 / (sizes.step_events as f64 / copy_s)
            ),
            target: "informs the choice".into(),
            met: None,
        },
    );
}

/// Catch-up: a backlog of old finished events and new work at a steady
/// rate; latency of the new work without, then with the leader pruning.
pub fn catch_up(sizes: &RetentionSizes, rows: &mut Vec<Row>) {
    let db = support::migrated_db();
    // Seeded about an hour old: prunable with keep_finished = "30m".
    seed(&db, sizes.backlog, "SUCCESS", "http://127.0.0.1:9/unused");
    let mut client = db.client();

    let mut run = |keep: &str, event_type: &str, until: &dyn Fn(std::net::SocketAddr) -> bool| {
        let receiver = support::Receiver::start(Script::status(200));
        support::fixtures::channel_for(
            &mut client,
            event_type,
            &receiver.url(),
            support::fixtures::SECRET,
            "{}",
        );
        let metrics = support::net::free_addr();
        let daemon = BinDaemon::start_sections(
            &db.url,
            16,
            "15s",
            &format!(
                "[retention]\nkeep_finished = \"{keep}\"\n[metrics]\nlisten = \"{metrics}\"\n"
            ),
        );
        let started = Instant::now();
        let stop = AtomicBool::new(false);
        let latencies = std::thread::scope(|s| {
            let enqueues = s.spawn(|| {
                super::timed_enqueues_while(
                    &mut client,
                    &receiver,
                    event_type,
                    sizes.rate,
                    |_| !stop.load(Ordering::SeqCst),
                    || daemon.stderr(),
                )
            });
            while !until(metrics) {
                std::thread::sleep(Duration::from_millis(200));
            }
            stop.store(true, Ordering::SeqCst);
            enqueues.join().expect("bench: enqueue thread")
        });
        let elapsed = started.elapsed();
        let pruned = pruned_events(metrics).unwrap_or(0.0);
        let prune_s =
            metric(metrics, "notification_reconciler_prune_seconds_total ").unwrap_or(0.0);
        let mut daemon = daemon;
        daemon.stop();
        (latencies, elapsed, pruned, prune_s)
    };

    let baseline_until = Instant::now() + Duration::from_secs(sizes.baseline_seconds + 2);
    let (without, _, pruned_off, _) = run("0s", "new.off", &|_| Instant::now() >= baseline_until);
    assert_eq!(pruned_off, 0.0, "bench: retention off pruned something");
    let backlog = sizes.backlog as f64;
    let first_prune = std::sync::Mutex::new(None::<Instant>);
    let done_at = std::sync::Mutex::new(None::<Instant>);
    let (with, _, pruned, prune_s) = run("30m", "new.on", &|addr| {
        let n = pruned_events(addr).unwrap_or(0.0);
        if n > 0.0 {
            first_prune
                .lock()
                .map(|mut f| *f.get_or_insert(Instant::now()))
                .ok();
        }
        if n >= backlog {
            done_at
                .lock()
                .map(|mut f| *f.get_or_insert(Instant::now()))
                .ok();
            return true;
        }
        false
    });
    let span = match (
        first_prune.lock().ok().and_then(|f| *f),
        done_at.lock().ok().and_then(|f| *f),
    ) {
        (Some(a), Some(b)) => (b - a).as_secs_f64().max(0.001),
        _ => f64::NAN,
    };
    let rate = pruned / span;
    let (p50_off, p99_off) = (percentile(&without, 0.5), percentile(&without, 0.99));
    let (p50_on, p99_on) = (percentile(&with, 0.5), percentile(&with, 0.99));
    push(
        rows,
        Row {
            scenario: "11 retention",
            setting: format!(
                "catch-up: daemon (16 workers), {} finished events 1 h old, keep_finished 30m, {} new events/s",
                sizes.backlog, sizes.rate
            ),
            result: format!(
                "pruned {pruned:.0} events at {rate:.0} events/s ({prune_s:.1} s in prune statements); new work p50/p99 {p50_off:.1}/{p99_off:.1} ms without pruning ({} events), {p50_on:.1}/{p99_on:.1} ms while pruning ({} events)",
                without.len(),
                with.len()
            ),
            target: "p99 ≤ 2× without; ≥ 20,000 events/s".into(),
            met: Some(p99_on <= 2.0 * p99_off && rate >= 20_000.0),
        },
    );
}

/// Steady state: `keep_finished = "2m"`, new work at a steady rate for
/// `steady_minutes`; the schema's total size each minute.
pub fn steady(sizes: &RetentionSizes, rows: &mut Vec<Row>) {
    let db = support::migrated_db();
    let receiver = super::Loopback::start(Duration::ZERO);
    let mut client = db.client();
    support::fixtures::channel_for(
        &mut client,
        "steady",
        &receiver.url(),
        support::fixtures::SECRET,
        "{}",
    );
    let mut daemon =
        BinDaemon::start_sections(&db.url, 16, "15s", "[retention]\nkeep_finished = \"2m\"\n");
    let every = Duration::from_secs(1) / sizes.rate as u32;
    let start = Instant::now();
    let minutes = sizes.steady_minutes;
    let mut sizes_mb = Vec::new();
    let mut i: u32 = 0;
    while sizes_mb.len() < minutes as usize {
        let due = start + every * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        client
            .execute(
                "SELECT notification.enqueue_event('acme', 'steady', '{\"n\": 1}')",
                &[],
            )
            .expect("bench: enqueue");
        i += 1;
        if start.elapsed() >= sizes.minute * (sizes_mb.len() as u32 + 1) {
            let mb: f64 = client
                .query_one(
                    "SELECT (sum(pg_total_relation_size(c.oid)) / 1048576.0)::float8
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = 'notification' AND c.relkind = 'r'",
                    &[],
                )
                .expect("bench: size")
                .get(0);
            eprintln!("steady: minute {}: {mb:.1} MB", sizes_mb.len() + 1);
            sizes_mb.push(mb);
        }
    }
    let delivered = receiver.count.load(Ordering::SeqCst);
    daemon.stop();
    let list: Vec<String> = sizes_mb.iter().map(|mb| format!("{mb:.1}")).collect();
    let ratio = match (sizes_mb.get(3), sizes_mb.last()) {
        (Some(m4), Some(last)) if minutes >= 10 => Some(last / m4),
        _ => None,
    };
    push(
        rows,
        Row {
            scenario: "11 retention",
            setting: format!(
                "steady state: daemon, keep_finished 2m, {} events/s for {minutes} min ({i} enqueued, {delivered} delivered)",
                sizes.rate
            ),
            result: format!(
                "total relation size each minute (MB): {}{}",
                list.join(", "),
                ratio.map_or(String::new(), |r| format!("; minute 10 / minute 4 = {r:.2}"))
            ),
            target: "minute 10 ≤ 1.3× minute 4".into(),
            met: ratio.map(|r| r <= 1.3),
        },
    );
}

/// The daemon's `pruned_rows_total{table="event"}`.
fn pruned_events(addr: std::net::SocketAddr) -> Option<f64> {
    metric(
        addr,
        "notification_reconciler_pruned_rows_total{table=\"event\"} ",
    )
}

/// The value of the series starting `series` (name, labels, a space) on
/// the daemon's `/metrics` at `addr`.
fn metric(addr: std::net::SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = support::net::http_get(addr, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}
