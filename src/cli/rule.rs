//! `rule create|list`.

use std::process::ExitCode;

use super::channel::non_empty;
use super::{RuleCommand, UsageError};
use crate::config::Config;
use crate::db::{channels, rules};

/// Runs one `rule` subcommand.
pub fn run(config: &Config, command: RuleCommand) -> anyhow::Result<ExitCode> {
    match command {
        RuleCommand::Create {
            namespace,
            name,
            event_type,
            channels: ids,
        } => {
            non_empty("--namespace", &namespace)?;
            non_empty("--name", &name)?;
            non_empty("--event-type", &event_type)?;
            let mut client = super::connect(config)?;
            let missing = channels::missing(&mut client, &namespace, &ids)?;
            if !missing.is_empty() {
                let list: Vec<String> = missing.iter().map(|u| u.to_string()).collect();
                return Err(UsageError(format!(
                    "no channel {} in namespace {namespace:?} (unknown, deleted, or of another namespace)",
                    list.join(", ")
                ))
                .into());
            }
            let id = rules::create(&mut client, &namespace, &name, &event_type, &ids)?;
            println!("{id}");
        }
        RuleCommand::List { namespace, json } => {
            let mut client = super::connect(config)?;
            let list = rules::list(&mut client, namespace.as_deref())?;
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
    }
    Ok(ExitCode::SUCCESS)
}
