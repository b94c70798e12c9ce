//! The due query: one page of deliveries (event x channel) that are
//! unfinished and due by a sweep's cut-off, in keyset order
//! `(event_created_at, event_id, channel_id)`, each loaded with everything a
//! worker needs to deliver it (the event, the status, the channel, the rule
//! assignment) so that workers read nothing before they send.
//!
//! Keyset, not offset: statuses that finish while a sweep runs drop out of
//! the partial index, and an offset would then skip deliveries that had not
//! been handed out yet; a cursor on the index's columns cannot.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use postgres::{GenericClient, Statement};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::statuses::parse_state;
use super::DbError;
use crate::state::{State, StatusView};

/// Where the previous page ended: the key of the last delivery looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `event_created_at` of that delivery.
    pub created_at: DateTime<Utc>,
    /// Its event id.
    pub event_id: Uuid,
    /// Its channel id.
    pub channel_id: Uuid,
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

/// The status part of a due delivery.
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

/// The event part of a due delivery, shared by the sibling deliveries of one
/// event read in the same page.
#[derive(Debug)]
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
    /// The webhook body, built by the first worker that sends this event.
    pub body: OnceLock<Vec<u8>>,
}

/// One due delivery: an event to one channel, the unit the leader hands out.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event (shared with its sibling deliveries).
    pub event: Arc<DueEvent>,
    /// The status and its channel.
    pub status: DueStatus,
}

impl Delivery {
    /// The keyset position of this delivery.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.event.created_at,
            event_id: self.event.id,
            channel_id: self.status.target.id,
        }
    }
}

/// The due page query with its page size: `$1` cut-off, `$2`/`$3`/`$4`
/// cursor (public so that the benchmark can EXPLAIN exactly this text).
///
/// The page size is part of the text, not a parameter: with `LIMIT $n` the
/// planner's generic plan has to guess the row count and picks a hash join
/// over the whole event table (13 ms a page with 20,000 events), so every
/// execution would be planned afresh (about 1 ms, more than running it).
/// With the number in the text the generic plan is the good one and
/// PostgreSQL switches to it after five executions (planning 0.02 ms).
pub fn page_sql(limit: u32) -> String {
    PAGE_SQL_TEMPLATE
        .replace("{limit}", &limit.to_string())
        .replace("{shards}", "")
}

/// [`page_sql`] for the shards `$5` (the count) and `$6` (an `int4[]`)
/// only (`reconciler.shards` > 1; `db::shards`).
pub fn page_sql_sharded(limit: u32) -> String {
    PAGE_SQL_TEMPLATE
        .replace("{limit}", &limit.to_string())
        .replace(
            "{shards}",
            &format!("\n      AND {}", super::shards::shard_filter(5, 6)),
        )
}

const PAGE_SQL_TEMPLATE: &str = "
WITH page AS (
    SELECT id, event_created_at, event_id, channel_id FROM delivery_status
    WHERE state IN ('PENDING', 'SENDING', 'RESENDING') AND next_attempt_at <= $1
      AND (event_created_at, event_id, channel_id) > ($2, $3, $4){shards}
    ORDER BY event_created_at, event_id, channel_id
    LIMIT {limit}
)
SELECT e.id, e.namespace, e.type, e.created_at, e.payload::text,
       ds.id, ds.version, ds.state, ds.next_attempt_at, ds.clock_started_at, ds.round_attempts,
       c.id, c.url, c.headers::text, c.signing_secret, c.disabled, c.deleted_at IS NOT NULL,
       EXISTS (SELECT 1 FROM rule_channel rc WHERE rc.rule_id = e.rule_id AND rc.channel_id = c.id),
       CASE WHEN c.previous_secret_until > now() THEN c.previous_secret END,
       CASE WHEN c.previous_secret_until > now() THEN c.previous_secret_until END
FROM page p
JOIN delivery_status ds ON ds.id = p.id
JOIN event e ON e.id = p.event_id
JOIN channel c ON c.id = p.channel_id
ORDER BY p.event_created_at, p.event_id, p.channel_id";

/// The first cursor: before every delivery.
pub fn start_cursor() -> Cursor {
    Cursor {
        // Far before any event; PostgreSQL's range starts at 4713 BC.
        created_at: DateTime::<Utc>::from_timestamp(-60_000_000_000, 0).unwrap_or_default(),
        event_id: Uuid::nil(),
        channel_id: Uuid::nil(),
    }
}

/// The due query, prepared once per connection (so it is parsed once and
/// its plan can be reused across pages).
pub struct Pager {
    statement: Statement,
    sharded: bool,
}

impl Pager {
    /// Prepares the due query for pages of `limit` deliveries on `client`.
    pub fn prepare(client: &mut impl GenericClient, limit: u32) -> Result<Pager, DbError> {
        Pager::prepare_text(client, &page_sql(limit), false)
    }

    /// Prepares [`page_sql_sharded`] (pages read with [`Pager::page_in`]).
    pub fn prepare_sharded(client: &mut impl GenericClient, limit: u32) -> Result<Pager, DbError> {
        Pager::prepare_text(client, &page_sql_sharded(limit), true)
    }

    fn prepare_text(
        client: &mut impl GenericClient,
        sql: &str,
        sharded: bool,
    ) -> Result<Pager, DbError> {
        let statement = client
            .prepare(sql)
            .map_err(DbError::query("preparing the due query"))?;
        Ok(Pager { statement, sharded })
    }

    /// Reads the page of due deliveries after `cursor`, on the connection
    /// that prepared it.
    pub fn page(
        &self,
        client: &mut impl GenericClient,
        cutoff: DateTime<Utc>,
        cursor: Cursor,
    ) -> Result<Vec<Delivery>, DbError> {
        self.page_in(client, cutoff, cursor, None)
    }

    /// [`Pager::page`] of the shards `shards` of `k` when prepared sharded
    /// (`shards` is then required; an empty list reads nothing).
    pub fn page_in(
        &self,
        client: &mut impl GenericClient,
        cutoff: DateTime<Utc>,
        cursor: Cursor,
        shards: Option<(u32, &[i32])>,
    ) -> Result<Vec<Delivery>, DbError> {
        let c = (
            &cutoff,
            &cursor.created_at,
            &cursor.event_id,
            &cursor.channel_id,
        );
        let rows = match (self.sharded, shards) {
            (false, _) => client.query(&self.statement, &[c.0, c.1, c.2, c.3]),
            (true, Some((_, []))) | (true, None) => return Ok(Vec::new()),
            (true, Some((k, list))) => {
                let k = k as i32;
                client.query(&self.statement, &[c.0, c.1, c.2, c.3, &k, &list])
            }
        }
        .map_err(DbError::query("reading due deliveries"))?;
        deliveries_from_rows(&rows)
    }
}

/// Turns the rows of one page into deliveries; sibling deliveries of one
/// event share its [`DueEvent`].
fn deliveries_from_rows(rows: &[postgres::Row]) -> Result<Vec<Delivery>, DbError> {
    let mut events: HashMap<Uuid, Arc<DueEvent>> = HashMap::new();
    let mut deliveries = Vec::with_capacity(rows.len());
    for r in rows {
        let id: Uuid = r.get(0);
        let event = match events.get(&id) {
            Some(e) => Arc::clone(e),
            None => {
                let payload: String = r.get(4);
                let payload = RawValue::from_string(payload).map_err(|e| DbError::BadRow {
                    table: "event",
                    problem: format!("payload of event {id} is not JSON: {e}"),
                })?;
                let event = Arc::new(DueEvent {
                    id,
                    namespace: r.get(1),
                    event_type: r.get(2),
                    created_at: r.get(3),
                    payload,
                    body: OnceLock::new(),
                });
                events.insert(id, Arc::clone(&event));
                event
            }
        };
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
        deliveries.push(Delivery { event, status });
    }
    Ok(deliveries)
}

/// Number of unfinished deliveries due by `cutoff` (the progress total and
/// the `deliveries due` metric).
pub fn count_due(client: &mut impl GenericClient, cutoff: DateTime<Utc>) -> Result<i64, DbError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM delivery_status
             WHERE state IN ('PENDING', 'SENDING', 'RESENDING') AND next_attempt_at <= $1",
            &[&cutoff],
        )
        .map_err(DbError::query("counting due deliveries"))?;
    Ok(row.get(0))
}

/// When the earliest unfinished delivery that is not due by `cutoff` falls
/// due (the leader's retry timer after a takeover and on each interval
/// tick; between them it learns retry times from its own workers).
pub fn next_due_after(
    client: &mut impl GenericClient,
    cutoff: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, DbError> {
    let row = client
        .query_one(
            "SELECT min(next_attempt_at) FROM delivery_status
             WHERE state IN ('PENDING', 'SENDING', 'RESENDING') AND next_attempt_at > $1",
            &[&cutoff],
        )
        .map_err(DbError::query("finding the next due delivery"))?;
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
