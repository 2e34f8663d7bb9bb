//! Consumer groups against a real node: members share a topic's partitions, a joiner takes only
//! what it needs while the others keep reading, a killed member's partitions move within its
//! session timeout, commits survive a restart, the offsets topic stays small, stale epochs are
//! fenced, and bad requests get typed errors while the group goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vltava_client::{
    Admin, ClientError, Cluster, ConsumerConfig, GroupConfig, GroupConsumer, Producer,
    ProducerConfig, ProducerRecord, RebalanceEvent,
};
use vltava_messages::protocol::{
    ConsumerGroupHeartbeatRequest, DescribeGroupsRequest, ErrorCode, OffsetCommitPartition,
    OffsetCommitRequest, OffsetCommitTopic, TopicPartitions,
};
use vltava_messages::{Offset, PartitionId};
use vltava_tests::{TestNode, binary, eventually};

use super::runtime;

/// Group timings for tests: members heartbeat every 200 ms.
const FAST_GROUPS: [&str; 2] = ["--group-heartbeat-interval-ms", "200"];
/// How long a test waits for a group to settle.
const SETTLE: Duration = Duration::from_secs(30);

fn consumer_config() -> ConsumerConfig {
    ConsumerConfig {
        max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    }
}

fn group_config(group: &str) -> GroupConfig {
    let mut config = GroupConfig::new(group);
    config.session_timeout = Some(Duration::from_secs(3));
    config
}

async fn create(cluster: &Arc<Cluster>, topic: &str, partitions: u32) {
    Admin::new(Arc::clone(cluster))
        .create_topic(topic, partitions, 1, BTreeMap::new())
        .await
        .unwrap();
}

/// Produces `per_partition` events to every partition; values are "p-i".
async fn produce(cluster: &Arc<Cluster>, topic: &str, partitions: u32, per_partition: u32) {
    let producer = Producer::new(Arc::clone(cluster), ProducerConfig::default())
        .await
        .unwrap();
    for p in 0..partitions {
        for i in 0..per_partition {
            producer
                .send(ProducerRecord {
                    topic: topic.into(),
                    partition: Some(p),
                    value: Some(format!("{p}-{i}").into_bytes()),
                    ..ProducerRecord::default()
                })
                .await
                .unwrap();
        }
    }
    producer.flush().await.unwrap();
}

fn owned(member: &GroupConsumer) -> BTreeSet<(String, u32)> {
    member
        .assignment()
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), p.0)))
        .collect()
}

/// Polls every member once, recording what each read as (topic, partition, offset).
async fn poll_all(
    members: &mut [GroupConsumer],
    seen: &mut [BTreeSet<(String, u32, u64)>],
    duplicates: &mut usize,
) {
    let mut all: BTreeSet<(String, u32, u64)> = seen.iter().flatten().cloned().collect();
    for (i, member) in members.iter_mut().enumerate() {
        for record in member.poll().await.unwrap() {
            let key = (record.topic.clone(), record.partition, record.offset);
            if !all.insert(key.clone()) {
                *duplicates += 1;
            }
            seen[i].insert(key);
        }
    }
}

#[test]
fn members_share_partitions_and_a_joiner_moves_only_what_it_needs() {
    let node = TestNode::start_with(&FAST_GROUPS);
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "groups-test")
            .await
            .unwrap();
        create(&cluster, "shared", 6).await;
        produce(&cluster, "shared", 6, 20).await;
        let mut members: Vec<GroupConsumer> = Vec::new();
        for _ in 0..3 {
            let mut m = GroupConsumer::new(
                Arc::clone(&cluster),
                consumer_config(),
                group_config("sharers"),
            )
            .unwrap();
            m.subscribe(&["shared"]).unwrap();
            members.push(m);
        }
        let mut seen = vec![BTreeSet::new(); 4];
        let mut duplicates = 0;
        let deadline = Instant::now() + SETTLE;
        while members.iter().any(|m| owned(m).len() != 2) {
            assert!(
                Instant::now() < deadline,
                "three members never got two each"
            );
            poll_all(&mut members, &mut seen, &mut duplicates).await;
        }
        let before: Vec<BTreeSet<(String, u32)>> = members.iter().map(owned).collect();
        for m in &mut members {
            m.rebalance_events();
        }

        // A fourth member joins: one partition moves (2, 2, 1, 1), nobody else stops.
        let mut fourth = GroupConsumer::new(
            Arc::clone(&cluster),
            consumer_config(),
            group_config("sharers"),
        )
        .unwrap();
        fourth.subscribe(&["shared"]).unwrap();
        members.push(fourth);
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut sizes: Vec<usize> = members.iter().map(|m| owned(m).len()).collect();
            sizes.sort_unstable();
            if sizes == [1, 1, 2, 2] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the group did not settle: {sizes:?}"
            );
            poll_all(&mut members, &mut seen, &mut duplicates).await;
        }
        let mut revoked = Vec::new();
        for (i, m) in members.iter_mut().take(3).enumerate() {
            for event in m.rebalance_events() {
                if let RebalanceEvent::Revoked { partitions, lost } = event {
                    assert!(!lost, "a clean rebalance loses nothing");
                    revoked.push((i, partitions));
                }
            }
            assert!(
                owned(m).is_subset(&before[i]),
                "member {i} gained a partition"
            );
        }
        assert_eq!(
            revoked.len(),
            1,
            "exactly one member gave up one partition: {revoked:?}"
        );
        assert_eq!(
            revoked[0]
                .1
                .iter()
                .map(|t| t.partitions.len())
                .sum::<usize>(),
            1
        );

        // Everything produced, before and after, is read exactly once by the group.
        produce(&cluster, "shared", 6, 10).await;
        let deadline = Instant::now() + SETTLE;
        while seen.iter().map(BTreeSet::len).sum::<usize>() < 180 {
            assert!(Instant::now() < deadline, "not everything was consumed");
            poll_all(&mut members, &mut seen, &mut duplicates).await;
        }
        assert_eq!(duplicates, 0, "commit on revoke: nothing read twice");
        let all: BTreeSet<&(String, u32, u64)> = seen.iter().flatten().collect();
        assert_eq!(all.len(), 180);
        for m in &mut members {
            m.close().await.unwrap();
        }
    });
}

fn cli_member(node: &TestNode, topic: &str, group: &str) -> Child {
    Command::new(binary("vltava"))
        .args([
            "consume",
            topic,
            "--group",
            group,
            "--session-timeout-ms",
            "2000",
            "--format",
            "json",
        ])
        .env("VLTAVA_BOOTSTRAP", &node.addr)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning vltava consume")
}

#[test]
fn a_killed_members_partitions_move_within_its_session_timeout() {
    let node = TestNode::start_with(&FAST_GROUPS);
    let rt = runtime();
    let cluster = rt
        .block_on(Cluster::connect(&node.bootstrap(), "groups-test"))
        .unwrap();
    rt.block_on(create(&cluster, "killed", 4));
    let mut process = cli_member(&node, "killed", "survivors");
    rt.block_on(async {
        let mut config = group_config("survivors");
        config.session_timeout = Some(Duration::from_secs(2));
        let mut member =
            GroupConsumer::new(Arc::clone(&cluster), consumer_config(), config).unwrap();
        member.subscribe(&["killed"]).unwrap();
        let deadline = Instant::now() + SETTLE;
        while owned(&member).len() != 2 {
            assert!(
                Instant::now() < deadline,
                "the two members never split 4 partitions"
            );
            member.poll().await.unwrap();
        }
        process.kill().unwrap();
        let _ = process.wait();
        let killed_at = Instant::now();
        while owned(&member).len() != 4 {
            assert!(
                killed_at.elapsed() < SETTLE,
                "the killed member's partitions never moved"
            );
            member.poll().await.unwrap();
        }
        let took = killed_at.elapsed();
        // The session timeout (2 s) plus one heartbeat (200 ms), with room for the
        // coordinator's 250 ms tick and a loaded machine.
        assert!(
            took < Duration::from_millis(2000 + 200 + 1500),
            "took {took:?}"
        );
        member.close().await.unwrap();
    });
}

#[test]
fn committed_offsets_survive_a_restart_and_compaction_keeps_the_offsets_topic_small() {
    let mut node = TestNode::start_with(&[
        FAST_GROUPS[0],
        FAST_GROUPS[1],
        "--offsets-topic-partitions",
        "1",
        "--offsets-topic-segment-bytes",
        "65536",
    ]);
    let rt = runtime();
    rt.block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "groups-test")
            .await
            .unwrap();
        create(&cluster, "durable", 1).await;
        produce(&cluster, "durable", 1, 100).await;
        // Commits only when told, so the committed offset is the one this test chooses.
        let mut manual = group_config("keepers");
        manual.auto_commit = false;
        manual.commit_on_revoke = false;
        let mut member =
            GroupConsumer::new(Arc::clone(&cluster), consumer_config(), manual).unwrap();
        member.subscribe(&["durable"]).unwrap();
        // Read the first 40 events, committing after each poll: many commits of one key.
        let mut read = Vec::new();
        let deadline = Instant::now() + SETTLE;
        while read.len() < 40 {
            assert!(Instant::now() < deadline);
            read.extend(member.poll().await.unwrap());
        }
        read.truncate(40);
        let mut offsets = BTreeMap::new();
        offsets.insert(("durable".to_owned(), 0), 40u64);
        for _ in 0..1500 {
            member.commit_offsets(offsets.clone()).await.unwrap();
        }
        member.close().await.unwrap();
    });
    // 1,500 commits of ~150 bytes fill several 64 KiB segments; compaction leaves about one
    // record per key.
    let offsets_partition = |field: &str| -> u64 {
        let (_, body) = node.admin_get("/partitions");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        body["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["topic"] == "__consumer_offsets")
            .and_then(|p| p[field].as_u64())
            .unwrap()
    };
    let size = || offsets_partition("size_bytes");
    let written = offsets_partition("bytes_in");
    assert!(written > 200_000, "only {written} bytes of commits written");
    assert!(
        eventually(Duration::from_secs(40), || size() < 100_000),
        "offsets topic still {} bytes",
        size()
    );
    assert_eq!(node.terminate(), Some(0));
    node.restart();
    rt.block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "groups-test")
            .await
            .unwrap();
        let mut member = GroupConsumer::new(
            Arc::clone(&cluster),
            consumer_config(),
            group_config("keepers"),
        )
        .unwrap();
        member.subscribe(&["durable"]).unwrap();
        let deadline = Instant::now() + SETTLE;
        let first = loop {
            assert!(
                Instant::now() < deadline,
                "nothing read after the restart; assignment {:?}, positions {:?}\n{}",
                member.assignment(),
                member.positions(),
                node.log_text()
            );
            if let Some(record) = member.poll().await.unwrap().into_iter().next() {
                break record;
            }
        };
        assert_eq!(first.offset, 40, "resumes at the committed offset");
        member.close().await.unwrap();
    });
}

fn join(group: &str, topic: &str, assignor: Option<&str>) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest {
        group_id: group.into(),
        member_epoch: 0,
        subscribed_topics: Some(vec![topic.into()]),
        owned_partitions: Some(Vec::new()),
        assignor: assignor.map(str::to_owned),
        ..ConsumerGroupHeartbeatRequest::default()
    }
}

fn server_code(error: ClientError) -> u16 {
    match error {
        ClientError::Server(e) => e.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[test]
fn stale_epochs_and_bad_requests_get_typed_errors_and_the_group_goes_on() {
    let node = TestNode::start_with(&FAST_GROUPS);
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "groups-test")
            .await
            .unwrap();
        create(&cluster, "strict", 2).await;
        let conn = cluster.any_connection().await.unwrap();
        let wait = Duration::from_secs(10);

        // A malformed assignor is refused; the group does not exist yet.
        let refused = conn
            .send(&join("strict-group", "strict", Some("fastest")), wait)
            .await
            .unwrap_err();
        assert_eq!(server_code(refused), ErrorCode::UnsupportedAssignor.code());

        let a = conn
            .send(&join("strict-group", "strict", None), wait)
            .await
            .unwrap();
        assert_eq!(
            a.assignment
                .iter()
                .map(|t| t.partitions.len())
                .sum::<usize>(),
            2
        );
        let b = conn
            .send(&join("strict-group", "strict", None), wait)
            .await
            .unwrap();
        // a learns of the revocation, then gives its partition up; its epoch moves on.
        let beat = |member: &vltava_messages::protocol::ConsumerGroupHeartbeatResponse| {
            ConsumerGroupHeartbeatRequest {
                group_id: "strict-group".into(),
                member_id: member.member_id.clone(),
                member_epoch: member.member_epoch,
                owned_partitions: Some(member.assignment.clone()),
                ..ConsumerGroupHeartbeatRequest::default()
            }
        };
        let a2 = conn.send(&beat(&a), wait).await.unwrap();
        let a3 = conn.send(&beat(&a2), wait).await.unwrap();
        assert!(a3.member_epoch > a.member_epoch);
        let b2 = conn.send(&beat(&b), wait).await.unwrap();
        assert_eq!(
            b2.assignment
                .iter()
                .map(|t| t.partitions.len())
                .sum::<usize>(),
            1
        );

        // a's old epoch can neither heartbeat nor commit.
        let stale = conn.send(&beat(&a), wait).await.unwrap_err();
        assert_eq!(server_code(stale), ErrorCode::FencedMemberEpoch.code());
        let commit = |member_id: &str, epoch: i32, partition: u32| OffsetCommitRequest {
            group_id: "strict-group".into(),
            member_id: member_id.into(),
            member_epoch: epoch,
            topics: vec![OffsetCommitTopic {
                topic: "strict".into(),
                partitions: vec![OffsetCommitPartition {
                    partition: PartitionId(partition),
                    offset: Offset(0),
                    leader_epoch: None,
                    metadata: String::new(),
                }],
            }],
        };
        let mine = a3.assignment[0].partitions[0].0;
        let theirs = 1 - mine;
        let stale = conn
            .send(&commit(&a3.member_id, a.member_epoch, mine), wait)
            .await
            .unwrap_err();
        assert_eq!(server_code(stale), ErrorCode::StaleMemberEpoch.code());
        // A commit for a partition the member does not own is refused for that partition.
        let answer = conn
            .send(&commit(&a3.member_id, a3.member_epoch, theirs), wait)
            .await
            .unwrap();
        let error = answer.topics[0].partitions[0].error.as_ref().unwrap();
        assert_eq!(error.code, ErrorCode::PartitionNotAssigned.code());
        // Its own partition commits.
        let answer = conn
            .send(&commit(&a3.member_id, a3.member_epoch, mine), wait)
            .await
            .unwrap();
        assert!(answer.topics[0].partitions[0].error.is_none());

        // b leaves; its heartbeats are then for an unknown member.
        let mut leave = beat(&b2);
        leave.member_epoch = -1;
        conn.send(&leave, wait).await.unwrap();
        let gone = conn.send(&beat(&b2), wait).await.unwrap_err();
        assert_eq!(server_code(gone), ErrorCode::UnknownMemberId.code());

        // An unknown group is a typed error in DescribeGroups; the real group goes on and
        // a gets b's partition back.
        let described = conn
            .send(
                &DescribeGroupsRequest {
                    group_ids: vec!["no-such-group".into(), "strict-group".into()],
                },
                wait,
            )
            .await
            .unwrap();
        assert_eq!(
            described.groups[0].error.as_ref().unwrap().code,
            ErrorCode::GroupIdNotFound.code()
        );
        assert_eq!(described.groups[1].members.len(), 1);
        let a4 = conn.send(&beat(&a3), wait).await.unwrap();
        let all: Vec<TopicPartitions> = a4.assignment;
        assert_eq!(all.iter().map(|t| t.partitions.len()).sum::<usize>(), 2);
    });
}

#[test]
fn a_static_member_that_restarts_gets_its_partitions_back_without_a_rebalance() {
    let node = TestNode::start_with(&FAST_GROUPS);
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "groups-test")
            .await
            .unwrap();
        create(&cluster, "static", 4).await;
        let static_config = || {
            let mut config = group_config("statics");
            config.instance_id = Some("worker-1".into());
            config.session_timeout = Some(Duration::from_secs(10));
            config
        };
        let mut a =
            GroupConsumer::new(Arc::clone(&cluster), consumer_config(), static_config()).unwrap();
        a.subscribe(&["static"]).unwrap();
        let mut b = GroupConsumer::new(
            Arc::clone(&cluster),
            consumer_config(),
            group_config("statics"),
        )
        .unwrap();
        b.subscribe(&["static"]).unwrap();
        let deadline = Instant::now() + SETTLE;
        while owned(&a).len() != 2 || owned(&b).len() != 2 {
            assert!(
                Instant::now() < deadline,
                "the members never split 4 partitions"
            );
            a.poll().await.unwrap();
            b.poll().await.unwrap();
        }
        let a_partitions = owned(&a);
        b.rebalance_events();
        // a restarts: it leaves for now (epoch -2) and a new incarnation joins with the same
        // instance id, well within the session timeout.
        a.close().await.unwrap();
        let mut a2 =
            GroupConsumer::new(Arc::clone(&cluster), consumer_config(), static_config()).unwrap();
        a2.subscribe(&["static"]).unwrap();
        let deadline = Instant::now() + SETTLE;
        while owned(&a2).len() != 2 {
            assert!(
                Instant::now() < deadline,
                "the restarted member got nothing back"
            );
            a2.poll().await.unwrap();
            b.poll().await.unwrap();
        }
        assert_eq!(owned(&a2), a_partitions, "the same partitions come back");
        for _ in 0..5 {
            b.poll().await.unwrap();
        }
        assert!(
            b.rebalance_events()
                .iter()
                .all(|e| !matches!(e, RebalanceEvent::Revoked { .. })),
            "the other member kept reading"
        );
        assert_eq!(owned(&b).len(), 2);
        a2.close().await.unwrap();
        b.close().await.unwrap();
    });
}

#[test]
fn a_pattern_subscription_follows_new_topics() {
    let node = TestNode::start_with(&FAST_GROUPS);
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "groups-test")
            .await
            .unwrap();
        create(&cluster, "metrics-eu", 1).await;
        create(&cluster, "logs", 1).await;
        let mut member = GroupConsumer::new(
            Arc::clone(&cluster),
            consumer_config(),
            group_config("pattern"),
        )
        .unwrap();
        member.subscribe_pattern("metrics-*").unwrap();
        let deadline = Instant::now() + SETTLE;
        while owned(&member).is_empty() {
            assert!(Instant::now() < deadline);
            member.poll().await.unwrap();
        }
        assert_eq!(
            owned(&member),
            BTreeSet::from([("metrics-eu".to_owned(), 0)])
        );
        create(&cluster, "metrics-us", 1).await;
        let deadline = Instant::now() + SETTLE;
        while owned(&member).len() != 2 {
            assert!(Instant::now() < deadline, "the new topic was not picked up");
            member.poll().await.unwrap();
        }
        assert!(owned(&member).contains(&("metrics-us".to_owned(), 0)));
        member.close().await.unwrap();
    });
}

#[test]
fn an_empty_groups_offsets_expire_after_the_retention() {
    let node = TestNode::start_with(&["--offsets-retention-ms", "1500"]);
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "groups-test")
            .await
            .unwrap();
        create(&cluster, "fleeting", 1).await;
        let admin = Admin::new(Arc::clone(&cluster));
        // A commit from outside the group (an operator's reset) makes an empty group.
        admin
            .reset_offsets(
                "short-lived",
                "fleeting",
                None,
                vltava_messages::protocol::ResetTo::Earliest,
                false,
            )
            .await
            .unwrap();
        let committed = admin.fetch_offsets("short-lived", None).await.unwrap();
        assert_eq!(committed.len(), 1, "{committed:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let described = admin
                .describe_groups(&["short-lived".to_owned()])
                .await
                .unwrap();
            if described[0]
                .error
                .as_ref()
                .is_some_and(|e| e.code == ErrorCode::GroupIdNotFound.code())
            {
                break;
            }
            assert!(Instant::now() < deadline, "the offsets never expired");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            admin
                .fetch_offsets("short-lived", None)
                .await
                .unwrap()
                .is_empty()
        );
    });
    assert!(node.logged("expiring its offsets"));
}
