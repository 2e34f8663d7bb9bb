//! Counters and latency histograms that actors and sessions update with relaxed atomics, and
//! the admin endpoint reads (for `/actors` and `/metrics`) without messaging anyone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vltava_messages::protocol::RequestKind;

/// Bits of the mantissa kept below the leading one: 4 buckets per power of two, so a bucket is
/// at most a quarter of its values wide (percentiles within 19 % of the truth).
const SUB_BITS: u32 = 2;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets covering every value up to 2^40 µs (12 days); larger values land in the last one.
const BUCKETS: usize = ((40 - SUB_BITS as usize) + 2) * SUB as usize;

/// A latency histogram in microseconds, recorded with relaxed atomic adds.
#[derive(Debug)]
pub struct LatencyHistogram {
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

/// The bucket of `value`.
fn bucket(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let mantissa = value >> (msb - SUB_BITS);
    (((msb - SUB_BITS) as u64 * SUB + mantissa) as usize).min(BUCKETS - 1)
}

/// The largest value that falls in bucket `i`.
fn highest_in(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let mantissa = SUB + i % SUB;
    (mantissa << shift) + ((1u64 << shift) - 1)
}

/// What a histogram held when it was read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Count, mean and percentiles (each the upper edge of its bucket, capped at the maximum).
    #[must_use]
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return LatencySummary::default();
        }
        let max_us = self.max_us.load(Ordering::Relaxed);
        let percentile = |q: f64| {
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return highest_in(i).min(max_us);
                }
            }
            max_us
        };
        LatencySummary {
            count,
            mean_us: self.sum_us.load(Ordering::Relaxed) as f64 / count as f64,
            p50_us: percentile(0.50),
            p99_us: percentile(0.99),
            max_us,
        }
    }

    /// Cumulative counts at each of `bounds_us` (values <= bound), then the total and the sum,
    /// as Prometheus histograms want them.
    #[must_use]
    pub fn cumulative(&self, bounds_us: &[u64]) -> (Vec<u64>, u64, u64) {
        let mut out = vec![0; bounds_us.len()];
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate() {
            let c = c.load(Ordering::Relaxed);
            if c == 0 {
                continue;
            }
            total += c;
            // A bucket counts under a bound only when all of it lies below the bound.
            let top = highest_in(i);
            for (slot, bound) in out.iter_mut().zip(bounds_us) {
                if top <= *bound {
                    *slot += c;
                }
            }
        }
        (out, total, self.sum_us.load(Ordering::Relaxed))
    }
}

/// Processing time per message kind of one actor. Kinds are few per actor and registered on
/// first use; recording takes an uncontended lock and a short scan.
#[derive(Debug, Default)]
pub struct KindTimes {
    kinds: Mutex<Vec<(&'static str, Arc<LatencyHistogram>)>>,
}

impl KindTimes {
    pub fn record(&self, kind: &'static str, elapsed: Duration) {
        let histogram = {
            let mut kinds = self
                .kinds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match kinds.iter().find(|(k, _)| *k == kind) {
                Some((_, h)) => Arc::clone(h),
                None => {
                    let h = Arc::new(LatencyHistogram::default());
                    kinds.push((kind, Arc::clone(&h)));
                    h
                }
            }
        };
        histogram.record(elapsed);
    }

    /// Each kind with its summary, in first-seen order.
    #[must_use]
    pub fn summaries(&self) -> Vec<(&'static str, LatencySummary)> {
        let kinds = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        kinds.into_iter().map(|(k, h)| (k, h.summary())).collect()
    }
}

/// Request counters of the whole node, per request kind (by wire code).
#[derive(Debug)]
pub struct RequestMetrics {
    /// Requests received, per kind code (codes past the table count in the last slot).
    received: Box<[AtomicU64]>,
    /// Time from a request's arrival to its answer written, per kind code.
    latency: Box<[LatencyHistogram]>,
    /// Requests answered with an error (whole-request errors only).
    pub errors: AtomicU64,
}

/// Kind codes counted separately; others (unknown kinds) share the last slot.
const KIND_SLOTS: usize = 32;

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            received: (0..KIND_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            latency: (0..KIND_SLOTS)
                .map(|_| LatencyHistogram::default())
                .collect(),
            errors: AtomicU64::new(0),
        }
    }
}

fn slot(kind: u16) -> usize {
    usize::from(kind).min(KIND_SLOTS - 1)
}

impl RequestMetrics {
    pub fn received(&self, kind: u16) {
        self.received[slot(kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn answered(&self, kind: u16, elapsed: Duration) {
        self.latency[slot(kind)].record(elapsed);
    }

    /// Each known request kind's name, requests received and answer latency.
    pub fn by_kind(&self) -> impl Iterator<Item = (&'static str, u64, &LatencyHistogram)> {
        RequestKind::ALL.iter().map(|kind| {
            let i = slot(kind.code());
            (
                kind.name(),
                self.received[i].load(Ordering::Relaxed),
                &self.latency[i],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_fall_within_a_bucket_of_the_truth() {
        let h = LatencyHistogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.max_us, 1000);
        assert!((s.mean_us - 500.5).abs() < 1e-9);
        assert!((500..=640).contains(&s.p50_us), "p50 {}", s.p50_us);
        assert!((990..=1000).contains(&s.p99_us), "p99 {}", s.p99_us);
    }

    #[test]
    fn cumulative_counts_only_whole_buckets_below_a_bound() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(3));
        h.record(Duration::from_micros(100));
        h.record(Duration::from_secs(2));
        let (counts, total, sum) = h.cumulative(&[10, 1_000, 1_000_000, u64::MAX]);
        assert_eq!(counts, vec![1, 2, 2, 3]);
        assert_eq!(total, 3);
        assert_eq!(sum, 2_000_103);
    }

    #[test]
    fn kinds_are_kept_apart() {
        let t = KindTimes::default();
        t.record("Produce", Duration::from_micros(10));
        t.record("Fetch", Duration::from_micros(20));
        t.record("Produce", Duration::from_micros(30));
        let s = t.summaries();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "Produce");
        assert_eq!(s[0].1.count, 2);
        assert_eq!(s[1].1.count, 1);
    }
}
