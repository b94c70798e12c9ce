//! The service's status as a whole: counts by state, due now, the oldest
//! unfinished delivery, the lock holder and leader, channel counts and
//! shards. What `status` prints and `GET /v1/status` answers.

use crate::config::Config;
use crate::db::{
    channels, leaders, migrate, prune as db_prune, shards as db_shards, statuses, DbError,
};
use crate::lock;

use super::OpsError;

/// The status report.
#[derive(Debug, serde::Serialize)]
pub struct StatusReport {
    /// Statuses by state, due now, oldest unfinished.
    #[serde(flatten)]
    pub counts: statuses::Counts,
    /// `reconciler.lock_key`.
    pub lock_key: String,
    /// The advisory lock key it derives.
    pub lock_key_int8: i64,
    /// Who holds the (one-shard) lock.
    pub lock_holder: Option<lock::Holder>,
    /// The leader.
    pub leader: Leader,
    /// Channel counts.
    pub channels: ChannelCounts,
    /// The schema.
    pub schema: String,
    /// Its version.
    pub schema_version: i32,
    /// The shard count recorded in the schema (`reconciler.shards`).
    pub shard_count: u32,
    /// Each shard.
    pub shards: Vec<ShardStatus>,
    /// The oldest finished event kept and how many are due for pruning.
    pub retention: db_prune::Retention,
    /// Who delivers: `"http"` or `"svix"`.
    pub provider: &'static str,
    /// With the Svix provider: whether Svix answers its health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svix: Option<SvixHealth>,
}

/// Whether the configured Svix server answers (`GET /api/v1/health/ping/`).
#[derive(Debug, serde::Serialize)]
pub struct SvixHealth {
    /// `[svix] url`.
    pub url: String,
    /// It answered 2xx.
    pub reachable: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Asks the configured Svix server whether it answers; `None` with the
/// http provider.
pub fn svix_health(config: &Config) -> Option<SvixHealth> {
    let client = super::svix::client(config)?;
    let url = config
        .svix
        .as_ref()
        .map(|s| s.url.clone())
        .unwrap_or_default();
    Some(match client.ping() {
        Ok(()) => SvixHealth {
            url,
            reachable: true,
            error: None,
        },
        Err(e) => SvixHealth {
            url,
            reachable: false,
            error: Some(e.to_string()),
        },
    })
}

/// One shard as `status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct ShardStatus {
    /// Its number.
    pub shard: u32,
    /// Its lock key.
    pub lock_key_int8: i64,
    /// The instance holding the shard's lock (None: nobody leads it).
    pub leader: Option<String>,
    /// Its deliveries due now.
    pub due: i64,
}

/// Channel counts `status` shows (no per-channel detail: `channel list`).
#[derive(Debug, serde::Serialize)]
pub struct ChannelCounts {
    /// Channels whose breaker is open or half-open (as of the leader's last
    /// heartbeat).
    pub breakers_open: usize,
    /// Channels the leader disabled because every attempt failed for
    /// `delivery.disable_after` (still disabled, not deleted).
    pub auto_disabled: i64,
}

/// Whether a leader is active, as `status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct Leader {
    /// Some instance holds the lock and leads.
    pub active: bool,
    /// Its record (when its lock connection is the holder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<leaders::LeaderRow>,
}

/// Builds the status report.
pub fn report(client: &mut postgres::Client, config: &Config) -> Result<StatusReport, OpsError> {
    let counts = statuses::counts(client)?;
    let key = lock::derive_key(&config.reconciler.lock_key);
    let (lock_holder, record) = live_leader(client, key)?;
    let breakers_open = leaders::published(client)?.map_or(0, |m| {
        m.values().filter(|v| v["breaker"] != "closed").count()
    });
    let channels = ChannelCounts {
        breakers_open,
        auto_disabled: channels::count_auto_disabled(client)?,
    };
    let shard_count = db_shards::recorded(client)?;
    let keys = crate::shard::shard_keys(&config.reconciler.lock_key, shard_count);
    let holders = db_shards::holders(client, &keys)?;
    let due = db_shards::due_by_shard(client, shard_count)?;
    let shards = (0..shard_count)
        .map(|s| ShardStatus {
            shard: s,
            lock_key_int8: keys[s as usize],
            leader: holders[s as usize].clone(),
            due: due[s as usize],
        })
        .collect();
    let retention = db_prune::retention(client, config.retention.keep_finished)?;
    Ok(StatusReport {
        provider: config.delivery.provider.as_str(),
        svix: svix_health(config),
        retention,
        channels,
        counts,
        lock_key: config.reconciler.lock_key.clone(),
        lock_key_int8: key,
        leader: Leader {
            active: lock_holder.is_some(),
            record,
        },
        lock_holder,
        schema: config.database.schema.clone(),
        schema_version: migrate::latest_version(),
        shard_count,
        shards,
    })
}

/// The lock holder under `key` and its leader record, if the record is the
/// holder's (a record left by a leader that died is ignored).
pub fn live_leader(
    client: &mut postgres::Client,
    key: i64,
) -> Result<(Option<lock::Holder>, Option<leaders::LeaderRow>), DbError> {
    let holder = lock::holder(client, key)?;
    let record = leaders::get(client, key)?
        .filter(|r| holder.as_ref().is_some_and(|h| h.pid == r.backend_pid));
    Ok((holder, record))
}
