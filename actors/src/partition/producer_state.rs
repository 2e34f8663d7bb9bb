//! Idempotent producers, the part that needs the node: whether a batch is appended, answered
//! as a retry or refused. The per-partition table (each producer's last batches, derived from
//! batch headers) is the log's, in `vltava_storage::producer_state`, so that it is recorded
//! with every append, rebuilt at open and after a truncation, and snapshotted through the
//! `Storage` trait; whether an id and epoch are current at all is node-wide
//! (`producer_ids::ProducerRegistry`), so that an epoch bump fences the older epoch on every
//! partition at once.
//!
//! The checks, in order (PROTOCOL.md, section 6.10, says the same to clients):
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

use vltava_messages::batch::BatchHeader;
use vltava_messages::{ProducerEpoch, ProducerId};
use vltava_storage::producer_state::{self, ProducerBatch, ProducerStateTable};

use crate::metadata::producer_ids::{Fencing, Standing, UnknownProducer};

#[cfg(test)]
mod tests;

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

/// Decides what to do with a batch, given the partition log's producer table and where its
/// producer stands node-wide (`standing`, asked only of an idempotent batch that is not a
/// retry).
#[must_use]
pub fn check(
    table: &ProducerStateTable,
    header: &BatchHeader,
    standing: impl FnOnce(ProducerId, ProducerEpoch) -> Standing,
) -> SequenceCheck {
    let (Some(id), Some(epoch)) = (header.producer_id, header.producer_epoch) else {
        // Not idempotent. (A mix of present and absent fields is refused by the append's
        // validation.)
        return SequenceCheck::Append;
    };
    if let Some(original) = table.duplicate_of(header) {
        return SequenceCheck::Duplicate(original);
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
    match table.check_sequence(header) {
        producer_state::SequenceCheck::Append => SequenceCheck::Append,
        producer_state::SequenceCheck::OutOfOrder { expected, received } => {
            SequenceCheck::OutOfOrder { expected, received }
        }
        producer_state::SequenceCheck::NoState { base_sequence } => {
            SequenceCheck::Unknown(UnknownProducer::NoState { base_sequence })
        }
        // The node-wide check lets only the current epoch through, and this partition has
        // seen a later one; kept as a guard should the two ever disagree.
        producer_state::SequenceCheck::OlderEpoch { current } => SequenceCheck::Fenced {
            received: epoch,
            fencing: Fencing::NewerEpoch(current),
        },
    }
}
