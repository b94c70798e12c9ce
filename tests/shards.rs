//! Shards (issue 14) against the real binary, a real PostgreSQL and a real
//! receiver on 127.0.0.1: several instances share the shards of one
//! database, balance to their fair share, hand shards over without a
//! duplicate when one joins or stops, take a killed one's shards, and
//! refuse a shard count other than the recorded one. How fast a dead
//! instance's shards are taken is the benchmark's business
//! (`--only scaleout`); here the tests wait on conditions.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use notification_reconciler::db::shards::shard_in_sql;
use notification_reconciler::shard::shard_of;
use support::bin::Bin;
use support::daemon::{config_toml, tail, wait_until, Daemon};
use support::fixtures::{
    assert_all_delivered, channel_for, emit, shard_holdings, unfinished, SECRET,
};
use support::net::{free_addr, http_get};
use support::{migrated_db, Receiver, Script, TestDb};

const WAIT: Duration = Duration::from_secs(60);

/// A daemon config with `shards` shards.
fn sharded_config(url: &str, workers: usize, shards: u32) -> String {
    config_toml(url, workers, "1s", "", "").replace(
        "[reconciler]\n",
        &format!("[reconciler]\nshards = {shards}\n"),
    )
}

/// Records `shards` through `migrate`, as an operator does.
fn record_shards(db: &TestDb, shards: u32) {
    let out = Bin::with_config(&sharded_config(&db.url, 1, shards)).ok(&["migrate"]);
    assert!(out.contains("shard count set to"), "{out}");
}

/// `channels` channels (one event type each) to `receiver`, then
/// `per_channel` events to each; returns the event ids.
fn seed_channels(
    db: &TestDb,
    receiver: &Receiver,
    channels: usize,
    per_channel: i32,
) -> Vec<uuid::Uuid> {
    let mut client = db.client();
    for c in 0..channels {
        channel_for(&mut client, &format!("t{c}"), &receiver.url(), SECRET, "{}");
    }
    let mut events = Vec::new();
    for c in 0..channels {
        events.extend(emit(
            &mut client,
            &format!("t{c}"),
            "jsonb_build_object('n', g)",
            per_channel,
        ));
    }
    events
}

/// A client with the service's schema first on its search_path, as the
/// binary's connections have it.
fn schema_client(db: &TestDb) -> postgres::Client {
    let mut client = db.client();
    client
        .batch_execute("SET search_path TO notification")
        .expect("search_path");
    client
}

/// Which shards each daemon (by pid) holds now.
fn holdings(db: &TestDb, shards: u32) -> BTreeMap<u32, Vec<u32>> {
    shard_holdings(&mut schema_client(db), shards)
}

/// Whether every shard is held and each of `daemons` holds `each` (a
/// range, inclusive) of them.
fn balanced(db: &TestDb, shards: u32, daemons: &[&Daemon], each: (usize, usize)) -> bool {
    let h = holdings(db, shards);
    let total: usize = h.values().map(Vec::len).sum();
    total == shards as usize
        && h.len() == daemons.len()
        && daemons.iter().all(|d| {
            let n = h.get(&d.pid()).map_or(0, Vec::len);
            n >= each.0 && n <= each.1
        })
}

fn logs(daemons: &[&Daemon]) -> String {
    daemons
        .iter()
        .map(|d| format!("--- {}:\n{}", d.name, tail(&d.stderr(), 15)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_all_finished(db: &TestDb, daemons: &[&Daemon]) {
    let mut client = db.client();
    wait_until(
        "every delivery to finish",
        Duration::from_secs(180),
        || unfinished(&mut client) == 0,
        || logs(daemons),
    );
}

/// Three instances (A, B, C) of `config`, once each leads 4 of 12 shards.
fn three_balanced(db: &TestDb, config: &str) -> [Daemon; 3] {
    let all = [
        Daemon::run("A", config, &[]),
        Daemon::run("B", config, &[]),
        Daemon::run("C", config, &[]),
    ];
    let refs: Vec<&Daemon> = all.iter().collect();
    wait_until(
        "each instance to lead 4 shards",
        WAIT,
        || balanced(db, 12, &refs, (4, 4)),
        || logs(&refs),
    );
    all
}

/// A 12-shard database, a receiver answering after 20 ms, three balanced
/// instances with 4 workers, and then events to 24 channels, delivering.
fn three_delivering(db: &TestDb, receiver: &Receiver) -> ([Daemon; 3], Vec<uuid::Uuid>, String) {
    record_shards(db, 12);
    let config = sharded_config(&db.url, 4, 12);
    let daemons = three_balanced(db, &config);
    let events = seed_channels(db, receiver, 24, 60);
    let refs: Vec<&Daemon> = daemons.iter().collect();
    wait_until(
        "deliveries to start",
        WAIT,
        || receiver.count() > 100,
        || logs(&refs),
    );
    (daemons, events, config)
}

#[test]
fn the_shard_of_a_channel_is_the_same_in_sql_and_in_the_binary() {
    let db = migrated_db();
    let mut client = schema_client(&db);
    for k in [1, 2, 3, 12, 1024] {
        for _ in 0..200 {
            let id = uuid::Uuid::new_v4();
            assert_eq!(
                shard_in_sql(&mut client, id, k).expect("sql"),
                shard_of(&id, k),
                "{id} k={k}"
            );
        }
    }
}

#[test]
fn three_instances_twelve_shards_deliver_6000_events_exactly_once_and_hold_4_each() {
    let db = migrated_db();
    record_shards(&db, 12);
    let receiver = Receiver::start(Script::status(200));
    let events = seed_channels(&db, &receiver, 60, 100);
    let config = sharded_config(&db.url, 8, 12);
    let a = Daemon::run("A", &config, &[]);
    let b = Daemon::run("B", &config, &[]);
    let c = Daemon::run("C", &config, &[]);
    let all = [&a, &b, &c];
    wait_all_finished(&db, &all);
    let mut client = db.client();
    let duplicates = assert_all_delivered(&mut client, &receiver, &events);
    assert_eq!(duplicates, 0, "every event exactly once\n{}", logs(&all));
    wait_until(
        "each instance to lead 4 shards",
        WAIT,
        || balanced(&db, 12, &all, (4, 4)),
        || format!("{:?}\n{}", holdings(&db, 12), logs(&all)),
    );
    // status lists each shard with its leader.
    let status = Bin::with_config(&config).ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(v["shard_count"], 12);
    let shards = v["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 12);
    assert!(
        shards
            .iter()
            .all(|s| s["leader"].is_string() && s["due"] == 0),
        "{status}"
    );
    // The text's lock and leader lines summarize the shards.
    let text = Bin::with_config(&config).ok(&["status"]);
    assert!(
        text.contains("lock:      one per shard (12 shards of key ")
            && text.contains("leader:    12 of 12 shards led, by 3 instances")
            && text.contains("shards:    12 (12 led)"),
        "{text}"
    );
    for d in all {
        assert!(d.stderr().contains("took shard"), "{}", d.stderr());
    }
}

#[test]
fn crash_kill9_one_of_three_its_shards_are_taken_nothing_lost_duplicates_at_most_its_workers() {
    const WORKERS: usize = 4;
    let db = migrated_db();
    record_shards(&db, 12);
    let receiver = Receiver::start(Script::status(200).with_latency(Duration::from_millis(30)));
    let config = sharded_config(&db.url, WORKERS, 12);
    let [a, mut b, c] = three_balanced(&db, &config);
    let events = seed_channels(&db, &receiver, 24, 50);
    let victims = holdings(&db, 12).remove(&b.pid()).expect("B's shards");
    wait_until(
        "B to deliver",
        WAIT,
        || b.stderr().contains("took shard") && receiver.count() > 200,
        || logs(&[&a, &b, &c]),
    );
    b.kill9();
    wait_until(
        "B's shards to be taken by A and C",
        WAIT,
        || {
            let h = holdings(&db, 12);
            victims.iter().all(|s| {
                [a.pid(), c.pid()]
                    .iter()
                    .any(|p| h.get(p).is_some_and(|v| v.contains(s)))
            })
        },
        || logs(&[&a, &c]),
    );
    wait_all_finished(&db, &[&a, &c]);
    let mut client = db.client();
    let duplicates = assert_all_delivered(&mut client, &receiver, &events);
    eprintln!("kill -9 of one of three instances: {duplicates} duplicates (bound {WORKERS})");
    assert!(
        duplicates <= WORKERS,
        "{duplicates} duplicates after one kill -9 of an instance with {WORKERS} workers"
    );
    assert!(
        balanced(&db, 12, &[&a, &c], (6, 6)),
        "{:?}",
        holdings(&db, 12)
    );
}

#[test]
fn a_fourth_instance_joins_and_shards_move_to_it_without_a_duplicate() {
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200).with_latency(Duration::from_millis(20)));
    let ([a, b, c], events, config) = three_delivering(&db, &receiver);
    // D's metrics show the shards it leads.
    let metrics = free_addr();
    let d_config = format!("{config}\n[metrics]\nlisten = \"{metrics}\"\n");
    let d = Daemon::run("D", &d_config, &[]);
    let all = [&a, &b, &c, &d];
    wait_until(
        "each of four instances to lead 3 shards",
        WAIT,
        || balanced(&db, 12, &all, (3, 3)),
        || format!("{:?}\n{}", holdings(&db, 12), logs(&all)),
    );
    wait_until(
        "D's metrics to show 3 shards led",
        WAIT,
        || {
            http_get(metrics, "/metrics").is_some_and(|(_, body)| {
                body.lines()
                    .any(|l| l == "notification_reconciler_shards_led 3")
            })
        },
        || format!("{:?}", http_get(metrics, "/metrics")),
    );
    wait_all_finished(&db, &all);
    let mut client = db.client();
    let duplicates = assert_all_delivered(&mut client, &receiver, &events);
    assert_eq!(
        duplicates,
        0,
        "a shard moved with a duplicate\n{}",
        logs(&all)
    );
    assert!(
        [&a, &b, &c]
            .iter()
            .any(|x| x.stderr().contains("gave up shard")),
        "{}",
        logs(&all)
    );
}

#[test]
fn sigterm_one_instance_gives_its_shards_up_cleanly_without_a_duplicate() {
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200).with_latency(Duration::from_millis(20)));
    let ([a, mut b, c], events, _) = three_delivering(&db, &receiver);
    b.stop(Duration::from_secs(30));
    assert!(b.stderr().contains("gave up shard"), "{}", b.stderr());
    wait_until(
        "A and C to lead 6 shards each",
        WAIT,
        || balanced(&db, 12, &[&a, &c], (6, 6)),
        || logs(&[&a, &c]),
    );
    wait_all_finished(&db, &[&a, &c]);
    let mut client = db.client();
    let duplicates = assert_all_delivered(&mut client, &receiver, &events);
    assert_eq!(
        duplicates, 0,
        "SIGTERM handed a shard over with a duplicate"
    );
}

#[test]
fn a_mismatched_shards_value_is_refused() {
    let db = migrated_db();
    record_shards(&db, 4);
    // run and once refuse another count, exit 1, naming the key.
    let wrong = sharded_config(&db.url, 2, 3);
    let mut d = Daemon::run("wrong", &wrong, &[]);
    let status = d.wait(WAIT);
    assert_eq!(status.code(), Some(1), "{}", d.stderr());
    assert!(
        d.stderr()
            .contains("reconciler.shards = 3, but the database records 4 shards"),
        "{}",
        d.stderr()
    );
    let err = Bin::with_config(&wrong).fails(1, &["once"]);
    assert!(err.contains("reconciler.shards = 3"), "{err}");
    // The default (1) is another count too.
    let err = Bin::with_config(&config_toml(&db.url, 2, "1s", "", "")).fails(1, &["once"]);
    assert!(
        err.contains("reconciler.shards = 1, but the database records 4"),
        "{err}"
    );
    // migrate refuses to change it while an instance runs, then changes it.
    let mut right = Daemon::run("right", &sharded_config(&db.url, 2, 4), &[]);
    wait_until(
        "the instance to lead",
        WAIT,
        || right.stderr().contains("took shard"),
        || right.stderr(),
    );
    let err = Bin::with_config(&wrong).fails(1, &["migrate"]);
    assert!(err.contains("stop every instance"), "{err}");
    right.stop(Duration::from_secs(30));
    record_shards(&db, 3);
}
