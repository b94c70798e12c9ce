//! The management API's edges, through the real binary and a real
//! PostgreSQL: the security headers on every `/v1` answer (successes,
//! errors, the server's own refusals), `Allow` on 405, `WWW-Authenticate`
//! on 401, the per-token rate limit (a burst is refused with 429 while
//! another token is served; a flood of made-up tokens cannot slow a real
//! one) and portal links (expiry, namespace, read-only, the maximum).

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use notification_reconciler::api::routes::{Handler, ROUTES};
use serde_json::{json, Value};
use support::api::{call, call_with, daemon_with_api, raw, Answer};
use support::bin::Bin;
use support::daemon::wait_until;
use support::migrated_db;

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

fn has_security_headers(a: &Answer, what: &str) {
    assert_eq!(a.header("cache-control"), Some("no-store"), "{what}");
    assert_eq!(
        a.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(
        a.header("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'"),
        "{what}"
    );
}

#[test]
fn every_v1_answer_carries_the_security_headers_405_allow_and_401_bearer() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (_d, api) = daemon_with_api("A", &db.url, "max_body_bytes = 1024\n");
    let admin = token(&bin, &["--admin"]);
    let created = call(
        api,
        "POST",
        "/v1/namespaces/a/channels",
        Some(&admin),
        Some(&json!({"name": "c", "url": "http://127.0.0.1:9/"})),
    );
    ok(&created, 201, "create");
    has_security_headers(&created, "201 with a secret");
    let read = call(api, "GET", "/v1/namespaces/a/channels", Some(&admin), None);
    ok(&read, 200, "list");
    has_security_headers(&read, "200");
    has_security_headers(
        &call(api, "GET", "/v1/openapi.json", None, None),
        "the public document",
    );
    let missing = call(api, "GET", "/v1/namespaces/a/channels", None, None);
    assert_eq!(missing.status, 401, "{}", missing.text);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    has_security_headers(&missing, "401");
    let unknown = call(api, "GET", "/v1/token", Some("nrt_made-up"), None);
    assert_eq!(unknown.status, 401, "{}", unknown.text);
    assert_eq!(unknown.header("www-authenticate"), Some("Bearer"));
    let wrong = call(api, "PUT", "/v1/namespaces/a/channels", Some(&admin), None);
    assert_eq!(wrong.status, 405, "{}", wrong.text);
    assert_eq!(wrong.header("allow"), Some("GET, POST"));
    has_security_headers(&wrong, "405");
    let nowhere = call(api, "GET", "/v1/nothing", Some(&admin), None);
    assert_eq!(nowhere.status, 404);
    has_security_headers(&nowhere, "404");
    let console = call(api, "POST", "/console/", None, None);
    assert_eq!(console.status, 405);
    assert_eq!(console.header("allow"), Some("GET"));
    // The server's own refusal, before any handler.
    let big = "x".repeat(4096);
    let too_large = raw(
        api,
        format!(
            "POST /v1/namespaces/a/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{big}",
            big.len()
        )
        .as_bytes(),
    );
    assert_eq!(too_large.status, 413, "{}", too_large.text);
    has_security_headers(&too_large, "413");
}

/// The audit rows of namespace `ns` as `GET .../audit` shows them (first page).
fn audit_rows(api: std::net::SocketAddr, token: &str, ns: &str) -> Vec<Value> {
    let a = call(
        api,
        "GET",
        &format!("/v1/namespaces/{ns}/audit?limit=500"),
        Some(token),
        None,
    );
    ok(&a, 200, "audit")["items"].as_array().unwrap().clone()
}

#[test]
fn every_write_route_and_cli_change_leaves_exactly_one_audit_row() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (d, api) = daemon_with_api("A", &db.url, "");
    let admin = token(&bin, &["--admin"]);
    let admin_id = ok(
        &call(api, "GET", "/v1/token", Some(&admin), None),
        200,
        "me",
    )["id"]
        .clone();
    let post = |path: &str, body: Value| {
        ok(
            &call(
                api,
                "POST",
                &format!("/v1/namespaces/a/{path}"),
                Some(&admin),
                Some(&body),
            ),
            201,
            path,
        )
    };
    let ch = post(
        "channels",
        json!({"name": "c", "url": "http://127.0.0.1:9/"}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rule = post(
        "rules",
        json!({"name": "r", "event_type": "e", "channels": [ch]}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let event = post("events", json!({"type": "e", "payload": {}}))["ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    // Posting an event is a change too: who posted it is on no event row.
    let rows = audit_rows(api, &admin, "a");
    assert_eq!(rows.len(), 3, "create channel, create rule, post event");
    assert_eq!(rows[0]["operation"], "createEvent", "{rows:?}");
    assert_eq!(rows[0]["object_id"], event.as_str(), "{rows:?}");
    // A post replayed for its Idempotency-Key changes nothing: no row.
    let keyed = |n: usize| {
        let answer = call_with(
            api,
            "POST",
            "/v1/namespaces/a/events",
            Some(&admin),
            Some(r#"{"type": "e", "payload": {"k": 1}}"#),
            &[
                ("idempotency-key", "audit-once"),
                ("content-type", "application/json"),
            ],
        );
        assert_eq!(answer.status, 201, "post {n}: {}", answer.text);
    };
    keyed(1);
    keyed(2);
    assert_eq!(
        audit_rows(api, &admin, "a").len(),
        4,
        "a replayed post leaves no row"
    );
    // Two rules: one row naming both events, in the answer's order; no
    // rule: one row naming none.
    post(
        "rules",
        json!({"name": "r2", "event_type": "e", "channels": [ch]}),
    );
    let ids = post("events", json!({"type": "e", "payload": {"two": 1}}))["ids"].clone();
    let ids: Vec<&str> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let rows = audit_rows(api, &admin, "a");
    assert_eq!(rows[0]["operation"], "createEvent", "{rows:?}");
    assert_eq!(rows[0]["object_id"], ids.join(","), "{rows:?}");
    post("events", json!({"type": "nobody.listens", "payload": {}}));
    let rows = audit_rows(api, &admin, "a");
    assert_eq!(rows.len(), 7, "{rows:?}");
    assert_eq!(rows[0]["operation"], "createEvent", "{rows:?}");
    assert_eq!(rows[0]["object_id"], Value::Null, "{rows:?}");
    wait_until(
        "the event's delivery to fail",
        Duration::from_secs(60),
        || {
            let e = call(
                api,
                "GET",
                &format!("/v1/namespaces/a/events/{event}"),
                Some(&admin),
                None,
            );
            e.json["deliveries"][0]["state"] == "FAILED"
        },
        || d.stderr(),
    );

    // Every route that changes something, deletes last.
    let mut writes: Vec<_> = ROUTES
        .iter()
        .filter(|r| matches!(r.handler, Handler::Write(_)))
        .collect();
    writes.sort_by_key(|r| r.method == "DELETE");
    assert!(writes.len() >= 13, "{writes:?}");
    for route in writes {
        let body = match route.operation {
            "createChannel" => json!({"name": "c2", "url": "http://127.0.0.1:9/"}),
            "updateChannel" => json!({"name": "renamed"}),
            "enableChannel" | "disableChannel" | "sendTestEvent" => json!({}),
            "rotateChannelSecret" => json!({"overlap": "0s"}),
            "resendChannel" => json!({"dry_run": true}),
            "createRule" => json!({"name": "r2", "event_type": "e2", "channels": [ch]}),
            "updateRule" => json!({"filter": null}),
            "resendEvent" => json!({}),
            "createPortalLink" => json!({"expires_in": "1h"}),
            "createEvent" => json!({"type": "e", "payload": {}}),
            "describeEventType" => json!({"description": "E happened."}),
            "deleteChannel" | "deleteRule" => Value::Null,
            other => panic!(
                "a new write route {other}: add it to this test (and it must leave one audit row)"
            ),
        };
        // The test event needs the channel enabled: enable runs after
        // disable in no fixed order, so enable it first when needed.
        if route.operation == "sendTestEvent"
            || route.operation == "resendChannel"
            || route.operation == "resendEvent"
        {
            ok(
                &call(
                    api,
                    "POST",
                    &format!("/v1/namespaces/a/channels/{ch}/enable"),
                    Some(&admin),
                    Some(&json!({})),
                ),
                200,
                "enable",
            );
        }
        let before = audit_rows(api, &admin, "a").len();
        let id = match route.path {
            p if p.contains("/rules/") => rule.clone(),
            p if p.contains("/events/") => event.clone(),
            _ => ch.clone(),
        };
        let path = route
            .path
            .replace("{ns}", "a")
            .replace("{id}", &id)
            .replace("{type}", "e");
        let body = (!body.is_null()).then_some(body);
        let answer = call(api, route.method, &path, Some(&admin), body.as_ref());
        assert!(
            (200..300).contains(&answer.status),
            "{} {path}: {} {}",
            route.method,
            answer.status,
            answer.text
        );
        let rows = audit_rows(api, &admin, "a");
        assert_eq!(rows.len(), before + 1, "{}: {rows:?}", route.operation);
        let newest = &rows[0];
        assert_eq!(newest["operation"], route.operation, "{newest}");
        assert_eq!(newest["actor"]["kind"], "token", "{newest}");
        assert_eq!(newest["actor"]["id"], admin_id, "{newest}");
        assert_eq!(newest["namespace"], "a", "{newest}");
        assert!(newest["object_id"].is_string(), "{newest}");
        if route.operation == "describeEventType" {
            assert_eq!(newest["object_kind"], "event_type", "{newest}");
            assert_eq!(newest["object_id"], "e", "{newest}");
        }
    }

    // The command line's changes too, with the OS user as the actor.
    let before = audit_rows(api, &admin, "a").len();
    let c3 = bin.create_channel("a", "c3", "http://127.0.0.1:9/", &[]);
    bin.ok(&["channel", "disable", &c3]);
    let rows = audit_rows(api, &admin, "a");
    assert_eq!(rows.len(), before + 2);
    assert_eq!(rows[0]["operation"], "disableChannel");
    assert_eq!(rows[1]["operation"], "createChannel");
    assert_eq!(rows[0]["actor"]["kind"], "cli");
    assert_eq!(rows[0]["object_id"], c3.as_str());
    let listed: Value =
        serde_json::from_str(&bin.ok(&["audit", "--namespace", "a", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), rows.len());
    // A namespace token sees its own trail only.
    let b = token(&bin, &["--namespace", "b"]);
    assert_eq!(
        call(api, "GET", "/v1/namespaces/a/audit", Some(&b), None).status,
        404
    );
    let b_rows = audit_rows(api, &b, "b");
    assert_eq!(b_rows.len(), 1, "{b_rows:?}");
    assert_eq!(
        b_rows[0]["operation"], "createToken",
        "its own token's creation"
    );
    // A failed change leaves no row.
    let bad = call(
        api,
        "POST",
        "/v1/namespaces/a/rules",
        Some(&admin),
        Some(
            &json!({"name": "r9", "event_type": "e", "channels": ["00000000-0000-0000-0000-000000000000"]}),
        ),
    );
    assert_eq!(bad.status, 422, "{}", bad.text);
    assert_eq!(audit_rows(api, &admin, "a").len(), rows.len());
    // Pruned after retention.keep_audit.
    db.client()
        .execute(
            "UPDATE notification.audit SET at = now() - interval '400 days' WHERE object_id = $1",
            &[&c3],
        )
        .unwrap();
    bin.ok(&["prune"]);
    assert_eq!(audit_rows(api, &admin, "a").len(), rows.len() - 2);
}

#[test]
fn portal_links_are_read_only_short_lived_and_bound_to_their_namespace() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (_d, api) = daemon_with_api("A", &db.url, "max_portal_ttl = \"2h\"\n");
    let admin = token(&bin, &["--admin"]);
    let ns_token = token(&bin, &["--namespace", "a"]);
    let portal = |token: &str, body: Value| {
        call_with(
            api,
            "POST",
            "/v1/namespaces/a/portal",
            Some(token),
            Some(&body.to_string()),
            &[("x-forwarded-host", "evil.example")],
        )
    };
    let made = ok(&portal(&admin, json!({})), 201, "portal");
    let url = made["url"].as_str().unwrap();
    let link = made["token"].as_str().unwrap();
    assert_eq!(
        url,
        format!("/console/#token={link}"),
        "relative without api.public_url"
    );
    // Read-only by default, in its namespace only.
    ok(
        &call(api, "GET", "/v1/namespaces/a/channels", Some(link), None),
        200,
        "read",
    );
    assert_eq!(
        call(
            api,
            "POST",
            "/v1/namespaces/a/channels",
            Some(link),
            Some(&json!({"name": "x", "url": "http://127.0.0.1:9/"}))
        )
        .status,
        403
    );
    assert_eq!(
        call(api, "GET", "/v1/namespaces/b/channels", Some(link), None).status,
        404
    );
    // A writing link when asked; longer than the maximum refused; only admins.
    let writer = ok(
        &portal(&admin, json!({"read_only": false, "expires_in": "30m"})),
        201,
        "writer",
    );
    ok(
        &call(
            api,
            "POST",
            "/v1/namespaces/a/channels",
            Some(writer["token"].as_str().unwrap()),
            Some(&json!({"name": "x", "url": "http://127.0.0.1:9/"})),
        ),
        201,
        "writer writes",
    );
    let too_long = portal(&admin, json!({"expires_in": "3h"}));
    assert_eq!(too_long.status, 422, "{}", too_long.text);
    assert!(
        too_long.text.contains("api.max_portal_ttl"),
        "{}",
        too_long.text
    );
    assert_eq!(portal(&ns_token, json!({})).status, 403);
    // It expires.
    let short = ok(&portal(&admin, json!({"expires_in": "1s"})), 201, "short");
    let short = short["token"].as_str().unwrap().to_string();
    wait_until(
        "the link to expire",
        Duration::from_secs(30),
        || call(api, "GET", "/v1/token", Some(&short), None).status == 401,
        String::new,
    );
    // With api.public_url, absolute (never from the request's Host).
    let (_d2, api2) = daemon_with_api(
        "B",
        &db.url,
        "public_url = \"https://hooks.example.com/\"\n",
    );
    let made = call_with(
        api2,
        "POST",
        "/v1/namespaces/a/portal",
        Some(&admin),
        Some("{}"),
        &[],
    );
    let made = ok(&made, 201, "portal");
    assert!(
        made["url"]
            .as_str()
            .unwrap()
            .starts_with("https://hooks.example.com/console/#token=nrt_"),
        "{made}"
    );
}

#[test]
fn a_burst_over_the_token_rate_gets_429_while_another_token_is_served() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (_d, api) = daemon_with_api("A", &db.url, "token_rate_limit = \"3/m\"\n");
    let a = token(&bin, &["--namespace", "a"]);
    let b = token(&bin, &["--namespace", "a"]);
    let mut refused = None;
    for _ in 0..6 {
        let answer = call(api, "GET", "/v1/namespaces/a/channels", Some(&a), None);
        match answer.status {
            200 => {}
            429 => {
                refused = Some(answer);
                break;
            }
            other => panic!("{other}: {}", answer.text),
        }
    }
    let refused = refused.expect("a burst over 3/m was never refused");
    assert_eq!(refused.code(), "rate_limited");
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    has_security_headers(&refused, "429");
    // Another token is served meanwhile.
    ok(
        &call(api, "GET", "/v1/namespaces/a/channels", Some(&b), None),
        200,
        "b",
    );
}

#[test]
fn a_flood_of_made_up_tokens_cannot_slow_a_real_one() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (_d, api) = daemon_with_api("A", &db.url, "token_rate_limit = \"10000/s\"\n");
    let real = token(&bin, &["--namespace", "a"]);
    let stop = AtomicBool::new(false);
    let flooded = AtomicUsize::new(0);
    let server_errors = AtomicUsize::new(0);
    let mut latencies = Vec::new();
    std::thread::scope(|s| {
        for _ in 0..40 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let bytes: [u8; 32] = rand::random();
                    let made_up = format!(
                        "nrt_{}",
                        base64::Engine::encode(
                            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                            bytes
                        )
                    );
                    let a = call(
                        api,
                        "GET",
                        "/v1/namespaces/a/channels",
                        Some(&made_up),
                        None,
                    );
                    if a.status >= 500 {
                        server_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    assert_eq!(a.status, 401, "{}", a.text);
                    flooded.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // The flood is under way before the real token is measured.
        while flooded.load(Ordering::Relaxed) < 200 {
            std::thread::sleep(Duration::from_millis(10));
        }
        for _ in 0..300 {
            let started = Instant::now();
            let a = call(api, "GET", "/v1/namespaces/a/channels", Some(&real), None);
            latencies.push(started.elapsed());
            assert_eq!(a.status, 200, "{}", a.text);
        }
        stop.store(true, Ordering::Relaxed);
    });
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    eprintln!(
        "real token under a flood of {} made-up requests: p50 {:?}, p99 {p99:?}, max {:?}",
        flooded.load(Ordering::Relaxed),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert_eq!(
        server_errors.load(Ordering::Relaxed),
        0,
        "5xx under the flood"
    );
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?}");
}

#[test]
fn every_cli_change_leaves_exactly_one_audit_row_naming_the_os_user() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url).env("USER", "alice");
    let trail = || -> Vec<Value> {
        serde_json::from_str::<Value>(&bin.ok(&["audit", "--namespace", "a", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let ch = bin.create_channel("a", "c", "http://127.0.0.1:9/", &[]);
    let rule = bin.create_rule("a", "r", "e", &[&ch], None);
    let event = bin
        .ok(&[
            "event",
            "emit",
            "--namespace",
            "a",
            "--type",
            "e",
            "--data",
            "{}",
        ])
        .trim()
        .to_string();
    db.client()
        .execute(
            "UPDATE notification.delivery_status SET state = 'FAILED'",
            &[],
        )
        .unwrap();
    let token = bin.ok(&["token", "create", "--name", "t", "--namespace", "a"]);
    let token_id = bin
        .ok(&["token", "list", "--json"])
        .parse::<Value>()
        .unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(token.starts_with("nrt_"));
    let steps: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["channel", "update", &ch, "--name", "c2"],
            "updateChannel",
        ),
        (vec!["channel", "disable", &ch], "disableChannel"),
        (vec!["channel", "enable", &ch], "enableChannel"),
        (
            vec!["channel", "rotate-secret", &ch, "--overlap", "0s"],
            "rotateChannelSecret",
        ),
        (vec!["resend", &event], "resendEvent"),
        (vec!["resend", "--channel", &ch], "resendChannel"),
        (vec!["rule", "update", &rule, "--no-filter"], "updateRule"),
        (
            vec![
                "event-type",
                "describe",
                "--namespace",
                "a",
                "e",
                "--description",
                "E happened.",
            ],
            "describeEventType",
        ),
        (vec!["rule", "delete", &rule], "deleteRule"),
        (vec!["channel", "delete", &ch], "deleteChannel"),
        (vec!["token", "revoke", &token_id], "revokeToken"),
    ];
    let ops: Vec<String> = trail()
        .iter()
        .map(|r| r["operation"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ops,
        ["createToken", "createEvent", "createRule", "createChannel"],
        "every change, event emit included"
    );
    let emitted = trail()
        .into_iter()
        .find(|r| r["operation"] == "createEvent")
        .unwrap();
    assert_eq!(emitted["object_id"], event.as_str(), "{emitted}");
    assert_eq!(emitted["object_kind"], "event", "{emitted}");
    for (args, operation) in steps {
        let before = trail().len();
        bin.ok(&args);
        let rows = trail();
        assert_eq!(rows.len(), before + 1, "{args:?}: {rows:?}");
        assert_eq!(rows[0]["operation"], operation, "{args:?}");
        assert_eq!(
            rows[0]["actor"],
            json!({"kind": "cli", "user": "alice"}),
            "{args:?}"
        );
    }
    // The text form names the actor and the operation.
    let text = bin.ok(&["audit", "--namespace", "a"]);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("cli alice  revokeToken  token"),
        "{text}"
    );
}
