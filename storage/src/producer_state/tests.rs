use vltava_messages::limits::SEQUENCE_MAX;
use vltava_messages::{BatchBuilder, Compression};

use super::*;

/// The header of a batch of `count` records from `producer` at `epoch`, first sequence
/// `sequence`, as appended at `base_offset`.
fn header(producer: u64, epoch: u16, sequence: u32, count: u32, base_offset: u64) -> BatchHeader {
    let mut b = BatchBuilder::new(Compression::None).producer(
        ProducerId(producer),
        ProducerEpoch(epoch),
        Sequence(sequence),
    );
    for _ in 0..count {
        b.push(None, Some(b"v"), &[], 0);
    }
    let mut bytes = b.build();
    vltava_messages::batch::set_base_offset(&mut bytes, Offset(base_offset));
    BatchHeader::parse(&bytes).unwrap()
}

/// A table where producer 7 appended two batches at epoch 0: sequences 0-1 and 2-3.
fn table_with_two_batches() -> ProducerStateTable {
    let mut table = ProducerStateTable::default();
    table.record(&header(7, 0, 0, 2, 0));
    table.record(&header(7, 0, 2, 2, 2));
    table
}

#[test]
fn a_retry_is_found_with_its_original_offsets_and_the_next_batch_follows_on() {
    let table = table_with_two_batches();
    assert_eq!(
        table.duplicate_of(&header(7, 0, 0, 2, 99)),
        Some(ProducerBatch {
            first_sequence: 0,
            last_sequence: 1,
            base_offset: Offset(0),
            last_offset: Offset(1),
        })
    );
    assert_eq!(
        table.duplicate_of(&header(7, 0, 0, 3, 99)),
        None,
        "other last sequence"
    );
    assert_eq!(
        table.duplicate_of(&header(7, 1, 0, 2, 99)),
        None,
        "other epoch"
    );
    assert_eq!(
        table.duplicate_of(&header(8, 0, 0, 2, 99)),
        None,
        "other producer"
    );
    assert_eq!(
        table.check_sequence(&header(7, 0, 4, 1, 0)),
        SequenceCheck::Append
    );
    assert_eq!(
        table.check_sequence(&header(7, 0, 6, 1, 0)),
        SequenceCheck::OutOfOrder {
            expected: 4,
            received: 6
        }
    );
}

#[test]
fn only_the_last_five_batches_are_kept() {
    let mut table = ProducerStateTable::default();
    for i in 0..7u32 {
        table.record(&header(7, 0, i, 1, u64::from(i)));
    }
    let (_, batches) = table.producer(ProducerId(7)).unwrap();
    assert_eq!(batches.len(), PRODUCER_BATCHES_KEPT);
    assert_eq!(
        table.duplicate_of(&header(7, 0, 1, 1, 0)),
        None,
        "fell out of the window"
    );
    assert!(table.duplicate_of(&header(7, 0, 2, 1, 0)).is_some());
}

#[test]
fn a_new_epoch_starts_at_0_and_replaces_the_older_epochs_batches() {
    let mut table = table_with_two_batches();
    assert_eq!(
        table.check_sequence(&header(7, 1, 0, 1, 0)),
        SequenceCheck::Append
    );
    assert_eq!(
        table.check_sequence(&header(7, 1, 4, 1, 0)),
        SequenceCheck::OutOfOrder {
            expected: 0,
            received: 4
        }
    );
    table.record(&header(7, 1, 0, 1, 4));
    assert_eq!(
        table.check_sequence(&header(7, 0, 4, 1, 0)),
        SequenceCheck::OlderEpoch {
            current: ProducerEpoch(1)
        }
    );
    assert_eq!(table.duplicate_of(&header(7, 0, 0, 2, 0)), None);
    assert_eq!(table.producer(ProducerId(7)).unwrap().1.len(), 1);
}

#[test]
fn a_producer_without_state_here_may_start_only_at_sequence_0() {
    let table = ProducerStateTable::default();
    assert_eq!(
        table.check_sequence(&header(7, 0, 5, 1, 0)),
        SequenceCheck::NoState {
            base_sequence: Sequence(5)
        }
    );
    assert_eq!(
        table.check_sequence(&header(7, 3, 0, 1, 0)),
        SequenceCheck::Append
    );
}

#[test]
fn sequences_wrap_after_the_largest() {
    let mut table = ProducerStateTable::default();
    table.record(&header(7, 0, SEQUENCE_MAX - 1, 2, 0));
    assert_eq!(
        table.check_sequence(&header(7, 0, 0, 1, 2)),
        SequenceCheck::Append
    );
}

#[test]
fn a_non_idempotent_batch_is_neither_recorded_nor_checked() {
    let mut table = table_with_two_batches();
    let mut b = BatchBuilder::new(Compression::None);
    b.push(None, Some(b"v"), &[], 0);
    let plain = BatchHeader::parse(&b.build()).unwrap();
    assert_eq!(table.duplicate_of(&plain), None);
    assert_eq!(table.check_sequence(&plain), SequenceCheck::Append);
    let before = table.clone();
    table.record(&plain);
    assert_eq!(table, before);
}

#[test]
fn eviction_forgets_batches_below_the_log_start_and_producers_left_without_any() {
    let mut table = table_with_two_batches();
    table.record(&header(8, 0, 0, 1, 4));
    table.evict_below(Offset(2));
    assert_eq!(table.producer(ProducerId(7)).unwrap().1.len(), 1);
    assert_eq!(table.duplicate_of(&header(7, 0, 0, 2, 0)), None);
    table.evict_below(Offset(5));
    assert!(table.is_empty());
}

#[test]
fn a_snapshot_body_decodes_to_the_same_table() {
    let mut table = table_with_two_batches();
    for i in 0..7u32 {
        table.record(&header(3, 2, i * 3, 3, 100 + u64::from(i) * 3));
    }
    let bytes = table.encode();
    assert_eq!(
        bytes.len(),
        SNAPSHOT_HEADER_BYTES + 2 * SNAPSHOT_PRODUCER_BYTES + 7 * SNAPSHOT_BATCH_BYTES
    );
    assert_eq!(ProducerStateTable::decode(&bytes), Some(table.clone()));
    assert_eq!(table.encode(), bytes, "the same table gives the same bytes");
    assert_eq!(
        ProducerStateTable::decode(&ProducerStateTable::default().encode()),
        Some(ProducerStateTable::default())
    );
}

#[test]
fn a_snapshot_body_that_does_not_add_up_is_refused() {
    let bytes = table_with_two_batches().encode();
    // Every strict prefix and any trailing byte.
    for len in 0..bytes.len() {
        assert_eq!(
            ProducerStateTable::decode(&bytes[..len]),
            None,
            "prefix of {len}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(ProducerStateTable::decode(&longer), None);
    // Another version.
    let mut other = bytes.clone();
    other[0] = SNAPSHOT_VERSION + 1;
    assert_eq!(ProducerStateTable::decode(&other), None);
    // More batches than a producer keeps.
    let mut many = bytes.clone();
    many[SNAPSHOT_HEADER_BYTES + 10] = PRODUCER_BATCHES_KEPT as u8 + 1;
    assert_eq!(ProducerStateTable::decode(&many), None);
    // Batches whose offsets go backwards: the second batch's base offset (at its start plus
    // 8 bytes of sequences) set to 0.
    let mut backwards = bytes.clone();
    let second = SNAPSHOT_HEADER_BYTES + SNAPSHOT_PRODUCER_BYTES + SNAPSHOT_BATCH_BYTES + 8;
    backwards[second..second + 8].copy_from_slice(&0u64.to_be_bytes());
    assert_eq!(ProducerStateTable::decode(&backwards), None);
}
