//! Latency statistics: exact percentiles over a sliding window, and since start from a
//! log-linear histogram (relative error under 1 %).

use std::collections::VecDeque;

/// Summary of a set of latency samples, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min: i64,
    pub mean: f64,
    pub p50: i64,
    pub p95: i64,
    pub p99: i64,
    pub max: i64,
    /// Mean absolute difference between consecutive latencies.
    pub jitter: f64,
}

/// Samples of the last `window` nanoseconds (by arrival time).
#[derive(Debug, Default)]
pub struct Window {
    samples: VecDeque<(u64, i64)>,
}

impl Window {
    pub fn push(&mut self, at: u64, latency: i64, window: u64) {
        self.samples.push_back((at, latency));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.saturating_sub(*t) > window)
        {
            self.samples.pop_front();
        }
    }

    pub fn summary(&self) -> Summary {
        let mut values: Vec<i64> = self.samples.iter().map(|(_, l)| *l).collect();
        if values.is_empty() {
            return Summary::default();
        }
        let jitter = if values.len() > 1 {
            values
                .windows(2)
                .map(|w| (w[1] - w[0]).unsigned_abs() as f64)
                .sum::<f64>()
                / (values.len() - 1) as f64
        } else {
            0.0
        };
        let sum: f64 = values.iter().map(|v| *v as f64).sum();
        values.sort_unstable();
        let n = values.len();
        let rank = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Summary {
            count: n as u64,
            min: values[0],
            mean: sum / n as f64,
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: values[n - 1],
            jitter,
        }
    }
}

/// Sub-buckets per power of two: 128 gives a relative bucket width under 0.8 %.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

/// All samples since start, with bounded memory.
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
    min: i64,
    max: i64,
    last: Option<i64>,
    jitter: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; ((64 - SUB_BITS as usize) + 1) * SUB as usize],
            count: 0,
            sum: 0.0,
            min: i64::MAX,
            max: i64::MIN,
            last: None,
            jitter: 0.0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros() - SUB_BITS + 1; // >= 1
    let mantissa = (v >> (exp - 1)) - SUB; // 0..SUB
    (exp as u64 * SUB + mantissa) as usize
}

/// Midpoint of a bucket's value range.
fn value_of(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < SUB {
        return bucket;
    }
    let exp = bucket / SUB;
    let mantissa = bucket % SUB;
    let low = (SUB + mantissa) << (exp - 1);
    low + (1u64 << (exp - 1)) / 2
}

impl Histogram {
    pub fn push(&mut self, latency: i64) {
        // Negative latencies (clocks out of sync) count in the lowest bucket; min shows them.
        self.buckets[bucket_of(latency.max(0) as u64)] += 1;
        self.count += 1;
        self.sum += latency as f64;
        self.min = self.min.min(latency);
        self.max = self.max.max(latency);
        if let Some(last) = self.last {
            // RFC 3550 style smoothed jitter.
            let d = (latency - last).unsigned_abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last = Some(latency);
    }

    fn quantile(&self, q: f64) -> i64 {
        let target = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return (value_of(i) as i64).clamp(self.min, self.max);
            }
        }
        self.max
    }

    pub fn summary(&self) -> Summary {
        if self.count == 0 {
            return Summary::default();
        }
        Summary {
            count: self.count,
            min: self.min,
            mean: self.sum / self.count as f64,
            p50: self.quantile(0.50),
            p95: self.quantile(0.95),
            p99: self.quantile(0.99),
            max: self.max,
            jitter: self.jitter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_percentiles_are_exact_and_old_samples_leave() {
        let mut w = Window::default();
        for i in 1..=100i64 {
            w.push(i as u64, i * 1000, 1_000_000);
        }
        let s = w.summary();
        assert_eq!((s.count, s.min, s.max), (100, 1000, 100_000));
        assert_eq!((s.p50, s.p95, s.p99), (50_000, 95_000, 99_000));
        assert_eq!(s.jitter, 1000.0);
        // Only samples within 10 ns of the newest remain.
        let mut w = Window::default();
        for i in 0..100u64 {
            w.push(i, i as i64, 10);
        }
        assert_eq!(w.summary().count, 11);
    }

    #[test]
    fn histogram_quantiles_within_one_percent() {
        let mut h = Histogram::default();
        for i in 1..=10_000i64 {
            h.push(i * 10_000); // 10 us .. 100 ms
        }
        let s = h.summary();
        for (got, want) in [
            (s.p50, 50_000_000.0),
            (s.p95, 95_000_000.0),
            (s.p99, 99_000_000.0),
        ] {
            assert!((got as f64 - want).abs() / want < 0.01, "{got} vs {want}");
        }
        assert_eq!((s.min, s.max), (10_000, 100_000_000));
    }

    #[test]
    fn bucket_mapping_is_monotonic_and_covers_u64() {
        let mut last = 0;
        for v in (0..20_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last);
            last = b;
            let mid = value_of(b);
            if v >= SUB {
                assert!((mid as f64 - v as f64).abs() / (v as f64) < 0.008, "{v}");
            }
        }
    }
}
