//! `type = "rtmp"`: FLV pushed to an RTMP server (H.264 + AAC).

use gst::prelude::*;

use super::{InputLink, Kind, Sink, make};
use crate::endpoint::Endpoint;

/// Longest send backlog kept before an RTMP sink.
const RTMP_BACKLOG: gst::ClockTime = gst::ClockTime::from_seconds(5);

/// An RTMP output.
pub(crate) struct Rtmp {
    location: String,
}

impl Rtmp {
    /// An output publishing to `location`.
    pub(crate) fn new(location: &str) -> Rtmp {
        Rtmp {
            location: location.to_string(),
        }
    }
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
