use vltava_messages::limits::{PRODUCER_EPOCH_MAX, SEQUENCE_MAX};
use vltava_messages::{BatchBuilder, Compression, Offset, Sequence};
use vltava_storage::ProducerBatch;

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

/// The header of a batch as appended at `base_offset`.
fn header(producer: u64, epoch: u16, sequence: u32, count: u32, base_offset: u64) -> BatchHeader {
    let mut bytes = batch(producer, epoch, sequence, count);
    vltava_messages::batch::set_base_offset(&mut bytes, Offset(base_offset));
    BatchHeader::parse(&bytes).unwrap()
}

fn current(_: ProducerId, _: ProducerEpoch) -> Standing {
    Standing::Current
}

/// A table where producer 7 appended two batches at epoch 0: sequences 0-1 and 2-3.
fn table_with_two_batches() -> ProducerStateTable {
    let mut table = ProducerStateTable::default();
    table.record(&header(7, 0, 0, 2, 0));
    table.record(&header(7, 0, 2, 2, 2));
    table
}

#[test]
fn a_retry_gets_its_original_offsets_and_the_next_batch_follows_on() {
    let table = table_with_two_batches();
    assert_eq!(
        check(&table, &header(7, 0, 0, 2, 0), current),
        SequenceCheck::Duplicate(ProducerBatch {
            first_sequence: 0,
            last_sequence: 1,
            base_offset: Offset(0),
            last_offset: Offset(1),
        })
    );
    assert_eq!(
        check(&table, &header(7, 0, 4, 1, 0), current),
        SequenceCheck::Append
    );
    assert_eq!(
        check(&table, &header(7, 0, 6, 1, 0), current),
        SequenceCheck::OutOfOrder {
            expected: 4,
            received: 6
        }
    );
}

/// Issue 11: a bump fenced the old epoch only on partitions the new epoch had written to. The
/// node-wide standing now decides, so the old epoch is fenced here before the new one writes
/// here; a retry of a batch it already wrote is still answered, as nothing is written.
#[test]
fn a_bump_elsewhere_fences_the_old_epoch_here_but_a_retry_is_still_answered() {
    let table = table_with_two_batches();
    let bumped = |_: ProducerId, epoch: ProducerEpoch| {
        if epoch < ProducerEpoch(1) {
            Standing::Fenced(Fencing::NewerEpoch(ProducerEpoch(1)))
        } else {
            Standing::Current
        }
    };
    assert_eq!(
        check(&table, &header(7, 0, 4, 1, 0), bumped),
        SequenceCheck::Fenced {
            received: ProducerEpoch(0),
            fencing: Fencing::NewerEpoch(ProducerEpoch(1)),
        }
    );
    assert!(matches!(
        check(&table, &header(7, 0, 2, 2, 0), bumped),
        SequenceCheck::Duplicate(ProducerBatch {
            base_offset: Offset(2),
            ..
        })
    ));
    // The new epoch starts again at 0 here.
    assert_eq!(
        check(&table, &header(7, 1, 0, 1, 0), bumped),
        SequenceCheck::Append
    );
    assert_eq!(
        check(&table, &header(7, 1, 4, 1, 0), bumped),
        SequenceCheck::OutOfOrder {
            expected: 0,
            received: 4
        }
    );
}

/// Issue 11: a batch from an id the node never issued, or at an epoch it never granted, was
/// appended. The node-wide standing refuses both, whatever the partition holds.
#[test]
fn an_unknown_id_or_epoch_is_refused_even_at_sequence_0() {
    let table = ProducerStateTable::default();
    for reason in [
        UnknownProducer::NeverIssued,
        UnknownProducer::EpochNotGranted {
            current: ProducerEpoch(0),
        },
    ] {
        assert_eq!(
            check(&table, &header(9, 3, 0, 1, 0), |_, _| Standing::Unknown(
                reason
            )),
            SequenceCheck::Unknown(reason)
        );
    }
}

/// Issue 11: a producer's first batch on a partition was accepted at any sequence. A partition
/// with no state for the id accepts only sequence 0; otherwise the producer is unknown here
/// (its earlier batches, if any, are gone) and must bump its epoch and start again at 0.
#[test]
fn a_partition_without_state_for_an_id_accepts_only_sequence_0() {
    let table = ProducerStateTable::default();
    assert_eq!(
        check(&table, &header(7, 0, 5, 1, 0), current),
        SequenceCheck::Unknown(UnknownProducer::NoState {
            base_sequence: Sequence(5)
        })
    );
    assert_eq!(
        check(&table, &header(7, 0, 0, 1, 0), current),
        SequenceCheck::Append
    );
    assert_eq!(
        check(&table, &header(7, 4, 0, 1, 0), current),
        SequenceCheck::Append,
        "a bumped producer's first batch here"
    );
}

#[test]
fn the_last_epoch_is_accepted_and_a_retired_id_is_fenced() {
    let mut table = ProducerStateTable::default();
    table.record(&header(7, PRODUCER_EPOCH_MAX - 1, 0, 1, 0));
    assert_eq!(
        check(&table, &header(7, PRODUCER_EPOCH_MAX, 0, 1, 1), current),
        SequenceCheck::Append
    );
    table.record(&header(7, PRODUCER_EPOCH_MAX, 0, 1, 1));
    assert_eq!(
        check(&table, &header(7, PRODUCER_EPOCH_MAX, 1, 1, 0), |_, _| {
            Standing::Fenced(Fencing::Retired)
        }),
        SequenceCheck::Fenced {
            received: ProducerEpoch(PRODUCER_EPOCH_MAX),
            fencing: Fencing::Retired,
        }
    );
}

#[test]
fn sequences_wrap_after_the_largest() {
    let mut table = ProducerStateTable::default();
    table.record(&header(7, 0, SEQUENCE_MAX - 1, 2, 0));
    assert_eq!(
        check(&table, &header(7, 0, 0, 1, 0), current),
        SequenceCheck::Append
    );
}

#[test]
fn a_non_idempotent_batch_is_appended_without_asking_the_node() {
    let table = table_with_two_batches();
    let mut b = BatchBuilder::new(Compression::None);
    b.push(None, Some(b"v"), &[], 0);
    let plain = BatchHeader::parse(&b.build()).unwrap();
    assert_eq!(
        check(&table, &plain, |_, _| panic!("not asked")),
        SequenceCheck::Append
    );
}
