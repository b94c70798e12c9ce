//! API tokens: making one (shown once, stored as its SHA-256), listing,
//! revoking, and checking a presented bearer token. A token is an admin
//! token (every namespace, `/v1/status`) or bound to one namespace, and may
//! be read-only.

use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{name_like, OpsError};
use crate::db::tokens::{self, NewToken, Token};

/// What every token starts with (so secret scanners can find leaked ones).
pub const TOKEN_PREFIX: &str = "nrt_";

/// Longest `--expires`.
pub const MAX_EXPIRY: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// What a new token may do.
#[derive(Debug)]
pub struct NewTokenInput {
    /// A name for people.
    pub name: String,
    /// Its namespace; `None` = an admin token.
    pub namespace: Option<String>,
    /// Refused on every write.
    pub read_only: bool,
    /// Lifetime; `None` = until revoked.
    pub expires: Option<Duration>,
}

/// A token just made: the stored record and the token itself (shown once).
#[derive(Debug, serde::Serialize)]
pub struct CreatedToken {
    /// The record.
    #[serde(flatten)]
    pub record: Token,
    /// The bearer token.
    pub token: String,
}

/// The SHA-256 of a presented token (what is stored and looked up).
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Checks a new token without the database.
pub fn check_new(input: &NewTokenInput) -> Result<(), OpsError> {
    expiry_micros(input).map(|_| ())
}

fn expiry_micros(input: &NewTokenInput) -> Result<Option<i64>, OpsError> {
    name_like("name", &input.name)?;
    if let Some(ns) = &input.namespace {
        name_like("namespace", ns)?;
    }
    Ok(match input.expires {
        None => None,
        Some(d) if d.is_zero() || d > MAX_EXPIRY => {
            return Err(OpsError::invalid(
                "expires",
                format!(
                    "{}: must be more than 0s and at most {}",
                    humantime::format_duration(d),
                    humantime::format_duration(MAX_EXPIRY)
                ),
            ))
        }
        Some(d) => Some(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
    })
}

/// Makes a token.
pub fn create(
    client: &mut impl postgres::GenericClient,
    input: NewTokenInput,
) -> Result<CreatedToken, OpsError> {
    let expires_in_micros = expiry_micros(&input)?;
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let record = tokens::create(
        client,
        &NewToken {
            name: &input.name,
            namespace: input.namespace.as_deref(),
            read_only: input.read_only,
            hash: &hash(&token),
            expires_in_micros,
        },
    )?;
    Ok(CreatedToken { record, token })
}

/// Every token (never the token itself).
pub fn list(client: &mut impl postgres::GenericClient) -> Result<Vec<Token>, OpsError> {
    Ok(tokens::list(client)?)
}

/// Revokes a token: every instance refuses it from its next check.
pub fn revoke(client: &mut impl postgres::GenericClient, id: Uuid) -> Result<(), OpsError> {
    if !tokens::revoke(client, id)? {
        return Err(OpsError::NotFound(format!(
            "no token {id} (unknown or already revoked)"
        )));
    }
    Ok(())
}

/// Whether `presented` has the form of a token (checked before any lookup).
pub fn well_formed(presented: &str) -> bool {
    presented.len() == TOKEN_PREFIX.len() + 43
        && presented.starts_with(TOKEN_PREFIX)
        && presented[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The live token a presented bearer token is, if it is one.
pub fn authenticate(
    client: &mut impl postgres::GenericClient,
    presented: &str,
) -> Result<Option<Token>, OpsError> {
    if !well_formed(presented) {
        return Ok(None);
    }
    Ok(tokens::find_live(client, &hash(presented))?)
}

/// Whether `token` may act in namespace `ns`.
pub fn may_see(token: &Token, ns: &str) -> bool {
    token.admin || token.namespace.as_deref() == Some(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(namespace: Option<&str>) -> Token {
        Token {
            id: Uuid::nil(),
            name: "t".into(),
            namespace: namespace.map(String::from),
            admin: namespace.is_none(),
            read_only: false,
            created_at: chrono::Utc::now(),
            expires_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn a_namespace_token_sees_only_its_namespace_and_admin_sees_all() {
        assert!(may_see(&token(Some("a")), "a"));
        assert!(!may_see(&token(Some("a")), "b"));
        assert!(may_see(&token(None), "b"));
    }

    #[test]
    fn only_tokens_of_the_made_form_are_looked_up() {
        let made = format!("{TOKEN_PREFIX}{}", "A".repeat(43));
        assert!(well_formed(&made));
        assert!(!well_formed("nrt_x"));
        assert!(!well_formed(&format!("{TOKEN_PREFIX}{}", "!".repeat(43))));
        assert!(!well_formed(&"A".repeat(47)));
    }

    #[test]
    fn the_hash_is_sha256_of_the_token() {
        assert_eq!(
            hex(&hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
