//! Produce and InitProducerId. A produce request's batches are split off its buffer and
//! queued at their partitions in arrival order before any answer is awaited.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::sync::OwnedSemaphorePermit;

use vltava_messages::batch::{BatchHeader, LOG_OVERHEAD_BYTES};
use vltava_messages::protocol::{
    ErrorCode, FrameHeader, InitProducerIdRequest, InitProducerIdResponse,
    ProducePartitionResponse, ProduceRequest, ProduceRequestRef, ProduceResponse,
    ProduceTopicResponse, ProtocolError, RequestKind, Response, ResponseError, is_internal_topic,
};
use vltava_messages::{LeaderEpoch, PartitionId};

use crate::partition::{Acks, IntoBatch, Pending, ProduceOk};

use super::{Answer, NodeServices, Outgoing, controller_error, encode, partition_error, route};

pub(super) async fn init_producer_id(
    request: InitProducerIdRequest,
    correlation_id: u64,
    services: &NodeServices,
) -> Vec<u8> {
    // `validate` made sure the id and epoch come together.
    let current = request.producer_id.zip(request.producer_epoch);
    match services.controller.init_producer_id(current).await {
        Ok((producer_id, producer_epoch)) => encode(
            InitProducerIdResponse {
                producer_id,
                producer_epoch,
            },
            correlation_id,
        ),
        Err(e) => {
            let header = FrameHeader {
                length: 0,
                kind: RequestKind::InitProducerId.code(),
                version: RequestKind::InitProducerId.version_max(),
                correlation_id,
            };
            Response::failed(&header, controller_error(&e))
                .encode(correlation_id)
                .unwrap_or_default()
        }
    }
}

// ---- produce ----

/// Splits a partition's records into whole batches (each then validated by the partition).
/// The common case, one batch, hands the buffer on without copying it.
/// Splits a partition's records into its batches, each its own part of the same allocation.
pub(super) fn split_batches(mut records: BytesMut) -> Result<Vec<BytesMut>, ResponseError> {
    let corrupt = |message: &str| ResponseError::new(ErrorCode::CorruptBatch, message.to_owned());
    let mut batches = Vec::new();
    while !records.is_empty() {
        let header = BatchHeader::parse(&records).map_err(|e| corrupt(&e.to_string()))?;
        let total = header.total_bytes() as usize;
        if total < LOG_OVERHEAD_BYTES || total > records.len() {
            return Err(corrupt("batch length runs past the records"));
        }
        batches.push(records.split_to(total));
    }
    if batches.is_empty() {
        return Err(corrupt("no record batch"));
    }
    Ok(batches)
}

pub(super) enum ProduceSlot {
    Failed(ResponseError),
    Waiting(Vec<Pending<ProduceOk>>),
}

/// A Produce request whose batches are parts of the buffer the request was read into.
pub(super) struct OwnedProduce {
    pub(super) acks: Acks,
    timeout_ms: u32,
    topics: Vec<(String, Vec<OwnedPartition>)>,
}

pub(super) struct OwnedPartition {
    partition: PartitionId,
    current_leader_epoch: Option<LeaderEpoch>,
    records: BytesMut,
}

impl From<ProduceRequest> for OwnedProduce {
    fn from(request: ProduceRequest) -> OwnedProduce {
        OwnedProduce {
            acks: request.acks,
            timeout_ms: request.timeout_ms,
            topics: request
                .topics
                .into_iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .into_iter()
                        .map(|p| OwnedPartition {
                            partition: p.partition,
                            current_leader_epoch: p.current_leader_epoch,
                            records: p.records.into_batch(),
                        })
                        .collect();
                    (t.name, partitions)
                })
                .collect(),
        }
    }
}

/// Decodes a Produce body without copying its batches: the records of each partition become
/// their own part of `body`'s allocation (`BytesMut::split_to`), to be stamped in place by the
/// partition and written to the log as they are.
pub(super) fn decode_produce(
    header: &FrameHeader,
    body: Vec<u8>,
) -> Result<OwnedProduce, ProtocolError> {
    let request = ProduceRequestRef::decode(header, &body)?;
    let base = body.as_ptr() as usize;
    let mut layout = Vec::with_capacity(request.topics.len());
    let mut next = 0usize;
    let mut in_order = true;
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let start = p.records.as_ptr() as usize - base;
            in_order &= start >= next;
            next = start + p.records.len();
            partitions.push((p.partition, p.current_leader_epoch, start..next));
        }
        layout.push((topic.name, partitions));
    }
    let acks = request.acks;
    let timeout_ms = request.timeout_ms;
    let mut rest = body.into_batch();
    let mut consumed = 0usize;
    let topics = layout
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(partition, current_leader_epoch, range)| {
                    let records = if in_order {
                        // MessagePack writes a map's values in order, so the records follow
                        // one another through the body; each split takes the next piece.
                        rest.advance(range.start - consumed);
                        consumed = range.end;
                        rest.split_to(range.len())
                    } else {
                        BytesMut::from(&rest[range.start - consumed..range.end - consumed])
                    };
                    OwnedPartition {
                        partition,
                        current_leader_epoch,
                        records,
                    }
                })
                .collect();
            (name, partitions)
        })
        .collect();
    Ok(OwnedProduce {
        acks,
        timeout_ms,
        topics,
    })
}

pub(super) fn produce(
    request: OwnedProduce,
    correlation_id: u64,
    services: &Arc<NodeServices>,
    bytes_permit: OwnedSemaphorePermit,
) -> Answer {
    let acks = request.acks;
    let deadline = Instant::now() + Duration::from_millis(u64::from(request.timeout_ms.max(1)));
    // A cluster node leads its partitions only while its lease with the controller holds:
    // checked before anything is appended and again before a write is acknowledged, so a
    // node that was paused or cut off past its lease never acknowledges once the controller
    // may have moved its partitions (ARCHITECTURE.md, "Leader leases").
    let lease = services.freshness.clone();
    let lease_lapsed = move || {
        lease
            .as_ref()
            .and_then(|f| f.check_leader().err())
            .map(|reason| ResponseError::not_leader(None, reason))
    };
    let lapsed_before = lease_lapsed();
    // Queue every batch at its partition now, in the order they came.
    let mut slots: Vec<(String, Vec<(PartitionId, ProduceSlot)>)> =
        Vec::with_capacity(request.topics.len());
    for (name, topic_partitions) in request.topics {
        let mut partitions = Vec::with_capacity(topic_partitions.len());
        for p in topic_partitions {
            let internal = if is_internal_topic(&name) {
                // Only the node writes its internal topics (group commits go through
                // OffsetCommit), so a client cannot forge a group's offsets.
                Err(ResponseError::new(
                    ErrorCode::InvalidTopicName,
                    "internal topics are written by the node only",
                ))
            } else {
                Ok(())
            };
            let routed = internal
                .and_then(|()| lapsed_before.clone().map_or(Ok(()), Err))
                .and_then(|()| route(services, &name, p.partition));
            let slot = match routed.and_then(|handle| {
                let batches = split_batches(p.records)?;
                let mut pending = Vec::with_capacity(batches.len());
                for batch in batches {
                    pending.push(
                        handle
                            .produce_enqueue(batch, acks, p.current_leader_epoch)
                            .map_err(|e| partition_error(&e))?,
                    );
                }
                Ok(pending)
            }) {
                Ok(pending) => ProduceSlot::Waiting(pending),
                Err(error) => ProduceSlot::Failed(error),
            };
            partitions.push((p.partition, slot));
        }
        slots.push((name, partitions));
    }
    let answer = async move {
        let _bytes = bytes_permit;
        let mut topics = Vec::with_capacity(slots.len());
        for (name, partitions) in slots {
            let mut answers = Vec::with_capacity(partitions.len());
            for (partition, slot) in partitions {
                let answer = match slot {
                    ProduceSlot::Failed(error) => Err(error),
                    ProduceSlot::Waiting(pending) => {
                        let mut first: Option<ProduceOk> = None;
                        let mut failure = None;
                        for one in pending {
                            match tokio::time::timeout_at(deadline.into(), one.wait()).await {
                                Ok(Ok(ok)) => {
                                    first.get_or_insert(ok);
                                }
                                Ok(Err(e)) => {
                                    failure.get_or_insert_with(|| partition_error(&e));
                                }
                                Err(_) => {
                                    failure.get_or_insert_with(|| ResponseError::new(ErrorCode::RequestTimedOut, "the produce timeout passed before the write was acknowledged"));
                                }
                            }
                        }
                        match (failure, first) {
                            (Some(error), _) => Err(error),
                            (None, Some(ok)) => lease_lapsed().map_or(Ok(ok), Err),
                            (None, None) => Err(ResponseError::new(
                                ErrorCode::CorruptBatch,
                                "no record batch",
                            )),
                        }
                    }
                };
                answers.push(match answer {
                    Ok(ok) => ProducePartitionResponse {
                        partition,
                        error: None,
                        base_offset: Some(ok.base_offset),
                        log_append_time: ok.log_append_time,
                        log_start_offset: Some(ok.log_start_offset),
                    },
                    Err(error) => {
                        if acks == Acks::None {
                            tracing::debug!(topic = %name, partition = partition.0, %error, "acks=0 produce failed");
                        }
                        ProducePartitionResponse { partition, error: Some(error), base_offset: None, log_append_time: None, log_start_offset: None }
                    }
                });
            }
            topics.push(ProduceTopicResponse {
                name,
                partitions: answers,
            });
        }
        Outgoing::Frame(encode(ProduceResponse { topics }, correlation_id))
    };
    if acks == Acks::None {
        // Nobody awaits an acks=0 answer, but its wait must still run to the end: it holds
        // the request's bytes permit until the partitions have taken the batches, which is
        // what bounds an acks=0 producer.
        Answer::Later(tokio::spawn(answer))
    } else {
        Answer::Waiting(Box::pin(answer))
    }
}
