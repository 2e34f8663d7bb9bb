//! Error codes that travel on the wire, the error value a response carries, and the error this
//! crate returns when bytes cannot become a message.
//!
//! Three things, kept apart on purpose:
//! - [`ErrorCode`]: the stable numbers of PROTOCOL.md's error table. A number, once given, is
//!   never reused or renumbered.
//! - [`ResponseError`]: the MessagePack map `{code, name, message, retriable, ...extras}` that a
//!   response carries, whole-request or per partition. It keeps the raw `code` so that a client
//!   built before a code existed still decodes it (and still reads `retriable`).
//! - [`ProtocolError`]: what the codec reports when a frame or body is bad. The server turns it
//!   into a [`ResponseError`] with [`ProtocolError::response_error`].

use serde::{Deserialize, Serialize};

use super::RequestKind;
use super::frame::FrameHeader;
use crate::limits::ERROR_MESSAGE_BYTES_MAX;
use crate::types::NodeId;

macro_rules! error_codes {
    ($( $code:literal $variant:ident $retriable:literal $meaning:literal; )*) => {
        /// A stable wire error number. The table in PROTOCOL.md lists the same codes, names,
        /// retriable flags and meanings (a test checks it).
        ///
        /// Ranges: 1-19 framing and requests, 20-39 topics and configuration, 40-59 leadership
        /// and replication, 60-79 records and offsets, 80-99 producers, 100-199 reserved for
        /// consumer groups. 0 is never sent: success is the absence of an error.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum ErrorCode {
            $(
                #[doc = $meaning]
                $variant = $code,
            )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The code for a wire number, `None` for a number this build does not know.
            #[must_use]
            pub const fn from_code(code: u16) -> Option<ErrorCode> {
                match code {
                    $($code => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }

            /// The stable name, as it travels in the `name` field.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => stringify!($variant),)*
                }
            }

            /// Whether the same request may succeed if sent again, possibly after refreshing
            /// metadata or waiting.
            #[must_use]
            pub const fn is_retriable(self) -> bool {
                match self {
                    $(ErrorCode::$variant => $retriable,)*
                }
            }

            /// One sentence on what the error means and what a client does about it.
            #[must_use]
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $meaning,)*
                }
            }
        }
    };
}

error_codes! {
    1 UnknownServerError false "The server failed in a way it did not expect; the message says more.";
    2 CorruptFrame false "The frame's body is not a valid MessagePack map of the expected shape (a missing field, a wrong type, a key named twice, bytes after the map).";
    3 UnsupportedVersion false "The server does not speak this version of this kind; extras `version_min` and `version_max` give the range it does speak.";
    4 UnknownRequestKind false "The server does not know this request kind.";
    5 RequestTooLarge false "The frame is larger than the frame limit (8 MiB); the server closes the connection after answering.";
    6 InvalidRequest false "The request breaks a rule: a protocol limit (its nesting, a count, a length or a duration), a response kind sent as a request, fields that do not go together.";
    7 HandshakeRequired false "The first request on a connection must be Handshake; the server closes the connection after answering.";
    8 Overloaded true "The server is shedding load (a queue or the bytes in flight are at their bound); retry after a back-off.";
    9 RequestTimedOut true "The request's timeout passed before the server could complete it; the outcome of a write is unknown.";
    10 TooManyConnections true "The server is at its connection limit; it closes this connection after answering.";
    11 ControllerNotAvailable true "The cluster's controller cannot be reached: an election is in progress, or this node is cut off from the controller quorum. A change may or may not have been made if the request reached the controller before the connection failed; retry after a back-off (a retried create answers TopicAlreadyExists if the first one was made).";
    20 UnknownTopic true "The topic does not exist (or this node has not learnt of it yet).";
    21 UnknownPartition true "The topic exists but not this partition (or this node has not learnt of it yet).";
    22 TopicAlreadyExists false "A topic with this name already exists.";
    23 InvalidTopicName false "The topic name is empty, longer than 249 bytes, `.` or `..`, or uses a byte outside [a-zA-Z0-9._-]; or it starts with `__` (reserved for internal topics) in a request that would create, delete, change or write to the topic.";
    24 InvalidPartitions false "The partition count is zero, or (CreatePartitions) not above the topic's current count.";
    25 InvalidReplicationFactor false "The replication factor is zero or larger than the number of nodes.";
    26 InvalidConfig false "A config key is unknown or its value is invalid.";
    40 NotLeader true "This node does not lead the partition; extra `leader` names the leader if known. Refresh metadata and retry there.";
    41 FencedLeaderEpoch true "The request's `current_leader_epoch` is older than the leader's: the client's metadata is stale. Refresh metadata.";
    42 UnknownLeaderEpoch true "The request's `current_leader_epoch` is newer than the leader's: this node has not caught up yet. Retry.";
    43 NotEnoughReplicas true "acks=all was asked but the in-sync replicas are fewer than `min.insync.replicas`; nothing was written.";
    44 NotEnoughReplicasAfterAppend true "The batch was written on the leader but the in-sync replicas shrank below `min.insync.replicas` before it was replicated.";
    45 OffsetNotAvailable true "A new leader has not yet reached its epoch's start offset; offset queries must wait. Retry.";
    46 PartitionOffline true "The partition's log is offline on this node (a failed fsync or disk); leadership will move. Refresh metadata and retry.";
    47 LeaderNotAvailable true "The partition has no leader right now (an election is in progress), or its leader is still opening it (a topic or partitions just created). Retry after refreshing metadata.";
    48 IneligibleLeader true "ElectLeaders: the node asked to lead the partition is not in its in-sync replicas, or is fenced, so it may lack acknowledged writes. Retry once it has caught up.";
    60 OffsetOutOfRange false "The fetch offset is below the log start offset or above the log end offset; reset the position (ListOffsets). An offset between the high watermark and the log end (which a consumer may have read from an earlier leader) is not out of range: the fetch answers empty and waits for the high watermark.";
    61 CorruptBatch false "A record batch failed validation (length, magic, CRC-32C, attributes, producer fields or record framing).";
    62 BatchTooLarge false "A record batch is larger than its topic's `max.message.bytes` (at most 4 MiB).";
    63 InvalidTimestamp false "A batch's timestamps are outside the range the topic accepts.";
    64 StorageError true "The log could not be read or written on this node; leadership may move. Retry after refreshing metadata.";
    80 OutOfOrderSequence false "An idempotent producer's batch does not follow its last one on this partition (a gap, or a new epoch not starting at sequence 0): a batch in between was lost.";
    81 ProducerFenced false "A newer incarnation of this producer id holds a higher epoch, or the id was retired when its epochs ran out; this one must stop.";
    82 UnknownProducerId false "The node never issued this producer id or epoch, or the partition holds no state for it and the batch does not start at sequence 0. Bump the epoch with InitProducerId (a new id if that is refused too) and start again at sequence 0.";
    100 CoordinatorNotAvailable true "The group's coordinator is not available (its offsets partition has no leader, the offsets topic is being created, or a write to the offsets partition failed and the coordinator is reloading the group). Retry after FindCoordinator.";
    101 NotCoordinator true "This node does not coordinate the group (any more: the group's offsets partition moved, or this node is cut off from the controller); call FindCoordinator and retry there. The member keeps its member id, epoch and partitions.";
    102 CoordinatorLoadInProgress true "The coordinator is still loading the group's offsets and membership (it just became the leader of the group's offsets partition). Retry.";
    103 InvalidGroupId false "The group id is empty or too long.";
    104 GroupIdNotFound false "No such group: it has no members and no committed offsets.";
    105 UnknownMemberId false "The group has no member with this id (it left or was removed); join again with member epoch 0.";
    106 FencedMemberEpoch false "The member's epoch is not the coordinator's: it was fenced (removed after a timeout, or replaced). Give up every partition and join again with member epoch 0.";
    107 StaleMemberEpoch false "An offset commit carries an older member epoch than the member's current one; heartbeat, then commit again.";
    108 UnreleasedInstanceId false "Another live member holds this instance id.";
    109 UnsupportedAssignor false "The assignor is not one the coordinator knows (range, round-robin, sticky).";
    110 InconsistentAssignor false "The group already uses another assignor; it can change only while the group is empty.";
    111 NonEmptyGroup false "The group still has members: it cannot be deleted or have its offsets reset.";
    112 PartitionNotAssigned false "The member commits a partition it does not own (it was never assigned, or its revocation was acknowledged).";
    113 GroupMaxSizeReached false "The group is at its member limit.";
    114 InvalidSessionTimeout false "The session or rebalance timeout is outside the range the node allows.";
}

impl ErrorCode {
    /// The wire number.
    #[must_use]
    pub const fn code(self) -> u16 {
        self as u16
    }
}

/// The first error code of the range reserved for consumer groups.
pub const GROUP_ERROR_CODE_FIRST: u16 = 100;
/// The last error code of the range reserved for consumer groups.
pub const GROUP_ERROR_CODE_LAST: u16 = 199;

/// The error a response carries: for a whole request, as the body's only field `error`; for a
/// topic or partition, as that entry's `error` field. Absent means success.
///
/// Fields mirror the wire map one to one. `name` and `retriable` repeat what the code implies,
/// so that a client that does not know a newer code can still log and retry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseError {
    /// The stable number; see [`ErrorCode`]. Kept raw so unknown codes survive decoding.
    pub code: u16,
    /// The stable name, e.g. `"NotLeader"`.
    pub name: String,
    /// A human-readable sentence, at most `ERROR_MESSAGE_BYTES_MAX` bytes when built by
    /// [`ResponseError::new`].
    pub message: String,
    /// Whether sending the same request again may succeed.
    pub retriable: bool,
    /// `NotLeader`: the leader this node knows of, absent when it knows none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<NodeId>,
    /// `UnsupportedVersion`: the lowest version of the kind the server speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_min: Option<u16>,
    /// `UnsupportedVersion`: the highest version of the kind the server speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_max: Option<u16>,
}

impl ResponseError {
    /// An error with the code's name and retriable flag. A message longer than
    /// `ERROR_MESSAGE_BYTES_MAX` bytes is cut at a character boundary, so that the per-partition
    /// fields of a fetch answer stay within their budget.
    #[must_use]
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ResponseError {
        let mut message = message.into();
        truncate_at_char_boundary(&mut message, ERROR_MESSAGE_BYTES_MAX as usize);
        ResponseError {
            code: code.code(),
            name: code.name().to_owned(),
            message,
            retriable: code.is_retriable(),
            leader: None,
            version_min: None,
            version_max: None,
        }
    }

    /// `NotLeader` with the leader this node knows of, if any.
    #[must_use]
    pub fn not_leader(leader: Option<NodeId>, message: impl Into<String>) -> ResponseError {
        ResponseError {
            leader,
            ..ResponseError::new(ErrorCode::NotLeader, message)
        }
    }

    /// The code, if this build knows it.
    #[must_use]
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.name, self.code, self.message)
    }
}

impl std::error::Error for ResponseError {}

/// Cuts `text` to at most `max` bytes without splitting a UTF-8 character.
pub(crate) fn truncate_at_char_boundary(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
}

/// Which way a frame travels, for [`ProtocolError::WrongDirection`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Request => "request",
            Direction::Response => "response",
        })
    }
}

/// Why bytes could not become a message, or a message could not become bytes.
///
/// Each variant carries what a log line needs. [`ProtocolError::error_code`] maps it to the
/// code the server answers with, and [`ProtocolError::closes_connection`] says whether the byte
/// stream can still be trusted afterwards.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The header's `length` is above the frame limit. The header is complete, so the server
    /// can answer `RequestTooLarge` with its correlation id before closing.
    #[error("frame of {} bytes exceeds the limit of {max} bytes", header.frame_bytes())]
    FrameTooLarge { header: FrameHeader, max: u32 },
    /// The header's `length` is below the 12 header bytes it must count: the stream is not
    /// vltava frames.
    #[error("frame length {length} is smaller than the 12 header bytes it must count")]
    FrameTooSmall { length: u32 },
    /// An encoder produced a frame above the frame limit; nothing was sent.
    #[error("encoded frame of {length} bytes exceeds the limit of {max} bytes")]
    EncodedTooLarge { length: u64, max: u32 },
    /// The body ends before the MessagePack value it starts is complete.
    #[error("body ends before its MessagePack value is complete")]
    Truncated,
    /// Bytes are left in the body after its map.
    #[error("bytes follow the body's map")]
    TrailingBytes,
    /// The body nests maps and arrays deeper than the limit.
    #[error("body nests maps and arrays deeper than {max} levels")]
    TooDeep { max: u32 },
    /// The kind number is not one this build knows.
    #[error("unknown request kind {kind}")]
    UnknownKind { kind: u16 },
    /// The kind is known but not at this version.
    #[error(
        "{} does not speak version {version}; it speaks versions {} to {}",
        kind.name(),
        kind.version_min(),
        kind.version_max()
    )]
    UnsupportedVersion { kind: RequestKind, version: u16 },
    /// A response frame where a request was expected, or the reverse.
    #[error("expected a {expected} frame, got kind {kind:#06x}")]
    WrongDirection { kind: u16, expected: Direction },
    /// The body is MessagePack but not the expected shape (a missing field, a wrong type).
    #[error("malformed body: {reason}")]
    Malformed { reason: String },
    /// A count, a length or a duration is above its limit.
    #[error("{field} is {value}, above the limit of {max}")]
    FieldTooLarge {
        field: &'static str,
        value: u64,
        max: u64,
    },
    /// Fields that are fine alone but not together.
    #[error("{field}: {reason}")]
    InvalidField {
        field: &'static str,
        reason: &'static str,
    },
    /// A topic name breaks the naming rule.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    /// A consumer group id is empty or longer than `max` bytes.
    #[error("invalid group id of {bytes} bytes: a group id has 1 to {max} bytes")]
    InvalidGroupId { bytes: usize, max: u32 },
}

impl ProtocolError {
    /// The code the server answers with.
    #[must_use]
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } | ProtocolError::EncodedTooLarge { .. } => {
                ErrorCode::RequestTooLarge
            }
            ProtocolError::FrameTooSmall { .. }
            | ProtocolError::Truncated
            | ProtocolError::TrailingBytes
            | ProtocolError::Malformed { .. } => ErrorCode::CorruptFrame,
            ProtocolError::UnknownKind { .. } => ErrorCode::UnknownRequestKind,
            ProtocolError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            // The nesting bound is a limit like the others (PROTOCOL.md section 9), so it
            // gets their code, though the body is not decoded whole when it is found.
            ProtocolError::TooDeep { .. }
            | ProtocolError::WrongDirection { .. }
            | ProtocolError::FieldTooLarge { .. }
            | ProtocolError::InvalidField { .. } => ErrorCode::InvalidRequest,
            ProtocolError::InvalidTopicName { .. } => ErrorCode::InvalidTopicName,
            ProtocolError::InvalidGroupId { .. } => ErrorCode::InvalidGroupId,
        }
    }

    /// The error body the server answers with: code, name, this error's text as the message,
    /// and the extras the code promises (`version_min`/`version_max` for `UnsupportedVersion`).
    #[must_use]
    pub fn response_error(&self) -> ResponseError {
        let mut error = ResponseError::new(self.error_code(), self.to_string());
        if let ProtocolError::UnsupportedVersion { kind, .. } = self {
            error.version_min = Some(kind.version_min());
            error.version_max = Some(kind.version_max());
        }
        error
    }

    /// Whether the frame boundaries of the stream are lost (or not worth finding), so the
    /// connection must close after the answer, if any. Every other error concerns one frame
    /// whose end is known; the connection goes on.
    #[must_use]
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProtocolError::FrameTooLarge { .. } | ProtocolError::FrameTooSmall { .. }
        )
    }
}
