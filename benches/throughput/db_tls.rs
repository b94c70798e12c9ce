//! Scenario 16, the durable drain over TLS (`--only db-tls`): what
//! encrypting and verifying every database connection costs. One cluster
//! of its own at PostgreSQL's durable defaults with `ssl = on` (certificates
//! made by the bench), a backlog spread over many channels (the shape users
//! run) answered at once by the bench's receiver, drained by the daemon
//! binary (`run`) over `sslmode=disable` and over `sslmode=verify-full`,
//! alternately, on the same cluster in the same run, each in a fresh
//! database. Reported: deliveries/s of each run, CPU per delivery (machine,
//! PostgreSQL, daemon), and the ratio of the modes' mean rates (target:
//! verify-full at least 0.9× plaintext).

use std::path::Path;
use std::process::{Command, Stdio};

use super::durable::{drain, postmaster_pid, Measured};
use super::support::tls::PgCerts;
use super::support::Cluster;
use super::{push, Loopback, Row};

/// The scenario's sizes.
pub struct DbTlsSizes {
    deliveries: u64,
    channels: u64,
    workers: usize,
    rounds: usize,
}

impl DbTlsSizes {
    /// 20,000 deliveries over 16 channels, 64 workers, each mode three
    /// times (alternating: the machine is shared, pairs are what compare).
    pub fn full() -> DbTlsSizes {
        DbTlsSizes {
            deliveries: 20_000,
            channels: 16,
            workers: 64,
            rounds: 3,
        }
    }

    /// CI: 400 deliveries, each mode once.
    pub fn tiny() -> DbTlsSizes {
        DbTlsSizes {
            deliveries: 400,
            channels: 16,
            workers: 64,
            rounds: 1,
        }
    }
}

/// Both: `local` for the bench's own client, TCP with or without TLS.
const HBA: &str = "local all all trust\nhost all all 127.0.0.1/32 trust\n";

/// Runs the scenario.
pub fn db_tls(sizes: &DbTlsSizes, rows: &mut Vec<Row>) {
    let certs = PgCerts::new(&["127.0.0.1"]);
    let cluster = Cluster::prepare_durable_with(PgCerts::SETTINGS);
    certs.start_prepared(&cluster, HBA);
    let postmaster = postmaster_pid(cluster.data_dir());
    let receiver = Loopback::start(std::time::Duration::ZERO);
    let dir = tempfile::Builder::new()
        .prefix("nr-bench-db-tls-")
        .tempdir()
        .expect("db-tls: temp dir");
    let mut admin = super::support::pg::connect(&cluster.socket_url_for("postgres"));
    let modes = [
        ("plaintext (sslmode=disable)", "sslmode=disable".to_string()),
        (
            "verify-full",
            format!(
                "sslmode=verify-full&sslrootcert={}",
                certs.ca_file().display()
            ),
        ),
    ];
    let mut rates = [Vec::new(), Vec::new()];
    let mut run = 0;
    for _ in 0..sizes.rounds {
        for (m, (label, params)) in modes.iter().enumerate() {
            let name = format!("db_tls_{run}");
            run += 1;
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("db-tls: create database");
            let url = format!(
                "postgres://postgres@127.0.0.1:{}/{name}?{params}",
                cluster.port()
            );
            let config = dir.path().join(format!("{name}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[database]\nurl = \"{url}\"\npool_size = {}\n\
                     [reconciler]\nworkers = {}\ninterval = \"15s\"\n\
                     [delivery]\ntimeout = \"30s\"\nallow_networks = [\"127.0.0.0/8\"]\n\
                     [log]\nlevel = \"info\"\n",
                    sizes.workers + 2,
                    sizes.workers
                ),
            )
            .expect("db-tls: config");
            migrate(&config);
            let mut client = super::support::pg::connect(&cluster.socket_url_for(&name));
            seed_channels(&mut client, sizes, &receiver.url());
            client
                .batch_execute("CHECKPOINT")
                .expect("db-tls: checkpoint");
            let measured = drain(
                &config,
                &mut client,
                &receiver,
                sizes.deliveries,
                postmaster,
            );
            let rate = sizes.deliveries as f64 / measured.secs;
            rates[m].push(rate);
            push(rows, row(label, sizes, rate, &measured));
            drop(client);
            admin
                .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .expect("db-tls: drop database");
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let ratio = mean(&rates[1]) / mean(&rates[0]);
    // Each round's pair too: neighbours on a shared machine move whole
    // rounds, a pair shares them.
    let pairs: Vec<String> = rates[0]
        .iter()
        .zip(&rates[1])
        .map(|(plain, tls)| format!("{:.3}", tls / plain))
        .collect();
    push(
        rows,
        Row {
            scenario: "16 durable drain, TLS",
            setting: "verify-full / plaintext, mean rates".into(),
            result: format!("{ratio:.3}x (rounds: {})", pairs.join(", ")),
            target: ">= 0.9x".into(),
            met: Some(ratio >= 0.9),
        },
    );
}

/// The table row of one drain.
fn row(label: &str, sizes: &DbTlsSizes, rate: f64, m: &Measured) -> Row {
    let per = |s: f64| s * 1e3 / sizes.deliveries as f64;
    Row {
        scenario: "16 durable drain, TLS",
        setting: format!(
            "{label}, {} workers, {} deliveries over {} channels, fsync on",
            sizes.workers, sizes.deliveries, sizes.channels
        ),
        result: format!(
            "{rate:.0}/s in {:.2} s; CPU/delivery machine {:.3} ms, PostgreSQL {:.3} ms, ours {:.3} ms",
            m.secs,
            per(m.machine),
            per(m.postgres),
            per(m.ours),
        ),
        target: String::new(),
        met: None,
    }
}

/// `migrate` by the program under test with `config`.
fn migrate(config: &Path) {
    let program =
        std::env::var("NR_BENCH_BIN").unwrap_or_else(|_| super::support::bin::BIN.to_string());
    let out = Command::new(program)
        .arg("--config")
        .arg(config)
        .arg("migrate")
        .stdout(Stdio::null())
        .output()
        .expect("db-tls: run migrate");
    assert!(
        out.status.success(),
        "db-tls: migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sizes.channels` channels (each its own path on the receiver) under one
/// rule, and events enough for `sizes.deliveries` pending deliveries, one
/// per channel per event.
fn seed_channels(client: &mut postgres::Client, sizes: &DbTlsSizes, url: &str) {
    let events = sizes.deliveries / sizes.channels;
    assert_eq!(events * sizes.channels, sizes.deliveries, "db-tls: sizes");
    client
        .batch_execute(&format!(
            "SET search_path = notification;
             INSERT INTO channel (namespace, name, url, signing_secret)
                 SELECT 'bench', 'bench-' || c, '{url}/' || c,
                        'whsec_' || encode(sha256('bench'::bytea), 'base64')
                 FROM generate_series(1, {channels}) c;
             INSERT INTO rule (namespace, name, event_type)
                 VALUES ('bench', 'bench', 'invoice.paid');
             INSERT INTO rule_channel SELECT r.id, c.id FROM rule r, channel c;
             WITH ev AS (
                 INSERT INTO event (namespace, type, rule_id, payload, created_at)
                 SELECT 'bench', 'invoice.paid', (SELECT id FROM rule),
                        jsonb_build_object('invoice', 'in_' || g, 'amount', g % 10000,
                                           'currency', 'EUR', 'customer', 'cus_' || (g % 977)),
                        now() - interval '1 hour' + g * interval '1 microsecond'
                 FROM generate_series(1, {events}) g
                 RETURNING id, created_at
             )
             INSERT INTO delivery_status (namespace, event_id, channel_id, event_created_at,
                                          state, next_attempt_at, clock_started_at)
             SELECT 'bench', ev.id, c.id, ev.created_at, 'PENDING', ev.created_at, now()
             FROM ev CROSS JOIN channel c;",
            channels = sizes.channels,
        ))
        .expect("db-tls: seeding");
    client
        .batch_execute("VACUUM ANALYZE")
        .expect("db-tls: vacuum");
}
