//! Bearer tokens on API requests: the `Authorization` header parsed, the
//! token looked up by its hash, and the answer kept for at most
//! [`CACHE_TTL`] so that a busy client does not cost one query per request
//! while a revoked or expired token is still refused within a second on
//! every instance (each looks the token up again once its entry is older).
//!
//! Lookups run on one connection of their own, never on the pool the
//! handlers use: a flood of made-up tokens (each a cache miss) queues on
//! that connection and cannot take the connections real tokens' requests
//! need; their refusals are cached too, in a bounded map of their own so
//! that a flood cannot evict the live tokens. [`TokenLimiter`] is the
//! per-token request rate (`api.token_rate_limit`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::error::ApiError;
use crate::config::DatabaseConfig;
use crate::db::tokens::Token;
use crate::ops::tokens;
use crate::rate_limit::RateLimit;

/// How long a looked-up token is trusted without asking the database.
pub const CACHE_TTL: Duration = Duration::from_millis(500);

/// Most live tokens remembered (emptied when full).
const CACHE_MAX: usize = 4096;

/// Most refused tokens remembered (emptied when full: a flood of made-up
/// tokens empties only this map).
const REFUSED_MAX: usize = 16_384;

/// Tokens recently looked up, by hash: the live ones, and the refused ones,
/// each trusted for [`CACHE_TTL`]; and the connection misses are looked up
/// on.
pub struct TokenCache {
    live: Mutex<HashMap<[u8; 32], (Token, Instant)>>,
    refused: Mutex<HashMap<[u8; 32], Instant>>,
    conn: Mutex<Option<postgres::Client>>,
    database: DatabaseConfig,
}

impl TokenCache {
    /// An empty cache whose lookups connect with `database`.
    pub fn new(database: DatabaseConfig) -> TokenCache {
        TokenCache {
            live: Mutex::default(),
            refused: Mutex::default(),
            conn: Mutex::new(None),
            database,
        }
    }

    /// The live token the request presents, or 401.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Token, ApiError> {
        let presented = bearer(header)?;
        if !tokens::well_formed(presented) {
            return Err(refused());
        }
        let hash = tokens::hash(presented);
        let now = Instant::now();
        let fresh = |at: &Instant| now.duration_since(*at) < CACHE_TTL;
        let cached = lock(&self.live)
            .get(&hash)
            .filter(|(_, at)| fresh(at))
            .map(|(t, _)| t.clone());
        let token = match cached {
            Some(t) => Some(t),
            None => {
                if lock(&self.refused).get(&hash).is_some_and(fresh) {
                    return Err(refused());
                }
                let found = self.look_up(presented)?;
                match &found {
                    Some(t) => {
                        let mut live = lock(&self.live);
                        if live.len() >= CACHE_MAX {
                            live.clear();
                        }
                        live.insert(hash, (t.clone(), now));
                    }
                    None => {
                        let mut refused = lock(&self.refused);
                        if refused.len() >= REFUSED_MAX {
                            refused.clear();
                        }
                        refused.insert(hash, now);
                    }
                }
                found
            }
        };
        match token {
            Some(t) if t.expires_at.is_none_or(|at| at > chrono::Utc::now()) => Ok(t),
            _ => Err(refused()),
        }
    }

    /// Looks a token up on the cache's own connection (made when missing,
    /// dropped when broken).
    fn look_up(&self, presented: &str) -> Result<Option<Token>, ApiError> {
        let mut conn = lock(&self.conn);
        if conn.is_none() {
            let client = crate::db::connect(&self.database, &crate::lock::app_name("api-auth"))
                .map_err(|e| {
                    log::warn!("api: cannot connect to check tokens: {e}");
                    ApiError::new(503, "the database is unreachable; try again shortly")
                })?;
            *conn = Some(client);
        }
        let Some(client) = conn.as_mut() else {
            return Err(ApiError::new(
                503,
                "the database is unreachable; try again shortly",
            ));
        };
        match tokens::authenticate(client, presented) {
            Ok(found) => Ok(found),
            Err(e) => {
                *conn = None;
                Err(ApiError::from(e))
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The per-token request rate (`api.token_rate_limit`, per instance): a
/// token bucket per token id holding up to one window's requests, refilled
/// at the limit's rate. Buckets of tokens idle for a window are forgotten
/// when the map grows large.
pub struct TokenLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<Uuid, (f64, Instant)>>,
}

/// Buckets kept before idle ones are forgotten.
const BUCKETS_MAX: usize = 65_536;

impl TokenLimiter {
    /// A limiter allowing `limit` per token.
    pub fn new(limit: RateLimit) -> TokenLimiter {
        TokenLimiter {
            limit,
            buckets: Mutex::default(),
        }
    }

    /// Takes one request of `token` at `now`; `Err(wait)` when over the
    /// limit, `wait` being how long until one more request is allowed.
    pub fn take(&self, token: Uuid, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(self.limit.count);
        let per_sec = capacity / f64::from(self.limit.per_secs.max(1));
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= BUCKETS_MAX {
            let window = Duration::from_secs(u64::from(self.limit.per_secs));
            buckets.retain(|_, (_, at)| now.duration_since(*at) < window);
        }
        let (level, at) = buckets.entry(token).or_insert((capacity, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * per_sec;
        *level = (*level + refill).min(capacity);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *level) / per_sec))
        }
    }
}

/// 429 for a token over `api.token_rate_limit`, with `Retry-After` in
/// whole seconds (at least 1).
pub fn too_many(wait: Duration, limit: RateLimit) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(
        429,
        format!(
            "this token is over its request rate ({limit}, api.token_rate_limit); retry after {} s",
            secs.max(1)
        ),
    )
    .with_header("retry-after", secs.max(1).to_string())
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
    fn a_token_over_its_rate_waits_and_others_do_not() {
        let limiter = TokenLimiter::new(RateLimit::parse("3/s").unwrap());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.take(a, t0).unwrap();
        }
        let wait = limiter.take(a, t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(334),
            "{wait:?}"
        );
        limiter.take(b, t0).unwrap();
        limiter.take(a, t0 + Duration::from_millis(340)).unwrap();
        let e = too_many(Duration::from_millis(10), RateLimit::parse("3/s").unwrap());
        assert_eq!((e.status, e.headers[0].1.as_str()), (429, "1"));
    }

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
