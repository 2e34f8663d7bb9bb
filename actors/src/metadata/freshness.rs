//! Leases as the sessions see them: a node's own lease with the cluster's controller (whether
//! it heard from the controller recently enough to vouch for its metadata image), and, on the
//! controller's node, when each node last renewed. Renewed
//! by `cluster::leases::renew_leases`; here, in `metadata/`, so that sessions can check it
//! without depending on the cluster wiring.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How long a node's lease lasts after a renewal: the controller fences a node it has not
/// heard from for this long, and a node that has not been granted a renewal for this long
/// refuses to answer metadata. Eight renewal intervals: long enough to ride out a loaded
/// machine's scheduling hiccups, short enough that clients stop being sent to a dead node
/// within about two seconds.
pub const NODE_LEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// When this node's lease was last granted: whether its metadata is fresh.
#[derive(Clone, Debug)]
pub struct MetadataFreshness {
    granted: Arc<Mutex<Option<Instant>>>,
    timeout: Duration,
}

impl Default for MetadataFreshness {
    fn default() -> Self {
        MetadataFreshness::new(NODE_LEASE_TIMEOUT)
    }
}

impl MetadataFreshness {
    #[must_use]
    pub fn new(timeout: Duration) -> MetadataFreshness {
        MetadataFreshness {
            granted: Arc::new(Mutex::new(None)),
            timeout,
        }
    }

    /// A renewal sent at `sent_at` was granted.
    pub fn granted(&self, sent_at: Instant) {
        let mut granted = self.granted.lock().unwrap_or_else(PoisonError::into_inner);
        if granted.is_none_or(|g| g < sent_at) {
            *granted = Some(sent_at);
        }
    }

    /// How long ago the lease was last granted; `None` if never.
    #[must_use]
    pub fn age(&self) -> Option<Duration> {
        self.granted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|g| Instant::now().saturating_duration_since(g))
    }

    /// Whether the node heard from the controller within a lease: `Err` says how long it has
    /// not, for the error a client gets.
    pub fn check(&self) -> Result<(), String> {
        match self.age() {
            Some(age) if age <= self.timeout => Ok(()),
            Some(age) => Err(format!(
                "this node has not heard from the controller for {} ms; its metadata may be stale",
                age.as_millis()
            )),
            None => Err("this node has not heard from the controller yet".to_owned()),
        }
    }
}

/// When each node last renewed its lease with this node, as the controller.
#[derive(Clone, Debug, Default)]
pub struct LeaseTable {
    renewed: Arc<Mutex<HashMap<u32, Instant>>>,
}

impl LeaseTable {
    /// Node `node` renewed its lease now.
    pub fn renew(&self, node: u32) {
        self.renewed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node, Instant::now());
    }

    /// When node `node` last renewed, if ever (since this node started).
    #[must_use]
    pub fn last_renewed(&self, node: u32) -> Option<Instant> {
        self.renewed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .copied()
    }

    /// How long ago each node renewed, for the admin view and DescribeCluster.
    #[must_use]
    pub fn ages(&self) -> HashMap<u32, Duration> {
        let now = Instant::now();
        self.renewed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(node, at)| (*node, now.saturating_duration_since(*at)))
            .collect()
    }
}
