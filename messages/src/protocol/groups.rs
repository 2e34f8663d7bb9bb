//! Consumer groups: FindCoordinator (11), ConsumerGroupHeartbeat (12), OffsetCommit (13),
//! OffsetFetch (14), ListGroups (15), DescribeGroups (16), DeleteGroups (17) and
//! ResetOffsets (18).
//!
//! Membership follows KIP-848: a member joins, stays and leaves through one heartbeat request;
//! the coordinator computes the assignment and hands it out incrementally, and every member has
//! an epoch that fences its stale requests. PROTOCOL.md §6.11-6.18 describes the exchange.

use serde::{Deserialize, Serialize};

use super::codec::{check_at_most, check_topic_names, validate_topic_name};
use super::error::{ProtocolError, ResponseError};
use crate::limits::{
    GROUP_ID_BYTES_MAX, GROUP_MEMBER_FIELD_BYTES_MAX, GROUP_WAIT_MS_MAX, GROUPS_PER_REQUEST_MAX,
    OFFSET_METADATA_BYTES_MAX, PARTITIONS_PER_REQUEST_MAX, TOPICS_PER_REQUEST_MAX,
};
use crate::{LeaderEpoch, NodeId, Offset, PartitionId};

/// `member_epoch` of a heartbeat that joins the group.
pub const MEMBER_EPOCH_JOIN: i32 = 0;
/// `member_epoch` of a heartbeat that leaves the group for good.
pub const MEMBER_EPOCH_LEAVE: i32 = -1;
/// `member_epoch` of a static member's heartbeat that leaves for now: its partitions stay
/// reserved for its instance id until the session timeout passes.
pub const MEMBER_EPOCH_LEAVE_STATIC: i32 = -2;
/// `member_epoch` of an OffsetCommit from outside the group (a consumer that assigns its
/// partitions itself, or an operator tool); accepted only while the group has no members.
pub const MEMBER_EPOCH_NONE: i32 = -1;

/// A group id is 1 to `GROUP_ID_BYTES_MAX` bytes; anything else is `InvalidGroupId`, the
/// code PROTOCOL.md gives for it, in every group request.
fn check_group_id(group_id: &str) -> Result<(), ProtocolError> {
    if group_id.is_empty() || group_id.len() > GROUP_ID_BYTES_MAX as usize {
        return Err(ProtocolError::InvalidGroupId {
            bytes: group_id.len(),
            max: GROUP_ID_BYTES_MAX,
        });
    }
    Ok(())
}

fn check_group_ids(group_ids: &[String]) -> Result<(), ProtocolError> {
    check_at_most("group_ids", group_ids.len(), GROUPS_PER_REQUEST_MAX)?;
    group_ids.iter().try_for_each(|g| check_group_id(g))
}

fn check_partitions(topics: &[TopicPartitions]) -> Result<(), ProtocolError> {
    check_at_most("topics", topics.len(), TOPICS_PER_REQUEST_MAX)?;
    let mut partitions = 0usize;
    for topic in topics {
        validate_topic_name(&topic.topic)?;
        partitions += topic.partitions.len();
    }
    check_at_most("partitions", partitions, PARTITIONS_PER_REQUEST_MAX)
}

/// Partitions of one topic.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartitions {
    pub topic: String,
    pub partitions: Vec<PartitionId>,
}

// ---- 11 FindCoordinator ----

/// FindCoordinator request, version 1: which node coordinates a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindCoordinatorRequest {
    pub group_id: String,
}

impl FindCoordinatorRequest {
    /// # Errors
    /// `InvalidGroupId`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_group_id(&self.group_id)
    }
}

/// FindCoordinator response, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindCoordinatorResponse {
    pub node_id: NodeId,
    pub host: String,
    pub port: u16,
    /// The partition of `__consumer_offsets` that holds the group's commits.
    pub offsets_partition: PartitionId,
}

// ---- 12 ConsumerGroupHeartbeat ----

/// ConsumerGroupHeartbeat request, version 1: join (`member_epoch` 0), stay, or leave (-1, or
/// -2 for a static member that will come back).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerGroupHeartbeatRequest {
    pub group_id: String,
    /// Empty when joining: the coordinator gives one.
    pub member_id: String,
    pub member_epoch: i32,
    /// A static member's stable identity across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Joining: how long the member may take to give up revoked partitions; absent: the
    /// node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance_timeout_ms: Option<u32>,
    /// Joining: how long without a heartbeat before the member is removed; absent: the node's
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_timeout_ms: Option<u32>,
    /// The topics the member reads; required when joining, absent: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed_topics: Option<Vec<String>>,
    /// `range`, `round-robin` or `sticky`; sets the group's assignor while the group is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignor: Option<String>,
    /// The partitions the member holds now; absent: unchanged since its last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_partitions: Option<Vec<TopicPartitions>>,
    /// Park the heartbeat until the member's assignment changes, at most this long (0:
    /// answer at once); at most 60,000 and below the session timeout.
    #[serde(default)]
    pub max_wait_ms: u32,
}

impl ConsumerGroupHeartbeatRequest {
    /// # Errors
    /// The first field out of bounds.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_group_id(&self.group_id)?;
        check_at_most(
            "member_id bytes",
            self.member_id.len(),
            GROUP_MEMBER_FIELD_BYTES_MAX,
        )?;
        if let Some(instance) = &self.instance_id {
            check_at_most(
                "instance_id bytes",
                instance.len(),
                GROUP_MEMBER_FIELD_BYTES_MAX,
            )?;
        }
        if let Some(assignor) = &self.assignor {
            check_at_most(
                "assignor bytes",
                assignor.len(),
                GROUP_MEMBER_FIELD_BYTES_MAX,
            )?;
        }
        if let Some(topics) = &self.subscribed_topics {
            check_topic_names(
                "subscribed_topics",
                topics.iter().map(String::as_str),
                TOPICS_PER_REQUEST_MAX,
            )?;
        }
        if let Some(owned) = &self.owned_partitions {
            check_partitions(owned)?;
        }
        check_at_most("max_wait_ms", self.max_wait_ms, GROUP_WAIT_MS_MAX)
    }
}

/// ConsumerGroupHeartbeat response, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerGroupHeartbeatResponse {
    pub member_id: String,
    /// The member's epoch now; -1 after a leave.
    pub member_epoch: i32,
    pub heartbeat_interval_ms: u32,
    pub session_timeout_ms: u32,
    /// Every partition the member may own now. Partitions it owns and that are missing here
    /// are revoked: it stops reading them, may commit them, and reports them gone in its next
    /// heartbeat's `owned_partitions`.
    pub assignment: Vec<TopicPartitions>,
}

// ---- 13 OffsetCommit ----

/// OffsetCommit request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommitRequest {
    pub group_id: String,
    /// Empty with `member_epoch` -1 for a commit from outside the group.
    pub member_id: String,
    pub member_epoch: i32,
    pub topics: Vec<OffsetCommitTopic>,
}

/// Commits for one topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommitTopic {
    pub topic: String,
    pub partitions: Vec<OffsetCommitPartition>,
}

/// One commit: the next offset the group will read from this partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommitPartition {
    pub partition: PartitionId,
    pub offset: Offset,
    /// The leader epoch of the last record consumed, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_epoch: Option<LeaderEpoch>,
    /// Free text kept with the offset (at most 4,096 bytes).
    #[serde(default)]
    pub metadata: String,
}

impl OffsetCommitRequest {
    /// # Errors
    /// The first field out of bounds.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_group_id(&self.group_id)?;
        check_at_most(
            "member_id bytes",
            self.member_id.len(),
            GROUP_MEMBER_FIELD_BYTES_MAX,
        )?;
        check_at_most("topics", self.topics.len(), TOPICS_PER_REQUEST_MAX)?;
        let mut count = 0usize;
        for topic in &self.topics {
            validate_topic_name(&topic.topic)?;
            count += topic.partitions.len();
            for p in &topic.partitions {
                check_at_most(
                    "metadata bytes",
                    p.metadata.len(),
                    OFFSET_METADATA_BYTES_MAX,
                )?;
            }
        }
        check_at_most("partitions", count, PARTITIONS_PER_REQUEST_MAX)
    }
}

/// OffsetCommit response, version 1: one result per partition, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommitResponse {
    pub topics: Vec<PartitionResults>,
}

/// Results for the partitions of one topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionResults {
    pub topic: String,
    pub partitions: Vec<PartitionResult>,
}

/// One partition's result; `error` absent means done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionResult {
    pub partition: PartitionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
}

// ---- 14 OffsetFetch ----

/// OffsetFetch request, version 1: a group's committed offsets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetFetchRequest {
    pub group_id: String,
    /// Absent: every partition the group has committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<TopicPartitions>>,
}

impl OffsetFetchRequest {
    /// # Errors
    /// The first field out of bounds.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_group_id(&self.group_id)?;
        match &self.topics {
            Some(topics) => check_partitions(topics),
            None => Ok(()),
        }
    }
}

/// OffsetFetch response, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetFetchResponse {
    pub topics: Vec<CommittedTopic>,
}

/// Committed offsets of one topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedTopic {
    pub topic: String,
    pub partitions: Vec<CommittedOffset>,
}

/// One partition's committed offset; `offset` absent: nothing committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub partition: PartitionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<Offset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_epoch: Option<LeaderEpoch>,
    #[serde(default)]
    pub metadata: String,
}

// ---- 15 ListGroups ----

/// ListGroups request, version 1: the groups this node coordinates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListGroupsRequest {}

impl ListGroupsRequest {
    /// # Errors
    /// Never: the body has no fields.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        Ok(())
    }
}

/// ListGroups response, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListGroupsResponse {
    pub groups: Vec<GroupListing>,
}

/// One group in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupListing {
    pub group_id: String,
    /// `empty`, `reconciling` (moving partitions) or `stable`.
    pub state: String,
    pub members: u32,
    pub assignor: String,
}

// ---- 16 DescribeGroups ----

/// DescribeGroups request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeGroupsRequest {
    pub group_ids: Vec<String>,
}

impl DescribeGroupsRequest {
    /// # Errors
    /// The first field out of bounds.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_group_ids(&self.group_ids)
    }
}

/// DescribeGroups response, version 1: one description per group, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeGroupsResponse {
    pub groups: Vec<GroupDescription>,
}

/// Everything about one group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDescription {
    pub group_id: String,
    /// `GroupIdNotFound`, `NotCoordinator`, ...; the other fields are then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
    pub state: String,
    /// Bumped by every change of membership or subscriptions.
    pub group_epoch: i32,
    /// The group epoch the current target assignment was computed at.
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<MemberDescription>,
    /// Every partition of the subscribed topics and every partition with a commit.
    pub offsets: Vec<PartitionLag>,
    /// The most recent rebalances, newest first.
    pub rebalances: Vec<RebalanceRecord>,
}

/// One member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDescription {
    pub member_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub client_id: String,
    /// The member's address as the coordinator saw it.
    pub host: String,
    pub member_epoch: i32,
    pub subscribed_topics: Vec<String>,
    /// What it may own now.
    pub assigned: Vec<TopicPartitions>,
    /// Revoked from it and not yet given up.
    pub pending_revocation: Vec<TopicPartitions>,
}

/// A partition's committed offset and how far behind the group is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: PartitionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_offset: Option<Offset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_watermark: Option<Offset>,
    /// High watermark minus committed offset (or minus the log start offset when nothing is
    /// committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// How old the oldest unconsumed event is, in ms (0 without lag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// The member that owns the partition now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One rebalance: when, why, and which partitions moved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceRecord {
    /// Unix ms.
    pub at_ms: u64,
    pub reason: String,
    pub group_epoch: i32,
    pub moves: Vec<PartitionMove>,
}

/// A partition moving between members; `from` or `to` absent: no owner on that side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMove {
    pub topic: String,
    pub partition: PartitionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

// ---- 17 DeleteGroups ----

/// DeleteGroups request, version 1: delete empty groups and their committed offsets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteGroupsRequest {
    pub group_ids: Vec<String>,
}

impl DeleteGroupsRequest {
    /// # Errors
    /// The first field out of bounds.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_group_ids(&self.group_ids)
    }
}

/// DeleteGroups response, version 1: one result per group, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteGroupsResponse {
    pub groups: Vec<GroupResult>,
}

/// One group's result; `error` absent means done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupResult {
    pub group_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
}

// ---- 18 ResetOffsets ----

/// ResetOffsets request, version 1: set an empty group's committed offsets for a topic.
///
/// `to` is `"earliest"`, `"latest"`, `"offset"` (with `offset`) or `"timestamp"` (with
/// `timestamp`, ms since the Unix epoch: the first offset at or after it, or the high
/// watermark when there is none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetOffsetsRequest {
    pub group_id: String,
    pub topic: String,
    /// Absent: every partition of the topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<PartitionId>>,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<Offset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// Compute and answer the new offsets without committing them.
    #[serde(default)]
    pub dry_run: bool,
}

/// Where ResetOffsets moves a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(Offset),
    Timestamp(i64),
}

impl ResetOffsetsRequest {
    /// The target, checked: `to` and its companion field agree.
    ///
    /// # Errors
    /// `InvalidField` naming what does not fit.
    pub fn target(&self) -> Result<ResetTo, ProtocolError> {
        let bad = |reason: &'static str| ProtocolError::InvalidField {
            field: "to",
            reason,
        };
        match (self.to.as_str(), self.offset, self.timestamp) {
            ("earliest", None, None) => Ok(ResetTo::Earliest),
            ("latest", None, None) => Ok(ResetTo::Latest),
            ("offset", Some(offset), None) => Ok(ResetTo::Offset(offset)),
            ("timestamp", None, Some(timestamp)) => Ok(ResetTo::Timestamp(timestamp)),
            ("offset", None, _) => Err(bad("\"offset\" needs an offset field")),
            ("timestamp", _, None) => Err(bad("\"timestamp\" needs a timestamp field")),
            ("earliest" | "latest" | "offset" | "timestamp", _, _) => Err(bad(
                "offset goes only with \"offset\", timestamp only with \"timestamp\"",
            )),
            _ => Err(bad(
                "must be \"earliest\", \"latest\", \"offset\" or \"timestamp\"",
            )),
        }
    }

    /// # Errors
    /// The first field out of bounds, or a `to` that does not fit its fields.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_group_id(&self.group_id)?;
        validate_topic_name(&self.topic)?;
        if let Some(partitions) = &self.partitions {
            check_at_most("partitions", partitions.len(), PARTITIONS_PER_REQUEST_MAX)?;
        }
        self.target().map(|_| ())
    }
}

/// ResetOffsets response, version 1: the offset each partition was (or would be) set to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetOffsetsResponse {
    pub partitions: Vec<ResetPartition>,
}

/// One partition's new offset, or why it has none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetPartition {
    pub partition: PartitionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<Offset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
}
