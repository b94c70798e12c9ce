//! `rule create|list|update|delete`: parses the flags, calls `ops::rules`, prints
//! the result.

use std::process::ExitCode;

use super::{begin, commit_audited, ops_error, RuleCommand};
use crate::config::Config;
use crate::ops::rules::{self, NewRuleInput, RulePatch};

/// Runs one `rule` subcommand.
pub fn run(config: &Config, command: RuleCommand) -> anyhow::Result<ExitCode> {
    if let RuleCommand::Create {
        namespace,
        name,
        event_type,
        channels,
        filter,
    } = &command
    {
        rules::check_new(&NewRuleInput {
            namespace: namespace.clone(),
            name: name.clone(),
            event_type: event_type.clone(),
            channels: channels.clone(),
            filter: filter.clone(),
        })
        .map_err(ops_error)?;
    }
    if let RuleCommand::Update {
        add,
        remove,
        filter,
        no_filter,
        ..
    } = &command
    {
        if add.is_empty() && remove.is_empty() && filter.is_none() && !no_filter {
            return Err(super::UsageError(
                "rule update: nothing to change; give --add-channel, --remove-channel, --filter or --no-filter".into(),
            )
            .into());
        }
    }
    let mut client = super::connect(config)?;
    match command {
        RuleCommand::Create {
            namespace,
            name,
            event_type,
            channels,
            filter,
        } => {
            let input = NewRuleInput {
                namespace,
                name,
                event_type,
                channels,
                filter,
            };
            let mut tx = begin(&mut client)?;
            let rule = rules::create(&mut tx, input).map_err(ops_error)?;
            commit_audited(
                tx,
                Some(&rule.namespace),
                "createRule",
                "rule",
                Some(rule.id.to_string()),
            )?;
            println!("{}", rule.id);
        }
        RuleCommand::List { namespace, json } => {
            let list = rules::list(&mut client, namespace.as_deref(), None)
                .map_err(ops_error)?
                .items;
            if json {
                super::print_json(&list)?;
            } else {
                for r in &list {
                    let chans: Vec<String> = r.channels.iter().map(|c| c.to_string()).collect();
                    println!(
                        "{}  {}  {}  {}  {}  channels={}{}",
                        r.id,
                        r.namespace,
                        r.name,
                        r.event_type,
                        if r.disabled { "disabled" } else { "enabled" },
                        chans.join(","),
                        r.filter
                            .as_deref()
                            .map(|f| format!("  filter={f}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        RuleCommand::Update {
            id,
            add,
            remove,
            filter,
            no_filter,
        } => {
            let patch = RulePatch {
                add,
                remove,
                set: None,
                filter: if no_filter {
                    Some(None)
                } else {
                    filter.map(Some)
                },
            };
            let mut tx = begin(&mut client)?;
            let rule = rules::update(&mut tx, None, id, patch).map_err(ops_error)?;
            commit_audited(
                tx,
                Some(&rule.namespace),
                "updateRule",
                "rule",
                Some(id.to_string()),
            )?;
            eprintln!("rule {id} updated");
        }
        RuleCommand::Delete { id } => {
            let mut tx = begin(&mut client)?;
            let ns = rules::get(&mut tx, None, id).map_err(ops_error)?.namespace;
            rules::delete(&mut tx, None, id).map_err(ops_error)?;
            commit_audited(tx, Some(&ns), "deleteRule", "rule", Some(id.to_string()))?;
            eprintln!("rule {id} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
