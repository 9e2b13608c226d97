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
mod offer;
mod offeroverlay;
mod schedule;

pub use offeroverlay::{Anchor, OfferOverlay};

/// Entry points for the fuzz targets in `fuzz/`: the parsers that read schedule files and
/// `show-offer` JSON. Not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Parses and validates schedule text (JSON or TOML); the number of offers, or the error
    /// as the user would read it.
    pub fn schedule(text: &str, is_json: bool) -> Result<usize, String> {
        crate::schedule::parse_schedule("fuzz".into(), text, is_json, None)
            .map(|offers| offers.len())
            .map_err(|e| e.to_string())
    }

    /// Parses and validates one offer as the `show-offer` signal and `POST /api/offers` do.
    pub fn offer_json(text: &str) -> Result<(), String> {
        crate::schedule::parse_offer_json(text)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

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
