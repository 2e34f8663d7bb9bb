//! The node's settings: command-line flags, each also an environment variable (`VLTAVA_…`)
//! and a key in an optional TOML file (`--config`). Precedence: flag or environment variable,
//! then the file, then the embedded default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use vltava_actors::partition::Durability;

/// Default client port.
pub const CLIENT_PORT_DEFAULT: u16 = 9420;
/// Default admin HTTP port.
pub const ADMIN_PORT_DEFAULT: u16 = 9422;
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
    log_format: Option<String>,
    durability: Option<String>,
    allow_remote: Option<bool>,
    connections_max: Option<usize>,
    inflight_requests_max: Option<usize>,
    bytes_in_flight_max: Option<usize>,
    flusher_threads: Option<usize>,
    admin_token: Option<String>,
    enable_fault_injection: Option<bool>,
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
    pub log_format: LogFormat,
    pub durability: Durability,
    pub allow_remote: bool,
    pub connections_max: usize,
    pub inflight_requests_max: usize,
    pub bytes_in_flight_max: usize,
    pub flusher_threads: usize,
    pub admin_token: Option<String>,
    pub enable_fault_injection: bool,
}

fn parse_addr(what: &str, value: &str) -> anyhow::Result<SocketAddr> {
    value.parse().with_context(|| format!("bad {what} address {value:?} (expected HOST:PORT with a numeric IP, e.g. 127.0.0.1:9420)"))
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
        Ok(NodeConfig {
            admin_token,
            enable_fault_injection,
            node_id: flags.node_id.or(file.node_id).unwrap_or(1),
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
