//! latencymeter: reads capture stamps and keeps latency statistics.
//!
//! Lock order: `settings`, then `state`, then `log`. Messages are posted and the log written
//! with `state` released.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use hybridlive_stamp::{CaptureStamp, StampError, find_insert_point, find_stamp};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::{LazyLock, Mutex};

use super::MeasureAt;
use crate::clock::{ClockSource, UtcMapper, buffer_running_time, utc_now_ns};
use crate::format::StreamKind;
use crate::format::any_caps_templates;
use crate::latencystamp::imp::{UNIX_CAPS, locate_in_buffer, upstream_meta_time};
use crate::stats::{Histogram, Summary, Window};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "latencymeter",
        gst::DebugColorFlags::empty(),
        Some("Capture-to-here latency meter"),
    )
});

const DEFAULT_INTERVAL: gst::ClockTime = gst::ClockTime::SECOND;
const DEFAULT_WINDOW: gst::ClockTime = gst::ClockTime::from_seconds(10);
const DEFAULT_MEASURE_AT: MeasureAt = MeasureAt::Arrival;
const DEFAULT_CLOCK_SOURCE: ClockSource = ClockSource::Pipeline;
const DEFAULT_ATTACH_META: bool = false;

/// A jump back in the frame counter larger than this is a restarted stamper, not reordering.
const COUNTER_RESTART: u32 = 1024;

#[derive(Debug, Clone)]
struct Settings {
    interval: gst::ClockTime,
    window: gst::ClockTime,
    measure_at: MeasureAt,
    clock_source: ClockSource,
    location: Option<String>,
    attach_meta: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            window: DEFAULT_WINDOW,
            measure_at: DEFAULT_MEASURE_AT,
            clock_source: DEFAULT_CLOCK_SOURCE,
            location: None,
            attach_meta: DEFAULT_ATTACH_META,
        }
    }
}

/// Frames lost, from the span of frame counters seen against the number seen, so that B-frame
/// reordering after a decoder does not count as loss.
#[derive(Debug, Default)]
struct CounterSpan {
    first: Option<u32>,
    max_ahead: u32,
    seen: u64,
    lost_before: u64,
}

impl CounterSpan {
    fn push(&mut self, frame: u32) {
        let Some(first) = self.first else {
            self.first = Some(frame);
            self.seen = 1;
            return;
        };
        // Signed distance from the first counter seen, wrap-around included.
        let ahead = frame.wrapping_sub(first) as i32;
        if ahead < -(COUNTER_RESTART as i32) || ahead as i64 > i64::from(self.max_ahead) + (1 << 20)
        {
            // Counter went back a lot or leapt: a new stamper run. Bank what was lost so far.
            self.lost_before = self.lost();
            self.first = Some(frame);
            self.max_ahead = 0;
            self.seen = 1;
            return;
        }
        if ahead < 0 {
            // Reordered before the first frame seen: the span starts earlier.
            self.first = Some(frame);
            self.max_ahead += ahead.unsigned_abs();
        } else {
            self.max_ahead = self.max_ahead.max(ahead as u32);
        }
        self.seen += 1;
    }

    /// Starts a new span, keeping what was lost so far: after a seek the counters jump by the
    /// frames skipped, which were never sent.
    fn restart(&mut self) {
        self.lost_before = self.lost();
        self.first = None;
        self.max_ahead = 0;
        self.seen = 0;
    }

    fn lost(&self) -> u64 {
        let span = if self.first.is_some() {
            u64::from(self.max_ahead) + 1
        } else {
            0
        };
        self.lost_before + span.saturating_sub(self.seen)
    }
}

#[derive(Debug, Default)]
struct State {
    kind: Option<StreamKind>,
    mapper: UtcMapper,
    window: Window,
    total: Histogram,
    missing: u64,
    malformed: u64,
    counters: CounterSpan,
    last_latency: Option<i64>,
    last_capture: Option<u64>,
    stream_id: Option<String>,
    last_report: Option<u64>,
    /// Latency configured on this branch; `None` until the sinks' latency event passes.
    upstream_latency: Option<gst::ClockTime>,
}

#[derive(Default)]
pub struct LatencyMeter {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    log: Mutex<Option<BufWriter<File>>>,
}

#[glib::object_subclass]
impl ObjectSubclass for LatencyMeter {
    const NAME: &'static str = "GstLatencyMeter";
    type Type = super::LatencyMeter;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for LatencyMeter {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecUInt64::builder("interval")
                    .nick("Report interval")
                    .blurb(
                        "Nanoseconds between latency-report messages (and JSON lines); 0 = \
                         report only at EOS",
                    )
                    .default_value(DEFAULT_INTERVAL.nseconds())
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("window")
                    .nick("Window")
                    .blurb(
                        "Length of the sliding window of the window statistics, in \
                         nanoseconds of measuring time (minimum 1 ms)",
                    )
                    .minimum(gst::ClockTime::MSECOND.nseconds())
                    .default_value(DEFAULT_WINDOW.nseconds())
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("measure-at", DEFAULT_MEASURE_AT)
                    .nick("Measure at")
                    .blurb(
                        "arrival: latency up to the moment the buffer reaches the meter; \
                         render: up to the moment a synchronising sink after it renders the \
                         buffer (base time + running time + the pipeline latency; buffers \
                         that pass before the sinks configure the latency are not measured)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("clock-source", DEFAULT_CLOCK_SOURCE)
                    .nick("Clock source")
                    .blurb(
                        "Clock of the measuring instant: pipeline (pipeline clock mapped to \
                         UTC) or realtime (system UTC clock). Across machines both ends need \
                         clocks synchronised to UTC (NTP/PTP): any offset adds to the figures",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("location")
                    .nick("Location")
                    .blurb(
                        "File to append one JSON object per report to (JSON lines); NULL = \
                         none. The file is opened when the element starts",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("attach-meta")
                    .nick("Attach meta")
                    .blurb(
                        "Attach a GstReferenceTimestampMeta (timestamp/x-unix) with the \
                         capture time read from the SEI, so that elements downstream see the \
                         stamp without parsing the bitstream",
                    )
                    .default_value(DEFAULT_ATTACH_META)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "The latest statistics, in the same form as the latency-report \
                         message (see the element description)",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "interval" => {
                settings.interval = gst::ClockTime::from_nseconds(value.get().expect("checked"))
            }
            "window" => {
                settings.window = gst::ClockTime::from_nseconds(value.get().expect("checked"))
            }
            "measure-at" => settings.measure_at = value.get().expect("checked"),
            "clock-source" => settings.clock_source = value.get().expect("checked"),
            "location" => settings.location = value.get().expect("checked"),
            "attach-meta" => {
                settings.attach_meta = value.get().expect("checked");
                let passthrough = !settings.attach_meta;
                drop(settings);
                self.obj().set_passthrough(passthrough);
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.report().to_value();
        }
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "interval" => settings.interval.nseconds().to_value(),
            "window" => settings.window.nseconds().to_value(),
            "measure-at" => settings.measure_at.to_value(),
            "clock-source" => settings.clock_source.to_value(),
            "location" => settings.location.to_value(),
            "attach-meta" => settings.attach_meta.to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_passthrough(!DEFAULT_ATTACH_META);
    }
}

impl GstObjectImpl for LatencyMeter {}

impl ElementImpl for LatencyMeter {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Latency meter",
                "Filter/Analyzer/Video/Audio",
                "Reads the capture time written by latencystamp (GstReferenceTimestampMeta \
                 timestamp/x-unix, the SEI meta h264parse/h265parse attach, or the SEI in \
                 H.264/H.265 byte-stream or avc/hvc1 access units) after a decoder, \
                 depayloader, demuxer or before a sink, and measures latency = the UTC time \
                 at the measuring point - the capture time. Buffers pass unchanged. \
                 Statistics are kept over a sliding window (exact percentiles) and since \
                 start (percentiles within 1 %). Every `interval` it posts an element \
                 message `latency-report` with fields: stream-id (string, from the SEI, \
                 empty when unknown), count (guint64, stamped buffers since start), missing \
                 (guint64, buffers without a stamp), malformed (guint64, stamp SEI that \
                 could not be parsed, also counted as missing), frames-lost (guint64, gaps \
                 in the SEI frame counter), last-ms (double), last-capture-time (guint64, ns \
                 since the Unix epoch), window-count (guint64) and window-min-ms, \
                 window-mean-ms, window-p50-ms, window-p95-ms, window-p99-ms, \
                 window-max-ms, window-jitter-ms (double, mean absolute difference of \
                 consecutive latencies), and the same since start as total-min-ms ... \
                 total-jitter-ms (RFC 3550 smoothed). The last report is posted at EOS. The \
                 same object is readable as the `stats` property and appended as a JSON \
                 line to `location`. Clock caveat: the stamp and the measurement are UTC; \
                 across machines both need clocks synchronised to UTC (NTP or PTP), any \
                 offset between them adds to every figure. After an H.265 decoder on GStreamer \
                 1.22 (h265parse does not attach the SEI meta) put `latencystamp mode=meta` \
                 between parser and decoder: it turns the SEI stamp into meta that decoders \
                 carry.",
                "hybridlive developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(any_caps_templates);
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for LatencyMeter {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = true;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let location = self.settings.lock().unwrap().location.clone();
        *self.state.lock().unwrap() = State::default();
        let log = match location {
            Some(path) => Some(BufWriter::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|err| {
                        gst::error_msg!(
                            gst::ResourceError::OpenWrite,
                            [
                                "Could not open {} for appending latency reports: {}",
                                path,
                                err
                            ]
                        )
                    })?,
            )),
            None => None,
        };
        *self.log.lock().unwrap() = log;
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(mut log) = self.log.lock().unwrap().take() {
            let _ = log.flush();
        }
        Ok(())
    }

    fn set_caps(&self, incaps: &gst::Caps, _outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        self.state.lock().unwrap().kind = Some(StreamKind::from_caps(Some(incaps)));
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Eos(_) => {
                let report = self.report();
                self.publish(report);
            }
            // A seek (flushing or not) starts a new segment; the frames it skipped are not lost.
            gst::EventView::FlushStop(_) | gst::EventView::Segment(_) => {
                self.state.lock().unwrap().counters.restart();
            }
            _ => {}
        }
        self.parent_sink_event(event)
    }

    fn src_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Latency(latency) = event.view() {
            self.state.lock().unwrap().upstream_latency = Some(latency.latency());
        }
        self.parent_src_event(event)
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        if let Some(from_sei) = self.measure(buf)
            && upstream_meta_time(buf).is_none()
        {
            gst::ReferenceTimestampMeta::add(
                buf,
                &UNIX_CAPS,
                gst::ClockTime::from_nseconds(from_sei),
                buf.duration(),
            );
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn transform_ip_passthrough(
        &self,
        buf: &gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.measure(buf);
        Ok(gst::FlowSuccess::Ok)
    }
}

/// Where a stamp was found.
#[derive(Debug)]
enum Found {
    Meta(u64),
    Sei(CaptureStamp),
    Missing,
    Malformed,
    /// Codec configuration alone (no slice): not a frame, not counted.
    NotAFrame,
}

fn find_in_buffer(buf: &gst::BufferRef, kind: Option<StreamKind>) -> Found {
    if let Some(t) = upstream_meta_time(buf) {
        return Found::Meta(t);
    }
    // The bitstream first: its order is the stamps' order (the first stamp of an access unit
    // counts), while the SEI metas of a parser come in no documented order (1.22 lists the
    // access unit's last SEI first).
    let bitstream = match kind {
        Some(StreamKind::Encoded { codec, framing }) => {
            let result = locate_in_buffer(buf, |au| match find_stamp(codec, framing, au) {
                Ok(None) => None,
                other => Some(other),
            });
            match result {
                Some(Ok(Some(stamp))) => return Found::Sei(stamp),
                Some(Err(_)) => Found::Malformed,
                _ if locate_in_buffer(buf, |au| find_insert_point(codec, framing, au))
                    .is_none() =>
                {
                    Found::NotAFrame
                }
                _ => Found::Missing,
            }
        }
        _ => Found::Missing,
    };
    // h264parse/h265parse (1.22) attach the SEI payload as meta, and decoders carry it on.
    for meta in buf.iter_meta::<gst_video::video_meta::VideoSeiUserDataUnregisteredMeta>() {
        match CaptureStamp::from_uuid_and_data(&meta.uuid(), meta.data()) {
            Ok(stamp) => return Found::Sei(stamp),
            Err(StampError::ForeignUuid) => {}
            Err(_) => return Found::Malformed,
        }
    }
    bitstream
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

impl LatencyMeter {
    /// Measures one buffer; returns the capture time when it came from the SEI.
    fn measure(&self, buf: &gst::BufferRef) -> Option<u64> {
        // Parsers flag ordinary access units as HEADER when they carry parameter sets, so only
        // GAP buffers (no content) are left out.
        if buf.flags().contains(gst::BufferFlags::GAP) {
            return None;
        }
        let settings = self.settings.lock().unwrap().clone();
        let mut state = self.state.lock().unwrap();
        let found = find_in_buffer(buf, state.kind);
        gst::trace!(CAT, imp = self, "{buf:?}: {found:?}");
        let (capture, from_sei) = match found {
            Found::Meta(t) => (t, None),
            Found::Sei(stamp) => {
                state.counters.push(stamp.frame);
                if state.stream_id.as_deref() != Some(stamp.stream_id.as_str()) {
                    state.stream_id = Some(stamp.stream_id);
                }
                (stamp.capture_time_ns, Some(stamp.capture_time_ns))
            }
            Found::Malformed => {
                state.malformed += 1;
                state.missing += 1;
                return None;
            }
            Found::Missing => {
                state.missing += 1;
                return None;
            }
            Found::NotAFrame => return None,
        };

        let Some(now) = self.measuring_instant(buf, &settings, &mut state) else {
            gst::debug!(
                CAT,
                imp = self,
                "no pipeline latency configured yet: not measured"
            );
            return from_sei;
        };
        let latency = (i128::from(now) - i128::from(capture))
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        state.window.push(now, latency, settings.window.nseconds());
        state.total.push(latency);
        state.last_latency = Some(latency);
        state.last_capture = Some(capture);
        gst::trace!(CAT, imp = self, "latency {} ms", ms(latency));

        let interval = settings.interval.nseconds();
        let due = match state.last_report {
            None => {
                state.last_report = Some(now);
                false
            }
            Some(last) => interval > 0 && now.saturating_sub(last) >= interval,
        };
        if due {
            state.last_report = Some(now);
            let report = Self::report_locked(&state);
            drop(state);
            self.publish(report);
        }
        from_sei
    }

    /// UTC of the measuring instant; `None` in render mode until the branch latency is known
    /// (the first buffers of a live pipeline can pass before the sinks configure it).
    fn measuring_instant(
        &self,
        buf: &gst::BufferRef,
        settings: &Settings,
        state: &mut State,
    ) -> Option<u64> {
        let obj = self.obj();
        let clock = match settings.clock_source {
            ClockSource::Pipeline => obj.clock(),
            ClockSource::Realtime => None,
        };
        let Some(clock) = clock else {
            return Some(utc_now_ns());
        };
        if settings.measure_at == MeasureAt::Render {
            let latency = state.upstream_latency?;
            let render = buffer_running_time(&obj.segment(), buf);
            if let (Some(rt), Some(base)) = (render, obj.base_time()) {
                return Some(state.mapper.utc_of(&clock, base + rt + latency));
            }
        }
        Some(state.mapper.now_utc(&clock))
    }

    fn report(&self) -> gst::Structure {
        Self::report_locked(&self.state.lock().unwrap())
    }

    fn report_locked(state: &State) -> gst::Structure {
        let window = state.window.summary();
        let total = state.total.summary();
        let mut builder = gst::Structure::builder("latency-report")
            .field("stream-id", state.stream_id.clone().unwrap_or_default())
            .field("count", total.count)
            .field("missing", state.missing)
            .field("malformed", state.malformed)
            .field("frames-lost", state.counters.lost())
            .field("last-ms", state.last_latency.map_or(0.0, ms))
            .field("last-capture-time", state.last_capture.unwrap_or(0))
            .field("window-count", window.count);
        for (prefix, s) in [("window", &window), ("total", &total)] {
            builder = summary_fields(builder, prefix, s);
        }
        builder.build()
    }

    fn publish(&self, report: gst::Structure) {
        if let Some(log) = self.log.lock().unwrap().as_mut() {
            let mut object = serde_json::Map::new();
            object.insert("element".into(), self.obj().name().as_str().into());
            object.insert("utc-ns".into(), utc_now_ns().into());
            for (name, value) in report.iter() {
                let json = if let Ok(v) = value.get::<f64>() {
                    serde_json::json!(v)
                } else if let Ok(v) = value.get::<u64>() {
                    serde_json::json!(v)
                } else if let Ok(v) = value.get::<String>() {
                    serde_json::json!(v)
                } else {
                    continue;
                };
                object.insert(name.to_string(), json);
            }
            let written = serde_json::to_writer(&mut *log, &object)
                .map_err(std::io::Error::other)
                .and_then(|()| log.write_all(b"\n"))
                .and_then(|()| log.flush());
            if let Err(err) = written {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    ["Could not append a latency report: {}", err]
                );
            }
        }
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Element::builder(report).src(&*obj).build());
    }
}

fn summary_fields(
    builder: gst::structure::Builder,
    prefix: &str,
    s: &Summary,
) -> gst::structure::Builder {
    builder
        .field(format!("{prefix}-min-ms"), ms(s.min))
        .field(format!("{prefix}-mean-ms"), s.mean / 1e6)
        .field(format!("{prefix}-p50-ms"), ms(s.p50))
        .field(format!("{prefix}-p95-ms"), ms(s.p95))
        .field(format!("{prefix}-p99-ms"), ms(s.p99))
        .field(format!("{prefix}-max-ms"), ms(s.max))
        .field(format!("{prefix}-jitter-ms"), s.jitter / 1e6)
}

#[cfg(test)]
mod tests {
    use super::CounterSpan;

    #[test]
    fn counter_span_ignores_reordering_and_counts_gaps() {
        let mut c = CounterSpan::default();
        for f in [5001, 5000, 5002, 5003, 5005, 5004, 5008] {
            c.push(f);
        }
        assert_eq!(c.lost(), 2); // 5006 and 5007
        // Restarted stamper: counting starts again, earlier loss is kept.
        for f in [0, 1, 3] {
            c.push(f);
        }
        assert_eq!(c.lost(), 3);
        // Wrap-around is not a restart.
        let mut c = CounterSpan::default();
        for f in [u32::MAX - 1, u32::MAX, 0, 1] {
            c.push(f);
        }
        assert_eq!(c.lost(), 0);
        // A seek: the counters jump, nothing more is lost; later gaps still count.
        let mut c = CounterSpan::default();
        for f in [0, 1, 3] {
            c.push(f);
        }
        c.restart();
        for f in [200, 201, 203] {
            c.push(f);
        }
        assert_eq!(c.lost(), 2);
    }
}
