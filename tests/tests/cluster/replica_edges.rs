//! Replication edge cases of issue 13 on real processes: a follower that comes back after its
//! leader's retention removed what it would fetch next starts its log afresh at the leader's
//! log start; and on a compacted topic every replica compacts on its own while a follower
//! catches up across a range its leader compacted while it was down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use vltava_client::{
    Cluster, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, SeekTo,
};
use vltava_messages::{Offset, PartitionId};
use vltava_tests::cluster::TestCluster;
use vltava_tests::history::{CheckOptions, History};
use vltava_tests::{binary, eventually};

use super::{FAILOVER_BOUND, admin, metadata, runtime, until_ok};

/// The smallest segment a topic may have, so that a few hundred KiB make many segments.
const SEGMENT_BYTES: &str = "65536";

/// The flags of every node: a follower that stops leaves the ISR after a second (so acks=all
/// goes on with the other two), and retention runs five times a second.
const FLAGS: [&str; 4] = [
    "--replica-lag-time-max-ms",
    "1000",
    "--retention-check-interval-ms",
    "200",
];

/// Producer batches of at most 16 KiB, so that several fit a segment.
fn producer_config() -> ProducerConfig {
    ProducerConfig {
        batch_bytes: 16 * 1024,
        ..ProducerConfig::default()
    }
}

/// The leader of partition 0 of `topic` and its two followers, once every replica is in the
/// ISR, as node 1 sees it.
fn leader_and_followers(cluster: &TestCluster, topic: &str) -> (u32, Vec<u32>) {
    let rt = runtime();
    rt.block_on(async {
        let deadline = Instant::now() + FAILOVER_BOUND;
        loop {
            if let Ok(answer) = metadata(&cluster.node(1).addr).await
                && let Some(t) = answer.topics.iter().find(|t| t.name == topic)
                && let Some(p) = t.partitions.first()
                && let Some(leader) = p.leader
                && p.in_sync_replicas.len() == 3
            {
                let followers = p
                    .replicas
                    .iter()
                    .map(|n| n.0)
                    .filter(|n| *n != leader.0)
                    .collect();
                return (leader.0, followers);
            }
            assert!(Instant::now() < deadline, "{topic} never had a full ISR");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The ISR of partition 0 of `topic` as node `addr` sees it.
async fn isr_of(addr: &str, topic: &str) -> BTreeSet<u32> {
    match metadata(addr).await {
        Ok(answer) => answer
            .topics
            .iter()
            .find(|t| t.name == topic)
            .and_then(|t| t.partitions.first())
            .map(|p| p.in_sync_replicas.iter().map(|n| n.0).collect())
            .unwrap_or_default(),
        Err(_) => BTreeSet::new(),
    }
}

/// Node `node`'s own replica of partition 0 of `topic`, from its admin endpoint: log start
/// and end, high watermark, segments, role.
fn local_replica(cluster: &TestCluster, node: u32, topic: &str) -> Value {
    let (status, body) = cluster.node(node).admin_get(&format!("/topics/{topic}"));
    if status != 200 {
        return Value::Null;
    }
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    answer["partitions"][0].clone()
}

fn offset_field(replica: &Value, field: &str) -> u64 {
    replica[field].as_u64().unwrap_or(0)
}

/// What a producer got acknowledged, by offset: key and value.
type Acknowledged = BTreeMap<u64, (Option<String>, String)>;

/// Events to send to partition 0 of `topic`: event `i` has a value of `value_bytes` starting
/// with `"{tag}-{i}"`.
#[derive(Clone, Copy, Debug)]
struct Events<'a> {
    topic: &'a str,
    tag: &'a str,
    count: u64,
    value_bytes: usize,
}

/// Sends `events` through `producer` (idempotent, acks=all), event `i` with key `key(i)`. Once
/// all are sent, `meanwhile` runs, then every answer is awaited. Records what was acknowledged
/// in `history` and returns it.
async fn send_all(
    producer: &Producer,
    events: Events<'_>,
    key: impl Fn(u64) -> Option<String>,
    history: &History,
    meanwhile: impl std::future::Future<Output = ()>,
) -> Acknowledged {
    let Events {
        topic,
        tag,
        count,
        value_bytes,
    } = events;
    let mut deliveries = Vec::new();
    for i in 0..count {
        let mut value = format!("{tag}-{i}-");
        value.extend(std::iter::repeat_n(
            '.',
            value_bytes.saturating_sub(value.len()),
        ));
        let record = ProducerRecord {
            topic: topic.to_owned(),
            partition: Some(0),
            key: key(i).map(String::into_bytes),
            value: Some(value.clone().into_bytes()),
            headers: Vec::new(),
            timestamp: None,
        };
        deliveries.push((key(i), value, producer.send(record).await.unwrap()));
    }
    meanwhile.await;
    let mut acknowledged = BTreeMap::new();
    for (key, value, delivery) in deliveries {
        let written = delivery.wait().await.expect("acknowledged");
        let offset = written.offset.expect("acks=all has offsets");
        history.acknowledged(
            topic,
            PartitionId(0),
            offset,
            key.as_deref().unwrap_or_default().as_bytes(),
            value.as_bytes(),
        );
        acknowledged.insert(offset.0, (key, value));
    }
    acknowledged
}

/// An idempotent producer, once the cluster grants it an id (its controller may be slow to
/// answer on a loaded machine: `ControllerNotAvailable` is retriable).
async fn new_producer(bootstrap: &[String]) -> Producer {
    until_ok(FAILOVER_BOUND, || async {
        Producer::new(
            Cluster::connect(bootstrap, "edges-test").await?,
            producer_config(),
        )
        .await
    })
    .await
}

/// A producer of its own sends `events` as [`send_all`] does.
fn produce(
    bootstrap: &[String],
    events: Events<'_>,
    key: impl Fn(u64) -> Option<String>,
    history: &History,
) -> Acknowledged {
    runtime().block_on(async {
        let producer = new_producer(bootstrap).await;
        let acknowledged = send_all(&producer, events, key, history, async {}).await;
        producer.close().await.unwrap();
        acknowledged
    })
}

/// The segment files of partition 0 of `topic` in a node's data directory, oldest first.
fn segment_files(data_dir: &Path, topic: &str) -> Vec<PathBuf> {
    let dir = data_dir.join(format!("{topic}-0"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// `vltava-node dump-log [--records] <segment>`: its lines after the first (which names the
/// path), or `None` if the dump failed (a segment replaced by compaction meanwhile, say).
fn dump_log(segment: &Path, records: bool) -> Option<Vec<String>> {
    let mut command = std::process::Command::new(binary("vltava-node"));
    command.arg("dump-log");
    if records {
        command.arg("--records");
    }
    let output = command.arg(segment).output().expect("vltava-node runs");
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Some(text.lines().skip(1).map(str::to_owned).collect())
}

/// One record of a dump: offset, key, value (`null` for none).
type Dumped = (u64, String, String);

/// Every record a node's replica of partition 0 of `topic` holds, through `dump-log
/// --records`, or `None` if a dump failed.
fn replica_records(data_dir: &Path, topic: &str) -> Option<Vec<Dumped>> {
    let mut records = Vec::new();
    for segment in segment_files(data_dir, topic) {
        for line in dump_log(&segment, true)? {
            let Some(rest) = line.strip_prefix("| offset: ") else {
                continue;
            };
            let words: Vec<&str> = rest.split_whitespace().collect();
            // offset, "timestamp:", t, "key:", k, "value:", v, ...
            records.push((
                words[0].parse().expect("an offset"),
                words[4].to_owned(),
                words[6].to_owned(),
            ));
        }
    }
    Some(records)
}

/// The base offset of every batch a node's replica of partition 0 of `topic` holds, with the
/// offset after it, through `dump-log`.
fn replica_batches(data_dir: &Path, topic: &str) -> Option<Vec<(u64, u64)>> {
    let mut batches = Vec::new();
    for segment in segment_files(data_dir, topic) {
        for line in dump_log(&segment, false)? {
            let Some(rest) = line.strip_prefix("baseOffset: ") else {
                continue;
            };
            let words: Vec<&str> = rest.split_whitespace().collect();
            // base, "lastOffset:", last, ...
            let base: u64 = words[0].parse().expect("a base offset");
            let last: u64 = words[2].parse().expect("a last offset");
            batches.push((base, last + 1));
        }
    }
    Some(batches)
}

/// Prints what the nodes logged about this file's paths, for a failing test to explain itself.
fn dump_edge_logs(cluster: &TestCluster) {
    for (index, node) in cluster.nodes.iter().enumerate() {
        let log = node.log_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("openraft"))
            .filter(|l| {
                [
                    "out of the leader",
                    "afresh",
                    "starts past",
                    "truncat",
                    "retention",
                    "compact",
                    "refused",
                    "ISR",
                ]
                .iter()
                .any(|w| l.contains(w))
            })
            .collect();
        let shown = lines.len().saturating_sub(120);
        eprintln!(
            "--- node {} (last 120 lines):\n{}",
            index + 1,
            lines[shown..].join("\n")
        );
    }
}

/// Runs `test`, printing the nodes' logs if it panics.
fn explained(cluster: &mut TestCluster, test: impl FnOnce(&mut TestCluster)) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(cluster)));
    if let Err(panic) = outcome {
        dump_edge_logs(cluster);
        std::panic::resume_unwind(panic);
    }
}

/// Reads partition 0 of `topic` from its earliest offset through `addr` into `history` until
/// `end`.
fn read_from_earliest(addr: &str, topic: &str, end: u64, history: &History) {
    runtime().block_on(async {
        let mut consumer = Consumer::new(
            Cluster::connect(&[addr.to_owned()], "edges-reader")
                .await
                .unwrap(),
            ConsumerConfig::default(),
        );
        consumer
            .assign(topic, Some(vec![0]), SeekTo::Earliest)
            .await
            .unwrap();
        let deadline = Instant::now() + FAILOVER_BOUND;
        let mut next = 0;
        while next < end && Instant::now() < deadline {
            for record in consumer.poll().await.unwrap() {
                next = record.offset + 1;
                history.read(
                    "edges-reader",
                    topic,
                    PartitionId(record.partition),
                    Offset(record.offset),
                    record.key.as_deref().unwrap_or_default(),
                    &record.value.unwrap_or_default(),
                );
            }
        }
        assert!(next >= end, "read up to {next} of {end}");
    });
}

const TRIMMED: &str = "trimmed";
/// Events of the retention test: before the follower is killed, while it is down, and after
/// it came back (while the leadership moves to it).
const EARLY: u64 = 40;
const MIDDLE: u64 = 1200;
const LATE: u64 = 300;

/// Issue 13: a follower whose fetch offset is below its leader's log start. An RF 3 topic with
/// 64 KiB segments and 256 KiB of retention; a follower is killed (kill -9) after 40 events,
/// then 1,200 events of 1 KiB go to the other two, and the leader's retention deletes the
/// segments the follower would fetch next. Restarted, the follower's fetch is answered out of
/// range with the leader's log start: it empties its log, starts it there, catches up and
/// rejoins the ISR (metadata shows it); its segments then hold the leader's batches from that
/// start, byte for byte (`vltava-node dump-log` of every segment both hold), and not the 40
/// events it had.
///
/// Its producer state is right too: the leadership then moves to it while the same idempotent
/// producer sends 300 more events (some are in flight at the move and retried to it, after
/// the old leader appended them): the history checker finds no event written twice, so the
/// fresh log's producer table, rebuilt from the batches it copied, answered those retries as
/// duplicates. Everything the leader still holds reads back as acknowledged.
#[test]
fn a_follower_behind_its_leaders_log_start_starts_afresh_there_and_rejoins_the_isr() {
    let mut cluster = TestCluster::start(3, &FLAGS);
    explained(&mut cluster, |cluster| {
        let bootstrap = cluster.bootstrap();
        let rt = runtime();
        let admin = rt.block_on(async {
            let admin = admin(&bootstrap).await;
            let configs = BTreeMap::from([
                ("segment.bytes".to_owned(), SEGMENT_BYTES.to_owned()),
                ("retention.bytes".to_owned(), "262144".to_owned()),
            ]);
            until_ok(FAILOVER_BOUND, || {
                admin.create_topic(TRIMMED, 1, 3, configs.clone())
            })
            .await;
            admin
        });
        let (leader, followers) = leader_and_followers(cluster, TRIMMED);
        let follower = followers[0];
        let history = History::new();
        // One idempotent producer for the whole test: its sequences run on across the
        // follower's fresh start and the move of the leadership to it.
        let producer = rt.block_on(new_producer(&bootstrap));
        let no_key = |_| None;
        let mut acknowledged = rt.block_on(send_all(
            &producer,
            Events {
                topic: TRIMMED,
                tag: "early",
                count: EARLY,
                value_bytes: 1000,
            },
            no_key,
            &history,
            async {},
        ));
        let caught_up = eventually(FAILOVER_BOUND, || {
            offset_field(&local_replica(cluster, follower, TRIMMED), "log_end_offset") == EARLY
        });
        assert!(caught_up, "the follower copied the first {EARLY} events");
        cluster.node_mut(follower).kill();

        acknowledged.extend(rt.block_on(send_all(
            &producer,
            Events {
                topic: TRIMMED,
                tag: "middle",
                count: MIDDLE,
                value_bytes: 1000,
            },
            no_key,
            &history,
            async {},
        )));
        let mut leader_view = Value::Null;
        let trimmed = eventually(FAILOVER_BOUND, || {
            leader_view = local_replica(cluster, leader, TRIMMED);
            offset_field(&leader_view, "log_start_offset") > EARLY
        });
        assert!(
            trimmed,
            "the leader's retention passed the follower's log end: {leader_view}"
        );
        let start_then = offset_field(&leader_view, "log_start_offset");

        cluster.node_mut(follower).restart();
        let leader_addr = cluster.node(leader).addr.clone();
        let rejoined = rt.block_on(async {
            let deadline = Instant::now() + FAILOVER_BOUND;
            while Instant::now() < deadline {
                if isr_of(&leader_addr, TRIMMED).await.contains(&follower) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        });
        assert!(rejoined, "the follower rejoined the ISR");
        assert!(
            cluster
                .node(follower)
                .logged("the leader's log starts past this log's end"),
            "the follower started afresh"
        );

        // The leadership moves to the fresh follower while the producer sends.
        let move_to_follower = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            until_ok(FAILOVER_BOUND, || admin.elect_leader(TRIMMED, 0, follower)).await;
        };
        acknowledged.extend(rt.block_on(send_all(
            &producer,
            Events {
                topic: TRIMMED,
                tag: "late",
                count: LATE,
                value_bytes: 1000,
            },
            no_key,
            &history,
            move_to_follower,
        )));
        rt.block_on(producer.close()).unwrap();
        let end = EARLY + MIDDLE + LATE;
        assert_eq!(
            acknowledged.len() as u64,
            end,
            "every event acknowledged once"
        );
        assert_eq!(acknowledged.keys().next_back(), Some(&(end - 1)));

        let mut views = (Value::Null, Value::Null);
        let settled = eventually(FAILOVER_BOUND, || {
            views = (
                local_replica(cluster, leader, TRIMMED),
                local_replica(cluster, follower, TRIMMED),
            );
            views.1["role"] == "leader"
                && offset_field(&views.0, "log_end_offset") == end
                && offset_field(&views.0, "high_watermark") == end
                && offset_field(&views.1, "high_watermark") == end
        });
        assert!(
            settled,
            "the follower leads and both are at the log end: {views:?}"
        );
        assert!(
            offset_field(&views.1, "log_start_offset") >= start_then,
            "the follower kept none of its first {EARLY} events: {views:?}"
        );

        // Segment by segment, the same batches: every segment file both hold dumps alike,
        // and the follower's oldest one starts with a batch at its base offset (the leader's
        // log start when it started afresh, or later if its own retention ran since).
        let (leader_dir, follower_dir) = (cluster.data_dir(leader), cluster.data_dir(follower));
        let mut compared = 0;
        let same = eventually(FAILOVER_BOUND, || {
            let names = |dir: &Path| -> BTreeSet<String> {
                segment_files(dir, TRIMMED)
                    .iter()
                    .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                    .collect()
            };
            let common: Vec<String> = names(&leader_dir)
                .intersection(&names(&follower_dir))
                .cloned()
                .collect();
            compared = common.len();
            common.len() >= 2
                && common.iter().all(|name| {
                    let segment = |dir: &Path| dir.join(format!("{TRIMMED}-0")).join(name);
                    let leader_dump = dump_log(&segment(&leader_dir), false);
                    leader_dump.is_some() && leader_dump == dump_log(&segment(&follower_dir), false)
                })
        });
        assert!(same, "{compared} common segments, not all alike");
        let follower_batches =
            replica_batches(&follower_dir, TRIMMED).expect("the follower's log dumps");
        let first_file = segment_files(&follower_dir, TRIMMED)[0].clone();
        let first_base: u64 = first_file
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .parse()
            .unwrap();
        assert_eq!(follower_batches.first().map(|b| b.0), Some(first_base));
        assert!(first_base >= start_then);

        // Consumers read what the new leader holds, as acknowledged, each event once.
        let follower_addr = cluster.node(follower).addr.clone();
        read_from_earliest(&follower_addr, TRIMMED, end, &history);
        history
            .check(CheckOptions {
                require_all_acknowledged_read: false,
                replicas_identical: false,
                max_position_resets: None,
                require_reads_written: true,
            })
            .assert_ok();
        let follower_records =
            replica_records(&follower_dir, TRIMMED).expect("the follower's log dumps");
        for (offset, _, value) in &follower_records {
            assert_eq!(
                acknowledged.get(offset).map(|(_, v)| v),
                Some(value),
                "the follower's offset {offset} holds what was acknowledged there"
            );
        }
        let follower_offsets: BTreeSet<u64> = follower_records.iter().map(|(o, _, _)| *o).collect();
        let follower_start = offset_field(&views.1, "log_start_offset");
        assert!(
            (follower_start..end).all(|o| follower_offsets.contains(&o)),
            "the follower holds every offset from its start on"
        );
    });
}

const COMPACTED: &str = "compacted";
/// Keys of the compacted topic: few, so that compaction removes most records.
const KEYS: u64 = 20;

fn key_of(i: u64) -> Option<String> {
    Some(format!("key-{}", i % KEYS))
}

/// Issue 13: compacted topics compact on every replica on their own, and a follower catches up
/// across a compacted range. An RF 3 topic with `cleanup.policy=compact` and 64 KiB segments;
/// a follower is killed after 200 keyed events (20 keys), then 2,000 more go to the other two,
/// and the leader compacts: the offset the follower would fetch next is among those it
/// removed. Restarted, the follower takes the leader's batches across the gaps, rejoins the
/// ISR, and every replica logs its own compaction passes. In the end each replica holds, for
/// every key, the last value acknowledged for it, and every record any replica holds is the
/// one acknowledged at its offset.
#[test]
fn every_replica_compacts_on_its_own_and_a_follower_catches_up_across_a_compacted_range() {
    let mut cluster = TestCluster::start(3, &FLAGS);
    explained(&mut cluster, |cluster| {
        let bootstrap = cluster.bootstrap();
        runtime().block_on(async {
            let admin = admin(&bootstrap).await;
            let configs = BTreeMap::from([
                ("cleanup.policy".to_owned(), "compact".to_owned()),
                ("segment.bytes".to_owned(), SEGMENT_BYTES.to_owned()),
            ]);
            until_ok(FAILOVER_BOUND, || {
                admin.create_topic(COMPACTED, 1, 3, configs.clone())
            })
            .await;
        });
        let (leader, followers) = leader_and_followers(cluster, COMPACTED);
        let (follower, other) = (followers[0], followers[1]);
        let history = History::new();
        let first = produce(
            &bootstrap,
            Events {
                topic: COMPACTED,
                tag: "first",
                count: 200,
                value_bytes: 500,
            },
            key_of,
            &history,
        );
        let caught_up = eventually(FAILOVER_BOUND, || {
            offset_field(
                &local_replica(cluster, follower, COMPACTED),
                "log_end_offset",
            ) == 200
        });
        assert!(caught_up, "the follower copied the first 200 events");
        cluster.node_mut(follower).kill();

        let second = produce(
            &bootstrap,
            Events {
                topic: COMPACTED,
                tag: "second",
                count: 2000,
                value_bytes: 500,
            },
            key_of,
            &history,
        );
        let leader_dir = cluster.data_dir(leader);
        // The leader compacted past the follower's log end: no batch of its log starts at
        // 200 any more, and the one holding the first offset past it starts later.
        let mut batches = Vec::new();
        let compacted = eventually(Duration::from_secs(60), || {
            batches = replica_batches(&leader_dir, COMPACTED).unwrap_or_default();
            batches
                .iter()
                .find(|(_, next)| *next > 200)
                .is_some_and(|(base, _)| *base > 200)
        });
        assert!(
            compacted,
            "the leader compacted the range past the follower's log end: {:?}",
            &batches[..batches.len().min(20)]
        );
        assert!(eventually(FAILOVER_BOUND, || cluster
            .node(leader)
            .logged("compaction pass done")));

        cluster.node_mut(follower).restart();
        let leader_addr = cluster.node(leader).addr.clone();
        let rejoined = runtime().block_on(async {
            let deadline = Instant::now() + FAILOVER_BOUND;
            while Instant::now() < deadline {
                if isr_of(&leader_addr, COMPACTED).await.contains(&follower) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        });
        assert!(rejoined, "the follower rejoined the ISR");
        let third = produce(
            &bootstrap,
            Events {
                topic: COMPACTED,
                tag: "third",
                count: 400,
                value_bytes: 500,
            },
            key_of,
            &history,
        );

        // The last value acknowledged for each key, and every acknowledged record by offset.
        let mut acknowledged: BTreeMap<u64, (String, String)> = BTreeMap::new();
        for (offset, (key, value)) in first.into_iter().chain(second).chain(third) {
            acknowledged.insert(offset, (key.expect("keyed"), value));
        }
        let end = acknowledged.keys().next_back().unwrap() + 1;
        let mut newest: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in acknowledged.values() {
            newest.insert(key.clone(), value.clone());
        }
        // Every replica compacts by itself (each logs its own passes, which swap segments)
        // and ends holding every key's newest value, and nothing that was not acknowledged at
        // its offset.
        for node in [leader, follower, other] {
            let compacting = eventually(Duration::from_secs(60), || {
                let view = local_replica(cluster, node, COMPACTED);
                offset_field(&view, "log_end_offset") == end
                    && cluster.node(node).logged("compaction pass done")
                    && cluster.node(node).log_text().contains("Swapped")
            });
            assert!(compacting, "node {node} compacted its own log");
            let mut records = Vec::new();
            let dumped = eventually(FAILOVER_BOUND, || {
                records = replica_records(&cluster.data_dir(node), COMPACTED).unwrap_or_default();
                !records.is_empty()
            });
            assert!(dumped, "node {node}'s log dumps");
            let mut held: BTreeMap<String, String> = BTreeMap::new();
            for (offset, key, value) in &records {
                let expected = acknowledged
                    .get(offset)
                    .map(|(k, v)| (k.as_str(), v.as_str()));
                assert_eq!(
                    expected,
                    Some((key.as_str(), value.as_str())),
                    "node {node}'s offset {offset}"
                );
                held.insert(key.clone(), value.clone());
            }
            assert_eq!(held, newest, "node {node} holds each key's newest value");
            assert!(
                (records.len() as u64) < end,
                "node {node} removed records ({} of {end} left)",
                records.len()
            );
        }
        // The follower's own passes cleaned what it held from before its restart.
        let follower_records =
            replica_records(&cluster.data_dir(follower), COMPACTED).expect("dumps");
        let old_kept = follower_records.iter().filter(|(o, _, _)| *o < 200).count();
        assert!(
            old_kept < 200 / 2,
            "the follower compacted its own first 200 offsets ({old_kept} left)"
        );
        // A consumer reads the compacted log through the leader, in order, each value at the
        // offset it was acknowledged at.
        read_from_earliest(&leader_addr, COMPACTED, end, &history);
        history
            .check(CheckOptions {
                require_all_acknowledged_read: false,
                replicas_identical: false,
                max_position_resets: Some(0),
                require_reads_written: true,
            })
            .assert_ok();
    });
}
