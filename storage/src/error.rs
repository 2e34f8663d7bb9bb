//! The storage crate's one error type.

use std::io;
use std::path::PathBuf;

use vltava_messages::{BatchError, LeaderEpoch, Offset};

/// Everything a log operation can fail with. I/O failures and corruption are separate
/// variants: the first is the machine's problem, the second the data's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk full while writing {path}")]
    DiskFull { path: PathBuf },
    #[error("corrupt data in {path} at position {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("batch of {bytes} bytes exceeds this log's limit of {max} bytes")]
    BatchTooLarge { bytes: u64, max: u32 },
    #[error("offset {offset} is outside the log [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: Offset,
        log_start_offset: Offset,
        log_end_offset: Offset,
    },
    #[error(
        "batch at offset {base_offset} does not continue the log, whose end is {log_end_offset}"
    )]
    NonContiguousAppend {
        base_offset: Offset,
        log_end_offset: Offset,
    },
    #[error("leader epoch {epoch} is older than the log's latest epoch {latest}")]
    LeaderEpochRegression {
        epoch: LeaderEpoch,
        latest: LeaderEpoch,
    },
    #[error("log {dir} is unusable after a failed fsync; reopen it to recover")]
    Poisoned { dir: PathBuf },
    #[error("a topic id of {bytes} bytes does not fit a partition metadata file (1 to {max})")]
    TopicIdLength { bytes: usize, max: usize },
    #[error("invalid log configuration: {reason}")]
    InvalidConfig { reason: &'static str },
    #[error("compaction of {dir} was cancelled: the log was closed")]
    CompactionCancelled { dir: PathBuf },
    #[error("compacting the segment at {base_offset} would {reason}")]
    CompactionOverflow {
        base_offset: Offset,
        reason: &'static str,
    },
}

impl StorageError {
    /// Wraps an I/O error, turning "no space left on device" into `DiskFull`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> StorageError {
        let path = path.into();
        if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
            StorageError::DiskFull { path }
        } else {
            StorageError::Io { path, source }
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
