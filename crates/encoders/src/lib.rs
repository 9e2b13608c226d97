//! One table of GStreamer encoders and how to steer their bitrate.
//!
//! Every GStreamer encoder names and scales its bitrate differently: `x264enc` takes kbit/s in
//! an unsigned `bitrate`, `vp8enc` takes bit/s in a signed `target-bitrate`, `opusenc` bit/s in a
//! signed `bitrate`, `av1enc` kbit/s in `target-bitrate`. Code that adapts a bitrate (the
//! `abrcontroller` element, the WebRTC output) looks the encoder up here once instead of keeping
//! its own `match` on factory names.
//!
//! * [`ENCODERS`] is the table, [`lookup`] finds the row for a factory name.
//! * [`RateUnit`] converts between bit/s (what controllers reason in) and the encoder's unit.
//! * [`Encoder`] wraps an element: read and set the bitrate in bit/s, clamped to the range the
//!   element's property really accepts, and force a key frame.
//! * [`find_upstream_encoder`] walks a pipeline upstream from a pad to the first known encoder.
//!
//! All rates in this crate's API are bit/s (`u64`), whatever the encoder's own unit is.

use gst::glib;
use gst::prelude::*;

mod table;

pub use table::ENCODERS;

/// The largest frame the top levels of H.264 and H.265 allow (level 6.2: 139264 macroblocks of
/// 16x16 pixels, e.g. 8192x4352). A stream claiming more is corrupt or hostile: decoding it
/// would allocate gigabytes, so readers of untrusted files refuse it.
pub const MAX_FRAME_PIXELS: u64 = 139_264 * 256;

/// The unit an encoder's bitrate property is expressed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    /// Bits per second.
    BitsPerSecond,
    /// Kilobits per second (1 kbit/s = 1000 bit/s).
    KilobitsPerSecond,
}

impl RateUnit {
    /// Converts a rate in bit/s into this unit, rounding to the nearest unit.
    ///
    /// ```
    /// use hybridlive_encoders::RateUnit;
    /// assert_eq!(RateUnit::KilobitsPerSecond.from_bps(1_499_600), 1500);
    /// assert_eq!(RateUnit::BitsPerSecond.from_bps(64_000), 64_000);
    /// ```
    pub fn from_bps(self, bps: u64) -> u64 {
        match self {
            RateUnit::BitsPerSecond => bps,
            RateUnit::KilobitsPerSecond => bps.saturating_add(500) / 1000,
        }
    }

    /// Converts a value in this unit into bit/s.
    pub fn to_bps(self, value: u64) -> u64 {
        match self {
            RateUnit::BitsPerSecond => value,
            RateUnit::KilobitsPerSecond => value.saturating_mul(1000),
        }
    }

    /// Short human-readable unit name, as used in logs and messages.
    pub fn symbol(self) -> &'static str {
        match self {
            RateUnit::BitsPerSecond => "bit/s",
            RateUnit::KilobitsPerSecond => "kbit/s",
        }
    }
}

/// Whether an encoder produces video or audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// A video encoder: it has key frames and its input can be rescaled.
    Video,
    /// An audio encoder: bitrate only.
    Audio,
}

/// How a key frame (IDR, intra frame) is requested from an encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFrameRequest {
    /// The encoder is a `GstVideoEncoder` and honours an upstream `GstForceKeyUnit` event sent
    /// to its source pad (or a downstream one on its sink pad).
    ForceKeyUnitEvent,
    /// Key frames do not apply (audio codecs).
    NotApplicable,
}

/// One row of the encoder table: how to steer the bitrate of one encoder factory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderProperties {
    /// Element factory name, e.g. `x264enc`.
    pub factory: &'static str,
    /// Name of the property holding the target bitrate.
    pub bitrate_property: &'static str,
    /// Unit of that property.
    pub unit: RateUnit,
    /// Video or audio.
    pub kind: MediaKind,
    /// `true` when a new value takes effect while the element is PLAYING. When `false` the
    /// encoder only reads the value when it (re)configures, e.g. on the next caps change.
    pub live_update: bool,
    /// How to request a key frame.
    pub key_frame: KeyFrameRequest,
    /// Smallest step the encoder really honours, in bit/s. libvpx keeps kbit/s internally
    /// although its GStreamer property is in bit/s, so vp8enc/vp9enc have 1000 here.
    pub granularity_bps: u64,
    /// Property holding the rate-control buffer (VBV) in milliseconds of the target rate, if
    /// the encoder has one that can change while PLAYING: it bounds how far one frame (a key
    /// frame) may exceed the average frame size.
    pub vbv_ms_property: Option<&'static str>,
}

/// Finds the table row for an element factory name.
///
/// Exact names come first; any other `avenc_*` (FFmpeg) encoder falls back to the generic
/// libav row (`bitrate` in bit/s, read when the encoder is configured).
pub fn lookup(factory: &str) -> Option<&'static EncoderProperties> {
    ENCODERS
        .iter()
        .find(|row| row.factory == factory)
        .or_else(|| {
            factory
                .starts_with("avenc_")
                .then(|| {
                    ENCODERS
                        .iter()
                        .find(|row| row.factory == table::AVENC_GENERIC)
                })
                .flatten()
        })
}

/// Errors from wrapping an element as an [`Encoder`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The element has no factory (it was not created from a registry factory).
    #[error("element {element} has no factory, cannot tell which encoder it is")]
    NoFactory {
        /// Element name.
        element: String,
    },
    /// The factory is not in [`ENCODERS`].
    #[error("element {element} ({factory}) is not a known encoder")]
    UnknownEncoder {
        /// Element name.
        element: String,
        /// Factory name.
        factory: String,
    },
    /// The table names a property the element does not have (a different plugin version).
    #[error("element {element} ({factory}) has no property {property}")]
    MissingProperty {
        /// Element name.
        element: String,
        /// Factory name.
        factory: String,
        /// Property name from the table.
        property: &'static str,
    },
}

/// An encoder element together with its table row: read and set its bitrate in bit/s.
#[derive(Debug, Clone)]
pub struct Encoder {
    element: gst::Element,
    properties: &'static EncoderProperties,
    pspec: glib::ParamSpec,
}

impl Encoder {
    /// Wraps `element` if its factory is in the table and it has the expected property.
    pub fn new(element: &gst::Element) -> Result<Self, Error> {
        let factory = element.factory().ok_or_else(|| Error::NoFactory {
            element: element.name().to_string(),
        })?;
        let properties = lookup(factory.name().as_str()).ok_or_else(|| Error::UnknownEncoder {
            element: element.name().to_string(),
            factory: factory.name().to_string(),
        })?;
        let pspec = element
            .find_property(properties.bitrate_property)
            .ok_or_else(|| Error::MissingProperty {
                element: element.name().to_string(),
                factory: factory.name().to_string(),
                property: properties.bitrate_property,
            })?;
        Ok(Encoder {
            element: element.clone(),
            properties,
            pspec,
        })
    }

    /// The wrapped element.
    pub fn element(&self) -> &gst::Element {
        &self.element
    }

    /// The table row for this encoder.
    pub fn properties(&self) -> &'static EncoderProperties {
        self.properties
    }

    /// Range of bitrates the property accepts, in bit/s.
    ///
    /// A minimum of 0 (vp8enc's "automatic" value) is reported as one unit: a controller never
    /// wants to switch an encoder to automatic by accident.
    pub fn range_bps(&self) -> (u64, u64) {
        let (min, max) = self.raw_range();
        let unit = self.properties.unit;
        (unit.to_bps(min), unit.to_bps(max))
    }

    /// Current value of the bitrate property, in bit/s.
    pub fn bitrate_bps(&self) -> u64 {
        let value = self.element.property_value(self.pspec.name());
        let raw = value
            .get::<u32>()
            .map(u64::from)
            .or_else(|_| value.get::<i32>().map(|v| v.max(0) as u64))
            .or_else(|_| value.get::<u64>())
            .or_else(|_| value.get::<i64>().map(|v| v.max(0) as u64))
            .unwrap_or(0);
        self.properties.unit.to_bps(raw)
    }

    /// Sets the bitrate to `bps`, converted to the encoder's unit and clamped to the
    /// property's range. Returns the value actually set, in bit/s.
    ///
    /// Nothing is written when the property already holds that value, so calling this on
    /// every controller tick does not make the encoder reconfigure needlessly.
    pub fn set_bitrate_bps(&self, bps: u64) -> u64 {
        let unit = self.properties.unit;
        let (min, max) = self.raw_range();
        let step = self.raw_step();
        let raw = (unit.from_bps(bps).saturating_add(step / 2) / step * step).clamp(min, max);
        let applied = unit.to_bps(raw);
        if applied == self.bitrate_bps() {
            return applied;
        }
        let value = match self.pspec.value_type() {
            t if t == u32::static_type() => (raw.min(u32::MAX as u64) as u32).to_value(),
            t if t == i32::static_type() => (raw.min(i32::MAX as u64) as i32).to_value(),
            t if t == u64::static_type() => raw.to_value(),
            _ => (raw.min(i64::MAX as u64) as i64).to_value(),
        };
        self.element
            .set_property_from_value(self.pspec.name(), &value);
        applied
    }

    /// Smallest step of the raw property value.
    fn raw_step(&self) -> u64 {
        self.properties
            .unit
            .from_bps(self.properties.granularity_bps)
            .max(1)
    }

    /// Usable range of the raw property value: never 0 ("automatic" for some encoders),
    /// bounds rounded inwards to the encoder's granularity.
    fn raw_range(&self) -> (u64, u64) {
        let step = self.raw_step();
        let (min, max) = pspec_range(&self.pspec);
        let min = min.max(1).div_ceil(step) * step;
        let max = (max / step * step).max(min);
        (min, max)
    }

    /// Sets the rate-control buffer to `ms` milliseconds of the target rate, when the encoder
    /// has such a property ([`EncoderProperties::vbv_ms_property`]). Returns whether it did.
    pub fn set_vbv_ms(&self, ms: u32) -> bool {
        let Some(name) = self.properties.vbv_ms_property else {
            return false;
        };
        let Some(pspec) = self.element.find_property(name) else {
            return false;
        };
        if pspec.value_type() != u32::static_type() {
            return false;
        }
        if self.element.property::<u32>(name) != ms {
            self.element.set_property(name, ms);
        }
        true
    }

    /// Asks the encoder for a key frame as soon as possible. Returns `false` when the
    /// encoder cannot produce one (audio) or did not accept the request.
    ///
    /// The request is an upstream `GstForceKeyUnit` event (with `all-headers` so that
    /// SPS/PPS are repeated) sent to the encoder's source pad.
    pub fn force_key_frame(&self) -> bool {
        match self.properties.key_frame {
            KeyFrameRequest::NotApplicable => false,
            KeyFrameRequest::ForceKeyUnitEvent => {
                let event = gst_video::UpstreamForceKeyUnitEvent::builder()
                    .all_headers(true)
                    .build();
                match self.element.static_pad("src") {
                    Some(pad) => pad.send_event(event),
                    None => self.element.send_event(event),
                }
            }
        }
    }
}

/// Range `(min, max)` of an integer property, negative bounds clamped to 0.
fn pspec_range(pspec: &glib::ParamSpec) -> (u64, u64) {
    if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt>() {
        (p.minimum() as u64, p.maximum() as u64)
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecInt>() {
        (p.minimum().max(0) as u64, p.maximum().max(0) as u64)
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt64>() {
        (p.minimum(), p.maximum())
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecInt64>() {
        (p.minimum().max(0) as u64, p.maximum().max(0) as u64)
    } else {
        (0, u32::MAX as u64)
    }
}

/// Walks upstream from `pad` (typically a sink pad of the caller) and returns the first
/// element whose factory is in the encoder table and whose [`MediaKind`] is `kind` (any kind
/// when `None`).
///
/// The walk follows links through bins (ghost pads) and through elements with several sink
/// pads, depth first, and gives up after a few dozen elements.
pub fn find_upstream_encoder(pad: &gst::Pad, kind: Option<MediaKind>) -> Option<gst::Element> {
    let mut budget = 64;
    let mut stack: Vec<gst::Pad> = vec![pad.clone()];
    while let Some(sink_pad) = stack.pop() {
        if budget == 0 {
            break;
        }
        budget -= 1;
        let Some(mut src_pad) = sink_pad.peer() else {
            continue;
        };
        // Internal pad of a sink ghost pad: continue outside the bin.
        if let Some(ghost) = src_pad
            .parent()
            .and_then(|p| p.downcast::<gst::GhostPad>().ok())
        {
            stack.push(ghost.upcast());
            continue;
        }
        // Source ghost pad of a bin: continue at its target inside the bin.
        while let Some(ghost) = src_pad.downcast_ref::<gst::GhostPad>() {
            match ghost.target() {
                Some(target) => src_pad = target,
                None => break,
            }
        }
        let Some(element) = src_pad.parent_element() else {
            continue;
        };
        if let Some(row) = element.factory().and_then(|f| lookup(f.name().as_str()))
            && kind.is_none_or(|k| k == row.kind)
        {
            return Some(element);
        }
        stack.extend(element.sink_pads());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kbit_rounds_to_nearest() {
        let k = RateUnit::KilobitsPerSecond;
        assert_eq!(k.from_bps(0), 0);
        assert_eq!(k.from_bps(499), 0);
        assert_eq!(k.from_bps(500), 1);
        assert_eq!(k.from_bps(2_048_000), 2048);
        assert_eq!(k.to_bps(2048), 2_048_000);
        assert_eq!(k.to_bps(u64::MAX), u64::MAX);
        assert_eq!(k.from_bps(u64::MAX), u64::MAX / 1000);
    }

    #[test]
    fn bit_is_identity() {
        let b = RateUnit::BitsPerSecond;
        for v in [0, 1, 64_000, 3_500_000] {
            assert_eq!(b.from_bps(v), v);
            assert_eq!(b.to_bps(v), v);
        }
    }

    #[test]
    fn units_per_encoder() {
        let expect = [
            ("x264enc", "bitrate", RateUnit::KilobitsPerSecond),
            ("x265enc", "bitrate", RateUnit::KilobitsPerSecond),
            ("vp8enc", "target-bitrate", RateUnit::BitsPerSecond),
            ("vp9enc", "target-bitrate", RateUnit::BitsPerSecond),
            ("opusenc", "bitrate", RateUnit::BitsPerSecond),
            ("openh264enc", "bitrate", RateUnit::BitsPerSecond),
            ("av1enc", "target-bitrate", RateUnit::KilobitsPerSecond),
            ("svtav1enc", "target-bitrate", RateUnit::KilobitsPerSecond),
            ("avenc_mpeg4", "bitrate", RateUnit::BitsPerSecond),
        ];
        for (factory, property, unit) in expect {
            let row = lookup(factory).unwrap_or_else(|| panic!("{factory} missing"));
            assert_eq!(row.bitrate_property, property, "{factory}");
            assert_eq!(row.unit, unit, "{factory}");
        }
        assert_eq!(lookup("opusenc").unwrap().kind, MediaKind::Audio);
        assert_eq!(
            lookup("opusenc").unwrap().key_frame,
            KeyFrameRequest::NotApplicable
        );
        assert_eq!(
            lookup("x264enc").unwrap().key_frame,
            KeyFrameRequest::ForceKeyUnitEvent
        );
        assert!(!lookup("avenc_h264_omx").unwrap().live_update);
        assert!(lookup("identity").is_none());
        assert!(lookup("avdec_h264").is_none());
    }

    #[test]
    fn table_has_no_duplicates() {
        for (i, a) in ENCODERS.iter().enumerate() {
            assert!(
                ENCODERS[i + 1..].iter().all(|b| b.factory != a.factory),
                "{} listed twice",
                a.factory
            );
        }
    }
}
