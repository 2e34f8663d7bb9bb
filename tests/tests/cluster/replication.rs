//! Replicated partitions (issue 13): every replica of a replication-factor-3 topic holds the
//! leader's batches byte for byte, `acks=all` waits for the in-sync replicas, and a follower
//! that was killed catches up when it comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use vltava_client::{
    Cluster, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, SeekTo,
};
use vltava_messages::protocol::ErrorCode;
use vltava_tests::cluster::TestCluster;

use super::{FAILOVER_BOUND, admin, code, metadata, runtime, until_ok};

const TOPIC: &str = "replicated";
const PARTITIONS: u32 = 3;

/// The bytes of every segment file of `topic`-`partition` in a node's data directory, by file
/// name.
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

/// Produces `count` events to each partition with `acks=all` and returns the values by
/// partition with the offsets they were acknowledged at.
async fn produce(bootstrap: &[String], count: u32) -> BTreeMap<u32, Vec<(u64, String)>> {
    let producer = Producer::new(
        Cluster::connect(bootstrap, "replication-test")
            .await
            .unwrap(),
        ProducerConfig::default(),
    )
    .await
    .unwrap();
    let mut acknowledged: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let mut deliveries = Vec::new();
        for i in 0..count {
            let value = format!("p{partition}-e{i}");
            let record = ProducerRecord {
                topic: TOPIC.to_owned(),
                partition: Some(partition),
                key: None,
                value: Some(value.clone().into_bytes()),
                headers: Vec::new(),
                timestamp: None,
            };
            deliveries.push((value, producer.send(record).await.unwrap()));
        }
        for (value, delivery) in deliveries {
            let written = delivery.wait().await.expect("acknowledged");
            acknowledged
                .entry(written.partition)
                .or_default()
                .push((written.offset.expect("acks=all has offsets").0, value));
        }
    }
    producer.close().await.unwrap();
    acknowledged
}

/// Reads every partition from the earliest offset through `addr` until `expected` events came.
async fn consume(addr: &str, expected: usize) -> BTreeMap<u32, Vec<(u64, String)>> {
    let mut consumer = Consumer::new(
        Cluster::connect(&[addr.to_owned()], "replication-test")
            .await
            .unwrap(),
        ConsumerConfig::default(),
    );
    consumer
        .assign(TOPIC, None, SeekTo::Earliest)
        .await
        .unwrap();
    let mut read: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
    let deadline = Instant::now() + FAILOVER_BOUND;
    while read.values().map(Vec::len).sum::<usize>() < expected && Instant::now() < deadline {
        for record in consumer.poll().await.unwrap() {
            read.entry(record.partition).or_default().push((
                record.offset,
                String::from_utf8(record.value.unwrap()).unwrap(),
            ));
        }
    }
    read
}

/// Sends one event to partition 0 and waits for its answer.
async fn send_one(
    producer: &Producer,
    value: &str,
) -> Result<vltava_client::RecordMetadata, vltava_client::ClientError> {
    let record = ProducerRecord {
        topic: TOPIC.to_owned(),
        partition: Some(0),
        key: None,
        value: Some(value.as_bytes().to_vec()),
        headers: Vec::new(),
        timestamp: None,
    };
    producer.send(record).await?.wait().await
}

/// A replication-factor-3 topic: metadata lists three replicas and three in-sync replicas for
/// every partition, events acknowledged with `acks=all` are read back through another node
/// each once and in order, and the three replicas' segment files end up identical, byte for
/// byte (followers append the leader's batches unchanged).
#[test]
fn every_replica_holds_the_leaders_batches_byte_for_byte() {
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();
    runtime().block_on(async {
        let admin = admin(&bootstrap).await;
        until_ok(FAILOVER_BOUND, || {
            admin.create_topic(TOPIC, PARTITIONS, 3, BTreeMap::new())
        })
        .await;
        let answer = metadata(&cluster.node(2).addr).await.unwrap();
        let topic = answer.topics.iter().find(|t| t.name == TOPIC).unwrap();
        for p in &topic.partitions {
            let replicas: BTreeSet<u32> = p.replicas.iter().map(|n| n.0).collect();
            let isr: BTreeSet<u32> = p.in_sync_replicas.iter().map(|n| n.0).collect();
            assert_eq!(replicas, BTreeSet::from([1, 2, 3]), "{p:?}");
            assert_eq!(
                isr, replicas,
                "a new partition starts with every replica in sync"
            );
        }

        let acknowledged = produce(&bootstrap, 200).await;
        let read = consume(&cluster.node(3).addr, 200 * PARTITIONS as usize).await;
        assert_eq!(
            read, acknowledged,
            "every acknowledged event once, in order"
        );

        for partition in 0..PARTITIONS {
            let identical = || {
                let copies: Vec<_> = (1..=3)
                    .map(|id| segments(&cluster.data_dir(id), TOPIC, partition))
                    .collect();
                !copies[0].is_empty() && copies.iter().all(|c| *c == copies[0])
            };
            let deadline = Instant::now() + FAILOVER_BOUND;
            while !identical() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                identical(),
                "partition {partition}: the three replicas' segments differ"
            );
        }
    });
}

/// With two of a partition's three replicas killed, `acks=all` is refused with
/// `NotEnoughReplicas` once the leader has shrunk its ISR (after the lag time, here 1 s) and
/// nothing is appended; when one follower comes back it catches up, rejoins the ISR and
/// `acks=all` succeeds again, with every event acknowledged before still there. Five nodes,
/// so that the controller quorum (all five) outlives the two killed replicas and can commit
/// the ISR changes.
#[test]
fn acks_all_needs_the_minimum_isr_and_a_returning_follower_rejoins_it() {
    let mut cluster = TestCluster::start(5, &["--replica-lag-time-max-ms", "1000"]);
    let bootstrap = cluster.bootstrap();
    let rt = runtime();
    let (leader, followers) = rt.block_on(async {
        let admin = admin(&bootstrap).await;
        until_ok(FAILOVER_BOUND, || {
            admin.create_topic(TOPIC, 1, 3, BTreeMap::new())
        })
        .await;
        let answer = metadata(&cluster.node(1).addr).await.unwrap();
        let topic = answer.topics.iter().find(|t| t.name == TOPIC).unwrap();
        let p = &topic.partitions[0];
        let leader = p.leader.unwrap().0;
        let followers: Vec<u32> = p
            .replicas
            .iter()
            .map(|n| n.0)
            .filter(|n| *n != leader)
            .collect();
        (leader, followers)
    });
    assert_eq!(followers.len(), 2);
    let leader_addr = cluster.node(leader).addr.clone();
    let before: Vec<String> = (0..20).map(|i| format!("before-{i}")).collect();
    rt.block_on(async {
        let producer = Producer::new(
            Cluster::connect(std::slice::from_ref(&leader_addr), "replication-test")
                .await
                .unwrap(),
            ProducerConfig::default(),
        )
        .await
        .unwrap();
        for value in &before {
            until_ok(FAILOVER_BOUND, || send_one(&producer, value)).await;
        }
        producer.close().await.unwrap();
    });
    for id in &followers {
        cluster.node_mut(*id).kill();
    }
    rt.block_on(async {
        // Without retries past half a second, so the refusal itself comes back.
        let producer = Producer::new(
            Cluster::connect(std::slice::from_ref(&leader_addr), "replication-test")
                .await
                .unwrap(),
            ProducerConfig {
                idempotent: false,
                delivery_timeout: Duration::from_millis(500),
                ..ProducerConfig::default()
            },
        )
        .await
        .unwrap();
        // Writes sent while the shrink is being decided are appended and then failed
        // (NotEnoughReplicasAfterAppend, retried, refused): never acknowledged, they may stay
        // in the log. Once the smaller ISR is committed, a write is refused before it is
        // appended.
        let deadline = Instant::now() + FAILOVER_BOUND;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match send_one(&producer, &format!("unacknowledged-{attempt}")).await {
                Err(e) if code(&e) == Some(ErrorCode::NotEnoughReplicas) => break,
                Ok(_) => panic!("acks=all acknowledged with two of three replicas down"),
                _ if Instant::now() > deadline => {
                    panic!("acks=all was never refused with NotEnoughReplicas")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let refused = send_one(&producer, "refused").await;
        assert_eq!(
            refused.as_ref().err().and_then(code),
            Some(ErrorCode::NotEnoughReplicas),
            "{refused:?}"
        );
    });
    cluster.node_mut(followers[0]).restart();
    rt.block_on(async {
        let producer = Producer::new(
            Cluster::connect(std::slice::from_ref(&leader_addr), "replication-test")
                .await
                .unwrap(),
            ProducerConfig::default(),
        )
        .await
        .unwrap();
        let deadline = Instant::now() + FAILOVER_BOUND;
        loop {
            match send_one(&producer, "after").await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    for id in [leader, followers[0]] {
                        let log = cluster.node(id).log_text();
                        let wanted: Vec<&str> = log
                            .lines()
                            .filter(|l| !l.contains("openraft"))
                            .filter(|l| {
                                [
                                    "ISR",
                                    "fetch",
                                    "epoch",
                                    "assignment",
                                    "truncat",
                                    "fenc",
                                    "lease",
                                ]
                                .iter()
                                .any(|w| l.contains(w))
                            })
                            .collect();
                        eprintln!("--- node {id}:\n{}", wanted.join("\n"));
                    }
                    panic!("acks=all still refused after a follower came back: {e}");
                }
            }
        }
        producer.close().await.unwrap();
        let read = consume(&leader_addr, before.len() + 1).await;
        let values: Vec<&str> = read
            .get(&0)
            .map(|events| events.iter().map(|(_, v)| v.as_str()).collect())
            .unwrap_or_default();
        let expected: Vec<&str> = before.iter().map(String::as_str).collect();
        assert_eq!(
            values.get(..expected.len()),
            Some(&expected[..]),
            "nothing acknowledged was lost"
        );
        assert!(
            !values.contains(&"refused"),
            "a refused write was not appended: {values:?}"
        );
        assert_eq!(values.last(), Some(&"after"));
    });
}
