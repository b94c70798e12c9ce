//! The parallel reconciliation pass against a real PostgreSQL and a real
//! HTTP receiver: bounded concurrency, join before unlock, one leader at a
//! time, keyset paging, the once-per-pass cut-off, panic isolation, lock
//! loss, and `once`'s exit codes.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::Duration;

use notification_reconciler::db::due::Delivery;
use notification_reconciler::lock::derive_key;
use notification_reconciler::reconcile::hooks::{Hooks, NoHooks};
use notification_reconciler::reconcile::leader::{PassOutcome, Reconciler};
use notification_reconciler::reconcile::Report;
use support::bin::{assert_fails, Bin};
use support::fixtures::{self, enqueue, lock_is_free, seed, state_of, states};
use support::net::free_port;
use support::{migrated_db, Receiver, Script};

fn ran(outcome: PassOutcome) -> Report {
    match outcome {
        PassOutcome::Ran(report) => report,
        PassOutcome::LockHeld => panic!("expected the pass to run, the lock was held"),
    }
}

fn pass(r: &mut Reconciler, hooks: &dyn Hooks) -> Report {
    ran(r.run_pass(&AtomicBool::new(false), hooks).expect("pass"))
}

/// Every id the receiver got, with how often.
fn deliveries(receiver: &Receiver) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for id in receiver.ids() {
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

fn assert_each_once(receiver: &Receiver, events: &[uuid::Uuid]) {
    let seen = deliveries(receiver);
    for e in events {
        assert_eq!(
            seen.get(&e.to_string()),
            Some(&1),
            "event {e} delivered {:?} times",
            seen.get(&e.to_string())
        );
    }
    assert_eq!(seen.len(), events.len(), "unexpected ids delivered");
}

#[test]
fn concurrency_is_real_and_bounded_by_workers() {
    let db = migrated_db();
    // Each request is held ~200 ms; the first 8 are held until all 8 are in
    // (or 20 s pass), so a slow machine staggering the workers' start cannot
    // hide the concurrency, and anything allowing fewer would show < 8.
    let gate = std::sync::Arc::new((Mutex::new(0usize), std::sync::Condvar::new()));
    let receiver = Receiver::start(Script::new(move |_| {
        let (arrived, cv) = &*gate;
        let mut n = arrived.lock().unwrap();
        *n += 1;
        if *n <= 8 {
            cv.notify_all();
            drop(
                cv.wait_timeout_while(n, Duration::from_secs(20), |n| *n < 8)
                    .unwrap(),
            );
        }
        support::Reply::status(200).after(Duration::from_millis(200))
    }));
    let mut client = db.client();
    let events = seed(&mut client, &receiver.url(), 40);
    let mut r = Reconciler::new(&fixtures::config(&db.url, 8)).unwrap();
    let report = pass(&mut r, &NoHooks);
    assert_eq!(
        receiver.peak_concurrency(),
        8,
        "peak concurrency at the receiver"
    );
    assert_eq!(report.delivered, 40);
    assert_eq!(report.deliveries_seen, 40);
    assert_eq!(report.due_at_start, 40);
    assert!(report.ok());
    assert_each_once(&receiver, &events);
    assert_eq!(states(&mut client).get("SUCCESS"), Some(&40));
}

#[test]
fn workers_are_joined_before_the_lock_is_released() {
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200).with_latency(Duration::from_millis(300)));
    let mut client = db.client();
    seed(&mut client, &receiver.url(), 12);
    let config = fixtures::config(&db.url, 4);
    let key = derive_key(&config.reconciler.lock_key);
    let mut r = Reconciler::new(&config).unwrap();
    let done = AtomicBool::new(false);
    let lock_seen_held = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            // While deliveries are in flight, nobody else can take the lock.
            assert!(receiver.wait_for(1, Duration::from_secs(30)));
            lock_seen_held.store(!lock_is_free(&db.url, key), Ordering::SeqCst);
        });
        let report = pass(&mut r, &NoHooks);
        done.store(true, Ordering::SeqCst);
        // The moment the pass returns: nothing in flight, lock free.
        let count_at_return = receiver.count();
        assert_eq!(
            receiver.in_flight(),
            0,
            "a delivery was still in flight after the pass returned"
        );
        assert!(
            lock_is_free(&db.url, key),
            "lock still held after the pass returned"
        );
        assert_eq!(report.delivered, 12);
        assert_eq!(
            receiver.count(),
            count_at_return,
            "a delivery arrived after the pass returned"
        );
    });
    assert!(
        lock_seen_held.load(Ordering::SeqCst),
        "the lock was free during the pass"
    );
    assert!(done.load(Ordering::SeqCst));
}

#[test]
fn two_instances_started_together_deliver_each_event_once() {
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200).with_latency(Duration::from_millis(100)));
    let mut client = db.client();
    let events = seed(&mut client, &receiver.url(), 30);
    let config = fixtures::config(&db.url, 3);
    let barrier = Barrier::new(2);
    let outcomes: Vec<PassOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut r = Reconciler::new(&config).unwrap();
                    barrier.wait();
                    r.run_pass(&AtomicBool::new(false), &NoHooks).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let held = outcomes
        .iter()
        .filter(|o| matches!(o, PassOutcome::LockHeld))
        .count();
    assert_eq!(
        held, 1,
        "exactly one instance must find the lock held: {outcomes:?}"
    );
    assert_each_once(&receiver, &events);
}

#[test]
fn keyset_paging_delivers_every_event_in_one_pass() {
    // With offset paging, events that finish mid-pass leave the due set and
    // shift the offset, so later pages skip events. Keyset cannot.
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200));
    let mut client = db.client();
    let events = seed(&mut client, &receiver.url(), 500);
    let mut config = fixtures::config(&db.url, 4);
    config.reconciler.page_size = 7;
    let mut r = Reconciler::new(&config).unwrap();
    let report = pass(&mut r, &NoHooks);
    assert_eq!(report.delivered, 500, "{}", report.summary("pass"));
    assert_each_once(&receiver, &events);
}

/// Blocks the first event until the wall clock has passed `until`.
struct HoldFirstUntil {
    until: chrono::DateTime<chrono::Utc>,
    first: AtomicBool,
}

impl Hooks for HoldFirstUntil {
    fn before_delivery(&self, _delivery: &Delivery) {
        if !self.first.swap(true, Ordering::SeqCst) {
            while chrono::Utc::now() <= self.until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn cutoff_is_computed_once_per_pass() {
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200));
    let mut client = db.client();
    let due = seed(&mut client, &receiver.url(), 3);
    let later = enqueue(&mut client, 1)[0];
    // Becomes due 500 ms from now: after the pass has started, before it
    // pages that far (page size 1, the first event is held until then).
    let until: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "UPDATE notification.delivery_status SET next_attempt_at = clock_timestamp() + interval '500 ms'
             WHERE event_id = $1 RETURNING next_attempt_at",
            &[&later],
        )
        .unwrap()
        .get(0);
    let mut config = fixtures::config(&db.url, 1);
    config.reconciler.page_size = 1;
    config.reconciler.queue_capacity = 1;
    let mut r = Reconciler::new(&config).unwrap();
    let hooks = HoldFirstUntil {
        until,
        first: AtomicBool::new(false),
    };
    let report = pass(&mut r, &hooks);
    assert_eq!(report.delivered, 3, "{}", report.summary("pass"));
    assert_eq!(
        state_of(&mut client, later),
        "PENDING",
        "picked up an event due after the cut-off"
    );
    assert!(!receiver.ids().contains(&later.to_string()));
    for e in &due {
        assert_eq!(state_of(&mut client, *e), "SUCCESS");
    }
    // The next pass has a later cut-off and takes it.
    let report = pass(&mut r, &NoHooks);
    assert_eq!(report.delivered, 1);
}

/// Panics on one chosen event.
struct PanicOn(String);

impl Hooks for PanicOn {
    fn before_delivery(&self, delivery: &Delivery) {
        if delivery.event.id.to_string() == self.0 {
            panic!("injected panic for event {}", delivery.event.id);
        }
    }
}

#[test]
fn a_worker_panic_is_isolated_counted_and_retried_next_pass() {
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200));
    let mut client = db.client();
    let events = seed(&mut client, &receiver.url(), 20);
    let victim = events[7];
    let config = fixtures::config(&db.url, 2);
    let key = derive_key(&config.reconciler.lock_key);
    let mut r = Reconciler::new(&config).unwrap();
    let report = pass(&mut r, &PanicOn(victim.to_string()));
    assert_eq!(report.panics, 1);
    assert_eq!(report.delivered, 19);
    assert!(lock_is_free(&db.url, key));
    assert_eq!(state_of(&mut client, victim), "PENDING");
    let report = pass(&mut r, &NoHooks);
    assert_eq!((report.delivered, report.panics), (1, 0));
    assert_each_once(&receiver, &events);
}

/// Terminates the lock connection's backend when the third event starts.
struct KillLockOnThird {
    admin: Mutex<postgres::Client>,
    key: i64,
    seen: AtomicUsize,
}

impl Hooks for KillLockOnThird {
    fn before_delivery(&self, _delivery: &Delivery) {
        if self.seen.fetch_add(1, Ordering::SeqCst) == 2 {
            let mut admin = self.admin.lock().unwrap();
            let holder = notification_reconciler::lock::holder(&mut admin, self.key)
                .unwrap()
                .expect("someone holds the lock");
            admin
                .execute("SELECT pg_terminate_backend($1)", &[&holder.pid])
                .unwrap();
        }
    }
}

#[test]
fn losing_the_lock_connection_stops_the_pass_and_the_next_pass_reacquires() {
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200).with_latency(Duration::from_millis(20)));
    let mut client = db.client();
    let events = seed(&mut client, &receiver.url(), 200);
    let mut config = fixtures::config(&db.url, 2);
    config.reconciler.page_size = 5;
    let key = derive_key(&config.reconciler.lock_key);
    let mut r = Reconciler::new(&config).unwrap();
    let hooks = KillLockOnThird {
        admin: Mutex::new(db.client()),
        key,
        seen: AtomicUsize::new(0),
    };
    let report = pass(&mut r, &hooks);
    let failure = report
        .failure
        .clone()
        .expect("the pass must report the lock loss");
    assert!(failure.contains("lock connection"), "{failure}");
    assert!(
        report.deliveries_seen < 200,
        "kept handing out events after the lock was lost: {}",
        report.summary("pass")
    );
    assert!(lock_is_free(&db.url, key));
    // The next pass reconnects, re-acquires and finishes the rest.
    let report = pass(&mut r, &NoHooks);
    assert!(report.ok(), "{}", report.summary("pass"));
    let seen = deliveries(&receiver);
    for e in &events {
        assert!(
            seen.contains_key(&e.to_string()),
            "event {e} never delivered"
        );
        assert_eq!(state_of(&mut client, *e), "SUCCESS");
    }
}

/// Runs `once` (with `--json` if `json`) against `db_url` with a config of
/// two workers and a one-second retry step.
fn once(db_url: &str, json: bool) -> std::process::Output {
    let bin = Bin::with_config(&support::bin::allow_loopback(
        "[reconciler]\nworkers = 2\n[delivery]\nretry_schedule = [\"1s\"]\n",
    ))
    .env("DATABASE_URL", db_url);
    if json {
        bin.run(&["once", "--json"])
    } else {
        bin.run(&["once"])
    }
}

#[test]
fn once_exit_codes_are_0_75_and_1() {
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200));
    let mut client = db.client();
    let events = seed(&mut client, &receiver.url(), 5);

    // 75 while another session holds the lock; nothing delivered.
    let key = derive_key("notification.event_handler.reconcile_lock");
    let mut holder = db.client();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .unwrap();
    let out = once(&db.url, false);
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("another instance holds the lock"));
    // With --json, 75 still prints one JSON document saying so.
    let out = once(&db.url, true);
    assert_eq!(out.status.code(), Some(75));
    let held: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--json output parses when the lock is held");
    assert_eq!(held["lock_held"], true, "{held}");
    assert_eq!(
        held["lock_key"], "notification.event_handler.reconcile_lock",
        "{held}"
    );
    assert_eq!(receiver.count(), 0);
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .unwrap();

    // 0 with the report as one JSON document.
    let out = once(&db.url, true);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--json output parses");
    assert_eq!(report["delivered"], 5);
    assert_each_once(&receiver, &events);

    // The report is printed once: on stdout, not repeated on stderr.
    enqueue(&mut client, 2);
    let out = once(&db.url, false);
    assert_eq!(out.status.code(), Some(0));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("pass ok: 2 deliveries"), "{stdout}");
    assert!(
        !stderr.contains("deliveries in") && !stderr.contains("delivered,"),
        "the report is repeated on stderr: {stderr}"
    );

    // 1 when the database is unreachable.
    let out = once(
        &format!("postgres://postgres@127.0.0.1:{}/x", free_port()),
        false,
    );
    let line = assert_fails(&out, 1, "once against an unreachable database");
    assert!(line.contains("cannot connect to the database"), "{line}");
}

#[test]
fn the_lock_key_is_pinned() {
    // Changing the derivation would let an old and a new version lead at once.
    assert_eq!(
        derive_key("notification.event_handler.reconcile_lock"),
        -5614500461457292959
    );
    let ids: HashSet<i64> = (0..100)
        .map(|i| derive_key(&format!("shard-{i}")))
        .collect();
    assert_eq!(ids.len(), 100);
}

#[test]
fn a_paging_error_on_a_live_lock_connection_keeps_the_lock_until_workers_are_joined() {
    // Regression: the pass dropped the lock connection (releasing the lock)
    // inside the worker scope, so another instance could lead while this
    // one's workers were still delivering. Here the first request hangs on
    // one worker while the other keeps the pager busy; then the test renames
    // a table the due query reads, so the next page fails with an SQL error
    // on a live connection.
    let db = migrated_db();
    let receiver = Receiver::start(Script::new(|rq| {
        if rq.seq == 1 {
            support::Reply::hang()
        } else {
            support::Reply::status(200)
        }
    }));
    let mut client = db.client();
    seed(&mut client, &receiver.url(), 2000);
    let mut config = fixtures::config(&db.url, 2);
    config.reconciler.page_size = 5;
    let key = derive_key(&config.reconciler.lock_key);
    let mut r = Reconciler::new(&config).unwrap();
    let report = std::thread::scope(|s| {
        let pass = s.spawn(|| pass(&mut r, &NoHooks));
        assert!(
            receiver.wait_for(20, Duration::from_secs(30)),
            "deliveries under way"
        );
        client
            .batch_execute("ALTER TABLE notification.channel RENAME TO channel_renamed")
            .unwrap();
        // The pager fails on its next page at once; the first delivery is
        // still held, so the lock must stay held all along.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            assert!(
                !lock_is_free(&db.url, key),
                "the lock was released while a worker was still delivering"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        receiver.set_script(Script::status(200));
        pass.join().unwrap()
    });
    let failure = report
        .failure
        .clone()
        .expect("the pass reports the paging error");
    assert!(failure.contains("paging failed"), "{failure}");
    assert!(report.deliveries_seen < 2000, "{}", report.summary("pass"));
    assert!(
        lock_is_free(&db.url, key),
        "lock held after the pass returned"
    );
    client
        .batch_execute("ALTER TABLE notification.channel_renamed RENAME TO channel")
        .unwrap();
}
