//! `type = "srt"`: MPEG-TS pushed over SRT (caller, or listener for the far end to pull).

use gst::prelude::*;

use super::{InputLink, Kind, Sink, make};
use crate::endpoint::Endpoint;

/// An SRT output.
pub(crate) struct Srt {
    uri: String,
}

impl Srt {
    /// An output sending to `uri`.
    pub(crate) fn new(uri: &str) -> Srt {
        Srt {
            uri: uri.to_string(),
        }
    }
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
