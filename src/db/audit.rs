//! The `audit` table: one row per change made through either door (the API
//! or the command line), written by the caller inside the change's own
//! transaction, so a change and its row commit or roll back together. Which
//! changes are recorded, and by whom, is `ops::audit`'s business.

use chrono::{DateTime, Utc};
use postgres::GenericClient;
use uuid::Uuid;

use super::DbError;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// An API token (by id and name; never the token).
    Token {
        /// Its id.
        id: Uuid,
        /// Its name.
        name: String,
    },
    /// The command line, run by this OS user.
    Cli {
        /// The OS user (`$USER`, else `$LOGNAME`, else `unknown`).
        user: String,
    },
}

/// One change to record.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The namespace of the object (`None`: an admin-wide object such as a
    /// token of no namespace).
    pub namespace: Option<&'a str>,
    /// Who.
    pub actor: &'a Actor,
    /// What: the API's operation id (`createChannel`, `revokeToken`, ...).
    pub operation: &'a str,
    /// The kind of object changed (`channel`, `rule`, `event`, `token`,
    /// `secrets`).
    pub object_kind: &'a str,
    /// Its id, when it has one.
    pub object_id: Option<String>,
}

/// A recorded change.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    /// Row id.
    pub id: Uuid,
    /// When (the change's transaction).
    pub at: DateTime<Utc>,
    /// Namespace, if any.
    pub namespace: Option<String>,
    /// Who.
    pub actor: Actor,
    /// What.
    pub operation: String,
    /// The kind of object.
    pub object_kind: String,
    /// Its id.
    pub object_id: Option<String>,
}

/// The `actor_kind`, `actor_id` and `actor_name` columns of `actor`.
pub fn actor_columns(actor: &Actor) -> (&'static str, Option<Uuid>, &str) {
    match actor {
        Actor::Token { id, name } => ("token", Some(*id), name.as_str()),
        Actor::Cli { user } => ("cli", None, user.as_str()),
    }
}

/// Records one change (call it inside the change's transaction).
pub fn record(client: &mut impl GenericClient, entry: &Entry<'_>) -> Result<(), DbError> {
    let (kind, id, name) = actor_columns(entry.actor);
    client
        .execute(
            "INSERT INTO audit (namespace, actor_kind, actor_id, actor_name, operation,
                                object_kind, object_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &entry.namespace,
                &kind,
                &id,
                &name,
                &entry.operation,
                &entry.object_kind,
                &entry.object_id,
            ],
        )
        .map_err(DbError::query("recording the audit trail"))?;
    Ok(())
}

/// A namespace's rows (every row with `None`), newest first, at or after
/// `since`, before `before` = (at, id), at most `limit`.
pub fn list(
    client: &mut impl GenericClient,
    namespace: Option<&str>,
    since: Option<DateTime<Utc>>,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<AuditRow>, DbError> {
    let (before_at, before_id) = before.unzip();
    let rows = client
        .query(
            "SELECT id, at, namespace, actor_kind, actor_id, actor_name, operation,
                    object_kind, object_id
             FROM audit
             WHERE ($1::text IS NULL OR namespace = $1)
               AND ($2::timestamptz IS NULL OR at >= $2)
               AND ($3::timestamptz IS NULL OR (at, id) < ($3, $4::uuid))
             ORDER BY at DESC, id DESC LIMIT $5",
            &[&namespace, &since, &before_at, &before_id, &limit],
        )
        .map_err(DbError::query("reading the audit trail"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let kind: &str = r.get(3);
            let name: String = r.get(5);
            let actor = match (kind, r.get::<_, Option<Uuid>>(4)) {
                ("token", Some(id)) => Actor::Token { id, name },
                _ => Actor::Cli { user: name },
            };
            AuditRow {
                id: r.get(0),
                at: r.get(1),
                namespace: r.get(2),
                actor,
                operation: r.get(6),
                object_kind: r.get(7),
                object_id: r.get(8),
            }
        })
        .collect())
}

/// Removes up to `batch` rows older than `cutoff`; returns how many.
pub fn prune(
    client: &mut impl GenericClient,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<u64, DbError> {
    client
        .execute(
            "DELETE FROM audit WHERE id IN
                 (SELECT id FROM audit WHERE at < $1 ORDER BY at LIMIT $2)",
            &[&cutoff, &batch],
        )
        .map_err(DbError::query("pruning the audit trail"))
}
