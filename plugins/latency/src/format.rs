//! What a stream's caps allow the elements to do with it.

use hybridlive_stamp::{Codec, Framing};

/// The kind of stream negotiated on the pad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Raw video or raw audio: stamps travel as meta only.
    Raw,
    /// H.264/H.265 whole access units: stamps can also travel in the bitstream.
    Encoded { codec: Codec, framing: Framing },
    /// H.264/H.265 not aligned on access units: meta only, the SEI cannot be placed.
    EncodedUnaligned,
    /// Anything else: passed through untouched.
    Other,
}

impl StreamKind {
    /// Classifies `caps`; `None` caps (not negotiated yet) count as [`StreamKind::Other`].
    pub fn from_caps(caps: Option<&gst::CapsRef>) -> Self {
        let Some(s) = caps.and_then(|caps| caps.structure(0)) else {
            return StreamKind::Other;
        };
        let codec = match s.name().as_str() {
            "video/x-raw" | "audio/x-raw" => return StreamKind::Raw,
            "video/x-h264" => Codec::H264,
            "video/x-h265" => Codec::H265,
            _ => return StreamKind::Other,
        };
        if s.get::<&str>("alignment").is_ok_and(|a| a != "au") {
            return StreamKind::EncodedUnaligned;
        }
        let framing = match s.get::<&str>("stream-format") {
            Ok("avc" | "avc3" | "hvc1" | "hev1") => {
                match nal_length_size(codec, s.get::<gst::Buffer>("codec_data").ok()) {
                    Some(size) => Framing::LengthPrefixed(size),
                    None => return StreamKind::EncodedUnaligned,
                }
            }
            // byte-stream, or no stream-format at all (parsers default to byte-stream).
            _ => Framing::AnnexB,
        };
        StreamKind::Encoded { codec, framing }
    }
}

/// Always `sink` and `src` pads with ANY caps: both elements accept every stream and act only
/// on those they understand.
pub fn any_caps_templates() -> Vec<gst::PadTemplate> {
    let caps = gst::Caps::new_any();
    [
        ("src", gst::PadDirection::Src),
        ("sink", gst::PadDirection::Sink),
    ]
    .into_iter()
    .map(|(name, direction)| {
        gst::PadTemplate::new(name, direction, gst::PadPresence::Always, &caps)
            .expect("valid ANY template")
    })
    .collect()
}

/// NAL length size from avcC (`lengthSizeMinusOne` in byte 4) or hvcC (byte 21).
fn nal_length_size(codec: Codec, codec_data: Option<gst::Buffer>) -> Option<u8> {
    let codec_data = codec_data?;
    let map = codec_data.map_readable().ok()?;
    let byte = match codec {
        Codec::H264 => map.get(4)?,
        Codec::H265 => map.get(21)?,
    };
    match (byte & 0x03) + 1 {
        3 => None,
        size => Some(size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_caps() {
        let kind = |s: &str| StreamKind::from_caps(Some(&s.parse::<gst::Caps>().unwrap()));
        gst::init().unwrap();
        assert_eq!(kind("video/x-raw,format=I420"), StreamKind::Raw);
        assert_eq!(kind("audio/x-raw"), StreamKind::Raw);
        assert_eq!(kind("audio/x-opus"), StreamKind::Other);
        assert_eq!(
            kind("video/x-h264,stream-format=byte-stream,alignment=au"),
            StreamKind::Encoded {
                codec: Codec::H264,
                framing: Framing::AnnexB
            }
        );
        assert_eq!(
            kind("video/x-h265,stream-format=byte-stream,alignment=nal"),
            StreamKind::EncodedUnaligned
        );
        assert_eq!(
            kind("video/x-h264,stream-format=avc,alignment=au,codec_data=(buffer)014d401fffe1"),
            StreamKind::Encoded {
                codec: Codec::H264,
                framing: Framing::LengthPrefixed(4)
            }
        );
        // avc without codec_data: the NAL length is unknown.
        assert_eq!(
            kind("video/x-h264,stream-format=avc,alignment=au"),
            StreamKind::EncodedUnaligned
        );
        assert_eq!(StreamKind::from_caps(None), StreamKind::Other);
    }
}
