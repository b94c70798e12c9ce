//! Running the reconciler: `once` (one pass and its report) and `run` (the
//! daemon loop with signals, systemd notifications and metrics). The pass
//! itself is `reconcile`; this module decides when passes run and what the
//! outside world is told about them.

pub mod daemon;
pub mod metrics;
pub mod notify;
pub mod once;
pub mod progress;
pub mod signals;
