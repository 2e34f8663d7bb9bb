//! `NodeServices`: what every session of a node shares, built once by the NodeSupervisor.

use crate::metadata::freshness::{LeaseTable, MetadataFreshness};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::Semaphore;

use crate::log_limit::SharedWarnLimiter;

use crate::directory::ActorDirectory;
use crate::groups::GroupManagerHandle;
use crate::metadata::controller::ControllerHandle;
use crate::metadata::raft::RaftStatusSource;
use crate::metrics::RequestMetrics;
use crate::partition::supervisor::PartitionRegistry;

/// What every session of a node shares. Immutable but for the handles' own internals.
#[derive(Debug)]
pub struct NodeServices {
    pub node: String,
    pub node_id: u32,
    pub cluster_id: String,
    pub controller: ControllerHandle,
    /// The Raft member's status, read for DescribeCluster; `None` on a node that is not a
    /// member of a metadata quorum.
    pub raft: Option<RaftStatusSource>,
    pub partitions: PartitionRegistry,
    pub directory: ActorDirectory,
    /// Request bytes admitted and not yet answered, across the node.
    pub bytes_in_flight: Arc<Semaphore>,
    pub inflight_requests_max: usize,
    pub sessions_started: AtomicU64,
    /// Requests received and answer latency per kind, for `/metrics`.
    pub requests: Arc<RequestMetrics>,
    /// Consumer groups: routes group requests to their coordinators.
    pub groups: GroupManagerHandle,
    /// The node-wide budget of log lines that clients can cause (each session also has its
    /// own): see `log_limit`.
    pub warnings: SharedWarnLimiter,
    /// In a cluster: whether this node heard from the controller within a lease. A node cut
    /// off for longer answers metadata requests with a retriable error rather than an image
    /// it cannot vouch for. `None` on a single node, whose image is always its own.
    pub freshness: Option<MetadataFreshness>,
    /// In a cluster: when each node last renewed its lease here (current only while this
    /// node is the controller), for DescribeCluster.
    pub leases: Option<LeaseTable>,
}
