//! Raft over the peer links: [`PeerRaftTransport`] sends this member's Raft requests to the
//! other members on their control connection, and [`RaftPeerService`] answers theirs from the
//! local `MetadataRaft`.
//!
//! Each openraft message travels as one opaque [`RaftPayload`]: the request encoded by
//! `encode_payload` (named MessagePack) in a `PeerRequest::RaftAppendEntries`, `RaftVote` or
//! `RaftInstallSnapshot`, and the remote Raft's whole result (`RemoteResult`: its response, or
//! the error it returned) in the answer of the same kind. The peer protocol stays ignorant of
//! openraft; only this file knows which type a payload holds.
//!
//! Bounds: every call carries openraft's per-RPC timeout to `PeerLinkHandle::call`, which
//! bounds queueing and the answer; a link holds at most `PEER_QUEUE_MAX` requests per channel
//! and fails past that at once (`Overloaded`, which openraft backs off from). A payload fits
//! one peer frame (`FRAME_BYTES_MAX`): an append carries at most `LOG_READ_BYTES_MAX` of
//! entries and a snapshot chunk `SNAPSHOT_CHUNK_BYTES` (asserted below, and tested with the
//! largest of each). The listener admits the frames and runs the handler; the handler only
//! decodes and hands the request to Raft, so its work is what Raft's own is.
//!
//! Raft belongs on the control channel (so that an election never waits behind replica
//! fetches): the service refuses a Raft kind that arrives on the data channel.

use std::io;
use std::time::{Duration, Instant};

use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use vltava_messages::NodeId;
use vltava_messages::limits::FRAME_BYTES_MAX;
use vltava_messages::peer::{
    PeerErrorCode, PeerFailure, PeerProtocolError, RaftPayload, decode_payload, encode_payload,
};

use super::config::SNAPSHOT_CHUNK_BYTES;
use super::log_store::LOG_READ_BYTES_MAX;
use super::network::{RaftTransport, RemoteResult, TransportError};
use super::{MetadataRaft, RaftNodeId, TypeConfig, vltava_node_id};
use crate::log_limit::{SharedWarnLimiter, Verdict, WarnKind};
use crate::peer::{PeerChannel, PeerError, PeerLinks, PeerRequest, PeerResponse, PeerService};

/// What a Raft frame may hold besides its entries or snapshot bytes: the frame header, the
/// body map and the payload's `bin` header, and the request's own fields (vote, log ids,
/// snapshot meta with the membership, one named log id per entry). 64 KiB is far above what
/// a cluster of a few voters writes (a few hundred bytes, plus about 100 per entry for at most
/// `PAYLOAD_ENTRIES_MAX` entries).
pub const RAFT_FRAMING_BYTES_MAX: u64 = 64 * 1024;

// An append's entries are bounded in the log's own encoding; named MessagePack adds only the
// per-entry field names counted in the framing.
const _: () = assert!(LOG_READ_BYTES_MAX + RAFT_FRAMING_BYTES_MAX <= FRAME_BYTES_MAX as u64);
// MessagePack writes a snapshot chunk's `Vec<u8>` as an array of integers, which takes up to
// two bytes per byte (0x80 and above are `0xcc, byte`).
const _: () = assert!(2 * SNAPSHOT_CHUNK_BYTES + RAFT_FRAMING_BYTES_MAX <= FRAME_BYTES_MAX as u64);

/// The Raft transport over the node's peer links: each request goes to the target's link, on
/// the control channel, with openraft's timeout. Cheap to clone (the links are shared).
#[derive(Clone, Debug)]
pub struct PeerRaftTransport {
    links: PeerLinks,
}

impl PeerRaftTransport {
    /// A transport over `links`, which the node keeps reconciled with the quorum's members.
    #[must_use]
    pub fn new(links: PeerLinks) -> PeerRaftTransport {
        PeerRaftTransport { links }
    }

    /// Sends an encoded request to `target` on the control channel.
    async fn call(
        &self,
        target: RaftNodeId,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        let Some(node) = vltava_node_id(target) else {
            return Err(unreachable(
                target,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("Raft id {target} names no vltava node"),
                ),
            ));
        };
        self.links
            .call(node, PeerChannel::Control, request, timeout)
            .await
            .map_err(|e| peer_error(target, e))
    }
}

/// One Raft call: encode the request as the payload of `$kind`, call, and decode the answer
/// of the same kind into the remote Raft's result. A macro, not a generic function, because
/// the bounds it would need are serde's, which this crate leaves to `messages`.
macro_rules! raft_call {
    ($transport:expr, $target:expr, $request:expr, $timeout:expr, $kind:ident) => {{
        let target = $target;
        // A request that cannot be encoded will not encode on a retry either; openraft has
        // no "not retriable" network error, so it is an unreachable node, logged by Raft.
        let payload = encode_payload(&$request).map_err(|e| invalid(target, e))?;
        match $transport
            .call(
                target,
                PeerRequest::$kind(RaftPayload { payload }),
                $timeout,
            )
            .await?
        {
            // An answer that does not decode is a remote node of another build, or a bug
            // there: repeating the request at once would fail the same way, so it is backed
            // off from as an unreachable node, with the reason for Raft's log.
            PeerResponse::$kind(body) => {
                decode_payload(&body.payload).map_err(|e| invalid(target, e))
            }
            // The link checks that an answer is of its request's kind; this is that invariant
            // failing, treated like an answer that does not decode.
            other => Err(unreachable(
                target,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "a {} answer to a {}",
                        other.kind().name(),
                        stringify!($kind)
                    ),
                ),
            )),
        }
    }};
}

fn invalid(target: RaftNodeId, error: PeerProtocolError) -> TransportError {
    unreachable(target, io::Error::new(io::ErrorKind::InvalidData, error))
}

fn unreachable(target: RaftNodeId, source: io::Error) -> TransportError {
    TransportError::Unreachable {
        target,
        source: Some(source),
    }
}

/// A link's failure as Raft's network sees it. Only a timeout is reported as one (openraft
/// tells it apart in its logs and metrics); everything else is a node to back off from.
fn peer_error(target: RaftNodeId, error: PeerError) -> TransportError {
    match error {
        PeerError::Timeout { timeout, .. } => TransportError::Timeout { target, timeout },
        // The remote node answered, but not with Raft's answer: its handler failed (a payload
        // it could not decode, Raft on the data channel). That is not a `RaftError` the remote
        // Raft returned, so it cannot be openraft's `RemoteError`; and a request sent again at
        // once would fail the same way, so it is an unreachable node, backed off from, with
        // the failure as the reason.
        remote @ PeerError::Remote { .. } => {
            unreachable(target, io::Error::new(io::ErrorKind::InvalidData, remote))
        }
        // Down, overloaded, refused, not linked yet, or a request too large to send: each
        // is retriable only after a back-off, or not at all, so none is a reason to retry at
        // once.
        other => unreachable(target, io::Error::other(other)),
    }
}

impl RaftTransport for PeerRaftTransport {
    async fn append_entries(
        &self,
        target: RaftNodeId,
        request: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<RemoteResult<AppendEntriesResponse<RaftNodeId>>, TransportError> {
        raft_call!(self, target, request, timeout, RaftAppendEntries)
    }

    async fn vote(
        &self,
        target: RaftNodeId,
        request: VoteRequest<RaftNodeId>,
        timeout: Duration,
    ) -> Result<RemoteResult<VoteResponse<RaftNodeId>>, TransportError> {
        raft_call!(self, target, request, timeout, RaftVote)
    }

    async fn install_snapshot(
        &self,
        target: RaftNodeId,
        request: InstallSnapshotRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<
        RemoteResult<InstallSnapshotResponse<RaftNodeId>, InstallSnapshotError>,
        TransportError,
    > {
        raft_call!(self, target, request, timeout, RaftInstallSnapshot)
    }
}

/// Answers the other members' Raft requests from the local member's `MetadataRaft`. A new
/// one is made for each Raft started (a restart makes a new `MetadataRaft`).
pub struct RaftPeerService {
    raft: MetadataRaft,
    /// Bad payloads are a peer's bug, not an operating condition: a few lines per window say
    /// so without letting a looping peer fill the log.
    warnings: SharedWarnLimiter,
}

impl std::fmt::Debug for RaftPeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // openraft's handle has no `Debug`; its id says which member this serves.
        f.debug_struct("RaftPeerService")
            .field("raft_id", &self.raft.metrics().borrow().id)
            .finish_non_exhaustive()
    }
}

impl RaftPeerService {
    #[must_use]
    pub fn new(raft: MetadataRaft) -> RaftPeerService {
        RaftPeerService {
            raft,
            warnings: SharedWarnLimiter::default(),
        }
    }

    /// The failure answering a request whose payload does not decode (`CorruptFrame`),
    /// logged within the warning budget.
    fn bad_payload(
        &self,
        from: NodeId,
        kind: &'static str,
        error: &PeerProtocolError,
    ) -> PeerFailure {
        if let Verdict::Log { suppressed } =
            self.warnings.check(WarnKind::BadRequest, Instant::now())
        {
            tracing::warn!(
                from = from.0,
                kind,
                suppressed,
                %error,
                "a Raft request's payload does not decode"
            );
        }
        error.failure()
    }
}

/// The failure answering a request whose Raft answer does not encode. Raft's types always
/// encode; a failure would be a bug in their serde, answered as the handler's failure.
fn answer_failure(error: &PeerProtocolError) -> PeerFailure {
    PeerFailure::new(
        PeerErrorCode::ServiceFailed,
        format!("the Raft answer does not encode: {error}"),
    )
}

fn answer(payload: Vec<u8>) -> RaftPayload {
    RaftPayload { payload }
}

impl PeerService for RaftPeerService {
    async fn handle(
        &self,
        from: NodeId,
        channel: PeerChannel,
        request: PeerRequest,
    ) -> Result<PeerResponse, PeerFailure> {
        if channel != PeerChannel::Control {
            // Raft on the data channel would queue elections behind replica fetches; the
            // sender is misconfigured, and retrying will not help.
            return Err(PeerFailure::new(
                PeerErrorCode::ServiceFailed,
                format!("{} belongs on the control channel", request.kind().name()),
            ));
        }
        match request {
            PeerRequest::RaftAppendEntries(body) => {
                let rpc: AppendEntriesRequest<TypeConfig> = decode_payload(&body.payload)
                    .map_err(|e| self.bad_payload(from, "RaftAppendEntries", &e))?;
                let result: RemoteResult<_> = self.raft.append_entries(rpc).await;
                let payload = encode_payload(&result).map_err(|e| answer_failure(&e))?;
                Ok(PeerResponse::RaftAppendEntries(answer(payload)))
            }
            PeerRequest::RaftVote(body) => {
                let rpc: VoteRequest<RaftNodeId> = decode_payload(&body.payload)
                    .map_err(|e| self.bad_payload(from, "RaftVote", &e))?;
                let result: RemoteResult<_> = self.raft.vote(rpc).await;
                let payload = encode_payload(&result).map_err(|e| answer_failure(&e))?;
                Ok(PeerResponse::RaftVote(answer(payload)))
            }
            PeerRequest::RaftInstallSnapshot(body) => {
                let rpc: InstallSnapshotRequest<TypeConfig> = decode_payload(&body.payload)
                    .map_err(|e| self.bad_payload(from, "RaftInstallSnapshot", &e))?;
                let result: RemoteResult<_, InstallSnapshotError> =
                    self.raft.install_snapshot(rpc).await;
                let payload = encode_payload(&result).map_err(|e| answer_failure(&e))?;
                Ok(PeerResponse::RaftInstallSnapshot(answer(payload)))
            }
            PeerRequest::ControllerForward(_)
            | PeerRequest::LeaseRenew(_)
            | PeerRequest::PartitionOffsets(_)
            | PeerRequest::ReplicaFetch(_)
            | PeerRequest::OffsetForLeaderEpoch(_) => Err(PeerFailure::new(
                PeerErrorCode::ServiceFailed,
                "the Raft service answers Raft kinds only",
            )),
        }
    }
}
