//! Producing and consuming through the Rust client against a real node: keys, order per
//! partition, headers, acks levels, idempotent retries, long-poll, list offsets, topic admin.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vltava_client::partitioner::partition_for_key;
use vltava_client::{
    Admin, Cluster, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, SeekTo,
};
use vltava_messages::protocol::{Acks, ErrorCode};
use vltava_tests::TestNode;

use super::runtime;

fn record(topic: &str, key: Option<&str>, value: String) -> ProducerRecord {
    ProducerRecord {
        topic: topic.into(),
        key: key.map(|k| k.as_bytes().to_vec()),
        value: Some(value.into_bytes()),
        ..ProducerRecord::default()
    }
}

/// Reads until `count` events arrived or 20 s passed.
async fn read_n(consumer: &mut Consumer, count: usize) -> Vec<vltava_client::ConsumerRecord> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < count && Instant::now() < deadline {
        out.extend(consumer.poll().await.expect("poll"));
    }
    out
}

#[test]
fn keyed_events_keep_their_partition_and_order_and_unkeyed_ones_spread() {
    let node = TestNode::start();
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "test").await.unwrap();
        Admin::new(cluster.clone())
            .create_topic("orders", 4, 1, BTreeMap::new())
            .await
            .unwrap();
        let producer = Producer::new(cluster.clone(), ProducerConfig::default())
            .await
            .unwrap();
        let mut deliveries = Vec::new();
        for i in 0..400 {
            let key = format!("customer-{}", i % 10);
            deliveries.push((
                key.clone(),
                producer
                    .send(record("orders", Some(&key), format!("{key}:{i}")))
                    .await
                    .unwrap(),
            ));
        }
        for i in 0..40 {
            deliveries.push((
                String::new(),
                producer
                    .send(record("orders", None, format!("nokey:{i}")))
                    .await
                    .unwrap(),
            ));
        }
        producer.flush().await.unwrap();
        for (key, delivery) in deliveries {
            let meta = delivery.wait().await.unwrap();
            assert!(meta.offset.is_some());
            if !key.is_empty() {
                assert_eq!(
                    meta.partition,
                    partition_for_key(key.as_bytes(), 4),
                    "same key, same partition"
                );
            }
        }
        let mut consumer = Consumer::new(cluster, ConsumerConfig::default());
        consumer
            .assign("orders", None, SeekTo::Earliest)
            .await
            .unwrap();
        let records = read_n(&mut consumer, 440).await;
        assert_eq!(records.len(), 440);
        // Per key, values come back in the order they were sent.
        let mut last: HashMap<String, i64> = HashMap::new();
        for r in &records {
            let value = String::from_utf8(r.value.clone().unwrap()).unwrap();
            let (key, i) = value.split_once(':').unwrap();
            if key != "nokey" {
                assert_eq!(r.key.as_deref(), Some(key.as_bytes()));
                let i: i64 = i.parse().unwrap();
                let previous = last.insert(key.to_owned(), i);
                assert!(previous.is_none_or(|p| p < i), "order kept for {key}");
            }
        }
        // Offsets are dense per partition from 0.
        let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for r in &records {
            per_partition.entry(r.partition).or_default().push(r.offset);
        }
        for offsets in per_partition.values() {
            assert_eq!(*offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
        }
    });
}

/// `send` only queues: a producer dropped without `close` (an early return, a panic in the
/// caller's task) still sends the events it holds, here in batches that would otherwise wait
/// an hour for their linger.
#[test]
fn a_producer_dropped_without_close_still_sends_what_it_holds() {
    let node = TestNode::start();
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "test").await.unwrap();
        Admin::new(cluster.clone())
            .create_topic("dropped", 3, 1, BTreeMap::new())
            .await
            .unwrap();
        let config = ProducerConfig {
            linger: Duration::from_secs(3600),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(cluster.clone(), config).await.unwrap();
        let mut deliveries = Vec::new();
        for i in 0..120 {
            let key = format!("k{}", i % 7);
            deliveries.push(
                producer
                    .send(record("dropped", Some(&key), format!("{i}")))
                    .await
                    .unwrap(),
            );
        }
        drop(producer);
        for delivery in deliveries {
            let meta = tokio::time::timeout(Duration::from_secs(10), delivery.wait())
                .await
                .expect("answered within 10 s")
                .expect("delivered");
            assert!(meta.offset.is_some());
        }
        let mut consumer = Consumer::new(cluster, ConsumerConfig::default());
        consumer
            .assign("dropped", None, SeekTo::Earliest)
            .await
            .unwrap();
        let mut values: Vec<u32> = read_n(&mut consumer, 120)
            .await
            .iter()
            .map(|r| {
                std::str::from_utf8(r.value.as_deref().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        values.sort_unstable();
        assert_eq!(values, (0..120).collect::<Vec<_>>(), "every event once");
    });
}

#[test]
fn headers_timestamps_and_every_acks_level_round_trip() {
    let node = TestNode::start();
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "test").await.unwrap();
        Admin::new(cluster.clone())
            .create_topic("events", 1, 1, BTreeMap::new())
            .await
            .unwrap();
        for acks in [Acks::All, Acks::Leader, Acks::None] {
            let producer = Producer::new(
                cluster.clone(),
                ProducerConfig {
                    acks,
                    ..ProducerConfig::default()
                },
            )
            .await
            .unwrap();
            let mut r = record("events", Some("k"), format!("acks {acks:?}"));
            r.headers = vec![
                ("trace".into(), b"abc".to_vec()),
                ("bin".into(), vec![0, 255]),
            ];
            r.timestamp = Some(1_700_000_000_123);
            let delivery = producer.send(r).await.unwrap();
            producer.flush().await.unwrap();
            let meta = delivery.wait().await.unwrap();
            assert_eq!(
                meta.offset.is_some(),
                acks != Acks::None,
                "acks=0 gets no offset"
            );
            producer.close().await.unwrap();
        }
        let mut consumer = Consumer::new(cluster, ConsumerConfig::default());
        consumer
            .assign("events", None, SeekTo::Earliest)
            .await
            .unwrap();
        let records = read_n(&mut consumer, 3).await;
        assert_eq!(records.len(), 3);
        for r in &records {
            assert_eq!(r.timestamp, 1_700_000_000_123);
            assert_eq!(
                r.headers,
                vec![
                    ("trace".to_owned(), b"abc".to_vec()),
                    ("bin".to_owned(), vec![0, 255])
                ]
            );
        }
        assert_eq!(records[2].value.as_deref(), Some(b"acks None".as_slice()));
    });
}

#[test]
fn a_long_poll_fetch_wakes_when_data_arrives() {
    let node = TestNode::start();
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "test").await.unwrap();
        Admin::new(cluster.clone())
            .create_topic("wake", 1, 1, BTreeMap::new())
            .await
            .unwrap();
        let mut consumer = Consumer::new(
            cluster.clone(),
            ConsumerConfig {
                max_wait: Duration::from_secs(20),
                ..ConsumerConfig::default()
            },
        );
        consumer.assign("wake", None, SeekTo::Latest).await.unwrap();
        let poll = tokio::spawn(async move {
            let started = Instant::now();
            let records = consumer.poll().await.unwrap();
            (records, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let producer = Producer::new(cluster, ProducerConfig::default())
            .await
            .unwrap();
        producer
            .send(record("wake", None, "hello".into()))
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        let (records, waited) = poll.await.unwrap();
        assert_eq!(
            records.len(),
            1,
            "the parked fetch returned the new event after {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(10),
            "woken by the write, not by the 20 s timeout ({waited:?})"
        );
    });
}

/// The consumer reads ahead while the caller handles what `poll` returned. Read straight
/// through, that must neither skip nor repeat an offset; after a seek, what was read ahead
/// from the old position must not be delivered.
#[test]
fn reading_ahead_keeps_order_and_a_seek_drops_what_was_read_ahead() {
    let node = TestNode::start();
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "test").await.unwrap();
        Admin::new(cluster.clone())
            .create_topic("ahead", 1, 1, BTreeMap::new())
            .await
            .unwrap();
        // Small batches and small fetches: many fetches, each answered with a batch or two.
        let config = ProducerConfig {
            batch_bytes: 2048,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(cluster.clone(), config).await.unwrap();
        for i in 0..3000 {
            producer
                .send(record("ahead", None, format!("{i:08}")))
                .await
                .unwrap();
        }
        producer.close().await.unwrap();
        let config = ConsumerConfig {
            max_bytes: 4096,
            partition_max_bytes: 4096,
            max_wait: Duration::from_millis(300),
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::new(cluster, config);
        consumer
            .assign("ahead", None, SeekTo::Earliest)
            .await
            .unwrap();
        let first = consumer.poll().await.unwrap();
        assert!(!first.is_empty() && first.len() < 3000, "a small fetch");
        assert_eq!(first[0].offset, 0);
        // A fetch from the position after `first` is now in flight; seek back.
        consumer.seek("ahead", 0, SeekTo::Offset(0)).await.unwrap();
        let again = consumer.poll().await.unwrap();
        assert_eq!(again[0].offset, 0, "the seek wins over what was read ahead");
        let mut offsets: Vec<u64> = again.iter().map(|r| r.offset).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while offsets.len() < 3000 && Instant::now() < deadline {
            offsets.extend(consumer.poll().await.unwrap().iter().map(|r| r.offset));
        }
        assert_eq!(
            offsets,
            (0..3000).collect::<Vec<u64>>(),
            "every offset once, in order"
        );
        // At the end, what was read ahead is empty; `poll` still long-polls before it says
        // that nothing came.
        let started = Instant::now();
        assert!(consumer.poll().await.unwrap().is_empty());
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "an empty poll waited {:?}, not max_wait",
            started.elapsed()
        );
        // And forwards: a seek past what was read ahead.
        consumer
            .seek("ahead", 0, SeekTo::Offset(2500))
            .await
            .unwrap();
        let _ = consumer.poll().await.unwrap();
        consumer
            .seek("ahead", 0, SeekTo::Offset(1000))
            .await
            .unwrap();
        let records = consumer.poll().await.unwrap();
        assert_eq!(records[0].offset, 1000);
        assert_eq!(records[0].value.as_deref(), Some(&b"00001000"[..]));
    });
}

#[test]
fn seek_by_timestamp_and_list_offsets() {
    let node = TestNode::start();
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "test").await.unwrap();
        Admin::new(cluster.clone())
            .create_topic("times", 1, 1, BTreeMap::new())
            .await
            .unwrap();
        let producer = Producer::new(
            cluster.clone(),
            ProducerConfig {
                linger: Duration::ZERO,
                ..ProducerConfig::default()
            },
        )
        .await
        .unwrap();
        for i in 0..10i64 {
            let mut r = record("times", None, format!("t{i}"));
            r.timestamp = Some(1_000_000 + i * 1000);
            producer.send(r).await.unwrap().wait().await.unwrap();
        }
        let check = cluster.clone();
        let mut consumer = Consumer::new(cluster, ConsumerConfig::default());
        consumer
            .assign("times", None, SeekTo::Timestamp(1_004_500))
            .await
            .unwrap();
        let records = read_n(&mut consumer, 5).await;
        assert_eq!(records.first().map(|r| r.offset), Some(5));
        use vltava_messages::protocol::OffsetSpec;
        assert_eq!(
            consumer
                .list_offset("times", 0, OffsetSpec::Earliest)
                .await
                .unwrap(),
            Some(0)
        );
        assert_eq!(
            consumer
                .list_offset("times", 0, OffsetSpec::Latest)
                .await
                .unwrap(),
            Some(10)
        );
        assert_eq!(
            consumer
                .list_offset("times", 0, OffsetSpec::Timestamp(9_999_999))
                .await
                .unwrap(),
            None
        );
        // The answer carries the found record's own timestamp, not the one asked for.
        let (connection, _) = check
            .leader("times", vltava_messages::PartitionId(0))
            .await
            .unwrap();
        let request = vltava_messages::protocol::ListOffsetsRequest {
            topics: vec![vltava_messages::protocol::ListOffsetsTopic {
                name: "times".into(),
                partitions: vec![vltava_messages::protocol::ListOffsetsPartition {
                    partition: vltava_messages::PartitionId(0),
                    spec: OffsetSpec::Timestamp(1_004_500),
                    current_leader_epoch: None,
                }],
            }],
        };
        let answer = connection
            .send(&request, Duration::from_secs(10))
            .await
            .unwrap();
        let p = &answer.topics[0].partitions[0];
        assert_eq!(
            (p.offset.map(|o| o.0), p.timestamp),
            (Some(5), Some(1_005_000))
        );
    });
}

#[test]
fn topic_admin_creates_alters_describes_and_deletes() {
    let node = TestNode::start();
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "test").await.unwrap();
        let admin = Admin::new(cluster.clone());
        admin
            .create_topic(
                "t1",
                2,
                1,
                BTreeMap::from([("retention.ms".into(), "60000".into())]),
            )
            .await
            .unwrap();
        let error = admin
            .create_topic("t1", 2, 1, BTreeMap::new())
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::TopicAlreadyExists));
        let error = admin
            .create_topic("bad name", 1, 1, BTreeMap::new())
            .await
            .unwrap_err();
        assert!(
            matches!(
                error.code(),
                Some(ErrorCode::InvalidTopicName | ErrorCode::InvalidRequest)
            ),
            "{error}"
        );
        let error = admin
            .create_topic("t2", 1, 3, BTreeMap::new())
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::InvalidReplicationFactor));
        let error = admin
            .create_topic(
                "t3",
                1,
                1,
                BTreeMap::from([("retention.ms".into(), "soon".into())]),
            )
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::InvalidConfig));
        admin
            .alter_topic_configs(
                "t1",
                BTreeMap::from([("segment.bytes".into(), "1048576".into())]),
                vec!["retention.ms".into()],
            )
            .await
            .unwrap();
        admin.create_partitions("t1", 5).await.unwrap();
        let described = admin.describe_topics(&["t1".into()]).await.unwrap();
        assert_eq!(described[0].partitions.len(), 5);
        let config = |name: &str| {
            described[0]
                .configs
                .iter()
                .find(|c| c.name == name)
                .cloned()
                .unwrap()
        };
        assert_eq!(config("segment.bytes").value, "1048576");
        assert!(!config("segment.bytes").is_default);
        assert!(config("retention.ms").is_default);
        // The new partitions serve.
        let producer = Producer::new(cluster.clone(), ProducerConfig::default())
            .await
            .unwrap();
        let mut r = record("t1", None, "in partition 4".into());
        r.partition = Some(4);
        assert_eq!(
            producer
                .send(r)
                .await
                .unwrap()
                .wait()
                .await
                .unwrap()
                .offset
                .map(|o| o.0),
            Some(0)
        );
        admin.delete_topic("t1").await.unwrap();
        let metadata = admin.metadata().await.unwrap();
        assert!(metadata.topics.iter().all(|t| t.name != "t1"));
        // A topic of the same name starts empty.
        admin
            .create_topic("t1", 1, 1, BTreeMap::new())
            .await
            .unwrap();
        let consumer = Consumer::new(cluster, ConsumerConfig::default());
        assert_eq!(
            consumer
                .list_offset("t1", 0, vltava_messages::protocol::OffsetSpec::Latest)
                .await
                .unwrap(),
            Some(0)
        );
    });
}

/// Issue 12: several bootstrap addresses, and any live one works. A closed port and a node
/// that accepts connections but never answers (as a paused node does: its kernel completes
/// the TCP handshake) come first; the client gets past both within its documented bound
/// (`CONNECT_TIMEOUT` for the silent one) and then works against the live node.
#[test]
fn any_live_bootstrap_address_works() {
    let node = TestNode::start();
    // Never accepted or read: connections to it complete in the kernel and then hear nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let dead_addr = format!("127.0.0.1:{}", vltava_tests::free_port());
    let rt = runtime();
    rt.block_on(async {
        let started = Instant::now();
        let cluster = Cluster::connect(
            &[dead_addr, silent_addr, node.addr.clone()],
            "several-bootstraps",
        )
        .await
        .expect("the live node answers");
        let took = started.elapsed();
        assert!(
            took < vltava_client::connection::CONNECT_TIMEOUT + Duration::from_secs(3),
            "{took:?}"
        );
        Admin::new(Arc::clone(&cluster))
            .create_topic("reachable", 1, 1, BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(cluster.partition_count("reachable").await.unwrap(), 1);
    });
    drop(silent);
}
