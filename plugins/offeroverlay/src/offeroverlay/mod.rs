// SPDX-License-Identifier: MPL-2.0

//! The `offeroverlay` element: see `imp.rs` for its documentation.

use gst::glib;
use gst::prelude::*;

mod imp;

pub use crate::offer::Anchor;

glib::wrapper! {
    /// Burns timed commerce offer cards into raw video and keeps the offer timeline.
    pub struct OfferOverlay(ObjectSubclass<imp::OfferOverlay>)
        @extends gst_video::VideoFilter, gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    Anchor::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "offeroverlay",
        gst::Rank::NONE,
        OfferOverlay::static_type(),
    )
}
