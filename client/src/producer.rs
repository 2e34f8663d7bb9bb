//! The producer: batches events per partition by size and linger, sends each partition's
//! batches in order with at most `max_in_flight` waiting, retries retriable failures with
//! capped back-off, and (by default) is idempotent, so a retry never duplicates an event.
//!
//! Shape: `send` adds the event to its partition's open batch in the accumulator, under a
//! lock the linger timer shares; sealed batches (numbered per partition when idempotent) go
//! over a bounded queue per partition (the back-pressure point) to one sender task per
//! partition, which keeps that partition's batches in order through retries.
//!
//! Idempotence: the producer holds one id and epoch (`Identity`), and each partition numbers
//! its batches from 0 (`Numbering`). When a partition answers `UnknownProducerId` (it has no
//! state for the producer, e.g. it aged out with the log, or the node never issued the id) the
//! producer bumps its epoch (InitProducerId with its id and epoch; a new id if the node does
//! not know the id) and the partition renumbers every batch not yet acknowledged from
//! sequence 0, in order. A bump fences the old epoch on every partition of the node at once,
//! so the other partitions' batches in flight may come back `ProducerFenced`; a partition that
//! sees that its epoch is already superseded by its own producer renumbers the same way. A
//! `ProducerFenced` for the epoch the producer still holds means another incarnation took the
//! id over: this one stops.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc, watch};
use vltava_messages::batch::{self, BatchHeader};
use vltava_messages::limits::{PRODUCER_EPOCH_MAX, PRODUCER_ID_MAX};
use vltava_messages::protocol::{
    Acks, ErrorCode, InitProducerIdRequest, InitProducerIdResponse, ProducePartition,
    ProduceRequest, ProduceTopic,
};
use vltava_messages::{
    BatchBuilder, Compression, LeaderEpoch, Offset, PartitionId, ProducerEpoch, ProducerId,
    Sequence,
};

use crate::cluster::{Cluster, PartitionLeader};
use crate::connection::Connection;
use crate::error::ClientError;
use crate::partitioner::{StickyPartitioner, partition_for_key};

/// Events a producer buffers before `send` waits.
pub const SEND_BUFFER_EVENTS: usize = 16_384;
/// Sealed batches waiting per partition before the accumulator waits.
pub const PARTITION_QUEUE_BATCHES: usize = 16;
/// The longest back-off between retries. A failover moves a partition within about half a
/// second to a second and a half, and a producer retrying to a dead leader until the metadata
/// names the new one adds up to one back-off on top of it: with a 2 s cap its attempts fell at
/// about 0.05, 0.15, 0.35, 0.75 and 1.55 s after the failure, so a partition that moved at
/// 0.8 s (the active controller's node killed) took writes again only at 1.55 s
/// (docs/benchmarks.md, "A consumer group through a coordinator failover"). Each attempt is one
/// produce request and one metadata request per partition, cheap at four a second.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// How long the oldest batch in flight on a partition may wait for its answer before the
/// idempotent producer checks whether the partition's leader moved, and how often it checks
/// again (one metadata refresh each time) while the answer is still out. The consumer checks
/// its fetches the same way, this long past their own wait. An acks=all answer
/// from a live leader takes milliseconds; one that takes a second more likely comes from a
/// leader that is paused or cut off, whose partitions the controller moves within about two
/// seconds (its fencing timeout). Checking every second finds the move within a second of it,
/// at the cost of one small Metadata request per second per stalled partition, where waiting
/// out the request timeout (30 s by default) would stall the partition that long.
pub const LEADER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    pub client_id: String,
    pub acks: Acks,
    /// Seal a batch once its records reach this many bytes (at most 4 MiB with the header).
    pub batch_bytes: usize,
    /// Seal a batch this long after its first record even if it is small.
    pub linger: Duration,
    pub compression: Compression,
    /// Idempotent delivery (needs `acks = all`; turned off otherwise).
    pub idempotent: bool,
    /// Batches per partition sent and not yet answered.
    pub max_in_flight: usize,
    /// First retry back-off; doubles up to `RETRY_BACKOFF_MAX`.
    pub retry_backoff: Duration,
    /// How long a batch may keep being retried before its events fail.
    pub delivery_timeout: Duration,
    /// The timeout each produce request carries.
    pub request_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            client_id: "vltava-producer".into(),
            acks: Acks::All,
            batch_bytes: 1 << 20,
            linger: Duration::from_millis(5),
            compression: Compression::None,
            idempotent: true,
            max_in_flight: 5,
            retry_backoff: Duration::from_millis(50),
            delivery_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// One event to send.
#[derive(Clone, Debug, Default)]
pub struct ProducerRecord {
    pub topic: String,
    /// `None`: by key hash, or sticky round-robin without a key.
    pub partition: Option<u32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Milliseconds since the Unix epoch; `None` takes the current time.
    pub timestamp: Option<i64>,
}

/// Where an event landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: u32,
    /// `None` with `acks = 0`, where the broker says nothing.
    pub offset: Option<Offset>,
}

type BatchOutcome = Option<Result<Option<Offset>, ClientError>>;

/// The future outcome of one `send`.
#[derive(Debug)]
pub struct Delivery {
    topic: String,
    partition: u32,
    outcome: watch::Receiver<BatchOutcome>,
    index: u32,
}

impl Delivery {
    /// Waits until the event's batch is acknowledged (or fails for good).
    pub async fn wait(mut self) -> Result<RecordMetadata, ClientError> {
        let outcome = self
            .outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ClientError::Closed)?
            .clone()
            .expect("waited for Some");
        let base = outcome?;
        Ok(RecordMetadata {
            topic: self.topic,
            partition: self.partition,
            offset: base.map(|b| b.plus(u64::from(self.index))),
        })
    }
}

/// A sealed batch on its way.
struct Sealed {
    bytes: Vec<u8>,
    outcome: watch::Sender<BatchOutcome>,
    created: Instant,
}

struct Open {
    builder: BatchBuilder,
    outcome: watch::Sender<BatchOutcome>,
    receiver: watch::Receiver<BatchOutcome>,
    created: Instant,
}

/// Sends events to a cluster.
///
/// `send` adds the event to its partition's open batch in the caller's task (under a lock
/// the linger timer shares), so queuing an event costs no hand-off to another task; only a
/// sealed batch crosses to its partition's sender task.
#[derive(Debug)]
pub struct Producer {
    shared: Arc<Shared>,
    linger: tokio::task::JoinHandle<()>,
}

struct Shared {
    accumulator: tokio::sync::Mutex<Accumulator>,
    /// Batches sealed and not yet answered, for `flush`.
    outstanding: Arc<(AtomicUsize, Notify)>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("outstanding", &self.outstanding.0.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Producer {
    /// Starts a producer (asking the cluster for a producer id when idempotent).
    pub async fn new(
        cluster: Arc<Cluster>,
        mut config: ProducerConfig,
    ) -> Result<Producer, ClientError> {
        if config.acks != Acks::All {
            config.idempotent = false;
        }
        if config.batch_bytes == 0 || config.max_in_flight == 0 {
            return Err(ClientError::InvalidArgument(
                "batch_bytes and max_in_flight must be positive".into(),
            ));
        }
        let identity = if config.idempotent {
            Some(Arc::new(
                Identity::init(Arc::clone(&cluster), &config).await?,
            ))
        } else {
            None
        };
        let outstanding = Arc::new((AtomicUsize::new(0), Notify::new()));
        let linger = config.linger;
        let accumulator = Accumulator {
            cluster,
            config: Arc::new(config),
            identity,
            topics: HashMap::new(),
            partitioner: StickyPartitioner::default(),
            outstanding: Arc::clone(&outstanding),
        };
        let shared = Arc::new(Shared {
            accumulator: tokio::sync::Mutex::new(accumulator),
            outstanding,
        });
        let linger = tokio::spawn(seal_lingering(Arc::downgrade(&shared), linger));
        Ok(Producer { shared, linger })
    }

    /// Queues an event; the returned `Delivery` resolves when it is acknowledged. Waits when
    /// the partition's queue of sealed batches is full. If this future is dropped before it
    /// resolves, the event may still be sent: it is in its batch once the call has begun.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery, ClientError> {
        self.shared.accumulator.lock().await.add(record).await
    }

    /// Seals every open batch and waits until every event sent so far is answered.
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.shared.accumulator.lock().await.seal_all(true).await;
        let (count, notify) = &*self.shared.outstanding;
        loop {
            let notified = notify.notified();
            if count.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Flushes and stops.
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await?;
        // Dropping the partition queues lets each sender task finish.
        self.shared.accumulator.lock().await.topics.clear();
        Ok(())
    }
}

impl Drop for Producer {
    /// A producer dropped without `close` still sends what it holds: its open batches are
    /// sealed on the runtime, if there is one.
    fn drop(&mut self) {
        self.linger.abort();
        let shared = Arc::clone(&self.shared);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut accumulator = shared.accumulator.lock().await;
                accumulator.seal_all(true).await;
                accumulator.topics.clear();
            });
        }
    }
}

/// Seals batches older than `linger`, checking every `linger` (at least every millisecond),
/// until the producer is gone.
async fn seal_lingering(shared: std::sync::Weak<Shared>, linger: Duration) {
    let mut timer = tokio::time::interval(linger.max(Duration::from_millis(1)));
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.accumulator.lock().await.seal_all(false).await;
    }
}

/// A producer id and epoch.
type Stamp = (ProducerId, ProducerEpoch);

/// The idempotent producer's id and epoch, shared by its partitions, so that one bump serves
/// every partition that needs one.
struct Identity {
    cluster: Arc<Cluster>,
    request_timeout: Duration,
    /// An async lock: a bump holds it across its InitProducerId, so partitions that need a
    /// bump at the same time wait for the one and use its answer.
    current: tokio::sync::Mutex<Stamp>,
}

impl Identity {
    /// Asks for a producer id, retrying retriable failures (a controller election, a node
    /// cut off from the quorum, a lost connection) with the producer's back-off, on the node
    /// a metadata refresh finds, for at most the delivery timeout: a producer started while
    /// the cluster is electing its controller or moving partitions waits, as its sends would.
    async fn init(cluster: Arc<Cluster>, config: &ProducerConfig) -> Result<Identity, ClientError> {
        let started = Instant::now();
        let mut backoff = config.retry_backoff;
        let stamp = loop {
            match init_producer_id(&cluster, None, config.request_timeout).await {
                Ok(stamp) => break stamp,
                Err(e) if e.is_retriable() && started.elapsed() < config.delivery_timeout => {
                    tracing::debug!(error = %e, "no producer id yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                    // Find a node that answers (and is not cut off) for the next attempt.
                    let _ = cluster.refresh().await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Identity {
            cluster,
            request_timeout: config.request_timeout,
            current: tokio::sync::Mutex::new(stamp),
        })
    }

    async fn current(&self) -> Stamp {
        *self.current.lock().await
    }

    /// Replaces `seen` with the next epoch of the same id, or with a new id when the node does
    /// not know this one (its epoch may have run out, or the node lost its metadata); returns
    /// the current identity at once if a partition already replaced `seen`.
    async fn renew(&self, seen: Stamp) -> Result<Stamp, ClientError> {
        let mut current = self.current.lock().await;
        if *current != seen {
            return Ok(*current);
        }
        let renewed = match init_producer_id(&self.cluster, Some(seen), self.request_timeout).await
        {
            Err(e) if e.code() == Some(ErrorCode::UnknownProducerId) => {
                init_producer_id(&self.cluster, None, self.request_timeout).await?
            }
            other => other?,
        };
        tracing::info!(
            from = ?(seen.0.0, seen.1.0),
            to = ?(renewed.0.0, renewed.1.0),
            "producer identity renewed"
        );
        *current = renewed;
        Ok(renewed)
    }
}

/// Asks for a new producer id (`current` absent) or the next epoch of `current`, and checks
/// that the answer fits the batch header.
async fn init_producer_id(
    cluster: &Cluster,
    current: Option<Stamp>,
    timeout: Duration,
) -> Result<Stamp, ClientError> {
    let request = InitProducerIdRequest {
        producer_id: current.map(|(id, _)| id),
        producer_epoch: current.map(|(_, epoch)| epoch),
    };
    let InitProducerIdResponse {
        producer_id,
        producer_epoch,
    } = cluster
        .any_connection()
        .await?
        .send(&request, timeout)
        .await?;
    if producer_id.0 > PRODUCER_ID_MAX || producer_epoch.0 > PRODUCER_EPOCH_MAX {
        return Err(ClientError::Protocol(format!(
            "producer id {} epoch {} is outside the ranges a batch header holds",
            producer_id.0, producer_epoch.0
        )));
    }
    Ok((producer_id, producer_epoch))
}

/// How one partition's batches are numbered: the identity they carry and the next base
/// sequence. The accumulator stamps each batch it seals with it, and queues the batch while
/// holding it; the partition's sender replaces it when the producer's identity changes, and
/// renumbers from 0 every batch not yet acknowledged, the queued ones included. Both under
/// this lock, so no batch is numbered between the two. A plain mutex: neither holds it across
/// an await.
struct Numbering {
    stamp: Stamp,
    next: Sequence,
}

type SharedNumbering = Arc<Mutex<Numbering>>;

fn lock(numbering: &SharedNumbering) -> std::sync::MutexGuard<'_, Numbering> {
    numbering.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Accumulator {
    cluster: Arc<Cluster>,
    config: Arc<ProducerConfig>,
    identity: Option<Arc<Identity>>,
    /// Per topic, looked up by `&str` so that queuing an event allocates nothing for the map.
    topics: HashMap<String, TopicState>,
    partitioner: StickyPartitioner,
    outstanding: Arc<(AtomicUsize, Notify)>,
}

#[derive(Default)]
struct TopicState {
    /// The current sticky partition, for events without key or partition.
    sticky: Option<u32>,
    partitions: HashMap<u32, PartitionState>,
}

struct PartitionState {
    open: Option<Open>,
    /// How batches are numbered (idempotent producers).
    numbering: Option<SharedNumbering>,
    /// The size of the last sealed batch: the next one reserves it up front, so a full batch
    /// is built without growing its buffer (bounded by the batch size setting).
    last_batch_bytes: usize,
    queue: mpsc::Sender<Sealed>,
}

/// Room for the record that crosses `batch_bytes` (one large event at most).
const BATCH_SLACK_BYTES: usize = 64 * 1024;

impl Accumulator {
    async fn add(&mut self, record: ProducerRecord) -> Result<Delivery, ClientError> {
        let partitions = self.cluster.partition_count(&record.topic).await?;
        if !self.topics.contains_key(record.topic.as_str()) {
            self.topics
                .insert(record.topic.clone(), TopicState::default());
        }
        let topic = self
            .topics
            .get_mut(record.topic.as_str())
            .expect("inserted above");
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p < partitions => p,
            (Some(p), _) => {
                return Err(ClientError::InvalidArgument(format!(
                    "topic {} has no partition {p}",
                    record.topic
                )));
            }
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => {
                *topic
                    .sticky
                    .get_or_insert_with(|| self.partitioner.next(partitions))
                    % partitions
            }
        };
        let state = match topic.partitions.entry(partition) {
            Entry::Occupied(state) => state.into_mut(),
            Entry::Vacant(slot) => {
                // A new partition numbers its batches under the producer's identity of now.
                let identity = match &self.identity {
                    Some(identity) => Some((Arc::clone(identity), identity.current().await)),
                    None => None,
                };
                slot.insert(PartitionState::start(
                    &self.cluster,
                    &self.config,
                    &record.topic,
                    partition,
                    &self.outstanding,
                    identity,
                ))
            }
        };
        let open = state.open.get_or_insert_with(|| {
            let (outcome, receiver) = watch::channel(None);
            let reserve = state
                .last_batch_bytes
                .min(self.config.batch_bytes + BATCH_SLACK_BYTES);
            Open {
                builder: BatchBuilder::with_capacity(self.config.compression, reserve),
                outcome,
                receiver,
                created: Instant::now(),
            }
        });
        let index = open.builder.record_count();
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        open.builder.push(
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
            record.timestamp.unwrap_or_else(now_ms),
        );
        let full = open.builder.uncompressed_bytes() >= self.config.batch_bytes;
        let delivery = Delivery {
            partition,
            outcome: open.receiver.clone(),
            index,
            topic: record.topic,
        };
        if full {
            if record.partition.is_none() && record.key.is_none() {
                // A full sticky batch: move on to the next partition.
                topic.sticky = Some(self.partitioner.next(partitions));
            }
            state.seal(&self.outstanding).await;
        }
        Ok(delivery)
    }

    async fn seal_all(&mut self, everything: bool) {
        let linger = self.config.linger;
        for topic in self.topics.values_mut() {
            for state in topic.partitions.values_mut() {
                let due = state
                    .open
                    .as_ref()
                    .is_some_and(|o| everything || o.created.elapsed() >= linger);
                if due {
                    state.seal(&self.outstanding).await;
                }
            }
        }
    }
}

impl PartitionState {
    /// A partition's state and the task that sends its batches.
    fn start(
        cluster: &Arc<Cluster>,
        config: &Arc<ProducerConfig>,
        topic: &str,
        partition: u32,
        outstanding: &Arc<(AtomicUsize, Notify)>,
        identity: Option<(Arc<Identity>, Stamp)>,
    ) -> PartitionState {
        let (queue, receiver) = mpsc::channel(PARTITION_QUEUE_BATCHES);
        let (identity, numbering) = match identity {
            Some((identity, stamp)) => (
                Some(identity),
                Some(Arc::new(Mutex::new(Numbering {
                    stamp,
                    next: Sequence(0),
                }))),
            ),
            None => (None, None),
        };
        let sender = PartitionSender {
            cluster: Arc::clone(cluster),
            config: Arc::clone(config),
            topic: topic.to_owned(),
            partition: PartitionId(partition),
            outstanding: Arc::clone(outstanding),
            identity,
            numbering: numbering.clone(),
        };
        tokio::spawn(sender.run(receiver));
        PartitionState {
            open: None,
            numbering,
            last_batch_bytes: 0,
            queue,
        }
    }

    /// Seals the open batch and queues it. Room in the queue is taken first, so a caller
    /// that gives up while the queue is full leaves the batch open (and whole) for the next
    /// call or the linger timer.
    async fn seal(&mut self, outstanding: &(AtomicUsize, Notify)) {
        let permit = self.queue.reserve().await;
        let Some(open) = self.open.take() else {
            return;
        };
        let mut builder = open.builder;
        // Held until the batch is queued: see `Numbering`.
        let mut numbering = self.numbering.as_ref().map(lock);
        if let Some(numbering) = numbering.as_deref_mut() {
            let count = builder.record_count();
            builder = builder.producer(numbering.stamp.0, numbering.stamp.1, numbering.next);
            numbering.next = numbering.next.plus(count);
        }
        let bytes = builder.build();
        self.last_batch_bytes = bytes.len();
        let sealed = Sealed {
            bytes,
            outcome: open.outcome,
            created: open.created,
        };
        outstanding.0.fetch_add(1, Ordering::SeqCst);
        match permit {
            Ok(permit) => permit.send(sealed),
            Err(_) => {
                sealed.outcome.send_replace(Some(Err(ClientError::Closed)));
                finish(outstanding);
            }
        }
        drop(numbering);
    }
}

fn finish(outstanding: &(AtomicUsize, Notify)) {
    outstanding.0.fetch_sub(1, Ordering::SeqCst);
    outstanding.1.notify_waiters();
}

/// Sends one partition's batches in order, with retries.
struct PartitionSender {
    cluster: Arc<Cluster>,
    config: Arc<ProducerConfig>,
    topic: String,
    partition: PartitionId,
    outstanding: Arc<(AtomicUsize, Notify)>,
    /// The producer's identity and this partition's numbering (idempotent producers).
    identity: Option<Arc<Identity>>,
    numbering: Option<SharedNumbering>,
}

type AnswerFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<Offset>, ClientError>> + Send>,
>;

/// A batch sent and not yet answered.
struct InFlight {
    batch: Sealed,
    answer: AnswerFuture,
    /// When its request was written.
    sent: Instant,
    /// The partition's leader (node and leader epoch) it was sent to; absent when the send
    /// failed before a leader was found (the answer is then that failure).
    sent_to: Option<PartitionLeader>,
}

/// How waiting for an in-flight batch ended.
enum Waited {
    Answered(Result<Option<Offset>, ClientError>),
    /// The partition's leader moved away from the one the batch was sent to: its outcome is
    /// unknown, and it is to be sent again to the new leader.
    Moved(PartitionLeader),
}

impl PartitionSender {
    async fn run(self, mut batches: mpsc::Receiver<Sealed>) {
        let mut waiting: VecDeque<Sealed> = VecDeque::new();
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut backoff = self.config.retry_backoff;
        let mut open = true;
        // When this partition last checked its leader (`wait_for`), so that checks are at
        // least `LEADER_CHECK_INTERVAL` apart.
        let mut checked: Option<Instant> = None;
        loop {
            // Take new batches while there is room.
            while open && waiting.len() + in_flight.len() < self.config.max_in_flight {
                let next = if in_flight.is_empty() && waiting.is_empty() {
                    batches.recv().await
                } else {
                    match batches.try_recv() {
                        Ok(batch) => Some(batch),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    }
                };
                match next {
                    Some(batch) => waiting.push_back(batch),
                    None => open = false,
                }
            }
            if !open && waiting.is_empty() && in_flight.is_empty() {
                return;
            }
            // Send what waits, in order, at most `max_in_flight` at a time (renumbering takes in
            // the queued batches, so more may wait).
            while in_flight.len() < self.config.max_in_flight {
                let Some(mut batch) = waiting.pop_front() else {
                    break;
                };
                let (answer, sent_to) = self.submit(&mut batch.bytes).await;
                in_flight.push_back(InFlight {
                    batch,
                    answer,
                    sent: Instant::now(),
                    sent_to,
                });
            }
            // The oldest answer decides.
            let Some(mut oldest) = in_flight.pop_front() else {
                continue;
            };
            let result = match self.wait_for(&mut oldest, &mut checked).await {
                Waited::Answered(result) => result,
                Waited::Moved(to) => {
                    // Give up on every answer still out (their requests went to the old
                    // leader, or after one that did) and send the batches again, in order, to
                    // the new one: a batch that got through is answered as a duplicate with
                    // its original offsets (idempotence), one that did not is appended.
                    tracing::info!(
                        topic = %self.topic,
                        partition = self.partition.0,
                        leader = ?to.leader.map(|n| n.0),
                        leader_epoch = to.leader_epoch.0,
                        batches = in_flight.len() + 1,
                        "leader moved while batches were in flight; sending them to the new leader"
                    );
                    let again: Vec<Sealed> = std::iter::once(oldest.batch)
                        .chain(in_flight.drain(..).map(|f| f.batch))
                        .collect();
                    for batch in again.into_iter().rev() {
                        waiting.push_front(batch);
                    }
                    backoff = self.config.retry_backoff;
                    continue;
                }
            };
            let batch = oldest.batch;
            match result {
                Ok(offset) => {
                    backoff = self.config.retry_backoff;
                    batch.outcome.send_replace(Some(Ok(offset)));
                    finish(&self.outstanding);
                }
                Err(error) if self.needs_new_identity(&error, &batch) => {
                    // Every batch after it failed or will fail too: wait for those answers,
                    // then send them all again in order under the new identity.
                    let mut held = vec![batch];
                    self.settle_later(&mut in_flight, &mut held, &mut checked)
                        .await;
                    let renumbered = self
                        .renumber(&error, &mut held, &mut waiting, &mut batches, &mut open)
                        .await;
                    match renumbered {
                        Ok(()) => {}
                        Err(e) if e.is_retriable() => {
                            // The bump itself failed on the way: the batches go again as they
                            // are, and their answers bring the producer back here.
                            tracing::debug!(topic = %self.topic, partition = self.partition.0, error = %e, "producer identity not renewed yet");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                        }
                        Err(e) => {
                            tracing::warn!(topic = %self.topic, partition = self.partition.0, error = %e, "producer identity lost; batches failed");
                            for batch in held.drain(..) {
                                batch.outcome.send_replace(Some(Err(e.clone())));
                                finish(&self.outstanding);
                            }
                        }
                    }
                    for batch in held.into_iter().rev() {
                        waiting.push_front(batch);
                    }
                }
                Err(error) if self.should_retry(&error, &batch) => {
                    tracing::debug!(topic = %self.topic, partition = self.partition.0, %error, "retrying a batch");
                    // Everything sent after it failed or will fail out of sequence: wait for
                    // those answers, then send them all again in order.
                    let mut again = vec![batch];
                    self.settle_later(&mut in_flight, &mut again, &mut checked)
                        .await;
                    for batch in again.into_iter().rev() {
                        waiting.push_front(batch);
                    }
                    if error.wants_metadata_refresh() {
                        let _ = self.cluster.refresh().await;
                        checked = Some(Instant::now());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
                Err(error) => {
                    tracing::warn!(topic = %self.topic, partition = self.partition.0, %error, "batch failed");
                    batch.outcome.send_replace(Some(Err(error)));
                    finish(&self.outstanding);
                }
            }
        }
    }

    /// Waits for the answer of a batch in flight. An idempotent producer also watches the
    /// partition's leader while the answer is overdue: from `LEADER_CHECK_INTERVAL` after the
    /// send, at most once per interval (`checked` is the partition's last check), it refreshes
    /// the metadata, and if the partition is now led by another node or in another leader
    /// epoch than the batch was sent to, it stops waiting (`Waited::Moved`). A request to a
    /// paused or cut-off leader would otherwise hold the partition for the request timeout.
    ///
    /// Without idempotence the answer (or its timeout) always decides: a batch sent again
    /// while its first request may still be appended could be written twice.
    async fn wait_for(&self, flight: &mut InFlight, checked: &mut Option<Instant>) -> Waited {
        let sent_to = match flight.sent_to {
            Some(sent_to) if self.identity.is_some() => sent_to,
            _ => return Waited::Answered((&mut flight.answer).await),
        };
        loop {
            let due = (flight.sent + LEADER_CHECK_INTERVAL)
                .max(checked.map_or(flight.sent, |at| at + LEADER_CHECK_INTERVAL));
            tokio::select! {
                answer = &mut flight.answer => return Waited::Answered(answer),
                () = tokio::time::sleep_until(due.into()) => {}
            }
            // The refresh is bounded by its own timeouts; the answer may still come meanwhile.
            let refreshed = tokio::select! {
                answer = &mut flight.answer => return Waited::Answered(answer),
                refreshed = self.cluster.refresh() => refreshed,
            };
            *checked = Some(Instant::now());
            if let Err(e) = refreshed {
                tracing::debug!(topic = %self.topic, partition = self.partition.0, error = %e, "leader check: no metadata");
                continue;
            }
            if let Some(now) = self.cluster.known_leader(&self.topic, self.partition)
                && sent_to.moved_to(now)
            {
                return Waited::Moved(now);
            }
        }
    }

    /// Waits for the answers of the batches sent after one that failed: those acknowledged are
    /// done; those that failed too, or whose leader moved while they waited (and every one
    /// after that), join `again`, in order, to be sent once more.
    async fn settle_later(
        &self,
        in_flight: &mut VecDeque<InFlight>,
        again: &mut Vec<Sealed>,
        checked: &mut Option<Instant>,
    ) {
        let mut moved = false;
        for mut later in in_flight.drain(..) {
            if moved {
                again.push(later.batch);
                continue;
            }
            match self.wait_for(&mut later, checked).await {
                Waited::Answered(Ok(offset)) => {
                    later.batch.outcome.send_replace(Some(Ok(offset)));
                    finish(&self.outstanding);
                }
                Waited::Answered(Err(_)) => again.push(later.batch),
                Waited::Moved(_) => {
                    moved = true;
                    again.push(later.batch);
                }
            }
        }
    }

    /// Whether the batch failed because the producer's identity is no longer good here: the
    /// partition does not know it, or a newer epoch fenced it.
    fn needs_new_identity(&self, error: &ClientError, batch: &Sealed) -> bool {
        self.identity.is_some()
            && batch.created.elapsed() < self.config.delivery_timeout
            && matches!(
                error.code(),
                Some(ErrorCode::UnknownProducerId | ErrorCode::ProducerFenced)
            )
    }

    /// Moves this partition to the producer's current identity, bumping it first if the
    /// failed batch carries the current one, and renumbers from sequence 0 every batch not yet
    /// acknowledged: `held` (the failed ones, oldest first), then those waiting to be sent,
    /// then those queued by the accumulator, which are taken in.
    async fn renumber(
        &self,
        error: &ClientError,
        held: &mut [Sealed],
        waiting: &mut VecDeque<Sealed>,
        queue: &mut mpsc::Receiver<Sealed>,
        open: &mut bool,
    ) -> Result<(), ClientError> {
        let (Some(identity), Some(numbering)) = (&self.identity, &self.numbering) else {
            return Err(error.clone());
        };
        let stamp = held
            .first()
            .and_then(|b| BatchHeader::parse(&b.bytes).ok())
            .and_then(|h| h.producer_id.zip(h.producer_epoch))
            .ok_or_else(|| error.clone())?;
        let current = identity.current().await;
        let fresh = if current != stamp {
            // Another partition renewed the identity already; its bump fenced this batch.
            current
        } else if error.code() == Some(ErrorCode::ProducerFenced) {
            // Fenced at the epoch this producer holds: another incarnation took the id over.
            return Err(error.clone());
        } else {
            identity.renew(stamp).await?
        };
        let mut numbering = lock(numbering);
        loop {
            match queue.try_recv() {
                Ok(batch) => waiting.push_back(batch),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    *open = false;
                    break;
                }
            }
        }
        let mut next = Sequence(0);
        for batch in held.iter_mut().chain(waiting.iter_mut()) {
            let count = BatchHeader::parse(&batch.bytes)
                .expect("a batch this producer built has a whole header")
                .record_count;
            batch::set_producer(&mut batch.bytes, fresh.0, fresh.1, next);
            next = next.plus(count);
        }
        tracing::debug!(topic = %self.topic, partition = self.partition.0, batches = held.len() + waiting.len(), "batches renumbered under a new producer identity");
        *numbering = Numbering { stamp: fresh, next };
        Ok(())
    }

    fn should_retry(&self, error: &ClientError, batch: &Sealed) -> bool {
        if batch.created.elapsed() >= self.config.delivery_timeout {
            return false;
        }
        // An out-of-sequence answer after a retriable failure of an earlier batch is expected:
        // the earlier one is being sent again.
        error.is_retriable()
            || (self.config.idempotent && error.code() == Some(ErrorCode::OutOfOrderSequence))
    }

    /// Writes the batch's request now (so batches leave in order) and returns the answer
    /// to wait for. The batch's bytes move into the request while it is written and back
    /// out afterwards, kept for a retry; they go to the socket from where they are, not
    /// through a copy in the frame (`Connection::submit_produce`).
    async fn submit(&self, records: &mut Vec<u8>) -> (AnswerFuture, Option<PartitionLeader>) {
        let mut sent_to = None;
        let submitted = async {
            let (connection, leader): (Connection, PartitionLeader) = self
                .cluster
                .leader_route(&self.topic, self.partition)
                .await?;
            sent_to = Some(leader);
            let epoch: LeaderEpoch = leader.leader_epoch;
            let mut request = ProduceRequest {
                acks: self.config.acks,
                timeout_ms: self.config.request_timeout.as_millis() as u32,
                topics: vec![ProduceTopic {
                    name: self.topic.clone(),
                    partitions: vec![ProducePartition {
                        partition: self.partition,
                        current_leader_epoch: Some(epoch),
                        records: std::mem::take(records),
                    }],
                }],
            };
            let submitted = if self.config.acks == Acks::None {
                connection
                    .send_without_answer(&request)
                    .await
                    .map(|()| None)
            } else {
                connection
                    .submit_produce(&request, self.config.request_timeout)
                    .await
                    .map(Some)
            };
            *records = std::mem::take(&mut request.topics[0].partitions[0].records);
            submitted
        }
        .await;
        let answer = Box::pin(async move {
            let answer = match submitted {
                Err(e) => return Err(e),
                Ok(None) => return Ok(None),
                Ok(Some(answer)) => answer.wait().await?,
            };
            let result = answer
                .topics
                .into_iter()
                .next()
                .and_then(|t| t.partitions.into_iter().next())
                .ok_or_else(|| ClientError::Protocol("empty produce answer".into()))?;
            if let Some(error) = result.error {
                return Err(ClientError::Server(error));
            }
            Ok(result.base_offset)
        });
        (answer, sent_to)
    }
}
