//! Fencing a silent leader: what a standby does when the instance holding
//! a lock can no longer be heard.
//!
//! A leader cut off from PostgreSQL without a RST or FIN (a NAT that
//! forgets the flow, a stuck proxy, a dropped route) keeps its session, and
//! with it its session-level advisory lock, until TCP gives up on it. It
//! can no longer renew anything, though: not its lease (`reconcile::lease`:
//! its workers stop sending within `LEASE` of its last good check), and not
//! the heartbeat of its `leader` row (`db::leaders`, at least once a
//! second). So a standby that finds the row of a lock key it wants with a
//! heartbeat older than `reconciler.takeover_after` ends that session with
//! `pg_terminate_backend`, which releases the lock, takes the lock and
//! leads (after `TAKEOVER_GRACE`, as after any unclean stop).
//!
//! It ends a backend only when [`verdict`] says so: the backend is the
//! recorded leader of that very key, it holds that key's advisory lock
//! right now, it is not this connection, and its heartbeat is stale. The
//! row is read `FOR UPDATE` in the transaction that ends the backend, so a
//! heartbeat that commits meanwhile is seen, and one sent later waits.
//!
//! Ending another role's session needs membership in `pg_signal_backend`
//! (or the same role), and a superuser's session only a superuser may end.
//! Without that privilege the standby logs one clear line saying what to
//! grant ([`PRIVILEGE_WARN_EVERY`] at most), and waits for TCP to end the
//! session (`db::tcp`). Which keys to look at is the caller's business
//! (`lock` for the single lock, `shard::set` for the shards).

use std::time::{Duration, Instant};

use crate::db::leaders::{self, Seen};
use crate::db::DbError;

/// How long the standby waits for an ended backend to exit (and release
/// its locks) before it tries the lock; if it takes longer, the next try
/// (within a second) finds the lock free.
pub const TERMINATE_WAIT: Duration = Duration::from_secs(2);

/// At most this often, the line saying the role may not end the session.
pub const PRIVILEGE_WARN_EVERY: Duration = Duration::from_secs(60);

/// From the heartbeat ages of the other leaders' rows: whether any is
/// stale under `takeover_after`, and how long until the freshest of the
/// others would be (pure).
pub fn look(ages: &[Duration], takeover_after: Duration) -> (bool, Option<Duration>) {
    let stale = ages.iter().any(|a| *a >= takeover_after);
    let next = ages
        .iter()
        .filter(|a| **a < takeover_after)
        .map(|a| takeover_after - *a)
        .min();
    (stale, next)
}

/// What a standby does about one leader row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The row is this connection's own.
    Own,
    /// The heartbeat is recent: the leader is alive.
    Alive,
    /// Stale, but its backend does not hold that key's lock: nothing to
    /// end (the lock is free, or held by something that is not the
    /// recorded leader, which is never ended).
    NotHolder,
    /// Stale, and its backend holds the lock: end that backend.
    Fence,
}

/// The decision for `seen` with `takeover_after` (pure).
pub fn verdict(seen: &Seen, takeover_after: Duration) -> Verdict {
    if seen.own {
        Verdict::Own
    } else if seen.age < takeover_after {
        Verdict::Alive
    } else if !seen.holds_lock {
        Verdict::NotHolder
    } else {
        Verdict::Fence
    }
}

/// A standby's fencing, with the memory its rate-limited warning needs.
#[derive(Debug)]
pub struct Fencer {
    takeover_after: Duration,
    warned: Option<Instant>,
    /// The sessions this standby ended: lock key and backend pid.
    ended: Vec<(i64, i32)>,
    /// When the freshest-looking leader seen last would turn stale.
    next_stale: Option<Instant>,
}

impl Fencer {
    /// Fences leaders whose heartbeat is older than `takeover_after`.
    pub fn new(takeover_after: Duration) -> Fencer {
        Fencer {
            takeover_after,
            warned: None,
            ended: Vec::new(),
            next_stale: None,
        }
    }

    /// Ends the session of every stale leader of `keys`, on `client`;
    /// returns how many it ended (their locks are free now). A connection
    /// failure is an error; anything else is logged, and nothing is ended.
    pub fn fence(&mut self, client: &mut postgres::Client, keys: &[i64]) -> Result<usize, DbError> {
        if keys.is_empty() {
            return Ok(0);
        }
        // A plain read first (one round trip): the transaction that locks
        // the rows runs only when a heartbeat is stale.
        let ages = match leaders::others_ages(client, keys) {
            Ok(ages) => ages,
            Err(e) if e.is_connection_lost() => return Err(e),
            Err(e) => {
                log::warn!("cannot look for a silent leader: {e}");
                return Ok(0);
            }
        };
        let (stale, next) = look(&ages, self.takeover_after);
        self.next_stale = next.map(|left| Instant::now() + left);
        if !stale {
            return Ok(0);
        }
        match self.fence_in_tx(client, keys) {
            Ok(n) => Ok(n),
            Err(Refused::Db(e)) if e.is_connection_lost() => Err(e),
            Err(Refused::Db(e)) => {
                log::warn!("cannot fence a silent leader: {e}");
                Ok(0)
            }
            Err(Refused::Privilege(seen)) => {
                self.warn_privilege(client, &seen);
                Ok(0)
            }
        }
    }

    fn fence_in_tx(
        &mut self,
        client: &mut postgres::Client,
        keys: &[i64],
    ) -> Result<usize, Refused> {
        let mut tx = client
            .transaction()
            .map_err(|e| Refused::Db(DbError::query("fencing a silent leader")(e)))?;
        let stale = leaders::stale_for_update(&mut tx, keys, self.takeover_after)?;
        let mut ended = 0;
        for seen in stale {
            if verdict(&seen, self.takeover_after) != Verdict::Fence {
                continue;
            }
            log::warn!(
                "the leader of lock key {} ({}, backend pid {}) has not renewed its lease for {:.1} s (reconciler.takeover_after = {}): ending its session",
                seen.key,
                seen.instance,
                seen.backend_pid,
                seen.age.as_secs_f64(),
                humantime::format_duration(self.takeover_after)
            );
            match leaders::terminate(&mut tx, seen.backend_pid, TERMINATE_WAIT) {
                Ok(true) => {
                    log::info!(
                        "ended the silent leader's session (backend pid {}): lock key {} is free",
                        seen.backend_pid,
                        seen.key
                    );
                    ended += 1;
                    self.ended.retain(|(k, _)| *k != seen.key);
                    self.ended.push((seen.key, seen.backend_pid));
                }
                Ok(false) => log::warn!(
                    "the silent leader's backend (pid {}) did not exit within {} ms; trying the lock again shortly",
                    seen.backend_pid,
                    TERMINATE_WAIT.as_millis()
                ),
                Err(e)
                    if e.code() == Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
                {
                    return Err(Refused::Privilege(seen));
                }
                Err(e) => return Err(Refused::Db(DbError::query("ending a silent leader's session")(e))),
            }
        }
        tx.commit()
            .map_err(|e| Refused::Db(DbError::query("fencing a silent leader")(e)))?;
        Ok(ended)
    }

    /// When the leader seen at the last look turns stale if it does not
    /// renew its heartbeat: the standby looks again then, not a poll
    /// interval later.
    pub fn next_stale(&self) -> Option<Instant> {
        self.next_stale
    }

    /// Whether this standby ended the session of backend `pid` as the
    /// silent leader of `key` (forgotten once asked). Such a leader's
    /// workers stopped before its session was ended, so its successor need
    /// not wait `TAKEOVER_GRACE` (`reconcile::lease::renewal_limit`).
    pub fn ended(&mut self, key: i64, pid: i32) -> bool {
        let before = self.ended.len();
        self.ended.retain(|e| *e != (key, pid));
        self.ended.len() < before
    }

    /// One line, at most every [`PRIVILEGE_WARN_EVERY`]: what to grant.
    fn warn_privilege(&mut self, client: &mut postgres::Client, seen: &Seen) {
        let again = self
            .warned
            .is_some_and(|t| t.elapsed() < PRIVILEGE_WARN_EVERY);
        let roles = client
            .query_one(
                "SELECT current_user::text,
                        (SELECT r.rolname::text FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
                         WHERE a.pid = $1),
                        coalesce((SELECT r.rolsuper FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
                                  WHERE a.pid = $1), false)",
                &[&seen.backend_pid],
            )
            .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1), r.get::<_, bool>(2)));
        let line = match roles {
            Ok((me, theirs, superuser)) => privilege_line(seen, &me, theirs.as_deref(), superuser),
            Err(e) => format!(
                "cannot end the session of the silent leader of lock key {} (backend pid {}): this role lacks the privilege ({e}); grant it pg_signal_backend (see docs/operations.md, \"Database roles\")",
                seen.key, seen.backend_pid
            ),
        };
        if again {
            log::debug!("{line}");
        } else {
            log::error!("{line}");
            self.warned = Some(Instant::now());
        }
    }
}

/// Why a fencing transaction ended without fencing.
enum Refused {
    Db(DbError),
    Privilege(Seen),
}

impl From<DbError> for Refused {
    fn from(e: DbError) -> Refused {
        Refused::Db(e)
    }
}

/// The line that tells the operator what to grant (pure).
pub fn privilege_line(seen: &Seen, me: &str, theirs: Option<&str>, superuser: bool) -> String {
    let who = theirs.map_or_else(|| "another role".to_string(), |r| format!("role {r:?}"));
    let fix = if superuser {
        format!(
            "it runs as the superuser {who}, whose sessions only a superuser may end: run the daemon as a role that is not a superuser (see docs/operations.md, \"Database roles\")"
        )
    } else {
        format!(
            "as a superuser run: GRANT pg_signal_backend TO \"{me}\"; (or run every instance as the same role; see docs/operations.md, \"Database roles\")"
        )
    };
    format!(
        "cannot fence the silent leader of lock key {} ({}, backend pid {}, heartbeat {:.0} s old): role {me:?} may not end a session of {who}; {fix}. Standing by until TCP ends its session (database.tcp_user_timeout)",
        seen.key,
        seen.instance,
        seen.backend_pid,
        seen.age.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_look_finds_stale_heartbeats_and_when_the_freshest_turns_stale() {
        let t = Duration::from_secs(10);
        let s = Duration::from_secs;
        assert_eq!(look(&[], t), (false, None));
        assert_eq!(look(&[s(2)], t), (false, Some(s(8))));
        assert_eq!(look(&[s(2), s(7)], t), (false, Some(s(3))));
        assert_eq!(look(&[s(10)], t), (true, None));
        assert_eq!(look(&[s(11), s(9)], t), (true, Some(s(1))));
    }

    fn seen(age_s: u64, holds_lock: bool, own: bool) -> Seen {
        Seen {
            key: 42,
            backend_pid: 7,
            instance: "notification-reconciler lock h pid 1".into(),
            age: Duration::from_secs(age_s),
            holds_lock,
            own,
        }
    }

    const AFTER: Duration = Duration::from_secs(10);

    #[test]
    fn a_stale_leader_holding_its_lock_is_fenced() {
        assert_eq!(verdict(&seen(11, true, false), AFTER), Verdict::Fence);
        assert_eq!(verdict(&seen(10, true, false), AFTER), Verdict::Fence);
    }

    #[test]
    fn a_leader_that_renewed_recently_is_left_alone() {
        assert_eq!(verdict(&seen(9, true, false), AFTER), Verdict::Alive);
        assert_eq!(verdict(&seen(0, true, false), AFTER), Verdict::Alive);
    }

    #[test]
    fn a_backend_that_does_not_hold_the_key_is_never_ended() {
        // The row outlived its leader, or the recorded pid now belongs to
        // some other session: ending it would fence the wrong process.
        assert_eq!(
            verdict(&seen(3600, false, false), AFTER),
            Verdict::NotHolder
        );
    }

    #[test]
    fn a_standby_never_ends_its_own_session() {
        assert_eq!(verdict(&seen(3600, true, true), AFTER), Verdict::Own);
    }

    #[test]
    fn the_privilege_line_says_what_to_grant() {
        let line = privilege_line(&seen(12, true, false), "standby", Some("leader"), false);
        assert!(
            line.contains("GRANT pg_signal_backend TO \"standby\""),
            "{line}"
        );
        assert!(line.contains("backend pid 7"), "{line}");
        assert!(line.contains("Database roles"), "{line}");
        let line = privilege_line(&seen(12, true, false), "standby", Some("postgres"), true);
        assert!(line.contains("only a superuser may end"), "{line}");
        assert!(!line.contains("GRANT"), "{line}");
    }
}
