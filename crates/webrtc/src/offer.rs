//! What a viewer's SDP offer asks for.

/// The H.264 format chosen from an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H264Offer {
    /// The offer's payload type for it: the answer must use the same.
    pub payload_type: u32,
    /// The offer's `profile-level-id`, echoed in the answer.
    pub profile_level_id: String,
}

/// A video codec the output can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    /// H.264 constrained baseline, packetization-mode=1.
    H264,
    /// VP8.
    Vp8,
}

impl VideoCodec {
    /// The name users and SDP know it by.
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "H.264",
            VideoCodec::Vp8 => "VP8",
        }
    }
}

/// Why an offer cannot be served. All are the client's fault (HTTP 400 / 406).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Not parseable as SDP.
    #[error("the offer is not valid SDP")]
    NotSdp,
    /// No video section the viewer can receive on: none at all, or only rejected (port 0),
    /// send-only or inactive ones.
    #[error(
        "the offer has no video section to receive on (rejected, sendonly and inactive sections do not count)"
    )]
    NoVideo,
    /// Video offered, but neither H.264 the stream can be sent as nor VP8.
    #[error("the offer has neither H.264 (packetization-mode=1, constrained baseline) nor VP8")]
    NoH264,
    /// The offer's video codecs are not among those the output sends.
    #[error("the output sends {served}; the offer has only {offered}")]
    NoCommonCodec {
        /// What the output sends, e.g. "H.264".
        served: String,
        /// What the offer has of the codecs known here, e.g. "VP8".
        offered: String,
    },
}

/// What a viewer's offer asks for, read and checked before anything is built for it.
#[derive(Debug)]
pub struct ViewerOffer {
    /// The parsed offer.
    pub sdp: gst_sdp::SDPMessage,
    /// The H.264 format the answer would use, if the offer has one the stream can be sent as.
    pub h264: Option<H264Offer>,
    /// The VP8 payload type, if the offer has VP8.
    pub vp8: Option<u32>,
    /// The Opus payload type, if the offer has one.
    pub opus: Option<u32>,
    /// The id the offer gives the playout-delay header extension in its video section, if it
    /// offers it.
    pub playout_delay_id: Option<u32>,
    /// Video and audio sections before the ones answered with media (send-only or inactive):
    /// the answer gives each an inactive transceiver of its own, so that the media goes to the
    /// section chosen here.
    pub skipped: Skipped,
    /// The offer's rejected sections (port 0). `sdp` is the offer without them: webrtcbin 1.22
    /// answers a rejected section as a live one and bundles on it; the answer gets them back,
    /// rejected, with [`RejectedSections::restore`].
    pub rejected: RejectedSections,
}

/// The rejected sections (port 0) of an offer, taken out before webrtcbin reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectedSections {
    /// Each one's position among the offer's sections and its answer: an `m=` line with port 0
    /// and its `a=mid`, if it had one.
    sections: Vec<(usize, String)>,
}

impl RejectedSections {
    /// Takes the rejected sections out of `text` (SDP): the offer without them, and them.
    fn take_out(text: &str, offer: &gst_sdp::SDPMessageRef) -> Option<(String, Self)> {
        let sections: Vec<(usize, String)> = offer
            .medias()
            .enumerate()
            .filter(|(_, m)| m.port() == 0 && m.attribute_val("bundle-only").is_none())
            .map(|(i, m)| {
                let formats: Vec<&str> = m.formats().collect();
                let mut answer = format!(
                    "m={} 0 {} {}\r\n",
                    m.media().unwrap_or("video"),
                    m.proto().unwrap_or("UDP/TLS/RTP/SAVPF"),
                    formats.join(" ")
                );
                if let Some(mid) = m.attribute_val("mid") {
                    answer.push_str(&format!("a=mid:{mid}\r\n"));
                }
                (i, answer)
            })
            .collect();
        if sections.is_empty() {
            return None;
        }
        let rejected_mids: Vec<&str> = offer
            .medias()
            .filter(|m| m.port() == 0 && m.attribute_val("bundle-only").is_none())
            .filter_map(|m| m.attribute_val("mid"))
            .collect();
        let mut kept = String::new();
        let mut index: Option<usize> = None;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.starts_with("m=") {
                index = Some(index.map_or(0, |i| i + 1));
            }
            if index.is_some_and(|i| sections.iter().any(|(r, _)| *r == i)) {
                continue;
            }
            if let Some(group) = line.strip_prefix("a=group:BUNDLE") {
                let mids: Vec<&str> = group
                    .split_whitespace()
                    .filter(|mid| !rejected_mids.contains(mid))
                    .collect();
                kept.push_str(&format!("a=group:BUNDLE {}\r\n", mids.join(" ")));
                continue;
            }
            kept.push_str(line);
            kept.push_str("\r\n");
        }
        Some((kept, Self { sections }))
    }

    /// `answer` (to the offer without the rejected sections) with them put back in their place,
    /// rejected: the viewer gets an answer of as many sections as its offer, in its order.
    pub fn restore(&self, answer: &str) -> String {
        if self.sections.is_empty() {
            return answer.to_string();
        }
        let mut session = String::new();
        let mut media: Vec<String> = Vec::new();
        for line in answer.lines() {
            let line = line.trim_end_matches('\r');
            if line.starts_with("m=") {
                media.push(String::new());
            }
            let target = media.last_mut().unwrap_or(&mut session);
            target.push_str(line);
            target.push_str("\r\n");
        }
        for (index, section) in &self.sections {
            media.insert((*index).min(media.len()), section.clone());
        }
        session + &media.concat()
    }
}

/// Sections of an offer passed over before the ones answered with media.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Video sections before the chosen one.
    pub video: usize,
    /// Audio sections before the chosen one (all of them when no audio is answered).
    pub audio: usize,
}

/// Whether the viewer can receive media on `media`: not rejected (port 0, unless it is a
/// `bundle-only` section, which has port 0 by design) and neither `sendonly` nor `inactive`
/// (in the section, or else for the whole session).
fn receives(offer: &gst_sdp::SDPMessageRef, media: &gst_sdp::SDPMediaRef) -> bool {
    if media.port() == 0 && media.attribute_val("bundle-only").is_none() {
        return false;
    }
    const DIRECTIONS: [&str; 4] = ["sendrecv", "recvonly", "sendonly", "inactive"];
    let stated = media
        .attributes()
        .map(|a| a.key())
        .find(|k| DIRECTIONS.contains(k))
        .or_else(|| {
            offer
                .attributes()
                .map(|a| a.key())
                .find(|k| DIRECTIONS.contains(k))
        });
    !matches!(stated, Some("sendonly" | "inactive"))
}

/// The first section of `kind` the viewer receives on, and how many of that kind come before it.
fn receiving_section<'a>(
    offer: &'a gst_sdp::SDPMessageRef,
    kind: &str,
) -> Option<(usize, &'a gst_sdp::SDPMediaRef)> {
    offer
        .medias()
        .filter(|m| m.media() == Some(kind))
        .enumerate()
        .find(|(_, m)| receives(offer, m))
}

/// URI of the playout-delay RTP header extension (see the `rtphdrextplayoutdelay` element).
pub const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// Parses SDP offer text and picks the formats to answer with.
pub fn read_viewer_offer(text: &str) -> Result<ViewerOffer, OfferError> {
    let sdp = gst_sdp::SDPMessage::parse_buffer(text.as_bytes()).map_err(|_| OfferError::NotSdp)?;
    let (sdp, rejected) = match RejectedSections::take_out(text, &sdp) {
        Some((kept, rejected)) => (
            gst_sdp::SDPMessage::parse_buffer(kept.as_bytes()).map_err(|_| OfferError::NotSdp)?,
            rejected,
        ),
        None => (sdp, RejectedSections::default()),
    };
    let h264 = match choose_h264(&sdp) {
        Ok(h264) => Some(h264),
        Err(OfferError::NoH264) => None,
        Err(e) => return Err(e),
    };
    let vp8 = choose_vp8(&sdp);
    if h264.is_none() && vp8.is_none() {
        return Err(OfferError::NoH264);
    }
    let opus = choose_opus(&sdp);
    let playout_delay_id = video_extmap_id(&sdp, PLAYOUT_DELAY_URI);
    let skipped = Skipped {
        video: receiving_section(&sdp, "video").map_or(0, |(i, _)| i),
        audio: match receiving_section(&sdp, "audio") {
            Some((i, _)) if opus.is_some() => i,
            _ => sdp.medias().filter(|m| m.media() == Some("audio")).count(),
        },
    };
    Ok(ViewerOffer {
        sdp,
        h264,
        vp8,
        opus,
        playout_delay_id,
        skipped,
        rejected,
    })
}

impl ViewerOffer {
    /// The first of `preference` (the codecs the output sends, best first) that the offer has,
    /// with its payload type.
    pub fn pick_codec(&self, preference: &[VideoCodec]) -> Result<(VideoCodec, u32), OfferError> {
        let offered = |codec: VideoCodec| match codec {
            VideoCodec::H264 => self.h264.as_ref().map(|h| h.payload_type),
            VideoCodec::Vp8 => self.vp8,
        };
        preference
            .iter()
            .find_map(|&codec| offered(codec).map(|pt| (codec, pt)))
            .ok_or_else(|| {
                let names = |codecs: &mut dyn Iterator<Item = VideoCodec>| {
                    codecs.map(VideoCodec::name).collect::<Vec<_>>().join(", ")
                };
                OfferError::NoCommonCodec {
                    served: names(&mut preference.iter().copied()),
                    offered: names(
                        &mut [VideoCodec::H264, VideoCodec::Vp8]
                            .into_iter()
                            .filter(|&c| offered(c).is_some()),
                    ),
                }
            })
    }
}

/// The payload type of VP8 (VP8/90000) in the offer's first video section the viewer receives
/// on, if it offers it there.
pub fn choose_vp8(offer: &gst_sdp::SDPMessageRef) -> Option<u32> {
    let (_, video) = receiving_section(offer, "video")?;
    // In the order of the m-line: the viewer's own preference.
    video.formats().find_map(|format| {
        let pt = format.parse::<u32>().ok().filter(|pt| *pt < 128)?;
        has_rtpmap(video, format, "VP8/90000").then_some(pt)
    })
}

/// Whether `media` maps payload type `format` to `codec` (`a=rtpmap:<format> <codec>`, codec
/// names compared without regard to case).
fn has_rtpmap(media: &gst_sdp::SDPMediaRef, format: &str, codec: &str) -> bool {
    media.attributes().any(|a| {
        a.key() == "rtpmap"
            && a.value().is_some_and(|v| {
                let mut parts = v.split_whitespace();
                parts.next() == Some(format)
                    && parts.next().is_some_and(|c| c.eq_ignore_ascii_case(codec))
            })
    })
}

/// The id of header extension `uri` in the offer's first video section the viewer receives on
/// (`a=extmap:<id>[/<direction>] <uri>`). One-byte ids are 1-14, two-byte ids 1-255; 0 and
/// 15 are reserved in the one-byte form and never answered.
pub fn video_extmap_id(offer: &gst_sdp::SDPMessageRef, uri: &str) -> Option<u32> {
    let (_, video) = receiving_section(offer, "video")?;
    video.attributes().find_map(|a| {
        if a.key() != "extmap" {
            return None;
        }
        let mut parts = a.value()?.split_whitespace();
        let id = parts.next()?.split('/').next()?.parse::<u32>().ok()?;
        ((1..=255).contains(&id) && id != 15 && parts.next() == Some(uri)).then_some(id)
    })
}

/// Picks the first H.264 format of the first video section the viewer receives on that carries
/// packetization-mode=1 and a constrained baseline profile-level-id (profile_idc 0x42 with
/// constraint_set1), which is what the shared x264 encoder produces.
pub fn choose_h264(offer: &gst_sdp::SDPMessageRef) -> Result<H264Offer, OfferError> {
    let (_, video) = receiving_section(offer, "video").ok_or(OfferError::NoVideo)?;
    for format in video.formats() {
        // RTP payload types are 7 bits; anything else cannot be answered.
        let Some(pt) = format.parse::<u32>().ok().filter(|pt| *pt < 128) else {
            continue;
        };
        if !has_rtpmap(video, format, "H264/90000") {
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

/// The payload type of Opus (opus/48000/2) in the offer's first audio section the viewer
/// receives on, if it offers it there.
pub fn choose_opus(offer: &gst_sdp::SDPMessageRef) -> Option<u32> {
    let (_, audio) = receiving_section(offer, "audio")?;
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
    fn picks_the_first_served_codec_the_viewer_offers() {
        gst::init().unwrap();
        let offer = read_viewer_offer(CHROME_LIKE).unwrap();
        assert_eq!(offer.vp8, Some(96));
        assert_eq!(
            offer.pick_codec(&[VideoCodec::Vp8, VideoCodec::H264]),
            Ok((VideoCodec::Vp8, 96))
        );
        assert_eq!(
            offer.pick_codec(&[VideoCodec::H264, VideoCodec::Vp8]),
            Ok((VideoCodec::H264, 106))
        );
        let vp8_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 98\r\na=rtpmap:98 vp8/90000\r\n";
        let offer = read_viewer_offer(vp8_only).unwrap();
        assert_eq!(offer.h264, None);
        assert_eq!(
            offer.pick_codec(&[VideoCodec::H264]),
            Err(OfferError::NoCommonCodec {
                served: "H.264".into(),
                offered: "VP8".into()
            })
        );
        assert_eq!(
            read_viewer_offer(&vp8_only.replace("vp8/90000", "VP9/90000")).err(),
            Some(OfferError::NoH264)
        );
    }

    #[test]
    fn rejected_sections_are_left_out_and_answered_rejected_in_place() {
        gst::init().unwrap();
        let offer = CHROME_LIKE
            .replace(
                "m=video 9 UDP/TLS/RTP/SAVPF 96 102 106 127\r\n",
                "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:old\r\na=rtpmap:96 VP8/90000\r\n\
                 m=video 9 UDP/TLS/RTP/SAVPF 96 102 106 127\r\na=mid:1\r\n",
            )
            .replace("t=0 0\r\n", "t=0 0\r\na=group:BUNDLE 0 old 1\r\n");
        let read = read_viewer_offer(&offer).unwrap();
        // What webrtcbin reads: no rejected section, none in the BUNDLE group.
        assert_eq!(read.sdp.medias_len(), 2);
        assert_eq!(read.sdp.attribute_val("group"), Some("BUNDLE 0 1"));
        assert_eq!(read.h264.as_ref().map(|h| h.payload_type), Some(106));
        assert_eq!(read.skipped, Skipped::default());
        // What the viewer gets: its three sections, the rejected one in its place.
        let answer = "v=0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 106\r\na=mid:1\r\n";
        let restored = read.rejected.restore(answer);
        let media: Vec<&str> = restored.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            media,
            [
                "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                "m=video 0 UDP/TLS/RTP/SAVPF 96",
                "m=video 9 UDP/TLS/RTP/SAVPF 106"
            ],
            "{restored}"
        );
        assert!(restored.contains("m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:old\r\n"));
        // Nothing rejected: the answer as it is.
        let plain = read_viewer_offer(CHROME_LIKE).unwrap();
        assert_eq!(plain.rejected.restore(answer), answer);
    }

    #[test]
    fn a_send_only_or_inactive_section_is_passed_over() {
        gst::init().unwrap();
        let two = CHROME_LIKE.replace(
            "m=video 9 UDP/TLS/RTP/SAVPF 96 102 106 127\r\n",
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96 102 106 127\r\n",
        );
        let read = read_viewer_offer(&two).unwrap();
        assert_eq!(read.skipped.video, 1);
        assert_eq!(read.h264.map(|h| h.payload_type), Some(106));
        let inactive_everywhere = CHROME_LIKE.replace("t=0 0\r\n", "t=0 0\r\na=inactive\r\n");
        assert_eq!(
            read_viewer_offer(&inactive_everywhere).err(),
            Some(OfferError::NoVideo)
        );
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
