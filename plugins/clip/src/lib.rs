#![allow(clippy::non_send_fields_in_send_ty, unused_doc_comments)]

//! GStreamer plugin `clip`: the `clipextract` element cuts clips out of encoded recordings
//! (H.264, H.265 video; AAC, Opus and other framed audio) without decoding what it copies.

use gst::glib;

mod clipextract;

pub use clipextract::{CLIP_END_EVENT, CLIP_START_EVENT, ClipMode};

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    clipextract::register(plugin)
}

gst::plugin_define!(
    clip,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
