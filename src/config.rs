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
//!
//! The parts: `raw` (stage one: the file as written, with its defaults),
//! `resolve` (stage two), `defaults` (automatic sizes, bounds, the derived
//! lock key), `durations`, `redact` (passwords out of URLs), `effective`
//! (what `check-config` prints), `check` (settings that together make
//! delivery impossible or look wrong) and `db_url` (the TLS parameters of
//! `database.url`). This file holds the typed, validated [`Config`] and
//! how it is loaded.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod check;
pub mod db_url;
mod defaults;
mod durations;
mod effective;
mod raw;
mod redact;
mod resolve;

pub use defaults::*;
pub use durations::format_duration;
pub use raw::*;
pub use redact::redact_url;
use resolve::*;

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
    /// `[svix]`, resolved only with `delivery.provider = "svix"`.
    pub svix: Option<SvixConfig>,
}

/// Who delivers (`delivery.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provider {
    /// The daemon sends each attempt itself.
    #[default]
    Http,
    /// The daemon hands each delivery to a Svix server and reconciles its
    /// outcome from there.
    Svix,
}

impl Provider {
    /// The name used in the file and in `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Http => "http",
            Provider::Svix => "svix",
        }
    }
}

/// Validated `[svix]`.
#[derive(Clone)]
pub struct SvixConfig {
    /// The server's base URL, without a trailing slash.
    pub url: String,
    /// The token file as resolved (relative to the config file's directory).
    pub token_file: PathBuf,
    /// The bearer token read from it (never printed).
    pub token: String,
    /// Total timeout of one call to Svix.
    pub timeout: Duration,
}

impl fmt::Debug for SvixConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvixConfig")
            .field("url", &self.url)
            .field("token_file", &self.token_file)
            .field("token", &"***")
            .field("timeout", &self.timeout)
            .finish()
    }
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
    /// Who delivers.
    pub provider: Provider,
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
}

/// Whether `s` is a plain lower-case SQL identifier (safe unquoted).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

/// Parses and resolves `text` as the file `test.toml`; the error as its
/// one-line message (for the unit tests here and in `check`).
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
    fn svix_provider_needs_a_url_and_a_token_file_and_names_the_key() {
        let c = load("").unwrap();
        assert_eq!(c.delivery.provider, Provider::Http);
        assert!(c.svix.is_none());
        // [svix] is not read with the http provider.
        assert!(load("[svix]\nurl = \"nonsense\"\n").unwrap().svix.is_none());
        let e = err("[delivery]\nprovider = \"carrier-pigeon\"\n");
        assert!(
            e.contains("delivery.provider") && e.contains("carrier-pigeon"),
            "{e}"
        );
        let e = err("[delivery]\nprovider = \"svix\"\n");
        assert!(e.contains("svix.url"), "{e}");
        let e = err("[delivery]\nprovider = \"svix\"\n[svix]\nurl = \"ftp://x\"\n");
        assert!(e.contains("svix.url") && e.contains("ftp://x"), "{e}");
        let e = err("[delivery]\nprovider = \"svix\"\n[svix]\nurl = \"http://127.0.0.1:8071\"\n");
        assert!(e.contains("svix.token_file"), "{e}");
        let e = err("[delivery]\nprovider = \"svix\"\n[svix]\nurl = \"http://127.0.0.1:8071\"\ntoken_file = \"/nonexistent/t\"\n");
        assert!(
            e.contains("svix.token_file") && e.contains("cannot be read"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "secret-token\n").unwrap();
        let ok = format!(
            "[delivery]\nprovider = \"svix\"\n[svix]\nurl = \"http://127.0.0.1:8071/\"\ntoken_file = {:?}\ntimeout = \"3s\"\n",
            token.display().to_string()
        );
        let c = load(&ok).unwrap();
        let s = c.svix.as_ref().unwrap();
        assert_eq!(s.url, "http://127.0.0.1:8071");
        assert_eq!(s.token, "secret-token");
        assert_eq!(s.timeout, Duration::from_secs(3));
        // The token is never printed.
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
        assert!(shown.contains("provider = \"svix\""), "{shown}");
        let e = err(&ok.replace("3s", "10ms"));
        assert!(e.contains("svix.timeout"), "{e}");
        std::fs::write(&token, "two words").unwrap();
        let e = err(&ok);
        assert!(e.contains("svix.token_file"), "{e}");
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
