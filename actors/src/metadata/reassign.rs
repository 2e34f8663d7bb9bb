//! The controller's decisions on partition reassignment (AlterPartitionReassignments, the
//! operator's `vltava partition reassign`; Kafka's KIP-455), sans IO: from the committed image,
//! the request's outcome per partition and the `PartitionChange` records that start (or at once
//! complete) each move, and, when a leader's ISR change commits, whether it completes a move.
//!
//! # How a partition moves
//! A partition on replicas `R` is asked to move to the target `T`:
//! 1. **Start.** One `PartitionChange` makes the replicas `T` followed by the members of `R`
//!    not in `T` (so `T[0]` is the preferred leader from now on) and records `T` as the
//!    partition's `target_replicas`. The leader and the ISR stay. The new replicas start as
//!    followers with empty logs, outside the ISR, and copy the leader's log.
//! 2. **Catch up.** The leader proposes each new replica into the ISR once it has reached the
//!    high watermark (its ordinary ISR expansion, `alter_isr`, compare-and-set).
//! 3. **Complete.** The ISR change that puts the last member of `T` in the ISR completes the
//!    move in the same record: replicas `T`, ISR the old ISR less the replicas that leave,
//!    no target. If the leader leaves, the first live member of `T` leads (they are all in the
//!    ISR by then). The replicas that left stop their partition and delete its data when they
//!    apply the change (the MetadataApplier).
//!
//! A target already in the ISR (a shrink, a reordering of in-sync replicas) completes at
//! start, in the request's own record.
//!
//! # Why nothing acknowledged is lost
//! An `acks=all` write is acknowledged once it is below the high watermark, which counts
//! every ISR member, so every ISR member holds it. A replica leaves only in the change that
//! completes the move, and only once every member of `T` is in the ISR: every acknowledged
//! write is then on every replica that stays. A new leader is a member of `T`, so of the ISR,
//! and live; the old one, leaving, stops (its producers get retriable errors and retry at the
//! new leader, where idempotence answers a batch that got there with its original offsets).
//! Writes past the high watermark on a leaving leader were never acknowledged.
//!
//! # Epochs
//! Every committed change of the partition raises the partition epoch by one (a leader's
//! ISR proposal based on an older one is refused and proposed again). A change of the
//! replicas, of the target or of the leader also raises the leader epoch by one: a replica
//! takes its followers, and the default `min.insync.replicas` (a majority of the target
//! while a move is under way, so that the replicas being added do not raise it), from the
//! assignment of its leader epoch, so a new set needs a new epoch, as a new run of a node
//! does (`register_node`) and as Kafka's reassignment does.
//!
//! # Rules, per partition
//! 1. The topic and the partition exist (`UnknownTopic`, `UnknownPartition`), and the
//!    partition was placed (`Unplaced`: `LeaderNotAvailable`).
//! 2. The target names 1 to `REASSIGNMENT_REPLICAS_MAX` nodes, none twice, each registered
//!    (a fenced node may be named: the move completes once it is back and in sync); with the
//!    replicas it will drop, at most `REASSIGNMENT_REPLICAS_MAX` (`InvalidRequest`).
//! 3. A target equal to the replicas with no move under way, or equal to the move under way,
//!    changes nothing: success, the partition as it is. (A repeated move that could complete
//!    but did not, because no member of its target was live when the ISR change that
//!    completed it came, completes then.)
//! 4. A target that differs from a move under way **replaces** it: the replicas become the new
//!    target followed by every current replica not in it (the old target's additions
//!    included), which leave when the new move completes. Naming the replicas a partition had
//!    before a move cancels it this way (at once if they are still in sync).
//!
//! A partition named twice in one request is decided the second time on the outcome of the
//! first, so the records stay a valid sequence of changes.

use std::collections::BTreeMap;

use vltava_messages::ErrorCode;
use vltava_messages::limits::REASSIGNMENT_REPLICAS_MAX;
use vltava_messages::metadata_records::MetadataRecord;
use vltava_messages::peer::ReassignmentResultWire;
use vltava_messages::protocol::ResponseError;

use crate::metadata::{MetadataImage, PartitionImage};

/// The most replicas a target names, and a partition has while it moves (the limit's
/// in-memory width).
const REPLICAS_MAX: usize = REASSIGNMENT_REPLICAS_MAX as usize;

/// One partition to move to `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reassignment {
    pub topic: String,
    pub partition: u32,
    pub target: Vec<u32>,
}

/// Why a partition was not moved. Messages leave the topic name out (the outcome carries it)
/// and fit a wire error message (128 bytes).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReassignmentError {
    #[error("unknown topic")]
    UnknownTopic,
    #[error("the topic has {count} partitions")]
    UnknownPartition { count: usize },
    #[error("the partition has no replicas yet")]
    Unplaced,
    #[error("the target replicas are empty")]
    EmptyTarget,
    #[error("node {node} is named twice in the target replicas")]
    DuplicateReplica { node: u32 },
    #[error("node {node} is not a registered node of the cluster")]
    UnknownNode { node: u32 },
    #[error("the move gives the partition {count} replicas at once; at most {max}")]
    TooManyReplicas { count: usize, max: usize },
}

impl ReassignmentError {
    /// The client protocol's error code for it.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            ReassignmentError::UnknownTopic => ErrorCode::UnknownTopic,
            ReassignmentError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            ReassignmentError::Unplaced => ErrorCode::LeaderNotAvailable,
            ReassignmentError::EmptyTarget
            | ReassignmentError::DuplicateReplica { .. }
            | ReassignmentError::UnknownNode { .. }
            | ReassignmentError::TooManyReplicas { .. } => ErrorCode::InvalidRequest,
        }
    }
}

/// A partition's placement after the request: moving (`target_replicas` set) or moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reassigned {
    pub replicas: Vec<u32>,
    pub target_replicas: Option<Vec<u32>>,
    pub leader: Option<u32>,
    pub leader_epoch: u32,
}

impl Reassigned {
    fn of(partition: &PartitionImage) -> Reassigned {
        Reassigned {
            replicas: partition.replicas.clone(),
            target_replicas: partition.target_replicas.clone(),
            leader: partition.leader,
            leader_epoch: partition.leader_epoch,
        }
    }
}

/// One partition's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReassignmentOutcome {
    pub topic: String,
    pub partition: u32,
    pub result: Result<Reassigned, ReassignmentError>,
}

impl ReassignmentOutcome {
    /// The outcome as a forwarded answer carries it (and the session answers it): the error's
    /// code and message, or the placement after the request.
    #[must_use]
    pub fn to_wire(&self) -> ReassignmentResultWire {
        match &self.result {
            Ok(reassigned) => ReassignmentResultWire {
                topic: self.topic.clone(),
                partition: self.partition,
                error_code: 0,
                message: String::new(),
                replicas: reassigned.replicas.clone(),
                target_replicas: reassigned.target_replicas.clone(),
                leader: reassigned.leader,
                leader_epoch: reassigned.leader_epoch,
            },
            Err(e) => ReassignmentResultWire {
                topic: self.topic.clone(),
                partition: self.partition,
                error_code: e.code().code(),
                // Cut to the wire's bound, as every error message the node writes.
                message: ResponseError::new(e.code(), e.to_string()).message,
                replicas: Vec::new(),
                target_replicas: None,
                leader: None,
                leader_epoch: 0,
            },
        }
    }
}

/// The decision on a whole request: an outcome per partition, in request order, and the
/// records to commit (one per partition changed, all in one metadata change).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReassignmentDecision {
    pub outcomes: Vec<ReassignmentOutcome>,
    pub records: Vec<MetadataRecord>,
}

/// Decides `requested` on `image` (the module doc's rules).
#[must_use]
pub fn decide(image: &MetadataImage, requested: &[Reassignment]) -> ReassignmentDecision {
    let mut decision = ReassignmentDecision::default();
    // Partitions this request has changed so far, so that one named twice is decided on the
    // first outcome.
    let mut changed: BTreeMap<(String, u32), PartitionImage> = BTreeMap::new();
    for reassignment in requested {
        let key = (reassignment.topic.clone(), reassignment.partition);
        let current = match changed.get(&key) {
            Some(p) => Ok(p.clone()),
            None => lookup(image, &reassignment.topic, reassignment.partition),
        };
        let result = current.and_then(|current| {
            let next = reassign(image, &current, &reassignment.target)?;
            if next != current {
                decision
                    .records
                    .push(next.record(&reassignment.topic, reassignment.partition));
                changed.insert(key, next.clone());
            }
            Ok(Reassigned::of(&next))
        });
        decision.outcomes.push(ReassignmentOutcome {
            topic: reassignment.topic.clone(),
            partition: reassignment.partition,
            result,
        });
    }
    decision
}

fn lookup(
    image: &MetadataImage,
    topic: &str,
    partition: u32,
) -> Result<PartitionImage, ReassignmentError> {
    let t = image
        .topics
        .get(topic)
        .ok_or(ReassignmentError::UnknownTopic)?;
    t.partitions
        .get(partition as usize)
        .cloned()
        .ok_or(ReassignmentError::UnknownPartition {
            count: t.partitions.len(),
        })
}

/// The partition moving to `target` (or moved, if its ISR holds the target already), or
/// `current` itself when the request changes nothing.
fn reassign(
    image: &MetadataImage,
    current: &PartitionImage,
    target: &[u32],
) -> Result<PartitionImage, ReassignmentError> {
    check_target(image, target)?;
    if current.replicas.is_empty() {
        return Err(ReassignmentError::Unplaced);
    }
    if current.target_replicas.is_none() && current.replicas == target {
        return Ok(current.clone());
    }
    if current.target_replicas.as_deref() == Some(target) {
        // The move under way: it completes now if an ISR change could not complete it (its
        // target was all in sync but, the leader leaving, no member of it was live then).
        return Ok(
            complete(image, current).map_or_else(|| current.clone(), |done| stamp(current, done))
        );
    }
    let mut replicas = target.to_vec();
    replicas.extend(current.replicas.iter().filter(|n| !target.contains(n)));
    if replicas.len() > REPLICAS_MAX {
        return Err(ReassignmentError::TooManyReplicas {
            count: replicas.len(),
            max: REPLICAS_MAX,
        });
    }
    let moving = PartitionImage {
        replicas,
        target_replicas: Some(target.to_vec()),
        ..current.clone()
    };
    let next = complete(image, &moving).unwrap_or(moving);
    Ok(stamp(current, next))
}

/// Rule 2 of the module doc, on the target alone.
fn check_target(image: &MetadataImage, target: &[u32]) -> Result<(), ReassignmentError> {
    if target.is_empty() {
        return Err(ReassignmentError::EmptyTarget);
    }
    if target.len() > REPLICAS_MAX {
        return Err(ReassignmentError::TooManyReplicas {
            count: target.len(),
            max: REPLICAS_MAX,
        });
    }
    for (index, node) in target.iter().enumerate() {
        if target[..index].contains(node) {
            return Err(ReassignmentError::DuplicateReplica { node: *node });
        }
        if !image.nodes.contains_key(node) {
            return Err(ReassignmentError::UnknownNode { node: *node });
        }
    }
    Ok(())
}

/// The partition with its move completed, if it can complete now: a move is under way and
/// every replica of its target is in the ISR, and the leader stays (it is in the target) or a
/// live member of the target can take over (the first, in target order). Epochs are left as
/// they are: the caller stamps the one change this becomes part of.
#[must_use]
pub fn complete(image: &MetadataImage, partition: &PartitionImage) -> Option<PartitionImage> {
    let target = partition.target_replicas.as_ref()?;
    if !target.iter().all(|node| partition.isr.contains(node)) {
        return None;
    }
    let leader = match partition.leader {
        Some(leader) if target.contains(&leader) => leader,
        _ => *target.iter().find(|node| image.is_live(**node))?,
    };
    let isr: Vec<u32> = partition
        .isr
        .iter()
        .copied()
        .filter(|node| target.contains(node))
        .collect();
    // Every acknowledged write is on every ISR member, and every member of the target is one.
    assert!(
        isr.len() == target.len() && isr.contains(&leader),
        "a completed move keeps the whole target in sync, its leader among them"
    );
    Some(PartitionImage {
        leader: Some(leader),
        leader_epoch: partition.leader_epoch,
        partition_epoch: partition.partition_epoch,
        replicas: target.clone(),
        isr,
        target_replicas: None,
    })
}

/// The partition after a leader's ISR change is committed: `isr` in place of its ISR, and, if
/// that ISR completes a move under way, the move completed in the same change (what the
/// controller's `alter_isr` commits once it has checked the proposal).
#[must_use]
pub fn with_isr(image: &MetadataImage, current: &PartitionImage, isr: Vec<u32>) -> PartitionImage {
    let changed = PartitionImage {
        isr,
        ..current.clone()
    };
    let next = complete(image, &changed).unwrap_or(changed);
    stamp(current, next)
}

/// `next` as one committed change of `current`: the partition epoch one higher, and the
/// leader epoch one higher if the replicas, the target or the leader changed (the module
/// doc's *Epochs*).
fn stamp(current: &PartitionImage, mut next: PartitionImage) -> PartitionImage {
    let new_assignment = next.replicas != current.replicas
        || next.target_replicas != current.target_replicas
        || next.leader != current.leader;
    next.leader_epoch = current.leader_epoch + u32::from(new_assignment);
    next.partition_epoch = current.partition_epoch + 1;
    assert!(
        next.isr.iter().all(|node| next.replicas.contains(node)),
        "the ISR is a subset of the replicas"
    );
    assert!(
        next.target_replicas
            .as_ref()
            .is_none_or(|target| target.iter().all(|node| next.replicas.contains(node))),
        "a move's target is among the replicas while it is under way"
    );
    next
}

#[cfg(test)]
mod tests;
