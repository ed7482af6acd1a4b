//! A histogram with fixed bucket bounds, kept in atomics: an observation is a comparison or
//! a few and two atomic additions, so requests never wait on each other or on a scrape. The
//! request path and the log writer keep theirs; the metrics listener reads them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Durations, in microseconds: 50 µs to 10 s.
pub(crate) static DURATION_BOUNDS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Counts, in powers of two: 1 to 1024.
pub(crate) static COUNT_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Fixed bucket bounds and the counts observed into them.
pub(crate) struct Histogram {
    /// Upper bounds, ascending, in the unit observations are given in.
    bounds: &'static [u64],
    /// One count per bound, plus one for the observations above the last (not cumulative).
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A [`Histogram`] read at one moment, cumulative as the exposition format wants it.
pub(crate) struct Snapshot {
    pub(crate) bounds: &'static [u64],
    /// Observations at or below each bound.
    pub(crate) cumulative: Vec<u64>,
    pub(crate) count: u64,
    pub(crate) sum: u64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [u64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts `value` in the first bucket whose bound is at least `value`.
    pub(crate) fn observe(&self, value: u64) {
        let bucket = self.bounds.iter().position(|&b| value <= b);
        let bucket = bucket.unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Counts a duration, in microseconds (the unit of [`DURATION_BOUNDS_US`]).
    pub(crate) fn observe_micros(&self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// The counts now. Read bucket by bucket while requests go on, so `count` and `sum` may be
    /// an observation or two apart; each is exact on its own and never goes back.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut total = 0;
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            if i < self.bounds.len() {
                cumulative.push(total);
            }
        }
        Snapshot {
            bounds: self.bounds,
            cumulative,
            count: total,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observations land in the first bucket at or above them, the rest above the last
    /// bound, and the snapshot is cumulative.
    #[test]
    fn buckets_are_inclusive_and_cumulative() {
        static BOUNDS: [u64; 3] = [10, 100, 1000];
        let h = Histogram::new(&BOUNDS);
        for v in [0, 10, 11, 100, 5000, 5000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative, [2, 4, 4]);
        assert_eq!((s.count, s.sum), (6, 10_121));
    }
}
