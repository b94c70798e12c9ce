//! Event operations: emit through the producer function (with or without an
//! idempotency key), list with filters and a keyset cursor, show one event
//! with its deliveries and attempts, resend it, and a namespace's delivery
//! statistics (the console's overview).

use chrono::{DateTime, Utc};
use postgres::error::SqlState;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::page::{Cursor, Page, Paged};
use super::{non_empty, not_found, visible, OpsError};
use crate::db::audit::Actor;
use crate::db::events::{self, Event, EventFilter, EventSummary};
use crate::db::idempotency::{self, Outcome};
use crate::db::statuses::{self, DeliveryStatus};
use crate::db::{channels, leaders, DbError, WorkerConn};
use crate::state::State;

/// An event to emit.
#[derive(Debug)]
pub struct EmitInput {
    /// Namespace.
    pub namespace: String,
    /// Event type.
    pub event_type: String,
    /// Payload (a JSON object).
    pub payload: serde_json::Value,
    /// Annotations (a JSON object; not sent).
    pub annotations: Option<serde_json::Value>,
}

impl EmitInput {
    /// The names; the payload's own rules (an object, within the size cap)
    /// are `enqueue_event`'s, so that every producer gets the same.
    fn check(&self) -> Result<(), OpsError> {
        non_empty("namespace", &self.namespace)?;
        non_empty("type", &self.event_type)
    }
}

/// Emits an event through `enqueue_event` (same checks and limits as any
/// producer) for `actor`, with its audit row; returns the new event ids,
/// one per matching active rule.
pub fn emit(
    client: &mut impl postgres::GenericClient,
    input: &EmitInput,
    actor: &Actor,
) -> Result<Vec<Uuid>, OpsError> {
    emit_with(client, events::EMIT, input, actor)
}

/// [`emit`] on a pooled connection, with the statement prepared on it
/// once (the API's hot write).
pub fn emit_pooled(
    conn: &mut WorkerConn,
    input: &EmitInput,
    actor: &Actor,
) -> Result<Vec<Uuid>, OpsError> {
    let (statement, client) = conn.emit_statement()?;
    emit_with(client, &statement, input, actor)
}

fn emit_with<S: ?Sized + postgres::ToStatement>(
    client: &mut impl postgres::GenericClient,
    statement: &S,
    input: &EmitInput,
    actor: &Actor,
) -> Result<Vec<Uuid>, OpsError> {
    input.check()?;
    events::emit(
        client,
        statement,
        &input.namespace,
        &input.event_type,
        &input.payload,
        input.annotations.as_ref(),
        actor,
    )
    .map_err(refused_by_producer)
}

/// `enqueue_event`'s own refusals (not an object, over the size cap) as the
/// caller's errors with the database's message; others unchanged.
fn refused_by_producer(err: DbError) -> OpsError {
    if let DbError::Query { source, .. } = &err {
        if let Some(db) = source.as_db_error() {
            if *db.code() == SqlState::INVALID_PARAMETER_VALUE {
                let field = if db.message().contains("annotations must") {
                    "annotations"
                } else {
                    "payload"
                };
                return OpsError::invalid(field, format!("event refused: {}", db.message()));
            }
            if *db.code() == SqlState::PROGRAM_LIMIT_EXCEEDED {
                return OpsError::TooLarge(format!("event refused: {}", db.message()));
            }
        }
    }
    OpsError::from(err)
}

/// The answer to an emit: the new ids, how many rules matched, and a
/// warning when none did (an emit that creates nothing is almost always a
/// missing rule or a typo in the type).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Emitted {
    /// One event per matching active rule (empty: no rule matched).
    pub ids: Vec<Uuid>,
    /// How many active rules matched (one event each).
    #[serde(default)]
    pub rules_matched: usize,
    /// Set when no rule matched: what to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl Emitted {
    /// The answer for `ids` emitted from `input`.
    pub fn new(ids: Vec<Uuid>, input: &EmitInput) -> Emitted {
        let warning = ids
            .is_empty()
            .then(|| no_rule_warning(&input.namespace, &input.event_type));
        Emitted {
            rules_matched: ids.len(),
            ids,
            warning,
        }
    }
}

/// What an emit that matched no rule tells the caller (the CLI prints it
/// on stderr, the API returns it as `warning`).
pub fn no_rule_warning(namespace: &str, event_type: &str) -> String {
    format!(
        "no active rule for type {event_type:?} in namespace {namespace:?} (or its filter did not match): \
         no event was created; create a rule for this type (`rule create --namespace {namespace} \
         --event-type {event_type} --channel ID`, or POST /v1/namespaces/{namespace}/rules)"
    )
}

/// What an emit with an idempotency key answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Idempotent {
    /// First use of the key: the events were enqueued.
    Fresh(Emitted),
    /// The key was used before with the same body: its first answer
    /// (nothing enqueued now).
    Replayed {
        /// The first answer's HTTP status.
        status: u16,
        /// The first answer's body.
        body: serde_json::Value,
    },
}

/// The HTTP status stored with a fresh emit's answer.
pub const EMITTED_STATUS: u16 = 201;

/// Longest idempotency key accepted (bytes).
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Emits once per (`namespace`, `key`) within 24 h: a repeat with the same
/// `body` (the request's bytes, compared by SHA-256) gets the first answer
/// and enqueues nothing (nor writes an audit row: the first post has its
/// own); a repeat with another body is refused.
pub fn emit_idempotent(
    client: &mut impl postgres::GenericClient,
    input: &EmitInput,
    key: &str,
    body: &[u8],
    actor: &Actor,
) -> Result<Idempotent, OpsError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control) {
        return Err(OpsError::invalid(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} bytes without control characters"),
        ));
    }
    input.check()?;
    let request_hash: [u8; 32] = Sha256::digest(body).into();
    let outcome = idempotency::once(client, &input.namespace, key, &request_hash, |tx| {
        let ids = emit(tx, input, actor)?;
        let emitted = Emitted::new(ids, input);
        let body = serde_json::to_value(&emitted).unwrap_or(serde_json::Value::Null);
        Ok::<_, OpsError>((i32::from(EMITTED_STATUS), body, emitted))
    })?;
    match outcome {
        Outcome::Fresh(emitted) => Ok(Idempotent::Fresh(emitted)),
        Outcome::Replay {
            request_hash: first,
            status,
            response,
        } => {
            if first != request_hash {
                return Err(OpsError::invalid(
                    "Idempotency-Key",
                    format!("{key:?} was used within 24 h for a request with another body"),
                ));
            }
            Ok(Idempotent::Replayed {
                status: u16::try_from(status).unwrap_or(EMITTED_STATUS),
                body: response,
            })
        }
    }
}

/// The filters of an event list (the API's query parameters).
#[derive(Debug, Default)]
pub struct ListQuery {
    /// Only this type.
    pub event_type: Option<String>,
    /// Only events with a delivery in this state.
    pub state: Option<State>,
    /// Only events with a delivery to this channel.
    pub channel: Option<Uuid>,
    /// Only events created at or after this time.
    pub since: Option<DateTime<Utc>>,
}

/// A namespace's events (all namespaces: `None`), newest first, one page
/// at a time.
pub fn list(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    query: &ListQuery,
    page: Page,
) -> Result<Paged<EventSummary>, OpsError> {
    let filter = EventFilter {
        namespace,
        event_type: query.event_type.as_deref(),
        state: query.state,
        channel: query.channel,
        since: query.since,
        before: page.after.map(|c| (c.created_at, c.id)),
    };
    let rows = events::list_filtered(client, &filter, page.limit + 1)?;
    Ok(Paged::from_rows(rows, page, |e| Cursor {
        created_at: e.created_at,
        id: e.id,
    }))
}

/// One event of `namespace` (any: `None`) with every delivery and its attempts.
pub fn show(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
) -> Result<(Event, Vec<DeliveryStatus>), OpsError> {
    events::show(client, id)?
        .filter(|(e, _)| visible(namespace, &e.namespace))
        .ok_or_else(|| not_found("event", namespace, id))
}

/// A refused delivery of a resend: already on its way.
#[derive(Debug, serde::Serialize)]
pub struct Refused {
    /// The channel.
    pub channel_id: Uuid,
    /// Its state (PENDING or RESENDING).
    pub state: State,
}

/// What a resend of one event did.
#[derive(Debug, serde::Serialize)]
pub struct ResendReport {
    /// Deliveries set to RESENDING.
    pub resent: Vec<statuses::Resent>,
    /// Deliveries not resent because they are already on their way.
    pub refused: Vec<Refused>,
}

/// Resends an event's SUCCESS, FAILED and SENDING deliveries (only the one
/// to `channel`, when given) with a fresh clock. Fails when nothing could be
/// resent: no such delivery (not found), or all still on their way, or the
/// channel asked for is disabled (conflict).
pub fn resend(
    client: &mut impl postgres::GenericClient,
    namespace: Option<&str>,
    id: Uuid,
    channel: Option<Uuid>,
) -> Result<ResendReport, OpsError> {
    if namespace.is_some() {
        show(client, namespace, id)?;
    }
    if let Some(c) = channel {
        let standing = channels::standing(client, c)?.filter(|s| visible(namespace, &s.namespace));
        if let Some(standing) = standing {
            if standing.disabled || standing.deleted {
                return Err(OpsError::Conflict(format!(
                    "channel {c} is {}: a resent delivery would fail again",
                    if standing.deleted {
                        "deleted"
                    } else {
                        "disabled"
                    }
                )));
            }
        }
    }
    let result = statuses::resend(client, id, channel)?;
    let refused: Vec<Refused> = result
        .refused
        .iter()
        .map(|(channel_id, state)| Refused {
            channel_id: *channel_id,
            state: *state,
        })
        .collect();
    if result.resent.is_empty() {
        if refused.is_empty() {
            return Err(OpsError::NotFound(match channel {
                Some(c) => format!("nothing to resend: event {id} has no delivery to channel {c}"),
                None => format!("nothing to resend: event {id} has no deliveries (unknown event?)"),
            }));
        }
        let list: Vec<String> = refused
            .iter()
            .map(|r| format!("channel {} is {}", r.channel_id, r.state))
            .collect();
        return Err(OpsError::Conflict(format!(
            "nothing to resend: the delivery of event {id} is still on its way ({}); only SUCCESS, FAILED or SENDING deliveries can be resent",
            list.join(", ")
        )));
    }
    Ok(ResendReport {
        resent: result.resent,
        refused,
    })
}

/// Deliveries and failures in one minute.
#[derive(Debug, serde::Serialize)]
pub struct Minute {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Attempts made in it.
    pub deliveries: i64,
    /// Of those, how many failed.
    pub failures: i64,
}

/// A namespace's delivery statistics (the console's overview).
#[derive(Debug, serde::Serialize)]
pub struct Stats {
    /// Statuses per state (every state listed).
    pub by_state: std::collections::BTreeMap<String, i64>,
    /// Unfinished statuses due now.
    pub due_now: i64,
    /// Age in seconds of the oldest unfinished status.
    pub oldest_unfinished_age_seconds: Option<f64>,
    /// The namespace's channels whose breaker is open or half-open.
    pub breakers_open: usize,
    /// Attempts and failures per minute over the last hour, oldest first
    /// (60 entries).
    pub per_minute: Vec<Minute>,
}

/// Statistics of one namespace.
pub fn stats(
    client: &mut impl postgres::GenericClient,
    namespace: &str,
) -> Result<Stats, OpsError> {
    let counts = statuses::counts_of(client, Some(namespace))?;
    let ids: std::collections::HashSet<String> =
        channels::list_after(client, Some(namespace), None, None, false)?
            .into_iter()
            .map(|c| c.id.to_string())
            .collect();
    let breakers_open = leaders::published(client)?.map_or(0, |m| {
        m.iter()
            .filter(|(id, v)| ids.contains(*id) && v["breaker"] != "closed")
            .count()
    });
    let per_minute = statuses::attempts_per_minute(client, namespace)?
        .into_iter()
        .map(|(minute, deliveries, failures)| Minute {
            minute,
            deliveries,
            failures,
        })
        .collect();
    Ok(Stats {
        by_state: counts.by_state,
        due_now: counts.due_now,
        oldest_unfinished_age_seconds: counts.oldest_unfinished_age_seconds,
        breakers_open,
        per_minute,
    })
}
