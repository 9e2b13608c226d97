//! A long run of a pipeline with viewers attached, sampled every few seconds:
//!
//! ```sh
//! scripts/soak            # 30 minutes of pipelines/workshop.toml, results in docs/soak/
//! ```
//!
//! Starts `hybridlive run FILE` (the binary given) in a private network namespace with a veth
//! pair (so a pipeline serving real interfaces runs unchanged and nothing leaves the
//! machine), attaches WebRTC viewers that decode and measure glass-to-glass latency from the
//! capture stamps, polls HLS like a player, and samples the runner's RSS, CPU, threads and file
//! descriptors. Writes `soak.csv`, `soak.svg` and `summary.json` and prints the summary.

use anyhow::{Context as _, bail};
use clap::Parser;
use hybridlive_loadtest::plot::{Panel, Series, svg};
use hybridlive_loadtest::process::Sample;
use hybridlive_loadtest::runner::{Runner, http};
use hybridlive_loadtest::viewer::{Viewer, ViewerOptions};
use hybridlive_testkit::runner_child::RunnerCommand;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    /// The `hybridlive` binary to run (a release build for figures worth quoting).
    #[arg(long)]
    hybridlive: PathBuf,
    /// Pipeline file.
    #[arg(long, default_value = "pipelines/workshop.toml")]
    pipeline: PathBuf,
    /// How long to run, seconds.
    #[arg(long, default_value_t = 1800.0)]
    duration: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// WebRTC viewers.
    #[arg(long, default_value_t = 3)]
    viewers: usize,
    /// Where soak.csv, soak.svg and summary.json go.
    #[arg(long, default_value = "soak-out")]
    out: PathBuf,
}

const WINDOW: Duration = Duration::from_secs(300);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(code) = hybridlive_loadtest::reexec_in_netns(true) {
        std::process::exit(code);
    }
    hybridlive_loadtest::init()?;
    std::fs::create_dir_all(&cli.out)?;
    let pipeline = cli
        .pipeline
        .canonicalize()
        .with_context(|| format!("{}", cli.pipeline.display()))?;
    let hybridlive = cli
        .hybridlive
        .canonicalize()
        .with_context(|| format!("{}", cli.hybridlive.display()))?;
    let scratch = std::env::temp_dir().join(format!("hybridlive-soak-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = soak(&cli, &hybridlive, &pipeline, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

struct Row {
    t: f64,
    rss_mb: f64,
    cpu_pct: f64,
    threads: usize,
    fds: usize,
    sessions: f64,
    frames: u64,
    p50: f64,
    p95: f64,
    hls_segments: u64,
    hls_errors: u64,
    /// The machine's 1-minute load average: latency spikes line up with it on a shared host.
    load1: f64,
}

fn soak(
    cli: &Cli,
    hybridlive: &std::path::Path,
    pipeline: &std::path::Path,
    scratch: &std::path::Path,
) -> anyhow::Result<()> {
    let mut runner = Runner::start(
        RunnerCommand::binary(hybridlive, pipeline, scratch),
        Duration::from_secs(60),
    )?;
    eprintln!("runner pid {} at {}", runner.pid(), runner.addr());
    let options = ViewerOptions {
        loopback: false,
        decode: true,
        meter_windows: vec![Duration::from_secs_f64(cli.interval), WINDOW],
        audio: true,
        twcc: false,
    };
    let mut viewers = Vec::new();
    for _ in 0..cli.viewers {
        let viewer = Viewer::new(&options)?;
        let offer = viewer.offer(Duration::from_secs(5))?;
        let created = runner.request("POST", "/whep", Some("application/sdp"), offer.as_bytes())?;
        if created.status != 201 {
            bail!("offer refused: {} {}", created.status, created.text());
        }
        viewer.accept(&created.text())?;
        if !viewer.wait_video(30, Duration::from_secs(30)) {
            bail!("a viewer received no video within 30 s");
        }
        viewers.push(viewer);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (segments, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let poller = {
        let (stop, segments, errors, addr) = (
            stop.clone(),
            segments.clone(),
            errors.clone(),
            runner.addr().to_string(),
        );
        std::thread::spawn(move || poll_hls(&addr, &stop, &segments, &errors))
    };

    let csv_path = cli.out.join("soak.csv");
    let mut csv = std::io::BufWriter::new(std::fs::File::create(&csv_path)?);
    writeln!(
        csv,
        "t_s,rss_mb,cpu_pct,threads,fds,webrtc_sessions,frames_decoded,latency_p50_ms,latency_p95_ms,hls_segments,hls_errors,load1"
    )?;
    let started = Instant::now();
    let first_sample = Sample::read(runner.pid()).context("runner gone")?;
    let mut previous = first_sample;
    let mut rows: Vec<Row> = Vec::new();
    let mut first_window_p95 = None;
    let interval = Duration::from_secs_f64(cli.interval);
    let mut next = started + interval;
    while started.elapsed().as_secs_f64() < cli.duration {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += interval;
        if !runner.alive() {
            bail!("the runner exited during the soak");
        }
        let sample = Sample::read(runner.pid()).context("runner gone")?;
        let t = started.elapsed().as_secs_f64();
        let frames: u64 = viewers.iter().map(Viewer::video_units).sum();
        let (p50, p95) = latency(&viewers, 0);
        let sessions = runner
            .metric("hybridlive_webrtc_viewers")
            .ok()
            .flatten()
            .unwrap_or(f64::NAN);
        let row = Row {
            t,
            rss_mb: sample.rss_mb(),
            cpu_pct: sample.cpu_percent_since(&previous),
            threads: sample.threads,
            fds: sample.fds,
            sessions,
            frames,
            p50,
            p95,
            hls_segments: segments.load(Ordering::Relaxed),
            hls_errors: errors.load(Ordering::Relaxed),
            load1: load_average(),
        };
        writeln!(
            csv,
            "{:.1},{:.2},{:.1},{},{},{},{},{:.1},{:.1},{},{},{:.2}",
            row.t,
            row.rss_mb,
            row.cpu_pct,
            row.threads,
            row.fds,
            row.sessions,
            row.frames,
            row.p50,
            row.p95,
            row.hls_segments,
            row.hls_errors,
            row.load1
        )?;
        csv.flush()?;
        eprintln!(
            "t={:>6.0}s rss={:.1} MB cpu={:.0}% threads={} fds={} sessions={} latency p50={:.0} p95={:.0} ms hls={}/{} err load={:.1}",
            row.t,
            row.rss_mb,
            row.cpu_pct,
            row.threads,
            row.fds,
            row.sessions,
            row.p50,
            row.p95,
            row.hls_segments,
            row.hls_errors,
            row.load1
        );
        rows.push(row);
        previous = sample;
        if first_window_p95.is_none() && started.elapsed() >= WINDOW {
            first_window_p95 = Some(latency(&viewers, 1));
        }
    }
    let last_window_p95 = latency(&viewers, 1);
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let last_sample = Sample::read(runner.pid()).context("runner gone")?;
    drop(viewers);
    let stopped = runner.stop(Duration::from_secs(30));

    let summary = summarise(
        &rows,
        &first_sample,
        &last_sample,
        first_window_p95,
        last_window_p95,
        stopped.map(|s| s.success()),
    );
    std::fs::write(
        cli.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    std::fs::write(cli.out.join("soak.svg"), plot(&rows, cli))?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    eprintln!("wrote {}, soak.svg and summary.json", csv_path.display());
    Ok(())
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Median of the viewers' p50 and the worst viewer's p95 from meter `index`.
fn latency(viewers: &[Viewer], index: usize) -> (f64, f64) {
    let stats: Vec<gst::Structure> = viewers
        .iter()
        .filter_map(|v| v.meter_stats(index))
        .collect();
    let mut p50: Vec<f64> = stats
        .iter()
        .filter_map(|s| s.get::<f64>("window-p50-ms").ok())
        .collect();
    p50.sort_by(f64::total_cmp);
    let p95 = stats
        .iter()
        .filter_map(|s| s.get::<f64>("window-p95-ms").ok())
        .fold(f64::NAN, f64::max);
    (p50.get(p50.len() / 2).copied().unwrap_or(f64::NAN), p95)
}

/// Fetches the live playlist every second and every segment new in it, as a player does.
fn poll_hls(addr: &str, stop: &AtomicBool, segments: &AtomicU64, errors: &AtomicU64) {
    let mut seen = std::collections::VecDeque::<String>::new();
    while !stop.load(Ordering::Relaxed) {
        match http(addr, "GET", "/hls/live.m3u8", None, b"") {
            Ok(r) if r.status == 200 => {
                for name in r
                    .text()
                    .lines()
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    if seen.contains(&name.to_string()) {
                        continue;
                    }
                    match http(addr, "GET", &format!("/hls/{name}"), None, b"") {
                        Ok(s) if s.status == 200 && !s.body.is_empty() => {
                            segments.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    seen.push_back(name.to_string());
                    if seen.len() > 64 {
                        seen.pop_front();
                    }
                }
            }
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Least-squares slope of `points`, per unit of x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    sxy / sxx
}

fn summarise(
    rows: &[Row],
    first: &Sample,
    last: &Sample,
    first_window: Option<(f64, f64)>,
    last_window: (f64, f64),
    exit_ok: Option<bool>,
) -> serde_json::Value {
    // The first minute fills pools, the HLS window and the recording's buffers.
    let settled: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.t >= 60.0)
        .map(|r| (r.t, r.rss_mb))
        .collect();
    // The second half alone: a one-off step (a queue filling up while the machine was busy,
    // its memory kept by the allocator) weighs on the whole-run slope; a leak shows in both.
    let half = rows.last().map_or(0.0, |r| r.t / 2.0);
    let second_half: Vec<(f64, f64)> = settled.iter().copied().filter(|p| p.0 >= half).collect();
    let windows: Vec<serde_json::Value> = rows
        .chunk_by(|a, b| (a.t / 300.0).floor() == (b.t / 300.0).floor())
        .map(|chunk| {
            let mean = chunk.iter().map(|r| r.cpu_pct).sum::<f64>() / chunk.len() as f64;
            let p95s: Vec<f64> = chunk.iter().map(|r| r.p95).filter(|v| v.is_finite()).collect();
            serde_json::json!({
                "from_min": (chunk[0].t / 60.0).floor(),
                "cpu_mean_pct": round1(mean),
                "latency_p95_ms_mean_of_10s_windows": round1(p95s.iter().sum::<f64>() / p95s.len().max(1) as f64),
                "rss_mb_last": round1(chunk[chunk.len() - 1].rss_mb),
                "machine_load1_mean": round1(chunk.iter().map(|r| r.load1).sum::<f64>() / chunk.len() as f64),
            })
        })
        .collect();
    let last_row = rows.last();
    serde_json::json!({
        "duration_s": last_row.map(|r| round1(r.t)),
        "samples": rows.len(),
        "rss_mb": {
            "start": round1(first.rss_mb()),
            "end": round1(last.rss_mb()),
            "slope_mb_per_10min_after_1min": round2(slope(&settled) * 600.0),
            "slope_mb_per_10min_second_half": round2(slope(&second_half) * 600.0),
        },
        "threads": {"start": first.threads, "end": last.threads},
        "fds": {"start": first.fds, "end": last.fds},
        "five_minute_windows": windows,
        "latency_ms_first_5min": first_window.map(|(p50, p95)| serde_json::json!({"p50": round1(p50), "p95_worst_viewer": round1(p95)})),
        "latency_ms_last_5min": {"p50": round1(last_window.0), "p95_worst_viewer": round1(last_window.1)},
        "frames_decoded": last_row.map(|r| r.frames),
        "hls": {"segments_fetched": last_row.map(|r| r.hls_segments), "errors": last_row.map(|r| r.hls_errors)},
        "runner_exit_clean": exit_ok,
    })
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn plot(rows: &[Row], cli: &Cli) -> String {
    let series = |name: &str, colour, f: &dyn Fn(&Row) -> f64| Series {
        name: name.to_string(),
        colour,
        points: rows.iter().map(|r| (r.t / 60.0, f(r))).collect(),
    };
    svg(
        &format!(
            "{} soak: {} WebRTC viewers + an HLS poller, sampled every {} s",
            cli.pipeline.display(),
            cli.viewers,
            cli.interval
        ),
        "minutes",
        &[
            Panel {
                title: "runner RSS, MB".into(),
                series: vec![series("RSS", "#1f77b4", &|r| r.rss_mb)],
            },
            Panel {
                title: "runner CPU, % of one core".into(),
                series: vec![series("CPU", "#d62728", &|r| r.cpu_pct)],
            },
            Panel {
                title: "machine load average (1 min), 2 cores shared with other work".into(),
                series: vec![series("load", "#7f7f7f", &|r| r.load1)],
            },
            Panel {
                title: "glass-to-glass latency (capture to decoded at the viewer), ms".into(),
                series: vec![
                    series("p50 (median viewer)", "#2ca02c", &|r| r.p50),
                    series("p95 (worst viewer)", "#ff7f0e", &|r| r.p95),
                ],
            },
        ],
    )
}
