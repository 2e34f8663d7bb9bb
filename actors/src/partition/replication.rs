//! What a partition needs from the rest of its node to replicate: the way to the controller
//! (ISR proposals), to the leader (OffsetForLeaderEpoch questions) and to the node's replica
//! fetchers. The log thread calls these without waiting: each hands the work to a task or a
//! fetcher and returns, and the answers come back through the partition's handle
//! (`isr_answered`, `epoch_end_answered`, `apply_fetched`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vltava_messages::{LeaderEpoch, NodeId, Offset, PartitionId};

use super::replica_state::{IsrProposal, LocalLog};

/// One unbroken stretch of a partition log's history in this process: a new one starts when
/// the log is opened and at every cut of its end (a truncation, a fresh start at the leader's
/// log start, a reopen after a failed fsync). Within one generation the log only grows at its
/// end, so the offsets below any log end seen in it keep the bytes they had then.
///
/// A follower's fetcher combines a flushed offset learned later (`FlushMark`) with a log end
/// learned earlier only when both carry the same generation: across a cut, a flush may cover
/// bytes appended after it, which are not the ones the older log end counted, and reporting
/// them to the older leader would count bytes it never sent as durable on this follower.
/// Drawn from one process-wide counter, so a restarted partition (a new log thread over the
/// same directory) never repeats one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogGeneration(pub u64);

static NEXT_LOG_GENERATION: AtomicU64 = AtomicU64::new(0);

impl LogGeneration {
    /// A generation no log in this process has had.
    #[must_use]
    pub fn next() -> LogGeneration {
        LogGeneration(NEXT_LOG_GENERATION.fetch_add(1, Ordering::Relaxed))
    }
}

/// A follower's log as its fetcher learns it: the offsets, and the generation they belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerLog {
    pub log: LocalLog,
    pub generation: LogGeneration,
}

/// A follower partition's flush completed: offsets below `flushed_offset` are fsynced in its
/// log of `generation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushMark {
    pub generation: LogGeneration,
    pub flushed_offset: Offset,
}

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
        log: FollowerLog,
    );

    /// A follower's flush completed while it fetches from `leader`: its fetcher reports the
    /// new flushed offset to the leader at once (the leader's high watermark waits for it),
    /// rather than with its next fetch, which may be parked in the leader's long poll.
    fn flushed(&self, topic: &Arc<str>, partition: PartitionId, leader: NodeId, mark: FlushMark);

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
        _log: FollowerLog,
    ) {
        tracing::error!(%topic, partition = partition.0, leader = leader.0, "a follower on a node without a cluster");
    }

    fn flushed(
        &self,
        _topic: &Arc<str>,
        _partition: PartitionId,
        _leader: NodeId,
        _mark: FlushMark,
    ) {
        // Only a follower reports flushes, and `start_fetching` above already logged the bug
        // of a follower here; once is enough.
    }

    fn stop_fetching(&self, _topic: &Arc<str>, _partition: PartitionId) {}
}
