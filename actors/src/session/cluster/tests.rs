//! DescribeCluster's answer from an image: what it lists, in which order, where it stops, and
//! the Raft section only on a quorum member.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use vltava_messages::protocol::{DescribeClusterRequest, ErrorCode};

use super::{ListingBounds, describe_cluster};
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
    };
    let answer = describe_cluster(
        1,
        &image(),
        None,
        &HashMap::new(),
        &DescribeClusterRequest::default(),
        bounds,
    );
    // a (2) fits, a + b (5) does not; c (1) would, but the omitted topics stay a suffix.
    assert_eq!(names(&answer), ["a"]);
    assert_eq!(answer.topics_omitted, Some(2));

    let exact = ListingBounds {
        topics_max: 1024,
        partitions_max: 6,
    };
    let answer = describe_cluster(
        1,
        &image(),
        None,
        &HashMap::new(),
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
    };
    let answer = describe_cluster(
        1,
        &image(),
        None,
        &HashMap::new(),
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
