//! The Raft file formats: round trips, versions newer than this build, and damage.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{BasicNode, EntryPayload, Membership, SnapshotMeta, StoredMembership, Vote};
use vltava_messages::metadata_records::{METADATA_RECORDS_VERSION, MetadataBatch};

use super::super::codec::{
    self, DecodeError, ENTRY_FORMAT_VERSION, SNAPSHOT_FORMAT_VERSION, STATE_FORMAT_VERSION,
};
use super::*;

fn unsupported(e: Result<impl std::fmt::Debug, DecodeError>) -> (&'static str, u16, u16) {
    match e {
        Err(DecodeError::UnsupportedVersion {
            format,
            found,
            supported,
        }) => (format, found, supported),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

fn corrupt(e: Result<impl std::fmt::Debug, DecodeError>) -> &'static str {
    match e {
        Err(DecodeError::Corrupt(reason)) => reason,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn snapshot_meta() -> SnapshotMeta<RaftNodeId, BasicNode> {
    SnapshotMeta {
        last_log_id: Some(log_id(3, 2, 41)),
        last_membership: StoredMembership::new(Some(log_id(2, 1, 7)), membership_of(&[1, 2, 3])),
        snapshot_id: "3-41-abc".to_owned(),
    }
}

/// Rewrites a snapshot's trailing CRC after a test edited its bytes, so that the edit is
/// seen as written, not as damage.
fn reseal(bytes: &mut [u8]) {
    let body_len = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..body_len]);
    bytes[body_len..].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn entries_round_trip() {
    let joint = Membership::new(
        vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([2, 3, 4])],
        BTreeMap::from([
            (1, BasicNode::new("a:1")),
            (2, BasicNode::new("b:2")),
            (3, BasicNode::new("c:3")),
            (4, BasicNode::new("d:4")),
            // A learner: in the nodes, in no config.
            (9, BasicNode::new("learner.example:9421")),
        ]),
    );
    let entries = [
        blank(0, 0),
        membership(1, 1, &[1, 2, 3]),
        normal(2, 2, vec![topic("orders", 10), topic("payments", 0)]),
        normal(2, 3, vec![]),
        openraft::Entry {
            log_id: log_id(7, 4, u64::MAX),
            payload: EntryPayload::Membership(joint),
        },
    ];
    for entry in entries {
        let body = codec::encode_entry(&entry);
        let decoded = codec::decode_entry(&body).unwrap();
        assert_eq!(decoded.log_id, entry.log_id);
        assert_eq!(decoded.payload, entry.payload);
    }
}

#[test]
fn state_files_round_trip() {
    for vote in [
        Vote::new(0, 0),
        Vote::new(5, 2),
        Vote::new_committed(u64::MAX, u64::MAX),
    ] {
        assert_eq!(
            codec::decode_vote(&codec::encode_vote(&vote)).unwrap(),
            vote
        );
    }
    for id in [None, Some(log_id(0, 0, 0)), Some(log_id(9, 3, 12_345))] {
        let bytes = codec::encode_log_id_file(id.as_ref());
        assert_eq!(codec::decode_log_id_file(&bytes, "committed").unwrap(), id);
    }
}

#[test]
fn snapshots_round_trip_crc_included() {
    let meta = snapshot_meta();
    let batch = MetadataBatch {
        records: vec![topic("orders", 100), topic("payments", 0)],
    };
    let bytes = codec::encode_snapshot(&meta, &batch);
    let body_len = bytes.len() - 4;
    assert_eq!(
        bytes[body_len..],
        crc32c::crc32c(&bytes[..body_len]).to_be_bytes(),
        "the CRC the file ends with is the one checkpoint::write_atomic appends"
    );
    let (decoded_meta, decoded_batch) = codec::decode_snapshot(&bytes).unwrap();
    assert_eq!(decoded_meta, meta);
    assert_eq!(decoded_batch, batch);

    let empty = SnapshotMeta::default();
    let bytes = codec::encode_snapshot(&empty, &MetadataBatch::default());
    assert_eq!(codec::decode_snapshot(&bytes).unwrap().0, empty);
}

#[test]
fn a_newer_entry_version_is_unsupported() {
    let mut body = codec::encode_entry(&blank(1, 1));
    body[0] = ENTRY_FORMAT_VERSION + 1;
    assert_eq!(
        unsupported(codec::decode_entry(&body)),
        (
            "log entry",
            u16::from(ENTRY_FORMAT_VERSION) + 1,
            u16::from(ENTRY_FORMAT_VERSION)
        )
    );
}

#[test]
fn a_newer_record_batch_inside_an_entry_is_unsupported() {
    let mut body = codec::encode_entry(&normal(1, 1, vec![topic("t", 0)]));
    // The batch follows the fixed part: its version is the first two bytes of the payload.
    let at = codec::ENTRY_FIXED_BYTES;
    body[at..at + 2].copy_from_slice(&(METADATA_RECORDS_VERSION + 1).to_be_bytes());
    assert_eq!(
        unsupported(codec::decode_entry(&body)),
        (
            "metadata batch",
            METADATA_RECORDS_VERSION + 1,
            METADATA_RECORDS_VERSION
        )
    );
}

#[test]
fn a_newer_snapshot_or_batch_version_is_unsupported_not_corrupt() {
    let batch = MetadataBatch {
        records: vec![topic("t", 0)],
    };
    let mut bytes = codec::encode_snapshot(&snapshot_meta(), &batch);
    bytes[8..10].copy_from_slice(&(SNAPSHOT_FORMAT_VERSION + 1).to_be_bytes());
    reseal(&mut bytes);
    assert_eq!(
        unsupported(codec::decode_snapshot(&bytes)),
        (
            "snapshot",
            SNAPSHOT_FORMAT_VERSION + 1,
            SNAPSHOT_FORMAT_VERSION
        )
    );

    let mut bytes = codec::encode_snapshot(&snapshot_meta(), &batch);
    let batch_at = bytes.len() - 4 - batch.encode().len();
    bytes[batch_at..batch_at + 2].copy_from_slice(&(METADATA_RECORDS_VERSION + 1).to_be_bytes());
    reseal(&mut bytes);
    assert_eq!(
        unsupported(codec::decode_snapshot(&bytes)).0,
        "metadata batch"
    );
}

#[test]
fn newer_state_files_are_unsupported() {
    let mut vote = codec::encode_vote(&Vote::new(1, 1));
    vote[0] = STATE_FORMAT_VERSION + 1;
    assert_eq!(unsupported(codec::decode_vote(&vote)).0, "vote file");
    let mut committed = codec::encode_log_id_file(None);
    committed[0] = STATE_FORMAT_VERSION + 1;
    assert_eq!(
        unsupported(codec::decode_log_id_file(&committed, "committed file")).0,
        "committed file"
    );
}

#[test]
fn damage_is_corrupt() {
    // An entry kind this version does not have: a new kind comes with a new version.
    let mut body = codec::encode_entry(&blank(1, 1));
    *body.last_mut().unwrap() = 7;
    assert_eq!(corrupt(codec::decode_entry(&body)), "unknown entry kind");
    // Version 0 was never written.
    let mut body = codec::encode_entry(&blank(1, 1));
    body[0] = 0;
    corrupt(codec::decode_entry(&body));
    // A membership cut short.
    let body = codec::encode_entry(&membership(1, 1, &[1, 2, 3]));
    corrupt(codec::decode_entry(&body[..body.len() - 3]));
    // A membership whose node count is past the bound is refused before anything is read
    // for it.
    let mut body = codec::encode_entry(&blank(1, 1));
    *body.last_mut().unwrap() = 2;
    body.extend_from_slice(&[1, 0xff, 0xff]);
    assert_eq!(
        corrupt(codec::decode_entry(&body)),
        "membership config names too many nodes"
    );
    // A damaged record batch inside a well-formed entry.
    let mut body = codec::encode_entry(&normal(1, 1, vec![topic("t", 0)]));
    body.truncate(body.len() - 1);
    assert!(matches!(
        codec::decode_entry(&body),
        Err(DecodeError::Batch(_))
    ));
    // A vote whose flag is neither 0 nor 1.
    let mut vote = codec::encode_vote(&Vote::new(1, 1));
    *vote.last_mut().unwrap() = 2;
    corrupt(codec::decode_vote(&vote));

    // Snapshots: a flipped bit anywhere fails the CRC; a CRC-valid snapshot of the wrong kind
    // fails its magic.
    let bytes = codec::encode_snapshot(&snapshot_meta(), &MetadataBatch::default());
    for at in [0, 9, bytes.len() / 2, bytes.len() - 1] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x10;
        assert_eq!(
            corrupt(codec::decode_snapshot(&damaged)),
            "snapshot checksum mismatch"
        );
    }
    let mut wrong = bytes.clone();
    wrong[0] = b'X';
    reseal(&mut wrong);
    assert_eq!(corrupt(codec::decode_snapshot(&wrong)), "not a snapshot");
    corrupt(codec::decode_snapshot(&bytes[..3]));
}
