//! What PROTOCOL.md promises a client, checked against the real node: the cases a client
//! written from the document alone tripped on (issue 11). Each test's doc says what was wrong.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vltava_messages::batch::split_batches;
use vltava_messages::limits::FETCH_RECORDS_BYTES_MAX;
use vltava_messages::protocol::{
    Acks, AlterTopicConfigsRequest, CreateTopicsRequest, DescribeTopicsRequest, ErrorCode,
    FetchPartition, FetchRequest, FetchTopic, FindCoordinatorRequest, HandshakeRequest,
    MetadataRequest, NewTopic, ProducePartition, ProduceRequest, ProduceTopic, RESPONSE_BIT,
    Request, RequestKind, Response, TopicConfigChanges,
};
use vltava_messages::{BatchBuilder, Compression, Offset, PartitionId};
use vltava_tests::{TestNode, eventually};

use crate::bad_input::{Raw, failed_code, good_batch, produce};

fn hello() -> Request {
    Request::Handshake(HandshakeRequest {
        client_id: "spec".into(),
        client_software_name: "test".into(),
        client_software_version: "0".into(),
    })
}

/// Over the connection limit a client used to see a bare close (EOF or a reset), though
/// PROTOCOL.md documents `TooManyConnections`. A node allowing one connection answers a
/// second one's handshake with the error, under the handshake's correlation id, and closes
/// it; once the first connection ends, a new one is served again.
#[test]
fn a_connection_past_the_limit_gets_too_many_connections_then_a_close() {
    let node = TestNode::start_with(&["--connections-max", "1"]);
    let first = Raw::handshaken(&node);

    let mut second = Raw::open(&node);
    second.send_bytes(&hello().encode(77).unwrap());
    let (header, answer) = second
        .read_frame()
        .expect("an answer to the handshake, not a bare close");
    assert_eq!(header.correlation_id, 77);
    assert_eq!(header.kind, RequestKind::Handshake.code() | RESPONSE_BIT);
    let Response::Failed(failed) = answer else {
        panic!("expected a failure, got {answer:?}");
    };
    assert_eq!(
        failed.error.error_code(),
        Some(ErrorCode::TooManyConnections)
    );
    assert!(failed.error.retriable);
    assert!(second.closed(), "the node closes the refused connection");

    drop(first);
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut again = Raw::open(&node);
            matches!(again.call(&hello()), Some(Response::Handshake(_)))
        }),
        "a connection is served again once the first has closed:\n{}",
        node.log_text()
    );
}

/// Creates a one-partition topic with `configs` and checks it was created.
fn create_topic_with(raw: &mut Raw, name: &str, configs: &[(&str, &str)]) {
    let created = raw.call(&Request::CreateTopics(CreateTopicsRequest {
        topics: vec![NewTopic {
            name: name.into(),
            partitions: Some(1),
            replication_factor: Some(1),
            configs: configs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }],
        timeout_ms: 10_000,
        validate_only: false,
    }));
    assert!(
        matches!(created, Some(Response::CreateTopics(ref c)) if c.topics[0].error.is_none()),
        "{created:?}"
    );
}

/// DescribeTopics configs are documented "sorted by name", each with its effective value.
/// They came in declaration order, and `delete.retention.ms` and
/// `min.cleanable.dirty.ratio` read "" when left at their defaults.
#[test]
fn described_configs_are_sorted_by_name_with_effective_values() {
    let node = TestNode::start();
    let mut raw = Raw::handshaken(&node);
    create_topic_with(&mut raw, "described", &[("retention.ms", "3600000")]);
    let answer = raw.call(&Request::DescribeTopics(DescribeTopicsRequest {
        topics: vec!["described".into()],
    }));
    let Some(Response::DescribeTopics(described)) = answer else {
        panic!("{answer:?}");
    };
    let configs = &described.topics[0].configs;
    let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    let entry = |name: &str| {
        configs
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} is described: {configs:?}"))
    };
    for c in configs {
        assert!(!c.value.is_empty(), "{c:?}");
    }
    assert_eq!(entry("delete.retention.ms").value, "86400000");
    assert!(entry("delete.retention.ms").is_default);
    assert_eq!(entry("min.cleanable.dirty.ratio").value, "0.5");
    assert!(entry("min.cleanable.dirty.ratio").is_default);
    assert_eq!(entry("retention.ms").value, "3600000");
    assert!(!entry("retention.ms").is_default);
}

/// The config entries of `topic`, by name.
fn described_configs(raw: &mut Raw, topic: &str) -> BTreeMap<String, (String, bool)> {
    let answer = raw.call(&Request::DescribeTopics(DescribeTopicsRequest {
        topics: vec![topic.into()],
    }));
    let Some(Response::DescribeTopics(described)) = answer else {
        panic!("{answer:?}");
    };
    described.topics[0]
        .configs
        .iter()
        .map(|c| (c.name.clone(), (c.value.clone(), c.is_default)))
        .collect()
}

/// AlterTopicConfigs with a key in both `set` and `delete` is documented `InvalidConfig`; it
/// was applied instead (the set won). It is refused for that topic and nothing of the entry
/// is applied, while another topic's entry in the same request is.
#[test]
fn a_config_key_both_set_and_deleted_is_refused_and_nothing_is_applied() {
    let node = TestNode::start();
    let mut raw = Raw::handshaken(&node);
    create_topic_with(&mut raw, "both", &[]);
    create_topic_with(&mut raw, "other", &[]);
    let before = described_configs(&mut raw, "both");
    let answer = raw.call(&Request::AlterTopicConfigs(AlterTopicConfigsRequest {
        topics: vec![
            TopicConfigChanges {
                name: "both".into(),
                set: BTreeMap::from([
                    ("retention.ms".to_owned(), "1000".to_owned()),
                    ("segment.ms".to_owned(), "2000".to_owned()),
                ]),
                delete: vec!["retention.ms".into()],
            },
            TopicConfigChanges {
                name: "other".into(),
                set: BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]),
                delete: Vec::new(),
            },
        ],
        validate_only: false,
    }));
    let Some(Response::AlterTopicConfigs(altered)) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(
        altered.topics[0]
            .error
            .as_ref()
            .and_then(|e| e.error_code()),
        Some(ErrorCode::InvalidConfig),
        "{altered:?}"
    );
    assert!(altered.topics[1].error.is_none(), "{altered:?}");
    assert_eq!(described_configs(&mut raw, "both"), before);
    assert_eq!(
        described_configs(&mut raw, "other")["retention.ms"],
        ("1000".to_owned(), false)
    );
}

/// A fetch of partition 0 of `topic` at `offset`.
fn fetch_at(topic: &str, offset: u64, min_bytes: u32, max_wait_ms: u32) -> Request {
    Request::Fetch(FetchRequest {
        max_wait_ms,
        min_bytes,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            name: topic.into(),
            partitions: vec![FetchPartition {
                partition: PartitionId(0),
                fetch_offset: Offset(offset),
                partition_max_bytes: 1 << 20,
                current_leader_epoch: None,
            }],
        }],
    })
}

/// A Fetch with `min_bytes` 0 is documented to answer at once; at the high watermark it
/// waited the whole `max_wait_ms`. Asked to wait up to 20 s, it must answer well before.
#[test]
fn a_fetch_with_min_bytes_zero_at_the_high_watermark_answers_at_once() {
    const MAX_WAIT_MS: u32 = 20_000;
    let node = TestNode::start();
    let mut raw = Raw::handshaken(&node);
    create_topic_with(&mut raw, "zero", &[]);
    let started = Instant::now();
    let answer = raw.call(&fetch_at("zero", 0, 0, MAX_WAIT_MS));
    let elapsed = started.elapsed();
    let Some(Response::Fetch(fetched)) = answer else {
        panic!("{answer:?}");
    };
    let partition = &fetched.topics[0].partitions[0];
    assert!(partition.error.is_none(), "{partition:?}");
    assert_eq!(partition.high_watermark, Some(Offset(0)));
    assert!(partition.records.is_empty());
    assert!(
        elapsed < Duration::from_millis(u64::from(MAX_WAIT_MS) / 2),
        "answered after {elapsed:?}"
    );
}

/// `__consumer_offsets` was reported `internal: false` (so a pattern subscription such as
/// `.*` could match it). Metadata and DescribeTopics report internal topics as internal and
/// others not; a client cannot create a `__` topic or write to the internal one.
#[test]
fn internal_topics_are_reported_internal_and_refused_to_clients() {
    let node = TestNode::start();
    let mut raw = Raw::handshaken(&node);
    create_topic_with(&mut raw, "plain", &[]);
    let names = vec!["__consumer_offsets".to_owned(), "plain".to_owned()];
    let answer = raw.call(&Request::Metadata(MetadataRequest {
        topics: Some(names.clone()),
    }));
    let Some(Response::Metadata(metadata)) = answer else {
        panic!("{answer:?}");
    };
    let internal: Vec<(bool, bool)> = metadata
        .topics
        .iter()
        .map(|t| (t.error.is_none(), t.internal))
        .collect();
    assert_eq!(internal, [(true, true), (true, false)]);
    let answer = raw.call(&Request::DescribeTopics(DescribeTopicsRequest {
        topics: names,
    }));
    let Some(Response::DescribeTopics(described)) = answer else {
        panic!("{answer:?}");
    };
    let internal: Vec<(bool, bool)> = described
        .topics
        .iter()
        .map(|t| (t.error.is_none(), t.internal))
        .collect();
    assert_eq!(internal, [(true, true), (true, false)]);

    let answer = raw.call(&Request::CreateTopics(CreateTopicsRequest {
        topics: vec![NewTopic {
            name: "__mine".into(),
            partitions: Some(1),
            replication_factor: Some(1),
            configs: BTreeMap::new(),
        }],
        timeout_ms: 10_000,
        validate_only: false,
    }));
    let Some(Response::CreateTopics(created)) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(
        created.topics[0]
            .error
            .as_ref()
            .and_then(|e| e.error_code()),
        Some(ErrorCode::InvalidTopicName)
    );
    let answer = raw.call(&produce("__consumer_offsets", 0, good_batch("forged")));
    let Some(Response::Produce(produced)) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(
        produced.topics[0].partitions[0]
            .error
            .as_ref()
            .and_then(|e| e.error_code()),
        Some(ErrorCode::InvalidTopicName)
    );
}

/// PROTOCOL.md says the node caps a fetch answer's records at 6 MiB whatever `max_bytes`
/// asks; the cap was not applied, so a fetch with `max_bytes` at its largest over 9 MiB of
/// stored batches built an answer larger than a frame, and the connection was closed instead
/// of answered. The answer now holds whole batches, at most 6 MiB of them.
#[test]
fn a_fetch_answer_holds_at_most_six_mib_of_records_whatever_max_bytes_asks() {
    const BATCH_RECORDS: usize = 3;
    const VALUE_BYTES: usize = 1 << 20;
    let node = TestNode::start();
    let mut raw = Raw::handshaken(&node);
    create_topic_with(&mut raw, "large", &[]);
    let value = vec![b'v'; VALUE_BYTES];
    for _ in 0..3 {
        let mut batch = BatchBuilder::new(Compression::None);
        for _ in 0..BATCH_RECORDS {
            batch.push(None, Some(&value), &[], 1);
        }
        let answer = raw.call(&produce("large", 0, batch.build()));
        let Some(Response::Produce(produced)) = answer else {
            panic!("{answer:?}");
        };
        assert!(
            produced.topics[0].partitions[0].error.is_none(),
            "{produced:?}"
        );
    }
    let mut fetch = fetch_at("large", 0, 1, 0);
    if let Request::Fetch(f) = &mut fetch {
        f.max_bytes = u32::MAX;
        f.topics[0].partitions[0].partition_max_bytes = u32::MAX;
    }
    let answer = raw.call(&fetch);
    let Some(Response::Fetch(fetched)) = answer else {
        panic!("expected a fetch answer, got {answer:?}");
    };
    let records = &fetched.topics[0].partitions[0].records;
    assert!(
        records.len() <= FETCH_RECORDS_BYTES_MAX as usize,
        "{} bytes",
        records.len()
    );
    let batches: Vec<_> = split_batches(records).collect::<Result<_, _>>().unwrap();
    assert!(!batches.is_empty());
    assert_eq!(
        batches.iter().map(|b| b.bytes.len()).sum::<usize>(),
        records.len(),
        "whole batches only"
    );
}

/// An empty or over-long group id is documented `InvalidGroupId` (103), which was never sent:
/// such ids got `InvalidRequest`. The connection stays usable after the refusal.
#[test]
fn a_bad_group_id_gets_invalid_group_id() {
    let node = TestNode::start();
    let mut raw = Raw::handshaken(&node);
    for group_id in [String::new(), "g".repeat(256)] {
        let answer = raw.call(&Request::FindCoordinator(FindCoordinatorRequest {
            group_id,
        }));
        assert_eq!(failed_code(answer), ErrorCode::InvalidGroupId);
    }
    let answer = raw.call(&Request::FindCoordinator(FindCoordinatorRequest {
        group_id: "g".repeat(255),
    }));
    assert!(
        matches!(answer, Some(Response::FindCoordinator(_))),
        "{answer:?}"
    );
}

/// A record batch above 4 MiB fails its partition with `BatchTooLarge` (PROTOCOL.md section
/// 9), not the request, and not as `CorruptBatch`.
#[test]
fn a_batch_above_four_mib_fails_its_partition_with_batch_too_large() {
    let node = TestNode::start();
    let mut raw = Raw::handshaken(&node);
    create_topic_with(&mut raw, "big", &[]);
    let value = vec![b'v'; 1 << 20];
    let mut batch = BatchBuilder::new(Compression::None);
    for _ in 0..5 {
        batch.push(None, Some(&value), &[], 1);
    }
    let answer = raw.call(&produce("big", 0, batch.build()));
    let Some(Response::Produce(produced)) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(
        produced.topics[0].partitions[0]
            .error
            .as_ref()
            .and_then(|e| e.error_code()),
        Some(ErrorCode::BatchTooLarge)
    );
}

/// PROTOCOL.md section 4: a second Handshake on a connection is accepted and answered like
/// the first.
#[test]
fn a_second_handshake_is_answered_like_the_first() {
    let node = TestNode::start();
    let mut raw = Raw::handshaken(&node);
    let answer = raw.call(&hello());
    assert!(matches!(answer, Some(Response::Handshake(_))), "{answer:?}");
    let answer = raw.call(&Request::Metadata(MetadataRequest::default()));
    assert!(matches!(answer, Some(Response::Metadata(_))), "{answer:?}");
}

/// PROTOCOL.md section 4: a first Handshake that fails (a version the node does not speak, a
/// field above its limit) is answered with its error and leaves the connection open and not
/// yet handshaken: a good Handshake then succeeds, while any other request would get
/// `HandshakeRequired` and a close.
#[test]
fn a_failed_first_handshake_leaves_the_connection_open_and_not_handshaken() {
    let node = TestNode::start();
    let mut raw = Raw::open(&node);
    let mut frame = hello().encode(1).unwrap();
    frame[6..8].copy_from_slice(&9u16.to_be_bytes());
    raw.send_bytes(&frame);
    assert_eq!(failed_code(raw.read()), ErrorCode::UnsupportedVersion);
    let long = Request::Handshake(HandshakeRequest {
        client_id: "c".repeat(256),
        client_software_name: "test".into(),
        client_software_version: "0".into(),
    });
    assert_eq!(failed_code(raw.call(&long)), ErrorCode::InvalidRequest);
    let answer = raw.call(&hello());
    assert!(matches!(answer, Some(Response::Handshake(_))), "{answer:?}");

    let mut refused = Raw::open(&node);
    assert_eq!(failed_code(refused.call(&long)), ErrorCode::InvalidRequest);
    assert_eq!(
        failed_code(refused.call(&Request::Metadata(MetadataRequest::default()))),
        ErrorCode::HandshakeRequired
    );
    assert!(refused.closed());
}

/// PROTOCOL.md section 6.7: the same partition named twice in one Produce is appended twice,
/// in request order, and answered twice.
#[test]
fn the_same_partition_twice_in_one_produce_is_appended_twice() {
    let node = TestNode::start();
    let mut raw = Raw::handshaken(&node);
    create_topic_with(&mut raw, "twice", &[]);
    let entry = |value: &str| ProducePartition {
        partition: PartitionId(0),
        current_leader_epoch: None,
        records: good_batch(value),
    };
    let answer = raw.call(&Request::Produce(ProduceRequest {
        acks: Acks::All,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: "twice".into(),
            partitions: vec![entry("first"), entry("second")],
        }],
    }));
    let Some(Response::Produce(produced)) = answer else {
        panic!("{answer:?}");
    };
    let offsets: Vec<Option<Offset>> = produced.topics[0]
        .partitions
        .iter()
        .map(|p| p.base_offset)
        .collect();
    assert_eq!(offsets, [Some(Offset(0)), Some(Offset(1))]);
    let answer = raw.call(&fetch_at("twice", 0, 1, 0));
    let Some(Response::Fetch(fetched)) = answer else {
        panic!("{answer:?}");
    };
    let values: Vec<Vec<u8>> = split_batches(&fetched.topics[0].partitions[0].records)
        .flat_map(|b| b.unwrap().records().unwrap())
        .map(|r| r.value.unwrap())
        .collect();
    assert_eq!(values, [b"first".to_vec(), b"second".to_vec()]);
}

/// PROTOCOL.md section 1: past its in-flight limit a connection is not refused; the node
/// stops reading it until answers are written (back-pressure). A client that pipelines ten
/// times the limit gets every answer, in order, and no error.
#[test]
fn pipelining_past_the_in_flight_limit_is_back_pressure_not_an_error() {
    const INFLIGHT_REQUESTS_MAX: u64 = 2;
    const REQUESTS: u64 = 10 * INFLIGHT_REQUESTS_MAX;
    let node = TestNode::start_with(&["--inflight-requests-max", "2"]);
    let mut raw = Raw::handshaken(&node);
    let mut frames = Vec::new();
    for correlation_id in 100..100 + REQUESTS {
        let request = Request::Metadata(MetadataRequest::default());
        frames.extend(request.encode(correlation_id).unwrap());
    }
    raw.send_bytes(&frames);
    for correlation_id in 100..100 + REQUESTS {
        let (header, answer) = raw.read_frame().expect("an answer");
        assert_eq!(header.correlation_id, correlation_id);
        assert!(matches!(answer, Response::Metadata(_)), "{answer:?}");
    }
}
