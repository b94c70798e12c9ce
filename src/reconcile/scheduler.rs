//! Which due deliveries the leader hands out now. Pure, like `state`: the
//! page of due deliveries, what is in flight and how many slots are free go
//! in; the decision comes out. No I/O, no clock.
//!
//! Today's rule: keyset order (oldest first), never a delivery that is
//! already in flight (it was handed out and its outcome is not recorded
//! yet), and no more than the free slots. Where the page cannot be taken in
//! full, the sweep resumes after the last delivery looked at, so nothing is
//! skipped and nothing is handed out twice.

use std::collections::HashMap;

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
/// heard yet (queued or being attempted). Kept by the main thread only.
#[derive(Debug, Default)]
pub struct InFlight {
    by_status: HashMap<Uuid, Uuid>,
}

impl InFlight {
    /// Records a delivery as handed out.
    pub fn insert(&mut self, c: Candidate) {
        self.by_status.insert(c.status_id, c.channel_id);
    }

    /// Forgets a delivery whose outcome arrived; false if it was not in
    /// flight.
    pub fn remove(&mut self, status_id: &Uuid) -> bool {
        self.by_status.remove(status_id).is_some()
    }

    /// Whether the delivery is in flight.
    pub fn contains(&self, status_id: &Uuid) -> bool {
        self.by_status.contains_key(status_id)
    }

    /// How many deliveries are in flight.
    pub fn len(&self) -> usize {
        self.by_status.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.by_status.is_empty()
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
        if in_flight.contains(&c.status_id) {
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
        f.insert(cand(1));
        f.insert(cand(3));
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
        f.insert(cand(3));
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
            for (i, c) in pg.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    f.insert(*c);
                }
            }
            for free in 0..=6 {
                let p = plan(&pg, &f, free);
                assert!(p.hand_out.len() <= free);
                assert!(p.hand_out.windows(2).all(|w| w[0] < w[1]));
                assert!(p.consumed <= pg.len());
                for (i, c) in pg.iter().enumerate().take(p.consumed) {
                    assert!(
                        p.hand_out.contains(&i) != f.contains(&c.status_id),
                        "mask {mask:05b} free {free}: candidate {i}"
                    );
                }
                let not_in_flight = pg.len() - f.len();
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
        assert!(f.is_empty());
        f.insert(cand(1));
        f.insert(cand(1));
        assert_eq!(f.len(), 1);
        assert!(f.remove(&cand(1).status_id));
        assert!(!f.remove(&cand(1).status_id));
        assert!(f.is_empty());
    }
}
