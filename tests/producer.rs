//! The producer contract, called the way an application calls it: plain SQL
//! `notification.enqueue_event(namespace, type, payload[, annotations])` on
//! the application's own connection, inside its own transaction. One event
//! per active matching rule, one PENDING status per active channel of that
//! rule, the new ids returned, and nothing left when the caller rolls back.

mod support;

use postgres::GenericClient;
use serde_json::{json, Value};
use support::migrated_db;
use uuid::Uuid;

fn channel(c: &mut impl GenericClient, ns: &str, disabled: bool, deleted: bool) -> Uuid {
    c.query_one(
        "INSERT INTO notification.channel (namespace, name, url, signing_secret, disabled, deleted_at)
         VALUES ($1, 'c', 'http://127.0.0.1:9/', 'whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', $2,
                 CASE WHEN $3 THEN now() END)
         RETURNING id",
        &[&ns, &disabled, &deleted],
    )
    .expect("insert channel")
    .get(0)
}

fn rule(
    c: &mut impl GenericClient,
    ns: &str,
    event_type: &str,
    channels: &[Uuid],
    disabled: bool,
    deleted: bool,
) -> Uuid {
    let id: Uuid = c
        .query_one(
            "INSERT INTO notification.rule (namespace, name, event_type, disabled, deleted_at)
             VALUES ($1, 'r', $2, $3, CASE WHEN $4 THEN now() END) RETURNING id",
            &[&ns, &event_type, &disabled, &deleted],
        )
        .expect("insert rule")
        .get(0);
    for ch in channels {
        c.execute(
            "INSERT INTO notification.rule_channel (rule_id, channel_id) VALUES ($1, $2)",
            &[&id, ch],
        )
        .expect("assign channel");
    }
    id
}

fn enqueue(c: &mut impl GenericClient, ns: &str, event_type: &str, payload: &Value) -> Vec<Uuid> {
    c.query(
        "SELECT notification.enqueue_event($1, $2, $3)",
        &[&ns, &event_type, payload],
    )
    .expect("enqueue_event")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn count(c: &mut impl GenericClient, sql: &str) -> i64 {
    c.query_one(sql, &[]).expect("count").get(0)
}

#[test]
fn one_event_per_active_matching_rule_and_the_ids_are_returned() {
    let db = migrated_db();
    let mut c = db.client();
    let ch = channel(&mut c, "acme", false, false);
    let other_ns_ch = channel(&mut c, "globex", false, false);
    let r1 = rule(&mut c, "acme", "invoice.paid", &[ch], false, false);
    let r2 = rule(&mut c, "acme", "invoice.paid", &[ch], false, false);
    rule(&mut c, "acme", "invoice.paid", &[ch], true, false); // disabled
    rule(&mut c, "acme", "invoice.paid", &[ch], false, true); // deleted
    rule(&mut c, "acme", "invoice.void", &[ch], false, false); // other type
    rule(
        &mut c,
        "globex",
        "invoice.paid",
        &[other_ns_ch],
        false,
        false,
    ); // other namespace

    let payload = json!({"amount": 42});
    let mut ids = enqueue(&mut c, "acme", "invoice.paid", &payload);
    ids.sort();

    let rows = c
        .query(
            "SELECT id, rule_id, namespace, type, payload FROM notification.event ORDER BY id",
            &[],
        )
        .expect("events");
    let stored: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(stored, ids, "returned ids are exactly the stored events");
    let mut rules: Vec<Uuid> = rows.iter().map(|r| r.get(1)).collect();
    rules.sort();
    let mut want = vec![r1, r2];
    want.sort();
    assert_eq!(rules, want, "one event per active matching rule");
    for r in &rows {
        assert_eq!(r.get::<_, String>(2), "acme");
        assert_eq!(r.get::<_, String>(3), "invoice.paid");
        assert_eq!(r.get::<_, Value>(4), payload);
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM notification.delivery_status"),
        2
    );
}

#[test]
fn disabled_or_deleted_rules_get_no_event() {
    let db = migrated_db();
    let mut c = db.client();
    let ch = channel(&mut c, "acme", false, false);
    let r = rule(&mut c, "acme", "t", &[ch], false, false);
    c.execute(
        "UPDATE notification.rule SET disabled = true WHERE id = $1",
        &[&r],
    )
    .expect("disable rule");
    assert!(enqueue(&mut c, "acme", "t", &json!({})).is_empty());
    c.execute(
        "UPDATE notification.rule SET disabled = false, deleted_at = now() WHERE id = $1",
        &[&r],
    )
    .expect("delete rule");
    assert!(enqueue(&mut c, "acme", "t", &json!({})).is_empty());
    assert_eq!(count(&mut c, "SELECT count(*) FROM notification.event"), 0);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM notification.delivery_status"),
        0
    );

    // Re-enabled, it matches again (the test can fail).
    c.execute(
        "UPDATE notification.rule SET deleted_at = NULL WHERE id = $1",
        &[&r],
    )
    .expect("undelete rule");
    assert_eq!(enqueue(&mut c, "acme", "t", &json!({})).len(), 1);
}

#[test]
fn statuses_only_for_active_channels() {
    let db = migrated_db();
    let mut c = db.client();
    let active = channel(&mut c, "acme", false, false);
    let disabled = channel(&mut c, "acme", true, false);
    let deleted = channel(&mut c, "acme", false, true);
    let unassigned = channel(&mut c, "acme", false, false);
    rule(
        &mut c,
        "acme",
        "t",
        &[active, disabled, deleted],
        false,
        false,
    );

    let ids = enqueue(&mut c, "acme", "t", &json!({"x": 1}));
    assert_eq!(ids.len(), 1);
    let rows = c
        .query(
            "SELECT channel_id, state, next_attempt_at IS NOT NULL, attempt_count, namespace
             FROM notification.delivery_status WHERE event_id = $1",
            &[&ids[0]],
        )
        .expect("statuses");
    assert_eq!(rows.len(), 1, "only the active channel gets a status");
    assert_eq!(rows[0].get::<_, Uuid>(0), active);
    assert_eq!(rows[0].get::<_, String>(1), "PENDING");
    assert!(rows[0].get::<_, bool>(2), "a new status is due at once");
    assert_eq!(rows[0].get::<_, i32>(3), 0);
    assert_eq!(rows[0].get::<_, String>(4), "acme");
    let _ = unassigned;
}

#[test]
fn a_rolled_back_caller_transaction_leaves_nothing() {
    let db = migrated_db();
    let mut c = db.client();
    let ch = channel(&mut c, "acme", false, false);
    rule(&mut c, "acme", "invoice.paid", &[ch], false, false);
    c.batch_execute("CREATE TABLE public.invoice (id int PRIMARY KEY, paid boolean)")
        .expect("application table");

    // The application's own write and the enqueue, in one transaction.
    let mut tx = c.transaction().expect("begin");
    tx.execute("INSERT INTO public.invoice VALUES (1, true)", &[])
        .expect("business write");
    let ids = enqueue(&mut tx, "acme", "invoice.paid", &json!({"invoice": 1}));
    assert_eq!(ids.len(), 1);
    assert_eq!(
        count(&mut tx, "SELECT count(*) FROM notification.delivery_status"),
        1,
        "visible inside the transaction"
    );
    tx.rollback().expect("rollback");

    assert_eq!(count(&mut c, "SELECT count(*) FROM public.invoice"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM notification.event"), 0);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM notification.delivery_status"),
        0
    );

    // Committed, both are there.
    let mut tx = c.transaction().expect("begin");
    tx.execute("INSERT INTO public.invoice VALUES (2, true)", &[])
        .expect("business write");
    let ids = enqueue(&mut tx, "acme", "invoice.paid", &json!({"invoice": 2}));
    tx.commit().expect("commit");
    assert_eq!(count(&mut c, "SELECT count(*) FROM public.invoice"), 1);
    let stored: Vec<Uuid> = c
        .query("SELECT id FROM notification.event", &[])
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, ids);
}

#[test]
fn the_documented_psql_call_works_with_a_literal_payload_and_annotations() {
    let db = migrated_db();
    let mut c = db.client();
    let ch = channel(&mut c, "acme", false, false);
    rule(&mut c, "acme", "invoice.paid", &[ch], false, false);
    // Exactly the call of docs/cli.md and README, on a connection whose
    // search_path does not include the service's schema.
    let rows = c
        .simple_query(
            "BEGIN; SELECT notification.enqueue_event('acme', 'invoice.paid', '{\"amount\": 42}'::jsonb); COMMIT;",
        )
        .expect("documented call");
    let returned = rows
        .iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .count();
    assert_eq!(returned, 1);
    enqueue_with_annotations(&mut c);
    assert_eq!(count(&mut c, "SELECT count(*) FROM notification.event"), 2);
}

fn enqueue_with_annotations(c: &mut postgres::Client) {
    let ann = json!({"source": "test"});
    let id: Uuid = c
        .query_one(
            "SELECT notification.enqueue_event('acme', 'invoice.paid', '{}'::jsonb, $1)",
            &[&ann],
        )
        .expect("enqueue with annotations")
        .get(0);
    let stored: Value = c
        .query_one(
            "SELECT annotations FROM notification.event WHERE id = $1",
            &[&id],
        )
        .expect("annotations")
        .get(0);
    assert_eq!(stored, ann);
}

#[test]
fn empty_namespace_or_type_is_an_error() {
    let db = migrated_db();
    let mut c = db.client();
    let err = c
        .query(
            "SELECT notification.enqueue_event('', 't', '{}'::jsonb)",
            &[],
        )
        .expect_err("empty namespace");
    assert!(err.to_string().contains("namespace") || format!("{err:?}").contains("namespace"));
    let err = c
        .query(
            "SELECT notification.enqueue_event('a', '', '{}'::jsonb)",
            &[],
        )
        .expect_err("empty type");
    assert!(format!("{err:?}").contains("type"));
}
