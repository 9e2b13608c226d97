//! Clip ranges and the recording sidecar timeline.
//!
//! Two things every part of hybridlive that cuts recordings agrees on:
//!
//! - [`range`]: how a time and a clip range are written (`HH:MM:SS[.mmm]` or seconds,
//!   `start-end` with the end exclusive, lists separated by `;` or new lines).
//! - [`sidecar`]: the JSON timeline written next to a recording (offers shown, markers set
//!   during the event) from which `hybridlive repurpose` derives clip ranges.

pub mod range;
pub mod sidecar;

pub use range::{ClipRange, RangeError, format_time, parse_range, parse_range_list, parse_time};
pub use sidecar::{
    ProposedClip, SIDECAR_SUFFIX, SidecarError, Timeline, TimelineEvent, merge_clips, sidecar_path,
};
