//! The sink side every WebRTC kind shares (WHEP viewers, WHIP and Janus egress): one tee per
//! medium, which each viewer's branch or the egress publisher hangs off.

use anyhow::Context as _;
use gst::prelude::*;

use super::{InputLink, Sink, make};

/// The tees and their keep-alive branches.
pub(super) fn build_sink(pipeline: &gst::Pipeline) -> anyhow::Result<Sink> {
    // A fakesink on each keeps the tees flowing and lets EOS finish the pipeline without
    // viewers.
    let video = keepalive_tee(pipeline, "video")?;
    keepalive_tee(pipeline, "audio")?;
    keepalive_tee(pipeline, "video-vp8")?;
    Ok(Sink::new(video))
}

/// A tee named `name` in `pipeline`, with its keep-alive branch.
fn keepalive_tee(pipeline: &gst::Pipeline, name: &str) -> anyhow::Result<gst::Element> {
    let tee = make("tee", name)?;
    tee.set_property("allow-not-linked", true);
    let queue = make("queue", &format!("{name}-keepalive-queue"))?;
    queue.set_property_from_str("leaky", "downstream");
    let sink = make("fakesink", &format!("{name}-keepalive"))?;
    sink.set_property("sync", false);
    sink.set_property("async", false);
    pipeline.add_many([&tee, &queue, &sink])?;
    gst::Element::link_many([&tee, &queue, &sink])?;
    Ok(tee)
}

/// The tee of the input's medium.
pub(super) fn input_pad(link: &InputLink<'_>) -> anyhow::Result<gst::Pad> {
    // A joining viewer (or the SFU) asks its branch for a key frame; the encoder is
    // in the ingest pipeline, behind the appsrc: pass the request on to it (to the
    // encoder of this input only: a VP8 viewer needs no H.264 key frame).
    let requesters: Vec<gst::Element> = link
        .keyframe_requesters
        .iter()
        .filter(|(encoder, _)| *encoder == link.input.encoder)
        .map(|(_, appsink)| appsink.clone())
        .collect();
    link.appsrc
        .static_pad("src")
        .context("appsrc src")?
        .add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
            if let Some(event) = info.event()
                && gst_video::UpstreamForceKeyUnitEvent::parse(event).is_ok()
            {
                for appsink in &requesters {
                    appsink.send_event(event.clone());
                }
            }
            gst::PadProbeReturn::Ok
        });
    // A lower rung of a ladder gets a tee of its own; the top rung is the `video` tee.
    if let Some(rung) = link.input.rung.as_ref().filter(|r| r.index > 0) {
        let tee = keepalive_tee(link.pipeline, &rung_tee_name(rung.index))?;
        return tee.static_pad("sink").context("tee without sink pad");
    }
    let template = link.medium;
    link.pipeline
        .by_name(template)
        .and_then(|tee| tee.static_pad("sink"))
        .with_context(|| format!("no {template} tee"))
}

/// The tee of rung `index` (> 0) of a ladder.
pub(super) fn rung_tee_name(index: usize) -> String {
    format!("video@{index}")
}

/// Removes the tees no input feeds.
pub(super) fn remove_unfed(pipeline: &gst::Pipeline) -> anyhow::Result<()> {
    for tee in ["audio", "video-vp8", "video"] {
        if let Some(unfed) = pipeline.by_name(tee)
            && unfed.static_pad("sink").is_some_and(|pad| !pad.is_linked())
        {
            // No encoder of that kind (no audio, or only one of the video codecs): an
            // unfed branch would never see EOS, and the pipeline would never finish on a
            // stop (the shutdown would wait out its grace period).
            let branch: Vec<gst::Element> = [
                tee.to_string(),
                format!("{tee}-keepalive-queue"),
                format!("{tee}-keepalive"),
            ]
            .iter()
            .filter_map(|name| pipeline.by_name(name))
            .collect();
            pipeline.remove_many(&branch)?;
        }
    }
    Ok(())
}

/// While the output is down, or until an egress publisher is connected, the abrcontroller
/// follows no webrtcbin.
pub(super) fn unbind_feedback(abr: &gst::Element) {
    abr.set_property("webrtcbin", None::<gst::Element>);
}
