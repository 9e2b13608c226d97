//! Percentiles of a set of measurements.

use serde::Serialize;

/// Order statistics of one series, in the series' unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of values.
    pub count: usize,
    /// Smallest value.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// The summary of `values` (non-finite values are left out); `None` when nothing is left.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            count: sorted.len(),
            min: sorted[0],
            p50: quantile(&sorted, 0.50),
            p95: quantile(&sorted, 0.95),
            p99: quantile(&sorted, 0.99),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// Nearest-rank quantile of sorted, non-empty values: the smallest value with at least `q` of
/// the values at or below it (so p95 of 20 frames is the 19th, never an interpolation).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = Summary::of(&values).unwrap();
        assert_eq!((s.count, s.min, s.max), (100, 1.0, 100.0));
        assert_eq!((s.p50, s.p95, s.p99), (50.0, 95.0, 99.0));
        let one = Summary::of(&[7.0, f64::NAN]).unwrap();
        assert_eq!((one.count, one.p50, one.p99), (1, 7.0, 7.0));
        assert!(Summary::of(&[f64::INFINITY]).is_none());
    }
}
