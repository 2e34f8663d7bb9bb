//! The Partition actor: owns one partition's log exclusively, as its leader.
//!
//! The actor is the supervised, addressable part; the work is done by its log thread, a
//! dedicated OS thread the actor starts and stops, which owns the `Log` (segment files and
//! the idempotent producers' table, which the log keeps), the queue of `acks=all` answers waiting for durability and the high
//! watermark (published on a watch channel). Produce, fetch and list-offsets requests go from
//! `PartitionHandle` straight to the log thread's inbox and their answers straight back to the
//! caller: one hand-off each way, where a `spawn_blocking` per request took four (session,
//! actor, blocking-pool thread, actor, session). File I/O still never runs on a runtime
//! worker.
//!
//! - Receives from: client sessions and group coordinators through `PartitionHandle` (log
//!   thread), flush completions from the `Flusher` pool (log thread), its timers (actor, which
//!   forwards them), its log thread stopping on a failure (actor, which then fails so its
//!   supervisor restarts it).
//! - Sends to: nobody but reply oneshots; flush jobs go to the node's `Flusher` pool,
//!   compaction passes to tokio's blocking pool.
//! - Inbox bound: `PARTITION_MAILBOX_MAX` messages, checked by the handle (`Overloaded` past
//!   it); sessions bound their own in-flight requests, so the bound is rarely reached.
//! - Shutdown: the actor asks the log thread to stop, which fails waiting answers with
//!   `PartitionOffline`, stops fetching from the leader, then closes the log (flush, indexes,
//!   clean-shutdown marker). A partition of a deleted topic is discarded instead: its log is
//!   dropped unclosed, since its files are removed next.

pub mod data_dir;
pub mod producer_state;
pub mod replica_state;
pub mod replication;
pub mod supervisor;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::mpsc;

use tokio::sync::{oneshot, watch};
use vltava_messages::batch::BatchHeader;
use vltava_messages::{LeaderEpoch, NodeId, Offset, PartitionId, ProducerEpoch, ProducerId};
use vltava_storage::compaction::CompactionOutput;
use vltava_storage::config::CleanupPolicy;
use vltava_storage::{
    FlushJob, Flusher, Log, LogConfig, LogRead, RealStorage, StorageError, SubmitError,
};

use crate::directory::{
    ActorDirectory, ActorStats, FollowerGauges, PartitionGauges, PublishedState, ReplicaRole,
};
use crate::metadata::producer_ids::{Fencing, ProducerRegistry, UnknownProducer};
use crate::partition::producer_state::SequenceCheck;
use crate::partition::replica_state::{
    Assignment, Effect, EpochEndAnswer, FetchOutOfRange, FollowerReport, IsrAnswer, LocalLog,
    ReplicaConfig, ReplicaError, ReplicaState, RoleKind,
};
use crate::partition::replication::{FlushMark, FollowerLog, LogGeneration, ReplicaLinks};

/// Messages a partition's mailbox may hold before its handle answers `Overloaded`. Sessions
/// admit at most a few requests each, so this bounds many sessions hammering one partition.
pub const PARTITION_MAILBOX_MAX: u64 = 4096;

/// `acks=all` answers a partition keeps waiting for durability. Past it, produce requests are
/// refused with `Overloaded` (before anything is appended).
pub const ACK_WAITERS_MAX: usize = 4096;

/// How often a compacted partition checks whether a compaction pass is due (cheap when none
/// is: it compares byte counts).
pub const COMPACTION_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How often a partition checks retention and rolls an old active segment by default (Kafka's
/// `log.retention.check.interval.ms`); a node sets it with `--retention-check-interval-ms`.
pub const RETENTION_CHECK_INTERVAL_DEFAULT: Duration = Duration::from_secs(300);

/// How often a partition's replica state hears the time: it shrinks the ISR of followers that
/// lag past `replica.lag.time.max.ms` (10 s by default) and repeats unanswered ISR proposals
/// (after 1 s) and epoch-end questions (after 0.5 s); a quarter of the shortest of those
/// keeps each late by at most a quarter of its interval.
pub const REPLICA_TICK_INTERVAL: Duration = Duration::from_millis(125);

/// How often at most a partition republishes its ISR and followers' progress for the admin
/// endpoint (sooner when its role or leader epoch changes). The log thread handles many
/// thousands of messages a second; taking the gauges' lock after each would cost more than
/// the readers gain, and an operator reading lag needs it to a tenth of a second at best.
pub const REPLICATION_PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// Log threads running in this process, for the admin endpoint's `/resources` (a leak check:
/// it must fall back when partitions stop). Process-wide, as the threads are.
static LOG_THREADS_LIVE: AtomicU64 = AtomicU64::new(0);

/// The number of partition log threads running in this process.
#[must_use]
pub fn log_threads_live() -> u64 {
    LOG_THREADS_LIVE.load(Ordering::Relaxed)
}

/// Counts a log thread from its start to its end, however it ends.
struct LogThreadCount;

impl LogThreadCount {
    fn start() -> LogThreadCount {
        LOG_THREADS_LIVE.fetch_add(1, Ordering::Relaxed);
        LogThreadCount
    }
}

impl Drop for LogThreadCount {
    fn drop(&mut self) {
        LOG_THREADS_LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When an acknowledged write becomes visible and `acks=all` is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync with group commit before `acks=all` answers; the high watermark is the flushed
    /// offset. The default.
    Fsync,
    /// fsync every interval in the background; `acks=all` answers after the write.
    Interval(Duration),
    /// Left to the operating system; `acks=all` answers after the write.
    None,
}

use vltava_messages::protocol::ErrorCode;
pub use vltava_messages::protocol::{Acks, OffsetSpec};

/// Why a partition refused a request. The session maps each to a wire error code.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("partition is overloaded")]
    Overloaded,
    #[error("partition is offline")]
    Offline,
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
    #[error("out of order sequence: expected {expected}, received {received}")]
    OutOfOrderSequence { expected: u32, received: u32 },
    #[error("producer id {} at epoch {} is fenced: {fencing}", producer_id.0, received.0)]
    ProducerFenced {
        producer_id: ProducerId,
        received: ProducerEpoch,
        fencing: Fencing,
    },
    #[error("unknown producer id {}: {reason}", producer_id.0)]
    UnknownProducerId {
        producer_id: ProducerId,
        reason: UnknownProducer,
    },
    #[error(
        "offset {offset} is outside the log [{log_start_offset}, {log_end_offset}] (high watermark {high_watermark})"
    )]
    OffsetOutOfRange {
        offset: Offset,
        log_start_offset: Offset,
        high_watermark: Offset,
        log_end_offset: Offset,
    },
    /// Refused by the replica state: not the leader, too few in-sync replicas, an offset not
    /// yet available in a new leader's epoch...
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl PartitionError {
    /// The client protocol's code for this error: what a session answers, and what a group
    /// coordinator (or another node's, through PartitionOffsets) reports per partition.
    #[must_use]
    pub fn error_code(&self) -> ErrorCode {
        use vltava_storage::StorageError as S;
        match self {
            PartitionError::Overloaded => ErrorCode::Overloaded,
            PartitionError::Offline => ErrorCode::PartitionOffline,
            PartitionError::FencedLeaderEpoch { .. } => ErrorCode::FencedLeaderEpoch,
            PartitionError::UnknownLeaderEpoch { .. } => ErrorCode::UnknownLeaderEpoch,
            PartitionError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
            PartitionError::ProducerFenced { .. } => ErrorCode::ProducerFenced,
            PartitionError::UnknownProducerId { .. } => ErrorCode::UnknownProducerId,
            PartitionError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            PartitionError::Replica(replica) => ErrorCode::from(replica),
            PartitionError::Storage(storage) => match storage {
                S::InvalidBatch(_) => ErrorCode::CorruptBatch,
                S::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
                S::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
                S::Poisoned { .. } => ErrorCode::PartitionOffline,
                _ => ErrorCode::StorageError,
            },
        }
    }
}

/// What a produce achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProduceOk {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub log_append_time: Option<i64>,
    pub log_start_offset: Offset,
}

/// What a fetch returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchOk {
    pub records: Vec<u8>,
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
}

/// A partition's offsets, read together on its log thread, so they are one consistent view:
/// `log_start_offset <= high_watermark <= log_end_offset` (asserted when read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogOffsets {
    pub log_start_offset: Offset,
    pub high_watermark: Offset,
    pub log_end_offset: Offset,
}

/// A leader's answer to a follower's fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFetchOk {
    /// Whole batches from the follower's log end on, as stored.
    pub records: Vec<u8>,
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
    pub log_end_offset: Offset,
}

/// A listed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedOffset {
    pub offset: Option<Offset>,
    pub timestamp: Option<i64>,
    pub leader_epoch: LeaderEpoch,
}

type Reply<T> = oneshot::Sender<Result<T, PartitionError>>;

/// The actor's mailbox: timers and supervision only; requests go to the log thread.
pub enum PartitionMsg {
    /// Interval durability: time to flush.
    FlushTick,
    /// Time to check retention and roll an old segment.
    RetentionTick,
    /// A compacted log: time to see whether a compaction pass is due.
    CompactionTick,
    /// The log thread stopped on a failure (or an injected crash): the actor fails with it,
    /// so its supervisor restarts the partition.
    LogThreadStopped { error: String },
}

impl std::fmt::Debug for PartitionMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartitionMsg::FlushTick => f.write_str("FlushTick"),
            PartitionMsg::RetentionTick => f.write_str("RetentionTick"),
            PartitionMsg::CompactionTick => f.write_str("CompactionTick"),
            PartitionMsg::LogThreadStopped { error } => write!(f, "LogThreadStopped({error})"),
        }
    }
}

/// The log thread's inbox.
enum CoreMsg {
    Produce {
        /// One record batch: its own part of the request buffer it arrived in, so it is
        /// stamped in place and stored without a copy.
        batch: BytesMut,
        acks: Acks,
        leader_epoch: Option<LeaderEpoch>,
        reply: Reply<ProduceOk>,
    },
    Fetch {
        offset: Offset,
        bytes_max: u32,
        leader_epoch: Option<LeaderEpoch>,
        reply: Reply<FetchOk>,
    },
    ListOffsets {
        spec: OffsetSpec,
        leader_epoch: Option<LeaderEpoch>,
        reply: Reply<ListedOffset>,
    },
    Offsets {
        reply: Reply<LogOffsets>,
    },
    Flushed {
        job: FlushJob,
        result: Result<(), StorageError>,
    },
    /// The partition's leadership as the metadata now says (applied in place).
    Assign {
        assignment: Assignment,
    },
    /// Leader: a follower's fetch, answered with the bytes past its log end.
    ReplicaFetch {
        report: FollowerReport,
        bytes_max: u32,
        reply: Reply<ReplicaFetchOk>,
    },
    /// Leader: where `epoch` ends in this log (OffsetForLeaderEpoch).
    EpochEnd {
        leader_epoch: LeaderEpoch,
        epoch: LeaderEpoch,
        reply: Reply<Option<(LeaderEpoch, Offset)>>,
    },
    /// Follower: batches fetched from the leader in `leader_epoch`, to append unchanged;
    /// answered once they are appended (the flush runs behind, and its completion reaches the
    /// fetcher through `ReplicaLinks::flushed`).
    ApplyFetched {
        leader_epoch: LeaderEpoch,
        records: Vec<u8>,
        leader_high_watermark: Offset,
        reply: Reply<FollowerLog>,
    },
    /// Follower: the leader refused a fetch as out of range; answered once the replica acted
    /// on it (started its log afresh at the leader's log start, or asks where to truncate).
    FetchOutOfRange {
        answer: FetchOutOfRange,
        reply: Reply<()>,
    },
    /// Follower: the leader's answer to its epoch-end question.
    EpochEndAnswered {
        answer: EpochEndAnswer,
    },
    /// Leader: the controller's answer to an ISR proposal.
    IsrAnswered {
        answer: IsrAnswer,
    },
    ReplicaTick,
    FlushTick,
    RetentionTick,
    CompactionTick,
    /// A compaction pass ran off the thread; swap its output in.
    Compacted {
        output: CompactionOutput,
    },
    /// Fault injection: the thread stops as after a bug, so the actor's supervisor restarts it.
    Crash,
    /// Close the log and stop; `done` is answered once the log is closed.
    Shutdown {
        done: oneshot::Sender<()>,
    },
    /// The partition's topic was deleted: stop without closing the log, whose files are
    /// about to be removed (a clean close would fsync the data, write indexes, a
    /// producer-state snapshot and two checkpoints, for nothing).
    Discard,
}

impl CoreMsg {
    /// The message's kind, as the admin endpoint shows processing times.
    fn kind(&self) -> &'static str {
        match self {
            CoreMsg::Produce { .. } => "Produce",
            CoreMsg::Fetch { .. } => "Fetch",
            CoreMsg::ListOffsets { .. } => "ListOffsets",
            CoreMsg::Offsets { .. } => "Offsets",
            CoreMsg::Flushed { .. } => "Flushed",
            CoreMsg::Assign { .. } => "Assign",
            CoreMsg::ReplicaFetch { .. } => "ReplicaFetch",
            CoreMsg::EpochEnd { .. } => "EpochEnd",
            CoreMsg::ApplyFetched { .. } => "ApplyFetched",
            CoreMsg::FetchOutOfRange { .. } => "FetchOutOfRange",
            CoreMsg::EpochEndAnswered { .. } => "EpochEndAnswered",
            CoreMsg::IsrAnswered { .. } => "IsrAnswered",
            CoreMsg::ReplicaTick => "ReplicaTick",
            CoreMsg::FlushTick => "FlushTick",
            CoreMsg::RetentionTick => "RetentionTick",
            CoreMsg::CompactionTick => "CompactionTick",
            CoreMsg::Compacted { .. } => "Compacted",
            CoreMsg::Crash => "Crash",
            CoreMsg::Shutdown { .. } => "Shutdown",
            CoreMsg::Discard => "Discard",
        }
    }

    /// Whether a handle counted the message into the inbox depth (timers and the actor's
    /// own messages are not).
    fn counted(&self) -> bool {
        !matches!(
            self,
            CoreMsg::FlushTick
                | CoreMsg::ReplicaTick
                | CoreMsg::Assign { .. }
                | CoreMsg::EpochEndAnswered { .. }
                | CoreMsg::IsrAnswered { .. }
                | CoreMsg::RetentionTick
                | CoreMsg::CompactionTick
                | CoreMsg::Shutdown { .. }
                | CoreMsg::Discard
        )
    }
}

/// What a produce call takes: a batch as its own buffer. A `BytesMut` split off a request
/// buffer is used as it is; a `Vec` is taken over without a copy.
pub trait IntoBatch {
    fn into_batch(self) -> BytesMut;
}

impl IntoBatch for BytesMut {
    fn into_batch(self) -> BytesMut {
        self
    }
}

impl IntoBatch for Vec<u8> {
    fn into_batch(self) -> BytesMut {
        // A `Bytes` made from a `Vec` owns its allocation alone, so this never copies.
        bytes::Bytes::from(self)
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]))
    }
}

/// An answer still to come from a Partition actor.
#[derive(Debug)]
pub struct Pending<T>(oneshot::Receiver<Result<T, PartitionError>>);

impl<T> Pending<T> {
    /// Waits for the answer. A dropped reply means the actor stopped or crashed mid-request.
    pub async fn wait(self) -> Result<T, PartitionError> {
        self.0.await.unwrap_or(Err(PartitionError::Offline))
    }
}

/// The only way to reach a Partition actor.
#[derive(Clone, Debug)]
pub struct PartitionHandle {
    pub topic: Arc<str>,
    pub partition: PartitionId,
    actor: ActorRef<PartitionMsg>,
    /// The log thread's inbox.
    core: mpsc::Sender<CoreMsg>,
    stats: Arc<ActorStats>,
    high_watermark: watch::Receiver<Offset>,
    log_end: watch::Receiver<Offset>,
}

impl PartitionHandle {
    /// Sends a control message past the mailbox bound: assignments and the answers to the
    /// partition's own questions are few (one per change or retry) and must not be lost to
    /// a burst of produce requests.
    fn send_control(&self, msg: CoreMsg) {
        // A failed send means the thread has stopped; a restarted partition gets its
        // assignment from the applier again.
        let _ = self.core.send(msg);
    }

    /// The partition's leadership as the metadata now says: it becomes leader or follower in
    /// place (the log stays open), or stays as it is for a repeat.
    pub fn assign(&self, assignment: Assignment) {
        self.send_control(CoreMsg::Assign { assignment });
    }

    /// The controller's answer to this partition's ISR proposal.
    pub fn isr_answered(&self, answer: IsrAnswer) {
        self.send_control(CoreMsg::IsrAnswered { answer });
    }

    /// The leader's answer to this partition's epoch-end question.
    pub fn epoch_end_answered(&self, answer: EpochEndAnswer) {
        self.send_control(CoreMsg::EpochEndAnswered { answer });
    }

    /// Leader: queues a follower's fetch; the answer holds the bytes past its log end (at
    /// most `bytes_max`, but at least one whole batch if there is one).
    pub fn replica_fetch_enqueue(
        &self,
        report: FollowerReport,
        bytes_max: u32,
    ) -> Result<Pending<ReplicaFetchOk>, PartitionError> {
        self.enqueue(|reply| CoreMsg::ReplicaFetch {
            report,
            bytes_max,
            reply,
        })
    }

    /// Leader: where `epoch` ends in this log, with the largest epoch at or below it that the
    /// log knows (OffsetForLeaderEpoch); `None` if it knows none.
    pub async fn epoch_end(
        &self,
        leader_epoch: LeaderEpoch,
        epoch: LeaderEpoch,
    ) -> Result<Option<(LeaderEpoch, Offset)>, PartitionError> {
        self.call(|reply| CoreMsg::EpochEnd {
            leader_epoch,
            epoch,
            reply,
        })
        .await
    }

    /// Follower: appends batches fetched from the leader; answers with the log's offsets (its
    /// flushed offset as it is then) once they are appended. With fsync durability a flush
    /// starts behind the answer, and its completion is reported to the fetcher through
    /// `ReplicaLinks::flushed`.
    pub async fn apply_fetched(
        &self,
        leader_epoch: LeaderEpoch,
        records: Vec<u8>,
        leader_high_watermark: Offset,
    ) -> Result<FollowerLog, PartitionError> {
        self.call(|reply| CoreMsg::ApplyFetched {
            leader_epoch,
            records,
            leader_high_watermark,
            reply,
        })
        .await
    }

    /// Follower: the leader refused a fetch as out of range. Answers once the replica acted on
    /// it: below the leader's log start its log is started afresh there (and the fetcher
    /// restarted from it), past the leader's log end it asks where to truncate.
    pub async fn fetch_out_of_range(&self, answer: FetchOutOfRange) -> Result<(), PartitionError> {
        self.call(|reply| CoreMsg::FetchOutOfRange { answer, reply })
            .await
    }

    /// The log end offset, which moves with every append: a leader's answers to follower
    /// fetches long-poll on it.
    #[must_use]
    pub fn log_end(&self) -> watch::Receiver<Offset> {
        self.log_end.clone()
    }

    fn send(&self, msg: CoreMsg) -> Result<(), PartitionError> {
        if self.stats.depth() >= PARTITION_MAILBOX_MAX {
            return Err(PartitionError::Overloaded);
        }
        self.stats.enqueued();
        self.core.send(msg).map_err(|_| {
            self.stats.dequeued();
            PartitionError::Offline
        })
    }

    fn enqueue<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> CoreMsg,
    ) -> Result<Pending<T>, PartitionError> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply))?;
        Ok(Pending(answer))
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> CoreMsg) -> Result<T, PartitionError> {
        self.enqueue(make)?.wait().await
    }

    /// Queues a produce now and returns its answer to await later, so that a session keeps
    /// the order of a connection's batches while it waits for many answers at once.
    pub fn produce_enqueue(
        &self,
        batch: impl IntoBatch,
        acks: Acks,
        leader_epoch: Option<LeaderEpoch>,
    ) -> Result<Pending<ProduceOk>, PartitionError> {
        let batch = batch.into_batch();
        self.enqueue(|reply| CoreMsg::Produce {
            batch,
            acks,
            leader_epoch,
            reply,
        })
    }

    /// Appends a batch; answers per `acks` (the caller sends nothing back for `Acks::None`).
    pub async fn produce(
        &self,
        batch: impl IntoBatch,
        acks: Acks,
        leader_epoch: Option<LeaderEpoch>,
    ) -> Result<ProduceOk, PartitionError> {
        let batch = batch.into_batch();
        self.call(|reply| CoreMsg::Produce {
            batch,
            acks,
            leader_epoch,
            reply,
        })
        .await
    }

    /// Reads from `offset`, below the high watermark.
    pub async fn fetch(
        &self,
        offset: Offset,
        bytes_max: u32,
        leader_epoch: Option<LeaderEpoch>,
    ) -> Result<FetchOk, PartitionError> {
        self.call(|reply| CoreMsg::Fetch {
            offset,
            bytes_max,
            leader_epoch,
            reply,
        })
        .await
    }

    /// Finds an offset.
    pub async fn list_offset(
        &self,
        spec: OffsetSpec,
        leader_epoch: Option<LeaderEpoch>,
    ) -> Result<ListedOffset, PartitionError> {
        self.call(|reply| CoreMsg::ListOffsets {
            spec,
            leader_epoch,
            reply,
        })
        .await
    }

    /// The log start offset, high watermark and log end offset, read together (group
    /// coordinators' lag and resets, and other nodes' coordinators through the peer kind
    /// PartitionOffsets).
    pub async fn offsets(&self) -> Result<LogOffsets, PartitionError> {
        self.call(|reply| CoreMsg::Offsets { reply }).await
    }

    /// The high watermark, which changes as writes become durable: long-poll fetches wait on
    /// it.
    #[must_use]
    pub fn high_watermark(&self) -> watch::Receiver<Offset> {
        self.high_watermark.clone()
    }

    /// Fault injection: makes the log thread stop and the actor fail.
    pub fn crash(&self) -> Result<(), PartitionError> {
        self.send(CoreMsg::Crash)
    }

    /// Makes the log thread stop without closing the log, for a partition whose topic was
    /// deleted: requests after it fail with `Offline`. The actor is stopped next, as usual.
    pub(crate) fn discard(&self) {
        // A failed send means the thread has stopped already, which is what was asked.
        let _ = self.core.send(CoreMsg::Discard);
    }

    /// The actor, for supervision.
    #[must_use]
    pub fn actor(&self) -> &ActorRef<PartitionMsg> {
        &self.actor
    }
}

/// What a partition is started with.
#[derive(Clone, Debug)]
pub struct PartitionArgs {
    pub id: String,
    pub parent: String,
    pub topic: Arc<str>,
    /// The id of the topic, which the directory's `partition.metadata` must hold: a
    /// directory of another id is a deleted topic's, and is removed before the log opens.
    pub topic_id: Arc<str>,
    pub partition: PartitionId,
    pub dir: PathBuf,
    pub log_config: LogConfig,
    pub durability: Durability,
    /// This node.
    pub node_id: NodeId,
    /// The partition's leadership when it starts; later changes come through `assign`.
    pub assignment: Assignment,
    /// `min.insync.replicas`, the lag time, unclean election (durability is `durability`).
    pub replica: ReplicaConfig,
    /// How often retention runs (and an old active segment rolls).
    pub retention_check_interval: Duration,
    /// The node's way to the controller, the leader and its replica fetchers.
    pub links: Arc<dyn ReplicaLinks>,
    pub flusher: Arc<Flusher>,
    pub directory: ActorDirectory,
    /// The node-wide producer ids and epochs each idempotent batch is checked against.
    pub producer_ids: ProducerRegistry,
}

#[derive(Debug)]
pub struct Partition;

/// The actor's state: the way to its log thread.
#[derive(Debug)]
pub struct PartitionState {
    id: String,
    core: mpsc::Sender<CoreMsg>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The interval timers started in `pre_start`. Each is a task holding a clone of the
    /// actor's cell (its mailboxes, about 5 KiB), and ractor's task only notices that the actor
    /// stopped at its next tick: for the retention timer that kept a deleted partition's cell
    /// alive for up to `retention_check_interval`. They are aborted when the actor stops.
    timers: Vec<tokio::task::JoinHandle<()>>,
}

/// An `acks=all` produce waiting for the high watermark: its reply and its answer.
type Waiter = (Reply<ProduceOk>, ProduceOk);

/// The replica state of a log just opened: unassigned, its high watermark
/// min(checkpoint, log end) (the log start without a checkpoint, until a role moves it).
fn open_replica(args: &PartitionArgs, log: &Log) -> ReplicaState<Waiter> {
    ReplicaState::open(
        args.node_id,
        ReplicaConfig {
            durability: args.durability,
            ..args.replica
        },
        local_log(log),
        log.high_watermark_checkpoint(),
    )
}

/// The log's offsets as the replica state keeps them.
fn local_log(log: &Log) -> LocalLog {
    LocalLog {
        log_start_offset: log.log_start_offset(),
        log_end_offset: log.log_end_offset(),
        flushed_offset: log.recovery_point(),
        latest_epoch: log.latest_epoch(),
    }
}

/// What the log thread owns: everything about the log.
struct Core {
    args: PartitionArgs,
    stats: Arc<ActorStats>,
    gauges: Arc<PartitionGauges>,
    /// `None` only while the log is being reopened after a failed flush.
    log: Option<Log>,
    /// Role, epochs, ISR, high watermark and the `acks=all` answers waiting for it.
    replica: ReplicaState<Waiter>,
    high_watermark: watch::Sender<Offset>,
    log_end: watch::Sender<Offset>,
    /// The log's current generation: a new one at open and at every cut of its end, so the
    /// fetcher never takes a flushed offset from after a cut for a log end from before it.
    generation: LogGeneration,
    flush_in_flight: bool,
    /// A compaction pass is running on the blocking pool.
    compaction_in_flight: bool,
    /// When `publish_replication` last stored the ISR and followers' progress.
    replication_published_at: Option<Instant>,
    /// The thread's own inbox, for flush and compaction completions.
    inbox: mpsc::Sender<CoreMsg>,
    /// For work the thread hands to tokio's blocking pool (compaction passes, flushes when
    /// the flusher pool is full).
    runtime: tokio::runtime::Handle,
}

impl Drop for PartitionState {
    fn drop(&mut self) {
        for timer in &self.timers {
            timer.abort();
        }
        // An actor dropped without its `post_stop` still must not leave its log thread
        // (which keeps its own inbox alive) running with the log open.
        if self.thread.is_some() {
            let (done, _) = oneshot::channel();
            let _ = self.core.send(CoreMsg::Shutdown { done });
        }
    }
}

/// Why the log thread's loop ended.
enum Stop {
    Shutdown(oneshot::Sender<()>),
    /// The topic was deleted: the log is dropped unclosed and its files removed next.
    Discard,
    Failed(String),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Partition {
    /// Starts a partition actor under `supervisor` and returns its handle.
    pub async fn start(
        args: PartitionArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<PartitionHandle, ractor::SpawnErr> {
        // A restarted partition keeps its gauges, so its in/out counters run on.
        let gauges = match args.directory.get(&args.id).and_then(|e| e.state) {
            Some(PublishedState::Partition(gauges)) => gauges,
            _ => Arc::new(PartitionGauges {
                topic: args.topic.to_string(),
                partition: args.partition.0,
                ..PartitionGauges::default()
            }),
        };
        let stats = args.directory.register_with_state(
            &args.id,
            crate::directory::ActorKind::Partition,
            Some(&args.parent),
            Some(PublishedState::Partition(Arc::clone(&gauges))),
        );
        let (hw_sender, hw_receiver) = watch::channel(Offset(0));
        let (log_end_sender, log_end_receiver) = watch::channel(Offset(0));
        let (core, inbox) = mpsc::channel();
        let topic = Arc::clone(&args.topic);
        let partition = args.partition;
        let name = args.id.clone();
        let (actor, _) = Actor::spawn_linked(
            Some(name),
            Partition,
            PartitionStart {
                args,
                stats: Arc::clone(&stats),
                gauges,
                high_watermark: hw_sender,
                log_end: log_end_sender,
                core: core.clone(),
                inbox,
            },
            supervisor,
        )
        .await?;
        Ok(PartitionHandle {
            topic,
            partition,
            actor,
            core,
            stats,
            high_watermark: hw_receiver,
            log_end: log_end_receiver,
        })
    }
}

/// What the actor starts its log thread with.
#[derive(Debug)]
pub struct PartitionStart {
    args: PartitionArgs,
    stats: Arc<ActorStats>,
    gauges: Arc<PartitionGauges>,
    high_watermark: watch::Sender<Offset>,
    log_end: watch::Sender<Offset>,
    core: mpsc::Sender<CoreMsg>,
    inbox: mpsc::Receiver<CoreMsg>,
}

impl Actor for Partition {
    type Msg = PartitionMsg;
    type State = PartitionState;
    type Arguments = PartitionStart;

    async fn pre_start(
        &self,
        myself: ActorRef<PartitionMsg>,
        start: PartitionStart,
    ) -> Result<PartitionState, ActorProcessingErr> {
        let PartitionStart {
            args,
            stats,
            gauges,
            high_watermark,
            log_end,
            core,
            inbox,
        } = start;
        let dir = args.dir.clone();
        let config = args.log_config.clone();
        let topic_id = Arc::clone(&args.topic_id);
        let log = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            // The id is checked (and another topic's data removed) before the log opens, so
            // that no read ever sees a deleted topic's data under its successor's name.
            let check = data_dir::check_topic_id(&RealStorage, &dir, &topic_id)?;
            let log = Log::open(Arc::new(RealStorage), &dir, config, now_ms())?;
            // Written after the open, so that a new partition's open still finds an empty
            // directory and skips recovery. Crash before this write: the directory holds no
            // id file and, for a new partition, an empty log, so the next open adopts it
            // with nothing of another topic's in it; nothing is appended before it returns.
            if check.writes_id() {
                data_dir::record_topic_id(&RealStorage, &dir, &topic_id)?;
            }
            Ok(log)
        })
        .await??;
        if let Some(t) = &log.recovery_report().truncation {
            tracing::warn!(partition = %args.id, position = t.position, bytes_cut = t.bytes_cut, reason = %t.reason, "recovered partition log");
        }
        tracing::info!(partition = %args.id, log_end_offset = log.log_end_offset().0, "partition open");
        let id = args.id.clone();
        let durability = args.durability;
        let compacted = args.log_config.cleanup_policy == CleanupPolicy::Compact;
        let retention_check_interval = args.retention_check_interval;
        let replica = open_replica(&args, &log);
        let assignment = args.assignment.clone();
        let mut state = Core {
            args,
            stats,
            gauges,
            log: Some(log),
            replica,
            high_watermark,
            log_end,
            generation: LogGeneration::next(),
            flush_in_flight: false,
            compaction_in_flight: false,
            replication_published_at: None,
            inbox: core.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        state.sync_high_watermark();
        // Before the thread serves anything: the first request already meets the role.
        state.assign(assignment).map_err(ActorProcessingErr::from)?;
        state.publish_segments();
        state.publish();
        let actor = myself.clone();
        let thread = std::thread::Builder::new()
            .name("vltava-log".into())
            .spawn(move || run_log_thread(state, &inbox, &actor))?;
        // Started last, so that a failed start leaves no timer behind.
        let mut timers = Vec::new();
        if let Durability::Interval(every) = durability {
            timers.push(myself.send_interval(every, || PartitionMsg::FlushTick));
        }
        timers.push(myself.send_interval(retention_check_interval, || PartitionMsg::RetentionTick));
        if compacted {
            timers.push(
                myself.send_interval(COMPACTION_CHECK_INTERVAL, || PartitionMsg::CompactionTick),
            );
        }
        Ok(PartitionState {
            id,
            core,
            thread: Some(thread),
            timers,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PartitionMsg>,
        msg: PartitionMsg,
        state: &mut PartitionState,
    ) -> Result<(), ActorProcessingErr> {
        let forward = match msg {
            PartitionMsg::FlushTick => CoreMsg::FlushTick,
            PartitionMsg::RetentionTick => CoreMsg::RetentionTick,
            PartitionMsg::CompactionTick => CoreMsg::CompactionTick,
            PartitionMsg::LogThreadStopped { error } => {
                return Err(ActorProcessingErr::from(error));
            }
        };
        // A send fails only once the thread has stopped, and then its own message follows.
        let _ = state.core.send(forward);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PartitionMsg>,
        state: &mut PartitionState,
    ) -> Result<(), ActorProcessingErr> {
        for timer in state.timers.drain(..) {
            timer.abort();
        }
        let (done, closed) = oneshot::channel();
        if state.core.send(CoreMsg::Shutdown { done }).is_ok() {
            // The thread answers once the log is closed (or drops `done` if it stopped first).
            let _ = closed.await;
        }
        if let Some(thread) = state.thread.take() {
            let id = state.id.clone();
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::warn!(partition = %id, "log thread ended abnormally");
            }
        }
        Ok(())
    }
}

/// The log thread: serves its inbox until told to stop or until something fails, then
/// closes (on a stop) or drops (on a failure) the log and, on a failure, tells the actor.
fn run_log_thread(mut core: Core, inbox: &mpsc::Receiver<CoreMsg>, actor: &ActorRef<PartitionMsg>) {
    let _count = LogThreadCount::start();
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.serve(inbox)));
    let stop = served.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        Stop::Failed(format!("log thread panicked: {what}"))
    });
    // Waiting `acks=all` answers are dropped with the replica state
    // and the core, which their callers see as `Offline`.
    // A stopped replica fetches no more: without this, a follower stopped because its replica
    // moved away (or its topic went) stayed in its ReplicaFetcher's list, which went on asking
    // the leader for it for the life of the process. A restart after a failure starts fetching
    // again with its assignment.
    if matches!(stop, Stop::Shutdown(_) | Stop::Discard) {
        core.args
            .links
            .stop_fetching(&core.args.topic, core.args.partition);
    }
    match stop {
        Stop::Shutdown(done) => {
            core.close();
            let _ = done.send(());
        }
        Stop::Discard => {
            tracing::debug!(partition = %core.args.id, "partition discarded: its topic was deleted");
            drop(core.log.take());
        }
        Stop::Failed(error) => {
            tracing::error!(partition = %core.args.id, %error, "partition log thread stopped");
            // Dropped without a clean close, as after a crash: the next start recovers.
            drop(core.log.take());
            let _ = actor.send_message(PartitionMsg::LogThreadStopped { error });
        }
    }
}

impl Core {
    /// Handles messages one at a time until a shutdown or a failure.
    fn serve(&mut self, inbox: &mpsc::Receiver<CoreMsg>) -> Stop {
        let mut next_tick = Instant::now() + REPLICA_TICK_INTERVAL;
        loop {
            // The replica state hears the time only where another replica is involved (a
            // leader with followers, a follower): a single-replica partition (every one on a
            // node without a cluster) has no lag to measure and nothing to retry, and thousands
            // of them ticking would keep the cores busy for nothing.
            let replicated = self
                .replica
                .assignment()
                .is_some_and(|a| a.replicas.len() > 1);
            let received = if replicated && Instant::now() >= next_tick {
                // Due even while requests keep the inbox busy.
                Ok(CoreMsg::ReplicaTick)
            } else if replicated {
                match inbox.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                    Ok(msg) => Ok(msg),
                    Err(mpsc::RecvTimeoutError::Timeout) => Ok(CoreMsg::ReplicaTick),
                    Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
                }
            } else {
                inbox.recv().map_err(|_| ())
            };
            let Ok(msg) = received else {
                // Every sender gone: the actor and all handles are dropped.
                return Stop::Failed("the partition's inbox closed".into());
            };
            if matches!(msg, CoreMsg::ReplicaTick) {
                next_tick = Instant::now() + REPLICA_TICK_INTERVAL;
            }
            let started = Instant::now();
            let kind = msg.kind();
            let counted = msg.counted();
            let outcome = match msg {
                CoreMsg::Produce {
                    batch,
                    acks,
                    leader_epoch,
                    reply,
                } => self.produce(batch, acks, leader_epoch, reply),
                CoreMsg::Fetch {
                    offset,
                    bytes_max,
                    leader_epoch,
                    reply,
                } => {
                    // A dropped receiver means the session went away; nothing to do.
                    let _ = reply.send(self.fetch(offset, bytes_max, leader_epoch));
                    Ok(())
                }
                CoreMsg::ListOffsets {
                    spec,
                    leader_epoch,
                    reply,
                } => {
                    let _ = reply.send(self.list_offset(spec, leader_epoch));
                    Ok(())
                }
                CoreMsg::Offsets { reply } => {
                    // A dropped receiver means the caller went away; nothing to do.
                    let _ = reply.send(Ok(self.offsets()));
                    Ok(())
                }
                CoreMsg::Flushed { job, result } => self.flushed(job, result),
                CoreMsg::Assign { assignment } => self.assign(assignment),
                CoreMsg::ReplicaFetch {
                    report,
                    bytes_max,
                    reply,
                } => self.replica_fetch(report, bytes_max, reply),
                CoreMsg::EpochEnd {
                    leader_epoch,
                    epoch,
                    reply,
                } => {
                    let answer = self
                        .replica
                        .check_epoch_end_question(leader_epoch)
                        .map(|()| self.log().end_offset_for_epoch(epoch))
                        .map_err(PartitionError::from);
                    let _ = reply.send(answer);
                    Ok(())
                }
                CoreMsg::ApplyFetched {
                    leader_epoch,
                    records,
                    leader_high_watermark,
                    reply,
                } => self.apply_fetched(leader_epoch, &records, leader_high_watermark, reply),
                CoreMsg::FetchOutOfRange { answer, reply } => {
                    let outcome = match self.replica.fetch_out_of_range(answer, Instant::now()) {
                        Ok(effects) => self.carry_out(effects),
                        Err(e) => {
                            tracing::warn!(partition = %self.args.id, error = %e, "out-of-range answer refused");
                            Ok(())
                        }
                    };
                    // A dropped receiver means the fetcher went away; nothing to do.
                    let _ = reply.send(Ok(()));
                    outcome
                }
                CoreMsg::EpochEndAnswered { answer } => {
                    let epochs = self
                        .log
                        .as_ref()
                        .expect("the log is there except while it is reopened")
                        .epoch_cache();
                    match self
                        .replica
                        .epoch_end_answered(answer, epochs, Instant::now())
                    {
                        Ok(effects) => self.carry_out(effects),
                        Err(e) => {
                            tracing::warn!(partition = %self.args.id, error = %e, "epoch-end answer refused");
                            Ok(())
                        }
                    }
                }
                CoreMsg::IsrAnswered { answer } => {
                    match self.replica.isr_answered(answer, Instant::now()) {
                        Ok(effects) => self.carry_out(effects),
                        Err(e) => {
                            tracing::warn!(partition = %self.args.id, error = %e, "ISR answer refused");
                            Ok(())
                        }
                    }
                }
                CoreMsg::ReplicaTick => {
                    let effects = self.replica.tick(Instant::now());
                    self.carry_out(effects)
                }
                CoreMsg::FlushTick => {
                    self.start_flush();
                    Ok(())
                }
                CoreMsg::RetentionTick => self.retention(),
                CoreMsg::CompactionTick => {
                    self.start_compaction();
                    Ok(())
                }
                CoreMsg::Compacted { output } => {
                    self.compacted(output);
                    Ok(())
                }
                CoreMsg::Crash => Err("crash injected".to_owned()),
                CoreMsg::Shutdown { done } => return Stop::Shutdown(done),
                CoreMsg::Discard => return Stop::Discard,
            };
            self.publish();
            self.stats.time(kind, started.elapsed());
            if counted {
                self.stats.handled();
            } else {
                self.stats.handled.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(error) = outcome {
                return Stop::Failed(error);
            }
        }
    }

    /// Closes the log cleanly (which writes its producer-state snapshot).
    fn close(&mut self) {
        let Some(log) = self.log.take() else { return };
        match log.close() {
            Ok(()) => tracing::info!(partition = %self.args.id, "partition closed"),
            Err(e) => {
                tracing::warn!(partition = %self.args.id, error = %e, "partition closed without a clean shutdown")
            }
        }
    }

    /// Stores the log's offsets where the admin endpoint reads them.
    fn publish(&mut self) {
        let Some(log) = self.log.as_ref() else { return };
        let log_end_offset = log.log_end_offset();
        self.log_end.send_if_modified(|end| {
            let moved = *end != log_end_offset;
            *end = log_end_offset;
            moved
        });
        let g = &self.gauges;
        g.log_start_offset
            .store(log.log_start_offset().0, Ordering::Relaxed);
        g.log_end_offset
            .store(log.log_end_offset().0, Ordering::Relaxed);
        g.high_watermark
            .store(log.high_watermark().0, Ordering::Relaxed);
        g.flushed_offset
            .store(log.recovery_point().0, Ordering::Relaxed);
        let leader_epoch = u64::from(self.replica.leader_epoch().unwrap_or_default().0);
        let role = match self.replica.role() {
            RoleKind::Unassigned => ReplicaRole::Unassigned,
            RoleKind::Leader => ReplicaRole::Leader,
            RoleKind::Follower => ReplicaRole::Follower,
        } as u8;
        // Both swapped every time (no short circuit), so both stay current.
        let epoch_changed = g.leader_epoch.swap(leader_epoch, Ordering::Relaxed) != leader_epoch;
        let role_changed = g.role.swap(role, Ordering::Relaxed) != role;
        self.publish_replication(epoch_changed || role_changed, log_end_offset);
    }

    /// Stores the replica's ISR and, on the leader, each follower's progress: when `changed`
    /// (a new role or leader epoch) or once `REPLICATION_PUBLISH_INTERVAL` has passed, in place
    /// under the gauges' lock (the vectors keep their capacity, so this allocates only while
    /// they first grow to the replica count).
    fn publish_replication(&mut self, changed: bool, log_end_offset: Offset) {
        let now = Instant::now();
        if !changed
            && self
                .replication_published_at
                .is_some_and(|at| now.duration_since(at) < REPLICATION_PUBLISH_INTERVAL)
        {
            return;
        }
        self.replication_published_at = Some(now);
        let now_ms = now_ms();
        let mut published = self
            .gauges
            .replication
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        published.published_at_ms = now_ms;
        published.replicas.clear();
        published.isr.clear();
        published.followers.clear();
        published.leader = None;
        let Some(assignment) = self.replica.assignment() else {
            return;
        };
        published.leader = assignment.leader.map(|n| n.0);
        published
            .replicas
            .extend(assignment.replicas.iter().map(|n| n.0));
        published
            .isr
            .extend(self.replica.isr().into_iter().flatten().map(|n| n.0));
        let own = self.replica.node();
        for node in assignment.replicas.iter().filter(|n| **n != own) {
            let Some(progress) = self.replica.follower(*node) else {
                continue;
            };
            let caught_up_ago = now.saturating_duration_since(progress.last_caught_up);
            published.followers.push(FollowerGauges {
                node_id: node.0,
                log_end_offset: progress.log_end_offset.map(|o| o.0),
                flushed_offset: progress.flushed_offset.map(|o| o.0),
                lag_offsets: progress
                    .log_end_offset
                    .map(|o| log_end_offset.0.saturating_sub(o.0)),
                last_caught_up_ms: now_ms
                    .saturating_sub(u64::try_from(caught_up_ago.as_millis()).unwrap_or(u64::MAX)),
            });
        }
        published.followers.sort_unstable_by_key(|f| f.node_id);
    }

    /// Stores the segment count and size; they change only on a roll or a retention pass, so
    /// this runs then (and on appends that roll), not after every message.
    fn publish_segments(&self) {
        let Some(log) = self.log.as_ref() else { return };
        let segments = log.segments();
        self.gauges
            .segments
            .store(segments.len() as u64, Ordering::Relaxed);
        self.gauges
            .size_bytes
            .store(log.size_bytes(), Ordering::Relaxed);
    }

    fn log(&self) -> &Log {
        self.log
            .as_ref()
            .expect("the log is there except while it is reopened")
    }

    fn check_epoch(&self, received: Option<LeaderEpoch>) -> Result<(), PartitionError> {
        // Unassigned: the request is refused by the role check that follows.
        let Some(current) = self.replica.leader_epoch() else {
            return Ok(());
        };
        match received {
            Some(received) if received < current => {
                Err(PartitionError::FencedLeaderEpoch { current, received })
            }
            Some(received) if received > current => {
                Err(PartitionError::UnknownLeaderEpoch { current, received })
            }
            _ => Ok(()),
        }
    }

    fn produce(
        &mut self,
        mut batch: BytesMut,
        acks: Acks,
        leader_epoch: Option<LeaderEpoch>,
        reply: Reply<ProduceOk>,
    ) -> Result<(), String> {
        if let Err(e) = self.check_epoch(leader_epoch) {
            let _ = reply.send(Err(e));
            return Ok(());
        }
        // Not the leader, too few in-sync replicas for acks=all, or too many answers waiting:
        // refused before anything is appended.
        if let Err(e) = self.replica.admit_append(acks) {
            let _ = reply.send(Err(e.into()));
            return Ok(());
        }
        let header = match BatchHeader::parse(&batch) {
            Ok(header) => header,
            Err(e) => {
                let _ = reply.send(Err(StorageError::InvalidBatch(e).into()));
                return Ok(());
            }
        };
        let log_start_offset = self.log().log_start_offset();
        let registry = &self.args.producer_ids;
        let verdict = producer_state::check(self.log().producer_state(), &header, |id, epoch| {
            registry.standing(id, epoch)
        });
        let (base_offset, last_offset, log_append_time) = match verdict {
            SequenceCheck::Fenced { received, fencing } => {
                let _ = reply.send(Err(PartitionError::ProducerFenced {
                    producer_id: header
                        .producer_id
                        .expect("only idempotent batches are fenced"),
                    received,
                    fencing,
                }));
                return Ok(());
            }
            SequenceCheck::Unknown(reason) => {
                let _ = reply.send(Err(PartitionError::UnknownProducerId {
                    producer_id: header
                        .producer_id
                        .expect("only idempotent batches are unknown"),
                    reason,
                }));
                return Ok(());
            }
            SequenceCheck::OutOfOrder { expected, received } => {
                let _ = reply.send(Err(PartitionError::OutOfOrderSequence {
                    expected,
                    received,
                }));
                return Ok(());
            }
            SequenceCheck::Duplicate(original) => {
                tracing::debug!(partition = %self.args.id, base_offset = original.base_offset.0, "duplicate batch answered with its original offsets");
                (original.base_offset, original.last_offset, None)
            }
            SequenceCheck::Append => {
                let epoch = self
                    .replica
                    .leader_epoch()
                    .expect("admit_append passed: the replica leads");
                let batch_bytes = batch.len() as u64;
                // The log records the batch in its producer table as it appends it.
                let appended = self.log_mut().append_as_leader(&mut batch, epoch, now_ms());
                match appended {
                    Ok(info) => {
                        self.count_append(batch_bytes, &info);
                        (info.base_offset, info.last_offset, info.log_append_time)
                    }
                    Err(e) => {
                        tracing::debug!(partition = %self.args.id, error = %e, "append refused");
                        let _ = reply.send(Err(e.into()));
                        return Ok(());
                    }
                }
            }
        };
        let ok = ProduceOk {
            base_offset,
            last_offset,
            log_append_time,
            log_start_offset,
        };
        let log = local_log(self.log());
        let effects = self
            .replica
            .appended(log, last_offset, acks, (reply, ok), Instant::now());
        if self.args.durability == Durability::Fsync {
            self.start_flush();
        }
        self.carry_out(effects)
    }

    fn start_flush(&mut self) {
        if self.flush_in_flight {
            return;
        }
        let Some(job) = self.log.as_mut().and_then(Log::begin_flush) else {
            return;
        };
        self.flush_in_flight = true;
        let inbox = self.inbox.clone();
        let stats = Arc::clone(&self.stats);
        let done: vltava_storage::FlushDone = Box::new(move |job, result| {
            stats.enqueued();
            if inbox.send(CoreMsg::Flushed { job, result }).is_err() {
                stats.dequeued();
            }
        });
        match self.args.flusher.try_submit(job, done) {
            Ok(()) => {}
            Err(SubmitError::Full(task) | SubmitError::Stopped(task)) => {
                // The pool is busy: run this one on the blocking pool instead; it is still
                // one job for this partition at a time.
                let (job, done) = *task;
                self.runtime.spawn_blocking(move || job.run_then(done));
            }
        }
    }

    fn flushed(&mut self, job: FlushJob, result: Result<(), StorageError>) -> Result<(), String> {
        self.flush_in_flight = false;
        let log = self.log.as_mut().ok_or("log missing")?;
        match log.complete_flush(job, result) {
            Ok(_) => {
                let log = local_log(self.log());
                let effects = self.replica.local_log_changed(log, Instant::now());
                self.carry_out(effects)?;
                // A follower's fetcher reports the new flushed offset to the leader at once:
                // the leader's high watermark (the lowest flushed offset of the ISR) waits for
                // it. The mark is the recovery point the flush just moved, i.e. only offsets
                // fsynced, in this log generation (a flush job begun before a cut does not
                // move the recovery point at all: the storage's flush generation).
                if let Some((leader, _)) = self.replica.fetching_from() {
                    self.args.links.flushed(
                        &self.args.topic,
                        self.args.partition,
                        leader,
                        FlushMark {
                            generation: self.generation,
                            flushed_offset: log.flushed_offset,
                        },
                    );
                }
                self.start_flush();
                Ok(())
            }
            Err(error) => {
                tracing::error!(partition = %self.args.id, %error, "flush failed; failing waiting producers and reopening the log");
                let log = self.log.take().ok_or("log missing")?;
                // If even that fails the thread stops and the actor fails: its supervisor
                // decides.
                let log = log
                    .reopen_after_failure(now_ms())
                    .map_err(|e| format!("reopening the log failed: {e}"))?;
                // The reopened log ends at its recovery point, which no transition of the
                // replica state allows outside a truncation: it starts afresh over the
                // reopened log, and the waiting answers go with the old one (their callers see
                // `Offline`). It takes its assignment again; a replicated partition's leader is
                // refused the same epoch (followers may have copied what the failed fsync lost)
                // and waits for a new one. The reopen cut the log to its recovery point: a new
                // generation.
                self.generation = LogGeneration::next();
                // The assignment the old state held (the newest the applier gave), not the
                // one the partition started with, which may be epochs old.
                let assignment = self
                    .replica
                    .assignment()
                    .cloned()
                    .unwrap_or_else(|| self.args.assignment.clone());
                self.replica = open_replica(&self.args, &log);
                self.log = Some(log);
                self.sync_high_watermark();
                self.assign(assignment)
            }
        }
    }

    /// Makes the log's and the watch's high watermark the replica state's.
    fn sync_high_watermark(&mut self) {
        let high_watermark = self.replica.high_watermark();
        if let Some(log) = self.log.as_mut() {
            log.set_high_watermark(high_watermark);
        }
        self.high_watermark.send_replace(high_watermark);
    }

    /// Takes the partition's leadership as the metadata says: leader when it names this node,
    /// follower otherwise (of nobody when it names no leader). In place: the log stays open.
    fn assign(&mut self, assignment: Assignment) -> Result<(), String> {
        let now = Instant::now();
        let leads = assignment.leader == Some(self.args.node_id);
        let epoch = assignment.leader_epoch;
        let transition = if leads {
            self.replica.become_leader(assignment, now)
        } else {
            self.replica.become_follower(assignment, now)
        };
        match transition {
            Ok(effects) => {
                tracing::debug!(partition = %self.args.id, leader_epoch = epoch.0, role = ?self.replica.role(), "assignment applied");
                self.carry_out(effects)?;
                // A follower's copy is read by nobody until it leads: its synced pages leave
                // the page cache to the leaders' readers (`Log::set_drop_cache_when_flushed`).
                if let Some(log) = self.log.as_mut() {
                    log.set_drop_cache_when_flushed(!leads);
                }
                let log = self.log();
                if leads
                    && self.args.durability == Durability::Fsync
                    && log.recovery_point() < log.log_end_offset()
                {
                    // What the log holds past its recovery point (written before a restart
                    // or a role change) counts only once flushed: start now, not at the next
                    // append. Only then: a new partition's first flush also fsyncs its
                    // directory entries, which a topic of thousands of partitions must not
                    // pay for at creation.
                    self.start_flush();
                }
            }
            // A stale or conflicting assignment (an image older than one applied, say); the
            // replica keeps its role. Offline until a newer one comes if it had none.
            Err(e) => {
                tracing::warn!(partition = %self.args.id, leader_epoch = epoch.0, error = %e, role = ?self.replica.role(), "assignment refused")
            }
        }
        Ok(())
    }

    /// Carries out what the replica state asked for, in order. A failed log operation (a
    /// truncation, an epoch record) stops the thread: the log is poisoned.
    fn carry_out(&mut self, effects: Vec<Effect<Waiter>>) -> Result<(), String> {
        let mut queue: std::collections::VecDeque<Effect<Waiter>> = effects.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Acknowledge { waiters } => {
                    // The offsets the answers stand on are in the admin endpoint's gauges
                    // before any answer leaves: a client that reads `/partitions` right after
                    // its acknowledgement sees at least what was acknowledged (the gauges were
                    // otherwise stored only after the whole message, a preempted log thread
                    // later).
                    self.publish();
                    for (reply, ok) in waiters {
                        let _ = reply.send(Ok(ok));
                    }
                }
                Effect::Fail { waiters, error } => {
                    for (reply, _) in waiters {
                        let _ = reply.send(Err(PartitionError::Replica(error.clone())));
                    }
                }
                // Published before the producers hear back (the state machine orders it
                // first), so whoever learns of an acknowledged write also sees it below the
                // high watermark.
                Effect::PublishHighWatermark { .. } => self.sync_high_watermark(),
                Effect::RecordEpochStart {
                    leader_epoch,
                    start_offset,
                } => {
                    // Followers ask where an epoch starts; a partition without followers is
                    // never asked, and its epoch cache records the epoch with its first batch
                    // as it always did. Skipping the durable record there keeps a new
                    // single-replica partition free of fsyncs until its first write (a
                    // topic of thousands of partitions opens in seconds, not minutes).
                    let alone = self
                        .replica
                        .assignment()
                        .is_some_and(|a| a.replicas.len() <= 1);
                    if !alone {
                        let log = self.log_mut();
                        debug_assert_eq!(log.log_end_offset(), start_offset);
                        log.record_epoch_start(leader_epoch)
                            .map_err(|e| format!("recording epoch {leader_epoch}'s start: {e}"))?;
                    }
                }
                Effect::ProposeIsr(proposal) => {
                    tracing::info!(partition = %self.args.id, ?proposal, "proposing an ISR change");
                    self.args
                        .links
                        .propose_isr(&self.args.topic, self.args.partition, proposal);
                }
                Effect::AskEpochEnd {
                    leader,
                    leader_epoch,
                    epoch,
                } => self.args.links.ask_epoch_end(
                    &self.args.topic,
                    self.args.partition,
                    leader,
                    leader_epoch,
                    epoch,
                ),
                Effect::Truncate { offset } => {
                    let end = self.log().log_end_offset();
                    tracing::info!(partition = %self.args.id, offset = offset.0, log_end_offset = end.0, "truncating to the leader's log");
                    self.log_mut()
                        .truncate_to(offset)
                        .map_err(|e| format!("truncating to {offset}: {e}"))?;
                    self.generation = LogGeneration::next();
                    self.publish_segments();
                    let log = local_log(self.log());
                    queue.extend(self.replica.log_truncated(log, Instant::now()));
                    self.sync_high_watermark();
                }
                Effect::TruncateFullyAndStartAt { offset } => {
                    let end = self.log().log_end_offset();
                    tracing::warn!(partition = %self.args.id, offset = offset.0, log_end_offset = end.0, "the leader's log starts past this log's end; emptying it to start there");
                    self.log_mut()
                        .truncate_fully_and_start_at(offset, now_ms())
                        .map_err(|e| format!("starting the log afresh at {offset}: {e}"))?;
                    self.generation = LogGeneration::next();
                    self.publish_segments();
                    let log = local_log(self.log());
                    queue.extend(self.replica.log_started_afresh(log, Instant::now()));
                    self.sync_high_watermark();
                }
                Effect::StartFetching {
                    leader,
                    leader_epoch,
                } => {
                    let log = FollowerLog {
                        log: local_log(self.log()),
                        generation: self.generation,
                    };
                    self.args.links.start_fetching(
                        &self.args.topic,
                        self.args.partition,
                        leader,
                        leader_epoch,
                        log,
                    );
                }
                Effect::StopFetching => self
                    .args
                    .links
                    .stop_fetching(&self.args.topic, self.args.partition),
            }
        }
        Ok(())
    }

    /// Leader: a follower's fetch. Its report moves the follower's progress (and maybe the
    /// high watermark); the answer holds the bytes past its log end.
    fn replica_fetch(
        &mut self,
        report: FollowerReport,
        bytes_max: u32,
        reply: Reply<ReplicaFetchOk>,
    ) -> Result<(), String> {
        match self.replica.follower_fetched(report, Instant::now()) {
            Ok(accepted) => self.carry_out(accepted.effects)?,
            Err(ReplicaError::FetchOffsetPastLogEnd { offset, .. }) => {
                // With the log's bounds, so the follower can tell this from a fetch below
                // the log start.
                let log = self.log();
                let _ = reply.send(Err(PartitionError::OffsetOutOfRange {
                    offset,
                    log_start_offset: log.log_start_offset(),
                    high_watermark: self.replica.high_watermark(),
                    log_end_offset: log.log_end_offset(),
                }));
                return Ok(());
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return Ok(());
            }
        }
        // The follower hears of a failed read; the log is not changed by one.
        let _ = reply.send(self.read_for_follower(report.log_end_offset, bytes_max));
        Ok(())
    }

    fn read_for_follower(
        &mut self,
        offset: Offset,
        bytes_max: u32,
    ) -> Result<ReplicaFetchOk, PartitionError> {
        let log = self.log();
        let log_start_offset = log.log_start_offset();
        let log_end_offset = log.log_end_offset();
        if offset < log_start_offset {
            return Err(PartitionError::OffsetOutOfRange {
                offset,
                log_start_offset,
                high_watermark: self.replica.high_watermark(),
                log_end_offset,
            });
        }
        let records = if offset < log_end_offset && bytes_max > 0 {
            let read = self.log_mut().read(offset, bytes_max, None)?;
            read.bytes
        } else {
            Vec::new()
        };
        Ok(ReplicaFetchOk {
            records,
            high_watermark: self.replica.high_watermark(),
            log_start_offset,
            log_end_offset,
        })
    }

    /// Follower: appends the leader's batches unchanged, then answers at once with the log's
    /// offsets. With fsync durability the flush runs behind the answer (group commit: one
    /// flush in flight covers everything appended before it began, and the next starts when
    /// it completes), so the fetcher fetches the next bytes while these sync; `flushed`
    /// reports each completion to the fetcher. The answer's flushed offset is the recovery
    /// point as it is now, i.e. only what is already fsynced.
    fn apply_fetched(
        &mut self,
        leader_epoch: LeaderEpoch,
        records: &[u8],
        leader_high_watermark: Offset,
        reply: Reply<FollowerLog>,
    ) -> Result<(), String> {
        match self.replica.fetching_from() {
            Some((_, epoch)) if epoch == leader_epoch => {}
            _ => {
                // A fetch of an epoch this replica left (or not fetching at all): nothing of
                // it is appended.
                let _ = reply.send(Err(PartitionError::Replica(ReplicaError::NotLeader {
                    leader: self.replica.assignment().and_then(|a| a.leader),
                })));
                return Ok(());
            }
        }
        let mut rest = records;
        while !rest.is_empty() {
            let header = match BatchHeader::parse(rest) {
                Ok(h) => h,
                Err(e) => {
                    let _ = reply.send(Err(StorageError::InvalidBatch(e).into()));
                    return Ok(());
                }
            };
            let Some(len) = usize::try_from(header.total_bytes())
                .ok()
                .filter(|n| *n <= rest.len())
            else {
                // A partial batch at the end of an answer cut by its byte budget: the next
                // fetch asks from here.
                break;
            };
            let (batch, after) = rest.split_at(len);
            match self.log_mut().append_as_follower(batch, now_ms()) {
                Ok(info) => self.count_append(batch.len() as u64, &info),
                Err(e) => {
                    tracing::warn!(partition = %self.args.id, error = %e, "a fetched batch was refused");
                    if self.log().is_poisoned() {
                        return Err(format!("appending a fetched batch: {e}"));
                    }
                    let _ = reply.send(Err(e.into()));
                    return Ok(());
                }
            }
            rest = after;
        }
        let log = local_log(self.log());
        let effects =
            self.replica
                .fetch_applied(leader_epoch, leader_high_watermark, log, Instant::now());
        self.carry_out(effects)?;
        if self.args.durability == Durability::Fsync && log.flushed_offset < log.log_end_offset {
            // Also when nothing new was appended: a tail left unflushed (by a restart, say)
            // must reach the disk for the leader to count it. `start_flush` does nothing while
            // a flush is in flight; its completion starts the next.
            self.start_flush();
        }
        // A dropped receiver means the fetcher went away; nothing to do.
        let _ = reply.send(Ok(FollowerLog {
            log,
            generation: self.generation,
        }));
        Ok(())
    }

    /// Counts an appended batch (leader's or follower's) in the partition's gauges.
    fn count_append(&self, batch_bytes: u64, info: &vltava_storage::AppendInfo) {
        let g = &self.gauges;
        g.bytes_in.fetch_add(batch_bytes, Ordering::Relaxed);
        g.events_in.fetch_add(
            info.last_offset.0 - info.base_offset.0 + 1,
            Ordering::Relaxed,
        );
        if info.position == 0 {
            // The batch opened a new segment.
            self.publish_segments();
        } else {
            g.size_bytes.fetch_add(batch_bytes, Ordering::Relaxed);
        }
    }

    fn fetch(
        &mut self,
        offset: Offset,
        bytes_max: u32,
        leader_epoch: Option<LeaderEpoch>,
    ) -> Result<FetchOk, PartitionError> {
        self.check_epoch(leader_epoch)?;
        // Consumers read from the leader, and from a new leader only once its high watermark
        // reached its epoch's start (before, it may be below what consumers already read).
        self.replica.check_offset_query()?;
        let high_watermark = self.replica.high_watermark();
        let log_start_offset = self.log().log_start_offset();
        let log_end_offset = self.log().log_end_offset();
        // Between the high watermark and the log end is not out of range: those offsets exist
        // and become readable as the followers catch up (a consumer that read them from an
        // old leader waits here rather than resetting its position).
        if offset < log_start_offset || offset > log_end_offset {
            return Err(PartitionError::OffsetOutOfRange {
                offset,
                log_start_offset,
                high_watermark,
                log_end_offset,
            });
        }
        if bytes_max == 0 || offset >= high_watermark {
            // Only the watermarks were asked for (the fetch's byte budget is spent), or
            // nothing is committed past the offset yet (a long poll waits for the high
            // watermark to move).
            return Ok(FetchOk {
                records: Vec::new(),
                high_watermark,
                log_start_offset,
            });
        }
        let read: LogRead = self
            .log_mut()
            .read(offset, bytes_max, Some(high_watermark))?;
        self.gauges
            .bytes_out
            .fetch_add(read.bytes.len() as u64, Ordering::Relaxed);
        self.gauges
            .events_out
            .fetch_add(offsets_in(&read.bytes), Ordering::Relaxed);
        Ok(FetchOk {
            records: read.bytes,
            high_watermark,
            log_start_offset,
        })
    }

    fn offsets(&self) -> LogOffsets {
        let log = self.log();
        let offsets = LogOffsets {
            log_start_offset: log.log_start_offset(),
            high_watermark: self.replica.high_watermark(),
            log_end_offset: log.log_end_offset(),
        };
        assert!(
            offsets.log_start_offset <= offsets.high_watermark
                && offsets.high_watermark <= offsets.log_end_offset,
            "watermark invariant broken: {offsets:?}"
        );
        offsets
    }

    fn list_offset(
        &mut self,
        spec: OffsetSpec,
        leader_epoch: Option<LeaderEpoch>,
    ) -> Result<ListedOffset, PartitionError> {
        self.check_epoch(leader_epoch)?;
        self.replica.check_offset_query()?;
        let high_watermark = self.replica.high_watermark();
        let (offset, timestamp) = match spec {
            OffsetSpec::Earliest => (Some(self.log().log_start_offset()), None),
            OffsetSpec::Latest => (Some(high_watermark), None),
            OffsetSpec::Timestamp(t) => match self.log_mut().offset_for_timestamp(t)? {
                Some((offset, timestamp)) if offset < high_watermark => {
                    (Some(offset), Some(timestamp))
                }
                _ => (None, None),
            },
        };
        // The epoch of the batch holding the offset (for latest, of the last batch below the
        // high watermark), so a client can check it against its own log.
        let cache = self.log().epoch_cache();
        let epoch_at = match (spec, offset) {
            (OffsetSpec::Latest, Some(o)) => {
                o.0.checked_sub(1)
                    .map(Offset)
                    .and_then(|o| cache.epoch_for_offset(o))
            }
            (_, Some(o)) => cache.epoch_for_offset(o),
            (_, None) => None,
        };
        Ok(ListedOffset {
            offset,
            timestamp,
            leader_epoch: epoch_at.or(self.replica.leader_epoch()).unwrap_or_default(),
        })
    }

    /// Starts a compaction pass off the actor if one is due; appends and reads go on.
    fn start_compaction(&mut self) {
        if self.compaction_in_flight {
            return;
        }
        let Some(job) = self
            .log
            .as_mut()
            .and_then(|log| log.begin_compaction(now_ms()))
        else {
            return;
        };
        self.compaction_in_flight = true;
        let inbox = self.inbox.clone();
        let stats = Arc::clone(&self.stats);
        self.runtime.spawn_blocking(move || {
            let output = job.run();
            stats.enqueued();
            if inbox.send(CoreMsg::Compacted { output }).is_err() {
                stats.dequeued();
            }
        });
    }

    fn compacted(&mut self, output: CompactionOutput) {
        self.compaction_in_flight = false;
        let id = self.args.id.clone();
        match self.log_mut().complete_compaction(output) {
            Ok(report) => {
                tracing::info!(
                    partition = %id,
                    outcome = ?report.outcome,
                    segments_before = report.segments_before,
                    segments_after = report.segments_after,
                    bytes_before = report.bytes_before,
                    bytes_after = report.bytes_after,
                    "compaction pass done"
                );
                self.publish_segments();
            }
            // A failed pass leaves the old segments in place; the next tick tries again.
            Err(e) => tracing::warn!(partition = %id, error = %e, "compaction pass failed"),
        }
    }

    fn retention(&mut self) -> Result<(), String> {
        let now = now_ms();
        let log = self.log_mut();
        let outcome = log
            .roll_if_old(now)
            .and_then(|_| log.delete_old_segments(now));
        self.publish_segments();
        match outcome {
            // The replica state hears of the new log start: a follower cuts no lower than
            // it, and would otherwise ask its log to cut below its start, which fails.
            Ok(removed) if !removed.is_empty() => {
                let log = local_log(self.log());
                let effects = self.replica.local_log_changed(log, Instant::now());
                self.carry_out(effects)
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(partition = %self.args.id, error = %e, "retention check failed");
                Ok(())
            }
        }
    }

    fn log_mut(&mut self) -> &mut Log {
        self.log
            .as_mut()
            .expect("the log is there except while it is reopened")
    }
}

/// The offsets the whole batches in `bytes` cover, read from their headers.
fn offsets_in(bytes: &[u8]) -> u64 {
    vltava_messages::batch::batch_headers(bytes)
        .map(|h| h.last_offset().0.saturating_sub(h.base_offset.0) + 1)
        .sum()
}
