//! The partition log: an ordered set of segments in one directory, the last of them active.
//!
//! The log is owned by one caller (a Partition actor) and is not thread-safe; every method
//! blocks on file I/O and must run off the async runtime's worker threads. Only a
//! [`FlushJob`] and a [`CompactionJob`] leave the owner: the first fsyncs on a flusher thread
//! while appends go on, the second rewrites sealed segments on another thread; their results
//! come back through [`Log::complete_flush`] and [`Log::complete_compaction`].
//!
//! Offsets: `log_start_offset <= high_watermark <= log_end_offset`, asserted on every update;
//! `recovery_point <= log_end_offset`, and every offset below the recovery point is durable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vltava_messages::batch::{self, BatchHeader, HEADER_BYTES};
use vltava_messages::{LeaderEpoch, Offset, RecordBatchRef, TimestampType};

use crate::checkpoint::{self, OffsetCheckpoint, TEMP_SUFFIX};
use crate::compaction::{
    self, CompactionJob, CompactionOutcome, CompactionOutput, CompactionReport, PassSettings,
    PassStats, SourceSegment, SwapError,
};
use crate::config::{CleanupPolicy, LogConfig};
use crate::epoch::LeaderEpochCache;
use crate::error::{Result, StorageError};
use crate::flush::FlushJob;
use crate::fs::Storage;
use crate::producer_state::{self, ProducerStateTable};
use crate::segment::{
    self, Find, INDEX_SUFFIX, LOG_SUFFIX, ScanBounds, ScanStop, Scanned, Segment, TIME_INDEX_SUFFIX,
};

/// File name of the recovery-point checkpoint.
pub const RECOVERY_POINT_CHECKPOINT: &str = "recovery-point-checkpoint";
/// File name of the clean-shutdown marker.
pub const CLEAN_SHUTDOWN_MARKER: &str = ".clean-shutdown";
/// Format version of the recovery-point checkpoint body.
const RECOVERY_POINT_VERSION: u8 = 1;
/// The recovery-point checkpoint with the byte position of the recovery point in the active
/// segment (`write_recovery_point`).
const RECOVERY_POINT_VERSION_WITH_POSITION: u8 = 2;
/// How often a flush job rewrites the recovery-point checkpoint with the active segment's
/// synced position (besides after every roll), so that an open after a crash walks the
/// synced part of the active segment by batch headers and checks only what came after, at
/// most this much appending. The high-watermark checkpoint's pace.
pub const RECOVERY_POINT_CHECKPOINT_INTERVAL_MS: u64 = 5_000;
/// ... or every this many bytes appended to the active segment, so that a burst shorter than
/// the interval leaves at most this much to check (about a tenth of a second of reading at
/// the disk's pace), for two more fsyncs per 64 MiB.
pub const RECOVERY_POINT_CHECKPOINT_BYTES: u64 = 64 << 20;
/// File name of the high-watermark checkpoint.
pub const HIGH_WATERMARK_CHECKPOINT: &str = "high-watermark-checkpoint";
/// Format version of the high-watermark checkpoint body.
const HIGH_WATERMARK_VERSION: u8 = 1;
/// The least time, on the log's clock (the largest `now_ms` any call gave it), between two
/// flush jobs from [`Log::begin_flush`] that write the high-watermark checkpoint. Without it,
/// with fsync durability, every flush job would follow a change of the high watermark and add
/// the checkpoint's two fsyncs (file and directory) to the job's one. A stale checkpoint is
/// only conservative (a replica reopens with a lower high watermark and waits for it to move
/// again), so Kafka's default for `replica.high.watermark.checkpoint.interval.ms` is kept.
pub const HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS: u64 = 5_000;

/// The page size the page cache drops by (`Log::set_drop_cache_when_flushed`): x86-64's and
/// aarch64's common 4 KiB. On a larger page some pages a range only partly covers stay cached:
/// a hint missed, nothing else.
const CACHE_PAGE_BYTES: u64 = 4096;

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// The batch's byte position in its segment.
    pub position: u64,
    pub segment_base_offset: Offset,
    /// The timestamp the leader stamped, for topics that keep log-append time.
    pub log_append_time: Option<i64>,
}

/// What a read returned: whole batches, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogRead {
    pub bytes: Vec<u8>,
    pub batch_count: u32,
    /// The offset after the last batch returned (the requested offset if none was).
    pub next_offset: Offset,
}

/// The torn or corrupt tail that recovery cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    pub segment: PathBuf,
    pub position: u64,
    pub bytes_cut: u64,
    pub reason: String,
    /// Later segments removed because they followed the damage.
    pub segments_removed: Vec<Offset>,
}

/// What opening the log found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub clean_shutdown: bool,
    /// Segments read batch by batch (those past the recovery point, or with bad indexes).
    pub segments_scanned: usize,
    /// Bytes of the batches the scan checked whole (CRC included).
    pub bytes_checked: u64,
    /// Bytes of the batches below the recovery point's position in its segment, walked by
    /// their headers only (`RECOVERY_POINT_CHECKPOINT_INTERVAL_MS`).
    pub bytes_walked: u64,
    pub truncation: Option<Truncation>,
    /// Where the producer-state rebuild started reading batch headers: the offset of the
    /// snapshot it started from, or the log start when none was usable.
    pub producer_state_read_from: Offset,
}

/// What `recovery-point-checkpoint` says: the recovery point and, from version 2, the active
/// segment's base offset and the byte position where the batches below it end.
#[derive(Clone, Copy, Debug)]
struct RecoveryCheckpoint {
    recovery_point: Offset,
    within: Option<(Offset, u64)>,
}

/// A summary of one segment, for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: Offset,
    pub next_offset: Offset,
    pub bytes: u64,
    pub max_timestamp: Option<i64>,
}

#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    config: LogConfig,
    /// Never empty: the last segment is the active one.
    segments: BTreeMap<Offset, Segment>,
    log_start_offset: Offset,
    log_end_offset: Offset,
    high_watermark: Offset,
    recovery_point: Offset,
    epoch_cache: LeaderEpochCache,
    /// Idempotent producers' recent batches, derived from the headers of the batches in the
    /// log: every append records its batch, and open and truncation rebuild it from the
    /// newest usable snapshot plus the headers after it.
    producers: ProducerStateTable,
    /// A segment was created or removed since the directory was last synced.
    dir_sync_needed: bool,
    /// The partition directory was created empty by `open` and its entry in the parent
    /// directory is not known to be durable: the next flush job fsyncs the parent too.
    parent_sync_needed: bool,
    /// The recovery-point checkpoint should be rewritten after the next flush (a segment
    /// rolled, so the recovery after a crash can skip the sealed ones).
    checkpoint_due: bool,
    /// What `high-watermark-checkpoint` said at open, lowered to the recovered log end; `None`
    /// without a readable file. Fixed at open: see [`Log::high_watermark_checkpoint`].
    high_watermark_checkpoint: Option<Offset>,
    /// The value the next high-watermark checkpoint write carries: the last value given to
    /// `set_high_watermark`, lowered by truncation; at open, `high_watermark_checkpoint`.
    /// Kept apart from `high_watermark`, which open sets to the log end, so that no write
    /// ever records a high watermark the caller did not set.
    high_watermark_to_checkpoint: Option<Offset>,
    /// `high_watermark_to_checkpoint` changed since a flush job last took it.
    high_watermark_checkpoint_due: bool,
    /// An upper bound on the value the checkpoint file holds, or a flush job in flight may
    /// still write: a truncation below it rewrites the file before it returns.
    high_watermark_checkpoint_max: Option<Offset>,
    /// The log clock when a flush job from `begin_flush` last took the high-watermark
    /// checkpoint; `None` since open (the first one is not held back).
    high_watermark_checkpoint_taken_ms: Option<u64>,
    /// The log's clock: the largest `now_ms` given to open, an append, a roll, retention or
    /// compaction. It paces the high-watermark checkpoint without reading the system clock.
    clock_ms: u64,
    flush_in_flight: bool,
    /// Whether flush jobs drop the active segment's pages they synced from the page cache
    /// (`set_drop_cache_when_flushed`).
    drop_cache_when_flushed: bool,
    /// The log clock when a flush job last took the recovery-point checkpoint, and the active
    /// segment's base offset and size it named; `None` since open.
    recovery_point_checkpoint_taken: Option<(u64, Offset, u64)>,
    /// The active segment (by base offset) and the byte position below which a flush job was
    /// already given its pages to drop: the next job drops only what lies past it.
    cache_dropped_below: (Offset, u64),
    /// Bumped by truncation: a flush job from an older generation synced offsets that may
    /// have been cut and written again, so its target no longer means anything. Shared with
    /// flush jobs that write the recovery-point checkpoint (see `FlushJob::checkpoint`).
    flush_generation: Arc<Mutex<u64>>,
    poisoned: bool,
    recovery: RecoveryReport,
    /// The id of the compaction job in flight, if one is.
    compaction_job: Option<u64>,
    /// The first dirty offset of a compacted log: below it, every key's older records are
    /// gone. Persisted in the cleaner checkpoint; the log start when unknown.
    cleaner_checkpoint: Offset,
    /// When a tombstone kept by compaction may be dropped (ms since the Unix epoch): a pass
    /// is due then even with nothing dirty.
    tombstone_due_ms: Option<u64>,
    /// The next pass maps the clean part's expired tombstones too: no pass ran since the log
    /// opened (so nothing is known about them), or the last one held some back.
    scan_clean_tombstones: bool,
    /// Set when the log is dropped, so a compaction job still running stops early.
    compaction_cancel: Arc<AtomicBool>,
}

impl Drop for Log {
    /// Cancels a compaction job still running: its output could never be swapped in.
    fn drop(&mut self) {
        self.compaction_cancel.store(true, Ordering::Relaxed);
    }
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering it after a crash: indexes are checked
    /// and rebuilt where needed, every batch past the recovery point is checked, a torn or
    /// corrupt tail is cut off and reported, and what remains is made durable. Blocks.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: LogConfig,
        now_ms: u64,
    ) -> Result<Log> {
        config.validate()?;
        storage
            .create_dir_all(dir)
            .map_err(|e| StorageError::io(dir, e))?;
        // A compaction swap that was committed is finished, any other leftover removed, before
        // the segments are listed.
        if compaction::recover(&*storage, dir)? {
            tracing::warn!(dir = %dir.display(), "cleaned up after an interrupted compaction");
        }
        let names = storage
            .list_dir(dir)
            .map_err(|e| StorageError::io(dir, e))?;
        let mut bases = Vec::new();
        for name in &names {
            if name.ends_with(TEMP_SUFFIX) {
                // A checkpoint write that did not finish; the old checkpoint stands.
                let path = dir.join(name);
                storage
                    .remove_file(&path)
                    .map_err(|e| StorageError::io(&path, e))?;
            } else if let Some(base) = segment::parse_file_name(name, LOG_SUFFIX) {
                bases.push(base);
            }
        }
        bases.sort();
        for name in &names {
            let orphan = [INDEX_SUFFIX, TIME_INDEX_SUFFIX]
                .iter()
                .filter_map(|suffix| segment::parse_file_name(name, suffix))
                .any(|base| bases.binary_search(&base).is_err());
            if orphan {
                let path = dir.join(name);
                storage
                    .remove_file(&path)
                    .map_err(|e| StorageError::io(&path, e))?;
            }
        }

        let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
        let clean_shutdown = storage.exists(&marker);
        let checkpointed_recovery_point = read_recovery_point(&*storage, dir)?;
        let epoch_checkpoint = LeaderEpochCache::read_checkpoint(&*storage, dir)?;
        let high_watermark_read = read_high_watermark(&*storage, dir);

        let mut log = Log {
            dir: dir.to_path_buf(),
            storage: Arc::clone(&storage),
            segments: BTreeMap::new(),
            log_start_offset: Offset(0),
            log_end_offset: Offset(0),
            high_watermark: Offset(0),
            recovery_point: Offset(0),
            epoch_cache: LeaderEpochCache::default(),
            producers: ProducerStateTable::default(),
            dir_sync_needed: false,
            parent_sync_needed: false,
            checkpoint_due: false,
            high_watermark_checkpoint: None,
            high_watermark_to_checkpoint: None,
            high_watermark_checkpoint_due: false,
            high_watermark_checkpoint_max: None,
            high_watermark_checkpoint_taken_ms: None,
            clock_ms: now_ms,
            flush_in_flight: false,
            drop_cache_when_flushed: false,
            recovery_point_checkpoint_taken: None,
            cache_dropped_below: (Offset(0), 0),
            flush_generation: Arc::new(Mutex::new(0)),
            poisoned: false,
            recovery: RecoveryReport {
                clean_shutdown,
                ..RecoveryReport::default()
            },
            compaction_job: None,
            cleaner_checkpoint: Offset(0),
            tombstone_due_ms: None,
            scan_clean_tombstones: true,
            compaction_cancel: Arc::new(AtomicBool::new(false)),
            config,
        };
        // Without a readable epoch checkpoint, every segment is read so that the epoch cache
        // can be rebuilt from batch headers.
        let (trust_limit, recovery_checkpoint) = match (&epoch_checkpoint, clean_shutdown) {
            (None, _) if !bases.is_empty() => (Offset(0), None),
            (_, true) => (Offset(u64::MAX), None),
            _ => match checkpointed_recovery_point {
                Some(checkpoint) => (checkpoint.recovery_point, Some(checkpoint)),
                None => (Offset(0), None),
            },
        };
        log.load_segments(
            &bases,
            trust_limit,
            recovery_checkpoint,
            epoch_checkpoint.unwrap_or_default(),
            now_ms,
        )?;

        if log.segments.is_empty() {
            let segment = Segment::create(&*storage, dir, Offset(0), now_ms)?;
            log.segments.insert(Offset(0), segment);
            log.dir_sync_needed = true;
        }
        log.log_start_offset = *log.segments.keys().next().expect("a segment exists");
        log.log_end_offset = log.active().next_offset;
        if names.is_empty() {
            // A new partition: its directory held nothing, so there is nothing to recover
            // and nothing yet to make durable. The steps below (an fsync of the empty segment,
            // of the directory, and two checkpoints, each a file fsync, a rename and a
            // directory fsync) are left out: with no checkpoint the next open reads the log
            // from offset 0, exactly as with checkpoints saying 0 and nothing, and a crash
            // that loses the directory or the segment's entry loses an empty log, which the
            // next open creates again. The first flush job fsyncs the directory and its
            // parent before anything in the log is acknowledged; the first batch writes the
            // leader-epoch checkpoint, as in any log. That is six fsyncs fewer per new
            // partition, about 24,600 for a topic of 4,096 partitions.
            log.dir_sync_needed = true;
            log.parent_sync_needed = true;
            return Ok(log);
        }
        // An entry starting exactly at the log end stays: a new leader recorded its epoch's
        // start there (`record_epoch_start`) before appending anything, or the epoch's first
        // batch was lost with the crash. Entries past the log end describe batches that are gone.
        if log.epoch_cache.truncate_from_start(log.log_start_offset)
            | log
                .epoch_cache
                .truncate_from_end(log.log_end_offset.plus(1))
        {
            tracing::debug!(dir = %dir.display(), "leader-epoch cache trimmed to the recovered log");
        }
        // Producer-state snapshots past the recovered log end describe batches a crash (or an
        // interrupted truncation) took away: they go before anything is appended at their
        // offsets again, durably with the directory fsync below, so that no later open takes
        // one for the new batches. Those below the log start (retention's leftovers after a
        // crash) hold nothing the log still has.
        let stale: Vec<Offset> = producer_state::snapshot_offsets(&*storage, dir)?
            .into_iter()
            .filter(|o| *o > log.log_end_offset || *o < log.log_start_offset)
            .collect();
        producer_state::remove_snapshots(&*storage, dir, &stale)?;

        // Everything recovered is made durable, so that the recovery point can be the log end.
        for segment in log.segments.values() {
            segment
                .file
                .sync_data()
                .map_err(|e| StorageError::io(&segment.log_path, e))?;
        }
        if clean_shutdown {
            // Crash after this: no marker, so the next open checks the log again.
            storage
                .remove_file(&marker)
                .map_err(|e| StorageError::io(&marker, e))?;
        }
        storage
            .sync_dir(dir)
            .map_err(|e| StorageError::io(dir, e))?;
        log.dir_sync_needed = false;
        log.epoch_cache.write_checkpoint(&*storage, dir)?;
        log.recovery_point = log.log_end_offset;
        log.write_recovery_point()?;
        log.high_watermark = log.log_end_offset;
        log.open_high_watermark_checkpoint(high_watermark_read)?;
        log.cleaner_checkpoint = compaction::read_cleaner_checkpoint(&*storage, dir)?
            .unwrap_or(log.log_start_offset)
            .clamp(log.log_start_offset, log.log_end_offset);
        let from = log.rebuild_producer_state()?;
        log.recovery.producer_state_read_from = from;
        tracing::debug!(dir = %dir.display(), from = from.0, producers = log.producers.len(), "producer state rebuilt");
        if let Some(truncation) = &log.recovery.truncation {
            tracing::warn!(
                segment = %truncation.segment.display(),
                position = truncation.position,
                bytes_cut = truncation.bytes_cut,
                reason = %truncation.reason,
                segments_removed = truncation.segments_removed.len(),
                "log recovery cut off a torn or corrupt tail"
            );
        }
        Ok(log)
    }

    /// Loads segments in order. Those wholly below `trust_limit` with well-formed indexes are
    /// trusted (only their tail is read); the rest are scanned batch by batch, except that the
    /// segment a version-2 recovery checkpoint names (`recovery_checkpoint`) is walked by headers
    /// below its position. At the first bad batch the segment is cut there and every later
    /// segment is removed.
    fn load_segments(
        &mut self,
        bases: &[Offset],
        trust_limit: Offset,
        recovery_checkpoint: Option<RecoveryCheckpoint>,
        checkpointed_epochs: LeaderEpochCache,
        now_ms: u64,
    ) -> Result<()> {
        let storage = Arc::clone(&self.storage);
        let interval = self.config.index_interval_bytes;
        let batch_bytes_max = self.config.batch_bytes_max;
        let mut next_offset_min = Offset(0);
        let mut epoch_min: Option<LeaderEpoch> = None;
        let mut scanned_from: Option<Offset> = None;
        let mut scanned_epochs: Vec<(LeaderEpoch, Offset)> = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let mut segment = Segment::open_file(&*storage, &self.dir, base, now_ms)?;
            let next_base = bases.get(i + 1).copied();
            let is_last = next_base.is_none();
            if segment.is_empty() && !is_last && i > 0 {
                // Nothing in it, and a later segment exists: it is a leftover of a roll. An
                // empty first segment stays: compaction leaves one when it removed every record
                // of the cleaned range, and it holds the log start.
                segment.delete_files(&*storage)?;
                self.dir_sync_needed = true;
                continue;
            }
            let bounds = ScanBounds {
                next_offset_min,
                epoch_min,
                batch_bytes_max,
            };
            let wholly_trusted =
                next_base.map_or(trust_limit == Offset(u64::MAX), |n| n <= trust_limit);
            let mut epochs_here: Vec<(LeaderEpoch, Offset)> = Vec::new();
            let record_epoch = |epochs: &mut Vec<(LeaderEpoch, Offset)>,
                                b: &segment::ScannedBatch| {
                epochs.push((b.header.partition_leader_epoch, b.header.base_offset));
            };
            let mut trusted = wholly_trusted
                && base >= next_offset_min
                && segment.load_indexes(&*storage, interval, batch_bytes_max)?;
            if trusted {
                let mut last_epoch = None;
                let tail_bounds = ScanBounds {
                    epoch_min: None,
                    ..bounds
                };
                if segment
                    .scan_tail(tail_bounds, interval, |b| {
                        last_epoch = Some(b.header.partition_leader_epoch)
                    })?
                    .is_none()
                {
                    epoch_min = last_epoch.or(epoch_min);
                } else {
                    // A bad tail or a stale index in a segment believed durable: read it all.
                    tracing::warn!(path = %segment.log_path.display(), "index or tail of a durable segment is bad; scanning it");
                    trusted = false;
                }
            }
            let stop: Option<ScanStop> = if trusted {
                None
            } else {
                self.recovery.segments_scanned += 1;
                scanned_from.get_or_insert(base);
                segment.reset_accounting()?;
                if base < next_offset_min {
                    Some(ScanStop {
                        position: 0,
                        reason: format!("segment base offset {base} overlaps the previous segment"),
                    })
                } else {
                    // The segment the recovery point lies in, at a known position: its
                    // synced prefix is walked by headers, the rest checked. A position that
                    // does not fit the file is not trusted: the segment is checked whole.
                    let trusted = recovery_checkpoint.and_then(|checkpoint| {
                        checkpoint
                            .within
                            .filter(|(segment_base, _)| *segment_base == base)
                            .map(|(_, position)| (position, checkpoint.recovery_point))
                    });
                    let mut outcome = segment.scan_trusting(0, trusted, bounds, interval, |b| {
                        record_epoch(&mut epochs_here, b);
                    })?;
                    if matches!(outcome, Scanned::Misaligned) {
                        tracing::warn!(path = %segment.log_path.display(), "the recovery point's position does not fit the segment; checking it whole");
                        segment.reset_accounting()?;
                        epochs_here.clear();
                        outcome = segment.scan_trusting(0, None, bounds, interval, |b| {
                            record_epoch(&mut epochs_here, b);
                        })?;
                    }
                    let Scanned::Whole {
                        stop,
                        bytes_checked,
                        bytes_walked,
                    } = outcome
                    else {
                        unreachable!("a scan trusting nothing is never misaligned")
                    };
                    self.recovery.bytes_checked += bytes_checked;
                    self.recovery.bytes_walked += bytes_walked;
                    if let Some(&(epoch, _)) = epochs_here.last() {
                        epoch_min = Some(epoch);
                    }
                    scanned_epochs.extend(epochs_here.iter().copied());
                    stop
                }
            };
            next_offset_min = segment.next_offset;
            if let Some(stop) = stop {
                let file_len = segment
                    .file
                    .byte_len()
                    .map_err(|e| StorageError::io(&segment.log_path, e))?;
                let segments_removed =
                    self.cut_after_damage(&mut segment, &stop, &bases[i + 1..])?;
                self.recovery.truncation = Some(Truncation {
                    segment: segment.log_path.clone(),
                    position: stop.position,
                    bytes_cut: file_len - stop.position,
                    reason: stop.reason,
                    segments_removed,
                });
                if segment.is_empty() && !self.segments.is_empty() {
                    segment.delete_files(&*storage)?;
                } else {
                    self.segments.insert(base, segment);
                }
                break;
            }
            self.segments.insert(base, segment);
        }

        // The epoch cache: checkpointed entries below the first scanned offset, then what the
        // scanned batch headers say.
        let checkpointed_latest = checkpointed_epochs.entries().last().copied();
        let mut cache = checkpointed_epochs;
        if let Some(from) = scanned_from {
            cache.truncate_from_end(from);
        }
        for (epoch, start_offset) in scanned_epochs {
            if cache.latest_epoch().is_none_or(|latest| epoch > latest) {
                cache.assign(epoch, start_offset);
            }
        }
        // The checkpoint's newest entry, if it starts at the recovered log end and is newer than
        // every batch, is an epoch no batch of which is in the log: one a new leader recorded
        // with `record_epoch_start` (fsynced, and no header can give it back), or one whose
        // first batch the crash lost. It stays, so a leader's epoch start survives a crash.
        let log_end = self
            .segments
            .values()
            .next_back()
            .map_or(Offset(0), |s| s.next_offset);
        if let Some(entry) = checkpointed_latest
            && entry.start_offset == log_end
            && cache
                .entries()
                .last()
                .is_none_or(|l| l.epoch < entry.epoch && l.start_offset <= entry.start_offset)
        {
            cache.assign(entry.epoch, entry.start_offset);
        }
        self.epoch_cache = cache;
        Ok(())
    }

    /// Cuts `segment` at the damage and removes every later segment, newest first, so that
    /// what a crash in the middle leaves is still a prefix of the log.
    fn cut_after_damage(
        &mut self,
        segment: &mut Segment,
        stop: &ScanStop,
        later: &[Offset],
    ) -> Result<Vec<Offset>> {
        let storage = Arc::clone(&self.storage);
        let mut removed = Vec::new();
        for &base in later.iter().rev() {
            let doomed = Segment::open_file(&*storage, &self.dir, base, 0)?;
            doomed.delete_files(&*storage)?;
            removed.push(base);
        }
        removed.reverse();
        storage
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io(&self.dir, e))?;
        segment
            .file
            .set_len(stop.position)
            .map_err(|e| StorageError::io(&segment.log_path, e))?;
        segment.size = stop.position;
        Ok(removed)
    }

    /// The directory this log lives in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    #[must_use]
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// What opening the log found.
    #[must_use]
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The first offset still in the log.
    #[must_use]
    pub fn log_start_offset(&self) -> Offset {
        self.log_start_offset
    }

    /// The offset the next appended record gets.
    #[must_use]
    pub fn log_end_offset(&self) -> Offset {
        self.log_end_offset
    }

    /// Offsets below it are committed and visible to consumers. [`Log::open`] sets it to the
    /// log end (single-node semantics), whatever the high-watermark checkpoint says; a
    /// replica starts from min([`Log::high_watermark_checkpoint`], log end) instead.
    #[must_use]
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// What `high-watermark-checkpoint` said when the log was opened, lowered to the log end
    /// that recovery left: min(file value, log end at open), so it never claims offsets a crash
    /// took away (or that a truncation cut before the file was rewritten). `None` when there
    /// is no file (a new partition, or a directory written before the checkpoint existed) or
    /// it is damaged or of an unknown version (a warning is logged). It may lie below the log
    /// start (retention moved the start past an older checkpoint): clamp it. It does not
    /// change after open; later values go to the file, for the next open.
    #[must_use]
    pub fn high_watermark_checkpoint(&self) -> Option<Offset> {
        self.high_watermark_checkpoint
    }

    /// Offsets below it are durable (fsynced).
    #[must_use]
    pub fn recovery_point(&self) -> Offset {
        self.recovery_point
    }

    /// The leader-epoch cache.
    #[must_use]
    pub fn epoch_cache(&self) -> &LeaderEpochCache {
        &self.epoch_cache
    }

    /// Idempotent producers' recent batches in this log.
    #[must_use]
    pub fn producer_state(&self) -> &ProducerStateTable {
        &self.producers
    }

    /// The newest leader epoch in the log.
    #[must_use]
    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.epoch_cache.latest_epoch()
    }

    /// Whether a failed fsync made the log unusable.
    #[must_use]
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// One summary per segment, oldest first.
    #[must_use]
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments
            .values()
            .map(|s| SegmentInfo {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                bytes: s.size,
                max_timestamp: s.max_timestamp,
            })
            .collect()
    }

    /// The log's size in bytes, all segments.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// Moves the high watermark. It must stay within `[log_start_offset, log_end_offset]`.
    /// Never blocks: a new value makes the high-watermark checkpoint due, and a later flush job
    /// (paced by [`HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS`]), [`Log::flush`] or
    /// [`Log::close`] writes it.
    pub fn set_high_watermark(&mut self, offset: Offset) {
        assert!(
            offset >= self.log_start_offset,
            "high watermark below the log start"
        );
        assert!(
            offset <= self.log_end_offset,
            "high watermark past the log end"
        );
        self.high_watermark = offset;
        if self.high_watermark_to_checkpoint != Some(offset) {
            self.high_watermark_to_checkpoint = Some(offset);
            self.high_watermark_checkpoint_due = true;
        }
    }

    /// For a new leader, before it appends anything: records in the leader-epoch cache that
    /// `epoch` starts at the log end, and writes the leader-epoch checkpoint durably before
    /// returning (a leader change is rare, and a follower's truncation asks for the end of
    /// an epoch, which this entry answers, so it must survive a crash even with no batch of
    /// the epoch in the log). Anything appended but not yet durable is flushed first, so the
    /// start offset is durable too. Returns whether the cache changed: `false` if `epoch` is
    /// already the latest (its start is then at or before the log end). An epoch older than
    /// the latest is refused with `LeaderEpochRegression`. Later appends of `epoch` add no
    /// entry. A failed flush or checkpoint write poisons the log. Blocks on fsyncs when the
    /// cache changes.
    pub fn record_epoch_start(&mut self, epoch: LeaderEpoch) -> Result<bool> {
        self.check_usable()?;
        self.check_epoch(epoch)?;
        if self.latest_epoch() == Some(epoch) {
            return Ok(false);
        }
        if self.recovery_point < self.log_end_offset {
            // The entry says the epoch starts at the log end: what lies below it is made
            // durable first, or a crash could leave a shorter log with the entry past its end,
            // which the next open drops.
            self.flush()?;
        }
        let changed = self.epoch_cache.assign(epoch, self.log_end_offset);
        assert!(changed, "a newer epoch always changes the cache");
        let storage = Arc::clone(&self.storage);
        // Crash before the rename lands: the old checkpoint stands, without the epoch, and the
        // caller never learnt that it was recorded. After it: the next open keeps the entry,
        // as the newest one starting at the log end or as the epoch of the batches after it.
        self.epoch_cache
            .write_checkpoint(&*storage, &self.dir)
            .inspect_err(|_| self.poisoned = true)?;
        if std::mem::take(&mut self.parent_sync_needed) {
            // A new partition's directory entry may not be durable yet, and with it the
            // checkpoint just written: its parent is fsynced now rather than by the first flush.
            if let Some(parent) = self.dir.parent() {
                storage
                    .sync_dir(parent)
                    .map_err(|e| StorageError::io(parent, e))
                    .inspect_err(|_| self.poisoned = true)?;
            }
        }
        tracing::info!(dir = %self.dir.display(), epoch = epoch.0, start_offset = self.log_end_offset.0, "leader epoch start recorded");
        Ok(true)
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("the log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("the log always has an active segment")
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            return Err(StorageError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    fn check_size(&self, batch: &[u8]) -> Result<()> {
        if batch.len() as u64 > u64::from(self.config.batch_bytes_max) {
            return Err(StorageError::BatchTooLarge {
                bytes: batch.len() as u64,
                max: self.config.batch_bytes_max,
            });
        }
        Ok(())
    }

    fn check_epoch(&self, epoch: LeaderEpoch) -> Result<()> {
        match self.latest_epoch() {
            Some(latest) if epoch < latest => {
                Err(StorageError::LeaderEpochRegression { epoch, latest })
            }
            _ => Ok(()),
        }
    }

    /// Appends a producer's batch as the partition's leader: validates it fully (CRC, record
    /// count, framing), assigns its offsets by writing the base offset, stamps the leader
    /// epoch (and log-append time where the topic keeps it). The records are not re-encoded.
    /// The batch is in the page cache when this returns, durable once a flush passes it.
    pub fn append_as_leader(
        &mut self,
        batch: &mut [u8],
        epoch: LeaderEpoch,
        now_ms: u64,
    ) -> Result<AppendInfo> {
        self.check_usable()?;
        self.check_size(batch)?;
        batch::validate(batch)?;
        self.check_epoch(epoch)?;
        batch::set_base_offset(batch, self.log_end_offset);
        batch::set_partition_leader_epoch(batch, epoch);
        let log_append_time =
            (self.config.timestamp_type == TimestampType::LogAppendTime).then(|| {
                let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
                batch::set_log_append_time(batch, now);
                now
            });
        let header = BatchHeader::parse(batch)?;
        let mut info = self.append_validated(batch, &header, now_ms)?;
        info.log_append_time = log_append_time;
        Ok(info)
    }

    /// Appends a batch copied from the leader, header as it is: checks its CRC, that it does
    /// not go back before the log end and that its leader epoch is not older than the log's.
    pub fn append_as_follower(&mut self, batch: &[u8], now_ms: u64) -> Result<AppendInfo> {
        self.check_usable()?;
        self.check_size(batch)?;
        let header = batch::validate_crc(batch)?;
        if header.base_offset < self.log_end_offset {
            return Err(StorageError::NonContiguousAppend {
                base_offset: header.base_offset,
                log_end_offset: self.log_end_offset,
            });
        }
        self.check_epoch(header.partition_leader_epoch)?;
        self.append_validated(batch, &header, now_ms)
    }

    fn append_validated(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        now_ms: u64,
    ) -> Result<AppendInfo> {
        self.clock_ms = self.clock_ms.max(now_ms);
        self.maybe_roll(header, now_ms)?;
        let interval = self.config.index_interval_bytes;
        let active = self.active_mut();
        let position = active.size;
        if let Err(error) = active.append(batch, header, interval) {
            // Cut whatever part of the batch reached the file, so the log stays a sequence
            // of whole batches. If even that fails, the file's end is unknown: poison.
            if let Err(cut) = active.file.set_len(position) {
                tracing::error!(path = %active.log_path.display(), error = %cut, "cannot cut a failed append; log poisoned");
                self.poisoned = true;
            }
            tracing::warn!(dir = %self.dir.display(), %error, "append failed");
            return Err(error);
        }
        let segment_base_offset = active.base_offset;
        self.log_end_offset = header.next_offset();
        // Recorded as soon as the batch is in the log, whoever appended it: a follower that
        // becomes leader must answer a retry of a batch it copied as a duplicate.
        self.producers.record(header);
        if self
            .epoch_cache
            .assign(header.partition_leader_epoch, header.base_offset)
        {
            // A new epoch: rare (a leadership change), so a synchronous checkpoint is fine.
            // Crash before it lands: the batch is past the recovery point, so recovery reads
            // its header and re-derives the entry.
            self.epoch_cache
                .write_checkpoint(&*self.storage, &self.dir)?;
        }
        Ok(AppendInfo {
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            position,
            segment_base_offset,
            log_append_time: None,
        })
    }

    /// Rolls to a new segment when the batch would overflow the active one, the active one is
    /// old enough, or the batch's offsets would not fit its relative index.
    fn maybe_roll(&mut self, header: &BatchHeader, now_ms: u64) -> Result<()> {
        let active = self.active();
        let overflow = active.relative(header.last_offset()).is_none();
        if active.is_empty() && !overflow {
            return Ok(());
        }
        let full = active.size + header.total_bytes() > u64::from(self.config.segment_bytes_max);
        let old = now_ms.saturating_sub(active.created_ms) >= self.config.segment_ms;
        if !(full || old || overflow) {
            return Ok(());
        }
        let new_base = if overflow {
            header.base_offset
        } else {
            self.log_end_offset
        };
        self.roll(new_base, now_ms)
    }

    /// Seals the active segment and opens a new one at `new_base`. The sealed file is
    /// fdatasynced here, before the new one exists; the directory is fsynced by the next
    /// flush, before anything in the new segment counts as durable.
    ///
    /// Why the sealed file is synced now rather than by the next flush job: the data of two
    /// unsynced files reaches the disk in any order, so a crash could keep the new segment's
    /// batches and lose the sealed one's, and recovery (which accepts gaps between segments,
    /// as compaction leaves them) would open a log with a hole in it rather than a prefix of
    /// what was appended. Synced at the roll, only the newest segment can lose data. The cost
    /// is one fdatasync per roll on the appending thread, of what the flush jobs have not
    /// synced yet (little with fsync durability; up to the kernel's writeback delay without).
    fn roll(&mut self, new_base: Offset, now_ms: u64) -> Result<()> {
        let storage = Arc::clone(&self.storage);
        let active = self.active();
        if active.is_empty() {
            let base = active.base_offset;
            let empty = self.segments.remove(&base).expect("active segment exists");
            empty.delete_files(&*storage)?;
        } else {
            active.write_indexes(&*storage)?;
            // Crash here or during the sync: the sealed segment may lose its unsynced tail;
            // no later segment exists yet, so the log recovers to a prefix.
            if let Err(e) = active.file.sync_data() {
                let error = StorageError::io(&active.log_path, e);
                // A failed fsync may have dropped pages the cache still shows: nothing is
                // trusted until the log is reopened, and the fsync is not retried.
                self.poisoned = true;
                return Err(error);
            }
            // Every batch below `new_base` is durable now (the sealed segment was just synced,
            // earlier ones at their rolls), so the table as of `new_base` can be trusted by
            // any later open that finds the log at least that long; a crash that loses the
            // new segment's batches leaves the snapshot at the log end, where it still holds.
            // It costs two fsyncs per roll, and saves reading the sealed segments' headers at
            // every open. A failed write poisons the log, as any failed fsync does.
            producer_state::write_snapshot(&*storage, &self.dir, new_base, &self.producers)
                .inspect_err(|_| self.poisoned = true)?;
        }
        let segment = Segment::create(&*storage, &self.dir, new_base, now_ms)?;
        self.segments.insert(new_base, segment);
        self.dir_sync_needed = true;
        self.checkpoint_due = true;
        tracing::debug!(dir = %self.dir.display(), base_offset = new_base.0, "rolled to a new segment");
        Ok(())
    }

    /// Rolls the active segment now if it is old enough (a quiet log otherwise never rolls,
    /// and its data never expires).
    pub fn roll_if_old(&mut self, now_ms: u64) -> Result<bool> {
        self.check_usable()?;
        self.clock_ms = self.clock_ms.max(now_ms);
        let active = self.active();
        if active.is_empty() || now_ms.saturating_sub(active.created_ms) < self.config.segment_ms {
            return Ok(false);
        }
        self.roll(self.log_end_offset, now_ms)?;
        Ok(true)
    }

    /// A flush job covering everything appended so far, unless one is already in flight or
    /// nothing is due: nothing unsynced, and no high-watermark checkpoint due (one is due
    /// after the high watermark changed, at most once per
    /// [`HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS`] of the log's clock; the first after open is
    /// not held back). Run it on a flusher thread, then hand it to [`Log::complete_flush`].
    pub fn begin_flush(&mut self) -> Option<FlushJob> {
        if self.poisoned || self.flush_in_flight {
            return None;
        }
        let high_watermark = self.high_watermark_checkpoint_due
            && self.high_watermark_checkpoint_taken_ms.is_none_or(|t| {
                self.clock_ms.saturating_sub(t) >= HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS
            });
        if self.recovery_point == self.log_end_offset
            && !self.dir_sync_needed
            && !self.parent_sync_needed
            && !high_watermark
        {
            return None;
        }
        self.flush_in_flight = true;
        if high_watermark {
            self.high_watermark_checkpoint_taken_ms = Some(self.clock_ms);
        }
        Some(self.flush_job(high_watermark))
    }

    /// Whether each flush job, once it has synced the active segment, asks the kernel to drop
    /// the segment's pages it synced from the page cache. For a log whose bytes are seldom
    /// read soon after they are written (a follower's copy: nobody reads it until it leads):
    /// its clean pages go back to the kernel at once and are reused for the next writes,
    /// instead of filling memory that the leader's readers need (and, in a virtual machine
    /// that returns free memory to its host, instead of every write needing new memory from
    /// the host). Reads of dropped bytes come from the disk, and so does an open after a
    /// crash, for what it checks past the recovery point's position.
    pub fn set_drop_cache_when_flushed(&mut self, drop: bool) {
        self.drop_cache_when_flushed = drop;
    }

    fn generation(&self) -> MutexGuard<'_, u64> {
        self.flush_generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A job syncing everything appended so far; with `high_watermark`, it also writes the
    /// high-watermark checkpoint if that is due.
    fn flush_job(&mut self, high_watermark: bool) -> FlushJob {
        let active = self.active();
        let active = (active.log_path.clone(), Arc::clone(&active.file));
        let generation = *self.generation();
        let high_watermark = (high_watermark
            && std::mem::take(&mut self.high_watermark_checkpoint_due))
        .then_some(self.high_watermark_to_checkpoint)
        .flatten();
        if let Some(value) = high_watermark {
            assert!(
                value <= self.log_end_offset,
                "a high-watermark checkpoint past the log end"
            );
            self.high_watermark_checkpoint_max =
                self.high_watermark_checkpoint_max.max(Some(value));
        }
        let sync_active = self.recovery_point < self.log_end_offset;
        // After a roll, and while appending every `RECOVERY_POINT_CHECKPOINT_INTERVAL_MS` or
        // `RECOVERY_POINT_CHECKPOINT_BYTES`, with the active segment's position: what an open
        // after a crash need not check.
        let (base, size) = (self.active().base_offset, self.active().size);
        let write_recovery_point = std::mem::take(&mut self.checkpoint_due)
            || (sync_active
                && self.recovery_point_checkpoint_taken.is_none_or(
                    |(taken_ms, taken_base, taken_size)| {
                        self.clock_ms.saturating_sub(taken_ms)
                            >= RECOVERY_POINT_CHECKPOINT_INTERVAL_MS
                            || taken_base != base
                            || size.saturating_sub(taken_size) >= RECOVERY_POINT_CHECKPOINT_BYTES
                    },
                ));
        if write_recovery_point {
            self.recovery_point_checkpoint_taken = Some((self.clock_ms, base, size));
        }
        let drop_cached = if sync_active && self.drop_cache_when_flushed {
            let (dropped_base, dropped) = self.cache_dropped_below;
            // A roll or a cut since the last job: from the segment's start.
            let from = if dropped_base == base {
                dropped.min(size)
            } else {
                0
            };
            // The kernel drops whole pages only: the page the range ends in (partly synced,
            // partly to come) is covered again by the next job.
            self.cache_dropped_below = (base, size - size % CACHE_PAGE_BYTES);
            Some((from, size))
        } else {
            None
        };
        FlushJob {
            storage: Arc::clone(&self.storage),
            dir: self.dir.clone(),
            sync_dir: std::mem::take(&mut self.dir_sync_needed),
            sync_parent: std::mem::take(&mut self.parent_sync_needed),
            active,
            sync_active,
            target: self.log_end_offset,
            generation,
            generation_cell: Arc::clone(&self.flush_generation),
            write_recovery_point,
            recovery_position: Some((base, size)),
            high_watermark,
            drop_cached,
        }
    }

    /// Takes a finished flush job's result. On success the recovery point moves to the job's
    /// target and is returned; on failure the log is poisoned: the page cache may hold bytes
    /// that will never reach the disk, so nothing is acknowledged until the log is reopened
    /// (and truncated to its recovery point). An fsync is never retried.
    pub fn complete_flush(&mut self, job: FlushJob, result: Result<()>) -> Result<Offset> {
        self.flush_in_flight = false;
        if let Err(error) = result {
            tracing::error!(dir = %self.dir.display(), %error, "fsync failed; log poisoned until reopened");
            self.poisoned = true;
            return Err(error);
        }
        if job.generation == *self.generation() && job.target > self.recovery_point {
            self.recovery_point = job.target.min(self.log_end_offset);
        }
        Ok(self.recovery_point)
    }

    /// Flushes everything appended so far, on the calling thread, and writes the
    /// high-watermark checkpoint if the high watermark changed since it was last taken (not
    /// paced: this is the caller asking for everything to be durable). Blocks on fsyncs.
    ///
    /// A job from [`Log::begin_flush`] still in flight may write its older high watermark
    /// after this one; that only leaves the checkpoint lower, which is safe.
    pub fn flush(&mut self) -> Result<Offset> {
        self.check_usable()?;
        let job = self.flush_job(true);
        let result = job.run();
        let in_flight = self.flush_in_flight;
        let outcome = self.complete_flush(job, result);
        // A job that was already in flight still owes its own completion.
        self.flush_in_flight = in_flight && !self.poisoned;
        outcome
    }

    fn write_recovery_point(&mut self) -> Result<()> {
        // Under the generation lock, like a flush job's write, so two writers never share
        // the temporary file.
        let cell = Arc::clone(&self.flush_generation);
        let _guard = cell
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Without a position: the callers cut or emptied the log, or rolled it.
        write_recovery_point(&*self.storage, &self.dir, self.recovery_point, None).inspect_err(
            |_| {
                self.poisoned = true;
            },
        )
    }

    /// Takes what `high-watermark-checkpoint` said into account at open, once recovery has
    /// set the log end: the accessor's value is min(file value, log end), and a file holding
    /// more than the log end (a crash lost the tail it counted, or cut a truncation short)
    /// is rewritten with the log end now, before anything is appended at those offsets
    /// again, so that no later open reads the stale value over different batches. Blocks on
    /// fsyncs only in that rare case.
    fn open_high_watermark_checkpoint(&mut self, read: Option<Offset>) -> Result<()> {
        let value = read.map(|v| v.min(self.log_end_offset));
        if read.is_some_and(|v| v > self.log_end_offset) {
            let path = self.dir.join(HIGH_WATERMARK_CHECKPOINT);
            tracing::warn!(path = %path.display(), checkpoint = read.map(|v| v.0), log_end_offset = self.log_end_offset.0, "high-watermark checkpoint past the recovered log end; lowered to it");
            // Crash before the rename lands: the next open finds the old value and lowers it
            // again, against a log end that nothing was appended past.
            write_high_watermark(&*self.storage, &self.dir, self.log_end_offset)?;
        }
        self.high_watermark_checkpoint = value;
        self.high_watermark_to_checkpoint = value;
        self.high_watermark_checkpoint_max = value;
        Ok(())
    }

    /// After a truncation: the value the next checkpoint carries is lowered to the new log end,
    /// and if the file (or a flush job made before the truncation) might hold more, the file
    /// is rewritten now, so a crash after appends past the cut cannot reopen with a value that
    /// counts batches that were cut. Crash before it lands: the next open lowers the old value
    /// to the log end it recovers, which holds nothing appended after the cut yet.
    fn lower_high_watermark_checkpoint(&mut self) -> Result<()> {
        let log_end = self.log_end_offset;
        if let Some(value) = self.high_watermark_to_checkpoint
            && value > log_end
        {
            self.high_watermark_to_checkpoint = Some(log_end);
            self.high_watermark_checkpoint_due = true;
        }
        if self
            .high_watermark_checkpoint_max
            .is_some_and(|max| max > log_end)
        {
            let value = self
                .high_watermark_to_checkpoint
                .unwrap_or(log_end)
                .min(log_end);
            let cell = Arc::clone(&self.flush_generation);
            let _guard = cell
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            write_high_watermark(&*self.storage, &self.dir, value)?;
            self.high_watermark_checkpoint_max = Some(value);
        }
        Ok(())
    }

    /// Finds the segment and position of the first batch whose last offset is at or past
    /// `offset`, rebuilding a segment's indexes if they turn out stale.
    fn locate(&mut self, offset: Offset) -> Result<Option<(Offset, u64, BatchHeader)>> {
        let first = self
            .segments
            .range(..=offset)
            .next_back()
            .map_or(self.log_start_offset, |(base, _)| *base);
        // Compaction leaves gaps: the offset may lie past the last batch of the segment that
        // covers it, and then the next segment's first batch is the answer. Only an empty
        // first segment and a segment ending before the offset answer `NotInSegment`, each
        // without a read, so this walks at most two or three segments.
        let mut next = self.segments.range(first..).next().map(|(base, _)| *base);
        while let Some(base) = next {
            for attempt in 0..2 {
                let segment = &self.segments[&base];
                match segment.find(offset)? {
                    Find::Found { position, header } => return Ok(Some((base, position, header))),
                    Find::NotInSegment => break,
                    Find::StaleIndex if attempt == 0 => self.rebuild_indexes(base)?,
                    Find::StaleIndex => {
                        return Err(
                            segment.corrupt(0, "offset index still stale after a rebuild".into())
                        );
                    }
                }
            }
            next = self
                .segments
                .range(base.plus(1)..)
                .next()
                .map(|(base, _)| *base);
        }
        Ok(None)
    }

    fn rebuild_indexes(&mut self, base: Offset) -> Result<()> {
        let interval = self.config.index_interval_bytes;
        let bounds = ScanBounds {
            next_offset_min: base,
            epoch_min: None,
            batch_bytes_max: self.config.batch_bytes_max,
        };
        let segment = self.segments.get_mut(&base).expect("segment exists");
        tracing::warn!(path = %segment.log_path.display(), "stale index found; rebuilding it from the segment");
        let size = segment.size;
        segment.reset_accounting()?;
        let stop = segment.scan(0, bounds, interval, |_| {})?;
        if let Some(stop) = stop {
            segment.size = size;
            return Err(segment.corrupt(stop.position, stop.reason));
        }
        Ok(())
    }

    /// The segment base offset and byte position of the batch holding `offset` (or the first
    /// batch after it), `None` at or past the log end. Offset lookups use the sparse index.
    pub fn lookup(&mut self, offset: Offset) -> Result<Option<(Offset, u64)>> {
        self.check_range(offset)?;
        Ok(self
            .locate(offset)?
            .map(|(base, position, _)| (base, position)))
    }

    fn check_range(&self, offset: Offset) -> Result<()> {
        if offset < self.log_start_offset || offset > self.log_end_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: self.log_end_offset,
            });
        }
        Ok(())
    }

    /// Reads whole batches from the first one whose last offset is at or past `offset`, up to
    /// `bytes_max` bytes but always at least one batch, never a batch at or past `offset_max`
    /// (the high watermark, for consumers), and from one segment only. Batches are checked
    /// (header, CRC) unless the log's config turns that off. Blocks on reads.
    pub fn read(
        &mut self,
        offset: Offset,
        bytes_max: u32,
        offset_max: Option<Offset>,
    ) -> Result<LogRead> {
        let mut out = LogRead {
            next_offset: offset,
            ..LogRead::default()
        };
        self.read_into(offset, bytes_max, offset_max, &mut out)?;
        Ok(out)
    }

    /// [`Log::read`] into a caller's buffer, so a hot loop reuses one allocation.
    pub fn read_into(
        &mut self,
        offset: Offset,
        bytes_max: u32,
        offset_max: Option<Offset>,
        out: &mut LogRead,
    ) -> Result<()> {
        self.check_usable()?;
        self.check_range(offset)?;
        out.bytes.clear();
        out.batch_count = 0;
        out.next_offset = offset;
        let upper = offset_max
            .unwrap_or(self.log_end_offset)
            .min(self.log_end_offset);
        if offset >= upper {
            return Ok(());
        }
        let Some((base, position, first)) = self.locate(offset)? else {
            return Ok(());
        };
        if first.base_offset >= upper {
            return Ok(());
        }
        let segment = &self.segments[&base];
        let want = u64::from(bytes_max)
            .max(first.total_bytes())
            .min(segment.size - position);
        segment
            .file
            .read_exact_at_into(&mut out.bytes, want as usize, position)
            .map_err(|e| StorageError::io(&segment.log_path, e))?;
        let mut end = 0usize;
        while end + HEADER_BYTES <= out.bytes.len() {
            let header = BatchHeader::parse(&out.bytes[end..]).expect("a whole header is present");
            if header.base_offset >= upper {
                break;
            }
            let total = header.total_bytes() as usize;
            if end + total > out.bytes.len() {
                if out.batch_count == 0 {
                    return Err(
                        segment.corrupt(position, "batch runs past the end of the segment".into())
                    );
                }
                break;
            }
            let checked = if self.config.verify_reads {
                batch::validate_crc(&out.bytes[end..end + total]).map(|_| ())
            } else {
                header.check_sanity()
            };
            if let Err(e) = checked {
                return Err(segment.corrupt(position + end as u64, e.to_string()));
            }
            if header.next_offset() <= out.next_offset && out.batch_count > 0 {
                return Err(segment.corrupt(position + end as u64, "offsets go backwards".into()));
            }
            out.batch_count += 1;
            out.next_offset = header.next_offset();
            end += total;
        }
        out.bytes.truncate(end);
        Ok(())
    }

    /// The offset of the first record whose timestamp is at or after `timestamp`, with that
    /// record's timestamp; `None` if every record is older. Uses the segments' max timestamps and the time index, then
    /// reads a bounded run of batches.
    pub fn offset_for_timestamp(&mut self, timestamp: i64) -> Result<Option<(Offset, i64)>> {
        self.check_usable()?;
        let Some(segment) = self
            .segments
            .values()
            .find(|s| s.max_timestamp.is_some_and(|t| t >= timestamp))
        else {
            return Ok(None);
        };
        let mut position = segment
            .time_index
            .lookup_before(timestamp)
            .map_or(0, |e| u64::from(e.position));
        while position < segment.size {
            let header = segment.read_header(position)?;
            if header.max_timestamp >= timestamp {
                let mut bytes = vec![0u8; header.total_bytes() as usize];
                segment
                    .file
                    .read_exact_at(&mut bytes, position)
                    .map_err(|e| StorageError::io(&segment.log_path, e))?;
                let batch = RecordBatchRef::new(&bytes)
                    .map_err(|e| segment.corrupt(position, e.to_string()))?;
                let records = batch
                    .records()
                    .map_err(|e| segment.corrupt(position, e.to_string()))?;
                if let Some(record) = records.iter().find(|r| r.timestamp >= timestamp) {
                    return Ok(Some((
                        record.offset.max(self.log_start_offset),
                        record.timestamp,
                    )));
                }
            }
            position += header.total_bytes();
        }
        Ok(None)
    }

    /// Calls `f` with the header of every batch in the log, oldest first, reading only the
    /// 61-byte headers (what a producer-state rebuild needs). Blocks on reads.
    pub fn for_each_header(&mut self, f: impl FnMut(&BatchHeader)) -> Result<()> {
        self.for_each_header_from(self.log_start_offset, f)
    }

    /// Like [`Log::for_each_header`], from the batch holding `from` (or the first after it).
    pub fn for_each_header_from(
        &mut self,
        from: Offset,
        mut f: impl FnMut(&BatchHeader),
    ) -> Result<()> {
        self.check_usable()?;
        if from >= self.log_end_offset {
            return Ok(());
        }
        let Some((first_base, first_position, _)) = self.locate(from.max(self.log_start_offset))?
        else {
            return Ok(());
        };
        for (base, segment) in self.segments.range(first_base..) {
            let mut position = if *base == first_base {
                first_position
            } else {
                0
            };
            while position < segment.size {
                let header = segment.read_header(position)?;
                f(&header);
                position += header.total_bytes();
            }
        }
        Ok(())
    }

    /// Rebuilds the producer-state table from the newest readable snapshot between the log
    /// start and the log end, then the headers of the batches after it (from the log start if
    /// there is none). Returns the offset reading started from. Blocks on reads.
    fn rebuild_producer_state(&mut self) -> Result<Offset> {
        let storage = Arc::clone(&self.storage);
        let offsets = producer_state::snapshot_offsets(&*storage, &self.dir)?;
        let mut table = ProducerStateTable::default();
        let mut from = self.log_start_offset;
        let usable = offsets
            .iter()
            .rev()
            .filter(|o| (self.log_start_offset..=self.log_end_offset).contains(*o));
        for &offset in usable {
            if let Some(loaded) = producer_state::read_snapshot(&*storage, &self.dir, offset)? {
                table = loaded;
                from = offset;
                break;
            }
            tracing::warn!(dir = %self.dir.display(), offset = offset.0, "unreadable producer-state snapshot skipped");
        }
        table.evict_below(self.log_start_offset);
        self.for_each_header_from(from, |h| {
            if h.base_offset >= from {
                table.record(h);
            }
        })?;
        self.producers = table;
        Ok(from)
    }

    /// For a follower: the end offset of `epoch` (the start of the next larger epoch, or the
    /// log end), with the largest epoch at or below it that the log knows.
    #[must_use]
    pub fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> Option<(LeaderEpoch, Offset)> {
        self.epoch_cache.end_offset_for(epoch, self.log_end_offset)
    }

    /// Removes every batch at or past `offset` (a whole batch if `offset` falls inside it), as
    /// a follower does to drop a suffix its new leader does not have. Crash-safe: the recovery
    /// point is lowered durably first, later segments are removed newest first, and the cut is
    /// fsynced, so a crash at any step leaves a prefix of the old log. Producer-state
    /// snapshots past the cut are removed before anything is cut, and the producer table is
    /// rebuilt from what is left. A failure part way poisons the log. Blocks on fsyncs.
    ///
    /// Leader-epoch entries starting at or past `offset` go too, even when `offset` is the log
    /// end and no batch is cut: an entry at the log end with no batch of its epoch (the first
    /// batch was lost in a crash, or a leader recorded it with `record_epoch_start`) is dropped,
    /// durably, so a follower's truncation to its log end leaves only what its batches say.
    /// A high-watermark checkpoint that might hold a value past the new log end is rewritten
    /// with the lowered value before this returns.
    pub fn truncate_to(&mut self, offset: Offset) -> Result<()> {
        self.check_usable()?;
        if offset < self.log_start_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: self.log_end_offset,
            });
        }
        if offset == self.log_end_offset && self.epoch_cache.truncate_from_end(offset) {
            let storage = Arc::clone(&self.storage);
            // Crash before it lands: the entry comes back at open, and the next truncation to
            // the log end drops it again.
            return self
                .epoch_cache
                .write_checkpoint(&*storage, &self.dir)
                .inspect_err(|_| self.poisoned = true);
        }
        // A truncation that fails part way leaves segments, checkpoints or the producer table
        // between the old log and the cut one: nothing is trusted until a reopen recovers a
        // prefix and rebuilds the rest.
        self.truncate_unchecked(offset)
            .inspect_err(|_| self.poisoned = true)
    }

    /// Empties the log and starts it again at `offset`, which must be at or past the log end:
    /// a follower does this when its leader's log starts past everything it holds (retention
    /// removed, on the leader, the offsets it would fetch next), as Kafka's
    /// `truncateFullyAndStartAt`. Afterwards the log start, the log end, the high watermark,
    /// the recovery point and the cleaner checkpoint are all `offset`; the leader-epoch cache
    /// and the producer-state table are empty (nothing is left to derive them from), and the
    /// next appended batch (a follower's, at or past `offset`) starts them again.
    ///
    /// Crash-safe: the producer-state snapshots go first, then the segments newest first (a
    /// crash leaves a prefix of the old log, whose checkpoints the next open trims to it, as
    /// after any truncation), the directory is fsynced, and only then is the empty segment at
    /// `offset` created, fsynced with the directory, and the checkpoints rewritten (a crash
    /// before they land opens the empty segment with older checkpoints, which open clamps to
    /// it). A flush or compaction job in flight is invalidated (the flush generation moves).
    /// A failure part way poisons the log. Blocks on fsyncs.
    ///
    /// # Errors
    /// `OffsetOutOfRange` for an offset below the log end (that is `truncate_to`'s work), and
    /// the I/O errors of the steps.
    pub fn truncate_fully_and_start_at(&mut self, offset: Offset, now_ms: u64) -> Result<()> {
        self.check_usable()?;
        if offset < self.log_end_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: self.log_end_offset,
            });
        }
        self.clock_ms = self.clock_ms.max(now_ms);
        self.start_afresh_at(offset, now_ms)
            .inspect_err(|_| self.poisoned = true)
    }

    fn start_afresh_at(&mut self, offset: Offset, now_ms: u64) -> Result<()> {
        let storage = Arc::clone(&self.storage);
        // From here no flush job in flight moves the recovery point or writes a checkpoint,
        // and no compaction job's output is taken: they were made for the old segments.
        *self.generation() += 1;
        // Every snapshot describes batches about to go; one left at `offset` would be taken
        // for the new log's producers at the next open.
        let snapshots = producer_state::snapshot_offsets(&*storage, &self.dir)?;
        producer_state::remove_snapshots(&*storage, &self.dir, &snapshots)?;
        let old_bases: Vec<Offset> = self.segments.keys().rev().copied().collect();
        for base in old_bases {
            let segment = self.segments.remove(&base).expect("segment exists");
            // Newest first: a crash here leaves a prefix of the old log.
            segment.delete_files(&*storage)?;
        }
        // The removals are durable before the new segment exists, so no open ever sees the
        // new empty segment after old ones that a crash brought back.
        storage
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io(&self.dir, e))?;
        let segment = Segment::create(&*storage, &self.dir, offset, now_ms)?;
        self.segments.insert(offset, segment);
        // Crash before this lands: no segment at all, and the next open starts an empty log
        // at 0; the follower's next fetch is out of range again and starts it afresh again.
        storage
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io(&self.dir, e))?;
        self.dir_sync_needed = false;
        self.checkpoint_due = false;
        self.log_start_offset = offset;
        self.log_end_offset = offset;
        self.high_watermark = offset;
        self.recovery_point = offset;
        // Each checkpoint below, if a crash keeps the old one, is clamped or trimmed to the
        // empty log by the next open: old epoch entries are cut to the one in force at the log
        // start (whose epoch no later batch can be older than, as the old log was a prefix of
        // the leader's), and the recovery point, high watermark and cleaner checkpoint are
        // read as at most the log end.
        self.epoch_cache = LeaderEpochCache::default();
        self.epoch_cache.write_checkpoint(&*storage, &self.dir)?;
        self.write_recovery_point()?;
        self.cleaner_checkpoint = offset;
        compaction::write_cleaner_checkpoint(&*storage, &self.dir, offset)?;
        self.tombstone_due_ms = None;
        self.scan_clean_tombstones = true;
        self.high_watermark_to_checkpoint = Some(offset);
        self.high_watermark_checkpoint_due = true;
        self.producers = ProducerStateTable::default();
        tracing::info!(dir = %self.dir.display(), log_start_offset = offset.0, "log emptied and started again");
        Ok(())
    }

    /// Reopens a log poisoned by a failed fsync: cuts it back to its recovery point (the page
    /// cache may hold bytes that never reached the disk and never will, so only what an fsync
    /// confirmed is kept), then opens it again with the usual recovery. Blocks on fsyncs.
    pub fn reopen_after_failure(mut self, now_ms: u64) -> Result<Log> {
        let recovery_point = self.recovery_point;
        tracing::warn!(dir = %self.dir.display(), recovery_point = recovery_point.0, "reopening a failed log at its recovery point");
        self.truncate_unchecked(recovery_point)?;
        let (storage, dir, config) = (
            Arc::clone(&self.storage),
            self.dir.clone(),
            self.config.clone(),
        );
        drop(self);
        Log::open(storage, &dir, config, now_ms)
    }

    fn truncate_unchecked(&mut self, offset: Offset) -> Result<()> {
        if offset >= self.log_end_offset {
            return Ok(());
        }
        if offset < self.log_start_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: self.log_end_offset,
            });
        }
        // A flush job in flight checks the generation and writes its checkpoints under the
        // same lock, so once this bump is done it can no longer write a recovery point or a
        // high watermark past the cut.
        *self.generation() += 1;
        if self.recovery_point > offset {
            self.recovery_point = offset;
            self.write_recovery_point()?;
        }
        // Epoch entries past the cut go durably before anything is cut: open keeps an entry
        // starting at the recovered log end (a leader's epoch start), so one whose batches a
        // crash during this truncation left cut must not be in the checkpoint then. The cut
        // starts at the batch holding `offset`, which may begin below it.
        let cut_from = match self.locate(offset)? {
            Some((_, _, header)) => header.base_offset.min(offset),
            None => offset,
        };
        if self.epoch_cache.truncate_from_end(cut_from) {
            // After the recovery point was lowered: a crash after this leaves the batches in
            // segments past the recovery point, whose headers the next open reads to derive
            // the entries again.
            self.epoch_cache
                .write_checkpoint(&*self.storage, &self.dir)?;
        }
        if self.cleaner_checkpoint > offset {
            // Offsets past the cut will be written again, uncleaned: the checkpoint must not
            // claim them. Lowered durably first, like the recovery point.
            self.cleaner_checkpoint = offset;
            compaction::write_cleaner_checkpoint(&*self.storage, &self.dir, offset)
                .inspect_err(|_| self.poisoned = true)?;
        }
        let storage = Arc::clone(&self.storage);
        // Snapshots past the cut describe batches about to go: they are removed first, made
        // durable by the directory fsync below, so that a crash anywhere later never leaves
        // one to be taken for the batches appended after the cut.
        let past_cut: Vec<Offset> = producer_state::snapshot_offsets(&*storage, &self.dir)?
            .into_iter()
            .filter(|o| *o > offset)
            .collect();
        producer_state::remove_snapshots(&*storage, &self.dir, &past_cut)?;
        // Segments wholly at or past the offset go, newest first; the first segment stays
        // (emptied) so the log keeps its start.
        let doomed: Vec<Offset> = self
            .segments
            .range(offset..)
            .map(|(b, _)| *b)
            .filter(|b| *b > self.log_start_offset)
            .rev()
            .collect();
        for base in doomed {
            let segment = self.segments.remove(&base).expect("segment exists");
            segment.delete_files(&*storage)?;
        }
        storage
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io(&self.dir, e))?;
        // Cut the last remaining segment at the first batch that reaches `offset`.
        let base = *self
            .segments
            .keys()
            .next_back()
            .expect("the first segment stays");
        let cut = match self.segments[&base].find(offset)? {
            Find::Found { position, .. } => Some(position),
            Find::NotInSegment => None,
            Find::StaleIndex => {
                self.rebuild_indexes(base)?;
                match self.segments[&base].find(offset)? {
                    Find::Found { position, .. } => Some(position),
                    _ => None,
                }
            }
        };
        let bounds = ScanBounds {
            next_offset_min: base,
            epoch_min: None,
            batch_bytes_max: self.config.batch_bytes_max,
        };
        let interval = self.config.index_interval_bytes;
        let segment = self.segments.get_mut(&base).expect("segment exists");
        if let Some(position) = cut {
            segment.truncate_to_position(position, bounds, interval)?;
        }
        segment
            .file
            .sync_data()
            .map_err(|e| StorageError::io(&segment.log_path, e))?;
        self.log_end_offset = segment.next_offset;
        self.high_watermark = self.high_watermark.min(self.log_end_offset);
        self.recovery_point = self.recovery_point.min(self.log_end_offset);
        if self.epoch_cache.truncate_from_end(self.log_end_offset) {
            self.epoch_cache.write_checkpoint(&*storage, &self.dir)?;
        }
        if self.cleaner_checkpoint > self.log_end_offset {
            // A cut inside a gap compaction left ends the log below `offset`, where the
            // cleaner checkpoint was lowered to: the offsets between are appended again next,
            // uncleaned, and taken for clean they would never supersede the older records of
            // their keys. Crash before this lands: nothing was appended yet, and open clamps
            // the checkpoint to the log end.
            self.cleaner_checkpoint = self.log_end_offset;
            compaction::write_cleaner_checkpoint(&*storage, &self.dir, self.log_end_offset)?;
        }
        self.lower_high_watermark_checkpoint()?;
        // A cut inside a batch (or inside a gap compaction left) ends the log below `offset`;
        // a snapshot between the two would miss the batches appended next.
        let past_end: Vec<Offset> = producer_state::snapshot_offsets(&*storage, &self.dir)?
            .into_iter()
            .filter(|o| *o > self.log_end_offset)
            .collect();
        if !past_end.is_empty() {
            producer_state::remove_snapshots(&*storage, &self.dir, &past_end)?;
            storage
                .sync_dir(&self.dir)
                .map_err(|e| StorageError::io(&self.dir, e))?;
        }
        // The table still holds the batches that were cut: a retry of one would be answered
        // as a duplicate with offsets that now hold (or will hold) other data, an acknowledged
        // loss. It is rebuilt from what is left. A poisoned log is truncated only on its way
        // to a reopen, which rebuilds it.
        if !self.poisoned {
            self.rebuild_producer_state()?;
        }
        tracing::info!(dir = %self.dir.display(), offset = offset.0, log_end_offset = self.log_end_offset.0, "log truncated");
        Ok(())
    }

    /// Deletes the oldest sealed segments that retention lets go: whole segments only, wholly
    /// below the high watermark, whose newest record is older than `retention_ms` or while
    /// the log exceeds `retention_bytes`. Returns the base offsets removed. A compacted log
    /// (`CleanupPolicy::Compact`) deletes nothing.
    pub fn delete_old_segments(&mut self, now_ms: u64) -> Result<Vec<Offset>> {
        self.check_usable()?;
        self.clock_ms = self.clock_ms.max(now_ms);
        if self.config.cleanup_policy == CleanupPolicy::Compact {
            // A compacted log keeps every key's newest record however old.
            return Ok(Vec::new());
        }
        let storage = Arc::clone(&self.storage);
        let mut removed = Vec::new();
        let mut total = self.size_bytes();
        while self.segments.len() > 1 {
            let (&base, oldest) = self.segments.iter().next().expect("segments exist");
            let next_base = *self.segments.keys().nth(1).expect("a later segment exists");
            if oldest.next_offset > self.high_watermark || next_base > self.high_watermark {
                break;
            }
            let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
            let expired = self.config.retention_ms.is_some_and(|retention| {
                oldest.max_timestamp.is_none_or(|t| {
                    now.saturating_sub(t) > i64::try_from(retention).unwrap_or(i64::MAX)
                })
            });
            let oversized = self
                .config
                .retention_bytes
                .is_some_and(|max| total - oldest.size >= max);
            if !(expired || oversized) {
                break;
            }
            // The log start moves first: from here on nothing reads the doomed segment. A crash
            // before the removal lands brings the segment back, and retention takes it again.
            self.log_start_offset = next_base;
            let segment = self.segments.remove(&base).expect("segment exists");
            total -= segment.size;
            segment.delete_files(&*storage)?;
            removed.push(base);
        }
        if !removed.is_empty() {
            self.dir_sync_needed = true;
            // A follower's high watermark is its leader's, not its own flushed offset, so the
            // deleted segments may reach past the recovery point (they were fdatasynced when
            // they rolled). Nothing below the log start is left to be unflushed; the
            // checkpoint on disk may stay lower, which only makes recovery read more.
            self.recovery_point = self.recovery_point.max(self.log_start_offset);
            if self.epoch_cache.truncate_from_start(self.log_start_offset) {
                self.epoch_cache.write_checkpoint(&*storage, &self.dir)?;
            }
            // The producers' batches that went with the segments are forgotten, as a rebuild
            // from the log would forget them, and so are the snapshots below the new log start
            // (nothing in them is still in the log). Their removal is durable with the next
            // directory fsync; a crash before it leaves them for the next open to remove.
            self.producers.evict_below(self.log_start_offset);
            let below_start: Vec<Offset> = producer_state::snapshot_offsets(&*storage, &self.dir)?
                .into_iter()
                .filter(|o| *o < self.log_start_offset)
                .collect();
            producer_state::remove_snapshots(&*storage, &self.dir, &below_start)?;
            tracing::info!(dir = %self.dir.display(), segments = removed.len(), log_start_offset = self.log_start_offset.0, "retention deleted segments");
        }
        Ok(removed)
    }

    /// The first offset compaction has not cleaned yet (the cleaner checkpoint).
    #[must_use]
    pub fn first_dirty_offset(&self) -> Offset {
        self.cleaner_checkpoint
    }

    /// Starts a compaction pass if the log is compacted, no pass is in flight, and either the
    /// dirty share of the cleanable range reaches `cleanable_dirty_percent_min` or a kept
    /// tombstone has expired by `now_ms`. The cleanable range is the sealed segments, from the
    /// log start, that lie wholly below both the high watermark and the recovery point (so a
    /// pass never rewrites what a consumer cannot read yet, nor what a crash could still cut).
    /// Cheap: it reads nothing. Run the job on another thread, then hand its output to
    /// [`Log::complete_compaction`]; appends and reads may go on meanwhile.
    pub fn begin_compaction(&mut self, now_ms: u64) -> Option<CompactionJob> {
        self.clock_ms = self.clock_ms.max(now_ms);
        if self.config.cleanup_policy != CleanupPolicy::Compact
            || self.poisoned
            || self.compaction_job.is_some()
        {
            return None;
        }
        let limit = self.high_watermark.min(self.recovery_point);
        let active_base = self.active().base_offset;
        let sources: Vec<SourceSegment> = self
            .segments
            .values()
            .take_while(|s| s.base_offset < active_base && s.next_offset <= limit)
            .map(|s| SourceSegment {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size: s.size,
                log_path: s.log_path.clone(),
                file: Arc::clone(&s.file),
            })
            .collect();
        let range_end = sources.last()?.next_offset;
        let first_dirty = self
            .cleaner_checkpoint
            .clamp(self.log_start_offset, range_end);
        let total_bytes: u64 = sources.iter().map(|s| s.size).sum();
        let dirty_bytes: u64 = sources
            .iter()
            .filter(|s| s.next_offset > first_dirty)
            .map(|s| s.size)
            .sum();
        let percent_min = u64::from(self.config.cleanable_dirty_percent_min);
        let dirty_enough = dirty_bytes > 0 && dirty_bytes * 100 >= total_bytes * percent_min;
        let tombstones_due = self.tombstone_due_ms.is_some_and(|t| t <= now_ms);
        if !(dirty_enough || tombstones_due) {
            return None;
        }
        let id = compaction::next_job_id();
        self.compaction_job = Some(id);
        let generation = *self.generation();
        Some(CompactionJob {
            storage: Arc::clone(&self.storage),
            dir: self.dir.clone(),
            id,
            generation,
            sources,
            first_dirty,
            settings: PassSettings {
                now_ms,
                delete_retention_ms: self.config.delete_retention_ms,
                segment_bytes_max: self.config.segment_bytes_max,
                index_interval_bytes: self.config.index_interval_bytes,
                batch_bytes_max: self.config.batch_bytes_max,
                map_bytes_max: self.config.compaction_map_bytes_max,
                scan_clean_tombstones: tombstones_due || self.scan_clean_tombstones,
            },
            cancelled: Arc::clone(&self.compaction_cancel),
        })
    }

    /// Why the log can no longer take this job's output, if it cannot.
    fn compaction_invalid(&self, output: &CompactionOutput) -> Option<&'static str> {
        self.compaction_invalid_parts(&output.dir, output.generation, &output.sources)
    }

    fn compaction_invalid_parts(
        &self,
        dir: &Path,
        generation: u64,
        sources: &[SourceSegment],
    ) -> Option<&'static str> {
        if dir != self.dir {
            return Some("the job belongs to another log");
        }
        if self.poisoned {
            return Some("the log is poisoned");
        }
        if generation != *self.generation() {
            return Some("the log was truncated");
        }
        let active_base = self.active().base_offset;
        let unchanged = sources.iter().all(|source| {
            self.segments.get(&source.base_offset).is_some_and(|s| {
                Arc::ptr_eq(&s.file, &source.file)
                    && s.size == source.size
                    && s.base_offset < active_base
            })
        });
        if !unchanged {
            return Some("a segment of the job was removed or changed");
        }
        None
    }

    /// Takes a finished compaction job's output. If the log changed in a way that invalidates
    /// it (truncation, a segment removed or cut, poisoning, a reopen), the cleaned files are
    /// removed and nothing else changes: `CompactionOutcome::Discarded`. Otherwise the cleaned
    /// segments replace the old ones with the crash-safe swap of STORAGE.md (*Compaction*):
    /// renames, a small commit record and directory fsyncs; then the cleaner checkpoint moves
    /// to the job's end. A failed job returns its error and changes nothing. A failure after
    /// the swap's commit point poisons the log; reopening it finishes the swap. Blocks on
    /// those fsyncs, never on the segments' data.
    pub fn complete_compaction(&mut self, output: CompactionOutput) -> Result<CompactionReport> {
        if self.compaction_job == Some(output.id) {
            self.compaction_job = None;
        } else {
            compaction::discard(&*self.storage, &output.cleaned_paths);
            return Ok(self.discarded("the job was not started by this log"));
        }
        let invalid = self.compaction_invalid(&output);
        let cleaned = match output.result {
            Ok(cleaned) => cleaned,
            Err(error) => {
                compaction::discard(&*self.storage, &output.cleaned_paths);
                return Err(error);
            }
        };
        if let Some(reason) = invalid {
            compaction::discard(&*self.storage, &output.cleaned_paths);
            tracing::info!(dir = %self.dir.display(), reason, "compaction output discarded");
            return Ok(self.discarded(reason));
        }
        let storage = Arc::clone(&self.storage);
        if let Err(error) = compaction::swap_in(&*storage, &self.dir, &cleaned.groups) {
            return Err(match error {
                SwapError::BeforeCommit(error) => {
                    let swaps: Vec<PathBuf> = output
                        .cleaned_paths
                        .iter()
                        .map(|p| {
                            let mut name = p.as_os_str().to_owned();
                            name.push(compaction::SWAP_SUFFIX);
                            PathBuf::from(name)
                        })
                        .collect();
                    compaction::discard(&*storage, &output.cleaned_paths);
                    compaction::discard(&*storage, &swaps);
                    tracing::warn!(dir = %self.dir.display(), %error, "compaction swap failed before its commit; old segments kept");
                    error
                }
                SwapError::AfterCommit(error) => {
                    tracing::error!(dir = %self.dir.display(), %error, "compaction swap failed after its commit; log poisoned until reopened");
                    self.poisoned = true;
                    error
                }
            });
        }

        // The swap is durable; the in-memory segments follow it.
        let mut report = CompactionReport {
            outcome: CompactionOutcome::Swapped,
            cleaned_range: self.log_start_offset..self.log_start_offset,
            first_dirty_offset: cleaned.end,
            segments_before: 0,
            segments_after: cleaned.groups.len(),
            bytes_before: 0,
            bytes_after: 0,
            stats: cleaned.stats,
        };
        let mut replaced_paths = Vec::new();
        for group in cleaned.groups {
            for base in &group.members {
                let old = self
                    .segments
                    .remove(base)
                    .expect("a validated member exists");
                report.segments_before += 1;
                report.bytes_before += old.size;
                replaced_paths.push(old.log_path);
            }
            let mut segment = group.segment;
            segment.log_path = self.dir.join(format!(
                "{}{}",
                segment::file_stem(group.base_offset),
                segment::LOG_SUFFIX
            ));
            // Indexes are never fsynced: if these are lost, the next open rebuilds them.
            if let Err(error) = segment.write_indexes(&*storage) {
                tracing::warn!(path = %segment.log_path.display(), %error, "could not write a cleaned segment's indexes");
            }
            report.bytes_after += segment.size;
            report.cleaned_range.end = group.end_offset;
            self.segments.insert(group.base_offset, segment);
        }
        assert_eq!(
            self.segments.keys().next().copied(),
            Some(self.log_start_offset),
            "compaction keeps the log start"
        );
        self.tombstone_due_ms = cleaned.tombstone_due_ms;
        self.scan_clean_tombstones = cleaned.tombstones_held;
        if cleaned.end > self.cleaner_checkpoint {
            self.cleaner_checkpoint = cleaned.end;
            // Crash before it lands: the old checkpoint says more is dirty, and the next pass
            // cleans it again.
            compaction::write_cleaner_checkpoint(&*storage, &self.dir, cleaned.end)
                .inspect_err(|_| self.poisoned = true)?;
        }
        tracing::info!(
            dir = %self.dir.display(),
            segments_before = report.segments_before,
            segments_after = report.segments_after,
            bytes_before = report.bytes_before,
            bytes_after = report.bytes_after,
            records_removed = report.stats.records_removed,
            first_dirty_offset = cleaned.end.0,
            "log compacted"
        );
        Ok(report)
    }

    fn discarded(&self, reason: &'static str) -> CompactionReport {
        CompactionReport {
            outcome: CompactionOutcome::Discarded { reason },
            cleaned_range: self.log_start_offset..self.log_start_offset,
            first_dirty_offset: self.cleaner_checkpoint,
            segments_before: 0,
            segments_after: 0,
            bytes_before: 0,
            bytes_after: 0,
            stats: PassStats::default(),
        }
    }

    /// A whole compaction pass on the calling thread: [`Log::begin_compaction`], the job's
    /// run, [`Log::complete_compaction`]. `None` when no pass is due. Blocks.
    pub fn compact(&mut self, now_ms: u64) -> Result<Option<CompactionReport>> {
        self.check_usable()?;
        let Some(job) = self.begin_compaction(now_ms) else {
            return Ok(None);
        };
        let output = job.run();
        self.complete_compaction(output).map(Some)
    }

    /// Flushes, writes the indexes and the recovery point, and leaves the clean-shutdown
    /// marker so the next open does not read the log. A poisoned log is closed without the
    /// marker, so the next open recovers it. Blocks on fsyncs.
    pub fn close(mut self) -> Result<()> {
        self.check_usable()?;
        self.flush()?;
        let storage = Arc::clone(&self.storage);
        self.active().write_indexes(&*storage)?;
        // After the flush, so every batch the snapshot describes is durable: the next open
        // reads no batch header at all.
        producer_state::write_snapshot(&*storage, &self.dir, self.log_end_offset, &self.producers)?;
        self.write_recovery_point()?;
        let marker = self.dir.join(CLEAN_SHUTDOWN_MARKER);
        let file = storage
            .open(&marker, true)
            .map_err(|e| StorageError::io(&marker, e))?;
        drop(file);
        // Crash before this sync: no marker on disk, and the next open checks the log.
        storage
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io(&self.dir, e))
    }
}

/// Writes the recovery-point checkpoint atomically and durably: version 1 with the offset
/// alone, or version 2 with `within`, the active segment's base offset and the byte position
/// in it where the batches below the recovery point end (everything below it fsynced before
/// this is written). Blocks on fsyncs.
pub(crate) fn write_recovery_point(
    storage: &dyn Storage,
    dir: &Path,
    recovery_point: Offset,
    within: Option<(Offset, u64)>,
) -> Result<()> {
    let path = dir.join(RECOVERY_POINT_CHECKPOINT);
    match within {
        None => checkpoint::write_offset(storage, &path, RECOVERY_POINT_VERSION, recovery_point),
        Some((segment_base, position)) => {
            let mut body = vec![RECOVERY_POINT_VERSION_WITH_POSITION];
            for value in [recovery_point.0, segment_base.0, position] {
                body.extend_from_slice(&value.to_be_bytes());
            }
            checkpoint::write_atomic(storage, &path, &body)
        }
    }
}

/// The recovery point, and where its batches end in their segment if the checkpoint says
/// (version 2). A damaged file or one of another version reads as absent (the whole log is
/// then scanned).
fn read_recovery_point(storage: &dyn Storage, dir: &Path) -> Result<Option<RecoveryCheckpoint>> {
    let path = dir.join(RECOVERY_POINT_CHECKPOINT);
    let Some(body) = checkpoint::read(storage, &path)? else {
        return Ok(None);
    };
    let u64_at = |bytes: &[u8], i: usize| {
        u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    };
    Ok(match body.split_first() {
        Some((&RECOVERY_POINT_VERSION, rest)) if rest.len() == 8 => Some(RecoveryCheckpoint {
            recovery_point: Offset(u64_at(rest, 0)),
            within: None,
        }),
        Some((&RECOVERY_POINT_VERSION_WITH_POSITION, rest)) if rest.len() == 24 => {
            Some(RecoveryCheckpoint {
                recovery_point: Offset(u64_at(rest, 0)),
                within: Some((Offset(u64_at(rest, 1)), u64_at(rest, 2))),
            })
        }
        _ => None,
    })
}

/// Writes the high-watermark checkpoint atomically and durably. Callers hold the log's flush
/// generation lock, so two writers never share the temporary file. Blocks on fsyncs.
pub(crate) fn write_high_watermark(
    storage: &dyn Storage,
    dir: &Path,
    high_watermark: Offset,
) -> Result<()> {
    checkpoint::write_offset(
        storage,
        &dir.join(HIGH_WATERMARK_CHECKPOINT),
        HIGH_WATERMARK_VERSION,
        high_watermark,
    )
}

/// Reads the high-watermark checkpoint. It only ever makes a replica more conservative when
/// absent, so a damaged file, one of an unknown version, or one that cannot be read is
/// reported with a warning and taken as absent: it never fails an open. Blocks.
fn read_high_watermark(storage: &dyn Storage, dir: &Path) -> Option<Offset> {
    let path = dir.join(HIGH_WATERMARK_CHECKPOINT);
    match checkpoint::read_offset(storage, &path, HIGH_WATERMARK_VERSION) {
        Ok(OffsetCheckpoint::Found(offset)) => Some(offset),
        Ok(OffsetCheckpoint::Missing) => None,
        Ok(OffsetCheckpoint::Damaged) => {
            tracing::warn!(path = %path.display(), "high-watermark checkpoint damaged or of an unknown version; ignored");
            None
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "high-watermark checkpoint unreadable; ignored");
            None
        }
    }
}
