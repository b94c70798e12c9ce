//! The balance decision, pure: from who is alive and who holds which shard,
//! which shards this instance takes and which it gives up. No I/O; the
//! main thread feeds it what it read from PostgreSQL (`db::shards`) and
//! acts on the answer (`shard::set`).
//!
//! The rules, with K shards and n live instances (this one included):
//!
//! - **fair share** `ceil(K / n)`: an instance never keeps more; one with
//!   more gives the extra up (cleanly: `shard::set` drains them first);
//! - one with fewer takes free shards up to its fair share (only up to
//!   `floor(K / n)` while another instance has fewer than that);
//! - with no shard free, an instance below `floor(K / n)` would starve
//!   behind others at `ceil` (12 shards, 5 instances: 3+3+3+3+0); then the
//!   instance holding the most (ties: the greatest name) gives one up, so
//!   every instance ends between `floor` and `ceil`;
//! - nothing more is given up while a give-up is still draining, so one
//!   round's answer never overshoots;
//! - each instance prefers its own stretch of shards (starting at
//!   `index × K / n` in the sorted list of live instances), so instances
//!   starting together rarely try to take the same shard; when they do, the
//!   advisory lock decides and the loser retries at its next round.
//!
//! A shard held by a connection that is not a live instance (an old
//! version, a `once` run) counts as held and is left alone.

use std::collections::{BTreeMap, BTreeSet};

/// What the decision looks at.
#[derive(Debug, Clone)]
pub struct View<'a> {
    /// K, the number of shards.
    pub shards: u32,
    /// This instance's name.
    pub me: &'a str,
    /// The live instances' names (this one may or may not be listed).
    pub live: &'a [String],
    /// Per shard (index = shard number): the holder's instance name, or
    /// None when the shard's lock is free.
    pub holders: &'a [Option<String>],
    /// This instance's shards being given up (still held, draining).
    pub draining: &'a BTreeSet<u32>,
}

/// What to do this round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Free shards to try to lock, best first.
    pub take: Vec<u32>,
    /// Held shards to give up (drain, then unlock).
    pub give_up: Vec<u32>,
}

/// The fair share: `ceil(shards / instances)`.
pub fn fair_share(shards: u32, instances: usize) -> u32 {
    let n = instances.max(1) as u32;
    shards.div_ceil(n)
}

/// Decides one round.
pub fn decide(view: &View<'_>) -> Decision {
    let k = view.shards.max(1);
    let mut instances: BTreeSet<&str> = view.live.iter().map(String::as_str).collect();
    instances.insert(view.me);
    let n = instances.len();
    let fair = fair_share(k, n);
    let floor = k / n as u32;
    let index = instances.iter().position(|i| *i == view.me).unwrap_or(0) as u32;
    let start = (u64::from(index) * u64::from(k) / n as u64) as u32;
    // Distance from this instance's preferred stretch.
    let rank = |s: &u32| (s + k - start) % k;

    let mine: Vec<u32> = (0..k)
        .filter(|s| held_by(view, *s, view.me) && !view.draining.contains(s))
        .collect();
    let held = mine.len() as u32;
    let mut decision = Decision::default();
    if held > fair {
        let mut by_rank = mine.clone();
        by_rank.sort_by_key(|s| std::cmp::Reverse(rank(s)));
        decision.give_up = by_rank.into_iter().take((held - fair) as usize).collect();
        return decision;
    }
    let free: Vec<u32> = (0..k)
        .filter(|s| view.holders.get(*s as usize).is_none_or(|h| h.is_none()))
        .collect();
    let mut counts: BTreeMap<&str, u32> = instances.iter().map(|i| (*i, 0)).collect();
    for h in view.holders.iter().flatten() {
        if let Some(c) = counts.get_mut(h.as_str()) {
            *c += 1;
        }
    }
    counts.insert(view.me, held);
    let starving = counts
        .iter()
        .any(|(name, &c)| *name != view.me && c < floor);
    // Below the fair share: take free shards, but while another instance
    // starves, only up to `floor`, leaving the rest to it (else a shard
    // given up for it would come straight back).
    let target = if starving { floor.min(fair) } else { fair };
    if held < target {
        let mut by_rank = free;
        by_rank.sort_by_key(rank);
        decision.take = by_rank.into_iter().take((target - held) as usize).collect();
        return decision;
    }
    // Give one up only if another live instance starves while no shard is
    // free, and this one is the most loaded.
    if !free.is_empty() || !view.draining.is_empty() || held <= floor {
        return decision;
    }
    let top = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
        .map(|(name, _)| *name);
    if starving && top == Some(view.me) {
        if let Some(s) = mine.iter().max_by_key(|s| rank(s)) {
            decision.give_up.push(*s);
        }
    }
    decision
}

fn held_by(view: &View<'_>, shard: u32, who: &str) -> bool {
    view.holders
        .get(shard as usize)
        .is_some_and(|h| h.as_deref() == Some(who))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("i{i}")).collect()
    }

    fn decide_for(
        k: u32,
        me: &str,
        live: &[String],
        holders: &[Option<String>],
        draining: &[u32],
    ) -> Decision {
        let draining: BTreeSet<u32> = draining.iter().copied().collect();
        decide(&View {
            shards: k,
            me,
            live,
            holders,
            draining: &draining,
        })
    }

    #[test]
    fn fair_share_is_the_ceiling() {
        assert_eq!(fair_share(12, 3), 4);
        assert_eq!(fair_share(12, 5), 3);
        assert_eq!(fair_share(3, 4), 1);
        assert_eq!(fair_share(1, 1), 1);
        assert_eq!(fair_share(12, 0), 12);
    }

    #[test]
    fn a_lone_instance_takes_every_shard() {
        let d = decide_for(4, "i0", &[], &[None, None, None, None], &[]);
        assert_eq!(d.take, vec![0, 1, 2, 3]);
        assert!(d.give_up.is_empty());
    }

    #[test]
    fn instances_prefer_their_own_stretch() {
        let live = names(3);
        let free = vec![None; 12];
        assert_eq!(
            decide_for(12, "i0", &live, &free, &[]).take,
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            decide_for(12, "i1", &live, &free, &[]).take,
            vec![4, 5, 6, 7]
        );
        assert_eq!(
            decide_for(12, "i2", &live, &free, &[]).take,
            vec![8, 9, 10, 11]
        );
    }

    #[test]
    fn an_instance_above_its_fair_share_gives_the_extra_up() {
        let live = names(2);
        let holders = vec![Some("i0".to_string()); 4];
        let d = decide_for(4, "i0", &live, &holders, &[]);
        assert!(d.take.is_empty());
        assert_eq!(d.give_up.len(), 2);
        // It keeps its own stretch (0, 1) and gives the other's up.
        assert_eq!(d.give_up, vec![3, 2]);
    }

    #[test]
    fn nothing_more_is_given_up_while_a_give_up_drains() {
        let live = names(2);
        let holders = vec![Some("i0".to_string()); 4];
        let d = decide_for(4, "i0", &live, &holders, &[2, 3]);
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn a_dead_instances_shards_are_taken_by_the_survivors() {
        // i2 died: its shards are free, two live instances share 12.
        let live = names(2);
        let mut holders: Vec<Option<String>> = Vec::new();
        for s in 0..12 {
            holders.push(match s / 4 {
                0 => Some("i0".into()),
                1 => Some("i1".into()),
                _ => None,
            });
        }
        let a = decide_for(12, "i0", &live, &holders, &[]);
        let b = decide_for(12, "i1", &live, &holders, &[]);
        assert_eq!(a.take.len(), 2);
        assert_eq!(b.take.len(), 2);
        assert!(a.take.iter().all(|s| *s >= 8));
    }

    #[test]
    fn a_shard_held_by_an_unknown_connection_is_left_alone() {
        let holders = vec![Some("once".to_string()), None];
        let d = decide_for(2, "i0", &[], &holders, &[]);
        assert_eq!(d.take, vec![1]);
    }

    #[test]
    fn a_starving_instance_gets_a_shard_from_the_most_loaded() {
        // 12 shards, 5 instances: 3+3+3+3+0 is within ceil but leaves i4
        // idle; the most loaded (ties: greatest name) gives one up.
        let live = names(5);
        let holders: Vec<Option<String>> = (0..12).map(|s| Some(format!("i{}", s / 3))).collect();
        for me in ["i0", "i1", "i2"] {
            assert_eq!(
                decide_for(12, me, &live, &holders, &[]),
                Decision::default()
            );
        }
        let d = decide_for(12, "i3", &live, &holders, &[]);
        assert_eq!(d.give_up.len(), 1);
    }

    /// Runs rounds of every instance in turn (a give-up drains by the next
    /// round) until nothing changes; returns the holders.
    fn converge(k: u32, live: &[String], mut holders: Vec<Option<String>>) -> Vec<Option<String>> {
        let mut draining: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for round in 0..200 {
            let mut changed = false;
            for me in live {
                let mine = draining.remove(me).unwrap_or_default();
                for s in &mine {
                    holders[*s as usize] = None; // drained: unlocked
                    changed = true;
                }
                let d = decide(&View {
                    shards: k,
                    me,
                    live,
                    holders: &holders,
                    draining: &BTreeSet::new(),
                });
                for s in d.take {
                    assert!(holders[s as usize].is_none(), "took a held shard");
                    holders[s as usize] = Some(me.clone());
                    changed = true;
                }
                if !d.give_up.is_empty() {
                    draining.insert(me.clone(), d.give_up.into_iter().collect());
                    changed = true;
                }
            }
            if !changed {
                return holders;
            }
            assert!(round < 199, "no convergence for k={k} n={}", live.len());
        }
        holders
    }

    fn assert_balanced(k: u32, live: &[String], holders: &[Option<String>]) {
        let n = live.len();
        let (lo, hi) = (k / n as u32, fair_share(k, n));
        for me in live {
            let c = holders.iter().filter(|h| h.as_deref() == Some(me)).count() as u32;
            assert!(
                c >= lo && c <= hi,
                "k={k} n={n}: {me} holds {c}: {holders:?}"
            );
        }
        assert!(
            holders.iter().all(Option::is_some),
            "k={k} n={n}: a shard is unled"
        );
    }

    #[test]
    fn every_combination_converges_to_a_balance_from_any_start() {
        for k in 1..=20u32 {
            for n in 1..=6usize {
                let live = names(n);
                // From nothing held.
                let h = converge(k, &live, vec![None; k as usize]);
                assert_balanced(k, &live, &h);
                // From one instance holding everything (the others joined).
                let h = converge(k, &live, vec![Some("i0".into()); k as usize]);
                assert_balanced(k, &live, &h);
                // After the last instance died: its shards free.
                if n > 1 {
                    let survivors = names(n - 1);
                    let gone = format!("i{}", n - 1);
                    let h: Vec<Option<String>> =
                        h.into_iter().map(|x| x.filter(|x| *x != gone)).collect();
                    let h = converge(k, &survivors, h);
                    assert_balanced(k, &survivors, &h);
                }
            }
        }
    }

    #[test]
    fn a_balanced_state_is_stable() {
        let live = names(3);
        let h = converge(12, &live, vec![None; 12]);
        for me in &live {
            let d = decide(&View {
                shards: 12,
                me,
                live: &live,
                holders: &h,
                draining: &BTreeSet::new(),
            });
            assert_eq!(d, Decision::default(), "{me}");
        }
    }
}
