//! vltava's partition log on disk.
//!
//! A log is a directory of segments named by base offset; each segment is a file of record
//! batches stored byte for byte as they came off the wire, plus a sparse offset index and a
//! time index. The crate is synchronous: every function that touches a file blocks, and the
//! actors call it from blocking threads. STORAGE.md describes the bytes on disk, the fsync
//! protocol and recovery.
//!
//! # Layout
//! - `fs`: the `Storage` trait all file access goes through, and the real file system.
//! - `sim`: `SimStorage`, an in-memory disk that keeps written bytes apart from fsynced ones
//!   and injects crashes, failed fsyncs and a full disk, for tests.
//! - `config`: `LogConfig`, per-log settings with their defaults.
//! - `segment`: one segment: append, scan, find, truncate, index files.
//! - `index`: the sparse offset and time indexes.
//! - `epoch`: the leader-epoch cache and its checkpoint.
//! - `checkpoint`: atomic, checksummed small files, and the one-offset framing of the
//!   recovery-point and high-watermark checkpoints.
//! - `compaction`: compaction jobs for logs whose cleanup policy is `compact` (keep the newest
//!   record per key, drop expired tombstones, merge segments) and their crash-safe swap.
//! - `log`: `Log`, the partition log: open with recovery, leader and follower appends, a new
//!   leader's epoch start, reads, offset and timestamp lookups, truncation (and a follower's
//!   fresh start at its leader's log start), roll, retention, the high-watermark checkpoint,
//!   close.
//! - `producer_state`: idempotent producers' recent batches, owned by the `Log` (recorded at
//!   every append, rebuilt at open and after a truncation) and its snapshot files.
//! - `partition_metadata`: `partition.metadata`, the id of the topic a partition directory
//!   belongs to, so that a topic deleted and created again under its name never opens the old
//!   topic's data.
//! - `record_file`: an append-only file of checksummed records, fsynced once per append of
//!   one or more records (the node's metadata log).
//! - `flush`: flush jobs, the flusher thread pool (group commit) and the ack queue.
//! - `dump`: a human-readable dump of a segment, as kafka-dump-log gives.
//!
//! # Invariants
//! - `log_start_offset <= high_watermark <= log_end_offset`, and every offset below the
//!   recovery point is durable.
//! - Batches are never re-encoded: a leader writes the base offset and leader epoch into the
//!   producer's bytes (fields outside the CRC) and appends them as they are.
//! - After open, the log is a prefix of what was appended before the crash, holding every
//!   batch that was durable; a torn or corrupt tail is cut off and reported.
//! - The high-watermark checkpoint is at most the log end (and the flush target) when it is
//!   written, is rewritten before a truncation below it returns, and is read at open as
//!   min(value, log end); a leader epoch recorded at the log end survives a crash.
//! - After a failed fsync the log is poisoned: nothing more is appended or acknowledged until
//!   it is reopened at its recovery point.
//! - Compaction never changes an offset and never rewrites the active segment or anything at
//!   or past the high watermark or the recovery point; after a crash at any step of its swap,
//!   each cleaned range holds either its old segments or its new ones.
//! - The producer-state table is what a rebuild from the log's batch headers would give
//!   (compaction aside, which removes batches the table remembers): it never takes a batch
//!   that was cut or lost for one in the log, since a truncation rebuilds it and snapshots
//!   past a cut or a crash's loss are removed before their offsets are reused.

pub mod checkpoint;
pub mod compaction;
pub mod config;
pub mod dump;
pub mod epoch;
pub mod error;
pub mod flush;
pub mod fs;
pub mod index;
pub mod log;
pub mod partition_metadata;
pub mod producer_state;
pub mod record_file;
pub mod segment;
pub mod sim;

pub use compaction::{
    CompactionJob, CompactionOutcome, CompactionOutput, CompactionReport, PassStats,
};
pub use config::{CleanupPolicy, LogConfig};
pub use error::{Result, StorageError};
pub use flush::{AckQueue, FlushDone, FlushJob, Flusher, SubmitError, SyncedPages};
pub use fs::{RealStorage, Storage, StorageFile};
pub use log::{AppendInfo, Log, LogRead, RecoveryReport, SegmentInfo, Truncation};
pub use producer_state::{ProducerBatch, ProducerStateTable, SequenceCheck};
pub use sim::SimStorage;
