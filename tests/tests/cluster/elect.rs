//! The controlled move of leadership (issue 13, *Operator commands*): `elect-leader` moves a
//! partition's leader to another in-sync replica while an `acks=all` idempotent producer and
//! a consumer run, and the history checker finds nothing acknowledged lost, nothing written
//! twice, order kept and no consumer position reset.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vltava_client::{
    Cluster, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, SeekTo,
};
use vltava_messages::protocol::ErrorCode;
use vltava_messages::{LeaderEpoch, Offset, PartitionId};
use vltava_tests::cluster::TestCluster;
use vltava_tests::history::{CheckOptions, History, unique_value};

use super::{
    FAILOVER_BOUND, admin, code, controller_seen_by, metadata, runtime, until_ok, vltava_at,
};

const TOPIC: &str = "elected";
/// How many times the leader moves.
const MOVES: u32 = 20;
/// Sends the producer keeps unanswered: enough for several batches in flight at every move.
const SENDS_IN_FLIGHT_MAX: usize = 32;
/// Acknowledged events the test waits for between two moves, so that every leader takes
/// writes before the next move.
const ACKS_BETWEEN_MOVES: u64 = 25;
/// The move made through the CLI instead of the client library.
const CLI_MOVE: u32 = 10;

/// Twenty moves of partition 0's leadership (cycling through its three replicas, one of them
/// through `vltava partition elect-leader`) under an `acks=all` idempotent producer that sends
/// all along and a consumer that reads all along: every acknowledged event is read once, in
/// order, no read is of something never written, the consumer never resets its position, each
/// move raises the leader epoch by one, and no send fails (producers see only retriable
/// errors, which they retry).
#[test]
fn moving_the_leader_twenty_times_under_load_loses_nothing() {
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();
    let history = History::new();
    let rt = runtime();
    rt.block_on(async {
        let admin = admin(&bootstrap).await;
        until_ok(FAILOVER_BOUND, || {
            admin.create_topic(TOPIC, 1, 3, BTreeMap::new())
        })
        .await;
        let (replicas, first_leader) = until_ok(FAILOVER_BOUND, || async {
            let answer = metadata(&cluster.node(1).addr).await?;
            let p = answer
                .topics
                .iter()
                .find(|t| t.name == TOPIC)
                .and_then(|t| t.partitions.first())
                .filter(|p| p.in_sync_replicas.len() == 3 && p.leader.is_some())
                .ok_or_else(|| vltava_client::ClientError::InvalidArgument("not yet".into()))?;
            let replicas: Vec<u32> = p.replicas.iter().map(|n| n.0).collect();
            Ok((replicas, p.leader.unwrap().0))
        })
        .await;
        assert_eq!(replicas.len(), 3);
        // The CLI asks a node that is not the controller, so its requests are forwarded (the
        // controller may move meanwhile; then the node answers ControllerNotAvailable, and the
        // exit code says so).
        let controller = controller_seen_by(&cluster.node(1).addr).await;
        let forwarder = (1..=3).find(|n| *n != controller).unwrap();
        let forwarder_addr = cluster.node(forwarder).addr.clone();

        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let producer = tokio::spawn(produce(
            TOPIC,
            bootstrap.clone(),
            history.clone(),
            Arc::clone(&stop),
            Arc::clone(&acked),
        ));
        // The offset the consumer must reach before it stops (set once the producer is done).
        let read_to = Arc::new(AtomicU64::new(u64::MAX));
        let consumer = tokio::spawn(consume(
            TOPIC,
            bootstrap.clone(),
            history.clone(),
            Arc::clone(&read_to),
        ));

        let mut leader = first_leader;
        let mut epoch: Option<LeaderEpoch> = None;
        for round in 0..MOVES {
            wait_for_acks(&acked, ACKS_BETWEEN_MOVES, &cluster).await;
            let index = replicas.iter().position(|n| *n == leader).unwrap();
            let target = replicas[(index + 1) % replicas.len()];
            let moved_to = if round == CLI_MOVE {
                let addr = forwarder_addr.clone();
                let args = [
                    "partition",
                    "elect-leader",
                    TOPIC,
                    "0",
                    "--to",
                    &target.to_string(),
                ]
                .map(str::to_owned);
                let (exit, stdout, stderr) = tokio::task::spawn_blocking(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    vltava_at(&addr, &args)
                })
                .await
                .unwrap();
                assert_eq!(exit, Some(0), "stdout {stdout}, stderr {stderr}");
                assert!(
                    stdout.starts_with(&format!(
                        "partition {TOPIC}-0: leader {target}, leader epoch "
                    )),
                    "{stdout}"
                );
                let text = stdout.trim().rsplit(' ').next().unwrap();
                LeaderEpoch(text.parse().unwrap())
            } else {
                // IneligibleLeader (retriable) while the target is out of the ISR.
                until_ok(FAILOVER_BOUND, || admin.elect_leader(TOPIC, 0, target)).await
            };
            if let Some(before) = epoch {
                assert_eq!(
                    moved_to.0,
                    before.0 + 1,
                    "round {round}: one epoch per move"
                );
            }
            history.leader_epoch_seen("elect", TOPIC, PartitionId(0), moved_to);
            eprintln!(
                "round {round}: leader {leader} -> {target} at epoch {}",
                moved_to.0
            );
            epoch = Some(moved_to);
            leader = target;
        }
        wait_for_acks(&acked, ACKS_BETWEEN_MOVES, &cluster).await;
        stop.store(true, Ordering::Relaxed);
        let (last_acked, failed) = producer.await.unwrap();
        read_to.store(last_acked.map_or(0, |o| o + 1), Ordering::Relaxed);
        let resets = consumer.await.unwrap();
        eprintln!(
            "{} events acknowledged up to offset {last_acked:?} over {MOVES} moves",
            acked.load(Ordering::Relaxed)
        );

        // The leader the metadata names is the last one elected.
        let answer = metadata(&cluster.node(2).addr).await.unwrap();
        let p = &answer
            .topics
            .iter()
            .find(|t| t.name == TOPIC)
            .unwrap()
            .partitions[0];
        assert_eq!(p.leader.map(|n| n.0), Some(leader));
        history.leader_epoch_seen("metadata", TOPIC, PartitionId(0), p.leader_epoch);

        // Back to the first replica (the preferred leader), for the named topic, through the
        // CLI; then a preferred election of every partition finds nothing left to move.
        let addr = forwarder_addr.clone();
        let (exit, stdout, stderr) = tokio::task::spawn_blocking(move || {
            vltava_at(&addr, &["partition", "elect-preferred", TOPIC])
        })
        .await
        .unwrap();
        assert_eq!(exit, Some(0), "stdout {stdout}, stderr {stderr}");
        let preferred = replicas[0];
        let expected_epoch = epoch.map_or(0, |e| e.0) + u32::from(leader != preferred);
        assert_eq!(
            stdout.trim(),
            format!("partition {TOPIC}-0: leader {preferred}, leader epoch {expected_epoch}")
        );
        let everything = admin.elect_preferred(&[]).await.unwrap();
        assert!(
            everything.iter().all(|r| r.topic != TOPIC),
            "{everything:?}"
        );
        leader = preferred;

        // Refusals: a node that is not a replica, through the CLI.
        let addr = forwarder_addr.clone();
        let (exit, _, stderr) = tokio::task::spawn_blocking(move || {
            vltava_at(
                &addr,
                &["partition", "elect-leader", TOPIC, "0", "--to", "9"],
            )
        })
        .await
        .unwrap();
        assert_eq!(exit, Some(1), "{stderr}");
        assert!(stderr.contains("InvalidRequest"), "{stderr}");
        let unknown = admin.elect_leader(TOPIC, 5, leader).await.unwrap_err();
        assert_eq!(code(&unknown), Some(ErrorCode::UnknownPartition));

        let report = history.check(CheckOptions {
            require_all_acknowledged_read: true,
            require_reads_written: true,
            max_position_resets: Some(0),
            ..CheckOptions::default()
        });
        if !report.is_ok() || !failed.is_empty() || resets > 0 {
            for node in &cluster.nodes {
                let log = node.log_text();
                let wanted: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.contains("openraft"))
                    .filter(|l| {
                        ["epoch", "truncat", "leader", "ISR", "assignment"]
                            .iter()
                            .any(|w| l.contains(w))
                    })
                    .collect();
                eprintln!("--- node {}:\n{}", node.addr, wanted.join("\n"));
            }
        }
        report.assert_ok();
        assert!(failed.is_empty(), "sends failed: {failed:?}");
        assert_eq!(resets, 0, "the consumer reset its position");
    });
}

/// Waits until `count` more events are acknowledged; panics with the nodes' logs if they are
/// not within `FAILOVER_BOUND`.
pub(super) async fn wait_for_acks(acked: &AtomicU64, count: u64, cluster: &TestCluster) {
    let from = acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + FAILOVER_BOUND;
    while acked.load(Ordering::Relaxed) < from + count {
        if Instant::now() > deadline {
            for node in &cluster.nodes {
                eprintln!("--- node {}:\n{}", node.addr, node.log_text());
            }
            panic!("no {count} acknowledgements within {FAILOVER_BOUND:?} (from {from})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends unique values to partition 0 of `topic` until `stop`, at most `SENDS_IN_FLIGHT_MAX`
/// unanswered, recording each acknowledged one (and any failed one as attempted). Returns the
/// highest acknowledged offset and the sends that failed.
pub(super) async fn produce(
    topic: &'static str,
    bootstrap: Vec<String>,
    history: History,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> (Option<u64>, Vec<String>) {
    let producer = Producer::new(
        Cluster::connect(&bootstrap, "elect-producer")
            .await
            .unwrap(),
        ProducerConfig::default(),
    )
    .await
    .unwrap();
    let mut pending = VecDeque::new();
    let mut last: Option<u64> = None;
    let mut failed = Vec::new();
    let mut answer =
        |value: Vec<u8>, outcome: Result<vltava_client::RecordMetadata, _>| match outcome {
            Ok(written) => {
                let offset = written.offset.expect("acks=all has offsets");
                history.acknowledged(topic, PartitionId(0), offset, b"", &value);
                last = last.max(Some(offset.0));
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                history.attempted(topic, PartitionId(0), b"", &value);
                failed.push(format!("{}: {e}", String::from_utf8_lossy(&value)));
            }
        };
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let value = unique_value(1, seq);
        seq += 1;
        let record = ProducerRecord {
            topic: topic.to_owned(),
            partition: Some(0),
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
            timestamp: None,
        };
        pending.push_back((value, producer.send(record).await.unwrap()));
        if pending.len() >= SENDS_IN_FLIGHT_MAX {
            let (value, delivery) = pending.pop_front().unwrap();
            answer(value, delivery.wait().await);
        }
    }
    while let Some((value, delivery)) = pending.pop_front() {
        answer(value, delivery.wait().await);
    }
    producer.close().await.unwrap();
    (last, failed)
}

/// Reads partition 0 of `topic` from the earliest offset until it reaches `read_to`, recording
/// every record and every position reset (a position that went back); returns the resets.
pub(super) async fn consume(
    topic: &'static str,
    bootstrap: Vec<String>,
    history: History,
    read_to: Arc<AtomicU64>,
) -> usize {
    let mut consumer = Consumer::new(
        Cluster::connect(&bootstrap, "elect-consumer")
            .await
            .unwrap(),
        ConsumerConfig::default(),
    );
    // The partition may still be opening on its leader (LeaderNotAvailable, retriable).
    let assigned_by = Instant::now() + FAILOVER_BOUND;
    while let Err(e) = consumer
        .assign(topic, Some(vec![0]), SeekTo::Earliest)
        .await
    {
        assert!(
            e.is_retriable() && Instant::now() < assigned_by,
            "cannot assign: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = (topic.to_owned(), 0);
    let mut next = 0;
    let mut resets = 0;
    let mut deadline: Option<Instant> = None;
    loop {
        let target = read_to.load(Ordering::Relaxed);
        if next >= target {
            return resets;
        }
        if target != u64::MAX {
            let at = *deadline.get_or_insert_with(|| Instant::now() + FAILOVER_BOUND);
            assert!(Instant::now() < at, "read to {next} of {target}");
        }
        match consumer.poll().await {
            Ok(records) => {
                for r in records {
                    history.read(
                        "consumer",
                        topic,
                        PartitionId(0),
                        Offset(r.offset),
                        r.key.as_deref().unwrap_or_default(),
                        r.value.as_deref().unwrap_or_default(),
                    );
                    next = r.offset + 1;
                }
            }
            Err(e) if e.is_retriable() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the consumer failed: {e}"),
        }
        if let Some(position) = consumer.positions().get(&key).copied()
            && position < next
        {
            history.position_reset(
                "consumer",
                topic,
                PartitionId(0),
                Offset(next),
                Offset(position),
            );
            resets += 1;
            next = position;
        }
    }
}
