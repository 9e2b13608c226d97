//! Wall-clock instants as the runner prints them, to compare with the test's own clock.

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds since the epoch of an RFC 3339 UTC instant `YYYY-MM-DDTHH:MM:SS.mmmZ` (the
/// runner's `utc` fields). Fails the test on another shape.
pub fn utc_ms(rfc3339: &str) -> i64 {
    let n = |a: usize, b: usize| {
        rfc3339
            .get(a..b)
            .and_then(|digits| digits.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("not a `YYYY-MM-DDTHH:MM:SS.mmmZ` instant: {rfc3339:?}"))
    };
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000 + n(17, 19) * 1000 + n(20, 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_instants_count_from_the_epoch() {
        assert_eq!(utc_ms("1970-01-01T00:00:00.000Z"), 0);
        assert_eq!(utc_ms("2000-03-01T12:34:56.789Z"), 951_914_096_789);
        assert_eq!(utc_ms("2024-02-29T23:59:59.999Z"), 1_709_251_199_999);
    }
}
