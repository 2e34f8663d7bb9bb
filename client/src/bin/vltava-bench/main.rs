//! `vltava-bench`: the load generator of vltava, in the manner of kafka-producer-perf-test and
//! iggy-bench.
//!
//! `vltava-bench produce|consume|both` runs producers and/or consumers against a cluster and
//! reports events/s, MB/s (1 MB = 10^6 bytes; of event values, "payload", and of record-batch
//! bytes, what crosses the wire less a few dozen bytes of framing per request) and latency
//! percentiles from a log-bucketed histogram (under 0.8 % error).
//!
//! Two modes:
//! - `raw` (default): each producer builds its record batch once and sends the same bytes
//!   again and again with `Connection::submit`, keeping `--in-flight` batches waiting per
//!   partition; consumers fetch and count records from batch headers (CRCs are checked). This
//!   measures the broker, not the client's per-event path. Latency is per batch (per fetch).
//! - `client`: events go through `Producer::send` and come back through `Consumer::poll`.
//!   Latency is per event for producers, per poll for consumers.
//!
//! Latency is free of coordinated omission: with `--rate` a pacing thread releases each batch
//! at its intended time on a fixed schedule and latency counts from that intended time, so a
//! stall that delays later sends shows up in their latency; without `--rate` it counts from
//! the moment the request is submitted.
//!
//! Every wait is bounded: requests carry timeouts, and the run stops after `--messages` events
//! or `--duration-s` seconds, whichever comes first.
//!
//! `produce --baseline-dir DIR` also runs a loop of one write and one fdatasync per batch (no
//! broker, see `disk_baseline`) in DIR before and after the produce run, and reports the
//! produce MB/s as a ratio of it: how close the broker comes to its disk, in one command.
//!
//! Consumer groups have two commands of their own:
//! - `groups-rebalance`: `--members` `GroupConsumer`s read a topic that receives a steady
//!   stream; once the group is stable one more member joins, and the bench reports how long
//!   each partition went unread (see `groups_rebalance`).
//! - `groups-scale`: `--groups` × `--members-per-group` simulated members speak
//!   ConsumerGroupHeartbeat over a few shared connections; the bench reports heartbeats/s,
//!   heartbeat latency and the node's CPU and memory (see `groups_scale`).

mod consume;
mod disk_baseline;
mod groups_rebalance;
mod groups_scale;
mod histogram;
mod malloc;
mod produce;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::Barrier;
use vltava_client::{Admin, Cluster};
use vltava_messages::ErrorCode;
use vltava_messages::protocol::Acks;

use crate::histogram::Histogram;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Command {
    /// Producers only.
    Produce,
    /// Consumers only, reading the topic from its earliest offset.
    Consume,
    /// Producers and consumers at once; consumers start at the latest offset.
    Both,
    /// A consumer group under a steady stream gains a member: how long partitions go unread.
    GroupsRebalance,
    /// Many simulated group members heartbeating: the coordinator's capacity and cost.
    GroupsScale,
}

impl Command {
    fn is_groups(self) -> bool {
        matches!(self, Command::GroupsRebalance | Command::GroupsScale)
    }
}

/// How simulated members of `groups-scale` pace their heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HeartbeatMode {
    /// Each member heartbeats once per heartbeat interval (the node's, from its answers),
    /// on a fixed schedule, as a real member does.
    Paced,
    /// Each worker sends its members' heartbeats back to back: the most the node answers.
    Capacity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Prebuilt batches over `Connection::submit`, fetches counted from batch headers.
    Raw,
    /// Through `Producer::send` and `Consumer::poll`, event by event.
    Client,
}

/// The vltava load generator.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "vltava-bench",
    version,
    about = "The vltava load generator: events/s, MB/s and latency percentiles of producers and consumers"
)]
pub struct Cli {
    /// What to run.
    #[arg(value_enum)]
    command: Command,
    /// Nodes to bootstrap from, comma-separated.
    #[arg(long, env = "VLTAVA_BOOTSTRAP", default_value = "127.0.0.1:9420")]
    bootstrap: String,
    #[arg(long, default_value = "vltava-bench")]
    pub topic: String,
    /// Create the topic first (with --partitions, replication factor 1); an existing topic
    /// is used as it is. The groups commands always create their topic if it is missing.
    #[arg(long)]
    create: bool,
    /// Partitions of the topic (when creating it); producers and consumers split them
    /// [default: 1; groups-rebalance 64; groups-scale 10].
    #[arg(long)]
    partitions: Option<u32>,
    /// Events to send (all producers together), or to read (all consumers together).
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Bytes of each event's value (no key, no headers).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Events per batch (raw mode: exactly; client mode: the producer's batch_bytes is set
    /// to hold this many).
    #[arg(long, default_value_t = 1000)]
    pub batch: u32,
    /// The producer's linger (client mode).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Batches in flight per partition of each producer (a connection carries at most 32
    /// requests and the node admits 16 per connection by default).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// 0, 1 or all (-1).
    #[arg(long, default_value = "1", value_parser = parse_acks)]
    pub acks: Acks,
    /// Idempotent producer (client mode, acks=all only).
    #[arg(long)]
    pub idempotent: bool,
    #[arg(long, default_value_t = 1)]
    producers: usize,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Target events/s of all producers together, paced on a fixed schedule; latency then
    /// counts from each send's intended time.
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, value_enum, default_value_t = Mode::Raw)]
    pub mode: Mode,
    /// Stop sending and reading after this long, whatever --messages says; groups-scale:
    /// how long to measure once every group is stable [default: 300; groups-scale 30].
    #[arg(long)]
    duration_s: Option<u64>,
    /// Timeout of each produce request.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u32,
    /// Most record bytes per fetch answer and per partition (the node caps it at 6 MiB; as
    /// Kafka's max.partition.fetch.bytes, 1 MiB by default).
    #[arg(long, default_value_t = 1 << 20)]
    pub fetch_bytes: u32,
    /// Also report the CPU time this process used (from /proc/<pid>/stat), e.g. the node's.
    #[arg(long)]
    node_pid: Option<u32>,
    /// produce: before and after the run, write and fdatasync batches of the run's batch size
    /// into a new file in this directory (put it on the node's data disk), with no broker,
    /// and report the produce batch MB/s as a ratio of that loop's mean MB/s.
    #[arg(long)]
    baseline_dir: Option<PathBuf>,
    /// With `--baseline-dir`: run that many loops at once, each into its own file, the
    /// run's bytes shared among them, and compare with the pace of one of them (an RF 3
    /// cluster on one disk syncs every byte three times). At most 8.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    baseline_writers: u16,
    /// Print one JSON object with every figure and nothing else on stdout.
    #[arg(long)]
    json: bool,
    /// Leave glibc's malloc thresholds alone. By default the bench keeps buffers up to
    /// 16 MiB on the heap, because the client allocates a fresh buffer (two, with decoding)
    /// for every answer and glibc otherwise maps and unmaps each one of 128 KiB or more,
    /// which makes consume figures swing between runs by 3x (see docs/benchmarks.md).
    #[arg(long)]
    malloc_default: bool,
    /// groups-rebalance: members of the group at first (one more joins later).
    #[arg(long, default_value_t = 8)]
    members: usize,
    /// groups-rebalance: how long the fetches of a member wait on the node for events.
    #[arg(long, default_value_t = 50)]
    fetch_wait_ms: u64,
    /// groups-rebalance: how long to watch the stable group (the steady-state gaps) before
    /// the extra member joins.
    #[arg(long, default_value_t = 10)]
    steady_s: u64,
    /// groups-rebalance: how long to keep watching after the group is stable again.
    #[arg(long, default_value_t = 5)]
    settle_s: u64,
    /// groups-*: the longest wait for the group (every group) to become stable.
    #[arg(long, default_value_t = 120)]
    stable_timeout_s: u64,
    /// groups-rebalance: the group id [default: vltava-bench-<pid>-<unix seconds>, new each
    /// run]; groups-scale: the prefix of the group ids (`<prefix>-<n>`).
    #[arg(long)]
    group: Option<String>,
    /// groups-*: the node's --group-heartbeat-interval-ms, copied into the report only: the
    /// bench uses the interval the node announces in its heartbeat answers, and reports that
    /// too.
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// groups-scale: consumer groups.
    #[arg(long, default_value_t = 1000)]
    groups: usize,
    /// groups-scale: simulated members per group.
    #[arg(long, default_value_t = 10)]
    members_per_group: usize,
    /// groups-scale: connections to each coordinator; each carries at most 16 requests at
    /// once (the node's default per-connection limit).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// groups-scale: heartbeat on each member's schedule, or as fast as answers come.
    #[arg(long, value_enum, default_value_t = HeartbeatMode::Paced)]
    heartbeat_mode: HeartbeatMode,
}

impl Cli {
    fn partitions(&self) -> u32 {
        self.partitions.unwrap_or(match self.command {
            Command::GroupsRebalance => 64,
            Command::GroupsScale => 10,
            Command::Produce | Command::Consume | Command::Both => 1,
        })
    }

    fn duration_s(&self) -> u64 {
        self.duration_s.unwrap_or(match self.command {
            Command::GroupsScale => 30,
            _ => 300,
        })
    }

    /// The longest the whole run may take: its own duration plus every bounded wait of the
    /// command, plus slack for set-up and shutdown.
    fn run_limit(&self) -> Duration {
        let extra = match self.command {
            Command::GroupsRebalance => self.steady_s + self.settle_s + 2 * self.stable_timeout_s,
            Command::GroupsScale => {
                groups_scale::JOIN_TIMEOUT.as_secs()
                    + groups_scale::LEAVE_TIMEOUT.as_secs()
                    + self.stable_timeout_s
            }
            Command::Produce | Command::Consume | Command::Both => 0,
        };
        Duration::from_secs(self.duration_s() + extra + 180)
    }

    /// The bootstrap addresses, split.
    fn bootstrap_addrs(&self) -> Vec<String> {
        self.bootstrap
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Whether `malloc::keep_large_buffers_on_heap` took effect.
static MALLOC_TUNED: AtomicBool = AtomicBool::new(false);

fn parse_acks(value: &str) -> Result<Acks, String> {
    match value {
        "0" => Ok(Acks::None),
        "1" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        other => Err(format!("acks must be 0, 1 or all, not {other:?}")),
    }
}

fn acks_name(acks: Acks) -> &'static str {
    match acks {
        Acks::None => "0",
        Acks::Leader => "1",
        Acks::All => "all",
    }
}

/// What one producer or consumer did.
#[derive(Debug)]
pub struct Outcome {
    pub events: u64,
    /// Requests answered (batches produced, fetches or polls that brought events).
    pub requests: u64,
    /// Fetches or polls that brought nothing (long polls that ran out); not in the latency.
    pub empty_requests: u64,
    /// Bytes of event values.
    pub payload_bytes: u64,
    /// Bytes of record batches.
    pub batch_bytes: u64,
    pub started: Instant,
    pub finished: Instant,
    pub latency: Histogram,
    /// With `--rate`: how late each send left after its intended time (the sender's own
    /// delay, already inside `latency`).
    pub lag: Histogram,
    pub error: Option<String>,
}

impl Outcome {
    pub fn new(started: Instant) -> Outcome {
        Outcome {
            events: 0,
            requests: 0,
            empty_requests: 0,
            payload_bytes: 0,
            batch_bytes: 0,
            started,
            finished: started,
            latency: Histogram::default(),
            lag: Histogram::default(),
            error: None,
        }
    }
}

/// What every task shares.
#[derive(Debug)]
pub struct Shared {
    pub cli: Cli,
    /// Everyone waits here once set up, so the clocks start together.
    pub start: Barrier,
    pub deadline_after: Duration,
    /// Events consumers read so far, all together.
    pub consumed: AtomicU64,
    /// Events consumers should read: `--messages`, lowered to what producers really sent
    /// when they stop early.
    pub consume_target: AtomicU64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_output = cli.json;
    MALLOC_TUNED.store(
        !cli.malloc_default && malloc::keep_large_buffers_on_heap(),
        Ordering::SeqCst,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vltava-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limit = cli.run_limit();
    let outcome = runtime.block_on(async {
        match tokio::time::timeout(limit, run(cli)).await {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!(
                "the run did not end within {} s",
                limit.as_secs()
            )),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok((report, ok)) => {
            if json_output {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{report}");
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("vltava-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(cli: &Cli) -> anyhow::Result<()> {
    if cli.command.is_groups() {
        return Ok(());
    }
    if cli.messages == 0 || cli.size == 0 || cli.batch == 0 || cli.in_flight == 0 {
        bail!("--messages, --size, --batch and --in-flight must be positive");
    }
    if cli.producers == 0 || cli.consumers == 0 || cli.partitions() == 0 {
        bail!("--producers, --consumers and --partitions must be positive");
    }
    if let Some(rate) = cli.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of events per second");
    }
    let batch_estimate = cli.batch as u64 * (cli.size as u64 + 16) + 61;
    if batch_estimate > u64::from(vltava_messages::limits::BATCH_BYTES_MAX) {
        bail!(
            "a batch of {} events of {} bytes (~{batch_estimate} bytes) exceeds the 4 MiB batch limit",
            cli.batch,
            cli.size
        );
    }
    Ok(())
}

/// `tokio::time::timeout` for futures that are usually ready at once (a send into a buffer
/// with room, a delivery already answered): the first poll happens before any timer is
/// armed, since arming one per event (a clock read and a timer-wheel entry) was a tenth of
/// the bench's CPU in client mode.
pub(crate) async fn within<F: std::future::Future>(
    limit: Duration,
    future: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut future = std::pin::pin!(future);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(output) => Ok(output),
        std::task::Poll::Pending => tokio::time::timeout(limit, future).await,
    }
}

async fn run(cli: Cli) -> anyhow::Result<(Value, bool)> {
    match cli.command {
        Command::GroupsRebalance => return groups_rebalance::run(&cli).await,
        Command::GroupsScale => return groups_scale::run(&cli).await,
        Command::Produce | Command::Consume | Command::Both => {}
    }
    validate(&cli)?;
    let bootstrap = cli.bootstrap_addrs();
    let admin_cluster = Cluster::connect(&bootstrap, "vltava-bench-admin")
        .await
        .context("cannot reach the cluster")?;
    if cli.create {
        match Admin::new(Arc::clone(&admin_cluster))
            .create_topic(&cli.topic, cli.partitions(), 1, BTreeMap::new())
            .await
        {
            Ok(()) => {}
            Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {
                eprintln!("vltava-bench: topic {} exists; using it", cli.topic);
            }
            Err(e) => return Err(e).context("cannot create the topic"),
        }
    }
    let partitions = admin_cluster
        .partition_count(&cli.topic)
        .await
        .with_context(|| format!("topic {}", cli.topic))?;
    drop(admin_cluster);

    let producing = cli.command != Command::Consume;
    let consuming = cli.command != Command::Produce;
    let producers = if producing { cli.producers } else { 0 };
    let consumers = if consuming { cli.consumers } else { 0 };
    let shared = Arc::new(Shared {
        cli: cli.clone(),
        start: Barrier::new(producers + consumers + 1),
        deadline_after: Duration::from_secs(cli.duration_s()),
        consumed: AtomicU64::new(0),
        consume_target: AtomicU64::new(cli.messages),
    });

    // Split partitions and events among producers and consumers.
    // Partition p goes to task p % count; with more tasks than partitions, task i takes
    // partition i % partitions (producers then share it; surplus consumers get none).
    let assign = |count: usize, index: usize| -> Vec<u32> {
        if count <= partitions as usize {
            (0..partitions)
                .filter(|p| *p as usize % count == index)
                .collect()
        } else {
            vec![(index % partitions as usize) as u32]
        }
    };
    let mut producer_tasks = Vec::new();
    for i in 0..producers {
        let mine = assign(producers, i);
        let events = cli.messages / producers as u64
            + u64::from((i as u64) < cli.messages % producers as u64);
        let cluster = Cluster::connect(&bootstrap, &format!("vltava-bench-producer-{i}"))
            .await
            .context("cannot reach the cluster")?;
        let shared = Arc::clone(&shared);
        producer_tasks.push(tokio::spawn(async move {
            produce::run(shared, cluster, mine, events, i).await
        }));
    }
    let mut consumer_tasks = Vec::new();
    for i in 0..consumers {
        let mine = if i < partitions as usize {
            assign(consumers, i)
        } else {
            Vec::new()
        };
        let cluster = Cluster::connect(&bootstrap, &format!("vltava-bench-consumer-{i}"))
            .await
            .context("cannot reach the cluster")?;
        let shared = Arc::clone(&shared);
        let from_latest = cli.command == Command::Both;
        consumer_tasks.push(tokio::spawn(async move {
            consume::run(shared, cluster, mine, from_latest).await
        }));
    }

    let baseline_before = baseline(&cli).await?;
    let load_start = loadavg();
    let cpu_start = (
        cpu_seconds(None),
        cli.node_pid.map(|p| cpu_seconds(Some(p))),
    );
    // Tasks that fail during set-up still reach the barrier, so this never waits forever.
    shared.start.wait().await;

    let mut produced = Vec::new();
    for task in producer_tasks {
        produced.push(task.await.context("a producer panicked")?);
    }
    if producing {
        let sent: u64 = produced.iter().map(|o| o.events).sum();
        shared.consume_target.store(sent, Ordering::SeqCst);
    }
    let mut consumed = Vec::new();
    for task in consumer_tasks {
        consumed.push(task.await.context("a consumer panicked")?);
    }
    let cpu_end = (
        cpu_seconds(None),
        cli.node_pid.map(|p| cpu_seconds(Some(p))),
    );
    let load_end = loadavg();
    let baseline_after = baseline(&cli).await?;

    let mut ok = true;
    let mut report = json!({
        "command": format!("{:?}", cli.command).to_lowercase(),
        "mode": format!("{:?}", cli.mode).to_lowercase(),
        "bootstrap": cli.bootstrap,
        "topic": cli.topic,
        "partitions": partitions,
        "messages": cli.messages,
        "size": cli.size,
        "batch": cli.batch,
        "in_flight": cli.in_flight,
        "acks": acks_name(cli.acks),
        "linger_ms": cli.linger_ms,
        "producers": producers,
        "consumers": consumers,
        "rate": cli.rate,
        "nproc": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "mb": "10^6 bytes",
        "malloc_tuned": MALLOC_TUNED.load(Ordering::SeqCst),
        "bench_cpu_s": diff(cpu_start.0, cpu_end.0),
        "node_cpu_s": cpu_start.1.zip(cpu_end.1).map(|(a, b)| diff(a, b)),
    });
    if producing {
        let unit = match cli.mode {
            Mode::Raw => "batch",
            Mode::Client => "event",
        };
        let from = if cli.rate.is_some() {
            "intended send time (paced)"
        } else {
            "submission"
        };
        let section = summarize(&produced, unit, from);
        ok &= section["errors"].as_array().is_some_and(Vec::is_empty);
        if cli.acks == Acks::None {
            report["produce_note"] =
                json!("acks=0: counted when written to the socket; no latency");
        }
        if let (Some(before), Some(after)) = (baseline_before, baseline_after) {
            let rates = [&before, &after].map(|b| b["mb_per_s"].as_f64().unwrap_or(0.0));
            let mean = f64::midpoint(rates[0], rates[1]);
            let ratio = section["batch_mb_per_s"]
                .as_f64()
                .filter(|_| mean > 0.0)
                .map(|mb| (mb / mean * 1000.0).round() / 1000.0);
            report["baseline"] = json!({
                "what": "write + fdatasync per batch into a new file per writer, no broker",
                "before": before,
                "after": after,
                "mean_mb_per_s": (mean * 10.0).round() / 10.0,
                "produce_ratio": ratio,
            });
        }
        report["produce"] = section;
    }
    if consuming {
        let unit = match cli.mode {
            Mode::Raw => "fetch",
            Mode::Client => "poll",
        };
        let section = summarize(&consumed, unit, "request");
        ok &= section["errors"].as_array().is_some_and(Vec::is_empty);
        report["consume"] = section;
    }
    if !cli.json {
        print_text(&report);
    }
    Ok((report, ok))
}

/// With `--baseline-dir` on `produce`: one loop of the disk's own pace (`disk_baseline`) with
/// the run's batch size and about the bytes the run writes.
async fn baseline(cli: &Cli) -> anyhow::Result<Option<Value>> {
    let Some(dir) = cli.baseline_dir.clone() else {
        return Ok(None);
    };
    if cli.command != Command::Produce || cli.mode != Mode::Raw {
        bail!("--baseline-dir goes with `produce` in raw mode");
    }
    let batch_bytes = produce::batch_bytes(cli.size, cli.batch);
    let total_bytes = cli.messages.div_ceil(u64::from(cli.batch)) * batch_bytes as u64;
    let writers = usize::from(cli.baseline_writers);
    let value = tokio::task::spawn_blocking(move || {
        disk_baseline::run(&dir, batch_bytes, total_bytes, writers)
    })
    .await
    .context("the baseline loop panicked")??;
    Ok(Some(value))
}

fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| ((b - a) * 100.0).round() / 100.0)
}

/// Adds up the outcomes of one side.
fn summarize(outcomes: &[Outcome], unit: &str, from: &str) -> Value {
    let mut latency = Histogram::default();
    let mut lag = Histogram::default();
    let (mut events, mut requests, mut payload, mut batches) = (0u64, 0u64, 0u64, 0u64);
    let mut empty = 0u64;
    let mut errors = Vec::new();
    let started = outcomes.iter().map(|o| o.started).min();
    let finished = outcomes.iter().map(|o| o.finished).max();
    for o in outcomes {
        latency.merge(&o.latency);
        lag.merge(&o.lag);
        events += o.events;
        requests += o.requests;
        empty += o.empty_requests;
        payload += o.payload_bytes;
        batches += o.batch_bytes;
        if let Some(e) = &o.error {
            errors.push(e.clone());
        }
    }
    let elapsed = started
        .zip(finished)
        .map_or(0.0, |(s, f)| f.duration_since(s).as_secs_f64());
    let per_s = |n: u64| {
        if elapsed > 0.0 {
            n as f64 / elapsed
        } else {
            0.0
        }
    };
    let round = |x: f64, digits: i32| {
        let scale = 10f64.powi(digits);
        (x * scale).round() / scale
    };
    json!({
        "events": events,
        "requests": requests,
        "empty_requests": empty,
        "elapsed_s": round(elapsed, 4),
        "events_per_s": round(per_s(events), 0),
        "payload_mb_per_s": round(per_s(payload) / 1e6, 1),
        // Unknown when a consumer decodes events (client mode).
        "batch_mb_per_s": (batches > 0).then(|| round(per_s(batches) / 1e6, 1)),
        "payload_bytes": payload,
        "batch_bytes": batches,
        "latency_per": unit,
        "latency_from": from,
        "latency_us": latency.summary_us(),
        "send_lag_us": (lag.count() > 0).then(|| lag.summary_us()),
        "errors": errors,
    })
}

/// Prints a report for people with its command's writer. Written with `writeln!` so that a
/// closed pipe (`| head`) ends the output quietly instead of panicking.
pub(crate) fn print_with(
    report: &Value,
    write: impl FnOnce(&Value, &mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) {
    let mut out = std::io::stdout().lock();
    let _ = write(report, &mut out);
    let _ = out.flush();
}

fn print_text(report: &Value) {
    print_with(report, write_text);
}

fn write_text(report: &Value, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "vltava-bench {} mode={} acks={} size={} batch={} in_flight={} partitions={} producers={} consumers={} rate={} load {} -> {}",
        report["command"].as_str().unwrap_or(""),
        report["mode"].as_str().unwrap_or(""),
        report["acks"].as_str().unwrap_or(""),
        report["size"],
        report["batch"],
        report["in_flight"],
        report["partitions"],
        report["producers"],
        report["consumers"],
        report["rate"],
        report["loadavg_start"].as_str().unwrap_or("?"),
        report["loadavg_end"].as_str().unwrap_or("?"),
    )?;
    let baseline = &report["baseline"];
    if !baseline.is_null() {
        writeln!(
            out,
            "disk baseline (write + fdatasync of {} bytes per batch, no broker, {} writer(s) at once, MB/s of one): {} MB/s before, {} MB/s after; produce at {} of their mean",
            baseline["before"]["batch_bytes"],
            baseline["before"]["writers"],
            baseline["before"]["mb_per_s"],
            baseline["after"]["mb_per_s"],
            baseline["produce_ratio"],
        )?;
    }
    for side in ["produce", "consume"] {
        let s = &report[side];
        if s.is_null() {
            continue;
        }
        let l = &s["latency_us"];
        let batches = match s["batch_mb_per_s"].as_f64() {
            Some(mb) => format!(", {mb} MB/s batches"),
            None => String::new(),
        };
        writeln!(
            out,
            "{side}: {} events in {} s: {} events/s, {} MB/s payload{batches} ({} requests, {} empty)",
            s["events"],
            s["elapsed_s"],
            s["events_per_s"],
            s["payload_mb_per_s"],
            s["requests"],
            s["empty_requests"],
        )?;
        if l["count"].as_u64().unwrap_or(0) > 0 {
            writeln!(
                out,
                "{side}: latency per {} from {} (us): p50 {} p90 {} p99 {} p99.9 {} max {} mean {} ({} samples)",
                s["latency_per"].as_str().unwrap_or(""),
                s["latency_from"].as_str().unwrap_or(""),
                l["p50"],
                l["p90"],
                l["p99"],
                l["p999"],
                l["max"],
                l["mean"],
                l["count"],
            )?;
        }
        let lag = &s["send_lag_us"];
        if !lag.is_null() {
            writeln!(
                out,
                "{side}: sends left after their intended time by (us): p50 {} p99 {} max {}",
                lag["p50"], lag["p99"], lag["max"],
            )?;
        }
        if let Some(errors) = s["errors"].as_array() {
            for e in errors {
                writeln!(out, "{side}: error: {}", e.as_str().unwrap_or(""))?;
            }
        }
    }
    if let Some(cpu) = report["bench_cpu_s"].as_f64() {
        write!(out, "cpu: bench {cpu} s")?;
        if let Some(node) = report["node_cpu_s"].as_f64() {
            write!(out, ", node {node} s")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Resident memory of a process in bytes (`VmRSS` of /proc/<pid>/status).
fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes as MiB with one decimal.
fn mib(bytes: Option<u64>) -> Option<f64> {
    bytes.map(|b| (b as f64 / (1 << 20) as f64 * 10.0).round() / 10.0)
}

/// Creates `topic` with `partitions` (replication factor 1) unless it exists, and returns
/// its partition count.
async fn ensure_topic(cluster: &Arc<Cluster>, topic: &str, partitions: u32) -> anyhow::Result<u32> {
    match Admin::new(Arc::clone(cluster))
        .create_topic(topic, partitions, 1, BTreeMap::new())
        .await
    {
        Ok(()) => {}
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {
            eprintln!("vltava-bench: topic {topic} exists; using it");
        }
        Err(e) => return Err(e).context("cannot create the topic"),
    }
    cluster
        .partition_count(topic)
        .await
        .with_context(|| format!("topic {topic}"))
}

/// Wall-clock milliseconds since the Unix epoch (event timestamps use it).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Rounds to `digits` decimals.
fn round_to(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// A duration in milliseconds with one decimal.
fn ms(d: Duration) -> f64 {
    round_to(d.as_secs_f64() * 1000.0, 1)
}

/// User plus system CPU seconds of a process (this one when `None`), from /proc (USER_HZ is
/// 100 on Linux).
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let after = text.rsplit_once(") ")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
