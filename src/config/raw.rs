//! Stage one: the file as written (plain serde data, every key optional,
//! unknown keys rejected, numbers signed, durations as text), with the
//! defaults of docs/configuration.md.

use super::*;

/// The file as written: every key optional, numbers signed, durations as text.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// `[database]`
    pub database: RawDatabase,
    /// `[reconciler]`
    pub reconciler: RawReconciler,
    /// `[delivery]`
    pub delivery: RawDelivery,
    /// `[retention]`
    pub retention: RawRetention,
    /// `[log]`
    pub log: RawLog,
    /// `[metrics]`
    pub metrics: RawMetrics,
    /// `[api]`
    pub api: RawApi,
    /// `[secrets]`
    pub secrets: RawSecrets,
    /// `[svix]`
    pub svix: RawSvix,
}

/// `[svix]` as written (read only with `delivery.provider = "svix"`).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSvix {
    /// The Svix server's base URL (`https://api.svix.com`, `http://127.0.0.1:8071`).
    pub url: String,
    /// A file holding the bearer token.
    pub token_file: String,
    /// Total timeout of one call to Svix.
    pub timeout: String,
}

impl Default for RawSvix {
    fn default() -> Self {
        RawSvix {
            url: String::new(),
            token_file: String::new(),
            timeout: "10s".into(),
        }
    }
}

/// `[secrets]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSecrets {
    /// A file holding the key (32 random bytes, base64); empty = secrets
    /// stored in plain.
    pub key_file: String,
}

/// `[database]` as written.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDatabase {
    /// PostgreSQL URL; `DATABASE_URL` overrides it.
    pub url: String,
    /// Schema holding every object of the service.
    pub schema: String,
    /// Pool size; 0 = 4 per CPU, at least 8.
    pub pool_size: i64,
    /// Connect timeout.
    pub connect_timeout: String,
    /// Idle time before the first TCP keepalive probe (client and server).
    pub keepalives_idle: String,
    /// Time between TCP keepalive probes.
    pub keepalives_interval: String,
    /// Unanswered probes before the connection is dead.
    pub keepalives_count: i64,
    /// Longest sent data may stay unacknowledged; "0s" = the system's.
    pub tcp_user_timeout: String,
}

/// `[reconciler]` as written.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawReconciler {
    /// The leader's safety-net sweep period.
    pub interval: String,
    /// Worker threads; 0 = 8 per CPU, at least 16.
    pub workers: i64,
    /// Events per page of the due query.
    pub page_size: i64,
    /// Bounded channel capacity; 0 = 2 × workers.
    pub queue_capacity: i64,
    /// The due cut-off is `now - next_attempt_delay`.
    pub next_attempt_delay: String,
    /// PENDING/RESENDING longer than this fail.
    pub pending_timeout: String,
    /// SENDING longer than this fail.
    pub sending_timeout: String,
    /// Text the advisory lock key is derived from; `None` (not written):
    /// [`default_lock_key`] of the schema.
    pub lock_key: Option<String>,
    /// Shards the channels are split into (scale-out); 1 = one leader.
    pub shards: i64,
    /// A standby fences a leader whose heartbeat is this stale.
    pub takeover_after: String,
}

/// `[delivery]` as written.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDelivery {
    /// Total time of one HTTP attempt.
    pub timeout: String,
    /// TCP/TLS connect timeout of one attempt.
    pub connect_timeout: String,
    /// Delays after each failed attempt.
    pub retry_schedule: Vec<String>,
    /// Response body bytes kept (and read).
    pub max_response_bytes: i64,
    /// CIDRs exempt from the SSRF guard.
    pub allow_networks: Vec<String>,
    /// Largest payload `enqueue_event` accepts (set in the schema by `migrate`).
    pub max_payload_bytes: i64,
    /// PEM bundle of CA certificates trusted besides the system's; empty =
    /// none.
    pub ca_file: String,
    /// Deliveries of one channel in flight at once; 0 = a quarter of the
    /// workers, at least 1.
    pub max_in_flight_per_channel: i64,
    /// Attempts in a row without an answer (or failed, while nearly every
    /// recent attempt failed) that open a channel's breaker; 0 = no
    /// breaker (`reconcile::breaker` has the rule).
    pub breaker_failures: i64,
    /// The breaker's first cool-down (doubles while the endpoint looks dead, at most
    /// [`MAX_BREAKER_COOLDOWN`] or this, whichever is longer).
    pub breaker_cooldown: String,
    /// Only failures this long: the channel is disabled; "0s" = never.
    pub disable_after: String,
    /// Who delivers: `"http"` (this daemon) or `"svix"` (a Svix server).
    pub provider: String,
}

/// `[retention]` as written.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRetention {
    /// Finished events older than this are pruned; "0s" = kept forever.
    pub keep_finished: String,
    /// Audit rows older than this are pruned; "0s" = kept forever.
    pub keep_audit: String,
}

/// `[log]` as written.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    /// env_logger filter; `RUST_LOG` overrides it.
    pub level: String,
}

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMetrics {
    /// `host:port` of the metrics server; empty = off.
    pub listen: String,
}

/// `[api]` as written.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawApi {
    /// `host:port` of the management API and console; empty = off.
    pub listen: String,
    /// Most connections served at once.
    pub max_connections: i64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: i64,
    /// Requests per token per instance (`"100/s"`, `"6000/m"`).
    pub token_rate_limit: String,
    /// Base of portal links; empty = relative links.
    pub public_url: String,
    /// Longest lifetime of a portal link.
    pub max_portal_ttl: String,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            listen: String::new(),
            max_connections: 256,
            max_body_bytes: 1024 * 1024,
            token_rate_limit: "100/s".into(),
            public_url: String::new(),
            max_portal_ttl: "24h".into(),
        }
    }
}

impl Default for RawDatabase {
    fn default() -> Self {
        RawDatabase {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            schema: "notification".into(),
            pool_size: 0,
            connect_timeout: "5s".into(),
            keepalives_idle: "10s".into(),
            keepalives_interval: "5s".into(),
            keepalives_count: 3,
            tcp_user_timeout: "30s".into(),
        }
    }
}

impl Default for RawReconciler {
    fn default() -> Self {
        RawReconciler {
            interval: "15s".into(),
            workers: 0,
            page_size: 50,
            queue_capacity: 0,
            next_attempt_delay: "0s".into(),
            pending_timeout: "3h".into(),
            sending_timeout: "48h".into(),
            lock_key: None,
            shards: 1,
            takeover_after: "10s".into(),
        }
    }
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            timeout: "30s".into(),
            connect_timeout: "10s".into(),
            retry_schedule: ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]
                .map(String::from)
                .to_vec(),
            max_response_bytes: 1024,
            allow_networks: Vec::new(),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            ca_file: String::new(),
            max_in_flight_per_channel: 0,
            breaker_failures: 5,
            breaker_cooldown: "30s".into(),
            disable_after: "5d".into(),
            provider: "http".into(),
        }
    }
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            keep_finished: "30d".into(),
            keep_audit: "365d".into(),
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
        }
    }
}
