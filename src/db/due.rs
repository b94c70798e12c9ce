//! The due query: one page of events that have unfinished deliveries due by
//! the pass's cut-off, in keyset order `(created_at, id)`, each loaded with
//! everything a worker needs to deliver it (its unfinished statuses and their
//! channels, the rule assignment) so that workers read nothing before they
//! send.
//!
//! Keyset, not offset: statuses that finish while the pass runs drop out of
//! the partial index, and an offset would then skip events that had not been
//! handed out yet; a cursor on `(event_created_at, event_id)` cannot.

use chrono::{DateTime, Utc};
use postgres::{GenericClient, Statement};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::statuses::parse_state;
use super::DbError;
use crate::state::{State, StatusView};

/// Where the previous page ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` of the last event handed out.
    pub created_at: DateTime<Utc>,
    /// Its id.
    pub id: Uuid,
}

/// A channel as a worker needs it. `Debug` leaves the signing secret out.
#[derive(Clone)]
pub struct Target {
    /// Channel id.
    pub id: Uuid,
    /// Endpoint URL (not yet validated).
    pub url: String,
    /// Custom headers as stored (JSON text; validated by the worker).
    pub headers: String,
    /// Signing secret (not yet validated).
    pub signing_secret: String,
    /// The secret before the last rotation, while its overlap lasts.
    pub previous_secret: Option<String>,
    /// When the previous secret's overlap ends.
    pub previous_until: Option<DateTime<Utc>>,
    /// Disabled.
    pub disabled: bool,
    /// Soft-deleted.
    pub deleted: bool,
    /// Still assigned to the event's rule.
    pub assigned: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("headers", &self.headers)
            .field("signing_secret", &"<redacted>")
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("previous_until", &self.previous_until)
            .field("disabled", &self.disabled)
            .field("deleted", &self.deleted)
            .field("assigned", &self.assigned)
            .finish()
    }
}

/// One unfinished delivery of a due event.
#[derive(Debug, Clone)]
pub struct DueStatus {
    /// Status id.
    pub id: Uuid,
    /// Optimistic concurrency version read with the page.
    pub version: i64,
    /// What the state machine needs.
    pub view: StatusView,
    /// The channel.
    pub target: Target,
}

/// A due event with its unfinished deliveries.
#[derive(Debug, Clone)]
pub struct DueEvent {
    /// Event id.
    pub id: Uuid,
    /// Namespace.
    pub namespace: String,
    /// Event type.
    pub event_type: String,
    /// Created (the webhook's `timestamp`).
    pub created_at: DateTime<Utc>,
    /// The payload, as JSON text (sent verbatim as `data`).
    pub payload: Box<RawValue>,
    /// Its unfinished deliveries (some may not be due yet).
    pub statuses: Vec<DueStatus>,
}

impl DueEvent {
    /// The keyset position of this event.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// The due page query with its page size: `$1` cut-off, `$2`/`$3` cursor
/// (public so that the benchmark can EXPLAIN exactly this text).
///
/// The page size is part of the text, not a parameter: with `LIMIT $n` the
/// planner's generic plan has to guess the row count and picks a hash join
/// over the whole event table (13 ms a page with 20,000 events), so every
/// execution would be planned afresh (about 1 ms, more than running it).
/// With the number in the text the generic plan is the good one and
/// PostgreSQL switches to it after five executions (planning 0.02 ms).
pub fn page_sql(limit: u32) -> String {
    PAGE_SQL_TEMPLATE.replace("{limit}", &limit.to_string())
}

const PAGE_SQL_TEMPLATE: &str = "
WITH page AS (
    SELECT DISTINCT event_created_at, event_id FROM delivery_status
    WHERE state IN ('PENDING', 'SENDING', 'RESENDING') AND next_attempt_at <= $1
      AND (event_created_at, event_id) > ($2, $3)
    ORDER BY event_created_at, event_id
    LIMIT {limit}
)
SELECT e.id, e.namespace, e.type, e.created_at, e.payload::text,
       ds.id, ds.version, ds.state, ds.next_attempt_at, ds.clock_started_at, ds.round_attempts,
       c.id, c.url, c.headers::text, c.signing_secret, c.disabled, c.deleted_at IS NOT NULL,
       EXISTS (SELECT 1 FROM rule_channel rc WHERE rc.rule_id = e.rule_id AND rc.channel_id = c.id),
       c.previous_secret, c.previous_secret_until
FROM page p
JOIN event e ON e.id = p.event_id
JOIN delivery_status ds ON ds.event_id = e.id AND ds.state IN ('PENDING', 'SENDING', 'RESENDING')
JOIN channel c ON c.id = ds.channel_id
ORDER BY e.created_at, e.id, ds.channel_id";

/// The first cursor: before every event.
pub fn start_cursor() -> Cursor {
    Cursor {
        // Far before any event; PostgreSQL's range starts at 4713 BC.
        created_at: DateTime::<Utc>::from_timestamp(-60_000_000_000, 0).unwrap_or_default(),
        id: Uuid::nil(),
    }
}

/// The due query, prepared once per pass on the lock connection (so it is
/// parsed once and its plan can be reused across pages).
pub struct Pager {
    statement: Statement,
}

impl Pager {
    /// Prepares the due query for pages of `limit` events on `client`.
    pub fn prepare(client: &mut impl GenericClient, limit: u32) -> Result<Pager, DbError> {
        let statement = client
            .prepare(&page_sql(limit))
            .map_err(DbError::query("preparing the due query"))?;
        Ok(Pager { statement })
    }

    /// Reads the page of due events after `cursor`, on the connection that
    /// prepared it.
    pub fn page(
        &self,
        client: &mut impl GenericClient,
        cutoff: DateTime<Utc>,
        cursor: Cursor,
    ) -> Result<Vec<DueEvent>, DbError> {
        let rows = client
            .query(&self.statement, &[&cutoff, &cursor.created_at, &cursor.id])
            .map_err(DbError::query("reading due events"))?;
        events_from_rows(&rows)
    }
}

/// Groups the rows of one page into events with their statuses.
fn events_from_rows(rows: &[postgres::Row]) -> Result<Vec<DueEvent>, DbError> {
    let mut events: Vec<DueEvent> = Vec::new();
    for r in rows {
        let id: Uuid = r.get(0);
        if events.last().is_none_or(|e| e.id != id) {
            let payload: String = r.get(4);
            let payload = RawValue::from_string(payload).map_err(|e| DbError::BadRow {
                table: "event",
                problem: format!("payload of event {id} is not JSON: {e}"),
            })?;
            events.push(DueEvent {
                id,
                namespace: r.get(1),
                event_type: r.get(2),
                created_at: r.get(3),
                payload,
                statuses: Vec::new(),
            });
        }
        let state: State = parse_state(r.get(7))?;
        let round_attempts: i32 = r.get(10);
        let status = DueStatus {
            id: r.get(5),
            version: r.get(6),
            view: StatusView {
                state,
                next_attempt_at: r.get(8),
                clock_started_at: r.get(9),
                round_attempts: round_attempts.max(0) as u32,
            },
            target: Target {
                id: r.get(11),
                url: r.get(12),
                headers: r.get(13),
                signing_secret: r.get(14),
                disabled: r.get(15),
                deleted: r.get(16),
                assigned: r.get(17),
                previous_secret: r.get(18),
                previous_until: r.get(19),
            },
        };
        if let Some(e) = events.last_mut() {
            e.statuses.push(status);
        }
    }
    Ok(events)
}

/// Number of unfinished statuses due by `cutoff` (the progress total and the
/// `events due` metric).
pub fn count_due(client: &mut impl GenericClient, cutoff: DateTime<Utc>) -> Result<i64, DbError> {
    let row = client
        .query_one(
            "SELECT count(DISTINCT event_id) FROM delivery_status
             WHERE state IN ('PENDING', 'SENDING', 'RESENDING') AND next_attempt_at <= $1",
            &[&cutoff],
        )
        .map_err(DbError::query("counting due events"))?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_target_hides_the_secret() {
        let t = Target {
            id: Uuid::nil(),
            url: "http://x/".into(),
            headers: "{}".into(),
            signing_secret: "whsec_c2VjcmV0c2VjcmV0c2VjcmV0".into(),
            previous_secret: Some("whsec_b2xkb2xkb2xkb2xk".into()),
            previous_until: None,
            disabled: false,
            deleted: false,
            assigned: true,
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(!shown.contains("b2xk"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
