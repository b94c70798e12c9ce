//! `channel create|list|update|disable|enable|delete|rotate-secret`: parses
//! the flags, calls `ops::channels`, prints the result.

use std::process::ExitCode;

use super::{begin, commit_audited, ops_error, ChannelCommand, UsageError};
use crate::config::Config;
use crate::delivery::endpoint;
use crate::delivery::ssrf::Guard;
use crate::ops::channels::{self, ChannelPatch, ChannelView, NewChannelInput};

/// Runs one `channel` subcommand.
pub fn run(config: &Config, command: ChannelCommand) -> anyhow::Result<ExitCode> {
    let guard = Guard::new(config.delivery.allow_networks.clone())
        .with_source(&config.path.display().to_string());
    match command {
        ChannelCommand::Create {
            namespace,
            name,
            url,
            secret,
            headers,
            disabled,
            rate_limit,
            ordered,
        } => {
            let input = NewChannelInput {
                namespace,
                name,
                url,
                headers: header_args(&headers)?,
                secret,
                disabled,
                rate_limit,
                ordered,
            };
            channels::check_new(&guard, &input).map_err(ops_error)?;
            let mut client = super::connect(config)?;
            let mut tx = begin(&mut client)?;
            let created = channels::create(&mut tx, &guard, input).map_err(ops_error)?;
            if let Some(warning) = &created.warning {
                eprintln!("warning: {warning}");
            }
            let c = &created.channel.channel;
            commit_audited(
                tx,
                Some(&c.namespace),
                "createChannel",
                "channel",
                Some(c.id.to_string()),
            )?;
            println!("{}", created.channel.channel.id);
            keep_svix_in_step(config, &mut client, created.channel.channel.id);
        }
        ChannelCommand::List {
            namespace,
            json,
            show_secrets,
        } => {
            let mut client = super::connect(config)?;
            let listed = channels::list(&mut client, namespace.as_deref(), None, show_secrets)
                .map_err(ops_error)?
                .items;
            if json {
                super::print_json(&listed)?;
            } else {
                for l in &listed {
                    let c = &l.channel;
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
                    let breaker = match (l.breaker.as_deref(), &l.open_until) {
                        (Some("open"), Some(until)) => format!("  breaker open until {until}"),
                        (Some("half_open"), _) => "  breaker half-open (probing)".to_string(),
                        _ => String::new(),
                    };
                    println!(
                        "{}  {}  {}  {}  {}{}{}{}",
                        c.id,
                        c.namespace,
                        c.name,
                        state,
                        c.url,
                        breaker,
                        controls_text(l),
                        secret
                    );
                }
            }
        }
        ChannelCommand::Update {
            id,
            url,
            name,
            headers,
            clear_headers,
            rate_limit,
            ordered,
            unordered,
        } => {
            let headers = if clear_headers {
                Some(Vec::new())
            } else if headers.is_empty() {
                None
            } else {
                Some(header_args(&headers)?)
            };
            let patch = ChannelPatch {
                name,
                url,
                headers,
                rate_limit: rate_limit.map(Some),
                ordered: (ordered || unordered).then_some(ordered),
            };
            if patch.is_empty() {
                return Err(UsageError(
                    "channel update: nothing to change; give --url, --name, --header, --clear-headers, --rate-limit, --ordered or --unordered"
                        .into(),
                )
                .into());
            }
            channels::check_patch(&guard, &patch).map_err(ops_error)?;
            let mut client = super::connect(config)?;
            let mut tx = begin(&mut client)?;
            let view = channels::update(&mut tx, &guard, None, id, patch).map_err(ops_error)?;
            let ns = view.channel.namespace;
            commit_audited(
                tx,
                Some(&ns),
                "updateChannel",
                "channel",
                Some(id.to_string()),
            )?;
            keep_svix_in_step(config, &mut client, id);
            eprintln!("channel {id} updated");
        }
        ChannelCommand::Disable { id } => {
            let mut client = super::connect(config)?;
            let mut tx = begin(&mut client)?;
            let view = channels::set_disabled(&mut tx, None, id, true).map_err(ops_error)?;
            let ns = view.channel.namespace;
            commit_audited(
                tx,
                Some(&ns),
                "disableChannel",
                "channel",
                Some(id.to_string()),
            )?;
            keep_svix_in_step(config, &mut client, id);
            eprintln!("channel {id} disabled");
        }
        ChannelCommand::Enable { id } => {
            let mut client = super::connect(config)?;
            let mut tx = begin(&mut client)?;
            let view = channels::set_disabled(&mut tx, None, id, false).map_err(ops_error)?;
            let ns = view.channel.namespace;
            commit_audited(
                tx,
                Some(&ns),
                "enableChannel",
                "channel",
                Some(id.to_string()),
            )?;
            keep_svix_in_step(config, &mut client, id);
            eprintln!("channel {id} enabled");
        }
        ChannelCommand::Delete { id } => {
            let mut client = super::connect(config)?;
            let mut tx = begin(&mut client)?;
            let ns = channels::stored(&mut tx, None, id, false)
                .map_err(ops_error)?
                .namespace;
            channels::delete(&mut tx, None, id).map_err(ops_error)?;
            commit_audited(
                tx,
                Some(&ns),
                "deleteChannel",
                "channel",
                Some(id.to_string()),
            )?;
            keep_svix_in_step(config, &mut client, id);
            eprintln!("channel {id} deleted");
        }
        ChannelCommand::RotateSecret {
            id,
            secret,
            overlap,
        } => {
            channels::check_rotation(secret.as_deref(), overlap).map_err(ops_error)?;
            let mut client = super::connect(config)?;
            let mut tx = begin(&mut client)?;
            let ns = channels::stored(&mut tx, None, id, false)
                .map_err(ops_error)?
                .namespace;
            let rotated =
                channels::rotate_secret(&mut tx, None, id, secret, overlap).map_err(ops_error)?;
            commit_audited(
                tx,
                Some(&ns),
                "rotateChannelSecret",
                "channel",
                Some(id.to_string()),
            )?;
            keep_svix_in_step(config, &mut client, id);
            println!("{}", rotated.signing_secret);
            match rotated.previous_secret_until {
                None => eprintln!("channel {id}: secret rotated; the old secret is no longer used"),
                Some(until) => eprintln!(
                    "channel {id}: secret rotated; requests carry the old secret's signature too until {}",
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// With `delivery.provider = "svix"`: tells Svix about the change just
/// committed; when Svix cannot be told, a warning (the change stays).
fn keep_svix_in_step(config: &Config, client: &mut postgres::Client, id: uuid::Uuid) {
    if let Some(warning) = crate::ops::svix::after_change(config, client, id) {
        eprintln!("warning: {warning}");
    }
}

/// What `channel list` shows of a channel's delivery controls: its rate
/// limit, its order, what they hold back and what an ordered one waits on.
fn controls_text(view: &ChannelView) -> String {
    let c = &view.channel;
    let mut out = String::new();
    if let Some(limit) = c.rate_limit {
        out.push_str(&format!("  rate {limit}"));
    }
    if c.ordered {
        out.push_str("  ordered");
        if let Some(head) = &view.waiting_on {
            let when = match (head.state.as_str(), head.next_attempt_at) {
                ("SENDING", Some(t)) => format!(
                    ", retry at {}",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                _ => String::new(),
            };
            out.push_str(&format!(
                " (waiting on event {}: {}{when})",
                head.event_id, head.state
            ));
        }
    }
    if let Some(n) = view.held_back.filter(|n| *n > 0) {
        out.push_str(&format!("  held back {n}"));
    }
    out
}

/// `--header 'Name: value'` arguments as (name, value) pairs.
fn header_args(args: &[String]) -> Result<Vec<(String, String)>, UsageError> {
    args.iter()
        .map(|h| endpoint::parse_header_arg(h).map_err(UsageError))
        .collect()
}
