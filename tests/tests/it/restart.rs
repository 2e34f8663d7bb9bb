//! Durability across restarts: a clean restart keeps everything; a SIGKILL during an
//! acks=all load with a retrying idempotent producer keeps every acknowledged event exactly
//! once and in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vltava_client::{
    Admin, Cluster, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, SeekTo,
};
use vltava_tests::TestNode;

use super::runtime;

async fn read_all(cluster: Arc<Cluster>, topic: &str, expected_at_least: usize) -> Vec<String> {
    let mut consumer = Consumer::new(
        cluster,
        ConsumerConfig {
            max_wait: Duration::from_millis(200),
            ..ConsumerConfig::default()
        },
    );
    consumer
        .assign(topic, None, SeekTo::Earliest)
        .await
        .unwrap();
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet = 0;
    while Instant::now() < deadline && (values.len() < expected_at_least || quiet < 3) {
        let records = consumer.poll().await.unwrap();
        if records.is_empty() {
            quiet += 1;
        } else {
            quiet = 0;
        }
        values.extend(
            records
                .into_iter()
                .map(|r| String::from_utf8(r.value.unwrap()).unwrap()),
        );
    }
    values
}

#[test]
fn a_clean_restart_keeps_topics_and_events() {
    let mut node = TestNode::start();
    let rt = runtime();
    rt.block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "test").await.unwrap();
        Admin::new(cluster.clone())
            .create_topic("kept", 2, 1, BTreeMap::new())
            .await
            .unwrap();
        let producer = Producer::new(cluster, ProducerConfig::default())
            .await
            .unwrap();
        for i in 0..500 {
            producer
                .send(ProducerRecord {
                    topic: "kept".into(),
                    key: Some(format!("k{i}").into_bytes()),
                    value: Some(format!("v{i}").into_bytes()),
                    ..ProducerRecord::default()
                })
                .await
                .unwrap();
        }
        producer.close().await.unwrap();
    });
    assert_eq!(node.terminate(), Some(0), "a clean shutdown exits 0");
    node.restart();
    rt.block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "test").await.unwrap();
        let mut values = read_all(cluster, "kept", 500).await;
        values.sort();
        let mut expected: Vec<String> = (0..500).map(|i| format!("v{i}")).collect();
        expected.sort();
        assert_eq!(values, expected);
    });
    assert!(node.logged("partition open"), "{}", node.log_text());
}

/// The acknowledged-writes check: a producer keeps sending with acks=all while the node is
/// killed with SIGKILL and restarted; every event the producer saw acknowledged must be
/// there after the restart, exactly once, in the order sent.
#[test]
fn sigkill_during_acks_all_load_loses_and_duplicates_nothing_acknowledged() {
    let mut node = TestNode::start();
    let rt = runtime();
    let acknowledged: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let cluster = rt.block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "test").await.unwrap();
        Admin::new(cluster.clone())
            .create_topic("durable", 1, 1, BTreeMap::new())
            .await
            .unwrap();
        cluster
    });
    let load = {
        let cluster = cluster.clone();
        let acknowledged = Arc::clone(&acknowledged);
        let stop = Arc::clone(&stop);
        rt.spawn(async move {
            let config = ProducerConfig {
                linger: Duration::from_millis(2),
                retry_backoff: Duration::from_millis(20),
                delivery_timeout: Duration::from_secs(60),
                ..ProducerConfig::default()
            };
            let producer = Producer::new(cluster, config).await.unwrap();
            let mut pending = std::collections::VecDeque::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let delivery = producer
                    .send(ProducerRecord {
                        topic: "durable".into(),
                        value: Some(format!("{i}").into_bytes()),
                        ..ProducerRecord::default()
                    })
                    .await
                    .unwrap();
                pending.push_back((i, delivery));
                i += 1;
                while pending.len() > 200 {
                    let (n, delivery) = pending.pop_front().unwrap();
                    if delivery.wait().await.is_ok() {
                        acknowledged.lock().unwrap().push(n);
                    }
                }
                if i.is_multiple_of(50) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            for (n, delivery) in pending {
                if delivery.wait().await.is_ok() {
                    acknowledged.lock().unwrap().push(n);
                }
            }
        })
    };
    assert!(
        vltava_tests::eventually(Duration::from_secs(20), || acknowledged
            .lock()
            .unwrap()
            .len()
            > 500),
        "the load is acknowledged"
    );
    node.kill();
    let before_kill = acknowledged.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(300));
    node.restart();
    assert!(
        vltava_tests::eventually(Duration::from_secs(30), || acknowledged
            .lock()
            .unwrap()
            .len()
            > before_kill + 500),
        "the producer resumed after the restart"
    );
    stop.store(true, Ordering::SeqCst);
    rt.block_on(load).unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    rt.block_on(async {
        let values = read_all(cluster, "durable", acknowledged.len()).await;
        let stored: Vec<u64> = values.iter().map(|v| v.parse().unwrap()).collect();
        // Exactly once and in order: strictly increasing.
        assert!(
            stored.windows(2).all(|w| w[0] < w[1]),
            "no duplicates, no reordering"
        );
        let stored_set: std::collections::HashSet<u64> = stored.iter().copied().collect();
        let lost: Vec<u64> = acknowledged
            .iter()
            .copied()
            .filter(|n| !stored_set.contains(n))
            .collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged events lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    });
}
