//! `clipextract` implementation.
//!
//! Lock order: `pads` (only to clone the pad list) → a pad's `PushState` → its `ClipClock`
//! → `state` → `stats`. `ClipClock` is held only for a few assignments, so queries, which take
//! it alone, never wait for a push. `settings` is never held with another lock. Nothing is
//! pushed or posted while `state` is held. The selector may queue outputs for any stream (video decides where audio
//! clips start), but each stream's outputs are pushed only by that stream's own thread, under
//! its `PushState` lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use hybridlive_stamp::{Codec, Framing, NalUnits};
use hybridlive_timeline::{ClipRange, format_time, parse_range_list};

use super::avc::{ParamSets, Splicer, is_open_gop_splice_point};
use super::dts::{DEFAULT_DEPTH, DtsSynth};
use super::param_sets::LatestParamSets;
use super::selector::{Frame, Kind, Mode, Output, Role, Selector};
use super::transcode::Transcoder;
use super::{CLIP_END_EVENT, CLIP_START_EVENT, ClipMode};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "clipextract",
        gst::DebugColorFlags::empty(),
        Some("Clip extraction from encoded streams"),
    )
});

const DEFAULT_RANGES: &str = "";
const DEFAULT_MODE: ClipMode = ClipMode::Exact;
const DEFAULT_EXACT_SEGMENT: bool = false;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone)]
struct Settings {
    ranges: String,
    ranges_file: Option<String>,
    mode: ClipMode,
    exact_segment: bool,
    reencode_filter: Option<String>,
}

/// What the element reads from its settings when it starts and on a flushing seek.
struct Config {
    mode: Mode,
    exact_segment: bool,
    ranges: Vec<ClipRange>,
    reencode_filter: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ranges: DEFAULT_RANGES.to_owned(),
            ranges_file: None,
            mode: DEFAULT_MODE,
            exact_segment: DEFAULT_EXACT_SEGMENT,
            reencode_filter: None,
        }
    }
}

/// A video frame waiting for a synthesized decode time.
type Pending = (gst::Buffer, i64, bool, bool, bool);

/// Hands frames of stream `index` whose decode time the synthesizer worked out to the
/// selector, in decode order.
fn push_synthesized(
    selector: &mut Selector<gst::Buffer>,
    index: usize,
    ready: Vec<(Pending, i64, i64)>,
) {
    for ((data, duration, key, disposable, splice), pts, dts) in ready {
        selector.push(
            index,
            Frame {
                data,
                pts,
                dts,
                duration,
                key,
                disposable,
                splice,
            },
        );
    }
}

/// A selector for the clips `ranges`, in `mode`, with no streams yet.
fn selector_for(mode: Mode, ranges: &[ClipRange]) -> Selector<gst::Buffer> {
    Selector::new(
        mode,
        ranges
            .iter()
            .map(|r| (r.start as i64, r.end as i64))
            .collect(),
    )
}

/// Per sink pad, under `state`.
#[derive(Debug, Default)]
struct StreamInfo {
    segment: Option<gst::FormattedSegment<gst::ClockTime>>,
    caps: Option<gst::Caps>,
    video: Option<(Codec, Framing)>,
    kind: Option<Kind>,
    /// Whether the first frame carried a decode time (decided once per stream).
    has_dts: Option<bool>,
    /// For video without decode times.
    dts_synth: Option<DtsSynth<Pending>>,
    /// H.264: the parameter sets seen so far (caps and in band), to find open-GOP splice
    /// points and rewrite the frames copied after them.
    params: Arc<ParamSets>,
    /// The latest parameter set units (caps and in band), put in front of each clip's first
    /// frame: a byte-stream source may send them only once, at its start.
    sets: Arc<LatestParamSets>,
    /// Its pad was released: the slot stays (indices of the other pads do not move while
    /// running) but counts as ended, so it never holds up the others.
    released: bool,
    /// Stream time of the latest frame, to say where the stream ended.
    last_pts: Option<i64>,
    /// Between FLUSH_START and FLUSH_STOP on this pad. A seek's first FLUSH_STOP (on any pad)
    /// rebuilds the selector for all streams; a chain call of this pad still in flight then
    /// must not feed it a frame from before the seek.
    flushing: bool,
}

/// Frame duration from the caps' framerate, 40 ms when unknown.
fn frame_duration(caps: Option<&gst::Caps>) -> i64 {
    caps.and_then(|c| c.structure(0))
        .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .map_or(40_000_000, |f| {
            1_000_000_000i64 * i64::from(f.denom()) / i64::from(f.numer())
        })
}

struct State {
    mode: Mode,
    exact_segment: bool,
    /// Raw video elements between decoder and encoder (`reencode` only).
    reencode_filter: Option<String>,
    /// Seqnum of the last flush handled, so a seek's flush rebuilds the selector once.
    last_flush: Option<gst::Seqnum>,
    ranges: Vec<ClipRange>,
    selector: Selector<gst::Buffer>,
    streams: Vec<StreamInfo>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            mode: Mode::Exact,
            exact_segment: DEFAULT_EXACT_SEGMENT,
            reencode_filter: None,
            last_flush: None,
            ranges: Vec::new(),
            selector: Selector::new(Mode::Exact, Vec::new()),
            streams: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Stats {
    clips_started: u32,
    clips_finished: u32,
    frames_in: u64,
    frames_copied: u64,
    frames_decoded: u64,
}

/// Per src pad, held while pushing.
#[derive(Debug, Default)]
struct PushState {
    done: bool,
    sent_caps: Option<gst::Caps>,
    pending_segment: Option<gst::Segment>,
    clip: Option<usize>,
    transcoder: Option<Transcoder>,
    head: Vec<gst::Buffer>,
    head_end_dts: Option<i64>,
    /// `smart`: the next copied frame is the first after the re-encoded head.
    after_junction: bool,
    /// `smart`, H.264: rewrites the copied frames after an open-GOP splice point.
    splicer: Option<Splicer>,
    clip_copied: u64,
    clip_encoded: u64,
    /// The current clip's presentation window, clip-relative.
    present: (i64, Option<i64>),
    /// The next frame is the clip's first (copied or fed to the re-encoder): it gets the
    /// parameter sets it does not carry.
    needs_sets: bool,
    /// Clips that started on this pad, to name the ones that never did.
    started: Vec<usize>,
}

/// What handling one output needs to know about the element and the stream.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    mode: Mode,
    exact_segment: bool,
    sink_caps: &'a Option<gst::Caps>,
    video: Option<(Codec, Framing)>,
    ranges: &'a [ClipRange],
    leads: bool,
    reencode_filter: Option<&'a str>,
    params: &'a Arc<ParamSets>,
    sets: &'a Arc<LatestParamSets>,
}

#[derive(Clone)]
struct PadPair {
    sink: gst::Pad,
    src: gst::Pad,
    index: usize,
    push: Arc<Mutex<PushState>>,
    clock: Arc<Mutex<ClipClock>>,
}

/// Where a src pad is in its clip, for POSITION and DURATION queries: in the clip's time
/// (its segment), not the source's.
#[derive(Debug, Default)]
struct ClipClock {
    /// Clip-relative time of the segment start (stream time 0).
    seg_start: i64,
    /// Clip-relative end of the clip, when cut exactly.
    stop: Option<i64>,
    /// Clip-relative end of the last buffer pushed; `None` before the clip's first.
    position: Option<i64>,
}

#[derive(Default, glib::Properties)]
#[properties(wrapper_type = super::ClipExtract)]
pub struct ClipExtract {
    #[property(
        name = "ranges",
        get,
        set,
        type = String,
        member = ranges,
        nick = "Clip ranges",
        blurb = "Clips to output as START-END separated by ';' (stream time; START inclusive, END \
                 exclusive; each time HH:MM:SS[.fff] or seconds, e.g. \"90.0-135.0;200-230\"). \
                 Must not overlap. Read when the element starts and on a flushing seek."
    )]
    #[property(
        name = "ranges-file",
        get,
        set,
        type = Option<String>,
        member = ranges_file,
        nick = "Clip ranges file",
        blurb = "File with more ranges in the same syntax, one or more per line, '#' starts a \
                 comment; added to 'ranges'. Read with 'ranges'."
    )]
    #[property(
        name = "mode",
        get,
        set,
        type = ClipMode,
        member = mode,
        nick = "Accuracy mode",
        blurb = "How clips start: keyframe (copy from the key frame at or before the start), \
                 exact (copy, segment/edit list hides the frames before the start), smart \
                 (re-encode up to the next key frame, then copy), reencode (whole clip)",
        builder(DEFAULT_MODE)
    )]
    #[property(
        name = "exact-segment",
        get,
        set,
        type = bool,
        member = exact_segment,
        nick = "Exact segment",
        blurb = "Make each clip's segment start and stop on the requested range, so GStreamer \
                 decoders and players present exactly it. Off: the segment starts at the clip's \
                 first output frame so muxers (which drop data outside the segment) keep every \
                 frame, and the window is in the clip-start event (present-start/present-stop) \
                 for the writer's edit list. Read when the element starts.",
        default = DEFAULT_EXACT_SEGMENT
    )]
    #[property(
        name = "reencode-filter",
        get,
        set,
        type = Option<String>,
        member = reencode_filter,
        nick = "Re-encode filter",
        blurb = "Raw video elements placed between decoder and encoder, in gst-launch syntax \
                 (e.g. \"videocrop left=656 right=656 ! videoscale ! capsfilter \
                 caps=video/x-raw,width=1080,height=1920\" for a 9:16 crop); only with \
                 mode=reencode, since copied frames cannot be filtered. Read with 'ranges'."
    )]
    settings: Mutex<Settings>,
    pads: Mutex<Vec<PadPair>>,
    state: Mutex<State>,
    stats: Mutex<Stats>,
    /// Frames the re-encoders produced (counted as they come out, so a long drain at the end
    /// of a clip shows progress).
    encoded: Arc<AtomicU64>,
}

#[glib::object_subclass]
impl ObjectSubclass for ClipExtract {
    const NAME: &'static str = "GstClipExtract";
    type Type = super::ClipExtract;
    type ParentType = gst::Element;
}

impl ObjectImpl for ClipExtract {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut props = ClipExtract::derived_properties().to_vec();
            props.push(
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Totals since start: clips-started, clips-finished, frames-in, \
                         frames-copied, frames-decoded (sent to the re-encoder), frames-encoded",
                    )
                    .read_only()
                    .build(),
            );
            props
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        self.derived_set_property(id, value, pspec)
    }

    fn property(&self, id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "stats" => self.stats().to_value(),
            _ => self.derived_property(id, pspec),
        }
    }
}

impl GstObjectImpl for ClipExtract {}

fn mode_of(m: ClipMode) -> Mode {
    match m {
        ClipMode::Keyframe => Mode::Keyframe,
        ClipMode::Exact => Mode::Exact,
        ClipMode::Smart => Mode::Smart,
        ClipMode::Reencode => Mode::Reencode,
    }
}

fn mode_nick(m: Mode) -> &'static str {
    match m {
        Mode::Keyframe => "keyframe",
        Mode::Exact => "exact",
        Mode::Smart => "smart",
        Mode::Reencode => "reencode",
    }
}

/// Stream time of a timestamp as signed nanoseconds.
fn stream_ns(seg: &gst::FormattedSegment<gst::ClockTime>, ts: gst::ClockTime) -> Option<i64> {
    match seg.to_stream_time_full(ts)? {
        gst::Signed::Positive(t) => Some(t.nseconds() as i64),
        gst::Signed::Negative(t) => Some(-(t.nseconds() as i64)),
    }
}

fn clock(ns: i64) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(ns.max(0) as u64)
}

/// Codec and NAL framing of a video caps, from `stream-format` and `codec_data`.
fn video_codec(s: &gst::StructureRef) -> Option<(Codec, Framing)> {
    let codec = match s.name().as_str() {
        "video/x-h264" => Codec::H264,
        "video/x-h265" => Codec::H265,
        _ => return None,
    };
    let format = s.get::<&str>("stream-format").unwrap_or("byte-stream");
    if format == "byte-stream" {
        return Some((codec, Framing::AnnexB));
    }
    let size = s
        .get::<gst::Buffer>("codec_data")
        .ok()
        .and_then(|b| {
            let map = b.map_readable().ok()?;
            let byte = match codec {
                Codec::H264 => *map.get(4)?,
                Codec::H265 => *map.get(21)?,
            };
            Some((byte & 3) + 1)
        })
        .unwrap_or(4);
    Some((codec, Framing::LengthPrefixed(size)))
}

/// Whether no other frame references this one (first slice's NAL header). `max_temporal_id`:
/// H.265, the highest TemporalId the stream's SPS allows (`None` when unknown).
fn is_disposable(data: &[u8], codec: Codec, framing: Framing, max_temporal_id: Option<u8>) -> bool {
    for nal in NalUnits::new(data, framing) {
        let h = nal.header();
        let t = codec.nal_type(h);
        if codec.is_vcl(t) {
            return match codec {
                Codec::H264 => (h >> 5) & 3 == 0,
                // TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N, RSV_VCL_N10/12/14 are sub-layer
                // non-reference pictures: pictures of a higher temporal sub-layer may still
                // reference them, so only those of the highest sub-layer can go.
                Codec::H265 => {
                    let temporal_id = data
                        .get(nal.start + 1)
                        .map(|b| (b & 0x07).saturating_sub(1));
                    t <= 14
                        && t.is_multiple_of(2)
                        && temporal_id.is_some()
                        && temporal_id == max_temporal_id
                }
            };
        }
    }
    false
}

/// Whether copied frames can follow re-encoded ones from this key frame (see `Frame::splice`):
/// an H.264 IDR, or an I frame with an exact recovery point whose slice headers the splicer
/// can rewrite into an IDR (x264 open GOP); any H.265 key frame (IDR, CRA, BLA).
fn is_splice_point(data: &[u8], codec: Codec, framing: Framing, params: &ParamSets) -> bool {
    match codec {
        Codec::H264 => {
            NalUnits::new(data, framing).any(|n| codec.nal_type(n.header()) == 5)
                || is_open_gop_splice_point(data, framing, params)
        }
        Codec::H265 => true,
    }
}

/// The parameter set NAL units (without framing) stored in avcC / hvcC `codec_data`.
fn parameter_sets(s: &gst::StructureRef, codec: Codec) -> Vec<Vec<u8>> {
    let Ok(buf) = s.get::<gst::Buffer>("codec_data") else {
        return Vec::new();
    };
    let Ok(map) = buf.map_readable() else {
        return Vec::new();
    };
    let d = map.as_slice();
    let mut out = Vec::new();
    let read_nal = |pos: &mut usize, out: &mut Vec<Vec<u8>>| -> Option<()> {
        let len = u16::from_be_bytes([*d.get(*pos)?, *d.get(*pos + 1)?]) as usize;
        out.push(d.get(*pos + 2..*pos + 2 + len)?.to_vec());
        *pos += 2 + len;
        Some(())
    };
    let _ = (|| -> Option<()> {
        match codec {
            Codec::H264 => {
                let mut pos = 5;
                let n_sps = *d.get(pos)? & 0x1f;
                pos += 1;
                for _ in 0..n_sps {
                    read_nal(&mut pos, &mut out)?;
                }
                let n_pps = *d.get(pos)?;
                pos += 1;
                for _ in 0..n_pps {
                    read_nal(&mut pos, &mut out)?;
                }
            }
            Codec::H265 => {
                let mut pos = 22;
                let arrays = *d.get(pos)?;
                pos += 1;
                for _ in 0..arrays {
                    pos += 1;
                    let n = u16::from_be_bytes([*d.get(pos)?, *d.get(pos + 1)?]);
                    pos += 2;
                    for _ in 0..n {
                        read_nal(&mut pos, &mut out)?;
                    }
                }
            }
        }
        Some(())
    })();
    out
}

/// A buffer holding `data` with the flags, timestamps and metas of `buffer`.
fn with_data(buffer: &gst::Buffer, data: Vec<u8>) -> gst::Buffer {
    let mut out = gst::Buffer::from_mut_slice(data);
    {
        let out = out.get_mut().expect("new buffer is writable");
        let _ = buffer.copy_into(
            out,
            gst::BufferCopyFlags::FLAGS
                | gst::BufferCopyFlags::TIMESTAMPS
                | gst::BufferCopyFlags::META,
            ..,
        );
    }
    out
}

/// The parameter set units in the caps' `codec_data`, which a decoder of `caps` already has.
fn caps_sets(caps: &Option<gst::Caps>, video: Option<(Codec, Framing)>) -> Vec<Vec<u8>> {
    match (caps.as_ref().and_then(|c| c.structure(0)), video) {
        (Some(s), Some((codec, Framing::LengthPrefixed(_)))) => parameter_sets(s, codec),
        _ => Vec::new(),
    }
}

/// `buffer` with the kept parameter sets it lacks (and that are not in `known`) in front.
fn with_sets(
    buffer: &gst::Buffer,
    sets: &LatestParamSets,
    framing: Framing,
    known: &[Vec<u8>],
) -> gst::Buffer {
    let Ok(map) = buffer.map_readable() else {
        return buffer.clone();
    };
    let missing = sets.missing_from(map.as_slice(), framing, known);
    drop(map);
    if missing.is_empty() {
        buffer.clone()
    } else {
        prepend_nals(buffer, &missing, framing)
    }
}

/// `buffer` with `nals` in front, framed like the stream.
fn prepend_nals(buffer: &gst::Buffer, nals: &[Vec<u8>], framing: Framing) -> gst::Buffer {
    let mut data = Vec::new();
    for n in nals {
        match framing {
            Framing::AnnexB => data.extend_from_slice(&[0, 0, 0, 1]),
            Framing::LengthPrefixed(size) => {
                let len = (n.len() as u32).to_be_bytes();
                data.extend_from_slice(&len[4 - size as usize..]);
            }
        }
        data.extend_from_slice(n);
    }
    let Ok(map) = buffer.map_readable() else {
        return buffer.clone();
    };
    data.extend_from_slice(map.as_slice());
    drop(map);
    with_data(buffer, data)
}

impl ClipExtract {
    fn stats(&self) -> gst::Structure {
        let s = lock(&self.stats).clone();
        gst::Structure::builder("clipextract-stats")
            .field("clips-started", s.clips_started)
            .field("clips-finished", s.clips_finished)
            .field("frames-in", s.frames_in)
            .field("frames-copied", s.frames_copied)
            .field("frames-decoded", s.frames_decoded)
            .field("frames-encoded", self.encoded.load(Ordering::Relaxed))
            .build()
    }

    fn pairs(&self) -> Vec<PadPair> {
        lock(&self.pads).clone()
    }

    fn pair_for(&self, pad: &gst::Pad) -> Option<PadPair> {
        lock(&self.pads)
            .iter()
            .find(|p| &p.sink == pad || &p.src == pad)
            .cloned()
    }

    /// The other pad of `pad`'s pair: a sink pad's src pad and the reverse.
    fn linked_pad(&self, pad: &gst::Pad) -> Option<gst::Pad> {
        self.pair_for(pad)
            .map(|p| if &p.sink == pad { p.src } else { p.sink })
    }

    /// Reads and checks the ranges from the properties.
    fn load_ranges(&self) -> Result<Config, gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let mut ranges = parse_range_list(&settings.ranges)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["Invalid 'ranges': {e}"]))?;
        if let Some(path) = settings.ranges_file.as_deref().filter(|p| !p.is_empty()) {
            let text = std::fs::read_to_string(path).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    ["Cannot read ranges file {path}: {e}"]
                )
            })?;
            ranges.extend(parse_range_list(&text).map_err(|e| {
                gst::error_msg!(gst::LibraryError::Settings, ["Ranges file {path}: {e}"])
            })?);
        }
        if ranges.is_empty() {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                ["No clip ranges: set 'ranges' or 'ranges-file'"]
            ));
        }
        ranges.sort();
        for w in ranges.windows(2) {
            if w[0].overlaps(&w[1]) {
                return Err(gst::error_msg!(
                    gst::LibraryError::Settings,
                    [
                        "Clip ranges {} and {} overlap; cut overlapping clips in separate runs",
                        w[0],
                        w[1]
                    ]
                ));
            }
        }
        let reencode_filter = settings.reencode_filter.filter(|f| !f.trim().is_empty());
        if reencode_filter.is_some() && settings.mode != ClipMode::Reencode {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                ["'reencode-filter' needs mode=reencode: copied frames cannot be filtered"]
            ));
        }
        if let Some(f) = &reencode_filter
            && let Err(e) = gst::parse::bin_from_description(f, true)
        {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                ["Invalid 'reencode-filter' {f:?}: {e}"]
            ));
        }
        Ok(Config {
            mode: mode_of(settings.mode),
            exact_segment: settings.exact_segment,
            ranges,
            reencode_filter,
        })
    }

    fn reset_state(&self, config: Config) {
        let Config {
            mode,
            exact_segment,
            ranges,
            reencode_filter,
        } = config;
        // Released pads left holes: number the pads afresh, as their streams start over.
        let n = {
            let mut pads = lock(&self.pads);
            for (i, p) in pads.iter_mut().enumerate() {
                p.index = i;
            }
            pads.len()
        };
        let mut selector = selector_for(mode, &ranges);
        for _ in 0..n {
            selector.add_stream();
        }
        *lock(&self.state) = State {
            mode,
            exact_segment,
            reencode_filter,
            last_flush: None,
            ranges,
            selector,
            streams: (0..n).map(|_| StreamInfo::default()).collect(),
        };
        *lock(&self.stats) = Stats::default();
        self.encoded.store(0, Ordering::Relaxed);
        for p in self.pairs() {
            *lock(&p.push) = PushState::default();
            *lock(&p.clock) = ClipClock::default();
        }
    }

    fn sink_chain(
        &self,
        pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let pair = self.pair_for(pad).ok_or(gst::FlowError::NotLinked)?;
        {
            let mut st = lock(&self.state);
            if st.streams[pair.index].flushing {
                return Err(gst::FlowError::Flushing);
            }
            if st.selector.is_done(pair.index) {
                // Outputs queued for this pad by another thread (its EOS) go out first.
                drop(st);
                let _ = self.drain_own(pair.index);
                return Err(gst::FlowError::Eos);
            }
            let info = &st.streams[pair.index];
            let Some(kind) = info.kind else {
                drop(st);
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ["Buffer on {} before caps", pad.name()]
                );
                return Err(gst::FlowError::NotNegotiated);
            };
            let Some(segment) = info.segment.clone() else {
                drop(st);
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Format,
                    ["Buffer on {} before a TIME segment", pad.name()]
                );
                return Err(gst::FlowError::Error);
            };
            let pts = buffer.pts().or(buffer.dts());
            let Some(pts) = pts.and_then(|t| stream_ns(&segment, t)) else {
                gst::warning!(
                    CAT,
                    imp = self,
                    "Dropping buffer without timestamp on {}",
                    pad.name()
                );
                return Ok(gst::FlowSuccess::Ok);
            };
            let dts = buffer.dts().and_then(|t| stream_ns(&segment, t));
            let duration = buffer.duration().map_or(0, |d| d.nseconds() as i64);
            let (key, disposable, splice) = match (kind, info.video) {
                (Kind::Video, Some((codec, framing))) => {
                    let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                    let map = buffer.map_readable().ok();
                    let data = map.as_ref().map(|m| m.as_slice()).unwrap_or(&[]);
                    let sets = Arc::make_mut(&mut st.streams[pair.index].sets);
                    sets.add_in_band(data, framing);
                    let max_temporal_id = sets.max_temporal_id();
                    let disposable = !key && is_disposable(data, codec, framing, max_temporal_id);
                    let splice = key && {
                        let params = match codec {
                            Codec::H264 => {
                                let info = &mut st.streams[pair.index];
                                let mut p = (*info.params).clone();
                                if p.add_in_band(data, framing) {
                                    info.params = Arc::new(p);
                                }
                                info.params.clone()
                            }
                            Codec::H265 => Arc::default(),
                        };
                        is_splice_point(data, codec, framing, &params)
                    };
                    (key, disposable, splice)
                }
                _ => (true, false, true),
            };
            let index = pair.index;
            let info = &mut st.streams[index];
            info.last_pts = Some(info.last_pts.map_or(pts, |l| l.max(pts)));
            let has_dts = *info.has_dts.get_or_insert(dts.is_some());
            if kind == Kind::Video && !has_dts {
                let fd = frame_duration(info.caps.as_ref());
                let synth = info
                    .dts_synth
                    .get_or_insert_with(|| DtsSynth::new(DEFAULT_DEPTH, fd));
                let ready = synth.push((buffer, duration, key, disposable, splice), pts);
                push_synthesized(&mut st.selector, index, ready);
            } else {
                st.selector.push(
                    index,
                    Frame {
                        data: buffer,
                        pts,
                        dts: dts.map_or(pts, |d| d.min(pts)),
                        duration,
                        key,
                        disposable,
                        splice,
                    },
                );
            }
        }
        lock(&self.stats).frames_in += 1;
        self.drain_own(pair.index)?;
        if lock(&self.state).selector.is_done(pair.index) {
            // Another stream's thread may have finished this one (and queued its EOS)
            // between the drain above and this check. Push that before answering EOS:
            // upstream stops here, and a queue that got EOS drops the EOS event that
            // would otherwise have carried it out.
            let _ = self.drain_own(pair.index);
            return Err(gst::FlowError::Eos);
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// Pushes what the caller's stream has to emit. Each stream pushes only from its own
    /// streaming thread: pushing another pad's outputs could block this thread on that pad's
    /// downstream (a sink prerolling, a full queue, a muxer waiting for this very stream).
    /// Outputs another thread queued for a stream go out with that stream's next buffer or
    /// event.
    fn drain_own(&self, own: usize) -> Result<(), gst::FlowError> {
        let Some(pair) = self.pairs().into_iter().find(|p| p.index == own) else {
            return Ok(());
        };
        let mut ps = lock(&pair.push);
        self.drain_pad(&pair, &mut ps)
    }

    fn drain_pad(&self, pair: &PadPair, ps: &mut PushState) -> Result<(), gst::FlowError> {
        // Loop: another thread may queue more outputs for this pad while we push.
        loop {
            let (
                outputs,
                mode,
                exact_segment,
                mut info_caps,
                video,
                ranges,
                leads,
                filter,
                params,
                sets,
            ) = {
                let mut st = lock(&self.state);
                let outputs = st.selector.take_output(pair.index);
                if outputs.is_empty() {
                    return Ok(());
                }
                let info = &st.streams[pair.index];
                let has_video = st.streams.iter().any(|s| s.kind == Some(Kind::Video));
                let leads = info.kind == Some(Kind::Video) || !has_video;
                (
                    outputs,
                    st.mode,
                    st.exact_segment,
                    info.caps.clone(),
                    info.video,
                    st.ranges.clone(),
                    leads,
                    st.reencode_filter.clone(),
                    info.params.clone(),
                    info.sets.clone(),
                )
            };
            if mode == Mode::Smart
                && let (Some(caps), Some((codec, Framing::LengthPrefixed(_)))) = (&info_caps, video)
            {
                // Re-encoded heads bring their own parameter sets in band: label the stream
                // as one whose parameter sets may change in band (avc3 / hev1 sample entries).
                let mut c = caps.clone();
                if let Some(s) = c.make_mut().structure_mut(0) {
                    s.set(
                        "stream-format",
                        if codec == Codec::H264 { "avc3" } else { "hev1" },
                    );
                }
                info_caps = Some(c);
            }
            for out in outputs {
                // On failure the rest is dropped: flushing, or downstream gave up.
                let ctx = Ctx {
                    mode,
                    exact_segment,
                    sink_caps: &info_caps,
                    video,
                    ranges: &ranges,
                    leads,
                    reencode_filter: filter.as_deref(),
                    params: &params,
                    sets: &sets,
                };
                self.handle_output(pair, ps, out, &ctx)?;
            }
        }
    }

    /// Sends caps and the pending segment before a clip's first buffer.
    fn prepare_push(
        &self,
        pair: &PadPair,
        ps: &mut PushState,
        caps: Option<&gst::Caps>,
    ) -> Result<(), gst::FlowError> {
        if let Some(caps) = caps
            && ps.sent_caps.as_ref() != Some(caps)
        {
            pair.src.push_event(gst::event::Caps::new(caps));
            ps.sent_caps = Some(caps.clone());
        }
        if let Some(seg) = ps.pending_segment.take() {
            pair.src.push_event(gst::event::Segment::new(&seg));
        }
        Ok(())
    }

    fn push_buffer(
        &self,
        pair: &PadPair,
        ps: &mut PushState,
        buffer: gst::Buffer,
        caps: Option<&gst::Caps>,
    ) -> Result<(), gst::FlowError> {
        self.prepare_push(pair, ps, caps)?;
        if let Some(pts) = buffer.pts() {
            let end = (pts + buffer.duration().unwrap_or_default()).nseconds() as i64;
            let mut c = lock(&pair.clock);
            c.position = Some(c.position.map_or(end, |p| p.max(end)));
        }
        match pair.src.push(buffer) {
            Ok(_) | Err(gst::FlowError::NotLinked) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn push_encoded(
        &self,
        pair: &PadPair,
        ps: &mut PushState,
        buffers: Vec<gst::Buffer>,
        caps: Option<gst::Caps>,
    ) -> Result<(), gst::FlowError> {
        let n = buffers.len() as u64;
        ps.clip_encoded += n;
        for b in buffers {
            self.push_buffer(pair, ps, b, caps.as_ref())?;
        }
        Ok(())
    }

    fn transcode_error(&self, msg: &str) -> gst::FlowError {
        gst::element_imp_error!(self, gst::StreamError::Encode, ["{msg}"]);
        gst::FlowError::Error
    }

    fn handle_output(
        &self,
        pair: &PadPair,
        ps: &mut PushState,
        out: Output<gst::Buffer>,
        ctx: &Ctx<'_>,
    ) -> Result<(), gst::FlowError> {
        let Ctx {
            mode,
            exact_segment,
            sink_caps,
            video,
            ranges,
            leads,
            reencode_filter,
            params,
            sets,
        } = *ctx;
        match out {
            Output::Start {
                clip,
                present_start,
                present_stop,
                first_out,
                first,
            } => {
                let range = ranges[clip];
                ps.clip = Some(clip);
                ps.started.push(clip);
                ps.clip_copied = 0;
                ps.clip_encoded = 0;
                ps.head.clear();
                ps.head_end_dts = None;
                ps.after_junction = false;
                ps.splicer = None;
                ps.transcoder = None;
                ps.present = (present_start, present_stop);
                ps.needs_sets = true;
                let mut marker = gst::Structure::builder(CLIP_START_EVENT)
                    .field("index", clip as u32)
                    .field("start", range.start)
                    .field("end", range.end)
                    .field("mode", mode_nick(mode))
                    .field("present-start", clock(present_start).nseconds())
                    .build();
                if let Some(stop) = present_stop {
                    marker.set("present-stop", clock(stop).nseconds());
                }
                pair.src
                    .push_event(gst::event::CustomDownstream::new(marker));
                let (start, stop) = if exact_segment {
                    (present_start, present_stop)
                } else {
                    (first_out, None)
                };
                let mut seg = gst::FormattedSegment::<gst::ClockTime>::new();
                seg.set_start(clock(start));
                seg.set_stop(stop.map(clock));
                seg.set_time(gst::ClockTime::ZERO);
                seg.set_position(clock(start));
                ps.pending_segment = Some(seg.upcast());
                *lock(&pair.clock) = ClipClock {
                    seg_start: start,
                    stop: present_stop,
                    position: None,
                };
                if leads {
                    lock(&self.stats).clips_started += 1;
                    gst::info!(
                        CAT,
                        imp = self,
                        "clip {clip} {range} starts at stream time {first} ns"
                    );
                    let _ = self.obj().post_message(
                        gst::message::Element::builder(
                            gst::Structure::builder("clip-started")
                                .field("index", clip as u32)
                                .field("start", range.start)
                                .field("end", range.end)
                                .field("first-frame", first.max(0) as u64)
                                .build(),
                        )
                        .src(&*self.obj())
                        .build(),
                    );
                }
            }
            Output::Frame {
                data,
                pts,
                dts,
                duration,
                role,
            } => {
                let mut buffer = data;
                {
                    let b = buffer.make_mut();
                    b.set_pts(clock(pts));
                    b.set_dts(clock(dts));
                    if duration > 0 {
                        b.set_duration(gst::ClockTime::from_nseconds(duration as u64));
                    }
                }
                match role {
                    Role::Copy => {
                        if let (Some(splicer), Some((_, framing))) = (ps.splicer.as_mut(), video) {
                            let rewritten = {
                                let map = buffer.map_readable().map_err(|_| {
                                    self.transcode_error("cannot read a copied frame")
                                })?;
                                splicer.rewrite(map.as_slice(), framing)
                            };
                            match rewritten {
                                Ok(Some(data)) => buffer = with_data(&buffer, data),
                                Ok(None) => {}
                                Err(e) => {
                                    gst::element_imp_error!(
                                        self,
                                        gst::StreamError::Format,
                                        [
                                            "Cannot continue the copied frames after the \
                                             re-encoded start of clip {} ({e}); cut this \
                                             source with mode=reencode",
                                            ps.clip.unwrap_or_default()
                                        ]
                                    );
                                    return Err(gst::FlowError::Error);
                                }
                            }
                            if splicer.is_done() {
                                ps.splicer = None;
                            }
                        }
                        if ps.after_junction {
                            // The re-encoded head replaced the parameter sets in band: the
                            // copied frames need all of the source's again.
                            ps.after_junction = false;
                            ps.needs_sets = false;
                            if let Some((_, framing)) = video {
                                buffer = with_sets(&buffer, sets, framing, &[]);
                            }
                        } else if ps.needs_sets {
                            ps.needs_sets = false;
                            if let Some((_, framing)) = video {
                                buffer =
                                    with_sets(&buffer, sets, framing, &caps_sets(sink_caps, video));
                            }
                        }
                        ps.clip_copied += 1;
                        lock(&self.stats).frames_copied += 1;
                        self.push_buffer(pair, ps, buffer, sink_caps.as_ref())?;
                    }
                    Role::Decode => {
                        lock(&self.stats).frames_decoded += 1;
                        if ps.transcoder.is_none() {
                            let (Some(caps), Some((codec, _))) = (sink_caps, video) else {
                                return Err(
                                    self.transcode_error("re-encoding needs H.264 or H.265")
                                );
                            };
                            let (start, stop) = ps.present;
                            let filter = reencode_filter.filter(|_| mode == Mode::Reencode);
                            let t = Transcoder::new(
                                caps,
                                codec,
                                start,
                                stop,
                                mode == Mode::Smart,
                                filter,
                                self.encoded.clone(),
                            )
                            .map_err(|e| {
                                self.transcode_error(&format!("cannot start re-encoder: {e}"))
                            })?;
                            ps.transcoder = Some(t);
                        }
                        let Some(t) = ps.transcoder.as_mut() else {
                            return Err(gst::FlowError::Error);
                        };
                        if ps.needs_sets {
                            // The re-encoder's decoder gets the caps (with any codec_data) and
                            // this frame, so it needs the rest in band.
                            ps.needs_sets = false;
                            if let Some((_, framing)) = video {
                                buffer =
                                    with_sets(&buffer, sets, framing, &caps_sets(sink_caps, video));
                            }
                        }
                        t.push(buffer)
                            .map_err(|_| self.transcode_error("re-encoder refused a frame"))?;
                        let ready = t.ready();
                        let caps = t.caps().cloned();
                        if mode == Mode::Reencode {
                            self.push_encoded(pair, ps, ready, caps)?;
                        } else {
                            ps.head.extend(ready);
                        }
                    }
                }
            }
            Output::HeadEnd { at, dts } => {
                if let Some(t) = &ps.transcoder {
                    t.set_window_end(at);
                }
                ps.head_end_dts = Some(dts);
            }
            Output::Junction => {
                self.finish_transcoder(pair, ps, mode, sink_caps)?;
                ps.after_junction = true;
                if let Some((Codec::H264, _)) = video {
                    ps.splicer = Some(Splicer::new((**params).clone()));
                }
            }
            Output::End { clip } => {
                self.finish_transcoder(pair, ps, mode, sink_caps)?;
                ps.pending_segment = None;
                ps.clip = None;
                pair.src.push_event(gst::event::CustomDownstream::new(
                    gst::Structure::builder(CLIP_END_EVENT)
                        .field("index", clip as u32)
                        .build(),
                ));
                if leads {
                    let range = ranges[clip];
                    lock(&self.stats).clips_finished += 1;
                    let _ = self.obj().post_message(
                        gst::message::Element::builder(
                            gst::Structure::builder("clip-finished")
                                .field("index", clip as u32)
                                .field("start", range.start)
                                .field("end", range.end)
                                .field("frames-copied", ps.clip_copied)
                                .field("frames-encoded", ps.clip_encoded)
                                .build(),
                        )
                        .src(&*self.obj())
                        .build(),
                    );
                }
            }
            Output::Gap { pts, duration } => {
                // Only between a clip's first buffer (its caps and segment) and its end.
                if ps.clip.is_some() && ps.pending_segment.is_none() {
                    let mut gap = gst::event::Gap::builder(clock(pts));
                    if duration > 0 {
                        gap = gap.duration(gst::ClockTime::from_nseconds(duration as u64));
                    }
                    pair.src.push_event(gap.build());
                }
            }
            Output::Done => {
                if !ps.done {
                    ps.done = true;
                    if leads {
                        self.report_missed_clips(pair, &ps.started, ranges);
                    }
                    pair.src.push_event(gst::event::Eos::new());
                }
            }
        }
        Ok(())
    }

    /// Names the ranges the stream ended before: a warning when other clips were cut, an
    /// error when none was (downstream got no caps; a muxer would write an unreadable file).
    fn report_missed_clips(&self, pair: &PadPair, started: &[usize], ranges: &[ClipRange]) {
        let missed: Vec<String> = ranges
            .iter()
            .enumerate()
            .filter(|(i, _)| !started.contains(i))
            .map(|(_, r)| r.to_string())
            .collect();
        if missed.is_empty() {
            return;
        }
        let end = lock(&self.state)
            .streams
            .get(pair.index)
            .and_then(|s| s.last_pts);
        let end = match end {
            Some(t) => format!("its last frame is at {}", format_time(t.max(0) as u64)),
            None => "it had no frames".to_owned(),
        };
        let text = format!(
            "Clip range{} {} not in the stream: it ended first ({end})",
            if missed.len() > 1 { "s" } else { "" },
            missed.join(", ")
        );
        if started.is_empty() {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("{}", text));
        } else {
            gst::element_imp_warning!(self, gst::StreamError::Failed, ("{}", text));
        }
    }

    /// Drains the clip's re-encoder and pushes its frames. In `smart` mode the head's decode
    /// times are moved before the first copied frame's.
    fn finish_transcoder(
        &self,
        pair: &PadPair,
        ps: &mut PushState,
        mode: Mode,
        sink_caps: &Option<gst::Caps>,
    ) -> Result<(), gst::FlowError> {
        let Some(t) = ps.transcoder.take() else {
            return Ok(());
        };
        let encoded = t.finish().map_err(|e| self.transcode_error(&e))?;
        let mut buffers = std::mem::take(&mut ps.head);
        buffers.extend(encoded.buffers);
        if mode == Mode::Reencode {
            return self.push_encoded(pair, ps, buffers, encoded.caps);
        }
        if let (Some(limit), Some(last)) = (ps.head_end_dts, buffers.last()) {
            let last_dts = last.dts().or(last.pts()).map_or(0, |t| t.nseconds() as i64);
            let step = last.duration().map_or(1, |d| d.nseconds() as i64).max(1);
            let shift = (last_dts - limit + step).max(0);
            if shift > 0 {
                for b in buffers.iter_mut() {
                    let dts = b.dts().or(b.pts()).map_or(0, |t| t.nseconds() as i64);
                    b.make_mut().set_dts(clock(dts - shift));
                }
            }
        }
        // The head carries its own parameter sets in band; the stream's caps stay those of
        // the copied frames.
        self.push_encoded(pair, ps, buffers, sink_caps.clone())
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        let Some(pair) = self.pair_for(pad) else {
            return false;
        };
        match event.view() {
            EventView::Caps(c) => {
                let caps = c.caps_owned();
                let Some(s) = caps.structure(0) else {
                    return false;
                };
                let video = video_codec(s);
                let mut params = ParamSets::default();
                if let Some((Codec::H264, _)) = video {
                    for nal in parameter_sets(s, Codec::H264) {
                        params.add(&nal);
                    }
                }
                let caps_sets = video.map(|(codec, _)| (codec, parameter_sets(s, codec)));
                let kind = if video.is_some() {
                    Kind::Video
                } else if s.name().starts_with("audio/") {
                    Kind::Audio
                } else {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::CodecNotFound,
                        ["Unsupported stream on {}: {caps}", pad.name()]
                    );
                    return false;
                };
                {
                    let mut st = lock(&self.state);
                    if kind == Kind::Video
                        && st
                            .streams
                            .iter()
                            .enumerate()
                            .any(|(i, s)| i != pair.index && s.kind == Some(Kind::Video))
                    {
                        drop(st);
                        gst::element_imp_error!(
                            self,
                            gst::StreamError::Format,
                            ["Only one video stream is supported ({})", pad.name()]
                        );
                        return false;
                    }
                    let info = &mut st.streams[pair.index];
                    info.caps = Some(caps);
                    info.video = video;
                    info.params = Arc::new(params);
                    if let Some((codec, units)) = caps_sets {
                        // In-band sets seen before stay: new caps (a parser's update) need not
                        // repeat them.
                        let sets = Arc::make_mut(&mut info.sets);
                        sets.set_codec(codec);
                        for nal in units {
                            sets.add(&nal);
                        }
                    }
                    info.kind = Some(kind);
                    st.selector.set_kind(pair.index, kind);
                }
                // Caps are sent with each clip's first buffer.
                let _ = self.drain_own(pair.index);
                true
            }
            EventView::Segment(e) => {
                let seg = e.segment();
                let Some(seg) = seg.downcast_ref::<gst::ClockTime>() else {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ["Only TIME segments are supported on {}", pad.name()]
                    );
                    return false;
                };
                lock(&self.state).streams[pair.index].segment = Some(seg.clone());
                true
            }
            EventView::Gap(g) => {
                // Mapped into the clip's time by the selector, in order with the frames; a
                // gap in source time would hold a synchronised sink for as long as the
                // source's position is ahead of the clip's.
                let (ts, duration) = g.get();
                {
                    let mut st = lock(&self.state);
                    let at = st.streams[pair.index]
                        .segment
                        .as_ref()
                        .and_then(|seg| stream_ns(seg, ts));
                    if let Some(at) = at {
                        let duration = duration.map_or(0, |d| d.nseconds() as i64);
                        st.selector.gap(pair.index, at, duration);
                    }
                }
                let _ = self.drain_own(pair.index);
                true
            }
            EventView::Eos(_) => {
                {
                    let mut st = lock(&self.state);
                    let waiting = st.streams[pair.index]
                        .dts_synth
                        .as_mut()
                        .map(|s| s.drain())
                        .unwrap_or_default();
                    push_synthesized(&mut st.selector, pair.index, waiting);
                    st.selector.eos(pair.index);
                }
                let _ = self.drain_own(pair.index);
                // Done pushed EOS downstream already.
                true
            }
            EventView::FlushStart(_) => {
                lock(&self.state).streams[pair.index].flushing = true;
                gst::Pad::event_default(pad, Some(&*self.obj()), event)
            }
            EventView::FlushStop(_) => {
                // A seek restarts the timeline: the first flush of it re-reads the ranges so an
                // application can set them and then seek.
                let reload = {
                    let mut st = lock(&self.state);
                    st.streams[pair.index].flushing = false;
                    st.last_flush != Some(event.seqnum())
                };
                let ranges = if reload {
                    match self.load_ranges() {
                        Ok(r) => Some(r),
                        Err(e) => {
                            self.post_error_message(e);
                            None
                        }
                    }
                } else {
                    None
                };
                {
                    let mut st = lock(&self.state);
                    st.last_flush = Some(event.seqnum());
                    match ranges {
                        Some(Config {
                            mode,
                            exact_segment,
                            ranges,
                            reencode_filter,
                        }) => {
                            let mut selector = selector_for(mode, &ranges);
                            for info in &st.streams {
                                let i = selector.add_stream();
                                if let Some(kind) = info.kind {
                                    selector.set_kind(i, kind);
                                }
                                if info.released {
                                    selector.eos(i);
                                }
                            }
                            st.selector = selector;
                            st.mode = mode;
                            st.exact_segment = exact_segment;
                            st.reencode_filter = reencode_filter;
                            st.ranges = ranges;
                        }
                        None if reload => st.selector.flush(),
                        None => {}
                    }
                    if reload {
                        for info in &mut st.streams {
                            if let Some(s) = info.dts_synth.as_mut() {
                                s.clear();
                            }
                        }
                    }
                }
                {
                    let mut ps = lock(&pair.push);
                    ps.transcoder = None;
                    ps.head.clear();
                    ps.splicer = None;
                    ps.pending_segment = None;
                    ps.done = false;
                }
                *lock(&pair.clock) = ClipClock::default();
                gst::Pad::event_default(pad, Some(&*self.obj()), event)
            }
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    fn src_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        match self.pair_for(pad) {
            Some(pair) => pair.sink.push_event(event),
            None => false,
        }
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        let Some(pair) = self.pair_for(pad) else {
            return false;
        };
        // Upstream answers in the source's time; downstream sees clips, each from zero.
        match query.view_mut() {
            gst::QueryViewMut::Position(q) if q.format() == gst::Format::Time => {
                let c = lock(&pair.clock);
                let Some(position) = c.position else {
                    return false;
                };
                let end = c.stop.map_or(position, |s| position.min(s));
                q.set(clock(end - c.seg_start));
                true
            }
            gst::QueryViewMut::Duration(q) if q.format() == gst::Format::Time => {
                let c = lock(&pair.clock);
                let Some(stop) = c.stop else {
                    return false;
                };
                q.set(clock(stop - c.seg_start));
                true
            }
            gst::QueryViewMut::Position(_) | gst::QueryViewMut::Duration(_) => false,
            _ => pair.sink.peer_query(query),
        }
    }
}

impl ElementImpl for ClipExtract {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Clip extractor",
                "Filter/Editor/Video/Audio",
                "Outputs only the given time ranges of encoded streams (H.264, H.265 with \
                 alignment=au; AAC, Opus) after a demuxer and parsers, each clip as its own \
                 zero-based segment: stream copy from key frames, exact starts via segment/edit \
                 list, or re-encoding of the first group of pictures. Request one sink_%u pad \
                 per stream; src_%u carries that stream's clips. Per clip, downstream gets a \
                 serialized custom event clip-start (index guint, start/end guint64 ns of the \
                 requested range in source stream time, mode string, present-start and \
                 present-stop guint64 ns: the window players must present), caps, a TIME \
                 segment starting at the clip's first frame, the buffers, then a custom event \
                 clip-end (index). After the last clip every src pad gets EOS. Element messages: \
                 clip-started (index guint, start, end guint64 ns, first-frame guint64 ns: \
                 stream time of the first output frame) and clip-finished (index, start, end, \
                 frames-copied and frames-encoded guint64). Bad ranges are an element error \
                 naming the range.",
                "The hybridlive developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let sink_caps = gst::Caps::builder("video/x-h264")
                .field("alignment", "au")
                .build();
            let mut sink_caps = sink_caps;
            {
                let c = sink_caps.make_mut();
                c.append(
                    gst::Caps::builder("video/x-h265")
                        .field("alignment", "au")
                        .build(),
                );
                c.append(gst::Caps::builder("audio/mpeg").build());
                c.append(gst::Caps::builder("audio/x-opus").build());
                c.append(gst::Caps::builder("audio/x-ac3").build());
                c.append(gst::Caps::builder("audio/x-eac3").build());
            }
            vec![
                gst::PadTemplate::new(
                    "sink_%u",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &sink_caps,
                )
                .expect("valid sink template"),
                gst::PadTemplate::new(
                    "src_%u",
                    gst::PadDirection::Src,
                    gst::PadPresence::Sometimes,
                    &gst::Caps::new_any(),
                )
                .expect("valid src template"),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn request_new_pad(
        &self,
        templ: &gst::PadTemplate,
        name: Option<&str>,
        _caps: Option<&gst::Caps>,
    ) -> Option<gst::Pad> {
        if templ.direction() != gst::PadDirection::Sink {
            return None;
        }
        let mut pads = lock(&self.pads);
        let number = match name.and_then(|n| n.strip_prefix("sink_")) {
            Some(n) => n.parse::<u32>().ok()?,
            None => (0..)
                .find(|n| !pads.iter().any(|p| p.sink.name() == format!("sink_{n}")))
                .unwrap_or(0),
        };
        if pads
            .iter()
            .any(|p| p.sink.name() == format!("sink_{number}"))
        {
            return None;
        }
        let sink = gst::Pad::builder_from_template(templ)
            .name(format!("sink_{number}"))
            .chain_function(|pad, parent, buffer| {
                ClipExtract::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                ClipExtract::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .iterate_internal_links_function(iterate_internal_links)
            .build();
        let src_templ = self.obj().pad_template("src_%u")?;
        let src = gst::Pad::builder_from_template(&src_templ)
            .name(format!("src_{number}"))
            .event_function(|pad, parent, event| {
                ClipExtract::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_event(pad, event),
                )
            })
            .query_function(|pad, parent, query| {
                ClipExtract::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .iterate_internal_links_function(iterate_internal_links)
            .build();
        let index = {
            let mut st = lock(&self.state);
            st.streams.push(StreamInfo::default());
            st.selector.add_stream()
        };
        pads.push(PadPair {
            sink: sink.clone(),
            src: src.clone(),
            index,
            push: Arc::new(Mutex::new(PushState::default())),
            clock: Arc::default(),
        });
        drop(pads);
        let active = self.obj().current_state() > gst::State::Ready;
        if active {
            let _ = src.set_active(true);
            let _ = sink.set_active(true);
        }
        self.obj().add_pad(&src).ok()?;
        self.obj().add_pad(&sink).ok()?;
        Some(sink)
    }

    fn release_pad(&self, pad: &gst::Pad) {
        let pair = {
            let mut pads = lock(&self.pads);
            let Some(i) = pads.iter().position(|p| &p.sink == pad) else {
                return;
            };
            pads.remove(i)
        };
        {
            let mut st = lock(&self.state);
            if let Some(info) = st.streams.get_mut(pair.index) {
                info.released = true;
                if !st.selector.is_done(pair.index) {
                    st.selector.eos(pair.index);
                }
            }
        }
        let _ = self.obj().remove_pad(&pair.src);
        let _ = self.obj().remove_pad(&pair.sink);
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::ReadyToPaused {
            match self.load_ranges() {
                Ok(config) => self.reset_state(config),
                Err(e) => {
                    self.post_error_message(e);
                    return Err(gst::StateChangeError);
                }
            }
        }
        let ret = self.parent_change_state(transition)?;
        if transition == gst::StateChange::PausedToReady {
            for p in self.pairs() {
                lock(&p.push).transcoder = None;
            }
        }
        Ok(ret)
    }
}

/// Internal links of a sink or src pad: the other pad of its pair, so that queries and
/// events forwarded by GStreamer's defaults reach the right stream.
fn iterate_internal_links(pad: &gst::Pad, parent: Option<&gst::Object>) -> gst::Iterator<gst::Pad> {
    ClipExtract::catch_panic_pad_function(
        parent,
        || gst::Iterator::from_vec(vec![]),
        |imp| gst::Iterator::from_vec(imp.linked_pad(pad).into_iter().collect()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An H.265 access unit of one slice of NAL type `nal_type` in sub-layer `temporal_id`.
    fn h265_au(nal_type: u8, temporal_id: u8) -> Vec<u8> {
        vec![0, 0, 0, 1, nal_type << 1, temporal_id + 1, 0xaf, 0x10]
    }

    #[test]
    fn h265_sub_layer_non_reference_pictures_go_only_from_the_highest_sub_layer() {
        let disposable = |au: &[u8], max| is_disposable(au, Codec::H265, Framing::AnnexB, max);
        // TRAIL_N (0) of sub-layer 0 with a sub-layer 1 above it: sub-layer 1 may refer to it.
        assert!(!disposable(&h265_au(0, 0), Some(1)));
        assert!(disposable(&h265_au(0, 1), Some(1)));
        assert!(disposable(&h265_au(0, 0), Some(0)));
        // Unknown layering: kept. TRAIL_R (1) is always kept.
        assert!(!disposable(&h265_au(0, 0), None));
        assert!(!disposable(&h265_au(1, 1), Some(1)));
    }
}
