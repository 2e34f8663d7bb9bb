//! Replication seen from outside (issue 13, "Operator commands"): the leader's admin endpoint
//! shows each follower's log end, flushed offset and lag, every replica its role and ISR
//! membership; the followers' ReplicaFetchers are in their actor trees; and `vltava cluster
//! describe` shows the ISR and, through the leader, each follower's lag.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use vltava_client::{Cluster, Producer, ProducerConfig, ProducerRecord};
use vltava_tests::cluster::TestCluster;
use vltava_tests::eventually;

use super::{FAILOVER_BOUND, admin, metadata, runtime, until_ok, vltava_at};

const TOPIC: &str = "observed";
const EVENTS: u64 = 50;

/// Produces `EVENTS` events to partition 0 with the default acks (all).
async fn produce(bootstrap: &[String]) {
    let producer = Producer::new(
        Cluster::connect(bootstrap, "observe-test").await.unwrap(),
        ProducerConfig::default(),
    )
    .await
    .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..EVENTS {
        let record = ProducerRecord {
            topic: TOPIC.to_owned(),
            partition: Some(0),
            key: None,
            value: Some(format!("e{i}").into_bytes()),
            headers: Vec::new(),
            timestamp: None,
        };
        deliveries.push(producer.send(record).await.unwrap());
    }
    for delivery in deliveries {
        delivery.wait().await.expect("acknowledged");
    }
    producer.close().await.unwrap();
}

/// The admin endpoint's JSON at `path` on `node`.
fn admin_json(cluster: &TestCluster, node: u32, path: &str) -> Value {
    let (status, body) = cluster.node(node).admin_get(path);
    assert_eq!(status, 200, "{path} on node {node}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// This node's replica of partition 0 of `TOPIC` in its `/cluster` answer.
fn local_replica(cluster: &TestCluster, node: u32) -> Value {
    let answer = admin_json(cluster, node, "/cluster");
    answer["topics"]
        .as_array()
        .and_then(|topics| topics.iter().find(|t| t["name"] == TOPIC))
        .map_or(Value::Null, |t| t["partitions"][0]["replica"].clone())
}

/// An RF 3 topic with events acknowledged by all replicas: the leader's `/cluster` shows
/// itself as leader in the ISR with both followers in the ISR at lag 0 (offsets) and a lag in
/// time under the lag bound, every follower shows itself as a follower in the ISR, each
/// follower lists a ReplicaFetcher towards the leader naming the partition, with requests and
/// bytes counted; and `vltava cluster describe` through the leader shows the ISR and both
/// followers in it with lag 0, in text and in JSON, and in text through a follower too (the
/// CLI asks the leader).
#[test]
fn the_leader_shows_its_followers_lag_and_the_followers_their_fetchers() {
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();
    let leader = runtime().block_on(async {
        let admin = admin(&bootstrap).await;
        until_ok(FAILOVER_BOUND, || {
            admin.create_topic(TOPIC, 1, 3, BTreeMap::new())
        })
        .await;
        produce(&bootstrap).await;
        let answer = metadata(&cluster.node(1).addr).await.unwrap();
        let topic = answer.topics.iter().find(|t| t.name == TOPIC).unwrap();
        topic.partitions[0].leader.expect("a leader").0
    });
    let followers: Vec<u32> = (1..=3).filter(|n| *n != leader).collect();

    let mut last = Value::Null;
    let caught_up = eventually(FAILOVER_BOUND, || {
        last = local_replica(&cluster, leader);
        let followers_seen = last["followers"].as_array().cloned().unwrap_or_default();
        last["role"] == "leader"
            && last["in_isr"] == true
            && last["log_end_offset"] == EVENTS
            && last["high_watermark"] == EVENTS
            && followers_seen.len() == 2
            && followers_seen.iter().all(|f| {
                f["in_isr"] == true
                    && f["lag_offsets"] == 0
                    && f["log_end_offset"] == EVENTS
                    && f["flushed_offset"].as_u64().is_some()
                    && f["lag_ms"].as_u64().is_some_and(|ms| ms < 10_000)
            })
    });
    assert!(caught_up, "the leader's view of its followers: {last}");
    let listed: Vec<u64> = last["followers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        listed,
        followers.iter().map(|n| u64::from(*n)).collect::<Vec<_>>()
    );

    for follower in &followers {
        let follower = *follower;
        let replica_ok = eventually(FAILOVER_BOUND, || {
            last = local_replica(&cluster, follower);
            last["role"] == "follower"
                && last["in_isr"] == true
                && last["log_end_offset"] == EVENTS
                && last["followers"].is_null()
        });
        assert!(replica_ok, "node {follower}'s replica: {last}");

        let id = format!("n{follower}/replica-fetcher/{leader}");
        let fetchers = admin_json(&cluster, follower, "/actors?kind=ReplicaFetcher");
        let ids: Vec<&str> = fetchers["actors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["id"].as_str())
            .collect();
        // Other topics (the internal offsets topic, say) may add fetchers towards other
        // leaders.
        assert!(
            ids.contains(&id.as_str()),
            "node {follower}'s fetchers: {fetchers}"
        );
        let fetcher = admin_json(&cluster, follower, &format!("/actors/{id}"));
        assert_eq!(fetcher["kind"], "ReplicaFetcher", "{fetcher}");
        assert_eq!(fetcher["parent"], format!("n{follower}/node"), "{fetcher}");
        let state = &fetcher["state"];
        assert_eq!(state["leader"], leader, "{fetcher}");
        assert!(state["partition_count"].as_u64().unwrap() >= 1, "{fetcher}");
        let partitions = state["partitions"].as_array().unwrap();
        assert!(
            partitions.iter().any(|p| *p == format!("{TOPIC}-0")),
            "{fetcher}"
        );
        assert!(state["fetch_requests"].as_u64().unwrap() > 0, "{fetcher}");
        assert!(state["bytes_fetched"].as_u64().unwrap() > 0, "{fetcher}");
        assert!(state["bytes_per_second"].is_u64(), "{fetcher}");
    }
    // The leader does not fetch its own partition.
    let fetchers = admin_json(&cluster, leader, "/actors?kind=ReplicaFetcher");
    assert!(
        fetchers["actors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| { a["id"] != format!("n{leader}/replica-fetcher/{leader}") }),
        "{fetchers}"
    );

    let leader_addr = cluster.node(leader).addr.clone();
    let (code, text, stderr) = vltava_at(&leader_addr, &["cluster", "describe", "--topic", TOPIC]);
    assert_eq!(code, Some(0), "{stderr}");
    let line = text
        .lines()
        .find(|l| l.contains("partition: 0 "))
        .expect("a line for partition 0");
    let isr: BTreeSet<&str> = line
        .split("isr: ")
        .nth(1)
        .expect("an isr")
        .trim()
        .split(',')
        .collect();
    assert_eq!(isr, BTreeSet::from(["1", "2", "3"]), "{text}");
    for follower in &followers {
        assert!(
            text.contains(&format!(
                "follower {follower}: in isr  log_end_offset: {EVENTS}"
            )),
            "{text}"
        );
    }
    assert!(text.contains("lag: 0 offsets"), "{text}");

    let (code, json, stderr) = vltava_at(
        &leader_addr,
        &["cluster", "describe", "--topic", TOPIC, "--format", "json"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let answer: Value = serde_json::from_str(json.trim()).expect("JSON");
    let partition = &answer["topics"][0]["partitions"][0];
    let isr: BTreeSet<u64> = partition["in_sync_replicas"]
        .as_array()
        .expect("an isr")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(isr, BTreeSet::from([1, 2, 3]), "{answer}");
    let status = &answer["replica_status"]["partitions"][0];
    assert_eq!(status["topic"], TOPIC, "{answer}");
    assert_eq!(status["log_end_offset"], EVENTS, "{answer}");
    let statuses = status["followers"].as_array().expect("followers");
    assert_eq!(statuses.len(), 2, "{answer}");
    assert!(
        statuses
            .iter()
            .all(|f| f["in_sync"] == true && f["lag_offsets"] == 0),
        "{answer}"
    );

    // A follower leads nothing here, so it answers without replica statuses.
    let (code, json, stderr) = vltava_at(
        &cluster.node(followers[0]).addr,
        &["cluster", "describe", "--topic", TOPIC, "--format", "json"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let answer: Value = serde_json::from_str(json.trim()).expect("JSON");
    assert!(answer.get("replica_status").is_none(), "{answer}");
    // The text form asks each partition's leader for its replicas' progress, so asked of a
    // node that leads nothing it shows the leader's and its followers' lines all the same.
    let (code, text, stderr) = vltava_at(
        &cluster.node(followers[0]).addr,
        &["cluster", "describe", "--topic", TOPIC],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        text.contains(&format!("leader {leader}: log_end_offset: {EVENTS}")),
        "{text}"
    );
    for follower in &followers {
        assert!(
            text.contains(&format!(
                "follower {follower}: in isr  log_end_offset: {EVENTS}"
            )),
            "{text}"
        );
    }
    assert!(!text.contains("did not answer"), "{text}");
}
