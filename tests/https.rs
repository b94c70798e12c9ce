//! HTTPS endpoints through the real binary: a receiver on 127.0.0.1 whose
//! certificate is signed by a private CA generated for the test. The CA is
//! trusted when it is in the system's trust store (here: `SSL_CERT_FILE`,
//! which the system store honours, as it honours the bundle
//! `update-ca-certificates` writes) or in `delivery.ca_file`; otherwise the
//! attempt fails verification and is retried with the error recorded.
//! Keep-alive holds the TLS handshakes of a pass to at most one per worker.

mod support;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use notification_reconciler::reconcile::hooks::NoHooks;
use notification_reconciler::reconcile::{PassOutcome, Reconciler};
use support::bin::{allow_loopback, Bin};
use support::daemon::config_toml;
use support::fixtures;
use support::tls::TestCa;
use support::{migrated_db, Receiver, Script, TestDb};

/// The `[delivery]` section of the tests, with `extra` lines appended.
fn delivery(extra: &str) -> String {
    format!(
        "timeout = \"5s\"\nconnect_timeout = \"2s\"\nretry_schedule = [\"10ms\", \"10ms\"]\n{extra}"
    )
}

/// Runs `once` through the binary with `delivery` and `env`; asserts exit 0.
fn once(db: &TestDb, delivery: &str, env: &[(&str, &str)]) {
    let bin = env.iter().fold(
        Bin::with_config(&allow_loopback(&config_toml(
            &db.url, 2, "1s", delivery, "",
        ))),
        |bin, (k, v)| bin.env(k, v),
    );
    let out = bin.run(&["once"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The recorded error of the (single) delivery of `event`'s last attempt.
fn last_error(db: &TestDb, event: uuid::Uuid) -> String {
    db.client()
        .query_one(
            "SELECT coalesce(attempts -> -1 ->> 'error', '') FROM notification.delivery_status
             WHERE event_id = $1",
            &[&event],
        )
        .expect("read the attempt")
        .get(0)
}

fn toml_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "\\\\")
}

#[test]
fn an_https_endpoint_signed_by_the_ca_in_delivery_ca_file_is_delivered() {
    let ca = TestCa::new();
    let receiver = Receiver::start_https(Script::status(200), &ca);
    let db = migrated_db();
    let events = fixtures::seed(&mut db.client(), &receiver.url(), 3);
    let ca_file = format!("ca_file = \"{}\"\n", toml_path(&ca.ca_file()));
    once(&db, &delivery(&ca_file), &[]);
    for event in events {
        assert_eq!(
            fixtures::state_of(&mut db.client(), event),
            "SUCCESS",
            "{}",
            last_error(&db, event)
        );
    }
    assert_eq!(receiver.count(), 3);
}

#[test]
fn the_system_trust_store_is_used_by_default() {
    // SSL_CERT_FILE names the system bundle to use, as the bundle written by
    // update-ca-certificates is found without it: a CA the operator added
    // there is trusted, the built-in Mozilla list alone would not know it.
    let ca = TestCa::new();
    let receiver = Receiver::start_https(Script::status(200), &ca);
    let db = migrated_db();
    let event = fixtures::seed(&mut db.client(), &receiver.url(), 1)[0];
    let bundle = ca.ca_file().display().to_string();
    once(&db, &delivery(""), &[("SSL_CERT_FILE", &bundle)]);
    assert_eq!(
        fixtures::state_of(&mut db.client(), event),
        "SUCCESS",
        "{}",
        last_error(&db, event)
    );
}

#[test]
fn an_unknown_ca_fails_verification_and_is_retried_with_the_error_recorded() {
    let ca = TestCa::new();
    let receiver = Receiver::start_https(Script::status(200), &ca);
    let db = migrated_db();
    let event = fixtures::seed(&mut db.client(), &receiver.url(), 1)[0];
    once(&db, &delivery(""), &[]);
    assert_eq!(fixtures::state_of(&mut db.client(), event), "SENDING");
    let error = last_error(&db, event);
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert_eq!(
        receiver.count(),
        0,
        "no request may pass an unverified TLS session"
    );
}

#[test]
fn a_ca_file_that_is_not_a_certificate_bundle_is_a_config_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("key.pem");
    std::fs::write(&file, "hello\n").expect("write");
    let text = format!("[delivery]\nca_file = \"{}\"\n", toml_path(&file));
    let line = Bin::with_config(&text).fails(2, &["check-config"]);
    assert!(line.contains("delivery.ca_file = \""), "{line}");
    assert!(line.contains("holds no PEM certificate"), "{line}");
}

#[test]
fn keep_alive_holds_tls_handshakes_to_one_per_worker() {
    let ca = TestCa::new();
    let receiver = Receiver::start_https(Script::status(200), &ca);
    let db = migrated_db();
    fixtures::seed(&mut db.client(), &receiver.url(), 40);
    let workers = 2;
    let mut config = fixtures::config(&db.url, workers);
    config.delivery.ca_certs = ca.ca_certs();
    let mut r = Reconciler::new(&config).expect("reconciler");
    match r.run_pass(&AtomicBool::new(false), &NoHooks).expect("pass") {
        PassOutcome::Ran(report) => assert_eq!(report.delivered, 40, "{report:?}"),
        PassOutcome::LockHeld => panic!("lock held"),
    }
    assert!(
        receiver.connections() <= workers,
        "{} TLS handshakes for 40 deliveries by {workers} workers",
        receiver.connections()
    );
}
