//! A reassignment through the controller's handle, on the node that loses the replica: the
//! move starts, a leader's ISR change completes it, and the partition's directory goes.

use super::*;
use crate::applier::ApplierHandle;
use vltava_messages::peer::ReassignmentWire;

/// A controller as in `controller`, node 1, with its log answering at once, and its applier.
async fn controller_and_applier(
    node: &str,
    dir: &std::path::Path,
) -> (ControllerHandle, ApplierHandle) {
    super::controller_and_applier(node, dir, &Arc::new(AtomicU64::new(0))).await
}

/// Topic `moving` on node 1 alone is moved to node 2 (registered afterwards as another node
/// would, through a forwarded registration): the move starts with both replicas and node 1 leading,
/// node 2 not in sync; repeating it changes nothing; node 1's ISR change that takes node 2 in
/// completes it, node 2 leading in a new epoch; node 1, no longer a replica, stops its
/// partition and removes its directory.
#[tokio::test(start_paused = true)]
async fn a_move_starts_completes_with_the_isr_change_and_the_old_replica_loses_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let (controller, applier) = controller_and_applier("r1", dir.path()).await;
    applier.arm_sweep(0).await;
    // Created before node 2 registers, so that placement puts it on node 1.
    create(&controller, "moving", None).await.unwrap();
    let registered = controller
        .serve_forwarded(
            2,
            ForwardedAdmin::RegisterNode {
                host: "127.0.0.2".into(),
                port: 1,
                incarnation: 0,
            },
        )
        .await;
    assert_eq!(registered.error_code, 0, "{registered:?}");
    let data = crate::applier::partition_dir(dir.path(), "moving", 0);
    assert!(data.exists());
    let to_node_2 = || {
        vec![ReassignmentWire {
            topic: "moving".into(),
            partition: 0,
            replicas: vec![2],
        }]
    };

    let started = controller
        .alter_partition_reassignments(to_node_2(), None)
        .await
        .unwrap();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].error_code, 0, "{started:?}");
    assert_eq!(started[0].replicas, vec![2, 1]);
    assert_eq!(started[0].target_replicas, Some(vec![2]));
    assert_eq!(started[0].leader, Some(1));
    let moving = controller.image().borrow().topics["moving"].partitions[0].clone();
    assert_eq!(moving.isr, vec![1], "node 2 is not in sync yet");
    let version = controller.image().borrow().version;
    let again = controller
        .alter_partition_reassignments(to_node_2(), None)
        .await
        .unwrap();
    assert_eq!(again[0].target_replicas, Some(vec![2]));
    assert_eq!(controller.image().borrow().version, version, "nothing new");
    assert!(
        data.exists(),
        "node 1 keeps its replica while the move is under way"
    );

    let committed = controller
        .alter_isr(
            "moving".into(),
            0,
            1,
            moving.leader_epoch,
            moving.partition_epoch,
            vec![1, 2],
        )
        .await
        .unwrap();
    assert_eq!(committed.leader_epoch, moving.leader_epoch + 1);
    assert_eq!(committed.isr, vec![2]);
    let moved = controller.image().borrow().topics["moving"].partitions[0].clone();
    assert_eq!(moved.replicas, vec![2]);
    assert_eq!(moved.leader, Some(2));
    assert_eq!(moved.target_replicas, None);
    assert!(
        !data.exists(),
        "the replica that moved away has its data removed"
    );
    let mut deleted = data.into_os_string();
    deleted.push(crate::applier::DELETED_SUFFIX);
    assert!(!std::path::PathBuf::from(deleted).exists());
}

/// Bad targets are refused per partition, each with its code, and commit nothing.
#[tokio::test(start_paused = true)]
async fn bad_targets_are_refused_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let (controller, _applier) = controller_and_applier("r2", dir.path()).await;
    create(&controller, "stays", None).await.unwrap();
    let version = controller.image().borrow().version;
    let target = |partition: u32, replicas: Vec<u32>| ReassignmentWire {
        topic: "stays".into(),
        partition,
        replicas,
    };
    let answer = controller
        .alter_partition_reassignments(
            vec![
                target(0, vec![]),
                target(0, vec![1, 1]),
                target(0, vec![7]),
                target(4, vec![1]),
            ],
            None,
        )
        .await
        .unwrap();
    let codes: Vec<u16> = answer.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![
            ErrorCode::InvalidRequest.code(),
            ErrorCode::InvalidRequest.code(),
            ErrorCode::InvalidRequest.code(),
            ErrorCode::UnknownPartition.code(),
        ],
        "{answer:?}"
    );
    assert!(answer[2].message.contains("node 7"), "{answer:?}");
    assert_eq!(controller.image().borrow().version, version);
}

/// AlterPartitionReassignments' timeout messages fit a wire error message whole.
#[test]
fn the_reassignment_timeout_messages_fit_a_wire_error_message() {
    for stage in [
        TimeoutStage::Queued,
        TimeoutStage::Committing,
        TimeoutStage::Applying,
    ] {
        let message = TimedOut {
            change: Change::AlterPartitionReassignments,
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

/// A leader's expansion that names a fenced node: the controller leaves the node out and
/// commits the rest at a new partition epoch, even when the rest is the ISR as it was, so the
/// proposal ends (the leader counts a pending proposal's members in its high watermark).
#[tokio::test(start_paused = true)]
async fn an_expansion_naming_a_fenced_node_commits_without_it_at_a_new_partition_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (controller, applier) = controller_and_applier("r3", dir.path()).await;
    applier.arm_sweep(0).await;
    create(&controller, "growing", None).await.unwrap();
    let registered = controller
        .serve_forwarded(
            2,
            ForwardedAdmin::RegisterNode {
                host: "127.0.0.2".into(),
                port: 1,
                incarnation: 0,
            },
        )
        .await;
    assert_eq!(registered.error_code, 0, "{registered:?}");
    // Node 2 becomes a replica, not yet in sync, then its lease runs out.
    let started = controller
        .alter_partition_reassignments(
            vec![ReassignmentWire {
                topic: "growing".into(),
                partition: 0,
                replicas: vec![1, 2],
            }],
            None,
        )
        .await
        .unwrap();
    assert_eq!(started[0].error_code, 0, "{started:?}");
    controller.set_fencing(vec![2], vec![]).await.unwrap();
    let before = controller.image().borrow().topics["growing"].partitions[0].clone();
    assert_eq!(before.isr, vec![1]);
    let committed = controller
        .alter_isr(
            "growing".into(),
            0,
            1,
            before.leader_epoch,
            before.partition_epoch,
            vec![1, 2],
        )
        .await
        .unwrap();
    assert_eq!(committed.isr, vec![1], "the fenced node is left out");
    assert_eq!(committed.partition_epoch, before.partition_epoch + 1);
    assert_eq!(committed.leader_epoch, before.leader_epoch);
}
