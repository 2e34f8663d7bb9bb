//! The controller's decision on an ElectLeaders request (the controlled move of leadership,
//! Kafka's `kafka-leader-election`), sans IO: from the committed image and the request, one
//! outcome per partition and the `PartitionChange` records that carry out the moves, which
//! the controller commits in one metadata change.
//!
//! # Why a move to an in-sync replica loses nothing acknowledged
//! An `acks=all` write is acknowledged once it is below the partition's high watermark, and
//! the leader computes the high watermark over every in-sync replica (with fsync durability,
//! over their *flushed* offsets; while an ISR change is pending, over every replica proposed).
//! So every committed ISR member holds every acknowledged write, and electing one of them,
//! not fenced, keeps them all. The new leader starts its epoch at its own log end. The old
//! leader learns of the new epoch from the image, becomes a follower in place, asks the new
//! leader where its last epoch ends and truncates its log there: what it cuts lies past the
//! high watermark, writes that were never acknowledged with `acks=all` (their producers are
//! answered with the retriable `NotLeader` and send again to the new leader, where an
//! idempotent producer's retry is answered with its original offsets if the batch got there).
//! The "the old leader steps down after the new one has caught up" is this: the
//! target must be in the ISR, which means caught up to the high watermark; writes between
//! the high watermark and the old leader's log end are unacknowledged and may be cut.
//!
//! # Rules, per partition
//! 1. The topic and the partition exist (`UnknownTopic`, `UnknownPartition`).
//! 2. The target (`to`, or the first replica for a preferred election) is a replica
//!    (`NotAReplica`, answered `InvalidRequest`).
//! 3. A target that already leads: success, nothing changes (no epoch bump).
//! 4. The target is in the committed ISR and live (`NotInSync`, `Fenced`: `IneligibleLeader`).
//! 5. Otherwise: one `PartitionChange` with the target as leader, leader epoch and partition
//!    epoch one higher, replicas and ISR unchanged.
//!
//! A partition named twice in one request is decided the second time on the outcome of the
//! first, so the records stay a valid sequence of changes.

use std::collections::BTreeMap;

use vltava_messages::ErrorCode;
use vltava_messages::metadata_records::MetadataRecord;
use vltava_messages::peer::ELECTIONS_MAX;

use crate::metadata::{MetadataImage, PartitionImage};

/// One partition to move; `to: None` is a preferred election (its first replica).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    pub topic: String,
    pub partition: u32,
    pub to: Option<u32>,
}

/// Why a partition was not moved. Messages leave the topic name out: the outcome carries it,
/// and a wire error message holds at most 128 bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElectionError {
    #[error("unknown topic")]
    UnknownTopic,
    #[error("the topic has {count} partitions")]
    UnknownPartition { count: usize },
    #[error("node {node} is not a replica of the partition (replicas {replicas:?})")]
    NotAReplica { node: u32, replicas: Vec<u32> },
    #[error("node {node} is not in the partition's in-sync replicas {isr:?}")]
    NotInSync { node: u32, isr: Vec<u32> },
    #[error("node {node} is fenced (its lease with the controller ran out)")]
    Fenced { node: u32 },
    /// A preferred election of a partition that has no replicas (never placed).
    #[error("the partition has no replicas")]
    Unplaced,
}

impl ElectionError {
    /// The client protocol's error code for it.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            ElectionError::UnknownTopic => ErrorCode::UnknownTopic,
            ElectionError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            ElectionError::NotAReplica { .. } => ErrorCode::InvalidRequest,
            ElectionError::NotInSync { .. } | ElectionError::Fenced { .. } => {
                ErrorCode::IneligibleLeader
            }
            ElectionError::Unplaced => ErrorCode::LeaderNotAvailable,
        }
    }
}

/// A partition's leader and leader epoch after the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elected {
    pub leader: u32,
    pub leader_epoch: u32,
}

/// One partition's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionOutcome {
    pub topic: String,
    pub partition: u32,
    pub result: Result<Elected, ElectionError>,
}

/// The decision on a whole request: an outcome per partition, the records to commit (one per
/// moved partition, all in one metadata change), and whether a preferred election of every
/// partition left some for another request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElectionDecision {
    pub outcomes: Vec<ElectionOutcome>,
    pub records: Vec<MetadataRecord>,
    pub more: bool,
}

/// Decides `elections` on `image`. With `preferred` and no elections: every partition of the
/// cluster whose leader is not its first replica, at most `ELECTIONS_MAX` of them (in topic
/// and partition order; `more` says some were left).
#[must_use]
pub fn decide(image: &MetadataImage, elections: &[Election], preferred: bool) -> ElectionDecision {
    let mut decision = ElectionDecision::default();
    let every = preferred && elections.is_empty();
    let listed: Vec<Election> = if every {
        let mut misplaced = image.topics.iter().flat_map(|(topic, t)| {
            t.partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.replicas
                        .first()
                        .is_some_and(|first| p.leader != Some(*first))
                })
                .map(|(index, _)| Election {
                    topic: topic.clone(),
                    partition: u32::try_from(index).expect("partition indexes fit u32"),
                    to: None,
                })
        });
        let listed: Vec<Election> = misplaced.by_ref().take(ELECTIONS_MAX).collect();
        decision.more = misplaced.next().is_some();
        listed
    } else {
        elections.to_vec()
    };
    // Partitions this request has changed so far, so that one named twice is decided on the
    // first outcome.
    let mut changed: BTreeMap<(String, u32), PartitionImage> = BTreeMap::new();
    for election in listed {
        let key = (election.topic.clone(), election.partition);
        let current = match changed.get(&key) {
            Some(p) => Ok(p.clone()),
            None => lookup(image, &election.topic, election.partition),
        };
        let result = current.and_then(|current| {
            let target = match election.to {
                Some(node) => node,
                None => *current.replicas.first().ok_or(ElectionError::Unplaced)?,
            };
            let moved = elect(image, &current, target)?;
            if moved != current {
                decision
                    .records
                    .push(moved.record(&election.topic, election.partition));
                changed.insert(key, moved.clone());
            }
            Ok(Elected {
                leader: target,
                leader_epoch: moved.leader_epoch,
            })
        });
        decision.outcomes.push(ElectionOutcome {
            topic: election.topic,
            partition: election.partition,
            result,
        });
    }
    decision
}

fn lookup(
    image: &MetadataImage,
    topic: &str,
    partition: u32,
) -> Result<PartitionImage, ElectionError> {
    let t = image.topics.get(topic).ok_or(ElectionError::UnknownTopic)?;
    t.partitions
        .get(partition as usize)
        .cloned()
        .ok_or(ElectionError::UnknownPartition {
            count: t.partitions.len(),
        })
}

/// The partition with `target` as its leader, or why it cannot be: rules 2 to 5 of the module
/// doc.
fn elect(
    image: &MetadataImage,
    current: &PartitionImage,
    target: u32,
) -> Result<PartitionImage, ElectionError> {
    if !current.replicas.contains(&target) {
        return Err(ElectionError::NotAReplica {
            node: target,
            replicas: current.replicas.clone(),
        });
    }
    if current.leader == Some(target) {
        return Ok(current.clone());
    }
    if !current.isr.contains(&target) {
        return Err(ElectionError::NotInSync {
            node: target,
            isr: current.isr.clone(),
        });
    }
    if !image.is_live(target) {
        return Err(ElectionError::Fenced { node: target });
    }
    let moved = PartitionImage {
        leader: Some(target),
        leader_epoch: current.leader_epoch + 1,
        partition_epoch: current.partition_epoch + 1,
        replicas: current.replicas.clone(),
        isr: current.isr.clone(),
        // A reassignment under way goes on: the new leader is one of its replicas either way.
        target_replicas: current.target_replicas.clone(),
    };
    assert!(
        moved.leader_epoch > current.leader_epoch
            && moved.partition_epoch > current.partition_epoch
    );
    Ok(moved)
}

#[cfg(test)]
mod tests;
