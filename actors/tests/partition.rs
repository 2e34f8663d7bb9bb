//! The Partition actor, its supervisor and the MetadataApplier that starts and stops
//! partitions, through their handles, on real files.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use vltava_actors::applier::{ApplierConfig, MetadataApplier};
use vltava_actors::directory::{ActorDirectory, ActorStatus};
use vltava_actors::metadata::producer_ids::{
    PRODUCER_ID_BLOCK, ProducerIdsImage, ProducerRegistry,
};
use vltava_actors::metadata::{MetadataImage, PartitionImage, TopicImage};
use vltava_actors::partition::replica_state::{
    Assignment, PartitionEpoch, REPLICA_LAG_TIME_MAX_DEFAULT, ReplicaConfig,
};
use vltava_actors::partition::replication::Standalone;
use vltava_actors::partition::supervisor::{
    PartitionRegistry, PartitionSlot, PartitionSupervisor, PartitionSupervisorHandle, RESTARTS_MAX,
};
use vltava_actors::partition::{
    Acks, Durability, OffsetSpec, PartitionArgs, PartitionError, RETENTION_CHECK_INTERVAL_DEFAULT,
};
use vltava_messages::metadata_records::MetadataRecord;
use vltava_messages::{
    BatchBuilder, Compression, LeaderEpoch, NodeId, Offset, PartitionId, ProducerEpoch, ProducerId,
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
        topic_id: Arc::from("id-1"),
        partition: PartitionId(0),
        dir: dir.join("t-0"),
        log_config: LogConfig::default(),
        durability,
        node_id: NodeId(1),
        assignment: Assignment {
            leader: Some(NodeId(1)),
            leader_epoch: LeaderEpoch(1),
            partition_epoch: PartitionEpoch(0),
            replicas: vec![NodeId(1)],
            isr: BTreeSet::from([NodeId(1)]),
            target_replicas: None,
        },
        replica: ReplicaConfig::default(),
        retention_check_interval: RETENTION_CHECK_INTERVAL_DEFAULT,
        links: Arc::new(Standalone),
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
    registry.publish(&image, 1, issued_end);
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
    producers.publish(&image, 2, 8);
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

/// Start and stop cycles in `stopped_partitions_leave_no_task_name_or_entry_behind`: enough
/// that a leak of one task per partition stands out from the supervisor's own tasks.
const START_STOP_CYCLES: usize = 20;
/// How long the stopped partitions get to release what they held; the old retention timers
/// held on for `RETENTION_CHECK_INTERVAL_DEFAULT` (5 minutes).
const RELEASE_DEADLINE: Duration = Duration::from_secs(10);

/// Polls `condition` every 10 ms until it holds or `deadline` passes; returns whether it held.
async fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Issue 11: creating and deleting topics grew the node's memory by about 5.7 KiB per
/// partition, for good. A Partition's retention timer (a ractor `send_interval` task) held a
/// clone of the actor's cell, with its mailboxes, and noticed that the actor had stopped only
/// at its next tick, five minutes later; meanwhile the freed cells' memory was scattered
/// among live allocations. This starts and stops a partition many times and checks that
/// the runtime's tasks, the process-wide named-actor registry, the actor directory and the
/// partition registry all fall back to where they were. On one runtime thread with a round
/// trip to each partition before it stops, so that most timer tasks run (and start waiting)
/// before their partition stops, as on a node where partitions live for seconds: with the old
/// code about two thirds of them outlived their partition.
#[tokio::test(flavor = "current_thread")]
async fn stopped_partitions_leave_no_task_name_or_entry_behind() {
    let dir = tempfile::tempdir().unwrap();
    let directory = ActorDirectory::new();
    let (sup, registry) = supervisor("n4", &directory).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let entries_before = directory.len();
    let named = || {
        ractor::registry::registered()
            .into_iter()
            .filter(|name| name.starts_with("n4/partition/"))
            .count()
    };
    for _ in 0..START_STOP_CYCLES {
        sup.start_partition(args("n4", dir.path(), &directory, Durability::Fsync))
            .await
            .unwrap();
        assert_eq!(named(), 1);
        // A round trip to the log thread: the runtime's one thread runs every queued task,
        // the new timers included, while the test waits for the answer.
        online(&registry)
            .list_offset(OffsetSpec::Latest, None)
            .await
            .unwrap();
        sup.stop_partition((Arc::from("t"), PartitionId(0))).await;
    }
    let released = eventually(RELEASE_DEADLINE, || {
        metrics.num_alive_tasks() <= tasks_before
    })
    .await;
    assert!(
        released,
        "{} tasks alive after {START_STOP_CYCLES} partitions stopped, {tasks_before} before",
        metrics.num_alive_tasks()
    );
    assert_eq!(named(), 0, "stopped actors leave ractor's name registry");
    assert_eq!(directory.len(), entries_before);
    assert!(registry.is_empty());
    sup.actor().stop_and_wait(None, None).await.unwrap();
}

/// A partition that failed to start (or crashed past its bound) stays in the directory as
/// `failed` and in the registry as offline, so the failure is visible; stopping it (its topic
/// deleted) used to find no child and leave both entries for the life of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_partition_that_failed_to_start_forgets_it() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the partition's parent directory should be: the log cannot open.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let directory = ActorDirectory::new();
    let (sup, registry) = supervisor("n5", &directory).await;
    let entries_before = directory.len();
    let started = sup
        .start_partition(args("n5", &blocked, &directory, Durability::Fsync))
        .await;
    assert!(started.is_err());
    assert_eq!(
        directory.get("n5/partition/t-0").unwrap().status,
        ActorStatus::Failed
    );
    assert!(matches!(
        registry.get("t", PartitionId(0)),
        Some(PartitionSlot::Offline)
    ));
    sup.stop_partition((Arc::from("t"), PartitionId(0))).await;
    assert!(directory.get("n5/partition/t-0").is_none());
    assert_eq!(directory.len(), entries_before);
    assert!(registry.is_empty());
    sup.actor().stop_and_wait(None, None).await.unwrap();
}

/// An image in which node 1 leads `partitions` partitions of topic `t` (id `topic_id`), or no
/// topic at all.
fn image_with_topic(topic: Option<(&str, u32)>) -> Arc<MetadataImage> {
    let mut image = MetadataImage::default();
    if let Some((topic_id, partitions)) = topic {
        image.topics.insert(
            "t".into(),
            TopicImage {
                topic_id: topic_id.into(),
                replication_factor: 1,
                configs: BTreeMap::new(),
                partitions: (0..partitions)
                    .map(|_| PartitionImage {
                        leader: Some(1),
                        leader_epoch: 0,
                        partition_epoch: 0,
                        replicas: vec![1],
                        isr: vec![1],
                        target_replicas: None,
                    })
                    .collect(),
            },
        );
    }
    Arc::new(image)
}

/// The MetadataApplier forgot partitions whose start failed: when their topic was deleted it
/// stopped nothing, so their `failed` directory entry and offline slot stayed for the life of
/// the process, and their data stayed on disk, where a new topic of the same name would open
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_removes_a_partition_that_failed_to_start() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where partition 1's first segment file should be: its log cannot open.
    std::fs::create_dir_all(dir.path().join("t-1").join("00000000000000000000.log")).unwrap();
    let directory = ActorDirectory::new();
    let (partitions, registry) = supervisor("n6", &directory).await;
    let applier = MetadataApplier::start(
        "n6/applier".into(),
        "n6/node",
        ApplierConfig {
            node: "n6".into(),
            node_id: 1,
            data_dir: dir.path().to_path_buf(),
            durability: Durability::Fsync,
            verify_reads: false,
            flusher: Arc::new(Flusher::new(1, 64)),
            directory: directory.clone(),
            partitions: partitions.clone(),
            groups: None,
            producer_ids: ProducerRegistry::default(),
            links: Arc::new(Standalone),
            replica_lag_time_max: REPLICA_LAG_TIME_MAX_DEFAULT,
            retention_check_interval: RETENTION_CHECK_INTERVAL_DEFAULT,
            incarnation: None,
        },
        None,
    )
    .await
    .unwrap();
    let entries_before = directory.len();
    applier.apply(image_with_topic(Some(("id-1", 2)))).await;
    assert!(matches!(
        registry.get("t", PartitionId(0)),
        Some(PartitionSlot::Online(_))
    ));
    assert!(matches!(
        registry.get("t", PartitionId(1)),
        Some(PartitionSlot::Offline)
    ));
    assert_eq!(
        directory.get("n6/partition/t-1").unwrap().status,
        ActorStatus::Failed
    );
    applier.apply(image_with_topic(None)).await;
    assert!(registry.is_empty());
    assert_eq!(directory.len(), entries_before);
    assert!(!dir.path().join("t-0").exists());
    assert!(
        !dir.path().join("t-1").exists(),
        "the failed partition's data is removed with its topic"
    );
    applier.actor().stop_and_wait(None, None).await.unwrap();
    partitions.actor().stop_and_wait(None, None).await.unwrap();
}

/// Deleting a topic closed each of its logs cleanly (flush, indexes, a producer-state snapshot,
/// two checkpoints, about seven fsyncs) just before removing their files: deleting 4,096
/// partitions took 34 to 70 s. A discarded partition stops without closing its log; a stopped
/// one still closes cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_partition_stops_without_closing_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let directory = ActorDirectory::new();
    let (sup, registry) = supervisor("n7", &directory).await;
    let marker = dir.path().join("t-0").join(".clean-shutdown");
    for discard in [false, true] {
        sup.start_partition(args("n7", dir.path(), &directory, Durability::Fsync))
            .await
            .unwrap();
        online(&registry)
            .produce(batch(&["x"]), Acks::All, None)
            .await
            .unwrap();
        sup.stop_partitions(vec![(Arc::from("t"), PartitionId(0))], discard)
            .await;
        assert_eq!(marker.exists(), !discard, "discard {discard}");
        assert!(directory.get("n7/partition/t-0").is_none());
        assert!(registry.is_empty());
    }
    sup.actor().stop_and_wait(None, None).await.unwrap();
}

/// An applier for node 1 of a node named `node`, over `data_dir`.
async fn applier_over(
    node: &str,
    data_dir: &std::path::Path,
    directory: &ActorDirectory,
    partitions: &PartitionSupervisorHandle,
) -> vltava_actors::applier::ApplierHandle {
    MetadataApplier::start(
        format!("{node}/applier"),
        &format!("{node}/node"),
        ApplierConfig {
            node: node.into(),
            node_id: 1,
            data_dir: data_dir.to_path_buf(),
            durability: Durability::Fsync,
            verify_reads: false,
            flusher: Arc::new(Flusher::new(1, 64)),
            directory: directory.clone(),
            partitions: partitions.clone(),
            groups: None,
            producer_ids: producers_issued(8),
            links: Arc::new(Standalone),
            replica_lag_time_max: REPLICA_LAG_TIME_MAX_DEFAULT,
            retention_check_interval: RETENTION_CHECK_INTERVAL_DEFAULT,
            incarnation: None,
        },
        None,
    )
    .await
    .unwrap()
}

/// `image_with_topic`, with node 1 registered, as a node's own image lists it.
fn image_listing_node(topic: Option<(&str, u32)>, version: u64) -> Arc<MetadataImage> {
    let mut image = (*image_with_topic(topic)).clone();
    image.version = version;
    image.nodes.insert(
        1,
        vltava_actors::metadata::NodeImage {
            node_id: 1,
            host: "127.0.0.1".into(),
            port: 9092,
            fenced: false,
            incarnation: 0,
        },
    );
    Arc::new(image)
}

/// Starts an applier (a node's start), applies `image`, runs `check` on the partition
/// registry, and stops everything (the node stopping), so that the next call is a restart.
async fn node_run(
    node: &str,
    data_dir: &std::path::Path,
    image: Arc<MetadataImage>,
    check: impl AsyncFnOnce(&PartitionRegistry),
) {
    let directory = ActorDirectory::new();
    let (partitions, registry) = supervisor(node, &directory).await;
    let applier = applier_over(node, data_dir, &directory, &partitions).await;
    applier.apply(image).await;
    check(&registry).await;
    applier.actor().stop_and_wait(None, None).await.unwrap();
    partitions.actor().stop_and_wait(None, None).await.unwrap();
}

/// Issue 12: a node that was down while topic `t` was deleted and created again found `t-0`
/// on disk and opened it for the new topic, serving the deleted topic's records. The
/// directory's `partition.metadata` names the old id, so the partition removes it and opens an
/// empty log; a restart with the same id keeps the data, and a directory an older build wrote
/// (no id file) is adopted with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_directory_of_a_deleted_topic_is_not_served_under_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let id_file = dir.path().join("t-0").join("partition.metadata");
    node_run(
        "n8",
        dir.path(),
        image_with_topic(Some(("id-1", 1))),
        async |r: &PartitionRegistry| {
            online(r)
                .produce(batch(&["old"]), Acks::All, None)
                .await
                .unwrap();
        },
    )
    .await;
    assert!(id_file.exists(), "a new partition records its topic id");
    // The same id after a restart: the data stays.
    node_run(
        "n8",
        dir.path(),
        image_with_topic(Some(("id-1", 1))),
        async |r: &PartitionRegistry| {
            let fetched = online(r).fetch(Offset(0), 1 << 20, None).await.unwrap();
            assert_eq!(values(&fetched.records), ["old"]);
        },
    )
    .await;
    // A directory without an id file (an older build's) is adopted, data and all.
    std::fs::remove_file(&id_file).unwrap();
    node_run(
        "n8",
        dir.path(),
        image_with_topic(Some(("id-1", 1))),
        async |r: &PartitionRegistry| {
            let fetched = online(r).fetch(Offset(0), 1 << 20, None).await.unwrap();
            assert_eq!(values(&fetched.records), ["old"]);
        },
    )
    .await;
    assert_eq!(
        vltava_storage::partition_metadata::read(
            &vltava_storage::RealStorage,
            &dir.path().join("t-0")
        )
        .unwrap()
        .as_deref(),
        Some("id-1"),
        "the adopted directory records its id"
    );
    // The topic was deleted and created again while the node was down: the first image it
    // sees holds `t` under a new id. The old records are gone, and the log starts at 0.
    node_run(
        "n8",
        dir.path(),
        image_with_topic(Some(("id-2", 1))),
        async |r: &PartitionRegistry| {
            let p = online(r);
            let fetched = p.fetch(Offset(0), 1 << 20, None).await.unwrap();
            assert!(
                values(&fetched.records).is_empty(),
                "old records served: {:?}",
                values(&fetched.records)
            );
            let ok = p.produce(batch(&["new"]), Acks::All, None).await.unwrap();
            assert_eq!(ok.base_offset, Offset(0));
        },
    )
    .await;
    assert!(!dir.path().join("t-0.deleted").exists());
}

/// The sweep at start removes directories the image does not give this node (a deleted
/// topic's, a leftover of an interrupted removal) and leaves `__metadata` and the node's files
/// alone; it waits until sweeping is armed and the image is recent enough, and runs again
/// after a topic deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_orphaned_partition_directories_once_armed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let orphan = root.join("gone-0");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("00000000000000000000.log"), b"x").unwrap();
    let leftover = root.join("t-7.deleted");
    std::fs::create_dir_all(&leftover).unwrap();
    let metadata = root.join("__metadata");
    std::fs::create_dir_all(&metadata).unwrap();
    std::fs::write(metadata.join("metadata.log"), b"records").unwrap();
    std::fs::write(root.join("node.toml"), b"node_id = 1").unwrap();

    let directory = ActorDirectory::new();
    let (partitions, registry) = supervisor("n9", &directory).await;
    let applier = applier_over("n9", root, &directory, &partitions).await;
    applier
        .apply(image_listing_node(Some(("id-1", 1)), 5))
        .await;
    assert!(orphan.exists(), "no sweep before it is armed");
    // An image older than the floor may lag what this node holds: no sweep yet.
    applier.arm_sweep(6).await;
    assert!(orphan.exists(), "no sweep on an image below the floor");
    applier
        .apply(image_listing_node(Some(("id-1", 1)), 6))
        .await;
    assert!(!orphan.exists());
    assert!(!leftover.exists());
    assert!(root.join("t-0").exists(), "the running partition stays");
    assert_eq!(
        std::fs::read(metadata.join("metadata.log")).unwrap(),
        b"records"
    );
    assert!(root.join("node.toml").exists());
    // A directory that appears later (say, restored by hand) stays until a topic is deleted.
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("00000000000000000000.log"), b"x").unwrap();
    applier
        .apply(image_listing_node(Some(("id-1", 1)), 7))
        .await;
    assert!(orphan.exists(), "no sweep without a deletion");
    applier.apply(image_listing_node(None, 8)).await;
    assert!(!orphan.exists(), "a deletion sweeps");
    assert!(!root.join("t-0").exists());
    assert!(registry.is_empty());
    assert!(metadata.join("metadata.log").exists());
    applier.actor().stop_and_wait(None, None).await.unwrap();
    partitions.actor().stop_and_wait(None, None).await.unwrap();
}
