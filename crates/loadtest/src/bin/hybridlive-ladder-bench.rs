//! A mixed audience on shaped links, the ladder against the single encode, in one run:
//!
//! ```sh
//! cargo run -p hybridlive-loadtest --bin hybridlive-ladder-bench -- [--seconds 60] [--warmup 15]
//! ```
//!
//! For each mode (`single`: one 1280x720 encode at 2500 kbit/s, today's output; `ladder`: the
//! same camera as rungs 1280x720@30:2500, 640x360@30:700, 320x180@30:200), starts `hybridlive
//! run` in a private network namespace and three headless Chromium viewers, each in a viewer
//! host of its own behind a `tc tbf` downlink of 600, 1500 and 5000 kbit/s
//! (`hybridlive_testkit::netns`). After `--warmup` seconds it measures for `--seconds`: per
//! viewer the delivered bitrate against its link, freezes per minute and seconds frozen
//! (Chromium's `freezeCount`, `totalFreezesDuration`), the glass-to-glass p95 from the capture
//! stamps, the height it decoded most; and the runner's CPU. With the ladder it then steps the
//! 5000 kbit/s link to 600 and back and times, on the wall clock, the link change → the first
//! frame of a lower rung shown, and back → the first frame of the top rung (the estimator's
//! reaction included). Figures go to the `scripts/bench` summary, the ladder's against the
//! single encode's.

use anyhow::Context as _;
use clap::Parser;
use hybridlive_bench::{Better, Figure, record};
use hybridlive_loadtest::process::Sample;
use hybridlive_loadtest::runner::{ARGS_ENV, Runner, child_main};
use hybridlive_testkit::netns::{BrowserViewer, ViewerHost, ViewerReports as _, quantile};
use hybridlive_testkit::runner_child::RunnerCommand;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    /// Seconds measured per mode, after the warm-up.
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// Seconds before measuring, once every page plays: joining, the first rung choices.
    #[arg(long, default_value_t = 15)]
    warmup: u32,
}

/// The viewers' links, kbit/s.
const LINKS: [u32; 3] = [600, 1500, 5000];

/// What one viewer got over the measured window.
#[derive(Debug, Clone, Copy, Default)]
struct ViewerFigures {
    link_kbit: u32,
    delivered_kbit: f64,
    /// Frames decoded per second: a viewer that decodes nothing has no freezes either.
    fps: f64,
    freezes_per_min: f64,
    frozen_s: f64,
    p95_ms: Option<f64>,
    height: u64,
}

/// What one mode gave: the viewers in [`LINKS`] order and the runner's CPU (% of one core);
/// for the ladder, how long the top viewer took to show a lower rung after its link fell to
/// 600 kbit/s and the top rung again after it came back (ms; `None`: not on the top rung
/// before, or no switch within the wait).
struct ModeFigures {
    viewers: Vec<ViewerFigures>,
    cpu_percent: f64,
    step_down_ms: Option<f64>,
    step_up_ms: Option<f64>,
}

/// The first size change to `height` (or below it, with `below`) a viewer showed at or after
/// `since_ms` (wall clock), waiting up to `timeout`: its wall-clock time.
fn shown_size(
    viewer: &BrowserViewer,
    since_ms: i64,
    height: u64,
    below: bool,
    timeout: Duration,
) -> Option<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = viewer
            .reports()
            .iter()
            .flat_map(|r| r["sizes"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| Some((s["utcMs"].as_f64()? as i64, s["height"].as_u64()?)))
            .find(|(at, h)| *at >= since_ms && if below { *h < height } else { *h == height });
        if let Some((at, _)) = found {
            return Some(at);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Steps `host`'s link 5000 → 600 → 5000 kbit/s: how long until `viewer` shows a rung below
/// the top, and the top again (ms), if it was on the top rung to begin with.
fn step_times(host: &ViewerHost, viewer: &BrowserViewer) -> (Option<f64>, Option<f64>) {
    let on_top = viewer
        .latest()
        .is_some_and(|r| r["frameHeight"].as_u64() == Some(720));
    if !on_top {
        println!("ladder: the 5000 kbit/s viewer is not on the top rung: no step measured");
        return (None, None);
    }
    let dropped = hybridlive_testkit::time::now_ms();
    host.set_rate_kbit(600);
    let down = shown_size(viewer, dropped, 720, true, Duration::from_secs(40));
    let risen = hybridlive_testkit::time::now_ms();
    host.set_rate_kbit(5000);
    let up = down.and_then(|_| shown_size(viewer, risen, 720, false, Duration::from_secs(90)));
    let down_ms = down.map(|at| (at - dropped) as f64);
    let up_ms = up.map(|at| (at - risen) as f64);
    let show = |ms: Option<f64>| ms.map_or("no switch".into(), |ms| format!("{ms:.0} ms"));
    println!(
        "ladder: link 5000 → 600 kbit/s: lower rung shown after {}; back to 5000: top rung \
         shown after {}",
        show(down_ms),
        show(up_ms)
    );
    (down_ms, up_ms)
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os(ARGS_ENV).is_some() {
        child_main();
    }
    let cli = Cli::parse();
    if let Some(code) = hybridlive_loadtest::reexec_in_netns(false) {
        std::process::exit(code);
    }
    let scratch =
        std::env::temp_dir().join(format!("hybridlive-ladder-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = (|| {
        let single = run_mode(&cli, &scratch, false)?;
        let ladder = run_mode(&cli, &scratch, true)?;
        Ok::<_, anyhow::Error>((single, ladder))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let (single, ladder) = result?;
    report(&single, &ladder);
    Ok(())
}

/// A 720p30 camera, encoded once (as rungs, or one rendition), with Opus, served over WHEP.
fn pipeline(dir: &Path, ladder: bool) -> anyhow::Result<std::path::PathBuf> {
    let video = match ladder {
        true => "rungs = [\"1280x720@30:2500\", \"640x360@30:700\", \"320x180@30:200\"]",
        false => "bitrate = 2500",
    };
    let file = dir.join(if ladder { "ladder.toml" } else { "single.toml" });
    std::fs::write(
        &file,
        format!(
            "[sources.cam]\ntype = \"test\"\nwidth = 1280\nheight = 720\nframerate = 30\n\n\
             [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"zerolatency\"\n\
             keyframe_interval = 1\n{video}\n\n\
             [encoders.voice]\ntype = \"opus\"\ninputs = [\"cam\"]\nbitrate = 32\n\n\
             [outputs.webrtc]\ntype = \"webrtc\"\ninputs = [\"video\", \"voice\"]\n\
             loopback_only = false\n"
        ),
    )
    .with_context(|| format!("write {}", file.display()))?;
    Ok(file)
}

fn run_mode(cli: &Cli, scratch: &Path, ladder: bool) -> anyhow::Result<ModeFigures> {
    let mode = if ladder { "ladder" } else { "single" };
    println!("{mode}: starting the runner and {} viewers", LINKS.len());
    let file = pipeline(scratch, ladder)?;
    let port = hybridlive_testkit::free_tcp_port();
    let exe = std::env::current_exe()?;
    let command = RunnerCommand::args_in_env(&exe, &file, scratch)
        .http(&format!("0.0.0.0:{port}"))
        .quiet();
    let runner = Runner::start(command, Duration::from_secs(90))?;
    let hosts: Vec<ViewerHost> = LINKS
        .iter()
        .enumerate()
        .map(|(i, kbit)| ViewerHost::new(i as u8, *kbit))
        .collect();
    // Joining, and the link step after the window (at most 130 s).
    let lifetime = cli.warmup + cli.seconds + 300;
    let viewers: Vec<BrowserViewer> = hosts
        .iter()
        .map(|h| BrowserViewer::start(h, &format!("http://{}:{port}", h.server_ip()), lifetime))
        .collect();
    // The warm-up counts from the moment every page plays (a loaded machine starts Chromium
    // slowly); a viewer whose link cannot carry the stream may never decode a frame, so what
    // counts is its first report.
    let deadline = Instant::now() + Duration::from_secs(120);
    while viewers.iter().any(|v| v.reports().is_empty()) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "a viewer's page did not start within 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(cli.warmup.into()));
    let from: Vec<usize> = viewers.iter().map(|v| v.reports().len()).collect();
    let cpu_from = Sample::read(runner.pid()).context("the runner is gone")?;
    std::thread::sleep(Duration::from_secs(cli.seconds.into()));
    let cpu_to = Sample::read(runner.pid()).context("the runner is gone")?;
    let mut figures = Vec::new();
    for ((viewer, host), from) in viewers.iter().zip(&hosts).zip(from) {
        let reports = viewer.reports();
        let (Some(first), Some(last)) = (from.checked_sub(1), reports.len().checked_sub(1)) else {
            anyhow::bail!("the {} kbit/s viewer reported nothing", host.rate_kbit());
        };
        figures.push(viewer_figures(host.rate_kbit(), &reports[first..=last]));
    }
    let cpu_percent = cpu_to.cpu_percent_since(&cpu_from);
    let (step_down_ms, step_up_ms) = match ladder {
        true => step_times(&hosts[2], &viewers[2]),
        false => (None, None),
    };
    for f in &figures {
        println!(
            "{mode}: {:>4} kbit/s link: {:.0} kbit/s delivered ({:.0} %), {:.1} fps decoded, \
             {:.1} freezes/min ({:.1} s frozen), p95 {}, {} lines",
            f.link_kbit,
            f.delivered_kbit,
            100.0 * f.delivered_kbit / f64::from(f.link_kbit),
            f.fps,
            f.freezes_per_min,
            f.frozen_s,
            f.p95_ms.map_or("–".into(), |p| format!("{p:.0} ms")),
            f.height,
        );
    }
    println!("{mode}: runner CPU {cpu_percent:.0} % of a core");
    drop(viewers);
    drop(hosts);
    let _ = runner.stop(Duration::from_secs(30));
    Ok(ModeFigures {
        viewers: figures,
        cpu_percent,
        step_down_ms,
        step_up_ms,
    })
}

/// The figures of `reports` (one a second), from the first to the last.
fn viewer_figures(link_kbit: u32, reports: &[serde_json::Value]) -> ViewerFigures {
    let n = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    let (first, last) = (&reports[0], &reports[reports.len() - 1]);
    let seconds = (n(last, "t") - n(first, "t")).max(1e-3);
    let delta = |k: &str| (n(last, k) - n(first, k)).max(0.0);
    let latencies: Vec<f64> = reports[1..]
        .iter()
        .flat_map(|r| r["latencies"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_f64())
        .collect();
    // The height shown most seconds.
    let mut heights: Vec<u64> = reports
        .iter()
        .filter_map(|r| r["frameHeight"].as_u64())
        .collect();
    heights.sort_unstable();
    let height = heights
        .chunk_by(|a, b| a == b)
        .max_by_key(|run| run.len())
        .map_or(0, |run| run[0]);
    ViewerFigures {
        link_kbit,
        delivered_kbit: delta("bytesReceived") * 8.0 / 1000.0 / seconds,
        fps: delta("framesDecoded") / seconds,
        freezes_per_min: delta("freezeCount") * 60.0 / seconds,
        frozen_s: delta("totalFreezesDuration"),
        p95_ms: quantile(&latencies, 0.95),
        height,
    }
}

fn report(single: &ModeFigures, ladder: &ModeFigures) {
    const BENCHMARK: &str = "mixed audience";
    for (s, l) in single.viewers.iter().zip(&ladder.viewers) {
        let link = l.link_kbit;
        record(&Figure {
            benchmark: BENCHMARK,
            case: &format!("{link} kbit/s viewer: delivered / link (ladder)"),
            value: l.delivered_kbit / f64::from(link),
            unit: "ratio",
            baseline: Some(("single encode", s.delivered_kbit / f64::from(link))),
            better: Better::Higher,
        });
        record(&Figure {
            benchmark: BENCHMARK,
            case: &format!("{link} kbit/s viewer: frames decoded per second (ladder)"),
            value: l.fps,
            unit: "fps",
            baseline: Some(("single encode", s.fps)),
            better: Better::Higher,
        });
        record(&Figure {
            benchmark: BENCHMARK,
            case: &format!("{link} kbit/s viewer: freezes per minute (ladder)"),
            value: l.freezes_per_min,
            unit: "1/min",
            baseline: Some(("single encode", s.freezes_per_min)),
            better: Better::Lower,
        });
        if let (Some(lp), Some(sp)) = (l.p95_ms, s.p95_ms) {
            record(&Figure {
                benchmark: BENCHMARK,
                case: &format!("{link} kbit/s viewer: glass-to-glass p95 (ladder)"),
                value: lp,
                unit: "ms",
                baseline: Some(("single encode", sp)),
                better: Better::Lower,
            });
        }
    }
    record(&Figure {
        benchmark: BENCHMARK,
        case: "runner CPU, three-rung ladder, 3 viewers (goal <= 1.5x)",
        value: ladder.cpu_percent,
        unit: "% of a core",
        baseline: Some(("single encode", single.cpu_percent)),
        better: Better::Lower,
    });
    for (case, value) in [
        (
            "link 5000 -> 600 kbit/s: first lower-rung frame shown",
            ladder.step_down_ms,
        ),
        (
            "link back to 5000 kbit/s: first top-rung frame shown",
            ladder.step_up_ms,
        ),
    ] {
        if let Some(value) = value {
            record(&Figure {
                benchmark: BENCHMARK,
                case,
                value,
                unit: "ms",
                baseline: None,
                better: Better::Lower,
            });
        }
    }
    println!(
        "CPU ladder / single encode: {:.2}",
        ladder.cpu_percent / single.cpu_percent.max(1e-3)
    );
}
