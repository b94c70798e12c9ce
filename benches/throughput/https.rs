//! Scenario 7, HTTPS drain (`--only https`): the same backlog over plain
//! HTTP and over HTTPS (a private CA from the test support, trusted through
//! `delivery.ca_file`): deliveries/s, CPU per delivery, TLS handshakes.

use std::time::Instant;

use notification_reconciler::reconcile::leader::Reconciler;

use super::harness::{check_delivered, config, pass, process_cpu_seconds, push, seed, Row};
use super::support;
use super::support::Script;

/// Scenario 5: one pass draining a backlog to a recording receiver on
/// 127.0.0.1, over plain HTTP and over HTTPS with a private CA given as
/// `delivery.ca_file` material. Reports deliveries/s, CPU per delivery
/// (this process: the reconciler and the in-process receiver, both TLS
/// ends; PostgreSQL not included) and the TLS handshakes (connections the
/// receiver accepted), which keep-alive should hold to one per worker.
pub(crate) fn https_drain(tiny: bool, rows: &mut Vec<Row>) {
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
