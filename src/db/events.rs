//! The `event` table: enqueueing through the producer function, listing and
//! showing events with their delivery statuses.

use chrono::{DateTime, Utc};
use postgres::GenericClient;
use uuid::Uuid;

use super::audit::{self, Actor};
use super::statuses::{self, DeliveryStatus};
use super::DbError;
use crate::state::State;

/// An event as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// Id (also the `webhook-id` of its deliveries).
    pub id: Uuid,
    /// Namespace.
    pub namespace: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The rule that created it.
    pub rule_id: Option<Uuid>,
    /// Payload (the webhook's `data`).
    pub payload: serde_json::Value,
    /// Annotations (not sent).
    pub annotations: serde_json::Value,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// An event listed with the states of its deliveries.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventSummary {
    /// Id.
    pub id: Uuid,
    /// Namespace.
    pub namespace: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// State of each delivery, in channel order.
    pub states: Vec<String>,
}

/// Enqueues through `enqueue_event` (the producer contract) and writes
/// the audit row of the post in the same statement: `$1`..`$4` are
/// `enqueue_event`'s arguments, `$5`..`$7` the actor's columns
/// (`audit::actor_columns`); the audit row names the new events
/// comma-separated in enqueue order (none when no rule matched). A post
/// through either door thus costs one statement and one commit, as a
/// producer's own `enqueue_event` call does (which is not audited: the
/// application's own change records who made it).
pub const EMIT: &str = "WITH e AS (
         SELECT id, n
         FROM enqueue_event($1, $2, $3, coalesce($4, '{}'::jsonb)) WITH ORDINALITY AS t(id, n)
     ), a AS (
         INSERT INTO audit (namespace, actor_kind, actor_id, actor_name, operation,
                            object_kind, object_id)
         SELECT $1, $5, $6, $7, 'createEvent', 'event',
                (SELECT string_agg(id::text, ',' ORDER BY n) FROM e)
     )
     SELECT id FROM e ORDER BY n";

/// Runs [`EMIT`] (the text, or the statement prepared from it on this
/// connection) for `actor`; returns the new event ids, one per matching
/// active rule.
pub fn emit<S: ?Sized + postgres::ToStatement>(
    client: &mut impl GenericClient,
    statement: &S,
    namespace: &str,
    event_type: &str,
    payload: &serde_json::Value,
    annotations: Option<&serde_json::Value>,
    actor: &Actor,
) -> Result<Vec<Uuid>, DbError> {
    let (kind, actor_id, actor_name) = audit::actor_columns(actor);
    let rows = client
        .query(
            statement,
            &[
                &namespace,
                &event_type,
                payload,
                &annotations,
                &kind,
                &actor_id,
                &actor_name,
            ],
        )
        .map_err(DbError::query("enqueueing an event"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Creates an event without a rule and one PENDING delivery of it to
/// `channel` (the test event of a channel), in one transaction that takes
/// its id before the event is stamped, and wakes the leader; returns the
/// event id. An event without a rule is delivered
/// to the channel it was made for (`db::due`'s read).
pub fn emit_to_channel(
    client: &mut impl GenericClient,
    namespace: &str,
    event_type: &str,
    payload: &serde_json::Value,
    channel: Uuid,
) -> Result<Uuid, DbError> {
    let mut tx = client
        .transaction()
        .map_err(DbError::query("sending a test event"))?;
    // The transaction's id before the event's time, as enqueue_event takes
    // it (migration 0010): the order horizon of ordered channels relies on it.
    tx.execute("SELECT pg_current_xact_id()", &[])
        .map_err(DbError::query("sending a test event"))?;
    let row = tx
        .query_one(
            "WITH e AS (
                 INSERT INTO event (namespace, type, payload, created_at)
                 VALUES ($1, $2, $3, clock_timestamp()) RETURNING id, created_at
             )
             INSERT INTO delivery_status
                 (namespace, event_id, channel_id, event_created_at, state,
                  next_attempt_at, clock_started_at, created_at, updated_at)
             SELECT $1, e.id, $4, e.created_at, 'PENDING', e.created_at, e.created_at,
                    e.created_at, e.created_at
             FROM e RETURNING event_id",
            &[&namespace, &event_type, payload, &channel],
        )
        .map_err(DbError::query("sending a test event"))?;
    tx.execute("SELECT pg_notify(wake_channel(), '')", &[])
        .map_err(DbError::query("sending a test event"))?;
    tx.commit()
        .map_err(DbError::query("sending a test event"))?;
    Ok(row.get(0))
}

/// Which events [`list_filtered`] returns.
#[derive(Debug, Default, Clone)]
pub struct EventFilter<'a> {
    /// Only this namespace.
    pub namespace: Option<&'a str>,
    /// Only this type.
    pub event_type: Option<&'a str>,
    /// Only events with a delivery in this state.
    pub state: Option<State>,
    /// Only events with a delivery to this channel.
    pub channel: Option<Uuid>,
    /// Only events created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events before this one in newest-first order: (created_at, id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
}

/// The newest `limit` events that match `filter`, newest first.
pub fn list_filtered(
    client: &mut impl GenericClient,
    filter: &EventFilter<'_>,
    limit: i64,
) -> Result<Vec<EventSummary>, DbError> {
    let state = filter.state.map(|s| s.as_str());
    let (before_at, before_id) = filter.before.unzip();
    let rows = client
        .query(
            "SELECT e.id, e.namespace, e.type, e.created_at,
                    coalesce((SELECT array_agg(ds.state ORDER BY ds.channel_id)
                              FROM delivery_status ds WHERE ds.event_id = e.id), '{}')
             FROM event e
             WHERE ($1::text IS NULL OR e.namespace = $1)
               AND ($2::text IS NULL OR e.type = $2)
               AND ($3::text IS NULL
                    OR EXISTS (SELECT 1 FROM delivery_status x WHERE x.event_id = e.id AND x.state = $3))
               AND ($4::uuid IS NULL
                    OR EXISTS (SELECT 1 FROM delivery_status x WHERE x.event_id = e.id AND x.channel_id = $4))
               AND ($5::timestamptz IS NULL OR e.created_at >= $5)
               AND ($6::timestamptz IS NULL OR (e.created_at, e.id) < ($6, $7::uuid))
             ORDER BY e.created_at DESC, e.id DESC
             LIMIT $8",
            &[
                &filter.namespace,
                &filter.event_type,
                &state,
                &filter.channel,
                &filter.since,
                &before_at,
                &before_id,
                &limit,
            ],
        )
        .map_err(DbError::query("listing events"))?;
    Ok(rows
        .iter()
        .map(|r| EventSummary {
            id: r.get(0),
            namespace: r.get(1),
            event_type: r.get(2),
            created_at: r.get(3),
            states: r.get(4),
        })
        .collect())
}

/// The newest `limit` events, optionally only those with a delivery in `state`.
pub fn list(
    client: &mut impl GenericClient,
    state: Option<State>,
    limit: i64,
) -> Result<Vec<EventSummary>, DbError> {
    let filter = EventFilter {
        state,
        ..EventFilter::default()
    };
    list_filtered(client, &filter, limit)
}

/// Every namespace that has events, live channels or live rules, sorted.
/// Events' namespaces are found by a skip scan of their index (one probe
/// per namespace), not by reading every event.
pub fn namespaces(client: &mut impl GenericClient) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "WITH RECURSIVE ns AS (
                 (SELECT namespace FROM event ORDER BY namespace LIMIT 1)
                 UNION ALL
                 SELECT (SELECT e.namespace FROM event e WHERE e.namespace > ns.namespace
                         ORDER BY e.namespace LIMIT 1)
                 FROM ns WHERE ns.namespace IS NOT NULL
             )
             SELECT namespace FROM ns WHERE namespace IS NOT NULL
             UNION SELECT namespace FROM channel WHERE deleted_at IS NULL
             UNION SELECT namespace FROM rule WHERE deleted_at IS NULL
             ORDER BY 1",
            &[],
        )
        .map_err(DbError::query("listing namespaces"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// One event with all its delivery statuses; `None` when unknown.
pub fn show(
    client: &mut impl GenericClient,
    id: Uuid,
) -> Result<Option<(Event, Vec<DeliveryStatus>)>, DbError> {
    let row = client
        .query_opt(
            "SELECT id, namespace, type, rule_id, payload, annotations, created_at
             FROM event WHERE id = $1",
            &[&id],
        )
        .map_err(DbError::query("reading an event"))?;
    let Some(r) = row else { return Ok(None) };
    let event = Event {
        id: r.get(0),
        namespace: r.get(1),
        event_type: r.get(2),
        rule_id: r.get(3),
        payload: r.get(4),
        annotations: r.get(5),
        created_at: r.get(6),
    };
    let statuses = statuses::of_event(client, id)?;
    Ok(Some((event, statuses)))
}
