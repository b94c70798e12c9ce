//! One rate-limited channel's sliding window of request starts. Pure: the
//! leader feeds it what it hands out and what comes back, with the time
//! (the database's clock as the leader sees it), and asks how many more may
//! start now; `scheduler::allowance` combines that with the cap, the
//! breaker and the order. No I/O: the leader persists [`Window::stored`] on
//! its lock connection before it hands out, and a new leader starts from
//! [`Window::restore`] (docs/delivery-controls.md "Rate limits").
//!
//! The leader does not see when a worker's request actually starts: only
//! that it starts after the hand-out and before the outcome comes back. So
//! a request counts against the window from its hand-out until one window
//! (plus [`GUARD`]) after its outcome came back. Then for any request j
//! handed out at t_j, each earlier request i whose start lies within one
//! window before j's start was counted at t_j (in flight, or its outcome
//! came back after its start, so less than a window before t_j): at most N
//! starts in any window. The price is that a slot is busy for a window plus
//! the endpoint's latency, not a window.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::rate_limit::RateLimit;

/// Added to every window: covers the difference between two instances'
/// estimates of the database's clock after a failover, and the time between
/// a request leaving and reaching the endpoint, so that the endpoint too
/// never sees more than N in a window.
pub const GUARD: Duration = Duration::from_millis(25);

/// The window of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    limit: RateLimit,
    /// Requests handed out whose outcome has not come back.
    open: HashSet<Uuid>,
    /// Until when each request whose outcome came back still counts, in
    /// the order they came back (so expired ones leave from the front:
    /// what is kept stays about `limit.count` long however busy the
    /// channel is; one left behind a later-expiring front after a change
    /// of period is harmless, every count looks at the time).
    until: VecDeque<DateTime<Utc>>,
}

impl Window {
    /// An empty window (nothing started recently).
    pub fn new(limit: RateLimit) -> Window {
        Window {
            limit,
            open: HashSet::new(),
            until: VecDeque::new(),
        }
    }

    /// The window as the last leader stored it, read at `now`. A request it
    /// had in flight (`None`) may have started as late as the moment it
    /// stopped leading, which is before `now`: it counts for a whole window
    /// from `now`.
    pub fn restore(
        limit: RateLimit,
        stored: &[Option<DateTime<Utc>>],
        now: DateTime<Utc>,
    ) -> Window {
        let span = span(limit);
        let mut until: Vec<DateTime<Utc>> = stored
            .iter()
            .map(|t| t.unwrap_or(now + span))
            .filter(|t| *t > now)
            .collect();
        until.sort();
        let until = until.into();
        Window {
            limit,
            open: HashSet::new(),
            until,
        }
    }

    /// The limit.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// The limit changed (an operator's `channel update`): what started
    /// recently still counts against the new one, each request for the new
    /// limit's window after its outcome came back (a change from N/s to
    /// N/m keeps the last second's requests counted for a minute; back to
    /// N/s, for a second).
    pub fn set_limit(&mut self, limit: RateLimit) {
        let (old, new) = (span(self.limit), span(limit));
        if old != new {
            for t in self.until.iter_mut() {
                *t = *t - old + new;
            }
        }
        self.limit = limit;
    }

    /// How many more requests may start at `now`.
    pub fn left(&self, now: DateTime<Utc>) -> usize {
        let counted = self.open.len() + self.until.iter().filter(|t| **t > now).count();
        (self.limit.count as usize).saturating_sub(counted)
    }

    /// A request of the delivery `status_id` was handed out.
    pub fn charge(&mut self, status_id: Uuid) {
        self.open.insert(status_id);
    }

    /// A delivery charged was not handed out after all: it never started.
    pub fn uncharge(&mut self, status_id: &Uuid) {
        self.open.remove(status_id);
    }

    /// The delivery's outcome came back at `now` (its request, if any,
    /// started before): it counts for one more window. False when it was
    /// not charged here.
    pub fn release(&mut self, status_id: &Uuid, now: DateTime<Utc>) -> bool {
        if !self.open.remove(status_id) {
            return false;
        }
        self.prune(now);
        self.until.push_back(now + span(self.limit));
        true
    }

    /// When a request may start again, if none may at `now` and one will
    /// without an outcome coming back first.
    pub fn next_free(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.left(now) > 0 {
            return None;
        }
        self.until.iter().filter(|t| **t > now).min().copied()
    }

    /// Forgets what no longer counts at `now` (from the front; see
    /// `until`).
    pub fn prune(&mut self, now: DateTime<Utc>) {
        while self.until.front().is_some_and(|t| *t <= now) {
            self.until.pop_front();
        }
    }

    /// What a new leader needs: each request that counts, `None` for one in
    /// flight (its start is unknown).
    pub fn stored(&self) -> Vec<Option<DateTime<Utc>>> {
        let mut out: Vec<Option<DateTime<Utc>>> = self.open.iter().map(|_| None).collect();
        out.extend(self.until.iter().map(|t| Some(*t)));
        out
    }
}

/// How long a request whose outcome came back counts.
fn span(limit: RateLimit) -> TimeDelta {
    TimeDelta::from_std(limit.window() + GUARD).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(count: u32) -> RateLimit {
        RateLimit { count, per_secs: 1 }
    }

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap() + TimeDelta::milliseconds(ms)
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn in_flight_and_recent_requests_count_until_a_window_after_their_outcome() {
        let mut w = Window::new(limit(2));
        assert_eq!(w.left(t(0)), 2);
        w.charge(id(1));
        w.charge(id(2));
        assert_eq!(w.left(t(0)), 0);
        assert_eq!(
            w.next_free(t(0)),
            None,
            "both in flight: wait for an outcome"
        );
        assert!(w.release(&id(1), t(100)));
        assert!(!w.release(&id(1), t(100)), "released once");
        assert_eq!(w.left(t(500)), 0);
        assert_eq!(w.next_free(t(500)), Some(t(1125)));
        assert_eq!(
            w.left(t(1125)),
            1,
            "the window ends at outcome + 1 s + guard"
        );
        w.uncharge(&id(2));
        assert_eq!(w.left(t(1125)), 2);
        w.prune(t(1125));
        assert_eq!(w, Window::new(limit(2)));
    }

    #[test]
    fn a_restored_window_counts_the_old_leaders_requests_in_flight_from_now() {
        let mut w = Window::new(limit(3));
        w.charge(id(1));
        w.charge(id(2));
        w.release(&id(2), t(0));
        let stored = w.stored();
        assert_eq!(stored.iter().filter(|s| s.is_none()).count(), 1);
        let r = Window::restore(limit(3), &stored, t(500));
        assert_eq!(r.left(t(500)), 1);
        assert_eq!(r.left(t(1025)), 2, "the finished one ends at its own time");
        assert_eq!(
            r.left(t(1525)),
            3,
            "the one in flight: a window from the takeover"
        );
        let r = Window::restore(limit(3), &stored, t(5000));
        assert_eq!(r.left(t(5000)), 2, "expired entries are dropped");
        assert_eq!(r.stored().len(), 1);
    }

    #[test]
    fn a_changed_limit_keeps_what_started() {
        let mut w = Window::new(limit(5));
        for n in 0..4 {
            w.charge(id(n));
        }
        w.set_limit(limit(2));
        assert_eq!(w.left(t(0)), 0);
        assert_eq!(w.limit(), limit(2));
    }

    #[test]
    fn a_changed_period_counts_what_came_back_for_the_new_window() {
        let mut w = Window::new(limit(2));
        w.charge(id(1));
        w.release(&id(1), t(0));
        // Per second → per minute: it counts until a minute after it came
        // back, not a second.
        w.set_limit(RateLimit {
            count: 2,
            per_secs: 60,
        });
        assert_eq!(w.left(t(2_000)), 1);
        assert_eq!(w.left(t(60_025)), 2);
        // And back: a second after it came back.
        w.set_limit(limit(2));
        assert_eq!(w.left(t(1_025)), 2);
    }

    #[test]
    fn what_no_longer_counts_is_dropped_as_outcomes_come_back() {
        let mut w = Window::new(limit(10));
        for n in 0..10_000u128 {
            w.charge(id(n));
            assert!(w.release(&id(n), t(n as i64)));
        }
        // One outcome a ms: only the last window's (1,025) are kept.
        assert!(w.stored().len() <= 1_026, "{}", w.stored().len());
    }

    /// A tiny deterministic generator, so the simulation needs no seed
    /// plumbing.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// The property itself, simulated: a leader hands out as many requests
    /// as the window lets it every 5 ms; each starts some time after its
    /// hand-out (queued for a worker) and its outcome comes back some time
    /// after it started; sometimes the leader dies and a new one restores
    /// the window from what was stored (the requests the old one had in
    /// flight have started by then, or never will). No window of one
    /// second ever holds more than N starts.
    #[test]
    fn simulated_starts_never_exceed_the_limit_in_any_window() {
        for seed in 0..300u64 {
            let mut rng = Lcg(seed);
            let n = 1 + rng.below(6) as u32;
            let per = if seed % 7 == 0 { 60 } else { 1 };
            let lim = RateLimit {
                count: n,
                per_secs: per,
            };
            let max_queue = rng.below(400) as i64;
            let max_latency = rng.below(900) as i64;
            let mut w = Window::new(lim);
            // (id, start, outcome) of requests in flight.
            let mut flying: Vec<(u128, i64, i64)> = Vec::new();
            let mut starts: Vec<i64> = Vec::new();
            let mut next_id = 0u128;
            let end = i64::from(per) * 4000;
            let mut now = 0;
            while now < end {
                // Outcomes that came back by now.
                flying.retain(|&(k, start, done)| {
                    if done <= now {
                        starts.push(start);
                        w.release(&id(k), t(now));
                        false
                    } else {
                        true
                    }
                });
                if rng.below(400) == 0 {
                    // Failover: the old leader's requests that started by
                    // now happened; the others never will.
                    for &(_, start, _) in &flying {
                        if start <= now {
                            starts.push(start);
                        }
                    }
                    flying.clear();
                    w = Window::restore(lim, &w.stored(), t(now + rng.below(50) as i64));
                    now += 50;
                    continue;
                }
                for _ in 0..w.left(t(now)) {
                    if rng.below(3) == 0 {
                        break;
                    }
                    next_id += 1;
                    w.charge(id(next_id));
                    let start = now + rng.below(max_queue as u64 + 1) as i64;
                    let done = start + rng.below(max_latency as u64 + 1) as i64;
                    flying.push((next_id, start, done));
                }
                w.prune(t(now));
                now += 5;
            }
            starts.extend(flying.iter().map(|f| f.1));
            starts.sort();
            let window_ms = i64::from(per) * 1000;
            for (i, &s) in starts.iter().enumerate() {
                let within = starts[i..]
                    .iter()
                    .take_while(|&&o| o < s + window_ms)
                    .count();
                assert!(
                    within <= n as usize,
                    "seed {seed}: {within} starts in the window from {s} ms, limit {n}"
                );
            }
            assert!(
                starts.len() >= n as usize,
                "seed {seed}: the limit let almost nothing through"
            );
        }
    }
}
