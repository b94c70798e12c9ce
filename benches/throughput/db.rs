//! Scenario 2, database-bound (`--only db`): an instant receiver, workers
//! 4/16, against the raw single-row `UPDATE` autocommit rate with as many
//! connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::harness::{check_delivered, push, seed, timed_pass, Row, Sizes};
use super::receivers::AnyReceiver;
use super::support;
use super::support::TestDb;

/// Scenario 2: deliveries/s with an instant receiver, against the raw
/// single-row UPDATE autocommit rate with as many connections.
pub(crate) fn database_bound(sizes: &Sizes, support_receiver: bool, rows: &mut Vec<Row>) {
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

/// Single-row autocommit `UPDATE`s per second with `connections` threads,
/// each on its own connection and its own row, with a prepared statement.
pub(crate) fn raw_update_rate(db: &TestDb, connections: usize, duration: Duration) -> f64 {
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
