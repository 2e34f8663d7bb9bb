//! Consumer groups: [`GroupConsumer`] joins a group, reads the partitions its coordinator
//! assigns it, commits how far it has read, and gives partitions up when the coordinator moves
//! them to another member (KIP-848 style: the coordinator computes the assignment).
//!
//! # Shape
//! A `GroupConsumer` owns a [`Consumer`] for fetching and one heartbeat task. They share two
//! `tokio::sync::watch` values, one written by each side, so neither waits for the other:
//! - `MemberView` (consumer → task): the subscription, the partitions the consumer owns now,
//!   the last loss it has acted on, when the application last polled, and `closing`.
//! - `GroupState` (task → consumer): member id and epoch, the latest assignment, the
//!   coordinator's address, a loss counter and the last error to surface.
//!
//! The task is the only one that heartbeats, on its own connection to the coordinator, so a
//! long-poll fetch never delays a heartbeat. It joins (epoch 0), then sends the next heartbeat
//! as soon as an answer arrives, asking the coordinator to park it for the heartbeat interval;
//! the coordinator answers early when the member's assignment changes. Every answer carries
//! the full assignment and the member's current epoch, which the task adopts.
//!
//! The consumer reconciles in `poll()`: partitions it owns that are not in the assignment are
//! revoked (fetching stops, their positions are committed if `commit_on_revoke`, and they leave
//! the owned set); partitions in the assignment it does not own are added (the committed
//! offset, else `auto_offset_reset`). The task reports the owned set in every heartbeat, which
//! is how revocations are acknowledged; after an answer that asks for a change it waits (at
//! most one heartbeat interval) for the consumer to reconcile before it heartbeats again, so
//! the acknowledgement goes out at once rather than after a parked heartbeat.
//!
//! Losing the membership (fenced, unknown member, the coordinator unreachable beyond the
//! session timeout, a poll interval missed, a fatal join error) drops every owned partition
//! without committing: another member may own them already. The task reports owned
//! partitions as empty until the consumer has acted on the loss.
//!
//! # Lifetime
//! The task starts at the first `poll()` after `subscribe` and ends when the consumer is
//! closed (after a leave heartbeat) or dropped (it then leaves too, best effort). Every wait in
//! it is bounded by a constant below or by the coordinator's heartbeat interval.
//!
//! # Topic patterns
//! `subscribe_pattern` takes a glob matched against whole topic names, case-sensitively: `*`
//! matches any run of characters (also none), `?` exactly one character, and every other
//! character matches itself. Topic names use only `[a-zA-Z0-9._-]`, so there is nothing to
//! escape; a pattern with any other character is refused. Internal topics (such as
//! `__consumer_offsets`) never match. The pattern is resolved against the cluster's metadata
//! when joining and every `PATTERN_REFRESH_INTERVAL`; a change is sent with the next
//! heartbeat. Examples: `orders-*`, `metrics.??.raw`, `*`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use vltava_messages::limits::{
    GROUP_ID_BYTES_MAX, GROUP_MEMBER_FIELD_BYTES_MAX, GROUP_WAIT_MS_MAX, TOPIC_NAME_BYTES_MAX,
    TOPICS_PER_REQUEST_MAX,
};
use vltava_messages::protocol::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, ErrorCode, MEMBER_EPOCH_JOIN,
    MEMBER_EPOCH_LEAVE, MEMBER_EPOCH_LEAVE_STATIC, MetadataResponse, OffsetCommitPartition,
    OffsetCommitRequest, OffsetCommitTopic, OffsetFetchRequest, RequestBody, ResponseError,
    TopicPartitions, validate_topic_name,
};
use vltava_messages::{Offset, PartitionId};

use crate::cluster::Cluster;
use crate::connection::Connection;
use crate::consumer::{Consumer, ConsumerConfig, ConsumerRecord, SeekTo};
use crate::coordinator::{
    BACKOFF_MAX, Backoff, COORDINATOR_ATTEMPTS_MAX, GROUP_REQUEST_TIMEOUT, coordinator_addr,
    find_coordinator_once, send_to_coordinator, wants_coordinator_retry,
};
use crate::error::ClientError;

/// How long past its `max_wait_ms` a heartbeat answer may take before the connection is
/// presumed dead and replaced: the coordinator answers a parked heartbeat by then, and 5 s
/// covers a loaded node while leaving most of a 45 s session for the retry.
pub const HEARTBEAT_ANSWER_SLACK: Duration = Duration::from_secs(5);
/// The shortest heartbeat interval the client accepts from a coordinator: an interval of 0
/// would make every heartbeat answer at once and the loop spin.
pub const HEARTBEAT_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// The longest heartbeat interval the client accepts: the protocol's limit on parking a
/// heartbeat. The interval bounds the task's wait for the consumer to reconcile.
pub const HEARTBEAT_INTERVAL_MAX: Duration = Duration::from_millis(GROUP_WAIT_MS_MAX as u64);
/// The least time between two heartbeats. A coordinator that parks heartbeats never makes the
/// client wait this long; it bounds the request rate against one that answers at once.
pub const HEARTBEAT_SPACING_MIN: Duration = Duration::from_millis(50);
/// The session timeout assumed until the coordinator states one (Kafka's default), used only
/// to decide when an unreachable coordinator has surely removed the member.
pub const SESSION_TIMEOUT_ASSUMED: Duration = Duration::from_secs(45);
/// How long a leave (the last heartbeat) may take, finding the coordinator included. If it
/// fails, the coordinator removes the member after its session timeout instead.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `close()` waits for the heartbeat task to leave and end before aborting it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(6);
/// How often a pattern subscription is matched against the cluster's topics again: new topics
/// are picked up within this time, at the cost of one Metadata request per interval.
pub const PATTERN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Rebalance events kept for the application; beyond it the oldest are dropped (and logged),
/// so an application that never drains them does not grow without bound.
pub const REBALANCE_EVENTS_MAX: usize = 1024;
/// The longest topic pattern: a topic name with a wildcard between every two characters.
pub const TOPIC_PATTERN_BYTES_MAX: usize = 2 * TOPIC_NAME_BYTES_MAX as usize;

const _: () = assert!(CLOSE_TIMEOUT.as_millis() > LEAVE_TIMEOUT.as_millis());
const _: () = assert!(HEARTBEAT_SPACING_MIN.as_millis() < HEARTBEAT_INTERVAL_MIN.as_millis());
const _: () = assert!(HEARTBEAT_INTERVAL_MIN.as_millis() <= GROUP_WAIT_MS_MAX as u128);

/// A partition: topic and index.
type Tp = (String, u32);

/// How the coordinator spreads partitions over members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Assignor {
    /// Each topic's partitions in contiguous ranges, per member.
    Range,
    /// Partitions dealt out one by one.
    RoundRobin,
    /// Balanced, moving as few partitions as possible on each change.
    #[default]
    Sticky,
}

impl Assignor {
    /// The name on the wire: `range`, `round-robin` or `sticky`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "round-robin",
            Assignor::Sticky => "sticky",
        }
    }
}

impl FromStr for Assignor {
    type Err = ClientError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "range" => Ok(Assignor::Range),
            "round-robin" => Ok(Assignor::RoundRobin),
            "sticky" => Ok(Assignor::Sticky),
            other => Err(ClientError::InvalidArgument(format!(
                "unknown assignor {other:?} (expected range, round-robin or sticky)"
            ))),
        }
    }
}

/// Where a partition without a committed offset starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OffsetReset {
    /// The log start offset: read everything still kept.
    #[default]
    Earliest,
    /// The high watermark: read only what arrives from now on.
    Latest,
}

impl FromStr for OffsetReset {
    type Err = ClientError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "earliest" => Ok(OffsetReset::Earliest),
            "latest" => Ok(OffsetReset::Latest),
            other => Err(ClientError::InvalidArgument(format!(
                "unknown offset reset {other:?} (expected earliest or latest)"
            ))),
        }
    }
}

impl From<OffsetReset> for SeekTo {
    fn from(reset: OffsetReset) -> SeekTo {
        match reset {
            OffsetReset::Earliest => SeekTo::Earliest,
            OffsetReset::Latest => SeekTo::Latest,
        }
    }
}

/// A group member's settings. [`GroupConfig::new`] gives the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub group_id: String,
    /// A static member's identity across restarts: leaving with it keeps its partitions
    /// reserved for the session timeout, so a quick restart gets them back without a
    /// rebalance. Default: none (a dynamic member).
    pub instance_id: Option<String>,
    /// The assignor to ask for. Default: none, which joins with whatever the group uses (a new
    /// group then gets the node's default, sticky). A named one takes effect only while the
    /// group is empty; naming another than the group's is `InconsistentAssignor`.
    pub assignor: Option<Assignor>,
    /// How long the coordinator keeps a silent member. Default: none (the node's default).
    pub session_timeout: Option<Duration>,
    /// How long a member may take to give up revoked partitions. Default: none (the node's).
    pub rebalance_timeout: Option<Duration>,
    /// Commit the positions of owned partitions from `poll()` every `auto_commit_interval`,
    /// and on `close()`. Default: on.
    pub auto_commit: bool,
    /// Default: 5 s.
    pub auto_commit_interval: Duration,
    /// Commit a partition's position when it is revoked, before giving it up. Default: on.
    pub commit_on_revoke: bool,
    /// Where a partition without a committed offset starts; also where a position out of
    /// range is reset to (it overrides `ConsumerConfig::reset_to_earliest`). Default:
    /// `Earliest`, like the plain consumer.
    pub auto_offset_reset: OffsetReset,
    /// If the application does not call `poll()` within this, the member leaves the group so
    /// its partitions go to a live member; the next `poll()` joins again. Default: 300 s.
    pub max_poll_interval: Duration,
}

impl GroupConfig {
    /// The defaults for `group_id`.
    #[must_use]
    pub fn new(group_id: impl Into<String>) -> GroupConfig {
        GroupConfig {
            group_id: group_id.into(),
            instance_id: None,
            assignor: None,
            session_timeout: None,
            rebalance_timeout: None,
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            commit_on_revoke: true,
            auto_offset_reset: OffsetReset::Earliest,
            max_poll_interval: Duration::from_secs(300),
        }
    }

    /// Checks the fields against the wire limits.
    ///
    /// # Errors
    /// `InvalidArgument` naming the first bad field.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |text: String| Err(ClientError::InvalidArgument(text));
        if self.group_id.is_empty() || self.group_id.len() > GROUP_ID_BYTES_MAX as usize {
            return bad(format!(
                "group id must have 1 to {GROUP_ID_BYTES_MAX} bytes, not {}",
                self.group_id.len()
            ));
        }
        if let Some(instance) = &self.instance_id
            && (instance.is_empty() || instance.len() > GROUP_MEMBER_FIELD_BYTES_MAX as usize)
        {
            return bad(format!(
                "instance id must have 1 to {GROUP_MEMBER_FIELD_BYTES_MAX} bytes"
            ));
        }
        for (name, timeout) in [
            ("session timeout", self.session_timeout),
            ("rebalance timeout", self.rebalance_timeout),
        ] {
            if let Some(timeout) = timeout
                && (timeout.is_zero() || timeout.as_millis() > u128::from(u32::MAX))
            {
                return bad(format!("{name} must be between 1 ms and {} ms", u32::MAX));
            }
        }
        if self.auto_commit_interval.is_zero() || self.max_poll_interval.is_zero() {
            return bad("auto commit and max poll intervals must be above zero".into());
        }
        Ok(())
    }
}

/// A change of the partitions the consumer owns, in the order they happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// The consumer owns these partitions from now on, starting at their committed offsets
    /// (or `auto_offset_reset`).
    Assigned(Vec<TopicPartitions>),
    /// The consumer gave these partitions up. `lost: false`: the coordinator revoked them and
    /// their positions were committed first (with `commit_on_revoke`). `lost: true`: the
    /// membership was lost (fenced, removed, or left after a missed poll interval) and
    /// nothing was committed; another member may already read them.
    Revoked {
        partitions: Vec<TopicPartitions>,
        lost: bool,
    },
}

/// A topic name pattern; see the module doc for the syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    pattern: String,
}

impl TopicPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// `InvalidArgument` if it is empty, longer than `TOPIC_PATTERN_BYTES_MAX`, or has a
    /// character that is neither a wildcard nor allowed in topic names.
    pub fn new(pattern: &str) -> Result<TopicPattern, ClientError> {
        if pattern.is_empty() || pattern.len() > TOPIC_PATTERN_BYTES_MAX {
            return Err(ClientError::InvalidArgument(format!(
                "a topic pattern has 1 to {TOPIC_PATTERN_BYTES_MAX} bytes"
            )));
        }
        if let Some(bad) = pattern
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?')))
        {
            return Err(ClientError::InvalidArgument(format!(
                "topic pattern {pattern:?} has {bad:?}: only [a-zA-Z0-9._-] and the wildcards * and ? are allowed"
            )));
        }
        Ok(TopicPattern {
            pattern: pattern.to_owned(),
        })
    }

    /// The pattern as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the whole of `topic` matches.
    #[must_use]
    pub fn matches(&self, topic: &str) -> bool {
        glob_matches(self.pattern.as_bytes(), topic.as_bytes())
    }

    /// The topics of `metadata` that match, internal topics excepted, sorted. At most
    /// `TOPICS_PER_REQUEST_MAX` (the rest is dropped with a warning: a heartbeat cannot carry
    /// more).
    #[must_use]
    pub fn matching_topics(&self, metadata: &MetadataResponse) -> Vec<String> {
        let mut names: Vec<String> = metadata
            .topics
            .iter()
            .filter(|t| t.error.is_none() && !t.internal && self.matches(&t.name))
            .map(|t| t.name.clone())
            .collect();
        names.sort();
        names.dedup();
        if names.len() > TOPICS_PER_REQUEST_MAX as usize {
            tracing::warn!(
                pattern = %self.pattern,
                matched = names.len(),
                kept = TOPICS_PER_REQUEST_MAX,
                "topic pattern matches more topics than a subscription can hold"
            );
            names.truncate(TOPICS_PER_REQUEST_MAX as usize);
        }
        names
    }
}

/// Glob matching with `*` and `?` over bytes. Greedy with backtracking to the last `*` only,
/// which is enough for these two wildcards: O(pattern × name) in the worst case, and both are
/// short.
fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was and the name position it currently stands for the end of.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more byte and try again after it.
                Some((star_p, star_n)) => {
                    star = Some((star_p, star_n + 1));
                    p = star_p + 1;
                    n = star_n + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What the application subscribed to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Subscription {
    Topics(Vec<String>),
    Pattern(TopicPattern),
}

/// The partitions to give up and to take on, moving from `owned` to `assignment`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Reconciliation {
    revoked: BTreeSet<Tp>,
    added: BTreeSet<Tp>,
}

fn reconciliation(owned: &BTreeSet<Tp>, assignment: &BTreeSet<Tp>) -> Reconciliation {
    Reconciliation {
        revoked: owned.difference(assignment).cloned().collect(),
        added: assignment.difference(owned).cloned().collect(),
    }
}

/// Partitions as the wire groups them: per topic, topics and partitions sorted.
fn to_wire(partitions: &BTreeSet<Tp>) -> Vec<TopicPartitions> {
    let mut topics: Vec<TopicPartitions> = Vec::new();
    for (topic, partition) in partitions {
        match topics.last_mut() {
            Some(last) if last.topic == *topic => last.partitions.push(PartitionId(*partition)),
            _ => topics.push(TopicPartitions {
                topic: topic.clone(),
                partitions: vec![PartitionId(*partition)],
            }),
        }
    }
    topics
}

fn from_wire(topics: &[TopicPartitions]) -> BTreeSet<Tp> {
    topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), p.0)))
        .collect()
}

/// How long to park a heartbeat: the heartbeat interval, at most the protocol's limit and half
/// the session timeout, so that the answer is back well before the session would expire.
fn park_ms(heartbeat_interval: Duration, session_timeout: Duration) -> u32 {
    let interval = u32::try_from(heartbeat_interval.as_millis()).unwrap_or(u32::MAX);
    let half_session = u32::try_from(session_timeout.as_millis() / 2).unwrap_or(u32::MAX);
    interval.min(GROUP_WAIT_MS_MAX).min(half_session)
}

fn commit_request_topics(offsets: &BTreeMap<Tp, u64>) -> Vec<OffsetCommitTopic> {
    let mut topics: Vec<OffsetCommitTopic> = Vec::new();
    for ((topic, partition), offset) in offsets {
        let entry = OffsetCommitPartition {
            partition: PartitionId(*partition),
            offset: Offset(*offset),
            leader_epoch: None,
            metadata: String::new(),
        };
        match topics.last_mut() {
            Some(last) if last.topic == *topic => last.partitions.push(entry),
            _ => topics.push(OffsetCommitTopic {
                topic: topic.clone(),
                partitions: vec![entry],
            }),
        }
    }
    topics
}

// ---- Shared state ----

/// What the consumer tells its heartbeat task (the task reads the latest value).
#[derive(Clone, Debug)]
struct MemberView {
    subscription: Subscription,
    /// The partitions the consumer owns now: reconciled, and not lost.
    owned: BTreeSet<Tp>,
    /// The last `GroupState::losses` the consumer has acted on.
    losses_seen: u64,
    /// Updated at every `poll()` without waking the task (`send_if_modified` returning
    /// false): the task reads it when it checks the poll interval.
    last_poll: Instant,
    closing: bool,
}

/// What the heartbeat task tells the consumer.
#[derive(Clone, Debug, Default)]
struct GroupState {
    member_id: String,
    /// Above 0 while a member; 0 before joining and after losing the membership.
    member_epoch: i32,
    /// The partitions the member may own, from the latest answer; `None` until the first
    /// answer of this membership.
    assignment: Option<BTreeSet<Tp>>,
    heartbeat_interval: Duration,
    /// `host:port` of the coordinator the task talks to.
    coordinator: Option<String>,
    /// Bumped each time the member lost its partitions: the consumer drops them uncommitted.
    losses: u64,
    /// Bumped with every heartbeat answer, so that a commit refused for a stale epoch can wait
    /// for the next one.
    answers: u64,
    /// The last error for `poll()` to return, numbered so each is returned once.
    error: Option<(u64, ClientError)>,
}

/// The running membership: the task and the two ends the consumer holds.
#[derive(Debug)]
struct Member {
    view: watch::Sender<MemberView>,
    state: watch::Receiver<GroupState>,
    task: JoinHandle<()>,
}

// ---- The consumer ----

/// A consumer in a group: it reads the partitions the group's coordinator assigns it and
/// commits its positions. See the module doc for how it works.
///
/// Delivery is at least once: a position is committed after `poll()` has returned the events
/// before it, and is the next event to read, so events returned by the last `poll()` before a
/// crash are read again by the next owner.
#[derive(Debug)]
pub struct GroupConsumer {
    cluster: Arc<Cluster>,
    config: Arc<GroupConfig>,
    /// Wait of a `poll()` that has nothing to fetch (the consumer's `max_wait`).
    idle_wait: Duration,
    consumer: Consumer,
    subscription: Option<Subscription>,
    member: Option<Member>,
    /// Partitions this consumer owns: reconciled with the assignment, fetched, committed.
    owned: BTreeSet<Tp>,
    /// The offset last committed (or read from the group) per owned partition, so that an
    /// unchanged position is not committed again.
    committed: BTreeMap<Tp, u64>,
    losses_seen: u64,
    errors_seen: u64,
    events: VecDeque<RebalanceEvent>,
    last_commit: Instant,
    closed: bool,
}

impl GroupConsumer {
    /// A consumer for the group `group.group_id`. It joins at the first `poll()` after
    /// `subscribe` or `subscribe_pattern`.
    ///
    /// # Errors
    /// `InvalidArgument` if `group` is not valid.
    pub fn new(
        cluster: Arc<Cluster>,
        mut consumer: ConsumerConfig,
        group: GroupConfig,
    ) -> Result<GroupConsumer, ClientError> {
        group.validate()?;
        consumer.reset_to_earliest = group.auto_offset_reset == OffsetReset::Earliest;
        let idle_wait = consumer.max_wait;
        Ok(GroupConsumer {
            consumer: Consumer::new(Arc::clone(&cluster), consumer),
            cluster,
            config: Arc::new(group),
            idle_wait,
            subscription: None,
            member: None,
            owned: BTreeSet::new(),
            committed: BTreeMap::new(),
            losses_seen: 0,
            errors_seen: 0,
            events: VecDeque::new(),
            last_commit: Instant::now(),
            closed: false,
        })
    }

    /// The group settings.
    #[must_use]
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Subscribes to these topics, replacing any earlier subscription; the change reaches the
    /// coordinator with the next heartbeat.
    ///
    /// # Errors
    /// `InvalidArgument` for an empty list, too many topics, or an invalid name.
    pub fn subscribe<S: AsRef<str>>(&mut self, topics: &[S]) -> Result<(), ClientError> {
        let mut names: Vec<String> = topics.iter().map(|t| t.as_ref().to_owned()).collect();
        names.sort();
        names.dedup();
        if names.is_empty() || names.len() > TOPICS_PER_REQUEST_MAX as usize {
            return Err(ClientError::InvalidArgument(format!(
                "subscribe to 1 to {TOPICS_PER_REQUEST_MAX} topics (close() leaves the group)"
            )));
        }
        for name in &names {
            validate_topic_name(name)?;
        }
        self.set_subscription(Subscription::Topics(names))
    }

    /// Subscribes to every topic whose name matches `pattern` (see the module doc), now and
    /// as topics come and go, replacing any earlier subscription.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad pattern.
    pub fn subscribe_pattern(&mut self, pattern: &str) -> Result<(), ClientError> {
        self.set_subscription(Subscription::Pattern(TopicPattern::new(pattern)?))
    }

    fn set_subscription(&mut self, subscription: Subscription) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        if let Some(member) = &self.member {
            member
                .view
                .send_modify(|view| view.subscription = subscription.clone());
        }
        self.subscription = Some(subscription);
        Ok(())
    }

    /// The partitions this consumer owns now.
    #[must_use]
    pub fn assignment(&self) -> Vec<TopicPartitions> {
        to_wire(&self.owned)
    }

    /// The member id the coordinator gave, while a member.
    #[must_use]
    pub fn member_id(&self) -> Option<String> {
        let member = self.member.as_ref()?;
        let state = member.state.borrow();
        (state.member_epoch > 0).then(|| state.member_id.clone())
    }

    /// The next offset each owned partition will read.
    #[must_use]
    pub fn positions(&self) -> &BTreeMap<(String, u32), u64> {
        self.consumer.positions()
    }

    /// Takes the rebalance events recorded since the last call, oldest first.
    pub fn rebalance_events(&mut self) -> Vec<RebalanceEvent> {
        self.events.drain(..).collect()
    }

    /// Moves an owned partition's position; it is committed like any other position.
    ///
    /// # Errors
    /// `InvalidArgument` if the consumer does not own the partition.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), ClientError> {
        if !self.owned.contains(&(topic.to_owned(), partition)) {
            return Err(ClientError::InvalidArgument(format!(
                "partition {topic}-{partition} is not assigned to this consumer"
            )));
        }
        self.consumer.set_position(topic, partition, offset);
        Ok(())
    }

    /// Acts on what the heartbeat task reported (a lost membership, an error, a new
    /// assignment), commits if the auto-commit interval has passed, then returns the events
    /// fetched from the owned partitions. With nothing owned it waits for an assignment at
    /// most the consumer's `max_wait`, then returns nothing.
    ///
    /// # Errors
    /// `Closed` after `close()`; `InvalidArgument` before a subscription; a fatal group error
    /// (`UnsupportedAssignor`, `InconsistentAssignor`, `InvalidSessionTimeout`,
    /// `UnreleasedInstanceId`, `GroupMaxSizeReached`, ...) once as `ClientError::Server`, after
    /// which the next `poll()` tries to join again; the coordinator unreachable after
    /// `COORDINATOR_ATTEMPTS_MAX` attempts, once (retriable); fetch errors as `Consumer::poll`.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>, ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        if self.subscription.is_none() {
            return Err(ClientError::InvalidArgument(
                "subscribe (or subscribe_pattern) before poll".into(),
            ));
        }
        self.ensure_member();
        if let Some(member) = &self.member {
            member.view.send_if_modified(|view| {
                view.last_poll = Instant::now();
                false
            });
        }
        self.sync().await?;
        if self.config.auto_commit && self.last_commit.elapsed() >= self.config.auto_commit_interval
        {
            self.last_commit = Instant::now();
            match self.commit_owned().await {
                Ok(failed) => {
                    for ((topic, partition), error) in failed {
                        tracing::warn!(group_id = %self.config.group_id, %topic, partition, %error, "auto commit refused");
                    }
                }
                Err(ClientError::NotGroupMember { .. }) => {}
                Err(error) => {
                    tracing::warn!(group_id = %self.config.group_id, %error, "auto commit failed; retrying at the next interval");
                }
            }
        }
        if self.owned.is_empty() {
            if let Some(member) = &self.member {
                let mut state = member.state.clone();
                let _ = tokio::time::timeout(self.idle_wait, state.changed()).await;
            }
            return Ok(Vec::new());
        }
        self.consumer.poll().await
    }

    /// Commits the positions of the owned partitions (those that moved since the last commit).
    ///
    /// # Errors
    /// `NotGroupMember` while not a member; the request's error; or the first partition's
    /// error (e.g. `PartitionNotAssigned`), the other partitions being committed.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        self.apply_losses();
        let failed = self.commit_owned().await?;
        first_failure(failed)
    }

    /// Commits these offsets (each the next offset to read), owned or not: the coordinator
    /// refuses partitions the member does not own with `PartitionNotAssigned`.
    ///
    /// # Errors
    /// As `commit`.
    pub async fn commit_offsets(
        &mut self,
        offsets: BTreeMap<(String, u32), u64>,
    ) -> Result<(), ClientError> {
        self.apply_losses();
        let failed = self.commit_positions(offsets).await?;
        first_failure(failed)
    }

    /// Commits (with auto commit), leaves the group, and ends the heartbeat task. A static
    /// member (with an instance id) leaves with epoch -2: its partitions wait for it for the
    /// session timeout. Later calls to `poll` answer `Closed`.
    ///
    /// # Errors
    /// The commit's error; the member leaves anyway.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let mut result = Ok(());
        if self.member.is_some() {
            self.apply_losses();
            if self.config.auto_commit && !self.owned.is_empty() {
                result = match self.commit_owned().await {
                    Ok(failed) => first_failure(failed),
                    Err(ClientError::NotGroupMember { .. }) => Ok(()),
                    Err(e) => Err(e),
                };
            }
        }
        if let Some(mut member) = self.member.take() {
            member.view.send_modify(|view| view.closing = true);
            if tokio::time::timeout(CLOSE_TIMEOUT, &mut member.task)
                .await
                .is_err()
            {
                tracing::warn!(group_id = %self.config.group_id, "the heartbeat task did not end in time; stopped");
                member.task.abort();
            }
        }
        let owned = std::mem::take(&mut self.owned);
        for (topic, partition) in &owned {
            self.consumer.unassign(topic, *partition);
        }
        if !owned.is_empty() {
            self.push_event(RebalanceEvent::Revoked {
                partitions: to_wire(&owned),
                lost: false,
            });
        }
        result
    }

    /// Starts the heartbeat task, or starts it again if it stopped (it stops only on close
    /// or a panic, which is logged).
    fn ensure_member(&mut self) {
        if let Some(member) = &self.member
            && !member.task.is_finished()
        {
            return;
        }
        if self.member.take().is_some() {
            tracing::error!(group_id = %self.config.group_id, "the heartbeat task stopped; starting it again");
            self.drop_all(true);
        }
        let subscription = self
            .subscription
            .clone()
            .expect("poll checks the subscription first");
        let (view, view_rx) = watch::channel(MemberView {
            subscription,
            owned: BTreeSet::new(),
            losses_seen: 0,
            last_poll: Instant::now(),
            closing: false,
        });
        let (state_tx, state) = watch::channel(GroupState::default());
        self.losses_seen = 0;
        self.errors_seen = 0;
        let task = HeartbeatTask::new(
            Arc::clone(&self.cluster),
            Arc::clone(&self.config),
            view_rx,
            state_tx,
        );
        let task = tokio::spawn(task.run());
        self.member = Some(Member { view, state, task });
    }

    /// Applies the task's report: a loss, an error to return, the assignment.
    async fn sync(&mut self) -> Result<(), ClientError> {
        self.apply_losses();
        let Some(member) = &mut self.member else {
            return Ok(());
        };
        let state = member.state.borrow_and_update().clone();
        if let Some((number, error)) = &state.error
            && *number != self.errors_seen
        {
            self.errors_seen = *number;
            return Err(error.clone());
        }
        if state.member_epoch > 0
            && let Some(assignment) = &state.assignment
        {
            self.reconcile(&state, assignment).await?;
        }
        Ok(())
    }

    /// Drops every owned partition, uncommitted, if the task reported a loss since the last
    /// look.
    fn apply_losses(&mut self) {
        let Some(member) = &self.member else { return };
        let losses = member.state.borrow().losses;
        if losses == self.losses_seen {
            return;
        }
        self.drop_all(true);
        self.losses_seen = losses;
        if let Some(member) = &self.member {
            member.view.send_modify(|view| {
                view.owned.clear();
                view.losses_seen = losses;
            });
        }
    }

    /// Forgets every owned partition without committing and records the event.
    fn drop_all(&mut self, lost: bool) {
        let owned = std::mem::take(&mut self.owned);
        for (topic, partition) in &owned {
            self.consumer.unassign(topic, *partition);
        }
        self.committed.clear();
        if !owned.is_empty() {
            tracing::warn!(group_id = %self.config.group_id, partitions = ?owned, "membership lost; partitions dropped without committing");
            self.push_event(RebalanceEvent::Revoked {
                partitions: to_wire(&owned),
                lost,
            });
        }
    }

    /// Moves the owned set to `assignment`: revokes first (commit, then give up), then adds.
    /// All changes to the owned set happen after the awaits of their step, so a `poll()`
    /// cancelled midway leaves a consistent state for the next one to continue from.
    async fn reconcile(
        &mut self,
        state: &GroupState,
        assignment: &BTreeSet<Tp>,
    ) -> Result<(), ClientError> {
        // Partitions an interrupted reconcile set up in the fetcher but never took on.
        let strays: Vec<Tp> = self
            .consumer
            .positions()
            .keys()
            .filter(|tp| !self.owned.contains(*tp))
            .cloned()
            .collect();
        for (topic, partition) in strays {
            self.consumer.unassign(&topic, partition);
        }
        let Reconciliation { revoked, added } = reconciliation(&self.owned, assignment);
        if !revoked.is_empty() {
            if self.config.commit_on_revoke {
                let offsets = self.uncommitted(&revoked);
                match self.commit_positions(offsets).await {
                    Ok(failed) => {
                        for ((topic, partition), error) in failed {
                            tracing::warn!(group_id = %self.config.group_id, %topic, partition, %error, "commit of a revoked partition refused");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(group_id = %self.config.group_id, %error, "cannot commit revoked partitions; their next owner starts from the last commit");
                    }
                }
            }
            for (topic, partition) in &revoked {
                self.consumer.unassign(topic, *partition);
                self.committed.remove(&(topic.clone(), *partition));
                self.owned.remove(&(topic.clone(), *partition));
            }
            tracing::info!(group_id = %self.config.group_id, member_epoch = state.member_epoch, partitions = ?revoked, "partitions revoked");
            self.push_event(RebalanceEvent::Revoked {
                partitions: to_wire(&revoked),
                lost: false,
            });
            self.publish_owned();
        }
        if added.is_empty() {
            return Ok(());
        }
        let committed = match self.fetch_committed(state, &added).await {
            Ok(committed) => committed,
            Err(error) if error.is_retriable() => {
                tracing::warn!(group_id = %self.config.group_id, %error, "cannot read committed offsets; retrying at the next poll");
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        let mut starts: BTreeMap<Tp, (u64, bool)> = BTreeMap::new();
        for tp in &added {
            if let Some(offset) = committed.get(tp).copied().flatten() {
                starts.insert(tp.clone(), (offset, true));
                continue;
            }
            let reset = SeekTo::from(self.config.auto_offset_reset);
            match self.consumer.resolve_offset(&tp.0, tp.1, reset).await {
                Ok(offset) => {
                    starts.insert(tp.clone(), (offset, false));
                }
                Err(error) if error.is_retriable() => {
                    tracing::warn!(group_id = %self.config.group_id, topic = %tp.0, partition = tp.1, %error, "cannot look up the start offset; retrying at the next poll");
                }
                Err(error) => return Err(error),
            }
        }
        if starts.is_empty() {
            return Ok(());
        }
        for ((topic, partition), (offset, was_committed)) in &starts {
            self.consumer.set_position(topic, *partition, *offset);
            if *was_committed {
                self.committed.insert((topic.clone(), *partition), *offset);
            }
            self.owned.insert((topic.clone(), *partition));
        }
        let taken: BTreeSet<Tp> = starts.into_keys().collect();
        tracing::info!(group_id = %self.config.group_id, member_epoch = state.member_epoch, partitions = ?taken, "partitions assigned");
        self.push_event(RebalanceEvent::Assigned(to_wire(&taken)));
        self.publish_owned();
        Ok(())
    }

    fn publish_owned(&self) {
        if let Some(member) = &self.member {
            let owned = self.owned.clone();
            member.view.send_modify(|view| view.owned = owned);
        }
    }

    fn push_event(&mut self, event: RebalanceEvent) {
        if self.events.len() >= REBALANCE_EVENTS_MAX {
            tracing::warn!(
                kept = REBALANCE_EVENTS_MAX,
                "rebalance events not drained; dropping the oldest"
            );
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The positions (of what `poll` returned) of these partitions that differ from the
    /// last commit.
    fn uncommitted(&self, partitions: &BTreeSet<Tp>) -> BTreeMap<Tp, u64> {
        partitions
            .iter()
            .filter_map(|tp| {
                let position = self.consumer.returned_position(&tp.0, tp.1)?;
                (self.committed.get(tp) != Some(&position)).then(|| (tp.clone(), position))
            })
            .collect()
    }

    async fn commit_owned(&mut self) -> Result<Vec<(Tp, ResponseError)>, ClientError> {
        let offsets = self.uncommitted(&self.owned);
        self.commit_positions(offsets).await
    }

    /// One OffsetCommit with the current member id and epoch; returns the partitions refused.
    /// A whole-request `StaleMemberEpoch` waits for the next heartbeat answer (bounded by the
    /// heartbeat interval plus `HEARTBEAT_ANSWER_SLACK`) and tries once more.
    async fn commit_positions(
        &mut self,
        offsets: BTreeMap<Tp, u64>,
    ) -> Result<Vec<(Tp, ResponseError)>, ClientError> {
        if offsets.is_empty() {
            return Ok(Vec::new());
        }
        let not_member = || ClientError::NotGroupMember {
            group_id: self.config.group_id.clone(),
        };
        let Some(member) = &self.member else {
            return Err(not_member());
        };
        let mut states = member.state.clone();
        let mut retried = false;
        let answer = loop {
            let state = states.borrow_and_update().clone();
            if state.member_epoch <= 0 {
                return Err(not_member());
            }
            let request = OffsetCommitRequest {
                group_id: self.config.group_id.clone(),
                member_id: state.member_id.clone(),
                member_epoch: state.member_epoch,
                topics: commit_request_topics(&offsets),
            };
            match self.send_to_group(&state, &request).await {
                Err(e) if e.code() == Some(ErrorCode::StaleMemberEpoch) && !retried => {
                    retried = true;
                    let wait = state.heartbeat_interval + HEARTBEAT_ANSWER_SLACK;
                    let answers = state.answers;
                    let _ =
                        tokio::time::timeout(wait, states.wait_for(|s| s.answers != answers)).await;
                }
                other => break other?,
            }
        };
        let mut failed = Vec::new();
        for topic in answer.topics {
            for p in topic.partitions {
                let tp = (topic.topic.clone(), p.partition.0);
                match p.error {
                    Some(error) => failed.push((tp, error)),
                    None => {
                        if let Some(offset) = offsets.get(&tp) {
                            self.committed.insert(tp, *offset);
                        }
                    }
                }
            }
        }
        Ok(failed)
    }

    /// The committed offsets of `partitions` (`None`: nothing committed).
    async fn fetch_committed(
        &self,
        state: &GroupState,
        partitions: &BTreeSet<Tp>,
    ) -> Result<BTreeMap<Tp, Option<u64>>, ClientError> {
        let request = OffsetFetchRequest {
            group_id: self.config.group_id.clone(),
            topics: Some(to_wire(partitions)),
        };
        let answer = self.send_to_group(state, &request).await?;
        Ok(answer
            .topics
            .into_iter()
            .flat_map(|t| {
                let topic = t.topic;
                t.partitions
                    .into_iter()
                    .map(move |p| ((topic.clone(), p.partition.0), p.offset.map(|o| o.0)))
            })
            .collect())
    }

    /// Sends a request to the coordinator the heartbeat task talks to; if that fails because
    /// it moved (or is not known yet), finds it again with bounded retries.
    async fn send_to_group<R: RequestBody>(
        &self,
        state: &GroupState,
        request: &R,
    ) -> Result<R::Response, ClientError> {
        if let Some(addr) = &state.coordinator {
            let result = async {
                self.cluster
                    .connection_to(addr)
                    .await?
                    .send(request, GROUP_REQUEST_TIMEOUT)
                    .await
            }
            .await;
            match result {
                Err(e) if wants_coordinator_retry(&e) => {
                    tracing::debug!(group_id = %self.config.group_id, error = %e, "coordinator request failed; finding it again");
                }
                other => return other,
            }
        }
        send_to_coordinator(&self.cluster, &self.config.group_id, request, |_| None).await
    }
}

/// The first refused partition as an error, or success.
fn first_failure(failed: Vec<(Tp, ResponseError)>) -> Result<(), ClientError> {
    let mut failed = failed.into_iter();
    let Some(((topic, partition), error)) = failed.next() else {
        return Ok(());
    };
    for ((topic, partition), error) in failed {
        tracing::warn!(%topic, partition, %error, "commit refused");
    }
    tracing::warn!(%topic, partition, %error, "commit refused");
    Err(ClientError::Server(error))
}

// ---- The heartbeat task ----

/// The heartbeat loop of one membership. Owns the coordinator connection and the member's
/// identity; reads `MemberView`, writes `GroupState`.
struct HeartbeatTask {
    cluster: Arc<Cluster>,
    config: Arc<GroupConfig>,
    view: watch::Receiver<MemberView>,
    state: watch::Sender<GroupState>,
    /// A connection of its own to the coordinator, never shared with fetches.
    connection: Option<Connection>,
    member_id: String,
    /// Above 0 while a member.
    member_epoch: i32,
    /// The assignment of the last answer.
    assignment: BTreeSet<Tp>,
    heartbeat_interval: Duration,
    session_timeout: Duration,
    /// The subscription last resolved, the topics it resolved to, when, and the topics the
    /// coordinator last received.
    subscription: Option<Subscription>,
    topics: Vec<String>,
    topics_resolved_at: Option<Instant>,
    topics_sent: Option<Vec<String>>,
    losses: u64,
    errors: u64,
    /// Set after leaving for a missed poll interval or a fatal error: the task waits until the
    /// consumer has acted on the loss (it polled again) and until this instant, then joins.
    parked: Option<Instant>,
    last_success: Instant,
    last_sent: Option<Instant>,
    /// Heartbeats failed in a row (reset by an answer).
    failures: u32,
    backoff: Backoff,
}

impl std::fmt::Debug for HeartbeatTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatTask")
            .field("group_id", &self.config.group_id)
            .field("member_id", &self.member_id)
            .field("member_epoch", &self.member_epoch)
            .finish_non_exhaustive()
    }
}

impl HeartbeatTask {
    fn new(
        cluster: Arc<Cluster>,
        config: Arc<GroupConfig>,
        view: watch::Receiver<MemberView>,
        state: watch::Sender<GroupState>,
    ) -> HeartbeatTask {
        let session_timeout = config.session_timeout.unwrap_or(SESSION_TIMEOUT_ASSUMED);
        HeartbeatTask {
            cluster,
            config,
            view,
            state,
            connection: None,
            member_id: String::new(),
            member_epoch: 0,
            assignment: BTreeSet::new(),
            heartbeat_interval: HEARTBEAT_INTERVAL_MIN,
            session_timeout,
            subscription: None,
            topics: Vec::new(),
            topics_resolved_at: None,
            topics_sent: None,
            losses: 0,
            errors: 0,
            parked: None,
            last_success: Instant::now(),
            last_sent: None,
            failures: 0,
            backoff: Backoff::new(),
        }
    }

    fn is_member(&self) -> bool {
        self.member_epoch > 0
    }

    /// Runs until the consumer closes or is dropped, then leaves.
    async fn run(mut self) {
        let mut closing = self.view.clone();
        loop {
            let stop = self.view.has_changed().is_err() || self.view.borrow().closing;
            if stop {
                let epoch = if self.config.instance_id.is_some() {
                    MEMBER_EPOCH_LEAVE_STATIC
                } else {
                    MEMBER_EPOCH_LEAVE
                };
                self.leave(epoch).await;
                return;
            }
            tokio::select! {
                () = self.step() => {}
                () = closed(&mut closing) => {}
            }
        }
    }

    /// One turn: wait out a park, check the poll interval, or send one heartbeat and act on
    /// its outcome.
    async fn step(&mut self) {
        let view = self.view.borrow_and_update().clone();
        if let Some(not_before) = self.parked {
            if view.losses_seen != self.losses {
                // Until the consumer polls again and drops what it lost.
                let _ = self.view.changed().await;
                return;
            }
            tokio::time::sleep_until(not_before.into()).await;
            self.parked = None;
            return;
        }
        if self.is_member() && view.last_poll.elapsed() > self.config.max_poll_interval {
            tracing::warn!(
                group_id = %self.config.group_id,
                member_id = %self.member_id,
                max_poll_interval_ms = self.config.max_poll_interval.as_millis() as u64,
                "poll() was not called within max_poll_interval; leaving the group (the next poll joins again)"
            );
            self.leave(MEMBER_EPOCH_LEAVE).await;
            self.lose(None);
            self.parked = Some(Instant::now());
            return;
        }
        if let Some(last) = self.last_sent {
            tokio::time::sleep_until((last + HEARTBEAT_SPACING_MIN).into()).await;
        }
        let connection = match self.connection().await {
            Ok(connection) => connection,
            Err(error) => return self.on_error(error).await,
        };
        self.resolve_topics(&view).await;
        let request = self.request(&view);
        self.last_sent = Some(Instant::now());
        let park = Duration::from_millis(u64::from(request.max_wait_ms));
        let wait = park + HEARTBEAT_ANSWER_SLACK;
        let result = match tokio::time::timeout(wait, connection.send(&request, park)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(wait.as_millis() as u64)),
        };
        match result {
            Ok(answer) => self.on_answer(answer, &request).await,
            Err(error) => self.on_error(error).await,
        }
    }

    /// The connection to the coordinator, found and opened if there is none (one attempt:
    /// the loop retries).
    async fn connection(&mut self) -> Result<Connection, ClientError> {
        if let Some(connection) = &self.connection
            && !connection.is_broken()
        {
            return Ok(connection.clone());
        }
        self.connection = None;
        let found = find_coordinator_once(&self.cluster, &self.config.group_id).await?;
        let addr = coordinator_addr(&found);
        let connection = Connection::connect(&addr, self.cluster.client_id()).await?;
        tracing::debug!(group_id = %self.config.group_id, coordinator = %addr, "connected to the coordinator");
        self.state.send_modify(|s| s.coordinator = Some(addr));
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// Brings `topics` up to date with the subscription: a list as given; a pattern matched
    /// against fresh metadata when joining, when it changed, and every
    /// `PATTERN_REFRESH_INTERVAL`. A failed metadata request keeps the last match.
    async fn resolve_topics(&mut self, view: &MemberView) {
        let changed = self.subscription.as_ref() != Some(&view.subscription);
        match &view.subscription {
            Subscription::Topics(topics) => self.topics.clone_from(topics),
            Subscription::Pattern(pattern) => {
                let due = changed
                    || !self.is_member()
                    || self
                        .topics_resolved_at
                        .is_none_or(|at| at.elapsed() >= PATTERN_REFRESH_INTERVAL);
                if due {
                    match self.cluster.refresh().await {
                        Ok(metadata) => {
                            let topics = pattern.matching_topics(&metadata);
                            if topics != self.topics {
                                tracing::info!(group_id = %self.config.group_id, pattern = pattern.as_str(), ?topics, "pattern subscription matches");
                            }
                            self.topics = topics;
                            self.topics_resolved_at = Some(Instant::now());
                        }
                        Err(error) => {
                            tracing::warn!(group_id = %self.config.group_id, %error, "cannot match the topic pattern; keeping the last match");
                        }
                    }
                }
            }
        }
        self.subscription = Some(view.subscription.clone());
    }

    fn request(&self, view: &MemberView) -> ConsumerGroupHeartbeatRequest {
        let config = &self.config;
        if !self.is_member() {
            return ConsumerGroupHeartbeatRequest {
                group_id: config.group_id.clone(),
                member_id: String::new(),
                member_epoch: MEMBER_EPOCH_JOIN,
                instance_id: config.instance_id.clone(),
                rebalance_timeout_ms: config.rebalance_timeout.map(duration_ms),
                session_timeout_ms: config.session_timeout.map(duration_ms),
                subscribed_topics: Some(self.topics.clone()),
                assignor: config.assignor.map(|a| a.as_str().to_owned()),
                owned_partitions: Some(Vec::new()),
                max_wait_ms: 0,
            };
        }
        let owned = reported_owned(view, self.losses);
        // While the consumer has not caught up with the assignment, do not park: the
        // heartbeat that reports its progress must not wait behind this one.
        let max_wait_ms = if owned == self.assignment {
            park_ms(self.heartbeat_interval, self.session_timeout)
        } else {
            0
        };
        ConsumerGroupHeartbeatRequest {
            group_id: config.group_id.clone(),
            member_id: self.member_id.clone(),
            member_epoch: self.member_epoch,
            subscribed_topics: (self.topics_sent.as_ref() != Some(&self.topics))
                .then(|| self.topics.clone()),
            owned_partitions: Some(to_wire(&owned)),
            max_wait_ms,
            ..ConsumerGroupHeartbeatRequest::default()
        }
    }

    async fn on_answer(
        &mut self,
        answer: ConsumerGroupHeartbeatResponse,
        request: &ConsumerGroupHeartbeatRequest,
    ) {
        self.failures = 0;
        self.backoff.reset();
        self.last_success = Instant::now();
        if answer.member_epoch <= 0 {
            // Only a leave is answered so; treat it as the end of this membership.
            tracing::warn!(group_id = %self.config.group_id, member_epoch = answer.member_epoch, "the coordinator ended the membership; joining again");
            self.lose(None);
            return;
        }
        if let Some(topics) = &request.subscribed_topics {
            self.topics_sent = Some(topics.clone());
        }
        if self.member_epoch != answer.member_epoch || self.member_id != answer.member_id {
            tracing::debug!(group_id = %self.config.group_id, member_id = %answer.member_id, member_epoch = answer.member_epoch, "member epoch");
        }
        self.member_id = answer.member_id;
        self.member_epoch = answer.member_epoch;
        // Clamped: the interval also bounds how long the task waits for the consumer to
        // reconcile, and a commit's wait for a fresh epoch.
        self.heartbeat_interval = Duration::from_millis(u64::from(answer.heartbeat_interval_ms))
            .clamp(HEARTBEAT_INTERVAL_MIN, HEARTBEAT_INTERVAL_MAX);
        if answer.session_timeout_ms > 0 {
            self.session_timeout = Duration::from_millis(u64::from(answer.session_timeout_ms));
        }
        self.assignment = from_wire(&answer.assignment);
        let assignment = self.assignment.clone();
        let (member_id, member_epoch, interval) = (
            self.member_id.clone(),
            self.member_epoch,
            self.heartbeat_interval,
        );
        self.state.send_modify(|s| {
            s.member_id = member_id;
            s.member_epoch = member_epoch;
            s.assignment = Some(assignment);
            s.heartbeat_interval = interval;
            s.answers += 1;
        });
        // Give the consumer (at most one heartbeat interval) to reconcile, so the next
        // heartbeat carries the acknowledgement.
        let deadline = tokio::time::Instant::now() + self.heartbeat_interval;
        loop {
            let losses = self.losses;
            let caught_up = {
                let view = self.view.borrow_and_update();
                view.closing || reported_owned(&view, losses) == self.assignment
            };
            if caught_up {
                return;
            }
            match tokio::time::timeout_at(deadline, self.view.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }

    async fn on_error(&mut self, error: ClientError) {
        self.failures = self.failures.saturating_add(1);
        match error.code() {
            Some(ErrorCode::FencedMemberEpoch | ErrorCode::UnknownMemberId) => {
                tracing::warn!(group_id = %self.config.group_id, member_id = %self.member_id, %error, "fenced: dropping every partition and joining again");
                self.lose(None);
                tokio::time::sleep(self.backoff.next_delay()).await;
            }
            _ if wants_coordinator_retry(&error) => {
                self.connection = None;
                if self.is_member() && self.last_success.elapsed() > self.session_timeout {
                    tracing::warn!(group_id = %self.config.group_id, %error, "no heartbeat answer within the session timeout; the partitions are lost");
                    self.lose(None);
                }
                if self.failures == COORDINATOR_ATTEMPTS_MAX {
                    // Tell the application once per outage; keep trying.
                    self.surface(error.clone());
                }
                tracing::debug!(group_id = %self.config.group_id, %error, failures = self.failures, "heartbeat failed; finding the coordinator again");
                tokio::time::sleep(self.backoff.next_delay()).await;
            }
            _ => {
                tracing::error!(group_id = %self.config.group_id, %error, "the group refused this member");
                if self.is_member() {
                    self.leave(MEMBER_EPOCH_LEAVE).await;
                }
                self.lose(Some(error));
                self.parked = Some(Instant::now() + BACKOFF_MAX);
            }
        }
    }

    /// Ends this membership: the consumer drops what it owns uncommitted, and the next
    /// heartbeat joins again (epoch 0, same instance id).
    fn lose(&mut self, error: Option<ClientError>) {
        self.member_id.clear();
        self.member_epoch = 0;
        self.assignment.clear();
        self.topics_sent = None;
        self.losses += 1;
        let losses = self.losses;
        self.state.send_modify(|s| {
            s.member_id.clear();
            s.member_epoch = 0;
            s.assignment = None;
            s.losses = losses;
        });
        if let Some(error) = error {
            self.surface(error);
        }
    }

    /// Hands an error to the next `poll()`.
    fn surface(&mut self, error: ClientError) {
        self.errors += 1;
        let number = self.errors;
        self.state.send_modify(|s| s.error = Some((number, error)));
    }

    /// Sends a leave heartbeat (best effort, at most `LEAVE_TIMEOUT`) and forgets the member.
    async fn leave(&mut self, epoch: i32) {
        if !self.is_member() {
            return;
        }
        let request = ConsumerGroupHeartbeatRequest {
            group_id: self.config.group_id.clone(),
            member_id: self.member_id.clone(),
            member_epoch: epoch,
            instance_id: self.config.instance_id.clone(),
            ..ConsumerGroupHeartbeatRequest::default()
        };
        let result = tokio::time::timeout(LEAVE_TIMEOUT, async {
            self.connection().await?.send(&request, LEAVE_TIMEOUT).await
        })
        .await;
        match result {
            Ok(Ok(_)) => {
                tracing::info!(group_id = %self.config.group_id, member_id = %self.member_id, member_epoch = epoch, "left the group");
            }
            Ok(Err(error)) => {
                tracing::warn!(group_id = %self.config.group_id, %error, "leave failed; the coordinator removes the member after its session timeout");
            }
            Err(_) => {
                tracing::warn!(
                    group_id = %self.config.group_id,
                    "leave timed out; the coordinator removes the member after its session timeout"
                );
            }
        }
        self.member_id.clear();
        self.member_epoch = 0;
        self.assignment.clear();
        self.topics_sent = None;
        self.state.send_modify(|s| {
            s.member_id.clear();
            s.member_epoch = 0;
            s.assignment = None;
        });
    }
}

/// What the member reports owning: nothing until the consumer has acted on the last loss
/// (`losses`, the task's count), since until then its owned set holds partitions it lost.
fn reported_owned(view: &MemberView, losses: u64) -> BTreeSet<Tp> {
    if view.losses_seen == losses {
        view.owned.clone()
    } else {
        BTreeSet::new()
    }
}

/// Returns when the consumer asks to close or is dropped.
async fn closed(view: &mut watch::Receiver<MemberView>) {
    loop {
        if view.borrow_and_update().closing {
            return;
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

fn duration_ms(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
