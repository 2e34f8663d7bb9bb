//! `vltava`: the command line for people and scripts.
//!
//! Exit codes: 0 success; 1 the cluster or the client refused or failed (one line on stderr);
//! 2 bad usage; 3 no node of the cluster could be reached. In `--format json` mode stdout
//! holds only JSON, one object per line.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use vltava_client::admin_http::admin_get;
use vltava_client::{
    Admin, ClientError, Cluster, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, SeekTo,
};
use vltava_messages::Compression;
use vltava_messages::protocol::Acks;

#[derive(Debug, Parser)]
#[command(
    name = "vltava",
    version,
    about = "The vltava command line: topics, produce, consume, admin"
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
    /// Send one event per line of standard input.
    Produce(ProduceArgs),
    /// Print events as they are read.
    Consume(ConsumeArgs),
    /// Look inside a node through its admin endpoint.
    Admin {
        /// The node's admin endpoint.
        #[arg(long, env = "VLTAVA_ADMIN", default_value = "127.0.0.1:9422")]
        admin: String,
        /// The admin endpoint's bearer token, if the node requires one.
        #[arg(long, env = "VLTAVA_ADMIN_TOKEN")]
        admin_token: Option<String>,
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

#[derive(Debug, Args)]
struct ConsumeArgs {
    topic: String,
    /// Read only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Where to start: earliest, latest or an offset.
    #[arg(long, default_value = "earliest")]
    offset: String,
    /// Start at the first event at or after this time (ms since the Unix epoch).
    #[arg(long)]
    from_timestamp: Option<i64>,
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
    if let Command::Admin {
        admin,
        admin_token,
        command,
    } = cli.command
    {
        return admin_command(&admin, admin_token.as_deref(), command).await;
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
        Command::Produce(args) => produce(cluster, args).await,
        Command::Consume(args) => consume(cluster, args).await,
        Command::Admin { .. } => unreachable!("answered above without a cluster connection"),
    }
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
                        writeln!(
                            out,
                            "  partition: {}  leader: {}  leader_epoch: {}  replicas: {}  isr: {}",
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
                            json!({"partition": p.partition.0, "leader": p.leader.map(|l| l.0), "leader_epoch": p.leader_epoch.0,
                                "replicas": p.replicas.iter().map(|n| n.0).collect::<Vec<_>>(), "isr": p.in_sync_replicas.iter().map(|n| n.0).collect::<Vec<_>>()})
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
    consumer
        .assign(&args.topic, args.partition.map(|p| vec![p]), start)
        .await
        .with_context(|| format!("cannot consume {}", args.topic))?;
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
            match args.format {
                Format::Text => writeln!(
                    out,
                    "{}",
                    r.value.as_deref().map_or("null".into(), bytes_text)
                )?,
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
                    )?;
                }
            }
            printed += 1;
        }
        out.flush()?;
    }
    Ok(())
}
