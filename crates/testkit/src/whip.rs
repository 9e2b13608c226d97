//! A WHIP server for tests: gst-plugins-rs's `whipserversrc` on a loopback port, counting the
//! video frames published to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gst::prelude::*;

/// `whipserversrc` listening on `http://127.0.0.1:<port>`, endpoint `/whip/endpoint`, with ICE
/// on 127.0.0.1; every received video frame is counted. Stopped on drop.
pub struct WhipServer {
    pipeline: gst::Pipeline,
    frames: Arc<AtomicU64>,
    port: u16,
}

impl WhipServer {
    /// Starts the server on `port` (pick a free one; a busy port makes whipserversrc panic in
    /// a thread of its own instead of failing).
    pub fn start(port: u16) -> WhipServer {
        gst::init().expect("GStreamer initialises");
        hybridlive_webrtc::register_webrtc_elements().expect("gst-plugins-rs's WebRTC elements");
        let pipeline = gst::Pipeline::new();
        let server = gst::ElementFactory::make("whipserversrc")
            .build()
            .expect("whipserversrc");
        // No public STUN server: there is no route to it here.
        server.set_property("stun-server", None::<String>);
        let signaller = server.property::<gst::glib::Object>("signaller");
        signaller.set_property("host-addr", format!("http://127.0.0.1:{port}"));
        signaller.connect("webrtcbin-ready", false, |values| {
            if let Ok(webrtcbin) = values[2].get::<gst::Element>() {
                hybridlive_webrtc::add_local_address(&webrtcbin, "127.0.0.1")
                    .expect("a libnice ICE agent");
            }
            None
        });
        pipeline.add(&server).expect("add whipserversrc");
        let frames = Arc::new(AtomicU64::new(0));
        let (weak, counter) = (pipeline.downgrade(), frames.clone());
        server.connect_pad_added(move |_, pad| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            let Ok(sink) = gst::ElementFactory::make("fakesink").build() else {
                return;
            };
            if pipeline.add(&sink).is_err() {
                return;
            }
            let _ = sink.sync_state_with_parent();
            let Some(sink_pad) = sink.static_pad("sink") else {
                return;
            };
            if pad.name().starts_with("video") {
                let counter = counter.clone();
                sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    gst::PadProbeReturn::Ok
                });
            }
            let _ = pad.link(&sink_pad);
        });
        pipeline
            .set_state(gst::State::Playing)
            .expect("whipserversrc plays");
        WhipServer {
            pipeline,
            frames,
            port,
        }
    }

    /// The endpoint publishers POST their offer to.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/whip/endpoint", self.port)
    }

    /// Video frames received so far (decoded by the server's depayloader chain: whole
    /// frames, not packets).
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
}

impl Drop for WhipServer {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
