//! The Svix provider benchmark of docs/benchmarks.md (`SVIX_SERVER=path
//! cargo bench --bench svix`): 5,000 events to one loopback receiver
//! through a real Svix OSS server, two ways, each on a fresh Svix server
//! (its own database on the same throw-away PostgreSQL):
//!
//! 1. Svix fed directly by its API: 16 threads post the 5,000 messages
//!    (`POST /api/v1/app/{app}/msg`), timed from the first post until the
//!    receiver has them all;
//! 2. provider mode: the daemon (`run`, this build's binary) with
//!    `delivery.provider = "svix"`, 16 workers; the 5,000 events enqueued
//!    in one statement (`enqueue_event`), timed until every delivery is
//!    `SUCCESS` in our record (Svix's outcome polled back), and until the
//!    receiver has them all.
//!
//! Prints deliveries/s of each, the ratio, and CPU seconds of Svix and of
//! the daemon (our added CPU per delivery). Without `SVIX_SERVER` it prints
//! SKIPPED and exits 0.
//!
//! `NR_BENCH_WORKERS` (default 16): the daemon's workers.
//! `NR_BENCH_LOG` (default `warn`): the daemon's log level; at `debug` the
//! bench counts the polls settled by batch reads and by their own calls.
//! `NR_BENCH_BINS` (comma-separated paths): provider mode once with each
//! of these daemon binaries instead of this build's, in that order, each
//! on a fresh Svix server, after the one direct run (A/B against another
//! build; the command line that sets up channels is this build's).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::svix::{binary, SvixServer};
use support::{migrated_db, Receiver, Script};

const EVENTS: usize = 5_000;
const NS: &str = "bench";

/// CPU seconds (user + system) of `pid` so far (`/proc/<pid>/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / 100.0
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Run {
    seconds: f64,
    receiver_seconds: f64,
    svix_cpu: f64,
    daemon_cpu: f64,
}

fn direct(bin: &std::path::Path) -> Run {
    let svix = SvixServer::start(bin);
    let receiver = Receiver::start(Script::status(200));
    let (code, body) = svix.post("/api/v1/app", &serde_json::json!({"name": NS, "uid": NS}));
    assert!((200..300).contains(&code), "{code} {body}");
    let (code, body) = svix.post(
        &format!("/api/v1/app/{NS}/endpoint"),
        &serde_json::json!({"uid": "ep", "url": receiver.url(), "channels": ["ep"]}),
    );
    assert!((200..300).contains(&code), "{code} {body}");
    let svix_pid = svix.pid().expect("svix runs");
    let cpu0 = cpu_seconds(svix_pid);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..16 {
            let svix = &svix;
            scope.spawn(move || {
                // One keep-alive agent per thread, as a producer would have.
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let url = format!("{}/api/v1/app/{NS}/msg?with_content=false", svix.url());
                let auth = format!("Bearer {}", svix.token);
                for i in (t..EVENTS).step_by(16) {
                    let post = |body: &serde_json::Value| {
                        let mut r = agent
                            .post(&url)
                            .header("authorization", &auth)
                            .header("content-type", "application/json")
                            .send(body.to_string())
                            .expect("post a message");
                        let status = r.status().as_u16();
                        (status, r.body_mut().read_to_string().unwrap_or_default())
                    };
                    let (code, body) = post(&serde_json::json!({
                        "eventType": "invoice.paid",
                        "eventId": format!("direct-{i}"),
                        "channels": ["ep"],
                        "payload": {"id": i.to_string(), "type": "invoice.paid",
                                    "timestamp": "2026-12-07T00:00:00Z", "data": {"n": i}},
                    }));
                    assert!((200..300).contains(&code), "{code} {body}");
                }
            });
        }
    });
    wait(
        "the receiver to get every message",
        Duration::from_secs(600),
        || receiver.count() >= EVENTS,
    );
    let seconds = started.elapsed().as_secs_f64();
    Run {
        seconds,
        receiver_seconds: seconds,
        svix_cpu: cpu_seconds(svix_pid) - cpu0,
        daemon_cpu: 0.0,
    }
}

fn provider(bin: &std::path::Path, workers: usize, program: Option<&std::path::Path>) -> Run {
    let svix = SvixServer::start(bin);
    let receiver = Receiver::start(Script::status(200));
    let db = migrated_db();
    let config = format!(
        "[database]\nurl = \"{}\"\n\n[reconciler]\ninterval = \"1s\"\nworkers = {workers}\n\n\
         [delivery]\nprovider = \"svix\"\nallow_networks = [\"127.0.0.0/8\"]\n\
         max_in_flight_per_channel = {workers}\nbreaker_failures = 0\n\n[log]\nlevel = \"{}\"\n\n{}",
        db.url,
        std::env::var("NR_BENCH_LOG").unwrap_or_else(|_| "warn".to_owned()),
        svix.config_section()
    );
    let cli = support::bin::Bin::with_config(&config);
    let channel = cli.create_channel(NS, "hook", &receiver.url(), &[]);
    cli.create_rule(NS, "r", "invoice.paid", &[&channel], None);
    let daemon = Daemon::spawn_program("bench", program, &config, &["run"], &[]);
    let mut client = db.client();
    std::thread::sleep(Duration::from_secs(2));
    let svix_pid = svix.pid().expect("svix runs");
    let (svix0, ours0) = (cpu_seconds(svix_pid), cpu_seconds(daemon.pid()));
    let started = Instant::now();
    let n = i32::try_from(EVENTS).unwrap_or(i32::MAX);
    client
        .execute(
            "SELECT notification.enqueue_event($1, 'invoice.paid', jsonb_build_object('n', g))
             FROM generate_series(1, $2) g",
            &[&NS, &n],
        )
        .expect("enqueue");
    let mut receiver_seconds = None;
    wait("every delivery SUCCESS", Duration::from_secs(900), || {
        if receiver_seconds.is_none() && receiver.count() >= EVENTS {
            receiver_seconds = Some(started.elapsed().as_secs_f64());
        }
        support::fixtures::count_state(&mut client, "SUCCESS") == EVENTS as i64
    });
    let seconds = started.elapsed().as_secs_f64();
    let run = Run {
        seconds,
        receiver_seconds: receiver_seconds.unwrap_or(seconds),
        svix_cpu: cpu_seconds(svix_pid) - svix0,
        daemon_cpu: cpu_seconds(daemon.pid()) - ours0,
    };
    assert_eq!(receiver.count(), EVENTS, "each event once");
    let log = daemon.stderr();
    if log.contains("Svix poll of") {
        eprintln!(
            "  polls: {} settled by {} batch reads, {} by their own calls",
            log.matches("settled by a batch read").count(),
            log.matches("Svix batch read of endpoint").count(),
            log.matches("by its own calls").count()
        );
    }
    drop(daemon);
    run
}

fn main() {
    let Some(bin) = binary("benches/svix.rs") else {
        return;
    };
    // `NR_BENCH_WORKERS` (default 16): the daemon's workers.
    let workers = std::env::var("NR_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(16);
    let programs: Vec<Option<std::path::PathBuf>> = match std::env::var("NR_BENCH_BINS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|p| Some(std::path::PathBuf::from(p.trim())))
            .collect(),
        _ => vec![None],
    };
    let direct = direct(&bin);
    let runs: Vec<(String, Run)> = programs
        .iter()
        .map(|p| {
            let name = p.as_ref().map_or_else(
                || "provider mode (daemon → Svix)".to_owned(),
                |p| format!("provider mode ({})", p.display()),
            );
            (name, provider(&bin, workers, p.as_deref()))
        })
        .collect();
    let rate = |r: &Run| EVENTS as f64 / r.seconds;
    println!(
        "Svix benchmark: {EVENTS} events, one receiver on 127.0.0.1, 16 API senders, {workers} daemon workers"
    );
    println!(
        "| mode | end to end | deliveries/s | receiver has all at | Svix CPU s | daemon CPU s | daemon CPU per delivery | ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let direct_row = ("Svix fed by its API".to_owned(), &direct);
    for (name, r) in std::iter::once(direct_row).chain(runs.iter().map(|(n, r)| (n.clone(), r))) {
        println!(
            "| {name} | {:.1} s | {:.0} | {:.1} s | {:.1} | {:.1} | {:.2} ms | {:.2}x |",
            r.seconds,
            rate(r),
            r.receiver_seconds,
            r.svix_cpu,
            r.daemon_cpu,
            r.daemon_cpu * 1000.0 / EVENTS as f64,
            rate(r) / rate(&direct)
        );
    }
}
