//! The Partition actor and its supervisor, through their handles, on real files.

use std::sync::Arc;
use std::time::Duration;

use vltava_actors::directory::{ActorDirectory, ActorStatus};
use vltava_actors::metadata::producer_ids::{
    PRODUCER_ID_BLOCK, ProducerIdsImage, ProducerRegistry,
};
use vltava_actors::partition::supervisor::{
    PartitionRegistry, PartitionSlot, PartitionSupervisor, PartitionSupervisorHandle, RESTARTS_MAX,
};
use vltava_actors::partition::{Acks, Durability, OffsetSpec, PartitionArgs, PartitionError};
use vltava_messages::metadata_records::MetadataRecord;
use vltava_messages::{
    BatchBuilder, Compression, LeaderEpoch, Offset, PartitionId, ProducerEpoch, ProducerId,
    Sequence,
};
use vltava_storage::{Flusher, LogConfig};

/// Actor names are process-wide in ractor, so each test uses its own node prefix, as nodes
/// in one process would.
fn args(
    node: &str,
    dir: &std::path::Path,
    directory: &ActorDirectory,
    durability: Durability,
) -> PartitionArgs {
    PartitionArgs {
        id: format!("{node}/partition/t-0"),
        parent: format!("{node}/partitions"),
        topic: Arc::from("t"),
        partition: PartitionId(0),
        dir: dir.join("t-0"),
        log_config: LogConfig::default(),
        durability,
        leader_epoch: LeaderEpoch(1),
        flusher: Arc::new(Flusher::new(1, 64)),
        directory: directory.clone(),
        producer_ids: producers_issued(8),
    }
}

/// A registry in which ids below `issued_end` were handed out, all at epoch 0.
fn producers_issued(issued_end: u64) -> ProducerRegistry {
    let registry = ProducerRegistry::default();
    let mut image = ProducerIdsImage::default();
    image.apply(&MetadataRecord::ProducerIdsReserved {
        end: PRODUCER_ID_BLOCK,
    });
    registry.publish(&image, issued_end);
    registry
}

fn batch(values: &[&str]) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    for v in values {
        b.push(None, Some(v.as_bytes()), &[], 1_000);
    }
    b.build()
}

fn idempotent_batch(value: &str, sequence: u32, epoch: u16) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None).producer(
        ProducerId(7),
        ProducerEpoch(epoch),
        Sequence(sequence),
    );
    b.push(None, Some(value.as_bytes()), &[], 1_000);
    b.build()
}

async fn supervisor(
    node: &str,
    directory: &ActorDirectory,
) -> (PartitionSupervisorHandle, PartitionRegistry) {
    let registry = PartitionRegistry::default();
    let handle = PartitionSupervisor::start(
        format!("{node}/partitions"),
        &format!("{node}/node"),
        directory.clone(),
        registry.clone(),
        None,
    )
    .await
    .unwrap();
    (handle, registry)
}

fn online(registry: &PartitionRegistry) -> vltava_actors::partition::PartitionHandle {
    match registry.get("t", PartitionId(0)) {
        Some(PartitionSlot::Online(h)) => h,
        other => panic!("partition not online: {other:?}"),
    }
}

fn values(records: &[u8]) -> Vec<String> {
    vltava_messages::batch::split_batches(records)
        .flat_map(|b| b.unwrap().records().unwrap())
        .map(|r| String::from_utf8(r.value.unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_answers_after_the_flush_and_fetch_sees_only_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let directory = ActorDirectory::new();
    let (sup, registry) = supervisor("n1", &directory).await;
    sup.start_partition(args("n1", dir.path(), &directory, Durability::Fsync))
        .await
        .unwrap();
    let p = online(&registry);
    let ok = p
        .produce(batch(&["a", "b"]), Acks::All, None)
        .await
        .unwrap();
    assert_eq!((ok.base_offset, ok.last_offset), (Offset(0), Offset(1)));
    assert!(
        *p.high_watermark().borrow() >= Offset(2),
        "acks=all answers once below the high watermark"
    );
    let ok = p
        .produce(batch(&["c"]), Acks::Leader, Some(LeaderEpoch(1)))
        .await
        .unwrap();
    assert_eq!(ok.base_offset, Offset(2));
    let mut hw = p.high_watermark();
    tokio::time::timeout(Duration::from_secs(5), hw.wait_for(|o| *o >= Offset(3)))
        .await
        .unwrap()
        .unwrap();
    let fetched = p.fetch(Offset(0), 1 << 20, None).await.unwrap();
    assert_eq!(values(&fetched.records), ["a", "b", "c"]);
    assert_eq!(fetched.high_watermark, Offset(3));
    assert_eq!(
        p.list_offset(OffsetSpec::Earliest, None)
            .await
            .unwrap()
            .offset,
        Some(Offset(0))
    );
    assert_eq!(
        p.list_offset(OffsetSpec::Latest, None)
            .await
            .unwrap()
            .offset,
        Some(Offset(3))
    );
    assert_eq!(
        p.list_offset(OffsetSpec::Timestamp(1_000), None)
            .await
            .unwrap()
            .offset,
        Some(Offset(0))
    );
    assert_eq!(
        p.list_offset(OffsetSpec::Timestamp(2_000), None)
            .await
            .unwrap()
            .offset,
        None
    );
    assert!(matches!(
        p.fetch(Offset(0), 10, Some(LeaderEpoch(0))).await,
        Err(PartitionError::FencedLeaderEpoch { .. })
    ));
    assert!(matches!(
        p.fetch(Offset(0), 10, Some(LeaderEpoch(2))).await,
        Err(PartitionError::UnknownLeaderEpoch { .. })
    ));
    assert!(matches!(
        p.produce(vec![1, 2, 3], Acks::All, None).await,
        Err(PartitionError::Storage(_))
    ));
    sup.actor().stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_gets_its_original_offsets_and_a_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let directory = ActorDirectory::new();
    let (sup, registry) = supervisor("n2", &directory).await;
    let args = args("n2", dir.path(), &directory, Durability::None);
    let producers = args.producer_ids.clone();
    sup.start_partition(args.clone()).await.unwrap();
    let p = online(&registry);
    assert_eq!(
        p.produce(idempotent_batch("x", 0, 0), Acks::All, None)
            .await
            .unwrap()
            .base_offset,
        Offset(0)
    );
    assert_eq!(
        p.produce(idempotent_batch("y", 1, 0), Acks::All, None)
            .await
            .unwrap()
            .base_offset,
        Offset(1)
    );
    assert_eq!(
        p.produce(idempotent_batch("x", 0, 0), Acks::All, None)
            .await
            .unwrap()
            .base_offset,
        Offset(0),
        "a duplicate is not appended"
    );
    assert!(matches!(
        p.produce(idempotent_batch("z", 5, 0), Acks::All, None)
            .await,
        Err(PartitionError::OutOfOrderSequence {
            expected: 2,
            received: 5
        })
    ));
    // The controller bumps producer 7 to epoch 1 (InitProducerId).
    let mut image = ProducerIdsImage::default();
    for record in [
        MetadataRecord::ProducerIdsReserved {
            end: PRODUCER_ID_BLOCK,
        },
        MetadataRecord::ProducerEpochBumped {
            producer_id: ProducerId(7),
            epoch: ProducerEpoch(1),
        },
    ] {
        image.apply(&record);
    }
    producers.publish(&image, 8);
    assert_eq!(
        p.produce(idempotent_batch("w", 0, 1), Acks::All, None)
            .await
            .unwrap()
            .base_offset,
        Offset(2),
        "a new epoch starts again at 0"
    );
    assert!(matches!(
        p.produce(idempotent_batch("old", 2, 0), Acks::All, None)
            .await,
        Err(PartitionError::ProducerFenced { .. })
    ));
    // The state is rebuilt from the log after a restart of the partition.
    sup.stop_partition((Arc::from("t"), PartitionId(0))).await;
    sup.start_partition(args).await.unwrap();
    let p = online(&registry);
    assert_eq!(
        p.produce(idempotent_batch("w", 0, 1), Acks::All, None)
            .await
            .unwrap()
            .base_offset,
        Offset(2)
    );
    assert_eq!(
        values(&p.fetch(Offset(0), 1 << 20, None).await.unwrap().records),
        ["x", "y", "w"]
    );
    sup.actor().stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_partition_restarts_with_its_data_and_goes_offline_past_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let directory = ActorDirectory::new();
    let (sup, registry) = supervisor("n3", &directory).await;
    sup.start_partition(args("n3", dir.path(), &directory, Durability::Fsync))
        .await
        .unwrap();
    online(&registry)
        .produce(batch(&["kept"]), Acks::All, None)
        .await
        .unwrap();
    for crash in 0..=RESTARTS_MAX {
        let before = online(&registry);
        before.crash().unwrap();
        let restarted = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match registry.get("t", PartitionId(0)) {
                    Some(PartitionSlot::Online(h))
                        if h.actor().get_id() != before.actor().get_id() =>
                    {
                        return true;
                    }
                    Some(PartitionSlot::Offline) => return false,
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await
        .unwrap();
        if crash < RESTARTS_MAX {
            assert!(restarted, "crash {crash} is restarted");
            let p = online(&registry);
            assert_eq!(
                values(&p.fetch(Offset(0), 1 << 20, None).await.unwrap().records),
                ["kept"]
            );
            let entry = directory.get("n3/partition/t-0").unwrap();
            assert_eq!(entry.restarts, crash as u32 + 1);
        } else {
            assert!(!restarted, "past the bound the partition stays offline");
            assert_eq!(
                directory.get("n3/partition/t-0").unwrap().status,
                ActorStatus::Failed
            );
        }
    }
    sup.actor().stop_and_wait(None, None).await.unwrap();
}
