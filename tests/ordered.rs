//! Ordered channels (issue 25, docs/delivery-controls.md) against the real
//! binary, a real PostgreSQL and a real receiver on 127.0.0.1: an ordered
//! channel's deliveries are attempted one at a time in enqueue order (the
//! event's creation time, then its id); a delivery waiting for its retry
//! holds back the later ones until it ends; `channel list` shows what the
//! channel waits on; a kill -9 of the leader keeps the order (the delivery
//! in flight may be delivered twice, nothing is reordered); an event that a
//! producer enqueued first but has not committed yet holds back one that a
//! later producer enqueued and committed (the order horizon, migration
//! 0010), until it commits (it goes first) or rolls back.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

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

/// The event ids the receiver got for events of `event_type`, in order.
fn received_of(receiver: &Receiver, event_type: &str) -> Vec<String> {
    receiver
        .requests()
        .iter()
        .filter(|rq| rq.json()["type"] == event_type)
        .filter_map(|rq| rq.webhook_id().map(String::from))
        .collect()
}

/// Waits until the receiver got `n` requests for events of `event_type`.
fn wait_received(receiver: &Receiver, event_type: &str, n: usize, d: &Daemon) {
    let until = Instant::now() + WAIT;
    while received_of(receiver, event_type).len() < n {
        assert!(
            Instant::now() < until,
            "{n} {event_type} request(s) not received: {}",
            tail(&d.stderr(), 20)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The defect this guards against: producer A enqueues to an ordered
/// channel and keeps its transaction open; producer B enqueues after it and
/// commits. B's event is the oldest the leader can see, but A's was
/// stamped earlier: handing B's out would reorder them once A commits.
///
/// How the test knows the leader looked while A was open: after B commits,
/// an event of an unordered channel is enqueued and committed. The sweep
/// that hands that one out read the channels after its commit, so after
/// B's, and read the ordered channel's head in the same step; without the
/// horizon it would have handed B's out right then. Once the unordered
/// event has arrived, a further second is allowed for B's request to reach
/// the receiver (it would have been handed out at the same moment), and
/// nothing of the ordered channel may have arrived.
///
/// `b_took_its_id_first`: B's transaction takes its id before A's does (a
/// business write before its enqueue, as producers do), so that A's id is
/// above B's: what a bound taken from B's own snapshot (`xmax`) would miss.
fn an_open_earlier_producer_holds_back_a_later_one(commit: bool, b_took_its_id_first: bool) {
    let db = migrated_db();
    let receiver = Receiver::start(Script::new(|_| Reply::status(200)));
    let bin = Bin::for_database(&db.url);
    ordered_channel(&bin, &receiver.url(), "ordered");
    let marker = bin.create_channel(NAMESPACE, "marker", &receiver.url(), &[]);
    bin.create_rule(NAMESPACE, "marker", "marker", &[&marker], None);
    let mut d = Daemon::run("A", &daemon_config(&db), &[]);
    assert!(d.wait_line("leading", WAIT), "did not lead: {}", d.stderr());
    let mut b = db.client();
    let mut tx_b = b.transaction().expect("B's transaction");
    if b_took_its_id_first {
        tx_b.execute("SELECT pg_current_xact_id()", &[])
            .expect("B takes its id");
    }
    let mut a = db.client();
    let mut tx = a.transaction().expect("A's transaction");
    let first: Uuid = tx
        .query_one(
            "SELECT notification.enqueue_event($1, 'ordered', '{\"n\": 1}'::jsonb)",
            &[&NAMESPACE],
        )
        .expect("A enqueues")
        .get(0);
    let second: Uuid = tx_b
        .query_one(
            "SELECT notification.enqueue_event($1, 'ordered', '{\"n\": 2}'::jsonb)",
            &[&NAMESPACE],
        )
        .expect("B enqueues")
        .get(0);
    tx_b.commit().expect("B commits");
    emit(&mut db.client(), "marker", "'{\"n\": 3}'::jsonb", 1);
    wait_received(&receiver, "marker", 1, &d);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        received_of(&receiver, "ordered"),
        Vec::<String>::new(),
        "B's event went while A's, enqueued before it, was not committed"
    );
    let expected = if commit {
        tx.commit().expect("A commits");
        vec![first.to_string(), second.to_string()]
    } else {
        tx.rollback().expect("A rolls back");
        vec![second.to_string()]
    };
    wait_received(&receiver, "ordered", expected.len(), &d);
    d.stop(Duration::from_secs(10));
    assert_eq!(received_of(&receiver, "ordered"), expected);
}

#[test]
fn an_open_earlier_producer_holds_back_a_later_one_until_it_commits() {
    an_open_earlier_producer_holds_back_a_later_one(true, false);
}

#[test]
fn an_open_earlier_producer_with_a_later_id_holds_back_a_later_one() {
    an_open_earlier_producer_holds_back_a_later_one(true, true);
}

#[test]
fn an_open_earlier_producer_that_rolls_back_lets_the_later_one_go() {
    an_open_earlier_producer_holds_back_a_later_one(false, false);
}
