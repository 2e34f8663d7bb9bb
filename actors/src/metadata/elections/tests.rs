//! The ElectLeaders decision on hand-made images: who may lead, what changes, what is
//! committed.

use std::collections::BTreeMap;

use super::*;
use crate::metadata::{NodeImage, TopicImage};

/// Three live nodes and topic `t` with `partitions` partitions, each led by node 1 at leader
/// epoch 4 and partition epoch 7, replicas [1, 2, 3], ISR [1, 2].
fn image(partitions: usize) -> MetadataImage {
    let mut image = MetadataImage::default();
    for node_id in 1..=3 {
        image.nodes.insert(
            node_id,
            NodeImage {
                node_id,
                host: "127.0.0.1".into(),
                port: 9000,
                fenced: false,
                incarnation: 0,
            },
        );
    }
    let partition = PartitionImage {
        leader: Some(1),
        leader_epoch: 4,
        partition_epoch: 7,
        replicas: vec![1, 2, 3],
        isr: vec![1, 2],
        target_replicas: None,
    };
    image.topics.insert(
        "t".into(),
        TopicImage {
            topic_id: "id".into(),
            replication_factor: 3,
            configs: BTreeMap::new(),
            partitions: vec![partition; partitions],
        },
    );
    image
}

fn to(partition: u32, node: u32) -> Election {
    Election {
        topic: "t".into(),
        partition,
        to: Some(node),
    }
}

#[test]
fn an_in_sync_live_replica_takes_over_with_both_epochs_bumped() {
    let decision = decide(&image(1), &[to(0, 2)], false);
    assert_eq!(
        decision.outcomes[0].result,
        Ok(Elected {
            leader: 2,
            leader_epoch: 5
        })
    );
    assert_eq!(
        decision.records,
        vec![MetadataRecord::PartitionChange {
            topic: "t".into(),
            partition: 0,
            leader: Some(2),
            leader_epoch: 5,
            partition_epoch: 8,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2],
            target_replicas: None,
        }],
        "replicas and ISR unchanged"
    );
}

#[test]
fn a_target_outside_the_isr_is_refused_and_nothing_is_committed() {
    let decision = decide(&image(1), &[to(0, 3)], false);
    let error = decision.outcomes[0].result.clone().unwrap_err();
    assert_eq!(
        error,
        ElectionError::NotInSync {
            node: 3,
            isr: vec![1, 2]
        }
    );
    assert_eq!(error.code(), ErrorCode::IneligibleLeader);
    assert!(decision.records.is_empty());
}

#[test]
fn a_fenced_target_is_refused_even_in_the_isr() {
    let mut image = image(1);
    image.nodes.get_mut(&2).unwrap().fenced = true;
    let decision = decide(&image, &[to(0, 2)], false);
    assert_eq!(
        decision.outcomes[0].result,
        Err(ElectionError::Fenced { node: 2 })
    );
    assert!(decision.records.is_empty());
}

#[test]
fn a_target_that_is_not_a_replica_is_an_invalid_request() {
    let decision = decide(&image(1), &[to(0, 9)], false);
    let error = decision.outcomes[0].result.clone().unwrap_err();
    assert!(matches!(error, ElectionError::NotAReplica { node: 9, .. }));
    assert_eq!(error.code(), ErrorCode::InvalidRequest);
    assert!(decision.records.is_empty());
}

#[test]
fn the_current_leader_answers_success_unchanged() {
    let decision = decide(&image(1), &[to(0, 1)], false);
    assert_eq!(
        decision.outcomes[0].result,
        Ok(Elected {
            leader: 1,
            leader_epoch: 4
        }),
        "no epoch bump"
    );
    assert!(decision.records.is_empty(), "nothing to commit");
}

#[test]
fn unknown_topics_and_partitions_are_answered_per_partition() {
    let decision = decide(
        &image(2),
        &[
            Election {
                topic: "nope".into(),
                partition: 0,
                to: Some(2),
            },
            to(5, 2),
            to(1, 2),
        ],
        false,
    );
    let codes: Vec<Option<ErrorCode>> = decision
        .outcomes
        .iter()
        .map(|o| o.result.as_ref().err().map(ElectionError::code))
        .collect();
    assert_eq!(
        codes,
        vec![
            Some(ErrorCode::UnknownTopic),
            Some(ErrorCode::UnknownPartition),
            None
        ],
        "the others do not stop the eligible one"
    );
    assert_eq!(decision.records.len(), 1);
}

#[test]
fn several_partitions_move_in_one_decision_in_request_order() {
    let decision = decide(&image(3), &[to(2, 2), to(0, 2), to(1, 1)], false);
    let partitions: Vec<u32> = decision.outcomes.iter().map(|o| o.partition).collect();
    assert_eq!(partitions, vec![2, 0, 1], "outcomes in request order");
    let moved: Vec<u32> = decision
        .records
        .iter()
        .map(|r| match r {
            MetadataRecord::PartitionChange { partition, .. } => *partition,
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    assert_eq!(
        moved,
        vec![2, 0],
        "one record per moved partition, one commit"
    );
}

#[test]
fn a_partition_named_twice_is_decided_on_its_first_outcome() {
    let decision = decide(&image(1), &[to(0, 2), to(0, 1)], false);
    assert_eq!(
        decision.outcomes[1].result,
        Ok(Elected {
            leader: 1,
            leader_epoch: 6
        })
    );
    let epochs: Vec<(u32, u32)> = decision
        .records
        .iter()
        .map(|r| match r {
            MetadataRecord::PartitionChange {
                leader_epoch,
                partition_epoch,
                ..
            } => (*leader_epoch, *partition_epoch),
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    assert_eq!(epochs, vec![(5, 8), (6, 9)]);
}

#[test]
fn a_preferred_election_moves_each_partition_to_its_first_replica() {
    let mut image = image(3);
    let partitions = &mut image.topics.get_mut("t").unwrap().partitions;
    partitions[1].leader = Some(2);
    partitions[2].leader = Some(2);
    partitions[2].isr = vec![2, 3];
    let listed: Vec<Election> = (0..3)
        .map(|partition| Election {
            topic: "t".into(),
            partition,
            to: None,
        })
        .collect();
    let decision = decide(&image, &listed, true);
    let results: Vec<_> = decision.outcomes.iter().map(|o| o.result.clone()).collect();
    assert_eq!(
        results,
        vec![
            Ok(Elected {
                leader: 1,
                leader_epoch: 4
            }),
            Ok(Elected {
                leader: 1,
                leader_epoch: 5
            }),
            Err(ElectionError::NotInSync {
                node: 1,
                isr: vec![2, 3]
            }),
        ]
    );
    assert_eq!(decision.records.len(), 1);

    // Every partition: only the misplaced ones are listed.
    let every = decide(&image, &[], true);
    let listed: Vec<u32> = every.outcomes.iter().map(|o| o.partition).collect();
    assert_eq!(listed, vec![1, 2]);
    assert!(!every.more);
}

#[test]
fn a_preferred_election_of_everything_is_bounded() {
    let mut image = image(ELECTIONS_MAX + 1);
    for p in &mut image.topics.get_mut("t").unwrap().partitions {
        p.leader = Some(2);
    }
    let decision = decide(&image, &[], true);
    assert_eq!(decision.outcomes.len(), ELECTIONS_MAX);
    assert_eq!(decision.records.len(), ELECTIONS_MAX);
    assert!(decision.more, "one partition is left for the next request");
}
