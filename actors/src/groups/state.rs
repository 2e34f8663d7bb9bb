//! One consumer group's membership and assignment, as a plain state machine: the
//! GroupCoordinator actor feeds it heartbeats, commits and clock ticks, and does the I/O.
//!
//! The protocol is KIP-848's, simplified:
//! - Every change of membership, subscriptions or partition counts bumps the **group epoch**;
//!   the assignor then computes a **target assignment** at that epoch.
//! - A member is told its assignment only in answers to its own heartbeats. Partitions it
//!   holds that are not in its target are **revoked** first: the answer leaves them out, and
//!   the coordinator counts them as the member's until a heartbeat from it no longer lists
//!   them in `owned_partitions` (or its rebalance timeout passes, which fences it). Only then
//!   can another member get them. So a partition never has two owners, and a member may still
//!   commit a partition whose revocation it has not acknowledged (commit on revoke).
//! - A member receives new partitions only once it has nothing left to revoke, and its
//!   **member epoch** becomes the target's epoch when it reaches its target. Epochs change
//!   only in answers to the member itself, so a member always knows its current epoch; a
//!   heartbeat or commit with another epoch is fenced.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use vltava_messages::protocol::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, ErrorCode, MEMBER_EPOCH_JOIN,
    MEMBER_EPOCH_LEAVE, MEMBER_EPOCH_LEAVE_STATIC, MemberDescription, PartitionMove,
    RebalanceRecord, TopicPartitions,
};
use vltava_messages::{LeaderEpoch, Offset, PartitionId};

use super::assignor::{Assignor, MemberSpec, TopicPartition};

/// Rebalances kept for DescribeGroups.
pub const REBALANCE_HISTORY_MAX: usize = 20;
/// Members one group may have.
pub const GROUP_MEMBERS_MAX: usize = 1000;
/// The shortest and longest session timeout a member may ask for.
pub const SESSION_TIMEOUT_MIN: Duration = Duration::from_secs(1);
pub const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(30 * 60);
/// The longest rebalance timeout a member may ask for.
pub const REBALANCE_TIMEOUT_MAX: Duration = Duration::from_secs(30 * 60);

/// The node's group settings.
#[derive(Clone, Copy, Debug)]
pub struct GroupSettings {
    /// How often members heartbeat (never more than a third of their session timeout).
    pub heartbeat_interval: Duration,
    /// A member's session timeout when it asks for none.
    pub session_timeout: Duration,
    /// How long a member may take to give up revoked partitions when it asks for nothing else.
    pub rebalance_timeout: Duration,
}

impl Default for GroupSettings {
    /// Kafka's KIP-848 defaults: 5 s heartbeats, 45 s sessions, 5 minutes to revoke.
    fn default() -> Self {
        GroupSettings {
            heartbeat_interval: Duration::from_secs(5),
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(300),
        }
    }
}

/// A committed offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub offset: Offset,
    pub leader_epoch: Option<LeaderEpoch>,
    pub metadata: String,
    pub commit_ms: u64,
}

/// One member.
#[derive(Clone, Debug)]
pub struct Member {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub host: String,
    pub member_epoch: i32,
    pub subscribed: BTreeSet<String>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// What the member may own now (what its answers say).
    pub assigned: BTreeSet<TopicPartition>,
    /// Revoked and not yet given up; still the member's for commits.
    pub pending_revocation: BTreeSet<TopicPartition>,
    /// When the revocation must be done.
    pub revocation_deadline: Option<Instant>,
    /// What the member said it owns in its last heartbeat.
    pub owned: BTreeSet<TopicPartition>,
    /// The assignment its last answer carried.
    pub told: BTreeSet<TopicPartition>,
    pub last_heartbeat: Instant,
    /// A static member that left for now (epoch -2): when.
    pub departed: Option<Instant>,
}

/// Why a heartbeat or commit was refused.
pub type Refusal = (ErrorCode, String);

/// What a heartbeat leads to.
#[derive(Debug)]
pub enum HeartbeatOutcome {
    /// Answer now.
    Answer(ConsumerGroupHeartbeatResponse),
    /// Nothing new for the member: park the heartbeat until its assignment changes or
    /// `wait` passes (then answer with `answer_for`).
    Park { member_id: String, wait: Duration },
}

/// A consumer group.
#[derive(Debug)]
pub struct GroupState {
    pub group_id: String,
    pub assignor: Assignor,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, Member>,
    /// Each member's part of the target assignment (at `assignment_epoch`); written and read
    /// back by `membership` when the group moves to another coordinator.
    pub(super) target: BTreeMap<String, BTreeSet<TopicPartition>>,
    /// The partition counts the target was computed with.
    pub(super) counts_used: BTreeMap<String, u32>,
    pub offsets: BTreeMap<TopicPartition, Committed>,
    pub rebalances: VecDeque<RebalanceRecord>,
    pub created_ms: u64,
    /// When the group last had no members (for offset expiry).
    pub empty_since: Instant,
    settings: GroupSettings,
    /// Why the group epoch was last bumped, for the rebalance history.
    reason: String,
    /// Grows with every change an observer could see (members, epochs, assignments,
    /// revocations, offsets), so that a snapshot is rebuilt only when something changed.
    pub version: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Refusal> {
    Err((code, message.into()))
}

/// Groups partitions by topic for the wire.
#[must_use]
pub fn to_wire(partitions: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    let mut out: Vec<TopicPartitions> = Vec::new();
    for (topic, p) in partitions {
        match out.last_mut() {
            Some(last) if &last.topic == topic => last.partitions.push(PartitionId(*p)),
            _ => out.push(TopicPartitions {
                topic: topic.clone(),
                partitions: vec![PartitionId(*p)],
            }),
        }
    }
    out
}

/// The partitions of a wire list.
#[must_use]
pub fn from_wire(topics: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), p.0)))
        .collect()
}

impl GroupState {
    #[must_use]
    pub fn new(
        group_id: String,
        assignor: Assignor,
        settings: GroupSettings,
        now: Instant,
    ) -> Self {
        GroupState {
            group_id,
            assignor,
            group_epoch: 0,
            assignment_epoch: 0,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            counts_used: BTreeMap::new(),
            offsets: BTreeMap::new(),
            rebalances: VecDeque::new(),
            created_ms: now_ms(),
            empty_since: now,
            settings,
            reason: String::new(),
            version: 0,
        }
    }

    /// `empty`, `reconciling` or `stable`.
    #[must_use]
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "empty"
        } else if self.members.values().all(|m| {
            m.pending_revocation.is_empty() && self.target.get(&m.member_id) == Some(&m.assigned)
        }) {
            "stable"
        } else {
            "reconciling"
        }
    }

    fn bump(&mut self, reason: String) {
        self.group_epoch += 1;
        self.reason = reason;
        self.version += 1;
    }

    fn heartbeat_interval(&self, member: &Member) -> Duration {
        self.settings
            .heartbeat_interval
            .min(member.session_timeout / 3)
    }

    /// Handles one heartbeat: join, stay or leave.
    ///
    /// # Errors
    /// A typed refusal (fenced, unknown member, bad assignor, ...).
    pub fn heartbeat(
        &mut self,
        request: &ConsumerGroupHeartbeatRequest,
        client_id: &str,
        host: &str,
        now: Instant,
        counts: &BTreeMap<String, u32>,
    ) -> Result<HeartbeatOutcome, Refusal> {
        if let Some(name) = &request.assignor {
            let Some(assignor) = Assignor::from_name(name) else {
                return refuse(
                    ErrorCode::UnsupportedAssignor,
                    format!("unknown assignor {name:?}; known: range, round-robin, sticky"),
                );
            };
            if assignor != self.assignor {
                if self.members.is_empty() {
                    self.assignor = assignor;
                } else {
                    return refuse(
                        ErrorCode::InconsistentAssignor,
                        format!("the group uses the {} assignor", self.assignor.name()),
                    );
                }
            }
        }
        let member_id = match request.member_epoch {
            MEMBER_EPOCH_JOIN => self.join(request, client_id, host, now)?,
            MEMBER_EPOCH_LEAVE | MEMBER_EPOCH_LEAVE_STATIC => {
                return self.leave(request, now, counts);
            }
            epoch => {
                let member = self.members.get_mut(&request.member_id).ok_or_else(|| {
                    (
                        ErrorCode::UnknownMemberId,
                        format!("no member {}", request.member_id),
                    )
                })?;
                if epoch != member.member_epoch {
                    return refuse(
                        ErrorCode::FencedMemberEpoch,
                        format!(
                            "member epoch {epoch} is not the member's epoch {}",
                            member.member_epoch
                        ),
                    );
                }
                member.last_heartbeat = now;
                // A static member that said it was leaving but heartbeats on is back.
                if member.departed.take().is_some() {
                    self.version += 1;
                }
                if let Some(topics) = &request.subscribed_topics {
                    let subscribed: BTreeSet<String> = topics.iter().cloned().collect();
                    if subscribed != member.subscribed {
                        member.subscribed = subscribed;
                        self.bump(format!(
                            "member {} changed its subscriptions",
                            request.member_id
                        ));
                    }
                }
                request.member_id.clone()
            }
        };
        if let Some(owned) = &request.owned_partitions {
            let owned = from_wire(owned);
            let member = self
                .members
                .get_mut(&member_id)
                .expect("the member was found or created above");
            // What it no longer holds is given up: those revocations are done.
            let pending = member.pending_revocation.len();
            member.pending_revocation.retain(|tp| owned.contains(tp));
            if member.pending_revocation.len() != pending {
                self.version += 1;
            }
            if member.pending_revocation.is_empty() {
                member.revocation_deadline = None;
            }
            member.owned = owned;
        }
        self.reconcile(now, counts);
        let member = &self.members[&member_id];
        let wait =
            Duration::from_millis(u64::from(request.max_wait_ms)).min(member.session_timeout / 2);
        if wait.is_zero() || request.member_epoch == MEMBER_EPOCH_JOIN || self.has_news(&member_id)
        {
            Ok(HeartbeatOutcome::Answer(self.answer_for(&member_id)))
        } else {
            Ok(HeartbeatOutcome::Park { member_id, wait })
        }
    }

    fn join(
        &mut self,
        request: &ConsumerGroupHeartbeatRequest,
        client_id: &str,
        host: &str,
        now: Instant,
    ) -> Result<String, Refusal> {
        let Some(topics) = &request.subscribed_topics else {
            return refuse(
                ErrorCode::InvalidRequest,
                "a joining member must give subscribed_topics",
            );
        };
        let session_timeout = match request.session_timeout_ms {
            None => self.settings.session_timeout,
            Some(ms) => Duration::from_millis(u64::from(ms)),
        };
        if !(SESSION_TIMEOUT_MIN..=SESSION_TIMEOUT_MAX).contains(&session_timeout) {
            return refuse(
                ErrorCode::InvalidSessionTimeout,
                format!(
                    "session timeout must be between {} and {} ms",
                    SESSION_TIMEOUT_MIN.as_millis(),
                    SESSION_TIMEOUT_MAX.as_millis()
                ),
            );
        }
        let rebalance_timeout = match request.rebalance_timeout_ms {
            None => self.settings.rebalance_timeout,
            Some(ms) => Duration::from_millis(u64::from(ms)),
        };
        if rebalance_timeout.is_zero() || rebalance_timeout > REBALANCE_TIMEOUT_MAX {
            return refuse(
                ErrorCode::InvalidSessionTimeout,
                format!(
                    "rebalance timeout must be between 1 and {} ms",
                    REBALANCE_TIMEOUT_MAX.as_millis()
                ),
            );
        }
        let member_id = uuid::Uuid::new_v4().to_string();
        let mut member = Member {
            member_id: member_id.clone(),
            instance_id: request.instance_id.clone(),
            client_id: client_id.to_owned(),
            host: host.to_owned(),
            member_epoch: 0,
            subscribed: topics.iter().cloned().collect(),
            session_timeout,
            rebalance_timeout,
            assigned: BTreeSet::new(),
            pending_revocation: BTreeSet::new(),
            revocation_deadline: None,
            owned: BTreeSet::new(),
            told: BTreeSet::new(),
            last_heartbeat: now,
            departed: None,
        };
        // A static member coming back takes over its predecessor's place and partitions,
        // without a rebalance, if that predecessor left for now or has gone silent.
        if let Some(instance) = &request.instance_id {
            let previous = self
                .members
                .values()
                .find(|m| m.instance_id.as_deref() == Some(instance.as_str()))
                .map(|m| m.member_id.clone());
            if let Some(previous) = previous {
                let old = &self.members[&previous];
                let silent = now.duration_since(old.last_heartbeat)
                    > self.heartbeat_interval(old).saturating_mul(2);
                if old.departed.is_none() && !silent {
                    return refuse(
                        ErrorCode::UnreleasedInstanceId,
                        format!("instance id {instance} is held by a live member"),
                    );
                }
                let old = self.members.remove(&previous).expect("found above");
                member.member_epoch = old.member_epoch;
                member.assigned = old.assigned;
                member.pending_revocation = old.pending_revocation;
                member.told = member.assigned.clone();
                if member.subscribed != old.subscribed {
                    self.bump(format!(
                        "static member {instance} changed its subscriptions"
                    ));
                }
                if let Some(target) = self.target.remove(&previous) {
                    self.target.insert(member_id.clone(), target);
                }
                self.members.insert(member_id.clone(), member);
                self.version += 1;
                return Ok(member_id);
            }
        }
        if self.members.len() >= GROUP_MEMBERS_MAX {
            return refuse(
                ErrorCode::GroupMaxSizeReached,
                format!("the group has {GROUP_MEMBERS_MAX} members"),
            );
        }
        self.bump(format!("member {member_id} joined"));
        // Never 0, which would read as a join: a member's first epoch is the group epoch it
        // joined at.
        member.member_epoch = self.group_epoch;
        self.members.insert(member_id.clone(), member);
        Ok(member_id)
    }

    fn leave(
        &mut self,
        request: &ConsumerGroupHeartbeatRequest,
        now: Instant,
        counts: &BTreeMap<String, u32>,
    ) -> Result<HeartbeatOutcome, Refusal> {
        let Some(member) = self.members.get_mut(&request.member_id) else {
            return refuse(
                ErrorCode::UnknownMemberId,
                format!("no member {}", request.member_id),
            );
        };
        let interval = self
            .settings
            .heartbeat_interval
            .min(member.session_timeout / 3);
        let answer = ConsumerGroupHeartbeatResponse {
            member_id: request.member_id.clone(),
            member_epoch: request.member_epoch,
            heartbeat_interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            session_timeout_ms: u32::try_from(member.session_timeout.as_millis())
                .unwrap_or(u32::MAX),
            assignment: Vec::new(),
        };
        if request.member_epoch == MEMBER_EPOCH_LEAVE_STATIC && member.instance_id.is_some() {
            // Its partitions stay reserved until the session timeout passes.
            member.departed = Some(now);
            member.last_heartbeat = now;
            self.version += 1;
            return Ok(HeartbeatOutcome::Answer(answer));
        }
        self.remove_member(&request.member_id, "left the group", now);
        self.reconcile(now, counts);
        Ok(HeartbeatOutcome::Answer(answer))
    }

    fn remove_member(&mut self, member_id: &str, why: &str, now: Instant) {
        if self.members.remove(member_id).is_some() {
            self.target.remove(member_id);
            self.bump(format!("member {member_id} {why}"));
            if self.members.is_empty() {
                self.empty_since = now;
            }
        }
    }

    /// Brings the target up to date and starts the revocations it needs.
    pub fn reconcile(&mut self, now: Instant, counts: &BTreeMap<String, u32>) {
        let subscribed: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(|m| m.subscribed.iter())
            .collect();
        let relevant: BTreeMap<String, u32> = counts
            .iter()
            .filter(|(t, _)| subscribed.contains(t))
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        if relevant != self.counts_used {
            self.counts_used = relevant;
            // A recomputation already pending (a join, say) uses the new counts anyway and
            // keeps its own reason.
            if self.group_epoch == self.assignment_epoch {
                self.bump("topic partitions changed".into());
            }
        }
        if self.group_epoch > self.assignment_epoch {
            let specs: Vec<MemberSpec<'_>> = self
                .members
                .values()
                .map(|m| MemberSpec {
                    member_id: &m.member_id,
                    subscribed: &m.subscribed,
                    current: &m.assigned,
                })
                .collect();
            let target = self.assignor.assign(&specs, &self.counts_used);
            self.record_rebalance(&target);
            self.target = target;
            self.assignment_epoch = self.group_epoch;
        }
        for member in self.members.values_mut() {
            let target = self.target.get(&member.member_id);
            let revoke: Vec<TopicPartition> = member
                .assigned
                .iter()
                .filter(|tp| target.is_none_or(|t| !t.contains(*tp)))
                .cloned()
                .collect();
            if revoke.is_empty() {
                continue;
            }
            // It was told these partitions, so it may be reading them: they stay its until
            // a heartbeat of it no longer lists them.
            for tp in revoke {
                member.assigned.remove(&tp);
                member.pending_revocation.insert(tp);
            }
            self.version += 1;
            if !member.pending_revocation.is_empty() && member.revocation_deadline.is_none() {
                member.revocation_deadline = Some(now + member.rebalance_timeout);
            }
        }
    }

    fn record_rebalance(&mut self, target: &BTreeMap<String, BTreeSet<TopicPartition>>) {
        let owner = |map: &BTreeMap<String, BTreeSet<TopicPartition>>| {
            let mut owners: BTreeMap<TopicPartition, String> = BTreeMap::new();
            for (member, tps) in map {
                for tp in tps {
                    owners.insert(tp.clone(), member.clone());
                }
            }
            owners
        };
        let before = owner(&self.target);
        let after = owner(target);
        let all: BTreeSet<&TopicPartition> = before.keys().chain(after.keys()).collect();
        let moves: Vec<PartitionMove> = all
            .into_iter()
            .filter(|tp| before.get(*tp) != after.get(*tp))
            .map(|tp| PartitionMove {
                topic: tp.0.clone(),
                partition: PartitionId(tp.1),
                from: before.get(tp).cloned(),
                to: after.get(tp).cloned(),
            })
            .collect();
        self.rebalances.push_front(RebalanceRecord {
            at_ms: now_ms(),
            reason: std::mem::take(&mut self.reason),
            group_epoch: self.group_epoch,
            moves,
        });
        self.rebalances.truncate(REBALANCE_HISTORY_MAX);
    }

    /// Who holds a partition now: assigned to, or revoking it.
    fn holder(&self, tp: &TopicPartition) -> Option<&str> {
        self.members
            .values()
            .find(|m| m.assigned.contains(tp) || m.pending_revocation.contains(tp))
            .map(|m| m.member_id.as_str())
    }

    /// The partitions `member_id` may be given now: in its target, held by nobody, and only
    /// once it has nothing left to revoke.
    fn grantable(&self, member_id: &str) -> BTreeSet<TopicPartition> {
        let member = &self.members[member_id];
        if !member.pending_revocation.is_empty() || member.departed.is_some() {
            return BTreeSet::new();
        }
        self.target
            .get(member_id)
            .map(|target| {
                target
                    .iter()
                    .filter(|tp| !member.assigned.contains(*tp) && self.holder(tp).is_none())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether an answer to `member_id` would tell it something new.
    #[must_use]
    pub fn has_news(&self, member_id: &str) -> bool {
        let Some(member) = self.members.get(member_id) else {
            return true;
        };
        member.assigned != member.told || !self.grantable(member_id).is_empty() || {
            let reached = self.target.get(member_id) == Some(&member.assigned)
                && member.pending_revocation.is_empty();
            reached && member.member_epoch != self.assignment_epoch
        }
    }

    /// The answer to a heartbeat of `member_id`: grants what it may take, moves its epoch to
    /// the target's when it has reached it, and remembers what it was told.
    pub fn answer_for(&mut self, member_id: &str) -> ConsumerGroupHeartbeatResponse {
        let grant = self.grantable(member_id);
        let assignment_epoch = self.assignment_epoch;
        let reached_target = {
            let member = &self.members[member_id];
            let mut after = member.assigned.clone();
            after.extend(grant.iter().cloned());
            self.target.get(member_id).is_some_and(|t| *t == after)
                && member.pending_revocation.is_empty()
        };
        let interval = |m: &Member| self.settings.heartbeat_interval.min(m.session_timeout / 3);
        let interval = interval(&self.members[member_id]);
        let member = self
            .members
            .get_mut(member_id)
            .expect("answers go to members");
        let epoch_before = member.member_epoch;
        let granted = !grant.is_empty();
        member.assigned.extend(grant);
        if reached_target && member.member_epoch < assignment_epoch {
            member.member_epoch = assignment_epoch;
        }
        if granted || member.member_epoch != epoch_before {
            self.version += 1;
        }
        member.told = member.assigned.clone();
        ConsumerGroupHeartbeatResponse {
            member_id: member_id.to_owned(),
            member_epoch: member.member_epoch,
            heartbeat_interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            session_timeout_ms: u32::try_from(member.session_timeout.as_millis())
                .unwrap_or(u32::MAX),
            assignment: to_wire(&member.assigned),
        }
    }

    /// Removes members whose session timed out (or whose static leave expired) and fences
    /// members that did not give up revoked partitions in time. Returns whether anything
    /// changed.
    pub fn expire(&mut self, now: Instant, counts: &BTreeMap<String, u32>) -> bool {
        let mut gone: Vec<(String, &'static str)> = Vec::new();
        for member in self.members.values() {
            let since = member.departed.unwrap_or(member.last_heartbeat);
            if now.duration_since(since) > member.session_timeout {
                gone.push((member.member_id.clone(), "timed out"));
            } else if member.revocation_deadline.is_some_and(|d| now > d) {
                gone.push((
                    member.member_id.clone(),
                    "did not give up revoked partitions in time",
                ));
            }
        }
        let changed = !gone.is_empty();
        for (member_id, why) in gone {
            tracing::info!(group = %self.group_id, member = %member_id, why, "member removed");
            self.remove_member(&member_id, why, now);
        }
        let before = self.group_epoch;
        self.reconcile(now, counts);
        changed || self.group_epoch != before
    }

    /// Checks that a commit may be made: by the member with its current epoch for partitions
    /// it holds, or (member epoch -1) from outside while the group has no members. Returns a
    /// refusal per partition (`None`: may commit).
    ///
    /// # Errors
    /// A whole-request refusal: unknown member, stale epoch, members present.
    pub fn check_commit(
        &self,
        member_id: &str,
        member_epoch: i32,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Option<Refusal>>, Refusal> {
        if member_epoch < 0 || member_id.is_empty() {
            if self.members.is_empty() {
                return Ok(vec![None; partitions.len()]);
            }
            return refuse(
                ErrorCode::UnknownMemberId,
                "the group has members: commit as one of them",
            );
        }
        let Some(member) = self.members.get(member_id) else {
            return refuse(ErrorCode::UnknownMemberId, format!("no member {member_id}"));
        };
        if member_epoch < member.member_epoch {
            return refuse(
                ErrorCode::StaleMemberEpoch,
                format!(
                    "member epoch {member_epoch} is older than the member's {}",
                    member.member_epoch
                ),
            );
        }
        if member_epoch > member.member_epoch {
            return refuse(
                ErrorCode::FencedMemberEpoch,
                format!(
                    "member epoch {member_epoch} is newer than the member's {}",
                    member.member_epoch
                ),
            );
        }
        Ok(partitions
            .iter()
            .map(|tp| {
                if member.assigned.contains(tp) || member.pending_revocation.contains(tp) {
                    None
                } else {
                    Some((
                        ErrorCode::PartitionNotAssigned,
                        format!("{}-{} is not assigned to this member", tp.0, tp.1),
                    ))
                }
            })
            .collect())
    }

    /// The members for DescribeGroups.
    #[must_use]
    pub fn describe_members(&self) -> Vec<MemberDescription> {
        self.members
            .values()
            .map(|m| MemberDescription {
                member_id: m.member_id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                host: m.host.clone(),
                member_epoch: m.member_epoch,
                subscribed_topics: m.subscribed.iter().cloned().collect(),
                assigned: to_wire(&m.assigned),
                pending_revocation: to_wire(&m.pending_revocation),
            })
            .collect()
    }

    /// The member holding each partition.
    #[must_use]
    pub fn owners(&self) -> BTreeMap<TopicPartition, String> {
        let mut owners = BTreeMap::new();
        for m in self.members.values() {
            for tp in m.assigned.iter().chain(&m.pending_revocation) {
                owners.insert(tp.clone(), m.member_id.clone());
            }
        }
        owners
    }

    /// Every partition of the subscribed topics (by the counts last used).
    #[must_use]
    pub fn subscribed_partitions(&self) -> BTreeSet<TopicPartition> {
        self.counts_used
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> BTreeMap<String, u32> {
        [("t".to_owned(), 6)].into_iter().collect()
    }

    fn group() -> GroupState {
        GroupState::new(
            "g".into(),
            Assignor::Sticky,
            GroupSettings::default(),
            Instant::now(),
        )
    }

    fn join(
        g: &mut GroupState,
        now: Instant,
        instance: Option<&str>,
    ) -> ConsumerGroupHeartbeatResponse {
        let request = ConsumerGroupHeartbeatRequest {
            group_id: "g".into(),
            member_epoch: MEMBER_EPOCH_JOIN,
            instance_id: instance.map(str::to_owned),
            subscribed_topics: Some(vec!["t".into()]),
            owned_partitions: Some(Vec::new()),
            ..ConsumerGroupHeartbeatRequest::default()
        };
        match g.heartbeat(&request, "c", "h", now, &counts()).unwrap() {
            HeartbeatOutcome::Answer(answer) => answer,
            HeartbeatOutcome::Park { .. } => panic!("a join is answered at once"),
        }
    }

    /// A heartbeat that reports owning exactly what the last answer gave.
    fn beat(
        g: &mut GroupState,
        last: &ConsumerGroupHeartbeatResponse,
        now: Instant,
    ) -> Result<ConsumerGroupHeartbeatResponse, Refusal> {
        let request = ConsumerGroupHeartbeatRequest {
            group_id: "g".into(),
            member_id: last.member_id.clone(),
            member_epoch: last.member_epoch,
            owned_partitions: Some(last.assignment.clone()),
            ..ConsumerGroupHeartbeatRequest::default()
        };
        match g.heartbeat(&request, "c", "h", now, &counts())? {
            HeartbeatOutcome::Answer(answer) => Ok(answer),
            HeartbeatOutcome::Park { member_id, .. } => Ok(g.answer_for(&member_id)),
        }
    }

    fn count(answer: &ConsumerGroupHeartbeatResponse) -> usize {
        answer.assignment.iter().map(|t| t.partitions.len()).sum()
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_gives_it_up() {
        let now = Instant::now();
        let mut g = group();
        let a = join(&mut g, now, None);
        assert_eq!(count(&a), 6);
        let b = join(&mut g, now, None);
        assert_eq!(count(&b), 0, "b waits for a to revoke");
        // b asks again before a heard anything: still nothing, a holds everything.
        let b = beat(&mut g, &b, now).unwrap();
        assert_eq!(count(&b), 0);
        // a's next answer revokes three; a may still commit them until it acknowledges.
        let a = beat(&mut g, &a, now).unwrap();
        assert_eq!(count(&a), 3);
        let revoked = ("t".to_owned(), 5);
        let verdicts = g
            .check_commit(&a.member_id, a.member_epoch, std::slice::from_ref(&revoked))
            .unwrap();
        assert!(
            g.members[&a.member_id]
                .pending_revocation
                .contains(&revoked)
        );
        assert_eq!(verdicts, vec![None], "commit on revoke is allowed");
        // a acknowledges by reporting what it now owns; b then gets the three.
        let a = beat(&mut g, &a, now).unwrap();
        let verdicts = g
            .check_commit(&a.member_id, a.member_epoch, &[revoked])
            .unwrap();
        assert_eq!(
            verdicts[0].as_ref().unwrap().0,
            ErrorCode::PartitionNotAssigned
        );
        let b = beat(&mut g, &b, now).unwrap();
        assert_eq!(count(&b), 3);
        assert_eq!(g.state_name(), "stable");
        assert_eq!(g.rebalances.len(), 2);
    }

    #[test]
    fn stale_epochs_are_fenced_for_heartbeats_and_commits() {
        let now = Instant::now();
        let mut g = group();
        let a = join(&mut g, now, None);
        join(&mut g, now, None);
        let a = beat(&mut g, &a, now).unwrap();
        let a = beat(&mut g, &a, now).unwrap();
        assert!(a.member_epoch >= 2, "{a:?}");
        let mut old = a.clone();
        old.member_epoch -= 1;
        assert_eq!(
            beat(&mut g, &old, now).unwrap_err().0,
            ErrorCode::FencedMemberEpoch
        );
        let refusal = g
            .check_commit(&a.member_id, a.member_epoch - 1, &[("t".into(), 0)])
            .unwrap_err();
        assert_eq!(refusal.0, ErrorCode::StaleMemberEpoch);
        let mut ghost = a.clone();
        ghost.member_id = "ghost".into();
        assert_eq!(
            beat(&mut g, &ghost, now).unwrap_err().0,
            ErrorCode::UnknownMemberId
        );
    }

    #[test]
    fn a_silent_member_is_removed_after_its_session_timeout() {
        let now = Instant::now();
        let mut g = group();
        let a = join(&mut g, now, None);
        let b = join(&mut g, now, None);
        let a = beat(&mut g, &a, now).unwrap();
        let a = beat(&mut g, &a, now).unwrap();
        let b = beat(&mut g, &b, now).unwrap();
        assert_eq!((count(&a), count(&b)), (3, 3));
        let later = now + GroupSettings::default().session_timeout + Duration::from_secs(1);
        // a keeps heartbeating; b went silent.
        let a = beat(&mut g, &a, later - Duration::from_secs(2)).unwrap();
        assert!(g.expire(later, &counts()));
        assert!(!g.members.contains_key(&b.member_id));
        let a = beat(&mut g, &a, later).unwrap();
        assert_eq!(count(&a), 6);
    }

    #[test]
    fn a_static_member_that_comes_back_keeps_its_partitions() {
        let now = Instant::now();
        let mut g = group();
        let a = join(&mut g, now, Some("i-a"));
        let b = join(&mut g, now, Some("i-b"));
        let a = beat(&mut g, &a, now).unwrap();
        let a = beat(&mut g, &a, now).unwrap();
        let b = beat(&mut g, &b, now).unwrap();
        let epoch = g.group_epoch;
        // b leaves for now and comes back as a new incarnation.
        let leave = ConsumerGroupHeartbeatRequest {
            group_id: "g".into(),
            member_id: b.member_id.clone(),
            member_epoch: MEMBER_EPOCH_LEAVE_STATIC,
            ..ConsumerGroupHeartbeatRequest::default()
        };
        g.heartbeat(&leave, "c", "h", now, &counts()).unwrap();
        let back = join(&mut g, now + Duration::from_secs(1), Some("i-b"));
        assert_ne!(back.member_id, b.member_id);
        assert_eq!(back.assignment, b.assignment);
        assert_eq!(g.group_epoch, epoch, "no rebalance");
        // A second live incarnation of a is refused.
        let refusal = g
            .heartbeat(
                &ConsumerGroupHeartbeatRequest {
                    group_id: "g".into(),
                    member_epoch: MEMBER_EPOCH_JOIN,
                    instance_id: Some("i-a".into()),
                    subscribed_topics: Some(vec!["t".into()]),
                    ..ConsumerGroupHeartbeatRequest::default()
                },
                "c",
                "h",
                now,
                &counts(),
            )
            .unwrap_err();
        assert_eq!(refusal.0, ErrorCode::UnreleasedInstanceId);
        assert_eq!(count(&a), 3);
    }

    #[test]
    fn bad_assignors_and_timeouts_are_typed_errors() {
        let now = Instant::now();
        let mut g = group();
        let mut request = ConsumerGroupHeartbeatRequest {
            group_id: "g".into(),
            member_epoch: MEMBER_EPOCH_JOIN,
            subscribed_topics: Some(vec!["t".into()]),
            assignor: Some("random".into()),
            ..ConsumerGroupHeartbeatRequest::default()
        };
        let refusal = g.heartbeat(&request, "c", "h", now, &counts()).unwrap_err();
        assert_eq!(refusal.0, ErrorCode::UnsupportedAssignor);
        request.assignor = Some("range".into());
        request.session_timeout_ms = Some(10);
        let refusal = g.heartbeat(&request, "c", "h", now, &counts()).unwrap_err();
        assert_eq!(refusal.0, ErrorCode::InvalidSessionTimeout);
        request.session_timeout_ms = None;
        g.heartbeat(&request, "c", "h", now, &counts()).unwrap();
        assert_eq!(g.assignor, Assignor::Range);
        request.assignor = Some("sticky".into());
        let refusal = g.heartbeat(&request, "c", "h", now, &counts()).unwrap_err();
        assert_eq!(refusal.0, ErrorCode::InconsistentAssignor);
    }
}
