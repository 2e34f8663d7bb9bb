//! Peer links and the peer listener, in process: real TCP on loopback with ports the system
//! chooses, a tokio runtime, timings shortened (`fast`) so that every timeout is seen in a
//! fraction of a second. Waits are deadline-bounded polls (`eventually`), never fixed sleeps,
//! and every test runs under `TEST_TIMEOUT`.

mod link;
mod listener;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use vltava_messages::NodeId;
use vltava_messages::peer::{
    PeerErrorCode, PeerFailure, PeerHandshakeRequest, PeerHandshakeResponse, PeerKind, RaftPayload,
    decode_request_body, decode_response_body, encode_request_body, encode_response_body,
};
use vltava_messages::protocol::{FRAME_HEADER_BYTES, FrameHeader, read_header};

use super::*;
use crate::directory::ActorDirectory;

/// The most any one test may take; each finishes in a few seconds at most.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test waits for a condition before it fails.
const WAIT: Duration = Duration::from_secs(10);
/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(10);
/// The cluster of the test nodes.
const CLUSTER: &str = "test-cluster";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Bounds short enough to be seen within a test, in the production ratios.
fn fast() -> PeerTimings {
    PeerTimings {
        connect_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(500),
        listener_handshake_timeout: Duration::from_millis(800),
        write_timeout: Duration::from_millis(500),
        body_read_timeout: Duration::from_millis(500),
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(400),
        answer_overdue_grace: Duration::from_millis(200),
        check_interval: Duration::from_millis(20),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        refused_backoff: Duration::from_millis(300),
    }
}

/// Runs a test body under `TEST_TIMEOUT`.
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test finished within its bound");
}

/// Polls `probe` until it gives a value, failing the test after `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A PeerService for tests: answers a Raft kind with the same kind, naming who answered whom
/// on which channel. Payload `slow` waits for a permit of `gate` (none until the test adds
/// them); `fail` fails with `Unavailable`; `wrong-kind` answers with another kind; `panic`
/// panics.
#[derive(Debug)]
struct TestService {
    node: NodeId,
    gate: Semaphore,
    /// Requests that reached the handler.
    received: AtomicU64,
    /// Requests waiting at the gate.
    waiting: AtomicU64,
    refused_nodes: Vec<NodeId>,
    /// The handshakes `connected` was told of, in order.
    connected: std::sync::Mutex<Vec<(NodeId, PeerChannel)>>,
}

impl TestService {
    fn new(node: NodeId) -> Arc<TestService> {
        Arc::new(TestService {
            node,
            gate: Semaphore::new(0),
            received: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            refused_nodes: Vec::new(),
            connected: std::sync::Mutex::default(),
        })
    }
}

impl PeerService for TestService {
    fn admits(&self, node: NodeId) -> bool {
        !self.refused_nodes.contains(&node)
    }

    fn connected(&self, from: NodeId, channel: PeerChannel) {
        self.connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((from, channel));
    }

    async fn handle(
        &self,
        from: NodeId,
        channel: PeerChannel,
        request: PeerRequest,
    ) -> Result<PeerResponse, PeerFailure> {
        self.received.fetch_add(1, Ordering::Relaxed);
        let (PeerRequest::RaftVote(body)
        | PeerRequest::RaftAppendEntries(body)
        | PeerRequest::RaftInstallSnapshot(body)) = &request
        else {
            return Err(PeerFailure::new(
                PeerErrorCode::ServiceFailed,
                "the test service answers Raft kinds only",
            ));
        };
        match body.payload.as_slice() {
            b"slow" => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                self.gate
                    .acquire()
                    .await
                    .expect("the gate stays open")
                    .forget();
                self.waiting.fetch_sub(1, Ordering::Relaxed);
            }
            b"fail" => {
                return Err(PeerFailure::new(
                    PeerErrorCode::Unavailable,
                    "not ready yet",
                ));
            }
            b"wrong-kind" => return Ok(PeerResponse::RaftVote(RaftPayload::default())),
            b"panic" => panic!("a handler bug, on purpose"),
            _ => {}
        }
        let payload = format!(
            "{} answers {} on {channel}: {}",
            self.node.0,
            from.0,
            String::from_utf8_lossy(&body.payload)
        )
        .into_bytes();
        let answer = RaftPayload { payload };
        Ok(match request {
            PeerRequest::RaftVote(_) => PeerResponse::RaftVote(answer),
            PeerRequest::RaftAppendEntries(_) => PeerResponse::RaftAppendEntries(answer),
            PeerRequest::RaftInstallSnapshot(_) => PeerResponse::RaftInstallSnapshot(answer),
            PeerRequest::ControllerForward(_)
            | PeerRequest::LeaseRenew(_)
            | PeerRequest::PartitionOffsets(_)
            | PeerRequest::ReplicaFetch(_)
            | PeerRequest::OffsetForLeaderEpoch(_) => {
                unreachable!("refused above")
            }
        })
    }
}

/// One test node: a listener on loopback, its service, and its links.
struct Node {
    id: NodeId,
    directory: ActorDirectory,
    listener: Option<PeerListener>,
    address: SocketAddr,
    service: Arc<TestService>,
    links: PeerLinks,
}

impl Node {
    async fn start(id: u32, cluster: &str) -> Node {
        Node::start_with(id, cluster, TestService::new(NodeId(id)), LOCALHOST).await
    }

    async fn start_with(
        id: u32,
        cluster: &str,
        service: Arc<TestService>,
        bind_ip: IpAddr,
    ) -> Node {
        let identity = PeerIdentity {
            cluster_id: cluster.into(),
            node_id: NodeId(id),
        };
        let directory = ActorDirectory::new();
        let parent = identity.label();
        let listener = PeerListener::bind(
            SocketAddr::new(bind_ip, 0),
            PeerListenerConfig {
                identity: identity.clone(),
                timings: fast(),
                connections_max: PEER_CONNECTIONS_MAX,
            },
            Arc::clone(&service),
            &directory,
            &parent,
        )
        .await
        .expect("bind a loopback port");
        let address = listener.local_addr();
        let links = PeerLinks::new(
            PeerLinkConfig {
                identity,
                bind_ip,
                timings: fast(),
            },
            directory.clone(),
            &parent,
        );
        Node {
            id: NodeId(id),
            directory,
            listener: Some(listener),
            address,
            service,
            links,
        }
    }

    /// Links this node to `others`.
    async fn link_to(&self, others: &[&Node]) {
        let members: BTreeMap<NodeId, SocketAddr> =
            others.iter().map(|n| (n.id, n.address)).collect();
        self.links.reconcile(&members).await;
    }

    fn link(&self, to: NodeId) -> PeerLinkHandle {
        self.links.get(to).expect("a link to that node")
    }

    async fn stop_listener(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.stop().await;
        }
    }

    /// Serves the same address again after `stop_listener`.
    async fn restart_listener(&mut self) {
        let identity = PeerIdentity {
            cluster_id: CLUSTER.into(),
            node_id: self.id,
        };
        let listener = PeerListener::bind(
            self.address,
            PeerListenerConfig {
                identity: identity.clone(),
                timings: fast(),
                connections_max: PEER_CONNECTIONS_MAX,
            },
            Arc::clone(&self.service),
            &self.directory,
            &identity.label(),
        )
        .await
        .expect("bind the same port again");
        self.listener = Some(listener);
    }

    async fn shutdown(mut self) {
        self.links.shutdown().await;
        self.stop_listener().await;
    }
}

fn vote(payload: &str) -> PeerRequest {
    PeerRequest::RaftVote(RaftPayload {
        payload: payload.as_bytes().to_vec(),
    })
}

fn answer_text(response: &PeerResponse) -> String {
    match response {
        PeerResponse::RaftVote(body)
        | PeerResponse::RaftAppendEntries(body)
        | PeerResponse::RaftInstallSnapshot(body) => {
            String::from_utf8_lossy(&body.payload).into_owned()
        }
        PeerResponse::ControllerForward(answer) => format!("{answer:?}"),
        PeerResponse::LeaseRenew(answer) => format!("{answer:?}"),
        PeerResponse::PartitionOffsets(answer) => format!("{answer:?}"),
        PeerResponse::ReplicaFetch(answer) => format!("{answer:?}"),
        PeerResponse::OffsetForLeaderEpoch(answer) => format!("{answer:?}"),
    }
}

/// Calls until a call succeeds (the link connects), failing the test after `WAIT`.
async fn call_until_ok(link: &PeerLinkHandle, channel: PeerChannel, payload: &str) -> String {
    eventually("a successful call", || async {
        match link
            .call(channel, vote(payload), Duration::from_secs(2))
            .await
        {
            Ok(response) => Some(answer_text(&response)),
            Err(e) => {
                assert!(
                    e.is_retriable(),
                    "only retriable errors while connecting: {e}"
                );
                None
            }
        }
    })
    .await
}

// ---- raw peers: a socket speaking (or not speaking) the protocol by hand ----

/// Reads one frame, failing the test on anything but a whole, valid frame.
async fn read_frame_raw(stream: &mut TcpStream) -> (FrameHeader, Vec<u8>) {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .await
        .expect("a frame header");
    let (header, body_bytes) = read_header(&header).expect("a valid header");
    let mut body = vec![0; body_bytes];
    stream
        .read_exact(&mut body)
        .await
        .expect("the frame's body");
    (header, body)
}

/// Reads until the peer closes (EOF or reset), within `WAIT`; returns the bytes that came.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the listener closed the connection");
    received
}

/// The failure answer `bytes` start with, and its header. A failure body has the same shape
/// for every kind, so it is decoded as a handshake's whatever kind the header names.
fn failure_in(bytes: &[u8]) -> (FrameHeader, PeerFailure) {
    let header = bytes
        .first_chunk::<FRAME_HEADER_BYTES>()
        .expect("an answer before the close");
    let (header, body_bytes) = read_header(header).expect("a valid answer header");
    assert!(header.is_response(), "an answer");
    let body = &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_bytes];
    let as_handshake = FrameHeader {
        kind: PeerKind::PeerHandshake.code() | 0x8000,
        version: 1,
        ..header
    };
    let failure =
        decode_response_body::<PeerHandshakeResponse>(&as_handshake, PeerKind::PeerHandshake, body)
            .expect("a decodable answer")
            .expect_err("a failure");
    (header, failure)
}

fn handshake(cluster: &str, from: u32, target: u32, channel: PeerChannel) -> Vec<u8> {
    encode_request_body(
        PeerKind::PeerHandshake,
        0,
        &PeerHandshakeRequest {
            cluster_id: cluster.into(),
            node_id: NodeId(from),
            target_node_id: NodeId(target),
            channel,
            software_version: "test".into(),
            kinds: PeerKind::handshake_list(),
        },
    )
    .expect("a small handshake")
}

/// Connects to `address` and handshakes by hand; the answer.
async fn raw_handshake(
    address: SocketAddr,
    cluster: &str,
    from: u32,
    target: u32,
    channel: PeerChannel,
) -> (TcpStream, Result<PeerHandshakeResponse, PeerFailure>) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(&handshake(cluster, from, target, channel))
        .await
        .expect("write the handshake");
    let (header, body) = read_frame_raw(&mut stream).await;
    let answer =
        decode_response_body(&header, PeerKind::PeerHandshake, &body).expect("a handshake answer");
    (stream, answer)
}

/// What a fake peer does after answering the handshake.
#[derive(Clone, Copy, Debug)]
enum FakeAfter {
    /// Never reads again (the socket stays open).
    NeverRead,
    /// Reads everything and never answers.
    NeverAnswer,
    /// Answers the first request with 16 bytes of garbage.
    Garbage,
    /// Answers the first request under a correlation id it never sent.
    WrongCorrelationId,
}

/// A fake peer node: it answers every handshake with `identity` (without checking anything),
/// then behaves as `after`. Returns its address and the count of connections it accepted.
async fn fake_peer(
    cluster: &str,
    node: u32,
    after: FakeAfter,
) -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let address = listener.local_addr().expect("an address");
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&accepted);
    let cluster = cluster.to_owned();
    let task = tokio::spawn(async move {
        // Connections are kept open (never read) until the test ends.
        let mut held = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let (header, body) = read_frame_raw(&mut stream).await;
            let _: PeerHandshakeRequest =
                decode_request_body(&header, PeerKind::PeerHandshake, &body)
                    .expect("a handshake first");
            let answer = PeerHandshakeResponse {
                cluster_id: cluster.clone(),
                node_id: NodeId(node),
                software_version: "fake".into(),
                kinds: PeerKind::handshake_list(),
            };
            let frame =
                encode_response_body(PeerKind::PeerHandshake, header.correlation_id, &answer)
                    .expect("a small answer");
            stream
                .write_all(&frame)
                .await
                .expect("answer the handshake");
            match after {
                FakeAfter::NeverRead => held.push(stream),
                FakeAfter::NeverAnswer => {
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
                    });
                }
                FakeAfter::Garbage | FakeAfter::WrongCorrelationId => {
                    tokio::spawn(async move {
                        let (request, _) = read_frame_raw(&mut stream).await;
                        let answer = match after {
                            FakeAfter::Garbage => vec![0xff; FRAME_HEADER_BYTES],
                            _ => PeerResponse::RaftVote(RaftPayload::default())
                                .encode(request.correlation_id + 1000)
                                .expect("a small answer"),
                        };
                        // The link may have closed first.
                        let _ = stream.write_all(&answer).await;
                        let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
                    });
                }
            }
        }
    });
    (address, accepted, task)
}

/// A link from node 1 of `CLUSTER` to `remote` at `address`, outside any registry.
fn lone_link(remote: u32, address: SocketAddr, directory: &ActorDirectory) -> PeerLinkHandle {
    PeerLinkHandle::spawn(
        NodeId(remote),
        address,
        Arc::new(PeerLinkConfig {
            identity: PeerIdentity {
                cluster_id: CLUSTER.into(),
                node_id: NodeId(1),
            },
            bind_ip: LOCALHOST,
            timings: fast(),
        }),
        directory,
        "n1",
    )
}
