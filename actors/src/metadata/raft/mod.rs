//! The cluster metadata log as a replicated Raft log (openraft 0.9, storage-v2; DESIGN.md,
//! "Raft"). A committed entry is one `MetadataBatch` of `MetadataRecord`s; every member
//! applies committed batches in order to its `MetadataImage` and publishes each new image on
//! a `watch` channel.
//!
//! Owns: one member's Raft directory (`raft.log`, `vote`, `committed`, `purged`, `snapshot`),
//! through the `Storage` trait, and the Raft task openraft runs over it. Receives from: the
//! peer links (Raft requests of other members, through `MetadataRaft`'s request methods) and
//! the controller (`propose`). Sends to: other members, through a [`RaftTransport`]; and the
//! MetadataApplier, which watches the published image.
//! Bounds: an entry is at most `codec::ENTRY_BYTES_MAX`, a replication read at most
//! `log_store::LOG_READ_BYTES_MAX`, a snapshot at most `state_machine::SNAPSHOT_BYTES_MAX` and
//! travels in chunks of `config::SNAPSHOT_CHUNK_BYTES`; every network call has a timeout.
//! openraft's own queues (its API and notification channels) are unbounded: the bound is at
//! their edges, where a proposal is one controller request and a Raft request one admitted
//! peer frame.
//! Shutdown: `MetadataRaft::shutdown` stops the Raft task; every write was durable when it
//! was acknowledged, so there is nothing to flush.
//!
//! # Layout
//! - this file: the `TypeConfig` (`D` = `MetadataBatch`, `R` = `MetadataBatchApplied`, node
//!   ids `u64`, nodes `BasicNode` with the peer address), node-id mapping, [`RaftMember`]
//!   (opens the store and starts Raft) and [`propose`].
//! - `codec`: the bytes of entries, the vote and log-id files, and snapshots, each versioned.
//! - `log_store`: `LogStore` (`RaftLogStorage`) and `LogReader`.
//! - `state_machine`: `StateMachine` (`RaftStateMachine`) and `SnapshotBuilder`.
//! - `network`: the `RaftTransport` seam and openraft's network over it.
//! - `in_process`: `InProcessRouter`, a transport of in-process handles for tests.
//! - `peer_transport`: `PeerRaftTransport` (Raft's requests over the peer links' control
//!   channel) and `RaftPeerService` (the other members' requests answered by the local Raft).
//! - `metadata_log`: `RaftMetadataLog`, the controller's `MetadataLog` over this Raft (a
//!   proposal answers with the image at its index; `lead` checks leadership linearizably).
//! - `status`: `RaftStatusSource`, the member's role, term, commit and applied indexes and
//!   (on the leader) each peer's match index, read from watches without a message.
//! - `config`: `RaftConfigBuilder` and the cluster defaults.
//! - `error`: `RaftStoreError`, `RaftStartError`, `ProposeError`, `RaftConfigError`.
//!
//! # Invariants
//! - Nothing is acknowledged to openraft before it is durable: an append's flush callback
//!   fires after its fsync; a vote, committed id or purge point after its atomic rename is
//!   synced; a snapshot after its file is.
//! - After open, the log is a prefix of what was appended, with every flushed entry; a torn
//!   tail is cut and reported (`LogRecovery`). Bytes that pass their checksum but do not
//!   decode are refused, never cut: as `UnsupportedVersion` when a newer build wrote them,
//!   as `Corrupt` otherwise. The node then refuses to start with that error.
//! - The vote never goes back (asserted on save; checked across crashes by the tests).
//! - The published image's version is the log index of the last applied entry.
//!
//! # Crash analysis
//! Each file's writes are analysed where they happen (`log_store`, `state_machine`); at
//! every fsync, rename and truncate a comment says what is durable and what recovery does.
//!
//! # How a node uses it
//! `node::join_cluster` opens a `RaftMember` under `__metadata/raft` when the node is given a
//! `--controller-quorum`, over `PeerRaftTransport`; the lowest member initialises the quorum
//! (`cluster::bootstrap_quorum`). The controller commits through `metadata_log::
//! RaftMetadataLog`, and `cluster::publish_images` carries each committed image to the node.
//! Membership is the quorum given at start; changing it (adding a learner, promoting it) is
//! openraft's `change_membership`, not wrapped yet.

pub mod codec;
pub mod config;
pub mod error;
pub mod in_process;
pub mod log_store;
pub mod metadata_log;
pub mod network;
pub mod peer_transport;
pub mod state_machine;
pub mod status;

#[cfg(test)]
mod tests;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::raft::ClientWriteResponse;
use openraft::{BasicNode, Entry, EntryPayload, LogId};
use tokio::sync::watch;
use vltava_messages::NodeId;
use vltava_messages::metadata_records::{MetadataBatch, MetadataBatchApplied};
use vltava_storage::fs::Storage;

pub use config::RaftConfigBuilder;
pub use error::{ProposeError, RaftConfigError, RaftStartError, RaftStoreError};
pub use in_process::{InProcessRouter, InProcessTransport};
pub use log_store::{LogRecovery, LogStore};
pub use metadata_log::RaftMetadataLog;
pub use network::{NetworkFactory, RaftTransport, RemoteResult, TransportError};
pub use peer_transport::{PeerRaftTransport, RaftPeerService};
pub use state_machine::StateMachine;
pub use status::{PeerReplication, RaftRole, RaftStatus, RaftStatusSource};

use crate::metadata::MetadataImage;

openraft::declare_raft_types!(
    /// The types of vltava's metadata Raft.
    pub TypeConfig:
        D = MetadataBatch,
        R = MetadataBatchApplied,
        NodeId = RaftNodeId,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A node id as Raft knows it. vltava's are `u32` ([`NodeId`]); openraft's examples and
/// tooling use `u64`, and every `u32` maps to one.
pub type RaftNodeId = u64;

/// The handle of a running member: requests from other members go in through it
/// (`append_entries`, `vote`, `install_snapshot`), as do proposals ([`propose`]),
/// `initialize`, membership changes, metrics and `shutdown`.
pub type MetadataRaft = openraft::Raft<TypeConfig>;

/// The Raft id of a vltava node.
#[must_use]
pub fn raft_node_id(node: NodeId) -> RaftNodeId {
    RaftNodeId::from(node.0)
}

/// The vltava node a Raft id names; `None` for an id no vltava node has.
#[must_use]
pub fn vltava_node_id(id: RaftNodeId) -> Option<NodeId> {
    u32::try_from(id).ok().map(NodeId)
}

/// A running member of the metadata quorum.
#[derive(Clone)]
pub struct RaftMember {
    /// Raft itself.
    pub raft: MetadataRaft,
    /// Every image the state machine publishes, starting with the one it opened with.
    pub image: watch::Receiver<Arc<MetadataImage>>,
    /// The member's committed log id, published by its log store after each durable save.
    pub committed: watch::Receiver<Option<LogId<RaftNodeId>>>,
    /// What opening the log found and repaired.
    pub log_recovery: LogRecovery,
}

impl std::fmt::Debug for RaftMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftMember")
            .field("image_version", &self.image.borrow().version)
            .field("log_recovery", &self.log_recovery)
            .finish_non_exhaustive()
    }
}

impl RaftMember {
    /// Opens the Raft directory `dir` (log, vote, snapshot) and starts Raft over it as member
    /// `id`. A new directory starts empty: call `raft.initialize` on one member with the
    /// first membership, or add the member to a running quorum. Fails, without starting, on a
    /// directory written by a newer build or damaged beyond a torn tail.
    pub async fn open<T: RaftTransport>(
        id: RaftNodeId,
        config: Arc<openraft::Config>,
        storage: Arc<dyn Storage>,
        dir: &Path,
        cluster_id: &str,
        transport: Arc<T>,
    ) -> Result<RaftMember, RaftStartError> {
        let dir: PathBuf = dir.to_path_buf();
        let cluster_id = cluster_id.to_owned();
        let (log_store, state_machine) = tokio::task::spawn_blocking(move || {
            let log_store = LogStore::open(Arc::clone(&storage), &dir)?;
            let state_machine = StateMachine::open(storage, &dir, cluster_id)?;
            Ok::<_, RaftStoreError>((log_store, state_machine))
        })
        .await
        .map_err(RaftStoreError::Task)??;
        let log_recovery = log_store.recovery().clone();
        let committed = log_store.subscribe_committed();
        let image = state_machine.subscribe();
        let network = NetworkFactory::new(id, transport);
        let raft = MetadataRaft::new(id, config, network, log_store, state_machine).await?;
        Ok(RaftMember {
            raft,
            image,
            committed,
            log_recovery,
        })
    }
}

/// The bytes a batch takes as a log entry.
#[must_use]
pub fn entry_bytes(batch: &MetadataBatch) -> u64 {
    let entry = Entry::<TypeConfig> {
        log_id: LogId::default(),
        payload: EntryPayload::Normal(batch.clone()),
    };
    codec::encode_entry(&entry).len() as u64
}

/// Commits a batch of metadata records as one entry through the leader `raft` (an error
/// names the leader when this member is not it). Returns once the entry is committed and
/// applied here; the answer carries the version of the image that includes it. A batch over
/// the entry limit is refused before it reaches Raft, since a member that cannot store an
/// entry stops.
pub async fn propose(
    raft: &MetadataRaft,
    batch: MetadataBatch,
) -> Result<ClientWriteResponse<TypeConfig>, ProposeError> {
    let bytes = entry_bytes(&batch);
    if bytes > u64::from(codec::ENTRY_BYTES_MAX) {
        return Err(ProposeError::BatchTooLarge {
            bytes,
            max: codec::ENTRY_BYTES_MAX,
        });
    }
    Ok(raft.client_write(batch).await?)
}
