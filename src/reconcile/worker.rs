//! The loop each worker thread runs: take jobs from the hand-off channel
//! until it is closed, reconcile each job's delivery, and queue its outcome
//! for the group commit (`recorder`), which reports it back to the main
//! thread once it is written (freeing its entry in the in-flight registry).
//! What needs no write (not due, withheld, a panic) is reported at once.
//!
//! A worker holds no database connection while it decides and sends
//! (`delivery::worker::decide`: the page brought everything); the
//! recorder threads take pooled connections to write the groups. So requests in flight are
//! bounded by `reconciler.workers`, and connections by
//! `database.pool_size`, each on its own; a pooled connection still serves
//! one worker at a time, and no transaction is held across an HTTP call.
//!
//! A request goes out only while the leader's lease is fresh (the context's
//! `may_send`, see `lease`); after a stop or a halt, deliveries still queued
//! are dropped unattempted (they stay due). A panic while reconciling one
//! delivery is caught, logged with the event id, reported; the worker goes
//! on and the delivery stays due.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crossbeam_channel::{Receiver, Sender};

use crate::delivery::worker::{self, Context, Decision, Reconciled, StatusOutcome};
use crate::reconcile::hooks::Hooks;
use crate::reconcile::job::{Back, Done, Finished, Job};
use crate::reconcile::recorder::{panic_text, Recorder};
use crate::state::RandomJitter;

/// The stack size of a worker thread: 256 KiB in release builds (what
/// ships), where a worker's deepest paths (a TLS handshake through rustls,
/// reading a large response, name resolution through the C library, a
/// symbolised backtrace) run in a quarter of it; the daemon's workers touch
/// about 36 KiB (docs/benchmarks.md "Concurrency"). Debug builds (the test
/// suite) have far bigger frames: a TLS handshake overflows 128 KiB there,
/// so they get 512 KiB. Only touched pages are resident; below 2 MiB no
/// stack can be backed by a transparent huge page either.
pub const STACK_SIZE: usize = if cfg!(debug_assertions) {
    512 * 1024
} else {
    256 * 1024
};

/// What a worker shares with the others (all read-only, atomic or behind
/// the recorder's lock).
pub struct Shared<'a> {
    /// Sender, policy and the lease check.
    pub ctx: &'a Context<'a>,
    /// Observers.
    pub hooks: &'a dyn Hooks,
    /// The group commit every outcome goes through.
    pub recorder: &'a Recorder<'a>,
}

/// Reconciles every job until the channel closes, reporting each delivery
/// into `done` (directly, or through the recorder once its outcome is
/// written). `stopped` says to drop what is still queued.
pub fn work(
    jobs: &Receiver<Job>,
    done: &Sender<Back>,
    shared: &Shared<'_>,
    stopped: &dyn Fn() -> bool,
) {
    let mut jitter = RandomJitter;
    for job in jobs.iter() {
        let status_id = job.delivery.status.id;
        let finished = if stopped() {
            Finished::Dropped
        } else {
            let d = &job.delivery;
            let decided = catch_unwind(AssertUnwindSafe(|| {
                shared.hooks.before_delivery(d);
                worker::decide(shared.ctx, d, job.cutoff, &mut jitter)
            }));
            match decided {
                Ok(Decision::Nothing(StatusOutcome::Withheld)) => Finished::Dropped,
                Ok(Decision::Nothing(outcome)) => Finished::Reconciled(Reconciled {
                    outcome,
                    next_attempt_at: None,
                    first_attempt_latency: None,
                    verdict: None,
                    took: None,
                }),
                Ok(Decision::Write(pending)) => {
                    // Before the outcome is queued, so that the main thread
                    // hears it before the report of the write.
                    let answered = Back::Answered {
                        status_id,
                        verdict: pending.verdict,
                    };
                    if done.send(answered).is_err() {
                        return;
                    }
                    shared.recorder.submit(job.delivery, pending, done);
                    continue;
                }
                Err(panic) => {
                    log::error!(
                        "worker panicked on event {} ({}) to channel {}; it stays due: {}",
                        d.event.id,
                        d.event.namespace,
                        d.status.target.id,
                        panic_text(&*panic)
                    );
                    Finished::Panicked
                }
            }
        };
        let report = Back::Done(Done {
            status_id,
            finished,
        });
        if done.send(report).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread with `stack` bytes of stack, as workers run.
    fn on_stack<T: Send + 'static>(stack: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn(f)
            .expect("spawn a thread")
            .join()
            .expect("the thread panicked")
    }

    /// The deepest things a worker's thread may do besides delivering (TLS
    /// and HTTP are covered by the integration tests, which run on real
    /// workers): a symbolised backtrace, as a panic hook prints it with
    /// `RUST_BACKTRACE`, and a name lookup through the C library. Both fit
    /// in a quarter of [`STACK_SIZE`], the margin docs/benchmarks.md gives;
    /// a stack overflow aborts this test binary.
    #[test]
    fn a_quarter_of_the_worker_stack_holds_a_symbolised_backtrace_and_a_name_lookup() {
        let (backtrace, _found) = on_stack(STACK_SIZE / 4, || {
            let backtrace = std::backtrace::Backtrace::force_capture().to_string();
            let found = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80))
                .map(Iterator::count)
                .unwrap_or(0);
            (backtrace, found)
        });
        assert!(!backtrace.is_empty());
    }
}
