// SPDX-License-Identifier: MPL-2.0

//! Offers and schedules: what a schedule file or a `show-offer` JSON says, parsed with serde,
//! validated, and with its images decoded, so that nothing read from outside is trusted later.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gst::glib;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::card::{DecodedImage, QrMatrix};

/// Where a card sits in the frame. Cards sharing an anchor are stacked away from its edge.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, glib::Enum, Deserialize)]
#[enum_type(name = "GstOfferOverlayAnchor")]
#[serde(rename_all = "kebab-case")]
#[repr(u32)]
pub enum Anchor {
    #[enum_value(name = "Top left", nick = "top-left")]
    TopLeft = 0,
    #[enum_value(name = "Top centre", nick = "top")]
    #[serde(alias = "top-center")]
    Top = 1,
    #[enum_value(name = "Top right", nick = "top-right")]
    TopRight = 2,
    #[enum_value(name = "Middle left", nick = "left")]
    #[serde(alias = "center-left")]
    Left = 3,
    #[enum_value(name = "Centre", nick = "center")]
    Center = 4,
    #[enum_value(name = "Middle right", nick = "right")]
    #[serde(alias = "center-right")]
    Right = 5,
    #[enum_value(name = "Bottom left", nick = "bottom-left")]
    BottomLeft = 6,
    #[enum_value(name = "Bottom centre", nick = "bottom")]
    #[serde(alias = "bottom-center")]
    Bottom = 7,
    #[default]
    #[enum_value(name = "Bottom right", nick = "bottom-right")]
    BottomRight = 8,
}

impl Anchor {
    /// Horizontal placement: 0 = left, 1 = centre, 2 = right.
    pub fn column(self) -> u32 {
        self as u32 % 3
    }

    /// Vertical placement: 0 = top, 1 = middle, 2 = bottom.
    pub fn row(self) -> u32 {
        self as u32 / 3
    }
}

/// A point in time an offer starts or ends at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSpec {
    /// Running time of the stream (time since the pipeline started playing, for a live one).
    RunningTime(gst::ClockTime),
    /// Wall-clock time (UTC).
    Utc(SystemTime),
}

impl TimeSpec {
    /// Signed nanoseconds from this point to the frame at `running_time` / `utc`:
    /// positive once the frame is past it.
    pub fn elapsed_at(self, running_time: gst::ClockTime, utc: SystemTime) -> i128 {
        match self {
            TimeSpec::RunningTime(t) => running_time.nseconds() as i128 - t.nseconds() as i128,
            TimeSpec::Utc(t) => match utc.duration_since(t) {
                Ok(d) => d.as_nanos() as i128,
                Err(e) => -(e.duration().as_nanos() as i128),
            },
        }
    }

    /// The same instant shifted later by `d`.
    pub fn plus(self, d: Duration) -> TimeSpec {
        match self {
            TimeSpec::RunningTime(t) => TimeSpec::RunningTime(t.saturating_add(
                gst::ClockTime::from_nseconds(d.as_nanos().min(u64::MAX as u128) as u64),
            )),
            // Beyond what SystemTime can hold is "never" for a live class.
            TimeSpec::Utc(t) => TimeSpec::Utc(t.checked_add(d).unwrap_or(t)),
        }
    }
}

fn parse_clock_string(s: &str) -> Result<TimeSpec, String> {
    let s = s.trim();
    // A date means wall-clock time; anything else is a running-time offset.
    if s.len() >= 10 && s.as_bytes()[4] == b'-' {
        return humantime::parse_rfc3339_weak(s)
            .map(TimeSpec::Utc)
            .map_err(|e| {
                format!("`{s}` is not an RFC 3339 UTC time (like 2026-11-27T10:30:00Z): {e}")
            });
    }
    if s.contains(':') {
        // [[HH:]MM:]SS[.fff]
        let mut total = 0f64;
        for part in s.split(':') {
            let v: f64 = part
                .parse()
                .map_err(|_| format!("`{s}` is not a time like 01:30 or 1:02:03.5"))?;
            if !(0.0..60.0).contains(&v) && total > 0.0 {
                return Err(format!("`{s}`: minutes and seconds must be below 60"));
            }
            total = total * 60.0 + v;
        }
        return seconds_to_running_time(total);
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(TimeSpec::RunningTime(gst::ClockTime::from_nseconds(
            d.as_nanos().min(u64::MAX as u128) as u64,
        ))),
        Err(_) => Err(format!(
            "`{s}` is neither a running-time offset (seconds, \"01:30\", \"90s\") nor a UTC time (\"2026-11-27T10:30:00Z\")"
        )),
    }
}

fn seconds_to_running_time(secs: f64) -> Result<TimeSpec, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "{secs} is not a running-time offset: seconds must be 0 or more"
        ));
    }
    Ok(TimeSpec::RunningTime(gst::ClockTime::from_nseconds(
        (secs * 1e9).round() as u64,
    )))
}

impl<'de> Deserialize<'de> for TimeSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeVisitor;

        impl<'de> Visitor<'de> for TimeVisitor {
            type Value = TimeSpec;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "seconds of running time (90, \"01:30\", \"90s\") or a UTC time (\"2026-11-27T10:30:00Z\")",
                )
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TimeSpec, E> {
                seconds_to_running_time(v as f64).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TimeSpec, E> {
                seconds_to_running_time(v as f64).map_err(E::custom)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TimeSpec, E> {
                seconds_to_running_time(v).map_err(E::custom)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<TimeSpec, E> {
                parse_clock_string(v).map_err(E::custom)
            }

            // TOML's own date-time values arrive as a one-entry map.
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TimeSpec, A::Error> {
                let Some((_, value)) = map.next_entry::<String, String>()? else {
                    return Err(de::Error::custom("empty time"));
                };
                parse_clock_string(&value).map_err(de::Error::custom)
            }
        }

        deserializer.deserialize_any(TimeVisitor)
    }
}

/// One offer as written in a schedule file or passed to `show-offer`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OfferSpec {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub subtitle: Option<String>,
    pub price: String,
    #[serde(default)]
    pub badge: Option<String>,
    /// PNG or JPEG file; relative paths are relative to the schedule file.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// URL encoded as a QR code on the card.
    #[serde(default)]
    pub qr: Option<String>,
    /// Show "ends in MM:SS" counting down to `end`.
    #[serde(default)]
    pub countdown: bool,
    #[serde(default)]
    pub start: Option<TimeSpec>,
    #[serde(default)]
    pub end: Option<TimeSpec>,
    /// Seconds after `start`; an alternative to `end`.
    #[serde(default)]
    pub duration: Option<f64>,
    /// Overrides the element's `anchor` for this card.
    #[serde(default)]
    pub anchor: Option<Anchor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    #[serde(default)]
    offers: Vec<OfferSpec>,
}

/// An offer that passed validation, with its image decoded and its QR code encoded.
#[derive(Debug)]
pub struct Offer {
    pub spec: OfferSpec,
    pub image: Option<Arc<DecodedImage>>,
    pub qr: Option<Arc<QrMatrix>>,
    /// `end`, or `start + duration`, when known without running the stream.
    pub end: Option<TimeSpec>,
}

impl Offer {
    /// Whether two offers render the same card (used to keep caches across reloads).
    pub fn same_content(&self, other: &Offer) -> bool {
        self.spec == other.spec
    }
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

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
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
            let de = toml::Deserializer::new(text);
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
    let syntax = if is_json { Syntax::Json } else { Syntax::Toml };
    let file: ScheduleFile = parse_document(&origin, &text, syntax)?;
    let base_dir = path.parent();
    let mut ids = HashSet::new();
    let mut offers = Vec::with_capacity(file.offers.len());
    for (i, spec) in file.offers.into_iter().enumerate() {
        let field = format!("offers[{i}]");
        if !ids.insert(spec.id.clone()) {
            return Err(ScheduleError::Invalid {
                origin,
                field: format!("{field}.id"),
                message: format!("`{}` is used by an earlier offer", spec.id),
            });
        }
        offers.push(Arc::new(validate(&origin, &field, spec, base_dir)?));
    }
    Ok(offers)
}

/// Parses and validates one offer given as JSON (the `show-offer` signal).
pub fn parse_offer_json(json: &str) -> Result<Offer, ScheduleError> {
    let origin = "show-offer JSON";
    let spec: OfferSpec = parse_document(origin, json, Syntax::Json)?;
    validate(origin, "offer", spec, None)
}

/// Formats a UTC time as RFC 3339 with milliseconds.
pub fn format_utc(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_forms() {
        assert_eq!(
            parse_clock_string("01:30").unwrap(),
            TimeSpec::RunningTime(gst::ClockTime::from_seconds(90))
        );
        assert_eq!(
            parse_clock_string("90s").unwrap(),
            TimeSpec::RunningTime(gst::ClockTime::from_seconds(90))
        );
        assert!(matches!(
            parse_clock_string("2026-11-27T10:30:00Z").unwrap(),
            TimeSpec::Utc(_)
        ));
        assert!(parse_clock_string("soon").is_err());
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
    fn toml_datetime_is_utc() {
        let text =
            "[[offers]]\nid = \"a\"\ntitle = \"T\"\nprice = \"1\"\nstart = 2026-11-27T10:30:00Z\n";
        let file: ScheduleFile = parse_document("s.toml", text, Syntax::Toml).unwrap();
        assert!(matches!(file.offers[0].start, Some(TimeSpec::Utc(_))));
    }
}
