//! The controller's deadlines, through its handle, on paused time: the metadata log is a
//! stand-in whose appends take as long as a test says, and partitions open on real files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use vltava_messages::metadata_records::MetadataRecord;
use vltava_storage::Flusher;

use super::*;
use crate::applier::{ApplierConfig, MetadataApplier};
use crate::directory::ActorDirectory;
use crate::metadata::producer_ids::ProducerRegistry;
use crate::metadata::{MetadataError, MetadataImage, MetadataLog};
use crate::partition::Durability;
use crate::partition::supervisor::{PartitionRegistry, PartitionSupervisor};

/// Scheduler turns a test waits for a request it spawned to reach the controller's mailbox.
const SEND_POLLS_MAX: usize = 1_000;

/// A metadata log in memory whose appends take `append_ms` (of paused time) each.
#[derive(Debug)]
struct SlowLog {
    append_ms: Arc<AtomicU64>,
}

impl MetadataLog for SlowLog {
    async fn replay(&mut self) -> Result<Vec<MetadataRecord>, MetadataError> {
        Ok(Vec::new())
    }

    async fn append(
        &mut self,
        _records: Vec<MetadataRecord>,
    ) -> Result<Option<Arc<MetadataImage>>, MetadataError> {
        let ms = self.append_ms.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(None)
    }
}

/// A controller over a `SlowLog`, with an applier and partition supervisor on `dir`. Actor
/// names are process-wide, so each test passes its own node name.
async fn controller(
    node: &str,
    dir: &std::path::Path,
    append_ms: &Arc<AtomicU64>,
) -> ControllerHandle {
    controller_and_applier(node, dir, append_ms).await.0
}

/// As `controller`, also handing back the applier (to arm its sweeping).
async fn controller_and_applier(
    node: &str,
    dir: &std::path::Path,
    append_ms: &Arc<AtomicU64>,
) -> (ControllerHandle, crate::applier::ApplierHandle) {
    let directory = ActorDirectory::new();
    let partitions = PartitionSupervisor::start(
        format!("{node}/partitions"),
        node,
        directory.clone(),
        PartitionRegistry::default(),
        None,
    )
    .await
    .unwrap();
    let applier = MetadataApplier::start(
        format!("{node}/applier"),
        node,
        ApplierConfig {
            node: node.into(),
            node_id: 1,
            data_dir: dir.to_path_buf(),
            durability: Durability::Fsync,
            verify_reads: false,
            flusher: Arc::new(Flusher::new(1, 16)),
            directory: directory.clone(),
            partitions,
            groups: None,
            producer_ids: ProducerRegistry::default(),
            links: Arc::new(crate::partition::replication::Standalone),
            replica_lag_time_max: crate::partition::replica_state::REPLICA_LAG_TIME_MAX_DEFAULT,
            retention_check_interval: crate::partition::RETENTION_CHECK_INTERVAL_DEFAULT,
            incarnation: None,
        },
        None,
    )
    .await
    .unwrap();
    let (publish, _) = watch::channel(Arc::new(MetadataImage::default()));
    let controller = Controller::start(
        ControllerArgs {
            id: format!("{node}/controller"),
            parent: node.into(),
            node_id: 1,
            cluster_id: "c".into(),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 1,
            log: SlowLog {
                append_ms: Arc::clone(append_ms),
            },
            applier: Arc::new(applier.clone()),
            directory,
            publish,
            producer_ids: ProducerRegistry::default(),
            producer_ids_floor: 0,
            forwarder: None,
        },
        None,
    )
    .await
    .unwrap();
    (controller, applier)
}

async fn create(
    controller: &ControllerHandle,
    name: &str,
    deadline: Option<Instant>,
) -> Result<(), ControllerError> {
    controller
        .create_topic(name.into(), 1, 1, BTreeMap::new(), false, deadline)
        .await
}

/// Waits (on paused time, so instantly) until the published image satisfies `cond`.
async fn image_until(controller: &ControllerHandle, cond: impl Fn(&MetadataImage) -> bool) {
    let mut image = controller.image();
    tokio::time::timeout(Duration::from_secs(600), image.wait_for(|i| cond(i)))
        .await
        .expect("the image changes as expected")
        .unwrap();
}

/// Issue 11: a 4,096-partition creation took 63 s with `timeout_ms` 60,000 and still answered
/// success. A request whose deadline passes while it waits behind another is answered at the
/// deadline, `TimedOut` at `Queued`, and is never made.
#[tokio::test(start_paused = true)]
async fn a_request_still_queued_at_its_deadline_is_answered_then_and_never_made() {
    let dir = tempfile::tempdir().unwrap();
    let append_ms = Arc::new(AtomicU64::new(0));
    let controller = controller("c1", dir.path(), &append_ms).await;
    append_ms.store(10_000, Ordering::Relaxed);
    let slow = {
        let controller = controller.clone();
        tokio::spawn(async move { create(&controller, "slow", None).await })
    };
    // The slow request is sent (and so ahead in the mailbox) before the second one.
    let mut polls = 0;
    while controller.stats.depth() == 0 {
        assert!(polls < SEND_POLLS_MAX, "the slow request was never sent");
        polls += 1;
        tokio::task::yield_now().await;
    }
    let asked = Instant::now();
    let queued = create(&controller, "queued", Some(asked + Duration::from_secs(1))).await;
    assert_eq!(
        asked.elapsed(),
        Duration::from_secs(1),
        "answered at its deadline"
    );
    match queued {
        Err(ControllerError::TimedOut(t)) => {
            assert_eq!(t.stage, TimeoutStage::Queued);
            assert!(t.to_string().starts_with("topic not created"), "{t}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    slow.await.unwrap().unwrap();
    append_ms.store(0, Ordering::Relaxed);
    // A later change goes through: the withdrawn request left nothing behind.
    create(&controller, "later", None).await.unwrap();
    let image = controller.image().borrow().clone();
    assert!(image.topics.contains_key("slow") && image.topics.contains_key("later"));
    assert!(
        !image.topics.contains_key("queued"),
        "a withdrawn request is never made"
    );
    assert!(
        !dir.path().join("queued-0").exists(),
        "no partition of it was opened"
    );
}

/// A request taken by the controller whose deadline passes while its records are being
/// written is answered at the deadline, `TimedOut` at `Committing`, and the change is then
/// made: the topic exists once the write completes.
#[tokio::test(start_paused = true)]
async fn a_deadline_that_passes_while_committing_answers_then_and_the_topic_follows() {
    let dir = tempfile::tempdir().unwrap();
    let append_ms = Arc::new(AtomicU64::new(5_000));
    let controller = controller("c2", dir.path(), &append_ms).await;
    let asked = Instant::now();
    let outcome = create(&controller, "late", Some(asked + Duration::from_secs(1))).await;
    assert_eq!(
        asked.elapsed(),
        Duration::from_secs(1),
        "answered at its deadline"
    );
    match outcome {
        Err(ControllerError::TimedOut(t)) => {
            assert_eq!(t.stage, TimeoutStage::Committing);
            assert!(
                t.to_string()
                    .contains("made unless the metadata write fails"),
                "{t}"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    image_until(&controller, |i| i.topics.contains_key("late")).await;
    // The controller finished the change before taking the next request.
    append_ms.store(0, Ordering::Relaxed);
    create(&controller, "next", None).await.unwrap();
    assert!(dir.path().join("late-0").exists(), "its partition opened");
}

/// A deadline that has passed before the request is sent changes nothing (a `timeout_ms` of
/// 0), and a request without a deadline is unaffected by slow writes.
#[tokio::test(start_paused = true)]
async fn a_passed_deadline_changes_nothing_and_no_deadline_waits() {
    let dir = tempfile::tempdir().unwrap();
    let append_ms = Arc::new(AtomicU64::new(0));
    let controller = controller("c3", dir.path(), &append_ms).await;
    let outcome = create(&controller, "zero", Some(Instant::now())).await;
    assert!(matches!(
        outcome,
        Err(ControllerError::TimedOut(TimedOut {
            stage: TimeoutStage::Queued,
            ..
        }))
    ));
    append_ms.store(3_000, Ordering::Relaxed);
    create(&controller, "patient", None).await.unwrap();
    let image = controller.image().borrow().clone();
    assert!(!image.topics.contains_key("zero"));
    assert!(image.topics.contains_key("patient"));
}

/// Every timeout message fits a wire error message whole, so a client always learns what
/// became of its change.
#[test]
fn every_timeout_message_fits_a_wire_error_message() {
    let name = "t".repeat(TOPIC_NAME_BYTES_MAX);
    for change in [
        Change::CreateTopic(name.clone()),
        Change::DeleteTopic(name.clone()),
        Change::CreatePartitions(name.clone()),
        Change::ElectLeaders,
    ] {
        for stage in [
            TimeoutStage::Queued,
            TimeoutStage::Committing,
            TimeoutStage::Applying,
        ] {
            let message = TimedOut {
                change: change.clone(),
                stage,
            }
            .to_string();
            assert!(
                message.len() <= vltava_messages::limits::ERROR_MESSAGE_BYTES_MAX as usize,
                "{} bytes: {message}",
                message.len()
            );
        }
    }
}

/// ElectLeaders through the handle on one node: its partitions' only replica already leads,
/// so a targeted election of it answers success with the leader epoch unchanged and commits
/// nothing; another node is not a replica (`InvalidRequest`), an unknown partition is
/// answered as such, and a preferred election of every partition finds nothing to move.
#[tokio::test(start_paused = true)]
async fn elect_leaders_answers_each_partition_and_commits_only_moves() {
    let dir = tempfile::tempdir().unwrap();
    let append_ms = Arc::new(AtomicU64::new(0));
    let controller = controller("c4", dir.path(), &append_ms).await;
    create(&controller, "moved", None).await.unwrap();
    let version = controller.image().borrow().version;
    let election = |partition: u32, to: u32| ElectionWire {
        topic: "moved".into(),
        partition,
        to: Some(to),
    };
    let answer = controller
        .elect_leaders(
            vec![election(0, 1), election(0, 2), election(3, 1)],
            false,
            None,
        )
        .await
        .unwrap();
    let codes: Vec<u16> = answer.results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![
            0,
            ErrorCode::InvalidRequest.code(),
            ErrorCode::UnknownPartition.code()
        ],
        "{answer:?}"
    );
    assert_eq!(
        (answer.results[0].leader, answer.results[0].leader_epoch),
        (Some(1), 0)
    );
    assert_eq!(
        controller.image().borrow().version,
        version,
        "nothing was committed"
    );
    let every = controller
        .elect_leaders(Vec::new(), true, None)
        .await
        .unwrap();
    assert!(every.results.is_empty() && !every.more, "{every:?}");
}

mod reassign;
