//! The command line through the real binary and a real PostgreSQL: every
//! command of docs/cli.md except `run`, `once` and `sink` round-trips through
//! the database; `--json` output parses; exit codes are 0 ok, 1 runtime
//! failure (database unreachable), 2 usage error, each failure with one line
//! on stderr. Each test writes its own config file into a temp dir and passes
//! its database through `DATABASE_URL` (which overrides the file's URL).

mod support;

use base64::Engine as _;
use serde_json::Value;
use support::bin::Bin;
use support::net::free_port;
use support::{migrated_db, TestDb};
use uuid::Uuid;

/// The binary with a config whose own URL points nowhere (only
/// `DATABASE_URL` can make the commands work, which proves the override),
/// plus the round trips several tests share.
struct Nr(Bin);

impl std::ops::Deref for Nr {
    type Target = Bin;

    fn deref(&self) -> &Bin {
        &self.0
    }
}

impl Nr {
    /// `DATABASE_URL` set to `url`.
    fn new(url: &str) -> Nr {
        Nr(Bin::for_database(url))
    }

    fn for_db(db: &TestDb) -> Nr {
        Nr::new(&db.url)
    }

    /// Runs `args` and parses stdout as one JSON document.
    fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON document ({e}):\n{stdout}"))
    }

    /// Creates a channel and returns its id.
    fn channel(&self, ns: &str, name: &str) -> Uuid {
        let out = self.ok(&[
            "channel",
            "create",
            "--namespace",
            ns,
            "--name",
            name,
            "--url",
            "http://127.0.0.1:9/hook",
        ]);
        parse_id(&out)
    }

    /// Creates a rule for `event_type` on `channels` and returns its id.
    fn rule(&self, ns: &str, event_type: &str, channels: &[Uuid]) -> Uuid {
        let ids: Vec<String> = channels.iter().map(Uuid::to_string).collect();
        let mut args = vec![
            "rule",
            "create",
            "--namespace",
            ns,
            "--name",
            "r",
            "--event-type",
            event_type,
        ];
        for id in &ids {
            args.extend(["--channel", id.as_str()]);
        }
        parse_id(&self.ok(&args))
    }

    /// Emits an event; returns the printed ids.
    fn emit(&self, ns: &str, event_type: &str, data: &str) -> Vec<Uuid> {
        let out = self.ok(&[
            "event",
            "emit",
            "--namespace",
            ns,
            "--type",
            event_type,
            "--data",
            data,
        ]);
        out.lines().map(parse_id).collect()
    }
}

/// `text` is exactly one UUID (plus the newline).
fn parse_id(text: &str) -> Uuid {
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    Uuid::parse_str(trimmed).unwrap_or_else(|e| panic!("not an id alone ({e}): {text:?}"))
}

/// The channel id of one line `resend` printed, which must say what was
/// resent: `resent event E to channel C (NAME): was STATE, now RESENDING …`.
fn resent_channel(line: &str, event: Uuid) -> Uuid {
    let rest = line
        .strip_prefix(&format!("resent event {event} to channel "))
        .unwrap_or_else(|| panic!("resend printed no sentence naming the event: {line:?}"));
    assert!(line.contains("now RESENDING"), "{line}");
    let id = rest.split_whitespace().next().unwrap_or_default();
    Uuid::parse_str(id).unwrap_or_else(|e| panic!("no channel id ({e}): {line:?}"))
}

/// A URL of a port nothing listens on.
fn closed_port_url() -> String {
    format!("postgres://postgres@127.0.0.1:{}/postgres", free_port())
}

#[test]
fn migrate_is_idempotent_and_status_reports_an_empty_database() {
    let db = support::fresh_db();
    let nr = Nr::for_db(&db);
    let first = nr.ok(&["migrate"]);
    assert!(first.contains("applied migration"), "{first}");
    let again = nr.ok(&["migrate"]);
    assert!(again.contains("up to date"), "{again}");

    let status = nr.json(&["status", "--json"]);
    for state in ["PENDING", "SENDING", "RESENDING", "SUCCESS", "FAILED"] {
        assert_eq!(status["by_state"][state], 0, "{state}: {status}");
    }
    assert_eq!(status["due_now"], 0, "{status}");
    assert!(status["lock_holder"].is_null(), "{status}");
    assert_eq!(
        status["lock_key"],
        "notification.event_handler.reconcile_lock"
    );
    let text = nr.ok(&["status"]);
    assert!(text.contains("lock:      free"), "{text}");
}

#[test]
fn check_config_runs_without_a_database() {
    let nr = Nr::new(&closed_port_url());
    let out = nr.ok(&["check-config"]);
    assert!(out.contains("[reconciler]"), "{out}");
}

#[test]
fn channel_create_prints_the_id_alone_and_stores_what_was_given() {
    let db = migrated_db();
    let nr = Nr::for_db(&db);
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    );
    let out = nr.ok(&[
        "channel",
        "create",
        "--namespace",
        "acme",
        "--name",
        "billing",
        "--url",
        "https://example.com/hook",
        "--secret",
        &secret,
        "--header",
        "X-Team: billing",
        "--header",
        "X-Env:prod",
        "--disabled",
    ]);
    let id = parse_id(&out);
    let row = db
        .client()
        .query_one(
            "SELECT namespace, name, url, signing_secret, headers, disabled, type
             FROM notification.channel WHERE id = $1",
            &[&id],
        )
        .expect("channel row");
    assert_eq!(row.get::<_, String>(0), "acme");
    assert_eq!(row.get::<_, String>(1), "billing");
    assert_eq!(row.get::<_, String>(2), "https://example.com/hook");
    assert_eq!(row.get::<_, String>(3), secret);
    assert_eq!(
        row.get::<_, Value>(4),
        serde_json::json!({"X-Team": "billing", "X-Env": "prod"})
    );
    assert!(row.get::<_, bool>(5));
    assert_eq!(row.get::<_, String>(6), "webhook");
}

#[test]
fn channel_create_without_secret_generates_a_random_whsec_secret() {
    let db = migrated_db();
    let nr = Nr::for_db(&db);
    let a = nr.channel("acme", "a");
    let b = nr.channel("acme", "b");
    let mut client = db.client();
    let secret_of = |client: &mut postgres::Client, id: Uuid| -> String {
        client
            .query_one(
                "SELECT signing_secret FROM notification.channel WHERE id = $1",
                &[&id],
            )
            .expect("channel row")
            .get(0)
    };
    let (sa, sb) = (secret_of(&mut client, a), secret_of(&mut client, b));
    for s in [&sa, &sb] {
        let key = s.strip_prefix("whsec_").unwrap_or_else(|| panic!("{s}"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(bytes.len() >= 24, "{s}: only {} bytes", bytes.len());
    }
    assert_ne!(sa, sb, "two generated secrets are equal");
}

#[test]
fn channel_list_hides_secrets_unless_asked() {
    let db = migrated_db();
    let nr = Nr::for_db(&db);
    let a = nr.channel("acme", "a");
    let other = nr.channel("globex", "g");
    let secret: String = db
        .client()
        .query_one(
            "SELECT signing_secret FROM notification.channel WHERE id = $1",
            &[&a],
        )
        .expect("row")
        .get(0);

    let text = nr.ok(&["channel", "list"]);
    assert!(text.contains(&a.to_string()) && text.contains(&other.to_string()));
    assert!(!text.contains(&secret), "plain list shows a secret: {text}");

    let list = nr.json(&["channel", "list", "--json"]);
    let list = list.as_array().expect("a JSON array");
    assert_eq!(list.len(), 2);
    assert!(!serde_json::to_string(list).unwrap().contains("whsec_"));
    assert!(list.iter().all(|c| c.get("signing_secret").is_none()));

    let acme = nr.json(&[
        "channel",
        "list",
        "--namespace",
        "acme",
        "--json",
        "--show-secrets",
    ]);
    let acme = acme.as_array().expect("a JSON array");
    assert_eq!(acme.len(), 1, "{acme:?}");
    assert_eq!(acme[0]["id"], a.to_string());
    assert_eq!(acme[0]["signing_secret"], secret);
    assert_eq!(acme[0]["disabled"], false);
}

#[test]
fn channel_disable_enable_delete_round_trip() {
    let db = migrated_db();
    let nr = Nr::for_db(&db);
    let id = nr.channel("acme", "a");
    let id_s = id.to_string();
    let mut client = db.client();
    let mut state = || -> (bool, bool) {
        let row = client
            .query_one(
                "SELECT disabled, deleted_at IS NOT NULL FROM notification.channel WHERE id = $1",
                &[&id],
            )
            .expect("row");
        (row.get(0), row.get(1))
    };
    assert_eq!(state(), (false, false));
    nr.ok(&["channel", "disable", &id_s]);
    assert_eq!(state(), (true, false));
    let listed = nr.json(&["channel", "list", "--json"]);
    assert_eq!(listed[0]["disabled"], true);
    nr.ok(&["channel", "enable", &id_s]);
    assert_eq!(state(), (false, false));
    nr.ok(&["channel", "delete", &id_s]);
    assert_eq!(state(), (false, true));
    let listed = nr.json(&["channel", "list", "--json"]);
    assert_eq!(listed, serde_json::json!([]), "a deleted channel is listed");

    // A deleted channel cannot be changed again, and an unknown id is a
    // usage error.
    let unknown = Uuid::new_v4().to_string();
    for cmd in ["disable", "enable", "delete"] {
        let line = nr.fails(2, &["channel", cmd, &unknown]);
        assert!(line.contains(&unknown), "{line}");
        let line = nr.fails(2, &["channel", cmd, &id_s]);
        assert!(line.contains(&id_s), "{line}");
    }
}

#[test]
fn rule_create_and_list_round_trip() {
    let db = migrated_db();
    let nr = Nr::for_db(&db);
    let (c1, c2) = (nr.channel("acme", "a"), nr.channel("acme", "b"));
    let rule = nr.rule("acme", "invoice.paid", &[c1, c2]);
    let list = nr.json(&["rule", "list", "--json"]);
    let list = list.as_array().expect("a JSON array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], rule.to_string());
    assert_eq!(list[0]["event_type"], "invoice.paid");
    assert_eq!(list[0]["namespace"], "acme");
    let mut got: Vec<String> = list[0]["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|v| v.as_str().expect("id").to_string())
        .collect();
    got.sort();
    let mut want = vec![c1.to_string(), c2.to_string()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        nr.json(&["rule", "list", "--namespace", "other", "--json"]),
        serde_json::json!([])
    );
    let text = nr.ok(&["rule", "list"]);
    assert!(text.contains(&rule.to_string()), "{text}");
}

#[test]
fn event_types_and_event_type_describe_round_trip() {
    let db = migrated_db();
    let nr = Nr::for_db(&db);
    let c = nr.channel("acme", "a");
    nr.rule("acme", "invoice.paid", &[c]);
    nr.emit("acme", "invoice.paid", r#"{"n": 1}"#);
    nr.emit("acme", "invoice.paid", r#"{"n": 2}"#);
    nr.emit("acme", "nobody.listens", r#"{"n": 3}"#);
    let out = nr.run(&[
        "event-type",
        "describe",
        "--namespace",
        "acme",
        "invoice.paid",
        "--description",
        "Paid\nin full.",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "describe prints nothing on stdout");
    let list = nr.json(&["event", "types", "--namespace", "acme", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["type"], "invoice.paid");
    assert_eq!(list[0]["count"], 2);
    assert_eq!(list[0]["rules"], 1);
    assert_eq!(list[0]["description"], "Paid\nin full.");
    let text = nr.ok(&["event", "types", "--namespace", "acme"]);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[0].starts_with("TYPE") && rows[0].ends_with("DESCRIPTION"),
        "{text}"
    );
    assert!(
        rows[1].starts_with("invoice.paid") && rows[1].ends_with("Paid in full."),
        "{text}"
    );
    // Another namespace has none: nothing on stdout, a note on stderr.
    let other = nr.run(&["event", "types", "--namespace", "globex"]);
    assert_eq!(other.status.code(), Some(0));
    assert!(other.stdout.is_empty());
    assert!(String::from_utf8_lossy(&other.stderr).contains("no event types"));
    assert_eq!(
        nr.json(&["event", "types", "--namespace", "globex", "--json"]),
        serde_json::json!([])
    );
}

#[test]
fn rule_create_with_an_unknown_channel_is_a_usage_error_and_creates_nothing() {
    let db = migrated_db();
    let nr = Nr::for_db(&db);
    let known = nr.channel("acme", "a");
    let foreign = nr.channel("globex", "g");
    let unknown = Uuid::new_v4();
    for bad in [unknown, foreign] {
        let line = nr.fails(
            2,
            &[
                "rule",
                "create",
                "--namespace",
                "acme",
                "--name",
                "r",
                "--event-type",
                "t",
                "--channel",
                &known.to_string(),
                "--channel",
                &bad.to_string(),
            ],
        );
        assert!(line.contains(&bad.to_string()), "{line}");
    }
    let rules: i64 = db
        .client()
        .query_one("SELECT count(*) FROM notification.rule", &[])
        .expect("count")
        .get(0);
    assert_eq!(rules, 0);
}

#[test]
fn event_emit_list_and_show_round_trip() {
    let db = migrated_db();
    let nr = Nr::for_db(&db);
    let (c1, c2) = (nr.channel("acme", "a"), nr.channel("acme", "b"));
    let r1 = nr.rule("acme", "invoice.paid", &[c1, c2]);
    let r2 = nr.rule("acme", "invoice.paid", &[c2]);

    let ids = nr.emit("acme", "invoice.paid", r#"{"amount": 42}"#);
    assert_eq!(ids.len(), 2, "one event per rule: {ids:?}");

    // --data @file.json
    let file = nr.dir().join("payload.json");
    std::fs::write(&file, r#"{"from": "file", "n": [1, 2]}"#).expect("write payload");
    let arg = format!("@{}", file.display());
    let from_file = nr.emit("acme", "invoice.paid", &arg);
    assert_eq!(from_file.len(), 2);
    let payload: Value = db
        .client()
        .query_one(
            "SELECT payload FROM notification.event WHERE id = $1",
            &[&from_file[0]],
        )
        .expect("event")
        .get(0);
    assert_eq!(payload, serde_json::json!({"from": "file", "n": [1, 2]}));

    // No matching rule: no id, still exit 0.
    assert!(nr.emit("acme", "nobody.listens", "{}").is_empty());

    let list = nr.json(&["event", "list", "--json"]);
    let list = list.as_array().expect("a JSON array");
    assert_eq!(list.len(), 4);
    let states: usize = list
        .iter()
        .map(|e| e["states"].as_array().expect("states").len())
        .sum();
    assert_eq!(
        states, 6,
        "r1 has 2 channels, r2 has 1, two emits: {list:?}"
    );
    assert!(list.iter().all(|e| e["states"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s == "PENDING")));

    // --state filters by a delivery's state.
    db.client()
        .execute(
            "UPDATE notification.delivery_status SET state = 'SUCCESS', next_attempt_at = NULL
             WHERE event_id = $1",
            &[&ids[0]],
        )
        .expect("update");
    let done = nr.json(&["event", "list", "--state", "SUCCESS", "--json"]);
    let done = done.as_array().expect("a JSON array");
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["id"], ids[0].to_string());
    let pending = nr.json(&["event", "list", "--state", "pending", "--json"]);
    assert_eq!(pending.as_array().expect("array").len(), 3);
    let text = nr.ok(&["event", "list", "--state", "SUCCESS"]);
    assert!(text.contains(&ids[0].to_string()), "{text}");
    // A header row names the columns, and the rows line up under it.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "CREATED", "NAMESPACE", "TYPE", "STATES"]);
    assert_eq!(
        lines[0].find("TYPE"),
        lines[1].find("invoice.paid"),
        "{text}"
    );
    let empty = nr.ok(&["event", "list", "--state", "FAILED"]);
    assert!(
        empty.starts_with("ID "),
        "the header even without rows: {empty}"
    );
    nr.fails(2, &["event", "list", "--state", "DONE"]);

    // show
    let shown = nr.json(&["event", "show", &ids[0].to_string(), "--json"]);
    assert_eq!(shown["event"]["id"], ids[0].to_string());
    assert_eq!(shown["event"]["type"], "invoice.paid");
    assert_eq!(shown["event"]["payload"], serde_json::json!({"amount": 42}));
    let rule_of_first = shown["event"]["rule_id"]
        .as_str()
        .expect("rule id")
        .to_string();
    assert!(rule_of_first == r1.to_string() || rule_of_first == r2.to_string());
    let deliveries = shown["deliveries"].as_array().expect("deliveries");
    assert!(!deliveries.is_empty());
    assert!(
        deliveries.iter().all(|d| d["state"] == "SUCCESS"),
        "{deliveries:?}"
    );
    let text = nr.ok(&["event", "show", &ids[0].to_string()]);
    assert!(text.contains("SUCCESS"), "{text}");

    let unknown = Uuid::new_v4().to_string();
    let line = nr.fails(2, &["event", "show", &unknown]);
    assert!(line.contains(&unknown), "{line}");
}

#[test]
fn resend_moves_finished_and_sending_deliveries_to_resending_with_a_fresh_clock() {
    let db = migrated_db();
    let nr = Nr::for_db(&db);
    let chans = [
        nr.channel("acme", "ok"),
        nr.channel("acme", "failed"),
        nr.channel("acme", "sending"),
    ];
    nr.rule("acme", "t", &chans);
    let event = nr.emit("acme", "t", "{}")[0];
    let mut client = db.client();
    for (channel, state) in chans.iter().zip(["SUCCESS", "FAILED", "SENDING"]) {
        client
            .execute(
                "UPDATE notification.delivery_status
                 SET state = $3, clock_started_at = now() - interval '3 days',
                     round_attempts = 4, next_attempt_at = NULL
                 WHERE event_id = $1 AND channel_id = $2",
                &[&event, channel, &state],
            )
            .expect("set state");
    }
    let before: chrono::DateTime<chrono::Utc> =
        client.query_one("SELECT now()", &[]).expect("now").get(0);

    let out = nr.ok(&["resend", &event.to_string()]);
    let mut printed: Vec<Uuid> = out.lines().map(|l| resent_channel(l, event)).collect();
    assert!(out.contains("(failed): was FAILED"), "{out}");
    assert!(out.contains("(sending): was SENDING"), "{out}");
    printed.sort();
    let mut want = chans.to_vec();
    want.sort();
    assert_eq!(printed, want);

    let rows = client
        .query(
            "SELECT state, clock_started_at, round_attempts, next_attempt_at
             FROM notification.delivery_status WHERE event_id = $1",
            &[&event],
        )
        .expect("statuses");
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r.get::<_, String>(0), "RESENDING");
        let clock: chrono::DateTime<chrono::Utc> = r.get(1);
        assert!(clock >= before, "clock not restarted: {clock} < {before}");
        assert_eq!(r.get::<_, i32>(2), 0);
        assert!(r
            .get::<_, Option<chrono::DateTime<chrono::Utc>>>(3)
            .is_some());
    }

    // Now every delivery is RESENDING: nothing to resend, one clear line.
    let line = nr.fails(2, &["resend", &event.to_string()]);
    assert!(line.contains("RESENDING"), "{line}");
}

#[test]
fn resend_refuses_pending_deliveries_and_honours_channel() {
    let db = migrated_db();
    let nr = Nr::for_db(&db);
    let (a, b) = (nr.channel("acme", "a"), nr.channel("acme", "b"));
    nr.rule("acme", "t", &[a, b]);
    let event = nr.emit("acme", "t", "{}")[0];
    let ev = event.to_string();

    let line = nr.fails(2, &["resend", &ev]);
    assert!(line.contains("PENDING"), "{line}");
    assert!(line.contains("nothing to resend"), "{line}");

    let mut client = db.client();
    client
        .execute(
            "UPDATE notification.delivery_status SET state = 'FAILED', next_attempt_at = NULL
             WHERE event_id = $1",
            &[&event],
        )
        .expect("fail both");
    let out = nr.ok(&["resend", &ev, "--channel", &b.to_string()]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(resent_channel(&out, event), b);
    assert!(out.contains("(b): was FAILED"), "{out}");
    let state_of = |client: &mut postgres::Client, c: Uuid| -> String {
        client
            .query_one(
                "SELECT state FROM notification.delivery_status WHERE event_id = $1 AND channel_id = $2",
                &[&event, &c],
            )
            .expect("status")
            .get(0)
    };
    assert_eq!(state_of(&mut client, a), "FAILED");
    assert_eq!(state_of(&mut client, b), "RESENDING");

    // A delivery that does not exist, and an unknown event.
    let line = nr.fails(
        2,
        &["resend", &ev, "--channel", &Uuid::new_v4().to_string()],
    );
    assert!(line.contains("nothing to resend"), "{line}");
    let line = nr.fails(2, &["resend", &Uuid::new_v4().to_string()]);
    assert!(line.contains("nothing to resend"), "{line}");
}

/// The binary for `schema` of the database at `url` (through
/// `DATABASE_URL`).
fn for_schema(url: &str, schema: &str) -> Bin {
    Bin::with_config(&format!(
        "[database]\nurl = \"postgres://nobody@127.0.0.1:1/nowhere\"\nschema = \"{schema}\"\n\n[log]\nlevel = \"warn\"\n"
    ))
    .env("DATABASE_URL", url)
}

#[test]
fn two_deployments_on_different_schemas_of_one_database_do_not_share_the_lock() {
    let db = support::fresh_db();
    let (a, b) = (
        for_schema(&db.url, "tenant_a"),
        for_schema(&db.url, "tenant_b"),
    );
    a.ok(&["migrate"]);
    b.ok(&["migrate"]);
    let status_of = |bin: &Bin| -> Value {
        serde_json::from_str(&bin.ok(&["status", "--json"])).expect("status --json")
    };
    let status_a = status_of(&a);
    assert_eq!(
        status_a["lock_key"], "tenant_a.event_handler.reconcile_lock",
        "{status_a}"
    );

    // A session holds schema a's lock, as a's leader does.
    let key_a = status_a["lock_key_int8"].as_i64().expect("lock_key_int8");
    let mut leader_a = db.client();
    leader_a
        .execute("SELECT pg_advisory_lock($1)", &[&key_a])
        .expect("take a's lock");
    let out = a.run(&["once"]);
    assert_eq!(
        out.status.code(),
        Some(75),
        "a's own once sees its lock held"
    );

    // Schema b leads on its own key: once runs, status shows no holder.
    let out = b.run(&["once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "once on schema b was blocked by schema a's lock: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status_b = status_of(&b);
    assert!(status_b["lock_holder"].is_null(), "{status_b}");
    assert_ne!(status_b["lock_key_int8"], status_a["lock_key_int8"]);
    drop(leader_a);
}

#[test]
fn status_counts_states_and_shows_the_lock_holder() {
    let db = migrated_db();
    let nr = Nr::for_db(&db);
    let (a, b) = (nr.channel("acme", "a"), nr.channel("acme", "b"));
    nr.rule("acme", "t", &[a, b]);
    let e1 = nr.emit("acme", "t", "{}")[0];
    let _e2 = nr.emit("acme", "t", "{}")[0];
    let _e3 = nr.emit("acme", "t", "{}")[0];
    let mut client = db.client();
    client
        .execute(
            "UPDATE notification.delivery_status SET state = 'SUCCESS', next_attempt_at = NULL
             WHERE event_id = $1 AND channel_id = $2",
            &[&e1, &a],
        )
        .expect("success");
    client
        .execute(
            "UPDATE notification.delivery_status SET state = 'SENDING',
                    next_attempt_at = now() + interval '1 hour'
             WHERE event_id = $1 AND channel_id = $2",
            &[&e1, &b],
        )
        .expect("sending");

    let status = nr.json(&["status", "--json"]);
    assert_eq!(status["by_state"]["PENDING"], 4, "{status}");
    assert_eq!(status["by_state"]["SENDING"], 1, "{status}");
    assert_eq!(status["by_state"]["SUCCESS"], 1, "{status}");
    assert_eq!(status["by_state"]["FAILED"], 0, "{status}");
    assert_eq!(status["by_state"]["RESENDING"], 0, "{status}");
    assert_eq!(
        status["due_now"], 4,
        "the SENDING one is due later: {status}"
    );
    assert!(
        status["oldest_unfinished_age_seconds"].is_number(),
        "{status}"
    );
    assert!(status["lock_holder"].is_null(), "{status}");

    // Another connection holds the reconciler's lock.
    let key =
        notification_reconciler::lock::derive_key("notification.event_handler.reconcile_lock");
    let mut holder = db.client();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .expect("take the lock");
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    let status = nr.json(&["status", "--json"]);
    assert_eq!(status["lock_holder"]["pid"], pid, "{status}");
    assert_eq!(status["lock_key_int8"], key, "{status}");
    let text = nr.ok(&["status"]);
    assert!(
        text.contains(&format!("held by backend pid {pid}")),
        "{text}"
    );

    drop(holder);
}

#[test]
fn an_unreachable_database_is_exit_code_1() {
    let nr = Nr::new(&closed_port_url());
    let id = Uuid::new_v4().to_string();
    for command in [
        "migrate".to_owned(),
        "status".to_owned(),
        "status --json".to_owned(),
        "channel list".to_owned(),
        "channel create --namespace a --name b --url http://127.0.0.1:9/".to_owned(),
        format!("channel disable {id}"),
        "rule list".to_owned(),
        "event emit --namespace a --type t --data {}".to_owned(),
        "event list".to_owned(),
        format!("event show {id}"),
        format!("resend {id}"),
    ] {
        let args: Vec<&str> = command.split_whitespace().collect();
        let line = nr.fails(1, &args);
        assert!(
            line.contains("cannot connect to the database"),
            "{args:?}: {line}"
        );
    }
}

#[test]
fn bad_arguments_are_exit_code_2_with_one_line() {
    // The database is unreachable: each of these must be refused before any
    // connection is tried (else it would be exit 1).
    let nr = Nr::new(&closed_port_url());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["frobnicate"], "frobnicate"),
        (
            vec!["channel", "create", "--namespace", "a", "--name", "b"],
            "--url",
        ),
        (
            vec![
                "rule",
                "create",
                "--namespace",
                "a",
                "--name",
                "b",
                "--event-type",
                "t",
            ],
            "--channel",
        ),
        (vec!["channel", "disable", "not-a-uuid"], "not-a-uuid"),
        (vec!["resend", "12345"], "12345"),
        (
            vec![
                "rule",
                "create",
                "--namespace",
                "a",
                "--name",
                "b",
                "--event-type",
                "t",
                "--channel",
                "zzz",
            ],
            "zzz",
        ),
        (
            vec![
                "event",
                "emit",
                "--namespace",
                "a",
                "--type",
                "t",
                "--data",
                "{not json",
            ],
            "--data",
        ),
        (
            vec![
                "event",
                "emit",
                "--namespace",
                "a",
                "--type",
                "t",
                "--data",
                "@/nonexistent/x.json",
            ],
            "/nonexistent/x.json",
        ),
        (
            vec![
                "channel",
                "create",
                "--namespace",
                "a",
                "--name",
                "b",
                "--url",
                "http://127.0.0.1:9/",
                "--header",
                "NoColon",
            ],
            "NoColon",
        ),
        (
            vec![
                "channel",
                "create",
                "--namespace",
                "a",
                "--name",
                "b",
                "--url",
                "http://127.0.0.1:9/",
                "--secret",
                "plainsecret",
            ],
            "whsec_",
        ),
        (
            vec![
                "channel",
                "create",
                "--namespace",
                "a",
                "--name",
                "b",
                "--url",
                "ftp://x/",
            ],
            "--url",
        ),
        (
            vec![
                "channel",
                "create",
                "--namespace",
                "",
                "--name",
                "b",
                "--url",
                "http://127.0.0.1:9/",
            ],
            "--namespace",
        ),
    ];
    for (args, needle) in cases {
        let line = nr.fails(2, &args);
        assert!(
            line.contains(needle),
            "{args:?}: {needle:?} missing from {line}"
        );
    }
}
