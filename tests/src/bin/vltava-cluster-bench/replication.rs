//! Replication (issue 13): produce throughput, latency, replication lag and follower catch-up
//! of RF 3 topics on the 3-node cluster, against a single node (no quorum, RF 1, the same
//! fsync durability and event size) measured in the same run.
//!
//! The load comes from `vltava-bench produce` in its raw mode, run as a child process with
//! `--json`: one prebuilt batch of `BATCH_EVENTS` events of `EVENT_BYTES` resent under fresh
//! correlation ids with `--in-flight` batches unanswered per partition, so the single-node and
//! the cluster figures come from the same load generator, and the cluster figures are
//! comparable with the single-node ones in docs/benchmarks.md. Every throughput run gets a new
//! one-partition topic (the cluster's created with replication factor 3 and used once all
//! three replicas are in its ISR; the single node's created by the bench on a fresh node).
//!
//! Per repeat (`--repeats`), one cluster:
//! 1. acks=all, 1 in flight: single node, then RF 3; acks=all, 4 in flight: single node, then
//!    RF 3; then RF 3 acks=1 with 1 and 4 in flight. The single node's acks=all 1-in-flight
//!    run measures the disk loop (one write + fdatasync per batch, no broker) before and
//!    after it, and each RF 3 acks=all run the same loop as three writers at once, one per
//!    replica (the physical line of RF 3 on one disk: the pace of one of the three).
//! 2. Paced: RF 3 acks=all at half the rate of this repeat's RF 3 acks=all 1-in-flight run,
//!    4 in flight, for `--paced-s`; latency from each batch's intended send time (the bench's
//!    pacer). Meanwhile a sampler reads the leader's and both followers' `/partitions`
//!    (admin endpoint) every `--sample-ms` for the replication lag (see `lags`).
//! 3. Catch-up: SIGKILL a follower (not the controller), produce `--catch-up-events` with
//!    acks=1 to a new RF 3 topic, restart the follower and poll its `/partitions` every
//!    `--sample-ms` until its log end reaches the leader's.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::runtime::Runtime;
use vltava_client::connection::Connection;
use vltava_messages::protocol::{CreateTopicsRequest, NewTopic};
use vltava_tests::TestNode;
use vltava_tests::cluster::TestCluster;

use crate::stats::{Samples, ms};
use crate::{Args, CLIENT_ID, REQUEST_TIMEOUT, check_interrupted, load_average, start_cluster};

/// Bytes of each event's value: the 1 KiB.
const EVENT_BYTES: usize = 1024;
/// Events per batch: the shape of every produce figure in docs/benchmarks.md (1.03 MB batches).
const BATCH_EVENTS: u32 = 1000;
/// How long a new RF 3 topic may take until all three replicas are in its ISR.
const ISR_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted follower may take to catch up before the run gives up: far above a
/// gigabyte at the disk's pace.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);
/// How many times a run refused with "still opening" before it wrote anything is tried.
const BENCH_ATTEMPTS_MAX: u32 = 20;

/// One `vltava-bench produce` run.
#[derive(Debug, Clone)]
struct BenchRun {
    events_per_s: f64,
    payload_mb_per_s: f64,
    batch_mb_per_s: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    /// Paced runs: how late each batch left against its intended time (p50, p99), i.e. how
    /// long it waited for room in the in-flight window. Latency counts from the intended
    /// time, so a latency close to this lag is a producer behind its schedule (a backlog),
    /// not slow answers.
    send_lag_ms: Option<(f64, f64)>,
    events: u64,
    batch_bytes: u64,
    /// CPU seconds of the node processes (all three for the cluster) during the run.
    nodes_cpu_s: f64,
    bench_cpu_s: f64,
    /// `--baseline-dir`'s write + fdatasync loop, mean of before and after, if run (with
    /// several writers at once, the pace of one).
    disk_loop_mb_per_s: Option<f64>,
    /// How many loops ran at once.
    disk_loop_writers: u64,
    load_start: String,
}

impl BenchRun {
    fn line(&self) -> String {
        let disk = self
            .disk_loop_mb_per_s
            .map(|d| match self.disk_loop_writers {
                1 => format!("; disk loop {d:.0} MB/s"),
                n => format!("; disk loop {d:.0} MB/s each of {n} at once"),
            })
            .unwrap_or_default();
        let lag = self
            .send_lag_ms
            .map(|(p50, p99)| format!(" (send lag p50 {p50:.2} ms p99 {p99:.2} ms)"))
            .unwrap_or_default();
        format!(
            "{:.0} events/s, {:.1} MB/s payload ({:.1} MB/s batches), latency p50 {:.2} ms p99 \
             {:.2} ms{lag}, {} events, node CPU {:.1} s, bench CPU {:.1} s, load {}{disk}",
            self.events_per_s,
            self.payload_mb_per_s,
            self.batch_mb_per_s,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.events,
            self.nodes_cpu_s,
            self.bench_cpu_s,
            self.load_start
        )
    }
}

/// The replication lag of one follower during the paced run.
#[derive(Debug)]
struct FollowerLag {
    node: u32,
    /// Leader log end seen → follower log end seen at or past it.
    append: Samples,
    /// Leader log end seen → follower flushed offset seen at or past it.
    flushed: Samples,
    /// Leader samples whose offset the follower never showed before the sampler stopped.
    unmatched: usize,
}

#[derive(Debug)]
struct Paced {
    rate: f64,
    /// The paced run, or why it failed (a rate the cluster could not hold: the run then
    /// reports the lag it saw; see docs/benchmarks.md).
    run: Result<BenchRun, String>,
    leader: u32,
    followers: Vec<FollowerLag>,
    /// Leader log end seen → leader high watermark seen at or past it.
    commit: Samples,
    samples: usize,
    sample_period_mean: Duration,
}

#[derive(Debug)]
struct CatchUp {
    follower: u32,
    leader: u32,
    events_behind: u64,
    bytes_behind: u64,
    produced: BenchRun,
    restart_ready: Duration,
    caught_up_after_relaunch: Duration,
}

impl CatchUp {
    /// From the node's "ready" line to its log end at the leader's.
    fn fetch_time(&self) -> Duration {
        self.caught_up_after_relaunch
            .saturating_sub(self.restart_ready)
    }
}

#[derive(Debug)]
struct Repeat {
    single_all_1: BenchRun,
    single_all_4: BenchRun,
    rf3_all_1: BenchRun,
    rf3_all_4: BenchRun,
    rf3_one_1: BenchRun,
    rf3_one_4: BenchRun,
    paced: Paced,
    catch_up: CatchUp,
}

#[derive(Debug)]
pub struct Report {
    events: u64,
    repeats: Vec<Repeat>,
}

pub fn run(rt: &Runtime, args: &Args) -> anyhow::Result<Report> {
    println!(
        "\n== replication: {} repeats; {} events of {EVENT_BYTES} B, {BATCH_EVENTS} per batch, \
         per throughput run",
        args.repeats, args.events
    );
    let mut repeats = Vec::new();
    for r in 0..args.repeats {
        repeats.push(one_repeat(rt, args, r)?);
    }
    Ok(Report {
        events: args.events,
        repeats,
    })
}

fn one_repeat(rt: &Runtime, args: &Args, r: u32) -> anyhow::Result<Repeat> {
    println!("\n-- repeat {r}");
    let (mut cluster, controller) = start_cluster(rt)?;
    let events = args.events.to_string();
    let throughput = |acks: &str, in_flight: u32| -> Vec<String> {
        [
            "--messages",
            &events,
            "--acks",
            acks,
            "--in-flight",
            &in_flight.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    };

    let single_all_1 = single_node(&throughput("all", 1), true)?;
    println!(
        "  single node, acks=all, 1 in flight: {}",
        single_all_1.line()
    );
    // The RF 3 acks=all runs also measure the disk's pace with three writers at once, one per
    // replica, in the directory that holds node 1's data (`--baseline-writers 3`): the
    // physical line of a partition whose three replicas each sync every batch on this one
    // disk, in the same conditions as the run.
    let line_dir = cluster
        .node(1)
        .data_dir
        .parent()
        .context("node 1's data directory has a parent")?
        .display()
        .to_string();
    let with_rf3_line = |mut run: Vec<String>| {
        run.extend(["--baseline-dir", &line_dir, "--baseline-writers", "3"].map(str::to_owned));
        run
    };
    let rf3_all_1 = on_cluster(
        rt,
        &cluster,
        &format!("all-1-r{r}"),
        &with_rf3_line(throughput("all", 1)),
    )?
    .1;
    println!("  RF 3, acks=all, 1 in flight: {}", rf3_all_1.line());
    let single_all_4 = single_node(&throughput("all", 4), false)?;
    println!(
        "  single node, acks=all, 4 in flight: {}",
        single_all_4.line()
    );
    let rf3_all_4 = on_cluster(
        rt,
        &cluster,
        &format!("all-4-r{r}"),
        &with_rf3_line(throughput("all", 4)),
    )?
    .1;
    println!("  RF 3, acks=all, 4 in flight: {}", rf3_all_4.line());
    let rf3_one_1 = on_cluster(rt, &cluster, &format!("one-1-r{r}"), &throughput("1", 1))?.1;
    println!("  RF 3, acks=1, 1 in flight: {}", rf3_one_1.line());
    let rf3_one_4 = on_cluster(rt, &cluster, &format!("one-4-r{r}"), &throughput("1", 4))?.1;
    println!("  RF 3, acks=1, 4 in flight: {}", rf3_one_4.line());

    let paced = paced(rt, args, &cluster, r, rf3_all_1.events_per_s / 2.0)?;
    match &paced.run {
        Ok(run) => println!(
            "  paced RF 3 acks=all at {:.0} events/s: {}",
            paced.rate,
            run.line()
        ),
        Err(e) => println!(
            "  paced RF 3 acks=all at {:.0} events/s FAILED: {e}",
            paced.rate
        ),
    }
    for f in &paced.followers {
        println!(
            "    follower {} append lag {}; flushed lag {}; unmatched {}",
            f.node, f.append, f.flushed, f.unmatched
        );
    }
    println!(
        "    leader {} commit lag (log end → high watermark) {}; {} samples, mean period {}",
        paced.leader,
        paced.commit,
        paced.samples,
        ms(paced.sample_period_mean)
    );

    let catch_up = catch_up(rt, args, &mut cluster, controller, r)?;
    println!(
        "  catch-up: follower {} {} events ({:.1} MB) behind leader {}: ready {} after \
         relaunch, caught up {} after ready = {:.1} MB/s",
        catch_up.follower,
        catch_up.events_behind,
        catch_up.bytes_behind as f64 / 1e6,
        catch_up.leader,
        ms(catch_up.restart_ready),
        ms(catch_up.fetch_time()),
        catch_up.bytes_behind as f64 / 1e6 / catch_up.fetch_time().as_secs_f64()
    );
    Ok(Repeat {
        single_all_1,
        single_all_4,
        rf3_all_1,
        rf3_all_4,
        rf3_one_1,
        rf3_one_4,
        paced,
        catch_up,
    })
}

/// A run on a fresh single node (no `--controller-quorum`, default fsync durability) and a
/// topic the bench creates (RF 1); with `disk_loop`, also the bench's write + fdatasync loop
/// in the directory that holds the node's data.
fn single_node(extra: &[String], disk_loop: bool) -> anyhow::Result<BenchRun> {
    check_interrupted()?;
    let node = TestNode::start();
    let mut args = vec!["--create".to_owned()];
    args.extend(extra.iter().cloned());
    if disk_loop {
        let dir = node
            .data_dir
            .parent()
            .context("the node's data directory has a parent")?;
        args.push("--baseline-dir".into());
        args.push(dir.display().to_string());
    }
    let pid = node.pid().context("the node runs")?;
    bench(&node.addr, "single", &args, &[pid])
}

/// A run against the cluster on a new RF 3 topic `rf3-<name>`; returns its leader too.
fn on_cluster(
    rt: &Runtime,
    cluster: &TestCluster,
    name: &str,
    extra: &[String],
) -> anyhow::Result<(u32, BenchRun)> {
    let topic = format!("rf3-{name}");
    let leader = create_rf3(rt, cluster, &topic)?;
    let run = bench(
        &cluster.bootstrap().join(","),
        &topic,
        extra,
        &cluster_pids(cluster)?,
    )?;
    Ok((leader, run))
}

fn cluster_pids(cluster: &TestCluster) -> anyhow::Result<Vec<u32>> {
    (1..=3)
        .map(|id| cluster.node(id).pid().context("a member is not running"))
        .collect()
}

/// Creates a one-partition RF 3 topic and waits until every replica is in its ISR and runs a
/// partition actor for it; returns the leader.
fn create_rf3(rt: &Runtime, cluster: &TestCluster, topic: &str) -> anyhow::Result<u32> {
    check_interrupted()?;
    let addr = cluster.node(1).addr.clone();
    rt.block_on(async {
        let conn = Connection::connect(&addr, CLIENT_ID).await?;
        let request = CreateTopicsRequest {
            topics: vec![NewTopic {
                name: topic.to_owned(),
                partitions: Some(1),
                replication_factor: Some(3),
                configs: Default::default(),
            }],
            timeout_ms: REQUEST_TIMEOUT.as_millis() as u32,
            validate_only: false,
        };
        let answer = conn.send(&request, REQUEST_TIMEOUT).await?;
        if let Some(error) = answer.topics.into_iter().find_map(|t| t.error) {
            bail!("creating {topic}: {} {}", error.name, error.message);
        }
        anyhow::Ok(())
    })?;
    let deadline = Instant::now() + ISR_TIMEOUT;
    loop {
        check_interrupted()?;
        let views: Vec<Option<Value>> = (1..=3)
            .map(|id| partition_of(cluster.node(id), topic))
            .collect();
        let leader = views[0]
            .as_ref()
            .and_then(|p| p["leader"].as_u64())
            .map(|l| l as u32);
        let isr_full = views[0]
            .as_ref()
            .and_then(|p| p["isr"].as_array())
            .is_some_and(|isr| isr.len() == 3);
        let all_running = views
            .iter()
            .all(|v| v.as_ref().is_some_and(|p| p["log_end_offset"].is_u64()));
        // The gauges above are listed from the moment a partition actor registers, before its
        // log is open and before the node's registry routes requests to it (which is what
        // "still opening" means). The leader's own view listing both followers' progress in
        // its epoch says more: their fetches reached its log thread through that registry, so
        // a produce is served, and both followers fetch, so the first acks=all batch does not
        // wait for a follower still asking where its epoch ends.
        let followers_fetching = leader
            .and_then(|l| views[l as usize - 1].as_ref())
            .is_some_and(|p| {
                p["role"] == "leader"
                    && p["followers"].as_array().is_some_and(|f| {
                        f.len() == 2 && f.iter().all(|f| f["log_end_offset"].is_u64())
                    })
            });
        if let (Some(leader), true, true, true) =
            (leader, isr_full, all_running, followers_fetching)
        {
            return Ok(leader);
        }
        if Instant::now() >= deadline {
            bail!("{topic}: not all three replicas in the ISR within {ISR_TIMEOUT:?}: {views:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Partition 0 of `topic` in the node's admin `/partitions`, if listed.
fn partition_of(node: &TestNode, topic: &str) -> Option<Value> {
    let (status, body) = node.admin_get("/partitions");
    if status != 200 {
        return None;
    }
    let all: Value = serde_json::from_str(&body).ok()?;
    all["partitions"]
        .as_array()?
        .iter()
        .find(|p| p["topic"] == topic && p["partition"] == 0)
        .cloned()
}

/// The offsets of partition 0 of `topic` on a node: log end, high watermark, flushed offset.
fn offsets_of(node: &TestNode, topic: &str) -> Option<(u64, u64, u64)> {
    let p = partition_of(node, topic)?;
    Some((
        p["log_end_offset"].as_u64()?,
        p["high_watermark"].as_u64()?,
        p["flushed_offset"].as_u64()?,
    ))
}

/// The same offsets from the node's partition actor `actor` alone (`/actors/<id>`), which
/// costs the node far less than `/partitions`.
fn actor_offsets(node: &TestNode, actor: &str) -> Option<(u64, u64, u64)> {
    let (status, body) = node.admin_get(&format!("/actors/{actor}"));
    if status != 200 {
        return None;
    }
    let entry: Value = serde_json::from_str(&body).ok()?;
    let p = &entry["state"];
    Some((
        p["log_end_offset"].as_u64()?,
        p["high_watermark"].as_u64()?,
        p["flushed_offset"].as_u64()?,
    ))
}

/// Runs `vltava-bench produce` with the fixed event shape and `extra`, and the CPU time of
/// `pids` across it.
fn bench(bootstrap: &str, topic: &str, extra: &[String], pids: &[u32]) -> anyhow::Result<BenchRun> {
    // A new RF 3 topic whose replicas are all in the ISR and listed on every node has still
    // answered "partition ... is still opening on this node" (LeaderNotAvailable, retriable)
    // to the first produce; the raw producer does not retry, so the run is repeated while
    // that is the only error and nothing was written.
    let mut attempts = 0;
    loop {
        match bench_once(bootstrap, topic, extra, pids) {
            Err(e)
                if attempts < BENCH_ATTEMPTS_MAX
                    && format!("{e:#}").contains("still opening")
                    && !format!("{e:#}").contains("after writing") =>
            {
                attempts += 1;
                println!("  (the leader was still opening {topic}; run again)");
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn bench_once(
    bootstrap: &str,
    topic: &str,
    extra: &[String],
    pids: &[u32],
) -> anyhow::Result<BenchRun> {
    check_interrupted()?;
    let binary = vltava_tests::bin_dir().join("vltava-bench");
    let cpu_before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let output = Command::new(&binary)
        .arg("produce")
        .args(["--bootstrap", bootstrap, "--topic", topic])
        .args(["--size", &EVENT_BYTES.to_string()])
        .args(["--batch", &BATCH_EVENTS.to_string()])
        .arg("--json")
        .args(extra)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let cpu_after: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "vltava-bench {extra:?} gave no JSON report (status {}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let produce = &report["produce"];
    let nothing_written = produce["events"].as_u64() == Some(0);
    if produce["errors"].as_array().is_none_or(|e| !e.is_empty()) || !output.status.success() {
        if !nothing_written {
            bail!("vltava-bench {extra:?} failed after writing: {report}");
        }
        bail!("vltava-bench {extra:?} failed: {report}");
    }
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let baseline = report["baseline"]["mean_mb_per_s"].as_f64();
    Ok(BenchRun {
        events_per_s: f(&produce["events_per_s"]),
        payload_mb_per_s: f(&produce["payload_mb_per_s"]),
        batch_mb_per_s: f(&produce["batch_mb_per_s"]),
        latency_p50_ms: f(&produce["latency_us"]["p50"]) / 1000.0,
        latency_p99_ms: f(&produce["latency_us"]["p99"]) / 1000.0,
        send_lag_ms: produce["send_lag_us"]["p50"]
            .as_f64()
            .map(|p50| (p50 / 1000.0, f(&produce["send_lag_us"]["p99"]) / 1000.0)),
        events: produce["events"].as_u64().unwrap_or(0),
        batch_bytes: produce["batch_bytes"].as_u64().unwrap_or(0),
        nodes_cpu_s: cpu_after - cpu_before,
        bench_cpu_s: f(&report["bench_cpu_s"]),
        disk_loop_mb_per_s: baseline,
        disk_loop_writers: report["baseline"]["before"]["writers"]
            .as_u64()
            .unwrap_or(1),
        load_start: report["loadavg_start"].to_string(),
    })
}

/// User plus system CPU seconds of a process so far (0 if it is gone).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name and state.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no memory effects.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / per_s.max(1) as f64
}

/// One sample of a node's offsets of the measured partition.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    log_end: u64,
    high_watermark: u64,
    flushed: u64,
}

fn paced(
    rt: &Runtime,
    args: &Args,
    cluster: &TestCluster,
    r: u32,
    rate: f64,
) -> anyhow::Result<Paced> {
    let topic = format!("rf3-paced-r{r}");
    let leader = create_rf3(rt, cluster, &topic)?;
    let followers: Vec<u32> = (1..=3).filter(|id| *id != leader).collect();
    let messages = (rate * args.paced_s as f64) as u64;
    // The sampler reads each replica's own actor (`/actors/<id>`), not `/partitions`, which
    // builds the view of every partition of the cluster (the offsets topic's included) for
    // each request: at 300 requests a second over the three nodes that was work the measured
    // cluster does not otherwise do, on the same two cores. One actor's entry is far less.
    let actors: Vec<(u32, String)> = std::iter::once(leader)
        .chain(followers.iter().copied())
        .map(|id| {
            partition_of(cluster.node(id), &topic)
                .and_then(|p| p["actor"].as_str().map(str::to_owned))
                .map(|actor| (id, actor))
                .ok_or_else(|| anyhow::anyhow!("{topic}: node {id} lists no partition actor"))
        })
        .collect::<anyhow::Result<_>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_millis(args.sample_ms);
    let series = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut series: Vec<Vec<Sample>> = vec![Vec::new(); 3];
            let started = Instant::now();
            let mut k = 0u32;
            while !stop.load(Ordering::SeqCst) {
                // Leader first, then the followers: a follower sample is never older than
                // the leader sample of the same round.
                for (i, (id, actor)) in actors.iter().enumerate() {
                    if let Some((log_end, high_watermark, flushed)) =
                        actor_offsets(cluster.node(*id), actor)
                    {
                        series[i].push(Sample {
                            at: Instant::now(),
                            log_end,
                            high_watermark,
                            flushed,
                        });
                    }
                }
                k += 1;
                let due = started + period * k;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            series
        });
        let extra: Vec<String> = [
            "--messages",
            &messages.to_string(),
            "--acks",
            "all",
            "--in-flight",
            "4",
            "--rate",
            &format!("{rate:.0}"),
        ]
        .map(str::to_owned)
        .to_vec();
        let run = bench(
            &cluster.bootstrap().join(","),
            &topic,
            &extra,
            &cluster_pids(cluster)?,
        );
        // Let the followers show the last batches before stopping the sampler.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        let series = sampler
            .join()
            .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
        anyhow::Ok((run, series))
    })?;
    let (run, series) = series;
    let run = run.map_err(|e| format!("{e:#}"));
    let leader_series = &series[0];
    let lag_of = |node: u32, samples: &[Sample]| {
        let (append, unmatched) = lags(leader_series, samples, |s| s.log_end);
        let (flushed, _) = lags(leader_series, samples, |s| s.flushed);
        FollowerLag {
            node,
            append: Samples::new(append),
            flushed: Samples::new(flushed),
            unmatched,
        }
    };
    let followers = followers
        .iter()
        .enumerate()
        .map(|(i, id)| lag_of(*id, &series[i + 1]))
        .collect();
    let (commit, _) = lags(leader_series, leader_series, |s| s.high_watermark);
    let sample_period_mean = match (leader_series.first(), leader_series.last()) {
        (Some(a), Some(b)) if leader_series.len() > 1 => {
            (b.at - a.at) / (leader_series.len() as u32 - 1)
        }
        _ => Duration::ZERO,
    };
    anyhow::ensure!(
        !commit.is_empty(),
        "no leader samples with a moving log end"
    );
    Ok(Paced {
        rate,
        run,
        leader,
        followers,
        commit: Samples::new(commit),
        samples: leader_series.len(),
        sample_period_mean,
    })
}

/// The replication lag as the sampler saw it. For every leader sample whose log end moved
/// since the leader sample before it (a batch appended within the last sample period), the
/// time from that leader sample to the first sample of `other` taken at or after it in which
/// `value` (a follower's log end or flushed offset, or the leader's own high watermark) is at
/// or past that log end. It is exact to within one sample period either way: the batch was
/// appended up to one period before the leader sample, and the follower had it up to one
/// period before its sample. Returns the lags and the count of leader samples never matched.
fn lags(
    leader: &[Sample],
    other: &[Sample],
    value: impl Fn(&Sample) -> u64,
) -> (Vec<Duration>, usize) {
    let mut lags = Vec::new();
    let mut unmatched = 0;
    let mut previous = None;
    let mut k = 0;
    for sample in leader {
        let moved = previous.is_some_and(|p| sample.log_end > p);
        previous = Some(sample.log_end);
        if !moved {
            continue;
        }
        // Both the times and the offsets only grow, so the search resumes where it stopped.
        while k < other.len() && (other[k].at < sample.at || value(&other[k]) < sample.log_end) {
            k += 1;
        }
        match other.get(k) {
            Some(o) => lags.push(o.at - sample.at),
            None => unmatched += 1,
        }
    }
    (lags, unmatched)
}

fn catch_up(
    rt: &Runtime,
    args: &Args,
    cluster: &mut TestCluster,
    controller: u32,
    r: u32,
) -> anyhow::Result<CatchUp> {
    let topic = format!("rf3-catch-up-r{r}");
    let leader = create_rf3(rt, cluster, &topic)?;
    // A follower that is not the controller, so that the kill does not also start an
    // election.
    let follower = (1..=3)
        .find(|id| *id != leader && *id != controller)
        .or_else(|| (1..=3).find(|id| *id != leader))
        .expect("three nodes have a follower");
    let (before_end, _, _) =
        offsets_of(cluster.node(follower), &topic).context("the follower lists the topic")?;
    cluster.node_mut(follower).kill();
    let leader_addr = cluster.node(leader).addr.clone();
    let leader_pid = cluster.node(leader).pid().context("the leader runs")?;
    let extra: Vec<String> = [
        "--messages",
        &args.catch_up_events.to_string(),
        "--acks",
        "1",
        "--in-flight",
        "4",
    ]
    .map(str::to_owned)
    .to_vec();
    let produced = bench(&leader_addr, &topic, &extra, &[leader_pid])?;
    // The leader's gauges are published after the message that appended, which may be a
    // moment after its acks=1 answer: wait until they show every event produced (a refused
    // attempt may have written some too, hence the maximum).
    let leader_end = (before_end + produced.events).max(
        offsets_of(cluster.node(leader), &topic)
            .map(|(end, _, _)| end)
            .unwrap_or(0),
    );
    let deadline = Instant::now() + ISR_TIMEOUT;
    while offsets_of(cluster.node(leader), &topic).is_none_or(|(end, _, _)| end < leader_end) {
        if Instant::now() >= deadline {
            bail!("the leader's log end did not reach {leader_end} within {ISR_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(args.sample_ms));
    }
    let relaunched = Instant::now();
    let node = cluster.node_mut(follower);
    node.relaunch();
    node.wait_until_ready();
    let restart_ready = relaunched.elapsed();
    let deadline = relaunched + CATCH_UP_TIMEOUT;
    loop {
        check_interrupted()?;
        if offsets_of(cluster.node(follower), &topic).is_some_and(|(end, _, _)| end >= leader_end) {
            break;
        }
        if Instant::now() >= deadline {
            bail!("follower {follower} did not catch up within {CATCH_UP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(args.sample_ms));
    }
    let caught_up_after_relaunch = relaunched.elapsed();
    let events_behind = leader_end - before_end;
    let bytes_per_event = produced.batch_bytes as f64 / produced.events.max(1) as f64;
    Ok(CatchUp {
        follower,
        leader,
        events_behind,
        bytes_behind: (events_behind as f64 * bytes_per_event) as u64,
        produced,
        restart_ready,
        caught_up_after_relaunch,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Picks one run of a repeat.
type RunOf = fn(&Repeat) -> &BenchRun;

impl Report {
    pub fn print(&self) {
        println!(
            "\nReplication ({} events of {EVENT_BYTES} B per throughput run, {BATCH_EVENTS} per \
             batch, fsync durability; load at end {})",
            self.events,
            load_average()
        );
        let col = |f: &dyn Fn(&Repeat) -> f64| median(self.repeats.iter().map(f).collect());
        let rows: [(&str, RunOf); 6] = [
            ("single node acks=all 1 in flight", |r| &r.single_all_1),
            ("RF 3 acks=all 1 in flight", |r| &r.rf3_all_1),
            ("single node acks=all 4 in flight", |r| &r.single_all_4),
            ("RF 3 acks=all 4 in flight", |r| &r.rf3_all_4),
            ("RF 3 acks=1 1 in flight", |r| &r.rf3_one_1),
            ("RF 3 acks=1 4 in flight", |r| &r.rf3_one_4),
        ];
        for (name, get) in rows {
            let runs: Vec<String> = self
                .repeats
                .iter()
                .map(|r| format!("{:.1}", get(r).payload_mb_per_s))
                .collect();
            println!(
                "  {name}: median {:.1} MB/s payload, {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms, \
                 nodes CPU {:.1} s (runs: {} MB/s)",
                col(&|r| get(r).payload_mb_per_s),
                col(&|r| get(r).events_per_s),
                col(&|r| get(r).latency_p50_ms),
                col(&|r| get(r).latency_p99_ms),
                col(&|r| get(r).nodes_cpu_s),
                runs.join(", ")
            );
        }
        for (name, rf3, single) in [
            (
                "1 in flight",
                &(|r: &Repeat| r.rf3_all_1.payload_mb_per_s) as &dyn Fn(&Repeat) -> f64,
                &(|r: &Repeat| r.single_all_1.payload_mb_per_s) as &dyn Fn(&Repeat) -> f64,
            ),
            (
                "4 in flight",
                &|r: &Repeat| r.rf3_all_4.payload_mb_per_s,
                &|r: &Repeat| r.single_all_4.payload_mb_per_s,
            ),
        ] {
            let ratios: Vec<f64> = self.repeats.iter().map(|r| rf3(r) / single(r)).collect();
            let listed: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
            println!(
                "  RF 3 / single node, acks=all, {name}: median {:.2}x (per repeat {}); target \
                 >= 0.30x",
                median(ratios.clone()),
                listed.join(", ")
            );
        }
        let disks: Vec<String> = self
            .repeats
            .iter()
            .filter_map(|r| r.single_all_1.disk_loop_mb_per_s)
            .map(|d| format!("{d:.0}"))
            .collect();
        println!(
            "  disk loop (1 write + fdatasync per batch, no broker): {} MB/s",
            disks.join(", ")
        );
        for (name, get) in [
            (
                "1 in flight",
                (|r: &Repeat| &r.rf3_all_1) as fn(&Repeat) -> &BenchRun,
            ),
            ("4 in flight", |r: &Repeat| &r.rf3_all_4),
        ] {
            let lines: Vec<(f64, f64)> = self
                .repeats
                .iter()
                .filter_map(|r| {
                    let run = get(r);
                    run.disk_loop_mb_per_s
                        .map(|line| (line, run.payload_mb_per_s / line))
                })
                .collect();
            if lines.is_empty() {
                continue;
            }
            let listed: Vec<String> = lines
                .iter()
                .map(|(line, ratio)| format!("{ratio:.2} of {line:.0}"))
                .collect();
            println!(
                "  RF 3 acks=all {name} / the disk's line for three replicas (3 loops at once, \
                 MB/s of one): median {:.2}x (per repeat {} MB/s)",
                median(lines.iter().map(|(_, ratio)| *ratio).collect()),
                listed.join(", ")
            );
        }
        for (i, r) in self.repeats.iter().enumerate() {
            let p = &r.paced;
            match &p.run {
                Ok(run) => println!(
                    "  repeat {i} paced at {:.0} events/s (4 in flight): achieved {:.0} \
                     events/s, latency p50 {:.2} ms p99 {:.2} ms, nodes CPU {:.1} s",
                    p.rate,
                    run.events_per_s,
                    run.latency_p50_ms,
                    run.latency_p99_ms,
                    run.nodes_cpu_s
                ),
                Err(e) => println!("  repeat {i} paced at {:.0} events/s FAILED: {e}", p.rate),
            }
            for f in &p.followers {
                println!(
                    "    follower {}: append lag p50 {} p99 {}; flushed lag p50 {} p99 {} (n = {}, \
                     unmatched {})",
                    f.node,
                    ms(f.append.percentile(50.0)),
                    ms(f.append.percentile(99.0)),
                    ms(f.flushed.percentile(50.0)),
                    ms(f.flushed.percentile(99.0)),
                    f.append.len(),
                    f.unmatched
                );
            }
            println!(
                "    leader {} log end → high watermark p50 {} p99 {}; sample period mean {}",
                p.leader,
                ms(p.commit.percentile(50.0)),
                ms(p.commit.percentile(99.0)),
                ms(p.sample_period_mean)
            );
            let c = &r.catch_up;
            println!(
                "  repeat {i} catch-up: node {} {:.1} MB ({} events) behind leader {} \
                 (produced at {:.1} MB/s, acks=1); ready {} after relaunch; caught up {} later: \
                 {:.1} MB/s ({:.1} MB/s from relaunch)",
                c.follower,
                c.bytes_behind as f64 / 1e6,
                c.events_behind,
                c.leader,
                c.produced.batch_mb_per_s,
                ms(c.restart_ready),
                ms(c.fetch_time()),
                c.bytes_behind as f64 / 1e6 / c.fetch_time().as_secs_f64(),
                c.bytes_behind as f64 / 1e6 / c.caught_up_after_relaunch.as_secs_f64()
            );
        }
    }
}
