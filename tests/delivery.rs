//! Webhook delivery and the delivery state machine end to end: rows made
//! with SQL (`enqueue_event`, as a producer would), one reconciliation pass
//! run in-process against the real PostgreSQL and a real HTTP receiver, then
//! the stored delivery status read back. Covers the request itself (body,
//! headers, signature), every classification the issue names, channel
//! checks, resend and its fresh clock, optimistic concurrency, the attempt
//! record and its bound, and that debug logs of a full delivery hold no
//! secret. The pure decisions are unit-tested in `src/state.rs`; the `sink`
//! command in `tests/sink.rs`.

mod support;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use chrono::{DateTime, Utc};
use notification_reconciler::config::Config;
use notification_reconciler::db::statuses::{self, DeliveryStatus, MAX_ATTEMPTS_KEPT};
use notification_reconciler::delivery::sign::{self, Secret};
use notification_reconciler::reconcile::hooks::NoHooks;
use notification_reconciler::reconcile::{PassOutcome, Reconciler, Report};
use notification_reconciler::state::State;
use postgres::{Client, NoTls};
use support::bin::{allow_loopback, Bin};
use support::net::free_port;
use support::{migrated_db, Receiver, Reply, Script, TestDb};
use uuid::Uuid;

const NS: &str = "acme";
const EVENT_TYPE: &str = "invoice.paid";
const PAYLOAD: &str = r#"{"amount": 42, "currency": "EUR", "lines": [{"sku": "a", "qty": 2}]}"#;
/// A retry step long enough that a pass never finds the retry due by itself.
const LONG: Duration = Duration::from_secs(60);
/// A retry step so short that waiting for it is not a sleep.
const SHORT: Duration = Duration::from_millis(1);

// ---- fixtures -------------------------------------------------------------

/// A migrated database with a connection whose `search_path` is the schema.
struct Fixture {
    db: TestDb,
    client: Client,
}

impl Fixture {
    fn new() -> Fixture {
        let db = migrated_db();
        let client = connect(&db.url);
        Fixture { db, client }
    }

    /// The default config for this database, with a short retry schedule and
    /// timeouts suited to tests.
    fn config(&self, retry_schedule: Vec<Duration>) -> Config {
        let mut config = Config::for_url(&self.db.url);
        config.delivery.retry_schedule = retry_schedule;
        config.delivery.timeout = Duration::from_secs(20);
        config.delivery.connect_timeout = Duration::from_secs(5);
        config.delivery.allow_networks = support::fixtures::loopback_networks();
        config
    }

    /// Inserts a webhook channel; returns its id.
    fn channel(&mut self, url: &str, secret: &str, headers: &str) -> Uuid {
        self.client
            .query_one(
                "INSERT INTO channel (namespace, name, url, headers, signing_secret)
                 VALUES ($1, 'ch-' || gen_random_uuid(), $2, $3::text::jsonb, $4) RETURNING id",
                &[&NS, &url, &headers, &secret],
            )
            .expect("insert channel")
            .get(0)
    }

    /// Inserts a rule for [`EVENT_TYPE`] with `channels` assigned.
    fn rule(&mut self, channels: &[Uuid]) -> Uuid {
        let rule: Uuid = self
            .client
            .query_one(
                "INSERT INTO rule (namespace, name, event_type)
                 VALUES ($1, 'rule-' || gen_random_uuid(), $2) RETURNING id",
                &[&NS, &EVENT_TYPE],
            )
            .expect("insert rule")
            .get(0);
        for channel in channels {
            self.client
                .execute(
                    "INSERT INTO rule_channel (rule_id, channel_id) VALUES ($1, $2)",
                    &[&rule, channel],
                )
                .expect("assign channel");
        }
        rule
    }

    /// One channel to `url` with a fresh secret, on its own rule.
    fn single_channel(&mut self, url: &str, headers: &str) -> (Uuid, String) {
        let secret = Secret::generate();
        let channel = self.channel(url, &secret, headers);
        self.rule(&[channel]);
        (channel, secret)
    }

    /// Enqueues one event through the producer function; expects exactly one
    /// active rule.
    fn enqueue(&mut self, payload: &str) -> Uuid {
        let rows = self
            .client
            .query(
                "SELECT enqueue_event($1, $2, $3::text::jsonb)",
                &[&NS, &EVENT_TYPE, &payload],
            )
            .expect("enqueue_event");
        assert_eq!(rows.len(), 1, "expected one event (one active rule)");
        rows[0].get(0)
    }

    /// Inserts one event with a PENDING delivery to every channel of the
    /// rule, bypassing `enqueue_event` and its checks.
    fn insert_event_directly(&mut self, payload: &str) -> Uuid {
        let literal = format!("'{}'::jsonb", payload.replace('\'', "''"));
        support::fixtures::insert_event_directly(
            &mut self.client,
            NS,
            EVENT_TYPE,
            &literal,
            "'0 s'",
        )
    }

    /// Every delivery status of `event`, keyed by position in channel order.
    fn statuses(&mut self, event: Uuid) -> Vec<DeliveryStatus> {
        statuses::of_event(&mut self.client, event).expect("read statuses")
    }

    /// The single delivery status of `event`.
    fn status(&mut self, event: Uuid) -> DeliveryStatus {
        let mut all = self.statuses(event);
        assert_eq!(all.len(), 1, "expected one delivery status: {all:?}");
        all.remove(0)
    }

    /// The status of `event` for `channel`.
    fn status_for(&mut self, event: Uuid, channel: Uuid) -> DeliveryStatus {
        self.statuses(event)
            .into_iter()
            .find(|s| s.channel_id == channel)
            .unwrap_or_else(|| panic!("no status of event {event} for channel {channel}"))
    }

    /// Makes every unfinished status of `event` due now (instead of waiting).
    fn make_due(&mut self, event: Uuid) {
        self.client
            .execute(
                "UPDATE delivery_status SET next_attempt_at = now()
                 WHERE event_id = $1 AND state IN ('PENDING', 'SENDING', 'RESENDING')",
                &[&event],
            )
            .expect("make due");
    }
}

/// Connects to `url` with `search_path` set to the service's schema.
fn connect(url: &str) -> Client {
    let mut config: postgres::Config = url.parse().expect("test database URL parses");
    config.options("-c search_path=notification");
    config.connect(NoTls).expect("connect to the test database")
}

/// One pass with `r`; panics unless it ran and completed.
fn pass(r: &mut Reconciler) -> Report {
    match r
        .run_pass(&AtomicBool::new(false), &NoHooks)
        .expect("pass starts")
    {
        PassOutcome::Ran(report) => {
            assert!(report.failure.is_none(), "pass failed: {report:?}");
            assert_eq!((report.errors, report.panics), (0, 0), "{report:?}");
            report
        }
        PassOutcome::LockHeld => panic!("the lock is held by someone else"),
    }
}

/// One pass with a reconciler built from `config`.
fn pass_with(config: &Config) -> Report {
    pass(&mut Reconciler::new(config).expect("reconciler"))
}

/// A URL on 127.0.0.1 where nothing listens.
fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}/hook", free_port())
}

/// `next_attempt_at - attempt start` of the newest attempt of `s`.
fn retry_delay(s: &DeliveryStatus) -> chrono::TimeDelta {
    let next = s.next_attempt_at.expect("a next attempt is scheduled");
    let last = s.attempts.last().expect("an attempt is recorded");
    next - last.timestamp
}

fn secs(n: i64) -> chrono::TimeDelta {
    chrono::TimeDelta::seconds(n)
}

// ---- the request ----------------------------------------------------------

#[test]
fn request_body_is_exactly_id_type_timestamp_data_and_the_signature_verifies() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::status(200));
    let (_, secret) = f.single_channel(&receiver.url(), r#"{"X-Tenant": "acme-42"}"#);
    let event = f.enqueue(PAYLOAD);
    pass_with(&f.config(vec![LONG]));

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let rq = &requests[0];
    assert_eq!(rq.method, "POST");
    assert_eq!(rq.path, "/hook");

    let body = rq.json();
    let object = body.as_object().expect("body is a JSON object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["data", "id", "timestamp", "type"]);
    assert_eq!(body["id"], event.to_string());
    assert_eq!(body["type"], EVENT_TYPE);
    let payload: serde_json::Value = serde_json::from_str(PAYLOAD).unwrap();
    assert_eq!(body["data"], payload);
    let created_at: DateTime<Utc> = f
        .client
        .query_one("SELECT created_at FROM event WHERE id = $1", &[&event])
        .unwrap()
        .get(0);
    let timestamp = DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap())
        .expect("timestamp is RFC 3339");
    assert!(
        (timestamp.with_timezone(&Utc) - created_at).abs() < chrono::TimeDelta::milliseconds(1),
        "timestamp {timestamp} is not the event's creation {created_at}"
    );

    assert_eq!(rq.webhook_id(), Some(event.to_string().as_str()));
    assert_eq!(rq.header("content-type"), Some("application/json"));
    let ua = rq.header("user-agent").unwrap_or_default();
    assert!(
        ua.starts_with("notification-reconciler/"),
        "user-agent {ua:?}"
    );
    assert_eq!(rq.header("x-tenant"), Some("acme-42"), "custom header");
    let ts = rq.header("webhook-timestamp").expect("webhook-timestamp");
    let sig = rq.header("webhook-signature").expect("webhook-signature");
    assert!(sig.starts_with("v1,"), "{sig}");
    let secret = Secret::parse(&secret).unwrap();
    sign::verify(
        &secret,
        &event.to_string(),
        ts,
        sig,
        &rq.body,
        Utc::now().timestamp(),
        Duration::from_secs(300),
    )
    .expect("the signature verifies with the channel's secret");
    let other = Secret::parse(&Secret::generate()).unwrap();
    assert!(sign::verify(
        &other,
        &event.to_string(),
        ts,
        sig,
        &rq.body,
        Utc::now().timestamp(),
        Duration::from_secs(300)
    )
    .is_err());
}

#[test]
fn a_2xx_is_success_with_the_attempt_recorded() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::new(|_| Reply::status(201).body("thanks")));
    f.single_channel(&receiver.url(), "{}");
    let event = f.enqueue(PAYLOAD);
    let report = pass_with(&f.config(vec![LONG]));
    assert_eq!(report.delivered, 1, "{report:?}");

    let s = f.status(event);
    assert_eq!(s.state, State::Success);
    assert_eq!(s.next_attempt_at, None);
    assert!(s.reason.contains("HTTP 201"), "{}", s.reason);
    assert_eq!(s.attempt_count, 1);
    assert_eq!(s.attempts.len(), 1);
    let a = &s.attempts[0];
    assert_eq!(a.state, State::Success);
    assert_eq!(a.http_status, Some(201));
    assert_eq!(a.url, receiver.url());
    assert_eq!(a.response_body.as_deref(), Some("thanks"));
    assert_eq!(a.error, None);
    assert!(a.timestamp >= s.created_at, "{a:?}");
    // A second pass finds nothing to do.
    let again = pass_with(&f.config(vec![LONG]));
    assert_eq!(again.deliveries_seen, 0);
    assert_eq!(receiver.count(), 1);
}

#[test]
fn a_channel_url_with_a_host_name_is_looked_up_and_delivered() {
    // IP-address URLs skip the lookup (every other test uses them); this one
    // goes through the name lookup and then its kept addresses.
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::new(|_| Reply::status(200)));
    let url = receiver.url().replace("127.0.0.1", "localhost");
    assert!(url.contains("localhost"), "{url}");
    f.single_channel(&url, "{}");
    f.enqueue(PAYLOAD);
    f.enqueue(PAYLOAD);
    let report = pass_with(&f.config(vec![LONG]));
    assert_eq!(report.delivered, 2, "{report:?}");
    assert_eq!(receiver.count(), 2);
}

#[test]
fn a_500_schedules_a_retry_and_the_retry_succeeds() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::sequence_per_id(vec![500, 200]));
    f.single_channel(&receiver.url(), "{}");
    let event = f.enqueue(PAYLOAD);
    let mut r = Reconciler::new(&f.config(vec![LONG])).unwrap();

    let report = pass(&mut r);
    assert_eq!(report.retry_scheduled, 1, "{report:?}");
    let s = f.status(event);
    assert_eq!(s.state, State::Sending);
    assert!(s.reason.contains("HTTP 500"), "{}", s.reason);
    assert_eq!(s.attempts[0].http_status, Some(500));
    // 60 s ± 10 % jitter, from the attempt (plus its own short duration).
    let delay = retry_delay(&s);
    assert!(delay >= secs(54) && delay < secs(66 + 30), "delay {delay}");

    // Not due yet: the next pass leaves it alone.
    pass(&mut r);
    assert_eq!(receiver.count(), 1);
    assert_eq!(f.status(event).state, State::Sending);

    f.make_due(event);
    let report = pass(&mut r);
    assert_eq!(report.delivered, 1, "{report:?}");
    let s = f.status(event);
    assert_eq!(s.state, State::Success);
    assert_eq!(s.attempt_count, 2);
    let codes: Vec<_> = s.attempts.iter().map(|a| a.http_status).collect();
    assert_eq!(codes, [Some(500), Some(200)]);
    let ids = receiver.ids();
    assert_eq!(
        ids,
        [event.to_string(), event.to_string()],
        "same webhook-id"
    );
}

#[test]
fn a_410_fails_at_once() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::status(410));
    f.single_channel(&receiver.url(), "{}");
    let event = f.enqueue(PAYLOAD);
    let report = pass_with(&f.config(vec![SHORT, SHORT]));
    assert_eq!(report.failed, 1, "{report:?}");
    let s = f.status(event);
    assert_eq!(s.state, State::Failed);
    assert!(s.reason.contains("410"), "{}", s.reason);
    assert_eq!(s.next_attempt_at, None);
    assert_eq!(s.attempt_count, 1);
    assert_eq!(receiver.count(), 1);
}

#[test]
fn retry_after_of_a_429_is_honoured_and_capped_by_the_longest_step() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::status(429).with_header("Retry-After", "120"));
    f.single_channel(&receiver.url(), "{}");
    // Steps of 1 s and 300 s: the cap is 300 s.
    let config = f.config(vec![Duration::from_secs(1), Duration::from_secs(300)]);
    let mut r = Reconciler::new(&config).unwrap();

    let first = f.enqueue(PAYLOAD);
    pass(&mut r);
    let s = f.status(first);
    assert_eq!(s.state, State::Sending);
    assert_eq!(s.attempts[0].http_status, Some(429));
    let delay = retry_delay(&s);
    assert!(delay >= secs(120) && delay < secs(150), "delay {delay}");

    receiver.set_script(Script::status(429).with_header("Retry-After", "100000"));
    let second = f.enqueue(PAYLOAD);
    pass(&mut r);
    let delay = retry_delay(&f.status(second));
    assert!(delay >= secs(300) && delay < secs(330), "delay {delay}");
}

#[test]
fn a_receiver_that_never_answers_ends_at_the_configured_timeout() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::hang());
    f.single_channel(&receiver.url(), "{}");
    let event = f.enqueue(PAYLOAD);
    let mut config = f.config(vec![LONG]);
    config.delivery.timeout = Duration::from_secs(1);
    let report = pass_with(&config);
    assert_eq!(report.retry_scheduled, 1, "{report:?}");

    let s = f.status(event);
    assert_eq!(s.state, State::Sending);
    assert!(s.next_attempt_at.is_some());
    let a = &s.attempts[0];
    assert_eq!(a.http_status, None);
    let error = a.error.as_deref().unwrap_or_default().to_lowercase();
    assert!(error.contains("timed out"), "error {error:?}");
    assert!(a.duration_ms >= 1000, "duration {} ms", a.duration_ms);
    assert!(s.reason.contains("timed out"), "{}", s.reason);
    assert_eq!(receiver.count(), 1);
}

#[test]
fn a_10_mb_response_body_is_recorded_only_up_to_the_limit() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::status(200).with_body_size(10 * 1024 * 1024));
    f.single_channel(&receiver.url(), "{}");
    let event = f.enqueue(PAYLOAD);
    let mut config = f.config(vec![LONG]);
    config.delivery.max_response_bytes = 1000;
    pass_with(&config);
    let s = f.status(event);
    assert_eq!(s.state, State::Success);
    let body = s.attempts[0].response_body.as_deref().unwrap_or_default();
    assert_eq!(body.len(), 1000);
    assert!(body.bytes().all(|b| b == b'x'));
}

#[test]
fn a_302_is_not_followed() {
    let mut f = Fixture::new();
    let target = Receiver::start(Script::status(200));
    let location = target.url();
    let receiver = Receiver::start(Script::new(move |_| {
        Reply::status(302).header("Location", &location)
    }));
    f.single_channel(&receiver.url(), "{}");
    let event = f.enqueue(PAYLOAD);
    let report = pass_with(&f.config(vec![LONG]));
    assert_eq!(report.retry_scheduled, 1, "{report:?}");
    let s = f.status(event);
    assert_eq!(s.state, State::Sending);
    assert_eq!(s.attempts[0].http_status, Some(302));
    assert!(s.next_attempt_at.is_some());
    assert_eq!(receiver.count(), 1);
    assert_eq!(target.count(), 0, "the redirect was followed");
}

#[test]
fn connection_refused_schedules_a_retry_with_the_error_recorded() {
    let mut f = Fixture::new();
    let url = closed_port_url();
    f.single_channel(&url, "{}");
    let event = f.enqueue(PAYLOAD);
    let report = pass_with(&f.config(vec![LONG]));
    assert_eq!(report.retry_scheduled, 1, "{report:?}");
    let s = f.status(event);
    assert_eq!(s.state, State::Sending);
    assert!(s.next_attempt_at.is_some());
    let a = &s.attempts[0];
    assert_eq!(a.http_status, None);
    assert_eq!(a.url, url);
    let error = a.error.as_deref().unwrap_or_default();
    assert!(!error.is_empty(), "no error recorded: {a:?}");
    assert!(s.reason.contains(error), "{} / {error}", s.reason);
}

#[test]
fn custom_headers_arrive_and_cannot_override_the_signature_headers() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::status(200));
    let url = receiver.url();
    let evil_id = f.channel(&url, &Secret::generate(), r#"{"webhook-id": "evil"}"#);
    let evil_sig = f.channel(
        &url,
        &Secret::generate(),
        r#"{"Webhook-Signature": "v1,forged"}"#,
    );
    let good = f.channel(&url, &Secret::generate(), r#"{"X-Custom": "yes"}"#);
    f.rule(&[evil_id, evil_sig, good]);
    let event = f.enqueue(PAYLOAD);
    let report = pass_with(&f.config(vec![LONG]));
    assert_eq!((report.delivered, report.failed), (1, 2), "{report:?}");

    for (channel, header) in [(evil_id, "webhook-id"), (evil_sig, "Webhook-Signature")] {
        let s = f.status_for(event, channel);
        assert_eq!(s.state, State::Failed);
        assert!(
            s.reason.starts_with("invalid channel configuration") && s.reason.contains(header),
            "{}",
            s.reason
        );
        assert_eq!(s.attempt_count, 0);
    }
    assert_eq!(f.status_for(event, good).state, State::Success);
    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        1,
        "a request went to a misconfigured channel"
    );
    assert_eq!(requests[0].header("x-custom"), Some("yes"));
    assert_eq!(requests[0].webhook_id(), Some(event.to_string().as_str()));
}

// ---- channel and event checks ---------------------------------------------

#[test]
fn channel_disabled_deleted_or_unassigned_after_enqueue_fails_without_a_request() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::status(200));
    let url = receiver.url();
    let [disabled, deleted, unassigned] =
        [(); 3].map(|()| f.channel(&url, &Secret::generate(), "{}"));
    f.rule(&[disabled, deleted, unassigned]);
    let event = f.enqueue(PAYLOAD);
    assert_eq!(f.statuses(event).len(), 3);
    f.client
        .batch_execute(&format!(
            "UPDATE channel SET disabled = true WHERE id = '{disabled}';
             UPDATE channel SET deleted_at = now() WHERE id = '{deleted}';
             DELETE FROM rule_channel WHERE channel_id = '{unassigned}';"
        ))
        .unwrap();
    let report = pass_with(&f.config(vec![LONG]));
    assert_eq!(report.failed, 3, "{report:?}");
    for (channel, reason) in [
        (disabled, "channel disabled"),
        (deleted, "channel deleted"),
        (unassigned, "channel no longer assigned to the event's rule"),
    ] {
        let s = f.status_for(event, channel);
        assert_eq!((s.state, s.reason.as_str()), (State::Failed, reason));
        assert_eq!(s.attempt_count, 0);
        assert_eq!(s.next_attempt_at, None);
    }
    assert_eq!(receiver.count(), 0, "a request was made");
}

#[test]
fn a_payload_that_is_not_a_json_object_fails_without_a_request() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::status(200));
    f.single_channel(&receiver.url(), "{}");
    // enqueue_event refuses such payloads since migration 0003 (tests in
    // security.rs); rows written before it or by other means still exist.
    let string = f.insert_event_directly(r#""just a string""#);
    let array = f.insert_event_directly("[1, 2]");
    let object = f.enqueue(r#"{"ok": true}"#);
    let report = pass_with(&f.config(vec![LONG]));
    assert_eq!((report.failed, report.delivered), (2, 1), "{report:?}");
    for event in [string, array] {
        let s = f.status(event);
        assert_eq!(s.state, State::Failed);
        assert_eq!(
            s.reason,
            "invalid event: event payload is not a JSON object"
        );
    }
    assert_eq!(f.status(object).state, State::Success);
    assert_eq!(receiver.ids(), [object.to_string()]);
}

// ---- resend, concurrency, retries -----------------------------------------

#[test]
fn resend_of_an_old_failed_status_is_delivered_again_with_a_fresh_clock() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::sequence_per_id(vec![500, 200]));
    f.single_channel(&receiver.url(), "{}");
    let event = f.enqueue(PAYLOAD);
    // Three days old and FAILED: beyond both the pending (3h) and the
    // sending (48h) timeout if they counted from creation.
    f.client
        .execute(
            "UPDATE delivery_status SET state = 'FAILED', reason = 'given up',
                 next_attempt_at = NULL, created_at = now() - interval '3 days',
                 clock_started_at = now() - interval '3 days',
                 event_created_at = event_created_at - interval '3 days'
             WHERE event_id = $1",
            &[&event],
        )
        .unwrap();
    f.client
        .execute(
            "UPDATE event SET created_at = created_at - interval '3 days' WHERE id = $1",
            &[&event],
        )
        .unwrap();
    let mut r = Reconciler::new(&f.config(vec![LONG])).unwrap();
    assert_eq!(
        pass(&mut r).deliveries_seen,
        0,
        "a FAILED status is not due"
    );

    let result = statuses::resend(&mut f.client, event, None).unwrap();
    assert_eq!(result.resent.len(), 1);
    assert_eq!(f.status(event).state, State::Resending);

    // The first attempt after the resend fails: a retry is scheduled, not
    // "sending timeout", because the clock restarted at the resend.
    pass(&mut r);
    let s = f.status(event);
    assert_eq!(s.state, State::Sending, "{}", s.reason);
    f.make_due(event);
    pass(&mut r);
    let s = f.status(event);
    assert_eq!(s.state, State::Success, "{}", s.reason);
    assert_eq!(s.round_attempts, 2);
    assert_eq!(receiver.count(), 2);
}

#[test]
fn resend_while_a_delivery_is_in_flight_keeps_the_operators_change() {
    let mut f = Fixture::new();
    // The first attempt fails; the retry is held until the script changes.
    let receiver = Receiver::start(Script::new(|rq| {
        if rq.attempt == 1 {
            Reply::status(500)
        } else {
            Reply::hang()
        }
    }));
    let (channel, _) = f.single_channel(&receiver.url(), "{}");
    let event = f.enqueue(PAYLOAD);
    let mut r = Reconciler::new(&f.config(vec![LONG])).unwrap();
    pass(&mut r);
    assert_eq!(f.status(event).state, State::Sending);
    f.make_due(event);

    let mut operator = connect(&f.db.url);
    let (report, resent) = std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| pass(&mut r));
        let held = receiver.wait_for(2, Duration::from_secs(30));
        let resent = held.then(|| statuses::resend(&mut operator, event, Some(channel)));
        // Release the held request whatever happened, so the pass can end.
        receiver.set_script(Script::status(200));
        let report = in_flight.join().expect("the pass thread");
        assert!(held, "the retry never reached the receiver");
        (report, resent.unwrap().expect("resend"))
    });
    let resent: Vec<Uuid> = resent.resent.iter().map(|r| r.channel_id).collect();
    assert_eq!(resent, [channel]);
    assert_eq!(report.changed_concurrently, 1, "{report:?}");
    assert_eq!(report.delivered, 0, "{report:?}");
    let s = f.status(event);
    assert_eq!(s.state, State::Resending, "the operator's change was lost");
    assert_eq!(s.reason, "resent by operator");
    assert_eq!(s.attempt_count, 1);

    // The resend is then carried out.
    assert_eq!(pass(&mut r).delivered, 1);
    assert_eq!(f.status(event).state, State::Success);
    assert_eq!(receiver.count(), 3);
}

#[test]
fn retries_exhausted_fail_with_a_reason_naming_the_attempts() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::status(500));
    f.single_channel(&receiver.url(), "{}");
    let event = f.enqueue(PAYLOAD);
    let mut r = Reconciler::new(&f.config(vec![SHORT, SHORT])).unwrap();
    for expected in [State::Sending, State::Sending, State::Failed] {
        pass(&mut r);
        let s = f.status(event);
        assert_eq!(s.state, expected, "{}", s.reason);
        f.make_due(event);
    }
    let s = f.status(event);
    assert!(
        s.reason.contains("retries exhausted after 3 attempts"),
        "{}",
        s.reason
    );
    assert_eq!(s.attempt_count, 3);
    assert_eq!(s.next_attempt_at, None);
    assert_eq!(pass(&mut r).deliveries_seen, 0);
    assert_eq!(receiver.count(), 3);
}

#[test]
fn the_attempt_list_keeps_the_newest_and_counts_all() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::new(|rq| {
        Reply::status(500).body(format!("attempt {}", rq.attempt))
    }));
    f.single_channel(&receiver.url(), "{}");
    let event = f.enqueue(PAYLOAD);
    let kept = MAX_ATTEMPTS_KEPT as usize;
    let total = kept + 3;
    let mut r = Reconciler::new(&f.config(vec![SHORT; total + 5])).unwrap();
    for _ in 0..total {
        pass(&mut r);
        f.make_due(event);
    }
    let s = f.status(event);
    assert_eq!(s.state, State::Sending);
    assert_eq!(s.attempt_count as usize, total);
    assert_eq!(s.attempts.len(), kept);
    let bodies: Vec<String> = s
        .attempts
        .iter()
        .map(|a| a.response_body.clone().unwrap_or_default())
        .collect();
    let expected: Vec<String> = (total - kept + 1..=total)
        .map(|n| format!("attempt {n}"))
        .collect();
    assert_eq!(bodies, expected);
}

// ---- secrets ----------------------------------------------------------------

#[test]
fn debug_logs_of_a_full_delivery_hold_neither_the_signing_secret_nor_the_database_password() {
    const PASSWORD: &str = "hunter2-secret";
    let mut f = Fixture::new();
    f.client
        .batch_execute(&format!(
            "DO $$ BEGIN
                 CREATE ROLE app LOGIN PASSWORD '{PASSWORD}' SUPERUSER;
             EXCEPTION WHEN duplicate_object THEN
                 ALTER ROLE app LOGIN PASSWORD '{PASSWORD}' SUPERUSER;
             END $$"
        ))
        .unwrap();
    let mut url = url::Url::parse(&f.db.url).expect("test database URL");
    url.set_username("app").unwrap();
    url.set_password(Some(PASSWORD)).unwrap();
    let url = url.to_string();

    // One channel delivered, one failing with 500, one refused, one
    // misconfigured: every path that logs.
    let ok = Receiver::start(Script::new(|_| Reply::status(200).body("ok")));
    let failing = Receiver::start(Script::status(500));
    let secrets: Vec<String> = (0..4).map(|_| Secret::generate()).collect();
    let channels = [
        f.channel(&ok.url(), &secrets[0], "{}"),
        f.channel(&failing.url(), &secrets[1], "{}"),
        f.channel(&closed_port_url(), &secrets[2], "{}"),
        f.channel(&ok.url(), &secrets[3], r#"{"webhook-signature": "x"}"#),
    ];
    f.rule(&channels);
    let event = f.enqueue(PAYLOAD);

    let run = |args: &[&str], database_url: &str| {
        let out = Bin::with_config(&allow_loopback(
            "[delivery]\ntimeout = \"5s\"\nretry_schedule = [\"1m\"]\n",
        ))
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "debug")
        .run(args);
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let assert_clean = |what: &str, text: &str| {
        assert!(
            !text.contains(PASSWORD),
            "{what} printed the password:\n{text}"
        );
        for secret in &secrets {
            let key = secret.trim_start_matches("whsec_");
            assert!(
                !text.contains(key),
                "{what} printed a signing secret:\n{text}"
            );
        }
    };

    let (code, text) = run(&["once"], &url);
    assert_eq!(code, Some(0), "once failed:\n{text}");
    assert!(text.contains("DEBUG"), "debug logging is not on:\n{text}");
    assert_clean("once", &text);
    let states: Vec<State> = channels
        .iter()
        .map(|c| f.status_for(event, *c).state)
        .collect();
    assert_eq!(
        states,
        [
            State::Success,
            State::Sending,
            State::Sending,
            State::Failed
        ]
    );

    // A failing run: the server is not there.
    let mut down = url::Url::parse(&url).unwrap();
    let closed = url::Url::parse(&closed_port_url()).unwrap();
    down.set_port(closed.port()).unwrap();
    let (code, text) = run(&["once"], down.as_str());
    assert_eq!(code, Some(1), "once against a closed port:\n{text}");
    assert_clean("once (database down)", &text);

    let (code, text) = run(&["check-config"], &url);
    assert_eq!(code, Some(0), "check-config failed:\n{text}");
    assert_clean("check-config", &text);

    // The operator's path: the secret passed on the command line must not
    // come back in the debug log of the statement that stores it.
    let (code, text) = run(
        &[
            "channel",
            "create",
            "--namespace",
            NS,
            "--name",
            "from-cli",
            "--url",
            &ok.url(),
            "--secret",
            &secrets[0],
        ],
        &url,
    );
    assert_eq!(code, Some(0), "channel create failed:\n{text}");
    assert_clean("channel create", &text);

    // Rotation: the new secret is printed once, on stdout (the contract),
    // and neither it nor the old one appears anywhere else afterwards.
    let rotated = Bin::with_config(&allow_loopback("[delivery]\nretry_schedule = [\"1m\"]\n"))
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "debug")
        .run(&["channel", "rotate-secret", &channels[0].to_string()]);
    assert_eq!(rotated.status.code(), Some(0), "{rotated:?}");
    let new_secret = String::from_utf8_lossy(&rotated.stdout).trim().to_owned();
    let new_key = new_secret.trim_start_matches("whsec_").to_owned();
    let stderr = String::from_utf8_lossy(&rotated.stderr);
    assert_clean("channel rotate-secret (stderr)", &stderr);
    assert!(
        !stderr.contains(&new_key),
        "rotate-secret logged the new secret:\n{stderr}"
    );
    f.client
        .execute("UPDATE delivery_status SET state = 'FAILED'", &[])
        .unwrap();
    let event_id = event.to_string();
    for args in [
        vec!["resend", event_id.as_str()],
        vec!["once"],
        vec!["event", "show", event_id.as_str()],
        vec!["event", "show", event_id.as_str(), "--json"],
        vec!["status", "--json"],
        vec!["channel", "list", "--json"],
        vec!["channel", "list"],
    ] {
        let (code, text) = run(&args, &url);
        assert_eq!(code, Some(0), "{args:?} failed:\n{text}");
        assert_clean(&format!("{args:?} after rotate-secret"), &text);
        assert!(
            !text.contains(&new_key),
            "{args:?} printed the new secret:\n{text}"
        );
    }
}

/// Twenty channels of one rule to `receiver`, 20 events (400 deliveries)
/// due, 8 workers.
fn twenty_channels_and_400_due(f: &mut Fixture, receiver: &Receiver) -> Config {
    let secret = support::fixtures::SECRET;
    let channels: Vec<Uuid> = (0..20)
        .map(|_| f.channel(&receiver.url(), secret, "{}"))
        .collect();
    let rule: Uuid = f
        .client
        .query_one(
            "INSERT INTO rule (namespace, name, event_type) VALUES ($1, 'group', 'group.commit')
             RETURNING id",
            &[&NS],
        )
        .unwrap()
        .get(0);
    for c in &channels {
        f.client
            .execute(
                "INSERT INTO rule_channel (rule_id, channel_id) VALUES ($1, $2)",
                &[&rule, c],
            )
            .unwrap();
    }
    f.client
        .query(
            "SELECT enqueue_event($1, 'group.commit', '{}'::jsonb) FROM generate_series(1, 20)",
            &[&NS],
        )
        .unwrap();
    let mut config = f.config(vec![LONG]);
    config.reconciler.workers = 8;
    config
}

#[test]
fn outcomes_of_several_channels_are_recorded_together_each_exactly_once() {
    let mut f = Fixture::new();
    let receiver = Receiver::start(Script::status(200));
    let config = twenty_channels_and_400_due(&mut f, &receiver);
    let report = pass_with(&config);
    assert_eq!(report.delivered, 400, "{report:?}");
    assert_eq!(receiver.count(), 400, "each delivery sent once");
    // Each outcome recorded once, with its one attempt; rows written by one
    // statement share its transaction's time, and a group holds outcomes
    // of several channels.
    let row = f
        .client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'SUCCESS'),
                    count(*) FILTER (WHERE attempt_count = 1 AND jsonb_array_length(attempts) = 1),
                    count(DISTINCT updated_at),
                    (SELECT count(*) FROM (SELECT updated_at FROM delivery_status
                         GROUP BY updated_at HAVING count(DISTINCT channel_id) > 1) g)
             FROM delivery_status",
            &[],
        )
        .unwrap();
    let (succeeded, one_attempt, writes, mixed): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((succeeded, one_attempt), (400, 400));
    assert!(
        writes < 400,
        "no two outcomes were recorded by one statement ({writes} writes for 400)"
    );
    assert!(
        mixed > 0,
        "no statement recorded outcomes of more than one channel ({writes} writes)"
    );
    println!("400 outcomes in {writes} statements, {mixed} of them across channels");
}

#[test]
fn a_write_of_several_outcomes_refuses_only_the_row_changed_meanwhile() {
    use notification_reconciler::db::statuses::{StatusWriter, Write};
    use notification_reconciler::state::{AttemptRecord, Update};
    let mut f = Fixture::new();
    f.single_channel("http://127.0.0.1:9/", "{}");
    let events: Vec<Uuid> = (0..3).map(|_| f.enqueue(PAYLOAD)).collect();
    let ids: Vec<(Uuid, i64)> = events
        .iter()
        .map(|e| {
            let s = f.status(*e);
            (s.id, s.version)
        })
        .collect();
    // An operator (or another instance) changes the middle one meanwhile.
    f.client
        .execute(
            "UPDATE delivery_status SET version = version + 1 WHERE id = $1",
            &[&ids[1].0],
        )
        .unwrap();
    let attempt = |n: u16| AttemptRecord {
        timestamp: Utc::now(),
        state: State::Success,
        http_status: Some(200 + n),
        duration_ms: 3,
        url: "http://127.0.0.1:9/".into(),
        response_body: None,
        error: None,
        svix_message_id: None,
    };
    let updates: Vec<Update> = (0..3)
        .map(|n| Update {
            state: State::Success,
            reason: format!("delivered {n}"),
            next_attempt_at: None,
            round_attempts: 1,
            attempt: Some(attempt(n)),
        })
        .collect();
    let rows: Vec<Write<'_>> = ids
        .iter()
        .zip(&updates)
        .map(|(&(id, version), update)| Write {
            id,
            version,
            update,
        })
        .collect();
    let writer = StatusWriter::prepare(&mut f.client).unwrap();
    let written = writer.write(&mut f.client, &rows).unwrap();
    assert_eq!(written, vec![true, false, true]);
    for (n, event) in events.iter().enumerate() {
        let s = f.status(*event);
        if n == 1 {
            assert_eq!((s.state, s.attempt_count), (State::Pending, 0), "kept");
        } else {
            assert_eq!((s.state, s.attempt_count), (State::Success, 1));
            assert_eq!(s.reason, format!("delivered {n}"));
            assert_eq!(s.attempts.len(), 1);
            assert_eq!(s.attempts[0].http_status, Some(200 + n as u16));
        }
    }
    // Written again at the old versions: every row is refused.
    assert_eq!(
        writer.write(&mut f.client, &rows).unwrap(),
        vec![false, false, false]
    );
}
