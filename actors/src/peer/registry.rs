//! [`PeerLinks`]: the node's links by remote node id. The node (its metadata applier, once the
//! cluster's membership is in the metadata image) reconciles it with the members it should
//! talk to; callers look links up without a message to anyone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vltava_messages::NodeId;

use super::{PeerChannel, PeerError, PeerLinkConfig, PeerLinkHandle, PeerRequest, PeerResponse};
use crate::directory::ActorDirectory;

/// How long reconciling waits for a removed link's tasks to end. They stop at once (every
/// wait in them also waits for the stop signal); the bound only keeps a bug from hanging
/// membership changes.
pub const LINK_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The node's peer links. Cheap to clone; clones share the links.
#[derive(Clone, Debug)]
pub struct PeerLinks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Arc<PeerLinkConfig>,
    directory: ActorDirectory,
    parent: String,
    /// Read by callers and written by `reconcile`; held for a map operation, never across an
    /// await.
    links: Mutex<BTreeMap<NodeId, PeerLinkHandle>>,
    /// One reconciliation at a time, so two membership changes cannot interleave their stops
    /// and starts.
    reconciling: tokio::sync::Mutex<()>,
}

/// What a reconciliation changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Links started for new members.
    pub added: Vec<NodeId>,
    /// Links stopped for members that left.
    pub removed: Vec<NodeId>,
    /// Links replaced because their member's address changed.
    pub readdressed: Vec<NodeId>,
}

impl PeerLinks {
    /// No links yet; links register in `directory` under `parent`.
    #[must_use]
    pub fn new(config: PeerLinkConfig, directory: ActorDirectory, parent: &str) -> PeerLinks {
        PeerLinks {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                directory,
                parent: parent.to_owned(),
                links: Mutex::new(BTreeMap::new()),
                reconciling: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The link to `node`, if it is a member.
    #[must_use]
    pub fn get(&self, node: NodeId) -> Option<PeerLinkHandle> {
        self.links().get(&node).cloned()
    }

    /// Every member with a link, and its address.
    #[must_use]
    pub fn members(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.links()
            .iter()
            .map(|(node, link)| (*node, link.address()))
            .collect()
    }

    /// Every member whose process is known gone, with since when
    /// ([`PeerLinkGauges::gone_since`](super::state::PeerLinkGauges::gone_since)).
    #[must_use]
    pub fn gone(&self) -> BTreeMap<u32, tokio::time::Instant> {
        self.links()
            .iter()
            .filter_map(|(node, link)| link.gauges().gone_since().map(|at| (node.0, at)))
            .collect()
    }

    /// Calls `node` through its link.
    ///
    /// # Errors
    /// `UnknownNode` without a link to it; otherwise as [`PeerLinkHandle::call`].
    pub async fn call(
        &self,
        node: NodeId,
        channel: PeerChannel,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        let link = self
            .get(node)
            .ok_or(PeerError::UnknownNode { remote: node })?;
        link.call(channel, request, timeout).await
    }

    /// Makes the links match `members` (this node among them or not: it never links to
    /// itself): starts links to new members, stops links to members that left, and replaces
    /// the link of a member whose address changed. A stopped link's queued and in-flight calls
    /// fail with `Unreachable`. Must be called within a tokio runtime.
    pub async fn reconcile(&self, members: &BTreeMap<NodeId, SocketAddr>) -> Reconciled {
        let _one_at_a_time = self.inner.reconciling.lock().await;
        let own = self.inner.config.identity.node_id;
        let mut outcome = Reconciled::default();
        let stopping: Vec<PeerLinkHandle> = {
            let mut links = self.links();
            let mut stopping = Vec::new();
            links.retain(|node, link| match members.get(node) {
                Some(address) if *node != own && *address == link.address() => true,
                Some(_) if *node != own => {
                    outcome.readdressed.push(*node);
                    stopping.push(link.clone());
                    false
                }
                _ => {
                    outcome.removed.push(*node);
                    stopping.push(link.clone());
                    false
                }
            });
            stopping
        };
        // A replaced link must be gone before its successor registers under the same id.
        for link in &stopping {
            link.stop();
        }
        for link in &stopping {
            if tokio::time::timeout(LINK_STOP_TIMEOUT, link.stopped())
                .await
                .is_err()
            {
                tracing::error!(link = %link.id(), "peer link did not stop in time");
            }
        }
        let mut links = self.links();
        for (node, address) in members {
            if *node == own || links.contains_key(node) {
                continue;
            }
            let link = PeerLinkHandle::spawn(
                *node,
                *address,
                Arc::clone(&self.inner.config),
                &self.inner.directory,
                &self.inner.parent,
            );
            links.insert(*node, link);
            if !outcome.readdressed.contains(node) {
                outcome.added.push(*node);
            }
        }
        outcome
    }

    /// Stops every link and waits for them to end.
    pub async fn shutdown(&self) {
        self.reconcile(&BTreeMap::new()).await;
    }

    fn links(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, PeerLinkHandle>> {
        // A poisoned lock only means a thread panicked between map operations; the map is
        // whole.
        self.inner
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
