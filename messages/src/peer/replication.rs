//! The replication kinds of the peer protocol, on the **data** connection:
//!
//! - `ReplicaFetch` (0x4020): a follower node's replica fetcher asks a leader node for the
//!   bytes past each partition's fetch offset, for all the partitions it follows there, in one
//!   request (a long poll while none has any). The answer carries the leader's stored batches
//!   unchanged, with its high watermark, log start and log end per partition.
//! - `OffsetForLeaderEpoch` (0x4021): a follower that starts to follow a leader asks where an
//!   epoch ends in the leader's log, to truncate what the leader does not have before it
//!   fetches.
//!
//! Both carry at most a fixed number of partitions, and the largest answer each allows fits one
//! frame (asserted at compile time below; the tests build the largest answers). PROTOCOL.md
//! sections 12.8 and 12.9 are the language-neutral specification.

use serde::{Deserialize, Serialize};

use super::{
    PeerBody, PeerProtocolError, check_at_most, check_count_at_most, check_number_at_most,
    check_response_error,
};
use crate::limits::{
    BATCH_BYTES_MAX, ERROR_MESSAGE_BYTES_MAX, FRAME_BYTES_MAX, TOPIC_NAME_BYTES_MAX,
};
use crate::protocol::{FRAME_HEADER_BYTES, ResponseError};
use crate::types::{LeaderEpoch, Offset, PartitionId};

#[cfg(test)]
pub(super) mod tests;

/// The longest a leader may hold a ReplicaFetch while no partition asked has bytes past its
/// fetch offset (the long poll), in milliseconds. A follower learns of new data at most this
/// late only when its request arrived just before the data; the wait mostly saves empty round
/// trips. 1 s keeps it well under the peer link's request timeouts, and lets a follower notice
/// a leader change (its next request is refused with `NotLeader` or `FencedLeaderEpoch`)
/// within about a second.
pub const REPLICA_FETCH_WAIT_MS_MAX: u32 = 1_000;

/// The most partitions one ReplicaFetch request may name (and its answer list): the
/// partitions one follower node follows on one leader node travel together, split over
/// several requests past this. It equals the client protocol's `PARTITIONS_PER_REQUEST_MAX`.
pub const REPLICA_FETCH_PARTITIONS_MAX: usize = 4_096;

/// The largest `bytes_max` a follower may ask for: the record bytes of one answer over all its
/// partitions, apart from the one batch the first partition with data gets even past it.
///
/// 1 MiB, because the largest answer must fit one frame (`FRAME_BYTES_MAX`, 8 MiB): 4096
/// answer entries at their widest take about 3 MiB (`REPLICA_FETCH_ANSWER_FIELDS_BYTES_MAX`
/// plus the longest topic name and error message each), one batch past the budget up to
/// `BATCH_BYTES_MAX` (4 MiB), which leaves about 1.03 MiB for the budget itself (asserted
/// below). At a millisecond's round trip that is still about 1 GB/s per follower and leader.
pub const REPLICA_FETCH_BYTES_MAX: u32 = 1024 * 1024;

/// The most record bytes one ReplicaFetch answer carries over all its partitions: the largest
/// budget plus one whole batch past it. A decoded answer with more is refused.
pub const REPLICA_FETCH_RECORDS_BYTES_MAX: u32 = REPLICA_FETCH_BYTES_MAX + BATCH_BYTES_MAX;

/// The largest encoding of one ReplicaFetch answer entry other than its topic name, its error
/// message and its record bytes: field names (about 80 bytes), the partition, three offsets
/// of 9 bytes, the `bin` header of the records and an error map with every extra. Measured at
/// 221 bytes with a 28-byte error name (a test checks the bound); names may take 64 bytes, and
/// 384 leaves room beyond that.
pub const REPLICA_FETCH_ANSWER_FIELDS_BYTES_MAX: u32 = 384;

/// The bytes of a ReplicaFetch answer around its entries: the body map, its `partitions` key
/// and the array header.
pub const REPLICA_FETCH_BODY_FIELDS_BYTES_MAX: u32 = 32;

const _: () = assert!(
    FRAME_HEADER_BYTES as u64
        + REPLICA_FETCH_BODY_FIELDS_BYTES_MAX as u64
        + REPLICA_FETCH_PARTITIONS_MAX as u64
            * (TOPIC_NAME_BYTES_MAX as u64
                + ERROR_MESSAGE_BYTES_MAX as u64
                + REPLICA_FETCH_ANSWER_FIELDS_BYTES_MAX as u64)
        + REPLICA_FETCH_RECORDS_BYTES_MAX as u64
        <= FRAME_BYTES_MAX as u64,
    "the largest ReplicaFetch answer (every entry at its widest, the budget and one batch past it) fits one frame"
);
const _: () = assert!(REPLICA_FETCH_WAIT_MS_MAX <= crate::limits::FETCH_WAIT_MS_MAX);
const _: () = assert!(REPLICA_FETCH_PARTITIONS_MAX <= u32::MAX as usize);

/// The most partitions one OffsetForLeaderEpoch request may name (and its answer list), as for
/// ReplicaFetch: a follower asks about all the partitions it starts to follow on one leader
/// together, split past this.
pub const EPOCH_END_PARTITIONS_MAX: usize = 4_096;

/// The largest encoding of one OffsetForLeaderEpoch answer entry other than its topic name and
/// error message: field names, the partition, the epoch, the offset and an error map with
/// every extra. Measured at 169 bytes with a 28-byte error name (a test checks the bound);
/// 384 leaves room, as for ReplicaFetch.
pub const EPOCH_END_REPLY_FIELDS_BYTES_MAX: u32 = 384;

const _: () = assert!(
    FRAME_HEADER_BYTES as u64
        + REPLICA_FETCH_BODY_FIELDS_BYTES_MAX as u64
        + EPOCH_END_PARTITIONS_MAX as u64
            * (TOPIC_NAME_BYTES_MAX as u64
                + ERROR_MESSAGE_BYTES_MAX as u64
                + EPOCH_END_REPLY_FIELDS_BYTES_MAX as u64)
        <= FRAME_BYTES_MAX as u64,
    "the largest OffsetForLeaderEpoch answer fits one frame"
);
const _: () = assert!(EPOCH_END_PARTITIONS_MAX <= u32::MAX as usize);

/// ReplicaFetch request, version 1: every partition the asking node follows on the node asked
/// (as its metadata says that node leads them), at most [`REPLICA_FETCH_PARTITIONS_MAX`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFetchRequest {
    /// How long the leader may hold the request when no partition has bytes past its fetch
    /// offset (long poll). At most [`REPLICA_FETCH_WAIT_MS_MAX`].
    pub max_wait_ms: u32,
    /// The answer's byte budget over all partitions; at least one whole batch is answered for
    /// the first partition with data even past it. At most [`REPLICA_FETCH_BYTES_MAX`].
    pub bytes_max: u32,
    pub partitions: Vec<ReplicaFetchPartition>,
}

/// One partition of a ReplicaFetch request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFetchPartition {
    pub topic: String,
    pub partition: PartitionId,
    /// The leader epoch the follower fetches in.
    pub leader_epoch: LeaderEpoch,
    /// The follower's log end offset: the first offset it wants.
    pub fetch_offset: Offset,
    /// Offsets below it are fsynced on the follower (<= fetch_offset; validation refuses
    /// more).
    pub flushed_offset: Offset,
}

/// ReplicaFetch response, version 1: one entry per partition asked, in the order asked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFetchResponse {
    pub partitions: Vec<ReplicaFetchAnswer>,
}

/// One partition's answer to a ReplicaFetch: its offsets and the batches past the fetch offset,
/// or (`error` set) why the leader cannot serve it, as a client error: `NotLeader`,
/// `FencedLeaderEpoch`, `UnknownLeaderEpoch`, `UnknownTopic`, `UnknownPartition`,
/// `OffsetOutOfRange`, `LeaderNotAvailable`, `PartitionOffline`, `StorageError`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFetchAnswer {
    pub topic: String,
    pub partition: PartitionId,
    #[serde(default)]
    pub error: Option<ResponseError>,
    /// The leader's high watermark: offsets below it are committed.
    #[serde(default)]
    pub high_watermark: Option<Offset>,
    /// The first offset the leader's log holds.
    #[serde(default)]
    pub log_start_offset: Option<Offset>,
    /// The next offset the leader will assign.
    #[serde(default)]
    pub log_end_offset: Option<Offset>,
    /// Whole record batches from fetch_offset on, the leader's stored bytes unchanged
    /// (MessagePack bin); empty when none.
    #[serde(default, with = "serde_bytes")]
    pub records: Vec<u8>,
}

impl ReplicaFetchAnswer {
    /// An answer carrying only `error`.
    #[must_use]
    pub fn failed(topic: String, partition: PartitionId, error: ResponseError) -> Self {
        ReplicaFetchAnswer {
            topic,
            partition,
            error: Some(error),
            ..ReplicaFetchAnswer::default()
        }
    }
}

impl PeerBody for ReplicaFetchRequest {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        check_number_at_most(
            "max_wait_ms",
            u64::from(self.max_wait_ms),
            u64::from(REPLICA_FETCH_WAIT_MS_MAX),
        )?;
        check_number_at_most(
            "bytes_max",
            u64::from(self.bytes_max),
            u64::from(REPLICA_FETCH_BYTES_MAX),
        )?;
        check_partition_entries(
            self.partitions.iter().map(|p| p.topic.as_str()),
            REPLICA_FETCH_PARTITIONS_MAX,
        )?;
        for partition in &self.partitions {
            if partition.flushed_offset > partition.fetch_offset {
                return Err(PeerProtocolError::FieldInvalid {
                    field: "flushed_offset",
                    rule: "at most fetch_offset",
                });
            }
        }
        Ok(())
    }
}

impl PeerBody for ReplicaFetchResponse {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        check_partition_entries(
            self.partitions.iter().map(|a| a.topic.as_str()),
            REPLICA_FETCH_PARTITIONS_MAX,
        )?;
        let mut records_bytes: usize = 0;
        for answer in &self.partitions {
            if let Some(error) = &answer.error {
                check_response_error(error)?;
            }
            records_bytes = records_bytes.saturating_add(answer.records.len());
        }
        check_at_most(
            "records bytes",
            records_bytes,
            REPLICA_FETCH_RECORDS_BYTES_MAX,
        )
    }
}

/// OffsetForLeaderEpoch request, version 1: the partitions a follower starts to follow on the
/// node asked, at most [`EPOCH_END_PARTITIONS_MAX`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetForLeaderEpochRequest {
    pub partitions: Vec<EpochEndQuery>,
}

/// One partition of an OffsetForLeaderEpoch request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEndQuery {
    pub topic: String,
    pub partition: PartitionId,
    /// The leader epoch the follower is in (the leader refuses older/newer ones as Fetch does).
    pub leader_epoch: LeaderEpoch,
    /// The epoch asked about: the follower's latest.
    pub epoch: LeaderEpoch,
}

/// OffsetForLeaderEpoch response, version 1: one entry per query, in the order asked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetForLeaderEpochResponse {
    pub partitions: Vec<EpochEndReply>,
}

/// One partition's answer to an OffsetForLeaderEpoch: where the asked epoch ends in the
/// leader's log, or (`error` set) why the leader cannot say, as a client error (`NotLeader`,
/// `FencedLeaderEpoch`, `UnknownLeaderEpoch`, `UnknownTopic`, `UnknownPartition`,
/// `LeaderNotAvailable`, `PartitionOffline`, `StorageError`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEndReply {
    pub topic: String,
    pub partition: PartitionId,
    #[serde(default)]
    pub error: Option<ResponseError>,
    /// The largest epoch at or below `epoch` the leader's log knows, and the offset where it
    /// ends (the start of the next epoch, or the log end); both absent when it knows none (or
    /// on error).
    #[serde(default)]
    pub end_epoch: Option<LeaderEpoch>,
    #[serde(default)]
    pub end_offset: Option<Offset>,
}

impl EpochEndReply {
    /// An answer carrying only `error`.
    #[must_use]
    pub fn failed(topic: String, partition: PartitionId, error: ResponseError) -> Self {
        EpochEndReply {
            topic,
            partition,
            error: Some(error),
            ..EpochEndReply::default()
        }
    }
}

impl PeerBody for OffsetForLeaderEpochRequest {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        check_partition_entries(
            self.partitions.iter().map(|q| q.topic.as_str()),
            EPOCH_END_PARTITIONS_MAX,
        )
    }
}

impl PeerBody for OffsetForLeaderEpochResponse {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        check_partition_entries(
            self.partitions.iter().map(|r| r.topic.as_str()),
            EPOCH_END_PARTITIONS_MAX,
        )?;
        for reply in &self.partitions {
            if let Some(error) = &reply.error {
                check_response_error(error)?;
            }
            // Whether `end_epoch` is at or below the epoch asked is the asking node's check:
            // the answer alone does not carry the question.
            if reply.end_epoch.is_some() != reply.end_offset.is_some() {
                return Err(PeerProtocolError::FieldInvalid {
                    field: "end_epoch",
                    rule: "present exactly when end_offset is",
                });
            }
        }
        Ok(())
    }
}

/// The limits every entry list of these kinds shares: the entry count and each topic name.
fn check_partition_entries<'a>(
    topics: impl ExactSizeIterator<Item = &'a str>,
    max: usize,
) -> Result<(), PeerProtocolError> {
    check_count_at_most("partitions", topics.len(), max)?;
    for topic in topics {
        check_at_most("topic name bytes", topic.len(), TOPIC_NAME_BYTES_MAX)?;
    }
    Ok(())
}
