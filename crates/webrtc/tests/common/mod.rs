//! Shared by the WebRTC integration tests.
#![allow(dead_code)]

pub mod pages;
#[allow(unused_imports)]
pub use pages::*;

use gst::prelude::*;
use gst_rtp::prelude::*;
use hybridlive_webrtc::{PLAYOUT_DELAY_URI, WhepConfig, WhepOutput, add_local_address};
use std::time::{Duration, Instant};

/// Initialises GStreamer and registers the latency plugin, once: registering a static plugin a
/// second time replaces its factories under the feet of existing elements.
pub fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstlatency::plugin_register_static().unwrap();
    });
}

/// A live source encoded once, stamped, on a video tee `t` (H.264) and an audio tee `a` (Opus).
/// No parser after the encoder: h264parse completes its caps after the first SPS, and
/// webrtcsink-based egress refuses any caps change that needs renegotiation.
pub fn encoded_source(width: u32, height: u32, stream_id: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(&format!(
        "videotestsrc is-live=true pattern=ball ! \
         video/x-raw,format=I420,width={width},height={height},framerate=30/1 ! \
         latencystamp ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=300 ! \
         video/x-h264,profile=constrained-baseline ! latencystamp mode=sei stream-id={stream_id} ! \
         tee name=t allow-not-linked=true \
         audiotestsrc is-live=true wave=ticks ! opusenc ! tee name=a allow-not-linked=true"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap()
}

#[allow(unused_imports)]
pub use hybridlive_testkit::free_tcp_port;

/// A live source encoded once to VP8 with real-time settings, on a video tee `t`.
pub fn encoded_vp8_source(width: u32, height: u32) -> gst::Pipeline {
    init();
    gst::parse::launch(&format!(
        "videotestsrc is-live=true pattern=ball ! \
         video/x-raw,format=I420,width={width},height={height},framerate=30/1 ! \
         vp8enc deadline=1 cpu-used=8 end-usage=cbr target-bitrate=800000 lag-in-frames=0 \
         keyframe-max-dist=300 error-resilient=default ! tee name=t allow-not-linked=true"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap()
}

/// The sending side: one live encode, stamped, on a tee.
pub fn sender() -> (gst::Pipeline, WhepOutput) {
    sender_with(WhepConfig {
        loopback_ice: true,
        ..Default::default()
    })
}

pub fn sender_with(config: WhepConfig) -> (gst::Pipeline, WhepOutput) {
    let pipeline = encoded_source(320, 240, "whep");
    let tee = pipeline.by_name("t").unwrap();
    let audio = pipeline.by_name("a").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let output = WhepOutput::new(&pipeline, &tee, Some(&audio), config);
    (pipeline, output)
}

/// A viewer: a receive-only webrtcbin that decodes and measures. Returns its pipeline and a
/// channel that receives the meter's stats once frames flowed.
pub struct Viewer {
    pub pipeline: gst::Pipeline,
    pub webrtcbin: gst::Element,
    pub meter: gst::Element,
    pub audio_buffers: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The playout-delay extension the viewer offered, read by its depayloader.
    pub playout_delay: Option<gst_rtp::RTPHeaderExtension>,
}

impl Viewer {
    pub fn new() -> Self {
        Self::with_audio(false)
    }

    pub fn with_audio(audio: bool) -> Self {
        Self::with_options(audio, None)
    }

    /// With `playout_delay_id`, the viewer offers the playout-delay header extension with that
    /// id, as Chromium does, and its depayloader reads it.
    pub fn with_options(audio: bool, playout_delay_id: Option<u32>) -> Self {
        let pipeline = gst::Pipeline::new();
        let webrtcbin = gst::ElementFactory::make("webrtcbin")
            .property_from_str("bundle-policy", "max-bundle")
            .build()
            .unwrap();
        add_local_address(&webrtcbin, "127.0.0.1").unwrap();
        let meter = gst::ElementFactory::make("latencymeter").build().unwrap();
        pipeline.add(&webrtcbin).unwrap();
        let mut caps = gst::Caps::builder("application/x-rtp")
            .field("media", "video")
            .field("encoding-name", "H264")
            .field("clock-rate", 90000i32)
            .field("payload", 102i32)
            .field("packetization-mode", "1")
            .field("profile-level-id", "42e01f")
            .build();
        let playout_delay = playout_delay_id.map(|id| {
            caps.make_mut()
                .set(format!("extmap-{id}"), PLAYOUT_DELAY_URI);
            let ext = gst_rtp::RTPHeaderExtension::create_from_uri(PLAYOUT_DELAY_URI).unwrap();
            ext.set_id(id);
            // Not what the sender is configured with: only reading the packets changes it.
            ext.set_property("min-delay", 990u32);
            ext.set_property("max-delay", 990u32);
            ext
        });
        webrtcbin.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
            "add-transceiver",
            &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &caps],
        );
        if audio {
            let caps = gst::Caps::builder("application/x-rtp")
                .field("media", "audio")
                .field("encoding-name", "OPUS")
                .field("clock-rate", 48000i32)
                .field("payload", 111i32)
                .build();
            webrtcbin.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
                "add-transceiver",
                &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &caps],
            );
        }
        let audio_buffers = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (pipe, m, counter) = (pipeline.downgrade(), meter.clone(), audio_buffers.clone());
        let ext = playout_delay.clone();
        webrtcbin.connect_pad_added(move |_, pad| {
            let Some(pipeline) = pipe.upgrade() else {
                return;
            };
            let caps = pad.current_caps().unwrap();
            if caps.structure(0).unwrap().get::<&str>("media").unwrap() == "audio" {
                decode_and_count(
                    &pipeline,
                    pad,
                    "rtpopusdepay ! opusdec ! fakesink name=s",
                    counter.clone(),
                );
                return;
            }
            let decode = gst::parse::bin_from_description(
                "rtph264depay ! h264parse ! avdec_h264 ! queue name=q",
                true,
            )
            .unwrap();
            if let Some(ext) = &ext {
                let depay = decode
                    .iterate_elements()
                    .into_iter()
                    .filter_map(Result::ok)
                    .find(|e| e.factory().is_some_and(|f| f.name() == "rtph264depay"))
                    .unwrap();
                depay.emit_by_name::<()>("add-extension", &[ext]);
            }
            let sink = gst::ElementFactory::make("fakesink").build().unwrap();
            pipeline.add_many([decode.upcast_ref(), &m, &sink]).unwrap();
            gst::Element::link_many([decode.upcast_ref(), &m, &sink]).unwrap();
            for e in [decode.upcast_ref::<gst::Element>(), &m, &sink] {
                e.sync_state_with_parent().unwrap();
            }
            pad.link(&decode.static_pad("sink").unwrap()).unwrap();
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        Viewer {
            pipeline,
            webrtcbin,
            meter,
            audio_buffers,
            playout_delay,
        }
    }

    pub fn offer(&self) -> String {
        let promise = gst::Promise::new();
        self.webrtcbin
            .emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
        promise.wait();
        let offer = promise
            .get_reply()
            .unwrap()
            .get::<gst_webrtc::WebRTCSessionDescription>("offer")
            .unwrap();
        hybridlive_webrtc::set_local_description(&self.webrtcbin, &offer, Duration::from_secs(5))
            .unwrap()
    }

    pub fn answer(&self, sdp: &str) {
        take_answer(&self.webrtcbin, sdp);
    }

    /// Waits until the meter counted `frames` stamped frames; returns its stats.
    pub fn wait_frames(&self, frames: u64, timeout: Duration) -> gst::Structure {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.meter.property::<gst::Structure>("stats");
            if stats.get::<u64>("count").unwrap() >= frames {
                return stats;
            }
            assert!(Instant::now() < deadline, "only {stats} after {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

pub fn tee_src_pads(pipeline: &gst::Pipeline, tee: &str) -> usize {
    pipeline.by_name(tee).unwrap().src_pads().len()
}

pub fn webrtcbins(pipeline: &gst::Pipeline) -> usize {
    pipeline
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.factory().is_some_and(|f| f.name() == "webrtcbin"))
        .count()
}

/// Links `pad` to a new bin made from `description` (ending in a sink named `s`) and counts
/// the buffers that sink receives in `counter`.
pub fn decode_and_count(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    description: &str,
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let decode = gst::parse::bin_from_description(description, true).unwrap();
    pipeline.add(&decode).unwrap();
    decode.sync_state_with_parent().unwrap();
    decode
        .by_name("s")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    pad.link(&decode.static_pad("sink").unwrap()).unwrap();
}

/// Gives a receiving `webrtcbin` the WHEP answer `sdp`, and has it report every second, as
/// browsers do (GStreamer's default is every 5 s).
#[allow(dead_code)]
pub fn take_answer(webrtcbin: &gst::Element, sdp: &str) {
    let sdp = gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()).unwrap();
    let answer = gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Answer, sdp);
    let promise = gst::Promise::new();
    webrtcbin.emit_by_name::<()>("set-remote-description", &[&answer, &promise]);
    promise.wait();
    let rtpbin = webrtcbin
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .iterate_elements()
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.factory().is_some_and(|f| f.name() == "rtpbin"))
        .unwrap();
    let session = rtpbin.emit_by_name::<gst::glib::Object>("get-internal-session", &[&0u32]);
    session.set_property("rtcp-min-interval", 1_000_000_000u64);
}
