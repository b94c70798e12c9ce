//! Shards: how several instances share the work (docs/architecture.md "Shards").
//!
//! With `reconciler.shards = K` every channel belongs to one shard,
//! [`shard_of`] its id, and each shard has its own advisory lock key,
//! [`shard_key`]. An instance leads the shards whose locks it holds, all on
//! its one lock connection, and hands out only their deliveries. With K = 1
//! there is one shard whose key is `derive_key(lock_key)`, the key of
//! earlier versions, and nothing else changes.
//!
//! The hash, the same in Rust and SQL (`channel_shard(uuid, integer)` in the
//! schema, migration 0005): the channel id's first 4 bytes read as an
//! unsigned big-endian 32-bit integer, modulo K. In SQL that is
//! `('x' || left(id::text, 8))::bit(32)::bigint % K` (the text form of a
//! uuid starts with those 4 bytes in hex). Channel ids are random (v4), so
//! channels spread evenly.
//!
//! This module holds the pure parts: the hash, the keys and the balance
//! decision ([`balance`]). The main thread's shard state while it leads is
//! [`set`]; the SQL is `db::shards`.

pub mod balance;
pub mod set;

use uuid::Uuid;

use crate::lock::derive_key;

pub use crate::config::{validate_shards, MAX_SHARDS};

/// The shard of channel `channel` among `shards` (≥ 1).
pub fn shard_of(channel: &Uuid, shards: u32) -> u32 {
    let b = channel.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) % shards.max(1)
}

/// The text shard `shard` of `shards`'s lock key is derived from: the lock
/// key itself when there is one shard (today's key), else
/// `"<lock_key>.shard.<shard>"`.
pub fn shard_key_text(lock_key: &str, shard: u32, shards: u32) -> String {
    if shards <= 1 {
        lock_key.to_string()
    } else {
        format!("{lock_key}.shard.{shard}")
    }
}

/// The advisory lock key of shard `shard` of `shards`.
pub fn shard_key(lock_key: &str, shard: u32, shards: u32) -> i64 {
    derive_key(&shard_key_text(lock_key, shard, shards))
}

/// Every shard's lock key, indexed by shard number.
pub fn shard_keys(lock_key: &str, shards: u32) -> Vec<i64> {
    (0..shards.max(1))
        .map(|s| shard_key(lock_key, s, shards))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_keeps_todays_lock_key() {
        let key = "notification.event_handler.reconcile_lock";
        assert_eq!(shard_key(key, 0, 1), derive_key(key));
        assert_eq!(shard_keys(key, 1), vec![derive_key(key)]);
    }

    #[test]
    fn every_shard_has_its_own_key_none_of_them_todays() {
        let key = "k";
        let keys = shard_keys(key, 64);
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), 64);
        assert!(!keys.contains(&derive_key(key)));
        assert_eq!(keys[3], derive_key("k.shard.3"));
    }

    #[test]
    fn the_hash_is_the_first_four_bytes_mod_k() {
        let id = Uuid::parse_str("0000000a-0000-4000-8000-000000000000").unwrap();
        assert_eq!(shard_of(&id, 12), 10);
        assert_eq!(shard_of(&id, 1), 0);
        let id = Uuid::parse_str("ffffffff-ffff-4fff-bfff-ffffffffffff").unwrap();
        assert_eq!(shard_of(&id, 1024), 0xffff_ffff % 1024);
    }

    #[test]
    fn random_channels_spread_over_the_shards() {
        let mut counts = [0u32; 12];
        for _ in 0..12_000 {
            counts[shard_of(&Uuid::new_v4(), 12) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (700..1300).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn shard_counts_outside_the_range_are_refused() {
        assert_eq!(validate_shards(1), Ok(1));
        assert_eq!(validate_shards(1024), Ok(1024));
        for bad in [0, -1, 1025, i64::MAX] {
            assert!(validate_shards(bad).is_err(), "{bad}");
        }
    }
}
