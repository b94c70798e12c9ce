//! `migrate`, `check-config` and `status`: the operator's view of the
//! service as a whole.

use std::process::ExitCode;

use crate::config::Config;
use crate::db::{self, migrate, statuses};
use crate::lock;

/// `migrate`: applies pending migrations; prints what it did.
pub fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    let mut client = db::connect(&config.database, &lock::app_name("migrate"))?;
    let applied = migrate::run(&mut client, &config.database.schema)?;
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
    let warnings = crate::config_check::warnings(config);
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

#[derive(serde::Serialize)]
struct StatusReport {
    #[serde(flatten)]
    counts: statuses::Counts,
    lock_key: String,
    lock_key_int8: i64,
    lock_holder: Option<lock::Holder>,
    schema: String,
    schema_version: i32,
}

/// `status`: counts by state, due now, oldest unfinished age, lock holder.
pub fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = super::connect(config)?;
    let counts = statuses::counts(&mut client)?;
    let key = lock::derive_key(&config.reconciler.lock_key);
    let report = StatusReport {
        counts,
        lock_key: config.reconciler.lock_key.clone(),
        lock_key_int8: key,
        lock_holder: lock::holder(&mut client, key)?,
        schema: config.database.schema.clone(),
        schema_version: migrate::latest_version(),
    };
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
    match report.counts.oldest_unfinished_age_seconds {
        Some(age) => println!(
            "oldest unfinished: {} old",
            humantime::format_duration(std::time::Duration::from_secs(age.max(0.0) as u64))
        ),
        None => println!("oldest unfinished: none"),
    }
    match &report.lock_holder {
        Some(h) => println!(
            "lock:      held by backend pid {} ({}, from {}, since {})",
            h.pid,
            h.application_name,
            h.client_addr,
            h.since.to_rfc3339()
        ),
        None => println!("lock:      free (key {} = {})", report.lock_key, key),
    }
    Ok(ExitCode::SUCCESS)
}
