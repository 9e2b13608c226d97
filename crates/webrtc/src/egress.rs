//! Publishing the shared encode to an SFU, the way audiences grow past one machine: WHIP
//! (`whipclientsink`) and Janus VideoRoom (`janusvrwebrtcsink`), both from gst-plugins-rs's
//! WebRTC plugin, fed with the already encoded streams (no second encode).

use gst::glib;
use gst::prelude::*;

use crate::nice::add_local_address;

/// Where to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    /// A WHIP endpoint (RFC 9725), with an optional bearer token.
    Whip {
        /// The endpoint URL, e.g. `https://sfu.example/whip/endpoint`.
        endpoint: String,
        /// Bearer token sent with the offer.
        token: Option<String>,
    },
    /// A Janus VideoRoom, over Janus's WebSocket API.
    Janus {
        /// WebSocket URL of Janus, e.g. `ws://127.0.0.1:8188`.
        endpoint: String,
        /// The room to publish in.
        room_id: u64,
        /// Our feed id in the room.
        feed_id: u64,
        /// Display name in the room.
        display_name: String,
    },
}

/// Registers gst-plugins-rs's WebRTC elements in this process (once).
pub fn register_webrtc_elements() -> Result<(), glib::BoolError> {
    static ONCE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| gstrswebrtc::plugin_register_static().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| glib::bool_error!("{e}"))
}

/// Adds a publisher for `egress` to `pipeline`, fed from `video_tee` (H.264 access units) and
/// `audio_tee` (Opus), and returns it. `loopback_ice` adds 127.0.0.1 to its ICE agents.
/// Errors of the sink (endpoint unreachable, refused) come as element errors on the bus.
pub fn add_egress(
    pipeline: &gst::Pipeline,
    video_tee: &gst::Element,
    audio_tee: Option<&gst::Element>,
    egress: &Egress,
    loopback_ice: bool,
) -> Result<gst::Element, glib::BoolError> {
    register_webrtc_elements()?;
    let sink = match egress {
        Egress::Whip { endpoint, token } => {
            let sink = gst::ElementFactory::make("whipclientsink").build()?;
            let signaller = sink.property::<glib::Object>("signaller");
            signaller.set_property("whip-endpoint", endpoint);
            if let Some(token) = token {
                signaller.set_property("auth-token", token);
            }
            sink
        }
        Egress::Janus {
            endpoint,
            room_id,
            feed_id,
            display_name,
        } => {
            let sink = gst::ElementFactory::make("janusvrwebrtcsink").build()?;
            let signaller = sink.property::<glib::Object>("signaller");
            signaller.set_property("janus-endpoint", endpoint);
            signaller.set_property("room-id", room_id.to_string());
            signaller.set_property("feed-id", feed_id.to_string());
            signaller.set_property("display-name", display_name);
            sink
        }
    };
    // No public STUN server: there may be no route to it, and the SFU is reachable directly.
    sink.set_property("stun-server", None::<String>);
    // The stream is encoded once upstream; there is no encoder for the sink to steer.
    sink.set_property_from_str("congestion-control", "disabled");
    if loopback_ice {
        let signaller = sink.property::<glib::Object>("signaller");
        signaller.connect("webrtcbin-ready", false, |values| {
            if let Ok(webrtcbin) = values[2].get::<gst::Element>() {
                let _ = add_local_address(&webrtcbin, "127.0.0.1");
            }
            None
        });
    }
    pipeline.add(&sink)?;
    let mut feeds = vec![(video_tee, "video_%u")];
    if let Some(audio_tee) = audio_tee {
        feeds.push((audio_tee, "audio_%u"));
    }
    for (tee, template) in feeds {
        let src = tee
            .request_pad_simple("src_%u")
            .ok_or_else(|| glib::bool_error!("the tee gave no pad"))?;
        let queue = gst::ElementFactory::make("queue")
            .property_from_str("leaky", "downstream")
            .build()?;
        pipeline.add(&queue)?;
        let sink_pad = sink
            .request_pad_simple(template)
            .ok_or_else(|| glib::bool_error!("{} gave no {template} pad", sink.name()))?;
        src.link(&queue.static_pad("sink").expect("queue sink"))
            .map_err(|e| glib::bool_error!("{e}"))?;
        queue
            .static_pad("src")
            .expect("queue src")
            .link(&sink_pad)
            .map_err(|e| glib::bool_error!("{e}"))?;
        queue.sync_state_with_parent()?;
    }
    sink.sync_state_with_parent()?;
    Ok(sink)
}
