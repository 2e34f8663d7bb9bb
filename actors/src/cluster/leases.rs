//! Node leases: how the active controller knows which nodes are alive, and how a node knows
//! whether it may vouch for its metadata (issue 12, "Leases").
//!
//! - Every node renews its lease with the active controller every [`LEASE_RENEW_INTERVAL`]
//!   ([`renew_leases`]): a `LeaseRenew` request on the control link, answered from memory by
//!   the controller's node (not a Raft write). The controller's own node renews its lease
//!   locally, after confirming with a quorum that it still leads (a read-index round), so a
//!   controller cut off from the quorum stops counting as fresh too.
//! - The controller's [`LeaseTable`] keeps when each node last renewed. The lease supervisor
//!   ([`supervise_leases`]) runs on every node and acts only while its node leads the
//!   metadata quorum: a node that has not renewed for [`NODE_LEASE_TIMEOUT`] is fenced, a
//!   fenced node that renewed is unfenced, each decision committed as a metadata record
//!   (`NodeFenced` / `NodeUnfenced`) through the controller.
//! - The fast path: a node whose process the controller's peer link found gone (its
//!   connection dropped and a dial was refused) is fenced at once (`fencing_decisions`).
//! - Each fencing commit also moves the fenced nodes' partitions to live in-sync replicas and
//!   takes them out of the ISRs (`metadata::failover`); once a second the supervisor moves
//!   leadership back to preferred replicas that have been in sync for
//!   `--preferred-leader-return-ms` (`failover::preferred_returns`).
//! - A newly elected controller first grants every node a full lease (from the moment it
//!   saw itself elected), so nobody is fenced for the time the election took. A node the
//!   metadata already marks fenced is not granted one: it must renew to be unfenced.
//! - [`MetadataFreshness`] is the node's own side: when its lease was last granted (a grant
//!   counts once the node has applied the metadata version it names), and whether it may
//!   still lead (`check_leader`, ARCHITECTURE.md "Leader leases"). A node
//!   whose lease is older than [`NODE_LEASE_TIMEOUT`] is cut off from the controller, and its
//!   image may be stale: sessions answer Metadata, FindCoordinator and admin requests with
//!   the retriable `ControllerNotAvailable` instead of a stale answer.
//!
//! Bounds: one renewal in flight per node (the loop awaits each, at most
//! [`LEASE_RENEW_CALL_TIMEOUT`]); the table holds one entry per registered node.
//! Clocks: all instants are `tokio::time::Instant` on each node's monotonic clock; no clock
//! is compared across nodes. A node counts its freshness from when it *sent* the renewal
//! that was granted, which is never later than when the controller granted it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use vltava_messages::NodeId;
use vltava_messages::peer::{ElectionWire, LeaseRenewRequest, LeaseRenewResponse};

use crate::metadata::MetadataImage;
use crate::metadata::controller::ControllerHandle;
use crate::metadata::failover;
pub use crate::metadata::freshness::{LeaseTable, MetadataFreshness};
use crate::metadata::raft::{MetadataRaft, vltava_node_id};
use crate::peer::{PeerChannel, PeerLinks, PeerRequest, PeerResponse};

/// How often a node renews its lease. Several renewals fit in one lease, so a lost or slow
/// renewal does not fence a node.
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_millis(250);

pub use crate::metadata::freshness::NODE_LEASE_TIMEOUT;

/// How long one renewal may take before the node gives up on it (and tries again at the next
/// interval).
pub const LEASE_RENEW_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the controller's node looks for partitions whose preferred leader should lead
/// them again.
pub const PREFERRED_RETURN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often the controller's node checks for expired leases.
pub const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Answers a node's `LeaseRenew` on the controller's node: granted only while this node
/// leads the metadata quorum and its own lease is fresh, which [`renew_leases`] renews only
/// when a quorum confirms its leadership: a leader cut off from the others must not keep the
/// nodes on its side fresh.
pub fn answer_renewal(
    raft: &MetadataRaft,
    own: u32,
    table: &LeaseTable,
    from: NodeId,
    image_version: u64,
) -> LeaseRenewResponse {
    let leader = raft
        .metrics()
        .borrow()
        .current_leader
        .and_then(vltava_node_id)
        .map(|n| n.0);
    let confirmed = table
        .last_renewed(own)
        .is_some_and(|at| at.elapsed() < NODE_LEASE_TIMEOUT);
    let granted = leader == Some(own) && confirmed;
    if granted {
        table.renew(from.0);
    }
    LeaseRenewResponse {
        granted,
        lease_ms: if granted {
            u32::try_from(NODE_LEASE_TIMEOUT.as_millis()).unwrap_or(u32::MAX)
        } else {
            0
        },
        controller_id: leader,
        metadata_version: image_version,
    }
}

/// Renews this node's lease with the active controller every [`LEASE_RENEW_INTERVAL`] until
/// `raft` stops.
pub async fn renew_leases(
    raft: MetadataRaft,
    node_id: u32,
    links: PeerLinks,
    table: LeaseTable,
    freshness: MetadataFreshness,
    image: watch::Receiver<Arc<MetadataImage>>,
) {
    let mut interval = tokio::time::interval(LEASE_RENEW_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_failure_logged: Option<Instant> = None;
    loop {
        interval.tick().await;
        let leader = raft
            .metrics()
            .borrow()
            .current_leader
            .and_then(vltava_node_id)
            .map(|n| n.0);
        let sent_at = Instant::now();
        let outcome = match leader {
            None => Err("no controller is elected".to_owned()),
            Some(leader) if leader == node_id => {
                // The controller's own node: its lease holds while a quorum still follows it.
                match tokio::time::timeout(LEASE_RENEW_CALL_TIMEOUT, raft.ensure_linearizable())
                    .await
                {
                    Ok(Ok(_)) => {
                        table.renew(node_id);
                        Ok(None)
                    }
                    Ok(Err(e)) => Err(format!("this node no longer leads: {e}")),
                    Err(_) => Err("a quorum did not confirm this node's leadership".to_owned()),
                }
            }
            Some(leader) => {
                let request = PeerRequest::LeaseRenew(LeaseRenewRequest {
                    metadata_version: image.borrow().version,
                });
                match links
                    .call(
                        NodeId(leader),
                        PeerChannel::Control,
                        request,
                        LEASE_RENEW_CALL_TIMEOUT,
                    )
                    .await
                {
                    // The grant vouches for this node's image only once the node applied
                    // what the controller had committed when it answered: a leader that was
                    // paused and moved away must not take its partitions for its own again
                    // between the grant and the image that moves them. The loop does not
                    // wait for that: renewals go on (the controller counts them as they
                    // come), and the grant counts when the image is applied.
                    Ok(PeerResponse::LeaseRenew(answer)) if answer.granted => {
                        Ok(Some(answer.metadata_version))
                    }
                    Ok(PeerResponse::LeaseRenew(answer)) => Err(format!(
                        "node {leader} did not grant the lease (it names controller {:?})",
                        answer.controller_id
                    )),
                    Ok(other) => Err(format!(
                        "node {leader} answered a lease renewal with {}",
                        other.kind().name()
                    )),
                    Err(e) => Err(format!("node {leader} cannot be reached: {e}")),
                }
            }
        };
        match outcome {
            Ok(version) => {
                match version {
                    Some(version) => freshness.granted_at_version(sent_at, version),
                    None => freshness.granted(sent_at),
                }
                last_failure_logged = None;
            }
            Err(reason) => {
                // Renewals fail in bursts (an election, a dead controller): say so once per
                // lease, not four times a second.
                if last_failure_logged.is_none_or(|at| at.elapsed() >= NODE_LEASE_TIMEOUT) {
                    tracing::info!(%reason, "lease renewal failed");
                    last_failure_logged = Some(Instant::now());
                }
            }
        }
    }
}

/// What the lease supervisor decides from one look at the table: the nodes to fence and the
/// nodes to unfence. `granted_at` is when this node became the controller and `first_seen`
/// when it first saw each node in the image: an unfenced node's lease runs at least from the
/// later of the two, so neither an election nor a node's registration fences it at once.
///
/// `gone` is the fast path: nodes whose peer link found their process gone (a dropped
/// connection, then a refused dial), with since when. Such a node is fenced at once, without
/// waiting out its lease, unless it renewed since (it restarted and is back). Nothing
/// else is taken as a sign of death: a paused or cut-off node is left to its lease, since it
/// may still believe it leads (see ARCHITECTURE.md, "Leader leases").
#[must_use]
pub fn fencing_decisions(
    image: &MetadataImage,
    table: &LeaseTable,
    granted_at: Instant,
    first_seen: &HashMap<u32, Instant>,
    gone: &BTreeMap<u32, Instant>,
    now: Instant,
    timeout: Duration,
) -> (Vec<u32>, Vec<u32>) {
    let mut fence = Vec::new();
    let mut unfence = Vec::new();
    for node in image.nodes.values() {
        let renewed = table.last_renewed(node.node_id);
        let gone_since = gone.get(&node.node_id).copied();
        if node.fenced {
            // Only a real renewal within a lease unfences: the grant at election does not.
            // A node found gone stays fenced until it renews after that was seen.
            if renewed.is_some_and(|at| {
                at >= granted_at
                    && now.saturating_duration_since(at) < timeout
                    && gone_since.is_none_or(|gone| at > gone)
            }) {
                unfence.push(node.node_id);
            }
        } else {
            let seen = first_seen.get(&node.node_id).copied().unwrap_or(now);
            let since = renewed
                .map_or(granted_at, |at| at.max(granted_at))
                .max(seen);
            let found_gone = gone_since.is_some_and(|gone| renewed.is_none_or(|at| at < gone));
            if found_gone || now.saturating_duration_since(since) >= timeout {
                fence.push(node.node_id);
            }
        }
    }
    (fence, unfence)
}

/// Runs the lease supervisor until `raft` stops: while this node leads the metadata quorum,
/// fences nodes whose lease ran out and unfences nodes that renewed.
pub async fn supervise_leases(
    raft: MetadataRaft,
    node_id: u32,
    table: LeaseTable,
    links: PeerLinks,
    controller: ControllerHandle,
    preferred_return: Option<Duration>,
) {
    let image = controller.image();
    // The term in which this node leads, and when it saw itself elected in it.
    let mut leading: Option<(u64, Instant)> = None;
    let mut first_seen: HashMap<u32, Instant> = HashMap::new();
    let mut checked_version: Option<u64> = None;
    // When each partition's preferred leader was first seen ready to lead it again, and when
    // that was last looked at (every `PREFERRED_RETURN_CHECK_INTERVAL`, not every tick: it
    // reads every partition).
    let mut preferred_since = HashMap::new();
    let mut preferred_checked: Option<Instant> = None;
    let mut interval = tokio::time::interval(LEASE_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let (leader, term) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            (
                metrics.current_leader.and_then(vltava_node_id).map(|n| n.0),
                metrics.current_term,
            )
        };
        if leader != Some(node_id) {
            leading = None;
            preferred_since.clear();
            continue;
        }
        let granted_at = match leading {
            Some((leading_term, at)) if leading_term == term => at,
            _ => {
                tracing::info!(
                    term,
                    "controller elected: every live node gets a full lease"
                );
                let now = Instant::now();
                leading = Some((term, now));
                now
            }
        };
        let snapshot = Arc::clone(&image.borrow());
        let now = Instant::now();
        for id in snapshot.nodes.keys() {
            first_seen.entry(*id).or_insert(now);
        }
        let (fence, unfence) = fencing_decisions(
            &snapshot,
            &table,
            granted_at,
            &first_seen,
            &links.gone(),
            now,
            NODE_LEASE_TIMEOUT,
        );
        // With no fencing change there may still be leadership to mend, on an image no
        // fencing commit decided (one written by a version without failover, or a topic
        // whose unclean-election setting changed while it had no leader). Looked at once
        // per image version: the decision reads nothing else.
        let mend =
            checked_version != Some(snapshot.version) && !failover::decide(&snapshot).is_empty();
        checked_version = Some(snapshot.version);
        if let Some(delay) = preferred_return
            && preferred_checked.is_none_or(|at| at.elapsed() >= PREFERRED_RETURN_CHECK_INTERVAL)
            && fence.is_empty()
        {
            preferred_checked = Some(now);
            let due = failover::preferred_returns(&snapshot, &mut preferred_since, now, delay);
            if !due.is_empty() {
                tracing::info!(
                    partitions = due.len(),
                    "moving leadership back to preferred replicas"
                );
                let wire = due
                    .into_iter()
                    .map(|e| ElectionWire {
                        topic: e.topic,
                        partition: e.partition,
                        to: None,
                    })
                    .collect();
                if let Err(e) = controller.elect_leaders(wire, true, None).await {
                    tracing::info!(error = %e, "preferred leaders not moved back; retrying later");
                }
            }
        }
        if fence.is_empty() && unfence.is_empty() && !mend {
            continue;
        }
        if let Err(e) = controller.set_fencing(fence, unfence).await {
            tracing::info!(error = %e, "fencing decision not committed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::NodeImage;

    fn image(nodes: &[(u32, bool)]) -> MetadataImage {
        MetadataImage {
            nodes: nodes
                .iter()
                .map(|(id, fenced)| {
                    (
                        *id,
                        NodeImage {
                            node_id: *id,
                            host: "127.0.0.1".into(),
                            port: 9420,
                            fenced: *fenced,
                            incarnation: 0,
                        },
                    )
                })
                .collect(),
            ..MetadataImage::default()
        }
    }

    const LEASE: Duration = Duration::from_secs(2);

    #[tokio::test(start_paused = true)]
    async fn a_new_controller_grants_a_full_lease_before_it_fences_anyone() {
        let table = LeaseTable::default();
        let elected = Instant::now();
        let seen = HashMap::from([(1, elected), (2, elected)]);
        let image = image(&[(1, false), (2, false)]);
        // Nobody renewed with this controller yet: still within the granted lease.
        let just_before = elected + LEASE - Duration::from_millis(1);
        assert_eq!(
            fencing_decisions(
                &image,
                &table,
                elected,
                &seen,
                &BTreeMap::new(),
                just_before,
                LEASE
            ),
            (vec![], vec![])
        );
        // Node 1 renewed meanwhile; node 2 never did: only node 2 is fenced once the grant
        // runs out.
        tokio::time::advance(Duration::from_secs(1)).await;
        table.renew(1);
        assert_eq!(
            fencing_decisions(
                &image,
                &table,
                elected,
                &seen,
                &BTreeMap::new(),
                elected + LEASE,
                LEASE
            ),
            (vec![2], vec![])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_first_seen_late_gets_a_full_lease_from_then() {
        let table = LeaseTable::default();
        let elected = Instant::now();
        let registered = elected + Duration::from_secs(10);
        let seen = HashMap::from([(3, registered)]);
        let image = image(&[(3, false)]);
        assert_eq!(
            fencing_decisions(
                &image,
                &table,
                elected,
                &seen,
                &BTreeMap::new(),
                registered + LEASE / 2,
                LEASE
            ),
            (vec![], vec![])
        );
        assert_eq!(
            fencing_decisions(
                &image,
                &table,
                elected,
                &seen,
                &BTreeMap::new(),
                registered + LEASE,
                LEASE
            ),
            (vec![3], vec![])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_real_renewal_unfences_and_a_stale_one_does_not() {
        let table = LeaseTable::default();
        let elected = Instant::now();
        let seen = HashMap::from([(2, elected)]);
        let image = image(&[(2, true)]);
        // Fenced before this controller: the election's grant does not unfence it.
        assert_eq!(
            fencing_decisions(
                &image,
                &table,
                elected,
                &seen,
                &BTreeMap::new(),
                elected,
                LEASE
            ),
            (vec![], vec![])
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        table.renew(2);
        let renewed = Instant::now();
        assert_eq!(
            fencing_decisions(
                &image,
                &table,
                elected,
                &seen,
                &BTreeMap::new(),
                renewed,
                LEASE
            ),
            (vec![], vec![2])
        );
        // A renewal older than a lease is no reason to unfence.
        assert_eq!(
            fencing_decisions(
                &image,
                &table,
                elected,
                &seen,
                &BTreeMap::new(),
                renewed + LEASE,
                LEASE
            ),
            (vec![], vec![])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_found_gone_is_fenced_at_once_until_it_renews_again() {
        let table = LeaseTable::default();
        let elected = Instant::now();
        let seen = HashMap::from([(1, elected), (2, elected)]);
        table.renew(1);
        table.renew(2);
        tokio::time::advance(Duration::from_millis(300)).await;
        let gone = BTreeMap::from([(2, Instant::now())]);
        let now = Instant::now();
        // Node 1 is live; node 2 is fenced or not as the image says.
        let decide = |node_2_fenced: bool, now: Instant| {
            fencing_decisions(
                &image(&[(1, false), (2, node_2_fenced)]),
                &table,
                elected,
                &seen,
                &gone,
                now,
                LEASE,
            )
        };
        // Well within its lease, node 2 is fenced because its process is gone.
        assert_eq!(decide(false, now), (vec![2], vec![]));
        // Its renewal from before it went is no reason to unfence it.
        assert_eq!(decide(true, now), (vec![], vec![]));
        // It restarted and renewed (the link has not redialled yet): unfenced, not fenced.
        tokio::time::advance(Duration::from_millis(100)).await;
        table.renew(2);
        let now = Instant::now();
        assert_eq!(decide(true, now), (vec![], vec![2]));
        assert_eq!(decide(false, now), (vec![], vec![]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_counts_only_once_the_node_applied_the_version_it_names() {
        let freshness = MetadataFreshness::new(LEASE);
        freshness.applied(7);
        let first = Instant::now();
        freshness.granted_at_version(first, 7);
        assert!(freshness.check_leader().is_ok(), "version 7 is applied");
        // The lease nearly runs out; a renewal is granted at version 9, which the node has
        // not applied: it does not count yet.
        tokio::time::advance(LEASE - Duration::from_millis(100)).await;
        let second = Instant::now();
        freshness.granted_at_version(second, 9);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(freshness.check().is_err(), "the grant at version 9 waits");
        freshness.applied(8);
        assert!(freshness.check().is_err(), "version 8 is not enough");
        freshness.applied(9);
        assert!(
            freshness.check_leader().is_ok(),
            "counted from when it was sent"
        );
        assert_eq!(freshness.age(), Some(Duration::from_millis(200)));
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_runs_out_a_lease_after_the_renewal_was_sent() {
        let freshness = MetadataFreshness::new(LEASE);
        assert!(freshness.check().is_err(), "never granted");
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(300)).await;
        freshness.granted(sent);
        assert!(freshness.check().is_ok());
        // Counted from when the renewal was sent, not from when its answer came back.
        tokio::time::advance(LEASE - Duration::from_millis(300)).await;
        assert!(freshness.check().is_ok());
        tokio::time::advance(Duration::from_millis(1)).await;
        let refused = freshness.check().unwrap_err();
        assert!(
            refused.contains("has not heard from the controller"),
            "{refused}"
        );
        // An older grant arriving late does not move the lease back.
        freshness.granted(sent);
        assert!(freshness.check().is_err());
    }
}
