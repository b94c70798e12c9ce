//! Scenario 13, delivery controls (`--only controls`), part of the
//! throughput benchmark (see its header); issue 25's figures:
//!
//! - **rate limiter precision** ([`rate`]): one pass (`once`, in-process)
//!   over a backlog on a channel limited to 10/s and to 1,000/s, 32
//!   workers, the test support's recording receiver: the most requests in
//!   any one-second window (the limit, checked), the requests in each whole
//!   second of the run (min / median / max) and the rate reached against
//!   the limit.
//! - **ordered channel** ([`ordered`]): one pass over a backlog on an
//!   ordered channel whose receiver answers after a fixed latency: the
//!   rate against 1 / latency, the bound of one request at a time.
//! - **`enqueue_event` cost** ([`enqueue_cost`]): one `SELECT
//!   enqueue_event(…)` per statement (autocommit) on a type with 0, 1 and 10
//!   rules with filters, the filters not matching the payload (the filter's
//!   own cost) and matching it (each rule then makes an event and a
//!   delivery): median and p99 per call.
//!
//! `--tiny` checks correctness only: every delivery made, never more than
//! the limit in a second, the ordered channel's requests in enqueue order,
//! the events each enqueue made.

use std::time::{Duration, Instant};

use super::{config, pass, percentile, push, support, Row, Script};
use support::fixtures::{channel_for, emit, SECRET};
use support::Receiver;

/// Sizes of scenario 13.
pub struct ControlSizes {
    /// (limit per second, events) of each rate run.
    pub rates: Vec<(u32, i32)>,
    /// Events and receiver latency of the ordered run.
    pub ordered: (i32, Duration),
    /// Enqueue calls per measurement.
    pub enqueues: usize,
}

impl ControlSizes {
    /// Full sizes: 10/s over 15 s, 1,000/s over 10 s.
    pub fn full() -> ControlSizes {
        ControlSizes {
            rates: vec![(10, 150), (1000, 10_000)],
            ordered: (300, Duration::from_millis(20)),
            enqueues: 2000,
        }
    }

    /// Small sizes for CI.
    pub fn tiny() -> ControlSizes {
        ControlSizes {
            rates: vec![(10, 25), (1000, 1500)],
            ordered: (30, Duration::from_millis(5)),
            enqueues: 50,
        }
    }
}

/// Runs every part of the scenario.
pub fn run(sizes: &ControlSizes, rows: &mut Vec<Row>) {
    for &(limit, events) in &sizes.rates {
        rate(limit, events, rows);
    }
    ordered(sizes.ordered.0, sizes.ordered.1, rows);
    enqueue_cost(sizes.enqueues, rows);
}

/// One pass (`once`) with 32 workers over what `db` holds, which must
/// deliver `events`; its seconds.
fn timed_once(db: &support::TestDb, events: i32, what: &str) -> f64 {
    let mut reconciler =
        notification_reconciler::reconcile::leader::Reconciler::new(&config(&db.url, 32))
            .expect("bench: reconciler");
    let t = Instant::now();
    let report = pass(&mut reconciler);
    let secs = t.elapsed().as_secs_f64();
    super::check_delivered(&report, events as u64, what);
    secs
}

/// The rate limiter at `limit`/s over `events` deliveries.
fn rate(limit: u32, events: i32, rows: &mut Vec<Row>) {
    let db = support::migrated_db();
    let receiver = Receiver::start(Script::status(200));
    let mut client = db.client();
    let channel = channel_for(&mut client, "limited", &receiver.url(), SECRET, "{}");
    client
        .execute(
            "UPDATE notification.channel SET rate_limit = $2, rate_period_secs = 1 WHERE id = $1",
            &[&channel, &(limit as i32)],
        )
        .expect("bench: limit");
    emit(&mut client, "limited", "jsonb_build_object('n', g)", events);
    let secs = timed_once(&db, events, "rate limit");
    let mut at: Vec<Instant> = receiver.requests().iter().map(|r| r.at).collect();
    at.sort();
    assert_eq!(at.len(), events as usize, "rate limit: one request each");
    let most = receiver.most_within(Duration::from_secs(1));
    assert!(
        most <= limit as usize,
        "rate limit {limit}/s: {most} requests in one second"
    );
    // Requests in each whole second from the first request.
    let first = at[0];
    let whole = (at[at.len() - 1].duration_since(first).as_secs()) as usize;
    let mut per_second = vec![0usize; whole.max(1)];
    for a in &at {
        let s = a.duration_since(first).as_secs() as usize;
        if s < whole {
            per_second[s] += 1;
        }
    }
    let mut sorted = per_second.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    // The first N go at once; the rate sustained after them.
    let after_first = at.len().saturating_sub(limit as usize) as f64;
    let reached = after_first / at[at.len() - 1].duration_since(first).as_secs_f64();
    push(
        rows,
        Row {
            scenario: "13 rate limit",
            setting: format!("{limit}/s, {events} events, 32 workers"),
            result: format!(
                "most in any 1 s window {most}; per whole second min {} / median {median} / max {} ({} s); sustained after the first {limit}: {reached:.1}/s = {:.3} of the limit; pass {secs:.1} s",
                sorted[0],
                sorted[sorted.len() - 1],
                per_second.len(),
                reached / f64::from(limit)
            ),
            target: format!("≤ {limit} in any second"),
            met: Some(most <= limit as usize),
        },
    );
}

/// An ordered channel over `events` deliveries, the receiver answering
/// after `latency`.
fn ordered(events: i32, latency: Duration, rows: &mut Vec<Row>) {
    let db = support::migrated_db();
    let receiver = Receiver::start(Script::status(200).with_latency(latency));
    let mut client = db.client();
    let channel = channel_for(&mut client, "ordered", &receiver.url(), SECRET, "{}");
    client
        .execute(
            "UPDATE notification.channel SET ordered = true WHERE id = $1",
            &[&channel],
        )
        .expect("bench: ordered");
    emit(&mut client, "ordered", "jsonb_build_object('n', g)", events);
    let order: Vec<String> = client
        .query(
            "SELECT id::text FROM notification.event ORDER BY created_at, id",
            &[],
        )
        .expect("bench: order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let secs = timed_once(&db, events, "ordered");
    let got: Vec<String> = receiver
        .requests()
        .iter()
        .filter_map(|r| r.webhook_id().map(String::from))
        .collect();
    assert_eq!(got, order, "ordered: requests in enqueue order");
    assert_eq!(receiver.peak_concurrency(), 1, "ordered: one at a time");
    let rate = f64::from(events) / secs;
    let bound = 1.0 / latency.as_secs_f64();
    push(
        rows,
        Row {
            scenario: "13 ordered",
            setting: format!(
                "{events} events, receiver {} ms, 32 workers",
                latency.as_millis()
            ),
            result: format!(
                "{rate:.1}/s in {secs:.2} s = {:.3} of 1/latency ({bound:.0}/s); {:.2} ms per delivery beyond the latency",
                rate / bound,
                (secs / f64::from(events) - latency.as_secs_f64()) * 1000.0
            ),
            target: "≤ 1/latency".into(),
            met: None,
        },
    );
}

/// `enqueue_event`'s cost per call with 0, 1 and 10 filtered rules on the
/// type.
fn enqueue_cost(calls: usize, rows: &mut Vec<Row>) {
    let db = support::migrated_db();
    let mut client = db.client();
    let channel = channel_for(&mut client, "unused", "http://127.0.0.1:9/", SECRET, "{}");
    for rules in [0usize, 1, 10] {
        for matching in [false, true] {
            if rules == 0 && matching {
                continue;
            }
            let event_type = format!("t{rules}{matching}");
            for r in 0..rules {
                let rule: uuid::Uuid = client
                    .query_one(
                        "INSERT INTO notification.rule (namespace, name, event_type, filter)
                         VALUES ('acme', $1, $2, '$.amount > 1000') RETURNING id",
                        &[&format!("{event_type}-{r}"), &event_type],
                    )
                    .expect("bench: rule")
                    .get(0);
                client
                    .execute(
                        "INSERT INTO notification.rule_channel (rule_id, channel_id) VALUES ($1, $2)",
                        &[&rule, &channel],
                    )
                    .expect("bench: rule channel");
            }
            let payload = serde_json::json!({
                "amount": if matching { 5000 } else { 10 },
                "customer": "c-1", "plan": "pro"
            });
            let statement = client
                .prepare("SELECT count(*) FROM notification.enqueue_event('acme', $1, $2)")
                .expect("bench: prepare");
            let mut times = Vec::with_capacity(calls);
            let mut made = 0i64;
            for _ in 0..calls {
                let t = Instant::now();
                let n: i64 = client
                    .query_one(&statement, &[&event_type, &payload])
                    .expect("bench: enqueue")
                    .get(0);
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                made += n;
            }
            let expected = if matching { rules * calls } else { 0 };
            assert_eq!(made as usize, expected, "enqueue: events made");
            times.sort_by(f64::total_cmp);
            push(
                rows,
                Row {
                    scenario: "13 enqueue_event",
                    setting: format!(
                        "{rules} filtered rules, {}, {calls} calls",
                        if rules == 0 {
                            "no rule"
                        } else if matching {
                            "filters match"
                        } else {
                            "filters do not match"
                        }
                    ),
                    result: format!(
                        "median {:.3} ms, p99 {:.3} ms per call",
                        percentile(&times, 0.5),
                        percentile(&times, 0.99)
                    ),
                    target: String::new(),
                    met: None,
                },
            );
        }
    }
}
