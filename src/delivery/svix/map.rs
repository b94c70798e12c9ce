//! From what Svix reports to our delivery states: a pure function
//! ([`map`]), no I/O, unit-tested exhaustively below.
//!
//! How the stored row encodes a delivery handed to Svix (no extra column):
//!
//! - `PENDING` / `RESENDING`: not handed over in this round yet;
//!   `round_attempts` counts the hand-overs Svix did not take (unreachable,
//!   5xx), which follow our retry schedule; the pending timeout applies.
//! - `SENDING`: handed over (Svix holds the message whose `eventId` is the
//!   round's idempotency key); `round_attempts` counts the Svix attempts
//!   already copied into the record, so each is copied once; the sending
//!   timeout applies. `next_attempt_at` is when to poll Svix next.
//! - `SUCCESS` / `FAILED`: Svix reported the endpoint's outcome (or our
//!   retries of the hand-over ran out, or a timeout struck).
//!
//! One poll copies at most one new Svix attempt (the record takes one
//! attempt per write); with more waiting, the next poll is due at once.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::format_duration;
use crate::state::{
    add_saturating, storable, AttemptRecord, Jitter, Policy, State, StatusView, Update,
};

/// Svix's `MessageStatus` of one message to one endpoint (0 = success,
/// 1 = pending, 2 = fail, 3 = sending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvixStatus {
    /// Delivered.
    Success,
    /// Waiting for its next attempt.
    Pending,
    /// Failed after Svix's retries (or the endpoint was disabled).
    Fail,
    /// An attempt is under way.
    Sending,
}

impl SvixStatus {
    /// From Svix's integer; `None` for an unknown value.
    pub fn from_code(code: i64) -> Option<SvixStatus> {
        Some(match code {
            0 => SvixStatus::Success,
            1 => SvixStatus::Pending,
            2 => SvixStatus::Fail,
            3 => SvixStatus::Sending,
            _ => return None,
        })
    }
}

/// One attempt Svix made, as its API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvixAttempt {
    /// When Svix made it.
    pub timestamp: DateTime<Utc>,
    /// The endpoint's answer (0 when none arrived).
    pub http_status: u16,
    /// The response body Svix kept.
    pub response: String,
    /// How long it took.
    pub duration_ms: u64,
    /// The URL Svix posted to.
    pub url: String,
    /// The attempt's own status.
    pub status: SvixStatus,
}

/// What one visit to Svix found for a due delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The hand-over failed: Svix did not take the message (unreachable,
    /// timeout, 5xx, 429). Retried on our schedule.
    HandOverFailed {
        /// When it was tried.
        started_at: DateTime<Utc>,
        /// What went wrong, one line.
        error: String,
        /// Svix's answer, when one came.
        http_status: Option<u16>,
    },
    /// Svix refused the message for good (a 4xx other than 408/409/429:
    /// the request itself is wrong). The delivery fails.
    HandOverRefused {
        /// What Svix said, one line.
        error: String,
    },
    /// The message is in Svix; the poll that followed failed. Polled again
    /// later (with backoff); nothing recorded.
    PollFailed {
        /// What went wrong, one line.
        error: String,
    },
    /// The message is in Svix and this is what it reports for the
    /// delivery's endpoint.
    Reported {
        /// Svix's message id.
        message_id: String,
        /// This step created the message (so no attempt of it has been
        /// copied yet, whatever the row's count says).
        fresh: bool,
        /// The endpoint's status for the message; `None` while Svix has
        /// not dispatched it yet.
        status: Option<SvixStatus>,
        /// When Svix tries next, when it says.
        next_attempt: Option<DateTime<Utc>>,
        /// Svix's attempts to the endpoint, oldest first.
        attempts: Vec<SvixAttempt>,
    },
}

/// The first poll after a hand-over comes this long after it (Svix
/// dispatches a message within milliseconds; a poll before that costs one
/// call and waits for the next). Exactly this long, so that the row tells
/// when the hand-over was (`svix::batch` finds the message by it).
pub const FIRST_POLL: Duration = Duration::from_millis(250);

/// The shortest wait before polling Svix again.
pub const MIN_POLL: Duration = Duration::from_secs(1);
/// The longest wait between two polls of a message Svix keeps trying.
pub const MAX_POLL: Duration = Duration::from_secs(3600);
/// The longest wait between two polls while Svix has no date to give
/// (not dispatched yet, sending, or not answering).
pub const MAX_IDLE_POLL: Duration = Duration::from_secs(60);

/// When to poll next without a date from Svix: an eighth of the time since
/// the round began, at least [`MIN_POLL`], at most [`MAX_IDLE_POLL`] (a
/// fresh message is polled every second, an old one every minute).
pub fn idle_poll(view: &StatusView, now: DateTime<Utc>) -> Duration {
    let age = now
        .signed_duration_since(view.clock_started_at)
        .to_std()
        .unwrap_or(Duration::ZERO);
    (age / 8).clamp(MIN_POLL, MAX_IDLE_POLL)
}

/// Decides the update for a due delivery from what Svix reported. Callers
/// call it only after `state::check` said `Due` (timeouts come first there).
/// Total: a finished status keeps its state ("already finished").
pub fn map(
    view: &StatusView,
    observed: &Observed,
    now: DateTime<Utc>,
    policy: &Policy,
    jitter: &mut dyn Jitter,
) -> Update {
    if view.state.is_finished() {
        return Update {
            state: view.state,
            reason: "already finished".to_owned(),
            next_attempt_at: None,
            round_attempts: view.round_attempts,
            attempt: None,
        };
    }
    let handed_over = view.state == State::Sending;
    match observed {
        Observed::HandOverFailed {
            started_at,
            error,
            http_status,
        } => {
            let n = view.round_attempts.saturating_add(1);
            let attempt = AttemptRecord {
                timestamp: *started_at,
                state: view.state,
                http_status: None,
                duration_ms: 0,
                url: String::new(),
                response_body: None,
                error: Some(storable(&format!(
                    "not handed to Svix: {error}{}",
                    http_status
                        .map(|c| format!(" (HTTP {c})"))
                        .unwrap_or_default()
                ))),
                svix_message_id: None,
            };
            if n >= policy.max_attempts() {
                return Update {
                    state: State::Failed,
                    reason: storable(&format!(
                        "Svix did not take the message after {n} hand-over attempts (last: {error})"
                    )),
                    next_attempt_at: None,
                    round_attempts: n,
                    attempt: Some(AttemptRecord {
                        state: State::Failed,
                        ..attempt
                    }),
                };
            }
            let index = usize::try_from(n - 1).unwrap_or(usize::MAX);
            let step = policy
                .retry_schedule
                .get(index)
                .or(policy.retry_schedule.last())
                .copied()
                .unwrap_or(MIN_POLL);
            let j = policy.jitter.clamp(0.0, 1.0);
            let j = if j.is_nan() { 0.0 } else { j };
            let factor = jitter.factor(j).clamp(1.0 - j, 1.0 + j);
            let delay = Duration::from_millis((step.as_secs_f64() * 1000.0 * factor) as u64);
            // Not handed over: the state stays (PENDING/RESENDING, or
            // SENDING when a message vanished from Svix), with the retry.
            Update {
                state: view.state,
                reason: storable(&format!(
                    "hand-over {n} of {} to Svix failed ({error}); retry scheduled",
                    policy.max_attempts()
                )),
                next_attempt_at: Some(add_saturating(now, delay)),
                round_attempts: if handed_over { view.round_attempts } else { n },
                attempt: Some(attempt),
            }
        }
        Observed::HandOverRefused { error } => Update {
            state: State::Failed,
            reason: storable(&format!("Svix refused the message: {error}")),
            next_attempt_at: None,
            round_attempts: view.round_attempts,
            attempt: None,
        },
        Observed::PollFailed { error } => Update {
            state: State::Sending,
            reason: storable(&format!(
                "handed to Svix; polling it failed ({error}); polled again later"
            )),
            next_attempt_at: Some(add_saturating(now, idle_poll(view, now))),
            round_attempts: if handed_over { view.round_attempts } else { 0 },
            attempt: None,
        },
        Observed::Reported {
            message_id,
            fresh,
            status,
            next_attempt,
            attempts,
        } => {
            let copied = if *fresh || !handed_over {
                0
            } else {
                view.round_attempts
            };
            let copied_n = usize::try_from(copied).unwrap_or(usize::MAX);
            let waiting = attempts.len().saturating_sub(copied_n);
            let last = attempts.last();
            // What the endpoint's status comes to, once every attempt is
            // copied. Svix reports its newest attempt's status: a failed
            // attempt with a next attempt scheduled is still trying.
            let settled = match status {
                Some(SvixStatus::Success) => Some(State::Success),
                Some(SvixStatus::Fail) if next_attempt.is_none() => Some(State::Failed),
                Some(SvixStatus::Fail | SvixStatus::Pending | SvixStatus::Sending) => None,
                // Not listed: trust the newest attempt only for a success.
                None => last
                    .filter(|a| a.status == SvixStatus::Success)
                    .map(|_| State::Success),
            };
            let poll_at = || {
                let idle = add_saturating(now, idle_poll(view, now));
                match (status, next_attempt) {
                    (Some(SvixStatus::Pending | SvixStatus::Fail), Some(at)) => {
                        let at = add_saturating(*at, MIN_POLL);
                        at.clamp(add_saturating(now, MIN_POLL), add_saturating(now, MAX_POLL))
                    }
                    _ => idle,
                }
            };
            let describe = |a: &SvixAttempt| match a.http_status {
                0 => "no answer".to_owned(),
                code => format!("HTTP {code}"),
            };
            let outcome = |state: State, copied_now: u32, last: Option<&SvixAttempt>| {
                let n = copied_now;
                let what = last.map(describe).unwrap_or_else(|| "no attempt".into());
                match state {
                    State::Success => format!("delivered by Svix ({what}, message {message_id})"),
                    State::Failed => format!(
                        "Svix gave up after {n} attempt{} (last: {what}, message {message_id})",
                        if n == 1 { "" } else { "s" }
                    ),
                    _ if n == 0 => format!(
                        "handed to Svix (message {message_id}); waiting for its first attempt"
                    ),
                    _ => format!(
                        "handed to Svix (message {message_id}); Svix retries after attempt {n} ({what})"
                    ),
                }
            };
            if waiting == 0 {
                let state = settled.unwrap_or(State::Sending);
                // Just handed over: the first poll comes exactly
                // FIRST_POLL later, so that it tells when the hand-over was
                // (the batch read of polls finds the message by it:
                // `svix::batch`).
                let first_poll = *fresh && attempts.is_empty() && status.is_none();
                return Update {
                    state,
                    reason: storable(&outcome(state, copied, last)),
                    next_attempt_at: (state == State::Sending).then(|| {
                        if first_poll {
                            add_saturating(now, FIRST_POLL)
                        } else {
                            poll_at()
                        }
                    }),
                    round_attempts: copied,
                    attempt: None,
                };
            }
            let attempt = &attempts[copied_n];
            let n = copied.saturating_add(1);
            let (state, next) = if waiting == 1 {
                let state = settled.unwrap_or(State::Sending);
                (state, (state == State::Sending).then(poll_at))
            } else {
                // More to copy: the next poll is due at once.
                (State::Sending, Some(now))
            };
            Update {
                state,
                reason: storable(&outcome(state, n, Some(attempt))),
                next_attempt_at: next,
                round_attempts: n,
                attempt: Some(AttemptRecord {
                    timestamp: attempt.timestamp,
                    state,
                    http_status: (attempt.http_status != 0).then_some(attempt.http_status),
                    duration_ms: attempt.duration_ms,
                    url: attempt.url.clone(),
                    response_body: (!attempt.response.is_empty())
                        .then(|| storable(&attempt.response)),
                    error: (attempt.http_status == 0).then(|| {
                        "Svix got no answer from the endpoint (see the response)".to_owned()
                    }),
                    svix_message_id: Some(message_id.clone()),
                }),
            }
        }
    }
}

/// Text for a configured poll bound, for the docs and logs.
pub fn describe_poll_bounds() -> String {
    format!(
        "every {} to {} while Svix has no date, at Svix's next attempt (at most {}) otherwise",
        format_duration(MIN_POLL),
        format_duration(MAX_IDLE_POLL),
        format_duration(MAX_POLL)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::FixedJitter;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }
    fn at(s: i64) -> DateTime<Utc> {
        t0() + chrono::TimeDelta::seconds(s)
    }
    fn view(state: State, round: u32) -> StatusView {
        StatusView {
            state,
            next_attempt_at: None,
            clock_started_at: t0(),
            round_attempts: round,
        }
    }
    fn policy() -> Policy {
        Policy {
            retry_schedule: vec![Duration::from_secs(5), Duration::from_secs(60)],
            jitter: 0.0,
            ..Policy::default()
        }
    }
    fn attempt(code: u16, status: SvixStatus) -> SvixAttempt {
        SvixAttempt {
            timestamp: at(1),
            http_status: code,
            response: format!("body {code}"),
            duration_ms: 7,
            url: "http://127.0.0.1:9/".into(),
            status,
        }
    }
    fn reported(fresh: bool, status: Option<SvixStatus>, attempts: Vec<SvixAttempt>) -> Observed {
        Observed::Reported {
            message_id: "msg_1".into(),
            fresh,
            status,
            next_attempt: None,
            attempts,
        }
    }
    fn run(v: &StatusView, o: &Observed) -> Update {
        map(v, o, at(10), &policy(), &mut FixedJitter(1.0))
    }

    const ALL_STATUSES: [Option<SvixStatus>; 5] = [
        None,
        Some(SvixStatus::Success),
        Some(SvixStatus::Pending),
        Some(SvixStatus::Fail),
        Some(SvixStatus::Sending),
    ];

    #[test]
    fn svix_status_codes_round_trip_and_unknown_codes_are_none() {
        assert_eq!(SvixStatus::from_code(0), Some(SvixStatus::Success));
        assert_eq!(SvixStatus::from_code(1), Some(SvixStatus::Pending));
        assert_eq!(SvixStatus::from_code(2), Some(SvixStatus::Fail));
        assert_eq!(SvixStatus::from_code(3), Some(SvixStatus::Sending));
        assert_eq!(SvixStatus::from_code(4), None);
        assert_eq!(SvixStatus::from_code(-1), None);
    }

    #[test]
    fn finished_statuses_stay_whatever_svix_says() {
        for state in [State::Success, State::Failed] {
            for status in ALL_STATUSES {
                let u = run(&view(state, 2), &reported(false, status, vec![]));
                assert_eq!(u.state, state);
                assert_eq!(u.attempt, None);
                assert_eq!(u.round_attempts, 2);
            }
        }
    }

    /// Every unfinished state × every endpoint status, with no attempt to
    /// copy: success → SUCCESS, fail → FAILED, otherwise SENDING with a poll.
    #[test]
    fn without_new_attempts_the_endpoint_status_decides() {
        for state in [State::Pending, State::Resending, State::Sending] {
            for status in ALL_STATUSES {
                let u = run(&view(state, 0), &reported(true, status, vec![]));
                let expected = match status {
                    Some(SvixStatus::Success) => State::Success,
                    Some(SvixStatus::Fail) => State::Failed,
                    _ => State::Sending,
                };
                assert_eq!(u.state, expected, "{state} {status:?}");
                assert_eq!(u.attempt, None);
                assert_eq!(u.round_attempts, 0);
                assert_eq!(u.next_attempt_at.is_some(), expected == State::Sending);
                if expected == State::Sending && status.is_none() {
                    // Just handed over: the first poll, exactly FIRST_POLL on.
                    assert_eq!(u.next_attempt_at, Some(add_saturating(at(10), FIRST_POLL)));
                } else if expected == State::Sending {
                    assert!(u.next_attempt_at.unwrap() >= at(10) + chrono::TimeDelta::seconds(1));
                }
            }
        }
    }

    #[test]
    fn a_poll_that_finds_no_attempt_yet_waits_at_least_min_poll() {
        let u = run(&view(State::Sending, 0), &reported(false, None, vec![]));
        assert_eq!(u.state, State::Sending);
        assert!(u.next_attempt_at.unwrap() >= at(10) + chrono::TimeDelta::seconds(1));
    }

    #[test]
    fn one_new_attempt_is_copied_with_the_final_state() {
        let cases = [
            (
                Some(SvixStatus::Success),
                SvixStatus::Success,
                State::Success,
            ),
            (Some(SvixStatus::Fail), SvixStatus::Fail, State::Failed),
            (Some(SvixStatus::Pending), SvixStatus::Fail, State::Sending),
            (Some(SvixStatus::Sending), SvixStatus::Fail, State::Sending),
            (None, SvixStatus::Success, State::Success),
            (None, SvixStatus::Fail, State::Sending),
        ];
        for (status, attempt_status, expected) in cases {
            let code = if attempt_status == SvixStatus::Success {
                200
            } else {
                500
            };
            let u = run(
                &view(State::Pending, 0),
                &reported(true, status, vec![attempt(code, attempt_status)]),
            );
            assert_eq!(u.state, expected, "{status:?}");
            assert_eq!(u.round_attempts, 1);
            let a = u.attempt.expect("copied");
            assert_eq!(a.http_status, Some(code));
            assert_eq!(a.response_body.as_deref(), Some(&*format!("body {code}")));
            assert_eq!(a.duration_ms, 7);
            assert_eq!(a.svix_message_id.as_deref(), Some("msg_1"));
            assert_eq!(a.state, expected);
            assert_eq!(u.next_attempt_at.is_some(), expected == State::Sending);
        }
    }

    #[test]
    fn attempts_are_copied_one_per_poll_each_once_then_the_outcome() {
        let attempts = vec![
            attempt(500, SvixStatus::Fail),
            attempt(200, SvixStatus::Success),
        ];
        let o = reported(false, Some(SvixStatus::Success), attempts);
        // First poll after the hand-over: the 500 is copied, the next poll is now.
        let u = run(&view(State::Sending, 0), &o);
        assert_eq!((u.state, u.round_attempts), (State::Sending, 1));
        assert_eq!(u.attempt.as_ref().unwrap().http_status, Some(500));
        assert_eq!(u.next_attempt_at, Some(at(10)));
        // Second: the 200, and SUCCESS.
        let u = run(&view(State::Sending, 1), &o);
        assert_eq!((u.state, u.round_attempts), (State::Success, 2));
        assert_eq!(u.attempt.as_ref().unwrap().http_status, Some(200));
        // Once more (a repeated poll): nothing copied twice.
        let u = run(&view(State::Sending, 2), &o);
        assert_eq!((u.state, u.round_attempts), (State::Success, 2));
        assert_eq!(u.attempt, None);
    }

    #[test]
    fn a_fresh_message_copies_from_the_start_whatever_the_row_counted() {
        // A message recreated (provider switched, message gone): the row's
        // count is of another message.
        let o = reported(
            true,
            Some(SvixStatus::Pending),
            vec![attempt(500, SvixStatus::Fail)],
        );
        let u = run(&view(State::Sending, 3), &o);
        assert_eq!(u.round_attempts, 1);
        assert!(u.attempt.is_some());
        // Before the hand-over, the row counted failed hand-overs, not
        // Svix attempts.
        let u = run(
            &view(State::Pending, 3),
            &reported(
                false,
                Some(SvixStatus::Pending),
                vec![attempt(500, SvixStatus::Fail)],
            ),
        );
        assert_eq!(u.round_attempts, 1);
    }

    /// Svix reports its newest attempt's status: `fail` with a next
    /// attempt is a retry to wait for, `fail` without one is the end.
    #[test]
    fn a_failed_attempt_with_a_next_attempt_is_still_trying() {
        let retrying = Observed::Reported {
            message_id: "msg_1".into(),
            fresh: false,
            status: Some(SvixStatus::Fail),
            next_attempt: Some(at(12)),
            attempts: vec![attempt(500, SvixStatus::Fail)],
        };
        let u = run(&view(State::Sending, 0), &retrying);
        assert_eq!((u.state, u.round_attempts), (State::Sending, 1));
        assert_eq!(u.next_attempt_at, Some(at(13)));
        assert_eq!(u.attempt.unwrap().state, State::Sending);
        let u = run(&view(State::Sending, 1), &retrying);
        assert_eq!((u.state, u.attempt), (State::Sending, None));
        let given_up = Observed::Reported {
            message_id: "msg_1".into(),
            fresh: false,
            status: Some(SvixStatus::Fail),
            next_attempt: None,
            attempts: vec![
                attempt(500, SvixStatus::Fail),
                attempt(500, SvixStatus::Fail),
            ],
        };
        let u = run(&view(State::Sending, 1), &given_up);
        assert_eq!((u.state, u.round_attempts), (State::Failed, 2));
        assert!(u.reason.contains("after 2 attempts"), "{}", u.reason);
    }

    #[test]
    fn polls_follow_svix_next_attempt_within_bounds() {
        let mut o = reported(false, Some(SvixStatus::Pending), vec![]);
        if let Observed::Reported { next_attempt, .. } = &mut o {
            *next_attempt = Some(at(100));
        }
        let u = run(&view(State::Sending, 0), &o);
        assert_eq!(u.next_attempt_at, Some(at(101)));
        if let Observed::Reported { next_attempt, .. } = &mut o {
            *next_attempt = Some(at(1_000_000));
        }
        let u = run(&view(State::Sending, 0), &o);
        assert_eq!(u.next_attempt_at, Some(at(10 + 3600)));
        if let Observed::Reported { next_attempt, .. } = &mut o {
            *next_attempt = Some(at(-50));
        }
        let u = run(&view(State::Sending, 0), &o);
        assert_eq!(u.next_attempt_at, Some(at(11)));
    }

    #[test]
    fn idle_polls_back_off_with_the_round_age() {
        let v = view(State::Sending, 0);
        assert_eq!(idle_poll(&v, at(0)), MIN_POLL);
        assert_eq!(idle_poll(&v, at(80)), Duration::from_secs(10));
        assert_eq!(idle_poll(&v, at(100_000)), MAX_IDLE_POLL);
        assert_eq!(idle_poll(&v, at(-100)), MIN_POLL);
    }

    #[test]
    fn failed_hand_overs_keep_the_state_follow_our_schedule_then_fail() {
        let failed = Observed::HandOverFailed {
            started_at: at(9),
            error: "connection refused".into(),
            http_status: None,
        };
        for state in [State::Pending, State::Resending] {
            let u = run(&view(state, 0), &failed);
            assert_eq!(u.state, state);
            assert_eq!(u.round_attempts, 1);
            assert_eq!(u.next_attempt_at, Some(at(15)));
            let a = u.attempt.expect("recorded");
            assert!(a.error.unwrap().contains("connection refused"));
            assert_eq!(a.svix_message_id, None);
            let u = run(&view(state, 1), &failed);
            assert_eq!(u.next_attempt_at, Some(at(70)));
            // Attempts in all: the schedule's length plus one.
            let u = run(&view(state, 2), &failed);
            assert_eq!(u.state, State::Failed);
            assert!(u.reason.contains("3 hand-over attempts"), "{}", u.reason);
        }
        // A vanished message on a handed-over row: the copied count stays.
        let u = run(&view(State::Sending, 1), &failed);
        assert_eq!((u.state, u.round_attempts), (State::Sending, 1));
    }

    #[test]
    fn a_refused_hand_over_fails_at_once_and_a_failed_poll_waits() {
        for state in [State::Pending, State::Resending, State::Sending] {
            let u = run(
                &view(state, 1),
                &Observed::HandOverRefused {
                    error: "HTTP 422".into(),
                },
            );
            assert_eq!(u.state, State::Failed);
            assert!(u.reason.contains("HTTP 422"));
            let u = run(
                &view(state, 1),
                &Observed::PollFailed {
                    error: "timed out".into(),
                },
            );
            assert_eq!(u.state, State::Sending);
            assert_eq!(u.attempt, None);
            assert!(u.next_attempt_at.unwrap() > at(10));
            assert_eq!(
                u.round_attempts,
                if state == State::Sending { 1 } else { 0 }
            );
        }
    }

    #[test]
    fn text_with_a_nul_is_storable() {
        let mut a = attempt(500, SvixStatus::Fail);
        a.response = "a\0b".into();
        let u = run(&view(State::Pending, 0), &reported(true, None, vec![a]));
        assert_eq!(
            u.attempt.unwrap().response_body.as_deref(),
            Some("a\u{FFFD}b")
        );
    }
}
