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
            let published = crate::db::leaders::published(&mut client)?;
            let listed: Vec<Listed<'_>> = list
                .iter()
                .map(|c| Listed::new(c, published.as_ref()))
                .collect();
            if json {
                super::print_json(&listed)?;
            } else {
                for l in &listed {
                    let c = l.channel;
                    let secret = c
                        .signing_secret
                        .as_deref()
                        .map(|s| format!("  secret={s}"))
                        .unwrap_or_default();
                    let state = match (&c.disabled_reason, c.disabled) {
                        (Some(reason), true) => format!("disabled ({reason})"),
                        (None, true) => "disabled".to_string(),
                        (_, false) => "enabled".to_string(),
                    };
                    let breaker = match (l.breaker, &l.open_until) {
                        (Some("open"), Some(until)) => format!("  breaker open until {until}"),
                        (Some("half_open"), _) => "  breaker half-open (probing)".to_string(),
                        _ => String::new(),
                    };
                    println!(
                        "{}  {}  {}  {}  {}{}{}",
                        c.id, c.namespace, c.name, state, c.url, breaker, secret
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

/// A channel as `channel list` shows it: the stored channel, plus what the
/// leader publishes of it (its breaker and deliveries in flight, as of the
/// leader's last heartbeat; `breaker` is `null` when no instance leads).
#[derive(serde::Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    channel: &'a channels::Channel,
    breaker: Option<&'a str>,
    in_flight: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    open_until: Option<String>,
}

impl<'a> Listed<'a> {
    fn new(
        channel: &'a channels::Channel,
        published: Option<&'a serde_json::Map<String, serde_json::Value>>,
    ) -> Self {
        let entry = published.and_then(|p| p.get(&channel.id.to_string()));
        Listed {
            channel,
            breaker: match (published, entry) {
                (None, _) => None,
                (Some(_), None) => Some("closed"),
                (Some(_), Some(e)) => e["breaker"].as_str().or(Some("closed")),
            },
            in_flight: entry.and_then(|e| e["in_flight"].as_u64()).unwrap_or(0),
            open_until: entry.and_then(|e| e["open_until"].as_str().map(String::from)),
        }
    }
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
