//! Leases as the sessions see them: a node's own lease with the cluster's controller (whether
//! it heard from the controller recently enough to vouch for its metadata image), and, on the
//! controller's node, when each node last renewed. Renewed
//! by `cluster::leases::renew_leases`; here, in `metadata/`, so that sessions can check it
//! without depending on the cluster wiring.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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

/// Grants waiting for the node to apply the metadata version they name, at most: at one
/// renewal every 250 ms, sixteen span two leases, and a grant older than a lease is worth
/// nothing anyway.
pub const PENDING_GRANTS_MAX: usize = 16;

/// When this node's lease was last granted: whether its metadata is fresh.
#[derive(Clone, Debug)]
pub struct MetadataFreshness {
    lease: Arc<Mutex<Lease>>,
    timeout: Duration,
}

#[derive(Debug, Default)]
struct Lease {
    /// When the newest renewal that counts was sent.
    granted: Option<Instant>,
    /// The version of the newest image this node has applied (its partitions took their
    /// roles from it).
    applied: u64,
    /// Grants the controller gave at a metadata version this node had not applied yet, oldest
    /// first: (when the renewal was sent, the version). One counts only once the node has
    /// applied its version, so a lease never vouches for an image older than the controller's
    /// decisions at the time of the grant (a paused leader that resumes and renews must not
    /// take its partitions for its own until it has applied the image that moved them).
    pending: VecDeque<(Instant, u64)>,
}

impl Lease {
    fn grant(&mut self, sent_at: Instant) {
        if self.granted.is_none_or(|g| g < sent_at) {
            self.granted = Some(sent_at);
        }
    }
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
            lease: Arc::new(Mutex::new(Lease::default())),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The node applied the image of `version`: grants waiting for it count from now on.
    pub fn applied(&self, version: u64) {
        let mut lease = self.lock();
        lease.applied = lease.applied.max(version);
        while let Some(&(sent_at, needed)) = lease.pending.front() {
            if needed > lease.applied {
                break;
            }
            lease.pending.pop_front();
            lease.grant(sent_at);
        }
    }

    /// A renewal sent at `sent_at` was granted by a controller at metadata `version`: it
    /// counts now if the node has applied that version, else once it has.
    pub fn granted_at_version(&self, sent_at: Instant, version: u64) {
        let mut lease = self.lock();
        if version <= lease.applied {
            lease.grant(sent_at);
            return;
        }
        if lease.pending.len() == PENDING_GRANTS_MAX {
            lease.pending.pop_front();
        }
        lease.pending.push_back((sent_at, version));
    }

    /// A renewal sent at `sent_at` was granted (the controller's own node, whose image is the
    /// one it decides on).
    pub fn granted(&self, sent_at: Instant) {
        self.lock().grant(sent_at);
    }

    /// How long ago the lease was last granted; `None` if never.
    #[must_use]
    pub fn age(&self) -> Option<Duration> {
        self.lock()
            .granted
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
