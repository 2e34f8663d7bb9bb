//! The offsets reader's routing, batching, bounds and checks, through `OffsetsReader::read`
//! on paused time, with a scripted `RemoteOffsets` in place of the peer links; and the answer
//! a node gives for partitions it does not lead.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::time::Instant;
use vltava_messages::peer::PartitionOffsetsAnswer;

use super::*;
use crate::metadata::{PartitionImage, TopicImage};

/// What a scripted leader does with a request.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// Answers every partition with log start 1, high watermark `10 + p`, log end `20 + p`.
    Answer,
    /// Never answers.
    Hang,
    /// Answers with the high watermark above the log end.
    Disordered,
    /// Answers every partition `NotLeader`.
    NotLeader,
    /// Fails the call as an unreachable link would.
    Unreachable,
}

/// A `RemoteOffsets` whose nodes follow scripts, and which records every call.
#[derive(Debug, Default)]
struct Scripted {
    scripts: BTreeMap<u32, Script>,
    calls: Mutex<Vec<(u32, Vec<PartitionOffsetsQuery>)>>,
}

impl Scripted {
    fn calls(&self) -> Vec<(u32, Vec<PartitionOffsetsQuery>)> {
        self.calls.lock().unwrap().clone()
    }
}

impl RemoteOffsets for Scripted {
    fn partition_offsets(
        &self,
        leader: NodeId,
        request: PartitionOffsetsRequest,
        _timeout: Duration,
    ) -> RemoteOffsetsFuture<'_> {
        self.calls
            .lock()
            .unwrap()
            .push((leader.0, request.partitions.clone()));
        let script = self.scripts.get(&leader.0).copied();
        Box::pin(async move {
            let answer = |q: &PartitionOffsetsQuery, high: u64, end: u64| PartitionOffsetsAnswer {
                topic: q.topic.clone(),
                partition: q.partition,
                error: None,
                log_start_offset: Some(Offset(1)),
                high_watermark: Some(Offset(high)),
                log_end_offset: Some(Offset(end)),
                offset_for_timestamp: q.offset_for_timestamp_ms.map(|_| Offset(7)),
                timestamp_of_offset_ms: None,
            };
            let partitions = match script.expect("a scripted node") {
                Script::Answer => request
                    .partitions
                    .iter()
                    .map(|q| {
                        let p = u64::from(q.partition.0);
                        answer(q, 10 + p, 20 + p)
                    })
                    .collect(),
                Script::Hang => std::future::pending::<Vec<PartitionOffsetsAnswer>>().await,
                Script::Disordered => request
                    .partitions
                    .iter()
                    .map(|q| answer(q, 30, 20))
                    .collect(),
                Script::NotLeader => request
                    .partitions
                    .iter()
                    .map(|q| {
                        PartitionOffsetsAnswer::failed(
                            q.topic.clone(),
                            q.partition,
                            ResponseError::not_leader(Some(NodeId(9)), "not here"),
                        )
                    })
                    .collect(),
                Script::Unreachable => {
                    return Err(RemoteOffsetsError::Unreachable {
                        node: leader,
                        reason: "the link is backing off".into(),
                    });
                }
            };
            Ok(PartitionOffsetsResponse { partitions })
        })
    }
}

/// An image with topic `t` whose partition `p` is led by `leaders[p]`.
fn image(leaders: &[Option<u32>]) -> watch::Receiver<Arc<MetadataImage>> {
    let mut image = MetadataImage::default();
    image.topics.insert(
        "t".into(),
        TopicImage {
            topic_id: "id".into(),
            replication_factor: 1,
            configs: BTreeMap::new(),
            partitions: leaders
                .iter()
                .map(|leader| PartitionImage {
                    leader: *leader,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    replicas: leader.iter().copied().collect(),
                    isr: leader.iter().copied().collect(),
                    target_replicas: None,
                })
                .collect(),
        },
    );
    watch::channel(Arc::new(image)).1
}

fn query(topic: &str, partition: u32) -> PartitionOffsetsQuery {
    PartitionOffsetsQuery {
        topic: topic.into(),
        partition: PartitionId(partition),
        offset_for_timestamp_ms: None,
        timestamp_of_offset: None,
    }
}

fn reader(leaders: &[Option<u32>], remote: &Arc<Scripted>) -> OffsetsReader {
    OffsetsReader::new(
        1,
        PartitionRegistry::default(),
        image(leaders),
        Some(Arc::clone(remote) as Arc<dyn RemoteOffsets>),
    )
}

/// Partitions led by other nodes are read from them, one request per leader holding all its
/// partitions; each partition's answer lands at its own place, whatever order leaders answer.
#[tokio::test(start_paused = true)]
async fn remote_partitions_are_read_from_their_leaders_one_request_per_leader() {
    let remote = Arc::new(Scripted {
        scripts: BTreeMap::from([(2, Script::Answer), (3, Script::Answer)]),
        ..Scripted::default()
    });
    let reader = reader(&[Some(2), Some(3), Some(2), Some(3), Some(2)], &remote);
    let queries: Vec<_> = (0..5).map(|p| query("t", p)).collect();
    let read = reader.read(&queries).await;
    for (p, result) in read.iter().enumerate() {
        let p = p as u64;
        assert_eq!(
            result,
            &Ok(PartitionOffsets {
                log_start_offset: Offset(1),
                high_watermark: Offset(10 + p),
                log_end_offset: Offset(20 + p),
                offset_for_timestamp: None,
                timestamp_of_offset_ms: None,
            }),
            "partition {p}"
        );
    }
    let mut calls: Vec<(u32, Vec<u32>)> = remote
        .calls()
        .into_iter()
        .map(|(node, queries)| (node, queries.iter().map(|q| q.partition.0).collect()))
        .collect();
    calls.sort();
    assert_eq!(calls, vec![(2, vec![0, 2, 4]), (3, vec![1, 3])]);
}

/// A leader that never answers costs its partitions `RequestTimedOut` after
/// `REMOTE_OFFSETS_TIMEOUT`, and nothing more: two silent leaders are waited for at the same
/// time, and the answering leader's partitions are read all the same.
#[tokio::test(start_paused = true)]
async fn silent_leaders_are_waited_for_in_parallel_and_at_most_the_timeout() {
    let remote = Arc::new(Scripted {
        scripts: BTreeMap::from([(2, Script::Answer), (3, Script::Hang), (4, Script::Hang)]),
        ..Scripted::default()
    });
    let reader = reader(&[Some(2), Some(3), Some(4)], &remote);
    let queries: Vec<_> = (0..3).map(|p| query("t", p)).collect();
    let started = Instant::now();
    let read = reader.read(&queries).await;
    let waited = started.elapsed();
    assert!(
        waited >= REMOTE_OFFSETS_TIMEOUT && waited < REMOTE_OFFSETS_TIMEOUT * 2,
        "waited {waited:?}"
    );
    assert_eq!(read[0].as_ref().map(|o| o.high_watermark), Ok(Offset(10)));
    for result in &read[1..] {
        let (code, _) = result.as_ref().expect_err("no answer, no offsets");
        assert_eq!(*code, ErrorCode::RequestTimedOut);
        assert!(code.is_retriable());
    }
}

/// Whatever cannot be vouched for is refused per partition, never used: an answer whose
/// offsets are out of order, a leader that does not lead the partition any more, an
/// unreachable leader, a partition without a leader, one this node leads but has not opened,
/// an unknown topic and an unknown partition.
#[tokio::test(start_paused = true)]
async fn offsets_that_cannot_be_vouched_for_are_refused_per_partition() {
    let remote = Arc::new(Scripted {
        scripts: BTreeMap::from([
            (2, Script::Disordered),
            (3, Script::NotLeader),
            (4, Script::Unreachable),
        ]),
        ..Scripted::default()
    });
    let reader = reader(&[Some(2), Some(3), Some(4), None, Some(1)], &remote);
    let mut queries: Vec<_> = (0..5).map(|p| query("t", p)).collect();
    queries.push(query("other", 0));
    queries.push(query("t", 5));
    let codes: Vec<ErrorCode> = reader
        .read(&queries)
        .await
        .into_iter()
        .map(|r| r.expect_err("refused").0)
        .collect();
    assert_eq!(
        codes,
        vec![
            ErrorCode::LeaderNotAvailable,
            ErrorCode::NotLeader,
            ErrorCode::LeaderNotAvailable,
            ErrorCode::LeaderNotAvailable,
            ErrorCode::LeaderNotAvailable,
            ErrorCode::UnknownTopic,
            ErrorCode::UnknownPartition,
        ]
    );
    assert!(codes[..5].iter().all(|c| c.is_retriable()));
    // Only the three remote leaders were asked.
    assert_eq!(remote.calls().len(), 3);
}

/// A leader of more partitions than one request may name is asked in several requests, none
/// over the limit, and every partition is answered.
#[tokio::test(start_paused = true)]
async fn a_leader_of_many_partitions_is_asked_in_requests_within_the_limit() {
    let count = PARTITION_OFFSETS_PARTITIONS_MAX + 5;
    let remote = Arc::new(Scripted {
        scripts: BTreeMap::from([(2, Script::Answer)]),
        ..Scripted::default()
    });
    let reader = reader(&vec![Some(2); count as usize], &remote);
    let queries: Vec<_> = (0..count).map(|p| query("t", p)).collect();
    let read = reader.read(&queries).await;
    assert!(read.iter().all(Result::is_ok));
    let sizes: Vec<usize> = remote.calls().iter().map(|(_, q)| q.len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), count as usize);
    assert!(
        sizes
            .iter()
            .all(|&n| n <= PARTITION_OFFSETS_PARTITIONS_MAX as usize),
        "{sizes:?}"
    );
}

/// On a single node (no `RemoteOffsets`) a partition led elsewhere is refused at once, as
/// before the cluster: nothing waits.
#[tokio::test(start_paused = true)]
async fn without_remote_offsets_partitions_led_elsewhere_are_refused_at_once() {
    let reader = OffsetsReader::new(1, PartitionRegistry::default(), image(&[Some(2)]), None);
    let started = Instant::now();
    let read = reader.read(&[query("t", 0)]).await;
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(
        read[0].as_ref().map_err(|r| r.0),
        Err(ErrorCode::LeaderNotAvailable)
    );
}

/// A node asked for partitions it does not have answers each with the reason, naming the
/// leader it knows for `NotLeader`.
#[tokio::test]
async fn a_node_answers_partitions_it_does_not_have_with_the_reason() {
    let image = image(&[Some(2), Some(1)]);
    let answer = serve_local(
        1,
        &PartitionRegistry::default(),
        &image,
        PartitionOffsetsRequest {
            partitions: vec![query("t", 0), query("t", 1), query("t", 2), query("x", 0)],
        },
    )
    .await;
    let errors: Vec<(u32, Option<ErrorCode>, Option<NodeId>)> = answer
        .partitions
        .iter()
        .map(|a| {
            assert_eq!(a.high_watermark, None, "no offsets with an error");
            let error = a.error.as_ref().expect("an error");
            (a.partition.0, error.error_code(), error.leader)
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (0, Some(ErrorCode::NotLeader), Some(NodeId(2))),
            (1, Some(ErrorCode::LeaderNotAvailable), None),
            (2, Some(ErrorCode::UnknownPartition), None),
            (0, Some(ErrorCode::UnknownTopic), None),
        ]
    );
}

/// PROTOCOL.md's table of peer bounds gives the PartitionOffsets limit and timeout.
#[test]
fn protocol_md_gives_the_partition_offsets_bounds() {
    const PROTOCOL_MD: &str = include_str!("../../../../PROTOCOL.md");
    let row = |bound: &str| -> String {
        PROTOCOL_MD
            .lines()
            .find(|line| line.starts_with(&format!("| {bound} |")))
            .unwrap_or_else(|| panic!("a row for {bound}"))
            .split(" | ")
            .nth(1)
            .expect("a value")
            .to_owned()
    };
    assert_eq!(
        row("Partitions per PartitionOffsets request"),
        PARTITION_OFFSETS_PARTITIONS_MAX.to_string()
    );
    assert_eq!(
        row("Wait for a PartitionOffsets answer"),
        format!("{} s", REMOTE_OFFSETS_TIMEOUT.as_secs())
    );
}
