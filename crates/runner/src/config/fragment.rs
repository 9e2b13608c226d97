//! Escape-hatch `gst` transforms: a gst-launch fragment checked when the file is validated.

use gst::prelude::*;

use super::diagnostics::suggest;

/// Parses a gst-launch fragment the way the runner will and reports what would fail at run
/// time: unknown elements or properties (with the closest known name), bad property values,
/// and a fragment that does not have exactly one free input and one free output.
pub fn check(description: &str) -> Result<(), (String, Option<String>)> {
    build(description).map(|_| ())
}

/// Builds the fragment as a bin with `sink` and `src` ghost pads.
pub fn build(description: &str) -> Result<gst::Bin, (String, Option<String>)> {
    let mut context = gst::ParseContext::new();
    let bin = gst::parse::bin_from_description_full(
        description,
        true,
        Some(&mut context),
        gst::ParseFlags::FATAL_ERRORS,
    );
    match bin {
        Ok(element) => {
            let bin = element
                .downcast::<gst::Bin>()
                .map_err(|_| ("the fragment did not produce a bin".to_string(), None))?;
            if bin.static_pad("sink").is_none() || bin.static_pad("src").is_none() {
                return Err((
                    "the fragment needs exactly one unlinked input and one unlinked output".into(),
                    Some(
                        "write a chain like `videoconvert ! videoflip method=horizontal-flip`"
                            .into(),
                    ),
                ));
            }
            Ok(bin)
        }
        Err(err) => {
            let message = err.message().to_string();
            let quoted = quoted_names(&message);
            let help = match err.kind::<gst::ParseError>() {
                Some(gst::ParseError::NoSuchElement) => {
                    let missing = context.missing_elements();
                    let name = missing.first().cloned().or_else(|| quoted.first().cloned());
                    name.and_then(|name| {
                        let names: Vec<String> = gst::Registry::get()
                            .features(gst::ElementFactory::static_type())
                            .iter()
                            .map(|f| f.name().to_string())
                            .collect();
                        suggest(&name, names.iter().map(String::as_str))
                    })
                }
                Some(gst::ParseError::NoSuchProperty) => match quoted.as_slice() {
                    [property, element, ..] => property_suggestion(property, element),
                    _ => None,
                },
                _ => None,
            };
            Err((format!("invalid GStreamer fragment: {message}"), help))
        }
    }
}

fn quoted_names(message: &str) -> Vec<String> {
    message
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Element instance names from gst-launch are the factory name plus a number.
fn property_suggestion(property: &str, element: &str) -> Option<String> {
    let factory = element.trim_end_matches(|c: char| c.is_ascii_digit());
    let element = gst::ElementFactory::make(factory).build().ok()?;
    let names: Vec<String> = element
        .list_properties()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    suggest(property, names.iter().map(String::as_str))
}
