//! `StateMachine`: openraft's `RaftStateMachine` for the metadata log. Applies committed
//! entries' records to a `MetadataImage` in log order and publishes every new image on a
//! `watch` channel; builds, installs and keeps the snapshot (the image as `MetadataRecord`s)
//! in the member's Raft directory.
//!
//! Owns: the current image, the last applied log id and membership (the Raft state-machine
//! worker task owns the `StateMachine`), and the `snapshot` file, shared with the snapshot
//! builders openraft runs on tasks of their own (one lock, taken on the blocking pool to
//! write the file, never across an `.await`).
//! Sends to: whoever holds a `watch::Receiver<Arc<MetadataImage>>` (the MetadataApplier
//! reconciles partitions from it asynchronously). `apply` never waits on anything but
//! itself: a `watch` send never blocks, so a slow partition cannot stall Raft.
//!
//! Invariants:
//! - The published image's `version` is the index of the last applied entry (0 before any):
//!   a client compares versions to tell newer metadata from older.
//! - Entries are applied in index order, each once (asserted).
//! - The state machine is not written on every apply: the snapshot is what persists. After a
//!   restart it starts from the snapshot and openraft applies the log again from there up to
//!   the saved committed log id.
//! - The current snapshot never goes back: a build that finishes after a newer snapshot was
//!   installed or built is not kept.
//!
//! Crash analysis: the snapshot file is written by `checkpoint::write_atomic` (temporary file,
//! fsync, rename, directory fsync), so a crash leaves the old snapshot or the new one, whole.
//! A snapshot is durable before openraft learns of it (and purges the log it covers); a crash
//! after an install but before the log's purge finds the snapshot past the log's end, and
//! openraft purges up to it at start. A snapshot that exists but fails its checksum is refused
//! as corrupt, not ignored: the log it covers may be purged, and starting from an empty image
//! would misapply what follows.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership,
};
use tokio::sync::watch;
use vltava_messages::metadata_records::{MetadataBatch, MetadataBatchApplied};
use vltava_storage::checkpoint;
use vltava_storage::fs::Storage;

use super::codec;
use super::{RaftNodeId, RaftStoreError, TypeConfig};
use crate::metadata::MetadataImage;

/// The snapshot's file in the Raft directory.
pub const SNAPSHOT_FILE: &str = "snapshot";

/// The largest snapshot. A partition costs about 100 bytes of records and a topic a few
/// hundred, so 64 MiB holds some 500,000 partitions: far past what one cluster's metadata
/// holds, while a damaged or hostile length cannot make a node allocate without bound.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 << 20;

/// The snapshot on disk, kept in memory to send to followers.
#[derive(Clone, Debug)]
struct CurrentSnapshot {
    meta: SnapshotMeta<RaftNodeId, BasicNode>,
    /// The file's bytes (its CRC included).
    bytes: Arc<Vec<u8>>,
}

/// The snapshot file and what it holds, shared by the state machine and its builders.
#[derive(Debug)]
struct SnapshotSlot {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    current: Mutex<Option<CurrentSnapshot>>,
}

impl SnapshotSlot {
    fn lock(&self) -> MutexGuard<'_, Option<CurrentSnapshot>> {
        // A panic under the lock leaves either the old snapshot or the new one in it, both
        // whole.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `bytes` the snapshot on disk and in memory; with `only_if_newer`, not if the
    /// current one covers at least as much of the log. Blocks on two fsyncs.
    fn persist(
        &self,
        meta: SnapshotMeta<RaftNodeId, BasicNode>,
        bytes: Arc<Vec<u8>>,
        only_if_newer: bool,
    ) -> Result<bool, RaftStoreError> {
        let mut current = self.lock();
        if only_if_newer
            && let Some(existing) = current.as_ref()
            && existing.meta.last_log_id >= meta.last_log_id
        {
            return Ok(false);
        }
        // `write_atomic` appends the CRC-32C of the body, which is exactly the snapshot's own
        // trailing CRC: the file holds the same bytes a leader sends.
        let body = &bytes[..bytes.len() - 4];
        checkpoint::write_atomic(&*self.storage, &self.path, body)?;
        *current = Some(CurrentSnapshot { meta, bytes });
        Ok(true)
    }
}

/// The metadata image a snapshot's records build, at version `last_applied`'s index.
fn image_from(
    batch: &MetadataBatch,
    last_applied: Option<LogId<RaftNodeId>>,
    cluster_id: &str,
) -> MetadataImage {
    let mut image = MetadataImage {
        cluster_id: cluster_id.to_owned(),
        ..MetadataImage::default()
    };
    for record in &batch.records {
        image.apply(record);
    }
    image.version = last_applied.map_or(0, |id| id.index);
    image
}

fn snapshot_error(e: &RaftStoreError, verb: ErrorVerb) -> StorageError<RaftNodeId> {
    e.to_raft(ErrorSubject::Snapshot(None), verb)
}

/// The metadata state machine of one member.
#[derive(Debug)]
pub struct StateMachine {
    slot: Arc<SnapshotSlot>,
    cluster_id: String,
    image: Arc<MetadataImage>,
    last_applied: Option<LogId<RaftNodeId>>,
    membership: StoredMembership<RaftNodeId, BasicNode>,
    publish: watch::Sender<Arc<MetadataImage>>,
}

impl StateMachine {
    /// Opens the state machine in `dir`, starting from the snapshot there if any. Blocks on
    /// I/O. Refuses a damaged snapshot (`Corrupt`) and one written by a newer build
    /// (`UnsupportedVersion`). The images it publishes carry `cluster_id`.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        cluster_id: impl Into<String>,
    ) -> Result<StateMachine, RaftStoreError> {
        let cluster_id = cluster_id.into();
        storage
            .create_dir_all(dir)
            .map_err(|e| RaftStoreError::io(dir, e))?;
        let path = dir.join(SNAPSHOT_FILE);
        let mut temp = path.as_os_str().to_owned();
        temp.push(checkpoint::TEMP_SUFFIX);
        let temp = PathBuf::from(temp);
        if storage.exists(&temp) {
            // A snapshot write a crash interrupted; the snapshot file never depends on it.
            storage
                .remove_file(&temp)
                .map_err(|e| RaftStoreError::io(&temp, e))?;
        }
        let current = if storage.exists(&path) {
            Some(read_snapshot_file(&*storage, &path)?)
        } else {
            None
        };
        let (image, last_applied, membership) = match &current {
            Some((snapshot, batch)) => (
                image_from(batch, snapshot.meta.last_log_id, &cluster_id),
                snapshot.meta.last_log_id,
                snapshot.meta.last_membership.clone(),
            ),
            None => (
                MetadataImage {
                    cluster_id: cluster_id.clone(),
                    ..MetadataImage::default()
                },
                None,
                StoredMembership::default(),
            ),
        };
        let image = Arc::new(image);
        let (publish, _) = watch::channel(Arc::clone(&image));
        Ok(StateMachine {
            slot: Arc::new(SnapshotSlot {
                storage,
                path,
                current: Mutex::new(current.map(|(snapshot, _)| snapshot)),
            }),
            cluster_id,
            image,
            last_applied,
            membership,
            publish,
        })
    }

    /// A receiver of every image this state machine publishes, starting with the current one.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.publish.subscribe()
    }

    /// The current image.
    #[must_use]
    pub fn image(&self) -> Arc<MetadataImage> {
        Arc::clone(&self.image)
    }

    /// Applies committed entries in order and publishes the resulting image once. Never
    /// waits: no I/O, no lock another task holds, no channel that can be full.
    fn apply_entries(
        &mut self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Vec<MetadataBatchApplied> {
        let image = Arc::make_mut(&mut self.image);
        let mut replies = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            assert!(
                self.last_applied
                    .is_none_or(|applied| log_id.index == applied.index + 1),
                "entries are applied in order, each once: {log_id} after {:?}",
                self.last_applied
            );
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    for record in &batch.records {
                        image.apply(record);
                    }
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(log_id), membership);
                }
            }
            image.version = log_id.index;
            self.last_applied = Some(log_id);
            replies.push(MetadataBatchApplied {
                version: log_id.index,
            });
        }
        if !replies.is_empty() {
            // `send_replace` publishes even while nobody listens, and never blocks.
            self.publish.send_replace(Arc::clone(&self.image));
        }
        replies
    }
}

/// Reads and decodes the snapshot file. Blocks.
fn read_snapshot_file(
    storage: &dyn Storage,
    path: &Path,
) -> Result<(CurrentSnapshot, MetadataBatch), RaftStoreError> {
    let io = |e| RaftStoreError::io(path, e);
    let file = storage.open(path, false).map_err(io)?;
    let len = file.byte_len().map_err(io)?;
    if len > SNAPSHOT_BYTES_MAX {
        return Err(RaftStoreError::SnapshotTooLarge {
            bytes: len,
            max: SNAPSHOT_BYTES_MAX,
        });
    }
    let mut bytes = Vec::new();
    file.read_exact_at_into(&mut bytes, len as usize, 0)
        .map_err(io)?;
    let (meta, batch) = codec::decode_snapshot(&bytes).map_err(|e| e.at(path, 0))?;
    Ok((
        CurrentSnapshot {
            meta,
            bytes: Arc::new(bytes),
        },
        batch,
    ))
}

/// Builds a snapshot from a consistent view of the state machine, taken when openraft asked
/// for the builder (an `Arc` of the image: later applies copy on write).
#[derive(Debug)]
pub struct SnapshotBuilder {
    slot: Arc<SnapshotSlot>,
    image: Arc<MetadataImage>,
    last_applied: Option<LogId<RaftNodeId>>,
    membership: StoredMembership<RaftNodeId, BasicNode>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<RaftNodeId>> {
        let slot = Arc::clone(&self.slot);
        let image = Arc::clone(&self.image);
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: snapshot_id(self.last_applied),
        };
        let built = tokio::task::spawn_blocking(move || {
            let batch = MetadataBatch {
                records: image.to_records(),
            };
            let bytes = Arc::new(codec::encode_snapshot(&meta, &batch));
            if bytes.len() as u64 > SNAPSHOT_BYTES_MAX {
                return Err(RaftStoreError::SnapshotTooLarge {
                    bytes: bytes.len() as u64,
                    max: SNAPSHOT_BYTES_MAX,
                });
            }
            slot.persist(meta.clone(), Arc::clone(&bytes), true)?;
            Ok((meta, bytes))
        })
        .await
        .map_err(RaftStoreError::Task)
        .and_then(|built| built);
        let (meta, bytes) = built.map_err(|e| snapshot_error(&e, ErrorVerb::Write))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes.as_ref().clone())),
        })
    }
}

/// A snapshot id: unique per build, since two builds at one log id are different transfers.
fn snapshot_id(last_applied: Option<LogId<RaftNodeId>>) -> String {
    let (term, index) = last_applied.map_or((0, 0), |id| (id.leader_id.term, id.index));
    format!("{term}-{index}-{}", uuid::Uuid::new_v4().simple())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<RaftNodeId>>,
            StoredMembership<RaftNodeId, BasicNode>,
        ),
        StorageError<RaftNodeId>,
    > {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<MetadataBatchApplied>, StorageError<RaftNodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        Ok(self.apply_entries(entries))
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            slot: Arc::clone(&self.slot),
            image: Arc::clone(&self.image),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<RaftNodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftNodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<RaftNodeId>> {
        let bytes = snapshot.into_inner();
        let slot = Arc::clone(&self.slot);
        let meta = meta.clone();
        let cluster_id = self.cluster_id.clone();
        let installed = tokio::task::spawn_blocking(move || {
            if bytes.len() as u64 > SNAPSHOT_BYTES_MAX {
                return Err(RaftStoreError::SnapshotTooLarge {
                    bytes: bytes.len() as u64,
                    max: SNAPSHOT_BYTES_MAX,
                });
            }
            // Decoded where it arrives: a newer build's snapshot is refused as such, a damaged
            // one as corrupt, before anything is replaced.
            let received = slot.path.with_extension("received");
            let (decoded, batch) =
                codec::decode_snapshot(&bytes).map_err(|e| e.at(&received, 0))?;
            if decoded != meta {
                return Err(RaftStoreError::Corrupt {
                    path: received,
                    position: 0,
                    reason: "received snapshot does not match the metadata it came with",
                });
            }
            let image = image_from(&batch, meta.last_log_id, &cluster_id);
            slot.persist(meta.clone(), Arc::new(bytes), false)?;
            Ok((meta, image))
        })
        .await
        .map_err(RaftStoreError::Task)
        .and_then(|installed| installed);
        let (meta, image) = installed.map_err(|e| snapshot_error(&e, ErrorVerb::Write))?;
        self.image = Arc::new(image);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership;
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            topics = self.image.topics.len(),
            "installed a metadata snapshot from the leader"
        );
        self.publish.send_replace(Arc::clone(&self.image));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<RaftNodeId>> {
        let current = self.slot.lock().clone();
        Ok(current.map(|current| Snapshot {
            meta: current.meta,
            snapshot: Box::new(Cursor::new(current.bytes.as_ref().clone())),
        }))
    }
}
