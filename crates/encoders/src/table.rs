//! The table itself. Units and property names were read from `gst-inspect-1.0` (GStreamer
//! 1.22) and the plugins' sources; `live_update` is `true` only where the element applies a
//! new value while PLAYING.

use crate::{EncoderProperties, KeyFrameRequest, MediaKind, RateUnit};

/// Pseudo factory name of the row shared by every FFmpeg (`avenc_*`) encoder.
pub(crate) const AVENC_GENERIC: &str = "avenc_*";

/// A row for an encoder of `kind` with the defaults: 1 bit/s steps, no rate-control buffer
/// property, key frames (video only) requested with a force-key-unit event.
const fn row(
    kind: MediaKind,
    factory: &'static str,
    bitrate_property: &'static str,
    unit: RateUnit,
    live_update: bool,
) -> EncoderProperties {
    EncoderProperties {
        factory,
        bitrate_property,
        unit,
        kind,
        live_update,
        key_frame: match kind {
            MediaKind::Video => KeyFrameRequest::ForceKeyUnitEvent,
            MediaKind::Audio => KeyFrameRequest::NotApplicable,
        },
        granularity_bps: 1,
        vbv_ms_property: None,
    }
}

impl EncoderProperties {
    const fn with_granularity(mut self, granularity_bps: u64) -> Self {
        self.granularity_bps = granularity_bps;
        self
    }

    const fn with_vbv_ms(mut self, property: &'static str) -> Self {
        self.vbv_ms_property = Some(property);
        self
    }
}

use MediaKind::{Audio, Video};
use RateUnit::{BitsPerSecond as Bps, KilobitsPerSecond as Kbps};

/// Every encoder this project knows how to steer, one row per element factory.
///
/// Use [`crate::lookup`] rather than scanning this directly: it also maps every `avenc_*`
/// factory to the generic FFmpeg row.
pub static ENCODERS: &[EncoderProperties] = &[
    // Software video encoders.
    // vbv-buf-capacity (ms) is re-read with the bitrate while PLAYING.
    row(Video, "x264enc", "bitrate", Kbps, true).with_vbv_ms("vbv-buf-capacity"),
    row(Video, "x265enc", "bitrate", Kbps, true),
    row(Video, "openh264enc", "bitrate", Bps, true),
    // libvpx re-reads its configuration when target-bitrate changes while running.
    // Its property is in bit/s but libvpx stores kbit/s: 1 kbit/s steps.
    row(Video, "vp8enc", "target-bitrate", Bps, true).with_granularity(1000),
    row(Video, "vp9enc", "target-bitrate", Bps, true).with_granularity(1000),
    row(Video, "av1enc", "target-bitrate", Kbps, false),
    row(Video, "svtav1enc", "target-bitrate", Kbps, false),
    row(Video, "rav1enc", "bitrate", Bps, false),
    row(Video, "theoraenc", "bitrate", Kbps, true),
    // FFmpeg encoders read `bitrate` only when they open the codec.
    row(Video, AVENC_GENERIC, "bitrate", Bps, false),
    // Hardware video encoders.
    row(Video, "nvh264enc", "bitrate", Kbps, true),
    row(Video, "nvh265enc", "bitrate", Kbps, true),
    row(Video, "vaapih264enc", "bitrate", Kbps, true),
    row(Video, "vaapih265enc", "bitrate", Kbps, true),
    row(Video, "vah264enc", "bitrate", Kbps, true),
    row(Video, "vah265enc", "bitrate", Kbps, true),
    row(Video, "qsvh264enc", "bitrate", Kbps, true),
    row(Video, "qsvh265enc", "bitrate", Kbps, true),
    // Audio encoders.
    row(Audio, "opusenc", "bitrate", Bps, true),
    row(Audio, "voaacenc", "bitrate", Bps, false),
    row(Audio, "fdkaacenc", "bitrate", Bps, false),
    row(Audio, "lamemp3enc", "bitrate", Kbps, false),
];
