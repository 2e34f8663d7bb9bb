//! The reassignment decisions on hand-made images: what a move starts with, when it
//! completes, what it refuses; and a seeded simulation of moves, ISR changes and fencing that
//! checks no replica holding acknowledged writes is dropped before the target has them.

use std::collections::{BTreeMap, BTreeSet};

use vltava_storage::sim::SimRng;

use super::*;
use crate::metadata::{NodeImage, TopicImage};

/// Live nodes 1 to 4 and topic `t` with `partitions` partitions, each led by node 1 at leader
/// epoch 4 and partition epoch 7, replicas [1, 2], ISR [1, 2].
fn image(partitions: usize) -> MetadataImage {
    let mut image = MetadataImage::default();
    for node_id in 1..=4 {
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
        replicas: vec![1, 2],
        isr: vec![1, 2],
        target_replicas: None,
    };
    image.topics.insert(
        "t".into(),
        TopicImage {
            topic_id: "id".into(),
            replication_factor: 2,
            configs: BTreeMap::new(),
            partitions: vec![partition; partitions],
        },
    );
    image
}

fn to(partition: u32, target: &[u32]) -> Reassignment {
    Reassignment {
        topic: "t".into(),
        partition,
        target: target.to_vec(),
    }
}

/// `image` with `decision`'s records applied.
fn applied(image: &MetadataImage, decision: &ReassignmentDecision) -> MetadataImage {
    let mut image = image.clone();
    for record in &decision.records {
        image.apply(record);
    }
    image
}

fn partition(image: &MetadataImage, index: usize) -> PartitionImage {
    image.topics["t"].partitions[index].clone()
}

#[test]
fn a_move_puts_the_target_first_and_keeps_the_old_replicas_until_the_new_ones_are_in_sync() {
    let before = image(1);
    let decision = decide(&before, &[to(0, &[3, 1])]);
    assert_eq!(
        decision.outcomes[0].result,
        Ok(Reassigned {
            replicas: vec![3, 1, 2],
            target_replicas: Some(vec![3, 1]),
            leader: Some(1),
            leader_epoch: 5,
        })
    );
    assert_eq!(
        decision.records,
        vec![MetadataRecord::PartitionChange {
            topic: "t".into(),
            partition: 0,
            leader: Some(1),
            leader_epoch: 5,
            partition_epoch: 8,
            replicas: vec![3, 1, 2],
            isr: vec![1, 2],
            target_replicas: Some(vec![3, 1]),
        }],
        "the leader and the ISR stay; both epochs + 1"
    );
}

#[test]
fn the_isr_change_that_brings_the_last_target_replica_in_completes_the_move() {
    let moving = applied(&image(1), &decide(&image(1), &[to(0, &[3, 1])]));
    let current = partition(&moving, 0);
    let done = with_isr(&moving, &current, vec![1, 2, 3]);
    assert_eq!(
        done,
        PartitionImage {
            leader: Some(1),
            leader_epoch: 6,
            partition_epoch: 9,
            replicas: vec![3, 1],
            isr: vec![1, 3],
            target_replicas: None,
        },
        "node 2 leaves, node 1 keeps leading in a new epoch"
    );
}

#[test]
fn an_isr_change_short_of_the_target_leaves_the_move_under_way() {
    let before = image(1);
    let moving = applied(&before, &decide(&before, &[to(0, &[3, 4])]));
    let current = partition(&moving, 0);
    let next = with_isr(&moving, &current, vec![1, 2, 3]);
    assert_eq!(next.replicas, vec![3, 4, 1, 2]);
    assert_eq!(next.target_replicas, Some(vec![3, 4]));
    assert_eq!(next.isr, vec![1, 2, 3]);
    assert_eq!(
        (next.leader_epoch, next.partition_epoch),
        (current.leader_epoch, current.partition_epoch + 1),
        "an ISR change alone keeps the leader epoch"
    );
}

#[test]
fn an_isr_change_without_a_move_is_what_alter_isr_always_committed() {
    let before = image(1);
    let current = partition(&before, 0);
    let next = with_isr(&before, &current, vec![1]);
    assert_eq!(
        next,
        PartitionImage {
            isr: vec![1],
            partition_epoch: 8,
            ..current
        }
    );
}

#[test]
fn a_move_away_from_the_leader_hands_it_to_the_first_live_target_replica() {
    let before = image(1);
    let moving = applied(&before, &decide(&before, &[to(0, &[2, 3])]));
    let current = partition(&moving, 0);
    assert_eq!(
        current.leader,
        Some(1),
        "node 1 leads while the move is under way"
    );
    let done = with_isr(&moving, &current, vec![1, 2, 3]);
    assert_eq!(done.leader, Some(2));
    assert_eq!(done.replicas, vec![2, 3]);
    assert_eq!(done.isr, vec![2, 3]);
    assert_eq!(done.leader_epoch, current.leader_epoch + 1);

    // With the target's first replica fenced, the next one leads.
    let mut fenced = moving.clone();
    fenced.nodes.get_mut(&2).unwrap().fenced = true;
    let done = with_isr(&fenced, &current, vec![1, 2, 3]);
    assert_eq!(done.leader, Some(3));
}

#[test]
fn a_move_away_from_the_leader_waits_while_no_target_replica_is_live() {
    let before = image(1);
    let mut moving = applied(&before, &decide(&before, &[to(0, &[3, 4])]));
    for node in [3, 4] {
        moving.nodes.get_mut(&node).unwrap().fenced = true;
    }
    let current = partition(&moving, 0);
    let next = with_isr(&moving, &current, vec![1, 2, 3, 4]);
    assert_eq!(next.target_replicas, Some(vec![3, 4]), "still under way");
    assert_eq!(next.leader, Some(1));
    assert_eq!(next.replicas, vec![3, 4, 1, 2]);
}

/// A move whose target came in sync while none of it was live (the leader leaving) waits;
/// once a member of the target is live again, repeating the request completes it.
#[test]
fn repeating_a_stalled_move_completes_it_once_a_target_replica_is_live() {
    let before = image(1);
    let mut moving = applied(&before, &decide(&before, &[to(0, &[3, 4])]));
    for node in [3, 4] {
        moving.nodes.get_mut(&node).unwrap().fenced = true;
    }
    let current = partition(&moving, 0);
    let stalled = with_isr(&moving, &current, vec![1, 2, 3, 4]);
    assert_eq!(stalled.target_replicas, Some(vec![3, 4]));
    let mut stalled_image = moving.clone();
    stalled_image.apply(&stalled.record("t", 0));
    let still = decide(&stalled_image, &[to(0, &[3, 4])]);
    assert!(still.records.is_empty(), "nobody of the target is live yet");
    stalled_image.nodes.get_mut(&4).unwrap().fenced = false;
    let nudged = decide(&stalled_image, &[to(0, &[3, 4])]);
    assert_eq!(
        nudged.outcomes[0].result,
        Ok(Reassigned {
            replicas: vec![3, 4],
            target_replicas: None,
            leader: Some(4),
            leader_epoch: stalled.leader_epoch + 1,
        })
    );
}

#[test]
fn a_target_already_in_sync_completes_at_once() {
    let mut before = image(1);
    before.topics.get_mut("t").unwrap().partitions[0].replicas = vec![1, 2, 3];
    before.topics.get_mut("t").unwrap().partitions[0].isr = vec![1, 2, 3];
    let decision = decide(&before, &[to(0, &[2, 3])]);
    assert_eq!(
        decision.outcomes[0].result,
        Ok(Reassigned {
            replicas: vec![2, 3],
            target_replicas: None,
            leader: Some(2),
            leader_epoch: 5,
        })
    );
    assert_eq!(
        decision.records.len(),
        1,
        "one change starts and completes it"
    );
    let after = partition(&applied(&before, &decision), 0);
    assert_eq!(after.isr, vec![2, 3]);
    assert_eq!(after.partition_epoch, 8);
}

#[test]
fn reordering_in_sync_replicas_changes_the_preferred_leader_only() {
    let before = image(1);
    let decision = decide(&before, &[to(0, &[2, 1])]);
    let after = partition(&applied(&before, &decision), 0);
    assert_eq!(after.replicas, vec![2, 1]);
    assert_eq!(
        after.leader,
        Some(1),
        "the leader is in the target: it stays"
    );
    assert_eq!(after.target_replicas, None);
}

#[test]
fn the_same_replicas_or_the_same_move_again_change_nothing() {
    let before = image(1);
    let same = decide(&before, &[to(0, &[1, 2])]);
    assert!(same.records.is_empty());
    assert_eq!(
        same.outcomes[0].result,
        Ok(Reassigned {
            replicas: vec![1, 2],
            target_replicas: None,
            leader: Some(1),
            leader_epoch: 4,
        })
    );
    let moving = applied(&before, &decide(&before, &[to(0, &[3, 1])]));
    let again = decide(&moving, &[to(0, &[3, 1])]);
    assert!(again.records.is_empty(), "a repeat of the move under way");
    assert_eq!(
        again.outcomes[0].result.as_ref().unwrap().target_replicas,
        Some(vec![3, 1])
    );
}

#[test]
fn a_new_target_replaces_the_move_under_way_and_the_old_replicas_cancel_it() {
    let before = image(1);
    let moving = applied(&before, &decide(&before, &[to(0, &[3, 1])]));
    let replaced = applied(&moving, &decide(&moving, &[to(0, &[4, 2])]));
    let p = partition(&replaced, 0);
    assert_eq!(
        p.replicas,
        vec![4, 2, 3, 1],
        "node 3, added by the first move, leaves later"
    );
    assert_eq!(p.target_replicas, Some(vec![4, 2]));
    assert_eq!(p.leader_epoch, 6);

    // Back to the replicas it had: they are still in sync, so the move ends at once.
    let cancelled = decide(&moving, &[to(0, &[1, 2])]);
    let p = partition(&applied(&moving, &cancelled), 0);
    assert_eq!(p.replicas, vec![1, 2]);
    assert_eq!(p.isr, vec![1, 2]);
    assert_eq!(p.target_replicas, None);
    assert_eq!(p.leader, Some(1));
}

#[test]
fn bad_targets_are_refused_as_invalid_requests_and_change_nothing() {
    let before = image(1);
    let too_many: Vec<u32> = (1..=REPLICAS_MAX as u32 + 1).collect();
    let cases = [
        (vec![], ReassignmentError::EmptyTarget),
        (
            vec![3, 1, 3],
            ReassignmentError::DuplicateReplica { node: 3 },
        ),
        (vec![1, 9], ReassignmentError::UnknownNode { node: 9 }),
        (
            too_many.clone(),
            ReassignmentError::TooManyReplicas {
                count: too_many.len(),
                max: REPLICAS_MAX,
            },
        ),
    ];
    for (target, error) in cases {
        let decision = decide(&before, &[to(0, &target)]);
        assert!(decision.records.is_empty(), "{target:?}");
        assert_eq!(
            decision.outcomes[0].result,
            Err(error.clone()),
            "{target:?}"
        );
        assert_eq!(error.code(), ErrorCode::InvalidRequest);
    }
}

#[test]
fn a_move_may_not_hold_more_replicas_at_once_than_an_isr_may_list() {
    let mut before = image(1);
    for node_id in 5..=40 {
        before.nodes.insert(
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
    let old: Vec<u32> = (1..=10).collect();
    let new: Vec<u32> = (11..=20).collect();
    let p = &mut before.topics.get_mut("t").unwrap().partitions[0];
    p.replicas.clone_from(&old);
    p.isr.clone_from(&old);
    let decision = decide(&before, &[to(0, &new)]);
    assert_eq!(
        decision.outcomes[0].result,
        Err(ReassignmentError::TooManyReplicas {
            count: 20,
            max: REPLICAS_MAX
        })
    );
}

#[test]
fn unknown_topics_partitions_and_unplaced_partitions_are_refused() {
    let mut before = image(2);
    before.topics.get_mut("t").unwrap().partitions[1]
        .replicas
        .clear();
    let unknown_topic = Reassignment {
        topic: "nope".into(),
        partition: 0,
        target: vec![1],
    };
    let decision = decide(&before, &[unknown_topic, to(5, &[1]), to(1, &[1])]);
    let errors: Vec<ReassignmentError> = decision
        .outcomes
        .into_iter()
        .map(|o| o.result.unwrap_err())
        .collect();
    assert_eq!(
        errors,
        vec![
            ReassignmentError::UnknownTopic,
            ReassignmentError::UnknownPartition { count: 2 },
            ReassignmentError::Unplaced,
        ]
    );
    assert!(decision.records.is_empty());
    assert_eq!(
        errors
            .iter()
            .map(ReassignmentError::code)
            .collect::<Vec<_>>(),
        vec![
            ErrorCode::UnknownTopic,
            ErrorCode::UnknownPartition,
            ErrorCode::LeaderNotAvailable
        ]
    );
}

#[test]
fn a_partition_named_twice_is_decided_on_its_first_outcome() {
    let before = image(1);
    let decision = decide(&before, &[to(0, &[3, 1]), to(0, &[4, 1])]);
    assert_eq!(decision.records.len(), 2);
    let after = partition(&applied(&before, &decision), 0);
    assert_eq!(after.replicas, vec![4, 1, 3, 2]);
    assert_eq!(after.target_replicas, Some(vec![4, 1]));
    assert_eq!((after.leader_epoch, after.partition_epoch), (6, 9));
}

#[test]
fn one_bad_partition_does_not_stop_the_others() {
    let before = image(2);
    let decision = decide(&before, &[to(0, &[]), to(1, &[3, 1])]);
    assert!(decision.outcomes[0].result.is_err());
    assert!(decision.outcomes[1].result.is_ok());
    assert_eq!(decision.records.len(), 1);
}

#[test]
fn every_error_message_fits_a_wire_error_message() {
    let errors = [
        ReassignmentError::UnknownTopic,
        ReassignmentError::UnknownPartition { count: usize::MAX },
        ReassignmentError::Unplaced,
        ReassignmentError::EmptyTarget,
        ReassignmentError::DuplicateReplica { node: u32::MAX },
        ReassignmentError::UnknownNode { node: u32::MAX },
        ReassignmentError::TooManyReplicas {
            count: usize::MAX,
            max: REPLICAS_MAX,
        },
    ];
    for error in errors {
        assert!(
            error.to_string().len() <= vltava_messages::limits::ERROR_MESSAGE_BYTES_MAX as usize,
            "{error}"
        );
    }
}

// ---- a seeded simulation ----

/// Seeds the simulation runs; each runs `SIM_STEPS_MAX` steps on one partition.
const SIM_SEEDS: u64 = 2_000;
/// Steps per seed: enough for several moves to start, be replaced and complete.
const SIM_STEPS_MAX: usize = 60;
/// Nodes of the simulated cluster.
const SIM_NODES: u32 = 5;

/// One partition on `SIM_NODES` nodes, driven by random operator moves, ISR changes as a
/// leader would propose them (a follower that caught up joins, a follower falls out), fencing,
/// and acknowledged writes. Pessimistically, an acknowledged write reaches only the ISR of the
/// moment, so the nodes that hold every acknowledged write are the ISR at the last write plus
/// the followers that caught up since. After every committed change: the ISR and the leader
/// are among those nodes (so no move ever dropped the last copy of a write), the ISR is within
/// the replicas and holds the leader, a move's target is within the replicas, the partition
/// epoch grew by one and the leader epoch never went back.
#[test]
fn no_move_drops_a_replica_before_the_target_holds_every_acknowledged_write() {
    for seed in 0..SIM_SEEDS {
        simulate(seed);
    }
}

fn simulate(seed: u64) {
    let mut rng = SimRng::new(seed);
    let mut image = MetadataImage::default();
    for node_id in 1..=SIM_NODES {
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
    image.topics.insert(
        "t".into(),
        TopicImage {
            topic_id: "id".into(),
            replication_factor: 2,
            configs: BTreeMap::new(),
            partitions: vec![PartitionImage {
                leader: Some(1),
                leader_epoch: 0,
                partition_epoch: 0,
                replicas: vec![1, 2],
                isr: vec![1, 2],
                target_replicas: None,
            }],
        },
    );
    let mut holders: BTreeSet<u32> = [1, 2].into();
    for step in 0..SIM_STEPS_MAX {
        let current = partition(&image, 0);
        let next = match rng.below(5) {
            // The operator asks for a move to 1 to 3 random nodes.
            0 => {
                let count = 1 + rng.below(3) as usize;
                let mut target = Vec::new();
                while target.len() < count {
                    let node = 1 + rng.below(u64::from(SIM_NODES)) as u32;
                    if !target.contains(&node) {
                        target.push(node);
                    }
                }
                let decision = decide(&image, &[to(0, &target)]);
                assert!(
                    decision.outcomes[0].result.is_ok(),
                    "seed {seed}: {target:?}"
                );
                applied(&image, &decision).topics["t"].partitions[0].clone()
            }
            // A follower that caught up joins the ISR (a live one, as the controller allows).
            1 => {
                let Some(leader) = current.leader else {
                    continue;
                };
                let outside: Vec<u32> = current
                    .replicas
                    .iter()
                    .copied()
                    .filter(|n| !current.isr.contains(n) && image.is_live(*n))
                    .collect();
                if outside.is_empty() {
                    continue;
                }
                let joining = outside[rng.below(outside.len() as u64) as usize];
                holders.insert(joining);
                let mut isr = current.isr.clone();
                isr.push(joining);
                isr.sort_unstable();
                assert!(isr.contains(&leader));
                with_isr(&image, &current, isr)
            }
            // A follower falls out of the ISR.
            2 => {
                let Some(leader) = current.leader else {
                    continue;
                };
                let followers: Vec<u32> = current
                    .isr
                    .iter()
                    .copied()
                    .filter(|n| *n != leader)
                    .collect();
                if followers.is_empty() {
                    continue;
                }
                let leaving = followers[rng.below(followers.len() as u64) as usize];
                let isr: Vec<u32> = current
                    .isr
                    .iter()
                    .copied()
                    .filter(|n| *n != leaving)
                    .collect();
                with_isr(&image, &current, isr)
            }
            // A node is fenced or comes back (never the leader: failover is not this test's).
            3 => {
                let node = 1 + rng.below(u64::from(SIM_NODES)) as u32;
                if current.leader != Some(node) {
                    let n = image.nodes.get_mut(&node).expect("a simulated node");
                    n.fenced = !n.fenced;
                }
                continue;
            }
            // An acknowledged write: on the ISR of the moment, and nowhere else for sure.
            _ => {
                holders = current.isr.iter().copied().collect();
                continue;
            }
        };
        if next == current {
            continue;
        }
        let context = format!("seed {seed} step {step}: {current:?} -> {next:?}");
        assert_eq!(
            next.partition_epoch,
            current.partition_epoch + 1,
            "{context}"
        );
        assert!(next.leader_epoch >= current.leader_epoch, "{context}");
        let leader = next
            .leader
            .expect("the simulated partition always has a leader");
        assert!(next.isr.contains(&leader), "{context}");
        assert!(
            holders.contains(&leader),
            "the leader holds every acknowledged write: {context}"
        );
        assert!(
            next.isr
                .iter()
                .all(|n| holders.contains(n) && next.replicas.contains(n)),
            "{context}"
        );
        if let Some(target) = &next.target_replicas {
            assert!(
                target.iter().all(|n| next.replicas.contains(n)),
                "{context}"
            );
        }
        let dropped: Vec<u32> = current
            .replicas
            .iter()
            .copied()
            .filter(|n| !next.replicas.contains(n))
            .collect();
        if !dropped.is_empty() {
            assert!(
                next.replicas.iter().all(|n| next.isr.contains(n)),
                "a replica leaves only once the whole target is in sync: {context}"
            );
        }
        let record = next.record("t", 0);
        image.apply(&record);
        assert_eq!(partition(&image, 0), next);
    }
}
