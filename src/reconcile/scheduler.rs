//! Which due deliveries the leader hands out now. Pure, like `state`: each
//! channel's due deliveries (oldest first), how many more of them may go
//! out (the channel's cap and breaker, see `breaker`) and how many slots
//! are free go in; the decision comes out. No I/O, no clock.
//!
//! The rule (DESIGN.md "Fair scheduling"): **round-robin across channels**,
//! one delivery per channel per round, oldest first within a channel,
//! starting after the channel served last, so a channel with a huge
//! backlog delays another channel's next delivery by at most one round;
//! never more of a channel than its allowance; never more than the free
//! slots. A delivery that makes no request (timed out, or its channel is
//! disabled, deleted or no longer assigned: the worker only records a
//! FAILED) ignores the allowance, so pending and sending timeouts still
//! apply while a breaker is open.
//!
//! The delivery controls (DESIGN.md "Delivery controls") are decided here
//! too. A rate-limited channel's allowance is at most what its window of
//! request starts has left (`rate`); an **ordered** channel's allowance is
//! one while none of its deliveries is in flight and zero otherwise, and only
//! the head of its lane (its oldest unfinished delivery in enqueue order)
//! may go, never one behind it: [`allowance`] and [`plan`].
//!
//! The in-flight registry (what was handed out and not yet reported back)
//! lives here too: it is what the allowances are computed from.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

/// The registry of deliveries handed out whose outcome the leader has not
/// heard yet (queued or being attempted), and of those parked after a
/// failed reconcile until the next tick. Kept by the main thread only.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Status id → its channel.
    handed_out: HashMap<Uuid, Uuid>,
    /// Channel → how many of its deliveries are handed out.
    per_channel: HashMap<Uuid, usize>,
    parked: HashSet<Uuid>,
}

impl InFlight {
    /// Records a delivery of `channel_id` as handed out.
    pub fn insert(&mut self, status_id: Uuid, channel_id: Uuid) {
        if self.handed_out.insert(status_id, channel_id).is_none() {
            *self.per_channel.entry(channel_id).or_default() += 1;
        }
    }

    /// Forgets a delivery whose outcome arrived; its channel, or `None` if
    /// it was not in flight.
    pub fn remove(&mut self, status_id: &Uuid) -> Option<Uuid> {
        let channel_id = self.handed_out.remove(status_id)?;
        if let Some(n) = self.per_channel.get_mut(&channel_id) {
            *n -= 1;
            if *n == 0 {
                self.per_channel.remove(&channel_id);
            }
        }
        Some(channel_id)
    }

    /// How many of `channel_id`'s deliveries are in flight.
    pub fn of_channel(&self, channel_id: &Uuid) -> usize {
        self.per_channel.get(channel_id).copied().unwrap_or(0)
    }

    /// Every channel with deliveries in flight, and how many.
    pub fn channels(&self) -> impl Iterator<Item = (&Uuid, &usize)> {
        self.per_channel.iter()
    }

    /// Keeps a delivery out of the sweeps until [`InFlight::unpark_all`].
    pub fn park(&mut self, status_id: Uuid) {
        self.parked.insert(status_id);
    }

    /// Lets every parked delivery be handed out again.
    pub fn unpark_all(&mut self) {
        self.parked.clear();
    }

    /// Whether the delivery must not be handed out now: in flight, or
    /// parked.
    pub fn holds(&self, status_id: &Uuid) -> bool {
        self.handed_out.contains_key(status_id) || self.parked.contains(status_id)
    }

    /// How many deliveries are in flight (parked ones are not).
    pub fn len(&self) -> usize {
        self.handed_out.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.handed_out.is_empty()
    }
}

/// One channel's due deliveries as the scheduler sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// The channel.
    pub channel_id: Uuid,
    /// Its due deliveries not in flight, oldest first: for each, whether it
    /// makes a request (false: the worker only records a FAILED).
    pub queue: Vec<bool>,
    /// How many more deliveries that make a request may go out now.
    pub allowance: usize,
    /// An ordered channel: only the first of `queue` may go (the leader
    /// reads only its head, in enqueue order).
    pub ordered: bool,
}

/// What limits one channel beside its cap and breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Controls {
    /// Ordered: one delivery in flight at a time.
    pub ordered: bool,
    /// Rate-limited: how many more requests its window lets start now.
    pub rate_left: Option<usize>,
}

/// How many more of a channel's deliveries that make a request may go out:
/// what its cap and breaker allow (`base`), no more than its rate limit has
/// left, and, for an ordered channel, one only while none of its `in_flight`
/// deliveries is out. The explicit controls are hard limits: nothing
/// lends a channel more than they allow.
pub fn allowance(base: usize, in_flight: usize, controls: Controls) -> usize {
    let mut a = base;
    if let Some(left) = controls.rate_left {
        a = a.min(left);
    }
    if controls.ordered {
        a = a.min(usize::from(in_flight == 0));
    }
    a
}

/// What to hand out now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// `(lane, position in its queue)`, in hand-out order.
    pub hand_out: Vec<(usize, usize)>,
    /// The channel served last: the next plan starts after it.
    pub last_served: Option<Uuid>,
}

/// Decides what to hand out from `lanes` (sorted by channel id) with
/// `free` slots, round-robin starting after the channel `after`.
pub fn plan(lanes: &[Lane], after: Option<Uuid>, free: usize) -> Plan {
    let mut plan = Plan::default();
    if lanes.is_empty() {
        return plan;
    }
    let first = after.map_or(0, |a| {
        lanes.partition_point(|l| l.channel_id <= a) % lanes.len()
    });
    let mut taken: Vec<Vec<bool>> = lanes.iter().map(|l| vec![false; l.queue.len()]).collect();
    let mut allowance: Vec<usize> = lanes.iter().map(|l| l.allowance).collect();
    loop {
        let mut moved = false;
        for k in 0..lanes.len() {
            if plan.hand_out.len() == free {
                return plan;
            }
            let i = (first + k) % lanes.len();
            // The oldest delivery of this lane that may go: any while the
            // allowance lasts, else only one that makes no request; of an
            // ordered lane only its head, once.
            let reach = if lanes[i].ordered {
                lanes[i].queue.len().min(1)
            } else {
                lanes[i].queue.len()
            };
            let pick = lanes[i].queue[..reach]
                .iter()
                .enumerate()
                .position(|(j, &sends)| !taken[i][j] && (!sends || allowance[i] > 0));
            if let Some(j) = pick {
                taken[i][j] = true;
                if lanes[i].queue[j] {
                    allowance[i] -= 1;
                }
                plan.hand_out.push((i, j));
                plan.last_served = Some(lanes[i].channel_id);
                moved = true;
            }
        }
        if !moved {
            return plan;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(n: u128) -> Uuid {
        Uuid::from_u128(1000 + n)
    }

    fn lane(n: u128, len: usize, allowance: usize) -> Lane {
        Lane {
            channel_id: ch(n),
            queue: vec![true; len],
            allowance,
            ordered: false,
        }
    }

    #[test]
    fn one_per_channel_per_round_oldest_first() {
        let lanes = [lane(1, 3, 9), lane(2, 1, 9), lane(3, 2, 9)];
        let p = plan(&lanes, None, 10);
        assert_eq!(
            p.hand_out,
            vec![(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2)]
        );
        assert_eq!(p.last_served, Some(ch(1)));
    }

    #[test]
    fn a_huge_backlog_delays_another_channel_by_at_most_one_round() {
        let lanes = [lane(1, 1000, 1000), lane(2, 1, 1)];
        for free in 1..5 {
            let p = plan(&lanes, None, free);
            assert!(
                p.hand_out.contains(&(1, 0)) || free < 2,
                "free {free}: {p:?}"
            );
        }
        // Served the big channel last time: the other one goes first now.
        let p = plan(&lanes, Some(ch(1)), 1);
        assert_eq!(p.hand_out, vec![(1, 0)]);
    }

    #[test]
    fn rotation_resumes_after_the_channel_served_last() {
        let lanes = [lane(1, 5, 9), lane(2, 5, 9), lane(3, 5, 9)];
        let p = plan(&lanes, None, 2);
        assert_eq!(p.hand_out, vec![(0, 0), (1, 0)]);
        let p = plan(&lanes, p.last_served, 2);
        assert_eq!(p.hand_out, vec![(2, 0), (0, 0)]);
        // A channel that is gone from the lanes: the next one after it.
        let p = plan(&lanes, Some(ch(2)), 1);
        assert_eq!(p.hand_out, vec![(2, 0)]);
        let p = plan(&lanes, Some(Uuid::from_u128(5000)), 1);
        assert_eq!(p.hand_out, vec![(0, 0)], "after the last: wraps around");
    }

    #[test]
    fn the_allowance_caps_a_channel_and_the_rest_go_to_others() {
        let lanes = [lane(1, 10, 2), lane(2, 10, 0), lane(3, 10, 5)];
        let p = plan(&lanes, None, 100);
        let of = |i| p.hand_out.iter().filter(|(l, _)| *l == i).count();
        assert_eq!((of(0), of(1), of(2)), (2, 0, 5));
    }

    #[test]
    fn deliveries_that_make_no_request_pass_a_closed_allowance() {
        let lanes = [Lane {
            channel_id: ch(1),
            queue: vec![true, false, true, false],
            allowance: 0,
            ordered: false,
        }];
        let p = plan(&lanes, None, 10);
        assert_eq!(p.hand_out, vec![(0, 1), (0, 3)]);
    }

    #[test]
    fn an_ordered_lane_hands_out_its_head_only() {
        let ordered = Lane {
            ordered: true,
            ..lane(1, 3, 5)
        };
        let p = plan(&[ordered.clone(), lane(2, 3, 5)], None, 10);
        assert_eq!(p.hand_out, vec![(0, 0), (1, 0), (1, 1), (1, 2)]);
        // A head that may not go (no allowance) holds back the rest, even
        // those that would make no request.
        let held = Lane {
            queue: vec![true, false, false],
            allowance: 0,
            ..ordered
        };
        assert_eq!(plan(&[held], None, 10), Plan::default());
    }

    #[test]
    fn the_controls_are_hard_limits_on_the_allowance() {
        let none = Controls::default();
        assert_eq!(allowance(4, 0, none), 4);
        assert_eq!(allowance(4, 3, none), 4, "in flight is the cap's business");
        let rate = |left| Controls {
            ordered: false,
            rate_left: Some(left),
        };
        assert_eq!(allowance(4, 0, rate(2)), 2);
        assert_eq!(allowance(1, 0, rate(2)), 1, "the breaker's probe stays one");
        assert_eq!(allowance(4, 0, rate(0)), 0);
        let ordered = |rate_left| Controls {
            ordered: true,
            rate_left,
        };
        assert_eq!(allowance(4, 0, ordered(None)), 1);
        assert_eq!(allowance(4, 1, ordered(None)), 0, "one in flight at a time");
        assert_eq!(allowance(4, 0, ordered(Some(0))), 0);
        assert_eq!(allowance(0, 0, ordered(Some(3))), 0, "breaker open");
        // Exhaustive over small inputs: never above any of the limits, and
        // equal to the least of them.
        for base in 0..6 {
            for in_flight in 0..4 {
                for left in [None, Some(0), Some(1), Some(2), Some(7)] {
                    for o in [false, true] {
                        let c = Controls {
                            ordered: o,
                            rate_left: left,
                        };
                        let a = allowance(base, in_flight, c);
                        let mut least = base.min(left.unwrap_or(usize::MAX));
                        if o {
                            least = least.min(usize::from(in_flight == 0));
                        }
                        assert_eq!(a, least, "{base} {in_flight} {c:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn no_free_slot_hands_out_nothing() {
        let p = plan(&[lane(1, 3, 3)], None, 0);
        assert_eq!(p, Plan::default());
        assert_eq!(plan(&[], None, 5), Plan::default());
    }

    /// Exhaustive on small inputs: up to 3 lanes, queues of up to 3 with
    /// every pattern of "makes a request", every allowance 0..=3, every
    /// start and 0..=7 free slots. Checks: never more than `free`, nothing
    /// twice, never more requests of a lane than its allowance, oldest
    /// first among a lane's requests, round-robin (no lane gets a second
    /// delivery before every lane that still could got one), and nothing
    /// left that could have gone when slots were left.
    #[test]
    fn exhaustive_small_inputs() {
        // Every lane a channel can have, with queues up to `len` long and
        // allowances up to `most`.
        let choices = |n: u128, len: usize, most: usize, orders: &[bool]| {
            let mut v = Vec::new();
            for len in 0..=len {
                for mask in 0..(1u32 << len) {
                    for allowance in 0..=most {
                        for &ordered in orders {
                            v.push(Lane {
                                channel_id: ch(n),
                                queue: (0..len).map(|b| mask & (1 << b) == 0).collect(),
                                allowance,
                                ordered,
                            });
                        }
                    }
                }
            }
            v
        };
        let both = [false, true];
        let mut lanes_sets: Vec<Vec<Lane>> = vec![vec![]];
        for a in choices(1, 3, 3, &both) {
            lanes_sets.push(vec![a.clone()]);
            for b in choices(2, 3, 3, &both) {
                lanes_sets.push(vec![a.clone(), b]);
            }
        }
        for a in choices(1, 2, 2, &[false]) {
            for b in choices(2, 2, 2, &[false]) {
                for c in choices(3, 2, 2, &both) {
                    lanes_sets.push(vec![a.clone(), b.clone(), c]);
                }
            }
        }
        let mut checked = 0;
        for lanes in &lanes_sets {
            for after in [None, Some(ch(1)), Some(ch(2)), Some(ch(3))] {
                for free in 0..=7 {
                    check(lanes, after, free);
                    checked += 1;
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
    }

    fn check(lanes: &[Lane], after: Option<Uuid>, free: usize) {
        let p = plan(lanes, after, free);
        let ctx = || format!("{lanes:?} after {after:?} free {free}: {p:?}");
        assert!(p.hand_out.len() <= free, "{}", ctx());
        let mut seen = HashSet::new();
        for &(i, j) in &p.hand_out {
            assert!(j < lanes[i].queue.len(), "{}", ctx());
            assert!(seen.insert((i, j)), "twice: {}", ctx());
        }
        for (i, l) in lanes.iter().enumerate() {
            let mine: Vec<usize> = p
                .hand_out
                .iter()
                .filter(|h| h.0 == i)
                .map(|h| h.1)
                .collect();
            let requests: Vec<usize> = mine.iter().copied().filter(|&j| l.queue[j]).collect();
            assert!(requests.len() <= l.allowance, "{}", ctx());
            if l.ordered {
                // Only the head, once: nothing behind it goes first.
                assert!(mine.iter().all(|&j| j == 0), "not the head: {}", ctx());
                if p.hand_out.len() < free {
                    let could = l.queue.first().is_some_and(|&s| !s || l.allowance > 0);
                    assert_eq!(mine.len(), usize::from(could), "head left: {}", ctx());
                }
                continue;
            }
            // Requests oldest first: the first `requests.len()` of the lane.
            let firsts: Vec<usize> = (0..l.queue.len())
                .filter(|&j| l.queue[j])
                .take(requests.len())
                .collect();
            let mut sorted = requests.clone();
            sorted.sort();
            assert_eq!(sorted, firsts, "{}", ctx());
            if p.hand_out.len() < free {
                let could = l.queue.iter().filter(|&&s| !s).count()
                    + l.queue.iter().filter(|&&s| s).count().min(l.allowance);
                assert_eq!(mine.len(), could, "work left behind: {}", ctx());
            }
        }
        // Round-robin: by the time a lane gets its k-th delivery, every
        // lane that ends with at least k got its (k-1)-th.
        let mut count = vec![0usize; lanes.len()];
        let total: Vec<usize> = (0..lanes.len())
            .map(|i| p.hand_out.iter().filter(|h| h.0 == i).count())
            .collect();
        for &(i, _) in &p.hand_out {
            count[i] += 1;
            for (o, &c) in count.iter().enumerate() {
                if total[o] >= count[i] - 1 {
                    assert!(c + 1 >= count[i], "not round-robin: {}", ctx());
                }
            }
        }
        if let Some(&(i, _)) = p.hand_out.first() {
            // The first goes to the first lane after `after` that got any.
            let start = after.map_or(0, |a| {
                lanes.partition_point(|l| l.channel_id <= a) % lanes.len()
            });
            let first_with = (0..lanes.len())
                .map(|k| (start + k) % lanes.len())
                .find(|&o| total[o] > 0);
            assert_eq!(Some(i), first_with, "{}", ctx());
        }
    }

    #[test]
    fn the_registry_counts_per_channel_and_forgets() {
        let mut f = InFlight::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(f.is_empty());
        f.insert(a, ch(1));
        f.insert(a, ch(1));
        f.insert(b, ch(1));
        assert_eq!(f.len(), 2);
        assert_eq!(f.of_channel(&ch(1)), 2);
        assert_eq!(f.remove(&a), Some(ch(1)));
        assert_eq!(f.remove(&a), None);
        assert_eq!(f.of_channel(&ch(1)), 1);
        assert_eq!(f.remove(&b), Some(ch(1)));
        assert_eq!(f.of_channel(&ch(1)), 0);
        assert_eq!(f.channels().count(), 0);
        assert!(f.is_empty());
    }

    #[test]
    fn parked_deliveries_are_held_but_not_in_flight_until_unparked() {
        let mut f = InFlight::default();
        let id = Uuid::from_u128(2);
        f.park(id);
        assert!(f.holds(&id));
        assert_eq!(f.len(), 0, "a parked delivery takes no slot");
        f.unpark_all();
        assert!(!f.holds(&id));
    }
}
