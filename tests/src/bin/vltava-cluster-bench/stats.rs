//! Order statistics of a few hundred samples, kept exactly (no histogram: the runs are small).

use std::fmt;
use std::time::Duration;

/// Sorted samples.
#[derive(Debug)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new(mut samples: Vec<Duration>) -> Samples {
        samples.sort();
        Samples(samples)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The nearest-rank percentile: the smallest sample with at least `q` of the samples at
    /// or below it. With 20 samples p99 is the largest; with 200 it is the 198th.
    pub fn percentile(&self, q: f64) -> Duration {
        assert!(!self.0.is_empty(), "percentiles of no samples");
        let rank = (q / 100.0 * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn min(&self) -> Duration {
        self.percentile(0.0)
    }

    pub fn max(&self) -> Duration {
        self.percentile(100.0)
    }

    pub fn mean(&self) -> Duration {
        self.0.iter().sum::<Duration>() / self.0.len() as u32
    }

    /// How many samples are at or below `bound`.
    pub fn count_at_most(&self, bound: Duration) -> usize {
        self.0.partition_point(|d| *d <= bound)
    }
}

impl fmt::Display for Samples {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} / p99 {} / min {} / max {} / mean {} (n = {})",
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0)),
            ms(self.min()),
            ms(self.max()),
            ms(self.mean()),
            self.len()
        )
    }
}

/// A duration in milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
