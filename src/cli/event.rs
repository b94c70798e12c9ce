//! `event emit|list|show` and `resend`.

use std::process::ExitCode;

use uuid::Uuid;

use super::{ops_error, EventCommand, UsageError};
use crate::config::Config;
use crate::db::{events, migrate};
use crate::ops::channels;
use crate::ops::event_types;
use crate::ops::events::{self as ops_events, EmitInput};
use crate::ops::{non_empty, OpsError};
use crate::state::State;

/// Runs one `event` subcommand.
pub fn run(config: &Config, command: EventCommand) -> anyhow::Result<ExitCode> {
    match command {
        EventCommand::Emit {
            namespace,
            event_type,
            data,
        } => {
            non_empty("namespace", &namespace).map_err(ops_error)?;
            non_empty("type", &event_type).map_err(ops_error)?;
            // Inline JSON is checked and a file opened before connecting, so
            // a typo is a usage error even with the database down.
            let data = open_data(&data)?;
            let mut client = super::connect(config)?;
            // The stored cap bounds how much of a file is read; a producer
            // role may not read `settings` (it needs only EXECUTE on
            // enqueue_event), and then the configured value bounds the read
            // while enqueue_event still applies the stored one.
            let cap = match &data {
                Data::Inline(_) => config.delivery.max_payload_bytes,
                Data::File(..) => migrate::max_payload_bytes(&mut client)
                    .unwrap_or(config.delivery.max_payload_bytes),
            };
            let payload = data.read(cap)?;
            let input = EmitInput {
                namespace: namespace.clone(),
                event_type: event_type.clone(),
                payload,
                annotations: None,
            };
            let actor = crate::ops::audit::cli_actor();
            let ids = ops_events::emit(&mut client, &input, &actor).map_err(|e| match e {
                // The payload is what --data gave.
                OpsError::Invalid { field, message } if field == "payload" => {
                    ops_error(OpsError::invalid("data", message))
                }
                e => ops_error(e),
            })?;
            if ids.is_empty() {
                eprintln!("{}", ops_events::no_rule_warning(&namespace, &event_type));
            }
            for id in ids {
                println!("{id}");
            }
        }
        EventCommand::List { state, json, limit } => {
            let state = state
                .map(|s| s.to_ascii_uppercase().parse::<State>())
                .transpose()
                .map_err(|e| UsageError(format!("--state: {e}")))?;
            let mut client = super::connect(config)?;
            let list = events::list(&mut client, state, i64::from(limit))?;
            if json {
                super::print_json(&list)?;
            } else {
                let rows: Vec<[String; 5]> = list
                    .iter()
                    .map(|e| {
                        [
                            e.id.to_string(),
                            e.created_at.to_rfc3339(),
                            e.namespace.clone(),
                            e.event_type.clone(),
                            e.states.join(","),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(["ID", "CREATED", "NAMESPACE", "TYPE", "STATES"], &rows)
                );
            }
        }
        EventCommand::Types { namespace, json } => types(config, &namespace, json)?,
        EventCommand::Show { id, json } => {
            let mut client = super::connect(config)?;
            let (event, statuses) = ops_events::show(&mut client, None, id).map_err(ops_error)?;
            if json {
                super::print_json(&serde_json::json!({ "event": event, "deliveries": statuses }))?;
            } else {
                println!(
                    "event {}  {}  {}",
                    event.id, event.namespace, event.event_type
                );
                println!("created {}", event.created_at.to_rfc3339());
                println!("payload {}", event.payload);
                for s in &statuses {
                    println!(
                        "  channel {}  {}  attempts={}  next={}  {}",
                        s.channel_id,
                        s.state,
                        s.attempt_count,
                        s.next_attempt_at
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "-".into()),
                        s.reason
                    );
                    for a in &s.attempts {
                        println!(
                            "    {}  {}  http={}  {}ms  {}",
                            a.timestamp.to_rfc3339(),
                            a.state,
                            a.http_status.map_or("-".into(), |c| c.to_string()),
                            a.duration_ms,
                            a.error.as_deref().unwrap_or("")
                        );
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `event types --namespace NS [--json]`.
fn types(config: &Config, namespace: &str, json: bool) -> anyhow::Result<()> {
    crate::ops::name_like("namespace", namespace).map_err(ops_error)?;
    let mut client = super::connect(config)?;
    let list = event_types::list(&mut client, namespace).map_err(ops_error)?;
    if json {
        return super::print_json(&list);
    }
    if list.is_empty() {
        eprintln!(
            "no event types in namespace {namespace:?} yet: none seen, subscribed to or described"
        );
        return Ok(());
    }
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|t| {
            [
                t.event_type.clone(),
                t.count.to_string(),
                t.last_seen_at
                    .map_or_else(|| "-".into(), |at| at.to_rfc3339()),
                t.rules.to_string(),
                t.description
                    .as_deref()
                    .map_or_else(|| "-".into(), |d| d.replace(['\n', '\r', '\t'], " ")),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            ["TYPE", "COUNT", "LAST SEEN", "RULES", "DESCRIPTION"],
            &rows
        )
    );
    Ok(())
}

/// How many times the schema's payload cap a `--data @file` may be: the
/// cap applies to the payload as PostgreSQL prints it, which differs from the
/// file's own layout, so the file's size alone cannot decide; a file this
/// much larger cannot be a payload within the cap in any sensible layout.
const FILE_SLACK: u64 = 4;

/// `--data` before the payload cap is known: parsed inline JSON, or an
/// opened `@path`.
enum Data {
    /// Inline JSON, parsed.
    Inline(serde_json::Value),
    /// `@path`, opened, not read yet.
    File(String, std::fs::File),
}

/// Parses inline `--data`, or opens `@path`.
fn open_data(data: &str) -> Result<Data, UsageError> {
    match data.strip_prefix('@') {
        Some(path) => std::fs::File::open(path)
            .map(|f| Data::File(path.to_owned(), f))
            .map_err(|e| UsageError(format!("--data @{path}: cannot read the file: {e}"))),
        None => serde_json::from_str(data)
            .map(Data::Inline)
            .map_err(|e| UsageError(format!("--data is not JSON: {e}"))),
    }
}

impl Data {
    /// The payload. A file is read at most [`FILE_SLACK`] × `cap` bytes
    /// far: a bigger one is refused without reading it into memory whole.
    fn read(self, cap: i64) -> Result<serde_json::Value, UsageError> {
        match self {
            Data::Inline(value) => Ok(value),
            Data::File(path, file) => {
                let text = read_bounded(&path, file, cap)?;
                serde_json::from_str(&text)
                    .map_err(|e| UsageError(format!("--data @{path} is not JSON: {e}")))
            }
        }
    }
}

/// The text of `file`, unless it is larger than [`FILE_SLACK`] × `cap`.
fn read_bounded(path: &str, file: std::fs::File, cap: i64) -> Result<String, UsageError> {
    use std::io::Read;
    let cannot =
        |e: std::io::Error| UsageError(format!("--data @{path}: cannot read the file: {e}"));
    let bound = u64::try_from(cap).unwrap_or(0).saturating_mul(FILE_SLACK);
    let mut bytes = Vec::new();
    file.take(bound.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > bound {
        return Err(UsageError(format!(
            "--data @{path}: the file is over {bound} bytes, too large for a payload of at most {cap} bytes (delivery.max_payload_bytes); not read"
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| UsageError(format!("--data @{path} is not JSON: not UTF-8 text")))
}

/// Rows under a header row, each column as wide as its widest cell, two
/// spaces apart (the last column unpadded). The header is printed even
/// when there are no rows, so the output always says what its columns are.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header);
    for row in rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

/// `resend EVENT_ID [--channel ID]`: prints one line per delivery set to
/// RESENDING (the event, the channel id and name, the state it had).
/// Deliveries still PENDING or RESENDING are already on their way and are
/// refused; when nothing could be resent the command fails (exit 2) with one
/// line saying why.
pub fn resend(config: &Config, event_id: Uuid, channel: Option<Uuid>) -> anyhow::Result<ExitCode> {
    let mut client = super::connect(config)?;
    let mut tx = super::begin(&mut client)?;
    // Resend first: an unknown event gets its own message from it.
    let result = ops_events::resend(&mut tx, None, event_id, channel).map_err(ops_error)?;
    let ns = ops_events::show(&mut tx, None, event_id)
        .map_err(ops_error)?
        .0
        .namespace;
    super::commit_audited(
        tx,
        Some(&ns),
        "resendEvent",
        "event",
        Some(event_id.to_string()),
    )?;
    for resent in &result.resent {
        println!(
            "resent event {event_id} to channel {} ({}): was {}, now RESENDING, due now",
            resent.channel_id, resent.channel_name, resent.was
        );
    }
    let mut note = format!(
        "{} deliver{} of event {event_id} set to RESENDING",
        result.resent.len(),
        if result.resent.len() == 1 { "y" } else { "ies" }
    );
    if !result.refused.is_empty() {
        let refused: Vec<String> = result
            .refused
            .iter()
            .map(|r| format!("channel {} is {}", r.channel_id, r.state))
            .collect();
        note.push_str(&format!(
            "; not resent, already on their way: {}",
            refused.join(", ")
        ));
    }
    eprintln!("{note}");
    Ok(ExitCode::SUCCESS)
}

/// `resend --channel ID [--since TIME] [--state STATE]`: moves every
/// matching delivery of the channel to RESENDING in one transaction and
/// prints how many, by the state they had. The channel must be enabled
/// (resent deliveries of a disabled channel would only fail again). No
/// match is not an error: it prints that none was resent.
pub fn resend_channel(
    config: &Config,
    channel_id: Uuid,
    since: Option<&str>,
    state: Option<State>,
) -> anyhow::Result<ExitCode> {
    let since = since
        .map(|s| channels::parse_since("since", s))
        .transpose()
        .map_err(ops_error)?;
    channels::resendable_states(state).map_err(ops_error)?;
    let mut client = super::connect(config)?;
    let mut tx = super::begin(&mut client)?;
    let ns = channels::stored(&mut tx, None, channel_id, false)
        .map_err(ops_error)?
        .namespace;
    let result =
        channels::resend(&mut tx, None, channel_id, since, state, false).map_err(ops_error)?;
    super::commit_audited(
        tx,
        Some(&ns),
        "resendChannel",
        "channel",
        Some(channel_id.to_string()),
    )?;
    let breakdown: Vec<String> = result
        .by_state
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    let total = result.resent;
    println!(
        "resent {total} deliver{} to channel {channel_id} ({}){}{}",
        if total == 1 { "y" } else { "ies" },
        result.channel_name,
        if breakdown.is_empty() { "" } else { ": was " },
        breakdown.join(", ")
    );
    if total > 0 {
        eprintln!("{total} deliveries set to RESENDING, due now");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_has_a_header_row_and_aligned_columns() {
        let rows = [
            ["a".to_string(), "long cell".to_string(), "x".to_string()],
            ["bbbb".to_string(), "c".to_string(), "y".to_string()],
        ];
        assert_eq!(
            table(["ID", "WHAT", "LAST"], &rows),
            "ID    WHAT       LAST\na     long cell  x\nbbbb  c          y\n"
        );
        assert_eq!(table(["ID", "WHAT"], &[]), "ID  WHAT\n");
    }
}
