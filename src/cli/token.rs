//! `token create|list|revoke`: API tokens through `ops::tokens`. `create`
//! prints the token once on stdout; nothing else ever shows it.

use std::process::ExitCode;

use super::{ops_error, TokenCommand};
use crate::config::Config;
use crate::ops::tokens::{self, NewTokenInput};

/// Runs one `token` subcommand.
pub fn run(config: &Config, command: TokenCommand) -> anyhow::Result<ExitCode> {
    let connect = || super::connect(config);
    match command {
        TokenCommand::Create {
            name,
            namespace,
            admin: _,
            read_only,
            expires,
        } => {
            let input = NewTokenInput {
                name,
                namespace,
                read_only,
                expires,
            };
            tokens::check_new(&input).map_err(ops_error)?;
            let created = tokens::create(&mut connect()?, input).map_err(ops_error)?;
            println!("{}", created.token);
            let r = &created.record;
            eprintln!(
                "token {} ({}): {}{}{}; shown once, store it now",
                r.id,
                r.name,
                r.namespace
                    .as_deref()
                    .map_or("admin, every namespace".to_string(), |ns| format!(
                        "namespace {ns:?}"
                    )),
                if r.read_only { ", read-only" } else { "" },
                r.expires_at
                    .map(|t| format!(", expires {}", t.to_rfc3339()))
                    .unwrap_or_default()
            );
        }
        TokenCommand::List { json } => {
            let list = tokens::list(&mut connect()?).map_err(ops_error)?;
            if json {
                super::print_json(&list)?;
            } else {
                for t in &list {
                    let state = match (t.revoked_at, t.expires_at) {
                        (Some(at), _) => format!("revoked {}", at.to_rfc3339()),
                        (None, Some(at)) if at <= chrono::Utc::now() => {
                            format!("expired {}", at.to_rfc3339())
                        }
                        (None, Some(at)) => format!("expires {}", at.to_rfc3339()),
                        (None, None) => "no expiry".to_string(),
                    };
                    println!(
                        "{}  {}  {}  {}  {}",
                        t.id,
                        t.name,
                        t.namespace.as_deref().unwrap_or("(admin)"),
                        if t.read_only {
                            "read-only"
                        } else {
                            "read-write"
                        },
                        state
                    );
                }
            }
        }
        TokenCommand::Revoke { id } => {
            tokens::revoke(&mut connect()?, id).map_err(ops_error)?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
