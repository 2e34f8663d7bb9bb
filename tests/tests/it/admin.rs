//! The admin endpoint against a real node: the actor tree follows what the node does (topics,
//! connections, crashes), partition and topic views and metrics count what was produced and
//! fetched, errors are JSON, and the bearer token guards every route.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use vltava_client::{Admin, Cluster, Consumer, ConsumerConfig, Producer, ProducerConfig};
use vltava_tests::{TestNode, eventually, http};

use super::runtime;

/// Waits this long for the endpoint to reflect a change.
const SETTLE: Duration = Duration::from_secs(10);

fn get_json(node: &TestNode, path: &str) -> Value {
    let (status, body) = node.admin_get(path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn actor_ids(node: &TestNode, kind: &str) -> Vec<String> {
    get_json(node, &format!("/actors?kind={kind}"))["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_owned())
        .collect()
}

fn create_topic(node: &TestNode, topic: &str, partitions: u32) {
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "admin-test")
            .await
            .unwrap();
        Admin::new(cluster)
            .create_topic(topic, partitions, 1, BTreeMap::new())
            .await
            .unwrap();
    });
}

/// Produces `count` events to partition 0 of `topic`.
fn produce(node: &TestNode, topic: &str, count: usize) {
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "admin-test")
            .await
            .unwrap();
        let producer = Producer::new(cluster, ProducerConfig::default())
            .await
            .unwrap();
        for i in 0..count {
            producer
                .send(vltava_client::ProducerRecord {
                    topic: topic.into(),
                    partition: Some(0),
                    value: Some(format!("event-{i}").into_bytes()),
                    ..vltava_client::ProducerRecord::default()
                })
                .await
                .unwrap();
        }
        producer.flush().await.unwrap();
    });
}

#[test]
fn the_actor_tree_follows_topics_and_connections() {
    let node = TestNode::start_with(&["--offsets-topic-partitions", "2"]);
    // Only the partitions of the internal offsets topic run before any topic is created.
    assert_eq!(
        actor_ids(&node, "Partition"),
        [
            "n1/partition/__consumer_offsets-0",
            "n1/partition/__consumer_offsets-1"
        ]
    );
    let roots: Vec<Value> = get_json(&node, "/actors")["actors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["parent"].is_null())
        .cloned()
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:?}");
    assert_eq!(roots[0]["kind"], "NodeSupervisor");

    create_topic(&node, "tree", 3);
    let partitions: Vec<String> = actor_ids(&node, "Partition")
        .into_iter()
        .filter(|id| id.contains("/partition/tree-"))
        .collect();
    assert_eq!(
        partitions,
        [
            "n1/partition/tree-0",
            "n1/partition/tree-1",
            "n1/partition/tree-2"
        ]
    );
    let supervisor = get_json(&node, "/actors/n1/partitions");
    assert_eq!(supervisor["kind"], "PartitionSupervisor");
    let children: Vec<String> = supervisor["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(children.len(), 5, "{children:?}");
    assert!(partitions.iter().all(|p| children.contains(p)));
    let partition = get_json(&node, "/actors/n1/partition/tree-1");
    assert_eq!(partition["parent"], "n1/partitions");
    assert_eq!(partition["status"], "running");
    assert_eq!(partition["state"]["topic"], "tree");
    assert_eq!(partition["state"]["partition"], 1);

    // A connection is a ClientSession while it is open, and only then. The connection
    // `create_topic` used may still be closing: counting from a tree that still holds it made
    // this test fail now and then, when it went away just as the new one came.
    assert!(
        eventually(SETTLE, || actor_ids(&node, "ClientSession").is_empty()),
        "create_topic's session outlived its connection"
    );
    let before = 0;
    let rt = runtime();
    let cluster = rt
        .block_on(Cluster::connect(&node.bootstrap(), "tree-watcher"))
        .unwrap();
    assert!(
        eventually(SETTLE, || actor_ids(&node, "ClientSession").len() > before),
        "no session appeared"
    );
    let sessions = get_json(&node, "/connections");
    assert!(
        sessions["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client_id"] == "tree-watcher"),
        "{sessions}"
    );
    let session_id = actor_ids(&node, "ClientSession")[0].clone();
    let session = get_json(&node, &format!("/actors/{session_id}"));
    assert_eq!(session["parent"], "n1/listener");
    assert!(
        session["state"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    drop(cluster);
    drop(rt);
    assert!(
        eventually(SETTLE, || actor_ids(&node, "ClientSession").len() == before),
        "the session outlived its connection"
    );
    let (status, _) = node.admin_get(&format!("/actors/{session_id}"));
    assert_eq!(status, 404);
}

#[test]
fn a_crashed_partition_shows_its_restart_and_serves_again() {
    let node = TestNode::start_with(&["--enable-fault-injection"]);
    create_topic(&node, "crashy", 1);
    produce(&node, "crashy", 5);
    let id = "n1/partition/crashy-0";
    let (status, body) = http(
        "POST",
        &node.admin_addr,
        &format!("/faults/actors/{id}/crash"),
        &[],
    );
    assert_eq!(status, 202, "{body}");
    assert!(
        eventually(SETTLE, || {
            let actor = get_json(&node, &format!("/actors/{id}"));
            actor["restarts"] == 1 && actor["status"] == "running"
        }),
        "no restart shown: {}",
        get_json(&node, &format!("/actors/{id}"))
    );
    let actor = get_json(&node, &format!("/actors/{id}"));
    assert!(
        actor["last_error"]
            .as_str()
            .unwrap()
            .contains("crash injected"),
        "{actor}"
    );
    // The restarted actor reopened its log and publishes it again.
    assert_eq!(actor["state"]["high_watermark"], 5, "{actor}");
    assert!(node.logged("fault injection: crashing an actor"));
    produce(&node, "crashy", 1);
    assert!(eventually(SETTLE, || {
        get_json(&node, &format!("/actors/{id}"))["state"]["high_watermark"] == 6
    }));

    // Only partitions can be crashed, and only existing ones.
    let (status, body) = http(
        "POST",
        &node.admin_addr,
        "/faults/actors/n1/listener/crash",
        &[],
    );
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(
        "POST",
        &node.admin_addr,
        "/faults/actors/n1/partition/nothing-0/crash",
        &[],
    );
    assert_eq!(status, 404);
}

#[test]
fn fault_injection_routes_exist_only_when_enabled() {
    let node = TestNode::start();
    create_topic(&node, "safe", 1);
    let (status, body) = http(
        "POST",
        &node.admin_addr,
        "/faults/actors/n1/partition/safe-0/crash",
        &[],
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        get_json(&node, "/actors/n1/partition/safe-0")["restarts"],
        0
    );
}

#[test]
fn partitions_topics_and_metrics_count_what_was_produced_and_fetched() {
    let node = TestNode::start_with(&["--offsets-topic-partitions", "1"]);
    create_topic(&node, "counted", 2);
    produce(&node, "counted", 25);
    let partitions = get_json(&node, "/partitions");
    let p0 = partitions["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["topic"] == "counted" && p["partition"] == 0)
        .cloned()
        .expect("partition 0 listed");
    assert_eq!(p0["high_watermark"], 25, "{p0}");
    assert_eq!(p0["log_end_offset"], 25);
    assert_eq!(p0["leader"], 1);
    assert_eq!(p0["replicas"], serde_json::json!([1]));
    assert!(p0["size_bytes"].as_u64().unwrap() > 25 * 7, "{p0}");
    let topic = get_json(&node, "/topics/counted");
    assert_eq!(topic["partition_count"], 2);
    assert_eq!(topic["events_in"], 25);

    // Fetch everything once: the out counters follow.
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "admin-test")
            .await
            .unwrap();
        let mut consumer = Consumer::new(cluster, ConsumerConfig::default());
        consumer
            .assign("counted", Some(vec![0]), vltava_client::SeekTo::Earliest)
            .await
            .unwrap();
        let mut seen = 0;
        while seen < 25 {
            seen += consumer.poll().await.unwrap().len();
        }
    });
    assert!(eventually(
        SETTLE,
        || get_json(&node, "/topics/counted")["events_out"]
            .as_u64()
            .unwrap()
            >= 25
    ));

    let (status, metrics) = node.admin_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("vltava_topic_events_in_total{topic=\"counted\"} 25"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vltava_partition_high_watermark{topic=\"counted\",partition=\"0\"} 25")
    );
    assert!(metrics.contains("# TYPE vltava_request_duration_seconds histogram"));
    let produce_count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vltava_request_duration_seconds_count{kind=\"Produce\"} "))
        .and_then(|n| n.parse::<u64>().ok())
        .expect("a Produce latency count");
    assert!(produce_count >= 1, "{metrics}");
    assert!(
        metrics.contains("vltava_actors{kind=\"Partition\"} 3"),
        "{metrics}"
    );
    // No series is labelled by connection or actor instance.
    assert!(!metrics.contains("session/"), "{metrics}");
}

#[test]
fn errors_are_json_with_a_status() {
    let node = TestNode::start();
    for (path, status) in [
        ("/actors/n1/partition/missing-0", 404),
        ("/topics/missing", 404),
        ("/no/such/route", 404),
        ("/actors?kind=Spaceship", 400),
    ] {
        let (got, body) = node.admin_get(path);
        assert_eq!(got, status, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(body["error"]["status"], status, "{path}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 3);
    }
    assert_eq!(get_json(&node, "/health")["status"], "ok");
    assert_eq!(get_json(&node, "/ready")["ready"], true);
    let cluster = get_json(&node, "/cluster");
    assert_eq!(cluster["node_id"], 1);
    assert_eq!(cluster["controller_id"], 1);
    assert_eq!(cluster["nodes"][0]["this_node"], true);
}

#[test]
fn a_token_guards_every_route() {
    let node = TestNode::start_with(&["--admin-token", "s3cret"]);
    for path in ["/health", "/actors", "/metrics", "/no/such/route"] {
        let (status, body) = http("GET", &node.admin_addr, path, &[]);
        assert_eq!(status, 401, "{path}: {body}");
        let (status, _) = http(
            "GET",
            &node.admin_addr,
            path,
            &["Authorization: Bearer wrong"],
        );
        assert_eq!(status, 401, "{path} with a wrong token");
    }
    let (status, body) = http(
        "GET",
        &node.admin_addr,
        "/actors",
        &["Authorization: Bearer s3cret"],
    );
    assert_eq!(status, 200, "{body}");
    assert!(node.logged("without the right bearer token"));
}
