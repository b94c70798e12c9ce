//! The parallel reconciliation pass (DESIGN.md "Shape"): the main thread
//! holds the leader lock on its dedicated connection and pages due events
//! into a bounded channel; `workers` OS threads, each with its own pooled
//! connection, reconcile them; the scope joins every worker, and only then is
//! the lock released — on every path.
//!
//! `pass` is the orchestration, `worker` the loop each thread runs, `report`
//! the per-pass tally. What happens to one event is `delivery::worker`.

pub mod pass;
pub mod report;
pub mod worker;

pub use pass::{run_pass, Hooks, PassOutcome, Reconciler};
pub use report::Report;
