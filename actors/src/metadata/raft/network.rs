//! The network seam: openraft's `RaftNetworkFactory` / `RaftNetwork` over [`RaftTransport`],
//! a small trait of vltava's own that `peer_transport::PeerRaftTransport` implements over
//! the peer links' control connection (and `in_process::InProcessRouter` for tests).
//!
//! A transport carries a request to one node and brings back that node's Raft answer as it
//! is (`RemoteResult`: the answer, or the remote Raft's error), or says why it could not
//! (`TransportError`). This adapter turns both into openraft's `RPCError`s: an unreachable
//! node is backed off (`UNREACHABLE_BACKOFF_*`), a timeout is reported as one, a remote
//! error is passed on. (openraft's "retry at once" `NetworkError` is never produced: a
//! failed link is a node to back off from.)
//!
//! Bounds: every call carries its timeout (openraft's per-RPC TTL: the election timeout's
//! minimum for a vote, the heartbeat-derived TTL for appends, `install_snapshot_timeout` per
//! snapshot chunk); the adapter also wraps the call in that timeout, so a transport that
//! hangs cannot hold Raft. A snapshot travels in chunks of at most `snapshot_max_chunk_size`
//! bytes (`config::SNAPSHOT_CHUNK_BYTES`), and an append carries at most
//! `log_store::LOG_READ_BYTES_MAX` bytes of entries: both fit one peer frame.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes};

use super::{RaftNodeId, TypeConfig};

/// The first wait before a request is sent again to a node that was unreachable: about what a
/// peer link takes to reconnect to a node that restarted.
pub const UNREACHABLE_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// The longest wait between attempts to reach a node: a node that is down for long costs one
/// attempt a second per peer, and one that comes back is reached within a second.
pub const UNREACHABLE_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The remote Raft's answer: its response, or the error it returned.
pub type RemoteResult<T, E = openraft::error::Infallible> = Result<T, RaftError<RaftNodeId, E>>;

/// Why a request did not reach its node or its answer did not come back. Either way the
/// request may or may not have been handled; Raft's requests are safe to repeat.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No connection to the node (down, cut off, or not known yet). openraft backs off.
    #[error("node {target} is unreachable")]
    Unreachable {
        target: RaftNodeId,
        #[source]
        source: Option<io::Error>,
    },
    /// The node did not answer in time.
    #[error("node {target} did not answer within {timeout:?}")]
    Timeout {
        target: RaftNodeId,
        timeout: Duration,
    },
}

/// How Raft's requests reach other members. `PeerRaftTransport` implements it over the peer
/// links' control connection; `in_process::InProcessTransport` implements it for tests. Every method must
/// return within `timeout` (the adapter enforces it as well).
pub trait RaftTransport: Send + Sync + Debug + 'static {
    /// The address Raft's membership gives for `target` (`host:port`), each time openraft
    /// makes a client for it: a transport that connects by address learns it here.
    fn peer_address(&self, target: RaftNodeId, address: &str) {
        let _ = (target, address);
    }

    /// Sends an AppendEntries (replication, heartbeat) to `target`.
    fn append_entries(
        &self,
        target: RaftNodeId,
        request: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> impl Future<
        Output = Result<RemoteResult<AppendEntriesResponse<RaftNodeId>>, TransportError>,
    > + Send;

    /// Sends a RequestVote to `target`.
    fn vote(
        &self,
        target: RaftNodeId,
        request: VoteRequest<RaftNodeId>,
        timeout: Duration,
    ) -> impl Future<Output = Result<RemoteResult<VoteResponse<RaftNodeId>>, TransportError>> + Send;

    /// Sends one chunk of a snapshot to `target`.
    fn install_snapshot(
        &self,
        target: RaftNodeId,
        request: InstallSnapshotRequest<TypeConfig>,
        timeout: Duration,
    ) -> impl Future<
        Output = Result<
            RemoteResult<InstallSnapshotResponse<RaftNodeId>, InstallSnapshotError>,
            TransportError,
        >,
    > + Send;
}

/// openraft's network factory over a [`RaftTransport`]: one [`PeerNetwork`] per target.
#[derive(Debug)]
pub struct NetworkFactory<T> {
    transport: Arc<T>,
    local: RaftNodeId,
}

impl<T: RaftTransport> NetworkFactory<T> {
    /// The factory of member `local`.
    pub fn new(local: RaftNodeId, transport: Arc<T>) -> NetworkFactory<T> {
        NetworkFactory { transport, local }
    }
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for NetworkFactory<T> {
    type Network = PeerNetwork<T>;

    async fn new_client(&mut self, target: RaftNodeId, node: &BasicNode) -> PeerNetwork<T> {
        self.transport.peer_address(target, &node.addr);
        PeerNetwork {
            transport: Arc::clone(&self.transport),
            local: self.local,
            target,
        }
    }
}

/// openraft's client for one target node.
#[derive(Debug)]
pub struct PeerNetwork<T> {
    transport: Arc<T>,
    local: RaftNodeId,
    target: RaftNodeId,
}

type Answer<T, E> = Result<Result<RemoteResult<T, E>, TransportError>, tokio::time::error::Elapsed>;

impl<T: RaftTransport> PeerNetwork<T> {
    // The error type is `RaftNetwork`'s, not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn answer<R, E: std::error::Error>(
        &self,
        action: RPCTypes,
        timeout: Duration,
        answer: Answer<R, E>,
    ) -> Result<R, RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId, E>>> {
        match answer {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(remote))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, remote)))
            }
            Ok(Err(TransportError::Timeout { .. })) | Err(_) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.local,
                target: self.target,
                timeout,
            })),
            Ok(Err(e @ TransportError::Unreachable { .. })) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
        }
    }
}

impl<T: RaftTransport> RaftNetwork<TypeConfig> for PeerNetwork<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        AppendEntriesResponse<RaftNodeId>,
        RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId>>,
    > {
        let timeout = option.hard_ttl();
        let answer = tokio::time::timeout(
            timeout,
            self.transport.append_entries(self.target, rpc, timeout),
        )
        .await;
        self.answer(RPCTypes::AppendEntries, timeout, answer)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<RaftNodeId>,
        RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId, InstallSnapshotError>>,
    > {
        let timeout = option.hard_ttl();
        let answer = tokio::time::timeout(
            timeout,
            self.transport.install_snapshot(self.target, rpc, timeout),
        )
        .await;
        self.answer(RPCTypes::InstallSnapshot, timeout, answer)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftNodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftNodeId>, RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId>>>
    {
        let timeout = option.hard_ttl();
        let answer =
            tokio::time::timeout(timeout, self.transport.vote(self.target, rpc, timeout)).await;
        self.answer(RPCTypes::Vote, timeout, answer)
    }

    fn backoff(&self) -> Backoff {
        let initial = UNREACHABLE_BACKOFF_INITIAL;
        Backoff::new((0u32..).map(move |attempt| {
            initial
                .saturating_mul(1u32 << attempt.min(16))
                .min(UNREACHABLE_BACKOFF_MAX)
        }))
    }
}
