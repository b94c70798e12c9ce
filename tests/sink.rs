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
use notification_reconciler::reconcile::leader::NoHooks;
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
}

impl Sink {
    /// Starts `sink --listen 127.0.0.1:PORT` with `args` and waits until it
    /// listens (its start-up line on stderr).
    fn start(args: &[&str]) -> Sink {
        let addr = free_addr().to_string();
        let mut child = Bin::without_config()
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
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = ready_tx.send(line);
            }
        });
        let mut sink = Sink { child, addr, lines };
        match ready.recv_timeout(WAIT) {
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

/// POSTs `body` with Standard Webhooks headers signed by `secret` at
/// `timestamp`; returns the status code.
fn post_signed(url: &str, secret: &str, id: &str, timestamp: i64, body: &str) -> u16 {
    let secret = Secret::parse(secret).expect("test secret parses");
    let signature = secret.sign(id, timestamp, body.as_bytes());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into();
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
        line.contains("id=msg_1 type=invoice.paid unsigned -> 202"),
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
