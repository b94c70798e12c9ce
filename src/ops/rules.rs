//! Rule operations: create (every channel must be a live channel of the
//! rule's namespace), list, read and delete.

use uuid::Uuid;

use super::page::{Cursor, Page, Paged};
use super::{name_like, not_found, visible, OpsError};
use crate::db::channels;
use crate::db::rules::{self, Rule};

/// What a new rule is made of.
#[derive(Debug)]
pub struct NewRuleInput {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The event type it matches.
    pub event_type: String,
    /// The channels it sends to (at least one).
    pub channels: Vec<Uuid>,
}

/// Checks a new rule without the database.
pub fn check_new(input: &NewRuleInput) -> Result<(), OpsError> {
    name_like("namespace", &input.namespace)?;
    name_like("name", &input.name)?;
    name_like("event_type", &input.event_type)?;
    if input.channels.is_empty() {
        return Err(OpsError::invalid(
            "channels",
            "must name at least one channel",
        ));
    }
    Ok(())
}

/// Creates a rule.
pub fn create(client: &mut postgres::Client, input: NewRuleInput) -> Result<Rule, OpsError> {
    check_new(&input)?;
    let missing = channels::missing(client, &input.namespace, &input.channels)?;
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|u| u.to_string()).collect();
        return Err(OpsError::invalid(
            "channels",
            format!(
                "no channel {} in namespace {:?} (unknown, deleted, or of another namespace)",
                list.join(", "),
                input.namespace
            ),
        ));
    }
    let id = rules::create(
        client,
        &input.namespace,
        &input.name,
        &input.event_type,
        &input.channels,
    )?;
    get(client, Some(&input.namespace), id)
}

/// Lists live rules, optionally of one namespace, one page at a time
/// (`page` = `None`: all).
pub fn list(
    client: &mut postgres::Client,
    namespace: Option<&str>,
    page: Option<Page>,
) -> Result<Paged<Rule>, OpsError> {
    let rows = rules::list_after(
        client,
        namespace,
        page.and_then(|p| p.after).map(|c| (c.created_at, c.id)),
        page.map(|p| p.limit + 1),
    )?;
    Ok(match page {
        Some(page) => Paged::from_rows(rows, page, |r| Cursor {
            created_at: r.created_at,
            id: r.id,
        }),
        None => Paged {
            items: rows,
            next_cursor: None,
        },
    })
}

/// One live rule of `namespace` (any, when `None`).
pub fn get(
    client: &mut postgres::Client,
    namespace: Option<&str>,
    id: Uuid,
) -> Result<Rule, OpsError> {
    rules::get(client, id)?
        .filter(|r| visible(namespace, &r.namespace))
        .ok_or_else(|| not_found("rule", namespace, id))
}

/// Deletes a rule: it matches no new event; deliveries already enqueued go on.
pub fn delete(
    client: &mut postgres::Client,
    namespace: Option<&str>,
    id: Uuid,
) -> Result<(), OpsError> {
    get(client, namespace, id)?;
    if !rules::delete(client, id)? {
        return Err(not_found("rule", namespace, id));
    }
    Ok(())
}
