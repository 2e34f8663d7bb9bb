//! Which partition an event goes to. Events with a key go to `fnv1a_32(key) % partitions`,
//! so every client (in any language) that follows PROTOCOL.md sends a key to the same
//! partition. Events without a key stick to one partition per batch, chosen round-robin, so
//! batches fill up (sticky partitioning).

use std::sync::atomic::{AtomicU32, Ordering};

/// FNV-1a, 32 bits (offset basis 2166136261, prime 16777619): the one definition, shared with
/// the node, which hashes group ids with it.
pub use vltava_messages::group_records::fnv1a_32;

/// The partition of a keyed event.
#[must_use]
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    fnv1a_32(key) % partitions.max(1)
}

/// The sticky choice for events without a key.
#[derive(Debug, Default)]
pub struct StickyPartitioner {
    next: AtomicU32,
}

impl StickyPartitioner {
    /// The partition for the next batch of keyless events.
    pub fn next(&self, partitions: u32) -> u32 {
        self.next.fetch_add(1, Ordering::Relaxed) % partitions.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_published_test_vectors() {
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
        assert_eq!(partition_for_key(b"foobar", 6), 0xbf9c_f968 % 6);
    }
}
