//! Bad input from a client: each case gets a typed error (or the connection is closed where
//! the frame cannot be parsed) and a log line, and nothing else: other connections keep
//! working and nothing stored changes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use vltava_messages::batch::{
    CRC_POSITION, LAST_OFFSET_DELTA_POSITION, RECORD_COUNT_POSITION, compute_crc,
};
use vltava_messages::protocol::{
    Acks, CreateTopicsRequest, ErrorCode, FRAME_HEADER_BYTES, FetchPartition, FetchRequest,
    FetchTopic, FrameHeader, HandshakeRequest, NewTopic, ProducePartition, ProduceRequest,
    ProduceTopic, Request, Response,
};
use vltava_messages::{BatchBuilder, Compression, Offset, PartitionId};
use vltava_tests::TestNode;

/// A raw connection that speaks frames (also used by the `spec` scenarios).
pub(crate) struct Raw {
    stream: TcpStream,
    next: u64,
}

impl Raw {
    pub(crate) fn open(node: &TestNode) -> Raw {
        let stream = TcpStream::connect(&node.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw { stream, next: 1 }
    }

    pub(crate) fn handshaken(node: &TestNode) -> Raw {
        let mut raw = Raw::open(node);
        let answer = raw.call(&Request::Handshake(HandshakeRequest {
            client_id: "raw".into(),
            client_software_name: "test".into(),
            client_software_version: "0".into(),
        }));
        assert!(matches!(answer, Some(Response::Handshake(_))), "{answer:?}");
        raw
    }

    pub(crate) fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one answer frame; `None` if the connection closed.
    pub(crate) fn read(&mut self) -> Option<Response> {
        self.read_frame().map(|(_, response)| response)
    }

    /// Reads one answer frame with its header; `None` if the connection closed.
    pub(crate) fn read_frame(&mut self) -> Option<(FrameHeader, Response)> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        self.stream.read_exact(&mut header).ok()?;
        let header = FrameHeader::parse(&header);
        let mut body = vec![0u8; header.length as usize - 12];
        self.stream.read_exact(&mut body).ok()?;
        let response = Response::decode(&header, &body).expect("the server's answers decode");
        Some((header, response))
    }

    pub(crate) fn call(&mut self, request: &Request) -> Option<Response> {
        let frame = request.encode(self.next).unwrap();
        self.next += 1;
        self.send_bytes(&frame);
        self.read()
    }

    pub(crate) fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

pub(crate) fn failed_code(response: Option<Response>) -> ErrorCode {
    match response {
        Some(Response::Failed(failed)) => failed.error.error_code().expect("a known code"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

pub(crate) fn produce(topic: &str, partition: u32, records: Vec<u8>) -> Request {
    Request::Produce(ProduceRequest {
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
    })
}

fn partition_error(response: Option<Response>) -> Option<ErrorCode> {
    match response {
        Some(Response::Produce(p)) => p.topics[0].partitions[0]
            .error
            .as_ref()
            .and_then(|e| e.error_code()),
        Some(Response::Fetch(f)) => f.topics[0].partitions[0]
            .error
            .as_ref()
            .and_then(|e| e.error_code()),
        other => panic!("unexpected answer {other:?}"),
    }
}

pub(crate) fn good_batch(value: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(None, Some(value.as_bytes()), &[], 1);
    b.build()
}

/// Creates a one-partition topic and checks it was created.
pub(crate) fn create_topic(raw: &mut Raw, name: &str) {
    let created = raw.call(&Request::CreateTopics(CreateTopicsRequest {
        topics: vec![NewTopic {
            name: name.into(),
            partitions: Some(1),
            replication_factor: Some(1),
            configs: Default::default(),
        }],
        timeout_ms: 10_000,
        validate_only: false,
    }));
    assert!(
        matches!(created, Some(Response::CreateTopics(ref c)) if c.topics[0].error.is_none()),
        "{created:?}"
    );
}

/// A fetch of partition 0 of `topic` from offset 0, up to 1 MiB, without waiting.
fn fetch_from_start(topic: &str) -> Request {
    Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            name: topic.into(),
            partitions: vec![FetchPartition {
                partition: PartitionId(0),
                fetch_offset: Offset(0),
                partition_max_bytes: 1 << 20,
                current_leader_epoch: None,
            }],
        }],
    })
}

fn fetch_all(raw: &mut Raw, topic: &str) -> Vec<u8> {
    match raw.call(&fetch_from_start(topic)) {
        Some(Response::Fetch(f)) => f.topics[0].partitions[0].records.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_kind_of_bad_input_gets_its_typed_answer_and_harms_nobody() {
    let node = TestNode::start();
    let mut good = Raw::handshaken(&node);
    create_topic(&mut good, "safe");
    assert!(partition_error(good.call(&produce("safe", 0, good_batch("precious")))).is_none());
    let stored = fetch_all(&mut good, "safe");
    assert!(!stored.is_empty());

    // Garbage bytes: a header with a nonsense length is answered or the connection closes.
    let mut garbage = Raw::open(&node);
    garbage.send_bytes(&[0xde; 64]);
    assert!(
        garbage
            .read()
            .is_none_or(|r| matches!(r, Response::Failed(_)))
    );

    // An oversized frame is refused from its header alone.
    let mut big = Raw::handshaken(&node);
    let mut header = FrameHeader {
        length: 0xffff_fff0,
        kind: 7,
        version: 1,
        correlation_id: 42,
    }
    .encode()
    .to_vec();
    header.extend_from_slice(&[0; 100]);
    big.send_bytes(&header);
    assert_eq!(failed_code(big.read()), ErrorCode::RequestTooLarge);
    assert!(big.closed());

    // A request before the handshake.
    let mut early = Raw::open(&node);
    assert_eq!(
        failed_code(early.call(&produce("safe", 0, good_batch("x")))),
        ErrorCode::HandshakeRequired
    );
    assert!(early.closed());
    // Even a first request that cannot be decoded gets HandshakeRequired.
    let mut early = Raw::open(&node);
    let mut frame = FrameHeader {
        length: 12 + 1,
        kind: 50,
        version: 1,
        correlation_id: 3,
    }
    .encode()
    .to_vec();
    frame.push(0x90);
    early.send_bytes(&frame);
    assert_eq!(failed_code(early.read()), ErrorCode::HandshakeRequired);
    assert!(early.closed());
    // A length too short to hold the header: nothing to answer, the connection closes.
    let mut short = Raw::handshaken(&node);
    short.send_bytes(
        &FrameHeader {
            length: 5,
            kind: 1,
            version: 1,
            correlation_id: 4,
        }
        .encode(),
    );
    assert!(short.read().is_none());

    let mut raw = Raw::handshaken(&node);
    // Valid MessagePack of the wrong shape.
    let mut frame = FrameHeader {
        length: 12 + 3,
        kind: 1,
        version: 1,
        correlation_id: 7,
    }
    .encode()
    .to_vec();
    frame.extend_from_slice(&[0x93, 0x01, 0x02]); // [1, 2, …] truncated array
    raw.send_bytes(&frame);
    let code = failed_code(raw.read());
    assert!(
        matches!(code, ErrorCode::CorruptFrame | ErrorCode::InvalidRequest),
        "{code:?}"
    );
    // An unknown kind, and a known kind at a version the server does not speak.
    let mut frame = FrameHeader {
        length: 12 + 1,
        kind: 999,
        version: 1,
        correlation_id: 8,
    }
    .encode()
    .to_vec();
    frame.push(0x80);
    raw.send_bytes(&frame);
    assert_eq!(failed_code(raw.read()), ErrorCode::UnknownRequestKind);
    let mut frame = FrameHeader {
        length: 12 + 1,
        kind: 1,
        version: 99,
        correlation_id: 9,
    }
    .encode()
    .to_vec();
    frame.push(0x80);
    raw.send_bytes(&frame);
    assert_eq!(failed_code(raw.read()), ErrorCode::UnsupportedVersion);

    // A batch with a bad CRC, and one that lies about its record count (CRC fixed up).
    let mut bad_crc = good_batch("evil");
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    assert_eq!(
        partition_error(raw.call(&produce("safe", 0, bad_crc))),
        Some(ErrorCode::CorruptBatch)
    );
    let mut liar = good_batch("liar");
    liar[RECORD_COUNT_POSITION..RECORD_COUNT_POSITION + 4].copy_from_slice(&2u32.to_be_bytes());
    liar[LAST_OFFSET_DELTA_POSITION..LAST_OFFSET_DELTA_POSITION + 4]
        .copy_from_slice(&1u32.to_be_bytes());
    let crc = compute_crc(&liar);
    liar[CRC_POSITION..CRC_POSITION + 4].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        partition_error(raw.call(&produce("safe", 0, liar))),
        Some(ErrorCode::CorruptBatch)
    );
    // Unknown topic and partition.
    assert_eq!(
        partition_error(raw.call(&produce("nope", 0, good_batch("x")))),
        Some(ErrorCode::UnknownTopic)
    );
    assert_eq!(
        partition_error(raw.call(&produce("safe", 9, good_batch("x")))),
        Some(ErrorCode::UnknownPartition)
    );
    // An absurd offset.
    let request = Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            name: "safe".into(),
            partitions: vec![FetchPartition {
                partition: PartitionId(0),
                fetch_offset: Offset(u64::MAX / 2),
                partition_max_bytes: 1 << 20,
                current_leader_epoch: None,
            }],
        }],
    });
    let answer = raw.call(&request);
    if let Some(Response::Fetch(f)) = &answer {
        let p = &f.topics[0].partitions[0];
        assert_eq!(
            p.high_watermark,
            Some(Offset(1)),
            "out of range still says where the log is"
        );
        assert_eq!(p.log_start_offset, Some(Offset(0)));
    }
    assert_eq!(partition_error(answer), Some(ErrorCode::OffsetOutOfRange));
    // An absurd byte budget is refused as a whole.
    let request = Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: u32::MAX,
        topics: vec![FetchTopic {
            name: "safe".into(),
            partitions: vec![FetchPartition {
                partition: PartitionId(0),
                fetch_offset: Offset(0),
                partition_max_bytes: u32::MAX,
                current_leader_epoch: None,
            }],
        }],
    });
    let frame = request.encode(99).unwrap();
    raw.send_bytes(&frame);
    match raw.read() {
        Some(Response::Failed(f)) => {
            assert_eq!(f.error.error_code(), Some(ErrorCode::InvalidRequest))
        }
        Some(Response::Fetch(f)) => assert!(f.topics[0].partitions[0].records.len() <= 6 << 20),
        other => panic!("{other:?}"),
    }

    // After all of that: the good connection still works and the stored bytes are unchanged.
    assert_eq!(fetch_all(&mut good, "safe"), stored);
    assert!(partition_error(good.call(&produce("safe", 0, good_batch("after")))).is_none());
    assert!(
        node.logged("bad request"),
        "bad input is logged:\n{}",
        node.log_text()
    );
}

#[test]
fn a_client_that_says_nothing_is_closed() {
    let node = TestNode::start();
    let mut silent = Raw::open(&node);
    let started = Instant::now();
    assert!(silent.closed(), "the server closes a silent connection");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "after its handshake timeout, not at once"
    );
    let mut good = Raw::handshaken(&node);
    assert!(good.call(&Request::Metadata(Default::default())).is_some());
}

/// Stores 50 one-event batches of 1 KiB in `damaged`, stops the node cleanly, flips the last
/// byte of the first batch in its segment file (a byte its CRC covers) and starts the node
/// again. A clean restart checks only the segment's tail (past its last index entry), so the
/// damage is found only by whoever reads the first batch.
fn node_with_a_damaged_first_batch(args: &[&str]) -> TestNode {
    let mut node = TestNode::start_with(args);
    let mut raw = Raw::handshaken(&node);
    create_topic(&mut raw, "damaged");
    let value = "v".repeat(1024);
    for _ in 0..50 {
        assert_eq!(
            partition_error(raw.call(&produce("damaged", 0, good_batch(&value)))),
            None
        );
    }
    drop(raw);
    assert_eq!(node.terminate(), Some(0));
    let dir = node.data_dir.join("damaged-0");
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment file");
    let mut bytes = std::fs::read(&segment).unwrap();
    let first_len = 12 + u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    assert!(first_len * 50 <= bytes.len(), "50 batches were stored");
    bytes[first_len - 1] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    node.restart();
    node
}

#[test]
fn a_batch_damaged_on_disk_reaches_the_consumer_which_refuses_it() {
    // Without --verify-reads the node serves stored bytes as they are (as Kafka does) and
    // the consumer's CRC check is what catches the damage.
    let node = node_with_a_damaged_first_batch(&[]);
    let records = fetch_all(&mut Raw::handshaken(&node), "damaged");
    let batches: Vec<_> = vltava_messages::batch::split_batches(&records).collect();
    assert!(
        matches!(
            batches.first(),
            Some(Err(vltava_messages::batch::BatchError::CrcMismatch { .. }))
        ),
        "{batches:?}"
    );
}

#[test]
fn with_verify_reads_the_node_refuses_to_serve_a_batch_damaged_on_disk() {
    let node = node_with_a_damaged_first_batch(&["--verify-reads"]);
    let mut raw = Raw::handshaken(&node);
    assert_eq!(
        partition_error(raw.call(&fetch_from_start("damaged"))),
        Some(ErrorCode::StorageError)
    );
    assert!(
        vltava_tests::eventually(Duration::from_secs(5), || node.logged("corrupt")),
        "{}",
        node.log_text()
    );
}

/// Issue 11: every bad request logged a WARN with no bound (about 25 MB of log in two minutes
/// of bad input), and a configured value holding a newline was written into the human log as
/// a forged line of its own. Now a flood of bad requests on one connection writes at most its
/// connection's budget of lines, the rest are counted and reported when it closes, and text
/// with line breaks stays inside its own log line, escaped.
#[test]
fn bad_input_floods_are_rate_limited_and_text_cannot_forge_log_lines() {
    const FLOOD: u64 = 300;
    let temp = tempfile::tempdir().expect("temporary directory");
    let data_dir = temp
        .path()
        .join("data\nFORGED-LINE pretending to be the node");
    let mut node = TestNode::start_in(data_dir, &[]);
    let mut raw = Raw::handshaken(&node);
    for correlation_id in 0..FLOOD {
        let mut frame = FrameHeader {
            length: 12 + 1,
            kind: 1,
            version: 1,
            correlation_id,
        }
        .encode()
        .to_vec();
        frame.push(0xc1); // a byte MessagePack never uses
        raw.send_bytes(&frame);
        let code = failed_code(raw.read());
        assert!(
            matches!(code, ErrorCode::CorruptFrame | ErrorCode::InvalidRequest),
            "{code:?}"
        );
    }
    drop(raw);
    assert!(
        vltava_tests::eventually(Duration::from_secs(10), || node.logged("held_back=")),
        "the count of held-back lines is reported when the connection closes:\n{}",
        node.log_text()
    );
    let log = node.log_text();
    let bad_request_lines = log.lines().filter(|l| l.contains("bad request")).count() as u64;
    // Five per ten-second window; the flood takes well under a window, two at most.
    assert!(
        (1..=10).contains(&bad_request_lines),
        "{bad_request_lines} 'bad request' lines for {FLOOD} bad requests:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED-LINE")),
        "a configured value started a log line of its own:\n{log}"
    );
    assert!(
        log.contains("data\\nFORGED-LINE"),
        "the data directory is logged, escaped:\n{log}"
    );
    node.terminate();
}
