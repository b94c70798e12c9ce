//! Scenario 14, the durable drain (`--only durable`): what one delivery
//! costs when every commit is durable. A cluster of its own at PostgreSQL's
//! defaults (fsync and synchronous commit on; the test support's shared
//! cluster has them off), a backlog of deliveries to one channel answered at
//! once by the bench's receiver, drained by the daemon binary (`run`; this
//! build's, or `NR_BENCH_BIN`'s for an A/B) with 16 and then 64 workers.
//!
//! Reported per run: deliveries/s (daemon start to the last outcome
//! recorded); the machine's busy CPU (`/proc/stat`), PostgreSQL's (the
//! postmaster and every child of it, `/proc/<pid>/stat`, exited backends
//! through the postmaster's children's times) and the daemon's, each per
//! delivery; the WAL written per delivery (`pg_current_wal_lsn`); and, in
//! the same run, pgbench's single-row `UPDATE` rate (autocommit, each
//! connection on its own row) with as many connections as workers and its
//! PostgreSQL CPU per commit. The daemon gets the same config from either
//! build, loopback allowed, once with the default per-channel cap (what a
//! new user runs: a quarter of the workers, which this build lends beyond
//! when the others idle) and once with `max_in_flight_per_channel =
//! workers`, so that the one channel may use every worker with either
//! build and the run measures the database path, not the cap.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::support::Cluster;
use super::{push, seed_client, Loopback, Row};

/// Where pgbench lives (PostgreSQL 15's client tools).
const PGBENCH: &str = "/usr/lib/postgresql/15/bin/pgbench";

/// The durable drain's sizes.
pub struct DurableSizes {
    deliveries: u64,
    workers: Vec<usize>,
    pgbench_seconds: u64,
}

impl DurableSizes {
    /// 20,000 deliveries, 16 and 64 workers, 5 s of pgbench.
    pub fn full() -> DurableSizes {
        DurableSizes {
            deliveries: 20_000,
            workers: vec![16, 64],
            pgbench_seconds: 5,
        }
    }

    /// CI: 500 deliveries, 1 s of pgbench.
    pub fn tiny() -> DurableSizes {
        DurableSizes {
            deliveries: 500,
            workers: vec![16, 64],
            pgbench_seconds: 1,
        }
    }
}

/// CPU seconds (user + system) from `/proc/<pid>/stat`: the process's own
/// and its waited-for children's; zeros when it is gone.
pub fn process_ticks(pid: u32) -> (f64, f64) {
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
    (
        (ticks(14) + ticks(15)) / 100.0,
        (ticks(16) + ticks(17)) / 100.0,
    )
}

/// The parent pid of `pid` (`/proc/<pid>/stat`'s 4th field).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The CPU seconds the whole cluster has used so far: the postmaster's own
/// and its exited children's, plus every live child's own.
pub fn cluster_cpu_seconds(postmaster: u32) -> f64 {
    let (own, children) = process_ticks(postmaster);
    let mut total = own + children;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if parent_of(pid) == Some(postmaster) {
            total += process_ticks(pid).0;
        }
    }
    total
}

/// The postmaster's pid (first line of `postmaster.pid`).
pub fn postmaster_pid(data: &Path) -> u32 {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        .expect("durable: the postmaster's pid")
}

/// The machine's busy CPU seconds so far (every CPU; `/proc/stat`, ticks of
/// 1/100 s).
pub fn machine_busy_seconds() -> f64 {
    super::machine_cpu_ticks().0 as f64 / 100.0
}

/// The WAL position of the cluster now, as bytes.
pub fn wal_bytes(client: &mut postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
            &[],
        )
        .expect("durable: WAL position")
        .get(0)
}

/// The program under test: `NR_BENCH_BIN`, else this build's binary.
fn program() -> String {
    std::env::var("NR_BENCH_BIN").unwrap_or_else(|_| super::support::bin::BIN.to_string())
}

/// Scenario 14: the durable drain with each worker count.
pub fn durable(sizes: &DurableSizes, rows: &mut Vec<Row>) {
    let cluster = Cluster::start_durable();
    let postmaster = postmaster_pid(cluster.data_dir());
    let receiver = Loopback::start(Duration::ZERO);
    let dir = tempfile::Builder::new()
        .prefix("nr-bench-durable-")
        .tempdir()
        .expect("durable: temp dir");
    let mut admin = super::support::pg::connect(&cluster.url());
    let runs = sizes.workers.iter().flat_map(|&w| [(w, false), (w, true)]);
    for (i, (workers, capped)) in runs.enumerate() {
        let name = format!("durable_{i}");
        let cap = if capped {
            format!("max_in_flight_per_channel = {workers}\n")
        } else {
            String::new()
        };
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("durable: create database");
        let url = cluster.url_for(&name);
        let config = dir.path().join(format!("config-{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = \"{url}\"\npool_size = {}\n\
                 [reconciler]\nworkers = {workers}\ninterval = \"15s\"\n\
                 [delivery]\ntimeout = \"30s\"\nallow_networks = [\"127.0.0.0/8\"]\n\
                 {cap}[log]\nlevel = \"info\"\n",
                workers + 2
            ),
        )
        .expect("durable: config");
        let status = Command::new(program())
            .arg("--config")
            .arg(&config)
            .arg("migrate")
            .stdout(Stdio::null())
            .status()
            .expect("durable: run migrate");
        assert!(status.success(), "durable: migrate failed");
        let mut client = super::support::pg::connect(&url);
        seed_client(&mut client, sizes.deliveries, "PENDING", &receiver.url());
        client
            .batch_execute("CHECKPOINT")
            .expect("durable: checkpoint");
        let (pgbench_rate, pgbench_pg_ms) = pgbench(&cluster, &name, workers, sizes, postmaster);
        client
            .batch_execute("CHECKPOINT")
            .expect("durable: checkpoint");
        let drain = drain(
            &config,
            &mut client,
            &receiver,
            sizes.deliveries,
            postmaster,
        );
        let per = |s: f64| s * 1e3 / sizes.deliveries as f64;
        push(
            rows,
            Row {
                scenario: "14 durable drain",
                setting: format!(
                    "{workers} workers, {}, {} deliveries, fsync on",
                    if capped {
                        "cap = workers"
                    } else {
                        "default cap"
                    },
                    sizes.deliveries
                ),
                result: format!(
                    "{:.0}/s in {:.2} s; CPU/delivery machine {:.3} ms, PostgreSQL {:.3} ms, \
                     ours {:.3} ms; WAL {:.0} B/delivery; pgbench UPDATE {pgbench_rate:.0}/s \
                     at {pgbench_pg_ms:.3} ms PostgreSQL CPU each",
                    sizes.deliveries as f64 / drain.secs,
                    drain.secs,
                    per(drain.machine),
                    per(drain.postgres),
                    per(drain.ours),
                    drain.wal as f64 / sizes.deliveries as f64,
                ),
                target: String::new(),
                met: None,
            },
        );
        drop(client);
        admin
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .expect("durable: drop database");
    }
}

/// What one drain measured (CPU in seconds).
pub struct Measured {
    /// Daemon start to the last outcome recorded.
    pub secs: f64,
    /// The machine's busy CPU.
    pub machine: f64,
    /// The cluster's CPU.
    pub postgres: f64,
    /// The daemon's CPU.
    pub ours: f64,
    /// WAL written.
    pub wal: i64,
}

/// Starts the daemon (`NR_BENCH_BIN`, else this build's) on `config` and
/// waits until every seeded delivery is recorded; stops it.
pub fn drain(
    config: &Path,
    client: &mut postgres::Client,
    receiver: &Loopback,
    deliveries: u64,
    postmaster: u32,
) -> Measured {
    let program = program();
    drain_with(
        Path::new(&program),
        config,
        client,
        receiver,
        deliveries,
        postmaster,
    )
}

/// [`drain`] with the daemon binary `program`.
pub fn drain_with(
    program: &Path,
    config: &Path,
    client: &mut postgres::Client,
    receiver: &Loopback,
    deliveries: u64,
    postmaster: u32,
) -> Measured {
    let before_count = receiver.count.load(Ordering::SeqCst);
    let wal0 = wal_bytes(client);
    let (machine0, pg0) = (machine_busy_seconds(), cluster_cpu_seconds(postmaster));
    let t = Instant::now();
    let mut child = Command::new(program)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("durable: spawn the daemon");
    let deadline = t + Duration::from_secs(600);
    // The receiver's count first (no database reads while most of the
    // drain runs), then the outcomes themselves.
    while receiver.count.load(Ordering::SeqCst) - before_count < deliveries {
        assert!(
            Instant::now() < deadline,
            "durable: not delivered in 10 min"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    super::wait_all_recorded(client, deadline, Duration::from_millis(2), &|left| {
        format!("durable: {left} left after 10 min")
    });
    let secs = t.elapsed().as_secs_f64();
    let ours = process_ticks(child.id()).0;
    let (machine1, pg1) = (machine_busy_seconds(), cluster_cpu_seconds(postmaster));
    let wal1 = wal_bytes(client);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let succeeded: i64 = client
        .query_one(
            "SELECT count(*) FROM notification.delivery_status WHERE state = 'SUCCESS'",
            &[],
        )
        .expect("durable: count succeeded")
        .get(0);
    assert_eq!(
        succeeded as u64, deliveries,
        "durable: every delivery succeeded once"
    );
    Measured {
        secs,
        machine: machine1 - machine0,
        postgres: pg1 - pg0,
        ours,
        wal: wal1 - wal0,
    }
}

/// pgbench's single-row autocommit `UPDATE` rate with `connections`
/// connections (each its own row, prepared statements) on database `name`,
/// and the cluster's CPU per commit in ms.
fn pgbench(
    cluster: &Cluster,
    name: &str,
    connections: usize,
    sizes: &DurableSizes,
    postmaster: u32,
) -> (f64, f64) {
    let mut client = super::support::pg::connect(&cluster.url_for(name));
    client
        .batch_execute(
            "CREATE TABLE public.bench_raw (id int PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO public.bench_raw SELECT g, 0 FROM generate_series(0, 1023) g;",
        )
        .expect("durable: pgbench table");
    let dir = tempfile::tempdir().expect("durable: pgbench dir");
    let script = dir.path().join("update.sql");
    std::fs::write(
        &script,
        "UPDATE public.bench_raw SET n = n + 1 WHERE id = :client_id;\n",
    )
    .expect("durable: pgbench script");
    let pg0 = cluster_cpu_seconds(postmaster);
    let out = Command::new(PGBENCH)
        .args(["-n", "-M", "prepared", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &cluster.port().to_string()])
        .args(["-c", &connections.to_string(), "-j", "2"])
        .args(["-T", &sizes.pgbench_seconds.to_string(), "-f"])
        .arg(&script)
        .arg(name)
        .output()
        .expect("durable: run pgbench");
    let pg = cluster_cpu_seconds(postmaster) - pg0;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "durable: pgbench failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("durable: pgbench printed no {prefix:?}: {text}"))
    };
    let commits = field("number of transactions actually processed:");
    let tps = field("tps =");
    (tps, pg * 1e3 / commits.max(1.0))
}
