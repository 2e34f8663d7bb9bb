//! The MetadataApplier: the only thing that starts, stops or re-roles this node's Partition
//! actors. It receives each new metadata image from the controller, compares it with the
//! partitions it runs, and makes the difference: starts a partition for every replica this
//! node holds, tells running ones a new leadership in place (leader or follower, leader
//! epoch, ISR: the log stays open), restarts those whose config changed, stops (and, for
//! deleted topics and replicas moved away from this node, removes) the rest. Group
//! coordinators run where their `__consumer_offsets` partition is led.
//!
//! - Receives from: the Controller (`apply`, which answers once the image is in force).
//! - Sends to: the PartitionSupervisor (start, stop), one batch of partitions at a time, and
//!   waits for each batch; the supervisor works on up to `PARTITION_STARTS_CONCURRENT` of a
//!   batch at once. Partitions of deleted topics are discarded (stopped without closing their
//!   logs) and their directories removed. A replica a reassignment moved away from this node
//!   (its topic stays, the node is no longer among its replicas) is stopped cleanly and its
//!   directory removed, once sweeping is armed: before that the image may lag what the node
//!   had applied before a restart, and the sweep removes it when armed.
//! - Sweeps: once the node says its image has caught up (`arm_sweep`), and after every image
//!   that deletes a topic, it removes the partition directories the image does not give this
//!   node (`partition::data_dir::sweep`); each partition checks its directory's topic id as it
//!   opens.
//! - Mailbox: one message per committed metadata change, which the controller sends one at a
//!   time and awaits, so at most one is ever queued; plus the one `ArmSweep` the node sends
//!   as it starts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use vltava_messages::{LeaderEpoch, NodeId, PartitionId};
use vltava_storage::Flusher;

use crate::directory::{ActorDirectory, ActorKind, ActorStats};
use crate::groups::GroupManagerHandle;
use crate::metadata::MetadataImage;
use crate::metadata::producer_ids::ProducerRegistry;
use crate::metadata::topic_config;
use crate::partition::data_dir::{self, Assignment};
use crate::partition::replica_state::{
    Assignment as ReplicaAssignment, PartitionEpoch, ReplicaConfig,
};
use crate::partition::replication::ReplicaLinks;
use crate::partition::supervisor::{PartitionKey, PartitionSupervisorHandle};
use crate::partition::{Durability, PartitionArgs};
use vltava_messages::group_records::OFFSETS_TOPIC;

pub use crate::partition::data_dir::{DELETED_SUFFIX, partition_dir};

/// What the applier needs to start partitions.
#[derive(Clone, Debug)]
pub struct ApplierConfig {
    pub node: String,
    pub node_id: u32,
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Whether partitions re-check batch CRCs on reads.
    pub verify_reads: bool,
    pub flusher: Arc<Flusher>,
    pub directory: ActorDirectory,
    pub partitions: PartitionSupervisorHandle,
    /// Told when this node starts or stops leading a partition of `__consumer_offsets`.
    pub groups: Option<GroupManagerHandle>,
    /// The node-wide producer ids and epochs, handed to every partition it starts.
    pub producer_ids: ProducerRegistry,
    /// The node's replication services (the controller, leaders, replica fetchers), handed
    /// to every partition it starts.
    pub links: Arc<dyn ReplicaLinks>,
    /// How long a follower may lag before it leaves the ISR.
    pub replica_lag_time_max: std::time::Duration,
    /// How often each partition runs retention (`--retention-check-interval-ms`).
    pub retention_check_interval: std::time::Duration,
    /// In a cluster, this run of the node: it leads a replicated partition only once the
    /// metadata holds this incarnation (registered with a new leader epoch for each such
    /// partition). `None` on a single node, whose partitions have no other replica.
    pub incarnation: Option<u64>,
}

#[derive(Debug)]
pub enum ApplierMsg {
    Apply {
        image: Arc<MetadataImage>,
        reply: oneshot::Sender<()>,
    },
    /// Allows sweeps from the first image at or past `version_min` that lists this node.
    ArmSweep {
        version_min: u64,
        reply: oneshot::Sender<()>,
    },
}

/// The only way to reach the applier.
#[derive(Clone, Debug)]
pub struct ApplierHandle {
    actor: ActorRef<ApplierMsg>,
    stats: Arc<ActorStats>,
}

impl crate::metadata::ImageApplier for ApplierHandle {
    fn apply(
        &self,
        image: Arc<MetadataImage>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(ApplierHandle::apply(self, image))
    }
}

impl ApplierHandle {
    /// Brings this node's partitions in line with `image`; returns once they are.
    pub async fn apply(&self, image: Arc<MetadataImage>) {
        let (reply, done) = oneshot::channel();
        self.stats.enqueued();
        if self
            .actor
            .send_message(ApplierMsg::Apply { image, reply })
            .is_ok()
        {
            let _ = done.await;
        } else {
            self.stats.dequeued();
        }
    }

    /// Allows the applier to sweep the data directory, once it has applied an image at or
    /// past `version_min` in which this node is registered (at once if it has). Before that,
    /// an image may lag what this node applied before it restarted (a cluster member replays
    /// its Raft log while it catches up), and a sweep on it would remove live partitions of
    /// topics it does not list yet. Returns once the applier took it (and swept, if it could).
    pub async fn arm_sweep(&self, version_min: u64) {
        let (reply, done) = oneshot::channel();
        self.stats.enqueued();
        if self
            .actor
            .send_message(ApplierMsg::ArmSweep { version_min, reply })
            .is_ok()
        {
            let _ = done.await;
        } else {
            self.stats.dequeued();
        }
    }

    #[must_use]
    pub fn actor(&self) -> &ActorRef<ApplierMsg> {
        &self.actor
    }
}

/// What a running partition was started with, to notice changes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Running {
    topic_id: String,
    configs: BTreeMap<String, String>,
}

/// A partition's leadership as the image says, for this node's replica of it; with
/// `hidden_leader` set, that node's leadership is hidden (the partition is given no leader
/// until the metadata names this run of the node, which leads it then in a new epoch).
fn assignment_for(
    partition: &crate::metadata::PartitionImage,
    hidden_leader: Option<u32>,
) -> ReplicaAssignment {
    // Partitions placed before replica sets were recorded name only their leader.
    let replicas: Vec<NodeId> = if partition.replicas.is_empty() {
        partition.leader.into_iter().map(NodeId).collect()
    } else {
        partition.replicas.iter().copied().map(NodeId).collect()
    };
    let mut isr: std::collections::BTreeSet<NodeId> =
        partition.isr.iter().copied().map(NodeId).collect();
    if isr.is_empty() {
        isr.extend(partition.leader.map(NodeId));
    }
    ReplicaAssignment {
        leader: partition
            .leader
            .filter(|leader| Some(*leader) != hidden_leader)
            .map(NodeId),
        leader_epoch: LeaderEpoch(partition.leader_epoch),
        partition_epoch: PartitionEpoch(partition.partition_epoch),
        replicas,
        isr,
        target_replicas: partition
            .target_replicas
            .as_ref()
            .map(|target| target.iter().copied().map(NodeId).collect()),
    }
}

#[derive(Debug)]
pub struct MetadataApplier;

#[derive(Debug)]
pub struct ApplierState {
    id: String,
    config: ApplierConfig,
    stats: Arc<ActorStats>,
    running: BTreeMap<(String, u32), Running>,
    /// The leadership each running partition was last told.
    assigned: BTreeMap<(String, u32), ReplicaAssignment>,
    /// The partitions of `__consumer_offsets` this node leads (their group coordinators run
    /// here).
    coordinating: std::collections::BTreeSet<u32>,
    /// The version of the last image applied. In a cluster images reach the applier two ways
    /// (the controller's commit, and the watch of what the quorum committed), so an older one
    /// can arrive after a newer one; applying it would undo the newer one's changes.
    applied_version: Option<u64>,
    /// Partitions whose start failed: each is retried at the next image, and stopped (its
    /// offline slot and directory entry removed) and, if its topic was deleted, its data
    /// removed like a running one's. Without this, a failed partition of a deleted topic kept
    /// its entries for the life of the process and its data for a new topic of the same name.
    failed: BTreeMap<(String, u32), Running>,
    /// The last image applied, which a sweep compares the data directory with.
    image: Option<Arc<MetadataImage>>,
    /// Set by `ArmSweep`: the image version from which sweeping is safe.
    sweep_version_min: Option<u64>,
    /// Whether the first sweep (the one at start) ran; later ones follow topic deletions.
    swept: bool,
}

impl MetadataApplier {
    /// Starts the applier under `supervisor`.
    pub async fn start(
        id: String,
        parent: &str,
        config: ApplierConfig,
        supervisor: Option<ractor::ActorCell>,
    ) -> Result<ApplierHandle, ractor::SpawnErr> {
        let stats = config
            .directory
            .register(&id, ActorKind::MetadataApplier, Some(parent));
        let args = (id.clone(), config, Arc::clone(&stats));
        let (actor, _) = match supervisor {
            Some(cell) => Actor::spawn_linked(Some(id), MetadataApplier, args, cell).await?,
            None => Actor::spawn(Some(id), MetadataApplier, args).await?,
        };
        Ok(ApplierHandle { actor, stats })
    }
}

impl Actor for MetadataApplier {
    type Msg = ApplierMsg;
    type State = ApplierState;
    type Arguments = (String, ApplierConfig, Arc<ActorStats>);

    async fn pre_start(
        &self,
        _myself: ActorRef<ApplierMsg>,
        (id, config, stats): Self::Arguments,
    ) -> Result<ApplierState, ActorProcessingErr> {
        Ok(ApplierState {
            id,
            config,
            stats,
            running: BTreeMap::new(),
            assigned: BTreeMap::new(),
            coordinating: std::collections::BTreeSet::new(),
            applied_version: None,
            failed: BTreeMap::new(),
            image: None,
            sweep_version_min: None,
            swept: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ApplierMsg>,
        msg: ApplierMsg,
        state: &mut ApplierState,
    ) -> Result<(), ActorProcessingErr> {
        let started = std::time::Instant::now();
        match msg {
            ApplierMsg::Apply { image, reply } => {
                state.apply(&image).await;
                // The controller may have stopped waiting; the image is applied regardless.
                let _ = reply.send(());
                state.stats.time("Apply", started.elapsed());
            }
            ApplierMsg::ArmSweep { version_min, reply } => {
                state.sweep_version_min = Some(version_min);
                state.sweep_if_due(false).await;
                // The node may have stopped waiting (it is shutting down); nothing to undo.
                let _ = reply.send(());
                state.stats.time("ArmSweep", started.elapsed());
            }
        }
        state.stats.handled();
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ApplierMsg>,
        state: &mut ApplierState,
    ) -> Result<(), ActorProcessingErr> {
        state.config.directory.unregister(&state.id);
        Ok(())
    }
}

impl ApplierState {
    async fn apply(&mut self, image: &Arc<MetadataImage>) {
        if self.applied_version.is_some_and(|v| v > image.version) {
            return;
        }
        self.applied_version = Some(image.version);
        // A topic that the previous image listed and this one does not (or lists with
        // another id) was deleted: its directories on this node, running or not, are swept.
        let topic_deleted = self.image.as_ref().is_some_and(|previous| {
            previous.topics.iter().any(|(name, topic)| {
                image
                    .topics
                    .get(name)
                    .is_none_or(|now| now.topic_id != topic.topic_id)
            })
        });
        self.image = Some(Arc::clone(image));
        self.make_partitions_match(image).await;
        self.sweep_if_due(topic_deleted).await;
    }

    /// Stops, removes and starts partitions until those running are the ones `image` gives
    /// this node (every partition it is a replica of), and tells running ones a new
    /// leadership in place.
    async fn make_partitions_match(&mut self, image: &MetadataImage) {
        let node = self.config.node_id;
        // Before this run of the node is registered, its replicated partitions are not led
        // here: the epochs the metadata gives them may be ones an earlier run led, and batches
        // it lost with its page cache may live on in followers under them.
        let registered = self.config.incarnation.is_none_or(|incarnation| {
            image
                .nodes
                .get(&node)
                .is_some_and(|n| n.incarnation == incarnation)
        });
        let mut wanted: BTreeMap<(String, u32), (Running, ReplicaAssignment)> = BTreeMap::new();
        for (name, topic) in &image.topics {
            for (index, partition) in topic.partitions.iter().enumerate() {
                if partition.leader == Some(node) || partition.replicas.contains(&node) {
                    wanted.insert(
                        (name.clone(), index as u32),
                        (
                            Running {
                                topic_id: topic.topic_id.clone(),
                                configs: topic.configs.clone(),
                            },
                            assignment_for(
                                partition,
                                (!registered && partition.replicas.len() > 1).then_some(node),
                            ),
                        ),
                    );
                }
            }
        }
        // Stop what is no longer wanted as it runs (or as it failed to start); remove the data
        // of deleted topics.
        let stale: Vec<((String, u32), Running)> = self
            .running
            .iter()
            .chain(&self.failed)
            .filter(|(key, running)| wanted.get(*key).map(|(r, _)| r) != Some(*running))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        let mut deleted = Vec::new();
        let mut changed = Vec::new();
        let mut moved_away = Vec::new();
        for ((topic, partition), running) in stale {
            // Coordinators stop before the offsets partition they write to.
            if topic == OFFSETS_TOPIC {
                self.stop_coordinating(partition);
            }
            let key = (topic, partition);
            self.running.remove(&key);
            self.assigned.remove(&key);
            self.failed.remove(&key);
            let gone = image
                .topics
                .get(&key.0)
                .is_none_or(|t| t.topic_id != running.topic_id);
            if gone {
                deleted.push(key);
            } else if wanted.contains_key(&key) {
                changed.push(key);
            } else {
                moved_away.push(key);
            }
        }
        // A replica that moved away (a reassignment dropped this node) and one whose config
        // changed (restarted below) stop cleanly.
        let stopping: Vec<PartitionKey> = changed
            .iter()
            .chain(&moved_away)
            .map(|(t, p)| (Arc::from(t.as_str()), PartitionId(*p)))
            .collect();
        if !stopping.is_empty() {
            self.config
                .partitions
                .stop_partitions(stopping, false)
                .await;
        }
        if !moved_away.is_empty() {
            if self.sweep_armed(image) {
                tracing::info!(partitions = ?moved_away, "replicas moved away from this node; removing their data");
                self.remove_partitions_data(moved_away).await;
            } else {
                // The image may still lag what this node had applied before it restarted (a
                // cluster member replays its Raft log as it catches up), and a later image may
                // give the replica back, in sync: only the sweep, once armed, removes it.
                tracing::info!(partitions = ?moved_away, "replicas moved away from this node; their data goes at the first sweep");
            }
        }
        if !deleted.is_empty() {
            // A deleted topic's logs are dropped without a clean close: their files go next.
            let keys = deleted
                .iter()
                .map(|(t, p)| (Arc::from(t.as_str()), PartitionId(*p)))
                .collect();
            self.config.partitions.stop_partitions(keys, true).await;
            self.remove_partitions_data(deleted).await;
        }
        // Running partitions whose leadership changed are told in place: the log stays open.
        let mut reassigned = Vec::new();
        for (key, (_, assignment)) in &wanted {
            if self.running.contains_key(key) && self.assigned.get(key) != Some(assignment) {
                reassigned.push((key.clone(), assignment.clone()));
            }
        }
        if !reassigned.is_empty() {
            // Coordinators stop before their offsets partition stops leading.
            for ((topic, partition), assignment) in &reassigned {
                if topic == OFFSETS_TOPIC && assignment.leader != Some(NodeId(node)) {
                    self.stop_coordinating(*partition);
                }
            }
            let told = reassigned
                .iter()
                .map(|((t, p), a)| ((Arc::from(t.as_str()), PartitionId(*p)), a.clone()))
                .collect();
            self.config.partitions.assign(told).await;
            for (key, assignment) in reassigned {
                if key.0 == OFFSETS_TOPIC && assignment.leader == Some(NodeId(node)) {
                    self.start_coordinating(key.1);
                }
                self.assigned.insert(key, assignment);
            }
        }
        let mut starting = Vec::new();
        for (key, (running, assignment)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let (topic, partition) = &key;
            let config = match topic_config::parse(&running.configs) {
                Ok(config) => config,
                Err(e) => {
                    // The controller checks configs before committing them; this would be a bug.
                    tracing::error!(topic, partition, error = %e, "committed topic config is invalid; partition not started");
                    continue;
                }
            };
            let args = PartitionArgs {
                id: format!("{}/partition/{topic}-{partition}", self.config.node),
                parent: format!("{}/partitions", self.config.node),
                topic: Arc::from(topic.as_str()),
                topic_id: Arc::from(running.topic_id.as_str()),
                partition: PartitionId(*partition),
                dir: partition_dir(&self.config.data_dir, topic, *partition),
                log_config: vltava_storage::LogConfig {
                    verify_reads: self.config.verify_reads,
                    ..config.log
                },
                durability: self.config.durability,
                node_id: NodeId(node),
                assignment: assignment.clone(),
                replica: ReplicaConfig {
                    durability: self.config.durability,
                    min_insync_replicas: config.min_insync_replicas.map(usize::from),
                    unclean_leader_election: config.unclean_leader_election,
                    replica_lag_time_max: self.config.replica_lag_time_max,
                },
                retention_check_interval: self.config.retention_check_interval,
                links: Arc::clone(&self.config.links),
                flusher: Arc::clone(&self.config.flusher),
                directory: self.config.directory.clone(),
                producer_ids: self.config.producer_ids.clone(),
            };
            starting.push((key, running, assignment, args));
        }
        if starting.is_empty() {
            return;
        }
        let mut wanted_now: BTreeMap<(String, u32), (Running, ReplicaAssignment)> = BTreeMap::new();
        let mut args = Vec::with_capacity(starting.len());
        for (key, running, assignment, a) in starting {
            wanted_now.insert(key, (running, assignment));
            args.push(a);
        }
        // Several at once (`PARTITION_STARTS_CONCURRENT`): a topic of thousands of partitions
        // opened one at a time left a core idle.
        for ((topic, partition), outcome) in self.config.partitions.start_partitions(args).await {
            let key = (topic.to_string(), partition.0);
            let (running, assignment) = wanted_now
                .remove(&key)
                .expect("every outcome is for a partition asked for");
            match outcome {
                Ok(()) => {
                    if key.0 == OFFSETS_TOPIC && assignment.leader == Some(NodeId(node)) {
                        self.start_coordinating(key.1);
                    }
                    self.failed.remove(&key);
                    self.assigned.insert(key.clone(), assignment);
                    self.running.insert(key, running);
                }
                Err(e) => {
                    tracing::error!(topic = %key.0, partition = key.1, error = %e, "partition did not start");
                    self.failed.insert(key, running);
                }
            }
        }
    }

    /// This node leads `__consumer_offsets` partition `partition` now: its coordinators load.
    fn start_coordinating(&mut self, partition: u32) {
        if let Some(groups) = &self.config.groups
            && self.coordinating.insert(partition)
        {
            groups.load(partition);
        }
    }

    /// This node no longer leads (or runs) `__consumer_offsets` partition `partition`.
    fn stop_coordinating(&mut self, partition: u32) {
        if let Some(groups) = &self.config.groups
            && self.coordinating.remove(&partition)
        {
            groups.unload(partition);
        }
    }

    /// Whether `image` may decide which partition data this node removes: the node armed
    /// sweeping (`ArmSweep`), and the image is at least as new as it asked and lists this node.
    fn sweep_armed(&self, image: &MetadataImage) -> bool {
        self.sweep_version_min.is_some_and(|version_min| {
            image.version >= version_min && image.nodes.contains_key(&self.config.node_id)
        })
    }

    /// Sweeps the data directory if sweeping is armed, the last image is recent enough and
    /// lists this node, and either no sweep ran yet or `topic_deleted`.
    async fn sweep_if_due(&mut self, topic_deleted: bool) {
        let Some(image) = &self.image else { return };
        if !self.sweep_armed(image) {
            return;
        }
        let node_id = self.config.node_id;
        if self.swept && !topic_deleted {
            return;
        }
        self.swept = true;
        let assignment = ImageAssignment {
            image: Arc::clone(image),
            node_id,
        };
        let data_dir = self.config.data_dir.clone();
        let version = image.version;
        match tokio::task::spawn_blocking(move || data_dir::sweep(&data_dir, &assignment)).await {
            Ok(removed) => tracing::debug!(version, removed, "data directory swept"),
            Err(e) => tracing::warn!(error = %e, "sweep task failed"),
        }
    }

    /// Renames each directory out of the way (so a new topic of the same name never sees its
    /// data), then removes them, all in one blocking task.
    async fn remove_partitions_data(&self, partitions: Vec<(String, u32)>) {
        let data_dir = self.config.data_dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let mut doomed = Vec::with_capacity(partitions.len());
            for (topic, partition) in partitions {
                let dir = partition_dir(&data_dir, &topic, partition);
                let mut renamed = dir.clone().into_os_string();
                renamed.push(DELETED_SUFFIX);
                let renamed = PathBuf::from(renamed);
                if dir.exists()
                    && let Err(e) = std::fs::rename(&dir, &renamed)
                {
                    tracing::warn!(topic, partition, error = %e, "could not move a deleted partition's data aside");
                    continue;
                }
                doomed.push((topic, partition, renamed));
            }
            let mut count = 0usize;
            for (topic, partition, renamed) in doomed {
                if !renamed.exists() {
                    continue;
                }
                match std::fs::remove_dir_all(&renamed) {
                    Ok(()) => count += 1,
                    Err(e) => {
                        tracing::warn!(topic, partition, error = %e, "could not remove a deleted partition's data")
                    }
                }
            }
            count
        })
        .await;
        match removed {
            Ok(count) => tracing::info!(count, "removed the data of deleted partitions"),
            Err(e) => tracing::warn!(error = %e, "removal task failed"),
        }
    }
}

/// The partitions an image gives one node, for the sweep.
struct ImageAssignment {
    image: Arc<MetadataImage>,
    node_id: u32,
}

impl Assignment for ImageAssignment {
    /// A partition is this node's if it leads it or holds a replica of it. One that is placed
    /// nowhere yet (no leader, no replicas) is kept too: it may come to this node, and
    /// removing a directory that might be live is the one mistake a sweep must not make.
    fn assigned(&self, topic: &str, partition: u32) -> Option<&str> {
        let image_topic = self.image.topics.get(topic)?;
        let placement = image_topic
            .partitions
            .get(usize::try_from(partition).ok()?)?;
        let unplaced = placement.leader.is_none() && placement.replicas.is_empty();
        let here =
            placement.leader == Some(self.node_id) || placement.replicas.contains(&self.node_id);
        (unplaced || here).then_some(image_topic.topic_id.as_str())
    }
}
