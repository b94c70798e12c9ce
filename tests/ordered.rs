//! Ordered channels (issue 25, docs/delivery-controls.md) against the real
//! binary, a real PostgreSQL and a real receiver on 127.0.0.1: an ordered
//! channel's deliveries are attempted one at a time in enqueue order (the
//! event's creation time, then its id); a delivery waiting for its retry
//! holds back the later ones until it ends; `channel list` shows what the
//! channel waits on; a kill -9 of the leader keeps the order (the delivery
//! in flight may be delivered twice, nothing is reordered).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use support::bin::Bin;
use support::daemon::{config_toml, tail, Daemon};
use support::fixtures::{self, emit, NAMESPACE};
use support::{migrated_db, Receiver, Reply, Request, Script, TestDb};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(120);

/// Events whose payload `n` is one of these fail their first two attempts.
const FAILING: [i64; 2] = [3, 50];

fn n_of(rq: &Request) -> i64 {
    rq.json()["data"]["n"].as_i64().unwrap_or(0)
}

/// Whether the receiver answered `rq` with a success (the script below).
fn succeeded(rq: &Request) -> bool {
    !(FAILING.contains(&n_of(rq)) && rq.attempt <= 2)
}

fn script() -> Script {
    Script::new(|rq| {
        if succeeded(rq) {
            Reply::status(200)
        } else {
            Reply::status(500)
        }
    })
    .with_latency(Duration::from_millis(3))
}

/// An ordered channel made by `channel create --ordered` and its rule for
/// `event_type`.
fn ordered_channel(bin: &Bin, url: &str, event_type: &str) -> Uuid {
    let id = bin.create_channel_with(NAMESPACE, event_type, url, &["--ordered"]);
    bin.create_rule(NAMESPACE, event_type, event_type, &[&id], None);
    id.parse().expect("channel id")
}

/// The channel's events in enqueue order, as the database has them.
fn enqueue_order(db: &TestDb, channel: Uuid) -> Vec<String> {
    db.client()
        .query(
            "SELECT e.id::text FROM notification.event e
             JOIN notification.delivery_status d ON d.event_id = e.id
             WHERE d.channel_id = $1 ORDER BY e.created_at, e.id",
            &[&channel],
        )
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Event ids in the order of their first successful receipt.
fn first_successes(receiver: &Receiver) -> Vec<String> {
    let mut seen = HashSet::new();
    receiver
        .requests()
        .iter()
        .filter(|rq| succeeded(rq))
        .filter_map(|rq| rq.webhook_id().map(String::from))
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

fn daemon_config(db: &TestDb) -> String {
    let delivery = "timeout = \"5s\"\nconnect_timeout = \"2s\"\n\
                    retry_schedule = [\"100ms\", \"100ms\", \"100ms\"]\n\
                    max_in_flight_per_channel = 8\nbreaker_failures = 0\n";
    config_toml(&db.url, 8, "1s", delivery, "")
}

/// An ordered channel (by `channel create --ordered`) with 200 events
/// enqueued, its receiver, and the events in enqueue order.
fn two_hundred_ordered() -> (TestDb, Receiver, Uuid, Vec<String>) {
    let db = migrated_db();
    let receiver = Receiver::start(script());
    let bin = Bin::for_database(&db.url);
    let channel = ordered_channel(&bin, &receiver.url(), "ordered");
    emit(
        &mut db.client(),
        "ordered",
        "jsonb_build_object('n', g)",
        200,
    );
    let order = enqueue_order(&db, channel);
    assert_eq!(order.len(), 200);
    (db, receiver, channel, order)
}

/// Every request to the channel came after the previous event's first
/// success, except a redelivery of the one in flight at a crash: no event
/// is attempted while an earlier one is unfinished.
fn assert_one_at_a_time_in_order(receiver: &Receiver, order: &[String]) {
    let position = |id: &str| order.iter().position(|o| o == id);
    let mut done = 0; // events before this position have succeeded
    for rq in receiver.requests() {
        let id = rq.webhook_id().unwrap_or_default().to_owned();
        let p = position(&id).expect("an event of the channel");
        assert!(
            p <= done,
            "event #{p} attempted while #{done} was unfinished (request {})",
            rq.seq
        );
        if p == done && succeeded(&rq) {
            done += 1;
        }
    }
    assert_eq!(done, order.len(), "not every event succeeded");
}

#[test]
fn two_hundred_events_with_retries_arrive_in_enqueue_order() {
    let (db, receiver, channel, order) = two_hundred_ordered();
    let mut d = Daemon::run("A", &daemon_config(&db), &[]);
    fixtures::wait_channel_finished(&db, channel, &receiver, &d, WAIT);
    d.stop(Duration::from_secs(10));
    assert_eq!(first_successes(&receiver), order);
    assert_one_at_a_time_in_order(&receiver, &order);
    assert_eq!(receiver.count(), 204, "two retries each of two events");
    assert_eq!(receiver.peak_concurrency(), 1);
}

#[test]
fn kill9_of_the_leader_keeps_the_order() {
    let (db, receiver, channel, order) = two_hundred_ordered();
    let config = daemon_config(&db);
    let mut a = Daemon::run("A", &config, &[]);
    assert!(
        a.wait_line("leading", WAIT),
        "A did not lead: {}",
        a.stderr()
    );
    let mut b = Daemon::run("B", &config, &[]);
    assert!(
        receiver.wait_for(100, WAIT),
        "half the events: {}",
        tail(&a.stderr(), 20)
    );
    a.kill9();
    fixtures::wait_channel_finished(&db, channel, &receiver, &b, WAIT);
    b.stop(Duration::from_secs(10));
    assert!(
        b.stderr().contains("leading"),
        "B never led: {}",
        b.stderr()
    );
    assert_eq!(first_successes(&receiver), order);
    assert_one_at_a_time_in_order(&receiver, &order);
    let extra = receiver.count() - 204;
    assert!(extra <= 1, "{extra} redeliveries after one kill -9");
}

#[test]
fn a_delivery_waiting_for_its_retry_holds_back_the_next_and_list_shows_it() {
    let db = migrated_db();
    let receiver = Receiver::start(Script::sequence(vec![500, 200, 200]));
    let bin = Bin::with_config(&support::bin::allow_loopback(&config_toml(
        &db.url,
        2,
        "1s",
        "timeout = \"5s\"\nretry_schedule = [\"1h\"]\nbreaker_failures = 0\n",
        "",
    )));
    let channel = ordered_channel(&bin, &receiver.url(), "ordered");
    let mut client = db.client();
    let first = emit(&mut client, "ordered", "'{\"n\": 1}'::jsonb", 1)[0];
    let second = emit(&mut client, "ordered", "'{\"n\": 2}'::jsonb", 1)[0];
    // The first attempt of the first event fails: it waits an hour.
    bin.ok(&["once"]);
    assert_eq!(receiver.count(), 1);
    bin.ok(&["once"]);
    assert_eq!(
        receiver.count(),
        1,
        "the second went past the first's retry"
    );
    let text = bin.ok(&["channel", "list"]);
    assert!(
        text.contains(&format!(
            "ordered (waiting on event {first}: SENDING, retry at"
        )),
        "{text}"
    );
    let listed: Value = serde_json::from_str(&bin.ok(&["channel", "list", "--json"])).unwrap();
    let c = &listed[0];
    assert_eq!(c["ordered"], true, "{c}");
    assert_eq!(c["waiting_on"]["event_id"], first.to_string(), "{c}");
    assert_eq!(c["held_back"], 1, "{c}");
    // Its retry falls due: it goes, then the second.
    client
        .execute(
            "UPDATE notification.delivery_status SET next_attempt_at = now() WHERE event_id = $1",
            &[&first],
        )
        .expect("due");
    bin.ok(&["once"]);
    let ids: Vec<String> = receiver
        .requests()
        .iter()
        .filter_map(|r| r.webhook_id().map(String::from))
        .collect();
    assert_eq!(
        ids,
        vec![first.to_string(), first.to_string(), second.to_string()]
    );
    // Unordered again: the channel has no head to show.
    bin.ok(&["channel", "update", &channel.to_string(), "--unordered"]);
    let listed: Value = serde_json::from_str(&bin.ok(&["channel", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["ordered"], false);
    assert_eq!(listed[0]["waiting_on"], Value::Null);
}
