//! Topic administration (create, delete, list, describe, alter configs, add partitions),
//! partition leadership (elect a given in-sync replica, or every partition's first replica),
//! replica placement (move a partition to other replicas and wait for the move) and
//! consumer-group administration (find the coordinator, list, describe, delete, read and reset
//! committed offsets). Each group request goes to the group's coordinator, found afresh and
//! retried while it moves (`coordinator`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use vltava_messages::protocol::{
    AlterPartitionReassignmentsRequest, AlterTopicConfigsRequest, CreatePartitionsRequest,
    CreateTopicsRequest, DeleteTopicsRequest, DescribeClusterRequest, DescribeClusterResponse,
    DescribeTopicsRequest, ElectLeadersRequest, ElectLeadersResponse, LeaderElection,
    LeaderElectionResult, MetadataResponse, NewTopic, PartitionCountChange, PartitionMetadata,
    PartitionReassignment, PartitionReassignmentResult, TopicConfigChanges, TopicDescription,
};

use vltava_messages::protocol::{
    CommittedTopic, DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorResponse,
    GroupDescription, GroupListing, GroupResult, ListGroupsRequest, OffsetFetchRequest,
    RequestBody, ResetOffsetsRequest, ResetPartition, ResetTo, TopicPartitions, TopicResult,
};
use vltava_messages::{LeaderEpoch, NodeId, PartitionId};

use crate::cluster::Cluster;
use crate::coordinator::{GROUP_REQUEST_TIMEOUT, find_coordinator, send_to_coordinator};
use crate::error::{ClientError, check};

/// How long an admin request may take: creating a topic waits for its partitions to open.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The most ElectLeaders requests one `elect_preferred` of every partition sends: each moves
/// up to 4,096 partitions, so 64 rounds cover 262,144, more than a cluster of a few nodes
/// holds.
pub const ELECT_PREFERRED_ROUNDS_MAX: usize = 64;

/// How often a wait for a reassignment asks where the partition stands: a move copies a
/// partition's whole log, which takes seconds at least, so four times a second is prompt
/// without loading the node it asks.
pub const REASSIGNMENT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How a wait for a partition's reassignment ended (`Admin::await_reassignment`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReassignmentWait {
    /// The partition is on the target: its placement now.
    Completed(PartitionMetadata),
    /// Another request replaced the move with one to `target_replicas` (its placement now in
    /// `partition`), or moved the partition elsewhere.
    Replaced {
        partition: PartitionMetadata,
        target_replicas: Option<Vec<NodeId>>,
    },
    /// The timeout passed with the move still under way (it goes on): the placement last seen.
    StillMoving(PartitionMetadata),
}

/// The first topic error of an admin answer, if any.
fn check_topics(topics: Vec<TopicResult>) -> Result<(), ClientError> {
    topics.into_iter().try_for_each(|topic| check(topic.error))
}

/// Topic and group administration over a cluster.
#[derive(Clone, Debug)]
pub struct Admin {
    cluster: Arc<Cluster>,
}

impl Admin {
    #[must_use]
    pub fn new(cluster: Arc<Cluster>) -> Admin {
        Admin { cluster }
    }

    async fn send<R: RequestBody>(&self, request: &R) -> Result<R::Response, ClientError> {
        self.cluster
            .any_connection()
            .await?
            .send(request, ADMIN_TIMEOUT)
            .await
    }

    /// Creates a topic; returns once its partitions serve.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let request = CreateTopicsRequest {
            topics: vec![NewTopic {
                name: name.to_owned(),
                partitions: Some(partitions),
                replication_factor: Some(replication_factor),
                configs,
            }],
            timeout_ms: ADMIN_TIMEOUT.as_millis() as u32,
            validate_only: false,
        };
        let answer = self.send(&request).await?;
        check_topics(answer.topics)?;
        self.cluster.refresh().await?;
        Ok(())
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = DeleteTopicsRequest {
            topics: vec![name.to_owned()],
            timeout_ms: ADMIN_TIMEOUT.as_millis() as u32,
        };
        let answer = self.send(&request).await?;
        check_topics(answer.topics)?;
        Ok(())
    }

    /// The cluster's metadata: nodes and every topic's partitions.
    pub async fn metadata(&self) -> Result<MetadataResponse, ClientError> {
        self.cluster.refresh().await
    }

    /// The cluster as one node sees it (DescribeCluster): its id, nodes, controller, that
    /// node's view of the metadata quorum (`raft`, absent on a single node) and the partitions
    /// of `topics` (every topic when `None`, within the answer's bounds: `topics_omitted`
    /// counts the topics left out). The node asked is the one this client last talked to, the
    /// first bootstrap address that answered unless another answered since.
    pub async fn describe_cluster(
        &self,
        topics: Option<Vec<String>>,
    ) -> Result<DescribeClusterResponse, ClientError> {
        self.send(&describe_cluster_request(topics)?).await
    }

    /// DescribeCluster asked of the node at `addr` (a `host:port` from an answer's `nodes`):
    /// the replication progress of a partition is known only to its leader
    /// (`replica_status`), so a caller that wants every partition's asks each leader.
    pub async fn describe_cluster_at(
        &self,
        addr: &str,
        topics: Option<Vec<String>>,
    ) -> Result<DescribeClusterResponse, ClientError> {
        let request = describe_cluster_request(topics)?;
        self.cluster
            .connection_to(addr)
            .await?
            .send(&request, ADMIN_TIMEOUT)
            .await
    }

    /// Partitions and effective configs of topics (all when `names` is empty).
    pub async fn describe_topics(
        &self,
        names: &[String],
    ) -> Result<Vec<TopicDescription>, ClientError> {
        let request = DescribeTopicsRequest {
            topics: names.to_vec(),
        };
        Ok(self.send(&request).await?.topics)
    }

    /// Sets and removes config keys of a topic.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    ) -> Result<(), ClientError> {
        let request = AlterTopicConfigsRequest {
            topics: vec![TopicConfigChanges {
                name: name.to_owned(),
                set,
                delete,
            }],
            validate_only: false,
        };
        let answer = self.send(&request).await?;
        check_topics(answer.topics)?;
        Ok(())
    }

    /// Raises a topic's partition count to `count`.
    pub async fn create_partitions(&self, name: &str, count: u32) -> Result<(), ClientError> {
        let request = CreatePartitionsRequest {
            topics: vec![PartitionCountChange {
                name: name.to_owned(),
                count,
            }],
            timeout_ms: ADMIN_TIMEOUT.as_millis() as u32,
            validate_only: false,
        };
        let answer = self.send(&request).await?;
        check_topics(answer.topics)?;
        self.cluster.refresh().await?;
        Ok(())
    }

    /// Moves the leadership of `topic`-`partition` to node `to`, which must be one of its
    /// in-sync replicas and not fenced (otherwise the partition's error: `IneligibleLeader`,
    /// retriable once the node has caught up, or `InvalidRequest` for a node that is not a
    /// replica). Returns the leader epoch the partition has after the move (unchanged if `to`
    /// already led). Producers to the old leader see the retriable `NotLeader` and follow.
    pub async fn elect_leader(
        &self,
        topic: &str,
        partition: u32,
        to: u32,
    ) -> Result<LeaderEpoch, ClientError> {
        let request = ElectLeadersRequest {
            partitions: vec![LeaderElection {
                topic: topic.to_owned(),
                partition: PartitionId(partition),
                to: Some(NodeId(to)),
            }],
            preferred: false,
            timeout_ms: ADMIN_TIMEOUT.as_millis() as u32,
        };
        let answer = self.send(&request).await?;
        let result = answer.partitions.into_iter().next().ok_or_else(|| {
            ClientError::Protocol(format!("empty ElectLeaders answer for {topic}-{partition}"))
        })?;
        check(result.error)?;
        let epoch = result.leader_epoch.ok_or_else(|| {
            ClientError::Protocol(format!("no leader epoch for {topic}-{partition}"))
        })?;
        self.cluster.refresh().await?;
        Ok(epoch)
    }

    /// Moves partitions back to their first replica (their preferred leader): the given
    /// (topic, partition) pairs, or, when `partitions` is empty, every partition of the
    /// cluster that another replica leads (in rounds of at most 4,096 until none is left
    /// that can move). Returns each partition's outcome: its leader and leader epoch, or its
    /// own error (e.g. `IneligibleLeader` when the first replica is not in sync).
    pub async fn elect_preferred(
        &self,
        partitions: &[(String, u32)],
    ) -> Result<Vec<LeaderElectionResult>, ClientError> {
        let request = ElectLeadersRequest {
            partitions: partitions
                .iter()
                .map(|(topic, partition)| LeaderElection {
                    topic: topic.clone(),
                    partition: PartitionId(*partition),
                    to: None,
                })
                .collect(),
            preferred: true,
            timeout_ms: ADMIN_TIMEOUT.as_millis() as u32,
        };
        request
            .validate()
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let mut results = Vec::new();
        // Every partition: a round moves at most 4,096; bounded by the rounds that still
        // move something, and by a fixed count against a cluster that keeps changing.
        for _ in 0..ELECT_PREFERRED_ROUNDS_MAX {
            let answer: ElectLeadersResponse = self.send(&request).await?;
            let moved_any = answer.partitions.iter().any(|r| r.error.is_none());
            results.extend(answer.partitions);
            if !answer.more || !moved_any {
                break;
            }
        }
        self.cluster.refresh().await?;
        Ok(results)
    }

    /// Moves `topic`-`partition` to `replicas` (its preferred leader first): the new replicas
    /// copy the log and join the in-sync replicas, then the old ones leave. Returns once the
    /// move has started (or completed, if the target was in sync already): the partition's
    /// placement then, with `target_replicas` set while the move is under way. A bad target
    /// (empty, a node twice, a node not in the cluster) is the partition's `InvalidRequest`.
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: &[u32],
    ) -> Result<PartitionReassignmentResult, ClientError> {
        let request = AlterPartitionReassignmentsRequest {
            partitions: vec![PartitionReassignment {
                topic: topic.to_owned(),
                partition: PartitionId(partition),
                replicas: replicas.iter().copied().map(NodeId).collect(),
            }],
            timeout_ms: ADMIN_TIMEOUT.as_millis() as u32,
        };
        request
            .validate()
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let answer = self.send(&request).await?;
        let result = answer.partitions.into_iter().next().ok_or_else(|| {
            ClientError::Protocol(format!(
                "empty AlterPartitionReassignments answer for {topic}-{partition}"
            ))
        })?;
        check(result.error.clone())?;
        self.cluster.refresh().await?;
        Ok(result)
    }

    /// Waits, at most `timeout`, until `topic`-`partition` is on `target` with no move under
    /// way, asking every `REASSIGNMENT_POLL_INTERVAL` (DescribeTopics). `started` is the
    /// leader epoch `reassign_partition` answered: every change of a partition's replicas
    /// raises it, so an answer from a node that has not applied the move's start yet (its
    /// epoch is older) is skipped rather than taken for a move replaced. Errors that may pass
    /// (a node restarting, a controller election) are asked through until the timeout; a
    /// refusal that will not pass (the topic was deleted, say) is returned.
    pub async fn await_reassignment(
        &self,
        topic: &str,
        partition: u32,
        target: &[u32],
        started: LeaderEpoch,
        timeout: Duration,
    ) -> Result<ReassignmentWait, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let target: Vec<NodeId> = target.iter().copied().map(NodeId).collect();
        let mut last = None;
        loop {
            match self.partition_placement(topic, partition).await {
                Ok((placement, _)) if placement.leader_epoch < started => {
                    tracing::debug!(
                        topic,
                        partition,
                        "the node answering has not seen the move yet"
                    );
                }
                Ok((placement, moving)) => {
                    match moving {
                        None if placement.replicas == target => {
                            return Ok(ReassignmentWait::Completed(placement));
                        }
                        Some(moving) if moving == target => {}
                        other => {
                            return Ok(ReassignmentWait::Replaced {
                                partition: placement,
                                target_replicas: other,
                            });
                        }
                    }
                    last = Some(placement);
                }
                Err(e) if e.is_retriable() => {
                    tracing::debug!(topic, partition, error = %e, "reassignment not readable yet; asking again");
                }
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() + REASSIGNMENT_POLL_INTERVAL > deadline {
                return match last {
                    Some(placement) => Ok(ReassignmentWait::StillMoving(placement)),
                    None => Err(ClientError::Timeout(
                        u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    )),
                };
            }
            tokio::time::sleep(REASSIGNMENT_POLL_INTERVAL).await;
        }
    }

    /// A partition's placement and the target of a move under way, from DescribeTopics.
    async fn partition_placement(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<(PartitionMetadata, Option<Vec<NodeId>>), ClientError> {
        let description = self
            .describe_topics(&[topic.to_owned()])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ClientError::Protocol(format!("empty DescribeTopics answer for {topic}"))
            })?;
        check(description.error)?;
        let placement = description
            .partitions
            .into_iter()
            .find(|p| p.partition.0 == partition)
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!("{topic} has no partition {partition}"))
            })?;
        let moving = description
            .reassignments
            .into_iter()
            .find(|r| r.partition.0 == partition)
            .map(|r| r.target_replicas);
        Ok((placement, moving))
    }

    /// Which node coordinates `group_id` (retried while the coordinator is not available).
    pub async fn find_coordinator(
        &self,
        group_id: &str,
    ) -> Result<FindCoordinatorResponse, ClientError> {
        find_coordinator(&self.cluster, group_id).await
    }

    /// Every group of the cluster: each node lists the groups it coordinates. Sorted by id.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, ClientError> {
        let metadata = self.cluster.refresh().await?;
        let mut groups: BTreeMap<String, GroupListing> = BTreeMap::new();
        for node in &metadata.nodes {
            let addr = format!("{}:{}", node.host, node.port);
            let answer = self
                .cluster
                .connection_to(&addr)
                .await?
                .send(&ListGroupsRequest {}, GROUP_REQUEST_TIMEOUT)
                .await?;
            for group in answer.groups {
                groups.insert(group.group_id.clone(), group);
            }
        }
        Ok(groups.into_values().collect())
    }

    /// Members, assignment, offsets with lag, and recent rebalances of groups, in the order
    /// asked. A group's own failure (e.g. `GroupIdNotFound`) is in its `error` field. One
    /// request per group, each to its coordinator.
    pub async fn describe_groups(
        &self,
        group_ids: &[String],
    ) -> Result<Vec<GroupDescription>, ClientError> {
        let mut descriptions = Vec::with_capacity(group_ids.len());
        for group_id in group_ids {
            let request = DescribeGroupsRequest {
                group_ids: vec![group_id.clone()],
            };
            let answer = send_to_coordinator(&self.cluster, group_id, &request, |a| {
                a.groups.first().and_then(|g| g.error.as_ref())
            })
            .await?;
            let description = answer.groups.into_iter().next().ok_or_else(|| {
                ClientError::Protocol(format!("empty DescribeGroups answer for {group_id}"))
            })?;
            descriptions.push(description);
        }
        Ok(descriptions)
    }

    /// Deletes empty groups and their committed offsets; one result per group, in order (a
    /// group with members answers `NonEmptyGroup`).
    pub async fn delete_groups(
        &self,
        group_ids: &[String],
    ) -> Result<Vec<GroupResult>, ClientError> {
        let mut results = Vec::with_capacity(group_ids.len());
        for group_id in group_ids {
            let request = DeleteGroupsRequest {
                group_ids: vec![group_id.clone()],
            };
            let answer = send_to_coordinator(&self.cluster, group_id, &request, |a| {
                a.groups.first().and_then(|g| g.error.as_ref())
            })
            .await?;
            let result = answer.groups.into_iter().next().ok_or_else(|| {
                ClientError::Protocol(format!("empty DeleteGroups answer for {group_id}"))
            })?;
            results.push(result);
        }
        Ok(results)
    }

    /// Sets an empty group's committed offsets for `topic` (the given partitions, or all) to
    /// `to`; with `dry_run`, only computes them. Returns each partition's new offset or error.
    pub async fn reset_offsets(
        &self,
        group_id: &str,
        topic: &str,
        partitions: Option<Vec<u32>>,
        to: ResetTo,
        dry_run: bool,
    ) -> Result<Vec<ResetPartition>, ClientError> {
        let (to, offset, timestamp) = match to {
            ResetTo::Earliest => ("earliest", None, None),
            ResetTo::Latest => ("latest", None, None),
            ResetTo::Offset(offset) => ("offset", Some(offset), None),
            ResetTo::Timestamp(ms) => ("timestamp", None, Some(ms)),
        };
        let request = ResetOffsetsRequest {
            group_id: group_id.to_owned(),
            topic: topic.to_owned(),
            partitions: partitions.map(|p| p.into_iter().map(PartitionId).collect()),
            to: to.to_owned(),
            offset,
            timestamp,
            dry_run,
        };
        let answer = send_to_coordinator(&self.cluster, group_id, &request, |_| None).await?;
        Ok(answer.partitions)
    }

    /// A group's committed offsets: of these partitions, or (`None`) of every partition it
    /// has committed.
    pub async fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<Vec<TopicPartitions>>,
    ) -> Result<Vec<CommittedTopic>, ClientError> {
        let request = OffsetFetchRequest {
            group_id: group_id.to_owned(),
            topics,
        };
        let answer = send_to_coordinator(&self.cluster, group_id, &request, |_| None).await?;
        Ok(answer.topics)
    }
}

/// A DescribeCluster request for `topics`, checked against the wire's bounds.
fn describe_cluster_request(
    topics: Option<Vec<String>>,
) -> Result<DescribeClusterRequest, ClientError> {
    let request = DescribeClusterRequest { topics };
    request
        .validate()
        .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
    Ok(request)
}
