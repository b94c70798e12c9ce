//! The `idempotency_key` table: the first answer to an `Idempotency-Key`
//! of `POST /v1/namespaces/{ns}/events`, kept [`KEEP_HOURS`] hours, so that
//! a retried POST gets the same answer and enqueues nothing, on any
//! instance and after restarts. The key row is inserted in the same
//! transaction as the events it answers for: either both are there or
//! neither, and a second request with the same key waits on the first's
//! row lock until it commits or rolls back.

use postgres::{GenericClient, Transaction};

use super::DbError;

/// How long a key's answer is kept (hours).
pub const KEEP_HOURS: i32 = 24;

/// What a key stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<T> {
    /// The key was new: `work` ran and its answer is stored.
    Fresh(T),
    /// The key was used before (within [`KEEP_HOURS`]): its stored answer.
    Replay {
        /// SHA-256 of the first request's body.
        request_hash: Vec<u8>,
        /// The first answer's HTTP status.
        status: i32,
        /// The first answer's body.
        response: serde_json::Value,
    },
}

/// Runs `work` once per (`namespace`, `key`): the first time in a
/// transaction that also stores the answer `work` returns (status, body);
/// later, the stored answer instead. A `work` that fails stores nothing.
pub fn once<T, E>(
    client: &mut impl GenericClient,
    namespace: &str,
    key: &str,
    request_hash: &[u8],
    work: impl FnOnce(&mut Transaction<'_>) -> Result<(i32, serde_json::Value, T), E>,
) -> Result<Outcome<T>, E>
where
    E: From<DbError>,
{
    let mut tx = client
        .transaction()
        .map_err(DbError::query("checking an idempotency key"))?;
    tx.execute(
        "DELETE FROM idempotency_key WHERE namespace = $1 AND key = $2
           AND created_at < now() - make_interval(hours => $3)",
        &[&namespace, &key, &KEEP_HOURS],
    )
    .map_err(DbError::query("checking an idempotency key"))?;
    let claimed = tx
        .query_opt(
            "INSERT INTO idempotency_key (namespace, key, request_hash, status, response)
             VALUES ($1, $2, $3, 0, 'null') ON CONFLICT DO NOTHING RETURNING 1",
            &[&namespace, &key, &request_hash],
        )
        .map_err(DbError::query("checking an idempotency key"))?;
    if claimed.is_none() {
        let row = tx
            .query_one(
                "SELECT request_hash, status, response FROM idempotency_key
                 WHERE namespace = $1 AND key = $2",
                &[&namespace, &key],
            )
            .map_err(DbError::query("reading an idempotency key"))?;
        return Ok(Outcome::Replay {
            request_hash: row.get(0),
            status: row.get(1),
            response: row.get(2),
        });
    }
    let (status, response, value) = work(&mut tx)?;
    tx.execute(
        "UPDATE idempotency_key SET status = $3, response = $4
         WHERE namespace = $1 AND key = $2",
        &[&namespace, &key, &status, &response],
    )
    .map_err(DbError::query("storing an idempotency key's answer"))?;
    tx.commit()
        .map_err(DbError::query("storing an idempotency key's answer"))?;
    Ok(Outcome::Fresh(value))
}

/// Removes up to `batch` keys older than [`KEEP_HOURS`]; returns how many.
pub fn expire(client: &mut impl GenericClient, batch: i64) -> Result<u64, DbError> {
    client
        .execute(
            "DELETE FROM idempotency_key WHERE ctid = ANY (ARRAY(
                 SELECT ctid FROM idempotency_key
                 WHERE created_at < now() - make_interval(hours => $1)
                 LIMIT $2))",
            &[&KEEP_HOURS, &batch],
        )
        .map_err(DbError::query("expiring idempotency keys"))
}
