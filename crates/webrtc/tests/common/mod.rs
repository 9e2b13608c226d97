//! Shared by the WebRTC integration tests.
#![allow(dead_code)]

use gst::prelude::*;

/// Initialises GStreamer and registers the latency plugin, once: registering a static plugin a
/// second time replaces its factories under the feet of existing elements.
pub fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstlatency::plugin_register_static().unwrap();
    });
}

/// A live source encoded once, stamped, on a video tee `t` (H.264) and an audio tee `a` (Opus).
/// No parser after the encoder: h264parse completes its caps after the first SPS, and
/// webrtcsink-based egress refuses any caps change that needs renegotiation.
pub fn encoded_source(width: u32, height: u32, stream_id: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(&format!(
        "videotestsrc is-live=true pattern=ball ! \
         video/x-raw,format=I420,width={width},height={height},framerate=30/1 ! \
         latencystamp ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=300 ! \
         video/x-h264,profile=constrained-baseline ! latencystamp mode=sei stream-id={stream_id} ! \
         tee name=t allow-not-linked=true \
         audiotestsrc is-live=true wave=ticks ! opusenc ! tee name=a allow-not-linked=true"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap()
}

#[allow(unused_imports)]
pub use hybridlive_testkit::free_tcp_port;

/// A live source encoded once to VP8 with real-time settings, on a video tee `t`.
pub fn encoded_vp8_source(width: u32, height: u32) -> gst::Pipeline {
    init();
    gst::parse::launch(&format!(
        "videotestsrc is-live=true pattern=ball ! \
         video/x-raw,format=I420,width={width},height={height},framerate=30/1 ! \
         vp8enc deadline=1 cpu-used=8 end-usage=cbr target-bitrate=800000 lag-in-frames=0 \
         keyframe-max-dist=300 error-resilient=default ! tee name=t allow-not-linked=true"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap()
}
