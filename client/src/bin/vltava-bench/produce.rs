//! Producers: `raw` resends one prebuilt batch over `Connection::submit`; `client` sends
//! event by event through `Producer`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, mpsc, oneshot};
use vltava_client::connection::{Answer, Connection};
use vltava_client::{ClientError, Cluster, Delivery, Producer, ProducerConfig, ProducerRecord};
use vltava_messages::protocol::{
    Acks, EncodedRequest, ProducePartition, ProduceRequest, ProduceResponse, ProduceTopic,
    RequestBody,
};
use vltava_messages::{BatchBuilder, Compression, PartitionId};

use crate::{Mode, Outcome, Shared};

/// The longest a producer waits for room to send before giving up.
const ROOM_WAIT: Duration = Duration::from_secs(120);
/// Intended send times the pacer may hand over ahead of the senders.
const PACER_QUEUE_MAX: usize = 4096;
/// Client-mode deliveries awaiting their answer per partition; past it sending waits, like a
/// producer application with bounded memory.
const DELIVERIES_QUEUE_MAX: usize = 65_536;

pub async fn run(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    partitions: Vec<u32>,
    events: u64,
    index: usize,
) -> Outcome {
    match shared.cli.mode {
        Mode::Raw => raw(shared, cluster, partitions, events).await,
        Mode::Client => client(shared, cluster, partitions, events, index).await,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An event value: a fixed pattern (no compression is used, so its entropy does not matter).
pub fn value_of(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The bytes of one full batch of the raw mode: `count` events of `size` bytes.
pub fn batch_bytes(size: usize, count: u32) -> usize {
    builder_with(&value_of(size), count).build().len()
}

/// A batch of `count` events of `value`.
fn builder_with(value: &[u8], count: u32) -> BatchBuilder {
    let mut builder = BatchBuilder::new(Compression::None);
    let now = now_ms();
    for _ in 0..count {
        builder.push(None, Some(value), &[], now);
    }
    builder
}

/// Starts a thread that sends the intended time of each of `units` sends, one every
/// `interval` from `start`, sleeping until each is due; it stops at `deadline` or when the
/// receiver is gone. A thread sleeps with microsecond precision where tokio's timer has 1 ms.
fn pacer(
    start: Instant,
    deadline: Instant,
    interval: Duration,
    units: u64,
) -> mpsc::Receiver<Instant> {
    // Bounded: a pacer that runs ahead waits. That does not hide latency, which is measured
    // from each send's intended time, not from when the pacer handed it over.
    let (sender, receiver) = mpsc::channel(PACER_QUEUE_MAX);
    std::thread::Builder::new()
        .name("vltava-bench-pacer".into())
        .spawn(move || {
            for k in 0..units {
                let due = start + interval.mul_f64(k as f64);
                if due >= deadline {
                    return;
                }
                wait_until(due);
                if sender.blocking_send(due).is_err() {
                    return;
                }
            }
        })
        .expect("cannot start a thread");
    receiver
}

/// One partition's prebuilt requests and the connection to its leader.
/// One partition's connection and its requests, each encoded once and resent as they are.
struct Lane {
    connection: Connection,
    full: Prebuilt,
    /// The last, shorter batch when the events do not divide into whole batches.
    partial: Option<Prebuilt>,
}

struct Prebuilt {
    request: EncodedRequest<ProduceRequest>,
    batch_bytes: u64,
}

impl Prebuilt {
    fn new(request: &ProduceRequest) -> Result<Prebuilt, ClientError> {
        Ok(Prebuilt {
            request: request.encode_body()?,
            batch_bytes: request.topics[0].partitions[0].records.len() as u64,
        })
    }
}

/// A request written and not yet answered.
struct Pending {
    /// The intended send time (paced) or the submission time.
    since: Instant,
    answer: Answer<ProduceResponse>,
    _room: tokio::sync::OwnedSemaphorePermit,
    events: u64,
    batch_bytes: u64,
}

fn check_answer(answer: ProduceResponse) -> Result<(), String> {
    let partition = answer
        .topics
        .into_iter()
        .next()
        .and_then(|t| t.partitions.into_iter().next())
        .ok_or("empty produce answer")?;
    match partition.error {
        Some(e) => Err(format!("server error {}: {}", e.name, e.message)),
        None => Ok(()),
    }
}

/// Waits for the answers in the order the requests were written (a connection answers in
/// that order), counting each when it arrives.
async fn complete(
    mut pending: mpsc::Receiver<Pending>,
    failed: Arc<AtomicBool>,
    started: Instant,
    size: usize,
) -> Outcome {
    let mut outcome = Outcome::new(started);
    while let Some(p) = pending.recv().await {
        // The answer's own timeout (the request's plus slack) bounds this wait.
        let result = p
            .answer
            .wait()
            .await
            .map_err(|e| e.to_string())
            .and_then(check_answer);
        let now = Instant::now();
        match result {
            Ok(()) => {
                outcome
                    .latency
                    .record_duration(now.saturating_duration_since(p.since));
                outcome.events += p.events;
                outcome.requests += 1;
                outcome.payload_bytes += p.events * size as u64;
                outcome.batch_bytes += p.batch_bytes;
                outcome.finished = now;
            }
            Err(e) => {
                outcome.error.get_or_insert(e);
                failed.store(true, Ordering::SeqCst);
            }
        }
    }
    outcome
}

async fn raw(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    partitions: Vec<u32>,
    events: u64,
) -> Outcome {
    let cli = &shared.cli;
    let setup = async {
        let value = value_of(cli.size);
        let full = builder_with(&value, cli.batch).build();
        let rest = (events % u64::from(cli.batch)) as u32;
        let partial = (rest > 0).then(|| builder_with(&value, rest).build());
        let mut lanes = Vec::new();
        for &p in &partitions {
            let (connection, epoch) = cluster.leader(&cli.topic, PartitionId(p)).await?;
            let request = |records: Vec<u8>| ProduceRequest {
                acks: cli.acks,
                timeout_ms: cli.timeout_ms,
                topics: vec![ProduceTopic {
                    name: cli.topic.clone(),
                    partitions: vec![ProducePartition {
                        partition: PartitionId(p),
                        current_leader_epoch: Some(epoch),
                        records,
                    }],
                }],
            };
            lanes.push(Lane {
                connection,
                full: Prebuilt::new(&request(full.clone()))?,
                partial: partial
                    .clone()
                    .map(|p| Prebuilt::new(&request(p)))
                    .transpose()?,
            });
        }
        Ok::<_, ClientError>(lanes)
    }
    .await;
    shared.start.wait().await;
    let started = Instant::now();
    let lanes = match setup {
        Ok(lanes) => lanes,
        Err(e) => {
            let mut outcome = Outcome::new(started);
            outcome.error = Some(format!("set-up failed: {e}"));
            return outcome;
        }
    };
    if lanes.is_empty() || events == 0 {
        return Outcome::new(started);
    }
    let deadline = started + shared.deadline_after;
    let batch = u64::from(cli.batch);
    let room = Arc::new(Semaphore::new(cli.in_flight * lanes.len()));
    let failed = Arc::new(AtomicBool::new(false));
    // Each pending answer holds a `room` permit, so the in-flight window bounds this queue.
    let (pending, receiver) = mpsc::channel(cli.in_flight * lanes.len() + 1);
    let completer = tokio::spawn(complete(receiver, Arc::clone(&failed), started, cli.size));
    let sending = Sending {
        lanes,
        room,
        failed,
        pending,
        acks: cli.acks,
        size: cli.size as u64,
        batch,
        events,
        deadline,
        request_timeout: Duration::from_millis(u64::from(cli.timeout_ms)),
        started,
    };
    let sent = match cli.rate {
        // Paced: a thread of its own sleeps until each send is due and sends it itself, so
        // no wake-up of another thread stands between the schedule and the socket.
        Some(rate) => {
            let schedule = Schedule {
                start: started,
                interval: Duration::from_secs_f64(batch as f64 / (rate / cli.producers as f64)),
            };
            let runtime = tokio::runtime::Handle::current();
            let (done, result) = oneshot::channel();
            std::thread::Builder::new()
                .name("vltava-bench-sender".into())
                .spawn(move || {
                    let _ = done.send(runtime.block_on(send_all(sending, Some(schedule))));
                })
                .expect("cannot start a thread");
            result.await.unwrap_or_else(|_| {
                let mut sent = Outcome::new(started);
                sent.error = Some("the sending thread failed".into());
                sent
            })
        }
        None => send_all(sending, None).await,
    };
    let mut outcome = if cli.acks == Acks::None {
        completer.abort();
        sent
    } else {
        let mut outcome = match completer.await {
            Ok(done) => done,
            Err(e) => {
                let mut outcome = Outcome::new(started);
                outcome.error = Some(format!("the completer failed: {e}"));
                outcome
            }
        };
        outcome.lag = sent.lag;
        if let Some(e) = sent.error {
            outcome.error.get_or_insert(e);
        }
        outcome
    };
    if outcome.events == 0 && outcome.error.is_none() && events > 0 {
        outcome.error = Some("nothing was sent before the deadline".into());
    }
    outcome
}

/// A fixed schedule of sends.
struct Schedule {
    start: Instant,
    interval: Duration,
}

impl Schedule {
    fn due(&self, k: u64) -> Instant {
        self.start + self.interval.mul_f64(k as f64)
    }
}

/// Blocks the thread until `due`: sleeps until shortly before it, then spins, because a
/// sleeping thread on a virtual machine often wakes 100 us or more late.
fn wait_until(due: Instant) {
    const SPIN: Duration = Duration::from_micros(200);
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > SPIN {
            std::thread::sleep(left - SPIN);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// What the sending loop needs.
struct Sending {
    lanes: Vec<Lane>,
    room: Arc<Semaphore>,
    failed: Arc<AtomicBool>,
    pending: mpsc::Sender<Pending>,
    acks: Acks,
    size: u64,
    batch: u64,
    events: u64,
    deadline: Instant,
    request_timeout: Duration,
    started: Instant,
}

/// Sends every batch, round-robin over the lanes, each when there is room in the window
/// (and, with a schedule, when it is due: then this blocks its thread between sends and must
/// run on a thread of its own). Returns the counts for `acks = 0`, the schedule lag and the
/// error that stopped it.
async fn send_all(s: Sending, schedule: Option<Schedule>) -> Outcome {
    let mut outcome = Outcome::new(s.started);
    let mut sent = 0u64;
    let mut k = 0u64;
    while sent < s.events && !s.failed.load(Ordering::SeqCst) {
        let intended = match &schedule {
            Some(schedule) => {
                let due = schedule.due(k);
                if due >= s.deadline {
                    break;
                }
                wait_until(due);
                Some(due)
            }
            None => None,
        };
        if Instant::now() >= s.deadline {
            break;
        }
        let permit =
            match tokio::time::timeout(ROOM_WAIT, Arc::clone(&s.room).acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => {
                    outcome.error = Some("no answer came to free a slot in the window".into());
                    break;
                }
            };
        let n = s.batch.min(s.events - sent);
        let lane = &s.lanes[(k % s.lanes.len() as u64) as usize];
        let prebuilt = if n == s.batch {
            &lane.full
        } else {
            lane.partial.as_ref().expect("a partial batch exists")
        };
        let request = &prebuilt.request;
        let since = intended.unwrap_or_else(Instant::now);
        if let Some(intended) = intended {
            outcome.lag.record_duration(intended.elapsed());
        }
        if s.acks == Acks::None {
            match tokio::time::timeout(
                ROOM_WAIT,
                lane.connection.send_encoded_without_answer(request),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    outcome.error = Some(e.to_string());
                    break;
                }
                Err(_) => {
                    outcome.error = Some("writing a request timed out".into());
                    break;
                }
            }
            drop(permit);
            outcome.events += n;
            outcome.requests += 1;
            outcome.payload_bytes += n * s.size;
            outcome.batch_bytes += prebuilt.batch_bytes;
            outcome.finished = Instant::now();
        } else {
            match tokio::time::timeout(
                ROOM_WAIT,
                lane.connection.submit_encoded(request, s.request_timeout),
            )
            .await
            {
                Ok(Ok(answer)) => {
                    let _ = s
                        .pending
                        .send(Pending {
                            since,
                            answer,
                            _room: permit,
                            events: n,
                            batch_bytes: prebuilt.batch_bytes,
                        })
                        .await;
                }
                Ok(Err(e)) => {
                    outcome.error = Some(e.to_string());
                    break;
                }
                Err(_) => {
                    outcome.error = Some("writing a request timed out".into());
                    break;
                }
            }
        }
        sent += n;
        k += 1;
    }
    outcome
}

async fn client(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    partitions: Vec<u32>,
    events: u64,
    index: usize,
) -> Outcome {
    let cli = &shared.cli;
    let value = value_of(cli.size);
    // Seal a batch when its `batch`-th event arrives (a few early if timestamps move on).
    let batch_bytes = builder_with(&value, cli.batch.saturating_sub(1).max(1)).uncompressed_bytes()
        + usize::from(cli.batch > 1);
    let bytes_per_event =
        builder_with(&value, cli.batch).uncompressed_bytes() as f64 / f64::from(cli.batch);
    let config = ProducerConfig {
        client_id: format!("vltava-bench-{index}"),
        acks: cli.acks,
        batch_bytes,
        linger: Duration::from_millis(cli.linger_ms),
        compression: Compression::None,
        idempotent: cli.idempotent,
        max_in_flight: cli.in_flight,
        request_timeout: Duration::from_millis(u64::from(cli.timeout_ms)),
        ..ProducerConfig::default()
    };
    let delivery_wait = config.delivery_timeout + Duration::from_secs(30);
    let setup = Producer::new(cluster, config).await;
    shared.start.wait().await;
    let started = Instant::now();
    let mut outcome = Outcome::new(started);
    let producer = match setup {
        Ok(producer) => producer,
        Err(e) => {
            outcome.error = Some(format!("set-up failed: {e}"));
            return outcome;
        }
    };
    if partitions.is_empty() || events == 0 {
        let _ = tokio::time::timeout(ROOM_WAIT, producer.close()).await;
        return outcome;
    }
    let deadline = started + shared.deadline_after;
    let batch = u64::from(cli.batch);
    // One completer per partition: deliveries of one partition resolve in order.
    let mut lanes = Vec::new();
    let mut completers = Vec::new();
    for _ in &partitions {
        let (sender, mut receiver) = mpsc::channel::<(Instant, Delivery)>(DELIVERIES_QUEUE_MAX);
        lanes.push(sender);
        let size = cli.size as u64;
        completers.push(tokio::spawn(async move {
            let mut outcome = Outcome::new(started);
            while let Some((since, delivery)) = receiver.recv().await {
                let result = crate::within(delivery_wait, delivery.wait()).await;
                let now = Instant::now();
                match result {
                    Ok(Ok(_)) => {
                        outcome
                            .latency
                            .record_duration(now.saturating_duration_since(since));
                        outcome.events += 1;
                        outcome.payload_bytes += size;
                        outcome.finished = now;
                    }
                    Ok(Err(e)) => {
                        outcome.error.get_or_insert(e.to_string());
                    }
                    Err(_) => {
                        outcome
                            .error
                            .get_or_insert("a delivery never resolved".into());
                    }
                }
            }
            outcome
        }));
    }
    // Paced in chunks of about a millisecond's worth of events (at most a batch).
    let chunk = cli.rate.map_or(batch, |rate| {
        let per_producer = rate / cli.producers as f64;
        ((per_producer / 1000.0) as u64).clamp(1, batch)
    });
    let mut schedule = cli.rate.map(|rate| {
        let per_producer = rate / cli.producers as f64;
        pacer(
            started,
            deadline,
            Duration::from_secs_f64(chunk as f64 / per_producer),
            events.div_ceil(chunk),
        )
    });
    let mut sent = 0u64;
    let mut error = None;
    'sending: while sent < events {
        let intended = match &mut schedule {
            Some(schedule) => match schedule.recv().await {
                Some(due) => Some(due),
                None => break,
            },
            None => None,
        };
        if Instant::now() >= deadline {
            break;
        }
        for _ in 0..chunk.min(events - sent) {
            let lane = ((sent / batch) % partitions.len() as u64) as usize;
            let record = ProducerRecord {
                topic: cli.topic.clone(),
                partition: Some(partitions[lane]),
                key: None,
                value: Some(value.clone()),
                headers: Vec::new(),
                timestamp: None,
            };
            let since = intended.unwrap_or_else(Instant::now);
            if let Some(intended) = intended {
                outcome.lag.record_duration(intended.elapsed());
            }
            match crate::within(ROOM_WAIT, producer.send(record)).await {
                Ok(Ok(delivery)) => {
                    let _ = lanes[lane].send((since, delivery)).await;
                }
                Ok(Err(e)) => {
                    error = Some(e.to_string());
                    break 'sending;
                }
                Err(_) => {
                    error = Some("the producer took no event for too long".to_owned());
                    break 'sending;
                }
            }
            sent += 1;
        }
    }
    if tokio::time::timeout(ROOM_WAIT, producer.close())
        .await
        .is_err()
    {
        error.get_or_insert("closing the producer timed out".to_owned());
    }
    drop(lanes);
    for completer in completers {
        match completer.await {
            Ok(done) => {
                outcome.latency.merge(&done.latency);
                outcome.events += done.events;
                outcome.payload_bytes += done.payload_bytes;
                outcome.finished = outcome.finished.max(done.finished);
                if let Some(e) = done.error {
                    outcome.error.get_or_insert(e);
                }
            }
            Err(e) => {
                outcome
                    .error
                    .get_or_insert(format!("a completer failed: {e}"));
            }
        }
    }
    outcome.requests = outcome.events.div_ceil(batch);
    outcome.batch_bytes = (outcome.events as f64 * bytes_per_event) as u64;
    if let Some(e) = error {
        outcome.error.get_or_insert(e);
    }
    outcome
}
