//! Consumer groups: the GroupManager (the coordinator supervisor), one GroupCoordinator per
//! group, the assignors, the group state machine, and `offsets`: how coordinators read the
//! offsets of the partitions a group consumes, led here or (through the `RemoteOffsets` the
//! node gives them in a cluster) by other nodes, and how this node answers other nodes'
//! coordinators.
//!
//! A group's commits live in one partition of `__consumer_offsets` (FNV-1a of the group id,
//! modulo the topic's partition count). The node that leads that partition coordinates the
//! group: when the MetadataApplier starts an offsets partition here it asks the manager to
//! load it (replay its records into per-group offsets and start their coordinators), and when
//! it stops one, to unload it (stop those coordinators). On one node this happens at start-up;
//! with the cluster, coordinators move with leadership the same way.

pub mod assignor;
pub mod coordinator;
pub mod offsets;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{oneshot, watch};
use vltava_messages::PartitionId;
use vltava_messages::batch::split_batches;
use vltava_messages::group_records::{
    GroupRecordKey, GroupValue, OFFSETS_TOPIC, OffsetValue, offsets_partition_for,
};
use vltava_messages::protocol::ErrorCode;

use self::assignor::{Assignor, TopicPartition};
use self::coordinator::{CoordinatorArgs, CoordinatorHandle, GroupCoordinator};
use self::offsets::OffsetsReader;
use self::state::{Committed, GroupSettings, Refusal};
use crate::directory::{ActorDirectory, ActorKind, ActorStats};
use crate::metadata::MetadataImage;
use crate::partition::supervisor::{PartitionRegistry, PartitionSlot};

/// Partitions of `__consumer_offsets` when the node creates it.
pub const OFFSETS_TOPIC_PARTITIONS_DEFAULT: u32 = 8;
/// Replicas of each `__consumer_offsets` partition when a cluster creates it, at most the
/// cluster's size (Kafka's `offsets.topic.replication.factor`, also 3): with the default
/// `min.insync.replicas` (a majority, 2) a committed offset is on two
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

/// What a coordinator publishes for the admin endpoint (defined beside the other published
/// states in `directory`, which lists it without importing this module).
pub use crate::directory::GroupSnapshot;

/// Where an offsets partition is on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    Loading,
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
    pub assignor: Option<Assignor>,
    pub created_ms: Option<u64>,
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
                Some(Load::Loading) => {
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
            ManagerMsg::Loaded { partition, groups } => {
                state.loaded(&myself, partition, groups).await;
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
                    tracing::error!(group = %group_id, %error, "group coordinator failed; reloading its offsets partition");
                    state.registry.remove_group(&group_id);
                    state.config.directory.record_failure(
                        &coordinator_id(&state.config.node, &group_id),
                        &error.to_string(),
                        true,
                    );
                    // Members rejoin (their heartbeats are fenced); offsets come back from
                    // the log.
                    state.load(&myself, partition);
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
    fn load(&mut self, myself: &ActorRef<ManagerMsg>, partition: u32) {
        self.registry
            .write()
            .partitions
            .insert(partition, Load::Loading);
        let partitions = self.config.partitions.clone();
        let myself = myself.clone();
        let stats = Arc::clone(&self.stats);
        tokio::spawn(async move {
            let groups = match replay(&partitions, partition).await {
                Ok(groups) => groups,
                Err(e) => {
                    tracing::error!(partition, error = %e, "offsets partition could not be replayed; its groups start empty");
                    BTreeMap::new()
                }
            };
            stats.enqueued();
            if myself
                .send_message(ManagerMsg::Loaded { partition, groups })
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
        groups: BTreeMap<String, LoadedGroup>,
    ) {
        if self.registry.read().partitions.get(&partition) != Some(&Load::Loading) {
            return; // Unloaded meanwhile.
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
        tracing::info!(partition, groups = count, "offsets partition loaded");
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
            assignor: loaded.assignor,
            created_ms: loaded.created_ms,
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
/// into per-group state: the newest value per key wins, a tombstone removes the key.
async fn replay(
    partitions: &PartitionRegistry,
    partition: u32,
) -> Result<BTreeMap<String, LoadedGroup>, String> {
    let handle = match partitions.get(OFFSETS_TOPIC, PartitionId(partition)) {
        Some(PartitionSlot::Online(handle)) => handle,
        _ => return Err("the offsets partition is not online".into()),
    };
    let end = *handle.high_watermark().borrow();
    let mut offset = handle
        .list_offset(vltava_messages::protocol::OffsetSpec::Earliest, None)
        .await
        .map_err(|e| e.to_string())?
        .offset
        .unwrap_or(end);
    let mut groups: BTreeMap<String, LoadedGroup> = BTreeMap::new();
    let mut records_read = 0u64;
    while offset < end {
        let read = handle
            .fetch(offset, LOAD_READ_BYTES, None)
            .await
            .map_err(|e| e.to_string())?;
        if read.records.is_empty() {
            break;
        }
        for batch in split_batches(&read.records) {
            let batch = batch.map_err(|e| e.to_string())?;
            offset = batch.header.next_offset();
            for record in batch.records().map_err(|e| e.to_string())? {
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
                let group = groups.entry(key.group().to_owned()).or_default();
                match (key, record.value.as_deref()) {
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
                    (GroupRecordKey::Group { .. }, Some(value)) => {
                        match GroupValue::decode(value) {
                            Ok(v) => {
                                group.assignor = Assignor::from_name(&v.assignor);
                                group.created_ms = Some(v.created_ms);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "skipping an unreadable group value")
                            }
                        }
                    }
                    (GroupRecordKey::Group { group: id }, None) => {
                        groups.remove(&id);
                    }
                    // Membership is not restored yet: members rejoin.
                    (GroupRecordKey::Member { .. }, _) => {}
                }
            }
        }
    }
    groups.retain(|_, g| !g.offsets.is_empty() || g.assignor.is_some());
    tracing::debug!(
        partition,
        records_read,
        groups = groups.len(),
        "offsets partition replayed"
    );
    Ok(groups)
}
