//! Safe to expose to customers (docs/security.md), end to end through the
//! real binary and a real PostgreSQL: the SSRF guard with every loopback
//! notation (refused by default, let through by `delivery.allow_networks`),
//! secret rotation verified by the reference verification and by our `sink`,
//! the producer checks of `enqueue_event`, and the least-privilege roles of
//! docs/operations.md.
//!
//! Every connection here goes to loopback (127.0.0.0/8, ::1): the
//! classification of every other range is unit-tested as a pure function in
//! `src/delivery/ssrf.rs`, and `channel create` refuses the literal
//! internal addresses below without connecting anywhere.

mod support;

use std::time::Duration;

use notification_reconciler::delivery::sign::{self, Secret};
use postgres::Client;
use support::bin::{allow_loopback, Bin};
use support::daemon::Daemon;
use support::fixtures::{self, channel_and_rule, enqueue, NAMESPACE, SECRET};
use support::net::free_addr;
use support::{migrated_db, Receiver, Script, TestDb};
use uuid::Uuid;

/// A config that keeps the SSRF guard's default (nothing allowed) and never
/// retries within a test.
const DENY_ALL: &str = "[delivery]\nallow_networks = []\nretry_schedule = [\"1m\"]\n";
/// The same with the tests' loopback allow list.
fn allow_all_loopback() -> String {
    allow_loopback("[delivery]\nretry_schedule = [\"1m\"]\n")
}

/// The binary with `config` and `DATABASE_URL` = `url`.
fn bin(config: &str, url: &str) -> Bin {
    Bin::with_config(config).env("DATABASE_URL", url)
}

/// A channel to `url` with `secret`, added to the fixtures' rule (created
/// by the first call).
fn channel(client: &mut Client, url: &str, secret: &str) -> Uuid {
    let rule: Option<Uuid> = client
        .query_opt(
            "SELECT id FROM notification.rule WHERE namespace = $1",
            &[&NAMESPACE],
        )
        .expect("find rule")
        .map(|r| r.get(0));
    let rule = rule.unwrap_or_else(|| {
        client
            .query_one(
                "INSERT INTO notification.rule (namespace, name, event_type)
                 VALUES ($1, 'rule', $2) RETURNING id",
                &[&NAMESPACE, &fixtures::EVENT_TYPE],
            )
            .expect("insert rule")
            .get(0)
    });
    let id: Uuid = client
        .query_one(
            "INSERT INTO notification.channel (namespace, name, url, signing_secret)
             VALUES ($1, 'ch-' || gen_random_uuid(), $2, $3) RETURNING id",
            &[&NAMESPACE, &url, &secret],
        )
        .expect("insert channel")
        .get(0);
    client
        .execute(
            "INSERT INTO notification.rule_channel (rule_id, channel_id) VALUES ($1, $2)",
            &[&rule, &id],
        )
        .expect("assign channel");
    id
}

/// State and reason of the delivery to `channel`.
fn delivery(client: &mut Client, channel: Uuid) -> (String, String) {
    let row = client
        .query_one(
            "SELECT state, reason FROM notification.delivery_status WHERE channel_id = $1
             ORDER BY created_at DESC LIMIT 1",
            &[&channel],
        )
        .expect("read delivery");
    (row.get(0), row.get(1))
}

/// Every loopback notation of the receiver at `port`.
fn loopback_forms(port: u16) -> Vec<String> {
    [
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "[::ffff:127.0.0.1]",
        "localhost",
        "[::1]",
    ]
    .iter()
    .map(|host| format!("http://{host}:{port}/hook"))
    .collect()
}

// ---- SSRF guard -------------------------------------------------------------

/// A database with one channel per loopback notation of one receiver and
/// one event enqueued for all of them.
fn one_event_to_every_loopback_form() -> (TestDb, Receiver, Client, Vec<(String, Uuid)>) {
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200));
    let mut client = db.client();
    let channels = loopback_forms(receiver.addr().port())
        .into_iter()
        .map(|url| {
            let id = channel(&mut client, &url, SECRET);
            (url, id)
        })
        .collect();
    enqueue(&mut client, 1);
    (db, receiver, client, channels)
}

/// `channel create` of a channel named x in namespace acme to `url`.
fn create_args(url: &str) -> [&str; 8] {
    [
        "channel",
        "create",
        "--namespace",
        "acme",
        "--name",
        "x",
        "--url",
        url,
    ]
}

#[test]
fn channel_create_with_a_literal_refused_address_exits_2_naming_the_key() {
    let db = migrated_db();
    let deny = bin(DENY_ALL, &db.url);
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5:6379/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::1]:8080/",
        "http://[fd00::1]/",
        "http://100.64.0.1/",
    ] {
        let line = deny.fails(2, &create_args(url));
        assert!(line.contains("delivery.allow_networks"), "{url}: {line}");
        assert!(line.contains("refused"), "{url}: {line}");
    }
    // A host name that resolves to a refused address now is refused with
    // the same message (and checked again at delivery time).
    let line = deny.fails(2, &create_args("http://localhost:1/"));
    assert!(line.contains("delivery.allow_networks"), "{line}");
    assert!(line.contains("resolves to"), "{line}");
    // The allow list lets exactly its ranges through.
    let allow = bin(&allow_all_loopback(), &db.url);
    allow.ok(&create_args("http://2130706433:1/"));
    let line = allow.fails(2, &create_args("http://169.254.169.254/"));
    assert!(line.contains("delivery.allow_networks"), "{line}");
    let n: i64 = db
        .client()
        .query_one("SELECT count(*) FROM notification.channel", &[])
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "only the one accepted channel exists");
}

#[test]
fn every_loopback_form_is_refused_by_default_without_a_request_and_failed_permanently() {
    let (db, receiver, mut client, channels) = one_event_to_every_loopback_form();
    let out = bin(DENY_ALL, &db.url).run(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(receiver.count(), 0, "a refused address was connected to");
    for (url, id) in &channels {
        let (state, reason) = delivery(&mut client, *id);
        assert_eq!(state, "FAILED", "{url}: {reason}");
        assert!(
            reason.starts_with("permanent failure: refused to connect"),
            "{url}: {reason}"
        );
        assert!(reason.contains("loopback address"), "{url}: {reason}");
        assert!(
            reason.contains("delivery.allow_networks"),
            "{url}: {reason}"
        );
    }
    // The reason (which the customer sees) never names the address a host
    // name resolved to: that would map the operator's internal names.
    let (url, id) = &channels[4];
    assert!(url.contains("localhost"), "{url}");
    let (_, reason) = delivery(&mut client, *id);
    for address in ["127.0.0.1", "::1"] {
        assert!(!reason.contains(address), "{reason}");
    }
    // The operator still sees it in the log.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused to connect to 127.0.0.1")
            || err.contains("refused to connect to ::1"),
        "{err}"
    );
}

#[test]
fn the_allow_list_lets_every_loopback_form_through() {
    let (db, receiver, mut client, channels) = one_event_to_every_loopback_form();
    let out = bin(&allow_all_loopback(), &db.url).run(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for (url, id) in &channels {
        let (state, reason) = delivery(&mut client, *id);
        assert!(!reason.contains("allow_networks"), "{url}: {reason}");
        // The receiver listens on 127.0.0.1 only, so [::1] (and localhost,
        // when it resolves to ::1 first) may find no one there: allowed,
        // connected, refused by the OS, retried later.
        if !url.contains("[::1]") && !url.contains("localhost") {
            assert_eq!(state, "SUCCESS", "{url}: {reason}");
        }
    }
    assert!(receiver.count() >= 4, "{} requests", receiver.count());
}

// ---- secret rotation --------------------------------------------------------

/// A `sink` child on a free loopback port verifying with `secret`.
fn sink(secret: &str) -> (Daemon, String) {
    let addr = free_addr().to_string();
    let sink = Daemon::spawn(
        "sink",
        "",
        &["sink", "--listen", &addr, "--secret", secret],
        &[],
    );
    assert!(
        sink.wait_line("listening", Duration::from_secs(20)),
        "the sink did not start: {}",
        sink.stderr()
    );
    (sink, format!("http://{addr}/hook"))
}

#[test]
fn rotate_secret_signs_with_both_secrets_during_the_overlap_and_only_the_new_after() {
    let db = migrated_db();
    let mut client = db.client();
    let receiver = Receiver::start(Script::status(200));
    let direct = channel_and_rule(&mut client, &receiver.url());
    // Two sinks: one verifying with a channel's old secret, one with the
    // other channel's new secret (given with --secret).
    let old_b = Secret::generate();
    let (_sink_old, url_old) = sink(&old_b);
    let by_old = channel(&mut client, &url_old, &old_b);
    let new_c = Secret::generate();
    let (_sink_new, url_new) = sink(&new_c);
    let by_new = channel(&mut client, &url_new, &Secret::generate());

    let nr = bin(&allow_all_loopback(), &db.url);
    let rotate = |id: Uuid, extra: &[&str]| {
        let mut args = vec![
            "channel".to_owned(),
            "rotate-secret".to_owned(),
            id.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = nr.run(&args);
        let stdout = support::bin::assert_ok(&out, "rotate-secret");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let secret = stdout.trim().to_owned();
        Secret::parse(&secret).expect("rotate-secret prints the new secret");
        assert!(
            !stderr.contains(secret.trim_start_matches("whsec_")),
            "{stderr}"
        );
        secret
    };
    let new_direct = rotate(direct, &["--overlap", "1h"]);
    rotate(by_old, &[]);
    assert_eq!(rotate(by_new, &["--secret", &new_c]), new_c);

    let event = enqueue(&mut client, 1)[0];
    nr.ok(&["once"]);
    let rq = receiver.requests().pop().expect("a request");
    let header = rq
        .header("webhook-signature")
        .expect("signature")
        .to_owned();
    assert_eq!(header.split(' ').count(), 2, "{header}");
    let verify = |secret: &str, rq: &support::Request| {
        sign::verify(
            &Secret::parse(secret).expect("secret"),
            rq.header("webhook-id").unwrap_or(""),
            rq.header("webhook-timestamp").unwrap_or(""),
            rq.header("webhook-signature").unwrap_or(""),
            &rq.body,
            chrono::Utc::now().timestamp(),
            Duration::from_secs(300),
        )
    };
    assert_eq!(verify(SECRET, &rq), Ok(()), "old secret during the overlap");
    assert_eq!(
        verify(&new_direct, &rq),
        Ok(()),
        "new secret during the overlap"
    );
    for id in [direct, by_old, by_new] {
        assert_eq!(
            delivery(&mut client, id).0,
            "SUCCESS",
            "{:?}",
            delivery(&mut client, id)
        );
    }

    // The overlap ends: only the new secret signs.
    client
        .execute(
            "UPDATE notification.channel SET previous_secret_until = now() - interval '1 second'
             WHERE previous_secret IS NOT NULL",
            &[],
        )
        .expect("end the overlap");
    nr.ok(&["resend", &event.to_string()]);
    nr.ok(&["once"]);
    let rq = receiver.requests().pop().expect("a second request");
    let header = rq
        .header("webhook-signature")
        .expect("signature")
        .to_owned();
    assert_eq!(header.split(' ').count(), 1, "{header}");
    assert_eq!(
        verify(SECRET, &rq),
        Err(sign::VerifyError::NoMatchingSignature)
    );
    assert_eq!(verify(&new_direct, &rq), Ok(()));
    assert_eq!(delivery(&mut client, by_new).0, "SUCCESS");
    let (state, reason) = delivery(&mut client, by_old);
    assert_eq!(
        state, "SENDING",
        "the old secret's sink must refuse: {reason}"
    );
    assert!(reason.contains("401"), "{reason}");

    // Usage errors: unknown channel, bad secret (never echoed), huge overlap.
    let line = nr.fails(
        2,
        &["channel", "rotate-secret", &Uuid::new_v4().to_string()],
    );
    assert!(line.contains("no channel"), "{line}");
    let line = nr.fails(
        2,
        &[
            "channel",
            "rotate-secret",
            &direct.to_string(),
            "--secret",
            "whsec_sekrit!",
        ],
    );
    assert!(!line.contains("sekrit"), "{line}");
    nr.fails(
        2,
        &[
            "channel",
            "rotate-secret",
            &direct.to_string(),
            "--overlap",
            "5000d",
        ],
    );
}

// ---- producer checks --------------------------------------------------------

#[test]
fn enqueue_event_refuses_non_objects_and_oversized_payloads_and_the_caller_rolls_back() {
    let db = migrated_db();
    let mut client = db.client();
    channel_and_rule(&mut client, "http://127.0.0.1:1/");
    client
        .batch_execute(
            "CREATE TABLE public.orders (id int);
             UPDATE notification.settings SET max_payload_bytes = 100;",
        )
        .expect("setup");
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(100));
    let over = |n: u32| {
        format!("enqueue_event: payload and annotations are {n} bytes, over the limit of 100 bytes (delivery.max_payload_bytes)")
    };
    let (over_payload, over_annotations) = (over(111), over(113));
    for (payload, annotations, code, message) in [
        (
            "42",
            "{}",
            "22023",
            "enqueue_event: payload must be a JSON object, not number",
        ),
        (
            "[1, 2]",
            "{}",
            "22023",
            "enqueue_event: payload must be a JSON object, not array",
        ),
        (
            "null",
            "{}",
            "22023",
            "enqueue_event: payload must be a JSON object, not null",
        ),
        (
            "\"s\"",
            "{}",
            "22023",
            "enqueue_event: payload must be a JSON object, not string",
        ),
        (
            "{}",
            "[1]",
            "22023",
            "enqueue_event: annotations must be a JSON object, not array",
        ),
        (big.as_str(), "{}", "54000", over_payload.as_str()),
        // Annotations given count towards the cap too.
        ("{}", big.as_str(), "54000", over_annotations.as_str()),
    ] {
        let mut tx = client.transaction().expect("begin");
        tx.execute("INSERT INTO public.orders VALUES (1)", &[])
            .expect("business write");
        let err = tx
            .query(
                "SELECT notification.enqueue_event('acme', 'invoice.paid', $1::text::jsonb, $2::text::jsonb)",
                &[&payload, &annotations],
            )
            .expect_err(payload);
        let db_err = err.as_db_error().expect("a database error");
        assert_eq!(db_err.code().code(), code, "{payload}");
        assert_eq!(db_err.message(), message, "{payload}");
        drop(tx); // the caller's rollback
    }
    let counts = client
        .query_one(
            "SELECT (SELECT count(*) FROM public.orders), (SELECT count(*) FROM notification.event),
                    (SELECT count(*) FROM notification.delivery_status)",
            &[],
        )
        .expect("count");
    assert_eq!(
        (
            counts.get::<_, i64>(0),
            counts.get::<_, i64>(1),
            counts.get::<_, i64>(2)
        ),
        (0, 0, 0)
    );
    // Exactly at the limit is accepted.
    let at_limit = format!("{{\"pad\": \"{}\"}}", "x".repeat(89));
    assert_eq!(at_limit.len(), 100);
    client
        .query(
            "SELECT notification.enqueue_event('acme', 'invoice.paid', $1::text::jsonb)",
            &[&at_limit],
        )
        .expect("a payload of exactly the limit");
}

#[test]
fn event_emit_refuses_non_objects_and_oversized_payloads_with_exit_2_and_the_configured_limit() {
    let db = migrated_db();
    channel_and_rule(&mut db.client(), "http://127.0.0.1:1/");
    let nr = bin("[delivery]\nmax_payload_bytes = 1000\n", &db.url);
    let out = nr.ok(&["migrate"]);
    assert!(out.contains("1000 bytes"), "{out}");
    let cap: i32 = db
        .client()
        .query_one("SELECT max_payload_bytes FROM notification.settings", &[])
        .expect("cap")
        .get(0);
    assert_eq!(cap, 1000, "migrate stores delivery.max_payload_bytes");
    let emit = |data: &str| -> Vec<String> {
        vec![
            "event".into(),
            "emit".into(),
            "--namespace".into(),
            NAMESPACE.into(),
            "--type".into(),
            fixtures::EVENT_TYPE.into(),
            "--data".into(),
            data.into(),
        ]
    };
    let fails = |data: &str| {
        let args = emit(data);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nr.fails(2, &args)
    };
    for data in ["42", "[1,2]", "null", "\"text\""] {
        let line = fails(data);
        assert!(
            line.contains("payload must be a JSON object"),
            "{data}: {line}"
        );
    }
    let over = format!("{{\"pad\": \"{}\"}}", "x".repeat(1000));
    let line = fails(&over);
    assert!(
        line.contains("over the limit of 1000 bytes (delivery.max_payload_bytes)"),
        "{line}"
    );
    let file = nr.dir().join("over.json");
    std::fs::write(&file, &over).expect("write payload");
    let line = fails(&format!("@{}", file.display()));
    assert!(line.contains("over the limit of 1000 bytes"), "{line}");
    // A huge file (sparse: no disk used) is refused without being read.
    let huge = nr.dir().join("huge.json");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(100_000_000))
        .expect("sparse file");
    let line = fails(&format!("@{}", huge.display()));
    assert!(line.contains("not read"), "{line}");
    assert!(line.contains("delivery.max_payload_bytes"), "{line}");
    let n: i64 = db
        .client()
        .query_one("SELECT count(*) FROM notification.event", &[])
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "nothing was enqueued");
    let ok = nr.ok(&emit("{\"n\": 1}")
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(ok.trim().parse::<Uuid>().is_ok(), "{ok}");
}

// ---- least privilege --------------------------------------------------------

/// The producer and reconciler roles of docs/operations.md, made with the
/// exact GRANT block there under names unique to this test's database;
/// dropped (with their privileges) on drop.
struct Roles {
    url: String,
    producer: String,
    reconciler: String,
}

impl Roles {
    fn create(db: &TestDb) -> Roles {
        let docs = include_str!("../docs/operations.md");
        let block = docs
            .split("<!-- grants: begin -->")
            .nth(1)
            .and_then(|rest| rest.split("<!-- grants: end -->").next())
            .expect("the GRANT block in docs/operations.md");
        let sql = block.replace("```sql", "").replace("```", "");
        let producer = format!("{}_producer", db.name);
        let reconciler = format!("{}_reconciler", db.name);
        let sql = sql
            .replace("nr_producer", &producer)
            .replace("nr_reconciler", &reconciler);
        db.client()
            .batch_execute(&sql)
            .expect("the documented GRANTs run");
        Roles {
            url: db.url.clone(),
            producer,
            reconciler,
        }
    }

    /// The URL of this database for `role` (trust authentication).
    fn url_as(&self, role: &str) -> String {
        let mut url = url::Url::parse(&self.url).expect("test database URL");
        url.set_username(role).expect("user name");
        url.to_string()
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.url, postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP OWNED BY {p}, {r}; DROP ROLE {p}; DROP ROLE {r};",
                p = self.producer,
                r = self.reconciler
            ));
        }
    }
}

/// Asserts that `sql` is refused for lack of privilege.
fn denied(client: &mut Client, sql: &str) {
    let err = client.batch_execute(sql).expect_err(sql);
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{sql}: {err}");
}

#[test]
fn the_producer_role_can_enqueue_and_do_nothing_else() {
    let db = migrated_db();
    let roles = Roles::create(&db);
    let channel = channel_and_rule(&mut db.client(), "http://127.0.0.1:1/");
    let mut producer =
        Client::connect(&roles.url_as(&roles.producer), postgres::NoTls).expect("producer login");
    // Enqueue inside its own transaction, with a temp table that would
    // shadow the settings if the function's search_path were not fixed.
    producer
        .batch_execute(
            "CREATE TEMP TABLE settings (id boolean, max_payload_bytes integer);
             INSERT INTO settings VALUES (true, 1);
             SET search_path = pg_temp, notification;",
        )
        .expect("temp table");
    let mut tx = producer.transaction().expect("begin");
    let ids = tx
        .query(
            "SELECT notification.enqueue_event('acme', 'invoice.paid', '{\"n\": 1}')",
            &[],
        )
        .expect("the producer can enqueue");
    tx.commit().expect("commit");
    assert_eq!(ids.len(), 1);
    let (state, _) = delivery(&mut db.client(), channel);
    assert_eq!(state, "PENDING");
    for sql in [
        "SELECT * FROM notification.event",
        "SELECT * FROM notification.channel",
        "SELECT signing_secret FROM notification.channel",
        "SELECT * FROM notification.delivery_status",
        "SELECT * FROM notification.rule",
        "SELECT * FROM notification.rule_channel",
        "SELECT * FROM notification.settings",
        "SELECT * FROM notification.schema_migrations",
        "INSERT INTO notification.event (namespace, type, payload) VALUES ('a', 'b', '{}')",
        "UPDATE notification.delivery_status SET state = 'SUCCESS'",
        "DELETE FROM notification.channel",
        "UPDATE notification.settings SET max_payload_bytes = 1000000",
        "CREATE TABLE notification.intruder (i int)",
    ] {
        denied(&mut producer, sql);
    }
}

#[test]
fn the_daemon_runs_once_with_the_reconciler_roles_table_privileges_only() {
    let db = migrated_db();
    let roles = Roles::create(&db);
    let receiver = Receiver::start(Script::status(200));
    let mut owner = db.client();
    fixtures::seed(&mut owner, &receiver.url(), 3);
    // Ordered: the leader's order horizon (pg_current_xact_id,
    // pg_current_snapshot) needs no grant either.
    owner
        .execute("UPDATE notification.channel SET ordered = true", &[])
        .expect("ordered");
    let url = roles.url_as(&roles.reconciler);
    let nr = Bin::for_database(&url);
    let report = nr.ok(&["once", "--json"]);
    assert!(report.contains("\"delivered\": 3"), "{report}");
    assert_eq!(fixtures::count_state(&mut owner, "SUCCESS"), 3);
    assert_eq!(receiver.count(), 3);
    nr.ok(&["status"]);
    let mut reconciler = Client::connect(&url, postgres::NoTls).expect("reconciler login");
    for sql in [
        "INSERT INTO notification.event (namespace, type, payload) VALUES ('a', 'b', '{}')",
        "DELETE FROM notification.delivery_status",
        "UPDATE notification.channel SET url = 'http://127.0.0.1:2/'",
        "SELECT notification.enqueue_event('acme', 'invoice.paid', '{}')",
        "CREATE TABLE notification.intruder (i int)",
        "DROP TABLE notification.event",
    ] {
        denied(&mut reconciler, sql);
    }
}
