//! Consumer groups: the GroupManager (the coordinator supervisor), one GroupCoordinator per
//! group, the assignors, the group state machine, `membership` (a group's members as records of
//! the offsets topic, and back), and `offsets`: how coordinators read the offsets of the
//! partitions a group consumes, led here or (through the `RemoteOffsets` the node gives them
//! in a cluster) by other nodes, and how this node answers other nodes' coordinators.
//!
//! A group's commits and membership live in one partition of `__consumer_offsets` (FNV-1a of
//! the group id, modulo the topic's partition count). The node that leads that partition
//! coordinates the group: when the MetadataApplier makes this node the partition's leader it
//! asks the manager to load it, and when the node stops leading it (or stops running it), to
//! unload it (stop those coordinators, whose waiting heartbeats are answered `NotCoordinator`).
//! On one node this happens at start-up; in a cluster coordinators move with the partition's
//! leadership the same way.
//!
//! Loading replays the partition into per-group offsets and membership and starts a
//! coordinator for every group found. It waits first for the partition's high watermark to
//! reach the log end the leader had when the load began (at least its epoch start: what the
//! previous leader wrote, committed or about to be): only then is everything a previous
//! coordinator acknowledged below the high watermark and read. Until the replay is done the
//! group's requests are answered `CoordinatorLoadInProgress` (retriable). A replay that cannot
//! finish (the high watermark does not get there within `LOAD_WAIT`, the partition refuses) is
//! tried again every `LOAD_RETRY_INTERVAL` for as long as the node leads the partition: groups
//! never start from a partial or empty replay, which would answer members and OffsetFetch
//! from state older than what they were told.

pub mod assignor;
pub mod coordinator;
pub mod membership;
pub mod offsets;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{oneshot, watch};
use vltava_messages::batch::split_batches;
use vltava_messages::group_records::{
    GroupRecordKey, GroupValue, MemberValue, OFFSETS_TOPIC, OffsetValue, offsets_partition_for,
};
use vltava_messages::protocol::{ErrorCode, OffsetSpec};
use vltava_messages::{Offset, PartitionId};

use self::assignor::TopicPartition;
use self::coordinator::{CoordinatorArgs, CoordinatorHandle, GroupCoordinator};
use self::membership::Persisted;
use self::offsets::OffsetsReader;
use self::state::{Committed, GroupSettings, Refusal};
use crate::directory::{ActorDirectory, ActorKind, ActorStats};
use crate::metadata::MetadataImage;
use crate::partition::PartitionError;
use crate::partition::supervisor::{PartitionRegistry, PartitionSlot};

/// Partitions of `__consumer_offsets` when the node creates it.
pub const OFFSETS_TOPIC_PARTITIONS_DEFAULT: u32 = 8;
/// Replicas of each `__consumer_offsets` partition when a cluster creates it, at most the
/// cluster's size (Kafka's `offsets.topic.replication.factor`, also 3): with the default
/// `min.insync.replicas` (a majority, 2) a committed offset or membership change is on two
/// nodes before it is answered, and a group's coordinator can move to either when its node
/// fails. A single node uses 1.
pub const OFFSETS_TOPIC_REPLICATION_FACTOR_DEFAULT: u16 = 3;
/// Segment size of the offsets topic: small, so compaction can clean sealed segments early.
pub const OFFSETS_TOPIC_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// How long an empty group keeps its committed offsets (Kafka's default: 7 days).
pub const OFFSETS_RETENTION_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Bytes read per fetch while replaying an offsets partition.
pub const LOAD_READ_BYTES: u32 = 1024 * 1024;
/// Messages the manager queues before its handle answers `Overloaded`.
pub const MANAGER_MAILBOX_MAX: u64 = 4096;
/// How long one replay attempt waits for the offsets partition's high watermark to reach the
/// log end it saw as the load began. A new leader's high watermark gets there once its
/// followers fetch it (one fetch round, milliseconds); 5 s covers a follower reconnecting, and
/// past it the attempt ends and another starts (on a log end that may have moved, and with
/// the log message saying why).
pub const LOAD_WAIT: Duration = Duration::from_secs(5);
/// The pause between two replay attempts of one load. Short, since members wait on it
/// (`CoordinatorLoadInProgress`); a failing attempt is a few cheap calls to the partition.
pub const LOAD_RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// Failed replay attempts of one load logged at warning level: the first few say what is
/// wrong, and after that one in this many, so a partition that cannot be loaded for minutes
/// (too few in-sync replicas) does not flood the log.
pub const LOAD_FAILURES_LOGGED: u32 = 5;

/// What a coordinator publishes for the admin endpoint (defined beside the other published
/// states in `directory`, which lists it without importing this module).
pub use crate::directory::GroupSnapshot;

/// Where an offsets partition is on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    /// Being replayed by the load numbered `generation`: a replay of an earlier load (the
    /// partition was unloaded and loaded again meanwhile) is dropped when it finishes.
    Loading {
        generation: u64,
    },
    Loaded,
}

#[derive(Debug, Default)]
struct Registry {
    partitions: HashMap<u32, Load>,
    groups: HashMap<String, CoordinatorHandle>,
}

/// The coordinators of this node by group, and which offsets partitions are loaded; written
/// by the manager and the coordinators, read by sessions.
#[derive(Clone, Debug, Default)]
pub struct GroupRegistry {
    inner: Arc<RwLock<Registry>>,
}

impl GroupRegistry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn remove_group(&self, group_id: &str) {
        self.write().groups.remove(group_id);
    }

    /// Whether load `generation` of `partition` is still the one in progress.
    fn is_loading(&self, partition: u32, generation: u64) -> bool {
        self.read().partitions.get(&partition) == Some(&Load::Loading { generation })
    }

    /// The ids of the groups coordinated here.
    #[must_use]
    pub fn group_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.read().groups.keys().cloned().collect();
        ids.sort();
        ids
    }
}

#[derive(Debug)]
pub enum ManagerMsg {
    Load {
        partition: u32,
    },
    Unload {
        partition: u32,
    },
    /// A replay finished.
    Loaded {
        partition: u32,
        generation: u64,
        /// When the load began, for the log.
        started: std::time::Instant,
        groups: BTreeMap<String, LoadedGroup>,
    },
    /// Start the coordinator of a new group.
    Create {
        group_id: String,
        reply: oneshot::Sender<Result<CoordinatorHandle, Refusal>>,
    },
}

/// What replaying an offsets partition found for one group.
#[derive(Clone, Debug, Default)]
pub struct LoadedGroup {
    pub offsets: BTreeMap<TopicPartition, Committed>,
    /// The group record and the member records.
    pub persisted: Persisted,
}

/// Why one replay attempt of an offsets partition did not finish (it is tried again while
/// the node leads the partition).
#[derive(Debug, thiserror::Error)]
enum ReplayError {
    #[error("the offsets partition is not online here")]
    NotOnline,
    #[error(transparent)]
    Partition(#[from] PartitionError),
    #[error("the high watermark {} did not reach the log end {} within {wait:?}", high_watermark.0, log_end.0)]
    NotCaughtUp {
        high_watermark: Offset,
        log_end: Offset,
        wait: Duration,
    },
    #[error("the offsets partition stopped during the replay")]
    Stopped,
    #[error("a batch of the offsets partition could not be read: {0}")]
    Batch(String),
}

/// What the manager needs.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub node: String,
    pub settings: GroupSettings,
    pub offsets_retention: Duration,
    pub directory: ActorDirectory,
    pub partitions: PartitionRegistry,
    pub image: watch::Receiver<Arc<MetadataImage>>,
    /// What the coordinators read partitions' offsets with (lag, resets).
    pub offsets: OffsetsReader,
}

/// The only way to reach the GroupManager, and the sessions' way to their coordinators.
#[derive(Clone, Debug)]
pub struct GroupManagerHandle {
    actor: ActorRef<ManagerMsg>,
    stats: Arc<ActorStats>,
    registry: GroupRegistry,
    image: watch::Receiver<Arc<MetadataImage>>,
}

impl GroupManagerHandle {
    fn send(&self, msg: ManagerMsg) {
        self.stats.enqueued();
        if self.actor.send_message(msg).is_err() {
            self.stats.dequeued();
        }
    }

    /// This node now leads offsets partition `partition`: load its groups.
    pub fn load(&self, partition: u32) {
        self.send(ManagerMsg::Load { partition });
    }

    /// This node no longer leads offsets partition `partition`: stop its groups.
    pub fn unload(&self, partition: u32) {
        self.send(ManagerMsg::Unload { partition });
    }

    /// The offsets partitions, or a refusal while the offsets topic does not exist.
    pub fn offsets_partitions(&self) -> Result<u32, Refusal> {
        self.image
            .borrow()
            .topics
            .get(OFFSETS_TOPIC)
            .map(|t| t.partitions.len() as u32)
            .ok_or_else(|| {
                (
                    ErrorCode::CoordinatorNotAvailable,
                    "the offsets topic does not exist yet".into(),
                )
            })
    }

    /// The offsets partition of `group_id`.
    pub fn partition_for(&self, group_id: &str) -> Result<u32, Refusal> {
        Ok(offsets_partition_for(group_id, self.offsets_partitions()?))
    }

    /// The coordinator of `group_id` on this node, started if `create` and the group is new.
    ///
    /// # Errors
    /// `NotCoordinator` if this node does not lead the group's offsets partition,
    /// `CoordinatorLoadInProgress` while it is loading, `GroupIdNotFound` for an unknown
    /// group when not creating.
    pub async fn coordinator(
        &self,
        group_id: &str,
        create: bool,
    ) -> Result<CoordinatorHandle, Refusal> {
        let partition = self.partition_for(group_id)?;
        {
            let registry = self.registry.read();
            match registry.partitions.get(&partition) {
                None => {
                    return Err((
                        ErrorCode::NotCoordinator,
                        "this node does not coordinate the group".into(),
                    ));
                }
                Some(Load::Loading { .. }) => {
                    return Err((
                        ErrorCode::CoordinatorLoadInProgress,
                        "the group's offsets are loading".into(),
                    ));
                }
                Some(Load::Loaded) => {}
            }
            if let Some(handle) = registry.groups.get(group_id) {
                return Ok(handle.clone());
            }
        }
        if !create {
            return Err((ErrorCode::GroupIdNotFound, format!("no group {group_id}")));
        }
        if self.stats.depth() >= MANAGER_MAILBOX_MAX {
            return Err((ErrorCode::Overloaded, "the group manager is busy".into()));
        }
        let (reply, answer) = oneshot::channel();
        self.send(ManagerMsg::Create {
            group_id: group_id.to_owned(),
            reply,
        });
        answer.await.unwrap_or_else(|_| {
            Err((
                ErrorCode::CoordinatorNotAvailable,
                "the group manager stopped".into(),
            ))
        })
    }

    /// The coordinators of this node.
    #[must_use]
    pub fn coordinators(&self) -> Vec<(String, CoordinatorHandle)> {
        let registry = self.registry.read();
        let mut all: Vec<(String, CoordinatorHandle)> = registry
            .groups
            .iter()
            .map(|(g, h)| (g.clone(), h.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    #[must_use]
    pub fn actor(&self) -> &ActorRef<ManagerMsg> {
        &self.actor
    }
}

#[derive(Debug)]
pub struct GroupManager;

#[derive(Debug)]
pub struct ManagerState {
    id: String,
    config: ManagerConfig,
    stats: Arc<ActorStats>,
    registry: GroupRegistry,
    /// Which offsets partition each coordinator belongs to.
    children: HashMap<ractor::ActorId, (String, u32)>,
    /// The number of the next load.
    next_generation: u64,
}

impl GroupManager {
    /// Starts the manager under `parent`.
    pub async fn start(
        id: String,
        parent: &str,
        config: ManagerConfig,
        supervisor: Option<ractor::ActorCell>,
    ) -> Result<GroupManagerHandle, ractor::SpawnErr> {
        let stats = config
            .directory
            .register(&id, ActorKind::GroupManager, Some(parent));
        let registry = GroupRegistry::default();
        let image = config.image.clone();
        let args = (id.clone(), config, Arc::clone(&stats), registry.clone());
        let (actor, _) = match supervisor {
            Some(cell) => Actor::spawn_linked(Some(id), GroupManager, args, cell).await?,
            None => Actor::spawn(Some(id), GroupManager, args).await?,
        };
        Ok(GroupManagerHandle {
            actor,
            stats,
            registry,
            image,
        })
    }
}

impl Actor for GroupManager {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = (String, ManagerConfig, Arc<ActorStats>, GroupRegistry);

    async fn pre_start(
        &self,
        _myself: ActorRef<ManagerMsg>,
        (id, config, stats, registry): Self::Arguments,
    ) -> Result<ManagerState, ActorProcessingErr> {
        Ok(ManagerState {
            id,
            config,
            stats,
            registry,
            children: HashMap::new(),
            next_generation: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ManagerMsg>,
        msg: ManagerMsg,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        let started = std::time::Instant::now();
        let kind = match &msg {
            ManagerMsg::Load { .. } => "Load",
            ManagerMsg::Unload { .. } => "Unload",
            ManagerMsg::Loaded { .. } => "Loaded",
            ManagerMsg::Create { .. } => "Create",
        };
        match msg {
            ManagerMsg::Load { partition } => state.load(&myself, partition),
            ManagerMsg::Unload { partition } => state.unload(partition).await,
            ManagerMsg::Loaded {
                partition,
                generation,
                started,
                groups,
            } => {
                state
                    .loaded(&myself, partition, generation, started, groups)
                    .await;
            }
            ManagerMsg::Create { group_id, reply } => {
                let _ = reply.send(state.create(&myself, &group_id).await);
            }
        }
        state.stats.time(kind, started.elapsed());
        state.stats.handled();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ManagerMsg>,
        event: SupervisionEvent,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some((group_id, partition)) = state.children.remove(&cell.get_id()) {
                    state.registry.remove_group(&group_id);
                    state.config.directory.record_failure(
                        &coordinator_id(&state.config.node, &group_id),
                        &error.to_string(),
                        true,
                    );
                    // Offsets and membership come back from the log, which holds everything
                    // the coordinator answered from (it answers only once its writes are
                    // durable). A partition unloaded meanwhile is not loaded again here: this
                    // node no longer leads it.
                    if state.registry.read().partitions.contains_key(&partition) {
                        tracing::error!(group = %group_id, %error, "group coordinator failed; reloading its offsets partition");
                        state.load(&myself, partition);
                    } else {
                        tracing::info!(group = %group_id, %error, "group coordinator failed after its offsets partition was unloaded");
                    }
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some((group_id, _)) = state.children.remove(&cell.get_id()) {
                    state.registry.remove_group(&group_id);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ManagerMsg>,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        let handles: Vec<CoordinatorHandle> = state
            .registry
            .write()
            .groups
            .drain()
            .map(|(_, h)| h)
            .collect();
        for handle in handles {
            let _ = handle
                .actor()
                .stop_and_wait(None, Some(Duration::from_secs(10)))
                .await;
        }
        state.config.directory.unregister(&state.id);
        Ok(())
    }
}

fn coordinator_id(node: &str, group_id: &str) -> String {
    format!("{node}/group/{group_id}")
}

impl ManagerState {
    /// Starts load `generation` of `partition`: a task replays it, attempt after attempt
    /// (each bounded by `LOAD_WAIT`, `LOAD_RETRY_INTERVAL` apart) until one finishes or the
    /// load is no longer the current one (the partition was unloaded, or loaded again). The
    /// loop has no count bound on purpose: a coordinator must not start from less than the
    /// whole log, and the node's leadership of the partition bounds it.
    fn load(&mut self, myself: &ActorRef<ManagerMsg>, partition: u32) {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.registry
            .write()
            .partitions
            .insert(partition, Load::Loading { generation });
        let partitions = self.config.partitions.clone();
        let registry = self.registry.clone();
        let myself = myself.clone();
        let stats = Arc::clone(&self.stats);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut failures = 0u32;
            let groups = loop {
                if !registry.is_loading(partition, generation) {
                    return;
                }
                match replay(&partitions, partition).await {
                    Ok(groups) => break groups,
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        if failures <= LOAD_FAILURES_LOGGED
                            || failures.is_multiple_of(LOAD_FAILURES_LOGGED * 10)
                        {
                            tracing::warn!(partition, failures, %error, "offsets partition not loaded yet; trying again");
                        }
                        tokio::time::sleep(LOAD_RETRY_INTERVAL).await;
                    }
                }
            };
            stats.enqueued();
            if myself
                .send_message(ManagerMsg::Loaded {
                    partition,
                    generation,
                    started,
                    groups,
                })
                .is_err()
            {
                stats.dequeued();
            }
        });
    }

    async fn loaded(
        &mut self,
        myself: &ActorRef<ManagerMsg>,
        partition: u32,
        generation: u64,
        started: std::time::Instant,
        groups: BTreeMap<String, LoadedGroup>,
    ) {
        if !self.registry.is_loading(partition, generation) {
            return; // Unloaded (or loaded again) meanwhile.
        }
        let count = groups.len();
        for (group_id, loaded) in groups {
            if self.registry.read().groups.contains_key(&group_id) {
                continue; // Its coordinator survived (another group of the partition failed).
            }
            if let Err(e) = self.spawn(myself, &group_id, partition, loaded).await {
                tracing::error!(group = %group_id, error = %e, "group coordinator did not start");
            }
        }
        self.registry
            .write()
            .partitions
            .insert(partition, Load::Loaded);
        tracing::info!(
            partition,
            groups = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "offsets partition loaded"
        );
    }

    async fn unload(&mut self, partition: u32) {
        self.registry.write().partitions.remove(&partition);
        let doomed: Vec<(ractor::ActorId, String)> = self
            .children
            .iter()
            .filter(|(_, (_, p))| *p == partition)
            .map(|(id, (g, _))| (*id, g.clone()))
            .collect();
        for (actor_id, group_id) in doomed {
            self.children.remove(&actor_id);
            let handle = self.registry.write().groups.remove(&group_id);
            if let Some(handle) = handle {
                let _ = handle
                    .actor()
                    .stop_and_wait(None, Some(Duration::from_secs(10)))
                    .await;
            }
        }
        tracing::info!(partition, "offsets partition unloaded");
    }

    async fn create(
        &mut self,
        myself: &ActorRef<ManagerMsg>,
        group_id: &str,
    ) -> Result<CoordinatorHandle, Refusal> {
        if let Some(handle) = self.registry.read().groups.get(group_id) {
            return Ok(handle.clone());
        }
        let partitions = self
            .config
            .image
            .borrow()
            .topics
            .get(OFFSETS_TOPIC)
            .map(|t| t.partitions.len() as u32)
            .unwrap_or(0);
        let partition = offsets_partition_for(group_id, partitions);
        if self.registry.read().partitions.get(&partition) != Some(&Load::Loaded) {
            return Err((
                ErrorCode::NotCoordinator,
                "this node does not coordinate the group".into(),
            ));
        }
        self.spawn(myself, group_id, partition, LoadedGroup::default())
            .await
            .map_err(|e| (ErrorCode::CoordinatorNotAvailable, e.to_string()))
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<ManagerMsg>,
        group_id: &str,
        partition: u32,
        loaded: LoadedGroup,
    ) -> Result<CoordinatorHandle, ractor::SpawnErr> {
        let args = CoordinatorArgs {
            id: coordinator_id(&self.config.node, group_id),
            parent: self.id.clone(),
            group_id: group_id.to_owned(),
            offsets_partition: partition,
            offsets: loaded.offsets,
            persisted: loaded.persisted,
            settings: self.config.settings,
            offsets_retention: self.config.offsets_retention,
            directory: self.config.directory.clone(),
            partitions: self.config.partitions.clone(),
            image: self.config.image.clone(),
            registry: self.registry.clone(),
            offsets_reader: self.config.offsets.clone(),
        };
        let handle = GroupCoordinator::start(args, myself.get_cell()).await?;
        self.children
            .insert(handle.actor().get_id(), (group_id.to_owned(), partition));
        self.registry
            .write()
            .groups
            .insert(group_id.to_owned(), handle.clone());
        Ok(handle)
    }
}

/// Reads an offsets partition from its start to its high watermark and folds its records
/// into per-group state: the newest value per key wins, a tombstone removes the key (a group
/// tombstone, the whole group). It first waits (at most `LOAD_WAIT`) for the high watermark to
/// reach the log end the partition has now: a new leader's log may hold records its old
/// leader acknowledged that its own high watermark does not cover yet, and a coordinator's
/// failed write may have left records that become committed later; either way they are read
/// before anyone is answered.
async fn replay(
    partitions: &PartitionRegistry,
    partition: u32,
) -> Result<BTreeMap<String, LoadedGroup>, ReplayError> {
    let handle = match partitions.get(OFFSETS_TOPIC, PartitionId(partition)) {
        Some(PartitionSlot::Online(handle)) => handle,
        _ => return Err(ReplayError::NotOnline),
    };
    let log_end = handle.offsets().await?.log_end_offset;
    let mut high_watermark = handle.high_watermark();
    let caught_up = tokio::time::timeout(LOAD_WAIT, high_watermark.wait_for(|hw| *hw >= log_end))
        .await
        .map(|waited| waited.map(|_| ()));
    match caught_up {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(ReplayError::Stopped),
        Err(_) => {
            return Err(ReplayError::NotCaughtUp {
                high_watermark: *high_watermark.borrow(),
                log_end,
                wait: LOAD_WAIT,
            });
        }
    }
    let end = *high_watermark.borrow();
    // Also the check that the partition answers offset queries: it does only as the leader,
    // once its high watermark reached its epoch start (at most the log end waited for).
    let mut offset = handle
        .list_offset(OffsetSpec::Earliest, None)
        .await?
        .offset
        .unwrap_or(end);
    let mut groups: BTreeMap<String, LoadedGroup> = BTreeMap::new();
    let mut records_read = 0u64;
    while offset < end {
        let read = handle.fetch(offset, LOAD_READ_BYTES, None).await?;
        if read.records.is_empty() {
            break;
        }
        for batch in split_batches(&read.records) {
            let batch = batch.map_err(|e| ReplayError::Batch(e.to_string()))?;
            offset = batch.header.next_offset();
            for record in batch
                .records()
                .map_err(|e| ReplayError::Batch(e.to_string()))?
            {
                records_read += 1;
                let Some(key) = record.key.as_deref() else {
                    continue;
                };
                let key = match GroupRecordKey::decode(key) {
                    Ok(key) => key,
                    Err(e) => {
                        tracing::warn!(partition, offset = record.offset.0, error = %e, "skipping an unreadable offsets record");
                        continue;
                    }
                };
                fold(&mut groups, key, record.value.as_deref());
            }
        }
    }
    groups.retain(|_, g| {
        !g.offsets.is_empty() || g.persisted.group.is_some() || !g.persisted.members.is_empty()
    });
    tracing::debug!(
        partition,
        records_read,
        groups = groups.len(),
        "offsets partition replayed"
    );
    Ok(groups)
}

/// Folds one record of the offsets topic into the groups replayed so far.
fn fold(groups: &mut BTreeMap<String, LoadedGroup>, key: GroupRecordKey, value: Option<&[u8]>) {
    if let (GroupRecordKey::Group { group: id }, None) = (&key, value) {
        groups.remove(id);
    } else {
        let group = groups.entry(key.group().to_owned()).or_default();
        fold_into(group, key, value);
    }
}

/// Folds one record of the offsets topic (other than a group tombstone) into its group.
fn fold_into(group: &mut LoadedGroup, key: GroupRecordKey, value: Option<&[u8]>) {
    match (key, value) {
        (
            GroupRecordKey::Offset {
                topic, partition, ..
            },
            Some(value),
        ) => match OffsetValue::decode(value) {
            Ok(v) => {
                group.offsets.insert(
                    (topic, partition),
                    Committed {
                        offset: v.offset,
                        leader_epoch: v.leader_epoch,
                        metadata: v.metadata,
                        commit_ms: v.commit_ms,
                    },
                );
            }
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable offset value"),
        },
        (
            GroupRecordKey::Offset {
                topic, partition, ..
            },
            None,
        ) => {
            group.offsets.remove(&(topic, partition));
        }
        (GroupRecordKey::Group { .. }, Some(value)) => match GroupValue::decode(value) {
            Ok(v) => group.persisted.group = Some(v),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable group value"),
        },
        // The whole group goes (`fold`); nothing of it is left to fold into.
        (GroupRecordKey::Group { .. }, None) => {}
        (GroupRecordKey::Member { member, .. }, Some(value)) => match MemberValue::decode(value) {
            Ok(v) => {
                group.persisted.members.insert(member, v);
            }
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable member value"),
        },
        (GroupRecordKey::Member { member, .. }, None) => {
            group.persisted.members.remove(&member);
        }
    }
}
