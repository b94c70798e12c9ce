//! Scenario 4, idle pass (`--only idle`): all events finished; the pass
//! duration and the due queries' plans.

use std::time::Instant;

use notification_reconciler::reconcile::leader::Reconciler;

use super::harness::{config, explain_analyze, pass, push, seed, Row, Sizes};
use super::support;

/// Scenario 4: passes over many finished events; returns the due queries'
/// plans.
pub(crate) fn idle(sizes: &Sizes, rows: &mut Vec<Row>) -> Vec<String> {
    let db = support::migrated_db();
    seed(
        &db,
        sizes.idle_events,
        "SUCCESS",
        "http://127.0.0.1:9/unused",
    );
    let mut reconciler = Reconciler::new(&config(&db.url, 16)).expect("bench: reconciler");
    let mut durations = Vec::new();
    for _ in 0..=sizes.idle_passes {
        let t = Instant::now();
        let report = pass(&mut reconciler);
        durations.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(report.deliveries_seen, 0, "idle: nothing is due");
    }
    let first = durations.remove(0);
    durations.sort_by(f64::total_cmp);
    let median = durations[durations.len() / 2];
    let max = durations[durations.len() - 1];
    push(rows, Row {
        scenario: "4 idle pass",
        setting: format!("{} finished events, 0 due", sizes.idle_events),
        result: format!(
            "median {median:.1} ms, max {max:.1} ms over {} passes (first, connecting: {first:.1} ms)",
            durations.len()
        ),
        target: "≤ 50 ms".into(),
        met: Some(median <= 50.0),
    });

    let mut client = db.client();
    client
        .batch_execute("SET search_path = notification")
        .expect("bench: search_path");
    let mut plans = Vec::new();
    for (name, sql) in [
        ("due channels query", explainable_channels_sql()),
        ("due count query", count_sql()),
    ] {
        let plan = explain_analyze(&mut client, &sql).join("\n");
        // Any partial index of unfinished rows (the channels query walks
        // the channel-led one, the count may take the next_attempt_at one
        // or, on an idle database where all are empty, 0009's ordered one).
        assert!(
            plan.contains("delivery_status_channel_due")
                || plan.contains("delivery_status_next")
                || plan.contains("delivery_status_channel_order"),
            "idle: the {name} does not use a partial index of unfinished rows:\n{plan}"
        );
        plans.push(format!(
            "EXPLAIN ANALYZE of the {name} (idle database):\n{plan}"
        ));
    }
    plans
}

/// The count query of `db::due::count_due`, with the cut-off inlined.
pub(crate) fn count_sql() -> String {
    format!(
        "SELECT count(*) FROM delivery_status WHERE {} AND next_attempt_at <= now()",
        notification_reconciler::db::due::NEXT_INDEX_FILTER
    )
}

/// The channels query of `db::due` with its cut-off inlined (now).
pub(crate) fn explainable_channels_sql() -> String {
    notification_reconciler::db::due::channels_sql(false).replace("$1", "now()")
}
