//! A group's membership as records of `__consumer_offsets`, and back: what a coordinator
//! writes so that the coordinator that takes the group over (its offsets partition changed
//! leader, or the node restarted) keeps the group's members, their epochs and assignments,
//! instead of fencing every member into a rejoin and a rebalance.
//!
//! A plain module, no I/O: [`Persisted::of`] reads what a `GroupState` would write,
//! [`Persisted::changes`] lists the records that take the log from one such view to another
//! (a record per changed member, a tombstone per member gone, the group record when its epochs,
//! counts or assignor changed), and [`restore`] rebuilds the membership from a replayed view.
//!
//! What is written, and what is not:
//! - Per member: its epoch, identity (instance id, client id, host), subscription, timeouts,
//!   assigned partitions, partitions pending revocation, its part of the target assignment, and
//!   whether a static member left for now. Not its last heartbeat time or its deadlines: a
//!   restored member's session and revocation deadline start again at the restore, so a member
//!   gets a whole session timeout to find the new coordinator.
//! - Per group: the assignor, creation time, group epoch, assignment epoch and the partition
//!   counts the target was computed with. Not the rebalance history (DescribeGroups shows the
//!   rebalances the current coordinator made).
//!
//! **Invariant:** a coordinator answers a heartbeat only after the membership it answers from
//! is in the log below the high watermark (the coordinator writes [`Persisted::changes`] with
//! acks=all first), so whatever a member was told survives a change of coordinator. A restored
//! group never gives one partition to two members: a partition claimed by two member records
//! (which the coordinator never writes) is kept by the first and dropped from the others.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use vltava_messages::group_records::{
    GROUP_RECORD_VERSION, GroupRecordKey, GroupValue, MemberValue, PartitionsByTopic,
};

use super::assignor::{Assignor, TopicPartition};
use super::state::{
    GROUP_MEMBERS_MAX, GroupState, Member, REBALANCE_TIMEOUT_MAX, SESSION_TIMEOUT_MAX,
    SESSION_TIMEOUT_MIN,
};

/// One record for the offsets topic: key bytes, and value bytes or `None` for a tombstone.
pub type Record = (Vec<u8>, Option<Vec<u8>>);

/// A group's membership as the offsets topic holds it (or would, after the coordinator's next
/// write): the group record and one record per member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Persisted {
    pub group: Option<GroupValue>,
    pub members: BTreeMap<String, MemberValue>,
}

impl Persisted {
    /// What `group` writes: its group record and a record per member.
    #[must_use]
    pub fn of(group: &GroupState) -> Persisted {
        Persisted {
            group: Some(GroupValue {
                v: GROUP_RECORD_VERSION,
                assignor: group.assignor.name().to_owned(),
                created_ms: group.created_ms,
                group_epoch: group.group_epoch,
                assignment_epoch: group.assignment_epoch,
                partition_counts: group.counts_used.clone(),
            }),
            members: group
                .members
                .values()
                .map(|m| {
                    (
                        m.member_id.clone(),
                        member_value(m, group.target.get(&m.member_id)),
                    )
                })
                .collect(),
        }
    }

    /// The records that take the log from `self` (what it holds) to `next`: changed or new
    /// members, tombstones for members gone, and the group record if it changed. The group
    /// record comes first, so a replay that stops inside the batch (it never does: a batch is
    /// appended whole) would still see the epochs before the members that carry them.
    #[must_use]
    pub fn changes(&self, next: &Persisted, group_id: &str) -> Vec<Record> {
        let mut records = Vec::new();
        if next.group != self.group
            && let Some(value) = &next.group
        {
            records.push((
                GroupRecordKey::Group {
                    group: group_id.to_owned(),
                }
                .encode(),
                Some(value.encode()),
            ));
        }
        for (member_id, value) in &next.members {
            if self.members.get(member_id) != Some(value) {
                records.push((member_key(group_id, member_id), Some(value.encode())));
            }
        }
        for member_id in self.members.keys() {
            if !next.members.contains_key(member_id) {
                records.push((member_key(group_id, member_id), None));
            }
        }
        records
    }

    /// Tombstones for every member record (a deleted or expired group).
    #[must_use]
    pub fn member_tombstones(&self, group_id: &str) -> Vec<Record> {
        self.members
            .keys()
            .map(|member_id| (member_key(group_id, member_id), None))
            .collect()
    }
}

/// The key of a member's record.
fn member_key(group_id: &str, member_id: &str) -> Vec<u8> {
    GroupRecordKey::Member {
        group: group_id.to_owned(),
        member: member_id.to_owned(),
    }
    .encode()
}

fn to_map(partitions: &BTreeSet<TopicPartition>) -> PartitionsByTopic {
    let mut map = PartitionsByTopic::new();
    for (topic, partition) in partitions {
        map.entry(topic.clone()).or_default().push(*partition);
    }
    map
}

fn from_map(map: &PartitionsByTopic) -> BTreeSet<TopicPartition> {
    map.iter()
        .flat_map(|(topic, partitions)| partitions.iter().map(|p| (topic.clone(), *p)))
        .collect()
}

fn duration_ms(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

fn member_value(member: &Member, target: Option<&BTreeSet<TopicPartition>>) -> MemberValue {
    MemberValue {
        v: GROUP_RECORD_VERSION,
        member_epoch: member.member_epoch,
        instance_id: member.instance_id.clone(),
        client_id: member.client_id.clone(),
        host: member.host.clone(),
        subscribed: member.subscribed.iter().cloned().collect(),
        session_timeout_ms: duration_ms(member.session_timeout),
        rebalance_timeout_ms: duration_ms(member.rebalance_timeout),
        assigned: to_map(&member.assigned),
        pending_revocation: to_map(&member.pending_revocation),
        target: target.map(to_map).unwrap_or_default(),
        departed: member.departed.is_some(),
    }
}

/// Rebuilds `group`'s membership from what the log held: the assignor, creation time, epochs
/// and counts from the group record, and the members, whose sessions (and revocation
/// deadlines, and a departed static member's wait) start at `now`.
///
/// Records come from this node's own writes, but are checked like input: timeouts are brought
/// into their allowed ranges, members past `GROUP_MEMBERS_MAX` are dropped, and a partition
/// claimed by a member already restored is dropped from the later one (each with a warning).
/// Returns how many members were restored.
pub fn restore(group: &mut GroupState, persisted: &Persisted, now: Instant) -> usize {
    if let Some(value) = &persisted.group {
        if let Some(assignor) = Assignor::from_name(&value.assignor) {
            group.assignor = assignor;
        }
        group.created_ms = value.created_ms;
        group.group_epoch = value.group_epoch;
        group.assignment_epoch = value.assignment_epoch.min(value.group_epoch);
        group.counts_used.clone_from(&value.partition_counts);
    }
    let mut held: BTreeSet<TopicPartition> = BTreeSet::new();
    for (member_id, value) in &persisted.members {
        if group.members.len() >= GROUP_MEMBERS_MAX {
            tracing::warn!(group = %group.group_id, member = %member_id, "more member records than a group may have; member not restored");
            continue;
        }
        let mut claim = |map: &PartitionsByTopic| -> BTreeSet<TopicPartition> {
            let mut kept = BTreeSet::new();
            for tp in from_map(map) {
                if held.insert(tp.clone()) {
                    kept.insert(tp);
                } else {
                    tracing::warn!(group = %group.group_id, member = %member_id, topic = %tp.0, partition = tp.1, "a partition held by two member records; kept by the first");
                }
            }
            kept
        };
        let assigned = claim(&value.assigned);
        let pending_revocation = claim(&value.pending_revocation);
        let session_timeout = Duration::from_millis(u64::from(value.session_timeout_ms))
            .clamp(SESSION_TIMEOUT_MIN, SESSION_TIMEOUT_MAX);
        let rebalance_timeout = Duration::from_millis(u64::from(value.rebalance_timeout_ms))
            .clamp(Duration::from_millis(1), REBALANCE_TIMEOUT_MAX);
        let member = Member {
            member_id: member_id.clone(),
            instance_id: value.instance_id.clone(),
            client_id: value.client_id.clone(),
            host: value.host.clone(),
            member_epoch: value.member_epoch,
            subscribed: value.subscribed.iter().cloned().collect(),
            session_timeout,
            rebalance_timeout,
            told: assigned.clone(),
            // Until its first heartbeat here says otherwise, it holds what it was told.
            owned: assigned
                .iter()
                .chain(&pending_revocation)
                .cloned()
                .collect(),
            revocation_deadline: (!pending_revocation.is_empty()).then(|| now + rebalance_timeout),
            assigned,
            pending_revocation,
            last_heartbeat: now,
            departed: value.departed.then_some(now),
        };
        group
            .target
            .insert(member_id.clone(), from_map(&value.target));
        group.members.insert(member_id.clone(), member);
    }
    if group.members.is_empty() {
        group.empty_since = now;
    }
    group.version += 1;
    group.members.len()
}
