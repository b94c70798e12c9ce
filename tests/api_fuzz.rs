//! Property-based fuzzing of the management API driven by its own OpenAPI
//! document: schemathesis (PyPI) generates valid and invalid requests for
//! every operation and checks that none answers 5xx and every answer agrees
//! with the document (status codes, content types, response schemas).
//! Runs through the real binary and PostgreSQL on loopback.
//!
//! schemathesis is found as `$NR_PYTHON_BIN/st`, else `target/py/bin/st`
//! (what `.ci/run` installs), else `st` on PATH. Without it the test says
//! loudly that it was skipped; `.ci/run` always installs it.

mod support;

use std::path::PathBuf;
use std::process::Command;

use std::io::Write;

use serde_json::json;
use support::api::{call, daemon_with_api};
use support::bin::Bin;
use support::migrated_db;

fn schemathesis() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("NR_PYTHON_BIN").map(|d| PathBuf::from(d).join("st")),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/py/bin/st"
        ))),
    ];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return Some(c);
        }
    }
    Command::new("st")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("st"))
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_against_the_document() {
    let Some(st) = schemathesis() else {
        // Written to the real stderr, past the test harness's capture, so
        // that a plain `cargo test` shows it.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!! SKIPPED: schemathesis is not installed (pip install schemathesis, or run .ci/run); the API was NOT fuzzed !!!!!\n"
        );
        return;
    };
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    // The fuzzer sends far more than the default per-token rate.
    let (daemon, api) = daemon_with_api("fuzz", &db.url, "token_rate_limit = \"10000/s\"\n");
    let out = bin.ok(&["token", "create", "--name", "fuzz", "--admin"]);
    let token = out.trim().to_string();
    // Some objects for the operations that read one (ids the fuzzer will
    // mostly not guess: those answer 404, which the document allows).
    let c = call(
        api,
        "POST",
        "/v1/namespaces/fuzz/channels",
        Some(&token),
        Some(&json!({"name": "c", "url": "http://127.0.0.1:9/"})),
    );
    assert_eq!(c.status, 201, "{}", c.text);
    let report = tempfile::tempdir().expect("tempdir");
    let output = Command::new(&st)
        .arg("run")
        .arg(format!("http://{api}/v1/openapi.json"))
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        .args(["--max-examples", "25", "--seed", "20261205", "--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--request-timeout", "20", "--no-shrink"])
        .args(["--suppress-health-check", "all"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("--report-dir")
        .arg(report.path())
        // Its caches (.schemathesis, .hypothesis) go to the temp dir too.
        .current_dir(report.path())
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(
        output.status.success(),
        "schemathesis found problems (exit {:?}):\n{}\n--- daemon ---\n{}",
        output.status.code(),
        text,
        support::daemon::tail(&daemon.stderr(), 40)
    );
    assert!(!daemon.stderr().contains("panicked"), "{}", daemon.stderr());
}
