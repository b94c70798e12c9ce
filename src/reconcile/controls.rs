//! The leader's view of the channels' delivery controls
//! (docs/delivery-controls.md): which channels are ordered, and each rate-limited
//! channel's window of request starts (`rate`). No I/O: the leader reads the
//! controls with each sweep's channels (`db::controls`), feeds in what it
//! hands out and what comes back, persists the windows this returns before
//! it hands out, and asks for each channel's `scheduler::Controls`.
//!
//! Only channels that have a control are kept here, so an unlimited,
//! unordered channel costs nothing: no write, no entry.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::controls::{Controls as Row, StoredWindow};
use crate::reconcile::rate::Window;
use crate::reconcile::scheduler::Controls;

/// One channel's controls as the leader keeps them.
#[derive(Debug, Clone)]
struct Entry {
    ordered: bool,
    /// Its window, while it is rate-limited (and after, while requests it
    /// charged are still in flight).
    window: Option<Window>,
    /// Whether it is rate-limited now.
    limited: bool,
}

/// Every controlled channel the leader knows of.
#[derive(Debug, Default)]
pub struct ControlState {
    channels: HashMap<Uuid, Entry>,
}

impl ControlState {
    /// The rate-limited channels among `rows` whose window this leader
    /// does not hold: their stored windows must be read for [`Self::refresh`].
    pub fn windows_missing(&self, rows: &[Row]) -> Vec<Uuid> {
        rows.iter()
            .filter(|r| r.rate_limit.is_some())
            .filter(|r| {
                self.channels
                    .get(&r.channel_id)
                    .is_none_or(|e| e.window.is_none())
            })
            .map(|r| r.channel_id)
            .collect()
    }

    /// A sweep found `ids` with due work; `rows` are the controls of those
    /// of them that have any, read at `now`, and `stored` the windows the
    /// last leader stored of [`Self::windows_missing`]. A channel met for
    /// the first time starts from its stored window (none stored: empty);
    /// one already known keeps its own (this leader's is the newer: it
    /// stores what it hands out); a channel of `ids` without a row has no
    /// control any more. Returns the channels whose window was made now:
    /// what they already have in flight must be charged to it
    /// ([`Self::charge_in_flight`]), so that a limit set on a busy channel
    /// counts the requests already out.
    pub fn refresh(
        &mut self,
        ids: &[Uuid],
        rows: Vec<Row>,
        stored: &HashMap<Uuid, StoredWindow>,
        now: DateTime<Utc>,
    ) -> Vec<Uuid> {
        let mut made = Vec::new();
        let with: HashSet<Uuid> = rows.iter().map(|r| r.channel_id).collect();
        for id in ids.iter().filter(|id| !with.contains(id)) {
            if let Some(e) = self.channels.get_mut(id) {
                e.ordered = false;
                e.limited = false;
            }
        }
        for row in rows {
            let e = self.channels.entry(row.channel_id).or_insert(Entry {
                ordered: false,
                window: None,
                limited: false,
            });
            e.ordered = row.ordered;
            e.limited = row.rate_limit.is_some();
            match (row.rate_limit, e.window.as_mut()) {
                (Some(limit), Some(w)) => w.set_limit(limit),
                (Some(limit), None) => {
                    let from = stored.get(&row.channel_id).map_or(&[][..], |w| &w[..]);
                    e.window = Some(Window::restore(limit, from, now));
                    made.push(row.channel_id);
                }
                (None, _) => {}
            }
        }
        self.channels
            .retain(|_, e| e.ordered || e.limited || e.window.as_ref().is_some_and(busy));
        made
    }

    /// Charges the channel's deliveries already in flight (`status_ids`)
    /// to its window, as if handed out now.
    pub fn charge_in_flight(&mut self, channel_id: &Uuid, status_ids: impl Iterator<Item = Uuid>) {
        if let Some(w) = self.window_mut(channel_id) {
            for id in status_ids {
                w.charge(id);
            }
        }
    }

    /// What limits the channel now, with `in_flight` of its deliveries out.
    pub fn of(&self, channel_id: &Uuid, now: DateTime<Utc>) -> Controls {
        match self.channels.get(channel_id) {
            None => Controls::default(),
            Some(e) => Controls {
                ordered: e.ordered,
                rate_left: e.window.as_ref().filter(|_| e.limited).map(|w| w.left(now)),
            },
        }
    }

    /// Whether the channel is ordered.
    pub fn is_ordered(&self, channel_id: &Uuid) -> bool {
        self.channels.get(channel_id).is_some_and(|e| e.ordered)
    }

    /// A request of the channel's delivery `status_id` is about to be handed
    /// out; true when the channel is rate-limited (its window must be
    /// stored before the hand-out).
    pub fn charge(&mut self, channel_id: &Uuid, status_id: Uuid) -> bool {
        match self.channels.get_mut(channel_id) {
            Some(Entry {
                window: Some(w),
                limited: true,
                ..
            }) => {
                w.charge(status_id);
                true
            }
            _ => false,
        }
    }

    /// A delivery charged was not handed out after all.
    pub fn uncharge(&mut self, channel_id: &Uuid, status_id: &Uuid) {
        if let Some(w) = self.window_mut(channel_id) {
            w.uncharge(status_id);
        }
    }

    /// The outcome of the channel's delivery `status_id` came back at `now`.
    pub fn finished(&mut self, channel_id: &Uuid, status_id: &Uuid, now: DateTime<Utc>) {
        if let Some(w) = self.window_mut(channel_id) {
            w.release(status_id, now);
        }
    }

    /// The channel's window as it must be stored, if it is rate-limited.
    pub fn stored(&self, channel_id: &Uuid) -> Option<Vec<Option<DateTime<Utc>>>> {
        let e = self.channels.get(channel_id)?;
        e.window.as_ref().filter(|_| e.limited).map(Window::stored)
    }

    /// Every rate-limited channel known.
    pub fn limited(&self) -> Vec<Uuid> {
        self.channels
            .iter()
            .filter(|(_, e)| e.limited && e.window.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// When the first of `channels` that may send nothing now because of
    /// its rate limit may send again.
    pub fn next_free<'a>(
        &self,
        channels: impl Iterator<Item = &'a Uuid>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        channels
            .filter_map(|id| self.channels.get(id))
            .filter(|e| e.limited)
            .filter_map(|e| e.window.as_ref()?.next_free(now))
            .min()
    }

    /// Forgets what no longer counts at `now`, and channels with nothing
    /// left to remember.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        for e in self.channels.values_mut() {
            if let Some(w) = e.window.as_mut() {
                w.prune(now);
            }
        }
        self.channels
            .retain(|_, e| e.ordered || e.limited || e.window.as_ref().is_some_and(busy));
    }

    /// Forgets the channels `keep` rejects (their shard was given up: the
    /// next leader of it stores the windows from then on; if this one leads
    /// it again, it starts from what is stored).
    pub fn retain(&mut self, keep: impl Fn(&Uuid) -> bool) {
        self.channels.retain(|id, _| keep(id));
    }

    fn window_mut(&mut self, channel_id: &Uuid) -> Option<&mut Window> {
        self.channels.get_mut(channel_id)?.window.as_mut()
    }
}

/// Whether a window still holds requests in flight (a limit removed while
/// they were out: their outcomes are still expected).
fn busy(w: &Window) -> bool {
    w.stored().iter().any(Option::is_none)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::RateLimit;

    fn row(id: Uuid, rate: Option<u32>, ordered: bool) -> Row {
        Row {
            channel_id: id,
            rate_limit: rate.map(|count| RateLimit { count, per_secs: 1 }),
            ordered,
        }
    }

    #[test]
    fn uncontrolled_channels_are_not_kept_and_not_limited() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let now = Utc::now();
        let mut c = ControlState::default();
        let rows = vec![row(a, Some(2), false), row(b, None, true)];
        assert_eq!(c.windows_missing(&rows), vec![a]);
        c.refresh(&[a, b], vec![row(a, Some(2), false)], &HashMap::new(), now);
        assert!(c.windows_missing(&rows).is_empty(), "a's window is held");
        assert_eq!(c.of(&b, now), Controls::default());
        assert!(!c.charge(&b, Uuid::from_u128(9)), "no window for b");
        assert_eq!(c.of(&a, now).rate_left, Some(2));
        assert!(c.charge(&a, Uuid::from_u128(10)));
        assert_eq!(c.of(&a, now).rate_left, Some(1));
        assert_eq!(c.stored(&a).map(|s| s.len()), Some(1));
        assert_eq!(c.limited(), vec![a]);
    }

    #[test]
    fn a_removed_limit_stops_limiting_and_a_known_window_survives_a_refresh() {
        let a = Uuid::from_u128(1);
        let now = Utc::now();
        let mut c = ControlState::default();
        let stored = HashMap::from([(a, vec![None])]);
        c.refresh(&[a], vec![row(a, Some(2), true)], &stored, now);
        assert!(c.is_ordered(&a));
        assert_eq!(c.of(&a, now).rate_left, Some(1), "the stored one counts");
        assert!(!c.charge(&Uuid::from_u128(99), Uuid::from_u128(10)));
        c.channels.clear();
        c.refresh(&[a], vec![row(a, Some(1), true)], &HashMap::new(), now);
        assert!(c.charge(&a, Uuid::from_u128(10)));
        c.refresh(&[a], vec![row(a, Some(1), true)], &stored, now);
        assert_eq!(c.of(&a, now).rate_left, Some(0), "own window kept");
        c.refresh(&[a], vec![], &HashMap::new(), now);
        assert_eq!(c.of(&a, now), Controls::default());
        assert!(!c.is_ordered(&a));
        assert_eq!(c.stored(&a), None, "nothing to store once unlimited");
        c.finished(&a, &Uuid::from_u128(10), now);
        c.prune(now);
        assert!(c.channels.is_empty());
    }
}
