//! Producer ids and epochs of idempotent producers, node-wide.
//!
//! The Controller answers InitProducerId and keeps what it hands out in the metadata log, so
//! it survives restarts and, in a cluster, will be the Raft controller's to own:
//! `ProducerIdsReserved { end }` reserves a block of ids (one fsynced record per
//! `PRODUCER_ID_BLOCK` new producers), `ProducerEpochBumped` moves an id to its next epoch and
//! `ProducerIdRetired` ends an id whose epochs ran out. Those records build the
//! `ProducerIdsImage`, part of the `MetadataImage`. `decide_init` is the pure decision of one
//! InitProducerId; `ProducerRegistry` is the node-wide table every partition checks each
//! idempotent batch against, so a bump fences the older epoch on every partition at once,
//! not only where the new epoch has written.
//!
//! Rules (PROTOCOL.md, section 6.10, says the same to clients):
//! - Ids are handed out in increasing order from 0 and never twice; an id at or above the
//!   next one to be handed out was never issued, and is unknown. After a restart every id of
//!   the reserved blocks counts as issued: which of them were handed out is not written down
//!   (that would cost an fsync per producer).
//! - An id is at epoch 0 until its first bump. A bump names the current epoch; an older one is
//!   fenced, a newer one was never granted (unknown). At `PRODUCER_EPOCH_MAX` a bump retires
//!   the id and hands out a new one at epoch 0, since the batch header cannot hold a larger
//!   epoch.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use vltava_messages::limits::{PRODUCER_EPOCH_MAX, PRODUCER_ID_MAX};
use vltava_messages::metadata_records::MetadataRecord;
use vltava_messages::{ProducerEpoch, ProducerId, Sequence};

#[cfg(test)]
mod tests;

/// Ids reserved per metadata record: one fsync per thousand new producers, while a restart
/// skips at most a thousand ids (of 2^63).
pub const PRODUCER_ID_BLOCK: u64 = 1000;

/// Where a producer id stands: at an epoch, or retired for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incarnation {
    Epoch(ProducerEpoch),
    /// Its epochs ran out and its producer moved to a new id.
    Retired,
}

/// What the metadata log says of producer ids. Part of the `MetadataImage`.
///
/// Grows by one entry per id ever bumped (a producer bumps after an error or a lost state,
/// not on every start: a starting producer takes a new id); ARCHITECTURE.md notes the growth.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerIdsImage {
    /// Ids below this are reserved: handed out, or in the block being handed out.
    pub reserved_end: u64,
    /// Every id that was bumped or retired; any other id below `reserved_end` is at epoch 0.
    pub incarnations: BTreeMap<ProducerId, Incarnation>,
}

impl ProducerIdsImage {
    /// Applies one committed record; records about other things are ignored.
    ///
    /// # Panics
    /// If the record moves an epoch back or revives a retired id: the controller never
    /// commits such a record, so the log is not the one it wrote.
    pub fn apply(&mut self, record: &MetadataRecord) {
        match record {
            MetadataRecord::ProducerIdsReserved { end } => {
                self.reserved_end = self.reserved_end.max(*end);
            }
            MetadataRecord::ProducerEpochBumped { producer_id, epoch } => {
                let before = self.incarnation(*producer_id);
                assert!(
                    matches!(before, Incarnation::Epoch(current) if current < *epoch),
                    "producer {} bumped from {before:?} to epoch {}: epochs only grow",
                    producer_id.0,
                    epoch.0
                );
                self.incarnations
                    .insert(*producer_id, Incarnation::Epoch(*epoch));
            }
            MetadataRecord::ProducerIdRetired { producer_id } => {
                let before = self.incarnation(*producer_id);
                assert!(
                    before != Incarnation::Retired,
                    "producer {} retired twice",
                    producer_id.0
                );
                self.incarnations.insert(*producer_id, Incarnation::Retired);
            }
            _ => {}
        }
    }

    /// The incarnation of an id (epoch 0 unless bumped or retired). Whether it was issued is
    /// a separate question.
    #[must_use]
    pub fn incarnation(&self, producer_id: ProducerId) -> Incarnation {
        self.incarnations
            .get(&producer_id)
            .copied()
            .unwrap_or(Incarnation::Epoch(ProducerEpoch(0)))
    }

    /// Where `(producer_id, epoch)` stands, given that ids below `issued_end` were issued.
    #[must_use]
    pub fn standing(
        &self,
        issued_end: u64,
        producer_id: ProducerId,
        epoch: ProducerEpoch,
    ) -> Standing {
        if producer_id.0 >= issued_end {
            return Standing::Unknown(UnknownProducer::NeverIssued);
        }
        match self.incarnation(producer_id) {
            Incarnation::Retired => Standing::Fenced(Fencing::Retired),
            Incarnation::Epoch(current) if epoch < current => {
                Standing::Fenced(Fencing::NewerEpoch(current))
            }
            Incarnation::Epoch(current) if epoch > current => {
                Standing::Unknown(UnknownProducer::EpochNotGranted { current })
            }
            Incarnation::Epoch(_) => Standing::Current,
        }
    }
}

/// Where a producer's `(id, epoch)` stands node-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The id was issued and this is its current epoch.
    Current,
    /// A newer incarnation exists: this one must stop.
    Fenced(Fencing),
    /// The node never handed out this id or this epoch of it.
    Unknown(UnknownProducer),
}

/// Why an incarnation is fenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fencing {
    /// The id is at this newer epoch.
    NewerEpoch(ProducerEpoch),
    /// The id's epochs ran out; its producer moved to a new id.
    Retired,
}

impl fmt::Display for Fencing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fencing::NewerEpoch(epoch) => write!(f, "the id is at epoch {}", epoch.0),
            Fencing::Retired => f.write_str("the id was retired when its epochs ran out"),
        }
    }
}

/// Why a producer is unknown. The producer's remedy is InitProducerId: with its id and epoch
/// for `NoState` (a bump, after which it starts again at sequence 0), without for the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownProducer {
    /// The id is at or above the next one the node would hand out.
    NeverIssued,
    /// The epoch is above the id's current one: no InitProducerId answered it.
    EpochNotGranted { current: ProducerEpoch },
    /// The partition holds no state for the id (it never wrote there, or its state went with
    /// the log's old segments) and the batch does not start at sequence 0.
    NoState { base_sequence: Sequence },
}

impl fmt::Display for UnknownProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnknownProducer::NeverIssued => f.write_str("the node never issued it"),
            UnknownProducer::EpochNotGranted { current } => {
                write!(f, "its epoch is {}, no later one was granted", current.0)
            }
            UnknownProducer::NoState { base_sequence } => write!(
                f,
                "the partition has no state for it and sequence {} is not 0",
                base_sequence.0
            ),
        }
    }
}

/// Why InitProducerId was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProducerIdError {
    #[error("unknown producer id {}: {reason}", producer_id.0)]
    Unknown {
        producer_id: ProducerId,
        reason: UnknownProducer,
    },
    #[error("producer id {} at epoch {} is fenced: {fencing}", producer_id.0, epoch.0)]
    Fenced {
        producer_id: ProducerId,
        epoch: ProducerEpoch,
        fencing: Fencing,
    },
    #[error("every producer id has been handed out")]
    IdsExhausted,
}

/// What one InitProducerId grants, and what must be committed before it is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitGrant {
    pub producer_id: ProducerId,
    pub producer_epoch: ProducerEpoch,
    /// Records to commit first; empty for a new id from a block already reserved.
    pub records: Vec<MetadataRecord>,
    /// The next id to hand out once this grant is answered.
    pub next: u64,
}

/// Decides one InitProducerId: `current` is the producer's id and epoch (a bump), `None` for
/// a new producer; `next` is the next id to hand out (`image.reserved_end` after a restart,
/// so the ids of a block interrupted by the restart are skipped). Pure: the caller commits
/// `records`, then answers.
///
/// # Panics
/// If `next` is past the reserved blocks.
pub fn decide_init(
    image: &ProducerIdsImage,
    next: u64,
    current: Option<(ProducerId, ProducerEpoch)>,
) -> Result<InitGrant, ProducerIdError> {
    assert!(
        next <= image.reserved_end,
        "ids are handed out only from reserved blocks"
    );
    let Some((producer_id, epoch)) = current else {
        return new_id(image, next, Vec::new());
    };
    match image.standing(next, producer_id, epoch) {
        Standing::Unknown(reason) => Err(ProducerIdError::Unknown {
            producer_id,
            reason,
        }),
        Standing::Fenced(fencing) => Err(ProducerIdError::Fenced {
            producer_id,
            epoch,
            fencing,
        }),
        Standing::Current if epoch.0 < PRODUCER_EPOCH_MAX => {
            let bumped = ProducerEpoch(epoch.0 + 1);
            Ok(InitGrant {
                producer_id,
                producer_epoch: bumped,
                records: vec![MetadataRecord::ProducerEpochBumped {
                    producer_id,
                    epoch: bumped,
                }],
                next,
            })
        }
        // The epochs ran out: the producer continues under a new id, and the old one is fenced
        // in the same commit, so no batch of it is accepted once the answer is out.
        Standing::Current => new_id(
            image,
            next,
            vec![MetadataRecord::ProducerIdRetired { producer_id }],
        ),
    }
}

/// A new id at epoch 0, reserving the next block first when the current one is used up.
fn new_id(
    image: &ProducerIdsImage,
    next: u64,
    mut records: Vec<MetadataRecord>,
) -> Result<InitGrant, ProducerIdError> {
    if next > PRODUCER_ID_MAX {
        return Err(ProducerIdError::IdsExhausted);
    }
    if next >= image.reserved_end {
        let end = next
            .saturating_add(PRODUCER_ID_BLOCK)
            .min(PRODUCER_ID_MAX + 1);
        records.push(MetadataRecord::ProducerIdsReserved { end });
    }
    Ok(InitGrant {
        producer_id: ProducerId(next),
        producer_epoch: ProducerEpoch(0),
        records,
        next: next + 1,
    })
}

/// The node-wide table of issued producer ids and their current epochs, which every partition
/// checks each idempotent batch against. Written only by the Controller (after it commits a
/// producer record or hands out an id, before it answers); read by partitions' log threads.
///
/// A read-mostly table rather than the published `MetadataImage` because a partition also
/// needs the allocation cursor (`issued_end`), which is not metadata-log state: ids are
/// reserved a block at a time and handed out one by one in memory. It holds only the producer
/// part of the image, swapped whole behind one lock, so a check per batch is one read lock and
/// one map lookup. In a cluster, where nodes hand out ids from blocks the controller reserves,
/// each node's MetadataApplier will publish it from the committed image.
#[derive(Clone, Debug, Default)]
pub struct ProducerRegistry {
    inner: Arc<RwLock<Registered>>,
}

#[derive(Debug, Default)]
struct Registered {
    /// Ids below this were handed out.
    issued_end: u64,
    /// The version of the metadata image `image` is from.
    version: u64,
    image: Arc<ProducerIdsImage>,
}

impl ProducerRegistry {
    /// Where `(producer_id, epoch)` stands now.
    #[must_use]
    pub fn standing(&self, producer_id: ProducerId, epoch: ProducerEpoch) -> Standing {
        let registered = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        registered
            .image
            .standing(registered.issued_end, producer_id, epoch)
    }

    /// Publishes the producer part of the committed image of `version` and the allocation
    /// cursor. In a cluster two writers publish (the controller as it commits, and every
    /// node as committed images arrive), so an image older than the one held only moves the
    /// cursor, and the cursor only moves forward: ids once counted as issued stay issued.
    pub fn publish(&self, image: &ProducerIdsImage, version: u64, issued_end: u64) {
        // Cloned before the lock is taken, so partitions never wait for the copy.
        let image = Arc::new(image.clone());
        let mut registered = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        registered.issued_end = registered.issued_end.max(issued_end);
        if version >= registered.version {
            registered.version = version;
            registered.image = image;
        }
    }

    /// Moves the allocation cursor alone: a new id from a block already reserved. Controller
    /// only. The cursor never goes back (see `publish`).
    pub fn issue(&self, issued_end: u64) {
        let mut registered = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        registered.issued_end = registered.issued_end.max(issued_end);
    }
}
