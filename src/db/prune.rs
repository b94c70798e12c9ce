//! Retention: the statements that remove finished events older than a
//! cut-off, with their delivery statuses (and the attempts those hold), in
//! small steps that never wait for a lock and hold theirs for one short
//! statement; and the counts `prune --dry-run` and `status` show.
//!
//! An event is *prunable* when it was created before the cut-off and every
//! one of its delivery statuses is SUCCESS or FAILED. An event with no
//! status at all (its rule had no active channel) is finished trivially and
//! prunable too. Nothing unfinished is ever removed, whatever its age.
//!
//! Each [`step`] is one statement (its own transaction): it walks the
//! `event_created` index from a keyset cursor, locks up to `batch`
//! candidate events `FOR UPDATE SKIP LOCKED`, then locks their statuses
//! `FOR UPDATE SKIP LOCKED` and removes only the events whose statuses it
//! *all* locked and found finished in their newest version. So a `resend`
//! (which locks the statuses it moves) either got there first and the event
//! stays, or waits for this one statement and then finds no delivery to
//! resend, and says so. When to step, how often and on which connection is
//! the caller's (`reconcile::pruner`, `ops::prune`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use postgres::types::Type;
use postgres::{GenericClient, Statement};
use uuid::Uuid;

use super::DbError;

/// Events one [`step`] looks at, at most: small enough that a step holds
/// its row locks for a few milliseconds (docs/benchmarks.md, scenario 11).
pub const BATCH: i64 = 200;

/// What was (or would be) removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    /// Events.
    pub events: i64,
    /// Their delivery statuses.
    pub delivery_statuses: i64,
    /// The attempt records those statuses held (each status keeps a bounded
    /// list of its newest attempts).
    pub attempts: i64,
}

impl std::ops::AddAssign for Removed {
    fn add_assign(&mut self, other: Removed) {
        self.events += other.events;
        self.delivery_statuses += other.delivery_statuses;
        self.attempts += other.attempts;
    }
}

/// Where a sweep has got to: the last event (in `(created_at, id)` order)
/// a step looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Its creation time.
    pub created_at: DateTime<Utc>,
    /// Its id.
    pub id: Uuid,
}

/// One [`step`]'s result.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// What it removed.
    pub removed: Removed,
    /// Candidates it locked (finished in its snapshot); fewer than the
    /// batch: the sweep is done.
    pub looked_at: i64,
    /// Where the next step starts (None: nothing was looked at).
    pub cursor: Option<Cursor>,
    /// How long the statement took.
    pub took: Duration,
}

/// The cut-off for `keep`: the database's `now()` minus `keep` (the
/// database clock, the one `created_at` was written with).
pub fn cutoff(client: &mut impl GenericClient, keep: Duration) -> Result<DateTime<Utc>, DbError> {
    let row = client
        .query_one(
            "SELECT now() - make_interval(secs => $1)",
            &[&keep.as_secs_f64()],
        )
        .map_err(DbError::query("computing the retention cut-off"))?;
    Ok(row.get(0))
}

/// "Event `e` is finished" in the statement's snapshot: none of its
/// statuses is unfinished (none at all counts as finished). One copy for
/// every query here.
const FINISHED: &str = "NOT EXISTS (SELECT 1 FROM delivery_status s
                                    WHERE s.event_id = e.id
                                      AND s.state IN ('PENDING', 'SENDING', 'RESENDING'))";

/// Removes up to `batch` prunable events created before `cutoff` and after
/// `from`, in `(created_at, id)` order, in one statement. Waits for no row
/// lock: events and statuses locked by someone else are skipped (and
/// kept).
pub fn step(
    client: &mut impl GenericClient,
    cutoff: DateTime<Utc>,
    from: Option<Cursor>,
    batch: i64,
) -> Result<Step, DbError> {
    let statement = prepare(client)?;
    step_with(client, &statement, cutoff, from, batch)
}

/// Prepares [`step`]'s statement (a sweep prepares it once).
fn prepare(client: &mut impl GenericClient) -> Result<Statement, DbError> {
    let sql = format!(
        "WITH cand AS (
             SELECT e.id, e.created_at FROM event e
             WHERE e.created_at < $1
               AND (e.created_at, e.id) > (coalesce($2, '-infinity'::timestamptz), $3)
               AND {FINISHED}
             ORDER BY e.created_at, e.id
             LIMIT $4
             FOR UPDATE OF e SKIP LOCKED
         ), seen AS (
             SELECT s.event_id, count(*) AS n FROM delivery_status s
             WHERE s.event_id IN (SELECT id FROM cand)
             GROUP BY s.event_id
         ), locked AS (
             -- The newest version of each status (READ COMMITTED follows
             -- updates committed since the snapshot); one locked by a
             -- transaction in progress (a resend, a worker) is skipped.
             SELECT s.event_id, s.state FROM delivery_status s
             WHERE s.event_id IN (SELECT id FROM cand)
             FOR UPDATE SKIP LOCKED
         ), finished AS (
             SELECT l.event_id, count(*) AS n FROM locked l
             WHERE l.state IN ('SUCCESS', 'FAILED')
             GROUP BY l.event_id
         ), doomed AS (
             -- Every status seen is locked and finished (none: finished).
             SELECT c.id FROM cand c
             LEFT JOIN seen ON seen.event_id = c.id
             LEFT JOIN finished f ON f.event_id = c.id
             WHERE coalesce(seen.n, 0) = coalesce(f.n, 0)
         ), gone_statuses AS (
             DELETE FROM delivery_status s USING doomed d WHERE s.event_id = d.id
             RETURNING jsonb_array_length(s.attempts) AS attempts
         ), gone_events AS (
             DELETE FROM event e USING doomed d WHERE e.id = d.id RETURNING e.id
         ), last AS (
             SELECT created_at, id FROM cand ORDER BY created_at DESC, id DESC LIMIT 1
         )
         SELECT (SELECT count(*) FROM cand),
                (SELECT count(*) FROM gone_events),
                (SELECT count(*) FROM gone_statuses),
                (SELECT coalesce(sum(attempts), 0)::int8 FROM gone_statuses),
                last.created_at, last.id
         FROM (SELECT 1) one LEFT JOIN last ON true"
    );
    client
        .prepare_typed(
            &sql,
            &[Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::UUID, Type::INT8],
        )
        .map_err(DbError::query("preparing the pruning statement"))
}

/// [`step`] with its statement prepared.
fn step_with(
    client: &mut impl GenericClient,
    statement: &Statement,
    cutoff: DateTime<Utc>,
    from: Option<Cursor>,
    batch: i64,
) -> Result<Step, DbError> {
    let (after_at, after_id) = match from {
        Some(c) => (Some(c.created_at), c.id),
        None => (None, Uuid::nil()),
    };
    let started = Instant::now();
    let row = client
        .query_one(statement, &[&cutoff, &after_at, &after_id, &batch])
        .map_err(DbError::query("pruning finished events"))?;
    let took = started.elapsed();
    let cursor = match (row.get::<_, Option<DateTime<Utc>>>(4), row.get(5)) {
        (Some(created_at), Some(id)) => Some(Cursor { created_at, id }),
        _ => from,
    };
    Ok(Step {
        looked_at: row.get(0),
        removed: Removed {
            events: row.get(1),
            delivery_statuses: row.get(2),
            attempts: row.get(3),
        },
        cursor,
        took,
    })
}

/// Steps through every prunable event created before `cutoff`, oldest
/// first, `batch` at a time, calling `after` after each step; stops early
/// when `after` returns false. Returns what was removed in all.
pub fn sweep(
    client: &mut impl GenericClient,
    cutoff: DateTime<Utc>,
    batch: i64,
    after: &mut dyn FnMut(&Step) -> bool,
) -> Result<Removed, DbError> {
    let statement = prepare(client)?;
    let mut total = Removed::default();
    let mut from = None;
    loop {
        let step = step_with(client, &statement, cutoff, from, batch)?;
        total += step.removed;
        from = step.cursor;
        if !after(&step) || step.looked_at < batch {
            return Ok(total);
        }
    }
}

/// What a sweep to `cutoff` would remove now (`prune --dry-run`): the same
/// rule as [`step`], without locking or removing anything.
pub fn count(client: &mut impl GenericClient, cutoff: DateTime<Utc>) -> Result<Removed, DbError> {
    let sql = format!(
        "WITH prunable AS (
             SELECT e.id FROM event e
             WHERE e.created_at < $1
               AND {FINISHED}
         )
         SELECT (SELECT count(*) FROM prunable), count(s.id),
                coalesce(sum(jsonb_array_length(s.attempts)), 0)::int8
         FROM delivery_status s WHERE s.event_id IN (SELECT id FROM prunable)"
    );
    let row = client
        .query_one(&sql, &[&cutoff])
        .map_err(DbError::query("counting prunable events"))?;
    Ok(Removed {
        events: row.get(0),
        delivery_statuses: row.get(1),
        attempts: row.get(2),
    })
}

/// What `status` shows about retention.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Retention {
    /// `retention.keep_finished` in seconds (0: kept forever).
    pub keep_finished_seconds: u64,
    /// Creation time of the oldest event still kept whose deliveries are
    /// all finished (None: there is none).
    pub oldest_kept_finished_at: Option<DateTime<Utc>>,
    /// Events prunable now (0 when retention is off).
    pub due_for_pruning: i64,
}

/// The oldest finished event kept, and how many are prunable under `keep`
/// (zero: retention off, nothing is).
pub fn retention(client: &mut impl GenericClient, keep: Duration) -> Result<Retention, DbError> {
    let sql = format!(
        "SELECT e.created_at FROM event e
         WHERE {FINISHED}
         ORDER BY e.created_at, e.id LIMIT 1"
    );
    let oldest = client
        .query_opt(&sql, &[])
        .map_err(DbError::query("finding the oldest finished event"))?
        .map(|row| row.get(0));
    let due_for_pruning = if keep.is_zero() {
        0
    } else {
        let cutoff = cutoff(client, keep)?;
        let sql = format!(
            "SELECT count(*) FROM event e
             WHERE e.created_at < $1
               AND {FINISHED}"
        );
        client
            .query_one(&sql, &[&cutoff])
            .map_err(DbError::query("counting prunable events"))?
            .get(0)
    };
    Ok(Retention {
        keep_finished_seconds: keep.as_secs(),
        oldest_kept_finished_at: oldest,
        due_for_pruning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_adds_up() {
        let mut total = Removed::default();
        total += Removed {
            events: 2,
            delivery_statuses: 3,
            attempts: 4,
        };
        total += Removed {
            events: 1,
            delivery_statuses: 0,
            attempts: 5,
        };
        assert_eq!(
            total,
            Removed {
                events: 3,
                delivery_statuses: 3,
                attempts: 9
            }
        );
    }
}
