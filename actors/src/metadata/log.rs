//! The metadata log: where committed metadata records live, behind the `MetadataLog` trait
//! (on one node `FileMetadataLog`, a record file fsynced per append; in a cluster the Raft
//! log).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use vltava_messages::metadata_records::MetadataRecord;
use vltava_storage::record_file::RecordFile;
use vltava_storage::{RealStorage, StorageError};

/// Why the metadata log failed.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("metadata record {index} is undecodable: {reason}")]
    Undecodable { index: usize, reason: String },
    #[error("metadata log task failed: {0}")]
    Task(String),
}

/// Where committed metadata records live. `append` returns once the records are committed
/// (durable on one node; replicated to a quorum in a cluster).
pub trait MetadataLog: Send + 'static {
    /// Every committed record, in order.
    fn replay(&mut self)
    -> impl Future<Output = Result<Vec<MetadataRecord>, MetadataError>> + Send;
    /// Commits records, in order.
    fn append(
        &mut self,
        records: Vec<MetadataRecord>,
    ) -> impl Future<Output = Result<(), MetadataError>> + Send;
}

/// The single-node metadata log: a record file, each record fsynced as it is appended.
#[derive(Debug)]
pub struct FileMetadataLog {
    /// `None` only while a blocking task holds it.
    file: Option<RecordFile>,
    records: Vec<MetadataRecord>,
}

impl FileMetadataLog {
    /// Opens (or creates) the file and decodes every record. Blocks.
    pub fn open(path: &Path) -> Result<FileMetadataLog, MetadataError> {
        let (file, contents) = RecordFile::open(Arc::new(RealStorage), path)?;
        let records = contents
            .records
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                MetadataRecord::decode(bytes).map_err(|e| MetadataError::Undecodable {
                    index,
                    reason: e.reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FileMetadataLog {
            file: Some(file),
            records,
        })
    }
}

impl MetadataLog for FileMetadataLog {
    async fn replay(&mut self) -> Result<Vec<MetadataRecord>, MetadataError> {
        Ok(self.records.clone())
    }

    async fn append(&mut self, records: Vec<MetadataRecord>) -> Result<(), MetadataError> {
        let mut file = self.file.take().ok_or_else(|| {
            MetadataError::Task("metadata file lost by an earlier failure".into())
        })?;
        let encoded: Vec<Vec<u8>> = records.iter().map(MetadataRecord::encode).collect();
        let (file, result) = tokio::task::spawn_blocking(move || {
            let result = encoded.iter().try_for_each(|bytes| file.append(bytes));
            (file, result)
        })
        .await
        .map_err(|e| MetadataError::Task(e.to_string()))?;
        self.file = Some(file);
        result?;
        self.records.extend(records);
        Ok(())
    }
}
