//! A WHEP viewer: a receive-only `webrtcbin` that offers H.264 (and Opus), takes the answer,
//! counts the video access units it receives and, when it decodes, measures glass-to-glass
//! latency from the capture stamps with `latencymeter` (registered by the caller, e.g.
//! `hybridlive_loadtest::init`). The load tests' viewers and the fault suite's are this one.

use anyhow::{Context as _, anyhow};
use gst::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The RTP header extension of transport-wide congestion control.
const TWCC_URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// How a viewer is built.
#[derive(Debug, Clone)]
pub struct ViewerOptions {
    /// Gather ICE candidates on 127.0.0.1 (a loopback-only network namespace).
    pub loopback: bool,
    /// Decode the video and measure latency (`latencymeter`s after `avdec_h264`); without it
    /// the viewer only depayloads and counts access units.
    pub decode: bool,
    /// One `latencymeter` per window length, in this order (decoding viewers only).
    pub meter_windows: Vec<Duration>,
    /// Ask for Opus as well.
    pub audio: bool,
    /// Offer transport-wide congestion control feedback, as browsers do: a server that
    /// estimates each viewer's bandwidth (a rung ladder) has an estimate for this one too.
    pub twcc: bool,
}

impl Default for ViewerOptions {
    fn default() -> Self {
        Self {
            loopback: true,
            decode: false,
            meter_windows: Vec::new(),
            audio: true,
            twcc: false,
        }
    }
}

/// A viewer. Dropping it stops its pipeline at once: the peer is gone, as when a browser tab
/// is closed.
pub struct Viewer {
    pipeline: gst::Pipeline,
    webrtcbin: gst::Element,
    meters: Vec<gst::Element>,
    video_units: Arc<AtomicU64>,
}

impl Viewer {
    /// A viewer in a pipeline of its own, playing (no offer made yet).
    pub fn new(options: &ViewerOptions) -> anyhow::Result<Viewer> {
        let pipeline = gst::Pipeline::new();
        let webrtcbin = gst::ElementFactory::make("webrtcbin")
            .property_from_str("bundle-policy", "max-bundle")
            .build()?;
        if options.loopback {
            hybridlive_webrtc::add_local_address(&webrtcbin, "127.0.0.1")?;
        }
        pipeline.add(&webrtcbin)?;
        let mut video = gst::Caps::builder("application/x-rtp")
            .field("media", "video")
            .field("encoding-name", "H264")
            .field("clock-rate", 90000i32)
            .field("payload", 102i32)
            .field("packetization-mode", "1")
            .field("profile-level-id", "42e01f")
            .build();
        if options.twcc {
            let video = video.make_mut();
            video.set("extmap-3", TWCC_URI);
            video.set("rtcp-fb-transport-cc", true);
        }
        webrtcbin.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
            "add-transceiver",
            &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &video],
        );
        if options.audio {
            let audio = gst::Caps::builder("application/x-rtp")
                .field("media", "audio")
                .field("encoding-name", "OPUS")
                .field("clock-rate", 48000i32)
                .field("payload", 111i32)
                .build();
            webrtcbin.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
                "add-transceiver",
                &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &audio],
            );
        }
        let meters = if options.decode {
            options
                .meter_windows
                .iter()
                .map(|window| {
                    gst::ElementFactory::make("latencymeter")
                        .property("window", window.as_nanos() as u64)
                        .property("interval", 0u64)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        let video_units = Arc::new(AtomicU64::new(0));
        let (weak, decode, chain, counter) = (
            pipeline.downgrade(),
            options.decode,
            meters.clone(),
            video_units.clone(),
        );
        webrtcbin.connect_pad_added(move |_, pad| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            if let Err(err) = receive(&pipeline, pad, decode, &chain, &counter) {
                eprintln!("viewer: cannot receive {}: {err}", pad.name());
            }
        });
        pipeline.set_state(gst::State::Playing)?;
        Ok(Viewer {
            pipeline,
            webrtcbin,
            meters,
            video_units,
        })
    }

    /// Creates the SDP offer and waits (up to `gather_timeout`) for its ICE candidates.
    pub fn offer(&self, gather_timeout: Duration) -> anyhow::Result<String> {
        let promise = gst::Promise::new();
        self.webrtcbin
            .emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
        promise.wait();
        let offer = promise
            .get_reply()
            .and_then(|r| r.get::<gst_webrtc::WebRTCSessionDescription>("offer").ok())
            .context("webrtcbin made no offer")?;
        hybridlive_webrtc::set_local_description(&self.webrtcbin, &offer, gather_timeout)
            .map_err(|e| anyhow!("offer: {e}"))
    }

    /// Applies the server's answer; ICE starts.
    pub fn accept(&self, answer: &str) -> anyhow::Result<()> {
        let sdp = gst_sdp::SDPMessage::parse_buffer(answer.as_bytes())
            .map_err(|_| anyhow!("the answer is not SDP"))?;
        let answer =
            gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Answer, sdp);
        let promise = gst::Promise::new();
        self.webrtcbin
            .emit_by_name::<()>("set-remote-description", &[&answer, &promise]);
        promise.wait();
        if let Some(err) = promise
            .get_reply()
            .and_then(|r| r.get::<gst::glib::Error>("error").ok())
        {
            return Err(anyhow!("set-remote-description: {err}"));
        }
        // Receiver reports every second, as browsers send them (GStreamer's default is 5 s):
        // the runner takes a viewer that stays silent for its timeout as gone.
        let rtpbin = self
            .webrtcbin
            .downcast_ref::<gst::Bin>()
            .and_then(|bin| {
                bin.iterate_elements()
                    .into_iter()
                    .filter_map(Result::ok)
                    .find(|e| e.factory().is_some_and(|f| f.name() == "rtpbin"))
            })
            .context("webrtcbin without rtpbin")?;
        let session = rtpbin
            .emit_by_name::<Option<gst::glib::Object>>("get-internal-session", &[&0u32])
            .context("no RTP session after the answer")?;
        session.set_property("rtcp-min-interval", 1_000_000_000u64);
        Ok(())
    }

    /// The viewer's pipeline, for a caller that watches its bus or its caps.
    pub fn pipeline(&self) -> &gst::Pipeline {
        &self.pipeline
    }

    /// Video access units received so far.
    pub fn video_units(&self) -> u64 {
        self.video_units.load(Ordering::Relaxed)
    }

    /// Waits until `units` video access units arrived; false after `timeout`.
    pub fn wait_video(&self, units: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.video_units() < units {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Statistics of meter `index` (see [`ViewerOptions::meter_windows`]); `None` before the
    /// first measured frame.
    pub fn meter_stats(&self, index: usize) -> Option<gst::Structure> {
        let stats = self.meters.get(index)?.property::<gst::Structure>("stats");
        (stats.get::<u64>("window-count").ok()? > 0).then_some(stats)
    }

    /// ICE connection state, as webrtcbin names it.
    pub fn ice_state(&self) -> gst_webrtc::WebRTCICEConnectionState {
        self.webrtcbin
            .property::<gst_webrtc::WebRTCICEConnectionState>("ice-connection-state")
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Links a new webrtcbin source pad: audio into a fakesink, video into a counter (and a decoder
/// with the meters).
fn receive(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    decode: bool,
    meters: &[gst::Element],
    counter: &Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let caps = pad.current_caps().context("pad without caps")?;
    let media = caps
        .structure(0)
        .and_then(|s| s.get::<&str>("media").ok())
        .unwrap_or("");
    if media != "video" {
        let sink = gst::ElementFactory::make("fakesink")
            .property("async", false)
            .build()?;
        pipeline.add(&sink)?;
        sink.sync_state_with_parent()?;
        pad.link(&sink.static_pad("sink").context("fakesink pad")?)?;
        return Ok(());
    }
    let description = if decode {
        "rtph264depay ! h264parse ! avdec_h264 ! queue max-size-buffers=2"
    } else {
        "rtph264depay ! h264parse"
    };
    let bin = gst::parse::bin_from_description(description, true)?;
    let sink = gst::ElementFactory::make("fakesink")
        .property("async", false)
        .property("sync", false)
        .build()?;
    let mut chain: Vec<gst::Element> = vec![bin.clone().upcast()];
    chain.extend(meters.iter().cloned());
    chain.push(sink.clone());
    pipeline.add_many(&chain)?;
    gst::Element::link_many(&chain)?;
    for element in &chain {
        element.sync_state_with_parent()?;
    }
    let counter = counter.clone();
    sink.static_pad("sink").context("fakesink pad")?.add_probe(
        gst::PadProbeType::BUFFER,
        move |_, _| {
            counter.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        },
    );
    pad.link(&bin.static_pad("sink").context("depayloader pad")?)?;
    Ok(())
}
