//! Leadership administration: ElectLeaders (21), the controlled move of a partition's
//! leadership (Kafka's `kafka-leader-election`).
//!
//! Two modes. A **targeted** election (`preferred` false) names, for every listed partition,
//! the node that is to lead it (`to`). A **preferred** election (`preferred` true) moves every
//! listed partition back to its first replica, and, with an empty list, every partition of the
//! cluster that another replica leads. Either way the new leader must be an in-sync replica
//! that is not fenced, so that it holds every acknowledged write; the controller commits all
//! the moves of one request in one metadata change.

use serde::{Deserialize, Serialize};

use super::codec::{check_at_most, validate_topic_name};
use super::error::{ProtocolError, ResponseError};
use crate::limits::{PARTITIONS_PER_REQUEST_MAX, TIMEOUT_MS_MAX};
use crate::types::{LeaderEpoch, NodeId, PartitionId};

/// ElectLeaders request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectLeadersRequest {
    /// The partitions to move: at most `PARTITIONS_PER_REQUEST_MAX`. With `preferred` and an
    /// empty list: every partition of the cluster.
    pub partitions: Vec<LeaderElection>,
    /// Move each partition to its first replica; `to` must then be absent everywhere. Without
    /// it every entry names its `to`, and the list is not empty.
    pub preferred: bool,
    /// How long the node may take to commit the moves and have its own replicas change role;
    /// at most 300,000.
    pub timeout_ms: u32,
}

/// One partition to move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderElection {
    pub topic: String,
    pub partition: PartitionId,
    /// The node that is to lead the partition (targeted elections only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<NodeId>,
}

impl ElectLeadersRequest {
    /// Checks the count, the names, the timeout and that the entries fit the mode.
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
        for election in &self.partitions {
            validate_topic_name(&election.topic)?;
            match (self.preferred, election.to) {
                (true, Some(_)) => {
                    return Err(ProtocolError::InvalidField {
                        field: "to",
                        reason: "a preferred election names no target",
                    });
                }
                (false, None) => {
                    return Err(ProtocolError::InvalidField {
                        field: "to",
                        reason: "a targeted election names the target of every partition",
                    });
                }
                _ => {}
            }
        }
        if !self.preferred && self.partitions.is_empty() {
            return Err(ProtocolError::InvalidField {
                field: "partitions",
                reason: "a targeted election names at least one partition",
            });
        }
        Ok(())
    }
}

/// ElectLeaders response, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectLeadersResponse {
    /// One result per requested partition, in request order; for a preferred election of
    /// every partition (an empty list), one per partition that another replica led, in topic
    /// and partition order.
    pub partitions: Vec<LeaderElectionResult>,
    /// A preferred election of every partition found more partitions to move than one answer
    /// lists (`PARTITIONS_PER_REQUEST_MAX`): the first ones were handled, send it again for the
    /// rest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// One partition's outcome: its new (or unchanged) leader and leader epoch, or its error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderElectionResult {
    pub topic: String,
    pub partition: PartitionId,
    /// E.g. `UnknownTopic`, `UnknownPartition`, `IneligibleLeader`; the fields below are then
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
    /// The partition's leader after the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<NodeId>,
    /// Its leader epoch after the request: one more than before if the leader moved,
    /// unchanged if the target already led.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_epoch: Option<LeaderEpoch>,
}
