//! Peer links: how one node talks to the others (PROTOCOL.md section 12).
//!
//! - `link`: the PeerLink of one remote node and its [`PeerLinkHandle`]. It owns two
//!   connections it dials itself, `control` (Raft, leases) and `data` (forwarded admin,
//!   partition offsets, replica fetch), each with its own queue, so an election never waits
//!   behind bulk data; it handshakes, pings the control connection, and reconnects with
//!   capped, jittered exponential back-off.
//! - `registry`: [`PeerLinks`], node id -> link, which the node reconciles when membership
//!   changes.
//! - `listener`: [`PeerListener`], the node's peer port: it accepts peer connections, requires
//!   the handshake, and hands requests to the node's [`PeerService`], answering in order.
//! - `state`: what a link publishes in the actor directory ([`PeerLinkGauges`]).
//! - `wire`: reading and writing frames on a socket, with their timeouts.
//!
//! The node supplies the identity ([`PeerIdentity`]), the address its outgoing sockets bind
//! to, the addresses of the other nodes, and the [`PeerService`] that answers their
//! requests; the Raft network calls [`PeerLinkHandle::call`] on the control channel with the
//! Raft kinds' opaque payloads.
//!
//! # Invariants
//! - Every queue is bounded: a link accepts at most `PEER_QUEUE_MAX` requests per channel
//!   (queued or awaiting their answer), past which `call` fails at once with a retriable
//!   `Overloaded`; it writes at most `PEER_INFLIGHT_REQUESTS_MAX` frames (a ping included) to a
//!   connection before their answers, which is what the listener admits per connection, so a
//!   write that stalls means the peer stopped reading, not that it is busy.
//! - Every network wait has a bound (`PeerTimings`): connect, handshake, each frame's write and
//!   body, each answer (its caller's timeout plus a grace), the control connection's ping.
//!   Past one, the connection is closed, everything it held fails with a retriable
//!   `Unreachable`, and the link reconnects after its back-off.
//! - A bad frame closes its connection only; nothing a peer sends can panic the node.

mod link;
mod listener;
mod registry;
mod state;
mod wire;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vltava_messages::NodeId;
use vltava_messages::peer::{PeerFailure, PeerProtocolError};

pub use link::{PeerLinkConfig, PeerLinkHandle};
pub use listener::{
    HANDSHAKE_BODY_BYTES_MAX, PEER_BYTES_IN_FLIGHT_MAX, PEER_CONNECTIONS_MAX, PEER_DRAIN_TIMEOUT,
    PeerListener, PeerListenerConfig,
};
pub use registry::{LINK_STOP_TIMEOUT, PeerLinks, Reconciled};
pub use state::{ChannelState, PeerLinkGauges, PeerLinkState};
pub use vltava_messages::peer::{PeerChannel, PeerRequest, PeerResponse};

/// Requests a link accepts per channel and has not answered yet, queued or in flight. Raft
/// keeps a few requests per target outstanding (an append stream, a vote, a snapshot chunk)
/// and replication one fetch per follower, so 64 is ample headroom; it bounds what a link to
/// a slow node holds at 64 frames per channel, where an unbounded queue would grow until the
/// node ran out of memory.
pub const PEER_QUEUE_MAX: usize = 64;

/// Requests in flight per peer connection: what the listener reads before it stops reading
/// until answers are written, and what a link writes before it waits for answers (its ping
/// included, so 15 requests and one ping). 16 is the client sessions' default: it keeps a
/// pipeline full without letting one connection hold more than 16 frames of the node.
pub const PEER_INFLIGHT_REQUESTS_MAX: usize = 16;

const _: () = assert!(PEER_INFLIGHT_REQUESTS_MAX >= 2, "one request and one ping");
const _: () = assert!(PEER_QUEUE_MAX >= PEER_INFLIGHT_REQUESTS_MAX);

/// The longest a caller may ask a request to wait for its answer; a longer timeout is cut to
/// it. Five minutes is the longest wait any client request may ask for (`TIMEOUT_MS_MAX`), and
/// it bounds how long an unanswered request holds a slot of its channel.
pub const REQUEST_TIMEOUT_MAX: Duration = Duration::from_secs(300);

/// How long a TCP connect may take. A live node on the same network accepts in well under a
/// millisecond; 3 s allows for a lost SYN (retransmitted after 1 s) and still retries a dead
/// address several times a minute.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the dialling node waits for the answer to its handshake. The listener answers at
/// once, without consulting anyone but `PeerService::admits`; 3 s is the connect bound again.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the listening node waits for a new connection's handshake. Longer than the
/// dialling node's own bounds, so a slow but honest dialler gives up first; short enough that
/// a silent connection holds one of `PEER_CONNECTIONS_MAX` only briefly.
pub const LISTENER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing one frame may take. An 8 MiB frame crosses a 100 Mbit/s link in under a
/// second; a write stuck for 10 s means the peer stopped reading (the link never writes more
/// than the listener admits, so a busy peer does not stall it).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a frame's body may take to arrive after its header: the writer's own bound.
pub const BODY_READ_TIMEOUT: Duration = WRITE_TIMEOUT;
/// How often the link pings its control connection. Once a second costs nothing and keeps the
/// published round-trip time fresh.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before the control connection counts as dead: three
/// intervals, so one slow answer behind a large Raft append is not taken for a dead peer.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// How far past its caller's timeout an answer may be before its connection counts as dead.
/// Answers come in order, so an overdue one holds back every later answer: after a second of
/// grace the connection is replaced rather than left to block its channel.
pub const ANSWER_OVERDUE_GRACE: Duration = Duration::from_secs(1);
/// How often a link checks for a due ping or an overdue answer: a tenth of the ping interval,
/// so a dead connection is noticed within `PING_TIMEOUT` plus 100 ms.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// The first wait before reconnecting; each failed attempt doubles it up to
/// `BACKOFF_MAX`. 100 ms reconnects at once, in human terms, to a node that restarted.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// The longest wait between attempts. A node that comes back is reached within 2 s (at once
/// if it dials in first: `PeerLinkHandle::reconnect_now`), and a node that stays down costs
/// each link one connection attempt per channel every 1 to 2 s.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The wait after a refused handshake: a refusal (another cluster, another node at the
/// address) needs an operator, so the link retries at its slowest pace.
pub const REFUSED_BACKOFF: Duration = BACKOFF_MAX;

const _: () = assert!(BACKOFF_INITIAL.as_nanos() <= BACKOFF_MAX.as_nanos());
const _: () = assert!(PING_INTERVAL.as_nanos() < PING_TIMEOUT.as_nanos());
const _: () = assert!(CHECK_INTERVAL.as_nanos() < PING_INTERVAL.as_nanos());
const _: () = assert!(HANDSHAKE_TIMEOUT.as_nanos() < LISTENER_HANDSHAKE_TIMEOUT.as_nanos());

/// The time bounds of links and listeners. Production uses [`PeerTimings::default`], the
/// constants above; tests shorten them so that a timeout is seen in a fraction of a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerTimings {
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub listener_handshake_timeout: Duration,
    pub write_timeout: Duration,
    pub body_read_timeout: Duration,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub answer_overdue_grace: Duration,
    pub check_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub refused_backoff: Duration,
}

impl Default for PeerTimings {
    fn default() -> PeerTimings {
        PeerTimings {
            connect_timeout: CONNECT_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            listener_handshake_timeout: LISTENER_HANDSHAKE_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            ping_interval: PING_INTERVAL,
            ping_timeout: PING_TIMEOUT,
            answer_overdue_grace: ANSWER_OVERDUE_GRACE,
            check_interval: CHECK_INTERVAL,
            backoff_initial: BACKOFF_INITIAL,
            backoff_max: BACKOFF_MAX,
            refused_backoff: REFUSED_BACKOFF,
        }
    }
}

/// Writes an adopted cluster id to the data directory (durably) before the node uses it.
pub type PersistClusterId = Arc<dyn Fn(&str) -> io::Result<()> + Send + Sync>;

/// This node's cluster id as its handshakes state it: known (from the data directory, or made
/// by the node that bootstraps the quorum), or not yet, for a node whose data directory is new
/// and that waits to learn the id from the first peer that has one. It is learnt once: the
/// first id a peer presents is written to the data directory and kept for good, and any other
/// is refused as a mismatch from then on.
#[derive(Clone)]
pub struct ClusterId {
    value: watch::Sender<Option<String>>,
    /// Held while an id is being adopted, so two handshakes never adopt two ids.
    adopting: Arc<tokio::sync::Mutex<()>>,
    persist: Option<PersistClusterId>,
}

impl std::fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterId({:?})", self.get())
    }
}

impl PartialEq for ClusterId {
    fn eq(&self, other: &ClusterId) -> bool {
        self.get() == other.get()
    }
}

impl Eq for ClusterId {}

impl From<String> for ClusterId {
    fn from(id: String) -> ClusterId {
        ClusterId::known(id)
    }
}

impl From<&str> for ClusterId {
    fn from(id: &str) -> ClusterId {
        ClusterId::known(id.to_owned())
    }
}

impl ClusterId {
    /// An id the node already has.
    #[must_use]
    pub fn known(id: String) -> ClusterId {
        ClusterId {
            value: watch::Sender::new(Some(id)),
            adopting: Arc::default(),
            persist: None,
        }
    }

    /// An id still to be learnt from a peer; `persist` records it before it is used.
    #[must_use]
    pub fn pending(persist: PersistClusterId) -> ClusterId {
        ClusterId {
            value: watch::Sender::new(None),
            adopting: Arc::default(),
            persist: Some(persist),
        }
    }

    /// The id, if known.
    #[must_use]
    pub fn get(&self) -> Option<String> {
        self.value.borrow().clone()
    }

    /// The id as a handshake states it: empty while not known.
    #[must_use]
    pub fn stated(&self) -> String {
        self.get().unwrap_or_default()
    }

    /// Waits until the id is known.
    pub async fn known_id(&self) -> String {
        let mut watch = self.value.subscribe();
        match watch.wait_for(Option::is_some).await {
            Ok(id) => id.clone().unwrap_or_default(),
            // The sender lives in `self`, so the channel cannot close while this waits.
            Err(_) => String::new(),
        }
    }

    /// Learns `remote` (a peer's id) if no id is known yet: writes it to the data directory,
    /// then keeps it. An empty `remote` (a peer that does not know either) changes nothing.
    ///
    /// # Errors
    /// Writing the id failed; the node then still knows none.
    pub async fn adopt(&self, remote: &str) -> io::Result<()> {
        if remote.is_empty() || self.get().is_some() {
            return Ok(());
        }
        let _adopting = self.adopting.lock().await;
        if self.get().is_some() {
            return Ok(());
        }
        if let Some(persist) = &self.persist {
            let persist = Arc::clone(persist);
            let id = remote.to_owned();
            tokio::task::spawn_blocking(move || persist(&id))
                .await
                .map_err(io::Error::other)??;
        }
        tracing::info!(cluster_id = remote, "learnt the cluster id from a peer");
        self.value.send_replace(Some(remote.to_owned()));
        Ok(())
    }
}

/// Who this node is, as its peer handshakes state it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The cluster id; a peer with another one is refused.
    pub cluster_id: ClusterId,
    /// This node's id.
    pub node_id: NodeId,
}

impl PeerIdentity {
    /// The prefix of this node's directory ids, as the node supervisor spells it.
    #[must_use]
    pub fn label(&self) -> String {
        format!("n{}", self.node_id.0)
    }
}

/// What the node provides to answer its peers' requests. The listener calls `handle` on a task
/// of its own for every service request, at most `PEER_INFLIGHT_REQUESTS_MAX` at once per
/// connection, and writes the answers in request order.
pub trait PeerService: Send + Sync + 'static {
    /// Whether to accept connections from `node` (a member of the cluster, say). A node not
    /// admitted is refused with `NodeNotAdmitted` at its handshake. Every node is by default.
    fn admits(&self, node: NodeId) -> bool {
        let _ = node;
        true
    }

    /// Node `from` has just opened its `channel` connection to this node (its handshake was
    /// accepted). It is up, so a link to it that is waiting out a back-off may dial now. Must
    /// return at once; nothing by default.
    fn connected(&self, from: NodeId, channel: PeerChannel) {
        let _ = (from, channel);
    }

    /// Answers one request from node `from`, received on `channel`. The answer must be of the
    /// request's kind (anything else is answered `ServiceFailed`); a failure travels to the
    /// caller as `PeerError::Remote`. A handler that never returns holds its connection's
    /// later answers back until the dialling node gives up on the connection, which then
    /// aborts it.
    fn handle(
        &self,
        from: NodeId,
        channel: PeerChannel,
        request: PeerRequest,
    ) -> impl Future<Output = Result<PeerResponse, PeerFailure>> + Send;
}

/// Why a call on a peer link failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The channel already holds `PEER_QUEUE_MAX` requests. Retriable after a back-off.
    #[error("the link to node {} holds {max} requests on its {channel} connection already", remote.0)]
    Overloaded {
        remote: NodeId,
        channel: PeerChannel,
        max: usize,
    },
    /// The channel's connection is down (or went down with the request on it). The request
    /// may or may not have been handled. Retriable after a back-off.
    #[error("node {} at {address} is unreachable on its {channel} connection: {fault}", remote.0)]
    Unreachable {
        remote: NodeId,
        address: SocketAddr,
        channel: PeerChannel,
        fault: LinkFault,
    },
    /// No answer within the call's timeout. The request may or may not have been handled.
    #[error("node {} did not answer within {timeout:?}", remote.0)]
    Timeout { remote: NodeId, timeout: Duration },
    /// The handshake was refused, by either side: the nodes disagree about who is who. Not
    /// retriable until an operator fixes the configuration.
    #[error("the link to node {} at {address} is refused: {refusal}", remote.0)]
    Refused {
        remote: NodeId,
        address: SocketAddr,
        refusal: Refusal,
    },
    /// The remote node answered with a failure; `failure.retriable` says whether to retry.
    #[error("node {} answered: {failure}", remote.0)]
    Remote {
        remote: NodeId,
        failure: PeerFailure,
    },
    /// The request cannot be encoded (it would exceed the frame limit). Not retriable.
    #[error("the request to node {} cannot be sent: {source}", remote.0)]
    Invalid {
        remote: NodeId,
        source: PeerProtocolError,
    },
    /// The registry holds no link to this node (not a member, or not yet). Retriable: the
    /// membership may add it.
    #[error("no link to node {}", remote.0)]
    UnknownNode { remote: NodeId },
}

impl PeerError {
    /// Whether the same call may succeed if made again after a back-off.
    #[must_use]
    pub fn is_retriable(&self) -> bool {
        match self {
            PeerError::Overloaded { .. }
            | PeerError::Unreachable { .. }
            | PeerError::Timeout { .. }
            | PeerError::UnknownNode { .. } => true,
            PeerError::Refused { .. } | PeerError::Invalid { .. } => false,
            PeerError::Remote { failure, .. } => failure.retriable,
        }
    }
}

/// A handshake refusal: the two nodes disagree about who is who. Each variant names both
/// sides' ids, so one log line says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The nodes belong to different clusters.
    #[error("cluster id mismatch: this node is in cluster {local:?}, node {} is in cluster {remote:?}", remote_node.0)]
    ClusterIdMismatch {
        local: String,
        remote: String,
        remote_node: NodeId,
    },
    /// The address belongs to another node than the one dialled.
    #[error("node id mismatch: dialled node {} but node {} answered", expected.0, found.0)]
    NodeIdMismatch { expected: NodeId, found: NodeId },
    /// The remote node does not accept connections from this one (not a member it knows).
    #[error("node {} does not admit node {}", by.0, node.0)]
    NotAdmitted { node: NodeId, by: NodeId },
    /// The remote node has this node's id: two nodes share an id, or the node dialled itself.
    #[error("node {} answered with this node's own id", node.0)]
    DuplicateNodeId { node: NodeId },
}

/// Why a connection is down: the last thing that went wrong on it.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkFault {
    /// The TCP connect (or the socket's bind to the node's address) failed.
    #[error("connect failed: {source}")]
    Connect { source: Arc<io::Error> },
    #[error("connect took longer than {after:?}")]
    ConnectTimedOut { after: Duration },
    #[error("no handshake answer within {after:?}")]
    HandshakeTimedOut { after: Duration },
    /// The peer answered the handshake with a failure that is not a refusal (a version it
    /// does not speak, a body it could not decode).
    #[error("the handshake failed: {failure}")]
    HandshakeFailed { failure: PeerFailure },
    #[error("the peer closed the connection")]
    Closed,
    #[error("i/o error: {source}")]
    Io { source: Arc<io::Error> },
    /// A frame could not be written in time: the peer stopped reading.
    #[error("writing a frame took longer than {after:?}: the peer stopped reading")]
    WriteTimedOut { after: Duration },
    #[error("a frame's body took longer than {after:?} to arrive")]
    BodyTimedOut { after: Duration },
    /// The control connection's ping went unanswered.
    #[error("no answer to a ping within {after:?}")]
    PingTimedOut { after: Duration },
    /// The peer answered a ping with a failure: it does not speak this link's protocol.
    #[error("the peer failed a ping: {failure}")]
    PingFailed { failure: PeerFailure },
    /// An answer is later than its caller's timeout plus the grace, holding back every later
    /// answer of the connection.
    #[error("an answer is overdue by more than {grace:?} past its request's timeout")]
    AnswerOverdue { grace: Duration },
    /// The peer sent bytes that are not the protocol.
    #[error("the peer broke the protocol: {source}")]
    Protocol { source: PeerProtocolError },
    /// The peer answered out of order (answers come in request order).
    #[error("answer out of order: expected correlation id {expected}, got {found}")]
    OutOfOrder { expected: u64, found: u64 },
    /// The peer answered a request that was never sent.
    #[error("an answer with correlation id {correlation_id} and no request outstanding")]
    Unsolicited { correlation_id: u64 },
    /// The link was stopped (removed from the registry, or the node is shutting down).
    #[error("the link is stopped")]
    Stopped,
}

impl LinkFault {
    fn io(error: io::Error) -> LinkFault {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            LinkFault::Closed
        } else {
            LinkFault::Io {
                source: Arc::new(error),
            }
        }
    }
}
