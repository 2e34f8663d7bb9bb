//! Replica placement administration: AlterPartitionReassignments (22), which moves partitions
//! to other replicas (Kafka's `kafka-reassign-partitions`, KIP-455).
//!
//! Each listed partition names the replicas it is to have, the preferred leader first. The
//! controller adds the new replicas at once, beside the old ones; they copy the leader's log
//! and join the in-sync replicas, and the change that brings the last of them in sync drops the
//! old ones (moving the leadership to the first live target replica if the leader leaves).
//! The answer comes once the move has started (or, if the target was in sync already,
//! completed); `DescribeTopics` shows a move under way, and a client that waits for the move
//! polls it.

use serde::{Deserialize, Serialize};

use super::codec::{check_at_most, validate_topic_name};
use super::error::{ProtocolError, ResponseError};
use crate::limits::{PARTITIONS_PER_REQUEST_MAX, REASSIGNMENT_REPLICAS_MAX, TIMEOUT_MS_MAX};
use crate::types::{LeaderEpoch, NodeId, PartitionId};

/// AlterPartitionReassignments request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterPartitionReassignmentsRequest {
    /// The partitions to move: 1 to `PARTITIONS_PER_REQUEST_MAX`.
    pub partitions: Vec<PartitionReassignment>,
    /// How long the node may take to commit the moves' start and have its own replicas follow;
    /// at most 300,000. The moves themselves (the copying) go on after the answer.
    pub timeout_ms: u32,
}

/// One partition to move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReassignment {
    pub topic: String,
    pub partition: PartitionId,
    /// The replicas the partition is to have, the preferred leader first: at most
    /// `REASSIGNMENT_REPLICAS_MAX`. An empty list, a node named twice or one that is not
    /// registered is that partition's `InvalidRequest`, not the request's.
    pub replicas: Vec<NodeId>,
}

impl AlterPartitionReassignmentsRequest {
    /// Checks the counts, the names and the timeout.
    ///
    /// # Errors
    /// `FieldTooLarge`, `InvalidTopicName` or `InvalidField`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_at_most("timeout_ms", self.timeout_ms, TIMEOUT_MS_MAX)?;
        check_at_most(
            "partitions",
            self.partitions.len(),
            PARTITIONS_PER_REQUEST_MAX,
        )?;
        if self.partitions.is_empty() {
            return Err(ProtocolError::InvalidField {
                field: "partitions",
                reason: "a reassignment names at least one partition",
            });
        }
        for reassignment in &self.partitions {
            validate_topic_name(&reassignment.topic)?;
            check_at_most(
                "replicas",
                reassignment.replicas.len(),
                REASSIGNMENT_REPLICAS_MAX,
            )?;
        }
        Ok(())
    }
}

/// AlterPartitionReassignments response, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterPartitionReassignmentsResponse {
    /// One result per requested partition, in request order.
    pub partitions: Vec<PartitionReassignmentResult>,
}

/// One partition's outcome: its placement after the request, or its error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReassignmentResult {
    pub topic: String,
    pub partition: PartitionId,
    /// E.g. `UnknownTopic`, `UnknownPartition`, `InvalidRequest`; the fields below are then
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
    /// The partition's replicas after the request: while the move is under way, the target
    /// first and then the replicas that leave when it completes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<NodeId>,
    /// The target of the move under way; absent when the partition is on its target already
    /// (the move completed at once, or there was nothing to move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_replicas: Option<Vec<NodeId>>,
    /// The partition's leader after the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<NodeId>,
    /// Its leader epoch after the request (one higher than before when the replicas changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_epoch: Option<LeaderEpoch>,
}
