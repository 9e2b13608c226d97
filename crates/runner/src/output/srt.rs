//! `type = "srt"`: MPEG-TS pushed over SRT (caller, or listener for the far end to pull).

use gst::prelude::*;

use serde::Serialize;

use super::{Context, InputLink, Kind, OutputFactory, Sink, make, refuse_vp8, settings};
use crate::config::reader::Fields;
use crate::config::{Diagnostic, EncoderKind, OutputSpec, Refusal, loopback_if_unbound};
use crate::endpoint::Endpoint;

const TYPE: &str = "srt";

/// `type = "srt"`: MPEG-TS pushed over SRT (caller, or listener for the far end to pull).
#[derive(Debug, Clone, Serialize)]
pub struct SrtOutput {
    /// `uri`: e.g. `srt://ingest.example:9000?mode=caller`.
    pub uri: String,
}

output_spec!(SrtOutput, TYPE, {
    fn refuses_input(&self, input: &str, encoder: &EncoderKind) -> Option<Refusal> {
        refuse_vp8(input, encoder)
    }
});

/// The SRT kind in the registry.
pub(super) struct Factory;

impl OutputFactory for Factory {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn steerable(&self) -> bool {
        true
    }

    fn parse(&self, diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<Box<dyn OutputSpec>> {
        let uri = f.required_url(diags, "uri", &["srt://"], "an srt:// URI")?;
        Some(Box::new(SrtOutput {
            uri: loopback_if_unbound(uri),
        }))
    }

    fn prepare(&self, spec: &dyn OutputSpec, _cx: &Context<'_>) -> anyhow::Result<Box<dyn Kind>> {
        Ok(Box::new(Srt {
            uri: settings::<SrtOutput>(spec)?.uri.clone(),
        }))
    }
}

/// An SRT output.
struct Srt {
    uri: String,
}

impl Kind for Srt {
    fn build_sink(&self, pipeline: &gst::Pipeline) -> anyhow::Result<Sink> {
        let mux = make("mpegtsmux", "mux")?;
        // Whole 188-byte packets, 7 to a datagram: what SRT receivers expect.
        mux.set_property("alignment", 7i32);
        let sink = make("srtsink", "srtsink")?;
        sink.set_property("uri", &self.uri);
        // A missing peer is an error (and a restart), not a silent wait.
        sink.set_property("wait-for-connection", false);
        pipeline.add_many([&mux, &sink])?;
        mux.link(&sink)?;
        Ok(Sink::new(mux))
    }

    fn input_pad(&self, link: &InputLink<'_>) -> anyhow::Result<gst::Pad> {
        link.request_pad("sink_%d")
    }

    fn endpoint(&self) -> Option<Endpoint> {
        Some(Endpoint::new(&self.uri, &[]))
    }

    /// srtsink (1.22) only warns when its peer is gone and then redials on its own,
    /// silently: the uplink would be down with nobody told. Treat it as the failure it
    /// is, so it is reported and retried with back-off like any other.
    fn warning_is_failure(&self, src: &str) -> bool {
        src == "srtsink"
    }

    /// The abrcontroller reads the srtsink's statistics.
    fn bind_feedback(&self, abr: &gst::Element, pipeline: Option<&gst::Pipeline>) {
        abr.set_property("srtsink", pipeline.and_then(|p| p.by_name("srtsink")));
    }
}
