//! One partition replica's replication state, as a plain state machine: the Partition actor
//! feeds it events (its own log moving, followers' fetches, the controller's decisions, clock
//! ticks) and carries out the effects it returns. No sockets, no files, no clock reads: time
//! is passed in, so a seeded simulation (`sim`, tests only) drives three of them through
//! message loss, reordering, crashes and restarts.
//!
//! # Owns
//! The role (unassigned, leader, follower), the leader epoch and partition epoch, the
//! replicas and the committed ISR, each follower's log end and flushed offset as its fetches
//! report them (leader), the ISR change proposed to the controller and not yet answered, the
//! high watermark, the leader's epoch start offset, the follower's truncation progress, and
//! the `acks=all` answers waiting for the high watermark (`AckQueue`, bounded by
//! `ACK_WAITERS_MAX`). It keeps a copy of the local log's offsets (`LocalLog`); the `Log`
//! itself stays with the actor.
//!
//! # Inputs (transitions)
//! - `open`: the log's offsets and the high-watermark checkpoint; the replica starts
//!   unassigned. `become_leader` / `become_follower`: an assignment from the metadata (role,
//!   epochs, replicas, ISR); roles change in place, the log is never reopened for it.
//! - `admit_append` (a check, no change) then `appended` (the leader appended a batch),
//!   `local_log_changed` (a flush completed, or any other move of the local log).
//! - `follower_fetched` (leader: a follower's fetch reports its log end and flushed offset).
//! - `isr_answered` (the controller's answer to a proposal) and `isr_committed` (a committed
//!   ISR change seen in the metadata).
//! - `epoch_end_answered`, `log_truncated`, `fetch_applied` (follower: the leader's
//!   OffsetForLeaderEpoch answer, a truncation done, a fetched batch appended);
//!   `fetch_out_of_range` (the leader does not hold the fetch offset) and `log_started_afresh`
//!   (the log was emptied and starts at the leader's log start).
//! - `tick`: the monotonic time; shrinks the ISR of lagging followers, retries what was lost.
//!
//! # Outputs (`Effect`), and what the actor must do with each
//! - `Acknowledge { waiters }`: answer these produce requests with success.
//! - `Fail { waiters, error }`: answer them with `error` (mapped to its wire code).
//! - `PublishHighWatermark`: publish the new high watermark (watch channel, gauges; wakes
//!   long-poll fetches) and checkpoint it (lazily is fine: open takes min(checkpoint, log end)).
//! - `RecordEpochStart`: record in the log's leader-epoch cache that the epoch starts at the
//!   offset, before answering any OffsetForLeaderEpoch.
//! - `ProposeIsr`: send the proposal to the controller, which compare-and-sets it on (leader
//!   epoch, partition epoch) and answers with the partition's committed ISR (`isr_answered`).
//! - `AskEpochEnd`: ask the leader for the end offset of `epoch` (OffsetForLeaderEpoch);
//!   feed the answer to `epoch_end_answered`.
//! - `Truncate`: cut the log at `offset` (`Log::truncate_to`), then call `log_truncated`.
//! - `TruncateFullyAndStartAt`: empty the log and start it at `offset`
//!   (`Log::truncate_fully_and_start_at`), then call `log_started_afresh`.
//! - `StartFetching` / `StopFetching`: start or stop the ReplicaFetcher towards the leader.
//!
//! # Invariants (asserted after `open` and after every transition, on in release)
//! - `log_start <= high_watermark <= log_end`, and `log_start <= flushed <= log_end`.
//! - The high watermark never moves back within a leader epoch (a follower cutting below it is
//!   a bug, unless unclean leader election is configured), and the leader epoch never goes
//!   back.
//! - A leader is in its committed ISR, the ISR is within the replicas, and a pending proposal
//!   is based on the current partition epoch: the committed ISR changes only when the
//!   controller's committed answer (a new partition epoch) arrives, never at proposal time.
//! - `acks=all` waiters exist only while the ISR has at least `min.insync.replicas` members,
//!   and only past the high watermark.
//!
//! # Rules
//! - High watermark (leader): the lowest measure over the ISR, the leader included, where a
//!   replica's measure is its flushed offset with fsync durability and its log end otherwise.
//!   While an ISR change is pending it is computed over the committed ISR and the proposed one
//!   together (the larger set: the old one for a shrink, the new one for an expansion; in
//!   fact over every replica proposed at the current partition epoch, as any of those
//!   proposals may still commit), so that any replica the controller may elect holds every
//!   acknowledged offset. An ISR member that has not fetched in this epoch holds it back. It
//!   advances only while the committed ISR has at least `min.insync.replicas` members
//!   (default: a majority of the replicas), and never moves back.
//! - High watermark (follower): min(the leader's, its own log end), never lower than before.
//!   At open: min(checkpoint, log end).
//! - ISR shrink: a follower that has not been caught up for `replica_lag_time_max` (caught up:
//!   a fetch reached the leader's log end, or reached the log end the leader had at the
//!   follower's previous fetch, which counts from that previous fetch). ISR expansion: a
//!   follower whose measure reaches the high watermark and the leader's epoch start offset,
//!   and that was caught up within `replica_lag_time_max` (a dead follower's last report
//!   may still reach the high watermark of an idle partition; it must not come back).
//!   A follower that leaves the ISR forgets its reported progress: it rejoins only on a fetch
//!   made after it left (a dead node's last report must not bring it back).
//!   One proposal at a time, sent again after `ISR_PROPOSAL_RETRY_INTERVAL` if unanswered;
//!   applied only when the controller's committed answer arrives. A follower that joins gets a
//!   full lag window.
//! - `acks=0` and `acks=1`: acknowledged after the leader's append. `acks=all`: refused with
//!   `NotEnoughReplicas` before the append while the committed ISR is below the minimum;
//!   acknowledged once below the high watermark; failed with `NotEnoughReplicasAfterAppend`
//!   when a committed ISR change takes the ISR below the minimum meanwhile, with `NotLeader`
//!   when the replica becomes a follower (a leader re-elected in a newer epoch keeps them).
//! - A new leader records its epoch start (its log end); until its high watermark reaches it,
//!   offset queries (ListOffsets, consumer fetches) answer the retriable `OffsetNotAvailable`.
//! - A new follower asks the leader for the end offset of its latest epoch and cuts what the
//!   leader does not have before it fetches; when the leader knows only an older epoch, it cuts
//!   from where its own log leaves that epoch (even at its log end: the cut drops the entries
//!   of later epochs, one of which may hold no batch) and asks again about what is left; when it knows
//!   no epoch that old (its retention removed them), it cuts what lies past its high
//!   watermark. Cutting below the high watermark is asserted against (unless unclean election
//!   is configured).
//! - A follower whose fetch offset is below the leader's log start (retention on the leader
//!   removed what it would fetch next, while it was away) empties its log and starts it at the
//!   leader's log start, its high watermark there (every offset below it was committed: the
//!   leader deletes only below its high watermark), then fetches from there (Kafka's
//!   `truncateFullyAndStartAt`). One whose fetch offset is past the leader's log end holds
//!   offsets the leader does not have (the leader's log went back within its epoch, which
//!   only a bug or a lost disk explains): it asks the epoch-end question again and truncates
//!   as a new follower does. An answer to an older fetch (another epoch, or a fetch offset
//!   that is no longer the log end) changes nothing.
//!
//! # Tests
//! `tests.rs` has a test per rule, driving the public transitions; `sim.rs` runs thousands of
//! seeded simulations of three replicas and a controller through loss, delay, reordering,
//! crashes that lose unflushed bytes, and restarts, checking that no acknowledged offset is
//! lost or given another value.
//!
//! # What the control plane must guarantee
//! Leaders are elected from the ISR only (unless unclean election is configured), and a node
//! that restarted never leads again at an epoch it may have led before: the controller bumps
//! the leader epoch when a leader's new incarnation registers. (`become_leader` also refuses
//! an epoch not newer than the log's latest, which catches the common case.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use vltava_messages::protocol::ErrorCode;
use vltava_messages::{LeaderEpoch, NodeId, Offset};
use vltava_storage::AckQueue;
use vltava_storage::epoch::LeaderEpochCache;

use super::{ACK_WAITERS_MAX, Acks, Durability};

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

/// Kafka's default `replica.lag.time.max.ms`: long enough that a follower riding out a
/// garbage-collection pause, a slow fsync or a reconnect stays in the ISR, short enough that a
/// dead follower stops holding the high watermark (and every `acks=all` answer) back within
/// seconds.
pub const REPLICA_LAG_TIME_MAX_DEFAULT: Duration = Duration::from_secs(10);

/// How long a follower waits for the leader's OffsetForLeaderEpoch answer before asking again.
/// It cannot fetch until it is answered, and a question or answer can be lost with its
/// connection; half a second bounds that stall without flooding a leader that is merely slow.
pub const EPOCH_END_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// How long a leader waits for the controller's answer to an ISR proposal before sending it
/// again, and how long it waits after a refusal before proposing again. A lost shrink would
/// otherwise stall `acks=all` for good (the high watermark is computed over the larger ISR
/// while it is pending); the controller's compare-and-set makes a repeat harmless.
pub const ISR_PROPOSAL_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// How recently a follower outside the ISR must have fetched to be proposed for it: a live
/// follower fetches at least every long poll (250 ms) plus its append and fsync, so two
/// seconds leave room for a loaded disk, and a dead one stops being proposed soon after it
/// stops fetching.
pub const ISR_EXPANSION_FETCH_RECENT: Duration = Duration::from_secs(2);

/// A partition's epoch: it grows with every committed change of the partition (leader or
/// ISR), and an ISR proposal names the one it is based on, so the controller can refuse a
/// proposal made from a stale view. A `u32`, like the leader epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionEpoch(pub u32);

impl std::fmt::Display for PartitionEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The default `min.insync.replicas` for a replication factor: a majority, so that an
/// acknowledged offset is on more than half the replicas and survives the loss of any
/// minority (1, 2, 2, 3 for 1, 2, 3, 5 replicas).
#[must_use]
pub fn min_insync_replicas_default(replication_factor: usize) -> usize {
    replication_factor / 2 + 1
}

/// A replica's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// Fsync: the high watermark is over flushed offsets; otherwise over log ends.
    pub durability: Durability,
    /// `min.insync.replicas`; `None`: a majority of the replicas.
    pub min_insync_replicas: Option<usize>,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max: Duration,
    /// Whether the controller may elect a leader from outside the ISR. Then a follower may
    /// have to cut offsets below its high watermark (they were lost with the old ISR); without
    /// it, that is a bug and asserted against.
    pub unclean_leader_election: bool,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            durability: Durability::Fsync,
            min_insync_replicas: None,
            replica_lag_time_max: REPLICA_LAG_TIME_MAX_DEFAULT,
            unclean_leader_election: false,
        }
    }
}

/// The local log's offsets, as the actor reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalLog {
    pub log_start_offset: Offset,
    pub log_end_offset: Offset,
    /// Offsets below it are fsynced (the log's recovery point).
    pub flushed_offset: Offset,
    /// The newest leader epoch in the log's epoch cache.
    pub latest_epoch: Option<LeaderEpoch>,
}

/// A partition's leadership as the controller committed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
    pub replicas: Vec<NodeId>,
    pub isr: BTreeSet<NodeId>,
    /// The replicas a reassignment under way moves the partition to (all among `replicas`),
    /// `None` when none is. The default `min.insync.replicas` is a majority of them then, so
    /// that the replicas being added do not raise it while they catch up.
    pub target_replicas: Option<Vec<NodeId>>,
}

/// A committed ISR, as the controller answers a proposal or the metadata carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedIsr {
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
    pub isr: BTreeSet<NodeId>,
}

/// A leader's proposed ISR: the controller commits it only if the partition is still at
/// `leader_epoch` and `partition_epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrProposal {
    pub leader: NodeId,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
    pub isr: BTreeSet<NodeId>,
}

/// The controller's answer to a proposal: the partition's committed ISR after it (a new
/// partition epoch if the proposal was taken, the unchanged one if it was refused), and the
/// partition epoch the proposal was based on, so the leader can tell the answer to its current
/// proposal from a late answer to an older one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrAnswer {
    pub proposed_at: PartitionEpoch,
    pub committed: CommittedIsr,
}

/// What a follower's fetch says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerReport {
    pub follower: NodeId,
    /// The leader epoch the follower fetches in.
    pub leader_epoch: LeaderEpoch,
    /// The fetch offset: the follower's log end.
    pub log_end_offset: Offset,
    /// The follower's flushed offset.
    pub flushed_offset: Offset,
}

/// The leader's answer to OffsetForLeaderEpoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEndAnswer {
    /// The leader epoch the question was asked in.
    pub leader_epoch: LeaderEpoch,
    /// The epoch asked about.
    pub requested: LeaderEpoch,
    /// The largest epoch at or below `requested` that the leader's log knows, and its end
    /// offset (`Log::end_offset_for_epoch`); `None` if it knows none (retention may have
    /// removed the older epochs).
    pub end: Option<(LeaderEpoch, Offset)>,
}

/// The leader's refusal of a fetch whose offset its log does not hold (`OffsetOutOfRange`),
/// with the leader's log bounds the answer carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchOutOfRange {
    /// The leader epoch the fetch was made in.
    pub leader_epoch: LeaderEpoch,
    /// The fetch offset the leader refused: the follower's log end when it asked.
    pub fetch_offset: Offset,
    pub leader_log_start_offset: Offset,
    pub leader_log_end_offset: Offset,
}

/// What the actor must do; see the module doc.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect<W> {
    Acknowledge {
        waiters: Vec<W>,
    },
    Fail {
        waiters: Vec<W>,
        error: ReplicaError,
    },
    PublishHighWatermark {
        high_watermark: Offset,
    },
    RecordEpochStart {
        leader_epoch: LeaderEpoch,
        start_offset: Offset,
    },
    ProposeIsr(IsrProposal),
    AskEpochEnd {
        leader: NodeId,
        leader_epoch: LeaderEpoch,
        epoch: LeaderEpoch,
    },
    Truncate {
        offset: Offset,
    },
    TruncateFullyAndStartAt {
        offset: Offset,
    },
    StartFetching {
        leader: NodeId,
        leader_epoch: LeaderEpoch,
    },
    StopFetching,
}

/// What a follower's accepted fetch is answered with.
#[derive(Debug)]
pub struct FetchAccepted<W> {
    /// The high watermark to put in the answer (after this fetch moved it).
    pub high_watermark: Offset,
    pub effects: Vec<Effect<W>>,
}

/// Why a request was refused; each maps to a wire error code (`ErrorCode::from`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error("this replica does not lead the partition (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("leader epoch {received} is older than the current {current}")]
    FencedLeaderEpoch {
        current: LeaderEpoch,
        received: LeaderEpoch,
    },
    #[error("leader epoch {received} is newer than the current {current}")]
    UnknownLeaderEpoch {
        current: LeaderEpoch,
        received: LeaderEpoch,
    },
    #[error("the ISR has {isr_count} members, fewer than min.insync.replicas {min}")]
    NotEnoughReplicas { isr_count: usize, min: usize },
    #[error(
        "the ISR shrank to {isr_count} members, fewer than min.insync.replicas {min}, after the append"
    )]
    NotEnoughReplicasAfterAppend { isr_count: usize, min: usize },
    #[error(
        "the high watermark {high_watermark} has not reached the epoch start {epoch_start_offset}"
    )]
    OffsetNotAvailable {
        high_watermark: Offset,
        epoch_start_offset: Offset,
    },
    #[error("{waiters_max} acks=all answers are already waiting")]
    Overloaded { waiters_max: usize },
    #[error("node {node:?} is not a follower replica of this partition")]
    NotAReplica { node: NodeId },
    #[error("fetch offset {offset} is past the leader's log end {log_end_offset}")]
    FetchOffsetPastLogEnd {
        offset: Offset,
        log_end_offset: Offset,
    },
    #[error("a flushed offset {flushed_offset} past the log end {log_end_offset}")]
    FlushedPastLogEnd {
        log_end_offset: Offset,
        flushed_offset: Offset,
    },
}

impl From<&ReplicaError> for ErrorCode {
    fn from(error: &ReplicaError) -> ErrorCode {
        match error {
            ReplicaError::NotLeader { .. } => ErrorCode::NotLeader,
            ReplicaError::FencedLeaderEpoch { .. } => ErrorCode::FencedLeaderEpoch,
            ReplicaError::UnknownLeaderEpoch { .. } => ErrorCode::UnknownLeaderEpoch,
            ReplicaError::NotEnoughReplicas { .. } => ErrorCode::NotEnoughReplicas,
            ReplicaError::NotEnoughReplicasAfterAppend { .. } => {
                ErrorCode::NotEnoughReplicasAfterAppend
            }
            ReplicaError::OffsetNotAvailable { .. } => ErrorCode::OffsetNotAvailable,
            ReplicaError::Overloaded { .. } => ErrorCode::Overloaded,
            ReplicaError::NotAReplica { .. } | ReplicaError::FlushedPastLogEnd { .. } => {
                ErrorCode::InvalidRequest
            }
            ReplicaError::FetchOffsetPastLogEnd { .. } => ErrorCode::OffsetOutOfRange,
        }
    }
}

/// Why a control-plane input (an assignment, a committed ISR, a leader's answer) was refused.
/// The actor logs it and keeps its state: these come from the controller or the leader and
/// mean a stale message or a bug there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("leader epoch {received} is older than the current {current}")]
    StaleLeaderEpoch {
        current: LeaderEpoch,
        received: LeaderEpoch,
    },
    #[error("leader epoch {leader_epoch} already has leader {current:?}, not {received:?}")]
    ConflictingLeader {
        leader_epoch: LeaderEpoch,
        current: Option<NodeId>,
        received: Option<NodeId>,
    },
    #[error("the assignment names leader {leader:?}, which does not fit the transition")]
    WrongLeader { leader: Option<NodeId> },
    #[error("node {node:?} is not among the replicas")]
    NotAReplica { node: NodeId },
    #[error("the ISR names {node:?}, which is not a replica")]
    IsrNotInReplicas { node: NodeId },
    #[error("leader {leader:?} is not in the ISR (no unclean election here)")]
    LeaderNotInIsr { leader: NodeId },
    #[error("leader epoch {leader_epoch} is not newer than the log's latest epoch {latest:?}")]
    EpochNotNewerThanLog {
        leader_epoch: LeaderEpoch,
        latest: LeaderEpoch,
    },
    #[error("leader epoch {received} is newer than the current {current}: re-role first")]
    UnknownLeaderEpoch {
        current: LeaderEpoch,
        received: LeaderEpoch,
    },
    #[error("the leader answered epoch {answered} for a question about epoch {requested}")]
    EpochEndNewerThanAsked {
        requested: LeaderEpoch,
        answered: LeaderEpoch,
    },
    #[error(
        "fetch offset {fetch_offset} refused as out of range by a leader whose log holds [{leader_log_start_offset}, {leader_log_end_offset}]"
    )]
    FetchOffsetInLeaderRange {
        fetch_offset: Offset,
        leader_log_start_offset: Offset,
        leader_log_end_offset: Offset,
    },
    #[error(
        "the leader's log ends at {leader_log_end_offset}, before this log's end {log_end_offset}, and this log holds no epoch to ask about"
    )]
    LeaderLogEndsBeforeLogWithoutEpochs {
        log_end_offset: Offset,
        leader_log_end_offset: Offset,
    },
}

/// The role, for callers that only need to know which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind {
    /// Opened, not yet told its role by the metadata.
    Unassigned,
    Leader,
    Follower,
}

/// What the leader knows of one follower in the current epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerProgress {
    /// From its latest fetch in this epoch; `None` until it fetched.
    pub log_end_offset: Option<Offset>,
    /// The highest flushed offset it reported in this epoch while its log end covered it
    /// (`follower_fetched`); `None` until it fetched.
    pub flushed_offset: Option<Offset>,
    /// The last time it was caught up to the leader's log end.
    pub last_caught_up: Instant,
    /// When it last fetched, and the leader's log end then: a later fetch reaching that log
    /// end shows it was caught up at that time, which keeps a follower of a busy leader (whose
    /// log end moves on between fetches) in sync.
    last_fetch: Option<(Instant, Offset)>,
}

#[derive(Debug)]
struct PendingIsr {
    proposal: IsrProposal,
    sent_at: Instant,
}

#[derive(Debug)]
struct Leading<W> {
    /// The log end when this replica became leader: its epoch's first offset.
    epoch_start_offset: Offset,
    followers: BTreeMap<NodeId, FollowerProgress>,
    pending: Option<PendingIsr>,
    /// Every replica named by a proposal sent at the current partition epoch. Any of those
    /// proposals may still be committed (a late duplicate of one the controller refused, say)
    /// until the partition epoch moves, so the high watermark counts them all.
    proposed: BTreeSet<NodeId>,
    /// No new proposal before this time (after a refusal).
    propose_after: Option<Instant>,
    waiters: AckQueue<W>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterTruncation {
    /// The leader's answer matched the asked epoch: the log now ends where the leader's does
    /// for that epoch or earlier, so it can fetch.
    Fetch,
    /// The leader knew only an older epoch: ask again about the log's new latest epoch.
    AskAgain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FollowerPhase {
    /// No leader to follow (the partition is offline).
    Idle,
    AskingEpochEnd {
        epoch: LeaderEpoch,
        asked_at: Instant,
    },
    Truncating {
        offset: Offset,
        then: AfterTruncation,
    },
    /// Emptying the log to start it at the leader's log start.
    StartingAfresh {
        offset: Offset,
    },
    Fetching,
}

#[derive(Debug)]
enum Role<W> {
    Unassigned,
    Leader(Leading<W>),
    Follower(FollowerPhase),
}

/// One partition replica's replication state; `W` is whatever the actor needs to answer a
/// waiting `acks=all` produce (its reply channel), handed back in `Acknowledge` and `Fail`.
#[derive(Debug)]
pub struct ReplicaState<W> {
    node: NodeId,
    config: ReplicaConfig,
    log: LocalLog,
    high_watermark: Offset,
    /// `None` until the first `become_leader` / `become_follower`.
    assignment: Option<Assignment>,
    role: Role<W>,
    /// Set by a truncation below the high watermark that unclean election allows, so the
    /// transition's monotonicity check lets that one move back.
    unclean_cut: bool,
}

impl<W> ReplicaState<W> {
    /// A replica of `node` over a log with these offsets. The high watermark starts at
    /// min(checkpoint, log end), never below the log start: the checkpoint may be ahead of a
    /// log that lost its unflushed tail, or behind a log it was not written for.
    #[must_use]
    pub fn open(
        node: NodeId,
        config: ReplicaConfig,
        log: LocalLog,
        high_watermark_checkpoint: Option<Offset>,
    ) -> Self {
        assert_log_offsets(&log);
        let high_watermark = high_watermark_checkpoint
            .unwrap_or(log.log_start_offset)
            .min(log.log_end_offset)
            .max(log.log_start_offset);
        let state = ReplicaState {
            node,
            config,
            log,
            high_watermark,
            assignment: None,
            role: Role::Unassigned,
            unclean_cut: false,
        };
        state.check_invariants();
        state
    }

    // ---- Queries -------------------------------------------------------------------------

    #[must_use]
    pub fn node(&self) -> NodeId {
        self.node
    }

    #[must_use]
    pub fn role(&self) -> RoleKind {
        match self.role {
            Role::Unassigned => RoleKind::Unassigned,
            Role::Leader(_) => RoleKind::Leader,
            Role::Follower(_) => RoleKind::Follower,
        }
    }

    #[must_use]
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    #[must_use]
    pub fn log(&self) -> LocalLog {
        self.log
    }

    #[must_use]
    pub fn assignment(&self) -> Option<&Assignment> {
        self.assignment.as_ref()
    }

    #[must_use]
    pub fn leader_epoch(&self) -> Option<LeaderEpoch> {
        self.assignment.as_ref().map(|a| a.leader_epoch)
    }

    /// The committed ISR.
    #[must_use]
    pub fn isr(&self) -> Option<&BTreeSet<NodeId>> {
        self.assignment.as_ref().map(|a| &a.isr)
    }

    /// `min.insync.replicas` for this partition's replicas: the topic's, or a majority of the
    /// replicas (of the target, while a reassignment moves the partition: a move from one
    /// replica to another would otherwise need both in sync before it could take a write).
    #[must_use]
    pub fn min_insync_replicas(&self) -> usize {
        let replicas = self.assignment.as_ref().map_or(1, |a| {
            a.target_replicas
                .as_ref()
                .map_or(a.replicas.len(), Vec::len)
        });
        self.config
            .min_insync_replicas
            .unwrap_or_else(|| min_insync_replicas_default(replicas))
    }

    /// The leader's epoch start offset.
    #[must_use]
    pub fn epoch_start_offset(&self) -> Option<Offset> {
        match &self.role {
            Role::Leader(l) => Some(l.epoch_start_offset),
            _ => None,
        }
    }

    /// The ISR proposal awaiting the controller's answer.
    #[must_use]
    pub fn pending_isr(&self) -> Option<&IsrProposal> {
        match &self.role {
            Role::Leader(l) => l.pending.as_ref().map(|p| &p.proposal),
            _ => None,
        }
    }

    /// What the leader knows of a follower.
    #[must_use]
    pub fn follower(&self, node: NodeId) -> Option<&FollowerProgress> {
        match &self.role {
            Role::Leader(l) => l.followers.get(&node),
            _ => None,
        }
    }

    /// The leader and epoch a follower may append fetched batches from: set only once its
    /// truncation is done.
    #[must_use]
    pub fn fetching_from(&self) -> Option<(NodeId, LeaderEpoch)> {
        match (&self.role, &self.assignment) {
            (Role::Follower(FollowerPhase::Fetching), Some(a)) => {
                a.leader.map(|leader| (leader, a.leader_epoch))
            }
            _ => None,
        }
    }

    /// The `acks=all` answers waiting.
    #[must_use]
    pub fn waiting_count(&self) -> usize {
        match &self.role {
            Role::Leader(l) => l.waiters.len(),
            _ => 0,
        }
    }

    /// Whether an append with `acks` may be made now: only on the leader, and for `acks=all`
    /// only while the ISR has at least `min.insync.replicas` members (`NotEnoughReplicas`,
    /// before anything is written) and the waiting answers are under their bound.
    ///
    /// # Errors
    /// `NotLeader`, `NotEnoughReplicas`, `Overloaded`.
    pub fn admit_append(&self, acks: Acks) -> Result<(), ReplicaError> {
        let Role::Leader(leading) = &self.role else {
            return Err(self.not_leader());
        };
        if acks == Acks::All {
            let isr_count = self.isr_count();
            let min = self.min_insync_replicas();
            if isr_count < min {
                return Err(ReplicaError::NotEnoughReplicas { isr_count, min });
            }
            if leading.waiters.len() >= ACK_WAITERS_MAX {
                return Err(ReplicaError::Overloaded {
                    waiters_max: ACK_WAITERS_MAX,
                });
            }
        }
        Ok(())
    }

    /// Whether offset queries (ListOffsets, consumer fetches) may be answered: only by the
    /// leader, and only once its high watermark reached its epoch start. Before that it may be
    /// below the high watermark the previous leader showed consumers.
    ///
    /// # Errors
    /// `NotLeader`, `OffsetNotAvailable` (retriable).
    pub fn check_offset_query(&self) -> Result<(), ReplicaError> {
        let Role::Leader(leading) = &self.role else {
            return Err(self.not_leader());
        };
        if self.high_watermark < leading.epoch_start_offset {
            return Err(ReplicaError::OffsetNotAvailable {
                high_watermark: self.high_watermark,
                epoch_start_offset: leading.epoch_start_offset,
            });
        }
        Ok(())
    }

    /// Whether an OffsetForLeaderEpoch question asked in `leader_epoch` may be answered: only
    /// by the leader of that epoch, whose epoch start is recorded.
    ///
    /// # Errors
    /// `NotLeader`, `FencedLeaderEpoch`, `UnknownLeaderEpoch`.
    pub fn check_epoch_end_question(&self, leader_epoch: LeaderEpoch) -> Result<(), ReplicaError> {
        if !matches!(self.role, Role::Leader(_)) {
            return Err(self.not_leader());
        }
        self.check_request_epoch(leader_epoch)
    }

    // ---- Transitions ---------------------------------------------------------------------

    /// The metadata makes this replica the leader of `assignment.leader_epoch`. A repeat of the
    /// current assignment changes nothing; a newer partition epoch in it is an ISR commit.
    ///
    /// # Errors
    /// A stale or conflicting assignment, one this replica cannot lead by (not the named
    /// leader, not in the ISR), or an epoch not newer than the log's latest.
    pub fn become_leader(
        &mut self,
        assignment: Assignment,
        now: Instant,
    ) -> Result<Vec<Effect<W>>, ControlError> {
        self.transition(|s| s.become_leader_inner(assignment, now))
    }

    /// The metadata makes this replica a follower of `assignment.leader` (or of nobody, while
    /// the partition has no leader) in `assignment.leader_epoch`.
    ///
    /// # Errors
    /// A stale or conflicting assignment, or one that names this replica as leader.
    pub fn become_follower(
        &mut self,
        assignment: Assignment,
        now: Instant,
    ) -> Result<Vec<Effect<W>>, ControlError> {
        self.transition(|s| s.become_follower_inner(assignment, now))
    }

    /// A committed ISR change seen in the metadata. Older ones are ignored.
    ///
    /// # Errors
    /// A newer leader epoch (which needs `become_leader` / `become_follower`), or an ISR that
    /// does not fit the replicas or leaves the leader out.
    pub fn isr_committed(
        &mut self,
        committed: CommittedIsr,
        now: Instant,
    ) -> Result<Vec<Effect<W>>, ControlError> {
        self.transition(|s| {
            let mut effects = Vec::new();
            s.apply_committed(committed, now, &mut effects)?;
            Ok(effects)
        })
    }

    /// The controller answered an ISR proposal: whatever it committed is applied, and the
    /// proposal it answers is no longer pending.
    ///
    /// # Errors
    /// As `isr_committed`.
    pub fn isr_answered(
        &mut self,
        answer: IsrAnswer,
        now: Instant,
    ) -> Result<Vec<Effect<W>>, ControlError> {
        self.transition(|s| {
            let mut effects = Vec::new();
            let Role::Leader(_) = &s.role else {
                return Ok(effects);
            };
            if Some(answer.committed.leader_epoch) != s.leader_epoch() {
                return Ok(effects);
            }
            let moved = answer.committed.partition_epoch > s.partition_epoch();
            // What the answered proposal asked for, to tell a proposal the controller cut
            // down (a fenced newcomer left out, the partition epoch moved on regardless) from
            // one it applied.
            let asked = match &s.role {
                Role::Leader(leading) => leading
                    .pending
                    .as_ref()
                    .filter(|p| p.proposal.partition_epoch == answer.proposed_at)
                    .map(|p| p.proposal.isr.clone()),
                _ => None,
            };
            let cut_down = asked.is_some_and(|isr| isr != answer.committed.isr);
            s.apply_committed(answer.committed, now, &mut effects)?;
            let Role::Leader(leading) = &mut s.role else {
                unreachable!("checked above; applying an ISR does not change the role")
            };
            if leading
                .pending
                .as_ref()
                .is_some_and(|p| p.proposal.partition_epoch == answer.proposed_at)
            {
                leading.pending = None;
            }
            if (!moved && leading.pending.is_none()) || cut_down {
                // Refused, or committed without what it asked (a fenced node left out): the
                // controller knows better (say, of a newer change we have not seen). Wait
                // before proposing again rather than ping-pong, each round a metadata commit.
                leading.propose_after = Some(now + ISR_PROPOSAL_RETRY_INTERVAL);
            }
            s.maybe_propose(now, &mut effects);
            Ok(effects)
        })
    }

    /// The leader appended a batch ending at `last_offset` (or found it a duplicate of one that
    /// did). `acks=0` and `acks=1` are acknowledged at once; `acks=all` once the batch is below
    /// the high watermark. Call `admit_append` first.
    pub fn appended(
        &mut self,
        log: LocalLog,
        last_offset: Offset,
        acks: Acks,
        waiter: W,
        now: Instant,
    ) -> Vec<Effect<W>> {
        self.transition(|s| {
            let mut effects = Vec::new();
            s.apply_local_log(log);
            assert!(
                last_offset < s.log.log_end_offset,
                "an appended batch ends before the log end"
            );
            let Role::Leader(leading) = &mut s.role else {
                panic!("appended on a replica that is not the leader: admit_append first");
            };
            match acks {
                Acks::None | Acks::Leader => effects.push(Effect::Acknowledge {
                    waiters: vec![waiter],
                }),
                Acks::All => {
                    // A duplicate of a batch still waiting completes no earlier than the
                    // queue's tail, which keeps the queue in offset order.
                    let next = last_offset.plus(1);
                    let next = leading.waiters.tail().map_or(next, |tail| tail.max(next));
                    if next <= s.high_watermark {
                        // A retry of a batch already below the high watermark (so is every
                        // waiting answer before it): answered at once.
                        effects.push(Effect::Acknowledge {
                            waiters: vec![waiter],
                        });
                    } else if let Err(waiter) = leading.waiters.push(next, waiter) {
                        effects.push(Effect::Fail {
                            waiters: vec![waiter],
                            error: ReplicaError::Overloaded {
                                waiters_max: ACK_WAITERS_MAX,
                            },
                        });
                    }
                }
            }
            s.advance_leader_high_watermark(&mut effects);
            s.maybe_propose(now, &mut effects);
            effects
        })
    }

    /// The local log moved without an append: a flush completed (the leader's high watermark
    /// may advance), or the log start moved.
    pub fn local_log_changed(&mut self, log: LocalLog, now: Instant) -> Vec<Effect<W>> {
        self.transition(|s| {
            let mut effects = Vec::new();
            s.apply_local_log(log);
            if matches!(s.role, Role::Leader(_)) {
                s.advance_leader_high_watermark(&mut effects);
                s.maybe_propose(now, &mut effects);
            }
            effects
        })
    }

    /// A follower fetched: record its log end and flushed offset, move the high watermark,
    /// and propose an ISR change if it caught up.
    ///
    /// # Errors
    /// `NotLeader`, a fenced or unknown leader epoch, a node that is no follower replica,
    /// offsets past the leader's log end or a flushed offset past the follower's log end.
    pub fn follower_fetched(
        &mut self,
        report: FollowerReport,
        now: Instant,
    ) -> Result<FetchAccepted<W>, ReplicaError> {
        self.transition(|s| {
            let Role::Leader(_) = &s.role else {
                return Err(s.not_leader());
            };
            s.check_request_epoch(report.leader_epoch)?;
            if report.flushed_offset > report.log_end_offset {
                return Err(ReplicaError::FlushedPastLogEnd {
                    log_end_offset: report.log_end_offset,
                    flushed_offset: report.flushed_offset,
                });
            }
            // Within one leader epoch a follower fetches only from this log, after cutting
            // what it does not have, so it never has more.
            if report.log_end_offset > s.log.log_end_offset {
                return Err(ReplicaError::FetchOffsetPastLogEnd {
                    offset: report.log_end_offset,
                    log_end_offset: s.log.log_end_offset,
                });
            }
            let log_end = s.log.log_end_offset;
            let Role::Leader(leading) = &mut s.role else {
                unreachable!("checked above")
            };
            let Some(progress) = leading.followers.get_mut(&report.follower) else {
                return Err(ReplicaError::NotAReplica {
                    node: report.follower,
                });
            };
            // The latest report wins, but for a flushed offset an older report lowers: one
            // follower's reports can be taken out of order (the leader serves a connection's
            // requests concurrently, and a fetch parked in a long poll reports again when it
            // wakes), so a flush report can be taken before the fetch sent ahead of it. Within
            // one leader epoch a follower's fsynced offsets stay: it cuts nothing it copied
            // in this epoch, and a crash loses only what was not fsynced. So a report whose
            // log end still covers the flushed offset known is an older one, and the flushed
            // offset known stays; one whose log end is below it comes from a log that lost
            // it (emptied by an operator) and is taken as it is. A lower log end is taken
            // as it is, which at worst holds the high watermark (it never moves back) or an
            // expansion for a moment.
            let flushed = match progress.flushed_offset {
                Some(known) if report.log_end_offset >= known => known.max(report.flushed_offset),
                _ => report.flushed_offset,
            };
            progress.log_end_offset = Some(report.log_end_offset);
            progress.flushed_offset = Some(flushed);
            if report.log_end_offset >= log_end {
                progress.last_caught_up = now;
            } else if let Some((at, end_then)) = progress.last_fetch
                && report.log_end_offset >= end_then
            {
                progress.last_caught_up = progress.last_caught_up.max(at);
            }
            progress.last_fetch = Some((now, log_end));
            let mut effects = Vec::new();
            s.advance_leader_high_watermark(&mut effects);
            s.maybe_propose(now, &mut effects);
            Ok(FetchAccepted {
                high_watermark: s.high_watermark,
                effects,
            })
        })
    }

    /// The leader answered the follower's OffsetForLeaderEpoch question. A late answer (to an
    /// older question, or in another epoch) is ignored. `local_epochs` is the local log's
    /// epoch cache.
    ///
    /// # Errors
    /// `EpochEndNewerThanAsked`: the leader answered about an epoch newer than the question's.
    pub fn epoch_end_answered(
        &mut self,
        answer: EpochEndAnswer,
        local_epochs: &LeaderEpochCache,
        now: Instant,
    ) -> Result<Vec<Effect<W>>, ControlError> {
        self.transition(|s| {
            let mut effects = Vec::new();
            let Role::Follower(FollowerPhase::AskingEpochEnd { epoch, .. }) = s.role else {
                return Ok(effects);
            };
            if Some(answer.leader_epoch) != s.leader_epoch() || answer.requested != epoch {
                return Ok(effects);
            }
            let log_start = s.log.log_start_offset;
            let log_end = s.log.log_end_offset;
            let (offset, then) = match answer.end {
                // The leader knows no epoch this old: retention removed its older epochs (or,
                // after an unclean election, it never had them). What lies below the high
                // watermark was committed, so the leader's history holds it; past it nothing
                // is known to match. (Cutting to the log start cut committed offsets, which a
                // follower of a leader whose retention had passed its epochs met at once.)
                // After an unclean election the high watermark vouches for nothing.
                None if s.config.unclean_leader_election => (log_start, AfterTruncation::Fetch),
                None => (s.high_watermark, AfterTruncation::Fetch),
                Some((answered, _)) if answered > epoch => {
                    return Err(ControlError::EpochEndNewerThanAsked {
                        requested: epoch,
                        answered,
                    });
                }
                Some((answered, end)) if answered == epoch => {
                    (end.min(log_end), AfterTruncation::Fetch)
                }
                Some((answered, end)) => {
                    // The leader never saw `epoch`: what this log holds of it and of any
                    // epoch after `answered` is not the leader's. Cut there (or where the
                    // leader's `answered` ends, if sooner), then ask about what is left.
                    let local_end = local_epochs
                        .end_offset_for(answered, log_end)
                        .map_or(log_start, |(_, local_end)| local_end);
                    (end.min(local_end), AfterTruncation::AskAgain)
                }
            };
            let offset = offset.max(log_start);
            // Asking again, a cut at the log end still matters: the log's epochs after
            // `answered` start there with no batch (a leader moved away before it wrote in
            // its epoch), and only a truncation drops them; without it the next question is
            // the same one, forever.
            if offset < log_end || then == AfterTruncation::AskAgain {
                s.role = Role::Follower(FollowerPhase::Truncating { offset, then });
                effects.push(Effect::Truncate { offset });
            } else {
                s.after_truncation(then, now, &mut effects);
            }
            Ok(effects)
        })
    }

    /// The actor cut the log as a `Truncate` effect asked.
    pub fn log_truncated(&mut self, log: LocalLog, now: Instant) -> Vec<Effect<W>> {
        self.transition(|s| {
            let Role::Follower(FollowerPhase::Truncating { offset, then }) = s.role else {
                panic!("log_truncated without a Truncate effect to answer");
            };
            assert_log_offsets(&log);
            assert!(
                log.log_end_offset <= offset,
                "the truncation left the log past the offset it was cut at"
            );
            assert!(
                log.log_start_offset == s.log.log_start_offset,
                "a truncation of the log's end moved its start"
            );
            if log.log_end_offset < s.high_watermark {
                // Offsets below the high watermark were on every ISR member, so a leader
                // elected from the ISR has them: cutting them is a bug, unless the leader
                // came from outside the ISR.
                assert!(
                    s.config.unclean_leader_election,
                    "a follower truncation would cut below the high watermark without unclean election"
                );
                s.high_watermark = log.log_end_offset;
                s.unclean_cut = true;
            }
            s.log = log;
            let mut effects = Vec::new();
            s.after_truncation(then, now, &mut effects);
            effects
        })
    }

    /// The follower appended batches fetched from the leader in `leader_epoch`, whose answer
    /// carried `leader_high_watermark`: the follower's high watermark becomes min(that, its
    /// log end), never lower than before.
    pub fn fetch_applied(
        &mut self,
        leader_epoch: LeaderEpoch,
        leader_high_watermark: Offset,
        log: LocalLog,
        _now: Instant,
    ) -> Vec<Effect<W>> {
        self.transition(|s| {
            let mut effects = Vec::new();
            s.apply_local_log(log);
            if s.fetching_from().map(|(_, epoch)| epoch) != Some(leader_epoch) {
                return effects;
            }
            let candidate = leader_high_watermark.min(s.log.log_end_offset);
            if candidate > s.high_watermark {
                s.high_watermark = candidate;
                effects.push(Effect::PublishHighWatermark {
                    high_watermark: candidate,
                });
            }
            effects
        })
    }

    /// The leader refused a fetch as out of range. Below its log start: start the log afresh
    /// there (`TruncateFullyAndStartAt`). Past its log end: ask the epoch-end question again
    /// and truncate. An answer to a fetch of another epoch, or from an offset that is no
    /// longer the log end, is ignored.
    ///
    /// # Errors
    /// `FetchOffsetInLeaderRange`: the answer's bounds hold the fetch offset (the leader
    /// contradicts itself); `LeaderLogEndsBeforeLogWithoutEpochs`: the log is past the
    /// leader's end but holds no batch to ask about. Either way the replica keeps fetching,
    /// paced by the fetcher's back-off, until a new leader epoch.
    pub fn fetch_out_of_range(
        &mut self,
        answer: FetchOutOfRange,
        now: Instant,
    ) -> Result<Vec<Effect<W>>, ControlError> {
        self.transition(|s| {
            let mut effects = Vec::new();
            if s.fetching_from().map(|(_, epoch)| epoch) != Some(answer.leader_epoch)
                || answer.fetch_offset != s.log.log_end_offset
            {
                return Ok(effects);
            }
            if answer.fetch_offset < answer.leader_log_start_offset {
                let offset = answer.leader_log_start_offset;
                s.role = Role::Follower(FollowerPhase::StartingAfresh { offset });
                effects.push(Effect::TruncateFullyAndStartAt { offset });
                return Ok(effects);
            }
            if answer.fetch_offset <= answer.leader_log_end_offset {
                return Err(ControlError::FetchOffsetInLeaderRange {
                    fetch_offset: answer.fetch_offset,
                    leader_log_start_offset: answer.leader_log_start_offset,
                    leader_log_end_offset: answer.leader_log_end_offset,
                });
            }
            if s.log.latest_epoch.is_none() {
                return Err(ControlError::LeaderLogEndsBeforeLogWithoutEpochs {
                    log_end_offset: s.log.log_end_offset,
                    leader_log_end_offset: answer.leader_log_end_offset,
                });
            }
            // No fetching until the question is answered and what the leader lacks is cut;
            // the answer's truncation starts it again.
            effects.push(Effect::StopFetching);
            s.ask_epoch_end_or_fetch(now, &mut effects);
            Ok(effects)
        })
    }

    /// The actor emptied the log and started it at the offset a `TruncateFullyAndStartAt`
    /// effect named: the high watermark moves up to it (the leader deletes only committed
    /// offsets), and fetching starts there.
    pub fn log_started_afresh(&mut self, log: LocalLog, now: Instant) -> Vec<Effect<W>> {
        self.transition(|s| {
            let Role::Follower(FollowerPhase::StartingAfresh { offset }) = s.role else {
                panic!("log_started_afresh without a TruncateFullyAndStartAt effect to answer");
            };
            assert_log_offsets(&log);
            assert!(
                log.log_start_offset == offset && log.log_end_offset == offset,
                "the log starts afresh at the offset asked"
            );
            assert!(
                offset >= s.log.log_end_offset,
                "a fresh start lies past everything the log held"
            );
            assert!(
                log.latest_epoch.is_none(),
                "a log started afresh holds no epoch"
            );
            s.log = log;
            let mut effects = Vec::new();
            if offset > s.high_watermark {
                s.high_watermark = offset;
                effects.push(Effect::PublishHighWatermark {
                    high_watermark: offset,
                });
            }
            s.after_truncation(AfterTruncation::Fetch, now, &mut effects);
            effects
        })
    }

    /// Time passed: a leader shrinks the ISR of lagging followers and repeats an unanswered
    /// proposal; a follower repeats an unanswered OffsetForLeaderEpoch question.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect<W>> {
        self.transition(|s| {
            let mut effects = Vec::new();
            match &mut s.role {
                Role::Leader(_) => s.maybe_propose(now, &mut effects),
                Role::Follower(FollowerPhase::AskingEpochEnd { epoch, asked_at }) => {
                    if now.saturating_duration_since(*asked_at) >= EPOCH_END_RETRY_INTERVAL {
                        *asked_at = now;
                        let epoch = *epoch;
                        let a = s.assignment.as_ref().expect("a follower has an assignment");
                        effects.push(Effect::AskEpochEnd {
                            leader: a.leader.expect("a follower asking has a leader"),
                            leader_epoch: a.leader_epoch,
                            epoch,
                        });
                    }
                }
                Role::Follower(_) | Role::Unassigned => {}
            }
            effects
        })
    }

    // ---- Internals -----------------------------------------------------------------------

    fn become_leader_inner(
        &mut self,
        assignment: Assignment,
        now: Instant,
    ) -> Result<Vec<Effect<W>>, ControlError> {
        if assignment.leader != Some(self.node) {
            return Err(ControlError::WrongLeader {
                leader: assignment.leader,
            });
        }
        self.check_assignment(&assignment)?;
        let mut effects = Vec::new();
        if let Some(current) = &self.assignment
            && current.leader_epoch == assignment.leader_epoch
        {
            if !matches!(self.role, Role::Leader(_)) {
                return Err(ControlError::ConflictingLeader {
                    leader_epoch: current.leader_epoch,
                    current: current.leader,
                    received: assignment.leader,
                });
            }
            // A repeat; a newer partition epoch in it is an ISR change.
            self.apply_committed(
                CommittedIsr {
                    leader_epoch: assignment.leader_epoch,
                    partition_epoch: assignment.partition_epoch,
                    isr: assignment.isr,
                },
                now,
                &mut effects,
            )?;
            return Ok(effects);
        }
        if !assignment.isr.contains(&self.node) {
            return Err(ControlError::LeaderNotInIsr { leader: self.node });
        }
        // Batches of an epoch at or past this one in the log were written by some other
        // incarnation of that epoch's leader: leading it again would write different batches
        // under the same (offset, epoch), which followers' truncation cannot tell apart.
        // A partition without followers is the exception: nobody else can hold batches of
        // the epoch, so its own restart (a node, or the partition's supervisor restarting it)
        // may lead the epoch again.
        let alone = assignment.replicas.as_slice() == [self.node];
        if let Some(latest) = self.log.latest_epoch
            && (latest > assignment.leader_epoch || (latest == assignment.leader_epoch && !alone))
        {
            return Err(ControlError::EpochNotNewerThanLog {
                leader_epoch: assignment.leader_epoch,
                latest,
            });
        }
        let waiters = match std::mem::replace(&mut self.role, Role::Unassigned) {
            // Still the leader in a newer epoch: the waiting appends are in the log and may
            // still be replicated in this one.
            Role::Leader(leading) => leading.waiters,
            Role::Follower(phase) => {
                if phase != FollowerPhase::Idle {
                    effects.push(Effect::StopFetching);
                }
                AckQueue::new(ACK_WAITERS_MAX)
            }
            Role::Unassigned => AckQueue::new(ACK_WAITERS_MAX),
        };
        let epoch_start_offset = self.log.log_end_offset;
        // Every follower gets a full lag window from now: none has had a chance to fetch in
        // this epoch yet.
        let followers = assignment
            .replicas
            .iter()
            .filter(|r| **r != self.node)
            .map(|r| {
                (
                    *r,
                    FollowerProgress {
                        log_end_offset: None,
                        flushed_offset: None,
                        last_caught_up: now,
                        last_fetch: None,
                    },
                )
            })
            .collect();
        effects.push(Effect::RecordEpochStart {
            leader_epoch: assignment.leader_epoch,
            start_offset: epoch_start_offset,
        });
        self.assignment = Some(assignment);
        self.role = Role::Leader(Leading {
            epoch_start_offset,
            followers,
            pending: None,
            proposed: BTreeSet::new(),
            propose_after: None,
            waiters,
        });
        self.fail_waiters_below_min(&mut effects);
        self.advance_leader_high_watermark(&mut effects);
        Ok(effects)
    }

    fn become_follower_inner(
        &mut self,
        assignment: Assignment,
        now: Instant,
    ) -> Result<Vec<Effect<W>>, ControlError> {
        if assignment.leader == Some(self.node) {
            return Err(ControlError::WrongLeader {
                leader: assignment.leader,
            });
        }
        self.check_assignment(&assignment)?;
        let mut effects = Vec::new();
        if let Some(current) = &self.assignment
            && current.leader_epoch == assignment.leader_epoch
        {
            if !matches!(self.role, Role::Follower(_)) || current.leader != assignment.leader {
                return Err(ControlError::ConflictingLeader {
                    leader_epoch: current.leader_epoch,
                    current: current.leader,
                    received: assignment.leader,
                });
            }
            self.apply_committed(
                CommittedIsr {
                    leader_epoch: assignment.leader_epoch,
                    partition_epoch: assignment.partition_epoch,
                    isr: assignment.isr,
                },
                now,
                &mut effects,
            )?;
            return Ok(effects);
        }
        match std::mem::replace(&mut self.role, Role::Unassigned) {
            Role::Leader(mut leading) => {
                let waiters: Vec<W> = leading.waiters.fail_all().collect();
                if !waiters.is_empty() {
                    effects.push(Effect::Fail {
                        waiters,
                        error: ReplicaError::NotLeader {
                            leader: assignment.leader,
                        },
                    });
                }
            }
            Role::Follower(phase) => {
                if phase != FollowerPhase::Idle {
                    effects.push(Effect::StopFetching);
                }
            }
            Role::Unassigned => {}
        }
        let leader = assignment.leader;
        self.assignment = Some(assignment);
        self.role = Role::Follower(FollowerPhase::Idle);
        if leader.is_some() {
            self.ask_epoch_end_or_fetch(now, &mut effects);
        }
        Ok(effects)
    }

    /// Checks what every assignment must satisfy.
    fn check_assignment(&self, assignment: &Assignment) -> Result<(), ControlError> {
        if let Some(current) = &self.assignment
            && assignment.leader_epoch < current.leader_epoch
        {
            return Err(ControlError::StaleLeaderEpoch {
                current: current.leader_epoch,
                received: assignment.leader_epoch,
            });
        }
        if !assignment.replicas.contains(&self.node) {
            return Err(ControlError::NotAReplica { node: self.node });
        }
        if let Some(node) = assignment
            .isr
            .iter()
            .find(|n| !assignment.replicas.contains(n))
        {
            return Err(ControlError::IsrNotInReplicas { node: *node });
        }
        Ok(())
    }

    /// Applies a committed ISR of the current leader epoch if it is newer than ours.
    fn apply_committed(
        &mut self,
        committed: CommittedIsr,
        now: Instant,
        effects: &mut Vec<Effect<W>>,
    ) -> Result<(), ControlError> {
        let Some(current) = &self.assignment else {
            return Ok(());
        };
        if committed.leader_epoch < current.leader_epoch
            || (committed.leader_epoch == current.leader_epoch
                && committed.partition_epoch <= current.partition_epoch)
        {
            return Ok(());
        }
        if committed.leader_epoch > current.leader_epoch {
            return Err(ControlError::UnknownLeaderEpoch {
                current: current.leader_epoch,
                received: committed.leader_epoch,
            });
        }
        if let Some(node) = committed.isr.iter().find(|n| !current.replicas.contains(n)) {
            return Err(ControlError::IsrNotInReplicas { node: *node });
        }
        if matches!(self.role, Role::Leader(_)) && !committed.isr.contains(&self.node) {
            return Err(ControlError::LeaderNotInIsr { leader: self.node });
        }
        let assignment = self.assignment.as_mut().expect("checked above");
        let added: Vec<NodeId> = committed.isr.difference(&assignment.isr).copied().collect();
        let removed: Vec<NodeId> = assignment.isr.difference(&committed.isr).copied().collect();
        assignment.isr = committed.isr;
        assignment.partition_epoch = committed.partition_epoch;
        if let Role::Leader(leading) = &mut self.role {
            // A proposal based on an older partition epoch can no longer be committed.
            if leading
                .pending
                .as_ref()
                .is_some_and(|p| p.proposal.partition_epoch < committed.partition_epoch)
            {
                leading.pending = None;
            }
            leading.proposed.clear();
            // A follower that just left (the controller fenced its node, say) rejoins only on
            // a fetch made after it left. Its last report may still reach the high watermark
            // (which it held back until now), and proposing it back on that report pins the
            // high watermark to it: a proposal's members count until the partition epoch
            // moves, which for a dead node's refused proposal is never.
            for node in removed {
                if let Some(progress) = leading.followers.get_mut(&node) {
                    progress.log_end_offset = None;
                    progress.flushed_offset = None;
                }
            }
            // A follower that just joined gets a full lag window: it reached the high
            // watermark, not necessarily the log end.
            for node in added {
                if let Some(progress) = leading.followers.get_mut(&node) {
                    progress.last_caught_up = progress.last_caught_up.max(now);
                }
            }
            self.fail_waiters_below_min(effects);
            self.advance_leader_high_watermark(effects);
        }
        Ok(())
    }

    /// The waiting `acks=all` answers can no longer complete once the ISR is below the
    /// minimum (the high watermark stops): they fail with `NotEnoughReplicasAfterAppend`.
    fn fail_waiters_below_min(&mut self, effects: &mut Vec<Effect<W>>) {
        let isr_count = self.isr_count();
        let min = self.min_insync_replicas();
        if isr_count >= min {
            return;
        }
        let Role::Leader(leading) = &mut self.role else {
            return;
        };
        let waiters: Vec<W> = leading.waiters.fail_all().collect();
        if !waiters.is_empty() {
            effects.push(Effect::Fail {
                waiters,
                error: ReplicaError::NotEnoughReplicasAfterAppend { isr_count, min },
            });
        }
    }

    /// A replica's measure for the high watermark and for expansion.
    fn measure(&self, log_end: Offset, flushed: Offset) -> Offset {
        if self.config.durability == Durability::Fsync {
            flushed
        } else {
            log_end
        }
    }

    /// The leader's high watermark as the rules give it now, or `None` if it may not advance
    /// (the ISR below the minimum, or an ISR member that has not fetched in this epoch).
    fn leader_high_watermark_candidate(&self) -> Option<Offset> {
        let Role::Leader(leading) = &self.role else {
            return None;
        };
        if self.isr_count() < self.min_insync_replicas() {
            return None;
        }
        let assignment = self.assignment.as_ref()?;
        let members = assignment.isr.iter().chain(&leading.proposed);
        let mut candidate = self.measure(self.log.log_end_offset, self.log.flushed_offset);
        for member in members.filter(|m| **m != self.node) {
            let progress = leading.followers.get(member)?;
            let measure = self.measure(progress.log_end_offset?, progress.flushed_offset?);
            candidate = candidate.min(measure);
        }
        Some(candidate.min(self.log.log_end_offset))
    }

    /// Moves the leader's high watermark forward where the rules allow, and answers the
    /// `acks=all` waiters it passes.
    fn advance_leader_high_watermark(&mut self, effects: &mut Vec<Effect<W>>) {
        let Some(candidate) = self.leader_high_watermark_candidate() else {
            return;
        };
        if candidate <= self.high_watermark {
            return;
        }
        self.high_watermark = candidate;
        // Published before the producers hear back, so whoever learns of an acknowledged
        // write also sees it below the high watermark.
        effects.push(Effect::PublishHighWatermark {
            high_watermark: candidate,
        });
        let Role::Leader(leading) = &mut self.role else {
            return;
        };
        let done: Vec<W> = leading.waiters.complete(candidate).collect();
        if !done.is_empty() {
            effects.push(Effect::Acknowledge { waiters: done });
        }
    }

    /// Whether a follower belongs in the ISR by the rules: one in it stays until it has not
    /// been caught up for the lag time; one outside joins once its measure reaches the high
    /// watermark and the epoch start.
    fn in_sync(
        &self,
        leading: &Leading<W>,
        progress: &FollowerProgress,
        in_isr: bool,
        now: Instant,
    ) -> bool {
        if in_isr {
            now.saturating_duration_since(progress.last_caught_up)
                <= self.config.replica_lag_time_max
        } else if let (Some(log_end), Some(flushed)) =
            (progress.log_end_offset, progress.flushed_offset)
        {
            // Caught up recently too: the progress a follower reported before it died stays
            // here, and on an idle partition it still reaches the high watermark; without
            // this the leader would propose the dead follower back into the ISR right after
            // removing it (and the ISR would flap, failing acks=all answers each time).
            //
            // And it fetches now: a follower that died after catching up stops fetching, and
            // within `ISR_EXPANSION_FETCH_RECENT` is not proposed again (the controller leaves
            // fenced nodes out of what it commits, but every such round is a commit).
            now.saturating_duration_since(progress.last_caught_up)
                <= self.config.replica_lag_time_max
                && progress.last_fetch.is_some_and(|(at, _)| {
                    now.saturating_duration_since(at) <= ISR_EXPANSION_FETCH_RECENT
                })
                && self.measure(log_end, flushed)
                    >= self.high_watermark.max(leading.epoch_start_offset)
        } else {
            false
        }
    }

    /// The ISR the rules want now, if it differs from the committed one: the committed one
    /// without followers that lag, with followers that caught up. (Called on every fetch, so
    /// it allocates only when there is a change to propose.)
    fn desired_isr(&self, now: Instant) -> Option<BTreeSet<NodeId>> {
        let Role::Leader(leading) = &self.role else {
            return None;
        };
        let isr = &self.assignment.as_ref()?.isr;
        let changes = |(node, progress): &(&NodeId, &FollowerProgress)| {
            let in_isr = isr.contains(*node);
            in_isr != self.in_sync(leading, progress, in_isr, now)
        };
        if !leading.followers.iter().any(|f| changes(&f)) {
            return None;
        }
        let mut desired = isr.clone();
        for (node, _) in leading.followers.iter().filter(changes) {
            if !desired.remove(node) {
                desired.insert(*node);
            }
        }
        Some(desired)
    }

    /// Proposes an ISR change if the rules want one and none is pending; repeats a pending
    /// one that went unanswered.
    fn maybe_propose(&mut self, now: Instant, effects: &mut Vec<Effect<W>>) {
        let Role::Leader(leading) = &mut self.role else {
            return;
        };
        if let Some(pending) = &mut leading.pending {
            if now.saturating_duration_since(pending.sent_at) >= ISR_PROPOSAL_RETRY_INTERVAL {
                pending.sent_at = now;
                effects.push(Effect::ProposeIsr(pending.proposal.clone()));
            }
            return;
        }
        if leading.propose_after.is_some_and(|after| now < after) {
            return;
        }
        let Some(desired) = self.desired_isr(now) else {
            return;
        };
        let a = self
            .assignment
            .as_ref()
            .expect("a leader has an assignment");
        let proposal = IsrProposal {
            leader: self.node,
            leader_epoch: a.leader_epoch,
            partition_epoch: a.partition_epoch,
            isr: desired,
        };
        let Role::Leader(leading) = &mut self.role else {
            unreachable!("checked above")
        };
        leading.propose_after = None;
        leading.proposed.extend(proposal.isr.iter().copied());
        leading.pending = Some(PendingIsr {
            proposal: proposal.clone(),
            sent_at: now,
        });
        effects.push(Effect::ProposeIsr(proposal));
    }

    /// A follower with a leader starts by asking about its latest epoch, or fetches at once if
    /// its log holds no batch.
    fn ask_epoch_end_or_fetch(&mut self, now: Instant, effects: &mut Vec<Effect<W>>) {
        let a = self
            .assignment
            .as_ref()
            .expect("a follower has an assignment");
        let leader = a.leader.expect("only a follower with a leader asks");
        let leader_epoch = a.leader_epoch;
        match self.log.latest_epoch {
            Some(epoch) => {
                self.role = Role::Follower(FollowerPhase::AskingEpochEnd {
                    epoch,
                    asked_at: now,
                });
                effects.push(Effect::AskEpochEnd {
                    leader,
                    leader_epoch,
                    epoch,
                });
            }
            None => {
                self.role = Role::Follower(FollowerPhase::Fetching);
                effects.push(Effect::StartFetching {
                    leader,
                    leader_epoch,
                });
            }
        }
    }

    fn after_truncation(
        &mut self,
        then: AfterTruncation,
        now: Instant,
        effects: &mut Vec<Effect<W>>,
    ) {
        match then {
            AfterTruncation::AskAgain => self.ask_epoch_end_or_fetch(now, effects),
            AfterTruncation::Fetch => {
                let a = self
                    .assignment
                    .as_ref()
                    .expect("a follower has an assignment");
                let leader = a.leader.expect("a follower truncating has a leader");
                let leader_epoch = a.leader_epoch;
                self.role = Role::Follower(FollowerPhase::Fetching);
                effects.push(Effect::StartFetching {
                    leader,
                    leader_epoch,
                });
            }
        }
    }

    /// Takes the local log's new offsets; outside a truncation they only move forward.
    fn apply_local_log(&mut self, log: LocalLog) {
        assert_log_offsets(&log);
        assert!(
            log.log_end_offset >= self.log.log_end_offset,
            "the log end moved back outside a truncation"
        );
        assert!(
            log.flushed_offset >= self.log.flushed_offset,
            "the flushed offset moved back outside a truncation"
        );
        assert!(
            log.log_start_offset >= self.log.log_start_offset,
            "the log start moved back"
        );
        assert!(
            log.log_start_offset <= self.high_watermark.max(self.log.log_start_offset),
            "the log start moved past the high watermark"
        );
        self.log = log;
    }

    fn check_request_epoch(&self, received: LeaderEpoch) -> Result<(), ReplicaError> {
        let current = self.leader_epoch().expect("a leader has an assignment");
        if received < current {
            return Err(ReplicaError::FencedLeaderEpoch { current, received });
        }
        if received > current {
            return Err(ReplicaError::UnknownLeaderEpoch { current, received });
        }
        Ok(())
    }

    fn not_leader(&self) -> ReplicaError {
        ReplicaError::NotLeader {
            leader: self.assignment.as_ref().and_then(|a| a.leader),
        }
    }

    fn isr_count(&self) -> usize {
        self.assignment.as_ref().map_or(0, |a| a.isr.len())
    }

    fn partition_epoch(&self) -> PartitionEpoch {
        self.assignment
            .as_ref()
            .map_or(PartitionEpoch::default(), |a| a.partition_epoch)
    }

    /// Runs a transition, then checks the invariants and that it moved neither the leader
    /// epoch nor (within an epoch) the high watermark back. The fields are private and only
    /// transitions change them, so the state a transition starts from is the one the previous
    /// transition (or `open`) checked.
    fn transition<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let epoch_before = self.leader_epoch();
        let high_watermark_before = self.high_watermark;
        let result = f(self);
        self.check_invariants();
        let epoch_after = self.leader_epoch();
        assert!(epoch_after >= epoch_before, "the leader epoch went back");
        if epoch_after == epoch_before && !self.unclean_cut {
            assert!(
                self.high_watermark >= high_watermark_before,
                "the high watermark went back within a leader epoch"
            );
        }
        self.unclean_cut = false;
        result
    }

    fn check_invariants(&self) {
        assert_log_offsets(&self.log);
        assert!(
            self.high_watermark >= self.log.log_start_offset,
            "the high watermark is below the log start"
        );
        assert!(
            self.high_watermark <= self.log.log_end_offset,
            "the high watermark is past the log end"
        );
        let Some(assignment) = &self.assignment else {
            assert!(
                matches!(self.role, Role::Unassigned),
                "a replica with a role has an assignment"
            );
            return;
        };
        assert!(
            assignment
                .isr
                .iter()
                .all(|n| assignment.replicas.contains(n)),
            "the ISR is within the replicas"
        );
        match &self.role {
            Role::Unassigned => panic!("an assigned replica has a role"),
            Role::Follower(phase) => {
                assert!(
                    assignment.leader != Some(self.node),
                    "a follower is not the assignment's leader"
                );
                assert!(
                    (*phase == FollowerPhase::Idle) == assignment.leader.is_none(),
                    "a follower is idle exactly when there is no leader"
                );
            }
            Role::Leader(leading) => {
                assert!(
                    assignment.leader == Some(self.node),
                    "a leader is the assignment's leader"
                );
                assert!(
                    assignment.isr.contains(&self.node),
                    "a leader is in its committed ISR"
                );
                assert!(
                    leading.epoch_start_offset <= self.log.log_end_offset,
                    "the epoch start is within the log"
                );
                if let Some(pending) = &leading.pending {
                    assert!(
                        pending.proposal.partition_epoch == assignment.partition_epoch,
                        "a pending proposal is based on the current partition epoch"
                    );
                    assert!(
                        pending.proposal.leader_epoch == assignment.leader_epoch,
                        "a pending proposal is of the current leader epoch"
                    );
                    assert!(
                        pending.proposal.isr.is_subset(&leading.proposed),
                        "the high watermark counts the pending proposal's members"
                    );
                }
                if !leading.waiters.is_empty() {
                    assert!(
                        assignment.isr.len() >= self.min_insync_replicas(),
                        "acks=all answers wait only while the ISR is at its minimum or above"
                    );
                }
                if let Some(tail) = leading.waiters.tail() {
                    assert!(
                        tail > self.high_watermark,
                        "answers below the high watermark have been acknowledged"
                    );
                }
                assert!(
                    leading.waiters.len() <= ACK_WAITERS_MAX,
                    "the acks=all answers are bounded"
                );
            }
        }
    }
}

fn assert_log_offsets(log: &LocalLog) {
    assert!(
        log.log_start_offset <= log.log_end_offset,
        "the log start is past the log end"
    );
    assert!(
        log.flushed_offset >= log.log_start_offset,
        "the flushed offset is below the log start"
    );
    assert!(
        log.flushed_offset <= log.log_end_offset,
        "the flushed offset is past the log end"
    );
}
