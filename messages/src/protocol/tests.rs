//! Tests of the wire protocol, at its two boundaries: bytes in (the frame parser and the body
//! decoders, fed valid, mutated and hostile bytes) and bytes out (golden fixtures that
//! PROTOCOL.md repeats, and the hand-written fetch answer against serde's).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

use super::codec::msgpack;
use super::*;
use crate::batch::{BatchBuilder, Compression};
use crate::limits::{
    BODY_DEPTH_MAX, CLUSTER_BODY_FIELDS_BYTES_MAX, CLUSTER_PARTITION_FIELDS_BYTES_MAX,
    CLUSTER_REPLICA_FOLLOWERS_LISTED_MAX, CLUSTER_REPLICA_STATUS_BYTES_MAX,
    CLUSTER_TOPIC_FIELDS_BYTES_MAX, ERROR_MESSAGE_BYTES_MAX, FETCH_BODY_FIELDS_BYTES_MAX,
    FETCH_PARTITION_FIELDS_BYTES_MAX, FETCH_TOPIC_FIELDS_BYTES_MAX, FRAME_BYTES_MAX,
    PARTITIONS_PER_REQUEST_MAX, PRODUCER_EPOCH_MAX, PRODUCER_ID_MAX, REASSIGNMENT_REPLICAS_MAX,
    TOPIC_NAME_BYTES_MAX, TOPICS_PER_REQUEST_MAX,
};
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionId, ProducerEpoch, ProducerId};

// ---------------------------------------------------------------------------------------------
// Heap accounting: a global allocator that tracks, per thread, the bytes held and their peak,
// so a test can bound what decoding hostile bytes allocates.

struct CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

thread_local! {
    static HELD_BYTES: Cell<i64> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn account(delta: i64) {
    // `try_with`: the allocator also runs while a thread's locals are being torn down.
    let _ = HELD_BYTES.try_with(|held| {
        let now = held.get() + delta;
        held.set(now);
        let _ = PEAK_BYTES.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and only
// adds bookkeeping in thread-locals that never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            account(layout.size() as i64);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            account(layout.size() as i64);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            account(new_size as i64 - layout.size() as i64);
        }
        new
    }
}

/// Runs `f` and returns the most heap bytes this thread held at once during it, above what it
/// held before.
fn peak_heap_bytes<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let base = HELD_BYTES.with(Cell::get);
    PEAK_BYTES.with(|peak| peak.set(base));
    let result = f();
    let peak = PEAK_BYTES.with(Cell::get);
    (result, (peak - base).max(0) as u64)
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn whole_frame(bytes: &[u8]) -> RawFrame {
    match parse_frame(bytes) {
        Ok(FrameParse::Complete(frame)) => {
            assert_eq!(frame.frame_bytes(), bytes.len(), "one frame, nothing after");
            frame
        }
        other => panic!("expected one whole frame, got {other:?}"),
    }
}

fn decode_request(bytes: &[u8]) -> Result<Request, ProtocolError> {
    let frame = whole_frame(bytes);
    Request::decode(&frame.header, &bytes[frame.body])
}

fn decode_response(bytes: &[u8]) -> Result<Response, ProtocolError> {
    let frame = whole_frame(bytes);
    Response::decode(&frame.header, &bytes[frame.body])
}

/// A frame with a hand-made body.
fn frame_with_body(kind: u16, version: u16, body: &[u8]) -> Vec<u8> {
    let header = frame::header_for_body(kind, version, 77, body.len()).unwrap();
    let mut out = header.encode().to_vec();
    out.extend_from_slice(body);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex digits to bytes; whitespace is ignored, and so is everything from `#` to the end of a
/// line (PROTOCOL.md annotates its examples that way).
fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .lines()
        .flat_map(|line| line.split('#').next().unwrap_or_default().bytes())
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn topic_partition_error() -> ResponseError {
    ResponseError::not_leader(Some(NodeId(2)), "node 1 does not lead orders-0")
}

// ---------------------------------------------------------------------------------------------
// Strategies: one per body type, generating values within the request limits.

fn topic_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,24}".prop_filter("`.` and `..` are reserved", |n| n != "." && n != "..")
}

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..300)
}

fn configs() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map("[a-z.]{1,16}", text(), 0..4)
}

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<u32>().prop_map(NodeId)
}

fn epoch() -> impl Strategy<Value = LeaderEpoch> {
    any::<u32>().prop_map(LeaderEpoch)
}

fn offset() -> impl Strategy<Value = Offset> {
    any::<u64>().prop_map(Offset)
}

fn partition_id() -> impl Strategy<Value = PartitionId> {
    any::<u32>().prop_map(PartitionId)
}

fn response_error() -> impl Strategy<Value = ResponseError> {
    (
        any::<u16>(),
        text(),
        text(),
        any::<bool>(),
        option::of(node_id()),
        option::of(any::<u16>()),
        option::of(any::<u16>()),
    )
        .prop_map(
            |(code, name, message, retriable, leader, version_min, version_max)| ResponseError {
                code,
                name,
                message,
                retriable,
                leader,
                version_min,
                version_max,
            },
        )
}

fn maybe_error() -> impl Strategy<Value = Option<ResponseError>> {
    option::of(response_error())
}

fn topic_result() -> impl Strategy<Value = TopicResult> {
    (topic_name(), maybe_error()).prop_map(|(name, error)| TopicResult { name, error })
}

fn topic_results() -> impl Strategy<Value = Vec<TopicResult>> {
    vec(topic_result(), 0..4)
}

fn timeout_ms() -> impl Strategy<Value = u32> {
    0..=crate::limits::TIMEOUT_MS_MAX
}

fn acks() -> impl Strategy<Value = Acks> {
    prop_oneof![Just(Acks::None), Just(Acks::Leader), Just(Acks::All)]
}

fn offset_spec() -> impl Strategy<Value = OffsetSpec> {
    prop_oneof![
        Just(OffsetSpec::Earliest),
        Just(OffsetSpec::Latest),
        any::<i64>().prop_map(OffsetSpec::Timestamp),
    ]
}

fn partition_metadata() -> impl Strategy<Value = PartitionMetadata> {
    (
        partition_id(),
        maybe_error(),
        option::of(node_id()),
        epoch(),
        vec(node_id(), 0..4),
        vec(node_id(), 0..4),
    )
        .prop_map(
            |(partition, error, leader, leader_epoch, replicas, in_sync_replicas)| {
                PartitionMetadata {
                    partition,
                    error,
                    leader,
                    leader_epoch,
                    replicas,
                    in_sync_replicas,
                }
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    let handshake = ("[ -~]{0,40}", text(), text()).prop_map(|(id, name, version)| {
        Request::from(HandshakeRequest {
            client_id: id,
            client_software_name: name,
            client_software_version: version,
        })
    });
    let metadata = option::of(vec(topic_name(), 0..4))
        .prop_map(|topics| Request::from(MetadataRequest { topics }));
    let new_topic = (
        topic_name(),
        option::of(0..=crate::limits::PARTITIONS_PER_TOPIC_MAX),
        option::of(any::<u16>()),
        configs(),
    )
        .prop_map(|(name, partitions, replication_factor, configs)| NewTopic {
            name,
            partitions,
            replication_factor,
            configs,
        });
    let create_topics = (vec(new_topic, 0..4), timeout_ms(), any::<bool>()).prop_map(
        |(topics, timeout_ms, validate_only)| {
            Request::from(CreateTopicsRequest {
                topics,
                timeout_ms,
                validate_only,
            })
        },
    );
    let delete_topics = (vec(topic_name(), 0..4), timeout_ms())
        .prop_map(|(topics, timeout_ms)| Request::from(DeleteTopicsRequest { topics, timeout_ms }));
    let describe_topics =
        vec(topic_name(), 0..4).prop_map(|topics| Request::from(DescribeTopicsRequest { topics }));
    let changes = (topic_name(), configs(), vec("[a-z.]{1,16}", 0..3))
        .prop_map(|(name, set, delete)| TopicConfigChanges { name, set, delete });
    let alter_configs = (vec(changes, 0..4), any::<bool>()).prop_map(|(topics, validate_only)| {
        Request::from(AlterTopicConfigsRequest {
            topics,
            validate_only,
        })
    });
    let count_change = (topic_name(), 0..=crate::limits::PARTITIONS_PER_TOPIC_MAX)
        .prop_map(|(name, count)| PartitionCountChange { name, count });
    let create_partitions = (vec(count_change, 0..4), timeout_ms(), any::<bool>()).prop_map(
        |(topics, timeout_ms, validate_only)| {
            Request::from(CreatePartitionsRequest {
                topics,
                timeout_ms,
                validate_only,
            })
        },
    );
    let produce_partition = (partition_id(), option::of(epoch()), bytes()).prop_map(
        |(partition, current_leader_epoch, records)| ProducePartition {
            partition,
            current_leader_epoch,
            records,
        },
    );
    let produce_topic = (topic_name(), vec(produce_partition, 0..4))
        .prop_map(|(name, partitions)| ProduceTopic { name, partitions });
    let produce =
        (acks(), timeout_ms(), vec(produce_topic, 0..4)).prop_map(|(acks, timeout_ms, topics)| {
            Request::from(ProduceRequest {
                acks,
                timeout_ms,
                topics,
            })
        });
    let fetch_partition = (partition_id(), offset(), any::<u32>(), option::of(epoch())).prop_map(
        |(partition, fetch_offset, partition_max_bytes, current_leader_epoch)| FetchPartition {
            partition,
            fetch_offset,
            partition_max_bytes,
            current_leader_epoch,
        },
    );
    let fetch_topic = (topic_name(), vec(fetch_partition, 0..4))
        .prop_map(|(name, partitions)| FetchTopic { name, partitions });
    let fetch = (
        0..=crate::limits::FETCH_WAIT_MS_MAX,
        any::<u32>(),
        any::<u32>(),
        vec(fetch_topic, 0..4),
    )
        .prop_map(|(max_wait_ms, min_bytes, max_bytes, topics)| {
            Request::from(FetchRequest {
                max_wait_ms,
                min_bytes,
                max_bytes,
                topics,
            })
        });
    let list_partition = (partition_id(), offset_spec(), option::of(epoch())).prop_map(
        |(partition, spec, current_leader_epoch)| ListOffsetsPartition {
            partition,
            spec,
            current_leader_epoch,
        },
    );
    let list_topic = (topic_name(), vec(list_partition, 0..4))
        .prop_map(|(name, partitions)| ListOffsetsTopic { name, partitions });
    let list_offsets =
        vec(list_topic, 0..4).prop_map(|topics| Request::from(ListOffsetsRequest { topics }));
    let init_producer =
        option::of((0..=PRODUCER_ID_MAX, 0..=PRODUCER_EPOCH_MAX)).prop_map(|pair| {
            Request::from(InitProducerIdRequest {
                producer_id: pair.map(|(id, _)| ProducerId(id)),
                producer_epoch: pair.map(|(_, epoch)| ProducerEpoch(epoch)),
            })
        });
    prop_oneof![
        handshake,
        metadata,
        create_topics,
        delete_topics,
        describe_topics,
        alter_configs,
        create_partitions,
        produce,
        fetch,
        list_offsets,
        init_producer,
        group_request(),
        cluster_request(),
        elect_leaders_request(),
        reassignments_request(),
    ]
}

/// An AlterPartitionReassignments request within its bounds (its lists may still be empty or
/// name a node twice: those are the controller's to refuse, per partition).
fn reassignments_request() -> impl Strategy<Value = Request> {
    let reassignment = (
        topic_name(),
        partition_id(),
        vec(node_id(), 0..=REASSIGNMENT_REPLICAS_MAX as usize),
    )
        .prop_map(|(topic, partition, replicas)| PartitionReassignment {
            topic,
            partition,
            replicas,
        });
    (vec(reassignment, 1..4), timeout_ms()).prop_map(|(partitions, timeout_ms)| {
        Request::from(AlterPartitionReassignmentsRequest {
            partitions,
            timeout_ms,
        })
    })
}

fn reassignments_response() -> impl Strategy<Value = Response> {
    let result = (
        topic_name(),
        partition_id(),
        maybe_error(),
        vec(node_id(), 0..4),
        option::of(vec(node_id(), 0..4)),
        option::of(node_id()),
        option::of(epoch()),
    )
        .prop_map(
            |(topic, partition, error, replicas, target_replicas, leader, leader_epoch)| {
                PartitionReassignmentResult {
                    topic,
                    partition,
                    error,
                    replicas,
                    target_replicas,
                    leader,
                    leader_epoch,
                }
            },
        );
    vec(result, 0..4)
        .prop_map(|partitions| Response::from(AlterPartitionReassignmentsResponse { partitions }))
}

fn ongoing_reassignment() -> impl Strategy<Value = OngoingReassignment> {
    (partition_id(), vec(node_id(), 1..4)).prop_map(|(partition, target_replicas)| {
        OngoingReassignment {
            partition,
            target_replicas,
        }
    })
}

/// An ElectLeaders request in either mode, valid by construction.
fn elect_leaders_request() -> impl Strategy<Value = Request> {
    let election = (topic_name(), partition_id(), node_id());
    (vec(election, 1..4), any::<bool>(), timeout_ms()).prop_map(
        |(partitions, preferred, timeout_ms)| {
            Request::from(ElectLeadersRequest {
                partitions: partitions
                    .into_iter()
                    .map(|(topic, partition, to)| LeaderElection {
                        topic,
                        partition,
                        to: (!preferred).then_some(to),
                    })
                    .collect(),
                preferred,
                timeout_ms,
            })
        },
    )
}

fn elect_leaders_response() -> impl Strategy<Value = Response> {
    let result = (
        topic_name(),
        partition_id(),
        maybe_error(),
        option::of(node_id()),
        option::of(epoch()),
    )
        .prop_map(
            |(topic, partition, error, leader, leader_epoch)| LeaderElectionResult {
                topic,
                partition,
                error,
                leader,
                leader_epoch,
            },
        );
    (vec(result, 0..4), any::<bool>())
        .prop_map(|(partitions, more)| Response::from(ElectLeadersResponse { partitions, more }))
}

fn cluster_request() -> impl Strategy<Value = Request> {
    option::of(vec(topic_name(), 0..4))
        .prop_map(|topics| Request::from(DescribeClusterRequest { topics }))
}

fn cluster_response() -> impl Strategy<Value = Response> {
    let node = (
        node_id(),
        text(),
        any::<u16>(),
        any::<bool>(),
        option::of(any::<u64>()),
    )
        .prop_map(|(node_id, host, port, fenced, lease_age_ms)| ClusterNode {
            node_id,
            host,
            port,
            fenced,
            lease_age_ms,
        });
    let raft = (
        any::<u64>(),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        option::of(node_id()),
    )
        .prop_map(|(term, commit_index, applied_index, leader_id)| RaftInfo {
            term,
            commit_index,
            applied_index,
            leader_id,
        });
    let topic = (
        topic_name(),
        maybe_error(),
        any::<bool>(),
        vec(partition_metadata(), 0..4),
    )
        .prop_map(|(name, error, internal, partitions)| TopicMetadata {
            name,
            error,
            internal,
            partitions,
        });
    let follower = (
        node_id(),
        any::<bool>(),
        option::of(offset()),
        option::of(offset()),
        option::of(any::<u64>()),
        any::<u64>(),
    )
        .prop_map(
            |(node_id, in_sync, log_end_offset, flushed_offset, lag_offsets, lag_ms)| {
                FollowerStatus {
                    node_id,
                    in_sync,
                    log_end_offset,
                    flushed_offset,
                    lag_offsets,
                    lag_ms,
                }
            },
        );
    let status = (
        topic_name(),
        partition_id(),
        any::<u32>(),
        (offset(), offset(), offset()),
        vec(follower, 0..3),
    )
        .prop_map(
            |(
                topic,
                partition,
                epoch,
                (log_end_offset, high_watermark, flushed_offset),
                followers,
            )| {
                PartitionReplicaStatus {
                    topic,
                    partition,
                    leader_epoch: LeaderEpoch(epoch),
                    log_end_offset,
                    high_watermark,
                    flushed_offset,
                    followers,
                }
            },
        );
    (
        (text(), node_id(), option::of(node_id()), any::<u64>()),
        option::of(raft.prop_map(Box::new)),
        vec(node, 0..4),
        vec(topic, 0..4),
        option::of(any::<u32>()),
        (vec(status, 0..3), option::of(any::<u32>())),
    )
        .prop_map(
            |(
                (cluster_id, node_id, controller_id, metadata_version),
                raft,
                nodes,
                topics,
                omitted,
                (replica_status, replica_status_omitted),
            )| {
                Response::from(DescribeClusterResponse {
                    cluster_id,
                    node_id,
                    controller_id,
                    metadata_version,
                    raft,
                    nodes,
                    topics,
                    topics_omitted: omitted,
                    replica_status: (!replica_status.is_empty()
                        || replica_status_omitted.is_some())
                    .then(|| {
                        Box::new(ReplicaStatusListing {
                            partitions: replica_status,
                            partitions_omitted: replica_status_omitted,
                        })
                    }),
                })
            },
        )
}

fn group_id() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,40}"
}

fn topic_partitions() -> impl Strategy<Value = Vec<TopicPartitions>> {
    vec(
        (topic_name(), vec(partition_id(), 0..4))
            .prop_map(|(topic, partitions)| TopicPartitions { topic, partitions }),
        0..3,
    )
}

/// The consumer-group requests, kinds 11 to 18.
fn group_request() -> impl Strategy<Value = Request> {
    let find = group_id().prop_map(|group_id| Request::from(FindCoordinatorRequest { group_id }));
    let heartbeat = (
        (
            group_id(),
            "[a-f0-9-]{0,36}",
            any::<i32>(),
            option::of(text()),
        ),
        (option::of(any::<u32>()), option::of(any::<u32>())),
        (
            option::of(vec(topic_name(), 0..3)),
            option::of("[a-z-]{1,12}"),
            option::of(topic_partitions()),
            0..=crate::limits::GROUP_WAIT_MS_MAX,
        ),
    )
        .prop_map(
            |(
                (group_id, member_id, member_epoch, instance_id),
                (rebalance_timeout_ms, session_timeout_ms),
                (subscribed_topics, assignor, owned_partitions, max_wait_ms),
            )| {
                Request::from(ConsumerGroupHeartbeatRequest {
                    group_id,
                    member_id,
                    member_epoch,
                    instance_id,
                    rebalance_timeout_ms,
                    session_timeout_ms,
                    subscribed_topics,
                    assignor,
                    owned_partitions,
                    max_wait_ms,
                })
            },
        );
    let commit_partition = (partition_id(), offset(), option::of(epoch()), text()).prop_map(
        |(partition, offset, leader_epoch, metadata)| OffsetCommitPartition {
            partition,
            offset,
            leader_epoch,
            metadata,
        },
    );
    let commit = (
        group_id(),
        text(),
        any::<i32>(),
        vec(
            (topic_name(), vec(commit_partition, 0..3))
                .prop_map(|(topic, partitions)| OffsetCommitTopic { topic, partitions }),
            0..3,
        ),
    )
        .prop_map(|(group_id, member_id, member_epoch, topics)| {
            Request::from(OffsetCommitRequest {
                group_id,
                member_id,
                member_epoch,
                topics,
            })
        });
    let fetch = (group_id(), option::of(topic_partitions()))
        .prop_map(|(group_id, topics)| Request::from(OffsetFetchRequest { group_id, topics }));
    let list = Just(Request::from(ListGroupsRequest {}));
    let describe = vec(group_id(), 0..4)
        .prop_map(|group_ids| Request::from(DescribeGroupsRequest { group_ids }));
    let delete = vec(group_id(), 0..4)
        .prop_map(|group_ids| Request::from(DeleteGroupsRequest { group_ids }));
    let target = prop_oneof![
        Just(("earliest".to_owned(), None, None)),
        Just(("latest".to_owned(), None, None)),
        offset().prop_map(|o| ("offset".to_owned(), Some(o), None)),
        any::<i64>().prop_map(|t| ("timestamp".to_owned(), None, Some(t))),
    ];
    let reset = (
        group_id(),
        topic_name(),
        option::of(vec(partition_id(), 0..4)),
        target,
        any::<bool>(),
    )
        .prop_map(
            |(group_id, topic, partitions, (to, offset, timestamp), dry_run)| {
                Request::from(ResetOffsetsRequest {
                    group_id,
                    topic,
                    partitions,
                    to,
                    offset,
                    timestamp,
                    dry_run,
                })
            },
        );
    prop_oneof![
        find, heartbeat, commit, fetch, list, describe, delete, reset
    ]
}

/// The consumer-group responses, kinds 11 to 18.
fn group_response() -> impl Strategy<Value = Response> {
    let find = (node_id(), text(), any::<u16>(), partition_id()).prop_map(
        |(node_id, host, port, offsets_partition)| {
            Response::from(FindCoordinatorResponse {
                node_id,
                host,
                port,
                offsets_partition,
            })
        },
    );
    let heartbeat = (
        text(),
        any::<i32>(),
        any::<u32>(),
        any::<u32>(),
        topic_partitions(),
    )
        .prop_map(
            |(member_id, member_epoch, heartbeat_interval_ms, session_timeout_ms, assignment)| {
                Response::from(ConsumerGroupHeartbeatResponse {
                    member_id,
                    member_epoch,
                    heartbeat_interval_ms,
                    session_timeout_ms,
                    assignment,
                })
            },
        );
    let results = vec(
        (
            topic_name(),
            vec(
                (partition_id(), maybe_error())
                    .prop_map(|(partition, error)| PartitionResult { partition, error }),
                0..3,
            ),
        )
            .prop_map(|(topic, partitions)| PartitionResults { topic, partitions }),
        0..3,
    );
    let commit = results.prop_map(|topics| Response::from(OffsetCommitResponse { topics }));
    let committed = vec(
        (
            topic_name(),
            vec(
                (
                    partition_id(),
                    option::of(offset()),
                    option::of(epoch()),
                    text(),
                )
                    .prop_map(|(partition, offset, leader_epoch, metadata)| {
                        CommittedOffset {
                            partition,
                            offset,
                            leader_epoch,
                            metadata,
                        }
                    }),
                0..3,
            ),
        )
            .prop_map(|(topic, partitions)| CommittedTopic { topic, partitions }),
        0..3,
    );
    let fetch = committed.prop_map(|topics| Response::from(OffsetFetchResponse { topics }));
    let listing = (group_id(), text(), any::<u32>(), text()).prop_map(
        |(group_id, state, members, assignor)| GroupListing {
            group_id,
            state,
            members,
            assignor,
        },
    );
    let list = vec(listing, 0..3).prop_map(|groups| Response::from(ListGroupsResponse { groups }));
    let member = (
        text(),
        option::of(text()),
        text(),
        any::<i32>(),
        topic_partitions(),
    )
        .prop_map(
            |(member_id, instance_id, host, member_epoch, assigned)| MemberDescription {
                member_id,
                instance_id,
                client_id: "c".into(),
                host,
                member_epoch,
                subscribed_topics: vec!["t".into()],
                assigned,
                pending_revocation: Vec::new(),
            },
        );
    let lag = (
        topic_name(),
        partition_id(),
        option::of(offset()),
        option::of(any::<u64>()),
        option::of(text()),
    )
        .prop_map(
            |(topic, partition, committed_offset, lag, owner)| PartitionLag {
                topic,
                partition,
                committed_offset,
                high_watermark: committed_offset,
                lag,
                lag_ms: lag,
                owner,
            },
        );
    let movement = (
        topic_name(),
        partition_id(),
        option::of(text()),
        option::of(text()),
    )
        .prop_map(|(topic, partition, from, to)| PartitionMove {
            topic,
            partition,
            from,
            to,
        });
    let rebalance = (any::<u64>(), text(), any::<i32>(), vec(movement, 0..3)).prop_map(
        |(at_ms, reason, group_epoch, moves)| RebalanceRecord {
            at_ms,
            reason,
            group_epoch,
            moves,
        },
    );
    let description = (
        group_id(),
        maybe_error(),
        text(),
        any::<i32>(),
        vec(member, 0..3),
        vec(lag, 0..3),
        vec(rebalance, 0..2),
    )
        .prop_map(
            |(group_id, error, state, group_epoch, members, offsets, rebalances)| {
                GroupDescription {
                    group_id,
                    error,
                    state,
                    group_epoch,
                    assignment_epoch: group_epoch,
                    assignor: "sticky".into(),
                    members,
                    offsets,
                    rebalances,
                }
            },
        );
    let describe =
        vec(description, 0..3).prop_map(|groups| Response::from(DescribeGroupsResponse { groups }));
    let delete = vec(
        (group_id(), maybe_error()).prop_map(|(group_id, error)| GroupResult { group_id, error }),
        0..3,
    )
    .prop_map(|groups| Response::from(DeleteGroupsResponse { groups }));
    let reset = vec(
        (partition_id(), option::of(offset()), maybe_error()).prop_map(
            |(partition, offset, error)| ResetPartition {
                partition,
                offset,
                error,
            },
        ),
        0..3,
    )
    .prop_map(|partitions| Response::from(ResetOffsetsResponse { partitions }));
    prop_oneof![
        find, heartbeat, commit, fetch, list, describe, delete, reset
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let kind_versions = (any::<u16>(), text(), any::<u16>(), any::<u16>()).prop_map(
        |(kind, name, version_min, version_max)| KindVersions {
            kind,
            name,
            version_min,
            version_max,
        },
    );
    let handshake = (
        node_id(),
        text(),
        text(),
        text(),
        any::<u32>(),
        vec(kind_versions, 0..12),
    )
        .prop_map(
            |(node_id, cluster_id, name, version, frame_bytes_max, kinds)| {
                Response::from(HandshakeResponse {
                    node_id,
                    cluster_id,
                    server_software_name: name,
                    server_software_version: version,
                    frame_bytes_max,
                    kinds,
                })
            },
        );
    let node = (node_id(), text(), any::<u16>()).prop_map(|(node_id, host, port)| NodeInfo {
        node_id,
        host,
        port,
    });
    let topic_metadata = (
        topic_name(),
        maybe_error(),
        any::<bool>(),
        vec(partition_metadata(), 0..4),
    )
        .prop_map(|(name, error, internal, partitions)| TopicMetadata {
            name,
            error,
            internal,
            partitions,
        });
    let metadata = (
        text(),
        option::of(node_id()),
        vec(node, 0..4),
        vec(topic_metadata, 0..4),
        option::of(any::<u64>()),
    )
        .prop_map(
            |(cluster_id, controller_id, nodes, topics, metadata_version)| {
                Response::from(MetadataResponse {
                    cluster_id,
                    controller_id,
                    nodes,
                    topics,
                    metadata_version,
                })
            },
        );
    let create_topics =
        topic_results().prop_map(|topics| Response::from(CreateTopicsResponse { topics }));
    let delete_topics =
        topic_results().prop_map(|topics| Response::from(DeleteTopicsResponse { topics }));
    let config_entry =
        (text(), text(), any::<bool>()).prop_map(|(name, value, is_default)| ConfigEntry {
            name,
            value,
            is_default,
        });
    let description = (
        topic_name(),
        maybe_error(),
        any::<bool>(),
        vec(partition_metadata(), 0..3),
        vec(config_entry, 0..4),
        vec(ongoing_reassignment(), 0..3),
    )
        .prop_map(
            |(name, error, internal, partitions, configs, reassignments)| TopicDescription {
                name,
                error,
                internal,
                partitions,
                configs,
                reassignments,
            },
        );
    let describe_topics =
        vec(description, 0..3).prop_map(|topics| Response::from(DescribeTopicsResponse { topics }));
    let alter_configs =
        topic_results().prop_map(|topics| Response::from(AlterTopicConfigsResponse { topics }));
    let create_partitions =
        topic_results().prop_map(|topics| Response::from(CreatePartitionsResponse { topics }));
    let produce_partition = (
        partition_id(),
        maybe_error(),
        option::of(offset()),
        option::of(any::<i64>()),
        option::of(offset()),
    )
        .prop_map(
            |(partition, error, base_offset, log_append_time, log_start_offset)| {
                ProducePartitionResponse {
                    partition,
                    error,
                    base_offset,
                    log_append_time,
                    log_start_offset,
                }
            },
        );
    let produce_topic = (topic_name(), vec(produce_partition, 0..4))
        .prop_map(|(name, partitions)| ProduceTopicResponse { name, partitions });
    let produce =
        vec(produce_topic, 0..4).prop_map(|topics| Response::from(ProduceResponse { topics }));
    let fetch = vec(fetch_topic_response(), 0..4)
        .prop_map(|topics| Response::from(FetchResponse { topics }));
    let list_partition = (
        partition_id(),
        maybe_error(),
        option::of(offset()),
        option::of(any::<i64>()),
        option::of(epoch()),
    )
        .prop_map(|(partition, error, offset, timestamp, leader_epoch)| {
            ListOffsetsPartitionResponse {
                partition,
                error,
                offset,
                timestamp,
                leader_epoch,
            }
        });
    let list_topic = (topic_name(), vec(list_partition, 0..4))
        .prop_map(|(name, partitions)| ListOffsetsTopicResponse { name, partitions });
    let list_offsets =
        vec(list_topic, 0..4).prop_map(|topics| Response::from(ListOffsetsResponse { topics }));
    let init_producer = (any::<u64>(), any::<u16>()).prop_map(|(id, epoch)| {
        Response::from(InitProducerIdResponse {
            producer_id: ProducerId(id),
            producer_epoch: ProducerEpoch(epoch),
        })
    });
    let failed =
        (0..RESPONSE_BIT, any::<u16>(), response_error()).prop_map(|(kind, version, error)| {
            Response::Failed(FailedResponse {
                kind,
                version,
                error,
            })
        });
    prop_oneof![
        handshake,
        metadata,
        create_topics,
        delete_topics,
        describe_topics,
        alter_configs,
        create_partitions,
        produce,
        fetch,
        list_offsets,
        init_producer,
        group_response(),
        cluster_response(),
        elect_leaders_response(),
        reassignments_response(),
        failed,
    ]
}

fn fetch_partition_response() -> impl Strategy<Value = FetchPartitionResponse> {
    (
        partition_id(),
        maybe_error(),
        option::of(offset()),
        option::of(offset()),
        option::of(offset()),
        bytes(),
    )
        .prop_map(
            |(partition, error, high_watermark, last_stable_offset, log_start_offset, records)| {
                FetchPartitionResponse {
                    partition,
                    error,
                    high_watermark,
                    last_stable_offset,
                    log_start_offset,
                    records,
                }
            },
        )
}

fn fetch_topic_response() -> impl Strategy<Value = FetchTopicResponse> {
    (topic_name(), vec(fetch_partition_response(), 0..4))
        .prop_map(|(name, partitions)| FetchTopicResponse { name, partitions })
}

/// The borrowed form of a fetch answer, for the hand writer.
fn as_ref(response: &FetchResponse) -> FetchResponseRef<'_> {
    FetchResponseRef {
        topics: response
            .topics
            .iter()
            .map(|topic| FetchTopicRef {
                name: &topic.name,
                partitions: topic
                    .partitions
                    .iter()
                    .map(|p| FetchPartitionRef {
                        partition: p.partition,
                        error: p.error.clone(),
                        high_watermark: p.high_watermark,
                        last_stable_offset: p.last_stable_offset,
                        log_start_offset: p.log_start_offset,
                        records: &p.records,
                    })
                    .collect(),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips.

proptest! {
    /// Every request survives encode, frame parsing and decode unchanged, and its frame
    /// header says what it is.
    #[test]
    fn every_request_round_trips(request in request(), correlation_id in any::<u64>()) {
        let bytes = request.encode(correlation_id).unwrap();
        let frame = whole_frame(&bytes);
        prop_assert_eq!(frame.header.kind, request.kind().code());
        prop_assert_eq!(frame.header.version, 1);
        prop_assert_eq!(frame.header.correlation_id, correlation_id);
        prop_assert_eq!(Request::decode(&frame.header, &bytes[frame.body]).unwrap(), request);
    }

    /// Every response, success or failure, survives encode, frame parsing and decode
    /// unchanged; its kind carries the response bit.
    #[test]
    fn every_response_round_trips(response in response(), correlation_id in any::<u64>()) {
        let bytes = response.encode(correlation_id).unwrap();
        let frame = whole_frame(&bytes);
        prop_assert_eq!(frame.header.kind, response.request_kind() | RESPONSE_BIT);
        prop_assert_eq!(frame.header.correlation_id, correlation_id);
        prop_assert_eq!(Response::decode(&frame.header, &bytes[frame.body]).unwrap(), response);
    }

    /// The hand-written fetch answer is byte for byte what serde writes for the same value,
    /// so it decodes with the normal decoder into that value.
    #[test]
    fn hand_written_fetch_answers_equal_serde(
        topics in vec(fetch_topic_response(), 0..4),
        correlation_id in any::<u64>(),
    ) {
        let owned = FetchResponse { topics };
        let parts = encode_fetch_response(correlation_id, &as_ref(&owned)).unwrap();
        let expected = Response::from(owned.clone()).encode(correlation_id).unwrap();
        prop_assert_eq!(parts.frame_bytes(), expected.len());
        prop_assert_eq!(hex(&parts.to_vec()), hex(&expected));
        prop_assert_eq!(decode_response(&parts.to_vec()).unwrap(), Response::Fetch(owned));
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile bytes.

proptest! {
    /// Any bytes given to the frame parser give a consistent verdict without panicking, and
    /// never ask for more than the frame limit.
    #[test]
    fn frame_parser_survives_arbitrary_bytes(bytes in vec(any::<u8>(), 0..64)) {
        let (verdict, peak) = peak_heap_bytes(|| parse_frame(&bytes));
        prop_assert_eq!(peak, 0, "the frame parser allocates nothing");
        match verdict {
            Ok(FrameParse::Incomplete { needed }) => {
                prop_assert!(needed > bytes.len());
                prop_assert!(needed <= FRAME_BYTES_MAX as usize);
            }
            Ok(FrameParse::Complete(frame)) => {
                prop_assert_eq!(frame.body.start, FRAME_HEADER_BYTES);
                prop_assert!(frame.body.end <= bytes.len());
            }
            Err(error) => prop_assert!(error.closes_connection()),
        }
    }

    /// Any body, under any kind and version, decodes to a value or an error without
    /// panicking, and never holds more than the frame limit on the heap.
    #[test]
    fn body_decoders_survive_arbitrary_bytes(
        kind in 0u16..12,
        version in 0u16..3,
        body in vec(any::<u8>(), 0..512),
    ) {
        let (_, peak) = peak_heap_bytes(|| {
            let header = frame::header_for_body(kind, version, 1, body.len()).unwrap();
            let _ = Request::decode(&header, &body);
            let response = FrameHeader { kind: kind | RESPONSE_BIT, ..header };
            let _ = Response::decode(&response, &body);
        });
        prop_assert!(peak <= u64::from(FRAME_BYTES_MAX), "peak {peak} bytes");
    }

    /// Valid frames with a few bytes of their body overwritten (which keeps the structure
    /// mostly intact, so decoding goes deep) decode or fail cleanly, within the heap bound.
    #[test]
    fn mutated_bodies_fail_cleanly(
        request in request(),
        writes in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = request.encode(9).unwrap();
        let body_bytes = bytes.len() - FRAME_HEADER_BYTES;
        for (index, value) in writes {
            bytes[FRAME_HEADER_BYTES + index.index(body_bytes)] = value;
        }
        let (_, peak) = peak_heap_bytes(|| {
            let frame = whole_frame(&bytes);
            let _ = Request::decode(&frame.header, &bytes[frame.body.clone()]);
            let response = FrameHeader { kind: frame.header.kind | RESPONSE_BIT, ..frame.header };
            let _ = Response::decode(&response, &bytes[frame.body]);
        });
        prop_assert!(peak <= u64::from(FRAME_BYTES_MAX), "peak {peak} bytes");
    }
}

/// A `length` of 0xFFFFFFFF is refused from the 16 header bytes alone, with nothing allocated,
/// and the error still carries the correlation id to answer with.
#[test]
fn oversized_length_is_refused_from_the_header_alone() {
    let header = FrameHeader {
        length: u32::MAX,
        kind: RequestKind::Produce.code(),
        version: 1,
        correlation_id: 0xDEAD_BEEF,
    }
    .encode();
    assert_eq!(
        parse_frame(&header[..15]).unwrap(),
        FrameParse::Incomplete { needed: 16 }
    );
    let (verdict, peak) = peak_heap_bytes(|| parse_frame(&header));
    assert_eq!(peak, 0);
    let error = verdict.unwrap_err();
    let ProtocolError::FrameTooLarge { header, max } = &error else {
        panic!("expected FrameTooLarge, got {error:?}");
    };
    assert_eq!(header.correlation_id, 0xDEAD_BEEF);
    assert_eq!(header.frame_bytes(), 4 + u64::from(u32::MAX));
    assert_eq!(*max, FRAME_BYTES_MAX);
    assert_eq!(error.error_code(), ErrorCode::RequestTooLarge);
    assert!(error.closes_connection());

    // The answer the server sends before closing.
    let answer = Response::failed(header, error.response_error())
        .encode(header.correlation_id)
        .unwrap();
    let Response::Failed(failed) = decode_response(&answer).unwrap() else {
        panic!("expected a failure");
    };
    assert_eq!(failed.kind, RequestKind::Produce.code());
    assert_eq!(failed.error.code, ErrorCode::RequestTooLarge.code());
}

/// The frame limit is inclusive: a frame of exactly `FRAME_BYTES_MAX` bytes is fine, one byte
/// more is not.
#[test]
fn frame_limit_is_inclusive() {
    let mut header = FrameHeader {
        length: FRAME_BYTES_MAX - 4,
        kind: 1,
        version: 1,
        correlation_id: 5,
    };
    assert_eq!(
        parse_frame(&header.encode()).unwrap(),
        FrameParse::Incomplete {
            needed: FRAME_BYTES_MAX as usize
        }
    );
    header.length += 1;
    assert!(matches!(
        parse_frame(&header.encode()),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
}

/// `read_header`, the check every frame reader makes (sessions, peer links, the client), agrees
/// with `parse_frame` at both bounds and gives the body's length in between.
#[test]
fn read_header_bounds_the_body_before_it_is_read() {
    let header = |length: u32| {
        FrameHeader {
            length,
            kind: 1,
            version: 1,
            correlation_id: 9,
        }
        .encode()
    };
    assert_eq!(read_header(&header(12)).unwrap().1, 0);
    assert_eq!(
        read_header(&header(FRAME_BYTES_MAX - 4)).unwrap().1,
        FRAME_BYTES_MAX as usize - FRAME_HEADER_BYTES
    );
    assert!(matches!(
        read_header(&header(FRAME_BYTES_MAX - 3)),
        Err(ProtocolError::FrameTooLarge { header, .. }) if header.correlation_id == 9
    ));
    assert!(matches!(
        read_header(&header(11)),
        Err(ProtocolError::FrameTooSmall { length: 11 })
    ));
}

/// A `length` below the 12 header bytes it must count means the stream is not frames.
#[test]
fn length_below_header_is_corrupt() {
    let header = FrameHeader {
        length: 11,
        kind: 1,
        version: 1,
        correlation_id: 5,
    };
    let error = parse_frame(&header.encode()).unwrap_err();
    assert_eq!(error, ProtocolError::FrameTooSmall { length: 11 });
    assert!(error.closes_connection());
    assert_eq!(error.error_code(), ErrorCode::CorruptFrame);
}

/// Pipelined frames in one buffer come out one at a time; a partial third asks for exactly
/// its remaining size.
#[test]
fn pipelined_frames_parse_one_at_a_time() {
    let first = Request::from(MetadataRequest::default()).encode(1).unwrap();
    let second = Request::from(DescribeTopicsRequest {
        topics: vec!["a".into()],
    })
    .encode(2)
    .unwrap();
    let mut buf = [first.clone(), second.clone(), second[..20].to_vec()].concat();
    for (expected_id, expected_len) in [(1, first.len()), (2, second.len())] {
        let FrameParse::Complete(frame) = parse_frame(&buf).unwrap() else {
            panic!("expected a frame");
        };
        assert_eq!(frame.header.correlation_id, expected_id);
        assert_eq!(frame.frame_bytes(), expected_len);
        buf.drain(..frame.frame_bytes());
    }
    assert_eq!(
        parse_frame(&buf).unwrap(),
        FrameParse::Incomplete {
            needed: second.len()
        }
    );
}

/// Collections that claim billions of elements cost at most serde's 1 MiB preallocation per
/// open collection before the body runs out, and strings or `bin`s that claim 4 GiB cost
/// nothing: their length is checked against the body first.
#[test]
fn huge_claimed_lengths_allocate_little() {
    let mut topics_array32 = vec![0x81];
    msgpack::str(&mut topics_array32, "topics");
    topics_array32.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);

    let mut nested = vec![0x81];
    msgpack::str(&mut nested, "topics");
    nested.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x81]);
    msgpack::str(&mut nested, "partitions");
    nested.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x81]);
    msgpack::str(&mut nested, "replicas");
    nested.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);

    let mut str32 = vec![0x81];
    msgpack::str(&mut str32, "client_id");
    str32.extend_from_slice(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']);

    let mut bin32 = vec![0x81];
    msgpack::str(&mut bin32, "records");
    bin32.extend_from_slice(&[0xc6, 0xff, 0xff, 0xff, 0xff, 0]);

    let mut map32 = vec![0xdf, 0xff, 0xff, 0xff, 0xff];
    msgpack::str(&mut map32, "configs");

    for (kind, body, peak_max) in [
        (RequestKind::Produce, topics_array32, (1 << 20) + 4096),
        (RequestKind::Metadata, nested, 3 << 20),
        (RequestKind::Handshake, str32, 1024),
        (RequestKind::Fetch, bin32, 1024),
        (RequestKind::CreateTopics, map32, 1024),
    ] {
        for response in [false, true] {
            let code = kind.code() | if response { RESPONSE_BIT } else { 0 };
            let frame = frame_with_body(code, 1, &body);
            let (result, peak) = peak_heap_bytes(|| {
                if response {
                    decode_response(&frame).map(|_| ())
                } else {
                    decode_request(&frame).map(|_| ())
                }
            });
            assert!(result.is_err(), "{kind:?} response={response}");
            assert!(
                peak <= peak_max,
                "{kind:?} response={response}: {peak} bytes"
            );
        }
    }
}

/// A body may nest `BODY_DEPTH_MAX` levels (counting its own map), even inside a field the
/// decoder skips; one more is `TooDeep`, answered `InvalidRequest` like every other limit of
/// PROTOCOL.md section 9 (it was `CorruptFrame`). A very deep body fails the same way,
/// without exhausting the stack.
#[test]
fn nesting_is_bounded_exactly() {
    let body_with_depth = |depth: usize| {
        let mut body = vec![0x81];
        msgpack::str(&mut body, "future_field");
        body.extend(std::iter::repeat_n(0x91, depth - 2));
        body.push(0x90);
        body
    };
    let max = BODY_DEPTH_MAX as usize;
    let ok = frame_with_body(RequestKind::Metadata.code(), 1, &body_with_depth(max));
    assert_eq!(
        decode_request(&ok).unwrap(),
        Request::Metadata(MetadataRequest { topics: None })
    );
    let deep = frame_with_body(RequestKind::Metadata.code(), 1, &body_with_depth(max + 1));
    let error = decode_request(&deep).unwrap_err();
    assert_eq!(
        error,
        ProtocolError::TooDeep {
            max: BODY_DEPTH_MAX
        }
    );
    assert_eq!(error.error_code(), ErrorCode::InvalidRequest);
    assert!(!error.closes_connection());
    let very_deep = frame_with_body(RequestKind::Metadata.code(), 1, &body_with_depth(100_000));
    assert_eq!(
        decode_request(&very_deep).unwrap_err().error_code(),
        ErrorCode::InvalidRequest
    );
}

/// A body must be exactly one map: nothing, a truncated map, another value, or bytes after
/// the map are all `CorruptFrame`.
#[test]
fn body_must_be_exactly_one_map() {
    let valid = Request::from(MetadataRequest {
        topics: Some(vec!["orders".into()]),
    })
    .encode(3)
    .unwrap();
    let body = &valid[FRAME_HEADER_BYTES..];
    let kind = RequestKind::Metadata.code();
    let cases: [(&[u8], ProtocolError); 3] = [
        (&[], ProtocolError::Truncated),
        (&body[..body.len() - 2], ProtocolError::Truncated),
        (&[body, &[0xc0]].concat(), ProtocolError::TrailingBytes),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            decode_request(&frame_with_body(kind, 1, bytes)).unwrap_err(),
            expected
        );
    }
    let array = decode_request(&frame_with_body(kind, 1, &[0x90])).unwrap_err();
    assert!(
        matches!(array, ProtocolError::Malformed { .. }),
        "{array:?}"
    );
    assert_eq!(array.error_code(), ErrorCode::CorruptFrame);
}

// ---------------------------------------------------------------------------------------------
// Decoding rules.

/// A map that names a key twice is refused (`CorruptFrame`): a field of a body, and a key of
/// a config map, which serde used to take silently with the last value winning. A field the
/// decoder does not know is skipped, twice as once.
#[test]
fn a_key_twice_in_a_map_is_refused() {
    let mut metadata = vec![0x82];
    for _ in 0..2 {
        msgpack::str(&mut metadata, "topics");
        metadata.push(0x90);
    }
    let kind = RequestKind::Metadata.code();
    let error = decode_request(&frame_with_body(kind, 1, &metadata)).unwrap_err();
    assert_eq!(error.error_code(), ErrorCode::CorruptFrame, "{error:?}");

    let create_topics = |configs: &[(&str, &str)]| {
        let mut body = vec![0x83];
        msgpack::str(&mut body, "topics");
        body.extend_from_slice(&[0x91, 0x82]);
        msgpack::str(&mut body, "name");
        msgpack::str(&mut body, "t");
        msgpack::str(&mut body, "configs");
        msgpack::map_len(&mut body, configs.len() as u32);
        for (key, value) in configs {
            msgpack::str(&mut body, key);
            msgpack::str(&mut body, value);
        }
        msgpack::str(&mut body, "timeout_ms");
        msgpack::uint(&mut body, 1000);
        msgpack::str(&mut body, "validate_only");
        msgpack::bool(&mut body, false);
        frame_with_body(RequestKind::CreateTopics.code(), 1, &body)
    };
    let once = decode_request(&create_topics(&[
        ("retention.ms", "1"),
        ("segment.ms", "2"),
    ]));
    assert!(once.is_ok(), "{once:?}");
    let twice = decode_request(&create_topics(&[
        ("retention.ms", "1"),
        ("retention.ms", "2"),
    ]));
    assert_eq!(twice.unwrap_err().error_code(), ErrorCode::CorruptFrame);

    let mut unknown_twice = vec![0x83];
    for _ in 0..2 {
        msgpack::str(&mut unknown_twice, "future_field");
        msgpack::uint(&mut unknown_twice, 1);
    }
    msgpack::str(&mut unknown_twice, "topics");
    unknown_twice.push(0x90);
    assert_eq!(
        decode_request(&frame_with_body(kind, 1, &unknown_twice)).unwrap(),
        Request::Metadata(MetadataRequest {
            topics: Some(Vec::new())
        })
    );
}

/// Unknown fields are skipped and optional fields may be absent or nil, so older and newer
/// peers, and clients in other languages, interoperate.
#[test]
fn unknown_fields_are_ignored_and_nil_means_absent() {
    let mut body = vec![0x84];
    msgpack::str(&mut body, "partition");
    msgpack::uint(&mut body, 3);
    msgpack::str(&mut body, "future_field");
    body.extend_from_slice(&[0x81, 0xa1, b'x', 0x92, 0xc0, 0xc4, 0x01, 0xff]);
    msgpack::str(&mut body, "current_leader_epoch");
    body.push(0xc0);
    msgpack::str(&mut body, "records");
    msgpack::bin_header(&mut body, 2);
    body.extend_from_slice(&[1, 2]);
    let partition: ProducePartition = codec::decode_body(&body).unwrap();
    assert_eq!(
        partition,
        ProducePartition {
            partition: PartitionId(3),
            current_leader_epoch: None,
            records: vec![1, 2],
        }
    );
}

/// Integers may come in any MessagePack width that holds the value (a client in another
/// language may always write 64-bit ones); encoders write the smallest.
#[test]
fn integers_of_any_width_decode() {
    let mut body = vec![0x82];
    msgpack::str(&mut body, "producer_id");
    body.extend_from_slice(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 7]);
    msgpack::str(&mut body, "producer_epoch");
    body.extend_from_slice(&[0xd3, 0, 0, 0, 0, 0, 0, 0, 2]);
    let response = decode_response(&frame_with_body(
        RequestKind::InitProducerId.code() | RESPONSE_BIT,
        1,
        &body,
    ))
    .unwrap();
    assert_eq!(
        response,
        Response::InitProducerId(InitProducerIdResponse {
            producer_id: ProducerId(7),
            producer_epoch: ProducerEpoch(2),
        })
    );
}

/// acks travels as Kafka's integers: 0, 1, -1; anything else is a malformed body.
#[test]
fn acks_travel_as_kafka_integers() {
    let produce = |acks| ProduceRequest {
        acks,
        timeout_ms: 0,
        topics: vec![],
    };
    for (acks, marker) in [(Acks::None, 0x00), (Acks::Leader, 0x01), (Acks::All, 0xff)] {
        let mut body = vec![0x83];
        msgpack::str(&mut body, "acks");
        body.push(marker);
        let encoded = Request::from(produce(acks)).encode(1).unwrap();
        assert_eq!(
            &encoded[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body.len()],
            body
        );
    }
    let mut bad = Request::from(produce(Acks::Leader)).encode(1).unwrap();
    bad[FRAME_HEADER_BYTES + 6] = 2;
    let error = decode_request(&bad).unwrap_err();
    assert!(
        matches!(error, ProtocolError::Malformed { .. }),
        "{error:?}"
    );
    assert!(!Request::from(produce(Acks::None)).expects_response());
    assert!(Request::from(produce(Acks::All)).expects_response());
    assert!(Request::from(MetadataRequest::default()).expects_response());
}

/// ListOffsets' spec travels as a string plus, for "timestamp", a timestamp; the combinations
/// that make no sense are malformed.
#[test]
fn offset_spec_travels_as_string_and_timestamp() {
    let partition = |spec: &str, timestamp: Option<i64>| {
        let mut body = vec![0x82 + u8::from(timestamp.is_some())];
        msgpack::str(&mut body, "partition");
        msgpack::uint(&mut body, 0);
        msgpack::str(&mut body, "spec");
        msgpack::str(&mut body, spec);
        if let Some(timestamp) = timestamp {
            msgpack::str(&mut body, "timestamp");
            msgpack::uint(&mut body, timestamp as u64);
        }
        codec::decode_body::<ListOffsetsPartition>(&body).map(|p| p.spec)
    };
    assert_eq!(partition("earliest", None), Ok(OffsetSpec::Earliest));
    assert_eq!(partition("latest", None), Ok(OffsetSpec::Latest));
    assert_eq!(
        partition("timestamp", Some(1_700_000_000_000)),
        Ok(OffsetSpec::Timestamp(1_700_000_000_000))
    );
    for (spec, timestamp) in [("timestamp", None), ("latest", Some(5)), ("newest", None)] {
        let error = partition(spec, timestamp).unwrap_err();
        assert!(
            matches!(error, ProtocolError::Malformed { .. }),
            "{error:?}"
        );
    }
}

/// Kind and version are checked before the body: unknown kinds, unsupported versions and
/// frames going the wrong way each get their own error, which maps to the code the server
/// answers with (with the supported range for `UnsupportedVersion`).
#[test]
fn kind_and_version_are_checked() {
    let body = [0x80];
    let request = |kind, version| decode_request(&frame_with_body(kind, version, &body));
    assert_eq!(
        request(19, 1).unwrap_err(),
        ProtocolError::UnknownKind { kind: 19 }
    );
    for version in [0, 2] {
        let error = request(RequestKind::Metadata.code(), version).unwrap_err();
        assert_eq!(
            error,
            ProtocolError::UnsupportedVersion {
                kind: RequestKind::Metadata,
                version
            }
        );
        let answer = error.response_error();
        assert_eq!(answer.error_code(), Some(ErrorCode::UnsupportedVersion));
        assert_eq!((answer.version_min, answer.version_max), (Some(1), Some(1)));
    }
    let wrong_way = request(RequestKind::Metadata.code() | RESPONSE_BIT, 1).unwrap_err();
    assert_eq!(wrong_way.error_code(), ErrorCode::InvalidRequest);
    assert!(matches!(
        decode_response(&frame_with_body(1, 1, &body)),
        Err(ProtocolError::WrongDirection {
            expected: Direction::Response,
            ..
        })
    ));
    assert_eq!(
        request(RequestKind::Metadata.code(), 1).unwrap(),
        Request::Metadata(MetadataRequest { topics: None })
    );
}

/// A failure answer decodes whatever its kind and version, so a client reads
/// `UnknownRequestKind` for a kind it invented and `UnsupportedVersion` for a version it
/// guessed.
#[test]
fn failures_decode_for_any_kind_and_version() {
    let header = FrameHeader {
        length: 12,
        kind: 500,
        version: 9,
        correlation_id: 4,
    };
    let error = ProtocolError::UnknownKind { kind: 500 }.response_error();
    let bytes = Response::failed(&header, error.clone()).encode(4).unwrap();
    assert_eq!(
        decode_response(&bytes).unwrap(),
        Response::Failed(FailedResponse {
            kind: 500,
            version: 9,
            error
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Limits.

/// Topic names follow Kafka's rule: 1 to 249 bytes of [a-zA-Z0-9._-], not `.` or `..`.
#[test]
fn topic_names_follow_the_rule() {
    let longest = "a".repeat(TOPIC_NAME_BYTES_MAX as usize);
    for good in ["orders", "a", "Orders.v2_final-1", "...", longest.as_str()] {
        assert_eq!(validate_topic_name(good), Ok(()), "{good}");
    }
    let too_long = "a".repeat(TOPIC_NAME_BYTES_MAX as usize + 1);
    for bad in ["", ".", "..", "a/b", "é", "a b", "a\0", too_long.as_str()] {
        let error = validate_topic_name(bad).unwrap_err();
        assert_eq!(error.error_code(), ErrorCode::InvalidTopicName, "{bad:?}");
    }
}

/// The caps are checked on decoding: one past a cap fails the whole request with
/// `InvalidRequest` (or `InvalidTopicName`), at the cap it passes.
#[test]
fn request_caps_are_enforced_on_decode() {
    let fetch = |topics: u32, partitions_each: u32, max_wait_ms: u32| {
        Request::from(FetchRequest {
            max_wait_ms,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: (0..topics)
                .map(|t| FetchTopic {
                    name: format!("t{t}"),
                    partitions: (0..partitions_each)
                        .map(|p| FetchPartition {
                            partition: PartitionId(p),
                            fetch_offset: Offset(0),
                            partition_max_bytes: 1 << 20,
                            current_leader_epoch: None,
                        })
                        .collect(),
                })
                .collect(),
        })
    };
    let roundtrip = |request: Request| decode_request(&request.encode(1).unwrap());
    let per_topic = PARTITIONS_PER_REQUEST_MAX / 4;
    assert!(roundtrip(fetch(4, per_topic, 100)).is_ok());
    assert!(roundtrip(fetch(TOPICS_PER_REQUEST_MAX, 0, 100)).is_ok());
    let cases = [
        (fetch(4, per_topic + 1, 100), "partitions per request"),
        (fetch(TOPICS_PER_REQUEST_MAX + 1, 0, 100), "topics"),
        (
            fetch(1, 1, crate::limits::FETCH_WAIT_MS_MAX + 1),
            "max_wait_ms",
        ),
    ];
    for (request, field) in cases {
        let error = roundtrip(request).unwrap_err();
        assert!(
            matches!(&error, ProtocolError::FieldTooLarge { field: f, .. } if *f == field),
            "{error:?}"
        );
        assert_eq!(error.error_code(), ErrorCode::InvalidRequest);
    }
    let bad_name = Request::from(DeleteTopicsRequest {
        topics: vec!["ok".into(), "not ok".into()],
        timeout_ms: 1000,
    });
    assert_eq!(
        roundtrip(bad_name).unwrap_err().error_code(),
        ErrorCode::InvalidTopicName
    );
    let half_producer = Request::from(InitProducerIdRequest {
        producer_id: Some(ProducerId(1)),
        producer_epoch: None,
    });
    assert_eq!(
        roundtrip(half_producer).unwrap_err().error_code(),
        ErrorCode::InvalidRequest
    );
    // Issue 11: ids of 2^63 and more and epochs of 2^15 and more do not fit the batch header.
    for (id, epoch) in [
        (1u64 << 63, 0u16),
        (u64::MAX, 0),
        (1, 1 << 15),
        (1, u16::MAX),
    ] {
        let out_of_range = Request::from(InitProducerIdRequest {
            producer_id: Some(ProducerId(id)),
            producer_epoch: Some(ProducerEpoch(epoch)),
        });
        assert_eq!(
            roundtrip(out_of_range).unwrap_err().error_code(),
            ErrorCode::InvalidRequest,
            "id {id}, epoch {epoch}"
        );
    }
    let largest = Request::from(InitProducerIdRequest {
        producer_id: Some(ProducerId((1 << 63) - 1)),
        producer_epoch: Some(ProducerEpoch((1 << 15) - 1)),
    });
    assert!(roundtrip(largest).is_ok());
}

/// A produce request carrying the largest batch fits in one frame; an encoder refuses to
/// build a frame past the limit rather than send one the peer would refuse.
#[test]
fn largest_batch_fits_and_oversized_frames_are_not_encoded() {
    let produce = |records_bytes: usize| {
        Request::from(ProduceRequest {
            acks: Acks::All,
            timeout_ms: 1000,
            topics: vec![ProduceTopic {
                name: "orders".into(),
                partitions: vec![ProducePartition {
                    partition: PartitionId(0),
                    current_leader_epoch: Some(LeaderEpoch(1)),
                    records: vec![7; records_bytes],
                }],
            }],
        })
    };
    let largest = produce(crate::limits::BATCH_BYTES_MAX as usize);
    assert_eq!(
        decode_request(&largest.encode(1).unwrap()).unwrap(),
        largest
    );
    let error = produce(FRAME_BYTES_MAX as usize).encode(1).unwrap_err();
    assert!(matches!(error, ProtocolError::EncodedTooLarge { .. }));
}

/// The budget constants of a fetch answer hold for the largest fields the server can write:
/// the largest numbers, the longest error name, a message at its cap with every extra, a
/// name at its cap, and 32-bit length headers.
#[test]
fn fetch_answer_field_budgets_hold() {
    let encoded = |topics: Vec<FetchTopicRef<'_>>| {
        encode_fetch_response(1, &FetchResponseRef { topics })
            .unwrap()
            .frame_bytes() as u32
    };
    let empty = encoded(vec![]);
    // The array header grows from fixarray to array32 at worst.
    assert!(empty - FRAME_HEADER_BYTES as u32 + 4 <= FETCH_BODY_FIELDS_BYTES_MAX);

    let longest_name = "n".repeat(TOPIC_NAME_BYTES_MAX as usize);
    let topic = |partitions| FetchTopicRef {
        name: &longest_name,
        partitions,
    };
    let one_topic = encoded(vec![topic(vec![])]);
    assert!(one_topic - empty + 4 <= FETCH_TOPIC_FIELDS_BYTES_MAX);

    let longest_code = ErrorCode::ALL
        .iter()
        .max_by_key(|code| code.name().len())
        .unwrap();
    let mut error = ResponseError::new(*longest_code, "é".repeat(ERROR_MESSAGE_BYTES_MAX as usize));
    assert!(error.message.len() <= ERROR_MESSAGE_BYTES_MAX as usize);
    assert!(error.message.len() >= ERROR_MESSAGE_BYTES_MAX as usize - 1);
    error.leader = Some(NodeId(u32::MAX));
    error.version_min = Some(u16::MAX);
    error.version_max = Some(u16::MAX);
    let partition = FetchPartitionRef {
        partition: PartitionId(u32::MAX),
        error: Some(error),
        high_watermark: Some(Offset(u64::MAX)),
        last_stable_offset: Some(Offset(u64::MAX)),
        log_start_offset: Some(Offset(u64::MAX)),
        records: &[],
    };
    let one_partition = encoded(vec![topic(vec![partition])]);
    // Records of up to 6 MiB take a bin32 header, 3 bytes more than the empty bin8 here.
    assert!(one_partition - one_topic + 3 <= FETCH_PARTITION_FIELDS_BYTES_MAX);
}

/// The budget constants of a DescribeCluster answer hold for the largest fields a node can
/// write: every number at its largest, 32 replicas all in sync, a name at its cap with an
/// error whose message is at its cap, 32-bit length headers, and the body around them with
/// every optional field present and the nodes of a seven-member quorum with long host names.
#[test]
fn cluster_answer_field_budgets_hold() {
    let encoded = |answer: &DescribeClusterResponse| -> u32 {
        Response::from(answer.clone())
            .encode(u64::MAX)
            .unwrap()
            .len() as u32
    };
    let mut answer = DescribeClusterResponse {
        cluster_id: "c".repeat(64),
        node_id: NodeId(u32::MAX),
        controller_id: Some(NodeId(u32::MAX)),
        metadata_version: u64::MAX,
        raft: Some(Box::new(RaftInfo {
            term: u64::MAX,
            commit_index: Some(u64::MAX),
            applied_index: Some(u64::MAX),
            leader_id: Some(NodeId(u32::MAX)),
        })),
        nodes: (0..7)
            .map(|n| ClusterNode {
                node_id: NodeId(u32::MAX - n),
                host: "h".repeat(255),
                port: u16::MAX,
                fenced: true,
                lease_age_ms: Some(u64::MAX),
            })
            .collect(),
        topics: Vec::new(),
        topics_omitted: Some(u32::MAX),
        replica_status: Some(Box::new(ReplicaStatusListing {
            partitions: Vec::new(),
            partitions_omitted: Some(u32::MAX),
        })),
    };
    let empty = encoded(&answer);
    // The topics array header grows from fixarray to array32 at worst.
    assert!(empty + 4 <= CLUSTER_BODY_FIELDS_BYTES_MAX);

    let longest_code = ErrorCode::ALL
        .iter()
        .max_by_key(|code| code.name().len())
        .unwrap();
    let mut error = ResponseError::new(*longest_code, "é".repeat(ERROR_MESSAGE_BYTES_MAX as usize));
    error.leader = Some(NodeId(u32::MAX));
    error.version_min = Some(u16::MAX);
    error.version_max = Some(u16::MAX);
    answer.topics.push(TopicMetadata {
        name: "n".repeat(TOPIC_NAME_BYTES_MAX as usize),
        error: Some(error),
        internal: true,
        partitions: Vec::new(),
    });
    let one_topic = encoded(&answer);
    // The partitions array header grows from fixarray to array32 at worst.
    assert!(
        one_topic - empty + 4 <= CLUSTER_TOPIC_FIELDS_BYTES_MAX,
        "{}",
        one_topic - empty + 4
    );

    let replicas: Vec<NodeId> = (0..32).map(|n| NodeId(u32::MAX - n)).collect();
    answer.topics[0].partitions.push(PartitionMetadata {
        partition: PartitionId(u32::MAX),
        error: None,
        leader: Some(NodeId(u32::MAX)),
        leader_epoch: LeaderEpoch(u32::MAX),
        replicas: replicas.clone(),
        in_sync_replicas: replicas,
    });
    let one_partition = encoded(&answer);
    assert!(
        one_partition - one_topic <= CLUSTER_PARTITION_FIELDS_BYTES_MAX,
        "{}",
        one_partition - one_topic
    );
    assert!(empty + 4 <= CLUSTER_BODY_FIELDS_BYTES_MAX, "{empty}");

    // A replica status with every field at its largest (the listing's array header grows to
    // array32 at worst, which the body budget holds).
    let listing = answer.replica_status.as_mut().expect("a listing");
    listing.partitions.push(PartitionReplicaStatus {
        topic: "n".repeat(TOPIC_NAME_BYTES_MAX as usize),
        partition: PartitionId(u32::MAX),
        leader_epoch: LeaderEpoch(u32::MAX),
        log_end_offset: Offset(u64::MAX),
        high_watermark: Offset(u64::MAX),
        flushed_offset: Offset(u64::MAX),
        followers: (0..CLUSTER_REPLICA_FOLLOWERS_LISTED_MAX)
            .map(|n| FollowerStatus {
                node_id: NodeId(u32::MAX - n),
                in_sync: true,
                log_end_offset: Some(Offset(u64::MAX)),
                flushed_offset: Some(Offset(u64::MAX)),
                lag_offsets: Some(u64::MAX),
                lag_ms: u64::MAX,
            })
            .collect(),
    });
    let one_status = encoded(&answer);
    assert!(
        one_status - one_partition <= CLUSTER_REPLICA_STATUS_BYTES_MAX,
        "{}",
        one_status - one_partition
    );
}

/// A node entry is a map, so a newer node may add fields to it (a rack, say) that this
/// build skips; the Raft section and `topics_omitted` may be absent or nil.
#[test]
fn cluster_answers_with_unknown_node_fields_and_no_raft_decode() {
    let mut node = vec![0x85];
    msgpack::str(&mut node, "node_id");
    msgpack::uint(&mut node, 2);
    msgpack::str(&mut node, "host");
    msgpack::str(&mut node, "127.0.0.2");
    msgpack::str(&mut node, "port");
    msgpack::uint(&mut node, 9420);
    msgpack::str(&mut node, "rack");
    msgpack::str(&mut node, "r1");
    msgpack::str(&mut node, "uptime_ms");
    msgpack::uint(&mut node, 120);
    let mut body = vec![0x87];
    msgpack::str(&mut body, "cluster_id");
    msgpack::str(&mut body, "c1");
    msgpack::str(&mut body, "node_id");
    msgpack::uint(&mut body, 2);
    msgpack::str(&mut body, "metadata_version");
    msgpack::uint(&mut body, 7);
    msgpack::str(&mut body, "raft");
    body.push(0xc0);
    msgpack::str(&mut body, "topics_omitted");
    body.push(0xc0);
    msgpack::str(&mut body, "nodes");
    msgpack::array_len(&mut body, 1);
    body.extend_from_slice(&node);
    msgpack::str(&mut body, "topics");
    msgpack::array_len(&mut body, 0);
    let answer: DescribeClusterResponse = codec::decode_body(&body).unwrap();
    assert_eq!(
        answer,
        DescribeClusterResponse {
            cluster_id: "c1".into(),
            node_id: NodeId(2),
            controller_id: None,
            metadata_version: 7,
            raft: None,
            nodes: vec![ClusterNode {
                node_id: NodeId(2),
                host: "127.0.0.2".into(),
                port: 9420,
                fenced: false,
                lease_age_ms: None,
            }],
            topics: Vec::new(),
            topics_omitted: None,
            replica_status: None,
        }
    );
}

/// DescribeCluster names topics under Metadata's rules: at most 1,024, each a valid name.
#[test]
fn cluster_request_topics_follow_metadata_rules() {
    let request = |topics: Vec<String>| {
        let frame = Request::from(DescribeClusterRequest {
            topics: Some(topics),
        })
        .encode(1)
        .unwrap();
        decode_request(&frame)
    };
    let names = |count: u32| (0..count).map(|t| format!("t{t}")).collect::<Vec<_>>();
    assert!(request(names(TOPICS_PER_REQUEST_MAX)).is_ok());
    let error = request(names(TOPICS_PER_REQUEST_MAX + 1)).unwrap_err();
    assert!(
        matches!(
            error,
            ProtocolError::FieldTooLarge {
                field: "topics",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.error_code(), ErrorCode::InvalidRequest);
    assert_eq!(
        request(vec!["ok".into(), "not ok".into()])
            .unwrap_err()
            .error_code(),
        ErrorCode::InvalidTopicName
    );
    // Absent means every topic; the empty map is the whole request.
    assert_eq!(
        decode_request(&frame_with_body(
            RequestKind::DescribeCluster.code(),
            1,
            &[0x80]
        ))
        .unwrap(),
        Request::from(DescribeClusterRequest { topics: None })
    );
}

// ---------------------------------------------------------------------------------------------
// The hand-written fetch answer.

/// The records of every partition appear in the parts as the caller's own slices (never
/// copied), the bin header before each picks bin8, bin16 or bin32 by size, and the frame's
/// length field matches the parts.
#[test]
fn fetch_writer_borrows_records_and_sizes_bins() {
    let batch = {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(Some(b"k"), Some(b"v"), &[], 1_700_000_000_000);
        builder.build()
    };
    let medium = vec![0xab; 300];
    let large = vec![0xcd; 70_000];
    let huge = vec![0xef; 5 << 20];
    let cases: [(&[u8], &[u8]); 5] = [
        (&[], &[0xc4, 0x00]),
        (&batch, &[0xc4, batch.len() as u8]),
        (&medium, &[0xc5, 0x01, 0x2c]),
        (&large, &[0xc6, 0x00, 0x01, 0x11, 0x70]),
        (&huge, &[0xc6, 0x00, 0x50, 0x00, 0x00]),
    ];
    let response = FetchResponseRef {
        topics: vec![FetchTopicRef {
            name: "orders",
            partitions: cases
                .iter()
                .enumerate()
                .map(|(i, (records, _))| FetchPartitionRef {
                    partition: PartitionId(i as u32),
                    error: None,
                    high_watermark: Some(Offset(10)),
                    last_stable_offset: Some(Offset(10)),
                    log_start_offset: Some(Offset(0)),
                    records,
                })
                .collect(),
        }],
    };
    let parts = encode_fetch_response(42, &response).unwrap();
    let borrowed: Vec<&[u8]> = parts
        .parts()
        .iter()
        .filter_map(|part| match part {
            FramePart::Borrowed(bytes) => Some(*bytes),
            FramePart::Owned(_) => None,
        })
        .collect();
    assert_eq!(borrowed.len(), 4, "the empty records need no part");
    for (part, (records, bin_header)) in borrowed.iter().zip(&cases[1..]) {
        assert_eq!(part.as_ptr(), records.as_ptr(), "records are not copied");
        assert_eq!(part.len(), records.len());
        let position = parts
            .parts()
            .iter()
            .position(|p| p.as_slice().as_ptr() == part.as_ptr());
        let before = parts.parts()[position.unwrap() - 1].as_slice();
        assert!(before.ends_with(bin_header));
    }
    let io_bytes: usize = parts.io_slices().iter().map(|slice| slice.len()).sum();
    assert_eq!(io_bytes, parts.frame_bytes());
    let bytes = parts.to_vec();
    let frame = whole_frame(&bytes);
    assert_eq!(frame.header.kind, RequestKind::Fetch.code() | RESPONSE_BIT);
    assert_eq!(frame.header.correlation_id, 42);
    let Response::Fetch(decoded) = Response::decode(&frame.header, &bytes[frame.body]).unwrap()
    else {
        panic!("expected a fetch answer");
    };
    let records: Vec<&[u8]> = decoded.topics[0]
        .partitions
        .iter()
        .map(|p| p.records.as_slice())
        .collect();
    let expected: Vec<&[u8]> = cases.iter().map(|(records, _)| *records).collect();
    assert_eq!(records, expected);
    assert_eq!(
        crate::batch::split_batches(records[1]).count(),
        1,
        "the stored batch arrives intact"
    );
}

/// A fetch answer that would exceed the frame limit is refused, not truncated.
#[test]
fn fetch_writer_refuses_oversized_answers() {
    let records = vec![0u8; FRAME_BYTES_MAX as usize];
    let response = FetchResponseRef {
        topics: vec![FetchTopicRef {
            name: "orders",
            partitions: vec![FetchPartitionRef {
                partition: PartitionId(0),
                error: None,
                high_watermark: None,
                last_stable_offset: None,
                log_start_offset: None,
                records: &records,
            }],
        }],
    };
    assert!(matches!(
        encode_fetch_response(1, &response),
        Err(ProtocolError::EncodedTooLarge { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Error codes and the kind table.

/// Error codes are unique, sorted, never 0, group errors within the group range, and their
/// names, flags and meanings round-trip through `from_code`.
#[test]
fn error_codes_are_stable_and_unique() {
    let codes: Vec<u16> = ErrorCode::ALL.iter().map(|code| code.code()).collect();
    assert!(codes.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(!codes.contains(&0));
    let group_codes: Vec<u16> = codes
        .iter()
        .copied()
        .filter(|code| (GROUP_ERROR_CODE_FIRST..=GROUP_ERROR_CODE_LAST).contains(code))
        .collect();
    assert_eq!(group_codes, (100..=114).collect::<Vec<u16>>());
    assert_eq!(ErrorCode::FencedMemberEpoch.code(), 106);
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_code(code.code()), Some(*code));
        let error = ResponseError::new(*code, "m");
        assert_eq!(error.name, code.name());
        assert_eq!(error.retriable, code.is_retriable());
    }
    assert_eq!(ErrorCode::from_code(0), None);
    assert_eq!(ErrorCode::NotLeader.code(), 40);
    assert!(ErrorCode::NotLeader.is_retriable());
    assert!(!ErrorCode::OffsetOutOfRange.is_retriable());
}

/// An error message longer than its cap is cut at a character boundary.
#[test]
fn long_error_messages_are_cut_at_a_character_boundary() {
    let error = ResponseError::new(ErrorCode::InvalidConfig, "ü".repeat(200));
    assert_eq!(error.message.len(), ERROR_MESSAGE_BYTES_MAX as usize);
    let error = ResponseError::new(ErrorCode::InvalidConfig, format!("a{}", "ü".repeat(200)));
    assert_eq!(error.message.len(), ERROR_MESSAGE_BYTES_MAX as usize - 1);
}

/// The handshake lists every kind with its range, all at version 1 today; number 19 stays
/// free for consumer groups, so DescribeCluster is 20, ElectLeaders 21 and
/// AlterPartitionReassignments 22.
#[test]
fn handshake_lists_every_kind() {
    let list = RequestKind::handshake_list();
    assert_eq!(list.len(), 22);
    let codes: Vec<u16> = (0..=18).chain([20, 21, 22]).collect();
    for (code, entry) in codes.into_iter().zip(&list) {
        assert_eq!(entry.kind, code);
        assert_eq!(
            RequestKind::from_code(entry.kind).unwrap().name(),
            entry.name
        );
        assert_eq!((entry.version_min, entry.version_max), (1, 1));
    }
    assert!(RequestKind::from_code(19).is_none());
    assert_eq!(RequestKind::DescribeCluster.code(), 20);
    assert_eq!(RequestKind::ElectLeaders.code(), 21);
    assert_eq!(RequestKind::AlterPartitionReassignments.code(), 22);
}

/// AlterPartitionReassignments refuses as a whole only what breaks a bound: no partition or
/// more than 4,096, a target of more than 16 replicas, a bad topic name, a long timeout. An
/// empty target or a node named twice decodes: the controller refuses that partition alone.
#[test]
fn reassignment_requests_keep_their_bounds() {
    let reassignment = |replicas: Vec<u32>| PartitionReassignment {
        topic: "orders".into(),
        partition: PartitionId(0),
        replicas: replicas.into_iter().map(NodeId).collect(),
    };
    let request = |partitions: Vec<PartitionReassignment>| AlterPartitionReassignmentsRequest {
        partitions,
        timeout_ms: 1000,
    };
    let most: Vec<u32> = (1..=REASSIGNMENT_REPLICAS_MAX).collect();
    for accepted in [
        request(vec![reassignment(vec![3, 1])]),
        request(vec![reassignment(vec![])]),
        request(vec![reassignment(vec![2, 2])]),
        request(vec![reassignment(most.clone())]),
    ] {
        let bytes = Request::from(accepted.clone()).encode(1).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), Request::from(accepted));
    }
    let mut too_many = most;
    too_many.push(REASSIGNMENT_REPLICAS_MAX + 1);
    for refused in [
        request(Vec::new()),
        request(vec![
            reassignment(vec![1]);
            PARTITIONS_PER_REQUEST_MAX as usize + 1
        ]),
        request(vec![reassignment(too_many)]),
        AlterPartitionReassignmentsRequest {
            timeout_ms: crate::limits::TIMEOUT_MS_MAX + 1,
            ..request(vec![reassignment(vec![1])])
        },
    ] {
        let error = decode_request(&Request::from(refused.clone()).encode(1).unwrap()).unwrap_err();
        assert_eq!(error.error_code(), ErrorCode::InvalidRequest, "{refused:?}");
    }
    let bad_name = request(vec![PartitionReassignment {
        topic: "a/b".into(),
        ..reassignment(vec![1])
    }]);
    let error = decode_request(&Request::from(bad_name).encode(1).unwrap()).unwrap_err();
    assert_eq!(error.error_code(), ErrorCode::InvalidTopicName);
}

/// ElectLeaders' two modes are kept apart at decoding: a preferred election names no target,
/// a targeted one names the target of every partition and at least one partition; at most
/// 4,096 partitions, each topic name valid.
#[test]
fn elect_leaders_requests_keep_their_mode_and_bounds() {
    let election = |to: Option<u32>| LeaderElection {
        topic: "orders".into(),
        partition: PartitionId(0),
        to: to.map(NodeId),
    };
    let request = |partitions: Vec<LeaderElection>, preferred: bool| ElectLeadersRequest {
        partitions,
        preferred,
        timeout_ms: 1000,
    };
    assert!(request(vec![election(Some(2))], false).validate().is_ok());
    assert!(request(vec![election(None)], true).validate().is_ok());
    assert!(
        request(Vec::new(), true).validate().is_ok(),
        "preferred, every partition"
    );
    for refused in [
        request(vec![election(Some(2))], true),
        request(vec![election(None)], false),
        request(Vec::new(), false),
        request(
            vec![election(Some(2)); PARTITIONS_PER_REQUEST_MAX as usize + 1],
            false,
        ),
        ElectLeadersRequest {
            timeout_ms: crate::limits::TIMEOUT_MS_MAX + 1,
            ..request(vec![election(Some(2))], false)
        },
    ] {
        let error = decode_request(&Request::from(refused.clone()).encode(1).unwrap()).unwrap_err();
        assert_eq!(error.error_code(), ErrorCode::InvalidRequest, "{refused:?}");
    }
    let bad_name = request(
        vec![LeaderElection {
            topic: "a/b".into(),
            ..election(Some(2))
        }],
        false,
    );
    let error = decode_request(&Request::from(bad_name).encode(1).unwrap()).unwrap_err();
    assert_eq!(error.error_code(), ErrorCode::InvalidTopicName);
}

// ---------------------------------------------------------------------------------------------
// Golden fixtures, repeated in PROTOCOL.md.

const PROTOCOL_MD: &str = include_str!("../../../PROTOCOL.md");

/// The hex in PROTOCOL.md's fenced block after `<!-- fixture: NAME -->`.
fn doc_fixture(name: &str) -> Vec<u8> {
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

/// The rows of a PROTOCOL.md table between `<!-- begin NAME -->` and `<!-- end NAME -->`, as
/// trimmed cells, header and separator rows left out.
fn doc_table(name: &str) -> Vec<Vec<String>> {
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

fn golden_batch() -> Vec<u8> {
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(Some(b"k1"), Some(b"hello"), &[], 1_700_000_000_000);
    builder.build()
}

fn golden_handshake_request() -> Request {
    Request::from(HandshakeRequest {
        client_id: "example-app".into(),
        client_software_name: "vltava-client".into(),
        client_software_version: "0.1.0".into(),
    })
}

fn golden_produce_request() -> Request {
    Request::from(ProduceRequest {
        acks: Acks::All,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: "orders".into(),
            partitions: vec![ProducePartition {
                partition: PartitionId(0),
                current_leader_epoch: Some(LeaderEpoch(3)),
                records: golden_batch(),
            }],
        }],
    })
}

fn golden_produce_response() -> Response {
    Response::from(ProduceResponse {
        topics: vec![ProduceTopicResponse {
            name: "orders".into(),
            partitions: vec![ProducePartitionResponse {
                partition: PartitionId(0),
                error: Some(topic_partition_error()),
                base_offset: None,
                log_append_time: None,
                log_start_offset: None,
            }],
        }],
    })
}

fn golden_describe_cluster_request() -> Request {
    Request::from(DescribeClusterRequest {
        topics: Some(vec!["orders".into()]),
    })
}

fn golden_describe_cluster_response() -> Response {
    Response::from(DescribeClusterResponse {
        cluster_id: "c1".into(),
        node_id: NodeId(1),
        controller_id: Some(NodeId(2)),
        metadata_version: 42,
        raft: Some(Box::new(RaftInfo {
            term: 3,
            commit_index: Some(42),
            applied_index: Some(42),
            leader_id: Some(NodeId(2)),
        })),
        nodes: vec![ClusterNode {
            node_id: NodeId(1),
            host: "127.0.0.1".into(),
            port: 9420,
            fenced: false,
            lease_age_ms: None,
        }],
        topics: vec![TopicMetadata {
            name: "orders".into(),
            error: None,
            internal: false,
            partitions: vec![PartitionMetadata {
                partition: PartitionId(0),
                error: None,
                leader: Some(NodeId(1)),
                leader_epoch: LeaderEpoch(1),
                replicas: vec![NodeId(1)],
                in_sync_replicas: vec![NodeId(1)],
            }],
        }],
        topics_omitted: None,
        replica_status: None,
    })
}

fn golden_elect_leaders_request() -> Request {
    Request::from(ElectLeadersRequest {
        partitions: vec![LeaderElection {
            topic: "orders".into(),
            partition: PartitionId(0),
            to: Some(NodeId(2)),
        }],
        preferred: false,
        timeout_ms: 30_000,
    })
}

fn golden_reassignments_request() -> Request {
    Request::from(AlterPartitionReassignmentsRequest {
        partitions: vec![PartitionReassignment {
            topic: "orders".into(),
            partition: PartitionId(0),
            replicas: vec![NodeId(3), NodeId(1)],
        }],
        timeout_ms: 30_000,
    })
}

fn golden_reassignments_response() -> Response {
    Response::from(AlterPartitionReassignmentsResponse {
        partitions: vec![PartitionReassignmentResult {
            topic: "orders".into(),
            partition: PartitionId(0),
            error: None,
            replicas: vec![NodeId(3), NodeId(1), NodeId(2)],
            target_replicas: Some(vec![NodeId(3), NodeId(1)]),
            leader: Some(NodeId(1)),
            leader_epoch: Some(LeaderEpoch(6)),
        }],
    })
}

fn golden_elect_leaders_response() -> Response {
    Response::from(ElectLeadersResponse {
        partitions: vec![LeaderElectionResult {
            topic: "orders".into(),
            partition: PartitionId(0),
            error: None,
            leader: Some(NodeId(2)),
            leader_epoch: Some(LeaderEpoch(5)),
        }],
        more: false,
    })
}

fn golden_error_response() -> Response {
    let request = FrameHeader {
        length: 12,
        kind: RequestKind::Fetch.code(),
        version: 7,
        correlation_id: 3,
    };
    let error = ProtocolError::UnsupportedVersion {
        kind: RequestKind::Fetch,
        version: 7,
    };
    Response::failed(&request, error.response_error())
}

const HANDSHAKE_REQUEST_HEX: &str = "0000006400000001000000000000000183a9636c69656e745f6964ab6578616d\
    706c652d617070b4636c69656e745f736f6674776172655f6e616d65ad766c74\
    6176612d636c69656e74b7636c69656e745f736f6674776172655f7665727369\
    6f6ea5302e312e30";

const PRODUCE_REQUEST_HEX: &str = "000000b900070001000000000000000283a461636b73ffaa74696d656f75745f\
    6d73cd7530a6746f706963739182a46e616d65a66f7264657273aa7061727469\
    74696f6e739183a9706172746974696f6e00b463757272656e745f6c65616465\
    725f65706f636803a77265636f726473c44b00000000000000000000003f0000\
    0000015028da910000000000000000018bcfe568000000018bcfe56800ffffff\
    ffffffffffffffffffffff000000011a000000046b310a68656c6c6f00";

const PRODUCE_RESPONSE_HEX: &str = "0000008f80070001000000000000000281a6746f706963739182a46e616d65a6\
    6f7264657273aa706172746974696f6e739182a9706172746974696f6e00a565\
    72726f7285a4636f646528a46e616d65a94e6f744c6561646572a76d65737361\
    6765bd6e6f6465203120646f6573206e6f74206c656164206f72646572732d30\
    a9726574726961626c65c3a66c656164657202";

const ERROR_RESPONSE_HEX: &str = "0000009a80080007000000000000000381a56572726f7286a4636f646503a46e\
    616d65b2556e737570706f7274656456657273696f6ea76d657373616765d939\
    466574636820646f6573206e6f7420737065616b2076657273696f6e20373b20\
    697420737065616b732076657273696f6e73203120746f2031a9726574726961\
    626c65c2ab76657273696f6e5f6d696e01ab76657273696f6e5f6d617801";

const ELECT_LEADERS_REQUEST_HEX: &str = "0000004f00150001000000000000000583aa706172746974696f6e739183a574\
    6f706963a66f7264657273a9706172746974696f6e00a2746f02a97072656665\
    72726564c2aa74696d656f75745f6d73cd7530";

const ELECT_LEADERS_RESPONSE_HEX: &str = "0000004880150001000000000000000581aa706172746974696f6e739184a574\
    6f706963a66f7264657273a9706172746974696f6e00a66c656164657202ac6c\
    65616465725f65706f636805";

const REASSIGNMENTS_REQUEST_HEX: &str = "0000004c00160001000000000000000682aa706172746974696f6e739183a574\
    6f706963a66f7264657273a9706172746974696f6e00a87265706c6963617392\
    0301aa74696d656f75745f6d73cd7530";

const REASSIGNMENTS_RESPONSE_HEX: &str = "0000006880160001000000000000000681aa706172746974696f6e739186a574\
    6f706963a66f7264657273a9706172746974696f6e00a87265706c6963617393\
    030102af7461726765745f7265706c69636173920301a66c656164657201ac6c\
    65616465725f65706f636806";

const DESCRIBE_CLUSTER_REQUEST_HEX: &str =
    "0000001c00140001000000000000000481a6746f7069637391a66f7264657273";

const DESCRIBE_CLUSTER_RESPONSE_HEX: &str = "0000010c80140001000000000000000487aa636c75737465725f6964a26331a7\
    6e6f64655f696401ad636f6e74726f6c6c65725f696402b06d65746164617461\
    5f76657273696f6e2aa47261667484a47465726d03ac636f6d6d69745f696e64\
    65782aad6170706c6965645f696e6465782aa96c65616465725f696402a56e6f\
    6465739183a76e6f64655f696401a4686f7374a93132372e302e302e31a4706f\
    7274cd24cca6746f706963739183a46e616d65a66f7264657273a8696e746572\
    6e616cc2aa706172746974696f6e739185a9706172746974696f6e00a66c6561\
    64657201ac6c65616465725f65706f636801a87265706c696361739101b0696e\
    5f73796e635f7265706c696361739101";

/// The fixtures encode to exactly these bytes, decode back to the same values, and
/// PROTOCOL.md shows the same bytes: the documented examples are the tested ones.
#[test]
fn golden_fixtures_match_the_code_and_the_doc() {
    let requests = [
        (
            "handshake-request",
            HANDSHAKE_REQUEST_HEX,
            golden_handshake_request(),
            1,
        ),
        (
            "produce-request",
            PRODUCE_REQUEST_HEX,
            golden_produce_request(),
            2,
        ),
        (
            "describe-cluster-request",
            DESCRIBE_CLUSTER_REQUEST_HEX,
            golden_describe_cluster_request(),
            4,
        ),
        (
            "elect-leaders-request",
            ELECT_LEADERS_REQUEST_HEX,
            golden_elect_leaders_request(),
            5,
        ),
        (
            "reassignments-request",
            REASSIGNMENTS_REQUEST_HEX,
            golden_reassignments_request(),
            6,
        ),
    ];
    for (name, expected, request, correlation_id) in requests {
        let bytes = request.encode(correlation_id).unwrap();
        assert_eq!(hex(&bytes), expected, "{name}");
        assert_eq!(decode_request(&bytes).unwrap(), request, "{name}");
        assert_eq!(hex(&doc_fixture(name)), expected, "PROTOCOL.md, {name}");
    }
    let responses = [
        (
            "produce-response",
            PRODUCE_RESPONSE_HEX,
            golden_produce_response(),
            2,
        ),
        (
            "error-response",
            ERROR_RESPONSE_HEX,
            golden_error_response(),
            3,
        ),
        (
            "describe-cluster-response",
            DESCRIBE_CLUSTER_RESPONSE_HEX,
            golden_describe_cluster_response(),
            4,
        ),
        (
            "elect-leaders-response",
            ELECT_LEADERS_RESPONSE_HEX,
            golden_elect_leaders_response(),
            5,
        ),
        (
            "reassignments-response",
            REASSIGNMENTS_RESPONSE_HEX,
            golden_reassignments_response(),
            6,
        ),
    ];
    for (name, expected, response, correlation_id) in responses {
        let bytes = response.encode(correlation_id).unwrap();
        assert_eq!(hex(&bytes), expected, "{name}");
        assert_eq!(decode_response(&bytes).unwrap(), response, "{name}");
        assert_eq!(hex(&doc_fixture(name)), expected, "PROTOCOL.md, {name}");
    }
    // The batch inside the produce fixture is the one PROTOCOL.md walks through.
    assert_eq!(hex(&doc_fixture("record-batch")), hex(&golden_batch()));
}

/// PROTOCOL.md's error table lists every code with its name, retriable flag and meaning, and
/// nothing else.
#[test]
fn protocol_md_lists_every_error_code() {
    let rows = doc_table("error-codes");
    let expected: Vec<Vec<String>> = ErrorCode::ALL
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

/// `n` with commas between groups of three digits, as PROTOCOL.md writes numbers.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// PROTOCOL.md section 9 lists every limit with its value and the error breaking it gets, by
/// one rule. Each value is its constant, and for each request limit a request one past it
/// decodes to the error the row names: the nesting bound used to give `CorruptFrame` and a
/// bad group id `InvalidRequest`, against the document. (The batch rows are the node's
/// checks per partition, covered by the batch and integration tests.)
#[test]
fn protocol_md_limits_match_the_code() {
    use crate::limits::{
        BATCH_BYTES_MAX, BATCH_RECORDS_MAX, CLIENT_ID_BYTES_MAX, CONFIG_KEY_BYTES_MAX,
        CONFIG_VALUE_BYTES_MAX, CONFIGS_PER_TOPIC_MAX, FETCH_RECORDS_BYTES_MAX, FETCH_WAIT_MS_MAX,
        GROUP_ID_BYTES_MAX, GROUP_MEMBER_FIELD_BYTES_MAX, GROUP_WAIT_MS_MAX,
        GROUPS_PER_REQUEST_MAX, OFFSET_METADATA_BYTES_MAX, PARTITIONS_PER_TOPIC_MAX,
        RECORD_HEADERS_MAX, RECORDS_DECOMPRESSED_BYTES_MAX, SOFTWARE_FIELD_BYTES_MAX,
        TIMEOUT_MS_MAX,
    };
    let count = |n: u32| grouped(n.into());
    let bytes = |n: u32| format!("{} bytes", grouped(n.into()));
    let ms = |n: u32| format!("{} ms", grouped(n.into()));
    let mib = |n: u64| format!("{} MiB ({} bytes)", n >> 20, grouped(n));
    let long = |n: u32| "x".repeat(n as usize + 1);
    let refused = |request: Request| {
        let error = decode_request(&request.encode(1).unwrap()).unwrap_err();
        error.error_code().name().to_owned()
    };
    let new_topic = |configs: BTreeMap<String, String>, partitions: Option<u32>| {
        Request::from(CreateTopicsRequest {
            topics: vec![NewTopic {
                name: "t".into(),
                partitions,
                replication_factor: None,
                configs,
            }],
            timeout_ms: 1000,
            validate_only: false,
        })
    };
    let fetch = |partitions: u32, max_wait_ms: u32| {
        Request::from(FetchRequest {
            max_wait_ms,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "t".into(),
                partitions: (0..partitions)
                    .map(|p| FetchPartition {
                        partition: PartitionId(p),
                        fetch_offset: Offset(0),
                        partition_max_bytes: 1 << 20,
                        current_leader_epoch: None,
                    })
                    .collect(),
            }],
        })
    };
    let hello = |client_id: String, software: String| {
        Request::from(HandshakeRequest {
            client_id,
            client_software_name: software,
            client_software_version: "0".into(),
        })
    };
    let heartbeat = |member_id: String, max_wait_ms: u32| {
        Request::from(ConsumerGroupHeartbeatRequest {
            group_id: "g".into(),
            member_id,
            max_wait_ms,
            ..ConsumerGroupHeartbeatRequest::default()
        })
    };
    let frame_code = || {
        let header = FrameHeader {
            length: FRAME_BYTES_MAX - LENGTH_FIELD_BYTES as u32 + 1,
            kind: RequestKind::Produce.code(),
            version: 1,
            correlation_id: 1,
        };
        parse_frame(&header.encode())
            .unwrap_err()
            .error_code()
            .name()
            .to_owned()
    };
    let nesting_code = || {
        let mut body = vec![0x81];
        msgpack::str(&mut body, "future_field");
        body.extend(std::iter::repeat_n(0x91, BODY_DEPTH_MAX as usize - 1));
        body.push(0x90);
        let frame = frame_with_body(RequestKind::Metadata.code(), 1, &body);
        decode_request(&frame)
            .unwrap_err()
            .error_code()
            .name()
            .to_owned()
    };
    let group_id_codes = || {
        let codes: Vec<String> = [String::new(), long(GROUP_ID_BYTES_MAX)]
            .into_iter()
            .map(|group_id| refused(Request::from(FindCoordinatorRequest { group_id })))
            .collect();
        assert_eq!(codes[0], codes[1], "an empty and a long group id alike");
        codes[0].clone()
    };
    let commit_metadata = || {
        refused(Request::from(OffsetCommitRequest {
            group_id: "g".into(),
            member_id: String::new(),
            member_epoch: -1,
            topics: vec![OffsetCommitTopic {
                topic: "t".into(),
                partitions: vec![OffsetCommitPartition {
                    partition: PartitionId(0),
                    offset: Offset(0),
                    leader_epoch: None,
                    metadata: long(OFFSET_METADATA_BYTES_MAX),
                }],
            }],
        }))
    };
    let node_bound = || "None".to_owned();
    type Code<'a> = Box<dyn Fn() -> String + 'a>;
    let expected: Vec<(&str, String, Code<'_>)> = vec![
        (
            "Frame, header included",
            mib(FRAME_BYTES_MAX.into()),
            Box::new(frame_code),
        ),
        (
            "Body nesting",
            format!("{BODY_DEPTH_MAX} levels"),
            Box::new(nesting_code),
        ),
        (
            "Topics per request",
            count(TOPICS_PER_REQUEST_MAX),
            Box::new(|| {
                let names = (0..=TOPICS_PER_REQUEST_MAX).map(|t| format!("t{t}"));
                refused(Request::from(MetadataRequest {
                    topics: Some(names.collect()),
                }))
            }),
        ),
        (
            "Partitions per request",
            count(PARTITIONS_PER_REQUEST_MAX),
            Box::new(|| refused(fetch(PARTITIONS_PER_REQUEST_MAX + 1, 0))),
        ),
        (
            "Partitions per topic",
            count(PARTITIONS_PER_TOPIC_MAX),
            Box::new(|| {
                refused(new_topic(
                    BTreeMap::new(),
                    Some(PARTITIONS_PER_TOPIC_MAX + 1),
                ))
            }),
        ),
        (
            "Replicas per reassigned partition",
            count(REASSIGNMENT_REPLICAS_MAX),
            Box::new(|| {
                let replicas = (0..=REASSIGNMENT_REPLICAS_MAX).map(NodeId).collect();
                refused(Request::from(AlterPartitionReassignmentsRequest {
                    partitions: vec![PartitionReassignment {
                        topic: "t".into(),
                        partition: PartitionId(0),
                        replicas,
                    }],
                    timeout_ms: 1000,
                }))
            }),
        ),
        (
            "Topic name",
            format!("1 to {TOPIC_NAME_BYTES_MAX} bytes"),
            Box::new(|| {
                refused(Request::from(DeleteTopicsRequest {
                    topics: vec![long(TOPIC_NAME_BYTES_MAX)],
                    timeout_ms: 1000,
                }))
            }),
        ),
        (
            "Config keys per topic",
            count(CONFIGS_PER_TOPIC_MAX),
            Box::new(|| {
                let configs = (0..=CONFIGS_PER_TOPIC_MAX).map(|k| (format!("k{k}"), "v".into()));
                refused(new_topic(configs.collect(), None))
            }),
        ),
        (
            "Config key",
            bytes(CONFIG_KEY_BYTES_MAX),
            Box::new(|| {
                let configs = BTreeMap::from([(long(CONFIG_KEY_BYTES_MAX), "v".to_owned())]);
                refused(new_topic(configs, None))
            }),
        ),
        (
            "Config value",
            bytes(CONFIG_VALUE_BYTES_MAX),
            Box::new(|| {
                let configs = BTreeMap::from([("k".to_owned(), long(CONFIG_VALUE_BYTES_MAX))]);
                refused(new_topic(configs, None))
            }),
        ),
        (
            "`client_id`",
            bytes(CLIENT_ID_BYTES_MAX),
            Box::new(|| refused(hello(long(CLIENT_ID_BYTES_MAX), "s".into()))),
        ),
        (
            "Software name or version",
            bytes(SOFTWARE_FIELD_BYTES_MAX),
            Box::new(|| refused(hello("c".into(), long(SOFTWARE_FIELD_BYTES_MAX)))),
        ),
        (
            "`timeout_ms`",
            ms(TIMEOUT_MS_MAX),
            Box::new(|| {
                refused(Request::from(DeleteTopicsRequest {
                    topics: vec!["t".into()],
                    timeout_ms: TIMEOUT_MS_MAX + 1,
                }))
            }),
        ),
        (
            "Fetch `max_wait_ms`",
            ms(FETCH_WAIT_MS_MAX),
            Box::new(|| refused(fetch(1, FETCH_WAIT_MS_MAX + 1))),
        ),
        (
            "Group id",
            format!("1 to {GROUP_ID_BYTES_MAX} bytes"),
            Box::new(group_id_codes),
        ),
        (
            "Groups per request",
            count(GROUPS_PER_REQUEST_MAX),
            Box::new(|| {
                let ids = (0..=GROUPS_PER_REQUEST_MAX).map(|g| format!("g{g}"));
                refused(Request::from(DescribeGroupsRequest {
                    group_ids: ids.collect(),
                }))
            }),
        ),
        (
            "Member id, instance id, assignor",
            bytes(GROUP_MEMBER_FIELD_BYTES_MAX),
            Box::new(|| refused(heartbeat(long(GROUP_MEMBER_FIELD_BYTES_MAX), 0))),
        ),
        (
            "Heartbeat `max_wait_ms`",
            ms(GROUP_WAIT_MS_MAX),
            Box::new(|| refused(heartbeat(String::new(), GROUP_WAIT_MS_MAX + 1))),
        ),
        (
            "Offset metadata",
            bytes(OFFSET_METADATA_BYTES_MAX),
            Box::new(commit_metadata),
        ),
        (
            "Record batch",
            mib(BATCH_BYTES_MAX.into()),
            Box::new(|| "BatchTooLarge".to_owned()),
        ),
        (
            "Records per batch",
            format!("1 to {}", grouped(BATCH_RECORDS_MAX.into())),
            Box::new(|| "CorruptBatch".to_owned()),
        ),
        (
            "Headers per record",
            count(RECORD_HEADERS_MAX),
            Box::new(|| "CorruptBatch".to_owned()),
        ),
        (
            "Decompressed records",
            mib(RECORDS_DECOMPRESSED_BYTES_MAX as u64),
            Box::new(|| "CorruptBatch".to_owned()),
        ),
        (
            "Records in one fetch answer",
            mib(FETCH_RECORDS_BYTES_MAX.into()),
            Box::new(node_bound),
        ),
        (
            "Error `message`",
            bytes(ERROR_MESSAGE_BYTES_MAX),
            Box::new(node_bound),
        ),
        (
            "Partitions listed",
            count(crate::limits::CLUSTER_PARTITIONS_LISTED_MAX),
            Box::new(node_bound),
        ),
        (
            "Replica statuses listed",
            count(crate::limits::CLUSTER_REPLICA_STATUSES_LISTED_MAX),
            Box::new(node_bound),
        ),
    ];
    let rows = doc_table("limits");
    let names: Vec<&str> = rows.iter().map(|row| row[0].as_str()).collect();
    let expected_names: Vec<&str> = expected.iter().map(|(name, ..)| *name).collect();
    assert_eq!(names, expected_names);
    for (row, (name, value, code)) in rows.iter().zip(&expected) {
        assert_eq!(&row[1], value, "the value of {name}");
        // The error cell starts with the code's name in backticks, or "None" for a bound on
        // what the node sends.
        let documented = row[3]
            .trim_start_matches('`')
            .split(['`', ':'])
            .next()
            .unwrap_or_default();
        assert_eq!(documented, code(), "the error of {name}");
    }
}

/// PROTOCOL.md's kind table lists every kind with its name and version range.
#[test]
fn protocol_md_lists_every_kind() {
    let rows: Vec<Vec<String>> = doc_table("request-kinds")
        .into_iter()
        .map(|row| row[..3].to_vec())
        .collect();
    let expected: Vec<Vec<String>> = RequestKind::ALL
        .iter()
        .map(|kind| {
            vec![
                kind.code().to_string(),
                format!("`{}`", kind.name()),
                format!("{}-{}", kind.version_min(), kind.version_max()),
            ]
        })
        .collect();
    assert_eq!(rows, expected);
}

proptest! {
    /// The borrowing Produce decoder agrees with the owned one: the same fields, records that
    /// are the very bytes of the body, and the same error for any body the owned one refuses.
    #[test]
    fn borrowed_produce_decoding_agrees_with_owned(
        request in request().prop_filter("produce only", |r| matches!(r, Request::Produce(_))),
        garbage in vec(any::<u8>(), 0..64),
    ) {
        let bytes = request.encode(7).unwrap();
        let frame = whole_frame(&bytes);
        let body = &bytes[frame.body.clone()];
        let Ok(Request::Produce(owned)) = Request::decode(&frame.header, body) else {
            panic!("the owned decoder reads what was encoded");
        };
        let borrowed = ProduceRequestRef::decode(&frame.header, body).unwrap();
        prop_assert_eq!(borrowed.acks, owned.acks);
        prop_assert_eq!(borrowed.timeout_ms, owned.timeout_ms);
        prop_assert_eq!(borrowed.topics.len(), owned.topics.len());
        for (b, o) in borrowed.topics.iter().zip(&owned.topics) {
            prop_assert_eq!(&b.name, &o.name);
            for (bp, op) in b.partitions.iter().zip(&o.partitions) {
                prop_assert_eq!(bp.partition, op.partition);
                prop_assert_eq!(bp.current_leader_epoch, op.current_leader_epoch);
                prop_assert_eq!(bp.records, &op.records[..]);
                let start = bp.records.as_ptr() as usize - body.as_ptr() as usize;
                prop_assert!(start + bp.records.len() <= body.len(), "records borrow the body");
            }
        }
        // Any other body: the same verdict both ways.
        let header = frame.header;
        let owned = Request::decode(&header, &garbage).map(|_| ());
        let borrowed = ProduceRequestRef::decode(&header, &garbage).map(|_| ());
        prop_assert_eq!(borrowed, owned);
    }
}

fn one_mib_produce() -> ProduceRequest {
    let mut builder = BatchBuilder::new(Compression::None);
    let value = vec![7u8; 1024];
    for _ in 0..1000 {
        builder.push(None, Some(&value), &[], 1);
    }
    ProduceRequest {
        acks: Acks::Leader,
        timeout_ms: 1000,
        topics: vec![ProduceTopic {
            name: "t".into(),
            partitions: vec![ProducePartition {
                partition: PartitionId(0),
                current_leader_epoch: None,
                records: builder.build(),
            }],
        }],
    }
}

#[test]
fn a_body_encoded_once_frames_exactly_as_encoding_it_each_time() {
    let request = one_mib_produce();
    let encoded = request.encode_body().unwrap();
    for correlation_id in [1, 42, u64::MAX] {
        let mut framed = encoded.header(correlation_id).to_vec();
        framed.extend_from_slice(encoded.body());
        assert_eq!(framed, request.encode_frame(correlation_id).unwrap());
    }
}

/// The frame around the records, with the records put back between its parts, is the frame
/// itself: for a 1 MiB batch, for one byte, for none (then there is nothing to leave out),
/// with a second partition holding equal bytes elsewhere (only the first one's are left out),
/// and an oversized body is refused as the whole frame would be.
#[test]
fn a_frame_around_the_records_is_the_frame_with_them() {
    let batch = one_mib_produce().topics[0].partitions[0].records.clone();
    for records in [batch, vec![9], Vec::new()] {
        for second_partition in [false, true] {
            let mut request = one_mib_produce();
            request.topics[0].partitions[0].records = records.clone();
            if second_partition {
                request.topics[0].partitions.push(ProducePartition {
                    partition: PartitionId(1),
                    current_leader_epoch: Some(LeaderEpoch(3)),
                    records: records.clone(),
                });
            }
            for correlation_id in [0, 7, u64::MAX] {
                let whole = request.encode_frame(correlation_id).unwrap();
                let around = request.encode_frame_around_records(correlation_id).unwrap();
                assert_eq!(around.around_hole, !records.is_empty());
                let mut joined = around.head.clone();
                if around.around_hole {
                    joined.extend_from_slice(&request.topics[0].partitions[0].records);
                }
                joined.extend_from_slice(&around.tail);
                assert_eq!(joined, whole);
            }
        }
    }
    let mut oversized = one_mib_produce();
    oversized.topics[0].partitions[0].records = vec![0; FRAME_BYTES_MAX as usize];
    assert!(matches!(
        oversized.encode_frame_around_records(1),
        Err(ProtocolError::EncodedTooLarge { .. })
    ));
}
