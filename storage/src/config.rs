//! Per-log settings, validated when a log opens.

use vltava_messages::TimestampType;
use vltava_messages::limits::BATCH_BYTES_MAX;

use crate::error::{Result, StorageError};

/// Default segment size: 1 GiB, Kafka's default, large enough that rolling (an fsync of the
/// sealed segment and of the directory) is rare, small enough that retention is fine-grained.
pub const SEGMENT_BYTES_DEFAULT: u32 = 1 << 30;

/// Default roll age: 7 days, so that time-based retention can drop a quiet log's data.
pub const SEGMENT_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

/// Default retention: 7 days, as in Kafka.
pub const RETENTION_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

/// Default spacing of offset-index entries: one per 4 KiB of log, so a lookup reads at most
/// about 4 KiB of batch headers past the index entry it lands on.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;

/// The smallest segment size accepted: one largest batch must fit.
pub const SEGMENT_BYTES_MIN: u32 = 64 * 1024;

/// Default time a tombstone is kept after it was written on a compacted log: one day, Kafka's
/// `delete.retention.ms`, so a consumer that lags by less than that still sees the delete.
pub const DELETE_RETENTION_MS_DEFAULT: u64 = 24 * 3600 * 1000;

/// Default share of a compacted log's cleanable bytes that must be dirty (not yet cleaned)
/// before a pass starts: Kafka's `min.cleanable.dirty.ratio` of 0.5, so that each pass,
/// which rewrites the whole cleanable range, at least halves the duplicates it can remove.
pub const CLEANABLE_DIRTY_PERCENT_MIN_DEFAULT: u8 = 50;

/// Default bound of a compaction pass's key map: 128 MiB, Kafka's
/// `log.cleaner.dedupe.buffer.size`. At 24 bytes a key (a 128-bit hash and an offset) filled
/// to 90 %, that maps about 5 million keys per pass. The map is sized to the dirty range's
/// record count, so a small log allocates little.
pub const COMPACTION_MAP_BYTES_MAX_DEFAULT: u64 = 128 << 20;

/// The smallest key-map bound accepted: about 40 keys, so that every pass makes progress.
pub const COMPACTION_MAP_BYTES_MIN: u64 = 1024;

/// What happens to a log's old data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CleanupPolicy {
    /// Whole segments are deleted by age and size (`retention_ms`, `retention_bytes`).
    #[default]
    Delete,
    /// Segments are never deleted; compaction keeps the newest record of every key and
    /// drops tombstones after `delete_retention_ms` (STORAGE.md, *Compaction*).
    Compact,
}

/// How a log is laid out and kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment before an append would take it past this size.
    pub segment_bytes_max: u32,
    /// Roll the active segment once it is this old (and not empty).
    pub segment_ms: u64,
    /// Bytes of log between two offset-index entries.
    pub index_interval_bytes: u32,
    /// The largest batch this log accepts (at most the wire limit).
    pub batch_bytes_max: u32,
    /// Delete sealed segments whose newest record is older than this; `None` keeps them.
    pub retention_ms: Option<u64>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Whether the leader stamps its own clock into batches.
    pub timestamp_type: TimestampType,
    /// Check the CRC of every batch read, so a corrupt stored batch is never served.
    pub verify_reads: bool,
    /// Delete old segments (retention) or compact them. Kafka's `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// On a compacted log, how long a tombstone stays after its batch's largest timestamp.
    /// Kafka's `delete.retention.ms`.
    pub delete_retention_ms: u64,
    /// On a compacted log, the share of the cleanable bytes (0 to 100) that must be dirty
    /// before `Log::begin_compaction` starts a pass. Kafka's `min.cleanable.dirty.ratio` × 100.
    pub cleanable_dirty_percent_min: u8,
    /// The memory bound of a compaction pass's key map (key hash → newest offset). A dirty
    /// range with more keys than fit is cleaned in several passes.
    pub compaction_map_bytes_max: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            segment_ms: SEGMENT_MS_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX,
            retention_ms: Some(RETENTION_MS_DEFAULT),
            retention_bytes: None,
            timestamp_type: TimestampType::CreateTime,
            verify_reads: true,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: DELETE_RETENTION_MS_DEFAULT,
            cleanable_dirty_percent_min: CLEANABLE_DIRTY_PERCENT_MIN_DEFAULT,
            compaction_map_bytes_max: COMPACTION_MAP_BYTES_MAX_DEFAULT,
        }
    }
}

impl LogConfig {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<()> {
        if self.segment_bytes_max < SEGMENT_BYTES_MIN {
            return Err(StorageError::InvalidConfig {
                reason: "segment_bytes_max below 64 KiB",
            });
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max > BATCH_BYTES_MAX {
            return Err(StorageError::InvalidConfig {
                reason: "batch_bytes_max must be in 1..=BATCH_BYTES_MAX",
            });
        }
        if self.index_interval_bytes == 0 {
            return Err(StorageError::InvalidConfig {
                reason: "index_interval_bytes is zero",
            });
        }
        if self.cleanable_dirty_percent_min > 100 {
            return Err(StorageError::InvalidConfig {
                reason: "cleanable_dirty_percent_min above 100",
            });
        }
        if self.compaction_map_bytes_max < COMPACTION_MAP_BYTES_MIN {
            return Err(StorageError::InvalidConfig {
                reason: "compaction_map_bytes_max below 1 KiB",
            });
        }
        if self.segment_ms == 0 {
            return Err(StorageError::InvalidConfig {
                reason: "segment_ms is zero",
            });
        }
        Ok(())
    }
}
