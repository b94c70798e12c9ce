//! The effective configuration as `check-config` prints it: TOML, secrets
//! redacted.

use super::*;

impl Config {
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
                provider: self.delivery.provider.as_str().to_owned(),
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
            svix: self.svix.as_ref().map(|s| EffSvix {
                url: s.url.clone(),
                token_file: s.token_file.display().to_string(),
                timeout: d(s.timeout),
            }),
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
    #[serde(skip_serializing_if = "Option::is_none")]
    svix: Option<EffSvix>,
}
#[derive(Serialize)]
struct EffSvix {
    url: String,
    token_file: String,
    timeout: String,
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
    provider: String,
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
