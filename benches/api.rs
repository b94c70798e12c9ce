//! The management API benchmark of docs/benchmarks.md ("API"): the real
//! binary (`run` with `api.listen`, standing by: the benchmark holds the
//! leader lock so no delivery competes for the CPU) against a throw-away
//! PostgreSQL from the test support.
//!
//! 1. `POST /v1/namespaces/{ns}/events` from 8 and 64 concurrent keep-alive
//!    clients against direct `enqueue_event` calls on 8 and 64 connections
//!    (each an event with one PENDING delivery), for a fixed time each;
//!    target: the API's rate ≥ 0.5× the direct rate. The daemon's RSS is
//!    sampled during the 64-client run; target: ≤ 16 MiB above its RSS
//!    before the runs.
//! 2. `GET /v1/namespaces/{ns}/events/{id}` of random events with
//!    1,000,000 stored (each with a delivery and two attempts), from one
//!    keep-alive client: p50/p99; target p99 ≤ 5 ms.
//!
//! `cargo bench --bench api` runs the full sizes (a few minutes); `-- --tiny`
//! runs small sizes and checks only that every request succeeded (what CI
//! runs). Timing targets are reported, never asserted. A/B:
//! `NR_BENCH_BASE=path` runs another build (its own database, migrated by
//! it, with the config it knows) beside this one, the two measured in
//! turn, `NR_BENCH_ROUNDS` times (default 1); `NR_BENCH_POST_ONLY=1`
//! skips the GETs (and their million-event seeding).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::api::daemon_with_api_of;
use support::bin::Bin;

const NS: &str = "bench";
const TYPE: &str = "bench.created";

/// One build under measurement: its own database (migrated by it), its
/// daemon serving the API (standing by: the benchmark holds the leader
/// lock), its token, and the ids of its seeded events.
struct Site {
    name: String,
    db: support::TestDb,
    _lock: postgres::Client,
    daemon: support::daemon::Daemon,
    base: String,
    token: String,
    ids: Vec<String>,
}

impl Site {
    /// `program` = `None`: this build, with secrets encrypted at rest and
    /// the audit trail (the shape a careful deployment runs); another
    /// build runs with the config it knows.
    fn start(name: &str, program: Option<&Path>, keys: &Path) -> Site {
        let db = match program {
            None => support::migrated_db(),
            Some(p) => {
                let db = support::fresh_db();
                Bin::for_database(&db.url).program(p).ok(&["migrate"]);
                db
            }
        };
        let bin = |db: &support::TestDb| {
            let b = Bin::for_database(&db.url);
            match program {
                Some(p) => b.program(p),
                None => b,
            }
        };
        // Hold the leader lock: the daemon stands by and only serves the API.
        let mut lock = db.client();
        let key =
            notification_reconciler::lock::derive_key("notification.event_handler.reconcile_lock");
        let held: bool = lock
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .expect("bench: lock")
            .get(0);
        assert!(held, "bench: cannot hold the leader lock");
        // The benchmark is one client far above the default per-token rate.
        let extra = match program {
            None => {
                let key_file = keys.join(format!("{name}.key"));
                std::fs::write(
                    &key_file,
                    base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        rand::random::<[u8; 32]>(),
                    ),
                )
                .expect("bench: key file");
                format!(
                    "token_rate_limit = \"10000/s\"\n[secrets]\nkey_file = {:?}\n",
                    key_file.display().to_string()
                )
            }
            Some(_) => String::new(),
        };
        let (daemon, api) = daemon_with_api_of(name, program, &db.url, &extra);
        let b = bin(&db);
        let token = b
            .ok(&["token", "create", "--name", "bench", "--namespace", NS])
            .trim()
            .to_string();
        let channel = b.ok(&[
            "channel",
            "create",
            "--namespace",
            NS,
            "--name",
            "c",
            "--url",
            "http://127.0.0.1:9/",
        ]);
        b.ok(&[
            "rule",
            "create",
            "--namespace",
            NS,
            "--name",
            "r",
            "--event-type",
            TYPE,
            "--channel",
            channel.trim(),
        ]);
        Site {
            name: name.to_string(),
            db,
            _lock: lock,
            daemon,
            base: format!("http://{api}"),
            token,
            ids: Vec::new(),
        }
    }

    /// `samples` GETs of random seeded events: sorted latencies in ms.
    fn gets(&self, samples: usize) -> Vec<f64> {
        let agent = agent();
        let mut lat = Vec::new();
        for i in 0..samples {
            let id = &self.ids[(i * 7919) % self.ids.len()];
            let t = Instant::now();
            let r = agent
                .get(&format!("{}/v1/namespaces/{NS}/events/{id}", self.base))
                .header("authorization", &format!("Bearer {}", self.token))
                .call()
                .expect("bench: GET");
            let status = r.status().as_u16();
            let _ = r.into_body().read_to_vec();
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, 200, "bench: GET event {id}");
        }
        lat.sort_by(f64::total_cmp);
        lat
    }
}

fn main() {
    let tiny = std::env::args().any(|a| a == "--tiny");
    let (run_for, stored) = if tiny {
        (Duration::from_secs(1), 2_000)
    } else {
        (Duration::from_secs(10), 1_000_000)
    };
    // A/B: NR_BENCH_BASE names another build (e.g. the commit before a
    // change); its runs alternate with this build's, NR_BENCH_ROUNDS times.
    let base_program = std::env::var_os("NR_BENCH_BASE").map(PathBuf::from);
    let rounds: usize = std::env::var("NR_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let keys = tempfile::tempdir().expect("bench: key dir");
    let mut sites = vec![Site::start("this build", None, keys.path())];
    if let Some(p) = &base_program {
        sites.push(Site::start(
            &format!("base {}", p.display()),
            Some(p),
            keys.path(),
        ));
    }
    let rss_before: Vec<u64> = sites.iter().map(|s| rss_kib(s.daemon.pid())).collect();
    println!(
        "machine: {} CPUs; daemon RSS before the runs: {:?} KiB",
        cpus(),
        rss_before
    );
    let mut peak_rss = rss_before.clone();

    for round in 1..=rounds {
        println!("\n1. POST events for {run_for:?} per run (round {round} of {rounds})");
        for clients in [8usize, 64] {
            for (i, site) in sites.iter().enumerate() {
                let direct = direct_rate(&site.db.url, clients, run_for);
                let (via_api, rss) =
                    api_rate(&site.base, &site.token, clients, run_for, site.daemon.pid());
                if clients == 64 {
                    peak_rss[i] = peak_rss[i].max(rss);
                }
                println!(
                    "   {:<14} {clients:>2} clients: direct enqueue_event {direct:>8.0}/s, API {via_api:>8.0}/s = {:.2}x (target >= 0.5x)",
                    site.name,
                    via_api / direct
                );
            }
        }
    }
    for (i, site) in sites.iter().enumerate() {
        println!(
            "   {}: daemon RSS {} KiB before, {} KiB peak during the 64-client runs: +{:.1} MiB (target <= 16 MiB)",
            site.name,
            rss_before[i],
            peak_rss[i],
            (peak_rss[i].saturating_sub(rss_before[i])) as f64 / 1024.0
        );
    }

    if std::env::var_os("NR_BENCH_POST_ONLY").is_some() {
        println!("\n(NR_BENCH_POST_ONLY: GETs skipped)");
        return;
    }
    println!("\n2. GET event by id with {stored} events stored");
    for site in &mut sites {
        let t = Instant::now();
        site.ids = seed(&site.db, stored);
        println!(
            "   {}: seeded in {:.1} s",
            site.name,
            t.elapsed().as_secs_f64()
        );
    }
    let samples = if tiny { 200 } else { 5_000 };
    for round in 1..=rounds {
        for site in &sites {
            let lat = site.gets(samples);
            println!(
                "   {:<14} round {round}: {} GETs: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= 5 ms)",
                site.name,
                samples,
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                lat.last().copied().unwrap_or(0.0)
            );
        }
    }
    if tiny {
        println!("\n(tiny sizes: targets not judged)");
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The resident set of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Events/s of `clients` connections calling `enqueue_event` in autocommit.
fn direct_rate(url: &str, clients: usize, run_for: Duration) -> f64 {
    let done = AtomicU64::new(0);
    let until = Instant::now() + run_for;
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let mut c = support::pg::connect(url);
                let stmt = c
                    .prepare("SELECT notification.enqueue_event($1, $2, $3::jsonb, '{}'::jsonb)")
                    .expect("bench: prepare");
                let payload = serde_json::json!({"amount": 1, "note": "direct"});
                while Instant::now() < until {
                    c.query(&stmt, &[&NS, &TYPE, &payload])
                        .expect("bench: enqueue");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / run_for.as_secs_f64()
}

/// Events/s of `clients` keep-alive clients POSTing events, and the
/// daemon's highest RSS sampled meanwhile.
fn api_rate(base: &str, token: &str, clients: usize, run_for: Duration, pid: u32) -> (f64, u64) {
    let done = AtomicU64::new(0);
    let until = Instant::now() + run_for;
    let url = format!("{base}/v1/namespaces/{NS}/events");
    let auth = format!("Bearer {token}");
    let body = format!(r#"{{"type": "{TYPE}", "payload": {{"amount": 1, "note": "api"}}}}"#);
    let mut peak = 0;
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let agent = agent();
                while Instant::now() < until {
                    let r = agent
                        .post(&url)
                        .header("authorization", &auth)
                        .header("content-type", "application/json")
                        .send(body.as_str())
                        .expect("bench: POST");
                    let status = r.status().as_u16();
                    let _ = r.into_body().read_to_vec();
                    assert_eq!(status, 201, "bench: POST answered {status}");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while Instant::now() < until {
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    (
        done.load(Ordering::Relaxed) as f64 / run_for.as_secs_f64(),
        peak,
    )
}

/// `n` finished events of the namespace, each with one SUCCESS delivery
/// and two recorded attempts, written server-side; returns a sample of ids.
fn seed(db: &support::TestDb, n: usize) -> Vec<String> {
    let mut c = db.client();
    c.batch_execute(&format!(
        "SET search_path = notification;
         INSERT INTO event (namespace, type, payload, created_at)
         SELECT '{NS}', '{TYPE}', jsonb_build_object('i', g, 'amount', g % 1000),
                now() - (g || ' seconds')::interval
         FROM generate_series(1, {n}) g;
         INSERT INTO delivery_status (namespace, event_id, channel_id, event_created_at, state,
                                      attempts, attempt_count, created_at, updated_at)
         SELECT e.namespace, e.id, (SELECT id FROM channel LIMIT 1), e.created_at, 'SUCCESS',
                jsonb_build_array(
                  jsonb_build_object('timestamp', e.created_at, 'state', 'SENDING', 'http_status', 500,
                                     'duration_ms', 3, 'url', 'http://127.0.0.1:9/', 'response_body', 'no', 'error', null),
                  jsonb_build_object('timestamp', e.created_at, 'state', 'SUCCESS', 'http_status', 200,
                                     'duration_ms', 2, 'url', 'http://127.0.0.1:9/', 'response_body', 'ok', 'error', null)),
                2, e.created_at, e.created_at
         FROM event e WHERE e.namespace = '{NS}' AND e.payload ? 'i';
         ANALYZE event; ANALYZE delivery_status;"
    ))
    .expect("bench: seed");
    c.query(
        "SELECT id::text FROM notification.event WHERE payload ? 'i' ORDER BY random() LIMIT 5000",
        &[],
    )
    .expect("bench: ids")
    .iter()
    .map(|r| r.get(0))
    .collect()
}
