use super::*;
use proptest::prelude::*;

fn sample_batch(compression: Compression, count: u32) -> Vec<u8> {
    let mut builder = BatchBuilder::new(compression);
    for i in 0..count {
        let key = format!("key-{i}");
        let value = format!("value-{i}").repeat(3);
        builder.push(
            (i % 3 != 0).then_some(key.as_bytes()),
            Some(value.as_bytes()),
            &[("trace", b"abc".as_slice()), ("n", &i.to_be_bytes())],
            1_700_000_000_000 + i64::from(i) * 7 - i64::from(i % 2) * 20,
        );
    }
    builder.build()
}

#[test]
fn built_batches_validate_and_decode_for_every_compression() {
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let batch = sample_batch(compression, 50);
        let info = validate(&batch).expect("a built batch is valid");
        assert_eq!(info.header.record_count, 50);
        assert_eq!(info.header.compression(), Ok(compression));
        let records = RecordBatchRef::new(&batch).unwrap().records().unwrap();
        assert_eq!(records.len(), 50);
        assert_eq!(records[0].key, None);
        assert_eq!(records[1].key.as_deref(), Some(b"key-1".as_slice()));
        assert_eq!(
            records[4].value.as_deref(),
            Some(b"value-4value-4value-4".as_slice())
        );
        assert_eq!(records[4].headers[0], ("trace".to_owned(), b"abc".to_vec()));
        assert_eq!(records[4].offset, Offset(4));
        assert_eq!(records[3].timestamp, 1_700_000_000_000 + 21 - 20);
    }
}

#[test]
fn leader_fields_do_not_change_the_crc() {
    let mut batch = sample_batch(Compression::None, 3);
    let before = BatchHeader::parse(&batch).unwrap().crc;
    set_base_offset(&mut batch, Offset(1234));
    set_partition_leader_epoch(&mut batch, LeaderEpoch(9));
    let header = validate(&batch).unwrap().header;
    assert_eq!(header.crc, before);
    assert_eq!(header.base_offset, Offset(1234));
    assert_eq!(header.last_offset(), Offset(1236));
    assert_eq!(header.partition_leader_epoch, LeaderEpoch(9));
}

#[test]
fn log_append_time_recomputes_the_crc_and_applies_to_every_record() {
    let mut batch = sample_batch(Compression::Lz4, 4);
    set_log_append_time(&mut batch, 42);
    let header = validate(&batch).unwrap().header;
    assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
    let records = RecordBatchRef::new(&batch).unwrap().records().unwrap();
    assert!(records.iter().all(|r| r.timestamp == 42));
}

/// Issue 11: a producer given epoch 32768 wrote it as the i16 -32768, which the header parser
/// reads as "no epoch", so the batch passed as not idempotent and skipped fencing. A leader
/// now refuses any mix of present and absent producer fields; recovery still reads them.
#[test]
fn mixed_producer_fields_are_refused_at_append_but_not_by_recovery() {
    let idempotent = |epoch_raw: i16| {
        let mut batch = with_one_record(BatchBuilder::new(Compression::None).producer(
            ProducerId(7),
            ProducerEpoch(0),
            Sequence(0),
        ));
        batch[PRODUCER_EPOCH_POSITION..PRODUCER_EPOCH_POSITION + 2]
            .copy_from_slice(&epoch_raw.to_be_bytes());
        let crc = compute_crc(&batch);
        batch[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
        batch
    };
    let ok = idempotent(32_767);
    assert_eq!(
        producer_fields(&ok).unwrap(),
        Some((ProducerId(7), ProducerEpoch(32_767), Sequence(0)))
    );
    assert!(validate(&ok).is_ok());
    let plain = sample_batch(Compression::None, 1);
    assert_eq!(producer_fields(&plain).unwrap(), None);
    for raw in [-32_768, -1, -2] {
        let bad = idempotent(raw);
        assert!(
            matches!(
                validate(&bad),
                Err(BatchError::InvalidProducerFields { producer_id: 7, producer_epoch, base_sequence: 0 })
                    if producer_epoch == raw
            ),
            "epoch {raw}"
        );
        assert!(validate_crc(&bad).is_ok(), "recovery reads it");
    }
}

#[test]
fn set_producer_restamps_the_fields_and_the_crc() {
    let mut batch = with_one_record(BatchBuilder::new(Compression::Lz4).producer(
        ProducerId(1),
        ProducerEpoch(0),
        Sequence(40),
    ));
    set_producer(&mut batch, ProducerId(9), ProducerEpoch(3), Sequence(0));
    let header = validate(&batch).expect("still valid");
    assert_eq!(header.header.producer_id, Some(ProducerId(9)));
    assert_eq!(header.header.producer_epoch, Some(ProducerEpoch(3)));
    assert_eq!(header.header.base_sequence, Some(Sequence(0)));
}

#[test]
#[should_panic(expected = "producer epoch 32768 out of range")]
fn a_builder_refuses_an_epoch_the_header_cannot_hold() {
    let _ = BatchBuilder::new(Compression::None).producer(
        ProducerId(1),
        ProducerEpoch(32_768),
        Sequence(0),
    );
}

#[test]
fn sequences_wrap_after_the_largest() {
    assert_eq!(Sequence(5).plus(3), Sequence(8));
    assert_eq!(Sequence(SEQUENCE_MAX).plus(1), Sequence(0));
    assert_eq!(Sequence(SEQUENCE_MAX - 1).plus(4), Sequence(2));
}

/// Pushes one record and builds, for the producer-field tests.
fn with_one_record(mut builder: BatchBuilder) -> Vec<u8> {
    builder.push(None, Some(b"v"), &[], 1_000);
    builder.build()
}

#[test]
fn a_flipped_byte_is_a_crc_mismatch() {
    let batch = sample_batch(Compression::None, 5);
    for position in ATTRIBUTES_POSITION + 2..batch.len() {
        let mut damaged = batch.clone();
        damaged[position] ^= 0x10;
        assert!(
            validate(&damaged).is_err(),
            "flip at {position} went unnoticed"
        );
    }
    let mut damaged = batch.clone();
    damaged[batch.len() - 1] ^= 1;
    assert!(matches!(
        validate_crc(&damaged),
        Err(BatchError::CrcMismatch { .. })
    ));
}

/// Rewrites the record count (and the last offset delta that must match it) and fixes the CRC,
/// as a lying producer would.
fn with_record_count(mut batch: Vec<u8>, count: u32) -> Vec<u8> {
    batch[RECORD_COUNT_POSITION..RECORD_COUNT_POSITION + 4].copy_from_slice(&count.to_be_bytes());
    batch[LAST_OFFSET_DELTA_POSITION..LAST_OFFSET_DELTA_POSITION + 4]
        .copy_from_slice(&(count - 1).to_be_bytes());
    let crc = compute_crc(&batch);
    batch[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
    batch
}

#[test]
fn a_lying_record_count_is_refused_even_when_compressed() {
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let more = with_record_count(sample_batch(compression, 5), 6);
        assert_eq!(
            validate(&more).unwrap_err(),
            BatchError::RecordCountMismatch {
                declared: 6,
                actual: 5
            }
        );
        let fewer = with_record_count(sample_batch(compression, 5), 4);
        assert_eq!(
            validate(&fewer).unwrap_err(),
            BatchError::RecordCountMismatch {
                declared: 4,
                actual: 5
            }
        );
    }
}

#[test]
fn truncated_and_padded_batches_are_refused() {
    let batch = sample_batch(Compression::None, 2);
    assert!(matches!(
        validate(&batch[..30]),
        Err(BatchError::Truncated { .. })
    ));
    assert!(matches!(
        validate(&batch[..batch.len() - 1]),
        Err(BatchError::LengthMismatch { .. })
    ));
    let mut padded = batch.clone();
    padded.push(0);
    assert!(matches!(
        validate(&padded),
        Err(BatchError::LengthMismatch { .. })
    ));
}

#[test]
fn wrong_magic_and_reserved_attributes_are_refused() {
    let mut batch = sample_batch(Compression::None, 2);
    batch[MAGIC_POSITION] = 2;
    assert_eq!(
        validate(&batch).unwrap_err(),
        BatchError::UnsupportedMagic { magic: 2 }
    );
    let mut batch = sample_batch(Compression::None, 2);
    batch[ATTRIBUTES_POSITION + 1] |= ATTRIBUTE_TRANSACTIONAL as u8;
    let crc = compute_crc(&batch);
    batch[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        validate(&batch),
        Err(BatchError::UnsupportedAttributes { .. })
    ));
}

#[test]
fn a_wrong_max_timestamp_is_refused() {
    let mut batch = sample_batch(Compression::None, 3);
    batch[MAX_TIMESTAMP_POSITION..MAX_TIMESTAMP_POSITION + 8].copy_from_slice(&5i64.to_be_bytes());
    let crc = compute_crc(&batch);
    batch[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        validate(&batch),
        Err(BatchError::MaxTimestampMismatch { .. })
    ));
}

#[test]
fn a_zip_bomb_stops_at_the_decompression_bound() {
    let mut builder = BatchBuilder::new(Compression::Zstd);
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..40 {
        builder.push(None, Some(&zeros), &[], 0);
    }
    let batch = builder.build();
    assert!(batch.len() < 64 * 1024, "zeros compress well");
    assert_eq!(
        validate(&batch).unwrap_err(),
        BatchError::DecompressedTooLarge {
            max: RECORDS_DECOMPRESSED_BYTES_MAX
        }
    );
}

#[test]
fn split_batches_walks_consecutive_batches_and_stops_at_damage() {
    let mut buf = sample_batch(Compression::None, 2);
    buf.extend(sample_batch(Compression::Lz4, 3));
    let counts: Vec<u32> = split_batches(&buf)
        .map(|b| b.unwrap().header.record_count)
        .collect();
    assert_eq!(counts, vec![2, 3]);
    let cut = &buf[..buf.len() - 3];
    let results: Vec<_> = split_batches(cut).collect();
    assert_eq!(results.len(), 2);
    assert!(results[1].is_err());
}

/// A one-record batch around `record` (the record's bytes after its length), built as a
/// producer would but for the record: no compression, timestamps 0, CRC computed.
fn batch_around_record(record: &[u8]) -> Vec<u8> {
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(None, Some(b"v"), &[], 0);
    let mut batch = builder.build();
    batch.truncate(HEADER_BYTES);
    varint::put_varint(&mut batch, record.len() as i32);
    batch.extend_from_slice(record);
    let batch_length = (batch.len() - 12) as u32;
    batch[BATCH_LENGTH_POSITION..BATCH_LENGTH_POSITION + 4]
        .copy_from_slice(&batch_length.to_be_bytes());
    let crc = compute_crc(&batch);
    batch[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
    batch
}

/// Zig-zag varint bytes of small lengths, as records carry them.
const LENGTH_NULL: u8 = 0x01;
const LENGTH_MINUS_TWO: u8 = 0x03;
const LENGTH_ONE: u8 = 0x02;

/// A key or value length of -2 was read as null, as Kafka reads every negative length. The
/// only null is -1 (PROTOCOL.md section 7); any other negative length is malformed.
#[test]
fn a_length_below_minus_one_is_malformed_not_null() {
    // attributes, timestamp delta, offset delta, key length, [key], value length, [value],
    // header count.
    let null_key = [0, 0, 0, LENGTH_NULL, LENGTH_ONE, b'v', 0];
    let batch = batch_around_record(&null_key);
    validate(&batch).unwrap();
    let records = RecordBatchRef::new(&batch).unwrap().records().unwrap();
    assert_eq!(records[0].key, None);
    assert_eq!(records[0].value.as_deref(), Some(&b"v"[..]));
    for record in [
        [0, 0, 0, LENGTH_MINUS_TWO, LENGTH_ONE, b'v', 0],
        [0, 0, 0, LENGTH_ONE, b'k', LENGTH_MINUS_TWO, 0],
    ] {
        let batch = batch_around_record(&record);
        assert!(
            matches!(validate(&batch), Err(BatchError::MalformedRecord { .. })),
            "{record:?}"
        );
        assert!(RecordBatchRef::new(&batch).unwrap().records().is_err());
    }
}

/// Unlike Kafka, a header may not be null, key or value: a null header value is refused.
#[test]
fn null_header_keys_and_values_are_refused() {
    let one_header = 0x02;
    let with_header = |key: &[u8], value: &[u8]| {
        let mut record = vec![0, 0, 0, LENGTH_NULL, LENGTH_NULL, one_header];
        record.extend_from_slice(key);
        record.extend_from_slice(value);
        record
    };
    validate(&batch_around_record(&with_header(
        &[LENGTH_ONE, b'h'],
        &[LENGTH_ONE, b'x'],
    )))
    .unwrap();
    validate(&batch_around_record(&with_header(
        &[LENGTH_ONE, b'h'],
        &[0],
    )))
    .unwrap();
    for (key, value) in [
        (&[LENGTH_ONE, b'h'][..], &[LENGTH_NULL][..]),
        (&[LENGTH_NULL][..], &[LENGTH_ONE, b'x'][..]),
        (&[LENGTH_ONE, b'h'][..], &[LENGTH_MINUS_TWO][..]),
    ] {
        assert!(
            matches!(
                validate(&batch_around_record(&with_header(key, value))),
                Err(BatchError::MalformedRecord { .. })
            ),
            "{key:?} {value:?}"
        );
    }
}

/// A record's timestamp is `first_timestamp + timestamp_delta`; one past i64 used to wrap
/// (and pass, with a `max_timestamp` equal to the wrapped value). It is refused.
#[test]
fn a_timestamp_past_i64_is_refused() {
    let one = 0x02;
    let mut batch = batch_around_record(&[0, one, 0, LENGTH_NULL, LENGTH_NULL, 0]);
    batch[FIRST_TIMESTAMP_POSITION..FIRST_TIMESTAMP_POSITION + 8]
        .copy_from_slice(&i64::MAX.to_be_bytes());
    batch[MAX_TIMESTAMP_POSITION..MAX_TIMESTAMP_POSITION + 8]
        .copy_from_slice(&i64::MIN.to_be_bytes());
    let crc = compute_crc(&batch);
    batch[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        validate(&batch),
        Err(BatchError::MalformedRecord { index: 0, .. })
    ));
    // The extremes themselves are fine: any i64 is a timestamp.
    for timestamp in [i64::MIN, -1, i64::MAX] {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(None, Some(b"v"), &[], timestamp);
        validate(&builder.build()).unwrap();
    }
}

/// A fixed batch, byte for byte: if this changes, the format changed, and STORAGE.md, the
/// Python example and every client must change with it.
#[test]
fn golden_batch_bytes() {
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(Some(b"k"), Some(b"v"), &[("h", b"x")], 1000);
    let batch = builder.build();
    let hex: String = batch.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        concat!(
            "0000000000000000", // base offset 0
            "0000003e",         // batch length 62
            "00000000",         // partition leader epoch 0
            "01",               // magic 1
            "85d4936f",         // crc (CRC-32C of everything after this field)
            "0000",             // attributes: no compression, create time
            "00000000",         // last offset delta 0
            "00000000000003e8", // first timestamp 1000
            "00000000000003e8", // max timestamp 1000
            "ffffffffffffffff", // producer id: none
            "ffff",             // producer epoch: none
            "ffffffff",         // base sequence: none
            "00000001",         // record count 1
            "18",               // record length 12 (zig-zag)
            "00",               // record attributes
            "00",               // timestamp delta 0
            "00",               // offset delta 0
            "02",
            "6b", // key length 1, "k"
            "02",
            "76", // value length 1, "v"
            "02", // one header
            "02",
            "68", // header key length 1, "h"
            "02",
            "78", // header value length 1, "x"
        )
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = validate(&bytes);
        let _ = split_batches(&bytes).count();
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(
        records in proptest::collection::vec(any::<u8>(), 0..256),
        count in 1u32..8,
        compression in 0u16..3,
    ) {
        let mut batch = sample_batch(Compression::None, 1)[..HEADER_BYTES].to_vec();
        batch.extend_from_slice(&records);
        let len = (batch.len() - LOG_OVERHEAD_BYTES) as u32;
        batch[BATCH_LENGTH_POSITION..BATCH_LENGTH_POSITION + 4].copy_from_slice(&len.to_be_bytes());
        batch[ATTRIBUTES_POSITION..ATTRIBUTES_POSITION + 2].copy_from_slice(&compression.to_be_bytes());
        let batch = with_record_count(batch, count);
        let _ = validate(&batch);
        if let Ok(b) = RecordBatchRef::new(&batch) {
            let _ = b.records();
        }
    }

    #[test]
    fn records_round_trip(
        events in proptest::collection::vec(
            (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
             proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
             any::<i32>()),
            1..20),
        compression in prop_oneof![Just(Compression::None), Just(Compression::Lz4), Just(Compression::Zstd)],
    ) {
        let mut builder = BatchBuilder::new(compression);
        for (key, value, ts) in &events {
            builder.push(key.as_deref(), value.as_deref(), &[("h", b"v")], i64::from(*ts));
        }
        let batch = builder.build();
        validate(&batch).unwrap();
        let records = RecordBatchRef::new(&batch).unwrap().records().unwrap();
        prop_assert_eq!(records.len(), events.len());
        for (i, (record, (key, value, ts))) in records.iter().zip(&events).enumerate() {
            prop_assert_eq!(record.offset, Offset(i as u64));
            prop_assert_eq!(&record.key, key);
            prop_assert_eq!(&record.value, value);
            prop_assert_eq!(record.timestamp, i64::from(*ts));
        }
    }
}
