//! `type = "webrtc"`: WHEP at `/whep`, every viewer fed from the one encode.

use std::sync::Mutex;

use anyhow::Context as _;
use gst::prelude::*;

use super::{Input, InputLink, Kind, Sink, tees};
use crate::config::EncoderKind;

/// A WebRTC (WHEP) output.
pub(crate) struct Webrtc {
    max_viewers: u32,
    loopback_only: bool,
    playout_delay_ms: Option<[u32; 2]>,
    /// The WHEP sessions of the running pipeline.
    whep: Mutex<Option<hybridlive_webrtc::WhepOutput>>,
}

impl Webrtc {
    /// An output serving at most `max_viewers`.
    pub(crate) fn new(
        max_viewers: u32,
        loopback_only: bool,
        playout_delay_ms: Option<[u32; 2]>,
    ) -> Webrtc {
        Webrtc {
            max_viewers,
            loopback_only,
            playout_delay_ms,
            whep: Mutex::new(None),
        }
    }
}

impl Kind for Webrtc {
    fn build_sink(&self, pipeline: &gst::Pipeline) -> anyhow::Result<Sink> {
        tees::build_sink(pipeline)
    }

    fn input_pad(&self, link: &InputLink<'_>) -> anyhow::Result<gst::Pad> {
        tees::input_pad(link)
    }

    fn finish_build(&self, pipeline: &gst::Pipeline, inputs: &[Input]) -> anyhow::Result<()> {
        let audio = pipeline.by_name("audio").context("no audio tee")?;
        let audio_fed = audio.static_pad("sink").is_some_and(|pad| pad.is_linked());
        // In the order of the inputs: the first codec a viewer offers wins.
        let mut videos = Vec::new();
        for input in inputs {
            let (codec, tee) = match input.kind {
                EncoderKind::H264 { .. } => (hybridlive_webrtc::VideoCodec::H264, "video"),
                EncoderKind::Vp8 { .. } => (hybridlive_webrtc::VideoCodec::Vp8, "video-vp8"),
                _ => continue,
            };
            videos.push((codec, pipeline.by_name(tee).context("no video tee")?));
        }
        let videos: Vec<_> = videos.iter().map(|(codec, tee)| (*codec, tee)).collect();
        let whep = hybridlive_webrtc::WhepOutput::with_codecs(
            pipeline,
            &videos,
            audio_fed.then_some(&audio),
            hybridlive_webrtc::WhepConfig {
                loopback_ice: self.loopback_only,
                max_sessions: self.max_viewers as usize,
                playout_delay: self
                    .playout_delay_ms
                    .map(|[min, max]| hybridlive_webrtc::PlayoutDelayMs { min, max }),
                ..Default::default()
            },
        );
        *self.whep.lock().unwrap() = Some(whep);
        tees::remove_unfed(pipeline)
    }

    fn bind_feedback(&self, abr: &gst::Element, _pipeline: Option<&gst::Pipeline>) {
        tees::unbind_feedback(abr);
    }

    /// The abrcontroller follows the viewer with the most recent session (one encode feeds
    /// every viewer; see pipelines/README.md).
    fn follow_feedback(&self, abr: &gst::Element, pipeline: Option<gst::Pipeline>) {
        let newest = pipeline.and_then(|p| {
            p.iterate_recurse()
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.factory().is_some_and(|f| f.name() == "webrtcbin"))
                // Unnamed: webrtcbin0, webrtcbin1...: the longest, then greatest name is the newest.
                .max_by_key(|e| {
                    let name = e.name().to_string();
                    (name.len(), name)
                })
        });
        let current = abr.property::<Option<gst::Element>>("webrtcbin");
        if current != newest {
            abr.set_property("webrtcbin", newest);
        }
    }

    /// Ends every WebRTC session before the pipeline goes down.
    fn close_sessions(&self) {
        if let Some(whep) = self.whep.lock().unwrap().take() {
            whep.close_all();
        }
    }

    fn whep(&self) -> Option<hybridlive_webrtc::WhepOutput> {
        self.whep.lock().unwrap().clone()
    }
}
