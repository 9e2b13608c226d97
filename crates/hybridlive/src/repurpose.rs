//! `hybridlive repurpose`: cut the moments worth sharing out of many recordings, using the
//! sidecar timeline next to each (see `hybridlive_timeline::sidecar`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hybridlive_timeline::{ClipRange, Timeline, parse_time, sidecar_path};

use crate::batch::{self, Job, Options, PlannedClip, default_jobs, is_recording};
use crate::clip::Mode;
use crate::peaks::PeakOptions;
use crate::vertical::VerticalArgs;

/// Arguments of `hybridlive repurpose`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Recordings, or folders searched (not recursively) for recordings.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder (created if missing); clips are MP4 files plus manifest.json.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    #[command(flatten)]
    pub vertical: VerticalArgs,
    /// How exactly clips start.
    #[arg(long, value_enum, default_value_t = Mode::Smart)]
    pub mode: Mode,
    /// Time kept before each event (HH:MM:SS[.mmm] or seconds).
    #[arg(long, default_value = "5", value_parser = parse_duration)]
    pub lead_in: u64,
    /// Time kept after each event ends.
    #[arg(long, default_value = "10", value_parser = parse_duration)]
    pub lead_out: u64,
    /// Also cut around the N loudest moments of the audio (applause, laughter): EBU R128
    /// momentary loudness well above the programme loudness. Clips that overlap timeline
    /// clips are merged with them. A recording without a sidecar is then cut on its peaks.
    #[arg(long, value_name = "N")]
    pub peaks: Option<usize>,
    /// How far above the programme (integrated) loudness a peak must reach, in LU.
    #[arg(long, default_value_t = 10.0, value_name = "LU", requires = "peaks")]
    pub peak_threshold: f64,
    /// Time kept before a loudness peak (the moment people reacted to comes first).
    #[arg(long, default_value = "8", value_parser = parse_duration, requires = "peaks")]
    pub peak_lead_in: u64,
    /// Time kept after a loudness peak ends.
    #[arg(long, default_value = "2", value_parser = parse_duration, requires = "peaks")]
    pub peak_lead_out: u64,
    /// Recordings cut at the same time (default: the number of cores).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
}

fn parse_duration(s: &str) -> Result<u64, String> {
    parse_time(s).map_err(|e| e.to_string())
}

/// Expands folders into the recordings they hold, sorted; files are kept as given.
fn expand(inputs: &[PathBuf]) -> Vec<Result<PathBuf, (PathBuf, String)>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            match std::fs::read_dir(input) {
                Ok(entries) => {
                    let mut files: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file() && is_recording(p))
                        .collect();
                    files.sort();
                    if files.is_empty() {
                        out.push(Err((
                            input.clone(),
                            "folder holds no recordings".to_owned(),
                        )));
                    }
                    out.extend(files.into_iter().map(Ok));
                }
                Err(e) => out.push(Err((input.clone(), format!("cannot read folder: {e}")))),
            }
        } else if input.is_file() {
            out.push(Ok(input.clone()));
        } else {
            out.push(Err((input.clone(), "no such file or folder".to_owned())));
        }
    }
    out
}

fn plan(recording: &Path, lead_in: u64, lead_out: u64, peaks: Option<PeakOptions>) -> Job {
    let sidecar = sidecar_path(recording);
    if !sidecar.is_file() && peaks.is_some() {
        return Job::Ready {
            source: recording.to_owned(),
            clips: Vec::new(),
            peaks,
        };
    }
    if !sidecar.is_file() {
        return Job::Failed {
            source: recording.to_owned(),
            reason: format!("missing sidecar timeline {}", sidecar.display()),
        };
    }
    match Timeline::read(&sidecar) {
        Ok(t) => {
            // A marker near the end must not name (nor list in the manifest) a clip ending
            // after the recording does: its lead-out is cut at the recording's end.
            let length = media_duration(recording);
            let clips: Vec<PlannedClip> = t
                .clips(lead_in, lead_out)
                .into_iter()
                .map(|c| {
                    // A clip starting past the length GStreamer reads (a truncated file) is
                    // left whole: the cutter then says what is wrong with the recording.
                    let range = match length {
                        Some(len) if c.range.start < len => {
                            ClipRange::new(c.range.start, c.range.end.min(len)).unwrap_or(c.range)
                        }
                        _ => c.range,
                    };
                    PlannedClip {
                        range,
                        markers: c.markers,
                    }
                })
                .collect();
            if clips.is_empty() && peaks.is_none() {
                return Job::Skipped {
                    source: recording.to_owned(),
                    reason: format!(
                        "nothing to cut: sidecar {} lists no offers or markers (cut it on its \
                         loudness peaks with --peaks, or a range with `hybridlive clip`)",
                        sidecar.display()
                    ),
                };
            }
            Job::Ready {
                source: recording.to_owned(),
                clips,
                peaks,
            }
        }
        Err(e) => Job::Failed {
            source: recording.to_owned(),
            reason: e.to_string(),
        },
    }
}

/// How long `recording` plays, when GStreamer can tell; a file it cannot read is reported by
/// the cutter, with the reason.
fn media_duration(recording: &Path) -> Option<u64> {
    gst::init().ok()?;
    let uri = glib::filename_to_uri(std::fs::canonicalize(recording).ok()?, None).ok()?;
    let discoverer = gst_pbutils::Discoverer::new(gst::ClockTime::from_seconds(10)).ok()?;
    let info = discoverer.discover_uri(&uri).ok()?;
    info.duration().map(gst::ClockTime::nseconds)
}

/// Runs `hybridlive repurpose`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !(args.peak_threshold.is_finite()) {
        anyhow::bail!("--peak-threshold must be a number of LU");
    }
    let peaks = args.peaks.map(|count| PeakOptions {
        count,
        threshold: args.peak_threshold,
        lead_in: args.peak_lead_in,
        lead_out: args.peak_lead_out,
    });
    let jobs = expand(&args.inputs)
        .into_iter()
        .map(|r| match r {
            Ok(rec) => plan(&rec, args.lead_in, args.lead_out, peaks),
            Err((source, reason)) => Job::Failed { source, reason },
        })
        .collect();
    let opts = Options {
        mode: args.mode.into(),
        out: args.out,
        jobs: args.jobs.unwrap_or_else(default_jobs),
        vertical: args.vertical.vertical(),
    };
    batch::run(jobs, &opts)
}
