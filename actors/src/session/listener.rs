//! The Listener: accepts client connections and runs a ClientSession for each, up to
//! `connections_max` at once. A connection past the bound is refused with a log line: a
//! small task reads its first frame (its handshake) within `REFUSAL_TIMEOUT`, answers
//! `TooManyConnections` with that frame's correlation id and closes it, so its client learns
//! why and retries with back-off. At most `REFUSALS_MAX` refusals are answered at once;
//! connections past that are closed without an answer.
//!
//! Shutdown: on the node's signal it stops accepting, lets every session write the answers it
//! admitted, and waits for them (at most `SESSION_DRAIN_TIMEOUT`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use vltava_messages::limits::{CLIENT_ID_BYTES_MAX, SOFTWARE_FIELD_BYTES_MAX};
use vltava_messages::protocol::{
    ErrorCode, FRAME_HEADER_BYTES, FrameHeader, LENGTH_COUNTED_HEADER_BYTES, Response,
    ResponseError,
};

use crate::directory::ActorKind;
use crate::log_limit::{Verdict, WarnKind};
use crate::session::{NodeServices, run_session};
use crate::shutdown::stopped;

/// How long shutdown waits for sessions to finish the requests they admitted.
pub const SESSION_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off after a failed accept (out of file descriptors, say), so the loop never spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long refusing a connection past the limit may take: reading its first frame and
/// writing the answer. A client sends its handshake as soon as it has connected, so 2 s is
/// ample on any link fit to serve it, and it keeps a silent client from holding one of the
/// `REFUSALS_MAX` refusal slots for long.
pub const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How many connections past the limit are being answered at once; further ones are closed
/// without an answer. Each refusal holds a task and a socket for up to `REFUSAL_TIMEOUT`, and
/// a flood of connections past the limit must not grow them without bound; 64 answers a burst
/// of clients reconnecting together.
pub const REFUSALS_MAX: usize = 64;
/// The largest body of a refused connection's first frame that is read (and dropped) before
/// the answer. Reading it lets the close be an orderly FIN: closing a socket with unread bytes
/// makes the kernel send a reset, which can destroy the answer before the client reads it. A
/// handshake's three strings at their limits and its keys and markers fit; a larger frame is
/// answered without its body being read.
const REFUSED_BODY_BYTES_MAX: u32 = 1024;
// The keys, markers and length prefixes of a handshake body take under 128 bytes.
const _: () =
    assert!(CLIENT_ID_BYTES_MAX + 2 * SOFTWARE_FIELD_BYTES_MAX + 128 <= REFUSED_BODY_BYTES_MAX);

/// Accepts connections until `shutdown` turns true, then drains the sessions.
pub async fn run_listener(
    listener: TcpListener,
    services: Arc<NodeServices>,
    connections_max: usize,
    mut shutdown: watch::Receiver<bool>,
    parent: String,
) {
    let id = format!("{}/listener", services.node);
    let stats = services
        .directory
        .register(&id, ActorKind::Listener, Some(&parent));
    let connections = Arc::new(Semaphore::new(connections_max));
    let mut sessions = JoinSet::new();
    // Refusals of connections past the limit, at most `REFUSALS_MAX`.
    let mut refusals = JoinSet::new();
    let session_shutdown = shutdown.clone();
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    stats.handled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                        // A client that reconnects in a loop at the limit would otherwise
                        // write a line per attempt: the node's budget for the kind holds it.
                        if let Verdict::Log { suppressed } = services
                            .warnings
                            .check(WarnKind::ConnectionRefused, std::time::Instant::now())
                        {
                            tracing::warn!(%peer, connections_max, suppressed, "connection refused: at the connection limit");
                        }
                        // Finished refusals are reaped below, so the set holds live ones only
                        // (and at worst a few just finished, which errs on the side of fewer).
                        if refusals.len() < REFUSALS_MAX {
                            refusals.spawn(refuse(stream, peer, connections_max));
                        } else {
                            tracing::debug!(%peer, "too many refusals at once; closing without an answer");
                            drop(stream);
                        }
                        continue;
                    };
                    let services = Arc::clone(&services);
                    let shutdown = session_shutdown.clone();
                    let listener_id = id.clone();
                    sessions.spawn(async move {
                        run_session(stream, peer, services, shutdown, listener_id).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished sessions so the set does not grow with closed connections.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            Some(_) = refusals.join_next(), if !refusals.is_empty() => {}
        }
    }
    drop(listener);
    // A refusal has nothing worth finishing at shutdown: its client is told nothing either way.
    refusals.abort_all();
    let drained = tokio::time::timeout(SESSION_DRAIN_TIMEOUT, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = sessions.len(),
            "sessions did not finish in time; closing them"
        );
        sessions.abort_all();
    }
    services.directory.unregister(&id);
}

/// Answers a connection past the limit: reads its first frame within `REFUSAL_TIMEOUT`,
/// answers `TooManyConnections` with that frame's correlation id (whatever its kind: a client
/// sends its handshake first), and closes. A client that sends nothing in time, or a header
/// too short to be a frame, is closed without an answer.
async fn refuse(mut stream: TcpStream, peer: SocketAddr, connections_max: usize) {
    let refused = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        let mut header_bytes = [0u8; FRAME_HEADER_BYTES];
        stream.read_exact(&mut header_bytes).await?;
        let header = FrameHeader::parse(&header_bytes);
        if header.length < LENGTH_COUNTED_HEADER_BYTES {
            return Err(std::io::Error::other("frame shorter than its header"));
        }
        let body_bytes = header.length - LENGTH_COUNTED_HEADER_BYTES;
        if body_bytes <= REFUSED_BODY_BYTES_MAX {
            let mut body = (&mut stream).take(u64::from(body_bytes));
            tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
        }
        let answer = Response::failed(
            &header,
            ResponseError::new(
                ErrorCode::TooManyConnections,
                format!("the node is at its limit of {connections_max} connections"),
            ),
        )
        .encode(header.correlation_id)
        .map_err(std::io::Error::other)?;
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
    match refused {
        Ok(Ok(())) => tracing::debug!(%peer, "answered TooManyConnections"),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "refused connection closed without an answer");
        }
        Err(_) => tracing::debug!(%peer, "refused connection sent no frame in time; closed"),
    }
}
