//! Fetch (kind 8) and ListOffsets (kind 9).
//!
//! A fetch partition result carries the stored batches as one `bin`, byte for byte as the log
//! holds them. The server writes that answer by hand (`fetch_writer`), so the record bytes go
//! from the log to the socket without passing through serde; clients decode it with the same
//! [`FetchResponse`] as any other body.

use serde::{Deserialize, Serialize};

use super::codec::{check_at_most, check_topics};
use super::error::{ProtocolError, ResponseError};
use crate::limits::FETCH_WAIT_MS_MAX;
use crate::types::{LeaderEpoch, Offset, PartitionId};

/// Fetch request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// How long the server may hold the request while fewer than `min_bytes` are available;
    /// at most 60,000.
    pub max_wait_ms: u32,
    /// Answer as soon as this many record bytes are available (0: answer at once).
    pub min_bytes: u32,
    /// The most record bytes in the whole answer. The server also caps it at its own budget
    /// (6 MiB) and returns at least one whole batch of the first non-empty partition even if
    /// that batch is larger, so a consumer never stalls on a large batch.
    pub max_bytes: u32,
    pub topics: Vec<FetchTopic>,
}

/// The partitions of one topic to read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchTopic {
    pub name: String,
    pub partitions: Vec<FetchPartition>,
}

/// Where to read one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchPartition {
    pub partition: PartitionId,
    /// The first offset wanted. The answer starts with the batch that holds it, so it may
    /// begin with records below this offset, which the client skips.
    pub fetch_offset: Offset,
    /// The most record bytes for this partition (the first batch is returned whole even if
    /// larger).
    pub partition_max_bytes: u32,
    /// The leader epoch the client's metadata shows; as in Produce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_leader_epoch: Option<LeaderEpoch>,
}

impl FetchRequest {
    /// Checks counts, names and the wait.
    ///
    /// # Errors
    /// `FieldTooLarge` or `InvalidTopicName`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_at_most("max_wait_ms", self.max_wait_ms, FETCH_WAIT_MS_MAX)?;
        check_topics(
            self.topics
                .iter()
                .map(|topic| (topic.name.as_str(), topic.partitions.len())),
        )
    }
}

/// Fetch response, version 1: every requested partition, grouped by topic, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    pub topics: Vec<FetchTopicResponse>,
}

/// The results for one topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchTopicResponse {
    pub name: String,
    pub partitions: Vec<FetchPartitionResponse>,
}

/// The result for one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchPartitionResponse {
    pub partition: PartitionId,
    /// E.g. `OffsetOutOfRange`, `NotLeader`; `records` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
    /// The offset after the last committed record: consumers see offsets below it only.
    /// Present on success and with `OffsetOutOfRange`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_watermark: Option<Offset>,
    /// Reserved for transactions; equal to `high_watermark` for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stable_offset: Option<Offset>,
    /// The first offset still in the log. Present on success and with `OffsetOutOfRange`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_start_offset: Option<Offset>,
    /// Zero or more whole batches, concatenated, as stored. Empty when nothing at or past
    /// `fetch_offset` is below the high watermark yet.
    #[serde(default, with = "serde_bytes")]
    pub records: Vec<u8>,
}

/// Which offset ListOffsets looks up for a partition.
///
/// On the wire: a string field `spec`, `"earliest"`, `"latest"` or `"timestamp"`, and with
/// `"timestamp"` an integer field `timestamp` (ms since the Unix epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark: the offset the next committed record will get.
    Latest,
    /// The first offset whose record's timestamp is at or after this one (ms since the Unix
    /// epoch).
    Timestamp(i64),
}

/// ListOffsets request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListOffsetsRequest {
    pub topics: Vec<ListOffsetsTopic>,
}

/// The partitions of one topic to look up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListOffsetsTopic {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartition>,
}

/// One partition to look up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "ListOffsetsPartitionWire",
    into = "ListOffsetsPartitionWire"
)]
pub struct ListOffsetsPartition {
    pub partition: PartitionId,
    pub spec: OffsetSpec,
    /// The leader epoch the client's metadata shows; as in Produce.
    pub current_leader_epoch: Option<LeaderEpoch>,
}

/// The wire shape of [`ListOffsetsPartition`]: the spec as a string plus an optional
/// timestamp, which any language reads without a tagged-union convention.
#[derive(Serialize, Deserialize)]
struct ListOffsetsPartitionWire {
    partition: PartitionId,
    spec: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current_leader_epoch: Option<LeaderEpoch>,
}

/// Why a ListOffsets partition's `spec` and `timestamp` do not fit together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOffsetSpec {
    #[error("spec must be \"earliest\", \"latest\" or \"timestamp\"")]
    UnknownSpec,
    #[error("spec \"timestamp\" needs a timestamp field")]
    MissingTimestamp,
    #[error("a timestamp field goes only with spec \"timestamp\"")]
    UnexpectedTimestamp,
}

impl TryFrom<ListOffsetsPartitionWire> for ListOffsetsPartition {
    type Error = InvalidOffsetSpec;

    fn try_from(wire: ListOffsetsPartitionWire) -> Result<Self, InvalidOffsetSpec> {
        let spec = match (wire.spec.as_str(), wire.timestamp) {
            ("earliest", None) => OffsetSpec::Earliest,
            ("latest", None) => OffsetSpec::Latest,
            ("timestamp", Some(timestamp)) => OffsetSpec::Timestamp(timestamp),
            ("timestamp", None) => return Err(InvalidOffsetSpec::MissingTimestamp),
            ("earliest" | "latest", Some(_)) => {
                return Err(InvalidOffsetSpec::UnexpectedTimestamp);
            }
            _ => return Err(InvalidOffsetSpec::UnknownSpec),
        };
        Ok(ListOffsetsPartition {
            partition: wire.partition,
            spec,
            current_leader_epoch: wire.current_leader_epoch,
        })
    }
}

impl From<ListOffsetsPartition> for ListOffsetsPartitionWire {
    fn from(partition: ListOffsetsPartition) -> Self {
        let (spec, timestamp) = match partition.spec {
            OffsetSpec::Earliest => ("earliest", None),
            OffsetSpec::Latest => ("latest", None),
            OffsetSpec::Timestamp(timestamp) => ("timestamp", Some(timestamp)),
        };
        ListOffsetsPartitionWire {
            partition: partition.partition,
            spec: spec.to_owned(),
            timestamp,
            current_leader_epoch: partition.current_leader_epoch,
        }
    }
}

impl ListOffsetsRequest {
    /// Checks counts and names.
    ///
    /// # Errors
    /// `FieldTooLarge` or `InvalidTopicName`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_topics(
            self.topics
                .iter()
                .map(|topic| (topic.name.as_str(), topic.partitions.len())),
        )
    }
}

/// ListOffsets response, version 1: every requested partition, grouped by topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListOffsetsResponse {
    pub topics: Vec<ListOffsetsTopicResponse>,
}

/// The results for one topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListOffsetsTopicResponse {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartitionResponse>,
}

/// The offset found for one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListOffsetsPartitionResponse {
    pub partition: PartitionId,
    /// E.g. `NotLeader`, `OffsetNotAvailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
    /// The offset found. Absent on error, and for a timestamp later than every record's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<Offset>,
    /// For a timestamp lookup, the timestamp of the record at `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// The leader epoch of the batch holding `offset` (for `latest`: the current epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_epoch: Option<LeaderEpoch>,
}
