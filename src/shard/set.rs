//! The shards this instance leads, as the main thread tracks them while it
//! leads with `reconciler.shards` > 1: which shard locks it holds, which of
//! them it hands out (active), which it is giving up (draining), and how
//! many deliveries of each are in flight.
//!
//! ```text
//! free ──try lock──> waiting (previous leader unclean: TAKEOVER_GRACE) ──> active
//!                    └─(clean)─────────────────────────────────────────> active
//! active ──balance says give up──> draining (nothing handed out)
//! draining ──none of its deliveries in flight──> leader row removed, unlocked
//! ```
//!
//! Each balance round (every [`ROUND_EVERY`], on the lock connection) first
//! fences the silent leaders of shards it does not hold (`fence`), then reads
//! the live instances and the shard holders from PostgreSQL and asks
//! `shard::balance` what to take and give up. A shard is handed out from
//! only after its lock is held and, when its previous leader died, after
//! the same grace the single lock uses, so the dead leader's lease has run
//! out (`reconcile::lease`). It is unlocked only when none of its
//! deliveries is in flight, so its next leader cannot send one twice.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use postgres::GenericClient;
use uuid::Uuid;

use super::balance::{self, View};
use super::{shard_keys, shard_of};
use crate::db::{leaders, shards as db_shards, DbError};
use crate::lock::TAKEOVER_GRACE;
use crate::lock::{self, LeaderLock};

/// How often the balance round runs while leading (a dead instance's shards
/// are taken within this plus [`TAKEOVER_GRACE`]).
pub const ROUND_EVERY: Duration = Duration::from_millis(250);

/// Where one shard stands for this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotHeld,
    /// Locked; handed out from at this instant (takeover grace).
    Waiting(Instant),
    Active,
    Draining,
}

/// What a round changed, for the main thread.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// A shard became active: sweep again to find its deliveries.
    pub activated: bool,
    /// A shard stopped being handed out: drop its unread deliveries.
    pub deactivated: bool,
}

/// The shards of this instance.
#[derive(Debug)]
pub struct ShardSet {
    k: u32,
    keys: Vec<i64>,
    me: String,
    state: Vec<State>,
    in_flight: HashMap<Uuid, u32>,
    counts: Vec<usize>,
    next_round: Instant,
}

impl ShardSet {
    /// The shards of `lock_key` split `k` ways, none held.
    pub fn new(lock_key: &str, k: u32) -> ShardSet {
        let k = k.max(1);
        ShardSet {
            k,
            keys: shard_keys(lock_key, k),
            me: lock::app_name("lock"),
            state: vec![State::NotHeld; k as usize],
            in_flight: HashMap::new(),
            counts: vec![0; k as usize],
            next_round: Instant::now(),
        }
    }

    /// K.
    pub fn count(&self) -> u32 {
        self.k
    }

    /// The shards handed out from, for the due query.
    pub fn active(&self) -> Vec<i32> {
        (0..self.k)
            .filter(|s| self.state[*s as usize] == State::Active)
            .map(|s| s as i32)
            .collect()
    }

    /// Shards whose lock is held (active, waiting or draining).
    pub fn held(&self) -> usize {
        self.state.iter().filter(|s| **s != State::NotHeld).count()
    }

    /// Whether deliveries to `channel` may be handed out.
    pub fn hands_out(&self, channel: &Uuid) -> bool {
        self.state[shard_of(channel, self.k) as usize] == State::Active
    }

    /// A delivery to `channel` was handed out.
    pub fn handed(&mut self, status_id: Uuid, channel: &Uuid) {
        let s = shard_of(channel, self.k);
        if self.in_flight.insert(status_id, s).is_none() {
            self.counts[s as usize] += 1;
        }
    }

    /// A delivery's outcome came back.
    pub fn finished(&mut self, status_id: &Uuid) {
        if let Some(s) = self.in_flight.remove(status_id) {
            self.counts[s as usize] = self.counts[s as usize].saturating_sub(1);
        }
    }

    /// Starting to lead: connects (recording the instance) and takes this
    /// instance's shards, `once` every free one, `run` its fair share.
    /// Whether it holds any. A connection found dead on reuse earns one
    /// retry on a fresh one; after a failure no shard is held.
    pub fn start(
        &mut self,
        lock: &mut LeaderLock,
        once: bool,
        stop: &AtomicBool,
    ) -> Result<bool, DbError> {
        let reused = lock.has_connection();
        let attempt = |set: &mut ShardSet, lock: &mut LeaderLock| {
            lock.connect()?;
            if once {
                set.take_all(lock, &|| stop.load(Relaxed))
            } else {
                set.round(lock).map(|_| ())
            }
        };
        let mut result = attempt(self, lock);
        if let Err(e) = &result {
            if reused && e.is_connection_lost() {
                log::debug!("lock connection was stale ({e}); reconnecting");
                lock.forget_connection();
                self.state.fill(State::NotHeld);
                result = attempt(self, lock);
            }
        }
        match result {
            Ok(()) => Ok(self.held() > 0),
            Err(e) => {
                // Drops every shard lock taken so far with the connection.
                lock.forget_connection();
                self.state.fill(State::NotHeld);
                Err(e)
            }
        }
    }

    /// Unfinished deliveries of the active shards due by `cutoff`.
    pub fn count_due(
        &self,
        client: &mut impl GenericClient,
        cutoff: DateTime<Utc>,
    ) -> Result<i64, DbError> {
        db_shards::count_due_in(client, cutoff, self.k, &self.active())
    }

    /// When the earliest unfinished delivery of the active shards not due
    /// by `cutoff` falls due.
    pub fn next_due_after(
        &self,
        client: &mut impl GenericClient,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, DbError> {
        db_shards::next_due_after_in(client, cutoff, self.k, &self.active())
    }

    /// Whether a balance round is due.
    pub fn round_due(&self) -> bool {
        Instant::now() >= self.next_round
    }

    /// When the next round or grace end is due, for the main thread's wait.
    pub fn next_due(&self) -> Instant {
        let grace = self.state.iter().filter_map(|s| match s {
            State::Waiting(t) => Some(*t),
            _ => None,
        });
        grace.fold(self.next_round, Instant::min)
    }

    /// `run`: one balance round on the lock connection. Checks the
    /// recorded shard count, reads who is alive and who holds what, takes
    /// and gives up shards, unlocks drained ones, ends graces.
    pub fn round(&mut self, lock: &mut LeaderLock) -> Result<Changes, DbError> {
        self.next_round = Instant::now() + ROUND_EVERY;
        let mut changes = self.settle(lock)?;
        // A shard whose leader went silent (stale heartbeat, lock still
        // held) is freed first, so that this round can take it (`fence`).
        let others: Vec<i64> = (0..self.k as usize)
            .filter(|s| self.state[*s] == State::NotHeld)
            .map(|s| self.keys[s])
            .collect();
        lock.fence(&others)?;
        let client = lock.client_mut()?;
        db_shards::ensure_recorded(client, self.k)?;
        let live = db_shards::live_instances(client)?;
        let holders = db_shards::holders(client, &self.keys)?;
        let draining: BTreeSet<u32> = (0..self.k)
            .filter(|s| self.state[*s as usize] == State::Draining)
            .collect();
        // What this instance believes it holds is what it holds.
        let holders: Vec<Option<String>> = holders
            .into_iter()
            .enumerate()
            .map(|(s, h)| match self.state[s] {
                State::NotHeld => h.filter(|h| *h != self.me),
                _ => Some(self.me.clone()),
            })
            .collect();
        let decision = balance::decide(&View {
            shards: self.k,
            me: &self.me,
            live: &live,
            holders: &holders,
            draining: &draining,
        });
        for s in decision.give_up {
            if self.state[s as usize] != State::NotHeld {
                log::info!(
                    "giving up shard {s} of {} ({} live instances): draining {} in flight",
                    self.k,
                    live.len().max(1),
                    self.counts[s as usize]
                );
                self.state[s as usize] = State::Draining;
                changes.deactivated = true;
            }
        }
        for s in decision.take {
            changes.activated |= self.take(lock, s, live.len().max(1))?;
        }
        let settled = self.settle(lock)?;
        changes.activated |= settled.activated;
        Ok(changes)
    }

    /// `once`: takes every free shard, waits out the grace of any whose
    /// last leader did not stop cleanly (stopping early when `stopped`).
    pub fn take_all(
        &mut self,
        lock: &mut LeaderLock,
        stopped: &dyn Fn() -> bool,
    ) -> Result<(), DbError> {
        db_shards::ensure_recorded(lock.client_mut()?, self.k)?;
        for s in 0..self.k {
            self.take(lock, s, 1)?;
        }
        while self
            .state
            .iter()
            .any(|s| matches!(s, State::Waiting(t) if *t > Instant::now()))
            && !stopped()
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.settle(lock)?;
        Ok(())
    }

    /// Tries to lock shard `s`; returns whether it became active now.
    fn take(&mut self, lock: &mut LeaderLock, s: u32, live: usize) -> Result<bool, DbError> {
        let key = self.keys[s as usize];
        if !lock.try_lock_key(key)? {
            return Ok(false);
        }
        let previous = leaders::claim(lock.client_mut()?, key, &self.me)?;
        if let Some(pid) = previous.filter(|pid| lock.fenced(key, *pid)) {
            log::info!(
                "took shard {s} of {} ({live} live instances) from its silent leader (backend pid {pid}), fenced by this instance: handing out at once",
                self.k
            );
            self.state[s as usize] = State::Active;
            Ok(true)
        } else if previous.is_some() {
            log::info!(
                "took shard {s} of {} ({live} live instances); its last leader did not stop cleanly: handing out in {} ms",
                self.k,
                TAKEOVER_GRACE.as_millis()
            );
            self.state[s as usize] = State::Waiting(Instant::now() + TAKEOVER_GRACE);
            Ok(false)
        } else {
            log::info!("took shard {s} of {} ({live} live instances)", self.k);
            self.state[s as usize] = State::Active;
            Ok(true)
        }
    }

    /// Ends graces that are over and unlocks drained shards.
    pub fn settle(&mut self, lock: &mut LeaderLock) -> Result<Changes, DbError> {
        let mut changes = Changes::default();
        for s in 0..self.k as usize {
            match self.state[s] {
                State::Waiting(t) if t <= Instant::now() => {
                    self.state[s] = State::Active;
                    changes.activated = true;
                }
                State::Draining if self.counts[s] == 0 => {
                    let key = self.keys[s];
                    leaders::release(lock.client_mut()?, key)?;
                    lock.unlock_key(key)?;
                    self.state[s] = State::NotHeld;
                    log::info!(
                        "gave up shard {s} of {}: nothing in flight, unlocked",
                        self.k
                    );
                }
                _ => {}
            }
        }
        Ok(changes)
    }

    /// Updates the leader row of every held shard with its in-flight count.
    pub fn heartbeat(
        &self,
        lock: &mut LeaderLock,
        channels: &serde_json::Value,
    ) -> Result<(), DbError> {
        let client = lock.client_mut()?;
        let mut rows = Vec::new();
        for s in 0..self.k as usize {
            if self.state[s] != State::NotHeld {
                // Each shard's row carries its own channels' state.
                let mine: serde_json::Map<String, serde_json::Value> = channels
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(id, _)| {
                        id.parse::<Uuid>()
                            .is_ok_and(|id| super::shard_of(&id, self.k) as usize == s)
                    })
                    .map(|(id, v)| (id.clone(), v.clone()))
                    .collect();
                let mine = serde_json::Value::Object(mine);
                rows.push((self.keys[s], self.counts[s], mine));
            }
        }
        // One statement for them all: it runs every second.
        leaders::heartbeat_many(client, &rows)
    }

    /// A clean stop: every held shard's leader row removed (the caller
    /// unlocks them all after the workers are joined).
    pub fn release_rows(&mut self, lock: &mut LeaderLock) -> Result<(), DbError> {
        let client = lock.client_mut()?;
        for s in 0..self.k as usize {
            if self.state[s] != State::NotHeld {
                leaders::release(client, self.keys[s])?;
                log::info!("gave up shard {s} of {}: stopping", self.k);
            }
        }
        self.state.fill(State::NotHeld);
        Ok(())
    }

    /// Whether shard `s` of this set is handed out from (tests).
    pub fn is_active(&self, s: u32) -> bool {
        self.state.get(s as usize) == Some(&State::Active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_follow_hand_outs_and_outcomes() {
        let mut set = ShardSet::new("k", 4);
        let channel = Uuid::new_v4();
        let s = shard_of(&channel, 4) as usize;
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        set.handed(a, &channel);
        set.handed(a, &channel); // twice the same: counted once
        set.handed(b, &channel);
        assert_eq!(set.counts[s], 2);
        set.finished(&a);
        set.finished(&a);
        assert_eq!(set.counts[s], 1);
        set.finished(&b);
        assert_eq!(set.counts[s], 0);
    }

    #[test]
    fn nothing_is_handed_out_before_a_shard_is_active() {
        let mut set = ShardSet::new("k", 2);
        let channel = Uuid::new_v4();
        assert!(!set.hands_out(&channel));
        assert!(set.active().is_empty());
        let s = shard_of(&channel, 2) as usize;
        set.state[s] = State::Waiting(Instant::now() + TAKEOVER_GRACE);
        assert!(!set.hands_out(&channel));
        set.state[s] = State::Active;
        assert!(set.hands_out(&channel));
        assert_eq!(set.active(), vec![s as i32]);
        set.state[s] = State::Draining;
        assert!(!set.hands_out(&channel));
        assert_eq!(set.held(), 1);
    }
}
