//! The node's actor directory: every live actor (and task acting as one) registers here with
//! its id, kind, parent and counters, so that the admin endpoint can show the supervision
//! tree without messaging any actor. Counters are atomics updated by the sending handle
//! (mailbox depth) and by the actor (messages handled); the map itself changes only when an
//! actor starts, restarts or stops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use vltava_messages::Offset;
use vltava_messages::protocol::{MemberDescription, RebalanceRecord};

use crate::metrics::KindTimes;

/// What an actor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActorKind {
    NodeSupervisor,
    Controller,
    MetadataApplier,
    PartitionSupervisor,
    Partition,
    Listener,
    ClientSession,
    GroupManager,
    GroupCoordinator,
    /// The link to one remote node (two connections).
    PeerLink,
    /// The task fetching this node's follower partitions from one leader node.
    ReplicaFetcher,
}

impl ActorKind {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ActorKind::NodeSupervisor => "NodeSupervisor",
            ActorKind::Controller => "Controller",
            ActorKind::MetadataApplier => "MetadataApplier",
            ActorKind::PartitionSupervisor => "PartitionSupervisor",
            ActorKind::Partition => "Partition",
            ActorKind::Listener => "Listener",
            ActorKind::ClientSession => "ClientSession",
            ActorKind::GroupManager => "GroupManager",
            ActorKind::GroupCoordinator => "GroupCoordinator",
            ActorKind::PeerLink => "PeerLink",
            ActorKind::ReplicaFetcher => "ReplicaFetcher",
        }
    }

    /// Every kind, for parsing and listing.
    pub const ALL: &'static [ActorKind] = &[
        ActorKind::NodeSupervisor,
        ActorKind::Controller,
        ActorKind::MetadataApplier,
        ActorKind::PartitionSupervisor,
        ActorKind::Partition,
        ActorKind::Listener,
        ActorKind::ClientSession,
        ActorKind::GroupManager,
        ActorKind::GroupCoordinator,
        ActorKind::PeerLink,
        ActorKind::ReplicaFetcher,
    ];

    /// The kind with this name (as `name` spells it, any case).
    #[must_use]
    pub fn from_name(name: &str) -> Option<ActorKind> {
        ActorKind::ALL
            .iter()
            .copied()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }
}

/// Where an actor is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorStatus {
    Starting,
    Running,
    Restarting,
    /// Crashed past its restart bound; kept in the directory so the failure stays visible.
    Failed,
}

impl ActorStatus {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ActorStatus::Starting => "starting",
            ActorStatus::Running => "running",
            ActorStatus::Restarting => "restarting",
            ActorStatus::Failed => "failed",
        }
    }
}

/// Counters shared by an actor and the handles that send to it.
#[derive(Debug, Default)]
pub struct ActorStats {
    /// Messages sent and not yet handled.
    pub depth: AtomicU64,
    /// The largest depth seen.
    pub depth_max: AtomicU64,
    pub handled: AtomicU64,
    /// Processing time per message kind.
    pub times: KindTimes,
}

impl ActorStats {
    /// Counts a message into the mailbox; returns the new depth.
    pub fn enqueued(&self) -> u64 {
        let depth = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
        self.depth_max.fetch_max(depth, Ordering::Relaxed);
        depth
    }

    /// Counts a message out of the mailbox (handled, or dropped unsent).
    pub fn dequeued(&self) {
        self.depth.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a message handled.
    pub fn handled(&self) {
        self.dequeued();
        self.handled.fetch_add(1, Ordering::Relaxed);
    }

    #[must_use]
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Records how long handling one message of `kind` took.
    pub fn time(&self, kind: &'static str, elapsed: Duration) {
        self.times.record(kind, elapsed);
    }
}

/// What a partition publishes about itself: gauges it stores after each message it handles,
/// and counters of what went in and out. Read by the admin endpoint, never locked.
#[derive(Debug, Default)]
pub struct PartitionGauges {
    pub topic: String,
    pub partition: u32,
    pub log_start_offset: AtomicU64,
    pub log_end_offset: AtomicU64,
    pub high_watermark: AtomicU64,
    /// Every offset below it is on disk (fsynced).
    pub flushed_offset: AtomicU64,
    pub leader_epoch: AtomicU64,
    pub segments: AtomicU64,
    pub size_bytes: AtomicU64,
    /// Batch bytes appended by producers, and the offsets they took.
    pub bytes_in: AtomicU64,
    pub events_in: AtomicU64,
    /// Batch bytes served to fetches, and the offsets they covered.
    pub bytes_out: AtomicU64,
    pub events_out: AtomicU64,
    /// The replica's role, a `ReplicaRole` as `u8` (`role()` reads it back).
    pub role: AtomicU8,
    /// The ISR and, on the leader, each follower's progress: replaced in place (no allocation
    /// once its vectors have grown to the replica count) at most every
    /// `REPLICATION_PUBLISH_INTERVAL` and whenever the role or leader epoch changes, so the
    /// log thread takes this lock a few times a second, not once per message.
    pub replication: Mutex<ReplicationGauges>,
}

impl PartitionGauges {
    /// The role last published.
    #[must_use]
    pub fn role(&self) -> ReplicaRole {
        ReplicaRole::from_u8(self.role.load(Ordering::Relaxed))
    }

    /// A copy of the replication state last published.
    #[must_use]
    pub fn replication(&self) -> ReplicationGauges {
        self.replication
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A partition replica's role, as published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplicaRole {
    /// Opened, not yet told its role by the metadata.
    #[default]
    Unassigned = 0,
    Leader = 1,
    Follower = 2,
}

impl ReplicaRole {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ReplicaRole::Unassigned => "unassigned",
            ReplicaRole::Leader => "leader",
            ReplicaRole::Follower => "follower",
        }
    }

    #[must_use]
    pub fn from_u8(value: u8) -> ReplicaRole {
        match value {
            1 => ReplicaRole::Leader,
            2 => ReplicaRole::Follower,
            _ => ReplicaRole::Unassigned,
        }
    }
}

/// A partition replica's view of its replication, as its log thread last published it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationGauges {
    /// The leader the replica knows (from its assignment).
    pub leader: Option<u32>,
    pub replicas: Vec<u32>,
    /// The committed ISR as the replica knows it.
    pub isr: Vec<u32>,
    /// Leader only: every other replica, in node order; empty elsewhere.
    pub followers: Vec<FollowerGauges>,
    /// When this was published (Unix ms); 0 before the first time.
    pub published_at_ms: u64,
}

impl ReplicationGauges {
    /// Whether `node` is in the ISR as this replica knows it.
    #[must_use]
    pub fn in_isr(&self, node: u32) -> bool {
        self.isr.contains(&node)
    }
}

/// What a leader knows of one follower, as published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerGauges {
    pub node_id: u32,
    /// From its latest fetch in this leader epoch; `None` until it fetched.
    pub log_end_offset: Option<u64>,
    pub flushed_offset: Option<u64>,
    /// The leader's log end minus the follower's, when published; `None` until it fetched.
    pub lag_offsets: Option<u64>,
    /// When the follower was last caught up with the leader's log end (Unix ms).
    pub last_caught_up_ms: u64,
}

impl FollowerGauges {
    /// How long ago the follower was last caught up, at `now_ms` (Unix ms). A follower that
    /// keeps up shows at most the time between its fetches (a leader holds an idle fetch up
    /// to 250 ms), one that stopped fetching a growing number.
    #[must_use]
    pub fn lag_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_caught_up_ms)
    }
}

/// What a client session publishes about itself.
#[derive(Debug, Default)]
pub struct SessionGauges {
    pub peer: String,
    /// From the handshake; empty until then.
    pub client_id: Mutex<String>,
    pub client_software: Mutex<String>,
    pub requests_in_flight: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// The state an actor publishes for the admin endpoint, by kind.
#[derive(Clone, Debug)]
pub enum PublishedState {
    Partition(Arc<PartitionGauges>),
    Session(Arc<SessionGauges>),
    /// A group coordinator's view of its group, replaced after every change.
    Group(Arc<Mutex<GroupSnapshot>>),
    /// A peer link's remote node, connection states, queue depth, reconnects, last error and
    /// round-trip time: a `peer::PeerLinkGauges`, stored type-erased so that the directory,
    /// which every actor module imports, imports none of them (the admin endpoint, which knows
    /// both, reads it back with `downcast_ref`).
    PeerLink(Arc<dyn std::any::Any + Send + Sync>),
    /// A replica fetcher's partitions, traffic and last error: a
    /// `replication::ReplicaFetcherGauges`, type-erased as `PeerLink` is.
    ReplicaFetcher(Arc<dyn std::any::Any + Send + Sync>),
}

/// One registered actor.
#[derive(Clone, Debug)]
pub struct ActorEntry {
    pub id: String,
    pub kind: ActorKind,
    pub parent: Option<String>,
    pub status: ActorStatus,
    pub started_at: SystemTime,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub stats: Arc<ActorStats>,
    pub state: Option<PublishedState>,
}

/// The directory. Cheap to clone; clones share the map.
#[derive(Clone, Debug, Default)]
pub struct ActorDirectory {
    entries: Arc<RwLock<BTreeMap<String, ActorEntry>>>,
}

impl ActorDirectory {
    #[must_use]
    pub fn new() -> Self {
        ActorDirectory::default()
    }

    /// Registers (or re-registers, after a restart) an actor; returns its counters.
    pub fn register(&self, id: &str, kind: ActorKind, parent: Option<&str>) -> Arc<ActorStats> {
        self.register_with_state(id, kind, parent, None)
    }

    /// Registers an actor that publishes state; a restart replaces the published state.
    pub fn register_with_state(
        &self,
        id: &str,
        kind: ActorKind,
        parent: Option<&str>,
        state: Option<PublishedState>,
    ) -> Arc<ActorStats> {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let restarts = entries.get(id).map_or(0, |e| e.restarts);
        let last_error = entries.get(id).and_then(|e| e.last_error.clone());
        let stats = entries
            .get(id)
            .map_or_else(|| Arc::new(ActorStats::default()), |e| Arc::clone(&e.stats));
        entries.insert(
            id.to_owned(),
            ActorEntry {
                id: id.to_owned(),
                kind,
                parent: parent.map(str::to_owned),
                status: ActorStatus::Running,
                started_at: SystemTime::now(),
                restarts,
                last_error,
                stats: Arc::clone(&stats),
                state,
            },
        );
        stats
    }

    /// Notes a crash and whether the actor is being restarted or has failed for good.
    pub fn record_failure(&self, id: &str, error: &str, restarting: bool) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = entries.get_mut(id) {
            entry.last_error = Some(error.to_owned());
            if restarting {
                entry.restarts += 1;
                entry.status = ActorStatus::Restarting;
            } else {
                entry.status = ActorStatus::Failed;
            }
        }
    }

    /// Removes the entry `id` if `owned` says it is still the caller's (a successor registered
    /// under the same id keeps its entry); returns whether it removed it.
    pub fn unregister_if(&self, id: &str, owned: impl FnOnce(&ActorEntry) -> bool) -> bool {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.get(id).is_some_and(owned) {
            entries.remove(id);
            true
        } else {
            false
        }
    }

    /// Removes an actor that stopped.
    pub fn unregister(&self, id: &str) {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }

    /// A copy of every entry, ordered by id.
    #[must_use]
    pub fn snapshot(&self) -> Vec<ActorEntry> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The number of registered actors.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One entry.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<ActorEntry> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

/// What a coordinator publishes for the admin endpoint.
#[derive(Clone, Debug, Default)]
pub struct GroupSnapshot {
    pub group_id: String,
    pub state: &'static str,
    pub assignor: &'static str,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: Vec<MemberDescription>,
    pub owners: BTreeMap<(String, u32), String>,
    pub offsets: BTreeMap<(String, u32), Offset>,
    pub subscribed: BTreeSet<(String, u32)>,
    /// The most recent rebalances, newest first.
    pub rebalances: Vec<RebalanceRecord>,
}
