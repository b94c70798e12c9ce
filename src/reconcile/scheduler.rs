//! Which due deliveries the leader hands out now. Pure, like `state`: each
//! channel's due deliveries (oldest first), how many more of them may go
//! out (the channel's cap and breaker, see `breaker`) and how many slots
//! are free go in; the decision comes out. No I/O, no clock.
//!
//! The rule (docs/architecture.md "Fair scheduling"): **round-robin across channels**,
//! one delivery per channel per round, oldest first within a channel,
//! starting after the channel served last, so a channel with a huge
//! backlog delays another channel's next delivery by at most one round;
//! never more of a channel than its allowance; never more than the free
//! slots. The automatic cap is **work-conserving**: once every channel had
//! what its allowance lets it have, a lane may *borrow* beyond it (its
//! `borrow`, again round-robin) while the plan keeps the reserve of slots
//! free that lets another channel's new work start at once (`borrowable`,
//! see `Channels::borrow` and docs/configuration.md). A delivery that makes no request (timed out, or its channel is
//! disabled, deleted or no longer assigned: the worker only records a
//! FAILED) ignores the allowance, so pending and sending timeouts still
//! apply while a breaker is open.
//!
//! The delivery controls (docs/delivery-controls.md) are decided here
//! too, as hard limits: a rate-limited channel never gets more requests
//! than its window of request starts has left (`rate`), borrowed or not; an
//! **ordered** channel gets one while none of its deliveries is in flight
//! and none otherwise, and only the head of its lane (its oldest unfinished
//! delivery in enqueue order) may go, never one behind it: [`limits`] and
//! [`plan`].
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
    /// Channel → how many of its deliveries are handed out and not
    /// answered yet (they hold a worker).
    per_channel: HashMap<Uuid, usize>,
    /// Channel → how many of its deliveries are in flight, answered ones
    /// included.
    held: HashMap<Uuid, usize>,
    /// Deliveries whose attempt is over and whose outcome is queued for
    /// the group commit: in flight, but holding no worker.
    answered: HashSet<Uuid>,
    parked: HashSet<Uuid>,
}

impl InFlight {
    /// Records a delivery of `channel_id` as handed out.
    pub fn insert(&mut self, status_id: Uuid, channel_id: Uuid) {
        if self.handed_out.insert(status_id, channel_id).is_none() {
            *self.per_channel.entry(channel_id).or_default() += 1;
            *self.held.entry(channel_id).or_default() += 1;
        }
    }

    /// A delivery's attempt is over and its outcome queued: it no longer
    /// counts against its channel ([`InFlight::of_channel`]), but stays
    /// held and in flight until [`InFlight::remove`].
    /// Its channel, or `None` when it is not in flight.
    pub fn answered(&mut self, status_id: &Uuid) -> Option<Uuid> {
        let channel_id = *self.handed_out.get(status_id)?;
        if self.answered.insert(*status_id) {
            release(&mut self.per_channel, &channel_id);
        }
        Some(channel_id)
    }

    /// Forgets a delivery whose outcome arrived; its channel, or `None` if
    /// it was not in flight.
    pub fn remove(&mut self, status_id: &Uuid) -> Option<Uuid> {
        let channel_id = self.handed_out.remove(status_id)?;
        if !self.answered.remove(status_id) {
            release(&mut self.per_channel, &channel_id);
        }
        release(&mut self.held, &channel_id);
        Some(channel_id)
    }

    /// How many of `channel_id`'s deliveries are in flight holding a
    /// worker (handed out, not answered yet).
    pub fn of_channel(&self, channel_id: &Uuid) -> usize {
        self.per_channel.get(channel_id).copied().unwrap_or(0)
    }

    /// How many of `channel_id`'s deliveries are in flight, those whose
    /// outcome waits to be recorded included (what an ordered channel's
    /// one-at-a-time rule counts).
    pub fn held_of(&self, channel_id: &Uuid) -> usize {
        self.held.get(channel_id).copied().unwrap_or(0)
    }

    /// The deliveries of `channel_id` in flight (a walk over every
    /// delivery in flight: for rare events, such as a limit set on a busy
    /// channel).
    pub fn ids_of(&self, channel_id: &Uuid) -> Vec<Uuid> {
        self.handed_out
            .iter()
            .filter(|(_, c)| *c == channel_id)
            .map(|(id, _)| *id)
            .collect()
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

    /// How many deliveries are in flight: the slots taken (parked ones are
    /// not counted).
    pub fn len(&self) -> usize {
        self.handed_out.len()
    }

    /// How many deliveries in flight hold a worker (handed out, not
    /// answered yet): what the workers' slots beyond the reserve are
    /// counted against. Answered ones wait for the group commit and hold
    /// no worker.
    pub fn holding_workers(&self) -> usize {
        self.handed_out.len() - self.answered.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.handed_out.is_empty()
    }
}

/// Takes one from `channel_id`'s count, forgetting it at zero.
fn release(per_channel: &mut HashMap<Uuid, usize>, channel_id: &Uuid) {
    if let Some(n) = per_channel.get_mut(channel_id) {
        *n -= 1;
        if *n == 0 {
            per_channel.remove(channel_id);
        }
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
    /// For each of `queue` (or none, when shorter): whether its request is
    /// a poll of the provider (a delivery handed to Svix, whose outcome is
    /// read there) rather than a request to the channel's endpoint. A poll
    /// takes a slot of the channel's cap, but nothing of its rate limit.
    pub polls: Vec<bool>,
    /// How many more polls may go out now: the allowance without the rate
    /// limit (the cap, the breaker, the order), shared with the requests.
    pub poll_allowance: usize,
    /// How many more beyond `allowance` it may borrow, while slots beyond
    /// the reserve are free (0: none; an explicit cap never borrows).
    pub borrow: usize,
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

/// A channel's `(allowance, borrow)` under its controls: what its cap and
/// breaker allow (`base`) and may borrow (`borrow`), together never more
/// than its rate limit has left, and, for an ordered channel, one only
/// while none of its `in_flight` deliveries is out. The controls are hard
/// limits: nothing is lent beyond them.
pub fn limits(base: usize, borrow: usize, in_flight: usize, controls: Controls) -> (usize, usize) {
    let mut most = usize::MAX;
    if let Some(left) = controls.rate_left {
        most = most.min(left);
    }
    if controls.ordered {
        most = most.min(usize::from(in_flight == 0));
    }
    let allowance = base.min(most);
    (allowance, borrow.min(most - allowance))
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
/// `free` slots, round-robin starting after the channel `after`: first
/// within each lane's allowance, then, while fewer than `borrowable`
/// deliveries are handed out in all, within each lane's `borrow`.
pub fn plan(lanes: &[Lane], after: Option<Uuid>, free: usize, borrowable: usize) -> Plan {
    let mut plan = Plan::default();
    if lanes.is_empty() {
        return plan;
    }
    let first = after.map_or(0, |a| {
        lanes.partition_point(|l| l.channel_id <= a) % lanes.len()
    });
    let mut taken: Vec<Vec<bool>> = lanes.iter().map(|l| vec![false; l.queue.len()]).collect();
    let mut allowance: Vec<usize> = lanes.iter().map(|l| l.allowance).collect();
    let mut polls: Vec<usize> = lanes
        .iter()
        .map(|l| l.poll_allowance.max(l.allowance))
        .collect();
    round_robin(
        lanes,
        first,
        free,
        &mut taken,
        (&mut allowance, Some(&mut polls)),
        &mut plan,
    );
    let mut borrow: Vec<usize> = lanes.iter().map(|l| l.borrow).collect();
    let limit = free.min(borrowable);
    if plan.hand_out.len() < limit {
        // Start after the lane served last, so borrowing rotates too.
        let first = plan.last_served.map_or(first, |a| {
            lanes.partition_point(|l| l.channel_id <= a) % lanes.len()
        });
        round_robin(
            lanes,
            first,
            limit,
            &mut taken,
            (&mut borrow, None),
            &mut plan,
        );
    }
    plan
}

/// Rounds of one delivery per lane, from lane `first` on, until `limit`
/// are handed out in all or no lane can move: each lane's oldest delivery
/// not `taken`, a request only while its `budget` lasts (a poll while the
/// second budget lasts, when given, else the first; any request takes one
/// of the second, and the first never exceeds it).
fn round_robin(
    lanes: &[Lane],
    first: usize,
    limit: usize,
    taken: &mut [Vec<bool>],
    (budget, mut poll_budget): (&mut [usize], Option<&mut Vec<usize>>),
    plan: &mut Plan,
) {
    loop {
        let mut moved = false;
        for k in 0..lanes.len() {
            if plan.hand_out.len() >= limit {
                return;
            }
            let i = (first + k) % lanes.len();
            // The oldest delivery of this lane that may go: any while the
            // budget lasts, else only one that makes no request; of an
            // ordered lane only its head, once.
            let reach = if lanes[i].ordered {
                lanes[i].queue.len().min(1)
            } else {
                lanes[i].queue.len()
            };
            let is_poll = |j: usize| lanes[i].polls.get(j).copied().unwrap_or(false);
            let left = |j: usize, budget: &[usize], polls: &Option<&mut Vec<usize>>| match polls {
                Some(p) if is_poll(j) => p[i],
                _ => budget[i],
            };
            let pick = lanes[i].queue[..reach]
                .iter()
                .enumerate()
                .position(|(j, &sends)| {
                    !taken[i][j] && (!sends || left(j, budget, &poll_budget) > 0)
                });
            if let Some(j) = pick {
                taken[i][j] = true;
                if lanes[i].queue[j] {
                    match poll_budget.as_deref_mut() {
                        Some(p) => {
                            p[i] -= 1;
                            if !is_poll(j) {
                                budget[i] -= 1;
                            }
                            budget[i] = budget[i].min(p[i]);
                        }
                        None => budget[i] -= 1,
                    }
                }
                plan.hand_out.push((i, j));
                plan.last_served = Some(lanes[i].channel_id);
                moved = true;
            }
        }
        if !moved {
            return;
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
            polls: Vec::new(),
            poll_allowance: 0,
            borrow: 0,
            ordered: false,
        }
    }

    #[test]
    fn one_per_channel_per_round_oldest_first() {
        let lanes = [lane(1, 3, 9), lane(2, 1, 9), lane(3, 2, 9)];
        let p = plan(&lanes, None, 10, 0);
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
            let p = plan(&lanes, None, free, 0);
            assert!(
                p.hand_out.contains(&(1, 0)) || free < 2,
                "free {free}: {p:?}"
            );
        }
        // Served the big channel last time: the other one goes first now.
        let p = plan(&lanes, Some(ch(1)), 1, 0);
        assert_eq!(p.hand_out, vec![(1, 0)]);
    }

    #[test]
    fn rotation_resumes_after_the_channel_served_last() {
        let lanes = [lane(1, 5, 9), lane(2, 5, 9), lane(3, 5, 9)];
        let p = plan(&lanes, None, 2, 0);
        assert_eq!(p.hand_out, vec![(0, 0), (1, 0)]);
        let p = plan(&lanes, p.last_served, 2, 0);
        assert_eq!(p.hand_out, vec![(2, 0), (0, 0)]);
        // A channel that is gone from the lanes: the next one after it.
        let p = plan(&lanes, Some(ch(2)), 1, 0);
        assert_eq!(p.hand_out, vec![(2, 0)]);
        let p = plan(&lanes, Some(Uuid::from_u128(5000)), 1, 0);
        assert_eq!(p.hand_out, vec![(0, 0)], "after the last: wraps around");
    }

    #[test]
    fn the_allowance_caps_a_channel_and_the_rest_go_to_others() {
        let lanes = [lane(1, 10, 2), lane(2, 10, 0), lane(3, 10, 5)];
        let p = plan(&lanes, None, 100, 0);
        let of = |i| p.hand_out.iter().filter(|(l, _)| *l == i).count();
        assert_eq!((of(0), of(1), of(2)), (2, 0, 5));
    }

    #[test]
    fn deliveries_that_make_no_request_pass_a_closed_allowance() {
        let lanes = [Lane {
            channel_id: ch(1),
            queue: vec![true, false, true, false],
            allowance: 0,
            polls: Vec::new(),
            poll_allowance: 0,
            borrow: 0,
            ordered: false,
        }];
        let p = plan(&lanes, None, 10, 0);
        assert_eq!(p.hand_out, vec![(0, 1), (0, 3)]);
    }

    /// Polls of Svix (provider `svix`) are not requests to the endpoint:
    /// a rate limit whose window is used up holds back the hand-overs, not
    /// the polls; the cap holds back both, and a poll takes a slot of it.
    #[test]
    fn polls_pass_a_used_up_rate_limit_but_not_the_cap() {
        let limited = Lane {
            channel_id: ch(1),
            queue: vec![true, true, true, true],
            polls: vec![true, false, true, true],
            allowance: 0,
            poll_allowance: 2,
            borrow: 0,
            ordered: false,
        };
        let p = plan(std::slice::from_ref(&limited), None, 10, 0);
        assert_eq!(p.hand_out, vec![(0, 0), (0, 2)]);
        // Room in the window for one: one request and one poll within the
        // cap of two.
        let some = Lane {
            allowance: 1,
            ..limited.clone()
        };
        assert_eq!(plan(&[some], None, 10, 0).hand_out, vec![(0, 0), (0, 1)]);
        // The cap counts the requests too: a request leaves one slot.
        let first_request = Lane {
            polls: vec![false, true, true, true],
            allowance: 1,
            ..limited
        };
        assert_eq!(
            plan(&[first_request], None, 10, 0).hand_out,
            vec![(0, 0), (0, 1)]
        );
    }

    #[test]
    fn an_ordered_lane_hands_out_its_head_only() {
        let ordered = Lane {
            ordered: true,
            ..lane(1, 3, 5)
        };
        let p = plan(&[ordered.clone(), lane(2, 3, 5)], None, 10, 0);
        assert_eq!(p.hand_out, vec![(0, 0), (1, 0), (1, 1), (1, 2)]);
        // Nor by borrowing.
        let borrowing = Lane {
            borrow: 5,
            ..ordered.clone()
        };
        assert_eq!(plan(&[borrowing], None, 10, 10).hand_out, vec![(0, 0)]);
        // A head that may not go (no allowance) holds back the rest, even
        // those that would make no request.
        let held = Lane {
            queue: vec![true, false, false],
            allowance: 0,
            ..ordered
        };
        assert_eq!(plan(&[held], None, 10, 0), Plan::default());
    }

    #[test]
    fn the_controls_are_hard_limits_on_allowance_and_borrow() {
        let none = Controls::default();
        assert_eq!(limits(4, 9, 0, none), (4, 9));
        assert_eq!(
            limits(4, 0, 3, none),
            (4, 0),
            "in flight is the cap's business"
        );
        let rate = |left| Controls {
            ordered: false,
            rate_left: Some(left),
        };
        assert_eq!(limits(4, 0, 0, rate(2)), (2, 0));
        assert_eq!(
            limits(4, 9, 0, rate(6)),
            (4, 2),
            "borrowing stops at the limit"
        );
        assert_eq!(
            limits(1, 0, 0, rate(2)),
            (1, 0),
            "the breaker's probe stays one"
        );
        assert_eq!(limits(4, 9, 0, rate(0)), (0, 0));
        let ordered = |rate_left| Controls {
            ordered: true,
            rate_left,
        };
        assert_eq!(limits(4, 9, 0, ordered(None)), (1, 0));
        assert_eq!(
            limits(0, 9, 0, ordered(None)),
            (0, 1),
            "ordered may borrow its one"
        );
        assert_eq!(
            limits(4, 9, 1, ordered(None)),
            (0, 0),
            "one in flight at a time"
        );
        assert_eq!(limits(4, 0, 0, ordered(Some(0))), (0, 0));
        // Exhaustive over small inputs: allowance is the least of the
        // limits, and allowance + borrow never exceeds any control.
        for base in 0..6 {
            for borrow in 0..4 {
                for in_flight in 0..4 {
                    for left in [None, Some(0), Some(1), Some(2), Some(7)] {
                        for o in [false, true] {
                            let c = Controls {
                                ordered: o,
                                rate_left: left,
                            };
                            let (a, b) = limits(base, borrow, in_flight, c);
                            let mut most = left.unwrap_or(usize::MAX);
                            if o {
                                most = most.min(usize::from(in_flight == 0));
                            }
                            assert_eq!(a, base.min(most), "{base} {borrow} {in_flight} {c:?}");
                            assert!(b <= borrow && a + b <= most.max(a), "{c:?}");
                            assert_eq!(a + b, (base + borrow).min(most), "{c:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn no_free_slot_hands_out_nothing() {
        let p = plan(&[lane(1, 3, 3)], None, 0, 9);
        assert_eq!(p, Plan::default());
        assert_eq!(plan(&[], None, 5, 5), Plan::default());
    }

    /// Every lane a channel can have, with queues up to `len` long (every
    /// pattern of "makes a request"), allowances up to `most`, borrows up
    /// to `borrow`, and each of `orders` (ordered or not).
    fn choices(n: u128, len: usize, most: usize, borrow: usize, orders: &[bool]) -> Vec<Lane> {
        let mut v = Vec::new();
        for len in 0..=len {
            for mask in 0..(1u32 << len) {
                for allowance in 0..=most {
                    for b in 0..=borrow {
                        for &ordered in orders {
                            v.push(Lane {
                                channel_id: ch(n),
                                queue: (0..len).map(|k| mask & (1 << k) == 0).collect(),
                                allowance,
                                polls: Vec::new(),
                                poll_allowance: 0,
                                borrow: b,
                                ordered,
                            });
                        }
                    }
                }
            }
        }
        v
    }

    /// Exhaustive on small inputs without borrowing: up to 3 lanes, queues
    /// of up to 3, every allowance 0..=3, every start and 0..=7 free slots
    /// (see [`check`]).
    #[test]
    fn exhaustive_small_inputs() {
        let both = [false, true];
        let mut lanes_sets: Vec<Vec<Lane>> = vec![vec![]];
        for a in choices(1, 3, 3, 0, &both) {
            lanes_sets.push(vec![a.clone()]);
            for b in choices(2, 3, 3, 0, &both) {
                lanes_sets.push(vec![a.clone(), b]);
            }
        }
        for a in choices(1, 2, 2, 0, &[false]) {
            for b in choices(2, 2, 2, 0, &[false]) {
                for c in choices(3, 2, 2, 0, &both) {
                    lanes_sets.push(vec![a.clone(), b.clone(), c]);
                }
            }
        }
        let mut checked = 0;
        for lanes in &lanes_sets {
            for after in [None, Some(ch(1)), Some(ch(2)), Some(ch(3))] {
                for free in 0..=7 {
                    check(lanes, after, free, 0);
                    checked += 1;
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
    }

    /// Exhaustive on small inputs with borrowing (the work-conserving
    /// cap): up to 3 lanes, each borrow 0..=2 (0..=1 with three lanes,
    /// which have shorter queues), every start, 0..=6 free slots and 0..=6
    /// borrowable.
    #[test]
    fn exhaustive_small_inputs_with_borrowing() {
        let mut lanes_sets: Vec<Vec<Lane>> = Vec::new();
        let both = [false, true];
        for a in choices(1, 3, 2, 2, &both) {
            lanes_sets.push(vec![a.clone()]);
        }
        for a in choices(1, 2, 2, 2, &both) {
            for b in choices(2, 2, 2, 2, &[false]) {
                lanes_sets.push(vec![a.clone(), b]);
            }
        }
        for a in choices(1, 2, 1, 1, &[false]) {
            for b in choices(2, 1, 1, 1, &[false]) {
                for c in choices(3, 1, 1, 1, &[false]) {
                    lanes_sets.push(vec![a.clone(), b.clone(), c]);
                }
            }
        }
        let mut checked = 0;
        for lanes in &lanes_sets {
            for after in [None, Some(ch(1)), Some(ch(3))] {
                for free in 0..=6 {
                    for borrowable in [0, 1, 2, 4, 6] {
                        check(lanes, after, free, borrowable);
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
    }

    /// Checks one plan: never more than `free`, nothing twice, never more
    /// requests of a lane than its allowance plus its borrow, oldest first
    /// among a lane's requests; the plan is the plan without borrowing
    /// (round-robin within the allowances: no lane gets a second delivery
    /// before every lane that still could got one, and nothing left that
    /// could have gone when slots were left) followed by borrowed
    /// requests, only while fewer than `borrowable` are handed out in all,
    /// round-robin again, and nothing left that could have been borrowed
    /// when fewer than `min(free, borrowable)` went.
    fn check(lanes: &[Lane], after: Option<Uuid>, free: usize, borrowable: usize) {
        let p = plan(lanes, after, free, borrowable);
        let ctx =
            || format!("{lanes:?} after {after:?} free {free} borrowable {borrowable}: {p:?}");
        assert!(p.hand_out.len() <= free, "{}", ctx());
        let mut seen = HashSet::new();
        for &(i, j) in &p.hand_out {
            assert!(j < lanes[i].queue.len(), "{}", ctx());
            assert!(seen.insert((i, j)), "twice: {}", ctx());
        }
        let own: Vec<Lane> = lanes
            .iter()
            .map(|l| Lane {
                borrow: 0,
                ..l.clone()
            })
            .collect();
        let base = plan(&own, after, free, borrowable);
        let n = base.hand_out.len();
        assert_eq!(
            p.hand_out[..n],
            base.hand_out[..],
            "not the plan without borrowing first: {}",
            ctx()
        );
        if p.hand_out.len() > n {
            assert!(
                p.hand_out.len() <= borrowable,
                "borrowed into the reserve: {}",
                ctx()
            );
        }
        let limit = free.min(borrowable).max(n);
        for (i, l) in lanes.iter().enumerate() {
            let mine: Vec<usize> = p
                .hand_out
                .iter()
                .filter(|h| h.0 == i)
                .map(|h| h.1)
                .collect();
            let requests: Vec<usize> = mine.iter().copied().filter(|&j| l.queue[j]).collect();
            assert!(requests.len() <= l.allowance + l.borrow, "{}", ctx());
            if l.ordered {
                // Only the head, once: nothing behind it goes first.
                assert!(mine.iter().all(|&j| j == 0), "not the head: {}", ctx());
                let base_mine = base.hand_out.iter().filter(|h| h.0 == i).count();
                let could = l.queue.first().is_some_and(|&s| !s || l.allowance > 0);
                if n < free {
                    assert_eq!(base_mine, usize::from(could), "head left: {}", ctx());
                }
                let could = l
                    .queue
                    .first()
                    .is_some_and(|&s| !s || l.allowance + l.borrow > 0);
                if p.hand_out.len() < limit {
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
            let sends = l.queue.iter().filter(|&&s| s).count();
            let quiet = l.queue.len() - sends;
            if n < free {
                let base_mine = base.hand_out.iter().filter(|h| h.0 == i).count();
                assert_eq!(
                    base_mine,
                    quiet + sends.min(l.allowance),
                    "work left behind: {}",
                    ctx()
                );
            }
            if p.hand_out.len() < limit {
                assert_eq!(
                    mine.len(),
                    quiet + sends.min(l.allowance + l.borrow),
                    "a borrow left unused: {}",
                    ctx()
                );
            }
        }
        round_robin_in(lanes, &p.hand_out[..n], after, &ctx);
        round_robin_in(lanes, &p.hand_out[n..], base.last_served.or(after), &ctx);
    }

    /// Round-robin within `part`: by the time a lane gets its k-th
    /// delivery, every lane that ends with at least k got its (k-1)-th;
    /// the first goes to the first lane after `after` that got any.
    fn round_robin_in(
        lanes: &[Lane],
        part: &[(usize, usize)],
        after: Option<Uuid>,
        ctx: &dyn Fn() -> String,
    ) {
        let mut count = vec![0usize; lanes.len()];
        let total: Vec<usize> = (0..lanes.len())
            .map(|i| part.iter().filter(|h| h.0 == i).count())
            .collect();
        for &(i, _) in part {
            count[i] += 1;
            for (o, &c) in count.iter().enumerate() {
                if total[o] >= count[i] - 1 {
                    assert!(c + 1 >= count[i], "not round-robin: {}", ctx());
                }
            }
        }
        if let Some(&(i, _)) = part.first() {
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
    fn a_lane_borrows_idle_slots_beyond_its_allowance_but_not_the_reserve() {
        let lone = [Lane {
            borrow: 100,
            ..lane(1, 100, 4)
        }];
        // 16 slots, 15 borrowable (one kept free): 4 of its own, 11 borrowed.
        assert_eq!(plan(&lone, None, 16, 15).hand_out.len(), 15);
        // Nothing borrowable (the reserve is reached): its allowance only.
        assert_eq!(plan(&lone, None, 16, 0).hand_out.len(), 4);
        // An explicit cap never borrows.
        let capped = [lane(1, 100, 4)];
        assert_eq!(plan(&capped, None, 16, 15).hand_out.len(), 4);
        // Another channel's work within its allowance goes first, even into
        // the reserve.
        let lanes = [
            Lane {
                borrow: 100,
                ..lane(1, 100, 0)
            },
            lane(2, 3, 4),
        ];
        let p = plan(&lanes, None, 3, 0);
        assert_eq!(p.hand_out, vec![(1, 0), (1, 1), (1, 2)]);
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
    fn an_answered_delivery_frees_its_channel_but_stays_held_until_recorded() {
        let mut f = InFlight::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        f.insert(a, ch(1));
        f.insert(b, ch(1));
        assert_eq!(f.of_channel(&ch(1)), 2);
        assert_eq!(f.answered(&a), Some(ch(1)));
        assert_eq!(f.answered(&a), Some(ch(1)));
        assert_eq!(f.answered(&Uuid::from_u128(9)), None, "not in flight");
        assert_eq!(f.of_channel(&ch(1)), 1, "a's worker is free");
        assert_eq!(f.held_of(&ch(1)), 2, "both still in flight");
        assert!(f.holds(&a), "not read again before it is recorded");
        assert_eq!(f.len(), 2, "still in flight");
        assert_eq!(f.holding_workers(), 1, "only b holds a worker");
        assert_eq!(f.remove(&a), Some(ch(1)));
        assert_eq!(f.holding_workers(), 1);
        assert_eq!(f.of_channel(&ch(1)), 1, "released once only");
        assert_eq!(f.held_of(&ch(1)), 1);
        assert_eq!(f.remove(&b), Some(ch(1)));
        assert_eq!(f.of_channel(&ch(1)), 0);
        assert!(f.is_empty());
        assert_eq!(f.channels().count(), 0);
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
