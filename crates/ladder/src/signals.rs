//! Small helpers over congestion signals: a smoothed value, the minimum over a sliding time
//! window, and loss reports over a sliding time window.
//!
//! Times are [`Duration`]s from any monotonic origin, as in the decision modules.

use std::collections::VecDeque;
use std::time::Duration;

/// Exponentially weighted moving average: each sample moves the value by `weight` of the
/// difference. With one sample per tick, `weight` 0.3 remembers about three ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    weight: f64,
    value: Option<f64>,
}

impl Ewma {
    /// An empty average; `weight` (clamped to 0–1) is the share of each new sample.
    pub fn new(weight: f64) -> Self {
        Ewma {
            weight: weight.clamp(0.0, 1.0),
            value: None,
        }
    }

    /// Adds a sample; the first one is taken as it is.
    pub fn add(&mut self, sample: f64) -> f64 {
        let value = match self.value {
            Some(v) => v + (sample - v) * self.weight,
            None => sample,
        };
        self.value = Some(value);
        value
    }

    /// The average, `None` before the first sample.
    pub fn value(&self) -> Option<f64> {
        self.value
    }

    /// Forgets every sample.
    pub fn reset(&mut self) {
        self.value = None;
    }
}

/// The lowest of the samples of the last `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct MinWindow<T> {
    window: Duration,
    samples: VecDeque<(Duration, T)>,
}

impl<T: Copy + PartialOrd> MinWindow<T> {
    /// An empty window of the given length.
    pub fn new(window: Duration) -> Self {
        MinWindow {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample taken at `now` and drops those older than the window.
    pub fn add(&mut self, now: Duration, sample: T) {
        // A sample at least as large as a newer one can never be the minimum again.
        while self.samples.back().is_some_and(|&(_, s)| s >= sample) {
            self.samples.pop_back();
        }
        self.samples.push_back((now, sample));
        self.expire(now);
    }

    /// Drops the samples older than the window at `now`.
    pub fn expire(&mut self, now: Duration) {
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| now.saturating_sub(t) > self.window)
        {
            self.samples.pop_front();
        }
    }

    /// The lowest sample still in the window.
    pub fn min(&self) -> Option<T> {
        self.samples.front().map(|&(_, s)| s)
    }

    /// The newest sample, `None` when empty (it is always kept: nothing newer is smaller).
    pub fn latest(&self) -> Option<T> {
        self.samples.back().map(|&(_, s)| s)
    }

    /// Time of the oldest sample still counted, `None` when empty.
    pub fn oldest(&self) -> Option<Duration> {
        self.samples.front().map(|&(t, _)| t)
    }

    /// Forgets every sample.
    pub fn clear(&mut self) {
        self.samples.clear();
    }
}

/// Loss fractions (0–1) reported over the last `window`: one report is a moment, several in
/// a row are the link.
#[derive(Debug, Clone, PartialEq)]
pub struct LossWindow {
    window: Duration,
    reports: VecDeque<(Duration, f64)>,
}

impl LossWindow {
    /// An empty window of the given length.
    pub fn new(window: Duration) -> Self {
        LossWindow {
            window,
            reports: VecDeque::new(),
        }
    }

    /// Adds a report received at `now` (a fraction outside 0–1 is clamped) and drops those
    /// older than the window.
    pub fn add(&mut self, now: Duration, loss: f64) {
        let loss = if loss.is_finite() {
            loss.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.reports.push_back((now, loss));
        self.expire(now);
    }

    /// Drops the reports older than the window at `now`.
    pub fn expire(&mut self, now: Duration) {
        while self
            .reports
            .front()
            .is_some_and(|&(t, _)| now.saturating_sub(t) > self.window)
        {
            self.reports.pop_front();
        }
    }

    /// Number of reports in the window.
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// Whether the window holds no report.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// Mean of the reports in the window, `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (!self.reports.is_empty())
            .then(|| self.reports.iter().map(|&(_, l)| l).sum::<f64>() / self.reports.len() as f64)
    }

    /// Whether the loss stayed at or above `threshold`: at least `min_reports` reports in
    /// the window and their mean at or above it.
    pub fn sustained(&self, threshold: f64, min_reports: usize) -> bool {
        self.reports.len() >= min_reports.max(1) && self.mean().is_some_and(|m| m >= threshold)
    }

    /// Forgets every report (they described what was sent before a change).
    pub fn clear(&mut self) {
        self.reports.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn ewma_starts_at_the_first_sample_and_follows() {
        let mut e = Ewma::new(0.5);
        assert_eq!(e.value(), None);
        assert_eq!(e.add(100.0), 100.0);
        assert_eq!(e.add(200.0), 150.0);
        assert_eq!(e.add(200.0), 175.0);
        e.reset();
        assert_eq!(e.value(), None);
    }

    #[test]
    fn min_window_forgets_old_minima() {
        let mut w = MinWindow::new(s(1.0));
        w.add(s(0.0), 5);
        w.add(s(0.5), 9);
        w.add(s(0.7), 7);
        assert_eq!(w.min(), Some(5));
        w.add(s(1.2), 8);
        // 5 is older than a second; 7 is the lowest left.
        assert_eq!(w.min(), Some(7));
        assert_eq!(w.latest(), Some(8));
        w.expire(s(2.5));
        assert_eq!(w.min(), None);
    }

    #[test]
    fn loss_window_needs_several_reports() {
        let mut w = LossWindow::new(s(2.0));
        w.add(s(0.0), 0.15);
        assert!(!w.sustained(0.1, 2), "one report is not sustained");
        w.add(s(1.0), 0.15);
        assert!(w.sustained(0.1, 2));
        w.add(s(3.5), 0.0);
        // Both 15 % reports are older than the window now.
        assert_eq!(w.len(), 1);
        assert!(!w.sustained(0.1, 1));
        w.add(s(3.6), f64::NAN);
        assert_eq!(w.mean(), Some(0.0));
    }
}
