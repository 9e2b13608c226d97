//! The hybridlive runner: reads a declarative pipeline file (TOML), validates it and runs it.
//!
//! The `hybridlive` binary wires two subcommands to this crate:
//!
//! - `hybridlive validate FILE` → [`validate`] with [`ValidateArgs`]: every mistake in the file
//!   is reported with file:line:column, the component, the key and a suggestion.
//! - `hybridlive run [FILE]` → [`run`] with [`RunArgs`]: builds the GStreamer pipelines, serves
//!   the viewer page, HLS, metrics and the control API over HTTP, and runs until SIGINT/SIGTERM
//!   (or `--duration`), finalising recordings before it exits.
//!
//! The pipeline format is described in `pipelines/README.md`.

#![warn(missing_docs)]

use std::path::{Path, PathBuf};

use anyhow::Context as _;

mod capture;
pub mod config;
use config::fragment;
mod control;
mod endpoint;
pub mod events;
mod forwarded;
mod hls;
mod llhls;
mod mp4file;
mod output;
mod probe;
mod rungs;
mod runner;
mod server;
mod srt_listener;
mod state;

pub use config::{Diagnostic, LatencyTest, Pipeline};
pub use events::{Event, EventSink, Events};
pub use output::{
    HlsOutput, JanusOutput, RecordOutput, RtmpOutput, SrtOutput, WebrtcOutput, WhipOutput,
};
pub use runner::RunHandle;
/// The HTTP connection abuse harness of the `http_connection` fuzz target.
#[cfg(feature = "fuzzing")]
pub use server::abuse as http_abuse;
/// Who a request is from behind a trusted proxy, for the `forwarded_for` fuzz target.
#[cfg(feature = "fuzzing")]
pub mod forwarded_for {
    pub use crate::forwarded::client_of_lines;
}
/// The LL-HLS playlist query parser, for the `hls_query` fuzz target.
#[cfg(feature = "fuzzing")]
pub mod hls_query {
    pub use crate::llhls::{PlaylistQuery, parse_playlist_query};
}

/// Arguments of `hybridlive validate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// Pipeline files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// Arguments of `hybridlive run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The pipeline file to run.
    #[arg(value_name = "FILE", default_value = "pipelines/workshop.toml")]
    pub file: PathBuf,
    /// Address of the HTTP server (viewer page, HLS, metrics, API); overrides `[server] http`.
    /// Port 0 picks a free port. [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Print one JSON object per line (events and a status every second) instead of a live
    /// status line.
    #[arg(long)]
    pub json: bool,
    /// Stop by itself after this many seconds, as on SIGINT (for CI and tests).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
}

/// The error `validate` and `run` return for a file with mistakes: every diagnostic, rendered.
#[derive(Debug, thiserror::Error)]
#[error("{rendered}\n{file}: {count} error(s)")]
pub struct InvalidPipeline {
    /// The file that was read.
    pub file: String,
    /// How many problems were found.
    pub count: usize,
    /// All diagnostics rendered as `file:line:column: error: ...` blocks.
    pub rendered: String,
}

/// Initialises GStreamer and registers the project's plugins statically, so neither
/// `validate` nor `run` needs `GST_PLUGIN_PATH`.
pub fn init() -> anyhow::Result<()> {
    gst::init().context("could not initialise GStreamer")?;
    static REGISTER: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        result = gstlatency::plugin_register_static()
            .and_then(|()| gstfallbackswitch::plugin_register_static())
            .and_then(|()| gstofferoverlay::plugin_register_static())
            .and_then(|()| gstabr::plugin_register_static())
            .and_then(|()| {
                gstfmp4::plugin_register_static().map_err(|e| gst::glib::bool_error!("{e}"))
            });
    });
    result.context(
        "could not register the latency, fallbackswitch, offeroverlay, abr and fmp4 plugins",
    )
}

/// Reads and validates one pipeline file. Relative paths in it (a file source's `location`,
/// a `slate`, an offer `schedule`, an output's `directory`) are read from the file's folder.
pub fn load(path: &Path) -> anyhow::Result<Pipeline> {
    init()?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new(""));
    parse_in(&path.display().to_string(), base, &text).map_err(anyhow::Error::new)
}

/// Validates pipeline text; `file` is the name used in diagnostics, and relative paths are
/// read from the working directory. GStreamer must be initialised ([`init`]) because
/// escape-hatch fragments are parsed.
pub fn parse_named(file: &str, text: &str) -> Result<Pipeline, InvalidPipeline> {
    parse_in(file, Path::new(""), text)
}

/// [`parse_named`] with relative paths read from `base`.
pub fn parse_in(file: &str, base: &Path, text: &str) -> Result<Pipeline, InvalidPipeline> {
    config::parse(text, base, &output::Registry).map_err(|diags| InvalidPipeline {
        file: file.to_string(),
        count: diags.len(),
        rendered: diags
            .iter()
            .map(|d| d.render(file, text))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// `hybridlive validate`: checks each file and reports every error; fails if any file has one.
pub fn validate(args: &ValidateArgs) -> anyhow::Result<()> {
    let mut failed = 0;
    for file in &args.files {
        match load(file) {
            Ok(p) => println!(
                "{}: ok ({} sources, {} transforms, {} encoders, {} outputs)",
                file.display(),
                p.sources.len(),
                p.transforms.len(),
                p.encoders.len(),
                p.outputs.len()
            ),
            Err(err) => {
                eprintln!("{err}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} file(s) are invalid", args.files.len());
    }
    Ok(())
}

/// `hybridlive run`: runs the pipeline until SIGINT/SIGTERM or `--duration`, then sends EOS,
/// finalises recordings and returns `Ok(())`.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let pipeline = load(&args.file)?;
    runner::run(pipeline, args)
}

/// Runs a loaded pipeline inside another tool (e.g. `hybridlive latency-test`) until
/// [`RunHandle::stop`], SIGINT/SIGTERM or `--duration`: like [`run`] but its events go to
/// `events` (the tool's own [`EventSink`], or [`Events::discard`]) instead of standard
/// output; `on_ready` gets the handle, on the calling thread, once the HTTP server serves.
pub fn run_embedded(
    pipeline: Pipeline,
    args: &RunArgs,
    events: Events,
    on_ready: impl FnOnce(RunHandle) + 'static,
) -> anyhow::Result<()> {
    runner::run_embedded(pipeline, args, events, on_ready)
}
