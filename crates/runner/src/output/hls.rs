//! `type = "hls"`: MPEG-TS segments and a live playlist written to a folder by hlssink2, or,
//! with `low_latency`, Low-Latency HLS: fMP4 parts kept in memory ([`LlHls`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gst::prelude::*;

use serde::Serialize;

use super::{Context, InputLink, Kind, OutputFactory, Sink, make, refuse_vp8, settings};
use crate::config::reader::Fields;
use crate::config::{Diagnostic, EncoderKind, OutputSpec, Refusal};
use crate::llhls::LlHls;

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

/// An HLS output: its folder, fixed for the whole run, and (LL-HLS) its store.
struct Hls {
    settings: HlsOutput,
    dir: PathBuf,
    /// Whether the runner made `dir` (a temporary one) and removes it at the end.
    dir_is_temporary: bool,
    /// Low-Latency HLS: parts and segments in memory, kept across restarts.
    ll_hls: Option<Arc<LlHls>>,
}

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
        let ll_hls = settings.low_latency.then(|| {
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
            ll_hls,
        })
    }

    /// isofmp4mux into an appsink that hands each chunk to the store.
    fn build_low_latency(
        &self,
        pipeline: &gst::Pipeline,
        store: &Arc<LlHls>,
    ) -> anyhow::Result<gst::Element> {
        let store = store.clone();
        // After a failure this is a new muxer: the store marks the discontinuity.
        store.restart();
        // One fragment per segment (fragments start on key frames), one chunk per part.
        let mux = make("isofmp4mux", "sink")?;
        mux.set_property(
            "fragment-duration",
            gst::ClockTime::from_seconds(u64::from(self.settings.segment_duration)),
        );
        mux.set_property(
            "chunk-duration",
            gst::ClockTime::from_mseconds(u64::from(self.settings.part_duration_ms)),
        );
        let appsink = gst_app::AppSink::builder()
            .name("llhls")
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
                        store.push_chunk(list);
                    } else if let Some(buffer) = sample.buffer_owned() {
                        let mut list = gst::BufferList::new();
                        list.get_mut().unwrap().add(buffer);
                        store.push_chunk(&list);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .eos(move |_| on_eos.finish())
                .build(),
        );
        pipeline.add_many([&mux, appsink.upcast_ref()])?;
        mux.link(&appsink)?;
        Ok(mux)
    }

    /// hlssink2 writing into the folder.
    fn build_segments(&self, pipeline: &gst::Pipeline) -> anyhow::Result<gst::Element> {
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
        pipeline.add(&sink)?;
        Ok(sink)
    }
}

impl Kind for Hls {
    fn build_sink(&self, pipeline: &gst::Pipeline) -> anyhow::Result<Sink> {
        let element = match &self.ll_hls {
            Some(store) => self.build_low_latency(pipeline, store)?,
            None => self.build_segments(pipeline)?,
        };
        Ok(Sink::new(element))
    }

    fn input_pad(&self, link: &InputLink<'_>) -> anyhow::Result<gst::Pad> {
        if self.ll_hls.is_some() {
            link.request_pad("sink_%u")
        } else {
            link.request_pad(link.medium)
        }
    }

    fn ll_hls(&self) -> Option<Arc<LlHls>> {
        self.ll_hls.clone()
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
