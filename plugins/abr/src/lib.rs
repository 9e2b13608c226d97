//! Adaptive bitrate control for any encoder and any uplink.
//!
//! The `abrcontroller` element sits in a stream after an encoder, listens to whatever
//! congestion signals it is given (webrtcbin and srtsink statistics, the backlog of a queue,
//! rtpgccbwe's estimate, an `abr-estimate` event) and steers the encoder's bitrate and,
//! through a capsfilter, the resolution and framerate.
//!
//! The decision logic is the pure state machine in [`controller`]; [`ladder`] parses the
//! rung ladder.
#![allow(clippy::non_send_fields_in_send_ty, unused_doc_comments)]

use gst::glib;

mod abrcontroller;
pub mod controller;
pub mod ladder;

/// Name of the structure of the custom event carrying explicit signals (see the element
/// documentation for its fields).
pub const ESTIMATE_EVENT: &str = "abr-estimate";

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    abrcontroller::register(plugin)
}

gst::plugin_define!(
    abr,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    "hybridlive",
    "https://hybridlive.invalid/",
    env!("BUILD_REL_DATE")
);
