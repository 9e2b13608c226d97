//! `type = "hls"`: MPEG-TS segments and a live playlist written to a folder by hlssink2, or,
//! with `low_latency`, Low-Latency HLS: fMP4 parts kept in memory ([`LlHls`]). A ladder
//! encoder's rungs become renditions under a multivariant playlist: an fMP4 muxer per rung
//! into the same store (Low-Latency or plain), the audio muxed into each.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use gst::prelude::*;

use serde::Serialize;

use super::{Context, Input, InputLink, Kind, OutputFactory, Sink, make, refuse_vp8, settings};
use crate::config::reader::Fields;
use crate::config::{Diagnostic, EncoderKind, OutputSpec, Refusal};
use crate::llhls::{LlHls, Rendition};

const TYPE: &str = "hls";

/// `type = "hls"`: MPEG-TS segments and a live playlist, served at `/hls/live.m3u8`.
#[derive(Debug, Clone, Serialize)]
pub struct HlsOutput {
    /// `segment_duration`: seconds per segment.
    pub segment_duration: u32,
    /// `playlist_length`: segments listed in the live playlist.
    pub playlist_length: u32,
    /// `low_latency`: Low-Latency HLS (fMP4 parts, preload hints, blocking reload) served
    /// from memory instead of MPEG-TS segment files.
    pub low_latency: bool,
    /// `part_duration_ms`: duration of a Low-Latency HLS part, milliseconds.
    pub part_duration_ms: u32,
    /// `directory`: where segments are written; a fresh temporary folder by default.
    pub directory: Option<PathBuf>,
}

output_spec!(HlsOutput, TYPE, {
    fn takes_rungs(&self) -> bool {
        true
    }

    fn refuses_input(&self, input: &str, encoder: &EncoderKind) -> Option<Refusal> {
        match encoder {
            EncoderKind::H264 {
                keyframe_interval, ..
            } => {
                let segment_duration = self.segment_duration;
                let per_segment = f64::from(segment_duration) / keyframe_interval;
                ((per_segment - per_segment.round()).abs() > 1e-6).then(|| Refusal {
                    message: format!(
                        "HLS segments of {segment_duration} s need a keyframe interval that divides them; `{input}` has {keyframe_interval} s"
                    ),
                    help: Some(format!(
                        "set `keyframe_interval = {segment_duration}` in [encoders.{input}]"
                    )),
                })
            }
            EncoderKind::Opus { .. } => Some(Refusal {
                message: format!("`{input}` is Opus, which browsers do not play from HLS MPEG-TS"),
                help: Some("use an encoder with `type = \"aac\"` for HLS".into()),
            }),
            _ => refuse_vp8(input, encoder),
        }
    }

    fn served_at(&self) -> Option<&'static str> {
        Some("/hls/live.m3u8")
    }
});

/// The HLS kind in the registry.
pub(super) struct Factory;

impl OutputFactory for Factory {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    /// MPEG-TS segments, or Low-Latency HLS parts served from memory.
    fn parse(&self, diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<Box<dyn OutputSpec>> {
        Some(Box::new(HlsOutput {
            segment_duration: f.integer(diags, "segment_duration", 1..11, 1),
            playlist_length: f.integer(diags, "playlist_length", 2..31, 5),
            low_latency: f.bool(diags, "low_latency", false),
            part_duration_ms: f.integer(diags, "part_duration_ms", 100..2001, 200),
            directory: f.path(diags, "directory").map(|(path, _, _)| path),
        }))
    }

    fn prepare(&self, spec: &dyn OutputSpec, cx: &Context<'_>) -> anyhow::Result<Box<dyn Kind>> {
        Ok(Box::new(Hls::new(
            cx,
            settings::<HlsOutput>(spec)?.clone(),
        )?))
    }
}

/// An HLS output: its folder, fixed for the whole run, and (LL-HLS, ladders) its store.
struct Hls {
    settings: HlsOutput,
    dir: PathBuf,
    /// Whether the runner made `dir` (a temporary one) and removes it at the end.
    dir_is_temporary: bool,
    /// fMP4 segments (and parts) in memory, kept across restarts: made at the start for
    /// Low-Latency HLS, at the first build for a ladder of plain HLS.
    store: Mutex<Option<Arc<LlHls>>>,
}

/// The bin all of an HLS output's elements live in: the audio tee and, per rendition, an
/// fMP4 muxer and its appsink, or hlssink2 for plain HLS of one rendition.
const BIN: &str = "hls";
/// The tee that hands the audio to every rendition's muxer.
const AUDIO_TEE: &str = "hls-audio";

impl Hls {
    /// Creates the folder (and, for Low-Latency HLS, the store).
    fn new(cx: &Context<'_>, settings: HlsOutput) -> anyhow::Result<Hls> {
        let dir_is_temporary = settings.directory.is_none();
        let dir = settings.directory.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("hybridlive-{}-{}", std::process::id(), cx.name))
        });
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // A folder kept from an earlier run holds its final playlist, which ends in
        // #EXT-X-ENDLIST: served until this run's first segment replaced it, it told
        // players the stream was over and they stopped reloading. Until then there is
        // no playlist (404, which players retry); the old segments stay, so this run
        // numbers its own on from them.
        let stale = dir.join("live.m3u8");
        match std::fs::remove_file(&stale) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot remove the old {}", stale.display()));
            }
        }
        let store = settings.low_latency.then(|| {
            Arc::new(LlHls::new(
                Duration::from_secs(u64::from(settings.segment_duration)),
                Duration::from_millis(u64::from(settings.part_duration_ms)),
                settings.playlist_length as usize,
            ))
        });
        Ok(Hls {
            settings,
            dir,
            dir_is_temporary,
            store: Mutex::new(store),
        })
    }

    /// The store; a ladder of plain HLS gets one the first time it is built.
    fn store(&self) -> Arc<LlHls> {
        self.store
            .lock()
            .unwrap()
            .get_or_insert_with(|| {
                Arc::new(LlHls::plain(
                    Duration::from_secs(u64::from(self.settings.segment_duration)),
                    self.settings.playlist_length as usize,
                ))
            })
            .clone()
    }

    /// The muxer of rendition `index` in `bin`, made with its appsink on first use:
    /// isofmp4mux with one fragment per segment (fragments start on key frames) and, for
    /// Low-Latency HLS, one chunk per part.
    fn muxer(&self, bin: &gst::Bin, index: usize) -> anyhow::Result<gst::Element> {
        let name = format!("mux{index}");
        if let Some(mux) = bin.by_name(&name) {
            return Ok(mux);
        }
        let store = self.store();
        let mux = make("isofmp4mux", &name)?;
        mux.set_property(
            "fragment-duration",
            gst::ClockTime::from_seconds(u64::from(self.settings.segment_duration)),
        );
        if self.settings.low_latency {
            mux.set_property(
                "chunk-duration",
                gst::ClockTime::from_mseconds(u64::from(self.settings.part_duration_ms)),
            );
        }
        let appsink = gst_app::AppSink::builder()
            .name(format!("llhls{index}"))
            .sync(false)
            .async_(false)
            .buffer_list(true)
            .build();
        let on_eos = store.clone();
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some(list) = sample.buffer_list() {
                        store.push_chunk(index, list);
                    } else if let Some(buffer) = sample.buffer_owned() {
                        let mut list = gst::BufferList::new();
                        list.get_mut().unwrap().add(buffer);
                        store.push_chunk(index, &list);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .eos(move |_| on_eos.finish_track(index))
                .build(),
        );
        bin.add_many([&mux, appsink.upcast_ref()])?;
        mux.link(&appsink)?;
        Ok(mux)
    }

    /// The video pad of rendition `index`'s muxer. Its first fragment ends on the segment grid.
    ///
    /// The encoders put key frames at whole key-frame intervals of running time, and the muxer
    /// cuts a fragment at the first key frame one fragment duration after the fragment began:
    /// a stream joined at 0.13 s would make a first segment of 0.13–2.0 s (the key frame at
    /// 1.0 s comes too early), above the target duration, which the playlist would then have
    /// to raise. Asking for a split at the next whole segment after the first frame puts every
    /// fragment (and so every part) of every rendition on the same grid.
    fn video_pad(&self, bin: &gst::Bin, index: usize) -> anyhow::Result<gst::Pad> {
        let mux = self.muxer(bin, index)?;
        let pad = mux
            .request_pad_simple("sink_%u")
            .context("isofmp4mux has no sink_%u pad")?;
        let segment = gst::ClockTime::from_seconds(u64::from(self.settings.segment_duration));
        let weak = mux.downgrade();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
                return gst::PadProbeReturn::Ok;
            };
            let running_time = pad.sticky_event::<gst::event::Segment>(0).and_then(|e| {
                e.segment()
                    .downcast_ref::<gst::ClockTime>()?
                    .to_running_time(pts)
            });
            if let (Some(running_time), Some(mux)) = (running_time, weak.upgrade()) {
                let next = (running_time.nseconds() / segment.nseconds() + 1) * segment.nseconds();
                mux.emit_by_name::<()>(
                    "split-at-running-time",
                    &[&gst::ClockTime::from_nseconds(next)],
                );
            }
            gst::PadProbeReturn::Remove
        });
        Ok(pad)
    }

    /// hlssink2 writing into the folder, made on first use.
    fn segment_sink(&self, bin: &gst::Bin) -> anyhow::Result<gst::Element> {
        if let Some(sink) = bin.by_name("sink") {
            return Ok(sink);
        }
        let dir = &self.dir;
        let segment_duration = self.settings.segment_duration;
        let playlist_length = self.settings.playlist_length;
        let sink = make("hlssink2", "sink")?;
        sink.set_property(
            "location",
            dir.join("segment%05d.ts").to_string_lossy().as_ref(),
        );
        sink.set_property(
            "playlist-location",
            dir.join("live.m3u8").to_string_lossy().as_ref(),
        );
        sink.set_property("target-duration", segment_duration);
        sink.set_property("playlist-length", playlist_length);
        sink.set_property("max-files", playlist_length + 3);
        // Keyframes come every segment from the encoder already; hlssink2's own
        // requests would reach the shared encoder through appsrc and nowhere.
        sink.set_property("send-keyframe-requests", false);
        // A restarted output numbers its segments on from the last one written, and the
        // served playlist's media sequence is the first listed segment's number
        // (hls.rs): players never see the sequence go back or a segment name reused.
        let next = next_segment_index(dir);
        if let Some(split) = sink.downcast_ref::<gst::Bin>().and_then(|bin| {
            bin.iterate_elements()
                .into_iter()
                .flatten()
                .find(|e| e.factory().is_some_and(|f| f.name() == "splitmuxsink"))
        }) {
            split.set_property("start-index", next as i32);
        }
        bin.add(&sink)?;
        Ok(sink)
    }
}

/// `pad` of an element inside `bin`, as a pad of the bin.
fn ghost(bin: &gst::Bin, pad: &gst::Pad) -> anyhow::Result<gst::Pad> {
    let ghost = gst::GhostPad::builder_with_target(pad)?
        .name(format!(
            "{}-{}",
            pad.parent_element().map(|e| e.name()).unwrap_or_default(),
            pad.name()
        ))
        .build();
    bin.add_pad(&ghost)?;
    Ok(ghost.upcast())
}

fn the_bin(link: &InputLink<'_>) -> anyhow::Result<gst::Bin> {
    link.sink
        .clone()
        .downcast::<gst::Bin>()
        .map_err(|_| anyhow::anyhow!("the HLS sink is not a bin"))
}

impl Kind for Hls {
    fn build_sink(&self, pipeline: &gst::Pipeline) -> anyhow::Result<Sink> {
        // What goes in depends on the inputs (one rendition or a ladder): see input_pad.
        let bin = gst::Bin::with_name(BIN);
        pipeline.add(&bin)?;
        Ok(Sink::new(bin.upcast()))
    }

    fn input_pad(&self, link: &InputLink<'_>) -> anyhow::Result<gst::Pad> {
        let bin = the_bin(link)?;
        let target = match (link.medium, &link.input.rung) {
            ("video", Some(rung)) => self.video_pad(&bin, rung.index)?,
            ("video", None) if self.settings.low_latency => self.video_pad(&bin, 0)?,
            ("video", None) => self
                .segment_sink(&bin)?
                .request_pad_simple("video")
                .context("hlssink2 has no video pad")?,
            // Every rendition's muxer gets it (finish_build): audio rides with each rung.
            ("audio", _) => {
                let tee = make("tee", AUDIO_TEE)?;
                bin.add(&tee)?;
                tee.static_pad("sink").context("tee without sink pad")?
            }
            (medium, _) => anyhow::bail!("an HLS output takes no {medium} input"),
        };
        ghost(&bin, &target)
    }

    fn finish_build(&self, pipeline: &gst::Pipeline, inputs: &[Input]) -> anyhow::Result<()> {
        let bin = pipeline
            .by_name(BIN)
            .and_then(|e| e.downcast::<gst::Bin>().ok())
            .context("no HLS bin")?;
        let mut rungs: Vec<_> = inputs.iter().filter_map(|i| i.rung.as_ref()).collect();
        rungs.sort_by_key(|r| r.index);
        // A new pipeline is new muxers: after a failure the store marks the discontinuity.
        // (The store exists when muxers feed it: Low-Latency HLS, or rungs of a ladder.)
        if let Some(store) = self.ll_hls() {
            store.set_renditions(
                rungs
                    .iter()
                    .map(|r| Rendition {
                        width: r.width,
                        height: r.height,
                        fps: r.framerate.fps(),
                        bitrate_bps: u64::from(r.bitrate) * 1000,
                    })
                    .collect(),
            );
            store.restart();
        }
        let Some(tee) = bin.by_name(AUDIO_TEE) else {
            return Ok(());
        };
        let mut sinks = Vec::new();
        for index in 0.. {
            match bin.by_name(&format!("mux{index}")) {
                Some(mux) => sinks.push(
                    mux.request_pad_simple("sink_%u")
                        .context("isofmp4mux has no sink_%u pad")?,
                ),
                None => break,
            }
        }
        if let Some(sink) = bin.by_name("sink") {
            sinks.push(
                sink.request_pad_simple("audio")
                    .context("hlssink2 has no audio pad")?,
            );
        }
        for (i, sink) in sinks.iter().enumerate() {
            let queue = make("queue", &format!("hls-audio-queue{i}"))?;
            bin.add(&queue)?;
            tee.link(&queue)?;
            queue
                .static_pad("src")
                .context("queue without src pad")?
                .link(sink)?;
        }
        Ok(())
    }

    fn ll_hls(&self) -> Option<Arc<LlHls>> {
        self.store.lock().unwrap().clone()
    }

    fn hls_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn hls_playlist_length(&self) -> Option<usize> {
        Some(self.settings.playlist_length as usize)
    }

    fn temporary_dir(&self) -> Option<&Path> {
        self.dir_is_temporary.then_some(self.dir.as_path())
    }
}

/// The index after the highest `segmentNNNNN.ts` in `dir` (0 in an empty folder).
fn next_segment_index(dir: &Path) -> u32 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| crate::hls::segment_index(entry.file_name().to_str()?))
        .max()
        .map_or(0, |highest| u32::try_from(highest + 1).unwrap_or(u32::MAX))
}
