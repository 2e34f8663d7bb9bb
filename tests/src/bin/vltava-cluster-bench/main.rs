//! `vltava-cluster-bench`: the cluster metadata benchmarks of issue 12 (docs/benchmarks.md,
//! "Cluster metadata (issue 12)"). Each scenario starts a fresh 3-node cluster of real
//! `vltava-node` processes on 127.0.0.1, .2 and .3 with temporary data directories
//! (`vltava_tests::cluster::TestCluster`, default flags: fsync durability) and measures with
//! the Rust client's `Connection`, one persistent connection per role:
//!
//! - `failover`: SIGKILL the controller, time until a topic creation through a survivor
//!   succeeds (retrying retriable errors every `--retry-ms`), restart the node and wait until
//!   every node lists all three again; `--rounds` times.
//! - `propagation`: create topics one at a time through node 1; for each, the time from the
//!   acknowledgement until Metadata of nodes 2 and 3 both show it (polled every `--poll-ms`).
//! - `throughput`: `--creations` one-partition topics by `--creators` concurrent creators,
//!   through the controller and then (on a new cluster) through a node that forwards.
//! - `replication` (issue 13; not part of `all`, as it takes minutes and gigabytes): RF 3
//!   produce throughput (acks=all and acks=1), paced latency, replication lag and follower
//!   catch-up, against a single node measured in the same run, with `vltava-bench` as the load
//!   generator (see `replication`).
//! - `partition-failover` (issue 14; not part of `all`): SIGKILL the node leading a partition
//!   of an RF 3 topic (`--kill leader`: not the controller; `--kill controller`), time until
//!   an acks=all write to it is acknowledged by its new leader; `--rounds` times.
//! - `group-failover` (issue 14; not part of `all`): paced acks=all producers (one per
//!   partition) and a fresh two-member consumer group per round; SIGKILL the node coordinating the group, time how
//!   long the group stops consuming and committing (see `group_failover`); `--rounds` times;
//!   `--commit every-poll` (the members commit after every poll) or `auto` (the client's
//!   default auto commit).
//!
//! The binaries come from `vltava_tests::bin_dir()`: the target directory's profile that this
//! program was built with (so `cargo run --release` uses `target/release`), or
//! `VLTAVA_BIN_DIR`. Build the node first: `cargo build --release -p vltava-node`.
//!
//! Cleanup: the clusters kill their nodes and remove their data directories when dropped,
//! which happens on success, on an error and on a panic (unwinding). SIGINT and SIGTERM set a
//! flag that every wait checks, so an interrupted run also ends through the drops instead of
//! leaving nodes running.

mod failover;
mod group_failover;
mod partition_failover;
mod propagation;
mod replication;
mod stats;
mod throughput;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use tokio::runtime::Runtime;
use vltava_client::ClientError;
use vltava_client::connection::Connection;
use vltava_messages::ErrorCode;
use vltava_messages::protocol::{CreateTopicsRequest, MetadataRequest, MetadataResponse, NewTopic};
use vltava_tests::cluster::TestCluster;

/// The client id of every connection, so that the nodes' logs tell the bench apart.
const CLIENT_ID: &str = "cluster-bench";
/// Members of every cluster: the smallest quorum that survives the loss of one.
const CLUSTER_SIZE: u32 = 3;
/// How long one request may take. A creation waits for its partition to open; five seconds
/// is far above what a healthy cluster needs (milliseconds) and short enough that a request
/// lost in a failover is retried within the round.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cluster may take to settle (every node lists every node and names the same
/// controller) after a start or a restart: generous for a loaded 2-core machine.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often settling is checked.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// Set by SIGINT or SIGTERM; every loop checks it and returns an error, so the clusters are
/// dropped (nodes killed, data removed) on the way out.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    Failover,
    Propagation,
    Throughput,
    Replication,
    PartitionFailover,
    GroupFailover,
}

/// Group failover: how the members commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CommitMode {
    /// After every poll that returned events, synchronously (auto commit off).
    EveryPoll,
    /// The client's default: auto commit from `poll()` every 5 s.
    Auto,
}

/// Partition failover: whose node is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KillTarget {
    /// A partition leader's node that is not the controller.
    Leader,
    /// The controller's node, which leads a partition too.
    Controller,
}

#[derive(Debug, Parser)]
#[command(about = "Cluster metadata benchmarks (issue 12) on a real 3-node loopback cluster")]
struct Args {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Failover, partition failover and group failover: kills.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Partition failover: whose node is killed.
    #[arg(long, value_enum, default_value = "leader")]
    kill: KillTarget,
    /// Group failover: how the members commit.
    #[arg(long, value_enum, default_value = "every-poll")]
    commit: CommitMode,
    /// Failover: the pause between attempts of the creation (the issue says 10 to 20 ms).
    #[arg(long, default_value_t = 10)]
    retry_ms: u64,
    /// Failover: how long to wait after the restarted node is listed again before the next
    /// kill. 0 kills as soon as the cluster has settled, which is right after a restart;
    /// a few seconds let the controller's heartbeats to the restarted node return to their
    /// normal pace first (see docs/benchmarks.md on why that changes the figure).
    #[arg(long, default_value_t = 0)]
    settle_ms: u64,
    /// Failover and group failover: a directory to write each node's log into at the end of
    /// every round (`round-NN-node-M.log`), to read why an election was refused (openraft logs
    /// its reasons at info). Group failover writes a failed round's logs even without it, into
    /// a directory under the system's temporary directory.
    #[arg(long)]
    log_dir: Option<std::path::PathBuf>,
    /// Propagation: topics created through node 1, one at a time.
    #[arg(long, default_value_t = 200)]
    topics: u32,
    /// Propagation: the pause between two Metadata polls of one node.
    #[arg(long, default_value_t = 1)]
    poll_ms: u64,
    /// Throughput: topics created per target node.
    #[arg(long, default_value_t = 500)]
    creations: u32,
    /// Throughput: concurrent creators, one connection each.
    #[arg(long, default_value_t = 8)]
    creators: u32,
    /// Replication: how many times the whole scenario runs, each on a fresh cluster.
    #[arg(long, default_value_t = 2)]
    repeats: u32,
    /// Replication: events of 1 KiB per throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Replication: how long the paced run lasts.
    #[arg(long, default_value_t = 20)]
    paced_s: u64,
    /// Replication: events of 1 KiB produced while a follower is down.
    #[arg(long, default_value_t = 1_000_000)]
    catch_up_events: u64,
    /// Replication: the period of the admin-endpoint sampler (lag) and of the catch-up poll.
    #[arg(long, default_value_t = 10)]
    sample_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vltava-cluster-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rounds > 0 && args.topics > 0 && args.creations > 0);
    anyhow::ensure!(args.creators > 0, "--creators must be at least 1");
    anyhow::ensure!(args.repeats > 0 && args.events > 0 && args.catch_up_events > 0);
    anyhow::ensure!(args.paced_s > 0 && args.sample_ms > 0);
    // Two workers, as the machine the figures come from has two cores; the nodes compete
    // for the same cores, which the conditions in docs/benchmarks.md say.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.spawn(watch_signals());
    let node = vltava_tests::bin_dir().join("vltava-node");
    if !node.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p vltava-node) or set \
             VLTAVA_BIN_DIR",
            node.display()
        );
    }
    println!("vltava-cluster-bench: node binary {}", node.display());
    println!("load average at start: {}", load_average());
    let run_all = args.scenario == Scenario::All;
    if run_all || args.scenario == Scenario::Propagation {
        let report = propagation::run(&rt, args)?;
        report.print();
    }
    if run_all || args.scenario == Scenario::Throughput {
        let report = throughput::run(&rt, args)?;
        report.print();
    }
    if run_all || args.scenario == Scenario::Failover {
        let report = failover::run(&rt, args)?;
        report.print();
    }
    if args.scenario == Scenario::Replication {
        let report = replication::run(&rt, args)?;
        report.print();
    }
    if args.scenario == Scenario::PartitionFailover {
        let report = partition_failover::run(&rt, args)?;
        report.print();
    }
    if args.scenario == Scenario::GroupFailover {
        let report = group_failover::run(&rt, args)?;
        report.print();
    }
    println!("load average at end: {}", load_average());
    Ok(())
}

/// Sets `INTERRUPTED` on SIGINT or SIGTERM (replacing their default of ending the process at
/// once, which would leave the nodes running and their data behind).
async fn watch_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("vltava-cluster-bench: cannot watch signals; Ctrl-C may leave nodes behind");
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("vltava-cluster-bench: interrupted, stopping the cluster");
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// An error once the run was interrupted.
fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// `/proc/loadavg`'s three averages, for the conditions of a run.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Starts a fresh cluster and waits until it has settled; returns it with its controller.
fn start_cluster(rt: &Runtime) -> anyhow::Result<(TestCluster, u32)> {
    check_interrupted()?;
    let started = Instant::now();
    // The harness panics if a node does not start; the panic unwinds through its drops,
    // which kill the members already started.
    let cluster = TestCluster::start(CLUSTER_SIZE, &[]);
    let controller = rt.block_on(settle(&cluster.bootstrap()))?;
    println!(
        "  cluster of {CLUSTER_SIZE} started and settled in {:?}, controller node {controller}",
        started.elapsed()
    );
    Ok((cluster, controller))
}

/// Waits until every node in `addrs` answers Metadata listing all of them and naming the same
/// controller; returns that controller.
async fn settle(addrs: &[String]) -> anyhow::Result<u32> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = String::new();
    loop {
        check_interrupted()?;
        let mut controllers = Vec::new();
        for addr in addrs {
            match fresh_metadata(addr).await {
                Ok(answer) if answer.nodes.len() == addrs.len() => {
                    controllers.push(answer.controller_id.map(|n| n.0));
                }
                Ok(answer) => {
                    last = format!("{addr} lists {} nodes", answer.nodes.len());
                    controllers.push(None);
                }
                Err(e) => {
                    last = format!("{addr}: {e}");
                    controllers.push(None);
                }
            }
        }
        if let Some(Some(first)) = controllers.first()
            && controllers.iter().all(|c| *c == Some(*first))
        {
            return Ok(*first);
        }
        if Instant::now() >= deadline {
            bail!("the cluster did not settle within {SETTLE_TIMEOUT:?}: {last}");
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// Metadata (nodes and controller only) over a new connection.
async fn fresh_metadata(addr: &str) -> Result<MetadataResponse, ClientError> {
    let conn = Connection::connect(addr, CLIENT_ID).await?;
    conn.send(
        &MetadataRequest {
            topics: Some(Vec::new()),
        },
        REQUEST_TIMEOUT,
    )
    .await
}

/// Creates a one-partition topic through `conn`; a topic-level error becomes
/// `ClientError::Server`, like a request-level one.
async fn create_topic(conn: &Connection, name: &str) -> Result<(), ClientError> {
    let request = CreateTopicsRequest {
        topics: vec![NewTopic {
            name: name.to_owned(),
            partitions: Some(1),
            replication_factor: Some(1),
            configs: Default::default(),
        }],
        timeout_ms: REQUEST_TIMEOUT.as_millis() as u32,
        validate_only: false,
    };
    let answer = conn.send(&request, REQUEST_TIMEOUT).await?;
    match answer.topics.into_iter().find_map(|t| t.error) {
        Some(error) => Err(ClientError::Server(error)),
        None => Ok(()),
    }
}

/// Whether `error` says the topic exists: a retried creation whose first attempt was made.
fn already_exists(error: &ClientError) -> bool {
    error.code() == Some(ErrorCode::TopicAlreadyExists)
}

/// A short name for an error, to count the kinds seen during a failover.
fn error_kind(error: &ClientError) -> String {
    match error {
        ClientError::Server(e) => e.name.clone(),
        ClientError::Connect { .. } => "Connect".into(),
        ClientError::ConnectionLost(_) => "ConnectionLost".into(),
        ClientError::Timeout(_) => "Timeout".into(),
        ClientError::NoNodeAvailable(_) => "NoNodeAvailable".into(),
        other => format!("{other}"),
    }
}
