//! `vltava-node`: the vltava broker daemon, and its operator tools.
//!
//! With no subcommand it runs a node: settings from flags, environment and an optional TOML
//! file (`config`), a locked data directory (`data_dir`), the supervision tree of
//! `vltava-actors`, and a clean shutdown on SIGTERM or SIGINT. `dump-log` prints a segment.
//! `log_format` keeps every human log event on one line, whatever text it carries.

mod admin;
mod config;
mod data_dir;
mod log_format;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::Arc;

use vltava_actors::node::{ClusterOptions, Node, NodeOptions};
use vltava_actors::peer::ClusterId;
use vltava_storage::RealStorage;

use crate::config::{LogFormat, NodeConfig, NodeFlags};
use crate::data_dir::{DataDir, NewDirectory};

/// The vltava broker: a partitioned, replicated commit log.
#[derive(Debug, Parser)]
#[command(name = "vltava-node", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: NodeFlags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a segment file's batches (offsets, leader epoch, timestamps, record count, CRC
    /// check, file position), as kafka-dump-log does.
    DumpLog {
        /// A segment file (`<20-digit base offset>.log`) in a partition directory.
        path: PathBuf,
        /// Also print every record (key, value, headers), UTF-8 as text, other bytes as hex.
        #[arg(long)]
        records: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::DumpLog { path, records }) => dump_log(&path, records),
        None => run_node(cli.flags),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("vltava-node: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dump_log(path: &std::path::Path, records: bool) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let summary = vltava_storage::dump::dump_segment(&RealStorage, path, records, &mut out)
        .with_context(|| format!("cannot dump {}", path.display()))?;
    out.flush().context("cannot write to stdout")?;
    // A damaged segment is worth a non-zero exit, so scripts notice.
    Ok(if summary.bad_batches > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn init_tracing(format: LogFormat) {
    // `VLTAVA_LOG` (or `RUST_LOG`) takes a tracing filter; openraft logs routine events at
    // WARN, so it is quieted by default.
    let filter = std::env::var("VLTAVA_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,openraft=error".into());
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => {
            use tracing_subscriber::field::MakeExt;
            builder
                .fmt_fields(
                    tracing_subscriber::fmt::format::debug_fn(log_format::write_field)
                        .delimited(" "),
                )
                .init();
        }
        LogFormat::Json => builder.json().init(),
    }
}

fn run_node(flags: NodeFlags) -> anyhow::Result<ExitCode> {
    let config = NodeConfig::load(flags)?;
    init_tracing(config.log_format);
    // In a cluster the lowest member makes the cluster id for its new directory; the others
    // learn it from the quorum.
    let new_directory = match &config.cluster {
        Some(cluster) if cluster.quorum.keys().next() != Some(&config.node_id) => {
            NewDirectory::LearnsClusterId
        }
        _ => NewDirectory::MakesClusterId,
    };
    let data_dir = DataDir::open(&config.data_dir, config.node_id, new_directory)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vltava-worker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, data_dir))
}

async fn serve(config: NodeConfig, data_dir: DataDir) -> anyhow::Result<ExitCode> {
    // Signals are watched before anything listens, so a SIGTERM that arrives during start-up
    // still leads to a clean shutdown rather than the default abrupt exit.
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is the port in use?)", config.listen))?;
    // Bound before the node starts, so a taken admin port fails start-up with a clear line
    // instead of leaving a node without its endpoint.
    let admin_listener = std::net::TcpListener::bind(config.admin_listen).with_context(|| {
        format!(
            "cannot listen on {} for the admin endpoint (is the port in use?)",
            config.admin_listen
        )
    })?;
    let admin_addr = admin_listener
        .local_addr()
        .context("cannot read the admin endpoint's address")?;
    if config.allow_remote && !config.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.listen, "listening beyond loopback: nothing is authenticated yet");
    }
    let (advertised_host, advertised_port) = split_host_port(&config.advertise)?;
    let cluster = match &config.cluster {
        None => None,
        Some(cluster) => {
            let peer_listener = tokio::net::TcpListener::bind(cluster.peer_listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} for peers (is the port in use?)",
                        cluster.peer_listen
                    )
                })?;
            let cluster_id = match &data_dir.cluster_id {
                Some(id) => ClusterId::known(id.clone()),
                None => ClusterId::pending(Arc::new(data_dir.record_cluster_id())),
            };
            tracing::info!(peer_listen = %cluster.peer_listen, quorum = ?cluster.quorum, "joining the cluster");
            Some(ClusterOptions {
                peer_listener,
                quorum: cluster.quorum.clone(),
                cluster_id,
                snapshot_entries: cluster.snapshot_entries,
                replica_lag_time_max: cluster.replica_lag_time_max,
                preferred_leader_return: cluster.preferred_leader_return,
            })
        }
    };
    let mut node = Node::start(NodeOptions {
        node_id: config.node_id,
        cluster_id: data_dir.cluster_id.clone().unwrap_or_default(),
        cluster,
        data_dir: data_dir.path.clone(),
        listener,
        advertised_host,
        advertised_port,
        durability: config.durability,
        verify_reads: config.verify_reads,
        connections_max: config.connections_max,
        inflight_requests_max: config.inflight_requests_max,
        bytes_in_flight_max: config.bytes_in_flight_max,
        flusher_threads: config.flusher_threads,
        group_settings: config.group_settings,
        offsets_topic_partitions: config.offsets_topic_partitions,
        offsets_topic_replication_factor: config.offsets_topic_replication_factor,
        offsets_topic_segment_bytes: config.offsets_topic_segment_bytes,
        offsets_retention: config.offsets_retention,
        retention_check_interval: config.retention_check_interval,
    })
    .await
    .context("node failed to start")?;
    let admin = admin::start(
        admin_listener,
        node.view.clone(),
        admin::AdminOptions {
            token: config.admin_token.clone(),
            fault_injection: config.enable_fault_injection,
        },
    )
    .context("cannot start the admin endpoint")?;
    if config.enable_fault_injection {
        tracing::warn!("fault injection is enabled: the admin endpoint can crash actors");
    }
    // A line scripts and tests can wait for.
    tracing::info!(listen = %node.local_addr, admin = %admin_addr, data_dir = %data_dir.path.display(), cluster_id = %node.view.cluster_id, node_id = config.node_id, "vltava-node ready");
    let code = tokio::select! {
        _ = interrupt.recv() => { tracing::info!("SIGINT: shutting down"); ExitCode::SUCCESS }
        _ = terminate.recv() => { tracing::info!("SIGTERM: shutting down"); ExitCode::SUCCESS }
        reason = node.failed() => { tracing::error!(%reason, "shutting down after a fatal failure"); ExitCode::FAILURE }
    };
    node.shutdown().await;
    admin.stop(true).await;
    drop(data_dir);
    Ok(code)
}

fn split_host_port(address: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("bad advertise address {address:?} (expected HOST:PORT)"))?;
    let port = port
        .parse()
        .with_context(|| format!("bad port in advertise address {address:?}"))?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    ))
}
