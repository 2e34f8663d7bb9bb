//! Idempotent producers' state in one partition log: per producer id, the epoch last seen
//! and its last `PRODUCER_BATCHES_KEPT` batches (first and last sequence, first and last
//! offset), so that a retried batch is answered with its original offsets instead of being
//! appended twice, and a sequence gap is refused.
//!
//! The table is derived from batch headers only, so it is part of the log's state: the `Log`
//! owns it, records every batch it appends (as leader or as follower, so that a follower that
//! becomes leader answers a retry of a batch it copied), rebuilds it when it opens and after
//! a truncation, and drops what retention deletes. Snapshots (`<offset, 20 digits>.snapshot`,
//! the table with every batch below `offset` applied) are written at each roll and at a clean
//! close through the `Storage` trait, so that opening reads only the batch headers after the
//! newest usable snapshot, and the simulated-disk crash tests cover them. STORAGE.md
//! (*Producer-state snapshots*) has the bytes and the rules.
//!
//! What the table cannot decide is node-wide: whether an id was issued and whether an epoch
//! was fenced. The caller asks that of its producer registry between `duplicate_of` and
//! `check_sequence` (PROTOCOL.md, section 6.10, gives the order to clients).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use vltava_messages::batch::BatchHeader;
use vltava_messages::{Offset, ProducerEpoch, ProducerId, Sequence};

use crate::checkpoint;
use crate::error::{Result, StorageError};
use crate::fs::Storage;
use crate::segment;

#[cfg(test)]
mod tests;

/// How many recent batches are kept per producer: the client bounds its in-flight batches per
/// partition to this, so any retry it sends is among them.
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// Suffix of a producer-state snapshot file, `<offset, 20 digits>.snapshot`.
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";

/// Format version of a snapshot body.
const SNAPSHOT_VERSION: u8 = 1;

/// Snapshots kept per partition; older ones are removed when a new one is written. More than
/// one, so that a damaged newest snapshot, or a truncation below it, falls back to the one
/// before rather than to a read of every batch header of the log; three cover the last two
/// segments, where a follower's truncation (an uncommitted suffix) nearly always falls.
pub const SNAPSHOTS_KEPT: usize = 3;

/// The largest snapshot file read back (body and CRC). A producer takes at most
/// 11 + 5 × 24 = 131 bytes, so this holds about 250,000 producers; a larger table is not
/// snapshotted (a warning says so) and is rebuilt from batch headers instead. The bound keeps
/// a damaged length from becoming an allocation of any size.
pub const SNAPSHOT_BYTES_MAX: u64 = 32 << 20;

/// Bytes of one producer's fixed part in a snapshot: id, epoch, batch count.
const SNAPSHOT_PRODUCER_BYTES: usize = 8 + 2 + 1;
/// Bytes of one batch in a snapshot: two sequences, two offsets.
const SNAPSHOT_BATCH_BYTES: usize = 4 + 4 + 8 + 8;
/// Bytes of the snapshot body's header: version and producer count.
const SNAPSHOT_HEADER_BYTES: usize = 1 + 4;
/// A snapshot's epoch field for an entry without an epoch. Producer epochs stop at
/// `PRODUCER_EPOCH_MAX` (32767), so the value never names a real epoch.
const SNAPSHOT_EPOCH_NONE: u16 = u16::MAX;

const _: () = assert!(PRODUCER_BATCHES_KEPT <= u8::MAX as usize);
const _: () = assert!(vltava_messages::limits::PRODUCER_EPOCH_MAX < SNAPSHOT_EPOCH_NONE);
const _: () = assert!(
    SNAPSHOT_BYTES_MAX
        >= (SNAPSHOT_HEADER_BYTES
            + SNAPSHOT_PRODUCER_BYTES
            + PRODUCER_BATCHES_KEPT * SNAPSHOT_BATCH_BYTES
            + 4) as u64
);

/// One appended batch of a producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerBatch {
    pub first_sequence: u32,
    pub last_sequence: u32,
    pub base_offset: Offset,
    pub last_offset: Offset,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ProducerEntry {
    epoch: Option<ProducerEpoch>,
    /// Oldest first, at most `PRODUCER_BATCHES_KEPT`, all of `epoch`.
    batches: VecDeque<ProducerBatch>,
}

/// What the sequence numbers say about a batch that is not a retry, once the producer's id
/// and epoch are known to be current node-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not from an idempotent producer, or the next in sequence: append it.
    Append,
    /// A sequence gap (or a batch older than the kept window): refuse.
    OutOfOrder { expected: u32, received: u32 },
    /// No state for the producer here and the batch does not start at sequence 0: the
    /// producer never wrote here, or its state went with the log's old segments.
    NoState { base_sequence: Sequence },
    /// This log has seen a later epoch of the producer than the batch's.
    OlderEpoch { current: ProducerEpoch },
}

/// The state of every producer of one partition log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStateTable {
    producers: HashMap<ProducerId, ProducerEntry>,
}

/// The producer fields of an idempotent batch: id, epoch, first and last sequence.
fn idempotent(header: &BatchHeader) -> Option<(ProducerId, ProducerEpoch, u32, u32)> {
    let (Some(id), Some(epoch), Some(Sequence(first))) = (
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
    ) else {
        // Not idempotent. (A mix of present and absent fields is refused by the append's
        // validation.)
        return None;
    };
    let last = Sequence(first).plus(header.last_offset_delta).0;
    Some((id, epoch, first, last))
}

impl ProducerStateTable {
    /// The original batch if `header` is a retry of one of its producer's last
    /// `PRODUCER_BATCHES_KEPT` batches here (same id, epoch, first and last sequence). A retry
    /// is answered even if the epoch was fenced since, as nothing is written.
    #[must_use]
    pub fn duplicate_of(&self, header: &BatchHeader) -> Option<ProducerBatch> {
        let (id, epoch, first, last) = idempotent(header)?;
        let entry = self.producers.get(&id)?;
        if entry.epoch != Some(epoch) {
            return None;
        }
        entry
            .batches
            .iter()
            .find(|b| b.first_sequence == first && b.last_sequence == last)
            .copied()
    }

    /// Whether a batch that is not a retry follows its producer's sequence here. Call it only
    /// after `duplicate_of` found no original and the producer's id and epoch were found
    /// current node-wide.
    #[must_use]
    pub fn check_sequence(&self, header: &BatchHeader) -> SequenceCheck {
        let Some((id, epoch, first, _)) = idempotent(header) else {
            return SequenceCheck::Append;
        };
        let newest = self
            .producers
            .get(&id)
            .and_then(|e| Some((e.epoch?, e.batches.back()?)));
        let Some((current, newest)) = newest else {
            return if first == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::NoState {
                    base_sequence: Sequence(first),
                }
            };
        };
        if epoch < current {
            return SequenceCheck::OlderEpoch { current };
        }
        let expected = if epoch > current {
            // A new epoch starts its sequences again at 0.
            0
        } else {
            Sequence(newest.last_sequence).plus(1).0
        };
        if first == expected {
            SequenceCheck::Append
        } else {
            SequenceCheck::OutOfOrder {
                expected,
                received: first,
            }
        }
    }

    /// Records an appended batch (from an append, or from a header read at a rebuild). A
    /// batch of a new epoch replaces the producer's batches of the older one.
    pub fn record(&mut self, header: &BatchHeader) {
        let Some((id, epoch, first, last)) = idempotent(header) else {
            return;
        };
        let entry = self.producers.entry(id).or_default();
        if entry.epoch != Some(epoch) {
            entry.epoch = Some(epoch);
            entry.batches.clear();
        }
        entry.batches.push_back(ProducerBatch {
            first_sequence: first,
            last_sequence: last,
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
        });
        while entry.batches.len() > PRODUCER_BATCHES_KEPT {
            entry.batches.pop_front();
        }
    }

    /// Forgets the batches that start below `log_start_offset` (retention deleted them), and
    /// producers left with none: the table then holds what a rebuild from the log's headers
    /// would give, and a retry of a deleted batch is not answered with offsets no longer in
    /// the log. A producer forgotten this way starts again at sequence 0 after an epoch bump
    /// (`NoState`), as PROTOCOL.md says.
    pub fn evict_below(&mut self, log_start_offset: Offset) {
        self.producers.retain(|_, entry| {
            entry.batches.retain(|b| b.base_offset >= log_start_offset);
            !entry.batches.is_empty()
        });
    }

    /// The epoch and kept batches (oldest first) of a producer, if the table knows it.
    #[must_use]
    pub fn producer(&self, id: ProducerId) -> Option<(Option<ProducerEpoch>, Vec<ProducerBatch>)> {
        self.producers
            .get(&id)
            .map(|e| (e.epoch, e.batches.iter().copied().collect()))
    }

    /// The ids of the producers known, in id order.
    #[must_use]
    pub fn producer_ids(&self) -> Vec<ProducerId> {
        let mut ids: Vec<ProducerId> = self.producers.keys().copied().collect();
        ids.sort();
        ids
    }

    /// The number of producers known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The snapshot body: `version (u8) | producers (u32)`, then per producer `id (u64) |
    /// epoch (u16) | batches (u8)` and per batch `first_sequence (u32) | last_sequence (u32) |
    /// base_offset (u64) | last_offset (u64)`, big-endian, producers in id order so that the
    /// same table always gives the same bytes. `checkpoint` adds the CRC.
    fn encode(&self) -> Vec<u8> {
        let batches: usize = self.producers.values().map(|e| e.batches.len()).sum();
        let mut out = Vec::with_capacity(
            SNAPSHOT_HEADER_BYTES
                + self.producers.len() * SNAPSHOT_PRODUCER_BYTES
                + batches * SNAPSHOT_BATCH_BYTES,
        );
        out.push(SNAPSHOT_VERSION);
        let count = u32::try_from(self.producers.len()).expect("fewer than 2^32 producers");
        out.extend_from_slice(&count.to_be_bytes());
        for id in self.producer_ids() {
            let entry = &self.producers[&id];
            out.extend_from_slice(&id.0.to_be_bytes());
            let epoch = entry.epoch.map_or(SNAPSHOT_EPOCH_NONE, |e| e.0);
            out.extend_from_slice(&epoch.to_be_bytes());
            let kept = u8::try_from(entry.batches.len()).expect("at most PRODUCER_BATCHES_KEPT");
            out.push(kept);
            for b in &entry.batches {
                out.extend_from_slice(&b.first_sequence.to_be_bytes());
                out.extend_from_slice(&b.last_sequence.to_be_bytes());
                out.extend_from_slice(&b.base_offset.0.to_be_bytes());
                out.extend_from_slice(&b.last_offset.0.to_be_bytes());
            }
        }
        out
    }

    /// Decodes a snapshot body; `None` if it is not one this build wrote (another version, a
    /// count or length that does not add up, batches out of order).
    fn decode(bytes: &[u8]) -> Option<ProducerStateTable> {
        let mut cursor = bytes;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, rest) = cursor.split_at_checked(n)?;
            cursor = rest;
            Some(head)
        };
        if take(1)? != [SNAPSHOT_VERSION] {
            return None;
        }
        let count = u32::from_be_bytes(take(4)?.try_into().ok()?);
        let mut table = ProducerStateTable::default();
        for _ in 0..count {
            let id = ProducerId(u64::from_be_bytes(take(8)?.try_into().ok()?));
            let epoch = u16::from_be_bytes(take(2)?.try_into().ok()?);
            let kept = usize::from(take(1)?[0]);
            if kept > PRODUCER_BATCHES_KEPT {
                return None;
            }
            let mut entry = ProducerEntry {
                epoch: (epoch != SNAPSHOT_EPOCH_NONE).then_some(ProducerEpoch(epoch)),
                batches: VecDeque::with_capacity(kept),
            };
            for _ in 0..kept {
                let batch = ProducerBatch {
                    first_sequence: u32::from_be_bytes(take(4)?.try_into().ok()?),
                    last_sequence: u32::from_be_bytes(take(4)?.try_into().ok()?),
                    base_offset: Offset(u64::from_be_bytes(take(8)?.try_into().ok()?)),
                    last_offset: Offset(u64::from_be_bytes(take(8)?.try_into().ok()?)),
                };
                let follows = entry
                    .batches
                    .back()
                    .is_none_or(|prev| prev.last_offset < batch.base_offset);
                if batch.last_offset < batch.base_offset || !follows {
                    return None;
                }
                entry.batches.push_back(batch);
            }
            if table.producers.insert(id, entry).is_some() {
                return None;
            }
        }
        cursor.is_empty().then_some(table)
    }
}

/// The path of the snapshot as of `offset` in `dir`.
#[must_use]
pub fn snapshot_path(dir: &Path, offset: Offset) -> PathBuf {
    dir.join(format!("{}{SNAPSHOT_SUFFIX}", segment::file_stem(offset)))
}

/// The offsets of the snapshot files in a partition directory, in increasing order. Blocks.
pub fn snapshot_offsets(storage: &dyn Storage, dir: &Path) -> Result<Vec<Offset>> {
    let names = storage
        .list_dir(dir)
        .map_err(|e| StorageError::io(dir, e))?;
    let mut offsets: Vec<Offset> = names
        .iter()
        .filter_map(|name| segment::parse_file_name(name, SNAPSHOT_SUFFIX))
        .collect();
    offsets.sort();
    Ok(offsets)
}

/// Writes the snapshot of `table` as of `offset` atomically and durably (temporary file,
/// fsync, rename, directory fsync), then removes the snapshots older than the newest
/// `SNAPSHOTS_KEPT` (durable with the next directory fsync; one left behind is only ever read
/// if it is the newest usable one, and it is as valid as when it was written). Returns
/// `false` without writing if the snapshot would exceed `SNAPSHOT_BYTES_MAX`. Blocks on two
/// fsyncs.
pub fn write_snapshot(
    storage: &dyn Storage,
    dir: &Path,
    offset: Offset,
    table: &ProducerStateTable,
) -> Result<bool> {
    let body = table.encode();
    if body.len() as u64 + 4 > SNAPSHOT_BYTES_MAX {
        tracing::warn!(dir = %dir.display(), producers = table.len(), bytes = body.len(), "producer state too large to snapshot; it is rebuilt from batch headers at open");
        return Ok(false);
    }
    checkpoint::write_atomic(storage, &snapshot_path(dir, offset), &body)?;
    let offsets = snapshot_offsets(storage, dir)?;
    let excess = offsets.len().saturating_sub(SNAPSHOTS_KEPT);
    remove_snapshots(storage, dir, &offsets[..excess])?;
    Ok(true)
}

/// Reads the snapshot as of `offset`: `Ok(None)` if it is missing, damaged (CRC) or not a
/// snapshot this build can read. Blocks.
pub fn read_snapshot(
    storage: &dyn Storage,
    dir: &Path,
    offset: Offset,
) -> Result<Option<ProducerStateTable>> {
    let path = snapshot_path(dir, offset);
    let body = checkpoint::read_bounded(storage, &path, SNAPSHOT_BYTES_MAX)?;
    Ok(body.and_then(|body| ProducerStateTable::decode(&body)))
}

/// Removes the snapshots at `offsets`. Durable only once the directory is synced. Blocks.
pub fn remove_snapshots(storage: &dyn Storage, dir: &Path, offsets: &[Offset]) -> Result<()> {
    for &offset in offsets {
        let path = snapshot_path(dir, offset);
        storage
            .remove_file(&path)
            .map_err(|e| StorageError::io(&path, e))?;
    }
    Ok(())
}
