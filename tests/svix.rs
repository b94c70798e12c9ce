//! Svix as the delivery provider, against a real Svix OSS server (v2.0.0):
//! run when `SVIX_SERVER` names its binary (`support::svix`), else a loud
//! SKIPPED line and a pass. The pure mapping of what Svix reports is
//! unit-tested in `src/delivery/svix/map.rs` and runs always.
//!
//! Each test has its own daemon database and its own Svix server (its own
//! database on the test cluster); Svix delivers only to loopback receivers.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::Utc;
use notification_reconciler::delivery::sign::{self, Secret};
use postgres::Client;
use support::api::call;
use support::bin::Bin;
use support::daemon::{wait_until, Daemon};
use support::fixtures::{emit, NAMESPACE};
use support::svix::{binary, SvixServer};
use support::{migrated_db, Receiver, Script, TestDb};

const EVENT_TYPE: &str = "invoice.paid";

/// A daemon database, a Svix server, and the config that joins them.
struct Setup {
    db: TestDb,
    svix: SvixServer,
    config: String,
}

impl Setup {
    /// `None` (after the SKIPPED line) without `SVIX_SERVER`.
    fn new(test: &str) -> Option<Setup> {
        let bin = binary(&format!("tests/svix.rs {test}"))?;
        let db = migrated_db();
        let svix = SvixServer::start(&bin);
        let config = format!(
            "[database]\nurl = \"{}\"\nconnect_timeout = \"2s\"\n\n\
             [reconciler]\ninterval = \"1s\"\nworkers = 8\n\n\
             [delivery]\nprovider = \"svix\"\n\
             allow_networks = [\"127.0.0.0/8\"]\n\
             retry_schedule = [\"1s\", \"1s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\"]\n\
             max_in_flight_per_channel = 8\nbreaker_failures = 0\n\n\
             [log]\nlevel = \"info\"\n\n{}",
            db.url,
            svix.config_section()
        );
        Some(Setup { db, svix, config })
    }

    fn cli(&self) -> Bin {
        Bin::with_config(&self.config)
    }

    fn daemon(&self, name: &str) -> Daemon {
        Daemon::run(name, &self.config, &[])
    }

    fn client(&self) -> Client {
        self.db.client()
    }

    /// A channel to `url` (with `extra` flags) and a rule for it; its id
    /// and signing secret.
    fn channel(&self, url: &str, extra: &[&str]) -> (String, String) {
        let cli = self.cli();
        let secret = Secret::generate();
        let mut args = vec!["--secret", &*secret];
        args.extend_from_slice(extra);
        let id = cli.create_channel_with(NAMESPACE, "hook", url, &args);
        cli.create_rule(NAMESPACE, "r", EVENT_TYPE, &[&id], None);
        (id, secret.to_string())
    }

    /// The endpoint `uid` of the namespace's app as Svix has it (404: Null).
    fn endpoint(&self, uid: &str) -> (u16, serde_json::Value) {
        self.svix
            .get(&format!("/api/v1/app/{NAMESPACE}/endpoint/{uid}"))
    }
}

fn count_state(client: &mut Client, state: &str) -> i64 {
    support::fixtures::count_state(client, state)
}

/// Every delivery's attempts (oldest first), by event id.
fn attempts(client: &mut Client) -> HashMap<String, Vec<serde_json::Value>> {
    client
        .query(
            "SELECT event_id::text, attempts FROM notification.delivery_status",
            &[],
        )
        .expect("read attempts")
        .iter()
        .map(|r| {
            let a: serde_json::Value = r.get(1);
            (r.get(0), a.as_array().cloned().unwrap_or_default())
        })
        .collect()
}

fn context<'a>(setup: &'a Setup, daemon: &'a Daemon) -> impl Fn() -> String + 'a {
    move || {
        let mut client = setup.client();
        let states = support::fixtures::states(&mut client);
        let stderr = support::daemon::tail(&daemon.stderr(), 30);
        let svix_log = support::daemon::tail(&setup.svix.log(), 20);
        format!("states: {states:?}\ndaemon:\n{stderr}\nsvix:\n{svix_log}")
    }
}

#[test]
fn channel_operations_are_reflected_in_svix_and_sync_repairs_a_deleted_endpoint() {
    let Some(s) = Setup::new("channel operations") else {
        return;
    };
    let cli = s.cli();
    let receiver = Receiver::start(Script::status(200));
    // create: url, secret, headers, rate limit, the channel filter.
    let (id, secret) = s.channel(
        &receiver.url(),
        &["--header", "X-Team: billing", "--rate-limit", "120/m"],
    );
    let (code, ep) = s.endpoint(&id);
    assert_eq!(code, 200, "{ep}");
    assert_eq!(ep["uid"], id.as_str());
    assert_eq!(ep["url"], receiver.url().as_str());
    assert_eq!(ep["disabled"], false);
    assert_eq!(ep["throttleRate"], 2);
    assert_eq!(ep["channels"], serde_json::json!([id]));
    let (_, headers) = s
        .svix
        .get(&format!("/api/v1/app/{NAMESPACE}/endpoint/{id}/headers"));
    assert_eq!(headers["headers"]["X-Team"], "billing", "{headers}");
    let (_, key) = s
        .svix
        .get(&format!("/api/v1/app/{NAMESPACE}/endpoint/{id}/secret"));
    assert_eq!(key["key"], secret.as_str());

    // update
    let other = Receiver::start(Script::status(200));
    cli.ok(&[
        "channel",
        "update",
        &id,
        "--url",
        &other.url(),
        "--rate-limit",
        "none",
    ]);
    let (_, ep) = s.endpoint(&id);
    assert_eq!(ep["url"], other.url().as_str());
    assert!(ep["throttleRate"].is_null(), "{ep}");
    // disable / enable
    cli.ok(&["channel", "disable", &id]);
    assert_eq!(s.endpoint(&id).1["disabled"], true);
    cli.ok(&["channel", "enable", &id]);
    assert_eq!(s.endpoint(&id).1["disabled"], false);
    // rotate
    let new_secret = Secret::generate().to_string();
    cli.ok(&["channel", "rotate-secret", &id, "--secret", &new_secret]);
    let (_, key) = s
        .svix
        .get(&format!("/api/v1/app/{NAMESPACE}/endpoint/{id}/secret"));
    assert_eq!(key["key"], new_secret.as_str());

    // In step: sync finds nothing.
    let report: serde_json::Value =
        serde_json::from_str(&cli.ok(&["svix", "sync", "--json"])).expect("json");
    assert_eq!(report["drift"], serde_json::json!([]), "{report}");
    assert_eq!(report["in_step"], 1, "{report}");

    // Deleted (and changed) behind our back: a dry run lists, sync repairs.
    assert_eq!(
        s.svix
            .delete(&format!("/api/v1/app/{NAMESPACE}/endpoint/{id}")),
        204
    );
    assert_eq!(s.endpoint(&id).0, 404);
    let dry: serde_json::Value =
        serde_json::from_str(&cli.ok(&["svix", "sync", "--dry-run", "--json"])).expect("json");
    assert_eq!(dry["drift"][0]["action"], "create", "{dry}");
    assert_eq!(dry["drift"][0]["repaired"], false, "{dry}");
    assert_eq!(s.endpoint(&id).0, 404, "a dry run changes nothing");
    let text = cli.ok(&["svix", "sync"]);
    assert!(text.contains("repaired"), "{text}");
    let (code, ep) = s.endpoint(&id);
    assert_eq!(code, 200);
    assert_eq!(ep["url"], other.url().as_str());

    // delete
    cli.ok(&["channel", "delete", &id]);
    assert_eq!(s.endpoint(&id).0, 404);

    // Svix unreachable during a change: the change is kept, with a warning;
    // sync repairs it once Svix answers.
    let status = cli.ok(&["status"]);
    assert!(
        status.contains(&format!("provider:  svix ({}: answers)", s.svix.url())),
        "{status}"
    );
    let checked = cli.ok(&["check-config"]);
    assert!(checked.contains("provider = \"svix\""), "{checked}");
    assert!(
        !checked.contains(&s.svix.token),
        "the token is never printed"
    );
    let mut s = s;
    s.svix.stop();
    let status: serde_json::Value =
        serde_json::from_str(&cli.ok(&["status", "--json"])).expect("json");
    assert_eq!(status["provider"], "svix");
    assert_eq!(status["svix"]["reachable"], false, "{status}");
    let out = cli.run(&[
        "channel",
        "create",
        "--namespace",
        NAMESPACE,
        "--name",
        "later",
        "--url",
        &receiver.url(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let later = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("svix sync"),
        "{out:?}"
    );
    s.svix.resume();
    assert_eq!(s.endpoint(&later).0, 404);
    let report: serde_json::Value =
        serde_json::from_str(&cli.ok(&["svix", "sync", "--json"])).expect("json");
    assert_eq!(report["drift"][0]["channel_id"], later.as_str(), "{report}");
    assert_eq!(s.endpoint(&later).0, 200);
}

#[test]
fn a_hundred_events_reach_the_receiver_through_svix_signed_and_recorded() {
    let Some(s) = Setup::new("100 events") else {
        return;
    };
    let receiver = Receiver::start(Script::status(200));
    let (_id, secret) = s.channel(&receiver.url(), &[]);
    let mut d = s.daemon("A");
    let mut client = s.client();
    let ids = emit(&mut client, EVENT_TYPE, "jsonb_build_object('n', g)", 100);
    wait_until(
        "100 deliveries SUCCESS",
        Duration::from_secs(120),
        || count_state(&mut client, "SUCCESS") == 100,
        context(&s, &d),
    );
    assert!(d.running());
    // Each event once, each signed with the channel's secret.
    assert_eq!(receiver.count(), 100);
    let key = Secret::parse(&secret).expect("secret");
    let mut seen = BTreeSet::new();
    for rq in receiver.requests() {
        let body = rq.json();
        seen.insert(body["id"].as_str().expect("id").to_owned());
        sign::verify(
            &key,
            rq.header("webhook-id").expect("webhook-id"),
            rq.header("webhook-timestamp").expect("timestamp"),
            rq.header("webhook-signature").expect("signature"),
            &rq.body,
            Utc::now().timestamp(),
            Duration::from_secs(3600),
        )
        .expect("signed with the channel's secret");
    }
    let expected: BTreeSet<String> = ids.iter().map(|u| u.to_string()).collect();
    assert_eq!(seen, expected);
    reference_verifies(&receiver, &secret);
    // Svix's attempt data in our record.
    for (event, a) in attempts(&mut client) {
        assert_eq!(a.len(), 1, "{event}: {a:?}");
        assert_eq!(a[0]["http_status"], 200);
        assert_eq!(a[0]["state"], "SUCCESS");
        assert!(a[0]["svix_message_id"]
            .as_str()
            .is_some_and(|m| m.starts_with("msg_")));
        assert_eq!(a[0]["url"], receiver.url().as_str());
    }
    // One message per delivery in Svix.
    assert_eq!(s.svix.messages(NAMESPACE).len(), 100);
    d.stop(Duration::from_secs(30));
}

/// Polls come in batches: 200 events, each delivered at Svix's first try,
/// are nearly all settled by batch reads of the endpoint (a list of its
/// messages and one of its attempts, each call serving many deliveries),
/// not by one or two calls per delivery; the record is the same.
#[test]
fn polls_are_answered_by_batch_reads_of_the_endpoint() {
    let Some(s) = Setup::new("batched polls") else {
        return;
    };
    let receiver = Receiver::start(Script::status(200));
    s.channel(&receiver.url(), &[]);
    let config = s.config.replace("level = \"info\"", "level = \"debug\"");
    let mut d = Daemon::run("A", &config, &[]);
    let mut client = s.client();
    emit(&mut client, EVENT_TYPE, "jsonb_build_object('n', g)", 200);
    wait_until(
        "200 deliveries SUCCESS",
        Duration::from_secs(120),
        || count_state(&mut client, "SUCCESS") == 200,
        context(&s, &d),
    );
    for (event, a) in attempts(&mut client) {
        assert_eq!(a.len(), 1, "{event}: {a:?}");
        assert_eq!(a[0]["http_status"], 200);
        assert!(a[0]["svix_message_id"]
            .as_str()
            .is_some_and(|m| m.starts_with("msg_")));
    }
    let log = d.stderr();
    let batched = log.matches("settled by a batch read").count();
    let own = log.matches("by its own calls").count();
    let reads: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Svix batch read of endpoint"))
        .collect();
    let list_calls: usize = reads
        .iter()
        .filter_map(|l| {
            let head = l.rsplit_once(" calls")?.0;
            head.rsplit(' ').next()?.parse::<usize>().ok()
        })
        .sum();
    let summary = format!(
        "{batched} polls settled by {} batch reads ({list_calls} calls), {own} by their own calls",
        reads.len()
    );
    eprintln!("{summary}");
    assert!(batched >= 150, "{summary}");
    // Each delivery polled by its own calls costs one or two; before
    // batches, 200 deliveries cost at least 200.
    assert!(list_calls + 2 * own <= 80, "{summary}");
    assert_eq!(receiver.count(), 200);
    d.stop(Duration::from_secs(30));
}

/// The leader's auto-disable reaches Svix too: with Svix stopped, the
/// channel's hand-overs fail for `disable_after` and it is auto-disabled;
/// once Svix answers again its endpoint is disabled there as well (as a
/// `channel disable` does), without a `svix sync`.
#[test]
fn an_auto_disabled_channel_is_disabled_in_svix_once_it_answers() {
    let Some(mut s) = Setup::new("auto-disable") else {
        return;
    };
    let receiver = Receiver::start(Script::status(200));
    let (id, _) = s.channel(&receiver.url(), &[]);
    let (_, ep) = s.endpoint(&id);
    assert_eq!(ep["disabled"], false, "{ep}");
    let config = s.config.replace(
        "breaker_failures = 0\n",
        "breaker_failures = 0\ndisable_after = \"2s\"\n",
    );
    s.svix.stop();
    let d = Daemon::run("A", &config, &[]);
    let mut client = s.client();
    emit(&mut client, EVENT_TYPE, "jsonb_build_object('n', g)", 3);
    wait_until(
        "the channel auto-disabled",
        Duration::from_secs(60),
        || {
            client
                .query_one(
                    "SELECT disabled FROM notification.channel WHERE id = $1::text::uuid",
                    &[&id],
                )
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
        },
        || support::daemon::tail(&d.stderr(), 30),
    );
    s.svix.resume();
    wait_until(
        "the endpoint disabled in Svix",
        Duration::from_secs(60),
        || s.endpoint(&id).1["disabled"] == true,
        || support::daemon::tail(&d.stderr(), 30),
    );
    assert!(d.stderr().contains("its Svix endpoint is disabled too"));
}

/// The Standard Webhooks reference library (PyPI `standardwebhooks`)
/// verifies every request, when installed (else a loud SKIPPED line).
fn reference_verifies(receiver: &Receiver, secret: &str) {
    use std::io::Write;
    let python = [
        std::env::var_os("NR_PYTHON_BIN").map(|d| std::path::PathBuf::from(d).join("python")),
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/target/py/bin/python").into()),
        Some("python3".into()),
    ]
    .into_iter()
    .flatten()
    .find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import standardwebhooks"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!! SKIPPED: the Standard Webhooks reference library is not installed; Svix's signatures were checked only with our own verifier !!!!!\n"
        );
        return;
    };
    let requests: Vec<serde_json::Value> = receiver
        .requests()
        .iter()
        .map(|rq| {
            serde_json::json!({
                "headers": {
                    "webhook-id": rq.header("webhook-id"),
                    "webhook-timestamp": rq.header("webhook-timestamp"),
                    "webhook-signature": rq.header("webhook-signature"),
                },
                "body": String::from_utf8_lossy(&rq.body),
            })
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("requests.json");
    std::fs::write(&file, serde_json::to_vec(&requests).expect("json")).expect("write");
    let script = "import json, sys\nfrom standardwebhooks.webhooks import Webhook\nrs = json.load(open(sys.argv[1]))\nfor r in rs:\n    Webhook(sys.argv[2]).verify(r['body'], r['headers'])\nprint(len(rs), 'verified')\n";
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(&file)
        .arg(secret)
        .output()
        .expect("run the reference verifier");
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .contains(&format!("{} verified", requests.len())),
        "the reference library refused a delivery: {out:?}"
    );
}

#[test]
fn an_endpoint_answering_500_once_has_the_500_and_the_200_recorded() {
    let Some(s) = Setup::new("500 then 200") else {
        return;
    };
    let receiver = Receiver::start(Script::sequence_per_id(vec![500, 200]));
    s.channel(&receiver.url(), &[]);
    let d = s.daemon("A");
    let mut client = s.client();
    emit(&mut client, EVENT_TYPE, "'{}'::jsonb", 3);
    wait_until(
        "3 deliveries SUCCESS",
        Duration::from_secs(120),
        || count_state(&mut client, "SUCCESS") == 3,
        context(&s, &d),
    );
    assert_eq!(receiver.count(), 6);
    for (event, a) in attempts(&mut client) {
        let codes: Vec<_> = a.iter().map(|x| x["http_status"].clone()).collect();
        assert_eq!(codes, vec![500, 200], "{event}: {a:?}");
        assert_eq!(a[0]["svix_message_id"], a[1]["svix_message_id"]);
        assert_eq!(a[1]["state"], "SUCCESS");
    }
}

#[test]
fn svix_stopped_for_ten_seconds_then_restarted_delivers_every_event_exactly_once() {
    let Some(mut s) = Setup::new("Svix stopped") else {
        return;
    };
    let receiver = Receiver::start(Script::status(200));
    s.channel(&receiver.url(), &[]);
    let mut d = s.daemon("A");
    let mut client = s.client();
    emit(&mut client, EVENT_TYPE, "'{}'::jsonb", 5);
    wait_until(
        "the first 5 delivered",
        Duration::from_secs(60),
        || count_state(&mut client, "SUCCESS") == 5,
        context(&s, &d),
    );
    s.svix.stop();
    emit(&mut client, EVENT_TYPE, "jsonb_build_object('n', g)", 20);
    // Hand-overs fail while Svix is away (recorded as such), nothing is lost.
    wait_until(
        "failed hand-overs recorded",
        Duration::from_secs(30),
        || {
            attempts(&mut client).values().any(|a| {
                a.iter().any(|x| {
                    x["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("not handed to Svix"))
                })
            })
        },
        context(&s, &d),
    );
    std::thread::sleep(Duration::from_secs(10));
    assert!(d.running(), "the daemon kept running without Svix");
    assert_eq!(count_state(&mut client, "FAILED"), 0);
    s.svix.resume();
    wait_until(
        "all 25 delivered",
        Duration::from_secs(120),
        || count_state(&mut client, "SUCCESS") == 25,
        context(&s, &d),
    );
    let ids = receiver.ids();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 25, "no event twice, none lost: {ids:?}");
    assert_eq!(unique.len(), 25);
    assert_eq!(s.svix.messages(NAMESPACE).len(), 25);
    assert!(d.running());
}

#[test]
fn kill_9_between_hand_over_and_record_makes_no_second_message() {
    let Some(s) = Setup::new("kill -9") else {
        return;
    };
    let receiver = Receiver::start(Script::status(200));
    s.channel(&receiver.url(), &[]);
    let mut client = s.client();
    let ids = emit(&mut client, EVENT_TYPE, "'{}'::jsonb", 3);
    // Hold the rows: the daemon hands over, then its record waits.
    let mut holder = s.client();
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    let mut tx = holder.transaction().expect("tx");
    tx.execute("SELECT 1 FROM notification.delivery_status FOR UPDATE", &[])
        .expect("lock the rows");
    let mut d = s.daemon("A");
    wait_until(
        "the 3 messages in Svix",
        Duration::from_secs(60),
        || s.svix.messages(NAMESPACE).len() == 3,
        context(&s, &d),
    );
    d.kill9();
    // A killed client's backend would still run its waiting UPDATE once the
    // rows are free: end the daemon's sessions first, as a crash of its
    // host would.
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> $1",
            &[&holder_pid],
        )
        .expect("end the killed daemon's sessions");
    tx.rollback().expect("release");
    drop(holder);
    assert_eq!(
        count_state(&mut client, "PENDING"),
        3,
        "nothing was recorded"
    );
    // A new daemon hands the same deliveries over again.
    let d2 = s.daemon("B");
    wait_until(
        "3 deliveries SUCCESS",
        Duration::from_secs(120),
        || count_state(&mut client, "SUCCESS") == 3,
        context(&s, &d2),
    );
    assert_eq!(s.svix.messages(NAMESPACE).len(), 3, "no second message");
    let got: BTreeSet<String> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!(receiver.count(), 3, "each event reached the receiver once");
    assert_eq!(
        got,
        ids.iter().map(|u| u.to_string()).collect::<BTreeSet<_>>()
    );
}

#[test]
fn resend_goes_through_svix_as_a_new_message() {
    let Some(s) = Setup::new("resend") else {
        return;
    };
    let receiver = Receiver::start(Script::status(200));
    s.channel(&receiver.url(), &[]);
    let d = s.daemon("A");
    let mut client = s.client();
    let ids = emit(&mut client, EVENT_TYPE, "'{}'::jsonb", 1);
    wait_until(
        "delivered",
        Duration::from_secs(60),
        || count_state(&mut client, "SUCCESS") == 1,
        context(&s, &d),
    );
    s.cli().ok(&["resend", &ids[0].to_string()]);
    wait_until(
        "delivered again",
        Duration::from_secs(60),
        || receiver.count() == 2 && count_state(&mut client, "SUCCESS") == 1,
        context(&s, &d),
    );
    assert_eq!(s.svix.messages(NAMESPACE).len(), 2);
    let a = attempts(&mut client)
        .remove(&ids[0].to_string())
        .expect("attempts");
    assert_eq!(a.len(), 2, "{a:?}");
    assert_ne!(a[0]["svix_message_id"], a[1]["svix_message_id"]);
    let requests = receiver.requests();
    assert_eq!(requests[0].json()["id"], requests[1].json()["id"]);
}

#[test]
fn channel_changes_through_the_api_are_reflected_in_svix() {
    let Some(s) = Setup::new("API door") else {
        return;
    };
    let addr = support::net::free_addr();
    let config = format!("{}\n[api]\nlisten = \"{addr}\"\n", s.config);
    let d = Daemon::run("A", &config, &[]);
    wait_until(
        "the API to answer",
        Duration::from_secs(30),
        || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        || d.stderr(),
    );
    let token = s
        .cli()
        .ok(&["token", "create", "--name", "ops", "--admin"])
        .trim()
        .to_owned();
    let receiver = Receiver::start(Script::status(200));
    let base = format!("/v1/namespaces/{NAMESPACE}/channels");
    let created = call(
        addr,
        "POST",
        &base,
        Some(&token),
        Some(&serde_json::json!({"name": "api", "url": receiver.url(), "headers": {"X-A": "1"}})),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().expect("id").to_owned();
    let (code, ep) = s.endpoint(&id);
    assert_eq!(code, 200, "{ep}");
    assert_eq!(ep["url"], receiver.url().as_str());
    let other = Receiver::start(Script::status(200));
    let patched = call(
        addr,
        "PATCH",
        &format!("{base}/{id}"),
        Some(&token),
        Some(&serde_json::json!({"url": other.url(), "rate_limit": "5/s"})),
    );
    assert_eq!(patched.status, 200, "{}", patched.text);
    let (_, ep) = s.endpoint(&id);
    assert_eq!(ep["url"], other.url().as_str());
    assert_eq!(ep["throttleRate"], 5);
    let disabled = call(
        addr,
        "POST",
        &format!("{base}/{id}/disable"),
        Some(&token),
        None,
    );
    assert_eq!(disabled.status, 200, "{}", disabled.text);
    assert_eq!(s.endpoint(&id).1["disabled"], true);
    let deleted = call(addr, "DELETE", &format!("{base}/{id}"), Some(&token), None);
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(s.endpoint(&id).0, 404);
    // Svix away: the change is made, the answer carries a warning.
    let mut s = s;
    s.svix.stop();
    let created = call(
        addr,
        "POST",
        &base,
        Some(&token),
        Some(&serde_json::json!({"name": "later", "url": receiver.url()})),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    let warning = created.header("warning").unwrap_or_default().to_owned();
    assert!(
        warning.starts_with("199 - ") && warning.contains("svix sync"),
        "{warning:?}"
    );
}
