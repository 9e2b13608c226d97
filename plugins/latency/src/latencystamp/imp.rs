//! latencystamp: attaches the capture time of every buffer.
//!
//! Lock order: `settings` before `state`. Nothing is posted or pushed while either is held.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use hybridlive_stamp::CaptureStamp;
use hybridlive_stamp::{
    Codec, Framing, LocatedStamp, NalUnits, STAMP_UUID, find_insert_point, framed_sei_nal,
    locate_stamp, sei_nal,
};
use std::sync::{LazyLock, Mutex};

use super::StampMode;
use crate::clock::{ClockSource, UtcMapper, buffer_running_time, utc_now_ns};
use crate::format::StreamKind;
use crate::format::any_caps_templates;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "latencystamp",
        gst::DebugColorFlags::empty(),
        Some("Capture-time stamper"),
    )
});

/// Caps of the reference timestamp meta: UTC, as GStreamer's own writers and readers use it.
pub(crate) static UNIX_CAPS: LazyLock<gst::Caps> =
    LazyLock::new(|| gst::Caps::new_empty_simple("timestamp/x-unix"));

const DEFAULT_MODE: StampMode = StampMode::Auto;
const DEFAULT_STREAM_ID: &str = "";
const DEFAULT_OVERWRITE: bool = false;
const DEFAULT_CLOCK_SOURCE: ClockSource = ClockSource::Pipeline;

#[derive(Debug, Clone)]
struct Settings {
    mode: StampMode,
    stream_id: String,
    overwrite: bool,
    clock_source: ClockSource,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: DEFAULT_MODE,
            stream_id: DEFAULT_STREAM_ID.into(),
            overwrite: DEFAULT_OVERWRITE,
            clock_source: DEFAULT_CLOCK_SOURCE,
        }
    }
}

#[derive(Debug)]
struct State {
    kind: StreamKind,
    mapper: UtcMapper,
    frame: u32,
    stamped: u64,
    kept: u64,
    sei_inserted: u64,
    sei_kept: u64,
    no_slice: u64,
    realtime_fallback: u64,
    warned_unaligned: bool,
}

impl Default for State {
    fn default() -> Self {
        Self {
            kind: StreamKind::Other,
            mapper: UtcMapper::default(),
            frame: 0,
            stamped: 0,
            kept: 0,
            sei_inserted: 0,
            sei_kept: 0,
            no_slice: 0,
            realtime_fallback: 0,
            warned_unaligned: false,
        }
    }
}

#[derive(Default)]
pub struct LatencyStamp {
    settings: Mutex<Settings>,
    state: Mutex<State>,
}

#[glib::object_subclass]
impl ObjectSubclass for LatencyStamp {
    const NAME: &'static str = "GstLatencyStamp";
    type Type = super::LatencyStamp;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for LatencyStamp {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecEnum::builder_with_default("mode", DEFAULT_MODE)
                    .nick("Mode")
                    .blurb(
                        "Where the capture time is written: meta (GstReferenceTimestampMeta, \
                         caps timestamp/x-unix), sei (H.264/H.265 user data unregistered SEI \
                         in the bitstream), both, or auto (meta, plus SEI on H.264/H.265 \
                         access units)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("stream-id")
                    .nick("Stream ID")
                    .blurb(
                        "Short identifier written into each SEI stamp (UTF-8, at most 32 \
                         bytes; longer ids are cut) and reported by latencymeter",
                    )
                    .default_value(Some(DEFAULT_STREAM_ID))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("overwrite")
                    .nick("Overwrite")
                    .blurb(
                        "Replace a stamp already present upstream: the capture-time metas \
                         (timestamp/x-unix, and the stamp SEI meta a parser attached) are \
                         removed, and the new SEI takes the old stamp SEI's place (or goes in \
                         front of it when that SEI also holds other messages; readers take the \
                         first). When false the upstream capture time is kept and copied into \
                         whatever this element writes: `latencystamp mode=meta` after a parser \
                         turns an SEI stamp back into meta that decoders carry on",
                    )
                    .default_value(DEFAULT_OVERWRITE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("clock-source", DEFAULT_CLOCK_SOURCE)
                    .nick("Clock source")
                    .blurb(
                        "pipeline: capture time = base time + buffer running time on the \
                         pipeline clock, mapped to UTC (a stamper after an encoder still names \
                         the capture instant); realtime: the system UTC clock when the buffer \
                         passes (sources whose timestamps do not follow the clock)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "latencystamp-stats: stamped (guint64, buffers given a new capture \
                         time), kept (guint64, upstream stamps kept), sei-inserted (guint64), \
                         sei-kept (guint64, upstream SEI stamps left as they were), no-slice \
                         (guint64, encoded buffers without a slice: no SEI), \
                         realtime-fallback (guint64, buffers stamped from the realtime clock \
                         because the running time or the clock was missing), frame (guint, \
                         next frame counter)",
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
            "mode" => settings.mode = value.get().expect("type checked upstream"),
            "stream-id" => {
                settings.stream_id = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_default()
            }
            "overwrite" => settings.overwrite = value.get().expect("type checked upstream"),
            "clock-source" => settings.clock_source = value.get().expect("type checked upstream"),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "stats" => self.stats().to_value(),
            name => {
                let settings = self.settings.lock().unwrap();
                match name {
                    "mode" => settings.mode.to_value(),
                    "stream-id" => settings.stream_id.to_value(),
                    "overwrite" => settings.overwrite.to_value(),
                    "clock-source" => settings.clock_source.to_value(),
                    _ => unimplemented!(),
                }
            }
        }
    }
}

impl GstObjectImpl for LatencyStamp {}

impl ElementImpl for LatencyStamp {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Capture time stamper",
                "Filter/Video/Audio",
                "Attaches the UTC capture time to every buffer as GstReferenceTimestampMeta \
                 (timestamp/x-unix) and, on H.264/H.265 access units (byte-stream, avc/avc3, \
                 hvc1/hev1), as an SEI user data unregistered message inside the bitstream \
                 (UUID 6879627269644c499e5a713cd20b86f4: version byte, 64-bit capture time in \
                 ns since the Unix epoch, 32-bit frame counter, stream id), placed right \
                 before the first slice with emulation prevention and added as its own \
                 GstMemory so frame data is never copied. The capture time is derived from \
                 the buffer's running time and the pipeline clock, so a stamper placed after \
                 an encoder still names the capture instant. Raw video, raw audio, H.264 and \
                 H.265 are stamped; other caps pass through untouched. A stamp already present \
                 upstream (meta or SEI) is kept unless overwrite=true. Read it with \
                 latencymeter.",
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

impl BaseTransformImpl for LatencyStamp {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        *self.state.lock().unwrap() = State::default();
        Ok(())
    }

    fn set_caps(&self, incaps: &gst::Caps, _outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let kind = StreamKind::from_caps(Some(incaps));
        gst::debug!(CAT, imp = self, "caps {incaps} -> {kind:?}");
        self.state.lock().unwrap().kind = kind;
        Ok(())
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = self.settings.lock().unwrap().clone();
        let mut state = self.state.lock().unwrap();
        let kind = state.kind;
        if kind == StreamKind::Other {
            return Ok(gst::FlowSuccess::Ok);
        }

        let meta_time = upstream_meta_time(buf);
        // Access units: where a new SEI goes, and a stamp SEI already in the bitstream.
        let bitstream = match kind {
            StreamKind::Encoded { codec, framing } => {
                let location = locate_in_buffer(buf, |au| {
                    let point = find_insert_point(codec, framing, au)?;
                    let old = locate_stamp(codec, framing, au).ok().flatten();
                    let old_end = old
                        .as_ref()
                        .and_then(|o| own_sei_end(codec, framing, au, o));
                    Some((point, old, old_end))
                });
                Some((codec, framing, location))
            }
            _ => None,
        };
        let sei_time = bitstream
            .as_ref()
            .and_then(|(_, _, location)| location.as_ref())
            .and_then(|(_, old, _)| old.as_ref())
            .map(|old| old.stamp.capture_time_ns);

        let capture_ns = match meta_time.or(sei_time) {
            Some(t) if !settings.overwrite => {
                state.kept += 1;
                t
            }
            _ => {
                state.stamped += 1;
                self.capture_time(buf, settings.clock_source, &mut state)
            }
        };

        let want_meta = settings.mode != StampMode::Sei;
        let want_sei = settings.mode != StampMode::Meta;
        if settings.overwrite {
            // Readers prefer meta to the bitstream: a stale stamp left as meta (upstream's, or
            // the SEI meta a parser made of the old SEI) would win over the replacement.
            remove_stale_metas(buf);
        }
        if want_meta && (meta_time.is_none() || settings.overwrite) {
            gst::ReferenceTimestampMeta::add(
                buf,
                &UNIX_CAPS,
                gst::ClockTime::from_nseconds(capture_ns),
                buf.duration(),
            );
        }

        match bitstream {
            Some((codec, framing, location)) if want_sei => match location {
                None => state.no_slice += 1,
                Some((_, Some(_), _)) if !settings.overwrite => state.sei_kept += 1,
                Some((point, old, old_end)) => {
                    let stamp = CaptureStamp {
                        capture_time_ns: capture_ns,
                        frame: state.frame,
                        stream_id: settings.stream_id.clone(),
                    };
                    // A replacement takes the old SEI's place when that SEI holds only the
                    // stamp (as this element writes it), so parsers turn one stamp into meta;
                    // otherwise it goes in front, where readers of the bitstream look first.
                    let offset = old.map_or(point.offset, |old| old.prefix_start);
                    match framed_sei_nal(codec, framing, &stamp, point.temporal_id_plus1) {
                        Some(sei) => {
                            if let Some(end) = old_end {
                                remove_range(buf, offset, end);
                            }
                            insert_memory_at(buf, offset, gst::Memory::from_slice(sei));
                            state.sei_inserted += 1;
                        }
                        None => state.no_slice += 1,
                    }
                }
            },
            None if want_sei && kind == StreamKind::EncodedUnaligned && !state.warned_unaligned => {
                state.warned_unaligned = true;
                gst::warning!(
                    CAT,
                    imp = self,
                    "stream is not aligned on access units (or avc without codec_data): \
                     SEI stamps need alignment=au, writing meta only"
                );
            }
            _ => {}
        }
        state.frame = state.frame.wrapping_add(1);
        Ok(gst::FlowSuccess::Ok)
    }
}

/// Capture time of a `timestamp/x-unix` reference timestamp meta already on the buffer.
pub(crate) fn upstream_meta_time(buf: &gst::BufferRef) -> Option<u64> {
    buf.iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|meta| {
            meta.reference()
                .structure(0)
                .is_some_and(|s| s.name() == "timestamp/x-unix")
        })
        .map(|meta| meta.timestamp().nseconds())
}

/// End of the SEI NAL unit holding `old` when that unit is exactly what this element writes
/// for it (the stamp alone), so that it can be taken out whole.
fn own_sei_end(codec: Codec, framing: Framing, au: &[u8], old: &LocatedStamp) -> Option<usize> {
    let unit = NalUnits::new(au, framing).find(|u| u.prefix_start == old.prefix_start)?;
    let data = unit.data();
    let temporal_id_plus1 = match codec {
        Codec::H264 => 1,
        Codec::H265 => data.get(1).map_or(1, |b| b & 0x07),
    };
    let mut ours = Vec::new();
    sei_nal(codec, &old.stamp, temporal_id_plus1, &mut ours);
    (data == ours.as_slice()).then_some(unit.start + data.len())
}

/// Removes bytes `start..end` of the buffer, sharing (never copying) the memory around them.
fn remove_range(buf: &mut gst::BufferRef, start: usize, end: usize) {
    let mut kept = Vec::new();
    let mut pos = 0;
    for idx in 0..buf.n_memory() {
        let mem = buf.peek_memory(idx);
        let (from, to) = (pos, pos + mem.size());
        if to <= start || from >= end {
            kept.push(mem.to_owned());
        } else {
            if from < start {
                kept.push(mem.share(..start - from));
            }
            if to > end {
                kept.push(mem.share(end - from..));
            }
        }
        pos = to;
    }
    buf.remove_all_memory();
    for mem in kept {
        buf.append_memory(mem);
    }
}

/// Removes the capture-time metas: `timestamp/x-unix` and stamp SEI metas from a parser.
fn remove_stale_metas(buf: &mut gst::BufferRef) {
    buf.foreach_meta_mut(|mut meta| {
        let is_unix = meta
            .downcast_ref::<gst::ReferenceTimestampMeta>()
            .is_some_and(|m| {
                m.reference()
                    .structure(0)
                    .is_some_and(|s| s.name() == "timestamp/x-unix")
            });
        let is_stamp_sei = meta
            .downcast_ref::<gst_video::video_meta::VideoSeiUserDataUnregisteredMeta>()
            .is_some_and(|m| m.uuid() == STAMP_UUID);
        if is_unix || is_stamp_sei {
            std::ops::ControlFlow::Continue(gst::buffer::BufferMetaForeachAction::Remove)
        } else {
            std::ops::ControlFlow::Continue(gst::buffer::BufferMetaForeachAction::Keep)
        }
    });
}

impl LatencyStamp {
    fn stats(&self) -> gst::Structure {
        let state = self.state.lock().unwrap();
        gst::Structure::builder("latencystamp-stats")
            .field("stamped", state.stamped)
            .field("kept", state.kept)
            .field("sei-inserted", state.sei_inserted)
            .field("sei-kept", state.sei_kept)
            .field("no-slice", state.no_slice)
            .field("realtime-fallback", state.realtime_fallback)
            .field("frame", state.frame)
            .build()
    }

    fn capture_time(&self, buf: &gst::BufferRef, source: ClockSource, state: &mut State) -> u64 {
        if source == ClockSource::Realtime {
            return utc_now_ns();
        }
        let obj = self.obj();
        let running_time = buffer_running_time(&obj.segment(), buf);
        match (running_time, obj.clock(), obj.base_time()) {
            (Some(rt), Some(clock), Some(base)) => state.mapper.utc_of(&clock, base + rt),
            _ => {
                if state.realtime_fallback == 0 {
                    gst::info!(
                        CAT,
                        imp = self,
                        "no running time or no clock: stamping with the realtime clock"
                    );
                }
                state.realtime_fallback += 1;
                utc_now_ns()
            }
        }
    }
}

/// Runs `f` on the bytes of the access unit: on the first memory alone when it holds the
/// answer (no copy), else on the whole buffer (a merged map: copies only for buffers whose
/// headers span several memories).
pub(crate) fn locate_in_buffer<T>(
    buf: &gst::BufferRef,
    f: impl Fn(&[u8]) -> Option<T>,
) -> Option<T> {
    if buf.n_memory() == 0 {
        return None;
    }
    {
        let first = buf.peek_memory(0);
        let map = first.map_readable().ok()?;
        if let Some(found) = f(&map) {
            return Some(found);
        }
        if buf.n_memory() == 1 {
            return None;
        }
    }
    let map = buf.map_readable().ok()?;
    f(&map)
}

/// Inserts `mem` at byte `offset`, splitting the memory there by sharing (never copying).
fn insert_memory_at(buf: &mut gst::BufferRef, offset: usize, mem: gst::Memory) {
    let mut start = 0;
    for idx in 0..buf.n_memory() {
        let size = buf.peek_memory(idx).size();
        if offset == start {
            buf.insert_memory(Some(idx), mem);
            return;
        }
        if offset < start + size {
            let rel = offset - start;
            let old = buf.peek_memory(idx);
            let (head, tail) = (old.share(..rel), old.share(rel..));
            buf.replace_memory(idx, head);
            buf.insert_memory(Some(idx + 1), mem);
            buf.insert_memory(Some(idx + 2), tail);
            return;
        }
        start += size;
    }
    buf.append_memory(mem);
}
