//! `channel create|list|disable|enable|delete|rotate-secret`.

use std::process::ExitCode;

use super::{ChannelCommand, UsageError};
use crate::config::Config;
use crate::db::channels::{self, NewChannel};
use crate::delivery::endpoint;
use crate::delivery::sign::Secret;
use crate::delivery::ssrf::Guard;

/// Longest `--overlap` of `rotate-secret`.
const MAX_OVERLAP: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// Runs one `channel` subcommand.
pub fn run(config: &Config, command: ChannelCommand) -> anyhow::Result<ExitCode> {
    match command {
        ChannelCommand::Create {
            namespace,
            name,
            url,
            secret,
            headers,
            disabled,
        } => {
            non_empty("--namespace", &namespace)?;
            non_empty("--name", &name)?;
            let parsed =
                endpoint::check_url(&url).map_err(|e| UsageError(format!("--url: {e}")))?;
            if let Some(ip) = endpoint::literal_address(&parsed) {
                Guard::new(config.delivery.allow_networks.clone())
                    .check(ip)
                    .map_err(|refused| UsageError(format!("--url {url:?}: {refused}")))?;
            }
            let secret = new_secret(secret)?;
            let mut map = serde_json::Map::new();
            for h in &headers {
                let (k, v) = endpoint::parse_header_arg(h).map_err(UsageError)?;
                map.insert(k, serde_json::Value::String(v));
            }
            let mut client = super::connect(config)?;
            let id = channels::create(
                &mut client,
                &NewChannel {
                    namespace: &namespace,
                    name: &name,
                    url: &url,
                    headers: serde_json::Value::Object(map),
                    signing_secret: &secret,
                    disabled,
                },
            )?;
            println!("{id}");
        }
        ChannelCommand::List {
            namespace,
            json,
            show_secrets,
        } => {
            let mut client = super::connect(config)?;
            let list = channels::list(&mut client, namespace.as_deref(), show_secrets)?;
            if json {
                super::print_json(&list)?;
            } else {
                for c in &list {
                    let secret = c
                        .signing_secret
                        .as_deref()
                        .map(|s| format!("  secret={s}"))
                        .unwrap_or_default();
                    println!(
                        "{}  {}  {}  {}  {}{}",
                        c.id,
                        c.namespace,
                        c.name,
                        if c.disabled { "disabled" } else { "enabled" },
                        c.url,
                        secret
                    );
                }
            }
        }
        ChannelCommand::Disable { id } => change(config, id, "disabled", |c| {
            channels::set_disabled(c, id, true)
        })?,
        ChannelCommand::Enable { id } => change(config, id, "enabled", |c| {
            channels::set_disabled(c, id, false)
        })?,
        ChannelCommand::Delete { id } => {
            change(config, id, "deleted", |c| channels::delete(c, id))?
        }
        ChannelCommand::RotateSecret {
            id,
            secret,
            overlap,
        } => {
            if overlap > MAX_OVERLAP {
                return Err(UsageError(format!(
                    "--overlap {}: must be at most {}",
                    humantime::format_duration(overlap),
                    humantime::format_duration(MAX_OVERLAP)
                ))
                .into());
            }
            let secret = new_secret(secret)?;
            let mut client = super::connect(config)?;
            let until = channels::rotate_secret(&mut client, id, &secret, overlap)?
                .ok_or_else(|| UsageError(format!("no channel {id} (unknown or deleted)")))?;
            println!("{secret}");
            if overlap.is_zero() {
                eprintln!("channel {id}: secret rotated; the old secret is no longer used");
            } else {
                eprintln!(
                    "channel {id}: secret rotated; requests carry the old secret's signature too until {}",
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn change(
    config: &Config,
    id: uuid::Uuid,
    what: &str,
    f: impl FnOnce(&mut postgres::Client) -> Result<bool, crate::db::DbError>,
) -> anyhow::Result<()> {
    let mut client = super::connect(config)?;
    if !f(&mut client)? {
        return Err(UsageError(format!("no channel {id} (unknown or deleted)")).into());
    }
    eprintln!("channel {id} {what}");
    Ok(())
}

/// `--secret` checked, or a new generated secret. The error never quotes
/// the secret.
fn new_secret(secret: Option<String>) -> Result<String, UsageError> {
    match secret {
        Some(s) => {
            Secret::parse(&s).map_err(|e| UsageError(format!("--secret: {e}")))?;
            Ok(s)
        }
        None => Ok(Secret::generate()),
    }
}

/// Refuses an empty flag value.
pub(super) fn non_empty(flag: &str, value: &str) -> Result<(), UsageError> {
    if value.trim().is_empty() {
        return Err(UsageError(format!("{flag} must not be empty")));
    }
    Ok(())
}
