//! A channel's circuit breaker: pure decisions, like `state` (inputs in,
//! decision out, no I/O, the caller passes `now`).
//!
//! ```text
//! Closed{failures} ──failure, failures+1 = threshold──> Open{until = now + cooldown}
//!    ^    └─success──> Closed{0}                          │ now >= until: one probe
//!    │                                                    v
//!    └──────────── probe answered (success, or a 4xx) ── HalfOpen ──probe failed──>
//!                                                         Open{until = now + 2 × cooldown}
//! ```
//!
//! While the breaker is open the channel's deliveries are not attempted, so
//! they are charged no attempt; once the cool-down is over one probe goes
//! out and its verdict decides. The cool-down doubles while the probes keep
//! failing, up to a maximum, and starts over after a success.
//!
//! While closed with failures counted, the breaker lets out only as many as
//! could still fail before it opens (`threshold - failures - in flight`,
//! at least one when nothing is in flight), so that a dead endpoint gets
//! at most `max(threshold, cap)` attempts before it opens, not a burst of
//! its whole backlog.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::state::Verdict;

/// The breaker's settings (`delivery.breaker_failures`,
/// `delivery.breaker_cooldown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open it; 0 = it never opens.
    pub threshold: u32,
    /// The first cool-down.
    pub cooldown: Duration,
    /// The longest cool-down it doubles to.
    pub max_cooldown: Duration,
}

/// The state of one channel's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Deliveries go out; `failures` consecutive failed attempts so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Nothing goes out until `until`; then one probe.
    Open {
        /// When the cool-down ends.
        until: DateTime<Utc>,
        /// The cool-down that led here (doubled on the next failure).
        cooldown: Duration,
    },
    /// The cool-down is over: one probe may be in flight at a time.
    HalfOpen {
        /// The cool-down before this probe.
        cooldown: Duration,
    },
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker::Closed { failures: 0 }
    }
}

impl Breaker {
    /// How many more deliveries of this channel may go out now, given
    /// `in_flight` of them are out and the channel's `cap`.
    pub fn allowance(
        &self,
        now: DateTime<Utc>,
        in_flight: usize,
        cap: usize,
        policy: &BreakerPolicy,
    ) -> usize {
        match *self {
            Breaker::Closed { failures } if failures == 0 || policy.threshold == 0 => {
                cap.saturating_sub(in_flight)
            }
            Breaker::Closed { failures } => {
                let left = policy.threshold.saturating_sub(failures).max(1) as usize;
                left.min(cap).saturating_sub(in_flight)
            }
            Breaker::Open { until, .. } if now < until => 0,
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => usize::from(in_flight == 0),
        }
    }

    /// A delivery that makes a request was handed out at `now`: an open
    /// breaker whose cool-down is over turns half-open (this is the probe).
    pub fn handed_out(&mut self, now: DateTime<Utc>) {
        if let Breaker::Open { until, cooldown } = *self {
            if now >= until {
                *self = Breaker::HalfOpen { cooldown };
            }
        }
    }

    /// An attempt's verdict came back at `now`.
    pub fn record(&mut self, verdict: Verdict, now: DateTime<Utc>, policy: &BreakerPolicy) {
        *self = match (*self, verdict) {
            (_, Verdict::Success) => Breaker::Closed { failures: 0 },
            // The endpoint answered: it is up.
            (Breaker::HalfOpen { .. }, Verdict::Refused) => Breaker::Closed { failures: 0 },
            (state, Verdict::Refused) => state,
            (Breaker::Closed { failures }, Verdict::Failure) => {
                let failures = failures.saturating_add(1);
                if policy.threshold > 0 && failures >= policy.threshold {
                    open(now, policy.cooldown)
                } else {
                    Breaker::Closed { failures }
                }
            }
            (Breaker::HalfOpen { cooldown }, Verdict::Failure) => {
                let longest = policy.max_cooldown.max(policy.cooldown);
                open(now, cooldown.saturating_mul(2).min(longest))
            }
            // A late result of a delivery handed out before it opened.
            (open @ Breaker::Open { .. }, Verdict::Failure) => open,
        };
    }

    /// When the cool-down ends, while open.
    pub fn open_until(&self) -> Option<DateTime<Utc>> {
        match *self {
            Breaker::Open { until, .. } => Some(until),
            _ => None,
        }
    }

    /// Whether it is open or half-open (what `status` counts).
    pub fn is_open(&self) -> bool {
        !matches!(self, Breaker::Closed { .. })
    }

    /// The state's name, as `channel list --json` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Breaker::Closed { .. } => "closed",
            Breaker::Open { .. } => "open",
            Breaker::HalfOpen { .. } => "half_open",
        }
    }
}

fn open(now: DateTime<Utc>, cooldown: Duration) -> Breaker {
    let delta = TimeDelta::from_std(cooldown).unwrap_or(TimeDelta::MAX);
    Breaker::Open {
        until: now
            .checked_add_signed(delta)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        cooldown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + TimeDelta::seconds(secs)
    }

    fn policy(threshold: u32) -> BreakerPolicy {
        BreakerPolicy {
            threshold,
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(600),
        }
    }

    #[test]
    fn closed_opens_after_threshold_consecutive_failures() {
        let p = policy(3);
        let mut b = Breaker::default();
        b.record(Verdict::Failure, t(0), &p);
        b.record(Verdict::Failure, t(1), &p);
        assert_eq!(b, Breaker::Closed { failures: 2 });
        b.record(Verdict::Failure, t(2), &p);
        assert_eq!(
            b,
            Breaker::Open {
                until: t(32),
                cooldown: Duration::from_secs(30)
            }
        );
        assert!(b.is_open());
        assert_eq!(b.open_until(), Some(t(32)));
    }

    #[test]
    fn a_success_resets_the_count_and_refusals_do_not_count() {
        let p = policy(3);
        let mut b = Breaker::default();
        b.record(Verdict::Failure, t(0), &p);
        b.record(Verdict::Failure, t(0), &p);
        b.record(Verdict::Refused, t(0), &p);
        assert_eq!(b, Breaker::Closed { failures: 2 });
        b.record(Verdict::Success, t(0), &p);
        assert_eq!(b, Breaker::default());
    }

    #[test]
    fn open_lets_nothing_out_until_the_cooldown_ends_then_one_probe() {
        let p = policy(1);
        let mut b = Breaker::default();
        b.record(Verdict::Failure, t(0), &p);
        assert_eq!(b.allowance(t(29), 0, 10, &p), 0);
        assert_eq!(b.allowance(t(30), 0, 10, &p), 1);
        assert_eq!(b.allowance(t(30), 1, 10, &p), 0, "one in flight already");
        b.handed_out(t(30));
        assert_eq!(
            b,
            Breaker::HalfOpen {
                cooldown: Duration::from_secs(30)
            }
        );
        assert_eq!(b.allowance(t(31), 1, 10, &p), 0, "the probe is out");
        assert_eq!(b.allowance(t(31), 0, 10, &p), 1, "a probe that was dropped");
    }

    #[test]
    fn a_failed_probe_doubles_the_cooldown_up_to_the_maximum() {
        let p = policy(1);
        let mut b = Breaker::HalfOpen {
            cooldown: Duration::from_secs(30),
        };
        let mut expected = [60u64, 120, 240, 480, 600, 600].into_iter();
        let mut now = t(0);
        for _ in 0..6 {
            b.record(Verdict::Failure, now, &p);
            let cooldown = Duration::from_secs(expected.next().unwrap());
            assert_eq!(
                b,
                Breaker::Open {
                    until: now + TimeDelta::from_std(cooldown).unwrap(),
                    cooldown
                }
            );
            now = b.open_until().unwrap();
            b.handed_out(now);
        }
    }

    #[test]
    fn a_probe_that_is_answered_closes_it() {
        let p = policy(5);
        for verdict in [Verdict::Success, Verdict::Refused] {
            let mut b = Breaker::HalfOpen {
                cooldown: Duration::from_secs(120),
            };
            b.record(verdict, t(0), &p);
            assert_eq!(b, Breaker::default(), "{verdict:?}");
            assert_eq!(b.allowance(t(0), 0, 4, &p), 4);
        }
    }

    #[test]
    fn late_results_while_open_do_not_move_it_except_a_success() {
        let p = policy(1);
        let open = Breaker::Open {
            until: t(30),
            cooldown: Duration::from_secs(30),
        };
        for (verdict, after) in [
            (Verdict::Failure, open),
            (Verdict::Refused, open),
            (Verdict::Success, Breaker::default()),
        ] {
            let mut b = open;
            b.record(verdict, t(5), &p);
            assert_eq!(b, after, "{verdict:?}");
        }
    }

    #[test]
    fn a_threshold_of_zero_never_opens() {
        let p = policy(0);
        let mut b = Breaker::default();
        for i in 0..100 {
            b.record(Verdict::Failure, t(i), &p);
        }
        assert!(!b.is_open());
        assert_eq!(b.allowance(t(100), 1, 4, &p), 3, "no ramp-down either");
    }

    #[test]
    fn a_cooldown_longer_than_the_maximum_is_kept() {
        let p = BreakerPolicy {
            threshold: 1,
            cooldown: Duration::from_secs(3600),
            max_cooldown: Duration::from_secs(600),
        };
        let mut b = Breaker::HalfOpen {
            cooldown: Duration::from_secs(3600),
        };
        b.record(Verdict::Failure, t(0), &p);
        assert_eq!(b.open_until(), Some(t(3600)));
    }

    /// Exhaustive on small inputs: a dead endpoint (every attempt fails)
    /// driven through the breaker with every cap and threshold, handing out
    /// whatever the allowance permits and letting results come back one at
    /// a time, gets at most `max(threshold, cap)` attempts before it opens,
    /// never more than `cap` at once, and then exactly one probe per
    /// cool-down.
    #[test]
    fn exhaustive_dead_endpoint_attempts_are_bounded() {
        for threshold in 1..=6u32 {
            for cap in 1..=6usize {
                let p = policy(threshold);
                let mut b = Breaker::default();
                let mut now = t(0);
                let (mut in_flight, mut attempts, mut probes) = (0usize, 0usize, 0usize);
                for _ in 0..200 {
                    let allowed = b.allowance(now, in_flight, cap, &p);
                    for _ in 0..allowed {
                        if b.is_open() {
                            probes += 1;
                        } else {
                            attempts += 1;
                        }
                        b.handed_out(now);
                        in_flight += 1;
                    }
                    assert!(in_flight <= cap, "t{threshold} c{cap}");
                    if in_flight > 0 {
                        in_flight -= 1;
                        b.record(Verdict::Failure, now, &p);
                    } else if let Some(until) = b.open_until() {
                        now = until;
                    }
                }
                assert!(b.is_open(), "t{threshold} c{cap}");
                assert!(
                    attempts <= (threshold as usize).max(cap),
                    "t{threshold} c{cap}: {attempts} attempts before it opened"
                );
                assert!(attempts >= threshold as usize, "t{threshold} c{cap}");
                // 200 steps: each probe takes one step out and one back.
                assert!(probes > 10, "t{threshold} c{cap}: {probes} probes");
            }
        }
    }

    /// Exhaustive: from every state, every verdict leads where the diagram
    /// says, and the allowance never exceeds the cap's free room.
    #[test]
    fn exhaustive_transitions_and_allowances() {
        let p = policy(3);
        let cooldown = Duration::from_secs(30);
        let states = [
            Breaker::Closed { failures: 0 },
            Breaker::Closed { failures: 1 },
            Breaker::Closed { failures: 2 },
            Breaker::Open {
                until: t(30),
                cooldown,
            },
            Breaker::HalfOpen { cooldown },
        ];
        for s in states {
            for now in [t(0), t(30), t(60)] {
                for in_flight in 0..=4 {
                    for cap in 1..=4 {
                        let a = s.allowance(now, in_flight, cap, &p);
                        assert!(
                            a <= cap.saturating_sub(in_flight),
                            "{s:?} {in_flight} {cap}"
                        );
                    }
                }
                for v in [Verdict::Success, Verdict::Failure, Verdict::Refused] {
                    let mut b = s;
                    b.record(v, now, &p);
                    let expected = match (s, v) {
                        (_, Verdict::Success) => Breaker::Closed { failures: 0 },
                        (Breaker::Closed { failures: 2 }, Verdict::Failure) => open(now, cooldown),
                        (Breaker::Closed { failures }, Verdict::Failure) => Breaker::Closed {
                            failures: failures + 1,
                        },
                        (Breaker::HalfOpen { .. }, Verdict::Failure) => open(now, cooldown * 2),
                        (Breaker::HalfOpen { .. }, Verdict::Refused) => Breaker::default(),
                        (other, _) => other,
                    };
                    assert_eq!(b, expected, "{s:?} {v:?}");
                }
            }
        }
    }
}
