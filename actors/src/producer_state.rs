//! Idempotent producers: per partition, the last few batches of each producer, so that a
//! retried batch is answered with its original offsets instead of being appended twice, a gap
//! in sequence numbers is refused, and an older producer epoch is fenced. Derived from batch
//! headers only, so it is rebuilt by reading the headers of the log at start; a snapshot
//! (`<offset>.snapshot`, written when the partition closes) saves reading the headers below
//! its offset.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use vltava_messages::batch::BatchHeader;
use vltava_messages::{Offset, ProducerEpoch, ProducerId};
use vltava_storage::{Log, RealStorage, StorageError, checkpoint};

/// How many recent batches are kept per producer: the client bounds its in-flight batches per
/// partition to this, so any retry it sends is among them.
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// One appended batch of a producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerBatch {
    pub first_sequence: u32,
    pub last_sequence: u32,
    pub base_offset: Offset,
    pub last_offset: Offset,
}

#[derive(Clone, Debug, Default)]
struct ProducerEntry {
    epoch: Option<ProducerEpoch>,
    batches: VecDeque<ProducerBatch>,
}

/// What to do with an incoming batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not from an idempotent producer, or the next in sequence: append it.
    Append,
    /// Already appended: answer with the original offsets.
    Duplicate(ProducerBatch),
    /// A sequence gap (or a batch older than the kept window): refuse.
    OutOfOrder { expected: u32, received: u32 },
    /// An older epoch of the producer: refuse.
    Fenced {
        current: ProducerEpoch,
        received: ProducerEpoch,
    },
}

/// The state of every producer of one partition.
#[derive(Clone, Debug, Default)]
pub struct ProducerStateTable {
    producers: HashMap<ProducerId, ProducerEntry>,
}

fn last_sequence(header: &BatchHeader, first: u32) -> u32 {
    // Sequences wrap around at i32::MAX, as they are i32 on the wire.
    ((u64::from(first) + u64::from(header.last_offset_delta)) % (i32::MAX as u64 + 1)) as u32
}

impl ProducerStateTable {
    /// Decides what to do with a batch from a producer.
    #[must_use]
    pub fn check(&self, header: &BatchHeader) -> SequenceCheck {
        let (Some(id), Some(epoch), Some(vltava_messages::Sequence(first))) = (
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
        ) else {
            return SequenceCheck::Append;
        };
        let Some(entry) = self.producers.get(&id) else {
            // An unknown producer (new, or its state aged out with the log): accept any start.
            return SequenceCheck::Append;
        };
        match entry.epoch {
            Some(current) if epoch < current => {
                return SequenceCheck::Fenced {
                    current,
                    received: epoch,
                };
            }
            Some(current) if epoch > current => {
                // A new epoch starts its sequences again at 0.
                return if first == 0 {
                    SequenceCheck::Append
                } else {
                    SequenceCheck::OutOfOrder {
                        expected: 0,
                        received: first,
                    }
                };
            }
            _ => {}
        }
        let last = last_sequence(header, first);
        if let Some(original) = entry
            .batches
            .iter()
            .find(|b| b.first_sequence == first && b.last_sequence == last)
        {
            return SequenceCheck::Duplicate(*original);
        }
        let Some(newest) = entry.batches.back() else {
            return SequenceCheck::Append;
        };
        let expected = ((u64::from(newest.last_sequence) + 1) % (i32::MAX as u64 + 1)) as u32;
        if first == expected {
            SequenceCheck::Append
        } else {
            SequenceCheck::OutOfOrder {
                expected,
                received: first,
            }
        }
    }

    /// Records an appended batch (from an append, or from a header read at recovery).
    pub fn record(&mut self, header: &BatchHeader) {
        let (Some(id), Some(epoch), Some(vltava_messages::Sequence(first))) = (
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
        ) else {
            return;
        };
        let entry = self.producers.entry(id).or_default();
        if entry.epoch != Some(epoch) {
            entry.epoch = Some(epoch);
            entry.batches.clear();
        }
        entry.batches.push_back(ProducerBatch {
            first_sequence: first,
            last_sequence: last_sequence(header, first),
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
        });
        while entry.batches.len() > PRODUCER_BATCHES_KEPT {
            entry.batches.pop_front();
        }
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
}

/// Suffix of a producer-state snapshot file, `<offset, 20 digits>.snapshot`: the table as it
/// stood with every batch below `offset` applied.
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";
/// Format version of a snapshot body.
const SNAPSHOT_VERSION: u8 = 1;
/// Snapshots kept per partition; older ones are removed when a new one is written.
pub const SNAPSHOTS_KEPT: usize = 2;

impl ProducerStateTable {
    /// The table's bytes: `version (u8) | producers (u32)` then per producer `id (u64) |
    /// epoch (u16) | batches (u8)` and per batch `first_sequence (u32) | last_sequence (u32) |
    /// base_offset (u64) | last_offset (u64)`, big-endian. `checkpoint` adds the CRC.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![SNAPSHOT_VERSION];
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        // In id order, so the same table always gives the same bytes.
        let mut producers: Vec<_> = self.producers.iter().collect();
        producers.sort_by_key(|(id, _)| **id);
        for (id, entry) in producers {
            out.extend_from_slice(&id.0.to_be_bytes());
            out.extend_from_slice(&entry.epoch.map_or(u16::MAX, |e| e.0).to_be_bytes());
            out.push(entry.batches.len() as u8);
            for b in &entry.batches {
                out.extend_from_slice(&b.first_sequence.to_be_bytes());
                out.extend_from_slice(&b.last_sequence.to_be_bytes());
                out.extend_from_slice(&b.base_offset.0.to_be_bytes());
                out.extend_from_slice(&b.last_offset.0.to_be_bytes());
            }
        }
        out
    }

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
            let batches = take(1)?[0] as usize;
            if batches > PRODUCER_BATCHES_KEPT {
                return None;
            }
            let mut entry = ProducerEntry {
                epoch: (epoch != u16::MAX).then_some(ProducerEpoch(epoch)),
                batches: VecDeque::new(),
            };
            for _ in 0..batches {
                let first_sequence = u32::from_be_bytes(take(4)?.try_into().ok()?);
                let last_sequence = u32::from_be_bytes(take(4)?.try_into().ok()?);
                let base_offset = Offset(u64::from_be_bytes(take(8)?.try_into().ok()?));
                let last_offset = Offset(u64::from_be_bytes(take(8)?.try_into().ok()?));
                entry.batches.push_back(ProducerBatch {
                    first_sequence,
                    last_sequence,
                    base_offset,
                    last_offset,
                });
            }
            table.producers.insert(id, entry);
        }
        cursor.is_empty().then_some(table)
    }

    /// Writes a snapshot of the table as of `offset` (atomically, fsynced) and removes older
    /// snapshots past the last `SNAPSHOTS_KEPT`. Blocks.
    pub fn write_snapshot(&self, dir: &Path, offset: Offset) -> Result<(), StorageError> {
        let path = dir.join(format!("{:020}{SNAPSHOT_SUFFIX}", offset.0));
        checkpoint::write_atomic(&RealStorage, &path, &self.encode())?;
        let mut offsets = snapshot_offsets(dir);
        offsets.sort();
        let excess = offsets.len().saturating_sub(SNAPSHOTS_KEPT);
        for old in &offsets[..excess] {
            // A snapshot left behind is only read if it is the newest usable one; harmless.
            let _ = std::fs::remove_file(dir.join(format!("{:020}{SNAPSHOT_SUFFIX}", old.0)));
        }
        Ok(())
    }

    /// Rebuilds the table of a partition: from the newest readable snapshot at or below the log
    /// end, then the batch headers after it; from the whole log if there is none. Returns the
    /// table and the offset reading started from. Blocks.
    pub fn rebuild(log: &mut Log) -> Result<(ProducerStateTable, Offset), StorageError> {
        let dir = log.dir().to_path_buf();
        let mut offsets: Vec<Offset> = snapshot_offsets(&dir)
            .into_iter()
            .filter(|o| *o <= log.log_end_offset())
            .collect();
        offsets.sort();
        let mut table = ProducerStateTable::default();
        let mut from = log.log_start_offset();
        for offset in offsets.into_iter().rev() {
            let path = dir.join(format!("{:020}{SNAPSHOT_SUFFIX}", offset.0));
            if let Some(loaded) = checkpoint::read(&RealStorage, &path)?
                .and_then(|body| ProducerStateTable::decode(&body))
            {
                table = loaded;
                from = offset.max(log.log_start_offset());
                break;
            }
            tracing::warn!(path = %path.display(), "unreadable producer-state snapshot skipped");
        }
        log.for_each_header_from(from, |h| {
            if h.base_offset >= from {
                table.record(h);
            }
        })?;
        Ok((table, from))
    }
}

/// The offsets of the snapshot files in a partition directory.
fn snapshot_offsets(dir: &Path) -> Vec<Offset> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| vltava_storage::segment::parse_file_name(&name, SNAPSHOT_SUFFIX))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vltava_messages::{BatchBuilder, Compression, LeaderEpoch, Sequence};
    use vltava_storage::{LogConfig, RealStorage};

    use super::*;

    fn batch(producer: u64, epoch: u16, sequence: u32, count: u32) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None).producer(
            ProducerId(producer),
            ProducerEpoch(epoch),
            Sequence(sequence),
        );
        for _ in 0..count {
            b.push(None, Some(b"v"), &[], 0);
        }
        b.build()
    }

    #[test]
    fn a_snapshot_plus_the_tail_rebuilds_the_same_table_as_the_whole_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log =
            Log::open(Arc::new(RealStorage), dir.path(), LogConfig::default(), 0).unwrap();
        let mut live = ProducerStateTable::default();
        let mut sequence = [0u32; 3];
        for i in 0..40u64 {
            let producer = i % 3;
            let mut bytes = batch(producer, 0, sequence[producer as usize], 2);
            sequence[producer as usize] += 2;
            log.append_as_leader(&mut bytes, LeaderEpoch(0), 0).unwrap();
            live.record(&vltava_messages::BatchHeader::parse(&bytes).unwrap());
            if i == 20 {
                live.write_snapshot(dir.path(), log.log_end_offset())
                    .unwrap();
            }
        }
        let (rebuilt, from) = ProducerStateTable::rebuild(&mut log).unwrap();
        assert_eq!(from, Offset(42), "reading started at the snapshot");
        assert_eq!(rebuilt.encode(), live.encode());
        // A damaged snapshot is skipped, and the whole log is read instead.
        std::fs::write(
            dir.path().join(format!("{:020}{SNAPSHOT_SUFFIX}", 42)),
            b"junk",
        )
        .unwrap();
        let (rebuilt, from) = ProducerStateTable::rebuild(&mut log).unwrap();
        assert_eq!(from, Offset(0));
        assert_eq!(rebuilt.encode(), live.encode());
        // Only the newest snapshots are kept.
        for offset in [50, 60, 70] {
            live.write_snapshot(dir.path(), Offset(offset)).unwrap();
        }
        assert_eq!(snapshot_offsets(dir.path()).len(), SNAPSHOTS_KEPT);
    }
}
