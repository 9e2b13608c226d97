//! What the WHEP endpoint reads from a viewer before any element is built for it (content type,
//! size, UTF-8, SDP, H.264/Opus choice), the JSON viewers send over the data channel (latency
//! reports, raised hands, quality pins) and the RTCP receiver reports that feed each viewer's
//! rung selector.
#![no_main]

use arbitrary::Arbitrary;
use hybridlive_webrtc::{HttpRequest, MAX_OFFER_BYTES, read_offer_request};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Post {
        content_type: Option<&'a str>,
        body: &'a [u8],
    },
    DataChannel(&'a str),
    Rtcp {
        packet: &'a [u8],
        now_ntp_mid: u32,
    },
}

fuzz_target!(|input: Input| {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| gst::init().expect("GStreamer initialises"));
    match input {
        Input::Post { content_type, body } => {
            let request = HttpRequest {
                method: "POST",
                path: "",
                content_type,
                body,
            };
            match read_offer_request(&request) {
                Ok(offer) => {
                    assert!(body.len() <= MAX_OFFER_BYTES);
                    assert!(offer.h264.is_some() || offer.vp8.is_some());
                    assert!(offer.h264.as_ref().is_none_or(|h| h.payload_type < 128));
                    assert!(offer.vp8.is_none_or(|pt| pt < 128));
                    assert!(offer.opus.is_none_or(|pt| pt < 128));
                }
                Err(response) => assert!((400..500).contains(&response.status)),
            }
        }
        Input::DataChannel(message) => {
            if let Some(report) = hybridlive_webrtc::fuzzing::latency_report(message) {
                assert!(report.p50_ms.is_finite() && report.p95_ms.is_finite());
            }
            if let Some(text) = hybridlive_webrtc::fuzzing::hand_text(message) {
                assert!(text.chars().count() <= hybridlive_webrtc::MAX_HAND_TEXT);
            }
            // A pin is a rung index or automatic; whether the ladder has it is checked later.
            let _ = hybridlive_webrtc::quality_pin(message);
        }
        Input::Rtcp {
            packet,
            now_ntp_mid,
        } => {
            let blocks = hybridlive_webrtc::fuzzing::read_report_blocks(packet);
            // A report block is 24 bytes of a packet at least 32 bytes long.
            assert!(blocks.len() * 24 <= packet.len());
            for block in &blocks {
                if let Some(rtt) = hybridlive_webrtc::fuzzing::round_trip(block, now_ntp_mid) {
                    assert!(rtt < std::time::Duration::from_secs(10));
                }
            }
            // Statuses come from two-byte chunks of at most 14 each, or from runs.
            for feedback in hybridlive_webrtc::fuzzing::read_twcc_feedback(packet) {
                assert!(feedback.statuses.len() <= usize::from(u16::MAX));
            }
        }
    }
});
