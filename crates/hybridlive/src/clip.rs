//! `hybridlive clip`: cut given ranges out of one recording.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use gstclip::ClipMode;
use hybridlive_timeline::{ClipRange, parse_range};

use crate::batch::{self, Job, Options, PlannedClip};
use crate::vertical::VerticalArgs;

/// Accuracy mode, as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Stream copy from the key frame at or before the start (fastest; starts early).
    Keyframe,
    /// Stream copy; the MP4 edit list starts presentation on the exact frame (lossless).
    Exact,
    /// Re-encode up to the next key frame, stream copy after.
    Smart,
    /// Re-encode the whole clip.
    Reencode,
}

impl From<Mode> for ClipMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Keyframe => ClipMode::Keyframe,
            Mode::Exact => ClipMode::Exact,
            Mode::Smart => ClipMode::Smart,
            Mode::Reencode => ClipMode::Reencode,
        }
    }
}

/// Arguments of `hybridlive clip`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recording (MP4, MKV or MPEG-TS with H.264/H.265 video).
    pub recording: PathBuf,
    /// A clip: START-END, each HH:MM:SS[.mmm] or seconds; END is exclusive. Repeatable.
    #[arg(long = "range", short = 'r', required = true, value_parser = parse_clip_range)]
    pub ranges: Vec<ClipRange>,
    /// How exactly clips start.
    #[arg(long, value_enum, default_value_t = Mode::Exact)]
    pub mode: Mode,
    /// Output folder (created if missing); clips are MP4 files plus manifest.json.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    #[command(flatten)]
    pub vertical: VerticalArgs,
}

fn parse_clip_range(s: &str) -> Result<ClipRange, String> {
    parse_range(s).map_err(|e| e.to_string())
}

/// Runs `hybridlive clip`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let clips = args
        .ranges
        .iter()
        .map(|&range| PlannedClip {
            range,
            markers: Vec::new(),
        })
        .collect();
    let opts = Options {
        mode: args.mode.into(),
        out: args.out,
        jobs: 1,
        vertical: args.vertical.vertical(),
    };
    batch::run(
        vec![Job::Ready {
            source: args.recording,
            clips,
            peaks: None,
        }],
        &opts,
    )
}
