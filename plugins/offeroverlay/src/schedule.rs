// SPDX-License-Identifier: MPL-2.0

//! The schedule parser: reads a schedule file or a `show-offer` JSON into the offer model
//! (`crate::offer`), validates every offer and decodes its image, so that nothing read from
//! outside is trusted later. Errors name the file, line, column and field.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::offer::{DecodedImage, Offer, OfferSpec, QrMatrix, TimeSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ScheduleFile {
    /// The countdown label of every offer that sets none of its own.
    #[serde(default)]
    countdown_label: Option<String>,
    #[serde(default)]
    offers: Vec<OfferSpec>,
}

/// Everything that can be wrong with a schedule or an offer; each names where and which field.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{origin}: cannot read: {source}")]
    Read {
        origin: String,
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: {field}: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
}

fn field_or_root(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." || s.is_empty() {
        "(document)".into()
    } else {
        s
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let bytes = &text.as_bytes()[..offset.min(text.len())];
    let line = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |nl| nl + 1);
    let column = text
        .get(line_start..bytes.len())
        .map_or(bytes.len() - line_start, |s| s.chars().count());
    (line, column + 1)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Json,
    Toml,
}

fn parse_document<T: for<'de> Deserialize<'de>>(
    origin: &str,
    text: &str,
    syntax: Syntax,
) -> Result<T, ScheduleError> {
    match syntax {
        Syntax::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let field = field_or_root(e.path());
                let inner = e.into_inner();
                ScheduleError::Syntax {
                    origin: origin.into(),
                    line: inner.line(),
                    column: inner.column(),
                    field,
                    message: strip_json_position(&inner.to_string()),
                }
            })?;
            de.end().map_err(|e| ScheduleError::Syntax {
                origin: origin.into(),
                line: e.line(),
                column: e.column(),
                field: "(document)".into(),
                message: strip_json_position(&e.to_string()),
            })?;
            Ok(value)
        }
        Syntax::Toml => {
            let syntax_error = |e: toml::de::Error| {
                let (line, column) = e
                    .span()
                    .map_or((1, 1), |span| line_column(text, span.start));
                ScheduleError::Syntax {
                    origin: origin.into(),
                    line,
                    column,
                    field: "(document)".into(),
                    message: e.message().trim().to_string(),
                }
            };
            let de = toml::Deserializer::parse(text).map_err(syntax_error)?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = field_or_root(e.path());
                let inner = e.into_inner();
                let (line, column) = inner
                    .span()
                    .map_or((1, 1), |span| line_column(text, span.start));
                ScheduleError::Syntax {
                    origin: origin.into(),
                    line,
                    column,
                    field,
                    message: inner.message().trim().to_string(),
                }
            })
        }
    }
}

// serde_json appends " at line L column C"; we print the position ourselves, in front.
fn strip_json_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn validate(
    origin: &str,
    field: &str,
    spec: OfferSpec,
    base_dir: Option<&Path>,
) -> Result<Offer, ScheduleError> {
    let invalid = |sub: &str, message: String| ScheduleError::Invalid {
        origin: origin.into(),
        field: format!("{field}{sub}"),
        message,
    };
    if spec.id.trim().is_empty() {
        return Err(invalid(".id", "must not be empty".into()));
    }
    if spec.title.trim().is_empty() {
        return Err(invalid(".title", "must not be empty".into()));
    }
    if spec.end.is_some() && spec.duration.is_some() {
        return Err(invalid(
            ".duration",
            "give either `end` or `duration`, not both".into(),
        ));
    }
    let duration = match spec.duration {
        Some(d) if !d.is_finite() || d <= 0.0 => {
            return Err(invalid(
                ".duration",
                format!("{d} is not a duration: seconds must be above 0"),
            ));
        }
        Some(d) => Some(Duration::try_from_secs_f64(d).map_err(|e| {
            invalid(
                ".duration",
                format!("{d} is not a usable number of seconds: {e}"),
            )
        })?),
        None => None,
    };
    let end = spec
        .end
        .or_else(|| spec.start.zip(duration).map(|(s, d)| s.plus(d)));
    if let (Some(start), Some(end)) = (spec.start, end) {
        let ordered = match (start, end) {
            (TimeSpec::RunningTime(s), TimeSpec::RunningTime(e)) => e > s,
            (TimeSpec::Utc(s), TimeSpec::Utc(e)) => e > s,
            // Mixed clocks can only be compared while the stream runs.
            _ => true,
        };
        if !ordered {
            return Err(invalid(".end", "must be after `start`".into()));
        }
    }
    if let Some(label) = &spec.countdown_label
        && label.matches("{time}").count() != 1
    {
        return Err(invalid(
            ".countdown-label",
            format!("`{label}` must contain `{{time}}` once, where the time left goes"),
        ));
    }
    if spec.countdown && end.is_none() && duration.is_none() {
        return Err(invalid(
            ".countdown",
            "a countdown needs `end` or `duration`".into(),
        ));
    }
    let image = match &spec.image {
        Some(path) => {
            let path = match base_dir {
                Some(dir) if path.is_relative() => dir.join(path),
                _ => path.clone(),
            };
            let decoded = DecodedImage::load(&path)
                .map_err(|e| invalid(".image", format!("{}: {e}", path.display())))?;
            Some(Arc::new(decoded))
        }
        None => None,
    };
    let qr = match &spec.qr {
        Some(url) if url.is_empty() => return Err(invalid(".qr", "must not be empty".into())),
        Some(url) => Some(Arc::new(
            QrMatrix::encode(url).map_err(|e| invalid(".qr", e))?,
        )),
        None => None,
    };
    Ok(Offer {
        end,
        spec,
        image,
        qr,
    })
}

/// Reads and validates a schedule file (`.json`, or TOML otherwise).
pub fn load_schedule(path: &Path) -> Result<Vec<Arc<Offer>>, ScheduleError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ScheduleError::Read {
        origin: origin.clone(),
        source,
    })?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    parse_schedule(origin, &text, is_json, path.parent())
}

/// Validates schedule text (JSON when `is_json`, TOML otherwise); images are looked up
/// relative to `base_dir`.
pub fn parse_schedule(
    origin: String,
    text: &str,
    is_json: bool,
    base_dir: Option<&Path>,
) -> Result<Vec<Arc<Offer>>, ScheduleError> {
    let syntax = if is_json { Syntax::Json } else { Syntax::Toml };
    let file: ScheduleFile = parse_document(&origin, text, syntax)?;
    if let Some(label) = &file.countdown_label
        && label.matches("{time}").count() != 1
    {
        let err = ScheduleError::Invalid {
            origin,
            field: "countdown-label".into(),
            message: format!("`{label}` must contain `{{time}}` once, where the time left goes"),
        };
        return Err(with_position(err, text, syntax, None));
    }
    let mut ids = HashSet::new();
    let mut offers = Vec::with_capacity(file.offers.len());
    for (i, mut spec) in file.offers.into_iter().enumerate() {
        let field = format!("offers[{i}]");
        if spec.countdown_label.is_none() {
            spec.countdown_label.clone_from(&file.countdown_label);
        }
        if !ids.insert(spec.id.clone()) {
            let err = ScheduleError::Invalid {
                origin,
                field: format!("{field}.id"),
                message: format!("`{}` is used by an earlier offer", spec.id),
            };
            return Err(with_position(err, text, syntax, Some(i)));
        }
        let offer = validate(&origin, &field, spec, base_dir)
            .map_err(|e| with_position(e, text, syntax, Some(i)))?;
        offers.push(Arc::new(offer));
    }
    Ok(offers)
}

/// Gives a validation error the line and column of the offending key (or of its offer).
fn with_position(
    err: ScheduleError,
    text: &str,
    syntax: Syntax,
    offer_index: Option<usize>,
) -> ScheduleError {
    let ScheduleError::Invalid {
        origin,
        field,
        message,
    } = err
    else {
        return err;
    };
    let key = field.rsplit('.').next().unwrap_or_default();
    let offset = match syntax {
        Syntax::Toml => offer_index.and_then(|i| toml_key_offset(text, i, key)),
        Syntax::Json => json_key_offset(text, offer_index, key),
    };
    match offset {
        Some(offset) => {
            let (line, column) = line_column(text, offset);
            ScheduleError::Syntax {
                origin,
                line,
                column,
                field,
                message,
            }
        }
        None => ScheduleError::Invalid {
            origin,
            field,
            message,
        },
    }
}

/// Byte offset of `key` in the `index`-th `[[offers]]` table, or of the table header.
fn toml_key_offset(text: &str, index: usize, key: &str) -> Option<usize> {
    let mut offset = 0;
    let mut tables_seen = 0;
    // Offset of the target table's header, once inside it.
    let mut header: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let at = offset + line.len() - trimmed.len();
        offset += line.len();
        if trimmed.starts_with('[') {
            if header.is_some() {
                break;
            }
            if trimmed.trim_end().replace(' ', "") == "[[offers]]" {
                if tables_seen == index {
                    header = Some(at);
                }
                tables_seen += 1;
            }
        } else if header.is_some()
            && let Some(rest) = trimmed.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(at);
        }
    }
    header
}

/// Byte offset of `key` in an offer object of JSON text: the `index`-th object of the root's
/// array, or the root object itself when `index` is None; else the object's opening brace.
fn json_key_offset(text: &str, index: Option<usize>, key: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut stack: Vec<u8> = Vec::new();
    let mut objects_seen = 0usize;
    let mut target: Option<(usize, usize)> = None; // (depth inside the object, brace offset)
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let name = text.get(start + 1..i.min(bytes.len()))?;
                let next = text.get(i + 1..)?.trim_start();
                if let Some((depth, _)) = target
                    && stack.len() == depth
                    && name == key
                    && next.starts_with(':')
                {
                    return Some(start);
                }
            }
            b'{' => {
                let is_offer = match index {
                    None => stack.is_empty(),
                    Some(n) => {
                        let here = stack.as_slice() == b"{[";
                        if here {
                            objects_seen += 1;
                        }
                        here && objects_seen == n + 1
                    }
                };
                stack.push(b'{');
                if is_offer {
                    target = Some((stack.len(), i));
                }
            }
            b'[' => stack.push(b'['),
            b'}' | b']' => {
                if let Some((depth, brace)) = target
                    && stack.len() == depth
                {
                    return Some(brace);
                }
                stack.pop();
            }
            _ => {}
        }
        i += 1;
    }
    target.map(|(_, brace)| brace)
}

/// Parses and validates one offer given as JSON (the `show-offer` signal).
pub fn parse_offer_json(json: &str) -> Result<Offer, ScheduleError> {
    let origin = "show-offer JSON";
    let spec: OfferSpec = parse_document(origin, json, Syntax::Json)?;
    validate(origin, "offer", spec, None).map_err(|e| with_position(e, json, Syntax::Json, None))
}

/// Formats a UTC time as RFC 3339 with milliseconds.
pub fn format_utc(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offer::Colour;

    /// Found by the offer_schedule fuzz target: running times past `ClockTime::MAX` panicked
    /// in `ClockTime::from_nseconds` instead of being refused.
    #[test]
    fn running_times_beyond_clock_time_are_refused_not_a_panic() {
        for start in [
            "\"888888888810:00\"",
            "\"9999999999999999999s\"",
            "1e300",
            "18446744073.709551615",
        ] {
            let json = format!(
                "{{\"id\": \"x\", \"title\": \"X\", \"price\": \"1\", \"start\": {start}}}"
            );
            let err = parse_offer_json(&json).expect_err(&json).to_string();
            assert!(
                err.contains("start") && err.contains("beyond the largest running time"),
                "{json}: {err}"
            );
        }
        // A start near the end of time plus a long duration saturates instead.
        let json =
            r#"{"id": "x", "title": "X", "price": "1", "start": 18000000000, "duration": 1e18}"#;
        assert!(parse_offer_json(json).is_ok());
    }

    #[test]
    fn json_error_names_line_column_and_field() {
        let err = parse_document::<ScheduleFile>(
            "s.json",
            "{\"offers\": [\n {\"id\": \"a\", \"title\": \"T\", \"price\": \"1\",\n  \"start\": \"later\"}]}",
            Syntax::Json,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("s.json:3:"), "{err}");
        assert!(err.contains("offers[0].start"), "{err}");
    }

    #[test]
    fn toml_error_names_line_column_and_field() {
        let text = "[[offers]]\nid = \"a\"\ntitle = \"T\"\nprice = \"1\"\nstart = true\n";
        let err = parse_document::<ScheduleFile>("s.toml", text, Syntax::Toml)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("s.toml:5:"), "{err}");
        assert!(err.contains("offers[0].start"), "{err}");
    }

    #[test]
    fn validation_errors_point_at_the_key() {
        let dir = std::env::temp_dir().join(format!("offeroverlay-pos-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The error of loading `text` saved as `name`, and the path it names the file by.
        let load_error = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            let err = load_schedule(&path).unwrap_err().to_string();
            (err, path.display().to_string())
        };
        let (err, path) = load_error(
            "s.toml",
            "[[offers]]\nid = \"a\"\ntitle = \"A\"\nprice = \"1\"\n\n[[offers]]\nid = \"b\"\ntitle = \"B\"\nprice = \"2\"\n  image = \"missing.png\"\n",
        );
        assert!(
            err.starts_with(&format!("{path}:10:3: offers[1].image: ")),
            "{err}"
        );
        let (err, path) = load_error(
            "s.json",
            "{\"offers\": [{\"id\": \"a\", \"title\": \"A\", \"price\": \"1\"},\n {\"id\": \"a\",\n  \"title\": \"B\", \"price\": \"2\"}]}",
        );
        assert!(
            err.starts_with(&format!("{path}:2:3: offers[1].id: ")),
            "{err}"
        );
        let err = parse_offer_json(
            "{\"id\": \"x\", \"title\": \"X\", \"price\": \"1\",\n \"duration\": -4}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("show-offer JSON:2:2: offer.duration: "),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn colours() {
        let spec: OfferSpec = serde_json::from_str(
            r##"{"id": "c", "title": "C", "price": "1", "accent-color": "#ff8800", "text-color": "#80ffffff", "background-color": 4278190080}"##,
        )
        .unwrap();
        assert_eq!(spec.accent_color, Some(Colour(0xffff_8800)));
        assert_eq!(spec.text_color, Some(Colour(0x80ff_ffff)));
        assert_eq!(spec.background_color, Some(Colour(0xff00_0000)));
        let err = parse_offer_json(
            r#"{"id": "c", "title": "C", "price": "1", "accent-color": "orange"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("offer.accent-color") || err.contains("accent-color"),
            "{err}"
        );
    }

    #[test]
    fn toml_datetime_is_utc() {
        let text =
            "[[offers]]\nid = \"a\"\ntitle = \"T\"\nprice = \"1\"\nstart = 2026-11-27T10:30:00Z\n";
        let file: ScheduleFile = parse_document("s.toml", text, Syntax::Toml).unwrap();
        assert!(matches!(file.offers[0].start, Some(TimeSpec::Utc(_))));
    }

    #[test]
    fn countdown_labels_need_the_time_and_a_schedule_gives_its_own() {
        let offer = parse_offer_json(
            r#"{"id": "c", "title": "T", "price": "P", "countdown": true, "duration": 60, "countdown-label": "残り {time}"}"#,
        )
        .unwrap();
        assert_eq!(offer.countdown_label(), "残り {time}");
        let err = parse_offer_json(
            r#"{"id": "c", "title": "T", "price": "P", "countdown-label": "ends soon"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("countdown-label") && err.contains("{time}"),
            "{err}"
        );
        // A schedule's label applies to every offer that has none of its own.
        let offers = parse_schedule(
            "s.toml".into(),
            "countdown-label = \"ينتهي خلال {time}\"\n\
             [[offers]]\nid = \"a\"\ntitle = \"T\"\nprice = \"P\"\n\
             [[offers]]\nid = \"b\"\ntitle = \"T\"\nprice = \"P\"\ncountdown-label = \"残り {time}\"\n",
            false,
            None,
        )
        .unwrap();
        assert_eq!(offers[0].countdown_label(), "ينتهي خلال {time}");
        assert_eq!(offers[1].countdown_label(), "残り {time}");
    }
}
