//! The leader's background pruner: while an instance leads (`run`, not
//! `once`), one thread of the leader's scope removes the finished events
//! older than `retention.keep_finished` in small steps (`db::prune`), so
//! that the main thread keeps handing out work. It takes a connection of
//! the workers' pool for each sweep (one no other thread holds meanwhile)
//! and gives it back between sweeps, so an instance still opens at most
//! `pool_size + 2` connections; the lock connection stays the main
//! thread's.
//!
//! A sweep starts when leading starts and then every `reconciler.interval`;
//! its cut-off is fixed when it starts. Between two steps the thread rests
//! a quarter as long as the step took ([`REST_DIVISOR`]), so at most four
//! fifths of one database core go to pruning however large the backlog,
//! and the other core of a small machine stays with the deliveries
//! (docs/benchmarks.md, scenario 11, has runs resting half a step and a
//! quarter). It stops when the sender of its
//! `stop` channel is dropped (the leader stops handing out), after at most
//! the step in progress; the scope joins it before the lock is released.
//! What a step removed and how long it took go to the hooks (`/metrics`).

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use postgres::Client;

use crate::config::Config;
use crate::db::{self, prune, Pool};
use crate::reconcile::hooks::Hooks;

/// Between two steps the pruner rests the step's duration divided by this.
/// On the 2-vCPU benchmark machine, quiet, a quarter cleared a 5,000,000
/// backlog at 24,200 events/s with 200 new events/s going on, their p99
/// 1.7–1.8× of it without pruning; half a step cleared 18,000 events/s,
/// under the 20,000/s issue 23 asks for (docs/benchmarks.md, scenario 11).
pub const REST_DIVISOR: u32 = 4;

/// Whether `stop`'s sender is gone (or it sent): time to stop.
fn stopping(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Empty))
}

/// Waits `d`, or less when told to stop; returns whether to go on.
fn rest(stop: &Receiver<()>, d: Duration) -> bool {
    matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Timeout))
}

/// Prunes until `stop` says so. Does nothing when retention is off.
pub fn run(config: &Config, pool: &Pool, stop: &Receiver<()>, hooks: &dyn Hooks) {
    let keep = config.retention.keep_finished;
    if keep.is_zero() {
        return;
    }
    loop {
        match pool.get() {
            Err(e) => log::warn!("pruning: {}", db::DbError::Pool(e)),
            Ok(mut conn) => match sweep(&mut conn.client, keep, stop, hooks) {
                Ok(removed) if removed.events > 0 => log::info!(
                    "pruned {} finished events older than {} ({} delivery statuses, {} attempts)",
                    removed.events,
                    crate::config::format_duration(keep),
                    removed.delivery_statuses,
                    removed.attempts
                ),
                Ok(_) => {}
                Err(e) => {
                    log::warn!("pruning: {e}");
                    // The pool drops it instead of handing it out again.
                    conn.discard = e.is_connection_lost();
                }
            },
        }
        if !rest(stop, config.reconciler.interval) {
            return;
        }
    }
}

/// One sweep to `now - keep`, resting between steps.
fn sweep(
    client: &mut Client,
    keep: Duration,
    stop: &Receiver<()>,
    hooks: &dyn Hooks,
) -> Result<prune::Removed, db::DbError> {
    let cutoff = prune::cutoff(client, keep)?;
    prune::sweep(client, cutoff, prune::BATCH, &mut |step| {
        hooks.pruned(&step.removed, step.took);
        !stopping(stop) && (step.looked_at < prune::BATCH || rest(stop, step.took / REST_DIVISOR))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_when_the_sender_is_dropped() {
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        assert!(!stopping(&rx));
        assert!(rest(&rx, Duration::from_millis(1)));
        drop(tx);
        assert!(stopping(&rx));
        assert!(!rest(&rx, Duration::from_secs(3600)));
    }
}
