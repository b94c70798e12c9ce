//! The audit trail as both doors use it: recording a change inside the
//! change's own transaction ([`record`]), who the command line's actor is, reading a
//! namespace's trail a page at a time, and pruning it after
//! `retention.keep_audit` (the API's expiry thread does it on every
//! instance that serves the API; `prune` does it on demand). Posting events
//! through either door is recorded (one row per post: the event row does
//! not say who sent it); `enqueue_event` called by an application is not.

use std::time::Duration;

use chrono::{DateTime, Utc};
use postgres::GenericClient;

use super::page::{Cursor, Page, Paged};
use super::OpsError;
use crate::db::audit::{self, Actor, AuditRow, Entry};

/// The command line's actor: `cli` and the OS user.
pub fn cli_actor() -> Actor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into());
    Actor::Cli { user }
}

/// What a change records besides its actor.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// The object's namespace (`None`: admin-wide, e.g. an admin token).
    pub namespace: Option<&'a str>,
    /// The operation (the API's operation id, e.g. `createChannel`).
    pub operation: &'a str,
    /// The kind of object (`channel`, `rule`, `event`, `token`, `secrets`).
    pub object_kind: &'a str,
}

/// Records `what` by `actor` on `client` (inside the caller's transaction).
pub fn record(
    client: &mut impl GenericClient,
    actor: &Actor,
    what: Change<'_>,
    object_id: Option<String>,
) -> Result<(), OpsError> {
    audit::record(
        client,
        &Entry {
            namespace: what.namespace,
            actor,
            operation: what.operation,
            object_kind: what.object_kind,
            object_id,
        },
    )?;
    Ok(())
}

/// A namespace's trail (every namespace's with `None`), newest first, at or
/// after `since`, a page at a time.
pub fn list(
    client: &mut impl GenericClient,
    namespace: Option<&str>,
    since: Option<DateTime<Utc>>,
    page: Page,
) -> Result<Paged<AuditRow>, OpsError> {
    let rows = audit::list(
        client,
        namespace,
        since,
        page.after.map(|c| (c.created_at, c.id)),
        page.limit + 1,
    )?;
    Ok(Paged::from_rows(rows, page, |r| Cursor {
        created_at: r.at,
        id: r.id,
    }))
}

/// Rows removed per statement when pruning.
pub const PRUNE_BATCH: i64 = 1000;

/// Removes the rows older than `keep` (zero: keeps them forever) in
/// batches; returns how many.
pub fn prune(client: &mut impl GenericClient, keep: Duration) -> Result<u64, OpsError> {
    if keep.is_zero() {
        return Ok(0);
    }
    let cutoff = chrono::Duration::from_std(keep)
        .ok()
        .and_then(|k| Utc::now().checked_sub_signed(k))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut total = 0;
    loop {
        let n = audit::prune(client, cutoff, PRUNE_BATCH)?;
        total += n;
        if n < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}
