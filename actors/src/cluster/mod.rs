//! A node's membership of a cluster (`--controller-quorum`): the peer listener and links, the
//! node's Raft member of the metadata quorum, and what joins them to the rest of the node.
//!
//! - [`NodePeerService`] answers the other nodes: Raft's requests go to the local Raft
//!   member, forwarded admin requests to the local controller (which answers
//!   `ControllerNotAvailable` if this node no longer leads the log; a request is forwarded
//!   once, never on), and PartitionOffsets (another node's group coordinator reading
//!   partitions led here) is answered from the local partitions
//!   (`groups::offsets::serve_local`). Only quorum members are admitted.
//! - [`PeerRemoteOffsets`] is the group coordinators' way to partitions other nodes lead: a
//!   PartitionOffsets request to the leader over the data connection.
//! - [`PeerForwarder`] is the controller handle's way to the controller on another node: the
//!   Raft leader, as this node's Raft metrics name it, over the data connection (its answers
//!   may be slow; the control connection's must not wait behind them).
//! - [`leases`]: node leases with the active controller, fencing, and the node's own
//!   metadata freshness.
//! - [`publish_images`] carries each committed image from the Raft state machine to the
//!   node's image watch (naming the current Raft leader as the controller) and to the
//!   producer-id registry, and has the MetadataApplier reconcile local partitions with it,
//!   off Raft's apply path: a partition opening never holds up the quorum.
//!
//! Forming a quorum: the member with the lowest id initialises Raft with every member of
//! `--controller-quorum` when its log is empty; the others wait to be reached. The cluster id
//! comes with it: the lowest member makes one for its new data directory, and a member with
//! a new data directory learns it from the first peer that names one (`peer::ClusterId`).

pub mod leases;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::BasicNode;
use tokio::sync::watch;
use vltava_messages::NodeId;
use vltava_messages::peer::{
    ControllerForwardRequest, ControllerForwardResponse, ForwardedAdmin, PartitionOffsetsRequest,
    PeerErrorCode, PeerFailure,
};

use crate::applier::ApplierHandle;
use crate::groups::offsets::{RemoteOffsets, RemoteOffsetsError, RemoteOffsetsFuture, serve_local};
use crate::metadata::MetadataImage;
use crate::metadata::controller::{ControllerError, ControllerHandle, Forwarder, Route};
use crate::metadata::freshness::MetadataFreshness;
use crate::metadata::producer_ids::ProducerRegistry;
use crate::metadata::raft::{MetadataRaft, RaftPeerService, raft_node_id, vltava_node_id};
use crate::partition::supervisor::PartitionRegistry;
use crate::peer::{PeerChannel, PeerError, PeerLinks, PeerRequest, PeerResponse, PeerService};

/// How often a node that waits for its quorum says so in its log.
pub const QUORUM_WAIT_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Answers the other members' peer requests.
pub struct NodePeerService {
    /// This node.
    node_id: NodeId,
    /// The quorum's members: only they are admitted.
    members: BTreeSet<NodeId>,
    /// When each node last renewed its lease here (meaningful while this node leads).
    leases: leases::LeaseTable,
    /// Set once this node's Raft member runs; until then Raft requests answer `Unavailable`.
    raft: OnceLock<(MetadataRaft, RaftPeerService)>,
    /// Set once this node's controller runs.
    controller: OnceLock<ControllerHandle>,
    /// This node's partitions, which answer PartitionOffsets.
    partitions: PartitionRegistry,
    /// The node's published metadata, which says who leads a partition not open here.
    image: watch::Receiver<Arc<MetadataImage>>,
    /// This node's links to the others, told to dial at once when their node connects here.
    links: PeerLinks,
    /// What ends a follower's long-polling fetch when it asks something else.
    fetch_wakers: crate::replication::FetchWakers,
}

impl std::fmt::Debug for NodePeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePeerService")
            .field("node_id", &self.node_id)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl NodePeerService {
    #[must_use]
    pub fn new(
        node_id: NodeId,
        members: BTreeSet<NodeId>,
        leases: leases::LeaseTable,
        partitions: PartitionRegistry,
        image: watch::Receiver<Arc<MetadataImage>>,
        links: PeerLinks,
    ) -> NodePeerService {
        NodePeerService {
            node_id,
            members,
            leases,
            raft: OnceLock::new(),
            controller: OnceLock::new(),
            partitions,
            image,
            links,
            fetch_wakers: crate::replication::FetchWakers::default(),
        }
    }

    /// Serves Raft's requests with `raft` from now on.
    pub fn serve_raft(&self, raft: MetadataRaft) {
        let _ = self.raft.set((raft.clone(), RaftPeerService::new(raft)));
    }

    /// Serves forwarded admin requests with `controller` from now on.
    pub fn serve_controller(&self, controller: ControllerHandle) {
        let _ = self.controller.set(controller);
    }
}

fn starting(what: &str) -> PeerFailure {
    PeerFailure::new(
        PeerErrorCode::Unavailable,
        format!("this node's {what} is still starting"),
    )
}

impl PeerService for NodePeerService {
    fn admits(&self, node: NodeId) -> bool {
        self.members.contains(&node)
    }

    /// A member that dials in is up: our own link to it stops waiting out its back-off.
    /// This matters most to the Raft leader, whose heartbeats reach a restarted member only
    /// over this node's link to it; left to its back-off (hundreds of milliseconds after an
    /// outage of half a second, up to 2 s) the link failed every heartbeat meanwhile, so the
    /// restarted member lagged, started an election on its own early and lost it
    /// (docs/benchmarks.md, "Why failover misses 1.5 s").
    fn connected(&self, from: NodeId, _channel: PeerChannel) {
        if let Some(link) = self.links.get(from) {
            link.reconnect_now();
        }
    }

    async fn handle(
        &self,
        from: NodeId,
        channel: PeerChannel,
        request: PeerRequest,
    ) -> Result<PeerResponse, PeerFailure> {
        match request {
            PeerRequest::ControllerForward(ControllerForwardRequest { admin }) => {
                let controller = self
                    .controller
                    .get()
                    .ok_or_else(|| starting("controller"))?;
                Ok(PeerResponse::ControllerForward(
                    controller.serve_forwarded(from.0, admin).await,
                ))
            }
            PeerRequest::LeaseRenew(_) => {
                let (raft, _) = self.raft.get().ok_or_else(|| starting("Raft member"))?;
                let version = self
                    .controller
                    .get()
                    .map_or(0, |c| c.image().borrow().version);
                Ok(PeerResponse::LeaseRenew(leases::answer_renewal(
                    raft,
                    self.node_id.0,
                    &self.leases,
                    from,
                    version,
                )))
            }
            PeerRequest::PartitionOffsets(request) => {
                tracing::debug!(
                    from = from.0,
                    partitions = request.partitions.len(),
                    "answering partition offsets"
                );
                Ok(PeerResponse::PartitionOffsets(
                    serve_local(self.node_id.0, &self.partitions, &self.image, request).await,
                ))
            }
            PeerRequest::ReplicaFetch(request) => Ok(PeerResponse::ReplicaFetch(
                crate::replication::serve_replica_fetch(
                    self.node_id,
                    from,
                    &self.partitions,
                    &self.fetch_wakers,
                    request,
                )
                .await,
            )),
            PeerRequest::OffsetForLeaderEpoch(request) => Ok(PeerResponse::OffsetForLeaderEpoch(
                crate::replication::serve_epoch_end(
                    self.node_id,
                    from,
                    &self.partitions,
                    &self.fetch_wakers,
                    request,
                )
                .await,
            )),
            raft_request => {
                let (_, raft) = self.raft.get().ok_or_else(|| starting("Raft member"))?;
                raft.handle(from, channel, raft_request).await
            }
        }
    }
}

/// Reaches the controller on another node over the peer links.
pub struct PeerForwarder {
    raft: MetadataRaft,
    node_id: u32,
    links: PeerLinks,
}

impl std::fmt::Debug for PeerForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerForwarder")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl PeerForwarder {
    #[must_use]
    pub fn new(raft: MetadataRaft, node_id: u32, links: PeerLinks) -> PeerForwarder {
        PeerForwarder {
            raft,
            node_id,
            links,
        }
    }
}

impl Forwarder for PeerForwarder {
    fn route(&self) -> Route {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader.and_then(vltava_node_id) {
            Some(node) if node.0 == self.node_id => Route::Local,
            Some(node) => Route::Remote(node.0),
            None => Route::Unknown,
        }
    }

    fn forward(
        &self,
        to: u32,
        admin: ForwardedAdmin,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<ControllerForwardResponse, ControllerError>> + Send + '_>>
    {
        Box::pin(async move {
            let request = PeerRequest::ControllerForward(ControllerForwardRequest { admin });
            // On the data connection, not the control one: answers on a connection come back
            // in request order, and an admin request may take seconds (a topic of thousands
            // of partitions), which on the control connection would hold Raft's heartbeats
            // and lease renewals behind it and cost an election.
            //
            // A controller that is paused or cut off answers nothing while the others elect a
            // new one; the request then waits no longer than that election: once another node
            // is known to lead, it ends with the retriable `ControllerNotAvailable` and the
            // client asks again (which reaches the new controller). The old one cannot decide
            // it any more: it no longer leads the metadata log, so it cannot commit.
            let call = self
                .links
                .call(NodeId(to), PeerChannel::Data, request, timeout);
            let mut metrics = self.raft.metrics();
            let moved = async move {
                loop {
                    let leader = metrics.borrow_and_update().current_leader;
                    if let Some(node) = leader.and_then(vltava_node_id)
                        && node.0 != to
                    {
                        return node;
                    }
                    if metrics.changed().await.is_err() {
                        // The Raft member stopped: the call's own timeout ends the wait.
                        std::future::pending::<()>().await;
                    }
                }
            };
            let answer = tokio::select! {
                answer = call => answer,
                node = moved => {
                    return Err(ControllerError::NotAvailable(format!(
                        "node {} leads now, not node {to}, which the request went to; ask again",
                        node.0
                    )));
                }
            };
            match answer {
                Ok(PeerResponse::ControllerForward(answer)) => Ok(answer),
                Ok(other) => Err(ControllerError::NotAvailable(format!(
                    "node {to} answered a forwarded request with {}",
                    other.kind().name()
                ))),
                Err(e) => Err(ControllerError::NotAvailable(format!(
                    "the controller on node {to} cannot be reached: {e}"
                ))),
            }
        })
    }
}

/// Reads the offsets of partitions other nodes lead, for this node's group coordinators: one
/// PartitionOffsets request to the leader on the data connection (its answers may wait behind
/// a forwarded admin request there, never behind Raft's heartbeats, and never hold them).
pub struct PeerRemoteOffsets {
    links: PeerLinks,
}

impl std::fmt::Debug for PeerRemoteOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerRemoteOffsets").finish_non_exhaustive()
    }
}

impl PeerRemoteOffsets {
    #[must_use]
    pub fn new(links: PeerLinks) -> PeerRemoteOffsets {
        PeerRemoteOffsets { links }
    }
}

impl RemoteOffsets for PeerRemoteOffsets {
    fn partition_offsets(
        &self,
        leader: NodeId,
        request: PartitionOffsetsRequest,
        timeout: Duration,
    ) -> RemoteOffsetsFuture<'_> {
        Box::pin(async move {
            let request = PeerRequest::PartitionOffsets(request);
            match self
                .links
                .call(leader, PeerChannel::Data, request, timeout)
                .await
            {
                Ok(PeerResponse::PartitionOffsets(answer)) => Ok(answer),
                Ok(other) => Err(RemoteOffsetsError::BadAnswer {
                    node: leader,
                    reason: format!("a {} answer", other.kind().name()),
                }),
                Err(e) => Err(remote_offsets_error(leader, e)),
            }
        })
    }
}

/// What a failed PartitionOffsets call means to the coordinator that made it.
fn remote_offsets_error(leader: NodeId, error: PeerError) -> RemoteOffsetsError {
    match error {
        PeerError::Timeout { timeout, .. } => RemoteOffsetsError::Timeout {
            node: leader,
            timeout,
        },
        PeerError::Overloaded { .. } => RemoteOffsetsError::Overloaded {
            node: leader,
            reason: error.to_string(),
        },
        PeerError::Remote { ref failure, .. }
            if failure.error_code() == Some(PeerErrorCode::Overloaded) =>
        {
            RemoteOffsetsError::Overloaded {
                node: leader,
                reason: error.to_string(),
            }
        }
        other => RemoteOffsetsError::Unreachable {
            node: leader,
            reason: other.to_string(),
        },
    }
}

/// Initialises the quorum with `members` if this node has the lowest id among them and its
/// Raft log is empty; otherwise does nothing (another member forms the quorum, or it formed
/// before). A member with a new data directory is not a risk here: it has the lowest id only
/// if it made the cluster id itself, which no other member holds.
pub async fn bootstrap_quorum(
    raft: &MetadataRaft,
    node_id: u32,
    members: &BTreeMap<u32, SocketAddr>,
) -> Result<(), String> {
    if members.keys().next() != Some(&node_id) {
        return Ok(());
    }
    if raft.is_initialized().await.map_err(|e| e.to_string())? {
        return Ok(());
    }
    let nodes: BTreeMap<u64, BasicNode> = members
        .iter()
        .map(|(id, address)| {
            (
                raft_node_id(NodeId(*id)),
                BasicNode::new(address.to_string()),
            )
        })
        .collect();
    tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "forming the controller quorum");
    match raft.initialize(nodes).await {
        Ok(()) => Ok(()),
        // Initialised meanwhile (by a vote from a member that formed it first): fine.
        Err(openraft::error::RaftError::APIError(
            openraft::error::InitializeError::NotAllowed(_),
        )) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Carries each committed image to the node until `raft` stops: the node's image watch
/// (with the current Raft leader as the controller), the producer-id registry, and the
/// applier, which it awaits before taking the next image (images that arrive meanwhile
/// are coalesced: only the newest is applied).
pub async fn publish_images(
    raft: MetadataRaft,
    mut committed: watch::Receiver<Arc<MetadataImage>>,
    publish: watch::Sender<Arc<MetadataImage>>,
    producer_ids: ProducerRegistry,
    applier: ApplierHandle,
    freshness: MetadataFreshness,
) {
    // The server metrics change only with the vote, the leader or the membership, not with
    // every heartbeat as the full metrics do.
    let mut metrics = raft.server_metrics();
    loop {
        let image = Arc::clone(&committed.borrow_and_update());
        let leader = metrics
            .borrow_and_update()
            .current_leader
            .and_then(vltava_node_id)
            .map(|n| n.0);
        let changed = {
            let current = publish.borrow();
            current.version != image.version || current.controller_id != leader
        };
        if changed {
            let shared = Arc::new(MetadataImage {
                controller_id: leader,
                ..(*image).clone()
            });
            producer_ids.publish(
                &shared.producers,
                shared.version,
                shared.producers.reserved_end,
            );
            publish.send_replace(Arc::clone(&shared));
            let version = shared.version;
            applier.apply(shared).await;
            freshness.applied(version);
        }
        tokio::select! {
            changed = committed.changed() => if changed.is_err() { return },
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}
