//! Configuration: the TOML file of docs/configuration.md, read in two stages.
//!
//! Stage one parses the file into [`RawConfig`] (plain serde data, unknown
//! keys rejected, numbers kept signed and durations kept as text so that a bad
//! value can be reported in our own words). Stage two, [`RawConfig::resolve`],
//! validates every key and resolves the "0 means automatic" values into a
//! [`Config`] of typed values. Building the pool, the HTTP agent and the retry
//! policy from a `Config` is left to the modules that own them.
//!
//! Every error names the key and the bad value, in one line.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod check;
pub mod db_url;

/// Upper bound for `reconciler.workers`: a worker is a thread that needs a
/// database connection only to record an outcome, so thousands are
/// affordable (docs/benchmarks.md "Concurrency"); beyond this a value is
/// almost certainly a typo.
pub const MAX_WORKERS: i64 = 4096;

/// Upper bound for `database.pool_size`: what earlier versions allowed
/// (1,024 workers + 2), so that no existing file breaks. Far more than is
/// useful: PostgreSQL's default `max_connections` is 100.
pub const MAX_POOL_SIZE: i64 = 1026;

/// The automatic `reconciler.workers` for `cpus` CPUs: 8 per CPU, at least
/// 16. Workers mostly wait on the network, so several per CPU keep the
/// machine busy; 16 leave room for a few slow endpoints on a small machine.
pub fn auto_workers(cpus: usize) -> usize {
    (8 * cpus).clamp(16, MAX_WORKERS as usize)
}

/// The automatic `delivery.max_in_flight_per_channel` for `workers`: a
/// quarter of them, at least 1, so that one hanging endpoint can hold at
/// most a quarter of the workers.
pub fn auto_channel_cap(workers: usize) -> usize {
    (workers / 4).max(1)
}

/// The workers the automatic cap keeps free for other channels' new work
/// when a channel borrows beyond its share (the work-conserving cap, see
/// `Channels::borrow`): one per 64 workers, at least 1, so that one
/// channel alone may use at least 98% of 64 workers and 15 of 16.
pub fn auto_reserve(workers: usize) -> usize {
    (workers / 64).max(1)
}

/// The longest a breaker's cool-down doubles to (unless
/// `delivery.breaker_cooldown` itself is longer).
pub const MAX_BREAKER_COOLDOWN: Duration = Duration::from_secs(600);

/// The longest `database.keepalives_idle` / `keepalives_interval`, in
/// seconds (Linux refuses more).
pub const MAX_TCP_SECONDS: u64 = 32767;

/// The shortest `reconciler.takeover_after`: three of the leader's
/// heartbeats (one a second, `reconcile::lease::HEARTBEAT_EVERY`), so that a
/// healthy leader is never taken for a silent one.
pub const MIN_TAKEOVER_AFTER: Duration = Duration::from_secs(3);

/// The longest `reconciler.takeover_after`: a stale leader left longer than
/// this would stop deliveries for longer than anyone wants.
pub const MAX_TAKEOVER_AFTER: Duration = Duration::from_secs(3600);

/// The automatic `database.pool_size` for `cpus` CPUs: 4 per CPU, at least
/// 8. Workers hold a connection only while they record an outcome, so a
/// few per CPU keep up with hundreds of workers.
pub fn auto_pool_size(cpus: usize) -> u32 {
    u32::try_from(cpus.saturating_mul(4))
        .unwrap_or(u32::MAX)
        .max(8)
}

/// Where a command looks for its configuration when `--config` is not
/// given, in this order; when none exists the defaults (and the environment)
/// apply.
pub const SEARCH_PATH: [&str; 2] = ["./config.toml", "/etc/notification-reconciler/config.toml"];

/// What [`Config::path`] says when no file was found on [`SEARCH_PATH`].
pub const DEFAULTS_SOURCE: &str =
    "<defaults: no ./config.toml or /etc/notification-reconciler/config.toml>";

/// The first of `candidates` that exists; `None` when none does. Any error
/// other than "not found" (a directory, no permission) is reported for that
/// path rather than silently skipped.
pub fn find_config(candidates: &[&Path]) -> Result<Option<PathBuf>, ConfigError> {
    for path in candidates {
        match std::fs::metadata(path) {
            Ok(_) => return Ok(Some(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(None)
}

/// A configuration problem. The message names the key and the bad value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable).
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given with `--config`.
        path: PathBuf,
        /// Why the read failed.
        source: std::io::Error,
    },
    /// The file is not TOML, has an unknown key or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What is wrong, with the key and line.
        message: String,
    },
    /// The `DATABASE_URL` environment variable (which overrides
    /// `database.url`) is not a usable URL; `value` has its password hidden.
    #[error("environment variable DATABASE_URL = {value}: {problem} (DATABASE_URL overrides database.url of the config file)")]
    DatabaseUrlEnv {
        /// The value, password redacted, quoted.
        value: String,
        /// What is acceptable.
        problem: String,
    },
    /// A key has a value outside what it accepts.
    #[error("{path}: {key} = {value}: {problem}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted key, e.g. `reconciler.workers`.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What is acceptable.
        problem: String,
    },
}

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

/// The validated configuration, with every automatic value resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// `[database]`
    pub database: DatabaseConfig,
    /// `[reconciler]`
    pub reconciler: ReconcilerConfig,
    /// `[delivery]`
    pub delivery: DeliveryConfig,
    /// `[retention]`
    pub retention: RetentionConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[metrics]`
    pub metrics: MetricsConfig,
    /// `[api]`
    pub api: ApiConfig,
    /// `[secrets]`
    pub secrets: SecretsConfig,
}

/// Validated `[secrets]`.
#[derive(Debug, Clone, Default)]
pub struct SecretsConfig {
    /// The key file, if one is set.
    pub key_file: Option<PathBuf>,
    /// The key read from it (`Debug` shows only its id).
    pub key: Option<crate::secrets::Key>,
}

/// Validated `[database]`.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// PostgreSQL URL as written (may hold a password: print it with
    /// [`redact_url`]).
    pub url: String,
    /// The URL the driver is given: `url` without the TLS parameters,
    /// which [`tls`](Self::tls) holds instead.
    pub driver_url: String,
    /// `sslmode`, `sslrootcert`, `sslcert`, `sslkey` of `url`, typed, the
    /// certificates loaded: every connection uses them.
    pub tls: db_url::DbTls,
    /// Schema name, a plain lower-case identifier.
    pub schema: String,
    /// Pool size, ≥ 1, independent of the number of workers.
    pub pool_size: u32,
    /// Connect timeout for every connection.
    pub connect_timeout: Duration,
    /// TCP keepalives and `tcp_user_timeout` of every connection, both ends.
    pub tcp: TcpSettings,
}

/// How every database connection notices a dead peer: TCP keepalives and
/// `tcp_user_timeout`, set on our socket and, through the session's
/// options, on the server's socket of the same connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSettings {
    /// Idle time before the first keepalive probe (whole seconds, ≥ 1s).
    pub keepalives_idle: Duration,
    /// Time between probes (whole seconds, ≥ 1s).
    pub keepalives_interval: Duration,
    /// Unanswered probes before the connection is dead (1..=127).
    pub keepalives_count: u32,
    /// Longest sent data may stay unacknowledged; zero = the system's default.
    pub user_timeout: Duration,
}

impl TcpSettings {
    /// How long a silent peer goes unnoticed at most when nothing is sent
    /// (keepalives: idle + interval × count).
    pub fn dead_after(&self) -> Duration {
        self.keepalives_idle + self.keepalives_interval * self.keepalives_count
    }
}

/// Validated `[reconciler]`.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// The leader's safety-net sweep period (deliveries do not wait for it).
    pub interval: Duration,
    /// Worker threads, ≥ 1.
    pub workers: usize,
    /// Events per page, ≥ 1.
    pub page_size: u32,
    /// Bounded channel capacity, ≥ 1.
    pub queue_capacity: usize,
    /// Cut-off offset.
    pub next_attempt_delay: Duration,
    /// Pending timeout.
    pub pending_timeout: Duration,
    /// Sending timeout.
    pub sending_timeout: Duration,
    /// Lock key text.
    pub lock_key: String,
    /// Shards, 1..=[`MAX_SHARDS`] (1 = one leader, as before).
    pub shards: u32,
    /// A standby ends the session of a leader (of the lock or of a shard)
    /// whose heartbeat is older than this, then takes over (`fence`).
    pub takeover_after: Duration,
}

/// Validated `[delivery]`.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Total timeout of one attempt.
    pub timeout: Duration,
    /// Connect timeout of one attempt.
    pub connect_timeout: Duration,
    /// Delays after failed attempts 1, 2, … (non-empty).
    pub retry_schedule: Vec<Duration>,
    /// Response bytes read and kept.
    pub max_response_bytes: usize,
    /// Networks the SSRF guard lets through (default none).
    pub allow_networks: Vec<ipnet::IpNet>,
    /// The payload size cap `migrate` stores for `enqueue_event`.
    pub max_payload_bytes: i64,
    /// `delivery.ca_file` as resolved (relative to the config file's
    /// directory), if set.
    pub ca_file: Option<PathBuf>,
    /// The certificates read from `ca_file`, trusted besides the system's
    /// (at least one when `ca_file` is set).
    pub ca_certs: Vec<ureq::tls::Certificate<'static>>,
    /// Deliveries of one channel in flight at once (queued or being
    /// attempted), ≥ 1: a hard cap when set, else (0 in the file) the
    /// channel's share, beyond which it may borrow idle workers.
    pub max_in_flight_per_channel: usize,
    /// `max_in_flight_per_channel` was 0 (automatic): a channel may go
    /// beyond it while workers are idle (the work-conserving cap).
    pub work_conserving: bool,
    /// Attempts in a row without an answer (or failed, while nearly every
    /// recent attempt failed) that open a channel's breaker; 0 = off.
    pub breaker_failures: u32,
    /// The breaker's first cool-down, > 0.
    pub breaker_cooldown: Duration,
    /// Auto-disable after only failures this long; zero = never.
    pub disable_after: Duration,
}

/// Validated `[retention]`.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// An event older than this whose deliveries are all finished is
    /// pruned (by the leader, and by `prune`); zero = kept forever.
    pub keep_finished: Duration,
    /// An audit row older than this is pruned; zero = kept forever.
    pub keep_audit: Duration,
}

/// Validated `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// env_logger filter string.
    pub level: String,
}

/// Validated `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Where the metrics server listens, if anywhere.
    pub listen: Option<SocketAddr>,
}

/// Validated `[api]`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Where the management API and console listen, if anywhere.
    pub listen: Option<SocketAddr>,
    /// Most connections served at once (1 to 65,536).
    pub max_connections: usize,
    /// Largest request body accepted (1 KiB to 64 MiB).
    pub max_body_bytes: usize,
    /// Requests per token per instance above which the API answers 429.
    pub token_rate_limit: crate::rate_limit::RateLimit,
    /// Base of portal links (no trailing slash); `None`: relative links.
    pub public_url: Option<String>,
    /// Longest lifetime of a portal link.
    pub max_portal_ttl: Duration,
}

impl Config {
    /// Reads, parses and validates `path`, applying `database_url` (the
    /// `DATABASE_URL` environment variable) over `database.url`.
    pub fn load(path: &Path, database_url: Option<String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut raw = RawConfig::parse(path, &text)?;
        if let Some(url) = database_url.filter(|u| !u.is_empty()) {
            raw.database.url = checked_env_url(url)?;
        }
        raw.resolve(path)
    }

    /// Loads the configuration the command line asks for: `explicit` (the
    /// `--config` path, which must exist) when given, else the first of
    /// [`SEARCH_PATH`] that exists, else the defaults (with `database_url`
    /// applied). A search-path file that exists but cannot be read is an
    /// error, not skipped.
    pub fn load_from(
        explicit: Option<&Path>,
        database_url: Option<String>,
    ) -> Result<Config, ConfigError> {
        let candidates: Vec<&Path> = SEARCH_PATH.iter().map(Path::new).collect();
        // An explicit path is used as given: the search path is not even
        // looked at (an unreadable ./config.toml must not matter then).
        let found = match explicit {
            Some(path) => Some(path.to_path_buf()),
            None => find_config(&candidates)?,
        };
        match found {
            Some(path) => Config::load(&path, database_url),
            None => {
                let mut raw = RawConfig::default();
                if let Some(url) = database_url.filter(|u| !u.is_empty()) {
                    raw.database.url = checked_env_url(url)?;
                }
                raw.resolve(Path::new(DEFAULTS_SOURCE))
            }
        }
    }

    /// Builds the config a test or the benchmark uses: defaults, with `url`.
    pub fn for_url(url: &str) -> Config {
        let mut raw = RawConfig::default();
        raw.database.url = url.to_string();
        raw.resolve(Path::new("<built-in>"))
            .expect("the built-in defaults are valid")
    }

    /// The effective configuration as TOML, with the database password
    /// redacted (what `check-config` prints).
    pub fn to_redacted_toml(&self) -> String {
        let d = format_duration;
        let effective = Effective {
            database: EffDatabase {
                url: redact_url(&self.database.url),
                schema: self.database.schema.clone(),
                pool_size: self.database.pool_size,
                connect_timeout: d(self.database.connect_timeout),
                keepalives_idle: d(self.database.tcp.keepalives_idle),
                keepalives_interval: d(self.database.tcp.keepalives_interval),
                keepalives_count: self.database.tcp.keepalives_count,
                tcp_user_timeout: d(self.database.tcp.user_timeout),
            },
            reconciler: EffReconciler {
                interval: d(self.reconciler.interval),
                workers: self.reconciler.workers,
                page_size: self.reconciler.page_size,
                queue_capacity: self.reconciler.queue_capacity,
                next_attempt_delay: d(self.reconciler.next_attempt_delay),
                pending_timeout: d(self.reconciler.pending_timeout),
                sending_timeout: d(self.reconciler.sending_timeout),
                lock_key: self.reconciler.lock_key.clone(),
                shards: self.reconciler.shards,
                takeover_after: d(self.reconciler.takeover_after),
            },
            delivery: EffDelivery {
                timeout: d(self.delivery.timeout),
                connect_timeout: d(self.delivery.connect_timeout),
                retry_schedule: self.delivery.retry_schedule.iter().map(|v| d(*v)).collect(),
                max_response_bytes: self.delivery.max_response_bytes,
                allow_networks: self
                    .delivery
                    .allow_networks
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                max_payload_bytes: self.delivery.max_payload_bytes,
                max_in_flight_per_channel: self.delivery.max_in_flight_per_channel,
                breaker_failures: self.delivery.breaker_failures,
                breaker_cooldown: d(self.delivery.breaker_cooldown),
                disable_after: d(self.delivery.disable_after),
                ca_file: self
                    .delivery
                    .ca_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            },
            retention: EffRetention {
                keep_finished: d(self.retention.keep_finished),
                keep_audit: d(self.retention.keep_audit),
            },
            log: EffLog {
                level: self.log.level.clone(),
            },
            metrics: EffMetrics {
                listen: self
                    .metrics
                    .listen
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            },
            api: EffApi {
                listen: self.api.listen.map(|a| a.to_string()).unwrap_or_default(),
                max_connections: self.api.max_connections,
                max_body_bytes: self.api.max_body_bytes,
                token_rate_limit: self.api.token_rate_limit.to_string(),
                public_url: self.api.public_url.clone().unwrap_or_default(),
                max_portal_ttl: d(self.api.max_portal_ttl),
            },
            secrets: EffSecrets {
                key_file: self
                    .secrets
                    .key_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            },
        };
        toml::to_string(&effective).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

impl RawConfig {
    /// Parses TOML text; errors name the key path and the line.
    pub fn parse(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|err| {
            let key = err.path().to_string();
            let inner = err.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = inner.message().trim().replace('\n', " ");
            let message = match (msg.strip_prefix("unknown field "), line) {
                // serde_path_to_error's path already ends with the unknown key.
                (Some(rest), _) => format!("unknown key `{key}`: {}", rest),
                (None, Some(line)) if key != "." => format!("line {line}: {key}: {msg}"),
                (None, Some(line)) => format!("line {line}: {msg}"),
                (None, None) => format!("{key}: {msg}"),
            };
            ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            }
        })
    }

    /// Validates every key and resolves automatic values.
    pub fn resolve(self, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &'static str, value: String, problem: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            value,
            problem: problem.to_string(),
        };
        let duration = |key: &'static str, value: &str| -> Result<Duration, ConfigError> {
            humantime::parse_duration(value.trim()).map_err(|e| {
                invalid(
                    key,
                    format!("{value:?}"),
                    &format!("not a duration ({e}); write e.g. \"15s\", \"5m\", \"48h\""),
                )
            })
        };
        let positive = |key: &'static str, value: &str| -> Result<Duration, ConfigError> {
            let d = duration(key, value)?;
            if d.is_zero() {
                return Err(invalid(key, format!("{value:?}"), "must be longer than 0s"));
            }
            Ok(d)
        };
        let r = &self.reconciler;
        let db = &self.database;
        let dl = &self.delivery;

        // [database]
        let (driver_url, tls) = check_postgres_url(&db.url)
            .map_err(|p| invalid("database.url", format!("{:?}", redact_url(&db.url)), &p))?;
        if !is_identifier(&db.schema) {
            return Err(invalid(
                "database.schema",
                format!("{:?}", db.schema),
                "must be a lower-case identifier (letters, digits, _; not starting with a digit; at most 63 characters)",
            ));
        }
        let connect_timeout = positive("database.connect_timeout", &db.connect_timeout)?;
        let tcp_seconds = |key: &'static str, value: &str| -> Result<Duration, ConfigError> {
            let d = duration(key, value)?;
            if d.subsec_nanos() != 0 || !(1..=MAX_TCP_SECONDS).contains(&d.as_secs()) {
                return Err(invalid(
                    key,
                    format!("{value:?}"),
                    &format!("must be whole seconds between \"1s\" and \"{MAX_TCP_SECONDS}s\""),
                ));
            }
            Ok(d)
        };
        let keepalives_count = match db.keepalives_count {
            n @ 1..=127 => n as u32,
            n => {
                return Err(invalid(
                    "database.keepalives_count",
                    n.to_string(),
                    "must be between 1 and 127",
                ))
            }
        };
        let user_timeout = duration("database.tcp_user_timeout", &db.tcp_user_timeout)?;
        if user_timeout.as_millis() > i32::MAX as u128
            || user_timeout.subsec_nanos() % 1_000_000 != 0
        {
            return Err(invalid(
                "database.tcp_user_timeout",
                format!("{:?}", db.tcp_user_timeout),
                "must be whole milliseconds, at most \"24d\" (\"0s\" = the system's default)",
            ));
        }
        let tcp = TcpSettings {
            keepalives_idle: tcp_seconds("database.keepalives_idle", &db.keepalives_idle)?,
            keepalives_interval: tcp_seconds(
                "database.keepalives_interval",
                &db.keepalives_interval,
            )?,
            keepalives_count,
            user_timeout,
        };

        // [reconciler]
        let workers = match r.workers {
            0 => auto_workers(std::thread::available_parallelism().map_or(1, |n| n.get())),
            w if (1..=MAX_WORKERS).contains(&w) => w as usize,
            w => {
                return Err(invalid(
                    "reconciler.workers",
                    w.to_string(),
                    &format!("must be 0 (8 per CPU, at least 16) or between 1 and {MAX_WORKERS}"),
                ))
            }
        };
        let pool_size = match db.pool_size {
            0 => auto_pool_size(std::thread::available_parallelism().map_or(1, |n| n.get())),
            p if (1..=MAX_POOL_SIZE).contains(&p) => p as u32,
            p => {
                return Err(invalid(
                    "database.pool_size",
                    p.to_string(),
                    &format!("must be 0 (4 per CPU, at least 8) or between 1 and {MAX_POOL_SIZE}"),
                ))
            }
        };
        if !(1..=10_000).contains(&r.page_size) {
            return Err(invalid(
                "reconciler.page_size",
                r.page_size.to_string(),
                "must be between 1 and 10000",
            ));
        }
        let queue_capacity = match r.queue_capacity {
            0 => 2 * workers,
            q if (1..=1_000_000).contains(&q) => q as usize,
            q => {
                return Err(invalid(
                    "reconciler.queue_capacity",
                    q.to_string(),
                    "must be 0 (2 × workers) or between 1 and 1000000",
                ))
            }
        };
        let lock_key = match &r.lock_key {
            None => default_lock_key(&db.schema),
            Some(key) if key.trim().is_empty() => {
                return Err(invalid(
                    "reconciler.lock_key",
                    format!("{key:?}"),
                    "must not be empty",
                ))
            }
            Some(key) => key.clone(),
        };
        let shards = validate_shards(r.shards)
            .map_err(|why| invalid("reconciler.shards", r.shards.to_string(), &why))?;
        let reconciler = ReconcilerConfig {
            interval: positive("reconciler.interval", &r.interval)?,
            workers,
            page_size: r.page_size as u32,
            queue_capacity,
            next_attempt_delay: duration("reconciler.next_attempt_delay", &r.next_attempt_delay)?,
            pending_timeout: positive("reconciler.pending_timeout", &r.pending_timeout)?,
            sending_timeout: positive("reconciler.sending_timeout", &r.sending_timeout)?,
            lock_key,
            shards,
            takeover_after: {
                let value = &r.takeover_after;
                let d = duration("reconciler.takeover_after", value)?;
                let (least, most) = (MIN_TAKEOVER_AFTER, MAX_TAKEOVER_AFTER);
                if d < least || d > most {
                    return Err(invalid(
                        "reconciler.takeover_after",
                        format!("{value:?}"),
                        &format!(
                            "must be between {:?} (a healthy leader heartbeats every second) and {:?}",
                            humantime::format_duration(least).to_string(),
                            humantime::format_duration(most).to_string()
                        ),
                    ));
                }
                d
            },
        };

        // [delivery]
        if dl.retry_schedule.is_empty() {
            return Err(invalid(
                "delivery.retry_schedule",
                "[]".into(),
                "must list at least one delay (e.g. [\"5s\", \"5m\"])",
            ));
        }
        if dl.retry_schedule.len() > 100 {
            return Err(invalid(
                "delivery.retry_schedule",
                format!("[{} delays]", dl.retry_schedule.len()),
                "must list at most 100 delays",
            ));
        }
        let retry_schedule = dl
            .retry_schedule
            .iter()
            .map(|s| duration("delivery.retry_schedule", s))
            .collect::<Result<Vec<_>, _>>()?;
        if !(0..=16 * 1024 * 1024).contains(&dl.max_response_bytes) {
            return Err(invalid(
                "delivery.max_response_bytes",
                dl.max_response_bytes.to_string(),
                "must be between 0 and 16777216",
            ));
        }
        let allow_networks = dl
            .allow_networks
            .iter()
            .map(|n| {
                parse_network(n)
                    .map_err(|p| invalid("delivery.allow_networks", format!("{n:?}"), &p))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !(MIN_PAYLOAD_BYTES..=MAX_PAYLOAD_BYTES).contains(&dl.max_payload_bytes) {
            return Err(invalid(
                "delivery.max_payload_bytes",
                dl.max_payload_bytes.to_string(),
                &format!("must be between {MIN_PAYLOAD_BYTES} and {MAX_PAYLOAD_BYTES}"),
            ));
        }
        let (ca_file, ca_certs) = match dl.ca_file.trim() {
            "" => (None, Vec::new()),
            file => {
                let resolved = path.parent().unwrap_or(Path::new("")).join(file);
                let certs = read_ca_file(&resolved)
                    .map_err(|p| invalid("delivery.ca_file", format!("{file:?}"), &p))?;
                (Some(resolved), certs)
            }
        };
        let max_in_flight_per_channel = match dl.max_in_flight_per_channel {
            0 => auto_channel_cap(workers),
            c if (1..=MAX_WORKERS).contains(&c) => c as usize,
            c => {
                return Err(invalid(
                    "delivery.max_in_flight_per_channel",
                    c.to_string(),
                    &format!(
                        "must be 0 (a quarter of the workers, at least 1) or between 1 and {MAX_WORKERS}"
                    ),
                ))
            }
        };
        if !(0..=1_000_000).contains(&dl.breaker_failures) {
            return Err(invalid(
                "delivery.breaker_failures",
                dl.breaker_failures.to_string(),
                "must be 0 (no breaker) or between 1 and 1000000",
            ));
        }
        let delivery = DeliveryConfig {
            max_in_flight_per_channel,
            work_conserving: dl.max_in_flight_per_channel == 0,
            breaker_failures: dl.breaker_failures as u32,
            breaker_cooldown: positive("delivery.breaker_cooldown", &dl.breaker_cooldown)?,
            disable_after: duration("delivery.disable_after", &dl.disable_after)?,
            timeout: positive("delivery.timeout", &dl.timeout)?,
            connect_timeout: positive("delivery.connect_timeout", &dl.connect_timeout)?,
            retry_schedule,
            max_response_bytes: dl.max_response_bytes as usize,
            allow_networks,
            max_payload_bytes: dl.max_payload_bytes,
            ca_file,
            ca_certs,
        };

        // [retention]
        let retention = RetentionConfig {
            keep_finished: duration("retention.keep_finished", &self.retention.keep_finished)?,
            keep_audit: duration("retention.keep_audit", &self.retention.keep_audit)?,
        };

        // [log]
        if self.log.level.trim().is_empty() {
            return Err(invalid(
                "log.level",
                "\"\"".into(),
                "must be a level (error, warn, info, debug, trace) or an env_logger filter",
            ));
        }
        if !is_log_filter(&self.log.level) {
            return Err(invalid(
                "log.level",
                format!("{:?}", self.log.level),
                "must be a level (error, warn, info, debug, trace) or an env_logger filter",
            ));
        }

        // [metrics]
        let listen = if self.metrics.listen.trim().is_empty() {
            None
        } else {
            Some(
                self.metrics
                    .listen
                    .trim()
                    .parse::<SocketAddr>()
                    .map_err(|_| {
                        invalid(
                    "metrics.listen",
                    format!("{:?}", self.metrics.listen),
                    "must be an address with a port, e.g. \"127.0.0.1:9464\", or empty for off",
                )
                    })?,
            )
        };

        // [api]
        let api_listen = if self.api.listen.trim().is_empty() {
            None
        } else {
            Some(self.api.listen.trim().parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "api.listen",
                    format!("{:?}", self.api.listen),
                    "must be an address with a port, e.g. \"127.0.0.1:8080\", or empty for off",
                )
            })?)
        };
        if !(1..=65_536).contains(&self.api.max_connections) {
            return Err(invalid(
                "api.max_connections",
                self.api.max_connections.to_string(),
                "must be between 1 and 65536",
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.api.max_body_bytes) {
            return Err(invalid(
                "api.max_body_bytes",
                self.api.max_body_bytes.to_string(),
                "must be between 1024 (1 KiB) and 67108864 (64 MiB)",
            ));
        }
        let token_rate_limit = crate::rate_limit::RateLimit::parse(&self.api.token_rate_limit)
            .map_err(|e| {
                invalid(
                    "api.token_rate_limit",
                    format!("{:?}", self.api.token_rate_limit),
                    &format!("{e}; write e.g. \"100/s\" or \"6000/m\""),
                )
            })?;
        let public_url = match self.api.public_url.trim().trim_end_matches('/') {
            "" => None,
            base => {
                let ok = url::Url::parse(base).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host_str().is_some()
                        && u.username().is_empty()
                        && u.password().is_none()
                        && u.query().is_none()
                        && u.fragment().is_none()
                });
                if !ok {
                    return Err(invalid(
                        "api.public_url",
                        format!("{:?}", self.api.public_url),
                        "must be an http(s) URL without credentials, query or fragment, e.g. \"https://hooks.example.com\", or empty for relative links",
                    ));
                }
                Some(base.to_string())
            }
        };
        let max_portal_ttl = duration("api.max_portal_ttl", &self.api.max_portal_ttl)?;
        if max_portal_ttl.is_zero() || max_portal_ttl > Duration::from_secs(366 * 86400) {
            return Err(invalid(
                "api.max_portal_ttl",
                format!("{:?}", self.api.max_portal_ttl),
                "must be more than 0s and at most 366d",
            ));
        }
        let api = ApiConfig {
            listen: api_listen,
            max_connections: self.api.max_connections as usize,
            max_body_bytes: self.api.max_body_bytes as usize,
            token_rate_limit,
            public_url,
            max_portal_ttl,
        };

        // [secrets]
        let secrets = match self.secrets.key_file.trim() {
            "" => SecretsConfig::default(),
            file => {
                let key_file = path.parent().unwrap_or(Path::new("")).join(file);
                let key = crate::secrets::Key::load(&key_file).map_err(|e| {
                    invalid("secrets.key_file", format!("{file:?}"), &e.to_string())
                })?;
                SecretsConfig {
                    key_file: Some(key_file),
                    key: Some(key),
                }
            }
        };

        let config = Config {
            path: path.to_path_buf(),
            database: DatabaseConfig {
                url: db.url.clone(),
                driver_url,
                tls,
                schema: db.schema.clone(),
                pool_size,
                connect_timeout,
                tcp,
            },
            reconciler,
            delivery,
            retention,
            log: LogConfig {
                level: self.log.level.clone(),
            },
            metrics: MetricsConfig { listen },
            api,
            secrets,
        };
        crate::config::check::refuse_impossible(&config)?;
        Ok(config)
    }
}

/// Default of `delivery.max_payload_bytes`: 256 KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: i64 = 256 * 1024;
/// Smallest `delivery.max_payload_bytes` (`{}` is 2 bytes).
pub const MIN_PAYLOAD_BYTES: i64 = 2;
/// Largest `delivery.max_payload_bytes`: just under PostgreSQL's jsonb limit
/// of 256 MiB.
pub const MAX_PAYLOAD_BYTES: i64 = 256 * 1024 * 1024 - 1;

/// Parses one `delivery.allow_networks` entry: a CIDR (`10.1.0.0/16`,
/// `::1/128`) or a single address. Host bits must be zero, so that a typo
/// such as `10.1.2.3/8` does not allow more than was meant.
fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    let net = match text.parse::<ipnet::IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<std::net::IpAddr>() {
            Ok(ip) => ipnet::IpNet::from(ip),
            Err(_) => {
                return Err(
                    "must be a CIDR such as \"127.0.0.0/8\" or \"::1/128\", or one address".into(),
                )
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A duration as `check-config` prints it: one number in the largest of
/// `h`, `m`, `s`, `ms` that holds it exactly (`"48h"`, `"90m"`, `"1500ms"`,
/// `"0s"`), so a value reads as it is usually written and never in days;
/// anything finer than milliseconds in humantime's form. Parses back to
/// the same duration.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return humantime::format_duration(d).to_string();
    }
    let ms = d.as_millis();
    [(3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")]
        .iter()
        .find(|(unit, _)| ms % unit == 0)
        .map_or_else(
            || format!("{ms}ms"),
            |(unit, name)| format!("{}{name}", ms / unit),
        )
}

/// The lock key text when `reconciler.lock_key` is not written: derived from
/// the schema, so that deployments on different schemas of one database
/// never share a leader lock. For the default schema `notification` it is
/// `notification.event_handler.reconcile_lock`, the key of earlier versions,
/// so existing deployments keep their lock.
pub fn default_lock_key(schema: &str) -> String {
    format!("{schema}.event_handler.reconcile_lock")
}

/// Reads the CA certificates of a PEM bundle (`delivery.ca_file`): at least
/// one, every PEM block a certificate that parses; private keys are refused
/// (a key has no business in a trust bundle, and it would be a secret
/// lying where it is not expected).
fn read_ca_file(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {
                return Err(format!(
                    "{} holds a private key; give only CA certificates",
                    path.display()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "{} is not a PEM certificate bundle: {e}",
                    path.display()
                ))
            }
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// `DATABASE_URL`'s value, checked on its own so that an error names the
/// variable rather than the config file it overrides.
fn checked_env_url(url: String) -> Result<String, ConfigError> {
    match check_postgres_url(&url) {
        Ok(_) => Ok(url),
        Err(problem) => Err(ConfigError::DatabaseUrlEnv {
            value: format!("{:?}", redact_url(&url)),
            problem,
        }),
    }
}

/// Checks that `url` is a `postgres://` or `postgresql://` URL the driver
/// accepts once its TLS parameters are taken out (see [`db_url`]); returns
/// that URL and the TLS setting.
fn check_postgres_url(url: &str) -> Result<(String, db_url::DbTls), String> {
    const FORM: &str = "postgres://USER:PASSWORD@HOST:5432/DATABASE";
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "must be a postgres:// or postgresql:// URL, e.g. {FORM} (a key=value string is not accepted)"
        ));
    }
    let authority = url
        .split_once("://")
        .map_or("", |(_, rest)| rest.split(['/', '?']).next().unwrap_or(""));
    if authority.matches('@').count() > 1 {
        return Err(format!(
            "holds more than one '@' before the host: percent-encode an '@' in the user name or password as %40 (e.g. {FORM})"
        ));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let (driver_url, tls) = db_url::split(url, home.as_deref()).map_err(|e| e.0)?;
    // The driver's reason (its error's source) names the parameter
    // (`unknown option `sslcrl``, `invalid value for option `port``), never
    // a value, so it cannot show a password.
    driver_url
        .parse::<postgres::Config>()
        .map_err(|e| match std::error::Error::source(&e) {
            Some(reason) => format!(
                "is not a valid PostgreSQL connection URL: {reason} (expected {FORM}; percent-encode '@', ':' and '/' in the password as %40, %3A, %2F)"
            ),
            None => format!(
                "is not a valid PostgreSQL connection URL (expected {FORM}; percent-encode '@', ':' and '/' in the password as %40, %3A, %2F)"
            ),
        })?;
    Ok((driver_url, tls))
}

/// Whether `s` is an env_logger filter: comma-separated directives, each a
/// level or `module=level` (a bare word must be a level, so a typo such as
/// `"inof"` is an error rather than a silent module filter).
fn is_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    let is_module = |m: &str| {
        !m.is_empty()
            && m.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
    };
    s.split(',').all(|d| match d.split_once('=') {
        Some((module, level)) => is_module(module.trim()) && is_level(level),
        None => is_level(d),
    })
}

/// Whether `s` is a plain lower-case SQL identifier (safe unquoted).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

/// Replaces the password of a connection URL by `***` (for printing): the
/// one after the user name and a `password=` query parameter alike.
pub fn redact_url(url: &str) -> String {
    // `app:secret@host/db` parses as a URL of scheme `app:` with the
    // password in its path: only `scheme://` is taken as a URL here.
    let parsed = url::Url::parse(url).ok().filter(|u| {
        url.get(u.scheme().len()..)
            .is_some_and(|rest| rest.starts_with("://"))
    });
    match parsed {
        Some(mut u) => {
            let in_query = u.query_pairs().any(|(k, _)| k == "password");
            if u.password().is_none() && !in_query {
                return url.to_string();
            }
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if in_query {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        // Unparseable (or no `scheme://`): hide everything between the
        // scheme (if any) and the last '@', and every `password=` value of
        // a key=value string.
        None => {
            let start = url.find("://").map_or(0, |s| s + 3);
            let hidden = match url.rfind('@') {
                Some(a) if a >= start => format!("{}***{}", &url[..start], &url[a..]),
                _ => url.to_string(),
            };
            redact_password_pairs(&hidden)
        }
    }
}

/// `text` with the value of every `password=` (a key=value connection
/// string's, quoted or not) replaced by `***`.
fn redact_password_pairs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.to_ascii_lowercase().find("password") {
        // libpq allows spaces around the '=' of a key=value string.
        let after_key = &rest[at + "password".len()..];
        let trimmed = after_key.trim_start();
        let Some(value) = trimmed.strip_prefix('=') else {
            out.push_str(&rest[..at + "password".len()]);
            rest = after_key;
            continue;
        };
        let value = value.trim_start();
        let value_start = rest.len() - value.len();
        out.push_str(&rest[..value_start]);
        out.push_str("***");
        let len = match value.strip_prefix('\'') {
            // A quoted value ends at the next quote not escaped by '\\'.
            Some(quoted) => {
                let mut escaped = false;
                let end = quoted
                    .char_indices()
                    .find(|&(_, c)| {
                        let closes = c == '\'' && !escaped;
                        escaped = c == '\\' && !escaped;
                        closes
                    })
                    .map_or(quoted.len(), |(i, _)| i + 1);
                1 + end
            }
            None => value
                .find(|c: char| c.is_whitespace() || c == '&')
                .unwrap_or(value.len()),
        };
        rest = &value[len..];
    }
    out.push_str(rest);
    out
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_redacted_toml())
    }
}

#[derive(Serialize)]
struct Effective {
    database: EffDatabase,
    reconciler: EffReconciler,
    delivery: EffDelivery,
    retention: EffRetention,
    log: EffLog,
    metrics: EffMetrics,
    api: EffApi,
    secrets: EffSecrets,
}
#[derive(Serialize)]
struct EffDatabase {
    url: String,
    schema: String,
    pool_size: u32,
    connect_timeout: String,
    keepalives_idle: String,
    keepalives_interval: String,
    keepalives_count: u32,
    tcp_user_timeout: String,
}
#[derive(Serialize)]
struct EffReconciler {
    interval: String,
    workers: usize,
    page_size: u32,
    queue_capacity: usize,
    next_attempt_delay: String,
    pending_timeout: String,
    sending_timeout: String,
    lock_key: String,
    shards: u32,
    takeover_after: String,
}
#[derive(Serialize)]
struct EffDelivery {
    timeout: String,
    connect_timeout: String,
    retry_schedule: Vec<String>,
    max_response_bytes: usize,
    allow_networks: Vec<String>,
    max_payload_bytes: i64,
    max_in_flight_per_channel: usize,
    breaker_failures: u32,
    breaker_cooldown: String,
    disable_after: String,
    ca_file: String,
}
#[derive(Serialize)]
struct EffRetention {
    keep_finished: String,
    keep_audit: String,
}
#[derive(Serialize)]
struct EffLog {
    level: String,
}
#[derive(Serialize)]
struct EffMetrics {
    listen: String,
}
#[derive(Serialize)]
struct EffApi {
    listen: String,
    max_connections: usize,
    max_body_bytes: usize,
    token_rate_limit: String,
    public_url: String,
    max_portal_ttl: String,
}
#[derive(Serialize)]
struct EffSecrets {
    key_file: String,
}

/// Parses and resolves `text` as the file `test.toml`; the error as its
/// one-line message (for the unit tests here and in `check`).
/// The largest `reconciler.shards` accepted.
pub const MAX_SHARDS: u32 = 1024;

/// Checks a configured shard count: 1..=[`MAX_SHARDS`].
pub fn validate_shards(n: i64) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(k) if (1..=MAX_SHARDS).contains(&k) => Ok(k),
        _ => Err(format!("must be between 1 (one leader) and {MAX_SHARDS}")),
    }
}

#[cfg(test)]
pub(crate) fn load_text(text: &str) -> Result<Config, String> {
    let p = Path::new("test.toml");
    RawConfig::parse(p, text)
        .and_then(|r| r.resolve(p))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::load_text as load;

    fn err(text: &str) -> String {
        load(text).expect_err("config should be rejected")
    }

    #[test]
    fn automatic_workers_and_channel_caps() {
        assert_eq!(auto_workers(1), 16);
        assert_eq!(auto_workers(2), 16);
        assert_eq!(auto_workers(3), 24);
        assert_eq!(auto_workers(1000), 4096);
        assert_eq!(auto_channel_cap(1), 1);
        assert_eq!(auto_channel_cap(3), 1);
        assert_eq!(auto_channel_cap(16), 4);
        assert_eq!(auto_channel_cap(64), 16);
        let c = load("[reconciler]\nworkers = 6\n").unwrap();
        assert_eq!(c.delivery.max_in_flight_per_channel, 1);
        let c = load("[delivery]\nmax_in_flight_per_channel = 7\nbreaker_failures = 0\ndisable_after = \"0s\"\n").unwrap();
        assert_eq!(c.delivery.max_in_flight_per_channel, 7);
        assert_eq!(c.delivery.breaker_failures, 0);
        assert!(c.delivery.disable_after.is_zero());
    }

    #[test]
    fn retention_keep_finished_defaults_to_30d_and_0s_keeps_forever() {
        let c = load("").unwrap();
        assert_eq!(c.retention.keep_finished, Duration::from_secs(30 * 86400));
        assert!(c
            .to_redacted_toml()
            .contains("[retention]\nkeep_finished = \"720h\""));
        let c = load("[retention]\nkeep_finished = \"0s\"\n").unwrap();
        assert!(c.retention.keep_finished.is_zero());
        let c = load("[retention]\nkeep_finished = \"2m\"\n").unwrap();
        assert_eq!(c.retention.keep_finished, Duration::from_secs(120));
        let e = err("[retention]\nkeep_finished = \"a month\"\n");
        assert!(e.contains("retention.keep_finished = \"a month\""), "{e}");
        let e = err("[retention]\nkeep_forever = true\n");
        assert!(e.contains("retention.keep_forever"), "{e}");
    }

    #[test]
    fn bad_fairness_keys_name_the_key() {
        let e = err("[delivery]\nmax_in_flight_per_channel = -1\n");
        assert!(e.contains("delivery.max_in_flight_per_channel = -1"), "{e}");
        let e = err("[delivery]\nbreaker_failures = -3\n");
        assert!(e.contains("delivery.breaker_failures"), "{e}");
        let e = err("[delivery]\nbreaker_cooldown = \"0s\"\n");
        assert!(e.contains("delivery.breaker_cooldown"), "{e}");
        let e = err("[delivery]\ndisable_after = \"soon\"\n");
        assert!(e.contains("delivery.disable_after"), "{e}");
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.database.schema, "notification");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.reconciler.workers, (8 * cpus).max(16));
        assert_eq!(c.database.pool_size, auto_pool_size(cpus));
        assert_eq!(
            c.delivery.max_in_flight_per_channel,
            c.reconciler.workers / 4
        );
        assert_eq!(c.delivery.breaker_failures, 5);
        assert_eq!(c.delivery.breaker_cooldown, Duration::from_secs(30));
        assert_eq!(c.delivery.disable_after, Duration::from_secs(5 * 86400));
        assert_eq!(c.reconciler.queue_capacity, 2 * c.reconciler.workers);
        assert_eq!(c.reconciler.page_size, 50);
        assert_eq!(c.reconciler.interval, Duration::from_secs(15));
        assert_eq!(c.reconciler.pending_timeout, Duration::from_secs(3 * 3600));
        assert_eq!(c.reconciler.sending_timeout, Duration::from_secs(48 * 3600));
        assert_eq!(c.delivery.retry_schedule.len(), 7);
        assert_eq!(c.delivery.retry_schedule[1], Duration::from_secs(300));
        assert_eq!(c.delivery.max_response_bytes, 1024);
        assert_eq!(c.metrics.listen, None);
    }

    #[test]
    fn the_repository_example_config_is_valid() {
        let text = include_str!("../config.toml");
        let c = load(text).unwrap();
        assert_eq!(
            c.reconciler.lock_key,
            "notification.event_handler.reconcile_lock"
        );
    }

    #[test]
    fn explicit_values_are_kept() {
        let c = load(
            "[reconciler]\nworkers = 8\nqueue_capacity = 3\n[database]\npool_size = 9\n[metrics]\nlisten = \"127.0.0.1:9464\"\n",
        )
        .unwrap();
        assert_eq!(c.reconciler.workers, 8);
        assert_eq!(c.reconciler.queue_capacity, 3);
        assert_eq!(c.database.pool_size, 9);
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn takeover_after_defaults_to_ten_seconds_and_refuses_what_would_fence_healthy_leaders() {
        let c = load("").unwrap();
        assert_eq!(c.reconciler.takeover_after, Duration::from_secs(10));
        assert_eq!(
            load("[reconciler]\ntakeover_after = \"30s\"\n")
                .unwrap()
                .reconciler
                .takeover_after,
            Duration::from_secs(30)
        );
        for bad in ["\"1s\"", "\"0s\"", "\"2h\"", "\"soon\""] {
            let e = err(&format!("[reconciler]\ntakeover_after = {bad}\n"));
            assert!(e.contains("reconciler.takeover_after"), "{e}");
        }
        let e = err("[reconciler]\ntakeover_after = \"2s\"\n");
        assert!(e.contains("heartbeats every second"), "{e}");
    }

    #[test]
    fn tcp_settings_default_to_a_dead_peer_noticed_within_thirty_seconds() {
        let c = load("").unwrap();
        let tcp = c.database.tcp;
        assert_eq!(tcp.keepalives_idle, Duration::from_secs(10));
        assert_eq!(tcp.keepalives_interval, Duration::from_secs(5));
        assert_eq!(tcp.keepalives_count, 3);
        assert_eq!(tcp.user_timeout, Duration::from_secs(30));
        let c = load("[database]\ntcp_user_timeout = \"0s\"\nkeepalives_count = 5\n").unwrap();
        assert!(c.database.tcp.user_timeout.is_zero());
        assert_eq!(c.database.tcp.keepalives_count, 5);
        for (key, bad) in [
            ("keepalives_idle", "\"0s\""),
            ("keepalives_idle", "\"1500ms\""),
            ("keepalives_interval", "\"10h\""),
            ("keepalives_count", "0"),
            ("keepalives_count", "128"),
            ("tcp_user_timeout", "\"30d\""),
            ("tcp_user_timeout", "\"later\""),
        ] {
            let e = err(&format!("[database]\n{key} = {bad}\n"));
            assert!(e.contains(&format!("database.{key}")), "{key} = {bad}: {e}");
        }
    }

    #[test]
    fn not_toml_names_the_line() {
        let e = err("[reconciler\nworkers = 1\n");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err("[reconciler]\nwokers = 4\n");
        assert!(e.contains("unknown key `reconciler.wokers`"), "{e}");
        assert!(e.contains("`workers`"), "{e}");
        let e = err("[databse]\nurl = \"x\"\n");
        assert!(e.contains("unknown key `databse`"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = err("[reconciler]\nworkers = \"eight\"\n");
        assert!(e.contains("reconciler.workers"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn negative_and_absurd_numbers_are_refused() {
        let e = err("[reconciler]\nworkers = -1\n");
        assert!(e.contains("reconciler.workers = -1"), "{e}");
        let e = err("[reconciler]\nworkers = 100000\n");
        assert!(e.contains("reconciler.workers = 100000"), "{e}");
        let e = err("[reconciler]\npage_size = 0\n");
        assert!(e.contains("reconciler.page_size = 0"), "{e}");
        let e = err("[reconciler]\nqueue_capacity = -5\n");
        assert!(e.contains("reconciler.queue_capacity = -5"), "{e}");
        let e = err("[delivery]\nmax_response_bytes = -1\n");
        assert!(e.contains("delivery.max_response_bytes = -1"), "{e}");
    }

    #[test]
    fn bad_durations_are_named() {
        let e = err("[reconciler]\ninterval = \"soon\"\n");
        assert!(e.contains("reconciler.interval = \"soon\""), "{e}");
        assert!(e.contains("not a duration"), "{e}");
        let e = err("[reconciler]\ninterval = \"0s\"\n");
        assert!(e.contains("longer than 0s"), "{e}");
        let e = err("[delivery]\nretry_schedule = [\"5s\", \"5 parsecs\"]\n");
        assert!(e.contains("delivery.retry_schedule = \"5 parsecs\""), "{e}");
    }

    #[test]
    fn empty_retry_schedule_is_refused() {
        let e = err("[delivery]\nretry_schedule = []\n");
        assert!(e.contains("delivery.retry_schedule = []"), "{e}");
    }

    #[test]
    fn an_unknown_url_parameter_is_refused_naming_it() {
        let e = err("[database]\nurl = \"postgres://app:hunter2@db/x?sslcrl=crl.pem\"\n");
        assert!(e.contains("database.url"), "{e}");
        assert!(e.contains("unknown option `sslcrl`"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn the_tls_parameters_are_accepted_and_typed() {
        let c =
            load("[database]\nurl = \"postgres://app@db/x?sslmode=require&connect_timeout=3\"\n")
                .unwrap();
        assert_eq!(c.database.tls.mode, db_url::SslMode::Require);
        assert_eq!(
            c.database.driver_url,
            "postgres://app@db/x?connect_timeout=3"
        );
        let e = err("[database]\nurl = \"postgres://app@db/x?sslmode=verify-ca&sslrootcert=/nonexistent.pem\"\n");
        assert!(
            e.contains("database.url") && e.contains("sslrootcert=/nonexistent.pem"),
            "{e}"
        );
    }

    #[test]
    fn url_must_be_postgres() {
        let e = err("[database]\nurl = \"mysql://root@localhost/db\"\n");
        assert!(e.contains("database.url"), "{e}");
        assert!(e.contains("postgres://"), "{e}");
    }

    #[test]
    fn pool_smaller_than_workers_is_allowed() {
        let c = load("[reconciler]\nworkers = 512\n[database]\npool_size = 8\n").unwrap();
        assert_eq!((c.reconciler.workers, c.database.pool_size), (512, 8));
        let e = err("[database]\npool_size = -1\n");
        assert!(e.contains("database.pool_size = -1"), "{e}");
        let e = err("[database]\npool_size = 1027\n");
        assert!(e.contains("database.pool_size = 1027"), "{e}");
        assert!(e.contains("between 1 and 1026"), "{e}");
    }

    #[test]
    fn automatic_pool_size_is_four_per_cpu_at_least_eight() {
        assert_eq!(auto_pool_size(1), 8);
        assert_eq!(auto_pool_size(2), 8);
        assert_eq!(auto_pool_size(3), 12);
        assert_eq!(auto_pool_size(64), 256);
        assert_eq!(auto_pool_size(usize::MAX), u32::MAX);
    }

    #[test]
    fn workers_go_up_to_4096() {
        let c = load("[reconciler]\nworkers = 4096\n").unwrap();
        assert_eq!(c.reconciler.workers, 4096);
        let e = err("[reconciler]\nworkers = 4097\n");
        assert!(e.contains("reconciler.workers = 4097"), "{e}");
        assert!(e.contains("between 1 and 4096"), "{e}");
    }

    #[test]
    fn schema_must_be_an_identifier() {
        let e = err("[database]\nschema = \"drop table\"\n");
        assert!(e.contains("database.schema"), "{e}");
    }

    #[test]
    fn log_level_must_be_a_filter() {
        assert!(load("[log]\nlevel = \"notification_reconciler=debug,warn\"\n").is_ok());
        let e = err("[log]\nlevel = \"loud\"\n");
        assert!(e.contains("log.level"), "{e}");
        let e = err("[log]\nlevel = \"x=loud\"\n");
        assert!(e.contains("log.level = \"x=loud\""), "{e}");
    }

    #[test]
    fn metrics_listen_must_be_an_address() {
        let e = err("[metrics]\nlisten = \"everywhere\"\n");
        assert!(e.contains("metrics.listen = \"everywhere\""), "{e}");
    }

    #[test]
    fn allow_networks_and_max_payload_bytes() {
        let c = load("").unwrap();
        assert!(c.delivery.allow_networks.is_empty());
        assert_eq!(c.delivery.max_payload_bytes, 262_144);
        let c = load(
            "[delivery]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\", \"10.0.0.7\"]\nmax_payload_bytes = 1000\n",
        )
        .unwrap();
        let shown: Vec<String> = c
            .delivery
            .allow_networks
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(shown, ["127.0.0.0/8", "::1/128", "10.0.0.7/32"]);
        assert_eq!(c.delivery.max_payload_bytes, 1000);
        assert!(c
            .to_redacted_toml()
            .contains("allow_networks = [\"127.0.0.0/8\""));
        let e = err("[delivery]\nallow_networks = [\"127.0.0.0/8\", \"localhost\"]\n");
        assert!(e.contains("delivery.allow_networks = \"localhost\""), "{e}");
        assert!(e.contains("CIDR"), "{e}");
        let e = err("[delivery]\nallow_networks = [\"10.1.2.3/8\"]\n");
        assert!(
            e.contains("delivery.allow_networks = \"10.1.2.3/8\""),
            "{e}"
        );
        assert!(e.contains("10.0.0.0/8"), "{e}");
        let e = err("[delivery]\nmax_payload_bytes = 0\n");
        assert!(e.contains("delivery.max_payload_bytes = 0"), "{e}");
        let e = err("[delivery]\nmax_payload_bytes = 300000000\n");
        assert!(e.contains("delivery.max_payload_bytes = 300000000"), "{e}");
    }

    #[test]
    fn durations_print_as_written_or_as_hours_never_as_days() {
        let shown = |text: &str| {
            let d = humantime::parse_duration(text).unwrap();
            let out = format_duration(d);
            assert_eq!(humantime::parse_duration(&out).unwrap(), d, "{out}");
            out
        };
        assert_eq!(shown("48h"), "48h");
        assert_eq!(shown("2days"), "48h");
        assert_eq!(shown("5m"), "5m");
        assert_eq!(shown("1h 30m"), "90m");
        assert_eq!(shown("15s"), "15s");
        assert_eq!(shown("1500ms"), "1500ms");
        assert_eq!(shown("0s"), "0s");
        assert_eq!(shown("1us"), "1us");
    }

    #[test]
    fn the_default_lock_key_follows_the_schema_and_an_explicit_one_is_kept() {
        // The default schema keeps the key of earlier versions.
        let c = load("").unwrap();
        assert_eq!(
            c.reconciler.lock_key,
            "notification.event_handler.reconcile_lock"
        );
        let c = load("[database]\nschema = \"billing\"\n").unwrap();
        assert_eq!(
            c.reconciler.lock_key,
            "billing.event_handler.reconcile_lock"
        );
        let c = load("[database]\nschema = \"billing\"\n[reconciler]\nlock_key = \"shared\"\n")
            .unwrap();
        assert_eq!(c.reconciler.lock_key, "shared");
    }

    #[test]
    fn the_config_search_takes_the_first_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
        assert_eq!(find_config(&[&a, &b]).unwrap(), None);
        std::fs::write(&b, "").unwrap();
        assert_eq!(find_config(&[&a, &b]).unwrap(), Some(b.clone()));
        std::fs::write(&a, "").unwrap();
        assert_eq!(find_config(&[&a, &b]).unwrap(), Some(a.clone()));
    }

    #[test]
    fn ca_file_must_hold_pem_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let resolve = |text: &str| {
            RawConfig::parse(&config, text)
                .and_then(|r| r.resolve(&config))
                .map_err(|e| e.to_string())
        };
        let e = resolve("[delivery]\nca_file = \"missing.pem\"\n").unwrap_err();
        assert!(
            e.contains("delivery.ca_file = \"missing.pem\": cannot read"),
            "{e}"
        );
        std::fs::write(dir.path().join("empty.pem"), "not pem\n").unwrap();
        let e = resolve("[delivery]\nca_file = \"empty.pem\"\n").unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        assert!(resolve("").unwrap().delivery.ca_file.is_none());
    }

    #[test]
    fn redaction_hides_the_password() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(
            redact_url("postgres://app@db/x?password=s3cret&sslmode=disable"),
            "postgres://app@db/x?password=***&sslmode=disable"
        );
        let c = load("[database]\nurl = \"postgres://app:hunter2@db/x\"\n").unwrap();
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        // Errors about the URL never show the password either.
        let e = err("[database]\nurl = \"postgres://app:hunter2@db:notaport/x\"\n");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn redaction_hides_the_password_of_every_form_of_connection_string() {
        // Without a scheme (`app:` would parse as one).
        assert_eq!(redact_url("app:s3cret@db/x"), "***@db/x");
        // An unescaped '@' in the password.
        assert_eq!(
            redact_url("postgres://app:p@ss@db/x"),
            "postgres://app:***@db/x"
        );
        // key=value strings, quoted or not, spaces around '=' or not.
        for (text, shown) in [
            (
                "host=db password=s3cret user=app",
                "host=db password=*** user=app",
            ),
            ("host=db password = s3cret", "host=db password = ***"),
            ("password='s3 \\'cret' host=db", "password=*** host=db"),
            ("host=db passwordless=1", "host=db passwordless=1"),
        ] {
            assert_eq!(redact_url(text), shown, "{text}");
        }
    }

    #[test]
    fn a_bad_database_url_env_names_the_variable_and_hides_the_password() {
        let e = checked_env_url("app:s3cret@db/x".into())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("environment variable DATABASE_URL = "), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = checked_env_url("postgres://app:p@ss@db/x".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("%40"), "{e}");
    }
}
