//! Retention (`retention.keep_finished`, `prune`, the leader's pruner)
//! against the real PostgreSQL: which events go and which stay (the
//! boundary is exact, unfinished work of any age stays, an event with one
//! unfinished delivery stays), a resend racing the pruner loses nothing,
//! `prune --dry-run` counts what `prune` then removes, "0s" removes
//! nothing, `status` shows what is due, and the leader prunes on its own.
//! Ages are set in SQL (`created_at`), never waited for; tests wait on
//! conditions, not on time.

mod support;

use std::sync::Barrier;
use std::time::Duration;

use chrono::{DateTime, Utc};
use notification_reconciler::db::{prune, statuses};
use notification_reconciler::ops;
use postgres::Client;
use serde_json::Value;
use support::bin::Bin;
use support::daemon::{config_toml, wait_until, Daemon};
use support::migrated_db;
use support::net::{free_addr, http_get};
use uuid::Uuid;

/// Creates `n` channels in namespace `acme`; returns their ids.
fn channels(c: &mut Client, n: i64) -> Vec<Uuid> {
    c.query(
        "INSERT INTO notification.channel (namespace, name, url, signing_secret)
         SELECT 'acme', 'hook' || g, 'http://127.0.0.1:9/' || g, 'whsec_AAAA'
         FROM generate_series(1, $1::int8) g RETURNING id",
        &[&n],
    )
    .expect("channels")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Inserts an event created at SQL expression `created_at`, with one
/// delivery status per entry of `states` (on `chans`, in order), each
/// holding one attempt record, the unfinished ones due in a day; returns
/// its id.
fn event(c: &mut Client, created_at: &str, states: &[&str], chans: &[Uuid]) -> Uuid {
    let states: Vec<String> = states.iter().map(|s| s.to_string()).collect();
    let chans = &chans[..states.len()];
    c.query_one(
        &format!(
            "WITH e AS (
                 INSERT INTO notification.event (namespace, type, payload, created_at)
                 VALUES ('acme', 'invoice.paid', '{{}}', {created_at}) RETURNING id, created_at
             ), s AS (
                 INSERT INTO notification.delivery_status
                     (namespace, event_id, channel_id, event_created_at, state,
                      next_attempt_at, attempts, attempt_count)
                 SELECT 'acme', e.id, x.channel, e.created_at, x.state,
                        -- Unfinished ones are due tomorrow: a daemon leaves them be.
                        CASE WHEN x.state IN ('SUCCESS', 'FAILED') THEN NULL
                             ELSE now() + interval '1 day' END,
                        '[{{\"http_status\": 200}}]', 1
                 FROM e, unnest($1::uuid[], $2::text[]) AS x(channel, state)
             )
             SELECT id FROM e"
        ),
        &[&chans, &states],
    )
    .expect("insert event")
    .get(0)
}

fn exists(c: &mut Client, id: Uuid) -> bool {
    c.query_one(
        "SELECT count(*) FROM notification.event WHERE id = $1",
        &[&id],
    )
    .expect("count")
    .get::<_, i64>(0)
        == 1
}

fn count(c: &mut Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM notification.{table}"), &[])
        .expect("count")
        .get(0)
}

/// A client with the service's search_path, as `db::connect` opens them.
fn service_client(url: &str) -> Client {
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    c.batch_execute("SET search_path TO notification")
        .expect("search_path");
    c
}

fn json(bin: &Bin, args: &[&str]) -> Value {
    let out = bin.ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

#[test]
fn the_boundary_is_exact_finished_just_older_goes_just_younger_and_equal_stay() {
    let db = migrated_db();
    let mut c = service_client(&db.url);
    let ch = channels(&mut c, 2);
    let cutoff: DateTime<Utc> = c
        .query_one(
            "SELECT date_trunc('second', now()) - interval '1 hour'",
            &[],
        )
        .expect("cutoff")
        .get(0);
    let at = |offset: &str| {
        format!(
            "'{}'::timestamptz + interval '{offset}'",
            cutoff.to_rfc3339()
        )
    };
    let older = event(&mut c, &at("-1 microsecond"), &["SUCCESS", "FAILED"], &ch);
    let equal = event(&mut c, &at("0 s"), &["SUCCESS"], &ch);
    let younger = event(&mut c, &at("1 microsecond"), &["FAILED"], &ch);

    let removed = prune::sweep(&mut c, cutoff, prune::BATCH, &mut |_| true).expect("sweep");
    assert_eq!(
        removed,
        prune::Removed {
            events: 1,
            delivery_statuses: 2,
            attempts: 2
        }
    );
    assert!(!exists(&mut c, older));
    assert!(exists(&mut c, equal));
    assert!(exists(&mut c, younger));

    // Through the operation, by duration: a minute either side of 1h.
    c.execute("DELETE FROM notification.event", &[])
        .expect("clean up");
    let older = event(&mut c, "now() - interval '61 minutes'", &["SUCCESS"], &ch);
    let younger = event(&mut c, "now() - interval '59 minutes'", &["SUCCESS"], &ch);
    let report = ops::prune::prune(&mut c, Duration::from_secs(3600), false).expect("prune");
    assert_eq!(report.removed.events, 1, "{report:?}");
    assert!(!exists(&mut c, older));
    assert!(exists(&mut c, younger));
}

#[test]
fn unfinished_work_of_any_age_stays_and_one_unfinished_delivery_keeps_the_event() {
    let db = migrated_db();
    let mut c = service_client(&db.url);
    let ch = channels(&mut c, 3);
    let old = "now() - interval '10 years'";
    let kept = [
        event(&mut c, old, &["PENDING"], &ch),
        event(&mut c, old, &["SENDING"], &ch),
        event(&mut c, old, &["RESENDING"], &ch),
        event(&mut c, old, &["SUCCESS", "PENDING"], &ch),
        event(&mut c, old, &["FAILED", "SUCCESS", "SENDING"], &ch),
        event(&mut c, old, &["RESENDING", "FAILED"], &ch),
    ];
    let gone = [
        event(&mut c, old, &["SUCCESS", "FAILED", "SUCCESS"], &ch),
        // No rule matched a channel: finished trivially.
        event(&mut c, old, &[], &ch),
    ];
    let report = ops::prune::prune(&mut c, Duration::from_secs(60), false).expect("prune");
    assert_eq!(report.removed.events, 2, "{report:?}");
    assert_eq!(report.removed.delivery_statuses, 3, "{report:?}");
    for id in kept {
        assert!(exists(&mut c, id), "unfinished event {id} was removed");
    }
    for id in gone {
        assert!(!exists(&mut c, id), "finished event {id} was kept");
    }
    assert_eq!(count(&mut c, "delivery_status"), 10);
}

#[test]
fn a_resend_racing_the_pruner_loses_nothing() {
    let db = migrated_db();
    let mut setup = service_client(&db.url);
    let ch = channels(&mut setup, 1);
    let mut pruner = service_client(&db.url);
    let mut resender = service_client(&db.url);
    let barrier = Barrier::new(2);
    let (mut resend_won, mut prune_won) = (0, 0);
    for round in 0..200 {
        // A few events either side of the one resent, so that the pruner's
        // step is busy around it.
        let ids: Vec<Uuid> = (0..8)
            .map(|_| event(&mut setup, "now() - interval '2 days'", &["FAILED"], &ch))
            .collect();
        let target = ids[round % ids.len()];
        let cutoff = prune::cutoff(&mut setup, Duration::from_secs(86400)).expect("cutoff");
        let (resent, removed) = std::thread::scope(|s| {
            let r = s.spawn(|| {
                barrier.wait();
                statuses::resend(&mut resender, target, None).expect("resend")
            });
            let p = s.spawn(|| {
                barrier.wait();
                prune::sweep(&mut pruner, cutoff, 3, &mut |_| true).expect("prune")
            });
            (
                r.join().expect("resend thread"),
                p.join().expect("prune thread"),
            )
        });
        let state: Option<String> = setup
            .query_opt(
                "SELECT state FROM notification.delivery_status WHERE event_id = $1",
                &[&target],
            )
            .expect("state")
            .map(|r| r.get(0));
        if resent.resent.is_empty() {
            // The pruner got there first; the resend said there was nothing.
            assert_eq!(
                state, None,
                "round {round}: a refused resend, yet the event stays"
            );
            assert!(!exists(&mut setup, target), "round {round}");
            prune_won += 1;
        } else {
            // The resend won: the event stays, due again.
            assert_eq!(state.as_deref(), Some("RESENDING"), "round {round}");
            assert!(
                exists(&mut setup, target),
                "round {round}: a resent event was pruned"
            );
            resend_won += 1;
        }
        assert!(removed.events <= 8, "round {round}");
        // Clean up for the next round (the resent one is unfinished now).
        setup
            .execute("DELETE FROM notification.event", &[])
            .expect("clean up");
    }
    // Both outcomes happen; which and how often is timing (not asserted).
    eprintln!("resend won {resend_won}, pruner won {prune_won}");
}

#[test]
fn prune_dry_run_counts_without_removing_then_prune_removes_the_same_set() {
    let db = migrated_db();
    let mut c = service_client(&db.url);
    let ch = channels(&mut c, 2);
    for _ in 0..7 {
        event(
            &mut c,
            "now() - interval '3 days'",
            &["SUCCESS", "FAILED"],
            &ch,
        );
    }
    event(&mut c, "now() - interval '3 days'", &[], &ch);
    event(
        &mut c,
        "now() - interval '3 days'",
        &["SUCCESS", "PENDING"],
        &ch,
    );
    event(&mut c, "now() - interval '1 hour'", &["SUCCESS"], &ch);
    let bin = Bin::for_database(&db.url);

    let dry = json(
        &bin,
        &["prune", "--older-than", "2d", "--dry-run", "--json"],
    );
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["events"], 8, "{dry}");
    assert_eq!(dry["delivery_statuses"], 14, "{dry}");
    assert_eq!(dry["attempts"], 14, "{dry}");
    assert_eq!(count(&mut c, "event"), 10, "a dry run removed something");

    let text = bin.ok(&["prune", "--older-than", "2d", "--dry-run"]);
    assert!(
        text.starts_with("would remove 8 events, 14 delivery statuses"),
        "{text}"
    );

    let done = json(&bin, &["prune", "--older-than", "2d", "--json"]);
    assert_eq!(done["dry_run"], false, "{done}");
    for key in ["events", "delivery_statuses", "attempts"] {
        assert_eq!(done[key], dry[key], "{key}: {done} vs {dry}");
    }
    assert_eq!(count(&mut c, "event"), 2);
    assert_eq!(count(&mut c, "delivery_status"), 3);
    let again = bin.ok(&["prune", "--older-than", "2d"]);
    assert!(again.starts_with("removed 0 events"), "{again}");
}

#[test]
fn retention_off_removes_nothing() {
    let db = migrated_db();
    let mut c = service_client(&db.url);
    let ch = channels(&mut c, 1);
    for _ in 0..3 {
        event(&mut c, "now() - interval '20 years'", &["SUCCESS"], &ch);
    }
    let off = Bin::with_config(&format!(
        "[database]\nurl = \"{}\"\n[retention]\nkeep_finished = \"0s\"\n",
        db.url
    ));
    let text = off.ok(&["prune"]);
    assert!(text.contains("retention is off"), "{text}");
    let report = json(&off, &["prune", "--json"]);
    assert_eq!(report["events"], 0, "{report}");
    assert!(report["cutoff"].is_null(), "{report}");
    let explicit = json(
        &Bin::for_database(&db.url),
        &["prune", "--older-than", "0s", "--json"],
    );
    assert_eq!(explicit["events"], 0, "{explicit}");
    let status = json(&off, &["status", "--json"]);
    assert_eq!(status["retention"]["due_for_pruning"], 0, "{status}");
    assert_eq!(count(&mut c, "event"), 3);
}

#[test]
fn status_shows_the_oldest_kept_finished_event_and_how_many_are_due() {
    let db = migrated_db();
    let mut c = service_client(&db.url);
    let ch = channels(&mut c, 1);
    let bin = Bin::for_database(&db.url); // keep_finished: the default, 30d
    let empty = json(&bin, &["status", "--json"]);
    assert!(
        empty["retention"]["oldest_kept_finished_at"].is_null(),
        "{empty}"
    );
    assert_eq!(empty["retention"]["due_for_pruning"], 0, "{empty}");

    event(&mut c, "now() - interval '90 days'", &["PENDING"], &ch);
    let oldest = event(&mut c, "now() - interval '40 days'", &["SUCCESS"], &ch);
    event(&mut c, "now() - interval '35 days'", &["FAILED"], &ch);
    event(&mut c, "now() - interval '1 day'", &["SUCCESS"], &ch);
    let oldest_at: DateTime<Utc> = c
        .query_one(
            "SELECT created_at FROM notification.event WHERE id = $1",
            &[&oldest],
        )
        .expect("created_at")
        .get(0);
    let status = json(&bin, &["status", "--json"]);
    let r = &status["retention"];
    assert_eq!(r["due_for_pruning"], 2, "{status}");
    assert_eq!(r["keep_finished_seconds"], 30 * 86400, "{status}");
    let shown: DateTime<Utc> = serde_json::from_value(r["oldest_kept_finished_at"].clone())
        .expect("oldest_kept_finished_at is a time");
    assert_eq!(shown, oldest_at);
    let text = bin.ok(&["status"]);
    assert!(
        text.contains(
            "retention: keep finished 30d; 2 events due for pruning; oldest finished kept: "
        ),
        "{text}"
    );
}

#[test]
fn the_leader_prunes_on_its_own_and_counts_it_in_metrics() {
    let db = migrated_db();
    let mut c = service_client(&db.url);
    let ch = channels(&mut c, 2);
    // More than one step's worth, so the sweep takes several steps.
    let n = prune::BATCH + 100;
    c.execute(
        "INSERT INTO notification.event (namespace, type, payload, created_at)
         SELECT 'acme', 'invoice.paid', '{}', now() - interval '2 hours' - g * interval '1 ms'
         FROM generate_series(1, $1::int8) g",
        &[&n],
    )
    .expect("old events");
    c.execute(
        "INSERT INTO notification.delivery_status
             (namespace, event_id, channel_id, event_created_at, state)
         SELECT 'acme', e.id, $1, e.created_at, 'SUCCESS' FROM notification.event e",
        &[&ch[0]],
    )
    .expect("their statuses");
    let unfinished = event(
        &mut c,
        "now() - interval '3 hours'",
        &["FAILED", "SENDING"],
        &ch,
    );
    let young = event(&mut c, "now() - interval '10 minutes'", &["SUCCESS"], &ch);
    let metrics = free_addr();
    let mut daemon = Daemon::run(
        "pruning leader",
        &config_toml(
            &db.url,
            2,
            "1s",
            "",
            &format!("[retention]\nkeep_finished = \"1h\"\n[metrics]\nlisten = \"{metrics}\"\n"),
        ),
        &[],
    );
    wait_until(
        "the leader pruned the old finished events",
        Duration::from_secs(60),
        || count(&mut c, "event") == 2,
        || daemon.stderr(),
    );
    assert!(exists(&mut c, unfinished));
    assert!(exists(&mut c, young));
    let pruned = |table: &str| -> Option<f64> {
        let (_, body) = http_get(metrics, "/metrics")?;
        let series = format!("notification_reconciler_pruned_rows_total{{table=\"{table}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
    };
    wait_until(
        "/metrics counts the pruned rows",
        Duration::from_secs(30),
        || pruned("event") == Some(n as f64) && pruned("delivery_status") == Some(n as f64),
        || {
            http_get(metrics, "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default()
        },
    );
    let (_, body) = http_get(metrics, "/metrics").expect("metrics");
    assert!(
        body.contains("notification_reconciler_prune_seconds_total "),
        "{body}"
    );
    daemon.stop(Duration::from_secs(20));
}
