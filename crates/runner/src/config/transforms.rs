//! `[transforms.NAME]`: raw-media processing between a source and its encoders.

use toml::de::DeValue;

use super::diagnostics::Diagnostic;
use super::fragment;
use super::model::{Media, Transform, TransformKind};
use super::reader::{Fields, not_a};

const TRANSFORM_TYPES: &[&str] = &["latencystamp", "offeroverlay", "abrcontroller", "gst"];
const PLANNED_TRANSFORM_TYPES: &[&str] = &[];

/// Reads one `[transforms.NAME]` table; its `inputs` are read (and later checked) by the caller.
pub(super) fn transform(
    diags: &mut Vec<Diagnostic>,
    f: &mut Fields,
    name: &str,
) -> Option<Transform> {
    let kind = f.component_type(diags, TRANSFORM_TYPES, PLANNED_TRANSFORM_TYPES)?;
    let kind = match kind.as_str() {
        "latencystamp" => TransformKind::Latencystamp {
            overwrite: f.bool(diags, "overwrite", true),
        },
        "offeroverlay" => {
            let schedule = f.path(diags, "schedule").map(|(path, text, span)| {
                if !path.is_file() {
                    let message = not_a(&path, &text, "a readable file");
                    f.error(diags, span, "schedule", message);
                }
                path
            });
            TransformKind::Offeroverlay { schedule }
        }
        "abrcontroller" => abrcontroller(diags, f)?,
        "gst" => {
            let media = match f
                .choice(diags, "media", &["video", "audio"], "video")
                .as_str()
            {
                "audio" => Media::Audio,
                _ => Media::Video,
            };
            let (pipeline, span) = f.required_string(diags, "pipeline")?;
            if let Err((message, help)) = fragment::check(&pipeline) {
                diags.push(Diagnostic {
                    span,
                    component: f.component.clone(),
                    key: Some("pipeline".into()),
                    message,
                    help,
                });
            }
            TransformKind::Gst { media, pipeline }
        }
        _ => return None,
    };
    Some(Transform {
        name: name.to_string(),
        input: String::new(),
        kind,
    })
}

/// The keys of `type = "abrcontroller"`: the output it watches, the bitrate bounds, the ladder.
fn abrcontroller(diags: &mut Vec<Diagnostic>, f: &mut Fields) -> Option<TransformKind> {
    let output = f.required_string(diags, "output");
    let min_bitrate = f.integer(diags, "min_bitrate", 50..50_001, 300);
    // 0: absent (the encoder's bitrate is the ceiling).
    let max_bitrate = f.integer(diags, "max_bitrate", 100..50_001, 0);
    if max_bitrate != 0
        && max_bitrate < min_bitrate
        && let Some(value) = f.table.get("max_bitrate")
    {
        f.error(
            diags,
            value.span(),
            "max_bitrate",
            format!("{max_bitrate} kbit/s is below min_bitrate ({min_bitrate} kbit/s)"),
        );
    }
    let ladder = match f.entry("ladder") {
        None => None,
        Some(value) => {
            let DeValue::Array(items) = value.get_ref() else {
                f.type_error(diags, value, "ladder", "an array of rungs");
                return None;
            };
            let mut rungs = Vec::new();
            for item in items.iter() {
                let Some(rung) = item.get_ref().as_str() else {
                    f.type_error(diags, item, "ladder", "a rung string");
                    continue;
                };
                if let Err(err) = gstabr::ladder::Ladder::parse(rung) {
                    f.error(diags, item.span(), "ladder", err.to_string());
                } else if rung.contains(';') {
                    f.error(diags, item.span(), "ladder", "one rung per string".into());
                }
                rungs.push(rung.to_string());
            }
            Some(rungs)
        }
    };
    let (output, output_span) = output?;
    Some(TransformKind::Abrcontroller {
        output,
        output_span,
        min_bitrate,
        max_bitrate: (max_bitrate != 0).then_some(max_bitrate),
        ladder,
    })
}
