//! The table itself. Units and property names were read from `gst-inspect-1.0` (GStreamer
//! 1.22) and the plugins' sources; `live_update` is `true` only where the element applies a
//! new value while PLAYING.

use crate::{EncoderProperties, KeyFrameRequest, MediaKind, RateUnit};

/// Pseudo factory name of the row shared by every FFmpeg (`avenc_*`) encoder.
pub(crate) const AVENC_GENERIC: &str = "avenc_*";

const fn video(
    factory: &'static str,
    bitrate_property: &'static str,
    unit: RateUnit,
    live_update: bool,
) -> EncoderProperties {
    EncoderProperties {
        factory,
        bitrate_property,
        unit,
        kind: MediaKind::Video,
        live_update,
        key_frame: KeyFrameRequest::ForceKeyUnitEvent,
        granularity_bps: 1,
        vbv_ms_property: None,
    }
}

const fn audio(
    factory: &'static str,
    bitrate_property: &'static str,
    unit: RateUnit,
    live_update: bool,
) -> EncoderProperties {
    EncoderProperties {
        factory,
        bitrate_property,
        unit,
        kind: MediaKind::Audio,
        live_update,
        key_frame: KeyFrameRequest::NotApplicable,
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

use RateUnit::{BitsPerSecond as Bps, KilobitsPerSecond as Kbps};

/// Every encoder this project knows how to steer, one row per element factory.
///
/// Use [`crate::lookup`] rather than scanning this directly: it also maps every `avenc_*`
/// factory to the generic FFmpeg row.
pub static ENCODERS: &[EncoderProperties] = &[
    // Software video encoders.
    // vbv-buf-capacity (ms) is re-read with the bitrate while PLAYING.
    video("x264enc", "bitrate", Kbps, true).with_vbv_ms("vbv-buf-capacity"),
    video("x265enc", "bitrate", Kbps, true),
    video("openh264enc", "bitrate", Bps, true),
    // libvpx re-reads its configuration when target-bitrate changes while running.
    // Its property is in bit/s but libvpx stores kbit/s: 1 kbit/s steps.
    video("vp8enc", "target-bitrate", Bps, true).with_granularity(1000),
    video("vp9enc", "target-bitrate", Bps, true).with_granularity(1000),
    video("av1enc", "target-bitrate", Kbps, false),
    video("svtav1enc", "target-bitrate", Kbps, false),
    video("rav1enc", "bitrate", Bps, false),
    video("theoraenc", "bitrate", Kbps, true),
    // FFmpeg encoders read `bitrate` only when they open the codec.
    video(AVENC_GENERIC, "bitrate", Bps, false),
    // Hardware video encoders.
    video("nvh264enc", "bitrate", Kbps, true),
    video("nvh265enc", "bitrate", Kbps, true),
    video("vaapih264enc", "bitrate", Kbps, true),
    video("vaapih265enc", "bitrate", Kbps, true),
    video("vah264enc", "bitrate", Kbps, true),
    video("vah265enc", "bitrate", Kbps, true),
    video("qsvh264enc", "bitrate", Kbps, true),
    video("qsvh265enc", "bitrate", Kbps, true),
    // Audio encoders.
    audio("opusenc", "bitrate", Bps, true),
    audio("voaacenc", "bitrate", Bps, false),
    audio("fdkaacenc", "bitrate", Bps, false),
    audio("lamemp3enc", "bitrate", Kbps, false),
];
