//! The metadata log: where committed metadata records live, behind the `MetadataLog` trait
//! (on one node `FileMetadataLog`, a record file fsynced per append; in a cluster the Raft
//! log).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use vltava_messages::metadata_records::MetadataRecord;
use vltava_storage::record_file::RecordFile;
use vltava_storage::{RealStorage, StorageError};

use crate::metadata::MetadataImage;

/// Why the metadata log failed.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("metadata record {index} is undecodable: {reason}")]
    Undecodable { index: usize, reason: String },
    #[error("metadata log task failed: {0}")]
    Task(String),
    /// This node does not lead the metadata log (`leader`, when one is known, does).
    #[error("this node is not the controller{}", leader.map(|l| format!(" (node {l} is)")).unwrap_or_default())]
    NotLeader { leader: Option<u32> },
    /// The replicated log failed to commit (a fatal Raft error, a batch too large).
    #[error("metadata commit failed: {0}")]
    Commit(String),
}

/// Where committed metadata records live. `append` returns once the records are committed
/// (durable on one node; replicated to a quorum in a cluster).
///
/// Two shapes share it. On one node the controller builds the image itself from what it
/// commits (`replay` at start, then each append), and publishes it. In a cluster the Raft
/// state machine builds and publishes the image on every node (`published`); the controller
/// only decides changes, on the node that leads the log (`lead`), and takes the image the
/// state machine built (`append` returns it).
pub trait MetadataLog: Send + 'static {
    /// Every committed record, in order. A log that publishes its own images has nothing to
    /// replay: the controller starts from the published image.
    fn replay(&mut self)
    -> impl Future<Output = Result<Vec<MetadataRecord>, MetadataError>> + Send;

    /// Commits records, in order, as one change. Returns the image that includes them when the
    /// log builds images itself (`None`: the controller applies the records to its own).
    fn append(
        &mut self,
        records: Vec<MetadataRecord>,
    ) -> impl Future<Output = Result<Option<Arc<MetadataImage>>, MetadataError>> + Send;

    /// The images the log publishes itself, as they commit; `None` when the controller
    /// publishes them.
    fn published(&self) -> Option<watch::Receiver<Arc<MetadataImage>>> {
        None
    }

    /// Makes sure this node may decide metadata changes now: it leads the log, and every
    /// change committed before is in the image. Returns that image when it is not the one at
    /// `version` the controller holds (after a change of leader, say); `NotLeader` when another
    /// node leads, or none does.
    fn lead(
        &mut self,
        version: u64,
    ) -> impl Future<Output = Result<Option<Arc<MetadataImage>>, MetadataError>> + Send {
        let _ = version;
        std::future::ready(Ok(None))
    }
}

/// The single-node metadata log: a record file; each commit's records are written together
/// and made durable with one fsync.
#[derive(Debug)]
pub struct FileMetadataLog {
    /// `None` only while a blocking task holds it.
    file: Option<RecordFile>,
    /// The records read at open, until `replay` hands them over. Nothing else needs them, so
    /// none are kept after that: the log used to hold every record it had ever committed, a
    /// few hundred bytes per partition ever created, for the life of the process.
    opened: Option<Vec<MetadataRecord>>,
}

fn decode_all(bodies: &[Vec<u8>]) -> Result<Vec<MetadataRecord>, MetadataError> {
    bodies
        .iter()
        .enumerate()
        .map(|(index, bytes)| {
            MetadataRecord::decode(bytes).map_err(|e| MetadataError::Undecodable {
                index,
                reason: e.reason,
            })
        })
        .collect()
}

impl FileMetadataLog {
    /// Opens (or creates) the file and decodes every record. Blocks.
    pub fn open(path: &Path) -> Result<FileMetadataLog, MetadataError> {
        let (file, contents) = RecordFile::open(Arc::new(RealStorage), path)?;
        let records = decode_all(&contents.records)?;
        Ok(FileMetadataLog {
            file: Some(file),
            opened: Some(records),
        })
    }

    /// Runs `work` with the file on the blocking pool, and takes the file back.
    async fn with_file<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut RecordFile) -> T + Send + 'static,
    ) -> Result<T, MetadataError> {
        let mut file = self.file.take().ok_or_else(|| {
            MetadataError::Task("metadata file lost by an earlier failure".into())
        })?;
        let (file, out) = tokio::task::spawn_blocking(move || {
            let out = work(&mut file);
            (file, out)
        })
        .await
        .map_err(|e| MetadataError::Task(e.to_string()))?;
        self.file = Some(file);
        Ok(out)
    }
}

impl MetadataLog for FileMetadataLog {
    async fn replay(&mut self) -> Result<Vec<MetadataRecord>, MetadataError> {
        if let Some(records) = self.opened.take() {
            return Ok(records);
        }
        // A second replay (none happens today) reads the file again.
        let bodies = self.with_file(|file| file.read_all()).await??;
        decode_all(&bodies)
    }

    async fn append(
        &mut self,
        records: Vec<MetadataRecord>,
    ) -> Result<Option<Arc<MetadataImage>>, MetadataError> {
        let encoded: Vec<Vec<u8>> = records.iter().map(MetadataRecord::encode).collect();
        self.with_file(move |file| file.append_all(&encoded))
            .await??;
        Ok(None)
    }
}
