//! The daemon (`run`) as an operator runs it: a child process of the real
//! binary against a real PostgreSQL and a real HTTP receiver. Shutdown on
//! SIGTERM during slow deliveries, start-up while the database is down,
//! refusing an unmigrated schema, systemd notifications through a datagram
//! socket, and the metrics/health server. The static build is checked by an
//! ignored test (slow; `.ci/run` runs the script itself).

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use notification_reconciler::lock::derive_key;
use support::daemon::{tail, wait_until, Daemon};
use support::fixtures::{count_state, lock_is_free, seed, LOCK_KEY};
use support::net::{free_addr, http_get};
use support::{fresh_db, migrated_db, Cluster, Receiver, Script};

const LONG: Duration = Duration::from_secs(90);

/// Starts `run` with a config file holding `url` and `extra` TOML (which
/// must not repeat `[database]`), `DATABASE_URL` set to `url` and logging at
/// info, plus environment `env`.
fn start(url: &str, extra: &str, env: &[(&str, &str)]) -> Daemon {
    let config = format!("[database]\nurl = \"{url}\"\nconnect_timeout = \"2s\"\n{extra}");
    let mut all = vec![("DATABASE_URL", url), ("RUST_LOG", "info")];
    all.extend_from_slice(env);
    Daemon::run("daemon", &config, &all)
}

/// A minimal Prometheus/OpenMetrics text parser: every sample line as
/// (`name{labels}`, value); panics on a line that is not a comment or a
/// sample, or on a missing `# EOF`.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    assert!(
        text.trim_end().ends_with("# EOF"),
        "no # EOF at the end:\n{text}"
    );
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {l:?}"));
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {l:?}"
            );
            if name_end < series.len() {
                assert!(series.ends_with('}'), "unclosed labels in {l:?}");
            }
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {l:?}: {e}"));
            (series.to_string(), value)
        })
        .collect()
}

/// The value of series `series` in parsed metrics.
fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no {series} in {samples:?}"))
        .1
}

/// Sums "<n> <label>" over the daemon's "leading ok:" summary lines (one
/// per interval in which deliveries finished).
fn summed_from_log(log: &str, label: &str) -> u64 {
    let needle = format!(" {label},");
    log.lines()
        .filter(|l| l.contains("leading ok:"))
        .map(|l| {
            let at = l
                .find(&needle)
                .unwrap_or_else(|| panic!("no {label:?} in {l:?}"));
            l[..at]
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no count before {label:?} in {l:?}"))
        })
        .sum()
}

#[test]
fn sigterm_during_slow_deliveries_exits_0_records_in_flight_and_frees_the_lock() {
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200).with_latency(Duration::from_secs(2)));
    let total = 12;
    seed(&mut db.client(), &receiver.url(), total);
    let mut daemon = start(
        &db.url,
        "[reconciler]\ninterval = \"1s\"\nworkers = 4\n[delivery]\ntimeout = \"20s\"\n",
        &[],
    );
    assert!(
        receiver.wait_for(4, LONG),
        "4 deliveries never arrived; stderr:\n{}",
        daemon.stderr()
    );
    daemon.stop(LONG);

    let sent = receiver.ids();
    assert!(
        sent.len() < total as usize,
        "paging did not stop: all {} events were sent",
        sent.len()
    );
    let mut client = db.client();
    for id in &sent {
        let id: uuid::Uuid = id.parse().expect("webhook-id is a uuid");
        let row = client
            .query_one(
                "SELECT state, attempt_count FROM notification.delivery_status WHERE event_id = $1",
                &[&id],
            )
            .expect("the delivered event's status");
        let (state, attempts): (String, i32) = (row.get(0), row.get(1));
        assert!(
            state == "SUCCESS" || attempts > 0,
            "in-flight delivery of {id} was not recorded: {state}, {attempts} attempts"
        );
    }
    assert!(
        lock_is_free(&db.url, derive_key(LOCK_KEY)),
        "the leader lock is still held after exit"
    );
    assert!(daemon.stderr().contains("shutting down"));
}

#[test]
fn run_refuses_an_unmigrated_schema_naming_migrate() {
    let db = fresh_db();
    let mut daemon = start(&db.url, "", &[]);
    let status = daemon.wait(LONG);
    assert_eq!(status.code(), Some(1), "stderr:\n{}", daemon.stderr());
    let err = daemon.stderr();
    assert!(err.contains("notification-reconciler migrate"), "{err}");
}

#[test]
fn run_started_while_the_database_is_down_keeps_running_and_delivers_once_it_is_up() {
    let cluster = Cluster::prepare_without_start();
    let receiver = Receiver::start(Script::status(200));
    let metrics = free_addr();
    let mut daemon = start(
        &cluster.url_for("nr"),
        &format!("[reconciler]\ninterval = \"500ms\"\n[metrics]\nlisten = \"{metrics}\"\n"),
        &[],
    );
    assert!(
        daemon.wait_line("database unavailable at start-up", LONG),
        "no start-up error line; stderr:\n{}",
        daemon.stderr()
    );
    let (code, body) = http_get(metrics, "/healthz").expect("healthz answers while the DB is down");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("database"), "{body}");

    cluster.start();
    // Migrate and seed under another name, then rename: the daemon never
    // sees a database that exists but is not migrated yet.
    let mut admin = postgres::Client::connect(&cluster.url(), postgres::NoTls).expect("admin");
    admin
        .batch_execute("CREATE DATABASE nr_staging")
        .expect("create staging");
    {
        let mut staging =
            postgres::Client::connect(&cluster.url_for("nr_staging"), postgres::NoTls)
                .expect("connect staging");
        notification_reconciler::db::migrate::run(&mut staging, "notification").expect("migrate");
        seed(&mut staging, &receiver.url(), 20);
    }
    admin
        .batch_execute("ALTER DATABASE nr_staging RENAME TO nr")
        .expect("rename staging");

    let mut client =
        postgres::Client::connect(&cluster.url_for("nr"), postgres::NoTls).expect("connect nr");
    wait_until(
        "20 deliveries to succeed",
        LONG,
        || count_state(&mut client, "SUCCESS") == 20,
        || tail(&daemon.stderr(), 40),
    );
    assert!(daemon.running(), "the daemon exited: {}", daemon.stderr());
    assert!(daemon.stderr().contains("started:"));
    wait_until(
        "/healthz 200",
        LONG,
        || http_get(metrics, "/healthz").is_some_and(|(c, _)| c == 200),
        || tail(&daemon.stderr(), 40),
    );
    daemon.stop(LONG);
}

#[test]
fn metrics_match_the_interval_reports_and_healthz_turns_503_when_the_database_stops() {
    let cluster = Cluster::start_dedicated();
    let mut client = postgres::Client::connect(&cluster.url(), postgres::NoTls).expect("connect");
    notification_reconciler::db::migrate::run(&mut client, "notification").expect("migrate");
    // Every event fails once (retry scheduled), then succeeds.
    let receiver = Receiver::start(Script::sequence_per_id(vec![500, 200]));
    let total = 30;
    seed(&mut client, &receiver.url(), total);
    let metrics = free_addr();
    let mut daemon = start(
        &cluster.url(),
        &format!(
            "[reconciler]\ninterval = \"300ms\"\nworkers = 3\n\
             [delivery]\nretry_schedule = [\"1s\", \"1s\"]\nbreaker_failures = 0\n\
             [metrics]\nlisten = \"{metrics}\"\n"
        ),
        &[],
    );
    let delivered = "notification_reconciler_deliveries_total{outcome=\"delivered\"}";
    let mut samples = Vec::new();
    wait_until(
        "the metrics to count every delivery",
        LONG,
        || {
            samples = http_get(metrics, "/metrics")
                .map(|(_, body)| parse_metrics(&body))
                .unwrap_or_default();
            samples
                .iter()
                .any(|(s, v)| s == delivered && *v == total as f64)
        },
        || tail(&daemon.stderr(), 40),
    );
    assert_eq!(count_state(&mut client, "SUCCESS"), total as i64);
    // Each interval's summary is logged at the next tick; wait for those
    // lines to be in the captured stderr.
    let mut log = String::new();
    wait_until(
        "the interval summaries of every delivery",
        LONG,
        || {
            log = daemon.stderr();
            summed_from_log(&log, "delivered") >= total as u64
        },
        || tail(&daemon.stderr(), 40),
    );
    let outcome = |o: &str| {
        sample(
            &samples,
            &format!("notification_reconciler_deliveries_total{{outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(
        outcome("delivered") as u64,
        summed_from_log(&log, "delivered")
    );
    assert_eq!(
        outcome("retry_scheduled") as u64,
        summed_from_log(&log, "retry scheduled")
    );
    assert_eq!(outcome("retry_scheduled"), total as f64);
    assert_eq!(outcome("failed") as u64, summed_from_log(&log, "failed"));
    assert_eq!(outcome("changed_concurrently"), 0.0);
    assert!(
        sample(
            &samples,
            "notification_reconciler_wakeups_total{cause=\"interval\"}"
        ) >= 1.0
    );
    // Every event's first attempt is in the latency histogram, once.
    assert_eq!(
        sample(
            &samples,
            "notification_reconciler_first_attempt_latency_seconds_count"
        ),
        total as f64
    );
    assert_eq!(
        sample(&samples, "notification_reconciler_deliveries_in_flight"),
        0.0
    );
    assert_eq!(
        sample(&samples, "notification_reconciler_worker_panics_total"),
        0.0
    );
    assert_eq!(sample(&samples, "notification_reconciler_lock_held"), 1.0);
    assert!(samples
        .iter()
        .any(|(s, v)| s.starts_with("notification_reconciler_build_info{version=") && *v == 1.0));
    let (code, body) = http_get(metrics, "/healthz").expect("healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));

    drop(client);
    cluster.stop();
    let mut last = (0, String::new());
    wait_until(
        "/healthz 503 after the database stopped",
        LONG,
        || {
            last = http_get(metrics, "/healthz").unwrap_or_default();
            last.0 == 503
        },
        || tail(&daemon.stderr(), 40),
    );
    assert!(last.1.contains("database"), "{}", last.1);
    assert!(daemon.running(), "the daemon exited: {}", daemon.stderr());
    assert!(daemon.wait_line("database unavailable", LONG));
    daemon.stop(LONG);
}

#[test]
fn sd_notify_sends_ready_watchdog_status_and_stopping() {
    let db = migrated_db();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    // A long interval: watchdog pings must come from the leader's loop.
    let mut daemon = start(
        &db.url,
        "[reconciler]\ninterval = \"1h\"\n",
        &[
            ("NOTIFY_SOCKET", path.to_str().expect("utf-8 path")),
            ("WATCHDOG_USEC", "600000"),
        ],
    );
    let mut got: Vec<String> = Vec::new();
    let receive_until = |what: &str, got: &mut Vec<String>, done: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + LONG;
        let mut buf = [0u8; 4096];
        while !done(got) {
            assert!(
                Instant::now() < deadline,
                "no {what}; got {got:?}; stderr:\n{}",
                daemon.stderr()
            );
            if let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                got.extend(text.lines().map(str::to_owned));
            }
        }
    };
    receive_until("READY=1", &mut got, &|g| g.iter().any(|l| l == "READY=1"));
    receive_until("two WATCHDOG=1 after READY=1", &mut got, &|g| {
        let ready = g.iter().position(|l| l == "READY=1").unwrap_or(usize::MAX);
        g.iter()
            .skip(ready)
            .filter(|l| l.as_str() == "WATCHDOG=1")
            .count()
            >= 2
    });
    receive_until("STATUS=leading", &mut got, &|g| {
        g.iter().any(|l| l.starts_with("STATUS=leading"))
    });
    daemon.term();
    receive_until("STOPPING=1", &mut got, &|g| {
        g.iter().any(|l| l == "STOPPING=1")
    });
    assert_eq!(daemon.wait(LONG).code(), Some(0));
}

#[test]
#[ignore = "slow (a full release build); .ci/run runs scripts/build-static.sh itself"]
fn static_build_script_makes_a_static_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/build-static.sh"))
        .current_dir(root)
        .output()
        .expect("run scripts/build-static.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "build-static.sh failed:\n{text}");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let binary = root
        .join(target)
        .join("x86_64-unknown-linux-gnu/release/notification-reconciler");
    let file = Command::new("file")
        .arg(&binary)
        .output()
        .expect("run file");
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "{file}"
    );
}
