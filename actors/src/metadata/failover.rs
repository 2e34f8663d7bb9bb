//! The controller's supervision of partition leadership when nodes fail (issue 14), sans IO:
//! from a committed image (with the fencing decisions of the same commit already applied),
//! the `PartitionChange` records that leave no partition led by a fenced node and no fenced
//! node in an ISR it could hold back.
//!
//! # Rules, per placed partition
//! 1. **The ISR loses its fenced members**, unless that would leave it empty: then it stays
//!    as it was. Every member of a committed ISR holds every acknowledged write (the leader
//!    computes the high watermark over a superset of the committed ISR: `elections` says
//!    why), so the last members are exactly the nodes that may lead again without losing
//!    anything; the partition waits for one of them.
//! 2. **A live leader keeps leading.** A leader that is fenced (or no leader at all) is
//!    replaced by the first replica, in replica order, that is in the ISR and live; the
//!    replica order is the operator's preference, so leadership lands where placement meant.
//! 3. **No eligible replica:** the partition is left without a leader (`leader: None`, the
//!    epoch bumped so that the fenced leader, if it comes back, learns it no longer leads),
//!    unless the topic sets `unclean.leader.election.enable`: then the first live replica
//!    leads with an ISR of itself alone, and what only the old ISR held is lost, as the
//!    setting says.
//! 4. A change of leader bumps the leader epoch; any change bumps the partition epoch (ISR
//!    proposals in flight are compare-and-set on it and are refused as stale).
//!
//! [`preferred_returns`] is the other half of supervision: once a partition's first replica
//! has been live and in sync for a delay while another replica leads, the supervisor moves
//! leadership back to it (a preferred election), so that load spreads again after a failover.
//!
//! The same rules run when a node is unfenced, which is how a partition left leaderless by
//! rule 3 gets its leader back, and on every supervisor tick, so that a controller elected
//! in the middle of a failover finishes it from the committed image alone.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use vltava_messages::limits::PARTITIONS_PER_TOPIC_MAX;
use vltava_messages::metadata_records::MetadataRecord;
use vltava_messages::peer::ELECTIONS_MAX;

use crate::metadata::elections::Election;
use crate::metadata::topic_config;
use crate::metadata::{MetadataImage, PartitionImage};

/// The most partition changes one failover commit carries: a topic creation's worth
/// (`PARTITIONS_PER_TOPIC_MAX`), which is known to fit a metadata log entry and a peer frame.
/// A node that led more gets the rest in the next commits, which the supervisor makes on the
/// next image version (the rules read the image alone, so every step is a valid state).
pub const CHANGES_PER_COMMIT_MAX: usize = PARTITIONS_PER_TOPIC_MAX as usize;

/// The records that bring every partition of `image` in line with the rules of the module
/// doc; empty when nothing needs to change. Leader moves come first, then ISR-only
/// changes, at most [`CHANGES_PER_COMMIT_MAX`] in all: a partition without a live leader
/// is unavailable, a fenced ISR member only holds back its high watermark until the leader
/// drops it after the lag time anyway.
#[must_use]
pub fn decide(image: &MetadataImage) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    let mut isr_only = Vec::new();
    for (name, topic) in &image.topics {
        // Unparseable configs were refused when they were set; a topic from an older
        // version falls back to the safe default (clean elections only).
        let unclean = topic_config::parse(&topic.configs)
            .map(|c| c.unclean_leader_election)
            .unwrap_or(false);
        for (index, current) in topic.partitions.iter().enumerate() {
            let Some(next) = supervise(image, current, unclean) else {
                continue;
            };
            let bucket = if next.leader == current.leader {
                &mut isr_only
            } else {
                &mut records
            };
            bucket.push(next.record(
                name,
                u32::try_from(index).expect("partition indexes fit u32"),
            ));
        }
    }
    records.extend(isr_only);
    records.truncate(CHANGES_PER_COMMIT_MAX);
    records
}

/// One partition's next state under the rules, or `None` if it stays as it is.
fn supervise(
    image: &MetadataImage,
    current: &PartitionImage,
    unclean: bool,
) -> Option<PartitionImage> {
    if current.replicas.is_empty() {
        return None;
    }
    let live = |node: &u32| image.is_live(*node);
    let mut isr: Vec<u32> = current.isr.iter().copied().filter(live).collect();
    if isr.is_empty() {
        isr.clone_from(&current.isr);
    }
    let leader = match current.leader {
        Some(leader) if live(&leader) => Some(leader),
        _ => {
            let clean = current
                .replicas
                .iter()
                .copied()
                .find(|r| isr.contains(r) && live(r));
            match clean {
                Some(leader) => Some(leader),
                None if unclean => {
                    let chosen = current.replicas.iter().copied().find(live);
                    if let Some(leader) = chosen {
                        isr = vec![leader];
                    }
                    chosen
                }
                None => None,
            }
        }
    };
    if leader == current.leader && isr == current.isr {
        return None;
    }
    let leader_epoch = if leader == current.leader {
        current.leader_epoch
    } else {
        current.leader_epoch + 1
    };
    Some(PartitionImage {
        leader,
        leader_epoch,
        partition_epoch: current.partition_epoch + 1,
        replicas: current.replicas.clone(),
        isr,
        // A move under way goes on: its completion waits for the target in the ISR.
        target_replicas: current.target_replicas.clone(),
    })
}

/// Partitions whose leadership should return to their preferred leader (the first replica)
/// now: those where another replica leads while the first is live and in the ISR, and has
/// been so for at least `delay` by `since` (which this keeps: when each partition was first
/// seen so, forgetting those no longer so). Going through the controlled move of
/// `elections` (a new leader epoch, the ISR unchanged) loses nothing acknowledged. At most
/// `ELECTIONS_MAX` at a time, in topic and partition order.
pub fn preferred_returns(
    image: &MetadataImage,
    since: &mut HashMap<(String, u32), Instant>,
    now: Instant,
    delay: Duration,
) -> Vec<Election> {
    let mut due = Vec::new();
    let mut waiting = HashMap::new();
    for (name, topic) in &image.topics {
        for (index, p) in topic.partitions.iter().enumerate() {
            let Some(&preferred) = p.replicas.first() else {
                continue;
            };
            let returnable = p.leader.is_some_and(|l| l != preferred)
                && p.isr.contains(&preferred)
                && image.is_live(preferred);
            if !returnable {
                continue;
            }
            let partition = u32::try_from(index).expect("partition indexes fit u32");
            let key = (name.clone(), partition);
            let first_seen = since.get(&key).copied().unwrap_or(now);
            if now.saturating_duration_since(first_seen) >= delay && due.len() < ELECTIONS_MAX {
                due.push(Election {
                    topic: name.clone(),
                    partition,
                    to: None,
                });
            }
            waiting.insert(key, first_seen);
        }
    }
    *since = waiting;
    due
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metadata::{NodeImage, TopicImage};

    fn image(fenced: &[u32], partitions: Vec<PartitionImage>, unclean: bool) -> MetadataImage {
        let mut configs = BTreeMap::new();
        if unclean {
            configs.insert(
                "unclean.leader.election.enable".to_owned(),
                "true".to_owned(),
            );
        }
        MetadataImage {
            nodes: (1..=3)
                .map(|id| {
                    (
                        id,
                        NodeImage {
                            node_id: id,
                            host: format!("127.0.0.{id}"),
                            port: 9420,
                            fenced: fenced.contains(&id),
                            incarnation: 1,
                        },
                    )
                })
                .collect(),
            topics: BTreeMap::from([(
                "t".to_owned(),
                TopicImage {
                    topic_id: "id".to_owned(),
                    replication_factor: 3,
                    configs,
                    partitions,
                },
            )]),
            ..MetadataImage::default()
        }
    }

    fn partition(leader: Option<u32>, isr: &[u32]) -> PartitionImage {
        PartitionImage {
            leader,
            leader_epoch: 4,
            partition_epoch: 9,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            target_replicas: None,
        }
    }

    fn decided(image: &MetadataImage) -> Vec<PartitionImage> {
        let mut after = image.clone();
        for record in decide(image) {
            after.apply(&record);
        }
        // A decision is complete: deciding again on its outcome changes nothing.
        assert!(decide(&after).is_empty(), "not a fixed point: {after:?}");
        after.topics["t"].partitions.clone()
    }

    #[test]
    fn a_fenced_leader_is_replaced_by_the_first_live_in_sync_replica() {
        let before = image(&[1], vec![partition(Some(1), &[1, 2, 3])], false);
        let after = decided(&before);
        assert_eq!(after[0].leader, Some(2));
        assert_eq!(after[0].isr, vec![2, 3]);
        assert_eq!(after[0].leader_epoch, 5);
        assert_eq!(after[0].partition_epoch, 10);
    }

    #[test]
    fn a_replica_outside_the_isr_is_never_elected_cleanly() {
        // Node 2 comes first in replica order but fell out of the ISR: node 3 leads.
        let before = image(&[1], vec![partition(Some(1), &[1, 3])], false);
        assert_eq!(decided(&before)[0].leader, Some(3));
    }

    #[test]
    fn a_fenced_follower_leaves_the_isr_and_the_leader_and_its_epoch_stay() {
        let before = image(&[3], vec![partition(Some(1), &[1, 2, 3])], false);
        let after = decided(&before);
        assert_eq!(after[0].leader, Some(1));
        assert_eq!(after[0].leader_epoch, 4, "no leader change, no epoch bump");
        assert_eq!(after[0].isr, vec![1, 2]);
        assert_eq!(after[0].partition_epoch, 10);
    }

    #[test]
    fn with_every_isr_member_fenced_the_partition_waits_leaderless_keeping_its_isr() {
        let before = image(&[1, 2], vec![partition(Some(1), &[1, 2])], false);
        let after = decided(&before);
        assert_eq!(after[0].leader, None);
        assert_eq!(after[0].isr, vec![1, 2], "the last members hold every ack");
        assert_eq!(
            after[0].leader_epoch, 5,
            "the old leader must learn it lost"
        );
        // One of them comes back: it leads again.
        let mut back = before.clone();
        back.topics.get_mut("t").unwrap().partitions = after;
        back.nodes.get_mut(&2).unwrap().fenced = false;
        let again = decided(&back);
        assert_eq!(again[0].leader, Some(2));
        assert_eq!(again[0].isr, vec![2]);
        assert_eq!(again[0].leader_epoch, 6);
    }

    #[test]
    fn a_live_replica_outside_the_isr_leads_only_with_unclean_election() {
        let clean = image(&[1, 2], vec![partition(Some(1), &[1, 2])], false);
        assert_eq!(decided(&clean)[0].leader, None);
        let unclean = image(&[1, 2], vec![partition(Some(1), &[1, 2])], true);
        let after = decided(&unclean);
        assert_eq!(after[0].leader, Some(3));
        assert_eq!(after[0].isr, vec![3]);
    }

    #[test]
    fn leadership_returns_to_the_preferred_replica_only_after_it_was_in_sync_for_the_delay() {
        let delay = Duration::from_secs(30);
        let start = Instant::now();
        let mut since = HashMap::new();
        // Node 1 (preferred) is back but not in sync yet: nothing to do, nothing remembered.
        let behind = image(&[], vec![partition(Some(2), &[2, 3])], false);
        assert!(preferred_returns(&behind, &mut since, start, delay).is_empty());
        assert!(since.is_empty());
        // In sync: remembered from now, due only a whole delay later.
        let in_sync = image(&[], vec![partition(Some(2), &[1, 2, 3])], false);
        assert!(preferred_returns(&in_sync, &mut since, start, delay).is_empty());
        let almost = start + delay - Duration::from_millis(1);
        assert!(preferred_returns(&in_sync, &mut since, almost, delay).is_empty());
        assert_eq!(
            preferred_returns(&in_sync, &mut since, start + delay, delay),
            vec![Election {
                topic: "t".to_owned(),
                partition: 0,
                to: None
            }]
        );
        // It fell out of the ISR meanwhile: the count starts again when it is back.
        assert!(preferred_returns(&behind, &mut since, start + delay, delay).is_empty());
        let later = start + delay * 2;
        assert!(preferred_returns(&in_sync, &mut since, later, delay).is_empty());
        // A fenced preferred replica is never due.
        let fenced = image(&[1], vec![partition(Some(2), &[1, 2, 3])], false);
        assert!(preferred_returns(&fenced, &mut since, later + delay * 2, delay).is_empty());
        // Already led by the preferred replica: nothing.
        let home = image(&[], vec![partition(Some(1), &[1, 2, 3])], false);
        assert!(preferred_returns(&home, &mut since, later + delay * 2, delay).is_empty());
    }

    #[test]
    fn a_large_failover_goes_in_bounded_commits_leader_moves_first() {
        let many = CHANGES_PER_COMMIT_MAX + 10;
        // Half led by the fenced node 1, half led by node 2 with node 1 in the ISR.
        let partitions = (0..many)
            .map(|i| partition(Some(if i % 2 == 0 { 2 } else { 1 }), &[1, 2, 3]))
            .collect();
        let mut image = image(&[1], partitions, false);
        let mut commits = 0;
        loop {
            let records = decide(&image);
            if records.is_empty() {
                break;
            }
            assert!(records.len() <= CHANGES_PER_COMMIT_MAX);
            if commits == 0 {
                // Every leader move is in the first commit (there are fewer than the bound).
                let moves = records
                    .iter()
                    .take(many / 2)
                    .filter(|r| {
                        matches!(
                            r,
                            MetadataRecord::PartitionChange {
                                leader_epoch: 5,
                                ..
                            }
                        )
                    })
                    .count();
                assert_eq!(moves, many / 2, "the leader moves come first");
            }
            for record in &records {
                image.apply(record);
            }
            commits += 1;
        }
        assert_eq!(commits, 2);
        assert!(
            image.topics["t"]
                .partitions
                .iter()
                .all(|p| p.leader != Some(1) && !p.isr.contains(&1))
        );
    }

    #[test]
    fn healthy_and_unplaced_partitions_are_left_alone() {
        let unplaced = PartitionImage {
            leader: None,
            leader_epoch: 0,
            partition_epoch: 0,
            replicas: vec![],
            isr: vec![],
            target_replicas: None,
        };
        let before = image(&[], vec![partition(Some(2), &[1, 2, 3]), unplaced], false);
        assert!(decide(&before).is_empty());
    }
}
