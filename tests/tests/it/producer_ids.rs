//! Producer ids and epochs against a real node (issue 11): the documented ranges, a bump that
//! fences the old epoch on every partition at once and across a restart, epoch exhaustion,
//! ids the node never issued, a first batch that does not start at sequence 0, and the Rust
//! producer starting again at sequence 0 when a partition lost its state. Hand-made requests
//! go through the client's raw `Connection`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use vltava_client::connection::Connection;
use vltava_client::{
    Admin, ClientError, Cluster, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, SeekTo,
};
use vltava_messages::batch::{CRC_POSITION, PRODUCER_EPOCH_POSITION, compute_crc};
use vltava_messages::limits::{PRODUCER_EPOCH_MAX, PRODUCER_ID_MAX};
use vltava_messages::metadata_records::MetadataRecord;
use vltava_messages::protocol::{
    Acks, ErrorCode, InitProducerIdRequest, ProducePartition, ProduceRequest, ProduceTopic,
};
use vltava_messages::{
    BatchBuilder, Compression, PartitionId, ProducerEpoch, ProducerId, Sequence,
};
use vltava_tests::TestNode;

use super::runtime;

/// How long one hand-made request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

async fn connect(node: &TestNode) -> Connection {
    Connection::connect(&node.addr, "producer-ids-test")
        .await
        .unwrap()
}

async fn create_topic(node: &TestNode, name: &str, partitions: u32) {
    let cluster = Cluster::connect(&node.bootstrap(), "producer-ids-test")
        .await
        .unwrap();
    Admin::new(cluster)
        .create_topic(name, partitions, 1, BTreeMap::new())
        .await
        .unwrap();
}

/// InitProducerId: a new id (`current` absent) or a bump; a failure as its error code.
async fn init(conn: &Connection, current: Option<(u64, u16)>) -> Result<(u64, u16), ErrorCode> {
    let request = InitProducerIdRequest {
        producer_id: current.map(|(id, _)| ProducerId(id)),
        producer_epoch: current.map(|(_, epoch)| ProducerEpoch(epoch)),
    };
    match conn.send(&request, REQUEST_TIMEOUT).await {
        Ok(answer) => Ok((answer.producer_id.0, answer.producer_epoch.0)),
        Err(e) => Err(code(&e)),
    }
}

fn code(error: &ClientError) -> ErrorCode {
    error
        .code()
        .unwrap_or_else(|| panic!("not a server error: {error}"))
}

/// One idempotent batch of one record.
fn batch(id: u64, epoch: u16, sequence: u32, value: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None).producer(
        ProducerId(id),
        ProducerEpoch(epoch),
        Sequence(sequence),
    );
    b.push(None, Some(value.as_bytes()), &[], 1_000);
    b.build()
}

/// Produces `records` to one partition with acks=all: the base offset, or the error code.
async fn produce(
    conn: &Connection,
    topic: &str,
    partition: u32,
    records: Vec<u8>,
) -> Result<u64, ErrorCode> {
    let request = ProduceRequest {
        acks: Acks::All,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: topic.into(),
            partitions: vec![ProducePartition {
                partition: PartitionId(partition),
                current_leader_epoch: None,
                records,
            }],
        }],
    };
    let answer = conn.send(&request, REQUEST_TIMEOUT).await.unwrap();
    let result = &answer.topics[0].partitions[0];
    match &result.error {
        Some(error) => Err(error.error_code().expect("a known code")),
        None => Ok(result.base_offset.expect("an offset on success").0),
    }
}

/// Issue 11: after a bump the old epoch was still accepted on every partition the new epoch
/// had not written to. A bump now fences it on all of them at once; a retry of a batch it
/// already wrote is still answered with its offset, as nothing is written again.
#[test]
fn a_bump_fences_the_old_epoch_on_every_partition_at_once() {
    let node = TestNode::start();
    runtime().block_on(async {
        create_topic(&node, "fenced", 2).await;
        let conn = connect(&node).await;
        let (id, epoch) = init(&conn, None).await.unwrap();
        assert_eq!(epoch, 0);
        for partition in [0, 1] {
            assert_eq!(
                produce(&conn, "fenced", partition, batch(id, 0, 0, "a")).await,
                Ok(0)
            );
        }
        assert_eq!(init(&conn, Some((id, 0))).await, Ok((id, 1)));
        assert_eq!(
            produce(&conn, "fenced", 0, batch(id, 1, 0, "b")).await,
            Ok(1),
            "the new epoch starts at sequence 0"
        );
        // Partition 1 never saw epoch 1.
        assert_eq!(
            produce(&conn, "fenced", 1, batch(id, 0, 1, "zombie")).await,
            Err(ErrorCode::ProducerFenced)
        );
        assert_eq!(
            produce(&conn, "fenced", 0, batch(id, 0, 1, "zombie")).await,
            Err(ErrorCode::ProducerFenced)
        );
        assert_eq!(
            produce(&conn, "fenced", 1, batch(id, 0, 0, "a")).await,
            Ok(0),
            "a retry of a batch already written is answered"
        );
        // A bump must name the current epoch: the fenced incarnation cannot take the id back.
        assert_eq!(
            init(&conn, Some((id, 0))).await,
            Err(ErrorCode::ProducerFenced)
        );
        assert_eq!(
            produce(&conn, "fenced", 1, batch(id, 1, 0, "c")).await,
            Ok(1)
        );
    });
}

/// Issue 11: fencing must survive the node: the bump is a record of the metadata log, fsynced
/// before the answer, so even a SIGKILL right after it keeps the old epoch fenced.
#[test]
fn the_fencing_survives_a_restart() {
    let mut node = TestNode::start();
    let rt = runtime();
    let id = rt.block_on(async {
        create_topic(&node, "kept", 2).await;
        let conn = connect(&node).await;
        let (id, _) = init(&conn, None).await.unwrap();
        for partition in [0, 1] {
            assert_eq!(
                produce(&conn, "kept", partition, batch(id, 0, 0, "a")).await,
                Ok(0)
            );
        }
        assert_eq!(init(&conn, Some((id, 0))).await, Ok((id, 1)));
        id
    });
    node.kill();
    node.restart();
    rt.block_on(async {
        let conn = connect(&node).await;
        assert_eq!(
            produce(&conn, "kept", 1, batch(id, 0, 1, "zombie")).await,
            Err(ErrorCode::ProducerFenced)
        );
        assert_eq!(produce(&conn, "kept", 1, batch(id, 1, 0, "b")).await, Ok(1));
        assert_eq!(
            init(&conn, Some((id, 0))).await,
            Err(ErrorCode::ProducerFenced)
        );
        assert_eq!(init(&conn, Some((id, 1))).await, Ok((id, 2)));
        let (next, epoch) = init(&conn, None).await.unwrap();
        assert!(next > id, "no id is handed out twice: {next} after {id}");
        assert_eq!(epoch, 0);
    });
}

/// Appends records to a stopped node's metadata log, in the record file's format (`length |
/// crc32c | body`, big-endian), to reach a state that takes thousands of requests otherwise.
fn append_metadata(node: &TestNode, records: &[MetadataRecord]) {
    use std::io::Write;
    let path = node.data_dir.join("__metadata").join("metadata.log");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    for record in records {
        let body = record.encode();
        file.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        file.write_all(&crc32c::crc32c(&body).to_be_bytes())
            .unwrap();
        file.write_all(&body).unwrap();
    }
    file.sync_all().unwrap();
}

/// Before producer ids moved into the metadata log, a node kept the end of its reserved block
/// in `__metadata/producer-id-block` (a u64 and its CRC-32C, big-endian). A node that finds
/// the file counts every id below it as issued and hands out none of them again.
#[test]
fn ids_reserved_in_the_old_block_file_are_not_handed_out_again() {
    let mut node = TestNode::start();
    assert_eq!(node.terminate(), Some(0));
    let end: u64 = 5_000;
    let mut legacy = end.to_be_bytes().to_vec();
    legacy.extend_from_slice(&crc32c::crc32c(&end.to_be_bytes()).to_be_bytes());
    std::fs::write(
        node.data_dir.join("__metadata").join("producer-id-block"),
        legacy,
    )
    .unwrap();
    node.restart();
    runtime().block_on(async {
        let conn = connect(&node).await;
        assert_eq!(init(&conn, None).await, Ok((end, 0)));
        assert_eq!(
            init(&conn, Some((end - 1, 0))).await,
            Ok((end - 1, 1)),
            "an id of the old block counts as issued"
        );
    });
}

/// Issue 11: a bump at epoch 32767 answered 32768, which a batch header holds as -32768, and
/// the node then took batches at both epochs. Epochs end at 32767: the bump after it gives a
/// new id at epoch 0 and retires the old id, whose batches are then fenced.
#[test]
fn epoch_exhaustion_moves_the_producer_to_a_new_id() {
    let mut node = TestNode::start();
    let rt = runtime();
    let id = rt.block_on(async {
        create_topic(&node, "exhausted", 1).await;
        let conn = connect(&node).await;
        let (id, _) = init(&conn, None).await.unwrap();
        assert_eq!(
            produce(&conn, "exhausted", 0, batch(id, 0, 0, "a")).await,
            Ok(0)
        );
        id
    });
    // The id's epoch moves to 32766, as 32766 bumps would.
    assert_eq!(node.terminate(), Some(0));
    append_metadata(
        &node,
        &[MetadataRecord::ProducerEpochBumped {
            producer_id: ProducerId(id),
            epoch: ProducerEpoch(PRODUCER_EPOCH_MAX - 1),
        }],
    );
    node.restart();
    rt.block_on(async {
        let conn = connect(&node).await;
        let last = PRODUCER_EPOCH_MAX;
        assert_eq!(
            init(&conn, Some((id, last - 1))).await,
            Ok((id, last)),
            "32766 -> 32767"
        );
        assert_eq!(
            produce(&conn, "exhausted", 0, batch(id, last, 0, "b")).await,
            Ok(1)
        );
        let (new_id, new_epoch) = init(&conn, Some((id, last))).await.unwrap();
        assert_ne!(new_id, id, "32767 -> a new id");
        assert_eq!(new_epoch, 0);
        assert_eq!(
            produce(&conn, "exhausted", 0, batch(id, last, 1, "zombie")).await,
            Err(ErrorCode::ProducerFenced),
            "the old id is retired"
        );
        assert_eq!(
            init(&conn, Some((id, last))).await,
            Err(ErrorCode::ProducerFenced)
        );
        assert_eq!(
            produce(&conn, "exhausted", 0, batch(new_id, 0, 0, "c")).await,
            Ok(2)
        );
        // An epoch of 32768 written into a batch header reads as -32768: refused, not taken as
        // "not idempotent".
        let mut wrapped = batch(new_id, 0, 1, "wrapped");
        wrapped[PRODUCER_EPOCH_POSITION..PRODUCER_EPOCH_POSITION + 2]
            .copy_from_slice(&i16::MIN.to_be_bytes());
        let crc = compute_crc(&wrapped);
        wrapped[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            produce(&conn, "exhausted", 0, wrapped).await,
            Err(ErrorCode::CorruptBatch)
        );
    });
}

/// Issue 11: ids of 2^63 and 2^64 - 1 were accepted and answered, and the node bumped and took
/// batches from ids it never issued. Ids outside the documented range fail the request; ids
/// inside it that the node never handed out, and epochs it never granted, are unknown.
#[test]
fn ids_the_node_never_issued_are_refused() {
    let node = TestNode::start();
    runtime().block_on(async {
        create_topic(&node, "strangers", 1).await;
        let conn = connect(&node).await;
        let (id, _) = init(&conn, None).await.unwrap();
        for (stranger, epoch) in [(1 << 63, 0), (u64::MAX, 0), (id, 1 << 15), (id, u16::MAX)] {
            assert_eq!(
                init(&conn, Some((stranger, epoch))).await,
                Err(ErrorCode::InvalidRequest),
                "id {stranger}, epoch {epoch}"
            );
        }
        for stranger in [id + 1, PRODUCER_ID_MAX] {
            assert_eq!(
                init(&conn, Some((stranger, 0))).await,
                Err(ErrorCode::UnknownProducerId),
                "a bump of id {stranger}"
            );
            assert_eq!(
                produce(&conn, "strangers", 0, batch(stranger, 0, 0, "x")).await,
                Err(ErrorCode::UnknownProducerId),
                "a batch from id {stranger}"
            );
        }
        assert_eq!(
            init(&conn, Some((id, 3))).await,
            Err(ErrorCode::UnknownProducerId),
            "an epoch never granted"
        );
        assert_eq!(
            produce(&conn, "strangers", 0, batch(id, 3, 0, "x")).await,
            Err(ErrorCode::UnknownProducerId)
        );
        assert_eq!(
            produce(&conn, "strangers", 0, batch(id, 0, 0, "x")).await,
            Ok(0),
            "nothing was stored for the strangers"
        );
    });
}

/// Issue 11: a fresh id's first batch was accepted at any sequence, so a producer that lost
/// batches (or a partition that lost its state) went unnoticed. Without state for an id a
/// partition takes only sequence 0.
#[test]
fn a_first_batch_must_start_at_sequence_0() {
    let node = TestNode::start();
    runtime().block_on(async {
        create_topic(&node, "first", 1).await;
        let conn = connect(&node).await;
        let (id, _) = init(&conn, None).await.unwrap();
        assert_eq!(
            produce(&conn, "first", 0, batch(id, 0, 5, "x")).await,
            Err(ErrorCode::UnknownProducerId)
        );
        assert_eq!(
            produce(&conn, "first", 0, batch(id, 0, 0, "a")).await,
            Ok(0)
        );
        assert_eq!(
            produce(&conn, "first", 0, batch(id, 0, 5, "x")).await,
            Err(ErrorCode::OutOfOrderSequence),
            "with state, a gap is out of order"
        );
    });
}

async fn values(cluster: Arc<Cluster>, topic: &str, count: usize) -> Vec<String> {
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
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < count && std::time::Instant::now() < deadline {
        out.extend(
            consumer
                .poll()
                .await
                .unwrap()
                .into_iter()
                .map(|r| String::from_utf8(r.value.unwrap()).unwrap()),
        );
    }
    out
}

/// The Rust producer on `UnknownProducerId`: topic `lost` is deleted and created again, so its
/// partition has no state for the producer, whose next sequence there is not 0. The producer
/// bumps its epoch and sends again from sequence 0; topic `kept`, where its batches still
/// carry the old epoch, is then fenced by that bump and renumbered the same way. Every event
/// arrives once, in order.
#[test]
fn the_producer_starts_again_at_sequence_0_when_a_partition_lost_its_state() {
    let node = TestNode::start();
    runtime().block_on(async {
        let cluster = Cluster::connect(&node.bootstrap(), "test").await.unwrap();
        let admin = Admin::new(cluster.clone());
        for topic in ["lost", "kept"] {
            admin
                .create_topic(topic, 1, 1, BTreeMap::new())
                .await
                .unwrap();
        }
        let producer = Producer::new(cluster.clone(), ProducerConfig::default())
            .await
            .unwrap();
        let send = |topic: &'static str, value: String| {
            let producer = &producer;
            async move {
                producer
                    .send(ProducerRecord {
                        topic: topic.into(),
                        partition: Some(0),
                        value: Some(value.into_bytes()),
                        ..ProducerRecord::default()
                    })
                    .await
                    .unwrap()
            }
        };
        for i in 0..3 {
            for topic in ["lost", "kept"] {
                send(topic, format!("{topic}-{i}")).await;
            }
            producer.flush().await.unwrap();
        }
        admin.delete_topic("lost").await.unwrap();
        admin
            .create_topic("lost", 1, 1, BTreeMap::new())
            .await
            .unwrap();
        let mut deliveries = Vec::new();
        for i in 3..6 {
            deliveries.push(send("lost", format!("lost-{i}")).await);
            producer.flush().await.unwrap();
            deliveries.push(send("kept", format!("kept-{i}")).await);
        }
        producer.flush().await.unwrap();
        for delivery in deliveries {
            let sent = delivery.wait().await;
            assert!(sent.is_ok(), "{sent:?}");
        }
        assert_eq!(
            values(cluster.clone(), "lost", 3).await,
            ["lost-3", "lost-4", "lost-5"]
        );
        assert_eq!(
            values(cluster, "kept", 6).await,
            (0..6).map(|i| format!("kept-{i}")).collect::<Vec<_>>()
        );
        producer.close().await.unwrap();
    });
}
