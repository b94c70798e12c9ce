//! The `delivery_status` table: one row per (event, channel) with its state,
//! attempts and timers. Outcomes are written a group at a time (one
//! `UPDATE` of many rows, `reconcile::recorder`), each row guarded by its
//! `version` (optimistic concurrency): a row an operator changed while a
//! delivery was in flight is left as the operator made it.

use chrono::{DateTime, Utc};
use postgres::types::Type;
use postgres::{GenericClient, Statement};
use uuid::Uuid;

use super::DbError;
use crate::state::{AttemptRecord, State, Update};

/// The newest attempts kept per status (older ones are dropped; the total is
/// in `attempt_count`).
pub const MAX_ATTEMPTS_KEPT: i32 = 20;

/// A delivery status as stored (for `event show` and tests).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryStatus {
    /// Id.
    pub id: Uuid,
    /// Event.
    pub event_id: Uuid,
    /// Channel.
    pub channel_id: Uuid,
    /// State.
    pub state: State,
    /// Why it is in that state.
    pub reason: String,
    /// When the next attempt is due (unfinished states only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Every attempt made so far.
    pub attempt_count: i32,
    /// Attempts since the clock (re)started.
    pub round_attempts: i32,
    /// The newest attempts, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// Creation or last resend.
    pub clock_started_at: DateTime<Utc>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Optimistic concurrency version.
    pub version: i64,
}

/// Parses a stored state.
pub fn parse_state(text: &str) -> Result<State, DbError> {
    text.parse().map_err(|_| DbError::BadRow {
        table: "delivery_status",
        problem: format!("unknown state {text:?}"),
    })
}

/// All statuses of one event, in channel order.
pub fn of_event(
    client: &mut impl GenericClient,
    event_id: Uuid,
) -> Result<Vec<DeliveryStatus>, DbError> {
    let rows = client
        .query(
            "SELECT id, event_id, channel_id, state, reason, next_attempt_at, attempt_count,
                    round_attempts, attempts, clock_started_at, created_at, updated_at, version
             FROM delivery_status WHERE event_id = $1 ORDER BY channel_id",
            &[&event_id],
        )
        .map_err(DbError::query("reading delivery statuses"))?;
    rows.iter()
        .map(|r| {
            let attempts: serde_json::Value = r.get(8);
            Ok(DeliveryStatus {
                id: r.get(0),
                event_id: r.get(1),
                channel_id: r.get(2),
                state: parse_state(r.get(3))?,
                reason: r.get(4),
                next_attempt_at: r.get(5),
                attempt_count: r.get(6),
                round_attempts: r.get(7),
                attempts: serde_json::from_value(attempts).map_err(|e| DbError::BadRow {
                    table: "delivery_status",
                    problem: format!("attempts list is not readable: {e}"),
                })?,
                clock_started_at: r.get(9),
                created_at: r.get(10),
                updated_at: r.get(11),
                version: r.get(12),
            })
        })
        .collect()
}

/// A worker's status write, prepared once per connection: one `UPDATE` of
/// one or more rows (a worker records the outcomes of a job's deliveries
/// together: one statement, one commit), each guarded by its row's
/// version. The rows come as parallel arrays (`unnest`); the statement
/// returns the ids it wrote, so a row changed meanwhile is told apart from
/// the others. The attempt list keeps its newest `$8 - 1` entries before
/// the new one is appended; a jsonpath slice does that without a subquery.
const STATUS_UPDATE_SQL: &str = "UPDATE delivery_status d SET
     state = v.state, reason = v.reason, next_attempt_at = v.next_attempt_at,
     round_attempts = v.round_attempts,
     attempt_count = d.attempt_count + CASE WHEN v.attempt IS NULL THEN 0 ELSE 1 END,
     attempts = CASE WHEN v.attempt IS NULL THEN d.attempts ELSE
         (CASE WHEN jsonb_array_length(d.attempts) < $8::int THEN d.attempts
          ELSE jsonb_path_query_array(d.attempts, ('$[' ||
              (jsonb_array_length(d.attempts) - $8::int + 1) || ' to last]')::jsonpath) END)
         || jsonb_build_array(v.attempt) END,
     updated_at = now(), version = d.version + 1
 FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::timestamptz[],
             $6::int4[], $7::jsonb[])
      AS v(id, version, state, reason, next_attempt_at, round_attempts, attempt)
 WHERE d.id = v.id AND d.version = v.version
 RETURNING d.id";

/// The prepared status write of one connection (use it only on the
/// connection that prepared it).
pub struct StatusWriter {
    statement: Statement,
}

/// One row for [`StatusWriter::write`]: the status, the version it was read
/// at, and its update.
pub struct Write<'a> {
    /// The status id.
    pub id: Uuid,
    /// The version the worker read it at.
    pub version: i64,
    /// What to write.
    pub update: &'a Update,
}

impl StatusWriter {
    /// Prepares the write on `client`, and makes the connection keep one
    /// generic plan for its prepared statements (`plan_cache_mode =
    /// force_generic_plan`): PostgreSQL otherwise plans this statement
    /// afresh on every call (a custom plan for each array length looks
    /// cheaper to it than the generic one), and planning cost more than
    /// running it. Worker connections serve only this write and the
    /// pruner's steps, whose plans do not depend on their values.
    pub fn prepare(client: &mut impl GenericClient) -> Result<StatusWriter, DbError> {
        client
            .batch_execute("SET plan_cache_mode = force_generic_plan")
            .map_err(DbError::query("preparing the status write"))?;
        let statement = client
            .prepare_typed(
                STATUS_UPDATE_SQL,
                &[
                    Type::UUID_ARRAY,
                    Type::INT8_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::TIMESTAMPTZ_ARRAY,
                    Type::INT4_ARRAY,
                    Type::JSONB_ARRAY,
                    Type::INT4,
                ],
            )
            .map_err(DbError::query("preparing the status write"))?;
        Ok(StatusWriter { statement })
    }

    /// Writes each row's update if the row is still at its version, in one
    /// statement (one transaction); for each row, in order, whether it was
    /// written (false: an operator, or another instance, changed it
    /// meanwhile).
    pub fn write(
        &self,
        client: &mut impl GenericClient,
        rows: &[Write<'_>],
    ) -> Result<Vec<bool>, DbError> {
        let mut attempts = Vec::with_capacity(rows.len());
        for row in rows {
            let attempt = row
                .update
                .attempt
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(|e| DbError::BadRow {
                    table: "delivery_status",
                    problem: format!("cannot encode an attempt: {e}"),
                })?;
            attempts.push(attempt);
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        debug_assert!(
            ids.iter().collect::<std::collections::HashSet<_>>().len() == ids.len(),
            "a status written twice in one statement"
        );
        let versions: Vec<i64> = rows.iter().map(|r| r.version).collect();
        let states: Vec<&str> = rows.iter().map(|r| r.update.state.as_str()).collect();
        let reasons: Vec<&str> = rows.iter().map(|r| r.update.reason.as_str()).collect();
        let next: Vec<Option<DateTime<Utc>>> =
            rows.iter().map(|r| r.update.next_attempt_at).collect();
        let rounds: Vec<i32> = rows
            .iter()
            .map(|r| i32::try_from(r.update.round_attempts).unwrap_or(i32::MAX))
            .collect();
        let written = client
            .query(
                &self.statement,
                &[
                    &ids,
                    &versions,
                    &states,
                    &reasons,
                    &next,
                    &rounds,
                    &attempts,
                    &MAX_ATTEMPTS_KEPT,
                ],
            )
            .map_err(DbError::query("recording delivery outcomes"))?;
        let written: std::collections::HashSet<Uuid> =
            written.iter().map(|r| r.get::<_, Uuid>(0)).collect();
        Ok(ids.iter().map(|id| written.contains(id)).collect())
    }
}

/// What `resend` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ResendResult {
    /// Statuses moved to RESENDING.
    pub resent: Vec<Resent>,
    /// Channel ids whose status was refused, with its state (PENDING or
    /// RESENDING: already on its way).
    pub refused: Vec<(Uuid, State)>,
}

/// One delivery `resend` moved to RESENDING.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Resent {
    /// Its channel.
    pub channel_id: Uuid,
    /// The channel's name.
    pub channel_name: String,
    /// Its state before the resend (SUCCESS, FAILED or SENDING).
    pub was: State,
}

/// Moves the SUCCESS/FAILED/SENDING statuses of an event (optionally of one
/// channel) to RESENDING and restarts their clock.
pub fn resend(
    client: &mut impl GenericClient,
    event_id: Uuid,
    channel: Option<Uuid>,
) -> Result<ResendResult, DbError> {
    let mut tx = client.transaction().map_err(DbError::query("resending"))?;
    let rows = tx
        .query(
            "SELECT s.channel_id, s.state, c.name
             FROM delivery_status s JOIN channel c ON c.id = s.channel_id
             WHERE s.event_id = $1 AND ($2::uuid IS NULL OR s.channel_id = $2)
             ORDER BY s.channel_id FOR UPDATE OF s",
            &[&event_id, &channel],
        )
        .map_err(DbError::query("resending"))?;
    let mut result = ResendResult::default();
    for r in &rows {
        let state = parse_state(r.get(1))?;
        if matches!(state, State::Pending | State::Resending) {
            result.refused.push((r.get(0), state));
        }
    }
    let updated = tx
        .query(
            "UPDATE delivery_status SET state = 'RESENDING', reason = 'resent by operator',
                 next_attempt_at = now(), clock_started_at = now(), round_attempts = 0,
                 updated_at = now(), version = version + 1
             WHERE event_id = $1 AND ($2::uuid IS NULL OR channel_id = $2)
               AND state IN ('SUCCESS', 'FAILED', 'SENDING')
             RETURNING channel_id",
            &[&event_id, &channel],
        )
        .map_err(DbError::query("resending"))?;
    for updated in &updated {
        let channel_id: Uuid = updated.get(0);
        if let Some(r) = rows.iter().find(|r| r.get::<_, Uuid>(0) == channel_id) {
            result.resent.push(Resent {
                channel_id,
                channel_name: r.get(2),
                was: parse_state(r.get(1))?,
            });
        }
    }
    if !result.resent.is_empty() {
        // Wakes the leader on commit (see migration 0002's wake_channel).
        tx.execute("SELECT pg_notify(wake_channel(), '')", &[])
            .map_err(DbError::query("resending"))?;
    }
    tx.commit().map_err(DbError::query("resending"))?;
    Ok(result)
}

/// What a bulk `resend --channel` did: how many deliveries it moved to
/// RESENDING, by the state they had.
#[derive(Debug, Default, serde::Serialize)]
pub struct BulkResend {
    /// Statuses moved, by their state before.
    pub by_state: std::collections::BTreeMap<String, i64>,
}

/// The deliveries a bulk resend takes: of channel `$1`, of events created
/// at or after `$2` (when not NULL), in one of the states `$3` that are
/// resendable.
const RESENDABLE: &str = "channel_id = $1 AND ($2::timestamptz IS NULL OR event_created_at >= $2)
     AND state = ANY($3) AND state IN ('SUCCESS', 'FAILED', 'SENDING')";

impl BulkResend {
    /// From rows of (state, count).
    fn from_rows(rows: &[postgres::Row]) -> BulkResend {
        let mut result = BulkResend::default();
        for r in rows {
            result.by_state.insert(r.get(0), r.get(1));
        }
        result
    }

    /// How many in all.
    pub fn total(&self) -> i64 {
        self.by_state.values().sum()
    }
}

/// Moves every delivery of `channel_id` in one of `states` (of SUCCESS,
/// FAILED, SENDING), of events created at or after `since` when given, to
/// RESENDING with a fresh clock, in one transaction, and wakes the leader.
pub fn resend_channel(
    client: &mut impl GenericClient,
    channel_id: Uuid,
    since: Option<DateTime<Utc>>,
    states: &[State],
) -> Result<BulkResend, DbError> {
    let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    let mut tx = client.transaction().map_err(DbError::query("resending"))?;
    let rows = tx
        .query(
            &format!(
                "WITH old AS (
                 SELECT id, state FROM delivery_status WHERE {RESENDABLE}
                 FOR UPDATE
             ), moved AS (
                 UPDATE delivery_status s SET state = 'RESENDING', reason = 'resent by operator',
                     next_attempt_at = now(), clock_started_at = now(), round_attempts = 0,
                     updated_at = now(), version = s.version + 1
                 FROM old WHERE s.id = old.id
                 RETURNING old.state AS was
             )
             SELECT was, count(*) FROM moved GROUP BY was"
            ),
            &[&channel_id, &since, &states],
        )
        .map_err(DbError::query("resending"))?;
    let result = BulkResend::from_rows(&rows);
    if result.total() > 0 {
        // Wakes the leader on commit (see migration 0002's wake_channel).
        tx.execute("SELECT pg_notify(wake_channel(), '')", &[])
            .map_err(DbError::query("resending"))?;
    }
    tx.commit().map_err(DbError::query("resending"))?;
    Ok(result)
}

/// What [`resend_channel`] would move, counted without changing anything.
pub fn count_resendable(
    client: &mut impl GenericClient,
    channel_id: Uuid,
    since: Option<DateTime<Utc>>,
    states: &[State],
) -> Result<BulkResend, DbError> {
    let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    let rows = client
        .query(
            &format!(
                "SELECT state, count(*) FROM delivery_status WHERE {RESENDABLE} GROUP BY state"
            ),
            &[&channel_id, &since, &states],
        )
        .map_err(DbError::query("counting deliveries to resend"))?;
    Ok(BulkResend::from_rows(&rows))
}

/// Counts for `status`.
#[derive(Debug, Default, serde::Serialize)]
pub struct Counts {
    /// Statuses per state (every state listed, zeros included).
    pub by_state: std::collections::BTreeMap<String, i64>,
    /// Unfinished statuses due at `now`.
    pub due_now: i64,
    /// Age in seconds of the oldest unfinished status, if any.
    pub oldest_unfinished_age_seconds: Option<f64>,
}

/// Counts statuses by state, due now, and the oldest unfinished age.
pub fn counts(client: &mut impl GenericClient) -> Result<Counts, DbError> {
    counts_of(client, None)
}

/// [`counts`] of one namespace (every namespace: `None`).
pub fn counts_of(
    client: &mut impl GenericClient,
    namespace: Option<&str>,
) -> Result<Counts, DbError> {
    let mut counts = Counts::default();
    for s in State::ALL {
        counts.by_state.insert(s.as_str().to_string(), 0);
    }
    let rows = client
        .query(
            "SELECT state, count(*) FROM delivery_status
             WHERE $1::text IS NULL OR namespace = $1 GROUP BY state",
            &[&namespace],
        )
        .map_err(DbError::query("counting statuses"))?;
    for r in &rows {
        counts.by_state.insert(r.get(0), r.get(1));
    }
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE next_attempt_at <= now()),
                    extract(epoch FROM now() - min(created_at))::float8
             FROM delivery_status WHERE state IN ('PENDING', 'SENDING', 'RESENDING')
               AND ($1::text IS NULL OR namespace = $1)",
            &[&namespace],
        )
        .map_err(DbError::query("counting due statuses"))?;
    counts.due_now = row.get(0);
    counts.oldest_unfinished_age_seconds = row.get(1);
    Ok(counts)
}

/// Attempts and failed attempts of a namespace per minute over the last
/// hour, oldest first, one entry for every minute (zeros included).
pub fn attempts_per_minute(
    client: &mut impl GenericClient,
    namespace: &str,
) -> Result<Vec<(DateTime<Utc>, i64, i64)>, DbError> {
    let rows = client
        .query(
            "WITH a AS (
                 SELECT date_trunc('minute', (x->>'timestamp')::timestamptz) AS m,
                        x->>'state' AS state
                 FROM delivery_status ds, jsonb_array_elements(ds.attempts) x
                 WHERE ds.namespace = $1 AND ds.updated_at > now() - interval '61 minutes'
                   AND (x->>'timestamp')::timestamptz > now() - interval '60 minutes'
             )
             SELECT g.m, count(a.m), count(a.m) FILTER (WHERE a.state <> 'SUCCESS')
             FROM generate_series(date_trunc('minute', now()) - interval '59 minutes',
                                  date_trunc('minute', now()), interval '1 minute') AS g(m)
             LEFT JOIN a ON a.m = g.m
             GROUP BY g.m ORDER BY g.m",
            &[&namespace],
        )
        .map_err(DbError::query("counting attempts per minute"))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
