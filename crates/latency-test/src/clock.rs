//! The viewer's clock against the server's, NTP-style.
//!
//! Capture stamps are written in the server's realtime clock (UTC); a viewer on another machine
//! reads frames on its own clock. Each exchange notes the local send time `t0`, the server's
//! answer `server` and the local receive time `t3`: the server read its clock somewhere between
//! `t0` and `t3`, so `server - (t0 + t3) / 2` is the offset to within half the round trip,
//! whatever the asymmetry of the path. The sample with the smallest round trip bounds it best.

use serde::Serialize;

/// One request/answer exchange, all times in nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Local clock when the request left.
    pub t0_ns: i128,
    /// The server's clock in its answer.
    pub server_ns: i128,
    /// Local clock when the answer arrived (`t0` plus the measured round trip).
    pub t3_ns: i128,
}

impl Sample {
    fn rtt_ns(&self) -> i128 {
        self.t3_ns - self.t0_ns
    }
}

/// The estimated offset of the server's clock from the local one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClockOffset {
    /// Server clock minus local clock, ms: add it to a local instant to get the server's.
    pub offset_ms: f64,
    /// The true offset lies within `offset_ms ± uncertainty_ms` (half the best round trip).
    pub uncertainty_ms: f64,
    /// Round trip of the sample used, ms.
    pub rtt_ms: f64,
    /// Exchanges made.
    pub samples: usize,
}

/// The offset from the sample with the lowest round trip; `None` without a usable sample (a
/// negative round trip means the local clock stepped back during the exchange).
pub fn estimate(samples: &[Sample]) -> Option<ClockOffset> {
    let best = samples
        .iter()
        .filter(|s| s.rtt_ns() >= 0)
        .min_by_key(|s| s.rtt_ns())?;
    let offset_ns = best.server_ns - (best.t0_ns + best.t3_ns) / 2;
    let rtt_ns = best.rtt_ns();
    Some(ClockOffset {
        offset_ms: offset_ns as f64 / 1e6,
        uncertainty_ms: rtt_ns as f64 / 2e6,
        rtt_ms: rtt_ns as f64 / 1e6,
        samples: samples.len(),
    })
}

/// Why a glass-to-glass figure corrected with `clock` cannot be trusted: its uncertainty is
/// more than `max_fraction` of `reference_ms` (the budget, else the figure itself). `None` when
/// it can be.
pub fn untrustworthy(clock: &ClockOffset, reference_ms: f64, max_fraction: f64) -> Option<String> {
    let allowed = reference_ms * max_fraction;
    (clock.uncertainty_ms > allowed).then(|| {
        format!(
            "the clock offset to the server is known to ±{:.2} ms (half a {:.2} ms round trip), \
             more than {:.0} % of {reference_ms:.2} ms",
            clock.uncertainty_ms,
            clock.rtt_ms,
            max_fraction * 100.0
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i128 = 1_000_000;

    /// An exchange with a server whose clock is `offset` ahead of ours, `up` to reach it and
    /// `down` back, sent at local `t0`.
    fn exchange(t0: i128, offset: i128, up: i128, down: i128) -> Sample {
        Sample {
            t0_ns: t0,
            server_ns: t0 + up + offset,
            t3_ns: t0 + up + down,
        }
    }

    #[test]
    fn the_true_offset_is_within_the_reported_uncertainty_on_asymmetric_paths() {
        let offset = -2_345 * MS + 17;
        // Uplink slower than downlink, varying, the best sample in the middle.
        let delays = [(40, 5), (12, 3), (3, 1), (25, 25), (9, 30), (60, 2)];
        let samples: Vec<Sample> = delays
            .iter()
            .enumerate()
            .map(|(i, &(up, down))| exchange(i as i128 * 1_000 * MS, offset, up * MS, down * MS))
            .collect();
        let clock = estimate(&samples).unwrap();
        assert_eq!(clock.samples, 6);
        assert_eq!(clock.rtt_ms, 4.0, "the lowest round trip is kept");
        assert_eq!(clock.uncertainty_ms, 2.0);
        let error = (clock.offset_ms - offset as f64 / 1e6).abs();
        assert!(error <= clock.uncertainty_ms, "error {error} ms");
        // Asymmetry shows as error: the estimate is not simply the truth.
        assert!(error > 0.5, "error {error} ms");
    }

    #[test]
    fn every_asymmetry_stays_within_the_bound() {
        for up in 0..20 {
            for down in 0..20 {
                let s = exchange(1_700_000_000_000 * MS, 987 * MS, up * MS, down * MS);
                let clock = estimate(&[s]).unwrap();
                assert!((clock.offset_ms - 987.0).abs() <= clock.uncertainty_ms + 1e-9);
            }
        }
    }

    #[test]
    fn a_clock_stepped_back_mid_exchange_is_not_a_sample() {
        let stepped = Sample {
            t0_ns: 10 * MS,
            server_ns: 0,
            t3_ns: 5 * MS,
        };
        assert!(estimate(&[stepped]).is_none());
        assert!(estimate(&[]).is_none());
        let good = exchange(0, 3 * MS, MS, MS);
        assert_eq!(estimate(&[stepped, good]).unwrap().rtt_ms, 2.0);
    }

    #[test]
    fn a_wide_uncertainty_is_not_trusted() {
        let clock = estimate(&[exchange(0, 0, 30 * MS, 30 * MS)]).unwrap();
        assert_eq!(clock.uncertainty_ms, 30.0);
        let why = untrustworthy(&clock, 100.0, 0.1).unwrap();
        assert!(why.contains("±30.00 ms"), "{why}");
        assert!(untrustworthy(&clock, 400.0, 0.1).is_none());
    }
}
