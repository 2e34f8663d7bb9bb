//! The Raft settings of the metadata quorum: [`RaftConfigBuilder`] starts from the cluster
//! defaults below and builds a validated `openraft::Config`.
//!
//! The timing target is the issue's: controller failover p99 under 1.5 s on loopback. In
//! openraft 0.9 a follower that hears nothing from its leader starts an election once
//! `election_timeout_max` (the leader's lease) plus its own timeout, drawn once from
//! `[election_timeout_min, election_timeout_max)`, have passed since the last heartbeat, on
//! its next tick (every 1.5 heartbeat intervals). With the defaults that is 450 to 675 ms
//! after the last heartbeat, then one vote round and one commit (a few fsyncs, milliseconds
//! on loopback). A node that saw a candidate with a longer log than its own waits another
//! `2 × election_timeout_max` before standing itself, and a split vote costs one more
//! timeout: measured with real processes (docs/benchmarks.md, "Cluster metadata"), 150 to
//! 300 ms gave failover p50 1.27 s and p99 1.79 s where 250 to 500 ms gave 1.94 s and
//! 2.96 s, in back-to-back runs. The extra elections behind that tail were not the timing's:
//! the leader's peer link to a member that had just restarted was still in its reconnect
//! back-off, so the member missed heartbeats, fell behind and stood early with a shorter log,
//! and losing that way set openraft's "seen a greater log" delay (`2 × max`), which only the
//! node's own next election clears. With the link reconnecting when the member dials in
//! (`PeerLinkHandle::reconnect_now`) nearly every round took one election: over four runs
//! p50 0.55 to 0.59 s, p99 0.63 to 0.96 s.

use std::sync::Arc;
use std::time::Duration;

use openraft::SnapshotPolicy;

use super::RaftConfigError;
use super::log_store::LOG_READ_BYTES_MAX;
use vltava_messages::limits::FRAME_BYTES_MAX;

/// How often a leader sends heartbeats. Short enough that a follower notices a dead leader
/// soon after its lease ends; long enough that a 3-node quorum sends only 40 heartbeats a
/// second, nothing next to the control connection's traffic.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

/// The smallest election timeout. Three heartbeats, on top of the leader's lease (the
/// largest timeout): a follower starts an election only after 450 ms without a heartbeat, so
/// a few late heartbeats or a leader's slow fsync do not unseat it.
pub const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(150);

/// The largest election timeout, which openraft also uses as the leader's lease (no vote is
/// granted to another candidate before it runs out) and, doubled, as the back-off of a node
/// that saw a longer log than its own. Twice the minimum, so the two followers of a 3-node
/// quorum draw timeouts far enough apart to rarely split a vote; shorter than it was
/// (500 ms), because every failed election round costs a multiple of it.
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(300);

/// Entries applied since the last snapshot before the next one is built. Metadata entries are
/// small (a few hundred bytes to a few KiB), so the log between snapshots stays at a few MiB
/// and a restart replays at most this many; building one encodes the whole image, which is
/// why it is not done more often.
pub const SNAPSHOT_LOGS_SINCE_LAST: u64 = 1024;

/// Entries a snapshot covers that are kept in the log anyway: a follower that restarts or
/// lost a few seconds of heartbeats catches up from the log instead of a whole snapshot.
pub const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 256;

/// Entries per AppendEntries at most. The bytes are bounded separately
/// (`LOG_READ_BYTES_MAX`); this keeps a catching-up follower's batches small enough that a
/// heartbeat is never queued behind seconds of work.
pub const PAYLOAD_ENTRIES_MAX: u64 = 64;

/// Bytes of snapshot per InstallSnapshot request: a quarter of what an AppendEntries may
/// carry (`LOG_READ_BYTES_MAX`), so a chunk sent to one follower never holds the control
/// connection much longer than a replication batch does.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;
// Half a peer frame at most, as for AppendEntries: room for the request's other fields.
const _: () = assert!(SNAPSHOT_CHUNK_BYTES <= LOG_READ_BYTES_MAX);
const _: () = assert!(2 * SNAPSHOT_CHUNK_BYTES <= FRAME_BYTES_MAX as u64);

/// How long sending one snapshot chunk may take, the last one including its install (decode,
/// rebuild the image, two fsyncs). Generous: a slow install only delays a follower that is
/// far behind anyway, while a timeout makes the leader start the snapshot over.
pub const INSTALL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3);

const _: () = assert!(HEARTBEAT_INTERVAL.as_millis() < ELECTION_TIMEOUT_MIN.as_millis());
const _: () = assert!(ELECTION_TIMEOUT_MIN.as_millis() < ELECTION_TIMEOUT_MAX.as_millis());

/// Builds the `openraft::Config` of a metadata quorum member. Every node of a cluster must
/// use the same timing, since the lease one leader assumes is the timeout its followers use.
#[derive(Clone, Debug)]
pub struct RaftConfigBuilder {
    cluster_id: String,
    heartbeat_interval: Duration,
    election_timeout_min: Duration,
    election_timeout_max: Duration,
    snapshot_logs_since_last: u64,
    logs_kept_after_snapshot: u64,
    payload_entries_max: u64,
    install_snapshot_timeout: Duration,
}

impl RaftConfigBuilder {
    /// The cluster defaults, for the cluster named `cluster_id`.
    pub fn new(cluster_id: impl Into<String>) -> RaftConfigBuilder {
        RaftConfigBuilder {
            cluster_id: cluster_id.into(),
            heartbeat_interval: HEARTBEAT_INTERVAL,
            election_timeout_min: ELECTION_TIMEOUT_MIN,
            election_timeout_max: ELECTION_TIMEOUT_MAX,
            snapshot_logs_since_last: SNAPSHOT_LOGS_SINCE_LAST,
            logs_kept_after_snapshot: LOGS_KEPT_AFTER_SNAPSHOT,
            payload_entries_max: PAYLOAD_ENTRIES_MAX,
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT,
        }
    }

    #[must_use]
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    #[must_use]
    pub fn election_timeout(mut self, min: Duration, max: Duration) -> Self {
        self.election_timeout_min = min;
        self.election_timeout_max = max;
        self
    }

    /// Snapshot after this many applied entries, keeping `kept` of the entries it covers.
    #[must_use]
    pub fn snapshot_policy(mut self, logs_since_last: u64, kept: u64) -> Self {
        self.snapshot_logs_since_last = logs_since_last;
        self.logs_kept_after_snapshot = kept;
        self
    }

    #[must_use]
    pub fn payload_entries_max(mut self, entries: u64) -> Self {
        self.payload_entries_max = entries;
        self
    }

    #[must_use]
    pub fn install_snapshot_timeout(mut self, timeout: Duration) -> Self {
        self.install_snapshot_timeout = timeout;
        self
    }

    /// The validated config.
    pub fn build(self) -> Result<Arc<openraft::Config>, RaftConfigError> {
        let millis = |name: &'static str, d: Duration| -> Result<u64, RaftConfigError> {
            let ms =
                u64::try_from(d.as_millis()).map_err(|_| RaftConfigError::BadDuration { name })?;
            if ms == 0 || Duration::from_millis(ms) != d {
                return Err(RaftConfigError::BadDuration { name });
            }
            Ok(ms)
        };
        if self.snapshot_logs_since_last == 0 {
            return Err(RaftConfigError::Zero {
                name: "snapshot_logs_since_last",
            });
        }
        let config = openraft::Config {
            cluster_name: self.cluster_id,
            heartbeat_interval: millis("heartbeat_interval", self.heartbeat_interval)?,
            election_timeout_min: millis("election_timeout_min", self.election_timeout_min)?,
            election_timeout_max: millis("election_timeout_max", self.election_timeout_max)?,
            install_snapshot_timeout: millis(
                "install_snapshot_timeout",
                self.install_snapshot_timeout,
            )?,
            max_payload_entries: self.payload_entries_max,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            // openraft's advice: past the snapshot threshold, so that a follower this far
            // behind is sent a snapshot rather than waited for.
            replication_lag_threshold: 2 * self.snapshot_logs_since_last,
            ..openraft::Config::default()
        };
        Ok(Arc::new(config.validate()?))
    }
}
