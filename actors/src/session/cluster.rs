//! DescribeCluster: the cluster as this node sees it, made from the published metadata image
//! and the Raft member's status watches, so that answering it sends no message to any actor
//! (the controller may be busy with a change, or not on this node at all).

use std::collections::HashMap;
use std::time::Duration;

use vltava_messages::NodeId;
use vltava_messages::limits::{CLUSTER_PARTITIONS_LISTED_MAX, TOPICS_PER_REQUEST_MAX};
use vltava_messages::protocol::{
    ClusterNode, DescribeClusterRequest, DescribeClusterResponse, ErrorCode, RaftInfo,
    ResponseError, TopicMetadata, is_internal_topic,
};

use crate::metadata::MetadataImage;
use crate::metadata::raft::RaftStatus;

use super::topics::partition_metadata;

#[cfg(test)]
mod tests;

/// How much one answer may list: `TOPICS_PER_REQUEST_MAX` topics and
/// `CLUSTER_PARTITIONS_LISTED_MAX` partitions on the wire; tests pass smaller bounds.
#[derive(Clone, Copy, Debug)]
pub(super) struct ListingBounds {
    pub topics_max: u32,
    pub partitions_max: u32,
}

impl ListingBounds {
    /// The bounds the protocol promises (PROTOCOL.md, section 9), which keep the largest
    /// answer inside one frame.
    pub(super) const WIRE: ListingBounds = ListingBounds {
        topics_max: TOPICS_PER_REQUEST_MAX,
        partitions_max: CLUSTER_PARTITIONS_LISTED_MAX,
    };
}

/// The answer to `request` from `image` and, on a member of a metadata quorum, its Raft
/// `status`; `lease_ages` says how long ago each node renewed its lease here (empty unless
/// this node is the controller). Topics are listed whole, in request order (name order when the request names
/// none), until the next would pass `bounds`; the rest are counted in `topics_omitted`.
pub(super) fn describe_cluster(
    node_id: u32,
    image: &MetadataImage,
    status: Option<RaftStatus>,
    lease_ages: &HashMap<u32, Duration>,
    request: &DescribeClusterRequest,
    bounds: ListingBounds,
) -> DescribeClusterResponse {
    let names: Vec<&str> = match &request.topics {
        Some(names) => names.iter().map(String::as_str).collect(),
        None => image.topics.keys().map(String::as_str).collect(),
    };
    let mut topics = Vec::new();
    let mut partitions_listed: u64 = 0;
    for name in &names {
        let partition_count = image
            .topics
            .get(*name)
            .map_or(0, |topic| topic.partitions.len() as u64);
        // A topic is listed whole or not at all, so that a client never mistakes a cut
        // listing for a topic's partition count; stopping at the first topic that does not
        // fit (rather than skipping to smaller ones) keeps the omitted topics a suffix of the
        // order, which a client can ask for by name.
        if topics.len() as u64 >= u64::from(bounds.topics_max)
            || partitions_listed + partition_count > u64::from(bounds.partitions_max)
        {
            break;
        }
        partitions_listed += partition_count;
        topics.push(topic_listing(image, name));
    }
    let omitted = u32::try_from(names.len() - topics.len()).expect(
        "a request names at most TOPICS_PER_REQUEST_MAX topics and an image has fewer than 2^32",
    );
    DescribeClusterResponse {
        cluster_id: image.cluster_id.clone(),
        node_id: NodeId(node_id),
        controller_id: image.controller_id.map(NodeId),
        metadata_version: image.version,
        raft: status.map(|status| {
            Box::new(RaftInfo {
                term: status.term,
                commit_index: status.commit_index,
                applied_index: status.applied_index,
                leader_id: status.leader_id.map(NodeId),
            })
        }),
        nodes: image
            .nodes
            .values()
            .map(|node| ClusterNode {
                node_id: NodeId(node.node_id),
                host: node.host.clone(),
                port: node.port,
                fenced: node.fenced,
                lease_age_ms: lease_ages
                    .get(&node.node_id)
                    .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            })
            .collect(),
        topics,
        topics_omitted: (omitted > 0).then_some(omitted),
    }
}

/// One topic as Metadata describes it, `UnknownTopic` when the image has no such topic.
fn topic_listing(image: &MetadataImage, name: &str) -> TopicMetadata {
    match image.topics.get(name) {
        Some(topic) => TopicMetadata {
            name: name.to_owned(),
            error: None,
            internal: is_internal_topic(name),
            partitions: partition_metadata(image, topic),
        },
        None => TopicMetadata {
            name: name.to_owned(),
            error: Some(ResponseError::new(
                ErrorCode::UnknownTopic,
                format!("unknown topic {name}"),
            )),
            internal: false,
            partitions: Vec::new(),
        },
    }
}
