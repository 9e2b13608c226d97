//! Cuts one clip out of one recording into an MP4 file.
//!
//! `filesrc ! parsebin`, each elementary stream into `clipextract`, its outputs into `mp4mux`
//! and a temporary file; the recording is first seeked to the key frame before the clip so
//! only the clip's neighbourhood is read. After EOS the clip's presentation window becomes
//! the MP4 edit list, then the file is renamed to its final name: a clip is either complete
//! under its final name or absent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use gst::prelude::*;
use gstclip::{CLIP_START_EVENT, ClipMode};
use hybridlive_timeline::ClipRange;

use crate::mp4edit::{TrackEdit, TrackPatch, orientation_matrix, patch_tracks};
use crate::readers::{lock, make, on_parsed_stream, presented_stream_time};
use crate::vertical::{Crop, Vertical, swaps_axes, upright_direction};

/// How far before the clip the recording is seeked to. Demuxers of fragmented files land each
/// stream on its own fragment boundary, so audio could start after the video's key frame;
/// clipextract finds the key frame itself in what flows from here.
const SEEK_MARGIN: u64 = 2_000_000_000;

/// How long a pipeline may make no progress before the cut is abandoned.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the queue in front of the gate may hold while the gate waits for every stream's first
/// buffer: a stream that starts seconds after the others (audio recorded late, an `ffmpeg -ss`
/// copy) comes only after that much of the others, so no time or buffer limit; bytes bound it.
const GATE_QUEUE_BYTES: u32 = 64 * 1024 * 1024;

/// Bit rate PCM audio is encoded to AAC at, per channel (transparent for speech and music).
const PCM_AAC_BITRATE_PER_CHANNEL: i32 = 128_000;

/// How far `avenc_aac`'s output lags the timestamps it gives it, in samples: FFmpeg's AAC
/// encoder primes with 1024 samples and emits each frame one frame late, and GStreamer's
/// audio encoder base class stamps outputs with the input's times (measured with 1 kHz bursts
/// against white frames: 42 ms late at 48 kHz, see the real_footage PCM test).
const AAC_ENCODER_DELAY_SAMPLES: u64 = 2048;

/// A finished clip.
#[derive(Debug, Clone)]
pub struct CutResult {
    /// Presented duration (ns).
    pub duration: u64,
    /// Stream time of the first frame in the file (the key frame the clip decodes from).
    pub first_frame: u64,
    /// Coded frames copied from the recording.
    pub frames_copied: u64,
    /// Frames re-encoded.
    pub frames_encoded: u64,
    /// The crop, for a vertical clip.
    pub crop: Option<Crop>,
    /// What the clip does not carry as the recording had it (a dropped track, encoded PCM).
    pub notes: Vec<String>,
}

/// What the src pad probes learn about each output track.
#[derive(Debug, Default, Clone)]
struct TrackInfo {
    handler: &'static str,
    present_start: Option<u64>,
    present_stop: Option<u64>,
    first_dts: Option<u64>,
    /// Earliest presentation time of the track's frames (clip-relative).
    first_pts: Option<u64>,
    end: u64,
    /// The earliest presentation time inside the presentation window.
    first_shown: Option<u64>,
    /// Opus: the `OpusHead` the `dOps` is rebuilt from.
    opus_head: Option<Vec<u8>>,
}

/// Holds each stream at its first buffer until the seek is sent, so nothing from the file's
/// start (not even an EOS of a short file) reaches clipextract. The first buffers also give
/// the recording's origin: the stream time of its first frame, which users call 0.
#[derive(Clone, Default)]
struct Gate {
    probes: Arc<Mutex<Vec<(gst::Pad, gst::PadProbeId)>>>,
    /// Streams that reached the gate.
    hits: Arc<std::sync::atomic::AtomicUsize>,
    /// Smallest stream time of the first buffers.
    origin: Arc<Mutex<Option<u64>>>,
    /// The video's `image-orientation` tag.
    orientation: Arc<Mutex<Option<String>>>,
    /// The queues in front of the gate, unbounded in time until it opens.
    queues: Arc<Mutex<Vec<gst::Element>>>,
    /// Set (under the `probes` lock) once the gate opened: a stream the demuxer exposes after
    /// that must not be held at a gate nobody opens again, or its track reaches the muxer
    /// with no media at all.
    opened: Arc<AtomicBool>,
}

impl Gate {
    fn open(&self) {
        // Back to a queue's usual bounds: from here on streams flow together.
        for q in lock(&self.queues).drain(..) {
            q.set_property("max-size-time", gst::ClockTime::SECOND.nseconds());
            q.set_property("max-size-buffers", 200u32);
            q.set_property("max-size-bytes", 10u32 * 1024 * 1024);
        }
        let mut probes = lock(&self.probes);
        self.opened.store(true, Ordering::SeqCst);
        for (pad, id) in probes.drain(..) {
            pad.remove_probe(id);
        }
    }

    fn streams(&self) -> usize {
        lock(&self.probes).len()
    }
}

/// A range as clipextract reads it, to the nanosecond.
fn range_property(start: u64, end: u64) -> String {
    let s = |ns: u64| format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000);
    format!("{}-{}", s(start), s(end))
}

#[derive(Default)]
struct Shared {
    /// Per clipextract src pad, in mp4mux request order per handler.
    tracks: Vec<TrackInfo>,
    error: Option<String>,
    crop: Option<Crop>,
    /// Coded size of the video.
    video_size: Option<(u32, u32)>,
    /// Its pixel aspect ratio (numerator, denominator).
    video_par: Option<(u32, u32)>,
    /// The range in the recording's stream time, once its origin is known.
    window: Option<(u64, u64)>,
    /// Source video frames that start in `window`.
    frames_in_window: u64,
    notes: Vec<String>,
}

/// The temporary name `output` is written under before it is complete: unique to this
/// process and cut, so two runs writing the same clip into one folder do not share it.
pub fn temp_path(output: &Path) -> PathBuf {
    static CUTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = CUTS.fetch_add(1, Ordering::Relaxed);
    output.with_file_name(format!(".{name}.{}-{n}.part", std::process::id()))
}

/// Cuts `range` of `source` into `output` (MP4). `progress` gets the fraction done. With
/// `vertical` the video is re-encoded as a 9:16 crop (whatever `mode` says).
pub fn cut(
    source: &Path,
    range: ClipRange,
    mode: ClipMode,
    vertical: Option<&Vertical>,
    output: &Path,
    progress: &dyn Fn(f64),
) -> anyhow::Result<CutResult> {
    let temp = temp_path(output);
    let mode = if vertical.is_some() {
        ClipMode::Reencode
    } else {
        mode
    };
    let mut result = cut_to(source, range, mode, vertical, &temp, progress);
    if result
        .as_ref()
        .is_err_and(crate::mp4edit::EmptyTrack::is_cause_of)
    {
        // Now and then (about 1 cut in 50 with four cuts at once on two cores) a keyframe
        // cut's audio reaches mp4mux with neither caps nor media; the cause is not found yet.
        // The cut is checked, so such a clip is never kept: it is cut again, once.
        gst::info!(
            gst::CAT_DEFAULT,
            "a track of the clip came out empty: cutting it again"
        );
        result = cut_to(source, range, mode, vertical, &temp, progress);
    }
    match result {
        Ok(r) => {
            std::fs::rename(&temp, output).with_context(|| {
                format!("cannot rename {} to {}", temp.display(), output.display())
            })?;
            Ok(r)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

fn cut_to(
    source: &Path,
    range: ClipRange,
    mode: ClipMode,
    vertical: Option<&Vertical>,
    temp: &Path,
    progress: &dyn Fn(f64),
) -> anyhow::Result<CutResult> {
    match std::fs::metadata(source) {
        Ok(m) if !m.is_file() => bail!("not a regular file"),
        Ok(m) if m.len() == 0 => bail!("the file is empty"),
        Ok(_) => {}
        Err(e) => bail!("cannot read it: {e}"),
    }
    // GStreamer takes file names as UTF-8 strings: a lossy conversion would name another file.
    let Some(location) = source.to_str() else {
        bail!("its file name is not valid UTF-8, which GStreamer cannot open: rename it");
    };
    std::fs::File::open(source).map_err(|e| anyhow!("cannot read it: {e}"))?;
    let Some(temp_location) = temp.to_str() else {
        bail!(
            "the output path {} is not valid UTF-8, which GStreamer cannot write to",
            temp.display()
        );
    };
    // filesink's failure to open would surface as the pipeline not starting.
    std::fs::File::create(temp).map_err(|e| {
        anyhow!(
            "cannot write the clip into {}: {e}",
            temp.parent().unwrap_or(temp).display()
        )
    })?;
    let pipeline = gst::Pipeline::new();
    let filesrc = make("filesrc")?;
    filesrc.set_property("location", location);
    let parsebin = make("parsebin")?;
    let clip = make("clipextract")?;
    clip.set_property("ranges", range.to_string());
    clip.set_property("mode", mode);
    let mux = make("mp4mux")?;
    let sink = make("filesink")?;
    sink.set_property("location", temp_location);
    sink.set_property("async", false);
    pipeline.add_many([&filesrc, &parsebin, &clip, &mux, &sink])?;
    filesrc.link(&parsebin)?;
    mux.link(&sink)?;

    let shared = Arc::new(Mutex::new(Shared::default()));
    // qtdemux reads a MOV/MP4 timecode track into tags and exposes no stream for it, so it
    // would be dropped without the note every other dropped track gets.
    if crate::mp4edit::track_handlers(source).is_ok_and(|h| h.iter().any(|h| h == "tmcd")) {
        lock(&shared)
            .notes
            .push("timecode track dropped: clips carry no timecode".into());
    }
    // Buffers pass into clipextract only after the seek (or right away when none is needed),
    // so nothing from the file's start reaches the muxer.
    let gate = Gate::default();

    {
        let clip = clip.clone();
        let mux = mux.clone();
        let shared = shared.clone();
        let gate = gate.clone();
        on_parsed_stream(&pipeline, &parsebin, move |pipeline, pad| {
            if let Err(e) = link_stream(pipeline, pad, &clip, &mux, &shared, &gate) {
                lock(&shared).error.get_or_insert(e.to_string());
            }
        });
    }

    let bus = pipeline
        .bus()
        .ok_or_else(|| anyhow!("pipeline without bus"))?;
    let run = || -> anyhow::Result<CutResult> {
        pipeline
            .set_state(gst::State::Paused)
            .map_err(|_| anyhow!("cannot open the recording"))?;
        {
            // Wait until every stream the demuxer exposed holds its first buffer at the gate,
            // then seek to the key frame before the clip. The seek goes through clipextract
            // to the demuxer (muxers do not forward seeks); its flush makes clipextract read
            // the ranges again, now moved by the recording's origin.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let streams = gate.streams();
                if streams > 0 && gate.hits.load(Ordering::SeqCst) >= streams {
                    break;
                }
                if Instant::now() > deadline {
                    if streams == 0 {
                        bail!("no H.264/H.265 video or audio stream found");
                    }
                    break;
                }
                if let Some(msg) = bus.timed_pop_filtered(
                    gst::ClockTime::from_mseconds(10),
                    &[gst::MessageType::Error, gst::MessageType::Toc],
                ) {
                    if msg.type_() == gst::MessageType::Toc {
                        note_chapters(&shared);
                        continue;
                    }
                    return Err(stream_error(&shared, &msg));
                }
                if let Some(e) = lock(&shared).error.take() {
                    bail!(e);
                }
            }
            let origin = lock(&gate.origin).unwrap_or(0);
            lock(&shared).window = Some((range.start + origin, range.end + origin));
            if let Some(v) = vertical {
                let orientation = lock(&gate.orientation).clone();
                let (size, par) = {
                    let sh = lock(&shared);
                    (sh.video_size, sh.video_par)
                };
                let crop = vertical_crop(*v, size, par, orientation.as_deref())?;
                clip.set_property("reencode-filter", crop.filter());
                lock(&shared).crop = Some(crop);
            }
            clip.set_property(
                "ranges",
                range_property(range.start + origin, range.end + origin),
            );
            let flags =
                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT | gst::SeekFlags::SNAP_BEFORE;
            let seek = gst::event::Seek::new(
                1.0,
                flags,
                gst::SeekType::Set,
                gst::ClockTime::from_nseconds((range.start + origin).saturating_sub(SEEK_MARGIN)),
                gst::SeekType::None,
                gst::ClockTime::NONE,
            );
            // When not seekable the recording is read from the start; clipextract skips what
            // precedes the clip.
            let _ = clip.send_event(seek);
            gate.open();
        }
        if let Some(e) = lock(&shared).error.take() {
            bail!(e);
        }
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|_| anyhow!("cannot start the pipeline"))?;

        let mut first_frame = None;
        let mut frames = (0u64, 0u64);
        let mut last_in = 0u64;
        let mut last_progress = Instant::now();
        loop {
            if let Some(e) = lock(&shared).error.take() {
                bail!(e);
            }
            let msg = bus.timed_pop(gst::ClockTime::from_mseconds(200));
            if let Some(msg) = msg {
                use gst::MessageView;
                match msg.view() {
                    MessageView::Eos(_) => break,
                    MessageView::Error(_) => return Err(stream_error(&shared, &msg)),
                    MessageView::Toc(_) => note_chapters(&shared),
                    MessageView::Element(e) => {
                        if let Some(s) = e.structure() {
                            if s.name() == "clip-started" {
                                first_frame = s.get::<u64>("first-frame").ok();
                            } else if s.name() == "clip-finished" {
                                frames = (
                                    s.get::<u64>("frames-copied").unwrap_or(0),
                                    s.get::<u64>("frames-encoded").unwrap_or(0),
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
            let stats = clip.property::<gst::Structure>("stats");
            // Input read or frames re-encoded: a re-encoder draining a long clip after the
            // last input is progress too.
            let frames_in = stats.get::<u64>("frames-in").unwrap_or(0)
                + stats.get::<u64>("frames-encoded").unwrap_or(0);
            if frames_in != last_in {
                last_in = frames_in;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL_TIMEOUT {
                bail!("no progress for {} s", STALL_TIMEOUT.as_secs());
            }
            if let Some(pos) = pipeline.query_position::<gst::ClockTime>() {
                let done = (pos.nseconds().saturating_sub(range.start)) as f64
                    / range.duration().max(1) as f64;
                progress(done.clamp(0.0, 1.0));
            }
        }
        let Some(first_frame) = first_frame else {
            bail!("the recording has no video or audio in {range}: it ended before it?");
        };
        let (crop, notes) = {
            let sh = lock(&shared);
            (sh.crop, sh.notes.clone())
        };
        Ok(CutResult {
            duration: 0,
            first_frame: first_frame.saturating_sub(lock(&gate.origin).unwrap_or(0)),
            frames_copied: frames.0,
            frames_encoded: frames.1,
            crop,
            notes,
        })
    };
    let result = run();
    let _ = pipeline.set_state(gst::State::Null);
    let mut result = result?;

    let tracks = lock(&shared).tracks.clone();
    if tracks.iter().all(|t| t.first_dts.is_none()) {
        bail!("no frames were written for {range}");
    }
    // Re-encoded clips always hold a frame (the decoder keeps one that overlaps the range):
    // what counts is whether a frame of the recording starts in the range.
    if mode != ClipMode::Keyframe
        && tracks.iter().any(|t| t.handler == "vide")
        && lock(&shared).frames_in_window == 0
    {
        bail!(
            "no video frame starts in {range}: the range is shorter than one frame \
             (give a longer range)"
        );
    }
    // A rotated source's display matrix: mp4mux writes identity. A vertical clip is turned
    // upright when it is re-encoded, so it has none left to signal.
    let matrix = lock(&gate.orientation)
        .as_deref()
        .filter(|_| vertical.is_none())
        .and_then(orientation_matrix);
    // The clip starts on its first video frame: a range starting between two frames would
    // otherwise begin with part of the frame before, which ffmpeg shows from the next frame on
    // and moves the video early against the audio. Tracks share the clip's timeline.
    // (A video that only begins after the start keeps its empty edit instead.) The same holds
    // for a range starting in a gap of a variable frame rate video.
    let video_start = tracks
        .iter()
        .find(|t| t.handler == "vide")
        .filter(|_| result.first_frame < range.start)
        .and_then(|t| t.first_shown);
    let patches: Vec<(&'static str, TrackPatch)> = tracks
        .iter()
        .map(|t| {
            let edit = match (t.present_start, t.present_stop, t.first_dts) {
                // Keyframe clips start on the key frame but end where the range does: frames
                // decoded before the end can be shown after it (B-frames), and mp4mux's own
                // edit list shows them.
                (Some(start), _, Some(first)) if mode == ClipMode::Keyframe => {
                    let stop = start + range.end.saturating_sub(result.first_frame);
                    Some(track_edit(start, stop.min(t.end), first, t.first_pts))
                }
                (Some(start), Some(stop), Some(first)) => {
                    let start = video_start.map_or(start, |v| v.clamp(start, stop));
                    Some(track_edit(start, stop.min(t.end), first, t.first_pts))
                }
                _ => None,
            };
            let patch = TrackPatch {
                edit,
                matrix: matrix.filter(|_| t.handler == "vide"),
                opus_head: t.opus_head.clone(),
            };
            (t.handler, patch)
        })
        .collect();
    if patches.iter().any(|(_, p)| *p != TrackPatch::default()) {
        patch_tracks(temp, |handler, n| {
            patches
                .iter()
                .filter(|(h, _)| *h == handler)
                .nth(n)
                .map(|(_, p)| p.clone())
                .unwrap_or_default()
        })
        .context("cannot rewrite the clip's moov (edit lists, rotation, Opus header)")?;
    }
    result.duration = patches
        .iter()
        .filter_map(|(_, p)| p.edit.map(|e| e.empty + e.duration))
        .max()
        .unwrap_or_else(|| {
            tracks
                .iter()
                .map(|t| t.end.saturating_sub(t.present_start.unwrap_or(0)))
                .max()
                .unwrap_or(0)
        });
    Ok(result)
}

/// The edit presenting clip-relative `[start, stop)` of a track whose first frame is decoded
/// at `first_dts` and whose earliest frame is shown at `first_pts`: a track that starts after
/// `start` (audio recorded after the video began, or the reverse) gets an empty edit so it
/// stays in sync instead of moving to the clip's start.
fn track_edit(start: u64, stop: u64, first_dts: u64, first_pts: Option<u64>) -> TrackEdit {
    let shown_from = first_pts.map_or(start, |p| p.max(start)).min(stop);
    TrackEdit {
        empty: shown_from - start,
        media_time: shown_from.saturating_sub(first_dts),
        duration: stop - shown_from,
    }
}

/// The 9:16 crop of the video as it is displayed: a rotated source is turned upright first,
/// and non-square pixels (anamorphic PAL/NTSC) are cropped in display pixels then scaled to
/// square ones.
fn vertical_crop(
    v: Vertical,
    size: Option<(u32, u32)>,
    par: Option<(u32, u32)>,
    orientation: Option<&str>,
) -> anyhow::Result<Crop> {
    let Some((w, h)) = size else {
        bail!("the video size is unknown: cannot crop it");
    };
    let turn = orientation.and_then(upright_direction);
    if orientation.is_some_and(swaps_axes) {
        let mut crop = v.crop(h, w).map_err(|e| anyhow!(e))?;
        crop.turn = turn;
        return Ok(crop);
    }
    let (n, d) = par.unwrap_or((1, 1));
    // Display width of the coded picture; the crop is chosen there.
    let shown = (u64::from(w) * u64::from(n) / u64::from(d)) as u32;
    let mut crop = v.crop(shown, h).map_err(|e| anyhow!(e))?;
    if (n, d) != (1, 1) && shown != w {
        let coded = |x: u32| (u64::from(x) * u64::from(d) / u64::from(n)) as u32;
        crop.left = coded(crop.left);
        crop.right = coded(crop.right).min(w.saturating_sub(crop.left + 2));
    }
    crop.turn = turn;
    Ok(crop)
}

/// The error to report for an error message on the bus: a stream refused while linking (an
/// unsupported codec, absurd dimensions) makes the demuxer fail with `not-linked`, which says
/// nothing to a user, so the refusal wins.
fn stream_error(shared: &Mutex<Shared>, msg: &gst::Message) -> anyhow::Error {
    match lock(shared).error.take() {
        Some(refused) => anyhow!(refused),
        None => bus_error(msg),
    }
}

fn bus_error(msg: &gst::Message) -> anyhow::Error {
    match msg.view() {
        gst::MessageView::Error(e) => {
            // The debug text starts with GStreamer's source location and element path; only
            // its last line (when it has more than one) says something to a user.
            let detail = e
                .debug()
                .and_then(|d| d.lines().skip(1).last().map(|l| format!(" ({})", l.trim())))
                .unwrap_or_default();
            let src = msg
                .src()
                .map(|s| format!("{}: ", s.name()))
                .unwrap_or_default();
            anyhow!("{src}{}{detail}", e.error())
        }
        _ => anyhow!("pipeline error"),
    }
}

/// Links one parsed elementary stream into clipextract.
fn link_stream(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    clip: &gst::Element,
    mux: &gst::Element,
    shared: &Arc<Mutex<Shared>>,
    gate: &Gate,
) -> anyhow::Result<()> {
    let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
    let s = caps
        .structure(0)
        .ok_or_else(|| anyhow!("stream without caps"))?;
    let name = s.name().as_str();
    if let (Ok(width), Ok(height)) = (s.get::<i32>("width"), s.get::<i32>("height")) {
        let max = hybridlive_encoders::MAX_FRAME_PIXELS;
        let pixels = u64::try_from(i64::from(width) * i64::from(height)).unwrap_or(0);
        if pixels == 0 || pixels > max {
            bail!(
                "the video claims {width}x{height} pixels: beyond what any H.264/H.265 level \
                 allows ({max} pixels a frame), so the stream is corrupt"
            );
        }
    }
    let queue = make("queue")?;
    queue.set_property("max-size-time", 0u64);
    queue.set_property("max-size-buffers", 0u32);
    queue.set_property("max-size-bytes", GATE_QUEUE_BYTES);
    lock(&gate.queues).push(queue.clone());
    let mut chain = vec![queue];
    let mut opus_head = None;
    match name {
        "video/x-h264" | "video/x-h265" => {
            let (parser, format) = if name == "video/x-h264" {
                ("h264parse", "avc")
            } else {
                ("h265parse", "hvc1")
            };
            chain.push(make(parser)?);
            let filter = make("capsfilter")?;
            filter.set_property(
                "caps",
                gst::Caps::builder(name)
                    .field("stream-format", format)
                    .field("alignment", "au")
                    .build(),
            );
            chain.push(filter);
            if let (Ok(w), Ok(h)) = (s.get::<i32>("width"), s.get::<i32>("height")) {
                let mut sh = lock(shared);
                sh.video_size = Some((w.max(0) as u32, h.max(0) as u32));
                sh.video_par = s
                    .get::<gst::Fraction>("pixel-aspect-ratio")
                    .ok()
                    .filter(|f| f.numer() > 0 && f.denom() > 0)
                    .map(|f| (f.numer() as u32, f.denom() as u32));
            }
        }
        "audio/mpeg" if !matches!(s.get::<i32>("mpegversion"), Ok(1)) => {
            // MPEG-TS carries AAC as ADTS; MP4 wants raw AAC.
            chain.push(make("aacparse")?);
            let filter = make("capsfilter")?;
            filter.set_property(
                "caps",
                gst::Caps::builder("audio/mpeg")
                    .field("stream-format", "raw")
                    .build(),
            );
            chain.push(filter);
        }
        "audio/x-opus" => {
            // mp4mux 1.22 writes Matroska's little-endian OpusHead into dOps unswapped: keep
            // the header to rewrite dOps.
            opus_head = s
                .get::<gst::Array>("streamheader")
                .ok()
                .and_then(|a| a.first().and_then(|v| v.get::<gst::Buffer>().ok()))
                .and_then(|b| b.map_readable().ok().map(|m| m.to_vec()))
                .filter(|h| h.starts_with(b"OpusHead"));
        }
        "audio/mpeg" | "audio/x-ac3" | "audio/x-eac3" => {}
        "audio/x-raw" => {
            // MP4 (mp4mux) has no PCM: encode it to AAC, and say so.
            let channels = s.get::<i32>("channels").unwrap_or(2).clamp(1, 8);
            chain.push(make("audioconvert")?);
            let encoder = make("avenc_aac")?;
            encoder.set_property("bitrate", PCM_AAC_BITRATE_PER_CHANNEL * channels);
            let rate = s
                .get::<i32>("rate")
                .ok()
                .filter(|r| *r > 0)
                .unwrap_or(48_000);
            compensate_encoder_delay(&encoder, rate as u64)?;
            chain.push(encoder);
            chain.push(make("aacparse")?);
            let format = s.get::<&str>("format").unwrap_or("PCM");
            lock(shared).notes.push(format!(
                "PCM audio ({format}, {channels} channel(s)) encoded to AAC at {} kbit/s: MP4 \
                 clips cannot carry PCM",
                PCM_AAC_BITRATE_PER_CHANNEL * channels / 1000
            ));
        }
        n if n.starts_with("video/") => {
            bail!("unsupported video codec {n} (H.264 or H.265 needed)")
        }
        _ => {
            // Subtitles, timecode, chapters, unsupported audio: not part of clips, and the
            // manifest says so.
            lock(shared)
                .notes
                .push(format!("{} track dropped", track_kind(name)));
            let fakesink = make("fakesink")?;
            pipeline.add(&fakesink)?;
            fakesink.sync_state_with_parent()?;
            pad.link(
                &fakesink
                    .static_pad("sink")
                    .ok_or_else(|| anyhow!("fakesink"))?,
            )?;
            return Ok(());
        }
    }
    for e in &chain {
        pipeline.add(e)?;
    }
    gst::Element::link_many(chain.iter())?;
    let sink = clip
        .request_pad_simple("sink_%u")
        .ok_or_else(|| anyhow!("clipextract refused a stream"))?;
    let src = clip
        .static_pad(&sink.name().replace("sink_", "src_"))
        .ok_or_else(|| anyhow!("clipextract has no output for {}", sink.name()))?;
    let handler = if name.starts_with("video/") {
        "vide"
    } else {
        "soun"
    };
    link_output(pipeline, &src, mux, shared, handler, opus_head)?;
    let last = chain.last().ok_or_else(|| anyhow!("empty chain"))?;
    last.static_pad("src")
        .ok_or_else(|| anyhow!("no src pad"))?
        .link(&sink)?;
    // Hold the stream at its first buffer until the seek; the seek's flush drops it. A stream
    // that ends without a buffer counts as there.
    let g = gate.clone();
    let hit = Arc::new(AtomicBool::new(false));
    let hit_eos = hit.clone();
    let is_video = handler == "vide";
    // Held across adding the probe, so that the gate cannot open in between unseen.
    let mut probes = lock(&gate.probes);
    let opened = gate.opened.load(Ordering::SeqCst);
    let id = (!opened).then(|| {
        sink.add_probe(
            gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER,
            move |pad, info| {
                if hit.swap(true, Ordering::SeqCst) {
                    return gst::PadProbeReturn::Ok;
                }
                // Audio's first frames can lie before the segment (AAC priming the edit list
                // hides): what is presented starts at the segment's start.
                if let Some(t) = info.buffer().and_then(|b| presented_stream_time(pad, b)) {
                    let mut origin = lock(&g.origin);
                    *origin = Some(origin.map_or(t.nseconds(), |o| o.min(t.nseconds())));
                }
                if is_video {
                    *lock(&g.orientation) = orientation(pad);
                }
                g.hits.fetch_add(1, Ordering::SeqCst);
                gst::PadProbeReturn::Ok
            },
        )
    });
    if let Some(Some(id)) = id {
        probes.push((sink.clone(), id));
    }
    drop(probes);
    if is_video {
        let shared = shared.clone();
        sink.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let seg = pad
                .sticky_event::<gst::event::Segment>(0)
                .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned());
            if let (Some(seg), Some(b)) = (seg, info.buffer())
                && let Some(t) = b.pts().and_then(|t| seg.to_stream_time(t))
            {
                let mut sh = lock(&shared);
                if sh
                    .window
                    .is_some_and(|(s, e)| (s..e).contains(&t.nseconds()))
                {
                    sh.frames_in_window += 1;
                }
            }
            gst::PadProbeReturn::Ok
        });
    }
    let g = gate.clone();
    sink.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(e)) = &info.data
            && e.type_() == gst::EventType::Eos
            && !hit_eos.swap(true, Ordering::SeqCst)
        {
            g.hits.fetch_add(1, Ordering::SeqCst);
        }
        gst::PadProbeReturn::Ok
    });
    for e in &chain {
        e.sync_state_with_parent()?;
    }
    let first = chain.first().ok_or_else(|| anyhow!("empty chain"))?;
    pad.link(
        &first
            .static_pad("sink")
            .ok_or_else(|| anyhow!("no sink pad"))?,
    )?;
    Ok(())
}

/// Moves the encoder's output back onto the input's timeline; the priming frames that would
/// go before zero are dropped.
fn compensate_encoder_delay(encoder: &gst::Element, rate: u64) -> anyhow::Result<()> {
    let delay = gst::ClockTime::from_nseconds(
        AAC_ENCODER_DELAY_SAMPLES * gst::ClockTime::SECOND.nseconds() / rate,
    );
    let src = encoder
        .static_pad("src")
        .ok_or_else(|| anyhow!("encoder without src pad"))?;
    src.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(gst::PadProbeData::Buffer(b)) = info.data.as_mut() else {
            return gst::PadProbeReturn::Ok;
        };
        match b.pts().and_then(|p| p.checked_sub(delay)) {
            Some(pts) => {
                let b = b.make_mut();
                b.set_pts(pts);
                b.set_dts(b.dts().and_then(|d| d.checked_sub(delay)).or(Some(pts)));
                gst::PadProbeReturn::Ok
            }
            None => gst::PadProbeReturn::Drop,
        }
    });
    Ok(())
}

/// The recording has chapters (a table of contents): MP4 clips do not carry them.
fn note_chapters(shared: &Mutex<Shared>) {
    const NOTE: &str = "chapters dropped";
    let mut sh = lock(shared);
    if !sh.notes.iter().any(|n| n == NOTE) {
        sh.notes.push(NOTE.to_owned());
    }
}

/// What a user calls a stream of these caps.
fn track_kind(caps_name: &str) -> String {
    match caps_name {
        n if n.starts_with("text/") || n.starts_with("subtitle/") || n.contains("sub") => {
            "subtitle".to_owned()
        }
        n if n.contains("timecode") => "timecode".to_owned(),
        n if n.starts_with("audio/") => format!("audio ({n}, not supported in MP4 clips)"),
        n => n.to_owned(),
    }
}

/// The `image-orientation` tag among the pad's sticky tag events.
fn orientation(pad: &gst::Pad) -> Option<String> {
    (0..)
        .map_while(|i| pad.sticky_event::<gst::event::Tag>(i))
        .find_map(|e| {
            e.tag()
                .get::<gst::tags::ImageOrientation>()
                .map(|v| v.get().to_owned())
        })
}

/// Links one clipextract output to the muxer and watches it for the edit list.
fn link_output(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    mux: &gst::Element,
    shared: &Arc<Mutex<Shared>>,
    handler: &'static str,
    opus_head: Option<Vec<u8>>,
) -> anyhow::Result<()> {
    // Re-encoded video comes out late (encoder look-ahead, the smart head is held until the
    // next key frame) while audio flows on: bound the muxer's input queues by bytes only, or
    // the muxer waits for video while the demuxer is stuck on a full audio queue.
    let queue = make("queue")?;
    queue.set_property("max-size-time", 0u64);
    queue.set_property("max-size-buffers", 0u32);
    queue.set_property("max-size-bytes", 512u32 * 1024 * 1024);
    pipeline.add(&queue)?;
    queue.sync_state_with_parent()?;
    pad.link(&queue.static_pad("sink").ok_or_else(|| anyhow!("queue"))?)?;
    let template = if handler == "vide" {
        "video_%u"
    } else {
        "audio_%u"
    };
    let mux_pad = mux
        .request_pad_simple(template)
        .ok_or_else(|| anyhow!("mp4mux refused a {template} pad"))?;
    queue
        .static_pad("src")
        .ok_or_else(|| anyhow!("queue"))?
        .link(&mux_pad)?;
    let index = {
        let mut sh = lock(shared);
        sh.tracks.push(TrackInfo {
            handler,
            opus_head,
            ..Default::default()
        });
        sh.tracks.len() - 1
    };
    let shared = shared.clone();
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            let mut sh = lock(&shared);
            let t = &mut sh.tracks[index];
            match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => {
                    let dts = b.dts().or(b.pts()).map(|t| t.nseconds());
                    if t.first_dts.is_none() {
                        t.first_dts = dts;
                    }
                    if let Some(pts) = b.pts() {
                        let end = pts + b.duration().unwrap_or(gst::ClockTime::ZERO);
                        t.end = t.end.max(end.nseconds());
                        let pts = pts.nseconds();
                        t.first_pts = Some(t.first_pts.map_or(pts, |p| p.min(pts)));
                        if t.present_start.is_some_and(|s| pts >= s)
                            && t.present_stop.is_none_or(|s| pts < s)
                        {
                            t.first_shown = Some(t.first_shown.map_or(pts, |p| p.min(pts)));
                        }
                    }
                }
                Some(gst::PadProbeData::Event(e)) => {
                    if let Some(s) = e.structure()
                        && s.name() == CLIP_START_EVENT
                    {
                        t.present_start = s.get::<u64>("present-start").ok();
                        t.present_stop = s.get::<u64>("present-stop").ok();
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
    Ok(())
}
