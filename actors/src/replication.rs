//! Replication between nodes: the node's side of [`ReplicaLinks`] (its ReplicaFetchers, its
//! epoch-end questions to leaders, its partitions' ISR proposals to the controller), and the
//! leader's side of the two peer kinds followers send (`serve_replica_fetch`,
//! `serve_epoch_end`).
//!
//! - One ReplicaFetcher task per leader node this node follows partitions of: one fetch
//!   session (follower node, leader node) batching all those partitions in one ReplicaFetch
//!   request on the data connection, one fetch at a time. Each answer's batches go to their
//!   partitions unchanged (`PartitionHandle::apply_fetched`), which answer once the bytes are
//!   appended; the next fetch goes at once, reporting the new log ends and the flushed offsets
//!   as known then. With fsync durability each partition flushes behind its appends (group
//!   commit), so the follower fetches the next bytes while the last ones sync. A leader holds
//!   a fetch while nothing is new (long poll, at most `REPLICA_FETCH_WAIT`).
//! - Flush reports: when a partition's flush completes (`ReplicaLinks::flushed`), its fetcher
//!   sends the leader a report at once, a ReplicaFetch with no byte budget and no wait that
//!   carries the same fetch offsets and the new flushed offsets, so the leader's high
//!   watermark (the lowest flushed offset of the ISR) moves one one-way trip after the fsync,
//!   not one long poll later. Unlike the follower's other requests it leaves the fetch parked
//!   in the leader's long poll alone (`FetchWakers`), so that fetch carries the next batch the
//!   moment it is appended; the leader keeps a follower's highest flushed offset whichever of
//!   the two reports it takes last (`follower_fetched`). A flushed offset is reported with a
//!   log end only when both belong to the same `LogGeneration` of the partition's log, and
//!   never past that log end, so a follower never reports as fsynced an offset it has not
//!   fsynced, or bytes that are not the ones the reported log end counted.
//! - Bounds: at most `REPLICA_FETCH_PARTITIONS_MAX` partitions per request (a fetcher with
//!   more sends several requests in turn), `REPLICA_FETCH_BYTES` per answer, one fetch and at
//!   most `FLUSH_REPORTS_IN_FLIGHT_MAX` flush reports in flight per fetcher, one
//!   `apply_fetched` per partition in flight (the fetcher waits for every answer before its
//!   next fetch) and one flush per partition (the partition's `flush_in_flight`); a failed
//!   request is retried after a back-off doubling from `FETCH_BACKOFF_MIN` to
//!   `FETCH_BACKOFF_MAX`.
//! - A fetcher with no partitions left ends; the next `start_fetching` towards its leader
//!   starts a new one.
//! - Each fetcher is in the node's actor directory as `<node>/replica-fetcher/<leader>` while
//!   its task runs, with its partitions, traffic and last error (`fetcher_gauges`).

pub mod fetcher_gauges;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use vltava_messages::peer::{
    EpochEndQuery, EpochEndReply, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
    REPLICA_FETCH_PARTITIONS_MAX, ReplicaFetchAnswer, ReplicaFetchPartition, ReplicaFetchRequest,
    ReplicaFetchResponse,
};
use vltava_messages::protocol::{ErrorCode, ResponseError};
use vltava_messages::{LeaderEpoch, NodeId, Offset, PartitionId};

use crate::directory::ActorDirectory;
use crate::metadata::controller::ControllerHandle;
use crate::partition::replica_state::{
    CommittedIsr, EpochEndAnswer, FetchOutOfRange, FollowerReport, IsrAnswer, IsrProposal,
    LocalLog, PartitionEpoch,
};
use crate::partition::replication::{FlushMark, FollowerLog, LogGeneration, ReplicaLinks};
use crate::partition::supervisor::{PartitionRegistry, PartitionSlot};
use crate::partition::{PartitionError, PartitionHandle};
use crate::peer::{PeerChannel, PeerLinks, PeerRequest, PeerResponse};
use crate::session::partition_error;

/// How long a leader holds a follower's fetch while none of its partitions has anything new.
/// Kafka's `replica.fetch.wait.max.ms` is 500 ms; answers on the data connection come back in
/// order, so a forwarded admin request or a PartitionOffsets question queued behind a held
/// fetch waits as long: half of Kafka's keeps that wait short while an idle follower still
/// sends only a few requests a second.
pub const REPLICA_FETCH_WAIT: Duration = Duration::from_millis(250);

/// The byte budget of one ReplicaFetch answer over all its partitions. Large enough that a
/// follower of a busy leader moves megabytes per round trip, small enough that one answer is
/// far below the frame limit and a follower's partitions share the link fairly.
pub const REPLICA_FETCH_BYTES: u32 = vltava_messages::peer::REPLICA_FETCH_BYTES_MAX;

/// How long a fetcher waits for an answer beyond the leader's long poll before it gives the
/// request up and sends it again: a leader that stopped answering is noticed within seconds.
pub const FETCH_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long after a refused OffsetForLeaderEpoch a follower asks again, and how many times it
/// asks in a row before leaving it to the partition's own retry (`EPOCH_END_RETRY_INTERVAL`,
/// 500 ms): 8 × 50 ms stays within that interval.
pub const EPOCH_END_REFUSED_RETRY: Duration = Duration::from_millis(50);
pub const EPOCH_END_REFUSED_ATTEMPTS: u32 = 8;

/// Flush reports one fetcher may have unanswered: their answers wait behind the fetch parked
/// in the leader's long poll, so a fetcher that waited for each before the next would report
/// one flush per long poll. Four leave the data connection's other requests (the fetch,
/// epoch-end questions) room within its `PEER_INFLIGHT_REQUESTS_MAX`.
pub const FLUSH_REPORTS_IN_FLIGHT_MAX: usize = 4;
const _: () = assert!(FLUSH_REPORTS_IN_FLIGHT_MAX + 2 < crate::peer::PEER_INFLIGHT_REQUESTS_MAX);

/// The first back-off after a failed fetch, doubled up to `FETCH_BACKOFF_MAX`.
pub const FETCH_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest back-off between failed fetches: a leader that comes back is fetched from
/// within a second.
pub const FETCH_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long an epoch-end question or an ISR proposal may take before it counts as lost (the
/// replica state asks again on its own schedule).
pub const REPLICATION_CALL_TIMEOUT: Duration = Duration::from_secs(5);

type PartitionKey = (Arc<str>, PartitionId);

/// What a fetcher knows of one partition it fetches.
#[derive(Clone, Copy, Debug)]
struct Fetching {
    leader_epoch: LeaderEpoch,
    /// Which `start_fetching` this entry came from (node-wide, increasing): a round's result
    /// is written back only into the entry it was made from, so a partition that restarts
    /// its fetching (a new epoch, or within one after starting its log afresh) keeps its new
    /// starting point.
    session: u64,
    /// The partition's log as its last `apply_fetched` answer (or `start_fetching`) gave it:
    /// the fetch offset is its log end.
    log: LocalLog,
    /// The generation `log` belongs to.
    generation: LogGeneration,
    /// The highest flushed offset the partition reported (`ReplicaLinks::flushed`) in
    /// `generation`. It may lie past `log`'s end: a flush may complete before the fetcher
    /// took the answer of the append it covers.
    flush_mark: Option<Offset>,
    /// The leader's high watermark last applied (an answer with no bytes and no new high
    /// watermark is not worth a message to the partition).
    leader_high_watermark: Option<Offset>,
}

impl Fetching {
    fn new(leader_epoch: LeaderEpoch, session: u64, log: FollowerLog) -> Fetching {
        Fetching {
            leader_epoch,
            session,
            log: log.log,
            generation: log.generation,
            flush_mark: None,
            leader_high_watermark: None,
        }
    }

    /// The flushed offset to report with the fetch offset `log.log_end_offset`: the larger of
    /// the answer's own (a snapshot, so at most its log end and fsynced) and the latest flush
    /// mark of the same generation, which is cut to the log end. Within a generation the log
    /// only grows, so every offset below that log end still holds the bytes it held when the
    /// log end was learned, and a flush mark of the generation says they are fsynced.
    fn reported_flushed(&self) -> Offset {
        let mark = self
            .flush_mark
            .map_or(Offset(0), |m| m.min(self.log.log_end_offset));
        self.log.flushed_offset.max(mark)
    }

    /// Takes a flush mark: only one of this entry's generation counts (a mark from before or
    /// after a cut says nothing of the bytes below this entry's log end).
    fn take_flush_mark(&mut self, mark: FlushMark) -> bool {
        if mark.generation != self.generation {
            return false;
        }
        if self.flush_mark.is_some_and(|m| m >= mark.flushed_offset) {
            return false;
        }
        self.flush_mark = Some(mark.flushed_offset);
        true
    }

    /// Takes what `apply_fetched` answered: the log and its generation. A flush mark already
    /// taken stays if the generation is the same (the flush may have completed before this
    /// answer reached the fetcher, and no other mark follows it).
    fn take_applied(&mut self, applied: FollowerLog) {
        if applied.generation != self.generation {
            self.flush_mark = None;
            self.generation = applied.generation;
        }
        self.log = applied.log;
    }

    /// A round's result (`self`), to write back over the entry as it is now (`current`, of
    /// the same session): the round's log and high watermark, and the newer of the two flush
    /// marks if both are of one generation (a mark taken while the round was under way must
    /// not be lost: it may be the last one).
    fn merged_into(mut self, current: &Fetching) -> Fetching {
        if current.generation == self.generation {
            self.flush_mark = self.flush_mark.max(current.flush_mark);
        }
        self
    }
}

/// The partitions one fetcher fetches, shared with the node's `ReplicaManager`.
#[derive(Debug, Default)]
struct FetcherShared {
    partitions: Mutex<BTreeMap<PartitionKey, Fetching>>,
    /// Woken when partitions are added: the fetcher sends a new round at once.
    changed: Notify,
    /// Woken when a partition's flush completed: the fetcher reports it (`flush_report`).
    flushed: Notify,
}

/// The node's replication services; `ReplicaLinks` for its partitions.
#[derive(Clone, Debug)]
pub struct ReplicaManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node_id: NodeId,
    links: PeerLinks,
    registry: PartitionRegistry,
    controller: OnceLock<ControllerHandle>,
    fetchers: Mutex<HashMap<NodeId, Arc<FetcherShared>>>,
    /// The next fetch session number (`Fetching::session`).
    next_session: AtomicU64,
    runtime: tokio::runtime::Handle,
    /// Where fetchers register, under `parent` (the node supervisor's id).
    directory: ActorDirectory,
    parent: String,
}

impl ReplicaManager {
    /// Must be called within a tokio runtime (fetchers and calls run on it). Fetchers register
    /// in `directory` under `parent`.
    #[must_use]
    pub fn new(
        node_id: NodeId,
        links: PeerLinks,
        registry: PartitionRegistry,
        directory: ActorDirectory,
        parent: &str,
    ) -> ReplicaManager {
        ReplicaManager {
            inner: Arc::new(Inner {
                node_id,
                links,
                registry,
                controller: OnceLock::new(),
                fetchers: Mutex::new(HashMap::new()),
                next_session: AtomicU64::new(0),
                runtime: tokio::runtime::Handle::current(),
                directory,
                parent: parent.to_owned(),
            }),
        }
    }

    /// ISR proposals go to `controller` from now on (until then they are dropped, and the
    /// partitions propose again after their retry interval).
    pub fn serve_controller(&self, controller: ControllerHandle) {
        let _ = self.inner.controller.set(controller);
    }

    fn handle(&self, topic: &str, partition: PartitionId) -> Option<PartitionHandle> {
        match self.inner.registry.get(topic, partition) {
            Some(PartitionSlot::Online(handle)) => Some(handle),
            _ => None,
        }
    }
}

impl ReplicaLinks for ReplicaManager {
    fn propose_isr(&self, topic: &Arc<str>, partition: PartitionId, proposal: IsrProposal) {
        let Some(controller) = self.inner.controller.get().cloned() else {
            tracing::debug!(%topic, partition = partition.0, "no controller yet for an ISR proposal");
            return;
        };
        let manager = self.clone();
        let topic = Arc::clone(topic);
        self.inner.runtime.spawn(async move {
            let proposed_at = proposal.partition_epoch;
            let answer = tokio::time::timeout(
                REPLICATION_CALL_TIMEOUT,
                controller.alter_isr(
                    topic.to_string(),
                    partition.0,
                    proposal.leader.0,
                    proposal.leader_epoch.0,
                    proposal.partition_epoch.0,
                    proposal.isr.iter().map(|n| n.0).collect(),
                ),
            )
            .await;
            match answer {
                Ok(Ok(committed)) => {
                    if let Some(handle) = manager.handle(&topic, partition) {
                        handle.isr_answered(IsrAnswer {
                            proposed_at,
                            committed: CommittedIsr {
                                leader_epoch: LeaderEpoch(committed.leader_epoch),
                                partition_epoch: PartitionEpoch(committed.partition_epoch),
                                isr: committed.isr.into_iter().map(NodeId).collect(),
                            },
                        });
                    }
                }
                Ok(Err(e)) => {
                    tracing::info!(%topic, partition = partition.0, error = %e, "ISR proposal not answered");
                }
                Err(_) => {
                    tracing::info!(%topic, partition = partition.0, "ISR proposal timed out");
                }
            }
        });
    }

    fn ask_epoch_end(
        &self,
        topic: &Arc<str>,
        partition: PartitionId,
        leader: NodeId,
        leader_epoch: LeaderEpoch,
        epoch: LeaderEpoch,
    ) {
        let manager = self.clone();
        let topic = Arc::clone(topic);
        self.inner.runtime.spawn(async move {
            let mut attempt = 1;
            let reply = loop {
                let request = PeerRequest::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest {
                    partitions: vec![EpochEndQuery {
                        topic: topic.to_string(),
                        partition,
                        leader_epoch,
                        epoch,
                    }],
                });
                let answer = manager
                    .inner
                    .links
                    .call(leader, PeerChannel::Data, request, REPLICATION_CALL_TIMEOUT)
                    .await;
                let reply = match answer {
                    Ok(PeerResponse::OffsetForLeaderEpoch(mut response))
                        if response.partitions.len() == 1 =>
                    {
                        response.partitions.pop().expect("one answer")
                    }
                    Ok(other) => {
                        tracing::warn!(%topic, partition = partition.0, leader = leader.0, "OffsetForLeaderEpoch answered with {}", other.kind().name());
                        return;
                    }
                    Err(e) => {
                        tracing::info!(%topic, partition = partition.0, leader = leader.0, error = %e, "OffsetForLeaderEpoch failed; the partition asks again");
                        return;
                    }
                };
                let Some(error) = &reply.error else {
                    break reply;
                };
                // After a failover the followers often ask before the new leader has applied
                // the metadata that makes it leader; it answers in a few milliseconds once it
                // has, so a refusal is asked again soon rather than after the partition's own
                // retry interval (`EPOCH_END_RETRY_INTERVAL`), which the follower's every
                // acks=all write waits out.
                if attempt >= EPOCH_END_REFUSED_ATTEMPTS {
                    tracing::info!(%topic, partition = partition.0, leader = leader.0, error = %error.message, "OffsetForLeaderEpoch refused; the partition asks again");
                    return;
                }
                tracing::debug!(%topic, partition = partition.0, leader = leader.0, error = %error.message, attempt, "OffsetForLeaderEpoch refused; asking again soon");
                attempt += 1;
                tokio::time::sleep(EPOCH_END_REFUSED_RETRY).await;
            };
            let end = match (reply.end_epoch, reply.end_offset) {
                (Some(e), Some(o)) => Some((e, o)),
                _ => None,
            };
            if let Some(handle) = manager.handle(&topic, partition) {
                handle.epoch_end_answered(EpochEndAnswer {
                    leader_epoch,
                    requested: epoch,
                    end,
                });
            }
        });
    }

    fn start_fetching(
        &self,
        topic: &Arc<str>,
        partition: PartitionId,
        leader: NodeId,
        leader_epoch: LeaderEpoch,
        log: FollowerLog,
    ) {
        let key = (Arc::clone(topic), partition);
        let mut fetchers = self.inner.fetchers.lock().expect("fetchers lock");
        for (node, fetcher) in fetchers.iter() {
            if *node != leader {
                fetcher
                    .partitions
                    .lock()
                    .expect("fetcher lock")
                    .remove(&key);
            }
        }
        let fetching = Fetching::new(
            leader_epoch,
            self.inner.next_session.fetch_add(1, Ordering::Relaxed),
            log,
        );
        if let Some(fetcher) = fetchers.get(&leader) {
            fetcher
                .partitions
                .lock()
                .expect("fetcher lock")
                .insert(key, fetching);
            fetcher.changed.notify_one();
            return;
        }
        let shared = Arc::new(FetcherShared::default());
        shared
            .partitions
            .lock()
            .expect("fetcher lock")
            .insert(key, fetching);
        fetchers.insert(leader, Arc::clone(&shared));
        tracing::info!(leader = leader.0, "starting a replica fetcher");
        self.inner
            .runtime
            .spawn(run_fetcher(self.clone(), leader, shared));
    }

    fn flushed(&self, topic: &Arc<str>, partition: PartitionId, leader: NodeId, mark: FlushMark) {
        let key = (Arc::clone(topic), partition);
        let fetcher = {
            let fetchers = self.inner.fetchers.lock().expect("fetchers lock");
            let Some(fetcher) = fetchers.get(&leader) else {
                return;
            };
            Arc::clone(fetcher)
        };
        let taken = fetcher
            .partitions
            .lock()
            .expect("fetcher lock")
            .get_mut(&key)
            .is_some_and(|f| f.take_flush_mark(mark));
        if taken {
            fetcher.flushed.notify_one();
        }
    }

    fn stop_fetching(&self, topic: &Arc<str>, partition: PartitionId) {
        let key = (Arc::clone(topic), partition);
        let fetchers = self.inner.fetchers.lock().expect("fetchers lock");
        for fetcher in fetchers.values() {
            fetcher
                .partitions
                .lock()
                .expect("fetcher lock")
                .remove(&key);
        }
    }
}

/// One fetcher: fetches from `leader` until none of its partitions is left.
async fn run_fetcher(manager: ReplicaManager, leader: NodeId, shared: Arc<FetcherShared>) {
    let node = manager.inner.node_id;
    // Unregistered when this task ends, whichever way.
    let registration = fetcher_gauges::FetcherRegistration::register(
        &manager.inner.directory,
        &manager.inner.parent,
        node,
        leader,
    );
    let mut backoff = FETCH_BACKOFF_MIN;
    'rounds: loop {
        let batch: Vec<(PartitionKey, Fetching)> = {
            // Emptiness is decided under the manager's lock, so a `start_fetching` racing with
            // the end finds either this fetcher still registered or none.
            let mut fetchers = manager.inner.fetchers.lock().expect("fetchers lock");
            let partitions = shared.partitions.lock().expect("fetcher lock");
            if partitions.is_empty() {
                if fetchers
                    .get(&leader)
                    .is_some_and(|f| Arc::ptr_eq(f, &shared))
                {
                    fetchers.remove(&leader);
                }
                tracing::info!(
                    leader = leader.0,
                    "replica fetcher stops: no partitions left"
                );
                return;
            }
            registration.gauges.set_partitions(
                partitions.len(),
                partitions
                    .keys()
                    .map(|(topic, partition)| (&**topic, *partition)),
            );
            partitions
                .iter()
                .take(REPLICA_FETCH_PARTITIONS_MAX)
                .map(|(k, f)| (k.clone(), *f))
                .collect()
        };
        let request = ReplicaFetchRequest {
            max_wait_ms: u32::try_from(REPLICA_FETCH_WAIT.as_millis()).unwrap_or(u32::MAX),
            bytes_max: REPLICA_FETCH_BYTES,
            partitions: batch
                .iter()
                .map(|((topic, partition), f)| ReplicaFetchPartition {
                    topic: topic.to_string(),
                    partition: *partition,
                    leader_epoch: f.leader_epoch,
                    fetch_offset: f.log.log_end_offset,
                    flushed_offset: f.reported_flushed(),
                })
                .collect(),
        };
        // What this round has reported so far, per partition of `batch`: a flush report goes
        // only when one of them moved.
        let mut reported: Vec<Offset> = request
            .partitions
            .iter()
            .map(|p| p.flushed_offset)
            .collect();
        let call = manager.inner.links.call(
            leader,
            PeerChannel::Data,
            PeerRequest::ReplicaFetch(request),
            REPLICA_FETCH_WAIT + FETCH_ANSWER_TIMEOUT,
        );
        tokio::pin!(call);
        // At most `FLUSH_REPORTS_IN_FLIGHT_MAX` flush reports in flight: marks that come
        // while that many are under way go in the next one, or in the next fetch. A report's
        // answer comes after the parked fetch's (answers keep request order, and a report does
        // not end the long poll), so waiting for it before the next report would hold the
        // next flushed offset back until the long poll ends.
        let mut reports: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::new();
        let answer = loop {
            tokio::select! {
                answer = &mut call => break answer,
                // A partition added meanwhile (a new follower after a leader change, most
                // often) would wait out this round's long poll; a new round is sent at once
                // instead, which ends the old one at the leader (`FetchWakers`), whose answer
                // is dropped here (the leader keeps only what this node reported, never what
                // it sent).
                () = shared.changed.notified() => continue 'rounds,
                () = shared.flushed.notified(), if reports.len() < FLUSH_REPORTS_IN_FLIGHT_MAX => {
                    reports.extend(flush_report(&manager, leader, &shared, &batch, &mut reported));
                }
                () = first_done(&mut reports), if !reports.is_empty() => {
                    // Marks taken while the most were under way: the next report, now.
                    reports.extend(flush_report(&manager, leader, &shared, &batch, &mut reported));
                }
            }
        };
        let response = match answer {
            Ok(PeerResponse::ReplicaFetch(response))
                if response.partitions.len() == batch.len() =>
            {
                response
            }
            Ok(other) => {
                tracing::warn!(
                    node = node.0,
                    leader = leader.0,
                    "ReplicaFetch answered with {} ({} partitions)",
                    other.kind().name(),
                    batch.len()
                );
                registration.failed(&format_args!(
                    "ReplicaFetch answered with {}",
                    other.kind().name()
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(FETCH_BACKOFF_MAX);
                continue;
            }
            Err(e) => {
                tracing::debug!(leader = leader.0, error = %e, "replica fetch failed");
                registration.failed(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(FETCH_BACKOFF_MAX);
                continue;
            }
        };
        registration.answered(response.partitions.iter().map(|a| a.records.len()).sum());
        let applied = apply_answers(&manager, &batch, response).await;
        {
            let mut partitions = shared.partitions.lock().expect("fetcher lock");
            for (key, fetching) in &applied {
                // Only if the partition still fetches in the same session: a restart of its
                // fetching (a new epoch, or a log started afresh) keeps its own starting point.
                if let Some(current) = partitions.get_mut(key)
                    && current.session == fetching.session
                {
                    *current = fetching.merged_into(current);
                }
            }
        }
        if applied
            .iter()
            .any(|(_, f)| f.leader_high_watermark.is_some())
        {
            backoff = FETCH_BACKOFF_MIN;
        } else {
            // Every partition was refused (a leader that does not lead them any more, say):
            // wait for the metadata to move them rather than spin.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(FETCH_BACKOFF_MAX);
        }
    }
}

/// Waits until one of `futures` is done and removes it.
async fn first_done<F: Future<Output = ()> + Unpin>(futures: &mut Vec<F>) {
    std::future::poll_fn(|cx| {
        for i in 0..futures.len() {
            if std::pin::Pin::new(&mut futures[i]).poll(cx).is_ready() {
                drop(futures.swap_remove(i));
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await;
}

/// Hands each partition its answer's batches and returns what each fetches from next.
async fn apply_answers(
    manager: &ReplicaManager,
    batch: &[(PartitionKey, Fetching)],
    response: ReplicaFetchResponse,
) -> Vec<(PartitionKey, Fetching)> {
    let mut pending = Vec::new();
    for (((topic, partition), fetching), answer) in batch.iter().zip(response.partitions) {
        let key = (Arc::clone(topic), *partition);
        let mut next = *fetching;
        if let Some(error) = &answer.error {
            tracing::debug!(%topic, partition = partition.0, error = %error.message, "replica fetch refused");
            next.leader_high_watermark = None;
            let call = match (
                error.error_code(),
                answer.log_start_offset,
                answer.log_end_offset,
                manager.handle(topic, *partition),
            ) {
                // The leader does not hold the fetch offset: the partition starts its log
                // afresh at the leader's log start, or asks where to truncate. Either way it
                // restarts its fetching itself, in a new session.
                (Some(ErrorCode::OffsetOutOfRange), Some(start), Some(end), Some(handle)) => {
                    let out_of_range = FetchOutOfRange {
                        leader_epoch: fetching.leader_epoch,
                        fetch_offset: fetching.log.log_end_offset,
                        leader_log_start_offset: start,
                        leader_log_end_offset: end,
                    };
                    tracing::info!(%topic, partition = partition.0, fetch_offset = out_of_range.fetch_offset.0, leader_log_start_offset = start.0, leader_log_end_offset = end.0, "fetch offset out of the leader's range");
                    Some(tokio::spawn(async move {
                        handle.fetch_out_of_range(out_of_range).await.map(|()| None)
                    }))
                }
                _ => None,
            };
            pending.push((key, next, call));
            continue;
        }
        let ReplicaFetchAnswer {
            records,
            high_watermark,
            ..
        } = answer;
        let high_watermark = high_watermark.unwrap_or_default();
        if records.is_empty() && fetching.leader_high_watermark == Some(high_watermark) {
            pending.push((key, next, None));
            continue;
        }
        let Some(handle) = manager.handle(topic, *partition) else {
            pending.push((key, next, None));
            continue;
        };
        let call = tokio::spawn(async move {
            handle
                .apply_fetched(next.leader_epoch, records, high_watermark)
                .await
                .map(Some)
        });
        next.leader_high_watermark = Some(high_watermark);
        pending.push((key, next, Some(call)));
    }
    let mut out = Vec::with_capacity(pending.len());
    for (key, mut next, call) in pending {
        if let Some(call) = call {
            match call.await {
                Ok(Ok(Some(applied))) => next.take_applied(applied),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::info!(topic = %key.0, partition = key.1.0, error = %e, "fetched batches not applied");
                    next.leader_high_watermark = None;
                }
                Err(e) => {
                    tracing::warn!(topic = %key.0, partition = key.1.0, error = %e, "applying fetched batches panicked");
                    next.leader_high_watermark = None;
                }
            }
        }
        // Refused or gone: `next` keeps the same starting point.
        out.push((key, next));
    }
    out
}

/// A flush report for the partitions of `batch` (the round's fetch, still in flight) whose
/// flushed offset to report moved past `reported`: a ReplicaFetch with the same fetch offsets,
/// no byte budget and no wait, so the leader answers it at once with no bytes, and its
/// answer says nothing the fetch's will not. `None` when nothing moved. The report goes
/// through the leader's ordinary fetch path, which takes each partition's report as the
/// latest (`follower_fetched`) and moves the high watermark.
fn flush_report<'a>(
    manager: &'a ReplicaManager,
    leader: NodeId,
    shared: &FetcherShared,
    batch: &[(PartitionKey, Fetching)],
    reported: &mut [Offset],
) -> Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>> {
    let mut partitions = Vec::new();
    {
        let current = shared.partitions.lock().expect("fetcher lock");
        for (((topic, partition), sent), reported) in batch.iter().zip(reported.iter_mut()) {
            // Only an entry of the same session still fetches from the offset the round
            // reported; a replaced one starts over (and `changed` ends the round).
            let Some(now) = current
                .get(&(Arc::clone(topic), *partition))
                .filter(|now| now.session == sent.session)
            else {
                continue;
            };
            // The round's fetch offset, with what is known flushed below it now.
            let mut fetching = *now;
            fetching.log = sent.log;
            let flushed = fetching.reported_flushed();
            if flushed <= *reported {
                continue;
            }
            *reported = flushed;
            partitions.push(ReplicaFetchPartition {
                topic: topic.to_string(),
                partition: *partition,
                leader_epoch: sent.leader_epoch,
                fetch_offset: sent.log.log_end_offset,
                flushed_offset: flushed,
            });
        }
    }
    if partitions.is_empty() {
        return None;
    }
    let request = ReplicaFetchRequest {
        max_wait_ms: 0,
        bytes_max: 0,
        partitions,
    };
    let call = manager.inner.links.call(
        leader,
        PeerChannel::Data,
        PeerRequest::ReplicaFetch(request),
        REPLICA_FETCH_WAIT + FETCH_ANSWER_TIMEOUT,
    );
    Some(Box::pin(async move {
        // The answer carries no bytes; a refusal or a failure is met by the round's fetch
        // too, which handles it.
        if let Err(e) = call.await {
            tracing::debug!(leader = leader.0, error = %e, "flush report failed");
        }
    }))
}

/// The answer to one partition of a follower's fetch.
fn refused(topic: String, partition: PartitionId, error: ResponseError) -> ReplicaFetchAnswer {
    ReplicaFetchAnswer {
        topic,
        partition,
        error: Some(error),
        high_watermark: None,
        log_start_offset: None,
        log_end_offset: None,
        records: Vec::new(),
    }
}

/// Leader: what ends a follower's long poll early. A follower's peer connection answers in
/// request order, so a long-polling fetch holds back whatever the follower asks after it
/// (its next fetch, with a partition just added; an epoch-end question before that) for up
/// to the whole wait: a new request from the same follower (but a flush report, whose answer
/// nothing waits for but the fetcher's count of reports in flight) ends its older long polls
/// at once, including one that had not begun to wait when the new request
/// arrived (requests of one connection are served concurrently).
#[derive(Debug, Default)]
pub struct FetchWakers {
    by_follower: Mutex<HashMap<NodeId, Arc<FollowerWaker>>>,
}

/// One follower's requests: how many arrived, and the long polls waiting to hear of the next.
#[derive(Debug, Default)]
struct FollowerWaker {
    notify: Notify,
    arrivals: AtomicU64,
}

/// A request's place among its follower's requests.
#[derive(Debug)]
pub struct Arrival {
    waker: Arc<FollowerWaker>,
    index: u64,
}

impl Arrival {
    /// Whether a newer request from the same follower arrived since this one.
    fn superseded(&self) -> bool {
        self.waker.arrivals.load(Ordering::SeqCst) != self.index
    }
}

impl FetchWakers {
    /// A request from `follower` arrived: its long polls under way end now, and one about to
    /// begin sees it (`Arrival::superseded`). Returns this request's place.
    pub fn arrived(&self, follower: NodeId) -> Arrival {
        let waker = Arc::clone(
            self.by_follower
                .lock()
                .expect("fetch wakers lock")
                .entry(follower)
                .or_default(),
        );
        // Counted before the wake: a long poll that registers its wait and then reads the
        // count either sees this arrival or is registered in time to be woken by it.
        let index = waker.arrivals.fetch_add(1, Ordering::SeqCst) + 1;
        waker.notify.notify_waiters();
        Arrival { waker, index }
    }
}

/// Leader: answers a follower's ReplicaFetch from the local partitions, holding it (at most
/// `max_wait_ms`) while none has anything past the follower's log end, or until the same
/// follower asks something else (`FetchWakers`).
pub async fn serve_replica_fetch(
    node_id: NodeId,
    from: NodeId,
    registry: &PartitionRegistry,
    wakers: &FetchWakers,
    request: ReplicaFetchRequest,
) -> ReplicaFetchResponse {
    // A flush report does not end the follower's parked fetch: that fetch is what carries
    // the next batch the moment it is appended (ending it costs a round trip per batch), and
    // the leader keeps the higher flushed offset whichever of the two it takes last
    // (`follower_fetched`). It is answered at once, behind the parked fetch's answer.
    if is_flush_report(&request) {
        let mut log_ends = Vec::new();
        return fetch_once(node_id, from, registry, &request, &mut log_ends, false).await;
    }
    let arrival = wakers.arrived(from);
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(u64::from(request.max_wait_ms)).min(REPLICA_FETCH_WAIT * 4);
    // Each partition's log-end watch with the follower's fetch offset: the wait ends when a
    // log end passes its fetch offset, i.e. when there is something to answer.
    let mut log_ends: Vec<(watch::Receiver<Offset>, Offset)> = Vec::new();
    let mut first = true;
    loop {
        let response = fetch_once(node_id, from, registry, &request, &mut log_ends, first).await;
        first = false;
        let any_data = response
            .partitions
            .iter()
            .any(|a| a.error.is_some() || !a.records.is_empty());
        if any_data || log_ends.is_empty() || tokio::time::Instant::now() >= deadline {
            return response;
        }
        // Long poll: until any partition's log end passes the follower's fetch offset, or the
        // deadline. Waiting for a log end *past the fetch offset* (not for any change of the
        // watch: a clone of a receiver that never marked a value seen reports a change at once,
        // which made this loop spin until the deadline on every idle fetch) ends the wait only
        // when there is something to answer; a value already past it ends it at once.
        // Registered before the wait is built, so a request arriving from here on ends it; one
        // that arrived before (while this request was still reading) ends it here. A fetch
        // superseded so is answered with what it found before it waited, without reading or
        // reporting again: its report is older than the newer request's, which the leader must
        // take last, and the follower fetches again at once.
        let superseded = arrival.waker.notify.notified();
        tokio::pin!(superseded);
        superseded.as_mut().enable();
        if arrival.superseded() {
            return response;
        }
        let moved = async {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
            let mut waits = tokio::task::JoinSet::new();
            for (watch, fetch_offset) in log_ends.iter().cloned() {
                let tx = tx.clone();
                waits.spawn(async move {
                    let mut watch = watch;
                    if watch.wait_for(|end| *end > fetch_offset).await.is_ok() {
                        let _ = tx.try_send(());
                    }
                });
            }
            drop(tx);
            let _ = rx.recv().await;
        };
        let timed_out = tokio::select! {
            timed_out = tokio::time::timeout_at(deadline, moved) => timed_out.is_err(),
            () = superseded => return response,
        };
        if timed_out {
            return fetch_once(node_id, from, registry, &request, &mut log_ends, false).await;
        }
    }
}

/// A follower's flush report (PROTOCOL.md 12.8): no byte budget and no wait.
fn is_flush_report(request: &ReplicaFetchRequest) -> bool {
    request.bytes_max == 0 && request.max_wait_ms == 0
}

async fn fetch_once(
    node_id: NodeId,
    from: NodeId,
    registry: &PartitionRegistry,
    request: &ReplicaFetchRequest,
    log_ends: &mut Vec<(watch::Receiver<Offset>, Offset)>,
    first: bool,
) -> ReplicaFetchResponse {
    // One partition at a time, so the byte budget is spent exactly: each gets what is left
    // (a partition's first batch is answered even past it, so an answer exceeds the budget by
    // at most one batch), and those past it still report their progress, which may move the
    // high watermark, and get their bytes next time.
    let mut budget = request.bytes_max;
    let mut answers = Vec::with_capacity(request.partitions.len());
    for p in &request.partitions {
        let handle = match registry.get(&p.topic, p.partition) {
            Some(PartitionSlot::Online(handle)) => handle,
            Some(PartitionSlot::Offline) => {
                answers.push(refused(
                    p.topic.clone(),
                    p.partition,
                    ResponseError::new(
                        ErrorCode::PartitionOffline,
                        format!(
                            "{}-{} is offline on node {}",
                            p.topic, p.partition.0, node_id.0
                        ),
                    ),
                ));
                continue;
            }
            None => {
                answers.push(refused(
                    p.topic.clone(),
                    p.partition,
                    ResponseError::not_leader(
                        None,
                        format!(
                            "node {} holds no replica of {}-{}",
                            node_id.0, p.topic, p.partition.0
                        ),
                    ),
                ));
                continue;
            }
        };
        if first {
            log_ends.push((handle.log_end(), p.fetch_offset));
        }
        let report = FollowerReport {
            follower: from,
            leader_epoch: p.leader_epoch,
            log_end_offset: p.fetch_offset,
            flushed_offset: p.flushed_offset,
        };
        let answer = match handle.replica_fetch_enqueue(report, budget) {
            Ok(pending) => pending.wait().await,
            Err(e) => Err(e),
        };
        answers.push(match answer {
            Ok(ok) => {
                budget = budget.saturating_sub(u32::try_from(ok.records.len()).unwrap_or(u32::MAX));
                ReplicaFetchAnswer {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    error: None,
                    high_watermark: Some(ok.high_watermark),
                    log_start_offset: Some(ok.log_start_offset),
                    log_end_offset: Some(ok.log_end_offset),
                    records: ok.records,
                }
            }
            Err(e) => {
                let mut answer = refused(p.topic.clone(), p.partition, partition_error(&e));
                if let PartitionError::OffsetOutOfRange {
                    log_start_offset,
                    high_watermark,
                    log_end_offset,
                    ..
                } = e
                {
                    // The follower compares its fetch offset with the log's bounds: below
                    // the start it starts afresh there, past the end it truncates.
                    answer.log_start_offset = Some(log_start_offset);
                    answer.log_end_offset = Some(log_end_offset);
                    answer.high_watermark = Some(high_watermark);
                }
                answer
            }
        });
    }
    ReplicaFetchResponse {
        partitions: answers,
    }
}

/// Leader: answers a new follower's OffsetForLeaderEpoch from the local partitions.
pub async fn serve_epoch_end(
    node_id: NodeId,
    from: NodeId,
    registry: &PartitionRegistry,
    wakers: &FetchWakers,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    // The question comes on the connection a long poll of the same follower may hold: end it,
    // or the answer waits behind it.
    wakers.arrived(from);
    let mut partitions = Vec::with_capacity(request.partitions.len());
    for q in request.partitions {
        let failed = |error: ResponseError, q: &EpochEndQuery| EpochEndReply {
            topic: q.topic.clone(),
            partition: q.partition,
            error: Some(error),
            end_epoch: None,
            end_offset: None,
        };
        let handle = match registry.get(&q.topic, q.partition) {
            Some(PartitionSlot::Online(handle)) => handle,
            _ => {
                partitions.push(failed(
                    ResponseError::not_leader(
                        None,
                        format!(
                            "node {} does not serve {}-{}",
                            node_id.0, q.topic, q.partition.0
                        ),
                    ),
                    &q,
                ));
                continue;
            }
        };
        partitions.push(match handle.epoch_end(q.leader_epoch, q.epoch).await {
            Ok(end) => EpochEndReply {
                topic: q.topic.clone(),
                partition: q.partition,
                error: None,
                end_epoch: end.map(|(e, _)| e),
                end_offset: end.map(|(_, o)| o),
            },
            Err(e) => failed(partition_error(&e), &q),
        });
    }
    OffsetForLeaderEpochResponse { partitions }
}
