//! `channel create|list|disable|enable|delete`.

use std::process::ExitCode;

use super::{ChannelCommand, UsageError};
use crate::config::Config;
use crate::db::channels::{self, NewChannel};
use crate::delivery::endpoint;
use crate::delivery::sign::Secret;

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
            endpoint::check_url(&url).map_err(|e| UsageError(format!("--url: {e}")))?;
            let secret = match secret {
                Some(s) => {
                    Secret::parse(&s).map_err(|e| UsageError(format!("--secret: {e}")))?;
                    s
                }
                None => Secret::generate(),
            };
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

/// Refuses an empty flag value.
pub(super) fn non_empty(flag: &str, value: &str) -> Result<(), UsageError> {
    if value.trim().is_empty() {
        return Err(UsageError(format!("{flag} must not be empty")));
    }
    Ok(())
}
