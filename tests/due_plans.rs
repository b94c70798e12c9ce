//! The plans PostgreSQL picks for the leader's due queries, as the daemon
//! runs them (prepared statements: the first executions get custom plans,
//! later ones may get the generic plan), with one channel holding a large
//! due backlog and another a few due deliveries and many finished ones,
//! before and after ANALYZE.
//!
//! The leader's promptness for every channel rests on these plans: the
//! channels query and a channel's read must walk
//! `delivery_status_channel_due` for that channel only, and look events up
//! by key. A plan that walks the retry timer's `next_attempt_at` index, or
//! scans a table, reads the big channel's backlog to serve the small one;
//! it costs nothing at test size and hundreds of milliseconds per read at a
//! few hundred thousand (docs/benchmarks.md, section 10). This test reads
//! plans only (EXPLAIN without ANALYZE), so it asserts no time. An ordered
//! channel's head (migration 0009) is one descent of
//! `delivery_status_channel_order`, never a sort of the channel's backlog.

mod support;

use notification_reconciler::db::due;
use support::{migrated_db, TestDb};

/// Due deliveries on the big channel.
const BACKLOG: i32 = 60_000;
/// Finished deliveries on the small channel (a non-partial index on
/// `channel_id` would read them all).
const FINISHED: i32 = 20_000;

/// Seeds the two channels; returns (big, small) channel ids as text.
fn seed(db: &TestDb) -> (String, String) {
    let mut c = db.client();
    let ids: Vec<String> = c
        .query(
            "INSERT INTO notification.channel (namespace, name, url, signing_secret)
             SELECT 'plans', n, 'http://127.0.0.1:9/' || n,
                    'whsec_' || encode(sha256(n::bytea), 'base64')
             FROM unnest(ARRAY['big', 'small']) AS n
             RETURNING id::text",
            &[],
        )
        .expect("channels")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (big, small) = (ids[0].clone(), ids[1].clone());
    c.batch_execute(&format!(
        "SET search_path = notification;
         ALTER TABLE delivery_status SET (autovacuum_enabled = false);
         ALTER TABLE event SET (autovacuum_enabled = false);
         CREATE TEMP TABLE seeded AS
             SELECT gen_random_uuid() AS id, g,
                    now() - interval '1 hour' + g * interval '1 ms' AS at
             FROM generate_series(1, {total}) g;
         INSERT INTO event (id, namespace, type, payload, created_at)
             SELECT id, 'plans', 'x', '{{}}', at FROM seeded;
         INSERT INTO delivery_status
             (namespace, event_id, channel_id, event_created_at, state, next_attempt_at)
             SELECT 'plans', id, '{big}', at, 'PENDING', at FROM seeded WHERE g <= {BACKLOG};
         INSERT INTO delivery_status
             (namespace, event_id, channel_id, event_created_at, state, next_attempt_at)
             SELECT 'plans', id, '{small}', at,
                    CASE WHEN g > {total} - 5 THEN 'PENDING' ELSE 'SUCCESS' END,
                    CASE WHEN g > {total} - 5 THEN at END
             FROM seeded WHERE g > {BACKLOG};",
        total = BACKLOG + FINISHED + 5,
    ))
    .expect("seed");
    (big, small)
}

/// The plan of `sql` (parameters of `types`) executed with `args`, with
/// `plan_cache_mode` set to `mode`.
fn plan(c: &mut postgres::Client, mode: &str, types: &str, sql: &str, args: &str) -> String {
    c.batch_execute(&format!(
        "SET search_path = notification; SET plan_cache_mode = {mode};
         DEALLOCATE ALL; PREPARE q({types}) AS {sql}"
    ))
    .expect("prepare");
    c.query(&format!("EXPLAIN (COSTS OFF) EXECUTE q({args})"), &[])
        .expect("explain")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Panics unless `plan` reads `delivery_status` through
/// `delivery_status_channel_due` only and scans no table.
fn assert_channel_led(what: &str, plan: &str) {
    for bad in [
        "using delivery_status_next ",
        "using delivery_status_channel on",
        "Seq Scan on delivery_status",
        "Seq Scan on event",
        "Bitmap Heap Scan on delivery_status",
        "Bitmap Heap Scan on event",
        "Hash Join",
        "Hash Semi Join",
    ] {
        assert!(!plan.contains(bad), "{what}: the plan has {bad:?}:\n{plan}");
    }
    assert!(
        plan.contains("using delivery_status_channel_due on delivery_status"),
        "{what}: the plan does not walk delivery_status_channel_due:\n{plan}"
    );
}

fn check_all(db: &TestDb, big: &str, small: &str, stats: &str) {
    let mut c = db.client();
    let start = "'-infinity'::timestamptz";
    let nil = "'00000000-0000-0000-0000-000000000000'::uuid";
    for mode in ["force_custom_plan", "force_generic_plan"] {
        let what = |q: &str| format!("{q} ({stats}, {mode})");
        for (name, types, sharded, args) in [
            ("the channels query", "timestamptz", false, "now()"),
            (
                "the sharded channels query",
                "timestamptz, int4, int4[]",
                true,
                "now(), 4, ARRAY[0, 1, 2, 3]",
            ),
        ] {
            let p = plan(&mut c, mode, types, &due::channels_sql(sharded), args);
            assert_channel_led(&what(name), &p);
        }
        for (name, lanes) in [
            ("the small channel's read", vec![small]),
            ("the big channel's read", vec![big]),
            ("a read of both", vec![big, small]),
        ] {
            let ids: Vec<String> = lanes.iter().map(|id| format!("'{id}'::uuid")).collect();
            let n = lanes.len();
            let args = format!(
                "now(), ARRAY[{}], ARRAY[{}], ARRAY[{}]",
                ids.join(", "),
                vec![start; n].join(", "),
                vec![nil; n].join(", ")
            );
            let p = plan(
                &mut c,
                mode,
                "timestamptz, uuid[], timestamptz[], uuid[]",
                &due::read_sql(50),
                &args,
            );
            assert_channel_led(&what(name), &p);
        }
        // An ordered channel's head: one descent of its own index per
        // channel, never the big channel's backlog sorted.
        for (name, lanes) in [
            ("the small ordered channel's head", vec![small]),
            ("the big ordered channel's head", vec![big]),
        ] {
            let ids: Vec<String> = lanes.iter().map(|id| format!("'{id}'::uuid")).collect();
            let args = format!(
                "now(), ARRAY[{}], pg_current_xact_id()::text, now()",
                ids.join(", ")
            );
            let p = plan(
                &mut c,
                mode,
                "timestamptz, uuid[], text, timestamptz",
                &due::read_heads_sql(),
                &args,
            );
            for bad in [
                "Sort",
                "Seq Scan on delivery_status",
                "Seq Scan on event",
                "Hash Join",
            ] {
                assert!(
                    !p.contains(bad),
                    "{}: the plan has {bad:?}:\n{p}",
                    what(name)
                );
            }
            assert!(
                p.contains("using delivery_status_channel_order on delivery_status"),
                "{}: not on delivery_status_channel_order:\n{p}",
                what(name)
            );
        }
        // The retry timer's query keeps its own index.
        let p = plan(
            &mut c,
            mode,
            "timestamptz",
            due::NEXT_DUE_AFTER_SQL,
            "now()",
        );
        assert!(
            p.contains("delivery_status_next"),
            "{}: not on delivery_status_next:\n{p}",
            what("the retry timer's query")
        );
    }
}

#[test]
fn the_due_queries_walk_one_channel_at_a_time_whatever_the_statistics() {
    let db = migrated_db();
    let (big, small) = seed(&db);
    // Right after a burst: autovacuum has not analyzed the new rows yet.
    check_all(&db, &big, &small, "before ANALYZE");
    db.client().batch_execute("ANALYZE").expect("analyze");
    check_all(&db, &big, &small, "after ANALYZE");
}
