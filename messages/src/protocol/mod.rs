//! The client wire protocol, sans IO: frames, request and response bodies, error codes.
//! PROTOCOL.md at the repository root is the language-neutral specification; this module is
//! its Rust implementation and its tests hold the same golden bytes as its examples.
//!
//! # Shape
//! A frame is a 16-byte big-endian header (`length`, `kind`, `version`, `correlation_id`) and
//! one MessagePack map with named fields. The client sends requests; the server answers each
//! (except a Produce with `acks = 0`) with a frame of the same kind, top bit set, and the same
//! correlation id, in request order.
//!
//! # Layout
//! - `frame`: the header; [`read_header`], the check every frame reader makes before it reads a
//!   body; [`parse_frame`], which finds frames in a byte buffer.
//! - `error`: [`ErrorCode`], [`ResponseError`] (the wire error map), [`ProtocolError`].
//! - `codec`: body encoding and bounded decoding, topic-name and field-limit checks.
//! - `handshake`, `metadata`, `topics`, `produce`, `fetch`, `groups`, `cluster`, `leaders`,
//!   `reassignments`: the bodies, one struct per map.
//! - `fetch_writer`: the Fetch answer written by hand, record bytes borrowed, for `writev`.
//!
//! # Decoding a request (server side)
//! 1. [`read_header`] on the first 16 bytes (or [`parse_frame`] on a read buffer): the header
//!    and the body's length, or an error that says to close the connection (after answering
//!    `RequestTooLarge` by correlation id); then read exactly that many body bytes.
//! 2. [`Request::decode`] on the header and body: a typed, validated request, or a
//!    [`ProtocolError`] to answer with [`Response::failed`] and
//!    [`ProtocolError::response_error`].

mod cluster;
pub(crate) mod codec;
mod error;
mod fetch;
mod fetch_writer;
mod frame;
mod groups;
mod handshake;
mod leaders;
mod metadata;
mod produce;
mod reassignments;
mod topics;

#[cfg(test)]
mod tests;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use cluster::{
    ClusterNode, DescribeClusterRequest, DescribeClusterResponse, FollowerStatus,
    PartitionReplicaStatus, RaftInfo, ReplicaStatusListing,
};
pub use codec::{FrameAround, INTERNAL_TOPIC_PREFIX, is_internal_topic, validate_topic_name};
pub use error::{
    Direction, ErrorCode, GROUP_ERROR_CODE_FIRST, GROUP_ERROR_CODE_LAST, ProtocolError,
    ResponseError,
};
pub use fetch::{
    FetchPartition, FetchPartitionResponse, FetchRequest, FetchResponse, FetchTopic,
    FetchTopicResponse, InvalidOffsetSpec, ListOffsetsPartition, ListOffsetsPartitionResponse,
    ListOffsetsRequest, ListOffsetsResponse, ListOffsetsTopic, ListOffsetsTopicResponse,
    OffsetSpec,
};
pub use fetch_writer::{
    FetchPartitionRef, FetchResponseRef, FetchTopicRef, FramePart, FrameParts,
    encode_fetch_response,
};
pub use frame::{
    FRAME_HEADER_BYTES, FrameHeader, FrameParse, LENGTH_COUNTED_HEADER_BYTES, LENGTH_FIELD_BYTES,
    RESPONSE_BIT, RawFrame, parse_frame, read_header,
};
pub use groups::{
    CommittedOffset, CommittedTopic, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupDescription, GroupListing, GroupResult,
    ListGroupsRequest, ListGroupsResponse, MEMBER_EPOCH_JOIN, MEMBER_EPOCH_LEAVE,
    MEMBER_EPOCH_LEAVE_STATIC, MEMBER_EPOCH_NONE, MemberDescription, OffsetCommitPartition,
    OffsetCommitRequest, OffsetCommitResponse, OffsetCommitTopic, OffsetFetchRequest,
    OffsetFetchResponse, PartitionLag, PartitionMove, PartitionResult, PartitionResults,
    RebalanceRecord, ResetOffsetsRequest, ResetOffsetsResponse, ResetPartition, ResetTo,
    TopicPartitions,
};
pub use handshake::{HandshakeRequest, HandshakeResponse, KindVersions};
pub use leaders::{
    ElectLeadersRequest, ElectLeadersResponse, LeaderElection, LeaderElectionResult,
};
pub use metadata::{MetadataRequest, MetadataResponse, NodeInfo, PartitionMetadata, TopicMetadata};
pub use produce::{
    Acks, InitProducerIdRequest, InitProducerIdResponse, InvalidAcks, ProducePartition,
    ProducePartitionRef, ProducePartitionResponse, ProduceRequest, ProduceRequestRef,
    ProduceResponse, ProduceTopic, ProduceTopicRef, ProduceTopicResponse,
};
pub use reassignments::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, PartitionReassignment,
    PartitionReassignmentResult,
};
pub use topics::{
    AlterTopicConfigsRequest, AlterTopicConfigsResponse, ConfigEntry, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeTopicsRequest, DescribeTopicsResponse, NewTopic,
    OngoingReassignment, PartitionCountChange, TopicConfigChanges, TopicDescription, TopicResult,
};

/// A request body: one map, the kind it travels as, and the body that answers it.
pub trait RequestBody: Serialize + DeserializeOwned + Into<Request> {
    /// The kind number this body travels under.
    const KIND: RequestKind;
    /// The body of a successful answer.
    type Response: ResponseBody;

    /// Checks the protocol limits that serde cannot (counts, lengths, names, durations).
    ///
    /// # Errors
    /// The first limit broken.
    fn validate(&self) -> Result<(), ProtocolError>;

    /// The whole frame: header at the kind's current version, then the body.
    ///
    /// # Errors
    /// `EncodedTooLarge` if the frame would exceed `FRAME_BYTES_MAX`.
    fn encode_frame(&self, correlation_id: u64) -> Result<Vec<u8>, ProtocolError> {
        codec::encode_frame(
            Self::KIND.code(),
            Self::KIND.version_max(),
            correlation_id,
            self,
        )
    }

    /// The body encoded once, to be sent any number of times under fresh correlation ids
    /// (`EncodedRequest::header`) without encoding it again.
    ///
    /// # Errors
    /// `EncodedTooLarge` if the frame would exceed `FRAME_BYTES_MAX`.
    fn encode_body(&self) -> Result<EncodedRequest<Self>, ProtocolError>
    where
        Self: Sized,
    {
        let mut body = self.encode_frame(0)?;
        body.drain(..FRAME_HEADER_BYTES);
        Ok(EncodedRequest {
            body,
            kind: std::marker::PhantomData,
        })
    }
}

/// A request body encoded once: a producer resending the same batch, or a benchmark, writes
/// `header(correlation_id)` and then `body` for every send.
#[derive(Clone, Debug)]
pub struct EncodedRequest<R> {
    body: Vec<u8>,
    kind: std::marker::PhantomData<fn() -> R>,
}

impl<R: RequestBody> EncodedRequest<R> {
    /// The frame header for one send of this body.
    #[must_use]
    pub fn header(&self, correlation_id: u64) -> [u8; FRAME_HEADER_BYTES] {
        frame::header_for_body(
            R::KIND.code(),
            R::KIND.version_max(),
            correlation_id,
            self.body.len(),
        )
        .expect("the size was checked when the body was encoded")
        .encode()
    }

    /// The encoded body (one MessagePack map).
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// A successful response body.
pub trait ResponseBody: Serialize + DeserializeOwned + Into<Response> {
    /// The kind of the request this body answers.
    const KIND: RequestKind;

    /// The body inside `response`, or `response` back if it is another kind or a failure.
    ///
    /// # Errors
    /// Gives `response` back unchanged when it does not hold this body.
    fn from_response(response: Response) -> Result<Self, Response>;
}

/// The request kinds, their numbers, names and versions, in one table: the enum, `Request`,
/// `Response` and the body traits are all generated from it, so they cannot disagree.
macro_rules! request_kinds {
    ($(
        $(#[$doc:meta])*
        $code:literal $variant:ident($request:ty, $response:ty) versions $min:literal ..= $max:literal;
    )*) => {
        /// A request kind: the `kind` field of the frame header. Number 19 is reserved for
        /// consumer groups, so the numbers skip it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum RequestKind {
            $($(#[$doc])* $variant = $code,)*
        }

        impl RequestKind {
            /// Every kind, in numeric order.
            pub const ALL: &'static [RequestKind] = &[$(RequestKind::$variant),*];

            /// The kind for a header's number (response bit cleared), `None` if unknown.
            #[must_use]
            pub const fn from_code(code: u16) -> Option<RequestKind> {
                match code {
                    $($code => Some(RequestKind::$variant),)*
                    _ => None,
                }
            }

            /// The name, as listed in the handshake.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(RequestKind::$variant => stringify!($variant),)*
                }
            }

            /// The lowest version this build speaks.
            #[must_use]
            pub const fn version_min(self) -> u16 {
                match self {
                    $(RequestKind::$variant => $min,)*
                }
            }

            /// The highest version this build speaks; encoders write this one.
            #[must_use]
            pub const fn version_max(self) -> u16 {
                match self {
                    $(RequestKind::$variant => $max,)*
                }
            }
        }

        /// A decoded request, one variant per kind.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Request {
            $($variant($request),)*
        }

        impl Request {
            /// The kind this request travels as.
            #[must_use]
            pub fn kind(&self) -> RequestKind {
                match self {
                    $(Request::$variant(_) => RequestKind::$variant,)*
                }
            }

            /// Checks the protocol limits of the body.
            ///
            /// # Errors
            /// The first limit broken.
            pub fn validate(&self) -> Result<(), ProtocolError> {
                match self {
                    $(Request::$variant(body) => RequestBody::validate(body),)*
                }
            }

            /// The whole frame, at the kind's current version.
            ///
            /// # Errors
            /// `EncodedTooLarge` if the frame would exceed `FRAME_BYTES_MAX`.
            pub fn encode(&self, correlation_id: u64) -> Result<Vec<u8>, ProtocolError> {
                match self {
                    $(Request::$variant(body) => body.encode_frame(correlation_id),)*
                }
            }

            fn decode_known(kind: RequestKind, body: &[u8]) -> Result<Request, ProtocolError> {
                match kind {
                    $(RequestKind::$variant => {
                        let body: $request = codec::decode_body(body)?;
                        RequestBody::validate(&body)?;
                        Ok(Request::$variant(body))
                    })*
                }
            }
        }

        /// A decoded response: a success body of the request's kind, or the failure of the
        /// request as a whole.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Response {
            $($variant($response),)*
            /// The request failed as a whole; the body is `{"error": {...}}` only. Its shape is
            /// the same for every kind and version, so a client can read it even for a kind or
            /// version it does not know.
            Failed(FailedResponse),
        }

        impl Response {
            /// The kind number of the request this answers (response bit cleared).
            #[must_use]
            pub fn request_kind(&self) -> u16 {
                match self {
                    $(Response::$variant(_) => RequestKind::$variant.code(),)*
                    Response::Failed(failed) => failed.kind,
                }
            }

            /// The whole frame. A success body is written at its kind's current version; a
            /// failure at the version it carries (the request's). PROTOCOL.md promises that a
            /// response carries its request's version: while every kind has one version these
            /// agree, and when a kind gains a second one this must take the request's version.
            ///
            /// # Errors
            /// `EncodedTooLarge` if the frame would exceed `FRAME_BYTES_MAX`.
            pub fn encode(&self, correlation_id: u64) -> Result<Vec<u8>, ProtocolError> {
                match self {
                    $(Response::$variant(body) => codec::encode_frame(
                        RequestKind::$variant.code() | RESPONSE_BIT,
                        RequestKind::$variant.version_max(),
                        correlation_id,
                        body,
                    ),)*
                    Response::Failed(failed) => codec::encode_frame(
                        failed.kind | RESPONSE_BIT,
                        failed.version,
                        correlation_id,
                        &FailedBody { error: &failed.error },
                    ),
                }
            }

            fn decode_known(kind: RequestKind, body: &[u8]) -> Result<Response, ProtocolError> {
                match kind {
                    $(RequestKind::$variant => Ok(Response::$variant(codec::decode_body(body)?)),)*
                }
            }
        }

        $(
            impl RequestBody for $request {
                const KIND: RequestKind = RequestKind::$variant;
                type Response = $response;

                fn validate(&self) -> Result<(), ProtocolError> {
                    <$request>::validate(self)
                }
            }

            impl From<$request> for Request {
                fn from(body: $request) -> Request {
                    Request::$variant(body)
                }
            }

            impl ResponseBody for $response {
                const KIND: RequestKind = RequestKind::$variant;

                fn from_response(response: Response) -> Result<Self, Response> {
                    match response {
                        Response::$variant(body) => Ok(body),
                        other => Err(other),
                    }
                }
            }

            impl From<$response> for Response {
                fn from(body: $response) -> Response {
                    Response::$variant(body)
                }
            }
        )*
    };
}

request_kinds! {
    /// The first request on every connection: identities and versions.
    0 Handshake(HandshakeRequest, HandshakeResponse) versions 1..=1;
    /// Nodes, controller, and each topic's partition leaders and replicas.
    1 Metadata(MetadataRequest, MetadataResponse) versions 1..=1;
    /// Create topics.
    2 CreateTopics(CreateTopicsRequest, CreateTopicsResponse) versions 1..=1;
    /// Delete topics.
    3 DeleteTopics(DeleteTopicsRequest, DeleteTopicsResponse) versions 1..=1;
    /// Partitions and effective configs of topics.
    4 DescribeTopics(DescribeTopicsRequest, DescribeTopicsResponse) versions 1..=1;
    /// Set or delete topic config keys.
    5 AlterTopicConfigs(AlterTopicConfigsRequest, AlterTopicConfigsResponse) versions 1..=1;
    /// Raise topics' partition counts.
    6 CreatePartitions(CreatePartitionsRequest, CreatePartitionsResponse) versions 1..=1;
    /// Append record batches.
    7 Produce(ProduceRequest, ProduceResponse) versions 1..=1;
    /// Read record batches.
    8 Fetch(FetchRequest, FetchResponse) versions 1..=1;
    /// Look up offsets: earliest, latest, or by timestamp.
    9 ListOffsets(ListOffsetsRequest, ListOffsetsResponse) versions 1..=1;
    /// Get an idempotent producer id and epoch.
    10 InitProducerId(InitProducerIdRequest, InitProducerIdResponse) versions 1..=1;
    /// Which node coordinates a consumer group.
    11 FindCoordinator(FindCoordinatorRequest, FindCoordinatorResponse) versions 1..=1;
    /// Join, stay in, or leave a consumer group; get the member's assignment.
    12 ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse) versions 1..=1;
    /// Commit a group's offsets.
    13 OffsetCommit(OffsetCommitRequest, OffsetCommitResponse) versions 1..=1;
    /// Read a group's committed offsets.
    14 OffsetFetch(OffsetFetchRequest, OffsetFetchResponse) versions 1..=1;
    /// The groups a node coordinates.
    15 ListGroups(ListGroupsRequest, ListGroupsResponse) versions 1..=1;
    /// Members, assignment, offsets, lag and recent rebalances of groups.
    16 DescribeGroups(DescribeGroupsRequest, DescribeGroupsResponse) versions 1..=1;
    /// Delete empty groups and their offsets.
    17 DeleteGroups(DeleteGroupsRequest, DeleteGroupsResponse) versions 1..=1;
    /// Set an empty group's offsets to earliest, latest, an offset or a timestamp.
    18 ResetOffsets(ResetOffsetsRequest, ResetOffsetsResponse) versions 1..=1;
    /// The cluster as one node sees it: nodes, controller, Raft state, every partition.
    20 DescribeCluster(DescribeClusterRequest, DescribeClusterResponse) versions 1..=1;
    /// Move partitions' leadership to a named in-sync replica, or back to their first replica.
    21 ElectLeaders(ElectLeadersRequest, ElectLeadersResponse) versions 1..=1;
    /// Move partitions to other replicas: the new ones catch up, then the old ones leave.
    22 AlterPartitionReassignments(AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse) versions 1..=1;
}

impl RequestKind {
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

    /// The kind and version of a header, checked against what this build speaks.
    ///
    /// # Errors
    /// `UnknownKind` or `UnsupportedVersion`.
    pub fn check(code: u16, version: u16) -> Result<RequestKind, ProtocolError> {
        let kind = RequestKind::from_code(code).ok_or(ProtocolError::UnknownKind { kind: code })?;
        if !kind.supports(version) {
            return Err(ProtocolError::UnsupportedVersion { kind, version });
        }
        Ok(kind)
    }

    /// Every kind with its version range, as a handshake answer lists them.
    #[must_use]
    pub fn handshake_list() -> Vec<KindVersions> {
        RequestKind::ALL
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

impl Request {
    /// Decodes and validates the body of a request frame.
    ///
    /// # Errors
    /// `WrongDirection` for a response frame, `UnknownKind`, `UnsupportedVersion`, a decoding
    /// error (`Truncated`, `TrailingBytes`, `TooDeep`, `Malformed`), or a limit broken
    /// (`FieldTooLarge`, `InvalidField`, `InvalidTopicName`, `InvalidGroupId`). Answer it with
    /// [`Response::failed`] and [`ProtocolError::response_error`].
    pub fn decode(header: &FrameHeader, body: &[u8]) -> Result<Request, ProtocolError> {
        if header.is_response() {
            return Err(ProtocolError::WrongDirection {
                kind: header.kind,
                expected: Direction::Request,
            });
        }
        let kind = RequestKind::check(header.kind, header.version)?;
        Request::decode_known(kind, body)
    }

    /// Whether the server answers this request: every request but a Produce with `acks = 0`.
    #[must_use]
    pub fn expects_response(&self) -> bool {
        match self {
            Request::Produce(produce) => produce.expects_response(),
            _ => true,
        }
    }
}

/// The failure of a request as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedResponse {
    /// The request's kind number (response bit cleared); possibly one this build does not
    /// know, when the error is `UnknownRequestKind`.
    pub kind: u16,
    /// The request's version, echoed.
    pub version: u16,
    pub error: ResponseError,
}

/// The body of a failed request, for encoding.
#[derive(Serialize)]
struct FailedBody<'a> {
    error: &'a ResponseError,
}

/// What a response body holds at the top level when the request failed as a whole. Other
/// fields are skipped without being decoded.
#[derive(Deserialize)]
struct FailedProbe {
    #[serde(default)]
    error: Option<ResponseError>,
}

impl Response {
    /// The failure answer to the request whose header is `request`: same kind (response bit
    /// set on encoding) and same version.
    #[must_use]
    pub fn failed(request: &FrameHeader, error: ResponseError) -> Response {
        Response::Failed(FailedResponse {
            kind: request.request_kind(),
            version: request.version,
            error,
        })
    }

    /// Decodes the body of a response frame. A body with a top-level `error` is a
    /// [`Response::Failed`] whatever its kind and version; any other body must be of a kind
    /// and version this build speaks.
    ///
    /// # Errors
    /// `WrongDirection` for a request frame, `UnknownKind`, `UnsupportedVersion`, or a decoding
    /// error.
    pub fn decode(header: &FrameHeader, body: &[u8]) -> Result<Response, ProtocolError> {
        if !header.is_response() {
            return Err(ProtocolError::WrongDirection {
                kind: header.kind,
                expected: Direction::Response,
            });
        }
        let code = header.request_kind();
        // A success body has no top-level `error`, so probing first costs one extra walk of
        // the body (skipping `bin` contents in O(1)) and keeps success types free of it.
        let probe: FailedProbe = codec::decode_body(body)?;
        if let Some(error) = probe.error {
            return Ok(Response::Failed(FailedResponse {
                kind: code,
                version: header.version,
                error,
            }));
        }
        let kind = RequestKind::check(code, header.version)?;
        Response::decode_known(kind, body)
    }
}
