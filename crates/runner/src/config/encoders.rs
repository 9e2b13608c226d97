//! `[encoders.NAME]`: codecs and their settings.

use super::diagnostics::Diagnostic;
use super::model::{Encoder, EncoderKind, H264Preset};
use super::reader::Fields;

const ENCODER_TYPES: &[&str] = &["h264", "vp8", "aac", "opus"];

/// Reads one `[encoders.NAME]` table; its `inputs` are read (and later checked) by the caller.
pub(super) fn encoder(diags: &mut Vec<Diagnostic>, f: &mut Fields, name: &str) -> Option<Encoder> {
    let kind = f.component_type(diags, ENCODER_TYPES, &[])?;
    let kind = match kind.as_str() {
        "h264" => {
            let preset = match f
                .choice(diags, "preset", &["zerolatency", "balanced"], "zerolatency")
                .as_str()
            {
                "balanced" => H264Preset::Balanced,
                _ => H264Preset::Zerolatency,
            };
            EncoderKind::H264 {
                preset,
                bitrate: f.integer(diags, "bitrate", 100..50_001, 2500),
                keyframe_interval: f.number(diags, "keyframe_interval", 0.1, 10.0, 1.0),
            }
        }
        "vp8" => EncoderKind::Vp8 {
            bitrate: f.integer(diags, "bitrate", 100..50_001, 2500),
            keyframe_interval: f.number(diags, "keyframe_interval", 0.1, 10.0, 1.0),
        },
        "aac" => EncoderKind::Aac {
            bitrate: f.integer(diags, "bitrate", 16..513, 128),
        },
        "opus" => EncoderKind::Opus {
            bitrate: f.integer(diags, "bitrate", 6..511, 96),
        },
        _ => return None,
    };
    Some(Encoder {
        name: name.to_string(),
        input: String::new(),
        kind,
    })
}
