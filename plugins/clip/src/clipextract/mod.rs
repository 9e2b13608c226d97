//! `clipextract`: cuts clips out of encoded streams.
//!
//! Sits after a demuxer and parsers (H.264 / H.265 with `alignment=au`, AAC, Opus). Request a
//! `sink_%u` pad per stream; each gets a `src_%u` pad with the same number. The `ranges`
//! (and/or `ranges-file`) property lists the clips; only those ranges are output.
//!
//! # What downstream sees, per clip
//! 1. A custom downstream serialized event named [`CLIP_START_EVENT`] (`clip-start`) with
//!    `index` (u32), `start`/`end` (u64 ns, the requested range in the source's stream time)
//!    and `mode` (string).
//! 2. Caps (again when they change, e.g. re-encoded clips), then a TIME segment whose `start`
//!    is the clip's first presented frame: running time 0 is that frame. Buffer timestamps are
//!    clip-relative and never negative; in `exact`/`smart`/`reencode` frames before `start`
//!    (the key frame a decoder needs) are only there to be decoded, and `stop` is the requested
//!    end, so decoders drop them and `qtmux`/`mp4mux` write an edit list.
//! 3. The clip's buffers.
//! 4. A custom downstream serialized event named [`CLIP_END_EVENT`] (`clip-end`) with `index`.
//!
//! After the last clip every src pad gets EOS and upstream gets `GST_FLOW_EOS`: a pipeline
//! that only wants the clips stops reading the recording there. A bin writing one file per
//! clip finalizes its muxer on `clip-end` (or EOS) and opens the next file on `clip-start`.
//!
//! The element posts `clip-started` and `clip-finished` element messages (`index`, `start`,
//! `end`, and for `clip-finished` the frame counts) and exposes totals in `stats`.

use gst::glib;
use gst::prelude::*;

mod avc;
mod dts;
mod imp;
mod param_sets;
pub(crate) mod selector;
mod transcode;

/// Name of the custom downstream event that precedes each clip's segment.
pub const CLIP_START_EVENT: &str = "clip-start";
/// Name of the custom downstream event that follows each clip's last buffer.
pub const CLIP_END_EVENT: &str = "clip-end";

/// How precisely a clip starts, and what it costs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClipExtractMode")]
pub enum ClipMode {
    /// Stream copy from the key frame at or before the start: fastest, starts early.
    #[enum_value(
        name = "Keyframe: stream copy from the key frame at or before the start",
        nick = "keyframe"
    )]
    Keyframe,
    /// Stream copy plus a segment start (edit list in MP4): lossless, exact where honored.
    #[default]
    #[enum_value(
        name = "Exact: stream copy, segment/edit list hides frames before the start",
        nick = "exact"
    )]
    Exact,
    /// Re-encode from the start to the next key frame, stream copy after.
    #[enum_value(
        name = "Smart: re-encode up to the next key frame, then stream copy",
        nick = "smart"
    )]
    Smart,
    /// Re-encode the whole clip.
    #[enum_value(name = "Reencode: decode and encode the whole clip", nick = "reencode")]
    Reencode,
}

glib::wrapper! {
    /// The `clipextract` element.
    pub struct ClipExtract(ObjectSubclass<imp::ClipExtract>) @extends gst::Element, gst::Object;
}

/// Registers `clipextract` with `plugin`.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "clipextract",
        gst::Rank::NONE,
        ClipExtract::static_type(),
    )
}
