//! The load every fault test runs under, and how every run ends.
//!
//! [`Load::start`] creates `TOPIC` (replication factor 3, `min.insync.replicas` 2) and starts
//! two idempotent acks=all producers, each writing unique values to every partition at a
//! bounded rate with a bounded number of events unanswered, and a consumer group of two
//! members reading and committing. Everything they see goes into one [`History`], with the
//! test's faults as notes among it. [`Load::finish`] stops the producers, waits for the
//! cluster to converge, reads every partition with a fresh reader, waits for the group to
//! commit the end of every partition, reads the three replica logs from disk, and lets the
//! history checker decide; the history and the verdict are written to the test's output
//! directory whether the run passed or not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::Instrument;
use vltava_client::{
    Admin, Cluster, Consumer, ConsumerConfig, GroupConfig, GroupConsumer, Producer, ProducerConfig,
    ProducerRecord, RebalanceEvent, SeekTo,
};
use vltava_messages::batch::split_batches;
use vltava_messages::{NodeId, Offset, PartitionId};
use vltava_tests::cluster::TestCluster;
use vltava_tests::history::{CheckOptions, History, parse_unique_value, unique_value};

use crate::converge::{acknowledged_counts, wait_converged};
use crate::{FAILOVER_BOUND, GROUP, PARTITIONS, TOPIC, settings};

/// Events each producer has sent and not yet seen answered, at most: the load is a closed loop
/// at this depth (under the rate cap), so a stalled partition holds the producer back instead
/// of queueing without bound.
const IN_FLIGHT_PER_PRODUCER: usize = 256;
/// How far behind its rate a producer may fall and still catch up (see `produce`).
const RATE_CATCH_UP: Duration = Duration::from_millis(100);
/// Producers writing `TOPIC`, writers 1 and 2 of `unique_value`.
const PRODUCERS: u32 = 2;
/// Members of `GROUP`, each its own reader in the history.
const MEMBERS: [&str; 2] = ["group-a", "group-b"];
/// How long a produce request may wait for its answer. The default (30 s) would leave a
/// partition whose leader is paused or cut off stalled for 30 s: the request hangs on a
/// connection that stays up. 3 s lets the producer find the new leader while the fault lasts,
/// as the cluster tests' load does.
const PRODUCE_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the producers may take to have every event sent answered once told to stop: the
/// last batches may wait out a failover.
const PRODUCERS_STOP_BOUND: Duration = Duration::from_secs(60);
/// How long the fresh reader may take to read every partition to its high watermark.
const READ_ALL_BOUND: Duration = Duration::from_secs(120);
/// How long the group may take to commit the end of every partition once the producers
/// stopped. A member that lost its coordinator (its `__consumer_offsets` partition has one
/// replica today, so it is away while that node is) rejoins after at most the session timeout
/// the members ask for (`MEMBER_SESSION_TIMEOUT`) and commits every 5 s (auto commit); a
/// minute covers both.
const GROUP_COMMIT_BOUND: Duration = Duration::from_secs(60);
/// The session timeout the members ask for: the node default (45 s) would leave partitions of
/// a member removed by a restarted coordinator unread for that long.
const MEMBER_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a member waits after a failed poll before the next: the errors are retriable
/// (coordinator or leader moving) and the next poll finds out more.
const MEMBER_ERROR_PAUSE: Duration = Duration::from_millis(200);
/// How long the replicas may take to hold the same log end once the producers stopped.
const REPLICAS_EQUAL_BOUND: Duration = Duration::from_secs(30);

/// One acknowledged event: when it was acknowledged (since the load started) and how long
/// after it was sent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    pub acknowledged_at: Duration,
    pub latency: Duration,
}

/// What the group members counted while they read.
#[derive(Debug, Default)]
struct MemberCounts {
    errors: AtomicU64,
    records: AtomicU64,
}

/// The producers and the group at work, and what they saw.
#[derive(Debug)]
pub(crate) struct Load {
    pub history: History,
    name: String,
    started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop_producers: Arc<AtomicBool>,
    stop_members: Arc<AtomicBool>,
    producers: Vec<tokio::task::JoinHandle<u64>>,
    members: Vec<tokio::task::JoinHandle<()>>,
    counts: Arc<MemberCounts>,
    /// Each node's log lines of its earlier runs, by node id: a restart starts the node's log
    /// afresh, and a failure may have begun runs ago.
    earlier_logs: Mutex<BTreeMap<u32, String>>,
}

/// The figures of a window of the run: acknowledged events per second and produce latency.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Figures {
    pub events_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub count: usize,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} events/s acknowledged ({} events), produce latency p50 {} ms, p99 {} ms, \
             max {} ms",
            self.events_per_second,
            self.count,
            self.p50.as_millis(),
            self.p99.as_millis(),
            self.max.as_millis()
        )
    }
}

impl Load {
    /// Creates `TOPIC` on `cluster` and starts the producers and the group; `name` names the
    /// test's output directory.
    pub fn start(rt: &tokio::runtime::Runtime, cluster: &TestCluster, name: &str) -> Load {
        let bootstrap = cluster.bootstrap();
        let dir = settings().out.join(name);
        std::fs::create_dir_all(&dir).expect("creating the test's output directory");
        crate::client_log_to(&dir.join("client.log"));
        rt.block_on(create_topic(&bootstrap));
        wait_converged(rt, cluster, "a new topic");
        let history = History::new();
        let started = Instant::now();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop_producers = Arc::new(AtomicBool::new(false));
        let stop_members = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(MemberCounts::default());
        let producers = (1..=PRODUCERS)
            .map(|writer| {
                rt.spawn(
                    produce(
                        bootstrap.clone(),
                        writer,
                        history.clone(),
                        Arc::clone(&stop_producers),
                        Arc::clone(&samples),
                        started,
                    )
                    .instrument(tracing::info_span!("producer", writer)),
                )
            })
            .collect();
        let members = MEMBERS
            .iter()
            .map(|reader| {
                rt.spawn(
                    read_in_group(
                        bootstrap.clone(),
                        reader,
                        history.clone(),
                        Arc::clone(&stop_members),
                        Arc::clone(&counts),
                    )
                    .instrument(tracing::info_span!("member", reader)),
                )
            })
            .collect();
        // The faults begin once every producer and member is at work: one started during a
        // fault would test its own start-up, not failover.
        let deadline = Instant::now() + FAILOVER_BOUND;
        while acknowledged_counts(&history).contains(&0)
            || counts.records.load(Ordering::Relaxed) == 0
        {
            assert!(
                Instant::now() < deadline,
                "the load did not start within {FAILOVER_BOUND:?}: acknowledged {:?}, group \
                 read {}",
                acknowledged_counts(&history),
                counts.records.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        history.note(format!("load started on {TOPIC}"));
        Load {
            history,
            name: name.to_owned(),
            started,
            samples,
            stop_producers,
            stop_members,
            producers,
            members,
            counts,
            earlier_logs: Mutex::new(BTreeMap::new()),
        }
    }

    /// Restarts node `id` (killed before), keeping the log of the run that ended.
    pub fn restart(&self, cluster: &mut TestCluster, id: u32) {
        self.keep_log(cluster, id);
        cluster.node_mut(id).restart();
    }

    /// Starts node `id` (killed before) without waiting for it, keeping the log of the run
    /// that ended; `TestNode::wait_until_ready` waits.
    pub fn relaunch(&self, cluster: &mut TestCluster, id: u32) {
        self.keep_log(cluster, id);
        cluster.node_mut(id).relaunch();
    }

    fn keep_log(&self, cluster: &TestCluster, id: u32) {
        let mut logs = self
            .earlier_logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let kept = logs.entry(id).or_default();
        kept.push_str(&cluster.node(id).log_text());
        kept.push_str(&format!(
            "\n--- node {id} restarted at {:.3} s ---\n",
            self.started.elapsed().as_secs_f64()
        ));
    }

    /// How long since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records what the test did (a fault, a heal), with the time since the load started, in
    /// the history and on stderr.
    pub fn note(&self, text: &str) {
        let line = format!("[{:>9.3} s] {text}", self.started.elapsed().as_secs_f64());
        eprintln!("{}: {line}", self.name);
        // Also in the client log, so its lines can be read against the faults.
        tracing::info!("{line}");
        self.history.note(line);
    }

    /// The figures of events acknowledged between `from` and `to` (times since the start).
    pub fn figures(&self, from: Duration, to: Duration) -> Figures {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let mut latencies: Vec<Duration> = samples
            .iter()
            .filter(|s| s.acknowledged_at >= from && s.acknowledged_at < to)
            .map(|s| s.latency)
            .collect();
        latencies.sort_unstable();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or_default()
        };
        let seconds = (to.saturating_sub(from)).as_secs_f64().max(f64::EPSILON);
        Figures {
            events_per_second: latencies.len() as f64 / seconds,
            p50: at(0.50),
            p99: at(0.99),
            max: latencies.last().copied().unwrap_or_default(),
            count: latencies.len(),
        }
    }

    /// The test's output directory, created.
    fn out_dir(&self) -> PathBuf {
        let dir = settings().out.join(&self.name);
        std::fs::create_dir_all(&dir).expect("creating the test's output directory");
        dir
    }

    /// Runs `during` (the faults) under the load, then ends the run: stop, converge, read,
    /// check. `extra` lines (figures) go into the verdict. The history and the verdict are
    /// written whether the run passed, failed its check or panicked; a failure then panics
    /// with the verdict and the files' paths.
    pub fn run(
        mut self,
        rt: &tokio::runtime::Runtime,
        cluster: &mut TestCluster,
        during: impl FnOnce(&mut TestCluster, &Load) -> Vec<String>,
    ) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let extra = during(cluster, &self);
            let ending = self.finish(rt, cluster);
            (extra, ending)
        }));
        let dir = self.out_dir();
        let history_path = dir.join("history.txt");
        let verdict_path = dir.join("verdict.txt");
        let (verdict, passed) = match &outcome {
            Ok((extra, Ok(report))) => {
                let mut text = extra.clone();
                text.push(report.clone());
                (text.join("\n"), true)
            }
            Ok((extra, Err(failure))) => {
                let mut text = extra.clone();
                text.push(failure.clone());
                (text.join("\n"), false)
            }
            Err(panic) => (
                format!("the run stopped early: {}", panic_text(panic.as_ref())),
                false,
            ),
        };
        let verdict = format!("{}: seed {}\n{verdict}\n", self.name, settings().seed);
        write_file(&verdict_path, verdict.as_bytes());
        write_history(&self.history, &history_path);
        eprintln!(
            "{verdict}history: {}\nverdict: {}",
            history_path.display(),
            verdict_path.display()
        );
        if !passed {
            self.write_node_logs(cluster, &dir);
            keep_partition_dirs(cluster, &dir);
            match outcome {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(_) => panic!(
                    "{verdict}history: {}\nverdict: {}",
                    history_path.display(),
                    verdict_path.display()
                ),
            }
        }
    }

    /// Writes each node's log, of every run of it, to `dir`, for a failed run to explain
    /// itself.
    fn write_node_logs(&self, cluster: &TestCluster, dir: &Path) {
        let earlier = self
            .earlier_logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (index, node) in cluster.nodes.iter().enumerate() {
            let id = index as u32 + 1;
            let path = dir.join(format!("node-{id}.log"));
            let mut text = earlier.get(&id).cloned().unwrap_or_default();
            text.push_str(&node.log_text());
            write_file(&path, text.as_bytes());
            eprintln!("node {id} log: {}", path.display());
        }
    }

    /// Ends the run (see the module doc): the checker's report, `Err` when it found anything
    /// or the group did not commit the end.
    fn finish(
        &mut self,
        rt: &tokio::runtime::Runtime,
        cluster: &mut TestCluster,
    ) -> Result<String, String> {
        self.note("stopping the producers");
        self.stop_producers.store(true, Ordering::Relaxed);
        let producers = std::mem::take(&mut self.producers);
        let acknowledged: u64 = rt.block_on(async {
            let mut total = 0;
            for producer in producers {
                total += tokio::time::timeout(PRODUCERS_STOP_BOUND, producer)
                    .await
                    .expect("the producers ended within their bound")
                    .expect("a producer task ran to its end");
            }
            total
        });
        assert!(acknowledged > 0, "the producers got nothing acknowledged");
        let converged = wait_converged(rt, cluster, "the end of the run");
        self.note(&format!(
            "{acknowledged} events acknowledged; converged in {converged:?}"
        ));
        let (ends, read) = rt.block_on(read_all(&cluster.bootstrap(), &self.history));
        self.note(&format!("read to the ends {ends:?}"));
        let group = self.wait_for_group_commit(rt, &cluster.bootstrap(), &ends);
        self.stop_members.store(true, Ordering::Relaxed);
        let members = std::mem::take(&mut self.members);
        rt.block_on(async {
            for member in members {
                let _ = tokio::time::timeout(GROUP_COMMIT_BOUND, member).await;
            }
        });
        self.note(&format!(
            "group members read {} records, {} poll errors",
            self.counts.records.load(Ordering::Relaxed),
            self.counts.errors.load(Ordering::Relaxed)
        ));
        wait_for_equal_log_ends(cluster);
        for node in &mut cluster.nodes {
            // Killed, not stopped: a stop could still write; the logs' bytes are in the page
            // cache, which is what the files read back.
            node.kill();
        }
        for id in 1..=cluster.nodes.len() as u32 {
            for partition in 0..PARTITIONS {
                let records = replica_log(&cluster.data_dir(id), partition);
                self.history
                    .replica_log(NodeId(id), TOPIC, PartitionId(partition), records);
            }
        }
        let report = self.history.check(CheckOptions {
            require_all_acknowledged_read: true,
            replicas_identical: true,
            max_position_resets: Some(0),
            require_reads_written: true,
        });
        let order = producer_order(&read);
        let mut problems = Vec::new();
        if !report.is_ok() {
            problems.push(report.to_string());
        }
        problems.extend(order);
        let group = match group {
            Ok(group) => group,
            Err(stalled) => {
                problems.push(stalled);
                String::new()
            }
        };
        if problems.is_empty() {
            Ok(format!("{report}; producers' order kept; {group}"))
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Waits until `GROUP` has committed `ends` for every partition (the members go on
    /// polling, so auto commit gets there); the committed offsets as a sentence, or what was
    /// committed instead after `GROUP_COMMIT_BOUND`.
    fn wait_for_group_commit(
        &self,
        rt: &tokio::runtime::Runtime,
        bootstrap: &[String],
        ends: &BTreeMap<u32, u64>,
    ) -> Result<String, String> {
        let deadline = Instant::now() + GROUP_COMMIT_BOUND;
        let mut last = String::from("nothing fetched");
        while Instant::now() < deadline {
            match rt.block_on(committed(bootstrap)) {
                Ok(offsets) if offsets == *ends => {
                    let text =
                        format!("the group committed the end of every partition: {offsets:?}");
                    self.note(&text);
                    return Ok(text);
                }
                Ok(offsets) => last = format!("{offsets:?}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!(
            "the group did not commit the ends {ends:?} within {GROUP_COMMIT_BOUND:?}; last \
             seen: {last}"
        ))
    }
}

/// Copies every node's `TOPIC` partition directories (segments, indexes, checkpoints) to
/// `dir/data/node-<id>/`, for a failed run to be examined after the cluster's temporary
/// directory is gone.
fn keep_partition_dirs(cluster: &TestCluster, dir: &Path) {
    for id in 1..=cluster.nodes.len() as u32 {
        for partition in 0..PARTITIONS {
            let name = format!("{TOPIC}-{partition}");
            let from = cluster.data_dir(id).join(&name);
            let to = dir.join("data").join(format!("node-{id}")).join(&name);
            if let Err(e) = copy_dir(&from, &to) {
                eprintln!("cannot keep {}: {e}", from.display());
            }
        }
    }
}

/// Copies the files of `from` (and of its subdirectories) into `to`.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The text of a panic's payload.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn write_file(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

fn write_history(history: &History, path: &Path) {
    let written = std::fs::File::create(path).and_then(|file| {
        let mut out = std::io::BufWriter::new(file);
        let lines = history.write_to(&mut out)?;
        std::io::Write::flush(&mut out)?;
        Ok(lines)
    });
    if let Err(e) = written {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

/// Creates `TOPIC`, retrying while the cluster is not ready to.
async fn create_topic(bootstrap: &[String]) {
    let admin = Admin::new(
        Cluster::connect(bootstrap, "fault-admin")
            .await
            .expect("a live node"),
    );
    let configs = BTreeMap::from([("min.insync.replicas".to_owned(), "2".to_owned())]);
    let deadline = Instant::now() + FAILOVER_BOUND;
    loop {
        match admin
            .create_topic(TOPIC, PARTITIONS, 3, configs.clone())
            .await
        {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("creating {TOPIC}: {e}"),
        }
    }
}

/// An idempotent acks=all producer (writer `writer`) sending unique values to every
/// partition in turn until `stop`, at most `settings().rate_per_producer` a second and
/// `IN_FLIGHT_PER_PRODUCER` unanswered; each answer goes into `history` (acknowledged, or
/// attempted when it failed) and each acknowledgement's latency into `samples`. Returns how
/// many were acknowledged.
async fn produce(
    bootstrap: Vec<String>,
    writer: u32,
    history: History,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    started: Instant,
) -> u64 {
    let client_id = format!("fault-writer-{writer}");
    let producer = until_ok(|| async {
        Producer::new(
            Cluster::connect(&bootstrap, &client_id).await?,
            ProducerConfig {
                request_timeout: PRODUCE_REQUEST_TIMEOUT,
                ..ProducerConfig::default()
            },
        )
        .await
    })
    .await;
    let window = Arc::new(Semaphore::new(IN_FLIGHT_PER_PRODUCER));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let spacing = Duration::from_secs(1) / settings().rate_per_producer;
    let mut next_send = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let permit = Arc::clone(&window)
            .acquire_owned()
            .await
            .expect("the window is never closed");
        tokio::time::sleep_until(next_send.into()).await;
        // A producer held back (a full window, a slow send) catches up on the rate, but by
        // at most `RATE_CATCH_UP` worth of events, so a stall is not followed by a flood.
        let now = Instant::now();
        next_send = (next_send + spacing).max(now.checked_sub(RATE_CATCH_UP).unwrap_or(now));
        seq += 1;
        let partition = u32::try_from(seq % u64::from(PARTITIONS)).expect("below PARTITIONS");
        let value = unique_value(writer, seq);
        let record = ProducerRecord {
            topic: TOPIC.to_owned(),
            partition: Some(partition),
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
            timestamp: None,
        };
        let sent_at = Instant::now();
        match producer.send(record).await {
            Ok(delivery) => {
                let history = history.clone();
                let samples = Arc::clone(&samples);
                let acknowledged = Arc::clone(&acknowledged);
                tokio::spawn(async move {
                    match delivery.wait().await {
                        Ok(written) => {
                            let now = Instant::now();
                            history.acknowledged(
                                TOPIC,
                                PartitionId(written.partition),
                                written.offset.expect("acks=all has offsets"),
                                b"",
                                &value,
                            );
                            samples
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(Sample {
                                    acknowledged_at: now - started,
                                    latency: now - sent_at,
                                });
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => history.attempted(TOPIC, PartitionId(partition), b"", &value),
                    }
                    drop(permit);
                });
            }
            Err(_) => history.attempted(TOPIC, PartitionId(partition), b"", &value),
        }
    }
    producer.flush().await.ok();
    // Every answer recorded: each task gives its permit back once it has.
    let _all = window
        .acquire_many(IN_FLIGHT_PER_PRODUCER as u32)
        .await
        .expect("the window is never closed");
    producer.close().await.ok();
    acknowledged.load(Ordering::Relaxed)
}

/// A member of `GROUP` reading `TOPIC` as `reader` until `stop`, recording every record read
/// and, when it is given partitions, a seek to where it starts them (a member reads from the
/// committed offset again after a rebalance: at least once, not a reset).
async fn read_in_group(
    bootstrap: Vec<String>,
    reader: &'static str,
    history: History,
    stop: Arc<AtomicBool>,
    counts: Arc<MemberCounts>,
) {
    let mut config = GroupConfig::new(GROUP);
    config.session_timeout = Some(MEMBER_SESSION_TIMEOUT);
    let mut member = GroupConsumer::new(
        until_ok(|| Cluster::connect(&bootstrap, reader)).await,
        ConsumerConfig {
            max_wait: Duration::from_millis(200),
            ..ConsumerConfig::default()
        },
        config,
    )
    .expect("a valid group config");
    member.subscribe(&[TOPIC]).expect("a valid subscription");
    let mut last_read: BTreeMap<u32, u64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let polled = member.poll().await;
        for event in member.rebalance_events() {
            if let RebalanceEvent::Assigned(topics) = event {
                for topic in topics.iter().filter(|t| t.topic == TOPIC) {
                    for partition in &topic.partitions {
                        let from = last_read.get(&partition.0).map_or(0, |o| o + 1);
                        let to = member
                            .positions()
                            .get(&(TOPIC.to_owned(), partition.0))
                            .copied()
                            .unwrap_or(from);
                        history.seeked(reader, TOPIC, *partition, Offset(from), Offset(to));
                    }
                }
            }
        }
        match polled {
            Ok(records) => {
                for record in records {
                    counts.records.fetch_add(1, Ordering::Relaxed);
                    last_read.insert(record.partition, record.offset);
                    history.read(
                        reader,
                        TOPIC,
                        PartitionId(record.partition),
                        Offset(record.offset),
                        record.key.as_deref().unwrap_or_default(),
                        &record.value.unwrap_or_default(),
                    );
                }
            }
            Err(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(MEMBER_ERROR_PAUSE).await;
            }
        }
    }
    let _ = member.close().await;
}

/// Reads every partition from the earliest offset to its high watermark (the producers have
/// stopped) with a fresh consumer, into `history` as reader `reader-final`; returns each
/// partition's end and the (offset, value) pairs read from it.
async fn read_all(
    bootstrap: &[String],
    history: &History,
) -> (BTreeMap<u32, u64>, BTreeMap<u32, Vec<(u64, Vec<u8>)>>) {
    const READER: &str = "reader-final";
    let mut consumer = Consumer::new(
        Cluster::connect(bootstrap, READER)
            .await
            .expect("a live node"),
        ConsumerConfig::default(),
    );
    let mut ends = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let end = until_ok(|| consumer.resolve_offset(TOPIC, partition, SeekTo::Latest)).await;
        ends.insert(partition, end);
    }
    let mut read: BTreeMap<u32, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    let deadline = Instant::now() + READ_ALL_BOUND;
    let mut assigned = false;
    while !assigned {
        assigned = consumer.assign(TOPIC, None, SeekTo::Earliest).await.is_ok();
        assert!(
            Instant::now() < deadline,
            "the final reader could not start"
        );
        if !assigned {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    loop {
        let behind: Vec<(u32, u64, u64)> = ends
            .iter()
            .filter_map(|(p, end)| {
                let at = consumer
                    .positions()
                    .get(&(TOPIC.to_owned(), *p))
                    .copied()
                    .unwrap_or(0);
                (at < *end).then_some((*p, at, *end))
            })
            .collect();
        if behind.is_empty() {
            return (ends, read);
        }
        assert!(
            Instant::now() < deadline,
            "the final reader is still behind (partition, position, end): {behind:?}"
        );
        if let Ok(records) = consumer.poll().await {
            for record in records {
                let value = record.value.unwrap_or_default();
                history.read(
                    READER,
                    TOPIC,
                    PartitionId(record.partition),
                    Offset(record.offset),
                    record.key.as_deref().unwrap_or_default(),
                    &value,
                );
                read.entry(record.partition)
                    .or_default()
                    .push((record.offset, value));
            }
        }
    }
}

/// Retries `attempt` while it fails, up to `FAILOVER_BOUND`.
async fn until_ok<T, F, Fut>(mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, vltava_client::ClientError>>,
{
    let deadline = Instant::now() + FAILOVER_BOUND;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still failing after {FAILOVER_BOUND:?}: {e}"),
        }
    }
}

/// `GROUP`'s committed offsets of `TOPIC`, by partition.
async fn committed(bootstrap: &[String]) -> Result<BTreeMap<u32, u64>, vltava_client::ClientError> {
    let admin = Admin::new(Cluster::connect(bootstrap, "fault-admin").await?);
    let answer = admin.fetch_offsets(GROUP, None).await?;
    Ok(vltava_tests::committed_offsets(&answer, TOPIC)
        .into_iter()
        .filter_map(|(partition, offset)| offset.map(|o| (partition, o)))
        .collect())
}

/// Waits until the three replicas of every partition end at the same offset (they caught up
/// once the producers stopped), as each node's `/partitions` says.
fn wait_for_equal_log_ends(cluster: &TestCluster) {
    let deadline = Instant::now() + REPLICAS_EQUAL_BOUND;
    loop {
        let mut ends: BTreeMap<u64, Vec<Option<u64>>> = BTreeMap::new();
        for node in &cluster.nodes {
            let (_, body) = node.admin_get("/partitions");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            for row in json["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["topic"] == TOPIC)
            {
                ends.entry(row["partition"].as_u64().unwrap_or(u64::MAX))
                    .or_default()
                    .push(row["log_end_offset"].as_u64());
            }
        }
        let equal = ends.len() == PARTITIONS as usize
            && ends.values().all(|e| {
                e.len() == cluster.nodes.len() && e.iter().all(|x| x.is_some() && *x == e[0])
            });
        if equal {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas' log ends still differ after {REPLICAS_EQUAL_BOUND:?}: {ends:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The records of `TOPIC`-`partition` in a node's data directory, read from its segment
/// files in order; a batch that does not check out ends the log (a torn tail).
fn replica_log(data_dir: &Path, partition: u32) -> Vec<(Offset, Vec<u8>, Vec<u8>)> {
    let dir = data_dir.join(format!("{TOPIC}-{partition}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut records = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for batch in split_batches(&bytes) {
            let Ok(batch) = batch else { break };
            let _ = batch.for_each_record(|offset, _, view| {
                records.push((
                    offset,
                    view.key.unwrap_or_default().to_vec(),
                    view.value.unwrap_or_default().to_vec(),
                ));
            });
        }
    }
    records
}

/// Each producer's events in a partition must sit in the order it sent them: in the final
/// reader's records of a partition (in offset order), one writer's sequence numbers increase.
/// Returns one line per place where they do not.
fn producer_order(read: &BTreeMap<u32, Vec<(u64, Vec<u8>)>>) -> Vec<String> {
    let mut out = Vec::new();
    for (partition, records) in read {
        let mut last: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for (offset, value) in records {
            let Some((writer, seq)) = parse_unique_value(value) else {
                continue;
            };
            if let Some((previous_offset, previous_seq)) = last.insert(writer, (*offset, seq))
                && seq <= previous_seq
            {
                out.push(format!(
                    "reordered: {TOPIC}/{partition}: writer {writer}'s seq {seq} at offset \
                     {offset} after its seq {previous_seq} at offset {previous_offset}"
                ));
            }
        }
    }
    out
}
