//! WebRTC in headless Chromium at 1280x720@30 on loopback, through the runner
//! (`pipelines/webrtc.toml`): glass-to-glass p50/p95 (capture stamp to the frame shown) against
//! the 45 ms goal, and first-frame time (WHEP POST to the first frame shown) over repeated
//! joins against the 500 ms goal; then the playout-delay header extension: the same viewer
//! with and without it in its offer (alternating windows, same pipeline), glass-to-glass p50/p95
//! and Chromium's mean jitter buffer delay (`jitterBufferDelay / jitterBufferEmittedCount`).
//!
//!   cargo bench -p hybridlive-latency-test --bench chromium --profile dev
//!   CHROMIUM_SECONDS=60 CHROMIUM_JOINS=20 CHROMIUM_PLAYOUT_SECONDS=40 cargo bench ...
//!   (defaults: 30 s, 10 joins, 24 s per playout-delay case in CHROMIUM_PLAYOUT_ROUNDS=4
//!   alternating rounds)
//!   CHROMIUM_PIPELINE=other.toml cargo bench ...   (e.g. another `playout_delay_ms`)
//!
//! Runs in a private network namespace (needs root, like the tests): only 127.0.0.1 exists.

use std::path::PathBuf;
use std::time::Duration;

use hybridlive_latency_test::{Summary, browse, with_pipeline};
use hybridlive_testkit::in_private_netns;

const G2G_GOAL_P95_MS: f64 = 45.0;
const FIRST_FRAME_GOAL_MS: f64 = 500.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Joins `joins` times in one page, one after the other, each from a fresh peer connection:
/// POST → first frame shown, in ms (null when none came within 5 s).
fn join_script(joins: usize) -> String {
    format!(
        r#"(async () => {{
  const {{ playWhep }} = await import('/assets/whep-player.js');
  const video = document.createElement('video');
  video.muted = true; video.autoplay = true; video.playsInline = true;
  document.body.appendChild(video);
  const joins = [];
  for (let i = 0; i < {joins}; i++) {{
    const shown = new Promise((r) => video.requestVideoFrameCallback(() => r(performance.now())));
    let player;
    try {{
      player = await playWhep(video, '/whep');
    }} catch (err) {{
      const status = await (await fetch('/api/status')).text();
      throw new Error(`join ${{i + 1}}: ${{err.message}}; status: ${{status}}`);
    }}
    const at = await Promise.race([shown, new Promise((r) => setTimeout(() => r(null), 5000))]);
    joins.push(at === null ? null : at - player.postedAt);
    await player.stop();
    video.srcObject = null;
    await new Promise((r) => setTimeout(r, 700));
  }}
  return joins;
}})()"#
    )
}

/// Plays `rounds` × 2 windows of `window_s` seconds, alternating an offer with the
/// playout-delay extension and one without (so drift in machine load hits both alike). Per
/// case: latencies (ms), jitter buffer delay and emitted count summed over the windows, frames
/// dropped, freezes, and whether each answer took the extension.
fn playout_delay_script(rounds: usize, window_s: f64) -> String {
    format!(
        r#"(async () => {{
  const {{ playWhep }} = await import('/assets/whep-player.js');
  const uri = 'http://www.webrtc.org/experiments/rtp-hdrext/playout-delay';
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const video = document.createElement('video');
  video.muted = true; video.autoplay = true; video.playsInline = true;
  document.body.appendChild(video);
  const cases = {{}};
  for (let round = 0; round < {rounds}; round++) {{
    for (const name of ['with', 'without']) {{
      const c = cases[name] ||= {{ latencies: [], jitterBufferDelay: 0, jitterBufferEmittedCount: 0,
        framesDropped: 0, freezeCount: 0, answered: [] }};
      let measuring = false;
      const player = await playWhep(video, '/whep', {{
        onLatency: (ms) => {{ if (measuring) c.latencies.push(ms); }},
        withoutHeaderExtensions: name === 'without' ? [uri] : [],
      }});
      c.answered.push(player.pc.remoteDescription.sdp.includes(uri));
      await sleep(2000);
      const before = await player.stats();
      measuring = true;
      await sleep({window_ms});
      measuring = false;
      const after = await player.stats();
      for (const key of ['jitterBufferDelay', 'jitterBufferEmittedCount', 'framesDropped', 'freezeCount']) {{
        c[key] += (after[key] || 0) - (before[key] || 0);
      }}
      await player.stop();
      video.srcObject = null;
      await sleep(700);
    }}
  }}
  return cases;
}})()"#,
        window_ms = (window_s * 1000.0).round()
    )
}

fn main() {
    if !in_private_netns("chromium") {
        return;
    }
    let file = std::env::var_os("CHROMIUM_PIPELINE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/webrtc.toml")
        });
    let seconds: f64 = env_or("CHROMIUM_SECONDS", 30.0);
    let joins: usize = env_or("CHROMIUM_JOINS", 10);
    let playout_seconds: f64 = env_or("CHROMIUM_PLAYOUT_SECONDS", 24.0);
    let rounds: usize = env_or("CHROMIUM_PLAYOUT_ROUNDS", 4).max(1);

    // One run of the pipeline for both measurements (a second in-process run of the runner
    // answered WHEP with 503 here).
    let script = join_script(joins);
    let playout_script = playout_delay_script(rounds, playout_seconds / rounds as f64);
    let measured = with_pipeline(&file, "127.0.0.1:0", move |url| {
        let page = browse(
            &format!("{url}?mode=webrtc&measure={seconds}"),
            Duration::from_secs_f64(seconds + 60.0),
            "window.result !== undefined",
            "window.result",
        )?;
        // Any page of the runner's origin: the script brings its own player.
        let joins = browse(
            &format!("{url}api/status"),
            Duration::from_secs(30 + joins as u64 * 8),
            "true",
            &script,
        )?;
        let playout = browse(
            &format!("{url}api/status"),
            Duration::from_secs_f64(60.0 + playout_seconds * 2.0 + rounds as f64 * 8.0),
            "true",
            &playout_script,
        )?;
        anyhow::Ok((page, joins, playout))
    });
    let (page, joins, playout) = match measured {
        Ok(Ok(result)) => result,
        Ok(Err(e)) | Err(e) => {
            eprintln!("the Chromium run failed: {e:#}");
            std::process::exit(1);
        }
    };
    let numbers = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v.as_f64().unwrap_or(f64::INFINITY))
                    .collect()
            })
            .unwrap_or_default()
    };
    if page["mode"] != "webrtc" {
        eprintln!("the page did not play WebRTC: {page}");
        std::process::exit(1);
    }
    let webrtc = Summary::of(&numbers(&page["latencies"]));
    let join_ms = numbers(&joins);
    let joins_summary = Summary::of(&join_ms);
    let missed = join_ms.iter().filter(|v| !v.is_finite()).count();

    println!(
        "\nChromium, 1280x720@30 WebRTC through the runner (pipelines/webrtc.toml), loopback\n"
    );
    println!("| figure | p50 ms | p95 ms | max ms | n | goal ms | p95 / goal |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    if let Some(s) = webrtc {
        println!(
            "| glass-to-glass (capture → shown) | {:.1} | {:.1} | {:.1} | {} | ≤ {G2G_GOAL_P95_MS} | {:.2} |",
            s.p50,
            s.p95,
            s.max,
            s.count,
            s.p95 / G2G_GOAL_P95_MS
        );
    } else {
        println!("| glass-to-glass | - | - | - | 0 | ≤ {G2G_GOAL_P95_MS} | - |");
    }
    if let Some(s) = joins_summary {
        println!(
            "| first frame (WHEP POST → shown) | {:.0} | {:.0} | {:.0} | {} | ≤ {FIRST_FRAME_GOAL_MS} | {:.2} |",
            s.p50,
            s.p95,
            s.max,
            s.count,
            s.p95 / FIRST_FRAME_GOAL_MS
        );
    }
    let figure = |case: &str, value: f64| {
        hybridlive_bench::record(&hybridlive_bench::Figure {
            benchmark: "WebRTC in Chromium, 1280x720@30 through the runner",
            case,
            value,
            unit: "ms",
            baseline: None,
            better: hybridlive_bench::Better::Lower,
        })
    };
    if let Some(s) = webrtc {
        figure("glass-to-glass p50", s.p50);
        figure("glass-to-glass p95 (goal ≤ 45 ms)", s.p95);
    }
    if let Some(s) = joins_summary {
        figure("first frame, WHEP POST → shown, p95 (goal ≤ 500 ms)", s.p95);
    }
    if missed > 0 {
        println!(
            "{missed} of {} joins showed no frame within 5 s",
            join_ms.len()
        );
    }
    println!(
        "\nframes decoded {}, dropped {}, packets lost {}",
        page["framesDecoded"], page["framesDropped"], page["packetsLost"]
    );
    report_playout_delay(&file, &playout, numbers);
}

/// The playout-delay comparison: the case without the extension is the baseline.
fn report_playout_delay(
    file: &std::path::Path,
    playout: &serde_json::Value,
    numbers: impl Fn(&serde_json::Value) -> Vec<f64>,
) {
    let configured = hybridlive_runner::load(file).ok().and_then(|p| {
        p.outputs.iter().find_map(|o| {
            o.kind
                .as_any()
                .downcast_ref::<hybridlive_runner::WebrtcOutput>()
                .map(|w| w.playout_delay_ms)
        })
    });
    let configured = match configured {
        Some(Some([min, max])) => format!("min {min} ms, max {max} ms"),
        _ => "off".to_string(),
    };
    println!(
        "\nPlayout-delay header extension (configured: {configured}), same viewer with and \
         without it in its offer, alternating windows\n"
    );
    println!(
        "| case | answered | g2g p50 ms | g2g p95 ms | jitter buffer ms/frame | dropped | freezes | n |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for case in ["without", "with"] {
        let c = &playout[case];
        let summary = Summary::of(&numbers(&c["latencies"]));
        let emitted = c["jitterBufferEmittedCount"].as_f64().unwrap_or(0.0);
        let jitter_ms = (emitted > 0.0)
            .then(|| c["jitterBufferDelay"].as_f64().unwrap_or(0.0) / emitted * 1000.0);
        let answered = c["answered"]
            .as_array()
            .map(|a| a.iter().filter(|v| v.as_bool() == Some(true)).count())
            .unwrap_or(0);
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "| {case} | {answered}/{} | {} | {} | {} | {} | {} | {} |",
            c["answered"].as_array().map_or(0, |a| a.len()),
            cell(summary.map(|s| s.p50)),
            cell(summary.map(|s| s.p95)),
            cell(jitter_ms),
            c["framesDropped"],
            c["freezeCount"],
            summary.map_or(0, |s| s.count),
        );
        rows.push((summary, jitter_ms));
    }
    let [(Some(base), base_jitter), (Some(with), with_jitter)] = rows[..] else {
        println!("(a case measured no frame: no ratios)");
        return;
    };
    println!(
        "\nwith / without: g2g p50 {:.2}, g2g p95 {:.2}, jitter buffer {}",
        with.p50 / base.p50,
        with.p95 / base.p95,
        match (with_jitter, base_jitter) {
            (Some(w), Some(b)) if b > 0.0 => format!("{:.2}", w / b),
            _ => "-".to_string(),
        }
    );
    let figure = |case: &str, value: f64, baseline: f64| {
        hybridlive_bench::record(&hybridlive_bench::Figure {
            benchmark: "Playout-delay extension in Chromium, 1280x720@30 through the runner",
            case,
            value,
            unit: "ms",
            baseline: Some(("without the extension", baseline)),
            better: hybridlive_bench::Better::Lower,
        })
    };
    figure("glass-to-glass p50 with the extension", with.p50, base.p50);
    figure("glass-to-glass p95 with the extension", with.p95, base.p95);
    if let (Some(w), Some(b)) = (with_jitter, base_jitter) {
        figure("jitter buffer delay per frame with the extension", w, b);
    }
}
