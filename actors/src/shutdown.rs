//! The node's shutdown signal, as every loop that serves a socket waits on it: a watch
//! channel whose value turns true once, shared by the client listener, its sessions and the
//! peer links and listener.

use tokio::sync::watch;

/// Resolves once the shutdown signal is true (or its sender is gone).
pub async fn stopped(signal: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, so callers' futures stay `Send`.
    let _ = signal.wait_for(|stop| *stop).await;
}
