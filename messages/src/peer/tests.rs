//! The peer protocol: round trips, decoders on hostile bytes, the kind range, limits, and the
//! golden bytes and tables PROTOCOL.md's peer section repeats.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::protocol::{ErrorCode, FRAME_HEADER_BYTES, read_header};

/// The header and body of one whole frame.
pub(super) fn split(frame: &[u8]) -> (FrameHeader, &[u8]) {
    let header_bytes = frame
        .first_chunk::<FRAME_HEADER_BYTES>()
        .expect("a whole header");
    let (header, body_bytes) = read_header(header_bytes).expect("a valid header");
    assert_eq!(
        frame.len(),
        FRAME_HEADER_BYTES + body_bytes,
        "one whole frame"
    );
    (header, &frame[FRAME_HEADER_BYTES..])
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unhex(text: &str) -> Vec<u8> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .map(|pair| u8::from_str_radix(pair, 16).expect("hex"))
        .collect()
}

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<u32>().prop_map(NodeId)
}

fn channel() -> impl Strategy<Value = PeerChannel> {
    prop_oneof![Just(PeerChannel::Control), Just(PeerChannel::Data)]
}

fn payload() -> impl Strategy<Value = RaftPayload> {
    vec(any::<u8>(), 0..256).prop_map(|payload| RaftPayload { payload })
}

fn offsets_query() -> impl Strategy<Value = PartitionOffsetsQuery> {
    (
        "[a-z0-9._-]{1,32}",
        any::<u32>(),
        proptest::option::of(any::<i64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(topic, partition, timestamp, offset)| PartitionOffsetsQuery {
                topic,
                partition: PartitionId(partition),
                offset_for_timestamp_ms: timestamp,
                timestamp_of_offset: offset.map(Offset),
            },
        )
}

fn offsets_answer() -> impl Strategy<Value = PartitionOffsetsAnswer> {
    let offset = || proptest::option::of(any::<u64>().prop_map(Offset));
    (
        "[a-z0-9._-]{1,32}",
        any::<u32>(),
        proptest::option::of((
            prop::sample::select(
                &[
                    ErrorCode::NotLeader,
                    ErrorCode::UnknownTopic,
                    ErrorCode::PartitionOffline,
                ][..],
            ),
            ".{0,32}",
        )),
        (offset(), offset(), offset(), offset()),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(
            |(topic, partition, error, (start, high, end, by_time), timestamp)| {
                PartitionOffsetsAnswer {
                    topic,
                    partition: PartitionId(partition),
                    error: error.map(|(code, message)| ResponseError::new(code, message)),
                    log_start_offset: start,
                    high_watermark: high,
                    log_end_offset: end,
                    offset_for_timestamp: by_time,
                    timestamp_of_offset_ms: timestamp,
                }
            },
        )
}

/// A sorted set of node ids without duplicates, and one of them as the leader.
fn isr_and_leader() -> impl Strategy<Value = (Vec<u32>, u32)> {
    proptest::collection::btree_set(any::<u32>(), 1..=ISR_NODES_MAX).prop_flat_map(|isr| {
        let isr: Vec<u32> = isr.into_iter().collect();
        let count = isr.len();
        (Just(isr), 0..count).prop_map(|(isr, index)| {
            let leader = isr[index];
            (isr, leader)
        })
    })
}

fn alter_isr() -> impl Strategy<Value = ForwardedAdmin> {
    (
        "[a-z0-9._-]{1,32}",
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        isr_and_leader(),
    )
        .prop_map(
            |(topic, partition, leader_epoch, partition_epoch, (isr, leader))| {
                ForwardedAdmin::AlterIsr {
                    topic,
                    partition,
                    leader,
                    leader_epoch,
                    partition_epoch,
                    isr,
                }
            },
        )
}

fn forward_response() -> impl Strategy<Value = ControllerForwardResponse> {
    (
        any::<u16>(),
        ".{0,32}",
        proptest::option::of((any::<u64>(), any::<u16>())),
        proptest::option::of((any::<u32>(), any::<u32>(), isr_and_leader())),
    )
        .prop_map(
            |(error_code, message, producer, isr)| ControllerForwardResponse {
                error_code,
                message,
                producer,
                isr: isr.map(
                    |(leader_epoch, partition_epoch, (isr, _))| CommittedIsrWire {
                        leader_epoch,
                        partition_epoch,
                        isr,
                    },
                ),
                elections: None,
                reassignments: None,
            },
        )
        .prop_flat_map(|response| {
            (
                Just(response),
                proptest::option::of(elections()),
                proptest::option::of(vec(reassignment_result(), 0..4)),
            )
                .prop_map(|(response, elections, reassignments)| {
                    ControllerForwardResponse {
                        elections,
                        reassignments,
                        ..response
                    }
                })
        })
}

fn reassignment_result() -> impl Strategy<Value = ReassignmentResultWire> {
    (
        "[a-z0-9._-]{1,32}",
        any::<u32>(),
        any::<u16>(),
        ".{0,16}",
        vec(any::<u32>(), 0..4),
        proptest::option::of(vec(any::<u32>(), 0..4)),
        proptest::option::of(any::<u32>()),
        any::<u32>(),
    )
        .prop_map(
            |(
                topic,
                partition,
                error_code,
                message,
                replicas,
                target_replicas,
                leader,
                leader_epoch,
            )| {
                ReassignmentResultWire {
                    topic,
                    partition,
                    error_code,
                    message,
                    replicas,
                    target_replicas,
                    leader,
                    leader_epoch,
                }
            },
        )
}

fn reassign_partitions() -> impl Strategy<Value = ForwardedAdmin> {
    let reassignment = (
        "[a-z0-9._-]{1,32}",
        any::<u32>(),
        vec(
            any::<u32>(),
            0..=crate::limits::REASSIGNMENT_REPLICAS_MAX as usize,
        ),
    )
        .prop_map(|(topic, partition, replicas)| ReassignmentWire {
            topic,
            partition,
            replicas,
        });
    (vec(reassignment, 0..4), any::<u32>()).prop_map(|(partitions, timeout_ms)| {
        ForwardedAdmin::AlterPartitionReassignments {
            partitions,
            timeout_ms,
        }
    })
}

fn elections() -> impl Strategy<Value = ElectionsWire> {
    let result = (
        "[a-z0-9._-]{1,32}",
        any::<u32>(),
        any::<u16>(),
        ".{0,16}",
        proptest::option::of(any::<u32>()),
        any::<u32>(),
    )
        .prop_map(
            |(topic, partition, error_code, message, leader, leader_epoch)| ElectionResultWire {
                topic,
                partition,
                error_code,
                message,
                leader,
                leader_epoch,
            },
        );
    (vec(result, 0..4), any::<bool>()).prop_map(|(results, more)| ElectionsWire { results, more })
}

fn elect_leaders() -> impl Strategy<Value = ForwardedAdmin> {
    let election = (
        "[a-z0-9._-]{1,32}",
        any::<u32>(),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(topic, partition, to)| ElectionWire {
            topic,
            partition,
            to,
        });
    (vec(election, 0..4), any::<bool>(), any::<u32>()).prop_map(
        |(partitions, preferred, timeout_ms)| ForwardedAdmin::ElectLeaders {
            partitions,
            preferred,
            timeout_ms,
        },
    )
}

fn service_request() -> impl Strategy<Value = PeerRequest> {
    prop_oneof![
        payload().prop_map(PeerRequest::RaftAppendEntries),
        payload().prop_map(PeerRequest::RaftVote),
        payload().prop_map(PeerRequest::RaftInstallSnapshot),
        vec(offsets_query(), 0..8).prop_map(|partitions| PeerRequest::PartitionOffsets(
            PartitionOffsetsRequest { partitions }
        )),
        replication::tests::replica_fetch_request().prop_map(PeerRequest::ReplicaFetch),
        replication::tests::epoch_end_request().prop_map(PeerRequest::OffsetForLeaderEpoch),
        alter_isr()
            .prop_map(|admin| PeerRequest::ControllerForward(ControllerForwardRequest { admin })),
        elect_leaders()
            .prop_map(|admin| PeerRequest::ControllerForward(ControllerForwardRequest { admin })),
        reassign_partitions()
            .prop_map(|admin| PeerRequest::ControllerForward(ControllerForwardRequest { admin })),
    ]
}

fn service_response() -> impl Strategy<Value = PeerResponse> {
    prop_oneof![
        payload().prop_map(PeerResponse::RaftAppendEntries),
        payload().prop_map(PeerResponse::RaftVote),
        payload().prop_map(PeerResponse::RaftInstallSnapshot),
        vec(offsets_answer(), 0..8).prop_map(|partitions| PeerResponse::PartitionOffsets(
            PartitionOffsetsResponse { partitions }
        )),
        replication::tests::replica_fetch_response().prop_map(PeerResponse::ReplicaFetch),
        replication::tests::epoch_end_response().prop_map(PeerResponse::OffsetForLeaderEpoch),
        forward_response().prop_map(PeerResponse::ControllerForward),
    ]
}

fn handshake_request() -> impl Strategy<Value = PeerHandshakeRequest> {
    (
        "[a-f0-9-]{0,64}",
        node_id(),
        node_id(),
        channel(),
        "[0-9.]{0,16}",
    )
        .prop_map(
            |(cluster_id, node_id, target_node_id, channel, software_version)| {
                PeerHandshakeRequest {
                    cluster_id,
                    node_id,
                    target_node_id,
                    channel,
                    software_version,
                    kinds: PeerKind::handshake_list(),
                }
            },
        )
}

fn failure() -> impl Strategy<Value = PeerFailure> {
    (
        prop::sample::select(PeerErrorCode::ALL),
        ".{0,64}",
        proptest::option::of(("[a-z0-9-]{0,64}", node_id())),
    )
        .prop_map(|(code, message, identity)| match identity {
            Some((cluster_id, node_id)) => {
                PeerFailure::refusal(code, message, &cluster_id, node_id)
            }
            None => PeerFailure::new(code, message),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_service_request_round_trips(request in service_request(), correlation_id in any::<u64>()) {
        let frame = request.encode(correlation_id).unwrap();
        let (header, body) = split(&frame);
        prop_assert_eq!(header.correlation_id, correlation_id);
        prop_assert!(!header.is_response());
        prop_assert_eq!(PeerRequest::decode(&header, body).unwrap(), request);
    }

    #[test]
    fn every_service_response_round_trips(response in service_response(), correlation_id in any::<u64>()) {
        let frame = response.encode(correlation_id).unwrap();
        let (header, body) = split(&frame);
        prop_assert!(header.is_response());
        prop_assert_eq!(PeerResponse::decode(&header, body).unwrap(), Ok(response));
    }

    #[test]
    fn handshakes_round_trip(request in handshake_request(), correlation_id in any::<u64>()) {
        let frame = encode_request_body(PeerKind::PeerHandshake, correlation_id, &request).unwrap();
        let (header, body) = split(&frame);
        let decoded: PeerHandshakeRequest =
            decode_request_body(&header, PeerKind::PeerHandshake, body).unwrap();
        prop_assert_eq!(decoded, request.clone());

        let answer = PeerHandshakeResponse {
            cluster_id: request.cluster_id,
            node_id: request.target_node_id,
            software_version: request.software_version,
            kinds: request.kinds,
        };
        let frame = encode_response_body(PeerKind::PeerHandshake, correlation_id, &answer).unwrap();
        let (header, body) = split(&frame);
        let decoded: Result<PeerHandshakeResponse, PeerFailure> =
            decode_response_body(&header, PeerKind::PeerHandshake, body).unwrap();
        prop_assert_eq!(decoded, Ok(answer));
    }

    /// A failure decodes as the failure for every kind, link or service, and keeps the
    /// refusing node's identity.
    #[test]
    fn failures_round_trip_for_every_kind(
        failure in failure(),
        kind in prop::sample::select(PeerKind::ALL),
        correlation_id in any::<u64>(),
    ) {
        let request = FrameHeader {
            length: 12,
            kind: kind.code(),
            version: 1,
            correlation_id,
        };
        let frame = encode_failure(&request, &failure).unwrap();
        let (header, body) = split(&frame);
        prop_assert_eq!(header.request_kind(), kind.code());
        prop_assert_eq!(header.correlation_id, correlation_id);
        let decoded: Result<PingResponse, PeerFailure> = if kind == PeerKind::Ping {
            decode_response_body(&header, kind, body).unwrap()
        } else if kind == PeerKind::PeerHandshake {
            decode_response_body::<PeerHandshakeResponse>(&header, kind, body)
                .unwrap()
                .map(|_| PingResponse {})
        } else {
            PeerResponse::decode(&header, body).unwrap().map(|_| PingResponse {})
        };
        prop_assert_eq!(decoded, Err(failure));
    }

    /// No sequence of bytes makes a peer decoder panic, whatever header it comes with.
    #[test]
    fn decoders_survive_arbitrary_bodies(
        body in vec(any::<u8>(), 0..128),
        kind in prop::sample::select(PeerKind::ALL),
        response in any::<bool>(),
    ) {
        let header = FrameHeader {
            length: 12 + body.len() as u32,
            kind: kind.code() | if response { crate::protocol::RESPONSE_BIT } else { 0 },
            version: 1,
            correlation_id: 1,
        };
        let _ = PeerRequest::decode(&header, &body);
        let _ = PeerResponse::decode(&header, &body);
        let _ = decode_request_body::<PeerHandshakeRequest>(&header, PeerKind::PeerHandshake, &body);
        let _ = decode_response_body::<PeerHandshakeResponse>(&header, PeerKind::PeerHandshake, &body);
        let _ = decode_payload::<serde::de::IgnoredAny>(&body);
    }

    /// Flipping any byte of a valid frame's body gives a value or an error, never a panic.
    #[test]
    fn mutated_handshakes_fail_cleanly(
        request in handshake_request(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut frame = encode_request_body(PeerKind::PeerHandshake, 1, &request).unwrap();
        let body_len = frame.len() - FRAME_HEADER_BYTES;
        frame[FRAME_HEADER_BYTES + position.index(body_len)] = byte;
        let (header, body) = split(&frame);
        let _ = decode_request_body::<PeerHandshakeRequest>(&header, PeerKind::PeerHandshake, body);
    }
}

#[test]
fn kinds_lie_in_the_peer_range_and_are_unique() {
    let mut codes: Vec<u16> = PeerKind::ALL.iter().map(|k| k.code()).collect();
    assert!(codes.iter().all(|&c| PeerKind::in_peer_range(c)));
    let count = codes.len();
    codes.dedup();
    assert_eq!(codes.len(), count, "codes are in order and unique");
    for kind in PeerKind::ALL {
        assert_eq!(PeerKind::from_code(kind.code()), Some(*kind));
        assert_eq!(kind.is_service(), kind.code() >= 0x4010);
    }
    // Every client kind is outside the range, so neither protocol mistakes the other's frames.
    for kind in crate::protocol::RequestKind::ALL {
        assert!(!PeerKind::in_peer_range(kind.code()), "{}", kind.name());
    }
}

#[test]
fn client_frames_unknown_kinds_and_versions_are_told_apart() {
    let header = |kind: u16, version: u16| FrameHeader {
        length: 13,
        kind,
        version,
        correlation_id: 9,
    };
    // A client's Handshake (kind 0) on the peer port.
    assert_eq!(
        PeerRequest::decode(&header(0, 1), &[0x80]),
        Err(PeerProtocolError::NotPeerKind { kind: 0 })
    );
    assert_eq!(
        PeerRequest::decode(&header(0x40fe, 1), &[0x80]),
        Err(PeerProtocolError::UnknownKind { kind: 0x40fe })
    );
    assert_eq!(
        PeerRequest::decode(&header(PeerKind::RaftVote.code(), 2), &[0x80]),
        Err(PeerProtocolError::UnsupportedVersion {
            kind: PeerKind::RaftVote,
            version: 2
        })
    );
    // Link kinds are the link's to answer, not the service's.
    assert!(matches!(
        PeerRequest::decode(&header(PeerKind::Ping.code(), 1), &[0x80]),
        Err(PeerProtocolError::UnexpectedKind { .. })
    ));
    // A response where a request belongs.
    assert!(matches!(
        PeerRequest::decode(&header(PeerKind::RaftVote.code() | 0x8000, 1), &[0x80]),
        Err(PeerProtocolError::WrongDirection { .. })
    ));
    // An answer of another kind than the request's.
    let frame = PeerResponse::RaftVote(RaftPayload::default())
        .encode(3)
        .unwrap();
    let (h, body) = split(&frame);
    assert!(matches!(
        decode_response_body::<RaftPayload>(&h, PeerKind::RaftAppendEntries, body),
        Err(PeerProtocolError::UnexpectedKind { .. })
    ));
    for (error, code) in [
        (
            PeerProtocolError::NotPeerKind { kind: 0 },
            PeerErrorCode::UnknownKind,
        ),
        (
            PeerProtocolError::UnsupportedVersion {
                kind: PeerKind::RaftVote,
                version: 2,
            },
            PeerErrorCode::UnsupportedVersion,
        ),
        (PeerProtocolError::Truncated, PeerErrorCode::CorruptFrame),
    ] {
        assert_eq!(error.error_code(), code);
        assert!(!error.closes_connection());
    }
}

/// Peer frames pass the client protocol's header check: an oversized one is refused from its
/// 16 header bytes, with the code the peer listener answers before closing.
#[test]
fn oversized_peer_frames_are_refused_from_the_header() {
    let header = FrameHeader {
        length: crate::limits::FRAME_BYTES_MAX,
        kind: PeerKind::RaftAppendEntries.code(),
        version: 1,
        correlation_id: 5,
    };
    let error = PeerProtocolError::from(read_header(&header.encode()).unwrap_err());
    assert_eq!(error.error_code(), PeerErrorCode::FrameTooLarge);
    assert!(error.closes_connection());
    // An encoder never writes one.
    let big = PeerRequest::RaftAppendEntries(RaftPayload {
        payload: vec![0; crate::limits::FRAME_BYTES_MAX as usize],
    });
    assert!(matches!(
        big.encode(1),
        Err(PeerProtocolError::EncodedTooLarge { .. })
    ));
}

#[test]
fn handshake_fields_are_bounded() {
    let request = PeerHandshakeRequest {
        cluster_id: "c".repeat(CLUSTER_ID_BYTES_MAX as usize + 1),
        node_id: NodeId(1),
        target_node_id: NodeId(2),
        channel: PeerChannel::Control,
        software_version: "0.0.0".into(),
        kinds: PeerKind::handshake_list(),
    };
    let frame = encode_request_body(PeerKind::PeerHandshake, 1, &request).unwrap();
    let (header, body) = split(&frame);
    assert_eq!(
        decode_request_body::<PeerHandshakeRequest>(&header, PeerKind::PeerHandshake, body),
        Err(PeerProtocolError::FieldTooLarge {
            field: "cluster_id bytes",
            value: u64::from(CLUSTER_ID_BYTES_MAX) + 1,
            max: u64::from(CLUSTER_ID_BYTES_MAX),
        })
    );
    let at_limit = PeerHandshakeRequest {
        cluster_id: "c".repeat(CLUSTER_ID_BYTES_MAX as usize),
        ..request
    };
    let frame = encode_request_body(PeerKind::PeerHandshake, 1, &at_limit).unwrap();
    let (header, body) = split(&frame);
    assert!(
        decode_request_body::<PeerHandshakeRequest>(&header, PeerKind::PeerHandshake, body).is_ok()
    );
}

/// A PartitionOffsets request or answer of more than `PARTITION_OFFSETS_PARTITIONS_MAX`
/// partitions is refused when decoded, so a peer cannot make a node allocate or read without
/// bound; one at the limit, of the longest topic names and error messages, still fits a frame.
#[test]
fn partition_offsets_are_bounded_and_the_largest_answer_fits_a_frame() {
    let max = PARTITION_OFFSETS_PARTITIONS_MAX as usize;
    let topic = "t".repeat(crate::limits::TOPIC_NAME_BYTES_MAX as usize);
    let query = PartitionOffsetsQuery {
        topic: topic.clone(),
        partition: PartitionId(u32::MAX),
        offset_for_timestamp_ms: Some(i64::MIN),
        timestamp_of_offset: Some(Offset(u64::MAX)),
    };
    let over = PeerRequest::PartitionOffsets(PartitionOffsetsRequest {
        partitions: vec![query.clone(); max + 1],
    });
    let frame = over.encode(1).unwrap();
    let (header, body) = split(&frame);
    assert_eq!(
        PeerRequest::decode(&header, body),
        Err(PeerProtocolError::FieldTooLarge {
            field: "partitions",
            value: max as u64 + 1,
            max: max as u64,
        })
    );
    let at_limit = PeerRequest::PartitionOffsets(PartitionOffsetsRequest {
        partitions: vec![query; max],
    });
    let frame = at_limit.encode(1).unwrap();
    let (header, body) = split(&frame);
    assert_eq!(PeerRequest::decode(&header, body).unwrap(), at_limit);

    // The largest answer: every field set to its widest value, and an error message at its
    // limit in a character that takes 4 bytes (so the message is cut at a boundary).
    let widest = PartitionOffsetsAnswer {
        topic,
        partition: PartitionId(u32::MAX),
        error: Some(ResponseError::new(
            ErrorCode::CoordinatorLoadInProgress,
            "\u{1F600}".repeat(crate::limits::ERROR_MESSAGE_BYTES_MAX as usize),
        )),
        log_start_offset: Some(Offset(u64::MAX)),
        high_watermark: Some(Offset(u64::MAX)),
        log_end_offset: Some(Offset(u64::MAX)),
        offset_for_timestamp: Some(Offset(u64::MAX)),
        timestamp_of_offset_ms: Some(i64::MIN),
    };
    let one = PeerResponse::PartitionOffsets(PartitionOffsetsResponse {
        partitions: vec![widest.clone()],
    })
    .encode(1)
    .unwrap();
    let empty = PeerResponse::PartitionOffsets(PartitionOffsetsResponse::default())
        .encode(1)
        .unwrap();
    let entry_fields = one.len()
        - empty.len()
        - crate::limits::TOPIC_NAME_BYTES_MAX as usize
        - crate::limits::ERROR_MESSAGE_BYTES_MAX as usize;
    assert!(
        entry_fields <= PARTITION_OFFSETS_ENTRY_FIELDS_BYTES_MAX as usize,
        "an entry's fields take {entry_fields} bytes, above the budget"
    );
    let largest = PeerResponse::PartitionOffsets(PartitionOffsetsResponse {
        partitions: vec![widest; max],
    });
    let frame = largest
        .encode(1)
        .expect("the largest answer fits one frame");
    let (header, body) = split(&frame);
    assert_eq!(PeerResponse::decode(&header, body).unwrap(), Ok(largest));
}

fn alter_isr_request(leader: u32, isr: Vec<u32>) -> PeerRequest {
    PeerRequest::ControllerForward(ControllerForwardRequest {
        admin: ForwardedAdmin::AlterIsr {
            topic: "orders".into(),
            partition: 3,
            leader,
            leader_epoch: 4,
            partition_epoch: 7,
            isr,
        },
    })
}

fn decode_request(request: &PeerRequest) -> Result<PeerRequest, PeerProtocolError> {
    let frame = request.encode(1).expect("the request encodes");
    let (header, body) = split(&frame);
    PeerRequest::decode(&header, body)
}

/// An ISR proposal the controller could not compare with its own state is refused when
/// decoded: unsorted, with a node twice, without the proposing leader, or longer than
/// `ISR_NODES_MAX`.
#[test]
fn alter_isr_proposals_are_sorted_unique_bounded_and_contain_the_leader() {
    let fine = alter_isr_request(2, vec![1, 2, 5]);
    assert_eq!(decode_request(&fine), Ok(fine));
    let unsorted = PeerProtocolError::FieldInvalid {
        field: "isr",
        rule: "sorted, without duplicates",
    };
    assert_eq!(
        decode_request(&alter_isr_request(2, vec![2, 1])),
        Err(unsorted.clone())
    );
    assert_eq!(
        decode_request(&alter_isr_request(2, vec![1, 2, 2])),
        Err(unsorted)
    );
    let no_leader = PeerProtocolError::FieldInvalid {
        field: "isr",
        rule: "contains the proposing leader",
    };
    assert_eq!(
        decode_request(&alter_isr_request(3, vec![1, 2])),
        Err(no_leader.clone())
    );
    assert_eq!(
        decode_request(&alter_isr_request(3, Vec::new())),
        Err(no_leader)
    );
    let most: Vec<u32> = (0..ISR_NODES_MAX as u32).collect();
    let at_limit = alter_isr_request(0, most.clone());
    assert_eq!(decode_request(&at_limit), Ok(at_limit));
    let mut past = most;
    past.push(ISR_NODES_MAX as u32);
    assert_eq!(
        decode_request(&alter_isr_request(0, past)),
        Err(PeerProtocolError::FieldTooLarge {
            field: "isr",
            value: ISR_NODES_MAX as u64 + 1,
            max: ISR_NODES_MAX as u64,
        })
    );
    let long_topic = PeerRequest::ControllerForward(ControllerForwardRequest {
        admin: ForwardedAdmin::AlterIsr {
            topic: "t".repeat(crate::limits::TOPIC_NAME_BYTES_MAX as usize + 1),
            partition: 0,
            leader: 1,
            leader_epoch: 0,
            partition_epoch: 0,
            isr: vec![1],
        },
    });
    assert!(matches!(
        decode_request(&long_topic),
        Err(PeerProtocolError::FieldTooLarge {
            field: "topic name bytes",
            ..
        })
    ));
}

/// The controller's answer to AlterIsr travels in `isr`, under the same rules as a proposal's
/// ISR; an answer from a build that does not know the field decodes with `isr` absent.
#[test]
fn forwarded_answers_carry_the_committed_isr() {
    let answer = |isr: Vec<u32>| {
        PeerResponse::ControllerForward(ControllerForwardResponse {
            isr: Some(CommittedIsrWire {
                leader_epoch: 4,
                partition_epoch: 8,
                isr,
            }),
            ..ControllerForwardResponse::default()
        })
    };
    let decode = |response: &PeerResponse| {
        let frame = response.encode(1).unwrap();
        let (header, body) = split(&frame);
        PeerResponse::decode(&header, body).map(|r| r.unwrap())
    };
    assert_eq!(decode(&answer(vec![1, 2])), Ok(answer(vec![1, 2])));
    assert_eq!(
        decode(&answer(vec![2, 1])),
        Err(PeerProtocolError::FieldInvalid {
            field: "isr",
            rule: "sorted, without duplicates",
        })
    );

    // {"error_code": 0, "message": "", "producer": nil}, as the previous version wrote it.
    #[derive(serde::Serialize)]
    struct Before {
        error_code: u16,
        message: String,
        producer: Option<(u64, u16)>,
    }
    let frame = encode_response_body(
        PeerKind::ControllerForward,
        1,
        &Before {
            error_code: 0,
            message: String::new(),
            producer: None,
        },
    )
    .unwrap();
    let (header, body) = split(&frame);
    assert_eq!(
        PeerResponse::decode(&header, body).unwrap(),
        Ok(PeerResponse::ControllerForward(
            ControllerForwardResponse::default()
        ))
    );
}

#[test]
fn refusals_carry_the_refusing_identity_and_close() {
    let failure = PeerFailure::refusal(
        PeerErrorCode::ClusterIdMismatch,
        "x".repeat(2000),
        "cluster-b",
        NodeId(2),
    );
    assert_eq!(failure.message.len(), PEER_ERROR_MESSAGE_BYTES_MAX as usize);
    assert_eq!(failure.cluster_id.as_deref(), Some("cluster-b"));
    assert_eq!(failure.node_id, Some(NodeId(2)));
    assert!(!failure.retriable);
    for code in [
        PeerErrorCode::ClusterIdMismatch,
        PeerErrorCode::NodeIdMismatch,
        PeerErrorCode::NodeNotAdmitted,
        PeerErrorCode::DuplicateNodeId,
        PeerErrorCode::HandshakeRequired,
    ] {
        assert!(code.closes_connection() && !code.is_retriable(), "{code:?}");
    }
    assert!(PeerErrorCode::Overloaded.is_retriable());
    assert!(!PeerErrorCode::Overloaded.closes_connection());
}

#[test]
fn error_codes_are_stable_and_unique() {
    let codes: Vec<u16> = PeerErrorCode::ALL.iter().map(|c| c.code()).collect();
    assert_eq!(codes, (1..=12).collect::<Vec<u16>>());
    for code in PeerErrorCode::ALL {
        assert_eq!(PeerErrorCode::from_code(code.code()), Some(*code));
    }
}

/// The Raft network encodes openraft's messages with `encode_payload`; any serde value comes
/// back equal, and nesting is bounded exactly at `PAYLOAD_DEPTH_MAX`.
#[test]
fn payloads_round_trip_and_nesting_is_bounded() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Vote {
        term: u64,
        node: Option<u64>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        outcome: Result<u32, String>,
    }
    let vote = Vote {
        term: 7,
        node: Some(3),
        data: vec![1, 2, 3],
        outcome: Err("no".into()),
    };
    let bytes = encode_payload(&vote).unwrap();
    assert_eq!(decode_payload::<Vote>(&bytes).unwrap(), vote);

    let nested = |levels: usize| {
        let mut bytes = vec![0x91; levels - 1]; // arrays of one element
        bytes.push(0x90); // the innermost, empty
        bytes
    };
    let at_limit = nested(PAYLOAD_DEPTH_MAX as usize);
    assert!(decode_payload::<serde::de::IgnoredAny>(&at_limit).is_ok());
    let past = nested(PAYLOAD_DEPTH_MAX as usize + 1);
    assert_eq!(
        decode_payload::<serde::de::IgnoredAny>(&past).map(|_| ()),
        Err(PeerProtocolError::TooDeep {
            max: PAYLOAD_DEPTH_MAX
        })
    );
    let mut trailing = bytes.clone();
    trailing.push(0xc0);
    assert_eq!(
        decode_payload::<Vote>(&trailing),
        Err(PeerProtocolError::TrailingBytes)
    );
}

// Golden bytes and tables, repeated in PROTOCOL.md's peer section.

const PROTOCOL_MD: &str = include_str!("../../../PROTOCOL.md");

pub(super) fn doc_fixture(name: &str) -> Vec<u8> {
    let marker = format!("<!-- fixture: {name} -->");
    let start = PROTOCOL_MD
        .find(&marker)
        .unwrap_or_else(|| panic!("PROTOCOL.md has no {marker}"));
    let rest = &PROTOCOL_MD[start + marker.len()..];
    let open = rest
        .find("```hex\n")
        .expect("a ```hex block follows the marker")
        + 7;
    let close = rest[open..].find("```").expect("the block is closed");
    unhex(&rest[open..open + close])
}

pub(super) fn doc_table(name: &str) -> Vec<Vec<String>> {
    let begin = format!("<!-- begin {name} -->");
    let end = format!("<!-- end {name} -->");
    let start = PROTOCOL_MD.find(&begin).expect("table start") + begin.len();
    let stop = PROTOCOL_MD.find(&end).expect("table end");
    PROTOCOL_MD[start..stop]
        .lines()
        .filter(|line| line.starts_with('|'))
        .skip(2)
        .map(|line| {
            line.trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect()
}

fn golden_handshake() -> PeerHandshakeRequest {
    PeerHandshakeRequest {
        cluster_id: "c1".into(),
        node_id: NodeId(1),
        target_node_id: NodeId(2),
        channel: PeerChannel::Control,
        software_version: "0.1.0".into(),
        kinds: vec![KindVersions {
            kind: PeerKind::Ping.code(),
            name: "Ping".into(),
            version_min: 1,
            version_max: 1,
        }],
    }
}

/// PROTOCOL.md shows the same bytes: the documented example is the tested one.
#[test]
fn golden_peer_frames_match_protocol_md() {
    let frame = encode_request_body(PeerKind::PeerHandshake, 1, &golden_handshake()).unwrap();
    assert_eq!(
        hex(&doc_fixture("peer-handshake-request")),
        hex(&frame),
        "PROTOCOL.md, peer-handshake-request"
    );
    let (header, body) = split(&frame);
    assert_eq!(
        decode_request_body::<PeerHandshakeRequest>(&header, PeerKind::PeerHandshake, body),
        Ok(golden_handshake())
    );

    let refusal = PeerFailure::refusal(
        PeerErrorCode::ClusterIdMismatch,
        "cluster c1 is not c2",
        "c2",
        NodeId(2),
    );
    let request = FrameHeader::parse(frame[..FRAME_HEADER_BYTES].try_into().unwrap());
    let frame = encode_failure(&request, &refusal).unwrap();
    assert_eq!(
        hex(&doc_fixture("peer-handshake-refusal")),
        hex(&frame),
        "PROTOCOL.md, peer-handshake-refusal"
    );
}

/// PROTOCOL.md's peer kind table lists every kind with its number, name and versions.
#[test]
fn protocol_md_lists_every_peer_kind() {
    let rows: Vec<Vec<String>> = doc_table("peer-kinds")
        .into_iter()
        .map(|row| row[..3].to_vec())
        .collect();
    let expected: Vec<Vec<String>> = PeerKind::ALL
        .iter()
        .map(|kind| {
            vec![
                format!("{:#06x}", kind.code()),
                format!("`{}`", kind.name()),
                format!("{}-{}", kind.version_min(), kind.version_max()),
            ]
        })
        .collect();
    assert_eq!(rows, expected);
}

/// PROTOCOL.md's peer error table lists every code with its name, retriable flag and meaning.
#[test]
fn protocol_md_lists_every_peer_error() {
    let rows = doc_table("peer-error-codes");
    let expected: Vec<Vec<String>> = PeerErrorCode::ALL
        .iter()
        .map(|code| {
            vec![
                code.code().to_string(),
                format!("`{}`", code.name()),
                if code.is_retriable() { "yes" } else { "no" }.to_owned(),
                code.meaning().to_owned(),
            ]
        })
        .collect();
    assert_eq!(rows, expected);
}
