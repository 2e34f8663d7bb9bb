//! The state machine: applying and publishing, the image's records, snapshots built,
//! installed and reopened, and snapshots it must refuse.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{RaftSnapshotBuilder, SnapshotMeta, StoredMembership};
use vltava_messages::metadata_records::{
    METADATA_RECORDS_VERSION, MetadataBatch, MetadataBatchApplied, MetadataRecord,
};
use vltava_messages::{ProducerEpoch, ProducerId};
use vltava_storage::sim::SimStorage;

use super::super::codec::{self, SNAPSHOT_FORMAT_VERSION};
use super::super::state_machine::SNAPSHOT_FILE;
use super::super::{RaftStoreError, StateMachine};
use super::*;
use crate::metadata::MetadataImage;

fn open(sim: &SimStorage) -> Result<StateMachine, RaftStoreError> {
    StateMachine::open(Arc::new(sim.clone()), &raft_dir(), "cluster-a")
}

/// Records touching every part of the image.
fn rich_records() -> Vec<MetadataRecord> {
    vec![
        MetadataRecord::NodeRegistered {
            node_id: 1,
            host: "10.0.0.1".into(),
            port: 9420,
            incarnation: 0,
        },
        MetadataRecord::NodeRegistered {
            node_id: 2,
            host: "10.0.0.2".into(),
            port: 9420,
            incarnation: 0,
        },
        topic("orders", 0),
        MetadataRecord::PartitionsAdded {
            topic: "orders".into(),
            partitions: 5,
        },
        MetadataRecord::TopicConfigChanged {
            topic: "orders".into(),
            set: BTreeMap::from([("retention.ms".into(), "1000".into())]),
            removed: vec!["padding".into()],
        },
        MetadataRecord::PartitionChange {
            topic: "orders".into(),
            partition: 4,
            leader: Some(2),
            leader_epoch: 3,
            partition_epoch: 0,
            replicas: vec![2, 1],
            isr: vec![2],
            target_replicas: None,
        },
        topic("gone", 0),
        MetadataRecord::TopicDeleted {
            name: "gone".into(),
        },
        MetadataRecord::ProducerIdsReserved { end: 2000 },
        MetadataRecord::ProducerEpochBumped {
            producer_id: ProducerId(7),
            epoch: ProducerEpoch(4),
        },
        MetadataRecord::ProducerIdRetired {
            producer_id: ProducerId(8),
        },
    ]
}

#[test]
fn an_images_records_rebuild_it() {
    let mut image = MetadataImage::default();
    for record in rich_records() {
        image.apply(&record);
    }
    let mut rebuilt = MetadataImage::default();
    for record in image.to_records() {
        rebuilt.apply(&record);
    }
    rebuilt.version = image.version;
    assert_eq!(rebuilt, image);
    assert!(image.to_records().len() < rich_records().len());
    assert!(MetadataImage::default().to_records().is_empty());
}

#[tokio::test]
async fn apply_publishes_an_image_whose_version_is_the_last_index() {
    let sim = SimStorage::new();
    let mut sm = open(&sim).unwrap();
    let mut watch = sm.subscribe();
    assert_eq!(watch.borrow_and_update().version, 0);
    assert_eq!(watch.borrow().cluster_id, "cluster-a");

    let replies = sm
        .apply([
            blank(0, 0),
            membership(1, 1, &[1, 2, 3]),
            normal(1, 2, rich_records()[..4].to_vec()),
        ])
        .await
        .unwrap();
    assert_eq!(
        replies,
        [0, 1, 2].map(|version| MetadataBatchApplied { version })
    );
    assert!(watch.has_changed().unwrap());
    let image = watch.borrow_and_update().clone();
    assert_eq!(image.version, 2);
    assert_eq!(image.topics["orders"].partitions.len(), 5);
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 2)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1, 1)));

    sm.apply([normal(2, 3, rich_records()[4..].to_vec())])
        .await
        .unwrap();
    let image = watch.borrow_and_update().clone();
    assert_eq!(image.version, 3);
    assert_eq!(image.topics["orders"].partitions[4].leader, Some(2));
    assert!(!image.topics.contains_key("gone"));
}

#[tokio::test]
async fn a_built_snapshot_is_durable_and_a_reopened_state_machine_starts_from_it() {
    let sim = SimStorage::new();
    let mut sm = open(&sim).unwrap();
    sm.apply([
        membership(1, 1, &[1, 2, 3]),
        normal(1, 2, rich_records()),
        blank(2, 3),
    ])
    .await
    .unwrap();
    let expected = sm.image();
    let mut builder = sm.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(2, 1, 3)));
    assert_eq!(
        snapshot.meta.last_membership.log_id(),
        &Some(log_id(1, 1, 1))
    );
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(
        current.snapshot.into_inner(),
        sim.live_contents(&raft_dir().join(SNAPSHOT_FILE)).unwrap(),
        "the bytes sent to followers are the file's"
    );

    // The snapshot was fsynced and renamed into place before build_snapshot returned.
    let mut reopened =
        StateMachine::open(Arc::new(sim.crash_image(5)), &raft_dir(), "cluster-a").unwrap();
    assert_eq!(reopened.image(), expected);
    assert_eq!(reopened.image().version, 3);
    assert_eq!(
        reopened.applied_state().await.unwrap(),
        (Some(log_id(2, 1, 3)), snapshot.meta.last_membership.clone())
    );
    assert_eq!(
        reopened.get_current_snapshot().await.unwrap().unwrap().meta,
        snapshot.meta
    );
    // And it goes on applying from there.
    reopened
        .apply([normal(2, 4, vec![topic("more", 0)])])
        .await
        .unwrap();
    assert_eq!(reopened.image().version, 4);
}

/// Builds snapshot bytes with `records` at `last`, as a leader would send them.
fn leader_snapshot(
    last: u64,
    records: Vec<MetadataRecord>,
) -> (SnapshotMeta<RaftNodeId, BasicNode>, Vec<u8>) {
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(4, 2, last)),
        last_membership: StoredMembership::new(Some(log_id(1, 1, 1)), membership_of(&[1, 2, 3])),
        snapshot_id: format!("4-{last}-leader"),
    };
    let bytes = codec::encode_snapshot(&meta, &MetadataBatch { records });
    (meta, bytes)
}

#[tokio::test]
async fn an_installed_snapshot_replaces_the_image_and_survives_a_restart() {
    let sim = SimStorage::new();
    let mut sm = open(&sim).unwrap();
    let mut watch = sm.subscribe();
    sm.apply([blank(0, 0), normal(1, 1, vec![topic("old", 0)])])
        .await
        .unwrap();
    // A build taken before the install, finishing after it, must not replace it.
    let mut stale_builder = sm.get_snapshot_builder().await;

    let (meta, bytes) = leader_snapshot(50, rich_records());
    let mut received = sm.begin_receiving_snapshot().await.unwrap();
    received.get_mut().extend_from_slice(&bytes);
    sm.install_snapshot(&meta, received).await.unwrap();

    let image = watch.borrow_and_update().clone();
    assert_eq!(image.version, 50);
    assert!(!image.topics.contains_key("old"));
    assert_eq!(image.nodes.len(), 2);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(4, 2, 50)));

    let stale = stale_builder.build_snapshot().await.unwrap();
    assert_eq!(stale.meta.last_log_id, Some(log_id(1, 1, 1)));
    assert_eq!(
        sm.get_current_snapshot().await.unwrap().unwrap().meta,
        meta,
        "the current snapshot never goes back"
    );

    let reopened =
        StateMachine::open(Arc::new(sim.crash_image(11)), &raft_dir(), "cluster-a").unwrap();
    assert_eq!(reopened.image(), image);
}

#[tokio::test]
async fn a_snapshot_from_a_newer_build_is_refused_on_install_and_at_open() {
    let sim = SimStorage::new();
    let mut sm = open(&sim).unwrap();
    sm.apply([blank(0, 0)]).await.unwrap();
    let before = sm.image();

    let (meta, mut bytes) = leader_snapshot(9, vec![topic("t", 0)]);
    let batch_len = MetadataBatch {
        records: vec![topic("t", 0)],
    }
    .encode()
    .len();
    let at = bytes.len() - 4 - batch_len;
    bytes[at..at + 2].copy_from_slice(&(METADATA_RECORDS_VERSION + 1).to_be_bytes());
    let body_len = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..body_len]);
    bytes[body_len..].copy_from_slice(&crc.to_be_bytes());
    let error = sm
        .install_snapshot(&meta, Box::new(Cursor::new(bytes.clone())))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("newer than this build reads"),
        "{error}"
    );
    assert_eq!(sm.image(), before, "nothing was applied");
    assert!(sm.get_current_snapshot().await.unwrap().is_none());

    // The same bytes on disk (a rollback after a newer build wrote them): open refuses.
    let path = raft_dir().join(SNAPSHOT_FILE);
    vltava_storage::checkpoint::write_atomic(&sim, &path, &bytes[..body_len]).unwrap();
    assert!(matches!(
        open(&sim),
        Err(RaftStoreError::UnsupportedVersion {
            format: "metadata batch",
            found,
            ..
        }) if found == METADATA_RECORDS_VERSION + 1
    ));
    let (_, mut newer_format) = leader_snapshot(9, vec![]);
    newer_format[8..10].copy_from_slice(&(SNAPSHOT_FORMAT_VERSION + 1).to_be_bytes());
    let body_len = newer_format.len() - 4;
    vltava_storage::checkpoint::write_atomic(&sim, &path, &newer_format[..body_len]).unwrap();
    assert!(matches!(
        open(&sim),
        Err(RaftStoreError::UnsupportedVersion {
            format: "snapshot",
            ..
        })
    ));
}

#[tokio::test]
async fn a_damaged_or_mismatched_snapshot_is_refused_as_corrupt() {
    let sim = SimStorage::new();
    let mut sm = open(&sim).unwrap();
    let (meta, bytes) = leader_snapshot(9, vec![topic("t", 0)]);

    let mut damaged = bytes.clone();
    damaged[20] ^= 4;
    let error = sm
        .install_snapshot(&meta, Box::new(Cursor::new(damaged)))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("checksum mismatch"), "{error}");

    let mut other_meta = meta.clone();
    other_meta.last_log_id = Some(log_id(4, 2, 10));
    let error = sm
        .install_snapshot(&other_meta, Box::new(Cursor::new(bytes.clone())))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("does not match the metadata"),
        "{error}"
    );
    assert_eq!(sm.image().version, 0);

    // On disk: a snapshot may cover purged entries, so a damaged one is not taken as
    // missing.
    sm.install_snapshot(&meta, Box::new(Cursor::new(bytes)))
        .await
        .unwrap();
    let path = raft_dir().join(SNAPSHOT_FILE);
    let mut file = sim.live_contents(&path).unwrap();
    file[30] ^= 1;
    sim.overwrite(&path, file);
    assert!(matches!(
        open(&sim),
        Err(RaftStoreError::Corrupt {
            reason: "snapshot checksum mismatch",
            ..
        })
    ));
}
