//! The command line: argument definitions (clap) and the dispatch of each
//! command to its module. The names of commands and flags are a contract that
//! outside scripts rely on (docs/cli.md); keep them exactly.
//!
//! `main` calls [`run`]; only `main` turns errors into messages and exit
//! codes ([`exit_code`]).
//!
//! Longer than most files (about 660 lines before its tests): the whole
//! command line as clap declares it is one table, kept in one place.

mod admin;
mod channel;
mod event;
mod event_type;
mod rule;
mod secrets;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::config::{Config, ConfigError};
use crate::db::DbError;
use crate::ops::OpsError;

pub use crate::exit::{UsageError, EXIT_LOCK_HELD};
pub use crate::sink::SinkArgs;

/// notification-reconciler: delivers notification events stored in
/// PostgreSQL to webhook endpoints.
#[derive(Debug, Parser)]
#[command(name = "notification-reconciler", version, about)]
pub struct Cli {
    /// Configuration file (must exist). Without it: ./config.toml, then
    /// /etc/notification-reconciler/config.toml, else the defaults and the
    /// environment. Not used by `sink`, which takes only its flags.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations (idempotent).
    Migrate,
    /// Validate the configuration; print the effective config, secrets redacted.
    CheckConfig,
    /// The daemon: leads (or stands by) until SIGTERM/SIGINT.
    Run,
    /// One sweep of what is due now; print its report.
    Once {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Counts by state, due now, oldest unfinished age, lock holder.
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage webhook channels.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Manage rules (event type → channels).
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Emit and inspect events.
    #[command(subcommand)]
    Event(EventCommand),
    /// Describe event types for customers (shown in the console).
    #[command(subcommand)]
    EventType(EventTypeCommand),
    /// Deliver an event again (SUCCESS/FAILED/SENDING → RESENDING); without
    /// EVENT_ID, every matching delivery of `--channel` (bulk resend).
    Resend {
        /// The event; omit it to resend a channel's deliveries in bulk.
        #[arg(value_parser = parse_id)]
        event_id: Option<Uuid>,
        /// Only this channel's delivery; without EVENT_ID, every delivery
        /// of this channel that matches `--since` and `--state`.
        #[arg(long, value_name = "ID")]
        #[arg(value_parser = parse_id)]
        channel: Option<Uuid>,
        /// Bulk: only deliveries of events created at or after TIME: an
        /// RFC 3339 time (`2026-12-01T08:00:00Z`) or a duration ago (`24h`).
        #[arg(long, value_name = "TIME", conflicts_with = "event_id")]
        since: Option<String>,
        /// Bulk: only deliveries in this state (SUCCESS, FAILED or SENDING).
        #[arg(long, value_name = "STATE", conflicts_with = "event_id")]
        state: Option<crate::state::State>,
    },
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Remove finished events older than the retention period, with their
    /// delivery statuses (what the leader does in the background); prints
    /// what was (or would be) removed.
    Prune {
        /// Remove finished events older than this (default:
        /// `retention.keep_finished`; "0s" removes nothing).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Count what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A development webhook receiver that verifies signatures.
    Sink(SinkArgs),
    /// Encryption at rest of signing secrets and header values.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Svix as the delivery provider (`delivery.provider = "svix"`).
    #[command(subcommand)]
    Svix(SvixCommand),
    /// Who changed what in a namespace (the audit trail), newest first.
    Audit {
        /// The namespace.
        #[arg(long)]
        namespace: String,
        /// Only changes at or after TIME: an RFC 3339 time or a duration
        /// ago (`24h`).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `svix …`
#[derive(Debug, Subcommand)]
pub enum SvixCommand {
    /// Compare every channel with its Svix endpoint and repair what differs
    /// (missing, changed or deleted in Svix; left over from a deleted
    /// channel); prints what was (or would be) repaired.
    Sync {
        /// List the drift; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `secrets …`
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Re-encrypt every signing secret and header value under a new key,
    /// online, in small steps; then point `[secrets] key_file` at the new
    /// file and restart each instance (both keys are readable meanwhile).
    RotateKey {
        /// The new key: a file of 32 random bytes as base64.
        #[arg(long, value_name = "F")]
        new_key_file: std::path::PathBuf,
    },
}

/// `token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; prints the token once (only its hash is stored).
    #[command(group(clap::ArgGroup::new("scope").required(true).args(["namespace", "admin"])))]
    Create {
        /// A name for people (what it is for).
        #[arg(long)]
        name: String,
        /// The one namespace the token works in.
        #[arg(long)]
        namespace: Option<String>,
        /// An admin token: every namespace, and /v1/status.
        #[arg(long)]
        admin: bool,
        /// Refused on every write (403).
        #[arg(long)]
        read_only: bool,
        /// Stops working after this long, e.g. 1h, 90d (default: never).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: every instance refuses it within a second.
    Revoke {
        /// Token id.
        #[arg(value_parser = parse_id)]
        id: Uuid,
    },
}

/// `channel …`
#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Create a webhook channel; prints its id.
    Create {
        /// Namespace (tenant).
        #[arg(long)]
        namespace: String,
        /// Name.
        #[arg(long)]
        name: String,
        /// Endpoint URL (http or https).
        #[arg(long)]
        url: String,
        /// Signing secret `whsec_<base64>`; generated when omitted.
        #[arg(long)]
        secret: Option<String>,
        /// Custom header 'Name: value' (repeatable).
        #[arg(long = "header", value_name = "'K: V'")]
        headers: Vec<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// At most N requests start in any second (N/s) or minute (N/m),
        /// across instances, retries and probes counted.
        #[arg(long, value_name = "N/s|N/m")]
        rate_limit: Option<String>,
        /// Deliver one at a time in enqueue order; a delivery waiting for
        /// its retry holds back the later ones.
        #[arg(long)]
        ordered: bool,
    },
    /// List channels.
    List {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        /// Include the signing secrets.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Change a channel's URL, name, custom headers, rate limit or order;
    /// deliveries still due go to the new URL.
    Update {
        /// Channel id.
        #[arg(value_parser = parse_id)]
        id: Uuid,
        /// New endpoint URL (checked like at create).
        #[arg(long)]
        url: Option<String>,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// Custom header 'Name: value' (repeatable); replaces all headers.
        #[arg(long = "header", value_name = "'K: V'")]
        headers: Vec<String>,
        /// Remove every custom header.
        #[arg(long, conflicts_with = "headers")]
        clear_headers: bool,
        /// New rate limit (N/s or N/m); `none` removes it.
        #[arg(long, value_name = "N/s|N/m|none")]
        rate_limit: Option<String>,
        /// Deliver one at a time in enqueue order from now on.
        #[arg(long)]
        ordered: bool,
        /// Deliver in parallel again.
        #[arg(long, conflicts_with = "ordered")]
        unordered: bool,
    },
    /// Disable a channel (its pending deliveries fail).
    Disable {
        /// Channel id.
        #[arg(value_parser = parse_id)]
        id: Uuid,
    },
    /// Enable a channel.
    Enable {
        /// Channel id.
        #[arg(value_parser = parse_id)]
        id: Uuid,
    },
    /// Delete a channel (soft delete; its pending deliveries fail).
    Delete {
        /// Channel id.
        #[arg(value_parser = parse_id)]
        id: Uuid,
    },
    /// Replace a channel's signing secret; prints the new secret. During the
    /// overlap every request carries both signatures.
    RotateSecret {
        /// Channel id.
        #[arg(value_parser = parse_id)]
        id: Uuid,
        /// The new secret `whsec_<base64>`; generated when omitted.
        #[arg(long)]
        secret: Option<String>,
        /// How long requests also carry the old secret's signature, e.g. 24h
        /// (0s: drop the old secret at once).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
        overlap: std::time::Duration,
    },
}

/// `rule …`
#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Create a rule; prints its id.
    Create {
        /// Namespace.
        #[arg(long)]
        namespace: String,
        /// Name.
        #[arg(long)]
        name: String,
        /// Event type it matches.
        #[arg(long)]
        event_type: String,
        /// Channel id (repeatable, at least one).
        #[arg(long = "channel", value_name = "ID", required = true)]
        #[arg(value_parser = parse_id)]
        channels: Vec<Uuid>,
        /// Only events whose payload meets this PostgreSQL jsonpath
        /// predicate, e.g. '$.amount > 1000'.
        #[arg(long, value_name = "JSONPATH_PREDICATE")]
        filter: Option<String>,
    },
    /// Change a rule's channels or filter.
    Update {
        /// Rule id.
        #[arg(value_parser = parse_id)]
        id: Uuid,
        /// Assign this channel too (repeatable).
        #[arg(long = "add-channel", value_name = "ID")]
        #[arg(value_parser = parse_id)]
        add: Vec<Uuid>,
        /// Unassign this channel (repeatable); its deliveries still due for
        /// the rule's events end FAILED.
        #[arg(long = "remove-channel", value_name = "ID")]
        #[arg(value_parser = parse_id)]
        remove: Vec<Uuid>,
        /// Set the payload filter (a jsonpath predicate).
        #[arg(long, value_name = "JSONPATH_PREDICATE", conflicts_with = "no_filter")]
        filter: Option<String>,
        /// Remove the payload filter.
        #[arg(long)]
        no_filter: bool,
    },
    /// List rules.
    List {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a rule: it matches no new event; deliveries already enqueued
    /// go on.
    Delete {
        /// Rule id.
        #[arg(value_parser = parse_id)]
        id: Uuid,
    },
}

/// `event …`
#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Enqueue an event through the producer function; prints the event ids.
    Emit {
        /// Namespace.
        #[arg(long)]
        namespace: String,
        /// Event type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: String,
        /// Payload JSON, or @file.json.
        #[arg(long, value_name = "JSON")]
        data: String,
    },
    /// List the newest events.
    List {
        /// Only events with a delivery in this state.
        #[arg(long)]
        state: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        /// At most this many (newest first).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one event with its deliveries and attempts.
    Show {
        /// Event id.
        #[arg(value_parser = parse_id)]
        id: Uuid,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The event types of a namespace (seen in its events, subscribed to
    /// by a rule, or described), with how many of their events are stored
    /// and when the last was written.
    Types {
        /// The namespace.
        #[arg(long)]
        namespace: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `event-type …`
#[derive(Debug, Subcommand)]
pub enum EventTypeCommand {
    /// Set the description customers see for an event type (an empty
    /// description removes it). The type need not have been seen yet.
    Describe {
        /// The namespace.
        #[arg(long)]
        namespace: String,
        /// The event type, e.g. invoice.paid.
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// What the type means, in a sentence or two.
        #[arg(long, value_name = "TEXT")]
        description: String,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Sink(args) => {
            init_logging("info");
            if let Some(path) = &cli.config {
                eprintln!(
                    "sink: --config {} is not used: the sink reads no config file, only its flags (see `sink --help`)",
                    path.display()
                );
            }
            crate::sink::run(&args)
        }
        command => {
            let database_url = std::env::var("DATABASE_URL").ok();
            let from_env = database_url.as_deref().is_some_and(|u| !u.is_empty());
            let config = Config::load_from(cli.config.as_deref(), database_url)?;
            init_logging(&config.log.level);
            dispatch(command, &config).map_err(|e| name_url_source(e, &config, from_env))
        }
    }
}

fn dispatch(command: Command, config: &Config) -> anyhow::Result<ExitCode> {
    // Values are sealed with, and opened by, the configured key.
    crate::secrets::install(config.secrets.key.clone());
    match command {
        Command::Migrate => admin::migrate(config),
        Command::CheckConfig => admin::check_config(config),
        Command::Status { json } => admin::status(config, json),
        Command::Run => {
            for warning in crate::config::check::warnings(config) {
                log::warn!("{}: {warning}", config.path.display());
            }
            // Refuse to start rather than fail deliveries whose secrets
            // this instance cannot decrypt.
            // (A database not reachable yet, or not migrated, is the
            // daemon's own business to report.)
            if let Ok(mut client) = connect(config) {
                crate::db::secrets::check_readable(&mut client)?;
            }
            crate::service::daemon::run(config, &|config, telemetry| {
                // The management API: leader and standby serve it alike.
                Ok(match config.api.listen {
                    Some(addr) => Some(Box::new(crate::api::serve(
                        config,
                        addr,
                        Some(std::sync::Arc::clone(telemetry)),
                    )?) as Box<dyn std::any::Any>),
                    None => None,
                })
            })
        }
        Command::Once { json } => {
            // As `run`: refuse rather than fail deliveries it cannot sign.
            if let Ok(mut client) = connect(config) {
                crate::db::secrets::check_readable(&mut client)?;
            }
            crate::service::once::run(config, json)
        }
        Command::Channel(c) => channel::run(config, c),
        Command::Svix(SvixCommand::Sync { dry_run, json }) => svix_sync(config, dry_run, json),
        Command::Rule(c) => rule::run(config, c),
        Command::Event(c) => event::run(config, c),
        Command::EventType(c) => event_type::run(config, c),
        Command::Token(c) => token::run(config, c),
        Command::Secrets(SecretsCommand::RotateKey { new_key_file }) => {
            secrets::rotate_key(config, &new_key_file)
        }
        Command::Audit {
            namespace,
            since,
            json,
        } => secrets::audit(config, &namespace, since.as_deref(), json),
        Command::Resend {
            event_id: Some(event_id),
            channel,
            ..
        } => event::resend(config, event_id, channel),
        Command::Resend {
            event_id: None,
            channel: Some(channel),
            since,
            state,
        } => event::resend_channel(config, channel, since.as_deref(), state),
        Command::Resend {
            event_id: None,
            channel: None,
            ..
        } => Err(UsageError(
            "resend needs an EVENT_ID, or --channel ID to resend a channel's deliveries in bulk"
                .into(),
        )
        .into()),
        Command::Prune {
            older_than,
            dry_run,
            json,
        } => admin::prune(config, older_than, dry_run, json),
        Command::Sink(_) => unreachable!("handled before loading the config"),
    }
}

/// A failure to connect, prefixed with where the URL came from
/// (`DATABASE_URL`, or `database.url` of the file read), so that the user
/// knows what to fix; other errors unchanged.
fn name_url_source(err: anyhow::Error, config: &Config, from_env: bool) -> anyhow::Error {
    let connect = err
        .chain()
        .any(|c| matches!(c.downcast_ref::<DbError>(), Some(DbError::Connect { .. })));
    match (connect, from_env) {
        (false, _) => err,
        (true, true) => err.context("DATABASE_URL"),
        (true, false) => err.context(format!("{}: database.url", config.path.display())),
    }
}

/// Records a change made by the command line (the OS user as the actor)
/// inside `tx`, the change's own transaction, then commits both.
pub(crate) fn commit_audited(
    mut tx: postgres::Transaction<'_>,
    namespace: Option<&str>,
    operation: &str,
    object_kind: &str,
    object_id: Option<String>,
) -> anyhow::Result<()> {
    let what = crate::ops::audit::Change {
        namespace,
        operation,
        object_kind,
    };
    crate::ops::audit::record(&mut tx, &crate::ops::audit::cli_actor(), what, object_id)
        .map_err(ops_error)?;
    tx.commit()
        .map_err(crate::db::DbError::query("committing a change"))?;
    Ok(())
}

/// `svix sync [--dry-run] [--json]`: exit 0 when everything is (or, dry
/// run, was found) in step or repaired; 1 when a repair or a namespace
/// failed; 2 with the http provider.
fn svix_sync(config: &Config, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let Some(svix) = crate::ops::svix::client(config) else {
        return Err(UsageError(format!(
            "svix sync: {}: delivery.provider is \"http\"; set it to \"svix\" with [svix] url and token_file",
            config.path.display()
        ))
        .into());
    };
    let mut client = connect(config)?;
    let report = crate::ops::svix::sync(&mut client, &svix, dry_run).map_err(ops_error)?;
    if json {
        print_json(&report)?;
    } else {
        for d in &report.drift {
            let fields = if d.fields.is_empty() {
                String::new()
            } else {
                format!(" ({})", d.fields.join(", "))
            };
            let done = match (&d.error, d.repaired) {
                (Some(e), _) => format!("repair failed: {e}"),
                (None, true) => "repaired".to_owned(),
                (None, false) => "not repaired (dry run)".to_owned(),
            };
            println!(
                "{}  channel {}  {}{fields}  {done}",
                d.namespace, d.channel_id, d.action
            );
        }
        for e in &report.errors {
            println!("error: {e}");
        }
        println!(
            "{} namespace(s), {} channel(s): {} in step, {} drifted{}",
            report.namespaces,
            report.channels,
            report.in_step,
            report.drift.len(),
            if dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            }
        );
    }
    let failed = !report.errors.is_empty() || report.drift.iter().any(|d| d.error.is_some());
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A transaction on `client` for one change.
pub(crate) fn begin(client: &mut postgres::Client) -> anyhow::Result<postgres::Transaction<'_>> {
    Ok(client
        .transaction()
        .map_err(crate::db::DbError::query("starting a change"))?)
}

/// Logging to stderr; `RUST_LOG` overrides the configured level.
///
/// `tokio_postgres::query` is capped at `info` whatever `RUST_LOG` says: at
/// `debug` it prints every statement's parameters, which include signing
/// secrets (`channel create --secret`).
fn init_logging(level: &str) {
    let env = env_logger::Env::default().default_filter_or(level);
    let _ = env_logger::Builder::from_env(env)
        .filter_module("tokio_postgres::query", log::LevelFilter::Info)
        .format_timestamp_millis()
        .try_init();
}

/// An operation's error as the command line shows it: the caller's errors
/// become usage errors (exit 2) naming the flag (`--event-type`) where the
/// operation names the field (`event_type`); database failures stay.
pub(crate) fn ops_error(err: OpsError) -> anyhow::Error {
    match err {
        OpsError::Invalid { field, message } if field.is_empty() => UsageError(message).into(),
        OpsError::Invalid { field, message } => {
            // `rule create` takes `--channel ID` repeated for the
            // operation's `channels` list.
            let field = if field == "channels" {
                "channel".to_string()
            } else {
                field
            };
            let flag = if field.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                format!("--{}", field.replace('_', "-"))
            } else {
                field
            };
            let sep = if message.starts_with('"') { " " } else { ": " };
            UsageError(format!("{flag}{sep}{message}")).into()
        }
        OpsError::NotFound(m) | OpsError::Conflict(m) | OpsError::TooLarge(m) => {
            UsageError(m).into()
        }
        OpsError::Db(e) => e.into(),
    }
}

/// The exit code for an error from [`run`]: 2 for usage and configuration
/// problems (a refused database TLS handshake included: `database.url`
/// does not fit the server), 1 for everything else (runtime failures).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let usage = err.chain().any(|e| {
        e.is::<ConfigError>()
            || e.is::<UsageError>()
            || e.is::<clap::Error>()
            || e.is::<crate::db::tls::Refused>()
            || e.downcast_ref::<DbError>()
                .is_some_and(DbError::is_configuration)
    });
    if usage {
        2
    } else {
        1
    }
}

/// The error as the one line `main` prints: the chain of causes joined by
/// `": "`, skipping a cause whose text its parent already shows (our error
/// types print their source in their own message), with any line breaks of
/// a server message (`DETAIL:`, `HINT:`) folded into the same line.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// clap's error text as one line: its first paragraph (the sentence, and for
/// missing arguments the list of them on the following lines) joined by
/// spaces, then its tips ("a similar argument exists: '--header'"); the
/// usage help is dropped.
pub fn usage_error_line(clap_text: &str) -> String {
    let mut line = clap_text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    for tip in clap_text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("tip:"))
    {
        line.push_str("; ");
        line.push_str(tip);
    }
    if line.is_empty() {
        "error: invalid arguments".to_string()
    } else {
        line
    }
}

/// An id argument: a whole UUID (the docs shorten ids as `5c…`, but a
/// prefix is not accepted; copy the id from `create` or a `list`).
fn parse_id(text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text.trim()).map_err(|_| {
        "an id is a whole UUID of 36 characters such as 5c0e8d21-8f0b-4c1e-9f6a-2f1d3c4b5a69 \
             (not a prefix, not the event's own data such as an invoice number): \
             copy it from what `create` printed or from `channel list`, `rule list`, `event list`"
            .to_string()
    })
}

/// Prints one JSON document on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Opens a connection and checks the schema version (every command but
/// `migrate` and `check-config`).
fn connect(config: &Config) -> Result<postgres::Client, DbError> {
    crate::db::connect_checked(&config.database, &crate::lock::app_name("cli"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_argument_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_missing_argument_is_named_in_the_one_line() {
        let err = Cli::try_parse_from([
            "notification-reconciler",
            "channel",
            "create",
            "--namespace",
            "a",
            "--name",
            "b",
        ])
        .expect_err("--url is required");
        let line = usage_error_line(&err.to_string());
        assert!(line.contains("--url"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        assert!(!line.contains("Usage"), "{line}");
    }

    #[test]
    fn error_line_skips_causes_already_shown_and_folds_lines() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::other("disk on fire\nDETAIL: very hot");
        let err = anyhow::Error::new(Outer(io)).context("while testing");
        assert_eq!(
            error_line(&err),
            "while testing: outer: disk on fire; DETAIL: very hot"
        );
    }

    #[test]
    fn exit_codes_are_two_for_usage_and_config_one_otherwise() {
        let usage = anyhow::Error::new(UsageError("bad".into()));
        assert_eq!(exit_code(&usage), 2);
        let runtime = anyhow::anyhow!("database down");
        assert_eq!(exit_code(&runtime), 1);
    }

    #[test]
    fn clap_suggestions_are_kept_on_the_one_line() {
        let err = Cli::try_parse_from(["notification-reconciler", "channels", "list"])
            .expect_err("no such command");
        let line = usage_error_line(&err.to_string());
        assert!(
            line.contains("tip: a similar subcommand exists: 'channel'"),
            "{line}"
        );
        assert!(!line.contains("Usage"), "{line}");
    }

    #[test]
    fn an_id_that_is_not_a_uuid_says_what_an_id_is() {
        let e = parse_id("5c0e8d21").unwrap_err();
        assert!(e.contains("UUID") && e.contains("not a prefix"), "{e}");
        assert!(parse_id("5c0e8d21-8f0b-4c1e-9f6a-2f1d3c4b5a69").is_ok());
    }
}
