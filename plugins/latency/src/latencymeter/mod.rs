use gst::glib;
use gst::prelude::*;

mod imp;

/// When `latencymeter` takes the measuring instant.
#[derive(Debug, Default, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLatencyMeasureAt")]
pub enum MeasureAt {
    /// When the buffer reaches the meter.
    #[default]
    #[enum_value(name = "When the buffer reaches the meter", nick = "arrival")]
    Arrival,
    /// When a synchronising sink downstream will render the buffer: base time + running time +
    /// the pipeline latency configured on this branch.
    #[enum_value(
        name = "When the buffer is rendered (running time + base time + pipeline latency)",
        nick = "render"
    )]
    Render,
}

glib::wrapper! {
    /// Measures capture-to-here latency; see the element documentation.
    pub struct LatencyMeter(ObjectSubclass<imp::LatencyMeter>)
        @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    MeasureAt::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "latencymeter",
        gst::Rank::NONE,
        LatencyMeter::static_type(),
    )
}
