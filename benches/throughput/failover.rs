//! Scenario 6, failover (`--only failover`): two daemons, kill -9 of the
//! leader, time to the standby's first delivery; then a silent partition
//! of the leader (a proxy that stops forwarding, sockets open), time from
//! the freeze to the first delivery of the standby, which fences it after
//! `takeover_after`.

use std::time::{Duration, Instant};

use super::daemon::{daemon_db, BinDaemon};
use super::harness::{push, Row, Sizes};
use super::support;
use super::support::Script;

/// Scenario 6: kill -9 of the leader to the standby's first delivery.
pub(crate) fn failover(sizes: &Sizes, rows: &mut Vec<Row>) {
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
pub(crate) fn silent_partition(sizes: &Sizes, rows: &mut Vec<Row>) {
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
            // The median is the target; the worst case cannot be under
            // takeover_after: a heartbeat written at the freeze keeps the
            // leader alive for all of it, then fencing and the first
            // hand-out take their ~0.1-0.3 s.
            target: "median ≤ 10000 ms, max ≤ 10500 ms".into(),
            met: Some(median <= 10_000.0 && max <= 10_500.0),
        },
    );
}
