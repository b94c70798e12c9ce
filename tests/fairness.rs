//! Fair scheduling through the real binary (`run`), a real PostgreSQL and
//! real receivers on 127.0.0.1: a hanging endpoint holds at most its cap
//! while a healthy one gets everything, a backlog on one channel does not
//! hold up another, the circuit breaker (a few attempts, then one probe per
//! cool-down, then the backlog drains once the endpoint recovers; a flaky
//! endpoint beside a dead one: only the dead one's opens), the automatic
//! cap's borrowing (a lone busy channel uses idle workers, a hanging one
//! does not), and auto-disable with the bulk resend that recovers from it.
//!
//! Waits are on conditions. The one comparison with time is a lower bound
//! (probes are at least a cool-down apart): a slow machine cannot break it.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::bin::Bin;
use support::daemon::{config_toml, tail, wait_until, Daemon};
use support::fixtures::{add_channel, channel_for, emit, SECRET};
use support::net::{free_addr, http_get};
use support::{migrated_db, Receiver, Script, TestDb};

const LONG: Duration = Duration::from_secs(90);

/// A daemon with `workers` workers and `delivery` as its `[delivery]`
/// section, metrics on `metrics`; waits until it leads.
fn daemon(db: &TestDb, workers: usize, delivery: &str, metrics: SocketAddr) -> Daemon {
    let extra = format!("[metrics]\nlisten = \"{metrics}\"\n");
    let d = Daemon::run(
        "fair",
        &config_toml(&db.url, workers, "1h", delivery, &extra),
        &[],
    );
    wait_until(
        "the daemon to lead",
        LONG,
        || d.stderr().contains("leading: took the lock"),
        || d.stderr(),
    );
    d
}

fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(-1.0)
}

/// `channel list --json`, the entry of `channel`.
fn listed(bin: &Bin, channel: uuid::Uuid) -> serde_json::Value {
    let out = bin.ok(&["channel", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("channel list --json is JSON");
    list.as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == channel.to_string()).cloned())
        .unwrap_or_else(|| panic!("channel {channel} not listed: {out}"))
}

fn count(client: &mut postgres::Client, channel: uuid::Uuid, state: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM notification.delivery_status WHERE channel_id = $1 AND state = $2",
            &[&channel, &state],
        )
        .expect("count statuses")
        .get(0)
}

/// Waits until `channel` has `n` deliveries in `state`; `what` names the
/// wait, the daemon's log is shown when it times out.
fn wait_for_count(
    client: &mut postgres::Client,
    channel: uuid::Uuid,
    state: &str,
    n: i64,
    what: &str,
    d: &Daemon,
) {
    wait_until(
        what,
        LONG,
        || count(client, channel, state) == n,
        || d.stderr(),
    );
}

#[test]
fn a_hanging_endpoint_holds_at_most_its_cap_while_a_healthy_one_gets_everything() {
    let db = migrated_db();
    let mut client = db.client();
    let hanging = Receiver::start(Script::hang());
    let healthy = Receiver::start(Script::status(200));
    // One rule sending to both; the hanging channel's backlog is enqueued
    // first, and every event goes to both.
    let slow = channel_for(&mut client, "both", &hanging.url(), SECRET, "{}");
    let fast = add_channel(&mut client, "both", &healthy.url());
    let n = 300;
    emit(&mut client, "both", "'{}'::jsonb", n);
    let metrics = free_addr();
    let d = daemon(
        &db,
        8,
        "timeout = \"60s\"\nconnect_timeout = \"2s\"\nretry_schedule = [\"1s\"]\nmax_in_flight_per_channel = 2\n",
        metrics,
    );
    assert!(
        healthy.wait_for(n as usize, LONG),
        "healthy got {} of {n}; hanging holds {}\n{}",
        healthy.count(),
        hanging.in_flight(),
        tail(&d.stderr(), 30)
    );
    wait_for_count(
        &mut client,
        fast,
        "SUCCESS",
        i64::from(n),
        "every healthy delivery recorded",
        &d,
    );
    // The hanging ones are still timing out (60 s): nothing of them ended.
    assert_eq!(count(&mut client, slow, "SUCCESS"), 0);
    assert_eq!(count(&mut client, slow, "FAILED"), 0);
    assert!(
        hanging.in_flight() >= 1,
        "the hanging endpoint is being tried"
    );
    assert!(
        hanging.peak_concurrency() <= 2,
        "the hanging endpoint held {} workers at once (cap 2)",
        hanging.peak_concurrency()
    );
    let mut seen = healthy.ids();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        n as usize,
        "every event once at the healthy endpoint"
    );
    let bin = Bin::for_database(&db.url);
    wait_until(
        "channel list to show the hanging channel's deliveries in flight",
        LONG,
        || {
            let l = listed(&bin, slow);
            l["in_flight"] == 2 && l["breaker"] == "closed"
        },
        || format!("{}", listed(&bin, slow)),
    );
    assert_eq!(
        metric(metrics, "notification_reconciler_channel_breakers_open"),
        0.0
    );
}

#[test]
fn a_backlog_on_one_channel_does_not_hold_up_another() {
    let db = migrated_db();
    let mut client = db.client();
    let busy = Receiver::start(Script::status(200).with_latency(Duration::from_millis(40)));
    let other = Receiver::start(Script::status(200));
    let a = channel_for(&mut client, "busy", &busy.url(), SECRET, "{}");
    channel_for(&mut client, "other", &other.url(), SECRET, "{}");
    let backlog = 400;
    emit(&mut client, "busy", "'{}'::jsonb", backlog);
    let d = daemon(
        &db,
        4,
        "timeout = \"10s\"\nconnect_timeout = \"2s\"\nretry_schedule = [\"1s\"]\nmax_in_flight_per_channel = 2\n",
        free_addr(),
    );
    assert!(busy.wait_for(1, LONG), "{}", tail(&d.stderr(), 20));
    let event = emit(&mut client, "other", "'{}'::jsonb", 1)[0];
    assert!(other.wait_for(1, LONG), "{}", tail(&d.stderr(), 20));
    let delivered_before = count(&mut client, a, "SUCCESS");
    assert!(
        delivered_before < i64::from(backlog) / 2,
        "the other channel's event waited for {delivered_before} of the backlog"
    );
    assert_eq!(other.ids(), vec![event.to_string()]);
    assert!(
        busy.peak_concurrency() <= 2,
        "cap 2: {}",
        busy.peak_concurrency()
    );
    wait_for_count(
        &mut client,
        a,
        "SUCCESS",
        i64::from(backlog),
        "the backlog to drain",
        &d,
    );
}

/// The automatic cap is work-conserving: one busy channel alone uses every
/// worker but the reserve (16 workers: 15), while a hanging endpoint beside
/// a healthy one still holds no more than its share (a quarter: 4), since
/// only attempts that were answered let a channel borrow; and the other
/// channel's new work starts while the busy one borrows.
#[test]
fn with_the_automatic_cap_a_lone_busy_channel_uses_idle_workers_a_hanging_one_does_not() {
    let db = migrated_db();
    let mut client = db.client();
    let busy = Receiver::start(Script::status(200).with_latency(Duration::from_millis(300)));
    let other = Receiver::start(Script::status(200));
    let hanging = Receiver::start(Script::hang());
    let a = channel_for(&mut client, "busy", &busy.url(), SECRET, "{}");
    channel_for(&mut client, "other", &other.url(), SECRET, "{}");
    let slow = channel_for(&mut client, "hang", &hanging.url(), SECRET, "{}");
    let backlog = 300;
    emit(&mut client, "busy", "'{}'::jsonb", backlog);
    // No max_in_flight_per_channel: the automatic, work-conserving cap.
    let d = daemon(
        &db,
        16,
        "timeout = \"60s\"\nconnect_timeout = \"2s\"\nretry_schedule = [\"1s\"]\n",
        free_addr(),
    );
    wait_until(
        "the busy channel to borrow every worker but the reserve",
        LONG,
        || busy.peak_concurrency() >= 15,
        || {
            format!(
                "peak {}\n{}",
                busy.peak_concurrency(),
                tail(&d.stderr(), 20)
            )
        },
    );
    // While it borrows, the other channel's new work starts (the reserve).
    let event = emit(&mut client, "other", "'{}'::jsonb", 1)[0];
    assert!(other.wait_for(1, LONG), "{}", tail(&d.stderr(), 20));
    assert_eq!(other.ids(), vec![event.to_string()]);
    // A hanging endpoint's backlog arrives while the busy one borrows.
    emit(&mut client, "hang", "'{}'::jsonb", 50);
    wait_for_count(
        &mut client,
        a,
        "SUCCESS",
        i64::from(backlog),
        "the busy backlog to drain",
        &d,
    );
    assert!(
        busy.peak_concurrency() <= 15,
        "16 workers keep one free: the busy channel held {}",
        busy.peak_concurrency()
    );
    wait_until(
        "the hanging endpoint to be tried",
        LONG,
        || hanging.in_flight() >= 1,
        || d.stderr(),
    );
    // With the busy backlog gone every worker is idle, and still the
    // hanging endpoint, which never answered, holds only its share.
    let more = emit(&mut client, "other", "'{}'::jsonb", 20);
    assert!(other.wait_for(21, LONG), "{}", tail(&d.stderr(), 20));
    assert_eq!(other.ids().len(), 1 + more.len());
    // The leader's own count (what `channel list --json` shows): the
    // receiver's would also count a connection the daemon already gave up
    // on (a connect that timed out on the loaded machine and was retried)
    // and that the hanging script never notices closed. Its requests hang
    // for 60 s, so what it holds stays in flight while this looks.
    let bin = Bin::for_database(&db.url);
    wait_until(
        "channel list to show the hanging channel's deliveries in flight",
        LONG,
        || listed(&bin, slow)["in_flight"].as_u64().unwrap_or(0) >= 1,
        || format!("{}", listed(&bin, slow)),
    );
    let mut most = 0;
    for _ in 0..10 {
        most = most.max(listed(&bin, slow)["in_flight"].as_u64().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        (1..=4).contains(&most),
        "a hanging endpoint borrowed: {most} in flight (share 4); the receiver saw {}",
        hanging.peak_concurrency()
    );
}

/// A hanging endpoint (every attempt times out): three attempts, then one
/// probe per cool-down, the cool-down doubling while every attempt fails.
#[test]
fn a_hanging_endpoint_gets_a_few_attempts_then_one_probe_per_cooldown_then_drains() {
    let db = migrated_db();
    let mut client = db.client();
    let failing = Receiver::start(Script::hang());
    let channel = channel_for(&mut client, "flaky", &failing.url(), SECRET, "{}");
    let n = 20;
    emit(&mut client, "flaky", "'{}'::jsonb", n);
    let metrics = free_addr();
    let cooldown = Duration::from_millis(700);
    let d = daemon(
        &db,
        8,
        &format!(
            "timeout = \"300ms\"\nconnect_timeout = \"2s\"\n\
             retry_schedule = [\"10ms\", \"10ms\", \"10ms\", \"10ms\", \"10ms\", \"10ms\", \"10ms\", \"10ms\"]\n\
             max_in_flight_per_channel = 2\nbreaker_failures = 3\nbreaker_cooldown = \"{}ms\"\n",
            cooldown.as_millis()
        ),
        metrics,
    );
    // Three probes after it opened: 3 attempts, then one per cool-down
    // (which doubles: 0.7 s, 1.4 s, 2.8 s).
    assert!(failing.wait_for(6, LONG), "{}", tail(&d.stderr(), 20));
    let requests = failing.requests();
    let bin = Bin::for_database(&db.url);
    assert!(
        d.stderr().contains(
            "3 consecutive attempts got no answer (timeouts, refused connections); breaker open"
        ),
        "{}",
        tail(&d.stderr(), 20)
    );
    // Before it opened: at most max(breaker_failures, cap) = 3 attempts in
    // a burst; after it: each probe at least the (doubling) cool-down after
    // the one before, and alone.
    let gaps: Vec<Duration> = requests
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect();
    let burst = 1 + gaps.iter().take_while(|g| **g < cooldown).count();
    assert_eq!(
        burst, 3,
        "attempts before the breaker opened; gaps {gaps:?}"
    );
    let mut expected = cooldown;
    for (i, gap) in gaps.iter().enumerate().skip(2).take(3) {
        assert!(
            *gap >= expected.mul_f64(0.95),
            "probe {} came {gap:?} after the last attempt, before the cool-down {expected:?}",
            i - 1
        );
        expected *= 2;
    }
    let entry = listed(&bin, channel);
    assert!(
        entry["breaker"] == "open" || entry["breaker"] == "half_open",
        "{entry}"
    );
    assert_eq!(
        metric(metrics, "notification_reconciler_channel_breakers_open"),
        1.0
    );
    let status = bin.ok(&["status"]);
    assert!(status.contains("channels:  1 breakers open"), "{status}");
    // Deliveries waiting behind the open breaker were charged no attempt:
    // every attempt recorded is one the receiver got.
    let attempts: i64 = client
        .query_one(
            "SELECT sum(attempt_count)::int8 FROM notification.delivery_status WHERE channel_id = $1",
            &[&channel],
        )
        .expect("sum attempts")
        .get(0);
    assert!(
        attempts <= failing.count() as i64 && attempts >= failing.count() as i64 - 1,
        "{attempts} attempts recorded, {} received",
        failing.count()
    );
    // It recovers: the next probe succeeds and the backlog drains.
    failing.set_script(Script::status(200));
    wait_for_count(
        &mut client,
        channel,
        "SUCCESS",
        i64::from(n),
        "the backlog to drain after the endpoint recovered",
        &d,
    );
    wait_until(
        "the breaker to show closed",
        LONG,
        || metric(metrics, "notification_reconciler_channel_breakers_open") == 0.0,
        || d.stderr(),
    );
    assert!(
        d.stderr().contains("breaker closed"),
        "{}",
        tail(&d.stderr(), 20)
    );
}

/// Regression (issue 26): a sink failing 30% of requests at random with
/// fast 500s tripped the breaker (five failures in a row) and stalled its
/// channel; now it is left to the retry schedule, while a dead endpoint
/// beside it (a loopback port nothing listens on) still opens its breaker
/// within `breaker_failures` attempts.
#[test]
fn a_flaky_endpoint_is_not_a_dead_one() {
    let db = migrated_db();
    let mut client = db.client();
    let flaky_sink = Receiver::start(Script::fail_fraction(0.3));
    let flaky = channel_for(&mut client, "both", &flaky_sink.url(), SECRET, "{}");
    let dead = add_channel(&mut client, "both", &format!("http://{}/hook", free_addr()));
    let n = 300;
    emit(&mut client, "both", "'{}'::jsonb", n);
    let metrics = free_addr();
    // The default breaker (5 attempts), a short cool-down; 15 attempts
    // each, so that every flaky delivery ends delivered (0.3^15 a piece).
    let schedule = vec!["\"20ms\""; 14].join(", ");
    let d = daemon(
        &db,
        8,
        &format!(
            "timeout = \"5s\"\nconnect_timeout = \"1s\"\nretry_schedule = [{schedule}]\n\
             breaker_cooldown = \"1s\"\n"
        ),
        metrics,
    );
    wait_for_count(
        &mut client,
        flaky,
        "SUCCESS",
        i64::from(n),
        "every flaky delivery to succeed through retries",
        &d,
    );
    let log = d.stderr();
    let failed_first = flaky_sink.requests().len() - n as usize;
    assert!(
        failed_first > 0,
        "the sink failed no request: nothing was retried"
    );
    // The flaky channel's breaker never opened; the dead one's did, after
    // at most breaker_failures (5) attempts of it.
    let opened = |c: uuid::Uuid| {
        log.lines()
            .filter(|l| l.contains(&format!("channel {c}:")) && l.contains("breaker open"))
            .count()
    };
    assert_eq!(opened(flaky), 0, "{}", tail(&log, 30));
    wait_until(
        "the dead channel's breaker to open",
        LONG,
        || {
            d.stderr().contains(&format!(
                "channel {dead}: 5 consecutive attempts got no answer (timeouts, refused connections); breaker open"
            ))
        },
        || d.stderr(),
    );
    let bin = Bin::for_database(&db.url);
    wait_until(
        "channel list to show the dead channel's breaker open",
        LONG,
        || {
            let entry = listed(&bin, dead);
            entry["breaker"] == "open" || entry["breaker"] == "half_open"
        },
        || format!("{}", listed(&bin, dead)),
    );
    let dead_attempts: i64 = client
        .query_one(
            "SELECT sum(attempt_count)::int8 FROM notification.delivery_status WHERE channel_id = $1",
            &[&dead],
        )
        .expect("sum attempts")
        .get(0);
    // Before it opened, at most max(5, cap 2) attempts; then one probe per
    // cool-down (1 s, 2 s, 4 s, ...): a handful while the flaky one drained.
    assert!(
        dead_attempts < 5 + 30,
        "the dead endpoint got {dead_attempts} attempts\n{}",
        tail(&log, 30)
    );
    assert_eq!(listed(&bin, flaky)["breaker"], "closed");
}

#[test]
fn a_channel_failing_for_disable_after_is_disabled_and_bulk_resend_recovers_it() {
    let db = migrated_db();
    let mut client = db.client();
    let failing = Receiver::start(Script::status(500));
    let channel = channel_for(&mut client, "dead", &failing.url(), SECRET, "{}");
    let n = 5;
    emit(&mut client, "dead", "'{}'::jsonb", n);
    let metrics = free_addr();
    let mut d = daemon(
        &db,
        4,
        "timeout = \"10s\"\nconnect_timeout = \"2s\"\n\
         retry_schedule = [\"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\"]\n\
         breaker_failures = 0\ndisable_after = \"1s\"\n",
        metrics,
    );
    let bin = Bin::for_database(&db.url);
    wait_until(
        "the channel to be auto-disabled",
        LONG,
        || listed(&bin, channel)["disabled"] == true,
        || d.stderr(),
    );
    let entry = listed(&bin, channel);
    let reason = entry["disabled_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.starts_with("auto-disabled: every attempt failed for 1s (since "),
        "{entry}"
    );
    let text = bin.ok(&["channel", "list"]);
    assert!(text.contains(&format!("disabled ({reason})")), "{text}");
    assert!(
        d.stderr().lines().any(|l| l.contains("WARN")
            && l.contains(&format!("] channel {channel} disabled: auto-disabled"))),
        "{}",
        tail(&d.stderr(), 20)
    );
    wait_until(
        "the auto-disable metric",
        LONG,
        || {
            metric(
                metrics,
                "notification_reconciler_channels_auto_disabled_total",
            ) == 1.0
        },
        || d.stderr(),
    );
    assert!(bin.ok(&["status"]).contains("1 auto-disabled"));
    // Its deliveries fail for the disabled channel.
    wait_for_count(
        &mut client,
        channel,
        "FAILED",
        i64::from(n),
        "every delivery FAILED",
        &d,
    );
    // The endpoint is fixed. A bulk resend of a disabled channel is refused
    // (it would only fail again), and names the way out.
    failing.set_script(Script::status(200));
    let id = channel.to_string();
    let refused = bin.fails(
        2,
        &[
            "resend",
            "--channel",
            &id,
            "--since",
            "1h",
            "--state",
            "FAILED",
        ],
    );
    assert!(
        refused.contains(&format!("run `channel enable {id}` first")),
        "{refused}"
    );
    let bad = bin.fails(2, &["resend", "--channel", &id, "--state", "PENDING"]);
    assert!(bad.contains("only SUCCESS, FAILED or SENDING"), "{bad}");
    let bad = bin.fails(2, &["resend", "--channel", &id, "--since", "last tuesday"]);
    assert!(bad.contains("--since \"last tuesday\""), "{bad}");
    let bad = bin.fails(2, &["resend"]);
    assert!(bad.contains("--channel ID"), "{bad}");
    bin.ok(&["channel", "enable", &id]);
    let entry = listed(&bin, channel);
    assert!(
        entry["disabled_reason"].is_null() && entry["failing_since"].is_null(),
        "{entry}"
    );
    // Nothing matches a time in the future; then every FAILED one is resent.
    let none = bin.ok(&[
        "resend",
        "--channel",
        &id,
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(none.contains("resent 0 deliveries"), "{none}");
    let before = failing.count();
    let out = bin.ok(&[
        "resend",
        "--channel",
        &id,
        "--since",
        "1h",
        "--state",
        "FAILED",
    ]);
    assert!(
        out.contains(&format!(
            "resent {n} deliveries to channel {id} (dead): was {n} FAILED"
        )),
        "{out}"
    );
    wait_for_count(
        &mut client,
        channel,
        "SUCCESS",
        i64::from(n),
        "every resent delivery delivered",
        &d,
    );
    assert_eq!(
        failing.count() - before,
        n as usize,
        "each resent delivery once"
    );
    assert!(bin.ok(&["status"]).contains("0 auto-disabled"));
    d.stop(LONG);
}
