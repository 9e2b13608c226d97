//! WebRTC output of hybridlive: WHEP (RFC 9725) sessions served from one shared encoded stream.
//!
//! The encoder runs once (per codec: H.264, and VP8 if the output sends it too). Every viewer
//! gets a branch off a `tee` of the encoded video its offer asks for: a leaky queue, its own RTP
//! payloader (own SSRC and sequence numbers, the playout-delay header extension when the viewer
//! offers it) and its own `webrtcbin`. A
//! session ends on `DELETE`, when its ICE connection fails or closes, and nothing of it (bin,
//! tee pad, webrtcbin) survives.
//!
//! The HTTP side is the runner's; this crate takes an SDP offer and gives back the answer.

mod egress;
mod http;
mod nice;
mod offer;
mod rungs;
pub mod turn;
mod whep;

pub use egress::{Egress, EgressHealth, EgressPublisher, add_egress, register_webrtc_elements};
pub use http::{HttpRequest, HttpResponse, MAX_OFFER_BYTES, read_offer_request};
pub use nice::add_local_address;

/// This crate's GStreamer debug category: `GST_DEBUG=hybridlive*:5` traces viewer sessions
/// (never their ids: a session's id is what lets its holder end it).
pub(crate) static CAT: std::sync::LazyLock<gst::DebugCategory> = std::sync::LazyLock::new(|| {
    gst::DebugCategory::new(
        "hybridlive-webrtc",
        gst::DebugColorFlags::empty(),
        Some("hybridlive WebRTC: WHEP viewer sessions and WHIP/Janus egress"),
    )
});

/// The browser side of WHEP: plays an endpoint and measures glass-to-glass latency from the
/// capture stamps (ES module, imports `./stamp.js`).
pub const WHEP_PLAYER_JS: &str = include_str!("../web/whep-player.js");
/// Reads capture stamps from H.264 access units in the browser (ES module).
pub const STAMP_JS: &str = include_str!("../web/stamp.js");
pub use offer::{
    H264Offer, OfferError, PLAYOUT_DELAY_URI, RejectedSections, Skipped, VideoCodec, ViewerOffer,
    choose_h264, choose_opus, choose_vp8, read_viewer_offer, video_extmap_id,
};
pub use rungs::{RungCounts, RungStatus, RungSwitch, quality_pin, rung_message};
pub use turn::{IceServer, IceServerError, IceServerKind, TurnAuth, TurnCredential, TurnSecret};
pub use whep::{
    Answer, Audience, Branches, DEFAULT_PLAYOUT_DELAY, IcePorts, MAX_ECHO_BACKLOG, MAX_HAND_TEXT,
    PlayoutDelayMs, RaisedHand, SessionInfo, ViewerLatency, WhepConfig, WhepError, WhepOutput,
    set_local_description,
};

/// Entry points for the fuzz targets in `fuzz/`: what parses the messages viewers send over
/// the data channel. Not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::rungs::{read_report_blocks, read_twcc_feedback, round_trip};
    pub use crate::whep::{hand_text, latency_report};
}
