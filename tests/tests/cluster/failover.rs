//! Supervised failover (issue 14): when a node that leads partitions dies, is paused or is cut
//! off, the controller moves its partitions to in-sync replicas, producers carry on, and the
//! history checker finds nothing acknowledged lost, duplicated or rewritten.

use std::time::{Duration, Instant};

use vltava_client::connection::Connection;
use vltava_messages::protocol::{
    Acks, ErrorCode, InitProducerIdRequest, ProducePartition, ProduceRequest, ProduceResponse,
    ProduceTopic,
};
use vltava_messages::{
    BatchBuilder, Compression, PartitionId, ProducerEpoch, ProducerId, Sequence,
};
use vltava_tests::cluster::TestCluster;
use vltava_tests::history::History;

use super::replication::{PARTITIONS, TOPIC, under_load, wait_for_isr};
use super::{FAILOVER_BOUND, REQUEST_TIMEOUT, metadata};

/// Every partition of `TOPIC`'s leader and leader epoch, as node `addr` sees it (empty if it
/// does not answer).
async fn leaders(addr: &str) -> Vec<(Option<u32>, u32)> {
    match metadata(addr).await {
        Ok(answer) => answer
            .topics
            .iter()
            .find(|t| t.name == TOPIC)
            .map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (p.leader.map(|n| n.0), p.leader_epoch.0))
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// Waits until node `addr` sees every partition of `TOPIC` led by a node other than `gone`,
/// and returns the leaders.
async fn wait_for_leaders_other_than(addr: &str, gone: u32) -> Vec<(Option<u32>, u32)> {
    let deadline = Instant::now() + FAILOVER_BOUND;
    loop {
        let seen = leaders(addr).await;
        if !seen.is_empty() && seen.iter().all(|(l, _)| l.is_some_and(|l| l != gone)) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "partitions still led by node {gone} or by nobody: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the producer has more writes acknowledged on `partition` than `before`: it
/// carries on after a fault.
fn wait_for_acknowledgements(history: &History, partition: u32, before: usize, what: &str) {
    let started = Instant::now();
    let deadline = started + FAILOVER_BOUND;
    while history.acknowledged_count(TOPIC, PartitionId(partition)) <= before {
        assert!(
            Instant::now() < deadline,
            "{what}: nothing acknowledged on partition {partition} since"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "{what}: partition {partition} acknowledged again after {:?}",
        started.elapsed()
    );
}

/// A node other than `node` of a three-node cluster.
fn other_than(node: u32) -> u32 {
    if node == 1 { 2 } else { 1 }
}

/// kill -9 of the node leading a partition, three times (a different partition each round),
/// under an idempotent acks=all producer: the controller moves every partition the node led
/// to another in-sync replica at once (the node's process is found gone), the producer's
/// writes to them are acknowledged again before the node is back, and once it restarts it
/// rejoins every ISR as a follower. The history checker finds nothing lost or rewritten.
#[test]
fn a_killed_leaders_partitions_move_to_in_sync_replicas_and_nothing_acknowledged_is_lost() {
    let mut cluster = TestCluster::start(3, &["--replica-lag-time-max-ms", "1000"]);
    under_load(&mut cluster, |cluster, rt, history| {
        for round in 0..3u32 {
            let partition = round % PARTITIONS;
            let observer = cluster.node(1).addr.clone();
            let before = rt.block_on(leaders(&observer));
            let victim = before[partition as usize]
                .0
                .expect("every partition has a leader before the kill");
            let observer = cluster.node(other_than(victim)).addr.clone();
            let acknowledged = history.acknowledged_count(TOPIC, PartitionId(partition));
            cluster.node_mut(victim).kill();
            let after = rt.block_on(wait_for_leaders_other_than(&observer, victim));
            for (index, ((old_leader, old_epoch), (_, new_epoch))) in
                before.iter().zip(&after).enumerate()
            {
                if *old_leader == Some(victim) {
                    assert!(
                        new_epoch > old_epoch,
                        "round {round}: partition {index} moved without a new leader epoch"
                    );
                }
            }
            wait_for_acknowledgements(
                history,
                partition,
                acknowledged,
                &format!("round {round}, node {victim} killed"),
            );
            cluster.node_mut(victim).restart();
            rt.block_on(wait_for_isr(
                &observer,
                3,
                &format!("round {round}: node {victim} back"),
            ));
        }
    });
}

/// One acks=1 record to `partition` of `TOPIC` over `conn`: the produce answer.
async fn produce_acks_one(conn: &Connection, partition: u32, value: &str) -> ProduceResponse {
    let mut batch = BatchBuilder::new(Compression::None);
    batch.push(None, Some(value.as_bytes()), &[], 1_000);
    let request = ProduceRequest {
        acks: Acks::Leader,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: TOPIC.into(),
            partitions: vec![ProducePartition {
                partition: PartitionId(partition),
                current_leader_epoch: None,
                records: batch.build(),
            }],
        }],
    };
    conn.send(&request, REQUEST_TIMEOUT * 3)
        .await
        .expect("an answer")
}

/// SIGSTOP of a partition's leader for longer than its lease, under load: the controller moves
/// its partitions. A produce sent to the paused node meanwhile (acks=1, which an old leader
/// could otherwise acknowledge alone) is answered, once the node resumes, with the retriable
/// `NotLeader`, never with success; the node then follows and rejoins every ISR.
#[test]
fn a_paused_leader_acknowledges_nothing_after_its_lease_and_rejoins_as_a_follower() {
    let mut cluster = TestCluster::start(3, &["--replica-lag-time-max-ms", "1000"]);
    under_load(&mut cluster, |cluster, rt, history| {
        let observer = cluster.node(1).addr.clone();
        let victim = rt.block_on(leaders(&observer))[0]
            .0
            .expect("partition 0 has a leader");
        let observer = cluster.node(other_than(victim)).addr.clone();
        let conn = rt
            .block_on(Connection::connect(
                &cluster.node(victim).addr,
                "paused-leader",
            ))
            .unwrap();
        cluster.node(victim).pause();
        let paused_at = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(wait_for_leaders_other_than(&observer, victim));
            // Answers the producer had before the pause may still be on their way to the
            // history; what comes after this settling time was written on the new leader.
            std::thread::sleep(Duration::from_millis(300));
            let acknowledged = history.acknowledged_count(TOPIC, PartitionId(0));
            wait_for_acknowledgements(history, 0, acknowledged, "leader paused");
        }));
        // A write sent to the paused node waits in its socket until it resumes.
        let late = rt.spawn(async move { produce_acks_one(&conn, 0, "sent-while-paused").await });
        std::thread::sleep(Duration::from_millis(200));
        cluster.node(victim).resume();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
        eprintln!(
            "node {victim} paused for {:?}",
            paused_at.elapsed() - Duration::from_millis(200)
        );
        let answer = rt.block_on(late).unwrap();
        let result = &answer.topics[0].partitions[0];
        assert_eq!(
            result.error.as_ref().and_then(|e| e.error_code()),
            Some(ErrorCode::NotLeader),
            "the paused old leader answered {result:?}"
        );
        rt.block_on(wait_for_isr(
            &observer,
            3,
            &format!("node {victim} resumed"),
        ));
    });
}

/// Two of three nodes killed at once: the quorum is gone and so is every partition's ISR
/// majority, so writes stop; nothing acknowledged before is lost, and the partitions come
/// back (and producers carry on) once one of the two returns.
#[test]
fn two_nodes_killed_at_once_stop_writes_and_one_returning_brings_them_back() {
    let mut cluster = TestCluster::start(3, &[]);
    under_load(&mut cluster, |cluster, _rt, history| {
        let acknowledged = history.acknowledged_count(TOPIC, PartitionId(1));
        cluster.node_mut(2).kill();
        cluster.node_mut(3).kill();
        std::thread::sleep(Duration::from_secs(3));
        cluster.node_mut(2).restart();
        wait_for_acknowledgements(history, 1, acknowledged, "node 2 back");
        cluster.node_mut(3).restart();
    });
}

/// Every partition of `TOPIC`'s replicas (the first is the preferred leader), as `addr` sees
/// them.
async fn preferred_leaders(addr: &str) -> Vec<u32> {
    let answer = metadata(addr).await.unwrap();
    let topic = answer.topics.iter().find(|t| t.name == TOPIC).unwrap();
    topic.partitions.iter().map(|p| p.replicas[0].0).collect()
}

/// After a failover and the killed node's return, leadership goes back to each partition's
/// first replica once it has been in sync for `--preferred-leader-return-ms`, under load and
/// with nothing acknowledged lost: load spreads again without an operator.
#[test]
fn leadership_returns_to_the_preferred_replica_after_it_rejoins() {
    let mut cluster = TestCluster::start(
        3,
        &[
            "--replica-lag-time-max-ms",
            "1000",
            "--preferred-leader-return-ms",
            "2000",
        ],
    );
    under_load(&mut cluster, |cluster, rt, _history| {
        let observer = cluster.node(1).addr.clone();
        let preferred = rt.block_on(preferred_leaders(&observer));
        let victim = preferred[0];
        let observer = cluster.node(other_than(victim)).addr.clone();
        cluster.node_mut(victim).kill();
        rt.block_on(wait_for_leaders_other_than(&observer, victim));
        cluster.node_mut(victim).restart();
        rt.block_on(async {
            let deadline = Instant::now() + FAILOVER_BOUND;
            loop {
                let now: Vec<Option<u32>> = leaders(&observer)
                    .await
                    .into_iter()
                    .map(|(l, _)| l)
                    .collect();
                let home: Vec<Option<u32>> = preferred.iter().map(|p| Some(*p)).collect();
                if now == home {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "leaders {now:?}, preferred {preferred:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    });
}

/// Produces one idempotent batch (one record) to `partition` of `topic` with acks=all over
/// `conn`: its base offset, or the error code.
async fn produce_idempotent(
    conn: &Connection,
    topic: &str,
    partition: u32,
    producer: (u64, u16),
    sequence: u32,
    value: &str,
) -> Result<u64, Option<ErrorCode>> {
    let mut batch = BatchBuilder::new(Compression::None).producer(
        ProducerId(producer.0),
        ProducerEpoch(producer.1),
        Sequence(sequence),
    );
    batch.push(None, Some(value.as_bytes()), &[], 1_000);
    let request = ProduceRequest {
        acks: Acks::All,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: topic.into(),
            partitions: vec![ProducePartition {
                partition: PartitionId(partition),
                current_leader_epoch: None,
                records: batch.build(),
            }],
        }],
    };
    let answer = conn
        .send(&request, REQUEST_TIMEOUT)
        .await
        .map_err(|e| e.code())?;
    let result = &answer.topics[0].partitions[0];
    match &result.error {
        Some(error) => Err(error.error_code()),
        None => Ok(result.base_offset.expect("an offset on success").0),
    }
}

/// Idempotence across failover: the followers rebuild each producer's state from the batches
/// they copy, so after the leader's node is killed the new leader answers a retry of a batch
/// the old leader wrote (the producer never saw its answer, say) as a duplicate with the
/// original offset, and the log holds it once; the next sequence goes on from there.
#[test]
fn a_new_leader_answers_a_retry_of_the_old_leaders_batch_with_its_original_offset() {
    let mut cluster = TestCluster::start(3, &[]);
    let rt = super::runtime();
    let bootstrap = cluster.bootstrap();
    let (victim, producer, first, second) = rt.block_on(async {
        let admin = super::admin(&bootstrap).await;
        super::until_ok(FAILOVER_BOUND, || {
            admin.create_topic("idempotent", 1, 3, std::collections::BTreeMap::new())
        })
        .await;
        wait_for_isr_of(&bootstrap[0], "idempotent", 3).await;
        let leader = leader_of(&bootstrap[0], "idempotent").await;
        let conn = Connection::connect(&bootstrap[leader as usize - 1], "idempotent")
            .await
            .unwrap();
        let answer = conn
            .send(
                &InitProducerIdRequest {
                    producer_id: None,
                    producer_epoch: None,
                },
                REQUEST_TIMEOUT,
            )
            .await
            .unwrap();
        let producer = (answer.producer_id.0, answer.producer_epoch.0);
        let first = produce_idempotent(&conn, "idempotent", 0, producer, 0, "a")
            .await
            .unwrap();
        let second = produce_idempotent(&conn, "idempotent", 0, producer, 1, "b")
            .await
            .unwrap();
        (leader, producer, first, second)
    });
    cluster.node_mut(victim).kill();
    let observer = cluster.node(other_than(victim)).addr.clone();
    rt.block_on(async {
        let deadline = Instant::now() + FAILOVER_BOUND;
        let new_leader = loop {
            let leader = leader_of(&observer, "idempotent").await;
            if leader != victim && leader != 0 {
                break leader;
            }
            assert!(Instant::now() < deadline, "no new leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let conn = Connection::connect(&bootstrap[new_leader as usize - 1], "idempotent")
            .await
            .unwrap();
        // The new leader may still be catching its high watermark up: retriable errors
        // until it answers.
        let retried = loop {
            match produce_idempotent(&conn, "idempotent", 0, producer, 1, "b").await {
                Ok(offset) => break offset,
                Err(code) => {
                    assert!(
                        code.is_some_and(ErrorCode::is_retriable),
                        "the retry was refused with {code:?}"
                    );
                    assert!(Instant::now() < deadline, "the retry never went through");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(
            retried, second,
            "a duplicate is answered with its original offset"
        );
        let third = produce_idempotent(&conn, "idempotent", 0, producer, 2, "c")
            .await
            .unwrap();
        assert_eq!(third, second + 1, "nothing was written twice");
        assert_eq!(second, first + 1);
    });
}

/// The leader of partition 0 of `topic` as `addr` sees it; 0 when there is none.
async fn leader_of(addr: &str, topic: &str) -> u32 {
    metadata(addr)
        .await
        .ok()
        .and_then(|answer| {
            answer
                .topics
                .iter()
                .find(|t| t.name == topic)
                .and_then(|t| t.partitions.first())
                .and_then(|p| p.leader)
                .map(|n| n.0)
        })
        .unwrap_or(0)
}

/// Waits until partition 0 of `topic` has `size` in-sync replicas, as `addr` sees it.
async fn wait_for_isr_of(addr: &str, topic: &str, size: usize) {
    let deadline = Instant::now() + FAILOVER_BOUND;
    loop {
        let isr = metadata(addr).await.ok().and_then(|answer| {
            answer
                .topics
                .iter()
                .find(|t| t.name == topic)
                .and_then(|t| t.partitions.first())
                .map(|p| p.in_sync_replicas.len())
        });
        if isr == Some(size) {
            return;
        }
        assert!(Instant::now() < deadline, "{topic}: ISR {isr:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
