//! The consumer: reads assigned partitions from positions it keeps, with long-poll fetches
//! sent to each partition's leader. Seek to an offset, the earliest or latest offset, or the
//! first offset at or after a timestamp.
//!
//! Through a leader change the positions stay: a partition whose leader cannot be reached, or
//! that answers a retriable error (`NotLeader`, `FencedLeaderEpoch`, a timeout, a lost
//! connection), makes the consumer refresh its metadata and fetch it again from the same
//! position on the leader the metadata names, after `FETCH_RETRY_BACKOFF` if nothing else
//! came. A fetch whose answer is overdue by `LEADER_CHECK_INTERVAL` makes it check, once per
//! interval, whether the partitions' leaders moved, and give up on that fetch if one did (a
//! paused leader answers nothing until its connection's timeout). Only `OffsetOutOfRange`
//! moves a position the caller did not ask to move.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use vltava_messages::batch::{Record, split_batches};
use vltava_messages::protocol::{
    ErrorCode, FetchPartition, FetchRequest, FetchResponse, FetchTopic, ListOffsetsPartition,
    ListOffsetsRequest, ListOffsetsTopic, OffsetSpec,
};
use vltava_messages::{Offset, PartitionId};

use crate::cluster::{Cluster, PartitionLeader};
use crate::error::ClientError;
use crate::producer::LEADER_CHECK_INTERVAL;

/// How long `poll` waits before it returns empty when its partitions' leaders could not be
/// reached or answered only retriable errors: long enough that a consumer polling in a loop
/// through a failover does not ask for metadata in a tight loop, short against the second or
/// two a leader change takes.
pub const FETCH_RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// How many times `list_offset` asks: once with the metadata it has, and once more after a
/// refresh when the answer says that metadata is stale (`NotLeader`, `FencedLeaderEpoch`, a
/// lost connection...). A third failure goes back to the caller, whose retry finds the refreshed
/// metadata in place.
const LIST_OFFSETS_ATTEMPTS: u32 = 2;

/// How long one ListOffsets request may wait for its answer.
const LIST_OFFSETS_TIMEOUT: Duration = Duration::from_secs(30);

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Longest a fetch waits on the broker for `min_bytes` to arrive.
    pub max_wait: Duration,
    pub min_bytes: u32,
    /// Bytes per fetch answer, all partitions together (at least one batch comes anyway).
    pub max_bytes: u32,
    pub partition_max_bytes: u32,
    /// Where to start when a position is out of range: earliest or latest.
    pub reset_to_earliest: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 8 << 20,
            partition_max_bytes: 4 << 20,
            reset_to_earliest: true,
        }
    }
}

/// Where to move a partition's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekTo {
    Earliest,
    Latest,
    Offset(u64),
    /// The first offset whose timestamp is at or after this (ms); the latest if none is.
    Timestamp(i64),
}

/// One event read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// An assigned partition about to be fetched: topic, partition, position, and its leader.
type Assigned = (String, u32, u64, PartitionLeader);

/// A fetch sent to one leader.
#[derive(Debug)]
struct SentFetch {
    answer: tokio::task::JoinHandle<Result<FetchResponse, ClientError>>,
    /// When the answer is overdue: the fetch's own wait plus `LEADER_CHECK_INTERVAL`.
    overdue_at: tokio::time::Instant,
    /// Each partition asked, with the leader it was asked of.
    routes: Vec<(String, u32, PartitionLeader)>,
}

/// The fetches in flight, one per leader.
type FetchAnswers = Vec<SentFetch>;

/// A fetch sent ahead while the caller handles the events of the last one.
#[derive(Debug)]
struct Prefetch {
    /// The positions it was sent from: it is used only if they are still the positions
    /// (a seek, an assignment or an unassignment in between makes it stale).
    from: BTreeMap<(String, u32), u64>,
    answers: FetchAnswers,
}

/// Reads assigned partitions.
#[derive(Debug)]
pub struct Consumer {
    cluster: Arc<Cluster>,
    config: ConsumerConfig,
    positions: BTreeMap<(String, u32), u64>,
    buffered: Vec<ConsumerRecord>,
    prefetched: Option<Prefetch>,
}

impl Consumer {
    #[must_use]
    pub fn new(cluster: Arc<Cluster>, config: ConsumerConfig) -> Consumer {
        Consumer {
            cluster,
            config,
            positions: BTreeMap::new(),
            buffered: Vec::new(),
            prefetched: None,
        }
    }

    /// Assigns partitions of a topic (all of them when `partitions` is `None`), each starting
    /// at `start`.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: Option<Vec<u32>>,
        start: SeekTo,
    ) -> Result<(), ClientError> {
        let count = self.cluster.partition_count(topic).await?;
        let partitions = partitions.unwrap_or_else(|| (0..count).collect());
        for p in partitions {
            if p >= count {
                return Err(ClientError::InvalidArgument(format!(
                    "topic {topic} has no partition {p}"
                )));
            }
            let offset = self.resolve(topic, p, start).await?;
            self.positions.insert((topic.to_owned(), p), offset);
        }
        Ok(())
    }

    /// Moves one partition's position.
    pub async fn seek(
        &mut self,
        topic: &str,
        partition: u32,
        to: SeekTo,
    ) -> Result<(), ClientError> {
        let offset = self.resolve(topic, partition, to).await?;
        self.positions.insert((topic.to_owned(), partition), offset);
        self.buffered
            .retain(|r| !(r.topic == topic && r.partition == partition));
        Ok(())
    }

    /// The next offset each assigned partition will read.
    #[must_use]
    pub fn positions(&self) -> &BTreeMap<(String, u32), u64> {
        &self.positions
    }

    /// Stops reading a partition and drops its buffered events. Returns the offset of the
    /// first event of that partition not yet returned by `poll` (the offset to commit), or
    /// `None` if the partition was not assigned.
    pub fn unassign(&mut self, topic: &str, partition: u32) -> Option<u64> {
        let returned = self.returned_position(topic, partition);
        self.positions.remove(&(topic.to_owned(), partition));
        self.buffered
            .retain(|r| !(r.topic == topic && r.partition == partition));
        returned
    }

    /// The offset of the first event of a partition that `poll` has not returned yet: the
    /// position, or the first buffered event when an interrupted fetch left some behind.
    /// This, not the position, is what a consumer may commit.
    #[must_use]
    pub fn returned_position(&self, topic: &str, partition: u32) -> Option<u64> {
        let position = *self.positions.get(&(topic.to_owned(), partition))?;
        let first_buffered = self
            .buffered
            .iter()
            .find(|r| r.topic == topic && r.partition == partition)
            .map(|r| r.offset);
        Some(first_buffered.map_or(position, |o| o.min(position)))
    }

    /// Assigns a partition (or moves it) to a known offset without asking the cluster, and
    /// drops its buffered events.
    pub(crate) fn set_position(&mut self, topic: &str, partition: u32, offset: u64) {
        self.positions.insert((topic.to_owned(), partition), offset);
        self.buffered
            .retain(|r| !(r.topic == topic && r.partition == partition));
    }

    /// The offset `to` names for a partition, looked up on its leader for `Earliest`,
    /// `Latest` and `Timestamp` (a timestamp after the last event gives the latest offset).
    pub async fn resolve_offset(
        &self,
        topic: &str,
        partition: u32,
        to: SeekTo,
    ) -> Result<u64, ClientError> {
        self.resolve(topic, partition, to).await
    }

    /// Looks an offset up on the partition's leader. An answer that says the metadata is
    /// stale refreshes it before the next attempt (`LIST_OFFSETS_ATTEMPTS`): a partition that is
    /// looked up but not fetched (one newly assigned in a group, say) has no fetch whose errors
    /// would refresh it, so without this a lookup after a leader change would ask the old
    /// leader, with the old leader epoch, for ever.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Option<u64>, ClientError> {
        let mut attempt = 1;
        loop {
            match self.list_offset_once(topic, partition, spec).await {
                Err(error) if error.wants_metadata_refresh() => {
                    tracing::debug!(%topic, partition, %error, attempt, "offset lookup met stale metadata; refreshing");
                    if let Err(e) = self.cluster.refresh().await {
                        tracing::debug!(error = %e, "metadata refresh failed");
                    }
                    if attempt >= LIST_OFFSETS_ATTEMPTS {
                        return Err(error);
                    }
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn list_offset_once(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Option<u64>, ClientError> {
        let (connection, epoch) = self.cluster.leader(topic, PartitionId(partition)).await?;
        let request = ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: topic.to_owned(),
                partitions: vec![ListOffsetsPartition {
                    partition: PartitionId(partition),
                    spec,
                    current_leader_epoch: Some(epoch),
                }],
            }],
        };
        let answer = connection.send(&request, LIST_OFFSETS_TIMEOUT).await?;
        let p = answer
            .topics
            .into_iter()
            .next()
            .and_then(|t| t.partitions.into_iter().next())
            .ok_or_else(|| ClientError::Protocol("empty answer".into()))?;
        if let Some(error) = p.error {
            return Err(ClientError::Server(error));
        }
        Ok(p.offset.map(|o| o.0))
    }

    async fn resolve(&self, topic: &str, partition: u32, to: SeekTo) -> Result<u64, ClientError> {
        Ok(match to {
            SeekTo::Offset(o) => o,
            SeekTo::Earliest => self
                .list_offset(topic, partition, OffsetSpec::Earliest)
                .await?
                .unwrap_or(0),
            SeekTo::Latest => self
                .list_offset(topic, partition, OffsetSpec::Latest)
                .await?
                .unwrap_or(0),
            SeekTo::Timestamp(t) => match self
                .list_offset(topic, partition, OffsetSpec::Timestamp(t))
                .await?
            {
                Some(o) => o,
                None => self
                    .list_offset(topic, partition, OffsetSpec::Latest)
                    .await?
                    .unwrap_or(0),
            },
        })
    }

    /// Returns buffered events, or fetches (one long poll per leader) and returns what came.
    /// An empty result means nothing arrived within `max_wait`.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>, ClientError> {
        if self.buffered.is_empty() {
            self.fetch().await?;
        }
        Ok(std::mem::take(&mut self.buffered))
    }

    async fn fetch(&mut self) -> Result<(), ClientError> {
        // A stale read-ahead is left to finish and its answer dropped: cancelling it could cut
        // its frame in half on the connection.
        let read_ahead = self
            .prefetched
            .take()
            .filter(|prefetch| prefetch.from == self.positions);
        if let Some(prefetch) = read_ahead {
            self.take_answers(prefetch.answers).await?;
        }
        if self.buffered.is_empty() {
            // Nothing read ahead (or it found nothing new): a long poll, so that an empty
            // `poll` still means nothing arrived within `max_wait`.
            let answers = self
                .send_fetches(self.config.max_wait, self.config.min_bytes)
                .await?;
            if answers.is_empty() && !self.positions.is_empty() {
                // No leader could be reached (`send_fetches` refreshed the metadata).
                tokio::time::sleep(FETCH_RETRY_BACKOFF.min(self.config.max_wait)).await;
            }
            self.take_answers(answers).await?;
        }
        // Read ahead: while the caller handles these events the next ones travel. It asks
        // for what is there now and does not long-poll, so that a seek or a new assignment
        // never queues behind a waiting fetch on the connection; an error here is left for
        // the next poll's own fetch to meet.
        if !self.buffered.is_empty()
            && let Ok(answers) = self.send_fetches(Duration::ZERO, 0).await
        {
            self.prefetched = Some(Prefetch {
                from: self.positions.clone(),
                answers,
            });
        }
        Ok(())
    }

    /// Sends one fetch per leader of the assigned partitions, from their positions. A partition
    /// whose leader is unknown or cannot be reached is left out this time, and the metadata
    /// refreshed for the next.
    async fn send_fetches(
        &self,
        max_wait: Duration,
        min_bytes: u32,
    ) -> Result<FetchAnswers, ClientError> {
        // Group the assigned partitions by leader connection.
        let mut by_leader: HashMap<String, (crate::connection::Connection, Vec<Assigned>)> =
            HashMap::new();
        let mut stale = false;
        for ((topic, partition), offset) in &self.positions {
            let found = async {
                let (leader, route) = self
                    .cluster
                    .leader_route(topic, PartitionId(*partition))
                    .await?;
                let connection = self.cluster.fetch_connection_to(leader.addr()).await?;
                Ok::<_, ClientError>((connection, route))
            }
            .await;
            let (connection, route) = match found {
                Ok(found) => found,
                Err(e) if e.is_retriable() => {
                    tracing::debug!(%topic, partition, error = %e, "no leader to fetch from; refreshing metadata");
                    stale = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            by_leader
                .entry(connection.addr().to_owned())
                .or_insert_with(|| (connection, Vec::new()))
                .1
                .push((topic.clone(), *partition, *offset, route));
        }
        if stale && let Err(e) = self.cluster.refresh().await {
            tracing::debug!(error = %e, "metadata refresh failed; the next poll tries again");
        }
        let mut answers = Vec::new();
        for (_, (connection, partitions)) in by_leader {
            let mut topics: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
            let mut routes = Vec::with_capacity(partitions.len());
            for (topic, partition, offset, route) in partitions {
                topics
                    .entry(topic.clone())
                    .or_default()
                    .push(FetchPartition {
                        partition: PartitionId(partition),
                        fetch_offset: Offset(offset),
                        partition_max_bytes: self.config.partition_max_bytes,
                        current_leader_epoch: Some(route.leader_epoch),
                    });
                routes.push((topic, partition, route));
            }
            let request = FetchRequest {
                max_wait_ms: max_wait.as_millis() as u32,
                min_bytes,
                max_bytes: self.config.max_bytes,
                topics: topics
                    .into_iter()
                    .map(|(name, partitions)| FetchTopic { name, partitions })
                    .collect(),
            };
            answers.push(SentFetch {
                answer: tokio::spawn(async move { connection.send(&request, max_wait).await }),
                overdue_at: tokio::time::Instant::now() + max_wait + LEADER_CHECK_INTERVAL,
                routes,
            });
        }
        Ok(answers)
    }

    /// Waits for a fetch's answer. Once it is overdue (`SentFetch::overdue_at`) it refreshes
    /// the metadata once per `LEADER_CHECK_INTERVAL`, and gives up on the fetch (`None`) as
    /// soon as one of its partitions is led by another node or in another leader epoch: a
    /// fetch to a paused leader would otherwise hold the consumer for its wait plus the
    /// connection's slack (5 s). The positions stay; the next fetch asks the new leader.
    async fn wait_for(
        &self,
        mut sent: SentFetch,
    ) -> Result<Option<Result<FetchResponse, ClientError>>, ClientError> {
        let joined = |j: Result<_, tokio::task::JoinError>| {
            j.map(Some)
                .map_err(|e| ClientError::Protocol(e.to_string()))
        };
        let mut due = sent.overdue_at;
        loop {
            tokio::select! {
                answer = &mut sent.answer => return joined(answer),
                () = tokio::time::sleep_until(due) => {}
            }
            let refreshed = tokio::select! {
                answer = &mut sent.answer => return joined(answer),
                refreshed = self.cluster.refresh() => refreshed,
            };
            due = tokio::time::Instant::now() + LEADER_CHECK_INTERVAL;
            let moved = refreshed.is_ok()
                && sent.routes.iter().any(|(topic, partition, sent_to)| {
                    self.cluster
                        .known_leader(topic, PartitionId(*partition))
                        .is_some_and(|now| sent_to.moved_to(now))
                });
            if moved {
                tracing::debug!(routes = ?sent.routes, "a leader moved while its fetch was out; fetching from the new one");
                // Its answer, if it ever comes, would be dropped anyway.
                sent.answer.abort();
                return Ok(None);
            }
        }
    }

    /// Buffers the events of fetch answers and moves the positions past them.
    async fn take_answers(&mut self, answers: FetchAnswers) -> Result<(), ClientError> {
        let mut refresh = false;
        for sent in answers {
            let answer = match self.wait_for(sent).await? {
                // The leader moved, and the metadata says where: fetch there next time.
                None => continue,
                Some(Ok(answer)) => answer,
                Some(Err(e)) if e.is_retriable() => {
                    refresh = true;
                    continue;
                }
                Some(Err(e)) => return Err(e),
            };
            for topic in answer.topics {
                for p in topic.partitions {
                    let key = (topic.name.clone(), p.partition.0);
                    let Some(position) = self.positions.get(&key).copied() else {
                        continue;
                    };
                    if let Some(error) = p.error {
                        match error.error_code() {
                            Some(ErrorCode::OffsetOutOfRange) => {
                                let to = if self.config.reset_to_earliest {
                                    SeekTo::Earliest
                                } else {
                                    SeekTo::Latest
                                };
                                let offset = self.resolve(&topic.name, p.partition.0, to).await?;
                                tracing::info!(topic = %topic.name, partition = p.partition.0, position, reset_to = offset, "position out of range; reset");
                                self.positions.insert(key, offset);
                            }
                            _ if error.retriable => refresh = true,
                            _ => return Err(ClientError::Server(error)),
                        }
                        continue;
                    }
                    let mut next = position;
                    for batch in split_batches(&p.records) {
                        let batch = batch.map_err(|e| {
                            ClientError::Protocol(format!(
                                "corrupt batch from {}-{}: {e}",
                                topic.name, p.partition.0
                            ))
                        })?;
                        let partition = p.partition.0;
                        let buffered = &mut self.buffered;
                        buffered.reserve(batch.header.record_count.min(65_536) as usize);
                        batch
                            .for_each_record(|offset, timestamp, record| {
                                if offset.0 < position {
                                    return;
                                }
                                next = offset.0 + 1;
                                let record = Record::from_view(offset, timestamp, &record);
                                buffered.push(ConsumerRecord {
                                    topic: topic.name.clone(),
                                    partition,
                                    offset: offset.0,
                                    timestamp,
                                    key: record.key,
                                    value: record.value,
                                    headers: record.headers,
                                });
                            })
                            .map_err(|e| ClientError::Protocol(e.to_string()))?;
                        next = next.max(batch.header.next_offset().0);
                    }
                    self.positions.insert(key, next);
                }
            }
        }
        if refresh {
            // The positions stay: the next fetch asks the leader the metadata now names from
            // where this one asked. A failed refresh is left for the next poll to retry.
            if let Err(e) = self.cluster.refresh().await {
                tracing::debug!(error = %e, "metadata refresh failed; the next poll tries again");
            }
            if self.buffered.is_empty() {
                tokio::time::sleep(FETCH_RETRY_BACKOFF.min(self.config.max_wait)).await;
            }
        }
        Ok(())
    }
}
