//! The web console in a real browser: Debian's Chromium driven by Python
//! Playwright (`tests/console/scenarios.py`), against the real daemon
//! serving the API and the console on 127.0.0.1, the real PostgreSQL and a
//! scripted receiver. Each test seeds its database through the real CLI,
//! runs one browser scenario and checks the outcome through the CLI, the
//! database and the receiver.
//!
//! Chromium, Playwright and axe-core (the `axe-playwright-python` package,
//! for the accessibility checks) are test-only tools that `.ci/run` installs
//! (`NR_CONSOLE_PYTHON` names the Python that has Playwright,
//! `NR_CHROMIUM` the browser). When they are missing the tests print a
//! loud SKIPPED line and pass, unless `NR_CONSOLE_REQUIRED=1` (set by
//! `.ci/run` once it installed them), which makes a missing tool a failure.
//! The scenario that opens an event also takes the README's screenshot.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use support::api::daemon_with_api;
use support::bin::{allow_loopback, Bin, BIN};
use support::daemon::{config_toml, tail, wait_until, Daemon};
use support::net::http_get;
use support::{migrated_db, Receiver, Reply, Script, TestDb};

const LONG: Duration = Duration::from_secs(60);
const ACME: &str = "acme";
const GLOBEX: &str = "globex";

/// One browser at a time: the machine is small, and each scenario starts
/// its own Chromium.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// What drives the browser.
struct Tools {
    python: PathBuf,
    chromium: PathBuf,
}

/// The Python with Playwright and the Chromium binary, or why not.
fn find_tools() -> Result<Tools, String> {
    let chromium = match std::env::var_os("NR_CHROMIUM") {
        Some(path) => PathBuf::from(path),
        None => ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or("no Chromium at /usr/bin/chromium (apt-get install chromium)")?,
    };
    if !chromium.exists() {
        return Err(format!("NR_CHROMIUM={} does not exist", chromium.display()));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-venv/bin/python");
    let python = match std::env::var_os("NR_CONSOLE_PYTHON") {
        Some(path) => PathBuf::from(path),
        None if venv.exists() => venv,
        None => PathBuf::from("python3"),
    };
    let probe = Command::new(&python)
        .args(["-c", "import playwright.sync_api, axe_playwright_python"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !probe.status.success() {
        return Err(format!(
            "{} cannot import playwright and axe_playwright_python (pip install playwright axe-playwright-python; .ci/run makes target/console-venv)",
            python.display()
        ));
    }
    Ok(Tools { python, chromium })
}

/// The tools and the browser lock, or None after a loud SKIPPED line
/// (written to the real stderr, past the test harness's capture).
fn browser() -> Option<(Tools, MutexGuard<'static, ()>)> {
    let why = match find_tools() {
        Ok(tools) => {
            let guard = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
            return Some((tools, guard));
        }
        Err(why) => why,
    };
    if std::env::var("NR_CONSOLE_REQUIRED").as_deref() == Ok("1") {
        panic!("the console browser tests are required (NR_CONSOLE_REQUIRED=1), but {why}");
    }
    let bar = "!".repeat(78);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\n!!! CONSOLE BROWSER TESTS SKIPPED: {why}\n{bar}"
    );
    None
}

/// The daemon serving the API and the console, its database, and the CLI
/// configured for the same database.
struct Site {
    base: String,
    cli: Bin,
    daemon: Daemon,
    db: TestDb,
}

impl Site {
    fn start() -> Site {
        let db = migrated_db();
        let (daemon, addr) = daemon_with_api("console", &db.url, "");
        let cli = Bin::with_config(&allow_loopback(&config_toml(&db.url, 4, "1s", "", "")));
        wait_until(
            "the console to be served",
            LONG,
            || matches!(http_get(addr, "/console/"), Some((200, _))),
            || tail(&daemon.stderr(), 30),
        );
        Site {
            base: format!("http://{addr}"),
            cli,
            daemon,
            db,
        }
    }

    /// Runs the CLI, expects exit 0, returns stdout trimmed.
    fn cli(&self, args: &[&str]) -> String {
        self.cli.ok(args).trim().to_owned()
    }

    /// `channel create`; returns the id.
    fn channel(&self, ns: &str, name: &str, url: &str, headers: &[&str]) -> String {
        self.cli.create_channel(ns, name, url, headers)
    }

    /// `rule create` for `event_type` to `channels`; returns its id.
    fn rule(&self, ns: &str, event_type: &str, channels: &[&str]) -> String {
        self.cli
            .create_rule(ns, event_type, event_type, channels, None)
    }

    /// `rule list --namespace NS --json`.
    fn rules(&self, ns: &str) -> Vec<Value> {
        let list: Value =
            serde_json::from_str(&self.cli(&["rule", "list", "--namespace", ns, "--json"]))
                .expect("rule list --json is JSON");
        list.as_array().cloned().expect("rule list is an array")
    }

    /// `event emit`; returns the event ids.
    fn emit(&self, ns: &str, event_type: &str, payload: &Value) -> Vec<String> {
        let data = payload.to_string();
        self.cli(&[
            "event",
            "emit",
            "--namespace",
            ns,
            "--type",
            event_type,
            "--data",
            &data,
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// `token create --name NAME` + `scope`; returns the token.
    fn token(&self, name: &str, scope: &[&str]) -> String {
        let mut args = vec!["token", "create", "--name", name];
        args.extend_from_slice(scope);
        self.cli(&args)
    }

    /// The id of the token named `name`, from `token list --json`.
    fn token_id(&self, name: &str) -> String {
        let list: Value = serde_json::from_str(&self.cli(&["token", "list", "--json"]))
            .expect("token list --json is JSON");
        list.as_array()
            .and_then(|a| a.iter().find(|t| t["name"] == name))
            .and_then(|t| t["id"].as_str())
            .unwrap_or_else(|| panic!("no token {name:?} in {list}"))
            .to_owned()
    }

    /// `channel list --namespace NS --json [--show-secrets]`.
    fn channels(&self, ns: &str, secrets: bool) -> Vec<Value> {
        let mut args = vec!["channel", "list", "--namespace", ns, "--json"];
        if secrets {
            args.push("--show-secrets");
        }
        let list: Value =
            serde_json::from_str(&self.cli(&args)).expect("channel list --json is JSON");
        list.as_array().cloned().expect("channel list is an array")
    }

    /// The state and attempt count of the delivery of `event` to `channel`.
    fn delivery(&self, event: &str, channel: &str) -> (String, i32) {
        let row = self
            .db
            .client()
            .query_one(
                "SELECT state, attempt_count FROM notification.delivery_status
                 WHERE event_id = $1::text::uuid AND channel_id = $2::text::uuid",
                &[&event, &channel],
            )
            .expect("the delivery's status");
        (row.get(0), row.get(1))
    }

    /// Waits until the delivery of `event` to `channel` is in `state`.
    fn wait_state(&self, event: &str, channel: &str, state: &str) {
        wait_until(
            &format!("delivery of {event} in {state}"),
            LONG,
            || self.delivery(event, channel).0 == state,
            || {
                format!(
                    "now {:?}\n{}",
                    self.delivery(event, channel),
                    tail(&self.daemon.stderr(), 30)
                )
            },
        );
    }

    /// Runs browser scenario `name` with `params` (plus the base URL);
    /// returns what it reported. Fails the test with the scenario's message.
    fn scenario(&self, tools: &Tools, name: &str, mut params: Value) -> Value {
        params["base"] = json!(self.base);
        let dir = tempfile::Builder::new()
            .prefix("nr-console-")
            .tempdir()
            .expect("temp dir");
        let (input, output) = (dir.path().join("params.json"), dir.path().join("out.json"));
        std::fs::write(&input, params.to_string()).expect("write params");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/scenarios.py");
        let run = Command::new(&tools.python)
            .arg(&script)
            .arg(name)
            .arg(&input)
            .arg(&output)
            .env("NR_CHROMIUM", &tools.chromium)
            .output()
            .expect("run the browser scenario");
        assert!(
            run.status.success(),
            "browser scenario {name} failed ({}):\n{}{}\n--- daemon log ---\n{}",
            run.status,
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr),
            tail(&self.daemon.stderr(), 30)
        );
        let text = std::fs::read_to_string(&output).expect("the scenario's results");
        serde_json::from_str(&text).expect("the scenario's results are JSON")
    }
}

#[test]
fn a_namespace_token_lists_only_its_namespace() {
    let Some((tools, _browser)) = browser() else {
        return;
    };
    let site = Site::start();
    let receiver = Receiver::start(Script::status(200));
    let url = receiver.url();
    let billing = site.channel(ACME, "Acme billing", &url, &[]);
    let crm = site.channel(ACME, "Acme CRM", &url, &[]);
    let ledger = site.channel(GLOBEX, "Globex ledger", &url, &[]);
    site.rule(ACME, "invoice.paid", &[&billing, &crm]);
    site.rule(GLOBEX, "invoice.paid", &[&ledger]);
    let mut own = site.emit(ACME, "invoice.paid", &json!({"invoice": "in_1"}));
    own.extend(site.emit(ACME, "invoice.paid", &json!({"invoice": "in_2"})));
    let other = site.emit(GLOBEX, "invoice.paid", &json!({"invoice": "gx_1"}));
    let token = site.token("acme-portal", &["--namespace", ACME]);
    let admin = site.token("ops", &["--admin"]);

    site.scenario(
        &tools,
        "namespace_isolation",
        json!({
            "token": token,
            "admin_token": admin,
            "namespace": ACME,
            "other_namespace": GLOBEX,
            "own_channels": ["Acme billing", "Acme CRM"],
            "other_channels": ["Globex ledger"],
            "own_events": own,
            "other_events": other,
        }),
    );
}

#[test]
fn an_event_answered_500_then_200_shows_both_attempts_and_resend_reaches_success() {
    let Some((tools, _browser)) = browser() else {
        return;
    };
    let site = Site::start();
    // Per event: 500, then 200; a third attempt (the resend) answers 200
    // after 3 s, so the page can be seen in RESENDING first.
    let receiver = Receiver::start(Script::new(|rq| match rq.attempt {
        1 => Reply::status(500).body(r#"{"error": "database is down"}"#),
        2 => Reply::status(200).body(r#"{"received": true}"#),
        _ => Reply::status(200)
            .body(r#"{"received": true}"#)
            .after(Duration::from_secs(3)),
    }));
    let channel = site.channel(
        ACME,
        "Invoices (production)",
        &receiver.url(),
        &["X-Team: billing"],
    );
    let rule = site.rule(ACME, "invoice.paid", &[&channel]);
    let payload = json!({
        "invoice": "in_1042",
        "amount": 4200,
        "currency": "EUR",
        "customer": {"id": "cus_93", "email": "billing@example.com"},
        "lines": [{"sku": "plan-pro", "quantity": 1}]
    });
    let event = site.emit(ACME, "invoice.paid", &payload).remove(0);
    site.wait_state(&event, &channel, "SUCCESS");
    assert_eq!(site.delivery(&event, &channel).1, 2, "500 then 200");
    let token = site.token("acme-support", &["--namespace", ACME]);
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");

    let out = site.scenario(
        &tools,
        "event_detail",
        json!({
            "token": token,
            "event_id": event,
            "channel_id": channel,
            "channel_name": "Invoices (production)",
            "rule_id": rule,
            "screenshot": shot,
        }),
    );
    assert_eq!(out["saw_resending"], true);
    assert_eq!(site.delivery(&event, &channel), ("SUCCESS".to_owned(), 3));
    let seen = receiver.ids().iter().filter(|id| **id == event).count();
    assert_eq!(seen, 3, "the receiver got the event three times");
    keep_screenshot(&shot);
}

/// Copies the screenshot to docs/console.png when that is missing or
/// `NR_CONSOLE_SCREENSHOT=update` (so an ordinary test run does not
/// rewrite a committed file with new timestamps).
fn keep_screenshot(shot: &Path) {
    keep_screenshot_as(shot, "console.png");
}

/// Copies the screenshot to docs/`name`, as [`keep_screenshot`] does.
fn keep_screenshot_as(shot: &Path, name: &str) {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    if !docs.exists() || std::env::var("NR_CONSOLE_SCREENSHOT").as_deref() == Ok("update") {
        std::fs::copy(shot, &docs).expect("copy the screenshot to docs/console.png");
    }
}

#[test]
fn the_event_log_pages_with_the_cursor_and_filters() {
    let Some((tools, _browser)) = browser() else {
        return;
    };
    let site = Site::start();
    let ok = Receiver::start(Script::status(200));
    let failing = Receiver::start(Script::status(500));
    let paid_to = site.channel(ACME, "Receives paid", &ok.url(), &[]);
    let failed_to = site.channel(ACME, "Always 500", &failing.url(), &[]);
    site.rule(ACME, "invoice.paid", &[&paid_to]);
    site.rule(ACME, "invoice.failed", &[&failed_to]);
    let mut emitted = Vec::new();
    for i in 0..5 {
        let (kind, channel) = if i % 2 == 0 {
            ("invoice.paid", &paid_to)
        } else {
            ("invoice.failed", &failed_to)
        };
        let event = site.emit(ACME, kind, &json!({ "n": i })).remove(0);
        emitted.push((event, kind, channel.clone()));
    }
    for (event, kind, channel) in &emitted {
        let state = if *kind == "invoice.paid" {
            "SUCCESS"
        } else {
            "FAILED"
        };
        site.wait_state(event, channel, state);
    }
    let ids = |kind: &str| -> Vec<&String> {
        emitted
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|(e, _, _)| e)
            .collect()
    };
    let newest_first: Vec<&String> = emitted.iter().rev().map(|(e, _, _)| e).collect();
    let token = site.token("acme-log", &["--namespace", ACME]);

    site.scenario(
        &tools,
        "event_log",
        json!({
            "token": token,
            "newest_first": newest_first,
            "paid": ids("invoice.paid"),
            "failed": ids("invoice.failed"),
            "failing_channel": failed_to,
        }),
    );
}

#[test]
fn a_channel_created_and_edited_in_the_console_is_what_channel_list_shows() {
    let Some((tools, _browser)) = browser() else {
        return;
    };
    let site = Site::start();
    let receiver = Receiver::start(Script::status(200));
    let token = site.token("acme-admin", &["--namespace", ACME]);
    let new_url = format!("{}?v=2", receiver.url());

    let out = site.scenario(
        &tools,
        "create_and_edit",
        json!({
            "token": token,
            "name": "Made in the console",
            "url": receiver.url(),
            "new_name": "Edited in the console",
            "new_url": new_url,
        }),
    );
    let id = out["channel_id"].as_str().expect("the new channel's id");
    let listed = site.channels(ACME, true);
    let channel = listed
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("channel {id} not in channel list: {listed:?}"));
    assert_eq!(channel["name"], "Edited in the console");
    assert_eq!(channel["url"], new_url.as_str());
    assert_eq!(
        channel["headers"],
        json!({"X-Team": "payments", "X-Env": "test"})
    );
    assert_eq!(channel["disabled"], true);
    assert_eq!(listed.len(), 1, "one channel: {listed:?}");
    assert_ne!(out["secret_before"], out["secret_after"], "rotated");
    assert_eq!(channel["signing_secret"], out["secret_after"]);

    let test_event = out["test_event_id"].as_str().expect("the test event id");
    let got = receiver
        .requests()
        .into_iter()
        .find(|rq| rq.webhook_id() == Some(test_event))
        .unwrap_or_else(|| panic!("the receiver never got test event {test_event}"));
    assert_eq!(got.json()["type"], "webhook.test");
    assert!(
        got.path.ends_with("?v=2"),
        "sent to the edited URL: {}",
        got.path
    );
}

#[test]
fn names_payloads_headers_and_bodies_with_html_render_as_text() {
    let Some((tools, _browser)) = browser() else {
        return;
    };
    let site = Site::start();
    let body =
        r#"<img src=x onerror="window.__pwned='body'"><script>window.__pwned='body'</script>"#;
    let receiver = Receiver::start(Script::new(move |_| Reply::status(200).body(body)));
    let name =
        r#"<img src=x onerror=alert(document.domain)><script>window.__pwned='name'</script>"#;
    let header = r#"<img src=x onerror=alert('header')>"#;
    let channel = site.channel(ACME, name, &receiver.url(), &[&format!("X-Note: {header}")]);
    let rule_name = r#"<img src=x onerror="window.__pwned='rule'"><b>rule</b>"#;
    let event_type = r#"<img src=x onerror="window.__pwned='type'">.paid"#;
    let description =
        r#"<script>window.__pwned='description'</script><img src=x onerror=alert(1)>"#;
    let rule = site
        .cli
        .create_rule(ACME, rule_name, event_type, &[&channel], None);
    site.cli(&[
        "event-type",
        "describe",
        "--namespace",
        ACME,
        event_type,
        "--description",
        description,
    ]);
    let payload = json!({
        "note": "<img src=x onerror=\"window.__pwned='payload'\">",
        "html": "<script>window.__pwned='payload'</script>",
        "nested": {"<b>key</b>": "</pre><img src=x onerror=alert('nested')>"}
    });
    let event = site.emit(ACME, event_type, &payload).remove(0);
    site.wait_state(&event, &channel, "SUCCESS");
    let token = site.token("acme-xss", &["--namespace", ACME]);

    site.scenario(
        &tools,
        "hostile_text",
        json!({
            "token": token,
            "channel_id": channel,
            "channel_name": name,
            "header_value": header,
            "event_id": event,
            "payload": payload,
            "response_body": body,
            "rule_id": rule,
            "rule_name": rule_name,
            "event_type": event_type,
            "description": description,
        }),
    );
}

#[test]
fn a_read_only_customer_link_shows_no_write_button() {
    let Some((tools, _browser)) = browser() else {
        return;
    };
    let site = Site::start();
    let receiver = Receiver::start(Script::status(200));
    let channel = site.channel(
        ACME,
        "Customer endpoint",
        &receiver.url(),
        &["X-Api-Key: endpoint-credential-7"],
    );
    let filter = "$.amount > 1000";
    let rule = site.cli.create_rule(
        ACME,
        "Big paid invoices",
        "invoice.paid",
        &[&channel],
        Some(filter),
    );
    let description = "An invoice was paid.";
    site.cli(&[
        "event-type",
        "describe",
        "--namespace",
        ACME,
        "invoice.paid",
        "--description",
        description,
    ]);
    let event = site
        .emit(
            ACME,
            "invoice.paid",
            &json!({"invoice": "in_7", "amount": 4200}),
        )
        .remove(0);
    site.wait_state(&event, &channel, "SUCCESS");
    let token = site.token(
        "customer-link",
        &["--namespace", ACME, "--read-only", "--expires", "1h"],
    );

    site.scenario(
        &tools,
        "read_only",
        json!({
            "token": token,
            "channel_id": channel,
            "channel_name": "Customer endpoint",
            "event_id": event,
            "header_value": "endpoint-credential-7",
            "rule_id": rule,
            // As PostgreSQL prints the jsonpath back.
            "filter": site.rules(ACME)[0]["filter"],
            "event_type": "invoice.paid",
            "description": description,
        }),
    );
    assert_eq!(site.rules(ACME).len(), 1, "nothing changed");
    let (state, attempts) = site.delivery(&event, &channel);
    assert_eq!(
        (state.as_str(), attempts),
        ("SUCCESS", 1),
        "nothing changed"
    );
    assert_eq!(site.channels(ACME, false)[0]["disabled"], false);
}

#[test]
fn a_token_link_asks_before_it_replaces_a_session() {
    let Some((tools, _browser)) = browser() else {
        return;
    };
    let site = Site::start();
    let token = site.token("signed-in-operator", &["--namespace", ACME]);
    let link = site.token(
        "someone-elses-link",
        &["--namespace", ACME, "--read-only", "--expires", "1h"],
    );
    site.scenario(
        &tools,
        "link_asks_before_replacing",
        json!({
            "token": token,
            "name": "signed-in-operator",
            "link_token": link,
            "link_name": "someone-elses-link",
        }),
    );
}

#[test]
fn recover_counts_with_a_dry_run_then_resends() {
    let Some((tools, _browser)) = browser() else {
        return;
    };
    let site = Site::start();
    let receiver = Receiver::start(Script::status(500));
    let channel = site.channel(ACME, "Flaky endpoint", &receiver.url(), &[]);
    site.rule(ACME, "invoice.paid", &[&channel]);
    let events: Vec<String> = (0..3)
        .map(|i| {
            site.emit(ACME, "invoice.paid", &json!({ "invoice": i }))
                .remove(0)
        })
        .collect();
    for event in &events {
        site.wait_state(event, &channel, "FAILED");
    }
    receiver.set_script(Script::status(200));
    let token = site.token("acme-ops", &["--namespace", ACME]);

    site.scenario(
        &tools,
        "recover",
        json!({"token": token, "channel_id": channel, "expected": 3}),
    );
    for event in &events {
        site.wait_state(event, &channel, "SUCCESS");
    }
}

#[test]
fn a_revoked_token_returns_to_the_sign_in_page() {
    let Some((tools, _browser)) = browser() else {
        return;
    };
    let site = Site::start();
    let token = site.token("to-revoke", &["--namespace", ACME]);
    let id = site.token_id("to-revoke");
    let config = site.cli.dir().join("config.toml");
    let revoke = json!([BIN, "--config", config, "token", "revoke", id]);

    site.scenario(&tools, "revoked", json!({"token": token, "revoke": revoke}));
}

#[test]
fn a_namespace_token_subscribes_a_new_channel_to_a_listed_event_type_and_the_event_reaches_it() {
    let Some((tools, _browser)) = browser() else {
        return;
    };
    let site = Site::start();
    let old = Receiver::start(Script::status(200));
    let new = Receiver::start(Script::status(200));
    let billing = site.channel(ACME, "Billing", &old.url(), &[]);
    site.rule(ACME, "invoice.paid", &[&billing]);
    let first = site
        .emit(ACME, "invoice.paid", &json!({"invoice": "in_1"}))
        .remove(0);
    site.wait_state(&first, &billing, "SUCCESS");
    let description = "An invoice was paid in full; data.invoice is its id.";
    site.cli(&[
        "event-type",
        "describe",
        "--namespace",
        ACME,
        "invoice.paid",
        "--description",
        description,
    ]);
    let token = site.token("acme-portal", &["--namespace", ACME]);
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-subscriptions.png");
    let phone = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-subscriptions-phone.png");

    let out = site.scenario(
        &tools,
        "subscribe_from_event_types",
        json!({
            "token": token,
            "namespace": ACME,
            "channel_name": "New endpoint",
            "url": new.url(),
            "event_type": "invoice.paid",
            "description": description,
            "seen": 1,
            "rule_name": "Paid invoices to the new endpoint",
            "screenshot": shot,
            "screenshot_phone": phone,
        }),
    );
    let channel = out["channel_id"].as_str().expect("the new channel's id");
    let event = out["delivered_event"]
        .as_str()
        .expect("the delivered event");
    assert!(
        new.ids().iter().any(|id| id == event),
        "the new endpoint never got {event}"
    );
    assert_eq!(site.delivery(event, channel).0, "SUCCESS");
    let rules = site.rules(ACME);
    let rule = rules
        .iter()
        .find(|r| r["id"] == out["rule_id"])
        .unwrap_or_else(|| panic!("the new rule is not in rule list: {rules:?}"));
    assert_eq!(rule["event_type"], "invoice.paid");
    assert_eq!(rule["channels"], json!([channel]));
    let listed = site.channels(ACME, false);
    let made = listed
        .iter()
        .find(|c| c["id"] == channel)
        .expect("the new channel is listed");
    assert_eq!(made["rate_limit"], "2/m");
    assert_eq!(made["ordered"], true);
    keep_screenshot_as(&shot, "console-subscriptions.png");
    keep_screenshot_as(&phone, "console-subscriptions-phone.png");
}

#[test]
fn a_bad_filter_shows_postgresqls_message_and_saves_nothing() {
    let Some((tools, _browser)) = browser() else {
        return;
    };
    let site = Site::start();
    let receiver = Receiver::start(Script::status(200));
    let channel = site.channel(ACME, "Ledger", &receiver.url(), &[]);
    let rule = site.rule(ACME, "invoice.paid", &[&channel]);
    let token = site.token("acme-filters", &["--namespace", ACME]);
    let before = site.rules(ACME);

    let out = site.scenario(
        &tools,
        "bad_filter",
        json!({
            "token": token,
            "channel_name": "Ledger",
            "rule_id": rule,
            "filter": "$.amount >",
        }),
    );
    for key in ["create_error", "edit_error"] {
        let text = out[key].as_str().expect("the error shown");
        // PostgreSQL's own words about the jsonpath.
        assert!(
            text.contains("is not a jsonpath predicate") && text.contains("syntax error"),
            "{key}: {text}"
        );
    }
    assert_eq!(site.rules(ACME), before, "nothing saved");
}
