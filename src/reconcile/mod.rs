//! Reconciling: the leader hands due deliveries to workers
//! (docs/architecture.md "The leader loop"). The main thread holds the
//! leader lock on its dedicated connection, pages due deliveries on it and hands
//! them over a bounded channel to `workers` OS threads; a worker sends,
//! queues the outcome for the group commit, and the worker that finds no
//! write in progress takes a pooled connection to write every queued
//! outcome in one statement (so workers may far outnumber connections);
//! each delivery is reported back to the main thread over a second channel
//! once recorded; the scope joins every worker, and only then is the lock
//! released, on every path.
//!
//! Imports run one way: `leader` → `worker` → `recorder` → `job`, `hooks`;
//! `pruner` and `report` use only `job` and `hooks`.
//!
//! - `leader`: the loop and its waits (`run` leads continuously, `once`
//!   makes one sweep), and the [`Reconciler`] both start from.
//! - `hooks`: what the leader tells its observers, and why it woke.
//! - `job`: the messages between the main thread and the workers.
//! - `scheduler`: pure: which due deliveries to hand out now (round-robin
//!   across channels, per-channel allowances), and the in-flight registry.
//! - `breaker`: pure: each channel's circuit breaker.
//! - `health`: the leader's per-channel state (breaker, failing since,
//!   auto-disable) and what it publishes of it.
//! - `controls`, `rate`: ordered channels and rate limits.
//! - `lease`: the lock watch, and the proof of it workers check before
//!   each attempt.
//! - `listener`: LISTEN on the wake channel, forwarded into a crossbeam
//!   channel.
//! - `worker`: the loop each worker thread runs.
//! - `recorder`: the group commit of outcomes.
//! - `pruner`: the thread that removes finished events older than
//!   `retention.keep_finished` while the instance leads.
//! - `report`: the tally of finished deliveries and its report.
//!
//! What happens to one delivery is `delivery::worker`.

pub mod breaker;
pub mod controls;
pub mod health;
pub mod hooks;
pub mod job;
pub mod leader;
pub mod lease;
pub mod listener;
pub mod pruner;
pub mod rate;
pub mod recorder;
pub mod report;
pub mod scheduler;
pub mod worker;

pub use hooks::{Hooks, NoHooks, WakeCause};
pub use leader::{PassOutcome, Reconciler};
pub use report::Report;
