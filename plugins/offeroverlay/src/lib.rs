// SPDX-License-Identifier: MPL-2.0
#![allow(unused_doc_comments)]

//! `offeroverlay`: timed commerce offer cards burned into live video, with the offer timeline
//! posted as element messages and sent downstream as serialized custom events.

/**
 * plugin-offeroverlay:
 *
 * Since: 0.1.0
 */
use gst::glib;

mod blend;
mod card;
mod offeroverlay;
mod schedule;

pub use offeroverlay::{Anchor, OfferOverlay};

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    offeroverlay::register(plugin)
}

gst::plugin_define!(
    offeroverlay,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    "hybridlive",
    "https://hybridlive.invalid/",
    env!("BUILD_REL_DATE")
);
