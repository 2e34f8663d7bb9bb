//! The PeerListener: the node's peer port. It accepts connections from other nodes' links,
//! requires the peer handshake first, and hands requests to the node's [`PeerService`],
//! answering each connection's requests in order.
//!
//! - Owns: the listening socket; per connection, a reader (this file's `serve_requests`), a
//!   writer task, and a task per request being handled.
//! - Receives from: other nodes' PeerLinks.
//! - Sends to: the node's `PeerService` (`connected` once per accepted handshake, `handle`
//!   per request); answers go back on the connection they came from.
//! - Bounds: `connections_max` connections (one past it is closed at once); per connection
//!   `PEER_INFLIGHT_REQUESTS_MAX` requests from reading a header to writing its answer (past
//!   it the reader stops reading, and the peer sees back-pressure); `PEER_BYTES_IN_FLIGHT_MAX`
//!   request bytes across the listener; a handshake within the listener's handshake timeout,
//!   of at most `HANDSHAKE_BODY_BYTES_MAX`; a frame body within the body timeout; each answer
//!   written within the write timeout.
//! - Bad input: garbage, a frame too small or too large, a frame outside the peer range, or any
//!   first frame but a valid handshake closes that connection (after an answer where the
//!   header allows one), and nothing else; a refused handshake is answered with the refusing
//!   node's identity and logged once per node and reason. A bad frame whose end is known gets
//!   its error answer and the connection goes on.
//! - A new connection of the same node and channel replaces the old one, which is closed: a
//!   node that restarted leaves no half-open connection holding a slot here.
//! - Shutdown: `stop` stops accepting and reading; answers already admitted are written within
//!   `PEER_DRAIN_TIMEOUT`, then everything left is aborted.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use vltava_messages::NodeId;
use vltava_messages::peer::{
    PeerErrorCode, PeerFailure, PeerHandshakeRequest, PeerHandshakeResponse, PeerKind,
    PeerProtocolError, PingRequest, PingResponse, decode_request_body, encode_failure,
    encode_response_body,
};
use vltava_messages::protocol::{FrameHeader, ProtocolError, read_header};

use super::wire::{AbortOnDrop, BodyError, read_body, read_header_bytes};
use super::{
    PEER_INFLIGHT_REQUESTS_MAX, PeerChannel, PeerIdentity, PeerRequest, PeerService, PeerTimings,
};
use crate::directory::{ActorDirectory, ActorKind, ActorStats};
use crate::log_limit::{SharedWarnLimiter, Verdict, WarnKind};
use crate::shutdown::stopped;

/// Peer connections a listener serves at once. Each other node opens two; 256 serves a
/// cluster of 64 nodes twice over (a restarted node's new connections arrive before its old
/// ones are replaced), and bounds the sockets and tasks a flood of connections can take.
pub const PEER_CONNECTIONS_MAX: usize = 256;

/// Request bytes a listener holds at once, over all its connections, from reading a frame's
/// header until its answer is written: the client sessions' node-wide bound. Past it the
/// listener stops reading bodies until answers are written, so memory stays bounded however
/// many peers send 8 MiB frames at once.
pub const PEER_BYTES_IN_FLIGHT_MAX: usize = 256 * 1024 * 1024;

/// The largest handshake body read from a connection not yet handshaken. A handshake lists at
/// most 256 kinds of about 40 bytes each; 64 KiB holds that with room, and keeps a stranger
/// from making the node allocate a whole 8 MiB frame before it has said who it is.
pub const HANDSHAKE_BODY_BYTES_MAX: usize = 64 * 1024;

/// How long a closing connection (or the listener at shutdown) may take to write the answers
/// it admitted before the rest is aborted. A handler that never returns is cut off here.
pub const PEER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the accept loop waits after a failed accept (out of file descriptors, say), so it
/// never spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Refusals remembered so each (node, reason) is logged once. A refusal repeats every few
/// seconds from a misconfigured node; 64 distinct ones is more than any cluster produces, and
/// past it the memory is cleared (at worst a refusal is logged once more).
const REFUSALS_REMEMBERED_MAX: usize = 64;

// A connection's whole budget of bytes in flight must fit the listener's.
const _: () = assert!(
    PEER_INFLIGHT_REQUESTS_MAX * vltava_messages::limits::FRAME_BYTES_MAX as usize
        <= PEER_BYTES_IN_FLIGHT_MAX
);
const _: () = assert!(PEER_BYTES_IN_FLIGHT_MAX <= tokio::sync::Semaphore::MAX_PERMITS);

/// What a peer listener needs to know about its node.
#[derive(Clone, Debug)]
pub struct PeerListenerConfig {
    pub identity: PeerIdentity,
    pub timings: PeerTimings,
    /// At most this many connections at once; `PEER_CONNECTIONS_MAX` unless configured.
    pub connections_max: usize,
}

/// A running peer listener.
#[derive(Debug)]
pub struct PeerListener {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What every connection of a listener shares.
#[derive(Debug)]
struct Shared<S> {
    id: String,
    identity: PeerIdentity,
    timings: PeerTimings,
    service: Arc<S>,
    stats: Arc<ActorStats>,
    bytes_in_flight: Arc<Semaphore>,
    /// The connection serving each (node, channel), and how to close it when a newer one
    /// replaces it.
    active: Mutex<HashMap<(NodeId, PeerChannel), ActiveConnection>>,
    connections_started: AtomicU64,
    refusals_logged: Mutex<BTreeSet<(NodeId, u16)>>,
    warnings: SharedWarnLimiter,
}

impl PeerListener {
    /// Binds the node's peer address (`--peer-listen`) and starts serving it, registered in
    /// the directory as `n<node>/peer-listener` under `parent`.
    ///
    /// # Errors
    /// The bind's I/O error.
    pub async fn bind<S: PeerService>(
        address: SocketAddr,
        config: PeerListenerConfig,
        service: Arc<S>,
        directory: &ActorDirectory,
        parent: &str,
    ) -> std::io::Result<PeerListener> {
        let listener = TcpListener::bind(address).await?;
        PeerListener::spawn(listener, config, service, directory, parent)
    }

    /// Serves an already bound socket.
    ///
    /// # Errors
    /// The socket's local address could not be read.
    pub fn spawn<S: PeerService>(
        listener: TcpListener,
        config: PeerListenerConfig,
        service: Arc<S>,
        directory: &ActorDirectory,
        parent: &str,
    ) -> std::io::Result<PeerListener> {
        let local_addr = listener.local_addr()?;
        let id = format!("{}/peer-listener", config.identity.label());
        let stats = directory.register(&id, ActorKind::Listener, Some(parent));
        let shared = Arc::new(Shared {
            id: id.clone(),
            identity: config.identity,
            timings: config.timings,
            service,
            stats,
            bytes_in_flight: Arc::new(Semaphore::new(PEER_BYTES_IN_FLIGHT_MAX)),
            active: Mutex::new(HashMap::new()),
            connections_started: AtomicU64::new(0),
            refusals_logged: Mutex::new(BTreeSet::new()),
            warnings: SharedWarnLimiter::default(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let directory = directory.clone();
        let task = tokio::spawn(async move {
            accept_loop(
                listener,
                Arc::clone(&shared),
                config.connections_max,
                stop_rx,
            )
            .await;
            directory.unregister(&id);
        });
        Ok(PeerListener {
            local_addr,
            stop,
            task,
        })
    }

    /// The address it listens on (with the port the system chose for port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection once its admitted answers are written (within
    /// `PEER_DRAIN_TIMEOUT`), and returns when all is done.
    pub async fn stop(self) {
        // The task may have ended already.
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "peer listener task failed");
        }
    }
}

async fn accept_loop<S: PeerService>(
    listener: TcpListener,
    shared: Arc<Shared<S>>,
    connections_max: usize,
    mut stop: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(connections_max));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // As for the client listener, "handled" counts accepted connections.
                    shared.stats.handled.fetch_add(1, Ordering::Relaxed);
                    let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                        limited_warn(&shared, WarnKind::ConnectionRefused, || {
                            tracing::warn!(%peer, connections_max, "peer connection refused: at the connection limit");
                        });
                        drop(stream);
                        continue;
                    };
                    tasks.spawn(serve_connection(stream, peer, Arc::clone(&shared), stop.clone(), permit));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set holds live ones only.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(PEER_DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = tasks.len(),
            "peer connections did not finish in time; closing them"
        );
        tasks.abort_all();
    }
}

/// Writes a WARN line a peer caused, within the listener's budget for its kind.
fn limited_warn<S>(shared: &Shared<S>, kind: WarnKind, line: impl FnOnce()) {
    if let Verdict::Log { .. } = shared.warnings.check(kind, Instant::now()) {
        line();
    }
}

/// A handshaken connection: its number (connections count up from 0 per listener) and the
/// signal that closes it.
type ActiveConnection = (u64, watch::Sender<bool>);

/// Why a connection closed.
#[derive(Debug)]
enum Close {
    /// The peer closed it, or the listener stopped.
    Normal,
    /// A newer connection of the same node and channel took over.
    Replaced,
    /// Something worth a (rate-limited) log line.
    Bad(String),
}

/// An answer being prepared, in request order.
enum Answer {
    Ready(Vec<u8>),
    /// Being computed by the handler's task; aborted if the connection goes first.
    Later(AbortOnDrop<Vec<u8>>),
}

struct Queued {
    answer: Answer,
    /// The request's header, to answer a handler that failed.
    request: FrameHeader,
    /// Close the connection once this answer is written.
    close: bool,
    /// Held until the answer is written: this is what bounds a connection's requests.
    _permit: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

async fn serve_connection<S: PeerService>(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared<S>>,
    stop: watch::Receiver<bool>,
    _connection: OwnedSemaphorePermit,
) {
    let number = shared.connections_started.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (from, channel) = match accept_handshake(&mut reader, &mut writer, &shared, peer).await {
        Ok(accepted) => accepted,
        Err(Close::Bad(reason)) => {
            limited_warn(&shared, WarnKind::ConnectionClosed, || {
                tracing::info!(listener = %shared.id, %peer, %reason, "peer connection closed before its handshake");
            });
            return;
        }
        Err(_) => return,
    };
    // The newest connection of a node and channel wins; the one it replaces is told to close.
    let (replaced_tx, replaced) = watch::channel(false);
    let previous = lock(&shared.active).insert((from, channel), (number, replaced_tx));
    if let Some((_, previous)) = previous {
        // The previous connection may be gone already.
        let _ = previous.send(true);
    }
    tracing::debug!(listener = %shared.id, %peer, from = from.0, %channel, "peer connection handshaken");
    shared.service.connected(from, channel);

    let (queue, answers) = mpsc::channel(PEER_INFLIGHT_REQUESTS_MAX);
    let writer_task = tokio::spawn(write_answers(writer, answers, shared.timings.write_timeout));
    let close = serve_requests(reader, &queue, from, channel, &shared, stop, replaced).await;
    drop(queue);
    // Admitted answers are written, within a bound: a handler that never returns is aborted
    // with the writer, whose queue holds its task.
    let writer_abort = writer_task.abort_handle();
    if tokio::time::timeout(PEER_DRAIN_TIMEOUT, writer_task)
        .await
        .is_err()
    {
        writer_abort.abort();
    }
    {
        let mut active = lock(&shared.active);
        if active
            .get(&(from, channel))
            .is_some_and(|(n, _)| *n == number)
        {
            active.remove(&(from, channel));
        }
    }
    match close {
        Close::Normal | Close::Replaced => {
            tracing::debug!(listener = %shared.id, %peer, from = from.0, %channel, ?close, "peer connection closed");
        }
        Close::Bad(reason) => limited_warn(&shared, WarnKind::ConnectionClosed, || {
            tracing::info!(listener = %shared.id, %peer, from = from.0, %channel, %reason, "peer connection closed");
        }),
    }
}

/// Reads and checks the first frame, which must be a handshake, and answers it; the node and
/// channel of an accepted connection.
async fn accept_handshake<S: PeerService>(
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    shared: &Shared<S>,
    peer: SocketAddr,
) -> Result<(NodeId, PeerChannel), Close> {
    let timings = shared.timings;
    let frame = tokio::time::timeout(timings.listener_handshake_timeout, async {
        let header_bytes = match read_header_bytes(reader).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Close::Normal),
            Err(e) => return Err(Close::Bad(format!("read failed: {e}"))),
        };
        let (header, body_bytes) = match read_header(&header_bytes) {
            Ok(checked) => checked,
            Err(error) => return Err(refuse_frame(writer, shared, peer, error.into()).await),
        };
        if header.is_response() || header.kind != PeerKind::PeerHandshake.code() {
            let failure = PeerFailure::new(
                PeerErrorCode::HandshakeRequired,
                "the first frame on a peer connection must be a PeerHandshake request",
            );
            limited_warn(shared, WarnKind::NoHandshake, || {
                tracing::warn!(listener = %shared.id, %peer, kind = header.kind, "peer frame before the handshake");
            });
            // Reading a small body first lets the close be an orderly FIN: closing with unread
            // bytes makes the kernel send a reset, which can destroy the answer in flight.
            if body_bytes <= HANDSHAKE_BODY_BYTES_MAX {
                let _ = read_body(reader, body_bytes, timings.body_read_timeout).await;
            }
            answer_and_close(writer, &header, &failure, timings.write_timeout).await;
            return Err(Close::Bad(format!("kind {:#06x} before the handshake", header.kind)));
        }
        if body_bytes > HANDSHAKE_BODY_BYTES_MAX {
            let failure = PeerFailure::new(
                PeerErrorCode::CorruptFrame,
                format!("a handshake of {body_bytes} bytes is above the limit of {HANDSHAKE_BODY_BYTES_MAX}"),
            );
            answer_and_close(writer, &header, &failure, timings.write_timeout).await;
            return Err(Close::Bad("oversized handshake".into()));
        }
        match read_body(reader, body_bytes, timings.body_read_timeout).await {
            Ok(body) => Ok((header, body)),
            Err(BodyError::TimedOut) => Err(Close::Bad("handshake body not sent in time".into())),
            Err(BodyError::Io(e)) => Err(Close::Bad(format!("truncated handshake: {e}"))),
        }
    })
    .await;
    let (header, body) = match frame {
        Err(_) => return Err(Close::Bad("no handshake in time".into())),
        Ok(frame) => frame?,
    };
    let hello: PeerHandshakeRequest =
        match decode_request_body(&header, PeerKind::PeerHandshake, &body) {
            Ok(hello) => hello,
            Err(error) => {
                limited_warn(shared, WarnKind::BadRequest, || {
                    tracing::warn!(listener = %shared.id, %peer, %error, "bad peer handshake");
                });
                answer_and_close(writer, &header, &error.failure(), timings.write_timeout).await;
                return Err(Close::Bad(format!("bad handshake: {error}")));
            }
        };
    // A node that does not know its cluster id yet learns it from the first peer that names
    // one (the node that bootstrapped the quorum, or a member that learnt it before).
    if hello.target_node_id == shared.identity.node_id
        && hello.node_id != shared.identity.node_id
        && shared.service.admits(hello.node_id)
        && let Err(e) = shared.identity.cluster_id.adopt(&hello.cluster_id).await
    {
        tracing::error!(listener = %shared.id, error = %e, "cannot record the cluster id");
        return Err(Close::Bad(format!("cannot record the cluster id: {e}")));
    }
    if let Some((code, message)) = check_handshake(&hello, shared) {
        let own = &shared.identity;
        let first = {
            let mut logged = lock(&shared.refusals_logged);
            if logged.len() >= REFUSALS_REMEMBERED_MAX {
                logged.clear();
            }
            logged.insert((hello.node_id, code.code()))
        };
        if first {
            tracing::warn!(listener = %shared.id, %peer, from = hello.node_id.0, channel = %hello.channel, code = code.name(), %message, "peer handshake refused");
        } else {
            tracing::debug!(listener = %shared.id, %peer, from = hello.node_id.0, code = code.name(), "peer handshake refused again");
        }
        let failure = PeerFailure::refusal(code, message, &own.cluster_id.stated(), own.node_id);
        answer_and_close(writer, &header, &failure, timings.write_timeout).await;
        return Err(Close::Normal);
    }
    // A node that handshakes is remembered afresh: a later refusal is logged again.
    lock(&shared.refusals_logged).retain(|(node, _)| *node != hello.node_id);
    let answer = PeerHandshakeResponse {
        cluster_id: shared.identity.cluster_id.stated(),
        node_id: shared.identity.node_id,
        software_version: env!("CARGO_PKG_VERSION").to_owned(),
        kinds: PeerKind::handshake_list(),
    };
    let frame = encode_response_body(PeerKind::PeerHandshake, header.correlation_id, &answer)
        .map_err(|e| Close::Bad(format!("cannot encode the handshake answer: {e}")))?;
    match tokio::time::timeout(timings.write_timeout, writer.write_all(&frame)).await {
        Ok(Ok(())) => Ok((hello.node_id, hello.channel)),
        Ok(Err(e)) => Err(Close::Bad(format!("write failed: {e}"))),
        Err(_) => Err(Close::Bad(
            "the handshake answer was not read in time".into(),
        )),
    }
}

/// The listening side's check of a handshake: the refusal's code and message, naming both
/// sides' ids, or `None` to accept.
fn check_handshake<S: PeerService>(
    hello: &PeerHandshakeRequest,
    shared: &Shared<S>,
) -> Option<(PeerErrorCode, String)> {
    let own = &shared.identity;
    let own_cluster = own.cluster_id.stated();
    if own_cluster.is_empty() {
        // Neither side knows the cluster id yet: the quorum has not formed. The dialler backs
        // off and comes back once one of them has learnt it.
        return Some((
            PeerErrorCode::ClusterIdMismatch,
            format!(
                "neither node {} nor node {} knows the cluster id yet (the quorum has not formed)",
                own.node_id.0, hello.node_id.0
            ),
        ));
    }
    if hello.cluster_id != own_cluster {
        return Some((
            PeerErrorCode::ClusterIdMismatch,
            format!(
                "node {} is in cluster {:?}, node {} in cluster {:?}",
                own.node_id.0, own_cluster, hello.node_id.0, hello.cluster_id
            ),
        ));
    }
    if hello.target_node_id != own.node_id {
        return Some((
            PeerErrorCode::NodeIdMismatch,
            format!(
                "node {} dialled node {} at this address, which is node {}",
                hello.node_id.0, hello.target_node_id.0, own.node_id.0
            ),
        ));
    }
    if hello.node_id == own.node_id {
        return Some((
            PeerErrorCode::DuplicateNodeId,
            format!(
                "the dialling node claims this node's own id {}",
                own.node_id.0
            ),
        ));
    }
    if !shared.service.admits(hello.node_id) {
        return Some((
            PeerErrorCode::NodeNotAdmitted,
            format!(
                "node {} does not accept peer connections from node {}",
                own.node_id.0, hello.node_id.0
            ),
        ));
    }
    None
}

/// Answers a frame whose header failed the common check, if it can be answered (a frame too
/// large, by its correlation id), and closes.
async fn refuse_frame<S>(
    writer: &mut OwnedWriteHalf,
    shared: &Shared<S>,
    peer: SocketAddr,
    error: PeerProtocolError,
) -> Close {
    limited_warn(shared, WarnKind::BadFrameLength, || {
        tracing::warn!(listener = %shared.id, %peer, %error, "bad peer frame; closing");
    });
    if let PeerProtocolError::Frame(ProtocolError::FrameTooLarge { header, .. }) = &error {
        answer_and_close(
            writer,
            header,
            &error.failure(),
            shared.timings.write_timeout,
        )
        .await;
    }
    Close::Bad(error.to_string())
}

/// Writes a failure answer (best effort: the connection closes either way) and shuts the
/// write side.
async fn answer_and_close(
    writer: &mut OwnedWriteHalf,
    request: &FrameHeader,
    failure: &PeerFailure,
    write_timeout: Duration,
) {
    let Ok(frame) = encode_failure(request, failure) else {
        return;
    };
    // The peer may be gone or not reading; it is being closed either way.
    let _ = tokio::time::timeout(write_timeout, async {
        writer.write_all(&frame).await?;
        writer.shutdown().await
    })
    .await;
}

/// Reads requests until the connection ends, queueing their answers in order.
async fn serve_requests<S: PeerService>(
    mut reader: OwnedReadHalf,
    queue: &mpsc::Sender<Queued>,
    from: NodeId,
    channel: PeerChannel,
    shared: &Arc<Shared<S>>,
    mut stop: watch::Receiver<bool>,
    mut replaced: watch::Receiver<bool>,
) -> Close {
    let inflight = Arc::new(Semaphore::new(PEER_INFLIGHT_REQUESTS_MAX));
    loop {
        // The permit comes first: past the bound the connection is not read at all, which the
        // peer sees as back-pressure.
        let permit = tokio::select! {
            permit = Arc::clone(&inflight).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Close::Normal,
            },
            () = stopped(&mut stop) => return Close::Normal,
            () = stopped(&mut replaced) => return Close::Replaced,
        };
        let header_bytes = tokio::select! {
            read = read_header_bytes(&mut reader) => match read {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Close::Normal,
                Err(e) => return Close::Bad(format!("read failed: {e}")),
            },
            () = stopped(&mut stop) => return Close::Normal,
            () = stopped(&mut replaced) => return Close::Replaced,
        };
        let (header, body_bytes) = match read_header(&header_bytes) {
            Ok(checked) => checked,
            Err(error) => {
                let error = PeerProtocolError::from(error);
                limited_warn(shared, WarnKind::BadFrameLength, || {
                    tracing::warn!(listener = %shared.id, from = from.0, %error, "bad peer frame; closing");
                });
                if let PeerProtocolError::Frame(ProtocolError::FrameTooLarge { header, .. }) =
                    &error
                {
                    enqueue_failure(queue, header, &error.failure(), true, permit).await;
                }
                return Close::Bad(error.to_string());
            }
        };
        if !PeerKind::in_peer_range(header.request_kind()) {
            // Not a peer speaking: its later frames are not worth reading.
            let error = PeerProtocolError::NotPeerKind {
                kind: header.request_kind(),
            };
            enqueue_failure(queue, &header, &error.failure(), true, permit).await;
            return Close::Bad(error.to_string());
        }
        let bytes = tokio::select! {
            bytes = Arc::clone(&shared.bytes_in_flight).acquire_many_owned(body_bytes.max(1) as u32) => match bytes {
                Ok(bytes) => bytes,
                Err(_) => return Close::Normal,
            },
            () = stopped(&mut stop) => return Close::Normal,
        };
        let body = match read_body(&mut reader, body_bytes, shared.timings.body_read_timeout).await
        {
            Ok(body) => body,
            Err(BodyError::TimedOut) => return Close::Bad("frame body not sent in time".into()),
            Err(BodyError::Io(e)) => return Close::Bad(format!("truncated frame: {e}")),
        };
        let queued = match request_answer(&header, &body, from, channel, shared) {
            Ok(answer) => Queued {
                answer,
                request: header,
                close: false,
                _permit: permit,
                _bytes: Some(bytes),
            },
            Err(error) => {
                limited_warn(shared, WarnKind::BadRequest, || {
                    tracing::warn!(listener = %shared.id, from = from.0, kind = header.kind, %error, "bad peer request");
                });
                let frame = encode_failure(&header, &error.failure()).unwrap_or_default();
                Queued {
                    answer: Answer::Ready(frame),
                    request: header,
                    close: false,
                    _permit: permit,
                    _bytes: None,
                }
            }
        };
        if queue.send(queued).await.is_err() {
            return Close::Bad("the writer stopped".into());
        }
    }
}

/// Starts answering one request: a ping at once, a service request on a task of its own.
fn request_answer<S: PeerService>(
    header: &FrameHeader,
    body: &[u8],
    from: NodeId,
    channel: PeerChannel,
    shared: &Arc<Shared<S>>,
) -> Result<Answer, PeerProtocolError> {
    let kind = PeerKind::check_request(header)?;
    match kind {
        PeerKind::Ping => {
            let _: PingRequest = decode_request_body(header, kind, body)?;
            Ok(Answer::Ready(encode_response_body(
                kind,
                header.correlation_id,
                &PingResponse {},
            )?))
        }
        PeerKind::PeerHandshake => Err(PeerProtocolError::UnexpectedKind {
            expected: "a request after the handshake",
            kind: header.kind,
        }),
        _ => {
            let request = PeerRequest::decode(header, body)?;
            let service = Arc::clone(&shared.service);
            let header = *header;
            Ok(Answer::Later(AbortOnDrop(tokio::spawn(async move {
                let result = service.handle(from, channel, request).await;
                answer_frame(&header, result)
            }))))
        }
    }
}

/// The frame answering `request` with the handler's result.
fn answer_frame(
    request: &FrameHeader,
    result: Result<super::PeerResponse, PeerFailure>,
) -> Vec<u8> {
    let failed = |message: String| {
        encode_failure(
            request,
            &PeerFailure::new(PeerErrorCode::ServiceFailed, message),
        )
        .unwrap_or_default()
    };
    match result {
        Ok(response) if response.kind().code() != request.request_kind() => failed(format!(
            "the handler answered {} with {}",
            PeerKind::from_code(request.request_kind()).map_or("?", PeerKind::name),
            response.kind().name()
        )),
        Ok(response) => response
            .encode(request.correlation_id)
            .unwrap_or_else(|e| failed(format!("the answer cannot be sent: {e}"))),
        Err(failure) => encode_failure(request, &failure).unwrap_or_default(),
    }
}

async fn enqueue_failure(
    queue: &mpsc::Sender<Queued>,
    header: &FrameHeader,
    failure: &PeerFailure,
    close: bool,
    permit: OwnedSemaphorePermit,
) {
    let frame = encode_failure(header, failure).unwrap_or_default();
    // The writer may be gone; the connection is closing either way.
    let _ = queue
        .send(Queued {
            answer: Answer::Ready(frame),
            request: *header,
            close,
            _permit: permit,
            _bytes: None,
        })
        .await;
}

/// Writes answers in request order, each within `write_timeout`, then closes the write side.
async fn write_answers(
    mut writer: OwnedWriteHalf,
    mut answers: mpsc::Receiver<Queued>,
    write_timeout: Duration,
) {
    while let Some(queued) = answers.recv().await {
        let frame = match queued.answer {
            Answer::Ready(frame) => frame,
            Answer::Later(mut task) => match (&mut task.0).await {
                Ok(frame) => frame,
                Err(e) => {
                    tracing::error!(error = %e, "peer request handler failed");
                    encode_failure(
                        &queued.request,
                        &PeerFailure::new(
                            PeerErrorCode::ServiceFailed,
                            "the request's handler failed on the answering node",
                        ),
                    )
                    .unwrap_or_default()
                }
            },
        };
        match tokio::time::timeout(write_timeout, writer.write_all(&frame)).await {
            Ok(Ok(())) => {}
            // The peer is gone or stopped reading: its link reconnects.
            Ok(Err(_)) | Err(_) => return,
        }
        if queued.close {
            break;
        }
    }
    // The peer may be gone already.
    let _ = writer.shutdown().await;
}

/// A poisoned lock only means a thread panicked while holding it; the maps stay usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
