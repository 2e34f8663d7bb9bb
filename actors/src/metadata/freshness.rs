//! Leases as the sessions see them: a node's own lease with the cluster's controller (whether
//! it heard from the controller recently enough to vouch for its metadata image), and, on the
//! controller's node, when each node last renewed. Renewed
//! by `cluster::leases::renew_leases`; here, in `metadata/`, so that sessions can check it
//! without depending on the cluster wiring.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long a node's lease lasts after a renewal: the controller fences a node it has not
/// heard from for this long, and a node that has not been granted a renewal for this long
/// refuses to answer metadata. Eight renewal intervals: long enough to ride out a loaded
/// machine's scheduling hiccups, short enough that clients stop being sent to a dead node
/// within about two seconds.
pub const NODE_LEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// How much sooner than the controller a partition leader takes its own lease for lapsed
/// ([`MetadataFreshness::check_leader`]). The node counts its lease from when it *sent* the
/// renewal the controller granted, and the controller fences it a whole lease after it
/// *received* the last one, so the node's count already ends first; the margin adds room for
/// the two monotonic clocks running at slightly different rates and for the scheduling
/// delay between the check and the append it guards. ARCHITECTURE.md ("Leader leases")
/// gives the whole argument.
pub const LEADER_LEASE_MARGIN: Duration = Duration::from_millis(250);

const _: () = assert!(LEADER_LEASE_MARGIN.as_nanos() * 4 < NODE_LEASE_TIMEOUT.as_nanos());

/// When this node's lease was last granted: whether its metadata is fresh.
#[derive(Clone, Debug)]
pub struct MetadataFreshness {
    granted: Arc<Mutex<Option<Instant>>>,
    timeout: Duration,
    /// The version of the newest image this node has applied (its partitions took their
    /// roles from it): a renewal is taken as granted only once this reaches the version the
    /// controller held when it granted it, so a lease never vouches for an image older than
    /// the controller's decisions up to then (`until_applied`).
    applied: Arc<watch::Sender<u64>>,
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
            applied: Arc::new(watch::channel(0).0),
        }
    }

    /// The node applied the image of `version`.
    pub fn applied(&self, version: u64) {
        self.applied.send_if_modified(|applied| {
            let newer = version > *applied;
            if newer {
                *applied = version;
            }
            newer
        });
    }

    /// Waits until the node applied an image of at least `version`, at most `bound`; whether
    /// it did.
    pub async fn until_applied(&self, version: u64, bound: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(bound, applied.wait_for(|v| *v >= version))
            .await
            .is_ok_and(|r| r.is_ok())
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

impl MetadataFreshness {
    /// Whether this node may still act as a partition leader: its lease has at least
    /// [`LEADER_LEASE_MARGIN`] left, so the controller cannot have fenced it and moved its
    /// partitions yet. `Err` says why not, for the retriable `NotLeader` a producer gets.
    pub fn check_leader(&self) -> Result<(), String> {
        let within = self.timeout.saturating_sub(LEADER_LEASE_MARGIN);
        match self.age() {
            Some(age) if age <= within => Ok(()),
            Some(age) => Err(format!(
                "this node's lease with the controller may have run out ({} ms since it was granted): it does not lead until it renews",
                age.as_millis()
            )),
            None => Err("this node holds no lease with the controller yet".to_owned()),
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
