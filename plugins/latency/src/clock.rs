//! Mapping between the pipeline clock and UTC, shared by both elements so that a stamp and a
//! measurement taken in the same pipeline use the same mapping.

use gst::glib;
use gst::prelude::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which clock the capture and measuring instants come from.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLatencyClockSource")]
pub enum ClockSource {
    /// The pipeline clock (running time + base time), mapped to UTC through the system's
    /// realtime clock. The instant follows the buffer timestamps, not when the buffer passes.
    #[default]
    #[enum_value(
        name = "Pipeline clock mapped to UTC: instants follow buffer running times",
        nick = "pipeline"
    )]
    Pipeline,
    /// The system realtime clock read when the buffer reaches the element: for sources whose
    /// timestamps do not follow the clock (non-live files, no clock at all).
    #[enum_value(
        name = "System realtime clock when the buffer passes the element",
        nick = "realtime"
    )]
    Realtime,
}

/// How often the pipeline-clock to UTC offset is sampled again, to follow NTP slewing.
const RESAMPLE_INTERVAL: gst::ClockTime = gst::ClockTime::from_seconds(1);

/// Running time of a buffer's PTS (DTS when it has none) in a time segment.
pub fn buffer_running_time(segment: &gst::Segment, buf: &gst::BufferRef) -> Option<gst::ClockTime> {
    let ts = buf.pts().or(buf.dts())?;
    segment
        .downcast_ref::<gst::ClockTime>()?
        .to_running_time(ts)
}

/// Current UTC time in nanoseconds since the Unix epoch.
pub fn utc_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64
}

/// Converts clock times of one clock into UTC, resampling the offset once a second.
#[derive(Debug, Default)]
pub struct UtcMapper {
    /// UTC minus clock time, in nanoseconds.
    offset: i128,
    sampled_at: Option<gst::ClockTime>,
}

impl UtcMapper {
    fn sample(&mut self, clock: &gst::Clock) {
        // Bracket the realtime read by two clock reads and take the midpoint.
        let before = clock.time();
        let utc = utc_now_ns();
        let after = clock.time();
        let mid = before.nseconds() / 2 + after.nseconds() / 2;
        self.offset = i128::from(utc) - i128::from(mid);
        self.sampled_at = Some(after);
    }

    /// UTC (ns since the epoch) of `clock_time` on `clock`.
    pub fn utc_of(&mut self, clock: &gst::Clock, clock_time: gst::ClockTime) -> u64 {
        let stale = self.sampled_at.is_none_or(|at| {
            let now = clock.time();
            now < at || now - at >= RESAMPLE_INTERVAL
        });
        if stale {
            self.sample(clock);
        }
        (i128::from(clock_time.nseconds()) + self.offset).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// UTC of the current instant of `clock`.
    pub fn now_utc(&mut self, clock: &gst::Clock) -> u64 {
        let now = clock.time();
        self.utc_of(clock, now)
    }
}
