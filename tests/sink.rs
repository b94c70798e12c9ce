//! The `sink` command as a child process: a Standard Webhooks round trip
//! (a request signed with the right secret is accepted, a wrong secret and a
//! stale timestamp are refused with 401), one printed line per delivery, the
//! `--status`/`--fail-rate` answers, and a real delivery by a reconciliation
//! pass verified by the sink. Signing itself is unit-tested in
//! `src/delivery/sign.rs`; the sink's pure decision in `src/sink.rs`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Receiver as Lines};
use std::time::Duration;

use chrono::Utc;
use notification_reconciler::config::Config;
use notification_reconciler::delivery::sign::Secret;
use notification_reconciler::reconcile::hooks::NoHooks;
use notification_reconciler::reconcile::{PassOutcome, Reconciler};
use support::bin::Bin;
use support::net::free_addr;

/// How long to wait for the sink to start or to print a line.
const WAIT: Duration = Duration::from_secs(20);

/// A running `sink` child; killed (by its PID) and reaped on drop.
struct Sink {
    child: Child,
    addr: String,
    lines: Lines<String>,
    log: Lines<String>,
}

impl Sink {
    /// Starts `sink --listen 127.0.0.1:PORT` with `args` and waits until it
    /// listens (its start-up line on stderr).
    fn start(args: &[&str]) -> Sink {
        Sink::start_with_env(args, &[])
    }

    /// [`Sink::start`] with `env` set in the sink's environment.
    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Sink {
        let addr = free_addr().to_string();
        let bin = env
            .iter()
            .fold(Bin::without_config(), |bin, (k, v)| bin.env(k, v));
        let mut child = bin
            .command(&["sink", "--listen", &addr])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the sink");
        let stdout = child.stdout.take().expect("sink stdout");
        let stderr = child.stderr.take().expect("sink stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (log_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = log_tx.send(line);
            }
        });
        let mut sink = Sink {
            child,
            addr,
            lines,
            log: ready,
        };
        match sink.log.recv_timeout(WAIT) {
            Ok(line) if line.contains("listening") => sink,
            other => {
                let _ = sink.child.kill();
                panic!("the sink did not start: {other:?}")
            }
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The next line the sink wrote to stderr (its log).
    fn next_log_line(&self) -> String {
        self.log.recv_timeout(WAIT).expect("the sink logged a line")
    }

    /// The sink's command line as `ps` shows it.
    fn cmdline(&self) -> String {
        std::fs::read(format!("/proc/{}/cmdline", self.child.id()))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .expect("read the sink's command line")
    }

    /// The next line the sink printed.
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("the sink printed a line for the delivery")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tests' HTTP client: loopback only (whatever `*_PROXY` says), every
/// status returned as an answer, bounded by [`WAIT`].
fn test_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into()
}

/// POSTs `body` with Standard Webhooks headers signed by `secret` at
/// `timestamp`; returns the status code.
fn post_signed(url: &str, secret: &str, id: &str, timestamp: i64, body: &str) -> u16 {
    let secret = Secret::parse(secret).expect("test secret parses");
    let signature = secret.sign(id, timestamp, body.as_bytes());
    let agent = test_agent();
    agent
        .post(url)
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header("content-type", "application/json")
        .send(body)
        .expect("the sink answers")
        .status()
        .as_u16()
}

const BODY: &str =
    r#"{"id":"x","type":"invoice.paid","timestamp":"2024-01-01T00:00:00Z","data":{}}"#;

#[test]
fn sink_accepts_a_good_signature_and_refuses_a_wrong_secret_and_a_stale_timestamp() {
    let secret = Secret::generate();
    let sink = Sink::start(&["--secret", &secret]);
    let now = Utc::now().timestamp();

    assert_eq!(
        post_signed(&sink.url(), &secret, "msg_good", now, BODY),
        200
    );
    let line = sink.next_line();
    assert!(
        line.contains("id=msg_good type=invoice.paid verified -> 200"),
        "{line}"
    );

    let wrong = Secret::generate();
    assert_eq!(
        post_signed(&sink.url(), &wrong, "msg_wrong", now, BODY),
        401
    );
    let line = sink.next_line();
    assert!(
        line.contains("id=msg_wrong") && line.contains("REJECTED") && line.ends_with("-> 401"),
        "{line}"
    );

    let stale = now - 600;
    assert_eq!(
        post_signed(&sink.url(), &secret, "msg_stale", stale, BODY),
        401
    );
    let line = sink.next_line();
    assert!(
        line.contains("id=msg_stale") && line.contains("REJECTED") && line.ends_with("-> 401"),
        "{line}"
    );
    assert!(
        !line.contains(secret.trim_start_matches("whsec_")),
        "the sink printed its secret: {line}"
    );
}

#[test]
fn sink_without_a_secret_answers_the_configured_status_or_fails_on_demand() {
    let sink = Sink::start(&["--status", "202"]);
    let any = Secret::generate();
    let now = Utc::now().timestamp();
    assert_eq!(post_signed(&sink.url(), &any, "msg_1", now, BODY), 202);
    let line = sink.next_line();
    assert!(
        line.contains("id=msg_1 type=invoice.paid not verified -> 202"),
        "{line}"
    );

    let failing = Sink::start(&["--fail-rate", "1.0"]);
    assert_eq!(post_signed(&failing.url(), &any, "msg_2", now, BODY), 500);
    let line = failing.next_line();
    assert!(line.ends_with("-> 500"), "{line}");
}

#[test]
fn a_real_delivery_is_verified_by_the_sink() {
    let secret = Secret::generate();
    let sink = Sink::start(&["--secret", &secret]);
    let db = support::migrated_db();
    let mut client = db.client();
    let event: uuid::Uuid = client
        .query_one(
            "WITH c AS (
                 INSERT INTO notification.channel (namespace, name, url, signing_secret)
                 VALUES ('acme', 'sink', $1, $2) RETURNING id),
             r AS (
                 INSERT INTO notification.rule (namespace, name, event_type)
                 VALUES ('acme', 'to-sink', 'invoice.paid') RETURNING id)
             INSERT INTO notification.rule_channel SELECT r.id, c.id FROM r, c RETURNING rule_id",
            &[&sink.url(), &secret],
        )
        .map(|_| ())
        .and_then(|()| {
            client.query_one(
                "SELECT notification.enqueue_event('acme', 'invoice.paid', '{\"n\": 1}')",
                &[],
            )
        })
        .expect("set up and enqueue")
        .get(0);

    let mut config = Config::for_url(&db.url);
    config.delivery.allow_networks = support::fixtures::loopback_networks();
    let mut r = Reconciler::new(&config).expect("reconciler");
    match r.run_pass(&AtomicBool::new(false), &NoHooks).expect("pass") {
        PassOutcome::Ran(report) => assert_eq!(report.delivered, 1, "{report:?}"),
        PassOutcome::LockHeld => panic!("lock held"),
    }
    let line = sink.next_line();
    assert!(
        line.contains(&format!("id={event} type=invoice.paid verified -> 200")),
        "{line}"
    );
}

/// Asserts that `sink` verifies signatures with `secret`: a good one is
/// accepted, one made with another secret refused.
fn assert_verifies_with(sink: &Sink, secret: &str) {
    let now = Utc::now().timestamp();
    assert_eq!(post_signed(&sink.url(), secret, "msg_good", now, BODY), 200);
    assert!(sink.next_line().contains("verified -> 200"));
    let wrong = Secret::generate();
    assert_eq!(
        post_signed(&sink.url(), &wrong, "msg_wrong", now, BODY),
        401
    );
    assert!(sink.next_line().ends_with("-> 401"));
    let key = secret.trim_start_matches("whsec_");
    assert!(
        !sink.cmdline().contains(key),
        "the secret is visible in ps: {}",
        sink.cmdline()
    );
}

#[test]
fn sink_takes_its_secret_from_the_environment_or_a_file_out_of_sight_of_ps() {
    let secret = Secret::generate();
    let from_env = Sink::start_with_env(&[], &[("SINK_SECRET", &secret)]);
    assert_verifies_with(&from_env, &secret);

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{secret}\n")).expect("write the secret file");
    let path = file.to_string_lossy().to_string();
    let from_file = Sink::start(&["--secret-file", &path]);
    assert_verifies_with(&from_file, &secret);

    // --secret still works, and wins over the environment.
    let other = Secret::generate();
    let given = Sink::start_with_env(&["--secret", &other], &[("SINK_SECRET", &secret)]);
    let now = Utc::now().timestamp();
    assert_eq!(post_signed(&given.url(), &other, "msg_1", now, BODY), 200);
    assert_eq!(post_signed(&given.url(), &secret, "msg_2", now, BODY), 401);
}

#[test]
fn a_body_over_the_sinks_cap_is_answered_413_and_logged() {
    let sink = Sink::start(&[]);
    let agent = test_agent();
    let body = vec![b' '; 11 * 1024 * 1024];
    let status = agent
        .post(&sink.url())
        .header("content-type", "application/json")
        .send(&body[..])
        .map(|r| r.status().as_u16());
    assert_eq!(
        status.as_ref().ok(),
        Some(&413),
        "the sink did not answer 413: {status:?}"
    );
    let line = sink.next_log_line();
    assert!(
        line.contains("11534336 bytes") && line.contains("413"),
        "{line}"
    );
}
