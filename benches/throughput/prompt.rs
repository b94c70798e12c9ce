//! Scenario 5, promptness (`--only prompt`): the daemon binary with 32
//! workers, a healthy receiver getting 100 events/s through
//! `enqueue_event` while a second endpoint answering after 5 s has 16
//! deliveries due: enqueue → receipt p50/p90/p99/max, measured at the
//! receiver from the enqueue time the payload carries, and answer → record.

use std::time::{Duration, Instant};

use super::daemon::{daemon_db, BinDaemon};
use super::harness::{percentile, push, timed_enqueues, Row, Sizes, WallClock};
use super::support;
use super::support::Script;

/// Scenario 5: enqueue to receipt through the real daemon while slow
/// deliveries are in flight.
pub(crate) fn prompt(sizes: &Sizes, rows: &mut Vec<Row>) {
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
pub(crate) fn answer_to_record_ms(
    client: &mut postgres::Client,
    receiver: &support::Receiver,
) -> Vec<f64> {
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
