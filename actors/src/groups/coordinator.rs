//! The GroupCoordinator actor: one per consumer group.
//!
//! - Owns: the group's `GroupState` (members, epochs, target assignment, committed offsets,
//!   rebalance history) and the heartbeats parked until a member's assignment changes.
//! - Receives from: client sessions (heartbeat, commit, offset fetch, describe, delete,
//!   reset), its own timers (ticks that expire members, parked heartbeats coming due).
//! - Sends to: the Partition actor of its `__consumer_offsets` partition (commits, and the
//!   group's membership as `membership` records it, as acks=all appends, so a commit is
//!   answered once it is durable and a heartbeat once the membership it answers from is), and,
//!   through its `OffsetsReader`,
//!   the Partitions of the topics it describes or resets (high watermarks, offsets by time):
//!   those led here directly, those led by other nodes with the peer kind PartitionOffsets,
//!   one request per leader, each bounded by `REMOTE_OFFSETS_TIMEOUT`.
//! - Waits: a DescribeGroups reads offsets on a task of its own, so the mailbox goes on
//!   meanwhile; a ResetOffsets reads them in the handler (it commits what it read, and the
//!   group is empty), holding the mailbox at most about `REMOTE_OFFSETS_TIMEOUT`.
//! - Writes before it answers: after each message, the membership changes it made (joins,
//!   leaves, epochs, assignments, revocations) are appended to the offsets partition before
//!   any heartbeat answer computed from them goes out, in batches of at most
//!   `PERSIST_BATCH_BYTES_MAX`. If that write fails, the waiting answers fail with
//!   `CoordinatorNotAvailable` (retriable) and the coordinator fails too, so that the manager
//!   reloads the group from the log rather than serve from state the log does not hold.
//! - Publishes: a snapshot of the group for the admin endpoint after every change.
//! - Mailbox bound: `COORDINATOR_MAILBOX_MAX`, checked by its handle (`Overloaded`).
//! - Stops: when its group is deleted or expires, or when the manager unloads its offsets
//!   partition (this node no longer leads it); heartbeats parked then are answered
//!   `NotCoordinator`, so their members find the new coordinator and carry on there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{oneshot, watch};
use vltava_messages::batch::BatchBuilder;
use vltava_messages::group_records::{
    GROUP_RECORD_VERSION, GroupRecordKey, OFFSETS_TOPIC, OffsetValue,
};
use vltava_messages::peer::PartitionOffsetsQuery;
use vltava_messages::protocol::{
    Acks, CommittedOffset, CommittedTopic, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, ErrorCode, GroupDescription, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, PartitionLag, PartitionResult,
    PartitionResults, ResetOffsetsRequest, ResetOffsetsResponse, ResetPartition, ResetTo,
    ResponseError,
};
use vltava_messages::{Compression, Offset, PartitionId};

use super::assignor::TopicPartition;
use super::membership::{self, Persisted, Record};
use super::offsets::{OffsetsReader, PartitionOffsets};
use super::state::{Committed, GroupSettings, GroupState, HeartbeatOutcome, Refusal};
use super::{GroupRegistry, GroupSnapshot};
use crate::directory::{ActorDirectory, ActorKind, ActorStats, PublishedState};
use crate::metadata::MetadataImage;
use crate::partition::PartitionHandle;
use crate::partition::supervisor::{PartitionRegistry, PartitionSlot};

/// Messages a coordinator queues before its handle answers `Overloaded`: heartbeats of up to
/// 1,000 members plus their commits.
pub const COORDINATOR_MAILBOX_MAX: u64 = 4096;
/// How often a coordinator checks sessions, revocation deadlines and offset expiry.
pub const COORDINATOR_TICK: Duration = Duration::from_millis(250);
/// The most bytes of records (keys and values) a coordinator puts in one batch of the offsets
/// partition; a write of more (the membership of a large group after a rebalance) is split
/// into several batches appended one after the other. Well below the topic's 4 MiB batch
/// limit, leaving room for record headers.
pub const PERSIST_BATCH_BYTES_MAX: usize = 512 * 1024;
/// What one record costs in a batch beyond its key and value (lengths, offset and timestamp
/// deltas, attributes), rounded up, for `PERSIST_BATCH_BYTES_MAX`.
const RECORD_OVERHEAD_BYTES: usize = 32;

type Reply<T> = oneshot::Sender<Result<T, Refusal>>;

/// Heartbeat answers computed while handling one message, sent once the membership they were
/// computed from is durable.
type Outbox = Vec<(
    Reply<ConsumerGroupHeartbeatResponse>,
    Result<ConsumerGroupHeartbeatResponse, Refusal>,
)>;

/// Why a coordinator stopped serving: its membership could not be written, so its memory is
/// ahead of the log; the manager reloads the group from the log.
#[derive(Debug, thiserror::Error)]
#[error("group {group}: the membership could not be written ({code:?}): {reason}")]
pub struct PersistFailed {
    pub group: String,
    pub code: ErrorCode,
    pub reason: String,
}

pub enum CoordinatorMsg {
    Heartbeat {
        request: ConsumerGroupHeartbeatRequest,
        client_id: String,
        host: String,
        reply: Reply<ConsumerGroupHeartbeatResponse>,
    },
    Commit {
        request: OffsetCommitRequest,
        reply: Reply<OffsetCommitResponse>,
    },
    FetchOffsets {
        request: OffsetFetchRequest,
        reply: Reply<OffsetFetchResponse>,
    },
    Describe {
        reply: Reply<GroupDescription>,
    },
    Delete {
        reply: Reply<()>,
    },
    Reset {
        request: ResetOffsetsRequest,
        reply: Reply<ResetOffsetsResponse>,
    },
    Tick,
    /// A parked heartbeat's wait is over.
    ParkDue {
        member_id: String,
        seq: u64,
    },
}

impl CoordinatorMsg {
    fn kind(&self) -> &'static str {
        match self {
            CoordinatorMsg::Heartbeat { .. } => "Heartbeat",
            CoordinatorMsg::Commit { .. } => "Commit",
            CoordinatorMsg::FetchOffsets { .. } => "FetchOffsets",
            CoordinatorMsg::Describe { .. } => "Describe",
            CoordinatorMsg::Delete { .. } => "Delete",
            CoordinatorMsg::Reset { .. } => "Reset",
            CoordinatorMsg::Tick => "Tick",
            CoordinatorMsg::ParkDue { .. } => "ParkDue",
        }
    }
}

impl std::fmt::Debug for CoordinatorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// The only way to reach a GroupCoordinator.
#[derive(Clone, Debug)]
pub struct CoordinatorHandle {
    actor: ActorRef<CoordinatorMsg>,
    stats: Arc<ActorStats>,
}

impl CoordinatorHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> CoordinatorMsg) -> Result<T, Refusal> {
        if self.stats.depth() >= COORDINATOR_MAILBOX_MAX {
            return Err((
                ErrorCode::Overloaded,
                "the group coordinator is busy".into(),
            ));
        }
        let (reply, answer) = oneshot::channel();
        self.stats.enqueued();
        if self.actor.send_message(make(reply)).is_err() {
            self.stats.dequeued();
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    pub async fn heartbeat(
        &self,
        request: ConsumerGroupHeartbeatRequest,
        client_id: String,
        host: String,
    ) -> Result<ConsumerGroupHeartbeatResponse, Refusal> {
        self.call(|reply| CoordinatorMsg::Heartbeat {
            request,
            client_id,
            host,
            reply,
        })
        .await
    }

    pub async fn commit(
        &self,
        request: OffsetCommitRequest,
    ) -> Result<OffsetCommitResponse, Refusal> {
        self.call(|reply| CoordinatorMsg::Commit { request, reply })
            .await
    }

    pub async fn fetch_offsets(
        &self,
        request: OffsetFetchRequest,
    ) -> Result<OffsetFetchResponse, Refusal> {
        self.call(|reply| CoordinatorMsg::FetchOffsets { request, reply })
            .await
    }

    pub async fn describe(&self) -> Result<GroupDescription, Refusal> {
        self.call(|reply| CoordinatorMsg::Describe { reply }).await
    }

    pub async fn delete(&self) -> Result<(), Refusal> {
        self.call(|reply| CoordinatorMsg::Delete { reply }).await
    }

    pub async fn reset(
        &self,
        request: ResetOffsetsRequest,
    ) -> Result<ResetOffsetsResponse, Refusal> {
        self.call(|reply| CoordinatorMsg::Reset { request, reply })
            .await
    }

    #[must_use]
    pub fn actor(&self) -> &ActorRef<CoordinatorMsg> {
        &self.actor
    }
}

fn gone() -> Refusal {
    (
        ErrorCode::CoordinatorNotAvailable,
        "the group coordinator stopped; find it again".into(),
    )
}

/// What a coordinator starts with.
#[derive(Clone, Debug)]
pub struct CoordinatorArgs {
    pub id: String,
    pub parent: String,
    pub group_id: String,
    pub offsets_partition: u32,
    /// Loaded from the offsets topic; empty for a new group.
    pub offsets: BTreeMap<TopicPartition, Committed>,
    /// The group record and member records loaded from the offsets topic; empty for a new
    /// group.
    pub persisted: Persisted,
    pub settings: GroupSettings,
    /// How long an empty group keeps its offsets.
    pub offsets_retention: Duration,
    pub directory: ActorDirectory,
    pub partitions: PartitionRegistry,
    pub image: watch::Receiver<Arc<MetadataImage>>,
    pub registry: GroupRegistry,
    /// Reads the offsets of the partitions the group consumes, here or on their leaders.
    pub offsets_reader: OffsetsReader,
}

#[derive(Debug)]
pub struct GroupCoordinator;

/// A heartbeat waiting for news.
struct Parked {
    seq: u64,
    reply: Reply<ConsumerGroupHeartbeatResponse>,
}

pub struct CoordinatorState {
    args: CoordinatorArgs,
    stats: Arc<ActorStats>,
    snapshot: Arc<std::sync::Mutex<GroupSnapshot>>,
    group: GroupState,
    parked: HashMap<String, Parked>,
    park_seq: u64,
    /// The group's membership as the offsets topic holds it: what the next write compares
    /// the group with.
    persisted: Persisted,
    /// The group version `persisted` was last brought up to date at: an unchanged version
    /// means nothing to write, so a heartbeat with nothing new costs no comparison.
    persisted_version: Option<u64>,
    /// Set once the group's tombstones are written (deleted or expired): nothing more of it
    /// is written.
    deleted: bool,
    /// Heartbeat answers waiting for the membership write of the message being handled.
    outbox: Outbox,
    /// The group version last published.
    published_version: Option<u64>,
}

impl std::fmt::Debug for CoordinatorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorState")
            .field("group", &self.args.group_id)
            .field("members", &self.group.members.len())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn error(refusal: &Refusal) -> ResponseError {
    ResponseError::new(refusal.0, refusal.1.clone())
}

impl GroupCoordinator {
    /// Starts a coordinator under `supervisor`.
    pub async fn start(
        args: CoordinatorArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<CoordinatorHandle, ractor::SpawnErr> {
        let snapshot = Arc::new(std::sync::Mutex::new(GroupSnapshot {
            group_id: args.group_id.clone(),
            ..GroupSnapshot::default()
        }));
        let stats = args.directory.register_with_state(
            &args.id,
            ActorKind::GroupCoordinator,
            Some(&args.parent),
            Some(PublishedState::Group(Arc::clone(&snapshot))),
        );
        let (actor, _) = Actor::spawn_linked(
            Some(args.id.clone()),
            GroupCoordinator,
            (args, Arc::clone(&stats), snapshot),
            supervisor,
        )
        .await?;
        Ok(CoordinatorHandle { actor, stats })
    }
}

impl Actor for GroupCoordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = (
        CoordinatorArgs,
        Arc<ActorStats>,
        Arc<std::sync::Mutex<GroupSnapshot>>,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<CoordinatorMsg>,
        (args, stats, snapshot): Self::Arguments,
    ) -> Result<CoordinatorState, ActorProcessingErr> {
        let now = Instant::now();
        let mut group = GroupState::new(
            args.group_id.clone(),
            super::assignor::DEFAULT_ASSIGNOR,
            args.settings,
            now,
        );
        group.offsets.clone_from(&args.offsets);
        let members = membership::restore(&mut group, &args.persisted, now);
        if members > 0 {
            tracing::info!(group = %args.group_id, members, group_epoch = group.group_epoch, "group loaded with its members");
        }
        myself.send_interval(COORDINATOR_TICK, || CoordinatorMsg::Tick);
        let persisted = args.persisted.clone();
        let mut state = CoordinatorState {
            args,
            stats,
            snapshot,
            group,
            parked: HashMap::new(),
            park_seq: 0,
            persisted,
            persisted_version: None,
            deleted: false,
            outbox: Vec::new(),
            published_version: None,
        };
        state.publish();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<CoordinatorMsg>,
        msg: CoordinatorMsg,
        state: &mut CoordinatorState,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        let kind = msg.kind();
        let counted = !matches!(msg, CoordinatorMsg::Tick | CoordinatorMsg::ParkDue { .. });
        match msg {
            CoordinatorMsg::Heartbeat {
                request,
                client_id,
                host,
                reply,
            } => state.heartbeat(&myself, &request, &client_id, &host, reply),
            CoordinatorMsg::Commit { request, reply } => {
                let answer = state.commit(request).await;
                let _ = reply.send(answer);
            }
            CoordinatorMsg::FetchOffsets { request, reply } => {
                let _ = reply.send(Ok(state.fetch_offsets(&request)));
            }
            CoordinatorMsg::Describe { reply } => state.describe(reply),
            CoordinatorMsg::Delete { reply } => {
                let answer = state.delete().await;
                let deleted = answer.is_ok();
                let _ = reply.send(answer);
                if deleted {
                    myself.stop(Some("group deleted".into()));
                }
            }
            CoordinatorMsg::Reset { request, reply } => {
                let _ = reply.send(state.reset(request).await);
            }
            CoordinatorMsg::Tick => {
                if state.tick().await {
                    myself.stop(Some("group expired".into()));
                }
            }
            CoordinatorMsg::ParkDue { member_id, seq } => {
                if state.parked.get(&member_id).is_some_and(|p| p.seq == seq) {
                    let parked = state.parked.remove(&member_id).expect("checked above");
                    let answer = if state.group.members.contains_key(&member_id) {
                        Ok(state.group.answer_for(&member_id))
                    } else {
                        Err(fenced(&member_id))
                    };
                    state.outbox.push((parked.reply, answer));
                }
            }
        }
        state.answer_parked();
        let written = state.persist().await;
        let outbox = std::mem::take(&mut state.outbox);
        if let Err(refusal) = written {
            for (reply, _) in outbox {
                // The member retries, here or at the next coordinator.
                let _ = reply.send(Err(refusal.clone()));
            }
            tracing::warn!(group = %state.args.group_id, code = refusal.0.name(), reason = %refusal.1, "group membership not written; reloading the group from the log");
            return Err(PersistFailed {
                group: state.args.group_id.clone(),
                code: refusal.0,
                reason: refusal.1,
            }
            .into());
        }
        for (reply, answer) in outbox {
            // A session that went away does not need its answer.
            let _ = reply.send(answer);
        }
        state.publish();
        state.stats.time(kind, started.elapsed());
        if counted {
            state.stats.handled();
        } else {
            state.stats.handled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CoordinatorMsg>,
        state: &mut CoordinatorState,
    ) -> Result<(), ActorProcessingErr> {
        // A coordinator stops with members only when its offsets partition moved away (a
        // deleted or expired group has none): their parked heartbeats are told to find the
        // new coordinator, where their membership was replayed. A dropped session is ignored.
        for (_, parked) in state.parked.drain() {
            let _ = parked.reply.send(Err((
                ErrorCode::NotCoordinator,
                "the group's coordinator moved; find it again".into(),
            )));
        }
        state.args.registry.remove_group(&state.args.group_id);
        state.args.directory.unregister(&state.args.id);
        Ok(())
    }
}

fn fenced(member_id: &str) -> Refusal {
    (
        ErrorCode::FencedMemberEpoch,
        format!("member {member_id} was removed from the group; join again"),
    )
}

impl CoordinatorState {
    /// Partition counts of the topics the group's members subscribe to (or, with `all`, of
    /// every topic).
    fn counts(&self) -> BTreeMap<String, u32> {
        let image = self.args.image.borrow();
        let subscribed: BTreeSet<&String> = self
            .group
            .members
            .values()
            .flat_map(|m| m.subscribed.iter())
            .collect();
        subscribed
            .into_iter()
            .filter_map(|t| {
                image
                    .topics
                    .get(t)
                    .map(|topic| (t.clone(), topic.partitions.len() as u32))
            })
            .collect()
    }

    fn heartbeat(
        &mut self,
        myself: &ActorRef<CoordinatorMsg>,
        request: &ConsumerGroupHeartbeatRequest,
        client_id: &str,
        host: &str,
        reply: Reply<ConsumerGroupHeartbeatResponse>,
    ) {
        // A new heartbeat of a member answers its parked one first (a client sends one at a
        // time, so this happens only after a client gave up waiting).
        if let Some(old) = self.parked.remove(&request.member_id)
            && self.group.members.contains_key(&request.member_id)
        {
            let answer = self.group.answer_for(&request.member_id);
            self.outbox.push((old.reply, Ok(answer)));
        }
        let mut counts = self.counts();
        if let Some(topics) = &request.subscribed_topics {
            let image = self.args.image.borrow();
            for t in topics {
                if let Some(topic) = image.topics.get(t) {
                    counts.insert(t.clone(), topic.partitions.len() as u32);
                }
            }
        }
        let now = Instant::now();
        match self.group.heartbeat(request, client_id, host, now, &counts) {
            Ok(HeartbeatOutcome::Answer(answer)) => {
                self.outbox.push((reply, Ok(answer)));
            }
            Ok(HeartbeatOutcome::Park { member_id, wait }) => {
                self.park_seq += 1;
                let seq = self.park_seq;
                self.parked.insert(member_id.clone(), Parked { seq, reply });
                myself.send_after(wait, move || CoordinatorMsg::ParkDue { member_id, seq });
            }
            Err(refusal) => {
                tracing::debug!(group = %self.args.group_id, code = refusal.0.name(), reason = %refusal.1, "heartbeat refused");
                self.outbox.push((reply, Err(refusal)));
            }
        }
    }

    /// Answers parked heartbeats whose members have news, and those of removed members.
    fn answer_parked(&mut self) {
        let due: Vec<String> = self
            .parked
            .keys()
            .filter(|m| !self.group.members.contains_key(*m) || self.group.has_news(m))
            .cloned()
            .collect();
        for member_id in due {
            let parked = self.parked.remove(&member_id).expect("listed above");
            let answer = if self.group.members.contains_key(&member_id) {
                Ok(self.group.answer_for(&member_id))
            } else {
                Err(fenced(&member_id))
            };
            self.outbox.push((parked.reply, answer));
        }
    }

    /// Expires members and, for an empty group past its retention, deletes it. Returns
    /// whether the coordinator should stop.
    async fn tick(&mut self) -> bool {
        let counts = self.counts();
        self.group.expire(Instant::now(), &counts);
        if self.group.members.is_empty()
            && self.group.empty_since.elapsed() > self.args.offsets_retention
        {
            let newest = self.group.offsets.values().map(|c| c.commit_ms).max();
            let retention_ms =
                u64::try_from(self.args.offsets_retention.as_millis()).unwrap_or(u64::MAX);
            if newest.is_none_or(|ms| now_ms().saturating_sub(ms) > retention_ms) {
                tracing::info!(group = %self.args.group_id, "group empty past its offsets retention; expiring its offsets");
                return match self.write_tombstones().await {
                    Ok(()) => true,
                    Err(refusal) => {
                        tracing::warn!(group = %self.args.group_id, reason = %refusal.1, "offset expiry failed; will retry");
                        false
                    }
                };
            }
        }
        false
    }

    fn offsets_handle(&self) -> Result<PartitionHandle, Refusal> {
        match self
            .args
            .partitions
            .get(OFFSETS_TOPIC, PartitionId(self.args.offsets_partition))
        {
            Some(PartitionSlot::Online(handle)) => Ok(handle),
            _ => Err((
                ErrorCode::CoordinatorNotAvailable,
                "the group's offsets partition is not online".into(),
            )),
        }
    }

    /// Appends records to the group's offsets partition (in batches of at most
    /// `PERSIST_BATCH_BYTES_MAX`, one after the other) and waits until they are below the
    /// high watermark (acks=all), so they survive a change of the partition's leader.
    async fn append(&self, records: &[Record]) -> Result<(), Refusal> {
        let handle = self.offsets_handle()?;
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        let mut rest = records;
        while !rest.is_empty() {
            let mut bytes = 0usize;
            let mut count = 0usize;
            for (key, value) in rest {
                let size = key.len() + value.as_ref().map_or(0, Vec::len) + RECORD_OVERHEAD_BYTES;
                if count > 0 && bytes + size > PERSIST_BATCH_BYTES_MAX {
                    break;
                }
                bytes += size;
                count += 1;
            }
            let (batch, later) = rest.split_at(count);
            rest = later;
            let mut builder = BatchBuilder::new(Compression::None);
            for (key, value) in batch {
                builder.push(Some(key), value.as_deref(), &[], now);
            }
            handle
                .produce(builder.build(), Acks::All, None)
                .await
                .map_err(|e| {
                    (
                        ErrorCode::CoordinatorNotAvailable,
                        format!("the group's records could not be written: {e}"),
                    )
                })?;
        }
        Ok(())
    }

    /// Writes the membership changes made since the last write (nothing if the group's
    /// version did not move, or once the group is deleted). A group that has never had a
    /// member or an offset writes nothing yet: a join refused, say, leaves no trace.
    async fn persist(&mut self) -> Result<(), Refusal> {
        if self.deleted || self.persisted_version == Some(self.group.version) {
            return Ok(());
        }
        let next = Persisted::of(&self.group);
        let untouched = self.persisted == Persisted::default()
            && self.group.members.is_empty()
            && self.group.offsets.is_empty();
        if !untouched {
            let records = self.persisted.changes(&next, &self.args.group_id);
            if !records.is_empty() {
                self.append(&records).await?;
            }
            self.persisted = next;
        }
        self.persisted_version = Some(self.group.version);
        Ok(())
    }

    async fn commit(
        &mut self,
        request: OffsetCommitRequest,
    ) -> Result<OffsetCommitResponse, Refusal> {
        let partitions: Vec<TopicPartition> = request
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.clone(), p.partition.0))
            })
            .collect();
        let mut verdicts =
            self.group
                .check_commit(&request.member_id, request.member_epoch, &partitions)?;
        {
            let image = self.args.image.borrow();
            for (tp, verdict) in partitions.iter().zip(verdicts.iter_mut()) {
                if verdict.is_some() {
                    continue;
                }
                match image.topics.get(&tp.0) {
                    None => {
                        *verdict = Some((ErrorCode::UnknownTopic, format!("no topic {}", tp.0)))
                    }
                    Some(topic) if tp.1 as usize >= topic.partitions.len() => {
                        *verdict = Some((
                            ErrorCode::UnknownPartition,
                            format!("topic {} has no partition {}", tp.0, tp.1),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        let commit_ms = now_ms();
        let mut records = Vec::new();
        let mut accepted: Vec<(TopicPartition, Committed)> = Vec::new();
        let mut index = 0;
        for topic in &request.topics {
            for p in &topic.partitions {
                if verdicts[index].is_none() {
                    let committed = Committed {
                        offset: p.offset,
                        leader_epoch: p.leader_epoch,
                        metadata: p.metadata.clone(),
                        commit_ms,
                    };
                    records.push((
                        GroupRecordKey::Offset {
                            group: self.args.group_id.clone(),
                            topic: topic.topic.clone(),
                            partition: p.partition.0,
                        }
                        .encode(),
                        Some(
                            OffsetValue {
                                v: GROUP_RECORD_VERSION,
                                offset: p.offset,
                                leader_epoch: p.leader_epoch,
                                metadata: p.metadata.clone(),
                                commit_ms,
                            }
                            .encode(),
                        ),
                    ));
                    accepted.push(((topic.topic.clone(), p.partition.0), committed));
                }
                index += 1;
            }
        }
        if !records.is_empty() {
            // The group record (a group created by this commit) follows in the membership
            // write after the message.
            self.append(&records).await?;
            self.group.offsets.extend(accepted);
            self.group.version += 1;
        }
        let mut index = 0;
        let topics = request
            .topics
            .iter()
            .map(|t| PartitionResults {
                topic: t.topic.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| {
                        let error = verdicts[index].as_ref().map(error);
                        index += 1;
                        PartitionResult {
                            partition: p.partition,
                            error,
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(OffsetCommitResponse { topics })
    }

    fn fetch_offsets(&self, request: &OffsetFetchRequest) -> OffsetFetchResponse {
        let wanted: Vec<TopicPartition> = match &request.topics {
            Some(topics) => super::state::from_wire(topics).into_iter().collect(),
            None => self.group.offsets.keys().cloned().collect(),
        };
        let mut topics: Vec<CommittedTopic> = Vec::new();
        for tp in wanted {
            let committed = self.group.offsets.get(&tp);
            let entry = CommittedOffset {
                partition: PartitionId(tp.1),
                offset: committed.map(|c| c.offset),
                leader_epoch: committed.and_then(|c| c.leader_epoch),
                metadata: committed.map(|c| c.metadata.clone()).unwrap_or_default(),
            };
            match topics.last_mut() {
                Some(last) if last.topic == tp.0 => last.partitions.push(entry),
                _ => topics.push(CommittedTopic {
                    topic: tp.0,
                    partitions: vec![entry],
                }),
            }
        }
        OffsetFetchResponse { topics }
    }

    /// Answers DescribeGroups: the group as it is now, with lag read on a task of its own, so
    /// that heartbeats and commits go on while other nodes are asked for their partitions'
    /// high watermarks (at most `REMOTE_OFFSETS_TIMEOUT`). A partition whose offsets cannot be
    /// read keeps its high watermark and lag empty.
    fn describe(&self, reply: Reply<GroupDescription>) {
        let owners = self.group.owners();
        let mut partitions: BTreeSet<TopicPartition> = self.group.subscribed_partitions();
        partitions.extend(self.group.offsets.keys().cloned());
        let mut offsets = Vec::with_capacity(partitions.len());
        let mut queries = Vec::with_capacity(partitions.len());
        for tp in partitions {
            let committed = self.group.offsets.get(&tp).map(|c| c.offset);
            queries.push(PartitionOffsetsQuery {
                topic: tp.0.clone(),
                partition: PartitionId(tp.1),
                offset_for_timestamp_ms: None,
                // The age of the oldest unconsumed event, if there is one.
                timestamp_of_offset: committed,
            });
            offsets.push(PartitionLag {
                topic: tp.0.clone(),
                partition: PartitionId(tp.1),
                committed_offset: committed,
                owner: owners.get(&tp).cloned(),
                ..PartitionLag::default()
            });
        }
        let description = GroupDescription {
            group_id: self.args.group_id.clone(),
            error: None,
            state: self.group.state_name().to_owned(),
            group_epoch: self.group.group_epoch,
            assignment_epoch: self.group.assignment_epoch,
            assignor: self.group.assignor.name().to_owned(),
            members: self.group.describe_members(),
            offsets,
            rebalances: self.group.rebalances.iter().cloned().collect(),
        };
        let reader = self.args.offsets_reader.clone();
        // The task is the consequence of one admitted DescribeGroups and ends within the
        // reader's bound; a dropped reply (the session went away) is ignored.
        tokio::spawn(async move {
            let mut description = description;
            let read = reader.read(&queries).await;
            for (lag, offsets) in description.offsets.iter_mut().zip(read) {
                if let Ok(offsets) = offsets {
                    fill_lag(lag, &offsets, now_ms());
                }
            }
            let _ = reply.send(Ok(description));
        });
    }

    fn check_empty(&self, what: &str) -> Result<(), Refusal> {
        if self.group.members.is_empty() {
            Ok(())
        } else {
            Err((
                ErrorCode::NonEmptyGroup,
                format!(
                    "the group has {} members; {what} needs an empty group",
                    self.group.members.len()
                ),
            ))
        }
    }

    async fn write_tombstones(&mut self) -> Result<(), Refusal> {
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .group
            .offsets
            .keys()
            .map(|(topic, partition)| {
                (
                    GroupRecordKey::Offset {
                        group: self.args.group_id.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                    }
                    .encode(),
                    None,
                )
            })
            .collect();
        records.extend(self.persisted.member_tombstones(&self.args.group_id));
        records.push((
            GroupRecordKey::Group {
                group: self.args.group_id.clone(),
            }
            .encode(),
            None,
        ));
        self.append(&records).await?;
        self.group.offsets.clear();
        self.group.version += 1;
        self.deleted = true;
        Ok(())
    }

    async fn delete(&mut self) -> Result<(), Refusal> {
        self.check_empty("deleting it")?;
        self.write_tombstones().await?;
        tracing::info!(group = %self.args.group_id, "group deleted");
        Ok(())
    }

    async fn reset(
        &mut self,
        request: ResetOffsetsRequest,
    ) -> Result<ResetOffsetsResponse, Refusal> {
        self.check_empty("resetting its offsets")?;
        let target = request
            .target()
            .map_err(|e| (ErrorCode::InvalidRequest, e.to_string()))?;
        let count = self
            .args
            .image
            .borrow()
            .topics
            .get(&request.topic)
            .map(|t| t.partitions.len() as u32)
            .ok_or_else(|| {
                (
                    ErrorCode::UnknownTopic,
                    format!("no topic {}", request.topic),
                )
            })?;
        let partitions: Vec<u32> = match &request.partitions {
            Some(list) => list.iter().map(|p| p.0).collect(),
            None => (0..count).collect(),
        };
        let offset_for_timestamp_ms = match target {
            ResetTo::Timestamp(t) => Some(t),
            _ => None,
        };
        let queries: Vec<PartitionOffsetsQuery> = partitions
            .iter()
            .filter(|&&p| p < count)
            .map(|&p| PartitionOffsetsQuery {
                topic: request.topic.clone(),
                partition: PartitionId(p),
                offset_for_timestamp_ms,
                timestamp_of_offset: None,
            })
            .collect();
        // Read in the handler: the group is empty (checked above), the offsets are committed
        // right after, and the reader is bounded by `REMOTE_OFFSETS_TIMEOUT`.
        let mut read = self.args.offsets_reader.read(&queries).await.into_iter();
        let mut results = Vec::new();
        let mut commits = Vec::new();
        for p in partitions {
            let tp = (request.topic.clone(), p);
            let outcome: Result<Offset, Refusal> = if p >= count {
                Err((
                    ErrorCode::UnknownPartition,
                    format!("topic {} has no partition {p}", request.topic),
                ))
            } else {
                read.next()
                    .expect("one answer per query")
                    .map(|offsets| reset_offset(target, &offsets))
            };
            match outcome {
                Ok(offset) => {
                    commits.push((tp, offset));
                    results.push(ResetPartition {
                        partition: PartitionId(p),
                        offset: Some(offset),
                        error: None,
                    });
                }
                Err(refusal) => {
                    tracing::info!(group = %self.args.group_id, topic = %request.topic, partition = p, code = ?refusal.0, reason = %refusal.1, "offset not reset");
                    results.push(ResetPartition {
                        partition: PartitionId(p),
                        offset: None,
                        error: Some(error(&refusal)),
                    });
                }
            }
        }
        if !request.dry_run && !commits.is_empty() {
            let by_topic = vltava_messages::protocol::OffsetCommitTopic {
                topic: request.topic.clone(),
                partitions: commits
                    .iter()
                    .map(
                        |(tp, offset)| vltava_messages::protocol::OffsetCommitPartition {
                            partition: PartitionId(tp.1),
                            offset: *offset,
                            leader_epoch: None,
                            metadata: "reset".into(),
                        },
                    )
                    .collect(),
            };
            self.commit(OffsetCommitRequest {
                group_id: self.args.group_id.clone(),
                member_id: String::new(),
                member_epoch: -1,
                topics: vec![by_topic],
            })
            .await?;
        }
        Ok(ResetOffsetsResponse {
            partitions: results,
        })
    }

    /// Publishes the group for the admin endpoint, when it changed since the last time: most
    /// messages (heartbeats with nothing new, ticks) change nothing an observer sees, and
    /// rebuilding the snapshot for each was most of an idle group's cost.
    fn publish(&mut self) {
        if self.published_version == Some(self.group.version) {
            return;
        }
        self.published_version = Some(self.group.version);
        let mut snapshot = self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        snapshot.state = self.group.state_name();
        snapshot.assignor = self.group.assignor.name();
        snapshot.group_epoch = self.group.group_epoch;
        snapshot.assignment_epoch = self.group.assignment_epoch;
        snapshot.members = self.group.describe_members();
        snapshot.owners = self.group.owners();
        snapshot.offsets = self
            .group
            .offsets
            .iter()
            .map(|(tp, c)| (tp.clone(), c.offset))
            .collect();
        snapshot.subscribed = self.group.subscribed_partitions();
        snapshot.rebalances = self.group.rebalances.iter().take(5).cloned().collect();
    }
}

/// Fills a partition's high watermark and lag from its offsets: lag counts from the committed
/// offset to the high watermark, and its age from the oldest unconsumed event's timestamp
/// (0 without lag, and when that event could not be read).
fn fill_lag(lag: &mut PartitionLag, offsets: &PartitionOffsets, now_ms: u64) {
    lag.high_watermark = Some(offsets.high_watermark);
    if let Some(committed) = lag.committed_offset {
        let behind = offsets.high_watermark.0.saturating_sub(committed.0);
        lag.lag = Some(behind);
        lag.lag_ms = Some(match offsets.timestamp_of_offset_ms {
            Some(timestamp) if behind > 0 => {
                now_ms.saturating_sub(u64::try_from(timestamp).unwrap_or(0))
            }
            _ => 0,
        });
    }
}

/// Where a reset to `target` puts a partition with these offsets.
fn reset_offset(target: ResetTo, offsets: &PartitionOffsets) -> Offset {
    let earliest = offsets.log_start_offset;
    let latest = offsets.high_watermark;
    match target {
        ResetTo::Earliest => earliest,
        ResetTo::Latest => latest,
        // Clamped to what the log holds, as Kafka's tool does.
        ResetTo::Offset(o) => Offset(o.0.clamp(earliest.0, latest.0)),
        // No committed event that recent: the end, as ListOffsets' timestamp spec implies.
        ResetTo::Timestamp(_) => offsets.offset_for_timestamp.unwrap_or(latest),
    }
}
