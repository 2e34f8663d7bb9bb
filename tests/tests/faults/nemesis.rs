//! The nemesis (issue 14): after a quiet period, faults chosen at random from a seeded
//! generator, one at a time, for `VLTAVA_NEMESIS_SECS`: SIGKILL of a partition's leader, of
//! the controller, of any node or of two nodes at once, then a restart; SIGSTOP of a node,
//! then SIGCONT; a node cut off from both others, or two nodes from each other only, then
//! healed; an operator's controlled leader move (`elect-leader` to another in-sync replica)
//! with the old or the new leader SIGKILLed while it runs, then a restart. Each fault lasts a
//! random time (some pauses shorter than a lease, some longer), and the cluster must converge within `CONVERGENCE_BOUND` after each heal. The history
//! (every client event, with the faults as notes among them) and the verdict, with the seed,
//! the throughput and the produce latency of the quiet period and of the nemesis, are written
//! to `VLTAVA_FAULT_OUT/nemesis`.

use std::collections::BTreeMap;
use std::time::Duration;

use vltava_tests::netcut::NetCut;

use crate::converge::{view_from, wait_converged};
use crate::kills::{led_by, spread};
use crate::netsplit::isolate;
use crate::workload::Load;
use crate::{FAILOVER_BOUND, Rng, TOPIC, runtime, serial, settings};

/// One fault the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// SIGKILL of the leader of a random partition.
    KillLeader,
    /// SIGKILL of the active controller.
    KillController,
    /// SIGKILL of a random node.
    KillAny,
    /// SIGKILL of two random nodes at once: writes stop until one is back.
    KillTwo,
    /// SIGSTOP of a random node.
    Pause,
    /// A random node cut off from both others.
    Isolate,
    /// Two random nodes cut off from each other only.
    Split,
    /// A random partition's leadership moved to another in-sync replica (ElectLeaders, as
    /// `vltava partition elect-leader` sends it) and, 0 to 100 ms after it was asked for,
    /// SIGKILL of the old leader or of the new one: the hand-over interrupted.
    MoveThenKill,
}

/// The faults to draw from, each as often as it should come: single-node faults more often
/// than the loss of two nodes, which stops every partition.
const FAULTS: [Fault; 13] = [
    Fault::KillLeader,
    Fault::KillLeader,
    Fault::KillController,
    Fault::KillController,
    Fault::KillAny,
    Fault::KillTwo,
    Fault::Pause,
    Fault::Pause,
    Fault::Isolate,
    Fault::Isolate,
    Fault::Split,
    Fault::MoveThenKill,
    Fault::MoveThenKill,
];

/// How long a fault lasts, in ms: from about a lease (2 s) to several, so that pauses
/// sometimes end before the controller fences the node and sometimes after.
const FAULT_MS: std::ops::Range<u64> = 500..8_000;
/// The time between a convergence and the next fault, in ms.
const GAP_MS: std::ops::Range<u64> = 0..3_000;

/// The topic's partitions and the controller, as the first node that answers sees them, once
/// a controller is known. Convergence is judged on the partitions alone, and the controller
/// may be between two terms just after it: a node that was cut off may have raised its Raft
/// term while it was alone (openraft 0.9 has no pre-vote), and its return then makes the
/// controller step down for an election (a run with seed 1796698647563889361 met this soon
/// after an isolated node was healed). Bounded by `FAILOVER_BOUND`.
fn view_with_controller(
    rt: &tokio::runtime::Runtime,
    cluster: &vltava_tests::cluster::TestCluster,
) -> (u32, Vec<crate::converge::PartitionView>) {
    let deadline = std::time::Instant::now() + FAILOVER_BOUND;
    loop {
        if let (Some(controller), partitions) = view_from(rt, cluster, &[1, 2, 3]) {
            return (controller, partitions);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no node named a controller within {FAILOVER_BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A seeded run of random faults under load; see the module doc.
#[test]
#[ignore = "slow fault suite: run with --ignored"]
fn a_seeded_nemesis_loses_nothing_and_the_cluster_converges_after_every_fault() {
    let _serial = serial();
    let settings = settings();
    let mut rng = Rng(settings.seed);
    eprintln!(
        "nemesis seed {} (VLTAVA_NEMESIS_SEED repeats it)",
        settings.seed
    );
    let mut cluster = vltava_tests::cluster::TestCluster::start(3, &[]);
    let rt = runtime();
    let load = Load::start(&rt, &cluster, "nemesis");
    load.run(&rt, &mut cluster, |cluster, load| {
        let net = NetCut::new();
        load.note(&format!(
            "nemesis seed {}: a quiet {:?}, then faults for {:?}",
            settings.seed, settings.quiet, settings.nemesis
        ));
        let quiet_from = load.elapsed();
        std::thread::sleep(settings.quiet);
        let nemesis_from = load.elapsed();
        let mut counts: BTreeMap<Fault, u32> = BTreeMap::new();
        let mut converged = Vec::new();
        while load.elapsed() - nemesis_from < settings.nemesis {
            let fault = *rng.pick(&FAULTS);
            let hold = Duration::from_millis(rng.below(FAULT_MS));
            *counts.entry(fault).or_default() += 1;
            let (controller, partitions) = view_with_controller(&rt, cluster);
            let any = 1 + rng.below(0..3) as u32;
            let second = 1 + (any + rng.below(0..2) as u32) % 3;
            match fault {
                Fault::KillLeader | Fault::KillController | Fault::KillAny => {
                    let victim = match fault {
                        Fault::KillLeader => {
                            let partition = rng.below(0..partitions.len() as u64) as usize;
                            partitions[partition]
                                .leader
                                .expect("a converged cluster has a leader for every partition")
                        }
                        Fault::KillController => controller,
                        _ => any,
                    };
                    load.note(&format!(
                        "{fault:?}: SIGKILL node {victim} (controller {controller}, leader of \
                         partitions {:?}) for {hold:?}",
                        led_by(&partitions, victim)
                    ));
                    cluster.node_mut(victim).kill();
                    std::thread::sleep(hold);
                    load.restart(cluster, victim);
                    load.note(&format!("node {victim} restarted"));
                }
                Fault::KillTwo => {
                    load.note(&format!(
                        "{fault:?}: SIGKILL nodes {any} and {second} (controller {controller}) \
                         for {hold:?}"
                    ));
                    cluster.node_mut(any).kill();
                    cluster.node_mut(second).kill();
                    std::thread::sleep(hold);
                    // Restarted together: a member is ready only once the quorum has formed.
                    for id in [any, second] {
                        load.relaunch(cluster, id);
                    }
                    for id in [any, second] {
                        cluster.node_mut(id).wait_until_ready();
                    }
                    load.note(&format!("nodes {any} and {second} restarted"));
                }
                Fault::Pause => {
                    load.note(&format!(
                        "{fault:?}: SIGSTOP node {any} (controller {controller}, leader of \
                         partitions {:?}) for {hold:?}",
                        led_by(&partitions, any)
                    ));
                    cluster.node(any).pause();
                    std::thread::sleep(hold);
                    cluster.node(any).resume();
                    load.note(&format!("node {any} resumed"));
                }
                Fault::Isolate => {
                    load.note(&format!(
                        "{fault:?}: node {any} (controller {controller}, leader of partitions \
                         {:?}) cut off from both others for {hold:?}",
                        led_by(&partitions, any)
                    ));
                    isolate(&net, cluster, any);
                    std::thread::sleep(hold);
                    net.heal();
                    load.note("healed");
                }
                Fault::Split => {
                    load.note(&format!(
                        "{fault:?}: nodes {any} and {second} cut off from each other only \
                         (controller {controller}) for {hold:?}"
                    ));
                    net.cut(cluster.peer_address(any), cluster.peer_address(second));
                    std::thread::sleep(hold);
                    net.heal();
                    load.note("healed");
                }
                Fault::MoveThenKill => {
                    let partition = rng.below(0..partitions.len() as u64) as usize;
                    let view = &partitions[partition];
                    let from = view
                        .leader
                        .expect("a converged cluster has a leader for every partition");
                    let others: Vec<u32> =
                        view.isr.iter().copied().filter(|n| *n != from).collect();
                    // A converged cluster's ISR is whole; were it not, the move is to itself.
                    let to = if others.is_empty() {
                        from
                    } else {
                        *rng.pick(&others)
                    };
                    let victim = if rng.below(0..2) == 0 { from } else { to };
                    let delay = Duration::from_millis(rng.below(0..100));
                    load.note(&format!(
                        "{fault:?}: partition {partition} elected from node {from} to node {to}, \
                         SIGKILL node {victim} {delay:?} after asking (controller {controller}) \
                         for {hold:?}"
                    ));
                    let bootstrap = cluster.bootstrap();
                    let election = rt.spawn(async move {
                        let admin = vltava_client::admin::Admin::new(
                            vltava_client::Cluster::connect(&bootstrap, "nemesis-admin").await?,
                        );
                        admin
                            .elect_leader(TOPIC, partition as u32, to)
                            .await
                            .map(|epoch| epoch.0)
                    });
                    std::thread::sleep(delay);
                    cluster.node_mut(victim).kill();
                    // The election's answer, whichever it is: a move cut short by the kill may
                    // fail (retriably) or end after it; only the history decides the verdict.
                    let answered =
                        rt.block_on(async { tokio::time::timeout(FAILOVER_BOUND, election).await });
                    load.note(&format!(
                        "election of partition {partition} answered: {answered:?}"
                    ));
                    std::thread::sleep(hold);
                    load.restart(cluster, victim);
                    load.note(&format!("node {victim} restarted"));
                }
            }
            let took = wait_converged(&rt, cluster, &format!("after {fault:?}"));
            load.note(&format!("converged in {took:?}"));
            converged.push(took);
            std::thread::sleep(Duration::from_millis(rng.below(GAP_MS)));
        }
        let nemesis_to = load.elapsed();
        drop(net);
        let quiet = load.figures(quiet_from, nemesis_from);
        let nemesis = load.figures(nemesis_from, nemesis_to);
        vec![
            format!(
                "faults injected over {:?}: {counts:?}",
                nemesis_to - nemesis_from
            ),
            format!("converged after each fault: {}", spread(&converged)),
            format!("quiet period ({:?}): {quiet}", nemesis_from - quiet_from),
            format!(
                "during the nemesis ({:?}): {nemesis}",
                nemesis_to - nemesis_from
            ),
        ]
    });
}
