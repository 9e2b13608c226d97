use gst::glib;
use gst::prelude::*;

pub(crate) mod imp;

/// What `latencystamp` writes.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLatencyStampMode")]
pub enum StampMode {
    /// Meta on raw and other streams; meta and SEI on H.264/H.265 access units.
    #[default]
    #[enum_value(
        name = "Auto: meta, plus SEI on H.264/H.265 access units",
        nick = "auto"
    )]
    Auto,
    /// Only the `GstReferenceTimestampMeta` (timestamp/x-unix).
    #[enum_value(
        name = "Meta only (GstReferenceTimestampMeta timestamp/x-unix)",
        nick = "meta"
    )]
    Meta,
    /// Only the SEI in the bitstream (H.264/H.265 access units).
    #[enum_value(name = "SEI only (H.264/H.265 user data unregistered)", nick = "sei")]
    Sei,
    /// Both meta and SEI.
    #[enum_value(name = "Both meta and SEI", nick = "both")]
    Both,
}

glib::wrapper! {
    /// Attaches capture time to buffers; see the element documentation.
    pub struct LatencyStamp(ObjectSubclass<imp::LatencyStamp>)
        @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    StampMode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    crate::ClockSource::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "latencystamp",
        gst::Rank::NONE,
        LatencyStamp::static_type(),
    )
}
