#![allow(unused_doc_comments)]

//! The `latency` plugin: `latencystamp` attaches the capture time (UTC) to every buffer and
//! writes it into H.264/H.265 bitstreams as SEI; `latencymeter` reads it anywhere downstream,
//! even in another process or machine, and reports how old each frame is.

/**
 * plugin-latency:
 *
 * Since: 0.1.0
 */
use gst::glib;

mod clock;
mod format;
mod latencymeter;
pub(crate) mod latencystamp;
mod stats;

pub use clock::ClockSource;
pub use latencymeter::MeasureAt;
pub use latencystamp::StampMode;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    latencystamp::register(plugin)?;
    latencymeter::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    latency,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    "hybridlive",
    "https://hybridlive.invalid/",
    env!("BUILD_REL_DATE")
);
