//! Advisory lock keys: the 64-bit key PostgreSQL locks, derived from its
//! text (the leader's `reconciler.lock_key`, each shard's, `migrate`'s).
//! Here, at the bottom of the house, because both `db::migrate` and the
//! leader's `lock` need it.

use sha2::{Digest, Sha256};

/// Derives the 64-bit advisory lock key from its text (stable across
/// versions and machines).
pub fn derive_key(text: &str) -> i64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}
