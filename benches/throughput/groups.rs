//! Scenario 15, group commit across channels (`--only groups`): the shapes
//! users run, at PostgreSQL's defaults (fsync and synchronous commit on), an
//! instant receiver, 16 and 64 workers: one channel, 20 channels × 1,000
//! events and 1,000 channels × 20 events (20,000 deliveries each; `--tiny`:
//! 500). Each run drains a fresh database with the daemon binary (`run`),
//! and reports deliveries/s, the machine's, PostgreSQL's and our CPU per
//! delivery, WAL per delivery, and from `pg_stat_statements` (with
//! `track_planning`) the statement PostgreSQL spent most time in, its calls
//! and its plan time per call, and the plan time of every statement
//! together per delivery.
//!
//! A/B: `NR_BENCH_BINS="name=path,name=path"` adds other builds (each
//! migrates its own database), run alternately with this build's binary
//! within each round; `NR_BENCH_ROUNDS` (default 3) rounds. To spend the
//! rounds on fewer shapes: `NR_BENCH_CHANNELS="1,20"` (of 1, 20, 1000)
//! and `NR_BENCH_WORKERS="16"`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::durable::{drain_with, postmaster_pid};
use super::support::Cluster;
use super::{push, Loopback, Row};

/// The sizes of the scenario.
pub struct GroupSizes {
    deliveries: u64,
    workers: Vec<usize>,
    rounds: usize,
}

impl GroupSizes {
    /// 20,000 deliveries per run, 16 and 64 workers, `NR_BENCH_ROUNDS`
    /// rounds (3).
    pub fn full() -> GroupSizes {
        GroupSizes {
            deliveries: 20_000,
            workers: env_list("NR_BENCH_WORKERS").unwrap_or_else(|| vec![16, 64]),
            rounds: std::env::var("NR_BENCH_ROUNDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(3),
        }
    }

    /// CI: 500 deliveries, 16 workers, one round.
    pub fn tiny() -> GroupSizes {
        GroupSizes {
            deliveries: 500,
            workers: vec![16],
            rounds: 1,
        }
    }
}

/// The numbers of a comma-separated environment variable, if set.
fn env_list<T: std::str::FromStr>(name: &str) -> Option<Vec<T>> {
    let list = std::env::var(name).ok()?;
    Some(
        list.split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("groups: {name}: {n:?} is not a number"))
            })
            .collect(),
    )
}

/// The builds compared: this one, then `NR_BENCH_BINS`'.
fn builds() -> Vec<(String, PathBuf)> {
    let mut builds = vec![(
        "this build".to_string(),
        PathBuf::from(super::support::bin::BIN),
    )];
    if let Ok(list) = std::env::var("NR_BENCH_BINS") {
        for item in list.split(',').filter(|s| !s.is_empty()) {
            let (name, path) = item
                .split_once('=')
                .expect("groups: NR_BENCH_BINS is name=path,name=path");
            builds.push((name.to_string(), PathBuf::from(path)));
        }
    }
    builds
}

/// Scenario 15.
pub fn groups(sizes: &GroupSizes, rows: &mut Vec<Row>) {
    let cluster = Cluster::start_durable_with(
        "shared_preload_libraries = 'pg_stat_statements'\n\
         pg_stat_statements.track_planning = on\n",
    );
    let postmaster = postmaster_pid(cluster.data_dir());
    let receiver = Loopback::start(Duration::ZERO);
    let dir = tempfile::Builder::new()
        .prefix("nr-bench-groups-")
        .tempdir()
        .expect("groups: temp dir");
    let mut admin = super::support::pg::connect(&cluster.url());
    let n = sizes.deliveries;
    let channels: Vec<u64> = env_list("NR_BENCH_CHANNELS").unwrap_or_else(|| vec![1, 20, 1000]);
    let shapes: Vec<(u64, u64)> = channels
        .iter()
        .map(|&c| c.min(n))
        .map(|c| (c, n / c.max(1)))
        .collect();
    let builds = builds();
    let mut k = 0;
    for round in 0..sizes.rounds {
        for &(channels, events) in &shapes {
            for &workers in &sizes.workers {
                for (build, program) in &builds {
                    k += 1;
                    let name = format!("groups_{k}");
                    admin
                        .batch_execute(&format!("CREATE DATABASE {name}"))
                        .expect("groups: create database");
                    let url = cluster.url_for(&name);
                    let config = dir.path().join(format!("config-{k}.toml"));
                    std::fs::write(
                        &config,
                        format!(
                            "[database]\nurl = \"{url}\"\npool_size = {}\n\
                             [reconciler]\nworkers = {workers}\ninterval = \"15s\"\n\
                             [delivery]\ntimeout = \"30s\"\nallow_networks = [\"127.0.0.0/8\"]\n\
                             [log]\nlevel = \"warn\"\n",
                            workers + 2
                        ),
                    )
                    .expect("groups: config");
                    let status = Command::new(program)
                        .arg("--config")
                        .arg(&config)
                        .arg("migrate")
                        .stdout(Stdio::null())
                        .status()
                        .expect("groups: run migrate");
                    assert!(status.success(), "groups: migrate failed ({build})");
                    let mut client = super::support::pg::connect(&url);
                    seed_channels(&mut client, channels, events, &receiver.url());
                    client
                        .batch_execute(
                            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; CHECKPOINT",
                        )
                        .expect("groups: checkpoint");
                    client
                        .batch_execute("SELECT pg_stat_statements_reset()")
                        .expect("groups: reset statements");
                    let total = channels * events;
                    let m = drain_with(program, &config, &mut client, &receiver, total, postmaster);
                    let plans = plan_times(&mut client, &name);
                    let per = |s: f64| s * 1e3 / total as f64;
                    push(
                        rows,
                        Row {
                            scenario: "15 group commit",
                            setting: format!(
                                "{build}, round {}, {channels} ch × {events}, {workers} workers",
                                round + 1
                            ),
                            result: format!(
                                "{:.0}/s; CPU/delivery machine {:.3} ms, PostgreSQL {:.3} ms, \
                                 ours {:.3} ms; WAL {:.0} B/delivery; {}",
                                total as f64 / m.secs,
                                per(m.machine),
                                per(m.postgres),
                                per(m.ours),
                                m.wal as f64 / total as f64,
                                plans.summary(total),
                            ),
                            target: String::new(),
                            met: None,
                        },
                    );
                    drop(client);
                    admin
                        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
                        .expect("groups: drop database");
                }
            }
        }
    }
}

/// `channels` channels of one rule to `url` (each its own path), and
/// `events` events each due to every one of them.
fn seed_channels(client: &mut postgres::Client, channels: u64, events: u64, url: &str) {
    client
        .batch_execute(&format!(
            "SET search_path = notification;
             INSERT INTO channel (namespace, name, url, signing_secret)
                 SELECT 'bench', 'bench-' || g, '{url}/' || g,
                        'whsec_' || encode(sha256('bench'::bytea), 'base64')
                 FROM generate_series(1, {channels}) g;
             INSERT INTO rule (namespace, name, event_type)
                 VALUES ('bench', 'bench', 'invoice.paid');
             INSERT INTO rule_channel SELECT r.id, c.id FROM rule r, channel c;
             WITH ev AS (
                 INSERT INTO event (namespace, type, rule_id, payload, created_at)
                 SELECT 'bench', 'invoice.paid', (SELECT id FROM rule),
                        jsonb_build_object('invoice', 'in_' || g, 'amount', g % 10000),
                        now() - interval '1 hour' + g * interval '1 microsecond'
                 FROM generate_series(1, {events}) g
                 RETURNING id, created_at
             )
             INSERT INTO delivery_status (namespace, event_id, channel_id, event_created_at,
                                          state, next_attempt_at, clock_started_at)
             SELECT 'bench', ev.id, c.id, ev.created_at, 'PENDING', ev.created_at, now()
             FROM ev, channel c;"
        ))
        .expect("groups: seeding");
    client
        .batch_execute("VACUUM ANALYZE")
        .expect("groups: vacuum");
}

/// What `pg_stat_statements` saw of a drain.
struct Plans {
    /// The statement with the most execution time: its first words, calls,
    /// plans, plan and execution time per call (ms).
    top: Option<(String, i64, i64, f64, f64)>,
    /// Plan time of every statement of the database, ms.
    plan_ms: f64,
}

impl Plans {
    fn summary(&self, deliveries: u64) -> String {
        let all = format!(
            "plan time {:.4} ms/delivery",
            self.plan_ms / deliveries as f64
        );
        match &self.top {
            Some((text, calls, plans, plan, exec)) => format!(
                "{all}; top statement {text:?}: {calls} calls, {plans} plans, plan {plan:.4} ms \
                 + exec {exec:.4} ms per call"
            ),
            None => all,
        }
    }
}

/// Reads `pg_stat_statements` for database `name`.
fn plan_times(client: &mut postgres::Client, name: &str) -> Plans {
    let top = client
        .query_opt(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 40), calls, plans,
                    total_plan_time / greatest(calls, 1), total_exec_time / greatest(calls, 1)
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
             WHERE d.datname = $1 ORDER BY total_exec_time DESC LIMIT 1",
            &[&name],
        )
        .expect("groups: pg_stat_statements")
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)));
    let plan_ms: f64 = client
        .query_one(
            "SELECT coalesce(sum(total_plan_time), 0)::float8
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
             WHERE d.datname = $1",
            &[&name],
        )
        .expect("groups: plan time")
        .get(0);
    Plans { top, plan_ms }
}
