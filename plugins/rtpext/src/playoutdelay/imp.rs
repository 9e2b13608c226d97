//! `rtphdrextplayoutdelay`: the playout-delay RTP header extension
//! (<http://www.webrtc.org/experiments/rtp-hdrext/playout-delay>).
//!
//! Three bytes: a 12-bit minimum and a 12-bit maximum delay, both in 10 ms units. A sender
//! uses it to ask the receiver for a jitter buffer (and render delay) within these bounds;
//! min = max = 0 asks for "render as soon as decoded".
//!
//! Written on every packet: a viewer can join (or lose packets) at any moment, and four bytes
//! per packet is cheap next to the jitter buffer it saves.
//!
//! On the receiving side (a depayloader) the properties hold the last values read and are
//! notified when they change.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_rtp::subclass::prelude::*;
use std::sync::{LazyLock, Mutex};

use super::{MAX_DELAY_MS, PLAYOUT_DELAY_URI};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "rtphdrextplayoutdelay",
        gst::DebugColorFlags::empty(),
        Some("RTP playout-delay header extension"),
    )
});

const DEFAULT_MIN_DELAY_MS: u32 = 0;
/// The runner's default too: measured in Chromium, any maximum above 0 let the jitter buffer
/// shrink as far as 0/0 did without 0/0's worse 95th percentile (docs/benchmarks.md, "Playout delay").
const DEFAULT_MAX_DELAY_MS: u32 = 200;
/// Bytes of extension data.
const SIZE: usize = 3;
/// 12 bits per bound.
const MAX_UNITS: u32 = 0xfff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    min_delay_ms: u32,
    max_delay_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_delay_ms: DEFAULT_MIN_DELAY_MS,
            max_delay_ms: DEFAULT_MAX_DELAY_MS,
        }
    }
}

/// ms → 10 ms units, rounded up (asking for less than configured would be a surprise) and
/// capped at 12 bits.
fn to_units(ms: u32) -> u32 {
    ms.div_ceil(10).min(MAX_UNITS)
}

/// The three bytes for `min`/`max` (ms). A maximum below the minimum is raised to it: receivers
/// ignore an inverted range.
pub(super) fn encode(min_ms: u32, max_ms: u32) -> [u8; SIZE] {
    let min = to_units(min_ms);
    let max = to_units(max_ms).max(min);
    let packed = (min << 12) | max;
    [(packed >> 16) as u8, (packed >> 8) as u8, packed as u8]
}

/// `(min, max)` in ms from extension data, `None` when it is too short.
pub(super) fn decode(data: &[u8]) -> Option<(u32, u32)> {
    let bytes: [u8; SIZE] = data.get(..SIZE)?.try_into().ok()?;
    let packed = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
    Some(((packed >> 12) * 10, (packed & MAX_UNITS) * 10))
}

#[derive(Default, glib::Properties)]
#[properties(wrapper_type = super::PlayoutDelay)]
pub struct PlayoutDelay {
    /// Lock order: only this one lock; nothing is notified while it is held.
    #[property(
        name = "min-delay",
        nick = "Minimum playout delay",
        blurb = "Smallest delay (ms, 0-40950, sent in 10 ms steps) the receiver should hold frames \
                 before rendering them. When receiving: the last value read",
        type = u32,
        minimum = 0,
        maximum = MAX_DELAY_MS,
        default = DEFAULT_MIN_DELAY_MS,
        get = |imp: &Self| imp.settings.lock().unwrap().min_delay_ms,
        set = |imp: &Self, value| imp.settings.lock().unwrap().min_delay_ms = value,
    )]
    #[property(
        name = "max-delay",
        nick = "Maximum playout delay",
        blurb = "Largest delay (ms, 0-40950, sent in 10 ms steps; raised to min-delay if below \
                 it) the receiver may hold frames before rendering them; 0 with min-delay 0 asks \
                 for rendering as soon as decoded (worse at the 95th percentile in Chromium). \
                 When receiving: the last value read",
        type = u32,
        minimum = 0,
        maximum = MAX_DELAY_MS,
        default = DEFAULT_MAX_DELAY_MS,
        get = |imp: &Self| imp.settings.lock().unwrap().max_delay_ms,
        set = |imp: &Self, value| imp.settings.lock().unwrap().max_delay_ms = value,
    )]
    settings: Mutex<Settings>,
}

#[glib::object_subclass]
impl ObjectSubclass for PlayoutDelay {
    const NAME: &'static str = "GstRTPHeaderExtensionPlayoutDelay";
    type Type = super::PlayoutDelay;
    type ParentType = gst_rtp::RTPHeaderExtension;
}

#[glib::derived_properties]
impl ObjectImpl for PlayoutDelay {}

impl GstObjectImpl for PlayoutDelay {}

impl ElementImpl for PlayoutDelay {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "RTP playout-delay header extension",
                // GST_RTP_HDREXT_ELEMENT_CLASS: the class extensions are looked up by URI in.
                "Network/Extension/RTPHeader",
                "Asks the receiver for a jitter buffer between min-delay and max-delay \
                 (http://www.webrtc.org/experiments/rtp-hdrext/playout-delay)",
                "The hybridlive developers",
            )
        });
        Some(&*METADATA)
    }
}

impl RTPHeaderExtensionImpl for PlayoutDelay {
    const URI: &'static str = PLAYOUT_DELAY_URI;

    fn supported_flags(&self) -> gst_rtp::RTPHeaderExtensionFlags {
        gst_rtp::RTPHeaderExtensionFlags::ONE_BYTE | gst_rtp::RTPHeaderExtensionFlags::TWO_BYTE
    }

    fn max_size(&self, _input: &gst::BufferRef) -> usize {
        SIZE
    }

    fn write(
        &self,
        _input: &gst::BufferRef,
        _write_flags: gst_rtp::RTPHeaderExtensionFlags,
        _output: &gst::BufferRef,
        output_data: &mut [u8],
    ) -> Result<usize, gst::LoggableError> {
        let settings = *self.settings.lock().unwrap();
        let out = output_data.get_mut(..SIZE).ok_or_else(|| {
            gst::loggable_error!(CAT, "no room for {SIZE} bytes of playout delay")
        })?;
        out.copy_from_slice(&encode(settings.min_delay_ms, settings.max_delay_ms));
        Ok(SIZE)
    }

    fn read(
        &self,
        _read_flags: gst_rtp::RTPHeaderExtensionFlags,
        input_data: &[u8],
        _output: &mut gst::BufferRef,
    ) -> Result<(), gst::LoggableError> {
        let (min_delay_ms, max_delay_ms) = decode(input_data).ok_or_else(|| {
            gst::loggable_error!(
                CAT,
                "playout delay needs {SIZE} bytes, got {}",
                input_data.len()
            )
        })?;
        let read = Settings {
            min_delay_ms,
            max_delay_ms,
        };
        let previous = std::mem::replace(&mut *self.settings.lock().unwrap(), read);
        if previous != read {
            gst::debug!(
                CAT,
                imp = self,
                "playout delay now {min_delay_ms}-{max_delay_ms} ms"
            );
            let obj = self.obj();
            if previous.min_delay_ms != min_delay_ms {
                obj.notify_min_delay();
            }
            if previous.max_delay_ms != max_delay_ms {
                obj.notify_max_delay();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_two_12_bit_fields_of_10_ms() {
        // Example values of the specification: min 100 ms, max 1 s → 0x00a, 0x064.
        assert_eq!(encode(100, 1000), [0x00, 0xa0, 0x64]);
        assert_eq!(decode(&[0x00, 0xa0, 0x64]), Some((100, 1000)));
        assert_eq!(encode(0, 0), [0, 0, 0]);
        assert_eq!(encode(MAX_DELAY_MS, MAX_DELAY_MS), [0xff, 0xff, 0xff]);
        assert_eq!(
            decode(&[0xff, 0xff, 0xff]),
            Some((MAX_DELAY_MS, MAX_DELAY_MS))
        );
    }

    #[test]
    fn rounds_up_and_never_inverts_the_range() {
        assert_eq!(decode(&encode(15, 21)), Some((20, 30)));
        assert_eq!(decode(&encode(200, 50)), Some((200, 200)));
        assert_eq!(decode(&[0x01]), None);
    }
}
