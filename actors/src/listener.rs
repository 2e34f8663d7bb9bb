//! The Listener: accepts client connections and runs a ClientSession for each, up to
//! `connections_max` at once. A connection past the bound is closed at once with a log line
//! (its client sees the connection end and retries with back-off).
//!
//! Shutdown: on the node's signal it stops accepting, lets every session write the answers it
//! admitted, and waits for them (at most `SESSION_DRAIN_TIMEOUT`).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::client_session::{NodeServices, run_session};
use crate::directory::ActorKind;

/// How long shutdown waits for sessions to finish the requests they admitted.
pub const SESSION_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off after a failed accept (out of file descriptors, say), so the loop never spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    let session_shutdown = shutdown.clone();
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    stats.handled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                        tracing::warn!(%peer, connections_max, "connection refused: at the connection limit");
                        drop(stream);
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
        }
    }
    drop(listener);
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

/// Resolves once the shutdown signal is true (or its sender is gone).
pub(crate) async fn stopped(signal: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, so callers' futures stay `Send`.
    let _ = signal.wait_for(|stop| *stop).await;
}
