//! ClientSession: one per client connection. It reads frames, admits each request with a
//! permit (requests in flight on this connection, bytes in flight on the node), decodes and
//! routes it, and writes the answers in request order.
//!
//! - Owns: the connection, its handshake state, its queue of answers to write.
//! - Receives from: the socket.
//! - Sends to: Partition actors (produce, fetch, list offsets), the Controller (topic admin,
//!   producer ids); all answers come back on oneshots.
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
//!
//! # Layout
//! This module holds the connection loops (read, admit, dispatch, write in order); one module
//! per request family answers its requests: `topics` (Metadata and topic admin), `produce`
//! (Produce, InitProducerId), `fetch` (Fetch, ListOffsets), `group_requests` (consumer
//! groups), `cluster` (DescribeCluster). `listener` accepts connections; `services` is `NodeServices`, what every session
//! shares.

mod cluster;
mod fetch;
pub mod group_requests;
pub mod listener;
mod produce;
mod services;
mod topics;

pub use services::NodeServices;

use fetch::{FetchAnswer, fetch, list_offsets};
use produce::{OwnedProduce, decode_produce, init_producer_id, produce};
use topics::{
    alter_configs, alter_partition_reassignments, create_partitions, create_topics, delete_topics,
    describe_topics, elect_leaders, metadata,
};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::log_limit::{Verdict, WarnKind, WarnLimiter};
use crate::metadata::raft::RaftStatusSource;
use tokio::task::JoinHandle;
use vltava_messages::limits::FRAME_BYTES_MAX;
use vltava_messages::protocol::{
    ErrorCode, FRAME_HEADER_BYTES, FrameHeader, HandshakeResponse, ProtocolError, Request,
    RequestKind, Response, ResponseError, encode_fetch_response, read_header,
};
use vltava_messages::{NodeId, PartitionId};

use self::group_requests::GroupAnswer;
use crate::directory::{ActorKind, ActorStats, PublishedState, SessionGauges};
use crate::metadata::controller::ControllerError;
use crate::metrics::RequestMetrics;
use crate::partition::replica_state::ReplicaError;
use crate::partition::supervisor::PartitionSlot;
use crate::partition::{Acks, PartitionError, PartitionHandle};
use crate::shutdown::stopped;

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

/// Writes a WARN line that a client caused, within the connection's and the node's budgets
/// for its kind (`log_limit`), with the count of lines of that kind held back before it.
macro_rules! limited_warn {
    ($services:expr, $connection:expr, $kind:expr, $($line:tt)+) => {
        if let Verdict::Log { suppressed } =
            $services
                .warnings
                .check_after($connection, $kind, Instant::now())
        {
            tracing::warn!(suppressed, $($line)+);
        }
    };
}

/// A request's body, decoded: a produce borrowing its batches from the body, or any other.
enum Decoded {
    Produce(OwnedProduce),
    Request(Request),
}

/// An answer being prepared, in request order.
enum Answer {
    /// Ready to write; `close` ends the connection after it.
    Frame { bytes: Vec<u8>, close: bool },
    /// Still being computed.
    Later(JoinHandle<Outgoing>),
    /// A produce answer: its batches are already queued at their partitions, so only waiting
    /// is left, which the writer does itself. A task of its own would cost one more task
    /// switch per answer (the partition wakes the task, the task wakes the writer).
    Waiting(Pin<Box<dyn Future<Output = Outgoing> + Send>>),
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
    let mut warnings = WarnLimiter::default();
    let outcome = read_loop(reader, queue, &services, shutdown, &gauges, &mut warnings).await;
    match &outcome {
        Ok(()) => tracing::debug!(session = %id, "connection closed"),
        Err(reason) => {
            // A client that opens connections only to break them would otherwise write a line
            // per connection: this line has a budget too.
            if let Verdict::Log { suppressed } = services.warnings.check_after(
                &mut warnings,
                WarnKind::ConnectionClosed,
                Instant::now(),
            ) {
                tracing::info!(session = %id, %reason, suppressed, "connection closed");
            }
        }
    }
    let held_back = warnings.take_suppressed();
    if held_back > 0 {
        tracing::info!(session = %id, held_back, "log lines this connection caused were held back by the rate limit");
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
    warnings: &mut WarnLimiter,
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
        // `None`: the frame is too large; answered below by correlation id (after the
        // handshake check, so a first frame that is not a Handshake gets HandshakeRequired).
        let body_len = match read_header(&header_bytes) {
            Ok((_, body_len)) => Some(body_len),
            Err(ProtocolError::FrameTooLarge { .. }) => None,
            Err(_) => {
                // Not even a whole header: there is no frame to answer.
                limited_warn!(
                    services,
                    warnings,
                    WarnKind::BadFrameLength,
                    length = header.length,
                    "frame shorter than its header; closing"
                );
                return Err("frame shorter than its header".into());
            }
        };
        let permit = Arc::clone(&inflight)
            .acquire_owned()
            .await
            .map_err(|_| "session closing".to_owned())?;
        if !handshaken && header.kind != RequestKind::Handshake.code() {
            // Checked before decoding, so any first request but a Handshake, even one that
            // cannot be decoded, gets the same answer.
            limited_warn!(
                services,
                warnings,
                WarnKind::NoHandshake,
                kind = header.kind,
                "request before handshake"
            );
            let bytes = failure_frame(
                &header,
                ErrorCode::HandshakeRequired,
                "the first request on a connection must be Handshake",
            );
            let answer = Answer::Frame { bytes, close: true };
            let _ = enqueue(&queue, gauges, header, received, permit, answer).await;
            return Err("no handshake".into());
        }
        let Some(body_len) = body_len else {
            // The body is not read: answer by correlation id, then close.
            limited_warn!(
                services,
                warnings,
                WarnKind::BadFrameLength,
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
        };
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
        let decoded = if header.kind == RequestKind::Produce.code() {
            // Produce, the hot path, is decoded borrowing its batches (no copy).
            decode_produce(&header, body).map(Decoded::Produce)
        } else {
            let decoded = Request::decode(&header, &body).map(Decoded::Request);
            drop(body);
            decoded
        };
        let request = match decoded {
            Ok(Decoded::Request(request)) => request,
            Ok(Decoded::Produce(produce_request)) => {
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
                limited_warn!(
                    services,
                    warnings,
                    WarnKind::BadRequest,
                    kind = header.kind,
                    version = header.version,
                    %error,
                    "bad request"
                );
                refuse(&queue, gauges, header, received, permit, &error).await?;
                continue;
            }
        };
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

/// The answer to a request that could not be decoded (the caller logs it); it closes the
/// connection when the error says the stream can no longer be trusted.
fn bad_request(header: &FrameHeader, error: &ProtocolError) -> Answer {
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
            Answer::Waiting(answer) => (answer.await, false),
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

/// How long ago each node renewed its lease with this node, when this node is the
/// controller (only the controller's table is kept current).
fn lease_ages(services: &NodeServices) -> std::collections::HashMap<u32, std::time::Duration> {
    let controller = services.controller.image().borrow().controller_id;
    match &services.leases {
        Some(table) if controller == Some(services.node_id) => table.ages(),
        _ => std::collections::HashMap::new(),
    }
}

/// Whether `request` is answered from the metadata image or by the controller, so that a node
/// cut off from the controller must not answer it.
fn answers_from_metadata(request: &Request) -> bool {
    matches!(
        request,
        Request::Metadata(_)
            | Request::DescribeTopics(_)
            | Request::FindCoordinator(_)
            | Request::CreateTopics(_)
            | Request::DeleteTopics(_)
            | Request::AlterTopicConfigs(_)
            | Request::CreatePartitions(_)
            | Request::ElectLeaders(_)
            | Request::AlterPartitionReassignments(_)
            | Request::InitProducerId(_)
    )
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
    // A cluster node cut off from the controller for longer than a lease may hold a stale
    // image: it refuses what only its image answers (and admin requests, which it could not
    // get to the controller anyway) with a retriable error, so that the client asks another
    // node. Produce and fetch go on: a partition's leader keeps serving its log.
    if answers_from_metadata(&request)
        && let Some(freshness) = &services.freshness
        && let Err(reason) = freshness.check()
    {
        return Answer::Frame {
            bytes: failure_frame(header, ErrorCode::ControllerNotAvailable, reason),
            close: false,
        };
    }
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
        Request::DescribeCluster(request) => ready(
            cluster::describe_cluster(
                services.node_id,
                &services.controller.image().borrow(),
                services.raft.as_ref().map(RaftStatusSource::status),
                &lease_ages(services),
                &cluster::led_partitions(&services.directory),
                &request,
                cluster::ListingBounds::WIRE,
            )
            .into(),
        ),
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
                    Request::ElectLeaders(request) => {
                        Outgoing::Frame(elect_leaders(request, &header, &services).await)
                    }
                    Request::AlterPartitionReassignments(request) => Outgoing::Frame(
                        alter_partition_reassignments(request, &header, &services).await,
                    ),
                    Request::Handshake(_)
                    | Request::Metadata(_)
                    | Request::DescribeTopics(_)
                    | Request::DescribeCluster(_)
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
    match error {
        // A follower replica names its leader, so the client goes there without a metadata
        // round trip.
        PartitionError::Replica(ReplicaError::NotLeader { leader }) => {
            ResponseError::not_leader(*leader, error.to_string())
        }
        _ => ResponseError::new(error.error_code(), error.to_string()),
    }
}

fn controller_error(error: &ControllerError) -> ResponseError {
    ResponseError::new(error.code(), error.to_string())
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
