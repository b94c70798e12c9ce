//! Running the reconciler: `once` (one sweep and its report) and `run` (the
//! daemon: lead or stand by, with signals, systemd notifications and
//! metrics). Leading itself is `reconcile`; this module decides when to try
//! and what the outside world is told about it.

pub mod daemon;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod once;
pub mod progress;
pub mod signals;
