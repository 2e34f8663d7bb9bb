//! An in-process [`RaftTransport`] for tests: a router of `Raft` handles by node id, which
//! calls the target's handle directly. A node can be cut off (every request to or from it
//! fails as unreachable, as a network partition would) and healed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::network::{RaftTransport, RemoteResult, TransportError};
use super::{MetadataRaft, RaftNodeId, TypeConfig};

#[derive(Default)]
struct Routes {
    nodes: BTreeMap<RaftNodeId, MetadataRaft>,
    cut_off: BTreeSet<RaftNodeId>,
}

/// Routes requests between the Raft members of one process. Clones share the routes.
#[derive(Clone, Default)]
pub struct InProcessRouter {
    routes: Arc<Mutex<Routes>>,
}

impl fmt::Debug for InProcessRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes = self.lock();
        f.debug_struct("InProcessRouter")
            .field("nodes", &routes.nodes.keys().collect::<Vec<_>>())
            .field("cut_off", &routes.cut_off)
            .finish()
    }
}

impl InProcessRouter {
    #[must_use]
    pub fn new() -> InProcessRouter {
        InProcessRouter::default()
    }

    fn lock(&self) -> MutexGuard<'_, Routes> {
        // Held only to read or change the maps, never across an `.await`.
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The transport member `local` sends through.
    #[must_use]
    pub fn transport(&self, local: RaftNodeId) -> InProcessTransport {
        InProcessTransport {
            router: self.clone(),
            local,
        }
    }

    /// Makes `raft` reachable as `id` (replacing an earlier handle, as a restart does).
    pub fn register(&self, id: RaftNodeId, raft: MetadataRaft) {
        self.lock().nodes.insert(id, raft);
    }

    /// Makes `id` unreachable for good (it shut down), returning its handle.
    pub fn remove(&self, id: RaftNodeId) -> Option<MetadataRaft> {
        self.lock().nodes.remove(&id)
    }

    /// Cuts `id` off: requests to it and from it fail as unreachable until it is healed.
    pub fn cut_off(&self, id: RaftNodeId) {
        self.lock().cut_off.insert(id);
    }

    /// Reconnects a node that was cut off.
    pub fn heal(&self, id: RaftNodeId) {
        self.lock().cut_off.remove(&id);
    }

    /// The handle of `target`, if both ends are connected.
    fn route(&self, from: RaftNodeId, target: RaftNodeId) -> Result<MetadataRaft, TransportError> {
        let routes = self.lock();
        let unreachable = || TransportError::Unreachable {
            target,
            source: None,
        };
        if routes.cut_off.contains(&from) || routes.cut_off.contains(&target) {
            return Err(unreachable());
        }
        routes.nodes.get(&target).cloned().ok_or_else(unreachable)
    }
}

/// The transport of one member through an [`InProcessRouter`].
#[derive(Clone, Debug)]
pub struct InProcessTransport {
    router: InProcessRouter,
    local: RaftNodeId,
}

impl InProcessTransport {
    /// Runs `call` on the target's handle within `timeout`. An answer that comes back after
    /// either end was cut off meanwhile is lost, as it would be on a real network.
    async fn call<R, F>(
        &self,
        target: RaftNodeId,
        timeout: Duration,
        call: impl FnOnce(MetadataRaft) -> F,
    ) -> Result<R, TransportError>
    where
        F: Future<Output = R>,
    {
        let raft = self.router.route(self.local, target)?;
        let answer = tokio::time::timeout(timeout, call(raft))
            .await
            .map_err(|_| TransportError::Timeout { target, timeout })?;
        self.router.route(self.local, target)?;
        Ok(answer)
    }
}

impl RaftTransport for InProcessTransport {
    async fn append_entries(
        &self,
        target: RaftNodeId,
        request: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<RemoteResult<AppendEntriesResponse<RaftNodeId>>, TransportError> {
        self.call(target, timeout, |raft| async move {
            raft.append_entries(request).await
        })
        .await
    }

    async fn vote(
        &self,
        target: RaftNodeId,
        request: VoteRequest<RaftNodeId>,
        timeout: Duration,
    ) -> Result<RemoteResult<VoteResponse<RaftNodeId>>, TransportError> {
        self.call(
            target,
            timeout,
            |raft| async move { raft.vote(request).await },
        )
        .await
    }

    async fn install_snapshot(
        &self,
        target: RaftNodeId,
        request: InstallSnapshotRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<
        RemoteResult<InstallSnapshotResponse<RaftNodeId>, InstallSnapshotError>,
        TransportError,
    > {
        self.call(target, timeout, |raft| async move {
            raft.install_snapshot(request).await
        })
        .await
    }
}
