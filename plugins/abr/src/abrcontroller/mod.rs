use gst::glib;
use gst::prelude::*;

mod checked;
mod imp;

glib::wrapper! {
    pub struct AbrController(ObjectSubclass<imp::AbrController>)
        @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "abrcontroller",
        gst::Rank::NONE,
        AbrController::static_type(),
    )
}
