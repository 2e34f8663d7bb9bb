//! Controller failover: SIGKILL the controller, then time until a topic creation through a
//! survivor succeeds. Each round creates over a connection opened before the kill (so no
//! connect is timed), retries every `--retry-ms` on retriable errors, and watches the
//! survivor's Metadata on a second connection for the new controller, which tells the
//! election apart from what follows it; the survivors' logs (which the harness keeps) give
//! when each started an election, so a slow round shows whether it took several. Then the
//! killed node restarts on its data and the next round waits until every node lists all
//! three and agrees on the controller, and then `--settle-ms` more.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use tokio::runtime::Runtime;
use vltava_client::connection::Connection;
use vltava_messages::protocol::MetadataRequest;
use vltava_tests::TestNode;
use vltava_tests::cluster::TestCluster;

use crate::stats::{Samples, ms};
use crate::{
    Args, CLIENT_ID, REQUEST_TIMEOUT, already_exists, check_interrupted, create_topic, error_kind,
    settle, start_cluster,
};

/// How long one round may take to create its topic after the kill: far above the issue's
/// 1.5 s target, so that a slow round is measured rather than cut off.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);

/// How the creation of one round went.
#[derive(Debug)]
struct Creation {
    /// Kill to the acknowledgement: the figure.
    created: Duration,
    /// Kill to the start of the attempt that succeeded.
    last_attempt_started: Duration,
    attempts: u32,
    /// The errors of the failed attempts, by kind.
    errors: BTreeMap<String, u32>,
}

/// One round's figures.
#[derive(Debug)]
struct Round {
    killed: u32,
    via: u32,
    /// Kill to the first Metadata of the survivor naming another controller.
    elected: Option<Duration>,
    new_controller: Option<u32>,
    creation: Creation,
    /// The elections the survivors started after the kill, from their logs: (seconds after
    /// the kill, node). More than one means a split or refused vote cost another timeout.
    elections: Vec<(f64, u32)>,
    /// Relaunch to the node's "ready" line.
    restart_ready: Duration,
    /// Relaunch to every node listing all three again.
    restart_listed: Duration,
}

#[derive(Debug)]
pub struct Report {
    rounds: Vec<Round>,
}

pub fn run(rt: &Runtime, args: &Args) -> anyhow::Result<Report> {
    println!(
        "\n== failover: {} rounds of SIGKILL of the controller",
        args.rounds
    );
    let (mut cluster, mut controller) = start_cluster(rt)?;
    let retry = Duration::from_millis(args.retry_ms);
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        check_interrupted()?;
        let survivors: Vec<u32> = (1..=3).filter(|id| *id != controller).collect();
        // Alternate the survivor asked, so that both the new controller and a node that
        // forwards to it take part.
        let via = survivors[round as usize % survivors.len()];
        let via_addr = cluster.node(via).addr.clone();
        let (create_conn, watch_conn) = rt.block_on(async {
            let create = Connection::connect(&via_addr, CLIENT_ID).await?;
            let watch = Connection::connect(&via_addr, CLIENT_ID).await?;
            anyhow::Ok((create, watch))
        })?;
        let topic = format!("failover-{round}");
        let log_marks: Vec<(u32, usize)> = survivors
            .iter()
            .map(|id| (*id, log_len(cluster.node(*id))))
            .collect();
        let killed_wall = seconds_of_day(SystemTime::now());
        let killed_at = Instant::now();
        cluster.node_mut(controller).kill();
        let (created, elected) = rt.block_on(async {
            tokio::join!(
                create_until_done(&create_conn, &via_addr, &topic, killed_at, retry),
                watch_election(&watch_conn, controller, killed_at, retry),
            )
        });
        let created = created.with_context(|| format!("round {round}"))?;
        let elections = elections_since(&cluster, &log_marks, killed_wall);
        if let Some(dir) = &args.log_dir {
            write_logs(&cluster, dir, round)?;
        }
        let relaunched_at = Instant::now();
        let node = cluster.node_mut(controller);
        node.relaunch();
        node.wait_until_ready();
        let restart_ready = relaunched_at.elapsed();
        rt.block_on(settle(&cluster.bootstrap()))?;
        let restart_listed = relaunched_at.elapsed();
        std::thread::sleep(Duration::from_millis(args.settle_ms));
        // Settled again: the controller may have moved during the pause (it should not).
        let next_controller = rt.block_on(settle(&cluster.bootstrap()))?;
        let round_figures = Round {
            killed: controller,
            via,
            elected: elected.map(|(d, _)| d),
            new_controller: elected.map(|(_, id)| id),
            creation: created,
            elections,
            restart_ready,
            restart_listed,
        };
        println!(
            "  round {round:2}: killed {} via {}: elected {} (node {}), created {} after {} \
             attempt(s) {:?}; elections started (s after kill, node) {:?}; restarted: ready {}, \
             listed {}",
            round_figures.killed,
            round_figures.via,
            round_figures.elected.map_or("-".into(), ms),
            round_figures
                .new_controller
                .map_or("-".into(), |n| n.to_string()),
            ms(round_figures.creation.created),
            round_figures.creation.attempts,
            round_figures.creation.errors,
            round_figures.elections,
            ms(round_figures.restart_ready),
            ms(round_figures.restart_listed),
        );
        rounds.push(round_figures);
        controller = next_controller;
    }
    Ok(Report { rounds })
}

/// Creates `topic` through `conn`, retrying retriable errors every `retry`, until it is made
/// or `FAILOVER_BOUND` has passed since `killed_at`.
async fn create_until_done(
    conn: &Connection,
    addr: &str,
    topic: &str,
    killed_at: Instant,
    retry: Duration,
) -> anyhow::Result<Creation> {
    let mut conn = conn.clone();
    let mut attempts = 0;
    let mut errors: BTreeMap<String, u32> = BTreeMap::new();
    loop {
        check_interrupted()?;
        attempts += 1;
        let started = killed_at.elapsed();
        match create_topic(&conn, topic).await {
            Ok(()) => {
                return Ok(Creation {
                    created: killed_at.elapsed(),
                    last_attempt_started: started,
                    attempts,
                    errors,
                });
            }
            // An earlier attempt was made but its answer was lost: the topic exists.
            Err(e) if already_exists(&e) => {
                *errors
                    .entry("TopicAlreadyExists (done)".into())
                    .or_default() += 1;
                return Ok(Creation {
                    created: killed_at.elapsed(),
                    last_attempt_started: started,
                    attempts,
                    errors,
                });
            }
            Err(e) if e.is_retriable() => {
                *errors.entry(error_kind(&e)).or_default() += 1;
                if killed_at.elapsed() >= FAILOVER_BOUND {
                    bail!("no creation within {FAILOVER_BOUND:?} of the kill: last error {e}");
                }
                if conn.is_broken() {
                    conn = Connection::connect(addr, CLIENT_ID).await?;
                }
                tokio::time::sleep(retry).await;
            }
            Err(e) => bail!("creating {topic} failed with a non-retriable error: {e}"),
        }
    }
}

/// Polls `conn`'s Metadata until it names a controller other than `killed`; returns when
/// (since `killed_at`) and which, or `None` if that did not happen within `FAILOVER_BOUND`.
async fn watch_election(
    conn: &Connection,
    killed: u32,
    killed_at: Instant,
    retry: Duration,
) -> Option<(Duration, u32)> {
    let request = MetadataRequest {
        topics: Some(Vec::new()),
    };
    while killed_at.elapsed() < FAILOVER_BOUND && check_interrupted().is_ok() {
        if let Ok(answer) = conn.send(&request, REQUEST_TIMEOUT).await
            && let Some(id) = answer.controller_id.map(|n| n.0)
            && id != killed
        {
            return Some((killed_at.elapsed(), id));
        }
        tokio::time::sleep(retry).await;
    }
    None
}

/// Writes every node's log so far to `dir/round-NN-node-M.log`; the killed node's ends at
/// the kill (a relaunch starts its log afresh).
fn write_logs(cluster: &TestCluster, dir: &std::path::Path, round: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for id in 1..=3 {
        let path = dir.join(format!("round-{round:02}-node-{id}.log"));
        std::fs::write(&path, cluster.node(id).log_text())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// How many log lines `node` has captured so far.
fn log_len(node: &TestNode) -> usize {
    node.log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len()
}

/// Seconds since midnight UTC, the clock of the nodes' log timestamps.
fn seconds_of_day(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() % 86_400.0)
}

/// The elections the survivors started after their log marks: openraft logs "do trigger
/// election" at info when a follower's timeout fires. Lines start with an RFC 3339 UTC
/// timestamp (`2026-12-07T12:31:45.428273Z`); the time of day is read from it.
fn elections_since(
    cluster: &TestCluster,
    marks: &[(u32, usize)],
    killed_wall: f64,
) -> Vec<(f64, u32)> {
    let mut elections = Vec::new();
    for (id, mark) in marks {
        let log = cluster
            .node(*id)
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for line in log.iter().skip(*mark) {
            if !line.contains("do trigger election") {
                continue;
            }
            let Some(time) = line.get(11..26) else {
                continue;
            };
            let mut parts = time.split(':');
            let seconds = (|| {
                let h: f64 = parts.next()?.parse().ok()?;
                let m: f64 = parts.next()?.parse().ok()?;
                let s: f64 = parts.next()?.parse().ok()?;
                Some(h * 3600.0 + m * 60.0 + s)
            })();
            if let Some(seconds) = seconds {
                elections.push((((seconds - killed_wall) * 1000.0).round() / 1000.0, *id));
            }
        }
    }
    elections.sort_by(|a, b| a.0.total_cmp(&b.0));
    elections
}

impl Report {
    pub fn print(&self) {
        let created = Samples::new(self.rounds.iter().map(|r| r.creation.created).collect());
        let elected = Samples::new(self.rounds.iter().filter_map(|r| r.elected).collect());
        let after_election = Samples::new(
            self.rounds
                .iter()
                .filter_map(|r| r.elected.map(|e| r.creation.created.saturating_sub(e)))
                .collect(),
        );
        let last_attempt = Samples::new(
            self.rounds
                .iter()
                .map(|r| r.creation.created - r.creation.last_attempt_started)
                .collect(),
        );
        let ready = Samples::new(self.rounds.iter().map(|r| r.restart_ready).collect());
        let mut by_elections: BTreeMap<usize, u32> = BTreeMap::new();
        for round in &self.rounds {
            *by_elections.entry(round.elections.len()).or_default() += 1;
        }
        let listed = Samples::new(self.rounds.iter().map(|r| r.restart_listed).collect());
        let mut errors: BTreeMap<&str, u32> = BTreeMap::new();
        for round in &self.rounds {
            for (kind, count) in &round.creation.errors {
                *errors.entry(kind).or_default() += count;
            }
        }
        let target = Duration::from_millis(1500);
        println!(
            "\nFailover ({} rounds; nearest-rank p99, so with fewer than 100 rounds p99 is the max)",
            created.len()
        );
        println!("  kill -> first successful creation: {created}");
        println!(
            "    target p99 < 1.5 s: {} ({} of {} rounds at or under 1.5 s)",
            if created.percentile(99.0) < target {
                "met"
            } else {
                "not met"
            },
            created.count_at_most(target),
            created.len()
        );
        if elected.len() > 0 {
            println!("  kill -> survivor's Metadata names a new controller: {elected}");
            println!("  new controller named -> creation acknowledged: {after_election}");
        }
        println!("  duration of the attempt that succeeded: {last_attempt}");
        println!("  failed attempts by error: {errors:?}");
        println!("  rounds by elections started (from the survivors' logs): {by_elections:?}");
        println!("  restart -> ready: {ready}");
        println!("  restart -> listed by every node: {listed}");
    }
}
