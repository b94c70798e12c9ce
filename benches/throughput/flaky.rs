//! Scenario 12, flaky endpoint (`--only flaky`): the daemon binary with 16
//! workers, one endpoint failing 30% of requests at random with fast 500s,
//! 20 events/s for 5 minutes, a 1–16 s retry schedule, the default breaker
//! (5, 30 s) and then the breaker off (`breaker_failures = 0`): the share
//! of the time the breaker was open (the metrics gauge sampled every
//! 100 ms) and enqueue → success p50/p90.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::daemon::{daemon_db, BinDaemon};
use super::harness::{enqueue_at_rate, percentile, push, Row, Sizes, WallClock};
use super::support;
use super::support::Script;

/// Scenario 12's retry schedule: 1–16 s, 13 attempts, so that at 30%
/// random failures a delivery fails all of them once in 6 million (with 8
/// attempts, one of 6,000 deliveries did, and the wait for it never ended).
pub(crate) const FLAKY_SCHEDULE: &str =
    r#""1s", "2s", "4s", "8s", "16s", "16s", "16s", "16s", "16s", "16s", "16s", "16s""#;

/// Scenario 12: one endpoint failing 30% of requests at random with fast
/// 500s, `flaky_rate` events/s for `flaky_seconds`, with the default
/// breaker and with the breaker off: the share of the time the breaker
/// was open and enqueue → success (the request answered 200) p50/p90.
/// It waits until every delivery succeeded or nothing is unfinished (a
/// delivery that failed every attempt is counted as FAILED, not waited
/// for).
pub(crate) fn flaky(sizes: &Sizes, rows: &mut Vec<Row>) {
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
