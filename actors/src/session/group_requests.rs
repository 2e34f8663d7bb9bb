//! How a client session answers the consumer-group requests (kinds 11-18): it finds the
//! group's coordinator through the GroupManager's registry and turns the coordinator's typed
//! refusals into wire errors. A refusal of a heartbeat, commit or reset fails the request as
//! a whole; DescribeGroups and DeleteGroups answer per group.
//!
//! A cluster node cut off from the controller for longer than its lease may have lost the
//! leadership of the offsets partitions its coordinators serve without knowing it (the
//! controller moves it away from a node it cannot reach): its coordinators then answer
//! `NotCoordinator`, so that members look for the current coordinator instead of heartbeating
//! one that may no longer hold their group. Their writes would fail anyway (the partition
//! refuses them); this keeps heartbeats from going on there too.

use vltava_messages::group_records::OFFSETS_TOPIC;
use vltava_messages::protocol::{
    ConsumerGroupHeartbeatRequest, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, ErrorCode, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupDescription, GroupListing, GroupResult, ListGroupsResponse,
    OffsetCommitRequest, OffsetFetchRequest, OffsetFetchResponse, ResetOffsetsRequest, Response,
    ResponseError,
};
use vltava_messages::{NodeId, PartitionId};

use crate::directory::PublishedState;
use crate::groups::state::Refusal;
use crate::session::NodeServices;

/// A coordinator's answer as a response, or its refusal as a whole-request failure.
#[derive(Debug)]
pub enum GroupAnswer {
    Ok(Response),
    Failed(ResponseError),
}

fn failed(refusal: Refusal) -> GroupAnswer {
    GroupAnswer::Failed(ResponseError::new(refusal.0, refusal.1))
}

/// `NotCoordinator` if this node's lease with the controller ran out (see the module doc).
fn cut_off(services: &NodeServices) -> Option<Refusal> {
    let freshness = services.freshness.as_ref()?;
    freshness.check().err().map(|reason| {
        (
            ErrorCode::NotCoordinator,
            format!("this node may no longer coordinate the group: {reason}"),
        )
    })
}

fn answer<T: Into<Response>>(result: Result<T, Refusal>) -> GroupAnswer {
    match result {
        Ok(body) => GroupAnswer::Ok(body.into()),
        Err(refusal) => failed(refusal),
    }
}

pub fn find_coordinator(request: &FindCoordinatorRequest, services: &NodeServices) -> GroupAnswer {
    let partition = match services.groups.partition_for(&request.group_id) {
        Ok(p) => p,
        Err(refusal) => return failed(refusal),
    };
    let image = services.controller.image().borrow().clone();
    let leader = image
        .topics
        .get(OFFSETS_TOPIC)
        .and_then(|t| t.partitions.get(partition as usize))
        .and_then(|p| p.leader)
        .and_then(|id| image.nodes.get(&id));
    match leader {
        Some(node) => GroupAnswer::Ok(
            FindCoordinatorResponse {
                node_id: NodeId(node.node_id),
                host: node.host.clone(),
                port: node.port,
                offsets_partition: PartitionId(partition),
            }
            .into(),
        ),
        None => failed((
            ErrorCode::CoordinatorNotAvailable,
            "the group's offsets partition has no leader".into(),
        )),
    }
}

pub async fn heartbeat(
    request: ConsumerGroupHeartbeatRequest,
    client_id: String,
    host: String,
    services: &NodeServices,
) -> GroupAnswer {
    if let Some(refusal) = cut_off(services) {
        return failed(refusal);
    }
    let joining = request.member_epoch == vltava_messages::protocol::MEMBER_EPOCH_JOIN;
    let coordinator = match services
        .groups
        .coordinator(&request.group_id, joining)
        .await
    {
        Ok(c) => c,
        // A member of a group that does not exist (after a restart, say) is unknown.
        Err((ErrorCode::GroupIdNotFound, _)) => {
            return failed((
                ErrorCode::UnknownMemberId,
                format!("no member {} (the group is gone)", request.member_id),
            ));
        }
        Err(refusal) => return failed(refusal),
    };
    answer(coordinator.heartbeat(request, client_id, host).await)
}

pub async fn commit(request: OffsetCommitRequest, services: &NodeServices) -> GroupAnswer {
    if let Some(refusal) = cut_off(services) {
        return failed(refusal);
    }
    // A member's commit to a group the node does not know is refused like its heartbeat; a
    // commit from outside the group creates the group.
    let create = request.member_epoch < 0;
    match services.groups.coordinator(&request.group_id, create).await {
        Ok(c) => answer(c.commit(request).await),
        Err((ErrorCode::GroupIdNotFound, _)) => failed((
            ErrorCode::UnknownMemberId,
            format!("no member {} (the group is gone)", request.member_id),
        )),
        Err(refusal) => failed(refusal),
    }
}

pub async fn fetch_offsets(request: OffsetFetchRequest, services: &NodeServices) -> GroupAnswer {
    if let Some(refusal) = cut_off(services) {
        return failed(refusal);
    }
    match services.groups.coordinator(&request.group_id, false).await {
        Ok(c) => answer(c.fetch_offsets(request).await),
        // A group that never committed has no offsets: an empty answer, as Kafka gives.
        Err((ErrorCode::GroupIdNotFound, _)) => {
            GroupAnswer::Ok(OffsetFetchResponse { topics: Vec::new() }.into())
        }
        Err(refusal) => failed(refusal),
    }
}

/// Lists the groups this node coordinates, from the snapshots coordinators publish.
pub fn list_groups(services: &NodeServices) -> GroupAnswer {
    let mut groups: Vec<GroupListing> = services
        .directory
        .snapshot()
        .into_iter()
        .filter_map(|entry| match entry.state {
            Some(PublishedState::Group(snapshot)) => {
                let s = snapshot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                Some(GroupListing {
                    group_id: s.group_id.clone(),
                    state: s.state.to_owned(),
                    members: s.members.len() as u32,
                    assignor: s.assignor.to_owned(),
                })
            }
            _ => None,
        })
        .collect();
    groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    GroupAnswer::Ok(ListGroupsResponse { groups }.into())
}

pub async fn describe_groups(
    request: DescribeGroupsRequest,
    services: &NodeServices,
) -> GroupAnswer {
    let mut groups = Vec::with_capacity(request.group_ids.len());
    for group_id in request.group_ids {
        let described = match cut_off(services) {
            Some(refusal) => Err(refusal),
            None => match services.groups.coordinator(&group_id, false).await {
                Ok(c) => c.describe().await,
                Err(refusal) => Err(refusal),
            },
        };
        groups.push(match described {
            Ok(description) => description,
            Err(refusal) => GroupDescription {
                group_id,
                error: Some(ResponseError::new(refusal.0, refusal.1)),
                ..GroupDescription::default()
            },
        });
    }
    GroupAnswer::Ok(DescribeGroupsResponse { groups }.into())
}

pub async fn delete_groups(request: DeleteGroupsRequest, services: &NodeServices) -> GroupAnswer {
    let mut groups = Vec::with_capacity(request.group_ids.len());
    for group_id in request.group_ids {
        let deleted = match cut_off(services) {
            Some(refusal) => Err(refusal),
            None => match services.groups.coordinator(&group_id, false).await {
                Ok(c) => c.delete().await,
                Err(refusal) => Err(refusal),
            },
        };
        groups.push(GroupResult {
            group_id,
            error: deleted.err().map(|r| ResponseError::new(r.0, r.1)),
        });
    }
    GroupAnswer::Ok(DeleteGroupsResponse { groups }.into())
}

pub async fn reset_offsets(request: ResetOffsetsRequest, services: &NodeServices) -> GroupAnswer {
    if let Some(refusal) = cut_off(services) {
        return failed(refusal);
    }
    match services.groups.coordinator(&request.group_id, true).await {
        Ok(c) => answer(c.reset(request).await),
        Err(refusal) => failed(refusal),
    }
}
