//! Outputs, each in its own GStreamer pipeline fed from the ingest through appsink → appsrc.
//!
//! A separate pipeline per output is what isolates them: a full disk or a failing muxer posts
//! an error on that output's bus only, the output is torn down and started again with
//! back-off, and the ingest and the other outputs never notice. Every output pipeline shares
//! the ingest's clock and base time, so running times (and the capture stamps derived from
//! them) mean the same everywhere.
//!
//! Layout: [`supervisor`] owns what every output has in common (start, stop, restarts with
//! back-off, generations, its state in the shared status, the egress checks, the teardown and
//! the appsrc side of each pipeline). Each kind lives in a file of its own: its settings type
//! ([`OutputSpec`], with the inputs it refuses), its `Factory` ([`OutputFactory`]: reads its
//! `[outputs.NAME]` table, says whether an abrcontroller can steer it) and its [`Kind`]: what
//! it adds to a new pipeline and what it tells the rest of the runner (HLS folder, LL-HLS
//! store, WHEP sessions, feedback, endpoint). A new kind is that file, its `mod` line and a
//! line in [`KINDS`]; `tees` and `egress` hold what the WebRTC kinds share.
//!
//! Dependencies: this uses `config` (model, reader, diagnostics), never the other way round:
//! `config::parse` gets the kinds as [`Registry`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use gst::prelude::*;

use crate::config::reader::Fields;
use crate::config::{
    Diagnostic, EncoderKind, H264Preset, Output, OutputKinds, OutputSpec, Refusal,
};
use crate::endpoint::Endpoint;
use crate::events::Events;
use crate::llhls::LlHls;
use crate::state::{self, Marker, Shared};

/// Implements [`OutputSpec`] for a kind's settings type (`Clone + Serialize`) named
/// `$type_name` in pipeline files; the block, if any, holds the kind's own rules
/// (`refuses_input`, `served_at`...).
macro_rules! output_spec {
    ($settings:ty, $type_name:expr $(, { $($rules:tt)* })?) => {
        impl crate::config::OutputSpec for $settings {
            fn type_name(&self) -> &'static str {
                $type_name
            }
            fn as_any(&self) -> &dyn std::any::Any {
                self
            }
            fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
                self
            }
            fn clone_box(&self) -> Box<dyn crate::config::OutputSpec> {
                Box::new(self.clone())
            }
            fn settings_json(&self) -> serde_json::Value {
                serde_json::to_value(self).unwrap_or_default()
            }
            $($($rules)*)?
        }
    };
}

mod egress;
mod hls;
mod janus;
mod record;
mod rist;
mod rtmp;
mod srt;
mod supervisor;
mod tees;
mod webrtc;
mod whip;

pub use hls::HlsOutput;
pub use janus::JanusOutput;
pub use record::RecordOutput;
pub use rtmp::RtmpOutput;
pub use srt::SrtOutput;
pub use supervisor::OutputRunner;
pub use webrtc::WebrtcOutput;
pub use whip::WhipOutput;

/// Every output kind. A new kind is its file and a line here: the `type` names the pipeline
/// file accepts (and suggests), and the kinds an abrcontroller may steer, follow from this.
const KINDS: &[&dyn OutputFactory] = &[
    &hls::Factory,
    &record::Factory,
    &srt::Factory,
    &rtmp::Factory,
    &webrtc::Factory,
    &whip::Factory,
    &janus::Factory,
    &rist::Factory,
];

/// An output kind as the registry knows it.
pub(crate) trait OutputFactory: Sync {
    /// The `type` name, as written in pipeline files.
    fn type_name(&self) -> &'static str;

    /// Whether an abrcontroller can follow the kind's link (it gives feedback).
    fn steerable(&self) -> bool {
        false
    }

    /// Reads and validates the kind's `[outputs.NAME]` table (`type` and `inputs` aside).
    fn parse(&self, diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<Box<dyn OutputSpec>>;

    /// Makes the kind ready to build pipelines from settings this factory parsed.
    fn prepare(&self, spec: &dyn OutputSpec, cx: &Context<'_>) -> anyhow::Result<Box<dyn Kind>>;
}

/// The `type` names of every output kind.
fn type_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.type_name()).collect()
}

/// The `type` names of the kinds an abrcontroller can steer.
fn steerable_type_names() -> Vec<&'static str> {
    KINDS
        .iter()
        .filter(|k| k.steerable())
        .map(|k| k.type_name())
        .collect()
}

/// The kind named `type_name`.
fn factory(type_name: &str) -> Option<&'static dyn OutputFactory> {
    KINDS.iter().copied().find(|k| k.type_name() == type_name)
}

/// The registry as the pipeline file reader takes it ([`crate::config::parse`]).
pub(crate) struct Registry;

impl OutputKinds for Registry {
    fn type_names(&self) -> Vec<&'static str> {
        type_names()
    }

    fn steerable_type_names(&self) -> Vec<&'static str> {
        steerable_type_names()
    }

    fn parse(
        &self,
        type_name: &str,
        diags: &mut Vec<Diagnostic>,
        f: &mut Fields,
    ) -> Option<Box<dyn OutputSpec>> {
        factory(type_name)?.parse(diags, f)
    }
}

/// `spec` as the settings type `T` of the factory that parsed it.
fn settings<T: 'static>(spec: &dyn OutputSpec) -> anyhow::Result<&T> {
    spec.as_any().downcast_ref::<T>().with_context(|| {
        format!(
            "the settings of a {} output are not its own",
            spec.type_name()
        )
    })
}

/// One encoded stream an output consumes.
#[derive(Debug, Clone)]
pub struct Input {
    /// Encoder name (`NAME@N` for rung N of a ladder encoder).
    pub encoder: String,
    /// Its codec.
    pub kind: EncoderKind,
    /// Which rung of a ladder encoder this is, for outputs that serve every rung
    /// ([`crate::config::OutputSpec::takes_rungs`]); `None` for a single rendition.
    pub rung: Option<RungInput>,
}

/// A rung of a ladder encoder as an output receives it: IDRs aligned with the other rungs,
/// the same running times.
#[derive(Debug, Clone, PartialEq)]
pub struct RungInput {
    /// Its place in the ladder, 0 for the top.
    pub index: usize,
    /// The ladder encoder's name.
    pub ladder: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub framerate: crate::config::Framerate,
    /// Bitrate the rung is encoded at, kbit/s.
    pub bitrate: u32,
}

/// What an output kind adds to the supervisor: its elements and what it reports.
///
/// A kind is made once per run ([`kind_for`]) and builds a fresh pipeline on every (re)start;
/// anything it keeps across restarts (an HLS folder, the LL-HLS store) lives in it.
pub(crate) trait Kind: Send + Sync {
    /// Adds the kind's sink side to a new `pipeline`: the element the inputs link into and,
    /// for a recording, the take it writes.
    fn build_sink(&self, pipeline: &gst::Pipeline) -> anyhow::Result<Sink>;

    /// The pad an input links into.
    fn input_pad(&self, link: &InputLink<'_>) -> anyhow::Result<gst::Pad>;

    /// Completes a pipeline once every input is linked into it.
    fn finish_build(&self, _pipeline: &gst::Pipeline, _inputs: &[Input]) -> anyhow::Result<()> {
        Ok(())
    }

    /// Where the output sends its media, for messages: `None` for outputs that serve or write
    /// locally.
    fn endpoint(&self) -> Option<Endpoint> {
        None
    }

    /// Whether a warning from the element named `src` means the output has failed.
    fn warning_is_failure(&self, _src: &str) -> bool {
        false
    }

    /// Whether a stop tears the pipeline down at once instead of sending EOS through it.
    fn stops_by_teardown(&self) -> bool {
        false
    }

    /// Points `abr` at the feedback elements of `pipeline`, or at nothing while the output is
    /// down. Kinds that cannot be steered do nothing.
    fn bind_feedback(&self, _abr: &gst::Element, _pipeline: Option<&gst::Pipeline>) {}

    /// Called every status tick while `abr` steers the output: follows feedback that moves
    /// while the pipeline runs (a new viewer).
    fn follow_feedback(&self, _abr: &gst::Element, _pipeline: Option<gst::Pipeline>) {}

    /// The link of the running publisher to its SFU (WHIP/Janus).
    fn egress(&self) -> Option<hybridlive_webrtc::EgressHealth> {
        None
    }

    /// The pipeline is gone or going (stop, failure): forget its egress link.
    fn release(&self) {}

    /// The pipeline is about to be torn down: end the sessions it serves.
    fn close_sessions(&self) {}

    /// The WHEP sessions, while a WebRTC output runs.
    fn whep(&self) -> Option<hybridlive_webrtc::WhepOutput> {
        None
    }

    /// The Low-Latency HLS store of a `low_latency` HLS output.
    fn ll_hls(&self) -> Option<Arc<LlHls>> {
        None
    }

    /// Where HLS playlists and segments are written.
    fn hls_dir(&self) -> Option<&Path> {
        None
    }

    /// Segments the live playlist lists.
    fn hls_playlist_length(&self) -> Option<usize> {
        None
    }

    /// A folder the runner made for this output and removes at the end.
    fn temporary_dir(&self) -> Option<&Path> {
        None
    }

    /// Whether the output starts with the runner.
    fn autostart(&self) -> bool {
        true
    }

    /// Whether this is a recording output (started and stopped through the API).
    fn is_record(&self) -> bool {
        false
    }
}

/// What [`Kind::build_sink`] added to a pipeline.
pub(crate) struct Sink {
    /// The element the inputs link into.
    pub element: gst::Element,
    /// The files a recording writes, from this start to its stop.
    pub take: Option<Arc<dyn Take>>,
}

impl Sink {
    /// A sink that writes no take.
    fn new(element: gst::Element) -> Sink {
        Sink {
            element,
            take: None,
        }
    }
}

/// One input being linked into a new pipeline.
pub(crate) struct InputLink<'a> {
    /// The pipeline being built.
    pub pipeline: &'a gst::Pipeline,
    /// What [`Kind::build_sink`] returned.
    pub sink: &'a gst::Element,
    /// The input.
    pub input: &'a Input,
    /// Its medium as the muxers name their pads: `video`, `video-vp8` or `audio`.
    pub medium: &'a str,
    /// The appsrc the input is pushed into.
    pub appsrc: &'a gst_app::AppSrc,
    /// Ingest appsinks by encoder, which can be asked for a key frame.
    pub keyframe_requesters: &'a [(String, gst::Element)],
}

impl InputLink<'_> {
    /// Requests a pad of `template` from the sink.
    fn request_pad(&self, template: &str) -> anyhow::Result<gst::Pad> {
        self.sink
            .request_pad_simple(template)
            .with_context(|| format!("{} has no {template} pad", self.sink.name()))
    }
}

/// A recording's files from one start to its stop (or failure), fed by the supervisor.
pub(crate) trait Take: Send + Sync {
    /// The first key frame went in; it was captured at `utc_start_ns`.
    fn begin(&self, utc_start_ns: u64);
    /// Updates the take's size and duration (`recorded_s` seconds of video) in the status.
    fn refresh(&self, recorded_s: f64);
    /// The pipeline is done: the take ends with `recorded_s` seconds of video.
    fn finish(&self, recorded_s: f64);
    /// Adds a marker to the take's timeline.
    fn add_marker(&self, marker: &Marker);
    /// An offer appeared or left at `utc_ns`.
    fn add_offer(&self, entry: &hybridlive_offer_timeline::TimelineEntry, utc_ns: u64);
}

/// What a kind is made with.
pub(crate) struct Context<'a> {
    /// The output's name.
    pub name: &'a str,
    /// The run's shared figures.
    pub shared: &'a Arc<Shared>,
    /// Where the run's events go.
    pub events: &'a Events,
}

/// Makes the kind of `config`, ready to build pipelines.
fn kind_for(config: &Output, cx: &Context<'_>) -> anyhow::Result<Box<dyn Kind>> {
    let type_name = config.kind.type_name();
    factory(type_name)
        .with_context(|| format!("no output kind `{type_name}`"))?
        .prepare(&*config.kind, cx)
}

/// VP8 goes to WebRTC viewers only: every other kind refuses it.
fn refuse_vp8(input: &str, encoder: &EncoderKind) -> Option<Refusal> {
    matches!(encoder, EncoderKind::Vp8 { .. }).then(|| Refusal {
        message: format!("`{input}` is VP8, which only the webrtc output sends"),
        help: Some("use an encoder with `type = \"h264\"` here".into()),
    })
}

/// What WebRTC (viewers and SFU egress) needs: H.264 constrained baseline, and Opus.
fn refuse_for_webrtc(input: &str, encoder: &EncoderKind) -> Option<Refusal> {
    match encoder {
        EncoderKind::H264 { preset, .. } if *preset != H264Preset::Zerolatency => Some(Refusal {
            message: format!(
                "`{input}` is not constrained baseline, which browsers need over WebRTC"
            ),
            help: Some(format!(
                "set `preset = \"zerolatency\"` in [encoders.{input}]"
            )),
        }),
        EncoderKind::Aac { .. } => Some(Refusal {
            message: format!("`{input}` is AAC; WebRTC carries Opus"),
            help: Some("use an encoder with `type = \"opus\"` for WebRTC".into()),
        }),
        _ => None,
    }
}

/// Temporary folders removed when this is dropped: at the end of a run, and also when its
/// start-up fails half-way or it unwinds from a panic.
#[derive(Debug, Default)]
pub struct TemporaryDirs(pub Vec<PathBuf>);

impl Drop for TemporaryDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Creates an element, with a name unless `name` is empty.
pub fn make(factory: &str, name: &str) -> anyhow::Result<gst::Element> {
    let mut builder = gst::ElementFactory::make(factory);
    if !name.is_empty() {
        builder = builder.name(name);
    }
    builder
        .build()
        .with_context(|| format!("the GStreamer element `{factory}` is not installed"))
}

/// Stores a latencymeter report under a path name.
pub fn record_latency(shared: &Shared, path: &str, report: &gst::StructureRef) {
    let p50 = report.get::<f64>("window-p50-ms").unwrap_or(0.0);
    let p95 = report.get::<f64>("window-p95-ms").unwrap_or(0.0);
    let count = report.get::<u64>("count").unwrap_or(0);
    shared.with(|s| {
        s.latency.insert(
            path.to_string(),
            state::Latency {
                p50_ms: p50,
                p95_ms: p95,
                count,
            },
        );
    });
}

#[cfg(test)]
mod tests {
    use super::{steerable_type_names, type_names};

    /// Every problem `text` has, as `validate` words them.
    fn problems(text: &str) -> Vec<String> {
        match crate::config::parse(text, std::path::Path::new(""), &super::Registry) {
            Ok(_) => Vec::new(),
            Err(diags) => diags.into_iter().map(|d| d.message).collect(),
        }
    }

    const INGEST: &str = "[sources.cam]\ntype = \"test\"\n\n\
         [encoders.v]\ntype = \"h264\"\ninputs = [\"cam\"]\n\n\
         [encoders.a]\ntype = \"opus\"\ninputs = [\"cam\"]\n\n";

    #[test]
    fn the_registry_names_each_kind_once_in_the_order_diagnostics_list_them() {
        assert_eq!(
            type_names(),
            [
                "hls", "record", "srt", "rtmp", "webrtc", "whip", "janus", "rist"
            ]
        );
        assert_eq!(
            steerable_type_names(),
            ["srt", "rtmp", "webrtc", "whip", "janus"]
        );
    }

    #[test]
    fn a_second_output_served_at_one_path_is_refused() {
        let text = format!(
            "{INGEST}[outputs.one]\ntype = \"hls\"\ninputs = [\"v\"]\n\n\
             [outputs.two]\ntype = \"hls\"\ninputs = [\"v\"]\n"
        );
        assert_eq!(
            problems(&text),
            ["only one hls output is served at /hls/live.m3u8; remove this one"]
        );
    }

    #[test]
    fn an_output_refuses_a_codec_it_cannot_carry() {
        let text = format!(
            "{INGEST}[outputs.up]\ntype = \"rtmp\"\ninputs = [\"v\", \"a\"]\n\
             location = \"rtmp://127.0.0.1/live/key\"\n"
        );
        assert_eq!(
            problems(&text),
            ["`a` is Opus, which RTMP (FLV) cannot carry"]
        );
    }

    #[test]
    fn an_unknown_output_type_is_refused_with_a_suggestion() {
        let text = format!("{INGEST}[outputs.up]\ntype = \"rtpm\"\ninputs = [\"v\"]\n");
        let diags = crate::config::parse(&text, std::path::Path::new(""), &super::Registry)
            .err()
            .unwrap_or_default();
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].help.as_deref(), Some("did you mean `rtmp`?"));
    }
}
