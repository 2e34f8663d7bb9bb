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
use crate::directory::{ActorDirectory, ActorKind};
use crate::groups::state::GroupSettings;
use crate::groups::{GroupManager, GroupManagerHandle, ManagerConfig};
use crate::metadata::controller::{Controller, ControllerArgs, ControllerHandle};
use crate::metadata::producer_ids::ProducerRegistry;
use crate::metadata::{FileMetadataLog, MetadataImage};
use crate::metrics::RequestMetrics;
use crate::partition::Durability;
use crate::partition::supervisor::{
    PartitionRegistry, PartitionSupervisor, PartitionSupervisorHandle,
};
use crate::session::NodeServices;
use crate::session::listener::run_listener;
use vltava_messages::group_records::OFFSETS_TOPIC;

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

/// What a node starts with.
#[derive(Debug)]
pub struct NodeOptions {
    pub node_id: u32,
    pub cluster_id: String,
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
    /// Its segment size.
    pub offsets_topic_segment_bytes: u64,
    /// How long an empty group keeps its committed offsets.
    pub offsets_retention: Duration,
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
        let (publish, image) = watch::channel(Arc::new(MetadataImage::default()));
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
            },
            Some(cell.clone()),
        )
        .await?;
        let producer_ids = ProducerRegistry::default();
        let applier_config = ApplierConfig {
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
        let metadata_path = options.data_dir.join("__metadata").join("metadata.log");
        let legacy_block = options
            .data_dir
            .join("__metadata")
            .join(LEGACY_PRODUCER_ID_BLOCK_FILE);
        let (log, producer_ids_floor) = tokio::task::spawn_blocking(move || {
            let floor = legacy_producer_id_floor(&legacy_block)?;
            Ok::<_, crate::metadata::MetadataError>((FileMetadataLog::open(&metadata_path)?, floor))
        })
        .await
        .map_err(|e| crate::metadata::MetadataError::Task(e.to_string()))??;
        let controller = Controller::start(
            ControllerArgs {
                id: format!("{node}/controller"),
                parent: root.clone(),
                node_id: options.node_id,
                cluster_id: options.cluster_id.clone(),
                advertised_host: options.advertised_host.clone(),
                advertised_port: options.advertised_port,
                log,
                applier: Arc::new(applier.clone()),
                directory: directory.clone(),
                publish,
                producer_ids,
                producer_ids_floor,
            },
            Some(cell.clone()),
        )
        .await?;
        // Consumer groups keep their offsets in a compacted internal topic with a fixed
        // partition count; a node creates it when it first starts.
        let offsets_configs = [
            ("cleanup.policy".to_owned(), "compact".to_owned()),
            (
                "segment.bytes".to_owned(),
                options.offsets_topic_segment_bytes.to_string(),
            ),
        ]
        .into_iter()
        .collect();
        controller
            .ensure_internal_topic(
                OFFSETS_TOPIC,
                options.offsets_topic_partitions,
                offsets_configs,
            )
            .await
            .map_err(|e| NodeError::Internal(format!("cannot create {OFFSETS_TOPIC}: {e}")))?;
        let requests = Arc::new(RequestMetrics::default());
        let view = NodeView {
            node_id: options.node_id,
            cluster_id: options.cluster_id.clone(),
            advertised: format!("{}:{}", options.advertised_host, options.advertised_port),
            started_at: std::time::SystemTime::now(),
            directory: directory.clone(),
            image: controller.image(),
            partitions: registry.clone(),
            requests: Arc::clone(&requests),
            serving: Arc::clone(&serving),
            runtime: tokio::runtime::Handle::current(),
        };
        let services = Arc::new(NodeServices {
            node: node.clone(),
            node_id: options.node_id,
            cluster_id: options.cluster_id,
            controller: controller.clone(),
            partitions: registry,
            directory: directory.clone(),
            bytes_in_flight: Arc::new(Semaphore::new(options.bytes_in_flight_max)),
            inflight_requests_max: options.inflight_requests_max,
            sessions_started: AtomicU64::new(0),
            requests: Arc::clone(&requests),
            groups: groups.clone(),
            warnings: crate::log_limit::SharedWarnLimiter::default(),
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
