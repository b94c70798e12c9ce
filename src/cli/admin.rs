//! `migrate`, `check-config` and `status`: the operator's view of the
//! service as a whole.

use std::process::ExitCode;

use crate::config::Config;
use crate::db::{self, migrate, shards as db_shards};
use crate::lock;

/// `migrate`: applies pending migrations; prints what it did.
pub fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    let mut client = db::connect(&config.database, &lock::app_name("migrate"))?;
    let applied = migrate::run(&mut client, &config.database.schema)?;
    let settings = migrate::SchemaSettings {
        max_payload_bytes: config.delivery.max_payload_bytes,
    };
    if migrate::write_settings(&mut client, &config.database.schema, settings)? {
        println!(
            "schema \"{}\": payload size cap set to {} bytes (delivery.max_payload_bytes)",
            config.database.schema, settings.max_payload_bytes
        );
    }
    if db_shards::record(&mut client, config.reconciler.shards)? {
        println!(
            "schema \"{}\": shard count set to {} (reconciler.shards)",
            config.database.schema, config.reconciler.shards
        );
    }
    if let Some(key) = &config.secrets.key {
        // Rows written before the key existed (or under a rotated-away
        // key): encrypted in small steps, so `migrate` may run while the
        // service does.
        let n = crate::db::secrets::reseal_all(&mut client, key, super::secrets::BATCH)?;
        if n > 0 {
            println!(
                "schema \"{}\": encrypted the secrets and header values of {n} channel(s) under key {} ([secrets] key_file)",
                config.database.schema,
                key.id()
            );
        }
    }
    if applied.is_empty() {
        println!(
            "schema \"{}\" is up to date (version {})",
            config.database.schema,
            migrate::latest_version()
        );
    } else {
        let list: Vec<String> = applied.iter().map(i32::to_string).collect();
        println!(
            "schema \"{}\": applied migration(s) {}; now at version {}",
            config.database.schema,
            list.join(", "),
            migrate::latest_version()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `check-config`: the config is valid (else `run` already failed with 2);
/// print the warnings about suspicious settings, then the effective values.
pub fn check_config(config: &Config) -> anyhow::Result<ExitCode> {
    let mut warnings = crate::config::check::warnings(config);
    warnings.extend(crate::config::check::secrets_warning(config));
    for warning in &warnings {
        eprintln!("warning: {}: {warning}", config.path.display());
    }
    match warnings.len() {
        0 => eprintln!("{}: configuration is valid", config.path.display()),
        n => eprintln!(
            "{}: configuration is valid, with {n} warning{}",
            config.path.display(),
            if n == 1 { "" } else { "s" }
        ),
    }
    print!("{}", config.to_redacted_toml());
    Ok(ExitCode::SUCCESS)
}

/// `status`: counts by state, due now, oldest unfinished age, lock holder,
/// and the leader with its deliveries in flight.
pub fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = super::connect(config)?;
    let report = crate::ops::status::report(&mut client, config)?;
    let key = report.lock_key_int8;
    if json {
        super::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "schema:    {} (version {})",
        report.schema, report.schema_version
    );
    for (state, n) in &report.counts.by_state {
        println!("{state:<10} {n}");
    }
    println!("due now:   {}", report.counts.due_now);
    match &report.svix {
        None => println!("provider:  {}", report.provider),
        Some(h) if h.reachable => println!("provider:  svix ({}: answers)", h.url),
        Some(h) => println!(
            "provider:  svix ({}: NOT answering: {})",
            h.url,
            h.error.as_deref().unwrap_or("no answer")
        ),
    }
    match report.counts.oldest_unfinished_age_seconds {
        Some(age) => println!(
            "oldest unfinished: {} old",
            humantime::format_duration(std::time::Duration::from_secs(age.max(0.0) as u64))
        ),
        None => println!("oldest unfinished: none"),
    }
    let r = &report.retention;
    let oldest = match r.oldest_kept_finished_at {
        Some(at) => format!(
            "oldest finished kept: {} ({} old)",
            at.to_rfc3339(),
            humantime::format_duration(std::time::Duration::from_secs(
                (chrono::Utc::now() - at).num_seconds().max(0) as u64
            ))
        ),
        None => "oldest finished kept: none".to_string(),
    };
    // Printed after the lock and leader lines, in the order docs/cli.md
    // shows.
    let retention = if r.keep_finished_seconds == 0 {
        format!("retention: off (keep_finished = \"0s\"); {oldest}")
    } else {
        format!(
            "retention: keep finished {}; {} events due for pruning; {oldest}",
            days_or_as_written(config.retention.keep_finished),
            r.due_for_pruning
        )
    };
    if report.shard_count > 1 {
        // Sharded instances take one lock per shard, never the one-shard
        // key: these two lines summarize the shards (listed below).
        let holders: Vec<&str> = report
            .shards
            .iter()
            .filter_map(|s| s.leader.as_deref())
            .collect();
        let instances: std::collections::BTreeSet<&str> = holders.iter().copied().collect();
        println!(
            "lock:      one per shard ({} shards of key {})",
            report.shard_count, report.lock_key
        );
        println!(
            "leader:    {} of {} shards led, by {} {}",
            holders.len(),
            report.shard_count,
            instances.len(),
            if instances.len() == 1 {
                "instance"
            } else {
                "instances"
            }
        );
    } else {
        match &report.lock_holder {
            Some(h) => println!(
                "lock:      held by backend pid {} ({}, from {}, since {})",
                h.pid,
                h.application_name,
                h.client_addr,
                h.since.map_or("unknown".to_string(), |t| t.to_rfc3339())
            ),
            None => println!("lock:      free (key {} = {})", report.lock_key, key),
        }
        match (&report.leader.record, report.leader.active) {
            (Some(r), _) => println!(
                "leader:    active since {}, {} deliveries in flight (as of {})",
                r.since.to_rfc3339(),
                r.in_flight,
                r.updated_at.to_rfc3339()
            ),
            (None, true) => println!("leader:    active (no leader record yet)"),
            (None, false) => println!("leader:    none (no instance leads)"),
        }
    }
    println!("{retention}");
    println!(
        "channels:  {} breakers open, {} auto-disabled",
        report.channels.breakers_open, report.channels.auto_disabled
    );
    if report.shard_count > 1 {
        let led = report.shards.iter().filter(|s| s.leader.is_some()).count();
        println!("shards:    {} ({led} led)", report.shard_count);
        for s in &report.shards {
            println!(
                "  shard {:<4} due {:<8} {}",
                s.shard,
                s.due,
                s.leader.as_deref().unwrap_or("not led")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `prune`: removes (or counts, with `dry_run`) the finished events older
/// than `older_than` (default `retention.keep_finished`).
pub fn prune(
    config: &Config,
    older_than: Option<std::time::Duration>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let older_than = older_than.unwrap_or(config.retention.keep_finished);
    let mut client = super::connect(config)?;
    let report = crate::ops::prune::prune(&mut client, older_than, dry_run)?;
    if !dry_run {
        let n = crate::ops::audit::prune(&mut client, config.retention.keep_audit)
            .map_err(super::ops_error)?;
        if n > 0 {
            eprintln!("removed {n} audit row(s) older than retention.keep_audit");
        }
    }
    if json {
        super::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(cutoff) = report.cutoff else {
        println!("retention is off (older than \"0s\" means keep forever): nothing removed");
        return Ok(ExitCode::SUCCESS);
    };
    let r = &report.removed;
    println!(
        "{} {} events, {} delivery statuses, {} attempts: finished events created before {} (older than {})",
        if report.dry_run { "would remove" } else { "removed" },
        r.events,
        r.delivery_statuses,
        r.attempts,
        cutoff.to_rfc3339(),
        crate::config::format_duration(older_than)
    );
    Ok(ExitCode::SUCCESS)
}

/// A retention period as the docs and config.toml write it: whole days as
/// `30d`, anything else as `check-config` prints it (`36h`, `90m`).
fn days_or_as_written(d: std::time::Duration) -> String {
    const DAY: u64 = 24 * 3600;
    if d.subsec_nanos() == 0 && d.as_secs() > 0 && d.as_secs() % DAY == 0 {
        format!("{}d", d.as_secs() / DAY)
    } else {
        crate::config::format_duration(d)
    }
}
