//! The PeerLink: one per remote node, reached through a cloneable [`PeerLinkHandle`].
//!
//! - Owns: two connections it dials itself, `control` and `data`, each run by a task of its
//!   own with its own queue, so a slow data answer never holds up a control request; for each,
//!   the requests written and not yet answered (in order), and the connection's reader and
//!   writer tasks.
//! - Receives from: callers through `PeerLinkHandle::call` (the Raft network, replication, the
//!   node); answers from its sockets.
//! - Sends to: the remote node's peer listener; answers go back to callers on oneshots.
//! - Bounds: `PEER_QUEUE_MAX` requests per channel accepted and not answered (a semaphore
//!   permit travels with each; past it `call` fails at once with a retriable `Overloaded`),
//!   of which at most `PEER_INFLIGHT_REQUESTS_MAX - 1` are written and unanswered, plus one
//!   ping on the control connection; every network wait is bounded by `PeerTimings`.
//! - Failure: a connection that fails (closed, a write or an answer overdue, a ping
//!   unanswered, bytes that are not the protocol) is dropped with everything it held, each
//!   request failing with a retriable `Unreachable`; the link reconnects after a capped,
//!   jittered exponential back-off (`BACKOFF_INITIAL` doubling to `BACKOFF_MAX`), during
//!   which calls fail at once. A refused handshake is logged once and retried every
//!   `REFUSED_BACKOFF`, calls failing with `Refused` meanwhile. `reconnect_now` cuts a
//!   back-off short: the node calls it when the remote node dials in, which says it is back.
//! - Shutdown: `stop` (or dropping every handle) ends both tasks; whatever they held fails
//!   with `Unreachable` (`LinkFault::Stopped`), and the link leaves the directory.
//!
//! The link is a pair of tokio tasks registered in the actor directory as a `PeerLink`, like
//! the Listener and ClientSessions, rather than a ractor actor: it is I/O loops and a timer,
//! its queues are bounded channels of its own, and it restarts its connections itself.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use vltava_messages::NodeId;
use vltava_messages::peer::{
    PeerErrorCode, PeerFailure, PeerHandshakeRequest, PeerHandshakeResponse, PeerKind, PingRequest,
    PingResponse, decode_response_body, encode_request_body,
};
use vltava_messages::protocol::{FrameHeader, read_header};

use super::state::{ChannelState, PeerLinkGauges, PeerLinkState};
use super::wire::{AbortOnDrop, BodyError, Jitter, backoff, read_body, read_header_bytes};
use super::{
    LinkFault, PEER_INFLIGHT_REQUESTS_MAX, PEER_QUEUE_MAX, PeerChannel, PeerError, PeerIdentity,
    PeerRequest, PeerResponse, PeerTimings, REQUEST_TIMEOUT_MAX, Refusal,
};
use crate::directory::{ActorDirectory, ActorKind, ActorStats, PublishedState};
use crate::shutdown::stopped;

/// Requests a connection has written and not had answered, pings aside: one slot of the
/// listener's per-connection bound is kept for the control connection's ping, so a full
/// pipeline never delays the probe that tells a busy peer from a dead one.
const REQUESTS_IN_FLIGHT_MAX: usize = PEER_INFLIGHT_REQUESTS_MAX - 1;

/// What a link needs to know about its own node.
#[derive(Clone, Debug)]
pub struct PeerLinkConfig {
    pub identity: PeerIdentity,
    /// The IP of the node's own peer address: outgoing sockets bind to it (port 0), so peers
    /// see this node by its address and a test can cut a node off by it. It must be of the
    /// peers' address family (an unspecified address, `0.0.0.0`, lets the system choose).
    pub bind_ip: IpAddr,
    pub timings: PeerTimings,
}

/// The public face of a PeerLink. Cheap to clone; the link runs while a handle exists and it
/// has not been stopped.
#[derive(Clone, Debug)]
pub struct PeerLinkHandle {
    shared: Arc<LinkShared>,
}

#[derive(Debug)]
struct LinkShared {
    id: String,
    remote: NodeId,
    address: SocketAddr,
    queues: [mpsc::Sender<Outgoing>; 2],
    /// `PEER_QUEUE_MAX` per channel: a permit travels with each accepted request until it is
    /// answered or failed, so the bound counts queued and in-flight requests alike.
    permits: [Arc<Semaphore>; 2],
    gauges: Arc<PeerLinkGauges>,
    stats: Arc<ActorStats>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    /// Wakes the channel tasks out of a back-off (`reconnect_now`).
    reconnect: Arc<Notify>,
}

/// A request accepted by a link, on its way to the socket.
#[derive(Debug)]
struct Outgoing {
    /// The encoded frame, correlation id still zero: the connection writes its own in.
    frame: Vec<u8>,
    kind: PeerKind,
    deadline: Instant,
    reply: oneshot::Sender<Result<PeerResponse, PeerError>>,
    _ticket: Ticket,
}

impl Outgoing {
    /// Answers the caller. The ticket (and with it the queue permit) is released first, so a
    /// caller that sends again as soon as it has its answer finds the slot free.
    fn finish(self, result: Result<PeerResponse, PeerError>) {
        let Outgoing { reply, _ticket, .. } = self;
        drop(_ticket);
        // The caller may have given up.
        let _ = reply.send(result);
    }
}

/// Counts a request in its channel's depth and the link's directory depth from acceptance
/// until it is dropped (answered, failed, or abandoned), whichever path it takes.
#[derive(Debug)]
struct Ticket {
    gauges: Arc<PeerLinkGauges>,
    channel: PeerChannel,
    stats: Arc<ActorStats>,
    _permit: OwnedSemaphorePermit,
}

impl Ticket {
    fn new(shared: &LinkShared, channel: PeerChannel, permit: OwnedSemaphorePermit) -> Ticket {
        shared
            .gauges
            .channel(channel)
            .depth
            .fetch_add(1, Ordering::Relaxed);
        shared.stats.enqueued();
        Ticket {
            gauges: Arc::clone(&shared.gauges),
            channel,
            stats: Arc::clone(&shared.stats),
            _permit: permit,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gauges
            .channel(self.channel)
            .depth
            .fetch_sub(1, Ordering::Relaxed);
        self.stats.handled();
    }
}

fn index(channel: PeerChannel) -> usize {
    match channel {
        PeerChannel::Control => 0,
        PeerChannel::Data => 1,
    }
}

impl PeerLinkHandle {
    /// Starts the link to node `remote` at `address` and registers it in the directory as
    /// `n<node>/peer-link/<remote>` under `parent`. Must be called within a tokio runtime.
    #[must_use]
    pub fn spawn(
        remote: NodeId,
        address: SocketAddr,
        config: Arc<PeerLinkConfig>,
        directory: &ActorDirectory,
        parent: &str,
    ) -> PeerLinkHandle {
        let id = format!("{}/peer-link/{}", config.identity.label(), remote.0);
        let gauges = Arc::new(PeerLinkGauges::new(remote, address, config.bind_ip));
        let stats = directory.register_with_state(
            &id,
            ActorKind::PeerLink,
            Some(parent),
            Some(PublishedState::PeerLink(Arc::clone(&gauges) as Arc<_>)),
        );
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let (control_tx, control_rx) = mpsc::channel(PEER_QUEUE_MAX);
        let (data_tx, data_rx) = mpsc::channel(PEER_QUEUE_MAX);
        let reconnect = Arc::new(Notify::new());
        let task = |channel: PeerChannel, queue| ChannelTask {
            id: id.clone(),
            channel,
            remote,
            address,
            config: Arc::clone(&config),
            gauges: Arc::clone(&gauges),
            queue,
            stop: stop_rx.clone(),
            reconnect: Arc::clone(&reconnect),
            jitter: Jitter::new(
                u64::from(remote.0) << 32 | u64::from(address.port()) << 1 | index(channel) as u64,
            ),
        };
        let control = tokio::spawn(task(PeerChannel::Control, control_rx).run());
        let data = tokio::spawn(task(PeerChannel::Data, data_rx).run());
        let watcher_directory = directory.clone();
        let watcher_gauges = Arc::clone(&gauges);
        let watcher_id = id.clone();
        tokio::spawn(async move {
            let mut failed = false;
            for (channel, joined) in [
                (PeerChannel::Control, control.await),
                (PeerChannel::Data, data.await),
            ] {
                if let Err(error) = joined {
                    // The channel's queue went with its task, so calls on it fail as
                    // `Unreachable`; the entry stays in the directory to show why.
                    failed = true;
                    watcher_gauges
                        .channel(channel)
                        .set_state(ChannelState::Stopped);
                    let message = format!("{channel} connection task failed: {error}");
                    tracing::error!(link = %watcher_id, %message, "peer link failed");
                    watcher_directory.record_failure(&watcher_id, &message, false);
                }
            }
            if !failed {
                watcher_directory.unregister(&watcher_id);
            }
            // Nobody may be waiting for the link to end.
            let _ = done_tx.send(true);
        });
        PeerLinkHandle {
            shared: Arc::new(LinkShared {
                id,
                remote,
                address,
                queues: [control_tx, data_tx],
                permits: [
                    Arc::new(Semaphore::new(PEER_QUEUE_MAX)),
                    Arc::new(Semaphore::new(PEER_QUEUE_MAX)),
                ],
                gauges,
                stats,
                stop,
                done,
                reconnect,
            }),
        }
    }

    /// Sends `request` on `channel` and waits for its answer, at most `timeout` (cut to
    /// `REQUEST_TIMEOUT_MAX`), queueing included.
    ///
    /// # Errors
    /// `Overloaded` when the channel holds `PEER_QUEUE_MAX` requests already; `Unreachable`
    /// when its connection is down or goes down with the request; `Refused` while the
    /// handshake is refused; `Timeout`; `Remote` for the remote handler's failure; `Invalid`
    /// for a request too large for a frame. [`PeerError::is_retriable`] says which to retry.
    pub async fn call(
        &self,
        channel: PeerChannel,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        let shared = &self.shared;
        let timeout = timeout.min(REQUEST_TIMEOUT_MAX);
        if let Some(error) = self.fail_fast(channel) {
            return Err(error);
        }
        let permit = Arc::clone(&shared.permits[index(channel)])
            .try_acquire_owned()
            .map_err(|_| PeerError::Overloaded {
                remote: shared.remote,
                channel,
                max: PEER_QUEUE_MAX,
            })?;
        let frame = request.encode(0).map_err(|source| PeerError::Invalid {
            remote: shared.remote,
            source,
        })?;
        let (reply, answer) = oneshot::channel();
        let outgoing = Outgoing {
            frame,
            kind: request.kind(),
            deadline: Instant::now() + timeout,
            reply,
            _ticket: Ticket::new(shared, channel, permit),
        };
        // Never full: the permits bound the queue at its capacity. Closed: the link stopped.
        if shared.queues[index(channel)].try_send(outgoing).is_err() {
            return Err(self.stopped_error(channel));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            // The link dropped the request unanswered: its task is gone.
            Ok(Err(_)) => Err(self.stopped_error(channel)),
            Err(_) => Err(PeerError::Timeout {
                remote: shared.remote,
                timeout,
            }),
        }
    }

    /// The error a call gets at once, without queueing, from the channel's state.
    fn fail_fast(&self, channel: PeerChannel) -> Option<PeerError> {
        let shared = &self.shared;
        let gauges = shared.gauges.channel(channel);
        match gauges.state() {
            ChannelState::Connecting | ChannelState::Connected => None,
            ChannelState::Refused => shared.gauges.refusal().map(|refusal| PeerError::Refused {
                remote: shared.remote,
                address: shared.address,
                refusal,
            }),
            ChannelState::BackingOff => Some(PeerError::Unreachable {
                remote: shared.remote,
                address: shared.address,
                channel,
                fault: gauges.fault().unwrap_or(LinkFault::Closed),
            }),
            ChannelState::Stopped => Some(self.stopped_error(channel)),
        }
    }

    fn stopped_error(&self, channel: PeerChannel) -> PeerError {
        PeerError::Unreachable {
            remote: self.shared.remote,
            address: self.shared.address,
            channel,
            fault: LinkFault::Stopped,
        }
    }

    /// The remote node.
    #[must_use]
    pub fn remote(&self) -> NodeId {
        self.shared.remote
    }

    /// The remote node's peer address.
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        self.shared.address
    }

    /// The link's id in the actor directory.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The link's state as a whole.
    #[must_use]
    pub fn state(&self) -> PeerLinkState {
        self.shared.gauges.state()
    }

    /// Everything the link publishes: per-channel state, depth, reconnects, last error, RTT.
    #[must_use]
    pub fn gauges(&self) -> &Arc<PeerLinkGauges> {
        &self.shared.gauges
    }

    /// Asks the link to stop; calls fail from then on. Returns at once: see [`Self::stopped`].
    pub fn stop(&self) {
        // The tasks may be gone already, which is what was asked.
        let _ = self.shared.stop.send(true);
    }

    /// Ends a back-off now: a channel waiting to reconnect dials at once (a connected or
    /// connecting channel is left alone). The node calls this when the remote node connects
    /// to it, which shows that it is up again. Without it a node that restarted was dialled
    /// only when the back-off ran out (a wait of 400 to 800 ms was running after 0.6 s
    /// down; up to `BACKOFF_MAX`, 2 s): meanwhile its Raft leader's heartbeats failed here
    /// at once, so the restarted member fell behind and its election timer ran from its
    /// restart, and a controller failover soon after cost extra elections
    /// (docs/benchmarks.md, "Why failover misses 1.5 s"). Bounded: at most one dial per
    /// channel per call, and calls come at most once per handshake the remote makes.
    pub fn reconnect_now(&self) {
        self.shared.reconnect.notify_waiters();
    }

    /// Resolves once both of the link's tasks have ended (after [`Self::stop`]).
    pub async fn stopped(&self) {
        let mut done = self.shared.done.clone();
        // An error means the watcher task is gone, which it only is once it has finished.
        let _ = done.wait_for(|done| *done).await;
    }
}

/// Why a connection attempt did not give a connection.
enum Attempt {
    Refused(Refusal),
    Failed(LinkFault),
}

/// One of a link's two connections, across its reconnections.
struct ChannelTask {
    id: String,
    channel: PeerChannel,
    remote: NodeId,
    address: SocketAddr,
    config: Arc<PeerLinkConfig>,
    gauges: Arc<PeerLinkGauges>,
    queue: mpsc::Receiver<Outgoing>,
    stop: watch::Receiver<bool>,
    /// Shared by the link's two tasks and its handle: `reconnect_now` ends a back-off.
    reconnect: Arc<Notify>,
    jitter: Jitter,
}

impl ChannelTask {
    async fn run(mut self) {
        let timings = self.config.timings;
        // Failed attempts since the last connection that worked, for the back-off.
        let mut failures: u32 = 0;
        // Once a connection has been up, every later attempt follows a drop: a dial refused
        // then means the peer's process is gone (`PeerLinkGauges::gone_since`).
        let mut connected_before = false;
        // Whether the current outage has been logged at INFO (later attempts log at DEBUG).
        let mut outage_logged = false;
        loop {
            self.set_state(ChannelState::Connecting);
            let mut stop = self.stop.clone();
            let attempt = tokio::select! {
                attempt = self.connect() => attempt,
                () = stopped(&mut stop) => break,
            };
            let delay = match attempt {
                Ok(stream) => {
                    if connected_before {
                        self.gauges.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    connected_before = true;
                    failures = 0;
                    self.gauges.clear_gone();
                    self.gauges.clear_refusal();
                    self.gauges.channel(self.channel).set_fault(None);
                    self.set_state(ChannelState::Connected);
                    tracing::debug!(link = %self.id, channel = %self.channel, "connected");
                    let fault = self.drive(stream).await;
                    if matches!(fault, LinkFault::Stopped) {
                        break;
                    }
                    tracing::info!(link = %self.id, channel = %self.channel, %fault, "peer connection lost; reconnecting");
                    outage_logged = true;
                    backoff(
                        timings.backoff_initial,
                        timings.backoff_max,
                        0,
                        &mut self.jitter,
                    )
                }
                Err(Attempt::Refused(refusal)) => {
                    self.gauges.connect_failures.fetch_add(1, Ordering::Relaxed);
                    if self.gauges.note_refusal(&refusal) {
                        tracing::warn!(link = %self.id, channel = %self.channel, address = %self.address, %refusal, "peer handshake refused; retrying at the slowest back-off");
                    } else {
                        tracing::debug!(link = %self.id, channel = %self.channel, %refusal, "peer handshake refused again");
                    }
                    self.gauges
                        .set_last_error(format!("{}: refused: {refusal}", self.channel));
                    self.set_state(ChannelState::Refused);
                    self.jitter.spread(timings.refused_backoff)
                }
                Err(Attempt::Failed(fault)) => {
                    self.gauges.connect_failures.fetch_add(1, Ordering::Relaxed);
                    if connected_before
                        && matches!(&fault, LinkFault::Connect { source } if source.kind() == std::io::ErrorKind::ConnectionRefused)
                    {
                        if self.gauges.gone_since().is_none() {
                            tracing::info!(link = %self.id, address = %self.address, "peer is gone: its connection dropped and nothing listens on its port");
                        }
                        self.gauges.mark_gone();
                    }
                    failures = failures.saturating_add(1);
                    if outage_logged {
                        tracing::debug!(link = %self.id, channel = %self.channel, %fault, failures, "peer connection attempt failed");
                    } else {
                        tracing::info!(link = %self.id, channel = %self.channel, address = %self.address, %fault, "cannot reach peer; retrying with back-off");
                        outage_logged = true;
                    }
                    self.record(fault, ChannelState::BackingOff);
                    backoff(
                        timings.backoff_initial,
                        timings.backoff_max,
                        failures,
                        &mut self.jitter,
                    )
                }
            };
            if !self.wait(delay).await {
                break;
            }
        }
        self.set_state(ChannelState::Stopped);
        self.gauges
            .channel(self.channel)
            .set_fault(Some(LinkFault::Stopped));
        self.queue.close();
        while let Ok(outgoing) = self.queue.try_recv() {
            self.fail(outgoing, LinkFault::Stopped);
        }
    }

    fn set_state(&self, state: ChannelState) {
        self.gauges.channel(self.channel).set_state(state);
    }

    fn record(&self, fault: LinkFault, state: ChannelState) {
        self.gauges
            .set_last_error(format!("{}: {fault}", self.channel));
        self.gauges.channel(self.channel).set_fault(Some(fault));
        self.set_state(state);
    }

    /// Waits out a back-off (or until `reconnect_now`), failing at once whatever is queued
    /// meanwhile (calls that raced the state change); false if the link was stopped.
    async fn wait(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        // Created before the first poll, so a `reconnect_now` from here on is not missed.
        let reconnect = Arc::clone(&self.reconnect);
        let woken = reconnect.notified();
        tokio::pin!(woken);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                () = &mut woken => {
                    tracing::debug!(link = %self.id, channel = %self.channel, "back-off cut short: the peer dialled in");
                    return true;
                }
                () = stopped(&mut self.stop) => return false,
                outgoing = self.queue.recv() => match outgoing {
                    None => return false,
                    Some(outgoing) => outgoing.finish(Err(self.current_error())),
                },
            }
        }
    }

    /// The error for a request that arrives while the connection is down.
    fn current_error(&self) -> PeerError {
        let gauges = self.gauges.channel(self.channel);
        if gauges.state() == ChannelState::Refused
            && let Some(refusal) = self.gauges.refusal()
        {
            return PeerError::Refused {
                remote: self.remote,
                address: self.address,
                refusal,
            };
        }
        self.unreachable(gauges.fault().unwrap_or(LinkFault::Closed))
    }

    fn unreachable(&self, fault: LinkFault) -> PeerError {
        PeerError::Unreachable {
            remote: self.remote,
            address: self.address,
            channel: self.channel,
            fault,
        }
    }

    fn fail(&self, outgoing: Outgoing, fault: LinkFault) {
        outgoing.finish(Err(self.unreachable(fault)));
    }

    /// Connects from the node's own address and handshakes.
    async fn connect(&self) -> Result<TcpStream, Attempt> {
        let timings = self.config.timings;
        let connect_fault = |e: std::io::Error| {
            Attempt::Failed(LinkFault::Connect {
                source: Arc::new(e),
            })
        };
        let socket = if self.address.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(connect_fault)?;
        socket
            .bind(SocketAddr::new(self.config.bind_ip, 0))
            .map_err(connect_fault)?;
        let mut stream =
            match tokio::time::timeout(timings.connect_timeout, socket.connect(self.address)).await
            {
                Err(_) => {
                    return Err(Attempt::Failed(LinkFault::ConnectTimedOut {
                        after: timings.connect_timeout,
                    }));
                }
                Ok(Err(e)) => return Err(connect_fault(e)),
                Ok(Ok(stream)) => stream,
            };
        // Frames are written whole; Nagle would only delay small control requests.
        let _ = stream.set_nodelay(true);
        let hello = PeerHandshakeRequest {
            cluster_id: self.config.identity.cluster_id.stated(),
            node_id: self.config.identity.node_id,
            target_node_id: self.remote,
            channel: self.channel,
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            kinds: PeerKind::handshake_list(),
        };
        let frame = encode_request_body(PeerKind::PeerHandshake, 0, &hello)
            .map_err(|source| Attempt::Failed(LinkFault::Protocol { source }))?;
        let answer = tokio::time::timeout(timings.handshake_timeout, async {
            stream.write_all(&frame).await.map_err(LinkFault::io)?;
            read_frame(&mut stream, timings.body_read_timeout).await
        })
        .await;
        let (header, body) = match answer {
            Err(_) => {
                return Err(Attempt::Failed(LinkFault::HandshakeTimedOut {
                    after: timings.handshake_timeout,
                }));
            }
            Ok(Err(fault)) => return Err(Attempt::Failed(fault)),
            Ok(Ok(frame)) => frame,
        };
        let answer =
            decode_response_body::<PeerHandshakeResponse>(&header, PeerKind::PeerHandshake, &body)
                .map_err(|source| Attempt::Failed(LinkFault::Protocol { source }))?;
        // A node that does not know its cluster id yet learns it from the first peer whose
        // answer names one (and is not a refusal).
        if let Ok(answer) = &answer
            && answer.node_id == self.remote
        {
            self.config
                .identity
                .cluster_id
                .adopt(&answer.cluster_id)
                .await
                .map_err(|e| Attempt::Failed(LinkFault::io(e)))?;
        }
        self.check_answer(answer)?;
        Ok(stream)
    }

    /// The dialling side's check of the handshake answer: the listener checked this node, and
    /// this checks the listener (the same cluster, and the node that was dialled).
    fn check_answer(
        &self,
        answer: Result<PeerHandshakeResponse, PeerFailure>,
    ) -> Result<(), Attempt> {
        let identity = &self.config.identity;
        let answer = match answer {
            Ok(answer) => answer,
            Err(failure) => return Err(self.refusal_of(failure)),
        };
        if answer.cluster_id != identity.cluster_id.stated() {
            return Err(Attempt::Refused(Refusal::ClusterIdMismatch {
                local: identity.cluster_id.stated(),
                remote: answer.cluster_id,
                remote_node: answer.node_id,
            }));
        }
        if answer.node_id != self.remote {
            return Err(Attempt::Refused(Refusal::NodeIdMismatch {
                expected: self.remote,
                found: answer.node_id,
            }));
        }
        if answer.node_id == identity.node_id {
            return Err(Attempt::Refused(Refusal::DuplicateNodeId {
                node: answer.node_id,
            }));
        }
        Ok(())
    }

    /// A handshake failure from the listener, as a refusal when it is one. A refusal without
    /// the refusing node's identity is not the protocol, and counts as a failed handshake.
    fn refusal_of(&self, failure: PeerFailure) -> Attempt {
        let identity = &self.config.identity;
        let refusal = match (failure.error_code(), &failure.cluster_id, failure.node_id) {
            (Some(PeerErrorCode::ClusterIdMismatch), Some(cluster_id), Some(node_id)) => {
                Some(Refusal::ClusterIdMismatch {
                    local: identity.cluster_id.stated(),
                    remote: cluster_id.clone(),
                    remote_node: node_id,
                })
            }
            (Some(PeerErrorCode::NodeIdMismatch), _, Some(node_id)) => {
                Some(Refusal::NodeIdMismatch {
                    expected: self.remote,
                    found: node_id,
                })
            }
            (Some(PeerErrorCode::NodeNotAdmitted), _, Some(node_id)) => {
                Some(Refusal::NotAdmitted {
                    node: identity.node_id,
                    by: node_id,
                })
            }
            (Some(PeerErrorCode::DuplicateNodeId), _, _) => Some(Refusal::DuplicateNodeId {
                node: identity.node_id,
            }),
            _ => None,
        };
        match refusal {
            Some(refusal) => Attempt::Refused(refusal),
            None => Attempt::Failed(LinkFault::HandshakeFailed { failure }),
        }
    }

    /// Runs one handshaken connection until it fails or the link stops; returns why it ended,
    /// having failed everything it held and everything queued.
    async fn drive(&mut self, stream: TcpStream) -> LinkFault {
        let timings = self.config.timings;
        let gauges = Arc::clone(&self.gauges);
        let (reader, writer) = stream.into_split();
        // Frames to write: never more than the requests and ping in flight, so never full.
        let (frames, frames_rx) = mpsc::channel(PEER_INFLIGHT_REQUESTS_MAX);
        let mut writer_task = AbortOnDrop(tokio::spawn(write_frames(
            writer,
            frames_rx,
            timings.write_timeout,
            Arc::clone(&gauges),
            self.channel,
        )));
        // Answers read: a correct peer sends no more than there are frames in flight.
        let (answers_tx, mut answers) = mpsc::channel(PEER_INFLIGHT_REQUESTS_MAX);
        let _reader_task = AbortOnDrop(tokio::spawn(read_answers(
            reader,
            answers_tx,
            timings.body_read_timeout,
            Arc::clone(&gauges),
            self.channel,
        )));
        let mut flight = Flight::new(self.channel == PeerChannel::Control);
        let mut ticker = tokio::time::interval(timings.check_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let fault = loop {
            tokio::select! {
                () = stopped(&mut self.stop) => break LinkFault::Stopped,
                written = &mut writer_task.0 => break written.unwrap_or(LinkFault::Stopped),
                answer = answers.recv() => match answer {
                    Some(Ok((header, body))) => {
                        if let Err(fault) = flight.answer(self, &header, &body) {
                            break fault;
                        }
                    }
                    Some(Err(fault)) => break fault,
                    None => break LinkFault::Closed,
                },
                outgoing = self.queue.recv(), if flight.requests < REQUESTS_IN_FLIGHT_MAX => {
                    let Some(outgoing) = outgoing else {
                        // Every handle is gone: nobody can call this link any more.
                        break LinkFault::Stopped;
                    };
                    if outgoing.reply.is_closed() {
                        // Its caller gave up while it was queued: not worth the peer's time.
                        continue;
                    }
                    let frame = flight.push_request(outgoing);
                    gauges.channel(self.channel).requests_sent.fetch_add(1, Ordering::Relaxed);
                    if frames.send(frame).await.is_err() {
                        break (&mut writer_task.0).await.unwrap_or(LinkFault::Stopped);
                    }
                },
                _ = ticker.tick() => {
                    let now = Instant::now();
                    if let Some(frame) = flight.ping_if_due(now, timings.ping_interval)
                        && frames.send(frame).await.is_err()
                    {
                        break (&mut writer_task.0).await.unwrap_or(LinkFault::Stopped);
                    }
                    if let Some(fault) = flight.overdue(now, &timings) {
                        break fault;
                    }
                }
            }
            gauges
                .channel(self.channel)
                .in_flight
                .store(flight.pending.len() as u64, Ordering::Relaxed);
        };
        // The state changes before anything fails, so a caller that sees its request fail
        // also sees the connection down.
        if !matches!(fault, LinkFault::Stopped) {
            self.record(fault.clone(), ChannelState::BackingOff);
        }
        for pending in flight.pending.drain(..) {
            if let Pending::Request { outgoing, .. } = pending {
                self.fail(outgoing, fault.clone());
            }
        }
        while let Ok(outgoing) = self.queue.try_recv() {
            self.fail(outgoing, fault.clone());
        }
        gauges
            .channel(self.channel)
            .in_flight
            .store(0, Ordering::Relaxed);
        fault
    }
}

/// A frame written and not answered yet, in the order written (answers come in that order).
#[derive(Debug)]
enum Pending {
    Ping { id: u64, sent: Instant },
    Request { id: u64, outgoing: Outgoing },
}

impl Pending {
    fn id(&self) -> u64 {
        match self {
            Pending::Ping { id, .. } | Pending::Request { id, .. } => *id,
        }
    }
}

/// The frames of one connection in flight.
#[derive(Debug)]
struct Flight {
    pending: VecDeque<Pending>,
    /// Requests among `pending` (pings aside).
    requests: usize,
    /// Correlation ids count up from 1 (0 was the handshake's).
    next_id: u64,
    pings: bool,
    ping_outstanding: bool,
    /// The first ping goes out at the first check, so a new connection's RTT is known soon.
    ping_due: Option<Instant>,
}

impl Flight {
    fn new(pings: bool) -> Flight {
        Flight {
            pending: VecDeque::with_capacity(PEER_INFLIGHT_REQUESTS_MAX),
            requests: 0,
            next_id: 1,
            pings,
            ping_outstanding: false,
            ping_due: None,
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Records a request as written and returns its frame, its correlation id written in.
    fn push_request(&mut self, mut outgoing: Outgoing) -> Vec<u8> {
        let id = self.take_id();
        outgoing.frame[8..16].copy_from_slice(&id.to_be_bytes());
        let frame = std::mem::take(&mut outgoing.frame);
        self.pending.push_back(Pending::Request { id, outgoing });
        self.requests += 1;
        frame
    }

    /// A ping's frame, if this connection pings, none is outstanding and one is due.
    fn ping_if_due(&mut self, now: Instant, interval: Duration) -> Option<Vec<u8>> {
        if !self.pings || self.ping_outstanding || self.ping_due.is_some_and(|due| now < due) {
            return None;
        }
        let id = self.take_id();
        let frame = encode_request_body(PeerKind::Ping, id, &PingRequest {})
            .expect("an empty map is far below the frame limit");
        self.pending.push_back(Pending::Ping { id, sent: now });
        self.ping_outstanding = true;
        self.ping_due = Some(now + interval);
        Some(frame)
    }

    /// Matches an answer to the oldest frame in flight and completes it. An error means the
    /// connection cannot be trusted any more: the frame stays pending, to fail with the rest.
    fn answer(
        &mut self,
        task: &ChannelTask,
        header: &FrameHeader,
        body: &[u8],
    ) -> Result<(), LinkFault> {
        let Some(front) = self.pending.front() else {
            return Err(LinkFault::Unsolicited {
                correlation_id: header.correlation_id,
            });
        };
        if front.id() != header.correlation_id {
            return Err(LinkFault::OutOfOrder {
                expected: front.id(),
                found: header.correlation_id,
            });
        }
        match front {
            Pending::Ping { sent, .. } => {
                let sent = *sent;
                match decode_response_body::<PingResponse>(header, PeerKind::Ping, body) {
                    Ok(Ok(_)) => task.gauges.set_rtt(sent.elapsed()),
                    Ok(Err(failure)) => return Err(LinkFault::PingFailed { failure }),
                    Err(source) => return Err(LinkFault::Protocol { source }),
                }
                self.ping_outstanding = false;
                self.pending.pop_front();
            }
            Pending::Request { outgoing, .. } => {
                if header.request_kind() != outgoing.kind.code() {
                    return Err(LinkFault::Protocol {
                        source: vltava_messages::peer::PeerProtocolError::UnexpectedKind {
                            expected: outgoing.kind.name(),
                            kind: header.request_kind(),
                        },
                    });
                }
                let result = match PeerResponse::decode(header, body) {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(failure)) => Err(PeerError::Remote {
                        remote: task.remote,
                        failure,
                    }),
                    Err(source) => return Err(LinkFault::Protocol { source }),
                };
                let Some(Pending::Request { outgoing, .. }) = self.pending.pop_front() else {
                    unreachable!("the front was just seen to be a request");
                };
                self.requests -= 1;
                outgoing.finish(result);
            }
        }
        Ok(())
    }

    /// Whether a frame in flight is so late that the connection counts as dead. Answers come
    /// in order, so one overdue answer holds back all the later ones.
    fn overdue(&self, now: Instant, timings: &PeerTimings) -> Option<LinkFault> {
        self.pending.iter().find_map(|pending| match pending {
            Pending::Ping { sent, .. }
                if now.saturating_duration_since(*sent) > timings.ping_timeout =>
            {
                Some(LinkFault::PingTimedOut {
                    after: timings.ping_timeout,
                })
            }
            Pending::Request { outgoing, .. }
                if now > outgoing.deadline + timings.answer_overdue_grace =>
            {
                Some(LinkFault::AnswerOverdue {
                    grace: timings.answer_overdue_grace,
                })
            }
            _ => None,
        })
    }
}

/// Reads one whole frame: the checked header, then its body within `body_timeout`.
async fn read_frame(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    body_timeout: Duration,
) -> Result<(FrameHeader, Vec<u8>), LinkFault> {
    let header_bytes = read_header_bytes(reader).await.map_err(LinkFault::io)?;
    let (header, body_bytes) =
        read_header(&header_bytes).map_err(|e| LinkFault::Protocol { source: e.into() })?;
    let body = read_body(reader, body_bytes, body_timeout)
        .await
        .map_err(|e| match e {
            BodyError::TimedOut => LinkFault::BodyTimedOut {
                after: body_timeout,
            },
            BodyError::Io(e) => LinkFault::io(e),
        })?;
    Ok((header, body))
}

/// Reads answers until the connection fails, handing each to the connection's task.
async fn read_answers(
    mut reader: OwnedReadHalf,
    answers: mpsc::Sender<Result<(FrameHeader, Vec<u8>), LinkFault>>,
    body_timeout: Duration,
    gauges: Arc<PeerLinkGauges>,
    channel: PeerChannel,
) {
    loop {
        let frame = read_frame(&mut reader, body_timeout).await;
        let failed = frame.is_err();
        if let Ok((_, body)) = &frame {
            gauges.channel(channel).bytes_in.fetch_add(
                (vltava_messages::protocol::FRAME_HEADER_BYTES + body.len()) as u64,
                Ordering::Relaxed,
            );
        }
        if answers.send(frame).await.is_err() || failed {
            return;
        }
    }
}

/// Writes frames in order, each within `write_timeout`; returns why it stopped.
async fn write_frames(
    mut writer: OwnedWriteHalf,
    mut frames: mpsc::Receiver<Vec<u8>>,
    write_timeout: Duration,
    gauges: Arc<PeerLinkGauges>,
    channel: PeerChannel,
) -> LinkFault {
    while let Some(frame) = frames.recv().await {
        match tokio::time::timeout(write_timeout, writer.write_all(&frame)).await {
            Err(_) => {
                return LinkFault::WriteTimedOut {
                    after: write_timeout,
                };
            }
            Ok(Err(e)) => return LinkFault::io(e),
            Ok(Ok(())) => {
                gauges
                    .channel(channel)
                    .bytes_out
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
            }
        }
    }
    // The connection's task dropped its end: it is ending anyway.
    LinkFault::Stopped
}
