//! The replication kinds: strategies for the peer round-trip properties, bounds (each limit
//! refused one past it, the largest answers fit a frame) and the golden bytes PROTOCOL.md
//! repeats.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::peer::tests::{doc_fixture, doc_table, hex, split};
use crate::peer::{PeerRequest, PeerResponse};
use crate::protocol::ErrorCode;

fn topic() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,32}"
}

fn leader_epoch() -> impl Strategy<Value = LeaderEpoch> {
    any::<u32>().prop_map(LeaderEpoch)
}

fn optional_offset() -> impl Strategy<Value = Option<Offset>> {
    proptest::option::of(any::<u64>().prop_map(Offset))
}

fn response_error() -> impl Strategy<Value = Option<ResponseError>> {
    proptest::option::of(
        (
            prop::sample::select(
                &[
                    ErrorCode::NotLeader,
                    ErrorCode::FencedLeaderEpoch,
                    ErrorCode::UnknownLeaderEpoch,
                    ErrorCode::OffsetOutOfRange,
                    ErrorCode::PartitionOffline,
                ][..],
            ),
            ".{0,32}",
        )
            .prop_map(|(code, message)| ResponseError::new(code, message)),
    )
}

fn replica_fetch_partition() -> impl Strategy<Value = ReplicaFetchPartition> {
    (
        topic(),
        any::<u32>(),
        leader_epoch(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(topic, partition, leader_epoch, a, b)| ReplicaFetchPartition {
                topic,
                partition: PartitionId(partition),
                leader_epoch,
                fetch_offset: Offset(a.max(b)),
                flushed_offset: Offset(a.min(b)),
            },
        )
}

/// Valid ReplicaFetch requests: bounds kept, flushed offsets at or below fetch offsets.
pub(in crate::peer) fn replica_fetch_request() -> impl Strategy<Value = ReplicaFetchRequest> {
    (
        0..=REPLICA_FETCH_WAIT_MS_MAX,
        0..=REPLICA_FETCH_BYTES_MAX,
        vec(replica_fetch_partition(), 0..8),
    )
        .prop_map(|(max_wait_ms, bytes_max, partitions)| ReplicaFetchRequest {
            max_wait_ms,
            bytes_max,
            partitions,
        })
}

fn replica_fetch_answer() -> impl Strategy<Value = ReplicaFetchAnswer> {
    (
        topic(),
        any::<u32>(),
        response_error(),
        (optional_offset(), optional_offset(), optional_offset()),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(topic, partition, error, (high, start, end), records)| {
            ReplicaFetchAnswer {
                topic,
                partition: PartitionId(partition),
                error,
                high_watermark: high,
                log_start_offset: start,
                log_end_offset: end,
                records,
            }
        })
}

/// Valid ReplicaFetch answers.
pub(in crate::peer) fn replica_fetch_response() -> impl Strategy<Value = ReplicaFetchResponse> {
    vec(replica_fetch_answer(), 0..8).prop_map(|partitions| ReplicaFetchResponse { partitions })
}

/// Valid OffsetForLeaderEpoch requests.
pub(in crate::peer) fn epoch_end_request() -> impl Strategy<Value = OffsetForLeaderEpochRequest> {
    vec(
        (topic(), any::<u32>(), leader_epoch(), leader_epoch()).prop_map(
            |(topic, partition, leader_epoch, epoch)| EpochEndQuery {
                topic,
                partition: PartitionId(partition),
                leader_epoch,
                epoch,
            },
        ),
        0..8,
    )
    .prop_map(|partitions| OffsetForLeaderEpochRequest { partitions })
}

/// Valid OffsetForLeaderEpoch answers: the end epoch and offset both present or both absent.
pub(in crate::peer) fn epoch_end_response() -> impl Strategy<Value = OffsetForLeaderEpochResponse> {
    vec(
        (
            topic(),
            any::<u32>(),
            response_error(),
            proptest::option::of((leader_epoch(), any::<u64>().prop_map(Offset))),
        )
            .prop_map(|(topic, partition, error, end)| EpochEndReply {
                topic,
                partition: PartitionId(partition),
                error,
                end_epoch: end.map(|(epoch, _)| epoch),
                end_offset: end.map(|(_, offset)| offset),
            }),
        0..8,
    )
    .prop_map(|partitions| OffsetForLeaderEpochResponse { partitions })
}

fn fetch_partition(topic: &str) -> ReplicaFetchPartition {
    ReplicaFetchPartition {
        topic: topic.to_owned(),
        partition: PartitionId(u32::MAX),
        leader_epoch: LeaderEpoch(u32::MAX),
        fetch_offset: Offset(u64::MAX),
        flushed_offset: Offset(u64::MAX),
    }
}

fn decode_request(request: &PeerRequest) -> Result<PeerRequest, PeerProtocolError> {
    let frame = request.encode(1).expect("the request encodes");
    let (header, body) = split(&frame);
    PeerRequest::decode(&header, body)
}

fn decode_response(response: &PeerResponse) -> Result<PeerResponse, PeerProtocolError> {
    let frame = response.encode(1).expect("the answer encodes");
    let (header, body) = split(&frame);
    PeerResponse::decode(&header, body).map(|answer| answer.expect("an answer, not a failure"))
}

fn too_large(field: &'static str, value: u64, max: u64) -> PeerProtocolError {
    PeerProtocolError::FieldTooLarge { field, value, max }
}

/// Each ReplicaFetch request limit is refused one past it, and a request at every limit at
/// once decodes: a follower cannot make a leader hold a request, read or answer without bound.
#[test]
fn replica_fetch_requests_are_bounded() {
    let max = REPLICA_FETCH_PARTITIONS_MAX;
    let longest = "t".repeat(TOPIC_NAME_BYTES_MAX as usize);
    let at_limit = ReplicaFetchRequest {
        max_wait_ms: REPLICA_FETCH_WAIT_MS_MAX,
        bytes_max: REPLICA_FETCH_BYTES_MAX,
        partitions: vec![fetch_partition(&longest); max],
    };
    let request = PeerRequest::ReplicaFetch(at_limit.clone());
    assert_eq!(decode_request(&request), Ok(request));

    let past = |change: &dyn Fn(&mut ReplicaFetchRequest)| {
        let mut request = at_limit.clone();
        change(&mut request);
        decode_request(&PeerRequest::ReplicaFetch(request))
    };
    assert_eq!(
        past(&|r| r.partitions.push(fetch_partition("t"))),
        Err(too_large("partitions", max as u64 + 1, max as u64))
    );
    assert_eq!(
        past(&|r| r.max_wait_ms += 1),
        Err(too_large(
            "max_wait_ms",
            u64::from(REPLICA_FETCH_WAIT_MS_MAX) + 1,
            u64::from(REPLICA_FETCH_WAIT_MS_MAX)
        ))
    );
    assert_eq!(
        past(&|r| r.bytes_max += 1),
        Err(too_large(
            "bytes_max",
            u64::from(REPLICA_FETCH_BYTES_MAX) + 1,
            u64::from(REPLICA_FETCH_BYTES_MAX)
        ))
    );
    assert_eq!(
        past(&|r| r.partitions[0].topic.push('t')),
        Err(too_large(
            "topic name bytes",
            u64::from(TOPIC_NAME_BYTES_MAX) + 1,
            u64::from(TOPIC_NAME_BYTES_MAX)
        ))
    );
}

/// A follower cannot claim to have fsynced offsets it does not have: `flushed_offset` past
/// `fetch_offset` is refused, equal is fine.
#[test]
fn a_flushed_offset_past_the_fetch_offset_is_refused() {
    let request = |flushed: u64| {
        PeerRequest::ReplicaFetch(ReplicaFetchRequest {
            max_wait_ms: 0,
            bytes_max: 0,
            partitions: vec![ReplicaFetchPartition {
                fetch_offset: Offset(10),
                flushed_offset: Offset(flushed),
                ..fetch_partition("t")
            }],
        })
    };
    assert_eq!(decode_request(&request(10)), Ok(request(10)));
    let error = decode_request(&request(11)).unwrap_err();
    assert_eq!(
        error,
        PeerProtocolError::FieldInvalid {
            field: "flushed_offset",
            rule: "at most fetch_offset",
        }
    );
    assert_eq!(error.error_code(), crate::peer::PeerErrorCode::CorruptFrame);
    assert!(!error.closes_connection());
}

/// The widest ReplicaFetch answer entry: every field at its largest, the longest topic name
/// and an error message at its limit (in 4-byte characters, cut at a boundary).
fn widest_answer(records: Vec<u8>) -> ReplicaFetchAnswer {
    ReplicaFetchAnswer {
        topic: "t".repeat(TOPIC_NAME_BYTES_MAX as usize),
        partition: PartitionId(u32::MAX),
        error: Some(ResponseError {
            leader: Some(crate::types::NodeId(u32::MAX)),
            version_min: Some(u16::MAX),
            version_max: Some(u16::MAX),
            ..ResponseError::new(
                ErrorCode::NotEnoughReplicasAfterAppend,
                "\u{1F600}".repeat(ERROR_MESSAGE_BYTES_MAX as usize),
            )
        }),
        high_watermark: Some(Offset(u64::MAX)),
        log_start_offset: Some(Offset(u64::MAX)),
        log_end_offset: Some(Offset(u64::MAX)),
        records,
    }
}

/// The frame arithmetic behind `REPLICA_FETCH_BYTES_MAX`: an entry's fields stay within
/// `REPLICA_FETCH_ANSWER_FIELDS_BYTES_MAX` (records of 64 KiB, so the `bin` header is the
/// widest), and an answer of the most entries, all at their widest, carrying the most record
/// bytes an answer may, encodes into one frame and decodes; one byte of records more is
/// refused.
#[test]
fn the_largest_replica_fetch_answer_fits_a_frame() {
    let records_bytes = 1 << 16;
    let one = PeerResponse::ReplicaFetch(ReplicaFetchResponse {
        partitions: vec![widest_answer(vec![0; records_bytes])],
    })
    .encode(1)
    .unwrap();
    let empty = PeerResponse::ReplicaFetch(ReplicaFetchResponse::default())
        .encode(1)
        .unwrap();
    assert!(
        empty.len() <= FRAME_HEADER_BYTES + REPLICA_FETCH_BODY_FIELDS_BYTES_MAX as usize,
        "the body around the entries takes {} bytes",
        empty.len() - FRAME_HEADER_BYTES
    );
    let entry_fields = one.len()
        - empty.len()
        - records_bytes
        - TOPIC_NAME_BYTES_MAX as usize
        - ERROR_MESSAGE_BYTES_MAX as usize;
    assert!(
        entry_fields <= REPLICA_FETCH_ANSWER_FIELDS_BYTES_MAX as usize,
        "an entry's fields take {entry_fields} bytes, above the budget"
    );

    // The record bytes all in the first entry, as when one batch past the budget comes first.
    let records_max = REPLICA_FETCH_RECORDS_BYTES_MAX as usize;
    let mut partitions = vec![widest_answer(Vec::new()); REPLICA_FETCH_PARTITIONS_MAX];
    partitions[0].records = vec![0xab; records_max];
    let largest = PeerResponse::ReplicaFetch(ReplicaFetchResponse { partitions });
    let frame = largest
        .encode(1)
        .expect("the largest answer fits one frame");
    assert!(frame.len() <= crate::limits::FRAME_BYTES_MAX as usize);
    let (header, body) = split(&frame);
    assert_eq!(PeerResponse::decode(&header, body).unwrap(), Ok(largest));

    // One byte more, spread over two entries, is refused.
    let over = PeerResponse::ReplicaFetch(ReplicaFetchResponse {
        partitions: vec![
            widest_answer(vec![0; records_max]),
            widest_answer(vec![0; 1]),
        ],
    });
    assert_eq!(
        decode_response(&over),
        Err(too_large(
            "records bytes",
            records_max as u64 + 1,
            records_max as u64
        ))
    );
}

/// A ReplicaFetch answer of more entries than a request may ask for, or with an error message
/// past its bound, is refused.
#[test]
fn replica_fetch_answers_are_bounded() {
    let max = REPLICA_FETCH_PARTITIONS_MAX;
    let over = PeerResponse::ReplicaFetch(ReplicaFetchResponse {
        partitions: vec![ReplicaFetchAnswer::default(); max + 1],
    });
    assert_eq!(
        decode_response(&over),
        Err(too_large("partitions", max as u64 + 1, max as u64))
    );
    let mut long_message = widest_answer(Vec::new());
    long_message
        .error
        .as_mut()
        .expect("an error")
        .message
        .push('x');
    let over = PeerResponse::ReplicaFetch(ReplicaFetchResponse {
        partitions: vec![long_message],
    });
    assert!(matches!(
        decode_response(&over),
        Err(PeerProtocolError::FieldTooLarge {
            field: "error message bytes",
            ..
        })
    ));
}

/// An answer that leaves `records` and the optional fields out (a leader that has nothing to
/// say about them) decodes with them empty.
#[test]
fn a_replica_fetch_answer_may_leave_out_its_optional_fields() {
    // {"partitions": [{"topic": "t", "partition": 0}]}
    let body = [
        0x81, 0xaa, b'p', b'a', b'r', b't', b'i', b't', b'i', b'o', b'n', b's', 0x91, 0x82, 0xa5,
        b't', b'o', b'p', b'i', b'c', 0xa1, b't', 0xa9, b'p', b'a', b'r', b't', b'i', b't', b'i',
        b'o', b'n', 0x00,
    ];
    let header = crate::protocol::FrameHeader {
        length: 12 + body.len() as u32,
        kind: crate::peer::PeerKind::ReplicaFetch.code() | crate::protocol::RESPONSE_BIT,
        version: 1,
        correlation_id: 1,
    };
    assert_eq!(
        PeerResponse::decode(&header, &body).unwrap(),
        Ok(PeerResponse::ReplicaFetch(ReplicaFetchResponse {
            partitions: vec![ReplicaFetchAnswer {
                topic: "t".into(),
                ..ReplicaFetchAnswer::default()
            }],
        }))
    );
}

fn epoch_end_reply(topic: &str) -> EpochEndReply {
    EpochEndReply {
        topic: topic.to_owned(),
        partition: PartitionId(u32::MAX),
        error: None,
        end_epoch: Some(LeaderEpoch(u32::MAX)),
        end_offset: Some(Offset(u64::MAX)),
    }
}

/// OffsetForLeaderEpoch lists are bounded both ways; an answer of the most entries at their
/// widest fits a frame and each entry stays within `EPOCH_END_REPLY_FIELDS_BYTES_MAX`.
#[test]
fn epoch_end_lists_are_bounded_and_the_largest_answer_fits_a_frame() {
    let max = EPOCH_END_PARTITIONS_MAX;
    let longest = "t".repeat(TOPIC_NAME_BYTES_MAX as usize);
    let query = EpochEndQuery {
        topic: longest.clone(),
        partition: PartitionId(u32::MAX),
        leader_epoch: LeaderEpoch(u32::MAX),
        epoch: LeaderEpoch(u32::MAX),
    };
    let at_limit = PeerRequest::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest {
        partitions: vec![query.clone(); max],
    });
    assert_eq!(decode_request(&at_limit), Ok(at_limit));
    let over = PeerRequest::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest {
        partitions: vec![query; max + 1],
    });
    assert_eq!(
        decode_request(&over),
        Err(too_large("partitions", max as u64 + 1, max as u64))
    );

    // Both the error and the end: not an answer a leader gives, but the widest entry.
    let widest = EpochEndReply {
        error: widest_answer(Vec::new()).error,
        ..epoch_end_reply(&longest)
    };
    let one = PeerResponse::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse {
        partitions: vec![widest.clone()],
    })
    .encode(1)
    .unwrap();
    let empty = PeerResponse::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse::default())
        .encode(1)
        .unwrap();
    let entry_fields =
        one.len() - empty.len() - TOPIC_NAME_BYTES_MAX as usize - ERROR_MESSAGE_BYTES_MAX as usize;
    assert!(
        entry_fields <= EPOCH_END_REPLY_FIELDS_BYTES_MAX as usize,
        "an entry's fields take {entry_fields} bytes, above the budget"
    );
    let largest = PeerResponse::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse {
        partitions: vec![widest.clone(); max],
    });
    assert_eq!(decode_response(&largest), Ok(largest));
    let over = PeerResponse::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse {
        partitions: vec![widest; max + 1],
    });
    assert_eq!(
        decode_response(&over),
        Err(too_large("partitions", max as u64 + 1, max as u64))
    );
}

/// An epoch's end is an epoch and an offset together: an answer with one and not the other is
/// refused, with both or neither it decodes.
#[test]
fn an_epoch_end_needs_both_its_epoch_and_its_offset() {
    let answer = |end_epoch: Option<u32>, end_offset: Option<u64>| {
        PeerResponse::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse {
            partitions: vec![EpochEndReply {
                end_epoch: end_epoch.map(LeaderEpoch),
                end_offset: end_offset.map(Offset),
                ..epoch_end_reply("t")
            }],
        })
    };
    for fine in [answer(Some(3), Some(120)), answer(None, None)] {
        assert_eq!(decode_response(&fine), Ok(fine));
    }
    let refused = PeerProtocolError::FieldInvalid {
        field: "end_epoch",
        rule: "present exactly when end_offset is",
    };
    assert_eq!(
        decode_response(&answer(Some(3), None)),
        Err(refused.clone())
    );
    assert_eq!(decode_response(&answer(None, Some(120))), Err(refused));
}

fn golden_replica_fetch_request() -> PeerRequest {
    PeerRequest::ReplicaFetch(ReplicaFetchRequest {
        max_wait_ms: 500,
        bytes_max: 1024 * 1024,
        partitions: vec![ReplicaFetchPartition {
            topic: "t".into(),
            partition: PartitionId(0),
            leader_epoch: LeaderEpoch(2),
            fetch_offset: Offset(10),
            flushed_offset: Offset(8),
        }],
    })
}

fn golden_replica_fetch_response() -> PeerResponse {
    PeerResponse::ReplicaFetch(ReplicaFetchResponse {
        partitions: vec![ReplicaFetchAnswer {
            topic: "t".into(),
            partition: PartitionId(0),
            error: None,
            high_watermark: Some(Offset(12)),
            log_start_offset: Some(Offset(0)),
            log_end_offset: Some(Offset(12)),
            records: vec![0xde, 0xad, 0xbe, 0xef],
        }],
    })
}

/// PROTOCOL.md's ReplicaFetch examples are these bytes, and decode back to these values.
#[test]
fn golden_replica_fetch_frames_match_protocol_md() {
    let request = golden_replica_fetch_request();
    let frame = request.encode(7).unwrap();
    assert_eq!(
        hex(&doc_fixture("replica-fetch-request")),
        hex(&frame),
        "PROTOCOL.md, replica-fetch-request"
    );
    let (header, body) = split(&frame);
    assert_eq!(PeerRequest::decode(&header, body), Ok(request));

    let response = golden_replica_fetch_response();
    let frame = response.encode(7).unwrap();
    assert_eq!(
        hex(&doc_fixture("replica-fetch-response")),
        hex(&frame),
        "PROTOCOL.md, replica-fetch-response"
    );
    let (header, body) = split(&frame);
    assert_eq!(PeerResponse::decode(&header, body), Ok(Ok(response)));
}

/// PROTOCOL.md's table of peer bounds gives the replication limits' values.
#[test]
fn protocol_md_gives_the_replication_bounds() {
    let rows = doc_table("peer-bounds");
    let value = |bound: &str| -> String {
        rows.iter()
            .find(|row| row[0] == bound)
            .unwrap_or_else(|| panic!("a row for {bound}"))[1]
            .clone()
    };
    assert_eq!(
        value("Partitions per ReplicaFetch request"),
        REPLICA_FETCH_PARTITIONS_MAX.to_string()
    );
    assert_eq!(
        value("ReplicaFetch `max_wait_ms`"),
        format!("{} s", REPLICA_FETCH_WAIT_MS_MAX / 1000)
    );
    assert_eq!(
        value("ReplicaFetch `bytes_max`"),
        format!("{} MiB", REPLICA_FETCH_BYTES_MAX >> 20)
    );
    assert_eq!(
        value("Record bytes per ReplicaFetch answer"),
        format!("{} MiB", REPLICA_FETCH_RECORDS_BYTES_MAX >> 20)
    );
    assert_eq!(
        value("Partitions per OffsetForLeaderEpoch request"),
        EPOCH_END_PARTITIONS_MAX.to_string()
    );
    assert_eq!(
        value("Node ids in an AlterIsr `isr`"),
        crate::peer::ISR_NODES_MAX.to_string()
    );
    assert_eq!(
        value("Partitions per forwarded ElectLeaders, and results in its answer"),
        crate::peer::ELECTIONS_MAX.to_string()
    );
    assert_eq!(
        value("Partitions per forwarded AlterPartitionReassignments, and results in its answer"),
        crate::peer::REASSIGNMENTS_MAX.to_string()
    );
    assert_eq!(
        value("Node ids per replica list of a forwarded AlterPartitionReassignments or its answer"),
        crate::limits::REASSIGNMENT_REPLICAS_MAX.to_string()
    );
}
