//! A member's Raft state as operators see it (DescribeCluster, the admin endpoint's
//! `/cluster`): role, term, commit and applied indexes, the leader, and on the leader each
//! peer's match index. [`RaftStatusSource`] reads them from two watches, openraft's metrics
//! and the log store's committed id, so that answering never sends a message to the Raft task
//! or waits behind it, and looking changes nothing.

use openraft::{BasicNode, LogId, RaftMetrics, ServerState};
use tokio::sync::watch;

use super::{RaftMember, RaftNodeId, vltava_node_id};

/// A member's role in the metadata quorum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    /// Replicates but does not vote; also the state of a member before it joins a quorum.
    Learner,
    /// The member is stopping.
    Shutdown,
}

impl RaftRole {
    /// The role's name as the admin endpoint and the CLI write it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RaftRole::Leader => "leader",
            RaftRole::Follower => "follower",
            RaftRole::Candidate => "candidate",
            RaftRole::Learner => "learner",
            RaftRole::Shutdown => "shutdown",
        }
    }
}

impl From<ServerState> for RaftRole {
    fn from(state: ServerState) -> RaftRole {
        match state {
            ServerState::Leader => RaftRole::Leader,
            ServerState::Follower => RaftRole::Follower,
            ServerState::Candidate => RaftRole::Candidate,
            ServerState::Learner => RaftRole::Learner,
            ServerState::Shutdown => RaftRole::Shutdown,
        }
    }
}

/// How far the leader knows one peer's log matches its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerReplication {
    pub node_id: u32,
    /// The last log index known to match the leader's, absent until the peer's first answer.
    pub match_index: Option<u64>,
}

/// A member's Raft state at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftStatus {
    pub role: RaftRole,
    pub term: u64,
    /// The last committed log index the member knows, absent before it knows of any.
    pub commit_index: Option<u64>,
    /// The last log index applied to the member's metadata image.
    pub applied_index: Option<u64>,
    /// The last log index in the member's own log.
    pub last_log_index: Option<u64>,
    /// The quorum's leader as the member knows it.
    pub leader_id: Option<u32>,
    /// The voting members, in id order.
    pub voters: Vec<u32>,
    /// On the leader only: every other member (voter or learner) with its match index, in id
    /// order.
    pub peers: Option<Vec<PeerReplication>>,
}

impl RaftStatus {
    /// The status that `metrics` and the durable `committed` id describe. openraft saves the
    /// committed id before it applies up to it, so an applied index above the saved committed
    /// one means the saved id is behind (it is saved only when it moves, and lowered at open
    /// after damage); the applied index is committed by definition, so the larger is reported.
    #[must_use]
    pub fn from_metrics(
        metrics: &RaftMetrics<RaftNodeId, BasicNode>,
        committed: Option<LogId<RaftNodeId>>,
    ) -> RaftStatus {
        let applied_index = metrics.last_applied.map(|id| id.index);
        let commit_index = committed.map(|id| id.index).max(applied_index);
        let peers = metrics.replication.as_ref().map(|replication| {
            replication
                .iter()
                .filter(|(id, _)| **id != metrics.id)
                .filter_map(|(id, matched)| {
                    Some(PeerReplication {
                        node_id: vltava_node_id(*id)?.0,
                        match_index: matched.map(|log_id| log_id.index),
                    })
                })
                .collect()
        });
        RaftStatus {
            role: metrics.state.into(),
            term: metrics.current_term,
            commit_index,
            applied_index,
            last_log_index: metrics.last_log_index,
            leader_id: metrics
                .current_leader
                .and_then(vltava_node_id)
                .map(|node| node.0),
            voters: metrics
                .membership_config
                .membership()
                .voter_ids()
                .filter_map(|id| vltava_node_id(id).map(|node| node.0))
                .collect(),
            peers,
        }
    }
}

/// Where a node reads its Raft member's status: clones of the member's watches, so a reader
/// never messages or waits for the Raft task.
#[derive(Clone, Debug)]
pub struct RaftStatusSource {
    metrics: watch::Receiver<RaftMetrics<RaftNodeId, BasicNode>>,
    committed: watch::Receiver<Option<LogId<RaftNodeId>>>,
}

impl RaftStatusSource {
    /// The source for a running member.
    #[must_use]
    pub fn new(member: &RaftMember) -> RaftStatusSource {
        RaftStatusSource {
            metrics: member.raft.metrics(),
            committed: member.committed.clone(),
        }
    }

    /// The member's status now. Holds each watch's read lock only while it copies the fields
    /// it needs (the membership is shared behind an `Arc`, not copied).
    #[must_use]
    pub fn status(&self) -> RaftStatus {
        let committed = *self.committed.borrow();
        RaftStatus::from_metrics(&self.metrics.borrow(), committed)
    }
}
