#![allow(unused_doc_comments)]

//! The `rtpext` plugin: RTP header extensions for low-latency WebRTC that GStreamer 1.22 lacks.
//!
//! `rtphdrextplayoutdelay` writes and reads the playout-delay extension
//! (`http://www.webrtc.org/experiments/rtp-hdrext/playout-delay`): the sender tells the
//! receiver how much jitter buffer it may use, between a minimum and a maximum delay. Browsers
//! honour it; with 0/0 Chromium renders each frame as soon as it is decoded.
//!
//! Like every GStreamer RTP header extension it is found by URI
//! (`gst_rtp::RTPHeaderExtension::create_from_uri`) and added to payloaders with their
//! `add-extension` signal, or created by payloaders and depayloaders from `extmap-N` caps fields.

/**
 * plugin-rtpext:
 *
 * Since: 0.1.0
 */
use gst::glib;

mod playoutdelay;

pub use playoutdelay::{MAX_DELAY_MS, PLAYOUT_DELAY_URI, PlayoutDelay};

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    playoutdelay::register(plugin)
}

gst::plugin_define!(
    rtpext,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    "hybridlive",
    "https://hybridlive.invalid/",
    env!("BUILD_REL_DATE")
);
