//! The worker step: what one worker does with one due delivery (an event to
//! one channel), in two halves that `reconcile::worker` runs one after the
//! other.
//!
//! [`decide`] needs no database: it asks the state machine whether the
//! delivery is due or has timed out, checks the event (its payload must be a
//! JSON object) and the channel (deleted, disabled, no longer assigned,
//! unusable URL/secret/headers), sends the signed request, and lets the state
//! machine decide the update. The page brought everything it reads.
//! [`record`] writes that update with the row's version (optimistic
//! concurrency) on a connection the caller took for just that. So no
//! connection, let alone a transaction, is held across the HTTP call; where
//! the connection comes from, and how long to wait for one, is the caller's
//! business.

use std::time::Duration;

use chrono::{DateTime, Utc};
use postgres::GenericClient;
use serde_json::value::RawValue;

use crate::db::due::{Delivery, DueEvent, DueStatus};
use crate::db::statuses::{StatusWriter, Write};
use crate::db::DbError;
use crate::delivery::endpoint;
use crate::delivery::http::Request;
use crate::delivery::provider::Provider;
use crate::delivery::sign::SigningKeys;
use crate::delivery::svix;
use crate::state::{self, Check, Jitter, Outcome, Policy, State, Update, Verdict};

/// What a worker needs besides the delivery and a connection.
pub struct Context<'a> {
    /// Who delivers: the shared HTTP sender, or the Svix client.
    pub provider: &'a Provider,
    /// Retry schedule and timeouts.
    pub policy: &'a Policy,
    /// Asked right before a request goes out: false withholds it (the
    /// leader can no longer vouch for its lock; nothing is written).
    pub may_send: &'a (dyn Fn() -> bool + Sync),
}

/// What happened to one delivery status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOutcome {
    /// Delivered: now SUCCESS.
    Delivered,
    /// Failed attempt, retry scheduled: SENDING.
    RetryScheduled,
    /// Now FAILED (permanent error, retries exhausted, timeout, channel).
    Failed,
    /// The row changed under us (operator resend, another instance): our
    /// write was refused, the row keeps the other change.
    ChangedConcurrently,
    /// Not due yet (next attempt after the cut-off) or already finished.
    NotDue,
    /// Due, but the request was withheld (`Context::may_send` said no):
    /// nothing sent, nothing written; it stays due.
    Withheld,
}

/// What reconciling one delivery came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// The outcome.
    pub outcome: StatusOutcome,
    /// When the next attempt is due, for a retry written by this step.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Enqueue to first attempt, when this step made the delivery's first
    /// attempt.
    pub first_attempt_latency: Option<Duration>,
    /// How the attempt this step made counts for the channel's health;
    /// `None` when it made none.
    pub verdict: Option<Verdict>,
    /// How long the attempt this step made took; `None` when it made none.
    pub took: Option<Duration>,
}

/// What [`decide`] came to.
#[derive(Debug)]
pub enum Decision {
    /// Nothing to write: [`StatusOutcome::NotDue`] or
    /// [`StatusOutcome::Withheld`].
    Nothing(StatusOutcome),
    /// An update to write with [`record`]: the outcome of an attempt just
    /// made, or a failure decided without one (timeout, unusable channel or
    /// event).
    Write(Pending),
}

/// An update decided but not written yet.
#[derive(Debug)]
pub struct Pending {
    /// What to write.
    pub update: Update,
    /// Enqueue to first attempt, when this was the delivery's first attempt.
    pub first_attempt_latency: Option<Duration>,
    /// How the attempt counts for the channel's health, when one was made.
    pub verdict: Option<Verdict>,
}

/// Decides one due delivery and, when it is due, sends the attempt; touches
/// no database. `cutoff` is the sweep's: a status due after it is left
/// alone.
pub fn decide(
    ctx: &Context<'_>,
    delivery: &Delivery,
    cutoff: DateTime<Utc>,
    jitter: &mut dyn Jitter,
) -> Decision {
    let (event, status) = (&*delivery.event, &delivery.status);
    let mut first_attempt_latency = None;
    let mut verdict = None;
    let update = match state::check(&status.view, Utc::now(), cutoff, ctx.policy) {
        Check::Finished | Check::NotDue => return Decision::Nothing(StatusOutcome::NotDue),
        Check::Expired(update) => update,
        Check::Due => {
            let usable = match event_problem(event) {
                Some(problem) => Err(problem),
                None => usable_channel(status),
            };
            let outcome = match usable {
                Err(problem) => problem,
                Ok(channel) => {
                    if !(ctx.may_send)() {
                        return Decision::Nothing(StatusOutcome::Withheld);
                    }
                    if status.view.state == State::Pending && status.view.round_attempts == 0 {
                        first_attempt_latency = (Utc::now() - event.created_at).to_std().ok();
                    }
                    let body = event.body.get_or_init(|| webhook_body(event));
                    match ctx.provider {
                        Provider::Http(sender) => {
                            let outcome = attempt(sender, event, status, &channel, body);
                            if let Outcome::Attempted(result) = &outcome {
                                verdict = Some(state::verdict(result));
                            }
                            outcome
                        }
                        Provider::Svix(client) => {
                            let observed = hand_to_svix(client, event, status, body);
                            verdict = Some(svix::verdict(&observed));
                            let update = svix::map::map(
                                &status.view,
                                &observed,
                                Utc::now(),
                                ctx.policy,
                                jitter,
                            );
                            return Decision::Write(Pending {
                                update,
                                first_attempt_latency,
                                verdict,
                            });
                        }
                    }
                }
            };
            state::apply(&status.view, &outcome, Utc::now(), ctx.policy, jitter)
        }
    };
    Decision::Write(Pending {
        update,
        first_attempt_latency,
        verdict,
    })
}

/// Writes what [`decide`] decided for each delivery, with its row's
/// version, in one statement on `client` (which prepared `writer`); the
/// outcomes in the same order.
pub fn record(
    client: &mut impl GenericClient,
    writer: &StatusWriter,
    decided: &[(&Delivery, &Pending)],
) -> Result<Vec<Reconciled>, DbError> {
    let rows: Vec<Write<'_>> = decided
        .iter()
        .map(|(d, p)| Write {
            id: d.status.id,
            version: d.status.version,
            update: &p.update,
        })
        .collect();
    let written = writer.write(client, &rows)?;
    Ok(decided
        .iter()
        .zip(written)
        .map(|((d, pending), written)| {
            let update = &pending.update;
            let outcome = outcome_of(&d.event, &d.status, update, written);
            Reconciled {
                outcome,
                next_attempt_at: match outcome {
                    StatusOutcome::RetryScheduled => update.next_attempt_at,
                    _ => None,
                },
                first_attempt_latency: pending.first_attempt_latency,
                verdict: pending.verdict,
                took: update
                    .attempt
                    .as_ref()
                    .map(|a| Duration::from_millis(a.duration_ms)),
            }
        })
        .collect())
}

/// A reason the event cannot be sent to any channel: its payload, sent as
/// the body's `data`, must be a JSON object (docs/webhooks.md, the request
/// body). Events are immutable, so this is permanent.
fn event_problem(event: &DueEvent) -> Option<Outcome> {
    // The payload is valid JSON (it came out of a jsonb column), so its first
    // character tells its kind.
    if event.payload.get().trim_start().starts_with('{') {
        None
    } else {
        Some(Outcome::InvalidEvent(
            "event payload is not a JSON object".to_owned(),
        ))
    }
}

/// What sending to a channel needs, checked and parsed.
struct UsableChannel {
    secret: SigningKeys,
    headers: Vec<(String, String)>,
}

/// The channel's secret and headers, parsed; or the reason not to send to
/// this channel at all, as the state machine's outcome.
// The error is one of the small `Outcome` variants; boxing it would only
// add an allocation per refused delivery.
#[allow(clippy::result_large_err)]
fn usable_channel(status: &DueStatus) -> Result<UsableChannel, Outcome> {
    let t = &status.target;
    if t.deleted {
        return Err(Outcome::ChannelDeleted);
    }
    if t.disabled {
        return Err(Outcome::ChannelDisabled);
    }
    if !t.assigned {
        return Err(Outcome::ChannelUnassigned);
    }
    endpoint::check_url(&t.url).map_err(Outcome::InvalidChannel)?;
    // Stored values may be sealed (`[secrets] key_file`); `db::due` has
    // learned every key they name that this instance can reach.
    // Not the channel's fault and maybe fixed soon (an instance started
    // with the wrong key file): retried on the schedule, no request sent.
    let unsealed = |e: crate::secrets::SecretsError| {
        log::error!("channel {}: {e}", t.id);
        Outcome::Attempted(state::AttemptResult {
            started_at: Utc::now(),
            duration: Duration::ZERO,
            url: t.url.clone(),
            http_status: None,
            response_body: None,
            error: Some(
                "no request sent: the channel's secrets cannot be decrypted by this instance (see its log)"
                    .into(),
            ),
            class: state::AttemptClass::Retryable,
            retry_after: None,
        })
    };
    let current = crate::secrets::open(&t.signing_secret, crate::secrets::SIGNING_SECRET)
        .map_err(unsealed)?;
    let previous = t
        .previous_secret
        .as_deref()
        .map(|p| crate::secrets::open(p, crate::secrets::SIGNING_SECRET))
        .transpose()
        .map_err(unsealed)?;
    let secret = SigningKeys::parse(&current, previous.as_deref(), t.previous_until)
        .map_err(|e| Outcome::InvalidChannel(format!("signing secret: {e}")))?;
    let mut headers = endpoint::parse_headers(&t.headers).map_err(Outcome::InvalidChannel)?;
    for (name, value) in &mut headers {
        if value.starts_with(crate::secrets::PREFIX) {
            *value = crate::secrets::open(value, crate::secrets::HEADER_VALUE).map_err(unsealed)?;
            endpoint::check_header(name, value).map_err(Outcome::InvalidChannel)?;
        }
    }
    Ok(UsableChannel { secret, headers })
}

/// Hands one delivery to Svix (or polls it there, once handed over) and
/// says what Svix reports. The row's state tells whether the round's
/// message was handed over (`SENDING`; see `svix::map`).
fn hand_to_svix(
    client: &svix::Client,
    event: &DueEvent,
    status: &DueStatus,
    body: &[u8],
) -> svix::map::Observed {
    let key = svix::idempotency_key(status.id, status.view.clock_started_at);
    let channel = status.target.id.to_string();
    let payload: Box<RawValue> = match std::str::from_utf8(body)
        .ok()
        .and_then(|b| RawValue::from_string(b.to_owned()).ok())
    {
        Some(p) => p,
        None => {
            return svix::map::Observed::HandOverRefused {
                error: "the webhook body is not JSON".into(),
            }
        }
    };
    let observed = client.observe(
        &svix::Handover {
            namespace: &event.namespace,
            key: &key,
            channel: &channel,
            event_type: &event.event_type,
            payload: &payload,
            copied: status.view.round_attempts,
            handed_over_at: handed_over_at(&status.view),
        },
        status.view.state == State::Sending,
    );
    log::debug!(
        "event {} ({}) to channel {} through Svix: {observed:?}",
        event.id,
        event.namespace,
        status.target.id
    );
    observed
}

/// When a `SENDING` delivery with no Svix attempt copied yet was handed
/// over: its first poll is due [`svix::map::FIRST_POLL`] after that
/// (`svix::map`). Later polls are due at other times: the batch read then
/// misses it and the per-message poll answers.
fn handed_over_at(view: &state::StatusView) -> Option<DateTime<Utc>> {
    if view.state != State::Sending || view.round_attempts != 0 {
        return None;
    }
    let step = chrono::TimeDelta::from_std(svix::map::FIRST_POLL).ok()?;
    view.next_attempt_at.map(|at| at - step)
}

/// Sends one attempt to a channel that passed [`usable_channel`].
fn attempt(
    sender: &crate::delivery::http::Sender,
    event: &DueEvent,
    status: &DueStatus,
    channel: &UsableChannel,
    body: &[u8],
) -> Outcome {
    let t = &status.target;
    let msg_id = event.id.to_string();
    let result = sender.send(
        &Request {
            url: &t.url,
            msg_id: &msg_id,
            body,
            secret: &channel.secret,
            headers: &channel.headers,
        },
        Utc::now(),
    );
    log::debug!(
        "event {} ({}) to channel {}: {} in {} ms",
        event.id,
        event.namespace,
        t.id,
        result
            .http_status
            .map(|c| format!("HTTP {c}"))
            .or_else(|| result.error.clone())
            .unwrap_or_default(),
        result.duration.as_millis()
    );
    Outcome::Attempted(result)
}

/// What writing `update` came to (`written`: false when the row had
/// changed meanwhile), logged as it is.
fn outcome_of(
    event: &DueEvent,
    status: &DueStatus,
    update: &Update,
    written: bool,
) -> StatusOutcome {
    if !written {
        log::warn!(
            "delivery of event {} to channel {} was changed concurrently (operator resend or another instance); kept that change, not writing {}",
            event.id,
            status.target.id,
            update.state
        );
        return StatusOutcome::ChangedConcurrently;
    }
    if update.state == State::Failed {
        log::info!(
            "delivery of event {} ({}) to channel {} FAILED: {}",
            event.id,
            event.namespace,
            status.target.id,
            update.reason
        );
    }
    match update.state {
        State::Success => StatusOutcome::Delivered,
        State::Failed => StatusOutcome::Failed,
        _ => StatusOutcome::RetryScheduled,
    }
}

/// The webhook body: `{"id", "type", "timestamp", "data"}`, with the payload
/// copied verbatim.
pub fn webhook_body(event: &DueEvent) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        id: String,
        #[serde(rename = "type")]
        event_type: &'a str,
        timestamp: String,
        data: &'a RawValue,
    }
    let body = Body {
        id: event.id.to_string(),
        event_type: &event.event_type,
        timestamp: event
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        data: &event.payload,
    };
    // Serialising strings and an already-valid RawValue cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::due::Target;
    use crate::state::StatusView;

    fn status(secret: &str, headers: &str) -> DueStatus {
        DueStatus {
            id: uuid::Uuid::nil(),
            version: 1,
            view: StatusView {
                state: State::Pending,
                next_attempt_at: None,
                clock_started_at: Utc::now(),
                round_attempts: 0,
            },
            target: Target {
                id: uuid::Uuid::nil(),
                url: "https://example.com/hook".into(),
                headers: headers.into(),
                signing_secret: secret.into(),
                previous_secret: None,
                previous_until: None,
                disabled: false,
                deleted: false,
                assigned: true,
                failing_since: None,
            },
        }
    }

    #[test]
    fn sealed_values_are_opened_and_an_unknown_key_is_retried_not_failed() {
        let key = crate::secrets::Key::from_bytes([42; 32]);
        crate::secrets::learn(key.clone());
        let secret = crate::delivery::sign::Secret::generate();
        let sealed = key.seal(&secret, crate::secrets::SIGNING_SECRET);
        let header = key.seal("Bearer x", crate::secrets::HEADER_VALUE);
        let headers = serde_json::json!({ "Authorization": header }).to_string();
        let usable = usable_channel(&status(&sealed, &headers)).expect("usable");
        assert_eq!(
            usable.headers,
            vec![("Authorization".into(), "Bearer x".into())]
        );

        let stranger = crate::secrets::Key::from_bytes([7; 32]);
        let sealed = stranger.seal(&secret, crate::secrets::SIGNING_SECRET);
        match usable_channel(&status(&sealed, "{}")) {
            Err(Outcome::Attempted(a)) => {
                assert_eq!(a.class, state::AttemptClass::Retryable);
                assert!(a.error.unwrap().contains("cannot be decrypted"));
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("opened under an unknown key"),
        }
    }
}
