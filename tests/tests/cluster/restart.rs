//! What a cluster keeps across restarts: every node stopped and started again keeps every
//! topic, config and committed offset; a node that was down while the metadata log moved on
//! past a snapshot catches up from the snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vltava_client::{Cluster, Consumer, ConsumerConfig, GroupConfig, GroupConsumer, SeekTo};
use vltava_messages::protocol::ErrorCode;
use vltava_tests::cluster::TestCluster;

use super::{FAILOVER_BOUND, admin, code, metadata, produce_counts, runtime, until_ok};

const TOPIC: &str = "kept";
const PARTITIONS: u32 = 6;
const EVENTS_PER_PARTITION: u64 = 10;

/// Stops every node (SIGTERM) and starts them all again: the topic with its partitions, a
/// config set at creation and one altered later, every event and the group's committed
/// offsets are all there, through any node.
#[test]
fn every_topic_config_and_committed_offset_survives_a_restart_of_every_node() {
    let mut cluster = TestCluster::start(3, &[]);
    let rt = runtime();
    let bootstrap = cluster.bootstrap();
    rt.block_on(async {
        let admin = admin(&bootstrap).await;
        let configs = BTreeMap::from([("retention.ms".to_owned(), "3600000".to_owned())]);
        until_ok(FAILOVER_BOUND, || {
            admin.create_topic(TOPIC, PARTITIONS, 1, configs.clone())
        })
        .await;
        until_ok(FAILOVER_BOUND, || {
            admin.alter_topic_configs(
                TOPIC,
                BTreeMap::from([("segment.bytes".to_owned(), "1048576".to_owned())]),
                Vec::new(),
            )
        })
        .await;
        produce_counts(&bootstrap, TOPIC, PARTITIONS, "", |_| EVENTS_PER_PARTITION).await;
        // A group reads everything and commits.
        let group_cluster = Cluster::connect(&bootstrap, "restart-test").await.unwrap();
        let mut member = GroupConsumer::new(
            Arc::clone(&group_cluster),
            ConsumerConfig::default(),
            GroupConfig::new("keepers"),
        )
        .unwrap();
        member.subscribe(&[TOPIC]).unwrap();
        let mut read = 0;
        let deadline = Instant::now() + FAILOVER_BOUND;
        while read < u64::from(PARTITIONS) * EVENTS_PER_PARTITION {
            assert!(Instant::now() < deadline, "the group read {read} events");
            read += member.poll().await.unwrap().len() as u64;
        }
        member.commit().await.unwrap();
        member.close().await.unwrap();
    });

    for node in &mut cluster.nodes {
        node.terminate();
    }
    // Each member waits for the quorum before it is ready: start them all, then wait.
    for node in &mut cluster.nodes {
        node.relaunch();
    }
    for node in &mut cluster.nodes {
        node.wait_until_ready();
    }

    rt.block_on(async {
        for node in &cluster.nodes {
            let admin = admin(std::slice::from_ref(&node.addr)).await;
            let names = [TOPIC.to_owned()];
            let described = until_ok(FAILOVER_BOUND, || admin.describe_topics(&names)).await;
            let topic = &described[0];
            assert!(topic.error.is_none(), "{topic:?}");
            assert_eq!(topic.partitions.len(), PARTITIONS as usize);
            let config = |name: &str| {
                topic
                    .configs
                    .iter()
                    .find(|c| c.name == name)
                    .map(|c| (c.value.clone(), c.is_default))
            };
            assert_eq!(config("retention.ms"), Some(("3600000".into(), false)));
            assert_eq!(config("segment.bytes"), Some(("1048576".into(), false)));
        }
        let admin = admin(&bootstrap).await;
        let committed = until_ok(FAILOVER_BOUND, || admin.fetch_offsets("keepers", None)).await;
        let offsets = vltava_tests::committed_offsets(&committed, TOPIC);
        let expected: BTreeMap<u32, Option<u64>> = (0..PARTITIONS)
            .map(|p| (p, Some(EVENTS_PER_PARTITION)))
            .collect();
        assert_eq!(offsets, expected, "the committed offsets survived");

        let mut consumer = Consumer::new(
            Cluster::connect(&bootstrap, "restart-test").await.unwrap(),
            ConsumerConfig::default(),
        );
        consumer
            .assign(TOPIC, None, SeekTo::Earliest)
            .await
            .expect("the topic is known after the restart");
        let mut read = 0;
        let deadline = Instant::now() + FAILOVER_BOUND;
        while read < u64::from(PARTITIONS) * EVENTS_PER_PARTITION && Instant::now() < deadline {
            match consumer.poll().await {
                Ok(records) => read += records.len() as u64,
                Err(e) if code(&e).is_none_or(ErrorCode::is_retriable) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("consuming after the restart: {e}"),
            }
        }
        assert_eq!(read, u64::from(PARTITIONS) * EVENTS_PER_PARTITION);
    });
}

/// With a snapshot every 8 metadata entries, node 3 is stopped while 40 topics are created:
/// the log it would need is purged behind snapshots, so when it comes back the leader sends
/// it a snapshot, and it then knows every topic.
#[test]
fn a_node_down_past_a_snapshot_catches_up_from_it() {
    let mut cluster = TestCluster::start(3, &["--metadata-snapshot-entries", "8"]);
    let rt = runtime();
    let survivors = vec![cluster.node(1).addr.clone(), cluster.node(2).addr.clone()];
    cluster.node_mut(3).terminate();
    let names: Vec<String> = (0..40).map(|i| format!("while-down-{i}")).collect();
    rt.block_on(async {
        let admin = admin(&survivors).await;
        for name in &names {
            let created = until_ok(FAILOVER_BOUND, || async {
                match admin.create_topic(name, 1, 1, BTreeMap::new()).await {
                    Err(e) if code(&e) == Some(ErrorCode::TopicAlreadyExists) => Ok(()),
                    other => other,
                }
            })
            .await;
            let () = created;
        }
    });
    let node3 = cluster.node_mut(3);
    node3.relaunch();
    node3.wait_until_ready();
    let addr = cluster.node(3).addr.clone();
    rt.block_on(async {
        until_ok(FAILOVER_BOUND, || async {
            let answer = metadata(&addr).await?;
            let missing = names
                .iter()
                .filter(|n| !answer.topics.iter().any(|t| &t.name == *n))
                .count();
            if missing == 0 {
                Ok(())
            } else {
                Err(vltava_client::ClientError::InvalidArgument(format!(
                    "node 3 lacks {missing} topics"
                )))
            }
        })
        .await;
    });
    assert!(
        cluster
            .node(3)
            .logged("installed a metadata snapshot from the leader"),
        "node 3 caught up from a snapshot:\n{}",
        cluster.node(3).log_text()
    );
}
