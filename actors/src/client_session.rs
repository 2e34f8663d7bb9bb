//! ClientSession: one per client connection. It reads frames, admits each request with a
//! permit (requests in flight on this connection, bytes in flight on the node), decodes and
//! routes it, and writes the answers in request order.
//!
//! - Owns: the connection, its handshake state, its queue of answers to write.
//! - Receives from: the socket.
//! - Sends to: Partition actors (produce, fetch, list offsets), the Controller (topic admin),
//!   the producer-id allocator; all answers come back on oneshots.
//! - Bounds: `inflight_requests_max` requests per connection (the reader stops reading the
//!   socket past it, so a client that floods requests or stops reading answers holds at most
//!   that many); `bytes_in_flight_max` request bytes across the node; a frame at most
//!   `FRAME_BYTES_MAX`, checked from its header before the body is read; a client that says
//!   nothing is closed after `HANDSHAKE_TIMEOUT` (before its handshake) or `IDLE_TIMEOUT`.
//! - Produce requests are queued at their partitions in arrival order before the session
//!   waits for any answer, so pipelined batches keep their order (idempotent sequences rely
//!   on it) while several wait for the same group commit.
//! - Shutdown: on the node's signal the reader stops; answers already admitted are written;
//!   then the connection closes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use vltava_messages::batch::{BatchHeader, LOG_OVERHEAD_BYTES};
use vltava_messages::limits::FRAME_BYTES_MAX;
use vltava_messages::protocol::{
    AlterTopicConfigsRequest, AlterTopicConfigsResponse, ConfigEntry, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeTopicsRequest, DescribeTopicsResponse, ErrorCode,
    FRAME_HEADER_BYTES, FetchPartitionRef, FetchRequest, FetchResponseRef, FetchTopicRef,
    FrameHeader, HandshakeResponse, InitProducerIdRequest, InitProducerIdResponse,
    LENGTH_COUNTED_HEADER_BYTES, ListOffsetsPartitionResponse, ListOffsetsRequest,
    ListOffsetsResponse, ListOffsetsTopicResponse, MetadataRequest, MetadataResponse, NodeInfo,
    PartitionMetadata, ProducePartitionResponse, ProduceRequest, ProduceRequestRef,
    ProduceResponse, ProduceTopicResponse, ProtocolError, Request, RequestKind, Response,
    ResponseError, TopicDescription, TopicMetadata, TopicResult, encode_fetch_response,
};
use vltava_messages::{LeaderEpoch, NodeId, Offset, PartitionId, ProducerEpoch};

use crate::controller::{ControllerError, ControllerHandle};
use crate::directory::{ActorDirectory, ActorKind, ActorStats, PublishedState, SessionGauges};
use crate::group_requests::{self, GroupAnswer};
use crate::groups::GroupManagerHandle;
use crate::listener::stopped;
use crate::metadata::MetadataImage;
use crate::metrics::RequestMetrics;
use crate::partition::{
    Acks, FetchOk, IntoBatch, PartitionError, PartitionHandle, Pending, ProduceOk,
};
use crate::partition_supervisor::{PartitionRegistry, PartitionSlot};
use crate::producer_ids::{LocalProducerIdAllocator, ProducerIdAllocator};
use crate::topic_config;

/// How long a new connection may take to send its handshake before it is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay silent between requests before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a client may take to send the body of a frame whose header it sent.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long writing one answer may take before the client counts as gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The default number of partitions of a topic created without a count.
pub const DEFAULT_PARTITIONS: u32 = 1;

/// What every session of a node shares. Immutable but for the handles' own internals.
#[derive(Debug)]
pub struct NodeServices {
    pub node: String,
    pub node_id: u32,
    pub cluster_id: String,
    pub controller: ControllerHandle,
    pub partitions: PartitionRegistry,
    pub producer_ids: LocalProducerIdAllocator,
    pub directory: ActorDirectory,
    /// Request bytes admitted and not yet answered, across the node.
    pub bytes_in_flight: Arc<Semaphore>,
    pub inflight_requests_max: usize,
    pub sessions_started: AtomicU64,
    /// Requests received and answer latency per kind, for `/metrics`.
    pub requests: Arc<RequestMetrics>,
    /// Consumer groups: routes group requests to their coordinators.
    pub groups: GroupManagerHandle,
}

/// An answer being prepared, in request order.
enum Answer {
    /// Ready to write; `close` ends the connection after it.
    Frame { bytes: Vec<u8>, close: bool },
    /// Still being computed.
    Later(JoinHandle<Outgoing>),
}

/// A computed answer.
enum Outgoing {
    Frame(Vec<u8>),
    Fetch {
        correlation_id: u64,
        answer: FetchAnswer,
    },
}

struct Queued {
    answer: Answer,
    correlation_id: u64,
    request: FrameHeader,
    /// When the request's header arrived.
    received: Instant,
    /// Held until the answer is written: this is what bounds a connection's requests.
    _permit: OwnedSemaphorePermit,
}

/// Serves one connection until it closes, the client goes silent, or the node shuts down.
pub async fn run_session(
    stream: TcpStream,
    peer: SocketAddr,
    services: Arc<NodeServices>,
    shutdown: watch::Receiver<bool>,
    listener_id: String,
) {
    let n = services.sessions_started.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}/session/{n}-{peer}", services.node);
    let gauges = Arc::new(SessionGauges {
        peer: peer.to_string(),
        ..SessionGauges::default()
    });
    let stats = services.directory.register_with_state(
        &id,
        ActorKind::ClientSession,
        Some(&listener_id),
        Some(PublishedState::Session(Arc::clone(&gauges))),
    );
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let (queue, answers) = mpsc::channel(services.inflight_requests_max);
    let writer = tokio::spawn(write_loop(
        writer,
        answers,
        id.clone(),
        Arc::clone(&gauges),
        Arc::clone(&stats),
        Arc::clone(&services.requests),
    ));
    let outcome = read_loop(reader, queue, &services, shutdown, &gauges).await;
    match &outcome {
        Ok(()) => tracing::debug!(session = %id, "connection closed"),
        Err(reason) => tracing::info!(session = %id, %reason, "connection closed"),
    }
    let _ = writer.await;
    services.directory.unregister(&id);
}

fn failure_frame(request: &FrameHeader, code: ErrorCode, message: impl Into<String>) -> Vec<u8> {
    Response::failed(request, ResponseError::new(code, message))
        .encode(request.correlation_id)
        .unwrap_or_default()
}

async fn read_loop(
    mut reader: OwnedReadHalf,
    queue: mpsc::Sender<Queued>,
    services: &Arc<NodeServices>,
    mut shutdown: watch::Receiver<bool>,
    gauges: &SessionGauges,
) -> Result<(), String> {
    let inflight = Arc::new(Semaphore::new(services.inflight_requests_max));
    let mut handshaken = false;
    loop {
        let mut header_bytes = [0u8; FRAME_HEADER_BYTES];
        let wait = if handshaken {
            IDLE_TIMEOUT
        } else {
            HANDSHAKE_TIMEOUT
        };
        tokio::select! {
            () = stopped(&mut shutdown) => return Ok(()),
            read = tokio::time::timeout(wait, reader.read_exact(&mut header_bytes)) => match read {
                Err(_) => return Err(format!("silent for {}s", wait.as_secs())),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(format!("read failed: {e}")),
                Ok(Ok(_)) => {}
            },
        }
        let header = FrameHeader::parse(&header_bytes);
        let received = Instant::now();
        services.requests.received(header.kind);
        if header.length < LENGTH_COUNTED_HEADER_BYTES {
            // Not even a whole header: there is no frame to answer.
            tracing::warn!(
                length = header.length,
                "frame shorter than its header; closing"
            );
            return Err("frame shorter than its header".into());
        }
        let permit = Arc::clone(&inflight)
            .acquire_owned()
            .await
            .map_err(|_| "session closing".to_owned())?;
        if !handshaken && header.kind != RequestKind::Handshake.code() {
            // Checked before decoding, so any first request but a Handshake, even one that
            // cannot be decoded, gets the same answer.
            tracing::warn!(kind = header.kind, "request before handshake");
            let bytes = failure_frame(
                &header,
                ErrorCode::HandshakeRequired,
                "the first request on a connection must be Handshake",
            );
            let answer = Answer::Frame { bytes, close: true };
            let _ = enqueue(&queue, gauges, header, received, permit, answer).await;
            return Err("no handshake".into());
        }
        if header.frame_bytes() > u64::from(FRAME_BYTES_MAX) {
            // The body is not read: answer by correlation id, then close.
            tracing::warn!(
                length = header.length,
                kind = header.kind,
                "frame length out of bounds"
            );
            let bytes = failure_frame(
                &header,
                ErrorCode::RequestTooLarge,
                format!(
                    "frame of {} bytes exceeds the limit of {FRAME_BYTES_MAX}",
                    header.frame_bytes()
                ),
            );
            let answer = Answer::Frame { bytes, close: true };
            let _ = enqueue(&queue, gauges, header, received, permit, answer).await;
            return Err("oversized frame".into());
        }
        let body_len = (header.length - LENGTH_COUNTED_HEADER_BYTES) as usize;
        let bytes_permit = Arc::clone(&services.bytes_in_flight)
            .acquire_many_owned(body_len.max(1) as u32)
            .await
            .map_err(|_| "node shutting down".to_owned())?;
        // Read into spare capacity: tokio fills it without zeroing it first, which for large
        // produce requests was a measurable share of the node's CPU.
        let mut body = Vec::with_capacity(body_len);
        let mut limited = (&mut reader).take(body_len as u64);
        match tokio::time::timeout(BODY_READ_TIMEOUT, limited.read_to_end(&mut body)).await {
            Err(_) => return Err("frame body not sent in time".into()),
            Ok(Err(e)) => return Err(format!("truncated frame: {e}")),
            Ok(Ok(n)) if n < body_len => {
                return Err(format!("truncated frame: {n} of {body_len} body bytes"));
            }
            Ok(Ok(_)) => {}
        }
        gauges
            .bytes_in
            .fetch_add((FRAME_HEADER_BYTES + body_len) as u64, Ordering::Relaxed);
        if header.kind == RequestKind::Produce.code() {
            // Produce, the hot path, is decoded borrowing its batches (no copy).
            match decode_produce(&header, body) {
                Ok(produce_request) => {
                    let expects_response = produce_request.acks != Acks::None;
                    let answer = produce(
                        produce_request,
                        header.correlation_id,
                        services,
                        bytes_permit,
                    );
                    if expects_response {
                        enqueue(&queue, gauges, header, received, permit, answer).await?;
                    }
                    continue;
                }
                Err(error) => {
                    refuse(&queue, gauges, header, received, permit, &error).await?;
                    continue;
                }
            }
        }
        let request = match Request::decode(&header, &body) {
            Ok(request) => request,
            Err(error) => {
                refuse(&queue, gauges, header, received, permit, &error).await?;
                continue;
            }
        };
        drop(body);
        if let Request::Handshake(hello) = &request {
            handshaken = true;
            set_text(&gauges.client_id, &hello.client_id);
            set_text(&gauges.client_software, &hello.client_software_name);
        }
        let expects_response = request.expects_response();
        let answer = dispatch(request, &header, services, bytes_permit, gauges);
        if expects_response {
            enqueue(&queue, gauges, header, received, permit, answer).await?;
        }
    }
}

/// The answer to a request that could not be decoded (logged); it closes the connection when
/// the error says the stream can no longer be trusted.
fn bad_request(header: &FrameHeader, error: &ProtocolError) -> Answer {
    tracing::warn!(kind = header.kind, version = header.version, %error, "bad request");
    let bytes = Response::failed(header, error.response_error())
        .encode(header.correlation_id)
        .unwrap_or_default();
    Answer::Frame {
        bytes,
        close: error.closes_connection(),
    }
}

/// Queues an answer for the writer, in request order; it counts as in flight until written.
/// Answers a request that could not be decoded; an error when the connection must close
/// (the frame cannot be trusted to end where it says).
async fn refuse(
    queue: &mpsc::Sender<Queued>,
    gauges: &SessionGauges,
    header: FrameHeader,
    received: Instant,
    permit: OwnedSemaphorePermit,
    error: &ProtocolError,
) -> Result<(), String> {
    let answer = bad_request(&header, error);
    enqueue(queue, gauges, header, received, permit, answer).await?;
    if error.closes_connection() {
        return Err("undecodable request".into());
    }
    Ok(())
}

async fn enqueue(
    queue: &mpsc::Sender<Queued>,
    gauges: &SessionGauges,
    request: FrameHeader,
    received: Instant,
    permit: OwnedSemaphorePermit,
    answer: Answer,
) -> Result<(), String> {
    gauges.requests_in_flight.fetch_add(1, Ordering::Relaxed);
    let queued = Queued {
        answer,
        correlation_id: request.correlation_id,
        request,
        received,
        _permit: permit,
    };
    if queue.send(queued).await.is_err() {
        gauges.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        return Err("writer gone".into());
    }
    Ok(())
}

/// Replaces a published text field.
fn set_text(field: &std::sync::Mutex<String>, value: &str) {
    let mut text = field
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    text.clear();
    text.push_str(value);
}

async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut answers: mpsc::Receiver<Queued>,
    id: String,
    gauges: Arc<SessionGauges>,
    stats: Arc<ActorStats>,
    requests: Arc<RequestMetrics>,
) {
    while let Some(queued) = answers.recv().await {
        let kind = queued.request.kind;
        let (outgoing, close) = match queued.answer {
            Answer::Frame { bytes, close } => (Outgoing::Frame(bytes), close),
            Answer::Later(task) => match task.await {
                Ok(outgoing) => (outgoing, false),
                Err(e) => {
                    tracing::error!(session = %id, error = %e, "request task failed");
                    (
                        Outgoing::Frame(failure_frame(
                            &queued.request,
                            ErrorCode::UnknownServerError,
                            "the request failed on the server",
                        )),
                        false,
                    )
                }
            },
        };
        let written = tokio::time::timeout(
            WRITE_TIMEOUT,
            write_outgoing(&mut writer, outgoing, queued.correlation_id),
        )
        .await;
        // Every queued answer counted into the in-flight gauge, written or not.
        gauges.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        match written {
            Ok(Ok(bytes)) => {
                gauges.bytes_out.fetch_add(bytes, Ordering::Relaxed);
                let elapsed = queued.received.elapsed();
                requests.answered(kind, elapsed);
                let name = RequestKind::from_code(kind).map_or("Unknown", RequestKind::name);
                stats.time(name, elapsed);
                stats.handled.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                tracing::debug!(session = %id, error = %e, "write failed");
                return;
            }
            Err(_) => {
                tracing::info!(session = %id, "client stopped reading answers");
                return;
            }
        }
        if close {
            let _ = writer.shutdown().await;
            return;
        }
    }
    let _ = writer.shutdown().await;
}

async fn write_outgoing(
    writer: &mut OwnedWriteHalf,
    outgoing: Outgoing,
    _correlation_id: u64,
) -> std::io::Result<u64> {
    match outgoing {
        Outgoing::Frame(bytes) => {
            writer.write_all(&bytes).await?;
            Ok(bytes.len() as u64)
        }
        Outgoing::Fetch {
            correlation_id,
            answer,
        } => {
            let reference = answer.as_ref();
            let parts =
                encode_fetch_response(correlation_id, &reference).map_err(std::io::Error::other)?;
            let mut written = 0;
            for part in parts.parts() {
                writer.write_all(part.as_slice()).await?;
                written += part.as_slice().len() as u64;
            }
            Ok(written)
        }
    }
}

fn encode(response: impl Into<Response>, correlation_id: u64) -> Vec<u8> {
    response.into().encode(correlation_id).unwrap_or_default()
}

/// Starts work on a request and returns its answer (now, or a task computing it).
fn dispatch(
    request: Request,
    header: &FrameHeader,
    services: &Arc<NodeServices>,
    bytes_permit: OwnedSemaphorePermit,
    session: &SessionGauges,
) -> Answer {
    let correlation_id = header.correlation_id;
    let ready = |response: Response| Answer::Frame {
        bytes: encode(response, correlation_id),
        close: false,
    };
    match request {
        Request::Handshake(hello) => {
            tracing::debug!(client_id = %hello.client_id, software = %hello.client_software_name, "handshake");
            ready(
                HandshakeResponse {
                    node_id: NodeId(services.node_id),
                    cluster_id: services.cluster_id.clone(),
                    server_software_name: "vltava-node".into(),
                    server_software_version: env!("CARGO_PKG_VERSION").into(),
                    frame_bytes_max: FRAME_BYTES_MAX,
                    kinds: RequestKind::handshake_list(),
                }
                .into(),
            )
        }
        Request::Metadata(request) => {
            ready(metadata(&services.controller.image().borrow(), &request).into())
        }
        Request::DescribeTopics(request) => {
            ready(describe_topics(&services.controller.image().borrow(), &request).into())
        }
        Request::Produce(request) => {
            produce(request.into(), correlation_id, services, bytes_permit)
        }
        Request::FindCoordinator(request) => {
            group_frame(group_requests::find_coordinator(&request, services), header)
        }
        Request::ListGroups(_) => group_frame(group_requests::list_groups(services), header),
        other => {
            let services = Arc::clone(services);
            let header = *header;
            let client_id = session
                .client_id
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let host = session.peer.clone();
            Answer::Later(tokio::spawn(async move {
                let _bytes = bytes_permit;
                let group = |answer| Outgoing::Frame(group_bytes(answer, &header));
                match other {
                    Request::ConsumerGroupHeartbeat(request) => {
                        group(group_requests::heartbeat(request, client_id, host, &services).await)
                    }
                    Request::OffsetCommit(request) => {
                        group(group_requests::commit(request, &services).await)
                    }
                    Request::OffsetFetch(request) => {
                        group(group_requests::fetch_offsets(request, &services).await)
                    }
                    Request::DescribeGroups(request) => {
                        group(group_requests::describe_groups(request, &services).await)
                    }
                    Request::DeleteGroups(request) => {
                        group(group_requests::delete_groups(request, &services).await)
                    }
                    Request::ResetOffsets(request) => {
                        group(group_requests::reset_offsets(request, &services).await)
                    }
                    Request::Fetch(request) => fetch(request, correlation_id, &services).await,
                    Request::ListOffsets(request) => Outgoing::Frame(encode(
                        list_offsets(request, &services).await,
                        correlation_id,
                    )),
                    Request::CreateTopics(request) => Outgoing::Frame(encode(
                        create_topics(request, &services).await,
                        correlation_id,
                    )),
                    Request::DeleteTopics(request) => Outgoing::Frame(encode(
                        delete_topics(request, &services).await,
                        correlation_id,
                    )),
                    Request::AlterTopicConfigs(request) => Outgoing::Frame(encode(
                        alter_configs(request, &services).await,
                        correlation_id,
                    )),
                    Request::CreatePartitions(request) => Outgoing::Frame(encode(
                        create_partitions(request, &services).await,
                        correlation_id,
                    )),
                    Request::InitProducerId(request) => {
                        Outgoing::Frame(init_producer_id(request, correlation_id, &services).await)
                    }
                    Request::Handshake(_)
                    | Request::Metadata(_)
                    | Request::DescribeTopics(_)
                    | Request::Produce(_)
                    | Request::FindCoordinator(_)
                    | Request::ListGroups(_) => {
                        unreachable!("answered without a task above")
                    }
                }
            }))
        }
    }
}

/// The frame of a group request's answer: its response, or a whole-request failure.
fn group_bytes(answer: GroupAnswer, header: &FrameHeader) -> Vec<u8> {
    match answer {
        GroupAnswer::Ok(response) => encode(response, header.correlation_id),
        GroupAnswer::Failed(error) => Response::failed(header, error)
            .encode(header.correlation_id)
            .unwrap_or_default(),
    }
}

fn group_frame(answer: GroupAnswer, header: &FrameHeader) -> Answer {
    Answer::Frame {
        bytes: group_bytes(answer, header),
        close: false,
    }
}

// ---- errors ----

/// The wire error for a partition's refusal.
#[must_use]
pub fn partition_error(error: &PartitionError) -> ResponseError {
    use vltava_storage::StorageError as S;
    let code = match error {
        PartitionError::Overloaded => ErrorCode::Overloaded,
        PartitionError::Offline => ErrorCode::PartitionOffline,
        PartitionError::FencedLeaderEpoch { .. } => ErrorCode::FencedLeaderEpoch,
        PartitionError::UnknownLeaderEpoch { .. } => ErrorCode::UnknownLeaderEpoch,
        PartitionError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
        PartitionError::ProducerFenced { .. } => ErrorCode::ProducerFenced,
        PartitionError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        PartitionError::Storage(storage) => match storage {
            S::InvalidBatch(_) => ErrorCode::CorruptBatch,
            S::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            S::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            S::Poisoned { .. } => ErrorCode::PartitionOffline,
            _ => ErrorCode::StorageError,
        },
    };
    ResponseError::new(code, error.to_string())
}

fn controller_error(error: &ControllerError) -> ResponseError {
    let code = match error {
        ControllerError::TopicAlreadyExists(_) => ErrorCode::TopicAlreadyExists,
        ControllerError::UnknownTopic(_) => ErrorCode::UnknownTopic,
        ControllerError::InvalidTopicName { .. } => ErrorCode::InvalidTopicName,
        ControllerError::InvalidPartitions { .. } => ErrorCode::InvalidPartitions,
        ControllerError::InvalidReplicationFactor { .. } => ErrorCode::InvalidReplicationFactor,
        ControllerError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        ControllerError::Overloaded => ErrorCode::Overloaded,
        ControllerError::Unavailable | ControllerError::Metadata(_) => ErrorCode::StorageError,
        ControllerError::TimedOut(_) => ErrorCode::RequestTimedOut,
    };
    ResponseError::new(code, error.to_string())
}

/// Finds a partition's actor, or the error that explains why there is none.
fn route(
    services: &NodeServices,
    topic: &str,
    partition: PartitionId,
) -> Result<PartitionHandle, ResponseError> {
    match services.partitions.get(topic, partition) {
        Some(PartitionSlot::Online(handle)) => Ok(handle),
        Some(PartitionSlot::Offline) => Err(ResponseError::new(
            ErrorCode::PartitionOffline,
            format!("partition {topic}-{} is offline on this node", partition.0),
        )),
        None => {
            let image = services.controller.image();
            let image = image.borrow();
            match image.topics.get(topic) {
                None => Err(ResponseError::new(
                    ErrorCode::UnknownTopic,
                    format!("unknown topic {topic}"),
                )),
                Some(t) if partition.0 as usize >= t.partitions.len() => Err(ResponseError::new(
                    ErrorCode::UnknownPartition,
                    format!("topic {topic} has {} partitions", t.partitions.len()),
                )),
                Some(t) if t.partitions[partition.0 as usize].leader == Some(services.node_id) => {
                    // Led here but not open yet: a new topic whose partitions are still
                    // opening (its creation may have answered RequestTimedOut).
                    Err(ResponseError::new(
                        ErrorCode::LeaderNotAvailable,
                        format!(
                            "partition {topic}-{} is still opening on this node",
                            partition.0
                        ),
                    ))
                }
                Some(t) => {
                    let leader = t.partitions[partition.0 as usize].leader.map(NodeId);
                    Err(ResponseError::not_leader(
                        leader,
                        format!(
                            "node {} does not lead {topic}-{}",
                            services.node_id, partition.0
                        ),
                    ))
                }
            }
        }
    }
}

// ---- metadata ----

fn partition_metadata(image: &crate::metadata::TopicImage) -> Vec<PartitionMetadata> {
    image
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| PartitionMetadata {
            partition: PartitionId(i as u32),
            error: None,
            leader: p.leader.map(NodeId),
            leader_epoch: LeaderEpoch(p.leader_epoch),
            replicas: p.replicas.iter().copied().map(NodeId).collect(),
            in_sync_replicas: p.isr.iter().copied().map(NodeId).collect(),
        })
        .collect()
}

fn metadata(image: &MetadataImage, request: &MetadataRequest) -> MetadataResponse {
    let names: Vec<String> = match &request.topics {
        Some(names) => names.clone(),
        None => image.topics.keys().cloned().collect(),
    };
    let topics = names
        .into_iter()
        .map(|name| match image.topics.get(&name) {
            Some(topic) => TopicMetadata {
                partitions: partition_metadata(topic),
                name,
                error: None,
                internal: false,
            },
            None => TopicMetadata {
                error: Some(ResponseError::new(
                    ErrorCode::UnknownTopic,
                    format!("unknown topic {name}"),
                )),
                name,
                internal: false,
                partitions: Vec::new(),
            },
        })
        .collect();
    MetadataResponse {
        cluster_id: image.cluster_id.clone(),
        controller_id: image.controller_id.map(NodeId),
        nodes: image
            .nodes
            .values()
            .map(|n| NodeInfo {
                node_id: NodeId(n.node_id),
                host: n.host.clone(),
                port: n.port,
            })
            .collect(),
        topics,
    }
}

fn describe_topics(
    image: &MetadataImage,
    request: &DescribeTopicsRequest,
) -> DescribeTopicsResponse {
    let names: Vec<String> = if request.topics.is_empty() {
        image.topics.keys().cloned().collect()
    } else {
        request.topics.clone()
    };
    let topics = names
        .into_iter()
        .map(|name| match image.topics.get(&name) {
            Some(topic) => {
                let configs = effective_configs(&topic.configs);
                TopicDescription {
                    partitions: partition_metadata(topic),
                    name,
                    error: None,
                    internal: false,
                    configs,
                }
            }
            None => TopicDescription {
                error: Some(ResponseError::new(
                    ErrorCode::UnknownTopic,
                    format!("unknown topic {name}"),
                )),
                name,
                internal: false,
                partitions: Vec::new(),
                configs: Vec::new(),
            },
        })
        .collect();
    DescribeTopicsResponse { topics }
}

/// Every config key with its effective value, marking the defaults.
fn effective_configs(set: &BTreeMap<String, String>) -> Vec<ConfigEntry> {
    let effective = topic_config::parse(set).ok();
    topic_config::TOPIC_CONFIG_KEYS
        .iter()
        .map(|key| {
            let value = set
                .get(*key)
                .cloned()
                .unwrap_or_else(|| default_value(key, effective.as_ref()));
            ConfigEntry {
                name: (*key).to_owned(),
                value,
                is_default: !set.contains_key(*key),
            }
        })
        .collect()
}

fn default_value(key: &str, config: Option<&topic_config::TopicConfig>) -> String {
    let defaults = topic_config::parse(&BTreeMap::new()).expect("the defaults are valid");
    let config = config.unwrap_or(&defaults);
    match key {
        "cleanup.policy" => config.cleanup_policy.clone(),
        "retention.ms" => config
            .log
            .retention_ms
            .map_or("-1".into(), |v| v.to_string()),
        "retention.bytes" => config
            .log
            .retention_bytes
            .map_or("-1".into(), |v| v.to_string()),
        "segment.bytes" => config.log.segment_bytes_max.to_string(),
        "segment.ms" => config.log.segment_ms.to_string(),
        "min.insync.replicas" => config.min_insync_replicas.to_string(),
        "message.timestamp.type" => format!("{:?}", config.log.timestamp_type),
        "max.message.bytes" => config.log.batch_bytes_max.to_string(),
        _ => String::new(),
    }
}

// ---- topic admin ----

/// When a topic admin request with `timeout_ms` must be answered: its timeout counts from
/// now, for all of its topics together (a topic reached after it passed is not changed).
fn admin_deadline(timeout_ms: u32) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(u64::from(timeout_ms))
}

async fn create_topics(
    request: CreateTopicsRequest,
    services: &NodeServices,
) -> CreateTopicsResponse {
    let deadline = admin_deadline(request.timeout_ms);
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let outcome = services
            .controller
            .create_topic(
                topic.name.clone(),
                topic.partitions.unwrap_or(DEFAULT_PARTITIONS),
                topic.replication_factor.unwrap_or(1),
                topic.configs,
                request.validate_only,
                Some(deadline),
            )
            .await;
        topics.push(topic_result(topic.name, outcome));
    }
    CreateTopicsResponse { topics }
}

/// One topic's outcome of an admin request.
fn topic_result(name: String, outcome: Result<(), ControllerError>) -> TopicResult {
    TopicResult {
        name,
        error: outcome.err().map(|e| controller_error(&e)),
    }
}

async fn delete_topics(
    request: DeleteTopicsRequest,
    services: &NodeServices,
) -> DeleteTopicsResponse {
    let deadline = admin_deadline(request.timeout_ms);
    let mut topics = Vec::with_capacity(request.topics.len());
    for name in request.topics {
        let outcome = services
            .controller
            .delete_topic(name.clone(), Some(deadline))
            .await;
        topics.push(topic_result(name, outcome));
    }
    DeleteTopicsResponse { topics }
}

async fn alter_configs(
    request: AlterTopicConfigsRequest,
    services: &NodeServices,
) -> AlterTopicConfigsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for change in request.topics {
        let outcome = services
            .controller
            .alter_configs(
                change.name.clone(),
                change.set,
                change.delete,
                request.validate_only,
            )
            .await;
        topics.push(topic_result(change.name, outcome));
    }
    AlterTopicConfigsResponse { topics }
}

async fn create_partitions(
    request: CreatePartitionsRequest,
    services: &NodeServices,
) -> CreatePartitionsResponse {
    let deadline = admin_deadline(request.timeout_ms);
    let mut topics = Vec::with_capacity(request.topics.len());
    for change in request.topics {
        let outcome = services
            .controller
            .create_partitions(
                change.name.clone(),
                change.count,
                request.validate_only,
                Some(deadline),
            )
            .await;
        topics.push(topic_result(change.name, outcome));
    }
    CreatePartitionsResponse { topics }
}

async fn init_producer_id(
    request: InitProducerIdRequest,
    correlation_id: u64,
    services: &NodeServices,
) -> Vec<u8> {
    // A known producer asking again gets its next epoch, which fences its older incarnation.
    if let (Some(id), Some(epoch)) = (request.producer_id, request.producer_epoch)
        && epoch.0 < u16::MAX
    {
        return encode(
            InitProducerIdResponse {
                producer_id: id,
                producer_epoch: ProducerEpoch(epoch.0 + 1),
            },
            correlation_id,
        );
    }
    match services.producer_ids.allocate().await {
        Ok(producer_id) => encode(
            InitProducerIdResponse {
                producer_id,
                producer_epoch: ProducerEpoch(0),
            },
            correlation_id,
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot allocate a producer id");
            let header = FrameHeader {
                length: 0,
                kind: RequestKind::InitProducerId.code(),
                version: RequestKind::InitProducerId.version_max(),
                correlation_id,
            };
            failure_frame(
                &header,
                ErrorCode::StorageError,
                format!("cannot allocate a producer id: {e}"),
            )
        }
    }
}

// ---- produce ----

/// Splits a partition's records into whole batches (each then validated by the partition).
/// The common case, one batch, hands the buffer on without copying it.
/// Splits a partition's records into its batches, each its own part of the same allocation.
fn split_batches(mut records: BytesMut) -> Result<Vec<BytesMut>, ResponseError> {
    let corrupt = |message: &str| ResponseError::new(ErrorCode::CorruptBatch, message.to_owned());
    let mut batches = Vec::new();
    while !records.is_empty() {
        let header = BatchHeader::parse(&records).map_err(|e| corrupt(&e.to_string()))?;
        let total = header.total_bytes() as usize;
        if total < LOG_OVERHEAD_BYTES || total > records.len() {
            return Err(corrupt("batch length runs past the records"));
        }
        batches.push(records.split_to(total));
    }
    if batches.is_empty() {
        return Err(corrupt("no record batch"));
    }
    Ok(batches)
}

enum ProduceSlot {
    Failed(ResponseError),
    Waiting(Vec<Pending<ProduceOk>>),
}

/// A Produce request whose batches are parts of the buffer the request was read into.
struct OwnedProduce {
    acks: Acks,
    timeout_ms: u32,
    topics: Vec<(String, Vec<OwnedPartition>)>,
}

struct OwnedPartition {
    partition: PartitionId,
    current_leader_epoch: Option<LeaderEpoch>,
    records: BytesMut,
}

impl From<ProduceRequest> for OwnedProduce {
    fn from(request: ProduceRequest) -> OwnedProduce {
        OwnedProduce {
            acks: request.acks,
            timeout_ms: request.timeout_ms,
            topics: request
                .topics
                .into_iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .into_iter()
                        .map(|p| OwnedPartition {
                            partition: p.partition,
                            current_leader_epoch: p.current_leader_epoch,
                            records: p.records.into_batch(),
                        })
                        .collect();
                    (t.name, partitions)
                })
                .collect(),
        }
    }
}

/// Decodes a Produce body without copying its batches: the records of each partition become
/// their own part of `body`'s allocation (`BytesMut::split_to`), to be stamped in place by the
/// partition and written to the log as they are.
fn decode_produce(header: &FrameHeader, body: Vec<u8>) -> Result<OwnedProduce, ProtocolError> {
    let request = ProduceRequestRef::decode(header, &body)?;
    let base = body.as_ptr() as usize;
    let mut layout = Vec::with_capacity(request.topics.len());
    let mut next = 0usize;
    let mut in_order = true;
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let start = p.records.as_ptr() as usize - base;
            in_order &= start >= next;
            next = start + p.records.len();
            partitions.push((p.partition, p.current_leader_epoch, start..next));
        }
        layout.push((topic.name, partitions));
    }
    let acks = request.acks;
    let timeout_ms = request.timeout_ms;
    let mut rest = body.into_batch();
    let mut consumed = 0usize;
    let topics = layout
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(partition, current_leader_epoch, range)| {
                    let records = if in_order {
                        // MessagePack writes a map's values in order, so the records follow
                        // one another through the body; each split takes the next piece.
                        rest.advance(range.start - consumed);
                        consumed = range.end;
                        rest.split_to(range.len())
                    } else {
                        BytesMut::from(&rest[range.start - consumed..range.end - consumed])
                    };
                    OwnedPartition {
                        partition,
                        current_leader_epoch,
                        records,
                    }
                })
                .collect();
            (name, partitions)
        })
        .collect();
    Ok(OwnedProduce {
        acks,
        timeout_ms,
        topics,
    })
}

fn produce(
    request: OwnedProduce,
    correlation_id: u64,
    services: &Arc<NodeServices>,
    bytes_permit: OwnedSemaphorePermit,
) -> Answer {
    let acks = request.acks;
    let deadline = Instant::now() + Duration::from_millis(u64::from(request.timeout_ms.max(1)));
    // Queue every batch at its partition now, in the order they came.
    let mut slots: Vec<(String, Vec<(PartitionId, ProduceSlot)>)> =
        Vec::with_capacity(request.topics.len());
    for (name, topic_partitions) in request.topics {
        let mut partitions = Vec::with_capacity(topic_partitions.len());
        for p in topic_partitions {
            let internal = if name.starts_with("__") {
                // Only the node writes its internal topics (group commits go through
                // OffsetCommit), so a client cannot forge a group's offsets.
                Err(ResponseError::new(
                    ErrorCode::InvalidTopicName,
                    "internal topics are written by the node only",
                ))
            } else {
                Ok(())
            };
            let routed = internal.and_then(|()| route(services, &name, p.partition));
            let slot = match routed.and_then(|handle| {
                let batches = split_batches(p.records)?;
                let mut pending = Vec::with_capacity(batches.len());
                for batch in batches {
                    pending.push(
                        handle
                            .produce_enqueue(batch, acks, p.current_leader_epoch)
                            .map_err(|e| partition_error(&e))?,
                    );
                }
                Ok(pending)
            }) {
                Ok(pending) => ProduceSlot::Waiting(pending),
                Err(error) => ProduceSlot::Failed(error),
            };
            partitions.push((p.partition, slot));
        }
        slots.push((name, partitions));
    }
    let task = tokio::spawn(async move {
        let _bytes = bytes_permit;
        let mut topics = Vec::with_capacity(slots.len());
        for (name, partitions) in slots {
            let mut answers = Vec::with_capacity(partitions.len());
            for (partition, slot) in partitions {
                let answer = match slot {
                    ProduceSlot::Failed(error) => Err(error),
                    ProduceSlot::Waiting(pending) => {
                        let mut first: Option<ProduceOk> = None;
                        let mut failure = None;
                        for one in pending {
                            match tokio::time::timeout_at(deadline.into(), one.wait()).await {
                                Ok(Ok(ok)) => {
                                    first.get_or_insert(ok);
                                }
                                Ok(Err(e)) => {
                                    failure.get_or_insert_with(|| partition_error(&e));
                                }
                                Err(_) => {
                                    failure.get_or_insert_with(|| ResponseError::new(ErrorCode::RequestTimedOut, "the produce timeout passed before the write was acknowledged"));
                                }
                            }
                        }
                        match (failure, first) {
                            (Some(error), _) => Err(error),
                            (None, Some(ok)) => Ok(ok),
                            (None, None) => Err(ResponseError::new(
                                ErrorCode::CorruptBatch,
                                "no record batch",
                            )),
                        }
                    }
                };
                answers.push(match answer {
                    Ok(ok) => ProducePartitionResponse {
                        partition,
                        error: None,
                        base_offset: Some(ok.base_offset),
                        log_append_time: ok.log_append_time,
                        log_start_offset: Some(ok.log_start_offset),
                    },
                    Err(error) => {
                        if acks == Acks::None {
                            tracing::debug!(topic = %name, partition = partition.0, %error, "acks=0 produce failed");
                        }
                        ProducePartitionResponse { partition, error: Some(error), base_offset: None, log_append_time: None, log_start_offset: None }
                    }
                });
            }
            topics.push(ProduceTopicResponse {
                name,
                partitions: answers,
            });
        }
        Outgoing::Frame(encode(ProduceResponse { topics }, correlation_id))
    });
    Answer::Later(task)
}

// ---- fetch ----

/// A fetch answer with the record bytes it owns, written by hand without copying them.
struct FetchAnswer {
    topics: Vec<(String, Vec<FetchPartitionAnswer>)>,
}

struct FetchPartitionAnswer {
    partition: PartitionId,
    error: Option<ResponseError>,
    high_watermark: Option<Offset>,
    log_start_offset: Option<Offset>,
    records: Vec<u8>,
}

impl FetchAnswer {
    fn as_ref(&self) -> FetchResponseRef<'_> {
        FetchResponseRef {
            topics: self
                .topics
                .iter()
                .map(|(name, partitions)| FetchTopicRef {
                    name,
                    partitions: partitions
                        .iter()
                        .map(|p| FetchPartitionRef {
                            partition: p.partition,
                            error: p.error.clone(),
                            high_watermark: p.high_watermark,
                            last_stable_offset: p.high_watermark,
                            log_start_offset: p.log_start_offset,
                            records: &p.records,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn bytes(&self) -> usize {
        self.topics
            .iter()
            .flat_map(|(_, ps)| ps.iter())
            .map(|p| p.records.len())
            .sum()
    }

    fn has_error(&self) -> bool {
        self.topics
            .iter()
            .flat_map(|(_, ps)| ps.iter())
            .any(|p| p.error.is_some())
    }
}

async fn fetch_once(
    request: &FetchRequest,
    services: &NodeServices,
    watches: &mut Vec<watch::Receiver<Offset>>,
) -> FetchAnswer {
    let mut budget = request.max_bytes;
    let mut got_any = false;
    let mut topics = Vec::with_capacity(request.topics.len());
    watches.clear();
    for topic in &request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let mut answer = FetchPartitionAnswer {
                partition: p.partition,
                error: None,
                high_watermark: None,
                log_start_offset: None,
                records: Vec::new(),
            };
            match route(services, &topic.name, p.partition) {
                Err(error) => answer.error = Some(error),
                Ok(handle) => {
                    // Marked seen before the read, so only a change after it wakes a long poll
                    // (and a fresh clone does not wake it at once, spinning).
                    let mut watch = handle.high_watermark();
                    watch.borrow_and_update();
                    watches.push(watch);
                    // The first partition with data may return one batch past the budget (so a
                    // large batch never stalls a consumer, as in Kafka); every later one must
                    // fit what is left, else it returns only its watermarks this time.
                    let bytes_max = if got_any {
                        p.partition_max_bytes.min(budget)
                    } else {
                        p.partition_max_bytes.min(budget).max(1)
                    };
                    match handle
                        .fetch(p.fetch_offset, bytes_max, p.current_leader_epoch)
                        .await
                    {
                        Ok(FetchOk {
                            records,
                            high_watermark,
                            log_start_offset,
                        }) => {
                            answer.high_watermark = Some(high_watermark);
                            answer.log_start_offset = Some(log_start_offset);
                            if !got_any || records.len() as u64 <= u64::from(budget) {
                                budget = budget.saturating_sub(records.len() as u32);
                                got_any |= !records.is_empty();
                                answer.records = records;
                            }
                        }
                        Err(e) => {
                            if let PartitionError::OffsetOutOfRange {
                                high_watermark,
                                log_start_offset,
                                ..
                            } = e
                            {
                                // The watermarks tell the consumer where it may resume.
                                answer.high_watermark = Some(high_watermark);
                                answer.log_start_offset = Some(log_start_offset);
                            }
                            answer.error = Some(partition_error(&e));
                        }
                    }
                }
            }
            partitions.push(answer);
        }
        topics.push((topic.name.clone(), partitions));
    }
    FetchAnswer { topics }
}

async fn fetch(request: FetchRequest, correlation_id: u64, services: &NodeServices) -> Outgoing {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
    let mut watches = Vec::new();
    loop {
        let answer = fetch_once(&request, services, &mut watches).await;
        let enough =
            answer.bytes() as u64 >= u64::from(request.min_bytes.max(1)) || answer.has_error();
        if enough || tokio::time::Instant::now() >= deadline || watches.is_empty() {
            return Outgoing::Fetch {
                correlation_id,
                answer,
            };
        }
        // Long poll: wait until any partition's high watermark moves, or the deadline.
        let changed = async {
            let futures: Vec<_> = watches.iter_mut().map(|w| Box::pin(w.changed())).collect();
            let _ = futures_select_any(futures).await;
        };
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            let answer = fetch_once(&request, services, &mut watches).await;
            return Outgoing::Fetch {
                correlation_id,
                answer,
            };
        }
    }
}

/// Waits for the first of several futures.
async fn futures_select_any<F: std::future::Future + Unpin>(mut futures: Vec<F>) {
    std::future::poll_fn(|cx| {
        for f in &mut futures {
            if std::pin::Pin::new(&mut *f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        if futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

// ---- list offsets ----

async fn list_offsets(request: ListOffsetsRequest, services: &NodeServices) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let result = match route(services, &topic.name, p.partition) {
                Err(error) => Err(error),
                Ok(handle) => handle
                    .list_offset(p.spec, p.current_leader_epoch)
                    .await
                    .map_err(|e| partition_error(&e)),
            };
            partitions.push(match result {
                Ok(listed) => ListOffsetsPartitionResponse {
                    partition: p.partition,
                    error: None,
                    offset: listed.offset,
                    timestamp: listed.timestamp,
                    leader_epoch: Some(listed.leader_epoch),
                },
                Err(error) => ListOffsetsPartitionResponse {
                    partition: p.partition,
                    error: Some(error),
                    offset: None,
                    timestamp: None,
                    leader_epoch: None,
                },
            });
        }
        topics.push(ListOffsetsTopicResponse {
            name: topic.name,
            partitions,
        });
    }
    ListOffsetsResponse { topics }
}
