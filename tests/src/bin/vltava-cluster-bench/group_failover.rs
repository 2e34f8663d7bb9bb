//! Group failover (issue 14): SIGKILL the node that coordinates a consumer group, then time how
//! long the group stops consuming and committing.
//!
//! One topic of `PARTITIONS` partitions (RF 3, default settings: `min.insync.replicas` 2, fsync
//! durability) is written all along by paced acks=all idempotent producers (the Rust client's
//! `Producer`), one per partition: a single producer stops sending to every partition once one
//! partition's queue of sealed batches is full (its `send` waits holding the accumulator), so
//! with one producer the partitions the killed node led would stop the others too and the
//! group's pause would be the producer's. Every value is the time it was sent, so a reader can
//! tell events sent after the kill from older ones. Each round starts a fresh group of `MEMBERS` members (the
//! Rust client's `GroupConsumer`, group id `group-failover-NN`, so that the group's
//! `__consumer_offsets` partition, and with it its coordinator, differs from round to round).
//! With `--commit every-poll` (the default) each member polls, and after every poll that
//! returned events commits its positions synchronously (auto commit off): the at-least-once
//! loop that keeps redelivery small, and the one that shows a coordinator's absence, as a
//! member blocked in a commit does not poll. With `--commit auto` the members use the client's
//! defaults (auto commit from `poll()` every 5 s) and never commit themselves. Once the group
//! is steady (every partition owned by exactly one member, every partition delivering, every
//! member committing with `every-poll`), the round asks FindCoordinator which node coordinates the group,
//! notes whether that node is also the active controller, and SIGKILLs it. It then waits
//! (bounded by `RESUME_BOUND`) until the group has recovered, stops the members, checks the
//! committed offsets through the new coordinator, restarts the killed node and waits until every
//! partition of the topic and of `__consumer_offsets` has all three replicas in sync.
//!
//! Figures, each measured from the instant the kill (SIGKILL, then waiting for the process to
//! be reaped) returned:
//! - **Group pause**: the longest interval in which no member's `poll()` returned an event,
//!   from the last poll that returned events before the kill to the moment every partition has
//!   delivered an event sent after the kill. This is "how long does my group stop consuming":
//!   it includes the partitions the killed node led (their leaders move too) and the polls a
//!   member missed while blocked in a commit.
//! - **All partitions resumed**: kill → every partition has delivered, to some member, an event
//!   sent after the kill (the group is reading everything again, caught up to the kill).
//! - **First commit** (`every-poll` only): kill → the first commit, begun after the kill, that
//!   succeeded (any member). A commit begun after the kill cannot have been answered by the
//!   killed node, so it was taken by the new coordinator.
//! - **All partitions committed**: kill → for every partition, a successful commit of a position
//!   past the first event sent after the kill that the group read from it (the group's progress
//!   on every partition is durable again). With `every-poll` the members see their commits
//!   succeed; with `auto` the commits happen inside `poll()`, so the round reads the committed
//!   offsets through the coordinator every `OFFSETS_WATCH_PERIOD` instead, and the figure is
//!   when a read first showed the offset. The known liveness bug of issue 14 (a group that
//!   never committed one partition) would show here as a round that does not finish.
//! - **Production gap**: the longest interval between the send times of two consecutive events
//!   the group read, over the window of the group pause: the part of a pause that is the
//!   producers' (a partition whose writes are not acknowledged fills its producer's queue, and
//!   that producer stops sending) rather than the group's.
//! - **Longest delay**: the longest time from send to delivery of an event sent between 1 s
//!   before the kill and the moment every partition resumed: what the failover did to an
//!   event, leader moves and the group's pause together.
//!
//! A round that does not recover within `RESUME_BOUND` is recorded as failed with what was
//! seen, and the nodes' logs are written to a directory that outlives the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use vltava_client::connection::Connection;
use vltava_client::{
    Admin, Cluster, ConsumerConfig, GroupConfig, GroupConsumer, OffsetReset, Producer,
    ProducerConfig, ProducerRecord, RebalanceEvent,
};
use vltava_messages::group_records::OFFSETS_TOPIC;
use vltava_messages::protocol::MetadataRequest;
use vltava_tests::cluster::TestCluster;

use crate::stats::{Samples, ms};
use crate::{
    Args, CLIENT_ID, CommitMode, REQUEST_TIMEOUT, check_interrupted, error_kind, settle,
    start_cluster,
};

/// The topic the producers write and every round's group reads.
const TOPIC: &str = "group-failover";
/// Six partitions spread two leaders per node, so the killed coordinator also leads about a
/// third of the partitions the group reads, as it would in a real cluster.
const PARTITIONS: u32 = 6;
/// Two members split the partitions, so the group has a real assignment to keep.
const MEMBERS: usize = 2;
/// Events each partition's producer sends a second: one every 20 ms per partition, one every
/// 3.3 ms over the group, fine enough to time a pause of tens of milliseconds while leaving the
/// two cores room for the nodes.
const PRODUCE_RATE_PER_PARTITION_PER_S: u32 = 50;
/// Sends per producer whose answer has not come yet: 1024 is about 20 s of production, far
/// more than a failover holds back, so a producer is not paced by its partition moving.
const DELIVERIES_IN_FLIGHT_MAX: usize = 1024;
/// A member's fetch wait when nothing arrives: short, so a member polls (and notices a moved
/// leader) often.
const MEMBER_FETCH_WAIT: Duration = Duration::from_millis(100);
/// A member's pause after a failed poll, so that a broken cluster is not asked in a tight loop.
const MEMBER_ERROR_PAUSE: Duration = Duration::from_millis(20);
/// How long a new group may take to become steady: joining, the assignment and the first
/// fetches take a second or two on a healthy cluster.
const STEADY_BOUND: Duration = Duration::from_secs(60);
/// A steady group delivered from every partition and committed from every member within this:
/// with an event every 20 ms per partition, 1 s of silence means something is wrong.
const STEADY_FRESHNESS: Duration = Duration::from_secs(1);
/// How long after the kill a group may take to recover (every partition read and committed
/// past the kill). It is above the 45 s session timeout, so that a group that recovers only
/// by timing its members out and rejoining is measured rather than cut off; a round past it is
/// a failure.
const RESUME_BOUND: Duration = Duration::from_secs(60);
/// How long the members may take to stop (a last commit and a leave, each bounded by the
/// client) before their tasks are aborted.
const MEMBER_STOP_BOUND: Duration = Duration::from_secs(20);
/// How long the committed offsets may take to be read back through the new coordinator.
const OFFSETS_CHECK_BOUND: Duration = Duration::from_secs(20);
/// How long the restarted node may take to rejoin every ISR.
const REJOIN_BOUND: Duration = Duration::from_secs(60);
/// With `--commit auto`: how often the round reads the group's committed offsets after the
/// kill. 100 ms is fine against an auto-commit interval of 5 s and costs one small request.
const OFFSETS_WATCH_PERIOD: Duration = Duration::from_millis(100);
/// With `--commit auto`: how long one read of the committed offsets may take before it is
/// abandoned and the next one sent; the client retries inside it while the coordinator moves.
const OFFSETS_WATCH_REQUEST_BOUND: Duration = Duration::from_secs(2);
/// How often the round checks whether the group is steady or has recovered.
const CHECK_PERIOD: Duration = Duration::from_millis(10);

/// What the members saw during one round; the round loop reads it, the members write it.
#[derive(Debug, Default)]
struct RoundLog {
    /// When the kill returned; `None` before it.
    killed_at: Option<Instant>,
    /// When each poll that returned events ended (any member).
    deliveries: Vec<Instant>,
    /// Every event read: when it was sent and when a member's poll returned it.
    reads: Vec<(Instant, Instant)>,
    /// Per partition: when it last delivered.
    last_delivery: BTreeMap<u32, Instant>,
    /// Per partition: the first event sent after the kill that was read, and when.
    first_after_kill: BTreeMap<u32, (u64, Instant)>,
    /// With `--commit auto`, per partition: when a read of the committed offsets first showed
    /// one past the first event sent after the kill that the group read.
    seen_committed: BTreeMap<u32, Instant>,
    /// Per member: the partitions it owns after its last poll.
    owned: BTreeMap<usize, BTreeSet<u32>>,
    commits: Vec<Commit>,
    /// Failed polls and commits by error kind, after the kill.
    errors: BTreeMap<String, u32>,
    /// Rebalance events after the kill, per member.
    rebalances: Vec<(usize, RebalanceEvent)>,
}

/// One `commit()` call.
#[derive(Debug)]
struct Commit {
    member: usize,
    started: Instant,
    ended: Instant,
    succeeded: bool,
    /// The positions of the owned partitions when the commit began: after a success, the
    /// committed offsets (next to read) of those partitions.
    positions: BTreeMap<u32, u64>,
}

type Shared = Arc<Mutex<RoundLog>>;

fn lock(log: &Shared) -> std::sync::MutexGuard<'_, RoundLog> {
    // A member that panicked leaves a usable log: its entries are whole.
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One round's figures, or why it failed.
#[derive(Debug)]
struct Round {
    index: u32,
    coordinator: u32,
    controller: u32,
    offsets_partition: u32,
    /// The topic's partitions the killed node led.
    led: Vec<u32>,
    outcome: Result<Figures, String>,
}

#[derive(Debug)]
struct Figures {
    group_pause: Duration,
    all_resumed: Duration,
    /// `None` with `--commit auto`, where the members do not see their commits.
    first_commit: Option<Duration>,
    all_committed: Duration,
    /// The longest interval between the send times of two consecutive events the group read
    /// (all partitions), over the same window as `group_pause`: how much of the pause is the
    /// producers' rather than the group's.
    production_gap: Duration,
    /// The longest time from send to delivery of an event sent between `STEADY_FRESHNESS`
    /// before the kill and the moment every partition resumed: the worst delay the failover
    /// gave an event, leader moves and the group's pause together.
    delay_max: Duration,
    errors: BTreeMap<String, u32>,
    rebalances: usize,
    rejoined: Duration,
}

#[derive(Debug)]
pub struct Report {
    commit: CommitMode,
    rounds: Vec<Round>,
    produced: u64,
    produce_failures: u64,
}

pub fn run(rt: &Runtime, args: &Args) -> anyhow::Result<Report> {
    println!(
        "\n== group failover: {} rounds of SIGKILL of a consumer group's coordinator",
        args.rounds
    );
    let (mut cluster, _) = start_cluster(rt)?;
    rt.block_on(async {
        let admin = Admin::new(Cluster::connect(&cluster.bootstrap(), CLIENT_ID).await?);
        admin
            .create_topic(TOPIC, PARTITIONS, 3, BTreeMap::new())
            .await
            .context("creating the topic")
    })?;
    rt.block_on(wait_for_full_isr(&cluster.bootstrap()))?;
    let log_dir = args.log_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("vltava-group-failover-{}", std::process::id()))
    });
    let epoch = Instant::now();
    let stop_producing = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let producers: Vec<JoinHandle<()>> = (0..PARTITIONS)
        .map(|partition| {
            rt.spawn(produce(
                cluster.bootstrap(),
                partition,
                epoch,
                Arc::clone(&stop_producing),
                Arc::clone(&acknowledged),
                Arc::clone(&failed),
            ))
        })
        .collect();
    let mut rounds = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for index in 0..args.rounds {
            let round = run_round(rt, &mut cluster, index, epoch, &log_dir, args)?;
            rounds.push(round);
        }
        Ok(())
    })();
    stop_producing.store(true, Ordering::Relaxed);
    // The producers flush with the cluster whole; one that does not end is left to the
    // runtime's shutdown.
    rt.block_on(async {
        for producer in producers {
            let _ = tokio::time::timeout(MEMBER_STOP_BOUND, producer).await;
        }
    });
    let report = Report {
        commit: args.commit,
        rounds,
        produced: acknowledged.load(Ordering::Relaxed),
        produce_failures: failed.load(Ordering::Relaxed),
    };
    if let Err(e) = result {
        // The rounds measured so far are still worth printing before the error ends the run.
        report.print();
        return Err(e);
    }
    Ok(report)
}

/// One round: a fresh group, steady, the coordinator killed, recovery timed, the node back.
/// An error is returned only when the cluster itself cannot go on (a round that measures a
/// group that does not recover is a failed round, not an error).
fn run_round(
    rt: &Runtime,
    cluster: &mut TestCluster,
    index: u32,
    epoch: Instant,
    log_dir: &Path,
    args: &Args,
) -> anyhow::Result<Round> {
    check_interrupted()?;
    let group = format!("group-failover-{index:02}");
    let log: Shared = Arc::new(Mutex::new(RoundLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let members: Vec<JoinHandle<()>> = (0..MEMBERS)
        .map(|member| {
            rt.spawn(consume(
                cluster.bootstrap(),
                group.clone(),
                member,
                args.commit,
                epoch,
                Arc::clone(&log),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let steady = rt.block_on(wait_until_steady(&log, args.commit));
    let stop_members = |members: Vec<JoinHandle<()>>| {
        stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            for mut member in members {
                if tokio::time::timeout(MEMBER_STOP_BOUND, &mut member)
                    .await
                    .is_err()
                {
                    eprintln!("  a member did not stop within {MEMBER_STOP_BOUND:?}; aborted");
                    member.abort();
                }
            }
        });
    };
    if let Err(e) = steady {
        stop_members(members);
        anyhow::bail!("round {index}: the group {group} did not become steady: {e}");
    }
    let controller = rt.block_on(settle(&cluster.bootstrap()))?;
    let (coordinator, offsets_partition, led) = rt.block_on(async {
        let admin = Admin::new(Cluster::connect(&cluster.bootstrap(), CLIENT_ID).await?);
        let found = admin.find_coordinator(&group).await?;
        let led = led_by(&cluster.node(found.node_id.0).addr, found.node_id.0).await?;
        anyhow::Ok((found.node_id.0, found.offsets_partition.0, led))
    })?;

    cluster.node_mut(coordinator).kill();
    let killed_at = Instant::now();
    lock(&log).killed_at = Some(killed_at);
    // With auto commit the members do not see their commits, so the round reads the committed
    // offsets itself until it has recovered.
    let watcher = (args.commit == CommitMode::Auto).then(|| {
        rt.spawn(watch_committed(
            cluster.bootstrap(),
            group.clone(),
            Arc::clone(&log),
        ))
    });
    let recovered = rt.block_on(wait_until_recovered(&log, killed_at));
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    stop_members(members);
    // The committed offsets, read back through the new coordinator, must cover what the
    // members saw committed: a commit acknowledged and then lost would show here.
    let offsets_check = match &recovered {
        Ok(()) => rt.block_on(check_committed(&cluster.bootstrap(), &group, &log)),
        Err(_) => Ok(()),
    };
    let outcome = match (recovered, offsets_check) {
        (Ok(()), Ok(())) => Ok(figures(&lock(&log), killed_at, args.commit)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    if outcome.is_err() || args.log_dir.is_some() {
        // Before the relaunch, which clears the killed node's log.
        write_logs(cluster, log_dir, index)?;
    }

    let relaunched_at = Instant::now();
    let node = cluster.node_mut(coordinator);
    node.relaunch();
    node.wait_until_ready();
    rt.block_on(wait_for_full_isr(&cluster.bootstrap()))
        .with_context(|| format!("round {index}: node {coordinator} rejoining"))?;
    let rejoined = relaunched_at.elapsed();
    let outcome = outcome.map(|mut f| {
        f.rejoined = rejoined;
        f
    });
    let round = Round {
        index,
        coordinator,
        controller,
        offsets_partition,
        led,
        outcome,
    };
    round.print();
    if round.outcome.is_err() {
        println!("    node logs of this round: {}", log_dir.display());
    }
    Ok(round)
}

/// Waits until every partition is owned by exactly one member, every partition delivered and
/// every member committed within `STEADY_FRESHNESS`.
async fn wait_until_steady(log: &Shared, commit: CommitMode) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEADY_BOUND;
    loop {
        check_interrupted()?;
        let seen = {
            let log = lock(log);
            let now = Instant::now();
            let fresh = |at: &Instant| now.duration_since(*at) < STEADY_FRESHNESS;
            let owned: Vec<u32> = log.owned.values().flatten().copied().collect();
            let owned_set: BTreeSet<u32> = owned.iter().copied().collect();
            let split = log.owned.len() == MEMBERS
                && owned.len() == PARTITIONS as usize
                && owned_set.len() == PARTITIONS as usize;
            let delivering = (0..PARTITIONS).all(|p| log.last_delivery.get(&p).is_some_and(fresh));
            let committing = commit == CommitMode::Auto
                || (0..MEMBERS).all(|m| {
                    log.commits
                        .iter()
                        .any(|c| c.member == m && c.succeeded && fresh(&c.ended))
                });
            if split && delivering && committing {
                return Ok(());
            }
            format!(
                "owned {:?}, delivering {delivering}, committing {committing}",
                log.owned
            )
        };
        if Instant::now() >= deadline {
            anyhow::bail!("not steady within {STEADY_BOUND:?}: {seen}");
        }
        tokio::time::sleep(CHECK_PERIOD).await;
    }
}

/// Waits until every partition delivered an event sent after the kill and has a successful
/// commit past it; on `RESUME_BOUND`, an error that says what was missing.
async fn wait_until_recovered(log: &Shared, killed_at: Instant) -> Result<(), String> {
    loop {
        if check_interrupted().is_err() {
            return Err("interrupted".into());
        }
        let missing = {
            let log = lock(log);
            let unread: Vec<u32> = (0..PARTITIONS)
                .filter(|p| !log.first_after_kill.contains_key(p))
                .collect();
            let uncommitted: Vec<u32> = (0..PARTITIONS)
                .filter(|p| committed_past_kill(&log, *p).is_none())
                .collect();
            if unread.is_empty() && uncommitted.is_empty() {
                return Ok(());
            }
            (unread, uncommitted)
        };
        if killed_at.elapsed() >= RESUME_BOUND {
            let log = lock(log);
            let after: Vec<&Commit> = log
                .commits
                .iter()
                .filter(|c| c.started >= killed_at)
                .collect();
            let succeeded = after.iter().filter(|c| c.succeeded).count();
            let last_success = after
                .iter()
                .filter(|c| c.succeeded)
                .map(|c| (c.member, ms(c.ended - killed_at), c.positions.clone()))
                .next_back();
            return Err(format!(
                "not recovered within {RESUME_BOUND:?} of the kill: partitions without an event \
                 sent after the kill read {:?}, partitions without a commit past it {:?}; \
                 {} commits begun after the kill, {succeeded} succeeded, last success \
                 (member, after, positions) {last_success:?}; first events after the kill read \
                 (partition: offset) {:?}; owned now {:?}; errors {:?}; rebalance events {:?}",
                missing.0,
                missing.1,
                after.len(),
                log.first_after_kill
                    .iter()
                    .map(|(p, (o, _))| (*p, *o))
                    .collect::<BTreeMap<_, _>>(),
                log.owned,
                log.errors,
                log.rebalances,
            ));
        }
        tokio::time::sleep(CHECK_PERIOD).await;
    }
}

/// When a successful commit first covered partition `p` past its first event read that was
/// sent after the kill: as a member saw its commit succeed, or (auto commit) as a read of the
/// committed offsets first showed it.
fn committed_past_kill(log: &RoundLog, p: u32) -> Option<Instant> {
    let (offset, _) = log.first_after_kill.get(&p)?;
    log.commits
        .iter()
        .filter(|c| c.succeeded && c.positions.get(&p).is_some_and(|at| at > offset))
        .map(|c| c.ended)
        .chain(log.seen_committed.get(&p).copied())
        .min()
}

/// Reads the group's committed offsets every `OFFSETS_WATCH_PERIOD` (each read bounded by
/// `OFFSETS_WATCH_REQUEST_BOUND`) and notes in `log` when each partition's first passes the
/// first event sent after the kill that the group read. Runs until aborted.
async fn watch_committed(bootstrap: Vec<String>, group: String, log: Shared) {
    let Ok(cluster) = Cluster::connect(&bootstrap, CLIENT_ID).await else {
        eprintln!("  the offsets watcher could not connect");
        return;
    };
    let admin = Admin::new(cluster);
    loop {
        let read = tokio::time::timeout(
            OFFSETS_WATCH_REQUEST_BOUND,
            admin.fetch_offsets(&group, None),
        )
        .await;
        let now = Instant::now();
        if let Ok(Ok(topics)) = read {
            let mut log = lock(&log);
            for partition in topics
                .iter()
                .filter(|t| t.topic == TOPIC)
                .flat_map(|t| t.partitions.iter())
            {
                let p = partition.partition.0;
                let past = match (log.first_after_kill.get(&p), partition.offset) {
                    (Some((first, _)), Some(committed)) => committed.0 > *first,
                    _ => false,
                };
                if past {
                    log.seen_committed.entry(p).or_insert(now);
                }
            }
        }
        tokio::time::sleep(OFFSETS_WATCH_PERIOD).await;
    }
}

/// The round's figures from a log in which the group recovered.
fn figures(log: &RoundLog, killed_at: Instant, commit: CommitMode) -> Figures {
    let resumed_at = log
        .first_after_kill
        .values()
        .map(|(_, at)| *at)
        .max()
        .expect("recovered: every partition read after the kill");
    let per_partition: std::collections::BTreeMap<u32, u64> = log
        .first_after_kill
        .iter()
        .map(|(p, (_, at))| {
            (
                *p,
                at.saturating_duration_since(killed_at).as_millis() as u64,
            )
        })
        .collect();
    eprintln!("    resumed per partition (ms after the kill): {per_partition:?}");
    let mut deliveries = log.deliveries.clone();
    deliveries.sort();
    // The window opens at the last delivery before the kill (the group was steady, so there
    // is one within `STEADY_FRESHNESS`) and closes when every partition has resumed.
    let opened = deliveries
        .iter()
        .rev()
        .find(|d| **d < killed_at)
        .copied()
        .unwrap_or(killed_at);
    let window: Vec<Instant> = std::iter::once(opened)
        .chain(
            deliveries
                .iter()
                .filter(|d| **d >= killed_at && **d <= resumed_at)
                .copied(),
        )
        .collect();
    let group_pause = window
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let first_commit = (commit == CommitMode::EveryPoll).then(|| {
        log.commits
            .iter()
            .filter(|c| c.succeeded && c.started >= killed_at)
            .map(|c| c.ended - killed_at)
            .min()
            .expect("recovered: a commit after the kill succeeded")
    });
    let all_committed = (0..PARTITIONS)
        .map(|p| {
            committed_past_kill(log, p).expect("recovered: every partition committed") - killed_at
        })
        .max()
        .unwrap_or_default();
    let mut sent: Vec<Instant> = log.reads.iter().map(|(sent, _)| *sent).collect();
    sent.sort();
    let sent_opened = sent
        .iter()
        .rev()
        .find(|s| **s < killed_at)
        .copied()
        .unwrap_or(killed_at);
    let production_gap = sent
        .iter()
        .filter(|s| **s >= sent_opened && **s <= resumed_at)
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| *w[1] - *w[0])
        .max()
        .unwrap_or_default();
    let delay_from = killed_at.checked_sub(STEADY_FRESHNESS).unwrap_or(killed_at);
    let delay_max = log
        .reads
        .iter()
        .filter(|(sent, _)| *sent >= delay_from && *sent <= resumed_at)
        .map(|(sent, read)| read.saturating_duration_since(*sent))
        .max()
        .unwrap_or_default();
    Figures {
        production_gap,
        delay_max,
        group_pause,
        all_resumed: resumed_at - killed_at,
        first_commit,
        all_committed,
        errors: log.errors.clone(),
        rebalances: log.rebalances.len(),
        rejoined: Duration::ZERO,
    }
}

/// Reads the group's committed offsets through its (new) coordinator and checks that each
/// partition's is at least the highest position a successful commit reported for it.
async fn check_committed(bootstrap: &[String], group: &str, log: &Shared) -> Result<(), String> {
    let expected: BTreeMap<u32, u64> = {
        let log = lock(log);
        let mut expected = BTreeMap::new();
        for commit in log.commits.iter().filter(|c| c.succeeded) {
            for (p, at) in &commit.positions {
                let e = expected.entry(*p).or_insert(*at);
                *e = (*e).max(*at);
            }
        }
        expected
    };
    let read = tokio::time::timeout(OFFSETS_CHECK_BOUND, async {
        let admin = Admin::new(Cluster::connect(bootstrap, CLIENT_ID).await?);
        admin.fetch_offsets(group, None).await
    })
    .await
    .map_err(|_| format!("the committed offsets were not read within {OFFSETS_CHECK_BOUND:?}"))?
    .map_err(|e| format!("reading the committed offsets: {e}"))?;
    let committed = vltava_tests::committed_offsets(&read, TOPIC);
    let short: Vec<(u32, u64, Option<u64>)> = expected
        .iter()
        .filter(|(p, at)| committed.get(p).copied().flatten().is_none_or(|c| c < **at))
        .map(|(p, at)| (*p, *at, committed.get(p).copied().flatten()))
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "committed offsets behind what commits acknowledged (partition, acknowledged, read \
             back): {short:?}"
        ))
    }
}

/// The partitions of the topic that `node` leads, as `addr` (that node) sees them.
async fn led_by(addr: &str, node: u32) -> anyhow::Result<Vec<u32>> {
    let conn = Connection::connect(addr, CLIENT_ID).await?;
    let answer = conn
        .send(
            &MetadataRequest {
                topics: Some(vec![TOPIC.to_owned()]),
            },
            REQUEST_TIMEOUT,
        )
        .await?;
    Ok(answer
        .topics
        .iter()
        .filter(|t| t.name == TOPIC)
        .flat_map(|t| t.partitions.iter().enumerate())
        .filter(|(_, p)| p.leader.is_some_and(|l| l.0 == node))
        .map(|(i, _)| i as u32)
        .collect())
}

/// Waits until every node answers with every partition of the topic and of
/// `__consumer_offsets` led and its ISR holding all three replicas.
async fn wait_for_full_isr(addrs: &[String]) -> anyhow::Result<()> {
    crate::partition_failover::wait_for_full_isr(addrs, &[TOPIC, OFFSETS_TOPIC], REJOIN_BOUND).await
}

/// Writes every node's log of round `index` into `dir`, as `round-NN-node-M.log`.
fn write_logs(cluster: &TestCluster, dir: &Path, index: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let path: PathBuf = dir.join(format!("round-{index:02}-node-{}.log", i + 1));
        std::fs::write(&path, node.log_text())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Sends `PRODUCE_RATE_PER_PARTITION_PER_S` events a second to `partition` until `stop`; each
/// value is the send time in nanoseconds since `epoch`, big-endian. Counts acknowledged and
/// failed events.
async fn produce(
    bootstrap: Vec<String>,
    partition: u32,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let producer = match async {
        Producer::new(
            Cluster::connect(&bootstrap, &format!("group-failover-producer-{partition}")).await?,
            ProducerConfig::default(),
        )
        .await
    }
    .await
    {
        Ok(producer) => producer,
        Err(e) => {
            eprintln!("  the producer of partition {partition} could not start: {e}");
            return;
        }
    };
    let window = Arc::new(Semaphore::new(DELIVERIES_IN_FLIGHT_MAX));
    let mut pace = tokio::time::interval(Duration::from_secs(1) / PRODUCE_RATE_PER_PARTITION_PER_S);
    // A producer held back (a slow send) skips the ticks it missed rather than sending them in
    // a burst, so the rate stays even and a stall is not followed by a flood.
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        let Ok(permit) = Arc::clone(&window).acquire_owned().await else {
            break;
        };
        let sent = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let record = ProducerRecord {
            topic: TOPIC.to_owned(),
            partition: Some(partition),
            key: None,
            value: Some(sent.to_be_bytes().to_vec()),
            headers: Vec::new(),
            timestamp: None,
        };
        match producer.send(record).await {
            Ok(delivery) => {
                let acknowledged = Arc::clone(&acknowledged);
                let failed = Arc::clone(&failed);
                tokio::spawn(async move {
                    match delivery.wait().await {
                        Ok(_) => acknowledged.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    drop(permit);
                });
            }
            Err(_) => {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let _ = producer.flush().await;
    let _ = producer.close().await;
}

/// Member `member` of `group`: polls, and after every poll that returned events commits, until
/// `stop`; records everything into `log`. Then closes (a last commit and a leave).
async fn consume(
    bootstrap: Vec<String>,
    group: String,
    member: usize,
    commit: CommitMode,
    epoch: Instant,
    log: Shared,
    stop: Arc<AtomicBool>,
) {
    let client_id = format!("{group}-member-{member}");
    let cluster = match Cluster::connect(&bootstrap, &client_id).await {
        Ok(cluster) => cluster,
        Err(e) => {
            eprintln!("  member {member} could not connect: {e}");
            return;
        }
    };
    let mut config = GroupConfig::new(group);
    // With `every-poll` the commits are the member's own, after every poll that read something
    // (see the module doc); with `auto` the client's default auto commit does them.
    config.auto_commit = commit == CommitMode::Auto;
    // A fresh group starts at the end, so a round does not first read the whole topic back.
    config.auto_offset_reset = OffsetReset::Latest;
    let consumer = ConsumerConfig {
        max_wait: MEMBER_FETCH_WAIT,
        ..ConsumerConfig::default()
    };
    let mut consumer = match GroupConsumer::new(cluster, consumer, config) {
        Ok(consumer) => consumer,
        Err(e) => {
            eprintln!("  member {member}: {e}");
            return;
        }
    };
    if let Err(e) = consumer.subscribe(&[TOPIC]) {
        eprintln!("  member {member}: {e}");
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let polled = consumer.poll().await;
        let now = Instant::now();
        let rebalances = consumer.rebalance_events();
        let owned: BTreeSet<u32> = consumer
            .assignment()
            .iter()
            .filter(|t| t.topic == TOPIC)
            .flat_map(|t| t.partitions.iter().map(|p| p.0))
            .collect();
        let read = {
            let mut log = lock(&log);
            log.owned.insert(member, owned);
            let after_kill = log.killed_at.is_some();
            if after_kill {
                log.rebalances
                    .extend(rebalances.into_iter().map(|e| (member, e)));
            }
            match polled {
                Ok(records) if !records.is_empty() => {
                    log.deliveries.push(now);
                    for record in &records {
                        log.last_delivery.insert(record.partition, now);
                        let sent = record
                            .value
                            .as_deref()
                            .and_then(|v| <[u8; 8]>::try_from(v).ok())
                            .map(|v| epoch + Duration::from_nanos(u64::from_be_bytes(v)));
                        if let Some(sent) = sent {
                            log.reads.push((sent, now));
                        }
                        if let (Some(killed_at), Some(sent)) = (log.killed_at, sent)
                            && sent > killed_at
                        {
                            log.first_after_kill
                                .entry(record.partition)
                                .or_insert((record.offset, now));
                        }
                    }
                    Ok(true)
                }
                Ok(_) => Ok(false),
                Err(e) => {
                    if after_kill {
                        *log.errors
                            .entry(format!("poll: {}", error_kind(&e)))
                            .or_default() += 1;
                    }
                    Err(())
                }
            }
        };
        match read {
            Ok(true) if commit == CommitMode::EveryPoll => {}
            Ok(_) => continue,
            Err(()) => {
                tokio::time::sleep(MEMBER_ERROR_PAUSE).await;
                continue;
            }
        }
        let positions: BTreeMap<u32, u64> = consumer
            .positions()
            .iter()
            .filter(|((t, _), _)| t == TOPIC)
            .map(|((_, p), at)| (*p, *at))
            .collect();
        let started = Instant::now();
        let result = consumer.commit().await;
        let ended = Instant::now();
        let mut log = lock(&log);
        if let Err(e) = &result
            && log.killed_at.is_some()
        {
            *log.errors
                .entry(format!("commit: {}", error_kind(e)))
                .or_default() += 1;
        }
        log.commits.push(Commit {
            member,
            started,
            ended,
            succeeded: result.is_ok(),
            positions,
        });
    }
    let _ = consumer.close().await;
}

impl Round {
    fn print(&self) {
        let who = format!(
            "killed node {} (coordinator of offsets partition {}, {}; leading topic partitions {:?})",
            self.coordinator,
            self.offsets_partition,
            if self.coordinator == self.controller {
                "also the controller".to_owned()
            } else {
                format!("controller {}", self.controller)
            },
            self.led
        );
        match &self.outcome {
            Ok(f) => println!(
                "  round {:2}: {who}: group pause {}, all partitions resumed {}, first commit {}, \
                 all partitions committed {}, production gap {}, longest delay {}; errors {:?}, {} \
                 rebalance event(s); rejoined every ISR {} after relaunch",
                self.index,
                ms(f.group_pause),
                ms(f.all_resumed),
                f.first_commit.map_or("-".into(), ms),
                ms(f.all_committed),
                ms(f.production_gap),
                ms(f.delay_max),
                f.errors,
                f.rebalances,
                ms(f.rejoined),
            ),
            Err(e) => println!("  round {:2}: {who}: FAILED: {e}", self.index),
        }
    }
}

impl Report {
    pub fn print(&self) {
        let ok: Vec<&Figures> = self
            .rounds
            .iter()
            .filter_map(|r| r.outcome.as_ref().ok())
            .collect();
        let failed: Vec<&Round> = self.rounds.iter().filter(|r| r.outcome.is_err()).collect();
        let controller = self
            .rounds
            .iter()
            .filter(|r| r.coordinator == r.controller)
            .count();
        println!(
            "\nGroup failover, the coordinator's node killed, members committing {} ({} rounds, \
             {} recovered, {} failed; the coordinator was also the controller in {controller}; \
             nearest-rank p99, so with fewer than 100 rounds p99 is the max)",
            match self.commit {
                CommitMode::EveryPoll => "after every poll",
                CommitMode::Auto => "by auto commit every 5 s",
            },
            self.rounds.len(),
            ok.len(),
            failed.len()
        );
        print_figures("  ", &ok);
        println!(
            "  relaunch -> every ISR full again: {}",
            describe(ok.iter().map(|f| Some(f.rejoined)))
        );
        for (name, also) in [
            ("the coordinator also the controller", true),
            ("the coordinator not the controller", false),
        ] {
            let subset: Vec<&Figures> = self
                .rounds
                .iter()
                .filter(|r| (r.coordinator == r.controller) == also)
                .filter_map(|r| r.outcome.as_ref().ok())
                .collect();
            println!("  rounds with {name}:");
            print_figures("    ", &subset);
        }
        let mut errors: BTreeMap<&str, u32> = BTreeMap::new();
        for f in &ok {
            for (kind, count) in &f.errors {
                *errors.entry(kind).or_default() += count;
            }
        }
        println!("  failed polls and commits after the kills, by error: {errors:?}");
        println!(
            "  producers: {} events acknowledged, {} failed",
            self.produced, self.produce_failures
        );
        for round in failed {
            round.print();
        }
    }
}

/// A figure's name and how to read it from a round (`None`: not measured in that mode).
type FigureLine = (&'static str, fn(&Figures) -> Option<Duration>);

/// Prints the figures of `rounds`, each line indented by `indent`.
fn print_figures(indent: &str, rounds: &[&Figures]) {
    let lines: [FigureLine; 6] = [
        (
            "group pause (longest time no member's poll returned an event)",
            |f| Some(f.group_pause),
        ),
        (
            "kill -> every partition delivered an event sent after the kill",
            |f| Some(f.all_resumed),
        ),
        (
            "kill -> first successful commit begun after the kill",
            |f| f.first_commit,
        ),
        ("kill -> every partition committed past the kill", |f| {
            Some(f.all_committed)
        }),
        (
            "longest gap between send times of the events read, same window as the pause",
            |f| Some(f.production_gap),
        ),
        (
            "longest send -> delivery of an event sent from 1 s before the kill to resumption",
            |f| Some(f.delay_max),
        ),
    ];
    for (name, pick) in lines {
        println!(
            "{indent}{name}: {}",
            describe(rounds.iter().map(|f| pick(f)))
        );
    }
}

/// The order statistics of the samples present, or why there are none.
fn describe(samples: impl Iterator<Item = Option<Duration>>) -> String {
    let samples: Vec<Duration> = samples.flatten().collect();
    if samples.is_empty() {
        "no sample".into()
    } else {
        Samples::new(samples).to_string()
    }
}
