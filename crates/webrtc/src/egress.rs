//! Publishing the shared encode to an SFU, the way audiences grow past one machine: WHIP
//! (`whipclientsink`) and Janus VideoRoom (`janusvrwebrtcsink`), both from gst-plugins-rs's
//! WebRTC plugin, fed with the already encoded streams (no second encode).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        /// Our feed id in the room; Janus picks one when `None`.
        feed_id: Option<u64>,
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

/// A publisher added by [`add_egress`]: the sink element and what is known of its link.
#[derive(Debug, Clone)]
pub struct EgressPublisher {
    /// The `whipclientsink` or `janusvrwebrtcsink`.
    pub sink: gst::Element,
    /// The state of its connection to the SFU.
    pub health: EgressHealth,
}

/// The link of an egress publisher to its SFU, as far as the publisher can tell.
///
/// gst-plugins-rs's sinks do not report a lost SFU: when the peer connection fails they drop
/// the session silently and publish nothing from then on, and when the server just vanishes
/// (killed, unplugged) ICE on GStreamer 1.22 never notices (no consent freshness). So the
/// connection state is watched, the session's removal too, and so is RTCP from the server: a
/// WebRTC receiver sends receiver reports every few seconds, and their absence means the
/// server is gone.
#[derive(Debug, Clone, Default)]
pub struct EgressHealth {
    inner: Arc<Mutex<Health>>,
}

#[derive(Debug, Default)]
struct Health {
    webrtcbin: Option<glib::WeakRef<gst::Element>>,
    connected_at: Option<Instant>,
    last_rtcp: Option<Instant>,
    lost: Option<String>,
}

impl EgressHealth {
    /// Whether the peer connection to the SFU is up (and not lost since).
    pub fn connected(&self) -> bool {
        let h = self.inner.lock().unwrap();
        h.connected_at.is_some() && h.lost.is_none()
    }

    /// Why the link is gone, if it is: the connection failed or closed, the sink ended its
    /// session, or nothing came back from the server (no RTCP) for `peer_timeout` since it
    /// connected or last spoke.
    pub fn lost(&self, peer_timeout: Duration) -> Option<String> {
        let h = self.inner.lock().unwrap();
        if let Some(reason) = &h.lost {
            return Some(reason.clone());
        }
        let connected_at = h.connected_at?;
        let heard = h.last_rtcp.map_or(connected_at, |t| t.max(connected_at));
        (heard.elapsed() > peer_timeout).then(|| {
            format!(
                "no RTCP from the server for {:.0} s: it is gone",
                heard.elapsed().as_secs_f64()
            )
        })
    }

    /// The session's `webrtcbin` while connected: its statistics (receiver reports from the
    /// SFU) are what a bitrate controller follows.
    pub fn webrtcbin(&self) -> Option<gst::Element> {
        let h = self.inner.lock().unwrap();
        if h.connected_at.is_none() || h.lost.is_some() {
            return None;
        }
        h.webrtcbin.as_ref().and_then(|w| w.upgrade())
    }

    fn set_lost(&self, reason: String) {
        self.inner.lock().unwrap().lost.get_or_insert(reason);
    }

    /// Follows one session's `webrtcbin`: its connection state and the RTCP it receives.
    fn watch(&self, webrtcbin: &gst::Element) {
        let health = self.clone();
        webrtcbin.connect_notify(Some("connection-state"), move |webrtcbin, _| {
            use gst_webrtc::WebRTCPeerConnectionState as State;
            let state = webrtcbin.property::<State>("connection-state");
            match state {
                State::Connected => {
                    {
                        let mut h = health.inner.lock().unwrap();
                        h.connected_at = Some(Instant::now());
                        h.webrtcbin = Some(webrtcbin.downgrade());
                    }
                    // Negotiation is over: the RTP session exists now.
                    if let Some(session) = rtp_session(webrtcbin) {
                        let heard = health.clone();
                        session.connect("on-receiving-rtcp", false, move |_| {
                            heard.inner.lock().unwrap().last_rtcp = Some(Instant::now());
                            None
                        });
                    }
                }
                State::Failed | State::Closed | State::Disconnected => {
                    health.set_lost(format!("the peer connection is {state:?}").to_lowercase());
                }
                _ => {}
            }
        });
    }
}

/// The RTP session of a negotiated `webrtcbin` (one bundled transport: session 0).
fn rtp_session(webrtcbin: &gst::Element) -> Option<glib::Object> {
    let rtpbin = webrtcbin.downcast_ref::<gst::Bin>().and_then(|b| {
        b.iterate_elements()
            .into_iter()
            .filter_map(Result::ok)
            .find(|e| e.factory().is_some_and(|f| f.name() == "rtpbin"))
    })?;
    rtpbin.emit_by_name::<Option<glib::Object>>("get-internal-session", &[&0u32])
}

/// Adds a publisher for `egress` to `pipeline`, fed from `video_tee` (H.264 access units) and
/// `audio_tee` (Opus), and returns it. `loopback_ice` adds 127.0.0.1 to its ICE agents.
/// Errors of the sink (endpoint unreachable, refused) come as element errors on the bus; a
/// link lost later shows in [`EgressPublisher::health`].
pub fn add_egress(
    pipeline: &gst::Pipeline,
    video_tee: &gst::Element,
    audio_tee: Option<&gst::Element>,
    egress: &Egress,
    loopback_ice: bool,
) -> Result<EgressPublisher, glib::BoolError> {
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
            signaller.set_property("room-id", *room_id);
            if let Some(feed_id) = feed_id {
                signaller.set_property("feed-id", *feed_id);
            }
            signaller.set_property("display-name", display_name);
            sink
        }
    };
    // No public STUN server: there may be no route to it, and the SFU is reachable directly.
    sink.set_property("stun-server", None::<String>);
    // The stream is encoded once upstream; there is no encoder for the sink to steer.
    sink.set_property_from_str("congestion-control", "disabled");
    let health = EgressHealth::default();
    let signaller = sink.property::<glib::Object>("signaller");
    let watched = health.clone();
    signaller.connect("webrtcbin-ready", false, move |values| {
        if let Ok(webrtcbin) = values[2].get::<gst::Element>() {
            if loopback_ice {
                let _ = add_local_address(&webrtcbin, "127.0.0.1");
            }
            watched.watch(&webrtcbin);
        }
        None
    });
    // The sink ends a failed session on its own and then publishes nothing, without an error.
    let ended = health.clone();
    sink.connect("consumer-removed", false, move |_| {
        ended.set_lost("the SFU session ended".into());
        None
    });
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
    Ok(EgressPublisher { sink, health })
}
