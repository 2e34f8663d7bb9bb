//! A node's supervision tree, started and stopped as a whole:
//!
//! ```text
//! NodeSupervisor
//! ├── PartitionSupervisor ── Partition(t, p) …
//! ├── MetadataApplier
//! ├── Controller
//! └── Listener (task) ── ClientSession (task) …
//! ```
//!
//! The NodeSupervisor restarts nothing itself: a partition's crash is its supervisor's
//! business, but a failure of the controller, the applier or the partition supervisor leaves
//! the node unable to keep its promises, so the node reports it as fatal and shuts down (the
//! operator's service manager restarts the process, which recovers from disk).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use vltava_storage::Flusher;

use crate::applier::{ApplierConfig, ApplierHandle, MetadataApplier};
use crate::cluster::leases::{self, LeaseTable, MetadataFreshness};
use crate::cluster::{
    NodePeerService, PeerForwarder, PeerRemoteOffsets, QUORUM_WAIT_LOG_INTERVAL, bootstrap_quorum,
    publish_images,
};
use crate::directory::{ActorDirectory, ActorKind};
use crate::groups::offsets::{OffsetsReader, RemoteOffsets};
use crate::groups::state::GroupSettings;
use crate::groups::{GroupManager, GroupManagerHandle, ManagerConfig};
use crate::metadata::controller::{
    Controller, ControllerArgs, ControllerError, ControllerHandle, Forwarder,
};
use crate::metadata::producer_ids::ProducerRegistry;
use crate::metadata::raft::{
    MetadataRaft, PeerRaftTransport, RaftConfigBuilder, RaftMember, RaftMetadataLog,
    RaftStatusSource, raft_node_id,
};
use crate::metadata::{FileMetadataLog, MetadataImage};
use crate::metrics::RequestMetrics;
use crate::partition::Durability;
use crate::partition::replica_state::REPLICA_LAG_TIME_MAX_DEFAULT;
use crate::partition::replication::{ReplicaLinks, Standalone};
use crate::partition::supervisor::{
    PartitionRegistry, PartitionSupervisor, PartitionSupervisorHandle,
};
use crate::peer::{
    ClusterId, PEER_CONNECTIONS_MAX, PeerIdentity, PeerLinkConfig, PeerLinks, PeerListener,
    PeerListenerConfig, PeerTimings,
};
use crate::replication::ReplicaManager;
use crate::session::NodeServices;
use crate::session::listener::run_listener;
use std::collections::BTreeMap;
use vltava_messages::NodeId;
use vltava_messages::group_records::OFFSETS_TOPIC;
use vltava_messages::protocol::ErrorCode;
use vltava_storage::RealStorage;

/// The directory of a cluster member's Raft log, vote and snapshot, under `__metadata`.
pub const RAFT_DIR: &str = "raft";

/// How long shutdown waits for an actor to stop.
pub const ACTOR_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Flush jobs queued for the flusher pool: each partition has at most one in flight, and a
/// partition whose job does not fit runs it on the blocking pool instead.
pub const FLUSH_QUEUE_MAX: usize = 1024;

/// The file in which nodes before producer ids moved into the metadata log kept the end of
/// their reserved block of ids. Read at start so that no id it covers is handed out again.
pub const LEGACY_PRODUCER_ID_BLOCK_FILE: &str = "producer-id-block";

/// The end of the reserved block the legacy file records, 0 if there is none. Blocks.
fn legacy_producer_id_floor(path: &std::path::Path) -> Result<u64, vltava_storage::StorageError> {
    Ok(
        vltava_storage::checkpoint::read(&vltava_storage::RealStorage, path)?
            .and_then(|body| body.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0),
    )
}

/// How a node joins a cluster (`--controller-quorum`).
#[derive(Debug)]
pub struct ClusterOptions {
    /// The peer port, bound already (`--peer-listen`).
    pub peer_listener: TcpListener,
    /// Every member of the controller quorum, this node included: node id -> peer address.
    pub quorum: BTreeMap<u32, SocketAddr>,
    /// The cluster id, or the promise of one learnt from a peer.
    pub cluster_id: ClusterId,
    /// Metadata log entries between snapshots (`--metadata-snapshot-entries`); a quarter of
    /// them is kept behind each snapshot for followers that lag a little.
    pub snapshot_entries: u64,
    /// How long a follower may lag before it leaves the ISR (`--replica-lag-time-max-ms`).
    pub replica_lag_time_max: Duration,
    /// How long a partition's preferred leader must be live and in sync before the
    /// controller moves leadership back to it (`--preferred-leader-return-ms`); `None`: never.
    pub preferred_leader_return: Option<Duration>,
}

/// What runs for a node's membership of a cluster.
struct ClusterRuntime {
    raft: MetadataRaft,
    /// The member's status watches, for DescribeCluster and the admin endpoint.
    status: RaftStatusSource,
    links: PeerLinks,
    listener: PeerListener,
    /// The image publisher, the lease renewer and the lease supervisor.
    tasks: Vec<JoinHandle<()>>,
    /// This node's lease, which sessions check before answering metadata.
    freshness: MetadataFreshness,
    /// When each node renewed its lease here, for the admin view.
    leases: LeaseTable,
}

impl std::fmt::Debug for ClusterRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRuntime")
            .field("peer_listener", &self.listener.local_addr())
            .finish_non_exhaustive()
    }
}

/// How long a registration or internal-topic creation waits between attempts while the
/// quorum forms or elects a controller.
pub const CLUSTER_JOIN_RETRY: Duration = Duration::from_millis(200);
/// How long a starting node waits for `__consumer_offsets` to exist before it serves anyway.
/// A new cluster creates it once as many nodes as its replication factor are registered and
/// live, which for members started together is within seconds of the quorum forming; a node
/// started alone (the others down at a cluster's first start) serves after this, without
/// consumer groups (`CoordinatorNotAvailable`, retriable) until the topic is created, which a
/// task of the node goes on trying every `CLUSTER_JOIN_RETRY` until it is, or the node stops.
pub const OFFSETS_TOPIC_START_WAIT: Duration = Duration::from_secs(30);

/// What a node starts with.
#[derive(Debug)]
pub struct NodeOptions {
    pub node_id: u32,
    /// The cluster id of a single node (a cluster's comes with `cluster`).
    pub cluster_id: String,
    /// Set when the node is a member of a cluster; `None`: a cluster of one.
    pub cluster: Option<ClusterOptions>,
    pub data_dir: PathBuf,
    /// Bound already, so the caller reports "address in use" itself.
    pub listener: TcpListener,
    pub advertised_host: String,
    pub advertised_port: u16,
    pub durability: Durability,
    /// Re-check batch CRCs on reads for consumers (`LogConfig::verify_reads`).
    pub verify_reads: bool,
    pub connections_max: usize,
    pub inflight_requests_max: usize,
    pub bytes_in_flight_max: usize,
    pub flusher_threads: usize,
    /// Consumer group timings.
    pub group_settings: GroupSettings,
    /// Partitions of `__consumer_offsets` if the node creates it.
    pub offsets_topic_partitions: u32,
    /// Its replication factor if the node creates it, capped at the cluster's size (the
    /// quorum's members; 1 for a single node).
    pub offsets_topic_replication_factor: u16,
    /// Its segment size.
    pub offsets_topic_segment_bytes: u64,
    /// How long an empty group keeps its committed offsets.
    pub offsets_retention: Duration,
    /// How often each partition runs retention (`--retention-check-interval-ms`).
    pub retention_check_interval: Duration,
}

/// A read-only view of a running node for the admin endpoint: the actor directory, the
/// metadata image the controller publishes and the node's request counters. Reading it never
/// sends a message to an actor.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub node_id: u32,
    pub cluster_id: String,
    /// The client address the node advertises, `HOST:PORT`.
    pub advertised: String,
    pub started_at: std::time::SystemTime,
    pub directory: ActorDirectory,
    pub image: watch::Receiver<Arc<MetadataImage>>,
    /// In a cluster: when each node last renewed its lease with this node (meaningful while
    /// this node is the controller), and this node's own lease.
    pub leases: Option<(LeaseTable, MetadataFreshness)>,
    /// The Raft member's status (role, term, indexes, peers' match indexes), read from its
    /// watches; `None` on a node that is not a member of a metadata quorum.
    pub raft: Option<RaftStatusSource>,
    /// Used only by fault injection, to reach a partition to crash.
    pub partitions: PartitionRegistry,
    pub requests: Arc<RequestMetrics>,
    /// True from when the listener accepts until shutdown begins.
    pub serving: Arc<AtomicBool>,
    /// The node's runtime, whose task count `/resources` reports (the admin endpoint runs on
    /// a runtime of its own).
    pub runtime: tokio::runtime::Handle,
}

impl NodeView {
    /// Whether the node accepts and serves clients.
    #[must_use]
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// Fault injection: crashes the partition actor `id`, as a bug would, so its supervisor
    /// restarts it. `Err` names why it could not.
    pub fn crash_partition(&self, id: &str) -> Result<(), String> {
        let handle = self
            .partitions
            .online()
            .into_iter()
            .find(|h| h.actor().get_name().as_deref() == Some(id))
            .ok_or_else(|| format!("no online partition actor {id}"))?;
        handle.crash().map_err(|e| e.to_string())
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot start actor: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
    #[error(transparent)]
    Storage(#[from] vltava_storage::StorageError),
    #[error("invalid setting: {0}")]
    Setting(&'static str),
    #[error("{0}")]
    Internal(String),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    pub directory: ActorDirectory,
    /// What the admin endpoint reads.
    pub view: NodeView,
    serving: Arc<AtomicBool>,
    groups: GroupManagerHandle,
    pub local_addr: SocketAddr,
    supervisor: ActorRef<()>,
    controller: ControllerHandle,
    applier: ApplierHandle,
    partitions: PartitionSupervisorHandle,
    listener: JoinHandle<()>,
    cluster: Option<ClusterRuntime>,
    /// The creation of `__consumer_offsets`, still going on when the node started serving;
    /// aborted at shutdown.
    offsets_topic: Option<JoinHandle<Result<(), ControllerError>>>,
    shutdown: watch::Sender<bool>,
    stopping: Arc<AtomicBool>,
    fatal: watch::Receiver<Option<String>>,
    flusher: Arc<Flusher>,
}

impl Node {
    /// Starts the whole tree: partitions are open and the listener accepts when it returns.
    pub async fn start(options: NodeOptions) -> Result<Node, NodeError> {
        if options.bytes_in_flight_max < vltava_messages::limits::FRAME_BYTES_MAX as usize {
            return Err(NodeError::Setting(
                "bytes_in_flight_max must be at least one maximal frame (8 MiB)",
            ));
        }
        let node = format!("n{}", options.node_id);
        let directory = ActorDirectory::new();
        let root = format!("{node}/node");
        let stopping = Arc::new(AtomicBool::new(false));
        let serving = Arc::new(AtomicBool::new(false));
        let (fatal_sender, fatal) = watch::channel(None);
        directory.register(&root, ActorKind::NodeSupervisor, None);
        let (supervisor, _) = Actor::spawn(
            Some(root.clone()),
            NodeSupervisor,
            (Arc::clone(&stopping), fatal_sender, directory.clone()),
        )
        .await?;
        let cell = supervisor.get_cell();

        let flusher = Arc::new(Flusher::new(options.flusher_threads, FLUSH_QUEUE_MAX));
        let registry = PartitionRegistry::default();
        let partitions = PartitionSupervisor::start(
            format!("{node}/partitions"),
            &root,
            directory.clone(),
            registry.clone(),
            Some(cell.clone()),
        )
        .await?;
        // The offsets topic's replicas: the setting, at most one per member of the cluster.
        let cluster_size = options.cluster.as_ref().map_or(1, |c| c.quorum.len());
        let offsets_replication_factor = options
            .offsets_topic_replication_factor
            .min(u16::try_from(cluster_size).unwrap_or(u16::MAX))
            .max(1);
        let (publish, image) = watch::channel(Arc::new(MetadataImage::default()));
        // In a cluster the links to the other members exist before the group manager, whose
        // coordinators read other nodes' partitions over them; they connect in the background
        // and serve once the node has joined.
        let links = match &options.cluster {
            Some(cluster) => Some(peer_links(cluster, options.node_id, &directory, &root)?),
            None => None,
        };
        let remote_offsets: Option<Arc<dyn RemoteOffsets>> = links
            .as_ref()
            .map(|links| Arc::new(PeerRemoteOffsets::new(links.clone())) as Arc<dyn RemoteOffsets>);
        let groups = GroupManager::start(
            format!("{node}/groups"),
            &root,
            ManagerConfig {
                node: node.clone(),
                settings: options.group_settings,
                offsets_retention: options.offsets_retention,
                directory: directory.clone(),
                partitions: registry.clone(),
                image: image.clone(),
                offsets: OffsetsReader::new(
                    options.node_id,
                    registry.clone(),
                    image.clone(),
                    remote_offsets,
                ),
            },
            Some(cell.clone()),
        )
        .await?;
        let producer_ids = ProducerRegistry::default();
        // In a cluster, partitions replicate through the node's ReplicaManager (fetchers,
        // epoch-end questions, ISR proposals); a single node's partitions have no other
        // replica.
        let replication = links.as_ref().map(|links| {
            ReplicaManager::new(
                NodeId(options.node_id),
                links.clone(),
                registry.clone(),
                directory.clone(),
                &root,
            )
        });
        let replica_links: Arc<dyn ReplicaLinks> = match &replication {
            Some(manager) => Arc::new(manager.clone()),
            None => Arc::new(Standalone),
        };
        // This run of the node, in a cluster: registered with the controller, which gives the
        // replicated partitions the node leads a new leader epoch with it. Never 0, the
        // incarnation of nodes that do not say.
        let incarnation = options
            .cluster
            .as_ref()
            .map(|_| uuid::Uuid::new_v4().as_u64_pair().0.max(1));
        let applier_config = ApplierConfig {
            incarnation,
            links: replica_links,
            replica_lag_time_max: options
                .cluster
                .as_ref()
                .map_or(REPLICA_LAG_TIME_MAX_DEFAULT, |c| c.replica_lag_time_max),
            retention_check_interval: options.retention_check_interval,
            groups: Some(groups.clone()),
            node: node.clone(),
            node_id: options.node_id,
            data_dir: options.data_dir.clone(),
            durability: options.durability,
            verify_reads: options.verify_reads,
            flusher: Arc::clone(&flusher),
            directory: directory.clone(),
            partitions: partitions.clone(),
            producer_ids: producer_ids.clone(),
        };
        let applier = MetadataApplier::start(
            format!("{node}/applier"),
            &root,
            applier_config,
            Some(cell.clone()),
        )
        .await?;
        let parts = ControllerParts {
            id: format!("{node}/controller"),
            parent: root.clone(),
            node_id: options.node_id,
            advertised_host: options.advertised_host.clone(),
            advertised_port: options.advertised_port,
            applier: applier.clone(),
            directory: directory.clone(),
            publish,
            producer_ids,
        };
        let (controller, cluster, cluster_id) = match options.cluster {
            None => {
                let controller = start_single_controller(
                    &options.data_dir,
                    options.cluster_id.clone(),
                    parts,
                    cell.clone(),
                )
                .await?;
                // The controller applied the whole metadata log as it started: the image is
                // complete, so the data directory may be swept now.
                applier.arm_sweep(0).await;
                (controller, None, options.cluster_id)
            }
            Some(cluster) => {
                let links = links.expect("made above for a cluster");
                let (controller, runtime, cluster_id) = join_cluster(
                    cluster,
                    incarnation.expect("drawn above for a cluster"),
                    links,
                    registry.clone(),
                    &options.data_dir,
                    parts,
                    cell.clone(),
                )
                .await?;
                if let Some(manager) = &replication {
                    manager.serve_controller(controller.clone());
                }
                (controller, Some(runtime), cluster_id)
            }
        };
        // Consumer groups keep their state in a compacted internal topic with a fixed
        // partition count; the controller creates it when the first node asks (in a
        // cluster, every node asks, and the controller creates it once), with
        // `offsets_replication_factor` replicas, so not before that many nodes are live.
        let offsets_configs: BTreeMap<String, String> = [
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            (
                "segment.bytes".to_owned(),
                options.offsets_topic_segment_bytes.to_string(),
            ),
        ]
        .into_iter()
        .collect();
        let ensuring = ensure_offsets_topic(
            controller.clone(),
            options.offsets_topic_partitions,
            offsets_replication_factor,
            offsets_configs,
        );
        let mut creating = tokio::spawn(async move {
            let created = ensuring.await;
            match &created {
                Ok(()) => tracing::debug!("{OFFSETS_TOPIC} exists"),
                Err(e) => tracing::error!(error = %e, "cannot create {OFFSETS_TOPIC}"),
            }
            created
        });
        let offsets_topic = match tokio::time::timeout(OFFSETS_TOPIC_START_WAIT, &mut creating)
            .await
        {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => {
                return Err(NodeError::Internal(format!(
                    "cannot create {OFFSETS_TOPIC}: {e}"
                )));
            }
            Ok(Err(e)) => {
                return Err(NodeError::Internal(format!(
                    "the creation of {OFFSETS_TOPIC} failed: {e}"
                )));
            }
            Err(_) => {
                tracing::warn!(
                    replication_factor = offsets_replication_factor,
                    "{OFFSETS_TOPIC} does not exist yet (too few live nodes for its replication factor); serving without consumer groups until it does"
                );
                Some(creating)
            }
        };
        let requests = Arc::new(RequestMetrics::default());
        let raft_status = cluster.as_ref().map(|runtime| runtime.status.clone());
        let view = NodeView {
            node_id: options.node_id,
            cluster_id: cluster_id.clone(),
            advertised: format!("{}:{}", options.advertised_host, options.advertised_port),
            started_at: std::time::SystemTime::now(),
            directory: directory.clone(),
            image: controller.image(),
            leases: cluster
                .as_ref()
                .map(|c| (c.leases.clone(), c.freshness.clone())),
            raft: raft_status.clone(),
            partitions: registry.clone(),
            requests: Arc::clone(&requests),
            serving: Arc::clone(&serving),
            runtime: tokio::runtime::Handle::current(),
        };
        let services = Arc::new(NodeServices {
            node: node.clone(),
            node_id: options.node_id,
            cluster_id,
            controller: controller.clone(),
            raft: raft_status,
            partitions: registry,
            directory: directory.clone(),
            bytes_in_flight: Arc::new(Semaphore::new(options.bytes_in_flight_max)),
            inflight_requests_max: options.inflight_requests_max,
            sessions_started: AtomicU64::new(0),
            requests: Arc::clone(&requests),
            groups: groups.clone(),
            warnings: crate::log_limit::SharedWarnLimiter::default(),
            freshness: cluster.as_ref().map(|c| c.freshness.clone()),
            leases: cluster.as_ref().map(|c| c.leases.clone()),
        });
        let local_addr =
            options
                .listener
                .local_addr()
                .map_err(|e| vltava_storage::StorageError::Io {
                    path: PathBuf::from("listener"),
                    source: e,
                })?;
        let (shutdown, shutdown_signal) = watch::channel(false);
        let listener = tokio::spawn(run_listener(
            options.listener,
            services,
            options.connections_max,
            shutdown_signal,
            root,
        ));
        tracing::info!(%local_addr, node_id = options.node_id, "node serving clients");
        serving.store(true, Ordering::SeqCst);
        Ok(Node {
            directory,
            view,
            serving,
            groups,
            local_addr,
            supervisor,
            controller,
            applier,
            partitions,
            listener,
            cluster,
            offsets_topic,
            shutdown,
            stopping,
            fatal,
            flusher,
        })
    }

    /// Resolves when an essential actor fails; the node should then shut down.
    pub async fn failed(&mut self) -> String {
        match self.fatal.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "node supervisor stopped".into(),
        }
    }

    /// Stops accepting, finishes admitted requests, stops the actors and closes every log
    /// (flushed, with its clean-shutdown marker).
    pub async fn shutdown(self) {
        self.serving.store(false, Ordering::SeqCst);
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        let _ = self.listener.await;
        if let Some(creating) = &self.offsets_topic {
            creating.abort();
        }
        if let Some(cluster) = self.cluster {
            for task in &cluster.tasks {
                task.abort();
            }
            if let Err(e) = cluster.raft.shutdown().await {
                tracing::warn!(error = %e, "the Raft member did not stop cleanly");
            }
            cluster.listener.stop().await;
            cluster.links.shutdown().await;
        }
        let _ = self
            .controller
            .actor()
            .stop_and_wait(None, Some(ACTOR_STOP_TIMEOUT))
            .await;
        let _ = self
            .groups
            .actor()
            .stop_and_wait(None, Some(ACTOR_STOP_TIMEOUT))
            .await;
        let _ = self
            .applier
            .actor()
            .stop_and_wait(None, Some(ACTOR_STOP_TIMEOUT))
            .await;
        let _ = self
            .partitions
            .actor()
            .stop_and_wait(None, Some(ACTOR_STOP_TIMEOUT))
            .await;
        let _ = self
            .supervisor
            .stop_and_wait(None, Some(ACTOR_STOP_TIMEOUT))
            .await;
        // The pool finishes queued jobs and its threads exit.
        let flusher = self.flusher;
        let _ = tokio::task::spawn_blocking(move || drop(flusher)).await;
        tracing::info!("node stopped");
    }
}

/// What the controller starts with, whichever metadata log it gets.
struct ControllerParts {
    id: String,
    parent: String,
    node_id: u32,
    advertised_host: String,
    advertised_port: u16,
    applier: ApplierHandle,
    directory: ActorDirectory,
    publish: watch::Sender<Arc<MetadataImage>>,
    producer_ids: ProducerRegistry,
}

impl ControllerParts {
    fn args<L>(
        self,
        log: L,
        cluster_id: String,
        producer_ids_floor: u64,
        forwarder: Option<Arc<dyn Forwarder>>,
    ) -> ControllerArgs<L> {
        ControllerArgs {
            id: self.id,
            parent: self.parent,
            node_id: self.node_id,
            cluster_id,
            advertised_host: self.advertised_host,
            advertised_port: self.advertised_port,
            log,
            applier: Arc::new(self.applier),
            directory: self.directory,
            publish: self.publish,
            producer_ids: self.producer_ids,
            producer_ids_floor,
            forwarder,
        }
    }
}

/// Opens the single-node metadata log (and the legacy producer-id floor) and starts the
/// controller over it.
async fn start_single_controller(
    data_dir: &std::path::Path,
    cluster_id: String,
    parts: ControllerParts,
    supervisor: ractor::ActorCell,
) -> Result<ControllerHandle, NodeError> {
    let metadata = data_dir.join("__metadata");
    if metadata.join(RAFT_DIR).exists() {
        return Err(NodeError::Internal(format!(
            "{} holds a cluster member's metadata (Raft); start the node with its --controller-quorum",
            data_dir.display()
        )));
    }
    let metadata_path = metadata.join("metadata.log");
    let legacy_block = metadata.join(LEGACY_PRODUCER_ID_BLOCK_FILE);
    let (log, producer_ids_floor) = tokio::task::spawn_blocking(move || {
        let floor = legacy_producer_id_floor(&legacy_block)?;
        Ok::<_, crate::metadata::MetadataError>((FileMetadataLog::open(&metadata_path)?, floor))
    })
    .await
    .map_err(|e| crate::metadata::MetadataError::Task(e.to_string()))??;
    Ok(Controller::start(
        parts.args(log, cluster_id, producer_ids_floor, None),
        Some(supervisor),
    )
    .await?)
}

/// The links to the other members (none connected yet: `join_cluster` reconciles them with
/// the quorum), each dialling from the IP of this node's own peer port.
fn peer_links(
    cluster: &ClusterOptions,
    node_id: u32,
    directory: &ActorDirectory,
    root: &str,
) -> Result<PeerLinks, NodeError> {
    let peer_address = cluster
        .peer_listener
        .local_addr()
        .map_err(|e| NodeError::Internal(format!("cannot read the peer address: {e}")))?;
    Ok(PeerLinks::new(
        PeerLinkConfig {
            identity: PeerIdentity {
                cluster_id: cluster.cluster_id.clone(),
                node_id: NodeId(node_id),
            },
            bind_ip: peer_address.ip(),
            timings: PeerTimings::default(),
        },
        directory.clone(),
        root,
    ))
}

/// Joins the cluster: serves the peer port, links to the other members, learns the cluster
/// id if this data directory is new, opens this node's Raft member (forming the quorum if this
/// node is the lowest member), starts the controller over the Raft log, carries committed
/// images to the node, and registers the node with the controller. Returns once the node is
/// registered: a node serves clients only as a member of a working quorum.
async fn join_cluster(
    cluster: ClusterOptions,
    incarnation: u64,
    links: PeerLinks,
    partitions: PartitionRegistry,
    data_dir: &std::path::Path,
    parts: ControllerParts,
    supervisor: ractor::ActorCell,
) -> Result<(ControllerHandle, ClusterRuntime, String), NodeError> {
    let metadata = data_dir.join("__metadata");
    if metadata.join("metadata.log").exists() {
        return Err(NodeError::Internal(format!(
            "{} holds a single node's metadata; moving a single node into a quorum is not supported yet",
            data_dir.display()
        )));
    }
    let node_id = parts.node_id;
    let root = parts.parent.clone();
    let directory = parts.directory.clone();
    let identity = PeerIdentity {
        cluster_id: cluster.cluster_id.clone(),
        node_id: NodeId(node_id),
    };
    let members: BTreeMap<NodeId, SocketAddr> = cluster
        .quorum
        .iter()
        .map(|(id, address)| (NodeId(*id), *address))
        .collect();
    links.reconcile(&members).await;
    let leases = LeaseTable::default();
    let freshness = MetadataFreshness::default();
    let service = Arc::new(NodePeerService::new(
        NodeId(node_id),
        members.keys().copied().collect(),
        leases.clone(),
        partitions,
        parts.publish.subscribe(),
        links.clone(),
    ));
    let listener = PeerListener::spawn(
        cluster.peer_listener,
        PeerListenerConfig {
            identity,
            timings: PeerTimings::default(),
            connections_max: PEER_CONNECTIONS_MAX,
        },
        Arc::clone(&service),
        &directory,
        &root,
    )
    .map_err(|e| NodeError::Internal(format!("cannot serve the peer port: {e}")))?;
    let cluster_id = loop {
        tokio::select! {
            id = cluster.cluster_id.known_id() => break id,
            () = tokio::time::sleep(QUORUM_WAIT_LOG_INTERVAL) => {
                tracing::info!("waiting to learn the cluster id from another quorum member");
            }
        }
    };
    let config = RaftConfigBuilder::new(cluster_id.clone())
        .snapshot_policy(
            cluster.snapshot_entries,
            (cluster.snapshot_entries / 4).max(1),
        )
        .build()
        .map_err(|e| NodeError::Internal(format!("bad Raft settings: {e}")))?;
    let member = RaftMember::open(
        raft_node_id(NodeId(node_id)),
        config,
        Arc::new(RealStorage),
        &metadata.join(RAFT_DIR),
        &cluster_id,
        Arc::new(PeerRaftTransport::new(links.clone())),
    )
    .await
    .map_err(|e| NodeError::Internal(format!("cannot open the metadata quorum's log: {e}")))?;
    tracing::info!(recovery = ?member.log_recovery, "Raft member started");
    // Every change this node applied before it stopped was committed at or below the committed
    // index it kept: the data directory is swept only from an image that far, since an older
    // one (replayed while the member catches up) may not list topics whose partitions live
    // here.
    let sweep_version_min = member
        .raft
        .with_raft_state(|state| state.committed.map_or(0, |id| id.index))
        .await
        .map_err(|e| NodeError::Internal(format!("cannot read the Raft state: {e}")))?;
    service.serve_raft(member.raft.clone());
    bootstrap_quorum(&member.raft, node_id, &cluster.quorum)
        .await
        .map_err(|e| NodeError::Internal(format!("cannot form the controller quorum: {e}")))?;
    let forwarder: Arc<dyn Forwarder> = Arc::new(PeerForwarder::new(
        member.raft.clone(),
        node_id,
        links.clone(),
    ));
    let publish = parts.publish.clone();
    let producer_ids = parts.producer_ids.clone();
    let applier = parts.applier.clone();
    let sweeper = parts.applier.clone();
    let advertised = (parts.advertised_host.clone(), parts.advertised_port);
    let controller = Controller::start(
        parts.args(
            RaftMetadataLog::new(member.raft.clone(), member.image.clone()),
            cluster_id.clone(),
            0,
            Some(forwarder),
        ),
        Some(supervisor),
    )
    .await?;
    service.serve_controller(controller.clone());
    let publisher = tokio::spawn(publish_images(
        member.raft.clone(),
        member.image.clone(),
        publish,
        producer_ids,
        applier,
        freshness.clone(),
    ));
    // Renewals start before the node registers, so the controller has heard from it by the
    // time it appears in the metadata.
    let renewer = tokio::spawn(leases::renew_leases(
        member.raft.clone(),
        node_id,
        links.clone(),
        leases.clone(),
        freshness.clone(),
        controller.image(),
    ));
    let supervisor = tokio::spawn(leases::supervise_leases(
        member.raft.clone(),
        node_id,
        leases.clone(),
        links.clone(),
        controller.clone(),
        cluster.preferred_leader_return,
    ));
    retry_while_electing("register with the controller", || {
        controller.register_node(advertised.0.clone(), advertised.1, incarnation)
    })
    .await
    .map_err(|e| NodeError::Internal(format!("cannot register with the controller: {e}")))?;
    // Sessions refuse metadata until the node holds a lease; the node is not ready before.
    let mut last_log = std::time::Instant::now();
    while freshness.check().is_err() {
        if last_log.elapsed() >= QUORUM_WAIT_LOG_INTERVAL {
            tracing::info!("waiting for the controller to grant this node's lease");
            last_log = std::time::Instant::now();
        }
        tokio::time::sleep(leases::LEASE_RENEW_INTERVAL / 5).await;
    }
    sweeper.arm_sweep(sweep_version_min).await;
    Ok((
        controller,
        ClusterRuntime {
            status: RaftStatusSource::new(&member),
            raft: member.raft,
            links,
            listener,
            tasks: vec![publisher, renewer, supervisor],
            freshness,
            leases,
        },
        cluster_id,
    ))
}

/// Creates `__consumer_offsets` with `replication_factor` replicas unless it exists: it asks
/// the controller once that many nodes are registered and live (before, the controller would
/// refuse the factor), and again while the quorum elects or a node is fenced between the look
/// and the creation, every `CLUSTER_JOIN_RETRY`, saying why in the log every
/// `QUORUM_WAIT_LOG_INTERVAL`. Ends when the topic exists or with an error retrying will not
/// mend; the caller bounds how long it waits for it.
async fn ensure_offsets_topic(
    controller: ControllerHandle,
    partitions: u32,
    replication_factor: u16,
    configs: BTreeMap<String, String>,
) -> Result<(), ControllerError> {
    let image = controller.image();
    let mut last_log = std::time::Instant::now();
    loop {
        let (exists, live) = {
            let image = image.borrow();
            (
                image.topics.contains_key(OFFSETS_TOPIC),
                image.nodes.values().filter(|n| !n.fenced).count(),
            )
        };
        if exists {
            return Ok(());
        }
        let mut waiting_for = format!("{replication_factor} live nodes ({live} now)");
        if live >= usize::from(replication_factor) {
            match controller
                .ensure_internal_topic(
                    OFFSETS_TOPIC,
                    partitions,
                    replication_factor,
                    configs.clone(),
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.code().is_retriable()
                        || e.code() == ErrorCode::InvalidReplicationFactor =>
                {
                    waiting_for = e.to_string();
                }
                Err(e) => return Err(e),
            }
        }
        if last_log.elapsed() >= QUORUM_WAIT_LOG_INTERVAL {
            tracing::info!(waiting_for, "waiting to create {OFFSETS_TOPIC}");
            last_log = std::time::Instant::now();
        }
        tokio::time::sleep(CLUSTER_JOIN_RETRY).await;
    }
}

/// Runs `attempt` until it succeeds or fails with an error that retrying will not mend.
/// While the quorum forms or elects a controller, attempts fail with retriable errors; this
/// waits through them, saying so in the log every `QUORUM_WAIT_LOG_INTERVAL`.
async fn retry_while_electing<F, Fut>(what: &str, mut attempt: F) -> Result<(), ControllerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ControllerError>>,
{
    let mut last_log = std::time::Instant::now();
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) if e.code().is_retriable() => {
                if last_log.elapsed() >= QUORUM_WAIT_LOG_INTERVAL {
                    tracing::info!(error = %e, "waiting for the controller quorum to {what}");
                    last_log = std::time::Instant::now();
                }
                tokio::time::sleep(CLUSTER_JOIN_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The root of the tree: watches its children and reports a fatal failure.
#[derive(Debug)]
struct NodeSupervisor;

#[derive(Debug)]
struct NodeSupervisorState {
    stopping: Arc<AtomicBool>,
    fatal: watch::Sender<Option<String>>,
    directory: ActorDirectory,
}

impl Actor for NodeSupervisor {
    type Msg = ();
    type State = NodeSupervisorState;
    type Arguments = (
        Arc<AtomicBool>,
        watch::Sender<Option<String>>,
        ActorDirectory,
    );

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        (stopping, fatal, directory): Self::Arguments,
    ) -> Result<NodeSupervisorState, ActorProcessingErr> {
        Ok(NodeSupervisorState {
            stopping,
            fatal,
            directory,
        })
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let reason = match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                format!("{} failed: {error}", cell.get_name().unwrap_or_default())
            }
            SupervisionEvent::ActorTerminated(cell, _, reason)
                if !state.stopping.load(Ordering::SeqCst) =>
            {
                format!(
                    "{} stopped: {}",
                    cell.get_name().unwrap_or_default(),
                    reason.unwrap_or_default()
                )
            }
            _ => return Ok(()),
        };
        tracing::error!(%reason, "an essential actor is gone; the node shuts down");
        if let Some(name) = reason.split_whitespace().next() {
            state.directory.record_failure(name, &reason, false);
        }
        state.fatal.send_replace(Some(reason));
        Ok(())
    }
}
