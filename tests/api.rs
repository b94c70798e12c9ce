//! The management API through the real binary (`run` with `api.listen`), a
//! real PostgreSQL and a real receiver on 127.0.0.1: every route's happy
//! path and its errors, the same objects as the command line sees them, the
//! namespace isolation and read-only matrix over every route of the route
//! table, revocation and expiry on a second instance, idempotent ingestion
//! across instances, malformed requests, and a server that keeps serving
//! under idle and slow connections.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use notification_reconciler::api::routes::{Access, ROUTES};
use serde_json::{json, Value};
use support::api::{call, call_with, daemon_with_api, raw, Answer};
use support::bin::Bin;
use support::daemon::wait_until;
use support::{migrated_db, Receiver, Script};

/// A token made by `token create` with `args`.
fn token(bin: &Bin, args: &[&str]) -> String {
    let mut all = vec!["token", "create", "--name", "test"];
    all.extend_from_slice(args);
    let out = bin.ok(&all);
    let t = out.trim().to_string();
    assert!(t.starts_with("nrt_"), "{out}");
    t
}

fn ok(a: &Answer, status: u16, what: &str) -> Value {
    assert_eq!(a.status, status, "{what}: {} {}", a.status, a.text);
    a.json.clone()
}

fn error(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {} {}", a.status, a.text);
    assert!(
        a.json["error"]["code"].is_string() && a.json["error"]["message"].is_string(),
        "{what}: not the error shape: {}",
        a.text
    );
}

#[test]
fn every_route_answers_and_agrees_with_the_command_line() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let receiver = Receiver::start(Script::sequence(vec![500, 200]));
    let metrics = support::net::free_addr();
    let (_d, api) = daemon_with_api(
        "A",
        &db.url,
        &format!("[metrics]\nlisten = \"{metrics}\"\n"),
    );
    let admin = token(&bin, &["--admin"]);
    let acme = token(&bin, &["--namespace", "acme"]);
    let ns = "/v1/namespaces/acme";

    // The document needs no token; everything else does.
    let doc = ok(
        &call(api, "GET", "/v1/openapi.json", None, None),
        200,
        "openapi",
    );
    assert_eq!(doc["openapi"], "3.1.0");
    error(
        &call(api, "GET", &format!("{ns}/channels"), None, None),
        401,
        "no token",
    );
    error(
        &call(
            api,
            "GET",
            &format!("{ns}/channels"),
            Some("nrt_nope"),
            None,
        ),
        401,
        "bad token",
    );

    let me = ok(
        &call(api, "GET", "/v1/token", Some(&acme), None),
        200,
        "whoami",
    );
    assert_eq!(
        (me["namespace"].as_str(), me["admin"].as_bool()),
        (Some("acme"), Some(false))
    );

    // Channels.
    let created = ok(
        &call(
            api,
            "POST",
            &format!("{ns}/channels"),
            Some(&acme),
            Some(&json!({
                "name": "orders", "url": receiver.url(), "headers": {"X-Team": "billing"}
            })),
        ),
        201,
        "create channel",
    );
    let channel = created["id"].as_str().unwrap().to_string();
    assert!(created["signing_secret"]
        .as_str()
        .unwrap()
        .starts_with("whsec_"));
    let got = ok(
        &call(
            api,
            "GET",
            &format!("{ns}/channels/{channel}"),
            Some(&acme),
            None,
        ),
        200,
        "get channel",
    );
    assert!(got.get("signing_secret").is_none(), "{got}");
    assert_eq!(got["headers"]["X-Team"], "billing");
    let patched = ok(
        &call(
            api,
            "PATCH",
            &format!("{ns}/channels/{channel}"),
            Some(&acme),
            Some(&json!({"name": "orders-v2"})),
        ),
        200,
        "patch",
    );
    assert_eq!(patched["name"], "orders-v2");
    // The command line sees what the API made, in the same words.
    let listed: Value = serde_json::from_str(&bin.ok(&["channel", "list", "--json"])).unwrap();
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == channel.as_str())
        .unwrap();
    for key in [
        "id",
        "namespace",
        "name",
        "url",
        "headers",
        "disabled",
        "created_at",
    ] {
        assert_eq!(row[key], patched[key], "{key}");
    }
    let page = ok(
        &call(
            api,
            "GET",
            &format!("{ns}/channels?limit=10"),
            Some(&acme),
            None,
        ),
        200,
        "list",
    );
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert!(page["next_cursor"].is_null());
    let secret = ok(
        &call(
            api,
            "GET",
            &format!("{ns}/channels/{channel}/secret"),
            Some(&acme),
            None,
        ),
        200,
        "secret",
    );
    assert_eq!(secret["signing_secret"], created["signing_secret"]);

    // A refused address is refused by the API as by the command line.
    let refused = call(
        api,
        "POST",
        &format!("{ns}/channels"),
        Some(&acme),
        Some(&json!({"name": "x", "url": "http://169.254.169.254/"})),
    );
    error(&refused, 422, "metadata address");
    assert_eq!(refused.json["error"]["param"], "url");

    // Rules and events.
    let rule = ok(
        &call(
            api,
            "POST",
            &format!("{ns}/rules"),
            Some(&acme),
            Some(&json!({
                "name": "r", "event_type": "invoice.paid", "channels": [channel]
            })),
        ),
        201,
        "create rule",
    );
    let rule_id = rule["id"].as_str().unwrap().to_string();
    let filtered = ok(
        &call(
            api,
            "PATCH",
            &format!("{ns}/rules/{rule_id}"),
            Some(&acme),
            Some(&json!({"filter": "$.amount > 10"})),
        ),
        200,
        "filter",
    );
    assert_eq!(filtered["filter"], "($.\"amount\" > 10)");
    let bad = call(
        api,
        "PATCH",
        &format!("{ns}/rules/{rule_id}"),
        Some(&acme),
        Some(&json!({"filter": "$.amount >>> 10"})),
    );
    error(&bad, 422, "bad filter");
    assert_eq!(bad.json["error"]["param"], "filter");
    let unfiltered = ok(
        &call(
            api,
            "PATCH",
            &format!("{ns}/rules/{rule_id}"),
            Some(&acme),
            Some(&json!({"filter": null})),
        ),
        200,
        "no filter",
    );
    assert!(unfiltered["filter"].is_null());
    ok(
        &call(
            api,
            "GET",
            &format!("{ns}/rules/{rule_id}"),
            Some(&acme),
            None,
        ),
        200,
        "get rule",
    );
    let rules = ok(
        &call(api, "GET", &format!("{ns}/rules"), Some(&acme), None),
        200,
        "rules",
    );
    assert_eq!(rules["items"][0]["id"], rule_id.as_str());
    let emitted = ok(
        &call(
            api,
            "POST",
            &format!("{ns}/events"),
            Some(&acme),
            Some(&json!({
                "type": "invoice.paid", "payload": {"amount": 12}
            })),
        ),
        201,
        "create event",
    );
    let event = emitted["ids"][0].as_str().unwrap().to_string();
    // 500 then 200: both attempts shown, in the CLI's words.
    wait_until(
        "two attempts",
        Duration::from_secs(30),
        || receiver.count() >= 2,
        String::new,
    );
    let mut detail = Value::Null;
    wait_until(
        "SUCCESS",
        Duration::from_secs(30),
        || {
            detail = call(
                api,
                "GET",
                &format!("{ns}/events/{event}"),
                Some(&acme),
                None,
            )
            .json;
            detail["deliveries"][0]["state"] == "SUCCESS"
        },
        String::new,
    );
    let attempts = detail["deliveries"][0]["attempts"].as_array().unwrap();
    let codes: Vec<i64> = attempts
        .iter()
        .map(|a| a["http_status"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, vec![500, 200]);
    assert!(attempts[0]["duration_ms"].is_number());
    let shown: Value = serde_json::from_str(&bin.ok(&["event", "show", &event, "--json"])).unwrap();
    assert_eq!(shown["deliveries"], detail["deliveries"]);
    assert_eq!(shown["event"]["payload"], detail["payload"]);

    // Event list: filters and the cursor.
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
            "more",
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("{ns}/events?type=invoice.paid&limit=3&cursor={c}"),
            None => format!("{ns}/events?type=invoice.paid&limit=3"),
        };
        let page = ok(&call(api, "GET", &q, Some(&acme), None), 200, "events page");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[3], event, "newest first: the first event comes last");
    let none = ok(
        &call(
            api,
            "GET",
            &format!("{ns}/events?type=other"),
            Some(&acme),
            None,
        ),
        200,
        "filter",
    );
    assert!(none["items"].as_array().unwrap().is_empty());
    let by_channel = ok(
        &call(
            api,
            "GET",
            &format!("{ns}/events?channel={channel}&state=SUCCESS&since=1h"),
            Some(&acme),
            None,
        ),
        200,
        "filter",
    );
    assert!(by_channel["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["id"] == event.as_str()));

    // Resend one event; resend again while it is on its way is a conflict.
    let resent = ok(
        &call(
            api,
            "POST",
            &format!("{ns}/events/{event}/resend"),
            Some(&acme),
            None,
        ),
        200,
        "resend",
    );
    assert_eq!(resent["resent"][0]["was"], "SUCCESS");
    // Bulk resend: dry run counts, then disabled channels are a conflict.
    let dry = ok(
        &call(
            api,
            "POST",
            &format!("{ns}/channels/{channel}/resend"),
            Some(&acme),
            Some(&json!({"dry_run": true, "state": "SUCCESS"})),
        ),
        200,
        "dry run",
    );
    assert_eq!(dry["dry_run"], true);
    ok(
        &call(
            api,
            "POST",
            &format!("{ns}/channels/{channel}/disable"),
            Some(&acme),
            None,
        ),
        200,
        "disable",
    );
    error(
        &call(
            api,
            "POST",
            &format!("{ns}/channels/{channel}/resend"),
            Some(&acme),
            None,
        ),
        409,
        "resend disabled",
    );
    error(
        &call(
            api,
            "POST",
            &format!("{ns}/channels/{channel}/test"),
            Some(&acme),
            None,
        ),
        409,
        "test disabled",
    );
    let enabled = ok(
        &call(
            api,
            "POST",
            &format!("{ns}/channels/{channel}/enable"),
            Some(&acme),
            None,
        ),
        200,
        "enable",
    );
    assert_eq!(enabled["disabled"], false);
    let test = ok(
        &call(
            api,
            "POST",
            &format!("{ns}/channels/{channel}/test"),
            Some(&acme),
            None,
        ),
        201,
        "test event",
    );
    let test_id = test["ids"][0].as_str().unwrap().to_string();
    wait_until(
        "the test event delivered",
        Duration::from_secs(30),
        || receiver.ids().contains(&test_id),
        String::new,
    );
    let rotated = ok(
        &call(
            api,
            "POST",
            &format!("{ns}/channels/{channel}/rotate-secret"),
            Some(&acme),
            Some(&json!({"overlap": "1h"})),
        ),
        200,
        "rotate",
    );
    assert!(rotated["previous_secret_until"].is_string());
    error(
        &call(
            api,
            "POST",
            &format!("{ns}/channels/{channel}/rotate-secret"),
            Some(&acme),
            Some(&json!({"overlap": "soon"})),
        ),
        422,
        "bad overlap",
    );

    // Stats, namespaces, status.
    let stats = ok(
        &call(api, "GET", &format!("{ns}/stats"), Some(&acme), None),
        200,
        "stats",
    );
    assert_eq!(stats["per_minute"].as_array().unwrap().len(), 60);
    let attempts_total: i64 = stats["per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["deliveries"].as_i64().unwrap())
        .sum();
    assert!(attempts_total >= 2, "{stats}");
    let nss = ok(
        &call(api, "GET", "/v1/namespaces", Some(&admin), None),
        200,
        "namespaces",
    );
    assert!(nss["items"].as_array().unwrap().contains(&json!("acme")));
    error(
        &call(api, "GET", "/v1/status", Some(&acme), None),
        403,
        "status needs admin",
    );
    let status = ok(
        &call(api, "GET", "/v1/status", Some(&admin), None),
        200,
        "status",
    );
    let cli_status: Value = serde_json::from_str(&bin.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["schema_version"], cli_status["schema_version"]);

    // Deletes.
    for (what, id) in [("rules", &rule_id), ("channels", &channel)] {
        let path = format!("{ns}/{what}/{id}");
        assert_eq!(call(api, "DELETE", &path, Some(&acme), None).status, 204);
        error(&call(api, "GET", &path, Some(&acme), None), 404, what);
    }

    // The metrics count requests by route and class.
    let (_, text) = support::net::http_get(metrics, "/metrics").expect("metrics");
    assert!(
        text.contains("api_requests_total{route=\"createChannel\",class=\"2xx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("api_request_duration_seconds_count"),
        "{text}"
    );
    assert!(!text.contains(&acme), "a token in the metrics");
}

/// The path of `route` with `ns` and `id` filled in (and an event type's
/// `{type}`).
fn path_of(template: &str, ns: &str, id: &str) -> String {
    template
        .replace("{ns}", ns)
        .replace("{id}", id)
        .replace("{type}", "invoice.paid")
}

#[test]
fn another_namespace_is_not_found_and_read_only_tokens_cannot_write_on_any_route() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (_d, api) = daemon_with_api("A", &db.url, "");
    let a = token(&bin, &["--namespace", "a"]);
    let b = token(&bin, &["--namespace", "b"]);
    let a_ro = token(&bin, &["--namespace", "a", "--read-only"]);
    let channel = call(
        api,
        "POST",
        "/v1/namespaces/a/channels",
        Some(&a),
        Some(
            &json!({"name": "c", "url": "http://127.0.0.1:9/", "headers": {"Authorization": "Bearer endpoint-credential"}}),
        ),
    );
    let channel = ok(&channel, 201, "channel")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before: Value = serde_json::from_str(&bin.ok(&["channel", "list", "--json"])).unwrap();

    let mut checked = 0;
    for route in ROUTES.iter().filter(|r| r.path.contains("{ns}")) {
        let body = if route.method == "GET" || route.method == "DELETE" {
            None
        } else {
            Some("{}")
        };
        // A token of namespace b, on namespace a's objects and paths: 404.
        let path = path_of(route.path, "a", &channel);
        let answer = call_with(api, route.method, &path, Some(&b), body, &[]);
        error(
            &answer,
            404,
            &format!("{} {path} with b's token", route.method),
        );
        // A read-only token of namespace a: 403 on every write and on the
        // secret; on every read, never a header value nor a secret.
        let answer = call_with(api, route.method, &path, Some(&a_ro), body, &[]);
        if matches!(route.access, Access::Write | Access::Reveal) {
            error(&answer, 403, &format!("{} {path} read-only", route.method));
        } else {
            assert!(
                answer.status < 500,
                "{} {path}: {}",
                route.method,
                answer.text
            );
        }
        for hidden in ["endpoint-credential", "whsec_"] {
            assert!(
                !answer.text.contains(hidden),
                "{} {path} read-only shows {hidden}: {}",
                route.method,
                answer.text
            );
        }
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");
    // A channel of another namespace named in a body is absent too.
    let b_channel = ok(
        &call(
            api,
            "POST",
            "/v1/namespaces/b/channels",
            Some(&b),
            Some(&json!({"name": "x", "url": "http://127.0.0.1:9/"})),
        ),
        201,
        "b channel",
    );
    let b_id = b_channel["id"].as_str().unwrap().to_string();
    ok(
        &call(
            api,
            "POST",
            &format!("/v1/namespaces/b/channels/{b_id}/disable"),
            Some(&b),
            None,
        ),
        200,
        "disable",
    );
    let rule = ok(
        &call(
            api,
            "POST",
            "/v1/namespaces/a/rules",
            Some(&a),
            Some(&json!({"name": "r", "event_type": "e", "channels": [channel]})),
        ),
        201,
        "rule",
    );
    let event = ok(
        &call(
            api,
            "POST",
            "/v1/namespaces/a/events",
            Some(&a),
            Some(&json!({"type": "e", "payload": {}})),
        ),
        201,
        "event",
    );
    let ev = event["ids"][0].as_str().unwrap();
    let answer = call(
        api,
        "POST",
        &format!("/v1/namespaces/a/events/{ev}/resend"),
        Some(&a),
        Some(&json!({"channel": b_id})),
    );
    error(&answer, 404, "another namespace's disabled channel");
    let answer = call(
        api,
        "POST",
        "/v1/namespaces/a/rules",
        Some(&a),
        Some(&json!({"name": "r2", "event_type": "e", "channels": [b_id]})),
    );
    error(&answer, 422, "a rule with another namespace's channel");
    let answer = call(
        api,
        "PATCH",
        &format!("/v1/namespaces/a/rules/{}", rule["id"].as_str().unwrap()),
        Some(&a),
        Some(&json!({"channels": [b_id]})),
    );
    error(
        &answer,
        422,
        "a rule update with another namespace's channel",
    );
    bin.ok(&["channel", "delete", &b_id]);
    bin.ok(&["rule", "delete", rule["id"].as_str().unwrap()]);
    // Nothing changed (what the API could have changed; the delivery of the
    // event above may have recorded failures since).
    let after: Value = serde_json::from_str(&bin.ok(&["channel", "list", "--json"])).unwrap();
    let fields = |v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                json!([
                    c["id"],
                    c["name"],
                    c["url"],
                    c["headers"],
                    c["disabled"],
                    c["updated_at"]
                ])
            })
            .collect()
    };
    assert_eq!(fields(&before), fields(&after));
    // And the read-only token still reads, header names with "***" values;
    // a token that may write sees the values and the secret.
    let read = ok(
        &call(
            api,
            "GET",
            &format!("/v1/namespaces/a/channels/{channel}"),
            Some(&a_ro),
            None,
        ),
        200,
        "read",
    );
    assert_eq!(read["headers"], json!({"Authorization": "***"}));
    let listed = ok(
        &call(api, "GET", "/v1/namespaces/a/channels", Some(&a_ro), None),
        200,
        "list",
    );
    assert_eq!(
        listed["items"][0]["headers"],
        json!({"Authorization": "***"})
    );
    let full = ok(
        &call(
            api,
            "GET",
            &format!("/v1/namespaces/a/channels/{channel}"),
            Some(&a),
            None,
        ),
        200,
        "read",
    );
    assert_eq!(
        full["headers"],
        json!({"Authorization": "Bearer endpoint-credential"})
    );
    let secret = ok(
        &call(
            api,
            "GET",
            &format!("/v1/namespaces/a/channels/{channel}/secret"),
            Some(&a),
            None,
        ),
        200,
        "secret",
    );
    assert!(secret["signing_secret"]
        .as_str()
        .unwrap()
        .starts_with("whsec_"));
    // Only an admin token reaches /v1/status.
    error(
        &call(api, "GET", "/v1/status", Some(&a), None),
        403,
        "status",
    );
}

/// Polls `addr` with `token` until it is refused; returns how long it took.
fn until_refused(addr: SocketAddr, token: &str) -> Duration {
    let start = Instant::now();
    loop {
        let a = call(addr, "GET", "/v1/token", Some(token), None);
        if a.status == 401 {
            return start.elapsed();
        }
        assert_eq!(a.status, 200, "{}", a.text);
        assert!(start.elapsed() < Duration::from_secs(5), "never refused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn revoked_and_expired_tokens_are_refused_on_every_instance() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (_a, api_a) = daemon_with_api("A", &db.url, "");
    let (_b, api_b) = daemon_with_api("B", &db.url, "");
    let t = token(&bin, &["--namespace", "n"]);
    // Both instances have seen it (and cached it).
    ok(&call(api_a, "GET", "/v1/token", Some(&t), None), 200, "A");
    ok(&call(api_b, "GET", "/v1/token", Some(&t), None), 200, "B");
    let list: Value = serde_json::from_str(&bin.ok(&["token", "list", "--json"])).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert!(
        !bin.ok(&["token", "list"]).contains(&t),
        "token list shows the token"
    );
    bin.ok(&["token", "revoke", &id]);
    // The contract is one second: each instance trusts a lookup for 0.5 s.
    for api in [api_a, api_b] {
        let took = until_refused(api, &t);
        assert!(took <= Duration::from_secs(1), "refused after {took:?}");
    }
    assert!(bin.ok(&["token", "list"]).contains("revoked"));

    let short = token(&bin, &["--namespace", "n", "--expires", "2s"]);
    ok(
        &call(api_b, "GET", "/v1/token", Some(&short), None),
        200,
        "fresh",
    );
    let list: Value = serde_json::from_str(&bin.ok(&["token", "list", "--json"])).unwrap();
    let expires: chrono::DateTime<chrono::Utc> =
        list[0]["expires_at"].as_str().unwrap().parse().unwrap();
    while chrono::Utc::now() < expires {
        std::thread::sleep(Duration::from_millis(50));
    }
    for api in [api_a, api_b] {
        let took = until_refused(api, &short);
        assert!(
            took <= Duration::from_secs(1),
            "expired token refused after {took:?}"
        );
    }
}

#[test]
fn an_idempotency_key_enqueues_once_across_instances() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (_a, api_a) = daemon_with_api("A", &db.url, "");
    let (_b, api_b) = daemon_with_api("B", &db.url, "");
    let t = token(&bin, &["--namespace", "n"]);
    let c = ok(
        &call(
            api_a,
            "POST",
            "/v1/namespaces/n/channels",
            Some(&t),
            Some(&json!({"name": "c", "url": "http://127.0.0.1:9/"})),
        ),
        201,
        "channel",
    );
    ok(
        &call(
            api_a,
            "POST",
            "/v1/namespaces/n/rules",
            Some(&t),
            Some(&json!({"name": "r", "event_type": "e", "channels": [c["id"]]})),
        ),
        201,
        "rule",
    );
    let body = r#"{"type": "e", "payload": {"k": 1}}"#;
    let post = |api, key: &str, body: &str| {
        call_with(
            api,
            "POST",
            "/v1/namespaces/n/events",
            Some(&t),
            Some(body),
            &[("idempotency-key", key)],
        )
    };
    let first = post(api_a, "key-1", body);
    ok(&first, 201, "first");
    let again = post(api_a, "key-1", body);
    assert_eq!((again.status, &again.json), (201, &first.json));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other_instance = post(api_b, "key-1", body);
    assert_eq!(
        (other_instance.status, &other_instance.json),
        (201, &first.json)
    );
    error(
        &post(api_b, "key-1", r#"{"type": "e", "payload": {"k": 2}}"#),
        422,
        "other body",
    );
    // The same key in another namespace is another key.
    let t2 = token(&bin, &["--namespace", "m"]);
    let elsewhere = call_with(
        api_a,
        "POST",
        "/v1/namespaces/m/events",
        Some(&t2),
        Some(body),
        &[("idempotency-key", "key-1")],
    );
    assert_eq!(ok(&elsewhere, 201, "m")["ids"], json!([]));
    // Racing: 8 clients, two instances, one key: one event.
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = if i % 2 == 0 { api_a } else { api_b };
                s.spawn(move || post(api, "key-race", body))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for a in &answers {
        assert_eq!((a.status, &a.json), (201, &answers[0].json), "{}", a.text);
    }
    let mut client = db.client();
    let n: i64 = client
        .query_one("SELECT count(*) FROM notification.event", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "key-1 and key-race enqueued once each");
    // Without a key, every POST enqueues.
    ok(&post(api_a, "", body), 422, "empty key");
}

#[test]
fn malformed_requests_get_a_clear_4xx() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (d, api) = daemon_with_api(
        "A",
        &db.url,
        "[api]\nmax_body_bytes = 4096\n".trim_start_matches("[api]\n"),
    );
    let t = token(&bin, &["--namespace", "n"]);
    let admin = token(&bin, &["--admin"]);
    let ns = "/v1/namespaces/n";
    let c = ok(
        &call(
            api,
            "POST",
            &format!("{ns}/channels"),
            Some(&t),
            Some(&json!({"name": "c", "url": "http://127.0.0.1:9/"})),
        ),
        201,
        "channel",
    );
    let ch = c["id"].as_str().unwrap().to_string();
    let long_key = "k".repeat(300);
    let far_cursor = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("-1000000000000000000.{}", uuid::Uuid::nil()))
    };
    let huge = format!(
        r#"{{"type": "e", "payload": {{"x": "{}"}}}}"#,
        "y".repeat(2 * 1024 * 1024)
    );
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Option<String>,
        Vec<(&'a str, &'a str)>,
        u16,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "bad JSON",
            "POST",
            format!("{ns}/channels"),
            Some("{\"name\":".into()),
            vec![],
            400,
        ),
        (
            "trailing garbage",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":"a","url":"http://127.0.0.1:9/"} x"#.into()),
            vec![],
            400,
        ),
        (
            "unknown field",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":"a","url":"http://127.0.0.1:9/","colour":1}"#.into()),
            vec![],
            400,
        ),
        (
            "wrong type",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":5,"url":"http://127.0.0.1:9/"}"#.into()),
            vec![],
            422,
        ),
        (
            "missing field",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":"a"}"#.into()),
            vec![],
            422,
        ),
        (
            "array body",
            "POST",
            format!("{ns}/channels"),
            Some("[]".into()),
            vec![],
            422,
        ),
        (
            "header not a string",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":"a","url":"http://127.0.0.1:9/","headers":{"a":1}}"#.into()),
            vec![],
            422,
        ),
        (
            "reserved header",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":"a","url":"http://127.0.0.1:9/","headers":{"webhook-id":"x"}}"#.into()),
            vec![],
            422,
        ),
        (
            "header with CRLF",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":"a","url":"http://127.0.0.1:9/","headers":{"x":"a\r\nb: c"}}"#.into()),
            vec![],
            422,
        ),
        (
            "bad URL",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":"a","url":"not a url"}"#.into()),
            vec![],
            422,
        ),
        (
            "ftp URL",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":"a","url":"ftp://127.0.0.1/"}"#.into()),
            vec![],
            422,
        ),
        (
            "bad secret",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":"a","url":"http://127.0.0.1:9/","secret":"hunter2"}"#.into()),
            vec![],
            422,
        ),
        (
            "empty name",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":"","url":"http://127.0.0.1:9/"}"#.into()),
            vec![],
            422,
        ),
        (
            "not JSON content type",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":"a","url":"http://127.0.0.1:9/"}"#.into()),
            vec![("content-type", "text/plain")],
            415,
        ),
        (
            "bad UTF-8",
            "POST",
            format!("{ns}/events"),
            Some("{\"type\":\"e\",\"payload\":{\"k\":\"\u{fffd}\"}}".replace('\u{fffd}', "\\xff")),
            vec![],
            201,
        ),
        (
            "payload not an object",
            "POST",
            format!("{ns}/events"),
            Some(r#"{"type":"e","payload":[1]}"#.into()),
            vec![],
            422,
        ),
        (
            "empty type",
            "POST",
            format!("{ns}/events"),
            Some(r#"{"type":"","payload":{}}"#.into()),
            vec![],
            422,
        ),
        (
            "huge body",
            "POST",
            format!("{ns}/events"),
            Some(huge),
            vec![],
            413,
        ),
        (
            "bad cursor",
            "GET",
            format!("{ns}/events?cursor=abc"),
            None,
            vec![],
            422,
        ),
        (
            "bad limit",
            "GET",
            format!("{ns}/events?limit=100000"),
            None,
            vec![],
            422,
        ),
        (
            "unknown query",
            "GET",
            format!("{ns}/events?colour=red"),
            None,
            vec![],
            400,
        ),
        (
            "repeated query",
            "GET",
            format!("{ns}/events?limit=1&limit=2"),
            None,
            vec![],
            400,
        ),
        (
            "bad state",
            "GET",
            format!("{ns}/events?state=DONE"),
            None,
            vec![],
            422,
        ),
        (
            "bad channel filter",
            "GET",
            format!("{ns}/events?channel=x"),
            None,
            vec![],
            422,
        ),
        (
            "bad since",
            "GET",
            format!("{ns}/events?since=tuesday"),
            None,
            vec![],
            422,
        ),
        (
            "path traversal id",
            "GET",
            format!("{ns}/channels/..%2F..%2Fetc%2Fpasswd"),
            None,
            vec![],
            404,
        ),
        (
            "dot segments",
            "GET",
            format!("{ns}/channels/../../status"),
            None,
            vec![],
            404,
        ),
        (
            "not a uuid",
            "GET",
            format!("{ns}/events/123"),
            None,
            vec![],
            404,
        ),
        (
            "unknown route",
            "GET",
            "/v1/nothing".into(),
            None,
            vec![],
            404,
        ),
        (
            "wrong method",
            "PUT",
            format!("{ns}/channels/{ch}"),
            Some("{}".into()),
            vec![],
            405,
        ),
        (
            "field on enable",
            "POST",
            format!("{ns}/channels/{ch}/enable"),
            Some(r#"{"x":1}"#.into()),
            vec![],
            400,
        ),
        (
            "bad state on resend",
            "POST",
            format!("{ns}/channels/{ch}/resend"),
            Some(r#"{"state":"PENDING"}"#.into()),
            vec![],
            422,
        ),
        (
            "bad channel on event resend",
            "POST",
            format!("{ns}/events/{ch}/resend"),
            Some(r#"{"channel":"nope"}"#.into()),
            vec![],
            422,
        ),
        (
            "rule of unknown channel",
            "POST",
            format!("{ns}/rules"),
            Some(format!(
                r#"{{"name":"r","event_type":"e","channels":["{}"]}}"#,
                uuid::Uuid::new_v4()
            )),
            vec![],
            422,
        ),
        (
            "rule without channels",
            "POST",
            format!("{ns}/rules"),
            Some(r#"{"name":"r","event_type":"e","channels":[]}"#.into()),
            vec![],
            422,
        ),
        (
            "NUL in a query value",
            "GET",
            format!("{ns}/events?type=%00"),
            None,
            vec![],
            422,
        ),
        (
            "NUL in a payload",
            "POST",
            format!("{ns}/events"),
            Some(r#"{"type":"e","payload":{"k":"\u0000"}}"#.into()),
            vec![],
            422,
        ),
        (
            "NUL in a URL",
            "POST",
            format!("{ns}/channels"),
            Some(r#"{"name":"a","url":"http://127.0.0.1:9/x\u0000"}"#.into()),
            vec![],
            422,
        ),
        (
            "since beyond the year 9999",
            "GET",
            format!("{ns}/events?since=100000y"),
            None,
            vec![],
            422,
        ),
        (
            "bulk resend since beyond",
            "POST",
            format!("{ns}/channels/{ch}/resend"),
            Some(r#"{"since":"100000y"}"#.into()),
            vec![],
            422,
        ),
        (
            "a cursor far in the past",
            "GET",
            format!("{ns}/events?cursor={far_cursor}"),
            None,
            vec![],
            422,
        ),
        (
            "NUL namespace",
            "GET",
            "/v1/namespaces/%00/channels".into(),
            None,
            vec![],
            404,
        ),
        (
            "annotations not an object",
            "POST",
            format!("{ns}/events"),
            Some(r#"{"type":"e","payload":{},"annotations":5}"#.into()),
            vec![],
            422,
        ),
        ("HEAD", "HEAD", format!("{ns}/channels"), None, vec![], 405),
        (
            "long idempotency key",
            "POST",
            format!("{ns}/events"),
            Some(r#"{"type":"e","payload":{}}"#.into()),
            vec![("idempotency-key", long_key.as_str())],
            422,
        ),
    ];
    // The bad-UTF-8 case is written as raw bytes below; its entry above
    // only reserves its place in the count.
    let count = cases.len();
    for (what, method, path, body, headers, status) in cases {
        if what == "bad UTF-8" {
            continue;
        }
        let token = if what == "NUL namespace" { &admin } else { &t };
        let a = call_with(api, method, &path, Some(token), body.as_deref(), &headers);
        if method == "HEAD" {
            assert_eq!(a.status, status, "{what}");
            continue;
        }
        error(&a, status, what);
        if what == "annotations not an object" {
            assert_eq!(a.json["error"]["param"], "annotations", "{}", a.text);
        }
    }
    // Raw-bytes cases: bad UTF-8, header smuggling, a bad head.
    let mut bad_utf8 = format!("POST {ns}/events HTTP/1.1\r\nauthorization: Bearer {t}\r\ncontent-type: application/json\r\nconnection: close\r\n").into_bytes();
    let body: &[u8] = b"{\"type\":\"e\",\"payload\":{\"k\":\"\xff\"}}";
    bad_utf8.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    bad_utf8.extend_from_slice(body);
    error(&raw(api, &bad_utf8), 400, "bad UTF-8");
    let smuggle = format!("POST {ns}/events HTTP/1.1\r\nauthorization: Bearer {t}\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n{{}}");
    error(&raw(api, smuggle.as_bytes()), 411, "CL + TE");
    let two_lengths = format!("POST {ns}/events HTTP/1.1\r\nauthorization: Bearer {t}\r\ncontent-length: 2\r\ncontent-length: 40\r\n\r\n{{}}");
    error(
        &raw(api, two_lengths.as_bytes()),
        400,
        "two Content-Lengths",
    );
    error(&raw(api, b"GARBAGE\r\n\r\n"), 400, "not HTTP");
    assert!(count + 3 >= 25, "{count}");
    // Nothing above made a 5xx or broke the daemon.
    assert!(!d.stderr().contains("panicked"), "{}", d.stderr());
    ok(
        &call(api, "GET", &format!("{ns}/channels"), Some(&t), None),
        200,
        "still serving",
    );
}

#[test]
fn idle_and_slow_connections_cannot_stop_another_client() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (_d, api) = daemon_with_api("A", &db.url, "max_connections = 32\n");
    let t = token(&bin, &["--namespace", "n"]);
    // 400 idle connections (12 times the cap) and 8 slowloris clients.
    let idle: Vec<std::net::TcpStream> = (0..400)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&api, Duration::from_secs(2)).ok())
        .collect();
    let mut slow: Vec<std::net::TcpStream> = (0..8)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&api, Duration::from_secs(2)).ok())
        .collect();
    use std::io::Write;
    for s in &mut slow {
        let _ = s.write_all(b"GET /v1/namespaces/n/channels HTTP/1.1\r\nx-slow: ");
    }
    for round in 0..5 {
        for s in &mut slow {
            let _ = s.write_all(b"a");
        }
        let a = call(api, "GET", "/v1/namespaces/n/channels", Some(&t), None);
        assert_eq!(a.status, 200, "round {round}: {}", a.text);
    }
    drop(idle);
}

#[test]
fn slow_bodies_and_slow_readers_cannot_lock_others_out() {
    use std::io::Write;
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (d, api) = daemon_with_api("A", &db.url, "max_connections = 16\n");
    let t = token(&bin, &["--namespace", "n"]);
    // 16 connections promising a body that never comes (no token needed).
    let mut slow_bodies = Vec::new();
    for _ in 0..16 {
        let mut s = std::net::TcpStream::connect(api).unwrap();
        s.write_all(b"POST /v1/namespaces/n/events HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n").unwrap();
        slow_bodies.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    // 16 connections pipelining many requests and reading nothing.
    let mut slow_readers = Vec::new();
    for _ in 0..16 {
        let mut s = std::net::TcpStream::connect(api).unwrap();
        let many = "GET /v1/openapi.json HTTP/1.1\r\nhost: x\r\n\r\n".repeat(300);
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(many.as_bytes());
        slow_readers.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    for round in 0..5 {
        let a = call(api, "GET", "/v1/namespaces/n/channels", Some(&t), None);
        assert_eq!(
            a.status,
            200,
            "round {round}: {}\n{}",
            a.text,
            support::daemon::tail(&d.stderr(), 20)
        );
    }
    drop((slow_bodies, slow_readers));
}

#[test]
fn the_served_document_is_the_committed_one() {
    let db = migrated_db();
    let (_d, api) = daemon_with_api("A", &db.url, "");
    let served = call(api, "GET", "/v1/openapi.json", None, None);
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert_eq!(served.text, committed);
}
