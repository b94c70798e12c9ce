//! The leader loop through the real binary (`run`), a real PostgreSQL and
//! real receivers: prompt hand-out on a notification, never waiting for a
//! slow delivery in flight, one delivery (event x channel) as the unit,
//! retries on their own timer, nothing twice under concurrent producers,
//! lost notifications, fast failover and what `status` shows.
//!
//! The interval is an hour wherever promptness is the point, so a delivery
//! that waited for the safety-net tick would time the test out. Waits are on
//! conditions; the one wall-clock bound (failover) is a generous liveness
//! check, the measured figure is the benchmark's.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::bin::Bin;
use support::daemon::{config_toml, tail, wait_until, Daemon};
use support::fixtures::{
    add_channel, channel_for, emit, insert_event_directly, unfinished, NAMESPACE, SECRET,
};
use support::net::{free_addr, http_get};
use support::{migrated_db, Receiver, Script, TestDb};

const LONG: Duration = Duration::from_secs(60);

/// A daemon with `workers` workers (one channel may use all of them),
/// `interval`, a 30 s delivery timeout, a retry schedule of `retry` and
/// metrics on `metrics`.
fn daemon(db: &TestDb, workers: usize, interval: &str, retry: &str, metrics: SocketAddr) -> Daemon {
    let delivery = format!(
        "timeout = \"30s\"\nconnect_timeout = \"2s\"\nretry_schedule = [{retry}]\n\
         max_in_flight_per_channel = {workers}\n"
    );
    let extra = format!("[metrics]\nlisten = \"{metrics}\"\n");
    let d = Daemon::run(
        "leader",
        &config_toml(&db.url, workers, interval, &delivery, &extra),
        &[],
    );
    wait_until(
        "the daemon to lead",
        LONG,
        || d.stderr().contains("leading: took the lock"),
        || d.stderr(),
    );
    d
}

/// A channel to `url` and a rule for `event_type` sending to it.
fn hook(client: &mut postgres::Client, event_type: &str, url: &str) -> uuid::Uuid {
    channel_for(client, event_type, url, SECRET, "{}")
}

/// Waits until the daemon's listener listens and the leader has taken its
/// `listening` wake-ups (at least `n`): a notification sent after this is
/// counted as one (a queued wake-up would swallow it: they coalesce).
fn wait_listening(client: &mut postgres::Client, metrics: SocketAddr, d: &Daemon, n: f64) {
    wait_until(
        "the listener to listen and its wake-up to be taken",
        LONG,
        || {
            listener_pid(client).is_some()
                && metric(
                    metrics,
                    "notification_reconciler_wakeups_total{cause=\"listening\"}",
                ) >= n
        },
        || d.stderr(),
    );
}

/// The value of one metrics series (0 when absent or unreachable).
fn metric(addr: SocketAddr, series: &str) -> f64 {
    http_get(addr, "/metrics")
        .map(|(_, body)| {
            body.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0)
        })
        .unwrap_or(0.0)
}

/// The backend pid of the daemon's wake-up listener, once it listens.
fn listener_pid(client: &mut postgres::Client) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN %'
               AND application_name LIKE 'notification-reconciler listen %'",
            &[],
        )
        .expect("pg_stat_activity")
        .map(|r| r.get(0))
}

#[test]
fn an_event_enqueued_while_the_leader_is_idle_is_delivered_at_once() {
    let db = migrated_db();
    let mut client = db.client();
    let receiver = Receiver::start(Script::status(200));
    hook(&mut client, "fast", &receiver.url());
    let metrics = free_addr();
    let mut d = daemon(&db, 4, "1h", "\"1h\"", metrics);
    // The listener's own wake-up must be consumed first: one arriving
    // while it is still queued would coalesce with it.
    wait_listening(&mut client, metrics, &d, 1.0);
    let events = emit(&mut client, "fast", "'{}'::jsonb", 1);
    assert!(
        receiver.wait_for(1, LONG),
        "not delivered with an interval of 1h:\n{}",
        tail(&d.stderr(), 20)
    );
    assert_eq!(receiver.ids(), vec![events[0].to_string()]);
    wait_until(
        "the notification wake-up in the metrics",
        LONG,
        || {
            metric(
                metrics,
                "notification_reconciler_wakeups_total{cause=\"notification\"}",
            ) >= 1.0
        },
        || d.stderr(),
    );
    assert_eq!(
        metric(
            metrics,
            "notification_reconciler_wakeups_total{cause=\"interval\"}"
        ),
        0.0,
        "the interval tick cannot have fired"
    );
    d.stop(LONG);
}

#[test]
fn an_event_enqueued_while_a_slow_delivery_is_in_flight_is_delivered_meanwhile() {
    let db = migrated_db();
    let mut client = db.client();
    let slow = Receiver::start(Script::hang());
    let fast = Receiver::start(Script::status(200));
    hook(&mut client, "slow", &slow.url());
    hook(&mut client, "fast", &fast.url());
    let mut d = daemon(&db, 4, "1h", "\"1h\"", free_addr());
    emit(&mut client, "slow", "'{}'::jsonb", 1);
    wait_until(
        "the slow delivery to be in flight",
        LONG,
        || slow.in_flight() == 1,
        || d.stderr(),
    );
    let fast_event = emit(&mut client, "fast", "'{}'::jsonb", 1)[0];
    assert!(fast.wait_for(1, LONG), "{}", tail(&d.stderr(), 20));
    assert_eq!(fast.ids(), vec![fast_event.to_string()]);
    assert_eq!(
        slow.in_flight(),
        1,
        "the slow delivery must still be in flight"
    );
    drop(slow); // answers the hanging request, so the stop need not wait
    d.stop(LONG);
}

#[test]
fn a_hanging_channel_never_delays_its_sibling_channel_of_the_same_event() {
    let db = migrated_db();
    let mut client = db.client();
    let slow = Receiver::start(Script::hang());
    let fast = Receiver::start(Script::status(200));
    hook(&mut client, "both", &slow.url());
    add_channel(&mut client, "both", &fast.url());
    let mut d = daemon(&db, 4, "1h", "\"1h\"", free_addr());
    let event = emit(&mut client, "both", "'{}'::jsonb", 1)[0];
    assert!(fast.wait_for(1, LONG), "{}", tail(&d.stderr(), 20));
    wait_until(
        "the hanging delivery to be in flight",
        LONG,
        || slow.in_flight() == 1,
        || d.stderr(),
    );
    assert_eq!(fast.ids(), vec![event.to_string()]);
    assert_eq!(slow.ids(), vec![event.to_string()]);
    let fast_state = |client: &mut postgres::Client| -> String {
        client
            .query_one(
                "SELECT ds.state FROM notification.delivery_status ds
                 JOIN notification.channel c ON c.id = ds.channel_id
                 WHERE ds.event_id = $1 AND c.url = $2",
                &[&event, &fast.url()],
            )
            .expect("the fast channel's status")
            .get(0)
    };
    wait_until(
        "the fast channel's SUCCESS recorded",
        LONG,
        || fast_state(&mut client) == "SUCCESS",
        || d.stderr(),
    );
    assert_eq!(
        slow.in_flight(),
        1,
        "recorded while its sibling still hangs"
    );
    drop(slow); // answers the hanging request, so the stop need not wait
    d.stop(LONG);
}

#[test]
fn a_retry_due_in_two_seconds_is_attempted_then_without_the_interval() {
    let db = migrated_db();
    let mut client = db.client();
    let receiver = Receiver::start(Script::sequence_per_id(vec![500, 200]));
    hook(&mut client, "retry", &receiver.url());
    let metrics = free_addr();
    let mut d = daemon(&db, 2, "1h", "\"2s\", \"1h\"", metrics);
    emit(&mut client, "retry", "'{}'::jsonb", 1);
    assert!(
        receiver.wait_for(2, LONG),
        "no retry:\n{}",
        tail(&d.stderr(), 20)
    );
    let rq = receiver.requests();
    let gap = rq[1].at - rq[0].at;
    println!(
        "retry scheduled 2 s (±10%) after the failure came {} ms after it",
        gap.as_millis()
    );
    // The schedule's jitter is ±10%: never before 1.8 s.
    assert!(gap >= Duration::from_millis(1790), "retried early: {gap:?}");
    assert!(
        metric(
            metrics,
            "notification_reconciler_wakeups_total{cause=\"retry_due\"}"
        ) >= 1.0
    );
    wait_until(
        "SUCCESS",
        LONG,
        || unfinished(&mut client) == 0,
        || d.stderr(),
    );
    d.stop(LONG);
}

#[test]
fn nothing_is_delivered_twice_under_four_concurrent_producers() {
    const PER_PRODUCER: i32 = 2500;
    let db = migrated_db();
    let mut client = db.client();
    let receiver = Receiver::start(Script::status(200));
    hook(&mut client, "load", &receiver.url());
    let mut d = daemon(&db, 8, "1h", "\"10ms\", \"10ms\"", free_addr());
    let url = db.url.clone();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("producer");
                let mut ids = Vec::new();
                // Transactions of 1 to 25 events, as applications write them.
                let mut left = PER_PRODUCER;
                let mut size = 1 + p;
                while left > 0 {
                    let n = size.min(left);
                    let mut tx = c.transaction().expect("begin");
                    for r in tx
                        .query(
                            "SELECT notification.enqueue_event($1, 'load', jsonb_build_object('p', $2::int, 'g', g))
                             FROM generate_series(1, $3) AS g",
                            &[&NAMESPACE, &p, &n],
                        )
                        .expect("enqueue")
                    {
                        ids.push(r.get::<_, uuid::Uuid>(0).to_string());
                    }
                    tx.commit().expect("commit");
                    left -= n;
                    size = size % 25 + 1;
                }
                ids
            })
        })
        .collect();
    let mut all: Vec<String> = Vec::new();
    for p in producers {
        all.extend(p.join().expect("producer thread"));
    }
    assert_eq!(all.len(), 4 * PER_PRODUCER as usize);
    wait_until(
        "every event delivered",
        Duration::from_secs(300),
        || unfinished(&mut client) == 0,
        || tail(&d.stderr(), 20),
    );
    d.stop(LONG);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for id in receiver.ids() {
        *seen.entry(id).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(seen.len(), all.len(), "every event arrived");
    for id in &all {
        assert!(seen.contains_key(id), "{id} never arrived");
    }
}

#[test]
fn lost_notifications_are_made_up_for_and_listening_resumes() {
    let db = migrated_db();
    let mut client = db.client();
    let receiver = Receiver::start(Script::status(200));
    hook(&mut client, "fast", &receiver.url());
    let metrics = free_addr();
    let mut d = daemon(&db, 2, "1h", "\"1h\"", metrics);
    let mut first = None;
    wait_until(
        "the listener",
        LONG,
        || {
            first = listener_pid(&mut client);
            first.is_some()
        },
        || d.stderr(),
    );
    let killed: bool = client
        .query_one("SELECT pg_terminate_backend($1)", &[&first])
        .expect("terminate the listener")
        .get(0);
    assert!(killed);
    // Enqueued while nobody listens: this notification is lost.
    emit(&mut client, "fast", "'{}'::jsonb", 1);
    assert!(
        receiver.wait_for(1, LONG),
        "the lost notification's event:\n{}",
        tail(&d.stderr(), 20)
    );
    let mut second = None;
    wait_until(
        "a new listener",
        LONG,
        || {
            second = listener_pid(&mut client);
            second.is_some_and(|p| Some(p) != first)
        },
        || d.stderr(),
    );
    wait_listening(&mut client, metrics, &d, 2.0);
    let before = metric(
        metrics,
        "notification_reconciler_wakeups_total{cause=\"notification\"}",
    );
    emit(&mut client, "fast", "'{}'::jsonb", 1);
    assert!(
        receiver.wait_for(2, LONG),
        "after listening resumed:\n{}",
        tail(&d.stderr(), 20)
    );
    wait_until(
        "the notification wake-up",
        LONG,
        || {
            metric(
                metrics,
                "notification_reconciler_wakeups_total{cause=\"notification\"}",
            ) > before
        },
        || d.stderr(),
    );
    assert!(
        d.stderr().contains("listening for wake-ups again"),
        "{}",
        d.stderr()
    );
    d.stop(LONG);
}

#[test]
fn a_delivery_nobody_notified_is_found_by_the_interval_tick() {
    let db = migrated_db();
    let mut client = db.client();
    let receiver = Receiver::start(Script::status(200));
    hook(&mut client, "quiet", &receiver.url());
    let metrics = free_addr();
    let mut d = daemon(&db, 2, "1s", "\"1h\"", metrics);
    // Written behind enqueue_event's back, so no notification at all, and
    // due only a second from now, so no sweep before then takes it: what
    // finds it is the interval tick (its sweep, or the retry timer the tick
    // reads from the database).
    let event = insert_event_directly(&mut client, NAMESPACE, "quiet", "'{}'::jsonb", "'1 s'");
    assert!(receiver.wait_for(1, LONG), "{}", tail(&d.stderr(), 20));
    assert_eq!(receiver.ids(), vec![event.to_string()]);
    assert!(
        metric(
            metrics,
            "notification_reconciler_wakeups_total{cause=\"interval\"}"
        ) >= 1.0
    );
    d.stop(LONG);
}

#[test]
fn after_kill_9_of_the_leader_a_standby_delivers_within_a_few_seconds() {
    let db = migrated_db();
    let mut client = db.client();
    let receiver = Receiver::start(Script::status(200).with_latency(Duration::from_millis(20)));
    hook(&mut client, "flow", &receiver.url());
    emit(&mut client, "flow", "'{}'::jsonb", 2000);
    let mut a = daemon(&db, 2, "1h", "\"10ms\"", free_addr());
    assert!(receiver.wait_for(20, LONG), "{}", tail(&a.stderr(), 20));
    let b = Daemon::run("B", &config_toml(&db.url, 2, "1h", "", ""), &[]);
    wait_until(
        "B to stand by",
        LONG,
        || b.stderr().contains("started"),
        || b.stderr(),
    );
    a.kill9(); // returns once A has exited: nothing after this is A's
    let killed_at = Instant::now();
    let first_after = |r: &Receiver| {
        r.requests()
            .into_iter()
            .find(|rq| rq.at > killed_at)
            .map(|rq| rq.at)
    };
    let mut first = None;
    wait_until(
        "B's first delivery",
        LONG,
        || {
            first = first_after(&receiver);
            first.is_some()
        },
        || b.stderr(),
    );
    let took = first.map(|t| t - killed_at).unwrap_or_default();
    println!(
        "failover: kill -9 of the leader to the standby's first delivery: {} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    assert!(
        b.stderr().contains("leading: took the lock"),
        "{}",
        b.stderr()
    );
}

#[test]
fn status_shows_the_active_leader_and_its_deliveries_in_flight() {
    let db = migrated_db();
    let mut client = db.client();
    let slow = Receiver::start(Script::hang());
    hook(&mut client, "slow", &slow.url());
    let bin = Bin::for_database(&db.url);
    let before: serde_json::Value =
        serde_json::from_str(&bin.ok(&["status", "--json"])).expect("json");
    assert_eq!(before["leader"]["active"], false, "{before}");
    let mut d = daemon(&db, 4, "1h", "\"1h\"", free_addr());
    emit(&mut client, "slow", "'{}'::jsonb", 3);
    wait_until(
        "3 deliveries in flight",
        LONG,
        || slow.in_flight() == 3,
        || d.stderr(),
    );
    let status_json = || -> serde_json::Value {
        serde_json::from_str(&bin.ok(&["status", "--json"])).expect("json")
    };
    wait_until(
        "status to show 3 in flight",
        LONG,
        || status_json()["leader"]["record"]["in_flight"] == 3,
        || format!("{}", status_json()),
    );
    let status = status_json();
    assert_eq!(status["leader"]["active"], true, "{status}");
    // While `run` leads it holds the lock all the time, not only in passes.
    assert!(status["lock_holder"]["pid"].is_i64(), "{status}");
    assert_eq!(
        status["lock_holder"]["pid"], status["leader"]["record"]["backend_pid"],
        "{status}"
    );
    let text = bin.ok(&["status"]);
    assert!(text.contains("3 deliveries in flight"), "{text}");
    drop(slow); // answers the hanging requests
    d.stop(LONG);
    let after: serde_json::Value =
        serde_json::from_str(&bin.ok(&["status", "--json"])).expect("json");
    assert_eq!(after["leader"]["active"], false, "{after}");
}
