use gst::glib;
use gst::prelude::*;

mod imp;

/// The extension's URI, as it appears in SDP `a=extmap` lines.
pub const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// Largest delay the extension can carry: 12 bits of 10 ms units.
pub const MAX_DELAY_MS: u32 = 4095 * 10;

glib::wrapper! {
    /// The playout-delay RTP header extension; see the element documentation.
    pub struct PlayoutDelay(ObjectSubclass<imp::PlayoutDelay>)
        @extends gst_rtp::RTPHeaderExtension, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "rtphdrextplayoutdelay",
        gst::Rank::MARGINAL,
        PlayoutDelay::static_type(),
    )
}
