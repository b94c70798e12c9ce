//! `event-type describe`: an event type's description for customers.
//! Parses the flags, calls `ops::event_types`, prints the result. (`event
//! types`, the list with counts, is `cli::event`'s.)

use std::process::ExitCode;

use super::{begin, commit_audited, ops_error, EventTypeCommand};
use crate::config::Config;
use crate::ops::event_types;
use crate::ops::OpsError;

/// Runs one `event-type` subcommand.
pub fn run(config: &Config, command: EventTypeCommand) -> anyhow::Result<ExitCode> {
    match command {
        EventTypeCommand::Describe {
            namespace,
            event_type,
            description,
        } => {
            // Checked before connecting: a typo is a usage error even with
            // the database down. The type is the TYPE argument, not a flag.
            let named = |e: OpsError| match e {
                OpsError::Invalid { field, message } if field == "type" => {
                    ops_error(OpsError::invalid("", format!("TYPE: {message}")))
                }
                e => ops_error(e),
            };
            crate::ops::name_like("namespace", &namespace).map_err(ops_error)?;
            crate::ops::name_like("type", &event_type).map_err(named)?;
            event_types::check_description(&description).map_err(ops_error)?;
            let mut client = super::connect(config)?;
            let mut tx = begin(&mut client)?;
            let described = event_types::describe(&mut tx, &namespace, &event_type, &description)
                .map_err(named)?;
            commit_audited(
                tx,
                Some(&namespace),
                "describeEventType",
                "event_type",
                Some(event_type.clone()),
            )?;
            match described.description {
                Some(_) => eprintln!("event type {event_type:?} of {namespace:?} described"),
                None => {
                    eprintln!("event type {event_type:?} of {namespace:?}: description removed")
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
