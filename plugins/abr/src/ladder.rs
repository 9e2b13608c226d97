//! The ladder of rungs: which resolution and framerate go with which bitrate.
//!
//! The ladder lives in `hybridlive-ladder` (shared with the per-viewer rung selection of the
//! WHEP output); re-exported here so that `gstabr::ladder::Ladder` keeps working.

pub use hybridlive_ladder::{DEFAULT_LADDER, Ladder, LadderError, Rung};
