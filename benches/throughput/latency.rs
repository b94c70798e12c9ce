//! Scenario 1, latency-bound scaling (`--only latency`): a 100 ms
//! receiver, workers 1/8/64 with the default (automatic, work-conserving)
//! per-channel cap, and 8/64 with the cap set to the workers: deliveries/s
//! and efficiency against `workers / latency`.

use super::harness::{check_delivered, push, seed, timed_pass_with, Cap, Row, Sizes};
use super::receivers::AnyReceiver;
use super::support;

/// Scenario 1: deliveries/s with a slow receiver, and efficiency against
/// `workers / latency`: with the default per-channel cap (automatic, so a
/// lone channel borrows idle workers), and with the cap set to the workers.
pub(crate) fn latency_bound(sizes: &Sizes, support_receiver: bool, rows: &mut Vec<Row>) {
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
