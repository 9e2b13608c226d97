// SPDX-License-Identifier: MPL-2.0
//! What the pipeline tests of `abrcontroller` share: GStreamer set up once, pipelines stopped
//! however a test ends, and waiting for a transport's signals to reach the controller.

use std::time::Duration;

use gst::prelude::*;

/// Initialises GStreamer and registers the abr plugin, once per test binary.
pub fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initialises");
        gstabr::plugin_register_static().expect("abr plugin registers");
    });
}

/// Sets the pipeline to NULL however the test ends.
pub struct StopOnDrop(pub gst::Pipeline);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// The `inputs` of `abr`'s statistics once they hold an RTT and a loss fraction from the
/// transport it follows; fails the test with `what` after `timeout`.
pub fn rtt_and_loss_inputs(abr: &gst::Element, timeout: Duration, what: &str) -> gst::Structure {
    hybridlive_testkit::eventually(timeout, what, || {
        let inputs = abr
            .property::<gst::Structure>("stats")
            .get::<gst::Structure>("inputs")
            .unwrap();
        (inputs.has_field("rtt") && inputs.has_field("loss")).then_some(inputs)
    })
}
