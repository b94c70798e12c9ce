//! The event types of a namespace: those seen in its events (with how many
//! are stored and when the last one was written), those its live rules
//! subscribe to, and those described in the `event_type` table (migration
//! 0012). What a valid type or description is, is `ops::event_types`'s
//! business; this module only reads and writes rows.

use chrono::{DateTime, Utc};
use postgres::GenericClient;

use super::DbError;

/// One event type of a namespace.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventType {
    /// The type, as producers write it (`invoice.paid`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// What it means, for customers; `None` until described.
    pub description: Option<String>,
    /// How many of its events are stored (retention prunes old ones).
    pub count: i64,
    /// When the newest of them was written; `None` when none is stored.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// How many live rules (subscriptions) of the namespace match it.
    pub rules: i64,
}

/// Every event type of `namespace` (seen, subscribed to or described),
/// sorted by type.
///
/// The counts come from the namespace's stored events, so the cost grows
/// with their number (no index of its own: see docs/api.md).
pub fn list(client: &mut impl GenericClient, namespace: &str) -> Result<Vec<EventType>, DbError> {
    let rows = client
        .query(
            "WITH seen AS (
                 SELECT type, count(*) AS n, max(created_at) AS last
                 FROM event WHERE namespace = $1 GROUP BY type
             ), subscribed AS (
                 SELECT event_type AS type, count(*) AS n
                 FROM rule WHERE namespace = $1 AND deleted_at IS NULL GROUP BY event_type
             ), described AS (
                 SELECT type, description FROM event_type WHERE namespace = $1
             )
             SELECT t.type, d.description, coalesce(s.n, 0), s.last, coalesce(r.n, 0)
             FROM (SELECT type FROM seen UNION SELECT type FROM subscribed
                   UNION SELECT type FROM described) t
             LEFT JOIN seen s ON s.type = t.type
             LEFT JOIN subscribed r ON r.type = t.type
             LEFT JOIN described d ON d.type = t.type
             ORDER BY t.type",
            &[&namespace],
        )
        .map_err(DbError::query("listing event types"))?;
    Ok(rows
        .iter()
        .map(|r| EventType {
            event_type: r.get(0),
            description: r.get(1),
            count: r.get(2),
            last_seen_at: r.get(3),
            rules: r.get(4),
        })
        .collect())
}

/// One event type of `namespace`, as [`list`] shows it, whether or not it
/// was ever seen (a type nobody wrote, subscribed to or described has
/// count 0 and no description).
pub fn get(
    client: &mut impl GenericClient,
    namespace: &str,
    event_type: &str,
) -> Result<EventType, DbError> {
    let row = client
        .query_one(
            "SELECT (SELECT description FROM event_type WHERE namespace = $1 AND type = $2),
                    (SELECT count(*) FROM event WHERE namespace = $1 AND type = $2),
                    (SELECT max(created_at) FROM event WHERE namespace = $1 AND type = $2),
                    (SELECT count(*) FROM rule
                     WHERE namespace = $1 AND event_type = $2 AND deleted_at IS NULL)",
            &[&namespace, &event_type],
        )
        .map_err(DbError::query("reading an event type"))?;
    Ok(EventType {
        event_type: event_type.to_string(),
        description: row.get(0),
        count: row.get(1),
        last_seen_at: row.get(2),
        rules: row.get(3),
    })
}

/// Sets (or, with `None`, removes) the description of `event_type` in
/// `namespace`.
pub fn describe(
    client: &mut impl GenericClient,
    namespace: &str,
    event_type: &str,
    description: Option<&str>,
) -> Result<(), DbError> {
    match description {
        Some(text) => client.execute(
            "INSERT INTO event_type (namespace, type, description) VALUES ($1, $2, $3)
             ON CONFLICT (namespace, type)
             DO UPDATE SET description = excluded.description, updated_at = now()",
            &[&namespace, &event_type, &text],
        ),
        None => client.execute(
            "DELETE FROM event_type WHERE namespace = $1 AND type = $2",
            &[&namespace, &event_type],
        ),
    }
    .map_err(DbError::query("describing an event type"))?;
    Ok(())
}
