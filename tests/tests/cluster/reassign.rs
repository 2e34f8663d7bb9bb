//! Partition reassignment (issue 13, *Operator commands*): `vltava partition reassign` moves a
//! partition to other nodes while an `acks=all` idempotent producer and a consumer run; the new
//! replicas copy the log byte for byte and join the ISR before the old ones leave and delete
//! their data, and the history checker finds nothing acknowledged lost or written twice. Bad
//! targets are refused per partition, and a deleted topic leaves no data on any replica.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vltava_client::ClientError;
use vltava_messages::PartitionId;
use vltava_messages::protocol::{ErrorCode, PartitionMetadata};
use vltava_tests::cluster::TestCluster;
use vltava_tests::history::{CheckOptions, History};

use super::elect::{consume, produce, wait_for_acks};
use super::{
    FAILOVER_BOUND, admin, code, controller_seen_by, metadata, runtime, until_ok, vltava_at,
};

const TOPIC: &str = "reassigned";
/// Acknowledged events the test waits for before each move and after it, so that every
/// placement takes writes.
const ACKS_AROUND_MOVES: u64 = 500;
/// How long the CLI may wait for a move: catching up a partition of a few thousand small
/// events takes well under a second; the bound is for a loaded CI machine.
const MOVE_TIMEOUT_MS: &str = "60000";

/// The bytes of every segment file of `topic`-`partition` in a node's data directory, by file
/// name (empty when the directory is gone).
fn segments(data_dir: &Path, topic: &str, partition: u32) -> BTreeMap<String, Vec<u8>> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

/// Partition 0 of `topic` as the node at `addr` describes it, once it satisfies `ready`.
async fn placement(
    addr: &str,
    topic: &str,
    ready: impl Fn(&PartitionMetadata) -> bool,
) -> PartitionMetadata {
    until_ok(FAILOVER_BOUND, || async {
        let answer = metadata(addr).await?;
        answer
            .topics
            .into_iter()
            .find(|t| t.name == topic)
            .and_then(|t| t.partitions.into_iter().next())
            .filter(|p| ready(p))
            .ok_or_else(|| ClientError::InvalidArgument("not there yet".into()))
    })
    .await
}

fn ids(nodes: &[vltava_messages::NodeId]) -> Vec<u32> {
    nodes.iter().map(|n| n.0).collect()
}

/// Waits until the segment files of partition 0 on `nodes` are the same bytes, and not empty.
async fn wait_for_identical_copies(cluster: &TestCluster, nodes: &[u32], what: &str) {
    let copies = || -> Vec<BTreeMap<String, Vec<u8>>> {
        nodes
            .iter()
            .map(|id| segments(&cluster.data_dir(*id), TOPIC, 0))
            .collect()
    };
    let identical = || {
        let copies = copies();
        !copies[0].is_empty() && copies.iter().all(|c| *c == copies[0])
    };
    let deadline = Instant::now() + FAILOVER_BOUND;
    while !identical() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sizes: Vec<Vec<usize>> = copies()
        .iter()
        .map(|c| c.values().map(Vec::len).collect())
        .collect();
    assert!(
        identical(),
        "{what}: the segments of nodes {nodes:?} differ (sizes {sizes:?})"
    );
}

/// Waits until node `id` has no directory for partition 0 (nor one being removed).
async fn wait_for_data_gone(cluster: &TestCluster, id: u32, what: &str) {
    let dir = cluster.data_dir(id).join(format!("{TOPIC}-0"));
    let deadline = Instant::now() + FAILOVER_BOUND;
    let leftover = || {
        dir.exists()
            || std::fs::read_dir(cluster.data_dir(id)).is_ok_and(|entries| {
                entries.filter_map(Result::ok).any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{TOPIC}-0."))
                })
            })
    };
    while leftover() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !leftover(),
        "{what}: node {id} still holds {}",
        dir.display()
    );
}

/// A replication-factor-2 partition on nodes a and b (a leading), the third node c, under an
/// `acks=all` idempotent producer and a consumer running all along:
/// 1. `vltava partition reassign TOPIC 0 --replicas c,a`, sent to a node that is not the
///    controller (so it is forwarded): the CLI waits and prints the completed placement,
///    replicas c,a with a still leading; c's segment files are a's byte for byte, and b, no
///    longer a replica, has deleted its directory.
/// 2. `Admin::reassign_partition` to b,c: the move starts with b (empty again) as a new
///    replica beside c and a, and completes with b leading in a higher leader epoch, since
///    the leader a left; b's and c's segments are the same bytes, and a's directory is gone.
///
/// Then every acknowledged event was read once and in order, nothing unwritten was read, the
/// consumer never reset its position, and no send failed.
#[test]
fn a_partition_moved_twice_under_load_loses_nothing_and_leaves_no_data_behind() {
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();
    let history = History::new();
    runtime().block_on(async {
        let admin = admin(&bootstrap).await;
        until_ok(FAILOVER_BOUND, || {
            admin.create_topic(TOPIC, 1, 2, BTreeMap::new())
        })
        .await;
        let first = placement(&cluster.node(1).addr, TOPIC, |p| {
            p.in_sync_replicas.len() == 2 && p.leader.is_some()
        })
        .await;
        let (a, b) = (first.replicas[0].0, first.replicas[1].0);
        assert_eq!(
            first.leader.map(|l| l.0),
            Some(a),
            "the first replica leads"
        );
        let c = (1..=3).find(|n| *n != a && *n != b).unwrap();
        eprintln!("partition on {a},{b} (leader {a}); node {c} is free");
        let controller = controller_seen_by(&cluster.node(1).addr).await;
        let forwarder = (1..=3).find(|n| *n != controller).unwrap();
        let forwarder_addr = cluster.node(forwarder).addr.clone();

        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let producer = tokio::spawn(produce(
            TOPIC,
            bootstrap.clone(),
            history.clone(),
            Arc::clone(&stop),
            Arc::clone(&acked),
        ));
        let read_to = Arc::new(AtomicU64::new(u64::MAX));
        let consumer = tokio::spawn(consume(
            TOPIC,
            bootstrap.clone(),
            history.clone(),
            Arc::clone(&read_to),
        ));

        // 1. To c,a through the CLI: the leader stays, b leaves.
        wait_for_acks(&acked, ACKS_AROUND_MOVES, &cluster).await;
        let target = format!("{c},{a}");
        let args = [
            "partition",
            "reassign",
            TOPIC,
            "0",
            "--replicas",
            &target,
            "--timeout-ms",
            MOVE_TIMEOUT_MS,
        ]
        .map(str::to_owned);
        let addr = forwarder_addr.clone();
        let (exit, stdout, stderr) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            vltava_at(&addr, &args)
        })
        .await
        .unwrap();
        assert_eq!(exit, Some(0), "stdout {stdout}, stderr {stderr}");
        assert!(
            stdout.starts_with(&format!(
                "partition {TOPIC}-0: replicas {c},{a}, leader {a}, leader epoch "
            )),
            "{stdout}"
        );
        let moved = placement(&cluster.node(b).addr, TOPIC, |p| ids(&p.replicas) == [c, a]).await;
        assert_eq!(moved.leader.map(|l| l.0), Some(a));
        assert!(moved.leader_epoch > first.leader_epoch);
        history.leader_epoch_seen("metadata", TOPIC, PartitionId(0), moved.leader_epoch);
        wait_for_acks(&acked, ACKS_AROUND_MOVES, &cluster).await;
        wait_for_data_gone(&cluster, b, "after the move to c,a").await;

        // 2. To b,c through the library: the leader a leaves, b leads.
        let to_b_c = [b, c];
        let started = until_ok(FAILOVER_BOUND, || {
            admin.reassign_partition(TOPIC, 0, &to_b_c)
        })
        .await;
        if let Some(target) = &started.target_replicas {
            assert_eq!(ids(target), [b, c]);
            assert_eq!(ids(&started.replicas), [b, c, a], "the target, then a");
            assert_eq!(
                started.leader.map(|l| l.0),
                Some(a),
                "a leads until b is in sync"
            );
        }
        let done = admin
            .await_reassignment(
                TOPIC,
                0,
                &[b, c],
                started.leader_epoch.unwrap(),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let vltava_client::admin::ReassignmentWait::Completed(done) = done else {
            panic!("the move to {b},{c} did not complete: {done:?}");
        };
        assert_eq!(
            done.leader.map(|l| l.0),
            Some(b),
            "the target's first replica leads"
        );
        assert!(done.leader_epoch > moved.leader_epoch);
        history.leader_epoch_seen("metadata", TOPIC, PartitionId(0), done.leader_epoch);
        wait_for_acks(&acked, ACKS_AROUND_MOVES, &cluster).await;
        stop.store(true, Ordering::Relaxed);
        let (last_acked, failed) = producer.await.unwrap();
        read_to.store(last_acked.map_or(0, |o| o + 1), Ordering::Relaxed);
        let resets = consumer.await.unwrap();
        eprintln!(
            "{} events acknowledged up to offset {last_acked:?} over two moves",
            acked.load(Ordering::Relaxed)
        );
        wait_for_data_gone(&cluster, a, "after the move to b,c").await;
        wait_for_identical_copies(&cluster, &[b, c], "after the move to b,c").await;
        // Node c joined in the first move, while node a still led: it copied a's log.
        let report = history.check(CheckOptions {
            require_all_acknowledged_read: true,
            require_reads_written: true,
            max_position_resets: Some(0),
            ..CheckOptions::default()
        });
        if !report.is_ok() || !failed.is_empty() || resets > 0 {
            for node in &cluster.nodes {
                let log = node.log_text();
                let wanted: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.contains("openraft"))
                    .filter(|l| {
                        [
                            "epoch",
                            "truncat",
                            "leader",
                            "ISR",
                            "assignment",
                            "reassign",
                        ]
                        .iter()
                        .any(|w| l.contains(w))
                    })
                    .collect();
                eprintln!("--- node {}:\n{}", node.addr, wanted.join("\n"));
            }
        }
        report.assert_ok();
        assert!(failed.is_empty(), "sends failed: {failed:?}");
        assert_eq!(resets, 0, "the consumer reset its position");
    });
}

/// A partition on nodes a and b, written to and then left quiet, moved to c,a: c's segment
/// files end equal to a's, byte for byte, and b's directory goes. Bad targets (a node that is
/// not registered, a node named twice, no node) are each the partition's `InvalidRequest`,
/// through the library and the CLI, and move nothing; an unknown partition is
/// `UnknownPartition`. A move to a paused node stays under way (`topic describe` shows it)
/// until naming the old replicas cancels it. Deleting the topic then removes its directory
/// from both replicas.
#[test]
fn a_new_replica_holds_the_leaders_batches_byte_for_byte_bad_or_stalled_moves_change_nothing_and_a_deleted_topic_leaves_no_data()
 {
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();
    let history = History::new();
    runtime().block_on(async {
        let admin = admin(&bootstrap).await;
        until_ok(FAILOVER_BOUND, || {
            admin.create_topic(TOPIC, 1, 2, BTreeMap::new())
        })
        .await;
        let first = placement(&cluster.node(1).addr, TOPIC, |p| {
            p.in_sync_replicas.len() == 2 && p.leader.is_some()
        })
        .await;
        let (a, b) = (first.replicas[0].0, first.replicas[1].0);
        let c = (1..=3).find(|n| *n != a && *n != b).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let producer = tokio::spawn(produce(
            TOPIC,
            bootstrap.clone(),
            history.clone(),
            Arc::clone(&stop),
            Arc::clone(&acked),
        ));
        wait_for_acks(&acked, 2 * ACKS_AROUND_MOVES, &cluster).await;
        stop.store(true, Ordering::Relaxed);
        let (_, failed) = producer.await.unwrap();
        assert!(failed.is_empty(), "sends failed: {failed:?}");

        let to_c_a = [c, a];
        let started = until_ok(FAILOVER_BOUND, || {
            admin.reassign_partition(TOPIC, 0, &to_c_a)
        })
        .await;
        let waited = admin
            .await_reassignment(
                TOPIC,
                0,
                &[c, a],
                started.leader_epoch.unwrap(),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(
            matches!(waited, vltava_client::admin::ReassignmentWait::Completed(_)),
            "{waited:?}"
        );
        wait_for_identical_copies(&cluster, &[a, c], "after the move to c,a").await;
        wait_for_data_gone(&cluster, b, "after the move to c,a").await;

        // Bad targets: each is the partition's own InvalidRequest (or UnknownPartition), and
        // nothing moves.
        let before = placement(&cluster.node(1).addr, TOPIC, |p| ids(&p.replicas) == [c, a]).await;
        for (replicas, why) in [
            (vec![9], "node 9 is not registered"),
            (vec![a, a], "a node named twice"),
            (vec![], "no replica at all"),
        ] {
            let error = admin
                .reassign_partition(TOPIC, 0, &replicas)
                .await
                .unwrap_err();
            assert_eq!(
                code(&error),
                Some(ErrorCode::InvalidRequest),
                "{why}: {error}"
            );
        }
        let unknown = admin.reassign_partition(TOPIC, 5, &[a]).await.unwrap_err();
        assert_eq!(code(&unknown), Some(ErrorCode::UnknownPartition));
        let addr = cluster.node(1).addr.clone();
        let (exit, _, stderr) = tokio::task::spawn_blocking(move || {
            vltava_at(
                &addr,
                &["partition", "reassign", TOPIC, "0", "--replicas", "9"],
            )
        })
        .await
        .unwrap();
        assert_eq!(exit, Some(1), "{stderr}");
        assert!(
            stderr.contains("InvalidRequest") && stderr.contains("node 9"),
            "{stderr}"
        );
        let after = placement(&cluster.node(1).addr, TOPIC, |_| true).await;
        assert_eq!(after, before, "the refused targets changed nothing");

        // A move to a node that cannot catch up (paused) stays under way, and `topic
        // describe` shows it; naming the replicas the partition had cancels it at once (they
        // are in sync). Requests go through node a only, and if node b led the metadata quorum
        // they wait for another controller: a request forwarded to the paused one would wait
        // out the forwarding timeout.
        cluster.node(b).pause();
        let through_a = super::admin(&[cluster.node(a).addr.clone()]).await;
        until_ok(FAILOVER_BOUND, || async {
            match metadata(&cluster.node(a).addr).await?.controller_id {
                Some(controller) if controller.0 != b => Ok(()),
                other => Err(ClientError::InvalidArgument(format!(
                    "controller {other:?} while node {b} is paused"
                ))),
            }
        })
        .await;
        let to_b_c_a = [b, c, a];
        let stalled = until_ok(FAILOVER_BOUND, || {
            through_a.reassign_partition(TOPIC, 0, &to_b_c_a)
        })
        .await;
        assert_eq!(
            stalled.target_replicas.as_deref().map(ids),
            Some(vec![b, c, a])
        );
        let expected = format!("reassigning to: {b},{c},{a}");
        let addr = cluster.node(a).addr.clone();
        let shown = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + FAILOVER_BOUND;
            loop {
                let (exit, stdout, stderr) = vltava_at(&addr, &["topic", "describe", TOPIC]);
                if exit == Some(0) && stdout.contains(&expected) {
                    return stdout;
                }
                assert!(
                    Instant::now() < deadline,
                    "no move shown: {stdout} {stderr}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .unwrap();
        assert!(shown.contains(&format!("replicas: {b},{c},{a}")), "{shown}");
        let cancelled = until_ok(FAILOVER_BOUND, || {
            through_a.reassign_partition(TOPIC, 0, &to_c_a)
        })
        .await;
        assert_eq!(cancelled.target_replicas, None, "{cancelled:?}");
        assert_eq!(ids(&cancelled.replicas), [c, a]);
        cluster.node(b).resume();
        wait_for_data_gone(&cluster, b, "after the cancelled move").await;

        // A deleted topic's data goes from every replica.
        until_ok(FAILOVER_BOUND, || admin.delete_topic(TOPIC)).await;
        wait_for_data_gone(&cluster, a, "after the topic's deletion").await;
        wait_for_data_gone(&cluster, c, "after the topic's deletion").await;
    });
}
