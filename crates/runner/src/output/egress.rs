//! What WHIP and Janus egress share: a publisher to an SFU, fed from the tees of the shared
//! encode (the SFU gets the very stream the viewers, HLS and the recording get, with its
//! capture stamps). The supervisor checks its link every status tick.

use std::sync::Mutex;

use anyhow::Context as _;
use gst::prelude::*;

use super::{InputLink, Kind, Sink, tees};
use crate::endpoint::Endpoint;

/// An output publishing to an SFU.
pub(crate) struct Publisher {
    egress: hybridlive_webrtc::Egress,
    loopback_ice: bool,
    /// The SFU's URL, for messages.
    url: String,
    /// Masked wherever the URL is shown.
    secrets: Vec<String>,
    /// The link of the running publisher to its SFU.
    health: Mutex<Option<hybridlive_webrtc::EgressHealth>>,
}

impl Publisher {
    /// A publisher for `egress`; `url` and `secrets` describe it in messages.
    pub(super) fn new(
        egress: hybridlive_webrtc::Egress,
        loopback_ice: bool,
        url: &str,
        secrets: Vec<String>,
    ) -> Publisher {
        Publisher {
            egress,
            loopback_ice,
            url: url.to_string(),
            secrets,
            health: Mutex::new(None),
        }
    }
}

impl Kind for Publisher {
    fn build_sink(&self, pipeline: &gst::Pipeline) -> anyhow::Result<Sink> {
        tees::build_sink(pipeline)
    }

    fn input_pad(&self, link: &InputLink<'_>) -> anyhow::Result<gst::Pad> {
        tees::input_pad(link)
    }

    fn finish_build(
        &self,
        pipeline: &gst::Pipeline,
        _inputs: &[super::Input],
    ) -> anyhow::Result<()> {
        tees::remove_unfed(pipeline)?;
        let video = pipeline.by_name("video").context("no video tee")?;
        // Only there with an audio encoder (see tees::remove_unfed).
        let audio = pipeline.by_name("audio");
        let publisher = hybridlive_webrtc::add_egress(
            pipeline,
            &video,
            audio.as_ref(),
            &self.egress,
            self.loopback_ice,
        )
        .context("cannot set up the egress publisher")?;
        *self.health.lock().unwrap() = Some(publisher.health);
        Ok(())
    }

    fn endpoint(&self) -> Option<Endpoint> {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        Some(Endpoint::new(&self.url, &secrets))
    }

    /// An SFU publisher has no file to finish. An EOS through gst-plugins-rs's webrtcsink
    /// can end in an error inside its session pipeline, which it handles on its tokio
    /// runtime, where whipclientsink's blocking DELETE aborts the whole process (seen 1 in
    /// 8 stops). Taken down from the stopping thread, the sink ends its session (DELETE)
    /// there.
    fn stops_by_teardown(&self) -> bool {
        true
    }

    /// Set once the publisher is connected (the supervisor's egress check).
    fn bind_feedback(&self, abr: &gst::Element, _pipeline: Option<&gst::Pipeline>) {
        tees::unbind_feedback(abr);
    }

    fn egress(&self) -> Option<hybridlive_webrtc::EgressHealth> {
        self.health.lock().unwrap().clone()
    }

    fn release(&self) {
        *self.health.lock().unwrap() = None;
    }
}
