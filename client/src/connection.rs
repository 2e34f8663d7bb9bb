//! One connection to one node: the handshake, then pipelined requests answered in order.
//!
//! Requests are written under a lock that also queues their reply slot, so the order of the
//! slots is the order on the wire; a reader task matches each answer to the oldest slot and
//! checks its correlation id. At most `REQUESTS_IN_FLIGHT_MAX` requests wait at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, oneshot};
use vltava_messages::limits::FRAME_BYTES_MAX;
use vltava_messages::protocol::{
    EncodedRequest, FRAME_HEADER_BYTES, FrameAround, FrameHeader, HandshakeRequest,
    HandshakeResponse, ProduceRequest, ProduceResponse, RequestBody, Response, ResponseBody,
    read_header,
};

use crate::error::ClientError;

/// Requests one connection keeps waiting at once; the server admits 16 per connection by
/// default, and a few more queued on our side keep its pipeline full.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 32;
/// How long connecting (TCP and handshake) may take. A live node answers the handshake at
/// once; a paused one accepts the TCP connection in its kernel and never answers, so this
/// bounds what a paused node costs before the next one is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may wait for its answer beyond its own timeout (the time the node may
/// hold it, e.g. a produce's `timeout_ms` or a fetch's `max_wait_ms`): room for the answer's
/// way back from a busy node, not for a paused one (it was 30 s, which made a request to a
/// paused node wait about a minute).
pub const REQUEST_TIMEOUT_SLACK: Duration = Duration::from_secs(5);

type Slot = oneshot::Sender<Result<(FrameHeader, Vec<u8>), ClientError>>;

#[derive(Debug)]
struct Inner {
    addr: String,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<VecDeque<(u64, Slot)>>,
    next_correlation_id: AtomicU64,
    permits: Arc<Semaphore>,
    failure: Mutex<Option<String>>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A connection to one node. Cheap to clone; clones share it.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: Arc<Inner>,
    pub handshake: Arc<HandshakeResponse>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(reader) = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            reader.abort();
        }
    }
}

impl Connection {
    /// Connects and performs the handshake.
    pub async fn connect(addr: &str, client_id: &str) -> Result<Connection, ClientError> {
        let connect_error = |reason: String| ClientError::Connect {
            addr: addr.to_owned(),
            reason,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_error("timed out".into()))?
            .map_err(|e| connect_error(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let inner = Arc::new(Inner {
            addr: addr.to_owned(),
            writer: tokio::sync::Mutex::new(writer),
            pending: Mutex::new(VecDeque::new()),
            next_correlation_id: AtomicU64::new(1),
            permits: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
            failure: Mutex::new(None),
            reader: Mutex::new(None),
        });
        let task = tokio::spawn(read_loop(reader, Arc::downgrade(&inner)));
        *inner
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
        let hello = HandshakeRequest {
            client_id: client_id.to_owned(),
            client_software_name: "vltava-client".into(),
            client_software_version: env!("CARGO_PKG_VERSION").into(),
        };
        let mut connection = Connection {
            inner,
            handshake: Arc::new(placeholder_handshake()),
        };
        let handshake =
            tokio::time::timeout(CONNECT_TIMEOUT, connection.send(&hello, CONNECT_TIMEOUT))
                .await
                .map_err(|_| connect_error("handshake timed out".into()))??;
        connection.handshake = Arc::new(handshake);
        Ok(connection)
    }

    /// The address this connection was opened to.
    #[must_use]
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Whether the connection has failed (it is then useless; open a new one).
    #[must_use]
    pub fn is_broken(&self) -> bool {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// Writes one frame from its parts, in order (the first holds the frame header; the
    /// others may be empty), queueing `slot` for its answer under the same lock so slots keep
    /// the wire order.
    async fn write(&self, parts: [&[u8]; 3], slot: Option<Slot>) -> Result<(), ClientError> {
        if let Some(reason) = self
            .inner
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Err(ClientError::ConnectionLost(reason));
        }
        let mut writer = self.inner.writer.lock().await;
        if let Some(slot) = slot {
            let correlation_id =
                u64::from_be_bytes(parts[0][8..16].try_into().expect("a frame has a header"));
            self.inner
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push_back((correlation_id, slot));
        }
        // A caller that drops this future (a timeout, an aborted task) may do so inside a
        // frame; the bytes already written cannot be taken back, so the connection is failed
        // rather than left to carry the next frame after half of this one.
        let mut unfinished = UnfinishedWrite(Some(&self.inner));
        let written = write_all_vectored(&mut writer, parts).await;
        unfinished.0 = None;
        if let Err(e) = written {
            let reason = format!("write to {} failed: {e}", self.inner.addr);
            fail_all(&self.inner, &reason);
            return Err(ClientError::ConnectionLost(reason));
        }
        Ok(())
    }

    /// Sends a request and waits for its answer, at most `timeout` (plus slack).
    pub async fn send<R: RequestBody>(
        &self,
        request: &R,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        self.submit(request, timeout).await?.wait().await
    }

    /// Writes a request now and returns its answer to wait for later: requests submitted one
    /// after another reach the server in that order.
    pub async fn submit<R: RequestBody>(
        &self,
        request: &R,
        timeout: Duration,
    ) -> Result<Answer<R::Response>, ClientError> {
        let (permit, correlation_id) = self.reserve().await?;
        let frame = request.encode_frame(correlation_id)?;
        self.submit_frame(permit, [&frame, &[], &[]], timeout).await
    }

    /// [`Connection::submit`] for a Produce request, written without copying the first
    /// partition's records into the frame (`ProduceRequest::encode_frame_around_records`).
    pub async fn submit_produce(
        &self,
        request: &ProduceRequest,
        timeout: Duration,
    ) -> Result<Answer<ProduceResponse>, ClientError> {
        let (permit, correlation_id) = self.reserve().await?;
        let frame = request.encode_frame_around_records(correlation_id)?;
        self.submit_frame(permit, around_records(&frame, request), timeout)
            .await
    }

    /// A slot in the in-flight window and a fresh correlation id.
    async fn reserve(&self) -> Result<(tokio::sync::OwnedSemaphorePermit, u64), ClientError> {
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| ClientError::ConnectionLost("closed".into()))?;
        let correlation_id = self
            .inner
            .next_correlation_id
            .fetch_add(1, Ordering::Relaxed);
        Ok((permit, correlation_id))
    }

    /// Writes a frame from its parts and returns its answer to wait for.
    async fn submit_frame<T>(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        parts: [&[u8]; 3],
        timeout: Duration,
    ) -> Result<Answer<T>, ClientError> {
        let (slot, answer) = oneshot::channel();
        self.write(parts, Some(slot)).await?;
        Ok(Answer {
            answer,
            wait: timeout + REQUEST_TIMEOUT_SLACK,
            _permit: permit,
            kind: std::marker::PhantomData,
        })
    }

    /// [`Connection::submit`] for a body encoded once (`RequestBody::encode_body`): only a
    /// fresh frame header is made, and the body is written as it is.
    pub async fn submit_encoded<R: RequestBody>(
        &self,
        request: &EncodedRequest<R>,
        timeout: Duration,
    ) -> Result<Answer<R::Response>, ClientError> {
        let (permit, correlation_id) = self.reserve().await?;
        self.submit_frame(
            permit,
            [&request.header(correlation_id), request.body(), &[]],
            timeout,
        )
        .await
    }

    /// [`Connection::send_without_answer`] for a body encoded once.
    pub async fn send_encoded_without_answer(
        &self,
        request: &EncodedRequest<ProduceRequest>,
    ) -> Result<(), ClientError> {
        let correlation_id = self
            .inner
            .next_correlation_id
            .fetch_add(1, Ordering::Relaxed);
        self.write([&request.header(correlation_id), request.body(), &[]], None)
            .await
    }

    /// Sends a produce request with `acks = 0`: no answer comes.
    pub async fn send_without_answer(&self, request: &ProduceRequest) -> Result<(), ClientError> {
        let correlation_id = self
            .inner
            .next_correlation_id
            .fetch_add(1, Ordering::Relaxed);
        let frame = request.encode_frame_around_records(correlation_id)?;
        self.write(around_records(&frame, request), None).await
    }
}

/// The parts of a Produce frame made around its first records (see `submit_produce`).
fn around_records<'a>(frame: &'a FrameAround, request: &'a ProduceRequest) -> [&'a [u8]; 3] {
    let records = if frame.around_hole {
        request.first_records()
    } else {
        &[]
    };
    [&frame.head, records, &frame.tail]
}

/// Writes `parts` in order with as few system calls as the socket allows.
async fn write_all_vectored(writer: &mut OwnedWriteHalf, parts: [&[u8]; 3]) -> std::io::Result<()> {
    let mut parts = parts.map(std::io::IoSlice::new);
    let mut left = &mut parts[..];
    while !left.is_empty() && left.iter().any(|p| !p.is_empty()) {
        let n = writer.write_vectored(left).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut left, n);
    }
    Ok(())
}

/// An answer still to come.
#[derive(Debug)]
pub struct Answer<T> {
    answer: oneshot::Receiver<Result<(FrameHeader, Vec<u8>), ClientError>>,
    wait: Duration,
    _permit: tokio::sync::OwnedSemaphorePermit,
    kind: std::marker::PhantomData<fn() -> T>,
}

impl<T: ResponseBody> Answer<T> {
    /// Waits for the answer and decodes it; a failure answer becomes `ClientError::Server`.
    pub async fn wait(self) -> Result<T, ClientError> {
        let (header, body) = tokio::time::timeout(self.wait, self.answer)
            .await
            .map_err(|_| ClientError::Timeout(self.wait.as_millis() as u64))?
            .map_err(|_| ClientError::ConnectionLost("reader stopped".into()))??;
        match Response::decode(&header, &body)? {
            Response::Failed(failed) => Err(ClientError::Server(failed.error)),
            other => T::from_response(other).map_err(|r| {
                ClientError::Protocol(format!(
                    "answer of kind {} to a request of kind {}",
                    r.request_kind(),
                    T::KIND.code()
                ))
            }),
        }
    }
}

fn placeholder_handshake() -> HandshakeResponse {
    HandshakeResponse {
        node_id: vltava_messages::NodeId(0),
        cluster_id: String::new(),
        server_software_name: String::new(),
        server_software_version: String::new(),
        frame_bytes_max: FRAME_BYTES_MAX,
        kinds: Vec::new(),
    }
}

/// Fails the connection if dropped while still armed: see `Connection::write`.
struct UnfinishedWrite<'a>(Option<&'a Inner>);

impl Drop for UnfinishedWrite<'_> {
    fn drop(&mut self) {
        if let Some(inner) = self.0 {
            fail_all(
                inner,
                "a request was abandoned while its frame was being written",
            );
        }
    }
}

fn fail_all(inner: &Inner, reason: &str) {
    inner
        .failure
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(|| reason.to_owned());
    let slots: Vec<_> = inner
        .pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .drain(..)
        .collect();
    for (_, slot) in slots {
        let _ = slot.send(Err(ClientError::ConnectionLost(reason.to_owned())));
    }
}

async fn read_loop(mut reader: OwnedReadHalf, inner: std::sync::Weak<Inner>) {
    let reason = loop {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        if let Err(e) = reader.read_exact(&mut header).await {
            break format!("read failed: {e}");
        }
        let (header, body_bytes) = match read_header(&header) {
            Ok(checked) => checked,
            Err(e) => break format!("answer frame out of bounds: {e}"),
        };
        // Read into the spare capacity of a new vector: no zeroing pass over a large answer.
        let mut body = Vec::with_capacity(body_bytes);
        match (&mut reader)
            .take(body_bytes as u64)
            .read_to_end(&mut body)
            .await
        {
            Ok(n) if n == body_bytes => {}
            Ok(_) => break "read failed: the connection closed inside a frame".to_owned(),
            Err(e) => break format!("read failed: {e}"),
        }
        let Some(inner) = inner.upgrade() else { return };
        let slot = inner
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front();
        match slot {
            Some((expected, slot)) if expected == header.correlation_id => {
                let _ = slot.send(Ok((header, body)));
            }
            Some((expected, slot)) => {
                let reason = format!(
                    "answer {} arrived where {expected} was due",
                    header.correlation_id
                );
                let _ = slot.send(Err(ClientError::Protocol(reason.clone())));
                fail_all(&inner, &reason);
                return;
            }
            None => {
                fail_all(&inner, "an answer arrived that nobody asked for");
                return;
            }
        }
    };
    if let Some(inner) = inner.upgrade() {
        fail_all(&inner, &reason);
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpSocket;
    use vltava_messages::protocol::{
        Acks, FrameParse, ProducePartition, ProduceTopic, Request, RequestKind, parse_frame,
    };
    use vltava_messages::{NodeId, PartitionId};

    use super::*;

    /// A send dropped while its frame is half written (here by a timeout, against a peer that
    /// answered the handshake and then stopped reading) must not leave the connection to carry
    /// the next frame after half of this one: it is broken, and a pool replaces it.
    #[tokio::test]
    async fn a_send_dropped_inside_its_frame_breaks_the_connection() {
        let socket = TcpSocket::new_v4().unwrap();
        // A small receive buffer fixes the window: the frame below cannot all be in flight.
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        let listener = socket.listen(1).unwrap();
        let peer = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            let header = loop {
                if let Ok(FrameParse::Complete(frame)) = parse_frame(&buffer) {
                    let request = Request::decode(&frame.header, &buffer[frame.body.clone()]);
                    assert!(matches!(request, Ok(Request::Handshake(_))));
                    break frame.header;
                }
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the client closed before its handshake");
                buffer.extend_from_slice(&chunk[..n]);
            };
            let answer = Response::Handshake(HandshakeResponse {
                node_id: NodeId(1),
                cluster_id: "stalled".into(),
                server_software_name: "test".into(),
                server_software_version: "0".into(),
                frame_bytes_max: FRAME_BYTES_MAX,
                kinds: RequestKind::handshake_list(),
            });
            stream
                .write_all(&answer.encode(header.correlation_id).unwrap())
                .await
                .unwrap();
            // Read nothing more; hold the connection open until the test ends.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(stream);
        });
        let connection = Connection::connect(&addr, "test").await.unwrap();
        assert!(!connection.is_broken());
        let request = ProduceRequest {
            acks: Acks::Leader,
            timeout_ms: 1000,
            topics: vec![ProduceTopic {
                name: "t".into(),
                partitions: vec![ProducePartition {
                    partition: PartitionId(0),
                    current_leader_epoch: None,
                    // Larger than the largest send buffer (4 MiB) plus the peer's window.
                    records: vec![0; 7 << 20],
                }],
            }],
        };
        let sent = tokio::time::timeout(
            Duration::from_millis(300),
            connection.submit(&request, Duration::from_secs(1)),
        )
        .await;
        assert!(sent.is_err(), "the frame cannot have been written whole");
        assert!(
            connection.is_broken(),
            "a half-written frame breaks the connection"
        );
        let again = connection
            .send(&request, Duration::from_secs(1))
            .await
            .expect_err("a broken connection takes no more requests");
        assert!(matches!(again, ClientError::ConnectionLost(_)), "{again:?}");
        peer.abort();
    }
}
