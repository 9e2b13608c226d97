//! What a viewer's SDP offer asks for.

/// The H.264 format chosen from an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H264Offer {
    /// The offer's payload type for it: the answer must use the same.
    pub payload_type: u32,
    /// The offer's `profile-level-id`, echoed in the answer.
    pub profile_level_id: String,
}

/// Why an offer cannot be served. All are the client's fault (HTTP 400 / 406).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Not parseable as SDP.
    #[error("the offer is not valid SDP")]
    NotSdp,
    /// No video m-line.
    #[error("the offer has no video media section")]
    NoVideo,
    /// Video offered, but no H.264 the stream can be sent as.
    #[error("the offer has no H.264 with packetization-mode=1 and a constrained baseline profile")]
    NoH264,
}

/// What a viewer's offer asks for, read and checked before anything is built for it.
#[derive(Debug)]
pub struct ViewerOffer {
    /// The parsed offer.
    pub sdp: gst_sdp::SDPMessage,
    /// The H.264 format the answer will use.
    pub h264: H264Offer,
    /// The Opus payload type, if the offer has one.
    pub opus: Option<u32>,
    /// The id the offer gives the playout-delay header extension in its video section, if it
    /// offers it.
    pub playout_delay_id: Option<u32>,
}

/// URI of the playout-delay RTP header extension (see the `rtphdrextplayoutdelay` element).
pub const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// Parses SDP offer text and picks the formats to answer with.
pub fn read_viewer_offer(text: &str) -> Result<ViewerOffer, OfferError> {
    let sdp = gst_sdp::SDPMessage::parse_buffer(text.as_bytes()).map_err(|_| OfferError::NotSdp)?;
    let h264 = choose_h264(&sdp)?;
    let opus = choose_opus(&sdp);
    let playout_delay_id = video_extmap_id(&sdp, PLAYOUT_DELAY_URI);
    Ok(ViewerOffer {
        sdp,
        h264,
        opus,
        playout_delay_id,
    })
}

/// The id of header extension `uri` in the offer's first video section
/// (`a=extmap:<id>[/<direction>] <uri>`). One-byte ids are 1-14, two-byte ids 1-255; 0 and
/// 15 are reserved in the one-byte form and never answered.
pub fn video_extmap_id(offer: &gst_sdp::SDPMessageRef, uri: &str) -> Option<u32> {
    let video = offer.medias().find(|m| m.media() == Some("video"))?;
    video.attributes().find_map(|a| {
        if a.key() != "extmap" {
            return None;
        }
        let mut parts = a.value()?.split_whitespace();
        let id = parts.next()?.split('/').next()?.parse::<u32>().ok()?;
        ((1..=255).contains(&id) && id != 15 && parts.next() == Some(uri)).then_some(id)
    })
}

/// Picks the first H.264 format of the first video section that carries packetization-mode=1
/// and a constrained baseline profile-level-id (profile_idc 0x42 with constraint_set1), which
/// is what the shared x264 encoder produces.
pub fn choose_h264(offer: &gst_sdp::SDPMessageRef) -> Result<H264Offer, OfferError> {
    let video = offer
        .medias()
        .find(|m| m.media() == Some("video"))
        .ok_or(OfferError::NoVideo)?;
    for format in video.formats() {
        // RTP payload types are 7 bits; anything else cannot be answered.
        let Some(pt) = format.parse::<u32>().ok().filter(|pt| *pt < 128) else {
            continue;
        };
        let is_h264 = video.attributes().any(|a| {
            a.key() == "rtpmap"
                && a.value().is_some_and(|v| {
                    let mut parts = v.split_whitespace();
                    parts.next() == Some(format)
                        && parts
                            .next()
                            .is_some_and(|codec| codec.eq_ignore_ascii_case("H264/90000"))
                })
        });
        if !is_h264 {
            continue;
        }
        let fmtp = video
            .attributes()
            .filter(|a| a.key() == "fmtp")
            .filter_map(|a| a.value())
            .find_map(|v| {
                v.strip_prefix(format)
                    .and_then(|rest| rest.strip_prefix(' '))
            });
        let Some(fmtp) = fmtp else {
            continue;
        };
        let param = |key: &str| {
            fmtp.split(';')
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.trim().to_string())
        };
        let Some(profile_level_id) = param("profile-level-id") else {
            continue;
        };
        if param("packetization-mode").as_deref() != Some("1") {
            continue;
        }
        if is_constrained_baseline(&profile_level_id) {
            return Ok(H264Offer {
                payload_type: pt,
                profile_level_id,
            });
        }
    }
    Err(OfferError::NoH264)
}

/// The payload type of Opus (opus/48000/2) in the offer's first audio section, if it offers it.
pub fn choose_opus(offer: &gst_sdp::SDPMessageRef) -> Option<u32> {
    let audio = offer.medias().find(|m| m.media() == Some("audio"))?;
    audio.attributes().find_map(|a| {
        if a.key() != "rtpmap" {
            return None;
        }
        let mut parts = a.value()?.split_whitespace();
        let pt = parts.next()?.parse::<u32>().ok().filter(|pt| *pt < 128)?;
        let codec = parts.next()?;
        codec
            .to_ascii_lowercase()
            .starts_with("opus/48000")
            .then_some(pt)
    })
}

/// profile_idc 0x42 (baseline) with constraint_set1_flag: constrained baseline, as 42e01f or
/// 42c01f.
fn is_constrained_baseline(profile_level_id: &str) -> bool {
    let Some(value) = (profile_level_id.len() == 6)
        .then(|| u32::from_str_radix(profile_level_id, 16).ok())
        .flatten()
    else {
        return false;
    };
    let profile_idc = (value >> 16) as u8;
    let constraints = (value >> 8) as u8;
    profile_idc == 0x42 && constraints & 0x40 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sdp: &str) -> gst_sdp::SDPMessage {
        gst::init().unwrap();
        gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()).unwrap()
    }

    const CHROME_LIKE: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 102 106 127\r\n\
        a=rtpmap:96 VP8/90000\r\n\
        a=rtpmap:102 H264/90000\r\n\
        a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
        a=rtpmap:106 H264/90000\r\n\
        a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        a=rtpmap:127 H264/90000\r\n\
        a=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f\r\n";

    #[test]
    fn picks_constrained_baseline_packetization_mode_1() {
        let offer = parse(CHROME_LIKE);
        assert_eq!(
            choose_h264(&offer),
            Ok(H264Offer {
                payload_type: 106,
                profile_level_id: "42e01f".into()
            })
        );
    }

    #[test]
    fn finds_opus() {
        assert_eq!(choose_opus(&parse(CHROME_LIKE)), Some(111));
        let no_audio = CHROME_LIKE.replace(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n",
            "",
        );
        assert_eq!(choose_opus(&parse(&no_audio)), None);
    }

    #[test]
    fn finds_the_playout_delay_extension_id() {
        let with = CHROME_LIKE.replace(
            "a=rtpmap:96 VP8/90000\r\n",
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
             a=extmap:6/recvonly http://www.webrtc.org/experiments/rtp-hdrext/playout-delay\r\n\
             a=rtpmap:96 VP8/90000\r\n",
        );
        assert_eq!(video_extmap_id(&parse(&with), PLAYOUT_DELAY_URI), Some(6));
        assert_eq!(
            video_extmap_id(&parse(CHROME_LIKE), PLAYOUT_DELAY_URI),
            None
        );
        // Only the video section counts; reserved or malformed ids are ignored.
        let in_audio = CHROME_LIKE.replace(
            "a=rtpmap:111 opus/48000/2\r\n",
            "a=rtpmap:111 opus/48000/2\r\na=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay\r\n",
        );
        assert_eq!(video_extmap_id(&parse(&in_audio), PLAYOUT_DELAY_URI), None);
        let reserved = with.replace("extmap:6/recvonly", "extmap:15");
        assert_eq!(video_extmap_id(&parse(&reserved), PLAYOUT_DELAY_URI), None);
        let junk = with.replace("extmap:6/recvonly", "extmap:x");
        assert_eq!(video_extmap_id(&parse(&junk), PLAYOUT_DELAY_URI), None);
    }

    #[test]
    fn ignores_payload_types_beyond_7_bits() {
        // RTP payload types are 0..=127 (the whep_offer fuzz target asserts it of every
        // accepted offer): a format numbered beyond cannot be answered.
        let offer = CHROME_LIKE
            .replace(" 106 ", " 300 ")
            .replace(":106 ", ":300 ")
            .replace("opus/48000/2", "opus/48000/2\r\na=rtpmap:200 opus/48000/2")
            .replace(":111 opus", ":1111 opus")
            .replace("SAVPF 111", "SAVPF 1111");
        assert_eq!(choose_h264(&parse(&offer)), Err(OfferError::NoH264));
        assert_eq!(choose_opus(&parse(&offer)), None);
    }

    #[test]
    fn refuses_offers_without_usable_h264() {
        let vp8_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(choose_h264(&parse(vp8_only)), Err(OfferError::NoH264));
        let audio_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(choose_h264(&parse(audio_only)), Err(OfferError::NoVideo));
        // High profile only, or packetization-mode 0 only.
        let high = CHROME_LIKE.replace("42e01f", "64001f");
        assert_eq!(choose_h264(&parse(&high)), Err(OfferError::NoH264));
    }
}
