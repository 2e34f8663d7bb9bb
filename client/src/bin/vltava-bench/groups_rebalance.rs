//! `groups-rebalance`: how long partitions go unread when a member joins a consumer group.
//!
//! A producer sends a steady stream (`--rate` events/s, 2,000 by default) round-robin to every
//! partition of a topic (`--partitions`, 64 by default). `--members` `GroupConsumer`s (8 by
//! default), each with its own `Cluster` (so its own connections, as separate processes
//! would have) and its own tokio task, poll with short fetch waits (`--fetch-wait-ms`, 50).
//! Once the group is stable (every partition owned by exactly one member, the counts
//! balanced, and the coordinator's ListGroups says `stable`), the bench watches
//! `--steady-s` seconds of steady state, then starts one more member and watches until the
//! group is stable again plus `--settle-s`: the rebalance window.
//!
//! Every poll's events are stamped with the instant the poll returned. Per partition the
//! bench keeps who consumed it last, when, and the next offset; from that:
//! - a **handover**: an event consumed by another member than the previous event. Its gap
//!   (first event of the new owner minus last event of the old one) is the partition's
//!   unavailability, events flowing continuously. Events consumed twice (the new owner
//!   starting below where the old one got) and offsets skipped are counted.
//! - a **gap**: the time between two polls of the same member that brought events of the
//!   partition. Steady-state gaps are "normal"; the largest gap of a partition that did not
//!   move during the window is compared with the largest steady-state gap of any partition.
//! - the **delay** of each event: poll return minus the event's timestamp (set by the
//!   producer in this process; same clock), the end-to-end latency a reader sees.
//!
//! For each moved partition the report also gives, relative to the join, when the
//! coordinator computed the target assignment that moved it (DescribeGroups `rebalances`),
//! when the old owner's `poll` reported the revocation and the new owner's `poll` the
//! assignment (both at poll return, so up to one fetch wait late).
//!
//! Bounded: member polls and producer sends have timeouts, each wait for stability has
//! `--stable-timeout-s`, the run as a whole `Cli::run_limit`; the tracker holds a fixed
//! amount per partition and member, and errors kept are capped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vltava_client::connection::Connection;
use vltava_client::coordinator::{coordinator_addr, find_coordinator};
use vltava_client::{
    Admin, Cluster, ConsumerConfig, ConsumerRecord, Delivery, GroupConfig, GroupConsumer, Producer,
    ProducerConfig, ProducerRecord, RebalanceEvent,
};
use vltava_messages::protocol::{
    ConsumerGroupHeartbeatRequest, GroupDescription, MEMBER_EPOCH_JOIN, MEMBER_EPOCH_LEAVE,
};

use crate::histogram::Histogram;
use crate::produce::value_of;
use crate::{Cli, cpu_seconds, loadavg, ms, now_ms, round_to, rss_bytes};

/// How often the controller checks whether the group is stable: the resolution of the
/// "stable again" times. Each check is one ListGroups and one Metadata request, so a much
/// shorter period would add load to the node being measured.
const STABILITY_POLL: Duration = Duration::from_millis(50);
/// How long a member's `poll` may take beyond its fetch wait before the bench counts a
/// timeout: a reconcile commits (acks=all, an fsync) and fetches committed offsets first.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// Producer deliveries awaiting their answer; past it the producer waits, which shows as
/// send lag (the producer's schedule is what makes gaps meaningful, so it is reported).
const DELIVERIES_QUEUE_MAX: usize = 65_536;
/// Events the producer sends in one go when it finds itself behind schedule: bounds the
/// burst after a stall (the rest follow at the next tick).
const SEND_BURST_MAX: u64 = 1_000;
/// How long one producer `send` (queueing into its buffer) may take.
const SEND_WAIT: Duration = Duration::from_secs(30);
/// How long closing the producer (flushing) may take.
const PRODUCER_CLOSE_WAIT: Duration = Duration::from_secs(30);
/// How long a member task may take to close (commit, leave) after it is told to stop.
const MEMBER_STOP_WAIT: Duration = Duration::from_secs(20);
/// Handovers kept per partition: more than one in a window means the partition bounced.
const HANDOVERS_KEPT_MAX: usize = 8;
/// Error messages kept per member and for the producer (the rest are only counted).
const ERRORS_KEPT_MAX: usize = 8;
/// Bytes per fetch answer and per partition of a member: as Kafka's
/// max.partition.fetch.bytes (1 MiB); at 2,000 events/s a fetch brings far less.
const FETCH_BYTES_MAX: u32 = 1 << 20;
/// The probe's heartbeats (join and leave): answered at once.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the tracker is recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The group is forming: nothing is recorded but positions.
    Warmup,
    /// The group is stable: normal gaps.
    Steady,
    /// From the extra member's start to the end of the settle time.
    Window,
    /// Stopping: nothing more is recorded.
    Done,
}

/// One partition moving from one member to another, seen by its consumption.
#[derive(Clone, Copy, Debug)]
struct Handover {
    from: usize,
    to: usize,
    /// When the old owner's last event was consumed.
    old_last: Instant,
    /// When the new owner's first event was consumed.
    new_first: Instant,
}

/// What the bench knows of one partition.
#[derive(Debug, Default)]
struct Track {
    last_at: Option<Instant>,
    last_member: Option<usize>,
    /// One past the highest offset consumed.
    next_offset: Option<u64>,
    steady_gap_max: Duration,
    /// The largest gap in the window that is not a handover.
    window_gap_max: Duration,
    handovers: Vec<Handover>,
    steady_moves: u64,
    /// The first revocation and assignment in the window: member and when its poll returned.
    revoked: Option<(usize, Instant)>,
    assigned: Option<(usize, Instant)>,
    steady_delay_max_ms: i64,
    window_delay_max_ms: i64,
    window_duplicates: u64,
    window_skipped: u64,
    window_events: u64,
}

/// What all member tasks report into. Behind a `std::sync::Mutex` held for the bookkeeping
/// of one poll (microseconds) and never across an `.await`.
#[derive(Debug)]
struct Tracker {
    topic: String,
    phase: Phase,
    partitions: Vec<Track>,
    /// The partitions each member owns after its last poll; `None` before its first poll and
    /// after it closed.
    owned: Vec<Option<BTreeSet<u32>>>,
    member_ids: Vec<Option<String>>,
    steady_gaps: Histogram,
    window_gaps: Histogram,
    lost_revocations: u64,
}

impl Tracker {
    fn new(topic: &str, partitions: u32, members: usize) -> Tracker {
        Tracker {
            topic: topic.to_owned(),
            phase: Phase::Warmup,
            partitions: (0..partitions).map(|_| Track::default()).collect(),
            owned: vec![None; members],
            member_ids: vec![None; members],
            steady_gaps: Histogram::default(),
            window_gaps: Histogram::default(),
            lost_revocations: 0,
        }
    }

    /// Counts the events one poll of `member` returned at `now` (`now_ms` on the wall clock).
    fn observe(&mut self, member: usize, now: Instant, now_ms: i64, records: &[ConsumerRecord]) {
        let phase = self.phase;
        if phase == Phase::Done {
            return;
        }
        for record in records {
            if record.topic != self.topic {
                continue;
            }
            let Some(track) = self.partitions.get_mut(record.partition as usize) else {
                continue;
            };
            let delay_ms = now_ms - record.timestamp;
            if phase == Phase::Window {
                track.window_events += 1;
                track.window_delay_max_ms = track.window_delay_max_ms.max(delay_ms);
                match track.next_offset {
                    Some(next) if record.offset < next => track.window_duplicates += 1,
                    Some(next) if record.offset > next => {
                        track.window_skipped += record.offset - next;
                    }
                    _ => {}
                }
            } else if phase == Phase::Steady {
                track.steady_delay_max_ms = track.steady_delay_max_ms.max(delay_ms);
            }
            track.next_offset = Some(
                track
                    .next_offset
                    .map_or(record.offset + 1, |next| next.max(record.offset + 1)),
            );
            if let (Some(last_at), Some(last_member)) = (track.last_at, track.last_member) {
                let gap = now.saturating_duration_since(last_at);
                if last_member != member {
                    match phase {
                        Phase::Steady => track.steady_moves += 1,
                        Phase::Window if track.handovers.len() < HANDOVERS_KEPT_MAX => {
                            track.handovers.push(Handover {
                                from: last_member,
                                to: member,
                                old_last: last_at,
                                new_first: now,
                            });
                        }
                        _ => {}
                    }
                } else if !gap.is_zero() {
                    // Events of one poll share `now`: only the first of them ends a gap.
                    match phase {
                        Phase::Steady => {
                            track.steady_gap_max = track.steady_gap_max.max(gap);
                            self.steady_gaps.record_duration(gap);
                        }
                        Phase::Window => {
                            track.window_gap_max = track.window_gap_max.max(gap);
                            self.window_gaps.record_duration(gap);
                        }
                        Phase::Warmup | Phase::Done => {}
                    }
                }
            }
            track.last_at = Some(now);
            track.last_member = Some(member);
        }
    }

    /// Records what `member` owns after a poll and the rebalance events it reported.
    fn after_poll(
        &mut self,
        member: usize,
        now: Instant,
        owned: BTreeSet<u32>,
        member_id: Option<String>,
        events: Vec<RebalanceEvent>,
    ) {
        self.owned[member] = Some(owned);
        if member_id.is_some() {
            self.member_ids[member] = member_id;
        }
        if self.phase != Phase::Window {
            return;
        }
        for event in events {
            let (partitions, revoked) = match event {
                RebalanceEvent::Assigned(partitions) => (partitions, false),
                RebalanceEvent::Revoked { partitions, lost } => {
                    if lost {
                        self.lost_revocations += 1;
                    }
                    (partitions, true)
                }
            };
            for p in partitions
                .iter()
                .filter(|t| t.topic == self.topic)
                .flat_map(|t| t.partitions.iter())
            {
                let Some(track) = self.partitions.get_mut(p.0 as usize) else {
                    continue;
                };
                let slot = if revoked {
                    &mut track.revoked
                } else {
                    &mut track.assigned
                };
                slot.get_or_insert((member, now));
            }
        }
    }

    /// Whether the members `0..members` own every partition exactly once between them, each
    /// as many as a balanced assignment gives (the partition count divided by the members,
    /// rounded down or up).
    fn balanced(&self, members: usize) -> bool {
        let count = self.partitions.len();
        let (low, high) = (count / members, count.div_ceil(members));
        let mut owners = vec![0u32; count];
        for owned in &self.owned[..members] {
            let Some(owned) = owned else { return false };
            if owned.len() < low || owned.len() > high {
                return false;
            }
            for &p in owned {
                if let Some(o) = owners.get_mut(p as usize) {
                    *o += 1;
                }
            }
        }
        owners.iter().all(|&o| o == 1)
    }
}

fn lock(tracker: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    // A member task that panicked mid-update leaves counts, not broken invariants.
    tracker.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one member task did.
#[derive(Debug, Default)]
struct MemberOutcome {
    polls: u64,
    events: u64,
    errors: u64,
    error_messages: Vec<String>,
}

impl MemberOutcome {
    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_messages.len() < ERRORS_KEPT_MAX {
            self.error_messages.push(message);
        }
    }
}

/// Everything a member task needs.
struct MemberSetup {
    index: usize,
    cluster: Arc<Cluster>,
    topic: String,
    group_id: String,
    fetch_wait: Duration,
    tracker: Arc<Mutex<Tracker>>,
    stop: Arc<AtomicBool>,
}

async fn member(setup: MemberSetup) -> MemberOutcome {
    let mut outcome = MemberOutcome::default();
    let consumer = ConsumerConfig {
        max_wait: setup.fetch_wait,
        min_bytes: 1,
        max_bytes: FETCH_BYTES_MAX,
        partition_max_bytes: FETCH_BYTES_MAX,
        reset_to_earliest: true,
    };
    let mut consumer =
        match GroupConsumer::new(setup.cluster, consumer, GroupConfig::new(&setup.group_id)) {
            Ok(consumer) => consumer,
            Err(e) => {
                outcome.error(format!("cannot make the consumer: {e}"));
                return outcome;
            }
        };
    if let Err(e) = consumer.subscribe(&[&setup.topic]) {
        outcome.error(format!("cannot subscribe: {e}"));
        return outcome;
    }
    while !setup.stop.load(Ordering::SeqCst) {
        let result = tokio::time::timeout(setup.fetch_wait + POLL_SLACK, consumer.poll()).await;
        let now = Instant::now();
        let wall_ms = now_ms();
        outcome.polls += 1;
        match result {
            Ok(Ok(records)) => {
                outcome.events += records.len() as u64;
                lock(&setup.tracker).observe(setup.index, now, wall_ms, &records);
            }
            Ok(Err(e)) => outcome.error(format!("poll: {e}")),
            Err(_) => outcome.error("poll timed out".to_owned()),
        }
        let owned: BTreeSet<u32> = consumer
            .assignment()
            .iter()
            .filter(|t| t.topic == setup.topic)
            .flat_map(|t| t.partitions.iter().map(|p| p.0))
            .collect();
        let events = consumer.rebalance_events();
        let member_id = consumer.member_id();
        lock(&setup.tracker).after_poll(setup.index, now, owned, member_id, events);
    }
    match tokio::time::timeout(MEMBER_STOP_WAIT, consumer.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => outcome.error(format!("close: {e}")),
        Err(_) => outcome.error("close timed out".to_owned()),
    }
    lock(&setup.tracker).owned[setup.index] = None;
    outcome
}

/// What the producer did.
#[derive(Debug)]
struct ProducerOutcome {
    sent: u64,
    delivered: u64,
    errors: u64,
    error_messages: Vec<String>,
    /// How late sends left after their intended time, while the window was open.
    window_lag: Histogram,
    lag: Histogram,
}

/// Sends `rate` events/s round-robin over `partitions` until `stop`, on a fixed schedule.
async fn produce(
    cluster: Arc<Cluster>,
    cli: Cli,
    partitions: u32,
    rate: f64,
    tracker: Arc<Mutex<Tracker>>,
    stop: Arc<AtomicBool>,
) -> ProducerOutcome {
    let mut outcome = ProducerOutcome {
        sent: 0,
        delivered: 0,
        errors: 0,
        error_messages: Vec::new(),
        window_lag: Histogram::default(),
        lag: Histogram::default(),
    };
    let config = ProducerConfig {
        client_id: "vltava-bench-groups-producer".into(),
        acks: cli.acks,
        linger: Duration::from_millis(cli.linger_ms),
        idempotent: false,
        ..ProducerConfig::default()
    };
    let producer = match Producer::new(cluster, config).await {
        Ok(producer) => producer,
        Err(e) => {
            outcome.errors += 1;
            outcome.error_messages.push(format!("producer: {e}"));
            return outcome;
        }
    };
    let value = value_of(cli.size);
    let (deliveries, mut receiver) = mpsc::channel::<Delivery>(DELIVERIES_QUEUE_MAX);
    let completer = tokio::spawn(async move {
        let (mut delivered, mut errors, mut messages) = (0u64, 0u64, Vec::new());
        while let Some(delivery) = receiver.recv().await {
            match delivery.wait().await {
                Ok(_) => delivered += 1,
                Err(e) => {
                    errors += 1;
                    if messages.len() < ERRORS_KEPT_MAX {
                        messages.push(format!("delivery: {e}"));
                    }
                }
            }
        }
        (delivered, errors, messages)
    });
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut k = 0u64;
    'sending: while !stop.load(Ordering::SeqCst) {
        let due = start + interval.mul_f64(k as f64);
        tokio::time::sleep_until(due.into()).await;
        let in_window = lock(&tracker).phase == Phase::Window;
        // Everything due by now, at most a burst.
        for _ in 0..SEND_BURST_MAX {
            let due = start + interval.mul_f64(k as f64);
            let now = Instant::now();
            if due > now {
                break;
            }
            let lag = now - due;
            outcome.lag.record_duration(lag);
            if in_window {
                outcome.window_lag.record_duration(lag);
            }
            let record = ProducerRecord {
                topic: cli.topic.clone(),
                partition: Some((k % u64::from(partitions)) as u32),
                key: None,
                value: Some(value.clone()),
                headers: Vec::new(),
                timestamp: None,
            };
            match tokio::time::timeout(SEND_WAIT, producer.send(record)).await {
                Ok(Ok(delivery)) => {
                    if deliveries.send(delivery).await.is_err() {
                        break 'sending;
                    }
                }
                Ok(Err(e)) => {
                    outcome.errors += 1;
                    outcome.error_messages.push(format!("send: {e}"));
                    break 'sending;
                }
                Err(_) => {
                    outcome.errors += 1;
                    outcome.error_messages.push("send timed out".into());
                    break 'sending;
                }
            }
            outcome.sent += 1;
            k += 1;
        }
    }
    match tokio::time::timeout(PRODUCER_CLOSE_WAIT, producer.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            outcome.errors += 1;
            outcome.error_messages.push(format!("close: {e}"));
        }
        Err(_) => {
            outcome.errors += 1;
            outcome.error_messages.push("close timed out".into());
        }
    }
    drop(deliveries);
    match completer.await {
        Ok((delivered, errors, messages)) => {
            outcome.delivered = delivered;
            outcome.errors += errors;
            outcome.error_messages.extend(messages);
        }
        Err(e) => outcome.error_messages.push(format!("completer: {e}")),
    }
    outcome.error_messages.truncate(ERRORS_KEPT_MAX);
    outcome
}

/// The group settings the node announces: a member joins a probe group and leaves at once.
struct Announced {
    heartbeat_interval_ms: u32,
    session_timeout_ms: u32,
}

async fn probe(cluster: &Cluster, topic: &str, group_id: &str) -> anyhow::Result<Announced> {
    let found = find_coordinator(cluster, group_id)
        .await
        .context("cannot find the probe group's coordinator")?;
    let connection = Connection::connect(&coordinator_addr(&found), "vltava-bench-probe")
        .await
        .context("cannot reach the coordinator")?;
    let join = ConsumerGroupHeartbeatRequest {
        group_id: group_id.to_owned(),
        member_epoch: MEMBER_EPOCH_JOIN,
        subscribed_topics: Some(vec![topic.to_owned()]),
        owned_partitions: Some(Vec::new()),
        ..ConsumerGroupHeartbeatRequest::default()
    };
    let answer = connection
        .send(&join, PROBE_TIMEOUT)
        .await
        .context("the probe's join failed")?;
    let leave = ConsumerGroupHeartbeatRequest {
        group_id: group_id.to_owned(),
        member_id: answer.member_id.clone(),
        member_epoch: MEMBER_EPOCH_LEAVE,
        ..ConsumerGroupHeartbeatRequest::default()
    };
    connection
        .send(&leave, PROBE_TIMEOUT)
        .await
        .context("the probe's leave failed")?;
    Ok(Announced {
        heartbeat_interval_ms: answer.heartbeat_interval_ms,
        session_timeout_ms: answer.session_timeout_ms,
    })
}

/// When the group became stable, counted from `since`.
#[derive(Debug, Default)]
struct Stable {
    /// Every partition owned by exactly one of the members, balanced (seen by the members).
    client: Option<Duration>,
    /// ListGroups: `stable`, with the expected member count.
    coordinator: Option<Duration>,
    list_errors: u64,
}

impl Stable {
    fn both(&self) -> Option<Duration> {
        self.client.zip(self.coordinator).map(|(a, b)| a.max(b))
    }
}

/// Waits until `members` members hold a balanced assignment and the coordinator calls the
/// group stable, at most until `deadline`.
async fn wait_stable(
    admin: &Admin,
    tracker: &Mutex<Tracker>,
    group_id: &str,
    members: usize,
    since: Instant,
    deadline: Instant,
) -> Stable {
    let mut stable = Stable::default();
    while Instant::now() < deadline {
        if stable.client.is_none() && lock(tracker).balanced(members) {
            stable.client = Some(since.elapsed());
        }
        if stable.coordinator.is_none() {
            match admin.list_groups().await {
                Ok(groups) => {
                    let done = groups.iter().any(|g| {
                        g.group_id == group_id
                            && g.state == "stable"
                            && g.members as usize == members
                    });
                    if done {
                        stable.coordinator = Some(since.elapsed());
                    }
                }
                Err(_) => stable.list_errors += 1,
            }
        }
        if stable.both().is_some() {
            break;
        }
        tokio::time::sleep(STABILITY_POLL).await;
    }
    stable
}

fn validate(cli: &Cli) -> anyhow::Result<f64> {
    if cli.members == 0 || cli.partitions() == 0 {
        bail!("--members and --partitions must be positive");
    }
    if cli.partitions() as usize <= cli.members {
        bail!("--partitions must exceed --members, so that every member has a partition");
    }
    let rate = cli.rate.unwrap_or(2_000.0);
    if !(rate.is_finite() && rate > 0.0) {
        bail!("--rate must be a positive number of events per second");
    }
    if cli.fetch_wait_ms == 0 || cli.fetch_wait_ms > 60_000 {
        bail!("--fetch-wait-ms must be between 1 and 60000");
    }
    Ok(rate)
}

pub async fn run(cli: &Cli) -> anyhow::Result<(Value, bool)> {
    let rate = validate(cli)?;
    let bootstrap = cli.bootstrap_addrs();
    let admin_cluster = Cluster::connect(&bootstrap, "vltava-bench-admin")
        .await
        .context("cannot reach the cluster")?;
    let admin = Admin::new(Arc::clone(&admin_cluster));
    let partitions = crate::ensure_topic(&admin_cluster, &cli.topic, cli.partitions()).await?;
    if partitions as usize <= cli.members {
        bail!(
            "topic {} has {partitions} partitions, not more than --members",
            cli.topic
        );
    }
    let group_id = cli.group.clone().unwrap_or_else(|| {
        format!(
            "vltava-bench-{}-{}",
            std::process::id(),
            now_ms().div_euclid(1000)
        )
    });
    let announced = probe(&admin_cluster, &cli.topic, &format!("{group_id}-probe")).await?;

    let load_start = loadavg();
    let cpu_start = (
        cpu_seconds(None),
        cli.node_pid.and_then(|p| cpu_seconds(Some(p))),
    );
    let rss_start = cli.node_pid.and_then(rss_bytes);
    let started = Instant::now();
    let members = cli.members;
    let tracker = Arc::new(Mutex::new(Tracker::new(
        &cli.topic,
        partitions,
        members + 1,
    )));
    let stop_producer = Arc::new(AtomicBool::new(false));
    let stop_members = Arc::new(AtomicBool::new(false));
    let producer_cluster = Cluster::connect(&bootstrap, "vltava-bench-groups-producer")
        .await
        .context("cannot reach the cluster")?;
    let producer = tokio::spawn(produce(
        producer_cluster,
        cli.clone(),
        partitions,
        rate,
        Arc::clone(&tracker),
        Arc::clone(&stop_producer),
    ));
    let spawn_member = |index: usize| {
        let tracker = Arc::clone(&tracker);
        let stop = Arc::clone(&stop_members);
        let topic = cli.topic.clone();
        let group_id = group_id.clone();
        let bootstrap = bootstrap.clone();
        let fetch_wait = Duration::from_millis(cli.fetch_wait_ms);
        tokio::spawn(async move {
            let client_id = format!("vltava-bench-member-{index}");
            match Cluster::connect(&bootstrap, &client_id).await {
                Ok(cluster) => {
                    member(MemberSetup {
                        index,
                        cluster,
                        topic,
                        group_id,
                        fetch_wait,
                        tracker,
                        stop,
                    })
                    .await
                }
                Err(e) => {
                    let mut outcome = MemberOutcome::default();
                    outcome.error(format!("cannot reach the cluster: {e}"));
                    outcome
                }
            }
        })
    };
    let mut tasks: Vec<JoinHandle<MemberOutcome>> = (0..members).map(spawn_member).collect();

    // The group forms.
    let formed_at = Instant::now();
    let formed = wait_stable(
        &admin,
        &tracker,
        &group_id,
        members,
        formed_at,
        formed_at + Duration::from_secs(cli.stable_timeout_s),
    )
    .await;
    let mut failure = None;
    let mut steady = None;
    let mut joined_at = None;
    let mut again = None;
    let mut window_end = None;
    let mut cpu_window = None;
    if formed.both().is_none() {
        failure = Some(format!(
            "the group of {members} did not become stable within {} s",
            cli.stable_timeout_s
        ));
    } else {
        // Steady state.
        lock(&tracker).phase = Phase::Steady;
        let steady_from = Instant::now();
        tokio::time::sleep(Duration::from_secs(cli.steady_s)).await;
        steady = Some(steady_from.elapsed());
        // The extra member joins.
        let node_cpu_before = cli.node_pid.and_then(|p| cpu_seconds(Some(p)));
        lock(&tracker).phase = Phase::Window;
        let at = Instant::now();
        joined_at = Some(at);
        tasks.push(spawn_member(members));
        let stable = wait_stable(
            &admin,
            &tracker,
            &group_id,
            members + 1,
            at,
            at + Duration::from_secs(cli.stable_timeout_s),
        )
        .await;
        if stable.both().is_none() {
            failure = Some(format!(
                "the group of {} did not become stable again within {} s",
                members + 1,
                cli.stable_timeout_s
            ));
        }
        again = Some(stable);
        tokio::time::sleep(Duration::from_secs(cli.settle_s)).await;
        lock(&tracker).phase = Phase::Done;
        window_end = Some(Instant::now());
        let node_cpu_after = cli.node_pid.and_then(|p| cpu_seconds(Some(p)));
        cpu_window = node_cpu_before
            .zip(node_cpu_after)
            .map(|(a, b)| round_to(b - a, 2));
    }
    // The coordinator's account of the rebalance, read before the members leave.
    let description = admin
        .describe_groups(std::slice::from_ref(&group_id))
        .await
        .ok()
        .and_then(|mut d| d.pop());

    stop_producer.store(true, Ordering::SeqCst);
    stop_members.store(true, Ordering::SeqCst);
    let produced = producer.await.context("the producer panicked")?;
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.context("a member panicked")?);
    }
    let cpu_end = (
        cpu_seconds(None),
        cli.node_pid.and_then(|p| cpu_seconds(Some(p))),
    );
    let rss_end = cli.node_pid.and_then(rss_bytes);
    let load_end = loadavg();
    let elapsed = started.elapsed();

    let tracker = lock(&tracker);
    let mut report = json!({
        "command": "groups-rebalance",
        "bootstrap": cli.bootstrap,
        "topic": cli.topic,
        "partitions": partitions,
        "group": group_id,
        "members_before": members,
        "members_after": members + 1,
        "rate": rate,
        "size": cli.size,
        "acks": crate::acks_name(cli.acks),
        "linger_ms": cli.linger_ms,
        "fetch_wait_ms": cli.fetch_wait_ms,
        "steady_s": cli.steady_s,
        "settle_s": cli.settle_s,
        "stability_poll_ms": STABILITY_POLL.as_millis() as u64,
        "node_heartbeat_interval_ms_announced": announced.heartbeat_interval_ms,
        "node_session_timeout_ms_announced": announced.session_timeout_ms,
        "node_heartbeat_interval_ms_stated": cli.heartbeat_interval_ms,
        "assignor": description.as_ref().map(|d| d.assignor.clone()),
        "nproc": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "elapsed_s": round_to(elapsed.as_secs_f64(), 2),
        "bench_cpu_s": crate::diff(cpu_start.0, cpu_end.0),
        "node_cpu_s": crate::diff(cpu_start.1, cpu_end.1),
        "node_cpu_s_window": cpu_window,
        "node_rss_mib_start": crate::mib(rss_start),
        "node_rss_mib_end": crate::mib(rss_end),
        "formed": {
            "stable_client_ms": formed.client.map(ms),
            "stable_coordinator_ms": formed.coordinator.map(ms),
        },
    });
    if let Some(steady) = steady {
        let steady_gap_max = tracker
            .partitions
            .iter()
            .map(|t| t.steady_gap_max)
            .max()
            .unwrap_or_default();
        report["steady"] = json!({
            "duration_s": round_to(steady.as_secs_f64(), 2),
            "gap_us": tracker.steady_gaps.summary_us(),
            "gap_max_ms": ms(steady_gap_max),
            "moves": tracker.partitions.iter().map(|t| t.steady_moves).sum::<u64>(),
            "delay_max_ms": tracker.partitions.iter().map(|t| t.steady_delay_max_ms).max(),
        });
    }
    if let (Some(joined_at), Some(again), Some(window_end)) = (joined_at, &again, window_end) {
        report["rebalance"] = rebalance_report(
            &tracker,
            joined_at,
            window_end,
            again,
            members,
            description.as_ref(),
            &produced,
        );
    }
    let mut errors: Vec<String> = Vec::new();
    if let Some(f) = &failure {
        errors.push(f.clone());
    }
    errors.extend(
        produced
            .error_messages
            .iter()
            .map(|e| format!("producer: {e}")),
    );
    let mut member_reports = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        member_reports.push(json!({
            "member": i,
            "polls": o.polls,
            "events": o.events,
            "errors": o.errors,
        }));
        errors.extend(o.error_messages.iter().map(|e| format!("member {i}: {e}")));
    }
    report["members"] = Value::Array(member_reports);
    report["produce"] = json!({
        "sent": produced.sent,
        "delivered": produced.delivered,
        "errors": produced.errors,
        "send_lag_us": produced.lag.summary_us(),
    });
    report["lost_revocations"] = json!(tracker.lost_revocations);
    let ok = failure.is_none() && produced.errors == 0;
    report["errors"] = json!(errors);
    if !cli.json {
        print_text(&report);
    }
    Ok((report, ok))
}

/// The figures of the rebalance window.
fn rebalance_report(
    tracker: &Tracker,
    joined_at: Instant,
    window_end: Instant,
    again: &Stable,
    members: usize,
    description: Option<&GroupDescription>,
    produced: &ProducerOutcome,
) -> Value {
    // Wall-clock ms of `joined_at`, to place the coordinator's rebalance records.
    let joined_ms = now_ms() - joined_at.elapsed().as_millis() as i64;
    let rel = |at: Instant| ms(at.saturating_duration_since(joined_at));
    let rel_signed = |at: Instant| {
        if at >= joined_at {
            ms(at - joined_at)
        } else {
            -ms(joined_at - at)
        }
    };
    let ids = &tracker.member_ids;
    let index_of = |member_id: &str| ids.iter().position(|m| m.as_deref() == Some(member_id));
    // Target assignments computed in the window, oldest first; each partition's first move.
    let mut targets: Vec<Value> = Vec::new();
    let mut target_of: BTreeMap<u32, (f64, Option<usize>, Option<usize>)> = BTreeMap::new();
    if let Some(d) = description {
        for r in d.rebalances.iter().rev() {
            let at = r.at_ms as i64 - joined_ms;
            if at < -1_000 {
                continue;
            }
            targets.push(json!({
                "at_ms": at,
                "reason": r.reason,
                "group_epoch": r.group_epoch,
                "moves": r.moves.len(),
            }));
            for m in r.moves.iter().filter(|m| m.topic == tracker.topic) {
                target_of.entry(m.partition.0).or_insert((
                    at as f64,
                    m.from.as_deref().and_then(index_of),
                    m.to.as_deref().and_then(index_of),
                ));
            }
        }
    }

    let mut moved = Vec::new();
    let mut moved_gaps = Vec::new();
    let mut unmoved_gap_max = Duration::ZERO;
    let mut unmoved_delay_max_ms = None;
    let mut moved_delay_max_ms = None;
    let mut unmoved_count = 0u32;
    let steady_gap_max = tracker
        .partitions
        .iter()
        .map(|t| t.steady_gap_max)
        .max()
        .unwrap_or_default();
    let mut over_steady = Vec::new();
    let mut unread = Vec::new();
    for (p, t) in tracker.partitions.iter().enumerate() {
        let p = p as u32;
        if let Some(first) = t.handovers.first() {
            let gap = t.handovers.iter().map(|h| h.new_first - h.old_last).max();
            moved_gaps.extend(gap);
            moved_delay_max_ms = moved_delay_max_ms.max(Some(t.window_delay_max_ms));
            moved.push(json!({
                "partition": p,
                "from": first.from,
                "to": first.to,
                "handovers": t.handovers.len(),
                "gap_ms": gap.map(ms),
                "target_at_ms": target_of.get(&p).map(|x| x.0),
                "old_last_at_ms": rel_signed(first.old_last),
                "revoked_seen_at_ms": t.revoked.map(|(_, at)| rel(at)),
                "assigned_seen_at_ms": t.assigned.map(|(_, at)| rel(at)),
                "new_first_at_ms": rel(first.new_first),
                "delay_max_ms": t.window_delay_max_ms,
                "duplicates": t.window_duplicates,
                "skipped": t.window_skipped,
            }));
        } else if target_of.contains_key(&p) || t.revoked.is_some() {
            // Moved by the coordinator, never read by its new owner in the window.
            unread.push(json!({
                "partition": p,
                "last_read_ms_before_end": t.last_at.map(|at| ms(window_end.saturating_duration_since(at))),
            }));
        } else {
            unmoved_count += 1;
            unmoved_gap_max = unmoved_gap_max.max(t.window_gap_max);
            unmoved_delay_max_ms = unmoved_delay_max_ms.max(Some(t.window_delay_max_ms));
            if t.window_gap_max > steady_gap_max {
                over_steady.push(json!({
                    "partition": p,
                    "gap_ms": ms(t.window_gap_max),
                    "steady_gap_max_ms": ms(t.steady_gap_max),
                }));
            }
        }
    }
    moved_gaps.sort();
    let median = moved_gaps
        .get(moved_gaps.len().saturating_sub(1) / 2)
        .copied();
    let moved_max = moved_gaps.last().copied();
    let stable = again.both();
    json!({
        "window_ms": ms(window_end - joined_at),
        "stable_client_ms": again.client.map(ms),
        "stable_coordinator_ms": again.coordinator.map(ms),
        "stable_ms": stable.map(ms),
        "new_member_first_assignment_ms": tracker
            .partitions
            .iter()
            .filter_map(|t| t.assigned.filter(|(m, _)| *m == members).map(|(_, at)| at))
            .min()
            .map(rel),
        "targets": targets,
        "moved_count": moved.len(),
        "moved_gap_max_ms": moved_max.map(ms),
        "moved_gap_median_ms": median.map(ms),
        "moved_delay_max_ms": moved_delay_max_ms,
        "moved": moved,
        "moved_unread": unread,
        "unmoved_count": unmoved_count,
        "unmoved_gap_max_ms": ms(unmoved_gap_max),
        "unmoved_delay_max_ms": unmoved_delay_max_ms,
        "unmoved_over_steady_max": over_steady,
        "window_gap_us": tracker.window_gaps.summary_us(),
        "steady_gap_max_ms": ms(steady_gap_max),
        "duplicates": tracker.partitions.iter().map(|t| t.window_duplicates).sum::<u64>(),
        "skipped": tracker.partitions.iter().map(|t| t.window_skipped).sum::<u64>(),
        "events": tracker.partitions.iter().map(|t| t.window_events).sum::<u64>(),
        "send_lag_us": produced.window_lag.summary_us(),
        "target_moved_under_1s": moved_max.is_some_and(|g| g < Duration::from_secs(1)) && unread.is_empty(),
        "target_unmoved_no_extra_gap": over_steady.is_empty(),
    })
}

/// The report for people.
fn print_text(report: &Value) {
    crate::print_with(report, write_text);
}

fn write_text(r: &Value, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "vltava-bench groups-rebalance partitions={} members={}->{} rate={} size={} fetch_wait_ms={} heartbeat_interval_ms={} session_timeout_ms={} assignor={} load {} -> {}",
        r["partitions"],
        r["members_before"],
        r["members_after"],
        r["rate"],
        r["size"],
        r["fetch_wait_ms"],
        r["node_heartbeat_interval_ms_announced"],
        r["node_session_timeout_ms_announced"],
        r["assignor"].as_str().unwrap_or("?"),
        r["loadavg_start"].as_str().unwrap_or("?"),
        r["loadavg_end"].as_str().unwrap_or("?"),
    )?;
    writeln!(
        out,
        "formed: stable after {} ms (members) / {} ms (coordinator)",
        r["formed"]["stable_client_ms"], r["formed"]["stable_coordinator_ms"],
    )?;
    let s = &r["steady"];
    if !s.is_null() {
        writeln!(
            out,
            "steady {} s: gap per partition (us) p50 {} p99 {} max {}; moves {}; event delay max {} ms",
            s["duration_s"],
            s["gap_us"]["p50"],
            s["gap_us"]["p99"],
            s["gap_us"]["max"],
            s["moves"],
            s["delay_max_ms"],
        )?;
    }
    let b = &r["rebalance"];
    if !b.is_null() {
        writeln!(
            out,
            "rebalance: stable again after {} ms (members {} ms, coordinator {} ms); new member's first assignment at {} ms",
            b["stable_ms"],
            b["stable_client_ms"],
            b["stable_coordinator_ms"],
            b["new_member_first_assignment_ms"],
        )?;
        writeln!(
            out,
            "moved: {} partitions, unavailability max {} ms, median {} ms, event delay max {} ms; never read by the new owner: {}",
            b["moved_count"],
            b["moved_gap_max_ms"],
            b["moved_gap_median_ms"],
            b["moved_delay_max_ms"],
            b["moved_unread"].as_array().map_or(0, Vec::len),
        )?;
        if let Some(moved) = b["moved"].as_array() {
            for m in moved {
                writeln!(
                    out,
                    "  partition {} member {} -> {}: gap {} ms (target at {} ms, old owner's last event {} ms, revoked seen {} ms, assigned seen {} ms, new owner's first event {} ms), {} read twice",
                    m["partition"],
                    m["from"],
                    m["to"],
                    m["gap_ms"],
                    m["target_at_ms"],
                    m["old_last_at_ms"],
                    m["revoked_seen_at_ms"],
                    m["assigned_seen_at_ms"],
                    m["new_first_at_ms"],
                    m["duplicates"],
                )?;
            }
        }
        writeln!(
            out,
            "unmoved: {} partitions, largest gap {} ms (steady-state largest {} ms), {} above it; event delay max {} ms",
            b["unmoved_count"],
            b["unmoved_gap_max_ms"],
            b["steady_gap_max_ms"],
            b["unmoved_over_steady_max"].as_array().map_or(0, Vec::len),
            b["unmoved_delay_max_ms"],
        )?;
        writeln!(
            out,
            "targets: moved < 1 s: {}; unmoved without extra gap: {}",
            b["target_moved_under_1s"], b["target_unmoved_no_extra_gap"],
        )?;
    }
    writeln!(
        out,
        "produce: {} sent, {} delivered, send lag (us) p99 {} max {}",
        r["produce"]["sent"],
        r["produce"]["delivered"],
        r["produce"]["send_lag_us"]["p99"],
        r["produce"]["send_lag_us"]["max"],
    )?;
    write!(out, "cpu: bench {} s", r["bench_cpu_s"])?;
    if !r["node_cpu_s"].is_null() {
        write!(
            out,
            ", node {} s ({} s in the window); node RSS {} -> {} MiB",
            r["node_cpu_s"], r["node_cpu_s_window"], r["node_rss_mib_start"], r["node_rss_mib_end"],
        )?;
    }
    writeln!(out)?;
    if let Some(errors) = r["errors"].as_array() {
        for e in errors {
            writeln!(out, "error: {}", e.as_str().unwrap_or(""))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: u32, offset: u64) -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition,
            offset,
            timestamp: 0,
            key: None,
            value: None,
            headers: Vec::new(),
        }
    }

    #[test]
    fn a_partition_read_by_another_member_is_a_handover_not_a_gap() {
        let mut tracker = Tracker::new("t", 2, 2);
        let t0 = Instant::now();
        tracker.phase = Phase::Steady;
        tracker.observe(0, t0, 0, &[record(0, 0), record(1, 0)]);
        tracker.observe(0, t0 + Duration::from_millis(30), 0, &[record(0, 1)]);
        tracker.phase = Phase::Window;
        tracker.observe(0, t0 + Duration::from_millis(50), 0, &[record(0, 2)]);
        tracker.observe(
            1,
            t0 + Duration::from_millis(120),
            0,
            &[record(0, 2), record(0, 4)],
        );
        let track = &tracker.partitions[0];
        assert_eq!(track.steady_gap_max, Duration::from_millis(30));
        assert_eq!(track.window_gap_max, Duration::from_millis(20));
        assert_eq!(track.handovers.len(), 1);
        let handover = track.handovers[0];
        assert_eq!((handover.from, handover.to), (0, 1));
        assert_eq!(
            handover.new_first - handover.old_last,
            Duration::from_millis(70)
        );
        assert_eq!(track.window_duplicates, 1, "offset 2 was read twice");
        assert_eq!(track.window_skipped, 1, "offset 3 was never read");
        assert!(tracker.partitions[1].handovers.is_empty());
    }

    #[test]
    fn balanced_needs_every_partition_once_and_even_counts() {
        let mut tracker = Tracker::new("t", 5, 3);
        let set = |ps: &[u32]| Some(ps.iter().copied().collect::<BTreeSet<u32>>());
        tracker.owned[0] = set(&[0, 1, 2]);
        tracker.owned[1] = set(&[3, 4]);
        assert!(tracker.balanced(2));
        assert!(!tracker.balanced(3), "member 2 has not polled yet");
        tracker.owned[0] = set(&[0, 1]);
        tracker.owned[2] = set(&[2]);
        assert!(tracker.balanced(3));
        tracker.owned[2] = set(&[]);
        assert!(!tracker.balanced(3), "partition 2 has no owner");
        tracker.owned[1] = set(&[2, 3, 4]);
        assert!(
            !tracker.balanced(3),
            "2, 3 and 0 partitions are not balanced"
        );
    }
}
