//! The leader's view of each channel's health: its circuit breaker
//! (`breaker`) and how long every attempt has failed (auto-disable). No I/O:
//! the leader feeds it what it reads and what workers report, and carries
//! out the [`Write`]s it returns on its lock connection.
//!
//! `failing_since` is kept on the channel row, so a run of failures is
//! measured across restarts and failovers; the breaker is the leader's own
//! (a new leader starts with every breaker closed, so a dead endpoint gets
//! at most `breaker_failures` more attempts after a failover).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::config::{Config, MAX_BREAKER_COOLDOWN};
use crate::db::due::Target;
use crate::reconcile::breaker::{Breaker, BreakerPolicy, Phase};
use crate::reconcile::scheduler::InFlight;
use crate::state::Verdict;

/// A change to a channel row the leader must write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A run of failed attempts began at `since`.
    StartFailing {
        /// The channel.
        channel_id: Uuid,
        /// When.
        since: DateTime<Utc>,
    },
    /// An attempt succeeded: the run of failures is over.
    StopFailing {
        /// The channel.
        channel_id: Uuid,
    },
    /// Every attempt has failed for `disable_after`: disable the channel,
    /// if it still failed since `since` (an operator may have enabled it).
    Disable {
        /// The channel.
        channel_id: Uuid,
        /// The start of the run of failures.
        since: DateTime<Utc>,
        /// The reason recorded on the channel.
        reason: String,
    },
}

#[derive(Debug, Default, Clone)]
struct Health {
    breaker: Breaker,
    failing_since: Option<DateTime<Utc>>,
    /// A `Disable` was returned for the current run of failures.
    disabling: bool,
    /// Attempts answered in a row (any HTTP answer): what lets the channel
    /// borrow beyond its share (see [`Channels::borrow`]).
    answered: u32,
    /// When a delivery of it that makes a request last went out.
    last_sent: Option<DateTime<Utc>>,
}

/// A channel that sent within this long is *active*: while the cap is
/// automatic, its share is kept free for it (less what it has in flight)
/// when another channel borrows, so that its next deliveries start at once
/// as they did before borrowing existed (see [`Channels::kept_free`]).
const ACTIVE_FOR: TimeDelta = TimeDelta::seconds(10);

/// Each attempt answered in a row lets a channel have this many more in
/// flight beyond its share: a channel that answers reaches every idle
/// worker within one or two round trips (scenario 1, docs/benchmarks.md:
/// with 2 a pass lost a further 2% of its rate to the ramp), and an
/// endpoint that has not answered yet (a hanging one) borrows nothing.
const BORROW_PER_ANSWER: usize = 4;

/// Every channel's health, kept by the leader's main thread.
#[derive(Debug)]
pub struct Channels {
    policy: BreakerPolicy,
    cap: usize,
    /// The cap is automatic: a channel may borrow beyond it.
    work_conserving: bool,
    disable_after: Duration,
    health: HashMap<Uuid, Health>,
}

impl Channels {
    /// Empty, with the settings of `[delivery]`.
    pub fn new(config: &Config) -> Channels {
        let d = &config.delivery;
        Channels {
            policy: BreakerPolicy {
                threshold: d.breaker_failures,
                cooldown: d.breaker_cooldown,
                max_cooldown: MAX_BREAKER_COOLDOWN,
            },
            cap: d.max_in_flight_per_channel,
            work_conserving: d.work_conserving,
            disable_after: d.disable_after,
            health: HashMap::new(),
        }
    }

    /// A delivery of the channel was read: its row says how long the
    /// channel has been failing (the database is the truth: an operator's
    /// `channel enable` clears it).
    pub fn seen(&mut self, target: &Target) {
        let h = self.health.entry(target.id).or_default();
        if h.failing_since != target.failing_since {
            h.failing_since = target.failing_since;
            h.disabling = false;
        }
    }

    /// How many more of the channel's deliveries that make a request may
    /// go out at `now` with `in_flight` of them out.
    pub fn allowance(&self, channel_id: &Uuid, now: DateTime<Utc>, in_flight: usize) -> usize {
        self.breaker(channel_id)
            .allowance(now, in_flight, self.cap, &self.policy)
    }

    /// How many of the channel's deliveries that make a request may go out
    /// beyond its allowance, with `in_flight` of them out, while workers
    /// are idle (the work-conserving cap; the scheduler keeps the
    /// reserve). None with an explicit `max_in_flight_per_channel` (a hard
    /// cap), none while its breaker is not closed or its last attempt went
    /// unanswered, and otherwise [`BORROW_PER_ANSWER`] per attempt answered
    /// in a row: a channel that answers ramps up within a few round trips,
    /// one that hangs holds no more than its share.
    pub fn borrow(&self, channel_id: &Uuid, in_flight: usize) -> usize {
        let Some(h) = self.health.get(channel_id) else {
            return 0;
        };
        if !self.work_conserving || !h.breaker.is_answering() {
            return 0;
        }
        let ceiling = (h.answered as usize)
            .saturating_mul(BORROW_PER_ANSWER)
            .saturating_add(self.cap);
        ceiling.saturating_sub(in_flight.max(self.cap))
    }

    /// How many slots borrowing must leave free at `now` for the active
    /// channels (those that sent within [`ACTIVE_FOR`]): each one's share,
    /// or less when its delivery controls let it have fewer in flight
    /// (`most`: an ordered channel 1, a rate-limited one what it has out
    /// plus what its window has left; None: no control), less what it has
    /// in flight. A borrower is at or beyond its share, so it keeps
    /// nothing free for itself. 0 with an explicit cap (no channel borrows
    /// then).
    pub fn kept_free(
        &self,
        now: DateTime<Utc>,
        in_flight: &InFlight,
        most: &dyn Fn(&Uuid) -> Option<usize>,
    ) -> usize {
        if !self.work_conserving {
            return 0;
        }
        self.health
            .iter()
            .filter(|(_, h)| h.last_sent.is_some_and(|t| now - t < ACTIVE_FOR))
            .map(|(id, _)| {
                let share = most(id).map_or(self.cap, |m| m.min(self.cap));
                share.saturating_sub(in_flight.of_channel(id))
            })
            .sum()
    }

    /// A delivery of the channel that makes a request went out at `now`.
    pub fn handed_out(&mut self, channel_id: Uuid, now: DateTime<Utc>) {
        let h = self.health.entry(channel_id).or_default();
        h.last_sent = Some(now);
        let was = h.breaker;
        h.breaker.handed_out(now);
        if was != h.breaker {
            log::info!("channel {channel_id}: breaker cool-down over, sending one probe");
        }
    }

    /// An attempt to the channel came back with `verdict` at `now`; returns
    /// the write it calls for, if any.
    pub fn record(
        &mut self,
        channel_id: Uuid,
        verdict: Verdict,
        now: DateTime<Utc>,
    ) -> Option<Write> {
        let h = self.health.entry(channel_id).or_default();
        h.answered = match verdict {
            Verdict::NoAnswer => 0,
            Verdict::Success | Verdict::Failure | Verdict::Refused => h.answered.saturating_add(1),
        };
        let was = h.breaker;
        let tripped = h.breaker.record(verdict, now, &self.policy);
        match (tripped, was.is_open(), h.breaker.phase) {
            (Some(why), _, Phase::Open { cooldown, .. }) => log::warn!(
                "channel {channel_id}: {why}; breaker open, no attempts for {}",
                humantime::format_duration(cooldown)
            ),
            (None, true, Phase::Open { cooldown, .. }) if was.phase != h.breaker.phase => {
                log::warn!(
                    "channel {channel_id}: probe failed; breaker open for {}",
                    humantime::format_duration(cooldown)
                )
            }
            (None, true, Phase::Closed) => {
                log::info!("channel {channel_id}: attempt answered; breaker closed")
            }
            _ => {}
        }
        match (verdict, h.failing_since) {
            (Verdict::Success, None) => None,
            (Verdict::Success, Some(_)) => {
                h.failing_since = None;
                h.disabling = false;
                Some(Write::StopFailing { channel_id })
            }
            (Verdict::Failure | Verdict::NoAnswer | Verdict::Refused, None) => {
                h.failing_since = Some(now);
                Some(Write::StartFailing {
                    channel_id,
                    since: now,
                })
            }
            (Verdict::Failure | Verdict::NoAnswer | Verdict::Refused, Some(since)) => {
                let limit = TimeDelta::from_std(self.disable_after).unwrap_or(TimeDelta::MAX);
                if self.disable_after.is_zero() || h.disabling || now - since < limit {
                    return None;
                }
                h.disabling = true;
                Some(Write::Disable {
                    channel_id,
                    since,
                    reason: format!(
                        "auto-disabled: every attempt failed for {} (since {})",
                        crate::config::format_duration(self.disable_after),
                        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                })
            }
        }
    }

    /// Whether the channel's breaker is open or half-open.
    pub fn is_open(&self, channel_id: &Uuid) -> bool {
        self.breaker(channel_id).is_open()
    }

    /// The earliest end of a cool-down among `channels`.
    pub fn next_probe<'a>(
        &self,
        channels: impl Iterator<Item = &'a Uuid>,
    ) -> Option<DateTime<Utc>> {
        channels.filter_map(|c| self.breaker(c).open_until()).min()
    }

    /// How many breakers are open or half-open.
    pub fn open_count(&self) -> usize {
        self.health.values().filter(|h| h.breaker.is_open()).count()
    }

    /// What the leader publishes (`status`, `channel list --json`): every
    /// channel whose breaker is open or counts failures in a row, or that has
    /// deliveries in flight.
    pub fn snapshot(&self, in_flight: &InFlight) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        let mut add = |id: &Uuid, b: Breaker, n: usize| {
            let mut v = serde_json::json!({ "breaker": b.name(), "in_flight": n });
            if !b.is_open() {
                v["failures"] = b.failures().into();
            }
            if let Some(until) = b.open_until() {
                v["open_until"] = until
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    .into();
            }
            out.insert(id.to_string(), v);
        };
        for (id, &n) in in_flight.channels() {
            add(id, self.breaker(id), n);
        }
        for (id, h) in &self.health {
            if !h.breaker.is_quiet() && in_flight.of_channel(id) == 0 {
                add(id, h.breaker, 0);
            }
        }
        serde_json::Value::Object(out)
    }

    /// Forgets channels with nothing to remember (closed, no failure among
    /// the breaker's last attempts, not failing, nothing in flight, not
    /// active at `now`), so the map does not grow forever.
    pub fn prune(&mut self, now: DateTime<Utc>, in_flight: &InFlight) {
        self.health.retain(|id, h| {
            !h.breaker.is_clean()
                || h.failing_since.is_some()
                || in_flight.of_channel(id) > 0
                || h.last_sent.is_some_and(|t| now - t < ACTIVE_FOR)
        });
    }

    fn breaker(&self, channel_id: &Uuid) -> Breaker {
        self.health
            .get(channel_id)
            .map(|h| h.breaker)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels(threshold: u32, disable_after: &str) -> Channels {
        let mut c = crate::config::Config::for_url("postgres://x@127.0.0.1/x");
        c.delivery.breaker_failures = threshold;
        c.delivery.max_in_flight_per_channel = 4;
        c.delivery.disable_after = humantime::parse_duration(disable_after).unwrap();
        Channels::new(&c)
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn target(id: Uuid, failing_since: Option<DateTime<Utc>>) -> Target {
        Target {
            id,
            url: "http://127.0.0.1:1/".into(),
            headers: "{}".into(),
            signing_secret: String::new(),
            previous_secret: None,
            previous_until: None,
            disabled: false,
            deleted: false,
            assigned: true,
            failing_since,
        }
    }

    #[test]
    fn only_a_channel_that_answers_borrows_and_an_explicit_cap_never() {
        let mut c = channels(5, "5d");
        let id = Uuid::from_u128(7);
        // Never answered (a hanging endpoint's first attempts): its share.
        assert_eq!(c.borrow(&id, 0), 0);
        c.seen(&target(id, None));
        assert_eq!(c.borrow(&id, 4), 0);
        // Three answers in a row (a 500 and a 4xx are answers too): up to
        // 4 + 3 × 4 = 16 in flight; the allowance covers the first 4.
        for v in [Verdict::Success, Verdict::Failure, Verdict::Refused] {
            c.record(id, v, t(0));
        }
        assert_eq!(c.borrow(&id, 0), 12);
        assert_eq!(c.borrow(&id, 4), 12);
        assert_eq!(c.borrow(&id, 14), 2);
        assert_eq!(c.borrow(&id, 16), 0);
        // One attempt unanswered: no borrowing, and the count starts over.
        c.record(id, Verdict::NoAnswer, t(1));
        assert_eq!(c.borrow(&id, 4), 0);
        c.record(id, Verdict::Success, t(2));
        assert_eq!(c.borrow(&id, 4), 4);
        // An open breaker borrows nothing.
        for k in 0..5 {
            c.record(id, Verdict::NoAnswer, t(3 + k));
        }
        assert!(c.is_open(&id));
        assert_eq!(c.borrow(&id, 0), 0);
        // Active channels (sent within 10 s) keep their unused share free.
        let mut f = InFlight::default();
        let other = Uuid::from_u128(8);
        assert_eq!(c.kept_free(t(10), &f, &|_| None), 0);
        c.handed_out(other, t(10));
        f.insert(Uuid::from_u128(100), other);
        assert_eq!(
            c.kept_free(t(10), &f, &|_| None),
            3,
            "share 4, one in flight"
        );
        c.handed_out(id, t(10));
        assert_eq!(c.kept_free(t(19), &f, &|_| None), 7);
        assert_eq!(
            c.kept_free(t(20), &f, &|_| None),
            0,
            "idle for 10 s: not active"
        );
        // An ordered channel keeps at most one free; a limited one what its
        // window lets it have.
        assert_eq!(c.kept_free(t(19), &f, &|ch| (*ch == id).then_some(1)), 4);
        assert_eq!(c.kept_free(t(19), &f, &|ch| (*ch == other).then_some(1)), 4);
        assert_eq!(c.kept_free(t(19), &f, &|_| Some(0)), 0);
        // An explicit max_in_flight_per_channel is a hard cap.
        let mut config = crate::config::Config::for_url("postgres://x@127.0.0.1/x");
        config.delivery.max_in_flight_per_channel = 4;
        config.delivery.work_conserving = false;
        let mut hard = Channels::new(&config);
        for _ in 0..10 {
            hard.record(id, Verdict::Success, t(0));
        }
        assert_eq!(hard.borrow(&id, 0), 0);
        assert_eq!(hard.allowance(&id, t(0), 0), 4);
        hard.handed_out(other, t(10));
        assert_eq!(hard.kept_free(t(10), &InFlight::default(), &|_| None), 0);
    }

    #[test]
    fn a_run_of_failures_is_started_once_and_ended_by_a_success() {
        let mut c = channels(5, "5d");
        let id = Uuid::from_u128(7);
        assert_eq!(
            c.record(id, Verdict::Failure, t(0)),
            Some(Write::StartFailing {
                channel_id: id,
                since: t(0)
            })
        );
        assert_eq!(c.record(id, Verdict::Refused, t(1)), None);
        assert_eq!(
            c.record(id, Verdict::Success, t(2)),
            Some(Write::StopFailing { channel_id: id })
        );
        assert_eq!(c.record(id, Verdict::Success, t(3)), None);
    }

    #[test]
    fn only_failures_for_disable_after_disable_once() {
        let mut c = channels(5, "1h");
        let id = Uuid::from_u128(7);
        c.seen(&target(id, Some(t(0))));
        assert_eq!(c.record(id, Verdict::Failure, t(3599)), None);
        let w = c.record(id, Verdict::Failure, t(3600));
        assert!(
            matches!(&w, Some(Write::Disable { since, reason, .. })
                if *since == t(0) && reason.contains("every attempt failed for 1h")),
            "{w:?}"
        );
        assert_eq!(c.record(id, Verdict::Failure, t(3700)), None, "once");
        // An operator enabled it again: the row no longer says failing.
        c.seen(&target(id, None));
        assert!(matches!(
            c.record(id, Verdict::Failure, t(3800)),
            Some(Write::StartFailing { .. })
        ));
    }

    #[test]
    fn disable_after_zero_never_disables() {
        let mut c = channels(5, "0s");
        let id = Uuid::from_u128(7);
        c.seen(&target(id, Some(t(0))));
        assert_eq!(c.record(id, Verdict::Failure, t(100_000_000)), None);
    }

    #[test]
    fn the_breaker_opens_and_is_published_and_pruned_when_clean() {
        let mut c = channels(2, "5d");
        let id = Uuid::from_u128(7);
        let mut f = InFlight::default();
        assert_eq!(c.allowance(&id, t(0), 0), 4);
        c.record(id, Verdict::NoAnswer, t(0));
        c.record(id, Verdict::NoAnswer, t(0));
        assert!(c.is_open(&id));
        assert_eq!(c.open_count(), 1);
        assert_eq!(c.allowance(&id, t(1), 0), 0);
        assert_eq!(c.next_probe([id].iter()), Some(t(30)));
        let snap = c.snapshot(&f);
        assert_eq!(snap[id.to_string()]["breaker"], "open");
        c.handed_out(id, t(30));
        f.insert(Uuid::from_u128(1), id);
        assert_eq!(c.snapshot(&f)[id.to_string()]["in_flight"], 1);
        f.remove(&Uuid::from_u128(1));
        c.record(id, Verdict::Success, t(31));
        assert_eq!(c.open_count(), 0);
        assert_eq!(c.snapshot(&f), serde_json::json!({}));
        c.prune(t(100), &f);
        assert_eq!(c.health.len(), 1, "its failure share is remembered");
        for _ in 0..crate::reconcile::breaker::WINDOW {
            c.record(id, Verdict::Success, t(32));
        }
        c.prune(t(35), &f);
        assert_eq!(c.health.len(), 1, "active 5 s ago: kept");
        c.prune(t(100), &f);
        assert!(c.health.is_empty());
    }
}
