//! The `channel` table: webhook endpoints with their URL, custom headers and
//! signing secret (and, during a rotation's overlap, the previous one).
//! Checking what an operator typed (URL, headers, secret) is done by
//! `ops::channels` before it calls here; the worker re-checks stored rows.

use chrono::{DateTime, Utc};
use postgres::GenericClient;
use uuid::Uuid;

use super::secrets as secrets_db;
use super::DbError;
use crate::rate_limit::RateLimit;
use crate::secrets;

/// A channel as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Channel {
    /// Id.
    pub id: Uuid,
    /// Namespace (tenant).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Always `webhook` for now.
    #[serde(rename = "type")]
    pub kind: String,
    /// Endpoint URL.
    pub url: String,
    /// Custom headers, a JSON object of strings.
    pub headers: serde_json::Value,
    /// The signing secret; `None` unless asked for (never printed by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    /// The secret before the last rotation, while requests still carry its
    /// signature; `None` unless asked for, like `signing_secret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_signing_secret: Option<String>,
    /// Until when requests carry the previous secret's signature too.
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// Disabled channels get no deliveries.
    pub disabled: bool,
    /// Why the leader disabled it (auto-disable); `None` when an operator
    /// did, or when enabled.
    pub disabled_reason: Option<String>,
    /// Since when every attempt to it has failed, if they do.
    pub failing_since: Option<DateTime<Utc>>,
    /// At most this many request starts per window (`"10/s"`); `None`: no
    /// limit.
    pub rate_limit: Option<RateLimit>,
    /// Its deliveries go one at a time in enqueue order.
    pub ordered: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Soft-deleted at.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// What `channel create` stores.
pub struct NewChannel<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// Validated URL.
    pub url: &'a str,
    /// Validated custom headers (JSON object).
    pub headers: serde_json::Value,
    /// `whsec_…` secret.
    pub signing_secret: &'a str,
    /// Create disabled.
    pub disabled: bool,
    /// Its rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// Ordered.
    pub ordered: bool,
}

/// A rate limit as its two stored columns (count, period in seconds).
fn rate_columns(limit: Option<RateLimit>) -> (Option<i32>, Option<i32>) {
    match limit {
        Some(l) => (Some(l.count as i32), Some(l.per_secs as i32)),
        None => (None, None),
    }
}

/// Inserts a channel; returns its id.
pub fn create(client: &mut impl GenericClient, new: &NewChannel<'_>) -> Result<Uuid, DbError> {
    let (rate, period) = rate_columns(new.rate_limit);
    // Sealed under the configured key (stored as given without one).
    let headers = secrets::seal_headers(&new.headers);
    let signing_secret = secrets::seal(new.signing_secret, secrets::SIGNING_SECRET);
    let row = client
        .query_one(
            "INSERT INTO channel (namespace, name, url, headers, signing_secret, disabled,
                                  rate_limit, rate_period_secs, ordered)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            &[
                &new.namespace,
                &new.name,
                &new.url,
                &headers,
                &signing_secret,
                &new.disabled,
                &rate,
                &period,
                &new.ordered,
            ],
        )
        .map_err(DbError::query("creating a channel"))?;
    Ok(row.get(0))
}

/// The columns [`from_row`] reads, in its order.
const COLUMNS: &str = "id, namespace, name, type, url, headers, signing_secret, disabled,
     created_at, updated_at, deleted_at,
     CASE WHEN previous_secret_until > now() THEN previous_secret END,
     CASE WHEN previous_secret_until > now() THEN previous_secret_until END,
     disabled_reason, failing_since, rate_limit, rate_period_secs, ordered";

/// Makes sure the keys `rows`' sealed values name are known (learning a
/// rotation's bridges when one is not).
fn learn_keys(client: &mut impl GenericClient, rows: &[postgres::Row]) -> Result<(), DbError> {
    let texts: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            let headers: serde_json::Value = r.get(5);
            [
                headers.to_string(),
                r.get::<_, String>(6),
                r.get::<_, Option<String>>(11).unwrap_or_default(),
            ]
        })
        .collect();
    secrets_db::ensure_known(client, texts.iter().map(String::as_str))
}

/// A row of [`COLUMNS`] as a channel, its values opened; the secrets only
/// with `with_secrets`.
fn from_row(r: &postgres::Row, with_secrets: bool) -> Result<Channel, DbError> {
    let headers: serde_json::Value = r.get(5);
    let signing_secret = match with_secrets {
        true => Some(secrets::open(r.get(6), secrets::SIGNING_SECRET)?),
        false => None,
    };
    let previous_signing_secret = match (with_secrets, r.get::<_, Option<&str>>(11)) {
        (true, Some(p)) => Some(secrets::open(p, secrets::SIGNING_SECRET)?),
        _ => None,
    };
    Ok(Channel {
        id: r.get(0),
        namespace: r.get(1),
        name: r.get(2),
        kind: r.get(3),
        url: r.get(4),
        headers: secrets::open_headers(&headers)?,
        signing_secret,
        disabled: r.get(7),
        created_at: r.get(8),
        updated_at: r.get(9),
        deleted_at: r.get(10),
        previous_signing_secret,
        previous_secret_until: r.get(12),
        disabled_reason: r.get(13),
        failing_since: r.get(14),
        rate_limit: RateLimit::from_columns(r.get(15), r.get(16)),
        ordered: r.get(17),
    })
}

/// Lists channels (not deleted), optionally of one namespace; the secret only
/// with `with_secrets`.
pub fn list(
    client: &mut impl GenericClient,
    namespace: Option<&str>,
    with_secrets: bool,
) -> Result<Vec<Channel>, DbError> {
    list_after(client, namespace, None, None, with_secrets)
}

/// Lists channels (not deleted) in (namespace, created_at, id) order,
/// optionally of one namespace, after `after` = (created_at, id) within it,
/// at most `limit` (`None`: all).
pub fn list_after(
    client: &mut impl GenericClient,
    namespace: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: Option<i64>,
    with_secrets: bool,
) -> Result<Vec<Channel>, DbError> {
    let (after_at, after_id) = after.unzip();
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM channel
                 WHERE deleted_at IS NULL AND ($1::text IS NULL OR namespace = $1)
                   AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
                 ORDER BY namespace, created_at, id
                 LIMIT $4"
            ),
            &[&namespace, &after_at, &after_id, &limit],
        )
        .map_err(DbError::query("listing channels"))?;
    learn_keys(client, &rows)?;
    rows.iter().map(|r| from_row(r, with_secrets)).collect()
}

/// The ids of the live channels named `name` in `namespace`, oldest first
/// (names need not be unique; a duplicate is warned about).
pub fn ids_named(
    client: &mut impl GenericClient,
    namespace: &str,
    name: &str,
) -> Result<Vec<Uuid>, DbError> {
    let rows = client
        .query(
            "SELECT id FROM channel WHERE namespace = $1 AND name = $2 AND deleted_at IS NULL
             ORDER BY created_at, id",
            &[&namespace, &name],
        )
        .map_err(DbError::query("looking up channels by name"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Every namespace that has (or had: deleted ones count) a channel, in
/// order.
pub fn namespaces(client: &mut impl GenericClient) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "SELECT DISTINCT namespace FROM channel ORDER BY namespace",
            &[],
        )
        .map_err(DbError::query("listing the namespaces of channels"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The namespace of channel `id`, deleted or not; `None` when there was
/// never such a channel.
pub fn namespace_of(client: &mut impl GenericClient, id: Uuid) -> Result<Option<String>, DbError> {
    let row = client
        .query_opt("SELECT namespace FROM channel WHERE id = $1", &[&id])
        .map_err(DbError::query("reading a channel's namespace"))?;
    Ok(row.map(|r| r.get(0)))
}

/// One live (not deleted) channel; `None` when there is none with that id.
pub fn get(
    client: &mut impl GenericClient,
    id: Uuid,
    with_secrets: bool,
) -> Result<Option<Channel>, DbError> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM channel WHERE id = $1 AND deleted_at IS NULL"),
            &[&id],
        )
        .map_err(DbError::query("reading a channel"))?;
    let rows: Vec<postgres::Row> = row.into_iter().collect();
    learn_keys(client, &rows)?;
    rows.first().map(|r| from_row(r, with_secrets)).transpose()
}

/// What an update changes (`None`: keep).
#[derive(Debug, Default)]
pub struct ChannelChange<'a> {
    /// New name.
    pub name: Option<&'a str>,
    /// New validated URL.
    pub url: Option<&'a str>,
    /// New validated headers (replace the old ones whole).
    pub headers: Option<serde_json::Value>,
    /// New rate limit (`Some(None)`: remove it).
    pub rate_limit: Option<Option<RateLimit>>,
    /// Ordered or not.
    pub ordered: Option<bool>,
}

/// Changes a live channel; false when no live channel has that id.
/// Deliveries already enqueued go to the new URL from their next attempt; a
/// change of rate limit or order wakes the leader.
pub fn update(
    client: &mut impl GenericClient,
    id: Uuid,
    change: &ChannelChange<'_>,
) -> Result<bool, DbError> {
    let set_rate = change.rate_limit.is_some();
    let headers = change.headers.as_ref().map(secrets::seal_headers);
    let (rate, period) = rate_columns(change.rate_limit.flatten());
    let n = client
        .execute(
            "UPDATE channel SET name = coalesce($2, name), url = coalesce($3, url),
                 headers = coalesce($4, headers),
                 rate_limit = CASE WHEN $5 THEN $6 ELSE rate_limit END,
                 rate_period_secs = CASE WHEN $5 THEN $7 ELSE rate_period_secs END,
                 ordered = coalesce($8, ordered), updated_at = now()
             WHERE id = $1 AND deleted_at IS NULL",
            &[
                &id,
                &change.name,
                &change.url,
                &headers,
                &set_rate,
                &rate,
                &period,
                &change.ordered,
            ],
        )
        .map_err(DbError::query("changing a channel"))?;
    if n == 1 && (set_rate || change.ordered.is_some()) {
        // The leader reads the controls when a sweep starts: wake it, so
        // a new limit or order applies now, not at the next tick.
        client
            .execute("SELECT pg_notify(wake_channel(), '')", &[])
            .map_err(DbError::query("waking the leader"))?;
    }
    Ok(n == 1)
}

/// Sets `disabled` (an operator's); false when no live channel has that id.
/// Either way the reason of an auto-disable is cleared, and enabling also
/// forgets the channel's run of failures, so it gets a full
/// `delivery.disable_after` again.
pub fn set_disabled(
    client: &mut impl GenericClient,
    id: Uuid,
    disabled: bool,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE channel SET disabled = $2, disabled_reason = NULL,
                 failing_since = CASE WHEN $2 THEN failing_since END, updated_at = now()
             WHERE id = $1 AND deleted_at IS NULL",
            &[&id, &disabled],
        )
        .map_err(DbError::query("changing a channel"))?;
    Ok(n == 1)
}

/// How many live channels the leader disabled (auto-disable) and are
/// still disabled.
pub fn count_auto_disabled(client: &mut impl GenericClient) -> Result<i64, DbError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM channel
             WHERE disabled AND disabled_reason IS NOT NULL AND deleted_at IS NULL",
            &[],
        )
        .map_err(DbError::query("counting auto-disabled channels"))?;
    Ok(row.get(0))
}

/// What a bulk resend needs to know of a channel.
#[derive(Debug, Clone)]
pub struct Standing {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Disabled.
    pub disabled: bool,
    /// Why the leader disabled it, if it did.
    pub disabled_reason: Option<String>,
    /// Soft-deleted.
    pub deleted: bool,
}

/// The channel's name and whether it can be delivered to; `None` when no
/// channel has that id.
pub fn standing(client: &mut impl GenericClient, id: Uuid) -> Result<Option<Standing>, DbError> {
    let row = client
        .query_opt(
            "SELECT namespace, name, disabled, disabled_reason, deleted_at IS NOT NULL
             FROM channel WHERE id = $1",
            &[&id],
        )
        .map_err(DbError::query("reading a channel"))?;
    Ok(row.map(|r| Standing {
        namespace: r.get(0),
        name: r.get(1),
        disabled: r.get(2),
        disabled_reason: r.get(3),
        deleted: r.get(4),
    }))
}

/// Records that the channel's run of failed attempts began at `since`
/// (unless one is recorded already).
pub fn start_failing(
    client: &mut impl GenericClient,
    id: Uuid,
    since: DateTime<Utc>,
) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE channel SET failing_since = $2 WHERE id = $1 AND failing_since IS NULL",
            &[&id, &since],
        )
        .map_err(DbError::query("recording a channel's failures"))?;
    Ok(())
}

/// Records that an attempt to the channel succeeded: no run of failures.
pub fn stop_failing(client: &mut impl GenericClient, id: Uuid) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE channel SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
            &[&id],
        )
        .map_err(DbError::query("recording a channel's recovery"))?;
    Ok(())
}

/// Disables a live, enabled channel with `reason`, if it has been failing
/// since `since` (not since later: an operator enabled it meanwhile).
/// Returns whether it did.
pub fn auto_disable(
    client: &mut impl GenericClient,
    id: Uuid,
    since: DateTime<Utc>,
    reason: &str,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE channel SET disabled = true, disabled_reason = $3, updated_at = now()
             WHERE id = $1 AND NOT disabled AND deleted_at IS NULL AND failing_since = $2",
            &[&id, &since, &reason],
        )
        .map_err(DbError::query("disabling a failing channel"))?;
    Ok(n == 1)
}

/// Rotates a live channel's signing secret to `new_secret`; the old one
/// stays valid (requests carry both signatures) for `overlap` from now.
/// Returns the end of the overlap, or `None` when no live channel has that
/// id. A zero overlap drops the old secret at once. Rotating again during an
/// overlap keeps only the secret being replaced, not the one before it.
pub fn rotate_secret(
    client: &mut impl GenericClient,
    id: Uuid,
    new_secret: &str,
    overlap: std::time::Duration,
) -> Result<Option<DateTime<Utc>>, DbError> {
    let micros = i64::try_from(overlap.as_micros()).unwrap_or(i64::MAX);
    let new_secret = secrets::seal(new_secret, secrets::SIGNING_SECRET);
    let row = client
        .query_opt(
            "UPDATE channel SET
                 previous_secret = CASE WHEN $3::bigint > 0 THEN signing_secret END,
                 previous_secret_until = CASE WHEN $3::bigint > 0
                     THEN now() + $3::bigint * interval '1 microsecond' END,
                 signing_secret = $2,
                 updated_at = now()
             WHERE id = $1 AND deleted_at IS NULL
             RETURNING coalesce(previous_secret_until, now())",
            &[&id, &new_secret, &micros],
        )
        .map_err(DbError::query("rotating a channel's secret"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Soft-deletes a channel; false when no live channel has that id.
pub fn delete(client: &mut impl GenericClient, id: Uuid) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE channel SET deleted_at = now(), updated_at = now()
             WHERE id = $1 AND deleted_at IS NULL",
            &[&id],
        )
        .map_err(DbError::query("deleting a channel"))?;
    Ok(n == 1)
}

/// The ids among `ids` that are not live channels of `namespace`.
pub fn missing(
    client: &mut impl GenericClient,
    namespace: &str,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, DbError> {
    let rows = client
        .query(
            "SELECT i FROM unnest($2::uuid[]) AS i
             WHERE NOT EXISTS (SELECT 1 FROM channel c
                               WHERE c.id = i AND c.namespace = $1 AND c.deleted_at IS NULL)",
            &[&namespace, &ids],
        )
        .map_err(DbError::query("checking channels"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
