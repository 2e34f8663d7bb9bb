use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use vltava_messages::group_records::{GroupRecordKey, MemberValue};
use vltava_messages::protocol::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, MEMBER_EPOCH_JOIN,
    MEMBER_EPOCH_LEAVE,
};

use super::*;
use crate::groups::state::{GroupSettings, HeartbeatOutcome};

fn counts() -> BTreeMap<String, u32> {
    [("t".to_owned(), 6)].into_iter().collect()
}

fn group(now: Instant) -> GroupState {
    GroupState::new("g".into(), Assignor::Sticky, GroupSettings::default(), now)
}

fn send(
    g: &mut GroupState,
    request: &ConsumerGroupHeartbeatRequest,
    now: Instant,
) -> ConsumerGroupHeartbeatResponse {
    match g.heartbeat(request, "c", "h", now, &counts()).unwrap() {
        HeartbeatOutcome::Answer(answer) => answer,
        HeartbeatOutcome::Park { member_id, .. } => g.answer_for(&member_id),
    }
}

fn join(g: &mut GroupState, now: Instant) -> ConsumerGroupHeartbeatResponse {
    let request = ConsumerGroupHeartbeatRequest {
        group_id: "g".into(),
        member_epoch: MEMBER_EPOCH_JOIN,
        subscribed_topics: Some(vec!["t".into()]),
        owned_partitions: Some(Vec::new()),
        ..ConsumerGroupHeartbeatRequest::default()
    };
    send(g, &request, now)
}

/// A heartbeat that reports owning exactly what the last answer gave.
fn beat(
    g: &mut GroupState,
    last: &ConsumerGroupHeartbeatResponse,
    now: Instant,
) -> ConsumerGroupHeartbeatResponse {
    let request = ConsumerGroupHeartbeatRequest {
        group_id: "g".into(),
        member_id: last.member_id.clone(),
        member_epoch: last.member_epoch,
        owned_partitions: Some(last.assignment.clone()),
        ..ConsumerGroupHeartbeatRequest::default()
    };
    send(g, &request, now)
}

fn count(answer: &ConsumerGroupHeartbeatResponse) -> usize {
    answer.assignment.iter().map(|t| t.partitions.len()).sum()
}

/// Two members that split six partitions: (a, b) as their last answers gave them.
fn stable_pair(
    g: &mut GroupState,
    now: Instant,
) -> (
    ConsumerGroupHeartbeatResponse,
    ConsumerGroupHeartbeatResponse,
) {
    let a = join(g, now);
    let b = join(g, now);
    let a = beat(g, &a, now);
    let a = beat(g, &a, now);
    let b = beat(g, &b, now);
    assert_eq!((count(&a), count(&b)), (3, 3));
    assert_eq!(g.state_name(), "stable");
    (a, b)
}

/// The story issue 14 asks for: a group's coordinator moves (its offsets partition changed
/// leader) and the new one, restored from the records the old one wrote, answers the members'
/// next heartbeats with the epochs and partitions they hold: no rebalance, no fencing.
#[test]
fn a_restored_group_answers_its_members_with_their_epochs_and_partitions() {
    let now = Instant::now();
    let mut g = group(now);
    let (a, b) = stable_pair(&mut g, now);
    let written = Persisted::of(&g);

    let later = now + Duration::from_secs(1);
    let mut moved = group(later);
    assert_eq!(restore(&mut moved, &written, later), 2);
    assert_eq!(
        Persisted::of(&moved),
        written,
        "a restore writes nothing new"
    );
    assert_eq!(moved.group_epoch, g.group_epoch);
    assert_eq!(moved.assignment_epoch, g.assignment_epoch);
    assert_eq!(moved.state_name(), "stable");
    let a2 = beat(&mut moved, &a, later);
    let b2 = beat(&mut moved, &b, later);
    assert_eq!(a2.member_epoch, a.member_epoch);
    assert_eq!(a2.assignment, a.assignment);
    assert_eq!(b2.member_epoch, b.member_epoch);
    assert_eq!(b2.assignment, b.assignment);
    assert_eq!(moved.group_epoch, g.group_epoch, "no rebalance");
    assert!(moved.rebalances.is_empty());
}

/// A restored member's session starts at the restore: it has a whole session timeout to find
/// the new coordinator, however long ago its last heartbeat to the old one was.
#[test]
fn a_restored_members_session_starts_at_the_restore() {
    let now = Instant::now();
    let mut g = group(now);
    let (a, _) = stable_pair(&mut g, now);
    let written = Persisted::of(&g);
    let session = GroupSettings::default().session_timeout;
    let restored_at = now + session - Duration::from_secs(1);
    let mut moved = group(restored_at);
    restore(&mut moved, &written, restored_at);
    assert!(!moved.expire(now + session + Duration::from_secs(1), &counts()));
    assert_eq!(moved.members.len(), 2);
    let a2 = beat(&mut moved, &a, restored_at + Duration::from_secs(2));
    assert_eq!(count(&a2), 3);
}

/// Only what changed is written: nothing for an unchanged group, the changed member alone,
/// and a tombstone (no value) for a member that left, with the group record when its epoch
/// moved.
#[test]
fn changes_write_only_what_moved() {
    let now = Instant::now();
    let mut g = group(now);
    let (a, b) = stable_pair(&mut g, now);
    let before = Persisted::of(&g);
    assert!(before.changes(&Persisted::of(&g), "g").is_empty());
    assert_eq!(
        Persisted::default().changes(&before, "g").len(),
        3,
        "a new group: its record and two members"
    );

    let leave = ConsumerGroupHeartbeatRequest {
        group_id: "g".into(),
        member_id: b.member_id.clone(),
        member_epoch: MEMBER_EPOCH_LEAVE,
        ..ConsumerGroupHeartbeatRequest::default()
    };
    g.heartbeat(&leave, "c", "h", now, &counts()).unwrap();
    let after = Persisted::of(&g);
    let records = before.changes(&after, "g");
    let keys: Vec<(GroupRecordKey, bool)> = records
        .iter()
        .map(|(k, v)| (GroupRecordKey::decode(k).unwrap(), v.is_some()))
        .collect();
    assert!(keys.contains(&(GroupRecordKey::Group { group: "g".into() }, true)));
    assert!(keys.contains(&(
        GroupRecordKey::Member {
            group: "g".into(),
            member: b.member_id.clone()
        },
        false
    )));
    // a's target grew to all six partitions.
    assert!(keys.contains(&(
        GroupRecordKey::Member {
            group: "g".into(),
            member: a.member_id.clone()
        },
        true
    )));
    assert_eq!(keys.len(), 3);
    assert_eq!(after.member_tombstones("g").len(), 1);
}

/// A member restored in the middle of a revocation keeps the revoked partitions (it may still
/// commit them) with a fresh deadline, and the member waiting for them gets them only once
/// the revocation is acknowledged to the new coordinator: one owner at a time across the move.
#[test]
fn a_revocation_in_progress_survives_the_move() {
    let now = Instant::now();
    let mut g = group(now);
    let a = join(&mut g, now);
    assert_eq!(count(&a), 6);
    let b = join(&mut g, now);
    let a = beat(&mut g, &a, now);
    assert_eq!(count(&a), 3, "a was told to give three up");
    let written = Persisted::of(&g);
    let revoking = &written.members[&a.member_id].pending_revocation;
    assert_eq!(revoking.values().map(Vec::len).sum::<usize>(), 3);

    let mut moved = group(now);
    restore(&mut moved, &written, now);
    let b2 = beat(&mut moved, &b, now);
    assert_eq!(count(&b2), 0, "b waits for a's revocation");
    let a2 = beat(&mut moved, &a, now);
    assert_eq!(count(&a2), 3);
    let b2 = beat(&mut moved, &b2, now);
    assert_eq!(count(&b2), 3, "b gets them once a acknowledged");
}

/// Records are read like input: a partition two member records claim stays with the first,
/// timeouts out of range are brought into range, and a member of an unknown assignor keeps
/// the group's default.
#[test]
fn a_bad_record_never_makes_two_owners_or_a_panic() {
    let now = Instant::now();
    let value = |assigned: Vec<u32>| MemberValue {
        v: 1,
        member_epoch: 3,
        instance_id: None,
        client_id: "c".into(),
        host: "h".into(),
        subscribed: vec!["t".into()],
        session_timeout_ms: 0,
        rebalance_timeout_ms: u32::MAX,
        assigned: [("t".to_owned(), assigned.clone())].into_iter().collect(),
        pending_revocation: BTreeMap::new(),
        target: [("t".to_owned(), assigned)].into_iter().collect(),
        departed: false,
    };
    let persisted = Persisted {
        group: Some(vltava_messages::group_records::GroupValue {
            v: 1,
            assignor: "no-such-assignor".into(),
            created_ms: 1,
            group_epoch: 3,
            assignment_epoch: 9,
            partition_counts: counts(),
        }),
        members: [
            ("m1".to_owned(), value(vec![0, 1])),
            ("m2".to_owned(), value(vec![1, 2])),
        ]
        .into_iter()
        .collect(),
    };
    let mut g = group(now);
    assert_eq!(restore(&mut g, &persisted, now), 2);
    assert_eq!(g.assignor, Assignor::Sticky);
    assert_eq!(g.assignment_epoch, 3, "never past the group epoch");
    let m2: BTreeSet<TopicPartition> = g.members["m2"].assigned.clone();
    assert_eq!(m2, [("t".to_owned(), 2)].into_iter().collect());
    assert_eq!(g.members["m1"].session_timeout, SESSION_TIMEOUT_MIN);
    assert_eq!(g.members["m1"].rebalance_timeout, REBALANCE_TIMEOUT_MAX);
}
