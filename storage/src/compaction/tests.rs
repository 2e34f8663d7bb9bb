use super::*;

#[test]
fn the_key_map_keeps_the_newest_offset_and_refuses_new_keys_when_full() {
    let hasher = KeyHasher::new();
    // 4 slots of room: at most 3 keys (90 % of 4, and always one slot free).
    let mut map = KeyMap::new(1000, KEY_MAP_SLOT_BYTES * 4);
    assert_eq!(map.bytes(), KEY_MAP_SLOT_BYTES * 4);
    let keys: Vec<KeyHash> = (0..4u8).map(|i| hasher.hash(&[i])).collect();
    assert!(map.insert_newest(keys[0], Offset(5)));
    assert!(map.insert_newest(keys[0], Offset(3)));
    assert_eq!(
        map.get(keys[0]),
        Some(Offset(5)),
        "an older offset never wins"
    );
    assert!(map.insert_newest(keys[1], Offset(6)));
    assert!(map.insert_newest(keys[2], Offset(7)));
    assert!(map.is_full());
    assert!(
        !map.insert_newest(keys[3], Offset(8)),
        "a new key does not fit"
    );
    assert_eq!(map.get(keys[3]), None);
    assert!(
        map.insert_newest(keys[1], Offset(9)),
        "a known key still updates"
    );
    assert_eq!(map.get(keys[1]), Some(Offset(9)));
}

#[test]
fn the_key_map_is_sized_to_the_keys_expected_within_its_bound() {
    let small = KeyMap::new(10, 128 << 20);
    assert!(
        small.bytes() < 1024,
        "ten keys take little: {}",
        small.bytes()
    );
    let bounded = KeyMap::new(u64::MAX / 200, 1 << 20);
    assert!(bounded.bytes() <= 1 << 20);
    assert!(bounded.len_max > 39_000, "90 % of 43,690 slots");
}

#[test]
fn a_commit_record_round_trips_and_rejects_overlapping_ranges() {
    let groups = vec![(Offset(0), Offset(100)), (Offset(100), Offset(250))];
    assert_eq!(decode_commit(&encode_commit(&groups)), Some(groups));
    let overlapping = vec![(Offset(0), Offset(100)), (Offset(50), Offset(250))];
    assert_eq!(decode_commit(&encode_commit(&overlapping)), None);
    assert_eq!(decode_commit(&[COMMIT_VERSION, 0, 0, 0, 1]), None);
}

/// A batch of five records `k0..k4` from producer 7 (epoch 2, base sequence `sequence`), at
/// base offset 50, leader epoch 4.
fn producer_batch(compression: vltava_messages::Compression, sequence: u32) -> Vec<u8> {
    let mut builder = BatchBuilder::new(compression).producer(
        ProducerId(7),
        vltava_messages::ProducerEpoch(2),
        Sequence(sequence),
    );
    for i in 0..5i64 {
        let key = format!("k{i}");
        builder.push(
            Some(key.as_bytes()),
            (i != 3).then_some(b"value".as_slice()),
            &[("h", b"x")],
            1_000 + 10 * i,
        );
    }
    let mut bytes = builder.build();
    batch::set_base_offset(&mut bytes, Offset(50));
    batch::set_partition_leader_epoch(&mut bytes, vltava_messages::LeaderEpoch(4));
    bytes
}

#[test]
fn a_run_keeps_its_records_offsets_codec_producer_and_a_matching_sequence() {
    for compression in [
        vltava_messages::Compression::None,
        vltava_messages::Compression::Lz4,
        vltava_messages::Compression::Zstd,
    ] {
        let original = producer_batch(compression, 100);
        let batch_ref = RecordBatchRef::new(&original).unwrap();
        let records = batch_ref.records().unwrap();
        let run = encode_run(&batch_ref.header, &original, &records, &[2, 3]).unwrap();
        batch::validate(&run).expect("a run passes full validation");
        let header = BatchHeader::parse(&run).unwrap();
        assert_eq!(header.base_offset, Offset(52));
        assert_eq!(header.record_count, 2);
        assert_eq!(header.last_offset_delta, 1);
        assert_eq!(header.compression().unwrap(), compression);
        assert_eq!(header.producer_id, Some(ProducerId(7)));
        assert_eq!(
            header.producer_epoch,
            Some(vltava_messages::ProducerEpoch(2))
        );
        assert_eq!(header.base_sequence, Some(Sequence(102)));
        assert_eq!(
            header.partition_leader_epoch,
            vltava_messages::LeaderEpoch(4)
        );
        assert_eq!(header.max_timestamp, 1_030);
        let decoded = RecordBatchRef::new(&run).unwrap().records().unwrap();
        assert_eq!(decoded, records[2..4].to_vec(), "records are unchanged");
    }
}

#[test]
fn a_runs_base_sequence_wraps_like_the_wire_sequence() {
    let original = producer_batch(vltava_messages::Compression::None, i32::MAX as u32 - 1);
    let batch_ref = RecordBatchRef::new(&original).unwrap();
    let records = batch_ref.records().unwrap();
    let run = encode_run(&batch_ref.header, &original, &records, &[4]).unwrap();
    // i32::MAX - 1 + 4 wraps past i32::MAX to 2.
    assert_eq!(
        BatchHeader::parse(&run).unwrap().base_sequence,
        Some(Sequence(2))
    );
}

#[test]
fn a_run_of_a_log_append_time_batch_keeps_the_batch_timestamp() {
    let mut original = producer_batch(vltava_messages::Compression::Lz4, 0);
    batch::set_log_append_time(&mut original, 77_000);
    let batch_ref = RecordBatchRef::new(&original).unwrap();
    let records = batch_ref.records().unwrap();
    let run = encode_run(&batch_ref.header, &original, &records, &[0, 1]).unwrap();
    let run_ref = RecordBatchRef::new(&run).unwrap();
    assert_eq!(
        run_ref.header.timestamp_type(),
        TimestampType::LogAppendTime
    );
    assert_eq!(run_ref.header.max_timestamp, 77_000);
    assert_eq!(run_ref.records().unwrap(), records[..2].to_vec());
}
