//! Idempotent producers: per partition, the last few batches of each producer, so that a
//! retried batch is answered with its original offsets instead of being appended twice, a gap
//! in sequence numbers is refused, and an older producer epoch is fenced. Derived from batch
//! headers only, so it is rebuilt by reading the headers of the log at start.

use std::collections::{HashMap, VecDeque};

use vltava_messages::batch::BatchHeader;
use vltava_messages::{Offset, ProducerEpoch, ProducerId};

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
