//! `vltava`: the command line for people and scripts.
//!
//! Exit codes: 0 success; 1 the cluster or the client refused or failed (one line on stderr);
//! 2 bad usage; 3 no node of the cluster could be reached. In `--format json` mode stdout
//! holds only JSON, one object per line.
//!
//! Logs of the client library (group joins, assignments, revocations, retries) go to stderr
//! when `VLTAVA_LOG` is set to a filter such as `info` or `vltava_client=debug`; by default
//! there are none.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use vltava_client::admin::ReassignmentWait;
use vltava_client::admin_http::admin_get;
use vltava_client::{
    Admin, Assignor, ClientError, Cluster, Consumer, ConsumerConfig, ConsumerRecord, GroupConfig,
    GroupConsumer, OffsetReset, Producer, ProducerConfig, ProducerRecord, SeekTo,
};
use vltava_messages::protocol::{
    Acks, DescribeClusterResponse, DescribeGroupsResponse, GroupDescription, ResetOffsetsResponse,
    ResetTo, TopicPartitions,
};
use vltava_messages::{Compression, NodeId, Offset};

/// How long `partition reassign` waits for a move by default: the new replicas copy the
/// partition's whole log first, which at the catch-up rates measured (over 250 MB/s) takes
/// about a minute for 10 GiB; five minutes, the longest admin timeout the wire allows, leaves
/// room for a loaded cluster, and `--timeout-ms` sets more for larger partitions.
const REASSIGN_WAIT_MS_DEFAULT: u64 = 300_000;

/// How long `consume --group` may take to commit and leave after a signal; a second signal
/// stops at once.
const GROUP_CLOSE_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Debug, Parser)]
#[command(
    name = "vltava",
    version,
    about = "The vltava command line: topics, partitions, produce, consume, groups, cluster, admin"
)]
struct Cli {
    /// Nodes to bootstrap from, comma-separated.
    #[arg(
        long,
        env = "VLTAVA_BOOTSTRAP",
        default_value = "127.0.0.1:9420",
        global = true
    )]
    bootstrap: String,
    /// The node's admin endpoint (for `admin` commands).
    #[arg(
        long,
        env = "VLTAVA_ADMIN",
        default_value = "127.0.0.1:9422",
        global = true
    )]
    admin: String,
    /// The admin endpoint's bearer token, if the node requires one.
    #[arg(long, env = "VLTAVA_ADMIN_TOKEN", global = true)]
    admin_token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe, alter and delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Move partitions' leadership (to a given in-sync replica, or back to the first replica)
    /// or their replicas (to other nodes).
    Partition {
        #[command(subcommand)]
        command: PartitionCommand,
    },
    /// Send one event per line of standard input.
    Produce(ProduceArgs),
    /// Print events as they are read.
    Consume(ConsumeArgs),
    /// List, describe and delete consumer groups; reset their committed offsets.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Describe the cluster: nodes, controller, Raft state, every partition's leader.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Look inside a node through its admin endpoint.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Print the node's actor tree.
    Actors {
        /// Only actors of this kind (Partition, ClientSession, ...), listed flat.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print one actor: counters, processing times, published state, children.
    Actor {
        id: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The cluster as the first bootstrap node sees it: cluster id, nodes, the active
    /// controller, that node's Raft term and indexes, and every partition's leader, replicas,
    /// in-sync replicas and leader epoch. Exits 1 if a named topic is unknown.
    Describe {
        /// Only this topic (repeatable); by default every topic, as many as one answer holds.
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// `json` prints the DescribeCluster answer as it came.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        #[arg(long, default_value_t = 1)]
        replication_factor: u16,
        /// A topic config, KEY=VALUE (repeatable), e.g. retention.ms=86400000.
        #[arg(long = "config", value_parser = parse_pair)]
        configs: Vec<(String, String)>,
    },
    /// List topics.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show a topic's partitions and configs.
    Describe {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Change a topic's configs or raise its partition count.
    Alter {
        name: String,
        /// Set a config, KEY=VALUE (repeatable).
        #[arg(long = "set", value_parser = parse_pair)]
        set: Vec<(String, String)>,
        /// Return a config to its default (repeatable).
        #[arg(long = "delete")]
        delete: Vec<String>,
        /// The new, larger partition count.
        #[arg(long)]
        partitions: Option<u32>,
    },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum PartitionCommand {
    /// Move a partition's leadership to NODE, one of its in-sync replicas (a controlled move:
    /// no acknowledged write is lost; producers follow the new leader). Exits 1 if NODE is not
    /// an in-sync replica (retry once it has caught up) or not a replica at all.
    ElectLeader {
        topic: String,
        partition: u32,
        /// The node that is to lead the partition.
        #[arg(long)]
        to: u32,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Move partitions back to their first replica: every partition of the named topics, or of
    /// the whole cluster when none is named. Prints one line per partition that moved or could
    /// not; exits 1 if any could not.
    ElectPreferred {
        topics: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Move a partition to other replicas, the first of them its preferred leader: the new
    /// ones copy the log and join the in-sync replicas, then the old ones leave (and delete
    /// their copy); the leadership moves to the first new replica if the leader leaves. Waits
    /// until the move completes and prints where the partition is. Exits 1 if the target is
    /// refused (a node twice, a node not in the cluster), if another request replaced the move,
    /// or if the move is still under way at the timeout (it goes on: see `topic describe`).
    Reassign {
        topic: String,
        partition: u32,
        /// The target replicas, comma-separated, e.g. 2,3,1.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<u32>,
        /// How long to wait for the move to complete.
        #[arg(long, default_value_t = REASSIGN_WAIT_MS_DEFAULT)]
        timeout_ms: u64,
        /// Return once the move has started.
        #[arg(long)]
        no_wait: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Args)]
struct ProduceArgs {
    topic: String,
    /// The key of every event.
    #[arg(long)]
    key: Option<String>,
    /// Split each line at the first SEPARATOR into key and value.
    #[arg(long)]
    key_separator: Option<String>,
    /// A header, KEY=VALUE (repeatable).
    #[arg(long = "header", value_parser = parse_pair)]
    headers: Vec<(String, String)>,
    /// Send to this partition instead of choosing by key.
    #[arg(long)]
    partition: Option<u32>,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    acks: String,
    /// Compression of each batch: none, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// List every group of the cluster.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show members, assignments, committed offsets with lag, and recent rebalances.
    Describe {
        #[arg(required = true)]
        groups: Vec<String>,
        /// `json` prints the DescribeGroups answer as it came.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Move the committed offsets of an empty group for one topic.
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// earliest, latest or an offset; with --by-time a time: ms since the Unix epoch, a UTC
        /// time YYYY-MM-DD[THH:MM[:SS[.mmm]]Z], or a time ago -N<unit> (unit ms, s, m, h or d;
        /// e.g. --to=-2h).
        #[arg(long, allow_hyphen_values = true)]
        to: String,
        /// Read --to as a time: each partition goes to its first event at or after it (or to
        /// its end if there is none).
        #[arg(long)]
        by_time: bool,
        /// Only this partition (repeatable; default: all).
        #[arg(long = "partition")]
        partitions: Vec<u32>,
        /// Show the new offsets without committing them.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Delete empty groups and their committed offsets.
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    /// The topics to read (without --group, reading several topics reads all their
    /// partitions).
    #[arg(required_unless_present = "pattern")]
    topics: Vec<String>,
    /// Read only this partition (default: all).
    #[arg(long, conflicts_with = "group")]
    partition: Option<u32>,
    /// Where to start: earliest, latest or an offset.
    #[arg(long, default_value = "earliest", conflicts_with = "group")]
    offset: String,
    /// Start at the first event at or after this time (ms since the Unix epoch).
    #[arg(long, conflicts_with = "group")]
    from_timestamp: Option<i64>,
    /// Read as a member of this consumer group: the group's coordinator assigns the
    /// partitions, positions are committed as events are printed (every 5 s and on exit),
    /// and SIGINT or SIGTERM commits and leaves the group before exiting.
    #[arg(long)]
    group: Option<String>,
    /// With --group: every topic whose name matches this glob (`*` any run of characters, `?`
    /// one character), now and as topics are created.
    #[arg(long, requires = "group", conflicts_with = "topics")]
    pattern: Option<String>,
    /// With --group: a static member id that survives restarts (its partitions wait for it
    /// for the session timeout).
    #[arg(long, requires = "group")]
    instance_id: Option<String>,
    /// With --group: where partitions without a committed offset start, earliest or latest
    /// (default earliest).
    #[arg(long, requires = "group")]
    from: Option<String>,
    /// With --group: range, round-robin or sticky (default sticky); applies while the group
    /// is empty.
    #[arg(long, requires = "group")]
    assignor: Option<String>,
    /// With --group: how long the coordinator keeps a silent member (default: the node's).
    #[arg(long, requires = "group")]
    session_timeout_ms: Option<u32>,
    /// Stop after this many events.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Stop after this long without a new event (default: never).
    #[arg(long)]
    timeout_ms: Option<u64>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

fn main() -> ExitCode {
    if let Ok(filter) = std::env::var("VLTAVA_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vltava: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vltava: {error:#}");
            let unreachable = error.chain().any(|e| {
                matches!(
                    e.downcast_ref::<ClientError>(),
                    Some(ClientError::Connect { .. } | ClientError::NoNodeAvailable(_))
                )
            });
            ExitCode::from(if unreachable { 3 } else { 1 })
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Admin { command } = cli.command {
        return admin_command(&cli.admin, cli.admin_token.as_deref(), command).await;
    }
    let bootstrap: Vec<String> = cli
        .bootstrap
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let cluster = Cluster::connect(&bootstrap, "vltava-cli")
        .await
        .context("cannot reach the cluster")?;
    match cli.command {
        Command::Topic { command } => topic(Admin::new(cluster), command).await,
        Command::Partition { command } => partition_command(Admin::new(cluster), command).await,
        Command::Produce(args) => produce(cluster, args).await,
        Command::Consume(args) if args.group.is_some() => consume_group(cluster, args).await,
        Command::Consume(args) => consume(cluster, args).await,
        Command::Group { command } => group(Admin::new(cluster), command).await,
        Command::Cluster { command } => cluster_command(Admin::new(cluster), command).await,
        Command::Admin { .. } => unreachable!("answered above without a cluster connection"),
    }
}

async fn cluster_command(admin: Admin, command: ClusterCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        ClusterCommand::Describe { topics, format } => {
            let named = (!topics.is_empty()).then_some(topics);
            let answer = admin
                .describe_cluster(named.clone())
                .await
                .context("cannot describe the cluster")?;
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_value(&answer)?)?,
                Format::Text => {
                    let others = other_leaders_status(&admin, &answer, named).await;
                    print_cluster(&mut out, &answer, &others)?;
                }
            }
            out.flush()?;
            if let Some(omitted) = answer.topics_omitted.filter(|n| *n > 0) {
                eprintln!(
                    "vltava: {omitted} more topics are not listed (one answer lists at most {} partitions); name them with --topic",
                    vltava_messages::limits::CLUSTER_PARTITIONS_LISTED_MAX
                );
            }
            if let Some((name, error)) = answer
                .topics
                .iter()
                .find_map(|t| t.error.clone().map(|e| (t.name.clone(), e)))
            {
                return Err(ClientError::Server(error))
                    .with_context(|| format!("cannot describe topic {name}"));
            }
        }
    }
    Ok(())
}

/// What each other node leading a listed partition answered to the same DescribeCluster,
/// or why it did not: only a partition's leader knows its followers' progress. The nodes are
/// asked at once (one request each, at most one per node the answer lists), so a leader that
/// is paused costs its connection timeout once, not once per node; in node id order.
async fn other_leaders_status(
    admin: &Admin,
    answer: &DescribeClusterResponse,
    topics: Option<Vec<String>>,
) -> Vec<(NodeId, Result<DescribeClusterResponse, ClientError>)> {
    let leaders: std::collections::BTreeSet<NodeId> = answer
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .filter_map(|p| p.leader)
        .filter(|leader| *leader != answer.node_id)
        .collect();
    let mut asks = tokio::task::JoinSet::new();
    for leader in leaders {
        let Some(node) = answer.nodes.iter().find(|n| n.node_id == leader) else {
            continue;
        };
        let addr = format!("{}:{}", node.host, node.port);
        let (admin, topics) = (admin.clone(), topics.clone());
        asks.spawn(async move { (leader, admin.describe_cluster_at(&addr, topics).await) });
    }
    let mut answers = Vec::with_capacity(asks.len());
    while let Some(joined) = asks.join_next().await {
        // A task only ends by returning: nothing here panics or is aborted.
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    answers.sort_unstable_by_key(|(node, _)| *node);
    answers
}

/// The text form of a DescribeCluster answer: the cluster, its quorum as the node sees it,
/// its nodes, then one line per partition, followed, for a partition whose leader's
/// replication progress is known (the answering node's own, or `others`, the other leaders'
/// answers), by the leader's offsets and one line per follower with its ISR membership and
/// lag.
fn print_cluster(
    out: &mut impl Write,
    answer: &DescribeClusterResponse,
    others: &[(NodeId, Result<DescribeClusterResponse, ClientError>)],
) -> std::io::Result<()> {
    let id =
        |node: Option<vltava_messages::NodeId>| node.map_or("none".into(), |n| n.0.to_string());
    let index = |index: Option<u64>| index.map_or("none".into(), |i| i.to_string());
    writeln!(out, "cluster: {}", answer.cluster_id)?;
    writeln!(out, "controller: {}", id(answer.controller_id))?;
    writeln!(out, "metadata_version: {}", answer.metadata_version)?;
    match &answer.raft {
        Some(raft) => writeln!(
            out,
            "raft (as node {} sees it): term: {}  commit_index: {}  applied_index: {}  leader: {}",
            answer.node_id.0,
            raft.term,
            index(raft.commit_index),
            index(raft.applied_index),
            id(raft.leader_id)
        )?,
        None => writeln!(
            out,
            "raft: none (node {} is a single node)",
            answer.node_id.0
        )?,
    }
    writeln!(out, "nodes:")?;
    for node in &answer.nodes {
        let state = if node.fenced { "fenced" } else { "alive" };
        let lease = node
            .lease_age_ms
            .map_or(String::new(), |ms| format!("  lease renewed {ms} ms ago"));
        writeln!(
            out,
            "  {}  {}:{}  {state}{lease}",
            node.node_id.0, node.host, node.port
        )?;
    }
    writeln!(out, "topics:")?;
    let list = |ids: &[vltava_messages::NodeId]| {
        ids.iter()
            .map(|n| n.0.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    // Each leader's own listing, the answering node's first.
    let listings: Vec<(NodeId, &vltava_messages::protocol::ReplicaStatusListing)> =
        std::iter::once((answer.node_id, answer))
            .chain(
                others
                    .iter()
                    .filter_map(|(node, a)| Some((*node, a.as_ref().ok()?))),
            )
            .filter_map(|(node, a)| Some((node, a.replica_status.as_deref()?)))
            .collect();
    // A partition's status as its leader (by the first answer) published it: a node that
    // answered after leadership moved lists only what it leads then.
    let statuses: std::collections::HashMap<(&str, u32, NodeId), _> = listings
        .iter()
        .flat_map(|(node, listing)| listing.partitions.iter().map(move |s| (*node, s)))
        .map(|(node, s)| ((s.topic.as_str(), s.partition.0, node), s))
        .collect();
    let offset = |o: Option<vltava_messages::Offset>| o.map_or("none".into(), |o| o.0.to_string());
    for topic in answer.topics.iter().filter(|t| t.error.is_none()) {
        writeln!(
            out,
            "  {}  partitions: {}",
            topic.name,
            topic.partitions.len()
        )?;
        for p in &topic.partitions {
            writeln!(
                out,
                "    partition: {}  leader: {}  leader_epoch: {}  replicas: {}  isr: {}",
                p.partition.0,
                id(p.leader),
                p.leader_epoch.0,
                list(&p.replicas),
                list(&p.in_sync_replicas)
            )?;
            let Some(leader) = p.leader else { continue };
            let Some(status) = statuses.get(&(topic.name.as_str(), p.partition.0, leader)) else {
                continue;
            };
            writeln!(
                out,
                "      leader {}: log_end_offset: {}  high_watermark: {}  flushed_offset: {}",
                leader.0, status.log_end_offset.0, status.high_watermark.0, status.flushed_offset.0
            )?;
            for f in &status.followers {
                writeln!(
                    out,
                    "      follower {}: {}  log_end_offset: {}  flushed_offset: {}  lag: {} offsets, {} ms",
                    f.node_id.0,
                    if f.in_sync { "in isr" } else { "out of isr" },
                    offset(f.log_end_offset),
                    offset(f.flushed_offset),
                    f.lag_offsets.map_or("unknown".into(), |l| l.to_string()),
                    f.lag_ms
                )?;
            }
        }
    }
    for (node, listing) in &listings {
        if let Some(omitted) = listing.partitions_omitted {
            writeln!(
                out,
                "({omitted} more partitions led by node {} have no replica status here)",
                node.0
            )?;
        }
    }
    for (node, failed) in others
        .iter()
        .filter_map(|(node, a)| Some((node, a.as_ref().err()?)))
    {
        writeln!(
            out,
            "(node {} did not answer, so the partitions it leads have no replica status here: {failed})",
            node.0
        )?;
    }
    Ok(())
}

async fn admin_command(
    addr: &str,
    token: Option<&str>,
    command: AdminCommand,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        AdminCommand::Actors { kind, format } => {
            let path = match &kind {
                Some(kind) => format!("/actors?kind={}", query_escape(kind)),
                None => "/actors".to_owned(),
            };
            let answer = admin_get(addr, &path, token).await?;
            let actors = answer["actors"].as_array().cloned().unwrap_or_default();
            match format {
                Format::Json => writeln!(out, "{answer}")?,
                Format::Text if kind.is_some() => {
                    for actor in &actors {
                        writeln!(out, "{}", actor_line(actor))?;
                    }
                }
                Format::Text => print_tree(&mut out, &actors)?,
            }
        }
        AdminCommand::Actor { id, format } => {
            let path = format!("/actors/{}", id.trim_start_matches('/'));
            let actor = admin_get(addr, &path, token).await?;
            match format {
                Format::Json => writeln!(out, "{actor}")?,
                Format::Text => print_actor(&mut out, &actor)?,
            }
        }
    }
    Ok(())
}

/// Escapes a query value (actor kinds are letters, but a typo should not break the URL).
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn actor_line(actor: &Value) -> String {
    let mut line = format!(
        "{}  {}  {}  mailbox {}/{}  handled {}",
        actor["id"].as_str().unwrap_or("?"),
        actor["kind"].as_str().unwrap_or("?"),
        actor["status"].as_str().unwrap_or("?"),
        actor["mailbox_depth"],
        actor["mailbox_depth_max"],
        actor["messages_handled"],
    );
    let restarts = actor["restarts"].as_u64().unwrap_or(0);
    if restarts > 0 {
        line.push_str(&format!("  restarts {restarts}"));
    }
    if let Some(error) = actor["last_error"].as_str() {
        line.push_str(&format!("  last error: {error}"));
    }
    line
}

/// Prints actors as a tree built from their parent ids; actors whose parent is not listed are
/// printed as roots, so nothing is dropped.
fn print_tree(out: &mut impl Write, actors: &[Value]) -> std::io::Result<()> {
    let ids: std::collections::BTreeSet<&str> =
        actors.iter().filter_map(|a| a["id"].as_str()).collect();
    let mut children: BTreeMap<Option<&str>, Vec<&Value>> = BTreeMap::new();
    for actor in actors {
        let parent = actor["parent"].as_str().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(actor);
    }
    fn walk(
        out: &mut impl Write,
        children: &BTreeMap<Option<&str>, Vec<&Value>>,
        parent: Option<&str>,
        prefix: &str,
    ) -> std::io::Result<()> {
        let Some(list) = children.get(&parent) else {
            return Ok(());
        };
        for (i, actor) in list.iter().enumerate() {
            let last = i + 1 == list.len();
            let (branch, next) = match (parent, last) {
                (None, _) => ("", String::new()),
                (Some(_), false) => ("├── ", format!("{prefix}│   ")),
                (Some(_), true) => ("└── ", format!("{prefix}    ")),
            };
            writeln!(out, "{prefix}{branch}{}", actor_line(actor))?;
            walk(out, children, actor["id"].as_str(), &next)?;
        }
        Ok(())
    }
    walk(out, &children, None, "")
}

fn print_actor(out: &mut impl Write, actor: &Value) -> std::io::Result<()> {
    for key in [
        "id",
        "kind",
        "parent",
        "status",
        "started_at_ms",
        "mailbox_depth",
        "mailbox_depth_max",
        "messages_handled",
        "restarts",
        "last_error",
    ] {
        let value = &actor[key];
        match value.as_str() {
            Some(text) => writeln!(out, "{key}: {text}")?,
            None => writeln!(out, "{key}: {value}")?,
        }
    }
    if let Some(kinds) = actor["processing"].as_array().filter(|k| !k.is_empty()) {
        writeln!(out, "processing (µs):")?;
        for k in kinds {
            writeln!(
                out,
                "  {:<20} count {}  mean {}  p50 {}  p99 {}  max {}",
                k["message_kind"].as_str().unwrap_or("?"),
                k["count"],
                k["mean_us"],
                k["p50_us"],
                k["p99_us"],
                k["max_us"]
            )?;
        }
    }
    if let Some(state) = actor["state"].as_object() {
        writeln!(out, "state:")?;
        for (key, value) in state {
            match value.as_str() {
                Some(text) => writeln!(out, "  {key}: {text}")?,
                None => writeln!(out, "  {key}: {value}")?,
            }
        }
    }
    if let Some(children) = actor["children"].as_array().filter(|c| !c.is_empty()) {
        writeln!(out, "children:")?;
        for child in children {
            writeln!(out, "  {}", child.as_str().unwrap_or("?"))?;
        }
    }
    Ok(())
}

async fn topic(admin: Admin, command: TopicCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            admin
                .create_topic(
                    &name,
                    partitions,
                    replication_factor,
                    configs.into_iter().collect(),
                )
                .await
                .with_context(|| format!("cannot create topic {name}"))?;
            writeln!(out, "created topic {name} with {partitions} partitions")?;
        }
        TopicCommand::List { format } => {
            let metadata = admin.metadata().await?;
            for t in metadata.topics {
                match format {
                    Format::Text => writeln!(out, "{}", t.name)?,
                    Format::Json => writeln!(
                        out,
                        "{}",
                        json!({"name": t.name, "partitions": t.partitions.len()})
                    )?,
                }
            }
        }
        TopicCommand::Describe { name, format } => {
            let topics = admin.describe_topics(std::slice::from_ref(&name)).await?;
            let topic = topics.into_iter().next().context("empty answer")?;
            if let Some(error) = topic.error {
                return Err(ClientError::Server(error))
                    .with_context(|| format!("cannot describe topic {name}"));
            }
            match format {
                Format::Text => {
                    writeln!(
                        out,
                        "topic: {}  partitions: {}",
                        topic.name,
                        topic.partitions.len()
                    )?;
                    for p in &topic.partitions {
                        let list = |ids: &[vltava_messages::NodeId]| {
                            ids.iter()
                                .map(|n| n.0.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        };
                        let moving = topic
                            .reassignments
                            .iter()
                            .find(|r| r.partition == p.partition)
                            .map(|r| format!("  reassigning to: {}", list(&r.target_replicas)))
                            .unwrap_or_default();
                        writeln!(
                            out,
                            "  partition: {}  leader: {}  leader_epoch: {}  replicas: {}  isr: {}{moving}",
                            p.partition.0,
                            p.leader.map_or("none".into(), |l| l.0.to_string()),
                            p.leader_epoch.0,
                            list(&p.replicas),
                            list(&p.in_sync_replicas)
                        )?;
                    }
                    for c in &topic.configs {
                        writeln!(
                            out,
                            "  config: {}={}{}",
                            c.name,
                            c.value,
                            if c.is_default { " (default)" } else { "" }
                        )?;
                    }
                }
                Format::Json => {
                    let partitions: Vec<Value> = topic
                        .partitions
                        .iter()
                        .map(|p| {
                            let mut entry = json!({"partition": p.partition.0, "leader": p.leader.map(|l| l.0), "leader_epoch": p.leader_epoch.0,
                                "replicas": p.replicas.iter().map(|n| n.0).collect::<Vec<_>>(), "isr": p.in_sync_replicas.iter().map(|n| n.0).collect::<Vec<_>>()});
                            if let Some(moving) =
                                topic.reassignments.iter().find(|r| r.partition == p.partition)
                            {
                                entry["target_replicas"] =
                                    json!(moving.target_replicas.iter().map(|n| n.0).collect::<Vec<_>>());
                            }
                            entry
                        })
                        .collect();
                    let configs: BTreeMap<&str, &str> = topic
                        .configs
                        .iter()
                        .map(|c| (c.name.as_str(), c.value.as_str()))
                        .collect();
                    writeln!(
                        out,
                        "{}",
                        json!({"name": topic.name, "partitions": partitions, "configs": configs})
                    )?;
                }
            }
        }
        TopicCommand::Alter {
            name,
            set,
            delete,
            partitions,
        } => {
            if set.is_empty() && delete.is_empty() && partitions.is_none() {
                bail!("nothing to alter: give --set, --delete or --partitions");
            }
            if !set.is_empty() || !delete.is_empty() {
                admin
                    .alter_topic_configs(&name, set.into_iter().collect(), delete)
                    .await
                    .with_context(|| format!("cannot alter topic {name}"))?;
            }
            if let Some(count) = partitions {
                admin
                    .create_partitions(&name, count)
                    .await
                    .with_context(|| format!("cannot add partitions to {name}"))?;
            }
            writeln!(out, "altered topic {name}")?;
        }
        TopicCommand::Delete { name } => {
            admin
                .delete_topic(&name)
                .await
                .with_context(|| format!("cannot delete topic {name}"))?;
            writeln!(out, "deleted topic {name}")?;
        }
    }
    Ok(())
}

async fn partition_command(admin: Admin, command: PartitionCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        PartitionCommand::ElectLeader {
            topic,
            partition,
            to,
            format,
        } => {
            let epoch = admin
                .elect_leader(&topic, partition, to)
                .await
                .with_context(|| format!("cannot move the leadership of {topic}-{partition}"))?;
            match format {
                Format::Text => writeln!(
                    out,
                    "partition {topic}-{partition}: leader {to}, leader epoch {}",
                    epoch.0
                )?,
                Format::Json => writeln!(
                    out,
                    "{}",
                    json!({"topic": topic, "partition": partition, "leader": to, "leader_epoch": epoch.0})
                )?,
            }
        }
        PartitionCommand::ElectPreferred { topics, format } => {
            let mut partitions = Vec::new();
            if !topics.is_empty() {
                for description in admin.describe_topics(&topics).await? {
                    if let Some(error) = description.error {
                        return Err(ClientError::Server(error)).with_context(|| {
                            format!("cannot elect leaders of {}", description.name)
                        });
                    }
                    partitions.extend(
                        description
                            .partitions
                            .iter()
                            .map(|p| (description.name.clone(), p.partition.0)),
                    );
                }
            }
            let results = admin
                .elect_preferred(&partitions)
                .await
                .context("cannot elect the preferred leaders")?;
            let mut failed = None;
            for r in &results {
                match (format, &r.error) {
                    (Format::Text, None) => writeln!(
                        out,
                        "partition {}-{}: leader {}, leader epoch {}",
                        r.topic,
                        r.partition.0,
                        r.leader.map_or("none".into(), |l| l.0.to_string()),
                        r.leader_epoch.map_or(0, |e| e.0)
                    )?,
                    (Format::Text, Some(error)) => {
                        writeln!(out, "partition {}-{}: {error}", r.topic, r.partition.0)?;
                    }
                    (Format::Json, _) => writeln!(out, "{}", serde_json::to_value(r)?)?,
                }
                if let Some(error) = &r.error {
                    failed.get_or_insert_with(|| {
                        (format!("{}-{}", r.topic, r.partition.0), error.clone())
                    });
                }
            }
            out.flush()?;
            if let Some((partition, error)) = failed {
                return Err(ClientError::Server(error))
                    .with_context(|| format!("cannot move the leadership of {partition}"));
            }
        }
        PartitionCommand::Reassign {
            topic,
            partition,
            replicas,
            timeout_ms,
            no_wait,
            format,
        } => {
            reassign(
                &admin,
                &mut out,
                &topic,
                partition,
                &replicas,
                (!no_wait).then(|| Duration::from_millis(timeout_ms)),
                format,
            )
            .await?;
        }
    }
    Ok(())
}

/// `vltava partition reassign`: starts the move and, with `wait`, waits for it to complete.
async fn reassign(
    admin: &Admin,
    out: &mut impl Write,
    topic: &str,
    partition: u32,
    replicas: &[u32],
    wait: Option<Duration>,
    format: Format,
) -> anyhow::Result<()> {
    let name = format!("{topic}-{partition}");
    let ids = |ids: &[NodeId]| ids.iter().map(|n| n.0).collect::<Vec<_>>();
    let list = |ids: &[NodeId]| {
        ids.iter()
            .map(|n| n.0.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let started = admin
        .reassign_partition(topic, partition, replicas)
        .await
        .with_context(|| format!("cannot reassign {name}"))?;
    let Some(wait) = wait.filter(|_| started.target_replicas.is_some()) else {
        match format {
            Format::Text => match &started.target_replicas {
                Some(target) => writeln!(
                    out,
                    "partition {name}: moving to {} (replicas {}, leader {}, leader epoch {})",
                    list(target),
                    list(&started.replicas),
                    started.leader.map_or("none".into(), |l| l.0.to_string()),
                    started.leader_epoch.map_or(0, |e| e.0)
                )?,
                None => writeln!(
                    out,
                    "partition {name}: replicas {}, leader {}, leader epoch {}",
                    list(&started.replicas),
                    started.leader.map_or("none".into(), |l| l.0.to_string()),
                    started.leader_epoch.map_or(0, |e| e.0)
                )?,
            },
            Format::Json => writeln!(out, "{}", serde_json::to_value(&started)?)?,
        }
        return Ok(());
    };
    let started_at = started.leader_epoch.unwrap_or_default();
    let waited = admin
        .await_reassignment(topic, partition, replicas, started_at, wait)
        .await
        .with_context(|| format!("cannot follow the move of {name}"))?;
    match waited {
        ReassignmentWait::Completed(p) => match format {
            Format::Text => writeln!(
                out,
                "partition {name}: replicas {}, leader {}, leader epoch {}, isr {}",
                list(&p.replicas),
                p.leader.map_or("none".into(), |l| l.0.to_string()),
                p.leader_epoch.0,
                list(&p.in_sync_replicas)
            )?,
            Format::Json => writeln!(
                out,
                "{}",
                json!({"topic": topic, "partition": partition, "replicas": ids(&p.replicas),
                    "leader": p.leader.map(|l| l.0), "leader_epoch": p.leader_epoch.0,
                    "isr": ids(&p.in_sync_replicas)})
            )?,
        },
        ReassignmentWait::Replaced {
            partition: p,
            target_replicas,
        } => bail!(
            "the move of {name} was replaced by another request: replicas {}{}",
            list(&p.replicas),
            target_replicas.map_or(String::new(), |t| format!(", moving to {}", list(&t)))
        ),
        ReassignmentWait::StillMoving(p) => bail!(
            "the move of {name} to {} is still under way after {} ms (replicas {}, isr {}); it goes on: see `vltava topic describe {topic}`",
            replicas
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            wait.as_millis(),
            list(&p.replicas),
            list(&p.in_sync_replicas)
        ),
    }
    Ok(())
}

async fn produce(cluster: Arc<Cluster>, args: ProduceArgs) -> anyhow::Result<()> {
    let acks = match args.acks.as_str() {
        "0" => Acks::None,
        "1" => Acks::Leader,
        "all" | "-1" => Acks::All,
        other => bail!("bad --acks {other:?} (expected 0, 1 or all)"),
    };
    cluster
        .partition_count(&args.topic)
        .await
        .with_context(|| format!("cannot produce to {}", args.topic))?;
    let compression = match args.compression.as_str() {
        "none" => Compression::None,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => bail!("bad --compression {other:?} (expected none, lz4 or zstd)"),
    };
    let producer = Producer::new(
        cluster,
        ProducerConfig {
            client_id: "vltava-cli".into(),
            acks,
            compression,
            ..ProducerConfig::default()
        },
    )
    .await?;
    let headers: Vec<(String, Vec<u8>)> = args
        .headers
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    let mut deliveries = Vec::new();
    let stdin = std::io::stdin();
    let mut failures = 0u64;
    for line in stdin.lock().lines() {
        let line = line.context("cannot read standard input")?;
        let (key, value) = match (&args.key_separator, &args.key) {
            (Some(separator), _) => match line.split_once(separator.as_str()) {
                Some((k, v)) => (Some(k.as_bytes().to_vec()), v.as_bytes().to_vec()),
                None => (
                    args.key.as_ref().map(|k| k.as_bytes().to_vec()),
                    line.into_bytes(),
                ),
            },
            (None, key) => (
                key.as_ref().map(|k| k.as_bytes().to_vec()),
                line.into_bytes(),
            ),
        };
        let record = ProducerRecord {
            topic: args.topic.clone(),
            partition: args.partition,
            key,
            value: Some(value),
            headers: headers.clone(),
            timestamp: None,
        };
        deliveries.push(producer.send(record).await?);
        // Bound what is held: settle the oldest answers as they come.
        if deliveries.len() >= 10_000 {
            for delivery in deliveries.drain(..5_000) {
                if let Err(e) = delivery.wait().await {
                    failures += 1;
                    eprintln!("vltava: an event failed: {e}");
                }
            }
        }
    }
    producer.flush().await?;
    for delivery in deliveries {
        if let Err(e) = delivery.wait().await {
            failures += 1;
            eprintln!("vltava: an event failed: {e}");
        }
    }
    producer.close().await?;
    if failures > 0 {
        bail!("{failures} events were not acknowledged");
    }
    Ok(())
}

/// Bytes as JSON: a string if they are UTF-8, else `{"base64": "..."}`.
fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(bytes)}),
    }
}

/// Bytes as a text line: as they are if UTF-8, else `base64:` and their base64.
fn bytes_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    }
}

async fn consume(cluster: Arc<Cluster>, args: ConsumeArgs) -> anyhow::Result<()> {
    let start = match (args.from_timestamp, args.offset.as_str()) {
        (Some(t), _) => SeekTo::Timestamp(t),
        (None, "earliest") => SeekTo::Earliest,
        (None, "latest") => SeekTo::Latest,
        (None, n) => SeekTo::Offset(n.parse().with_context(|| {
            format!("bad --offset {n:?} (expected earliest, latest or a number)")
        })?),
    };
    let mut consumer = Consumer::new(cluster, ConsumerConfig::default());
    for topic in &args.topics {
        consumer
            .assign(topic, args.partition.map(|p| vec![p]), start)
            .await
            .with_context(|| format!("cannot consume {topic}"))?;
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printed = 0u64;
    let mut last_event = Instant::now();
    loop {
        if args.max_messages.is_some_and(|max| printed >= max) {
            break;
        }
        if args
            .timeout_ms
            .is_some_and(|ms| last_event.elapsed() >= Duration::from_millis(ms))
        {
            break;
        }
        let records = consumer.poll().await?;
        if !records.is_empty() {
            last_event = Instant::now();
        }
        for r in records {
            if args.max_messages.is_some_and(|max| printed >= max) {
                break;
            }
            print_record(&mut out, args.format, &r)?;
            printed += 1;
        }
        out.flush()?;
    }
    Ok(())
}

fn print_record(out: &mut impl Write, format: Format, r: &ConsumerRecord) -> std::io::Result<()> {
    match format {
        Format::Text => writeln!(
            out,
            "{}",
            r.value.as_deref().map_or("null".into(), bytes_text)
        ),
        Format::Json => {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), bytes_json(v)))
                .collect();
            writeln!(
                out,
                "{}",
                json!({"topic": r.topic, "partition": r.partition, "offset": r.offset, "timestamp": r.timestamp,
                    "key": r.key.as_deref().map(bytes_json), "value": r.value.as_deref().map(bytes_json), "headers": headers})
            )
        }
    }
}

/// Resolves when the process gets SIGINT (or, on Unix, SIGTERM).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `consume --group`: reads as a group member, commits what it printed, and on a signal,
/// `--max-messages` or `--timeout-ms` commits and leaves the group.
async fn consume_group(cluster: Arc<Cluster>, args: ConsumeArgs) -> anyhow::Result<()> {
    let group_id = args.group.clone().expect("dispatched on --group");
    let mut config = GroupConfig::new(group_id.clone());
    config.instance_id = args.instance_id.clone();
    if let Some(assignor) = &args.assignor {
        config.assignor = Some(assignor.parse::<Assignor>()?);
    }
    if let Some(from) = &args.from {
        config.auto_offset_reset = from.parse::<OffsetReset>()?;
    }
    config.session_timeout = args
        .session_timeout_ms
        .map(|ms| Duration::from_millis(u64::from(ms)));
    let mut consumer = GroupConsumer::new(cluster, ConsumerConfig::default(), config)?;
    match &args.pattern {
        Some(pattern) => consumer.subscribe_pattern(pattern)?,
        None => consumer.subscribe(&args.topics)?,
    }
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printed = 0u64;
    let mut last_event = Instant::now();
    let read: anyhow::Result<()> = async {
        loop {
            if args.max_messages.is_some_and(|max| printed >= max)
                || args
                    .timeout_ms
                    .is_some_and(|ms| last_event.elapsed() >= Duration::from_millis(ms))
            {
                return Ok(());
            }
            // Cancelling a poll is safe: commits cover only what poll() returned.
            let records = tokio::select! {
                records = consumer.poll() => records?,
                () = &mut stop => return Ok(()),
            };
            if !records.is_empty() {
                last_event = Instant::now();
            }
            for (index, r) in records.iter().enumerate() {
                if args.max_messages.is_some_and(|max| printed >= max) {
                    // Commit only what was printed: move each partition back to its first
                    // unprinted event.
                    let mut unprinted: BTreeMap<(&str, u32), u64> = BTreeMap::new();
                    for r in &records[index..] {
                        unprinted.entry((&r.topic, r.partition)).or_insert(r.offset);
                    }
                    for ((topic, partition), offset) in unprinted {
                        consumer.seek(topic, partition, offset)?;
                    }
                    break;
                }
                print_record(&mut out, args.format, r)?;
                printed += 1;
            }
            out.flush()?;
        }
    }
    .await;
    let closed = tokio::select! {
        closed = tokio::time::timeout(GROUP_CLOSE_TIMEOUT, consumer.close()) => {
            closed.map_err(|_| anyhow::anyhow!("leaving group {group_id} timed out"))
        }
        () = stop_signal() => Err(anyhow::anyhow!("interrupted while leaving group {group_id}")),
    };
    read.with_context(|| format!("cannot consume as group {group_id}"))?;
    closed?.with_context(|| format!("cannot commit before leaving group {group_id}"))?;
    Ok(())
}

/// Partitions as `topic[0,1] other[3]`.
fn partitions_text(topics: &[TopicPartitions]) -> String {
    if topics.is_empty() {
        return "-".into();
    }
    topics
        .iter()
        .map(|t| {
            let list: Vec<String> = t.partitions.iter().map(|p| p.0.to_string()).collect();
            format!("{}[{}]", t.topic, list.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints rows under headers, each column as wide as its widest cell.
fn print_table(
    out: &mut impl Write,
    headers: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn print_group(out: &mut impl Write, g: &GroupDescription) -> std::io::Result<()> {
    writeln!(
        out,
        "group {}  state {}  assignor {}  group epoch {}  assignment epoch {}  members {}",
        g.group_id,
        g.state,
        g.assignor,
        g.group_epoch,
        g.assignment_epoch,
        g.members.len()
    )?;
    if !g.members.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<String>> = g
            .members
            .iter()
            .map(|m| {
                let mut assigned = partitions_text(&m.assigned);
                if !m.pending_revocation.is_empty() {
                    assigned.push_str(&format!(
                        "  (revoking {})",
                        partitions_text(&m.pending_revocation)
                    ));
                }
                vec![
                    m.member_id.clone(),
                    m.instance_id.clone().unwrap_or_else(|| "-".into()),
                    m.client_id.clone(),
                    m.host.clone(),
                    m.member_epoch.to_string(),
                    m.subscribed_topics.join(","),
                    assigned,
                ]
            })
            .collect();
        print_table(
            out,
            &[
                "MEMBER",
                "INSTANCE",
                "CLIENT",
                "HOST",
                "EPOCH",
                "SUBSCRIBED",
                "ASSIGNED",
            ],
            &rows,
        )?;
    }
    if !g.offsets.is_empty() {
        writeln!(out)?;
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let rows: Vec<Vec<String>> = g
            .offsets
            .iter()
            .map(|p| {
                vec![
                    p.topic.clone(),
                    p.partition.0.to_string(),
                    opt(p.committed_offset.map(|o| o.0)),
                    opt(p.high_watermark.map(|o| o.0)),
                    opt(p.lag),
                    opt(p.lag_ms),
                    p.owner.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print_table(
            out,
            &[
                "TOPIC",
                "PARTITION",
                "COMMITTED",
                "HIGH-WATERMARK",
                "LAG",
                "LAG-MS",
                "OWNER",
            ],
            &rows,
        )?;
    }
    if !g.rebalances.is_empty() {
        writeln!(out)?;
        writeln!(out, "REBALANCES (newest first)")?;
        for r in &g.rebalances {
            writeln!(
                out,
                "{}  group epoch {}  {}",
                format_time_ms(r.at_ms),
                r.group_epoch,
                r.reason
            )?;
            for m in &r.moves {
                writeln!(
                    out,
                    "  {}-{}: {} -> {}",
                    m.topic,
                    m.partition.0,
                    m.from.as_deref().unwrap_or("(none)"),
                    m.to.as_deref().unwrap_or("(none)")
                )?;
            }
        }
    }
    Ok(())
}

/// Where `group reset-offsets --to` points.
fn parse_reset_to(to: &str, by_time: bool, now_ms: i64) -> Result<ResetTo, String> {
    if by_time {
        return parse_time_ms(to, now_ms).map(ResetTo::Timestamp);
    }
    match to {
        "earliest" => Ok(ResetTo::Earliest),
        "latest" => Ok(ResetTo::Latest),
        n => n.parse::<u64>().map(|o| ResetTo::Offset(Offset(o))).map_err(|_| {
            format!("bad --to {n:?} (expected earliest, latest or an offset; a time needs --by-time)")
        }),
    }
}

/// A time for `--by-time`, in ms since the Unix epoch: a number of ms, a UTC time
/// `YYYY-MM-DD[THH:MM[:SS[.mmm]]Z]`, or `-N<unit>` (ms, s, m, h, d) before `now_ms`.
fn parse_time_ms(text: &str, now_ms: i64) -> Result<i64, String> {
    let bad = || {
        format!(
            "bad time {text:?} (expected ms since the Unix epoch, YYYY-MM-DD[THH:MM[:SS[.mmm]]Z] in UTC, or -N followed by ms, s, m, h or d)"
        )
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| bad());
    }
    if let Some(ago) = text.strip_prefix('-') {
        let split = ago
            .find(|c: char| !c.is_ascii_digit())
            .filter(|i| *i > 0)
            .ok_or_else(bad)?;
        let (count, unit) = ago.split_at(split);
        let count: i64 = count.parse().map_err(|_| bad())?;
        let unit_ms: i64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        return count
            .checked_mul(unit_ms)
            .and_then(|ms| now_ms.checked_sub(ms))
            .ok_or_else(bad);
    }
    parse_utc_ms(text).ok_or_else(bad)
}

/// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM[:SS[.mmm]]Z`, UTC, to ms since the Unix epoch.
fn parse_utc_ms(text: &str) -> Option<i64> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z')?)),
        None => (text, None),
    };
    let mut date_parts = date.split('-');
    let year: i64 = fixed_digits(date_parts.next()?, 4)?;
    let month: u32 = fixed_digits(date_parts.next()?, 2)?;
    let day: u32 = fixed_digits(date_parts.next()?, 2)?;
    if date_parts.next().is_some() || !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if civil_from_days(days) != (year, month, day) {
        return None;
    }
    let mut ms = days * 86_400_000;
    if let Some(time) = time {
        let (clock, millis) = match time.split_once('.') {
            Some((clock, millis)) => (clock, fixed_digits::<i64>(millis, 3)?),
            None => (time, 0),
        };
        let mut clock_parts = clock.split(':');
        let hour: i64 = fixed_digits(clock_parts.next()?, 2)?;
        let minute: i64 = fixed_digits(clock_parts.next()?, 2)?;
        let second: i64 = match clock_parts.next() {
            Some(s) => fixed_digits(s, 2)?,
            None => 0,
        };
        if clock_parts.next().is_some() || hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        ms += ((hour * 60 + minute) * 60 + second) * 1_000 + millis;
    }
    Some(ms)
}

/// Exactly `width` ASCII digits.
fn fixed_digits<T: std::str::FromStr>(text: &str, width: usize) -> Option<T> {
    (text.len() == width && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse of `days_from_civil`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// ms since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn format_time_ms(ms: u64) -> String {
    let ms = ms as i64;
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1_000 % 60,
        ms_of_day % 1_000
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn group(admin: Admin, command: GroupCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        GroupCommand::List { format } => {
            let groups = admin.list_groups().await.context("cannot list groups")?;
            match format {
                Format::Text => {
                    let rows: Vec<Vec<String>> = groups
                        .iter()
                        .map(|g| {
                            vec![
                                g.group_id.clone(),
                                g.state.clone(),
                                g.members.to_string(),
                                g.assignor.clone(),
                            ]
                        })
                        .collect();
                    if !rows.is_empty() {
                        print_table(&mut out, &["GROUP", "STATE", "MEMBERS", "ASSIGNOR"], &rows)?;
                    }
                }
                Format::Json => {
                    for g in &groups {
                        writeln!(out, "{}", serde_json::to_value(g)?)?;
                    }
                }
            }
        }
        GroupCommand::Describe { groups, format } => {
            let descriptions = admin
                .describe_groups(&groups)
                .await
                .context("cannot describe groups")?;
            let failed = descriptions
                .iter()
                .find_map(|g| g.error.clone().map(|e| (g.group_id.clone(), e)));
            match format {
                Format::Json => {
                    let answer = DescribeGroupsResponse {
                        groups: descriptions,
                    };
                    writeln!(out, "{}", serde_json::to_value(&answer)?)?;
                }
                Format::Text => {
                    for (i, g) in descriptions
                        .iter()
                        .filter(|g| g.error.is_none())
                        .enumerate()
                    {
                        if i > 0 {
                            writeln!(out)?;
                        }
                        print_group(&mut out, g)?;
                    }
                }
            }
            if let Some((group_id, error)) = failed {
                return Err(ClientError::Server(error))
                    .with_context(|| format!("cannot describe group {group_id}"));
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to,
            by_time,
            partitions,
            dry_run,
            format,
        } => {
            let target = parse_reset_to(&to, by_time, now_ms()).map_err(anyhow::Error::msg)?;
            let partitions = (!partitions.is_empty()).then_some(partitions);
            let answer = admin
                .reset_offsets(&group, &topic, partitions, target, dry_run)
                .await
                .with_context(|| format!("cannot reset the offsets of group {group} on {topic}"))?;
            match format {
                Format::Json => {
                    let answer = ResetOffsetsResponse {
                        partitions: answer.clone(),
                    };
                    writeln!(out, "{}", serde_json::to_value(&answer)?)?;
                }
                Format::Text => {
                    let verb = if dry_run { "would reset" } else { "reset" };
                    writeln!(out, "{verb} group {group} on topic {topic}:")?;
                    for p in &answer {
                        match (&p.offset, &p.error) {
                            (_, Some(error)) => {
                                writeln!(out, "  partition {}: {error}", p.partition.0)?;
                            }
                            (Some(offset), None) => {
                                writeln!(out, "  partition {}: offset {offset}", p.partition.0)?;
                            }
                            (None, None) => writeln!(out, "  partition {}: -", p.partition.0)?,
                        }
                    }
                }
            }
            if let Some(p) = answer.iter().find(|p| p.error.is_some()) {
                let error = p.error.clone().expect("found by its error");
                return Err(ClientError::Server(error)).with_context(|| {
                    format!(
                        "cannot reset partition {} of {topic} for group {group}",
                        p.partition.0
                    )
                });
            }
        }
        GroupCommand::Delete { groups } => {
            let results = admin
                .delete_groups(&groups)
                .await
                .context("cannot delete groups")?;
            let mut failed = None;
            for r in results {
                match r.error {
                    None => writeln!(out, "deleted group {}", r.group_id)?,
                    Some(error) => {
                        failed.get_or_insert((r.group_id, error));
                    }
                }
            }
            if let Some((group_id, error)) = failed {
                return Err(ClientError::Server(error))
                    .with_context(|| format!("cannot delete group {group_id}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "vltava/tests.rs"]
mod tests;
