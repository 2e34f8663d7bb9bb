//! Network partitions under load (issue 14), with iptables DROP rules on loopback between the
//! nodes' peer ports (`vltava_tests::netcut`: a chain of the test's own, removed when the
//! `NetCut` is dropped, also when the test panics; clients still reach every node): a leader
//! cut off from both others, the controller cut off from both others, and an asymmetric split
//! (the controller and one leader cannot reach each other, both still reach the third node).
//! Each is healed, and the cluster must converge within `CONVERGENCE_BOUND`; the run's end
//! (`workload`) then lets the history checker decide.

use std::time::{Duration, Instant};

use vltava_tests::cluster::TestCluster;
use vltava_tests::netcut::NetCut;

use crate::converge::{
    acknowledged_counts, view_from, wait_converged, wait_for_acknowledgements,
    wait_for_leaders_avoiding,
};
use crate::kills::{led_by, spread};
use crate::workload::Load;
use crate::{runtime, serial};

/// How long a cut lasts past the failover it causes: long enough that the cut node's lease
/// (2 s) has surely run out and its replicas have fallen behind, so that the heal exercises a
/// deposed leader rejoining as a follower.
const CUT_HOLD: Duration = Duration::from_secs(4);

/// Drops all traffic between node `node` and the other two nodes' peer ports.
pub(crate) fn isolate(net: &NetCut, cluster: &TestCluster, node: u32) {
    for other in (1..=cluster.nodes.len() as u32).filter(|o| *o != node) {
        net.cut(cluster.peer_address(node), cluster.peer_address(other));
    }
}

/// Isolates a leader that is not the controller, then the controller, then splits the
/// controller from one other leader only; heals each and waits for convergence.
#[test]
#[ignore = "slow fault suite: run with --ignored"]
fn network_partitions_heal_with_nothing_lost_and_the_cluster_converging() {
    let _serial = serial();
    let mut cluster = TestCluster::start(3, &[]);
    let rt = runtime();
    let load = Load::start(&rt, &cluster, "netsplit");
    load.run(&rt, &mut cluster, |cluster, load| {
        let net = NetCut::new();
        let mut converged = Vec::new();

        // A leader cut off from both others: its partitions move once its lease is out, and
        // the producers follow them (a client still reaches it, and it refuses writes).
        let (controller, partitions) = view_from(&rt, cluster, &[1, 2, 3]);
        let controller = controller.expect("a converged cluster has a controller");
        let leader = (1..=3)
            .find(|n| *n != controller && !led_by(&partitions, *n).is_empty())
            .expect("a node other than the controller leads partitions");
        let before = acknowledged_counts(&load.history);
        load.note(&format!(
            "isolating node {leader}, leader of partitions {:?} (controller {controller})",
            led_by(&partitions, leader)
        ));
        isolate(&net, cluster, leader);
        let cut_at = Instant::now();
        let observer = (1..=3).find(|n| *n != leader).expect("three nodes");
        let moved = wait_for_leaders_avoiding(&rt, cluster, observer, &[leader], false);
        let acknowledged =
            wait_for_acknowledgements(cluster, &load.history, &before, cut_at, "a leader isolated");
        load.note(&format!(
            "partitions moved after {moved:?}; every partition acknowledged again \
             {acknowledged:?} after the cut"
        ));
        std::thread::sleep(CUT_HOLD);
        net.heal();
        let took = wait_converged(&rt, cluster, "a leader's isolation healed");
        load.note(&format!("healed; converged in {took:?}"));
        converged.push(took);

        // The controller cut off from both others: the two elect a new one, which moves the
        // old one's partitions.
        let (controller, partitions) = view_from(&rt, cluster, &[1, 2, 3]);
        let controller = controller.expect("a converged cluster has a controller");
        let before = acknowledged_counts(&load.history);
        load.note(&format!(
            "isolating the controller, node {controller}, leader of partitions {:?}",
            led_by(&partitions, controller)
        ));
        isolate(&net, cluster, controller);
        let cut_at = Instant::now();
        let observer = (1..=3).find(|n| *n != controller).expect("three nodes");
        let moved = wait_for_leaders_avoiding(&rt, cluster, observer, &[controller], true);
        let acknowledged = wait_for_acknowledgements(
            cluster,
            &load.history,
            &before,
            cut_at,
            "the controller isolated",
        );
        load.note(&format!(
            "partitions and controller moved after {moved:?}; every partition acknowledged \
             again {acknowledged:?} after the cut"
        ));
        std::thread::sleep(CUT_HOLD);
        net.heal();
        let took = wait_converged(&rt, cluster, "the controller's isolation healed");
        load.note(&format!("healed; converged in {took:?}"));
        converged.push(took);

        // Asymmetric: the controller and another node cannot reach each other, both reach the
        // third. Writes go on through the whole split.
        let (controller, partitions) = view_from(&rt, cluster, &[1, 2, 3]);
        let controller = controller.expect("a converged cluster has a controller");
        let other = (1..=3)
            .filter(|n| *n != controller)
            .max_by_key(|n| led_by(&partitions, *n).len())
            .expect("three nodes");
        load.note(&format!(
            "splitting the controller, node {controller}, from node {other} (leader of \
             partitions {:?}) only",
            led_by(&partitions, other)
        ));
        net.cut(
            cluster.peer_address(controller),
            cluster.peer_address(other),
        );
        std::thread::sleep(CUT_HOLD);
        let before = acknowledged_counts(&load.history);
        let counted_at = Instant::now();
        let acknowledged =
            wait_for_acknowledgements(cluster, &load.history, &before, counted_at, "split");
        load.note(&format!(
            "{CUT_HOLD:?} into the split every partition acknowledged again within \
             {acknowledged:?}"
        ));
        net.heal();
        let took = wait_converged(&rt, cluster, "the split healed");
        load.note(&format!("healed; converged in {took:?}"));
        converged.push(took);
        drop(net);
        vec![format!(
            "three network partitions healed; converged after each: {}",
            spread(&converged)
        )]
    });
}
