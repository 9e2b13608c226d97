//! Rung ladders and per-viewer rung selection, free of GStreamer.
//!
//! - [`Ladder`] / [`Rung`]: a ladder of resolutions, framerates and bitrates, parsed from the
//!   string form that `abrcontroller`'s `ladder` property and pipeline files use.
//! - [`viewer::RungSelector`]: one per viewer session of an output that serves a ladder
//!   encoded once (WHEP): from the viewer's feedback it decides which rung that viewer gets.
//! - [`signals`]: small helpers over congestion signals (smoothed rates, windowed minimum,
//!   loss over a window) that the decision logic is built from.

mod ladder;
pub mod signals;
pub mod viewer;

pub use ladder::{DEFAULT_LADDER, Ladder, LadderError, Rung, VIEWER_LADDER_720P30};
pub use viewer::{Decision, Direction, Observation, Reason, RungSelector, SelectorConfig};
