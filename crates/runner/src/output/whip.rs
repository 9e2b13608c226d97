//! `type = "whip"`: the encoded streams published to an SFU's WHIP endpoint (RFC 9725) with
//! `whipclientsink`, no second encode.

use super::egress::Publisher;

/// A WHIP output: a publisher to `endpoint`, its bearer `token` masked in every message.
pub(crate) fn new(endpoint: &str, token: Option<&str>, loopback_only: bool) -> Publisher {
    Publisher::new(
        hybridlive_webrtc::Egress::Whip {
            endpoint: endpoint.to_string(),
            token: token.map(str::to_string),
        },
        loopback_only,
        endpoint,
        vec![token.unwrap_or("").to_string()],
    )
}
