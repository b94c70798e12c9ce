//! Which due deliveries the leader hands out now. Pure, like `state`: the
//! page of due deliveries, what is in flight and how many slots are free go
//! in; the decision comes out. No I/O, no clock.
//!
//! Today's rule: keyset order (oldest first), never a delivery that is
//! already in flight (it was handed out and its outcome is not recorded
//! yet) or parked, and no more than the free slots. Where the page cannot be taken in
//! full, the sweep resumes after the last delivery looked at, so nothing is
//! skipped and nothing is handed out twice.

use std::collections::HashSet;

use uuid::Uuid;

/// A due delivery as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The delivery status id (one event to one channel).
    pub status_id: Uuid,
    /// Its channel.
    pub channel_id: Uuid,
}

/// The registry of deliveries handed out whose outcome the leader has not
/// heard yet (queued or being attempted), and of those parked after a
/// failed reconcile until the next tick. Kept by the main thread only.
#[derive(Debug, Default)]
pub struct InFlight {
    handed_out: HashSet<Uuid>,
    parked: HashSet<Uuid>,
}

impl InFlight {
    /// Records a delivery as handed out.
    pub fn insert(&mut self, status_id: Uuid) {
        self.handed_out.insert(status_id);
    }

    /// Forgets a delivery whose outcome arrived; false if it was not in
    /// flight.
    pub fn remove(&mut self, status_id: &Uuid) -> bool {
        self.handed_out.remove(status_id)
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
        self.handed_out.contains(status_id) || self.parked.contains(status_id)
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

/// What to do with one page of candidates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Indexes into the page of the candidates to hand out, in order.
    pub hand_out: Vec<usize>,
    /// How many candidates from the start of the page were looked at
    /// (handed out or skipped as in flight); the sweep resumes after the
    /// last of them.
    pub consumed: usize,
}

/// Decides which of `page` (in keyset order) to hand out with `free` slots.
pub fn plan(page: &[Candidate], in_flight: &InFlight, free: usize) -> Plan {
    let mut plan = Plan::default();
    for (i, c) in page.iter().enumerate() {
        if in_flight.holds(&c.status_id) {
            plan.consumed = i + 1;
            continue;
        }
        if plan.hand_out.len() == free {
            break;
        }
        plan.hand_out.push(i);
        plan.consumed = i + 1;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(n: u128) -> Candidate {
        Candidate {
            status_id: Uuid::from_u128(n),
            channel_id: Uuid::from_u128(1000 + n % 3),
        }
    }

    fn page(n: u128) -> Vec<Candidate> {
        (1..=n).map(cand).collect()
    }

    #[test]
    fn everything_fits_everything_is_handed_out_in_order() {
        let p = plan(&page(4), &InFlight::default(), 10);
        assert_eq!(p.hand_out, vec![0, 1, 2, 3]);
        assert_eq!(p.consumed, 4);
    }

    #[test]
    fn no_free_slot_hands_out_nothing_and_consumes_nothing_new() {
        let p = plan(&page(3), &InFlight::default(), 0);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn in_flight_deliveries_are_skipped_but_consumed() {
        let mut f = InFlight::default();
        f.insert(cand(1).status_id);
        f.park(cand(3).status_id);
        let p = plan(&page(4), &f, 10);
        assert_eq!(p.hand_out, vec![1, 3]);
        assert_eq!(p.consumed, 4);
    }

    #[test]
    fn a_full_plan_stops_before_the_first_candidate_that_does_not_fit() {
        let p = plan(&page(5), &InFlight::default(), 2);
        assert_eq!(p.hand_out, vec![0, 1]);
        assert_eq!(p.consumed, 2, "the sweep must resume at the third");
    }

    #[test]
    fn an_in_flight_candidate_right_after_the_last_slot_is_passed_over() {
        // Slots run out at index 1; index 2 is in flight, so the sweep may
        // resume after it; index 3 is the first that did not fit.
        let mut f = InFlight::default();
        f.insert(cand(3).status_id);
        let p = plan(&page(4), &f, 2);
        assert_eq!(p.hand_out, vec![0, 1]);
        assert_eq!(p.consumed, 3);
    }

    /// Exhaustive on small inputs: every subset of a page of 5 in flight,
    /// every number of free slots: never hands out an in-flight one, never
    /// more than `free`, keeps order, and every candidate before `consumed`
    /// is either handed out or in flight (nothing skipped).
    #[test]
    fn exhaustive_small_pages() {
        let pg = page(5);
        for mask in 0u32..32 {
            let mut f = InFlight::default();
            // Bit i: candidate i is held (in flight for even i, parked for
            // odd i; the plan must treat both alike).
            for (i, c) in pg.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    if i % 2 == 0 {
                        f.insert(c.status_id);
                    } else {
                        f.park(c.status_id);
                    }
                }
            }
            for free in 0..=6 {
                let p = plan(&pg, &f, free);
                assert!(p.hand_out.len() <= free);
                assert!(p.hand_out.windows(2).all(|w| w[0] < w[1]));
                assert!(p.consumed <= pg.len());
                for (i, c) in pg.iter().enumerate().take(p.consumed) {
                    assert!(
                        p.hand_out.contains(&i) != f.holds(&c.status_id),
                        "mask {mask:05b} free {free}: candidate {i}"
                    );
                }
                let not_in_flight = pg.iter().filter(|c| !f.holds(&c.status_id)).count();
                assert_eq!(p.hand_out.len(), free.min(not_in_flight));
                if p.hand_out.len() < free {
                    assert_eq!(p.consumed, pg.len(), "room left: the page is consumed");
                }
            }
        }
    }

    #[test]
    fn the_registry_counts_and_forgets() {
        let mut f = InFlight::default();
        let id = cand(1).status_id;
        assert!(f.is_empty());
        f.insert(id);
        f.insert(id);
        assert_eq!(f.len(), 1);
        assert!(f.remove(&id));
        assert!(!f.remove(&id));
        assert!(f.is_empty());
    }

    #[test]
    fn parked_deliveries_are_held_but_not_in_flight_until_unparked() {
        let mut f = InFlight::default();
        let id = cand(2).status_id;
        f.park(id);
        assert!(f.holds(&id));
        assert_eq!(f.len(), 0, "a parked delivery takes no slot");
        assert_eq!(plan(&page(3), &f, 3).hand_out, vec![0, 2]);
        f.unpark_all();
        assert!(!f.holds(&id));
        assert_eq!(plan(&page(3), &f, 3).hand_out, vec![0, 1, 2]);
    }
}
