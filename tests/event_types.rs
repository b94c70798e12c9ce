//! Event types through both doors: `GET /v1/namespaces/{ns}/event-types`
//! and `event types --namespace NS --json` list the same types (seen in
//! events, subscribed to by a rule, or described) with the same counts and
//! last-seen times; `PATCH .../event-types/{type}` and `event-type
//! describe` set the description customers see, audited, refused to
//! read-only tokens and to other namespaces, with clear errors for bad
//! input. Real daemon, real PostgreSQL.

mod support;

use serde_json::{json, Value};
use support::api::{call, call_with, daemon_with_api, Answer};
use support::bin::Bin;
use support::migrated_db;

/// A token made by `token create` with `args`.
fn token(bin: &Bin, args: &[&str]) -> String {
    let mut all = vec!["token", "create", "--name", "types-test"];
    all.extend_from_slice(args);
    bin.ok(&all).trim().to_string()
}

fn ok(a: &Answer, status: u16, what: &str) -> Value {
    assert_eq!(a.status, status, "{what}: {} {}", a.status, a.text);
    a.json.clone()
}

fn error(a: &Answer, status: u16, what: &str) -> String {
    assert_eq!(a.status, status, "{what}: {} {}", a.status, a.text);
    a.json["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not the error shape: {}", a.text))
        .to_string()
}

#[test]
fn event_types_are_listed_with_counts_and_described_through_both_doors() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (_d, api) = daemon_with_api("types", &db.url, "");
    let acme = token(&bin, &["--namespace", "acme"]);
    let acme_ro = token(&bin, &["--namespace", "acme", "--read-only"]);
    let globex = token(&bin, &["--namespace", "globex"]);
    let ns = "/v1/namespaces/acme";

    // A channel, rules for two types, three events of one of them.
    let channel = ok(
        &call(
            api,
            "POST",
            &format!("{ns}/channels"),
            Some(&acme),
            Some(&json!({"name": "c", "url": "http://127.0.0.1:9/", "disabled": true})),
        ),
        201,
        "channel",
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    for t in ["invoice.paid", "invoice.failed"] {
        ok(
            &call(
                api,
                "POST",
                &format!("{ns}/rules"),
                Some(&acme),
                Some(&json!({"name": t, "event_type": t, "channels": [channel]})),
            ),
            201,
            "rule",
        );
    }
    for i in 0..3 {
        ok(
            &call(
                api,
                "POST",
                &format!("{ns}/events"),
                Some(&acme),
                Some(&json!({"type": "invoice.paid", "payload": {"i": i}})),
            ),
            201,
            "event",
        );
    }
    // Another namespace's type is not acme's.
    bin.ok(&[
        "channel",
        "create",
        "--namespace",
        "globex",
        "--name",
        "g",
        "--url",
        "http://127.0.0.1:9/",
        "--disabled",
    ]);

    // A type never seen can be described (the API), and another one by
    // the command line.
    let described = ok(
        &call(
            api,
            "PATCH",
            &format!("{ns}/event-types/order.shipped"),
            Some(&acme),
            Some(&json!({"description": "  An order left the warehouse.  "})),
        ),
        200,
        "describe",
    );
    assert_eq!(
        described,
        json!({"type": "order.shipped", "description": "An order left the warehouse.",
               "count": 0, "last_seen_at": null, "rules": 0})
    );
    bin.ok(&[
        "event-type",
        "describe",
        "--namespace",
        "acme",
        "invoice.paid",
        "--description",
        "An invoice was paid <b>in full</b>.",
    ]);

    let listed = ok(
        &call(
            api,
            "GET",
            &format!("{ns}/event-types"),
            Some(&acme_ro),
            None,
        ),
        200,
        "list",
    );
    let items = listed["items"].as_array().unwrap();
    let types: Vec<&str> = items.iter().map(|t| t["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["invoice.failed", "invoice.paid", "order.shipped"]);
    assert_eq!(items[0]["count"], 0);
    assert_eq!(items[0]["last_seen_at"], Value::Null);
    assert_eq!(items[0]["rules"], 1);
    assert_eq!(items[1]["count"], 3);
    assert_eq!(items[1]["rules"], 1);
    assert_eq!(
        items[1]["description"],
        "An invoice was paid <b>in full</b>."
    );
    // The last time seen is the newest event's time.
    let newest = ok(
        &call(
            api,
            "GET",
            &format!("{ns}/events?limit=1"),
            Some(&acme),
            None,
        ),
        200,
        "events",
    );
    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a time: {v}")))
            .unwrap()
    };
    assert_eq!(
        at(&items[1]["last_seen_at"]),
        at(&newest["items"][0]["created_at"])
    );

    // The command line lists exactly what the API does.
    let cli: Value =
        serde_json::from_str(&bin.ok(&["event", "types", "--namespace", "acme", "--json"]))
            .expect("event types --json is JSON");
    assert_eq!(&cli, &listed["items"]);
    let text = bin.ok(&["event", "types", "--namespace", "acme"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("TYPE"), "{text}");
    assert!(
        lines[2].starts_with("invoice.paid") && lines[2].contains("  3  "),
        "{text}"
    );

    // One type; a type with a slash, percent-encoded in the path.
    let one = ok(
        &call(
            api,
            "GET",
            &format!("{ns}/event-types/invoice.paid"),
            Some(&acme_ro),
            None,
        ),
        200,
        "get",
    );
    assert_eq!(one, items[1]);
    ok(
        &call(
            api,
            "PATCH",
            &format!("{ns}/event-types/billing%2Finvoice%20paid"),
            Some(&acme),
            Some(&json!({"description": "With a slash."})),
        ),
        200,
        "describe a/b",
    );
    let slash = ok(
        &call(
            api,
            "GET",
            &format!("{ns}/event-types/billing%2Finvoice%20paid"),
            Some(&acme),
            None,
        ),
        200,
        "get a/b",
    );
    assert_eq!(slash["type"], "billing/invoice paid");
    assert_eq!(slash["description"], "With a slash.");

    // Read-only: 403 and nothing changed. Another namespace: 404, and its
    // list does not show acme's types.
    let path = format!("{ns}/event-types/invoice.paid");
    let body = json!({"description": "changed"});
    error(
        &call(api, "PATCH", &path, Some(&acme_ro), Some(&body)),
        403,
        "read-only",
    );
    error(
        &call(api, "PATCH", &path, Some(&globex), Some(&body)),
        404,
        "other namespace",
    );
    error(
        &call(
            api,
            "GET",
            &format!("{ns}/event-types"),
            Some(&globex),
            None,
        ),
        404,
        "other namespace's list",
    );
    let theirs = ok(
        &call(
            api,
            "GET",
            "/v1/namespaces/globex/event-types",
            Some(&globex),
            None,
        ),
        200,
        "globex list",
    );
    assert_eq!(theirs["items"], json!([]));
    assert_eq!(
        ok(
            &call(api, "GET", &path, Some(&acme), None),
            200,
            "unchanged"
        )["description"],
        "An invoice was paid <b>in full</b>."
    );

    // Bad input: a clear 4xx naming the field; nothing changed.
    let long = "x".repeat(1001);
    let m = error(
        &call(
            api,
            "PATCH",
            &path,
            Some(&acme),
            Some(&json!({"description": long})),
        ),
        422,
        "too long",
    );
    assert!(m.starts_with("description: is 1001 characters"), "{m}");
    error(
        &call(
            api,
            "PATCH",
            &path,
            Some(&acme),
            Some(&json!({"text": "x"})),
        ),
        400,
        "unknown field",
    );
    error(
        &call(api, "PATCH", &path, Some(&acme), Some(&json!({}))),
        422,
        "no description",
    );
    let m = error(
        &call(
            api,
            "PATCH",
            &format!("{ns}/event-types/bad%07type"),
            Some(&acme),
            Some(&json!({"description": "x"})),
        ),
        422,
        "control character in the type",
    );
    assert!(m.contains("type"), "{m}");
    error(
        &call_with(
            api,
            "GET",
            &format!("{ns}/event-types?limit=5"),
            Some(&acme),
            None,
            &[],
        ),
        400,
        "unknown query parameter",
    );
    assert_eq!(
        ok(
            &call(api, "GET", &path, Some(&acme), None),
            200,
            "unchanged"
        )["description"],
        "An invoice was paid <b>in full</b>."
    );

    // Removing: null through the API, "" through the command line.
    let removed = ok(
        &call(
            api,
            "PATCH",
            &format!("{ns}/event-types/order.shipped"),
            Some(&acme),
            Some(&json!({"description": null})),
        ),
        200,
        "remove",
    );
    assert_eq!(removed["description"], Value::Null);
    bin.ok(&[
        "event-type",
        "describe",
        "--namespace",
        "acme",
        "invoice.paid",
        "--description",
        "",
    ]);
    assert_eq!(
        ok(&call(api, "GET", &path, Some(&acme), None), 200, "removed")["description"],
        Value::Null
    );
    // A type that is neither seen, subscribed to nor described is not listed.
    let after = ok(
        &call(api, "GET", &format!("{ns}/event-types"), Some(&acme), None),
        200,
        "list after",
    );
    let types: Vec<&str> = after["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["billing/invoice paid", "invoice.failed", "invoice.paid"]
    );

    // Every description change is in the audit trail, by its actor.
    let audit = ok(
        &call(api, "GET", &format!("{ns}/audit"), Some(&acme), None),
        200,
        "audit",
    );
    let described: Vec<(String, String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == "describeEventType")
        .map(|e| {
            (
                e["object_kind"].as_str().unwrap().to_string(),
                e["object_id"].as_str().unwrap().to_string(),
                e["actor"]["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect =
        |id: &str, kind: &str| ("event_type".to_string(), id.to_string(), kind.to_string());
    assert_eq!(
        described,
        [
            expect("invoice.paid", "cli"),
            expect("order.shipped", "token"),
            expect("billing/invoice paid", "token"),
            expect("invoice.paid", "cli"),
            expect("order.shipped", "token"),
        ],
        "{audit}"
    );
}

#[test]
fn event_type_describe_refuses_bad_input_before_connecting() {
    // No database at all: usage errors come first, naming what was wrong.
    let bin = Bin::for_database("postgres://nobody@127.0.0.1:9/none");
    let line = bin.fails(
        2,
        &[
            "event-type",
            "describe",
            "--namespace",
            "acme",
            "",
            "--description",
            "x",
        ],
    );
    assert!(
        line.contains("TYPE") && line.contains("must not be empty"),
        "{line}"
    );
    let long = "d".repeat(1001);
    let line = bin.fails(
        2,
        &[
            "event-type",
            "describe",
            "--namespace",
            "acme",
            "t",
            "--description",
            &long,
        ],
    );
    assert!(
        line.contains("--description") && line.contains("1001"),
        "{line}"
    );
    let line = bin.fails(2, &["event", "types", "--namespace", ""]);
    assert!(line.contains("--namespace"), "{line}");
}
