//! DescribeCluster (kind 20): the cluster as one node sees it, for operators (`vltava cluster
//! describe`): its id, its nodes, the active controller, the node's view of the metadata
//! quorum's Raft state, and every partition's leader, replicas, in-sync replicas and leader
//! epoch. Answered from the node's published metadata image and Raft metrics, never by asking
//! an actor, so it is as cheap as Metadata and still answers while the controller is busy.

use serde::{Deserialize, Serialize};

use super::error::ProtocolError;
use super::metadata::{TopicMetadata, check_requested_topics};
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionId};

/// DescribeCluster request, version 1.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeClusterRequest {
    /// The topics to describe. Absent: every topic (within the answer's bounds). Empty: none,
    /// only the cluster, its nodes and its quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
}

impl DescribeClusterRequest {
    /// Checks the topic count and names, as Metadata does.
    ///
    /// # Errors
    /// `FieldTooLarge` or `InvalidTopicName`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_requested_topics(self.topics.as_deref())
    }
}

/// DescribeCluster response, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeClusterResponse {
    /// The cluster's identity.
    pub cluster_id: String,
    /// The node that answered: `raft` is its view.
    pub node_id: NodeId,
    /// The active controller (the metadata quorum's leader), absent during an election.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_id: Option<NodeId>,
    /// The version of the metadata image the answer was made from, as in Metadata.
    pub metadata_version: u64,
    /// The answering node's view of the metadata quorum; absent on a node that is not a
    /// member of one (a single node without `--controller-quorum`). Boxed because `Response`
    /// holds every kind's body inline and travels in `Result`s, where a large variant would
    /// make every kind's answer pay for this one's size (clippy's `result_large_err`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<Box<RaftInfo>>,
    /// Every node registered in the metadata, in node id order.
    pub nodes: Vec<ClusterNode>,
    /// The requested topics (every topic when the request named none), in request order or
    /// name order, each as in Metadata.
    pub topics: Vec<TopicMetadata>,
    /// How many requested topics the answer leaves out to stay within its bounds
    /// (`CLUSTER_PARTITIONS_LISTED_MAX` partitions and `TOPICS_PER_REQUEST_MAX` topics); they
    /// are the last ones of the order above. Absent: none (a node writes it only when it left
    /// some out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics_omitted: Option<u32>,
    /// The replication progress of the listed partitions the answering node leads, from its
    /// own replicas' published state (other nodes' leaders are not asked). Absent: none (a
    /// node that leads none of them, or one that does not write it). Kept apart from
    /// `topics`, whose entries are Metadata's. Boxed, as `raft` is, to keep `Response` small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_status: Option<Box<ReplicaStatusListing>>,
}

/// The replica statuses of a DescribeCluster answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatusListing {
    /// At most `CLUSTER_REPLICA_STATUSES_LISTED_MAX`, in the order of the answer's `topics`.
    pub partitions: Vec<PartitionReplicaStatus>,
    /// How many led partitions `partitions` leaves out to stay within its bound; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions_omitted: Option<u32>,
}

/// One partition the answering node leads, as its replica last published it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReplicaStatus {
    pub topic: String,
    pub partition: PartitionId,
    /// The leader epoch the leader replica is in.
    pub leader_epoch: LeaderEpoch,
    pub log_end_offset: Offset,
    pub high_watermark: Offset,
    /// The leader's own flushed offset (every offset below it is fsynced).
    pub flushed_offset: Offset,
    /// Every other replica, in node id order, at most `CLUSTER_REPLICA_FOLLOWERS_LISTED_MAX`.
    pub followers: Vec<FollowerStatus>,
}

/// What a leader knows of one follower.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerStatus {
    pub node_id: NodeId,
    /// In the committed ISR as the leader knows it.
    pub in_sync: bool,
    /// The follower's log end and flushed offset from its latest fetch in this leader epoch;
    /// absent until it fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_end_offset: Option<Offset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flushed_offset: Option<Offset>,
    /// The leader's log end minus the follower's; absent until it fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_offsets: Option<u64>,
    /// How long ago the follower was last caught up with the leader's log end, in ms.
    pub lag_ms: u64,
}

/// The metadata quorum as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftInfo {
    /// The node's current Raft term.
    pub term: u64,
    /// The log index of the last entry the node knows to be committed, absent before it knows
    /// of any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_index: Option<u64>,
    /// The log index of the last entry the node applied to its metadata, absent before it
    /// applied any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
    /// The quorum's leader as the node knows it, absent during an election.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_id: Option<NodeId>,
}

/// One node in a DescribeCluster answer. A map, so that later versions of the node may add
/// optional fields (liveness, say) that older clients skip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub node_id: NodeId,
    /// The host name or IP address clients connect to (the node's advertised address).
    pub host: String,
    /// The client port.
    pub port: u16,
    /// The controller fenced the node: it stopped renewing its lease. Absent: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
    /// How long ago the node last renewed its lease with the answering node; present only
    /// when the answering node is the controller and has heard from the node since it became
    /// the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_age_ms: Option<u64>,
}
