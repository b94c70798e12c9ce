//! Payload filters on rules and editing what exists, through the real
//! binary: a rule's jsonpath predicate is evaluated by `enqueue_event` in
//! the producer's transaction (numeric, string and nested predicates, no
//! match, several rules with different filters on one type), a filter that
//! does not parse is refused at `rule create`/`rule update` with
//! PostgreSQL's message (exit 2, 422 through the API), and `channel update`
//! sends the deliveries still due to the new URL with the history kept.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::bin::Bin;
use support::daemon::{config_toml, wait_until, Daemon};
use support::{migrated_db, Receiver, Script};
use uuid::Uuid;

fn channel(bin: &Bin, ns: &str, url: &str) -> String {
    bin.create_channel(ns, "c", url, &[])
}

fn rule(bin: &Bin, ns: &str, event_type: &str, channel: &str, filter: Option<&str>) -> String {
    bin.create_rule(ns, "r", event_type, &[channel], filter)
}

/// The events `enqueue_event` makes for `payload`, as (rule id) per event.
fn emit(db: &support::TestDb, event_type: &str, payload: Value) -> Vec<Uuid> {
    let mut c = db.client();
    let ids: Vec<Uuid> = c
        .query(
            "SELECT notification.enqueue_event('ns', $1, $2)",
            &[&event_type, &payload],
        )
        .expect("enqueue")
        .iter()
        .map(|r| r.get(0))
        .collect();
    ids.iter()
        .map(|id| {
            c.query_one(
                "SELECT rule_id FROM notification.event WHERE id = $1",
                &[id],
            )
            .expect("event")
            .get(0)
        })
        .collect()
}

#[test]
fn filters_pick_the_rules_an_event_matches() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let ch = channel(&bin, "ns", "http://127.0.0.1:9/");
    let big: Uuid = rule(&bin, "ns", "invoice", &ch, Some("$.amount > 1000"))
        .parse()
        .unwrap();
    let pro: Uuid = rule(&bin, "ns", "invoice", &ch, Some(r#"$.plan == "pro""#))
        .parse()
        .unwrap();
    let nested: Uuid = rule(
        &bin,
        "ns",
        "invoice",
        &ch,
        Some(r#"$.customer.country == "NL""#),
    )
    .parse()
    .unwrap();
    let all: Uuid = rule(&bin, "ns", "invoice", &ch, None).parse().unwrap();
    let mut got = emit(
        &db,
        "invoice",
        json!({"amount": 5000, "plan": "pro", "customer": {"country": "NL"}}),
    );
    got.sort();
    let mut want = vec![big, pro, nested, all];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(emit(&db, "invoice", json!({"amount": 10})), vec![all]);
    assert_eq!(
        emit(&db, "invoice", json!({"amount": "lots", "plan": "free"})),
        vec![all],
        "a type mismatch is no match"
    );
    assert_eq!(
        emit(
            &db,
            "invoice",
            json!({"customer": {"country": "DE"}, "plan": "pro"})
        )
        .len(),
        2
    );
    // A type whose only rule's filter matches nothing: no event, no delivery.
    let only: Uuid = rule(&bin, "ns", "refund", &ch, Some("$.amount > 1000"))
        .parse()
        .unwrap();
    assert!(emit(&db, "refund", json!({"amount": 1})).is_empty());
    assert_eq!(emit(&db, "refund", json!({"amount": 1001})), vec![only]);
    let listed: Value = serde_json::from_str(&bin.ok(&["rule", "list", "--json"])).unwrap();
    let shown = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == big.to_string())
        .unwrap();
    assert_eq!(shown["filter"], "($.\"amount\" > 1000)");

    // A filter that does not parse is refused with PostgreSQL's words, and
    // nothing is created.
    let line = bin.fails(
        2,
        &[
            "rule",
            "create",
            "--namespace",
            "ns",
            "--name",
            "bad",
            "--event-type",
            "invoice",
            "--channel",
            &ch,
            "--filter",
            "$.amount >>> 3",
        ],
    );
    assert!(
        line.contains("--filter") && line.contains("syntax error"),
        "{line}"
    );
    let n = serde_json::from_str::<Value>(&bin.ok(&["rule", "list", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, 5);

    // Update: another filter, then none.
    bin.ok(&[
        "rule",
        "update",
        &only.to_string(),
        "--filter",
        "$.amount < 0",
    ]);
    assert!(emit(&db, "refund", json!({"amount": 1001})).is_empty());
    bin.ok(&["rule", "update", &only.to_string(), "--no-filter"]);
    assert_eq!(emit(&db, "refund", json!({"amount": 1})), vec![only]);
    let line = bin.fails(2, &["rule", "update", &only.to_string(), "--filter", "$$$"]);
    assert!(line.contains("syntax error"), "{line}");
    // Channels: add one, remove the first; the last one cannot go.
    let other = channel(&bin, "ns", "http://127.0.0.1:9/other");
    bin.ok(&[
        "rule",
        "update",
        &only.to_string(),
        "--add-channel",
        &other,
        "--remove-channel",
        &ch,
    ]);
    let listed: Value = serde_json::from_str(&bin.ok(&["rule", "list", "--json"])).unwrap();
    let r = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == only.to_string())
        .unwrap();
    assert_eq!(r["channels"], json!([other]));
    let line = bin.fails(
        2,
        &[
            "rule",
            "update",
            &only.to_string(),
            "--remove-channel",
            &other,
        ],
    );
    assert!(line.contains("at least one channel"), "{line}");
    let line = bin.fails(
        2,
        &[
            "rule",
            "update",
            &only.to_string(),
            "--add-channel",
            &Uuid::new_v4().to_string(),
        ],
    );
    assert!(line.contains("no channel"), "{line}");
    bin.ok(&["rule", "delete", &only.to_string()]);
    assert!(emit(&db, "refund", json!({"amount": 1})).is_empty());
}

#[test]
fn a_changed_url_gets_the_deliveries_still_due_and_the_history_stays() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let old = Receiver::start(Script::status(500));
    let new = Receiver::start(Script::status(200));
    let ch = channel(&bin, "ns", &old.url());
    rule(&bin, "ns", "t", &ch, None);
    let config = config_toml(&db.url, 2, "1s", "timeout = \"5s\"\nretry_schedule = [\"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\"]\nbreaker_failures = 0\n", "");
    let _d = Daemon::run("A", &config, &[]);
    let events: Vec<String> = (0..3)
        .map(|i| {
            bin.ok(&[
                "event",
                "emit",
                "--namespace",
                "ns",
                "--type",
                "t",
                "--data",
                &format!("{{\"i\": {i}}}"),
            ])
            .trim()
            .to_string()
        })
        .collect();
    wait_until(
        "the old URL to fail each once",
        Duration::from_secs(30),
        || old.ids().len() >= 3,
        String::new,
    );
    // A refused address is refused, and changes nothing.
    let line = bin.fails(2, &["channel", "update", &ch, "--url", "http://10.0.0.1/"]);
    assert!(line.contains("--url") && line.contains("refused"), "{line}");
    bin.ok(&[
        "channel",
        "update",
        &ch,
        "--url",
        &new.url(),
        "--name",
        "moved",
        "--header",
        "X-Moved: yes",
    ]);
    wait_until(
        "the new URL to get all three",
        Duration::from_secs(30),
        || {
            let ids = new.ids();
            events.iter().all(|e| ids.contains(e))
        },
        String::new,
    );
    assert!(new
        .requests()
        .iter()
        .all(|r| r.header("x-moved") == Some("yes")));
    // The history: the old URL's failures, then the new URL's success.
    let shown: Value =
        serde_json::from_str(&bin.ok(&["event", "show", &events[0], "--json"])).unwrap();
    let attempts = shown["deliveries"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["url"], old.url());
    assert_eq!(attempts[0]["http_status"], 500);
    assert_eq!(attempts.last().unwrap()["url"], new.url());
    assert_eq!(attempts.last().unwrap()["http_status"], 200);
    let listed: Value = serde_json::from_str(&bin.ok(&["channel", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "moved");
    assert_eq!(listed[0]["headers"], json!({"X-Moved": "yes"}));
    bin.ok(&["channel", "update", &ch, "--clear-headers"]);
    let listed: Value = serde_json::from_str(&bin.ok(&["channel", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["headers"], json!({}));
}
