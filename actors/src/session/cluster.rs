//! DescribeCluster: the cluster as this node sees it, made from the published metadata image,
//! the Raft member's status watches and the gauges its partitions publish, so that answering it
//! sends no message to any actor (the controller may be busy with a change, or not on this
//! node at all).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vltava_messages::limits::{
    CLUSTER_PARTITIONS_LISTED_MAX, CLUSTER_REPLICA_FOLLOWERS_LISTED_MAX,
    CLUSTER_REPLICA_STATUSES_LISTED_MAX, TOPICS_PER_REQUEST_MAX,
};
use vltava_messages::protocol::{
    ClusterNode, DescribeClusterRequest, DescribeClusterResponse, ErrorCode, FollowerStatus,
    PartitionReplicaStatus, RaftInfo, ReplicaStatusListing, ResponseError, TopicMetadata,
    is_internal_topic,
};
use vltava_messages::{LeaderEpoch, NodeId, Offset, PartitionId};

use crate::directory::{ActorDirectory, PartitionGauges, PublishedState, ReplicaRole};
use crate::metadata::MetadataImage;
use crate::metadata::raft::RaftStatus;

use super::topics::partition_metadata;

#[cfg(test)]
mod tests;

/// How much one answer may list: `TOPICS_PER_REQUEST_MAX` topics,
/// `CLUSTER_PARTITIONS_LISTED_MAX` partitions and `CLUSTER_REPLICA_STATUSES_LISTED_MAX` replica
/// statuses on the wire; tests pass smaller bounds.
#[derive(Clone, Copy, Debug)]
pub(super) struct ListingBounds {
    pub topics_max: u32,
    pub partitions_max: u32,
    pub statuses_max: u32,
}

/// The partitions this node leads, by topic and index, with the gauges they publish.
pub(super) type LedPartitions = BTreeMap<(String, u32), Arc<PartitionGauges>>;

/// The partitions whose replica on this node last published itself as leader.
pub(super) fn led_partitions(directory: &ActorDirectory) -> LedPartitions {
    directory
        .snapshot()
        .into_iter()
        .filter_map(|entry| match entry.state {
            Some(PublishedState::Partition(g)) if g.role() == ReplicaRole::Leader => {
                Some(((g.topic.clone(), g.partition), g))
            }
            _ => None,
        })
        .collect()
}

impl ListingBounds {
    /// The bounds the protocol promises (PROTOCOL.md, section 9), which keep the largest
    /// answer inside one frame.
    pub(super) const WIRE: ListingBounds = ListingBounds {
        topics_max: TOPICS_PER_REQUEST_MAX,
        partitions_max: CLUSTER_PARTITIONS_LISTED_MAX,
        statuses_max: CLUSTER_REPLICA_STATUSES_LISTED_MAX,
    };
}

/// The answer to `request` from `image` and, on a member of a metadata quorum, its Raft
/// `status`; `lease_ages` says how long ago each node renewed its lease here (empty unless
/// this node is the controller); `led` are the partitions this node leads. Topics are listed
/// whole, in request order (name order when the request names none), until the next would pass
/// `bounds`; the rest are counted in `topics_omitted`. The listed partitions found in `led`
/// get a replica status, up to the bound, in listing order.
pub(super) fn describe_cluster(
    node_id: u32,
    image: &MetadataImage,
    status: Option<RaftStatus>,
    lease_ages: &HashMap<u32, Duration>,
    led: &LedPartitions,
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
    let now_ms = unix_ms();
    let mut replica_status = Vec::new();
    let mut statuses_omitted: u32 = 0;
    for topic in &topics {
        for p in &topic.partitions {
            let Some(gauges) = led.get(&(topic.name.clone(), p.partition.0)) else {
                continue;
            };
            if replica_status.len() as u64 >= u64::from(bounds.statuses_max) {
                statuses_omitted = statuses_omitted.saturating_add(1);
                continue;
            }
            replica_status.push(replica_status_of(&topic.name, p.partition, gauges, now_ms));
        }
    }
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
        replica_status: (!replica_status.is_empty() || statuses_omitted > 0).then(|| {
            Box::new(ReplicaStatusListing {
                partitions: replica_status,
                partitions_omitted: (statuses_omitted > 0).then_some(statuses_omitted),
            })
        }),
    }
}

/// A led partition's replication progress, from the gauges its replica published.
fn replica_status_of(
    topic: &str,
    partition: PartitionId,
    gauges: &PartitionGauges,
    now_ms: u64,
) -> PartitionReplicaStatus {
    let replication = gauges.replication();
    let offset = |value: &std::sync::atomic::AtomicU64| Offset(value.load(Ordering::Relaxed));
    PartitionReplicaStatus {
        topic: topic.to_owned(),
        partition,
        leader_epoch: LeaderEpoch(
            u32::try_from(gauges.leader_epoch.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
        ),
        log_end_offset: offset(&gauges.log_end_offset),
        high_watermark: offset(&gauges.high_watermark),
        flushed_offset: offset(&gauges.flushed_offset),
        followers: replication
            .followers
            .iter()
            .take(CLUSTER_REPLICA_FOLLOWERS_LISTED_MAX as usize)
            .map(|f| FollowerStatus {
                node_id: NodeId(f.node_id),
                in_sync: replication.in_isr(f.node_id),
                log_end_offset: f.log_end_offset.map(Offset),
                flushed_offset: f.flushed_offset.map(Offset),
                lag_offsets: f.lag_offsets,
                lag_ms: f.lag_ms(now_ms),
            })
            .collect(),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
