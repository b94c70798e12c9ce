//! The words every front door and the service share about how a command
//! ends: the exit code `once` uses when another instance holds the lock,
//! and the usage error (exit 2). A leaf: it imports nothing of the crate,
//! so `cli`, `sink` and `service` can all use it without importing each
//! other.

/// Exit code of `once` when another instance holds the lock.
pub const EXIT_LOCK_HELD: u8 = 75;

/// A problem with what the user asked for (bad argument, unknown id): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
