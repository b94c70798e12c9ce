//! Rule operations: create and update (every channel must be a live
//! channel of the rule's namespace; a payload filter must be a jsonpath
//! PostgreSQL parses), list, read and delete.

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
    /// A jsonpath predicate over the payload (`$.amount > 1000`), if any.
    pub filter: Option<String>,
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

/// Refuses channels that are not live channels of `namespace`.
fn check_channels(
    client: &mut impl postgres::GenericClient,
    field: &str,
    namespace: &str,
    ids: &[Uuid],
) -> Result<(), OpsError> {
    let missing = channels::missing(client, namespace, ids)?;
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|u| u.to_string()).collect();
        return Err(OpsError::invalid(
            field,
            format!(
                "no channel {} in namespace {namespace:?} (unknown, deleted, or of another namespace)",
                list.join(", "),
            ),
        ));
    }
    Ok(())
}

/// Refuses a filter PostgreSQL does not parse as a jsonpath, with its
/// message (at rule create and update: never at enqueue time).
fn check_filter(client: &mut impl postgres::GenericClient, filter: &str) -> Result<(), OpsError> {
    if filter.trim().is_empty() {
        return Err(OpsError::invalid("filter", "must not be empty"));
    }
    match rules::check_filter(client, filter)? {
        None => Ok(()),
        Some(message) => Err(OpsError::invalid(
            "filter",
            format!("{filter:?} is not a jsonpath predicate: {message}"),
        )),
    }
}

/// Creates a rule.
pub fn create(
    client: &mut impl postgres::GenericClient,
    input: NewRuleInput,
) -> Result<Rule, OpsError> {
    check_new(&input)?;
    check_channels(client, "channels", &input.namespace, &input.channels)?;
    if let Some(f) = &input.filter {
        check_filter(client, f)?;
    }
    let id = rules::create(
        client,
        &input.namespace,
        &input.name,
        &input.event_type,
        &input.channels,
        input.filter.as_deref(),
    )?;
    get(client, Some(&input.namespace), id)
}

/// Lists live rules, optionally of one namespace, one page at a time
/// (`page` = `None`: all).
pub fn list(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    page: Option<Page>,
) -> Result<Paged<Rule>, OpsError> {
    let rows = rules::list_after(
        client,
        namespace,
        page.and_then(|p| p.after).map(|c| (c.created_at, c.id)),
        page.map(|p| p.limit + 1),
    )?;
    Ok(Paged::maybe_paged(rows, page, |r| Cursor {
        created_at: r.created_at,
        id: r.id,
    }))
}

/// One live rule of `namespace` (any, when `None`).
pub fn get(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
) -> Result<Rule, OpsError> {
    rules::get(client, id)?
        .filter(|r| visible(namespace, &r.namespace))
        .ok_or_else(|| not_found("rule", namespace, id))
}

/// What a rule update changes.
#[derive(Debug, Default)]
pub struct RulePatch {
    /// Channels to assign.
    pub add: Vec<Uuid>,
    /// Channels to unassign: their deliveries still due for this rule's
    /// events end FAILED ("no longer assigned").
    pub remove: Vec<Uuid>,
    /// The whole channel list (the API's `channels`): replaces the set.
    pub set: Option<Vec<Uuid>>,
    /// `Some(None)` removes the filter, `Some(Some(f))` sets it.
    pub filter: Option<Option<String>>,
}

/// Changes a rule's channels or filter; a rule keeps at least one channel.
pub fn update(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
    patch: RulePatch,
) -> Result<Rule, OpsError> {
    let rule = get(client, namespace, id)?;
    let (add, remove) = match &patch.set {
        Some(set) => (
            set.clone(),
            rule.channels
                .iter()
                .filter(|c| !set.contains(c))
                .copied()
                .collect(),
        ),
        None => (patch.add.clone(), patch.remove.clone()),
    };
    let field = if patch.set.is_some() {
        "channels"
    } else {
        "add_channel"
    };
    check_channels(client, field, &rule.namespace, &add)?;
    let left = rule
        .channels
        .iter()
        .chain(&add)
        .filter(|c| !remove.contains(c))
        .count();
    if left == 0 {
        return Err(OpsError::invalid(
            if patch.set.is_some() {
                "channels"
            } else {
                "remove_channel"
            },
            "a rule must keep at least one channel (delete the rule instead)",
        ));
    }
    if let Some(Some(f)) = &patch.filter {
        check_filter(client, f)?;
    }
    let change = rules::RuleChange {
        add: &add,
        remove: &remove,
        filter: patch.filter.as_ref().map(|f| f.as_deref()),
    };
    if !rules::update(client, id, &change)? {
        return Err(not_found("rule", namespace, id));
    }
    get(client, namespace, id)
}

/// Deletes a rule: it matches no new event; deliveries already enqueued go on.
pub fn delete(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
) -> Result<(), OpsError> {
    get(client, namespace, id)?;
    if !rules::delete(client, id)? {
        return Err(not_found("rule", namespace, id));
    }
    Ok(())
}
