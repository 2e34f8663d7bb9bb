//! Each check against a clean history (which passes) and the same history with exactly that
//! violation (which reports it, and nothing else).

use super::*;

const TOPIC: &str = "orders";
const PARTITION: PartitionId = PartitionId(0);
const KEY: &[u8] = b"k";

/// The value writer 1 wrote at `offset` in the clean history.
fn value(offset: u64) -> Vec<u8> {
    unique_value(1, offset)
}

/// `node`'s log holding writer 1's values at `offsets`.
fn dump(history: &History, node: u32, offsets: std::ops::Range<u64>) {
    let records = offsets
        .map(|o| (Offset(o), KEY.to_vec(), value(o)))
        .collect();
    history.replica_log(NodeId(node), TOPIC, PARTITION, records);
}

/// Writer 1's records at offsets 0 to 2 acknowledged, a fourth one attempted (it timed out)
/// that landed at offset 3; reader c1 read all four; client p1 saw epochs 1, 1, 2; nodes 1
/// and 2 hold all four.
fn clean() -> History {
    let history = History::new();
    for offset in 0..3 {
        history.acknowledged(TOPIC, PARTITION, Offset(offset), KEY, &value(offset));
    }
    history.attempted(TOPIC, PARTITION, KEY, &value(3));
    // Attempted and never landed: allowed.
    history.attempted(TOPIC, PARTITION, KEY, &unique_value(1, 99));
    for offset in 0..4 {
        history.read("c1", TOPIC, PARTITION, Offset(offset), KEY, &value(offset));
    }
    for epoch in [1, 1, 2] {
        history.leader_epoch_seen("p1", TOPIC, PARTITION, LeaderEpoch(epoch));
    }
    dump(&history, 1, 0..4);
    dump(&history, 2, 0..4);
    history
}

/// Every requirement on.
fn strict() -> CheckOptions {
    CheckOptions {
        require_all_acknowledged_read: true,
        replicas_identical: true,
        max_position_resets: Some(0),
        require_reads_written: true,
    }
}

/// Asserts that `report` holds violations of `kind` only, each naming the partition, and
/// returns their text.
fn only(report: &Report, kind: ViolationKind) -> String {
    assert!(!report.is_ok(), "expected {kind:?}, got no violation");
    assert_eq!(report.kinds(), BTreeSet::from([kind]), "{report}");
    for violation in &report.violations {
        assert!(violation.to_string().contains("orders/0"), "{violation}");
    }
    report.to_string()
}

#[test]
fn a_clean_history_passes_every_check() {
    let report = clean().check(strict());
    assert!(report.is_ok(), "{report}");
    report.assert_ok();
    assert!(History::new().check(strict()).is_ok());
}

#[test]
fn an_acknowledged_write_never_read_is_lost() {
    let history = clean();
    history.acknowledged(TOPIC, PARTITION, Offset(4), KEY, &value(4));
    dump(&history, 1, 0..5);
    dump(&history, 2, 0..5);
    let text = only(&history.check(strict()), ViolationKind::Lost);
    assert!(text.contains("offset 4"), "{text}");
    assert!(text.contains("\"w1-s4\""), "{text}");
    // A test that did not read to the end does not ask for it.
    let lenient = CheckOptions {
        require_all_acknowledged_read: false,
        ..strict()
    };
    history.check(lenient).assert_ok();
}

#[test]
fn a_value_at_two_offsets_is_a_duplicate() {
    let history = clean();
    history.read("c1", TOPIC, PARTITION, Offset(4), KEY, &value(2));
    let mut log: Vec<(Offset, Vec<u8>, Vec<u8>)> = (0..4)
        .map(|o| (Offset(o), KEY.to_vec(), value(o)))
        .collect();
    log.push((Offset(4), KEY.to_vec(), value(2)));
    history.replica_log(NodeId(1), TOPIC, PARTITION, log.clone());
    history.replica_log(NodeId(2), TOPIC, PARTITION, log);
    let text = only(&history.check(strict()), ViolationKind::Duplicate);
    assert!(text.contains("offsets 2, 4"), "{text}");
    assert!(text.contains("\"w1-s2\""), "{text}");
}

#[test]
fn an_attempted_write_at_two_offsets_is_a_duplicate() {
    let history = clean();
    // The attempted value 3 landed at offset 3, and a retry of it at offset 4.
    history.read("c1", TOPIC, PARTITION, Offset(4), KEY, &value(3));
    let mut log: Vec<(Offset, Vec<u8>, Vec<u8>)> = (0..4)
        .map(|o| (Offset(o), KEY.to_vec(), value(o)))
        .collect();
    log.push((Offset(4), KEY.to_vec(), value(3)));
    history.replica_log(NodeId(1), TOPIC, PARTITION, log.clone());
    history.replica_log(NodeId(2), TOPIC, PARTITION, log);
    let text = only(&history.check(strict()), ViolationKind::Duplicate);
    assert!(text.contains("offsets 3, 4"), "{text}");
}

#[test]
fn two_values_read_at_one_unacknowledged_offset_conflict() {
    let history = clean();
    // Offset 3 holds the attempted value for c1 and the replicas, another one for c2.
    history.attempted(TOPIC, PARTITION, KEY, &unique_value(2, 0));
    history.read("c2", TOPIC, PARTITION, Offset(3), KEY, &unique_value(2, 0));
    let text = only(&history.check(strict()), ViolationKind::Conflict);
    assert!(text.contains("offset 3"), "{text}");
    assert!(
        text.contains("\"w1-s3\"") && text.contains("\"w2-s0\""),
        "{text}"
    );
}

#[test]
fn an_acknowledged_offset_read_with_another_value_is_overwritten() {
    let history = clean();
    history.attempted(TOPIC, PARTITION, KEY, &unique_value(2, 0));
    history.read("c2", TOPIC, PARTITION, Offset(1), KEY, &unique_value(2, 0));
    let text = only(
        &history.check(strict()),
        ViolationKind::AcknowledgedOverwritten,
    );
    assert!(text.contains("offset 1"), "{text}");
    assert!(
        text.contains("acknowledged key \"k\" value \"w1-s1\"") && text.contains("\"w2-s0\""),
        "{text}"
    );
}

#[test]
fn an_acknowledged_offset_holding_another_value_in_the_replicas_is_overwritten() {
    let history = clean();
    let log: Vec<(Offset, Vec<u8>, Vec<u8>)> = (0..4)
        .map(|o| {
            let value = if o == 1 { unique_value(2, 0) } else { value(o) };
            (Offset(o), KEY.to_vec(), value)
        })
        .collect();
    history.replica_log(NodeId(1), TOPIC, PARTITION, log.clone());
    history.replica_log(NodeId(2), TOPIC, PARTITION, log);
    let text = only(
        &history.check(strict()),
        ViolationKind::AcknowledgedOverwritten,
    );
    assert!(text.contains("replica log of node"), "{text}");
}

#[test]
fn a_reader_going_back_within_a_partition_is_out_of_order() {
    let history = clean();
    history.read("c2", TOPIC, PARTITION, Offset(2), KEY, &value(2));
    history.read("c2", TOPIC, PARTITION, Offset(0), KEY, &value(0));
    let text = only(&history.check(strict()), ViolationKind::OutOfOrder);
    assert!(
        text.contains("c2 read offset 0 (key \"k\" value \"w1-s0\") after offset 2"),
        "{text}"
    );

    // Reading one offset twice is not an increase either.
    let history = clean();
    history.read("c2", TOPIC, PARTITION, Offset(1), KEY, &value(1));
    history.read("c2", TOPIC, PARTITION, Offset(1), KEY, &value(1));
    only(&history.check(strict()), ViolationKind::OutOfOrder);
}

#[test]
fn a_seek_or_reset_restarts_a_readers_order_and_other_readers_do_not_interleave() {
    let history = clean();
    history.read("c2", TOPIC, PARTITION, Offset(2), KEY, &value(2));
    // Another reader's earlier offset does not count against c2.
    history.read("c3", TOPIC, PARTITION, Offset(0), KEY, &value(0));
    history.seeked("c2", TOPIC, PARTITION, Offset(3), Offset(0));
    history.read("c2", TOPIC, PARTITION, Offset(0), KEY, &value(0));
    history.check(strict()).assert_ok();

    history.position_reset("c2", TOPIC, PARTITION, Offset(1), Offset(0));
    history.read("c2", TOPIC, PARTITION, Offset(0), KEY, &value(0));
    let resets_allowed = CheckOptions {
        max_position_resets: Some(1),
        ..strict()
    };
    history.check(resets_allowed).assert_ok();
}

#[test]
fn a_leader_epoch_going_back_for_one_client_is_reported() {
    let history = clean();
    // Another client that has not seen epoch 2 yet is not behind p1.
    history.leader_epoch_seen("p2", TOPIC, PARTITION, LeaderEpoch(1));
    history.check(strict()).assert_ok();
    history.leader_epoch_seen("p1", TOPIC, PARTITION, LeaderEpoch(1));
    let text = only(&history.check(strict()), ViolationKind::EpochRegressed);
    assert!(text.contains("p1 saw epoch 1 after epoch 2"), "{text}");
}

#[test]
fn a_read_offset_missing_between_a_replicas_offsets_is_truncated() {
    let history = clean();
    let log = [0, 1, 3]
        .into_iter()
        .map(|o| (Offset(o), KEY.to_vec(), value(o)))
        .collect();
    history.replica_log(NodeId(2), TOPIC, PARTITION, log);
    let text = only(&history.check(strict()), ViolationKind::Truncated);
    assert!(
        text.contains("offset 2") && text.contains("node 2, which holds offset 3"),
        "{text}"
    );
}

#[test]
fn a_read_offset_past_the_end_of_every_replica_log_is_truncated() {
    let history = clean();
    dump(&history, 1, 0..2);
    dump(&history, 2, 0..2);
    let report = history.check(strict());
    let text = only(&report, ViolationKind::Truncated);
    assert_eq!(report.violations.len(), 2, "{text}");
    assert!(text.contains("past the end of every replica log"), "{text}");
}

#[test]
fn offsets_below_a_replicas_log_start_or_past_a_lagging_replicas_end_are_not_truncated() {
    let history = clean();
    // Retention removed offsets 0 and 1 from node 1; node 2 lags at offset 2.
    dump(&history, 1, 2..4);
    dump(&history, 2, 0..2);
    let lagging = CheckOptions {
        replicas_identical: false,
        ..strict()
    };
    history.check(lagging).assert_ok();
}

#[test]
fn replicas_holding_different_values_at_one_offset_disagree() {
    let history = clean();
    let log = |writer| -> Vec<(Offset, Vec<u8>, Vec<u8>)> {
        let mut log: Vec<_> = (0..4)
            .map(|o| (Offset(o), KEY.to_vec(), value(o)))
            .collect();
        log.push((Offset(4), KEY.to_vec(), unique_value(writer, 4)));
        log
    };
    history.replica_log(NodeId(1), TOPIC, PARTITION, log(1));
    history.replica_log(NodeId(2), TOPIC, PARTITION, log(2));
    let text = only(&history.check(strict()), ViolationKind::ReplicasDisagree);
    assert!(
        text.contains("offset 4: node 1 holds key \"k\" value \"w1-s4\" but node 2 holds"),
        "{text}"
    );
}

#[test]
fn replica_logs_ending_apart_differ_only_when_required_identical() {
    let history = clean();
    dump(&history, 3, 0..3);
    let lagging = CheckOptions {
        replicas_identical: false,
        ..strict()
    };
    history.check(lagging).assert_ok();
    let report = history.check(strict());
    let text = only(&report, ViolationKind::ReplicaLogEndsDiffer);
    // Node 3 against node 1 and against node 2.
    assert_eq!(report.violations.len(), 2, "{text}");
    assert!(text.contains("node 1 ends at 4 but node 3 at 3"), "{text}");
}

#[test]
fn position_resets_past_the_allowed_count_are_reported() {
    let history = clean();
    history.position_reset("c1", TOPIC, PARTITION, Offset(7), Offset(4));
    let text = only(
        &history.check(strict()),
        ViolationKind::TooManyPositionResets,
    );
    assert!(text.contains("c1 reset from offset 7 to 4"), "{text}");
    let allowed = CheckOptions {
        max_position_resets: Some(1),
        ..strict()
    };
    history.check(allowed).assert_ok();
    let uncounted = CheckOptions {
        max_position_resets: None,
        ..strict()
    };
    history.check(uncounted).assert_ok();
}

#[test]
fn a_value_read_that_no_write_produced_is_unwritten_when_every_write_was_recorded() {
    let history = clean();
    history.read("c1", TOPIC, PARTITION, Offset(4), KEY, b"stray");
    let mut log: Vec<(Offset, Vec<u8>, Vec<u8>)> = (0..4)
        .map(|o| (Offset(o), KEY.to_vec(), value(o)))
        .collect();
    log.push((Offset(4), KEY.to_vec(), b"stray".to_vec()));
    history.replica_log(NodeId(1), TOPIC, PARTITION, log.clone());
    history.replica_log(NodeId(2), TOPIC, PARTITION, log);
    let text = only(&history.check(strict()), ViolationKind::Unwritten);
    assert!(
        text.contains("offset 4") && text.contains("\"stray\""),
        "{text}"
    );
    let unrecorded_writes = CheckOptions {
        require_reads_written: false,
        ..strict()
    };
    history.check(unrecorded_writes).assert_ok();
}

#[test]
fn threads_record_into_one_history() {
    let history = History::new();
    let record = |reads: bool| {
        (0..4u32)
            .map(|partition| {
                let history = history.clone();
                std::thread::spawn(move || {
                    for offset in 0..100 {
                        let value = unique_value(partition, offset);
                        let at = PartitionId(partition);
                        if reads {
                            history.read("c1", TOPIC, at, Offset(offset), KEY, &value);
                        } else {
                            history.acknowledged(TOPIC, at, Offset(offset), KEY, &value);
                        }
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    for writer in record(false) {
        writer.join().expect("a writer thread");
    }
    // Every acknowledgement from every thread is there: all 400 are lost until read.
    assert_eq!(history.check(strict()).violations.len(), 400);
    for reader in record(true) {
        reader.join().expect("a reader thread");
    }
    history.check(strict()).assert_ok();
}

#[test]
fn assert_ok_panics_with_the_first_fifty_violations_and_a_count() {
    let history = History::new();
    for offset in 0..60 {
        history.acknowledged(TOPIC, PARTITION, Offset(offset), KEY, &value(offset));
    }
    let report = history.check(strict());
    assert_eq!(report.violations.len(), 60);
    let panic = std::panic::catch_unwind(|| report.assert_ok()).expect_err("60 lost writes");
    let message = panic
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.starts_with("history check: 60 violations"),
        "{message}"
    );
    assert_eq!(message.matches("\n  lost: orders/0 offset").count(), 50);
    assert!(message.contains("offset 49:") && !message.contains("offset 50:"));
    assert!(message.ends_with("... and 10 more"), "{message}");
}

#[test]
fn unique_values_parse_back() {
    assert_eq!(unique_value(3, 17), b"w3-s17");
    assert_eq!(parse_unique_value(&unique_value(3, 17)), Some((3, 17)));
    assert_eq!(
        parse_unique_value(&unique_value(u32::MAX, u64::MAX)),
        Some((u32::MAX, u64::MAX))
    );
    for other in [
        &b"w3-s"[..],
        b"w-s1",
        b"x3-s1",
        b"w3-s1x",
        b"w+3-s1",
        b"\xff",
    ] {
        assert_eq!(parse_unique_value(other), None, "{other:?}");
    }
}

#[test]
fn payloads_show_as_text_or_hex() {
    let text = Payload {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    };
    assert_eq!(text.to_string(), "key \"k\" value \"v\"");
    let binary = Payload {
        key: Vec::new(),
        value: vec![0, 255],
    };
    assert_eq!(binary.to_string(), "key \"\" value 0x00ff");
    let long = Payload {
        key: Vec::new(),
        value: vec![b'a'; PAYLOAD_SHOWN_BYTES_MAX + 1],
    };
    assert!(
        long.to_string()
            .ends_with(&format!("..({} bytes)", PAYLOAD_SHOWN_BYTES_MAX + 1))
    );
}

/// A written history has one line per event, notes in their place among the clients' events,
/// then one line per replica record; the checks ignore notes.
#[test]
fn a_written_history_has_one_line_per_event_then_the_replica_logs() {
    let history = History::new();
    history.acknowledged(TOPIC, PARTITION, Offset(0), KEY, &value(0));
    history.note("node 2 killed");
    history.read("c1", TOPIC, PARTITION, Offset(0), KEY, &value(0));
    dump(&history, 1, 0..1);
    let mut out = Vec::new();
    assert_eq!(history.write_to(&mut out).unwrap(), 4);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            r#"0 acknowledged orders/0 offset 0 key "k" value "w1-s0""#,
            "1 note: node 2 killed",
            r#"2 read by c1 orders/0 offset 0 key "k" value "w1-s0""#,
            r#"replica log of node 1 orders/0 offset 0 key "k" value "w1-s0""#,
        ]
    );
    history.check(strict()).assert_ok();
}
