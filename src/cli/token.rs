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
            let mut client = connect()?;
            let mut tx = super::begin(&mut client)?;
            let created = tokens::create(&mut tx, input).map_err(ops_error)?;
            super::commit_audited(
                tx,
                created.record.namespace.as_deref(),
                "createToken",
                "token",
                Some(created.record.id.to_string()),
            )?;
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
            let mut client = connect()?;
            let mut tx = super::begin(&mut client)?;
            let ns = tokens::list(&mut tx)
                .map_err(ops_error)?
                .into_iter()
                .find(|t| t.id == id)
                .and_then(|t| t.namespace);
            tokens::revoke(&mut tx, id).map_err(ops_error)?;
            super::commit_audited(
                tx,
                ns.as_deref(),
                "revokeToken",
                "token",
                Some(id.to_string()),
            )?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
