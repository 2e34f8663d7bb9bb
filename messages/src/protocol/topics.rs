//! Topic administration: CreateTopics (2), DeleteTopics (3), DescribeTopics (4),
//! AlterTopicConfigs (5) and CreatePartitions (6).
//!
//! Each request names several topics and each answer gives one result per topic, in request
//! order. A failure concerning one topic (it exists already, a config is invalid) is that
//! topic's `error`; only a request that breaks a protocol limit fails as a whole.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::codec::{check_at_most, check_topic_names, unique_keys, validate_topic_name};
use super::error::{ProtocolError, ResponseError};
use super::metadata::PartitionMetadata;
use crate::limits::{
    CONFIG_KEY_BYTES_MAX, CONFIG_VALUE_BYTES_MAX, CONFIGS_PER_TOPIC_MAX, PARTITIONS_PER_TOPIC_MAX,
    TIMEOUT_MS_MAX, TOPICS_PER_REQUEST_MAX,
};
use crate::types::{NodeId, PartitionId};

/// The result for one topic of an administrative request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicResult {
    pub name: String,
    /// Absent: done (or, with `validate_only`, would be done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
}

fn check_configs<'a>(
    keys: impl ExactSizeIterator<Item = &'a str>,
    values: impl Iterator<Item = &'a str>,
) -> Result<(), ProtocolError> {
    check_at_most("configs per topic", keys.len(), CONFIGS_PER_TOPIC_MAX)?;
    for key in keys {
        check_at_most("config key bytes", key.len(), CONFIG_KEY_BYTES_MAX)?;
    }
    for value in values {
        check_at_most("config value bytes", value.len(), CONFIG_VALUE_BYTES_MAX)?;
    }
    Ok(())
}

/// CreateTopics request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopicsRequest {
    pub topics: Vec<NewTopic>,
    /// How long the server may wait for the topics to be created (leaders elected) before it
    /// answers `RequestTimedOut` for the ones not done; at most 300,000.
    pub timeout_ms: u32,
    /// Check everything, create nothing.
    pub validate_only: bool,
}

/// One topic to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTopic {
    pub name: String,
    /// The partition count; absent: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// Replicas per partition; absent: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<u16>,
    /// Topic configs that differ from the defaults, e.g. `"retention.ms" -> "86400000"`;
    /// a key may appear once.
    #[serde(default, deserialize_with = "unique_keys")]
    pub configs: BTreeMap<String, String>,
}

impl CreateTopicsRequest {
    /// Checks counts, names, config sizes and the timeout.
    ///
    /// # Errors
    /// `FieldTooLarge` or `InvalidTopicName`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_at_most("timeout_ms", self.timeout_ms, TIMEOUT_MS_MAX)?;
        check_at_most("topics", self.topics.len(), TOPICS_PER_REQUEST_MAX)?;
        for topic in &self.topics {
            validate_topic_name(&topic.name)?;
            if let Some(partitions) = topic.partitions {
                check_at_most("partitions", partitions, PARTITIONS_PER_TOPIC_MAX)?;
            }
            check_configs(
                topic.configs.keys().map(String::as_str),
                topic.configs.values().map(String::as_str),
            )?;
        }
        Ok(())
    }
}

/// CreateTopics response, version 1: one result per requested topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopicsResponse {
    pub topics: Vec<TopicResult>,
}

/// DeleteTopics request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteTopicsRequest {
    pub topics: Vec<String>,
    /// How long the server may wait for the deletion to be committed; at most 300,000.
    pub timeout_ms: u32,
}

impl DeleteTopicsRequest {
    /// Checks the count, the names and the timeout.
    ///
    /// # Errors
    /// `FieldTooLarge` or `InvalidTopicName`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_at_most("timeout_ms", self.timeout_ms, TIMEOUT_MS_MAX)?;
        check_topic_names(
            "topics",
            self.topics.iter().map(String::as_str),
            TOPICS_PER_REQUEST_MAX,
        )
    }
}

/// DeleteTopics response, version 1: one result per requested topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteTopicsResponse {
    pub topics: Vec<TopicResult>,
}

/// DescribeTopics request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeTopicsRequest {
    pub topics: Vec<String>,
}

impl DescribeTopicsRequest {
    /// Checks the count and the names.
    ///
    /// # Errors
    /// `FieldTooLarge` or `InvalidTopicName`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_topic_names(
            "topics",
            self.topics.iter().map(String::as_str),
            TOPICS_PER_REQUEST_MAX,
        )
    }
}

/// DescribeTopics response, version 1: one description per requested topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeTopicsResponse {
    pub topics: Vec<TopicDescription>,
}

/// A topic's partitions and its effective configs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDescription {
    pub name: String,
    /// E.g. `UnknownTopic`; the lists below are then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
    pub internal: bool,
    pub partitions: Vec<PartitionMetadata>,
    /// Every config key the topic has, including defaults, sorted by name.
    pub configs: Vec<ConfigEntry>,
    /// The partitions a reassignment is moving (AlterPartitionReassignments), in partition
    /// order, each with its target. Absent: none is moving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reassignments: Vec<OngoingReassignment>,
}

/// A reassignment under way: its partition's `replicas` (in `partitions`) list the target
/// first, then the replicas that leave once every target replica is in sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OngoingReassignment {
    pub partition: PartitionId,
    pub target_replicas: Vec<NodeId>,
}

/// One effective config of a topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    pub name: String,
    pub value: String,
    /// Whether the value is the server's default rather than set on the topic.
    pub is_default: bool,
}

/// AlterTopicConfigs request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterTopicConfigsRequest {
    pub topics: Vec<TopicConfigChanges>,
    /// Check everything, change nothing.
    pub validate_only: bool,
}

/// The config changes for one topic. Keys not named keep their values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfigChanges {
    pub name: String,
    /// Keys to set to a value; a key may appear once.
    #[serde(default, deserialize_with = "unique_keys")]
    pub set: BTreeMap<String, String>,
    /// Keys to return to the server's default. A key in both `set` and `delete` is an
    /// `InvalidConfig` error for that topic.
    #[serde(default)]
    pub delete: Vec<String>,
}

impl AlterTopicConfigsRequest {
    /// Checks counts, names and config sizes.
    ///
    /// # Errors
    /// `FieldTooLarge` or `InvalidTopicName`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_at_most("topics", self.topics.len(), TOPICS_PER_REQUEST_MAX)?;
        for topic in &self.topics {
            validate_topic_name(&topic.name)?;
            check_at_most(
                "configs per topic",
                topic.set.len().saturating_add(topic.delete.len()),
                CONFIGS_PER_TOPIC_MAX,
            )?;
            check_configs(
                topic.set.keys().map(String::as_str),
                topic.set.values().map(String::as_str),
            )?;
            for key in &topic.delete {
                check_at_most("config key bytes", key.len(), CONFIG_KEY_BYTES_MAX)?;
            }
        }
        Ok(())
    }
}

/// AlterTopicConfigs response, version 1: one result per requested topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlterTopicConfigsResponse {
    pub topics: Vec<TopicResult>,
}

/// CreatePartitions request, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePartitionsRequest {
    pub topics: Vec<PartitionCountChange>,
    /// How long the server may wait for the new partitions to get leaders; at most 300,000.
    pub timeout_ms: u32,
    /// Check everything, change nothing.
    pub validate_only: bool,
}

/// A topic's new partition count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCountChange {
    pub name: String,
    /// The new total number of partitions, above the current one (partitions are never
    /// removed: that would lose their events and re-map every key).
    pub count: u32,
}

impl CreatePartitionsRequest {
    /// Checks counts, names and the timeout.
    ///
    /// # Errors
    /// `FieldTooLarge` or `InvalidTopicName`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        check_at_most("timeout_ms", self.timeout_ms, TIMEOUT_MS_MAX)?;
        check_at_most("topics", self.topics.len(), TOPICS_PER_REQUEST_MAX)?;
        for topic in &self.topics {
            validate_topic_name(&topic.name)?;
            check_at_most("count", topic.count, PARTITIONS_PER_TOPIC_MAX)?;
        }
        Ok(())
    }
}

/// CreatePartitions response, version 1: one result per requested topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePartitionsResponse {
    pub topics: Vec<TopicResult>,
}
