//! Fetch (with long poll) and ListOffsets: read from the partitions' log threads; a fetch
//! answer is written around the stored record bytes, never copied.

use std::time::Duration;

use tokio::sync::watch;

use vltava_messages::limits::FETCH_RECORDS_BYTES_MAX;
use vltava_messages::protocol::{
    FetchPartitionRef, FetchRequest, FetchResponseRef, FetchTopicRef, ListOffsetsPartitionResponse,
    ListOffsetsRequest, ListOffsetsResponse, ListOffsetsTopicResponse, ResponseError,
};
use vltava_messages::{Offset, PartitionId};

use crate::partition::{FetchOk, PartitionError};

use super::{NodeServices, Outgoing, partition_error, route};

// ---- fetch ----

/// A fetch answer with the record bytes it owns, written by hand without copying them.
pub(super) struct FetchAnswer {
    topics: Vec<(String, Vec<FetchPartitionAnswer>)>,
}

pub(super) struct FetchPartitionAnswer {
    partition: PartitionId,
    error: Option<ResponseError>,
    high_watermark: Option<Offset>,
    log_start_offset: Option<Offset>,
    records: Vec<u8>,
}

impl FetchAnswer {
    pub(super) fn as_ref(&self) -> FetchResponseRef<'_> {
        FetchResponseRef {
            topics: self
                .topics
                .iter()
                .map(|(name, partitions)| FetchTopicRef {
                    name,
                    partitions: partitions
                        .iter()
                        .map(|p| FetchPartitionRef {
                            partition: p.partition,
                            error: p.error.clone(),
                            high_watermark: p.high_watermark,
                            last_stable_offset: p.high_watermark,
                            log_start_offset: p.log_start_offset,
                            records: &p.records,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn bytes(&self) -> usize {
        self.topics
            .iter()
            .flat_map(|(_, ps)| ps.iter())
            .map(|p| p.records.len())
            .sum()
    }

    fn has_error(&self) -> bool {
        self.topics
            .iter()
            .flat_map(|(_, ps)| ps.iter())
            .any(|p| p.error.is_some())
    }
}

pub(super) async fn fetch_once(
    request: &FetchRequest,
    services: &NodeServices,
    watches: &mut Vec<watch::Receiver<Offset>>,
) -> FetchAnswer {
    // The node's own cap (PROTOCOL.md section 9) keeps every answer within one frame whatever
    // a client asks for: a larger `max_bytes` used to read whole segments into one answer
    // that could not then be encoded.
    let mut budget = request.max_bytes.min(FETCH_RECORDS_BYTES_MAX);
    let mut got_any = false;
    let mut topics = Vec::with_capacity(request.topics.len());
    watches.clear();
    for topic in &request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let mut answer = FetchPartitionAnswer {
                partition: p.partition,
                error: None,
                high_watermark: None,
                log_start_offset: None,
                records: Vec::new(),
            };
            match route(services, &topic.name, p.partition) {
                Err(error) => answer.error = Some(error),
                Ok(handle) => {
                    // Marked seen before the read, so only a change after it wakes a long poll
                    // (and a fresh clone does not wake it at once, spinning).
                    let mut watch = handle.high_watermark();
                    watch.borrow_and_update();
                    watches.push(watch);
                    // The first partition with data may return one batch past the budget (so a
                    // large batch never stalls a consumer, as in Kafka); every later one must
                    // fit what is left, else it returns only its watermarks this time.
                    let bytes_max = if got_any {
                        p.partition_max_bytes.min(budget)
                    } else {
                        p.partition_max_bytes.min(budget).max(1)
                    };
                    match handle
                        .fetch(p.fetch_offset, bytes_max, p.current_leader_epoch)
                        .await
                    {
                        Ok(FetchOk {
                            records,
                            high_watermark,
                            log_start_offset,
                        }) => {
                            answer.high_watermark = Some(high_watermark);
                            answer.log_start_offset = Some(log_start_offset);
                            if !got_any || records.len() as u64 <= u64::from(budget) {
                                budget = budget.saturating_sub(records.len() as u32);
                                got_any |= !records.is_empty();
                                answer.records = records;
                            }
                        }
                        Err(e) => {
                            if let PartitionError::OffsetOutOfRange {
                                high_watermark,
                                log_start_offset,
                                ..
                            } = e
                            {
                                // The watermarks tell the consumer where it may resume.
                                answer.high_watermark = Some(high_watermark);
                                answer.log_start_offset = Some(log_start_offset);
                            }
                            answer.error = Some(partition_error(&e));
                        }
                    }
                }
            }
            partitions.push(answer);
        }
        topics.push((topic.name.clone(), partitions));
    }
    FetchAnswer { topics }
}

pub(super) async fn fetch(
    request: FetchRequest,
    correlation_id: u64,
    services: &NodeServices,
) -> Outgoing {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
    let mut watches = Vec::new();
    loop {
        let answer = fetch_once(&request, services, &mut watches).await;
        // `min_bytes` 0 asks for an answer at once, with whatever is there (PROTOCOL.md 6.8).
        let enough = request.min_bytes == 0
            || answer.bytes() as u64 >= u64::from(request.min_bytes)
            || answer.has_error();
        if enough || tokio::time::Instant::now() >= deadline || watches.is_empty() {
            return Outgoing::Fetch {
                correlation_id,
                answer,
            };
        }
        // Long poll: wait until any partition's high watermark moves, or the deadline.
        let changed = async {
            let futures: Vec<_> = watches.iter_mut().map(|w| Box::pin(w.changed())).collect();
            let _ = futures_select_any(futures).await;
        };
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            let answer = fetch_once(&request, services, &mut watches).await;
            return Outgoing::Fetch {
                correlation_id,
                answer,
            };
        }
    }
}

/// Waits for the first of several futures.
pub(super) async fn futures_select_any<F: std::future::Future + Unpin>(mut futures: Vec<F>) {
    std::future::poll_fn(|cx| {
        for f in &mut futures {
            if std::pin::Pin::new(&mut *f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        if futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

// ---- list offsets ----

pub(super) async fn list_offsets(
    request: ListOffsetsRequest,
    services: &NodeServices,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let result = match route(services, &topic.name, p.partition) {
                Err(error) => Err(error),
                Ok(handle) => handle
                    .list_offset(p.spec, p.current_leader_epoch)
                    .await
                    .map_err(|e| partition_error(&e)),
            };
            partitions.push(match result {
                Ok(listed) => ListOffsetsPartitionResponse {
                    partition: p.partition,
                    error: None,
                    offset: listed.offset,
                    timestamp: listed.timestamp,
                    leader_epoch: Some(listed.leader_epoch),
                },
                Err(error) => ListOffsetsPartitionResponse {
                    partition: p.partition,
                    error: Some(error),
                    offset: None,
                    timestamp: None,
                    leader_epoch: None,
                },
            });
        }
        topics.push(ListOffsetsTopicResponse {
            name: topic.name,
            partitions,
        });
    }
    ListOffsetsResponse { topics }
}
