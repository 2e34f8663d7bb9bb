//! SIGKILL under load, round after round (issue 14): of a node that leads partitions, and of
//! the active controller (made to lead partitions too). Each round kills the node, waits for
//! its partitions (and the controller) to move to the other two and for every partition to
//! acknowledge writes again, restarts it, and waits for the cluster to converge; the run's
//! end (`workload`) then decides whether anything acknowledged was lost, duplicated,
//! reordered or rewritten, and whether the group committed the end of every partition.

use std::time::{Duration, Instant};

use vltava_client::{Admin, Cluster};
use vltava_tests::cluster::TestCluster;

use crate::converge::{
    PartitionView, acknowledged_counts, view_from, wait_converged, wait_for_acknowledgements,
    wait_for_leaders_avoiding,
};
use crate::workload::Load;
use crate::{FAILOVER_BOUND, PARTITIONS, TOPIC, runtime, serial, settings};

/// Which node a round kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    /// The leader of partition `round % PARTITIONS`.
    Leader,
    /// The active controller, after it was made to lead a partition if it led none.
    Controller,
}

/// `settings().rounds` rounds of SIGKILL of a partition's leader, then a restart, under two
/// idempotent acks=all producers and a consumer group.
#[test]
#[ignore = "slow fault suite: run with --ignored"]
fn a_leader_killed_round_after_round_loses_nothing() {
    kill_rounds("kill-leader", Victim::Leader);
}

/// `settings().rounds` rounds of SIGKILL of the active controller (also a leader of
/// partitions), then a restart, under the same load.
#[test]
#[ignore = "slow fault suite: run with --ignored"]
fn the_controller_killed_round_after_round_loses_nothing() {
    kill_rounds("kill-controller", Victim::Controller);
}

/// The partitions node `node` leads in `partitions`.
pub(crate) fn led_by(partitions: &[PartitionView], node: u32) -> Vec<u32> {
    (0..PARTITIONS)
        .filter(|p| partitions[*p as usize].leader == Some(node))
        .collect()
}

/// A node of the three other than `node`.
pub(crate) fn other_than(node: u32) -> u32 {
    if node == 1 { 2 } else { 1 }
}

/// Makes node `node` lead a partition if it leads none: moves the first partition it is in
/// sync for to it (ElectLeaders), retrying while the cluster refuses, within
/// `FAILOVER_BOUND`.
pub(crate) fn ensure_leads(
    rt: &tokio::runtime::Runtime,
    cluster: &TestCluster,
    node: u32,
    partitions: &[PartitionView],
) {
    if !led_by(partitions, node).is_empty() {
        return;
    }
    let partition = (0..PARTITIONS)
        .find(|p| partitions[*p as usize].isr.contains(&node))
        .expect("a node of a converged cluster is in every ISR");
    rt.block_on(async {
        let admin = Admin::new(
            Cluster::connect(&cluster.bootstrap(), "fault-admin")
                .await
                .expect("a live node"),
        );
        let deadline = Instant::now() + FAILOVER_BOUND;
        loop {
            match admin.elect_leader(TOPIC, partition, node).await {
                Ok(_) => return,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "moving partition {partition} to node {node}: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// p50 and max of `times`, as a phrase.
pub(crate) fn spread(times: &[Duration]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let max = sorted.last().copied().unwrap_or_default();
    format!(
        "p50 {} ms, max {} ms over {}",
        p50.as_millis(),
        max.as_millis(),
        sorted.len()
    )
}

fn kill_rounds(name: &str, kind: Victim) {
    let _serial = serial();
    let settings = settings();
    let mut cluster = TestCluster::start(3, &[]);
    let rt = runtime();
    let load = Load::start(&rt, &cluster, name);
    load.run(&rt, &mut cluster, |cluster, load| {
        let mut carried_on = Vec::new();
        let mut converged = Vec::new();
        for round in 0..settings.rounds {
            let (controller, partitions) = view_from(&rt, cluster, &[1, 2, 3]);
            let victim = match kind {
                Victim::Leader => partitions[(round % PARTITIONS) as usize]
                    .leader
                    .expect("a converged cluster has a leader for every partition"),
                Victim::Controller => {
                    let controller = controller.expect("a converged cluster has a controller");
                    ensure_leads(&rt, cluster, controller, &partitions);
                    controller
                }
            };
            let (_, partitions) = view_from(&rt, cluster, &[1, 2, 3]);
            let before = acknowledged_counts(&load.history);
            load.note(&format!(
                "round {round}: SIGKILL node {victim} (controller {controller:?}), leader of \
                 partitions {:?}",
                led_by(&partitions, victim)
            ));
            cluster.node_mut(victim).kill();
            let killed_at = Instant::now();
            let moved = wait_for_leaders_avoiding(
                &rt,
                cluster,
                other_than(victim),
                &[victim],
                kind == Victim::Controller,
            );
            let acknowledged = wait_for_acknowledgements(
                cluster,
                &load.history,
                &before,
                killed_at,
                &format!("round {round}, node {victim} killed"),
            );
            load.note(&format!(
                "round {round}: partitions moved after {moved:?}; every partition acknowledged \
                 again {acknowledged:?} after the kill"
            ));
            carried_on.push(acknowledged);
            load.restart(cluster, victim);
            let took = wait_converged(&rt, cluster, &format!("round {round}: node {victim} back"));
            load.note(&format!(
                "round {round}: node {victim} restarted; converged in {took:?}"
            ));
            converged.push(took);
        }
        vec![
            format!(
                "{} rounds of SIGKILL ({kind:?}); every partition acknowledged again after a \
                 kill: {}",
                settings.rounds,
                spread(&carried_on)
            ),
            format!("converged after a restart: {}", spread(&converged)),
        ]
    });
}
