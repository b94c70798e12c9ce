//! The `rule` table and its channel assignment: which channels get the
//! events of which type in a namespace.

use chrono::{DateTime, Utc};
use postgres::GenericClient;
use uuid::Uuid;

use super::DbError;

/// A rule as stored, with its assigned channels.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rule {
    /// Id.
    pub id: Uuid,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The event type it matches.
    pub event_type: String,
    /// Disabled rules match nothing.
    pub disabled: bool,
    /// Assigned channel ids.
    pub channels: Vec<Uuid>,
    /// The jsonpath predicate an event's payload must meet, if any.
    pub filter: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// Inserts a rule assigned to `channels` (one transaction); returns its id.
/// `filter` must have passed [`check_filter`].
pub fn create(
    client: &mut impl GenericClient,
    namespace: &str,
    name: &str,
    event_type: &str,
    channels: &[Uuid],
    filter: Option<&str>,
) -> Result<Uuid, DbError> {
    let mut tx = client
        .transaction()
        .map_err(DbError::query("creating a rule"))?;
    let row = tx
        .query_one(
            "INSERT INTO rule (namespace, name, event_type, filter)
             VALUES ($1, $2, $3, $4::text::jsonpath) RETURNING id",
            &[&namespace, &name, &event_type, &filter],
        )
        .map_err(DbError::query("creating a rule"))?;
    let id: Uuid = row.get(0);
    tx.execute(
        "INSERT INTO rule_channel (rule_id, channel_id)
         SELECT $1, c FROM unnest($2::uuid[]) AS c ON CONFLICT DO NOTHING",
        &[&id, &channels],
    )
    .map_err(DbError::query("assigning channels to a rule"))?;
    tx.commit().map_err(DbError::query("creating a rule"))?;
    Ok(id)
}

/// Lists live rules, optionally of one namespace.
pub fn list(
    client: &mut impl GenericClient,
    namespace: Option<&str>,
) -> Result<Vec<Rule>, DbError> {
    list_after(client, namespace, None, None)
}

/// The query of every rule read: live rules with their channels; `$1`
/// namespace or NULL, `$2`/`$3` keyset (created_at, id) or NULL, `$4`
/// limit or NULL, `$5` one id or NULL.
const SELECT_SQL: &str = "SELECT r.id, r.namespace, r.name, r.event_type, r.disabled,
        coalesce(array_agg(rc.channel_id ORDER BY rc.channel_id)
                 FILTER (WHERE rc.channel_id IS NOT NULL), '{}'),
        r.created_at, r.updated_at, r.filter::text
 FROM rule r LEFT JOIN rule_channel rc ON rc.rule_id = r.id
 WHERE r.deleted_at IS NULL AND ($1::text IS NULL OR r.namespace = $1)
   AND ($2::timestamptz IS NULL OR (r.created_at, r.id) > ($2, $3::uuid))
   AND ($5::uuid IS NULL OR r.id = $5)
 GROUP BY r.id
 ORDER BY r.namespace, r.created_at, r.id
 LIMIT $4";

fn query(
    client: &mut impl GenericClient,
    namespace: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: Option<i64>,
    id: Option<Uuid>,
) -> Result<Vec<Rule>, DbError> {
    let (after_at, after_id) = after.unzip();
    let rows = client
        .query(SELECT_SQL, &[&namespace, &after_at, &after_id, &limit, &id])
        .map_err(DbError::query("listing rules"))?;
    Ok(rows
        .iter()
        .map(|r| Rule {
            id: r.get(0),
            namespace: r.get(1),
            name: r.get(2),
            event_type: r.get(3),
            disabled: r.get(4),
            channels: r.get(5),
            created_at: r.get(6),
            updated_at: r.get(7),
            filter: r.get(8),
        })
        .collect())
}

/// PostgreSQL's word on a filter: `Ok(None)` when it parses as a jsonpath,
/// `Ok(Some(message))` with the parser's message when it does not.
pub fn check_filter(
    client: &mut impl GenericClient,
    filter: &str,
) -> Result<Option<String>, DbError> {
    match client.query_one("SELECT $1::text::jsonpath::text", &[&filter]) {
        Ok(_) => Ok(None),
        Err(e) => match e.as_db_error() {
            Some(db)
                if db.code().code().starts_with("42") || db.code().code().starts_with("22") =>
            {
                Ok(Some(db.message().to_string()))
            }
            _ => Err(DbError::Query {
                what: "checking a filter",
                source: e,
            }),
        },
    }
}

/// What a rule update changes.
#[derive(Debug, Default)]
pub struct RuleChange<'a> {
    /// Channels to assign.
    pub add: &'a [Uuid],
    /// Channels to unassign (their deliveries still due fail as unassigned).
    pub remove: &'a [Uuid],
    /// `Some(None)` removes the filter, `Some(Some(f))` sets it (checked
    /// with [`check_filter`]), `None` keeps it.
    pub filter: Option<Option<&'a str>>,
}

/// Changes a live rule in one transaction; false when no live rule has
/// that id.
pub fn update(
    client: &mut impl GenericClient,
    id: Uuid,
    change: &RuleChange<'_>,
) -> Result<bool, DbError> {
    let mut tx = client
        .transaction()
        .map_err(DbError::query("changing a rule"))?;
    let (set_filter, filter) = match change.filter {
        None => (false, None),
        Some(f) => (true, f),
    };
    let n = tx
        .execute(
            "UPDATE rule SET updated_at = now(),
                 filter = CASE WHEN $2 THEN $3::text::jsonpath ELSE filter END
             WHERE id = $1 AND deleted_at IS NULL",
            &[&id, &set_filter, &filter],
        )
        .map_err(DbError::query("changing a rule"))?;
    if n == 0 {
        return Ok(false);
    }
    tx.execute(
        "DELETE FROM rule_channel WHERE rule_id = $1 AND channel_id = ANY($2)",
        &[&id, &change.remove],
    )
    .map_err(DbError::query("changing a rule's channels"))?;
    tx.execute(
        "INSERT INTO rule_channel (rule_id, channel_id)
         SELECT $1, c FROM unnest($2::uuid[]) AS c ON CONFLICT DO NOTHING",
        &[&id, &change.add],
    )
    .map_err(DbError::query("changing a rule's channels"))?;
    tx.commit().map_err(DbError::query("changing a rule"))?;
    Ok(true)
}

/// Lists live rules in (namespace, created_at, id) order, optionally of one
/// namespace, after `after` = (created_at, id) within it, at most `limit`.
pub fn list_after(
    client: &mut impl GenericClient,
    namespace: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: Option<i64>,
) -> Result<Vec<Rule>, DbError> {
    query(client, namespace, after, limit, None)
}

/// One live rule; `None` when there is none with that id.
pub fn get(client: &mut impl GenericClient, id: Uuid) -> Result<Option<Rule>, DbError> {
    Ok(query(client, None, None, Some(1), Some(id))?.pop())
}

/// Soft-deletes a rule: it matches no new event from now on; deliveries
/// already enqueued for its events go on (its channel assignment is kept).
/// False when no live rule has that id.
pub fn delete(client: &mut impl GenericClient, id: Uuid) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE rule SET deleted_at = now(), updated_at = now()
             WHERE id = $1 AND deleted_at IS NULL",
            &[&id],
        )
        .map_err(DbError::query("deleting a rule"))?;
    Ok(n == 1)
}
