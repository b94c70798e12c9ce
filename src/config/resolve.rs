//! Stage two: [`RawConfig::resolve`] checks every key and resolves the
//! automatic values into a [`Config`]; each error names the key and the
//! bad value.

use super::*;

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
            provider: match dl.provider.trim() {
                "http" => Provider::Http,
                "svix" => Provider::Svix,
                other => {
                    return Err(invalid(
                        "delivery.provider",
                        format!("{other:?}"),
                        "must be \"http\" (the daemon sends) or \"svix\" (a Svix server sends)",
                    ))
                }
            },
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

        // [svix]
        let svix = match delivery.provider {
            Provider::Http => None,
            Provider::Svix => Some(resolve_svix(path, &self.svix)?),
        };

        let config = Config {
            svix,
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

/// Checks `[svix]` (with `delivery.provider = "svix"`): an http(s) URL
/// without credentials, query or fragment; a readable, non-empty token
/// file; a timeout of at least 1s.
fn resolve_svix(path: &Path, raw: &RawSvix) -> Result<SvixConfig, ConfigError> {
    let invalid = |key: &'static str, value: String, problem: &str| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        value,
        problem: problem.to_string(),
    };
    let url = raw.url.trim();
    if url.is_empty() {
        return Err(invalid(
            "svix.url",
            "\"\"".into(),
            "must be the Svix server's base URL (e.g. \"https://api.svix.com\") when delivery.provider = \"svix\"",
        ));
    }
    let parsed = url::Url::parse(url)
        .map_err(|e| invalid("svix.url", format!("{url:?}"), &format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none()
        || !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        return Err(invalid(
            "svix.url",
            format!("{url:?}"),
            "must be an http:// or https:// base URL with a host and no user, query or fragment",
        ));
    }
    let file = raw.token_file.trim();
    if file.is_empty() {
        return Err(invalid(
            "svix.token_file",
            "\"\"".into(),
            "must name a file holding the Svix bearer token when delivery.provider = \"svix\"",
        ));
    }
    let token_file = path.parent().unwrap_or(Path::new("")).join(file);
    let token = std::fs::read_to_string(&token_file)
        .map_err(|e| {
            invalid(
                "svix.token_file",
                format!("{file:?}"),
                &format!("cannot be read: {e}"),
            )
        })?
        .trim()
        .to_owned();
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "svix.token_file",
            format!("{file:?}"),
            "must hold the bearer token alone (one word, no spaces)",
        ));
    }
    let timeout = humantime::parse_duration(raw.timeout.trim()).map_err(|e| {
        invalid(
            "svix.timeout",
            format!("{:?}", raw.timeout),
            &format!("not a duration ({e}); write e.g. \"10s\""),
        )
    })?;
    if timeout < Duration::from_secs(1) {
        return Err(invalid(
            "svix.timeout",
            format!("{:?}", raw.timeout),
            "must be at least 1s",
        ));
    }
    Ok(SvixConfig {
        url: url.trim_end_matches('/').to_owned(),
        token_file,
        token,
        timeout,
    })
}

/// Parses one `delivery.allow_networks` entry: a CIDR (`10.1.0.0/16`,
/// `::1/128`) or a single address. Host bits must be zero, so that a typo
/// such as `10.1.2.3/8` does not allow more than was meant.
pub(super) fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
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

/// Reads the CA certificates of a PEM bundle (`delivery.ca_file`): at least
/// one, every PEM block a certificate that parses; private keys are refused
/// (a key has no business in a trust bundle, and it would be a secret
/// lying where it is not expected).
pub(super) fn read_ca_file(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
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
pub(super) fn checked_env_url(url: String) -> Result<String, ConfigError> {
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
pub(super) fn check_postgres_url(url: &str) -> Result<(String, db_url::DbTls), String> {
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
pub(super) fn is_log_filter(s: &str) -> bool {
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
