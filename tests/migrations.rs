//! Migrations through the real binary: a fresh database is migrated, a second
//! `migrate` is a no-op, two `migrate` processes started at the same moment
//! both succeed and apply each migration once, a schema newer than the binary
//! is refused by every command, and an unmigrated database makes every
//! command but `migrate` fail naming `notification-reconciler migrate`; a
//! database holding data that an older release migrated upgrades without
//! losing a row; an ordered channel's deliveries enqueued before the order
//! horizon (migration 10) are delivered after the upgrade, in order.

mod support;

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use notification_reconciler::db::migrate::{latest_version, MIGRATIONS};
use support::bin::{assert_fails, assert_ok, Bin};
use support::{fresh_db, migrated_db, TestDb};

/// The recorded migrations: (version, applied_at as text).
fn recorded(db: &TestDb) -> Vec<(i32, String)> {
    db.client()
        .query(
            "SELECT version, applied_at::text FROM notification.schema_migrations ORDER BY version",
            &[],
        )
        .expect("read schema_migrations")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn all_versions() -> Vec<i32> {
    MIGRATIONS.iter().map(|m| m.version).collect()
}

#[test]
fn fresh_apply_creates_the_schema_and_records_each_migration() {
    let db = fresh_db();
    let bin = Bin::for_database(&db.url);
    let out = assert_ok(&bin.run(&["migrate"]), "migrate");
    assert!(out.contains("applied migration"), "{out}");
    let versions: Vec<i32> = recorded(&db).into_iter().map(|(v, _)| v).collect();
    assert_eq!(versions, all_versions());
    let mut client = db.client();
    for table in [
        "channel",
        "rule",
        "rule_channel",
        "event",
        "delivery_status",
    ] {
        let exists: bool = client
            .query_one(
                "SELECT to_regclass('notification.' || $1) IS NOT NULL",
                &[&table],
            )
            .expect("regclass")
            .get(0);
        assert!(exists, "table {table} missing after migrate");
    }
    let function: bool = client
        .query_one(
            "SELECT to_regprocedure('notification.enqueue_event(text, text, jsonb, jsonb)') IS NOT NULL",
            &[],
        )
        .expect("regprocedure")
        .get(0);
    assert!(function, "enqueue_event missing after migrate");
}

#[test]
fn reapply_is_a_no_op() {
    let db = fresh_db();
    let bin = Bin::for_database(&db.url);
    assert_ok(&bin.run(&["migrate"]), "first migrate");
    let before = recorded(&db);
    let out = assert_ok(&bin.run(&["migrate"]), "second migrate");
    assert!(out.contains("up to date"), "{out}");
    assert!(
        out.contains(&format!("version {}", latest_version())),
        "{out}"
    );
    assert_eq!(
        recorded(&db),
        before,
        "a second migrate changed schema_migrations"
    );
}

/// Waits for both children, returning their outputs.
fn wait_both(a: Child, b: Child) -> (Output, Output) {
    (
        a.wait_with_output().expect("wait migrate a"),
        b.wait_with_output().expect("wait migrate b"),
    )
}

/// Starts `migrate` with stdout and stderr piped.
fn spawn_migrate(bin: &Bin) -> Child {
    bin.command(&["migrate"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn migrate")
}

#[test]
fn two_migrate_processes_started_together_both_succeed_and_apply_once() {
    for round in 0..3 {
        let db = fresh_db();
        let bin = Bin::for_database(&db.url);
        let (a, b) = wait_both(spawn_migrate(&bin), spawn_migrate(&bin));
        assert_ok(&a, &format!("round {round}: migrate a"));
        assert_ok(&b, &format!("round {round}: migrate b"));
        let versions: Vec<i32> = recorded(&db).into_iter().map(|(v, _)| v).collect();
        assert_eq!(versions, all_versions(), "round {round}");
    }
}

#[test]
fn two_migrate_processes_released_at_the_same_moment_apply_once() {
    // Hold the migration lock so that both processes are connected and
    // queued on it, then release it: they contend at the same instant.
    let db = fresh_db();
    let bin = Bin::for_database(&db.url);
    let key =
        notification_reconciler::lock::derive_key("notification-reconciler.migrate.notification");
    let mut gate = db.client();
    gate.execute("SELECT pg_advisory_lock($1)", &[&key])
        .expect("hold the migration lock");
    let (a, b) = (spawn_migrate(&bin), spawn_migrate(&bin));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = gate
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .expect("pg_locks")
            .get(0);
        if waiting == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two migrate processes never queued on the migration lock ({waiting} waiting)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    gate.execute("SELECT pg_advisory_unlock($1)", &[&key])
        .expect("release");
    let (a, b) = wait_both(a, b);
    let (a, b) = (assert_ok(&a, "migrate a"), assert_ok(&b, "migrate b"));
    let applied = [&a, &b]
        .iter()
        .filter(|o| o.contains("applied migration"))
        .count();
    assert_eq!(applied, 1, "exactly one process applies: {a:?} / {b:?}");
    let versions: Vec<i32> = recorded(&db).into_iter().map(|(v, _)| v).collect();
    assert_eq!(versions, all_versions());
}

#[test]
fn a_newer_schema_is_refused_by_every_command_and_by_migrate() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    db.client()
        .execute(
            "INSERT INTO notification.schema_migrations (version, name) VALUES (999, '0999_future')",
            &[],
        )
        .expect("insert version 999");
    let id = uuid::Uuid::new_v4().to_string();
    for command in [
        "status".to_owned(),
        "channel list".to_owned(),
        "rule list".to_owned(),
        "event list".to_owned(),
        "event emit --namespace a --type t --data {}".to_owned(),
        format!("resend {id}"),
        "migrate".to_owned(),
    ] {
        let args: Vec<&str> = command.split_whitespace().collect();
        let line = assert_fails(&bin.run(&args), 1, &format!("{args:?}"));
        assert!(line.contains("999"), "{args:?}: {line}");
        assert!(line.contains("newer"), "{args:?}: {line}");
        assert!(
            line.contains("upgrade notification-reconciler"),
            "{args:?}: {line}"
        );
    }
    let versions: Vec<i32> = recorded(&db).into_iter().map(|(v, _)| v).collect();
    let mut want = all_versions();
    want.push(999);
    assert_eq!(versions, want, "migrate changed a newer schema");
}

#[test]
fn an_unmigrated_database_names_the_migrate_command() {
    let db = fresh_db();
    let bin = Bin::for_database(&db.url);
    let id = uuid::Uuid::new_v4().to_string();
    for command in [
        "status".to_owned(),
        "status --json".to_owned(),
        "channel list".to_owned(),
        "channel create --namespace a --name b --url http://127.0.0.1:9/".to_owned(),
        "rule list".to_owned(),
        "event emit --namespace a --type t --data {}".to_owned(),
        format!("event show {id}"),
        format!("resend {id}"),
    ] {
        let args: Vec<&str> = command.split_whitespace().collect();
        let line = assert_fails(&bin.run(&args), 1, &format!("{args:?}"));
        assert!(
            line.contains("notification-reconciler migrate"),
            "{args:?}: {line}"
        );
    }
    // Nothing was created by the refused commands.
    let schema: bool = db
        .client()
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'notification')",
            &[],
        )
        .expect("pg_namespace")
        .get(0);
    assert!(!schema, "a refused command created the schema");
}

/// Applies the migrations up to `version` to `db`'s `notification` schema
/// the way `migrate` does, so a test can seed a database as an older
/// release left it.
fn migrate_up_to(db: &TestDb, version: i32) {
    let mut c = db.client();
    c.batch_execute(
        "CREATE SCHEMA notification;
         CREATE TABLE notification.schema_migrations (
             version integer PRIMARY KEY, name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now());",
    )
    .expect("schema");
    for m in MIGRATIONS.iter().filter(|m| m.version <= version) {
        let mut tx = c.transaction().expect("tx");
        tx.batch_execute("SET LOCAL search_path TO notification")
            .expect("search_path");
        tx.batch_execute(m.sql).expect(m.name);
        tx.execute(
            "INSERT INTO notification.schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .expect("record");
        tx.commit().expect("commit");
    }
}

/// What every release since 1 can hold: channel `…0c` in namespace `acme`
/// and rule `…aa` for type `paid` assigned to it; sets the search_path.
fn seed_channel_and_rule(c: &mut postgres::Client) {
    c.batch_execute(
        "SET search_path = notification;
         INSERT INTO channel (id, namespace, name, url, signing_secret)
         VALUES ('00000000-0000-0000-0000-00000000000c', 'acme', 'c', 'http://127.0.0.1:9/',
                 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
         INSERT INTO rule (id, namespace, name, event_type)
         VALUES ('00000000-0000-0000-0000-0000000000aa', 'acme', 'r', 'paid');
         INSERT INTO rule_channel (rule_id, channel_id)
         VALUES ('00000000-0000-0000-0000-0000000000aa', '00000000-0000-0000-0000-00000000000c');
        ",
    )
    .expect("seed channel and rule");
}

#[test]
fn a_database_holding_data_upgrades_from_version_6_and_its_events_are_listed() {
    let db = fresh_db();
    migrate_up_to(&db, 6);
    let mut c = db.client();
    // What release 6 holds: a channel, a rule, events with attempts recorded.
    seed_channel_and_rule(&mut c);
    c.batch_execute(
        "
         SELECT enqueue_event('acme', 'paid', jsonb_build_object('i', g)) FROM generate_series(1, 25) g;
         UPDATE delivery_status SET state = 'SENDING', attempt_count = 1,
             attempts = '[{\"timestamp\": \"2026-12-01T08:00:00Z\", \"state\": \"SENDING\", \"http_status\": 500,
                           \"duration_ms\": 4, \"url\": \"http://127.0.0.1:9/\", \"response_body\": \"no\", \"error\": null}]';",
    )
    .expect("seed");
    let bin = Bin::for_database(&db.url);
    let out = bin.ok(&["migrate"]);
    assert!(out.contains("applied migration(s) 7"), "{out}");
    // Nothing lost: every event, every attempt, shown by `event show`.
    let n: i64 = c
        .query_one("SELECT count(*) FROM notification.event", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 25);
    let id: uuid::Uuid = c
        .query_one("SELECT id FROM notification.event LIMIT 1", &[])
        .unwrap()
        .get(0);
    let shown: serde_json::Value =
        serde_json::from_str(&bin.ok(&["event", "show", &id.to_string(), "--json"])).unwrap();
    assert_eq!(shown["deliveries"][0]["attempts"][0]["http_status"], 500);
    // The API's event log reads them, newest first, a page at a time.
    let mut client = db.client();
    client
        .batch_execute("SET search_path = notification")
        .unwrap();
    let page = notification_reconciler::ops::page::Page {
        limit: 10,
        after: None,
    };
    let listed = notification_reconciler::ops::events::list(
        &mut client,
        Some("acme"),
        &Default::default(),
        page,
    )
    .unwrap();
    assert_eq!(listed.items.len(), 10);
    assert!(listed.next_cursor.is_some());
    // The rule made before filters existed still matches every payload.
    let new: i64 = c
        .query_one(
            "SELECT count(*) FROM notification.enqueue_event('acme', 'paid', '{\"late\": true}')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(new, 1);
    // Tokens work on the upgraded schema.
    let token = bin.ok(&["token", "create", "--name", "t", "--admin"]);
    assert!(token.trim().starts_with("nrt_"));
}

#[test]
fn a_database_holding_deliveries_upgrades_from_version_8_to_the_delivery_controls() {
    let db = fresh_db();
    migrate_up_to(&db, 8);
    let mut c = db.client();
    // What release 8 holds: a channel with unfinished deliveries, one of
    // them waiting for its retry.
    seed_channel_and_rule(&mut c);
    c.batch_execute(
        "
         SELECT enqueue_event('acme', 'paid', jsonb_build_object('i', g)) FROM generate_series(1, 5) g;
         UPDATE delivery_status SET state = 'SENDING', attempt_count = 1,
             next_attempt_at = now() + interval '1 hour'
         WHERE event_id = (SELECT id FROM event ORDER BY created_at, id LIMIT 1);",
    )
    .expect("seed");
    let bin = Bin::for_database(&db.url);
    let out = bin.ok(&["migrate"]);
    assert!(out.contains("applied migration(s) 9"), "{out}");
    let id = "00000000-0000-0000-0000-00000000000c";
    let listed: serde_json::Value =
        serde_json::from_str(&bin.ok(&["channel", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["rate_limit"], serde_json::Value::Null, "no limit");
    assert_eq!(listed[0]["ordered"], false);
    // The existing deliveries are ordered from the moment the channel is.
    bin.ok(&["channel", "update", id, "--ordered", "--rate-limit", "5/s"]);
    let listed: serde_json::Value =
        serde_json::from_str(&bin.ok(&["channel", "list", "--json"])).unwrap();
    let first: String = c
        .query_one(
            "SELECT id::text FROM notification.event ORDER BY created_at, id LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(listed[0]["waiting_on"]["event_id"], first, "{listed}");
    assert_eq!(listed[0]["waiting_on"]["state"], "SENDING");
    assert_eq!(listed[0]["held_back"], 4, "{listed}");
    assert_eq!(listed[0]["rate_limit"], "5/s");
}

#[test]
fn a_database_holding_ordered_deliveries_upgrades_from_version_9_and_delivers_them_in_order() {
    let db = fresh_db();
    migrate_up_to(&db, 9);
    let receiver = support::Receiver::start(support::Script::new(|_| support::Reply::status(200)));
    let mut c = db.client();
    // What release 9 holds: an ordered channel with unfinished deliveries
    // enqueued by the old enqueue_event.
    seed_channel_and_rule(&mut c);
    c.execute(
        "UPDATE channel SET ordered = true, url = $1",
        &[&receiver.url()],
    )
    .expect("ordered channel");
    c.batch_execute(
        "SELECT enqueue_event('acme', 'paid', jsonb_build_object('i', g)) FROM generate_series(1, 5) g;",
    )
    .expect("seed");
    let order: Vec<String> = c
        .query("SELECT id::text FROM event ORDER BY created_at, id", &[])
        .expect("order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let bin = Bin::with_config(&support::bin::allow_loopback(
        &support::daemon::config_toml(&db.url, 2, "1s", "timeout = \"5s\"\n", ""),
    ));
    let out = bin.ok(&["migrate"]);
    assert!(out.contains("applied migration(s) 10"), "{out}");
    // `once` waits for no producer here: the horizon it takes is above
    // every transaction of the seed.
    bin.ok(&["once"]);
    assert_eq!(receiver.ids(), order, "delivered in enqueue order");
    // And the new enqueue_event feeds the same channel.
    c.batch_execute("SELECT enqueue_event('acme', 'paid', '{\"late\": true}')")
        .expect("enqueue after the upgrade");
    bin.ok(&["once"]);
    assert_eq!(receiver.count(), 6);
}

#[test]
fn a_database_holding_channels_upgrades_from_version_10_and_a_key_encrypts_them() {
    let db = fresh_db();
    migrate_up_to(&db, 10);
    let mut c = db.client();
    seed_channel_and_rule(&mut c);
    c.batch_execute(
        "UPDATE channel SET headers = '{\"X-Api-Key\": \"header-credential\", \"X-Bad\": 1}';
         SELECT enqueue_event('acme', 'paid', '{}'::jsonb) FROM generate_series(1, 5);",
    )
    .expect("seed");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, format!("{}\n", "A".repeat(43) + "=")).unwrap();
    let bin = Bin::with_config(&format!(
        "[secrets]\nkey_file = {:?}\n",
        key.display().to_string()
    ))
    .env("DATABASE_URL", &db.url);
    let out = bin.ok(&["migrate"]);
    assert!(out.contains("applied migration(s) 11"), "{out}");
    assert!(out.contains("of 1 channel(s)"), "{out}");
    let row = c
        .query_one(
            "SELECT signing_secret, headers->>'X-Api-Key', (SELECT count(*) FROM event)
             FROM notification.channel",
            &[],
        )
        .unwrap();
    let (secret, header, events): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
    assert!(secret.starts_with("nrenc:v1:"), "{secret}");
    assert!(header.starts_with("nrenc:v1:"), "{header}");
    assert_eq!(events, 5, "nothing lost");
    let shown = bin.ok(&["channel", "list", "--json", "--show-secrets"]);
    assert!(
        shown.contains("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        "{shown}"
    );
    assert!(shown.contains("header-credential"), "{shown}");
}

#[test]
fn a_database_holding_events_upgrades_from_version_11_and_lists_its_event_types() {
    let db = fresh_db();
    migrate_up_to(&db, 11);
    let mut c = db.client();
    // What release 11 holds: a channel, a rule for `paid`, its events.
    seed_channel_and_rule(&mut c);
    c.batch_execute(
        "SELECT enqueue_event('acme', 'paid', jsonb_build_object('i', g)) FROM generate_series(1, 7) g;",
    )
    .expect("seed");
    let bin = Bin::for_database(&db.url);
    let out = bin.ok(&["migrate"]);
    assert!(out.contains("applied migration(s) 12"), "{out}");
    let types: serde_json::Value =
        serde_json::from_str(&bin.ok(&["event", "types", "--namespace", "acme", "--json"]))
            .expect("event types --json is JSON");
    assert_eq!(types[0]["type"], "paid");
    assert_eq!(types[0]["count"], 7, "every event counted: {types}");
    assert_eq!(types[0]["rules"], 1);
    assert!(types[0]["last_seen_at"].is_string(), "{types}");
    bin.ok(&[
        "event-type",
        "describe",
        "--namespace",
        "acme",
        "paid",
        "--description",
        "Paid.",
    ]);
    // Enqueueing still works on the upgraded schema.
    let new: i64 = c
        .query_one(
            "SELECT count(*) FROM notification.enqueue_event('acme', 'paid', '{}')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(new, 1);
}
