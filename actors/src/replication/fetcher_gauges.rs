//! What a ReplicaFetcher publishes for the admin endpoint: its partitions (a count and a
//! bounded list of names), bytes and requests fetched, a bytes-per-second rate, errors and the
//! last one, and the registration that puts it in the node's actor directory as
//! `<node>/replica-fetcher/<leader>` for as long as its task runs.
//!
//! The fetcher task is the only writer; the admin endpoint reads. Counters are atomics; the
//! partition names, the rate window and the last error sit behind small locks that the
//! fetcher takes once per fetch round trip (a few times a second when idle), never per batch.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vltava_messages::{NodeId, PartitionId};

use crate::directory::{ActorDirectory, ActorKind, ActorStats, PublishedState};

#[cfg(test)]
mod tests;

/// The most partition names a fetcher lists (its count says how many it fetches): enough to
/// see which partitions a small cluster's fetcher serves, while a fetcher of thousands keeps
/// its admin answer and its per-fetch comparison short.
pub const FETCHER_PARTITIONS_LISTED_MAX: usize = 16;

/// The longest last-error text kept, in bytes: a peer error's message with its address fits,
/// and a long one cannot grow the admin answer.
pub const FETCHER_ERROR_BYTES_MAX: usize = 256;

/// The window the bytes-per-second rate is measured over: long enough to smooth the long
/// polls (a leader holds an idle fetch up to 250 ms), short enough to follow a burst.
pub const FETCH_RATE_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct RateWindow {
    started: Instant,
    bytes_at_start: u64,
    /// The last complete window's rate.
    bytes_per_second: u64,
}

/// A fetcher's published state.
#[derive(Debug)]
pub struct ReplicaFetcherGauges {
    /// The leader node it fetches from.
    pub leader: NodeId,
    partition_count: AtomicU64,
    /// `topic-partition` names, at most `FETCHER_PARTITIONS_LISTED_MAX`, in key order.
    partitions: Mutex<Vec<String>>,
    /// Record batch bytes received in answers.
    bytes_fetched: AtomicU64,
    /// Requests answered (refused partitions included).
    fetch_requests: AtomicU64,
    /// Requests that failed or were answered with the wrong kind.
    fetch_errors: AtomicU64,
    rate: Mutex<RateWindow>,
    /// The last error, at most `FETCHER_ERROR_BYTES_MAX` bytes, and when (Unix ms).
    last_error: Mutex<Option<(String, u64)>>,
}

impl ReplicaFetcherGauges {
    #[must_use]
    pub fn new(leader: NodeId, now: Instant) -> ReplicaFetcherGauges {
        ReplicaFetcherGauges {
            leader,
            partition_count: AtomicU64::new(0),
            partitions: Mutex::new(Vec::new()),
            bytes_fetched: AtomicU64::new(0),
            fetch_requests: AtomicU64::new(0),
            fetch_errors: AtomicU64::new(0),
            rate: Mutex::new(RateWindow {
                started: now,
                bytes_at_start: 0,
                bytes_per_second: 0,
            }),
            last_error: Mutex::new(None),
        }
    }

    /// Stores the partitions fetched: their count, and the first names, replaced only when
    /// they differ from those stored (so a steady fetcher allocates nothing here).
    pub fn set_partitions<'a>(
        &self,
        count: usize,
        keys: impl Iterator<Item = (&'a str, PartitionId)> + Clone,
    ) {
        self.partition_count.store(count as u64, Ordering::Relaxed);
        let keys = keys.take(FETCHER_PARTITIONS_LISTED_MAX);
        let mut listed = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let same = listed.len() == keys.clone().count()
            && listed
                .iter()
                .zip(keys.clone())
                .all(|(name, (topic, partition))| is_name_of(name, topic, partition));
        if !same {
            listed.clear();
            listed.extend(keys.map(|(topic, partition)| format!("{topic}-{}", partition.0)));
        }
    }

    /// Counts one answered request that brought `bytes` of batches.
    pub fn fetched(&self, bytes: u64, now: Instant) {
        self.fetch_requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
        self.roll_rate(now);
    }

    /// Counts a failed request and keeps its error (cut to `FETCHER_ERROR_BYTES_MAX` bytes).
    pub fn failed(&self, error: &dyn Display, now: Instant) {
        self.fetch_errors.fetch_add(1, Ordering::Relaxed);
        let mut text = error.to_string();
        if text.len() > FETCHER_ERROR_BYTES_MAX {
            let mut end = FETCHER_ERROR_BYTES_MAX;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((text, unix_ms()));
        self.roll_rate(now);
    }

    /// Closes the rate window once it is `FETCH_RATE_WINDOW` old.
    fn roll_rate(&self, now: Instant) {
        let mut window = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(window.started);
        if elapsed < FETCH_RATE_WINDOW {
            return;
        }
        let bytes = self.bytes_fetched.load(Ordering::Relaxed);
        let elapsed_ms = u64::try_from(elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        window.bytes_per_second = bytes
            .saturating_sub(window.bytes_at_start)
            .saturating_mul(1000)
            / elapsed_ms;
        window.bytes_at_start = bytes;
        window.started = now;
    }

    #[must_use]
    pub fn partition_count(&self) -> u64 {
        self.partition_count.load(Ordering::Relaxed)
    }

    /// The first `FETCHER_PARTITIONS_LISTED_MAX` partitions' names.
    #[must_use]
    pub fn partitions(&self) -> Vec<String> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    #[must_use]
    pub fn bytes_fetched(&self) -> u64 {
        self.bytes_fetched.load(Ordering::Relaxed)
    }

    #[must_use]
    pub fn fetch_requests(&self) -> u64 {
        self.fetch_requests.load(Ordering::Relaxed)
    }

    #[must_use]
    pub fn fetch_errors(&self) -> u64 {
        self.fetch_errors.load(Ordering::Relaxed)
    }

    /// Bytes fetched per second over the last complete `FETCH_RATE_WINDOW`.
    #[must_use]
    pub fn bytes_per_second(&self) -> u64 {
        self.rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes_per_second
    }

    /// The last error and when it happened (Unix ms).
    #[must_use]
    pub fn last_error(&self) -> Option<(String, u64)> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Whether `name` is `topic-partition`, compared without allocating.
fn is_name_of(name: &str, topic: &str, partition: PartitionId) -> bool {
    name.strip_prefix(topic)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|index| index.parse::<u32>().ok())
        == Some(partition.0)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A fetcher's entry in the actor directory, removed when this is dropped (when the fetcher's
/// task ends, however it ends) unless a successor fetcher towards the same leader registered
/// under the id meanwhile.
#[derive(Debug)]
pub(crate) struct FetcherRegistration {
    directory: ActorDirectory,
    id: String,
    pub(crate) gauges: Arc<ReplicaFetcherGauges>,
    pub(crate) stats: Arc<ActorStats>,
}

impl FetcherRegistration {
    /// Registers the fetcher of node `node` towards `leader` under `parent`.
    pub(crate) fn register(
        directory: &ActorDirectory,
        parent: &str,
        node: NodeId,
        leader: NodeId,
    ) -> FetcherRegistration {
        let id = format!("n{}/replica-fetcher/{}", node.0, leader.0);
        let gauges = Arc::new(ReplicaFetcherGauges::new(leader, Instant::now()));
        let stats = directory.register_with_state(
            &id,
            ActorKind::ReplicaFetcher,
            Some(parent),
            Some(PublishedState::ReplicaFetcher(Arc::clone(&gauges) as Arc<_>)),
        );
        FetcherRegistration {
            directory: directory.clone(),
            id,
            gauges,
            stats,
        }
    }
}

impl FetcherRegistration {
    /// Counts an answered request that brought `bytes` of batches.
    pub(crate) fn answered(&self, bytes: usize) {
        self.gauges.fetched(bytes as u64, Instant::now());
        self.stats.handled.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed request and keeps its error.
    pub(crate) fn failed(&self, error: &dyn Display) {
        self.gauges.failed(error, Instant::now());
    }
}

impl Drop for FetcherRegistration {
    fn drop(&mut self) {
        let own = Arc::as_ptr(&self.gauges).cast::<()>();
        self.directory.unregister_if(&self.id, |entry| {
            matches!(&entry.state, Some(PublishedState::ReplicaFetcher(g)) if Arc::as_ptr(g).cast::<()>() == own)
        });
    }
}
