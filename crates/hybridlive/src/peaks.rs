//! Loudness peaks: the moments the room got loud (applause, laughter, a cheer), found in a
//! recording's audio.
//!
//! The first audio stream is decoded to float samples (`parsebin`, a decoder, `audioconvert`)
//! and measured with EBU R128 (ITU-R BS.1770 K-weighting, the `ebur128` crate): the programme
//! loudness is the gated integrated loudness of the whole recording, and every 100 ms the
//! momentary loudness (400 ms window) is compared with it. K-weighted loudness, not plain RMS:
//! it follows what listeners hear (a low hum counts less than hands clapping), and the
//! programme loudness gives a threshold in LU that means the same in a quiet and a loud room.
//! The 400 ms momentary window, rather than the 3 s short-term one, places a peak to within a
//! few hundred milliseconds. Video is never decoded.
//!
//! A peak is a run of momentary values at least `threshold` LU above the programme loudness
//! (runs closer than [`MERGE_GAP`] count as one); the loudest `count` peaks become clips,
//! widened by a lead-in and a lead-out.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use ebur128::{EbuR128, Mode};
use gst::prelude::*;
use gst_app::AppSink;
use hybridlive_timeline::{ClipRange, ProposedClip};

use crate::readers::{lock, make, on_parsed_stream, presented_stream_time};

/// Nanoseconds per second.
const SECOND: u64 = 1_000_000_000;

/// Step between two momentary loudness readings.
const HOP: Duration = Duration::from_millis(100);

/// Length of the momentary loudness window (EBU R128).
const MOMENTARY_WINDOW: u64 = 400_000_000;

/// Runs of loud readings closer than this are one peak (a burst of applause with a breath in
/// the middle is one moment).
const MERGE_GAP: u64 = 1_000_000_000;

/// How long decoding may make no progress before the analysis is abandoned.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What counts as a peak and how it becomes a clip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakOptions {
    /// How many peaks (the loudest first) become clips.
    pub count: usize,
    /// LU above the programme loudness a moment must reach.
    pub threshold: f64,
    /// Time kept before a peak (ns).
    pub lead_in: u64,
    /// Time kept after a peak (ns).
    pub lead_out: u64,
}

/// One loud moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    /// Start of the loud stretch (stream time, ns).
    pub start: u64,
    /// End of the loud stretch (ns).
    pub end: u64,
    /// Loudest momentary value, in LU above the programme loudness.
    pub above: f64,
}

/// The loudness of a recording over time.
#[derive(Debug, Clone, PartialEq)]
pub struct LoudnessProfile {
    /// Integrated (programme) loudness, LUFS; `-inf` for silence.
    pub programme: f64,
    /// `(time, momentary loudness LUFS)` every [`HOP`]; `time` is the end of the 400 ms window,
    /// relative to the first audio sample.
    pub momentary: Vec<(u64, f64)>,
}

impl LoudnessProfile {
    /// The loud moments, the loudest first, at most `count`.
    pub fn peaks(&self, threshold: f64, count: usize) -> Vec<Peak> {
        if !self.programme.is_finite() {
            return Vec::new();
        }
        let level = self.programme + threshold;
        let mut peaks: Vec<Peak> = Vec::new();
        for &(t, lufs) in &self.momentary {
            if !(lufs.is_finite() && lufs >= level) {
                continue;
            }
            let start = t.saturating_sub(MOMENTARY_WINDOW);
            let above = lufs - self.programme;
            match peaks.last_mut() {
                Some(p) if start <= p.end + MERGE_GAP => {
                    p.end = t;
                    p.above = p.above.max(above);
                }
                _ => peaks.push(Peak {
                    start,
                    end: t,
                    above,
                }),
            }
        }
        peaks.sort_by(|a, b| b.above.total_cmp(&a.above));
        peaks.truncate(count);
        peaks
    }
}

/// The clips for the loudest peaks of `profile`, sorted by start (they may overlap; see
/// [`hybridlive_timeline::merge_clips`]).
pub fn peak_clips(profile: &LoudnessProfile, opts: &PeakOptions) -> Vec<ProposedClip> {
    let mut clips: Vec<ProposedClip> = profile
        .peaks(opts.threshold, opts.count)
        .into_iter()
        .filter_map(|p| {
            let start = p.start.saturating_sub(opts.lead_in);
            let end = p.end.saturating_add(opts.lead_out);
            Some(ProposedClip {
                range: ClipRange::new(start, end).ok()?,
                markers: vec![format!("loudness peak +{:.1} LU", p.above)],
            })
        })
        .collect();
    clips.sort_by_key(|c| c.range);
    clips
}

/// Decodes the first audio stream of `recording` and measures its loudness.
pub fn analyse(recording: &Path) -> anyhow::Result<LoudnessProfile> {
    if !recording.is_file() {
        bail!("not a readable file");
    }
    let pipeline = gst::Pipeline::new();
    let filesrc = make("filesrc")?;
    filesrc.set_property("location", recording.to_string_lossy().as_ref());
    let parsebin = make("parsebin")?;
    let appsink = AppSink::builder()
        .caps(
            &gst::Caps::builder("audio/x-raw")
                .field("format", "F32LE")
                .field("layout", "interleaved")
                .field("channels", gst::IntRange::new(1, 2))
                .build(),
        )
        .sync(false)
        .max_buffers(16)
        .build();
    pipeline.add_many([&filesrc, &parsebin, appsink.upcast_ref()])?;
    filesrc.link(&parsebin)?;

    // Whether an audio stream is linked; errors from the pad-added handler.
    let linked = Arc::new(Mutex::new((false, None::<String>)));
    // A discarded stream ended: when no audio was linked by then, there is none.
    let discarded_eos = Arc::new(AtomicBool::new(false));
    let starts = Arc::new(Mutex::new(Starts::default()));
    {
        let starts = starts.clone();
        let appsink = appsink.clone();
        let linked = linked.clone();
        let discarded_eos = discarded_eos.clone();
        on_parsed_stream(&pipeline, &parsebin, move |pipeline, pad| {
            let mut l = lock(&linked);
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            let audio = caps
                .structure(0)
                .is_some_and(|s| s.name().starts_with("audio/"));
            watch_start(pad, &starts, audio && !l.0);
            let result = if audio && !l.0 {
                l.0 = true;
                link_audio(pipeline, pad, &appsink)
            } else {
                link_discard(pipeline, pad, &discarded_eos)
            };
            if let Err(e) = result {
                l.1.get_or_insert(format!("{e:#}"));
            }
        });
    }
    let bus = pipeline
        .bus()
        .ok_or_else(|| anyhow!("pipeline without bus"))?;
    let run = || -> anyhow::Result<LoudnessProfile> {
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|_| anyhow!("cannot open the recording"))?;
        let mut meter: Option<(EbuR128, u32, usize, u64)> = None;
        let mut momentary = Vec::new();
        let mut samples_done = 0u64;
        // Sample count at which the next reading is taken.
        let mut next_reading = 0u64;
        let mut last_progress = Instant::now();
        loop {
            if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
                return Err(bus_error(&msg));
            }
            {
                let l = lock(&linked);
                if let Some(e) = &l.1 {
                    bail!("{e}");
                }
                if !l.0 && discarded_eos.load(Ordering::SeqCst) {
                    bail!("no audio stream to find loudness peaks in");
                }
            }
            let Some(sample) = appsink.try_pull_sample(gst::ClockTime::from_mseconds(100)) else {
                if appsink.is_eos() {
                    break;
                }
                if last_progress.elapsed() > STALL_TIMEOUT {
                    bail!(
                        "loudness analysis made no progress for {} s",
                        STALL_TIMEOUT.as_secs()
                    );
                }
                continue;
            };
            last_progress = Instant::now();
            let Some(buffer) = sample.buffer() else {
                continue;
            };
            if meter.is_none() {
                let s = sample
                    .caps()
                    .and_then(|c| c.structure(0))
                    .ok_or_else(|| anyhow!("decoded audio without caps"))?;
                let rate = s.get::<i32>("rate").context("decoded audio without rate")?;
                let channels = s
                    .get::<i32>("channels")
                    .context("decoded audio without channel count")?;
                let (rate, channels) = (
                    u32::try_from(rate).context("invalid sample rate")?,
                    u32::try_from(channels).context("invalid channel count")?,
                );
                let m = EbuR128::new(channels, rate, Mode::M | Mode::I)
                    .map_err(|e| anyhow!("cannot measure loudness: {e}"))?;
                let hop = (rate as u64 * HOP.as_nanos() as u64 / SECOND).max(1);
                next_reading = hop;
                meter = Some((m, rate, channels as usize, hop));
            }
            let Some((m, rate, channels, hop)) = meter.as_mut() else {
                continue;
            };
            let map = buffer
                .map_readable()
                .map_err(|_| anyhow!("cannot read decoded audio"))?;
            let samples: Vec<f32> = map
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            // Feed up to each reading point, read, go on: one reading every HOP of audio.
            let mut rest = &samples[..samples.len() - samples.len() % *channels];
            while !rest.is_empty() {
                let frames = ((rest.len() / *channels) as u64).min(next_reading - samples_done);
                let (now, later) = rest.split_at(frames as usize * *channels);
                m.add_frames_f32(now)
                    .map_err(|e| anyhow!("loudness measurement failed: {e}"))?;
                samples_done += frames;
                rest = later;
                if samples_done == next_reading {
                    read(m, *rate, samples_done, &mut momentary)?;
                    next_reading += *hop;
                }
            }
        }
        let Some((m, ..)) = meter else {
            bail!("the audio stream holds no samples");
        };
        let programme = m
            .loudness_global()
            .map_err(|e| anyhow!("cannot measure loudness: {e}"))?;
        // Readings count from the first audio sample; clips are cut on the recording's
        // timeline, which starts with its earliest stream.
        let offset = lock(&starts).audio_offset();
        for (t, _) in &mut momentary {
            *t += offset;
        }
        Ok(LoudnessProfile {
            programme,
            momentary,
        })
    };
    let result = run();
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// Records the momentary loudness after `samples` samples.
fn read(m: &EbuR128, rate: u32, samples: u64, out: &mut Vec<(u64, f64)>) -> anyhow::Result<()> {
    // The first readings average over less than a full window: skip them.
    if samples * SECOND < MOMENTARY_WINDOW * rate as u64 {
        return Ok(());
    }
    let lufs = m
        .loudness_momentary()
        .map_err(|e| anyhow!("cannot measure loudness: {e}"))?;
    out.push((samples * SECOND / rate as u64, lufs));
    Ok(())
}

/// Where the streams start, in stream time.
#[derive(Debug, Default)]
struct Starts {
    /// The earliest stream's first presented instant: the recording's 0.
    origin: Option<u64>,
    /// The measured audio stream's.
    audio: Option<u64>,
}

impl Starts {
    fn audio_offset(&self) -> u64 {
        match (self.audio, self.origin) {
            (Some(a), Some(o)) => a.saturating_sub(o),
            _ => 0,
        }
    }
}

/// Notes the stream time of the stream's first buffer (clipped to its segment: what a
/// demuxer's edit list hides, like AAC priming, is not presented).
fn watch_start(pad: &gst::Pad, starts: &Arc<Mutex<Starts>>, measured: bool) {
    let starts = starts.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(t) = info.buffer().and_then(|b| presented_stream_time(pad, b)) {
            let mut s = lock(&starts);
            let t = t.nseconds();
            s.origin = Some(s.origin.map_or(t, |o| o.min(t)));
            if measured {
                s.audio.get_or_insert(t);
            }
        }
        gst::PadProbeReturn::Remove
    });
}

/// Decodes one audio stream into the appsink.
fn link_audio(pipeline: &gst::Pipeline, pad: &gst::Pad, appsink: &AppSink) -> anyhow::Result<()> {
    let chain = [
        make("queue")?,
        make("decodebin")?,
        make("audioconvert")?,
        make("audioresample")?,
    ];
    for e in &chain {
        pipeline.add(e)?;
    }
    let [queue, decodebin, convert, resample] = &chain;
    queue.link(decodebin)?;
    convert.link(resample)?;
    resample.link(appsink)?;
    {
        let convert = convert.clone();
        decodebin.connect_pad_added(move |_, pad| {
            if let Some(sink) = convert.static_pad("sink")
                && !sink.is_linked()
            {
                let _ = pad.link(&sink);
            }
        });
    }
    for e in &chain {
        e.sync_state_with_parent()?;
    }
    pad.link(
        &queue
            .static_pad("sink")
            .ok_or_else(|| anyhow!("queue without sink pad"))?,
    )?;
    Ok(())
}

/// Video and extra streams are not decoded.
fn link_discard(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    eos: &Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let eos = eos.clone();
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(e)) = &info.data
            && e.type_() == gst::EventType::Eos
        {
            eos.store(true, Ordering::SeqCst);
        }
        gst::PadProbeReturn::Ok
    });
    let sink = make("fakesink")?;
    sink.set_property("sync", false);
    pipeline.add(&sink)?;
    sink.sync_state_with_parent()?;
    pad.link(
        &sink
            .static_pad("sink")
            .ok_or_else(|| anyhow!("fakesink without sink pad"))?,
    )?;
    Ok(())
}

fn bus_error(msg: &gst::Message) -> anyhow::Error {
    match msg.view() {
        gst::MessageView::Error(e) => {
            let detail = e.debug().map(|d| format!(" ({d})")).unwrap_or_default();
            let src = msg
                .src()
                .map(|s| format!("{}: ", s.name()))
                .unwrap_or_default();
            anyhow!("{src}{}{detail}", e.error())
        }
        _ => anyhow!("pipeline error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn profile(programme: f64, values: &[(u64, f64)]) -> LoudnessProfile {
        LoudnessProfile {
            programme,
            momentary: values.iter().map(|&(t, l)| (t * MS, l)).collect(),
        }
    }

    #[test]
    fn loud_runs_become_peaks_loudest_first() {
        let mut v: Vec<(u64, f64)> = (4..100).map(|i| (i * 100, -30.0)).collect();
        // A short loud run at 2.0-2.3 s and a louder, longer one at 6.0-7.0 s with a dip.
        for (t, l) in v.iter_mut() {
            if (2000..=2300).contains(t) {
                *l = -20.0;
            }
            if (6000..=7000).contains(t) && *t != 6500 {
                *l = -12.0;
            }
        }
        let p = profile(-28.0, &v);
        let peaks = p.peaks(6.0, 5);
        assert_eq!(peaks.len(), 2);
        assert_eq!((peaks[0].start, peaks[0].end), (5600 * MS, 7000 * MS));
        assert!((peaks[0].above - 16.0).abs() < 1e-9);
        assert_eq!((peaks[1].start, peaks[1].end), (1600 * MS, 2300 * MS));
        assert_eq!(p.peaks(6.0, 1), vec![peaks[0]]);
        assert!(p.peaks(20.0, 5).is_empty());

        let clips = peak_clips(
            &p,
            &PeakOptions {
                count: 5,
                threshold: 6.0,
                lead_in: 2 * SECOND,
                lead_out: SECOND,
            },
        );
        let ranges: Vec<_> = clips.iter().map(|c| (c.range.start, c.range.end)).collect();
        assert_eq!(ranges, vec![(0, 3300 * MS), (3600 * MS, 8000 * MS)]);
        assert_eq!(clips[1].markers, vec!["loudness peak +16.0 LU"]);
    }

    #[test]
    fn silence_has_no_peaks() {
        let p = profile(f64::NEG_INFINITY, &[(500, f64::NEG_INFINITY)]);
        assert!(p.peaks(0.0, 3).is_empty());
    }
}
