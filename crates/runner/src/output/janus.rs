//! `type = "janus"`: the encoded streams published into a Janus VideoRoom with
//! `janusvrwebrtcsink` (Janus's WebSocket API), no second encode.

use super::egress::Publisher;

/// A Janus output: a publisher in `room_id` of the Janus at `endpoint`.
pub(crate) fn new(
    endpoint: &str,
    room_id: u64,
    feed_id: Option<u64>,
    display_name: String,
    loopback_only: bool,
) -> Publisher {
    Publisher::new(
        hybridlive_webrtc::Egress::Janus {
            endpoint: endpoint.to_string(),
            room_id,
            feed_id,
            display_name,
        },
        loopback_only,
        endpoint,
        Vec::new(),
    )
}
