//! The operations both front doors call: the command line (`cli`) and the
//! management API (`api`). Each operation checks what it is given (names,
//! URLs against the SSRF guard, secrets, durations, namespaces), calls `db`,
//! and fails with a typed [`OpsError`] that each door turns into its own
//! form (an exit code and a line, or an HTTP status and a JSON error). A rule
//! such as "a refused address is refused" or "a disabled channel cannot be
//! resent" lives here once.
//!
//! Namespaces: every operation that reads or changes one object takes the
//! namespace it must belong to (`Some(ns)`, the API's path) or none (the
//! command line, which addresses objects by id alone). An object of another
//! namespace is reported exactly like one that does not exist.

pub mod audit;
pub mod channels;
pub mod event_types;
pub mod events;
pub mod page;
pub mod prune;
pub mod rules;
pub mod status;
pub mod svix;
pub mod tokens;

use crate::db::DbError;

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A value is not acceptable (a bad URL, a refused address, a bad
    /// duration). `field` is the API's field name (`event_type`); the
    /// command line shows it as its flag (`--event-type`). Empty when no
    /// one field is at fault (a value the database refused).
    #[error("{}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
    Invalid {
        /// The field (JSON name) that is wrong.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No such object (or one of another namespace, or deleted).
    #[error("{0}")]
    NotFound(String),
    /// The object's state forbids the operation (e.g. resending to a
    /// disabled channel).
    #[error("{0}")]
    Conflict(String),
    /// A payload over `delivery.max_payload_bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// The database failed.
    #[error(transparent)]
    Db(DbError),
}

impl From<DbError> for OpsError {
    /// A value PostgreSQL refuses (a data exception: a NUL character, a
    /// date out of its range) is the caller's input; anything else is a
    /// failure of the service.
    fn from(err: DbError) -> OpsError {
        match err.data_exception() {
            Some(message) => {
                OpsError::invalid("", format!("the database refused a value: {message}"))
            }
            None => OpsError::Db(err),
        }
    }
}

impl OpsError {
    /// An [`OpsError::Invalid`] for `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> OpsError {
        OpsError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Whether the error is the caller's (bad input, unknown object, a
    /// refused state) rather than a failure of the service.
    pub fn is_callers(&self) -> bool {
        !matches!(self, OpsError::Db(_))
    }
}

/// Refuses an empty (or blank) value of `field`.
pub fn non_empty(field: &str, value: &str) -> Result<(), OpsError> {
    if value.trim().is_empty() {
        return Err(OpsError::invalid(field, "must not be empty"));
    }
    Ok(())
}

/// Whether `ns` may see an object of namespace `of`: any when no
/// namespace is asked for, else only its own.
fn visible(ns: Option<&str>, of: &str) -> bool {
    ns.is_none_or(|ns| ns == of)
}

/// "No `kind` `id`", said the same way for an object that does not exist
/// and one of another namespace.
fn not_found(kind: &str, namespace: Option<&str>, id: uuid::Uuid) -> OpsError {
    match namespace {
        Some(ns) => OpsError::NotFound(format!("no {kind} {id} in namespace {ns:?}")),
        None => OpsError::NotFound(format!("no {kind} {id} (unknown or deleted)")),
    }
}

/// The earliest and latest times accepted in a filter or cursor: years 1
/// to 9999 (PostgreSQL's `timestamptz` takes a wider range, chrono wider
/// still; nothing outside this is a time anybody means).
pub fn check_time(
    field: &str,
    t: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, OpsError> {
    use chrono::Datelike;
    if (1..=9999).contains(&t.year()) {
        Ok(t)
    } else {
        Err(OpsError::invalid(
            field,
            "must be a time between the years 1 and 9999",
        ))
    }
}

/// Longest name, namespace or event type accepted (bytes).
pub const MAX_NAME_BYTES: usize = 200;

/// Refuses an empty or over-long name-like value of `field`.
pub fn name_like(field: &str, value: &str) -> Result<(), OpsError> {
    non_empty(field, value)?;
    if value.len() > MAX_NAME_BYTES {
        return Err(OpsError::invalid(
            field,
            format!("must be at most {MAX_NAME_BYTES} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(OpsError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}
