//! `LogStore`: openraft's `RaftLogStorage` over the `Storage` trait. One file of entries
//! (`raft.log`) and three small state files (`vote`, `committed`, `purged`) in the member's
//! Raft directory.
//!
//! Owns: the log file and the state files (one `LogStore` per directory, owned by the Raft
//! core task). Shares: the decoded entries past the purge point, in memory, with its
//! `LogReader`s (openraft's replication tasks), behind a lock held for a copy, never across
//! an `.await`. The metadata log is small: the snapshot policy keeps it to a few thousand
//! entries of about a KiB, so entries are decoded once at open and served from memory.
//!
//! Every write happens on the blocking pool and is durable before the call returns: an
//! append's `LogFlushed` callback fires only after its fsync, a vote or committed id is
//! acknowledged only after its atomic rename is synced. openraft 0.9 waits for each append's
//! callback before its next storage call, so writes never overlap.
//!
//! # Crash analysis (each step also says it where it happens)
//! - Append: frames are written after the last durable one, then fsynced. A crash before the
//!   fsync leaves a prefix, torn or zeroed pages; open cuts at the first frame that is short,
//!   over `ENTRY_BYTES_MAX` or fails its CRC, and nothing behind the cut was acknowledged.
//! - Truncate (a conflicting suffix): the file is cut and fsynced before the call returns and
//!   before anything new is written, so stale bytes never sit between new ones. A crash
//!   before that fsync brings the suffix back: openraft was never told it was gone, and the
//!   leader truncates it again.
//! - Purge (after a snapshot): the purge point is written (atomically) first; then the
//!   entries below it are forgotten in memory and, when they are most of the file, the file
//!   is rewritten without them (new file, fsync, rename, directory fsync). Open skips
//!   entries at or below the purge point, so a crash between any two steps finds either the
//!   old file with dead entries or the new one, and the same log either way. A purge past
//!   the last entry (a snapshot installed on a node far behind) empties the file at once, so
//!   the next append never leaves a hole of dead indexes in it.
//! - Vote, committed and purge point: `checkpoint::write_atomic` (temporary file, fsync,
//!   rename, directory fsync): after a crash the old file or the new one, whole. A state file
//!   that exists but fails its CRC is refused as corrupt rather than taken as missing: a lost
//!   vote could vote twice in one term.
//! - A failed write or fsync poisons the store: nothing more is written or acknowledged, and
//!   openraft stops the node; reopening recovers from what the disk holds.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError,
    Vote,
};
use tokio::sync::watch;
use vltava_messages::limits::FRAME_BYTES_MAX;
use vltava_storage::checkpoint;
use vltava_storage::fs::{Storage, StorageFile};

use super::codec::{
    self, DecodeError, ENTRY_BYTES_MAX, ENTRY_FIXED_BYTES, FRAME_HEADER_BYTES, LOG_MAGIC,
};
use super::{RaftNodeId, RaftStoreError, TypeConfig};

/// The log file's name in the Raft directory.
pub const LOG_FILE: &str = "raft.log";
/// The vote's file.
pub const VOTE_FILE: &str = "vote";
/// The last committed log id's file.
pub const COMMITTED_FILE: &str = "committed";
/// The purge point's file: entries at or below it are gone (in a snapshot).
pub const PURGED_FILE: &str = "purged";
/// Where a log without its purged head is written before it replaces `raft.log`.
const REWRITE_FILE: &str = "raft.log.rewrite";

/// The most entry bytes one replication read returns (at least one entry, whatever its
/// size): one AppendEntries must fit one peer frame, whatever `max_payload_entries` says.
pub const LOG_READ_BYTES_MAX: u64 = 4 << 20;
const _: () = assert!(ENTRY_BYTES_MAX as u64 <= LOG_READ_BYTES_MAX);
// Half a frame leaves room for the request's own fields and their encoding's overhead.
const _: () = assert!(2 * LOG_READ_BYTES_MAX <= FRAME_BYTES_MAX as u64);

/// Purged bytes at the head of the file before it is rewritten without them. Rewriting
/// copies the live entries, so it waits until the dead ones are at least as many bytes as the
/// live ones (each byte is copied at most once on average) and at least this many (a small
/// log is not rewritten after every snapshot).
pub const REWRITE_DEAD_BYTES_MIN: u64 = 1 << 20;

/// The copy buffer of a rewrite: bounds its memory whatever the log's size.
const REWRITE_CHUNK_BYTES: usize = 1 << 20;

const LOG_HEADER_BYTES: u64 = LOG_MAGIC.len() as u64;

/// What opening the log found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogRecovery {
    /// Bytes cut off a torn or corrupt tail (never an acknowledged entry unless the disk
    /// damaged fsynced data).
    pub bytes_cut: u64,
    /// Why the tail was cut, if it was.
    pub cut_reason: Option<&'static str>,
    /// Entries past the purge point, now served.
    pub live_entries: usize,
    /// Entries at or below the purge point still in the file, skipped.
    pub dead_entries: usize,
    /// Whether the committed log id on disk ran past the log and was lowered to its end.
    pub committed_lowered: bool,
}

#[derive(Debug)]
struct StoredEntry {
    entry: Entry<TypeConfig>,
    /// Where its frame starts in the log file.
    position: u64,
    frame_bytes: u64,
}

impl StoredEntry {
    fn index(&self) -> u64 {
        self.entry.log_id.index
    }
}

/// The entries past the purge point, shared by the store and its readers.
#[derive(Debug, Default)]
struct LogMemory {
    /// Consecutive indexes.
    entries: VecDeque<StoredEntry>,
    purged: Option<LogId<RaftNodeId>>,
}

impl LogMemory {
    fn last_log_id(&self) -> Option<LogId<RaftNodeId>> {
        self.entries
            .back()
            .map(|stored| stored.entry.log_id)
            .or(self.purged)
    }

    /// Slots of `range` among the entries held.
    fn slots(&self, range: &impl RangeBounds<u64>) -> std::ops::Range<usize> {
        let Some(first) = self.entries.front().map(StoredEntry::index) else {
            return 0..0;
        };
        let end_index = first + self.entries.len() as u64;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(first);
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        }
        .min(end_index);
        if start >= end {
            return 0..0;
        }
        (start - first) as usize..(end - first) as usize
    }

    fn read(&self, range: &impl RangeBounds<u64>) -> Vec<Entry<TypeConfig>> {
        self.entries
            .range(self.slots(range))
            .map(|stored| stored.entry.clone())
            .collect()
    }

    /// Like `read`, but stops before `LOG_READ_BYTES_MAX` (after the first entry).
    fn read_limited(&self, range: &impl RangeBounds<u64>) -> Vec<Entry<TypeConfig>> {
        let mut bytes = 0;
        let mut out = Vec::new();
        for stored in self.entries.range(self.slots(range)) {
            bytes += stored.frame_bytes;
            if !out.is_empty() && bytes > LOG_READ_BYTES_MAX {
                break;
            }
            out.push(stored.entry.clone());
        }
        out
    }
}

fn read_lock(memory: &RwLock<LogMemory>) -> RwLockReadGuard<'_, LogMemory> {
    // A panic under the lock leaves plain data behind (the writers only push and pop), so the
    // data is still the log.
    memory.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock(memory: &RwLock<LogMemory>) -> RwLockWriteGuard<'_, LogMemory> {
    memory.write().unwrap_or_else(PoisonError::into_inner)
}

/// The files, touched only on the blocking pool.
#[derive(Debug)]
struct LogFiles {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    log_path: PathBuf,
    file: Arc<dyn StorageFile>,
    /// Bytes of the log file in use: the header and every intact frame.
    end: u64,
    rewrite_dead_bytes_min: u64,
}

struct Opened {
    files: LogFiles,
    memory: LogMemory,
    vote: Option<Vote<RaftNodeId>>,
    committed: Option<LogId<RaftNodeId>>,
    recovery: LogRecovery,
}

fn read_state<T>(
    storage: &dyn Storage,
    path: &Path,
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
) -> Result<Option<T>, RaftStoreError> {
    match checkpoint::read(storage, path)? {
        Some(body) => decode(&body).map(Some).map_err(|e| e.at(path, 0)),
        // Written whole by an atomic rename: a bad CRC is damage, never a crash.
        None if storage.exists(path) => Err(RaftStoreError::Corrupt {
            path: path.to_path_buf(),
            position: 0,
            reason: "state file fails its checksum",
        }),
        None => Ok(None),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(checkpoint::TEMP_SUFFIX);
    PathBuf::from(name)
}

impl LogFiles {
    fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<Opened, RaftStoreError> {
        storage
            .create_dir_all(dir)
            .map_err(|e| RaftStoreError::io(dir, e))?;
        // Leftovers of writes a crash interrupted: the real files never depend on them.
        for leftover in [
            temp_path(&dir.join(VOTE_FILE)),
            temp_path(&dir.join(COMMITTED_FILE)),
            temp_path(&dir.join(PURGED_FILE)),
            dir.join(REWRITE_FILE),
        ] {
            if storage.exists(&leftover) {
                storage
                    .remove_file(&leftover)
                    .map_err(|e| RaftStoreError::io(&leftover, e))?;
            }
        }
        let vote = read_state(&*storage, &dir.join(VOTE_FILE), codec::decode_vote)?;
        let mut committed = read_state(&*storage, &dir.join(COMMITTED_FILE), |b| {
            codec::decode_log_id_file(b, "committed file")
        })?
        .flatten();
        let purged = read_state(&*storage, &dir.join(PURGED_FILE), |b| {
            codec::decode_log_id_file(b, "purged file")
        })?
        .flatten();

        let log_path = dir.join(LOG_FILE);
        let file = open_log_file(&*storage, dir, &log_path)?;
        let mut files = LogFiles {
            storage,
            dir: dir.to_path_buf(),
            log_path,
            file,
            end: LOG_HEADER_BYTES,
            rewrite_dead_bytes_min: REWRITE_DEAD_BYTES_MIN,
        };
        let mut recovery = LogRecovery::default();
        let mut entries = files.scan(&mut recovery)?;

        let mut dead = 0;
        if let Some(purged) = purged {
            if let Some(first) = entries.front()
                && first.index() > purged.index + 1
            {
                return Err(RaftStoreError::Corrupt {
                    path: files.log_path.clone(),
                    position: first.position,
                    reason: "the log starts after its purge point: entries are missing",
                });
            }
            dead = entries
                .iter()
                .take_while(|stored| stored.index() <= purged.index)
                .count();
        }
        let live = entries.split_off(dead);
        if let (Some(purged), Some(first)) = (purged, live.front())
            && first.entry.log_id.leader_id.term < purged.leader_id.term
        {
            return Err(RaftStoreError::Corrupt {
                path: files.log_path.clone(),
                position: first.position,
                reason: "the first entry after the purge point has an older term",
            });
        }
        if live.is_empty() && files.end > LOG_HEADER_BYTES {
            // Only dead entries: empty the file, so that the next append, which continues
            // from the purge point, sits right after the header.
            files.truncate(LOG_HEADER_BYTES)?;
        }
        recovery.live_entries = live.len();
        recovery.dead_entries = dead;

        let memory = LogMemory {
            entries: live,
            purged,
        };
        let last_index = memory.last_log_id().map(|id| id.index);
        if committed.map(|id| id.index) > last_index {
            // Only damage (a cut tail of fsynced entries) gets here: a committed id is saved
            // after its entries are durable. A lower committed id is always safe; the leader
            // tells it again.
            tracing::warn!(
                dir = %dir.display(),
                ?committed,
                ?last_index,
                "committed log id past the end of the log; lowering it"
            );
            committed = memory.last_log_id();
            recovery.committed_lowered = true;
        }
        Ok(Opened {
            files,
            memory,
            vote,
            committed,
            recovery,
        })
    }

    /// Reads every intact frame and cuts the file after the last one.
    fn scan(
        &mut self,
        recovery: &mut LogRecovery,
    ) -> Result<VecDeque<StoredEntry>, RaftStoreError> {
        let path = self.log_path.clone();
        let io = |e| RaftStoreError::io(&path, e);
        let len = self.file.byte_len().map_err(io)?;
        let mut entries: VecDeque<StoredEntry> = VecDeque::new();
        let mut position = LOG_HEADER_BYTES;
        let mut cut_reason = None;
        let mut body = Vec::new();
        while position < len {
            if len - position < FRAME_HEADER_BYTES as u64 {
                cut_reason = Some("torn frame header");
                break;
            }
            let mut header = [0u8; FRAME_HEADER_BYTES];
            self.file.read_exact_at(&mut header, position).map_err(io)?;
            let body_len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
            let crc = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
            // Zeroed pages (unsynced appends after a power loss) read as length 0.
            if (body_len as usize) < ENTRY_FIXED_BYTES || body_len > ENTRY_BYTES_MAX {
                cut_reason = Some("frame length out of bounds");
                break;
            }
            let frame_bytes = FRAME_HEADER_BYTES as u64 + u64::from(body_len);
            if len - position < frame_bytes {
                cut_reason = Some("frame runs past the end of the file");
                break;
            }
            body.clear();
            self.file
                .read_exact_at_into(
                    &mut body,
                    body_len as usize,
                    position + FRAME_HEADER_BYTES as u64,
                )
                .map_err(io)?;
            if crc32c::crc32c(&body) != crc {
                cut_reason = Some("frame checksum mismatch");
                break;
            }
            // Past its CRC the frame was written whole: what does not decode is a newer
            // build's (refused as such) or damage (refused), never a torn write to cut.
            let entry = codec::decode_entry(&body).map_err(|e| e.at(&path, position))?;
            if let Some(previous) = entries.back() {
                if entry.log_id.index != previous.index() + 1 {
                    return Err(RaftStoreError::Corrupt {
                        path,
                        position,
                        reason: "entry index does not follow the entry before it",
                    });
                }
                if entry.log_id.leader_id.term < previous.entry.log_id.leader_id.term {
                    return Err(RaftStoreError::Corrupt {
                        path,
                        position,
                        reason: "entry term is older than the entry before it",
                    });
                }
            }
            entries.push_back(StoredEntry {
                entry,
                position,
                frame_bytes,
            });
            position += frame_bytes;
        }
        self.end = position;
        if position < len {
            tracing::warn!(
                path = %path.display(),
                position,
                bytes_cut = len - position,
                reason = cut_reason.unwrap_or("unknown"),
                "cut a torn or corrupt tail off the Raft log"
            );
            recovery.bytes_cut = len - position;
            recovery.cut_reason = cut_reason;
            self.file.set_len(position).map_err(io)?;
            // Crash here: the cut may not be durable; the next open finds the same bytes and
            // cuts them again. Nothing is appended before this fsync returns.
            self.file.sync_data().map_err(io)?;
        }
        Ok(entries)
    }

    /// Writes frames after the last one and makes them durable. Blocks on an fsync.
    fn append(&mut self, frames: &[u8]) -> Result<u64, RaftStoreError> {
        let start = self.end;
        self.file
            .write_at(frames, start)
            .map_err(|e| RaftStoreError::io(&self.log_path, e))?;
        // Crash here: some of the frames may be on disk, torn or as zeros; open cuts them,
        // and none was acknowledged.
        self.file
            .sync_data()
            .map_err(|e| RaftStoreError::io(&self.log_path, e))?;
        // Durable: now the flush callback may fire.
        self.end += frames.len() as u64;
        Ok(start)
    }

    /// Cuts the file at `position` durably. Blocks on an fsync.
    fn truncate(&mut self, position: u64) -> Result<(), RaftStoreError> {
        assert!(
            (LOG_HEADER_BYTES..=self.end).contains(&position),
            "a truncation point is a frame boundary inside the log"
        );
        self.file
            .set_len(position)
            .map_err(|e| RaftStoreError::io(&self.log_path, e))?;
        // Crash here: the cut may be lost and the entries behind it come back at open. They
        // were the log's before, openraft was not told they are gone, and the leader cuts
        // them again. Nothing new is written behind the cut before this fsync returns, so
        // stale bytes never sit between new ones.
        self.file
            .sync_data()
            .map_err(|e| RaftStoreError::io(&self.log_path, e))?;
        self.end = position;
        Ok(())
    }

    /// Writes a new log file holding the frames from `keep_from` on and puts it in place of
    /// the old one. Blocks on two fsyncs.
    fn rewrite(&mut self, keep_from: u64) -> Result<(), RaftStoreError> {
        assert!(
            (LOG_HEADER_BYTES..=self.end).contains(&keep_from),
            "a rewrite keeps a suffix of the log"
        );
        let temp = self.dir.join(REWRITE_FILE);
        let temp_io = |e| RaftStoreError::io(&temp, e);
        if self.storage.exists(&temp) {
            self.storage.remove_file(&temp).map_err(temp_io)?;
        }
        let new = self.storage.open(&temp, true).map_err(temp_io)?;
        new.write_at(&LOG_MAGIC, 0).map_err(temp_io)?;
        let mut buffer = Vec::with_capacity(REWRITE_CHUNK_BYTES);
        let mut from = keep_from;
        while from < self.end {
            let n = ((self.end - from) as usize).min(REWRITE_CHUNK_BYTES);
            buffer.clear();
            self.file
                .read_exact_at_into(&mut buffer, n, from)
                .map_err(|e| RaftStoreError::io(&self.log_path, e))?;
            new.write_at(&buffer, LOG_HEADER_BYTES + (from - keep_from))
                .map_err(temp_io)?;
            from += n as u64;
        }
        new.sync_data().map_err(temp_io)?;
        // Crash here: `raft.log` is untouched and the rewrite file is a leftover that open
        // removes.
        self.storage
            .rename(&temp, &self.log_path)
            .map_err(|e| RaftStoreError::io(&self.log_path, e))?;
        // Crash here: the rename may not be durable. Either file is a whole log that agrees
        // with the purge point, which is durable already: the old one only holds more dead
        // entries, which open skips.
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| RaftStoreError::io(&self.dir, e))?;
        self.file = new;
        self.end = LOG_HEADER_BYTES + (self.end - keep_from);
        Ok(())
    }

    /// Writes a state file atomically and durably. Blocks on two fsyncs.
    fn save_state(&self, name: &str, body: &[u8]) -> Result<(), RaftStoreError> {
        checkpoint::write_atomic(&*self.storage, &self.dir.join(name), body)?;
        Ok(())
    }
}

/// Opens the log file, creating it (with its header, durably) if it is missing.
fn open_log_file(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
) -> Result<Arc<dyn StorageFile>, RaftStoreError> {
    let io = |e| RaftStoreError::io(path, e);
    let existed = storage.exists(path);
    let file = storage.open(path, true).map_err(io)?;
    if existed {
        let len = file.byte_len().map_err(io)?;
        let mut head = vec![0u8; len.min(LOG_HEADER_BYTES) as usize];
        file.read_exact_at(&mut head, 0).map_err(io)?;
        if head == LOG_MAGIC {
            return Ok(file);
        }
        // A creation torn by a crash leaves at most the header's length, as zeros or part of
        // the magic: nothing is written after the header before the header is durable.
        let torn_creation = len <= LOG_HEADER_BYTES
            && (head.iter().all(|b| *b == 0) || LOG_MAGIC.starts_with(&head));
        if !torn_creation {
            return Err(RaftStoreError::Corrupt {
                path: path.to_path_buf(),
                position: 0,
                reason: "not a Raft log file (bad magic)",
            });
        }
        file.set_len(0).map_err(io)?;
    }
    file.write_at(&LOG_MAGIC, 0).map_err(io)?;
    // Crash here: an empty, zeroed or partial header, which the next open rewrites.
    file.sync_data().map_err(io)?;
    // Crash here: the file may not be linked yet; the next open creates it again.
    storage
        .sync_dir(dir)
        .map_err(|e| RaftStoreError::io(dir, e))?;
    Ok(file)
}

/// openraft's log storage for one member. Opened with [`LogStore::open`]; owned by the Raft
/// core task once handed to `Raft::new`.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    /// `None` while a blocking task holds the files, and for good after one failed.
    files: Option<LogFiles>,
    poisoned: bool,
    memory: Arc<RwLock<LogMemory>>,
    vote: Option<Vote<RaftNodeId>>,
    committed: Option<LogId<RaftNodeId>>,
    /// `committed`, published after each durable save for readers outside the Raft task (the
    /// node's DescribeCluster and admin views): openraft 0.9's metrics carry the last applied
    /// entry but not the commit index.
    committed_watch: watch::Sender<Option<LogId<RaftNodeId>>>,
    recovery: LogRecovery,
}

/// A reader of the log for openraft's replication tasks: sees what the store appended, in
/// memory, without touching files.
#[derive(Clone, Debug)]
pub struct LogReader {
    memory: Arc<RwLock<LogMemory>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, cutting a torn tail. Blocks on I/O: call it off the
    /// runtime's workers. Refuses (rather than cuts) data that passed its checksum but does not
    /// decode, and anything written by a newer build (`UnsupportedVersion`).
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<LogStore, RaftStoreError> {
        let opened = LogFiles::open(storage, dir)?;
        Ok(LogStore {
            dir: dir.to_path_buf(),
            files: Some(opened.files),
            poisoned: false,
            memory: Arc::new(RwLock::new(opened.memory)),
            vote: opened.vote,
            committed: opened.committed,
            committed_watch: watch::Sender::new(opened.committed),
            recovery: opened.recovery,
        })
    }

    /// The last durable committed log id, as it changes. Reading it never waits for the Raft
    /// task, which owns the store.
    #[must_use]
    pub fn subscribe_committed(&self) -> watch::Receiver<Option<LogId<RaftNodeId>>> {
        self.committed_watch.subscribe()
    }

    /// What open found and repaired.
    #[must_use]
    pub fn recovery(&self) -> &LogRecovery {
        &self.recovery
    }

    /// The last durable vote.
    #[must_use]
    pub fn vote(&self) -> Option<Vote<RaftNodeId>> {
        self.vote
    }

    /// The last durable committed log id.
    #[must_use]
    pub fn committed(&self) -> Option<LogId<RaftNodeId>> {
        self.committed
    }

    /// The purge point and every entry past it, in order.
    #[must_use]
    pub fn entries(&self) -> (Option<LogId<RaftNodeId>>, Vec<Entry<TypeConfig>>) {
        let memory = read_lock(&self.memory);
        (memory.purged, memory.read(&(..)))
    }

    /// Lowers the size at which purged bytes get the file rewritten, so tests reach rewrites
    /// with small logs.
    #[cfg(test)]
    pub(crate) fn set_rewrite_dead_bytes_min(&mut self, bytes: u64) {
        if let Some(files) = self.files.as_mut() {
            files.rewrite_dead_bytes_min = bytes;
        }
    }

    /// Runs `op` on the files on the blocking pool. Any failure poisons the store.
    async fn blocking<T: Send + 'static>(
        &mut self,
        op: impl FnOnce(&mut LogFiles) -> Result<T, RaftStoreError> + Send + 'static,
    ) -> Result<T, RaftStoreError> {
        let poisoned = || RaftStoreError::Poisoned {
            dir: self.dir.clone(),
        };
        if self.poisoned {
            return Err(poisoned());
        }
        let mut files = self.files.take().ok_or_else(poisoned)?;
        let outcome = tokio::task::spawn_blocking(move || {
            let result = op(&mut files);
            (files, result)
        })
        .await;
        match outcome {
            Ok((files, result)) => {
                self.files = Some(files);
                if result.is_err() {
                    // After a failed write or fsync the page cache may hold bytes the disk
                    // never gets; never retry, never acknowledge more.
                    self.poisoned = true;
                }
                result
            }
            Err(join) => {
                self.poisoned = true;
                Err(RaftStoreError::Task(join))
            }
        }
    }

    /// Appends entries durably: when this returns `Ok`, they are fsynced and readable. The
    /// `RaftLogStorage::append` callback fires exactly then.
    pub async fn append_entries(
        &mut self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<(), RaftStoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut expected = {
            let memory = read_lock(&self.memory);
            memory
                .entries
                .back()
                .map(|s| s.index() + 1)
                .or(memory.purged.map(|p| p.index + 1))
        };
        let mut frames = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for entry in &entries {
            assert!(
                expected.is_none_or(|index| index == entry.log_id.index),
                "openraft appends without holes: expected index {expected:?}, got {}",
                entry.log_id.index
            );
            expected = Some(entry.log_id.index + 1);
            let body = codec::encode_entry(entry);
            if body.len() > ENTRY_BYTES_MAX as usize {
                return Err(RaftStoreError::EntryTooLarge {
                    index: entry.log_id.index,
                    bytes: body.len() as u64,
                    max: ENTRY_BYTES_MAX,
                });
            }
            let offset = frames.len() as u64;
            codec::frame(&body, &mut frames);
            offsets.push((offset, frames.len() as u64 - offset));
        }
        let start = self.blocking(move |files| files.append(&frames)).await?;
        let mut memory = write_lock(&self.memory);
        for (entry, (offset, frame_bytes)) in entries.into_iter().zip(offsets) {
            memory.entries.push_back(StoredEntry {
                entry,
                position: start + offset,
                frame_bytes,
            });
        }
        Ok(())
    }

    /// Removes the entries from `since` on, durably.
    pub async fn truncate_since(&mut self, since: u64) -> Result<(), RaftStoreError> {
        let position = {
            let memory = read_lock(&self.memory);
            assert!(
                memory.purged.is_none_or(|p| since > p.index),
                "openraft never truncates purged (committed) entries"
            );
            let slots = memory.slots(&(since..));
            if slots.is_empty() {
                return Ok(());
            }
            memory.entries[slots.start].position
        };
        self.blocking(move |files| files.truncate(position)).await?;
        let mut memory = write_lock(&self.memory);
        let keep = memory.slots(&(..since)).end;
        memory.entries.truncate(keep);
        Ok(())
    }

    /// Forgets the entries up to `upto` (now in a snapshot): the purge point is durable first.
    pub async fn purge_upto(&mut self, upto: LogId<RaftNodeId>) -> Result<(), RaftStoreError> {
        if read_lock(&self.memory).purged >= Some(upto) {
            return Ok(());
        }
        let body = codec::encode_log_id_file(Some(&upto));
        self.blocking(move |files| files.save_state(PURGED_FILE, &body))
            .await?;
        // The purge point is durable: from here on open skips what it covers.
        let (keep_from, live_bytes) = {
            let mut memory = write_lock(&self.memory);
            memory.purged = Some(upto);
            let dead = memory.slots(&(..=upto.index)).end;
            memory.entries.drain(..dead);
            let keep_from = memory.entries.front().map(|s| s.position);
            let live_bytes = memory.entries.iter().map(|s| s.frame_bytes).sum::<u64>();
            (keep_from, live_bytes)
        };
        let files = self
            .files
            .as_ref()
            .ok_or_else(|| RaftStoreError::Poisoned {
                dir: self.dir.clone(),
            })?;
        match keep_from {
            // Nothing live: empty the file, so the next append follows the header.
            None if files.end > LOG_HEADER_BYTES => {
                self.blocking(|files| files.truncate(LOG_HEADER_BYTES))
                    .await?;
            }
            None => {}
            Some(keep_from) => {
                let dead_bytes = keep_from - LOG_HEADER_BYTES;
                if dead_bytes >= live_bytes && dead_bytes >= files.rewrite_dead_bytes_min {
                    self.blocking(move |files| files.rewrite(keep_from)).await?;
                    let mut memory = write_lock(&self.memory);
                    for stored in &mut memory.entries {
                        stored.position -= dead_bytes;
                    }
                }
            }
        }
        Ok(())
    }

    /// Saves the vote durably. It never goes back.
    pub async fn save_vote_durably(
        &mut self,
        vote: Vote<RaftNodeId>,
    ) -> Result<(), RaftStoreError> {
        if let Some(current) = self.vote {
            assert!(
                vote >= current,
                "openraft only saves a vote at least as new as the last: {vote} after {current}"
            );
        }
        let body = codec::encode_vote(&vote);
        self.blocking(move |files| files.save_state(VOTE_FILE, &body))
            .await?;
        self.vote = Some(vote);
        Ok(())
    }

    /// Saves the committed log id durably.
    pub async fn save_committed_durably(
        &mut self,
        committed: Option<LogId<RaftNodeId>>,
    ) -> Result<(), RaftStoreError> {
        if committed == self.committed {
            return Ok(());
        }
        let body = codec::encode_log_id_file(committed.as_ref());
        self.blocking(move |files| files.save_state(COMMITTED_FILE, &body))
            .await?;
        self.committed = committed;
        self.committed_watch.send_replace(committed);
        Ok(())
    }
}

fn log_error(e: &RaftStoreError, verb: ErrorVerb) -> StorageError<RaftNodeId> {
    e.to_raft(ErrorSubject::Logs, verb)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<RaftNodeId>> {
        Ok(read_lock(&self.memory).read(&range))
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<RaftNodeId>> {
        Ok(read_lock(&self.memory).read_limited(&(start..end)))
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<RaftNodeId>> {
        Ok(read_lock(&self.memory).read(&range))
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<RaftNodeId>> {
        Ok(read_lock(&self.memory).read_limited(&(start..end)))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<RaftNodeId>> {
        let memory = read_lock(&self.memory);
        Ok(LogState {
            last_purged_log_id: memory.purged,
            last_log_id: memory.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            memory: Arc::clone(&self.memory),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<RaftNodeId>) -> Result<(), StorageError<RaftNodeId>> {
        self.save_vote_durably(*vote)
            .await
            .map_err(|e| e.to_raft(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<RaftNodeId>>, StorageError<RaftNodeId>> {
        Ok(self.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<RaftNodeId>>,
    ) -> Result<(), StorageError<RaftNodeId>> {
        self.save_committed_durably(committed)
            .await
            .map_err(|e| log_error(&e, ErrorVerb::Write))
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<RaftNodeId>>, StorageError<RaftNodeId>> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<RaftNodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        match self.append_entries(entries.into_iter().collect()).await {
            Ok(()) => {
                // Called only now: the entries are fsynced.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let error = log_error(&e, ErrorVerb::Write);
                callback.log_io_completed(Err(io::Error::other(e)));
                Err(error)
            }
        }
    }

    async fn truncate(
        &mut self,
        log_id: LogId<RaftNodeId>,
    ) -> Result<(), StorageError<RaftNodeId>> {
        self.truncate_since(log_id.index)
            .await
            .map_err(|e| log_error(&e, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<RaftNodeId>) -> Result<(), StorageError<RaftNodeId>> {
        self.purge_upto(log_id)
            .await
            .map_err(|e| log_error(&e, ErrorVerb::Delete))
    }
}
