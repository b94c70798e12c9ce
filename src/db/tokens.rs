//! The `api_token` table: API bearer tokens, stored as the SHA-256 of the
//! token (the token itself is shown once, by `token create`, and never
//! stored). Making and checking tokens is `ops::tokens`' business.

use chrono::{DateTime, Utc};
use postgres::GenericClient;
use uuid::Uuid;

use super::DbError;

/// A token as stored (never the token itself).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Token {
    /// Id (what `token revoke` takes).
    pub id: Uuid,
    /// A name for people.
    pub name: String,
    /// The one namespace it works in; `None` for an admin token.
    pub namespace: Option<String>,
    /// Works in every namespace and on `/v1/status`.
    pub admin: bool,
    /// Refused on every write.
    pub read_only: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What a new token is.
#[derive(Debug)]
pub struct NewToken<'a> {
    /// Name.
    pub name: &'a str,
    /// Namespace; `None` = admin.
    pub namespace: Option<&'a str>,
    /// Read-only.
    pub read_only: bool,
    /// SHA-256 of the token.
    pub hash: &'a [u8],
    /// Lifetime in microseconds from now; `None` = no expiry.
    pub expires_in_micros: Option<i64>,
}

const COLUMNS: &str = "id, name, namespace, admin, read_only, created_at, expires_at, revoked_at";

fn from_row(r: &postgres::Row) -> Token {
    Token {
        id: r.get(0),
        name: r.get(1),
        namespace: r.get(2),
        admin: r.get(3),
        read_only: r.get(4),
        created_at: r.get(5),
        expires_at: r.get(6),
        revoked_at: r.get(7),
    }
}

/// Stores a token's hash; returns the stored token.
pub fn create(client: &mut impl GenericClient, new: &NewToken<'_>) -> Result<Token, DbError> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO api_token (name, namespace, admin, read_only, token_hash, expires_at)
                 VALUES ($1, $2, $2::text IS NULL, $3, $4,
                         now() + $5::bigint * interval '1 microsecond')
                 RETURNING {COLUMNS}"
            ),
            &[
                &new.name,
                &new.namespace,
                &new.read_only,
                &new.hash,
                &new.expires_in_micros,
            ],
        )
        .map_err(DbError::query("creating a token"))?;
    Ok(from_row(&row))
}

/// Every token, newest first.
pub fn list(client: &mut impl GenericClient) -> Result<Vec<Token>, DbError> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM api_token ORDER BY created_at DESC, id"),
            &[],
        )
        .map_err(DbError::query("listing tokens"))?;
    Ok(rows.iter().map(from_row).collect())
}

/// Revokes a token; false when no unrevoked token has that id.
pub fn revoke(client: &mut impl GenericClient, id: Uuid) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE api_token SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .map_err(DbError::query("revoking a token"))?;
    Ok(n == 1)
}

/// The live (not revoked, not expired) token with this hash, if any.
pub fn find_live(client: &mut impl GenericClient, hash: &[u8]) -> Result<Option<Token>, DbError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM api_token
                 WHERE token_hash = $1 AND revoked_at IS NULL
                   AND (expires_at IS NULL OR expires_at > now())"
            ),
            &[&hash],
        )
        .map_err(DbError::query("checking a token"))?;
    Ok(row.as_ref().map(from_row))
}
