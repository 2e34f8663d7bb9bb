//! Idempotent producers: per partition, the last few batches of each producer, so that a
//! retried batch is answered with its original offsets instead of being appended twice, a gap
//! in sequence numbers is refused, and a producer's first batch here starts at sequence 0.
//! Whether an id and epoch are current at all is node-wide (`producer_ids::ProducerRegistry`),
//! so that an epoch bump fences the older epoch on every partition at once. Derived from batch
//! headers only, so it is rebuilt by reading the headers of the log at start; a snapshot
//! (`<offset>.snapshot`, written when the partition closes) saves reading the headers below
//! its offset.
//!
//! The checks, in order (PROTOCOL.md, section 6.7, says the same to clients):
//! 1. A batch equal to one of the producer's last `PRODUCER_BATCHES_KEPT` here (same epoch,
//!    same first and last sequence) is a retry: answered with the original offsets, even if
//!    the epoch has been fenced since, as nothing is written.
//! 2. The node-wide standing of the id and epoch: never issued or not granted is unknown,
//!    older than the current epoch (or a retired id) is fenced.
//! 3. No state for the id here: the batch must start at sequence 0, else the producer is
//!    unknown here (it never wrote here, or its state went with the log's old segments); it
//!    bumps its epoch and starts again at 0, so a lost state never strands it.
//! 4. The state here is of an older epoch: the new epoch starts at sequence 0.
//! 5. Otherwise the batch must follow the last one's sequence.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use vltava_messages::batch::BatchHeader;
use vltava_messages::{Offset, ProducerEpoch, ProducerId, Sequence};
use vltava_storage::{Log, RealStorage, StorageError, checkpoint};

use crate::metadata::producer_ids::{Fencing, Standing, UnknownProducer};

#[cfg(test)]
mod tests;

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
    /// A newer incarnation of the producer exists: refuse.
    Fenced {
        received: ProducerEpoch,
        fencing: Fencing,
    },
    /// The node, or this partition, does not know the producer: refuse.
    Unknown(UnknownProducer),
}

/// The state of every producer of one partition.
#[derive(Clone, Debug, Default)]
pub struct ProducerStateTable {
    producers: HashMap<ProducerId, ProducerEntry>,
}

fn last_sequence(header: &BatchHeader, first: u32) -> u32 {
    Sequence(first).plus(header.last_offset_delta).0
}

impl ProducerStateTable {
    /// Decides what to do with a batch, given where its producer stands node-wide
    /// (`standing`, asked only when the batch is not a retry).
    #[must_use]
    pub fn check(
        &self,
        header: &BatchHeader,
        standing: impl FnOnce(ProducerId, ProducerEpoch) -> Standing,
    ) -> SequenceCheck {
        let (Some(id), Some(epoch), Some(Sequence(first))) = (
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
        ) else {
            // Not idempotent. (A mix of present and absent fields is refused by the append's
            // validation.)
            return SequenceCheck::Append;
        };
        let entry = self.producers.get(&id);
        let last = last_sequence(header, first);
        if let Some(original) = entry.filter(|e| e.epoch == Some(epoch)).and_then(|e| {
            e.batches
                .iter()
                .find(|b| b.first_sequence == first && b.last_sequence == last)
        }) {
            return SequenceCheck::Duplicate(*original);
        }
        match standing(id, epoch) {
            Standing::Current => {}
            Standing::Fenced(fencing) => {
                return SequenceCheck::Fenced {
                    received: epoch,
                    fencing,
                };
            }
            Standing::Unknown(reason) => return SequenceCheck::Unknown(reason),
        }
        let newest = entry.and_then(|e| Some((e.epoch?, e.batches.back()?)));
        let Some((current, newest)) = newest else {
            return if first == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::Unknown(UnknownProducer::NoState {
                    base_sequence: Sequence(first),
                })
            };
        };
        if epoch < current {
            // The node-wide check lets only the current epoch through, and this partition has
            // seen no later one; kept as a guard should the two ever disagree.
            return SequenceCheck::Fenced {
                received: epoch,
                fencing: Fencing::NewerEpoch(current),
            };
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
