//! The peer protocol, sans IO: what one vltava node says to another over its peer port.
//! PROTOCOL.md's section "Peer protocol (node to node)" is the language-neutral specification;
//! this module is its Rust implementation, and its tests hold the section's golden bytes.
//!
//! # Shape
//! Frames are the client protocol's: the same fixed 16-byte header (`length`, `kind`,
//! `version`, `correlation_id`, big-endian), read with the same check
//! ([`crate::protocol::read_header`]) before any allocation, then one MessagePack map with
//! named fields. What differs is the vocabulary: peer kinds live in a range of their own,
//! `PEER_KIND_FIRST..=PEER_KIND_LAST` (0x4000 to 0x40FF), so a peer frame sent to a client port
//! is an unknown kind there and a client frame sent to a peer port is refused at once.
//!
//! A node opens two connections to each other node, `control` (Raft, leases) and `data`
//! (forwarded admin requests, partition offsets, replica fetches and epoch ends), so that an
//! election never waits behind bulk data or a slow request.
//! The first frame on each is a [`PeerHandshakeRequest`] naming the cluster, the dialling
//! node, the node it means to reach and the channel; both sides check the identities and a
//! mismatch is refused with a [`PeerFailure`] that names both. After it, the dialling node
//! sends requests and the other answers each, in order, under the same correlation id with
//! the response bit set.
//!
//! # Kinds
//! - Link kinds, which the links answer themselves: `PeerHandshake` (0x4000) and `Ping`
//!   (0x4001, the round-trip probe of the control connection).
//! - Service kinds, which the node's handler answers ([`PeerRequest`] / [`PeerResponse`]):
//!   the Raft RPCs (0x4010 to 0x4012), whose bodies carry openraft's messages as opaque
//!   MessagePack `bin` bytes ([`RaftPayload`]; see [`encode_payload`]) so that this crate
//!   never depends on openraft.
//! - `ReplicaFetch` (0x4020, data connection): a follower node's replica fetcher asks a
//!   leader node for the record batches past each partition's fetch offset, for all the
//!   partitions it follows there, in one long-polled request; at most
//!   [`REPLICA_FETCH_PARTITIONS_MAX`] partitions and [`REPLICA_FETCH_BYTES_MAX`] bytes (plus
//!   one batch) per answer.
//! - `OffsetForLeaderEpoch` (0x4021, data connection): a new follower asks the leader where
//!   an epoch ends in the leader's log, to truncate what the leader does not have; at most
//!   [`EPOCH_END_PARTITIONS_MAX`] partitions per request.
//! - `PartitionOffsets` (0x4028, data connection): a group coordinator asks a partition's
//!   leader for its log start, high watermark and log end (and optionally an offset by time,
//!   or the time of an offset), for lag in DescribeGroups and for ResetOffsets; at most
//!   [`PARTITION_OFFSETS_PARTITIONS_MAX`] partitions per request, each answered with its
//!   offsets or a client error.
//! - `ControllerForward` (0x4030): an admin request forwarded to the controller (among them
//!   a partition leader's ISR change, `AlterIsr`); `LeaseRenew` (0x4031): a node's heartbeat
//!   to the controller.
//! - The data range 0x4020 to 0x402F: `ReplicaFetch` (0x4020), `OffsetForLeaderEpoch`
//!   (0x4021), `PartitionOffsets` (0x4028); the rest is free.
//!
//! # Layout
//! - `codec`: frames to bytes and back for peer kinds, the bounded body decoder, and the
//!   opaque-payload helpers.
//! - `replication`: the replication kinds' bodies and limits (ReplicaFetch,
//!   OffsetForLeaderEpoch).
//! - this file: kinds, the other bodies, error codes and limits.

mod codec;
mod replication;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::protocol::{Direction, FrameHeader, KindVersions, ProtocolError, ResponseError};
use crate::types::{NodeId, Offset, PartitionId};

pub use codec::{
    decode_payload, decode_request_body, decode_response_body, encode_failure, encode_payload,
    encode_request_body, encode_response_body,
};
pub use replication::{
    EPOCH_END_PARTITIONS_MAX, EPOCH_END_REPLY_FIELDS_BYTES_MAX, EpochEndQuery, EpochEndReply,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
    REPLICA_FETCH_ANSWER_FIELDS_BYTES_MAX, REPLICA_FETCH_BODY_FIELDS_BYTES_MAX,
    REPLICA_FETCH_BYTES_MAX, REPLICA_FETCH_PARTITIONS_MAX, REPLICA_FETCH_RECORDS_BYTES_MAX,
    REPLICA_FETCH_WAIT_MS_MAX, ReplicaFetchAnswer, ReplicaFetchPartition, ReplicaFetchRequest,
    ReplicaFetchResponse,
};

/// The first kind number of the peer range. Client kinds count up from 0 and are far below it;
/// the response bit (0x8000) is far above the range's end.
pub const PEER_KIND_FIRST: u16 = 0x4000;
/// The last kind number of the peer range.
pub const PEER_KIND_LAST: u16 = 0x40FF;

/// The longest cluster id, in bytes. vltava's are uuids (36 bytes); 64 leaves room for an
/// operator's own naming while keeping a refusal's log line short.
pub const CLUSTER_ID_BYTES_MAX: u32 = 64;
/// The most kinds a handshake may list: every number of the peer range.
pub const PEER_KINDS_LISTED_MAX: u32 = (PEER_KIND_LAST - PEER_KIND_FIRST + 1) as u32;
/// The longest kind name a handshake may list, in bytes. Names are identifiers such as
/// `RaftInstallSnapshot`.
pub const KIND_NAME_BYTES_MAX: u32 = 64;
/// The longest error message a peer failure carries, in bytes (longer ones are cut when built,
/// and refused when decoded). A refusal's message names two cluster ids and two node ids, which
/// fits many times over; the bound keeps a hostile peer from filling the log.
pub const PEER_ERROR_MESSAGE_BYTES_MAX: u32 = 512;
/// The longest error name, in bytes: names are identifiers such as `ClusterIdMismatch`.
pub const PEER_ERROR_NAME_BYTES_MAX: u32 = 64;
/// The deepest nesting of an opaque payload ([`decode_payload`]). openraft's deepest message
/// (an AppendEntries carrying a membership change: request, entries, entry, payload,
/// membership, configs, one config) nests about 8 levels; 32 leaves room for its later
/// versions while keeping serde's recursion far from the stack's end.
pub const PAYLOAD_DEPTH_MAX: u32 = 32;

const _: () = assert!(PEER_KIND_FIRST <= PEER_KIND_LAST);
const _: () = assert!(PEER_KIND_LAST & crate::protocol::RESPONSE_BIT == 0);

/// Which of the two connections between a pair of nodes a frame travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerChannel {
    /// Raft and lease renewals: small and latency-sensitive.
    Control,
    /// Forwarded admin requests, partition offsets, replica fetches and epoch ends: answers
    /// that may be slow (an admin change, a read of the log) or bulky, and long polls.
    Data,
}

impl PeerChannel {
    /// Both channels, control first.
    pub const ALL: [PeerChannel; 2] = [PeerChannel::Control, PeerChannel::Data];

    /// The name, as the handshake spells it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            PeerChannel::Control => "control",
            PeerChannel::Data => "data",
        }
    }
}

impl std::fmt::Display for PeerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The peer kinds in one table: the kind enum and the service request and response enums are
/// generated from it, so they cannot disagree. Link kinds are answered by the links themselves;
/// service kinds by the node's handler.
macro_rules! peer_kinds {
    (
        link {$(
            $(#[$link_doc:meta])*
            $link_code:literal $link:ident versions $link_min:literal ..= $link_max:literal;
        )*}
        service {$(
            $(#[$doc:meta])*
            $code:literal $variant:ident($request:ty, $response:ty) versions $min:literal ..= $max:literal;
        )*}
    ) => {
        /// A peer kind: the `kind` field of a peer frame's header.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum PeerKind {
            $($(#[$link_doc])* $link = $link_code,)*
            $($(#[$doc])* $variant = $code,)*
        }

        impl PeerKind {
            /// Every kind, in numeric order.
            pub const ALL: &'static [PeerKind] = &[$(PeerKind::$link,)* $(PeerKind::$variant,)*];

            /// The kind for a header's number (response bit cleared), `None` if unknown.
            #[must_use]
            pub const fn from_code(code: u16) -> Option<PeerKind> {
                match code {
                    $($link_code => Some(PeerKind::$link),)*
                    $($code => Some(PeerKind::$variant),)*
                    _ => None,
                }
            }

            /// The name, as listed in the handshake.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(PeerKind::$link => stringify!($link),)*
                    $(PeerKind::$variant => stringify!($variant),)*
                }
            }

            /// The lowest version this build speaks.
            #[must_use]
            pub const fn version_min(self) -> u16 {
                match self {
                    $(PeerKind::$link => $link_min,)*
                    $(PeerKind::$variant => $min,)*
                }
            }

            /// The highest version this build speaks; encoders write this one.
            #[must_use]
            pub const fn version_max(self) -> u16 {
                match self {
                    $(PeerKind::$link => $link_max,)*
                    $(PeerKind::$variant => $max,)*
                }
            }

            /// Whether the node's handler answers this kind (rather than the link itself).
            #[must_use]
            pub const fn is_service(self) -> bool {
                match self {
                    $(PeerKind::$link => false,)*
                    $(PeerKind::$variant => true,)*
                }
            }
        }

        /// A request the node's handler answers, one variant per service kind.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum PeerRequest {
            $($(#[$doc])* $variant($request),)*
        }

        impl PeerRequest {
            /// The kind this request travels as.
            #[must_use]
            pub fn kind(&self) -> PeerKind {
                match self {
                    $(PeerRequest::$variant(_) => PeerKind::$variant,)*
                }
            }

            /// The whole frame, at the kind's current version.
            ///
            /// # Errors
            /// `EncodedTooLarge` if the frame would exceed `FRAME_BYTES_MAX`.
            pub fn encode(&self, correlation_id: u64) -> Result<Vec<u8>, PeerProtocolError> {
                match self {
                    $(PeerRequest::$variant(body) => {
                        encode_request_body(PeerKind::$variant, correlation_id, body)
                    })*
                }
            }

            /// Decodes and validates the body of a service request frame.
            ///
            /// # Errors
            /// `WrongDirection`, `NotPeerKind`, `UnknownKind`, `UnexpectedKind` (a link kind,
            /// which the caller answers itself), `UnsupportedVersion`, a decoding error or a
            /// field limit broken.
            pub fn decode(header: &FrameHeader, body: &[u8]) -> Result<PeerRequest, PeerProtocolError> {
                let kind = PeerKind::check_request(header)?;
                match kind {
                    $(PeerKind::$variant => {
                        let body: $request = decode_request_body(header, kind, body)?;
                        Ok(PeerRequest::$variant(body))
                    })*
                    other => Err(PeerProtocolError::UnexpectedKind {
                        expected: "a service kind",
                        kind: other.code(),
                    }),
                }
            }
        }

        /// A successful answer of the node's handler, one variant per service kind.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum PeerResponse {
            $($(#[$doc])* $variant($response),)*
        }

        impl PeerResponse {
            /// The kind of the request this answers.
            #[must_use]
            pub fn kind(&self) -> PeerKind {
                match self {
                    $(PeerResponse::$variant(_) => PeerKind::$variant,)*
                }
            }

            /// The whole frame, at the kind's current version.
            ///
            /// # Errors
            /// `EncodedTooLarge` if the frame would exceed `FRAME_BYTES_MAX`.
            pub fn encode(&self, correlation_id: u64) -> Result<Vec<u8>, PeerProtocolError> {
                match self {
                    $(PeerResponse::$variant(body) => {
                        encode_response_body(PeerKind::$variant, correlation_id, body)
                    })*
                }
            }

            /// Decodes the body of a service response frame: the answer, or the failure the
            /// remote node sent instead.
            ///
            /// # Errors
            /// `WrongDirection`, `NotPeerKind`, `UnknownKind`, `UnexpectedKind`,
            /// `UnsupportedVersion`, a decoding error or a field limit broken.
            pub fn decode(
                header: &FrameHeader,
                body: &[u8],
            ) -> Result<Result<PeerResponse, PeerFailure>, PeerProtocolError> {
                let kind = PeerKind::check_response(header)?;
                match kind {
                    $(PeerKind::$variant => Ok(
                        decode_response_body::<$response>(header, kind, body)?
                            .map(PeerResponse::$variant),
                    ),)*
                    other => Err(PeerProtocolError::UnexpectedKind {
                        expected: "a service kind",
                        kind: other.code(),
                    }),
                }
            }
        }
    };
}

peer_kinds! {
    link {
        /// The first frame on every peer connection: cluster, node ids and channel.
        0x4000 PeerHandshake versions 1..=1;
        /// The control connection's liveness and round-trip probe.
        0x4001 Ping versions 1..=1;
    }
    service {
        /// openraft's AppendEntries (replication and heartbeats), opaque.
        0x4010 RaftAppendEntries(RaftPayload, RaftPayload) versions 1..=1;
        /// openraft's RequestVote, opaque.
        0x4011 RaftVote(RaftPayload, RaftPayload) versions 1..=1;
        /// openraft's InstallSnapshot (one chunk), opaque.
        0x4012 RaftInstallSnapshot(RaftPayload, RaftPayload) versions 1..=1;
        /// A follower node's replica fetcher asks a leader node for the bytes past each
        /// partition's fetch offset, for all the partitions it follows there (a long poll).
        0x4020 ReplicaFetch(ReplicaFetchRequest, ReplicaFetchResponse) versions 1..=1;
        /// A new follower asks the leader where an epoch ends in the leader's log, to truncate
        /// what the leader does not have.
        0x4021 OffsetForLeaderEpoch(OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse) versions 1..=1;
        /// A group coordinator asks the leader of some partitions for their offsets (log
        /// start, high watermark, log end, and optionally an offset by time or the time of an
        /// offset), for lag and offset resets.
        0x4028 PartitionOffsets(PartitionOffsetsRequest, PartitionOffsetsResponse) versions 1..=1;
        /// An admin request (or InitProducerId, or a node's registration) sent to a node that
        /// is not the controller, forwarded to the controller.
        0x4030 ControllerForward(ControllerForwardRequest, ControllerForwardResponse) versions 1..=1;
        /// A node's lease renewal with the active controller (an in-memory heartbeat, not a
        /// Raft write).
        0x4031 LeaseRenew(LeaseRenewRequest, LeaseRenewResponse) versions 1..=1;
    }
}

impl PeerKind {
    /// The wire number.
    #[must_use]
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// Whether this build speaks `version` of the kind.
    #[must_use]
    pub const fn supports(self, version: u16) -> bool {
        self.version_min() <= version && version <= self.version_max()
    }

    /// Whether `code` (response bit cleared) lies in the peer range at all.
    #[must_use]
    pub const fn in_peer_range(code: u16) -> bool {
        PEER_KIND_FIRST <= code && code <= PEER_KIND_LAST
    }

    /// The kind and version of a header's number (response bit cleared), checked against what
    /// this build speaks.
    ///
    /// # Errors
    /// `NotPeerKind` (outside the peer range: not a peer speaking), `UnknownKind` (in the range
    /// but not known to this build), `UnsupportedVersion`.
    pub fn check(code: u16, version: u16) -> Result<PeerKind, PeerProtocolError> {
        if !PeerKind::in_peer_range(code) {
            return Err(PeerProtocolError::NotPeerKind { kind: code });
        }
        let kind =
            PeerKind::from_code(code).ok_or(PeerProtocolError::UnknownKind { kind: code })?;
        if !kind.supports(version) {
            return Err(PeerProtocolError::UnsupportedVersion { kind, version });
        }
        Ok(kind)
    }

    /// The kind of a request frame.
    ///
    /// # Errors
    /// `WrongDirection` for a response frame, else as [`PeerKind::check`].
    pub fn check_request(header: &FrameHeader) -> Result<PeerKind, PeerProtocolError> {
        if header.is_response() {
            return Err(PeerProtocolError::WrongDirection {
                kind: header.kind,
                expected: Direction::Request,
            });
        }
        PeerKind::check(header.kind, header.version)
    }

    /// The kind of a response frame.
    ///
    /// # Errors
    /// `WrongDirection` for a request frame, else as [`PeerKind::check`].
    pub fn check_response(header: &FrameHeader) -> Result<PeerKind, PeerProtocolError> {
        if !header.is_response() {
            return Err(PeerProtocolError::WrongDirection {
                kind: header.kind,
                expected: Direction::Response,
            });
        }
        PeerKind::check(header.request_kind(), header.version)
    }

    /// Every kind with its version range, as a handshake lists them.
    #[must_use]
    pub fn handshake_list() -> Vec<KindVersions> {
        PeerKind::ALL
            .iter()
            .map(|kind| KindVersions {
                kind: kind.code(),
                name: kind.name().to_owned(),
                version_min: kind.version_min(),
                version_max: kind.version_max(),
            })
            .collect()
    }
}

/// PeerHandshake request, version 1: the first frame a dialling node sends on each connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHandshakeRequest {
    /// The dialling node's cluster id; the listening node refuses another one.
    pub cluster_id: String,
    /// The dialling node's id.
    pub node_id: NodeId,
    /// The node the dialling node means to reach at this address; the listening node refuses
    /// the connection if that is not its own id (the address belongs to another node).
    pub target_node_id: NodeId,
    /// Which connection this is.
    pub channel: PeerChannel,
    /// The dialling node's software version, for logs.
    pub software_version: String,
    /// Every peer kind the dialling node speaks, with its version range.
    pub kinds: Vec<KindVersions>,
}

/// PeerHandshake response, version 1: the listening node's identity. A refusal is a
/// [`PeerFailure`] instead, which carries the same identity in its extras.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHandshakeResponse {
    /// The listening node's cluster id; the dialling node checks it too.
    pub cluster_id: String,
    /// The listening node's id; the dialling node checks it is the one it dialled.
    pub node_id: NodeId,
    /// The listening node's software version, for logs.
    pub software_version: String,
    /// Every peer kind the listening node speaks, with its version range.
    pub kinds: Vec<KindVersions>,
}

/// Ping request, version 1: an empty map. The control connection sends one on a timer; its
/// answer gives the round-trip time, and its absence says the connection is dead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingRequest {}

/// Ping response, version 1: an empty map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {}

/// The body of the Raft kinds, request and response alike: one openraft message (request, or
/// the remote Raft's whole result) encoded by [`encode_payload`]. Opaque here, so that this
/// crate does not depend on openraft; its nesting is bounded by [`decode_payload`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftPayload {
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// One metadata change a node forwards to the controller (the Raft leader), as the client
/// asked for it. `timeout_ms` is what is left of the client's timeout (0: none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ForwardedAdmin {
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u16,
        configs: std::collections::BTreeMap<String, String>,
        validate_only: bool,
        /// An internal topic (`__consumer_offsets`), which the controller creates once.
        internal: bool,
        timeout_ms: u32,
    },
    DeleteTopic {
        name: String,
        timeout_ms: u32,
    },
    AlterConfigs {
        topic: String,
        set: std::collections::BTreeMap<String, String>,
        removed: Vec<String>,
        validate_only: bool,
    },
    CreatePartitions {
        topic: String,
        partitions: u32,
        validate_only: bool,
        timeout_ms: u32,
    },
    /// A new producer id, or the next epoch of `current` (id, epoch).
    InitProducerId {
        current: Option<(u64, u16)>,
    },
    /// The forwarding node's own registration: where clients reach it, and which run of the
    /// node this is (a random number each start), so the controller gives the partitions it
    /// led a new leader epoch.
    RegisterNode {
        host: String,
        port: u16,
        /// 0 from a node written before incarnations existed.
        #[serde(default)]
        incarnation: u64,
    },
    /// A partition leader's change of the partition's in-sync replicas: a compare-and-set the
    /// controller commits only if the partition is still at both `leader_epoch` and
    /// `partition_epoch`. Answered with the partition's committed state
    /// ([`ControllerForwardResponse::isr`]), taken or not.
    AlterIsr {
        topic: String,
        partition: u32,
        /// The proposing leader.
        leader: u32,
        leader_epoch: u32,
        /// The partition epoch the proposal is based on.
        partition_epoch: u32,
        /// The proposed ISR (node ids, sorted, no duplicates, containing `leader`).
        isr: Vec<u32>,
    },
    /// A client's ElectLeaders: move each partition's leadership to its `to` (targeted), or
    /// to its first replica (`preferred`; an empty list: every partition). Answered per
    /// partition in [`ControllerForwardResponse::elections`].
    ElectLeaders {
        partitions: Vec<ElectionWire>,
        preferred: bool,
        timeout_ms: u32,
    },
    /// A client's AlterPartitionReassignments: move each partition to its `replicas`.
    /// Answered per partition in [`ControllerForwardResponse::reassignments`].
    AlterPartitionReassignments {
        partitions: Vec<ReassignmentWire>,
        timeout_ms: u32,
    },
}

/// The most partitions one forwarded AlterPartitionReassignments names or its answer lists:
/// the client protocol's bound on the request.
pub const REASSIGNMENTS_MAX: usize = crate::limits::PARTITIONS_PER_REQUEST_MAX as usize;

/// One partition of a forwarded AlterPartitionReassignments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReassignmentWire {
    pub topic: String,
    pub partition: u32,
    /// The target replicas, the preferred leader first, as the client named them (at most
    /// `REASSIGNMENT_REPLICAS_MAX`; the controller checks the rest).
    pub replicas: Vec<u32>,
}

/// One partition's outcome of a forwarded AlterPartitionReassignments: `error_code` 0 with the
/// partition's placement after the request, or a client error code and its message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReassignmentResultWire {
    pub topic: String,
    pub partition: u32,
    pub error_code: u16,
    pub message: String,
    /// The replicas after the request (while a move is under way: the target, then the
    /// replicas that leave).
    pub replicas: Vec<u32>,
    /// The target of the move under way, if one is.
    pub target_replicas: Option<Vec<u32>>,
    pub leader: Option<u32>,
    pub leader_epoch: u32,
}

/// The most partitions one forwarded ElectLeaders names or its answer lists: the client
/// protocol's bound on the request, which the answer of a preferred election of every
/// partition keeps to as well.
pub const ELECTIONS_MAX: usize = crate::limits::PARTITIONS_PER_REQUEST_MAX as usize;

/// One partition of a forwarded ElectLeaders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionWire {
    pub topic: String,
    pub partition: u32,
    /// The target node (targeted elections only).
    pub to: Option<u32>,
}

/// One partition's outcome of a forwarded ElectLeaders: `error_code` 0 with the partition's
/// leader and leader epoch after the request, or a client error code and its message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionResultWire {
    pub topic: String,
    pub partition: u32,
    pub error_code: u16,
    pub message: String,
    pub leader: Option<u32>,
    pub leader_epoch: u32,
}

/// The controller's answer to a forwarded ElectLeaders.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionsWire {
    pub results: Vec<ElectionResultWire>,
    /// A preferred election of every partition left some for another request.
    pub more: bool,
}

/// The most node ids an ISR may list, in a [`ForwardedAdmin::AlterIsr`] proposal or a
/// committed state. An ISR is a subset of a partition's replicas, which placement takes from
/// the cluster's live nodes; a controller quorum has at most 7 members today, so 16 leaves
/// room for nodes that are not quorum members while keeping a proposal small.
pub const ISR_NODES_MAX: usize = 16;

// Every replica of a partition under reassignment may be in its ISR at once.
const _: () = assert!(crate::limits::REASSIGNMENT_REPLICAS_MAX as usize <= ISR_NODES_MAX);

/// A partition's committed leadership and ISR state, as the controller answers a
/// [`ForwardedAdmin::AlterIsr`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedIsrWire {
    pub leader_epoch: u32,
    /// Grows with every committed change of the partition's leader or ISR.
    pub partition_epoch: u32,
    /// The committed ISR: node ids, sorted, no duplicates.
    pub isr: Vec<u32>,
}

/// ControllerForward request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerForwardRequest {
    pub admin: ForwardedAdmin,
}

/// ControllerForward response, version 1: the controller's answer. `error_code` is a client
/// protocol error code (0: success) with its `message`; InitProducerId's grant is in
/// `producer`, AlterIsr's answer in `isr`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerForwardResponse {
    pub error_code: u16,
    pub message: String,
    pub producer: Option<(u64, u16)>,
    /// AlterIsr's answer: the partition's committed state after the request (a new partition
    /// epoch if the proposal was taken, the unchanged one if it was refused).
    #[serde(default)]
    pub isr: Option<CommittedIsrWire>,
    /// ElectLeaders' answer: one outcome per partition. An answer without it (a build before
    /// it) reads as nil.
    #[serde(default)]
    pub elections: Option<ElectionsWire>,
    /// AlterPartitionReassignments' answer: one outcome per partition. An answer without it
    /// (a build before it) reads as nil.
    #[serde(default)]
    pub reassignments: Option<Vec<ReassignmentResultWire>>,
}

impl PeerBody for ControllerForwardRequest {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        use crate::limits::{
            CONFIG_KEY_BYTES_MAX, CONFIG_VALUE_BYTES_MAX, CONFIGS_PER_TOPIC_MAX,
            TOPIC_NAME_BYTES_MAX,
        };
        let check_configs = |configs: &std::collections::BTreeMap<String, String>| {
            check_at_most("configs", configs.len(), CONFIGS_PER_TOPIC_MAX)?;
            for (key, value) in configs {
                check_at_most("config key bytes", key.len(), CONFIG_KEY_BYTES_MAX)?;
                check_at_most("config value bytes", value.len(), CONFIG_VALUE_BYTES_MAX)?;
            }
            Ok::<(), PeerProtocolError>(())
        };
        match &self.admin {
            ForwardedAdmin::CreateTopic { name, configs, .. } => {
                check_at_most("topic name bytes", name.len(), TOPIC_NAME_BYTES_MAX)?;
                check_configs(configs)
            }
            ForwardedAdmin::DeleteTopic { name, .. } => {
                check_at_most("topic name bytes", name.len(), TOPIC_NAME_BYTES_MAX)
            }
            ForwardedAdmin::AlterConfigs {
                topic,
                set,
                removed,
                ..
            } => {
                check_at_most("topic name bytes", topic.len(), TOPIC_NAME_BYTES_MAX)?;
                check_configs(set)?;
                check_at_most("removed configs", removed.len(), CONFIGS_PER_TOPIC_MAX)?;
                for key in removed {
                    check_at_most("config key bytes", key.len(), CONFIG_KEY_BYTES_MAX)?;
                }
                Ok(())
            }
            ForwardedAdmin::CreatePartitions { topic, .. } => {
                check_at_most("topic name bytes", topic.len(), TOPIC_NAME_BYTES_MAX)
            }
            ForwardedAdmin::InitProducerId { .. } => Ok(()),
            ForwardedAdmin::RegisterNode { host, .. } => check_at_most(
                "host bytes",
                host.len(),
                crate::limits::SOFTWARE_FIELD_BYTES_MAX,
            ),
            ForwardedAdmin::AlterIsr {
                topic, leader, isr, ..
            } => {
                check_at_most("topic name bytes", topic.len(), TOPIC_NAME_BYTES_MAX)?;
                check_isr(isr)?;
                if isr.binary_search(leader).is_err() {
                    return Err(PeerProtocolError::FieldInvalid {
                        field: "isr",
                        rule: "contains the proposing leader",
                    });
                }
                Ok(())
            }
            ForwardedAdmin::ElectLeaders { partitions, .. } => {
                check_count_at_most("partitions", partitions.len(), ELECTIONS_MAX)?;
                for election in partitions {
                    check_at_most(
                        "topic name bytes",
                        election.topic.len(),
                        TOPIC_NAME_BYTES_MAX,
                    )?;
                }
                Ok(())
            }
            ForwardedAdmin::AlterPartitionReassignments { partitions, .. } => {
                check_count_at_most("partitions", partitions.len(), REASSIGNMENTS_MAX)?;
                for reassignment in partitions {
                    check_at_most(
                        "topic name bytes",
                        reassignment.topic.len(),
                        TOPIC_NAME_BYTES_MAX,
                    )?;
                    check_replicas(&reassignment.replicas)?;
                }
                Ok(())
            }
        }
    }
}

impl PeerBody for ControllerForwardResponse {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        check_at_most(
            "error message bytes",
            self.message.len(),
            PEER_ERROR_MESSAGE_BYTES_MAX,
        )?;
        if let Some(committed) = &self.isr {
            check_isr(&committed.isr)?;
        }
        if let Some(reassignments) = &self.reassignments {
            check_count_at_most("reassignments", reassignments.len(), REASSIGNMENTS_MAX)?;
            for result in reassignments {
                check_at_most(
                    "topic name bytes",
                    result.topic.len(),
                    crate::limits::TOPIC_NAME_BYTES_MAX,
                )?;
                check_at_most(
                    "error message bytes",
                    result.message.len(),
                    crate::limits::ERROR_MESSAGE_BYTES_MAX,
                )?;
                check_replicas(&result.replicas)?;
                if let Some(target) = &result.target_replicas {
                    check_replicas(target)?;
                }
            }
        }
        if let Some(elections) = &self.elections {
            check_count_at_most("elections", elections.results.len(), ELECTIONS_MAX)?;
            for result in &elections.results {
                check_at_most(
                    "topic name bytes",
                    result.topic.len(),
                    crate::limits::TOPIC_NAME_BYTES_MAX,
                )?;
                check_at_most(
                    "error message bytes",
                    result.message.len(),
                    crate::limits::ERROR_MESSAGE_BYTES_MAX,
                )?;
            }
        }
        Ok(())
    }
}

/// A reassignment's replica list: at most `REASSIGNMENT_REPLICAS_MAX` node ids (their order
/// and uniqueness are the controller's to check, per partition).
fn check_replicas(replicas: &[u32]) -> Result<(), PeerProtocolError> {
    check_count_at_most(
        "replicas",
        replicas.len(),
        crate::limits::REASSIGNMENT_REPLICAS_MAX as usize,
    )
}

/// An ISR's own rules: at most [`ISR_NODES_MAX`] node ids, sorted, none twice.
fn check_isr(isr: &[u32]) -> Result<(), PeerProtocolError> {
    check_count_at_most("isr", isr.len(), ISR_NODES_MAX)?;
    if !isr.windows(2).all(|pair| pair[0] < pair[1]) {
        return Err(PeerProtocolError::FieldInvalid {
            field: "isr",
            rule: "sorted, without duplicates",
        });
    }
    Ok(())
}

/// LeaseRenew request, version 1: the renewing node (known from the handshake) says which
/// metadata version it has applied, so the controller can tell a node that lags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRenewRequest {
    pub metadata_version: u64,
}

/// LeaseRenew response, version 1. `granted`: the answering node is the active controller and
/// renewed the lease for `lease_ms` from when it read the request. Not granted: it is not the
/// controller (any more); `controller_id` names the one it knows, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRenewResponse {
    pub granted: bool,
    pub lease_ms: u32,
    pub controller_id: Option<u32>,
    pub metadata_version: u64,
}

impl PeerBody for LeaseRenewRequest {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        Ok(())
    }
}

impl PeerBody for LeaseRenewResponse {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        Ok(())
    }
}

/// The most partitions one PartitionOffsets request may name (and its answer list). A
/// coordinator sends one request per leader node for all the partitions a DescribeGroups or
/// ResetOffsets needs there, so this is the most partitions of one group led by one node that
/// travel together (more are split over several requests). It equals the client protocol's
/// `PARTITIONS_PER_REQUEST_MAX`, and an answer of that many entries at their largest stays
/// within one frame (asserted below and tested with the largest answer).
pub const PARTITION_OFFSETS_PARTITIONS_MAX: u32 = crate::limits::PARTITIONS_PER_REQUEST_MAX;

/// The largest encoding of one answer entry other than its topic name and error message: field
/// names (about 110 bytes), five offsets of 9 bytes, the partition, the error's code, name and
/// retriable flag and map headers. Measured at about 250 bytes; 384 leaves room.
pub const PARTITION_OFFSETS_ENTRY_FIELDS_BYTES_MAX: u32 = 384;

const _: () = assert!(
    PARTITION_OFFSETS_PARTITIONS_MAX as u64
        * (crate::limits::TOPIC_NAME_BYTES_MAX as u64
            + crate::limits::ERROR_MESSAGE_BYTES_MAX as u64
            + PARTITION_OFFSETS_ENTRY_FIELDS_BYTES_MAX as u64)
        <= crate::limits::FRAME_BYTES_MAX as u64,
    "the largest PartitionOffsets answer fits one frame"
);

/// PartitionOffsets request, version 1: the partitions whose offsets a group coordinator
/// needs, all led (as the asking node's metadata says) by the node asked. At most
/// [`PARTITION_OFFSETS_PARTITIONS_MAX`] entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsetsRequest {
    pub partitions: Vec<PartitionOffsetsQuery>,
}

/// One partition of a PartitionOffsets request. The log start offset, high watermark and log
/// end offset are always answered; the two optional questions cost the leader a read each, so
/// they are asked only when needed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsetsQuery {
    pub topic: String,
    pub partition: PartitionId,
    /// Also find the first offset whose timestamp is at or after this time (ms since the
    /// epoch), below the high watermark, as ListOffsets does (ResetOffsets to a timestamp).
    #[serde(default)]
    pub offset_for_timestamp_ms: Option<i64>,
    /// Also give the timestamp of the first record at or after this offset, below the high
    /// watermark (DescribeGroups' `lag_ms`: how old the oldest unconsumed event is).
    #[serde(default)]
    pub timestamp_of_offset: Option<Offset>,
}

/// PartitionOffsets response, version 1: one entry per partition asked, in the order asked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsetsResponse {
    pub partitions: Vec<PartitionOffsetsAnswer>,
}

/// One partition's answer: its offsets, or (`error` set, the offsets absent) why the node
/// cannot give them, as a client error (`NotLeader`, `UnknownTopic`, `UnknownPartition`,
/// `LeaderNotAvailable`, `PartitionOffline`, `Overloaded`, `StorageError`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsetsAnswer {
    pub topic: String,
    pub partition: PartitionId,
    #[serde(default)]
    pub error: Option<ResponseError>,
    /// The first offset the log holds.
    #[serde(default)]
    pub log_start_offset: Option<Offset>,
    /// Offsets below it are committed: what consumers may read, and what lag counts to.
    #[serde(default)]
    pub high_watermark: Option<Offset>,
    /// The next offset the leader will assign (above the high watermark while writes wait to
    /// become durable).
    #[serde(default)]
    pub log_end_offset: Option<Offset>,
    /// The answer to `offset_for_timestamp_ms`: absent when not asked, or when no committed
    /// record is that recent.
    #[serde(default)]
    pub offset_for_timestamp: Option<Offset>,
    /// The answer to `timestamp_of_offset`: absent when not asked, or when no committed record
    /// is at or after that offset.
    #[serde(default)]
    pub timestamp_of_offset_ms: Option<i64>,
}

impl PartitionOffsetsAnswer {
    /// An answer carrying only `error`.
    #[must_use]
    pub fn failed(topic: String, partition: PartitionId, error: ResponseError) -> Self {
        PartitionOffsetsAnswer {
            topic,
            partition,
            error: Some(error),
            ..PartitionOffsetsAnswer::default()
        }
    }
}

/// The limits a PartitionOffsets request and its answer share: the entry count and each
/// entry's topic name.
fn check_offsets_partitions<'a>(
    topics: impl ExactSizeIterator<Item = &'a str>,
) -> Result<(), PeerProtocolError> {
    check_at_most("partitions", topics.len(), PARTITION_OFFSETS_PARTITIONS_MAX)?;
    for topic in topics {
        check_at_most(
            "topic name bytes",
            topic.len(),
            crate::limits::TOPIC_NAME_BYTES_MAX,
        )?;
    }
    Ok(())
}

impl PeerBody for PartitionOffsetsRequest {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        check_offsets_partitions(self.partitions.iter().map(|q| q.topic.as_str()))
    }
}

impl PeerBody for PartitionOffsetsResponse {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        check_offsets_partitions(self.partitions.iter().map(|a| a.topic.as_str()))?;
        for answer in &self.partitions {
            if let Some(error) = &answer.error {
                check_response_error(error)?;
            }
        }
        Ok(())
    }
}

/// The limits of a client error carried in a peer answer's entry: its name and message, so
/// that the entry stays within its kind's per-entry budget.
fn check_response_error(error: &ResponseError) -> Result<(), PeerProtocolError> {
    check_at_most(
        "error name bytes",
        error.name.len(),
        PEER_ERROR_NAME_BYTES_MAX,
    )?;
    check_at_most(
        "error message bytes",
        error.message.len(),
        crate::limits::ERROR_MESSAGE_BYTES_MAX,
    )
}

/// What every body checks after decoding, beyond what serde checks.
pub trait PeerBody: Serialize + serde::de::DeserializeOwned {
    /// Checks the field limits.
    ///
    /// # Errors
    /// The first limit broken.
    fn validate(&self) -> Result<(), PeerProtocolError> {
        Ok(())
    }
}

impl PeerBody for PeerHandshakeRequest {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        check_at_most(
            "cluster_id bytes",
            self.cluster_id.len(),
            CLUSTER_ID_BYTES_MAX,
        )?;
        check_at_most(
            "software_version bytes",
            self.software_version.len(),
            crate::limits::SOFTWARE_FIELD_BYTES_MAX,
        )?;
        check_kinds(&self.kinds)
    }
}

impl PeerBody for PeerHandshakeResponse {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        check_at_most(
            "cluster_id bytes",
            self.cluster_id.len(),
            CLUSTER_ID_BYTES_MAX,
        )?;
        check_at_most(
            "software_version bytes",
            self.software_version.len(),
            crate::limits::SOFTWARE_FIELD_BYTES_MAX,
        )?;
        check_kinds(&self.kinds)
    }
}

impl PeerBody for PingRequest {}
impl PeerBody for PingResponse {}

impl PeerBody for RaftPayload {}

impl PeerBody for PeerFailure {
    fn validate(&self) -> Result<(), PeerProtocolError> {
        check_at_most(
            "error name bytes",
            self.name.len(),
            PEER_ERROR_NAME_BYTES_MAX,
        )?;
        check_at_most(
            "error message bytes",
            self.message.len(),
            PEER_ERROR_MESSAGE_BYTES_MAX,
        )?;
        if let Some(cluster_id) = &self.cluster_id {
            check_at_most("cluster_id bytes", cluster_id.len(), CLUSTER_ID_BYTES_MAX)?;
        }
        Ok(())
    }
}

fn check_kinds(kinds: &[KindVersions]) -> Result<(), PeerProtocolError> {
    check_at_most("kinds", kinds.len(), PEER_KINDS_LISTED_MAX)?;
    for kind in kinds {
        check_at_most("kind name bytes", kind.name.len(), KIND_NAME_BYTES_MAX)?;
    }
    Ok(())
}

/// A length (bytes, entries) against a wire bound.
fn check_at_most(field: &'static str, value: usize, max: u32) -> Result<(), PeerProtocolError> {
    check_number_at_most(
        field,
        u64::try_from(value).unwrap_or(u64::MAX),
        u64::from(max),
    )
}

/// A count of entries against a bound kept as an in-memory length.
fn check_count_at_most(
    field: &'static str,
    value: usize,
    max: usize,
) -> Result<(), PeerProtocolError> {
    check_number_at_most(
        field,
        u64::try_from(value).unwrap_or(u64::MAX),
        u64::try_from(max).unwrap_or(u64::MAX),
    )
}

/// A number (a length, a count, or a field's value such as a wait) against its bound.
fn check_number_at_most(
    field: &'static str,
    value: u64,
    max: u64,
) -> Result<(), PeerProtocolError> {
    if value > max {
        return Err(PeerProtocolError::FieldTooLarge { field, value, max });
    }
    Ok(())
}

macro_rules! peer_error_codes {
    ($( $code:literal $variant:ident $retriable:literal $meaning:literal; )*) => {
        /// A stable peer error number. PROTOCOL.md's peer section lists the same codes, names,
        /// retriable flags and meanings (a test checks it). The numbers are the peer
        /// protocol's own, apart from the client protocol's `ErrorCode`: a peer failure never
        /// reaches a client as such.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum PeerErrorCode {
            $(
                #[doc = $meaning]
                $variant = $code,
            )*
        }

        impl PeerErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [PeerErrorCode] = &[$(PeerErrorCode::$variant),*];

            /// The code for a wire number, `None` for a number this build does not know.
            #[must_use]
            pub const fn from_code(code: u16) -> Option<PeerErrorCode> {
                match code {
                    $($code => Some(PeerErrorCode::$variant),)*
                    _ => None,
                }
            }

            /// The stable name, as it travels in the `name` field.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(PeerErrorCode::$variant => stringify!($variant),)*
                }
            }

            /// Whether the same request may succeed if sent again after a back-off.
            #[must_use]
            pub const fn is_retriable(self) -> bool {
                match self {
                    $(PeerErrorCode::$variant => $retriable,)*
                }
            }

            /// One sentence on what the error means.
            #[must_use]
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(PeerErrorCode::$variant => $meaning,)*
                }
            }
        }
    };
}

peer_error_codes! {
    1 HandshakeRequired false "The first frame on a peer connection must be a PeerHandshake request; the node closes the connection after answering.";
    2 ClusterIdMismatch false "The handshake names another cluster than the answering node's; extras `cluster_id` and `node_id` give the answering node's identity. The connection closes.";
    3 NodeIdMismatch false "The handshake's `target_node_id` is not the answering node's id (the address belongs to another node); extras give the answering node's identity. The connection closes.";
    4 NodeNotAdmitted false "The answering node does not accept peer connections from the handshake's `node_id` (not a member it knows). The connection closes.";
    5 DuplicateNodeId false "The handshake's `node_id` is the answering node's own: two nodes share an id, or a node dialled itself. The connection closes.";
    6 UnknownKind false "The node does not know this peer kind.";
    7 UnsupportedVersion false "The node does not speak this version of the kind.";
    8 CorruptFrame false "The body is not a valid MessagePack map of the expected shape, or breaks a field limit.";
    9 FrameTooLarge false "The frame is larger than the frame limit (8 MiB); the node closes the connection after answering.";
    10 Overloaded true "The answering node is shedding load; retry after a back-off.";
    11 Unavailable true "The handler cannot serve the request now (starting, stopping, or what it names is not here yet); retry after a back-off.";
    12 ServiceFailed false "The handler failed on the answering node; the message says why.";
}

impl PeerErrorCode {
    /// The wire number.
    #[must_use]
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// Whether the answering node closes the connection after this error.
    #[must_use]
    pub const fn closes_connection(self) -> bool {
        matches!(
            self,
            PeerErrorCode::HandshakeRequired
                | PeerErrorCode::ClusterIdMismatch
                | PeerErrorCode::NodeIdMismatch
                | PeerErrorCode::NodeNotAdmitted
                | PeerErrorCode::DuplicateNodeId
                | PeerErrorCode::FrameTooLarge
        )
    }
}

/// A peer request's failure as a whole: the body `{"error": {...}}` of a response frame.
/// Fields mirror the wire map one to one; `code` stays raw so that a newer code decodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFailure {
    /// The stable number; see [`PeerErrorCode`].
    pub code: u16,
    /// The stable name, e.g. `"ClusterIdMismatch"`.
    pub name: String,
    /// A human-readable sentence, at most `PEER_ERROR_MESSAGE_BYTES_MAX` bytes.
    pub message: String,
    /// Whether sending the same request again may succeed.
    pub retriable: bool,
    /// Handshake refusals: the answering node's cluster id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Handshake refusals: the answering node's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
}

impl PeerFailure {
    /// A failure with the code's name and retriable flag; the message is cut at
    /// `PEER_ERROR_MESSAGE_BYTES_MAX` bytes on a character boundary.
    #[must_use]
    pub fn new(code: PeerErrorCode, message: impl Into<String>) -> PeerFailure {
        let mut message = message.into();
        truncate_at_char_boundary(&mut message, PEER_ERROR_MESSAGE_BYTES_MAX as usize);
        PeerFailure {
            code: code.code(),
            name: code.name().to_owned(),
            message,
            retriable: code.is_retriable(),
            cluster_id: None,
            node_id: None,
        }
    }

    /// A handshake refusal, carrying the refusing node's identity.
    #[must_use]
    pub fn refusal(
        code: PeerErrorCode,
        message: impl Into<String>,
        cluster_id: &str,
        node_id: NodeId,
    ) -> PeerFailure {
        let mut cluster_id = cluster_id.to_owned();
        truncate_at_char_boundary(&mut cluster_id, CLUSTER_ID_BYTES_MAX as usize);
        PeerFailure {
            cluster_id: Some(cluster_id),
            node_id: Some(node_id),
            ..PeerFailure::new(code, message)
        }
    }

    /// The code, if this build knows it.
    #[must_use]
    pub fn error_code(&self) -> Option<PeerErrorCode> {
        PeerErrorCode::from_code(self.code)
    }
}

impl std::fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.name, self.code, self.message)
    }
}

impl std::error::Error for PeerFailure {}

/// Cuts `text` to at most `max` bytes without splitting a UTF-8 character.
fn truncate_at_char_boundary(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
}

/// Why bytes could not become a peer message, or a message could not become bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerProtocolError {
    /// The frame header failed the common check (`read_header`): too small or too large.
    #[error(transparent)]
    Frame(#[from] ProtocolError),
    /// The kind is outside the peer range: whoever sent it does not speak the peer protocol.
    #[error("kind {kind:#06x} is not a peer kind")]
    NotPeerKind { kind: u16 },
    /// The kind is in the peer range but unknown to this build.
    #[error("unknown peer kind {kind:#06x}")]
    UnknownKind { kind: u16 },
    /// The kind is known but not at this version.
    #[error(
        "{} does not speak version {version}; it speaks versions {} to {}",
        kind.name(),
        kind.version_min(),
        kind.version_max()
    )]
    UnsupportedVersion { kind: PeerKind, version: u16 },
    /// A known kind where another was expected (a link kind given to the service decoder, or
    /// an answer of another kind than its request).
    #[error("expected {expected}, got kind {kind:#06x}")]
    UnexpectedKind { expected: &'static str, kind: u16 },
    /// A response frame where a request was expected, or the reverse.
    #[error("expected a {expected} frame, got kind {kind:#06x}")]
    WrongDirection { kind: u16, expected: Direction },
    /// An encoder produced a frame above the frame limit; nothing was sent.
    #[error("encoded frame of {length} bytes exceeds the limit of {max} bytes")]
    EncodedTooLarge { length: u64, max: u32 },
    /// The body ends before the MessagePack value it starts is complete.
    #[error("body ends before its MessagePack value is complete")]
    Truncated,
    /// Bytes are left in the body after its map.
    #[error("bytes follow the body's map")]
    TrailingBytes,
    /// The body or a payload nests maps and arrays deeper than the limit.
    #[error("body nests maps and arrays deeper than {max} levels")]
    TooDeep { max: u32 },
    /// The body is MessagePack but not the expected shape (a missing field, a wrong type).
    #[error("malformed body: {reason}")]
    Malformed { reason: String },
    /// A count, a length or a bounded number is above its limit.
    #[error("{field} is {value}, above the limit of {max}")]
    FieldTooLarge {
        field: &'static str,
        value: u64,
        max: u64,
    },
    /// A field breaks a rule that relates it to itself or to another field (an ISR not sorted,
    /// a flushed offset past the fetch offset).
    #[error("{field} breaks its rule: {rule}")]
    FieldInvalid {
        field: &'static str,
        rule: &'static str,
    },
}

impl PeerProtocolError {
    /// The code a listening node answers with.
    #[must_use]
    pub fn error_code(&self) -> PeerErrorCode {
        match self {
            PeerProtocolError::Frame(ProtocolError::FrameTooLarge { .. })
            | PeerProtocolError::EncodedTooLarge { .. } => PeerErrorCode::FrameTooLarge,
            PeerProtocolError::NotPeerKind { .. } | PeerProtocolError::UnknownKind { .. } => {
                PeerErrorCode::UnknownKind
            }
            PeerProtocolError::UnsupportedVersion { .. } => PeerErrorCode::UnsupportedVersion,
            PeerProtocolError::Frame(_)
            | PeerProtocolError::UnexpectedKind { .. }
            | PeerProtocolError::WrongDirection { .. }
            | PeerProtocolError::Truncated
            | PeerProtocolError::TrailingBytes
            | PeerProtocolError::TooDeep { .. }
            | PeerProtocolError::Malformed { .. }
            | PeerProtocolError::FieldTooLarge { .. }
            | PeerProtocolError::FieldInvalid { .. } => PeerErrorCode::CorruptFrame,
        }
    }

    /// The failure a listening node answers with.
    #[must_use]
    pub fn failure(&self) -> PeerFailure {
        PeerFailure::new(self.error_code(), self.to_string())
    }

    /// Whether the stream's frame boundaries are lost, so the connection must close (after
    /// answering, if the header is whole).
    #[must_use]
    pub fn closes_connection(&self) -> bool {
        matches!(self, PeerProtocolError::Frame(_))
    }
}
