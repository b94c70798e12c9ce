//! Connections are not concurrency (issue 16): many more deliveries in
//! flight than database connections, against the real binary, a real
//! PostgreSQL and a real receiver on 127.0.0.1.
//!
//! A worker takes a pooled connection only to record an outcome, so 512
//! workers deliver through a pool of 8, and the database sees the pool plus
//! the lock and the listener connections, never one per worker. The faults
//! that matter with outcomes waiting for a connection: a database outage
//! while many deliveries are in flight (their outcomes are recorded once it
//! is back, none lost, none written twice), and `kill -9` (duplicates at
//! most the deliveries in flight). Timing figures are the benchmark's
//! (`--only concurrency`); these tests wait on conditions only.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use notification_reconciler::reconcile::recorder::Recorder;
use support::daemon::{config_toml, tail, wait_until, Daemon};
use support::fixtures::{
    add_channel, assert_all_delivered, channel_for, count_state, emit, seed, states, unfinished,
    SECRET,
};
use support::net::{free_addr, http_get};
use support::sessions::SessionSampler;
use support::{migrated_db, Cluster, Receiver, Reply, Script};

/// `config_toml` with `database.pool_size` set.
fn with_pool(config: String, pool_size: u32) -> String {
    let with = config.replacen(
        "[database]\n",
        &format!("[database]\npool_size = {pool_size}\n"),
        1,
    );
    assert!(with.contains("pool_size"), "{config}");
    with
}

/// Statuses whose record is not exactly one attempt, with the attempts of
/// the first few of them (for the failure message).
fn not_one_attempt(client: &mut postgres::Client) -> (i64, String) {
    let rows = client
        .query(
            "SELECT attempts::text FROM notification.delivery_status
             WHERE attempt_count <> 1 OR jsonb_array_length(attempts) <> 1",
            &[],
        )
        .expect("read attempts");
    let some: Vec<String> = rows.iter().take(3).map(|r| r.get(0)).collect();
    (rows.len() as i64, some.join("\n"))
}

/// The value of an unlabelled series in the OpenMetrics text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// `kills` runs of the daemon on `config`, each killed with `kill -9` once
/// the receiver got `ahead` more requests; then a last run until nothing
/// is unfinished. The requests in flight at each kill.
fn kill9_runs_then_finish(
    config: &str,
    receiver: &Receiver,
    client: &mut postgres::Client,
    kills: usize,
    ahead: usize,
) -> Vec<usize> {
    let mut in_flight_at_kills = Vec::new();
    for k in 0..kills {
        let mut daemon = Daemon::run(&format!("run #{k}"), config, &[]);
        let before = receiver.count();
        wait_until(
            &format!("run #{k} to have {ahead} requests answered"),
            Duration::from_secs(60),
            || receiver.count() >= before + ahead,
            || tail(&daemon.stderr(), 20),
        );
        in_flight_at_kills.push(receiver.in_flight());
        assert!(daemon.running(), "run #{k} exited:\n{}", daemon.stderr());
        daemon.kill9();
    }
    assert!(
        unfinished(client) > 0,
        "the kills came too late to test anything"
    );
    let mut last = Daemon::run("final run", config, &[]);
    wait_until(
        "the final run to finish",
        Duration::from_secs(120),
        || unfinished(client) == 0,
        || tail(&last.stderr(), 20),
    );
    last.stop(Duration::from_secs(30));
    in_flight_at_kills
}

/// 512 workers share a pool of 8 connections: 5,000 events are delivered
/// exactly once, far more deliveries are in flight at once than the
/// database has connections of ours, and those never exceed the pool plus
/// the lock and the listener connections (8 + 2). The daemon's start-up
/// check closes its connection before the pool opens one.
#[test]
fn five_hundred_twelve_workers_on_eight_connections_deliver_five_thousand_exactly_once() {
    const WORKERS: usize = 512;
    const POOL: u32 = 8;
    const EVENTS: i32 = 5000;
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200).with_latency(Duration::from_millis(200)));
    let mut client = db.client();
    let events = seed(&mut client, &receiver.url(), EVENTS);
    let metrics = free_addr();
    // 512 connections open to the receiver at once: its listen backlog
    // (128) may drop some SYNs, which the kernel resends after 1 s and 3 s;
    // a connect timeout above that keeps this about connections to the
    // database, not a failed first attempt.
    let config = with_pool(
        config_toml(
            &db.url,
            WORKERS,
            "15s",
            "timeout = \"30s\"\nconnect_timeout = \"10s\"\nretry_schedule = [\"10ms\"]\n",
            &format!("[metrics]\nlisten = \"{metrics}\"\n"),
        ),
        POOL,
    );
    let sampler = SessionSampler::start(&db.url, &db.name, Duration::from_millis(2));
    let mut daemon = Daemon::run("512 workers", &config, &[]);
    wait_until(
        "every delivery SUCCESS",
        Duration::from_secs(120),
        || unfinished(&mut client) == 0,
        || tail(&daemon.stderr(), 20),
    );
    let sessions = sampler.finish();
    let (most, most_workers, samples) = (sessions.most, sessions.most_workers, sessions.samples);
    let (code, text) = http_get(metrics, "/metrics").expect("metrics answer");
    assert_eq!(code, 200, "{text}");
    daemon.stop(Duration::from_secs(30));

    let duplicates = assert_all_delivered(&mut client, &receiver, &events);
    assert_eq!(duplicates, 0, "delivered more than once");
    let (not_one, some) = not_one_attempt(&mut client);
    assert_eq!(not_one, 0, "one attempt recorded each; e.g.\n{some}");
    let peak = receiver.peak_concurrency();
    let waits = metric(&text, "notification_reconciler_db_pool_wait_seconds_count");
    println!(
        "{WORKERS} workers, pool {POOL}: {EVENTS} delivered once each; peak {peak} requests \
         in flight; at most {most} connections of ours ({most_workers} workers') over \
         {samples} samples; {waits} pool waits"
    );
    assert!(samples > 10, "too few samples ({samples}) to say anything");
    assert!(
        most_workers <= POOL as i64,
        "{most_workers} worker connections with a pool of {POOL}"
    );
    assert!(
        most <= POOL as i64 + 2,
        "{most} connections of ours: more than the pool of {POOL} + lock + listener"
    );
    assert!(
        peak > 10 * (POOL as usize + 2),
        "only {peak} deliveries were in flight at once: the pool bounded them"
    );
    // Outcomes are recorded in groups: one checkout (a pool wait, even of
    // 0 s) per group, so fewer than one per delivery, and at least one.
    assert!(
        waits >= 1.0 && waits < EVENTS as f64,
        "{waits} pool waits for {EVENTS} outcomes: not recorded in groups"
    );
    assert!(
        metric(&text, "notification_reconciler_db_pool_in_use") <= POOL as f64,
        "{text}"
    );
}

/// The database stops while 64 deliveries are in flight, and the receiver
/// answers all of them while it is down: the workers hold their outcomes,
/// waiting for a connection (the first 100 deliveries went through, so the
/// pool holds connections the stop killed: the workers find them dead and
/// discard them). Once the database is back every outcome is recorded, none
/// is attempted again, and nothing is written twice.
#[test]
fn database_outage_with_deliveries_in_flight_records_their_outcomes_once_it_is_back() {
    const WORKERS: usize = 64;
    const EVENTS: i32 = 1000;
    const BEFORE: usize = 100;
    let cluster = Cluster::start_dedicated();
    let url = cluster.url();
    let config = with_pool(config_toml(&url, WORKERS, "1s", "", ""), 4);
    let mut migrate = Daemon::spawn("migrate", &config, &["migrate"], &[]);
    let status = migrate.wait(Duration::from_secs(60));
    assert!(status.success(), "migrate: {status}\n{}", migrate.stderr());

    // The first BEFORE requests are answered; the rest are held until the
    // script changes.
    let receiver = Receiver::start(Script::new(|rq| {
        if rq.seq <= BEFORE {
            Reply::status(200)
        } else {
            Reply::hang()
        }
    }));
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let events = seed(&mut client, &receiver.url(), EVENTS);
    drop(client);

    let mut daemon = Daemon::run("daemon", &config, &[]);
    wait_until(
        "every worker to be in a held request",
        Duration::from_secs(60),
        || receiver.in_flight() == WORKERS && receiver.count() == BEFORE + WORKERS,
        || tail(&daemon.stderr(), 20),
    );
    cluster.stop();
    // While the database is down, the receiver answers everything in flight.
    receiver.set_script(Script::status(200));
    wait_until(
        "the receiver to answer every request in flight",
        Duration::from_secs(30),
        || receiver.in_flight() == 0,
        || tail(&daemon.stderr(), 20),
    );
    let answered_during_outage = receiver.count() - BEFORE;
    assert_eq!(
        answered_during_outage, WORKERS,
        "only the requests in flight at the stop were made"
    );
    cluster.start();

    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("reconnect");
    wait_until(
        "everything delivered after the outage",
        Duration::from_secs(90),
        || unfinished(&mut client) == 0,
        || tail(&daemon.stderr(), 30),
    );
    let stderr = daemon.stderr();
    assert!(daemon.running(), "the daemon exited:\n{stderr}");
    daemon.stop(Duration::from_secs(30));

    let again = assert_all_delivered(&mut client, &receiver, &events);
    let (rewritten, some) = not_one_attempt(&mut client);
    let left_due = stderr.lines().filter(|l| l.contains("left due")).count();
    println!(
        "outage: {answered_during_outage} answered while the database was down; \
         {again} attempted again, {rewritten} statuses without exactly one recorded attempt, \
         {left_due} 'left due' lines"
    );
    assert_eq!(
        again,
        0,
        "outcomes held across the outage were attempted again:\n{}",
        tail(&stderr, 30)
    );
    assert_eq!(
        rewritten, 0,
        "an outcome was written twice or not at all, e.g.\n{some}"
    );
    assert!(
        stderr.contains("lock connection"),
        "the outage was not logged:\n{}",
        tail(&stderr, 30)
    );
}

/// `kill -9` three times while 256 workers on a pool of 4 have deliveries
/// in flight; a last run finishes. Nothing is lost, and each kill costs at
/// most the crash window: one delivery per worker (attempted, or answered
/// and not queued yet) plus the outcomes queued for the group commit.
#[test]
fn kill9_with_many_workers_on_few_connections_duplicates_at_most_the_deliveries_in_flight() {
    const WORKERS: usize = 256;
    const KILLS: usize = 3;
    const EVENTS: i32 = 3000;
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200).with_latency(Duration::from_millis(300)));
    let mut client = db.client();
    let events = seed(&mut client, &receiver.url(), EVENTS);
    let config = with_pool(config_toml(&db.url, WORKERS, "1s", "", ""), 4);

    let in_flight_at_kills =
        kill9_runs_then_finish(&config, &receiver, &mut client, KILLS, WORKERS + 100);

    let duplicates = assert_all_delivered(&mut client, &receiver, &events);
    let bound = Recorder::crash_window(WORKERS) * KILLS;
    println!(
        "kill -9: {KILLS} kills with {WORKERS} workers on 4 connections, requests in flight \
         at the kills {in_flight_at_kills:?}, {duplicates} duplicates (bound {bound})"
    );
    assert!(
        in_flight_at_kills.iter().all(|&n| n > 0),
        "a kill struck with nothing in flight: {in_flight_at_kills:?}"
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates after {KILLS} kills with {WORKERS} workers"
    );
}

/// `kill -9` three times while 16 workers drain 20 channels at once to a
/// receiver that answers at once, so that outcomes are recorded in groups
/// across channels; a last run finishes. Nothing is lost, and each kill
/// repeats at most the crash window: what was sent and not yet recorded,
/// one delivery per worker not queued yet plus the recorder's queue
/// (`Recorder::crash_window`: 48 with 16 workers).
#[test]
fn kill9_during_a_multi_channel_drain_repeats_at_most_the_crash_window() {
    const WORKERS: usize = 16;
    const CHANNELS: usize = 20;
    const KILLS: usize = 3;
    const EVENTS: i32 = 300;
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200));
    let mut client = db.client();
    let base = receiver.url();
    channel_for(
        &mut client,
        "kill.drain",
        &format!("{base}/0"),
        SECRET,
        "{}",
    );
    for c in 1..CHANNELS {
        add_channel(&mut client, "kill.drain", &format!("{base}/{c}"));
    }
    let events = emit(&mut client, "kill.drain", "'{}'::jsonb", EVENTS);
    let deliveries = events.len() * CHANNELS;
    let config = with_pool(config_toml(&db.url, WORKERS, "1s", "", ""), 4);
    kill9_runs_then_finish(&config, &receiver, &mut client, KILLS, 600);

    assert_eq!(
        count_state(&mut client, "SUCCESS"),
        deliveries as i64,
        "every delivery SUCCESS: {:?}",
        states(&mut client)
    );
    // Each delivery is an event id at a channel's path.
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for rq in receiver.requests() {
        let id = rq.header("webhook-id").unwrap_or_default().to_string();
        *seen.entry((id, rq.path.clone())).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        deliveries,
        "every delivery reached the receiver"
    );
    let duplicates = receiver.count() - seen.len();
    let bound = Recorder::crash_window(WORKERS) * KILLS;
    let (rewritten, some) = not_one_attempt(&mut client);
    let across: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT updated_at FROM notification.delivery_status
                 GROUP BY updated_at HAVING count(DISTINCT channel_id) > 1) g",
            &[],
        )
        .expect("count groups")
        .get(0);
    println!(
        "kill -9 during a {CHANNELS}-channel drain: {duplicates} duplicates after {KILLS} kills \
         (bound {bound}), {across} statements recorded outcomes of several channels"
    );
    assert!(across > 0, "no group held several channels' outcomes");
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates after {KILLS} kills with {WORKERS} workers: over the crash \
         window of {bound}"
    );
    // A repeated delivery's status holds only the attempt whose outcome
    // was recorded: every status exactly one.
    assert_eq!(
        rewritten, 0,
        "statuses without exactly one recorded attempt, e.g.\n{some}"
    );
}
