//! `type = "rtmp"`: FLV pushed to an RTMP server (H.264 + AAC).

use gst::prelude::*;

use serde::Serialize;

use super::{Context, InputLink, Kind, OutputFactory, Sink, make, refuse_vp8, settings};
use crate::config::reader::Fields;
use crate::config::{Diagnostic, EncoderKind, OutputSpec, Refusal};
use crate::endpoint::Endpoint;

/// Longest send backlog kept before an RTMP sink.
const RTMP_BACKLOG: gst::ClockTime = gst::ClockTime::from_seconds(5);

const TYPE: &str = "rtmp";

/// `type = "rtmp"`: FLV pushed to an RTMP server (H.264 + AAC).
#[derive(Debug, Clone, Serialize)]
pub struct RtmpOutput {
    /// `location`: e.g. `rtmp://live.example/app/stream-key`.
    pub location: String,
}

output_spec!(RtmpOutput, TYPE, {
    fn refuses_input(&self, input: &str, encoder: &EncoderKind) -> Option<Refusal> {
        match encoder {
            EncoderKind::Opus { .. } => Some(Refusal {
                message: format!("`{input}` is Opus, which RTMP (FLV) cannot carry"),
                help: Some("use an encoder with `type = \"aac\"` for RTMP".into()),
            }),
            _ => refuse_vp8(input, encoder),
        }
    }
});

/// The RTMP kind in the registry.
pub(super) struct Factory;

impl OutputFactory for Factory {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn steerable(&self) -> bool {
        true
    }

    fn parse(&self, diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<Box<dyn OutputSpec>> {
        let location = f.required_url(
            diags,
            "location",
            &["rtmp://", "rtmps://"],
            "an rtmp:// URL",
        )?;
        Some(Box::new(RtmpOutput { location }))
    }

    fn prepare(&self, spec: &dyn OutputSpec, _cx: &Context<'_>) -> anyhow::Result<Box<dyn Kind>> {
        Ok(Box::new(Rtmp {
            location: settings::<RtmpOutput>(spec)?.location.clone(),
        }))
    }
}

/// An RTMP output.
struct Rtmp {
    location: String,
}

impl Kind for Rtmp {
    fn build_sink(&self, pipeline: &gst::Pipeline) -> anyhow::Result<Sink> {
        let mux = make("flvmux", "mux")?;
        mux.set_property("streamable", true);
        // What TCP has not taken yet waits here: the send backlog an abrcontroller
        // reads. Bounded, so a stuck connection drops old media instead of memory.
        let backlog = make("queue", "backlog")?;
        backlog.set_property("max-size-time", RTMP_BACKLOG.nseconds());
        backlog.set_property("max-size-bytes", 0u32);
        backlog.set_property("max-size-buffers", 0u32);
        backlog.set_property_from_str("leaky", "downstream");
        let sink = make("rtmpsink", "rtmpsink")?;
        sink.set_property("location", &self.location);
        pipeline.add_many([&mux, &backlog, &sink])?;
        gst::Element::link_many([&mux, &backlog, &sink])?;
        Ok(Sink::new(mux))
    }

    fn input_pad(&self, link: &InputLink<'_>) -> anyhow::Result<gst::Pad> {
        link.request_pad(link.medium)
    }

    fn endpoint(&self) -> Option<Endpoint> {
        Some(Endpoint::new(&self.location, &[]))
    }

    /// The abrcontroller reads the backlog queue before the sink.
    fn bind_feedback(&self, abr: &gst::Element, pipeline: Option<&gst::Pipeline>) {
        abr.set_property("queue", pipeline.and_then(|p| p.by_name("backlog")));
    }
}
