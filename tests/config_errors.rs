//! Configuration through the real binary: every class of bad input makes
//! `check-config` exit 2 with exactly one line on stderr that names the key
//! and the bad value (and never a panic); a good file prints the effective
//! configuration with the password redacted, and `DATABASE_URL` overrides
//! `database.url`. The parsing rules themselves are unit-tested in
//! `src/config.rs`; these tests prove what an operator sees.

mod support;

use std::path::Path;
use std::process::Output;

use support::bin::{assert_fails, Bin};
use tempfile::TempDir;

/// Runs `check-config` on a config file holding `text` (no `DATABASE_URL`
/// unless `database_url` is given).
fn check_config(text: &str, database_url: Option<&str>) -> Output {
    run_check_config(Bin::with_config(text), database_url)
}

/// Runs `check-config` with `bin`'s config and `DATABASE_URL` if given.
fn run_check_config(bin: Bin, database_url: Option<&str>) -> Output {
    match database_url {
        Some(url) => bin.env("DATABASE_URL", url),
        None => bin,
    }
    .run(&["check-config"])
}

/// Asserts exit code 2 and one stderr line containing every `needle`.
fn assert_rejected(out: &Output, needles: &[&str]) {
    let line = assert_fails(out, 2, "check-config");
    for needle in needles {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn missing_file_names_the_path() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("nope.toml");
    let out = run_check_config(Bin::with_config_file(&path), None);
    assert_rejected(&out, &["nope.toml", "cannot read config file"]);
}

#[test]
fn not_toml_names_the_line() {
    let out = check_config("[reconciler\nworkers = 1\n", None);
    assert_rejected(&out, &["line 1"]);
}

#[test]
fn unknown_key_is_named() {
    let out = check_config("[reconciler]\nwokers = 4\n", None);
    assert_rejected(&out, &["unknown key `reconciler.wokers`"]);
}

#[test]
fn wrong_type_names_key_and_value() {
    let out = check_config("[reconciler]\nworkers = \"eight\"\n", None);
    assert_rejected(&out, &["reconciler.workers", "eight"]);
}

#[test]
fn negative_workers_is_refused() {
    let out = check_config("[reconciler]\nworkers = -1\n", None);
    assert_rejected(&out, &["reconciler.workers = -1"]);
}

#[test]
fn absurd_workers_is_refused() {
    let out = check_config("[reconciler]\nworkers = 100000\n", None);
    assert_rejected(&out, &["reconciler.workers = 100000"]);
}

#[test]
fn zero_page_size_is_refused() {
    let out = check_config("[reconciler]\npage_size = 0\n", None);
    assert_rejected(&out, &["reconciler.page_size = 0"]);
}

#[test]
fn negative_queue_capacity_is_refused() {
    let out = check_config("[reconciler]\nqueue_capacity = -5\n", None);
    assert_rejected(&out, &["reconciler.queue_capacity = -5"]);
}

#[test]
fn bad_duration_is_named() {
    let out = check_config("[reconciler]\ninterval = \"soon\"\n", None);
    assert_rejected(&out, &["reconciler.interval = \"soon\"", "not a duration"]);
    let out = check_config(
        "[delivery]\nretry_schedule = [\"5s\", \"5 parsecs\"]\n",
        None,
    );
    assert_rejected(&out, &["delivery.retry_schedule = \"5 parsecs\""]);
}

#[test]
fn empty_retry_schedule_is_refused() {
    let out = check_config("[delivery]\nretry_schedule = []\n", None);
    assert_rejected(&out, &["delivery.retry_schedule = []"]);
}

#[test]
fn non_postgres_url_is_refused() {
    let out = check_config("[database]\nurl = \"mysql://root@localhost/db\"\n", None);
    assert_rejected(
        &out,
        &["database.url", "mysql://root@localhost/db", "postgres://"],
    );
}

#[test]
fn non_postgres_database_url_env_is_refused_without_showing_the_password() {
    let out = check_config("", Some("mysql://root:hunter2@localhost/db"));
    assert_rejected(
        &out,
        &[
            "environment variable DATABASE_URL",
            "database.url",
            "mysql://root:***@localhost/db",
        ],
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
}

#[test]
fn pool_smaller_than_workers_is_allowed_and_an_absurd_pool_is_refused() {
    let t = effective(&check_config(
        "[reconciler]\nworkers = 512\n[database]\npool_size = 8\n",
        None,
    ));
    assert_eq!(get(&t, "reconciler", "workers").as_integer(), Some(512));
    assert_eq!(get(&t, "database", "pool_size").as_integer(), Some(8));
    let out = check_config("[database]\npool_size = 5000\n", None);
    assert_rejected(&out, &["database.pool_size = 5000", "between 1 and 1026"]);
    let out = check_config("[reconciler]\nworkers = 5000\n", None);
    assert_rejected(&out, &["reconciler.workers = 5000", "between 1 and 4096"]);
}

/// `database.pool_size = 0`: 4 per CPU, at least 8, whatever the workers.
fn auto_pool_size() -> i64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    (4 * cpus).max(8)
}

/// Parses `check-config`'s stdout as TOML.
fn effective(out: &Output) -> toml::Table {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("check-config output is not TOML ({e}):\n{stdout}"))
}

fn get<'a>(t: &'a toml::Table, section: &str, key: &str) -> &'a toml::Value {
    t.get(section)
        .and_then(|s| s.get(key))
        .unwrap_or_else(|| panic!("{section}.{key} missing from {t}"))
}

#[test]
fn check_config_prints_the_effective_config_with_defaults_filled_in() {
    let out = check_config("[reconciler]\nworkers = 3\n", None);
    let t = effective(&out);
    assert_eq!(get(&t, "reconciler", "workers").as_integer(), Some(3));
    assert_eq!(
        get(&t, "database", "pool_size").as_integer(),
        Some(auto_pool_size())
    );
    assert_eq!(
        get(&t, "reconciler", "queue_capacity").as_integer(),
        Some(6)
    );
    assert_eq!(get(&t, "reconciler", "page_size").as_integer(), Some(50));
    assert_eq!(get(&t, "database", "schema").as_str(), Some("notification"));
    assert_eq!(
        get(&t, "reconciler", "pending_timeout").as_str(),
        Some("3h")
    );
    let schedule = get(&t, "delivery", "retry_schedule")
        .as_array()
        .expect("retry_schedule is an array");
    assert_eq!(schedule.len(), 7);
    assert_eq!(
        get(&t, "reconciler", "lock_key").as_str(),
        Some("notification.event_handler.reconcile_lock")
    );
}

#[test]
fn workers_zero_resolves_to_eight_per_cpu_at_least_sixteen() {
    let t = effective(&check_config("[reconciler]\nworkers = 0\n", None));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let workers = (8 * cpus).max(16);
    assert_eq!(get(&t, "reconciler", "workers").as_integer(), Some(workers));
    assert_eq!(
        get(&t, "delivery", "max_in_flight_per_channel").as_integer(),
        Some(workers / 4)
    );
    assert_eq!(
        get(&t, "database", "pool_size").as_integer(),
        Some(auto_pool_size())
    );
    assert_eq!(
        get(&t, "reconciler", "queue_capacity").as_integer(),
        Some(2 * workers)
    );
}

#[test]
fn check_config_redacts_the_password_of_the_file_url() {
    let out = check_config(
        "[database]\nurl = \"postgres://app:filepass@db.example:5432/billing\"\n",
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let t = effective(&out);
    assert_eq!(
        get(&t, "database", "url").as_str(),
        Some("postgres://app:***@db.example:5432/billing")
    );
    assert!(!stdout.contains("filepass"), "{stdout}");
}

#[test]
fn database_url_overrides_the_file_and_its_password_is_redacted() {
    let out = check_config(
        "[database]\nurl = \"postgres://app:filepass@db.example:5432/billing\"\n",
        Some("postgres://ops:envpass@127.0.0.1:6543/other"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let t = effective(&out);
    assert_eq!(
        get(&t, "database", "url").as_str(),
        Some("postgres://ops:***@127.0.0.1:6543/other")
    );
    assert!(!stdout.contains("envpass"), "{stdout}");
    assert!(!stdout.contains("filepass"), "{stdout}");
}

#[test]
fn a_password_given_as_a_url_parameter_is_redacted_too() {
    let out = check_config(
        "",
        Some("postgres://ops@127.0.0.1:6543/other?password=paramsecret&sslmode=disable"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let _ = effective(&out);
    assert!(!stdout.contains("paramsecret"), "{stdout}");
    assert!(stdout.contains("sslmode=disable"), "{stdout}");
}

#[test]
fn the_repository_example_config_passes_check_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let t = effective(&run_check_config(Bin::with_config_file(&path), None));
    assert_eq!(get(&t, "database", "schema").as_str(), Some("notification"));
}

/// Runs `check-config` with no `--config`, in `dir` as the working
/// directory, with `DATABASE_URL` set.
fn check_config_in(dir: &Path, database_url: &str) -> Output {
    Bin::without_config()
        .env("DATABASE_URL", database_url)
        .command(&["check-config"])
        .current_dir(dir)
        .output()
        .expect("run check-config")
}

#[test]
fn an_explicit_config_is_used_without_looking_at_the_search_path() {
    // ./config.toml exists but cannot be read (a symlink loop): with
    // --config it must not matter.
    let dir = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink("config.toml", dir.path().join("config.toml")).expect("symlink");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[reconciler]\nworkers = 5\n").expect("write good.toml");
    let out = Bin::with_config_file(&good)
        .command(&["check-config"])
        .current_dir(dir.path())
        .output()
        .expect("run check-config");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        get(&effective(&out), "reconciler", "workers").as_integer(),
        Some(5)
    );
}

#[test]
fn without_a_config_file_the_defaults_and_the_environment_apply() {
    // Outside the repository: no ./config.toml. (The machine's
    // /etc/notification-reconciler/config.toml would be found next; this
    // test needs it absent.)
    let system = Path::new("/etc/notification-reconciler/config.toml");
    assert!(
        !system.exists(),
        "{} exists on this machine; the test needs it absent",
        system.display()
    );
    let dir = TempDir::new().expect("temp dir");
    let out = check_config_in(dir.path(), "postgres://ops:envpass@127.0.0.1:6543/other");
    let t = effective(&out);
    assert_eq!(
        get(&t, "database", "url").as_str(),
        Some("postgres://ops:***@127.0.0.1:6543/other")
    );
    assert_eq!(get(&t, "reconciler", "interval").as_str(), Some("15s"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("<defaults"), "{stderr}");
}

#[test]
fn without_config_the_working_directorys_config_toml_is_used() {
    let dir = TempDir::new().expect("temp dir");
    std::fs::write(
        dir.path().join("config.toml"),
        "[reconciler]\nworkers = 3\n",
    )
    .expect("write config");
    let out = check_config_in(dir.path(), "postgres://ops@127.0.0.1:6543/other");
    let t = effective(&out);
    assert_eq!(get(&t, "reconciler", "workers").as_integer(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("./config.toml"), "{stderr}");
}

#[test]
fn a_sending_timeout_shorter_than_the_first_retry_step_is_refused() {
    let out = check_config(
        "[reconciler]\nsending_timeout = \"1m\"\n[delivery]\nretry_schedule = [\"5m\"]\n",
        None,
    );
    assert_rejected(
        &out,
        &[
            "reconciler.sending_timeout = \"1m\"",
            "delivery.retry_schedule[0] = \"5m\"",
        ],
    );
}

#[test]
fn a_delivery_timeout_under_10ms_is_refused() {
    let out = check_config("[delivery]\ntimeout = \"5ms\"\n", None);
    assert_rejected(&out, &["delivery.timeout = \"5ms\"", "at least 10ms"]);
}

#[test]
fn a_pending_timeout_not_longer_than_next_attempt_delay_is_refused() {
    let out = check_config(
        "[reconciler]\npending_timeout = \"5m\"\nnext_attempt_delay = \"10m\"\n",
        None,
    );
    assert_rejected(
        &out,
        &[
            "reconciler.pending_timeout = \"5m\"",
            "reconciler.next_attempt_delay = \"10m\"",
        ],
    );
}

#[test]
fn suspicious_settings_pass_check_config_with_warnings_naming_the_keys() {
    let out = check_config(
        "[reconciler]\nsending_timeout = \"1h\"\n[delivery]\ntimeout = \"500ms\"\nconnect_timeout = \"200ms\"\n",
        None,
    );
    let _ = effective(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    assert!(
        warnings[0].contains("delivery.timeout = \"500ms\""),
        "{stderr}"
    );
    assert!(
        warnings[1].contains("reconciler.sending_timeout = \"1h\""),
        "{stderr}"
    );
    // No key file: secrets are stored in plain.
    assert!(warnings[2].contains("secrets.key_file"), "{stderr}");
    assert!(stderr.contains("valid, with 3 warnings"), "{stderr}");
}

#[test]
fn check_config_prints_durations_as_written_not_in_days() {
    let out = check_config(
        "[reconciler]\nsending_timeout = \"48h\"\ninterval = \"90s\"\n[delivery]\nretry_schedule = [\"1500ms\", \"10h\"]\n",
        None,
    );
    let t = effective(&out);
    assert_eq!(
        get(&t, "reconciler", "sending_timeout").as_str(),
        Some("48h")
    );
    assert_eq!(get(&t, "reconciler", "interval").as_str(), Some("90s"));
    let schedule: Vec<&str> = get(&t, "delivery", "retry_schedule")
        .as_array()
        .expect("retry_schedule is an array")
        .iter()
        .filter_map(toml::Value::as_str)
        .collect();
    assert_eq!(schedule, ["1500ms", "10h"]);
}

#[test]
fn the_default_lock_key_follows_the_schema() {
    let t = effective(&check_config("[database]\nschema = \"billing\"\n", None));
    assert_eq!(
        get(&t, "reconciler", "lock_key").as_str(),
        Some("billing.event_handler.reconcile_lock")
    );
}

#[test]
fn a_takeover_bound_that_would_fence_healthy_leaders_is_refused() {
    let out = check_config("[reconciler]\ntakeover_after = \"2s\"\n", None);
    assert_rejected(
        &out,
        &[
            "reconciler.takeover_after = \"2s\"",
            "heartbeats every second",
        ],
    );
    let t = effective(&check_config("", None));
    assert_eq!(
        get(&t, "reconciler", "takeover_after").as_str(),
        Some("10s")
    );
    assert_eq!(
        get(&t, "database", "tcp_user_timeout").as_str(),
        Some("30s")
    );
}

#[test]
fn tcp_settings_out_of_range_are_refused() {
    let out = check_config("[database]\nkeepalives_count = 0\n", None);
    assert_rejected(
        &out,
        &["database.keepalives_count = 0", "between 1 and 127"],
    );
    let out = check_config("[database]\nkeepalives_idle = \"1500ms\"\n", None);
    assert_rejected(&out, &["database.keepalives_idle", "whole seconds"]);
}
