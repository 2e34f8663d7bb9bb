//! Replicated partitions (issue 13): every replica of a replication-factor-3 topic holds the
//! leader's batches byte for byte, `acks=all` waits for the in-sync replicas, and a follower
//! that was killed catches up when it comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vltava_client::{
    Cluster, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, SeekTo,
};
use vltava_messages::protocol::ErrorCode;
use vltava_messages::{Offset, PartitionId};
use vltava_tests::cluster::TestCluster;
use vltava_tests::history::{CheckOptions, History, unique_value};

use super::{FAILOVER_BOUND, admin, code, metadata, runtime, until_ok};

pub(super) const TOPIC: &str = "replicated";
pub(super) const PARTITIONS: u32 = 3;

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
                    dump_replication_logs(&cluster);
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

/// The producer `under_load` runs: idempotent acks=all with a 3 s request timeout. A request
/// to a paused leader hangs until it times out (the connection stays up); the shorter timeout
/// was how these tests let the producer find the new leader before it watched the leader
/// itself (`LEADER_CHECK_INTERVAL`), and it keeps them quick. `under_load_with` takes others,
/// e.g. the default.
fn load_config() -> ProducerConfig {
    ProducerConfig {
        request_timeout: Duration::from_secs(3),
        ..ProducerConfig::default()
    }
}

/// An `acks=all` producer with `config` writing unique values to every partition of `TOPIC`
/// until `stop`, recording what was acknowledged (and what was sent without an answer) in
/// `history`.
async fn produce_until(
    bootstrap: Vec<String>,
    partitions: u32,
    history: History,
    stop: Arc<AtomicBool>,
    config: ProducerConfig,
) -> u64 {
    let producer = Producer::new(
        Cluster::connect(&bootstrap, "replication-load")
            .await
            .unwrap(),
        config,
    )
    .await
    .unwrap();
    let (deliveries, mut answers) =
        tokio::sync::mpsc::channel::<(u32, Vec<u8>, vltava_client::Delivery)>(4096);
    let recorder = {
        let history = history.clone();
        tokio::spawn(async move {
            let mut acknowledged = 0u64;
            while let Some((partition, value, delivery)) = answers.recv().await {
                match delivery.wait().await {
                    Ok(written) => {
                        acknowledged += 1;
                        history.acknowledged(
                            TOPIC,
                            PartitionId(written.partition),
                            written.offset.expect("acks=all has offsets"),
                            b"",
                            &value,
                        );
                    }
                    Err(_) => history.attempted(TOPIC, PartitionId(partition), b"", &value),
                }
            }
            acknowledged
        })
    };
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let partition = u32::try_from(seq % u64::from(partitions)).unwrap();
        let value = unique_value(1, seq);
        let record = ProducerRecord {
            topic: TOPIC.to_owned(),
            partition: Some(partition),
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
            timestamp: None,
        };
        match producer.send(record).await {
            Ok(delivery) => deliveries.send((partition, value, delivery)).await.unwrap(),
            Err(_) => history.attempted(TOPIC, PartitionId(partition), b"", &value),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    producer.flush().await.ok();
    drop(deliveries);
    let acknowledged = recorder.await.unwrap();
    producer.close().await.ok();
    acknowledged
}

/// Reads every partition from the earliest offset through `addr` into `history` until every
/// partition's read offset reaches its high watermark as `expected` says (the acknowledged
/// count is a lower bound: unacknowledged writes may be there too).
async fn read_all(addr: &str, history: &History, reader: &str, expected: u64) {
    let mut consumer = Consumer::new(
        Cluster::connect(&[addr.to_owned()], reader).await.unwrap(),
        ConsumerConfig::default(),
    );
    consumer
        .assign(TOPIC, None, SeekTo::Earliest)
        .await
        .unwrap();
    let deadline = Instant::now() + FAILOVER_BOUND;
    let mut read = 0u64;
    let mut idle_polls = 0;
    while Instant::now() < deadline && (read < expected || idle_polls < 3) {
        let records = consumer.poll().await.unwrap();
        if records.is_empty() {
            idle_polls += 1;
        } else {
            idle_polls = 0;
        }
        for record in records {
            read += 1;
            history.read(
                reader,
                TOPIC,
                PartitionId(record.partition),
                Offset(record.offset),
                record.key.as_deref().unwrap_or_default(),
                &record.value.unwrap_or_default(),
            );
        }
    }
}

/// The ISR of every partition of `TOPIC` as node `addr` sees it.
async fn isr_sizes(addr: &str) -> Vec<usize> {
    match metadata(addr).await {
        Ok(answer) => answer
            .topics
            .iter()
            .find(|t| t.name == TOPIC)
            .map(|t| {
                t.partitions
                    .iter()
                    .map(|p| p.in_sync_replicas.len())
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// Waits until every partition's ISR has `size` members, as node `addr` sees it.
pub(super) async fn wait_for_isr(addr: &str, size: usize, what: &str) {
    let deadline = Instant::now() + FAILOVER_BOUND;
    loop {
        let sizes = isr_sizes(addr).await;
        if !sizes.is_empty() && sizes.iter().all(|s| *s == size) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: ISR sizes {sizes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints what every node logged about replication (leadership, ISR changes, fetches,
/// truncations, refusals), for a failed test to explain itself.
pub(super) fn dump_replication_logs(cluster: &TestCluster) {
    for (index, node) in cluster.nodes.iter().enumerate() {
        let log = node.log_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("openraft"))
            .filter(|l| {
                [
                    "ISR",
                    "fetch",
                    "epoch",
                    "assignment",
                    "truncat",
                    "refused",
                    "not applied",
                ]
                .iter()
                .any(|w| l.contains(w))
            })
            .collect();
        let shown = lines.len().saturating_sub(200);
        eprintln!(
            "--- node {} (last 200 lines):\n{}",
            index + 1,
            lines[shown..].join("\n")
        );
    }
}

/// Waits until node 3 left the ISR of (at least) the two partitions it follows: when it is
/// killed the controller takes it out of every ISR at once, when it is paused its leaders
/// drop it after the lag time.
async fn wait_for_followers_out(addr: &str) {
    let deadline = Instant::now() + FAILOVER_BOUND;
    loop {
        let sizes = isr_sizes(addr).await;
        if sizes.iter().filter(|s| **s == 2).count() >= 2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 stayed in the ISR of the partitions it follows: {sizes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `during` while an idempotent acks=all producer writes to an RF 3 topic of 3
/// partitions, then reads everything back and lets the history checker decide: nothing
/// acknowledged lost, nothing duplicated, no offset with two values, order kept, no
/// consumer reset.
pub(super) fn under_load(
    cluster: &mut TestCluster,
    during: impl FnOnce(&mut TestCluster, &tokio::runtime::Runtime, &History),
) {
    under_load_with(cluster, load_config(), during);
}

/// `under_load` with the producer's settings given.
pub(super) fn under_load_with(
    cluster: &mut TestCluster,
    config: ProducerConfig,
    during: impl FnOnce(&mut TestCluster, &tokio::runtime::Runtime, &History),
) {
    let rt = runtime();
    let bootstrap = cluster.bootstrap();
    rt.block_on(async {
        let admin = admin(&bootstrap).await;
        until_ok(FAILOVER_BOUND, || {
            admin.create_topic(TOPIC, PARTITIONS, 3, BTreeMap::new())
        })
        .await;
        wait_for_isr(&bootstrap[0], 3, "a new topic").await;
    });
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let load = rt.spawn(produce_until(
        bootstrap.clone(),
        PARTITIONS,
        history.clone(),
        Arc::clone(&stop),
        config,
    ));
    std::thread::sleep(Duration::from_secs(2));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        during(cluster, &rt, &history)
    }));
    if let Err(panic) = outcome {
        dump_replication_logs(cluster);
        std::panic::resume_unwind(panic);
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let acknowledged = rt.block_on(load).unwrap();
    assert!(acknowledged > 0, "the producer got nothing acknowledged");
    rt.block_on(read_all(
        &cluster.node(1).addr,
        &history,
        "reader-1",
        acknowledged,
    ));
    history
        .check(CheckOptions {
            require_all_acknowledged_read: true,
            replicas_identical: false,
            max_position_resets: Some(0),
            require_reads_written: true,
        })
        .assert_ok();
}

/// kill -9 of a follower's node while an acks=all producer runs, then a restart: the
/// follower truncates what it must, catches up and rejoins the ISR; the history checker finds
/// nothing acknowledged lost, duplicated or rewritten.
#[test]
fn a_follower_killed_under_load_catches_up_and_rejoins_the_isr() {
    let mut cluster = TestCluster::start(3, &["--replica-lag-time-max-ms", "1000"]);
    under_load(&mut cluster, |cluster, rt, _| {
        // Node 3 leads one partition and follows the other two; only its followers' side
        // matters here (failover.rs covers the partition it leads, which moves).
        cluster.node_mut(3).kill();
        let addr = cluster.node(1).addr.clone();
        rt.block_on(wait_for_followers_out(&addr));
        cluster.node_mut(3).restart();
        let addr = cluster.node(1).addr.clone();
        rt.block_on(wait_for_isr(&addr, 3, "node 3 back"));
    });
}

/// SIGSTOP of a follower: it leaves the ISR after the lag time while acks=all goes on with
/// the other two; SIGCONT: it catches up and returns.
#[test]
fn a_paused_follower_leaves_the_isr_and_returns_when_resumed() {
    let mut cluster = TestCluster::start(3, &["--replica-lag-time-max-ms", "1000"]);
    under_load(&mut cluster, |cluster, rt, _| {
        cluster.node(3).pause();
        let addr = cluster.node(1).addr.clone();
        rt.block_on(wait_for_followers_out(&addr));
        cluster.node(3).resume();
        rt.block_on(wait_for_isr(&addr, 3, "node 3 resumed"));
    });
}
