//! The delivery controls' queries (migration 0009): which of a sweep's
//! channels are rate-limited or ordered, with the rate window the last
//! leader stored; storing a window; and what operators see of the controls
//! (how many deliveries are held back, what an ordered channel waits on).
//! The decisions are `reconcile::rate` and `reconcile::scheduler`'s; the
//! channel columns themselves are written by `db::channels`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use postgres::GenericClient;
use uuid::Uuid;

use super::DbError;
use crate::rate_limit::RateLimit;

/// The controls of one channel that has any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controls {
    /// The channel.
    pub channel_id: Uuid,
    /// Its rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// Ordered.
    pub ordered: bool,
}

/// A rate window as the leader stores it: for each request that still
/// counts, until when (`None`: it was in flight, its start unknown).
pub type StoredWindow = Vec<Option<DateTime<Utc>>>;

/// The controls of those of `ids` that are rate-limited or ordered (the
/// others have none: nothing is returned for them). One query per sweep
/// over the `channel` table (about 0.7 ms for 5,000 channels, 3,000 of them
/// asked for, in an EXPLAIN ANALYZE on the development machine).
pub fn of_channels(
    client: &mut impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<Controls>, DbError> {
    let rows = client
        .query(
            "SELECT id, rate_limit, rate_period_secs, ordered FROM channel
             WHERE (rate_limit IS NOT NULL OR ordered) AND id = ANY($1)",
            &[&ids],
        )
        .map_err(DbError::query("reading the channels' delivery controls"))?;
    Ok(rows
        .iter()
        .map(|r| Controls {
            channel_id: r.get(0),
            rate_limit: RateLimit::from_columns(r.get(1), r.get(2)),
            ordered: r.get(3),
        })
        .collect())
}

/// The rate windows the last leader stored for `ids` (read only for
/// rate-limited channels this leader does not know yet, so that a
/// deployment without rate limits never touches the table).
pub fn stored_windows(
    client: &mut impl GenericClient,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, StoredWindow>, DbError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            "SELECT channel_id, counts_until FROM channel_rate_window WHERE channel_id = ANY($1)",
            &[&ids],
        )
        .map_err(DbError::query("reading stored rate windows"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Stores a channel's rate window.
pub fn store_window(
    client: &mut impl GenericClient,
    channel_id: Uuid,
    window: &[Option<DateTime<Utc>>],
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO channel_rate_window (channel_id, counts_until) VALUES ($1, $2)
             ON CONFLICT (channel_id) DO UPDATE
             SET counts_until = excluded.counts_until, updated_at = now()",
            &[&channel_id, &window],
        )
        .map_err(DbError::query("storing a channel's rate window"))?;
    Ok(())
}

/// For each of `ids`, how many of its unfinished deliveries are due now
/// (those in flight included: the caller subtracts them).
pub fn due_now(
    client: &mut impl GenericClient,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, i64>, DbError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            "SELECT channel_id, count(*) FROM delivery_status
             WHERE state IN ('PENDING', 'SENDING', 'RESENDING')
               AND channel_id = ANY($1) AND next_attempt_at <= now()
             GROUP BY channel_id",
            &[&ids],
        )
        .map_err(DbError::query("counting held-back deliveries"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What an ordered channel waits on: its oldest unfinished delivery in
/// enqueue order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Head {
    /// The event.
    pub event_id: Uuid,
    /// The delivery's state (`PENDING`, `SENDING` or `RESENDING`).
    pub state: String,
    /// When it is attempted next (a `SENDING` one: its retry).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Attempts made so far.
    pub attempt_count: i32,
}

/// The heads of the ordered channels among `ids` that have unfinished
/// deliveries: one descent of `delivery_status_channel_order` each.
pub fn heads(
    client: &mut impl GenericClient,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Head>, DbError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            "SELECT c.id, d.event_id, d.state, d.next_attempt_at, d.attempt_count
             FROM unnest($1::uuid[]) AS c(id)
             CROSS JOIN LATERAL (
                 SELECT event_id, state, next_attempt_at, attempt_count FROM delivery_status
                 WHERE state IN ('PENDING', 'SENDING', 'RESENDING') AND channel_id = c.id
                 ORDER BY channel_id, event_created_at, event_id LIMIT 1) d",
            &[&ids],
        )
        .map_err(DbError::query("reading what ordered channels wait on"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Head {
                    event_id: r.get(1),
                    state: r.get(2),
                    next_attempt_at: r.get(3),
                    attempt_count: r.get(4),
                },
            )
        })
        .collect())
}
