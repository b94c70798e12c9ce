//! The `event` table: enqueueing through the producer function, listing and
//! showing events with their delivery statuses.

use chrono::{DateTime, Utc};
use postgres::GenericClient;
use uuid::Uuid;

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

/// Enqueues through `enqueue_event` (the producer contract); returns the new
/// event ids, one per matching active rule.
pub fn emit(
    client: &mut impl GenericClient,
    namespace: &str,
    event_type: &str,
    payload: &serde_json::Value,
) -> Result<Vec<Uuid>, DbError> {
    let rows = client
        .query(
            "SELECT enqueue_event($1, $2, $3, '{}'::jsonb)",
            &[&namespace, &event_type, payload],
        )
        .map_err(DbError::query("enqueueing an event"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The newest `limit` events, optionally only those with a delivery in `state`.
pub fn list(
    client: &mut impl GenericClient,
    state: Option<State>,
    limit: i64,
) -> Result<Vec<EventSummary>, DbError> {
    let state = state.map(|s| s.as_str());
    let rows = client
        .query(
            "SELECT e.id, e.namespace, e.type, e.created_at,
                    coalesce(array_agg(ds.state ORDER BY ds.channel_id)
                             FILTER (WHERE ds.id IS NOT NULL), '{}')
             FROM event e LEFT JOIN delivery_status ds ON ds.event_id = e.id
             WHERE $1::text IS NULL
                OR EXISTS (SELECT 1 FROM delivery_status x WHERE x.event_id = e.id AND x.state = $1)
             GROUP BY e.id
             ORDER BY e.created_at DESC, e.id DESC
             LIMIT $2",
            &[&state, &limit],
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
