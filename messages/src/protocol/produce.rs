//! Produce (kind 7) and InitProducerId (kind 10).
//!
//! A produce partition entry carries its record batches as one `bin`: one or more whole
//! batches, concatenated, exactly as `BatchBuilder` made them. The leader validates them,
//! writes base offsets and its leader epoch into their headers, and stores the bytes as they
//! came.

use serde::{Deserialize, Serialize};

use super::codec::{check_at_most, check_topics};
use super::error::{ProtocolError, ResponseError};
use crate::limits::{PRODUCER_EPOCH_MAX, PRODUCER_ID_MAX, TIMEOUT_MS_MAX};
use crate::types::{LeaderEpoch, Offset, PartitionId, ProducerEpoch, ProducerId};

/// How much replication a produce waits for before the server answers. PROTOCOL.md's acks
/// matrix says what each level survives.
///
/// On the wire an integer, as in Kafka: 0, 1, or -1 for all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "i8", into = "i8")]
pub enum Acks {
    /// `0`: no answer at all. The server processes the request and sends no frame, not even
    /// an error; nothing is promised.
    None,
    /// `1`: answer once the leader has appended to its log.
    Leader,
    /// `-1`: answer once the batch is below the high watermark (on every in-sync replica and,
    /// with the default durability, fsynced).
    All,
}

impl From<Acks> for i8 {
    fn from(acks: Acks) -> i8 {
        match acks {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// The error for an `acks` value other than 0, 1 or -1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("acks must be 0, 1 or -1 (all), not {0}")]
pub struct InvalidAcks(pub i8);

impl TryFrom<i8> for Acks {
    type Error = InvalidAcks;

    fn try_from(value: i8) -> Result<Acks, InvalidAcks> {
        match value {
            0 => Ok(Acks::None),
            1 => Ok(Acks::Leader),
            -1 => Ok(Acks::All),
            other => Err(InvalidAcks(other)),
        }
    }
}

/// The checks of a Produce request, owned or borrowed: the timeout, the topic count and names
/// (given with their partition counts), and the partition count over all topics.
fn check_request_shape<'a>(
    timeout_ms: u32,
    topics: impl ExactSizeIterator<Item = (&'a str, usize)>,
) -> Result<(), ProtocolError> {
    check_at_most("timeout_ms", timeout_ms, TIMEOUT_MS_MAX)?;
    check_topics(topics)
}

/// Produce request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceRequest {
    pub acks: Acks,
    /// How long the leader may wait for replication (acks = all) before answering
    /// `RequestTimedOut` for the partitions not yet replicated; at most 300,000.
    pub timeout_ms: u32,
    pub topics: Vec<ProduceTopic>,
}

/// The partitions of one topic to append to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceTopic {
    pub name: String,
    pub partitions: Vec<ProducePartition>,
}

/// The batches for one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducePartition {
    pub partition: PartitionId,
    /// The leader epoch the client's metadata shows. When present, a leader whose epoch
    /// differs refuses the write (`FencedLeaderEpoch` or `UnknownLeaderEpoch`) rather than
    /// accept it on stale routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_leader_epoch: Option<LeaderEpoch>,
    /// One or more whole record batches, concatenated; each at most 4 MiB.
    #[serde(with = "serde_bytes")]
    pub records: Vec<u8>,
}

impl ProduceRequest {
    /// Checks counts, names and the timeout. The batches are checked by the leader, per
    /// partition (`CorruptBatch`, `BatchTooLarge`).
    ///
    /// # Errors
    /// `FieldTooLarge` or `InvalidTopicName`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_request_shape(
            self.timeout_ms,
            self.topics
                .iter()
                .map(|t| (t.name.as_str(), t.partitions.len())),
        )
    }

    /// The frame with the records of the first partition of the first topic left out, to be
    /// written between `head` and `tail` (see `FrameAround`): what a producer sending one
    /// batch writes without copying the batch. Byte for byte the frame `encode_frame` makes.
    ///
    /// # Errors
    /// `EncodedTooLarge` if the frame would exceed `FRAME_BYTES_MAX`.
    pub fn encode_frame_around_records(
        &self,
        correlation_id: u64,
    ) -> Result<super::FrameAround, ProtocolError> {
        super::codec::encode_frame_around(
            super::RequestKind::Produce.code(),
            super::RequestKind::Produce.version_max(),
            correlation_id,
            self,
            self.first_records(),
        )
    }

    /// The records of the first partition of the first topic (empty if there is none): the
    /// bytes `encode_frame_around_records` leaves out of its frame.
    #[must_use]
    pub fn first_records(&self) -> &[u8] {
        self.topics
            .first()
            .and_then(|t| t.partitions.first())
            .map_or(&[][..], |p| p.records.as_slice())
    }

    /// Whether the server answers at all: not with `acks = 0`.
    #[must_use]
    pub fn expects_response(&self) -> bool {
        self.acks != Acks::None
    }
}

/// A Produce request decoded without copying its batches: every partition's `records` borrow
/// the frame body, so a node can hand the batches on as parts of the buffer it read.
#[derive(Debug, Deserialize)]
pub struct ProduceRequestRef<'a> {
    pub acks: Acks,
    pub timeout_ms: u32,
    #[serde(borrow)]
    pub topics: Vec<ProduceTopicRef<'a>>,
}

/// The partitions of one topic, borrowed.
#[derive(Debug, Deserialize)]
pub struct ProduceTopicRef<'a> {
    pub name: String,
    #[serde(borrow)]
    pub partitions: Vec<ProducePartitionRef<'a>>,
}

/// The batches of one partition, borrowed from the body.
#[derive(Debug, Deserialize)]
pub struct ProducePartitionRef<'a> {
    pub partition: PartitionId,
    #[serde(default)]
    pub current_leader_epoch: Option<LeaderEpoch>,
    #[serde(borrow, with = "serde_bytes")]
    pub records: &'a [u8],
}

impl<'a> ProduceRequestRef<'a> {
    /// Decodes and checks a Produce body as `Request::decode` does (same errors), borrowing
    /// the records.
    ///
    /// # Errors
    /// The `ProtocolError` `Request::decode` gives for the same body.
    pub fn decode(header: &super::FrameHeader, body: &'a [u8]) -> Result<Self, ProtocolError> {
        if header.is_response() {
            return Err(ProtocolError::WrongDirection {
                kind: header.kind,
                expected: super::error::Direction::Request,
            });
        }
        super::RequestKind::check(header.kind, header.version)?;
        let request: ProduceRequestRef<'a> = super::codec::decode_body(body)?;
        check_request_shape(
            request.timeout_ms,
            request
                .topics
                .iter()
                .map(|t| (t.name.as_str(), t.partitions.len())),
        )?;
        Ok(request)
    }
}

/// Produce response, version 1: every requested partition, grouped by topic, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceResponse {
    pub topics: Vec<ProduceTopicResponse>,
}

/// The results for one topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceTopicResponse {
    pub name: String,
    pub partitions: Vec<ProducePartitionResponse>,
}

/// The result for one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducePartitionResponse {
    pub partition: PartitionId,
    /// Absent: every batch was appended (and replicated as `acks` asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
    /// The offset given to the first record of the first batch; present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_offset: Option<Offset>,
    /// The time the leader stamped, in ms since the Unix epoch; present only when the topic
    /// keeps log-append time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_append_time: Option<i64>,
    /// The partition's log start offset after the append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_start_offset: Option<Offset>,
}

/// InitProducerId request, version 1: asks for an idempotent producer identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitProducerIdRequest {
    /// Absent for a new producer. Present (with `producer_epoch`, its current epoch) for a
    /// producer that already holds an id and wants its epoch bumped, e.g. after
    /// `UnknownProducerId`: the server answers the same id with the next epoch, which fences
    /// every older one on every partition at once; at the last epoch, a new id at epoch 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer_id: Option<ProducerId>,
    /// The epoch held with `producer_id`; present exactly when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer_epoch: Option<ProducerEpoch>,
}

impl InitProducerIdRequest {
    /// Checks that `producer_id` and `producer_epoch` come together and are within the
    /// ranges the batch header can hold (`PRODUCER_ID_MAX`, `PRODUCER_EPOCH_MAX`).
    ///
    /// # Errors
    /// `InvalidField`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.producer_id.is_some() != self.producer_epoch.is_some() {
            return Err(ProtocolError::InvalidField {
                field: "producer_id",
                reason: "producer_id and producer_epoch must be both present or both absent",
            });
        }
        if self.producer_id.is_some_and(|id| id.0 > PRODUCER_ID_MAX) {
            return Err(ProtocolError::InvalidField {
                field: "producer_id",
                reason: "producer_id must be below 2^63",
            });
        }
        if self
            .producer_epoch
            .is_some_and(|epoch| epoch.0 > PRODUCER_EPOCH_MAX)
        {
            return Err(ProtocolError::InvalidField {
                field: "producer_epoch",
                reason: "producer_epoch must be below 2^15",
            });
        }
        Ok(())
    }
}

/// InitProducerId response, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitProducerIdResponse {
    pub producer_id: ProducerId,
    pub producer_epoch: ProducerEpoch,
}
