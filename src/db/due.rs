//! The due queries: which channels have deliveries (event x channel) that
//! are unfinished and due by a sweep's cut-off, and, channel by channel,
//! their oldest due deliveries in keyset order `(next_attempt_at, id)`, each
//! loaded with everything a worker needs to deliver it (the event, the
//! status, the channel, the rule assignment) so that workers read nothing
//! before they send. Both are ranges of one partial index led by
//! `channel_id` (migration 0004), so finding the other channels' work never
//! scans one channel's backlog (docs/benchmarks.md "Fair scheduling").
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

/// Where a channel's previous read ended: the key of the last delivery
/// read, in the channel's order `(next_attempt_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `next_attempt_at` of that delivery.
    pub due_at: DateTime<Utc>,
    /// Its status id.
    pub status_id: Uuid,
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
    /// When the channel's current run of failed attempts began, if it is
    /// in one (auto-disable).
    pub failing_since: Option<DateTime<Utc>>,
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
            .field("failing_since", &self.failing_since)
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
    /// The position of this delivery in its channel's order.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            due_at: self
                .status
                .view
                .next_attempt_at
                .unwrap_or_else(|| start_cursor().due_at),
            status_id: self.status.id,
        }
    }

    /// Its channel.
    pub fn channel_id(&self) -> Uuid {
        self.status.target.id
    }
}

/// The channels with deliveries due by `$1`, in channel id order: a
/// skip-scan of `delivery_status_channel_due`, one index descent per channel
/// with unfinished deliveries, however large its backlog. The first entry of
/// a channel in that index is its earliest `next_attempt_at`, so one descent
/// also tells whether it has anything due, and `$1` is compared only outside
/// the scan: no step has a condition another index could serve. (Asking
/// "is any due" in a second probe let the planner answer it for all channels
/// at once, with a hash join over every due row or a walk of the plain
/// `channel_id` index: tests/due_plans.rs.) Each step orders by the whole key
/// of the index, so that only it can serve the step. With its `{shards}`
/// slot: see [`channels_sql`].
const CHANNELS_SQL_TEMPLATE: &str = "
WITH RECURSIVE ch(id, first_at) AS (
    (SELECT channel_id, next_attempt_at FROM delivery_status
     WHERE state IN ('PENDING', 'SENDING', 'RESENDING')
     ORDER BY channel_id, next_attempt_at, id LIMIT 1)
  UNION ALL
    SELECT n.channel_id, n.next_attempt_at
    FROM ch CROSS JOIN LATERAL (
        SELECT d.channel_id, d.next_attempt_at FROM delivery_status d
        WHERE d.state IN ('PENDING', 'SENDING', 'RESENDING') AND d.channel_id > ch.id
        ORDER BY d.channel_id, d.next_attempt_at, d.id LIMIT 1) n
)
SELECT ch.id FROM ch
WHERE ch.first_at <= $1{shards}
ORDER BY ch.id";

/// The channels query: all channels, or with `reconciler.shards` > 1 only
/// those of the shards `$2` (the count) and `$3` (an `int4[]`; `db::shards`).
/// The shard filter is on the channels, so the reads that follow need none.
/// Public so that the benchmark can EXPLAIN exactly this text.
pub fn channels_sql(sharded: bool) -> String {
    let filter = if sharded {
        format!("\n  AND {}", shard_filter_of("ch.id", 2, 3))
    } else {
        String::new()
    };
    CHANNELS_SQL_TEMPLATE.replace("{shards}", &filter)
}

/// The read of due deliveries with the number read per channel: `$1`
/// cut-off, then per channel (`$2`) the cursor after which to read (`$3`,
/// `$4`); for each, its oldest due deliveries (`next_attempt_at`, then id),
/// each a range of `delivery_status_channel_due`. Public so that the
/// benchmark can EXPLAIN exactly this text.
///
/// Every step is a `LATERAL` subquery with a `LIMIT`, which PostgreSQL cannot
/// flatten into a join: the channel, the range of the index and each event
/// are looked up per lane and per row, by key. As a plain join, a stale or
/// small-table estimate made it hash-join a sequential scan of the whole
/// event table, and the index on `next_attempt_at` is kept out by its
/// predicate (migration 0006); tests/due_plans.rs checks the plans.
///
/// The number is part of the text, not a parameter: with `LIMIT $n` the
/// planner's generic plan has to guess the row count, so every execution
/// would be planned afresh. With the number in the text the generic plan is
/// the good one and PostgreSQL switches to it after five executions.
pub fn read_sql(per_channel: u32) -> String {
    let lanes =
        "unnest($2::uuid[], $3::timestamptz[], $4::uuid[]) AS cur(channel_id, after_at, after_id)";
    format!(
        "{}{}{READ_EVENT}\nORDER BY cur.channel_id, d.next_attempt_at, d.id",
        READ_SELECT.replace("{lanes}", lanes),
        READ_RANGE.replace("{limit}", &per_channel.to_string())
    )
}

/// What both reads select, and the channel's row (`{lanes}`: the lanes'
/// relation, with a `channel_id` column).
const READ_SELECT: &str = "
SELECT e.id, e.namespace, e.type, e.created_at, e.payload::text,
       d.id, d.version, d.state, d.next_attempt_at, d.clock_started_at, d.round_attempts,
       c.id, c.url, c.headers::text, c.signing_secret, c.disabled, c.deleted_at IS NOT NULL,
       (e.rule_id IS NULL
        OR EXISTS (SELECT 1 FROM rule_channel rc WHERE rc.rule_id = e.rule_id AND rc.channel_id = c.id)),
       CASE WHEN c.previous_secret_until > now() THEN c.previous_secret END,
       CASE WHEN c.previous_secret_until > now() THEN c.previous_secret_until END,
       c.failing_since
FROM {lanes}
CROSS JOIN LATERAL (
    SELECT id, url, headers, signing_secret, disabled, deleted_at,
           previous_secret, previous_secret_until, failing_since
    FROM channel WHERE id = cur.channel_id LIMIT 1
) c";

/// The event of a delivery `d`, looked up by key.
const READ_EVENT: &str = "
CROSS JOIN LATERAL (
    SELECT id, namespace, type, created_at, payload, rule_id FROM event WHERE id = d.event_id LIMIT 1
) e";

/// The read of ordered channels' heads: `$1` cut-off, `$2` the channels,
/// `$3` and `$4` the leader's order horizon ([`Horizon`]: a transaction id
/// as text and the time before it was assigned); for each channel, its
/// oldest unfinished delivery in enqueue order (the event's creation time,
/// then its id: `delivery_status_channel_order`, migration 0009), returned
/// only when it is due by the cut-off, with whether it is cleared to go:
/// it was created before the horizon was taken and every transaction up to
/// the horizon's has ended (the snapshot's `xmin` is above it). Then no
/// transaction that may still commit an event stamped before the head is
/// running: `enqueue_event` takes its transaction's id before it stamps the
/// event (migration 0010), so such a transaction has an id below the
/// horizon's. A head that is not cleared is still returned, never skipped
/// for a later one: the channel then waits. A head that is not due (a
/// `SENDING` delivery waiting for its retry) is not returned: the channel
/// then has nothing to hand out, and the ones behind it wait. In no
/// particular order of channels (the leader files them by channel).
pub fn read_heads_sql() -> String {
    let select = READ_SELECT
        .replace("{lanes}", "unnest($2::uuid[]) AS cur(channel_id)")
        .replace(
            "       c.failing_since\n",
            "       c.failing_since,\n       \
             (d.event_created_at < $4 AND pg_snapshot_xmin(pg_current_snapshot()) > $3::text::xid8)\n",
        );
    format!(
        "{select}
CROSS JOIN LATERAL (
    SELECT id, event_id, version, state, next_attempt_at, clock_started_at, round_attempts,
           event_created_at
    FROM delivery_status
    WHERE state IN ('PENDING', 'SENDING', 'RESENDING') AND channel_id = cur.channel_id
    ORDER BY channel_id, event_created_at, event_id
    LIMIT 1
) d{READ_EVENT}
WHERE d.next_attempt_at <= $1"
    )
}

/// The leader's order horizon: a transaction id it took (and committed) on
/// its lock connection, and the database's time before that id was
/// assigned. Every transaction whose id was assigned before `taken_at` has
/// an id below `xid`; once the snapshot's `xmin` is above `xid`, all of
/// them have ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Horizon {
    /// The transaction id (`xid8`) as text.
    pub xid: String,
    /// The start of the transaction that took it (`now()`).
    pub taken_at: DateTime<Utc>,
}

/// Takes a new [`Horizon`] on `client`, in a transaction of its own (one
/// transaction id used and committed; no row written).
pub fn take_horizon(client: &mut impl GenericClient) -> Result<Horizon, DbError> {
    let row = client
        .query_one("SELECT now(), pg_current_xact_id()::text", &[])
        .map_err(DbError::query("taking the ordered channels' horizon"))?;
    Ok(Horizon {
        taken_at: row.get(0),
        xid: row.get(1),
    })
}

/// The per-channel part of [`read_sql`].
const READ_RANGE: &str = "
CROSS JOIN LATERAL (
    SELECT id, event_id, version, state, next_attempt_at, clock_started_at, round_attempts
    FROM delivery_status
    WHERE state IN ('PENDING', 'SENDING', 'RESENDING')
      AND channel_id = cur.channel_id AND next_attempt_at <= $1
      AND (channel_id, next_attempt_at, id) > (cur.channel_id, cur.after_at, cur.after_id)
    ORDER BY channel_id, next_attempt_at, id
    LIMIT {limit}
) d";

/// The first cursor of a channel: before every delivery.
pub fn start_cursor() -> Cursor {
    Cursor {
        // Far before any event; PostgreSQL's range starts at 4713 BC.
        due_at: DateTime::<Utc>::from_timestamp(-60_000_000_000, 0).unwrap_or_default(),
        status_id: Uuid::nil(),
    }
}

/// The due queries, prepared once per connection (so they are parsed once
/// and their plans can be reused).
pub struct Pager {
    channels: Statement,
    read: Statement,
    heads: Statement,
    sharded: bool,
}

impl Pager {
    /// Prepares the due queries for reads of `per_channel` deliveries per
    /// channel on `client`; `sharded`: the channels query takes the shards
    /// led ([`Pager::channels`]).
    pub fn prepare(
        client: &mut impl GenericClient,
        per_channel: u32,
        sharded: bool,
    ) -> Result<Pager, DbError> {
        let channels = client
            .prepare(&channels_sql(sharded))
            .map_err(DbError::query("preparing the due channels query"))?;
        let read = client
            .prepare(&read_sql(per_channel))
            .map_err(DbError::query("preparing the due query"))?;
        let heads = client
            .prepare(&read_heads_sql())
            .map_err(DbError::query("preparing the ordered channels' query"))?;
        Ok(Pager {
            channels,
            read,
            heads,
            sharded,
        })
    }

    /// The channels with deliveries due by `cutoff`, in id order; when
    /// prepared sharded, only those of `shards` (the count and the shards
    /// led; none led reads nothing).
    pub fn channels(
        &self,
        client: &mut impl GenericClient,
        cutoff: DateTime<Utc>,
        shards: Option<(u32, &[i32])>,
    ) -> Result<Vec<Uuid>, DbError> {
        let rows = match (self.sharded, shards) {
            (false, _) => client.query(&self.channels, &[&cutoff]),
            (true, Some((_, []))) | (true, None) => return Ok(Vec::new()),
            (true, Some((k, list))) => {
                let k = k as i32;
                client.query(&self.channels, &[&cutoff, &k, &list])
            }
        }
        .map_err(DbError::query("finding channels with due deliveries"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Reads, for each `(channel, cursor)`, the channel's oldest deliveries
    /// due by `cutoff` after its cursor, on the connection that prepared
    /// it; grouped by channel in the order of `lanes`' ids, oldest first.
    pub fn read(
        &self,
        client: &mut impl GenericClient,
        cutoff: DateTime<Utc>,
        lanes: &[(Uuid, Cursor)],
    ) -> Result<Vec<Delivery>, DbError> {
        let ids: Vec<Uuid> = lanes.iter().map(|l| l.0).collect();
        let after_at: Vec<DateTime<Utc>> = lanes.iter().map(|l| l.1.due_at).collect();
        let after_id: Vec<Uuid> = lanes.iter().map(|l| l.1.status_id).collect();
        let rows = client
            .query(&self.read, &[&cutoff, &ids, &after_at, &after_id])
            .map_err(DbError::query("reading due deliveries"))?;
        learn_keys(client, &rows)?;
        deliveries_from_rows(&rows)
    }

    /// Reads the heads of the ordered channels `ids` that are due by
    /// `cutoff` ([`read_heads_sql`]), at most one per channel, in no
    /// particular order, each with whether it is cleared to go under
    /// `horizon`.
    pub fn read_heads(
        &self,
        client: &mut impl GenericClient,
        cutoff: DateTime<Utc>,
        ids: &[Uuid],
        horizon: &Horizon,
    ) -> Result<Vec<(Delivery, bool)>, DbError> {
        let rows = client
            .query(
                &self.heads,
                &[&cutoff, &ids, &horizon.xid, &horizon.taken_at],
            )
            .map_err(DbError::query("reading ordered channels' heads"))?;
        let cleared: Vec<bool> = rows.iter().map(|r| r.get(21)).collect();
        learn_keys(client, &rows)?;
        Ok(deliveries_from_rows(&rows)?
            .into_iter()
            .zip(cleared)
            .collect())
    }
}

/// Makes sure the keys the channels' sealed values name are known (a
/// rotation's bridges are read only when one is not: a string scan per row
/// otherwise).
fn learn_keys(client: &mut impl GenericClient, rows: &[postgres::Row]) -> Result<(), DbError> {
    let mut texts = Vec::new();
    for r in rows {
        for col in [13, 14, 18] {
            if let Some(text) = r.get::<_, Option<&str>>(col) {
                if text.contains(crate::secrets::PREFIX) {
                    texts.push(text);
                }
            }
        }
    }
    super::secrets::ensure_known(client, texts)
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
                failing_since: r.get(20),
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
            &format!(
                "SELECT count(*) FROM delivery_status
                 WHERE {NEXT_INDEX_FILTER} AND next_attempt_at <= $1"
            ),
            &[&cutoff],
        )
        .map_err(DbError::query("counting due deliveries"))?;
    Ok(row.get(0))
}

/// The text of [`NEXT_INDEX_FILTER`], as a macro so that
/// [`NEXT_DUE_AFTER_SQL`] can be built from it at compile time.
macro_rules! next_index_filter {
    () => {
        "state IN ('PENDING', 'SENDING', 'RESENDING') AND attempt_count >= 0"
    };
}

/// The condition that lets a query use `delivery_status_next`, the index on
/// `next_attempt_at` of the retry timer and the due count: its predicate
/// carries an always-true `attempt_count >= 0` that only these queries
/// repeat, so that the planner never picks it for a channel's read
/// (migration 0006).
pub const NEXT_INDEX_FILTER: &str = next_index_filter!();

/// The retry timer's query (`next_due_after`); public for the plan test.
pub const NEXT_DUE_AFTER_SQL: &str = concat!(
    "SELECT min(next_attempt_at) FROM delivery_status WHERE ",
    next_index_filter!(),
    " AND next_attempt_at > $1"
);

/// When the earliest unfinished delivery that is not due by `cutoff` falls
/// due (the leader's retry timer after a takeover and on each interval
/// tick; between them it learns retry times from its own workers).
pub fn next_due_after(
    client: &mut impl GenericClient,
    cutoff: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, DbError> {
    let row = client
        .query_one(NEXT_DUE_AFTER_SQL, &[&cutoff])
        .map_err(DbError::query("finding the next due delivery"))?;
    Ok(row.get(0))
}

/// The predicate that keeps the channels (the channel id `{column}`) of
/// the shards `$k` (the count) and `$shards` (an `int4[]`), with
/// placeholders for the column and the parameter numbers.
///
/// (The rest of the SQL of shards is `db::shards`; this lives here because
/// the due reads use it and `db::shards` uses this module's index filter.)
const SHARD_FILTER: &str = "channel_shard({column}, ${k}) = ANY(${shards})";

/// [`SHARD_FILTER`] of `delivery_status.channel_id` with its parameters
/// numbered `k` and `shards`.
pub fn shard_filter(k: usize, shards: usize) -> String {
    shard_filter_of("channel_id", k, shards)
}

/// [`SHARD_FILTER`] of the channel id `column`.
pub fn shard_filter_of(column: &str, k: usize, shards: usize) -> String {
    SHARD_FILTER
        .replace("{column}", column)
        .replace("{k}", &k.to_string())
        .replace("{shards}", &shards.to_string())
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
            failing_since: None,
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(!shown.contains("b2xk"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
