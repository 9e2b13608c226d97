//! `hybridlive latency-test [FILE]`: the pre-event check of a pipeline file.
//!
//! Runs the pipeline in this process with every source replaced by a test source of the same
//! format, opens its viewer page in headless Chromium twice — once over WebRTC (WHEP), once
//! over HLS — and measures for `--duration` seconds what a remote viewer would get:
//! glass-to-glass latency per path (from the capture stamps in the video, against the moment
//! each frame is shown), WebRTC round-trip time, data-channel interaction lag and the time
//! from joining to the first frame. Prints a table (or JSON), writes a latency histogram (SVG)
//! and fails (exit code 2) when a figure exceeds its budget (flags or `[latency_test]` in the
//! file).
//!
//! With `--url` (or `--whep`) it watches a running deployment instead, from wherever it runs
//! ([`remote`]); `latency-test merge` puts the reports of several vantage points side by side.

#![warn(missing_docs)]

mod browser;
pub mod clock;
mod merge;
mod plot;
pub mod remote;
mod stats;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Parser as _;
use hybridlive_runner::config::SourceKind;
use hybridlive_runner::{RecordOutput, WebrtcOutput};
use serde::Serialize;

pub use stats::Summary;

/// Measurement time per path when neither `--duration` nor the file sets one.
pub const DEFAULT_DURATION_S: f64 = 20.0;
/// Exit code when the run worked but a figure exceeded its budget or a path did not play.
pub const EXIT_OVER_BUDGET: u8 = 2;
/// Between starting the WebRTC viewer's browser and the HLS viewer's.
const SECOND_BROWSER_DELAY: Duration = Duration::from_secs(4);
/// How long the WebRTC output may take to accept viewers once the server is up.
const OUTPUT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the HLS output may take to list its first segments.
const HLS_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `hybridlive latency-test`.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// `merge`: the reports of several vantage points in one table.
    #[command(subcommand)]
    pub command: Option<Subcommand>,
    /// The pipeline file to test (its sources are replaced by test sources of the same format).
    #[arg(value_name = "FILE", default_value = "pipelines/workshop.toml")]
    pub file: PathBuf,
    /// Seconds to measure each path, after its first frame; overrides `[latency_test]
    /// duration`. [default: 20]
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Where to write the latency histogram (SVG).
    #[arg(long, value_name = "FILE", default_value = "latency-test.svg")]
    pub out: PathBuf,
    /// HTTP address for the pipeline's server during the test (port 0: a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub http: String,
    /// Measure one path only.
    #[arg(long, value_enum)]
    pub only: Option<ViewerPath>,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Budget: WebRTC glass-to-glass p95 in ms (overrides `[latency_test] webrtc_p95_ms`).
    #[arg(long, value_name = "MS")]
    pub webrtc_p95_ms: Option<f64>,
    /// Budget: HLS glass-to-glass p95 in ms (overrides `[latency_test] hls_p95_ms`).
    #[arg(long, value_name = "MS")]
    pub hls_p95_ms: Option<f64>,
    /// Budget: WHEP POST to first WebRTC frame shown, in ms (overrides `first_frame_ms`).
    #[arg(long, value_name = "MS")]
    pub first_frame_ms: Option<f64>,
    /// Budget: data-channel round trip p95 in ms (overrides `interaction_ms`).
    #[arg(long, value_name = "MS")]
    pub interaction_ms: Option<f64>,
    /// Watch a running deployment at this address (its viewer page, e.g. http://host:8080/)
    /// with a built-in WebRTC receiver instead of running FILE.
    #[arg(long, value_name = "URL", conflicts_with = "only")]
    pub url: Option<String>,
    /// The WHEP endpoint to watch, when it is not `/whep` under `--url`.
    #[arg(long, value_name = "URL", conflicts_with = "only")]
    pub whep: Option<String>,
    /// `--url`: also write the report as JSON to this file (for `latency-test merge`).
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// `--url`: also play the deployment's viewer page over these paths in headless Chromium
    /// (when installed), for the browser's figure. `--hls-p95-ms` budgets its HLS p95.
    #[arg(long, value_name = "PATH", value_enum, value_delimiter = ',')]
    pub chromium: Vec<ViewerPath>,
    /// `--url`: the name of this vantage point in the report [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// `--url` budget: glass-to-glass p95 in ms (the same as `--webrtc-p95-ms`).
    #[arg(long, value_name = "MS")]
    pub budget_g2g_ms: Option<f64>,
    /// `--url` budget: WHEP POST to the first decoded frame, in ms.
    #[arg(long, value_name = "MS")]
    pub budget_first_frame_ms: Option<f64>,
    /// `--url` budget: median HTTP round trip to the origin, in ms.
    #[arg(long, value_name = "MS")]
    pub budget_http_rtt_ms: Option<f64>,
    /// `--url`: glass-to-glass is not printed when the clock offset's uncertainty exceeds this
    /// fraction of the glass-to-glass budget (or of the median measured).
    #[arg(long, value_name = "FRACTION", default_value_t = remote::DEFAULT_MAX_CLOCK_UNCERTAINTY)]
    pub max_clock_uncertainty: f64,
    /// `--url`: clock exchanges with the server; the one with the lowest round trip is used.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub clock_samples: usize,
    /// Tests only: pretend this machine's clock is off by this many ms.
    #[arg(long, value_name = "MS", hide = true, allow_hyphen_values = true)]
    pub clock_skew_ms: Option<f64>,
}

/// Subcommands of `hybridlive latency-test`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Subcommand {
    /// One table of the reports (`--url --json-out`) of several vantage points; exit code 2
    /// when one of them exceeded a budget.
    Merge {
        /// The JSON reports.
        #[arg(value_name = "REPORT", required = true)]
        reports: Vec<PathBuf>,
    },
}

/// A delivery path to a viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewerPath {
    /// WHEP into the browser's WebRTC stack.
    Webrtc,
    /// HLS segments played by hls.js.
    Hls,
}

impl ViewerPath {
    pub(crate) fn label(self) -> &'static str {
        match self {
            ViewerPath::Webrtc => "WebRTC",
            ViewerPath::Hls => "HLS",
        }
    }
}

/// What one viewer page measured.
#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    /// The path the page was asked to play.
    pub path: ViewerPath,
    /// What it ended up playing (`webrtc` or `hls`; a WebRTC page that fell back says `hls`).
    pub played: String,
    /// Why the page fell back to HLS, if it did.
    pub fallback_reason: Option<String>,
    /// Glass-to-glass latency per shown frame, ms.
    pub latency_ms: Option<Summary>,
    /// Page start to the first frame shown, ms.
    pub first_frame_ms: Option<f64>,
    /// WebRTC only: WHEP POST to the first frame shown, ms.
    pub join_ms: Option<f64>,
    /// WebRTC only: frames decoded, dropped and packets lost, from `getStats()`.
    pub frames_decoded: Option<u64>,
    /// See `frames_decoded`.
    pub frames_dropped: Option<u64>,
    /// See `frames_decoded`.
    pub packets_lost: Option<i64>,
    #[serde(skip)]
    latencies: Vec<f64>,
}

/// One budget and how the run compares.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetCheck {
    /// The key, as in `[latency_test]`.
    pub name: &'static str,
    /// The budget, ms.
    pub budget_ms: f64,
    /// The measured figure, ms (`None`: not measured, which fails the budget).
    pub measured_ms: Option<f64>,
    /// Whether the measured figure is within the budget.
    pub ok: bool,
}

/// Everything `latency-test` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The pipeline file.
    pub file: PathBuf,
    /// Seconds measured per path.
    pub duration_s: f64,
    /// Sources replaced by test sources, and outputs left out of the test.
    pub changes: Vec<String>,
    /// One entry per path measured.
    pub paths: Vec<PathReport>,
    /// WebRTC ICE round-trip time (selected candidate pair), ms.
    pub webrtc_rtt_ms: Option<Summary>,
    /// Data-channel round trip ("raise hand" lag), ms.
    pub interaction_ms: Option<Summary>,
    /// The budgets checked.
    pub budgets: Vec<BudgetCheck>,
    /// Paths that did not play as asked.
    pub failures: Vec<String>,
    /// The histogram written.
    pub plot: Option<PathBuf>,
}

impl Report {
    /// No budget exceeded and every path played as asked.
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.budgets.iter().all(|b| b.ok)
    }

    fn path(&self, path: ViewerPath) -> Option<&PathReport> {
        self.paths.iter().find(|p| p.path == path)
    }
}

/// `hybridlive latency-test`: runs the test, prints the report; `Ok(EXIT_OVER_BUDGET)` when a
/// budget is exceeded or a path did not play.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(Subcommand::Merge { reports }) = &args.command {
        return merge::run(reports);
    }
    if args.url.is_some() || args.whep.is_some() {
        return remote::run(&args);
    }
    let report = measure(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    if report.passed() {
        return Ok(ExitCode::SUCCESS);
    }
    for failure in &report.failures {
        eprintln!("latency-test: {failure}");
    }
    report_exceeded(&report.budgets);
    Ok(ExitCode::from(EXIT_OVER_BUDGET))
}

/// Names on stderr every budget exceeded.
fn report_exceeded(budgets: &[BudgetCheck]) {
    for b in budgets.iter().filter(|b| !b.ok) {
        match b.measured_ms {
            Some(ms) => eprintln!(
                "latency-test: over budget: {} = {} ms, measured {ms:.1} ms",
                b.name, b.budget_ms
            ),
            None => eprintln!(
                "latency-test: over budget: {} = {} ms, not measured",
                b.name, b.budget_ms
            ),
        }
    }
}

/// Runs the pipeline and the browser, and returns what was measured (writing the plot).
pub fn measure(args: &Args) -> anyhow::Result<Report> {
    let mut pipeline = hybridlive_runner::load(&args.file)?;
    let file_budgets = pipeline.latency_test;
    let duration = args
        .duration
        .or(file_budgets.duration)
        .unwrap_or(DEFAULT_DURATION_S);
    if !(duration > 0.0 && duration <= 3600.0) {
        bail!("--duration must be between 0 and 3600 seconds, not {duration}");
    }
    let scratch =
        std::env::temp_dir().join(format!("hybridlive-latency-test-{}", std::process::id()));
    let changes = prepare(&mut pipeline, &scratch);
    let has = |kind: &str| pipeline.outputs.iter().any(|o| o.kind.type_name() == kind);
    let mut paths = Vec::new();
    if has("webrtc") && args.only != Some(ViewerPath::Hls) {
        paths.push(ViewerPath::Webrtc);
    }
    if has("hls") && args.only != Some(ViewerPath::Webrtc) {
        paths.push(ViewerPath::Hls);
    }
    if paths.is_empty() {
        bail!(
            "{}: no {} output to measure",
            args.file.display(),
            match args.only {
                Some(ViewerPath::Webrtc) => "webrtc",
                Some(ViewerPath::Hls) => "hls",
                None => "webrtc or hls",
            }
        );
    }

    let measured_paths = paths.clone();
    let pages = run_prepared(pipeline, &args.file, &args.http, &scratch, move |url| {
        open_viewers(url, &measured_paths, duration)
    })??;

    let mut paths_report = Vec::new();
    let (mut rtt, mut interaction) = (Vec::new(), Vec::new());
    for (path, page) in paths.iter().zip(&pages) {
        let numbers = |key: &str| -> Vec<f64> {
            page[key]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
                .unwrap_or_default()
        };
        let latencies = numbers("latencies");
        if *path == ViewerPath::Webrtc {
            rtt = numbers("rttMs");
            interaction = numbers("interactionMs");
        }
        paths_report.push(PathReport {
            path: *path,
            played: page["mode"].as_str().unwrap_or("nothing").to_string(),
            fallback_reason: page["fallbackReason"].as_str().map(str::to_string),
            latency_ms: Summary::of(&latencies),
            first_frame_ms: page["firstFrameMs"].as_f64(),
            join_ms: page["joinMs"].as_f64(),
            frames_decoded: page["framesDecoded"].as_u64(),
            frames_dropped: page["framesDropped"].as_u64(),
            packets_lost: page["packetsLost"].as_i64(),
            latencies,
        });
    }

    let mut failures = Vec::new();
    for p in &paths_report {
        let wanted = match p.path {
            ViewerPath::Webrtc => "webrtc",
            ViewerPath::Hls => "hls",
        };
        if p.played != wanted {
            failures.push(format!(
                "{} did not play: the page played {}{}",
                p.path.label(),
                p.played,
                p.fallback_reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
        } else if p.latency_ms.is_none() {
            failures.push(format!(
                "{}: no frame carried a readable capture stamp",
                p.path.label()
            ));
        }
    }
    let mut report = Report {
        file: args.file.clone(),
        duration_s: duration,
        changes,
        paths: paths_report,
        webrtc_rtt_ms: Summary::of(&rtt),
        interaction_ms: Summary::of(&interaction),
        budgets: Vec::new(),
        failures,
        plot: None,
    };
    report.budgets = check_budgets(&report, args, &file_budgets);

    let series: Vec<plot::Series> = report
        .paths
        .iter()
        .filter_map(|p| {
            Some(plot::Series {
                name: p.path.label(),
                values: &p.latencies,
                summary: p.latency_ms?,
            })
        })
        .collect();
    if !series.is_empty() {
        let title = format!(
            "hybridlive latency-test: {} ({} s per path)",
            args.file.display(),
            duration
        );
        std::fs::write(&args.out, plot::histogram_svg(&title, &series))
            .with_context(|| format!("cannot write {}", args.out.display()))?;
        report.plot = Some(args.out.clone());
    }
    Ok(report)
}

/// Runs `file` as `latency-test` does (test sources, loopback WebRTC, scratch recordings, no
/// pushes) with its HTTP server on `http`, calls `job` with the viewer page's URL on a thread
/// of its own once it serves, and stops the pipeline when `job` returns. For benchmarks and
/// other measurements that drive the page themselves.
pub fn with_pipeline<T: Send + 'static>(
    file: &Path,
    http: &str,
    job: impl FnOnce(&str) -> T + Send + 'static,
) -> anyhow::Result<T> {
    let mut pipeline = hybridlive_runner::load(file)?;
    let scratch =
        std::env::temp_dir().join(format!("hybridlive-latency-test-{}", std::process::id()));
    prepare(&mut pipeline, &scratch);
    run_prepared(pipeline, file, http, &scratch, job)
}

fn run_prepared<T: Send + 'static>(
    pipeline: hybridlive_runner::Pipeline,
    file: &Path,
    http: &str,
    scratch: &Path,
    job: impl FnOnce(&str) -> T + Send + 'static,
) -> anyhow::Result<T> {
    let run_args = RunCli::try_parse_from([
        "run".as_ref(),
        file.as_os_str(),
        "--http".as_ref(),
        http.as_ref(),
    ])
    .map_err(|e| anyhow!("{e}"))?
    .run;
    let serves_webrtc = pipeline
        .outputs
        .iter()
        .any(|o| o.kind.type_name() == "webrtc");
    let (tx, rx) = mpsc::channel();
    let events = hybridlive_runner::Events::discard();
    let ran = hybridlive_runner::run_embedded(pipeline, &run_args, events, move |handle| {
        std::thread::spawn(move || {
            // Outputs start after the server: a page opened now could find no WHEP yet and
            // fall back to HLS.
            let host = handle
                .viewer_url()
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            if serves_webrtc {
                let deadline = Instant::now() + OUTPUT_READY_TIMEOUT;
                while http_request(&host, "OPTIONS", "/whep")
                    .is_none_or(|(status, _)| status != 204)
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let _ = tx.send(job(handle.viewer_url()));
            handle.stop();
        });
    });
    let _ = std::fs::remove_dir_all(scratch);
    ran?;
    rx.recv()
        .map_err(|_| anyhow!("the pipeline stopped before the measurement finished"))
}

/// Opens `url` in headless Chromium, waits until the JS expression `wait` is true, and returns
/// the value of the JS expression `result` (may be a promise).
pub fn browse(
    url: &str,
    timeout: Duration,
    wait: &str,
    result: &str,
) -> anyhow::Result<serde_json::Value> {
    browser::open_page_with(url, timeout.as_secs_f64(), wait, result)
}

/// `hybridlive run`'s own argument parser, so the runner's defaults apply to every option.
#[derive(clap::Parser)]
struct RunCli {
    #[command(flatten)]
    run: hybridlive_runner::RunArgs,
}

/// Makes the pipeline testable on this machine: test sources of the same format instead of
/// cameras and contributions, WebRTC on loopback (the viewer is local), recordings into a
/// scratch folder, no pushes to platforms. Returns what was changed, for the report.
fn prepare(pipeline: &mut hybridlive_runner::Pipeline, scratch: &Path) -> Vec<String> {
    let mut changes = Vec::new();
    for source in &mut pipeline.sources {
        if !matches!(source.kind, SourceKind::Test { .. }) {
            changes.push(format!(
                "source `{}` replaced by a test source ({}x{}@{})",
                source.name, source.video.width, source.video.height, source.video.framerate
            ));
            source.kind = SourceKind::Test {
                pattern: "smpte".into(),
                clock: true,
                tone_hz: 440.0,
                microphone: None,
            };
        }
    }
    pipeline.outputs.retain(|o| match o.kind.type_name() {
        "srt" | "rtmp" | "whip" | "janus" => {
            changes.push(format!(
                "output `{}` left out (it pushes elsewhere)",
                o.name
            ));
            false
        }
        _ => true,
    });
    for output in &mut pipeline.outputs {
        let settings = output.kind.as_any_mut();
        if let Some(webrtc) = settings.downcast_mut::<WebrtcOutput>() {
            webrtc.loopback_only = true;
        } else if let Some(record) = settings.downcast_mut::<RecordOutput>() {
            record.directory = scratch.join(&output.name);
            changes.push(format!(
                "output `{}` records into a scratch folder, deleted afterwards",
                output.name
            ));
        }
    }
    changes
}

/// Opens the viewer page once per path in one Chromium and returns each page's result.
fn open_viewers(
    base: &str,
    paths: &[ViewerPath],
    duration: f64,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let host = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    if paths.contains(&ViewerPath::Hls) {
        // The HLS viewer joins a running stream, as a real one would: wait for segments.
        wait_for_segments(&host, 2)?;
    }
    let urls: Vec<String> = paths
        .iter()
        .map(|p| match p {
            ViewerPath::Webrtc => format!("{base}?mode=webrtc&measure={duration}"),
            ViewerPath::Hls => format!("{base}?mode=hls&measure={duration}"),
        })
        .collect();
    // One browser per viewer: with both players in one Chromium, the WebRTC page presented
    // about one frame in five (measured with 640x360 WebRTC and HLS side by side).
    // First frames take seconds at most (HLS: a few segments); generous for loaded machines.
    // The HLS browser starts once the WebRTC viewer has joined, so that its start-up does not
    // weigh on the WebRTC first-frame time.
    let browsers: Vec<_> = urls
        .into_iter()
        .enumerate()
        .map(|(i, url)| {
            std::thread::spawn(move || {
                std::thread::sleep(SECOND_BROWSER_DELAY * i as u32);
                browser::open_pages(&[url], duration + 90.0)
            })
        })
        .collect();
    let mut pages = Vec::new();
    for browser in browsers {
        let page = browser
            .join()
            .map_err(|_| anyhow!("the browser thread panicked"))??;
        pages.extend(page);
    }
    Ok(pages)
}

fn wait_for_segments(host: &str, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + HLS_READY_TIMEOUT;
    loop {
        let listed = http_get(host, "/hls/live.m3u8")
            .map(|body| body.lines().filter(|l| l.starts_with("#EXTINF")).count())
            .unwrap_or(0);
        if listed >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the HLS output listed {listed} segment(s) after {} s",
                HLS_READY_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The body of a `200` answer to `GET path`, or `None`.
fn http_get(host: &str, path: &str) -> Option<String> {
    http_request(host, "GET", path)
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
}

/// Status and body of a bodiless request, or `None` when there was no HTTP answer.
fn http_request(host: &str, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn check_budgets(
    report: &Report,
    args: &Args,
    file: &hybridlive_runner::LatencyTest,
) -> Vec<BudgetCheck> {
    let webrtc = report.path(ViewerPath::Webrtc);
    let hls = report.path(ViewerPath::Hls);
    let p95 = |p: Option<&PathReport>| p.and_then(|p| p.latency_ms).map(|s| s.p95);
    let candidates = [
        (
            "webrtc_p95_ms",
            args.webrtc_p95_ms.or(file.webrtc_p95_ms),
            webrtc.is_some(),
            p95(webrtc),
        ),
        (
            "hls_p95_ms",
            args.hls_p95_ms.or(file.hls_p95_ms),
            hls.is_some(),
            p95(hls),
        ),
        (
            "first_frame_ms",
            args.first_frame_ms.or(file.first_frame_ms),
            webrtc.is_some(),
            webrtc.and_then(|p| p.join_ms),
        ),
        (
            "interaction_ms",
            args.interaction_ms.or(file.interaction_ms),
            webrtc.is_some(),
            report.interaction_ms.map(|s| s.p95),
        ),
    ];
    candidates
        .into_iter()
        .filter_map(|(name, budget, measured_path, measured)| {
            let budget_ms = budget?;
            // A budget on a path this run did not measure (`--only`) is not checked.
            measured_path.then(|| BudgetCheck {
                name,
                budget_ms,
                measured_ms: measured,
                ok: measured.is_some_and(|m| m <= budget_ms),
            })
        })
        .collect()
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"))
}

/// The human-readable report.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "hybridlive latency-test: {} ({} s per path)\n",
        report.file.display(),
        report.duration_s
    );
    for change in &report.changes {
        out += &format!("  note: {change}\n");
    }
    out += &format!(
        "\n{:<8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>13} {:>12}\n",
        "path", "frames", "p50", "p95", "p99", "max", "first frame", "POST→frame"
    );
    for p in &report.paths {
        let s = p.latency_ms;
        out += &format!(
            "{:<8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>13} {:>12}\n",
            p.path.label(),
            s.map_or(0, |s| s.count),
            ms(s.map(|s| s.p50)),
            ms(s.map(|s| s.p95)),
            ms(s.map(|s| s.p99)),
            ms(s.map(|s| s.max)),
            ms(p.first_frame_ms),
            ms(p.join_ms),
        );
    }
    out += "\n";
    if let Some(p) = report.path(ViewerPath::Webrtc) {
        out += &format!(
            "WebRTC RTT (ICE)          p50 {}  p95 {}\n",
            ms(report.webrtc_rtt_ms.map(|s| s.p50)),
            ms(report.webrtc_rtt_ms.map(|s| s.p95))
        );
        out += &format!(
            "interaction lag (data channel round trip)  p50 {}  p95 {}  ({} messages)\n",
            ms(report.interaction_ms.map(|s| s.p50)),
            ms(report.interaction_ms.map(|s| s.p95)),
            report.interaction_ms.map_or(0, |s| s.count)
        );
        if let Some(decoded) = p.frames_decoded {
            out += &format!(
                "WebRTC frames decoded {decoded}, dropped {}, packets lost {}\n",
                p.frames_dropped.unwrap_or(0),
                p.packets_lost.unwrap_or(0)
            );
        }
    }
    for failure in &report.failures {
        out += &format!("FAILED: {failure}\n");
    }
    for b in &report.budgets {
        out += &format!(
            "budget {:<15} {:>9} ms  measured {:>11}  {}\n",
            b.name,
            b.budget_ms,
            ms(b.measured_ms),
            if b.ok { "ok" } else { "EXCEEDED" }
        );
    }
    if let Some(plot) = &report.plot {
        out += &format!("histogram: {}\n", plot.display());
    }
    out
}
