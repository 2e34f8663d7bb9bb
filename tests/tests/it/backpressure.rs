//! Backpressure: a client that floods requests without reading answers, or a consumer that
//! stops reading its socket, holds at most its in-flight bound on the node. The node's memory
//! stays bounded and other connections keep being served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use vltava_messages::protocol::{
    Acks, CreateTopicsRequest, FetchPartition, FetchRequest, FetchTopic, FrameHeader,
    HandshakeRequest, NewTopic, ProducePartition, ProduceRequest, ProduceTopic, Request, Response,
};
use vltava_messages::{BatchBuilder, Compression, Offset, PartitionId};
use vltava_tests::TestNode;

fn connect(node: &TestNode) -> TcpStream {
    let mut stream = TcpStream::connect(&node.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let hello = Request::Handshake(HandshakeRequest {
        client_id: "bp".into(),
        client_software_name: "test".into(),
        client_software_version: "0".into(),
    });
    stream.write_all(&hello.encode(1).unwrap()).unwrap();
    read_answer(&mut stream);
    stream
}

fn read_answer(stream: &mut TcpStream) -> Response {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).unwrap();
    let header = FrameHeader::parse(&header);
    let mut body = vec![0u8; header.length as usize - 12];
    stream.read_exact(&mut body).unwrap();
    Response::decode(&header, &body).unwrap()
}

fn big_batch() -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    let value = vec![b'x'; 1024];
    for _ in 0..1000 {
        b.push(None, Some(&value), &[], 1);
    }
    b.build()
}

fn produce(records: Vec<u8>) -> Request {
    Request::Produce(ProduceRequest {
        acks: Acks::Leader,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: "bp".into(),
            partitions: vec![ProducePartition {
                partition: PartitionId(0),
                current_leader_epoch: None,
                records,
            }],
        }],
    })
}

fn fetch_everything() -> Request {
    Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 6 << 20,
        topics: vec![FetchTopic {
            name: "bp".into(),
            partitions: vec![FetchPartition {
                partition: PartitionId(0),
                fetch_offset: Offset(0),
                partition_max_bytes: 6 << 20,
                current_leader_epoch: None,
            }],
        }],
    })
}

/// Times one produce on a fresh connection: what another client sees meanwhile.
fn other_client_produce_time(node: &TestNode) -> Duration {
    let mut stream = connect(node);
    let started = Instant::now();
    stream
        .write_all(&produce(big_batch()).encode(2).unwrap())
        .unwrap();
    match read_answer(&mut stream) {
        Response::Produce(p) => assert!(p.topics[0].partitions[0].error.is_none()),
        other => panic!("{other:?}"),
    }
    started.elapsed()
}

#[test]
fn a_client_that_does_not_read_its_answers_holds_only_its_bound() {
    let node = TestNode::start_with(&["--durability", "none"]);
    let mut admin = connect(&node);
    let create = Request::CreateTopics(CreateTopicsRequest {
        topics: vec![NewTopic {
            name: "bp".into(),
            partitions: Some(1),
            replication_factor: Some(1),
            configs: Default::default(),
        }],
        timeout_ms: 10_000,
        validate_only: false,
    });
    admin.write_all(&create.encode(2).unwrap()).unwrap();
    read_answer(&mut admin);
    // 24 MiB of data, so each fetch answer is a full 6 MiB.
    for i in 0..24 {
        admin
            .write_all(&produce(big_batch()).encode(10 + i).unwrap())
            .unwrap();
        read_answer(&mut admin);
    }
    let rss_before = node.rss_kib().unwrap();

    // A consumer that asks for 6 MiB answers and never reads them, flooding requests, and a
    // producer that floods 1 MiB batches without reading its answers.
    let mut stalled_consumer = connect(&node);
    stalled_consumer
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let fetch = fetch_everything().encode(100).unwrap();
    let mut fetches_written = 0;
    // Small requests: it takes many to fill the socket buffers (several MiB) once the node
    // stops reading.
    for _ in 0..200_000 {
        if stalled_consumer.write_all(&fetch).is_err() {
            break; // The node stopped reading: its in-flight bound is reached.
        }
        fetches_written += 1;
    }
    let mut flooding_producer = connect(&node);
    flooding_producer
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let frame = produce(big_batch()).encode(200).unwrap();
    let mut produces_written = 0;
    for _ in 0..300 {
        if flooding_producer.write_all(&frame).is_err() {
            break;
        }
        produces_written += 1;
    }
    assert!(
        fetches_written < 200_000,
        "the node stopped reading the stalled consumer's requests"
    );
    // The producer's answers are small, so the node may keep up with it (its answers fit the
    // socket buffers); either way it holds at most its in-flight bound, which the memory
    // check below covers.
    assert!(produces_written > 0);

    // Others are still served, promptly.
    let took = other_client_produce_time(&node);
    assert!(
        took < Duration::from_secs(10),
        "another client waited {took:?}"
    );

    // Memory: the two hold at most their in-flight requests (16 each by default) and the
    // socket buffers, not everything they sent or asked for.
    let rss_after = node.rss_kib().unwrap();
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    assert!(growth_mib < 400, "node memory grew by {growth_mib} MiB");
    drop(stalled_consumer);
    drop(flooding_producer);
    let took = other_client_produce_time(&node);
    assert!(took < Duration::from_secs(10));
}
