//! DescribeCluster's answer from an image: what it lists, in which order, where it stops, and
//! the Raft section only on a quorum member.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vltava_messages::protocol::{DescribeClusterRequest, ErrorCode};

use super::{LedPartitions, ListingBounds, describe_cluster};
use crate::directory::{FollowerGauges, PartitionGauges, ReplicaRole, ReplicationGauges};
use crate::metadata::raft::{RaftRole, RaftStatus};
use crate::metadata::{MetadataImage, NodeImage, PartitionImage, TopicImage};

/// An image of three nodes, node 2 the controller, and topics `a` (2 partitions), `b` (3) and
/// `c` (1), each partition led round-robin.
fn image() -> MetadataImage {
    let topic = |count: u32| TopicImage {
        topic_id: "id".into(),
        replication_factor: 1,
        configs: BTreeMap::new(),
        partitions: (0..count)
            .map(|p| PartitionImage {
                leader: Some(p % 3 + 1),
                leader_epoch: p,
                partition_epoch: 0,
                replicas: vec![p % 3 + 1],
                isr: vec![p % 3 + 1],
                target_replicas: None,
            })
            .collect(),
    };
    MetadataImage {
        cluster_id: "c1".into(),
        controller_id: Some(2),
        version: 42,
        nodes: (1..=3)
            .map(|id| {
                (
                    id,
                    NodeImage {
                        node_id: id,
                        host: format!("127.0.0.{id}"),
                        port: 9420,
                        fenced: false,
                        incarnation: 0,
                    },
                )
            })
            .collect(),
        topics: [("b", 3), ("a", 2), ("c", 1)]
            .into_iter()
            .map(|(name, count)| (name.to_owned(), topic(count)))
            .collect(),
        ..MetadataImage::default()
    }
}

fn status() -> RaftStatus {
    RaftStatus {
        role: RaftRole::Follower,
        term: 3,
        commit_index: Some(41),
        applied_index: Some(40),
        last_log_index: Some(41),
        leader_id: Some(2),
        voters: vec![1, 2, 3],
        peers: None,
    }
}

fn names(answer: &vltava_messages::protocol::DescribeClusterResponse) -> Vec<&str> {
    answer.topics.iter().map(|t| t.name.as_str()).collect()
}

#[test]
fn lists_the_cluster_every_node_and_every_topic_in_name_order() {
    let answer = describe_cluster(
        1,
        &image(),
        Some(status()),
        &HashMap::new(),
        &LedPartitions::new(),
        &DescribeClusterRequest::default(),
        ListingBounds::WIRE,
    );
    assert_eq!(answer.cluster_id, "c1");
    assert_eq!(answer.node_id.0, 1);
    assert_eq!(answer.controller_id.map(|n| n.0), Some(2));
    assert_eq!(answer.metadata_version, 42);
    let raft = answer
        .raft
        .as_ref()
        .expect("a quorum member describes its Raft state");
    assert_eq!(
        (
            raft.term,
            raft.commit_index,
            raft.applied_index,
            raft.leader_id.map(|n| n.0)
        ),
        (3, Some(41), Some(40), Some(2))
    );
    let nodes: Vec<(u32, &str)> = answer
        .nodes
        .iter()
        .map(|n| (n.node_id.0, n.host.as_str()))
        .collect();
    assert_eq!(
        nodes,
        [(1, "127.0.0.1"), (2, "127.0.0.2"), (3, "127.0.0.3")]
    );
    assert_eq!(names(&answer), ["a", "b", "c"]);
    let b = &answer.topics[1];
    assert_eq!(b.partitions.len(), 3);
    assert_eq!(b.partitions[2].leader.map(|n| n.0), Some(3));
    assert_eq!(b.partitions[2].leader_epoch.0, 2);
    assert_eq!(answer.topics_omitted, None);
}

#[test]
fn a_node_outside_a_quorum_has_no_raft_section() {
    let answer = describe_cluster(
        1,
        &image(),
        None,
        &HashMap::new(),
        &LedPartitions::new(),
        &DescribeClusterRequest::default(),
        ListingBounds::WIRE,
    );
    assert!(answer.raft.is_none());
    assert_eq!(names(&answer), ["a", "b", "c"]);
}

#[test]
fn named_topics_come_in_request_order_and_unknown_ones_say_so() {
    let request = DescribeClusterRequest {
        topics: Some(vec!["c".into(), "nope".into(), "a".into()]),
    };
    let answer = describe_cluster(
        1,
        &image(),
        None,
        &HashMap::new(),
        &LedPartitions::new(),
        &request,
        ListingBounds::WIRE,
    );
    assert_eq!(names(&answer), ["c", "nope", "a"]);
    let unknown = answer.topics[1].error.as_ref().expect("an error");
    assert_eq!(unknown.code, ErrorCode::UnknownTopic.code());
    assert!(answer.topics[1].partitions.is_empty());
    let none = describe_cluster(
        1,
        &image(),
        None,
        &HashMap::new(),
        &LedPartitions::new(),
        &DescribeClusterRequest {
            topics: Some(Vec::new()),
        },
        ListingBounds::WIRE,
    );
    assert!(none.topics.is_empty());
    assert_eq!(none.nodes.len(), 3);
}

/// Topics are listed whole until the next one would pass the partition bound, and the rest
/// (a suffix of the order, even where a later topic would still fit) are counted.
#[test]
fn the_listing_stops_before_the_topic_that_would_pass_the_partition_bound() {
    let bounds = ListingBounds {
        topics_max: 1024,
        partitions_max: 4,
        statuses_max: 16,
    };
    let answer = describe_cluster(
        1,
        &image(),
        None,
        &HashMap::new(),
        &LedPartitions::new(),
        &DescribeClusterRequest::default(),
        bounds,
    );
    // a (2) fits, a + b (5) does not; c (1) would, but the omitted topics stay a suffix.
    assert_eq!(names(&answer), ["a"]);
    assert_eq!(answer.topics_omitted, Some(2));

    let exact = ListingBounds {
        topics_max: 1024,
        partitions_max: 6,
        statuses_max: 16,
    };
    let answer = describe_cluster(
        1,
        &image(),
        None,
        &HashMap::new(),
        &LedPartitions::new(),
        &DescribeClusterRequest::default(),
        exact,
    );
    assert_eq!(names(&answer), ["a", "b", "c"]);
    assert_eq!(answer.topics_omitted, None);
}

#[test]
fn the_listing_stops_at_the_topic_bound() {
    let bounds = ListingBounds {
        topics_max: 2,
        partitions_max: 1000,
        statuses_max: 16,
    };
    let answer = describe_cluster(
        1,
        &image(),
        None,
        &HashMap::new(),
        &LedPartitions::new(),
        &DescribeClusterRequest::default(),
        bounds,
    );
    assert_eq!(names(&answer), ["a", "b"]);
    assert_eq!(answer.topics_omitted, Some(1));
}

/// A fenced node is listed and marked, a partition it leads has no leader, and on the
/// controller each node's lease age is given.
#[test]
fn fenced_nodes_are_marked_and_lease_ages_given() {
    let mut image = image();
    image.nodes.get_mut(&3).expect("node 3").fenced = true;
    let ages = HashMap::from([(1, Duration::from_millis(120)), (3, Duration::from_secs(5))]);
    let answer = describe_cluster(
        2,
        &image,
        None,
        &ages,
        &LedPartitions::new(),
        &DescribeClusterRequest::default(),
        ListingBounds::WIRE,
    );
    let nodes: Vec<(u32, bool, Option<u64>)> = answer
        .nodes
        .iter()
        .map(|n| (n.node_id.0, n.fenced, n.lease_age_ms))
        .collect();
    assert_eq!(
        nodes,
        [
            (1, false, Some(120)),
            (2, false, None),
            (3, true, Some(5000))
        ]
    );
    for topic in &answer.topics {
        for partition in &topic.partitions {
            let led_by_fenced = partition.error.as_ref().map(|e| e.code)
                == Some(ErrorCode::LeaderNotAvailable.code());
            assert_eq!(led_by_fenced, partition.leader.is_none());
        }
    }
    assert!(
        answer
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.leader.is_none()),
        "some partition was led by node 3"
    );
}

/// A partition this node leads as published by its replica: node 1 leads `b`-0 with
/// followers 2 (in sync, caught up) and 3 (out of the ISR, 40 offsets behind).
fn led_b0() -> LedPartitions {
    let gauges = PartitionGauges {
        topic: "b".into(),
        partition: 0,
        ..PartitionGauges::default()
    };
    gauges.log_end_offset.store(100, Ordering::Relaxed);
    gauges.high_watermark.store(100, Ordering::Relaxed);
    gauges.flushed_offset.store(90, Ordering::Relaxed);
    gauges.leader_epoch.store(4, Ordering::Relaxed);
    gauges
        .role
        .store(ReplicaRole::Leader as u8, Ordering::Relaxed);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    *gauges.replication.lock().expect("not poisoned") = ReplicationGauges {
        leader: Some(1),
        replicas: vec![1, 2, 3],
        isr: vec![1, 2],
        followers: vec![
            FollowerGauges {
                node_id: 2,
                log_end_offset: Some(100),
                flushed_offset: Some(100),
                lag_offsets: Some(0),
                last_caught_up_ms: now_ms,
            },
            FollowerGauges {
                node_id: 3,
                log_end_offset: Some(60),
                flushed_offset: Some(50),
                lag_offsets: Some(40),
                last_caught_up_ms: now_ms - 60_000,
            },
        ],
        published_at_ms: now_ms,
    };
    BTreeMap::from([(("b".to_owned(), 0), Arc::new(gauges))])
}

/// The partitions this node leads get a replica status with each follower's ISR membership
/// and lag; other partitions get none.
#[test]
fn led_partitions_get_their_followers_lag() {
    let answer = describe_cluster(
        1,
        &image(),
        None,
        &HashMap::new(),
        &led_b0(),
        &DescribeClusterRequest::default(),
        ListingBounds::WIRE,
    );
    let listing = answer.replica_status.expect("node 1 leads b-0");
    assert_eq!(listing.partitions.len(), 1);
    assert_eq!(listing.partitions_omitted, None);
    let status = &listing.partitions[0];
    assert_eq!((status.topic.as_str(), status.partition.0), ("b", 0));
    assert_eq!(status.leader_epoch.0, 4);
    assert_eq!(
        (
            status.log_end_offset.0,
            status.high_watermark.0,
            status.flushed_offset.0
        ),
        (100, 100, 90)
    );
    let followers: Vec<(u32, bool, Option<u64>)> = status
        .followers
        .iter()
        .map(|f| (f.node_id.0, f.in_sync, f.lag_offsets))
        .collect();
    assert_eq!(followers, [(2, true, Some(0)), (3, false, Some(40))]);
    assert!(status.followers[0].lag_ms < 60_000);
    assert!(status.followers[1].lag_ms >= 60_000);
}

/// Past the status bound the rest of the led partitions are counted, not listed.
#[test]
fn replica_statuses_stop_at_their_bound() {
    let bounds = ListingBounds {
        statuses_max: 0,
        ..ListingBounds::WIRE
    };
    let answer = describe_cluster(
        1,
        &image(),
        None,
        &HashMap::new(),
        &led_b0(),
        &DescribeClusterRequest::default(),
        bounds,
    );
    let listing = answer.replica_status.expect("a count of those left out");
    assert!(listing.partitions.is_empty());
    assert_eq!(listing.partitions_omitted, Some(1));
}
