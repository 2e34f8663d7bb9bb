//! Newtypes for the numbers that must never be mixed up.
//!
//! A bare `u64` could be an offset, a byte position or a count; these types make the compiler
//! tell them apart. None of them has a sentinel value: absence is `Option`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The logical index of a record in a partition's log. Offsets start at 0 and only grow.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset `n` records after this one.
    #[must_use]
    pub const fn plus(self, n: u64) -> Offset {
        Offset(self.0 + n)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The epoch of a partition's leadership: it grows by one each time a new leader is chosen.
/// A `u32` lasts about 136 years at one leader change per second.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct LeaderEpoch(pub u32);

impl fmt::Display for LeaderEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A broker's identity in the cluster.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u32);

/// A partition's index within its topic.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct PartitionId(pub u32);

/// An idempotent producer's identity, handed out by the broker. On the wire it is an `i64`
/// whose value -1 means "no producer"; in code that is `Option<ProducerId>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProducerId(pub u64);

/// The epoch of a producer id; a newer epoch fences older incarnations of the same producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProducerEpoch(pub u16);

/// The sequence number of a batch's first record, per producer and partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sequence(pub u32);

impl Sequence {
    /// The sequence `n` records after this one. Sequences wrap from `SEQUENCE_MAX` to 0, as
    /// they are i32 in the batch header.
    #[must_use]
    pub const fn plus(self, n: u32) -> Sequence {
        Sequence(((self.0 as u64 + n as u64) % (crate::limits::SEQUENCE_MAX as u64 + 1)) as u32)
    }
}
