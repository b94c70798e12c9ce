//! Secrets kept secret at rest (`[secrets] key_file`), through the real
//! binary and a real PostgreSQL: `migrate` encrypts the channels written
//! before a key existed, a `pg_dump --data-only` then holds neither a
//! signing secret nor a header value, the command line still shows them
//! with `--show-secrets`, deliveries still verify, an instance without the
//! key refuses to start, and `secrets rotate-key` re-encrypts under load
//! while every delivery still arrives, once, and verifies.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use notification_reconciler::delivery::sign::{self, Secret};
use support::bin::{Bin, NOWHERE_CONFIG};
use support::daemon::{config_toml, wait_until, Daemon};
use support::{migrated_db, Receiver, Script, TestDb};

const PG_DUMP: &str = "/usr/lib/postgresql/15/bin/pg_dump";

/// Writes a new random key (base64 of 32 bytes) to `path`.
fn write_key(path: &Path) {
    let bytes: [u8; 32] = rand::random();
    std::fs::write(
        path,
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    )
    .expect("write key");
}

/// The CLI for `db` with `[secrets] key_file` = `key` (an absolute path).
fn keyed(db: &TestDb, key: &Path) -> Bin {
    Bin::with_config(&format!(
        "{NOWHERE_CONFIG}\n[secrets]\nkey_file = {:?}\n",
        key.display().to_string()
    ))
    .env("DATABASE_URL", &db.url)
}

/// The data of `db` as `pg_dump --data-only` writes it.
fn dump(db: &TestDb) -> String {
    let out = Command::new(PG_DUMP)
        .arg("--data-only")
        .arg(&db.url)
        .output()
        .expect("run pg_dump");
    assert!(out.status.success(), "pg_dump: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A secret of 32 random bytes and its base64 part (what must not leak).
fn new_secret() -> (String, String) {
    let s = Secret::generate();
    let key = s.trim_start_matches("whsec_").to_string();
    (s, key)
}

/// Every request `receiver` got verifies with the secret its `x-channel-key`
/// header names; returns the (webhook-id, channel key) pairs.
fn verified(receiver: &Receiver, secrets: &HashMap<String, String>) -> Vec<(String, String)> {
    receiver
        .requests()
        .iter()
        .map(|rq| {
            let key = rq
                .header("x-channel-key")
                .expect("x-channel-key")
                .to_string();
            let secret = Secret::parse(&secrets[&key]).unwrap();
            let id = rq.header("webhook-id").expect("webhook-id").to_string();
            sign::verify(
                &secret,
                &id,
                rq.header("webhook-timestamp").expect("timestamp"),
                rq.header("webhook-signature").expect("signature"),
                &rq.body,
                Utc::now().timestamp(),
                Duration::from_secs(3600),
            )
            .unwrap_or_else(|e| panic!("a delivery to {key} does not verify: {e:?}"));
            (id, key)
        })
        .collect()
}

/// The Python that has the Standard Webhooks reference library
/// (`standardwebhooks` from PyPI, which `.ci/run` installs into
/// `target/py`), if any.
fn reference_python() -> Option<std::path::PathBuf> {
    let candidates = [
        std::env::var_os("NR_PYTHON_BIN").map(|d| std::path::PathBuf::from(d).join("python")),
        Some(std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/py/bin/python"
        ))),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import standardwebhooks"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Every request `receiver` got verifies with the Standard Webhooks
/// reference library under the secret its `x-channel-key` header names
/// (a loud SKIPPED line when the library is not installed, a failure when
/// `CI` is set).
fn verified_by_reference(receiver: &Receiver, secrets: &HashMap<String, String>) {
    use std::io::Write;
    let Some(python) = reference_python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Standard Webhooks reference library (PyPI standardwebhooks) is not installed"
        );
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!! SKIPPED: the Standard Webhooks reference library is not installed (pip install standardwebhooks, or run .ci/run); signatures were checked only with our own verifier !!!!!\n"
        );
        return;
    };
    let requests: Vec<serde_json::Value> = receiver
        .requests()
        .iter()
        .map(|rq| {
            let key = rq.header("x-channel-key").expect("x-channel-key");
            serde_json::json!({
                "secret": secrets[key],
                "headers": {
                    "webhook-id": rq.header("webhook-id"),
                    "webhook-timestamp": rq.header("webhook-timestamp"),
                    "webhook-signature": rq.header("webhook-signature"),
                },
                "body": String::from_utf8_lossy(&rq.body),
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.json");
    std::fs::write(&file, serde_json::to_vec(&requests).unwrap()).unwrap();
    let script = "import json, sys\nfrom standardwebhooks.webhooks import Webhook\nrs = json.load(open(sys.argv[1]))\nfor r in rs:\n    Webhook(r['secret']).verify(r['body'], r['headers'])\nprint(len(rs), 'verified')\n";
    let out = Command::new(python)
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("run the reference verifier");
    assert!(
        out.status.success(),
        "the Standard Webhooks reference library refused a delivery: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{} verified", requests.len())),
        "{out:?}"
    );
}

#[test]
fn with_a_key_a_dump_holds_no_secret_nor_header_value_and_deliveries_verify() {
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200));
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secrets.key");
    write_key(&key);

    // Written before the key existed: stored in plain.
    let plain = Bin::for_database(&db.url);
    let (s1, k1) = new_secret();
    let c1 = plain.create_channel_with(
        "acme",
        "one",
        &receiver.url(),
        &[
            "--secret",
            &s1,
            "--header",
            "X-Channel-Key: header-value-one",
        ],
    );
    assert!(
        dump(&db).contains("header-value-one"),
        "the test must be able to fail"
    );

    let cli = keyed(&db, &key);
    let out = cli.ok(&["migrate"]);
    assert!(out.contains("encrypted the secrets"), "{out}");
    let (s2, k2) = new_secret();
    let c2 = cli.create_channel_with(
        "acme",
        "two",
        &receiver.url(),
        &[
            "--secret",
            &s2,
            "--header",
            "X-Channel-Key: header-value-two",
        ],
    );
    cli.create_rule("acme", "r", "e", &[&c1, &c2], None);

    let data = dump(&db);
    for leak in [
        s1.as_str(),
        k1.as_str(),
        s2.as_str(),
        k2.as_str(),
        "header-value-one",
        "header-value-two",
    ] {
        assert!(!data.contains(leak), "the dump holds {leak}");
    }
    assert!(data.contains("nrenc:v1:"), "no encrypted value in the dump");
    // The command line still shows them when asked.
    let shown = cli.ok(&["channel", "list", "--json", "--show-secrets"]);
    for value in [
        s1.as_str(),
        s2.as_str(),
        "header-value-one",
        "header-value-two",
    ] {
        assert!(shown.contains(value), "{shown}");
    }
    // Deliveries are signed with the secrets and carry the header values.
    cli.ok(&[
        "event",
        "emit",
        "--namespace",
        "acme",
        "--type",
        "e",
        "--data",
        "{}",
    ]);
    let out = cli.run(&["once"]);
    assert!(out.status.success(), "{out:?}");
    assert!(receiver.wait_for(2, Duration::from_secs(30)));
    let secrets = HashMap::from([
        ("header-value-one".to_string(), s1.clone()),
        ("header-value-two".to_string(), s2.clone()),
    ]);
    let keys: HashSet<String> = verified(&receiver, &secrets)
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    verified_by_reference(&receiver, &secrets);

    // A rotation with an overlap signs with both secrets, sealed too.
    let rotated = cli.ok(&["channel", "rotate-secret", &c1, "--overlap", "1h"]);
    let s1_new = rotated.trim().to_string();
    assert!(!dump(&db).contains(s1_new.trim_start_matches("whsec_")));
    cli.ok(&[
        "event",
        "emit",
        "--namespace",
        "acme",
        "--type",
        "e",
        "--data",
        "{}",
    ]);
    let out = cli.run(&["once"]);
    assert!(out.status.success(), "{out:?}");
    assert!(receiver.wait_for(4, Duration::from_secs(30)));
    let last_one = receiver
        .requests()
        .into_iter()
        .rev()
        .find(|rq| rq.header("x-channel-key") == Some("header-value-one"))
        .unwrap();
    for secret in [&s1, &s1_new] {
        sign::verify(
            &Secret::parse(secret).unwrap(),
            last_one.header("webhook-id").unwrap(),
            last_one.header("webhook-timestamp").unwrap(),
            last_one.header("webhook-signature").unwrap(),
            &last_one.body,
            Utc::now().timestamp(),
            Duration::from_secs(3600),
        )
        .expect("both secrets verify during the overlap");
    }

    // Without the key, `once` refuses too (instead of failing deliveries).
    let out = plain.run(&["once"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key_file"),
        "{out:?}"
    );
    // An instance without the key refuses to start, naming the setting.
    let config = config_toml(&db.url, 2, "1s", "", "");
    let mut daemon = Daemon::run("no key", &config, &[]);
    let status = daemon.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", daemon.stderr());
    assert!(daemon.stderr().contains("key_file"), "{}", daemon.stderr());
}

#[test]
fn rotate_key_under_load_loses_nothing_and_every_delivery_verifies() {
    const CHANNELS: usize = 60;
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200));
    let dir = tempfile::tempdir().unwrap();
    let (old_key, new_key) = (dir.path().join("old.key"), dir.path().join("new.key"));
    write_key(&old_key);
    write_key(&new_key);

    // Channels written in plain, one rule to all of them.
    let mut client = db.client();
    let mut secrets = HashMap::new();
    let rule: uuid::Uuid = client
        .query_one(
            "INSERT INTO notification.rule (namespace, name, event_type) VALUES ('acme', 'r', 'e')
             RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);
    for i in 0..CHANNELS {
        let (secret, _) = new_secret();
        let value = format!("channel-key-{i}");
        let headers = serde_json::json!({ "X-Channel-Key": value });
        client
            .execute(
                "WITH c AS (INSERT INTO notification.channel (namespace, name, url, signing_secret, headers)
                            VALUES ('acme', $1, $2, $3, $4) RETURNING id)
                 INSERT INTO notification.rule_channel (rule_id, channel_id) SELECT $5, id FROM c",
                &[&format!("c{i}"), &receiver.url(), &secret, &headers, &rule],
            )
            .unwrap();
        secrets.insert(value, secret);
    }
    let old_cli = keyed(&db, &old_key);
    let out = old_cli.ok(&["migrate"]);
    assert!(out.contains(&format!("of {CHANNELS} channel(s)")), "{out}");

    // The daemon runs with the old key throughout the rotation.
    let config = config_toml(
        &db.url,
        4,
        "100ms",
        "",
        &format!(
            "[secrets]\nkey_file = {:?}\n",
            old_key.display().to_string()
        ),
    );
    let _daemon = Daemon::run("old key", &config, &[]);
    let emitted = std::sync::Mutex::new(0usize);
    let stop = AtomicBool::new(false);
    let rotated = std::thread::scope(|s| {
        s.spawn(|| {
            let mut c = db.client();
            while !stop.load(Ordering::Relaxed) {
                c.execute(
                    "SELECT notification.enqueue_event('acme', 'e', '{}'::jsonb)",
                    &[],
                )
                .unwrap();
                *emitted.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        wait_until(
            "deliveries under way",
            Duration::from_secs(60),
            || receiver.count() >= CHANNELS,
            || _daemon.stderr(),
        );
        let out = old_cli.ok(&[
            "secrets",
            "rotate-key",
            "--new-key-file",
            &new_key.display().to_string(),
        ]);
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        out
    });
    assert!(
        rotated.contains(&format!("re-encrypted {CHANNELS} channel(s)")),
        "{rotated}"
    );
    let new_id = rotated.trim().rsplit(' ').next().unwrap().to_string();
    let under_new: i64 = client
        .query_one(
            "SELECT count(*) FROM notification.channel WHERE signing_secret LIKE $1",
            &[&format!("nrenc:v1:{new_id}:%")],
        )
        .unwrap()
        .get(0);
    assert_eq!(under_new, CHANNELS as i64, "{rotated}");

    // One more event after the rotation, then everything arrives once.
    client
        .execute(
            "SELECT notification.enqueue_event('acme', 'e', '{}'::jsonb)",
            &[],
        )
        .unwrap();
    let events = *emitted.lock().unwrap() + 1;
    wait_until(
        "every delivery to succeed",
        Duration::from_secs(180),
        || {
            client
                .query_one(
                    "SELECT count(*) FILTER (WHERE state = 'SUCCESS'), count(*)
                     FROM notification.delivery_status",
                    &[],
                )
                .map(|r| {
                    r.get::<_, i64>(0) == r.get::<_, i64>(1)
                        && r.get::<_, i64>(1) == (events * CHANNELS) as i64
                })
                .unwrap_or(false)
        },
        || _daemon.stderr(),
    );
    let pairs = verified(&receiver, &secrets);
    verified_by_reference(&receiver, &secrets);
    let unique: HashSet<&(String, String)> = pairs.iter().collect();
    assert_eq!(unique.len(), events * CHANNELS, "every delivery arrived");

    // Finishing with the new key removes the bridges; it reads everything.
    let new_cli = keyed(&db, &new_key);
    let out = new_cli.ok(&[
        "secrets",
        "rotate-key",
        "--new-key-file",
        &new_key.display().to_string(),
    ]);
    assert!(out.contains("removed 2 key bridge(s)"), "{out}");
    let shown = new_cli.ok(&["channel", "list", "--json", "--show-secrets"]);
    assert!(shown.contains(&secrets["channel-key-7"]), "{shown}");
    // And the old key alone can no longer read the new values.
    let out = old_cli.run(&["channel", "list", "--json", "--show-secrets"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}
