//! Partition failover (issue 14): SIGKILL the node leading a partition of an RF 3 topic, then
//! time until an `acks=all` produce to that partition is acknowledged by its new leader.
//!
//! One topic of three partitions (RF 3, default settings: `min.insync.replicas` 2, fsync
//! durability) spreads one leader per node. Each round picks a partition led by a node that is
//! not the controller (`--kill leader`) or the partition the controller leads
//! (`--kill controller`), kills that node, and then, every `--retry-ms`, asks a survivor's
//! Metadata for the partition's leader and sends one `acks=all` record to it over a connection
//! opened before the kill (so no connect is timed), until one is acknowledged by a node other
//! than the one killed. That is what a client sees: the time from the failure to the first
//! acknowledged write on the new leader. The round also notes when a survivor's Metadata first
//! named the new leader. Then the killed node restarts on its data and the next round waits
//! until every partition's ISR holds all three replicas again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::runtime::Runtime;
use vltava_client::ClientError;
use vltava_client::connection::Connection;
use vltava_messages::protocol::{
    Acks, CreateTopicsRequest, MetadataRequest, MetadataResponse, NewTopic, ProducePartition,
    ProduceRequest, ProduceTopic,
};
use vltava_messages::{BatchBuilder, Compression, PartitionId};

use crate::stats::{Samples, ms};
use crate::{
    Args, CLIENT_ID, KillTarget, REQUEST_TIMEOUT, check_interrupted, error_kind, settle,
    start_cluster,
};

/// The topic every round writes to.
const TOPIC: &str = "partition-failover";
/// One partition per node, so each node leads one.
const PARTITIONS: u32 = 3;
/// How long a round may take to get a write acknowledged after the kill: far above the
/// 1 s target, so that a slow round is measured rather than cut off.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);
/// How long the restarted node may take to rejoin every ISR.
const REJOIN_BOUND: Duration = Duration::from_secs(60);
/// How long one produce attempt may wait for its answer: a leader that just took over needs
/// one follower fetch round to move its high watermark, well under this.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(2);

/// One round's figures.
#[derive(Debug)]
struct Round {
    killed: u32,
    partition: u32,
    /// Kill to the first survivor Metadata naming a live leader for the partition.
    leader_named: Option<Duration>,
    /// Kill to the acknowledgement of the first write on the new leader: the figure.
    acknowledged: Duration,
    new_leader: u32,
    attempts: u32,
    errors: BTreeMap<String, u32>,
    /// Relaunch to every partition's ISR holding all three replicas again.
    rejoined: Duration,
}

#[derive(Debug)]
pub struct Report {
    target: KillTarget,
    rounds: Vec<Round>,
}

pub fn run(rt: &Runtime, args: &Args) -> anyhow::Result<Report> {
    println!(
        "\n== partition failover: {} rounds of SIGKILL of a partition leader's node ({})",
        args.rounds,
        match args.kill {
            KillTarget::Leader => "not the controller",
            KillTarget::Controller => "the controller",
        }
    );
    let (mut cluster, _) = start_cluster(rt)?;
    rt.block_on(async {
        let conn = Connection::connect(&cluster.node(1).addr, CLIENT_ID).await?;
        create_topic(&conn).await
    })?;
    rt.block_on(wait_for_full_isr(
        &cluster.bootstrap(),
        &[TOPIC],
        REJOIN_BOUND,
    ))?;
    let retry = Duration::from_millis(args.retry_ms);
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        check_interrupted()?;
        let controller = rt.block_on(settle(&cluster.bootstrap()))?;
        let leaders = rt.block_on(leaders(&cluster.node(controller).addr))?;
        let candidates: Vec<(u32, u32)> = leaders
            .iter()
            .enumerate()
            .filter_map(|(p, l)| l.map(|l| (p as u32, l)))
            .filter(|(_, l)| match args.kill {
                KillTarget::Leader => *l != controller,
                KillTarget::Controller => *l == controller,
            })
            .collect();
        let Some(&(partition, victim)) = candidates.get(round as usize % candidates.len().max(1))
        else {
            bail!(
                "round {round}: no partition is led by {} (leaders {leaders:?}, controller {controller})",
                match args.kill {
                    KillTarget::Leader => "a node other than the controller",
                    KillTarget::Controller => "the controller",
                }
            );
        };
        let survivors: Vec<u32> = (1..=3).filter(|id| *id != victim).collect();
        let connections: BTreeMap<u32, Connection> = rt.block_on(async {
            let mut connections = BTreeMap::new();
            for id in &survivors {
                connections.insert(
                    *id,
                    Connection::connect(&cluster.node(*id).addr, CLIENT_ID).await?,
                );
            }
            anyhow::Ok(connections)
        })?;
        let killed_at = Instant::now();
        cluster.node_mut(victim).kill();
        let outcome = rt.block_on(produce_until_acknowledged(
            &connections,
            &cluster.bootstrap(),
            survivors[round as usize % survivors.len()],
            victim,
            partition,
            round,
            killed_at,
            retry,
        ));
        let outcome = outcome.with_context(|| format!("round {round}"))?;
        let relaunched_at = Instant::now();
        let node = cluster.node_mut(victim);
        node.relaunch();
        node.wait_until_ready();
        rt.block_on(wait_for_full_isr(
            &cluster.bootstrap(),
            &[TOPIC],
            REJOIN_BOUND,
        ))
        .with_context(|| format!("round {round}: node {victim} rejoining"))?;
        let figures = Round {
            killed: victim,
            partition,
            leader_named: outcome.leader_named,
            acknowledged: outcome.acknowledged,
            new_leader: outcome.new_leader,
            attempts: outcome.attempts,
            errors: outcome.errors,
            rejoined: relaunched_at.elapsed(),
        };
        println!(
            "  round {round:2}: killed node {} (leading partition {}): new leader {} named after {}, \
             write acknowledged after {} ({} attempt(s) {:?}); rejoined every ISR {} after relaunch",
            figures.killed,
            figures.partition,
            figures.new_leader,
            figures.leader_named.map_or("-".into(), ms),
            ms(figures.acknowledged),
            figures.attempts,
            figures.errors,
            ms(figures.rejoined),
        );
        rounds.push(figures);
    }
    Ok(Report {
        target: args.kill,
        rounds,
    })
}

/// How a round's writing went.
struct Outcome {
    leader_named: Option<Duration>,
    acknowledged: Duration,
    new_leader: u32,
    attempts: u32,
    errors: BTreeMap<String, u32>,
}

/// Every `retry`: asks `watcher`'s Metadata who leads `partition`, and once a node other than
/// `killed` does, sends it one acks=all record; until one is acknowledged.
#[allow(clippy::too_many_arguments)]
async fn produce_until_acknowledged(
    connections: &BTreeMap<u32, Connection>,
    bootstrap: &[String],
    watcher: u32,
    killed: u32,
    partition: u32,
    round: u32,
    killed_at: Instant,
    retry: Duration,
) -> anyhow::Result<Outcome> {
    let mut connections = connections.clone();
    let mut leader_named = None;
    let mut attempts = 0;
    let mut errors: BTreeMap<String, u32> = BTreeMap::new();
    loop {
        check_interrupted()?;
        if killed_at.elapsed() >= FAILOVER_BOUND {
            bail!("no write acknowledged within {FAILOVER_BOUND:?} of the kill: {errors:?}");
        }
        let leader = match connections[&watcher]
            .send(
                &MetadataRequest {
                    topics: Some(vec![TOPIC.to_owned()]),
                },
                REQUEST_TIMEOUT,
            )
            .await
        {
            Ok(answer) => leader_of(&answer, partition),
            Err(e) => {
                *errors
                    .entry(format!("metadata: {}", error_kind(&e)))
                    .or_default() += 1;
                None
            }
        };
        if let Some(leader) = leader.filter(|l| *l != killed) {
            leader_named.get_or_insert_with(|| killed_at.elapsed());
            attempts += 1;
            match produce_one(&connections[&leader], partition, round, attempts).await {
                Ok(()) => {
                    return Ok(Outcome {
                        leader_named,
                        acknowledged: killed_at.elapsed(),
                        new_leader: leader,
                        attempts,
                        errors,
                    });
                }
                Err(e) if e.is_retriable() => {
                    *errors.entry(error_kind(&e)).or_default() += 1;
                    if connections[&leader].is_broken() {
                        let addr = &bootstrap[leader as usize - 1];
                        connections.insert(leader, Connection::connect(addr, CLIENT_ID).await?);
                    }
                }
                Err(e) => bail!("producing failed with a non-retriable error: {e}"),
            }
        }
        tokio::time::sleep(retry).await;
    }
}

/// One acks=all record to `partition` of the topic over `conn`.
async fn produce_one(
    conn: &Connection,
    partition: u32,
    round: u32,
    attempt: u32,
) -> Result<(), ClientError> {
    let mut batch = BatchBuilder::new(Compression::None);
    let value = format!("round-{round}-attempt-{attempt}");
    batch.push(None, Some(value.as_bytes()), &[], 1_000);
    let request = ProduceRequest {
        acks: Acks::All,
        timeout_ms: PRODUCE_TIMEOUT.as_millis() as u32,
        topics: vec![ProduceTopic {
            name: TOPIC.to_owned(),
            partitions: vec![ProducePartition {
                partition: PartitionId(partition),
                current_leader_epoch: None,
                records: batch.build(),
            }],
        }],
    };
    let answer = conn.send(&request, PRODUCE_TIMEOUT).await?;
    match answer
        .topics
        .into_iter()
        .flat_map(|t| t.partitions)
        .find_map(|p| p.error)
    {
        Some(error) => Err(ClientError::Server(error)),
        None => Ok(()),
    }
}

fn leader_of(answer: &MetadataResponse, partition: u32) -> Option<u32> {
    answer
        .topics
        .iter()
        .find(|t| t.name == TOPIC)
        .and_then(|t| t.partitions.get(partition as usize))
        .and_then(|p| p.leader)
        .map(|n| n.0)
}

/// Every partition's leader, as `addr` sees it.
async fn leaders(addr: &str) -> anyhow::Result<Vec<Option<u32>>> {
    let conn = Connection::connect(addr, CLIENT_ID).await?;
    let answer = conn
        .send(
            &MetadataRequest {
                topics: Some(vec![TOPIC.to_owned()]),
            },
            REQUEST_TIMEOUT,
        )
        .await?;
    Ok((0..PARTITIONS).map(|p| leader_of(&answer, p)).collect())
}

/// Waits until every node answers with every partition of `topics` led and its ISR holding all
/// three replicas, for at most `bound`. The group failover scenario uses it too, with
/// `__consumer_offsets` among the topics.
pub(crate) async fn wait_for_full_isr(
    addrs: &[String],
    topics: &[&str],
    bound: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + bound;
    let mut last = String::new();
    loop {
        check_interrupted()?;
        let mut full = true;
        for addr in addrs {
            let answer = match Connection::connect(addr, CLIENT_ID).await {
                Ok(conn) => conn
                    .send(
                        &MetadataRequest {
                            topics: Some(topics.iter().map(|t| (*t).to_owned()).collect()),
                        },
                        REQUEST_TIMEOUT,
                    )
                    .await
                    .ok(),
                Err(_) => None,
            };
            let ok = answer.as_ref().is_some_and(|a| {
                topics.iter().all(|name| {
                    a.topics.iter().any(|t| {
                        t.name == *name
                            && !t.partitions.is_empty()
                            && t.partitions
                                .iter()
                                .all(|p| p.leader.is_some() && p.in_sync_replicas.len() == 3)
                    })
                })
            });
            if !ok {
                last = format!("{addr}: {answer:?}");
                full = false;
                break;
            }
        }
        if full {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the ISRs did not fill within {bound:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_topic(conn: &Connection) -> anyhow::Result<()> {
    let request = CreateTopicsRequest {
        topics: vec![NewTopic {
            name: TOPIC.to_owned(),
            partitions: Some(PARTITIONS),
            replication_factor: Some(3),
            configs: Default::default(),
        }],
        timeout_ms: REQUEST_TIMEOUT.as_millis() as u32,
        validate_only: false,
    };
    let answer = conn.send(&request, REQUEST_TIMEOUT).await?;
    if let Some(error) = answer.topics.into_iter().find_map(|t| t.error) {
        bail!("creating {TOPIC}: {} {}", error.name, error.message);
    }
    Ok(())
}

impl Report {
    pub fn print(&self) {
        let acknowledged = Samples::new(self.rounds.iter().map(|r| r.acknowledged).collect());
        let named = Samples::new(self.rounds.iter().filter_map(|r| r.leader_named).collect());
        let rejoined = Samples::new(self.rounds.iter().map(|r| r.rejoined).collect());
        let mut errors: BTreeMap<&str, u32> = BTreeMap::new();
        for round in &self.rounds {
            for (kind, count) in &round.errors {
                *errors.entry(kind).or_default() += count;
            }
        }
        let target = match self.target {
            KillTarget::Leader => Duration::from_secs(1),
            KillTarget::Controller => Duration::from_secs(2),
        };
        println!(
            "\nPartition failover, {} ({} rounds; nearest-rank p99, so with fewer than 100 rounds p99 is the max)",
            match self.target {
                KillTarget::Leader => "leader's node killed (not the controller)",
                KillTarget::Controller => "the controller's node killed (it leads a partition)",
            },
            acknowledged.len()
        );
        println!("  kill -> first acks=all write acknowledged by the new leader: {acknowledged}");
        println!(
            "    target p99 < {} ms: {} ({} of {} rounds at or under)",
            target.as_millis(),
            if acknowledged.percentile(99.0) < target {
                "met"
            } else {
                "not met"
            },
            acknowledged.count_at_most(target),
            acknowledged.len()
        );
        if named.len() > 0 {
            println!("  kill -> a survivor's Metadata names the new leader: {named}");
        }
        println!("  failed attempts by error: {errors:?}");
        println!("  relaunch -> every ISR full again: {rejoined}");
    }
}
