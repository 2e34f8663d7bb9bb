//! The producer: batches events per partition by size and linger, sends each partition's
//! batches in order with at most `max_in_flight` waiting, retries retriable failures with
//! capped back-off, and (by default) is idempotent, so a retry never duplicates an event.
//!
//! Shape: `send` hands the event to an accumulator task over a bounded channel (the
//! back-pressure point); the accumulator seals batches (numbering them per partition when
//! idempotent) and hands them to one sender task per partition, which keeps that partition's
//! batches in order through retries.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc, oneshot, watch};
use vltava_messages::protocol::{
    Acks, ErrorCode, InitProducerIdRequest, ProducePartition, ProduceRequest, ProduceTopic,
};
use vltava_messages::{
    BatchBuilder, Compression, LeaderEpoch, Offset, PartitionId, ProducerEpoch, ProducerId,
    Sequence,
};

use crate::cluster::Cluster;
use crate::connection::Connection;
use crate::error::ClientError;
use crate::partitioner::{StickyPartitioner, partition_for_key};

/// Events a producer buffers before `send` waits.
pub const SEND_BUFFER_EVENTS: usize = 16_384;
/// Sealed batches waiting per partition before the accumulator waits.
pub const PARTITION_QUEUE_BATCHES: usize = 16;
/// The longest back-off between retries.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

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

enum Command {
    Send(
        ProducerRecord,
        oneshot::Sender<Result<Delivery, ClientError>>,
    ),
    Flush(oneshot::Sender<()>),
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
#[derive(Debug)]
pub struct Producer {
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
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
            let answer = cluster
                .any_connection()
                .await?
                .send(&InitProducerIdRequest::default(), config.request_timeout)
                .await?;
            Some((answer.producer_id, answer.producer_epoch))
        } else {
            None
        };
        let (commands, receiver) = mpsc::channel(SEND_BUFFER_EVENTS);
        let accumulator = Accumulator {
            cluster,
            config: Arc::new(config),
            identity,
            open: HashMap::new(),
            senders: HashMap::new(),
            sequences: HashMap::new(),
            sticky: HashMap::new(),
            partitioner: StickyPartitioner::default(),
            outstanding: Arc::new((AtomicUsize::new(0), Notify::new())),
        };
        let task = tokio::spawn(accumulator.run(receiver));
        Ok(Producer { commands, task })
    }

    /// Queues an event; the returned `Delivery` resolves when it is acknowledged. Waits when
    /// the producer's buffer is full.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Send(record, reply))
            .await
            .map_err(|_| ClientError::Closed)?;
        answer.await.map_err(|_| ClientError::Closed)?
    }

    /// Seals every open batch and waits until every event sent so far is answered.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Flush(reply))
            .await
            .map_err(|_| ClientError::Closed)?;
        done.await.map_err(|_| ClientError::Closed)
    }

    /// Flushes and stops.
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await?;
        drop(self.commands);
        let _ = self.task.await;
        Ok(())
    }
}

struct Accumulator {
    cluster: Arc<Cluster>,
    config: Arc<ProducerConfig>,
    identity: Option<(ProducerId, ProducerEpoch)>,
    open: HashMap<(String, u32), Open>,
    senders: HashMap<(String, u32), mpsc::Sender<Sealed>>,
    sequences: HashMap<(String, u32), u32>,
    /// The current sticky partition of each topic, for events without key or partition.
    sticky: HashMap<String, u32>,
    partitioner: StickyPartitioner,
    /// Batches sealed and not yet answered, for `flush`.
    outstanding: Arc<(AtomicUsize, Notify)>,
}

impl Accumulator {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let tick = self.config.linger.max(Duration::from_millis(1));
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Send(record, reply)) => {
                        let _ = reply.send(self.add(record).await);
                    }
                    Some(Command::Flush(reply)) => {
                        self.seal_all(true).await;
                        let (count, notify) = &*self.outstanding;
                        loop {
                            let notified = notify.notified();
                            if count.load(Ordering::SeqCst) == 0 {
                                break;
                            }
                            notified.await;
                        }
                        let _ = reply.send(());
                    }
                    None => {
                        self.seal_all(true).await;
                        return;
                    }
                },
                _ = timer.tick() => self.seal_all(false).await,
            }
        }
    }

    async fn add(&mut self, record: ProducerRecord) -> Result<Delivery, ClientError> {
        let partitions = self.cluster.partition_count(&record.topic).await?;
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
                *self
                    .sticky
                    .entry(record.topic.clone())
                    .or_insert_with(|| self.partitioner.next(partitions))
                    % partitions
            }
        };
        let key = (record.topic.clone(), partition);
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let open = self.open.entry(key.clone()).or_insert_with(|| {
            let (outcome, receiver) = watch::channel(None);
            Open {
                builder: BatchBuilder::new(self.config.compression),
                outcome,
                receiver,
                created: Instant::now(),
            }
        });
        let index = open.builder.record_count();
        open.builder.push(
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
            record.timestamp.unwrap_or_else(now_ms),
        );
        let delivery = Delivery {
            topic: record.topic.clone(),
            partition,
            outcome: open.receiver.clone(),
            index,
        };
        if open.builder.uncompressed_bytes() >= self.config.batch_bytes {
            self.seal(&key).await;
            if record.partition.is_none() && record.key.is_none() {
                // A full sticky batch: move on to the next partition.
                let next = self.partitioner.next(partitions);
                self.sticky.insert(record.topic, next);
            }
        }
        Ok(delivery)
    }

    async fn seal_all(&mut self, everything: bool) {
        let due: Vec<(String, u32)> = self
            .open
            .iter()
            .filter(|(_, o)| everything || o.created.elapsed() >= self.config.linger)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.seal(&key).await;
        }
    }

    async fn seal(&mut self, key: &(String, u32)) {
        let Some(open) = self.open.remove(key) else {
            return;
        };
        let mut builder = open.builder;
        if let Some((id, epoch)) = self.identity {
            let sequence = self.sequences.entry(key.clone()).or_insert(0);
            let count = builder.record_count();
            builder = builder.producer(id, epoch, Sequence(*sequence));
            *sequence = ((u64::from(*sequence) + u64::from(count)) % (i32::MAX as u64 + 1)) as u32;
        }
        let sealed = Sealed {
            bytes: builder.build(),
            outcome: open.outcome,
            created: open.created,
        };
        let sender = self.senders.entry(key.clone()).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(PARTITION_QUEUE_BATCHES);
            let partition = PartitionSender {
                cluster: Arc::clone(&self.cluster),
                config: Arc::clone(&self.config),
                topic: key.0.clone(),
                partition: PartitionId(key.1),
                outstanding: Arc::clone(&self.outstanding),
            };
            tokio::spawn(partition.run(receiver));
            sender
        });
        self.outstanding.0.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::error::SendError(batch)) = sender.send(sealed).await {
            batch.outcome.send_replace(Some(Err(ClientError::Closed)));
            finish(&self.outstanding);
        }
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
}

type AnswerFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<Offset>, ClientError>> + Send>,
>;
type InFlight = (Sealed, AnswerFuture);

impl PartitionSender {
    async fn run(self, mut batches: mpsc::Receiver<Sealed>) {
        let mut waiting: VecDeque<Sealed> = VecDeque::new();
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut backoff = self.config.retry_backoff;
        let mut open = true;
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
            // Send what waits, in order.
            while let Some(batch) = waiting.pop_front() {
                let answer = self.submit(batch.bytes.clone()).await;
                in_flight.push_back((batch, answer));
            }
            // The oldest answer decides.
            let Some((batch, task)) = in_flight.pop_front() else {
                continue;
            };
            let result = task.await;
            match result {
                Ok(offset) => {
                    backoff = self.config.retry_backoff;
                    batch.outcome.send_replace(Some(Ok(offset)));
                    finish(&self.outstanding);
                }
                Err(error) if self.should_retry(&error, &batch) => {
                    tracing::debug!(topic = %self.topic, partition = self.partition.0, %error, "retrying a batch");
                    // Everything sent after it failed or will fail out of sequence: wait for
                    // those answers, then send them all again in order.
                    let mut again = vec![batch];
                    for (later, task) in in_flight.drain(..) {
                        match task.await {
                            Ok(offset) => {
                                later.outcome.send_replace(Some(Ok(offset)));
                                finish(&self.outstanding);
                            }
                            Err(_) => again.push(later),
                        }
                    }
                    for batch in again.into_iter().rev() {
                        waiting.push_front(batch);
                    }
                    if error.wants_metadata_refresh() {
                        let _ = self.cluster.refresh().await;
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
    /// to wait for.
    async fn submit(&self, records: Vec<u8>) -> AnswerFuture {
        let submitted = async {
            let (connection, epoch): (Connection, LeaderEpoch) =
                self.cluster.leader(&self.topic, self.partition).await?;
            let request = ProduceRequest {
                acks: self.config.acks,
                timeout_ms: self.config.request_timeout.as_millis() as u32,
                topics: vec![ProduceTopic {
                    name: self.topic.clone(),
                    partitions: vec![ProducePartition {
                        partition: self.partition,
                        current_leader_epoch: Some(epoch),
                        records,
                    }],
                }],
            };
            if self.config.acks == Acks::None {
                connection.send_without_answer(&request).await?;
                return Ok(None);
            }
            Ok(Some(
                connection
                    .submit(&request, self.config.request_timeout)
                    .await?,
            ))
        }
        .await;
        Box::pin(async move {
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
        })
    }
}
