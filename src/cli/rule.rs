//! `rule create|list|delete`: parses the flags, calls `ops::rules`, prints
//! the result.

use std::process::ExitCode;

use super::{ops_error, RuleCommand};
use crate::config::Config;
use crate::ops::rules::{self, NewRuleInput};

/// Runs one `rule` subcommand.
pub fn run(config: &Config, command: RuleCommand) -> anyhow::Result<ExitCode> {
    if let RuleCommand::Create {
        namespace,
        name,
        event_type,
        channels,
    } = &command
    {
        rules::check_new(&NewRuleInput {
            namespace: namespace.clone(),
            name: name.clone(),
            event_type: event_type.clone(),
            channels: channels.clone(),
        })
        .map_err(ops_error)?;
    }
    let mut client = super::connect(config)?;
    match command {
        RuleCommand::Create {
            namespace,
            name,
            event_type,
            channels,
        } => {
            let input = NewRuleInput {
                namespace,
                name,
                event_type,
                channels,
            };
            let rule = rules::create(&mut client, input).map_err(ops_error)?;
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
                        "{}  {}  {}  {}  {}  channels={}",
                        r.id,
                        r.namespace,
                        r.name,
                        r.event_type,
                        if r.disabled { "disabled" } else { "enabled" },
                        chans.join(",")
                    );
                }
            }
        }
        RuleCommand::Delete { id } => {
            rules::delete(&mut client, None, id).map_err(ops_error)?;
            eprintln!("rule {id} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
