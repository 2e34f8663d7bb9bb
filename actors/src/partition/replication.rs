//! What a partition needs from the rest of its node to replicate: the way to the controller
//! (ISR proposals), to the leader (OffsetForLeaderEpoch questions) and to the node's replica
//! fetchers. The log thread calls these without waiting: each hands the work to a task or a
//! fetcher and returns, and the answers come back through the partition's handle
//! (`isr_answered`, `epoch_end_answered`, `apply_fetched`).

use std::sync::Arc;

use vltava_messages::{LeaderEpoch, NodeId, PartitionId};

use super::replica_state::{IsrProposal, LocalLog};

/// A partition's node-side replication services.
pub trait ReplicaLinks: Send + Sync + std::fmt::Debug {
    /// Sends `proposal` to the controller; its answer reaches the partition's
    /// `isr_answered`. A lost proposal is sent again by the replica state's own retry.
    fn propose_isr(&self, topic: &Arc<str>, partition: PartitionId, proposal: IsrProposal);

    /// Asks `leader` where `epoch` ends in its log; the answer reaches the partition's
    /// `epoch_end_answered`. A lost question is asked again by the replica state's retry.
    fn ask_epoch_end(
        &self,
        topic: &Arc<str>,
        partition: PartitionId,
        leader: NodeId,
        leader_epoch: LeaderEpoch,
        epoch: LeaderEpoch,
    );

    /// Has the node's fetcher towards `leader` fetch this partition in `leader_epoch`, from
    /// `log`'s end (replacing whatever it fetched before).
    fn start_fetching(
        &self,
        topic: &Arc<str>,
        partition: PartitionId,
        leader: NodeId,
        leader_epoch: LeaderEpoch,
        log: LocalLog,
    );

    /// Stops fetching this partition.
    fn stop_fetching(&self, topic: &Arc<str>, partition: PartitionId);
}

/// A node that is a cluster of one: no partition has another replica, so nothing ever asks
/// for these. Each is logged as the bug it would be.
#[derive(Debug, Default)]
pub struct Standalone;

impl ReplicaLinks for Standalone {
    fn propose_isr(&self, topic: &Arc<str>, partition: PartitionId, proposal: IsrProposal) {
        tracing::error!(%topic, partition = partition.0, ?proposal, "an ISR proposal on a node without a cluster");
    }

    fn ask_epoch_end(
        &self,
        topic: &Arc<str>,
        partition: PartitionId,
        leader: NodeId,
        _leader_epoch: LeaderEpoch,
        _epoch: LeaderEpoch,
    ) {
        tracing::error!(%topic, partition = partition.0, leader = leader.0, "a follower on a node without a cluster");
    }

    fn start_fetching(
        &self,
        topic: &Arc<str>,
        partition: PartitionId,
        leader: NodeId,
        _leader_epoch: LeaderEpoch,
        _log: LocalLog,
    ) {
        tracing::error!(%topic, partition = partition.0, leader = leader.0, "a follower on a node without a cluster");
    }

    fn stop_fetching(&self, _topic: &Arc<str>, _partition: PartitionId) {}
}
