//! Scenario 10, fairness (`--only fairness`): the daemon binary with 16
//! workers and the automatic per-channel cap, a hanging endpoint with
//! 10,000 due deliveries (`delivery.timeout` 3 s), or a slow one that
//! answers every request with 200 after 2 s with as many, and a healthy one
//! receiving 100 events/s for 10 s: the healthy endpoint's enqueue →
//! receipt p50/p99 with and without the other; and EXPLAIN ANALYZE of the
//! due queries with 1,000,000 due deliveries on one channel.

use std::time::{Duration, Instant};

use super::daemon::{daemon_db, BinDaemon};
use super::harness::{explain_analyze, percentile, push, seed, timed_enqueues, Row, Sizes};
use super::support;
use super::support::Script;

/// Scenario 10's other endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Other {
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
pub(crate) fn fairness(sizes: &Sizes, rows: &mut Vec<Row>) {
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

/// Scenario 10, the due queries with a huge backlog on one channel: the
/// channels query and the read of another channel's deliveries, EXPLAIN
/// ANALYZE, with `fair_backlog` due deliveries on one channel and 10 on
/// another (the newest events, so in the old global keyset order they came
/// after the whole backlog).
pub(crate) fn fair_explain(sizes: &Sizes, rows: &mut Vec<Row>) -> Vec<String> {
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
