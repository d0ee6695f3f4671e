//! Hash maps keyed by small integers, hashed with one multiplication instead of std's SipHash,
//! which costs more per lookup than the rest of a command's bookkeeping in the tables that look
//! keys up for every command: a connection's tasks (by id, ITT, iSER read token), an NVMe
//! queue's commands (by CID, backend I/O id), an engine thread's residents, an iSER connection's
//! arena registrations.
//!
//! [`IntHasher`] resists no chosen keys, and needs not: every map that uses it is keyed either by
//! numbers we hand out ourselves (task ids, I/O ids, read tokens, resident ids, arena ids), which a
//! peer cannot choose, or by a peer's own tags (ITTs, CIDs) in a map of that one connection,
//! bounded by its command window or queue size. A peer that picks colliding tags therefore slows
//! only its own connection's lookups, to a scan of at most that many entries, never another's.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by small integers (see the module documentation for when that is safe).
pub type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// One multiplication per integer key.
#[derive(Debug, Default, Clone, Copy)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        // The product's high half depends on every bit of the key; rotated down, it picks the
        // bucket, and hashbrown's 7-bit tag comes from the well-mixed bits above it.
        self.0.rotate_left(32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash<K: Hash>(key: K) -> u64 {
        BuildHasherDefault::<IntHasher>::default().hash_one(key)
    }

    #[test]
    fn consecutive_keys_spread_over_buckets_and_tags() {
        // Low bits pick the bucket, the top 7 the tag: both must differ between neighbours.
        let buckets: std::collections::HashSet<u64> =
            (0u32..1024).map(|k| hash(k) & 1023).collect();
        assert!(buckets.len() > 600, "{} buckets of 1024", buckets.len());
        let tags: std::collections::HashSet<u64> = (0u16..1024).map(|k| hash(k) >> 57).collect();
        assert!(tags.len() > 100, "{} tags of 128", tags.len());
    }

    #[test]
    fn a_map_finds_what_it_holds() {
        let mut map: IntMap<u64, u64> = IntMap::default();
        for k in 0..10_000u64 {
            map.insert(k * 4096, k);
        }
        assert!((0..10_000u64).all(|k| map.get(&(k * 4096)) == Some(&k)));
    }
}
