//! One test per rule of the replica state machine, each driving it through its public
//! transitions as the partition actor would.

use super::*;

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);

type State = ReplicaState<u32>;

fn log(log_end: u64, flushed: u64, latest_epoch: Option<u32>) -> LocalLog {
    LocalLog {
        log_start_offset: Offset(0),
        log_end_offset: Offset(log_end),
        flushed_offset: Offset(flushed),
        latest_epoch: latest_epoch.map(LeaderEpoch),
    }
}

fn isr(nodes: &[NodeId]) -> BTreeSet<NodeId> {
    nodes.iter().copied().collect()
}

fn assignment(
    leader: Option<NodeId>,
    epoch: u32,
    partition_epoch: u32,
    members: &[NodeId],
) -> Assignment {
    Assignment {
        leader,
        leader_epoch: LeaderEpoch(epoch),
        partition_epoch: PartitionEpoch(partition_epoch),
        replicas: vec![A, B, C],
        isr: isr(members),
        target_replicas: None,
    }
}

/// `A` leading epoch 1 of replicas A, B, C with the given ISR, over an empty log.
fn leader(config: ReplicaConfig, members: &[NodeId], now: Instant) -> State {
    let mut state = State::open(A, config, log(0, 0, None), None);
    state
        .become_leader(assignment(Some(A), 1, 1, members), now)
        .unwrap();
    state
}

fn report(follower: NodeId, log_end: u64, flushed: u64) -> FollowerReport {
    FollowerReport {
        follower,
        leader_epoch: LeaderEpoch(1),
        log_end_offset: Offset(log_end),
        flushed_offset: Offset(flushed),
    }
}

/// Appends offsets up to `log_end` on the leader with `acks`, the local log flushed to
/// `flushed`.
fn append(
    state: &mut State,
    log_end: u64,
    flushed: u64,
    acks: Acks,
    waiter: u32,
    now: Instant,
) -> Vec<Effect<u32>> {
    state.admit_append(acks).unwrap();
    state.appended(
        log(log_end, flushed, Some(1)),
        Offset(log_end - 1),
        acks,
        waiter,
        now,
    )
}

fn acknowledged(effects: &[Effect<u32>]) -> Vec<u32> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Acknowledge { waiters } => Some(waiters.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn proposals(effects: &[Effect<u32>]) -> Vec<BTreeSet<NodeId>> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ProposeIsr(p) => Some(p.isr.clone()),
            _ => None,
        })
        .collect()
}

/// The controller's answer committing `members` at `partition_epoch`, for a proposal based on
/// the epoch before.
fn committed(partition_epoch: u32, members: &[NodeId]) -> IsrAnswer {
    IsrAnswer {
        proposed_at: PartitionEpoch(partition_epoch - 1),
        committed: CommittedIsr {
            leader_epoch: LeaderEpoch(1),
            partition_epoch: PartitionEpoch(partition_epoch),
            isr: isr(members),
        },
    }
}

#[test]
fn with_fsync_the_high_watermark_is_the_lowest_flushed_offset_of_the_isr_leader_included() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    append(&mut s, 10, 5, Acks::Leader, 0, now);
    s.follower_fetched(report(B, 10, 8), now).unwrap();
    let answer = s.follower_fetched(report(C, 10, 9), now).unwrap();
    assert_eq!(
        answer.high_watermark,
        Offset(5),
        "the leader's own flushed offset counts"
    );
    s.local_log_changed(log(10, 10, Some(1)), now);
    assert_eq!(
        s.high_watermark(),
        Offset(8),
        "B's flushed offset is the lowest now"
    );
    s.follower_fetched(report(B, 10, 10), now).unwrap();
    assert_eq!(s.high_watermark(), Offset(9));
}

/// A flush report sent after a fetch can be taken before it (the leader serves one
/// connection's requests concurrently, and a parked fetch reports again when it wakes): the
/// older report, with a lower flushed offset for a log end that covers the known one, must not
/// take the follower's flushed offset back, or the high watermark waits for the next fetch.
/// A report whose log end is below the known flushed offset is from a log that lost it and is
/// taken as it is.
#[test]
fn an_older_report_taken_after_a_flush_report_keeps_the_flushed_offset() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    append(&mut s, 10, 10, Acks::Leader, 0, now);
    s.follower_fetched(report(C, 10, 10), now).unwrap();
    // B's flush report (10 flushed) overtakes the fetch it sent before (4 flushed).
    s.follower_fetched(report(B, 10, 10), now).unwrap();
    assert_eq!(s.high_watermark(), Offset(10));
    s.follower_fetched(report(B, 10, 4), now).unwrap();
    assert_eq!(s.follower(B).unwrap().flushed_offset, Some(Offset(10)));
    append(&mut s, 20, 20, Acks::Leader, 1, now);
    s.follower_fetched(report(C, 20, 20), now).unwrap();
    s.follower_fetched(report(B, 20, 12), now).unwrap();
    assert_eq!(
        s.follower(B).unwrap().flushed_offset,
        Some(Offset(12)),
        "a newer flushed offset is taken"
    );
    assert_eq!(s.high_watermark(), Offset(12));
    // A log emptied below what it had flushed: taken as reported.
    s.follower_fetched(report(B, 3, 3), now).unwrap();
    assert_eq!(s.follower(B).unwrap().flushed_offset, Some(Offset(3)));
    assert_eq!(s.follower(B).unwrap().log_end_offset, Some(Offset(3)));
    assert_eq!(
        s.high_watermark(),
        Offset(12),
        "the high watermark never moves back"
    );
}

#[test]
fn without_fsync_the_high_watermark_is_the_lowest_log_end_of_the_isr() {
    let now = Instant::now();
    let config = ReplicaConfig {
        durability: Durability::None,
        ..ReplicaConfig::default()
    };
    let mut s = leader(config, &[A, B, C], now);
    append(&mut s, 10, 0, Acks::Leader, 0, now);
    s.follower_fetched(report(B, 8, 0), now).unwrap();
    s.follower_fetched(report(C, 9, 0), now).unwrap();
    assert_eq!(s.high_watermark(), Offset(8));
}

#[test]
fn the_high_watermark_advances_only_while_the_isr_has_min_insync_replicas() {
    let now = Instant::now();
    // Three replicas, so two must be in sync; the ISR is the leader alone.
    let mut s = leader(ReplicaConfig::default(), &[A], now);
    assert_eq!(s.min_insync_replicas(), 2);
    let effects = append(&mut s, 10, 10, Acks::Leader, 7, now);
    assert_eq!(
        acknowledged(&effects),
        vec![7],
        "acks=1 answers after the append"
    );
    assert_eq!(s.high_watermark(), Offset(0));
    assert_eq!(
        s.admit_append(Acks::All),
        Err(ReplicaError::NotEnoughReplicas {
            isr_count: 1,
            min: 2
        }),
        "acks=all is refused before anything is written"
    );
    // With min.insync.replicas 1 the leader alone moves it.
    let config = ReplicaConfig {
        min_insync_replicas: Some(1),
        ..ReplicaConfig::default()
    };
    let mut s = leader(config, &[A], now);
    append(&mut s, 10, 10, Acks::All, 7, now);
    assert_eq!(s.high_watermark(), Offset(10));
}

#[test]
fn min_insync_replicas_defaults_to_a_majority_of_the_replicas() {
    let defaults: Vec<usize> = [1, 2, 3, 5].map(min_insync_replicas_default).to_vec();
    assert_eq!(defaults, vec![1, 2, 2, 3]);
}

/// A move from A alone to B alone has both as replicas until B is in sync; counting the
/// majority over both would refuse every `acks=all` write meanwhile, so it counts the target.
#[test]
fn while_a_reassignment_moves_the_partition_the_default_min_insync_replicas_counts_its_target() {
    let now = Instant::now();
    let mut s = State::open(A, ReplicaConfig::default(), log(0, 0, None), None);
    let moving = Assignment {
        leader: Some(A),
        leader_epoch: LeaderEpoch(1),
        partition_epoch: PartitionEpoch(1),
        replicas: vec![B, A],
        isr: isr(&[A]),
        target_replicas: Some(vec![B]),
    };
    s.become_leader(moving, now).unwrap();
    assert_eq!(s.min_insync_replicas(), 1);
    assert_eq!(s.admit_append(Acks::All), Ok(()));
    let settled = Assignment {
        leader: Some(A),
        leader_epoch: LeaderEpoch(2),
        partition_epoch: PartitionEpoch(2),
        replicas: vec![B, A],
        isr: isr(&[A]),
        target_replicas: None,
    };
    s.become_leader(settled, now).unwrap();
    assert_eq!(s.min_insync_replicas(), 2, "a majority of both replicas");
}

#[test]
fn a_follower_that_has_not_fetched_in_this_epoch_holds_the_high_watermark_back() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    append(&mut s, 10, 10, Acks::Leader, 0, now);
    s.follower_fetched(report(B, 10, 10), now).unwrap();
    assert_eq!(
        s.high_watermark(),
        Offset(0),
        "C is in the ISR and unheard of"
    );
    s.follower_fetched(report(C, 10, 10), now).unwrap();
    assert_eq!(s.high_watermark(), Offset(10));
}

#[test]
fn acks_all_is_acknowledged_once_the_batch_is_below_the_high_watermark() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    let effects = append(&mut s, 5, 5, Acks::All, 7, now);
    assert!(acknowledged(&effects).is_empty());
    let effects = append(&mut s, 9, 9, Acks::All, 8, now);
    assert!(acknowledged(&effects).is_empty());
    s.follower_fetched(report(B, 9, 9), now).unwrap();
    let answer = s.follower_fetched(report(C, 6, 5), now).unwrap();
    assert_eq!(
        answer.effects,
        vec![
            Effect::PublishHighWatermark {
                high_watermark: Offset(5)
            },
            Effect::Acknowledge { waiters: vec![7] },
        ],
        "published before the producer hears back; the second batch still waits"
    );
    let answer = s.follower_fetched(report(C, 9, 9), now).unwrap();
    assert_eq!(acknowledged(&answer.effects), vec![8]);
    assert_eq!(s.waiting_count(), 0);
}

#[test]
fn a_shrink_is_proposed_after_the_lag_time_and_applied_only_when_committed() {
    let now = Instant::now();
    let lag = REPLICA_LAG_TIME_MAX_DEFAULT;
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    append(&mut s, 10, 10, Acks::Leader, 0, now);
    s.follower_fetched(report(C, 4, 4), now).unwrap();
    // B keeps up; C stays at offset 4.
    let mut t = now;
    while t < now + lag {
        t += Duration::from_secs(1);
        s.follower_fetched(report(B, 10, 10), t).unwrap();
        assert!(
            proposals(&s.tick(t)).is_empty(),
            "no shrink within the lag time"
        );
    }
    let t = t + Duration::from_secs(1);
    let effects = s.tick(t);
    assert_eq!(proposals(&effects), vec![isr(&[A, B])]);
    assert_eq!(
        s.isr(),
        Some(&isr(&[A, B, C])),
        "not applied before it is committed"
    );
    assert_eq!(
        s.high_watermark(),
        Offset(4),
        "still over the old, larger ISR"
    );
    let effects = s.isr_answered(committed(2, &[A, B]), t).unwrap();
    assert_eq!(s.isr(), Some(&isr(&[A, B])));
    assert!(s.pending_isr().is_none());
    assert_eq!(
        effects,
        vec![Effect::PublishHighWatermark {
            high_watermark: Offset(10)
        }]
    );
}

/// A follower that stopped fetching leaves the ISR after the lag time, and is not proposed
/// back although its last report still reaches the high watermark of the idle partition:
/// only a fetch that catches up again brings it back (a cluster test found the dead follower
/// proposed back at once, and acks=all answers failing each time the ISR flapped).
#[test]
fn a_follower_that_stopped_fetching_is_not_proposed_back_into_the_isr() {
    let now = Instant::now();
    let lag = REPLICA_LAG_TIME_MAX_DEFAULT;
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    append(&mut s, 10, 10, Acks::Leader, 0, now);
    s.follower_fetched(report(B, 10, 10), now).unwrap();
    s.follower_fetched(report(C, 10, 10), now).unwrap();
    assert_eq!(s.high_watermark(), Offset(10));
    // C dies; B keeps fetching. Nothing new is written.
    let mut t = now;
    while t <= now + lag {
        t += Duration::from_secs(1);
        s.follower_fetched(report(B, 10, 10), t).unwrap();
        s.tick(t);
    }
    assert_eq!(s.pending_isr().map(|p| p.isr.clone()), Some(isr(&[A, B])));
    s.isr_answered(committed(2, &[A, B]), t).unwrap();
    assert_eq!(s.isr(), Some(&isr(&[A, B])));
    for _ in 0..5 {
        t += Duration::from_secs(1);
        let mut effects = s.follower_fetched(report(B, 10, 10), t).unwrap().effects;
        effects.extend(s.tick(t));
        assert!(
            proposals(&effects).is_empty(),
            "C's old report must not bring it back: {effects:?}"
        );
    }
    // C comes back and fetches up to the log end: it is proposed back.
    t += Duration::from_secs(1);
    let effects = s.follower_fetched(report(C, 10, 10), t).unwrap().effects;
    assert_eq!(proposals(&effects), vec![isr(&[A, B, C])]);
}

#[test]
fn a_follower_that_reaches_the_log_end_the_leader_had_at_its_last_fetch_stays_in_sync() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    // The leader appends between every two fetches of B: B never sees the current log end,
    // but each fetch reaches what the log end was at its previous one. C lags for good.
    let mut end = 10;
    append(&mut s, end, end, Acks::Leader, 0, now);
    s.follower_fetched(report(B, 0, 0), now).unwrap();
    let mut t = now;
    let mut proposed = Vec::new();
    for _ in 0..30 {
        t += Duration::from_secs(1);
        let reached = end;
        end += 10;
        proposed.extend(proposals(&append(&mut s, end, end, Acks::Leader, 0, t)));
        let answer = s.follower_fetched(report(B, reached, reached), t).unwrap();
        proposed.extend(proposals(&answer.effects));
        let answer = s.follower_fetched(report(C, 1, 1), t).unwrap();
        proposed.extend(proposals(&answer.effects));
        proposed.extend(proposals(&s.tick(t)));
    }
    // Unanswered, the proposal is sent again every retry interval.
    proposed.dedup();
    assert_eq!(proposed, vec![isr(&[A, B])], "C is dropped, B is not");
}

#[test]
fn a_follower_rejoins_when_it_reaches_the_high_watermark_and_the_epoch_start() {
    let now = Instant::now();
    // A leads epoch 2 over a log of 10 offsets, the checkpointed high watermark 4: the
    // epoch starts at 10.
    let mut s = State::open(
        A,
        ReplicaConfig::default(),
        log(10, 10, Some(1)),
        Some(Offset(4)),
    );
    s.become_leader(assignment(Some(A), 2, 1, &[A, B]), now)
        .unwrap();
    let at = |follower, end, flushed| FollowerReport {
        leader_epoch: LeaderEpoch(2),
        ..report(follower, end, flushed)
    };
    let answer = s.follower_fetched(at(C, 8, 8), now).unwrap();
    assert!(
        proposals(&answer.effects).is_empty(),
        "past the high watermark (4) but short of the epoch start (10)"
    );
    let answer = s.follower_fetched(at(C, 10, 9), now).unwrap();
    assert!(
        proposals(&answer.effects).is_empty(),
        "with fsync durability it is its flushed offset that must reach them"
    );
    let answer = s.follower_fetched(at(C, 10, 10), now).unwrap();
    assert_eq!(proposals(&answer.effects), vec![isr(&[A, B, C])]);
}

#[test]
fn while_an_expansion_is_pending_the_joining_follower_holds_the_high_watermark() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B], now);
    append(&mut s, 10, 10, Acks::Leader, 0, now);
    s.follower_fetched(report(B, 10, 10), now).unwrap();
    assert_eq!(s.high_watermark(), Offset(10));
    append(&mut s, 20, 20, Acks::Leader, 0, now);
    let answer = s.follower_fetched(report(C, 12, 12), now).unwrap();
    assert_eq!(proposals(&answer.effects), vec![isr(&[A, B, C])]);
    s.follower_fetched(report(B, 20, 20), now).unwrap();
    assert_eq!(
        s.high_watermark(),
        Offset(12),
        "the controller may already have C in the ISR and elect it"
    );
    // Refused: until the partition epoch moves, the refused proposal could still commit
    // (a late duplicate), so C still counts.
    let refused = IsrAnswer {
        proposed_at: PartitionEpoch(1),
        committed: CommittedIsr {
            leader_epoch: LeaderEpoch(1),
            partition_epoch: PartitionEpoch(1),
            isr: isr(&[A, B]),
        },
    };
    s.isr_answered(refused, now).unwrap();
    assert!(s.pending_isr().is_none());
    s.follower_fetched(report(B, 20, 20), now).unwrap();
    assert_eq!(s.high_watermark(), Offset(12));
    s.isr_committed(
        CommittedIsr {
            leader_epoch: LeaderEpoch(1),
            partition_epoch: PartitionEpoch(2),
            isr: isr(&[A, B]),
        },
        now,
    )
    .unwrap();
    assert_eq!(
        s.high_watermark(),
        Offset(20),
        "the partition epoch moved without C"
    );
}

/// Found by the fault suite (tests/tests/faults, `kills`: SIGKILL of the controller, round 15
/// of a 20-round run): the controller's node also followed four partitions; once it was
/// fenced and left their ISRs, their leader proposed it straight back, since its last fetch
/// still reached the high watermark (held back by a follower that had restarted a moment
/// before). The controller refused a fenced node, but a proposal's members count for the high
/// watermark until the partition epoch moves, so the high watermark stayed at the dead node's
/// last report and acks=all stopped on all four partitions until the node came back. Now a
/// follower that leaves the ISR forgets its progress and rejoins only on a newer fetch.
#[test]
fn a_follower_that_left_the_isr_is_not_proposed_back_on_its_last_report() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    append(&mut s, 10, 10, Acks::Leader, 0, now);
    s.follower_fetched(report(B, 10, 10), now).unwrap();
    // C restarted a moment ago and is behind: the high watermark waits for it.
    s.follower_fetched(report(C, 6, 6), now).unwrap();
    assert_eq!(s.high_watermark(), Offset(6));
    // B's node dies and the controller fences it: B leaves the ISR.
    let effects = s
        .isr_committed(
            CommittedIsr {
                leader_epoch: LeaderEpoch(1),
                partition_epoch: PartitionEpoch(2),
                isr: isr(&[A, C]),
            },
            now,
        )
        .unwrap();
    assert!(
        proposals(&effects).is_empty(),
        "B's last report reaches the high watermark, but it predates B's leaving"
    );
    let effects = append(&mut s, 20, 20, Acks::All, 7, now);
    assert!(proposals(&effects).is_empty());
    assert!(proposals(&s.tick(now + ISR_PROPOSAL_RETRY_INTERVAL)).is_empty());
    let answer = s.follower_fetched(report(C, 20, 20), now).unwrap();
    assert!(proposals(&answer.effects).is_empty());
    assert_eq!(
        s.high_watermark(),
        Offset(20),
        "the ISR A, C alone decides the high watermark"
    );
    assert_eq!(acknowledged(&answer.effects), vec![7]);
    // B fetching again (its node back) is a report made after it left: it rejoins.
    let answer = s.follower_fetched(report(B, 20, 20), now).unwrap();
    assert_eq!(proposals(&answer.effects), vec![isr(&[A, B, C])]);
}

#[test]
fn a_lost_proposal_is_sent_again_and_a_refused_one_waits_before_the_next() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B], now);
    let answer = s.follower_fetched(report(C, 0, 0), now).unwrap();
    assert_eq!(proposals(&answer.effects), vec![isr(&[A, B, C])]);
    assert!(proposals(&s.tick(now + ISR_PROPOSAL_RETRY_INTERVAL / 2)).is_empty());
    let t = now + ISR_PROPOSAL_RETRY_INTERVAL;
    assert_eq!(proposals(&s.tick(t)), vec![isr(&[A, B, C])], "sent again");
    let refused = IsrAnswer {
        proposed_at: PartitionEpoch(1),
        committed: CommittedIsr {
            leader_epoch: LeaderEpoch(1),
            partition_epoch: PartitionEpoch(1),
            isr: isr(&[A, B]),
        },
    };
    assert!(proposals(&s.isr_answered(refused, t).unwrap()).is_empty());
    assert!(proposals(&s.tick(t + Duration::from_millis(10))).is_empty());
    let later = t + ISR_PROPOSAL_RETRY_INTERVAL;
    assert_eq!(proposals(&s.tick(later)), vec![isr(&[A, B, C])]);
}

/// The controller leaves a fenced node out of an expansion and commits the rest at a new
/// partition epoch (ending the proposal, whose members the high watermark counted). The
/// leader then waits before proposing the node again, rather than a commit per fetch; and a
/// follower that stopped fetching is not proposed at all once its last fetch is old.
#[test]
fn an_expansion_committed_without_a_fenced_follower_waits_and_a_silent_one_is_not_proposed() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B], now);
    let answer = s.follower_fetched(report(C, 0, 0), now).unwrap();
    assert_eq!(proposals(&answer.effects), vec![isr(&[A, B, C])]);
    // C's node is fenced: the controller commits A, B at partition epoch 2.
    let effects = s.isr_answered(committed(2, &[A, B]), now).unwrap();
    assert!(proposals(&effects).is_empty(), "no ping-pong at once");
    assert_eq!(s.pending_isr(), None);
    let soon = now + ISR_PROPOSAL_RETRY_INTERVAL / 2;
    let answer = s.follower_fetched(report(C, 0, 0), soon).unwrap();
    assert!(proposals(&answer.effects).is_empty(), "still waiting");
    // C keeps fetching (it is alive, say the controller unfenced it): proposed again.
    let later = now + ISR_PROPOSAL_RETRY_INTERVAL;
    let answer = s.follower_fetched(report(C, 0, 0), later).unwrap();
    assert_eq!(proposals(&answer.effects), vec![isr(&[A, B, C])]);
    s.isr_answered(committed(3, &[A, B]), later).unwrap();
    // C stops fetching: once its last fetch is older than the bound it is not proposed.
    let silent = later + ISR_EXPANSION_FETCH_RECENT + Duration::from_millis(1);
    assert!(proposals(&s.tick(silent)).is_empty());
}

#[test]
fn a_late_answer_to_an_older_proposal_leaves_the_current_one_pending() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B], now);
    s.follower_fetched(report(C, 0, 0), now).unwrap();
    s.isr_answered(committed(2, &[A, B, C]), now).unwrap();
    assert_eq!(s.isr(), Some(&isr(&[A, B, C])));
    // B lags: a shrink based on partition epoch 2.
    let t = now + REPLICA_LAG_TIME_MAX_DEFAULT + Duration::from_secs(1);
    let answer = s.follower_fetched(report(C, 0, 0), t).unwrap();
    assert_eq!(proposals(&answer.effects), vec![isr(&[A, C])]);
    // The first answer again, late: it answers a proposal based on epoch 1.
    s.isr_answered(committed(2, &[A, B, C]), t).unwrap();
    assert_eq!(s.pending_isr().map(|p| p.isr.clone()), Some(isr(&[A, C])));
}

#[test]
fn not_enough_replicas_after_append_when_the_isr_shrinks_below_the_minimum_meanwhile() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    append(&mut s, 5, 5, Acks::All, 7, now);
    let t = now + REPLICA_LAG_TIME_MAX_DEFAULT + Duration::from_secs(1);
    assert_eq!(proposals(&s.tick(t)), vec![isr(&[A])]);
    assert_eq!(s.waiting_count(), 1, "a pending shrink fails nobody");
    let effects = s.isr_answered(committed(2, &[A]), t).unwrap();
    assert_eq!(
        effects,
        vec![Effect::Fail {
            waiters: vec![7],
            error: ReplicaError::NotEnoughReplicasAfterAppend {
                isr_count: 1,
                min: 2
            },
        }]
    );
    assert_eq!(
        ErrorCode::from(&ReplicaError::NotEnoughReplicasAfterAppend {
            isr_count: 1,
            min: 2
        }),
        ErrorCode::NotEnoughReplicasAfterAppend
    );
}

#[test]
fn a_new_leader_records_its_epoch_start_and_offset_queries_wait_until_the_high_watermark_reaches_it()
 {
    let now = Instant::now();
    let mut s = State::open(
        A,
        ReplicaConfig::default(),
        log(10, 10, Some(1)),
        Some(Offset(6)),
    );
    let effects = s
        .become_leader(assignment(Some(A), 2, 1, &[A, B, C]), now)
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::RecordEpochStart {
            leader_epoch: LeaderEpoch(2),
            start_offset: Offset(10),
        }]
    );
    let not_yet = ReplicaError::OffsetNotAvailable {
        high_watermark: Offset(6),
        epoch_start_offset: Offset(10),
    };
    assert_eq!(s.check_offset_query(), Err(not_yet.clone()));
    assert!(ErrorCode::from(&not_yet).is_retriable());
    let at = |follower| FollowerReport {
        leader_epoch: LeaderEpoch(2),
        ..report(follower, 10, 10)
    };
    s.follower_fetched(at(B), now).unwrap();
    s.follower_fetched(at(C), now).unwrap();
    assert_eq!(s.check_offset_query(), Ok(()));
}

#[test]
fn the_high_watermark_opens_at_the_checkpoint_or_the_log_end_if_lower() {
    let open = |checkpoint| State::open(A, ReplicaConfig::default(), log(12, 8, None), checkpoint);
    assert_eq!(open(Some(Offset(20))).high_watermark(), Offset(12));
    assert_eq!(open(Some(Offset(5))).high_watermark(), Offset(5));
    assert_eq!(open(None).high_watermark(), Offset(0));
}

/// A follower of B at epoch 4 whose log ends at 9 with epochs 1 from 0 and 2 from 5: it asks
/// about epoch 2.
fn follower_with_two_epochs(now: Instant) -> (State, LeaderEpochCache) {
    let mut cache = LeaderEpochCache::default();
    cache.assign(LeaderEpoch(1), Offset(0));
    cache.assign(LeaderEpoch(2), Offset(5));
    let mut s = State::open(
        C,
        ReplicaConfig::default(),
        log(9, 9, Some(2)),
        Some(Offset(3)),
    );
    let effects = s
        .become_follower(assignment(Some(B), 4, 1, &[B, C]), now)
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::AskEpochEnd {
            leader: B,
            leader_epoch: LeaderEpoch(4),
            epoch: LeaderEpoch(2),
        }]
    );
    (s, cache)
}

fn epoch_end(requested: u32, end: Option<(u32, u64)>) -> EpochEndAnswer {
    EpochEndAnswer {
        leader_epoch: LeaderEpoch(4),
        requested: LeaderEpoch(requested),
        end: end.map(|(e, o)| (LeaderEpoch(e), Offset(o))),
    }
}

#[test]
fn a_follower_cuts_what_the_leader_does_not_have_before_it_fetches() {
    let now = Instant::now();
    let (mut s, cache) = follower_with_two_epochs(now);
    assert_eq!(s.fetching_from(), None);
    let effects = s
        .epoch_end_answered(epoch_end(2, Some((2, 7))), &cache, now)
        .unwrap();
    assert_eq!(effects, vec![Effect::Truncate { offset: Offset(7) }]);
    assert_eq!(s.fetching_from(), None, "not before the cut is done");
    let effects = s.log_truncated(log(7, 7, Some(2)), now);
    assert_eq!(
        effects,
        vec![Effect::StartFetching {
            leader: B,
            leader_epoch: LeaderEpoch(4),
        }]
    );
    assert_eq!(s.fetching_from(), Some((B, LeaderEpoch(4))));
}

#[test]
fn a_follower_asks_again_when_the_leader_knows_only_an_older_epoch() {
    let now = Instant::now();
    let (mut s, mut cache) = follower_with_two_epochs(now);
    // The leader never saw epoch 2; its epoch 1 ends at 6. Everything from this log's epoch
    // 2 (offset 5) on goes, and the follower asks about epoch 1.
    let effects = s
        .epoch_end_answered(epoch_end(2, Some((1, 6))), &cache, now)
        .unwrap();
    assert_eq!(effects, vec![Effect::Truncate { offset: Offset(5) }]);
    cache.truncate_from_end(Offset(5));
    let effects = s.log_truncated(log(5, 5, Some(1)), now);
    assert_eq!(
        effects,
        vec![Effect::AskEpochEnd {
            leader: B,
            leader_epoch: LeaderEpoch(4),
            epoch: LeaderEpoch(1),
        }]
    );
    let effects = s
        .epoch_end_answered(epoch_end(1, Some((1, 6))), &cache, now)
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::StartFetching {
            leader: B,
            leader_epoch: LeaderEpoch(4),
        }],
        "nothing more to cut"
    );
}

/// Found by the fault suite (tests/tests/faults, `kills`: SIGKILL of the controller, round
/// 2): node 3 became leader of epoch 1 at offset 341 (the epoch start recorded) and was killed
/// before it appended anything; node 2 led epoch 2 from 341. Back as a follower, node 3 asked
/// about its latest epoch, 1, which node 2 never saw: node 2 answered "epoch 0 ends at 341",
/// where node 3's log ends, so there was nothing to cut and node 3 asked about epoch 1 again,
/// forever (no fetch, never back in the ISR, OffsetForLeaderEpoch requests without pause).
/// The cut must also drop the empty epoch's entry (`Log::truncate_to` at the log end does).
#[test]
fn a_follower_whose_latest_epoch_holds_no_batch_drops_it_and_fetches() {
    let now = Instant::now();
    let mut cache = LeaderEpochCache::default();
    cache.assign(LeaderEpoch(0), Offset(0));
    cache.assign(LeaderEpoch(1), Offset(9));
    let mut s = State::open(C, ReplicaConfig::default(), log(9, 9, Some(1)), None);
    let effects = s
        .become_follower(assignment(Some(B), 4, 1, &[B, C]), now)
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::AskEpochEnd {
            leader: B,
            leader_epoch: LeaderEpoch(4),
            epoch: LeaderEpoch(1),
        }]
    );
    // The leader knows epochs 0 and 2 (from 9): "epoch 0 ends at 9", this log's end.
    let effects = s
        .epoch_end_answered(epoch_end(1, Some((0, 9))), &cache, now)
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::Truncate { offset: Offset(9) }],
        "a cut at the log end, which drops epoch 1's entry"
    );
    cache.truncate_from_end(Offset(9));
    let effects = s.log_truncated(log(9, 9, Some(0)), now);
    assert_eq!(
        effects,
        vec![Effect::AskEpochEnd {
            leader: B,
            leader_epoch: LeaderEpoch(4),
            epoch: LeaderEpoch(0),
        }]
    );
    let effects = s
        .epoch_end_answered(epoch_end(0, Some((0, 9))), &cache, now)
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::StartFetching {
            leader: B,
            leader_epoch: LeaderEpoch(4),
        }]
    );
}

#[test]
fn a_late_or_impossible_epoch_end_answer_is_not_acted_on() {
    let now = Instant::now();
    let (mut s, cache) = follower_with_two_epochs(now);
    let mut other_epoch = epoch_end(2, Some((2, 1)));
    other_epoch.leader_epoch = LeaderEpoch(3);
    assert!(
        s.epoch_end_answered(other_epoch, &cache, now)
            .unwrap()
            .is_empty()
    );
    assert!(
        s.epoch_end_answered(epoch_end(1, Some((1, 1))), &cache, now)
            .unwrap()
            .is_empty(),
        "an answer to another question"
    );
    assert_eq!(
        s.epoch_end_answered(epoch_end(2, Some((3, 9))), &cache, now),
        Err(ControlError::EpochEndNewerThanAsked {
            requested: LeaderEpoch(2),
            answered: LeaderEpoch(3),
        })
    );
}

#[test]
fn a_follower_with_an_empty_log_fetches_at_once_and_a_lost_question_is_asked_again() {
    let now = Instant::now();
    let mut s = State::open(C, ReplicaConfig::default(), log(0, 0, None), None);
    let effects = s
        .become_follower(assignment(Some(B), 4, 1, &[B, C]), now)
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::StartFetching {
            leader: B,
            leader_epoch: LeaderEpoch(4),
        }]
    );
    let (mut s, _) = follower_with_two_epochs(now);
    assert!(s.tick(now + EPOCH_END_RETRY_INTERVAL / 2).is_empty());
    assert_eq!(
        s.tick(now + EPOCH_END_RETRY_INTERVAL),
        vec![Effect::AskEpochEnd {
            leader: B,
            leader_epoch: LeaderEpoch(4),
            epoch: LeaderEpoch(2),
        }]
    );
}

#[test]
#[should_panic(expected = "cut below the high watermark without unclean election")]
fn a_follower_cutting_below_its_high_watermark_is_a_bug_without_unclean_election() {
    let now = Instant::now();
    let (mut s, cache) = follower_with_two_epochs(now);
    // Its high watermark is 3; a leader without the offsets below it was not in the ISR.
    s.epoch_end_answered(epoch_end(2, Some((2, 1))), &cache, now)
        .unwrap();
    s.log_truncated(log(1, 1, Some(1)), now);
}

/// A leader whose retention removed the follower's epochs knows none that old: the follower
/// keeps what it knows committed (below its high watermark) and cuts the rest, then fetches
/// (and, if even that lies below the leader's log start, starts afresh there). It used to cut
/// everything to its log start, committed offsets too, which is a bug without unclean
/// election (asserted).
#[test]
fn a_leader_knowing_no_epoch_that_old_makes_the_follower_cut_to_its_high_watermark() {
    let now = Instant::now();
    let (mut s, cache) = follower_with_two_epochs(now);
    assert_eq!(s.high_watermark(), Offset(3));
    let effects = s
        .epoch_end_answered(epoch_end(2, None), &cache, now)
        .unwrap();
    assert_eq!(effects, vec![Effect::Truncate { offset: Offset(3) }]);
    let effects = s.log_truncated(log(3, 3, Some(1)), now);
    assert_eq!(
        effects,
        vec![Effect::StartFetching {
            leader: B,
            leader_epoch: LeaderEpoch(4),
        }]
    );
    assert_eq!(s.high_watermark(), Offset(3));
}

#[test]
fn with_unclean_election_a_follower_may_cut_below_its_high_watermark() {
    let now = Instant::now();
    let config = ReplicaConfig {
        unclean_leader_election: true,
        ..ReplicaConfig::default()
    };
    let mut cache = LeaderEpochCache::default();
    cache.assign(LeaderEpoch(1), Offset(0));
    let mut s = State::open(C, config, log(9, 9, Some(1)), Some(Offset(3)));
    s.become_follower(assignment(Some(B), 4, 1, &[B]), now)
        .unwrap();
    s.epoch_end_answered(epoch_end(1, None), &cache, now)
        .unwrap();
    s.log_truncated(log(0, 0, None), now);
    assert_eq!(s.high_watermark(), Offset(0));
    assert_eq!(s.fetching_from(), Some((B, LeaderEpoch(4))));
}

#[test]
fn a_followers_high_watermark_is_the_leaders_capped_by_its_log_end_and_never_goes_back() {
    let now = Instant::now();
    let mut s = State::open(C, ReplicaConfig::default(), log(0, 0, None), None);
    s.become_follower(assignment(Some(B), 4, 1, &[B, C]), now)
        .unwrap();
    let epoch = LeaderEpoch(4);
    let effects = s.fetch_applied(epoch, Offset(10), log(6, 0, Some(4)), now);
    assert_eq!(
        effects,
        vec![Effect::PublishHighWatermark {
            high_watermark: Offset(6)
        }]
    );
    s.fetch_applied(epoch, Offset(8), log(12, 0, Some(4)), now);
    assert_eq!(s.high_watermark(), Offset(8));
    assert!(
        s.fetch_applied(epoch, Offset(5), log(12, 0, Some(4)), now)
            .is_empty(),
        "a late answer with an older high watermark"
    );
    assert_eq!(s.high_watermark(), Offset(8));
    s.fetch_applied(LeaderEpoch(3), Offset(12), log(12, 0, Some(4)), now);
    assert_eq!(
        s.high_watermark(),
        Offset(8),
        "an answer from another epoch"
    );
}

#[test]
fn roles_change_in_place_and_a_demoted_leader_fails_its_waiting_answers() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    append(&mut s, 5, 5, Acks::All, 7, now);
    let effects = s
        .become_follower(assignment(Some(B), 2, 2, &[A, B, C]), now)
        .unwrap();
    assert_eq!(
        effects,
        vec![
            Effect::Fail {
                waiters: vec![7],
                error: ReplicaError::NotLeader { leader: Some(B) },
            },
            Effect::AskEpochEnd {
                leader: B,
                leader_epoch: LeaderEpoch(2),
                epoch: LeaderEpoch(1),
            },
        ]
    );
    assert_eq!(s.role(), RoleKind::Follower);
    assert_eq!(
        s.admit_append(Acks::Leader),
        Err(ReplicaError::NotLeader { leader: Some(B) })
    );
    let effects = s
        .become_leader(assignment(Some(A), 3, 3, &[A, B, C]), now)
        .unwrap();
    assert_eq!(
        effects,
        vec![
            Effect::StopFetching,
            Effect::RecordEpochStart {
                leader_epoch: LeaderEpoch(3),
                start_offset: Offset(5),
            },
        ]
    );
    assert_eq!(s.role(), RoleKind::Leader);
}

#[test]
fn a_leader_re_elected_in_a_newer_epoch_keeps_its_waiting_answers() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    append(&mut s, 5, 5, Acks::All, 7, now);
    s.become_leader(assignment(Some(A), 2, 2, &[A, B, C]), now)
        .unwrap();
    assert_eq!(s.waiting_count(), 1);
    let at = |follower| FollowerReport {
        leader_epoch: LeaderEpoch(2),
        ..report(follower, 5, 5)
    };
    s.follower_fetched(at(B), now).unwrap();
    let answer = s.follower_fetched(at(C), now).unwrap();
    assert_eq!(acknowledged(&answer.effects), vec![7]);
}

#[test]
fn stale_conflicting_and_unsafe_assignments_are_refused() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    s.become_leader(assignment(Some(A), 2, 2, &[A, B, C]), now)
        .unwrap();
    assert_eq!(
        s.become_follower(assignment(Some(B), 1, 3, &[A, B, C]), now),
        Err(ControlError::StaleLeaderEpoch {
            current: LeaderEpoch(2),
            received: LeaderEpoch(1),
        })
    );
    assert_eq!(
        s.become_follower(assignment(Some(B), 2, 3, &[A, B, C]), now),
        Err(ControlError::ConflictingLeader {
            leader_epoch: LeaderEpoch(2),
            current: Some(A),
            received: Some(B),
        })
    );
    assert!(
        s.become_leader(assignment(Some(A), 2, 2, &[A, B, C]), now)
            .unwrap()
            .is_empty(),
        "a repeat changes nothing"
    );
    let mut fresh = State::open(B, ReplicaConfig::default(), log(5, 5, Some(3)), None);
    assert_eq!(
        fresh.become_leader(assignment(Some(B), 4, 1, &[A, C]), now),
        Err(ControlError::LeaderNotInIsr { leader: B }),
        "no unclean election here"
    );
    assert_eq!(
        fresh.become_leader(assignment(Some(B), 3, 1, &[A, B, C]), now),
        Err(ControlError::EpochNotNewerThanLog {
            leader_epoch: LeaderEpoch(3),
            latest: LeaderEpoch(3),
        }),
        "a restarted leader of epoch 3 must not lead epoch 3 again"
    );
    assert_eq!(
        fresh.become_leader(assignment(Some(A), 4, 1, &[A, B, C]), now),
        Err(ControlError::WrongLeader { leader: Some(A) })
    );
    assert_eq!(fresh.role(), RoleKind::Unassigned);
}

#[test]
fn fetches_from_another_epoch_a_stranger_or_past_the_log_end_are_refused() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    s.become_leader(assignment(Some(A), 2, 2, &[A, B, C]), now)
        .unwrap();
    append(&mut s, 5, 5, Acks::Leader, 0, now);
    let at = |epoch, follower, end, flushed| FollowerReport {
        leader_epoch: LeaderEpoch(epoch),
        ..report(follower, end, flushed)
    };
    let mut refused = |r| s.follower_fetched(r, now).unwrap_err();
    assert_eq!(
        refused(at(1, B, 5, 5)),
        ReplicaError::FencedLeaderEpoch {
            current: LeaderEpoch(2),
            received: LeaderEpoch(1)
        }
    );
    assert_eq!(
        refused(at(3, B, 5, 5)),
        ReplicaError::UnknownLeaderEpoch {
            current: LeaderEpoch(2),
            received: LeaderEpoch(3)
        }
    );
    assert_eq!(
        refused(at(2, B, 6, 5)),
        ReplicaError::FetchOffsetPastLogEnd {
            offset: Offset(6),
            log_end_offset: Offset(5)
        }
    );
    assert_eq!(
        refused(at(2, B, 4, 5)),
        ReplicaError::FlushedPastLogEnd {
            log_end_offset: Offset(4),
            flushed_offset: Offset(5)
        }
    );
    assert_eq!(
        refused(at(2, NodeId(9), 5, 5)),
        ReplicaError::NotAReplica { node: NodeId(9) }
    );
    let (mut follower, _) = follower_with_two_epochs(now);
    assert_eq!(
        follower.follower_fetched(at(4, A, 0, 0), now).unwrap_err(),
        ReplicaError::NotLeader { leader: Some(B) }
    );
    assert_eq!(
        follower.check_offset_query(),
        Err(ReplicaError::NotLeader { leader: Some(B) })
    );
}

#[test]
fn a_follower_learns_committed_isr_changes_and_ignores_older_ones() {
    let now = Instant::now();
    let (mut s, _) = follower_with_two_epochs(now);
    let change = |partition_epoch, members: &[NodeId]| CommittedIsr {
        leader_epoch: LeaderEpoch(4),
        partition_epoch: PartitionEpoch(partition_epoch),
        isr: isr(members),
    };
    s.isr_committed(change(3, &[A, B, C]), now).unwrap();
    assert_eq!(s.isr(), Some(&isr(&[A, B, C])));
    s.isr_committed(change(2, &[B]), now).unwrap();
    assert_eq!(s.isr(), Some(&isr(&[A, B, C])), "older than what it has");
    assert_eq!(
        s.isr_committed(
            CommittedIsr {
                leader_epoch: LeaderEpoch(5),
                ..change(4, &[B])
            },
            now
        ),
        Err(ControlError::UnknownLeaderEpoch {
            current: LeaderEpoch(4),
            received: LeaderEpoch(5),
        })
    );
}

#[test]
fn waiting_acks_all_answers_are_bounded() {
    let now = Instant::now();
    let mut s = leader(ReplicaConfig::default(), &[A, B, C], now);
    for i in 0..ACK_WAITERS_MAX {
        let end = i as u64 + 1;
        append(&mut s, end, end, Acks::All, 0, now);
    }
    assert_eq!(
        s.admit_append(Acks::All),
        Err(ReplicaError::Overloaded {
            waiters_max: ACK_WAITERS_MAX
        })
    );
    assert_eq!(s.admit_append(Acks::Leader), Ok(()), "acks=1 does not wait");
}

/// A leader moved away before it wrote anything in its epoch (an idle partition under
/// `elect-leader` or `elect-preferred`) holds an epoch entry at its log end with no batch.
/// Its new leader never saw that epoch and answers with the one before, ending at that same
/// log end: nothing is to be cut, but the entry must go (a truncation to the log end drops
/// it), or the follower asks about the same epoch again and again and never fetches. It used
/// to loop so.
#[test]
fn a_demoted_idle_leader_drops_its_empty_epoch_and_fetches() {
    let now = Instant::now();
    let mut cache = LeaderEpochCache::default();
    cache.assign(LeaderEpoch(1), Offset(0));
    let mut s = State::open(C, ReplicaConfig::default(), log(9, 9, Some(1)), None);
    let effects = s
        .become_leader(assignment(Some(C), 3, 1, &[B, C]), now)
        .unwrap();
    assert!(effects.contains(&Effect::RecordEpochStart {
        leader_epoch: LeaderEpoch(3),
        start_offset: Offset(9),
    }));
    cache.assign(LeaderEpoch(3), Offset(9));
    // A flush completes (the high-watermark checkpoint's, say): the state learns the epoch.
    let _ = s.local_log_changed(log(9, 9, Some(3)), now);
    let effects = s
        .become_follower(assignment(Some(B), 4, 2, &[B, C]), now)
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::AskEpochEnd {
            leader: B,
            leader_epoch: LeaderEpoch(4),
            epoch: LeaderEpoch(3),
        }]
    );
    let effects = s
        .epoch_end_answered(epoch_end(3, Some((1, 9))), &cache, now)
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::Truncate { offset: Offset(9) }],
        "a truncation to the log end, which drops the empty epoch's entry"
    );
    cache.truncate_from_end(Offset(9));
    let effects = s.log_truncated(log(9, 9, Some(1)), now);
    assert_eq!(
        effects,
        vec![Effect::AskEpochEnd {
            leader: B,
            leader_epoch: LeaderEpoch(4),
            epoch: LeaderEpoch(1),
        }]
    );
    let effects = s
        .epoch_end_answered(epoch_end(1, Some((1, 9))), &cache, now)
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::StartFetching {
            leader: B,
            leader_epoch: LeaderEpoch(4),
        }]
    );
}

/// A follower fetching in epoch 4 from B over a log ending at 9.
fn fetching_follower(now: Instant) -> State {
    let (mut s, cache) = follower_with_two_epochs(now);
    let effects = s
        .epoch_end_answered(epoch_end(2, Some((2, 9))), &cache, now)
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::StartFetching {
            leader: B,
            leader_epoch: LeaderEpoch(4),
        }]
    );
    s
}

fn out_of_range(fetch_offset: u64, start: u64, end: u64) -> FetchOutOfRange {
    FetchOutOfRange {
        leader_epoch: LeaderEpoch(4),
        fetch_offset: Offset(fetch_offset),
        leader_log_start_offset: Offset(start),
        leader_log_end_offset: Offset(end),
    }
}

/// Issue 13: a follower whose fetch offset is below the leader's log start (retention removed
/// what it needs next while it was away) empties its log and starts it at the leader's log
/// start, its high watermark there, then fetches from it.
#[test]
fn a_follower_behind_the_leaders_log_start_starts_afresh_there_and_fetches() {
    let now = Instant::now();
    let mut s = fetching_follower(now);
    assert_eq!(s.high_watermark(), Offset(3));
    let effects = s.fetch_out_of_range(out_of_range(9, 40, 70), now).unwrap();
    assert_eq!(
        effects,
        vec![Effect::TruncateFullyAndStartAt { offset: Offset(40) }]
    );
    assert_eq!(s.fetching_from(), None, "nothing is appended meanwhile");
    let fresh = LocalLog {
        log_start_offset: Offset(40),
        log_end_offset: Offset(40),
        flushed_offset: Offset(40),
        latest_epoch: None,
    };
    let effects = s.log_started_afresh(fresh, now);
    assert_eq!(
        effects,
        vec![
            Effect::PublishHighWatermark {
                high_watermark: Offset(40)
            },
            Effect::StartFetching {
                leader: B,
                leader_epoch: LeaderEpoch(4),
            }
        ]
    );
    assert_eq!(s.high_watermark(), Offset(40));
    assert_eq!(s.log(), fresh);
    // It appends from there as any follower.
    let effects = s.fetch_applied(LeaderEpoch(4), Offset(60), log_from(40, 50, 50, 4), now);
    assert_eq!(
        effects,
        vec![Effect::PublishHighWatermark {
            high_watermark: Offset(50)
        }]
    );
}

fn log_from(start: u64, end: u64, flushed: u64, latest_epoch: u32) -> LocalLog {
    LocalLog {
        log_start_offset: Offset(start),
        log_end_offset: Offset(end),
        flushed_offset: Offset(flushed),
        latest_epoch: Some(LeaderEpoch(latest_epoch)),
    }
}

/// A fetch offset past the leader's log end means this log holds offsets the leader does
/// not (only a leader whose log went back within its epoch explains it): fetching stops and
/// the follower asks where its latest epoch ends, then truncates as a new follower does.
/// Before, the fetcher retried the refused fetch forever.
#[test]
fn a_follower_past_the_leaders_log_end_asks_where_to_truncate() {
    let now = Instant::now();
    let mut s = fetching_follower(now);
    let effects = s.fetch_out_of_range(out_of_range(9, 0, 7), now).unwrap();
    assert_eq!(
        effects,
        vec![
            Effect::StopFetching,
            Effect::AskEpochEnd {
                leader: B,
                leader_epoch: LeaderEpoch(4),
                epoch: LeaderEpoch(2),
            }
        ]
    );
    assert_eq!(s.fetching_from(), None);
}

/// Out-of-range answers to an older fetch (another epoch, or an offset that is no longer the
/// log end) change nothing; one whose bounds hold the fetch offset is refused; a log past the
/// leader's end with no epoch to ask about is refused (the fetcher keeps retrying until a new
/// epoch); and a replica that is not fetching ignores them all.
#[test]
fn stale_or_contradictory_out_of_range_answers_are_not_acted_on() {
    let now = Instant::now();
    let mut s = fetching_follower(now);
    let mut other_epoch = out_of_range(9, 40, 70);
    other_epoch.leader_epoch = LeaderEpoch(3);
    assert!(s.fetch_out_of_range(other_epoch, now).unwrap().is_empty());
    assert!(
        s.fetch_out_of_range(out_of_range(8, 40, 70), now)
            .unwrap()
            .is_empty(),
        "a fetch offset that is not the log end any more"
    );
    assert_eq!(
        s.fetch_out_of_range(out_of_range(9, 2, 70), now),
        Err(ControlError::FetchOffsetInLeaderRange {
            fetch_offset: Offset(9),
            leader_log_start_offset: Offset(2),
            leader_log_end_offset: Offset(70),
        })
    );
    assert_eq!(s.fetching_from(), Some((B, LeaderEpoch(4))));

    let fresh = LocalLog {
        log_start_offset: Offset(50),
        log_end_offset: Offset(50),
        flushed_offset: Offset(50),
        latest_epoch: None,
    };
    let mut empty = State::open(C, ReplicaConfig::default(), fresh, None);
    empty
        .become_follower(assignment(Some(B), 4, 1, &[B, C]), now)
        .unwrap();
    assert_eq!(
        empty.fetch_out_of_range(out_of_range(50, 0, 30), now),
        Err(ControlError::LeaderLogEndsBeforeLogWithoutEpochs {
            log_end_offset: Offset(50),
            leader_log_end_offset: Offset(30),
        })
    );

    let mut leading = leader(ReplicaConfig::default(), &[A, B, C], now);
    assert!(
        leading
            .fetch_out_of_range(out_of_range(0, 40, 70), now)
            .unwrap()
            .is_empty()
    );
}
