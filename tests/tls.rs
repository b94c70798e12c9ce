//! TLS to PostgreSQL from the libpq parameters of `database.url`, against
//! real servers with `ssl = on` whose certificates the test makes
//! (`support::tls::PgCerts`) and whose `pg_hba.conf` admits TCP only over
//! TLS (`hostssl`): the whole path (migrate, CLI, daemon) over
//! `verify-full` with every daemon session encrypted; the refusals (unknown
//! CA, name mismatch, no TLS offered), each one clear line with exit 2;
//! client certificates and SCRAM with channel binding; and a failover to a
//! promoted synchronous standby through a multi-host URL.
//!
//! The tests' own clients use the Unix socket (`local … trust`), never TCP.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notification_reconciler::config::Config;
use support::bin::{one_line_failure, Bin};
use support::daemon::{config_toml, tail, wait_until, Daemon};
use support::fixtures::{EVENT_TYPE, NAMESPACE};
use support::pg::connect;
use support::tls::PgCerts;
use support::{Cluster, Receiver, Script};

/// TCP only over TLS; the test's own client on the socket.
const HBA_TLS_ONLY: &str = "local all all trust\n\
     hostssl all all 127.0.0.1/32 trust\n\
     hostssl replication all 127.0.0.1/32 trust\n";

/// `database.url` for `dbname` on `cluster` over TCP, with `params`.
fn tcp_url(cluster: &Cluster, dbname: &str, params: &str) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/{dbname}?{params}",
        cluster.port()
    )
}

/// `sslmode=verify-full&sslrootcert=<ca>`.
fn verify_full(ca: &Path) -> String {
    format!("sslmode=verify-full&sslrootcert={}", ca.display())
}

/// Creates database `name` through the socket.
fn create_db(cluster: &Cluster, name: &str) {
    connect(&cluster.socket_url_for("postgres"))
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create database");
}

/// A channel to `receiver` and a rule for [`EVENT_TYPE`], through the CLI
/// (`DATABASE_URL` = `url`).
fn channel_and_rule(bin: &Bin, receiver: &Receiver) {
    let channel = bin.create_channel(NAMESPACE, "hook", &receiver.url(), &[]);
    bin.create_rule(NAMESPACE, "rule", EVENT_TYPE, &[&channel], None);
}

/// A service connection to `url` opened the way the daemon opens them (TLS
/// settings included), for producing events in the tests.
fn service_client(url: &str) -> postgres::Client {
    let config = Config::for_url(url);
    notification_reconciler::db::connect(&config.database, "tls-test producer")
        .unwrap_or_else(|e| panic!("producer cannot connect: {e}"))
}

/// Emits `n` events over `client`; their ids.
fn emit(client: &mut postgres::Client, n: i32) -> Vec<String> {
    support::fixtures::emit(client, EVENT_TYPE, "jsonb_build_object('n', g)", n)
        .iter()
        .map(|id| id.to_string())
        .collect()
}

/// The daemon's config over `url`: 4 workers, 1 s sweeps.
fn daemon_config(url: &str) -> String {
    config_toml(url, 4, "1s", "", "[log]\nlevel = \"info\"\n")
}

#[test]
fn verify_full_against_a_tls_only_server_delivers_200_events_with_every_session_encrypted() {
    let certs = PgCerts::new(&["127.0.0.1", "localhost"]);
    let cluster = certs.start_cluster(HBA_TLS_ONLY, "");
    create_db(&cluster, "nr");
    let url = tcp_url(&cluster, "nr", &verify_full(&certs.ca_file()));
    let receiver = Receiver::start(Script::status(200));

    let bin = Bin::for_database(&url);
    bin.ok(&["migrate"]);
    channel_and_rule(&bin, &receiver);
    // Five through the CLI, the rest through a service connection.
    let mut ids = Vec::new();
    for i in 0..5 {
        let out = bin.ok(&[
            "event",
            "emit",
            "--namespace",
            NAMESPACE,
            "--type",
            EVENT_TYPE,
            "--data",
            &format!("{{\"cli\": {i}}}"),
        ]);
        ids.extend(out.lines().map(|l| l.trim().to_owned()));
    }
    ids.extend(emit(&mut service_client(&url), 195));
    assert_eq!(ids.len(), 200);

    let mut daemon = Daemon::run("tls", &daemon_config(&url), &[]);
    wait_until(
        "200 deliveries over verify-full",
        Duration::from_secs(60),
        || receiver.ids().len() >= 200,
        || tail(&daemon.stderr(), 20),
    );
    let delivered: std::collections::BTreeSet<String> = receiver.ids().into_iter().collect();
    for id in &ids {
        assert!(delivered.contains(id), "event {id} not delivered");
    }

    // Every TCP session of the daemon (lock, listener, workers) is encrypted.
    let mut admin = connect(&cluster.socket_url_for("postgres"));
    let pid = daemon.pid().to_string();
    let rows = admin
        .query(
            "SELECT a.application_name, s.ssl, coalesce(s.version, '')
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.datname = 'nr' AND a.application_name LIKE '%pid ' || $1",
            &[&pid],
        )
        .expect("pg_stat_ssl");
    let roles: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    for role in ["lock", "listen", "worker"] {
        assert!(
            roles.iter().any(|r| r.contains(&format!(" {role} "))),
            "no {role} session of the daemon in {roles:?}"
        );
    }
    for row in &rows {
        let (name, ssl, version): (String, bool, String) = (row.get(0), row.get(1), row.get(2));
        assert!(ssl, "session {name:?} is not encrypted");
        assert!(version.starts_with("TLSv1."), "{name:?}: {version}");
    }
    // All TCP sessions of the cluster, whoever opened them, are encrypted.
    let plain: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.client_addr IS NOT NULL AND NOT s.ssl",
            &[],
        )
        .expect("count")
        .get(0);
    assert_eq!(plain, 0);
    daemon.stop(Duration::from_secs(20));
}

/// Runs `migrate` with `DATABASE_URL` = `url` (and `HOME` = `home`); asserts
/// exit 2 with one line and returns it.
fn refused(url: &str, home: &Path) -> String {
    let out = Bin::for_database(url)
        .env("HOME", &home.display().to_string())
        .run(&["migrate"]);
    let line = one_line_failure(&out, 2).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert!(!line.contains("hunter2"), "the password shows: {line}");
    line
}

#[test]
fn refusals_name_the_host_and_the_reason_in_one_line_with_exit_2() {
    // The server's certificate names "localhost" only.
    let certs = PgCerts::new(&["localhost"]);
    let other = PgCerts::new(&["localhost"]);
    let cluster = certs.start_cluster(HBA_TLS_ONLY, "");
    create_db(&cluster, "nr");
    let home = tempfile::tempdir().expect("home");
    let url = |host: &str, params: &str| {
        format!(
            "postgres://postgres:hunter2@{host}:{}/nr?{params}",
            cluster.port()
        )
    };

    // verify-full without the CA: libpq's default file is missing …
    let line = refused(&url("localhost", "sslmode=verify-full"), home.path());
    assert!(line.contains("database.url"), "{line}");
    assert!(
        line.contains("root.crt") && line.contains("sslrootcert=system"),
        "{line}"
    );
    // … or sslrootcert is a CA that did not sign the server's certificate.
    let line = refused(
        &url("localhost", &verify_full(&other.ca_file())),
        home.path(),
    );
    assert!(line.contains("localhost refused"), "{line}");
    assert!(line.contains("unknown CA"), "{line}");

    // verify-full to a name the certificate does not hold; verify-ca to it
    // is accepted, and so is verify-full to the name it holds.
    let line = refused(
        &url("127.0.0.1", &verify_full(&certs.ca_file())),
        home.path(),
    );
    assert!(line.contains("127.0.0.1 refused"), "{line}");
    assert!(line.contains("name mismatch"), "{line}");
    let verify_ca = format!(
        "sslmode=verify-ca&sslrootcert={}",
        certs.ca_file().display()
    );
    Bin::for_database(&url("127.0.0.1", &verify_ca)).ok(&["migrate"]);
    Bin::for_database(&url("localhost", &verify_full(&certs.ca_file()))).ok(&["status"]);

    // `run` refuses to start on the same mismatch, exit 2.
    let mut daemon = Daemon::run(
        "mismatch",
        &daemon_config(&url("127.0.0.1", &verify_full(&certs.ca_file()))),
        &[],
    );
    let status = daemon.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "{}", daemon.stderr());
    assert!(
        daemon.stderr().contains("name mismatch"),
        "{}",
        daemon.stderr()
    );

    // require against a server without TLS (a second, plaintext cluster).
    let plain = Cluster::start_dedicated();
    let line = refused(
        &format!(
            "postgres://postgres:hunter2@127.0.0.1:{}/postgres?sslmode=require",
            plain.port()
        ),
        home.path(),
    );
    assert!(line.contains("127.0.0.1"), "{line}");
    assert!(line.contains("does not offer TLS"), "{line}");
}

#[test]
fn client_certificates_and_scram_with_channel_binding_authenticate_over_tls() {
    let certs = PgCerts::new(&["127.0.0.1"]);
    let hba = "local all all trust\n\
               hostssl all postgres 127.0.0.1/32 cert\n\
               hostssl all scram_user 127.0.0.1/32 scram-sha-256\n";
    let cluster = certs.start_cluster(hba, "");
    create_db(&cluster, "nr");
    connect(&cluster.socket_url_for("postgres"))
        .batch_execute("CREATE ROLE scram_user LOGIN SUPERUSER PASSWORD 'hunter2'")
        .expect("create scram_user");

    // `cert`: the client certificate (CN=postgres) is the login.
    let with_cert = tcp_url(
        &cluster,
        "nr",
        &format!(
            "{}&sslcert={}&sslkey={}",
            verify_full(&certs.ca_file()),
            certs.client_cert().display(),
            certs.client_key().display()
        ),
    );
    Bin::for_database(&with_cert).ok(&["migrate"]);
    // Without it the server refuses the login (a runtime failure, exit 1).
    let home = tempfile::tempdir().expect("home");
    let without = tcp_url(&cluster, "nr", &verify_full(&certs.ca_file()));
    let as_user =
        |url: &str| Bin::for_database(url).env("HOME", &home.path().display().to_string());
    let line =
        one_line_failure(&as_user(&without).run(&["status"]), 1).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("certificate"), "{line}");
    // libpq's default files, ~/.postgresql/postgresql.{crt,key}, log in.
    let dot = home.path().join(".postgresql");
    std::fs::create_dir(&dot).expect("mkdir");
    std::fs::copy(certs.client_cert(), dot.join("postgresql.crt")).expect("copy");
    std::fs::copy(certs.client_key(), dot.join("postgresql.key")).expect("copy");
    as_user(&without).ok(&["status"]);
    // A key readable by others is refused before connecting, as libpq does.
    std::fs::set_permissions(
        dot.join("postgresql.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let line =
        one_line_failure(&as_user(&without).run(&["status"]), 2).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.contains("postgresql.key has group or world access"),
        "{line}"
    );

    // SCRAM with channel binding required: SCRAM-SHA-256-PLUS over rustls.
    let scram = format!(
        "postgres://scram_user:hunter2@127.0.0.1:{}/nr?channel_binding=require&{}",
        cluster.port(),
        verify_full(&certs.ca_file())
    );
    // (`channel_binding=require` refuses a login without it.)
    let status = Bin::for_database(&scram).ok(&["status"]);
    assert!(!status.contains("hunter2"));
}

/// Waits until `primary` reports `want` in `pg_stat_replication.sync_state`
/// (or `state` when `want` is "streaming").
fn wait_replication(primary: &Cluster, want: &str) {
    let mut admin = connect(&primary.socket_url_for("postgres"));
    wait_until(
        &format!("the standby to be {want}"),
        Duration::from_secs(60),
        || {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = $1 OR sync_state = $1",
                    &[&want],
                )
                .map(|r| r.get::<_, i64>(0) >= 1)
                .unwrap_or(false)
        },
        || primary.log_tail(20),
    );
}

#[test]
fn failover_to_a_promoted_synchronous_standby_loses_no_committed_event_and_the_daemon_leads_on() {
    let certs = PgCerts::new(&["127.0.0.1", "localhost"]);
    // Durable commits that wait for the standby: what "committed" means.
    let primary = certs.start_cluster(HBA_TLS_ONLY, "synchronous_commit = on\n");
    create_db(&primary, "nr");
    let standby = Cluster::start_standby_of(
        &primary,
        &format!(
            "host=127.0.0.1 port={} user=postgres sslmode=require",
            primary.port()
        ),
        "",
    );
    wait_replication(&primary, "streaming");
    let mut admin = connect(&primary.socket_url_for("postgres"));
    admin
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        .expect("make the standby synchronous");
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .expect("reload");
    wait_replication(&primary, "sync");

    // Each host verified under its own name.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},localhost:{}/nr?target_session_attrs=read-write&{}",
        primary.port(),
        standby.port(),
        verify_full(&certs.ca_file())
    );
    let receiver = Receiver::start(Script::status(200));
    let bin = Bin::for_database(&url);
    bin.ok(&["migrate"]);
    channel_and_rule(&bin, &receiver);
    let mut daemon = Daemon::run("failover", &daemon_config(&url), &[]);

    // A steady producer: one event per commit; an id counts once its
    // commit returned. Connection errors: reconnect and go on.
    const TOTAL: usize = 300;
    let committed = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (committed, stop, url) = (Arc::clone(&committed), Arc::clone(&stop), url.clone());
        std::thread::spawn(move || {
            let config = Config::for_url(&url);
            let mut client = None;
            let mut errors = 0usize;
            while committed.lock().expect("lock").len() < TOTAL && !stop.load(Ordering::SeqCst) {
                let c = match client.as_mut() {
                    Some(c) => c,
                    None => {
                        match notification_reconciler::db::connect(&config.database, "producer") {
                            Ok(c) => client.insert(c),
                            Err(_) => {
                                errors += 1;
                                std::thread::sleep(Duration::from_millis(100));
                                continue;
                            }
                        }
                    }
                };
                let emitted = c.query_one(
                    "SELECT enqueue_event($1, $2, '{}'::jsonb)::text",
                    &[&NAMESPACE, &EVENT_TYPE],
                );
                match emitted {
                    Ok(row) => committed.lock().expect("lock").push(row.get(0)),
                    Err(_) => {
                        errors += 1;
                        client = None;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            errors
        })
    };

    wait_until(
        "deliveries before the failover",
        Duration::from_secs(60),
        || receiver.ids().len() >= 60,
        || tail(&daemon.stderr(), 20),
    );
    let before = committed.lock().expect("lock").len();
    primary.kill_postmaster();
    standby.promote();
    let started = Instant::now();
    wait_until(
        "the producer to commit every event",
        Duration::from_secs(120),
        || committed.lock().expect("lock").len() >= TOTAL,
        || tail(&daemon.stderr(), 20),
    );
    stop.store(true, Ordering::SeqCst);
    let errors = producer.join().expect("producer");
    assert!(errors > 0, "the producer never saw the failover");
    let committed = committed.lock().expect("lock").clone();
    assert!(before < TOTAL, "the stream was over before the failover");

    wait_until(
        "every committed event delivered",
        Duration::from_secs(120),
        || {
            let seen: std::collections::BTreeSet<String> = receiver.ids().into_iter().collect();
            committed.iter().all(|id| seen.contains(id))
        },
        || {
            let seen: std::collections::BTreeSet<String> = receiver.ids().into_iter().collect();
            let missing = committed.iter().filter(|id| !seen.contains(*id)).count();
            format!(
                "{missing} of {} committed events not delivered\n{}",
                committed.len(),
                tail(&daemon.stderr(), 30)
            )
        },
    );
    assert!(daemon.running(), "the daemon exited: {}", daemon.stderr());
    // It leads on the promoted standby: its lock session is there.
    let mut admin = connect(&standby.socket_url_for("nr"));
    let pid = daemon.pid().to_string();
    wait_until(
        "the daemon's lock session on the promoted standby",
        Duration::from_secs(30),
        || {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                     WHERE l.locktype = 'advisory' AND l.granted
                       AND a.application_name LIKE '% lock % pid ' || $1",
                    &[&pid],
                )
                .map(|r| r.get::<_, i64>(0) >= 1)
                .unwrap_or(false)
        },
        || tail(&daemon.stderr(), 20),
    );
    eprintln!(
        "failover: {} events committed ({before} before the kill), all delivered; {:.1} s from the kill to the last commit",
        committed.len(),
        started.elapsed().as_secs_f64()
    );
    daemon.stop(Duration::from_secs(20));
}
