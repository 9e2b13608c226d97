//! WebRTC in headless Chromium at 1280x720@30 on loopback, through the runner
//! (`pipelines/webrtc.toml`): glass-to-glass p50/p95 (capture stamp to the frame shown) against
//! the 45 ms goal, and first-frame time (WHEP POST to the first frame shown) over repeated
//! joins against the 500 ms goal.
//!
//!   cargo bench -p hybridlive-latency-test --bench chromium --profile dev
//!   CHROMIUM_SECONDS=60 CHROMIUM_JOINS=20 cargo bench ...   (defaults: 30 s, 10 joins)
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

fn main() {
    if !in_private_netns("chromium") {
        return;
    }
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/webrtc.toml");
    let seconds: f64 = env_or("CHROMIUM_SECONDS", 30.0);
    let joins: usize = env_or("CHROMIUM_JOINS", 10);

    // One run of the pipeline for both measurements (a second in-process run of the runner
    // answered WHEP with 503 here).
    let script = join_script(joins);
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
        anyhow::Ok((page, joins))
    });
    let (page, joins) = match measured {
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
}
