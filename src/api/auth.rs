//! Bearer tokens on API requests: the `Authorization` header parsed, the
//! token looked up by its hash, and the answer kept for at most
//! [`CACHE_TTL`] so that a busy client does not cost one query per request
//! while a revoked or expired token is still refused within a second on
//! every instance (each looks the token up again once its entry is older).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::ApiError;
use crate::db::tokens::Token;
use crate::ops::tokens;

/// How long a looked-up token is trusted without asking the database.
pub const CACHE_TTL: Duration = Duration::from_millis(500);

/// Most tokens remembered (the cache is emptied when full).
const CACHE_MAX: usize = 4096;

/// Tokens recently looked up, by hash: the live ones, and (so that a flood
/// of made-up tokens does not take a database connection per request) the
/// refused ones, each trusted for [`CACHE_TTL`].
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Looked>>,
}

/// A lookup's answer (`None`: refused) and when it was made.
type Looked = (Option<Token>, Instant);

impl TokenCache {
    /// The live token the request presents, or 401.
    pub fn authenticate(
        &self,
        header: Option<&str>,
        client: impl FnOnce() -> Result<crate::db::PooledClient, ApiError>,
    ) -> Result<Token, ApiError> {
        let presented = bearer(header)?;
        if !tokens::well_formed(presented) {
            return Err(refused());
        }
        let hash = tokens::hash(presented);
        let now = Instant::now();
        let cached = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .filter(|(_, at)| now.duration_since(*at) < CACHE_TTL)
            .map(|(t, _)| t.clone());
        let cached = match cached {
            Some(None) => return Err(refused()),
            Some(Some(t)) => Some(t),
            None => None,
        };
        let token = match cached {
            Some(t) => Some(t),
            None => {
                let mut conn = client()?;
                let found = tokens::authenticate(&mut conn.client, presented)?;
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                if entries.len() >= CACHE_MAX {
                    entries.clear();
                }
                entries.insert(hash, (found.clone(), now));
                found
            }
        };
        match token {
            Some(t) if t.expires_at.is_none_or(|at| at > chrono::Utc::now()) => Ok(t),
            _ => Err(refused()),
        }
    }
}

fn refused() -> ApiError {
    ApiError::new(401, "the bearer token is unknown, revoked or expired")
}

/// The token of an `Authorization: Bearer TOKEN` header, or 401.
fn bearer(header: Option<&str>) -> Result<&str, ApiError> {
    let header = header.ok_or_else(|| {
        ApiError::new(
            401,
            "send an API token: Authorization: Bearer TOKEN (see `token create`)",
        )
    })?;
    let (scheme, token) = header.trim().split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::new(
            401,
            "the Authorization header must be: Bearer TOKEN",
        ));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_headers_are_read() {
        assert_eq!(bearer(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(Some("bearer  abc ")).unwrap(), "abc");
        for bad in [
            None,
            Some(""),
            Some("Basic abc"),
            Some("Bearer"),
            Some("Bearer  "),
        ] {
            assert_eq!(bearer(bad).unwrap_err().status, 401, "{bad:?}");
        }
    }
}
