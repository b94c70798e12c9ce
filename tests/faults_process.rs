//! Process-level faults against the real binary, a real PostgreSQL and a
//! real receiver: `kill -9` at random moments, a database restart in the
//! middle of a pass, the leader losing its lock connection while another
//! instance waits, and two daemons sharing one database while events keep
//! arriving. Each test checks that nothing is lost (every delivery ends
//! SUCCESS and the receiver saw every event) and bounds the duplicates to
//! what at-least-once allows: the deliveries in flight at the moment of the
//! fault. The figures they print are the ones quoted in docs/reliability.md.
//! Hostile receivers and bad input are `faults_input.rs`'s business.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use notification_reconciler::lock::{derive_key, holder};
use notification_reconciler::reconcile::recorder::Recorder;
use rand::Rng;
use support::daemon::{config_toml, tail, wait_until, Daemon};
use support::fixtures::{
    assert_all_delivered, enqueue, lock_is_free, seed, seen, states, unfinished, LOCK_KEY,
};
use support::{migrated_db, Cluster, Receiver, Script};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `kill -9` at ten random moments while `run` delivers 2,000 events; a
/// final run finishes the backlog. Nothing is lost, and each kill costs at
/// most the crash window: what was sent and not recorded when it struck
/// (`Recorder::crash_window`: the requests in flight and the outcomes
/// queued for the group commit).
#[test]
fn crash_kill9_ten_times_loses_nothing_and_duplicates_at_most_the_crash_window_per_kill() {
    const WORKERS: usize = 4;
    const KILLS: usize = 10;
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200).with_latency(ms(20)));
    let mut client = db.client();
    let events = seed(&mut client, &receiver.url(), 2000);
    let config = config_toml(&db.url, WORKERS, "200ms", "", "");
    let mut rng = rand::rng();

    let mut delays = Vec::new();
    for k in 0..KILLS {
        let mut daemon = Daemon::run(&format!("run #{k}"), &config, &[]);
        let before = receiver.count();
        wait_until(
            &format!("run #{k} to start delivering"),
            Duration::from_secs(30),
            || receiver.count() > before,
            || tail(&daemon.stderr(), 20),
        );
        let delay = rng.random_range(50..600);
        delays.push(delay);
        // The random moment is the point of the test: not a wait for a
        // condition but the condition itself.
        std::thread::sleep(ms(delay));
        assert!(
            daemon.running(),
            "run #{k} exited by itself:\n{}",
            daemon.stderr()
        );
        daemon.kill9();
    }
    let delivered_before_final = states(&mut client).get("SUCCESS").copied().unwrap_or(0);
    assert!(
        unfinished(&mut client) > 0,
        "the kills came too late to test anything: all delivered"
    );

    let mut last = Daemon::run("final run", &config, &[]);
    wait_until(
        "the final run to finish the backlog",
        Duration::from_secs(60),
        || unfinished(&mut client) == 0,
        || tail(&last.stderr(), 20),
    );
    last.stop(Duration::from_secs(30));

    let duplicates = assert_all_delivered(&mut client, &receiver, &events);
    let bound = Recorder::crash_window(WORKERS) * KILLS;
    println!(
        "crash: {KILLS} kills (delays after delivery started, ms: {delays:?}), \
         {delivered_before_final} of 2000 delivered before the final run, \
         {duplicates} duplicate requests (bound {bound})"
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates after {KILLS} kills with {WORKERS} workers"
    );
}

/// `pg_ctl restart -m fast` while a pass delivers: the daemon logs the
/// failure, recovers by itself once the database is back, delivers
/// everything and takes the lock again.
#[test]
fn database_restart_mid_pass_recovers_within_an_interval_and_loses_nothing() {
    const WORKERS: usize = 4;
    let interval = Duration::from_secs(1);
    let cluster = Cluster::start_dedicated();
    let url = cluster.url();
    let config = config_toml(&url, WORKERS, "1s", "", "");
    let mut migrate = Daemon::spawn("migrate", &config, &["migrate"], &[]);
    let status = migrate.wait(Duration::from_secs(60));
    assert!(status.success(), "migrate: {status}\n{}", migrate.stderr());

    let receiver = Receiver::start(Script::status(200).with_latency(ms(20)));
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let events = seed(&mut client, &receiver.url(), 800);
    drop(client);

    let mut daemon = Daemon::run("daemon", &config, &[]);
    wait_until(
        "the pass to be under way",
        Duration::from_secs(30),
        || receiver.count() >= 100,
        || tail(&daemon.stderr(), 20),
    );
    let at_restart = receiver.count();
    cluster.restart_fast();
    let back = Instant::now();
    assert!(
        at_restart < events.len(),
        "the pass was over before the restart"
    );

    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("reconnect");
    wait_until(
        "everything delivered after the restart",
        Duration::from_secs(60),
        || unfinished(&mut client) == 0,
        || tail(&daemon.stderr(), 30),
    );
    let first_after = receiver
        .requests()
        .iter()
        .filter(|r| r.at > back)
        .map(|r| r.at)
        .min()
        .expect("requests after the database came back");
    let recovery = first_after - back;
    let stderr = daemon.stderr();
    assert!(daemon.running(), "the daemon exited:\n{stderr}");
    daemon.stop(Duration::from_secs(30));

    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        !errors.is_empty(),
        "the restart was not logged:\n{}",
        tail(&stderr, 30)
    );
    let duplicates = assert_all_delivered(&mut client, &receiver, &events);
    println!(
        "database restart: 1 restart with {at_restart} of 800 delivered, recovered {recovery:?} \
         after the database was back (interval {interval:?}), {duplicates} duplicates; \
         first error logged: {}",
        errors[0]
    );
    // Deliveries after the restart needed the lock: it was taken again.
    // "Within one interval" plus the time the pass needs to send its first
    // request; the slack only guards against a very slow machine.
    assert!(
        recovery <= interval + Duration::from_secs(5),
        "recovered only {recovery:?} after the database was back"
    );
    assert!(
        duplicates <= WORKERS,
        "{duplicates} duplicates from one restart with {WORKERS} workers"
    );
    assert!(lock_is_free(&url, derive_key(LOCK_KEY)), "lock left held");
}

/// Two daemons; the leader's lock backend is terminated mid-pass: the
/// leader stops handing out events, the other takes over, everything is
/// delivered, and only the deliveries in flight at the loss are repeated.
#[test]
fn lock_loss_mid_pass_hands_over_to_the_other_daemon() {
    const WORKERS: usize = 4;
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200).with_latency(ms(20)));
    let mut client = db.client();
    let events = seed(&mut client, &receiver.url(), 1000);

    // A leads first and, once it has lost the lock, does not try again for
    // a long while; B polls every 200 ms.
    // A's pages are large, so the loss falls in the middle of one: the
    // leader must notice it while handing out, not only at its next page.
    let a_config = config_toml(&db.url, WORKERS, "60s", "", "")
        .replace("workers = 4\n", "workers = 4\npage_size = 500\n");
    assert!(a_config.contains("page_size = 500"));
    let mut a = Daemon::run("A", &a_config, &[]);
    wait_until(
        "A to deliver",
        Duration::from_secs(30),
        || receiver.count() >= 50,
        || tail(&a.stderr(), 20),
    );
    let mut b = Daemon::run("B", &config_toml(&db.url, WORKERS, "200ms", "", ""), &[]);
    let key = derive_key(LOCK_KEY);
    let leader = holder(&mut client, key)
        .expect("lock holder")
        .expect("someone holds the lock mid-pass");
    assert!(
        leader
            .application_name
            .ends_with(&format!("pid {}", a.pid())),
        "A should lead: {leader:?}"
    );
    // Wait until B is up and polling, so the takeover is B's doing.
    wait_until(
        "B to start",
        Duration::from_secs(30),
        || b.stderr().contains("started"),
        || b.stderr(),
    );
    let at_loss = receiver.count();
    let terminated: bool = client
        .query_one("SELECT pg_terminate_backend($1)", &[&leader.pid])
        .expect("terminate")
        .get(0);
    assert!(terminated);

    let mut b_led = false;
    wait_until(
        "B to take over and finish",
        Duration::from_secs(60),
        || {
            if let Ok(Some(h)) = holder(&mut client, key) {
                b_led |= h.application_name.ends_with(&format!("pid {}", b.pid()));
            }
            unfinished(&mut client) == 0
        },
        || {
            format!(
                "A:\n{}\nB:\n{}",
                tail(&a.stderr(), 20),
                tail(&b.stderr(), 20)
            )
        },
    );
    let (a_err, b_err) = (a.stderr(), b.stderr());
    for d in [&mut a, &mut b] {
        d.stop(Duration::from_secs(30));
    }
    assert!(
        a_err.contains("lost the lock connection"),
        "A did not report the loss:\n{}",
        tail(&a_err, 20)
    );
    let b_delivered: u64 = b_err
        .lines()
        .filter_map(|l| {
            let rest = l.split("): ").nth(1)?;
            rest.split(" delivered").next()?.trim().parse::<u64>().ok()
        })
        .sum();
    let duplicates = assert_all_delivered(&mut client, &receiver, &events);
    let twice: Vec<_> = seen(&receiver)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    println!(
        "lock loss: {at_loss} of 1000 delivered by A at the loss, B delivered {b_delivered} \
         (B seen holding the lock: {b_led}), {duplicates} duplicates: {twice:?}"
    );
    assert!(
        b_delivered > 0 || b_led,
        "B never took over:\n{}",
        tail(&b_err, 20)
    );
    assert!(
        duplicates <= WORKERS,
        "{duplicates} events delivered by both daemons; at most the {WORKERS} in flight at \
         the loss may be"
    );
}

/// Two daemons on one database for a while, events arriving all along:
/// each event is delivered exactly once.
#[test]
fn two_daemons_with_events_arriving_deliver_each_exactly_once() {
    const WORKERS: usize = 4;
    let db = migrated_db();
    let receiver = Receiver::start(Script::status(200).with_latency(ms(2)));
    let mut client = db.client();
    let mut events = seed(&mut client, &receiver.url(), 3000);
    let config = config_toml(&db.url, WORKERS, "200ms", "", "");
    let mut daemons = [
        Daemon::run("A", &config, &[]),
        Daemon::run("B", &config, &[]),
    ];
    let started = Instant::now();
    // 2,000 more in 20 batches while both run.
    for _ in 0..20 {
        events.extend(enqueue(&mut client, 100));
        std::thread::sleep(ms(500));
    }
    wait_until(
        "everything delivered",
        Duration::from_secs(90),
        || unfinished(&mut client) == 0,
        || {
            daemons
                .iter()
                .map(|d| format!("{}:\n{}", d.name, tail(&d.stderr(), 10)))
                .collect()
        },
    );
    let ran_for = started.elapsed();
    let passes: Vec<usize> = daemons
        .iter()
        .map(|d| {
            d.stderr()
                .lines()
                .filter(|l| l.contains("pass done") && !l.contains("pass done: 0 events"))
                .count()
        })
        .collect();
    for d in &mut daemons {
        d.stop(Duration::from_secs(30));
    }
    let duplicates = assert_all_delivered(&mut client, &receiver, &events);
    let unique: HashSet<String> = receiver.ids().into_iter().collect();
    println!(
        "two daemons: {} events over {ran_for:?}, passes with work per daemon {passes:?}, \
         {duplicates} duplicates",
        events.len()
    );
    assert_eq!(unique.len(), 5000);
    assert_eq!(duplicates, 0, "an event was delivered twice");
}
