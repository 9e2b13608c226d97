//! `[encoders.NAME]`: codecs and their settings.

use super::diagnostics::Diagnostic;
use super::model::{Encoder, EncoderKind, Framerate, H264Preset, RungSpec};
use super::reader::Fields;
use toml::de::DeValue;

const ENCODER_TYPES: &[&str] = &["h264", "vp8", "aac", "opus"];

/// Reads one `[encoders.NAME]` table; its `inputs` are read (and later checked) by the caller.
pub(super) fn encoder(diags: &mut Vec<Diagnostic>, f: &mut Fields, name: &str) -> Option<Encoder> {
    let kind = f.component_type(diags, ENCODER_TYPES, &[])?;
    let mut rungs = Vec::new();
    let kind = match kind.as_str() {
        "h264" => {
            let preset = match f
                .choice(diags, "preset", &["zerolatency", "balanced"], "zerolatency")
                .as_str()
            {
                "balanced" => H264Preset::Balanced,
                _ => H264Preset::Zerolatency,
            };
            let bitrate_given = f.table.get("bitrate").map(|v| v.span());
            let mut bitrate = f.integer(diags, "bitrate", 100..50_001, 2500);
            rungs = read_rungs(diags, f);
            if let Some(top) = rungs.first() {
                match bitrate_given {
                    Some(span) if bitrate != top.bitrate => f.error(
                        diags,
                        span,
                        "bitrate",
                        format!(
                            "{bitrate} kbit/s differs from the top rung's {} kbit/s",
                            top.bitrate
                        ),
                    ),
                    _ => {}
                }
                bitrate = top.bitrate;
            }
            EncoderKind::H264 {
                preset,
                bitrate,
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
        rungs,
    })
}

/// Reads `rungs`: `["1280x720@30:2500", "640x360@30:700", ...]`, highest first, bitrates
/// falling, even sizes. Whether they fit the source is checked with the graph.
fn read_rungs(diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Vec<RungSpec> {
    let Some(value) = f.entry("rungs") else {
        return Vec::new();
    };
    let DeValue::Array(items) = value.get_ref() else {
        f.type_error(diags, value, "rungs", "an array of rungs");
        return Vec::new();
    };
    let mut rungs: Vec<RungSpec> = Vec::new();
    for item in items.iter() {
        let Some(text) = item.get_ref().as_str() else {
            f.type_error(diags, item, "rungs", "a rung string");
            continue;
        };
        let rung = hybridlive_ladder::Ladder::parse_fixed_rung(text).map_err(|e| e.to_string());
        let rung = match rung {
            Ok(rung) => rung,
            Err(message) => {
                f.error(diags, item.span(), "rungs", message);
                continue;
            }
        };
        let kbps = rung.max_bps / 1000;
        let problem = if rung.width % 2 == 1 || rung.height % 2 == 1 {
            Some(format!(
                "{}x{}: width and height must be even (4:2:0 video)",
                rung.width, rung.height
            ))
        } else if !(100..=50_000).contains(&kbps) {
            Some(format!(
                "{kbps} kbit/s: a rung's bitrate is 100 to 50000 kbit/s"
            ))
        } else if let Some(above) = rungs.last()
            && u64::from(above.bitrate) <= kbps
        {
            Some(format!(
                "bitrates out of order: {kbps} kbit/s is not below the rung before it ({} kbit/s); list rungs from the highest down",
                above.bitrate
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            f.error(diags, item.span(), "rungs", message);
            continue;
        }
        rungs.push(RungSpec {
            width: rung.width,
            height: rung.height,
            framerate: rung.framerate.map(|(numerator, denominator)| Framerate {
                numerator,
                denominator,
            }),
            bitrate: kbps as u32,
            span: item.span(),
        });
    }
    if items.is_empty() {
        f.error(
            diags,
            value.span(),
            "rungs",
            "a ladder needs at least one rung (or leave `rungs` out)".into(),
        );
    }
    rungs
}
