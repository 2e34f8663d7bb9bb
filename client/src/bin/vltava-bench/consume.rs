//! Consumers: `raw` sends Fetch requests itself and counts records from batch headers (each
//! batch's CRC is checked); `client` reads through `Consumer::poll`, which decodes every
//! record.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vltava_client::connection::{Answer, Connection};
use vltava_client::{ClientError, Cluster, Consumer, ConsumerConfig, SeekTo};
use vltava_messages::batch::{batch_headers, split_batches};
use vltava_messages::protocol::{
    FetchPartition, FetchRequest, FetchResponse, FetchTopic, ListOffsetsPartition,
    ListOffsetsRequest, ListOffsetsTopic, OffsetSpec,
};
use vltava_messages::{LeaderEpoch, Offset, PartitionId};

use crate::{Mode, Outcome, Shared};

/// How long the node may hold a fetch when nothing new is there.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// How long a fetch or poll may take beyond `FETCH_WAIT` before the run fails.
const FETCH_SLACK: Duration = Duration::from_secs(30);

pub async fn run(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    partitions: Vec<u32>,
    from_latest: bool,
) -> Outcome {
    match shared.cli.mode {
        Mode::Raw => raw(shared, cluster, partitions, from_latest).await,
        Mode::Client => client(shared, cluster, partitions, from_latest).await,
    }
}

/// Whether this consumer should stop: everyone together read enough, or time is up.
fn enough(shared: &Shared, deadline: Instant) -> bool {
    shared.consumed.load(Ordering::SeqCst) >= shared.consume_target.load(Ordering::SeqCst)
        || Instant::now() >= deadline
}

/// One partition being read.
#[derive(Debug)]
struct Position {
    partition: u32,
    epoch: LeaderEpoch,
    next: u64,
    /// The high watermark when the run began (consume mode): once read up to here and a
    /// fetch brings nothing more, the partition is done.
    end: Option<u64>,
    /// The last fetch brought nothing new.
    idle: bool,
}

impl Position {
    fn done(&self) -> bool {
        self.idle && self.end.is_some_and(|end| self.next >= end)
    }
}

async fn list_offset(
    connection: &Connection,
    topic: &str,
    partition: u32,
    epoch: LeaderEpoch,
    spec: OffsetSpec,
) -> Result<u64, ClientError> {
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
    let answer = connection.send(&request, FETCH_SLACK).await?;
    let p = answer
        .topics
        .into_iter()
        .next()
        .and_then(|t| t.partitions.into_iter().next())
        .ok_or_else(|| ClientError::Protocol("empty ListOffsets answer".into()))?;
    if let Some(error) = p.error {
        return Err(ClientError::Server(error));
    }
    Ok(p.offset.map_or(0, |o| o.0))
}

async fn raw(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    partitions: Vec<u32>,
    from_latest: bool,
) -> Outcome {
    let cli = &shared.cli;
    // Partitions grouped by leader, with a fetch connection to each leader.
    let setup = async {
        let mut groups: BTreeMap<String, (Connection, Vec<Position>)> = BTreeMap::new();
        for &p in &partitions {
            let (leader, epoch) = cluster.leader(&cli.topic, PartitionId(p)).await?;
            let latest = list_offset(&leader, &cli.topic, p, epoch, OffsetSpec::Latest).await?;
            let (next, end) = if from_latest {
                (latest, None)
            } else {
                let earliest =
                    list_offset(&leader, &cli.topic, p, epoch, OffsetSpec::Earliest).await?;
                (earliest, Some(latest))
            };
            let fetcher = cluster.fetch_connection_to(leader.addr()).await?;
            groups
                .entry(leader.addr().to_owned())
                .or_insert_with(|| (fetcher, Vec::new()))
                .1
                .push(Position {
                    partition: p,
                    epoch,
                    next,
                    end,
                    idle: false,
                });
        }
        Ok::<_, ClientError>(groups)
    }
    .await;
    shared.start.wait().await;
    let started = Instant::now();
    let mut outcome = Outcome::new(started);
    let mut groups = match setup {
        Ok(groups) => groups,
        Err(e) => {
            outcome.error = Some(format!("set-up failed: {e}"));
            return outcome;
        }
    };
    let deadline = started + shared.deadline_after;
    let size = cli.size as u64;
    // One fetch stays in flight per connection: as soon as an answer's batch headers give the
    // next offsets the next fetch goes out, and only then are the answer's CRCs checked, as a
    // consumer that fetches ahead while it processes does.
    let mut in_flight: BTreeMap<String, (Instant, Answer<FetchResponse>)> = BTreeMap::new();
    'reading: while !enough(&shared, deadline) {
        let mut progress = false;
        for (leader, (connection, positions)) in &mut groups {
            let (sent, answer) = match in_flight.remove(leader) {
                Some(pending) => pending,
                None => match submit_fetch(cli, connection, positions).await {
                    Ok(Some(pending)) => pending,
                    Ok(None) => continue,
                    Err(e) => {
                        outcome.error = Some(format!("fetch failed: {e}"));
                        break 'reading;
                    }
                },
            };
            progress = true;
            let answer = match answer.wait().await {
                Ok(answer) => answer,
                Err(e) => {
                    outcome.error = Some(format!("fetch failed: {e}"));
                    break 'reading;
                }
            };
            let now = Instant::now();
            let mut read = 0u64;
            for p in &answer.topics[..] {
                for p in &p.partitions {
                    if let Some(e) = &p.error {
                        outcome.error = Some(format!(
                            "fetch of partition {} failed: {}: {}",
                            p.partition.0, e.name, e.message
                        ));
                        break 'reading;
                    }
                    let Some(position) =
                        positions.iter_mut().find(|x| x.partition == p.partition.0)
                    else {
                        continue;
                    };
                    let before = position.next;
                    for header in batch_headers(&p.records) {
                        let next = header.next_offset().0;
                        if next <= position.next {
                            continue;
                        }
                        let from = header.base_offset.0.max(position.next);
                        read += if from == header.base_offset.0 {
                            u64::from(header.record_count)
                        } else {
                            next - from
                        };
                        outcome.batch_bytes += header.total_bytes();
                        position.next = next;
                    }
                    position.idle = position.next == before;
                }
            }
            outcome.events += read;
            outcome.payload_bytes += read * size;
            if read > 0 {
                outcome.latency.record_duration(now - sent);
                outcome.requests += 1;
                outcome.finished = now;
            } else {
                outcome.empty_requests += 1;
            }
            shared.consumed.fetch_add(read, Ordering::SeqCst);
            if !enough(&shared, deadline) {
                match submit_fetch(cli, connection, positions).await {
                    Ok(Some(pending)) => {
                        in_flight.insert(leader.clone(), pending);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        outcome.error = Some(format!("fetch failed: {e}"));
                        break 'reading;
                    }
                }
            }
            for p in answer.topics.iter().flat_map(|t| &t.partitions) {
                if let Some(Err(e)) = split_batches(&p.records).find(Result::is_err) {
                    outcome.error = Some(format!("corrupt batch: {e}"));
                    break 'reading;
                }
            }
        }
        if !progress {
            // Every partition is read to where it ended when the run began, and no more came.
            break;
        }
    }
    outcome
}

/// Sends a fetch for every partition of `positions` not yet done; `None` if all are.
async fn submit_fetch(
    cli: &crate::Cli,
    connection: &Connection,
    positions: &[Position],
) -> Result<Option<(Instant, Answer<FetchResponse>)>, ClientError> {
    let wanted: Vec<FetchPartition> = positions
        .iter()
        .filter(|p| !p.done())
        .map(|p| FetchPartition {
            partition: PartitionId(p.partition),
            fetch_offset: Offset(p.next),
            partition_max_bytes: cli.fetch_bytes,
            current_leader_epoch: Some(p.epoch),
        })
        .collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    let request = FetchRequest {
        max_wait_ms: FETCH_WAIT.as_millis() as u32,
        min_bytes: 1,
        max_bytes: cli.fetch_bytes,
        topics: vec![FetchTopic {
            name: cli.topic.clone(),
            partitions: wanted,
        }],
    };
    let sent = Instant::now();
    Ok(Some((sent, connection.submit(&request, FETCH_WAIT).await?)))
}

async fn client(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    partitions: Vec<u32>,
    from_latest: bool,
) -> Outcome {
    let cli = &shared.cli;
    let mut consumer = Consumer::new(
        cluster,
        ConsumerConfig {
            max_wait: FETCH_WAIT,
            min_bytes: 1,
            max_bytes: cli.fetch_bytes,
            partition_max_bytes: cli.fetch_bytes,
            reset_to_earliest: true,
        },
    );
    let setup = async {
        if partitions.is_empty() {
            return Ok(None);
        }
        let start = if from_latest {
            SeekTo::Latest
        } else {
            SeekTo::Earliest
        };
        consumer
            .assign(&cli.topic, Some(partitions.clone()), start)
            .await?;
        if from_latest {
            return Ok(None);
        }
        let mut ends = BTreeMap::new();
        for &p in &partitions {
            let end = consumer
                .list_offset(&cli.topic, p, OffsetSpec::Latest)
                .await?
                .unwrap_or(0);
            ends.insert((cli.topic.clone(), p), end);
        }
        Ok::<_, ClientError>(Some(ends))
    }
    .await;
    shared.start.wait().await;
    let started = Instant::now();
    let mut outcome = Outcome::new(started);
    let ends = match setup {
        Ok(ends) => ends,
        Err(e) => {
            outcome.error = Some(format!("set-up failed: {e}"));
            return outcome;
        }
    };
    if partitions.is_empty() {
        return outcome;
    }
    let deadline = started + shared.deadline_after;
    while !enough(&shared, deadline) {
        let sent = Instant::now();
        let records = match crate::within(FETCH_WAIT + FETCH_SLACK, consumer.poll()).await {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                outcome.error = Some(format!("poll failed: {e}"));
                break;
            }
            Err(_) => {
                outcome.error = Some("poll timed out".to_owned());
                break;
            }
        };
        let now = Instant::now();
        let read = records.len() as u64;
        outcome.events += read;
        outcome.payload_bytes += records
            .iter()
            .map(|r| r.value.as_ref().map_or(0, Vec::len) as u64)
            .sum::<u64>();
        if read > 0 {
            outcome.latency.record_duration(now - sent);
            outcome.requests += 1;
            outcome.finished = now;
        } else {
            outcome.empty_requests += 1;
        }
        shared.consumed.fetch_add(read, Ordering::SeqCst);
        // Read to where the partitions ended when the run began, and no more came.
        if read == 0
            && let Some(ends) = &ends
            && consumer
                .positions()
                .iter()
                .all(|(key, next)| ends.get(key).is_none_or(|end| next >= end))
        {
            break;
        }
    }
    outcome
}
