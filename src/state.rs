//! The delivery state machine: pure decisions about one delivery status.
//!
//! Given what is stored about a delivery status ([`StatusView`]), the clock,
//! the retry [`Policy`] and — after an attempt — what happened
//! ([`Outcome`]), this module decides what to write back ([`Update`]). It
//! follows the state diagram of docs/webhooks.md: `PENDING` and
//! `RESENDING` behave alike (a resend is `PENDING` with a fresh clock),
//! `SENDING` means "had a failed attempt, retries left", and `SUCCESS` and
//! `FAILED` are final until an operator resends.
//!
//! Everything here is a function of its inputs: no I/O, no clock reads (the
//! caller passes `now`), and randomness only through the [`Jitter`] trait so
//! tests can fix it. Reading and writing statuses, optimistic concurrency and
//! the HTTP request itself belong to `db` and `delivery`. No function here
//! panics, whatever its input: time arithmetic is checked and saturates.
//!
//! Longer than most files (about 650 lines before its exhaustive tests):
//! the state machine is one pure decision, kept whole.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The state of one delivery status (one event × one channel).
///
/// Stored and serialized as the upper-case name, e.g. `"PENDING"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Created, no attempt made yet.
    Pending,
    /// At least one attempt failed and retries are left.
    Sending,
    /// An operator asked for a resend; behaves like `Pending` with a fresh clock.
    Resending,
    /// Delivered (a 2xx response). Final until resent.
    Success,
    /// Given up: retries exhausted, timeout, permanent error or unusable
    /// channel. Final until resent.
    Failed,
}

/// The states that still need work; the due query selects only these.
pub const UNFINISHED: [State; 3] = [State::Pending, State::Sending, State::Resending];

impl State {
    /// Every state, in diagram order.
    pub const ALL: [State; 5] = [
        State::Pending,
        State::Sending,
        State::Resending,
        State::Success,
        State::Failed,
    ];

    /// The stored, upper-case name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Sending => "SENDING",
            State::Resending => "RESENDING",
            State::Success => "SUCCESS",
            State::Failed => "FAILED",
        }
    }

    /// True for `SUCCESS` and `FAILED`, which need no further delivery work.
    pub fn is_finished(self) -> bool {
        matches!(self, State::Success | State::Failed)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of [`State::from_str`]: the text is not a state name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown delivery state {0:?} (expected PENDING, SENDING, RESENDING, SUCCESS or FAILED)")]
pub struct ParseStateError(pub String);

impl FromStr for State {
    type Err = ParseStateError;

    /// Parses a state name. Case-insensitive, so `--state failed` works on the
    /// command line; surrounding whitespace is not accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseStateError(s.to_owned()))
    }
}

/// The retry and timeout policy, built from the `[reconciler]` and
/// `[delivery]` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Delays after failed attempt 1, 2, …; its length plus one is the number
    /// of attempts in all. Default: 5s, 5m, 30m, 2h, 5h, 10h, 10h (8 attempts).
    pub retry_schedule: Vec<Duration>,
    /// How long a `PENDING`/`RESENDING` status may wait for its first
    /// attempt of the round, counted from creation or the last resend.
    /// Default: 3h.
    pub pending_timeout: Duration,
    /// How long a `SENDING` status may keep retrying, counted from creation
    /// or the last resend. Default: 48h.
    pub sending_timeout: Duration,
    /// Relative jitter applied to each schedule step: 0.10 means ±10%.
    /// Values outside [0, 1] (or NaN) are treated as the nearest bound (or 0).
    /// Default: 0.10.
    pub jitter: f64,
}

impl Default for Policy {
    fn default() -> Self {
        const MIN: u64 = 60;
        const HOUR: u64 = 3600;
        Policy {
            retry_schedule: [
                5,
                5 * MIN,
                30 * MIN,
                2 * HOUR,
                5 * HOUR,
                10 * HOUR,
                10 * HOUR,
            ]
            .into_iter()
            .map(Duration::from_secs)
            .collect(),
            pending_timeout: Duration::from_secs(3 * HOUR),
            sending_timeout: Duration::from_secs(48 * HOUR),
            jitter: 0.10,
        }
    }
}

impl Policy {
    /// Attempts in all per round: the schedule's length plus the first attempt
    /// (saturating at `u32::MAX`).
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.retry_schedule.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// The longest schedule step; a `Retry-After` is never honoured beyond
    /// it. Zero when the schedule is empty.
    pub fn retry_after_cap(&self) -> Duration {
        self.retry_schedule
            .iter()
            .copied()
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The jitter fraction, forced into [0, 1] (NaN counts as 0).
    fn jitter_fraction(&self) -> f64 {
        sanitize_jitter(self.jitter)
    }
}

/// What the state machine needs to know about a stored delivery status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusView {
    /// The stored state.
    pub state: State,
    /// When the next attempt is due; `None` means "now" for unfinished states.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Creation, or the last operator resend: the timeouts count from here.
    pub clock_started_at: DateTime<Utc>,
    /// Attempts since `clock_started_at` (a resend resets it to 0).
    pub round_attempts: u32,
}

/// Result of the pre-delivery check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `SUCCESS` or `FAILED`: nothing to do.
    Finished,
    /// `next_attempt_at` is later than the sweep's cut-off.
    NotDue,
    /// The pending timeout (`PENDING`/`RESENDING`) or the sending timeout
    /// (`SENDING`) is reached: write this `FAILED` update, make no attempt.
    Expired(Update),
    /// Deliver now.
    Due,
}

/// Decides whether an event's delivery to one channel should be attempted.
///
/// Timeouts come first and use `now`; they count from `clock_started_at`, so
/// a resent old status starts afresh. A status is expired when
/// `now - clock_started_at >= timeout`: exactly at the timeout is expired.
/// Then a status whose `next_attempt_at` is later than `cutoff` (the sweep's
/// due cut-off) is not due; otherwise it is due.
pub fn check(
    status: &StatusView,
    now: DateTime<Utc>,
    cutoff: DateTime<Utc>,
    policy: &Policy,
) -> Check {
    let (timeout, kind) = match status.state {
        State::Success | State::Failed => return Check::Finished,
        State::Pending | State::Resending => (policy.pending_timeout, "pending"),
        State::Sending => (policy.sending_timeout, "sending"),
    };
    let elapsed = now.signed_duration_since(status.clock_started_at);
    if elapsed >= to_time_delta(timeout) {
        return Check::Expired(Update {
            state: State::Failed,
            reason: format!(
                "{kind} timeout: not delivered within {}",
                format_duration(timeout)
            ),
            next_attempt_at: None,
            round_attempts: status.round_attempts,
            attempt: None,
        });
    }
    match status.next_attempt_at {
        Some(at) if at > cutoff => Check::NotDue,
        _ => Check::Due,
    }
}

/// How an attempt's result counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptClass {
    /// Delivered.
    Success,
    /// Failed, but may succeed later: retry if attempts are left.
    Retryable,
    /// Failed for good: no retry.
    Permanent,
}

/// A parsed `Retry-After` header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// Delta-seconds: retry this long after the response.
    Delay(Duration),
    /// An HTTP-date: retry at this time.
    At(DateTime<Utc>),
}

impl RetryAfter {
    /// The wait this value asks for, measured from `now`; a date in the past
    /// asks for no wait.
    fn wait_from(self, now: DateTime<Utc>) -> Duration {
        match self {
            RetryAfter::Delay(d) => d,
            RetryAfter::At(at) => at
                .signed_duration_since(now)
                .to_std()
                .unwrap_or(Duration::ZERO),
        }
    }
}

/// Parses a Retry-After header value: delta-seconds (`"120"`, surrounding
/// whitespace allowed; values beyond `u64` saturate) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`). `None` when unparseable, including
/// signed numbers such as `"-1"` or `"+5"`.
pub fn parse_retry_after(value: &str) -> Option<RetryAfter> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(RetryAfter::Delay(Duration::from_secs(secs)));
    }
    let time = httpdate::parse_http_date(value).ok()?;
    let since_epoch = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    let secs = i64::try_from(since_epoch.as_secs()).ok()?;
    DateTime::from_timestamp(secs, since_epoch.subsec_nanos()).map(RetryAfter::At)
}

/// Classifies an HTTP status code.
///
/// - 2xx: success.
/// - 408, 429 and 5xx: retryable.
/// - 410 Gone: permanent — the receiver says the endpoint is gone for good.
/// - other 4xx: retryable, as Svix does: receivers are often misconfigured
///   for a while (a wrong route, an expired credential) and get fixed.
/// - 1xx and 3xx (and anything outside 100–599): retryable. Redirects are
///   not followed, so a 3xx is a failed attempt the receiver may fix.
pub fn classify_status(code: u16) -> AttemptClass {
    match code {
        200..=299 => AttemptClass::Success,
        410 => AttemptClass::Permanent,
        _ => AttemptClass::Retryable,
    }
}

/// How an attempt counts for its channel's health (the leader's circuit
/// breaker and auto-disable; docs/architecture.md "Fair scheduling").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx response: the endpoint works.
    Success,
    /// The endpoint answered, but overloaded or failing: a 5xx, 429 or 408.
    /// Cheap for us (a quick answer holds no worker for long): it opens the
    /// breaker only when nearly every recent attempt failed (`breaker`).
    Failure,
    /// No answer at all: a transport error (timeout, connection refused or
    /// reset, a refused address, no request possible). What a dead or
    /// hanging endpoint gives, and what costs us a worker for up to the
    /// timeout: `breaker_failures` of these in a row open the breaker.
    NoAnswer,
    /// Another response (a 4xx, a 3xx): the endpoint answered but did not
    /// accept this delivery. A failed attempt for auto-disable, but no sign
    /// of an endpoint that is down, so it does not open the breaker.
    Refused,
}

/// The [`Verdict`] of an attempt.
pub fn verdict(result: &AttemptResult) -> Verdict {
    match result.http_status {
        None => Verdict::NoAnswer,
        Some(200..=299) => Verdict::Success,
        Some(408 | 429 | 500..=599) => Verdict::Failure,
        Some(_) => Verdict::Refused,
    }
}

/// One attempt as performed by the HTTP layer (filled by I/O code, consumed
/// by [`apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// When the request started.
    pub started_at: DateTime<Utc>,
    /// How long the attempt took.
    pub duration: Duration,
    /// The URL posted to.
    pub url: String,
    /// The response status, when a response arrived.
    pub http_status: Option<u16>,
    /// The response body, already truncated by the HTTP layer.
    pub response_body: Option<String>,
    /// Transport error text (timeout, connection refused, …), or why no
    /// request could be made (invalid URL, …).
    pub error: Option<String>,
    /// How the attempt counts, usually [`classify_status`] of the status.
    pub class: AttemptClass,
    /// The response's `Retry-After`; honoured only for 429 and 503.
    pub retry_after: Option<RetryAfter>,
}

/// What happened to a due delivery; handed to [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP attempt was made (or tried and failed before a response).
    Attempted(AttemptResult),
    /// The channel is disabled.
    ChannelDisabled,
    /// The channel is (soft-)deleted.
    ChannelDeleted,
    /// The event's rule no longer has this channel.
    ChannelUnassigned,
    /// The channel cannot be used (e.g. a bad signing secret); the reason.
    InvalidChannel(String),
    /// The event cannot be delivered as a webhook (its payload is not a JSON
    /// object); the reason. Permanent: events are immutable.
    InvalidEvent(String),
}

/// The stored record of one attempt (an entry of the jsonb attempts list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When the attempt started.
    pub timestamp: DateTime<Utc>,
    /// The state this attempt led to.
    pub state: State,
    /// The response status, when a response arrived.
    pub http_status: Option<u16>,
    /// How long the attempt took, in milliseconds.
    pub duration_ms: u64,
    /// The URL posted to.
    pub url: String,
    /// The (truncated) response body.
    pub response_body: Option<String>,
    /// Transport error text.
    pub error: Option<String>,
    /// With `delivery.provider = "svix"`: the id of the Svix message this
    /// attempt (made by Svix) belongs to. Absent for the daemon's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svix_message_id: Option<String>,
}

/// The update to write back to a delivery status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The new state.
    pub state: State,
    /// Human-readable reason, e.g. `"retry 2 of 7 scheduled after HTTP 500"`.
    pub reason: String,
    /// When to try next; `Some` only for unfinished states.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The new number of attempts in this round.
    pub round_attempts: u32,
    /// The attempt to append to the record, when an HTTP attempt was made.
    pub attempt: Option<AttemptRecord>,
}

/// Source of jitter: returns a factor in `[1 - jitter, 1 + jitter]`.
pub trait Jitter {
    /// A factor to multiply a schedule step with, for the fraction `jitter`.
    fn factor(&mut self, jitter: f64) -> f64;
}

/// Uniformly random jitter from the thread-local generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomJitter;

impl Jitter for RandomJitter {
    fn factor(&mut self, jitter: f64) -> f64 {
        let j = sanitize_jitter(jitter);
        rand::rng().random_range((1.0 - j)..=(1.0 + j))
    }
}

/// A fixed factor, clamped to `[1 - jitter, 1 + jitter]`; for tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn factor(&mut self, jitter: f64) -> f64 {
        clamp_factor(self.0, sanitize_jitter(jitter))
    }
}

/// Decides the update after a due delivery's outcome.
///
/// Callers call this only after [`check`] returned [`Check::Due`]. It is
/// still total: on a finished (`SUCCESS`/`FAILED`) status it returns an
/// update that keeps the state, with reason `"already finished"`, no attempt
/// record and the round's attempt count unchanged.
///
/// For an attempt, `n = round_attempts + 1` is its number in the round.
/// Success → `SUCCESS`. Permanent → `FAILED`. Retryable → `FAILED` when `n`
/// reaches [`Policy::max_attempts`], else `SENDING` with
/// `next_attempt_at = now + retry_schedule[n-1] × jitter`; for a 429 or 503
/// with a `Retry-After`, the delay is at least that wait, capped at
/// [`Policy::retry_after_cap`]. Jittered delays are rounded to milliseconds.
/// A channel outcome or an invalid event → `FAILED` with a reason naming it,
/// no attempt record.
pub fn apply(
    status: &StatusView,
    outcome: &Outcome,
    now: DateTime<Utc>,
    policy: &Policy,
    jitter: &mut dyn Jitter,
) -> Update {
    if status.state.is_finished() {
        return Update {
            state: status.state,
            reason: "already finished".to_owned(),
            next_attempt_at: None,
            round_attempts: status.round_attempts,
            attempt: None,
        };
    }
    let channel_failure = |reason: String| Update {
        state: State::Failed,
        reason: storable(&reason),
        next_attempt_at: None,
        round_attempts: status.round_attempts,
        attempt: None,
    };
    let result = match outcome {
        Outcome::Attempted(result) => result,
        Outcome::ChannelDisabled => return channel_failure("channel disabled".to_owned()),
        Outcome::ChannelDeleted => return channel_failure("channel deleted".to_owned()),
        Outcome::ChannelUnassigned => {
            return channel_failure("channel no longer assigned to the event's rule".to_owned())
        }
        Outcome::InvalidChannel(why) => {
            return channel_failure(format!("invalid channel configuration: {why}"))
        }
        Outcome::InvalidEvent(why) => return channel_failure(format!("invalid event: {why}")),
    };

    let n = status.round_attempts.saturating_add(1);
    let what = describe(result);
    let (state, reason, next_attempt_at) = match result.class {
        AttemptClass::Success => (State::Success, format!("delivered ({what})"), None),
        AttemptClass::Permanent => (
            State::Failed,
            format!("permanent failure: {}", describe_permanent(result)),
            None,
        ),
        AttemptClass::Retryable if n >= policy.max_attempts() => (
            State::Failed,
            format!(
                "retries exhausted after {n} attempt{} (last: {what})",
                if n == 1 { "" } else { "s" }
            ),
            None,
        ),
        AttemptClass::Retryable => {
            let delay = retry_delay(result, n, now, policy, jitter);
            (
                State::Sending,
                format!(
                    "retry {n} of {} scheduled after {what}",
                    policy.max_attempts() - 1
                ),
                Some(add_saturating(now, delay)),
            )
        }
    };
    let reason = storable(&reason);
    Update {
        state,
        reason,
        next_attempt_at,
        round_attempts: n,
        attempt: Some(AttemptRecord {
            timestamp: result.started_at,
            state,
            http_status: result.http_status,
            duration_ms: u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
            url: result.url.clone(),
            response_body: result.response_body.as_deref().map(storable),
            error: result.error.as_deref().map(storable),
            svix_message_id: None,
        }),
    }
}

/// `text` as PostgreSQL can store it: it refuses a NUL character in `text`
/// and (as `\u0000`) in jsonb, so a receiver's body, an error or a reason
/// with one would make the status write fail (and, written in a group,
/// the others' too); it becomes U+FFFD.
pub fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// The delay before the retry after failed attempt `n` (1-based).
fn retry_delay(
    result: &AttemptResult,
    n: u32,
    now: DateTime<Utc>,
    policy: &Policy,
    jitter: &mut dyn Jitter,
) -> Duration {
    let index = usize::try_from(n.saturating_sub(1)).unwrap_or(usize::MAX);
    let step = policy
        .retry_schedule
        .get(index)
        .or(policy.retry_schedule.last())
        .copied()
        .unwrap_or(Duration::ZERO);
    let j = policy.jitter_fraction();
    let delay = scale(step, clamp_factor(jitter.factor(j), j));
    match (result.http_status, result.retry_after) {
        (Some(429 | 503), Some(retry_after)) => {
            delay.max(retry_after.wait_from(now).min(policy.retry_after_cap()))
        }
        _ => delay,
    }
}

/// Short text for what an attempt ended with: `"HTTP 500"`, or the error.
fn describe(result: &AttemptResult) -> String {
    match (result.http_status, &result.error) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, Some(error)) => error.clone(),
        (None, None) => "no response".to_owned(),
    }
}

/// Like [`describe`], with the reason phrase of the status when known
/// (`"HTTP 410 Gone"`).
fn describe_permanent(result: &AttemptResult) -> String {
    match result.http_status.and_then(reason_phrase) {
        Some(phrase) => format!("{} {phrase}", describe(result)),
        None => describe(result),
    }
}

/// Reason phrases of the 4xx codes a permanent failure is likely to carry.
fn reason_phrase(code: u16) -> Option<&'static str> {
    Some(match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        _ => return None,
    })
}

fn sanitize_jitter(jitter: f64) -> f64 {
    if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    }
}

/// Forces a jitter factor into `[1 - j, 1 + j]`; NaN becomes 1.
fn clamp_factor(factor: f64, j: f64) -> f64 {
    if factor.is_nan() {
        1.0
    } else {
        factor.clamp(1.0 - j, 1.0 + j)
    }
}

/// `d × factor`, rounded to milliseconds; saturates, never panics.
fn scale(d: Duration, factor: f64) -> Duration {
    // `as` saturates (and maps NaN to 0), so this cannot overflow.
    let ms = (d.as_secs_f64() * 1000.0 * factor).round() as u64;
    Duration::from_millis(ms)
}

fn to_time_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// `t + d`, saturating at the latest representable time.
pub fn add_saturating(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(to_time_delta(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Compact text for a configured duration: `"48h"`, `"90m"`, `"5s"`, `"250ms"`.
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{}ms", d.as_millis())
    } else if secs != 0 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs != 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const MIN: u64 = 60;
    const HOUR: u64 = 3600;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
        t + TimeDelta::from_std(d).unwrap()
    }

    fn status(state: State, round_attempts: u32) -> StatusView {
        StatusView {
            state,
            next_attempt_at: None,
            clock_started_at: t0(),
            round_attempts,
        }
    }

    fn attempt(code: Option<u16>, class: AttemptClass) -> AttemptResult {
        AttemptResult {
            started_at: t0(),
            duration: Duration::from_millis(1234),
            url: "https://example.test/hook".to_owned(),
            http_status: code,
            response_body: code.map(|c| format!("body {c}")),
            error: if code.is_none() {
                Some("connection refused".to_owned())
            } else {
                None
            },
            class,
            retry_after: None,
        }
    }

    fn http(code: u16) -> Outcome {
        Outcome::Attempted(attempt(Some(code), classify_status(code)))
    }

    fn with_retry_after(code: u16, retry_after: RetryAfter) -> Outcome {
        let mut a = attempt(Some(code), classify_status(code));
        a.retry_after = Some(retry_after);
        Outcome::Attempted(a)
    }

    #[test]
    fn verdicts_of_every_kind_of_attempt() {
        let v = |code| verdict(&attempt(code, AttemptClass::Retryable));
        assert_eq!(v(None), Verdict::NoAnswer, "transport error");
        for code in [200, 201, 204, 299] {
            assert_eq!(v(Some(code)), Verdict::Success, "{code}");
        }
        for code in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(v(Some(code)), Verdict::Failure, "{code}");
        }
        for code in [100, 301, 400, 401, 404, 410, 413, 499, 600] {
            assert_eq!(v(Some(code)), Verdict::Refused, "{code}");
        }
    }

    /// `apply` at `t0()` with the default policy and no jitter.
    fn apply_plain(status: &StatusView, outcome: &Outcome) -> Update {
        apply(
            status,
            outcome,
            t0(),
            &Policy::default(),
            &mut FixedJitter(1.0),
        )
    }

    fn delay_of(update: &Update) -> Duration {
        update
            .next_attempt_at
            .unwrap()
            .signed_duration_since(t0())
            .to_std()
            .unwrap()
    }

    // ---- State ----------------------------------------------------------

    #[test]
    fn state_round_trips_through_as_str_and_from_str() {
        for state in State::ALL {
            assert_eq!(state.as_str().parse::<State>().unwrap(), state);
            assert_eq!(state.to_string(), state.as_str());
            assert_eq!(
                state.as_str().to_lowercase().parse::<State>().unwrap(),
                state
            );
        }
        let err = "DONE".parse::<State>().unwrap_err();
        assert_eq!(err, ParseStateError("DONE".to_owned()));
        assert!(err.to_string().contains("\"DONE\""), "{err}");
        assert!(" PENDING".parse::<State>().is_err());
    }

    #[test]
    fn finished_states_are_success_and_failed_only() {
        for state in State::ALL {
            assert_eq!(state.is_finished(), !UNFINISHED.contains(&state), "{state}");
        }
        assert!(State::Success.is_finished() && State::Failed.is_finished());
    }

    #[test]
    fn attempt_record_serializes_state_as_upper_case_and_round_trips() {
        for state in State::ALL {
            let record = AttemptRecord {
                timestamp: t0(),
                state,
                http_status: Some(500),
                duration_ms: 12,
                url: "https://example.test/".to_owned(),
                response_body: Some("oops".to_owned()),
                error: None,
                svix_message_id: None,
            };
            let json = serde_json::to_value(&record).unwrap();
            assert_eq!(json["state"], state.as_str());
            let back: AttemptRecord = serde_json::from_value(json).unwrap();
            assert_eq!(back, record);
        }
    }

    // ---- Policy ---------------------------------------------------------

    #[test]
    fn default_policy_matches_the_design() {
        let p = Policy::default();
        let expected: Vec<Duration> = [
            5,
            5 * MIN,
            30 * MIN,
            2 * HOUR,
            5 * HOUR,
            10 * HOUR,
            10 * HOUR,
        ]
        .into_iter()
        .map(secs)
        .collect();
        assert_eq!(p.retry_schedule, expected);
        assert_eq!(p.max_attempts(), 8);
        assert_eq!(p.retry_after_cap(), secs(10 * HOUR));
        assert_eq!(p.pending_timeout, secs(3 * HOUR));
        assert_eq!(p.sending_timeout, secs(48 * HOUR));
        assert_eq!(p.jitter, 0.10);
    }

    #[test]
    fn empty_schedule_means_one_attempt_and_no_cap() {
        let p = Policy {
            retry_schedule: vec![],
            ..Policy::default()
        };
        assert_eq!(p.max_attempts(), 1);
        assert_eq!(p.retry_after_cap(), Duration::ZERO);
        let u = apply(
            &status(State::Pending, 0),
            &http(500),
            t0(),
            &p,
            &mut FixedJitter(1.0),
        );
        assert_eq!(u.state, State::Failed);
        assert_eq!(
            u.reason,
            "retries exhausted after 1 attempt (last: HTTP 500)"
        );
    }

    // ---- check ----------------------------------------------------------

    #[test]
    fn check_every_state_fresh() {
        let p = Policy::default();
        for state in State::ALL {
            let expected = if state.is_finished() {
                Check::Finished
            } else {
                Check::Due
            };
            assert_eq!(
                check(&status(state, 0), t0(), t0(), &p),
                expected,
                "{state}"
            );
        }
    }

    #[test]
    fn finished_statuses_are_finished_even_long_after_the_timeouts() {
        let p = Policy::default();
        let late = after(t0(), secs(1000 * HOUR));
        for state in [State::Success, State::Failed] {
            assert_eq!(check(&status(state, 3), late, late, &p), Check::Finished);
        }
    }

    #[test]
    fn pending_timeout_is_reached_exactly_at_the_timeout() {
        let p = Policy::default();
        for state in [State::Pending, State::Resending] {
            let s = status(state, 0);
            let at = after(t0(), secs(3 * HOUR));
            let just_before = after(t0(), secs(3 * HOUR - 1));
            assert_eq!(
                check(&s, just_before, just_before, &p),
                Check::Due,
                "{state}"
            );
            assert_eq!(
                check(&s, at, at, &p),
                Check::Expired(Update {
                    state: State::Failed,
                    reason: "pending timeout: not delivered within 3h".to_owned(),
                    next_attempt_at: None,
                    round_attempts: 0,
                    attempt: None,
                }),
                "{state}"
            );
        }
    }

    #[test]
    fn sending_timeout_is_reached_exactly_at_the_timeout() {
        let p = Policy::default();
        let s = StatusView {
            round_attempts: 5,
            ..status(State::Sending, 5)
        };
        // Past the pending timeout but not the sending one: still due.
        let mid = after(t0(), secs(4 * HOUR));
        assert_eq!(check(&s, mid, mid, &p), Check::Due);
        let just_before = after(t0(), secs(48 * HOUR - 1));
        assert_eq!(check(&s, just_before, just_before, &p), Check::Due);
        let at = after(t0(), secs(48 * HOUR));
        assert_eq!(
            check(&s, at, at, &p),
            Check::Expired(Update {
                state: State::Failed,
                reason: "sending timeout: not delivered within 48h".to_owned(),
                next_attempt_at: None,
                round_attempts: 5,
                attempt: None,
            })
        );
    }

    #[test]
    fn timeouts_count_from_the_last_resend_not_from_creation() {
        // Regression guard for the upstream bug: a resent old event must not
        // fail at once. The clock restarted 30 days after creation.
        let p = Policy::default();
        let resent_at = after(t0(), secs(30 * 24 * HOUR));
        let now = after(resent_at, secs(HOUR));
        for state in UNFINISHED {
            let s = StatusView {
                state,
                next_attempt_at: None,
                clock_started_at: resent_at,
                round_attempts: 0,
            };
            assert_eq!(check(&s, now, now, &p), Check::Due, "{state}");
        }
    }

    #[test]
    fn not_due_when_next_attempt_is_after_the_cutoff() {
        let p = Policy::default();
        let now = after(t0(), secs(10));
        let cutoff = now;
        let mut s = status(State::Sending, 1);
        s.next_attempt_at = Some(after(cutoff, secs(1)));
        assert_eq!(check(&s, now, cutoff, &p), Check::NotDue);
        s.next_attempt_at = Some(cutoff);
        assert_eq!(check(&s, now, cutoff, &p), Check::Due);
        s.next_attempt_at = Some(t0());
        assert_eq!(check(&s, now, cutoff, &p), Check::Due);
    }

    #[test]
    fn expiry_wins_over_not_due() {
        let p = Policy::default();
        let now = after(t0(), secs(48 * HOUR));
        let mut s = status(State::Sending, 3);
        s.next_attempt_at = Some(after(now, secs(HOUR)));
        assert!(matches!(check(&s, now, now, &p), Check::Expired(_)));
    }

    #[test]
    fn a_clock_in_the_future_is_not_expired() {
        let p = Policy::default();
        let mut s = status(State::Pending, 0);
        s.clock_started_at = after(t0(), secs(HOUR));
        assert_eq!(check(&s, t0(), t0(), &p), Check::Due);
    }

    // ---- apply: every state × every outcome kind --------------------------

    #[test]
    fn apply_every_state_and_outcome_kind() {
        let outcomes: [(&str, Outcome); 9] = [
            ("success", http(200)),
            ("retryable", http(500)),
            (
                "transport error",
                Outcome::Attempted(attempt(None, AttemptClass::Retryable)),
            ),
            ("permanent", http(410)),
            ("disabled", Outcome::ChannelDisabled),
            ("deleted", Outcome::ChannelDeleted),
            ("unassigned", Outcome::ChannelUnassigned),
            (
                "invalid",
                Outcome::InvalidChannel("bad signing secret".to_owned()),
            ),
            (
                "invalid event",
                Outcome::InvalidEvent("event payload is not a JSON object".to_owned()),
            ),
        ];
        for state in State::ALL {
            for (name, outcome) in &outcomes {
                let s = status(state, 1);
                let u = apply_plain(&s, outcome);
                // (state, reason, next attempt delay, round attempts, attempt made)
                let expected: (State, &str, Option<Duration>, u32, bool) = if state.is_finished() {
                    (state, "already finished", None, 1, false)
                } else {
                    match *name {
                        "success" => (State::Success, "delivered (HTTP 200)", None, 2, true),
                        "retryable" => (
                            State::Sending,
                            "retry 2 of 7 scheduled after HTTP 500",
                            Some(secs(5 * MIN)),
                            2,
                            true,
                        ),
                        "transport error" => (
                            State::Sending,
                            "retry 2 of 7 scheduled after connection refused",
                            Some(secs(5 * MIN)),
                            2,
                            true,
                        ),
                        "permanent" => (
                            State::Failed,
                            "permanent failure: HTTP 410 Gone",
                            None,
                            2,
                            true,
                        ),
                        "disabled" => (State::Failed, "channel disabled", None, 1, false),
                        "deleted" => (State::Failed, "channel deleted", None, 1, false),
                        "unassigned" => (
                            State::Failed,
                            "channel no longer assigned to the event's rule",
                            None,
                            1,
                            false,
                        ),
                        "invalid" => (
                            State::Failed,
                            "invalid channel configuration: bad signing secret",
                            None,
                            1,
                            false,
                        ),
                        "invalid event" => (
                            State::Failed,
                            "invalid event: event payload is not a JSON object",
                            None,
                            1,
                            false,
                        ),
                        other => unreachable!("{other}"),
                    }
                };
                let ctx = format!("{state} × {name}");
                assert_eq!(u.state, expected.0, "{ctx}");
                assert_eq!(u.reason, expected.1, "{ctx}");
                assert_eq!(
                    u.next_attempt_at,
                    expected.2.map(|d| after(t0(), d)),
                    "{ctx}"
                );
                assert_eq!(u.round_attempts, expected.3, "{ctx}");
                assert_eq!(u.attempt.is_some(), expected.4, "{ctx}");
                if let Some(record) = &u.attempt {
                    assert_eq!(record.state, u.state, "{ctx}");
                }
                assert_eq!(u.next_attempt_at.is_some(), !u.state.is_finished(), "{ctx}");
            }
        }
    }

    #[test]
    fn attempt_record_copies_the_attempt() {
        let mut a = attempt(Some(503), AttemptClass::Retryable);
        a.started_at = after(t0(), secs(7));
        let u = apply_plain(&status(State::Pending, 0), &Outcome::Attempted(a));
        assert_eq!(
            u.attempt,
            Some(AttemptRecord {
                timestamp: after(t0(), secs(7)),
                state: State::Sending,
                http_status: Some(503),
                duration_ms: 1234,
                url: "https://example.test/hook".to_owned(),
                response_body: Some("body 503".to_owned()),
                error: None,
                svix_message_id: None,
            })
        );
    }

    #[test]
    fn each_failed_attempt_follows_the_schedule() {
        let p = Policy::default();
        for (i, step) in p.retry_schedule.iter().enumerate() {
            let round = u32::try_from(i).unwrap();
            let u = apply_plain(&status(State::Sending, round), &http(500));
            assert_eq!(u.state, State::Sending, "attempt {}", round + 1);
            assert_eq!(delay_of(&u), *step, "attempt {}", round + 1);
            assert_eq!(u.round_attempts, round + 1);
        }
    }

    #[test]
    fn attempt_seven_schedules_the_last_step_and_attempt_eight_exhausts() {
        let u = apply_plain(&status(State::Sending, 6), &http(500));
        assert_eq!(u.state, State::Sending);
        assert_eq!(u.reason, "retry 7 of 7 scheduled after HTTP 500");
        assert_eq!(delay_of(&u), secs(10 * HOUR));

        let u = apply_plain(&status(State::Sending, 7), &http(500));
        assert_eq!(u.state, State::Failed);
        assert_eq!(
            u.reason,
            "retries exhausted after 8 attempts (last: HTTP 500)"
        );
        assert_eq!(u.next_attempt_at, None);
        assert_eq!(u.round_attempts, 8);
        assert_eq!(u.attempt.unwrap().state, State::Failed);

        let transport = Outcome::Attempted(attempt(None, AttemptClass::Retryable));
        let u = apply_plain(&status(State::Sending, 7), &transport);
        assert_eq!(
            u.reason,
            "retries exhausted after 8 attempts (last: connection refused)"
        );
    }

    #[test]
    fn success_on_the_last_attempt_still_succeeds() {
        let u = apply_plain(&status(State::Sending, 7), &http(204));
        assert_eq!(u.state, State::Success);
        assert_eq!(u.reason, "delivered (HTTP 204)");
    }

    #[test]
    fn permanent_failure_without_a_response_names_the_error() {
        let mut a = attempt(None, AttemptClass::Permanent);
        a.error = Some("invalid URL: relative URL without a base".to_owned());
        let u = apply_plain(&status(State::Pending, 0), &Outcome::Attempted(a));
        assert_eq!(u.state, State::Failed);
        assert_eq!(
            u.reason,
            "permanent failure: invalid URL: relative URL without a base"
        );
    }

    // ---- Retry-After ------------------------------------------------------

    #[test]
    fn retry_after_seconds_is_honoured_for_429() {
        let u = apply_plain(
            &status(State::Pending, 0),
            &with_retry_after(429, RetryAfter::Delay(secs(120))),
        );
        assert_eq!(delay_of(&u), secs(120));
    }

    #[test]
    fn retry_after_http_date_is_honoured_for_503() {
        let date = httpdate::fmt_http_date(after(t0(), secs(600)).into());
        let retry_after = parse_retry_after(&date).unwrap();
        let u = apply_plain(
            &status(State::Pending, 0),
            &with_retry_after(503, retry_after),
        );
        assert_eq!(delay_of(&u), secs(600));
    }

    #[test]
    fn retry_after_date_in_the_past_leaves_the_schedule() {
        let u = apply_plain(
            &status(State::Pending, 0),
            &with_retry_after(503, RetryAfter::At(t0() - TimeDelta::hours(1))),
        );
        assert_eq!(delay_of(&u), secs(5));
    }

    #[test]
    fn retry_after_larger_than_the_cap_is_capped_at_the_longest_step() {
        let u = apply_plain(
            &status(State::Pending, 0),
            &with_retry_after(429, RetryAfter::Delay(secs(48 * HOUR))),
        );
        assert_eq!(delay_of(&u), secs(10 * HOUR));
    }

    #[test]
    fn retry_after_is_ignored_for_other_statuses() {
        for code in [500, 502, 408, 404] {
            let u = apply_plain(
                &status(State::Pending, 0),
                &with_retry_after(code, RetryAfter::Delay(secs(HOUR))),
            );
            assert_eq!(delay_of(&u), secs(5), "HTTP {code}");
        }
    }

    #[test]
    fn schedule_wins_over_a_shorter_retry_after() {
        // Attempt 3 fails: the schedule says 30m, the receiver asks for 60s.
        let u = apply_plain(
            &status(State::Sending, 2),
            &with_retry_after(429, RetryAfter::Delay(secs(60))),
        );
        assert_eq!(delay_of(&u), secs(30 * MIN));
    }

    // ---- jitter -----------------------------------------------------------

    #[test]
    fn fixed_jitter_bounds() {
        let p = Policy::default();
        let s = status(State::Pending, 0);
        for (factor, expected_ms) in [
            (0.9, 4500),
            (1.1, 5500),
            (0.5, 4500),
            (3.0, 5500),
            (f64::NAN, 5000),
        ] {
            let u = apply(&s, &http(500), t0(), &p, &mut FixedJitter(factor));
            assert_eq!(
                delay_of(&u),
                Duration::from_millis(expected_ms),
                "factor {factor}"
            );
        }
        assert_eq!(FixedJitter(0.5).factor(0.1), 0.9);
        assert_eq!(FixedJitter(1.05).factor(0.1), 1.05);
    }

    #[test]
    fn jitter_applies_to_the_schedule_before_retry_after() {
        // 5m × 1.1 = 5m30s beats a Retry-After of 5m.
        let s = status(State::Sending, 1);
        let outcome = with_retry_after(429, RetryAfter::Delay(secs(5 * MIN)));
        let u = apply(
            &s,
            &outcome,
            t0(),
            &Policy::default(),
            &mut FixedJitter(1.1),
        );
        assert_eq!(delay_of(&u), secs(5 * MIN + 30));
    }

    #[test]
    fn random_jitter_stays_within_ten_percent() {
        let mut jitter = RandomJitter;
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for _ in 0..10_000 {
            let f = jitter.factor(0.10);
            assert!((0.9..=1.1).contains(&f), "{f}");
            lo = lo.min(f);
            hi = hi.max(f);
        }
        // The draws spread over the range rather than sticking to 1.
        assert!(lo < 0.95 && hi > 1.05, "{lo}..{hi}");

        let p = Policy::default();
        let s = status(State::Sending, 3); // 2h step
        for _ in 0..1_000 {
            let d = delay_of(&apply(&s, &http(500), t0(), &p, &mut RandomJitter));
            assert!(
                d >= secs(2 * HOUR * 9 / 10) && d <= secs(2 * HOUR * 11 / 10),
                "{d:?}"
            );
        }
    }

    #[test]
    fn out_of_range_jitter_fractions_are_sanitized() {
        for j in [f64::NAN, -1.0, 5.0, f64::INFINITY] {
            for _ in 0..100 {
                let f = RandomJitter.factor(j);
                assert!((0.0..=2.0).contains(&f), "jitter {j} gave {f}");
            }
        }
        assert_eq!(RandomJitter.factor(0.0), 1.0);
    }

    // ---- never panics -------------------------------------------------------

    #[test]
    fn extreme_inputs_saturate_instead_of_panicking() {
        let p = Policy {
            retry_schedule: vec![Duration::MAX, Duration::MAX],
            pending_timeout: Duration::MAX,
            sending_timeout: Duration::MAX,
            jitter: f64::NAN,
        };
        let far_past = DateTime::<Utc>::MIN_UTC;
        let far_future = DateTime::<Utc>::MAX_UTC;
        for state in State::ALL {
            let s = StatusView {
                state,
                next_attempt_at: Some(far_future),
                clock_started_at: far_past,
                round_attempts: 0,
            };
            let _ = check(&s, far_future, far_past, &p);
            let _ = check(&s, far_past, far_future, &Policy::default());
            let u = apply(
                &s,
                &http(503),
                far_future,
                &p,
                &mut FixedJitter(f64::INFINITY),
            );
            if !state.is_finished() {
                assert_eq!(u.next_attempt_at, Some(far_future), "{state}");
            }
            let huge = StatusView {
                round_attempts: u32::MAX,
                ..s
            };
            let outcome = with_retry_after(429, RetryAfter::At(far_future));
            let _ = apply(&huge, &outcome, far_past, &p, &mut RandomJitter);
            let _ = apply(
                &huge,
                &outcome,
                far_past,
                &Policy::default(),
                &mut RandomJitter,
            );
        }
        let mut a = attempt(Some(500), AttemptClass::Retryable);
        a.duration = Duration::MAX;
        let u = apply_plain(&status(State::Pending, 0), &Outcome::Attempted(a));
        assert_eq!(u.attempt.unwrap().duration_ms, u64::MAX);
    }

    #[test]
    fn nul_characters_in_a_response_or_an_error_are_stored_as_replacement_characters() {
        let mut a = attempt(Some(500), AttemptClass::Retryable);
        a.response_body = Some("bad\0body".into());
        a.error = Some("odd\0error".into());
        let u = apply_plain(&status(State::Pending, 0), &Outcome::Attempted(a));
        let recorded = u.attempt.unwrap();
        assert_eq!(recorded.response_body.as_deref(), Some("bad\u{FFFD}body"));
        assert_eq!(recorded.error.as_deref(), Some("odd\u{FFFD}error"));
    }

    #[test]
    fn nul_characters_in_a_reason_are_stored_as_replacement_characters() {
        let mut a = attempt(None, AttemptClass::Retryable);
        a.error = Some("connection\0reset".into());
        let u = apply_plain(&status(State::Pending, 0), &Outcome::Attempted(a));
        assert!(u.reason.contains("connection\u{FFFD}reset"), "{}", u.reason);
        let u = apply_plain(
            &status(State::Pending, 0),
            &Outcome::InvalidChannel("bad\0url".into()),
        );
        assert!(!u.reason.contains('\0'), "{:?}", u.reason);
        assert!(u.reason.contains("bad\u{FFFD}url"), "{}", u.reason);
    }

    // ---- classify_status and parse_retry_after ----------------------------

    #[test]
    fn classify_status_table() {
        use AttemptClass::*;
        let table = [
            (100, Retryable),
            (200, Success),
            (204, Success),
            (299, Success),
            (301, Retryable),
            (304, Retryable),
            (400, Retryable),
            (401, Retryable),
            (404, Retryable),
            (408, Retryable),
            (410, Permanent),
            (429, Retryable),
            (500, Retryable),
            (503, Retryable),
            (599, Retryable),
            (0, Retryable),
            (999, Retryable),
        ];
        for (code, class) in table {
            assert_eq!(classify_status(code), class, "HTTP {code}");
        }
    }

    #[test]
    fn parse_retry_after_table() {
        let table: [(&str, Option<RetryAfter>); 10] = [
            ("0", Some(RetryAfter::Delay(secs(0)))),
            ("120", Some(RetryAfter::Delay(secs(120)))),
            (" 5 ", Some(RetryAfter::Delay(secs(5)))),
            (
                "99999999999999999999999",
                Some(RetryAfter::Delay(secs(u64::MAX))),
            ),
            ("-1", None),
            ("+5", None),
            ("1.5", None),
            ("abc", None),
            ("", None),
            (
                "Wed, 21 Oct 2015 07:28:00 GMT",
                Some(RetryAfter::At(
                    Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap(),
                )),
            ),
        ];
        for (input, expected) in table {
            assert_eq!(parse_retry_after(input), expected, "{input:?}");
        }
    }

    #[test]
    fn format_duration_is_compact() {
        assert_eq!(format_duration(secs(3 * HOUR)), "3h");
        assert_eq!(format_duration(secs(48 * HOUR)), "48h");
        assert_eq!(format_duration(secs(90 * MIN)), "90m");
        assert_eq!(format_duration(secs(61)), "61s");
        assert_eq!(format_duration(secs(0)), "0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
