//! Metadata and topic admin requests: Metadata, DescribeTopics, CreateTopics, DeleteTopics,
//! AlterTopicConfigs, CreatePartitions, ElectLeaders (partition leadership) and
//! AlterPartitionReassignments (replica placement). Changes go to the Controller; reads come
//! from the published metadata image.

use std::collections::BTreeMap;
use std::time::Duration;

use vltava_messages::peer::{ElectionWire, ReassignmentWire};
use vltava_messages::protocol::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
    AlterTopicConfigsRequest, AlterTopicConfigsResponse, ConfigEntry, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeTopicsRequest, DescribeTopicsResponse, ElectLeadersRequest,
    ElectLeadersResponse, ErrorCode, FrameHeader, LeaderElectionResult, MetadataRequest,
    MetadataResponse, NodeInfo, OngoingReassignment, PartitionMetadata,
    PartitionReassignmentResult, Response, ResponseError, TopicDescription, TopicMetadata,
    TopicResult, is_internal_topic,
};
use vltava_messages::{LeaderEpoch, NodeId, PartitionId};

use crate::metadata::MetadataImage;
use crate::metadata::controller::ControllerError;
use crate::metadata::topic_config;

use super::{DEFAULT_PARTITIONS, NodeServices, controller_error};

// ---- metadata ----

/// A topic's partitions as Metadata and DescribeTopics answer them. A partition whose leader
/// is fenced (its node stopped renewing its lease, and the controller has not moved it yet)
/// or that has no leader (every in-sync replica is fenced, and it waits for one to return)
/// has no leader to send clients to: it is answered without one, with the retriable
/// `LeaderNotAvailable`.
pub(super) fn partition_metadata(
    image: &MetadataImage,
    topic: &crate::metadata::TopicImage,
) -> Vec<PartitionMetadata> {
    topic
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let fenced = p.leader.filter(|l| !image.is_live(*l));
            let error = match (p.leader, fenced) {
                (_, Some(l)) => Some(format!("the leader, node {l}, is fenced")),
                (None, _) if !p.replicas.is_empty() => Some(format!(
                    "no leader: every in-sync replica ({:?}) is fenced; the partition waits for one to return",
                    p.isr
                )),
                _ => None,
            };
            PartitionMetadata {
                partition: PartitionId(i as u32),
                error: error.map(|m| ResponseError::new(ErrorCode::LeaderNotAvailable, m)),
                leader: p.leader.filter(|_| fenced.is_none()).map(NodeId),
                leader_epoch: LeaderEpoch(p.leader_epoch),
                replicas: p.replicas.iter().copied().map(NodeId).collect(),
                in_sync_replicas: p.isr.iter().copied().map(NodeId).collect(),
            }
        })
        .collect()
}

pub(super) fn metadata(image: &MetadataImage, request: &MetadataRequest) -> MetadataResponse {
    let names: Vec<String> = match &request.topics {
        Some(names) => names.clone(),
        None => image.topics.keys().cloned().collect(),
    };
    let topics = names
        .into_iter()
        .map(|name| match image.topics.get(&name) {
            Some(topic) => TopicMetadata {
                partitions: partition_metadata(image, topic),
                internal: is_internal_topic(&name),
                name,
                error: None,
            },
            None => TopicMetadata {
                error: Some(ResponseError::new(
                    ErrorCode::UnknownTopic,
                    format!("unknown topic {name}"),
                )),
                name,
                internal: false,
                partitions: Vec::new(),
            },
        })
        .collect();
    MetadataResponse {
        metadata_version: Some(image.version),
        cluster_id: image.cluster_id.clone(),
        controller_id: image.controller_id.map(NodeId),
        // Only live nodes: a client is never sent to a fenced one.
        nodes: image
            .nodes
            .values()
            .filter(|n| !n.fenced)
            .map(|n| NodeInfo {
                node_id: NodeId(n.node_id),
                host: n.host.clone(),
                port: n.port,
            })
            .collect(),
        topics,
    }
}

pub(super) fn describe_topics(
    image: &MetadataImage,
    request: &DescribeTopicsRequest,
) -> DescribeTopicsResponse {
    let names: Vec<String> = if request.topics.is_empty() {
        image.topics.keys().cloned().collect()
    } else {
        request.topics.clone()
    };
    let topics = names
        .into_iter()
        .map(|name| match image.topics.get(&name) {
            Some(topic) => {
                let configs = effective_configs(&topic.configs, topic.replication_factor);
                TopicDescription {
                    partitions: partition_metadata(image, topic),
                    internal: is_internal_topic(&name),
                    name,
                    error: None,
                    configs,
                    reassignments: ongoing_reassignments(topic),
                }
            }
            None => TopicDescription {
                error: Some(ResponseError::new(
                    ErrorCode::UnknownTopic,
                    format!("unknown topic {name}"),
                )),
                name,
                internal: false,
                partitions: Vec::new(),
                configs: Vec::new(),
                reassignments: Vec::new(),
            },
        })
        .collect();
    DescribeTopicsResponse { topics }
}

/// A topic's partitions that a reassignment is moving, with their targets.
fn ongoing_reassignments(topic: &crate::metadata::TopicImage) -> Vec<OngoingReassignment> {
    topic
        .partitions
        .iter()
        .enumerate()
        .filter_map(|(index, p)| {
            let target = p.target_replicas.as_ref()?;
            Some(OngoingReassignment {
                partition: PartitionId(u32::try_from(index).expect("partition indexes fit u32")),
                target_replicas: target.iter().copied().map(NodeId).collect(),
            })
        })
        .collect()
}

/// Every config key with its effective value, sorted by name, marking the defaults.
pub(super) fn effective_configs(
    set: &BTreeMap<String, String>,
    replication_factor: u16,
) -> Vec<ConfigEntry> {
    topic_config::describe(set, replication_factor)
        .into_iter()
        .map(|c| ConfigEntry {
            name: c.key.to_owned(),
            value: c.value,
            is_default: c.is_default,
        })
        .collect()
}

// ---- topic admin ----

/// When a topic admin request with `timeout_ms` must be answered: its timeout counts from
/// now, for all of its topics together (a topic reached after it passed is not changed).
fn admin_deadline(timeout_ms: u32) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(u64::from(timeout_ms))
}

pub(super) async fn create_topics(
    request: CreateTopicsRequest,
    services: &NodeServices,
) -> CreateTopicsResponse {
    let deadline = admin_deadline(request.timeout_ms);
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let outcome = services
            .controller
            .create_topic(
                topic.name.clone(),
                topic.partitions.unwrap_or(DEFAULT_PARTITIONS),
                topic.replication_factor.unwrap_or(1),
                topic.configs,
                request.validate_only,
                Some(deadline),
            )
            .await;
        topics.push(topic_result(topic.name, outcome));
    }
    CreateTopicsResponse { topics }
}

/// One topic's outcome of an admin request.
pub(super) fn topic_result(name: String, outcome: Result<(), ControllerError>) -> TopicResult {
    TopicResult {
        name,
        error: outcome.err().map(|e| controller_error(&e)),
    }
}

pub(super) async fn delete_topics(
    request: DeleteTopicsRequest,
    services: &NodeServices,
) -> DeleteTopicsResponse {
    let deadline = admin_deadline(request.timeout_ms);
    let mut topics = Vec::with_capacity(request.topics.len());
    for name in request.topics {
        let outcome = services
            .controller
            .delete_topic(name.clone(), Some(deadline))
            .await;
        topics.push(topic_result(name, outcome));
    }
    DeleteTopicsResponse { topics }
}

pub(super) async fn alter_configs(
    request: AlterTopicConfigsRequest,
    services: &NodeServices,
) -> AlterTopicConfigsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for change in request.topics {
        let outcome = services
            .controller
            .alter_configs(
                change.name.clone(),
                change.set,
                change.delete,
                request.validate_only,
            )
            .await;
        topics.push(topic_result(change.name, outcome));
    }
    AlterTopicConfigsResponse { topics }
}

pub(super) async fn create_partitions(
    request: CreatePartitionsRequest,
    services: &NodeServices,
) -> CreatePartitionsResponse {
    let deadline = admin_deadline(request.timeout_ms);
    let mut topics = Vec::with_capacity(request.topics.len());
    for change in request.topics {
        let outcome = services
            .controller
            .create_partitions(
                change.name.clone(),
                change.count,
                request.validate_only,
                Some(deadline),
            )
            .await;
        topics.push(topic_result(change.name, outcome));
    }
    CreatePartitionsResponse { topics }
}

// ---- leadership ----

/// ElectLeaders: the controller decides every partition and commits the moves in one change
/// (`metadata::elections`); a refusal of the whole request (no controller, overloaded, timed
/// out) fails it as a whole.
pub(super) async fn elect_leaders(
    request: ElectLeadersRequest,
    header: &FrameHeader,
    services: &NodeServices,
) -> Vec<u8> {
    let deadline = admin_deadline(request.timeout_ms);
    let partitions = request
        .partitions
        .into_iter()
        .map(|e| ElectionWire {
            topic: e.topic,
            partition: e.partition.0,
            to: e.to.map(|n| n.0),
        })
        .collect();
    match services
        .controller
        .elect_leaders(partitions, request.preferred, Some(deadline))
        .await
    {
        Ok(answer) => {
            let partitions = answer
                .results
                .into_iter()
                .map(|r| {
                    let error = (r.error_code != 0).then(|| {
                        let code = ErrorCode::from_code(r.error_code)
                            .unwrap_or(ErrorCode::UnknownServerError);
                        ResponseError::new(code, r.message)
                    });
                    LeaderElectionResult {
                        topic: r.topic,
                        partition: PartitionId(r.partition),
                        leader: r.leader.filter(|_| error.is_none()).map(NodeId),
                        leader_epoch: error.is_none().then_some(LeaderEpoch(r.leader_epoch)),
                        error,
                    }
                })
                .collect();
            Response::from(ElectLeadersResponse {
                partitions,
                more: answer.more,
            })
            .encode(header.correlation_id)
            .unwrap_or_default()
        }
        Err(e) => Response::failed(header, controller_error(&e))
            .encode(header.correlation_id)
            .unwrap_or_default(),
    }
}

// ---- replica placement ----

/// AlterPartitionReassignments: the controller decides every partition and commits the moves'
/// starts in one change (`metadata::reassign`); a refusal of the whole request (no controller,
/// overloaded, timed out) fails it as a whole.
pub(super) async fn alter_partition_reassignments(
    request: AlterPartitionReassignmentsRequest,
    header: &FrameHeader,
    services: &NodeServices,
) -> Vec<u8> {
    let deadline = admin_deadline(request.timeout_ms);
    let partitions = request
        .partitions
        .into_iter()
        .map(|r| ReassignmentWire {
            topic: r.topic,
            partition: r.partition.0,
            replicas: r.replicas.into_iter().map(|n| n.0).collect(),
        })
        .collect();
    match services
        .controller
        .alter_partition_reassignments(partitions, Some(deadline))
        .await
    {
        Ok(results) => {
            let partitions = results
                .into_iter()
                .map(|r| {
                    let error = (r.error_code != 0).then(|| {
                        let code = ErrorCode::from_code(r.error_code)
                            .unwrap_or(ErrorCode::UnknownServerError);
                        ResponseError::new(code, r.message)
                    });
                    let placed = error.is_none();
                    PartitionReassignmentResult {
                        topic: r.topic,
                        partition: PartitionId(r.partition),
                        replicas: r.replicas.into_iter().map(NodeId).collect(),
                        target_replicas: r
                            .target_replicas
                            .map(|target| target.into_iter().map(NodeId).collect()),
                        leader: r.leader.filter(|_| placed).map(NodeId),
                        leader_epoch: placed.then_some(LeaderEpoch(r.leader_epoch)),
                        error,
                    }
                })
                .collect();
            Response::from(AlterPartitionReassignmentsResponse { partitions })
                .encode(header.correlation_id)
                .unwrap_or_default()
        }
        Err(e) => Response::failed(header, controller_error(&e))
            .encode(header.correlation_id)
            .unwrap_or_default(),
    }
}
