//! One segment: a `.log` file of consecutive record batches plus its two sparse indexes.
//!
//! A segment's `base_offset` is at or below every offset in it and above every offset in
//! earlier segments. Positions are byte indexes in the `.log` file and fit a `u32`, so a
//! segment stays under 4 GiB. The segment is not thread-safe: the log that owns it calls it
//! from one thread at a time; only its file handle is shared with the flusher.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vltava_messages::batch::{self, BatchHeader, HEADER_BYTES};
use vltava_messages::{LeaderEpoch, Offset};

use crate::error::{Result, StorageError};
use crate::fs::{Storage, StorageFile};
use crate::index::{OFFSET_ENTRY_BYTES, OffsetIndex, TimeIndex};

/// Suffix of a segment's log file.
pub const LOG_SUFFIX: &str = ".log";
/// Suffix of a segment's offset index.
pub const INDEX_SUFFIX: &str = ".index";
/// Suffix of a segment's time index.
pub const TIME_INDEX_SUFFIX: &str = ".timeindex";

/// Bytes read at a time when scanning a segment: large enough that a scan is a few big reads.
const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// What a walk of trusted batches reads at once (`Segment::scan_trusting`): many small
/// batches' headers, or one large batch's header and a little of its records.
const TRUSTED_WALK_CHUNK_BYTES: usize = 16 << 10;

/// How a scan that trusted a prefix ended.
#[derive(Debug)]
pub enum Scanned {
    /// As [`Segment::scan`]: where and why it stopped, if it did; the bytes of batches whose
    /// CRC it checked, and of trusted batches it walked by their headers.
    Whole {
        stop: Option<ScanStop>,
        bytes_checked: u64,
        bytes_walked: u64,
    },
    /// The trusted position is not a batch boundary ending at the trusted offset.
    Misaligned,
}

/// The file name stem of a segment: its base offset in 20 digits, so names sort by offset.
#[must_use]
pub fn file_stem(base_offset: Offset) -> String {
    format!("{:020}", base_offset.0)
}

/// Parses `<20 digits><suffix>` back into a base offset.
#[must_use]
pub fn parse_file_name(name: &str, suffix: &str) -> Option<Offset> {
    let stem = name.strip_suffix(suffix)?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok().map(Offset))
        .flatten()
}

/// Opens (or creates) the `.log` file of the segment at `base_offset`: its path, handle and
/// length.
fn open_log_file(
    storage: &dyn Storage,
    dir: &Path,
    base_offset: Offset,
    create: bool,
) -> Result<(PathBuf, Arc<dyn StorageFile>, u64)> {
    let log_path = dir.join(format!("{}{LOG_SUFFIX}", file_stem(base_offset)));
    let file = storage
        .open(&log_path, create)
        .map_err(|e| StorageError::io(&log_path, e))?;
    let len = file
        .byte_len()
        .map_err(|e| StorageError::io(&log_path, e))?;
    Ok((log_path, file, len))
}

/// Why a scan stopped before the end of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanStop {
    pub position: u64,
    pub reason: String,
}

/// A batch seen by a scan.
#[derive(Clone, Copy, Debug)]
pub struct ScannedBatch {
    pub header: BatchHeader,
    pub position: u64,
}

/// The bounds a scan checks every batch against, so that offsets and epochs never go
/// backwards across the log.
#[derive(Clone, Copy, Debug)]
pub struct ScanBounds {
    /// The first batch's base offset must be at or past this.
    pub next_offset_min: Offset,
    /// No batch may carry an older epoch than this.
    pub epoch_min: Option<LeaderEpoch>,
    pub batch_bytes_max: u32,
}

/// What [`Segment::find`] learned.
#[derive(Clone, Copy, Debug)]
pub enum Find {
    Found {
        position: u64,
        header: BatchHeader,
    },
    /// Every batch in the segment ends before the offset.
    NotInSegment,
    /// An index entry does not match the batch at its position.
    StaleIndex,
}

#[derive(Debug)]
pub struct Segment {
    pub base_offset: Offset,
    pub log_path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    /// Bytes in the log file: the position the next batch is written at.
    pub size: u64,
    /// The offset after the segment's last batch; `base_offset` when empty.
    pub next_offset: Offset,
    /// The largest timestamp of any batch, `None` when empty.
    pub max_timestamp: Option<i64>,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    /// Bytes appended since the last offset-index entry (or the segment start).
    bytes_since_index_entry: u64,
    /// When the segment was created or opened (ms since the Unix epoch), for roll by age.
    pub created_ms: u64,
}

impl Segment {
    /// Creates an empty segment file. The directory must be synced before anything written
    /// to it is acknowledged; the caller arranges that.
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: Offset,
        now_ms: u64,
    ) -> Result<Segment> {
        let log_path = dir.join(format!("{}{LOG_SUFFIX}", file_stem(base_offset)));
        Segment::create_at(storage, log_path, base_offset, now_ms)
    }

    /// Creates an empty segment file at `log_path`, which need not be a segment's final name
    /// (compaction writes `<base>.log.cleaned` and renames it later).
    pub fn create_at(
        storage: &dyn Storage,
        log_path: PathBuf,
        base_offset: Offset,
        now_ms: u64,
    ) -> Result<Segment> {
        let file = storage
            .open(&log_path, true)
            .map_err(|e| StorageError::io(&log_path, e))?;
        let len = file
            .byte_len()
            .map_err(|e| StorageError::io(&log_path, e))?;
        // A leftover file of the same name (an earlier, abandoned segment) must not leak in.
        // Only then is it cut: truncating a new file makes ext4 (auto_da_alloc) write back
        // all of its pages when it is closed, which makes dropping unsynced data slow.
        if len > 0 {
            file.set_len(0)
                .map_err(|e| StorageError::io(&log_path, e))?;
        }
        Ok(Segment::empty(base_offset, log_path, file, now_ms))
    }

    fn empty(
        base_offset: Offset,
        log_path: PathBuf,
        file: Arc<dyn StorageFile>,
        now_ms: u64,
    ) -> Segment {
        Segment {
            base_offset,
            log_path,
            file,
            size: 0,
            next_offset: base_offset,
            max_timestamp: None,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_index_entry: 0,
            created_ms: now_ms,
        }
    }

    /// Opens an existing segment file without reading it yet.
    pub fn open_file(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: Offset,
        now_ms: u64,
    ) -> Result<Segment> {
        let (log_path, file, len) = open_log_file(storage, dir, base_offset, false)?;
        let mut segment = Segment::empty(base_offset, log_path, file, now_ms);
        segment.size = len;
        Ok(segment)
    }

    pub fn index_path(&self) -> PathBuf {
        self.log_path.with_extension(&INDEX_SUFFIX[1..])
    }

    pub fn time_index_path(&self) -> PathBuf {
        self.log_path.with_extension(&TIME_INDEX_SUFFIX[1..])
    }

    /// The offset relative to the segment's base, if it fits the index's `u32`.
    #[must_use]
    pub fn relative(&self, offset: Offset) -> Option<u32> {
        offset
            .0
            .checked_sub(self.base_offset.0)
            .and_then(|d| u32::try_from(d).ok())
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Notes a batch at `position` in the indexes and the segment's summary fields.
    fn account(&mut self, header: &BatchHeader, position: u64, index_interval_bytes: u32) {
        let relative = self
            .relative(header.base_offset)
            .expect("batch offset fits the segment");
        let total = header.total_bytes();
        if position > 0 && self.bytes_since_index_entry >= u64::from(index_interval_bytes) {
            self.offset_index.push(relative, position as u32);
            // The time entry holds the largest timestamp of every batch before this one.
            if let Some(max_timestamp) = self.max_timestamp {
                self.time_index
                    .maybe_push(max_timestamp, relative, position as u32);
            }
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += total;
        self.max_timestamp = Some(
            self.max_timestamp
                .map_or(header.max_timestamp, |t| t.max(header.max_timestamp)),
        );
        self.next_offset = header.next_offset();
        self.size = position + total;
    }

    /// Writes one validated batch at the end. On failure nothing is accounted and the file
    /// may hold a partial batch past `size`, which the caller cuts off.
    pub fn append(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        index_interval_bytes: u32,
    ) -> Result<u64> {
        let position = self.size;
        assert!(
            header.base_offset >= self.next_offset,
            "offsets must grow within a segment"
        );
        assert!(
            position + batch.len() as u64 <= u64::from(u32::MAX),
            "segment positions fit u32"
        );
        self.file
            .write_at(batch, position)
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        self.account(header, position, index_interval_bytes);
        Ok(position)
    }

    /// Reads and checks batches from `start_position` to the end of the file, calling
    /// `on_batch` for each good one and accounting it in the indexes. Returns where and why it
    /// stopped early, if it did; `size` is then the end of the last good batch. Blocks on reads.
    pub fn scan(
        &mut self,
        start_position: u64,
        bounds: ScanBounds,
        index_interval_bytes: u32,
        on_batch: impl FnMut(&ScannedBatch),
    ) -> Result<Option<ScanStop>> {
        match self.scan_trusting(start_position, None, bounds, index_interval_bytes, on_batch)? {
            Scanned::Whole { stop, .. } => Ok(stop),
            Scanned::Misaligned => unreachable!("nothing was trusted"),
        }
    }

    /// Like [`Segment::scan`], but the batches below `trusted.0` (a byte position a recovery
    /// point checkpoint recorded once everything below it was fsynced, the batches there
    /// ending at offset `trusted.1`) are walked by their headers only: no CRC, and only
    /// their first bytes read, so that a crash's recovery reads what it must check, not the
    /// whole segment. Every header check but the CRC still applies. `Misaligned` when the walk
    /// does not reach that position at a batch boundary ending at that offset (the checkpoint
    /// does not describe this file): the caller resets the accounting and scans it whole.
    pub fn scan_trusting(
        &mut self,
        start_position: u64,
        trusted: Option<(u64, Offset)>,
        bounds: ScanBounds,
        index_interval_bytes: u32,
        mut on_batch: impl FnMut(&ScannedBatch),
    ) -> Result<Scanned> {
        let file_len = self
            .file
            .byte_len()
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        let mut position = start_position;
        let mut next_offset_min = bounds.next_offset_min;
        let mut epoch_min = bounds.epoch_min;
        let mut buf = Vec::new();
        let mut buf_start = position;
        // On a stop the segment logically ends at the last good batch; the caller cuts the
        // file there.
        self.size = position;
        let (trusted_below, trusted_end) = trusted.unwrap_or((0, Offset(0)));
        let (mut bytes_checked, mut bytes_walked) = (0u64, 0u64);
        if trusted_below > file_len {
            return Ok(Scanned::Misaligned);
        }
        while position < file_len {
            let stop = |reason: String| {
                Ok(Scanned::Whole {
                    stop: Some(ScanStop { position, reason }),
                    bytes_checked,
                    bytes_walked,
                })
            };
            let walking = position < trusted_below;
            // Make sure the buffer holds at least a header at `position`.
            if position + HEADER_BYTES as u64 > buf_start + buf.len() as u64 {
                // Walking trusted batches, a small read per header: large batches are then
                // skipped unread, small ones still come many to a read.
                let chunk = if walking {
                    TRUSTED_WALK_CHUNK_BYTES
                } else {
                    SCAN_CHUNK_BYTES
                };
                let want = chunk.min((file_len - position) as usize);
                buf = self.read_vec(position, want)?;
                buf_start = position;
            }
            let at = (position - buf_start) as usize;
            let header = match BatchHeader::parse(&buf[at..]) {
                Ok(header) => header,
                Err(e) => return stop(e.to_string()),
            };
            if let Err(e) = header.check_sanity() {
                return stop(e.to_string());
            }
            let total = header.total_bytes();
            if total > u64::from(bounds.batch_bytes_max) {
                return stop(format!("batch of {total} bytes exceeds the limit"));
            }
            if position + total > file_len {
                return stop(format!(
                    "batch of {total} bytes runs past the end of the file"
                ));
            }
            if walking {
                if position + total > trusted_below {
                    return Ok(Scanned::Misaligned);
                }
            } else if at + total as usize > buf.len() {
                let want = SCAN_CHUNK_BYTES
                    .max(total as usize)
                    .min((file_len - position) as usize);
                buf = self.read_vec(position, want)?;
                buf_start = position;
            }
            let at = (position - buf_start) as usize;
            if !walking && let Err(e) = batch::validate_crc(&buf[at..at + total as usize]) {
                return stop(e.to_string());
            }
            if header.base_offset < next_offset_min {
                return stop(format!(
                    "base offset {} goes backwards (expected at least {next_offset_min})",
                    header.base_offset
                ));
            }
            if self.relative(header.last_offset()).is_none() {
                return stop(format!(
                    "offset {} does not fit this segment",
                    header.last_offset()
                ));
            }
            if let Some(min) = epoch_min
                && header.partition_leader_epoch < min
            {
                return stop(format!(
                    "leader epoch {} goes backwards (expected at least {min})",
                    header.partition_leader_epoch
                ));
            }
            self.account(&header, position, index_interval_bytes);
            on_batch(&ScannedBatch { header, position });
            next_offset_min = header.next_offset();
            epoch_min = Some(header.partition_leader_epoch);
            position += total;
            if walking {
                bytes_walked += total;
                if position == trusted_below && next_offset_min != trusted_end {
                    return Ok(Scanned::Misaligned);
                }
            } else {
                bytes_checked += total;
            }
        }
        if position < trusted_below {
            return Ok(Scanned::Misaligned);
        }
        Ok(Scanned::Whole {
            stop: None,
            bytes_checked,
            bytes_walked,
        })
    }

    fn read_vec(&self, position: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, position)
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        Ok(buf)
    }

    /// Reads the header of the batch at `position`.
    pub fn read_header(&self, position: u64) -> Result<BatchHeader> {
        let mut buf = [0u8; HEADER_BYTES];
        self.file
            .read_exact_at(&mut buf, position)
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        let header = BatchHeader::parse(&buf).expect("a full header was read");
        header
            .check_sanity()
            .map_err(|e| self.corrupt(position, e.to_string()))?;
        if position + header.total_bytes() > self.size {
            return Err(self.corrupt(position, "batch runs past the end of the segment".into()));
        }
        Ok(header)
    }

    pub fn corrupt(&self, position: u64, reason: String) -> StorageError {
        tracing::error!(path = %self.log_path.display(), position, %reason, "corrupt batch in segment");
        StorageError::Corrupt {
            path: self.log_path.clone(),
            position,
            reason,
        }
    }

    /// Finds the first batch whose last offset is at or past `offset`. Uses the offset index,
    /// then walks batch headers (about `index_interval_bytes` of them at most). The header at
    /// the index entry must carry the offset the entry names, else the index is stale (left
    /// over from a crash) and the caller rebuilds it.
    pub fn find(&self, offset: Offset) -> Result<Find> {
        if offset >= self.next_offset {
            return Ok(Find::NotInSegment);
        }
        let relative = self.relative(offset).unwrap_or(0);
        let entry = self.offset_index.lookup(relative);
        let mut position = entry.map_or(0, |e| u64::from(e.position));
        let mut first = true;
        while position < self.size {
            let header = match self.read_header(position) {
                Ok(header) => header,
                Err(_) if first && entry.is_some() => return Ok(Find::StaleIndex),
                Err(e) => return Err(e),
            };
            if first
                && let Some(e) = entry
                && header.base_offset != self.base_offset.plus(u64::from(e.relative_offset))
            {
                return Ok(Find::StaleIndex);
            }
            first = false;
            if header.last_offset() >= offset {
                return Ok(Find::Found { position, header });
            }
            position += header.total_bytes();
        }
        Ok(Find::NotInSegment)
    }

    /// Cuts the segment at `position` (a batch boundary), dropping index entries past it and
    /// re-deriving the summary fields. The new length is not durable until the file is synced.
    pub fn truncate_to_position(
        &mut self,
        position: u64,
        bounds: ScanBounds,
        index_interval_bytes: u32,
    ) -> Result<()> {
        self.file
            .set_len(position)
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        self.size = position;
        self.offset_index.truncate_to_position(position as u32);
        self.time_index.truncate_to_position(position as u32);
        match self.scan_tail(bounds, index_interval_bytes, |_| {})? {
            None => Ok(()),
            Some(stop) => Err(self.corrupt(stop.position, stop.reason)),
        }
    }

    /// Writes both indexes to their files. Not fsynced: recovery checks and rebuilds them.
    pub fn write_indexes(&self, storage: &dyn Storage) -> Result<()> {
        for (path, bytes) in [
            (self.index_path(), self.offset_index.encode()),
            (self.time_index_path(), self.time_index.encode()),
        ] {
            let file = storage
                .open(&path, true)
                .map_err(|e| StorageError::io(&path, e))?;
            // Write, then set the final length (shorter than an old file's, never a truncate to
            // zero first; see `create`).
            file.write_at(&bytes, 0)
                .map_err(|e| StorageError::io(&path, e))?;
            file.set_len(bytes.len() as u64)
                .map_err(|e| StorageError::io(&path, e))?;
        }
        Ok(())
    }

    /// Loads the index files if they are well formed and cover the segment up to about one
    /// index interval plus one batch from its end. Returns whether they were loaded.
    pub fn load_indexes(
        &mut self,
        storage: &dyn Storage,
        index_interval_bytes: u32,
        batch_bytes_max: u32,
    ) -> Result<bool> {
        let read = |path: &Path| -> Result<Option<Vec<u8>>> {
            if !storage.exists(path) {
                return Ok(None);
            }
            let file = storage
                .open(path, false)
                .map_err(|e| StorageError::io(path, e))?;
            let len = file.byte_len().map_err(|e| StorageError::io(path, e))?;
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, 0)
                .map_err(|e| StorageError::io(path, e))?;
            Ok(Some(buf))
        };
        let (Some(offset_bytes), Some(time_bytes)) =
            (read(&self.index_path())?, read(&self.time_index_path())?)
        else {
            return Ok(false);
        };
        let (Some(offset_index), Some(time_index)) = (
            OffsetIndex::decode(&offset_bytes),
            TimeIndex::decode(&time_bytes),
        ) else {
            return Ok(false);
        };
        let last_position = offset_index.last().map_or(0, |e| u64::from(e.position));
        let coverage = u64::from(index_interval_bytes)
            + u64::from(batch_bytes_max)
            + OFFSET_ENTRY_BYTES as u64;
        if last_position >= self.size.max(1) || self.size - last_position > coverage {
            return Ok(false);
        }
        if time_index
            .last()
            .is_some_and(|e| u64::from(e.position) >= self.size)
        {
            return Ok(false);
        }
        self.offset_index = offset_index;
        self.time_index = time_index;
        Ok(true)
    }

    /// Removes the segment's files. Durable once the directory is synced.
    pub fn delete_files(&self, storage: &dyn Storage) -> Result<()> {
        for path in [self.index_path(), self.time_index_path()] {
            if storage.exists(&path) {
                storage
                    .remove_file(&path)
                    .map_err(|e| StorageError::io(&path, e))?;
            }
        }
        storage
            .remove_file(&self.log_path)
            .map_err(|e| StorageError::io(&self.log_path, e))
    }

    /// Resets the accounting so that a scan can rebuild it from the start of the file.
    pub fn reset_accounting(&mut self) -> Result<()> {
        self.size = self
            .file
            .byte_len()
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        self.offset_index = OffsetIndex::default();
        self.time_index = TimeIndex::default();
        self.bytes_since_index_entry = 0;
        self.max_timestamp = None;
        self.next_offset = self.base_offset;
        Ok(())
    }

    /// Re-derives the fields past the last index entry (next offset, max timestamp, the byte
    /// count since that entry) by scanning from it, after trusted indexes were loaded or the
    /// segment was cut. The scan reads about one index interval plus one batch. A stop means
    /// the tail or the index is bad (the batch at the entry does not carry the entry's offset).
    pub fn scan_tail(
        &mut self,
        bounds: ScanBounds,
        index_interval_bytes: u32,
        on_batch: impl FnMut(&ScannedBatch),
    ) -> Result<Option<ScanStop>> {
        let entry = self.offset_index.last();
        let start = entry.map_or(0, |e| u64::from(e.position));
        if let Some(e) = entry {
            let expected = self.base_offset.plus(u64::from(e.relative_offset));
            match self.read_header(start) {
                Ok(header) if header.base_offset == expected => {}
                _ => {
                    return Ok(Some(ScanStop {
                        position: start,
                        reason: "offset index does not match the segment".into(),
                    }));
                }
            }
        }
        // The largest timestamp before `start`: the last time entry at or before it.
        let max_before = self
            .time_index
            .last()
            .filter(|e| u64::from(e.position) <= start)
            .map(|e| e.timestamp);
        // The scan re-accounts the batch at `start`, pushing its entries again.
        self.offset_index.truncate_to_position(start as u32);
        self.time_index.truncate_to_position(start as u32);
        self.max_timestamp = max_before;
        self.next_offset = self.base_offset;
        self.bytes_since_index_entry = if start > 0 {
            u64::from(index_interval_bytes)
        } else {
            0
        };
        let bounds = ScanBounds {
            next_offset_min: if start > 0 {
                self.base_offset
            } else {
                bounds.next_offset_min
            },
            ..bounds
        };
        self.scan(start, bounds, index_interval_bytes, on_batch)
    }
}
