//! Migrations through the real binary: a fresh database is migrated, a second
//! `migrate` is a no-op, two `migrate` processes started at the same moment
//! both succeed and apply each migration once, a schema newer than the binary
//! is refused by every command, and an unmigrated database makes every
//! command but `migrate` fail naming `notification-reconciler migrate`.

mod support;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use notification_reconciler::db::migrate::{latest_version, MIGRATIONS};
use support::{fresh_db, migrated_db, TestDb};
use tempfile::TempDir;

/// A config file in a temp dir (pointing nowhere; `DATABASE_URL` wins).
fn config_dir() -> TempDir {
    let dir = TempDir::new().expect("temp dir");
    std::fs::write(
        dir.path().join("config.toml"),
        "[database]\nurl = \"postgres://nobody@127.0.0.1:1/nowhere\"\n[log]\nlevel = \"warn\"\n",
    )
    .expect("write config");
    dir
}

fn command(dir: &TempDir, db: &TestDb, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_notification-reconciler"));
    cmd.arg("--config")
        .arg(dir.path().join("config.toml"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG");
    cmd
}

fn run(dir: &TempDir, db: &TestDb, args: &[&str]) -> Output {
    command(dir, db, args)
        .output()
        .expect("run notification-reconciler")
}

fn assert_ok(out: &Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Expects exit 1 with one line on stderr; returns it.
fn assert_fails(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    stderr
}

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
    let dir = config_dir();
    let out = assert_ok(&run(&dir, &db, &["migrate"]), "migrate");
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
    let dir = config_dir();
    assert_ok(&run(&dir, &db, &["migrate"]), "first migrate");
    let before = recorded(&db);
    let out = assert_ok(&run(&dir, &db, &["migrate"]), "second migrate");
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

fn spawn_migrate(dir: &TempDir, db: &TestDb) -> Child {
    command(dir, db, &["migrate"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn migrate")
}

#[test]
fn two_migrate_processes_started_together_both_succeed_and_apply_once() {
    for round in 0..3 {
        let db = fresh_db();
        let dir = config_dir();
        let (a, b) = wait_both(spawn_migrate(&dir, &db), spawn_migrate(&dir, &db));
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
    let dir = config_dir();
    let key =
        notification_reconciler::lock::derive_key("notification-reconciler.migrate.notification");
    let mut gate = db.client();
    gate.execute("SELECT pg_advisory_lock($1)", &[&key])
        .expect("hold the migration lock");
    let (a, b) = (spawn_migrate(&dir, &db), spawn_migrate(&dir, &db));
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
    let dir = config_dir();
    db.client()
        .execute(
            "INSERT INTO notification.schema_migrations (version, name) VALUES (999, '0999_future')",
            &[],
        )
        .expect("insert version 999");
    let id = uuid::Uuid::new_v4().to_string();
    for args in [
        vec!["status"],
        vec!["channel", "list"],
        vec!["rule", "list"],
        vec!["event", "list"],
        vec![
            "event",
            "emit",
            "--namespace",
            "a",
            "--type",
            "t",
            "--data",
            "{}",
        ],
        vec!["resend", &id],
        vec!["migrate"],
    ] {
        let line = assert_fails(&run(&dir, &db, &args), &format!("{args:?}"));
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
    let dir = config_dir();
    let id = uuid::Uuid::new_v4().to_string();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["channel", "list"],
        vec![
            "channel",
            "create",
            "--namespace",
            "a",
            "--name",
            "b",
            "--url",
            "http://127.0.0.1:9/",
        ],
        vec!["rule", "list"],
        vec![
            "event",
            "emit",
            "--namespace",
            "a",
            "--type",
            "t",
            "--data",
            "{}",
        ],
        vec!["event", "show", &id],
        vec!["resend", &id],
    ] {
        let line = assert_fails(&run(&dir, &db, &args), &format!("{args:?}"));
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
