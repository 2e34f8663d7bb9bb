//! Partition offsets for group coordinators, wherever the partitions are led.
//!
//! A coordinator needs the high watermark of every partition a group consumes (lag in
//! DescribeGroups) and the log start, the high watermark and offsets by time of a topic's
//! partitions (ResetOffsets). On one node they are all local; in a cluster most are led by
//! other nodes. [`OffsetsReader`] answers both the same way: a partition open here is read from
//! its Partition (its log thread, as ListOffsets reads it); any other is asked of its leader,
//! as the metadata image names it, through [`RemoteOffsets`] (the peer kind PartitionOffsets,
//! implemented over the peer links in `cluster`): one request per leader node, nodes in
//! parallel, each bounded by [`REMOTE_OFFSETS_TIMEOUT`].
//!
//! The other half, answering another node's PartitionOffsets from the local partitions, is
//! [`serve_local`], which the node's peer service calls: both halves read a partition with
//! [`read_local`], so a remote answer is exactly what the leader would have used itself.
//!
//! **Invariant:** an offset is reported only from the partition's leader and only whole
//! (`log_start <= high_watermark <= log_end`, checked again on a remote answer); a partition
//! whose leader cannot be reached, or whose answer does not check out, is a per-partition
//! refusal (retriable), never a guess.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vltava_messages::batch::split_batches;
use vltava_messages::peer::{
    PARTITION_OFFSETS_PARTITIONS_MAX, PartitionOffsetsAnswer, PartitionOffsetsQuery,
    PartitionOffsetsRequest, PartitionOffsetsResponse,
};
use vltava_messages::protocol::{ErrorCode, OffsetSpec, ResponseError};
use vltava_messages::{NodeId, Offset, PartitionId};

use super::state::Refusal;
use crate::metadata::MetadataImage;
use crate::partition::supervisor::{PartitionRegistry, PartitionSlot};
use crate::partition::{PartitionError, PartitionHandle};

/// How long a coordinator waits for another node's PartitionOffsets answer. A leader answers
/// from memory (watermarks) or with one index lookup and one small read per partition, in
/// milliseconds; 2 s allows for a leader busy with a burst of writes, while keeping a
/// ResetOffsets (which holds its coordinator's mailbox while it reads) and a DescribeGroups
/// whose leader is down short. Past it, that leader's partitions have no offsets in the answer.
pub const REMOTE_OFFSETS_TIMEOUT: Duration = Duration::from_secs(2);

/// The byte budget of the read that finds the timestamp of a lagging partition's oldest
/// unconsumed event: the log returns at least the whole batch holding the offset, whatever the
/// budget, and that one batch is all that is needed.
const TIMESTAMP_PROBE_BYTES: u32 = 1;

/// One partition's offsets, read together from its leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start_offset: Offset,
    pub high_watermark: Offset,
    pub log_end_offset: Offset,
    /// The first committed offset at or after the asked time; `None` when not asked or when no
    /// committed record is that recent.
    pub offset_for_timestamp: Option<Offset>,
    /// The timestamp of the first committed record at or after the asked offset; `None` when
    /// not asked or when there is none.
    pub timestamp_of_offset_ms: Option<i64>,
}

/// Why another node's offsets could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoteOffsetsError {
    /// No answer within the timeout.
    #[error("node {} did not answer within {timeout:?}", node.0)]
    Timeout { node: NodeId, timeout: Duration },
    /// The link to the node, or the node, is shedding load.
    #[error("node {} is overloaded: {reason}", node.0)]
    Overloaded { node: NodeId, reason: String },
    /// The node cannot be reached (its link is down or backing off, or it refused).
    #[error("node {} cannot be reached: {reason}", node.0)]
    Unreachable { node: NodeId, reason: String },
    /// The node answered with something other than the offsets asked for.
    #[error("node {} answered wrongly: {reason}", node.0)]
    BadAnswer { node: NodeId, reason: String },
}

impl RemoteOffsetsError {
    /// The per-partition refusal this becomes: retriable in every case, since the leader may
    /// be back, or less busy, at the next attempt.
    #[must_use]
    pub fn refusal(&self) -> Refusal {
        let code = match self {
            RemoteOffsetsError::Timeout { .. } => ErrorCode::RequestTimedOut,
            RemoteOffsetsError::Overloaded { .. } => ErrorCode::Overloaded,
            RemoteOffsetsError::Unreachable { .. } | RemoteOffsetsError::BadAnswer { .. } => {
                ErrorCode::LeaderNotAvailable
            }
        };
        (code, self.to_string())
    }
}

/// The answer of [`RemoteOffsets::partition_offsets`].
pub type RemoteOffsetsFuture<'a> =
    Pin<Box<dyn Future<Output = Result<PartitionOffsetsResponse, RemoteOffsetsError>> + Send + 'a>>;

/// A coordinator's way to the offsets of partitions other nodes lead: in a cluster, the peer
/// kind PartitionOffsets over the data link (`cluster::PeerRemoteOffsets`); absent on a single
/// node, where every partition is local.
pub trait RemoteOffsets: Send + Sync + std::fmt::Debug {
    /// Asks `leader` for the offsets of `request`'s partitions (at most
    /// `PARTITION_OFFSETS_PARTITIONS_MAX`), waiting at most `timeout`.
    fn partition_offsets(
        &self,
        leader: NodeId,
        request: PartitionOffsetsRequest,
        timeout: Duration,
    ) -> RemoteOffsetsFuture<'_>;
}

/// Reads partitions' offsets for a coordinator: local ones from their Partition, others from
/// their leaders. Cheap to clone; clones share everything.
#[derive(Clone, Debug)]
pub struct OffsetsReader {
    /// This node: a partition the image gives it but that is not open here is not asked of
    /// anyone.
    node_id: u32,
    partitions: PartitionRegistry,
    image: watch::Receiver<Arc<MetadataImage>>,
    remote: Option<Arc<dyn RemoteOffsets>>,
}

/// Where one query is answered.
enum Route {
    Local(PartitionHandle),
    Remote(NodeId),
    Refused(Refusal),
}

impl OffsetsReader {
    #[must_use]
    pub fn new(
        node_id: u32,
        partitions: PartitionRegistry,
        image: watch::Receiver<Arc<MetadataImage>>,
        remote: Option<Arc<dyn RemoteOffsets>>,
    ) -> OffsetsReader {
        OffsetsReader {
            node_id,
            partitions,
            image,
            remote,
        }
    }

    /// The offsets of every query's partition, in the order asked. Other nodes are asked in
    /// parallel, one request per leader (split at `PARTITION_OFFSETS_PARTITIONS_MAX`), while
    /// local partitions are read; the whole takes at most about `REMOTE_OFFSETS_TIMEOUT` plus
    /// the local reads.
    pub async fn read(
        &self,
        queries: &[PartitionOffsetsQuery],
    ) -> Vec<Result<PartitionOffsets, Refusal>> {
        let mut results: Vec<Option<Result<PartitionOffsets, Refusal>>> = vec![None; queries.len()];
        let mut local: Vec<(usize, PartitionHandle)> = Vec::new();
        let mut by_leader: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
        for (index, query) in queries.iter().enumerate() {
            match self.route(query) {
                Route::Local(handle) => local.push((index, handle)),
                Route::Remote(leader) => by_leader.entry(leader).or_default().push(index),
                Route::Refused(refusal) => results[index] = Some(Err(refusal)),
            }
        }
        // Remote requests go out first, each on a task of its own, so that they are in flight
        // while the local partitions are read.
        let mut calls = tokio::task::JoinSet::new();
        if let Some(remote) = &self.remote {
            for (leader, indexes) in by_leader {
                for chunk in indexes.chunks(PARTITION_OFFSETS_PARTITIONS_MAX as usize) {
                    let request = PartitionOffsetsRequest {
                        partitions: chunk.iter().map(|&i| queries[i].clone()).collect(),
                    };
                    let remote = Arc::clone(remote);
                    let chunk = chunk.to_vec();
                    calls.spawn(async move {
                        let answer = ask(remote.as_ref(), leader, request).await;
                        (leader, chunk, answer)
                    });
                }
            }
        }
        for (index, handle) in local {
            results[index] = Some(
                read_local(&handle, &queries[index])
                    .await
                    .map_err(|e| (e.error_code(), e.to_string())),
            );
        }
        while let Some(joined) = calls.join_next().await {
            let Ok((leader, chunk, answer)) = joined else {
                // A call task panicked (a bug): its partitions stay unanswered and are refused
                // below, rather than taking the coordinator down with it.
                continue;
            };
            match answer {
                Ok(response) => {
                    for (index, answer) in chunk.iter().zip(response.partitions) {
                        results[*index] = Some(check_answer(leader, &queries[*index], answer));
                    }
                }
                Err(error) => {
                    tracing::warn!(leader = leader.0, partitions = chunk.len(), %error, "partition offsets could not be read from their leader");
                    let refusal = error.refusal();
                    for index in chunk {
                        results[index] = Some(Err(refusal.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err((
                        ErrorCode::LeaderNotAvailable,
                        "the partition's leader gave no answer for it".into(),
                    ))
                })
            })
            .collect()
    }

    /// Where `query` is answered: here if the partition is open here, else at its leader as
    /// the image names it, else a refusal saying why not.
    fn route(&self, query: &PartitionOffsetsQuery) -> Route {
        match self.partitions.get(&query.topic, query.partition) {
            Some(PartitionSlot::Online(handle)) => return Route::Local(handle),
            Some(PartitionSlot::Offline) => {
                return Route::Refused((
                    ErrorCode::PartitionOffline,
                    format!(
                        "partition {}-{} is offline on this node",
                        query.topic, query.partition.0
                    ),
                ));
            }
            None => {}
        }
        let leader = match leader_of(&self.image.borrow(), &query.topic, query.partition) {
            Ok(leader) => leader,
            Err(refusal) => return Route::Refused(refusal),
        };
        if leader == self.node_id {
            return Route::Refused((
                ErrorCode::LeaderNotAvailable,
                format!(
                    "partition {}-{} is still opening on this node",
                    query.topic, query.partition.0
                ),
            ));
        }
        if self.remote.is_none() {
            return Route::Refused((
                ErrorCode::LeaderNotAvailable,
                format!(
                    "partition {}-{} is led by node {leader}, which this node has no link to",
                    query.topic, query.partition.0
                ),
            ));
        }
        Route::Remote(NodeId(leader))
    }
}

/// One remote call, bounded here as well as by the link, so that no implementation of
/// [`RemoteOffsets`] can hold a coordinator longer than the timeout.
async fn ask(
    remote: &dyn RemoteOffsets,
    leader: NodeId,
    request: PartitionOffsetsRequest,
) -> Result<PartitionOffsetsResponse, RemoteOffsetsError> {
    let asked = request.partitions.len();
    let response = tokio::time::timeout(
        REMOTE_OFFSETS_TIMEOUT,
        remote.partition_offsets(leader, request, REMOTE_OFFSETS_TIMEOUT),
    )
    .await
    .map_err(|_| RemoteOffsetsError::Timeout {
        node: leader,
        timeout: REMOTE_OFFSETS_TIMEOUT,
    })??;
    if response.partitions.len() != asked {
        return Err(RemoteOffsetsError::BadAnswer {
            node: leader,
            reason: format!(
                "{} answers for {asked} partitions",
                response.partitions.len()
            ),
        });
    }
    Ok(response)
}

/// A remote answer for `query`, checked: it names the partition asked, and its offsets are
/// whole and ordered. Anything else is refused rather than used.
fn check_answer(
    leader: NodeId,
    query: &PartitionOffsetsQuery,
    answer: PartitionOffsetsAnswer,
) -> Result<PartitionOffsets, Refusal> {
    let bad = |reason: String| {
        let error = RemoteOffsetsError::BadAnswer {
            node: leader,
            reason,
        };
        tracing::warn!(topic = %query.topic, partition = query.partition.0, %error, "refusing a partition offsets answer");
        Err(error.refusal())
    };
    if answer.topic != query.topic || answer.partition != query.partition {
        return bad(format!(
            "an answer for {}-{} where {}-{} was asked",
            answer.topic, answer.partition.0, query.topic, query.partition.0
        ));
    }
    if let Some(error) = answer.error {
        let code = error.error_code().unwrap_or(ErrorCode::UnknownServerError);
        return Err((
            code,
            format!("node {} answered: {}", leader.0, error.message),
        ));
    }
    let (Some(log_start_offset), Some(high_watermark), Some(log_end_offset)) = (
        answer.log_start_offset,
        answer.high_watermark,
        answer.log_end_offset,
    ) else {
        return bad("offsets missing without an error".into());
    };
    if !(log_start_offset <= high_watermark && high_watermark <= log_end_offset) {
        return bad(format!(
            "log start {} high watermark {} log end {} are out of order",
            log_start_offset.0, high_watermark.0, log_end_offset.0
        ));
    }
    Ok(PartitionOffsets {
        log_start_offset,
        high_watermark,
        log_end_offset,
        offset_for_timestamp: answer.offset_for_timestamp,
        timestamp_of_offset_ms: answer.timestamp_of_offset_ms,
    })
}

/// The leader of a partition as `image` names it, or why there is none.
fn leader_of(image: &MetadataImage, topic: &str, partition: PartitionId) -> Result<u32, Refusal> {
    let Some(t) = image.topics.get(topic) else {
        return Err((ErrorCode::UnknownTopic, format!("no topic {topic}")));
    };
    let Some(p) = t.partitions.get(partition.0 as usize) else {
        return Err((
            ErrorCode::UnknownPartition,
            format!("topic {topic} has no partition {}", partition.0),
        ));
    };
    p.leader.ok_or_else(|| {
        (
            ErrorCode::LeaderNotAvailable,
            format!("partition {topic}-{} has no leader", partition.0),
        )
    })
}

/// Reads one local partition's offsets, and what `query` asks beyond them: the offset for a
/// timestamp through the partition's ListOffsets (the same call a client's ListOffsets makes),
/// the timestamp of an offset with one small read below the high watermark.
///
/// # Errors
/// The partition's own refusal (offline, overloaded, a storage error).
pub async fn read_local(
    handle: &PartitionHandle,
    query: &PartitionOffsetsQuery,
) -> Result<PartitionOffsets, PartitionError> {
    let offsets = handle.offsets().await?;
    let offset_for_timestamp = match query.offset_for_timestamp_ms {
        Some(timestamp) => {
            handle
                .list_offset(OffsetSpec::Timestamp(timestamp), None)
                .await?
                .offset
        }
        None => None,
    };
    let timestamp_of_offset_ms = match query.timestamp_of_offset {
        Some(offset) if offsets.log_start_offset <= offset && offset < offsets.high_watermark => {
            timestamp_at(handle, offset).await
        }
        _ => None,
    };
    Ok(PartitionOffsets {
        log_start_offset: offsets.log_start_offset,
        high_watermark: offsets.high_watermark,
        log_end_offset: offsets.log_end_offset,
        offset_for_timestamp,
        timestamp_of_offset_ms,
    })
}

/// The timestamp of the first record at or after `offset`, if one can be read: a record
/// compacted or retained away meanwhile, or a failed read, gives `None`, which lag reports as
/// an unknown age rather than failing the whole description.
async fn timestamp_at(handle: &PartitionHandle, offset: Offset) -> Option<i64> {
    let read = handle
        .fetch(offset, TIMESTAMP_PROBE_BYTES, None)
        .await
        .ok()?;
    let batch = split_batches(&read.records).next()?.ok()?;
    let records = batch.records().ok()?;
    records
        .iter()
        .find(|r| r.offset >= offset)
        .map(|r| r.timestamp)
}

/// Answers another node's PartitionOffsets from this node's partitions: each query from its
/// Partition if it is open here, else with the client error that says why not (`NotLeader`
/// naming the leader this node knows, `UnknownTopic`, `UnknownPartition`,
/// `LeaderNotAvailable` while it opens, `PartitionOffline`). Queries are read one after the
/// other: each is a message to a log thread answered in microseconds, and a request holds at
/// most `PARTITION_OFFSETS_PARTITIONS_MAX` of them.
pub async fn serve_local(
    node_id: u32,
    partitions: &PartitionRegistry,
    image: &watch::Receiver<Arc<MetadataImage>>,
    request: PartitionOffsetsRequest,
) -> PartitionOffsetsResponse {
    let mut answers = Vec::with_capacity(request.partitions.len());
    for query in request.partitions {
        let refused = |error: ResponseError, query: PartitionOffsetsQuery| {
            PartitionOffsetsAnswer::failed(query.topic, query.partition, error)
        };
        let handle = match partitions.get(&query.topic, query.partition) {
            Some(PartitionSlot::Online(handle)) => handle,
            Some(PartitionSlot::Offline) => {
                let error = ResponseError::new(
                    ErrorCode::PartitionOffline,
                    format!(
                        "partition {}-{} is offline on node {node_id}",
                        query.topic, query.partition.0
                    ),
                );
                answers.push(refused(error, query));
                continue;
            }
            None => {
                let leader = leader_of(&image.borrow(), &query.topic, query.partition);
                let error = match leader {
                    Err((code, message)) => ResponseError::new(code, message),
                    Ok(leader) if leader == node_id => ResponseError::new(
                        ErrorCode::LeaderNotAvailable,
                        format!(
                            "partition {}-{} is still opening on node {node_id}",
                            query.topic, query.partition.0
                        ),
                    ),
                    Ok(leader) => ResponseError::not_leader(
                        Some(NodeId(leader)),
                        format!(
                            "node {node_id} does not lead {}-{}; node {leader} does",
                            query.topic, query.partition.0
                        ),
                    ),
                };
                answers.push(refused(error, query));
                continue;
            }
        };
        answers.push(match read_local(&handle, &query).await {
            Ok(offsets) => PartitionOffsetsAnswer {
                topic: query.topic,
                partition: query.partition,
                error: None,
                log_start_offset: Some(offsets.log_start_offset),
                high_watermark: Some(offsets.high_watermark),
                log_end_offset: Some(offsets.log_end_offset),
                offset_for_timestamp: offsets.offset_for_timestamp,
                timestamp_of_offset_ms: offsets.timestamp_of_offset_ms,
            },
            Err(e) => refused(ResponseError::new(e.error_code(), e.to_string()), query),
        });
    }
    PartitionOffsetsResponse {
        partitions: answers,
    }
}
