//! Waiting for the cluster to settle: every partition led by a node other than the ones a
//! fault took away, producers acknowledged again, and after a heal, convergence (every node
//! agrees on one leader per partition, that node alone acts as its leader, and every replica
//! is in sync).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use vltava_messages::PartitionId;
use vltava_tests::cluster::TestCluster;
use vltava_tests::history::History;

use crate::{FAILOVER_BOUND, PARTITIONS, TOPIC, metadata};

/// How long the cluster may take to converge after a fault is healed. A healed follower
/// rejoins the ISR once it has caught up, and a follower that was cut off may first have to
/// leave it, after `replica.lag.time.max.ms` (10 s by default); a restarted node also needs its
/// start-up (up to 30 s, `START_TIMEOUT`, though it takes about a second). Twice the lag time
/// plus a failover covers both on a loaded machine.
pub(crate) const CONVERGENCE_BOUND: Duration = Duration::from_secs(40);

/// One partition of `TOPIC` as a node's metadata shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartitionView {
    pub leader: Option<u32>,
    pub epoch: u32,
    pub isr: BTreeSet<u32>,
}

/// Every partition of `TOPIC` as node `addr` sees it, with the controller it names; `None` if
/// it does not answer or does not know the topic.
pub(crate) async fn view(addr: &str) -> Option<(Option<u32>, Vec<PartitionView>)> {
    let answer = metadata(addr).await.ok()?;
    let topic = answer.topics.iter().find(|t| t.name == TOPIC)?;
    let partitions: Vec<PartitionView> = topic
        .partitions
        .iter()
        .map(|p| PartitionView {
            leader: p.leader.map(|n| n.0),
            epoch: p.leader_epoch.0,
            isr: p.in_sync_replicas.iter().map(|n| n.0).collect(),
        })
        .collect();
    (partitions.len() == PARTITIONS as usize)
        .then_some((answer.controller_id.map(|n| n.0), partitions))
}

/// The view of the first node among `observers` that answers, within `FAILOVER_BOUND`.
pub(crate) fn view_from(
    rt: &tokio::runtime::Runtime,
    cluster: &TestCluster,
    observers: &[u32],
) -> (Option<u32>, Vec<PartitionView>) {
    let deadline = Instant::now() + FAILOVER_BOUND;
    loop {
        for id in observers {
            if let Some(seen) = rt.block_on(view(&cluster.node(*id).addr)) {
                return seen;
            }
        }
        assert!(
            Instant::now() < deadline,
            "none of nodes {observers:?} described {TOPIC} within {FAILOVER_BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until node `observer` sees every partition led by a node not in `gone`, and a
/// controller not in `gone` (when `controller_too`); returns how long it took.
pub(crate) fn wait_for_leaders_avoiding(
    rt: &tokio::runtime::Runtime,
    cluster: &TestCluster,
    observer: u32,
    gone: &[u32],
    controller_too: bool,
) -> Duration {
    let started = Instant::now();
    let deadline = started + FAILOVER_BOUND;
    loop {
        let seen = rt.block_on(view(&cluster.node(observer).addr));
        if let Some((controller, partitions)) = &seen
            && partitions
                .iter()
                .all(|p| p.leader.is_some_and(|l| !gone.contains(&l)))
            && (!controller_too || controller.is_some_and(|c| !gone.contains(&c)))
        {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "node {observer} still sees leaders or the controller among {gone:?} after \
             {FAILOVER_BOUND:?}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each partition's acknowledged count now, to pass to `wait_for_acknowledgements`.
pub(crate) fn acknowledged_counts(history: &History) -> Vec<usize> {
    (0..PARTITIONS)
        .map(|p| history.acknowledged_count(TOPIC, PartitionId(p)))
        .collect()
}

/// Waits until every partition has more writes acknowledged than `before` (counted at
/// `since`, when the fault began): the producers carry on. Returns the time from `since`.
pub(crate) fn wait_for_acknowledgements(
    cluster: &TestCluster,
    history: &History,
    before: &[usize],
    since: Instant,
    what: &str,
) -> Duration {
    let deadline = Instant::now() + FAILOVER_BOUND;
    loop {
        let now = acknowledged_counts(history);
        let stalled: Vec<u32> = (0..PARTITIONS)
            .filter(|p| now[*p as usize] <= before[*p as usize])
            .collect();
        if stalled.is_empty() {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: nothing acknowledged on partitions {stalled:?} for {FAILOVER_BOUND:?}\n{}",
            replication_state(cluster)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What is wrong with the cluster now, or `None` once it has converged: every node answers
/// metadata and they agree on each partition's leader, epoch and ISR; every partition has a
/// leader and all three replicas in sync; and each node's own partition actors agree: the
/// leader's acts as leader, the others' as followers (so no deposed leader still thinks it
/// leads).
fn divergence(rt: &tokio::runtime::Runtime, cluster: &TestCluster) -> Option<String> {
    let mut views = Vec::new();
    for id in 1..=cluster.nodes.len() as u32 {
        match rt.block_on(view(&cluster.node(id).addr)) {
            Some((_, partitions)) => views.push(partitions),
            None => return Some(format!("node {id} does not describe {TOPIC}")),
        }
    }
    if let Some((index, other)) = views.iter().enumerate().find(|(_, v)| **v != views[0]) {
        return Some(format!(
            "node 1 and node {} disagree: {:?} vs {other:?}",
            index + 1,
            views[0]
        ));
    }
    for (partition, p) in views[0].iter().enumerate() {
        let Some(leader) = p.leader else {
            return Some(format!("partition {partition} has no leader"));
        };
        if p.isr.len() != cluster.nodes.len() {
            return Some(format!(
                "partition {partition} (leader {leader}) has ISR {:?}",
                p.isr
            ));
        }
    }
    for id in 1..=cluster.nodes.len() as u32 {
        let (status, body) = cluster.node(id).admin_get("/partitions");
        if status != 200 {
            return Some(format!("node {id}'s /partitions answered {status}"));
        }
        let json: serde_json::Value = match serde_json::from_str(&body) {
            Ok(json) => json,
            Err(e) => return Some(format!("node {id}'s /partitions: {e}")),
        };
        let rows = json["partitions"].as_array().cloned().unwrap_or_default();
        for row in rows.iter().filter(|r| r["topic"] == TOPIC) {
            let partition = row["partition"].as_u64().unwrap_or(u64::MAX);
            let Some(p) = views[0].get(partition as usize) else {
                return Some(format!("node {id} has an unknown partition {row}"));
            };
            let expected = if p.leader == Some(id) {
                "leader"
            } else {
                "follower"
            };
            if row["role"] != expected {
                return Some(format!(
                    "node {id}'s partition {partition} acts as {} (leader {:?}, epoch {})",
                    row["role"], p.leader, p.epoch
                ));
            }
        }
    }
    None
}

/// Waits until the cluster has converged (see `divergence`); returns how long it took, or
/// panics with what was still wrong after `CONVERGENCE_BOUND`.
pub(crate) fn wait_converged(
    rt: &tokio::runtime::Runtime,
    cluster: &TestCluster,
    what: &str,
) -> Duration {
    let started = Instant::now();
    let deadline = started + CONVERGENCE_BOUND;
    loop {
        let Some(wrong) = divergence(rt, cluster) else {
            return started.elapsed();
        };
        assert!(
            Instant::now() < deadline,
            "{what}: the cluster did not converge within {CONVERGENCE_BOUND:?}: {wrong}\n{}",
            replication_state(cluster)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each node's replicas of `TOPIC` (role, epoch, offsets, ISR as the replica knows it, and the
/// leader's view of its followers) and its replica fetchers (which partitions they fetch, their
/// last error), from the admin endpoints: what a failed convergence shows to explain itself.
pub(crate) fn replication_state(cluster: &TestCluster) -> String {
    let mut out = String::new();
    for (index, node) in cluster.nodes.iter().enumerate() {
        let id = index + 1;
        let (_, body) = node.admin_get("/partitions");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        for row in json["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["topic"] == TOPIC)
        {
            out.push_str(&format!(
                "node {id} {TOPIC}/{}: role {} leader {} epoch {} log end {} high watermark {} \
                 isr {} in_isr {} followers {}\n",
                row["partition"],
                row["role"],
                row["leader"],
                row["leader_epoch"],
                row["log_end_offset"],
                row["high_watermark"],
                row["isr"],
                row["in_isr"],
                row["followers"]
            ));
        }
        let (_, body) = node.admin_get("/actors");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let actors = json["actors"].as_array().cloned().unwrap_or_default();
        for actor in actors.iter().filter(|a| a["kind"] == "ReplicaFetcher") {
            let Some(actor_id) = actor["id"].as_str() else {
                continue;
            };
            let (_, body) = node.admin_get(&format!("/actors/{actor_id}"));
            let detail: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let state = &detail["state"];
            out.push_str(&format!(
                "node {id} {actor_id}: status {} partitions {} fetch_requests {} fetch_errors {} \
                 last_error {}\n",
                detail["status"],
                state["partitions"],
                state["fetch_requests"],
                state["fetch_errors"],
                state["last_error"]
            ));
        }
    }
    out
}
