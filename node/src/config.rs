//! The node's settings: command-line flags, each also an environment variable (`VLTAVA_…`)
//! and a key in an optional TOML file (`--config`). Precedence: flag or environment variable,
//! then the file, then the embedded default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use vltava_actors::groups::state::{GroupSettings, SESSION_TIMEOUT_MAX, SESSION_TIMEOUT_MIN};
use vltava_actors::groups::{
    OFFSETS_RETENTION_DEFAULT, OFFSETS_TOPIC_PARTITIONS_DEFAULT,
    OFFSETS_TOPIC_REPLICATION_FACTOR_DEFAULT, OFFSETS_TOPIC_SEGMENT_BYTES,
};
use vltava_actors::partition::Durability;
use vltava_storage::config::SEGMENT_BYTES_MIN;

/// Default client port.
pub const CLIENT_PORT_DEFAULT: u16 = 9420;
/// Default admin HTTP port.
pub const ADMIN_PORT_DEFAULT: u16 = 9422;
/// The default peer (node to node) port, as DESIGN.md fixes it.
pub const PEER_PORT_DEFAULT: u16 = 9421;
/// The most members a controller quorum may list: every member votes, and a quorum of more
/// than seven only slows elections and commits without surviving more failures that matter.
pub const CONTROLLER_QUORUM_MEMBERS_MAX: usize = 7;
/// Default connection limit: far above what a test or a small deployment needs, far below
/// what would exhaust file descriptors (the usual soft limit is 1024 or more).
pub const CONNECTIONS_MAX_DEFAULT: usize = 512;
/// Requests one connection may have in flight (being processed or answered); it also bounds
/// how far a client can pipeline before the node stops reading its socket.
pub const INFLIGHT_REQUESTS_MAX_DEFAULT: usize = 16;
/// Request bytes the whole node holds in flight: 256 MiB, room for 64 maximal batches at once
/// while keeping memory bounded whatever the clients do.
pub const BYTES_IN_FLIGHT_MAX_DEFAULT: usize = 256 * 1024 * 1024;
/// Flusher threads: a couple of fsyncs in flight saturate a single disk's queue here.
pub const FLUSHER_THREADS_DEFAULT: usize = 2;

/// Flags shared by the daemon. Every one is optional here so the TOML file can fill it.
#[derive(Debug, Default, Args)]
pub struct NodeFlags {
    /// A TOML file with any of the settings below (keys as the long flags, with underscores).
    #[arg(long, env = "VLTAVA_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id in the cluster.
    #[arg(long, env = "VLTAVA_NODE_ID")]
    pub node_id: Option<u32>,
    /// Where the node keeps its data [default: ./vltava-data].
    #[arg(long, env = "VLTAVA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address clients connect to [default: 127.0.0.1:9420].
    #[arg(long, env = "VLTAVA_LISTEN")]
    pub listen: Option<String>,
    /// Address given to clients in metadata [default: the listen address].
    #[arg(long, env = "VLTAVA_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where other nodes reach this one (Raft, forwarded admin, replication): HOST:PORT.
    /// Used only with --controller-quorum [default: 127.0.0.1:9421].
    #[arg(long, env = "VLTAVA_PEER_LISTEN")]
    pub peer_listen: Option<String>,
    /// The controller quorum, `ID@HOST:PORT,...` (each member's node id and peer address),
    /// e.g. `1@127.0.0.1:9421,2@127.0.0.2:9421,3@127.0.0.3:9421`. Without it the node is a
    /// cluster of one.
    #[arg(long, env = "VLTAVA_CONTROLLER_QUORUM")]
    pub controller_quorum: Option<String>,
    /// In a cluster: take a snapshot of the metadata after this many metadata log entries
    /// (keeping a quarter of them), so that a node that was down long catches up from it
    /// [default: 1024].
    #[arg(long, env = "VLTAVA_METADATA_SNAPSHOT_ENTRIES")]
    pub metadata_snapshot_entries: Option<u64>,
    /// In a cluster: a follower that has not caught up with its leader for this long leaves
    /// the partition's in-sync replicas (Kafka's replica.lag.time.max.ms) [default: 10000].
    #[arg(long, env = "VLTAVA_REPLICA_LAG_TIME_MAX_MS")]
    pub replica_lag_time_max_ms: Option<u64>,
    /// In a cluster: when a partition's first replica (its preferred leader) has been live
    /// and in sync for this long while another replica leads, the controller moves the
    /// leadership back to it, so that load spreads again after a failover; 0 turns this off
    /// [default: 30000].
    #[arg(long, env = "VLTAVA_PREFERRED_LEADER_RETURN_MS")]
    pub preferred_leader_return_ms: Option<u64>,
    /// Address of the admin HTTP endpoint [default: 127.0.0.1:9422].
    #[arg(long, env = "VLTAVA_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Log format: human or json [default: human].
    #[arg(long, env = "VLTAVA_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// When acks=all is answered: fsync (group commit, the default), interval:<ms> (fsync in
    /// the background), or none (left to the operating system).
    #[arg(long, env = "VLTAVA_DURABILITY")]
    pub durability: Option<String>,
    /// Check every batch's CRC again when it is read for a consumer, so a batch damaged on
    /// disk after it was written is refused instead of served. Off by default, as in Kafka:
    /// batches are checked when appended and when recovery reads an unclean tail, and
    /// consumers check the CRC of what they receive.
    #[arg(long, env = "VLTAVA_VERIFY_READS", num_args = 0..=1, default_missing_value = "true")]
    pub verify_reads: Option<bool>,
    /// Accept a non-loopback listen address. Nothing is authenticated yet.
    #[arg(long, env = "VLTAVA_ALLOW_REMOTE", num_args = 0..=1, default_missing_value = "true")]
    pub allow_remote: Option<bool>,
    /// Most client connections at once [default: 512].
    #[arg(long, env = "VLTAVA_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Most requests in flight per connection [default: 16].
    #[arg(long, env = "VLTAVA_INFLIGHT_REQUESTS_MAX")]
    pub inflight_requests_max: Option<usize>,
    /// Most request bytes in flight across the node [default: 256 MiB].
    #[arg(long, env = "VLTAVA_BYTES_IN_FLIGHT_MAX")]
    pub bytes_in_flight_max: Option<usize>,
    /// Threads that run fsyncs for all partitions [default: 2].
    #[arg(long, env = "VLTAVA_FLUSHER_THREADS")]
    pub flusher_threads: Option<usize>,
    /// Partitions of the internal __consumer_offsets topic, used when the node creates it
    /// [default: 8].
    #[arg(long, env = "VLTAVA_OFFSETS_TOPIC_PARTITIONS")]
    pub offsets_topic_partitions: Option<u32>,
    /// Replicas of each __consumer_offsets partition, used when the cluster creates it, at most
    /// the number of cluster members; it is created once that many nodes are live [default: 3;
    /// a single node uses 1].
    #[arg(long, env = "VLTAVA_OFFSETS_TOPIC_REPLICATION_FACTOR")]
    pub offsets_topic_replication_factor: Option<u16>,
    /// Segment size of __consumer_offsets, used when the node creates it: compaction cleans
    /// only sealed segments [default: 16 MiB].
    #[arg(long, env = "VLTAVA_OFFSETS_TOPIC_SEGMENT_BYTES")]
    pub offsets_topic_segment_bytes: Option<u64>,
    /// How long an empty consumer group keeps its committed offsets, in ms [default: 7 days].
    #[arg(long, env = "VLTAVA_OFFSETS_RETENTION_MS")]
    pub offsets_retention_ms: Option<u64>,
    /// How often each partition deletes segments past its retention and rolls an old active
    /// segment, in ms (Kafka's log.retention.check.interval.ms) [default: 300000].
    #[arg(long, env = "VLTAVA_RETENTION_CHECK_INTERVAL_MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// How often group members heartbeat, in ms [default: 5000].
    #[arg(long, env = "VLTAVA_GROUP_HEARTBEAT_INTERVAL_MS")]
    pub group_heartbeat_interval_ms: Option<u64>,
    /// How long a member may go without a heartbeat when it asks for no session timeout of
    /// its own, in ms [default: 45000].
    #[arg(long, env = "VLTAVA_GROUP_SESSION_TIMEOUT_MS")]
    pub group_session_timeout_ms: Option<u64>,
    /// A bearer token the admin endpoint requires on every route [default: none].
    #[arg(long, env = "VLTAVA_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Serve the admin routes that inject faults (crash an actor). For tests only.
    #[arg(
        long,
        env = "VLTAVA_ENABLE_FAULT_INJECTION",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub enable_fault_injection: Option<bool>,
}

/// The same settings as read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    node_id: Option<u32>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    advertise: Option<String>,
    admin_listen: Option<String>,
    peer_listen: Option<String>,
    controller_quorum: Option<String>,
    metadata_snapshot_entries: Option<u64>,
    replica_lag_time_max_ms: Option<u64>,
    preferred_leader_return_ms: Option<u64>,
    log_format: Option<String>,
    durability: Option<String>,
    verify_reads: Option<bool>,
    allow_remote: Option<bool>,
    connections_max: Option<usize>,
    inflight_requests_max: Option<usize>,
    bytes_in_flight_max: Option<usize>,
    flusher_threads: Option<usize>,
    admin_token: Option<String>,
    enable_fault_injection: Option<bool>,
    offsets_topic_partitions: Option<u32>,
    offsets_topic_replication_factor: Option<u16>,
    offsets_retention_ms: Option<u64>,
    offsets_topic_segment_bytes: Option<u64>,
    retention_check_interval_ms: Option<u64>,
    group_heartbeat_interval_ms: Option<u64>,
    group_session_timeout_ms: Option<u64>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// The validated settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: u32,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub advertise: String,
    pub admin_listen: SocketAddr,
    /// The cluster settings, when a controller quorum is given.
    pub cluster: Option<ClusterConfig>,
    pub log_format: LogFormat,
    pub durability: Durability,
    pub verify_reads: bool,
    pub allow_remote: bool,
    pub connections_max: usize,
    pub inflight_requests_max: usize,
    pub bytes_in_flight_max: usize,
    pub flusher_threads: usize,
    pub admin_token: Option<String>,
    pub enable_fault_injection: bool,
    pub offsets_topic_partitions: u32,
    pub offsets_topic_replication_factor: u16,
    pub offsets_topic_segment_bytes: u64,
    pub offsets_retention: Duration,
    pub group_settings: GroupSettings,
    pub retention_check_interval: Duration,
}

fn parse_addr(what: &str, value: &str) -> anyhow::Result<SocketAddr> {
    value.parse().with_context(|| format!("bad {what} address {value:?} (expected HOST:PORT with a numeric IP, e.g. 127.0.0.1:9420)"))
}

/// Metadata log entries between snapshots by default (Raft's `SNAPSHOT_LOGS_SINCE_LAST`).
pub const METADATA_SNAPSHOT_ENTRIES_DEFAULT: u64 = 1024;
/// Fewer entries between snapshots would snapshot on nearly every change.
pub const METADATA_SNAPSHOT_ENTRIES_MIN: u64 = 8;
/// More would let the log (replayed at every start) grow long.
pub const METADATA_SNAPSHOT_ENTRIES_MAX: u64 = 1_000_000;

/// `--replica-lag-time-max-ms` by default: Kafka's 10 s.
pub const REPLICA_LAG_TIME_MAX_MS_DEFAULT: u64 = 10_000;
/// The shortest lag time: below a few fetch rounds (each up to 250 ms held by an idle leader)
/// an idle follower would flap in and out of the ISR.
pub const REPLICA_LAG_TIME_MAX_MS_MIN: u64 = 500;
/// The longest: an hour, past which a dead follower would hold every acks=all answer for
/// longer than any client waits.
pub const REPLICA_LAG_TIME_MAX_MS_MAX: u64 = 3_600_000;

/// `--preferred-leader-return-ms` by default: long enough that a node that restarts in a
/// loop does not drag leadership back and forth, short enough that a failover's imbalance
/// lasts seconds, not Kafka's five-minute check interval.
pub const PREFERRED_LEADER_RETURN_MS_DEFAULT: u64 = 30_000;
/// The longest: a day; 0 turns the return off.
pub const PREFERRED_LEADER_RETURN_MS_MAX: u64 = 86_400_000;

/// `--retention-check-interval-ms` by default: Kafka's 5 minutes.
pub const RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 300_000;
/// The shortest: each check lists a partition's segments on its log thread, so thousands of
/// partitions checking more often than ten times a second would keep a core busy.
pub const RETENTION_CHECK_INTERVAL_MS_MIN: u64 = 100;
/// The longest: a day, past which an old active segment would not roll, nor expire, for days.
pub const RETENTION_CHECK_INTERVAL_MS_MAX: u64 = 86_400_000;

/// How this node joins a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Where the node listens for its peers; its IP is also the address its outgoing peer
    /// connections bind to.
    pub peer_listen: SocketAddr,
    /// Every member of the controller quorum: node id -> peer address, this node included.
    pub quorum: std::collections::BTreeMap<u32, SocketAddr>,
    /// Metadata log entries between snapshots.
    pub snapshot_entries: u64,
    /// How long a follower may lag before it leaves the ISR.
    pub replica_lag_time_max: std::time::Duration,
    /// How long a preferred leader waits live and in sync before leadership returns to it;
    /// `None`: never.
    pub preferred_leader_return: Option<std::time::Duration>,
}

/// Parses `ID@HOST:PORT,...`: distinct ids and addresses, at most
/// `CONTROLLER_QUORUM_MEMBERS_MAX` members.
pub fn parse_quorum(value: &str) -> anyhow::Result<std::collections::BTreeMap<u32, SocketAddr>> {
    let mut quorum = std::collections::BTreeMap::new();
    for member in value.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (id, address) = member.split_once('@').with_context(|| {
            format!("bad controller quorum member {member:?} (expected ID@HOST:PORT, e.g. 1@127.0.0.1:9421)")
        })?;
        let id: u32 = id.parse().with_context(|| {
            format!("bad node id {id:?} in controller quorum member {member:?}")
        })?;
        let address = parse_addr("controller quorum member", address)?;
        if quorum.values().any(|a| *a == address) {
            bail!("controller quorum lists address {address} twice");
        }
        if quorum.insert(id, address).is_some() {
            bail!("controller quorum lists node id {id} twice");
        }
    }
    if quorum.is_empty() {
        bail!("controller quorum is empty (expected ID@HOST:PORT,...)");
    }
    if quorum.len() > CONTROLLER_QUORUM_MEMBERS_MAX {
        bail!(
            "controller quorum has {} members; at most {CONTROLLER_QUORUM_MEMBERS_MAX} are allowed",
            quorum.len()
        );
    }
    Ok(quorum)
}

fn parse_durability(value: &str) -> anyhow::Result<Durability> {
    match value {
        "fsync" => Ok(Durability::Fsync),
        "none" => Ok(Durability::None),
        other => {
            let ms = other
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .with_context(|| {
                    format!("bad durability {other:?} (expected fsync, interval:<ms> or none)")
                })?;
            Ok(Durability::Interval(Duration::from_millis(ms)))
        }
    }
}

impl NodeConfig {
    /// Merges flags (and their environment variables) over the file over the defaults, and
    /// checks the result.
    pub fn load(flags: NodeFlags) -> anyhow::Result<NodeConfig> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| format!("127.0.0.1:{CLIENT_PORT_DEFAULT}"));
        let listen = parse_addr("listen", &listen)?;
        let admin_listen = flags
            .admin_listen
            .or(file.admin_listen)
            .unwrap_or_else(|| format!("127.0.0.1:{ADMIN_PORT_DEFAULT}"));
        let admin_listen = parse_addr("admin listen", &admin_listen)?;
        let allow_remote = flags.allow_remote.or(file.allow_remote).unwrap_or(false);
        for (what, addr) in [("listen", listen), ("admin listen", admin_listen)] {
            if !addr.ip().is_loopback() && !allow_remote {
                bail!(
                    "{what} address {addr} is not loopback; nothing is authenticated yet, so pass --allow-remote to accept it"
                );
            }
        }
        let node_id = flags.node_id.or(file.node_id);
        let cluster = match flags.controller_quorum.or(file.controller_quorum) {
            None => None,
            Some(quorum) => {
                let quorum = parse_quorum(&quorum)?;
                // Two nodes that both defaulted to id 1 would each take the other for
                // itself; with a quorum the id must be said.
                let node_id = node_id.context(
                    "--node-id is required with --controller-quorum (node ids have no default in a cluster)",
                )?;
                let peer_listen = flags
                    .peer_listen
                    .or(file.peer_listen)
                    .unwrap_or_else(|| format!("127.0.0.1:{PEER_PORT_DEFAULT}"));
                let peer_listen = parse_addr("peer listen", &peer_listen)?;
                if !peer_listen.ip().is_loopback() && !allow_remote {
                    bail!(
                        "peer listen address {peer_listen} is not loopback; nothing is authenticated yet, so pass --allow-remote to accept it"
                    );
                }
                match quorum.get(&node_id) {
                    None => bail!(
                        "node {node_id} is not in the controller quorum ({}); every node of a cluster is a quorum member for now",
                        quorum
                            .keys()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Some(address) if *address != peer_listen => bail!(
                        "the controller quorum says node {node_id} is at {address}, but --peer-listen is {peer_listen}"
                    ),
                    Some(_) => {}
                }
                let snapshot_entries = flags
                    .metadata_snapshot_entries
                    .or(file.metadata_snapshot_entries)
                    .unwrap_or(METADATA_SNAPSHOT_ENTRIES_DEFAULT);
                if !(METADATA_SNAPSHOT_ENTRIES_MIN..=METADATA_SNAPSHOT_ENTRIES_MAX)
                    .contains(&snapshot_entries)
                {
                    bail!(
                        "metadata snapshot entries {snapshot_entries} is outside {METADATA_SNAPSHOT_ENTRIES_MIN}..={METADATA_SNAPSHOT_ENTRIES_MAX}"
                    );
                }
                let lag_ms = flags
                    .replica_lag_time_max_ms
                    .or(file.replica_lag_time_max_ms)
                    .unwrap_or(REPLICA_LAG_TIME_MAX_MS_DEFAULT);
                if !(REPLICA_LAG_TIME_MAX_MS_MIN..=REPLICA_LAG_TIME_MAX_MS_MAX).contains(&lag_ms) {
                    bail!(
                        "replica lag time {lag_ms} ms is outside {REPLICA_LAG_TIME_MAX_MS_MIN}..={REPLICA_LAG_TIME_MAX_MS_MAX}"
                    );
                }
                let return_ms = flags
                    .preferred_leader_return_ms
                    .or(file.preferred_leader_return_ms)
                    .unwrap_or(PREFERRED_LEADER_RETURN_MS_DEFAULT);
                if return_ms > PREFERRED_LEADER_RETURN_MS_MAX {
                    bail!(
                        "preferred leader return {return_ms} ms is above {PREFERRED_LEADER_RETURN_MS_MAX} (0 turns it off)"
                    );
                }
                Some(ClusterConfig {
                    peer_listen,
                    quorum,
                    snapshot_entries,
                    replica_lag_time_max: std::time::Duration::from_millis(lag_ms),
                    preferred_leader_return: (return_ms > 0)
                        .then(|| std::time::Duration::from_millis(return_ms)),
                })
            }
        };
        let log_format = match flags.log_format.or(file.log_format).as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("bad log format {other:?} (expected human or json)"),
        };
        let durability = parse_durability(
            flags
                .durability
                .or(file.durability)
                .as_deref()
                .unwrap_or("fsync"),
        )?;
        let positive = |what: &str, value: usize| -> anyhow::Result<usize> {
            if value == 0 {
                bail!("{what} must be at least 1");
            }
            Ok(value)
        };
        let admin_token = flags.admin_token.or(file.admin_token);
        if admin_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            bail!("admin token must not be empty");
        }
        let enable_fault_injection = flags
            .enable_fault_injection
            .or(file.enable_fault_injection)
            .unwrap_or(false);
        let offsets_topic_partitions = flags
            .offsets_topic_partitions
            .or(file.offsets_topic_partitions)
            .unwrap_or(OFFSETS_TOPIC_PARTITIONS_DEFAULT);
        if !(1..=1024).contains(&offsets_topic_partitions) {
            bail!("offsets_topic_partitions must be between 1 and 1024");
        }
        let offsets_topic_replication_factor = flags
            .offsets_topic_replication_factor
            .or(file.offsets_topic_replication_factor)
            .unwrap_or(OFFSETS_TOPIC_REPLICATION_FACTOR_DEFAULT);
        if offsets_topic_replication_factor == 0 {
            bail!("offsets_topic_replication_factor must be at least 1");
        }
        let offsets_topic_segment_bytes = flags
            .offsets_topic_segment_bytes
            .or(file.offsets_topic_segment_bytes)
            .unwrap_or(OFFSETS_TOPIC_SEGMENT_BYTES);
        if !(u64::from(SEGMENT_BYTES_MIN)..=u64::from(u32::MAX))
            .contains(&offsets_topic_segment_bytes)
        {
            bail!("offsets_topic_segment_bytes must be between 65536 and 4294967295");
        }
        let offsets_retention = Duration::from_millis(
            flags
                .offsets_retention_ms
                .or(file.offsets_retention_ms)
                .unwrap_or(OFFSETS_RETENTION_DEFAULT.as_millis() as u64),
        );
        let retention_check_interval_ms = flags
            .retention_check_interval_ms
            .or(file.retention_check_interval_ms)
            .unwrap_or(RETENTION_CHECK_INTERVAL_MS_DEFAULT);
        if !(RETENTION_CHECK_INTERVAL_MS_MIN..=RETENTION_CHECK_INTERVAL_MS_MAX)
            .contains(&retention_check_interval_ms)
        {
            bail!(
                "retention check interval {retention_check_interval_ms} ms is outside {RETENTION_CHECK_INTERVAL_MS_MIN}..={RETENTION_CHECK_INTERVAL_MS_MAX}"
            );
        }
        let defaults = GroupSettings::default();
        let group_settings = GroupSettings {
            heartbeat_interval: Duration::from_millis(
                flags
                    .group_heartbeat_interval_ms
                    .or(file.group_heartbeat_interval_ms)
                    .unwrap_or(defaults.heartbeat_interval.as_millis() as u64),
            ),
            session_timeout: Duration::from_millis(
                flags
                    .group_session_timeout_ms
                    .or(file.group_session_timeout_ms)
                    .unwrap_or(defaults.session_timeout.as_millis() as u64),
            ),
            rebalance_timeout: defaults.rebalance_timeout,
        };
        if group_settings.heartbeat_interval < Duration::from_millis(100)
            || group_settings.heartbeat_interval >= group_settings.session_timeout
        {
            bail!("group_heartbeat_interval_ms must be at least 100 and below the session timeout");
        }
        if !(SESSION_TIMEOUT_MIN..=SESSION_TIMEOUT_MAX).contains(&group_settings.session_timeout) {
            bail!(
                "group_session_timeout_ms must be between {} and {}",
                SESSION_TIMEOUT_MIN.as_millis(),
                SESSION_TIMEOUT_MAX.as_millis()
            );
        }
        Ok(NodeConfig {
            verify_reads: flags.verify_reads.or(file.verify_reads).unwrap_or(false),
            offsets_topic_partitions,
            offsets_topic_replication_factor,
            offsets_topic_segment_bytes,
            offsets_retention,
            group_settings,
            retention_check_interval: Duration::from_millis(retention_check_interval_ms),
            admin_token,
            enable_fault_injection,
            node_id: node_id.unwrap_or(1),
            cluster,
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("vltava-data")),
            advertise: flags
                .advertise
                .or(file.advertise)
                .unwrap_or_else(|| listen.to_string()),
            listen,
            admin_listen,
            log_format,
            durability,
            allow_remote,
            connections_max: positive(
                "connections_max",
                flags
                    .connections_max
                    .or(file.connections_max)
                    .unwrap_or(CONNECTIONS_MAX_DEFAULT),
            )?,
            inflight_requests_max: positive(
                "inflight_requests_max",
                flags
                    .inflight_requests_max
                    .or(file.inflight_requests_max)
                    .unwrap_or(INFLIGHT_REQUESTS_MAX_DEFAULT),
            )?,
            bytes_in_flight_max: positive(
                "bytes_in_flight_max",
                flags
                    .bytes_in_flight_max
                    .or(file.bytes_in_flight_max)
                    .unwrap_or(BYTES_IN_FLIGHT_MAX_DEFAULT),
            )?,
            flusher_threads: positive(
                "flusher_threads",
                flags
                    .flusher_threads
                    .or(file.flusher_threads)
                    .unwrap_or(FLUSHER_THREADS_DEFAULT),
            )?,
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("bad config file {}", path.display()))
}
