//! `audit --namespace NS`: the namespace's audit trail. And
//! `secrets rotate-key --new-key-file F`: re-encrypts every signing secret
//! and header value under a new key, online (a few channels per short
//! transaction, so deliveries and API calls go on), after storing the
//! bridges that let an instance holding either key read both. Run again
//! with the key `[secrets] key_file` now names, it finishes the rotation:
//! what instances still on the old key wrote meanwhile is re-encrypted and
//! the bridges are removed. The sealing itself is `secrets`' and
//! `db::secrets`' business.

use std::path::Path;
use std::process::ExitCode;

use super::UsageError;
use crate::config::Config;
use crate::db::secrets as db_secrets;
use crate::secrets::{self, Key};

/// Channels re-encrypted per transaction.
pub const BATCH: i64 = 50;

/// `secrets rotate-key --new-key-file F`.
pub fn rotate_key(config: &Config, new_key_file: &Path) -> anyhow::Result<ExitCode> {
    let Some(current) = config.secrets.key.clone() else {
        return Err(UsageError(format!(
            "secrets rotate-key needs the key secrets are stored under now: set [secrets] key_file in {} (without one they are stored in plain; set it and run `migrate` to encrypt them)",
            config.path.display()
        ))
        .into());
    };
    let new = Key::load(new_key_file).map_err(|e| UsageError(format!("--new-key-file: {e}")))?;
    let mut client = super::connect(config)?;
    if new.id() == current.id() {
        let n = db_secrets::reseal_all(&mut client, &new, BATCH)?;
        let mut tx = super::begin(&mut client)?;
        let bridges = db_secrets::drop_bridges(&mut tx)?;
        super::commit_audited(
            tx,
            None,
            "finishKeyRotation",
            "secrets",
            Some(new.id().to_string()),
        )?;
        println!(
            "key {}: re-encrypted {n} channel(s) still under another key; removed {bridges} key bridge(s): only this key reads the stored secrets now",
            new.id()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut tx = super::begin(&mut client)?;
    db_secrets::add_bridges(&mut tx, &current, &new)?;
    super::commit_audited(tx, None, "rotateKey", "secrets", Some(new.id().to_string()))?;
    secrets::learn(current.clone());
    secrets::install(Some(new.clone()));
    let n = db_secrets::reseal_all(&mut client, &new, BATCH)?;
    println!(
        "re-encrypted {n} channel(s) from key {} to key {}",
        current.id(),
        new.id()
    );
    eprintln!(
        "next: set [secrets] key_file = {:?} on every instance and restart it (until then, instances read values under either key); then run `secrets rotate-key --new-key-file {}` once more to re-encrypt what the old key still wrote and remove the bridge between the keys",
        new_key_file.display().to_string(),
        new_key_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `audit --namespace NS [--since TIME] [--json]`: every recorded change of
/// the namespace, newest first.
pub fn audit(
    config: &Config,
    namespace: &str,
    since: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::ops::page::Page;
    let since = since
        .map(|s| crate::ops::channels::parse_since("since", s))
        .transpose()
        .map_err(super::ops_error)?;
    let mut client = super::connect(config)?;
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = Page::parse(Some("500"), cursor.as_deref()).map_err(super::ops_error)?;
        let paged = crate::ops::audit::list(&mut client, Some(namespace), since, page)
            .map_err(super::ops_error)?;
        rows.extend(paged.items);
        match paged.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    if json {
        super::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    for r in &rows {
        let actor = match &r.actor {
            crate::db::audit::Actor::Token { id, name } => format!("token {name} ({id})"),
            crate::db::audit::Actor::Cli { user } => format!("cli {user}"),
        };
        println!(
            "{}  {actor}  {}  {} {}",
            r.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            r.operation,
            r.object_kind,
            r.object_id.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}
