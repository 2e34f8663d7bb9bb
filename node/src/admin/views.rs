//! The JSON documents the admin endpoint serves, built from the node's view. Shapes are
//! documented in ADMIN.md; a field added here is added there.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use vltava_actors::directory::{
    ActorEntry, ActorKind, PartitionGauges, PublishedState, ReplicaRole, SessionGauges,
};
use vltava_actors::groups::GroupSnapshot;
use vltava_actors::metadata::raft::RaftStatus;
use vltava_actors::metadata::{PartitionImage, TopicImage};
use vltava_actors::node::NodeView;
use vltava_actors::peer::{PeerChannel, PeerLinkGauges};
use vltava_actors::replication::fetcher_gauges::ReplicaFetcherGauges;

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn load(value: &std::sync::atomic::AtomicU64) -> u64 {
    value.load(Ordering::Relaxed)
}

fn text(value: &std::sync::Mutex<String>) -> String {
    value
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// One actor's directory entry, without its published state.
fn actor_summary(entry: &ActorEntry) -> Value {
    let stats = &entry.stats;
    let processing: Vec<Value> = stats
        .times
        .summaries()
        .into_iter()
        .map(|(kind, s)| {
            json!({
                "message_kind": kind,
                "count": s.count,
                "mean_us": (s.mean_us * 10.0).round() / 10.0,
                "p50_us": s.p50_us,
                "p99_us": s.p99_us,
                "max_us": s.max_us,
            })
        })
        .collect();
    json!({
        "id": entry.id,
        "kind": entry.kind.name(),
        "parent": entry.parent,
        "status": entry.status.name(),
        "started_at_ms": unix_ms(entry.started_at),
        "mailbox_depth": load(&stats.depth),
        "mailbox_depth_max": load(&stats.depth_max),
        "messages_handled": load(&stats.handled),
        "processing": processing,
        "restarts": entry.restarts,
        "last_error": entry.last_error,
    })
}

/// A partition replica's replication as its log thread last published it, from the view of
/// node `node_id` (this node): its role, the ISR and whether it is in it, and on the leader
/// each follower's progress and lag.
fn replication_state(g: &PartitionGauges, node_id: u32) -> Value {
    let replication = g.replication();
    let now_ms = unix_ms(SystemTime::now());
    let followers: Vec<Value> = replication
        .followers
        .iter()
        .map(|f| {
            json!({
                "node_id": f.node_id,
                "in_isr": replication.in_isr(f.node_id),
                "log_end_offset": f.log_end_offset,
                "flushed_offset": f.flushed_offset,
                "lag_offsets": f.lag_offsets,
                "lag_ms": f.lag_ms(now_ms),
            })
        })
        .collect();
    let role = g.role();
    json!({
        "role": role.name(),
        "leader": replication.leader,
        "isr": replication.isr,
        "in_isr": replication.in_isr(node_id),
        // Only the leader tracks its followers.
        "followers": (role == ReplicaRole::Leader).then_some(followers),
    })
}

fn partition_state(g: &PartitionGauges, node_id: u32) -> Value {
    let mut body = json!({
        "topic": g.topic,
        "partition": g.partition,
        "log_start_offset": load(&g.log_start_offset),
        "log_end_offset": load(&g.log_end_offset),
        "high_watermark": load(&g.high_watermark),
        "flushed_offset": load(&g.flushed_offset),
        "leader_epoch": load(&g.leader_epoch),
        "segments": load(&g.segments),
        "size_bytes": load(&g.size_bytes),
        "bytes_in": load(&g.bytes_in),
        "events_in": load(&g.events_in),
        "bytes_out": load(&g.bytes_out),
        "events_out": load(&g.events_out),
    });
    merge(&mut body, replication_state(g, node_id));
    body
}

/// Adds `extra`'s fields to `body` (both objects).
fn merge(body: &mut Value, extra: Value) {
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
}

fn fetcher_state(g: &ReplicaFetcherGauges) -> Value {
    let last_error = g.last_error();
    json!({
        "leader": g.leader.0,
        "partition_count": g.partition_count(),
        "partitions": g.partitions(),
        "bytes_fetched": g.bytes_fetched(),
        "bytes_per_second": g.bytes_per_second(),
        "fetch_requests": g.fetch_requests(),
        "fetch_errors": g.fetch_errors(),
        "last_error": last_error.as_ref().map(|(text, _)| text),
        "last_error_at_ms": last_error.map(|(_, at)| at),
    })
}

fn session_state(g: &SessionGauges) -> Value {
    json!({
        "peer": g.peer,
        "client_id": text(&g.client_id),
        "client_software": text(&g.client_software),
        "requests_in_flight": load(&g.requests_in_flight),
        "bytes_in": load(&g.bytes_in),
        "bytes_out": load(&g.bytes_out),
    })
}

fn peer_link_state(g: &PeerLinkGauges) -> Value {
    let channel = |c: PeerChannel| {
        let (requests_sent, bytes_out, bytes_in) = g.traffic_of(c);
        json!({
            "state": g.channel_state(c).name(),
            "queue_depth": g.queue_depth_of(c),
            "in_flight": g.in_flight_of(c),
            "requests_sent": requests_sent,
            "bytes_out": bytes_out,
            "bytes_in": bytes_in,
        })
    };
    json!({
        "remote_node_id": g.remote.0,
        "address": g.address.to_string(),
        "local_ip": g.local_ip.to_string(),
        "state": g.state().name(),
        "queue_depth": g.queue_depth(),
        "reconnects": g.reconnects(),
        "connect_failures": load(&g.connect_failures),
        "last_error": g.last_error(),
        "refusal": g.refusal().map(|r| r.to_string()),
        "rtt_us": g.rtt().map(|rtt| u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX)),
        "control": channel(PeerChannel::Control),
        "data": channel(PeerChannel::Data),
    })
}

fn published(state: &PublishedState, view: &NodeView) -> Value {
    match state {
        PublishedState::Partition(g) => partition_state(g, view.node_id),
        PublishedState::Session(g) => session_state(g),
        PublishedState::PeerLink(g) => g
            .downcast_ref::<PeerLinkGauges>()
            .map_or(Value::Null, peer_link_state),
        PublishedState::ReplicaFetcher(g) => g
            .downcast_ref::<ReplicaFetcherGauges>()
            .map_or(Value::Null, fetcher_state),
        PublishedState::Group(g) => {
            let snapshot = g
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            group_state(&snapshot, &high_watermarks(view))
        }
    }
}

/// The high watermark of every partition on this node.
fn high_watermarks(view: &NodeView) -> BTreeMap<(String, u32), u64> {
    view.directory
        .snapshot()
        .into_iter()
        .filter_map(|e| match &e.state {
            Some(PublishedState::Partition(g)) => {
                Some(((g.topic.clone(), g.partition), load(&g.high_watermark)))
            }
            _ => None,
        })
        .collect()
}

/// A group as its coordinator last published it, with lag from this node's partitions.
fn group_state(g: &GroupSnapshot, hws: &BTreeMap<(String, u32), u64>) -> Value {
    let members: Vec<Value> = g
        .members
        .iter()
        .map(|m| {
            json!({
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "client_id": m.client_id,
                "host": m.host,
                "member_epoch": m.member_epoch,
                "subscribed_topics": m.subscribed_topics,
                "assigned": m.assigned.iter().map(|t| json!({
                    "topic": t.topic,
                    "partitions": t.partitions.iter().map(|p| p.0).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "pending_revocation": m.pending_revocation.iter().map(|t| json!({
                    "topic": t.topic,
                    "partitions": t.partitions.iter().map(|p| p.0).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut keys: std::collections::BTreeSet<&(String, u32)> = g.subscribed.iter().collect();
    keys.extend(g.offsets.keys());
    let mut lag_total = 0u64;
    let partitions: Vec<Value> = keys
        .into_iter()
        .map(|tp| {
            let committed = g.offsets.get(tp).map(|o| o.0);
            let hw = hws.get(tp).copied();
            let lag = match (committed, hw) {
                (Some(c), Some(h)) => Some(h.saturating_sub(c)),
                _ => None,
            };
            lag_total += lag.unwrap_or(0);
            json!({
                "topic": tp.0,
                "partition": tp.1,
                "committed_offset": committed,
                "high_watermark": hw,
                "lag": lag,
                "owner": g.owners.get(tp),
            })
        })
        .collect();
    let rebalances: Vec<Value> = g
        .rebalances
        .iter()
        .map(|r| {
            json!({
                "at_ms": r.at_ms,
                "reason": r.reason,
                "group_epoch": r.group_epoch,
                "moves": r.moves.iter().map(|m| json!({
                    "topic": m.topic,
                    "partition": m.partition.0,
                    "from": m.from,
                    "to": m.to,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "group_id": g.group_id,
        "state": g.state,
        "assignor": g.assignor,
        "group_epoch": g.group_epoch,
        "assignment_epoch": g.assignment_epoch,
        "members": members,
        "lag": lag_total,
        "partitions": partitions,
        "rebalances": rebalances,
    })
}

/// The snapshots of the groups this node coordinates.
fn group_snapshots(view: &NodeView) -> Vec<GroupSnapshot> {
    let mut groups: Vec<GroupSnapshot> = view
        .directory
        .snapshot()
        .into_iter()
        .filter_map(|e| match &e.state {
            Some(PublishedState::Group(g)) => Some(
                g.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            ),
            _ => None,
        })
        .collect();
    groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    groups
}

/// `GET /groups`: the groups this node coordinates, with members and lag.
pub fn groups(view: &NodeView) -> Value {
    let hws = high_watermarks(view);
    let groups: Vec<Value> = group_snapshots(view)
        .iter()
        .map(|g| group_state(g, &hws))
        .collect();
    json!({ "count": groups.len(), "groups": groups })
}

/// `GET /groups/{id}`.
pub fn group(view: &NodeView, group_id: &str) -> Option<Value> {
    let hws = high_watermarks(view);
    group_snapshots(view)
        .iter()
        .find(|g| g.group_id == group_id)
        .map(|g| group_state(g, &hws))
}

/// `GET /actors[?kind=K]`: every live actor, ordered by id, each with its parent id so the
/// tree can be drawn.
pub fn actors(view: &NodeView, kind: Option<&str>) -> Result<Value, String> {
    let kind = match kind {
        None => None,
        Some(name) => Some(ActorKind::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = ActorKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown actor kind {name:?}; known: {}", known.join(", "))
        })?),
    };
    let actors: Vec<Value> = view
        .directory
        .snapshot()
        .iter()
        .filter(|e| kind.is_none_or(|k| e.kind == k))
        .map(actor_summary)
        .collect();
    Ok(json!({ "node_id": view.node_id, "count": actors.len(), "actors": actors }))
}

/// `GET /actors/{id}`: one actor with its published state and its children's ids.
pub fn actor(view: &NodeView, id: &str) -> Option<Value> {
    let entries = view.directory.snapshot();
    let entry = entries.iter().find(|e| e.id == id)?;
    let mut body = actor_summary(entry);
    let children: Vec<&str> = entries
        .iter()
        .filter(|e| e.parent.as_deref() == Some(id))
        .map(|e| e.id.as_str())
        .collect();
    body["children"] = json!(children);
    body["state"] = entry
        .state
        .as_ref()
        .map_or(Value::Null, |state| published(state, view));
    Some(body)
}

/// The gauges of this node's partitions, by topic and index.
fn local_partitions(view: &NodeView) -> BTreeMap<(String, u32), (ActorEntry, Value)> {
    view.directory
        .snapshot()
        .into_iter()
        .filter_map(|e| match &e.state {
            Some(PublishedState::Partition(g)) => {
                let state = partition_state(g, view.node_id);
                Some(((g.topic.clone(), g.partition), (e, state)))
            }
            _ => None,
        })
        .collect()
}

fn partition_view(
    topic: &str,
    index: u32,
    image: &PartitionImage,
    local: &BTreeMap<(String, u32), (ActorEntry, Value)>,
) -> Value {
    let mut body = json!({
        "topic": topic,
        "partition": index,
        "leader": image.leader,
        "leader_epoch": image.leader_epoch,
        "replicas": image.replicas,
        "isr": image.isr,
    });
    if let Some(target) = &image.target_replicas {
        body["target_replicas"] = json!(target);
    }
    match local.get(&(topic.to_owned(), index)) {
        Some((entry, state)) => {
            body["actor"] = json!(entry.id);
            body["status"] = json!(entry.status.name());
            for key in [
                "log_start_offset",
                "log_end_offset",
                "high_watermark",
                "flushed_offset",
                "segments",
                "size_bytes",
                "bytes_in",
                "events_in",
                "bytes_out",
                "events_out",
                "role",
                "in_isr",
                "followers",
            ] {
                body[key] = state[key].clone();
            }
        }
        // In metadata but with no actor here: not (yet) started, or stopped.
        None => body["status"] = json!("not running on this node"),
    }
    body
}

fn topic_view(
    name: &str,
    topic: &TopicImage,
    local: &BTreeMap<(String, u32), (ActorEntry, Value)>,
) -> Value {
    let partitions: Vec<Value> = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| partition_view(name, i as u32, p, local))
        .collect();
    let sum = |key: &str| -> u64 { partitions.iter().filter_map(|p| p[key].as_u64()).sum() };
    json!({
        "name": name,
        "topic_id": topic.topic_id,
        "partition_count": topic.partitions.len(),
        "replication_factor": topic.replication_factor,
        "configs": topic.configs,
        "size_bytes": sum("size_bytes"),
        "bytes_in": sum("bytes_in"),
        "events_in": sum("events_in"),
        "bytes_out": sum("bytes_out"),
        "events_out": sum("events_out"),
        "partitions": partitions,
    })
}

/// `GET /topics`.
pub fn topics(view: &NodeView) -> Value {
    let image = view.image.borrow().clone();
    let local = local_partitions(view);
    let topics: Vec<Value> = image
        .topics
        .iter()
        .map(|(name, topic)| {
            let mut body = topic_view(name, topic, &local);
            // The list stays short; partitions are at /topics/{name} and /partitions.
            if let Some(map) = body.as_object_mut() {
                map.remove("partitions");
            }
            body
        })
        .collect();
    json!({ "count": topics.len(), "topics": topics })
}

/// `GET /topics/{name}`.
pub fn topic(view: &NodeView, name: &str) -> Option<Value> {
    let image = view.image.borrow().clone();
    let topic = image.topics.get(name)?;
    Some(topic_view(name, topic, &local_partitions(view)))
}

/// `GET /partitions`.
pub fn partitions(view: &NodeView) -> Value {
    let image = view.image.borrow().clone();
    let local = local_partitions(view);
    let partitions: Vec<Value> = image
        .topics
        .iter()
        .flat_map(|(name, topic)| {
            topic
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| partition_view(name, i as u32, p, &local))
                .collect::<Vec<_>>()
        })
        .collect();
    json!({ "count": partitions.len(), "partitions": partitions })
}

/// `GET /connections`: the client sessions.
pub fn connections(view: &NodeView) -> Value {
    let connections: Vec<Value> = view
        .directory
        .snapshot()
        .iter()
        .filter_map(|e| match &e.state {
            Some(PublishedState::Session(g)) => {
                let mut body = session_state(g);
                body["actor"] = json!(e.id);
                body["connected_at_ms"] = json!(unix_ms(e.started_at));
                body["requests_answered"] = json!(load(&e.stats.handled));
                Some(body)
            }
            _ => None,
        })
        .collect();
    json!({ "count": connections.len(), "connections": connections })
}

/// `GET /cluster`: the nodes the metadata knows, the controller and the metadata version.
pub fn cluster(view: &NodeView) -> Value {
    let image = view.image.borrow().clone();
    // Lease ages are kept current only on the controller's node.
    let is_controller = image.controller_id == Some(view.node_id);
    let ages = view
        .leases
        .as_ref()
        .filter(|_| is_controller)
        .map(|(table, _)| table.ages())
        .unwrap_or_default();
    let nodes: Vec<Value> = image
        .nodes
        .values()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "host": n.host,
                "port": n.port,
                "this_node": n.node_id == view.node_id,
                "fenced": n.fenced,
                "lease_age_ms": ages.get(&n.node_id).map(|a| a.as_millis() as u64),
            })
        })
        .collect();
    let own_lease_age_ms = view
        .leases
        .as_ref()
        .and_then(|(_, freshness)| freshness.age())
        .map(|a| a.as_millis() as u64);
    // Every partition's placement from the image, grouped by topic: what `vltava cluster
    // describe` shows, with this node's replica of it (`replica`, null where it holds none).
    let local = local_partitions(view);
    let topics: Vec<Value> = image
        .topics
        .iter()
        .map(|(name, topic)| {
            let partitions: Vec<Value> = topic
                .partitions
                .iter()
                .enumerate()
                .map(|(index, p)| {
                    let replica = local
                        .get(&(name.clone(), index as u32))
                        .map(|(entry, state)| {
                            let mut replica = json!({
                                "node_id": view.node_id,
                                "actor": entry.id,
                                "status": entry.status.name(),
                            });
                            for key in [
                                "role",
                                "leader_epoch",
                                "log_end_offset",
                                "flushed_offset",
                                "high_watermark",
                                "in_isr",
                                "isr",
                                "followers",
                            ] {
                                replica[key] = state[key].clone();
                            }
                            replica
                        });
                    let mut partition = json!({
                        "partition": index,
                        "leader": p.leader,
                        "leader_epoch": p.leader_epoch,
                        "replicas": p.replicas,
                        "isr": p.isr,
                        "replica": replica,
                    });
                    if let Some(target) = &p.target_replicas {
                        partition["target_replicas"] = json!(target);
                    }
                    partition
                })
                .collect();
            json!({"name": name, "partitions": partitions})
        })
        .collect();
    json!({
        "cluster_id": view.cluster_id,
        "node_id": view.node_id,
        "advertised": view.advertised,
        "started_at_ms": unix_ms(view.started_at),
        "controller_id": image.controller_id,
        "metadata_version": image.version,
        "nodes": nodes,
        "raft": view.raft.as_ref().map(|source| raft_status(&source.status())),
        // How long ago this node's own lease was last granted (cluster only).
        "lease_age_ms": own_lease_age_ms,
        "topics": topics,
    })
}

/// This node's Raft member as `/cluster` shows it; `peers` (each other member's match index)
/// only on the leader, which is the only member that tracks them.
fn raft_status(status: &RaftStatus) -> Value {
    let peers = status.peers.as_ref().map(|peers| {
        peers
            .iter()
            .map(|peer| json!({"node_id": peer.node_id, "match_index": peer.match_index}))
            .collect::<Vec<Value>>()
    });
    json!({
        "role": status.role.as_str(),
        "term": status.term,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "last_log_index": status.last_log_index,
        "leader_id": status.leader_id,
        "voters": status.voters,
        "peers": peers,
    })
}

/// `GET /resources`: how many of each per-partition and per-actor resource the node holds now.
/// After topics are deleted they fall back to what the remaining topics need; a count that
/// keeps growing is a leak.
pub fn resources(view: &NodeView) -> Value {
    let image = view.image.borrow().clone();
    let partitions_in_metadata: usize = image.topics.values().map(|t| t.partitions.len()).sum();
    json!({
        "topics": image.topics.len(),
        "partitions_in_metadata": partitions_in_metadata,
        "actors": view.directory.len(),
        "partitions_registered": view.partitions.len(),
        "named_actors": ractor::registry::registered().len(),
        "runtime_tasks": view.runtime.metrics().num_alive_tasks(),
        "log_threads": vltava_actors::partition::log_threads_live(),
    })
}
