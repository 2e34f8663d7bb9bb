//! Log compaction, for logs whose cleanup policy is `compact`: keep the newest record of every
//! key, drop a tombstone once `delete_retention_ms` has passed, and merge the cleaned segments
//! into few. STORAGE.md (*Compaction*) states the rules, the file suffixes and the swap
//! protocol with its crash analysis.
//!
//! The owner of a [`crate::Log`] calls `Log::begin_compaction` (cheap: it captures the sealed
//! segments' file handles, and sealed segments never change), runs the [`CompactionJob`] on
//! another thread with [`CompactionJob::run`] while appends and reads go on, and hands the
//! [`CompactionOutput`] back to `Log::complete_compaction`, which checks that the log did not
//! change under the job and swaps the cleaned segments in (renames and small fsyncs).
//!
//! A pass, as Kafka's log cleaner makes it:
//! 1. Walk the batch headers of the cleanable range (the sealed segments wholly below the high
//!    watermark and the recovery point): the last batch of every producer id, and how many
//!    records the map will take.
//! 2. Build the key map (key hash → newest offset) from the dirty records, those at or past
//!    the cleaner checkpoint, until the map is full: the map then covers `[first dirty, end)`.
//!    With room to spare, add the expired tombstones of the clean part.
//! 3. Rewrite every segment that starts below `end`, oldest first, into `<base>.log.cleaned`
//!    files, merging neighbours up to the segment size, and fsync them.
//!
//! Offsets never change. Batches are never re-encoded unless a record goes; then the records
//! that stay are re-encoded (same codec, same producer fields, same leader epoch) as one batch
//! per run of consecutive offsets, because `vltava-messages` accepts only batches whose record
//! count spans their offset range (STORAGE.md explains the choice).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vltava_messages::batch::{
    self, BASE_SEQUENCE_POSITION, BatchHeader, CRC_POSITION, HEADER_BYTES, PRODUCER_ID_POSITION,
    RECORD_COUNT_POSITION,
};
use vltava_messages::limits::BATCH_BYTES_MAX;
use vltava_messages::{
    BatchBuilder, Offset, ProducerId, Record, RecordBatchRef, Sequence, TimestampType,
};

use crate::checkpoint;
use crate::error::{Result, StorageError};
use crate::fs::{Storage, StorageFile};
use crate::segment::{self, INDEX_SUFFIX, LOG_SUFFIX, ScanBounds, Segment, TIME_INDEX_SUFFIX};

#[cfg(test)]
mod tests;

/// Suffix of a cleaned segment being written: `<base>.log.cleaned`. Never trusted: removed at
/// open.
pub const CLEANED_SUFFIX: &str = ".cleaned";
/// Suffix of a cleaned segment that is part of a swap: `<base>.log.swap`. Committed once the
/// commit record names it; removed at open otherwise.
pub const SWAP_SUFFIX: &str = ".swap";
/// Suffix of a replaced segment's files between the commit and their removal:
/// `<base>.log.deleted`, `<base>.index.deleted`, `<base>.timeindex.deleted`.
pub const DELETED_SUFFIX: &str = ".deleted";
/// The commit record of a swap in progress: which cleaned segments replace which range.
pub const COMPACTION_COMMIT: &str = "compaction-commit";
/// The cleaner checkpoint: the first dirty offset (below it, every key's older records are
/// gone).
pub const CLEANER_CHECKPOINT: &str = "cleaner-offset-checkpoint";
/// Format version of the commit record body.
const COMMIT_VERSION: u8 = 1;
/// Format version of the cleaner checkpoint body.
const CLEANER_CHECKPOINT_VERSION: u8 = 1;
/// Bytes of one commit-record entry: base offset and end offset of one cleaned segment.
const COMMIT_ENTRY_BYTES: usize = 16;

/// Bytes of one key-map slot: a 128-bit key hash and an offset.
pub const KEY_MAP_SLOT_BYTES: u64 = 24;
/// The share of slots the key map fills before it counts as full: open addressing with
/// linear probing stays fast up to about this load (Kafka's dedupe buffer uses 0.9 too).
const KEY_MAP_LOAD_PERCENT: u64 = 90;
/// Bytes read at a time while reading a segment's batches: a few large reads per segment.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// The largest relative offset a segment's index can hold.
const RELATIVE_OFFSET_SPAN: u64 = u32::MAX as u64 + 1;
/// Sequence numbers wrap around after `i32::MAX`, as they are `i32` on the wire.
const SEQUENCE_SPAN: u64 = i32::MAX as u64 + 1;

/// Gives every job a number, so that a log accepts only the output of the job it started.
static NEXT_JOB_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_job_id() -> u64 {
    NEXT_JOB_ID.fetch_add(1, Ordering::Relaxed)
}

/// A sealed segment a job reads. Its file never changes while the log has it; a job notices
/// (and its output is discarded) if the log dropped or cut it meanwhile.
#[derive(Debug, Clone)]
pub(crate) struct SourceSegment {
    pub base_offset: Offset,
    pub next_offset: Offset,
    pub size: u64,
    pub log_path: PathBuf,
    pub file: Arc<dyn StorageFile>,
}

/// What the settings of a pass are, captured from the log's config when the job begins.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PassSettings {
    pub now_ms: u64,
    pub delete_retention_ms: u64,
    pub segment_bytes_max: u32,
    pub index_interval_bytes: u32,
    pub batch_bytes_max: u32,
    pub map_bytes_max: u64,
    /// Map the expired tombstones of the clean part too, so they can be dropped.
    pub scan_clean_tombstones: bool,
}

/// One compaction pass over a log's cleanable range. Made by `Log::begin_compaction`; run it
/// (on any thread) with [`CompactionJob::run`] and give the output to
/// `Log::complete_compaction`.
#[derive(Debug)]
pub struct CompactionJob {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) dir: PathBuf,
    pub(crate) id: u64,
    pub(crate) generation: u64,
    pub(crate) sources: Vec<SourceSegment>,
    pub(crate) first_dirty: Offset,
    pub(crate) settings: PassSettings,
    /// Set when the log is dropped or closed: the job stops at its next batch.
    pub(crate) cancelled: Arc<AtomicBool>,
}

/// The cleaned segments of a finished job, not yet swapped in.
#[derive(Debug)]
pub struct CompactionOutput {
    pub(crate) id: u64,
    pub(crate) generation: u64,
    pub(crate) dir: PathBuf,
    pub(crate) sources: Vec<SourceSegment>,
    /// Every `.cleaned` file the job created, kept or not, so a discard can remove them.
    pub(crate) cleaned_paths: Vec<PathBuf>,
    pub(crate) result: Result<Cleaned>,
}

impl CompactionOutput {
    /// Whether the job ran to the end (the swap may still be refused by the log).
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// One cleaned segment: it replaces every old segment whose base offset lies in
/// `[base_offset, end_offset)`.
#[derive(Debug)]
pub(crate) struct CleanedGroup {
    pub base_offset: Offset,
    pub end_offset: Offset,
    /// The base offsets of the old segments it replaces.
    pub members: Vec<Offset>,
    /// The new segment, its file still named `<base>.log.cleaned`.
    pub segment: Segment,
}

#[derive(Debug)]
pub(crate) struct Cleaned {
    pub groups: Vec<CleanedGroup>,
    /// The new first dirty offset: the key map covered every dirty record below it.
    pub end: Offset,
    pub stats: PassStats,
    /// When the earliest tombstone kept by this pass may be dropped (ms since the Unix epoch),
    /// `None` if no kept tombstone waits on time.
    pub tombstone_due_ms: Option<u64>,
    /// An expired tombstone was kept because a record of its key stays for its producer: the
    /// next pass (which new data will start) must map the clean part's tombstones again.
    pub tombstones_held: bool,
}

/// Counts of one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Records removed, tombstones included.
    pub records_removed: u64,
    /// Tombstones removed because `delete_retention_ms` had passed.
    pub tombstones_removed: u64,
    /// Superseded records kept because they end the last batch of their producer id.
    pub producer_records_kept: u64,
    /// Batches copied byte for byte.
    pub batches_copied: u64,
    /// Batches written re-encoded (a batch may become several, one per run of offsets).
    pub batches_rewritten: u64,
    /// Keys in the map.
    pub keys_mapped: u64,
}

/// How a completed job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompactionOutcome {
    /// The cleaned segments replaced the old ones.
    Swapped,
    /// The log changed under the job (or the job belongs to another log); nothing changed.
    Discarded { reason: &'static str },
}

/// What `Log::complete_compaction` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionReport {
    pub outcome: CompactionOutcome,
    /// The offsets whose segments were rewritten: from the log start to the end of the last
    /// rewritten segment.
    pub cleaned_range: Range<Offset>,
    /// The first dirty offset after the pass (the cleaner checkpoint).
    pub first_dirty_offset: Offset,
    pub segments_before: usize,
    pub segments_after: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub stats: PassStats,
}

impl CompactionJob {
    /// The offsets this job may rewrite: its sealed segments, from the log start.
    #[must_use]
    pub fn range(&self) -> Range<Offset> {
        let start = self.sources.first().map_or(Offset(0), |s| s.base_offset);
        let end = self.sources.last().map_or(start, |s| s.next_offset);
        start..end
    }

    /// The first offset not yet cleaned when the job began.
    #[must_use]
    pub fn first_dirty_offset(&self) -> Offset {
        self.first_dirty
    }

    /// Reads the cleanable range, builds the key map and writes the cleaned segments as
    /// `<base>.log.cleaned`, fsynced. Never touches the log's own files: a crash or an error
    /// here leaves only `.cleaned` files, which the next open removes. Blocks on reads, writes
    /// and fsyncs; run it off the async runtime.
    #[must_use]
    pub fn run(self) -> CompactionOutput {
        let mut pass = Pass::new(&self);
        let result = pass.run();
        let cleaned_paths = std::mem::take(&mut pass.cleaned_paths);
        if let Err(error) = &result {
            tracing::warn!(dir = %self.dir.display(), %error, "compaction pass failed");
        }
        CompactionOutput {
            id: self.id,
            generation: self.generation,
            dir: self.dir,
            sources: self.sources,
            cleaned_paths,
            result,
        }
    }
}

/// A 128-bit hash of a key. Two keys that collide would lose the older one's newest record,
/// so the hash is wide (a collision among a billion keys has odds near 10^-21) and keyed
/// afresh for every pass, so that colliding keys cannot be prepared in advance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct KeyHash(u64, u64);

#[derive(Debug)]
struct KeyHasher {
    first: RandomState,
    second: RandomState,
}

impl KeyHasher {
    fn new() -> KeyHasher {
        KeyHasher {
            first: RandomState::new(),
            second: RandomState::new(),
        }
    }

    fn hash(&self, key: &[u8]) -> KeyHash {
        // The low bit is set so that a zero first half marks an empty map slot.
        KeyHash(self.first.hash_one(key) | 1, self.second.hash_one(key))
    }
}

/// Key hash → newest offset, in one allocation sized when the pass starts and never grown:
/// open addressing with linear probing over `[first hash, second hash, offset]` slots, as
/// Kafka's `SkimpyOffsetMap`. Its size is `slots × KEY_MAP_SLOT_BYTES`, at most the log's
/// `compaction_map_bytes_max`.
#[derive(Debug)]
struct KeyMap {
    slots: Vec<[u64; 3]>,
    len: u64,
    len_max: u64,
}

impl KeyMap {
    /// A map for up to `keys` keys, within `bytes_max`.
    fn new(keys: u64, bytes_max: u64) -> KeyMap {
        let slots_max = (bytes_max / KEY_MAP_SLOT_BYTES).max(2);
        let wanted = keys.saturating_mul(100) / KEY_MAP_LOAD_PERCENT + 2;
        let slots = wanted.min(slots_max);
        let len_max = (slots * KEY_MAP_LOAD_PERCENT / 100).clamp(1, slots - 1);
        KeyMap {
            slots: vec![[0; 3]; slots as usize],
            len: 0,
            len_max,
        }
    }

    fn bytes(&self) -> u64 {
        self.slots.len() as u64 * KEY_MAP_SLOT_BYTES
    }

    /// The slot holding `hash`, or the empty slot where it would go. Terminates because the
    /// map is never full (`len_max < slots`).
    fn slot(&self, hash: KeyHash) -> usize {
        let n = self.slots.len();
        let mut i = (hash.0 % n as u64) as usize;
        loop {
            let slot = &self.slots[i];
            if slot[0] == 0 || (slot[0] == hash.0 && slot[1] == hash.1) {
                return i;
            }
            i = (i + 1) % n;
        }
    }

    fn get(&self, hash: KeyHash) -> Option<Offset> {
        let slot = &self.slots[self.slot(hash)];
        (slot[0] != 0).then_some(Offset(slot[2]))
    }

    fn is_full(&self) -> bool {
        self.len >= self.len_max
    }

    /// Sets the key's offset to `offset` if that is newer than what the map holds. Returns
    /// false, changing nothing, when the key is new and the map is full.
    fn insert_newest(&mut self, hash: KeyHash, offset: Offset) -> bool {
        let i = self.slot(hash);
        let slot = &mut self.slots[i];
        if slot[0] != 0 {
            slot[2] = slot[2].max(offset.0);
            return true;
        }
        if self.len >= self.len_max {
            return false;
        }
        *slot = [hash.0, hash.1, offset.0];
        self.len += 1;
        true
    }
}

/// Reads the batches of a sealed segment in order, a chunk at a time, checking each one's
/// header and CRC: a job never compacts bytes it could not vouch for.
struct BatchReader<'a> {
    source: &'a SourceSegment,
    buf: Vec<u8>,
    buf_start: u64,
    position: u64,
}

impl<'a> BatchReader<'a> {
    fn new(source: &'a SourceSegment) -> Self {
        BatchReader {
            source,
            buf: Vec::new(),
            buf_start: 0,
            position: 0,
        }
    }

    fn corrupt(&self, position: u64, reason: String) -> StorageError {
        tracing::error!(path = %self.source.log_path.display(), position, %reason, "corrupt batch met by compaction");
        StorageError::Corrupt {
            path: self.source.log_path.clone(),
            position,
            reason,
        }
    }

    /// Makes the buffer hold `[position, position + len)`.
    fn fill(&mut self, position: u64, len: u64) -> Result<()> {
        let buf_end = self.buf_start + self.buf.len() as u64;
        if position >= self.buf_start && position + len <= buf_end {
            return Ok(());
        }
        let want = (READ_CHUNK_BYTES as u64)
            .max(len)
            .min(self.source.size - position);
        self.buf.resize(want as usize, 0);
        self.source
            .file
            .read_exact_at(&mut self.buf, position)
            .map_err(|e| StorageError::io(&self.source.log_path, e))?;
        self.buf_start = position;
        Ok(())
    }

    /// The next batch: its position, header and range in `self.buf`.
    fn next(&mut self) -> Result<Option<(u64, BatchHeader, Range<usize>)>> {
        let position = self.position;
        if position >= self.source.size {
            return Ok(None);
        }
        if self.source.size - position < HEADER_BYTES as u64 {
            return Err(self.corrupt(position, "a partial batch header ends the segment".into()));
        }
        self.fill(position, HEADER_BYTES as u64)?;
        let at = (position - self.buf_start) as usize;
        let header = BatchHeader::parse(&self.buf[at..]).expect("a whole header is buffered");
        if let Err(e) = header.check_sanity() {
            return Err(self.corrupt(position, e.to_string()));
        }
        let total = header.total_bytes();
        if position + total > self.source.size {
            return Err(self.corrupt(position, "batch runs past the end of the segment".into()));
        }
        self.fill(position, total)?;
        let at = (position - self.buf_start) as usize;
        let range = at..at + total as usize;
        if let Err(e) = batch::validate_crc(&self.buf[range.clone()]) {
            return Err(self.corrupt(position, e.to_string()));
        }
        self.position = position + total;
        Ok(Some((position, header, range)))
    }
}

/// Whether a batch's tombstones have outlived `delete_retention_ms`, and when they will.
fn tombstone_expiry_ms(header: &BatchHeader, delete_retention_ms: u64) -> i64 {
    header
        .max_timestamp
        .saturating_add(i64::try_from(delete_retention_ms).unwrap_or(i64::MAX))
}

/// How one member segment's copy into a group ended.
enum MemberCopy {
    Done,
    /// The group would grow past the segment size: undo the member and start a new group.
    Overflow,
}

/// The state of one run of a job.
struct Pass<'a> {
    job: &'a CompactionJob,
    hasher: KeyHasher,
    map: KeyMap,
    /// Records at or past it were not mapped, so they always stay.
    end: Offset,
    /// The base offset of the last batch of every producer id in the job's range.
    producer_last_batches: HashMap<ProducerId, Offset>,
    /// Keys of superseded records kept for their producer's sake in this pass: a tombstone of
    /// such a key must stay too, or the kept record would come back to life.
    keeper_keys: HashSet<KeyHash>,
    stats: PassStats,
    tombstone_due_ms: Option<i64>,
    tombstones_held: bool,
    cleaned_paths: Vec<PathBuf>,
}

impl<'a> Pass<'a> {
    fn new(job: &'a CompactionJob) -> Self {
        Pass {
            job,
            hasher: KeyHasher::new(),
            map: KeyMap::new(0, KEY_MAP_SLOT_BYTES * 2),
            end: job.first_dirty,
            producer_last_batches: HashMap::new(),
            keeper_keys: HashSet::new(),
            stats: PassStats::default(),
            tombstone_due_ms: None,
            tombstones_held: false,
            cleaned_paths: Vec::new(),
        }
    }

    fn check_cancelled(&self) -> Result<()> {
        if self.job.cancelled.load(Ordering::Relaxed) {
            return Err(StorageError::CompactionCancelled {
                dir: self.job.dir.clone(),
            });
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Cleaned> {
        let result = self.run_inner();
        if result.is_err() {
            // Best effort: what is left is removed at the next open anyway.
            for path in &self.cleaned_paths {
                if self.job.storage.exists(path) {
                    let _ = self.job.storage.remove_file(path);
                }
            }
        }
        result
    }

    fn run_inner(&mut self) -> Result<Cleaned> {
        let settings = self.job.settings;
        let (dirty_records, clean_expired_records) = self.walk_headers()?;
        let keys = dirty_records
            + if settings.scan_clean_tombstones {
                clean_expired_records
            } else {
                0
            };
        self.map = KeyMap::new(keys, settings.map_bytes_max);
        self.build_map()?;
        if settings.scan_clean_tombstones {
            self.map_clean_tombstones()?;
        }
        self.stats.keys_mapped = self.map.len;
        tracing::debug!(
            dir = %self.job.dir.display(),
            first_dirty = self.job.first_dirty.0,
            end = self.end.0,
            keys = self.map.len,
            map_bytes = self.map.bytes(),
            "compaction key map built"
        );
        let groups = self.rewrite()?;
        // The cleaned files must be durable before the owner commits the swap: from then on
        // recovery trusts them in place of the old segments.
        for group in &groups {
            self.check_cancelled()?;
            group
                .segment
                .file
                .sync_data()
                .map_err(|e| StorageError::io(&group.segment.log_path, e))?;
        }
        Ok(Cleaned {
            groups,
            end: self.end,
            stats: self.stats,
            tombstone_due_ms: self.tombstone_due_ms.map(|t| u64::try_from(t).unwrap_or(0)),
            tombstones_held: self.tombstones_held,
        })
    }

    /// Step 1: the last batch of every producer id, the dirty records, and the records of
    /// expired batches in the clean part. Reads headers only.
    fn walk_headers(&mut self) -> Result<(u64, u64)> {
        let settings = self.job.settings;
        let now = i64::try_from(settings.now_ms).unwrap_or(i64::MAX);
        let mut dirty_records = 0u64;
        let mut clean_expired_records = 0u64;
        for source in &self.job.sources {
            let mut position = 0;
            while position < source.size {
                self.check_cancelled()?;
                let header = read_header(source, position)?;
                if let Some(id) = header.producer_id {
                    self.producer_last_batches.insert(id, header.base_offset);
                }
                if header.next_offset() > self.job.first_dirty {
                    dirty_records += u64::from(header.record_count);
                } else if tombstone_expiry_ms(&header, settings.delete_retention_ms) <= now {
                    clean_expired_records += u64::from(header.record_count);
                }
                position += header.total_bytes();
            }
        }
        Ok((dirty_records, clean_expired_records))
    }

    /// Step 2: every keyed dirty record, oldest first, until the map is full. `end` is then
    /// the first record not mapped (the range end if all were).
    fn build_map(&mut self) -> Result<()> {
        let first_dirty = self.job.first_dirty;
        self.end = self.job.range().end.max(first_dirty);
        for source in &self.job.sources {
            if source.next_offset <= first_dirty {
                continue;
            }
            let mut reader = BatchReader::new(source);
            while let Some((position, header, range)) = reader.next()? {
                self.check_cancelled()?;
                if header.next_offset() <= first_dirty {
                    continue;
                }
                let records = decode(source, position, &reader.buf[range])?;
                for record in &records {
                    let Some(key) = &record.key else { continue };
                    if record.offset < first_dirty {
                        continue;
                    }
                    if !self.map.insert_newest(self.hasher.hash(key), record.offset) {
                        self.end = record.offset;
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Step 2, continued: with room left in the map, the tombstones of the clean part whose
    /// batches have expired. Only a mapped tombstone may be dropped, and mapping it also drops
    /// any older record of its key still in the log.
    fn map_clean_tombstones(&mut self) -> Result<()> {
        let settings = self.job.settings;
        let now = i64::try_from(settings.now_ms).unwrap_or(i64::MAX);
        let first_dirty = self.job.first_dirty;
        for source in &self.job.sources {
            if source.base_offset >= first_dirty {
                break;
            }
            let mut reader = BatchReader::new(source);
            while let Some((position, header, range)) = reader.next()? {
                self.check_cancelled()?;
                if header.base_offset >= first_dirty {
                    break;
                }
                if tombstone_expiry_ms(&header, settings.delete_retention_ms) > now {
                    continue;
                }
                let records = decode(source, position, &reader.buf[range])?;
                for record in &records {
                    let (Some(key), None) = (&record.key, &record.value) else {
                        continue;
                    };
                    if record.offset >= first_dirty {
                        break;
                    }
                    let hash = self.hasher.hash(key);
                    if self.map.get(hash).is_some() {
                        continue;
                    }
                    if self.map.is_full() {
                        return Ok(());
                    }
                    self.map.insert_newest(hash, record.offset);
                }
            }
        }
        Ok(())
    }

    /// Step 3: rewrite every segment that starts below `end` into cleaned groups, merging
    /// neighbours while the group stays within the segment size and its offsets fit the index.
    fn rewrite(&mut self) -> Result<Vec<CleanedGroup>> {
        let end = self.end;
        let members: Vec<&SourceSegment> = self
            .job
            .sources
            .iter()
            .filter(|s| s.base_offset < end)
            .collect();
        let mut groups = Vec::new();
        let mut current: Option<CleanedGroup> = None;
        let mut i = 0;
        while i < members.len() {
            let source = members[i];
            if let Some(group) = &current
                && source.next_offset.0 - group.base_offset.0 > RELATIVE_OFFSET_SPAN
            {
                groups.push(current.take().expect("checked above"));
            }
            let group = match &mut current {
                Some(group) => group,
                None => current.insert(self.create_group(source.base_offset)?),
            };
            let member_start = group.segment.size;
            let saved = (self.stats, self.tombstone_due_ms, self.tombstones_held);
            match self.copy_member(source, group, member_start > 0)? {
                MemberCopy::Done => {
                    group.members.push(source.base_offset);
                    group.end_offset = source.next_offset;
                    i += 1;
                }
                MemberCopy::Overflow => {
                    // Undo the member's batches and redo it as the start of a new group. The
                    // keys it added to `keeper_keys` come back the same on the redo.
                    let bounds = ScanBounds {
                        next_offset_min: group.base_offset,
                        epoch_min: None,
                        batch_bytes_max: BATCH_BYTES_MAX,
                    };
                    group.segment.truncate_to_position(
                        member_start,
                        bounds,
                        self.job.settings.index_interval_bytes,
                    )?;
                    (self.stats, self.tombstone_due_ms, self.tombstones_held) = saved;
                    groups.push(current.take().expect("a group is open"));
                }
            }
        }
        groups.extend(current);
        // A cleaned segment left empty is folded into the one before it, which then covers
        // its range too: only the first segment of a log may be empty (it holds the log
        // start). Only a group started by the relative-offset bound can end up empty.
        let mut merged: Vec<CleanedGroup> = Vec::with_capacity(groups.len());
        for group in groups {
            match merged.last_mut() {
                Some(previous) if group.segment.is_empty() => {
                    let path = &group.segment.log_path;
                    self.job
                        .storage
                        .remove_file(path)
                        .map_err(|e| StorageError::io(path, e))?;
                    previous.members.extend(group.members);
                    previous.end_offset = group.end_offset;
                }
                _ => merged.push(group),
            }
        }
        Ok(merged)
    }

    fn create_group(&mut self, base_offset: Offset) -> Result<CleanedGroup> {
        let path = cleaned_path(&self.job.dir, base_offset);
        self.cleaned_paths.push(path.clone());
        let segment = Segment::create_at(
            &*self.job.storage,
            path,
            base_offset,
            self.job.settings.now_ms,
        )?;
        Ok(CleanedGroup {
            base_offset,
            end_offset: base_offset,
            members: Vec::new(),
            segment,
        })
    }

    /// Copies one old segment's surviving records into the group.
    fn copy_member(
        &mut self,
        source: &SourceSegment,
        group: &mut CleanedGroup,
        may_overflow: bool,
    ) -> Result<MemberCopy> {
        let settings = self.job.settings;
        let mut reader = BatchReader::new(source);
        while let Some((position, header, range)) = reader.next()? {
            self.check_cancelled()?;
            let outputs = self.filter_batch(source, position, &header, &reader.buf[range])?;
            for output in &outputs {
                let bytes: &[u8] = output;
                let size = group.segment.size + bytes.len() as u64;
                if may_overflow && size > u64::from(settings.segment_bytes_max) {
                    return Ok(MemberCopy::Overflow);
                }
                if size > u64::from(u32::MAX) {
                    return Err(StorageError::CompactionOverflow {
                        base_offset: source.base_offset,
                        reason: "take a cleaned segment past 4 GiB",
                    });
                }
                let out_header = batch::validate_crc(bytes)
                    .expect("a cleaned batch is whole and its CRC was just computed");
                debug_assert!(
                    matches!(output, std::borrow::Cow::Borrowed(_))
                        || batch::validate(bytes).is_ok(),
                    "a re-encoded batch passes full validation"
                );
                group
                    .segment
                    .append(bytes, &out_header, settings.index_interval_bytes)?;
            }
        }
        Ok(MemberCopy::Done)
    }

    /// The batches that replace one batch: itself unchanged when every record stays, nothing
    /// when none does, else one re-encoded batch per run of consecutive surviving offsets.
    fn filter_batch<'b>(
        &mut self,
        source: &SourceSegment,
        position: u64,
        header: &BatchHeader,
        bytes: &'b [u8],
    ) -> Result<Vec<std::borrow::Cow<'b, [u8]>>> {
        use std::borrow::Cow;
        if header.base_offset >= self.end {
            // Past what the map covers: nothing here can be superseded.
            self.stats.batches_copied += 1;
            return Ok(vec![Cow::Borrowed(bytes)]);
        }
        let settings = self.job.settings;
        let now = i64::try_from(settings.now_ms).unwrap_or(i64::MAX);
        let expiry = tombstone_expiry_ms(header, settings.delete_retention_ms);
        let expired = expiry <= now;
        let keep_last = header
            .producer_id
            .is_some_and(|id| self.producer_last_batches.get(&id) == Some(&header.base_offset));
        let records = decode(source, position, bytes)?;
        let mut keep = vec![true; records.len()];
        for (i, record) in records.iter().enumerate() {
            let Some(key) = &record.key else {
                // Records without a key are not compactable and stay as they are.
                continue;
            };
            if record.offset >= self.end {
                continue;
            }
            let hash = self.hasher.hash(key);
            let newest = self.map.get(hash);
            let superseded = newest.is_some_and(|n| n > record.offset);
            let tombstone = record.value.is_none();
            let droppable = tombstone
                && expired
                && newest == Some(record.offset)
                && !self.keeper_keys.contains(&hash);
            let last = i + 1 == records.len();
            if (superseded || droppable) && !(keep_last && last) {
                keep[i] = false;
                self.stats.records_removed += 1;
                if droppable {
                    self.stats.tombstones_removed += 1;
                }
                continue;
            }
            if superseded {
                // Kept only so its producer's last sequence survives (see STORAGE.md).
                self.keeper_keys.insert(hash);
                self.stats.producer_records_kept += 1;
            } else if tombstone {
                if !expired {
                    self.note_tombstone_due(expiry);
                } else if newest != Some(record.offset) {
                    // Expired, but not mapped (this pass did not look at the clean part's
                    // tombstones, or the map had no room): a pass can drop it now.
                    self.note_tombstone_due(now);
                } else {
                    // Expired and mapped, but held back by a record kept for its producer,
                    // or itself the end of its producer's last batch.
                    self.tombstones_held = true;
                }
            }
        }
        if keep.iter().all(|k| *k) {
            self.stats.batches_copied += 1;
            return Ok(vec![Cow::Borrowed(bytes)]);
        }
        let mut outputs = Vec::new();
        let mut run: Vec<usize> = Vec::new();
        for (i, kept) in keep.iter().enumerate() {
            let continues = run
                .last()
                .is_some_and(|&j| records[j].offset.plus(1) == records[i].offset);
            if *kept && (run.is_empty() || continues) {
                run.push(i);
                continue;
            }
            if !run.is_empty() {
                self.encode_runs(source, header, bytes, &records, &run, &mut outputs)?;
                run.clear();
            }
            if *kept {
                run.push(i);
            }
        }
        if !run.is_empty() {
            self.encode_runs(source, header, bytes, &records, &run, &mut outputs)?;
        }
        Ok(outputs.into_iter().map(Cow::Owned).collect())
    }

    fn note_tombstone_due(&mut self, due_ms: i64) {
        self.tombstone_due_ms = Some(self.tombstone_due_ms.map_or(due_ms, |t| t.min(due_ms)));
    }

    /// Encodes a run of records as one batch, or as several if one would exceed the log's
    /// batch limit (a batch on disk must pass the same bounds recovery checks).
    fn encode_runs(
        &mut self,
        source: &SourceSegment,
        header: &BatchHeader,
        original: &[u8],
        records: &[Record],
        run: &[usize],
        out: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        let encoded = encode_run(header, original, records, run)?;
        if encoded.len() as u64 <= u64::from(self.job.settings.batch_bytes_max) {
            self.stats.batches_rewritten += 1;
            out.push(encoded);
            return Ok(());
        }
        if run.len() == 1 {
            return Err(StorageError::CompactionOverflow {
                base_offset: source.base_offset,
                reason: "re-encode a record past the log's batch limit",
            });
        }
        let (left, right) = run.split_at(run.len() / 2);
        self.encode_runs(source, header, original, records, left, out)?;
        self.encode_runs(source, header, original, records, right, out)
    }
}

fn decode(source: &SourceSegment, position: u64, bytes: &[u8]) -> Result<Vec<Record>> {
    let corrupt = |reason: String| StorageError::Corrupt {
        path: source.log_path.clone(),
        position,
        reason,
    };
    RecordBatchRef::new(bytes)
        .and_then(|b| b.records())
        .map_err(|e| corrupt(e.to_string()))
}

/// Re-encodes records `run` (consecutive offsets) of a batch as a batch of their own: the
/// same codec, leader epoch, producer id and epoch and timestamp type; the base offset is
/// the first record's offset and the base sequence moves with it, so the batch's sequence
/// range still matches its offsets. Each record keeps its key, value, headers and timestamp.
fn encode_run(
    header: &BatchHeader,
    original: &[u8],
    records: &[Record],
    run: &[usize],
) -> Result<Vec<u8>> {
    let compression = header.compression()?;
    let mut builder = BatchBuilder::new(compression);
    for &i in run {
        let record = &records[i];
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        builder.push(
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
            record.timestamp,
        );
    }
    let mut out = builder.build();
    let first = records[run[0]].offset;
    batch::set_base_offset(&mut out, first);
    batch::set_partition_leader_epoch(&mut out, header.partition_leader_epoch);
    // Producer id, producer epoch and base sequence, as the producer wrote them.
    out[PRODUCER_ID_POSITION..RECORD_COUNT_POSITION]
        .copy_from_slice(&original[PRODUCER_ID_POSITION..RECORD_COUNT_POSITION]);
    if let Some(Sequence(base_sequence)) = header.base_sequence {
        let moved = (u64::from(base_sequence) + (first.0 - header.base_offset.0)) % SEQUENCE_SPAN;
        let moved = u32::try_from(moved).expect("below 2^31");
        out[BASE_SEQUENCE_POSITION..BASE_SEQUENCE_POSITION + 4]
            .copy_from_slice(&moved.to_be_bytes());
    }
    if header.timestamp_type() == TimestampType::LogAppendTime {
        // Every record of such a batch reads the batch's max timestamp; keep it.
        batch::set_log_append_time(&mut out, header.max_timestamp);
    }
    let crc = batch::compute_crc(&out);
    out[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

fn read_header(source: &SourceSegment, position: u64) -> Result<BatchHeader> {
    let corrupt = |reason: String| StorageError::Corrupt {
        path: source.log_path.clone(),
        position,
        reason,
    };
    if source.size - position < HEADER_BYTES as u64 {
        return Err(corrupt("a partial batch header ends the segment".into()));
    }
    let mut buf = [0u8; HEADER_BYTES];
    source
        .file
        .read_exact_at(&mut buf, position)
        .map_err(|e| StorageError::io(&source.log_path, e))?;
    let header = BatchHeader::parse(&buf).expect("a full header was read");
    header.check_sanity().map_err(|e| corrupt(e.to_string()))?;
    if position + header.total_bytes() > source.size {
        return Err(corrupt("batch runs past the end of the segment".into()));
    }
    Ok(header)
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `<base>.log`.
fn log_path(dir: &Path, base_offset: Offset) -> PathBuf {
    dir.join(format!("{}{LOG_SUFFIX}", segment::file_stem(base_offset)))
}

/// `<base>.log.cleaned`.
pub(crate) fn cleaned_path(dir: &Path, base_offset: Offset) -> PathBuf {
    suffixed(&log_path(dir, base_offset), CLEANED_SUFFIX)
}

/// `<base>.log.swap`.
fn swap_path(dir: &Path, base_offset: Offset) -> PathBuf {
    suffixed(&log_path(dir, base_offset), SWAP_SUFFIX)
}

/// The three files of the segment at `base_offset`.
fn segment_files(dir: &Path, base_offset: Offset) -> [PathBuf; 3] {
    let stem = segment::file_stem(base_offset);
    [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX].map(|suffix| dir.join(format!("{stem}{suffix}")))
}

/// The body of the commit record: which cleaned segment replaces which range.
fn encode_commit(groups: &[(Offset, Offset)]) -> Vec<u8> {
    let mut body = vec![COMMIT_VERSION];
    body.extend_from_slice(&(groups.len() as u32).to_be_bytes());
    for (base, end) in groups {
        body.extend_from_slice(&base.0.to_be_bytes());
        body.extend_from_slice(&end.0.to_be_bytes());
    }
    body
}

fn decode_commit(body: &[u8]) -> Option<Vec<(Offset, Offset)>> {
    let (&version, rest) = body.split_first()?;
    if version != COMMIT_VERSION || rest.len() < 4 {
        return None;
    }
    let count = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let entries = &rest[4..];
    if entries.len() != count.checked_mul(COMMIT_ENTRY_BYTES)? {
        return None;
    }
    let groups: Vec<(Offset, Offset)> = entries
        .chunks_exact(COMMIT_ENTRY_BYTES)
        .map(|c| {
            (
                Offset(u64::from_be_bytes(c[..8].try_into().expect("8 bytes"))),
                Offset(u64::from_be_bytes(c[8..].try_into().expect("8 bytes"))),
            )
        })
        .collect();
    let ordered = groups
        .windows(2)
        .all(|w| w[0].0 < w[0].1 && w[0].1 <= w[1].0);
    ordered.then_some(groups)
}

/// Writes the cleaner checkpoint atomically and durably. Blocks on fsyncs.
pub(crate) fn write_cleaner_checkpoint(
    storage: &dyn Storage,
    dir: &Path,
    first_dirty: Offset,
) -> Result<()> {
    let mut body = vec![CLEANER_CHECKPOINT_VERSION];
    body.extend_from_slice(&first_dirty.0.to_be_bytes());
    checkpoint::write_atomic(storage, &dir.join(CLEANER_CHECKPOINT), &body)
}

/// Reads the cleaner checkpoint; `None` if missing or damaged (then the whole log is dirty).
pub(crate) fn read_cleaner_checkpoint(storage: &dyn Storage, dir: &Path) -> Result<Option<Offset>> {
    let Some(body) = checkpoint::read(storage, &dir.join(CLEANER_CHECKPOINT))? else {
        return Ok(None);
    };
    match body.as_slice() {
        [CLEANER_CHECKPOINT_VERSION, rest @ ..] if rest.len() == 8 => Ok(Some(Offset(
            u64::from_be_bytes(rest.try_into().expect("8 bytes")),
        ))),
        _ => Ok(None),
    }
}

/// Where a swap failed: before its commit point nothing on disk changed that recovery would
/// keep; after it, recovery finishes the swap, and the log must be reopened.
#[derive(Debug)]
pub(crate) enum SwapError {
    BeforeCommit(StorageError),
    AfterCommit(StorageError),
}

/// Swaps cleaned groups in for the old segments they replace. The commit point is the durable
/// commit record (step 2); STORAGE.md (*Compaction*) walks through a crash at every step.
/// Blocks on fsyncs of the directory and of the small commit record.
pub(crate) fn swap_in(
    storage: &dyn Storage,
    dir: &Path,
    groups: &[CleanedGroup],
) -> std::result::Result<(), SwapError> {
    let io = |path: &Path, e| StorageError::io(path, e);
    // 1. `.cleaned` → `.swap`. A crash from here to the commit leaves `.swap` files that no
    //    commit record names: the next open removes them and keeps the old segments.
    for group in groups {
        let from = cleaned_path(dir, group.base_offset);
        let to = swap_path(dir, group.base_offset);
        storage
            .rename(&from, &to)
            .map_err(|e| SwapError::BeforeCommit(io(&from, e)))?;
    }
    // 2. The commit record: written to a temporary file, fsynced, renamed and the directory
    //    fsynced, which also makes step 1's renames durable (a journaling file system applies
    //    directory operations in order). Once it is durable the swap is decided: recovery
    //    finishes it from the record.
    let ranges: Vec<(Offset, Offset)> = groups
        .iter()
        .map(|g| (g.base_offset, g.end_offset))
        .collect();
    checkpoint::write_atomic(
        storage,
        &dir.join(COMPACTION_COMMIT),
        &encode_commit(&ranges),
    )
    .map_err(SwapError::AfterCommit)?;
    let after = SwapError::AfterCommit;
    // 3. The old segments' files → `.deleted`. A crash here: recovery finds the `.swap`
    //    files and the record, removes what is left of the old segments, renames the swaps.
    let mut deleted = Vec::new();
    for group in groups {
        for base in &group.members {
            for path in segment_files(dir, *base) {
                if storage.exists(&path) {
                    let to = suffixed(&path, DELETED_SUFFIX);
                    storage
                        .rename(&path, &to)
                        .map_err(|e| after(io(&path, e)))?;
                    deleted.push(to);
                }
            }
        }
    }
    // 4. `.swap` → `.log`: the cleaned segments take their final names.
    for group in groups {
        let from = swap_path(dir, group.base_offset);
        let to = log_path(dir, group.base_offset);
        storage
            .rename(&from, &to)
            .map_err(|e| after(io(&from, e)))?;
    }
    // 5. Make steps 3 and 4 durable. A crash before: recovery redoes them from the record.
    storage.sync_dir(dir).map_err(|e| after(io(dir, e)))?;
    // 6. Remove the replaced files and the record. A crash here: recovery removes `.deleted`
    //    files and a record whose swaps are all done.
    for path in &deleted {
        storage.remove_file(path).map_err(|e| after(io(path, e)))?;
    }
    let record = dir.join(COMPACTION_COMMIT);
    storage
        .remove_file(&record)
        .map_err(|e| after(io(&record, e)))?;
    storage.sync_dir(dir).map_err(|e| after(io(dir, e)))
}

/// Removes the `.cleaned` files of a job whose output is not swapped in. Best effort, no fsync:
/// a file that survives a crash is removed at the next open.
pub(crate) fn discard(storage: &dyn Storage, paths: &[PathBuf]) {
    for path in paths {
        if storage.exists(path)
            && let Err(error) = storage.remove_file(path)
        {
            tracing::warn!(path = %path.display(), %error, "could not remove a discarded cleaned segment");
        }
    }
}

/// At open, before segments are listed: finishes a committed swap, and removes whatever an
/// unfinished compaction left (`.cleaned`, uncommitted `.swap`, `.deleted`). Returns whether
/// anything was found. Blocks on directory fsyncs.
pub(crate) fn recover(storage: &dyn Storage, dir: &Path) -> Result<bool> {
    let io = |path: &Path, e| StorageError::io(path, e);
    let record = dir.join(COMPACTION_COMMIT);
    let committed = match checkpoint::read(storage, &record)? {
        Some(body) => decode_commit(&body),
        None => None,
    };
    let mut found = storage.exists(&record);
    if found && committed.is_none() {
        // The record is written whole before its name appears, so this is damage on the
        // medium; its swap cannot be finished and is undone below.
        tracing::error!(path = %record.display(), "unreadable compaction commit record ignored");
    }
    if let Some(groups) = &committed {
        let names = storage.list_dir(dir).map_err(|e| io(dir, e))?;
        for &(base, end) in groups {
            let swap = swap_path(dir, base);
            if !storage.exists(&swap) {
                // Renamed to its final name before the crash (steps 3 and 4 were durable).
                continue;
            }
            // Remove every file of the old segments it replaces, then rename it.
            for name in &names {
                let old = [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX]
                    .iter()
                    .filter_map(|suffix| segment::parse_file_name(name, suffix))
                    .any(|b| b >= base && b < end);
                if old {
                    let path = dir.join(name);
                    storage.remove_file(&path).map_err(|e| io(&path, e))?;
                }
            }
            let to = log_path(dir, base);
            storage.rename(&swap, &to).map_err(|e| io(&swap, e))?;
            tracing::warn!(dir = %dir.display(), base_offset = base.0, end_offset = end.0, "finished a committed compaction swap");
        }
        // The swaps are in place before the record goes.
        storage.sync_dir(dir).map_err(|e| io(dir, e))?;
    }
    let names = storage.list_dir(dir).map_err(|e| io(dir, e))?;
    for name in &names {
        let leftover = [CLEANED_SUFFIX, SWAP_SUFFIX, DELETED_SUFFIX]
            .iter()
            .any(|suffix| name.ends_with(suffix));
        if leftover {
            // `.cleaned`: never committed. `.swap`: no record names it, so it was never
            // committed either. `.deleted`: a replaced file of a finished swap.
            found = true;
            let path = dir.join(name);
            storage.remove_file(&path).map_err(|e| io(&path, e))?;
        }
    }
    if storage.exists(&record) {
        storage.remove_file(&record).map_err(|e| io(&record, e))?;
    }
    if found {
        storage.sync_dir(dir).map_err(|e| io(dir, e))?;
    }
    Ok(found)
}
