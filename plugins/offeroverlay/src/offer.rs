// SPDX-License-Identifier: MPL-2.0

//! The offer model: what an offer says (`OfferSpec`, with the serde forms of its times and
//! colours) and an offer that passed validation (`Offer`, its image decoded and its QR code
//! encoded). `schedule` produces offers from schedule files and `show-offer` JSON, `card`
//! draws them; this module depends on neither.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gst::glib;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

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
            TimeSpec::RunningTime(t) => TimeSpec::RunningTime(
                t.saturating_add(clock_time(d.as_nanos()).unwrap_or(gst::ClockTime::MAX)),
            ),
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
        Ok(d) => clock_time(d.as_nanos())
            .map(TimeSpec::RunningTime)
            .ok_or_else(|| format!("`{s}` is beyond the largest running time ({TOO_FAR})")),
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
    // `as` saturates: anything at or past u64::MAX is refused below, never wrapped.
    clock_time((secs * 1e9).round() as u128)
        .map(TimeSpec::RunningTime)
        .ok_or_else(|| format!("{secs} seconds is beyond the largest running time ({TOO_FAR})"))
}

/// How far the largest running time reaches, for errors.
const TOO_FAR: &str = "about 584 years";

/// Nanoseconds as a ClockTime; `None` past `ClockTime::MAX` (u64::MAX is GStreamer's "none",
/// which `from_nseconds` refuses with a panic).
fn clock_time(ns: u128) -> Option<gst::ClockTime> {
    u64::try_from(ns)
        .ok()
        .filter(|ns| *ns <= gst::ClockTime::MAX.nseconds())
        .map(gst::ClockTime::from_nseconds)
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

/// A colour as 0xAARRGGBB: written "#RRGGBB", "#AARRGGBB" or as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Colour(pub u32);

impl<'de> Deserialize<'de> for Colour {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ColourVisitor;

        impl Visitor<'_> for ColourVisitor {
            type Value = Colour;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a colour: \"#RRGGBB\", \"#AARRGGBB\" or an integer 0xAARRGGBB")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Colour, E> {
                u32::try_from(v)
                    .map(Colour)
                    .map_err(|_| E::custom(format!("{v:#x} is more than 0xAARRGGBB")))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Colour, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a colour cannot be negative"))
                    .and_then(|v| self.visit_u64(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Colour, E> {
                let hex = v.strip_prefix('#').ok_or_else(|| {
                    E::custom(format!(
                        "`{v}` is not a colour like \"#1c1f26\" or \"#eb1c1f26\""
                    ))
                })?;
                let value = u32::from_str_radix(hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 6 || hex.len() == 8)
                    .ok_or_else(|| E::custom(format!("`{v}` is not #RRGGBB or #AARRGGBB")))?;
                Ok(Colour(if hex.len() == 6 {
                    0xff00_0000 | value
                } else {
                    value
                }))
            }
        }

        deserializer.deserialize_any(ColourVisitor)
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
    /// The countdown's text in the card's language, `{time}` standing for the time left
    /// (default "ends in {time}"); its direction follows its first letter, so an Arabic or
    /// Hebrew label reads right to left.
    #[serde(default)]
    pub countdown_label: Option<String>,
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
    /// Override the element's colours for this card.
    #[serde(default)]
    pub background_color: Option<Colour>,
    #[serde(default)]
    pub text_color: Option<Colour>,
    #[serde(default)]
    pub accent_color: Option<Colour>,
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
    /// The countdown's label, `{time}` standing for the time left.
    pub fn countdown_label(&self) -> &str {
        self.spec
            .countdown_label
            .as_deref()
            .unwrap_or(DEFAULT_COUNTDOWN_LABEL)
    }

    /// The element's theme with this offer's colour overrides.
    pub fn theme(&self, base: &Theme) -> Theme {
        let mut theme = base.clone();
        if let Some(Colour(c)) = self.spec.background_color {
            theme.background = c;
        }
        if let Some(Colour(c)) = self.spec.text_color {
            theme.text = c;
        }
        if let Some(Colour(c)) = self.spec.accent_color {
            theme.accent = c;
        }
        theme
    }

    /// Whether two offers render the same card (used to keep drawn cards across reloads):
    /// everything but when and where it shows. Images compare by their pixels, so that an
    /// image file changed on disk is drawn again on reload.
    pub fn same_content(&self, other: &Offer) -> bool {
        if self.image.as_deref() != other.image.as_deref() {
            return false;
        }
        // What only says when and where the card shows is left out of the comparison.
        let drawn = |spec: &OfferSpec| OfferSpec {
            id: String::new(),
            start: None,
            end: None,
            duration: None,
            anchor: None,
            ..spec.clone()
        };
        drawn(&self.spec) == drawn(&other.spec)
    }
}

/// The countdown's label when an offer or its schedule sets none.
pub const DEFAULT_COUNTDOWN_LABEL: &str = "ends in {time}";

/// Colours, font and shape of every card.
#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    /// Pango font family (and optional style), e.g. "Sans" or "Noto Sans Bold".
    pub font: String,
    /// 0xAARRGGBB.
    pub background: u32,
    pub text: u32,
    pub accent: u32,
    /// Corner radius as a fraction of the card width.
    pub corner_radius: f64,
}

/// Images larger than this on either side are refused rather than decoded.
const MAX_IMAGE_SIDE: u32 = 8192;

/// An offer image decoded once, as premultiplied cairo ARGB32 pixels.
#[derive(PartialEq)]
pub struct DecodedImage {
    width: u32,
    height: u32,
    /// Native-endian ARGB32, premultiplied, stride = width * 4.
    pixels: Vec<u8>,
}

impl std::fmt::Debug for DecodedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DecodedImage({}x{})", self.width, self.height)
    }
}

impl DecodedImage {
    /// Decodes a PNG or JPEG file (format guessed from its content).
    pub fn load(path: &Path) -> Result<Self, String> {
        // A FIFO or a device (`/dev/stdin`, `/dev/zero`) named by a schedule or an API call
        // would block the caller or never end.
        let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
        if !metadata.is_file() {
            return Err("not a regular file".into());
        }
        let reader = image::ImageReader::open(path)
            .map_err(|e| e.to_string())?
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
        if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
            return Err(format!(
                "{w}x{h} is too large (at most {MAX_IMAGE_SIDE} pixels a side)"
            ));
        }
        let rgba = image::ImageReader::open(path)
            .map_err(|e| e.to_string())?
            .with_guessed_format()
            .map_err(|e| e.to_string())?
            .decode()
            .map_err(|e| e.to_string())?
            .to_rgba8();
        let (width, height) = rgba.dimensions();
        if width == 0 || height == 0 {
            return Err("image is empty".into());
        }
        let mut pixels = Vec::with_capacity(rgba.len());
        for px in rgba.pixels() {
            let [r, g, b, a] = px.0;
            let pm = |c: u8| ((c as u32 * a as u32 + 127) / 255) as u8;
            let word = (a as u32) << 24 | (pm(r) as u32) << 16 | (pm(g) as u32) << 8 | pm(b) as u32;
            pixels.extend_from_slice(&word.to_ne_bytes());
        }
        Ok(Self {
            width,
            height,
            pixels,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Native-endian ARGB32, premultiplied, stride = width * 4.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }
}

#[derive(Debug)]
pub struct QrMatrix {
    width: usize,
    dark: Vec<bool>,
}
impl QrMatrix {
    /// Encodes `data` with error correction level M.
    pub fn encode(data: &str) -> Result<Self, String> {
        let code = qrcode::QrCode::with_error_correction_level(data, qrcode::EcLevel::M)
            .map_err(|e| format!("cannot encode as a QR code: {e}"))?;
        let width = code.width();
        let dark = code
            .to_colors()
            .into_iter()
            .map(|c| c == qrcode::Color::Dark)
            .collect();
        Ok(Self { width, dark })
    }

    /// Modules across, without a quiet zone.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Whether the module in column `x`, row `y` is dark.
    pub fn is_dark(&self, x: usize, y: usize) -> bool {
        self.dark[y * self.width + x]
    }
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
    fn an_image_that_is_not_a_regular_file_is_refused_without_blocking() {
        // Opening a FIFO for reading blocks until a writer comes: a schedule or an API call
        // naming one would freeze the caller.
        let dir = std::env::temp_dir().join(format!("offeroverlay-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("image.png");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let err = DecodedImage::load(&fifo).expect_err("a FIFO is not an image");
        assert_eq!(err, "not a regular file");
        assert!(DecodedImage::load(Path::new("/dev/zero")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
