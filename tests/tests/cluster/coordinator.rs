//! Consumer-group coordinators in a cluster (issues 13 and 14): `__consumer_offsets` is
//! replicated on three nodes, a group's coordinator moves with the leadership of its offsets
//! partition, and the group's members carry on through the move with their member id, epoch
//! and partitions, while every committed offset survives.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vltava_client::{
    Cluster, ConsumerConfig, GroupConfig, GroupConsumer, Producer, ProducerConfig, ProducerRecord,
    RebalanceEvent,
};
use vltava_messages::group_records::OFFSETS_TOPIC;
use vltava_messages::protocol::TopicPartitions;
use vltava_messages::{Offset, PartitionId};
use vltava_tests::cluster::TestCluster;
use vltava_tests::history::{CheckOptions, History, unique_value};

use super::{FAILOVER_BOUND, admin, runtime, until_ok};

const TOPIC: &str = "audited";
const GROUP: &str = "auditors";
const PARTITIONS: u32 = 3;
/// How many times the group's offsets partition changes leader.
const MOVES: u32 = 6;
/// Events the member reads between two moves, so that it reads and commits under every
/// coordinator.
const READS_BETWEEN_MOVES: u64 = 60;
/// Sends the producer keeps unanswered.
const SENDS_IN_FLIGHT_MAX: usize = 16;
/// The producer's pause between two sends: about 300 events a second, a steady stream that
/// leaves the two cores room for the nodes' elections and replication.
const SEND_PAUSE: Duration = Duration::from_millis(3);

/// What the member's task saw, for the test to judge once it ends.
#[derive(Debug, Default)]
struct Observed {
    /// When each poll that returned events ended, and when each commit succeeded.
    reads_at: Vec<Instant>,
    commits_at: Vec<Instant>,
    /// Commits that failed after the client's retries, with their errors.
    commit_failures: Vec<String>,
    /// Every rebalance event, in order.
    events: Vec<RebalanceEvent>,
    /// The member ids the member had (one while it never loses its membership).
    member_ids: BTreeSet<String>,
}

/// A group consumer reads a three-partition topic (RF 3) that an acks=all idempotent producer
/// writes all along, committing after every poll that returns events, while the leadership of
/// the group's `__consumer_offsets` partition is moved to another replica six times with
/// `elect-leader`. Every move moves the coordinator (FindCoordinator names the new leader);
/// the member keeps its member id and its three partitions throughout (no rebalance event
/// other than the first assignment, no lost partitions), every commit succeeds (the client
/// finds the new coordinator on `NotCoordinator` / `CoordinatorLoadInProgress`), the history
/// checker finds every acknowledged event read exactly once, in order, with no position reset,
/// and the committed offsets, read back through the coordinator after one more move, are the
/// ends of the partitions. Before all that, the offsets topic is described with three
/// replicas and three in-sync replicas per partition. The test prints, per move, how long the
/// member's commits and reads stopped (not asserted: a figure for the closing note).
#[test]
fn a_group_keeps_consuming_and_its_offsets_while_its_coordinator_moves() {
    let cluster = TestCluster::start(3, &["--group-heartbeat-interval-ms", "500"]);
    let bootstrap = cluster.bootstrap();
    let history = History::new();
    runtime().block_on(async {
        let admin = admin(&bootstrap).await;

        // The offsets topic is replicated on every node, all in sync.
        let offsets = until_ok(FAILOVER_BOUND, || async {
            let described = admin.describe_topics(&[OFFSETS_TOPIC.to_owned()]).await?;
            described
                .into_iter()
                .find(|t| {
                    t.name == OFFSETS_TOPIC
                        && t.partitions.iter().all(|p| {
                            p.leader.is_some()
                                && p.replicas.len() == 3
                                && p.in_sync_replicas.len() == 3
                        })
                })
                .ok_or_else(|| vltava_client::ClientError::InvalidArgument("not yet".into()))
        })
        .await;
        assert!(offsets.internal);
        assert_eq!(offsets.partitions.len(), 8, "the default partition count");
        let min_insync = offsets
            .configs
            .iter()
            .find(|c| c.name == "min.insync.replicas")
            .map(|c| c.value.clone());
        assert_eq!(min_insync.as_deref(), Some("2"), "{:?}", offsets.configs);

        until_ok(FAILOVER_BOUND, || {
            admin.create_topic(TOPIC, PARTITIONS, 3, BTreeMap::new())
        })
        .await;
        let found = admin.find_coordinator(GROUP).await.unwrap();
        let offsets_partition = found.offsets_partition.0;
        let replicas: Vec<u32> = offsets.partitions[offsets_partition as usize]
            .replicas
            .iter()
            .map(|n| n.0)
            .collect();
        eprintln!(
            "group {GROUP}: offsets partition {offsets_partition}, replicas {replicas:?}, coordinator {}",
            found.node_id.0
        );

        let stop_producing = Arc::new(AtomicBool::new(false));
        let producer = tokio::spawn(produce(
            bootstrap.clone(),
            history.clone(),
            Arc::clone(&stop_producing),
        ));
        // The end offset (next to read) of each partition, set once the producer is done.
        let read_to: Arc<Mutex<Option<BTreeMap<u32, u64>>>> = Arc::new(Mutex::new(None));
        let read = Arc::new(AtomicU64::new(0));
        let observed = Arc::new(Mutex::new(Observed::default()));
        let member = tokio::spawn(consume(
            bootstrap.clone(),
            history.clone(),
            Arc::clone(&read_to),
            Arc::clone(&read),
            Arc::clone(&observed),
        ));

        let mut leader = found.node_id.0;
        let mut moved_at: Vec<Instant> = Vec::new();
        for round in 0..MOVES {
            wait_for_reads(&read, READS_BETWEEN_MOVES).await;
            let index = replicas.iter().position(|n| *n == leader).unwrap();
            let target = replicas[(index + 1) % replicas.len()];
            // IneligibleLeader (retriable) while the target is out of the ISR.
            let epoch = until_ok(FAILOVER_BOUND, || {
                admin.elect_leader(OFFSETS_TOPIC, offsets_partition, target)
            })
            .await;
            moved_at.push(Instant::now());
            let coordinator = until_ok(FAILOVER_BOUND, || async {
                let found = admin.find_coordinator(GROUP).await?;
                if found.node_id.0 == target {
                    Ok(found.node_id.0)
                } else {
                    Err(vltava_client::ClientError::InvalidArgument(format!(
                        "coordinator still {}",
                        found.node_id.0
                    )))
                }
            })
            .await;
            eprintln!(
                "round {round}: offsets partition {offsets_partition} leader {leader} -> {target} at epoch {}, coordinator {coordinator}",
                epoch.0
            );
            leader = target;
        }
        wait_for_reads(&read, READS_BETWEEN_MOVES).await;
        stop_producing.store(true, Ordering::Relaxed);
        let ends = producer.await.unwrap();
        *read_to.lock().unwrap() = Some(ends.clone());
        let member_id = member.await.unwrap();

        let observed = std::mem::take(&mut *observed.lock().unwrap());
        report_stops(&moved_at, &observed);
        assert!(
            observed.commit_failures.is_empty(),
            "commits failed: {:?}",
            observed.commit_failures
        );
        assert_eq!(
            observed.member_ids,
            BTreeSet::from([member_id.clone()]),
            "the member kept its member id"
        );
        let all: BTreeSet<(String, u32)> =
            (0..PARTITIONS).map(|p| (TOPIC.to_owned(), p)).collect();
        let expected = vec![
            RebalanceEvent::Assigned(to_wire(&all)),
            RebalanceEvent::Revoked {
                partitions: to_wire(&all),
                lost: false,
            },
        ];
        assert_eq!(
            observed.events, expected,
            "one assignment of every partition, given up at close only"
        );

        // The committed offsets are the partitions' ends, through the coordinator of the last
        // move and again through the next one.
        let wanted: BTreeMap<u32, Option<u64>> =
            ends.iter().map(|(p, end)| (*p, Some(*end))).collect();
        let committed = committed_offsets(&admin).await;
        assert_eq!(committed, wanted, "committed offsets at the end");
        let index = replicas.iter().position(|n| *n == leader).unwrap();
        let target = replicas[(index + 1) % replicas.len()];
        until_ok(FAILOVER_BOUND, || {
            admin.elect_leader(OFFSETS_TOPIC, offsets_partition, target)
        })
        .await;
        let committed = until_ok(FAILOVER_BOUND, || async {
            let found = admin.find_coordinator(GROUP).await?;
            if found.node_id.0 != target {
                return Err(vltava_client::ClientError::InvalidArgument(
                    "not moved yet".into(),
                ));
            }
            Ok(committed_offsets(&admin).await)
        })
        .await;
        assert_eq!(committed, wanted, "committed offsets after one more move");

        // How long each load took on the node that became the coordinator (diagnostics).
        for node in &cluster.nodes {
            for line in node.log_text().lines().filter(|l| {
                l.contains("offsets partition loaded") || l.contains("offsets partition not loaded")
            }) {
                if line.contains(&format!("partition={offsets_partition} ")) {
                    eprintln!("{}: {line}", node.addr);
                }
            }
        }

        let report = history.check(CheckOptions {
            require_all_acknowledged_read: true,
            require_reads_written: true,
            max_position_resets: Some(0),
            ..CheckOptions::default()
        });
        report.assert_ok();
    });
}

/// Partitions as the client's rebalance events list them: by topic, sorted.
fn to_wire(partitions: &BTreeSet<(String, u32)>) -> Vec<TopicPartitions> {
    let mut topics: Vec<TopicPartitions> = Vec::new();
    for (topic, partition) in partitions {
        match topics.last_mut() {
            Some(last) if last.topic == *topic => last.partitions.push(PartitionId(*partition)),
            _ => topics.push(TopicPartitions {
                topic: topic.clone(),
                partitions: vec![PartitionId(*partition)],
            }),
        }
    }
    topics
}

/// The group's committed offset of each partition of `TOPIC`, read through its coordinator.
async fn committed_offsets(admin: &vltava_client::Admin) -> BTreeMap<u32, Option<u64>> {
    vltava_tests::committed_offsets(&admin.fetch_offsets(GROUP, None).await.unwrap(), TOPIC)
}

/// Prints, for each move, how long after it the first commit succeeded and the longest pause
/// between two reads from a second before it to the first commit after it.
fn report_stops(moved_at: &[Instant], observed: &Observed) {
    let mut commit_stops = Vec::new();
    let mut read_stops = Vec::new();
    for (round, at) in moved_at.iter().enumerate() {
        let Some(commit) = observed.commits_at.iter().find(|c| *c > at) else {
            eprintln!("move {round}: no commit after it");
            continue;
        };
        let window_start = at.checked_sub(Duration::from_secs(1)).unwrap_or(*at);
        let reads: Vec<&Instant> = observed
            .reads_at
            .iter()
            .filter(|r| **r >= window_start && *r <= commit)
            .collect();
        let longest_read_gap = reads
            .windows(2)
            .map(|w| w[1].duration_since(*w[0]))
            .max()
            .unwrap_or_default();
        let commit_stop = commit.duration_since(*at);
        eprintln!(
            "move {round}: first commit {} ms after the move; longest pause between reads around it {} ms",
            commit_stop.as_millis(),
            longest_read_gap.as_millis()
        );
        commit_stops.push(commit_stop);
        read_stops.push(longest_read_gap);
    }
    commit_stops.sort();
    read_stops.sort();
    if let (Some(commit_max), Some(read_max)) = (commit_stops.last(), read_stops.last()) {
        eprintln!(
            "over {} moves: commits stopped p50 {} ms, max {} ms; reads paused p50 {} ms, max {} ms",
            commit_stops.len(),
            commit_stops[commit_stops.len() / 2].as_millis(),
            commit_max.as_millis(),
            read_stops[read_stops.len() / 2].as_millis(),
            read_max.as_millis()
        );
    }
}

/// Waits until `count` more events are read; panics if they are not within `FAILOVER_BOUND`.
async fn wait_for_reads(read: &AtomicU64, count: u64) {
    let from = read.load(Ordering::Relaxed);
    let deadline = Instant::now() + FAILOVER_BOUND;
    while read.load(Ordering::Relaxed) < from + count {
        assert!(
            Instant::now() < deadline,
            "the member read {} events in {FAILOVER_BOUND:?}, not {count}",
            read.load(Ordering::Relaxed) - from
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends unique values round-robin over the partitions until `stop`, at most
/// `SENDS_IN_FLIGHT_MAX` unanswered, recording each acknowledged one; every send must
/// succeed. Returns each partition's end (the offset after the last acknowledged event).
async fn produce(
    bootstrap: Vec<String>,
    history: History,
    stop: Arc<AtomicBool>,
) -> BTreeMap<u32, u64> {
    let producer = Producer::new(
        Cluster::connect(&bootstrap, "coordinator-producer")
            .await
            .unwrap(),
        ProducerConfig::default(),
    )
    .await
    .unwrap();
    let mut ends: BTreeMap<u32, u64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    let mut pending = VecDeque::new();
    let mut answer =
        |partition: u32, value: Vec<u8>, outcome: Result<vltava_client::RecordMetadata, _>| {
            let written = outcome.unwrap_or_else(|e| panic!("a send failed: {e}"));
            let offset = written.offset.expect("acks=all has offsets");
            history.acknowledged(TOPIC, PartitionId(partition), offset, b"", &value);
            let end = ends.get_mut(&partition).unwrap();
            *end = (*end).max(offset.0 + 1);
        };
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let partition = (seq % u64::from(PARTITIONS)) as u32;
        let value = unique_value(1, seq);
        seq += 1;
        let record = ProducerRecord {
            topic: TOPIC.to_owned(),
            partition: Some(partition),
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
            timestamp: None,
        };
        pending.push_back((partition, value, producer.send(record).await.unwrap()));
        if pending.len() >= SENDS_IN_FLIGHT_MAX {
            let (partition, value, delivery) = pending.pop_front().unwrap();
            answer(partition, value, delivery.wait().await);
        }
        tokio::time::sleep(SEND_PAUSE).await;
    }
    while let Some((partition, value, delivery)) = pending.pop_front() {
        answer(partition, value, delivery.wait().await);
    }
    producer.close().await.unwrap();
    ends
}

/// One group member: polls, records every event read, commits after every poll that read
/// something, until `read_to` is set and every partition is read to its end; then commits,
/// closes (leaving the group) and returns its member id.
async fn consume(
    bootstrap: Vec<String>,
    history: History,
    read_to: Arc<Mutex<Option<BTreeMap<u32, u64>>>>,
    read: Arc<AtomicU64>,
    observed: Arc<Mutex<Observed>>,
) -> String {
    let mut config = GroupConfig::new(GROUP);
    config.auto_commit = false;
    let mut member = GroupConsumer::new(
        Cluster::connect(&bootstrap, "coordinator-member")
            .await
            .unwrap(),
        ConsumerConfig {
            max_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        },
        config,
    )
    .unwrap();
    member.subscribe(&[TOPIC]).unwrap();
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    let mut deadline: Option<Instant> = None;
    let member_id = loop {
        let target = read_to.lock().unwrap().clone();
        if let Some(target) = &target {
            let at = *deadline.get_or_insert_with(|| Instant::now() + FAILOVER_BOUND);
            if target
                .iter()
                .all(|(p, end)| next.get(p).copied().unwrap_or(0) >= *end)
            {
                break member.member_id().expect("still a member");
            }
            assert!(
                Instant::now() < at,
                "read to {next:?} of {target:?} within {FAILOVER_BOUND:?}"
            );
        }
        let records = match member.poll().await {
            Ok(records) => records,
            Err(e) if e.is_retriable() => {
                eprintln!("poll: {e} (retriable)");
                continue;
            }
            Err(e) => panic!("the member failed: {e}"),
        };
        {
            let mut o = observed.lock().unwrap();
            if let Some(id) = member.member_id() {
                o.member_ids.insert(id);
            }
            o.events.extend(member.rebalance_events());
        }
        if records.is_empty() {
            continue;
        }
        for r in &records {
            history.read(
                "group",
                TOPIC,
                PartitionId(r.partition),
                Offset(r.offset),
                r.key.as_deref().unwrap_or_default(),
                r.value.as_deref().unwrap_or_default(),
            );
            next.insert(r.partition, r.offset + 1);
        }
        read.fetch_add(records.len() as u64, Ordering::Relaxed);
        observed.lock().unwrap().reads_at.push(Instant::now());
        let committed = member.commit().await;
        {
            let mut o = observed.lock().unwrap();
            match committed {
                Ok(()) => o.commits_at.push(Instant::now()),
                Err(e) => o.commit_failures.push(e.to_string()),
            }
        }
    };
    member.commit().await.unwrap();
    member.close().await.unwrap();
    observed
        .lock()
        .unwrap()
        .events
        .extend(member.rebalance_events());
    member_id
}
