//! A fixed-size, log-bucketed latency histogram (HDR-like), in nanoseconds.
//!
//! Values below 256 are counted exactly. Above, every power of two is split into 128 equal
//! buckets, so a bucket is at most 1/128 (0.78 %) of its values wide. The whole `u64` range
//! (far beyond 60 s) fits in 58 × 128 buckets, 58 KiB; recording is a few instructions and
//! never allocates.

use serde_json::{Value, json};

/// Bits of the mantissa kept below the leading one.
const SUB_BITS: u32 = 7;
/// Buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Buckets covering every `u64`.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB as usize;

/// Counts of values by bucket, plus the exact minimum, maximum and sum.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }
}

/// The bucket of `value`.
fn index(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let mantissa = value >> (msb - SUB_BITS);
    ((msb - SUB_BITS) as u64 * SUB + mantissa) as usize
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

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += u128::from(value);
    }

    /// Counts one duration, in nanoseconds.
    pub fn record_duration(&mut self, duration: std::time::Duration) {
        self.record(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1): the highest value of the bucket holding the
    /// `ceil(q × count)`-th smallest value, never above the exact maximum; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return highest_in(i).min(self.max).max(self.min);
            }
        }
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    pub fn max(&self) -> u64 {
        if self.total == 0 { 0 } else { self.max }
    }

    pub fn min(&self) -> u64 {
        if self.total == 0 { 0 } else { self.min }
    }

    /// The summary in microseconds, as JSON.
    pub fn summary_us(&self) -> Value {
        let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
        json!({
            "count": self.total,
            "min": us(self.min()),
            "mean": (self.mean() / 100.0).round() / 10.0,
            "p50": us(self.quantile(0.50)),
            "p90": us(self.quantile(0.90)),
            "p99": us(self.quantile(0.99)),
            "p999": us(self.quantile(0.999)),
            "max": us(self.max()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        assert_eq!(index(0), 0);
        assert_eq!(index(255), 255);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        let mut previous = 0;
        for i in 1..BUCKETS {
            let high = highest_in(i);
            assert!(high > previous, "bucket {i}");
            assert_eq!(index(high), i);
            assert_eq!(index(previous + 1), i);
            if previous >= 2 * SUB {
                assert!((high - previous) as f64 / (previous + 1) as f64 <= 1.0 / SUB as f64);
            }
            previous = high;
        }
        assert_eq!(previous, u64::MAX);
    }

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [
            (0.5, 50_000_000.0),
            (0.99, 99_000_000.0),
            (0.999, 99_900_000.0),
        ] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.01, "q {q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000_000);
        assert_eq!(h.quantile(1.0), 100_000_000);
        let mut other = Histogram::default();
        other.record(7);
        h.merge(&other);
        assert_eq!(h.min(), 7);
        assert_eq!(h.count(), 100_001);
    }
}
