//! Times and clip ranges as users write them.

use std::fmt;

/// Nanoseconds per second.
const SECOND: u64 = 1_000_000_000;

/// A clip range in the recording's stream time, in nanoseconds: `start` inclusive, `end`
/// exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClipRange {
    /// First instant of the clip (inclusive), in nanoseconds.
    pub start: u64,
    /// End of the clip (exclusive), in nanoseconds.
    pub end: u64,
}

impl ClipRange {
    /// A range, or an error when it is empty or reversed.
    pub fn new(start: u64, end: u64) -> Result<Self, RangeError> {
        if end <= start {
            return Err(RangeError::Empty {
                range: format!("{}-{}", format_time(start), format_time(end)),
            });
        }
        Ok(Self { start, end })
    }

    /// Length of the range in nanoseconds.
    pub fn duration(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the two ranges share at least one instant.
    pub fn overlaps(&self, other: &ClipRange) -> bool {
        self.start < other.end && other.start < self.end
    }
}

impl fmt::Display for ClipRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", format_time(self.start), format_time(self.end))
    }
}

/// Why a time or range could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The text is not `HH:MM:SS[.mmm]`, `MM:SS[.mmm]` or a number of seconds.
    #[error("invalid time {text:?}: expected HH:MM:SS[.mmm] or seconds")]
    Time {
        /// The offending text.
        text: String,
    },
    /// The text is not `start-end`.
    #[error("invalid range {text:?}: expected START-END, e.g. 00:01:30-00:02:15 or 90-135")]
    Range {
        /// The offending text.
        text: String,
    },
    /// The end is not after the start.
    #[error("empty range {range}: the end must be after the start (the end is exclusive)")]
    Empty {
        /// The range as written back.
        range: String,
    },
}

/// Reads a time: `HH:MM:SS[.fff]`, `MM:SS[.fff]` or plain seconds (`90`, `90.5`). Fractions
/// are kept to the nanosecond; no floating point is involved, so `0.1` is exactly 100 ms.
pub fn parse_time(text: &str) -> Result<u64, RangeError> {
    let err = || RangeError::Time {
        text: text.to_owned(),
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(err());
    }
    let parts: Vec<&str> = t.split(':').collect();
    if parts.len() > 3 {
        return Err(err());
    }
    let (last, whole) = parts.split_last().ok_or_else(err)?;
    let mut seconds: u64 = 0;
    for (i, p) in whole.iter().enumerate() {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let v: u64 = p.parse().map_err(|_| err())?;
        // Minutes (and hours when a fourth field would be days) stay below 60 after the first.
        if i > 0 && v >= 60 {
            return Err(err());
        }
        seconds = seconds
            .checked_mul(60)
            .ok_or_else(err)?
            .checked_add(v)
            .ok_or_else(err)?;
    }
    let (int, frac) = match last.split_once('.') {
        Some((i, f)) => (i, f),
        None => (*last, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(err());
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    if frac.len() > 9 {
        return Err(err());
    }
    let int_v: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| err())?
    };
    if !whole.is_empty() && int_v >= 60 {
        return Err(err());
    }
    let mut frac_ns: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| err())?
    };
    for _ in frac.len()..9 {
        frac_ns *= 10;
    }
    seconds
        .checked_mul(60u64.pow(u32::from(!whole.is_empty())))
        .and_then(|s| s.checked_add(int_v))
        .and_then(|s| s.checked_mul(SECOND))
        .and_then(|ns| ns.checked_add(frac_ns))
        .ok_or_else(err)
}

/// Writes a time as `HH:MM:SS.mmm` (milliseconds, truncated).
pub fn format_time(ns: u64) -> String {
    let ms = ns / 1_000_000;
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    format!("{h:02}:{m:02}:{s:02}.{ms:03}")
}

/// Reads one range `START-END`.
pub fn parse_range(text: &str) -> Result<ClipRange, RangeError> {
    let t = text.trim();
    let (a, b) = t.split_once('-').ok_or_else(|| RangeError::Range {
        text: text.to_owned(),
    })?;
    if b.contains('-') {
        return Err(RangeError::Range {
            text: text.to_owned(),
        });
    }
    ClipRange::new(parse_time(a)?, parse_time(b)?)
}

/// Reads a list of ranges separated by `;`, `,` or new lines. Empty entries and `#` comments
/// (to the end of the line) are ignored, so a ranges file can be annotated.
pub fn parse_range_list(text: &str) -> Result<Vec<ClipRange>, RangeError> {
    let mut ranges = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        for item in line.split([';', ',']) {
            if item.trim().is_empty() {
                continue;
            }
            ranges.push(parse_range(item)?);
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("90").unwrap(), 90 * SECOND);
        assert_eq!(parse_time("90.5").unwrap(), 90 * SECOND + SECOND / 2);
        assert_eq!(parse_time("0.1").unwrap(), 100_000_000);
        assert_eq!(parse_time("00:01:30").unwrap(), 90 * SECOND);
        assert_eq!(parse_time("01:30.250").unwrap(), 90 * SECOND + 250_000_000);
        assert_eq!(parse_time("1:00:00").unwrap(), 3600 * SECOND);
        for bad in [
            "", "a", "1:2:3:4", "00:61:00", "00:00:75", "-1", "1..2", "1e3",
        ] {
            assert!(parse_time(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn ranges() {
        let r =
            parse_range_list("90.0-135.0;200-230\n# comment\n00:05:00-00:05:10 # tail").unwrap();
        assert_eq!(
            r,
            vec![
                ClipRange::new(90 * SECOND, 135 * SECOND).unwrap(),
                ClipRange::new(200 * SECOND, 230 * SECOND).unwrap(),
                ClipRange::new(300 * SECOND, 310 * SECOND).unwrap(),
            ]
        );
        assert!(matches!(parse_range("5-5"), Err(RangeError::Empty { .. })));
        assert!(matches!(parse_range("10-5"), Err(RangeError::Empty { .. })));
        assert!(matches!(parse_range("10"), Err(RangeError::Range { .. })));
        assert_eq!(r[0].to_string(), "00:01:30.000-00:02:15.000");
    }
}
