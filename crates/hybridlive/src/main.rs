//! `hybridlive`: the command line of the hybridlive tools: `run` and `validate` (the runner,
//! in `hybridlive-runner`), `clip` and `repurpose`.
//!
//! One module per subcommand; a new subcommand adds a variant to [`Command`] and a module with
//! an `Args` struct and a `run(args) -> anyhow::Result<ExitCode>`.

mod batch;
mod clip;
mod cutter;
mod manifest;
mod mp4edit;
mod peaks;
mod progress;
mod readers;
mod repurpose;
mod vertical;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "hybridlive",
    version,
    about = "Hybrid live classes: tools around the pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline file (default pipelines/workshop.toml) until Ctrl-C; prints the viewer URL.
    Run(hybridlive_runner::RunArgs),
    /// Check pipeline files and report every error with file:line:column.
    Validate(hybridlive_runner::ValidateArgs),
    /// Cut clips out of one recording.
    Clip(clip::Args),
    /// Cut the moments worth sharing out of many recordings, from their sidecar timelines.
    ///
    /// A recording whose sidecar lists no markers or offers has nothing to cut: it is reported
    /// as skipped (in the summary and the manifest's `skipped`), not as an error. To cut such a
    /// recording anyway, add `--peaks N` (its N loudest moments) or cut a range with
    /// `hybridlive clip FILE --range START-END`.
    Repurpose(repurpose::Args),
    /// Pre-event check: run a pipeline on test sources, measure glass-to-glass latency in
    /// headless Chromium over WebRTC and HLS, and fail when a budget is exceeded; with `--url`,
    /// watch a running deployment from here; `merge` puts several vantage points side by side.
    // Boxed: its many flags would make every other command as large.
    LatencyTest(Box<hybridlive_latency_test::Args>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => hybridlive_runner::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Validate(args) => hybridlive_runner::validate(&args).map(|()| ExitCode::SUCCESS),
        Command::Clip(args) => clip::run(args),
        Command::Repurpose(args) => repurpose::run(args),
        Command::LatencyTest(args) => hybridlive_latency_test::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Initializes GStreamer and registers the plugins this binary carries.
pub(crate) fn init_gstreamer() -> anyhow::Result<()> {
    gst::init()?;
    gstclip::plugin_register_static()?;
    Ok(())
}
