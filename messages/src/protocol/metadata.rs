//! Metadata (kind 1): the cluster's nodes, its controller, and for each topic its partitions'
//! leaders, leader epochs, replicas and in-sync replicas. A client asks for it at start-up and
//! again whenever an answer says `NotLeader`, `UnknownTopic`, `FencedLeaderEpoch` or
//! `LeaderNotAvailable`.

use serde::{Deserialize, Serialize};

use super::codec::check_topic_names;
use super::error::{ProtocolError, ResponseError};
use crate::limits::TOPICS_PER_REQUEST_MAX;
use crate::types::{LeaderEpoch, NodeId, PartitionId};

/// Metadata request, version 1.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataRequest {
    /// The topics to describe. Absent: every topic. Empty: none (only nodes and controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
}

impl MetadataRequest {
    /// Checks the topic count and names.
    ///
    /// # Errors
    /// `FieldTooLarge` or `InvalidTopicName`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_requested_topics(self.topics.as_deref())
    }
}

/// The rule of a request's optional topic list (Metadata, DescribeCluster): absent means
/// every topic; present, at most `TOPICS_PER_REQUEST_MAX` valid names.
pub(super) fn check_requested_topics(topics: Option<&[String]>) -> Result<(), ProtocolError> {
    match topics {
        None => Ok(()),
        Some(topics) => check_topic_names(
            "topics",
            topics.iter().map(String::as_str),
            TOPICS_PER_REQUEST_MAX,
        ),
    }
}

/// Metadata response, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataResponse {
    /// The cluster's identity.
    pub cluster_id: String,
    /// The node that currently acts as controller, absent during an election.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_id: Option<NodeId>,
    /// Every live node, with the address clients should connect to.
    pub nodes: Vec<NodeInfo>,
    /// The requested topics (all of them when the request named none), each with its own
    /// `error` (e.g. `UnknownTopic`) when it cannot be described.
    pub topics: Vec<TopicMetadata>,
    /// The version of the metadata this answer was made from: it grows with every committed
    /// change (on one node the count of metadata records applied; in a cluster the Raft log
    /// index of the image). A client keeps the answer with the highest version it has seen,
    /// so an answer from a node that lags never replaces newer routing. Absent from nodes
    /// that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_version: Option<u64>,
}

/// A node and its advertised client address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: NodeId,
    /// The host name or IP address clients should connect to (the node's advertised address,
    /// which may differ from the one it listens on).
    pub host: String,
    /// The client port.
    pub port: u16,
}

/// One topic in a metadata answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMetadata {
    pub name: String,
    /// Why the topic could not be described; `partitions` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
    /// Whether the topic is internal to vltava (e.g. committed offsets).
    pub internal: bool,
    /// Every partition, in partition order.
    pub partitions: Vec<PartitionMetadata>,
}

/// One partition in a metadata or describe answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMetadata {
    pub partition: PartitionId,
    /// E.g. `LeaderNotAvailable` during an election; the fields below still say what is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
    /// The current leader, absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<NodeId>,
    /// The current leader epoch. Clients send it back as `current_leader_epoch` so that a
    /// leader can tell stale metadata from its own lag.
    pub leader_epoch: LeaderEpoch,
    /// Every replica, the preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The replicas caught up with the leader (the ISR).
    pub in_sync_replicas: Vec<NodeId>,
}
