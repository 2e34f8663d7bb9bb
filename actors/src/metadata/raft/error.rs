//! The Raft module's error types, one per boundary: the store on disk (`RaftStoreError`), the
//! start of a member (`RaftStartError`), a proposal (`ProposeError`), the settings
//! (`RaftConfigError`) and the network seam (`TransportError`, in `network`).

use std::io;
use std::path::{Path, PathBuf};

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::{AnyError, BasicNode, ErrorSubject, ErrorVerb, StorageIOError};
use vltava_messages::metadata_records::MetadataBatchError;
use vltava_storage::StorageError;

use super::RaftNodeId;

/// Why the Raft log store or state machine failed on its files. I/O failures and damage are
/// separate variants (the first is the machine's problem, the second the data's), and data
/// written by a newer build is neither: it is `UnsupportedVersion`, so the node refuses to
/// start instead of misreading it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftStoreError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk full while writing {path}")]
    DiskFull { path: PathBuf },
    /// Bytes that passed their checksum (or had none to fail) but make no sense: only damage
    /// or a bug writes them, so they are refused rather than cut.
    #[error("corrupt Raft data in {path} at position {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: &'static str,
    },
    /// A metadata batch inside an entry or snapshot that this build's version should read
    /// but cannot.
    #[error("corrupt metadata batch in {path} at position {position}: {source}")]
    CorruptBatch {
        path: PathBuf,
        position: u64,
        #[source]
        source: MetadataBatchError,
    },
    /// Written by a newer build. Starting would mean guessing at its meaning.
    #[error(
        "{path} at position {position} holds a {format} of version {found}, newer than this \
         build reads ({supported}): start the newer build, or restore this node from a peer"
    )]
    UnsupportedVersion {
        path: PathBuf,
        position: u64,
        format: &'static str,
        found: u16,
        supported: u16,
    },
    /// From the shared storage helpers (the atomic checkpoint files).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An earlier write or fsync failed: what the page cache holds is unknown, so nothing more
    /// is written or acknowledged until the store is reopened (which recovers from the disk).
    #[error("Raft store {dir} is unusable after a failed write; reopen it to recover")]
    Poisoned { dir: PathBuf },
    #[error("log entry {index} encodes to {bytes} bytes, over the limit of {max}")]
    EntryTooLarge { index: u64, bytes: u64, max: u32 },
    #[error("snapshot of {bytes} bytes is over the limit of {max}")]
    SnapshotTooLarge { bytes: u64, max: u64 },
    #[error("blocking task of the Raft store failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl RaftStoreError {
    /// Wraps an I/O error, turning "no space left on device" into `DiskFull`.
    pub(crate) fn io(path: &Path, source: io::Error) -> RaftStoreError {
        // ENOSPC is 28 on Linux; `StorageFull` is how std names it where it knows it.
        if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
            RaftStoreError::DiskFull {
                path: path.to_path_buf(),
            }
        } else {
            RaftStoreError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// openraft's view of this error: every storage error stops the Raft node (its documented
    /// reaction), so only the subject and verb matter to it; the message keeps the detail.
    pub(crate) fn to_raft(
        &self,
        subject: ErrorSubject<RaftNodeId>,
        verb: ErrorVerb,
    ) -> openraft::StorageError<RaftNodeId> {
        openraft::StorageError::IO {
            source: StorageIOError::new(subject, verb, AnyError::new(self)),
        }
    }
}

/// Why a Raft member could not start.
#[derive(Debug, thiserror::Error)]
pub enum RaftStartError {
    /// The files on disk: damaged beyond a torn tail, written by a newer build, or unreadable.
    #[error(transparent)]
    Store(#[from] RaftStoreError),
    /// openraft refused the recovered state.
    #[error("Raft failed to start: {0}")]
    Raft(#[from] Fatal<RaftNodeId>),
    #[error("invalid Raft settings: {0}")]
    Config(#[from] RaftConfigError),
}

/// Why a metadata batch was not committed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// Refused before it reached Raft: a log entry over the limit would stop every node that
    /// tried to store it.
    #[error("metadata batch encodes to {bytes} bytes, over the entry limit of {max}")]
    BatchTooLarge { bytes: u64, max: u32 },
    /// Raft's answer: not the leader (with a hint where it is), shutting down, or a membership
    /// change in progress. Boxed: openraft's error is a few hundred bytes.
    #[error(transparent)]
    Raft(Box<RaftError<RaftNodeId, ClientWriteError<RaftNodeId, BasicNode>>>),
}

impl From<RaftError<RaftNodeId, ClientWriteError<RaftNodeId, BasicNode>>> for ProposeError {
    fn from(e: RaftError<RaftNodeId, ClientWriteError<RaftNodeId, BasicNode>>) -> ProposeError {
        ProposeError::Raft(Box::new(e))
    }
}

impl ProposeError {
    /// Whether the batch was refused because this member does not lead (whether or not it
    /// knows who does).
    #[must_use]
    pub fn is_not_leader(&self) -> bool {
        match self {
            ProposeError::Raft(e) => e.forward_to_leader::<BasicNode>().is_some(),
            ProposeError::BatchTooLarge { .. } => false,
        }
    }

    /// The leader to send the batch to instead, when this member is not it and knows who is.
    #[must_use]
    pub fn forward_to(&self) -> Option<RaftNodeId> {
        match self {
            ProposeError::Raft(e) => e.forward_to_leader::<BasicNode>().and_then(|f| f.leader_id),
            ProposeError::BatchTooLarge { .. } => None,
        }
    }
}

/// Why a Raft configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RaftConfigError {
    #[error("{name} must be a whole, non-zero number of milliseconds")]
    BadDuration { name: &'static str },
    #[error("{name} must not be zero")]
    Zero { name: &'static str },
    /// openraft's own checks (election timeouts ordered and above the heartbeat interval).
    /// Boxed: openraft's error is large.
    #[error(transparent)]
    Openraft(Box<openraft::ConfigError>),
}

impl From<openraft::ConfigError> for RaftConfigError {
    fn from(e: openraft::ConfigError) -> RaftConfigError {
        RaftConfigError::Openraft(Box::new(e))
    }
}
