//! Event type operations: the types of a namespace with their counts (what
//! `event types` prints and `GET /v1/namespaces/{ns}/event-types`
//! answers), and describing one for customers (`event-type describe`,
//! `PATCH /v1/namespaces/{ns}/event-types/{type}`). Checks what it is
//! given, then calls `db::event_types`.

use postgres::GenericClient;

use super::{name_like, OpsError};
use crate::db::event_types::{self, EventType};

/// Longest description accepted, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;

/// Every event type of `namespace` (seen, subscribed to or described),
/// sorted by type.
pub fn list(client: &mut impl GenericClient, namespace: &str) -> Result<Vec<EventType>, OpsError> {
    name_like("namespace", namespace)?;
    Ok(event_types::list(client, namespace)?)
}

/// One event type of `namespace` as [`list`] shows it; a type never seen,
/// subscribed to or described has count 0 and no description.
pub fn get(
    client: &mut impl GenericClient,
    namespace: &str,
    event_type: &str,
) -> Result<EventType, OpsError> {
    name_like("namespace", namespace)?;
    name_like("type", event_type)?;
    Ok(event_types::get(client, namespace, event_type)?)
}

/// The description as stored: trimmed; empty (or only blanks) means none.
/// Refuses one over [`MAX_DESCRIPTION_CHARS`] or holding control
/// characters other than line breaks and tabs.
pub fn check_description(text: &str) -> Result<Option<String>, OpsError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let chars = text.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(OpsError::invalid(
            "description",
            format!("is {chars} characters; at most {MAX_DESCRIPTION_CHARS} are kept"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(OpsError::invalid(
            "description",
            "must not contain control characters (line breaks and tabs are fine)",
        ));
    }
    Ok(Some(text.to_string()))
}

/// Sets the description of `event_type` in `namespace` (an empty one
/// removes it); the type need not have been seen yet. Returns the type as
/// [`list`] shows it.
pub fn describe(
    client: &mut impl GenericClient,
    namespace: &str,
    event_type: &str,
    description: &str,
) -> Result<EventType, OpsError> {
    name_like("namespace", namespace)?;
    name_like("type", event_type)?;
    let description = check_description(description)?;
    event_types::describe(client, namespace, event_type, description.as_deref())?;
    Ok(event_types::get(client, namespace, event_type)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_is_trimmed_and_blank_means_none() {
        assert_eq!(
            check_description("  Paid.  ").unwrap().as_deref(),
            Some("Paid.")
        );
        assert_eq!(check_description(" \n ").unwrap(), None);
        assert_eq!(
            check_description("line one\nline two\tx")
                .unwrap()
                .as_deref(),
            Some("line one\nline two\tx")
        );
    }

    #[test]
    fn a_long_or_control_character_description_is_refused_naming_the_field() {
        let long = "é".repeat(MAX_DESCRIPTION_CHARS + 1);
        let e = check_description(&long).unwrap_err().to_string();
        assert!(e.starts_with("description: is 1001 characters"), "{e}");
        assert!(check_description(&"é".repeat(MAX_DESCRIPTION_CHARS)).is_ok());
        let e = check_description("bell\u{7}").unwrap_err().to_string();
        assert!(e.contains("control characters"), "{e}");
    }
}
